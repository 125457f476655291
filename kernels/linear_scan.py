"""Diagonal linear recurrence `x_t = a_t ⊙ x_{t-1} + b_t` along axis 0.

This file holds the Pallas Triton kernel, the pure-JAX references (a parallel
`lax.associative_scan` and a sequential `lax.scan`), the `custom_vjp` wiring
shared by every implementation, and the dispatcher. The Mosaic GPU kernel lives
beside it in `_linear_scan_mosaic.py`.

The backward pass of a linear recurrence is itself a linear recurrence run the
other way: with `g_t` the cotangent of `x_t`,

    λ_t = g_t + a_{t+1} λ_{t+1},   ∂b_t = λ_t,   ∂a_t = λ_t x_{t-1},   ∂x0 = a_0 λ_0

(JAX's convention for complex cotangents is the plain transpose, so no
conjugates appear). So gradients cost one more scan and never store the tree
levels of the associative scan.
"""

import functools
import math
from typing import Literal, cast

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Inexact

from . import _kernel_backends
from ._linear_scan_mosaic import mosaic_scan

ScanImpl = Literal["auto", "pallas", "mosaic", "triton", "xla", "sequential"]
_IMPLS = ("auto", "pallas", "mosaic", "triton", "xla", "sequential")


# ----------------------------------------------------------------------------
# Shapes.
# ----------------------------------------------------------------------------


def _broadcasts_to(shape, target) -> bool:
    try:
        return jnp.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _check_shapes(a, b_shape, x0, b_dtype, name="linear_scan"):
    """Validate `a` and `x0` against `b`'s shape; return `(a, x0)` with `a` at the rank
    of `b` (leading axis 1 when time-invariant, else T) and `x0` at `b_shape[1:]`,
    both unconverted."""
    if len(b_shape) < 1:
        raise ValueError(
            f"{name}: `b` must have a leading time axis, got a scalar (shape {b_shape})."
        )
    for arg, dtype in (("a", a.dtype), ("b", b_dtype), ("x0", None if x0 is None else x0.dtype)):
        if dtype is not None and not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{name}: `{arg}` must be floating point or complex, got dtype {dtype}."
            )
    rest = tuple(b_shape[1:])
    if a.ndim == len(b_shape):
        if not _broadcasts_to(a.shape, b_shape) or a.shape[0] not in (1, b_shape[0]):
            raise ValueError(
                f"{name}: `a` with the rank of `b` is taken as given per time step "
                f"and must broadcast to b.shape={tuple(b_shape)}; got a.shape={a.shape}."
            )
    else:
        if not _broadcasts_to(a.shape, rest):
            raise ValueError(
                f"{name}: a time-invariant `a` must broadcast to b.shape[1:]={rest} (or "
                f"give one `a` per step with shape {tuple(b_shape)}); got a.shape={a.shape}."
            )
        a = a.reshape((1,) * (len(b_shape) - a.ndim) + a.shape)
    if x0 is not None:
        if not _broadcasts_to(x0.shape, rest):
            raise ValueError(
                f"{name}: `x0` must broadcast to b.shape[1:]={rest}; got x0.shape={x0.shape}."
            )
        x0 = jnp.broadcast_to(x0, rest)
    return a, x0


def _promoted_dtype(*dtypes):
    """JAX's standard promotion of `dtypes`: the scan promotes its inputs explicitly,
    as documented, whatever `jax_numpy_dtype_promotion` says (strict included)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*dtypes)


def _check_inputs(a, b, x0):
    """Validate shapes and dtypes; return `(a, b, x0)` in one dtype, `a` as in
    `_check_shapes` and `x0` zero when absent."""
    a, x0 = _check_shapes(a, b.shape, x0, b.dtype)
    dtypes = [a.dtype, b.dtype] + ([] if x0 is None else [x0.dtype])
    dtype = _promoted_dtype(*dtypes)
    x0 = jnp.zeros(b.shape[1:], dtype) if x0 is None else x0.astype(dtype)
    return a.astype(dtype), b.astype(dtype), x0


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

        def step_invariant(x, b_t):
            x = a0 * x + b_t
            return x, x

        _, xs = jax.lax.scan(step_invariant, x0, b, reverse=reverse)
    else:

        def step_per_step(x, ab_t):
            a_t, b_t = ab_t
            x = a_t * x + b_t
            return x, x

        _, xs = jax.lax.scan(step_per_step, x0, (a, b), reverse=reverse)
    return xs


# ----------------------------------------------------------------------------
# The Pallas GPU kernel (Triton backend).
#
# Channels are independent, so the kernel is parallel over channel tiles and
# sequential over time inside a program, with the carry in registers: it reads
# `b` (and a per-step `a`) once and writes `x` once. Pallas has no complex
# dtypes, so the kernel works on the *split layout*: a real array `(T, M, k·P)`
# whose last axis holds `k` planes of `P` channels (`k = 2`: real parts then
# imaginary parts; `k = 1`: real values). That is also the layout a ConvS5
# layer's input convolution produces and its output convolution consumes, so
# the layer never materialises complex tensors (`linear_scan_split`).
#
# With few channel tiles and a long sequence the GPU would idle, so time is
# split into chunks: a first pass computes each chunk's end state from zero and
# its total decay, a tiny scan over chunks gives every chunk its incoming
# state, and a second pass recomputes each chunk from that state, writing `x`.
# ----------------------------------------------------------------------------

_UNROLL = 4  # time steps per loop iteration (Triton's fori_loop cannot unroll itself)


def _cmul(a, x):
    """Multiply plane tuples: `(re, im)` complex numbers, or `(value,)` reals."""
    if len(a) == 1:
        return (a[0] * x[0],)
    (ar, ai), (xr, xi) = a, x
    return (ar * xr - ai * xi, ar * xi + ai * xr)


def _scan_kernel(
    a_ref, b_ref, x0_ref, *out_refs, planes, per_step, reverse, summary, chunk_len, tile, acc
):
    """One program: a `(rows, cols)` tile of channels over the steps of one time chunk."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton

    length, m, width = b_ref.shape
    p = width // planes
    bm, bp = tile
    c, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows = pl.ds(i * bm, bm)
    col = j * bp + jnp.arange(bp, dtype=jnp.int32)
    mask = ((i * bm + jnp.arange(bm, dtype=jnp.int32)) < m)[:, None] & (col < p)[None, :]

    def load(ref, t):
        t = jnp.asarray(t, jnp.int32)
        return tuple(
            pltriton.load(ref.at[t, rows, pl.ds(q * p + j * bp, bp)], mask=mask, other=0).astype(
                acc
            )
            for q in range(planes)
        )

    def store(ref, t, values):
        t = jnp.asarray(t, jnp.int32)
        for q, v in enumerate(values):
            pltriton.store(
                ref.at[t, rows, pl.ds(q * p + j * bp, bp)], v.astype(ref.dtype), mask=mask
            )

    first = c * chunk_len
    count = jnp.minimum(chunk_len, length - first)
    a_const = None if per_step else load(a_ref, 0)

    def step(s, carry):
        x, prod = carry
        t = length - 1 - s if reverse else s
        a = load(a_ref, t) if per_step else a_const
        x = tuple(u + v for u, v in zip(_cmul(a, x), load(b_ref, t)))
        if summary:
            prod = _cmul(a, prod)
        else:
            store(out_refs[0], t, x)
        return x, prod

    def unrolled(n, carry):
        for u in range(_UNROLL):
            carry = step(first + n * _UNROLL + u, carry)
        return carry

    one, zero = jnp.ones((bm, bp), acc), jnp.zeros((bm, bp), acc)
    carry = (load(x0_ref, c), (one,) if planes == 1 else (one, zero))
    carry = jax.lax.fori_loop(0, count // _UNROLL, unrolled, carry)
    done = first + (count // _UNROLL) * _UNROLL
    x, prod = jax.lax.fori_loop(done, first + count, step, carry)
    if summary:
        store(out_refs[0], c, x)
        store(out_refs[1], c, prod)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _launch_plan(m: int, p: int, length: int) -> tuple[tuple[int, int], int]:
    """`((rows, cols) tile, time chunks)` for a GPU: tiles of ~1024 channels, and
    enough time chunks for ~1024 programs when there are few tiles."""
    bp = min(256, _next_pow2(p))
    bm = min(max(1, 1024 // bp), _next_pow2(m))
    tiles = -(-m // bm) * -(-p // bp)
    chunks = 1
    if tiles < 512 and length >= 256:
        chunks = max(1, min(1024 // tiles, length // 64))
    return (bm, bp), chunks


def _kernel_scan(a, b, x0, reverse, *, planes, tile=None, chunks=None, interpret=None):
    """Run the kernel on split-layout arrays: `a` `(1 or T, M, k·P)`, `b` `(T, M, k·P)`,
    `x0` `(M, k·P)`, all real. `interpret=None`: compiled on GPUs, interpreted elsewhere."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton

    length, m, width = b.shape
    p = width // planes
    acc = jnp.float64 if b.dtype == jnp.float64 else jnp.float32
    plan_tile, plan_chunks = _launch_plan(m, p, length)
    tile = plan_tile if tile is None else tile
    chunks = plan_chunks if chunks is None else max(1, min(chunks, length))
    chunk_len = -(-length // chunks)
    chunks = -(-length // chunk_len)
    grid = (chunks, -(-m // tile[0]), -(-p // tile[1]))

    def launch(summary, interpret, *operands):
        kernel = functools.partial(
            _scan_kernel,
            planes=planes,
            per_step=a.shape[0] != 1,
            reverse=reverse,
            summary=summary,
            chunk_len=chunk_len,
            tile=tile,
            acc=acc,
        )
        shapes = (
            [jax.ShapeDtypeStruct((chunks, m, width), acc)] * 2
            if summary
            else [jax.ShapeDtypeStruct(b.shape, b.dtype)]
        )
        return tuple(
            pl.pallas_call(
                kernel,
                out_shape=shapes,
                grid=grid,
                compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
                interpret=interpret,
                name="eqvid_linear_scan" + ("_summary" if summary else ""),
            )(*operands)
        )

    def call(x0_rows, summary):
        operands = (a, b, x0_rows)
        if interpret is not None:
            return launch(summary, interpret, *operands)
        # Compiled for GPUs, interpreted elsewhere; decided at lowering, so a CPU
        # machine can still lower (and check) the kernel for CUDA.
        return jax.lax.platform_dependent(
            *operands,
            cuda=functools.partial(launch, summary, False),
            rocm=functools.partial(launch, summary, False),
            default=functools.partial(launch, summary, True),
        )

    if chunks == 1:
        return call(x0[None], summary=False)[0]
    ends, decays = call(jnp.zeros((chunks, m, width), b.dtype), summary=True)
    # The state entering each chunk (in visiting order): a short scan over chunks.
    if planes == 2:
        ends, decays = _to_complex(ends), _to_complex(decays)
    start = x0.astype(acc)[None]
    start = _to_complex(start) if planes == 2 else start
    after = _sequential(decays, ends, start[0], False)
    incoming = jnp.concatenate([start, after[:-1]], axis=0)
    incoming = _to_split(incoming) if planes == 2 else incoming
    return call(incoming, summary=False)[0]


def _to_complex(x):
    """Split layout `(..., 2P)` → complex `(..., P)`."""
    p = x.shape[-1] // 2
    return jax.lax.complex(x[..., :p], x[..., p:])


def _to_split(z):
    """Complex `(..., P)` → split layout `(..., 2P)`."""
    return jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1)


def _transpose_decay(a, planes):
    """The decay of the gradient recurrence: `M(a)ᵀ = M(conj a)` on split planes."""
    if planes == 1:
        return a
    p = a.shape[-1] // 2
    return jnp.concatenate([a[..., :p], -a[..., p:]], axis=-1)


def _planes_mul(a, x, planes):
    """`a ⊙ x` on split layouts."""
    if planes == 1:
        return a * x
    return _to_split(_to_complex(a) * _to_complex(x))


def _mosaic_kernel_scan(a, b, x0, reverse, *, planes, interpret=None):
    """The Mosaic GPU kernel on split-layout arrays (`_kernel_scan`'s contract): to
    its planar layout `(planes, T, M·P)` and back. `interpret=None`: compiled on
    GPUs, interpreted elsewhere (`_mosaic_interpret`)."""
    length, m, width = b.shape
    p = width // planes

    def planar(z):
        z = z.reshape(z.shape[0], m, planes, p)
        return jnp.transpose(z, (2, 0, 1, 3)).reshape(planes, z.shape[0], m * p)

    interpret = _mosaic_interpret() if interpret is None else interpret
    xs = mosaic_scan(planar(a), planar(b), planar(x0[None])[:, 0], reverse, interpret=interpret)
    xs = jnp.transpose(xs.reshape(planes, length, m, p), (1, 2, 0, 3))
    return xs.reshape(length, m, width)


def _mosaic_interpret():
    """Mosaic GPU's interpreter off GPUs, `None` (compiled) on them (a seam for tests)."""
    return _kernel_backends.mosaic_interpret()


_KERNELS = {"triton": _kernel_scan, "mosaic": _mosaic_kernel_scan}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _pallas_split(a, b, x0, reverse, planes, backend):
    return _KERNELS[backend](a, b, x0, reverse, planes=planes)


def _pallas_split_fwd(a, b, x0, reverse, planes, backend):
    xs = _KERNELS[backend](a, b, x0, reverse, planes=planes)
    return xs, (a, x0, xs)


def _pallas_split_bwd(reverse, planes, backend, res, g):
    """Reverse-time kernel for λ, then `∂b = λ`, `∂a = Σ λ·x_prev`, `∂x0 = M(a₀)ᵀ λ₀`.

    All primals are real split-layout arrays here, so cotangents are ordinary real
    gradients: the transpose of multiplying by `a = (ar, ai)` is multiplying by
    `conj(a)`, and `∂(ar, ai) = (λr xr + λi xi, λi xr − λr xi)`.
    """
    a, x0, xs = res
    per_step = a.shape[0] != 1
    at = _transpose_decay(a, planes)
    ones = jnp.ones_like(at[:1])
    if planes == 2:
        ones = ones.at[..., ones.shape[-1] // 2 :].set(0)
    if reverse:
        shifted = jnp.concatenate([ones, at[:-1]], 0) if per_step else at
        lam = _KERNELS[backend](shifted, g, jnp.zeros_like(x0), False, planes=planes)
        prev = jnp.concatenate([xs[1:].astype(x0.dtype), x0[None]], axis=0)
        first, lam_first = at[-1], lam[-1]
    else:
        shifted = jnp.concatenate([at[1:], ones], 0) if per_step else at
        lam = _KERNELS[backend](shifted, g, jnp.zeros_like(x0), True, planes=planes)
        prev = jnp.concatenate([x0[None], xs[:-1].astype(x0.dtype)], axis=0)
        first, lam_first = at[0], lam[0]
    if planes == 1:
        da = lam * prev
    else:
        lam_c, x = _to_complex(lam.astype(prev.dtype)), _to_complex(prev)  # no bf16 complex
        da = _to_split(lam_c * jnp.conj(x))
    if not per_step:
        da = jnp.sum(da, axis=0, keepdims=True)
    dx0 = _planes_mul(first, lam_first.astype(first.dtype), planes)
    return da.astype(a.dtype), lam.astype(g.dtype), dx0.astype(x0.dtype)


_pallas_split.defvjp(_pallas_split_fwd, _pallas_split_bwd)


def _pallas(a, b, x0, reverse, backend):
    """`linear_scan` with the kernel: complex/real arrays to split layout and back.

    `a` has the rank of `b` (leading 1 or T). Differentiable through the kernel's
    own `custom_vjp`; the layout changes are ordinary JAX ops.
    """
    rest = b.shape[1:]
    cplx = jnp.iscomplexobj(b)
    p = rest[-1] if rest else 1
    m = math.prod(rest[:-1]) if rest else 1

    def split(z):
        z = z.reshape(z.shape[0], m, p)
        return _to_split(z) if cplx else z

    a_s = split(jnp.broadcast_to(a, a.shape[:1] + rest))
    planes = 2 if cplx else 1
    xs = cast(Array, _pallas_split(a_s, split(b), split(x0[None])[0], reverse, planes, backend))
    return (_to_complex(xs) if cplx else xs).reshape(b.shape)


_FORWARD = {"xla": _associative, "sequential": _sequential}


def _resolve(impl: str, dtype, name: str = "linear_scan") -> str:
    """The implementation to run: a kernel backend (`"mosaic"`, `"triton"`) or a
    reference (`"xla"`, `"sequential"`). `"auto"` and `"pallas"` choose through
    `_kernel_backends.choose` (on a GPU: Mosaic GPU on Hopper or newer, Triton on
    older GPUs, with one warning when the preferred backend cannot run); a forced
    backend that cannot run raises, naming what this machine has."""
    if impl not in _IMPLS:
        raise ValueError(f"{name}: `impl` must be one of {_IMPLS}, got {impl!r}.")
    if impl in ("xla", "sequential"):
        return impl
    f64 = jnp.dtype(dtype) in (jnp.float64, jnp.complex128)
    if impl == "auto" and jax.default_backend() != "gpu":
        # Off GPUs the references: on CPU the work-efficient sequential scan beats
        # the associative one at every length (benchmarks/scan_speed.py); other
        # accelerators take the parallel scan.
        return "sequential" if jax.default_backend() == "cpu" else "xla"
    if impl in ("mosaic", "triton"):
        _kernel_backends.require(impl, name, float64=f64)
        return impl
    fallback = "xla" if impl == "auto" else None
    return _kernel_backends.choose(name, float64=f64, fallback=fallback, probe=_probe)


def _probe(backend: str) -> None:
    """Compile a tiny scan with `backend`'s kernel for this machine (raises if it
    cannot): real, per-step, 64 steps of 2 × 128 channels."""
    # Shapes only: the probe may run while an outer function is being traced.
    a = jax.ShapeDtypeStruct((64, 2, 128), jnp.float32)
    x0 = jax.ShapeDtypeStruct((2, 128), jnp.float32)
    run = lambda a, b, x0: _KERNELS[backend](a, b, x0, False, planes=1)
    jax.jit(run).lower(a, a, x0).compile()


# ----------------------------------------------------------------------------
# Gradient wiring of the references (the kernel has its own, on split planes,
# in `_pallas_split`). Same recurrence, complex arithmetic.
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


def linear_scan(
    a: Inexact[Array, "..."],
    b: Inexact[Array, "time *rest"],  # noqa: F821
    x0: Inexact[Array, "..."] | None = None,
    *,
    reverse: bool = False,
    impl: ScanImpl = "auto",
) -> Inexact[Array, "time *rest"]:  # noqa: F821
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
    - `impl`: `"mosaic"` (the Pallas Mosaic GPU kernel: Hopper or newer),
      `"triton"` (the Pallas Triton kernel, while the installed jax has that
      backend), `"pallas"` (whichever of the two suits this GPU; off GPUs both run
      interpreted, Triton first), `"xla"` (parallel `lax.associative_scan`,
      O(log T) depth), `"sequential"` (`lax.scan`), or `"auto"`: on a GPU Mosaic
      GPU from compute capability 9.0, Triton below, the associative scan when
      neither can run (one warning says why); the sequential scan on CPU (faster
      there); the associative scan elsewhere. A forced kernel that cannot run here
      (float64 on Mosaic GPU, a backend this jax lacks) raises, naming the
      implementations this machine has.

    **Returns:** all states `x_0 … x_{T-1}`, shape `b.shape`, in the promoted
    dtype of the inputs (real or complex).

    Gradients with respect to `a`, `b` and `x0` are computed by a reverse scan
    of the same implementation (no stored tree levels).
    """
    # The casts in `_check_inputs` are differentiable JAX ops, so autodiff maps
    # cotangents back to the callers' dtypes (real parts for real inputs) and shapes.
    a, b, x0 = _check_inputs(a, b, x0)
    resolved = _resolve(impl, b.dtype)
    if resolved in _KERNELS:
        return _pallas(a, b, x0, reverse, resolved)
    return _scan(a, b, x0, reverse, resolved)


def linear_scan_split(
    a: Inexact[Array, "..."],
    b: Float[Array, "time *rest two_state"],
    x0: Inexact[Array, "..."] | None = None,
    *,
    reverse: bool = False,
    impl: ScanImpl = "auto",
) -> Float[Array, "time *rest two_state"]:
    """`linear_scan` for complex states stored as real *split layout* arrays.

    The last axis of `b` (and of the result) holds the `P` real parts followed by
    the `P` imaginary parts, which is what a real convolution with `2P` outputs
    produces and what a real convolution over `[Re x, Im x]` consumes. On GPU the
    kernel reads and writes this layout directly, so no complex tensor is ever
    materialised; the references convert to complex and back.

    **Arguments:** `a` complex, time-invariant (broadcastable to
    `b.shape[1:-1] + (P,)`) or per step (`(T, ..., P)`); `b` real `(T, ..., 2P)`;
    `x0` complex `(..., P)` or `None`; `reverse` and `impl` as in `linear_scan`.

    **Returns:** the states in split layout, shape and dtype of `b`.
    """
    if b.shape[-1] % 2:
        raise ValueError(
            "linear_scan_split: the last axis of `b` holds real then imaginary parts and "
            f"must be even, got b.shape={b.shape}."
        )
    p = b.shape[-1] // 2
    complex_shape = b.shape[:-1] + (p,)
    resolved = _resolve(impl, b.dtype, "linear_scan_split")
    if resolved not in _KERNELS:
        b_c = _to_complex(b.astype(_promoted_dtype(b.dtype, jnp.float32)))
        x = linear_scan(a, b_c, x0, reverse=reverse, impl=resolved)
        return _to_split(x).astype(b.dtype)
    a, x0 = _check_shapes(a, complex_shape, x0, b.dtype, "linear_scan_split")
    # The decay and the initial state stay in (at least) float32 planes; the kernel
    # accumulates in float32 whatever the dtype of `b`.
    ctype = _promoted_dtype(a.dtype, jnp.complex64)
    x0 = jnp.zeros(complex_shape[1:], ctype) if x0 is None else x0.astype(ctype)
    length, rest = b.shape[0], complex_shape[1:]
    m = math.prod(rest[:-1])

    def split(z):
        return _to_split(z.astype(ctype).reshape(z.shape[0], m, p))

    a_s = split(jnp.broadcast_to(a, a.shape[:1] + rest))
    xs = cast(
        Array,
        _pallas_split(a_s, b.reshape(length, m, 2 * p), split(x0[None])[0], reverse, 2, resolved),
    )
    return xs.reshape(b.shape)
