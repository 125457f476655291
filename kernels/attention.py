"""Fused masked attention (flash-style) with block skipping.

This file holds the mask description (`AttentionMask`), the pure-JAX reference,
the Pallas Triton kernels (forward, dQ, dK/dV), the `custom_vjp` wiring shared with
the Mosaic GPU kernels (`_attention_mosaic.py`) and the dispatcher `attention`.

Every mask eqvid needs is, per query row, one *contiguous range of keys*
`[lo, hi)`: causal (`hi = q + 1`), frame-block-causal with `F` tokens per frame
(`hi = (q // F + 1)·F`), a window of the last `W` frames (`lo = (q // F − W + 1)·F`),
key padding (`hi ≤ kv_length`) and query padding (an empty range). The mask is
therefore turned into two small integer arrays `lo, hi` of shape
`(batch, q_len)`; the reference builds its dense boolean mask from them, and the
kernels derive from them, per block of queries, the range of key blocks to
visit and the sub-range that is fully visible. Key blocks outside the range are
never loaded; element-wise masking happens only in the boundary blocks.

Rows whose range is empty (padded queries, or a window that sees nothing)
return zeros and get zero gradients, never NaN.
"""

import dataclasses
import functools
import math
from typing import Literal, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Float, Integer

from . import _attention_mosaic, _kernel_backends

AttentionImpl = Literal["auto", "pallas", "mosaic", "triton", "xla", "cudnn"]
_IMPLS = ("auto", "pallas", "mosaic", "triton", "xla", "cudnn")
_LOG2E = math.log2(math.e)


# ----------------------------------------------------------------------------
# The mask description.
# ----------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may attend to, as structure rather than a dense matrix.

    Query `i` sits at position `p = q_offset + i` of the key sequence (so with
    `q_len == kv_len` and `q_offset = 0` queries and keys line up; a decoder
    with a KV cache passes the position of its first new token). Positions are
    grouped into frames of `tokens_per_frame` tokens: `frame(p) = p // tokens_per_frame`.
    Key `j` is visible to query `i` of batch element `b` when all of these hold:

    - `causal`: `frame(j) ≤ frame(p)`: every token sees all tokens of its own
      and earlier frames (*frame-block-causal*; with one token per frame this is
      the usual causal mask);
    - `window = W`: `frame(p) − frame(j) < W` (the last `W` frames, its own
      included) and, when not causal, also `frame(j) − frame(p) < W`;
    - `kv_lengths`: `j < kv_lengths[b]` (key padding);
    - `q_lengths`: `i < q_lengths[b]`; padded query rows see nothing and return zeros.

    With none of these set every query sees every key (bidirectional).

    **Fields:**

    - `causal`: frame-block-causal masking (`bool`, static).
    - `tokens_per_frame`: tokens per frame, ≥ 1 (static).
    - `window`: number of frames visible, ≥ 1, or `None` for no window (static).
    - `q_lengths`, `kv_lengths`: integer arrays of shape `(batch,)` (or scalars,
      meaning the same for every batch element), or `None`.
    - `q_offset`: the position of the first query: a Python `int` (static), or
      an integer array of shape `()` or `(batch,)` (traced; e.g. the step of a
      decoding loop).

    `attention` refuses lengths outside `[0, q_len]` / `[0, kv_len]` and an offset
    that places a real query row outside the keys (`q_offset < 0` or `q_offset +
    q_lengths > kv_len`, `q_len` standing in for absent `q_lengths`) whenever the
    offset matters (a causal or windowed mask, or an offset other than the static
    default 0): known values with a `ValueError`; traced ones make the result NaN
    (raising from inside a compiled program would need a host callback: a device
    sync on every call, and an abort on a multi-device mesh).
    """

    causal: bool = False
    tokens_per_frame: int = 1
    window: int | None = None
    q_lengths: Integer[ArrayLike, "*batch"] | None = None
    kv_lengths: Integer[ArrayLike, "*batch"] | None = None
    q_offset: int | Integer[ArrayLike, "*batch"] = 0

    def __post_init__(self):
        if not isinstance(self.causal, (bool, np.bool_)):
            raise TypeError(f"AttentionMask: `causal` must be a bool, got {self.causal!r}.")
        if not isinstance(self.tokens_per_frame, (int, np.integer)) or self.tokens_per_frame < 1:
            raise ValueError(
                f"AttentionMask: `tokens_per_frame` must be an int ≥ 1, got {self.tokens_per_frame!r}."
            )
        if self.window is not None and (
            not isinstance(self.window, (int, np.integer)) or self.window < 1
        ):
            raise ValueError(
                f"AttentionMask: `window` must be None or an int ≥ 1 (frames), got {self.window!r}."
            )
        for name in ("q_lengths", "kv_lengths", "q_offset"):
            value = getattr(self, name)
            if value is None or (isinstance(value, (int, np.integer)) and name == "q_offset"):
                continue
            if isinstance(value, (bool, float)) or not jnp.issubdtype(
                jnp.asarray(value).dtype, jnp.integer
            ):
                raise TypeError(
                    f"AttentionMask: `{name}` must be integer, got {type(value).__name__} "
                    f"{getattr(value, 'dtype', '')}."
                )
            if jnp.ndim(value) > 1:
                raise ValueError(
                    f"AttentionMask: `{name}` must have shape (batch,) or (), got shape "
                    f"{jnp.shape(value)}."
                )

    @classmethod
    def frame_causal(cls, tokens_per_frame: int, window: int | None = None) -> "AttentionMask":
        """Every token sees all tokens of its own and earlier frames (optionally only
        the last `window` frames)."""
        return cls(causal=True, tokens_per_frame=tokens_per_frame, window=window)

    def with_lengths(self, q_lengths=None, kv_lengths=None) -> "AttentionMask":
        """A copy with query and/or key padding lengths set."""
        return dataclasses.replace(
            self,
            q_lengths=self.q_lengths if q_lengths is None else q_lengths,
            kv_lengths=self.kv_lengths if kv_lengths is None else kv_lengths,
        )

    @property
    def is_dense(self) -> bool:
        """True when every query sees every key (no mask at all)."""
        return (
            not self.causal
            and self.window is None
            and self.q_lengths is None
            and self.kv_lengths is None
        )

    # A Python-int offset stays static (it decides which fast paths apply); an
    # array offset is traced.
    def tree_flatten(self):
        offset = self.q_offset
        if isinstance(offset, (int, np.integer)):
            static_offset, traced_offset = int(offset), None
        else:
            static_offset, traced_offset = None, offset
        children = (self.q_lengths, self.kv_lengths, traced_offset)
        aux = (self.causal, self.tokens_per_frame, self.window, static_offset)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        mask = object.__new__(cls)
        causal, tokens_per_frame, window, offset = aux
        q_lengths, kv_lengths, traced_offset = children
        values = dict(
            causal=causal,
            tokens_per_frame=tokens_per_frame,
            window=window,
            q_lengths=q_lengths,
            kv_lengths=kv_lengths,
            q_offset=offset if offset is not None else traced_offset,
        )
        for name, value in values.items():
            object.__setattr__(mask, name, value)
        return mask


def _is_concrete(x) -> bool:
    return not isinstance(x, Tracer)


def _check_mask(
    mask: AttentionMask, batch: int, q_len: int, kv_len: int
) -> list[tuple[Array, str]]:
    """Check `mask` against the shapes. Known values (Python ints, NumPy arrays, JAX
    arrays outside `jit`) raise a `ValueError` here; for traced ones (under `jit`,
    `vmap`, `scan`) the returned `(bad, message)` pairs are checked when the computation
    runs (`_nan_if_bad`).

    - `q_lengths` must lie in `[0, q_len]`, `kv_lengths` in `[0, kv_len]`;
    - `q_offset` must place every real query row inside the keys: `0 ≤ q_offset` and
      `q_offset + rows ≤ kv_len`, `rows` being `q_lengths` (or `q_len`), checked
      whenever the offset matters: a causal or windowed mask, or an offset other than
      the static default 0 (a bidirectional mask with `q_offset = 0`, e.g.
      cross-attention to a shorter context, places no query anywhere).
    """
    traced: list[tuple[Array, str]] = []
    for name, limit, axis in (("q_lengths", q_len, "q_len"), ("kv_lengths", kv_len, "kv_len")):
        value = getattr(mask, name)
        if value is None:
            continue
        shape = jnp.shape(value)
        if shape not in ((), (batch,)):
            raise ValueError(
                f"attention: `mask.{name}` must have shape (batch,)=({batch},) or (), got {shape}."
            )
        if _is_concrete(value):
            v = np.asarray(value)
            if v.size and (v.min() < 0 or v.max() > limit):
                raise ValueError(
                    f"attention: `mask.{name}` must lie in [0, {axis}={limit}], got values "
                    f"from {v.min()} to {v.max()}."
                )
        else:
            v = jnp.asarray(value)
            traced.append(
                (
                    jnp.any((v < 0) | (v > limit)),
                    f"attention: `mask.{name}` must lie in [0, {axis}={limit}]; a traced value "
                    "(checked at run time) lies outside it.",
                )
            )
    offset = mask.q_offset
    static_offset = isinstance(offset, (int, np.integer))
    if not static_offset and jnp.shape(offset) not in ((), (batch,)):
        raise ValueError(
            f"attention: `mask.q_offset` must be an int or have shape () or (batch,)=({batch},), "
            f"got shape {jnp.shape(offset)}."
        )
    positional = mask.causal or mask.window is not None
    if not positional and static_offset and offset == 0:
        return traced
    if static_offset and 0 <= offset <= kv_len - q_len:
        return traced  # every row, padded or not, lies inside the keys
    rows = q_len if mask.q_lengths is None else mask.q_lengths
    rows_name = f"q_len={q_len}" if mask.q_lengths is None else "mask.q_lengths"
    rule = (
        f"attention: `mask.q_offset` must place the queries inside the keys, "
        f"0 <= q_offset and q_offset + {rows_name} <= kv_len={kv_len}"
    )
    if _is_concrete(offset) and _is_concrete(rows):
        off = np.broadcast_to(np.asarray(offset), (batch,)).astype(np.int64)
        n = np.broadcast_to(np.asarray(rows), (batch,)).astype(np.int64)
        bad = (off < 0) | (off + n > kv_len)
        if bad.any():
            b = int(np.argmax(bad))
            where = (
                f": positions {off[b]} to {off[b] + n[b] - 1}, keys 0 to {kv_len - 1}"
                if n[b] > 0
                else ""
            )
            raise ValueError(
                f"{rule}; got q_offset={off[b]} with {n[b]} query rows (batch element {b}){where}."
            )
    else:
        off, n = jnp.asarray(offset), jnp.asarray(rows)
        traced.append(
            (
                jnp.any((off < 0) | (off + n > kv_len)),
                f"{rule}; a traced value (checked at run time) does not.",
            )
        )
    return traced


def _nan_if_bad(out: Array, checks: list[tuple[Array, str]]) -> Array:
    """`out`, or NaN everywhere when a run-time check of `_check_mask` fails. Traced
    values cannot raise without a host callback in the program (a device sync on
    every call, and an abort instead of an error on a multi-device mesh), so a bad
    traced length or offset makes the result NaN, never plausible numbers; `where`
    fuses into the output, at no measurable cost."""
    if not checks:
        return out
    bad = jnp.any(jnp.stack([b for b, _ in checks]))
    return jnp.where(bad, jnp.asarray(jnp.nan, out.dtype), out)


def row_ranges(
    mask: AttentionMask | None, batch: int, q_len: int, kv_len: int, padded_q_len: int | None = None
):
    """Per query row, the visible keys `[lo, hi)` as two int32 arrays `(batch, q_len)`.

    Empty ranges are normalised to `lo = hi = 0`. Rows from `q_len` to
    `padded_q_len` (padding added by a kernel) are empty.
    """
    padded_q_len = q_len if padded_q_len is None else padded_q_len
    rows = jnp.arange(padded_q_len, dtype=jnp.int32)[None, :]
    mask = AttentionMask() if mask is None else mask
    lo = jnp.zeros((batch, padded_q_len), jnp.int32)
    hi = jnp.full((batch, padded_q_len), kv_len, jnp.int32)
    if mask.causal or mask.window is not None:
        f = mask.tokens_per_frame
        offset = jnp.asarray(mask.q_offset, jnp.int32).reshape(-1, 1)
        frame = jnp.floor_divide(rows + offset, f)
        if mask.causal:
            hi = jnp.minimum(hi, (frame + 1) * f)
        if mask.window is not None:
            lo = jnp.maximum(lo, (frame - mask.window + 1) * f)
            if not mask.causal:
                hi = jnp.minimum(hi, (frame + mask.window) * f)
    if mask.kv_lengths is not None:
        hi = jnp.minimum(hi, jnp.asarray(mask.kv_lengths, jnp.int32).reshape(-1, 1))
    valid = rows < q_len
    if mask.q_lengths is not None:
        valid = valid & (rows < jnp.asarray(mask.q_lengths, jnp.int32).reshape(-1, 1))
    valid = valid & (hi > lo)
    return jnp.where(valid, lo, 0), jnp.where(valid, hi, 0)


# ----------------------------------------------------------------------------
# The reference: dense scores, a boolean mask built from the row ranges, a
# softmax that gives empty rows zeros. Computes in (at least) float32.
# ----------------------------------------------------------------------------


def _reference(q, k, v, lo, hi, scale):
    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    acc = jnp.float64 if q.dtype == jnp.float64 else jnp.float32  # at least float32
    hp = jax.lax.Precision.HIGHEST
    qg = q.astype(acc).reshape(batch, q_len, kv_heads, heads // kv_heads, dim)
    s = jnp.einsum("bqkgd,bskd->bkgqs", qg, k.astype(acc), precision=hp) * scale
    cols = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]
    allowed = (cols >= lo[..., None]) & (cols < hi[..., None])  # (batch, q_len, kv_len)
    s = jnp.where(allowed[:, None, None], s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    w = p / jnp.where(denom > 0, denom, 1)
    out = jnp.einsum("bkgqs,bskd->bqkgd", w, v.astype(acc), precision=hp)
    return out.reshape(batch, q_len, heads, dim).astype(q.dtype)


# ----------------------------------------------------------------------------
# Block ranges for the kernels.
# ----------------------------------------------------------------------------


def _q_block_ranges(lo, hi, block_q: int, block_k: int):
    """For each block of `block_q` query rows: `[first, full_lo, full_hi, last]` in
    units of key blocks, shape `(batch, q_blocks, 4)`.

    Key blocks `[first, last)` hold every visible key of the block's rows;
    `[full_lo, full_hi) ⊆ [first, last)` are visible to every non-empty row, so
    they need no element-wise mask. Blocks of empty rows visit nothing.
    """
    batch, length = lo.shape
    lo = lo.reshape(batch, length // block_q, block_q)
    hi = hi.reshape(batch, length // block_q, block_q)
    valid = hi > lo
    big = jnp.iinfo(jnp.int32).max
    any_valid = jnp.any(valid, axis=-1)
    min_lo = jnp.min(jnp.where(valid, lo, big), axis=-1)
    max_lo = jnp.max(jnp.where(valid, lo, 0), axis=-1)
    min_hi = jnp.min(jnp.where(valid, hi, big), axis=-1)
    max_hi = jnp.max(jnp.where(valid, hi, 0), axis=-1)
    first = jnp.where(any_valid, min_lo // block_k, 0)
    last = jnp.where(any_valid, -(-max_hi // block_k), 0)
    full_lo = jnp.clip(-(-max_lo // block_k), first, last)
    full_hi = jnp.clip(jnp.where(any_valid, min_hi // block_k, 0), full_lo, last)
    return jnp.stack([first, full_lo, full_hi, last], axis=-1).astype(jnp.int32)


def _kv_block_ranges(q_ranges, kv_blocks: int):
    """Transpose `_q_block_ranges` for the dK/dV kernel: for each key block, the
    query blocks `[first, full_lo, full_hi, last]` that see it, shape
    `(batch, kv_blocks, 4)`. The fully visible query blocks form a contiguous run
    in every mask `AttentionMask` describes; if they did not, all visited blocks
    would be masked element-wise (still correct)."""
    first, full_lo, full_hi, last = (q_ranges[..., c, None] for c in range(4))
    j = jnp.arange(kv_blocks, dtype=jnp.int32)[None, None, :]
    i = jnp.arange(q_ranges.shape[1], dtype=jnp.int32)[None, :, None]
    visited = (first <= j) & (j < last)
    full = (full_lo <= j) & (j < full_hi)
    big = jnp.iinfo(jnp.int32).max
    any_visit = jnp.any(visited, axis=1)
    q_first = jnp.where(any_visit, jnp.min(jnp.where(visited, i, big), axis=1), 0)
    q_last = jnp.where(any_visit, jnp.max(jnp.where(visited, i + 1, 0), axis=1), 0)
    n_full = jnp.sum(full, axis=1)
    f_first = jnp.min(jnp.where(full, i, big), axis=1)
    f_last = jnp.max(jnp.where(full, i + 1, 0), axis=1)
    contiguous = (n_full > 0) & (f_last - f_first == n_full)
    q_full_lo = jnp.where(contiguous, f_first, q_last)
    q_full_hi = jnp.where(contiguous, f_last, q_last)
    return jnp.stack([q_first, q_full_lo, q_full_hi, q_last], axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------
# The Pallas kernels (Triton backend).
#
# Scores are kept in the log2 domain (`log2(e)·scale` folded into one factor) so
# the softmax uses exp2; the forward saves `lse = m + log2(l)` per row (+inf for
# empty rows, which makes every recomputed probability exactly 0 in the
# backward pass). fp32 inputs use full-precision (IEEE) dots; bf16/fp16 inputs
# use tensor-core dots accumulating in fp32.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the three kernels: powers of two ≥ 16 for the Triton kernels
    (`num_warps`, `num_stages`: their launch parameters). For the Mosaic GPU kernels:
    the rows a program owns, 64 or 128 (one or two compute warpgroups): `q` (forward),
    `dq_q` (dQ), `dkv_kv` (dK/dV, keys); the blocks streamed to them: `kv`, `dq_kv`
    (keys: 64, 128 or 256), `dkv_q` (queries: 64 or 128); and `num_stages` streamed
    blocks in flight."""

    q: int = 128
    kv: int = 64
    dq_q: int = 64
    dq_kv: int = 64
    dkv_q: int = 64
    dkv_kv: int = 64
    num_warps: int | None = None  # None: 4 for head_dim ≤ 64, else 8
    num_stages: int = 2

    def fitted(self, q_len: int, kv_len: int, smallest: int = 16) -> "BlockSizes":
        """Shrink blocks for short sequences (a block never exceeds the padded length,
        nor goes below `smallest`)."""
        qcap = max(smallest, _next_pow2(q_len))
        kcap = max(smallest, _next_pow2(kv_len))
        return dataclasses.replace(
            self,
            q=min(self.q, qcap),
            kv=min(self.kv, kcap),
            dq_q=min(self.dq_q, qcap),
            dq_kv=min(self.dq_kv, kcap),
            dkv_q=min(self.dkv_q, qcap),
            dkv_kv=min(self.dkv_kv, kcap),
        )

    @property
    def q_unit(self) -> int:
        return max(self.q, self.dq_q, self.dkv_q)

    @property
    def kv_unit(self) -> int:
        return max(self.kv, self.dq_kv, self.dkv_kv)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _dot(a, b, *, trans_a=False, trans_b=False):
    """`a @ b` (optionally transposed) accumulating in fp32; exact for fp32 inputs."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _visible(lo, hi, start, size):
    """Element mask `(rows, size)` for keys `start … start+size-1`."""
    cols = start + jnp.arange(size, dtype=jnp.int32)
    return (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])


def _three_ranges(ranges_ref, body, carry):
    """Run `body(masked)` over the masked, full and masked block ranges."""
    first, full_lo, full_hi, last = (ranges_ref[c] for c in range(4))
    carry = jax.lax.fori_loop(first, full_lo, body(True), carry)
    carry = jax.lax.fori_loop(full_lo, full_hi, body(False), carry)
    return jax.lax.fori_loop(full_hi, last, body(True), carry)


def _fwd_kernel(
    q_ref, k_ref, v_ref, lo_ref, hi_ref, ranges_ref, o_ref, lse_ref, *, qk_scale, block_kv
):
    from jax.experimental import pallas as pl

    q = q_ref[...]
    lo, hi = lo_ref[...], hi_ref[...]
    rows, dim = q.shape

    def body(masked):
        def step(j, carry):
            acc, m, denom = carry
            start = j * block_kv
            k = k_ref[pl.ds(start, block_kv), :]
            v = v_ref[pl.ds(start, block_kv), :]
            s = _dot(q, k, trans_b=True) * qk_scale
            if masked:
                s = jnp.where(_visible(lo, hi, start, block_kv), s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s - m_new[:, None])
            denom = alpha * denom + jnp.sum(p, axis=1)
            acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
            return acc, m_new, denom

        return step

    # A finite floor for the running max: masked scores are -inf, so rows that
    # have seen nothing keep m = floor, p = 0 and alpha = 1 (no inf - inf).
    init = (
        jnp.zeros((rows, dim), jnp.float32),
        jnp.full((rows,), -1e30, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )
    acc, m, denom = _three_ranges(ranges_ref, body, init)
    valid = hi > lo
    safe_l = jnp.where(denom > 0, denom, 1.0)
    o_ref[...] = jnp.where(valid[:, None], acc / safe_l[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(valid, m + jnp.log2(safe_l), jnp.inf)


def _dq_kernel(
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    lo_ref,
    hi_ref,
    ranges_ref,
    dq_ref,
    *,
    qk_scale,
    scale,
    block_kv,
):
    from jax.experimental import pallas as pl

    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    lo, hi = lo_ref[...], hi_ref[...]

    def body(masked):
        def step(j, dq):
            start = j * block_kv
            k = k_ref[pl.ds(start, block_kv), :]
            v = v_ref[pl.ds(start, block_kv), :]
            s = _dot(q, k, trans_b=True) * qk_scale
            if masked:
                s = jnp.where(_visible(lo, hi, start, block_kv), s, -jnp.inf)
            p = jnp.exp2(s - lse[:, None])
            dp = _dot(do, v, trans_b=True)
            ds = p * (dp - delta[:, None])
            return dq + _dot(ds.astype(k.dtype), k)

        return step

    dq = _three_ranges(ranges_ref, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    lo_ref,
    hi_ref,
    ranges_ref,
    dk_ref,
    dv_ref,
    *,
    qk_scale,
    scale,
    block_q,
    group,
):
    from jax.experimental import pallas as pl

    k, v = k_ref[...], v_ref[...]
    cols, dim = k.shape
    start_k = pl.program_id(0) * cols

    def head(h, carry):
        def body(masked):
            def step(i, carry):
                dk, dv = carry
                rows = pl.ds(i * block_q, block_q)
                q = q_ref[rows, h, :]
                do = do_ref[rows, h, :]
                lse = lse_ref[h, rows]
                delta = delta_ref[h, rows]
                s = _dot(q, k, trans_b=True) * qk_scale
                if masked:
                    ok = _visible(lo_ref[rows], hi_ref[rows], start_k, cols)
                    s = jnp.where(ok, s, -jnp.inf)
                p = jnp.exp2(s - lse[:, None])
                dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
                dp = _dot(do, v, trans_b=True)
                ds = p * (dp - delta[:, None])
                dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
                return dk, dv

            return step

        return _three_ranges(ranges_ref, body, carry)

    zeros = jnp.zeros((cols, dim), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, group, head, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _compiler_params(blocks: BlockSizes, dim: int):
    from jax.experimental.pallas import triton as pltriton

    warps = blocks.num_warps or (4 if dim <= 64 else 8)
    return pltriton.CompilerParams(num_warps=warps, num_stages=blocks.num_stages)


def _platform_call(launch, interpret, *operands):
    """Compiled on GPUs, interpreted elsewhere (decided at lowering, so a CPU machine
    can still lower the kernels for CUDA), unless `interpret` is given."""
    if interpret is not None:
        return launch(interpret, *operands)
    return jax.lax.platform_dependent(
        *operands,
        cuda=functools.partial(launch, False),
        rocm=functools.partial(launch, False),
        default=functools.partial(launch, True),
    )


def _kernel_forward(q, k, v, lo, hi, scale, blocks, interpret):
    from jax.experimental import pallas as pl

    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    nq = q_len // blocks.q
    ranges = _q_block_ranges(lo, hi, blocks.q, blocks.kv)

    # Query blocks run heaviest-first (the last blocks of a causal mask see the most keys).
    def qi(i):
        return nq - 1 - i

    def launch(interpret, q, k, v, lo, hi, ranges):
        return pl.pallas_call(
            functools.partial(_fwd_kernel, qk_scale=scale * _LOG2E, block_kv=blocks.kv),
            grid=(nq, batch, heads),
            in_specs=[
                pl.BlockSpec((None, blocks.q, None, dim), lambda i, b, h: (b, qi(i), h, 0)),
                pl.BlockSpec((None, kv_len, None, dim), lambda i, b, h: (b, 0, h // group, 0)),
                pl.BlockSpec((None, kv_len, None, dim), lambda i, b, h: (b, 0, h // group, 0)),
                pl.BlockSpec((None, blocks.q), lambda i, b, h: (b, qi(i))),
                pl.BlockSpec((None, blocks.q), lambda i, b, h: (b, qi(i))),
                pl.BlockSpec((None, None, 4), lambda i, b, h: (b, qi(i), 0)),
            ],
            out_specs=[
                pl.BlockSpec((None, blocks.q, None, dim), lambda i, b, h: (b, qi(i), h, 0)),
                pl.BlockSpec((None, None, blocks.q), lambda i, b, h: (b, h, qi(i))),
            ],
            out_shape=[
                jax.ShapeDtypeStruct(q.shape, q.dtype),
                jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32),
            ],
            compiler_params=_compiler_params(blocks, dim),
            interpret=interpret,
            name="eqvid_attention_fwd",
        )(q, k, v, lo, hi, ranges)

    out, lse = _platform_call(launch, interpret, q, k, v, lo, hi, ranges)
    return out, lse


def _kernel_backward(q, k, v, lo, hi, out, lse, do, scale, blocks, interpret):
    from jax.experimental import pallas as pl

    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
    params = _compiler_params(blocks, dim)

    dq_ranges = _q_block_ranges(lo, hi, blocks.dq_q, blocks.dq_kv)
    nq = q_len // blocks.dq_q

    def qi(i):
        return nq - 1 - i

    def launch_dq(interpret, q, k, v, do, lse, delta, lo, hi, ranges):
        row_block = pl.BlockSpec((None, blocks.dq_q, None, dim), lambda i, b, h: (b, qi(i), h, 0))
        kv_full = pl.BlockSpec((None, kv_len, None, dim), lambda i, b, h: (b, 0, h // group, 0))
        stat = pl.BlockSpec((None, None, blocks.dq_q), lambda i, b, h: (b, h, qi(i)))
        row = pl.BlockSpec((None, blocks.dq_q), lambda i, b, h: (b, qi(i)))
        return pl.pallas_call(
            functools.partial(
                _dq_kernel, qk_scale=scale * _LOG2E, scale=scale, block_kv=blocks.dq_kv
            ),
            grid=(nq, batch, heads),
            in_specs=[
                row_block,
                kv_full,
                kv_full,
                row_block,
                stat,
                stat,
                row,
                row,
                pl.BlockSpec((None, None, 4), lambda i, b, h: (b, qi(i), 0)),
            ],
            out_specs=row_block,
            out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
            compiler_params=params,
            interpret=interpret,
            name="eqvid_attention_dq",
        )(q, k, v, do, lse, delta, lo, hi, ranges)

    nk = kv_len // blocks.dkv_kv
    kv_ranges = _kv_block_ranges(_q_block_ranges(lo, hi, blocks.dkv_q, blocks.dkv_kv), nk)

    def launch_dkv(interpret, q, k, v, do, lse, delta, lo, hi, ranges):
        q_full = pl.BlockSpec((None, q_len, group, dim), lambda j, b, g: (b, 0, g, 0))
        kv_block = pl.BlockSpec((None, blocks.dkv_kv, None, dim), lambda j, b, g: (b, j, g, 0))
        stat = pl.BlockSpec((None, group, q_len), lambda j, b, g: (b, g, 0))
        row = pl.BlockSpec((None, q_len), lambda j, b, g: (b, 0))
        return pl.pallas_call(
            functools.partial(
                _dkv_kernel, qk_scale=scale * _LOG2E, scale=scale, block_q=blocks.dkv_q, group=group
            ),
            grid=(nk, batch, kv_heads),
            in_specs=[
                q_full,
                kv_block,
                kv_block,
                q_full,
                stat,
                stat,
                row,
                row,
                pl.BlockSpec((None, None, 4), lambda j, b, g: (b, j, 0)),
            ],
            out_specs=[kv_block, kv_block],
            out_shape=[
                jax.ShapeDtypeStruct(k.shape, k.dtype),
                jax.ShapeDtypeStruct(v.shape, v.dtype),
            ],
            compiler_params=params,
            interpret=interpret,
            name="eqvid_attention_dkv",
        )(q, k, v, do, lse, delta, lo, hi, ranges)

    dq = _platform_call(launch_dq, interpret, q, k, v, do, lse, delta, lo, hi, dq_ranges)
    dk, dv = _platform_call(launch_dkv, interpret, q, k, v, do, lse, delta, lo, hi, kv_ranges)
    return dq, dk, dv


def _mosaic_forward(q, k, v, lo, hi, scale, blocks, interpret):
    ranges = _q_block_ranges(lo, hi, _attention_mosaic.ROWS, blocks.kv)
    return _attention_mosaic.forward(
        q, k, v, lo, hi, ranges, scale=scale, block_q=blocks.q, block_kv=blocks.kv,
        stages=blocks.num_stages, interpret=interpret,
    )  # fmt: skip


def _mosaic_backward(q, k, v, lo, hi, out, lse, do, scale, blocks, interpret):
    rows = _attention_mosaic.ROWS
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
    dq_ranges = _q_block_ranges(lo, hi, rows, blocks.dq_kv)
    kv_ranges = _kv_block_ranges(_q_block_ranges(lo, hi, blocks.dkv_q, rows), k.shape[1] // rows)
    return _attention_mosaic.backward(
        q, k, v, do, lse, delta, lo, hi, dq_ranges, kv_ranges, scale=scale,
        dq_rows=blocks.dq_q, dq_kv=blocks.dq_kv, dkv_keys=blocks.dkv_kv, dkv_q=blocks.dkv_q,
        stages=blocks.num_stages, interpret=interpret,
    )  # fmt: skip


_FORWARD = {"triton": _kernel_forward, "mosaic": _mosaic_forward}
_BACKWARD = {"triton": _kernel_backward, "mosaic": _mosaic_backward}


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, lo, hi, scale, blocks, interpret, backend):
    return _FORWARD[backend](q, k, v, lo, hi, scale, blocks, interpret)[0]


def _flash_fwd(q, k, v, lo, hi, scale, blocks, interpret, backend):
    out, lse = _FORWARD[backend](q, k, v, lo, hi, scale, blocks, interpret)
    return out, (q, k, v, lo, hi, out, lse)


def _flash_bwd(scale, blocks, interpret, backend, res, do):
    q, k, v, lo, hi, out, lse = res
    dq, dk, dv = _BACKWARD[backend](q, k, v, lo, hi, out, lse, do, scale, blocks, interpret)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_axis(x, axis, size):
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def _pallas(
    q, k, v, mask, scale, blocks: BlockSizes | None = None, interpret=None, backend="triton"
):
    """The kernel path on `backend` (`"triton"` or `"mosaic"`): pad lengths to whole
    blocks and the head dim (Triton: a power of two ≥ 16; Mosaic GPU: a multiple of
    64) with zeros, which change neither scores nor outputs; run; slice back.
    `interpret`: Triton: a bool (None: compiled on GPUs, interpreted elsewhere);
    Mosaic GPU: `InterpretGPUParams` (None: compiled on GPUs, interpreted elsewhere)."""
    batch, q_len, _heads, dim = q.shape
    kv_len = k.shape[1]
    if backend == "mosaic":
        why = _mosaic_cannot(q.dtype, dim)
        if why is not None:
            raise TypeError(f"attention(impl='mosaic'): {why}.")
        dim_pad = -(-dim // 64) * 64
        blocks = _mosaic_blocks(blocks, dim_pad, q_len, kv_len)
        interpret = _mosaic_interpret() if interpret is None else interpret
    else:
        if q.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
            raise TypeError(
                f"attention(impl={backend!r}): the kernel takes float32, bfloat16 or float16 "
                f"inputs, got {q.dtype}; use impl='xla' for other dtypes."
            )
        dim_pad = max(16, _next_pow2(dim))
        if blocks is None:
            blocks = BlockSizes()
            if q.dtype.itemsize == 4 and dim_pad >= 128:
                # fp32 tiles at d ≥ 128: halve the query block to stay within shared memory.
                blocks = dataclasses.replace(blocks, q=64)
        blocks = blocks.fitted(q_len, kv_len)
    q_pad = -(-q_len // blocks.q_unit) * blocks.q_unit
    kv_pad = -(-kv_len // blocks.kv_unit) * blocks.kv_unit
    lo, hi = row_ranges(mask, batch, q_len, kv_len, padded_q_len=q_pad)
    qp = _pad_axis(_pad_axis(q, 1, q_pad), 3, dim_pad)
    kp = _pad_axis(_pad_axis(k, 1, kv_pad), 3, dim_pad)
    vp = _pad_axis(_pad_axis(v, 1, kv_pad), 3, dim_pad)
    out = cast(Array, _flash(qp, kp, vp, lo, hi, float(scale), blocks, interpret, backend))
    return out[:, :q_len, :, :dim]


def _mosaic_interpret():
    """Mosaic GPU's interpreter off GPUs, `None` (compiled) on them (a seam for tests)."""
    return _kernel_backends.mosaic_interpret()


_MOSAIC_DTYPES = (jnp.bfloat16, jnp.float16)
_MOSAIC_MAX_DIM = 128
"""The dK/dV kernel keeps two fp32 accumulators of 64 × head_dim per warpgroup in
registers: beyond 128 they would spill (and serialise the warpgroup MMAs)."""


def _mosaic_cannot(dtype, dim: int) -> str | None:
    """Why the Mosaic GPU kernels cannot take these inputs (`None`: they can)."""
    if dtype == jnp.float32:
        return (
            "the Mosaic GPU kernels take bfloat16 or float16: their tensor-core products "
            "would read float32 as TF32 (10-bit mantissa), so float32 runs on Triton "
            "(full-precision dots) or XLA"
        )
    if dtype not in _MOSAIC_DTYPES:
        return f"the Mosaic GPU kernels take bfloat16 or float16, got {jnp.dtype(dtype)}"
    if dim > _MOSAIC_MAX_DIM:
        return (
            f"the Mosaic GPU kernels take head_dim ≤ {_MOSAIC_MAX_DIM} (their dK/dV "
            f"accumulators live in registers), got {dim}"
        )
    return None


def _mosaic_blocks(blocks: BlockSizes | None, dim: int, q_len: int, kv_len: int) -> BlockSizes:
    """The Mosaic GPU kernels' tiles, checked if given (including block sizes whose
    score tiles would spill registers). Defaults: two compute warpgroups per program
    (128 query rows) forward and in dQ, streaming key blocks of 128 forward and 64 in
    dQ; dK/dV programs of 128 keys at head_dim ≤ 64, else 64, streaming query blocks
    of 64; two blocks in flight. Blocks no larger than the sequences need."""
    rows = _attention_mosaic.ROWS
    if blocks is None:
        blocks = BlockSizes(
            q=2 * rows,
            kv=128,
            dq_q=2 * rows,
            dq_kv=64,
            dkv_q=rows,
            # dK and dV accumulate in registers: two warpgroups only while they fit.
            dkv_kv=2 * rows if dim <= 64 else rows,
        )
    meaning = {
        "q": "query rows per forward program: one or two compute warpgroups",
        "dq_q": "query rows per dQ program: one or two compute warpgroups",
        "dkv_kv": "keys per dK/dV program: one or two compute warpgroups",
        "dkv_q": "query rows per block streamed to the dK/dV programs",
    }
    for name, what in meaning.items():
        if getattr(blocks, name) not in (rows, 2 * rows):
            raise ValueError(
                f"attention(impl='mosaic'): BlockSizes.{name} must be {rows} or {2 * rows} "
                f"({what}), got {getattr(blocks, name)}."
            )
    for name in ("kv", "dq_kv"):
        size = getattr(blocks, name)
        if size not in (64, 128, 256):
            raise ValueError(
                f"attention(impl='mosaic'): BlockSizes.{name} must be 64, 128 or 256 (keys "
                f"per streamed block), got {size}."
            )
    if blocks.num_stages < 2:
        raise ValueError(
            f"attention(impl='mosaic'): BlockSizes.num_stages must be ≥ 2 (blocks in "
            f"flight), got {blocks.num_stages}."
        )
    # Score tiles of 64 × block live in registers beside the accumulators.
    for name, widest in (("kv", 256 if dim <= 64 else 128), ("dq_kv", 256 if dim <= 64 else 128),
                         ("dkv_q", 128 if dim <= 64 else 64)):  # fmt: skip
        if getattr(blocks, name) > widest:
            raise ValueError(
                f"attention(impl='mosaic'): BlockSizes.{name} = {getattr(blocks, name)} "
                f"would spill registers at head_dim {dim} (padded); at most {widest}."
            )
    return blocks.fitted(q_len, kv_len, smallest=rows)


# ----------------------------------------------------------------------------
# cuDNN through `jax.nn.dot_product_attention`, for the masks it has natively.
# ----------------------------------------------------------------------------


def _cudnn_supports(mask: AttentionMask, q_len: int, kv_len: int) -> str | None:
    """`None` if cuDNN can run `mask` natively, else the reason it cannot."""
    if mask.window is not None:
        return "a frame window"
    if mask.causal and mask.tokens_per_frame != 1:
        return "frame-block-causal masking with tokens_per_frame > 1"
    if mask.causal and not (isinstance(mask.q_offset, (int, np.integer)) and mask.q_offset == 0):
        return "a query offset"
    if mask.causal and q_len != kv_len:
        return "causal masking with q_len != kv_len"
    return None


def _cudnn(q, k, v, mask, scale):
    batch, q_len = q.shape[:2]

    def lengths(value):
        if value is None:
            return None
        return jnp.broadcast_to(jnp.asarray(value, jnp.int32), (batch,))

    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=mask.causal,
        query_seq_lengths=lengths(mask.q_lengths),
        key_value_seq_lengths=lengths(mask.kv_lengths),
        implementation="cudnn",
    )
    if mask.q_lengths is None and mask.kv_lengths is None:
        return out
    lo, hi = row_ranges(mask, batch, q_len, k.shape[1])
    return jnp.where((hi > lo)[:, :, None, None], out, 0).astype(out.dtype)


# ----------------------------------------------------------------------------
# Public entry point.
# ----------------------------------------------------------------------------


def _check_inputs(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(
                f"attention: `{name}` must have shape (batch, length, heads, head_dim), got "
                f"shape {x.shape}."
            )
    if k.shape != v.shape:
        raise ValueError(
            f"attention: `k` and `v` must have the same shape, got k {k.shape} and v {v.shape}."
        )
    if q.shape[0] != k.shape[0]:
        raise ValueError(
            f"attention: `q` and `k` must have the same batch size, got q "
            f"{q.shape} and k {k.shape}."
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(
            f"attention: `q` and `k` must have the same head_dim, got q {q.shape} and k {k.shape}."
        )
    heads, kv_heads = q.shape[2], k.shape[2]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"attention: q's heads ({heads}) must be a multiple of k/v's kv_heads ({kv_heads}) "
            f"(grouped-query attention); got q {q.shape} and k {k.shape}."
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"attention: `q`, `k` and `v` must share one dtype, got {q.dtype}, "
            f"{k.dtype} and {v.dtype}."
        )
    if not jnp.issubdtype(q.dtype, jnp.floating):
        raise TypeError(f"attention: inputs must be floating point, got {q.dtype}.")


_REFERENCES = ("xla", "cudnn")
_KERNELS = ("mosaic", "triton")


def _unsupported(dtype, dim: int) -> dict[str, str]:
    """The kernel backends that cannot take these inputs, and why."""
    why = _mosaic_cannot(dtype, dim)
    return {} if why is None else {"mosaic": why}


def _resolve(impl: str, dtype, dim: int = 64) -> str:
    """The implementation to run: a kernel backend (`"mosaic"`, `"triton"`) or a
    reference (`"xla"`, `"cudnn"`). `"auto"` takes a kernel on GPUs for
    float32/bfloat16/float16 (Mosaic GPU on Hopper or newer for bfloat16/float16,
    else Triton while the installed jax has it), else the XLA reference, with one
    warning naming why when a preferred kernel cannot run; `"pallas"` takes the
    kernel that suits the machine; a forced kernel that cannot run raises, naming
    what this machine has."""
    if impl not in _IMPLS:
        raise ValueError(f"attention: `impl` must be one of {_IMPLS}, got {impl!r}.")
    if impl in _REFERENCES:
        return impl
    unsupported = _unsupported(dtype, dim)
    if impl in _KERNELS:
        _kernel_backends.require(
            impl, "attention", kernels=_KERNELS, references=_REFERENCES,
            unsupported=unsupported,
        )  # fmt: skip
        return impl
    if impl == "auto":
        kernel_dtype = dtype in (jnp.float32, jnp.bfloat16, jnp.float16)
        if jax.default_backend() != "gpu" or not kernel_dtype:
            return "xla"
    return _kernel_backends.choose(
        "attention",
        kernels=_KERNELS,
        fallback="xla" if impl == "auto" else None,
        probe=_probe,
        unsupported=unsupported,
        references=_REFERENCES,
    )


def _probe(backend: str) -> None:
    """Compile the attention kernels' forward and backward passes on `backend` for
    this machine on a tiny problem (raises if they cannot): bfloat16, 128 tokens in
    frames of 16, two heads sharing one key/value head, head_dim 64."""
    q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 128, 1, 64), jnp.bfloat16)
    mask = AttentionMask.frame_causal(16)

    def loss(q, k, v):
        out = _pallas(q, k, v, mask, 0.125, backend=backend)
        return jnp.sum(out.astype(jnp.float32))

    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()


def attention(
    q: Float[Array, "batch q_len heads head_dim"],
    # Underscored names: consistency across arguments is checked by
    # `_check_inputs`, whose errors name the argument and both shapes.
    k: Float[Array, "_batch kv_len kv_heads _head_dim"],
    v: Float[Array, "_batch _kv_len _kv_heads _head_dim"],
    *,
    mask: AttentionMask | None = None,
    scale: float | None = None,
    impl: AttentionImpl = "auto",
) -> Float[Array, "batch q_len heads head_dim"]:
    """Multi-head scaled dot-product attention with a structured mask.

    `softmax(scale · q kᵀ + mask) v` per head, where query head `h` uses key/value
    head `h // (heads // kv_heads)` (grouped-query attention; `heads == kv_heads`
    is ordinary multi-head attention).

    **Arguments:**

    - `q`: queries `(batch, q_len, heads, head_dim)`.
    - `k`, `v`: keys and values `(batch, kv_len, kv_heads, head_dim)`; `heads`
      must be a multiple of `kv_heads`.
    - `mask`: an `AttentionMask` (causal / frame-block-causal, window, padding
      lengths, query offset), or `None` for bidirectional attention.
    - `scale`: the score scale; `1/sqrt(head_dim)` when `None`.
    - `impl`: `"mosaic"` (the fused Pallas Mosaic GPU kernels: Hopper or newer,
      bfloat16/float16, head_dim ≤ 128), `"triton"` (the fused Pallas Triton
      kernels: float32/bfloat16/float16, while the installed jax has the Triton
      backend), `"pallas"` (whichever of the two suits the machine); kernels are
      compiled on GPUs and interpreted elsewhere (slow). `"xla"` (the dense
      pure-JAX reference, O(L²) memory), `"cudnn"`
      (`jax.nn.dot_product_attention(implementation="cudnn")`, GPU only, for masks
      cuDNN has natively: none, causal with one token per frame, padding), or
      `"auto"`: on GPUs a kernel for float32/bfloat16/float16 inputs (Mosaic GPU on
      Hopper or newer where it takes the inputs, else Triton), the reference
      otherwise; a preferred kernel that cannot run is skipped with one warning
      naming why.

    **Returns:** `(batch, q_len, heads, head_dim)` in the dtype of `q`. Query rows
    that see no key (padding, or an empty window) are zeros, with zero gradients.

    **Raises:** `ValueError`/`TypeError` for inconsistent shapes or dtypes, and for
    mask lengths or a query offset outside the sequences (see `AttentionMask`). The
    same values, traced (under `jit`), make the whole result NaN.

    Differentiable in `q`, `k` and `v` with every implementation; the kernel has
    its own backward kernels (dQ and dK/dV) with the same block skipping.
    """
    _check_inputs(q, k, v)
    batch, q_len, _, dim = q.shape
    kv_len = k.shape[1]
    mask = AttentionMask() if mask is None else mask
    checks = _check_mask(mask, batch, q_len, kv_len)
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    resolved = _resolve(impl, q.dtype, dim)
    if resolved in _KERNELS:
        return _nan_if_bad(_pallas(q, k, v, mask, scale, backend=resolved), checks)
    if resolved == "cudnn":
        reason = _cudnn_supports(mask, q_len, kv_len)
        if reason is not None:
            raise ValueError(
                f"attention(impl='cudnn'): cuDNN has no native form for {reason}; use "
                "impl='pallas' (block-skipping kernels) or impl='xla'."
            )
        return _nan_if_bad(_cudnn(q, k, v, mask, scale), checks)
    lo, hi = row_ranges(mask, batch, q_len, kv_len)
    return _nan_if_bad(_reference(q, k, v, lo, hi, scale), checks)
