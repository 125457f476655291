"""The Grain input pipeline: source -> shuffle -> repeat -> shard -> (window ->
transform) -> batch -> float.

`make_dataset` takes either a random-access source of fixed-length videos (e.g.
`MovingMNIST`) or a dataset config (`MovingMNISTConfig`, `TecoConfig`,
`FrameFolderConfig`, `VideoFolderConfig`, `ArrayRecordConfig`) and returns a Grain
`IterDataset` of batches `{"video": float32 (B, T, H, W, C)}` (plus `"actions":
int32 (B, T)` when the data has actions), sharded across JAX processes. Its
iterators are checkpointable (`get_state()` / `set_state()`), so training can
resume mid-epoch.
"""

import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import grain
import jax
import numpy as np

from ._bad_video import BadVideoError, BadVideoWarning
from ._codes import CodesConfig
from ._datasets import open_source
from ._epochs import EpochOrder
from ._file_config import VideoFilesConfig
from ._generated import GeneratedVideosConfig
from ._hot_path import hot_path
from ._transforms import resize_crop, scale_video
from ._video_files import VideoFiles

__all__ = ["make_dataset"]

_SCALE = np.float32(1.0 / 127.5)


_INT32 = np.iinfo(np.int32)


@hot_path
def _checked_actions(actions: Any, video_shape: tuple[int, ...]) -> np.ndarray:
    """A source's batched `actions` as int32 `(batch, time)`: integers, one per frame of
    `video`, each ≥ -1 (-1: no action; the model checks the upper bound, its
    `action_dim`, which the data does not know)."""
    actions = np.asarray(actions)
    if not np.issubdtype(actions.dtype, np.integer) or actions.shape != video_shape[:2]:
        raise ValueError(
            f"make_dataset: the source's `actions` must be integers, one per frame: "
            f"(batch, time) = {video_shape[:2]}; got {actions.dtype} of shape {actions.shape}."
        )
    if actions.size and (actions.min() < -1 or actions.max() > _INT32.max):
        bad = np.flatnonzero((actions < -1) | (actions > _INT32.max))[0]
        raise ValueError(
            f"make_dataset: the source's `actions` must be ≥ -1 (-1: no action) and fit "
            f"int32; got {actions.flat[bad]} in video {bad // actions.shape[1]} of the "
            f"batch, frame {bad % actions.shape[1]}."
        )
    return actions.astype(np.int32)


@hot_path
def _to_float(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Map the batch's uint8 `video` to float32 in `[-1, 1]` and its `actions` (if any)
    to checked int32 (`_checked_actions`); other keys pass through."""
    out = dict(batch)
    video = np.asarray(batch["video"])
    if video.dtype != np.uint8:
        raise ValueError(
            f"make_dataset: expected `video` of dtype uint8 from the source; got {video.dtype}."
        )
    out["video"] = video.astype(np.float32) * _SCALE - np.float32(1.0)
    if "actions" in batch:
        out["actions"] = _checked_actions(batch["actions"], video.shape)
    return out


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"make_dataset: `{name}` must be an int >= {minimum}; got {value!r}.")
    return int(value)


def _mark_absl_flags_parsed() -> None:
    # Grain 0.2.x reads absl flags in its worker processes; outside an absl app the
    # flags are unparsed and mp_prefetch fails with UnparsedFlagAccessError.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _ReadWindow:
    """`(video index, rng) -> uint8 window dict`, or `None` for a skipped bad file."""

    def __init__(self, source: VideoFiles, config: VideoFilesConfig, random_start: bool) -> None:
        self.source = source
        self.config = config
        self.random_start = random_start
        self.skipped = 0
        self.consecutive = 0

    @hot_path
    def __call__(
        self, index: int | np.integer, rng: np.random.Generator
    ) -> dict[str, np.ndarray] | None:
        c = self.config
        try:
            window = self.source.read_window(
                index, c.seq_len, c.frame_stride, rng if self.random_start else None
            )
        except BadVideoError as e:
            if c.on_bad_file == "error":
                raise BadVideoError(
                    f"{e} (set on_bad_file='skip' / --on-bad-file skip to skip bad files)"
                ) from e
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive >= len(self.source):
                raise ValueError(
                    f"make_dataset: {self.consecutive} bad files in a row, every video of {self.source!r} "
                    f"is bad; the last: {e}"
                ) from e
            warnings.warn(
                f"skipped bad file {e} ({self.skipped} skipped so far)",
                BadVideoWarning,
                stacklevel=2,
            )
            return None
        self.consecutive = 0
        window["video"] = resize_crop(
            window["video"], c.frame_size, crop=c.crop, interpolation=c.interpolation, rng=rng
        )
        return window


@hot_path
def _stack_read(items: Sequence[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray] | None:
    """Stack the windows that were read (skipped files are `None`); `None` if none was."""
    good = [x for x in items if x is not None]
    if not good:
        return None
    shapes = {x["video"].shape for x in good}
    if len(shapes) > 1:
        raise ValueError(
            f"make_dataset: videos of different shapes {sorted(shapes)} met in one batch; set "
            "frame_size (--frame-size) to resize every video to one size."
        )
    return {k: np.stack([x[k] for x in good]) for k in good[0]}


@hot_path
def _is_batch(batch: dict[str, np.ndarray] | None) -> bool:
    return batch is not None


class _Scale:
    def __init__(self, value_range: Literal["signed", "unit"]) -> None:
        self.value_range: Literal["signed", "unit"] = value_range

    @hot_path
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        out["video"] = scale_video(batch["video"], self.value_range)
        return out


def make_dataset(
    source: Any,
    *,
    batch_size: int,
    split: Literal["train", "test"] = "train",
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    num_workers: int = 0,
    drop_remainder: bool = True,
    window: Literal["random", "start"] = "random",
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Build the batched, sharded, checkpointable input pipeline.

    **Arguments**

    - `source`: a dataset config (`MovingMNISTConfig`, `TecoConfig`,
      `FrameFolderConfig`, `VideoFolderConfig`, `ArrayRecordConfig`, or
      `CodesConfig`, whose batches are `{"codes": int32 (batch, seq_len, code_height,
      code_width)}` and actions instead of frames), or a
      random-access source (`len(source)`, `source[i]`) whose items are dicts with a
      `uint8` `"video"` `(time, height, width, channels)` of one length, e.g.
      `MovingMNIST` (batched as they are, scaled to `[-1, 1]`), and optionally
      integer `"actions"` `(time,)`, each ≥ -1 (batched as int32; other values raise
      `ValueError`).
    - `batch_size`: examples per batch *per JAX process*.
    - `split`: `"train"` or `"test"` (configs only).
    - `seed`: seed of the shuffle (reshuffled each epoch), of the window starts and
      of random crops.
    - `shuffle`: shuffle the videos (otherwise in source order).
    - `num_epochs`: passes over the videos; `None` repeats forever.
    - `num_workers`: worker processes reading and decoding (`mp_prefetch`); 0 reads
      in the calling thread. The batches do not depend on it.
    - `drop_remainder`: drop a final partial batch.
    - `window` (file formats): `"random"` takes a window at a random start in each
      video, a new one every epoch; `"start"` takes the window starting at frame 0.
    - `process_index`, `process_count`: this process's share; default
      `jax.process_index()` / `jax.process_count()`.

    Training: `make_dataset(config, batch_size=B, seed=s)` (shuffled, random windows,
    endless). Evaluation: `make_dataset(config, split="test", batch_size=B,
    shuffle=False, num_epochs=1, drop_remainder=False, window="start")` (every video
    once, in order, from frame 0).

    Processes share the stream by batches: the shuffled, repeated stream is cut into
    batches of `batch_size` and process `p` takes batches `p, p + process_count, …`
    (reading only those). So processes see disjoint videos within an epoch and
    together all of them, and a global batch (the processes' batches side by side in
    process order, as `jax.make_array_from_process_local_data` assembles it) is
    exactly the batch that one process with `batch_size × process_count` reads:
    the same videos, windows and crops, in the same order.

    **Returns** a `grain.IterDataset` of `{"video": float32 (batch, seq_len, height,
    width, channels)}` in the config's value range (`[-1, 1]` for sources), plus
    `"actions": int32 (batch, seq_len)` (the actions of the window's frames) when
    the data has actions. Same seed, same batches; its iterators support
    `get_state()` / `set_state()`.

    **Raises** `ValueError` on a bad argument, an empty source, or a `batch_size`
    larger than this process's share of one epoch when `drop_remainder=True`;
    `BadVideoError` naming the file when a file is bad and `on_bad_file="error"`
    (with `"skip"`, a `BadVideoWarning` counts the skipped files).
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    if num_epochs is not None:
        num_epochs = _check_int("num_epochs", num_epochs, 1)
    num_workers = _check_int("num_workers", num_workers, 0)
    for name, flag in (("shuffle", shuffle), ("drop_remainder", drop_remainder)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"make_dataset: `{name}` must be a bool; got {flag!r}.")
    if window not in ("random", "start"):
        raise ValueError(f"make_dataset: `window` must be 'random' or 'start'; got {window!r}.")
    if split not in ("train", "test"):
        raise ValueError(f"make_dataset: `split` must be 'train' or 'test'; got {split!r}.")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    process_count = _check_int("process_count", process_count, 1)
    process_index = _check_int("process_index", process_index, 0)
    if process_index >= process_count:
        raise ValueError(
            f"make_dataset: `process_index`={process_index} must be < `process_count`={process_count}."
        )
    config = None
    if isinstance(source, CodesConfig):  # windows of codes, not frames
        from ._codes_pipeline import codes_dataset

        return codes_dataset(
            source,
            split=split,
            batch_size=batch_size,
            seed=seed,
            shuffle=bool(shuffle),
            num_epochs=num_epochs,
            num_workers=num_workers,
            drop_remainder=bool(drop_remainder),
            random_window=window == "random",
            process_index=process_index,
            process_count=process_count,
            mark_flags=_mark_absl_flags_parsed,
        )
    if isinstance(source, (GeneratedVideosConfig, VideoFilesConfig)):
        config, source = source, open_source(source, split)
    elif not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ValueError(
            "make_dataset: `source` must be a dataset config or a random-access source with __len__ and "
            f"__getitem__; got {type(source).__name__}."
        )
    num_examples = len(source)
    if num_examples == 0:
        raise ValueError(f"make_dataset: `source` is empty ({source!r}).")

    if drop_remainder and batch_size * process_count > num_examples:
        raise ValueError(
            f"make_dataset: one global batch (`batch_size`={batch_size} × {process_count} "
            f"process(es) = {batch_size * process_count}) is larger than the data "
            f"({num_examples} examples); with drop_remainder=True it could never be filled within "
            "one epoch. Use a smaller batch_size, more sequences, or drop_remainder=False."
        )

    if not isinstance(config, VideoFilesConfig):  # fixed-length videos, batched as they are
        ds = grain.MapDataset.source(source).seed(seed)
        if shuffle:
            ds = ds.shuffle()
        ds = ds.repeat(num_epochs)
        ds = ds.batch(batch_size, drop_remainder=bool(drop_remainder))
        ds = ds[process_index::process_count]  # this process's part of each global batch
        ds = ds.map(_to_float)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))
        if num_workers > 0:
            _mark_absl_flags_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        return it

    # Video indices epoch after epoch (`EpochOrder`), one window each (its random start
    # and crop drawn from the stream position, so they do not depend on the number of
    # processes), batched, then this process's batches. Nothing is read until a batch
    # is asked for, so a process reads only its own share. Each worker reads whole
    # batches, so the batches do not depend on the number of workers. Skipped files
    # leave batches short: the rebatch after the workers refills them (a no-op,
    # without copies, when nothing was skipped).
    order = EpochOrder(num_examples, seed=seed, shuffle=bool(shuffle), num_epochs=num_epochs)
    ds = grain.MapDataset.source(order).seed(seed)
    ds = ds.random_map(_ReadWindow(source, config, window == "random"))
    # An endless stream has no remainder (and Grain's length arithmetic overflows
    # for drop_remainder=False there); a finite one keeps it for the rebatch.
    ds = ds.batch(batch_size, drop_remainder=num_epochs is None, batch_fn=_stack_read)
    ds = ds[process_index::process_count]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0)).filter(_is_batch)
    if num_workers > 0:
        _mark_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    it = grain.experimental.RebatchIterDataset(it, batch_size, drop_remainder=bool(drop_remainder))
    return it.map(_Scale(config.value_range))
