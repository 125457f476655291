"""Peak signal-to-noise ratio per image, in TECO's form `20 log10(max) - 10 log10(mse)`."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, Bool, Float, Real

VALUE_TOLERANCE = 1e-6
"""How far values may overshoot the range `data_range` allows, as a fraction of
`data_range` (float round-off, e.g. after resizing)."""


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
    a_int, b_int = (jnp.issubdtype(x.dtype, jnp.integer) for x in (a, b))
    if a_int != b_int:
        raise ValueError(
            f"{fn}: `a` and `b` must be on the same scale, got `a` {a.dtype} and `b` "
            f"{b.dtype}; convert both to the same value range first (e.g. both uint8 with "
            "data_range=255, or both float in [0, 1] with data_range=1.0)."
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


@jax.jit
def _value_bounds(a, b):
    """`[min(a), max(a), min(b), max(b)]`."""
    return jnp.stack([jnp.min(a), jnp.max(a), jnp.min(b), jnp.max(b)])


def check_values_fit(
    a: Array, b: Array, data_range: float, *, fn: str, from_zero: bool
) -> tuple[Bool[Array, ""], str] | None:
    """The values of `a` and `b` must fit `data_range` (up to `VALUE_TOLERANCE`):

    - `from_zero=False` (PSNR, shift-invariant): their span, `max - min` over both
      images, is at most `data_range` (`[0, 1]` or `[-1, 1]` with `data_range=2`);
    - `from_zero=True` (SSIM, not shift-invariant): they lie in `[0, data_range]`.

    Known values (outside `jit`) raise a `ValueError` here, naming the argument(s), the
    values found and `data_range`; then `None` is returned. For traced values (under
    `jit`, `vmap`) the `(bad, message)` pair is returned, for `with_check` to attach to
    the metric's result (the small result, not the images: a check on the images would
    pass them through a conditional and copy them). NaN values pass (the metric is
    then NaN).
    """
    if a.size == 0:
        return None
    slack = VALUE_TOLERANCE * data_range
    low, high = -slack, data_range + slack
    if from_zero:
        rule = f"must lie in [0, data_range] = [0, {data_range:g}]"
    else:
        rule = (
            f"must span at most data_range={data_range:g} (max - min over both images; "
            "data_range is the width of the value range)"
        )
    hint = (
        " Pass the data_range of the images (255 for uint8 or 0..255 values, 1.0 for "
        "[0, 1]" + ("" if from_zero else ", 2.0 for [-1, 1]") + "), or clip or rescale them "
        "into it first."
    )
    shift = " SSIM is not shift-invariant: map [-1, 1] images to [0, 1] first."
    if isinstance(a, Tracer) or isinstance(b, Tracer):
        # One pass over the images where a range is given (XLA does not fuse a min and
        # a max reduction of one array), two reductions each for the span.
        if from_zero:
            bad = jnp.any((a < low) | (a > high) | (b < low) | (b > high))
        else:
            bounds = _value_bounds(a, b)
            bad = jnp.maximum(bounds[1], bounds[3]) - jnp.minimum(bounds[0], bounds[2]) > high
        msg = f"{fn}: the values of `a` and `b` {rule}; checked at run time, they do not."
        return bad, msg + hint + (shift if from_zero else "")
    a_lo, a_hi, b_lo, b_hi = (float(v) for v in _value_bounds(a, b))
    if from_zero:
        if low <= min(a_lo, b_lo) and max(a_hi, b_hi) <= high:
            return None
    elif max(a_hi, b_hi) - min(a_lo, b_lo) <= high:
        return None
    found = f"`a` holds values from {a_lo:.6g} to {a_hi:.6g}, `b` from {b_lo:.6g} to {b_hi:.6g}"
    if not from_zero:
        raise ValueError(f"{fn}: the values of `a` and `b` {rule}; {found}.{hint}")
    out = [name for name, lo, hi in (("a", a_lo, a_hi), ("b", b_lo, b_hi)) if lo < low or hi > high]
    head = " and ".join(f"`{n}`" for n in out)
    negative = min(a_lo, b_lo) < low
    raise ValueError(
        f"{fn}: the values of {head} {rule}; {found}.{hint}{shift if negative else ''}"
    )


def with_check(result: Array, check: tuple[Bool[Array, ""], str] | None) -> Array:
    """`result`, or NaN where the run-time check of `check_values_fit` fails. Traced
    values cannot raise without a host callback in the program (a device sync, and an
    abort instead of an error on a multi-device mesh): a score from values that do
    not fit `data_range` is NaN, never a plausible number."""
    if check is None:
        return result
    return jnp.where(check[0], jnp.asarray(jnp.nan, result.dtype), result)


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
      `uint8`, `1.0` for `[0, 1]`, `2.0` for `[-1, 1]`); the values of `a` and `b`
      together must span no more than it.

    **Returns:**

    The PSNR of each image pair, shape `(...)` (the leading axes).

    **Raises:**

    `ValueError` if the shapes differ or are not images, if one of `a`, `b` is an
    integer array and the other a float one (convert both to one scale first), or if
    the values span more than `data_range` (e.g. 0..255 values with
    `data_range=1.0`), up to `VALUE_TOLERANCE`; `TypeError`/`ValueError` if
    `data_range` is not a positive number. Under `jit` values spanning more than
    `data_range` give NaN (a compiled program cannot raise without a host callback).
    """
    check_image_pair(a, b, fn="psnr")
    data_range = check_data_range(data_range, fn="psnr")
    dtype = compute_dtype(a)
    a = jnp.asarray(a, dtype)
    b = jnp.asarray(b, dtype)
    check = check_values_fit(a, b, data_range, fn="psnr", from_zero=False)
    mse = jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))
    return with_check(
        jnp.asarray(20.0 * np.log10(data_range), dtype) - 10.0 * jnp.log10(mse), check
    )


def psnr_ceiling(height: int, width: int, channels: int, *, levels: int = 255) -> float:
    """The PSNR (dB) of two `height × width × channels` images that differ by one
    quantisation step (`1 / levels` of the range) in a single value: the highest PSNR
    two different images of `levels + 1` levels (`uint8`: 255) can have.

    Evaluation reports score frames identical to the truth (`psnr` = `+inf`) with this
    value, so their means stay finite and an exact frame still ranks above any other:
    `10 log10(levels² · height · width · channels)`, 84.25 dB for 64 × 64 grey frames.
    """
    for name, value in (
        ("height", height),
        ("width", width),
        ("channels", channels),
        ("levels", levels),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"psnr_ceiling: `{name}` must be an int >= 1, got {value!r}.")
    return float(10.0 * np.log10(float(levels) ** 2 * height * width * channels))
