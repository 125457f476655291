"""Videos packed into ArrayRecord shards: one record per frame, read without decoding.

Layout of a packed split `<root>/<split>/`:

- `frames-00000.array_record`, `frames-00001.array_record`, ...: one record per frame,
  its raw uint8 bytes `(H, W, C)`, written with `group_size:1` (random access to
  single frames) and zstd compression; the frames of one video are consecutive
  records of one shard;
- `index.npz`: `shards` (file names, in order), `offsets` / `lengths` (first record
  and frame count of every video), `shapes` (`(N, 3)`: H, W, C of every video),
  `names` (the original files, for messages) and, when packed with actions,
  `actions` (int32, one per record).

A window reads exactly its `seq_len` records. Write these shards with
`pack_array_record` or the converter, `python -m eqvid.data.convert`.
"""

import os
import threading

import numpy as np

from ._bad_video import BadVideoError
from ._hot_path import hot_path
from ._video_files import VideoFiles

__all__ = ["INDEX_FILE", "ArrayRecordVideos"]

INDEX_FILE = "index.npz"
FORMAT_VERSION = 1


def _reader(path: str):
    from array_record.python.array_record_module import ArrayRecordReader

    return ArrayRecordReader(path, "readahead_buffer_size:0", file_reader_buffer_size=32768)


class ShardReaders:
    """One ArrayRecord reader per shard, opened on first use (thread-safe) and never
    pickled: a source holding it can be sent to Grain's worker processes, each of which
    opens its own readers."""

    def __init__(self, shards: list[str]):
        self.shards = list(shards)
        self._readers: list = [None] * len(self.shards)
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"shards": self.shards}

    def __setstate__(self, state):
        self.__init__(state["shards"])

    def __getitem__(self, shard: int):
        if self._readers[shard] is None:
            with self._lock:
                if self._readers[shard] is None:
                    self._readers[shard] = _reader(self.shards[shard])
        return self._readers[shard]


class ArrayRecordVideos(VideoFiles):
    """Videos packed by `eqvid.data.convert` into ArrayRecord shards, as a Grain
    random-access source.

    **Arguments**

    - `root`: the converter's output folder (holding `<split>/index.npz`).
    - `split`: `"train"` or `"test"`.
    - `actions`: return the packed actions (an error if the shards were packed
      without them); `False` reads the videos alone.

    `source[i]` is `{"video": uint8 (T, H, W, C)}` (plus `"actions": int32 (T,)`).

    **Raises** `FileNotFoundError` if the index or a shard is missing, `ValueError` if
    the index does not match the shards, the split is empty, or actions are asked
    for but were not packed.
    """

    def __init__(self, root: str, split: str = "train", *, actions: bool = True) -> None:
        if not root:
            raise ValueError(
                "ArrayRecordVideos: `root` is empty; pass the converter's output folder (--root)."
            )
        self.folder = os.path.join(root, split)
        index_path = os.path.join(self.folder, INDEX_FILE)
        if not os.path.isfile(index_path):
            raise FileNotFoundError(
                f"ArrayRecordVideos: no {INDEX_FILE} in {self.folder!r}; pack the split first with "
                "`python -m eqvid.data.convert`."
            )
        with np.load(index_path) as index:
            if int(index["format_version"]) != FORMAT_VERSION:
                raise ValueError(
                    f"ArrayRecordVideos: {index_path!r} has format version {int(index['format_version'])}; "
                    f"this eqvid reads version {FORMAT_VERSION}. Re-pack the data."
                )
            self.shards = [os.path.join(self.folder, str(s)) for s in index["shards"]]
            self.offsets = index["offsets"].astype(np.int64)
            self.lengths = index["lengths"].astype(np.int64)
            self.shapes = index["shapes"].astype(np.int64)
            self.names = [str(n) for n in index["names"]]
            self.shard_records = index["shard_records"].astype(np.int64)
            packed_actions = index["actions"].astype(np.int32) if "actions" in index.files else None
        if len(self.offsets) == 0:
            raise ValueError(f"ArrayRecordVideos: {index_path!r} lists no videos (empty split).")
        if actions and packed_actions is None:
            raise ValueError(
                f"ArrayRecordVideos: {self.folder!r} was packed without actions; pass actions=False "
                "(--no-actions) or re-pack from data with actions."
            )
        self.has_actions = bool(actions)
        self._actions = packed_actions if actions else None
        for shard in self.shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(
                    f"ArrayRecordVideos: shard {shard!r} listed in {index_path!r} is missing."
                )
        self._shard_starts = np.concatenate([[0], np.cumsum(self.shard_records)])
        self._readers = ShardReaders(self.shards)

    def __len__(self) -> int:
        return len(self.offsets)

    def __repr__(self) -> str:
        return f"ArrayRecordVideos({self.folder!r}, {len(self)} videos, {len(self.shards)} shards, actions={self.has_actions})"

    def path(self, index: int | np.integer) -> str:
        return f"{self.names[index]} (packed in {self.folder})"

    @hot_path
    def _num_frames(self, index: int | np.integer) -> int | None:
        return int(self.lengths[index])

    @hot_path
    @hot_path
    def _read_frames(self, index: int | np.integer, frames: np.ndarray | None) -> np.ndarray:
        wanted = np.arange(self.lengths[index]) if frames is None else frames
        first = int(self.offsets[index])
        shard = int(np.searchsorted(self._shard_starts, first, side="right")) - 1
        positions = [first - int(self._shard_starts[shard]) + int(f) for f in wanted]
        reader = self._readers[shard]
        if len(positions) > 1 and positions[-1] - positions[0] == len(positions) - 1:
            records = reader.read(positions[0], positions[-1] + 1)  # consecutive: one range read
        else:
            records = reader.read(positions)
        shape = tuple(int(s) for s in self.shapes[index])
        frame_bytes = shape[0] * shape[1] * shape[2]
        if any(len(r) != frame_bytes for r in records):
            raise BadVideoError(
                f"a packed frame is not {frame_bytes} bytes ({shape}): the shard is corrupt"
            )
        return np.frombuffer(b"".join(records), np.uint8).reshape((len(positions),) + shape)

    @hot_path
    def _read_actions(self, index: int | np.integer) -> np.ndarray:
        if self._actions is None:
            raise ValueError(
                f"ArrayRecordVideos: {self.folder!r} was opened with actions=False; it has no "
                "actions to read."
            )
        first = int(self.offsets[index])
        return self._actions[first : first + int(self.lengths[index])]
