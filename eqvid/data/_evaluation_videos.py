"""A split as evaluation needs it (the test split, or the training split for the
unconditional protocols that compare with training videos, as MeBT): the first `length`
frames of the first `num_videos` videos, in order, in batches."""

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from ._codes import CodesConfig
from ._file_config import VideoFilesConfig
from ._generated import GeneratedVideosConfig

__all__ = ["evaluation_videos"]


def evaluation_videos(
    config: Any,
    *,
    num_videos: int,
    length: int,
    batch_size: int,
    require_all: bool = True,
    split: Literal["test", "train"] = "test",
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield `(videos, actions)` batches of the `split` split (default the test split)
    of the dataset `config` describes: `videos` uint8 `(batch, length, height, width, channels)` (frames
    `0, stride, …` of each video: the window from its start, centre-cropped to a square
    if `frame_size` is set, even when training crops at random), `actions` int32
    `(batch, length)` or None. Every process gets the same videos (evaluation is
    not split over processes).

    A generated dataset's (Moving MNIST, bouncing balls) test split is its held-out
    videos (for Moving MNIST of digit images training never shows), its training split
    the first of its training videos, generated `length` frames long. A codes dataset's frames are its codes
    decoded by the tokenizer they were encoded with (`CodesVideos.tokenizer`).

    **Raises** `ValueError` if the split has fewer than `num_videos` videos that are at
    least `length` frames long (saying how many it has; with `require_all=False` it
    yields those there are, e.g. for sample pictures), or naming a bad file as
    `make_dataset` does.
    """
    from ._pipeline import make_dataset

    for name, value in (("num_videos", num_videos), ("length", length), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"evaluation_videos: `{name}` must be an int >= 1; got {value!r}.")
    if split not in ("test", "train"):
        raise ValueError(f"evaluation_videos: `split` must be 'test' or 'train'; got {split!r}.")
    if isinstance(config, GeneratedVideosConfig):
        yield from _generated(config, num_videos, length, batch_size, require_all, split)
        return
    if isinstance(config, CodesConfig):
        yield from _decoded_codes(config, num_videos, length, batch_size, require_all, split)
        return
    if not isinstance(config, VideoFilesConfig):
        raise ValueError(
            f"evaluation_videos: expected a dataset config; got {type(config).__name__}."
        )
    # The same frames whatever the training augmentation: the centred square crop.
    windows = dataclasses.replace(config, seq_len=length, value_range="signed", crop="center")
    dataset = make_dataset(
        windows,
        split=split,
        batch_size=batch_size,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        window="start",
        process_index=0,
        process_count=1,
    )
    seen = 0
    for batch in dataset:
        take = min(len(batch["video"]), num_videos - seen)
        video = np.asarray(batch["video"][:take], np.float32)
        video = np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)
        actions = batch.get("actions")
        yield video, None if actions is None else np.asarray(actions[:take], np.int32)
        seen += take
        if seen == num_videos:
            return
    if not require_all and seen > 0:
        return
    raise ValueError(
        f"evaluation_videos: the {split} split of {config.root!r} has {seen} video(s) with at least "
        f"{(length - 1) * config.frame_stride + 1} frames (a window of {length} frames at stride "
        f"{config.frame_stride}), fewer than the {num_videos} asked for; ask for fewer videos or "
        "a shorter context + horizon."
    )


def _generated(
    config: GeneratedVideosConfig,
    num_videos: int,
    length: int,
    batch_size: int,
    require_all: bool,
    split: str,
) -> Iterator[tuple[np.ndarray, None]]:
    if split == "test":
        _, videos = config.splits(test_sequences=num_videos, test_seq_len=length)
    else:  # the training videos, `length` frames long (a video is fixed by seed and index)
        available = min(num_videos, config.train_sequences)
        if available < num_videos and require_all:
            raise ValueError(
                f"evaluation_videos: the train split has {config.train_sequences} video(s) "
                f"(--train-sequences), fewer than the {num_videos} asked for."
            )
        num_videos = available
        longer = dataclasses.replace(config, seq_len=length, train_sequences=num_videos)  # type: ignore[type-var]
        videos, _ = longer.splits(test_sequences=1)
    for start in range(0, num_videos, batch_size):
        stop = min(start + batch_size, num_videos)
        yield np.stack([videos[i]["video"] for i in range(start, stop)]), None


def _decoded_codes(
    config: CodesConfig,
    num_videos: int,
    length: int,
    batch_size: int,
    require_all: bool,
    split: str,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    from ._codes import codes_to_frames
    from ._codes_pipeline import open_codes

    source = open_codes(config, split)
    k = source.frames_per_step
    steps = -(-length // k)  # the steps of codes that cover `length` frames
    chosen = [i for i in range(len(source)) if source.shapes[i][0] >= steps][:num_videos]
    if len(chosen) < num_videos and (require_all or not chosen):
        raise ValueError(
            f"evaluation_videos: the {split} split of {source.folder!r} has {len(chosen)} "
            f"entries with at least {steps * k} frames ({steps} steps of codes), fewer than "
            f"the {num_videos} asked for; ask for fewer videos or a shorter context + horizon."
        )
    tokenizer = source.tokenizer()
    for start in range(0, len(chosen), batch_size):
        items = [source.read_window(i, steps, None) for i in chosen[start : start + batch_size]]
        frames = codes_to_frames(tokenizer, np.stack([x["codes"] for x in items]))[:, :length]
        actions = None
        if source.has_actions:
            actions = np.stack([x["actions"][:length] for x in items]).astype(np.int32)
        yield frames, actions
