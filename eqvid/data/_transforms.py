"""Per-window frame transforms: resize the shorter side and crop a square, then scale
uint8 values to floats.

Resizing uses Pillow on whole uint8 frames: the crop box (a square of the shorter
side, centred or at a random offset shared by every frame of the window) is resized
to `frame_size x frame_size` in one step, so downscaling is antialiased (Pillow
filters with a support widened by the scale factor).
"""

from typing import Literal

import numpy as np
from PIL import Image

from ._hot_path import hot_path

__all__ = ["INTERPOLATIONS", "resize_crop", "scale_video"]

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@hot_path
def _crop_box(
    height: int, width: int, crop: str, rng: np.random.Generator | None
) -> tuple[int, int, int, int]:
    """`(left, top, right, bottom)` of the largest centred or random square."""
    side = min(height, width)
    free_y, free_x = height - side, width - side
    if crop == "random" and rng is not None:
        top, left = int(rng.integers(free_y + 1)), int(rng.integers(free_x + 1))
    else:
        top, left = free_y // 2, free_x // 2
    return left, top, left + side, top + side


@hot_path
def resize_crop(
    video: np.ndarray,
    frame_size: int | None,
    *,
    crop: Literal["center", "random"] = "center",
    interpolation: str = "bilinear",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Crop the largest square and resize it to `frame_size`, for every frame alike.

    **Arguments**

    - `video`: uint8 `(time, height, width, channels)`.
    - `frame_size`: output height and width; `None` returns `video` unchanged.
    - `crop`: `"center"`, or `"random"` (one offset per call, drawn from `rng`; without
      an `rng` the crop is centred).
    - `interpolation`: a key of `INTERPOLATIONS`.

    **Returns** uint8 `(time, frame_size, frame_size, channels)`; `video` itself when it
    already has that size.
    """
    if frame_size is None:
        return video
    t, h, w, c = video.shape
    if h == w == frame_size:
        return video
    box = _crop_box(h, w, crop, rng)
    if h == w:
        box = (0, 0, w, h)
    resample = INTERPOLATIONS[interpolation]
    out = np.empty((t, frame_size, frame_size, c), np.uint8)
    size = (frame_size, frame_size)
    for i in range(t):
        if c in (1, 3):
            image = Image.fromarray(
                video[i, :, :, 0] if c == 1 else video[i], "L" if c == 1 else "RGB"
            )
            resized = np.asarray(image.resize(size, resample, box=box))
            out[i] = resized[..., None] if c == 1 else resized
        else:  # any other channel count: channel by channel
            for k in range(c):
                image = Image.fromarray(np.ascontiguousarray(video[i, :, :, k]), "L")
                out[i, :, :, k] = np.asarray(image.resize(size, resample, box=box))
    return out


_SIGNED = np.float32(1.0 / 127.5)
_UNIT = np.float32(1.0 / 255.0)


@hot_path
def scale_video(video: np.ndarray, value_range: Literal["signed", "unit"]) -> np.ndarray:
    """uint8 → float32: `"signed"` maps to `[-1, 1]` (`x / 127.5 - 1`), `"unit"` to
    `[0, 1]` (`x / 255`)."""
    if value_range == "signed":
        return video.astype(np.float32) * _SIGNED - np.float32(1.0)
    return video.astype(np.float32) * _UNIT
