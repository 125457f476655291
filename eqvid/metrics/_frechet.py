"""Distances between sets of features (I3D logits for FVD/KVD): Gaussian statistics, the
Fréchet distance and the kernel (polynomial-MMD) distance.

These run on the host in float64 NumPy. The features come from a network in JAX (jit,
any device); the distances themselves are small (a few eigendecompositions of
`(dim, dim)` matrices, a few `(n, n)` kernel matrices) and need float64 to agree with
the papers' references (tfgan, pytorch-fid/SciPy, both float64) to 1e-6: a float32
eigendecomposition of a 400x400 covariance cannot.
"""

import numpy as np
from jaxtyping import Array, Float


def _features(x, name: str, fn: str) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{fn}: `{name}` must have shape (num_samples, dim), got shape {f.shape}.")
    if f.shape[0] < 2:
        raise ValueError(
            f"{fn}: `{name}` needs at least 2 samples (rows) for a covariance, got {f.shape[0]}."
        )
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{fn}: `{name}` contains NaN or infinite values.")
    return f


def gaussian_statistics(
    features: Float[Array | np.ndarray, "num_samples dim"],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of feature vectors, in float64.

    The covariance is the unbiased one (divided by `num_samples - 1`), as in tfgan's
    `frechet_classifier_distance_from_activations` and pytorch-fid (`np.cov`).

    **Arguments:**

    - `features`: `(num_samples, dim)`, at least two samples, all finite.

    **Returns:**

    `(mu, sigma)`: float64 arrays of shapes `(dim,)` and `(dim, dim)`.

    **Raises:**

    `ValueError` for another rank, fewer than two samples, or non-finite values.
    """
    f = _features(features, "features", "gaussian_statistics")
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _covariance(sigma, name: str, dim: int) -> np.ndarray:
    s = np.asarray(sigma, dtype=np.float64)
    if s.shape != (dim, dim):
        raise ValueError(
            f"frechet_distance: `{name}` must have shape ({dim}, {dim}) to match the means, "
            f"got {s.shape}."
        )
    if not np.all(np.isfinite(s)):
        raise ValueError(f"frechet_distance: `{name}` contains NaN or infinite values.")
    scale = max(float(np.max(np.abs(s))), np.finfo(np.float64).tiny)
    asym = float(np.max(np.abs(s - s.T)))
    if asym > 1e-6 * scale:
        raise ValueError(
            f"frechet_distance: `{name}` is not symmetric (max |sigma - sigma.T| = {asym:.3g} "
            f"for entries up to {scale:.3g}); pass a covariance matrix."
        )
    return 0.5 * (s + s.T)


def _psd_sqrt(s: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a covariance; eigenvalues that round-off pushed slightly
    below zero count as zero, clearly negative ones are an error."""
    w, v = np.linalg.eigh(s)
    if w.size and w[0] < -1e-6 * max(abs(w[-1]), np.finfo(np.float64).tiny):
        raise ValueError(
            f"frechet_distance: `{name}` is not positive semi-definite (eigenvalue {w[0]:.3g}, "
            f"largest {w[-1]:.3g}); pass a covariance matrix."
        )
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: Float[Array | np.ndarray, " dim"],
    sigma1: Float[Array | np.ndarray, "dim dim"],
    mu2: Float[Array | np.ndarray, " dim"],
    sigma2: Float[Array | np.ndarray, "dim dim"],
) -> float:
    """Fréchet distance between the Gaussians `N(mu1, sigma1)` and `N(mu2, sigma2)`.

    `|mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½)`, in float64.

    The trace of the matrix square root is computed as tfgan's `trace_sqrt_product`
    does, `tr((A sigma2 A)^½)` with `A = sigma1^½` (the same eigenvalues as
    `sigma1 sigma2`), but with symmetric eigendecompositions (`eigh`) instead of
    SVDs: every matrix involved is symmetric positive semi-definite, so the result is
    real by construction. Round-off can make tiny eigenvalues slightly negative
    (rank-deficient covariances, fewer samples than dimensions); they are taken as
    zero, where tfgan keeps them unrooted (`s < 1e-10 → s`) and pytorch-fid's
    `scipy.linalg.sqrtm(sigma1 @ sigma2)` returns a complex matrix whose imaginary
    part it drops (or, if not finite, retries with `1e-6 I` added to both
    covariances). On full-rank covariances all of these agree with this to ~1e-10
    relative; on rank-deficient ones this stays real and finite where `sqrtm` does
    not.

    **Arguments:**

    - `mu1`, `mu2`: means, shape `(dim,)`.
    - `sigma1`, `sigma2`: covariances, shape `(dim, dim)`, symmetric (to 1e-6
      relative) and positive semi-definite.

    **Returns:**

    The distance as a Python float (≥ 0 up to round-off).

    **Raises:**

    `ValueError` for mismatched shapes, non-finite values, or matrices that are not
    covariances (asymmetric, or clearly negative eigenvalues).
    """
    m1 = np.asarray(mu1, dtype=np.float64)
    m2 = np.asarray(mu2, dtype=np.float64)
    if m1.ndim != 1:
        raise ValueError(f"frechet_distance: `mu1` must have shape (dim,), got {m1.shape}.")
    if m2.shape != m1.shape:
        raise ValueError(
            f"frechet_distance: `mu2` must have the shape of `mu1` {m1.shape}, got {m2.shape}."
        )
    if not (np.all(np.isfinite(m1)) and np.all(np.isfinite(m2))):
        raise ValueError("frechet_distance: the means contain NaN or infinite values.")
    dim = m1.shape[0]
    s1 = _covariance(sigma1, "sigma1", dim)
    s2 = _covariance(sigma2, "sigma2", dim)

    root1 = _psd_sqrt(s1, "sigma1")
    _psd_sqrt(s2, "sigma2")  # validates sigma2 the same way
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def fvd_from_features(
    real_features: Float[Array | np.ndarray, "num_real dim"],
    fake_features: Float[Array | np.ndarray, "num_fake dim"],
) -> float:
    """Fréchet distance between two sets of features (FVD when they are I3D logits).

    `frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake))`, as
    tfgan's `frechet_classifier_distance_from_activations` (TECO) and the MeBT/TATS
    PyTorch port compute it. The two sets may differ in size.

    **Arguments:**

    - `real_features`, `fake_features`: `(num, dim)` with the same `dim`, at least two
      rows each.

    **Returns:**

    The distance as a Python float.

    **Raises:**

    `ValueError` for mismatched feature sizes, too few rows or non-finite values.
    """
    real = _features(real_features, "real_features", "fvd_from_features")
    fake = _features(fake_features, "fake_features", "fvd_from_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            "fvd_from_features: `real_features` and `fake_features` must have the same "
            f"feature size, got {real.shape[1]} and {fake.shape[1]}."
        )
    return frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake))


def _block_sizes(n: int, n_blocks: int) -> np.ndarray:
    """tfgan's split of `n` rows into `n_blocks` blocks of near-equal size (the larger
    blocks last)."""
    v = n // n_blocks
    plus_one = n - v * n_blocks
    return np.array([v] * (n_blocks - plus_one) + [v + 1] * plus_one)


def kvd(
    real_features: Float[Array | np.ndarray, "num_real dim"],
    fake_features: Float[Array | np.ndarray, "num_fake dim"],
    *,
    max_block_size: int | None = None,
) -> float:
    """Kernel distance (KVD for I3D features; KID for Inception): the unbiased squared
    MMD with the polynomial kernel `k(x, y) = (x·y / dim + 1)³`, in float64.

    `mean_{i≠j} k(r_i, r_j) + mean_{i≠j} k(g_i, g_j) - 2 mean_{i,j} k(r_i, g_j)`.

    - `max_block_size=None` (default): one estimate over all samples. This is what
      MeBT (and TATS, whose FVD code it uses) computes with
      `sklearn.metrics.pairwise.polynomial_kernel` (degree 3, gamma `1/dim`, coef0 1).
    - `max_block_size=B`: tfgan's `kernel_classifier_distance_from_activations`
      (default there `B = 1024`): the samples are split in order into
      `ceil(max(num_real, num_fake) / B)` blocks of near-equal size, the estimate is
      computed per block and averaged. With at most `B` samples per side this is the
      same single estimate. Blocking assumes the samples are in random order.

    The estimate is unbiased, so it can be slightly negative when the two sets come
    from the same distribution. Numbers are raw (some papers report `1e3 x` KVD).

    **Arguments:**

    - `real_features`, `fake_features`: `(num, dim)` with the same `dim`, at least two
      rows per block.
    - `max_block_size`: see above.

    **Returns:**

    The distance as a Python float.

    **Raises:**

    `ValueError` for mismatched feature sizes, non-finite values, a bad
    `max_block_size`, or blocks with fewer than two samples.
    """
    real = _features(real_features, "real_features", "kvd")
    fake = _features(fake_features, "fake_features", "kvd")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            "kvd: `real_features` and `fake_features` must have the same feature size, "
            f"got {real.shape[1]} and {fake.shape[1]}."
        )
    n_r, n_g = real.shape[0], fake.shape[0]
    if max_block_size is None:
        n_blocks = 1
    else:
        if (
            isinstance(max_block_size, bool)
            or not isinstance(max_block_size, int)
            or max_block_size < 2
        ):
            raise ValueError(
                f"kvd: `max_block_size` must be an int ≥ 2 or None, got {max_block_size!r}."
            )
        n_blocks = -(-max(n_r, n_g) // max_block_size)
    sizes_r, sizes_g = _block_sizes(n_r, n_blocks), _block_sizes(n_g, n_blocks)
    if sizes_r.min() < 2 or sizes_g.min() < 2:
        raise ValueError(
            f"kvd: {n_blocks} block(s) of {n_r} real and {n_g} fake samples leave a block with "
            "fewer than 2 samples; use more samples or a larger `max_block_size`."
        )
    inds_r = np.concatenate([[0], np.cumsum(sizes_r)])
    inds_g = np.concatenate([[0], np.cumsum(sizes_g)])
    dim = real.shape[1]

    def kernel(x, y):
        return (x @ y.T / dim + 1.0) ** 3

    estimates = []
    for i in range(n_blocks):
        r = real[inds_r[i] : inds_r[i + 1]]
        g = fake[inds_g[i] : inds_g[i + 1]]
        m, n = r.shape[0], g.shape[0]
        k_rr, k_gg, k_rg = kernel(r, r), kernel(g, g), kernel(r, g)
        estimates.append(
            (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
            + (k_gg.sum() - np.trace(k_gg)) / (n * (n - 1))
            - 2.0 * k_rg.mean()
        )
    return float(np.mean(estimates))
