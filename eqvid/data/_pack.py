"""Packing any video source into ArrayRecord shards (see `_array_record.py` for the
layout)."""

import dataclasses
import glob
import os
import shutil
import warnings
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from ._array_record import FORMAT_VERSION, INDEX_FILE
from ._bad_video import BadVideoError, BadVideoWarning
from ._transforms import resize_crop
from ._video_files import VideoFiles

__all__ = ["PackSummary", "pack_array_record"]


@dataclasses.dataclass(frozen=True)
class PackSummary:
    """What `pack_array_record` wrote."""

    folder: str
    videos: int
    frames: int
    shards: int
    bytes: int
    """Size of the shards on disk."""
    skipped: tuple[str, ...]
    """The bad files left out (with `on_bad_file="skip"`), each with its reason."""


def pack_array_record(
    source: VideoFiles,
    folder: str,
    *,
    frame_size: int | None = None,
    interpolation: str = "bilinear",
    on_bad_file: Literal["error", "skip"] = "error",
    shard_mb: float = 512.0,
    compression: str = "zstd:3",
    overwrite: bool = False,
    progress: bool = True,
) -> PackSummary:
    """Write every video of `source` into ArrayRecord shards under `folder`.

    **Arguments**

    - `source`: a file-backed source (`TecoVideos`, `FrameFolderVideos`,
      `VideoFolderVideos`, `ArrayRecordVideos`); its actions are packed when it has
      them.
    - `folder`: output folder (one split), created if needed.
    - `frame_size`: resize frames (centre square crop) to this size while packing;
      `None` keeps them as they are.
    - `on_bad_file`: `"error"` stops at the first bad file; `"skip"` leaves it out
      with a `BadVideoWarning` and lists it in the summary.
    - `shard_mb`: start a new shard once this many MiB of raw frames went into one.
    - `compression`: ArrayRecord compression (`zstd:N`, `snappy`, `brotli:N`,
      `uncompressed`).
    - `overwrite`: replace shards already in `folder` (otherwise an error).

    **Returns** a `PackSummary`. Shards and index are written to `<folder>.partial`
    and moved into `folder` once complete: a run that fails (a bad file, a full disk,
    Ctrl-C) removes what it wrote and leaves `folder` as it was, the data it was to
    overwrite included.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    old = glob.glob(os.path.join(folder, "frames-*.array_record")) + glob.glob(
        os.path.join(folder, INDEX_FILE)
    )
    if old and not overwrite:
        raise FileExistsError(
            f"pack_array_record: {folder!r} already holds packed data; pass overwrite=True (--overwrite)."
        )
    # Written aside, then moved in: a failed or interrupted run leaves neither shards
    # nor a half-written index behind, and keeps the data it was to overwrite.
    partial = os.path.normpath(folder) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
    os.makedirs(partial)
    try:
        shards, index, total, skipped = _write_shards(
            source,
            partial,
            ArrayRecordWriter,
            frame_size=frame_size,
            interpolation=interpolation,
            on_bad_file=on_bad_file,
            shard_limit=int(shard_mb * 2**20),
            options=f"group_size:1,{compression}",
            progress_name=os.path.basename(os.path.normpath(folder)),
            progress=progress,
        )
        os.makedirs(folder, exist_ok=True)
        for path in sorted(old, key=lambda path: not path.endswith(INDEX_FILE)):
            os.remove(path)  # the index first: never an index naming missing shards
        for name in shards:
            os.replace(os.path.join(partial, name), os.path.join(folder, name))
        os.replace(os.path.join(partial, INDEX_FILE), os.path.join(folder, INDEX_FILE))
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    size = sum(os.path.getsize(os.path.join(folder, s)) for s in shards)
    return PackSummary(folder, len(index["offsets"]), total, len(shards), size, tuple(skipped))


def _write_shards(
    source: VideoFiles,
    folder: str,
    writer_class,
    *,
    frame_size: int | None,
    interpolation: str,
    on_bad_file: str,
    shard_limit: int,
    options: str,
    progress_name: str,
    progress: bool,
) -> tuple[list[str], dict, int, list[str]]:
    """Write the shards and then the index into `folder`; returns the shard names, the
    index, the number of frames and the bad files skipped."""
    shards: list[str] = []
    shard_records: list[int] = []
    offsets, lengths, shapes, names, actions = [], [], [], [], []
    skipped: list[str] = []
    writer, in_shard, records_in_shard, total = None, 0, 0, 0
    bar = tqdm(
        range(len(source)),
        desc=f"pack {progress_name}",
        unit="video",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for i in bar:
            try:
                item = source[i]
            except BadVideoError as e:
                if on_bad_file == "error":
                    raise
                skipped.append(str(e))
                warnings.warn(
                    f"skipped bad file {e} ({len(skipped)} skipped so far)",
                    BadVideoWarning,
                    stacklevel=3,
                )
                continue
            video = resize_crop(
                item["video"], frame_size, crop="center", interpolation=interpolation
            )
            if writer is None or in_shard >= shard_limit:
                if writer is not None:
                    writer.close()
                    shard_records.append(records_in_shard)
                shards.append(f"frames-{len(shards):05d}.array_record")
                writer = writer_class(os.path.join(folder, shards[-1]), options)
                in_shard, records_in_shard = 0, 0
            offsets.append(total)
            lengths.append(len(video))
            shapes.append(video.shape[1:])
            names.append(source.path(i))
            if source.has_actions:
                actions.append(item["actions"])
            for frame in video:
                writer.write(np.ascontiguousarray(frame).tobytes())
            in_shard += video.nbytes
            records_in_shard += len(video)
            total += len(video)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            shard_records.append(records_in_shard)
    if not offsets:
        raise ValueError(f"pack_array_record: no readable video in {source!r}; nothing was packed.")
    index = dict(
        format_version=np.int64(FORMAT_VERSION),
        shards=np.array(shards),
        shard_records=np.array(shard_records, np.int64),
        offsets=np.array(offsets, np.int64),
        lengths=np.array(lengths, np.int64),
        shapes=np.array(shapes, np.int64).reshape(-1, 3),
        names=np.array(names),
    )
    if source.has_actions:
        index["actions"] = np.concatenate(actions).astype(np.int32)
    np.savez(os.path.join(folder, INDEX_FILE), allow_pickle=False, **index)  # plain arrays only
    return shards, index, total, skipped
