"""PSNR and SSIM against independent float64 NumPy computations and scikit-image."""

from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError
from skimage.metrics import structural_similarity

from eqvid.metrics._psnr import psnr
from eqvid.metrics._ssim import ssim


def reference_ssim(x, y, data_range, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Float64, window by window: tf.image.ssim's 2-D Gaussian (normalised over the
    whole size x size grid), two-pass weighted statistics at every VALID position,
    mean over the map, then over channels. `x`, `y`: (height, width, channels)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    i = np.arange(size) - (size - 1) / 2
    win = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2 * sigma**2))
    win /= win.sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    h, w, c = x.shape
    per_channel = []
    for ch in range(c):
        values = []
        for r in range(h - size + 1):
            for q in range(w - size + 1):
                px = x[r : r + size, q : q + size, ch]
                py = y[r : r + size, q : q + size, ch]
                mx, my = np.sum(win * px), np.sum(win * py)
                vx = np.sum(win * (px - mx) ** 2)
                vy = np.sum(win * (py - my) ** 2)
                vxy = np.sum(win * (px - mx) * (py - my))
                values.append(
                    (2 * mx * my + c1) * (2 * vxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
                )
        per_channel.append(np.mean(values))
    return float(np.mean(per_channel))


def skimage_ssim(x, y, data_range):
    return structural_similarity(
        np.asarray(x, np.float64),  # float32 input would make scikit-image compute in float32
        np.asarray(y, np.float64),
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=-1,
    )


@pytest.fixture(scope="module")
def image_pairs():
    """(2, 2, 16, 18, 2) float pairs in [0, 1]: smooth structure plus noise, the
    second a degraded copy of the first (SSIM well away from 0 and 1)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:18] / 6.0
    base = 0.5 + 0.25 * np.sin(xx[..., None] + yy[..., None] * np.array([1.0, 2.0]))
    x = np.clip(base + 0.1 * rng.standard_normal((2, 2, 16, 18, 2)), 0, 1)
    y = np.clip(0.8 * x + 0.1 + 0.08 * rng.standard_normal(x.shape), 0, 1)
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("form", ["tf", "skimage"])
def test_ssim_matches_float64_reference_and_skimage(image_pairs, form):
    x, y = image_pairs
    got = np.asarray(ssim(jnp.asarray(x), jnp.asarray(y), data_range=1.0, form=form))
    assert got.shape == (2, 2)
    ref = np.array([[reference_ssim(x[i, j], y[i, j], 1.0) for j in range(2)] for i in range(2)])
    sk = np.array([[skimage_ssim(x[i, j], y[i, j], 1.0) for j in range(2)] for i in range(2)])
    assert ref.min() > 0.2 and ref.max() < 0.95
    np.testing.assert_allclose(sk, ref, atol=1e-10)  # the two references agree (VALID == crop)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("form", ["tf", "skimage"])
def test_ssim_uint8_grey_as_mcvd_calls_skimage(form):
    """MCVD: skimage on 2-D grey uint8 frames with data_range=255."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 20, 17), dtype=np.uint8)
    noise = rng.integers(-30, 31, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    got = np.asarray(ssim(a[..., None], b[..., None], data_range=255, form=form))
    sk = [
        structural_similarity(
            a[i],
            b[i],
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(got, sk, atol=1e-5, rtol=0)


@pytest.mark.parametrize("form", ["tf", "skimage"])
def test_ssim_bright_low_contrast_images(form):
    """Large means, small variances: where float32 E[x²] - μ² cancels the most."""
    rng = np.random.default_rng(2)
    x = 0.92 + 0.05 * rng.random((2, 14, 14, 3))
    y = np.clip(x + 0.01 * rng.standard_normal(x.shape), 0, 1)
    got = np.asarray(ssim(x.astype(np.float32), y.astype(np.float32), data_range=1.0, form=form))
    ref = [skimage_ssim(x[i], y[i], 1.0) for i in range(2)]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_ssim_identical_images_is_one_and_jit_grad_work(image_pairs):
    x, y = (jnp.asarray(v[0]) for v in image_pairs)
    np.testing.assert_allclose(ssim(x, x, data_range=1.0), 1.0, atol=1e-6)
    np.testing.assert_allclose(ssim(x, x, data_range=1.0, form="skimage"), 1.0, atol=1e-6)

    @jax.jit
    def loss(a, b):
        return 1.0 - jnp.mean(ssim(a, b, data_range=1.0))

    np.testing.assert_allclose(loss(x, y), 1.0 - jnp.mean(ssim(x, y, data_range=1.0)), rtol=1e-6)
    grad = jax.grad(loss, argnums=1)(x, y)
    assert grad.shape == y.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.max(jnp.abs(grad))) > 0


def test_ssim_errors():
    a = jnp.zeros((2, 10, 12, 1))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a, a, data_range=1.0)
    b = jnp.zeros((2, 12, 12, 1))
    with pytest.raises(TypeCheckError, match="parameter 'form'"):
        ssim(b, b, data_range=1.0, form=cast(Any, "matlab"))
    with pytest.raises(ValueError, match="data_range"):
        ssim(b, b, data_range=0.0)
    with pytest.raises(TypeCheckError, match="parameter 'data_range'"):
        ssim(b, b, data_range=cast(Any, None))
    with pytest.raises(TypeCheckError, match="parameter 'b'"):  # its shape differs from a's
        ssim(b, jnp.zeros((2, 12, 13, 1)), data_range=1.0)


def test_psnr_against_numpy_formula(image_pairs):
    x, y = image_pairs
    got = np.asarray(psnr(jnp.asarray(x), jnp.asarray(y), data_range=1.0))
    mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2, axis=(-3, -2, -1))
    np.testing.assert_allclose(got, 20 * np.log10(1.0) - 10 * np.log10(mse), rtol=1e-6)

    # uint8 with data_range 255: cast before subtracting (no wrap-around), same value as [0, 1].
    a = np.round(x * 255).astype(np.uint8)
    b = np.round(y * 255).astype(np.uint8)
    mse255 = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(-3, -2, -1))
    got255 = np.asarray(psnr(a, b, data_range=255))
    np.testing.assert_allclose(got255, 20 * np.log10(255.0) - 10 * np.log10(mse255), rtol=1e-6)
    np.testing.assert_allclose(got255, psnr(a / 255.0, b / 255.0, data_range=1.0), rtol=1e-5)

    same = psnr(jnp.asarray(x), jnp.asarray(x), data_range=1.0)
    assert np.all(np.isposinf(np.asarray(same)))
    with pytest.raises(TypeCheckError, match="parameter 'b'"):
        psnr(x, y[..., :1], data_range=1.0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, y, data_range=-1.0)


def test_values_must_fit_data_range(image_pairs):
    """Values the data_range cannot hold used to give numbers (0..255 values with
    data_range=1 gave a PSNR ~48 dB too low); now they raise, naming what was found.
    PSNR is shift-invariant (its values must span at most data_range: [-1, 1] with
    data_range=2 is fine), SSIM is not (values in [0, data_range])."""
    x, y = (v[0] for v in image_pairs)  # float32 in [0, 1]
    x255, y255 = x * 255, y * 255
    with pytest.raises(
        ValueError, match=r"psnr: .*span at most data_range=1 .*`a` holds values from 0 to 255"
    ):
        psnr(x255, y255, data_range=1.0)
    with pytest.raises(ValueError, match=r"span at most data_range=1 .*`a` holds values from -1"):
        psnr(2 * x - 1, 2 * y - 1, data_range=1.0)
    np.testing.assert_allclose(
        psnr(2 * x - 1, 2 * y - 1, data_range=2.0), psnr(x, y, data_range=1.0), rtol=1e-5
    )
    with pytest.raises(
        ValueError, match=r"ssim: the values of `b` must lie in \[0, data_range\] = \[0, 1\]"
    ):
        ssim(x, y255, data_range=1.0)
    with pytest.raises(ValueError, match=r"ssim: the values of `a` and `b` .*shift-invariant"):
        ssim(2 * x - 1, 2 * y - 1, data_range=2.0)
    u8 = np.round(x255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"ssim: .*\[0, 1\]; `a` holds values from 0 to 255"):
        ssim(u8, u8, data_range=1.0)
    # Round-off above the range is tolerated (VALUE_TOLERANCE of data_range).
    assert np.isfinite(ssim(np.minimum(x * 1.0000005, 1.0000005), y, data_range=1.0)).all()


def test_integer_and_float_images_are_not_compared():
    """A uint8 image against a float one used to be compared as numbers (0..255 against
    0..1); now it asks for one scale."""
    a = np.full((12, 12, 1), 200, np.uint8)
    b = np.full((12, 12, 1), 200 / 255, np.float32)
    for metric, name in ((psnr, "psnr"), (ssim, "ssim")):
        with pytest.raises(
            ValueError, match=rf"{name}: `a` and `b` must be on the same scale, got `a` uint8"
        ):
            metric(a, b, data_range=255)
        with pytest.raises(ValueError, match=r"got `a` float32 and `b` uint8"):
            metric(b, a, data_range=1.0)


def test_values_that_do_not_fit_give_nan_under_jit(image_pairs):
    """Traced values cannot raise (no host callback in the program): values outside
    the range give NaN scores, never numbers."""
    x, y = (jnp.asarray(v[0]) for v in image_pairs)
    jit_psnr = jax.jit(lambda a, b: psnr(a, b, data_range=1.0))
    jit_ssim = jax.jit(lambda a, b: ssim(a, b, data_range=1.0))
    np.testing.assert_allclose(jit_psnr(x, y), psnr(x, y, data_range=1.0), rtol=1e-6)
    np.testing.assert_allclose(jit_ssim(x, y), ssim(x, y, data_range=1.0), atol=1e-6)
    assert np.isnan(np.asarray(jit_psnr(x * 255, y * 255))).all()
    assert np.isnan(np.asarray(jit_ssim(x - 0.5, y))).all()
