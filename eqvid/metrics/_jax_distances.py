"""FVD and KVD as pure JAX functions, for use inside `jax.jit` (a training loop's
periodic evaluation, on the device that computed the features).

They compute the same formulas as `fvd_from_features` and `kvd` (float64, host), in
the features' floating dtype: float32 unless JAX runs with x64. A float32 Fréchet
distance of 400-d I3D logits agrees with the float64 one to about 1e-4 relative
(less when the two sets are nearly the same: the result is a difference of traces):
good for tracking a run, while published numbers should come from the float64
functions.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

_HIGHEST = jax.lax.Precision.HIGHEST


def _check(real, fake, fn: str) -> None:
    for name, x in (("real_features", real), ("fake_features", fake)):
        if x.ndim != 2:
            raise ValueError(f"{fn}: `{name}` must have shape (num_samples, dim), got {x.shape}.")
        if x.shape[0] < 2:
            raise ValueError(f"{fn}: `{name}` needs at least 2 samples (rows), got {x.shape[0]}.")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"{fn}: `real_features` and `fake_features` must have the same feature size, got "
            f"{real.shape[1]} and {fake.shape[1]}."
        )


def _dtype(x):
    """At least float32: float64 stays, narrower floats compute in float32."""
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def _statistics(f: Array) -> tuple[Array, Array]:
    mu = jnp.mean(f, axis=0)
    centred = f - mu[None, :]
    return mu, jnp.matmul(centred.T, centred, precision=_HIGHEST) / (f.shape[0] - 1)


def _psd_sqrt(s: Array) -> Array:
    w, v = jnp.linalg.eigh(s)
    return jnp.matmul(v * jnp.sqrt(jnp.clip(w, 0.0))[None, :], v.T, precision=_HIGHEST)


def fvd_jax(
    real_features: Float[Array, "num_real dim"],
    fake_features: Float[Array, "num_fake dim"],
) -> Float[Array, ""]:
    """Fréchet distance between two sets of features (FVD for I3D logits), jit-able.

    `|mu_r - mu_f|² + tr(S_r) + tr(S_f) - 2 tr((S_r^½ S_f S_r^½)^½)` with unbiased
    covariances, by symmetric eigendecompositions, exactly as `fvd_from_features` but
    on the device in the features' dtype (see the module notes on float32 accuracy).

    **Arguments:** `real_features`, `fake_features`: `(num, dim)` floating arrays with
    the same `dim` and at least two rows each (the sets may differ in size).

    **Returns:** a scalar array.

    **Raises:** `ValueError` for mismatched shapes or fewer than two rows.
    """
    _check(real_features, fake_features, "fvd_jax")
    dtype = _dtype(real_features)
    mu1, s1 = _statistics(real_features.astype(dtype))
    mu2, s2 = _statistics(fake_features.astype(dtype))
    root1 = _psd_sqrt(s1)
    middle = jnp.matmul(jnp.matmul(root1, s2, precision=_HIGHEST), root1, precision=_HIGHEST)
    eig = jnp.linalg.eigvalsh(0.5 * (middle + middle.T))
    diff = mu1 - mu2
    return (
        jnp.dot(diff, diff, precision=_HIGHEST)
        + jnp.trace(s1)
        + jnp.trace(s2)
        - 2.0 * jnp.sum(jnp.sqrt(jnp.clip(eig, 0.0)))
    )


def kvd_jax(
    real_features: Float[Array, "num_real dim"],
    fake_features: Float[Array, "num_fake dim"],
) -> Float[Array, ""]:
    """Kernel distance (KVD for I3D logits), jit-able: the unbiased squared MMD with the
    polynomial kernel `(x·y / dim + 1)³` over all samples at once, as `kvd` with
    `max_block_size=None` (MeBT's), on the device in the features' dtype.

    **Arguments:** as `fvd_jax`.

    **Returns:** a scalar array (slightly negative is possible: the estimate is unbiased).

    **Raises:** `ValueError` for mismatched shapes or fewer than two rows.
    """
    _check(real_features, fake_features, "kvd_jax")
    dtype = _dtype(real_features)
    r, g = real_features.astype(dtype), fake_features.astype(dtype)
    dim = r.shape[1]

    def kernel(x, y):
        return (jnp.matmul(x, y.T, precision=_HIGHEST) / dim + 1.0) ** 3

    m, n = r.shape[0], g.shape[0]
    k_rr, k_gg = kernel(r, r), kernel(g, g)
    return (
        (jnp.sum(k_rr) - jnp.trace(k_rr)) / (m * (m - 1))
        + (jnp.sum(k_gg) - jnp.trace(k_gg)) / (n * (n - 1))
        - 2.0 * jnp.mean(kernel(r, g))
    )
