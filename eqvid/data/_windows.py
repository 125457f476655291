"""Which frames of a video a sample reads: a window of `seq_len` frames, `frame_stride`
apart, starting at frame 0 or at a random frame."""

import numpy as np

from ._bad_video import BadVideoError
from ._hot_path import hot_path

__all__ = ["window_frames", "window_span"]


@hot_path
def window_span(seq_len: int, frame_stride: int) -> int:
    """Frames a window covers: `(seq_len - 1) * frame_stride + 1`."""
    return (seq_len - 1) * frame_stride + 1


@hot_path
def window_frames(
    num_frames: int, seq_len: int, frame_stride: int, rng: np.random.Generator | None
) -> np.ndarray:
    """Frame indices `start + frame_stride * arange(seq_len)` of one window.

    `rng=None` starts at frame 0; otherwise the start is uniform over every window that
    fits (`0 .. num_frames - span`).

    **Raises** `BadVideoError` if the video has fewer frames than the window spans.
    """
    span = window_span(seq_len, frame_stride)
    if num_frames < span:
        raise BadVideoError(
            f"has {num_frames} frame(s), too few for a window of seq_len={seq_len} frames "
            f"with frame_stride={frame_stride} (spans {span} frames)"
        )
    start = 0 if rng is None else int(rng.integers(num_frames - span + 1))
    return start + frame_stride * np.arange(seq_len, dtype=np.int64)
