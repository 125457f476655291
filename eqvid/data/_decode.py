"""Decoding video files (mp4, webm, gif, ...) with PyAV, whose wheels bundle FFmpeg.

`video_frame_count(path)` reads the frame count from the container when it records
one (mp4, gif), else `None` (webm). `decode_frames(path, frames)` decodes from the
start and keeps the requested frames, stopping after the last one; it raises
`BadVideoError` when the file holds fewer frames than asked for (truncated).
"""

import numpy as np

from ._bad_video import BadVideoError

__all__ = ["VIDEO_EXTENSIONS", "decode_frames", "video_frame_count"]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".avi", ".mkv", ".mov")


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover
        raise ImportError("decoding video files needs PyAV: pip install 'av>=14'") from e
    return av


def video_frame_count(path: str) -> int | None:
    """Frames of the first video stream as recorded by the container; `None` if it
    records none."""
    with _av().open(path) as container:
        if not container.streams.video:
            raise BadVideoError("holds no video stream")
        frames = int(container.streams.video[0].frames)
    return frames if frames > 0 else None


def decode_frames(path: str, frames: np.ndarray | None, *, grayscale: bool = False) -> np.ndarray:
    """uint8 `(len(frames), H, W, C)` (C = 3, or 1 with `grayscale`): frames `frames`
    (indices, any order; `None`: every frame) of the first video stream of `path`.

    **Raises** `BadVideoError` if the stream ends before the last requested frame.
    """
    fmt = "gray" if grayscale else "rgb24"
    wanted: set[int] | None = None
    last: int | None = None
    if frames is not None:
        wanted = {int(f) for f in frames}
        last = max(wanted, default=-1)
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    with _av().open(path) as container:
        if not container.streams.video:
            raise BadVideoError("holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            if wanted is None or i in wanted:
                kept[i] = frame.to_ndarray(format=fmt)
            if last is not None and i >= last:
                break
    if frames is None:
        if not kept:
            raise BadVideoError("holds no decodable frame")
        video = np.stack([kept[i] for i in range(decoded)])
    else:
        if last is not None and last >= decoded:
            raise BadVideoError(
                f"is truncated: frame {last} was requested but only {decoded} frame(s) could be decoded"
            )
        video = (
            np.stack([kept[int(f)] for f in frames])
            if len(frames)
            else np.empty((0, 0, 0, 1), np.uint8)
        )
    return video[..., None] if grayscale else video
