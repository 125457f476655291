"""Dataset names, their configs, the source a config opens, and the frames it yields."""

import dataclasses
from typing import Any

from ._array_record import ArrayRecordVideos
from ._bad_video import BadVideoError
from ._bouncing_balls import BouncingBallsConfig
from ._codes import CodesConfig
from ._config import MovingMNISTConfig
from ._file_config import (
    ArrayRecordConfig,
    FrameFolderConfig,
    TecoConfig,
    VideoFilesConfig,
    VideoFolderConfig,
)
from ._frame_folder import FrameFolderVideos
from ._generated import GeneratedVideosConfig
from ._teco import TecoVideos
from ._transforms import resize_crop
from ._video_files import VideoFiles
from ._video_folder import VideoFolderVideos

__all__ = ["DATASETS", "FrameSpec", "dataset_config_class", "frame_spec", "open_source"]

DATASETS: dict[str, type] = {
    "moving_mnist": MovingMNISTConfig,
    "bouncing_balls": BouncingBallsConfig,
    "teco": TecoConfig,
    "frame_folder": FrameFolderConfig,
    "video_folder": VideoFolderConfig,
    "array_record": ArrayRecordConfig,
    "codes": CodesConfig,
}
"""Every dataset `make_dataset` reads, by the name `--dataset` takes."""

SPLITS = ("train", "test")


def dataset_config_class(name: str) -> type:
    """The config dataclass of dataset `name` (a key of `DATASETS`).

    **Raises** `ValueError` naming the known datasets if `name` is not one.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    return DATASETS[name]


def open_source(config: Any, split: str = "train") -> Any:
    """The random-access source of `split` (`"train"` or `"test"`) that `config` describes:
    a `MovingMNIST` for `MovingMNISTConfig` (the test split is its held-out videos), a
    `BouncingBalls` for `BouncingBallsConfig` (any `GeneratedVideosConfig`'s `splits`),
    `CodesVideos` for `CodesConfig`, else a `VideoFiles` source of whole videos.

    **Raises** `ValueError` for an unknown config type or split, and whatever the source
    raises for a missing or empty split.
    """
    if split not in SPLITS:
        raise ValueError(f"open_source: `split` must be one of {SPLITS}; got {split!r}.")
    if isinstance(config, GeneratedVideosConfig):
        train, test = config.splits(test_sequences=config.test_sequences)
        return train if split == "train" else test
    if isinstance(config, CodesConfig):
        from ._codes_pipeline import open_codes

        return open_codes(config, split)
    if isinstance(config, TecoConfig):
        return TecoVideos(config.root, split, actions=config.actions)
    if isinstance(config, FrameFolderConfig):
        return FrameFolderVideos(config.root, split, grayscale=config.grayscale)
    if isinstance(config, VideoFolderConfig):
        return VideoFolderVideos(
            config.root, split, split_folders=config.split_folders, grayscale=config.grayscale
        )
    if isinstance(config, ArrayRecordConfig):
        return ArrayRecordVideos(config.root, split, actions=config.actions)
    raise ValueError(
        f"open_source: expected a dataset config ({', '.join(c.__name__ for c in DATASETS.values())}); "
        f"got {type(config).__name__}."
    )


@dataclasses.dataclass(frozen=True)
class FrameSpec:
    """What a dataset's batches hold: the model's `frame_size` / `channels` follow it."""

    height: int
    width: int
    channels: int
    seq_len: int
    has_actions: bool
    num_videos: int
    """Videos in the split."""
    tokenizer: str = ""
    """For codes: the tokenizer folder they were encoded with (`""` for frames)."""


def frame_spec(config: Any, split: str = "train") -> FrameSpec:
    """The frame height, width, channels and actions `make_dataset(config, split=split)`
    yields, read from the first readable video of the split (file formats) or the
    config (Moving MNIST); for codes, the frames they decode to (`seq_len` in frames).

    **Raises** `ValueError` if no video of the split can be read.
    """
    source = open_source(config, split)
    if isinstance(config, GeneratedVideosConfig):
        size = config.frame_size
        return FrameSpec(size, size, config.channels, config.seq_len, False, len(source))
    if isinstance(config, CodesConfig):  # the frames the codes decode to
        h, w, c = source.frame_shape
        frames = config.seq_len * source.frames_per_step
        path = source.meta["tokenizer"]["path"]
        return FrameSpec(h, w, c, frames, source.has_actions, len(source), path)
    assert isinstance(config, VideoFilesConfig) and isinstance(source, VideoFiles)
    errors = []
    for i in range(min(len(source), 16)):
        try:
            window = source.read_window(i, config.seq_len, config.frame_stride, None)
        except BadVideoError as e:
            errors.append(str(e))
            continue
        video = resize_crop(
            window["video"][:1],
            config.frame_size,
            crop="center",
            interpolation=config.interpolation,
        )
        _, h, w, c = video.shape
        return FrameSpec(int(h), int(w), int(c), config.seq_len, source.has_actions, len(source))
    raise ValueError(
        f"frame_spec: none of the first {len(errors)} videos of {source!r} could be read: "
        + "; ".join(errors[:3])
    )
