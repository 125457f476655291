"""The common base of the file-backed video sources.

A source is a Grain random-access source over *videos* (one file, frame folder or
record range each): `source[i]` is the whole video `{"video": uint8 (T, H, W, C)}`
(plus `"actions": int32 (T,)` when the source has actions), and
`source.read_window(i, seq_len, frame_stride, rng)` reads only the frames of one
window. Subclasses say how many frames a video has and how to read chosen frames.
"""

import numbers
import os
import struct
import zipfile

import numpy as np

from ._bad_video import BadVideoError
from ._hot_path import hot_path
from ._windows import window_frames

__all__ = ["VideoFiles", "list_split_files"]


def _read_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (
        OSError,
        ValueError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
        struct.error,
    )
    try:
        from av.error import FFmpegError

        errors += (FFmpegError,)
    except ImportError:  # pragma: no cover - av is only needed for video files
        pass
    return errors


def list_split_files(
    root: str, split: str, extensions: tuple[str, ...], what: str
) -> tuple[str, list[str]]:
    """`(folder, sorted files)`: every file under `<root>/<split>` (`<root>` itself if
    `split` is empty), recursively, whose name ends in one of `extensions`
    (case-insensitive).

    **Raises** `FileNotFoundError` if the folder does not exist and `ValueError` if it
    holds no such file (an empty split is always an error).
    """
    if not root:
        raise ValueError(f"{what}: `root` is empty; pass the dataset folder (--root).")
    folder = os.path.join(root, split) if split else root
    if not os.path.isdir(folder):
        where = f"`<root>/{split}/`" if split else "`<root>`"
        raise FileNotFoundError(
            f"{what}: folder {folder!r} does not exist; expected {where} holding "
            f"{'/'.join(extensions)} files."
        )
    files = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()
        files += [os.path.join(parent, n) for n in names if n.lower().endswith(extensions)]
    if not files:
        raise ValueError(
            f"{what}: folder {folder!r} holds no {'/'.join(extensions)} files (empty split)."
        )
    return folder, sorted(files)


@hot_path
def _check_index(source: "VideoFiles", index: object) -> int:
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise TypeError(f"{type(source).__name__} indices must be integers; got {index!r}.")
    position = int(index)
    if not 0 <= position < len(source):
        raise IndexError(
            f"{type(source).__name__} index {index} out of range 0..{len(source) - 1}."
        )
    return position


class VideoFiles:
    """Base class of the file-backed sources (not used directly).

    Subclasses set `has_actions` and implement `__len__`, `path(i)`, `_num_frames(i)`
    (`None` when only decoding tells), `_read_frames(i, frames)` and, with actions,
    `_read_actions(i)`: the bodies of the public `num_frames`, `read_frames` and
    `read_actions`. `read_window` and `__getitem__` call them directly, so that a window
    costs one runtime type check (of its own arguments), not one per step.
    """

    has_actions: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def path(self, index: int | np.integer) -> str:
        """The file (or frame folder) behind video `index`, for messages."""
        raise NotImplementedError

    def num_frames(self, index: int | np.integer) -> int | None:
        """Frames of video `index`, or `None` if only decoding can tell."""
        return self._num_frames(index)

    def read_frames(self, index: int | np.integer, frames: np.ndarray | None) -> np.ndarray:
        """uint8 `(len(frames), H, W, C)`: the given frames (`None`: all)."""
        return self._read_frames(index, frames)

    def read_actions(self, index: int | np.integer) -> np.ndarray:
        """The actions of every frame of video `index`."""
        return self._read_actions(index)

    @hot_path
    def _num_frames(self, index: int | np.integer) -> int | None:
        raise NotImplementedError

    @hot_path
    def _read_frames(self, index: int | np.integer, frames: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    @hot_path
    def _read_actions(self, index: int | np.integer) -> np.ndarray:
        raise NotImplementedError

    @hot_path
    def _checked_actions(self, index: int | np.integer, num_frames: int) -> np.ndarray:
        actions = np.asarray(self._read_actions(index))
        if actions.ndim != 1 or not np.issubdtype(actions.dtype, np.integer):
            raise BadVideoError(
                f"actions must be a 1-D integer array (one action per frame); got {actions.dtype} "
                f"of shape {actions.shape}"
            )
        if len(actions) != num_frames:
            raise BadVideoError(
                f"has {num_frames} frames but {len(actions)} actions (expected one per frame)"
            )
        info = np.iinfo(np.int32)
        if len(actions) and (actions.min() < -1 or actions.max() > info.max):
            raise BadVideoError(
                f"actions must be ≥ -1 (-1: no action) and fit int32; got values in "
                f"[{actions.min()}, {actions.max()}]"
            )
        return actions.astype(np.int32)

    @hot_path
    def _checked_frames(self, video: np.ndarray, expected: int | None) -> np.ndarray:
        if video.dtype != np.uint8 or video.ndim != 4:
            raise BadVideoError(
                f"frames must be uint8 (time, height, width, channels); got {video.dtype} {video.shape}"
            )
        if expected is not None and len(video) != expected:
            raise BadVideoError(f"is truncated: expected {expected} frames, read {len(video)}")
        return video

    def read_window(
        self,
        index: int | np.integer,
        seq_len: int,
        frame_stride: int,
        rng: np.random.Generator | None,
    ) -> dict[str, np.ndarray]:
        """One window of video `index`: `seq_len` frames `frame_stride` apart, from
        frame 0 (`rng=None`) or a random start drawn from `rng`, with the actions of
        those same frames.

        **Raises** `BadVideoError` (naming the file) if the video is unreadable,
        truncated, too short for the window, or its actions do not match its frames.
        """
        index = _check_index(self, index)
        try:
            n = self._num_frames(index)
            video = None
            if n is None:  # only decoding tells the length: decode all, then choose
                video = self._checked_frames(self._read_frames(index, None), None)
                n = len(video)
            frames = window_frames(n, seq_len, frame_stride, rng)
            out = {}
            if self.has_actions:  # checked before reading frames: a mismatch costs no decoding
                out["actions"] = self._checked_actions(index, n)[frames]
            if video is None:
                video = self._checked_frames(self._read_frames(index, frames), len(frames))
            else:
                video = video[frames]
            out = {"video": video, **out}
            return out
        except BadVideoError as e:
            raise BadVideoError(f"{self.path(index)}: {e}") from e.__cause__
        except _read_errors() as e:
            raise BadVideoError(
                f"{self.path(index)}: could not be read ({type(e).__name__}: {e})"
            ) from e

    def __getitem__(self, index: int | np.integer) -> dict[str, np.ndarray]:
        """The whole video `index`: `{"video": uint8 (T, H, W, C)}`, plus `"actions":
        int32 (T,)` when the source has actions."""
        index = _check_index(self, index)
        try:
            n = self._num_frames(index)
            video = self._checked_frames(self._read_frames(index, None), n)
            out = {"video": video}
            if self.has_actions:
                out["actions"] = self._checked_actions(index, len(video))
            return out
        except BadVideoError as e:
            raise BadVideoError(f"{self.path(index)}: {e}") from e.__cause__
        except _read_errors() as e:
            raise BadVideoError(
                f"{self.path(index)}: could not be read ({type(e).__name__}: {e})"
            ) from e
