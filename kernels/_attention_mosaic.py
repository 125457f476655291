"""Fused masked attention as Pallas **Mosaic GPU** kernels (`plgpu.kernel`): the
forward pass, dQ and dK/dV, with the same block skipping as the Triton kernels in
`attention.py`, which dispatches here (`impl="mosaic"`) and wires the gradient.

Work layout: warp specialisation, as FlashAttention-3 on Hopper. A program has one
or two *compute* warpgroups (128 threads each) and one *memory* warpgroup. Each
compute warpgroup owns a fixed block of 64 rows: query rows of one head (forward,
dQ) or keys of one key/value head (dK/dV); its own operands go to shared memory
once by TMA. The memory warpgroup streams the blocks the program visits (keys and
values; or queries, output gradients and their row statistics) by TMA into
`stages` slots, refilling a slot once every compute warpgroup has released it, so
loads run ahead of the tensor cores. Every product is a warpgroup MMA
(`plgpu.wgmma`, fp32 accumulators), with the tiles in shared memory in the swizzled
layout it reads (`TilingTransform((8, 64))` + `SwizzleTransform(128)`): 64
bf16/fp16 elements per 128-byte row, so the head dimension is padded to a multiple
of 64 (at most 128: the dK/dV accumulators live in registers). The first operand
(A) of `P·V`, `dS·K` and the like comes from registers.

Block skipping. `attention.py` turns the mask into per-row key ranges `[lo, hi)` and,
per block of 64 rows, the blocks `[first, last)` holding every visible key and the
fully visible sub-range `[full_lo, full_hi)` (transposed for dK/dV). The memory
warpgroup loads the union of its compute warpgroups' ranges; each compute warpgroup
computes `[first, full_lo)` and `[full_hi, last)` with the element mask and
`[full_lo, full_hi)` without, and only waits for and releases the other blocks of
the union (neighbouring row blocks' ranges nearly coincide). Nothing outside the
union is loaded. The dK/dV programs walk their query blocks once for every query
head of their group (grouped-query attention sums the group's gradients in
registers).

Softmax in the log2 domain (`log2(e)·scale` folded into one factor, `exp2`); the
forward saves `lse = m + log2(l)` per row, `+inf` for rows that see nothing, so the
backward recomputes probabilities that are exactly 0 there.

Interpreted on CPUs (`compiled=False`), the kernels are the same but for the MMAs,
which become dots of the same shared-memory tiles in registers (`_mma` says why),
and the register layout casts, which Mosaic GPU's interpreter has not. Tests run the
interpreted kernels against the reference and lower the compiled ones for CUDA.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._linear_scan_mosaic import mosaic_modules

LOG2E = math.log2(math.e)
ROWS = 64
"""Rows per warpgroup MMA (the M of `wgmma`): the block a compute warpgroup owns."""
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


def _mma(acc, a, b, *, transpose_b=False, compiled=True):
    """`acc + a @ b` (or `a @ bᵀ`) with fp32 accumulation: `acc` an fp32 array, or
    `None` for zeros; `a` a shared-memory ref or an array; `b` a shared-memory ref.

    Compiled: a warpgroup MMA on the tensor cores, an array `a` taken from registers,
    `bᵀ` a transposed view of `b`, `acc` the MMA's own accumulator. Interpreted: the
    same product of the same shared-memory tiles, as a dot in registers. (Mosaic GPU's
    interpreter runs `wgmma` as an *ordered* host callback, which serialises the
    warpgroups of a program: a compute warpgroup waiting for a tile the memory
    warpgroup may only load once every compute warpgroup has released the slot would
    never be served. It also lacks register operands, transposed views (jax 0.10) and
    `run_state`.)"""
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    if not compiled:
        a_value = a if isinstance(a, jax.Array) else a[...]
        b_value = b[...].T if transpose_b else b[...]
        out = jax.lax.dot(a_value, b_value, preferred_element_type=jnp.float32)
        return out if acc is None else acc + out
    if transpose_b:
        b = plgpu.transpose_ref(b, (1, 0))
    if acc is not None:

        def accumulate(acc_ref):
            plgpu.wgmma(acc_ref, a, b)

        return pl.run_state(accumulate)(plgpu.ACC.init(acc))

    def product(acc_ref):
        plgpu.wgmma(acc_ref, a, b)
        return acc_ref[...]

    return pl.run_scoped(product, plgpu.ACC((a.shape[0], b.shape[1]), jnp.float32))


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


def _mask_scores(s, lo, hi, first_key, key_axis, compiled):
    """Scores `s` with `-inf` where a key lies outside its row's range `[lo, hi)`:
    keys run along `key_axis` from `first_key`; `lo`, `hi` are laid out along the
    other axis (one value per query)."""
    key = _iota(s.shape, key_axis, compiled) + first_key
    query_axis = 1 - key_axis
    ok = (key >= _bcast(lo, s.shape, query_axis)) & (key < _bcast(hi, s.shape, query_axis))
    return jnp.where(ok, s, -jnp.inf)


def _read_ranges(ranges_ref, b, i):
    return tuple(ranges_ref[b, i, c] for c in range(4))


def _union(ranges):
    """The blocks `[first, last)` any of `ranges` (each `first, full_lo, full_hi,
    last`) visits; `(0, 0)` when none visits any."""
    big = jnp.int32(2**30)
    visits = [r[3] > r[0] for r in ranges]
    first = functools.reduce(jnp.minimum, [jnp.where(v, r[0], big) for v, r in zip(visits, ranges)])
    last = functools.reduce(jnp.maximum, [jnp.where(v, r[3], 0) for v, r in zip(visits, ranges)])
    return jnp.where(last > 0, first, 0), last


@dataclasses.dataclass(frozen=True)
class _Stream:
    """An operand the memory warpgroup streams: `source(head, block)` is its slice of
    global memory, `smem` its `(stages, ...)` slots, `ready` the slots' TMA barriers,
    `free` the barriers the compute warpgroups release a slot on."""

    source: Callable[[Any, Any], Any]
    smem: Any
    ready: Any
    free: Any


def _specialized(*, compute_wgs, stages, own, heads, streams, setup, compute, finish, compiled):
    """The warp-specialised program. `own[w]`: the four range scalars of compute
    warpgroup `w`; every block of their union is streamed (`streams`) once per head
    (`heads`). Compute warpgroup `wg` runs `consts, carry = setup(wg)`, then
    `carry = compute(wg, consts, head, block, slot, masked, carry)` for the blocks of
    its own range (it waits for and releases the streams' slots itself) and
    `finish(wg, consts, carry)`."""
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    wg = jax.lax.axis_index("wg")
    first_u, last_u = _union(own)
    count = last_u - first_u
    total = heads * count
    slot_of = lambda step: jax.lax.rem(step, jnp.int32(stages))

    @pl.when(wg < compute_wgs)
    def _compute():
        if compiled:
            plgpu.set_max_registers(232 if compute_wgs > 1 else 240, action="increase")
        mine = tuple(_select(wg, [r[c] for r in own]) for c in range(4))
        empty = mine[3] <= mine[0]
        first, full_lo, full_hi, last = (jnp.where(empty, first_u, x) for x in mine)
        consts, carry = setup(wg)

        def skip(head):
            def body(block, carry):
                slot = slot_of(head * count + block - first_u)
                for stream in streams:
                    plgpu.barrier_wait(stream.ready.at[slot])
                    plgpu.barrier_arrive(stream.free.at[slot])
                return carry

            return body

        def visit(head, masked):
            def body(block, carry):
                slot = slot_of(head * count + block - first_u)
                return compute(wg, consts, head, block, slot, masked, carry)

            return body

        def per_head(head, carry):
            carry = jax.lax.fori_loop(first_u, first, skip(head), carry)
            carry = jax.lax.fori_loop(first, full_lo, visit(head, True), carry)
            carry = jax.lax.fori_loop(full_lo, full_hi, visit(head, False), carry)
            carry = jax.lax.fori_loop(full_hi, last, visit(head, True), carry)
            return jax.lax.fori_loop(last, last_u, skip(head), carry)

        carry = per_head(0, carry) if heads == 1 else jax.lax.fori_loop(0, heads, per_head, carry)
        finish(wg, consts, carry)

    @pl.when(wg == compute_wgs)
    def _memory():
        if compiled:
            plgpu.set_max_registers(40, action="decrease")
        per_head = jnp.maximum(count, 1)

        def load(step, carry):
            head, block, slot = (
                step // per_head,
                first_u + jax.lax.rem(step, per_head),
                slot_of(step),
            )
            for stream in streams:

                @pl.when(step >= stages)
                def _(stream=stream):  # traced at once, bound here for clarity
                    plgpu.barrier_wait(stream.free.at[slot])

                plgpu.copy_gmem_to_smem(stream.source(head, block), stream.smem.at[slot], stream.ready.at[slot])  # fmt: skip
            return carry

        jax.lax.fori_loop(0, total, load, None)

        # Drain: see the last uses of every slot released (no copy is in flight
        # when the program ends; the interpreter checks it).
        def drain(step, carry):
            for stream in streams:
                plgpu.barrier_wait(stream.free.at[slot_of(step)])
            return carry

        jax.lax.fori_loop(jnp.maximum(0, total - stages), total, drain, None)


def _kv_streams(k_ref, v_ref, b, kv_head, block_kv, k_smem, v_smem, barriers):
    """The key and value blocks of `block_kv` keys of head `kv_head`, streamed."""
    from jax.experimental import pallas as pl

    keys = lambda block: pl.ds(block * block_kv, block_kv)
    sources = [
        lambda _, block: k_ref.at[b, keys(block), kv_head],
        lambda _, block: v_ref.at[b, keys(block), kv_head],
    ]
    return _streams(sources, [k_smem, v_smem], barriers)


def _streams(sources, smems, barriers):
    """`_Stream`s over `sources` and their slots `smems`, with `barriers = (ready,
    free)` from `_stream_barriers`."""
    ready, free = barriers
    return [_Stream(*fields) for fields in zip(sources, smems, ready, free)]


def _stream_barriers(count, stages, compute_wgs):
    """`(ready, free)`: per stream, `stages` TMA barriers and `stages` release
    barriers (every compute warpgroup arrives)."""
    plgpu, _ = mosaic_modules()
    ready = tuple(plgpu.Barrier(num_arrivals=1, num_barriers=stages) for _ in range(count))
    free = tuple(plgpu.Barrier(num_arrivals=compute_wgs, num_barriers=stages) for _ in range(count))
    return ready, free


def _fixed_barriers(count, compute_wgs):
    """TMA barriers for `count` operands each compute warpgroup loads once."""
    plgpu, _ = mosaic_modules()
    return plgpu.Barrier(num_arrivals=1, num_barriers=count * compute_wgs)


def _load_fixed(wg, sources, barrier):
    """Each compute warpgroup's own operands: copy `(source, smem)` pairs and wait."""
    plgpu, _ = mosaic_modules()
    n = len(sources)
    for c, (src, dst) in enumerate(sources):
        plgpu.copy_gmem_to_smem(src, dst, barrier.at[wg * n + c])
    for c in range(n):
        plgpu.barrier_wait(barrier.at[wg * n + c])


def _release(streams, slot, *, fence):
    """Release `slot` of `streams` to the memory warpgroup. `fence`: the slot was read
    by ordinary (generic-proxy) loads, which must be ordered before the TMA (async
    proxy) that refills it: a proxy fence first. MMA operand reads need none."""
    plgpu, _ = mosaic_modules()
    if fence:
        plgpu.commit_smem()
    for stream in streams:
        plgpu.barrier_arrive(stream.free.at[slot])


def _select(wg, values):
    """`values[wg]` for a traced warpgroup index (scalars)."""
    return functools.reduce(
        lambda x, w: jnp.where(wg == w, values[w], x), range(1, len(values)), values[0]
    )


def _launch(body, *, out_type, scratch, grid, grid_names, compute_wgs, interpret):
    plgpu, _ = mosaic_modules()
    return plgpu.kernel(
        body,
        out_type=out_type,
        scratch_types=scratch,
        grid=grid,
        grid_names=grid_names,
        num_threads=compute_wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret,
    )


# ----------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------


def _forward_body(*, block_kv, group, qk_scale, compiled, compute_wgs, stages):
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    f32 = jnp.float32

    def body(q_ref, k_ref, v_ref, lo_ref, hi_ref, ranges_ref, out_ref, lse_ref, *scratch):
        q_smem, k_smem, v_smem, lo_smem, hi_smem, lse_smem, fixed, barriers = scratch
        h, qi, b = (jax.lax.axis_index(n) for n in ("h", "q", "b"))
        kv_head = jax.lax.div(h, jnp.int32(group))
        k_stream, v_stream = _kv_streams(
            k_ref, v_ref, b, kv_head, block_kv, k_smem, v_smem, barriers
        )
        rows = lambda wg: pl.ds((qi * compute_wgs + wg) * ROWS, ROWS)

        def setup(wg):
            sources = [
                (q_ref.at[b, rows(wg), h], q_smem.at[wg]),
                (lo_ref.at[b, rows(wg)], lo_smem.at[wg]),
                (hi_ref.at[b, rows(wg)], hi_smem.at[wg]),
            ]
            _load_fixed(wg, sources, fixed)
            lo, hi = _rowvec(lo_smem.at[wg], 1, compiled), _rowvec(hi_smem.at[wg], 1, compiled)
            dim = q_smem.shape[-1]
            carry = (
                _layout(jnp.zeros((ROWS, dim), f32), plgpu.Layout.WGMMA, compiled),
                _layout(jnp.full((ROWS,), _FLOOR, f32), plgpu.Layout.WGMMA.reduce(1), compiled),
                _layout(jnp.zeros((ROWS,), f32), plgpu.Layout.WGMMA.reduce(1), compiled),
            )
            return (lo, hi), carry

        def compute(wg, consts, _head, block, slot, masked, carry):
            (lo, hi), (acc, m, denom) = consts, carry
            plgpu.barrier_wait(k_stream.ready.at[slot])
            s = _mma(None, q_smem.at[wg], k_smem.at[slot], transpose_b=True, compiled=compiled)
            _release([k_stream], slot, fence=not compiled)
            s = s * qk_scale
            if masked:
                s = _mask_scores(s, lo, hi, block * block_kv, 1, compiled)
            m_new = jnp.maximum(m, s.max(axis=1))
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s - _bcast(m_new, s.shape, 0))
            denom = denom * alpha + p.sum(axis=1)
            acc = acc * _bcast(alpha, acc.shape, 0)
            plgpu.barrier_wait(v_stream.ready.at[slot])
            acc = _mma(acc, p.astype(v_smem.dtype), v_smem.at[slot], compiled=compiled)
            _release([v_stream], slot, fence=not compiled)
            return acc, m_new, denom

        def finish(wg, consts, carry):
            (lo, hi), (acc, m, denom) = consts, carry
            valid = hi > lo
            safe = jnp.where(denom > 0, denom, 1.0)
            out = acc / _bcast(safe, acc.shape, 0)
            q_w, lse_w = q_smem.at[wg], lse_smem.at[wg]
            q_w[...] = jnp.where(_bcast(valid, acc.shape, 0), out, 0.0).astype(q_w.dtype)
            lse_w[...] = jnp.where(valid, m + jnp.log2(safe), jnp.inf)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(q_w, out_ref.at[b, rows(wg), h])
            plgpu.copy_smem_to_gmem(lse_w, lse_ref.at[b, h, rows(wg)])
            plgpu.wait_smem_to_gmem(0)

        own = [_read_ranges(ranges_ref, b, qi * compute_wgs + w) for w in range(compute_wgs)]
        _specialized(
            compute_wgs=compute_wgs, stages=stages, own=own, heads=1,
            streams=[k_stream, v_stream], setup=setup, compute=compute, finish=finish,
            compiled=compiled,
        )  # fmt: skip

    return body


def forward(q, k, v, lo, hi, ranges, *, scale, block_q, block_kv, stages, interpret):
    """Outputs `(batch, q_len, heads, dim)` and `lse` `(batch, heads, q_len)` float32
    (log2 domain), on padded inputs: `q_len` a multiple of `block_q` (64 or 128: one
    or two compute warpgroups per program), `kv_len` of `block_kv`, `dim` of 64;
    `ranges = _q_block_ranges(lo, hi, 64, block_kv)`; `stages` key/value slots."""
    plgpu, _ = mosaic_modules()
    batch, q_len, heads, dim = q.shape
    w = block_q // ROWS
    compiled = interpret is None
    body = _forward_body(
        block_kv=block_kv, group=heads // k.shape[2], qk_scale=scale * LOG2E,
        compiled=compiled, compute_wgs=w, stages=stages,
    )  # fmt: skip
    scratch = [
        _tile((w, ROWS, dim), q.dtype),
        _tile((stages, block_kv, dim), k.dtype),
        _tile((stages, block_kv, dim), v.dtype),
        plgpu.SMEM((w, ROWS), jnp.int32),
        plgpu.SMEM((w, ROWS), jnp.int32),
        plgpu.SMEM((w, ROWS), jnp.float32),
        _fixed_barriers(3, w),
        _stream_barriers(2, stages, w),
    ]
    out_type = (
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32),
    )
    call = _launch(
        body, out_type=out_type, scratch=scratch, grid=(heads, q_len // block_q, batch),
        grid_names=("h", "q", "b"), compute_wgs=w, interpret=interpret,
    )  # fmt: skip
    return call(q, k, v, lo, hi, ranges)


# ----------------------------------------------------------------------------
# Backward: dQ per block of query rows, dK/dV per block of keys.
# ----------------------------------------------------------------------------


def _dq_body(*, block_kv, group, qk_scale, scale, compiled, compute_wgs, stages):
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    f32 = jnp.float32

    def body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, ranges_ref,
             dq_ref, *scratch):  # fmt: skip
        q_smem, do_smem, k_smem, v_smem, stats, bounds, fixed, barriers = scratch
        h, qi, b = (jax.lax.axis_index(n) for n in ("h", "q", "b"))
        kv_head = jax.lax.div(h, jnp.int32(group))
        k_stream, v_stream = _kv_streams(
            k_ref, v_ref, b, kv_head, block_kv, k_smem, v_smem, barriers
        )
        rows = lambda wg: pl.ds((qi * compute_wgs + wg) * ROWS, ROWS)

        def setup(wg):
            r = rows(wg)
            sources = [
                (q_ref.at[b, r, h], q_smem.at[wg]),
                (do_ref.at[b, r, h], do_smem.at[wg]),
                (lse_ref.at[b, h, r], stats.at[wg, 0]),
                (delta_ref.at[b, h, r], stats.at[wg, 1]),
                (lo_ref.at[b, r], bounds.at[wg, 0]),
                (hi_ref.at[b, r], bounds.at[wg, 1]),
            ]
            _load_fixed(wg, sources, fixed)
            consts = tuple(
                _rowvec(ref.at[wg, c], 1, compiled) for ref in (stats, bounds) for c in (0, 1)
            )
            dim = q_smem.shape[-1]
            return consts, _layout(jnp.zeros((ROWS, dim), f32), plgpu.Layout.WGMMA, compiled)

        def compute(wg, consts, _head, block, slot, masked, dq):
            lse, delta, lo, hi = consts
            plgpu.barrier_wait(k_stream.ready.at[slot])
            s = _mma(None, q_smem.at[wg], k_smem.at[slot], transpose_b=True, compiled=compiled)
            s = s * qk_scale
            if masked:
                s = _mask_scores(s, lo, hi, block * block_kv, 1, compiled)
            p = jnp.exp2(s - _bcast(lse, s.shape, 0))
            plgpu.barrier_wait(v_stream.ready.at[slot])
            dp = _mma(None, do_smem.at[wg], v_smem.at[slot], transpose_b=True, compiled=compiled)
            _release([v_stream], slot, fence=not compiled)
            ds = p * (dp - _bcast(delta, s.shape, 0))
            dq = _mma(dq, ds.astype(k_smem.dtype), k_smem.at[slot], compiled=compiled)
            _release([k_stream], slot, fence=not compiled)
            return dq

        def finish(wg, consts, dq):
            q_w = q_smem.at[wg]
            q_w[...] = (dq * scale).astype(q_w.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(q_w, dq_ref.at[b, rows(wg), h])
            plgpu.wait_smem_to_gmem(0)

        own = [_read_ranges(ranges_ref, b, qi * compute_wgs + w) for w in range(compute_wgs)]
        _specialized(
            compute_wgs=compute_wgs, stages=stages, own=own, heads=1,
            streams=[k_stream, v_stream], setup=setup, compute=compute, finish=finish,
            compiled=compiled,
        )  # fmt: skip

    return body


def _dkv_body(*, block_q, group, qk_scale, scale, compiled, compute_wgs, stages):
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    f32 = jnp.float32

    def body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, ranges_ref,
             dk_ref, dv_ref, *scratch):  # fmt: skip
        k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, lo_smem, hi_smem = scratch[:8]
        fixed, barriers = scratch[8:]
        g, kj, b = (jax.lax.axis_index(n) for n in ("g", "k", "b"))
        head_of = lambda i: g * group + i
        rows = lambda block: pl.ds(block * block_q, block_q)
        streams = _streams(
            [
                lambda i, j: q_ref.at[b, rows(j), head_of(i)],
                lambda i, j: do_ref.at[b, rows(j), head_of(i)],
                lambda i, j: lse_ref.at[b, head_of(i), rows(j)],
                lambda i, j: delta_ref.at[b, head_of(i), rows(j)],
                lambda i, j: lo_ref.at[b, rows(j)],
                lambda i, j: hi_ref.at[b, rows(j)],
            ],
            [q_smem, do_smem, lse_smem, delta_smem, lo_smem, hi_smem],
            barriers,
        )
        q_stream, do_stream, lse_stream, delta_stream, lo_stream, hi_stream = streams
        keys = lambda wg: pl.ds((kj * compute_wgs + wg) * ROWS, ROWS)

        def setup(wg):
            sources = [
                (k_ref.at[b, keys(wg), g], k_smem.at[wg]),
                (v_ref.at[b, keys(wg), g], v_smem.at[wg]),
            ]
            _load_fixed(wg, sources, fixed)
            dim = k_smem.shape[-1]
            zeros = _layout(jnp.zeros((ROWS, dim), f32), plgpu.Layout.WGMMA, compiled)
            first_key = (kj * compute_wgs + wg) * ROWS
            return first_key, (zeros, zeros)

        def compute(wg, first_key, _head, block, slot, masked, carry):
            dk, dv = carry
            for stream in (lse_stream, delta_stream, q_stream):
                plgpu.barrier_wait(stream.ready.at[slot])
            lse = _rowvec(lse_smem.at[slot], 0, compiled)
            delta = _rowvec(delta_smem.at[slot], 0, compiled)
            # Transposed scores: keys along rows, queries along columns.
            st = _mma(None, k_smem.at[wg], q_smem.at[slot], transpose_b=True, compiled=compiled)
            st = st * qk_scale
            for stream in (lo_stream, hi_stream):
                plgpu.barrier_wait(stream.ready.at[slot])
            if masked:
                lo = _rowvec(lo_smem.at[slot], 0, compiled)
                hi = _rowvec(hi_smem.at[slot], 0, compiled)
                st = _mask_scores(st, lo, hi, first_key, 0, compiled)
            pt = jnp.exp2(st - _bcast(lse, st.shape, 1))
            plgpu.barrier_wait(do_stream.ready.at[slot])
            dv = _mma(dv, pt.astype(do_smem.dtype), do_smem.at[slot], compiled=compiled)
            dpt = _mma(None, v_smem.at[wg], do_smem.at[slot], transpose_b=True, compiled=compiled)
            dst = pt * (dpt - _bcast(delta, st.shape, 1))
            dk = _mma(dk, dst.astype(q_smem.dtype), q_smem.at[slot], compiled=compiled)
            # The row statistics and bounds were read by ordinary loads.
            _release(streams, slot, fence=True)
            return dk, dv

        def finish(wg, first_key, carry):
            dk, dv = carry
            k_w, v_w = k_smem.at[wg], v_smem.at[wg]
            k_w[...] = (dk * scale).astype(k_w.dtype)
            v_w[...] = dv.astype(v_w.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(k_w, dk_ref.at[b, keys(wg), g])
            plgpu.copy_smem_to_gmem(v_w, dv_ref.at[b, keys(wg), g])
            plgpu.wait_smem_to_gmem(0)

        own = [_read_ranges(ranges_ref, b, kj * compute_wgs + w) for w in range(compute_wgs)]
        _specialized(
            compute_wgs=compute_wgs, stages=stages, own=own, heads=group, streams=streams,
            setup=setup, compute=compute, finish=finish, compiled=compiled,
        )  # fmt: skip

    return body


def backward(q, k, v, do, lse, delta, lo, hi, dq_ranges, kv_ranges, *, scale, dq_rows,
             dq_kv, dkv_keys, dkv_q, stages, interpret):  # fmt: skip
    """`(dq, dk, dv)` on the forward's padded inputs, its `lse`, `delta = Σ_d out·do`
    `(batch, heads, q_len)` float32 and row ranges. dQ: programs of `dq_rows` query
    rows (64 or 128) streaming key blocks of `dq_kv`, `dq_ranges =
    _q_block_ranges(lo, hi, 64, dq_kv)`. dK/dV: programs of `dkv_keys` keys (64 or
    128) streaming query blocks of `dkv_q` (64 or 128) of every head of their group,
    `kv_ranges`: per block of 64 keys, the query blocks that see it
    (`_kv_block_ranges`)."""
    plgpu, _ = mosaic_modules()
    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    compiled = interpret is None
    common = dict(
        group=group, qk_scale=scale * LOG2E, scale=scale, compiled=compiled, stages=stages
    )

    w = dq_rows // ROWS
    dq = _launch(
        _dq_body(block_kv=dq_kv, compute_wgs=w, **common),
        out_type=jax.ShapeDtypeStruct(q.shape, q.dtype),
        scratch=[
            _tile((w, ROWS, dim), q.dtype),
            _tile((w, ROWS, dim), do.dtype),
            _tile((stages, dq_kv, dim), k.dtype),
            _tile((stages, dq_kv, dim), v.dtype),
            plgpu.SMEM((w, 2, ROWS), jnp.float32),
            plgpu.SMEM((w, 2, ROWS), jnp.int32),
            _fixed_barriers(6, w),
            _stream_barriers(2, stages, w),
        ],
        grid=(heads, q_len // dq_rows, batch),
        grid_names=("h", "q", "b"),
        compute_wgs=w,
        interpret=interpret,
    )(q, k, v, do, lse, delta, lo, hi, dq_ranges)

    w = dkv_keys // ROWS
    dk, dv = _launch(
        _dkv_body(block_q=dkv_q, compute_wgs=w, **common),
        out_type=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        scratch=[
            _tile((w, ROWS, dim), k.dtype),
            _tile((w, ROWS, dim), v.dtype),
            _tile((stages, dkv_q, dim), q.dtype),
            _tile((stages, dkv_q, dim), do.dtype),
            plgpu.SMEM((stages, dkv_q), jnp.float32),
            plgpu.SMEM((stages, dkv_q), jnp.float32),
            plgpu.SMEM((stages, dkv_q), jnp.int32),
            plgpu.SMEM((stages, dkv_q), jnp.int32),
            _fixed_barriers(2, w),
            _stream_barriers(6, stages, w),
        ],
        grid=(kv_heads, kv_len // dkv_keys, batch),
        grid_names=("g", "k", "b"),
        compute_wgs=w,
        interpret=interpret,
    )(q, k, v, do, lse, delta, lo, hi, kv_ranges)
    return dq, dk, dv
