"""Diagonal linear recurrence `x_t = a_t ⊙ x_{t-1} + b_t` along axis 0.

This file holds the pure-JAX implementations (a parallel `lax.associative_scan`
and a sequential `lax.scan`), the `custom_vjp` wiring shared by every
implementation, and the dispatcher. The Pallas GPU kernel plugs into the same
dispatcher.

The backward pass of a linear recurrence is itself a linear recurrence run the
other way: with `g_t` the cotangent of `x_t`,

    λ_t = g_t + a_{t+1} λ_{t+1},   ∂b_t = λ_t,   ∂a_t = λ_t x_{t-1},   ∂x0 = a_0 λ_0

(JAX's convention for complex cotangents is the plain transpose, so no
conjugates appear). So gradients cost one more scan and never store the tree
levels of the associative scan.
"""

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Inexact, jaxtyped

ScanImpl = Literal["auto", "associative", "sequential"]
_IMPLS = ("auto", "associative", "sequential")


# ----------------------------------------------------------------------------
# Shapes.
# ----------------------------------------------------------------------------


def _broadcasts_to(shape, target) -> bool:
    try:
        return jnp.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _check_inputs(a, b, x0):
    """Validate shapes and dtypes; return `(a, b, x0)` in one dtype.

    A time-invariant `a` is returned with a leading axis of length 1 and the
    rank of `b`, so that it broadcasts against `b` everywhere.
    """
    if b.ndim < 1:
        raise ValueError(
            "linear_scan: `b` must have a leading time axis, got a scalar "
            f"(shape {b.shape})."
        )
    for name, arr in (("a", a), ("b", b), ("x0", x0)):
        if arr is not None and not jnp.issubdtype(arr.dtype, jnp.inexact):
            raise TypeError(
                f"linear_scan: `{name}` must be floating point or complex, got dtype "
                f"{arr.dtype}."
            )
    rest = b.shape[1:]
    if a.ndim == b.ndim:
        if not _broadcasts_to(a.shape, b.shape) or a.shape[0] not in (1, b.shape[0]):
            raise ValueError(
                "linear_scan: `a` with the rank of `b` is taken as given per time step "
                f"and must broadcast to b.shape={b.shape}; got a.shape={a.shape}."
            )
    else:
        if not _broadcasts_to(a.shape, rest):
            raise ValueError(
                "linear_scan: a time-invariant `a` must broadcast to b.shape[1:]="
                f"{rest} (or give one `a` per step with shape {b.shape}); got "
                f"a.shape={a.shape}."
            )
        a = a.reshape((1,) * (b.ndim - a.ndim) + a.shape)
    if x0 is not None:
        if not _broadcasts_to(x0.shape, rest):
            raise ValueError(
                f"linear_scan: `x0` must broadcast to b.shape[1:]={rest}; got "
                f"x0.shape={x0.shape}."
            )
    dtypes = [a.dtype, b.dtype] + ([] if x0 is None else [x0.dtype])
    dtype = jnp.result_type(*dtypes)
    a = a.astype(dtype)
    b = b.astype(dtype)
    x0 = jnp.zeros(rest, dtype) if x0 is None else jnp.broadcast_to(x0, rest).astype(dtype)
    return a, b, x0


# ----------------------------------------------------------------------------
# Forward implementations (no gradient wiring). `a` has the rank of `b` and a
# leading axis of length 1 (time-invariant) or T (per step).
# ----------------------------------------------------------------------------


def _fold_x0(a, b, x0, reverse):
    """Fold the boundary state into the first (or last) input."""
    i = -1 if reverse else 0
    return b.at[i].add(a[i] * x0)


def _associative(a, b, x0, reverse):
    b = _fold_x0(a, b, x0, reverse)
    a = jnp.broadcast_to(a, (b.shape[0],) + a.shape[1:])

    def combine(left, right):
        # `left` is earlier in scan order, `right` later (JAX flips for reverse).
        a_l, b_l = left
        a_r, b_r = right
        return a_r * a_l, a_r * b_l + b_r

    _, xs = jax.lax.associative_scan(combine, (a, b), reverse=reverse)
    return xs


def _sequential(a, b, x0, reverse):
    if a.shape[0] == 1:
        a0 = a[0]

        def step(x, b_t):
            x = a0 * x + b_t
            return x, x

        _, xs = jax.lax.scan(step, x0, b, reverse=reverse)
    else:

        def step(x, ab_t):
            a_t, b_t = ab_t
            x = a_t * x + b_t
            return x, x

        _, xs = jax.lax.scan(step, x0, (a, b), reverse=reverse)
    return xs


_FORWARD = {"associative": _associative, "sequential": _sequential}


def _resolve(impl: str) -> str:
    if impl not in _IMPLS:
        raise ValueError(f"linear_scan: `impl` must be one of {_IMPLS}, got {impl!r}.")
    if impl == "auto":
        # Measured (benchmarks/scan_speed.py): on CPU the work-efficient sequential
        # scan beats the O(T log T)-work associative one at every length; accelerators
        # take the parallel scan.
        return "sequential" if jax.default_backend() == "cpu" else "associative"
    return impl


# ----------------------------------------------------------------------------
# Gradient wiring shared by all implementations.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _scan(a, b, x0, reverse, impl):
    return _FORWARD[impl](a, b, x0, reverse)


def _scan_fwd(a, b, x0, reverse, impl):
    xs = _FORWARD[impl](a, b, x0, reverse)
    return xs, (a, x0, xs)


def _scan_bwd(reverse, impl, res, g):
    a, x0, xs = res
    ones = jnp.ones_like(a[:1])
    zeros = jnp.zeros_like(x0)
    per_step = a.shape[0] != 1
    if reverse:
        # λ_t = g_t + a_{t-1} λ_{t-1}: a forward scan with `a` shifted by one.
        a_shift = jnp.concatenate([ones, a[:-1]], 0) if per_step else a
        lam = _FORWARD[impl](a_shift, g, zeros, False)
        prev = jnp.concatenate([xs[1:], x0[None]], axis=0)  # x_{t+1}, x_T = x0
        dx0 = a[-1] * lam[-1]
    else:
        # λ_t = g_t + a_{t+1} λ_{t+1}: a reverse scan with `a` shifted by one.
        a_shift = jnp.concatenate([a[1:], ones], 0) if per_step else a
        lam = _FORWARD[impl](a_shift, g, zeros, True)
        prev = jnp.concatenate([x0[None], xs[:-1]], axis=0)  # x_{t-1}, x_{-1} = x0
        dx0 = a[0] * lam[0]
    da = lam * prev
    # Reduce over the axes `a` was broadcast along (time too, when time-invariant).
    axes = tuple(i for i, (n, m) in enumerate(zip(a.shape, da.shape)) if n == 1 and m != 1)
    da = jnp.sum(da, axis=axes, keepdims=True)
    return da, lam, dx0


_scan.defvjp(_scan_fwd, _scan_bwd)


# ----------------------------------------------------------------------------
# Public entry point.
# ----------------------------------------------------------------------------


@jaxtyped(typechecker=beartype)
def linear_scan(
    a: Inexact[Array, "..."],
    b: Inexact[Array, "time *rest"],
    x0: Inexact[Array, "..."] | None = None,
    *,
    reverse: bool = False,
    impl: ScanImpl = "auto",
) -> Inexact[Array, "time *rest"]:
    """Compute the diagonal linear recurrence `x_t = a_t ⊙ x_{t-1} + b_t` along axis 0.

    **Arguments:**

    - `a`: the decay. Either time-invariant, broadcastable to `b.shape[1:]`
      (e.g. one complex eigenvalue per state channel, shape `(P,)`), or given
      per time step with the rank of `b` (shape `b.shape`, as selective SSMs
      need).
    - `b`: the inputs, time on axis 0, any trailing shape (leading batch axes
      after time are fine).
    - `x0`: the state before the first step (`x_{-1}`), broadcastable to
      `b.shape[1:]`. Zero when absent.
    - `reverse`: run from the end: `x_t = a_t ⊙ x_{t+1} + b_t` with `x_T = x0`.
    - `impl`: `"associative"` (parallel `lax.associative_scan`, O(log T)
      depth), `"sequential"` (`lax.scan`), or `"auto"`: the fastest available
      on the current backend (sequential on CPU, associative elsewhere).

    **Returns:** all states `x_0 … x_{T-1}`, shape `b.shape`, in the promoted
    dtype of the inputs (real or complex).

    Gradients with respect to `a`, `b` and `x0` are computed by a reverse scan
    of the same implementation (no stored tree levels).
    """
    impl = _resolve(impl)
    # The casts in `_check_inputs` are differentiable JAX ops, so autodiff maps
    # cotangents back to the callers' dtypes (real parts for real inputs) and shapes.
    a, b, x0 = _check_inputs(a, b, x0)
    return _scan(a, b, x0, reverse, impl)
