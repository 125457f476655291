"""Configurations of the file-backed datasets: one frozen dataclass per format, all
sharing the window, transform and bad-file fields of `VideoFilesConfig`."""

import dataclasses
from typing import Literal

from ._transforms import INTERPOLATIONS

__all__ = [
    "ArrayRecordConfig",
    "FrameFolderConfig",
    "TecoConfig",
    "VideoFilesConfig",
    "VideoFolderConfig",
]


@dataclasses.dataclass(frozen=True)
class VideoFilesConfig:
    """Fields every file-backed dataset shares (not a dataset by itself)."""

    root: str = ""
    """Dataset folder (see the format for its layout)."""
    seq_len: int = 16
    """Frames per training window."""
    frame_stride: int = 1
    """Take every `frame_stride`-th frame (a window spans (seq_len - 1) * stride + 1 frames)."""
    frame_size: int | None = None
    """Resize frames to frame_size x frame_size (largest square crop, then resize);
    none keeps the stored size (every video must then have the same size)."""
    crop: Literal["center", "random"] = "center"
    """Where the square crop of non-square frames sits (random: one offset per window)."""
    interpolation: Literal["bilinear", "bicubic", "area", "nearest", "lanczos"] = "bilinear"
    """Resampling filter of the resize (antialiased when shrinking)."""
    value_range: Literal["signed", "unit"] = "signed"
    """Float frames in [-1, 1] (signed: x / 127.5 - 1, eqvid's convention) or [0, 1] (unit: x / 255)."""
    on_bad_file: Literal["error", "skip"] = "error"
    """A bad file (unreadable, truncated, too few frames for the window, actions not
    matching frames): stop with an error naming it, or skip it with a counted warning."""

    def __post_init__(self):
        name = type(self).__name__
        for field, minimum in (("seq_len", 1), ("frame_stride", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: `{field}` must be an int >= {minimum}; got {value!r}.")
        if self.frame_size is not None and (
            isinstance(self.frame_size, bool) or self.frame_size < 1
        ):
            raise ValueError(
                f"{name}: `frame_size` must be an int >= 1 or None; got {self.frame_size!r}."
            )
        choices = {
            "crop": ("center", "random"),
            "interpolation": tuple(INTERPOLATIONS),
            "value_range": ("signed", "unit"),
            "on_bad_file": ("error", "skip"),
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"{name}: `{field}` must be one of {allowed}; got {getattr(self, field)!r}."
                )


@dataclasses.dataclass(frozen=True)
class TecoConfig(VideoFilesConfig):
    """TECO trajectories (DMLab, Minecraft, Habitat): per trajectory one `.npz` or `.mp4` + sidecar `.npz`.

    Files under `<root>/{train,test}/**`: `.npz` with `video` uint8 (T, H, W, C) and
    `actions` (T,), or `.mp4` with a sidecar `.npz` of the same name holding `actions`."""

    actions: bool = True
    """Return each frame's action (files without actions are then bad files)."""


@dataclasses.dataclass(frozen=True)
class FrameFolderConfig(VideoFilesConfig):
    """MeBT frame folders: `[VIDEO_ID]_[FRAME].png|jpg` frames listed in `<root>/train.txt` / `test.txt`."""

    grayscale: bool = False
    """Decode frames to one channel instead of RGB."""


@dataclasses.dataclass(frozen=True)
class VideoFolderConfig(VideoFilesConfig):
    """A folder of video files (mp4, webm, gif, avi, mkv, mov) under `<root>/{train,test}/`, decoded with PyAV."""

    split_folders: bool = True
    """Videos are under <root>/train and <root>/test; false: every video under <root> (one split)."""
    grayscale: bool = False
    """Decode frames to one channel instead of RGB."""


@dataclasses.dataclass(frozen=True)
class ArrayRecordConfig(VideoFilesConfig):
    """Videos packed into ArrayRecord shards by `python -m eqvid.data.convert` (`<root>/{train,test}/`)."""

    actions: bool = True
    """Return the packed actions (an error if they were packed without)."""
