"""HiPPO-LegS initialisation of diagonal SSMs and zero-order-hold discretisation."""

import functools

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float


def hippo_legs_normal(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonalise the normal part of HiPPO-LegS of size `n` (float64, NumPy).

    `S = A + p pᵀ` with `A` the LegS matrix and `p_n = sqrt(n + ½)`, which is
    skew-symmetric plus `-½ I`. Returns the eigenvalues `Λ` (real part `-½`
    everywhere, imaginary parts from `eigh(-iS)` in ascending order) and the
    unitary eigenvectors `V` (columns), so `S = V diag(Λ) Vᴴ`.
    """
    q = np.sqrt(1 + 2 * np.arange(n))
    a = -(np.tril(q[:, None] * q[None, :]) - np.diag(np.arange(n)))
    p = np.sqrt(np.arange(n) + 0.5)
    s = a + p[:, None] * p[None, :]
    lambda_real = np.mean(np.diagonal(s)) * np.ones(n)
    lambda_imag, v = np.linalg.eigh(s * -1j)
    return lambda_real + 1j * lambda_imag, v


def hippo_block_init(ssm_size: int, blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ConvS5 / S5 initialisation with conjugate symmetry and `blocks` blocks.

    Each block is HiPPO-LegS of size `ssm_size // blocks`; half of its
    eigenvalues (one of each conjugate pair) are kept, so the state has
    `P = ssm_size // 2` complex channels. Returns `(Λ (P,), V (ssm_size, P),
    V⁻¹ = Vᴴ (P, ssm_size))`, block-diagonal (fresh arrays: the caller may change
    them).
    """
    lam, v, vinv = _hippo_block_init(ssm_size, blocks)
    return lam.copy(), v.copy(), vinv.copy()


@functools.lru_cache(maxsize=16)
def _hippo_block_init(ssm_size: int, blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`hippo_block_init`, computed once per size (an eigendecomposition per block
    size; every layer of a stack shares it)."""
    block = ssm_size // blocks
    lam, v = hippo_legs_normal(block)
    lam, v = lam[: block // 2], v[:, : block // 2]
    lam = np.tile(lam, blocks)
    v_full = np.zeros((ssm_size, ssm_size // 2), np.complex128)
    for j in range(blocks):
        v_full[j * block : (j + 1) * block, j * (block // 2) : (j + 1) * (block // 2)] = v
    return lam, v_full, v_full.conj().T


def discretize_zoh(
    lam: Complex[Array, " state"], step: Float[Array, " state"]
) -> tuple[Complex[Array, " state"], Complex[Array, " state"]]:
    """Zero-order hold: `Λ̄ = exp(ΛΔ)` and the input gain `(Λ̄ - 1) / Λ` (so `B̄ = gain · B̃`)."""
    lam_bar = jnp.exp(lam * step.astype(lam.dtype))
    return lam_bar, (lam_bar - 1) / lam
