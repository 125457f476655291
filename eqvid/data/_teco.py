"""TECO's trajectory format: one file per trajectory under `<root>/{train,test}/**`.

- `.npz` with `video` uint8 `(T, H, W, C)` (or `(T, H, W)`: one channel) and, for
  action-conditioned data, `actions` integers `(T,)` — DMLab;
- `.mp4` with an optional sidecar `.npz` of the same name holding `actions` —
  Minecraft (with actions) and Habitat (without).
"""

import os

import numpy as np

from ._bad_video import BadVideoError
from ._decode import decode_frames, video_frame_count
from ._hot_path import hot_path
from ._npz import NpzMember, npz_member, read_npz_rows
from ._video_files import VideoFiles, list_split_files

__all__ = ["TecoVideos"]


class TecoVideos(VideoFiles):
    """TECO trajectories (`.npz`, or `.mp4` + sidecar `.npz` of actions) as a Grain
    random-access source.

    **Arguments**

    - `root`: the dataset folder holding `train/` and `test/`.
    - `split`: `"train"` or `"test"` (any subfolder name works).
    - `actions`: return each frame's action (`int32`, -1 = no action). A trajectory
      without actions, or whose action count differs from its frame count, is then a
      bad file. `False` reads the videos alone.

    `source[i]` is `{"video": uint8 (T, H, W, C), "actions": int32 (T,)}`; an `.npz`
    window reads only the frames it needs (uncompressed `np.savez` files).

    **Raises** `FileNotFoundError` / `ValueError` if the split folder is missing or
    empty.
    """

    def __init__(self, root: str, split: str = "train", *, actions: bool = True) -> None:
        self.folder, files = list_split_files(root, split, (".npz", ".mp4"), "TecoVideos")
        videos = {f[:-4] for f in files if f.lower().endswith(".mp4")}
        # An .npz beside an .mp4 of the same name is that video's sidecar of actions.
        self.files = [f for f in files if f.lower().endswith(".mp4") or f[:-4] not in videos]
        self.has_actions = bool(actions)
        self._members: dict[tuple[str, str], NpzMember | None] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"TecoVideos({self.folder!r}, {len(self)} videos, actions={self.has_actions})"

    def path(self, index: int | np.integer) -> str:
        return self.files[index]

    @hot_path
    def _member(self, path: str, key: str) -> NpzMember | None:
        if (path, key) not in self._members:
            self._members[(path, key)] = npz_member(path, key)
        return self._members[(path, key)]

    @hot_path
    def _video_member(self, path: str) -> NpzMember:
        member = self._member(path, "video")
        if member is None:
            raise BadVideoError("has no `video` array")
        if member.dtype != np.uint8 or len(member.shape) not in (3, 4):
            raise BadVideoError(
                f"`video` must be uint8 (T, H, W, C) or (T, H, W); got {member.dtype} {member.shape}"
            )
        return member

    @hot_path
    def _num_frames(self, index: int | np.integer) -> int | None:
        path = self.files[index]
        if path.lower().endswith(".mp4"):
            return video_frame_count(path)
        return self._video_member(path).shape[0]

    @hot_path
    def _read_frames(self, index: int | np.integer, frames: np.ndarray | None) -> np.ndarray:
        path = self.files[index]
        if path.lower().endswith(".mp4"):
            return decode_frames(path, frames)
        video = read_npz_rows(path, self._video_member(path), frames)
        return video[..., None] if video.ndim == 3 else video

    @hot_path
    def _read_actions(self, index: int | np.integer) -> np.ndarray:
        path = self.files[index]
        holder = path[:-4] + ".npz" if path.lower().endswith(".mp4") else path
        if holder != path and not os.path.exists(holder):
            raise BadVideoError(
                f"has no sidecar actions file {os.path.basename(holder)!r}; pass actions=False "
                "(--no-actions) to read videos without actions"
            )
        member = self._member(holder, "actions")
        if member is None:
            where = f"its sidecar {os.path.basename(holder)!r}" if holder != path else "it"
            raise BadVideoError(
                f"{where} has no `actions` array; pass actions=False (--no-actions) to read "
                "videos without actions"
            )
        return read_npz_rows(holder, member, None)
