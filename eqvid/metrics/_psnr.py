"""Peak signal-to-noise ratio per image, in TECO's form `20 log10(max) - 10 log10(mse)`."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Real


def check_image_pair(a, b, *, fn: str, min_size: int = 1) -> None:
    """Shared argument checks of the per-image metrics (static shapes only, so jit-safe)."""
    if a.ndim < 3:
        raise ValueError(
            f"{fn}: `a` must have shape (..., height, width, channels), got shape {a.shape}."
        )
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: `a` and `b` must have the same shape, got {a.shape} and {b.shape}."
        )
    h, w = a.shape[-3], a.shape[-2]
    if h < min_size or w < min_size:
        raise ValueError(
            f"{fn}: images must be at least {min_size}x{min_size} pixels, got "
            f"height {h} and width {w} (shape {a.shape})."
        )


def check_data_range(data_range, *, fn: str) -> float:
    """`data_range` must be a positive finite Python number (a constant, never traced)."""
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float, np.number)):
        raise TypeError(
            f"{fn}: `data_range` must be a positive number (255 for uint8 images, 1.0 for "
            f"[0, 1], 2.0 for [-1, 1]), got {type(data_range).__name__} {data_range!r}."
        )
    if not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"{fn}: `data_range` must be positive and finite, got {data_range}.")
    return float(data_range)


def compute_dtype(x):
    """float64 for float64 input when JAX runs with x64 enabled, float32 otherwise."""
    if np.dtype(x.dtype) == np.float64 and jax.config.read("jax_enable_x64"):
        return jnp.float64
    return jnp.float32


def psnr(
    a: Real[Array | np.ndarray, "*batch height width channels"],
    b: Real[Array | np.ndarray, "*batch height width channels"],
    *,
    data_range: float | int,
) -> Float[Array, "*batch"]:
    """Peak signal-to-noise ratio of each image pair, in decibels.

    `20 log10(data_range) - 10 log10(mse)` with the mean squared error over
    `(height, width, channels)` of each image, computed in float32 (integer inputs,
    e.g. `uint8`, are cast first, so differences do not wrap; float64 input stays
    float64 when JAX runs with x64). This is TECO's
    `teco/metrics.py` formula; for the same images expressed in `[0, 255]` with
    `data_range=255` or in `[0, 1]` with `data_range=1` it gives the same value.

    Identical images (`mse = 0`) give `+inf`, as in TECO and
    `skimage.metrics.peak_signal_noise_ratio`; nothing is clamped, so a mean over
    frames that contains one is `inf` too (report it, or clip explicitly).

    Pure JAX: jit-able, differentiable, works on any number of leading axes.

    **Arguments:**

    - `a`, `b`: images of the same shape `(..., height, width, channels)`.
    - `data_range`: the width of the value range, a Python number (`255` for
      `uint8`, `1.0` for `[0, 1]`, `2.0` for `[-1, 1]`).

    **Returns:**

    The PSNR of each image pair, shape `(...)` (the leading axes).

    **Raises:**

    `ValueError` if the shapes differ or are not images; `TypeError`/`ValueError`
    if `data_range` is not a positive number.
    """
    check_image_pair(a, b, fn="psnr")
    data_range = check_data_range(data_range, fn="psnr")
    dtype = compute_dtype(a)
    a = jnp.asarray(a, dtype)
    b = jnp.asarray(b, dtype)
    mse = jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))
    return jnp.asarray(20.0 * np.log10(data_range), dtype) - 10.0 * jnp.log10(mse)
