"""Fused masked attention as Pallas **Mosaic GPU** kernels (`plgpu.kernel`): the
forward pass, dQ and dK/dV, with the same block skipping as the Triton kernels in
`attention.py`, which dispatches here (`impl="mosaic"`) and wires the gradient.

Work layout. Every program is one warpgroup (128 threads) and owns one block of 64
query rows of one head (forward, dQ) or one block of keys of one key/value head
(dK/dV). Its fixed operands go to shared memory once by TMA; the blocks it visits
stream in by TMA into two slots, the next block's copies issued before the current
block is computed, so loads overlap the tensor-core work. Every product is a
warpgroup MMA (`plgpu.wgmma`, fp32 accumulators), with the operand tiles in shared
memory in the swizzled layout it reads (`TilingTransform((8, 64))` +
`SwizzleTransform(128)`): 64 bf16/fp16 elements per 128-byte row, so the head
dimension is padded to a multiple of 64.

Block skipping. `attention.py` turns the mask into per-row key ranges `[lo, hi)` and,
per block of rows, the key blocks `[first, last)` holding every visible key and the
fully visible sub-range `[full_lo, full_hi)`. A program reads these four numbers
from global memory and walks `[first, full_lo)` and `[full_hi, last)` with the
element mask and `[full_lo, full_hi)` without it; nothing outside is loaded. The
dK/dV programs walk the transposed ranges over query blocks, for every query head
of their group (grouped-query attention sums the group's gradients in registers).

Softmax in the log2 domain (`log2(e)·scale` folded into one factor, `exp2`); the
forward saves `lse = m + log2(l)` per row, `+inf` for rows that see nothing, so the
backward recomputes probabilities that are exactly 0 there.

The second operand of `P·V`, `dS·K` and the like comes from registers on the GPU
(as FlashAttention-3 does); Mosaic GPU's interpreter takes MMA operands from shared
memory only, so interpreted kernels stage that operand through shared memory first
(`registers=False`). Both variants are lowered for CUDA in the tests; the staged one
is what runs, and is checked, on CPUs.
"""

import math

import jax
import jax.numpy as jnp

from ._linear_scan_mosaic import mosaic_modules

LOG2E = math.log2(math.e)
ROWS = 64
"""Query rows per warpgroup MMA (the M of `wgmma`), the query block of every kernel."""
_FLOOR = -1e30
"""A finite floor for the running max: masked scores are -inf, so rows that have seen
nothing keep `m = floor`, `p = 0` and `alpha = 1` (never `inf - inf`)."""


def _tile_transforms():
    plgpu, _ = mosaic_modules()
    return (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def _tile(shape, dtype):
    """A shared-memory buffer in the layout the warpgroup MMA reads."""
    plgpu, _ = mosaic_modules()
    return plgpu.SMEM(shape, dtype, transforms=_tile_transforms())


def _mma(acc, a, b, *, transpose_b=False, stage=None):
    """`acc + a @ b` (or `a @ bᵀ`) on the tensor cores: `acc` an fp32 array, or `None`
    for zeros; `a` a shared-memory ref or an array; `b` a shared-memory ref.

    Compiled (`stage=None`): an array `a` is an operand from registers, `bᵀ` a
    transposed view of `b`, and `acc` the MMA's own accumulator. Interpreted, Mosaic
    GPU's interpreter has neither register operands, transposed views (jax 0.10) nor
    `run_state`, so `stage = (a_buf, b_buf)` are shared-memory buffers: an array `a`
    is stored to `a_buf`, `bᵀ` is transposed through `b_buf`, and the product is
    added to `acc` in registers."""
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    if stage is not None:
        a_buf, b_buf = stage
        if isinstance(a, jax.Array):
            a_buf[...] = a
            a = a_buf
        if transpose_b:
            b_buf[...] = b[...].T
            b, transpose_b = b_buf, False
        plgpu.commit_smem()
    if transpose_b:
        b = plgpu.transpose_ref(b, (1, 0))
    if acc is not None and stage is None:

        def accumulate(acc_ref):
            plgpu.wgmma(acc_ref, a, b)

        return pl.run_state(accumulate)(plgpu.ACC.init(acc))

    def product(acc_ref):
        plgpu.wgmma(acc_ref, a, b)
        return acc_ref[...]

    out = pl.run_scoped(product, plgpu.ACC((a.shape[0], b.shape[1]), jnp.float32))
    return out if acc is None else acc + out


def _layout(x, layout, compiled):
    """`x` in register layout `layout` (`plgpu.Layout.WGMMA`, or its `.reduce(axis)`)
    when compiled; interpreted kernels have no layouts (the interpreter cannot run
    `layout_cast`)."""
    return mosaic_modules()[0].layout_cast(x, layout) if compiled else x


def _rowvec(ref, axis, compiled):
    """A vector ref's values laid out along `axis` of an MMA result: `axis=1` reduces
    columns (one value per row), `axis=0` one value per column."""
    plgpu, _ = mosaic_modules()
    return _layout(ref[...], plgpu.Layout.WGMMA.reduce(axis), compiled)


def _bcast(vec, shape, axis):
    """`vec` (one value per row when `axis=0`, per column when `axis=1`) broadcast to
    an MMA result of `shape`."""
    return jax.lax.broadcast_in_dim(vec, shape, [axis])


def _iota(shape, axis, compiled):
    plgpu, _ = mosaic_modules()
    if not compiled:
        return jax.lax.broadcasted_iota(jnp.int32, shape, axis)
    return plgpu.broadcasted_iota(jnp.int32, shape, axis, layout=plgpu.Layout.WGMMA)


def _walk(ranges, heads, fetch, compute, carry):
    """Visit blocks `[first, last)` (the four `ranges` scalars `first, full_lo,
    full_hi, last`) once for each of `heads` heads, prefetching one step ahead into
    two slots: `fetch(head, block, slot)` issues a step's copies, `compute(head, block,
    slot, masked, carry)` waits for them and computes; `masked` is static, `True` in
    `[first, full_lo)` and `[full_hi, last)`."""
    from jax.experimental import pallas as pl

    first, full_lo, full_hi, last = ranges
    count = last - first
    total = heads * count
    per_head = jnp.maximum(count, 1)

    @pl.when(total > 0)
    def _():
        fetch(0, first, 0)

    def section(head, masked):
        def body(block, carry):
            step = head * count + block - first
            slot = jax.lax.rem(step, 2)
            following = step + 1

            @pl.when(following < total)
            def _():
                fetch(following // per_head, first + jax.lax.rem(following, per_head), 1 - slot)

            return compute(head, block, slot, masked, carry)

        return body

    def per_head_walk(head, carry):
        carry = jax.lax.fori_loop(first, full_lo, section(head, True), carry)
        carry = jax.lax.fori_loop(full_lo, full_hi, section(head, False), carry)
        return jax.lax.fori_loop(full_hi, last, section(head, True), carry)

    if heads == 1:
        return per_head_walk(0, carry)
    return jax.lax.fori_loop(0, heads, per_head_walk, carry)


def _read_ranges(ranges_ref, b, i):
    return tuple(ranges_ref[b, i, c] for c in range(4))


# ----------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------


def _forward_body(*, block_kv, group, qk_scale, compiled):
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    f32 = jnp.float32

    def body(q_ref, k_ref, v_ref, lo_ref, hi_ref, ranges_ref, out_ref, lse_ref, *scratch):
        q_smem, k_smem, v_smem, lo_smem, hi_smem, lse_smem, barriers, stage = scratch
        q_bar, k_bar, v_bar = barriers
        h, qi, b = (jax.lax.axis_index(n) for n in ("h", "q", "b"))
        kv_head = jax.lax.div(h, jnp.int32(group))
        rows = pl.ds(qi * ROWS, ROWS)
        plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], q_smem, q_bar.at[0])
        plgpu.copy_gmem_to_smem(lo_ref.at[b, rows], lo_smem, q_bar.at[1])
        plgpu.copy_gmem_to_smem(hi_ref.at[b, rows], hi_smem, q_bar.at[2])
        for c in range(3):
            plgpu.barrier_wait(q_bar.at[c])
        lo, hi = _rowvec(lo_smem, 1, compiled), _rowvec(hi_smem, 1, compiled)
        dim = q_smem.shape[1]

        def fetch(_head, block, slot):
            keys = pl.ds(block * block_kv, block_kv)
            plgpu.copy_gmem_to_smem(k_ref.at[b, keys, kv_head], k_smem.at[slot], k_bar.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[b, keys, kv_head], v_smem.at[slot], v_bar.at[slot])

        def compute(_head, block, slot, masked, carry):
            acc, m, denom = carry
            plgpu.barrier_wait(k_bar.at[slot])
            s = _mma(None, q_smem, k_smem.at[slot], transpose_b=True, stage=stage) * qk_scale
            if masked:
                cols = _iota(s.shape, 1, compiled) + block * block_kv
                ok = (cols >= _bcast(lo, s.shape, 0)) & (cols < _bcast(hi, s.shape, 0))
                s = jnp.where(ok, s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(axis=1))
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s - _bcast(m_new, s.shape, 0))
            denom = denom * alpha + p.sum(axis=1)
            acc = acc * _bcast(alpha, acc.shape, 0)
            plgpu.barrier_wait(v_bar.at[slot])
            acc = _mma(acc, p.astype(v_smem.dtype), v_smem.at[slot], stage=stage)
            return acc, m_new, denom

        init = (
            _layout(jnp.zeros((ROWS, dim), f32), plgpu.Layout.WGMMA, compiled),
            _layout(jnp.full((ROWS,), _FLOOR, f32), plgpu.Layout.WGMMA.reduce(1), compiled),
            _layout(jnp.zeros((ROWS,), f32), plgpu.Layout.WGMMA.reduce(1), compiled),
        )
        acc, m, denom = _walk(_read_ranges(ranges_ref, b, qi), 1, fetch, compute, init)
        valid = hi > lo
        safe = jnp.where(denom > 0, denom, 1.0)
        out = acc / _bcast(safe, acc.shape, 0)
        q_smem[...] = jnp.where(_bcast(valid, acc.shape, 0), out, 0.0).astype(q_smem.dtype)
        lse_smem[...] = jnp.where(valid, m + jnp.log2(safe), jnp.inf)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_smem, out_ref.at[b, rows, h])
        plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[b, h, rows])
        plgpu.wait_smem_to_gmem(0)

    return body


def forward(q, k, v, lo, hi, ranges, *, scale, block_kv, interpret):
    """Outputs `(batch, q_len, heads, dim)` and `lse` `(batch, heads, q_len)` float32
    (log2 domain), on padded inputs: `q_len` a multiple of 64, `kv_len` of
    `block_kv`, `dim` of 64; `ranges` from `_q_block_ranges(lo, hi, 64, block_kv)`."""
    plgpu, _ = mosaic_modules()
    batch, q_len, heads, dim = q.shape
    kv_heads = k.shape[2]
    compiled = interpret is None
    body = _forward_body(
        block_kv=block_kv, group=heads // kv_heads, qk_scale=scale * LOG2E, compiled=compiled
    )
    scratch = [
        _tile((ROWS, dim), q.dtype),
        _tile((2, block_kv, dim), k.dtype),
        _tile((2, block_kv, dim), v.dtype),
        plgpu.SMEM((ROWS,), jnp.int32),
        plgpu.SMEM((ROWS,), jnp.int32),
        plgpu.SMEM((ROWS,), jnp.float32),
        (
            plgpu.Barrier(num_arrivals=1, num_barriers=3),
            plgpu.Barrier(num_arrivals=1, num_barriers=2),
            plgpu.Barrier(num_arrivals=1, num_barriers=2),
        ),
        None if compiled else (_tile((ROWS, block_kv), v.dtype), _tile((dim, block_kv), k.dtype)),
    ]
    call = plgpu.kernel(
        body,
        out_type=(
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32),
        ),
        scratch_types=scratch,
        grid=(heads, q_len // ROWS, batch),
        grid_names=("h", "q", "b"),
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret,
    )
    return call(q, k, v, lo, hi, ranges)


# ----------------------------------------------------------------------------
# Backward: dQ per query block, dK/dV per key block.
# ----------------------------------------------------------------------------


def _dq_body(*, block_kv, group, qk_scale, scale, compiled):
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    f32 = jnp.float32

    def body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, ranges_ref,
             dq_ref, *scratch):  # fmt: skip
        q_smem, do_smem, k_smem, v_smem, stats, bounds, barriers, stage = scratch
        fixed_bar, k_bar, v_bar = barriers
        h, qi, b = (jax.lax.axis_index(n) for n in ("h", "q", "b"))
        kv_head = jax.lax.div(h, jnp.int32(group))
        rows = pl.ds(qi * ROWS, ROWS)
        sources = (
            (q_ref.at[b, rows, h], q_smem),
            (do_ref.at[b, rows, h], do_smem),
            (lse_ref.at[b, h, rows], stats.at[0]),
            (delta_ref.at[b, h, rows], stats.at[1]),
            (lo_ref.at[b, rows], bounds.at[0]),
            (hi_ref.at[b, rows], bounds.at[1]),
        )
        for c, (src, dst) in enumerate(sources):
            plgpu.copy_gmem_to_smem(src, dst, fixed_bar.at[c])
        for c in range(len(sources)):
            plgpu.barrier_wait(fixed_bar.at[c])
        lse, delta = (_rowvec(stats.at[c], 1, compiled) for c in (0, 1))
        lo, hi = (_rowvec(bounds.at[c], 1, compiled) for c in (0, 1))
        dim = q_smem.shape[1]

        def fetch(_head, block, slot):
            keys = pl.ds(block * block_kv, block_kv)
            plgpu.copy_gmem_to_smem(k_ref.at[b, keys, kv_head], k_smem.at[slot], k_bar.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[b, keys, kv_head], v_smem.at[slot], v_bar.at[slot])

        def compute(_head, block, slot, masked, dq):
            plgpu.barrier_wait(k_bar.at[slot])
            s = _mma(None, q_smem, k_smem.at[slot], transpose_b=True, stage=stage) * qk_scale
            if masked:
                cols = _iota(s.shape, 1, compiled) + block * block_kv
                ok = (cols >= _bcast(lo, s.shape, 0)) & (cols < _bcast(hi, s.shape, 0))
                s = jnp.where(ok, s, -jnp.inf)
            p = jnp.exp2(s - _bcast(lse, s.shape, 0))
            plgpu.barrier_wait(v_bar.at[slot])
            dp = _mma(None, do_smem, v_smem.at[slot], transpose_b=True, stage=stage)
            ds = p * (dp - _bcast(delta, s.shape, 0))
            return _mma(dq, ds.astype(k_smem.dtype), k_smem.at[slot], stage=stage)

        init = _layout(jnp.zeros((ROWS, dim), f32), plgpu.Layout.WGMMA, compiled)
        dq = _walk(_read_ranges(ranges_ref, b, qi), 1, fetch, compute, init)
        q_smem[...] = (dq * scale).astype(q_smem.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[b, rows, h])
        plgpu.wait_smem_to_gmem(0)

    return body


def _dkv_body(*, block_kv, group, qk_scale, scale, compiled):
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    f32 = jnp.float32

    def body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, ranges_ref,
             dk_ref, dv_ref, *scratch):  # fmt: skip
        k_smem, v_smem, q_smem, do_smem, stats, bounds, barriers, stage = scratch
        fixed_bar, q_bar, do_bar, vector_bar = barriers
        g, kj, b = (jax.lax.axis_index(n) for n in ("g", "k", "b"))
        keys = pl.ds(kj * block_kv, block_kv)
        plgpu.copy_gmem_to_smem(k_ref.at[b, keys, g], k_smem, fixed_bar.at[0])
        plgpu.copy_gmem_to_smem(v_ref.at[b, keys, g], v_smem, fixed_bar.at[1])
        dim = k_smem.shape[1]

        def fetch(head, block, slot):
            h = g * group + head
            rows = pl.ds(block * ROWS, ROWS)
            plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], q_smem.at[slot], q_bar.at[slot])
            plgpu.copy_gmem_to_smem(do_ref.at[b, rows, h], do_smem.at[slot], do_bar.at[slot])
            sources = (
                (lse_ref.at[b, h, rows], stats.at[slot, 0]),
                (delta_ref.at[b, h, rows], stats.at[slot, 1]),
                (lo_ref.at[b, rows], bounds.at[slot, 0]),
                (hi_ref.at[b, rows], bounds.at[slot, 1]),
            )
            for c, (src, dst) in enumerate(sources):
                plgpu.copy_gmem_to_smem(src, dst, vector_bar.at[slot * 4 + c])

        def compute(_head, block, slot, masked, carry):
            dk, dv = carry
            for c in range(4):
                plgpu.barrier_wait(vector_bar.at[slot * 4 + c])
            lse, delta = (_rowvec(stats.at[slot, c], 0, compiled) for c in (0, 1))
            plgpu.barrier_wait(q_bar.at[slot])
            # Transposed scores: keys along rows, queries along columns.
            st = _mma(None, k_smem, q_smem.at[slot], transpose_b=True, stage=stage) * qk_scale
            if masked:
                lo, hi = (_rowvec(bounds.at[slot, c], 0, compiled) for c in (0, 1))
                key = _iota(st.shape, 0, compiled) + kj * block_kv
                ok = (key >= _bcast(lo, st.shape, 1)) & (key < _bcast(hi, st.shape, 1))
                st = jnp.where(ok, st, -jnp.inf)
            pt = jnp.exp2(st - _bcast(lse, st.shape, 1))
            plgpu.barrier_wait(do_bar.at[slot])
            dv = _mma(dv, pt.astype(do_smem.dtype), do_smem.at[slot], stage=stage)
            dpt = _mma(None, v_smem, do_smem.at[slot], transpose_b=True, stage=stage)
            dst = pt * (dpt - _bcast(delta, st.shape, 1))
            dk = _mma(dk, dst.astype(q_smem.dtype), q_smem.at[slot], stage=stage)
            return dk, dv

        plgpu.barrier_wait(fixed_bar.at[0])
        plgpu.barrier_wait(fixed_bar.at[1])
        zeros = _layout(jnp.zeros((block_kv, dim), f32), plgpu.Layout.WGMMA, compiled)
        ranges = _read_ranges(ranges_ref, b, kj)
        dk, dv = _walk(ranges, group, fetch, compute, (zeros, zeros))
        k_smem[...] = (dk * scale).astype(k_smem.dtype)
        v_smem[...] = dv.astype(v_smem.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[b, keys, g])
        plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[b, keys, g])
        plgpu.wait_smem_to_gmem(0)

    return body


def backward(q, k, v, do, lse, delta, lo, hi, dq_ranges, kv_ranges, *, scale, block_kv_dq,
             block_kv_dkv, interpret):  # fmt: skip
    """`(dq, dk, dv)` on the forward's padded inputs, its `lse`, `delta = Σ_d out·do`
    `(batch, heads, q_len)` float32, the forward's row ranges, `dq_ranges =
    _q_block_ranges(lo, hi, 64, block_kv_dq)` and `kv_ranges`, the query blocks of 64
    rows that see each key block of `block_kv_dkv` (`_kv_block_ranges`)."""
    plgpu, _ = mosaic_modules()
    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    compiled = interpret is None
    barrier = lambda n: plgpu.Barrier(num_arrivals=1, num_barriers=n)
    common = dict(group=group, qk_scale=scale * LOG2E, scale=scale, compiled=compiled)
    params = plgpu.CompilerParams(approx_math=True)

    bk = block_kv_dq
    dq = plgpu.kernel(
        _dq_body(block_kv=bk, **common),
        out_type=jax.ShapeDtypeStruct(q.shape, q.dtype),
        scratch_types=[
            _tile((ROWS, dim), q.dtype),
            _tile((ROWS, dim), do.dtype),
            _tile((2, bk, dim), k.dtype),
            _tile((2, bk, dim), v.dtype),
            plgpu.SMEM((2, ROWS), jnp.float32),
            plgpu.SMEM((2, ROWS), jnp.int32),
            (barrier(6), barrier(2), barrier(2)),
            None if compiled else (_tile((ROWS, bk), k.dtype), _tile((dim, bk), k.dtype)),
        ],
        grid=(heads, q_len // ROWS, batch),
        grid_names=("h", "q", "b"),
        compiler_params=params,
        interpret=interpret,
    )(q, k, v, do, lse, delta, lo, hi, dq_ranges)

    bk = block_kv_dkv
    dk, dv = plgpu.kernel(
        _dkv_body(block_kv=bk, **common),
        out_type=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        scratch_types=[
            _tile((bk, dim), k.dtype),
            _tile((bk, dim), v.dtype),
            _tile((2, ROWS, dim), q.dtype),
            _tile((2, ROWS, dim), do.dtype),
            plgpu.SMEM((2, 2, ROWS), jnp.float32),
            plgpu.SMEM((2, 2, ROWS), jnp.int32),
            (barrier(2), barrier(2), barrier(2), barrier(8)),
            None if compiled else (_tile((bk, ROWS), q.dtype), _tile((dim, ROWS), q.dtype)),
        ],
        grid=(kv_heads, kv_len // bk, batch),
        grid_names=("g", "k", "b"),
        compiler_params=params,
        interpret=interpret,
    )(q, k, v, do, lse, delta, lo, hi, kv_ranges)
    return dq, dk, dv
