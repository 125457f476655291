"""Fréchet distance and KVD against SciPy / scikit-learn formulas (pytorch-fid, MeBT)."""

import numpy as np
import pytest
from jaxtyping import TypeCheckError
from scipy import linalg
from sklearn.metrics.pairwise import polynomial_kernel

from eqvid.metrics._frechet import frechet_distance, fvd_from_features, gaussian_statistics, kvd


def features(rng, n, d, shift=0.0, mix=0.0):
    """Correlated, non-centred features (like logits): a fixed mixing matrix per `d`
    (so equal `shift`/`mix` means the same distribution), optionally perturbed."""
    base = np.random.default_rng(d).standard_normal((d, d)) / np.sqrt(d)
    a = np.eye(d) + 0.5 * base + mix * rng.standard_normal((d, d)) / np.sqrt(d)
    return 3.0 * rng.standard_normal((n, d)) @ a + 1.0 + shift


def scipy_frechet(x, y):
    """pytorch-fid's `calculate_frechet_distance` on np.cov statistics."""
    m1, s1 = x.mean(0), np.cov(x, rowvar=False)
    m2, s2 = y.mean(0), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        assert np.allclose(np.imag(np.diagonal(covmean)), 0, atol=1e-3)
        covmean = np.real(covmean)
    diff = m1 - m2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_gaussian_statistics_match_numpy():
    rng = np.random.default_rng(0)
    x = features(rng, 50, 7).astype(np.float32)
    mu, sigma = gaussian_statistics(x)
    assert mu.dtype == np.float64 and sigma.shape == (7, 7)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("dim,num", [(64, 200), (400, 600)])
def test_frechet_distance_matches_scipy_sqrtm(dim, num):
    rng = np.random.default_rng(dim)
    x = features(rng, num, dim)
    y = features(rng, num + 13, dim, shift=0.3, mix=0.5)
    got = fvd_from_features(x, y)
    ref = scipy_frechet(x, y)
    assert ref > 1.0
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_frechet_distance_analytic_cases():
    rng = np.random.default_rng(1)
    x = features(rng, 80, 16)
    np.testing.assert_allclose(fvd_from_features(x, x), 0.0, atol=1e-9)
    # Symmetric in its two sets (of different sizes here).
    y = features(rng, 97, 16, shift=0.2, mix=0.4)
    np.testing.assert_allclose(fvd_from_features(x, y), fvd_from_features(y, x), rtol=1e-10)
    assert fvd_from_features(x, y) > 0.1
    # Same covariance, shifted mean: exactly |shift|².
    shift = rng.standard_normal(16)
    np.testing.assert_allclose(fvd_from_features(x, x + shift), shift @ shift, rtol=1e-9)
    # Diagonal covariances: sum (sqrt(a) - sqrt(b))² + |mu1 - mu2|².
    a, b = rng.random(5) + 0.1, rng.random(5) + 0.1
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    np.testing.assert_allclose(
        frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-12
    )


def test_frechet_distance_rank_deficient_stays_real():
    """Fewer samples than dimensions: singular covariances. tfgan's SVD formula (in
    float64 here) is the reference; the result is finite and real."""
    rng = np.random.default_rng(2)
    x, y = features(rng, 30, 64), features(rng, 40, 64, shift=0.2, mix=0.3)

    def sqrt_psd(m):  # tfgan's _symmetric_matrix_square_root
        u, s, vt = np.linalg.svd(m)
        si = np.where(s < 1e-10, s, np.sqrt(s))
        return (u * si) @ vt

    (m1, s1), (m2, s2) = gaussian_statistics(x), gaussian_statistics(y)
    root = sqrt_psd(s1)
    ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(sqrt_psd(root @ s2 @ root))
    got = fvd_from_features(x, y)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_frechet_errors():
    rng = np.random.default_rng(3)
    x = features(rng, 10, 4)
    mu, sigma = gaussian_statistics(x)
    with pytest.raises(TypeCheckError, match="parameter 'fake_features'"):  # other feature size
        fvd_from_features(x, x[:, :3])
    with pytest.raises(ValueError, match="`real_features` needs at least 2 samples"):
        fvd_from_features(x[:1], x)
    with pytest.raises(ValueError, match="NaN"):
        fvd_from_features(np.where(x > 100, x, np.nan), x)
    asym = sigma.copy()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="sigma2.*not symmetric"):
        frechet_distance(mu, sigma, mu, asym)
    with pytest.raises(ValueError, match="sigma1.*positive semi-definite"):
        frechet_distance(mu, -sigma, mu, sigma)
    with pytest.raises(TypeCheckError, match="parameter 'sigma2'"):
        frechet_distance(mu, sigma, mu, sigma[:3, :3])


def mebt_kvd(x, y):
    """MeBT/TATS `polynomial_mmd` with scikit-learn's kernel (degree 3, gamma 1/dim, coef0 1)."""
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x), polynomial_kernel(y), polynomial_kernel(x, y)
    return (
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2 * k_xy.sum() / (m * n)
    )


def test_kvd_single_block_matches_mebt_sklearn():
    rng = np.random.default_rng(4)
    x, y = features(rng, 90, 20), features(rng, 70, 20, shift=2.0)
    np.testing.assert_allclose(kvd(x, y), mebt_kvd(x, y), rtol=1e-10)
    # tfgan with one block (max_block_size ≥ both sizes) is the same estimate.
    np.testing.assert_allclose(kvd(x, y, max_block_size=1024), mebt_kvd(x, y), rtol=1e-10)
    assert kvd(x, y) > 10 * abs(kvd(x, features(rng, 70, 20)))


def test_kvd_blocks_as_tfgan():
    """tfgan splits each set in order into ceil(max(n_r, n_g) / B) blocks, the larger
    blocks (one more row) last, and averages the per-block estimates."""
    rng = np.random.default_rng(5)
    x, y = features(rng, 23, 6), features(rng, 17, 6, shift=0.2)
    # B = 10: 3 blocks; real 23 -> 7, 8, 8; fake 17 -> 5, 6, 6.
    xs = [x[0:7], x[7:15], x[15:23]]
    ys = [y[0:5], y[5:11], y[11:17]]
    expected = np.mean([mebt_kvd(a, b) for a, b in zip(xs, ys)])
    np.testing.assert_allclose(kvd(x, y, max_block_size=10), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="fewer than 2"):
        kvd(x[:5], y[:5], max_block_size=2)  # blocks of 1, 2, 2
    with pytest.raises(ValueError, match="max_block_size"):
        kvd(x, y, max_block_size=1)


@pytest.mark.parametrize("dim,num", [(64, 200), (400, 600)])
def test_jax_fvd_and_kvd_under_jit_match_the_float64_ones(dim, num):
    import jax
    import jax.numpy as jnp

    from eqvid.metrics import fvd_jax, kvd_jax

    rng = np.random.default_rng(dim + 1)
    x = features(rng, num, dim).astype(np.float32)
    y = features(rng, num + 13, dim, shift=0.3, mix=0.5).astype(np.float32)
    got_fvd, got_kvd = jax.jit(lambda a, b: (fvd_jax(a, b), kvd_jax(a, b)))(
        jnp.asarray(x), jnp.asarray(y)
    )
    assert got_fvd.dtype == jnp.float32
    np.testing.assert_allclose(float(got_fvd), fvd_from_features(x, y), rtol=1e-4)
    np.testing.assert_allclose(float(got_kvd), kvd(x, y), rtol=1e-4)
    with pytest.raises(ValueError, match="`fake_features` needs at least 2 samples"):
        fvd_jax(jnp.zeros((4, 64)), jnp.zeros((1, 64)))
