"""The Grain input pipeline: source -> shuffle -> repeat -> shard -> batch -> float.

`make_dataset` turns any random-access source of `{"video": uint8 (T, H, W, C), ...}`
dicts into a Grain `IterDataset` of batches `{"video": float32 (B, T, H, W, C)}` in
`[-1, 1]`, sharded across JAX processes. Its iterators are checkpointable
(`get_state()` / `set_state()`), so training can resume mid-epoch.
"""

import numbers
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np

__all__ = ["make_dataset"]

_SCALE = np.float32(1.0 / 127.5)


def _to_float(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Map the batch's uint8 `video` to float32 in `[-1, 1]`; other keys pass through."""
    out = dict(batch)
    video = np.asarray(batch["video"])
    if video.dtype != np.uint8:
        raise ValueError(f"make_dataset: expected `video` of dtype uint8 from the source; got {video.dtype}.")
    out["video"] = video.astype(np.float32) * _SCALE - np.float32(1.0)
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


def make_dataset(
    source: Any,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    num_workers: int = 0,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """Build the batched, sharded, checkpointable input pipeline over `source`.

    **Arguments**

    - `source`: a random-access source (`len(source)`, `source[i]`) whose items are
      dicts with a `uint8` `"video"` array `(time, height, width, channels)`, e.g.
      `MovingMNIST`; any other keys (such as `"actions"`) are batched unchanged.
    - `batch_size`: examples per batch *per JAX process*.
    - `seed`: seed for shuffling (the order is reshuffled each epoch).
    - `shuffle`: shuffle the examples (otherwise source order).
    - `num_epochs`: passes over the data; `None` repeats forever.
    - `num_workers`: worker processes for `mp_prefetch`; 0 reads in the calling thread.
    - `drop_remainder`: drop a final partial batch.

    Each process takes every `jax.process_count()`-th example of the shuffled,
    repeated stream, starting at `jax.process_index()`, so processes see disjoint
    examples within an epoch.

    **Returns** a `grain.IterDataset`; iterating it yields
    `{"video": float32 (batch, time, height, width, channels)}` in `[-1, 1]`
    (`x / 127.5 - 1`). Its iterators support `get_state()` / `set_state()`.

    **Raises** `ValueError` on a bad argument, an empty source, or a `batch_size`
    larger than this process's share of one epoch when `drop_remainder=True`.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    if num_epochs is not None:
        num_epochs = _check_int("num_epochs", num_epochs, 1)
    num_workers = _check_int("num_workers", num_workers, 0)
    for name, flag in (("shuffle", shuffle), ("drop_remainder", drop_remainder)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"make_dataset: `{name}` must be a bool; got {flag!r}.")
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ValueError(
            "make_dataset: `source` must be a random-access source with __len__ and __getitem__; "
            f"got {type(source).__name__}."
        )
    num_examples = len(source)
    if num_examples == 0:
        raise ValueError(f"make_dataset: `source` is empty ({source!r}).")

    process_index, process_count = jax.process_index(), jax.process_count()
    per_process = len(range(process_index, num_examples, process_count))
    if drop_remainder and batch_size > per_process:
        raise ValueError(
            f"make_dataset: `batch_size`={batch_size} is larger than this process's share of the "
            f"data ({per_process} of {num_examples} examples over {process_count} process(es)); with "
            "drop_remainder=True a batch could never be filled within one epoch. Use a smaller "
            "batch_size, more sequences, or drop_remainder=False."
        )

    ds = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=bool(drop_remainder))
    ds = ds.map(_to_float)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))
    if num_workers > 0:
        _mark_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it
