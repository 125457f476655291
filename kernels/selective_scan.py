"""Mamba's selective scan, `h_t = exp(Δ_t ⊙ A) ⊙ h_{t-1} + (Δ_t x_t) ⊗ B_t`, `y_t =
(h_t C_t + D ⊙ x_t) ⊙ silu(z_t)`, with a fused Pallas Mosaic GPU kernel
(`_selective_scan_mosaic.py`: the state dimension looped in registers, neither
`(T, channels, d_state)` tensor written, the backward pass by the reverse
recurrence with recomputation from per-block checkpoints), its pure-JAX reference,
the gradient wiring and the dispatcher.

The reference builds the decays and inputs as `(T, channels, d_state)` tensors and
runs `eqvid.kernels.linear_scan` on them, as eqvid's Mamba layer did: what the
kernel avoids.
"""

from typing import cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _kernel_backends
from . import _selective_scan_mosaic as _fused
from .linear_scan import ScanImpl, linear_scan

_NAME = "selective_scan"


def selective_scan_reference(
    x, dt, A, B, C, D, z, h0, *, impl: ScanImpl = "auto"
) -> tuple[Array, Array]:
    """The scan in plain JAX (`linear_scan` with implementation `impl` over the
    `(T, channels, d_state)` decays and inputs): `(y, h_last)`, float32."""
    f32 = jnp.float32
    x, dt = x.astype(f32), dt.astype(f32)
    a = jnp.exp(dt[:, :, None] * A.astype(f32)[None])
    b = (dt * x)[:, :, None] * B.astype(f32)[:, None, :]
    h = linear_scan(a, b, h0.astype(f32), impl=impl)
    y = jnp.einsum("tdn,tn->td", h, C.astype(f32)) + D.astype(f32)[None] * x
    if z is not None:
        y = y * jax.nn.silu(z.astype(f32))
    return y, h[-1]


def _interpret():
    """Mosaic GPU's interpreter off GPUs, compiled (`None`) on them (a seam for tests)."""
    return _kernel_backends.mosaic_interpret()


@jax.custom_vjp
def _fused_scan(x, dt, A, B, C, D, z, h0):
    y, h_last, _ = _fused.forward((x, dt, A, B, C, D, z, h0), interpret=_interpret())
    return y, h_last


def _fused_fwd(x, dt, A, B, C, D, z, h0):
    values = (x, dt, A, B, C, D, z, h0)
    y, h_last, checkpoints = _fused.forward(values, interpret=_interpret())
    return (y, h_last), (values, checkpoints)


def _fused_bwd(res, cotangents):
    values, checkpoints = res
    dy, dh_last = cotangents
    grads = _fused.backward(values, checkpoints, dy, dh_last, interpret=_interpret())
    return tuple(
        None if g is None else g.astype(v.dtype) for g, v in zip(grads, values, strict=True)
    )


_fused_scan.defvjp(_fused_fwd, _fused_bwd)


def _resolve(impl: str, d_state: int, gate: bool) -> str:
    """`"mosaic"` (the fused kernel) or a `linear_scan` implementation for the
    reference. `"auto"`: the kernel on GPUs of compute capability ≥ 9.0 that run
    Mosaic GPU (one warning names why not, else), the reference elsewhere."""
    fits = _fused.plan(d_state, gate) is not None
    too_big = f"d_state {d_state} leaves no room in shared memory"
    if impl == "mosaic":
        if not fits:
            raise ValueError(f"{_NAME}: impl='mosaic' cannot run: {too_big}; use impl='xla'.")
        _kernel_backends.require(
            "mosaic", _NAME, kernels=("mosaic",), references=("xla", "sequential")
        )
        return "mosaic"
    if impl == "auto" and jax.default_backend() == "gpu":
        capability = _kernel_backends.gpu_compute_capability()
        if capability is not None and capability >= (9, 0):
            if not fits:
                return "auto"
            chosen = _kernel_backends.choose(_NAME, kernels=("mosaic",), fallback="auto")
            return chosen
    return impl


def selective_scan(
    x: Float[Array, "time channels"],
    dt: Float[Array, "time channels"],
    A: Float[Array, "channels d_state"],
    B: Float[Array, "time d_state"],
    C: Float[Array, "time d_state"],
    D: Float[Array, " channels"] | None = None,
    z: Float[Array, "time channels"] | None = None,
    h0: Float[Array, "channels d_state"] | None = None,
    *,
    impl: ScanImpl = "auto",
) -> tuple[Float[Array, "time channels"], Float[Array, "channels d_state"]]:
    """Mamba's selective scan over one sequence: `(y, h_last)`, float32.

        h_t = exp(Δ_t ⊙ A) ⊙ h_{t-1} + (Δ_t ⊙ x_t) ⊗ B_t      (channels × d_state)
        y_t = (h_t C_t + D ⊙ x_t) ⊙ silu(z_t)

    **Arguments:** the inputs `x`, step sizes `dt` (Δ, already positive), the decay
    rates `A` (negative for a stable scan), the input and output projections `B`,
    `C` per step, the skip `D` (zero when `None`), the gate `z` (none when `None`),
    and the state before the first step `h0` (zero when `None`). `impl`: `"mosaic"`
    (the fused Mosaic GPU kernel; interpreted off GPUs, slow), `"auto"` (the kernel
    on a GPU of compute capability ≥ 9.0, with one warning naming why when it
    cannot run; the reference elsewhere), or any other `linear_scan`
    implementation for the reference, which runs that scan on `(T, channels,
    d_state)` tensors.

    **Returns:** the outputs `(time, channels)` and the last state `(channels,
    d_state)`; differentiable in every input. The kernel's backward pass recomputes
    the states from per-block checkpoints, so training never stores them.
    """
    # Shapes are checked by the run-time type check (the dimension names above).
    ch, n = A.shape
    D = jnp.zeros((ch,), jnp.float32) if D is None else D
    h0 = jnp.zeros((ch, n), jnp.float32) if h0 is None else h0
    resolved = _resolve(impl, n, z is not None)
    if resolved == "mosaic":
        out = _fused_scan(x, dt, A, B, C, D, z, h0)
        return cast(Array, out[0]), cast(Array, out[1])
    return selective_scan_reference(x, dt, A, B, C, D, z, h0, impl=cast(ScanImpl, resolved))
