"""Diagonal linear recurrence `x_t = a_t ⊙ x_{t-1} + b_t` along axis 0.

This file holds the Pallas GPU kernel, the pure-JAX references (a parallel
`lax.associative_scan` and a sequential `lax.scan`), the `custom_vjp` wiring
shared by every implementation, and the dispatcher.

The backward pass of a linear recurrence is itself a linear recurrence run the
other way: with `g_t` the cotangent of `x_t`,

    λ_t = g_t + a_{t+1} λ_{t+1},   ∂b_t = λ_t,   ∂a_t = λ_t x_{t-1},   ∂x0 = a_0 λ_0

(JAX's convention for complex cotangents is the plain transpose, so no
conjugates appear). So gradients cost one more scan and never store the tree
levels of the associative scan.
"""

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Inexact, jaxtyped

ScanImpl = Literal["auto", "pallas", "xla", "sequential"]
_IMPLS = ("auto", "pallas", "xla", "sequential")


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


# ----------------------------------------------------------------------------
# The Pallas GPU kernel (Triton backend).
#
# Channels are independent, so the kernel is parallel over channel blocks and
# sequential over time inside a program, with the carry in registers: it reads
# `b` (and a per-step `a`) once and writes `x` once. Complex values travel as
# real and imaginary planes (Pallas has no complex dtypes). With few channel
# blocks and a long sequence the GPU would idle, so time is split into chunks:
# a first pass computes each chunk's end state from zero and its total decay, a
# tiny sequential scan over chunks gives every chunk its incoming state, and a
# second pass recomputes each chunk from that state, writing `x`.
# ----------------------------------------------------------------------------

_UNROLL = 4  # time steps per loop iteration (Triton's fori_loop cannot unroll itself)


def _cmul(a, x):
    """Multiply (real, imag) plane tuples; a 1-tuple is a real number."""
    if len(a) == 1:
        return (a[0] * x[0],)
    (ar, ai), (xr, xi) = a, x
    return (ar * xr - ai * xi, ar * xi + ai * xr)


def _scan_kernel(*refs, n, block, planes, per_step, reverse, summary, chunk_len, length, acc):
    """One program: channels `[j·block, (j+1)·block)` over the steps of chunk `c`."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton

    k = planes
    a_refs, b_refs, x0_refs, out_refs = refs[:k], refs[k : 2 * k], refs[2 * k : 3 * k], refs[3 * k :]
    c, j = pl.program_id(0), pl.program_id(1)
    cols = pl.ds(j * block, block)
    mask = j * block + jnp.arange(block) < n

    def load(ref, row):
        row = jnp.asarray(row, jnp.int32)
        return pltriton.load(ref.at[row, cols], mask=mask, other=0).astype(acc)

    def store(ref, row, value):
        row = jnp.asarray(row, jnp.int32)
        pltriton.store(ref.at[row, cols], value.astype(ref.dtype), mask=mask)

    first = c * chunk_len
    count = jnp.minimum(chunk_len, length - first)
    a_const = None if per_step else tuple(load(r, 0) for r in a_refs)

    def step(s, carry):
        x, prod = carry
        t = length - 1 - s if reverse else s
        a = tuple(load(r, t) for r in a_refs) if per_step else a_const
        bx = _cmul(a, x)
        x = tuple(u + load(r, t) for u, r in zip(bx, b_refs))
        if summary:
            prod = _cmul(a, prod)
        else:
            for r, v in zip(out_refs, x):
                store(r, t, v)
        return x, prod

    def unrolled(i, carry):
        for u in range(_UNROLL):
            carry = step(first + i * _UNROLL + u, carry)
        return carry

    x = tuple(load(r, c) for r in x0_refs)
    one = jnp.ones((block,), acc)
    prod = (one,) if k == 1 else (one, jnp.zeros((block,), acc))
    carry = jax.lax.fori_loop(0, count // _UNROLL, unrolled, (x, prod))
    done = first + (count // _UNROLL) * _UNROLL
    x, prod = jax.lax.fori_loop(done, first + count, step, carry)
    if summary:
        for r, v in zip(out_refs, x + prod):
            store(r, c, v)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _launch_plan(n: int, length: int) -> tuple[int, int]:
    """(channel block size, time chunks) for a GPU: blocks of up to 1024 channels,
    and enough time chunks to give the GPU ~1024 programs when channels are few."""
    block = min(1024, max(32, _next_pow2(n)))
    blocks = -(-n // block)
    target = 1024
    chunks = 1
    if blocks < target // 2 and length >= 256:
        chunks = max(1, min(target // blocks, length // 64))
    return block, chunks


def _pallas(a, b, x0, reverse, *, block=None, chunks=None, interpret=None):
    """The recurrence with the Pallas kernel (`interpret=None`: compiled on GPUs,
    interpreted on other platforms)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton

    length, rest = b.shape[0], b.shape[1:]
    n = math.prod(rest)
    cplx = jnp.iscomplexobj(b)
    real = jnp.real(b[:0]).dtype  # plane dtype: f32 for c64, bf16 stays bf16
    acc = jnp.float64 if real == jnp.float64 else jnp.float32
    per_step = a.shape[0] != 1
    plan_block, plan_chunks = _launch_plan(n, length)
    block = plan_block if block is None else block
    chunks = plan_chunks if chunks is None else max(1, min(chunks, length))
    chunk_len = -(-length // chunks)
    chunks = -(-length // chunk_len)

    def split(z):
        z = z.reshape(z.shape[0], n)
        return (jnp.real(z), jnp.imag(z)) if cplx else (z,)

    def join(p):
        return jax.lax.complex(*p) if cplx else p[0]

    a_planes = split(jnp.broadcast_to(a, a.shape[:1] + rest))
    b_planes = split(b)
    k = len(b_planes)

    def call(x0_planes, summary):
        rows = chunks if summary else length
        out_dtype = acc if summary else real
        kernel = functools.partial(
            _scan_kernel, n=n, block=block, planes=k, per_step=per_step, reverse=reverse,
            summary=summary, chunk_len=chunk_len, length=length, acc=acc,
        )
        outs = 2 * k if summary else k

        def launch(interpret, *operands):
            return tuple(pl.pallas_call(
                kernel,
                out_shape=[jax.ShapeDtypeStruct((rows, n), out_dtype)] * outs,
                grid=(chunks, -(-n // block)),
                compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
                interpret=interpret,
                name="eqvid_linear_scan" + ("_summary" if summary else ""),
            )(*operands))

        operands = (*a_planes, *b_planes, *x0_planes)
        if interpret is not None:
            return launch(interpret, *operands)
        # Compiled for GPUs, interpreted elsewhere; decided when lowering, so a CPU
        # machine can still lower (and check) the kernel for CUDA.
        return jax.lax.platform_dependent(
            *operands,
            cuda=functools.partial(launch, False),
            rocm=functools.partial(launch, False),
            default=functools.partial(launch, True),
        )

    x0_flat = x0.reshape(1, n)
    if chunks == 1:
        out = call(split(x0_flat), summary=False)
    else:
        sums = call(split(jnp.zeros((chunks, n), x0.dtype)), summary=True)
        ends, decays = join(sums[:k]), join(sums[k:])
        # State entering chunk c, in visiting order: a short scan over chunks.
        x0_acc = x0_flat.astype(ends.dtype)
        after = _sequential(decays, ends, x0_acc[0], False)
        incoming = jnp.concatenate([x0_acc, after[:-1]], axis=0)
        out = call(split(incoming), summary=False)
    return join(out).reshape(b.shape).astype(b.dtype)


_FORWARD = {"xla": _associative, "sequential": _sequential, "pallas": _pallas}


def _resolve(impl: str) -> str:
    if impl not in _IMPLS:
        raise ValueError(f"linear_scan: `impl` must be one of {_IMPLS}, got {impl!r}.")
    if impl == "auto":
        # The kernel on GPU. Elsewhere the references: on CPU the work-efficient
        # sequential scan beats the associative one at every length
        # (benchmarks/scan_speed.py); other accelerators take the parallel scan.
        backend = jax.default_backend()
        return {"gpu": "pallas", "cpu": "sequential"}.get(backend, "xla")
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
    - `impl`: `"pallas"` (the fused GPU kernel; in interpret mode on CPU),
      `"xla"` (parallel `lax.associative_scan`, O(log T) depth), `"sequential"`
      (`lax.scan`), or `"auto"`: the kernel on GPU, the sequential scan on CPU
      (faster there), the associative scan elsewhere.

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
