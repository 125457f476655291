"""A plain folder of video files (mp4, webm, gif, avi, mkv, mov), decoded with PyAV —
e.g. CLEVRER's mp4 files."""

import numpy as np

from ._decode import VIDEO_EXTENSIONS, decode_frames, video_frame_count
from ._hot_path import hot_path
from ._video_files import VideoFiles, list_split_files

__all__ = ["VideoFolderVideos"]


class VideoFolderVideos(VideoFiles):
    """Every video file under a folder, as a Grain random-access source.

    **Arguments**

    - `root`: the dataset folder.
    - `split`: with `split_folders`, the videos are those under `<root>/<split>/`
      (recursively).
    - `split_folders`: `False` reads every video under `<root>` itself, whatever the
      split (one split only: do not evaluate on it what you trained on).
    - `grayscale`: decode to one channel (default: RGB, 3 channels).

    `source[i]` is `{"video": uint8 (T, H, W, C)}`. Windows decode from the first
    frame up to the last frame they need (a file whose container records no frame
    count, such as webm, is decoded whole).

    **Raises** `FileNotFoundError` / `ValueError` if the folder is missing or holds no
    video file.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        split_folders: bool = True,
        grayscale: bool = False,
    ) -> None:
        self.folder, self.files = list_split_files(
            root, split if split_folders else "", VIDEO_EXTENSIONS, "VideoFolderVideos"
        )
        self.grayscale = bool(grayscale)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"VideoFolderVideos({self.folder!r}, {len(self)} videos, grayscale={self.grayscale})"

    def path(self, index: int | np.integer) -> str:
        return self.files[index]

    @hot_path
    def _num_frames(self, index: int | np.integer) -> int | None:
        return video_frame_count(self.files[index])

    @hot_path
    def _read_frames(self, index: int | np.integer, frames: np.ndarray | None) -> np.ndarray:
        return decode_frames(self.files[index], frames, grayscale=self.grayscale)
