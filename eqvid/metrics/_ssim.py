"""Structural similarity (SSIM) per image: `tf.image.ssim` (TECO) and scikit-image's
Gaussian form (MCVD), in pure JAX."""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Real

from ._psnr import check_data_range, check_image_pair, check_values_fit, compute_dtype, with_check

SSIMForm = Literal["tf", "skimage"]


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of `size` taps centred on the middle one (float64).

    Its outer product with itself is `tf.image.ssim`'s 2-D kernel (TF builds
    `softmax(-(i² + j²) / (2σ²))` over the `size x size` grid, which factorises into
    this), and it is `scipy.ndimage.gaussian_filter`'s kernel with `truncate=3.5`
    when `size = 2 * int(3.5 * sigma + 0.5) + 1` (11 taps for σ = 1.5).
    """
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * np.square(coords) / sigma**2)
    return g / g.sum()


def _valid_filter_matrix(n: int, window: np.ndarray) -> np.ndarray:
    """`(n - size + 1, n)` matrix whose product with a signal is its VALID correlation."""
    size = window.shape[0]
    m = np.zeros((n - size + 1, n), np.float64)
    for i in range(n - size + 1):
        m[i, i : i + size] = window
    return m


def _gaussian_filter(x, rows, cols):
    """Separable VALID Gaussian filter of `(n, height, width, q)` images, as two matrix
    products at full float32 precision (no TF32/bf16 passes on GPU/TPU)."""
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ih,nhwq->niwq", rows, x, precision=hi)
    return jnp.einsum("jw,niwq->nijq", cols, x, precision=hi)


def ssim(
    a: Real[Array | np.ndarray, "*batch height width channels"],
    b: Real[Array | np.ndarray, "*batch height width channels"],
    *,
    data_range: float | int,
    form: SSIMForm = "tf",
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Float[Array, "*batch"]:
    """Structural similarity of each image pair (Wang et al. 2004, Gaussian window).

    Both forms compute the same quantity: local means, variances and covariance
    under an 11x11 Gaussian window (σ = 1.5, normalised to sum 1), the SSIM map
    `(2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))` with
    `C1 = (k1 L)²`, `C2 = (k2 L)²` and population (not sample) statistics, on the
    VALID positions only (windows fully inside the image), averaged over the map and
    then over channels. They differ only in the floating-point arithmetic:

    - `form="tf"`: `tf.image.ssim` as TECO's `teco/metrics.py` ports it — the same
      float32 arithmetic (`cs = (2 E[xy] - 2 μx μy + C2) / (E[x² + y²] - μx² - μy² + C2)`)
      on the images divided by `data_range` (which is what TF does for uint8 input).
    - `form="skimage"`: `skimage.metrics.structural_similarity(a, b,
      gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
      data_range=data_range, channel_axis=-1)`, as MCVD calls it (on grey `uint8`
      frames, `data_range=255`). scikit-image filters the whole image with
      `mode="reflect"` and then crops the 5-pixel border, which leaves exactly the
      VALID positions; it computes in float64. Here the second moments are taken
      about each image's mean (shift-invariant, so the same values) to keep float32
      close to scikit-image's float64 result.

    Against scikit-image's float64 result the `"skimage"` form is within ~1e-7, the
    `"tf"` form within ~1e-6 (up to ~1e-5 on bright, low-contrast images, where
    TF's float32 `E[x²] - μ²` cancels). MCVD's grey
    conversion (`PIL.Image.convert("L")`) and rounding of Moving-MNIST frames are
    preprocessing, not part of this function.

    SSIM is not shift-invariant (the luminance term uses the means themselves):
    images in `[-1, 1]` must be mapped to `[0, 1]` first, as TECO does.

    Pure JAX: jit-able and differentiable; any number of leading axes.

    **Arguments:**

    - `a`, `b`: images of the same shape `(..., height, width, channels)`, height and
      width at least `filter_size`.
    - `data_range`: the width of the value range (`255` for uint8, `1.0` for `[0, 1]`);
      the values must lie in `[0, data_range]`.
    - `form`: `"tf"` or `"skimage"` (see above).
    - `filter_size`, `filter_sigma`, `k1`, `k2`: SSIM parameters (the defaults are the
      papers' and both libraries'; scikit-image ties the size to σ as
      `2 * int(3.5 σ + 0.5) + 1`).

    **Returns:**

    The SSIM of each image pair, shape `(...)`.

    **Raises:**

    `ValueError` for mismatched shapes, images smaller than the filter, an unknown
    `form`, a non-positive `data_range`, an integer array paired with a float one
    (convert both to one scale first), or values outside `[0, data_range]` (up to
    `VALUE_TOLERANCE` of `data_range`; e.g. 0..255 values with `data_range=1.0`, or
    `[-1, 1]` images). Under `jit` such values give NaN (a compiled program cannot
    raise without a host callback).
    """
    if form not in ("tf", "skimage"):
        raise ValueError(f"ssim: `form` must be 'tf' or 'skimage', got {form!r}.")
    if not (isinstance(filter_size, int) and filter_size >= 1 and filter_size % 2 == 1):
        raise ValueError(f"ssim: `filter_size` must be a positive odd int, got {filter_size!r}.")
    if not filter_sigma > 0:
        raise ValueError(f"ssim: `filter_sigma` must be positive, got {filter_sigma!r}.")
    check_image_pair(a, b, fn="ssim", min_size=filter_size)
    data_range = check_data_range(data_range, fn="ssim")

    dtype = compute_dtype(a)
    *lead, h, w, c = a.shape
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    check = check_values_fit(a, b, data_range, fn="ssim", from_zero=True)
    x = a.reshape(-1, h, w, c) / jnp.asarray(data_range, dtype)
    y = b.reshape(-1, h, w, c) / jnp.asarray(data_range, dtype)
    window = gaussian_window(filter_size, filter_sigma)
    rows = jnp.asarray(_valid_filter_matrix(h, window), dtype)
    cols = jnp.asarray(_valid_filter_matrix(w, window), dtype)
    c1 = k1**2  # (k L)² with L = 1 after the division by data_range
    c2 = k2**2

    if form == "tf":
        f = _gaussian_filter(jnp.concatenate([x, y, x * y, x * x + y * y], axis=-1), rows, cols)
        mean0, mean1, exy, ex2y2 = jnp.split(f, 4, axis=-1)
        num0 = mean0 * mean1 * 2.0
        den0 = jnp.square(mean0) + jnp.square(mean1)
        luminance = (num0 + c1) / (den0 + c1)
        cs = (exy * 2.0 - num0 + c2) / (ex2y2 - den0 + c2)
        ssim_map = luminance * cs
    else:
        mx = jnp.mean(x, axis=(1, 2), keepdims=True)
        my = jnp.mean(y, axis=(1, 2), keepdims=True)
        x0, y0 = x - mx, y - my
        f = _gaussian_filter(
            jnp.concatenate([x0, y0, x0 * x0, y0 * y0, x0 * y0], axis=-1), rows, cols
        )
        ux0, uy0, uxx, uyy, uxy = jnp.split(f, 5, axis=-1)
        vx = uxx - ux0 * ux0
        vy = uyy - uy0 * uy0
        vxy = uxy - ux0 * uy0
        ux, uy = ux0 + mx, uy0 + my
        ssim_map = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)) / (
            (ux * ux + uy * uy + c1) * (vx + vy + c2)
        )
    per_channel = jnp.mean(ssim_map, axis=(1, 2))
    return with_check(jnp.mean(per_channel, axis=-1).reshape(lead), check)
