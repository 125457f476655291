"""MeBT's frame folders: frames stored as `[VIDEO_ID]_[FRAME].png|jpg` image files,
listed one per line in `<root>/train.txt` and `<root>/test.txt`.

Listed paths are relative to `<root>` (or absolute). A video is every listed frame
with the same folder and `VIDEO_ID`, ordered by the integer `FRAME` number. Where
frame numbers jump, each continuous run is read as its own video, as MeBT does
(with a warning that counts them).
"""

import os
import warnings

import numpy as np
from PIL import Image

from ._bad_video import BadVideoError, BadVideoWarning
from ._hot_path import hot_path
from ._video_files import VideoFiles

__all__ = ["FrameFolderVideos"]

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _parse_line(
    root: str, list_file: str, number: int, line: str
) -> tuple[tuple[str, str], int, str]:
    path = line if os.path.isabs(line) else os.path.join(root, line)
    stem, ext = os.path.splitext(os.path.basename(path))
    video, sep, frame = stem.rpartition("_")
    if ext.lower() not in _IMAGE_EXTENSIONS or not sep or not video or not frame.isdigit():
        raise ValueError(
            f"FrameFolderVideos: line {number} of {list_file!r} is {line!r}; expected a frame "
            "file named [VIDEO_ID]_[FRAME].png or .jpg (FRAME an integer)."
        )
    return (os.path.dirname(path), video), int(frame), path


class FrameFolderVideos(VideoFiles):
    """MeBT-style frame folders as a Grain random-access source.

    **Arguments**

    - `root`: the folder holding `train.txt` / `test.txt` (listed paths are relative
      to it).
    - `split`: `"train"` or `"test"`: reads `<root>/<split>.txt`.
    - `grayscale`: decode frames to one channel (default: RGB, 3 channels).

    `source[i]` is `{"video": uint8 (T, H, W, C)}`; a window opens only its frames.

    **Raises** `FileNotFoundError` if the list file is missing, `ValueError` if it
    lists no frame (empty split), a line is not `[VIDEO_ID]_[FRAME].png|jpg`, or a
    frame is listed twice.
    """

    def __init__(self, root: str, split: str = "train", *, grayscale: bool = False) -> None:
        if not root:
            raise ValueError(
                "FrameFolderVideos: `root` is empty; pass the dataset folder (--root)."
            )
        list_file = os.path.join(root, f"{split}.txt")
        if not os.path.isfile(list_file):
            raise FileNotFoundError(
                f"FrameFolderVideos: no list file {list_file!r}; expected `<root>/{split}.txt` listing "
                "one [VIDEO_ID]_[FRAME].png|jpg frame per line."
            )
        videos: dict[tuple[str, str], dict[int, str]] = {}
        with open(list_file) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                key, frame, path = _parse_line(root, list_file, number, line)
                frames = videos.setdefault(key, {})
                if frame in frames:
                    raise ValueError(
                        f"FrameFolderVideos: {list_file!r} lists frame {frame} of video {key[1]!r} "
                        f"twice ({frames[frame]!r} and {path!r}, line {number})."
                    )
                frames[frame] = path
        if not videos:
            raise ValueError(f"FrameFolderVideos: {list_file!r} lists no frames (empty split).")
        self.list_file = list_file
        self.grayscale = bool(grayscale)
        self.videos: list[list[str]] = []
        self.names: list[str] = []
        gapped = 0
        for (folder, video), frames in sorted(videos.items()):
            numbers = sorted(frames)
            runs = np.split(np.array(numbers), np.flatnonzero(np.diff(numbers) != 1) + 1)
            gapped += len(runs) > 1
            for _k, run in enumerate(runs):
                self.videos.append([frames[int(n)] for n in run])
                suffix = f" (frames {run[0]}..{run[-1]})" if len(runs) > 1 else ""
                self.names.append(os.path.join(folder, f"{video}_*{suffix}"))
        if gapped:
            warnings.warn(
                f"FrameFolderVideos: frame numbers jump in {gapped} video(s) of {list_file!r}; each "
                "continuous run of frames is read as its own video.",
                BadVideoWarning,
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.videos)

    def __repr__(self) -> str:
        return (
            f"FrameFolderVideos({self.list_file!r}, {len(self)} videos, grayscale={self.grayscale})"
        )

    def path(self, index: int | np.integer) -> str:
        return self.names[index]

    @hot_path
    def _num_frames(self, index: int | np.integer) -> int | None:
        return len(self.videos[index])

    @hot_path
    def _read_frames(self, index: int | np.integer, frames: np.ndarray | None) -> np.ndarray:
        paths = self.videos[index]
        chosen = paths if frames is None else [paths[int(f)] for f in frames]
        mode = "L" if self.grayscale else "RGB"
        images = []
        for path in chosen:
            with Image.open(path) as image:
                array = np.asarray(image.convert(mode))
            if images and array.shape != images[0].shape:
                raise BadVideoError(
                    f"frames differ in size: {os.path.basename(path)!r} is {array.shape[:2]}, "
                    f"earlier frames {images[0].shape[:2]}"
                )
            images.append(array)
        video = np.stack(images)
        return video[..., None] if self.grayscale else video
