"""`eqvid.kernels.attention`: the mask semantics against a float64 NumPy loop, the
Pallas kernel (interpret mode) against the reference for every mask kind and their
combinations, gradients, bf16, block skipping, CUDA lowering, and bad input."""

import dataclasses
import warnings
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

# `eqvid.kernels` is the kernels/ folder ([tool.setuptools.package-dir]); Python finds it
# through setuptools' editable-install finder, which pyright cannot follow.
from eqvid.kernels import AttentionMask, attention
from eqvid.kernels.attention import (
    BlockSizes,
    _kv_block_ranges,
    _pallas,
    _q_block_ranges,
    row_ranges,
)

SMALL = BlockSizes(q=16, kv=16, dq_q=16, dq_kv=16, dkv_q=16, dkv_kv=16)


def numpy_attention(q, k, v, mask, scale):
    """The documented semantics, one (query, key) pair at a time, in float64."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, q_len, heads, _dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    mask = mask or AttentionMask()
    f = mask.tokens_per_frame

    def per_batch(value, b):
        return None if value is None else int(np.broadcast_to(np.asarray(value), (batch,))[b])

    out = np.zeros_like(q)
    for b in range(batch):
        offset = int(np.broadcast_to(np.asarray(mask.q_offset), (batch,))[b])
        q_length, kv_length = per_batch(mask.q_lengths, b), per_batch(mask.kv_lengths, b)
        for i in range(q_len):
            if q_length is not None and i >= q_length:
                continue
            fp = (offset + i) // f
            keys = []
            for j in range(kv_len):
                ok = kv_length is None or j < kv_length
                if mask.causal:
                    ok &= j // f <= fp
                if mask.window is not None:
                    ok &= fp - j // f < mask.window
                    if not mask.causal:
                        ok &= j // f - fp < mask.window
                if ok:
                    keys.append(j)
            if not keys:
                continue
            for h in range(heads):
                g = h // (heads // kv_heads)
                s = np.array([q[b, i, h] @ k[b, j, g] for j in keys]) * scale
                w = np.exp(s - s.max())
                w /= w.sum()
                out[b, i, h] = w @ v[b, keys, g]
    return out


def draw(rng, batch, q_len, kv_len, heads, kv_heads, dim, dtype=jnp.float32):
    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return (
        normal(batch, q_len, heads, dim),
        normal(batch, kv_len, kv_heads, dim),
        normal(batch, kv_len, kv_heads, dim),
    )


# (name, q_len, kv_len, heads, kv_heads, dim, mask): every mask kind, combinations,
# odd lengths, grouped-query heads, q_len != kv_len with an offset.
CASES = [
    ("bidirectional", 37, 37, 2, 2, 16, None),
    ("causal", 45, 45, 4, 2, 16, AttentionMask(causal=True)),
    ("frame-causal", 48, 48, 2, 1, 16, AttentionMask.frame_causal(6)),
    ("frame-causal-window", 50, 50, 2, 2, 16, AttentionMask.frame_causal(5, window=3)),
    ("window-bidirectional", 33, 33, 2, 2, 16, AttentionMask(tokens_per_frame=4, window=2)),
    ("kv-padding", 29, 41, 4, 1, 16, AttentionMask(kv_lengths=np.array([41, 7]))),
    ("q-padding", 35, 35, 2, 2, 16, AttentionMask(q_lengths=np.array([0, 20]))),
    (
        "all-combined",
        47,
        47,
        6,
        3,
        16,
        AttentionMask(
            causal=True,
            tokens_per_frame=4,
            window=4,
            q_lengths=np.array([47, 30]),
            kv_lengths=np.array([40, 18]),
        ),
    ),
    ("decode-offset", 8, 40, 2, 2, 16, AttentionMask(causal=True, tokens_per_frame=4, q_offset=28)),
    (
        "per-batch-offset",
        8,
        40,
        2,
        1,
        16,
        AttentionMask(causal=True, tokens_per_frame=4, q_offset=np.array([4, 32])),
    ),
]
IDS = [c[0] for c in CASES]


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_numpy_semantics(case):
    _, q_len, kv_len, heads, kv_heads, dim, mask = case
    rng = np.random.default_rng(0)
    q, k, v = draw(rng, 2, q_len, kv_len, heads, kv_heads, dim)
    got = attention(q, k, v, mask=mask, impl="xla")
    want = numpy_attention(q, k, v, mask, 1 / np.sqrt(dim))
    assert got.shape == q.shape and got.dtype == q.dtype
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kernel_matches_reference_with_gradients(case):
    _, q_len, kv_len, heads, kv_heads, dim, mask = case
    rng = np.random.default_rng(1)
    q, k, v = draw(rng, 2, q_len, kv_len, heads, kv_heads, dim)
    cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def run(impl_fn):
        out, vjp = jax.vjp(impl_fn, q, k, v)
        return out, vjp(cot)

    out, grads = run(lambda q, k, v: _pallas(q, k, v, mask, 0.3, SMALL, interpret=True))
    want, want_grads = run(lambda q, k, v: attention(q, k, v, mask=mask, scale=0.3, impl="xla"))
    assert rel_err(out, want) < 1e-5
    for name, g, w in zip("qkv", grads, want_grads):
        assert np.all(np.isfinite(np.asarray(g))), name
        assert rel_err(g, w) < 1e-5, name


def test_public_pallas_path_default_blocks():
    """`impl="pallas"` through the public function, default (fitted) block sizes."""
    rng = np.random.default_rng(2)
    q, k, v = draw(rng, 1, 70, 70, 2, 2, 32)
    mask = AttentionMask.frame_causal(7)
    got = attention(q, k, v, mask=mask, impl="pallas")
    want = attention(q, k, v, mask=mask, impl="xla")
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("dim", [32, 64, 128, 24, 8])
def test_head_dims_including_padded(dim):
    rng = np.random.default_rng(dim)
    q, k, v = draw(rng, 1, 20, 20, 1, 1, dim)
    mask = AttentionMask(causal=True)
    got = _pallas(q, k, v, mask, 1 / np.sqrt(dim), SMALL, interpret=True)
    assert got.shape == q.shape
    assert rel_err(got, attention(q, k, v, mask=mask, impl="xla")) < 1e-5


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_within_2e_2(dtype):
    rng = np.random.default_rng(3)
    q, k, v = draw(rng, 2, 40, 40, 4, 2, 32, dtype)
    mask = AttentionMask.frame_causal(5, window=4).with_lengths(kv_lengths=np.array([40, 33]))
    cot = jnp.asarray(rng.normal(size=q.shape), dtype)

    def run(fn):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cot)

    out, grads = run(lambda q, k, v: _pallas(q, k, v, mask, 0.2, SMALL, interpret=True))
    # The reference computes in float32 on the same (rounded) inputs.
    want, want_grads = run(lambda q, k, v: attention(q, k, v, mask=mask, scale=0.2, impl="xla"))
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert rel_err(out, want) < 2e-2
    for g, w in zip(grads, want_grads):
        assert rel_err(g, w) < 2e-2


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_fully_masked_rows_are_zero_with_zero_gradients(impl):
    rng = np.random.default_rng(4)
    q, k, v = draw(rng, 3, 20, 20, 2, 2, 16)
    # batch 0: no keys at all; batch 1: rows ≥ 5 padded; batch 2: window of a future frame.
    mask = AttentionMask(q_lengths=np.array([20, 5, 20]), kv_lengths=np.array([0, 20, 20]))

    def fn(q, k, v):
        if impl == "pallas":
            return _pallas(q, k, v, mask, 0.25, SMALL, interpret=True)
        return attention(q, k, v, mask=mask, scale=0.25, impl=impl)

    out, vjp = jax.vjp(fn, q, k, v)
    dq, dk, dv = vjp(jnp.ones_like(out))
    for x in (out, dq, dk, dv):
        assert np.all(np.isfinite(np.asarray(x)))
    assert np.all(np.asarray(out[0]) == 0) and np.all(np.asarray(out[1, 5:]) == 0)
    assert np.all(np.asarray(dq[0]) == 0) and np.all(np.asarray(dq[1, 5:]) == 0)
    assert np.all(np.asarray(dk[0]) == 0) and np.all(np.asarray(dv[0]) == 0)
    assert np.any(np.asarray(out[1, :5]) != 0) and np.any(np.asarray(out[2]) != 0)


def test_skipped_blocks_are_never_loaded():
    """Keys beyond every row's range sit in whole blocks the kernel must skip: NaN
    there cannot reach the outputs or the gradients."""
    rng = np.random.default_rng(5)
    q, k, v = draw(rng, 1, 32, 64, 2, 2, 16)
    mask = AttentionMask(kv_lengths=np.array([16]))  # keys 16…63 = three whole blocks of 16
    poisoned_k = k.at[:, 16:].set(jnp.nan)
    poisoned_v = v.at[:, 16:].set(jnp.nan)
    fn = lambda q, k, v: _pallas(q, k, v, mask, 0.25, SMALL, interpret=True)
    out, vjp = jax.vjp(fn, q, poisoned_k, poisoned_v)
    dq, dk, dv = vjp(jnp.ones_like(out))
    want = attention(q, k, v, mask=mask, scale=0.25, impl="xla")
    assert rel_err(out, want) < 1e-5
    assert np.all(np.isfinite(np.asarray(dq)))
    assert np.all(np.asarray(dk[:, 16:]) == 0) and np.all(np.asarray(dv[:, 16:]) == 0)


def test_block_ranges_of_a_causal_mask():
    lo, hi = row_ranges(AttentionMask(causal=True), 1, 64, 64)
    ranges = np.asarray(_q_block_ranges(lo, hi, 16, 16))[0]
    # Query block i visits key blocks 0…i; 0…i-1 are fully visible, block i is diagonal.
    np.testing.assert_array_equal(ranges, [[0, 0, 0, 1], [0, 0, 1, 2], [0, 0, 2, 3], [0, 0, 3, 4]])
    kv = np.asarray(_kv_block_ranges(_q_block_ranges(lo, hi, 16, 16), 4))[0]
    # Key block j is seen by query blocks j…3: j is diagonal, j+1…3 fully visible.
    np.testing.assert_array_equal(kv, [[0, 1, 4, 4], [1, 2, 4, 4], [2, 3, 4, 4], [3, 4, 4, 4]])


def test_frame_causal_visits_about_half_the_blocks():
    lo, hi = row_ranges(AttentionMask.frame_causal(64), 1, 1024, 1024)
    ranges = np.asarray(_q_block_ranges(lo, hi, 128, 64))[0]
    visited = np.sum(ranges[:, 3] - ranges[:, 0])
    masked = visited - np.sum(ranges[:, 2] - ranges[:, 1])
    total = (1024 // 128) * (1024 // 64)
    assert visited / total < 0.6
    assert masked == 8  # one boundary key block per query block (frames of 64 = blocks)


def test_traced_offset_inside_jit_matches_full_causal_rows():
    """KV-cache decoding: the offset is a loop variable, the new frame's rows equal
    the corresponding rows of full frame-causal attention."""
    rng = np.random.default_rng(6)
    q, k, v = draw(rng, 1, 40, 40, 2, 2, 16)
    full = attention(q, k, v, mask=AttentionMask.frame_causal(4), impl="xla")

    @jax.jit
    def frame(t):
        rows = jax.lax.dynamic_slice_in_dim(q, t * 4, 4, axis=1)
        mask = AttentionMask(causal=True, tokens_per_frame=4, q_offset=t * 4)
        return attention(rows, k, v, mask=mask, impl="xla")

    for t in (0, 3, 9):
        np.testing.assert_allclose(
            np.asarray(frame(t)), np.asarray(full[:, 4 * t : 4 * t + 4]), rtol=1e-5, atol=1e-6
        )


def test_kernel_under_vmap_and_jit():
    rng = np.random.default_rng(7)
    q, k, v = draw(rng, 3, 20, 20, 2, 2, 16)
    mask = AttentionMask(causal=True)

    def one(q, k, v):
        return _pallas(q[None], k[None], v[None], mask, 0.25, SMALL, interpret=True)[0]

    got = jax.jit(jax.vmap(one))(q, k, v)
    assert rel_err(got, attention(q, k, v, mask=mask, scale=0.25, impl="xla")) < 1e-5


def test_auto_is_the_reference_off_gpu_and_matches_jax_nn():
    rng = np.random.default_rng(8)
    q, k, v = draw(rng, 2, 24, 24, 4, 2, 16)
    lengths = np.array([24, 13])
    mask = AttentionMask(causal=True, kv_lengths=lengths)
    got = attention(q, k, v, mask=mask)
    reference = attention(q, k, v, mask=mask, impl="xla")
    if jax.default_backend() == "gpu":  # auto runs the kernel there: equal to tolerance
        np.testing.assert_allclose(np.asarray(got), np.asarray(reference), rtol=1e-5, atol=1e-5)
    else:  # auto is the reference itself
        np.testing.assert_array_equal(np.asarray(got), np.asarray(reference))
    want = jax.nn.dot_product_attention(
        q, k, v, is_causal=True, key_value_seq_lengths=jnp.asarray(lengths), implementation="xla"
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def lower_for_cuda(fn, *args):
    """Lower `fn` for CUDA from this (CPU) machine: Triton shape errors show up here."""
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType, use_abstract_mesh

    device = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    mesh = AbstractMesh((1,), ("x",), (AxisType.Auto,), abstract_device=device)
    with use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize(
    "dtype,dim,heads,kv_heads",
    [(jnp.bfloat16, 64, 8, 2), (jnp.bfloat16, 128, 4, 4), (jnp.float32, 48, 3, 1)],
)
def test_kernels_lower_for_cuda(dtype, dim, heads, kv_heads):
    q = jax.ShapeDtypeStruct((2, 300, heads, dim), dtype)
    k = jax.ShapeDtypeStruct((2, 300, kv_heads, dim), dtype)
    mask = AttentionMask.frame_causal(4, window=10).with_lengths(
        q_lengths=jnp.array([300, 200]), kv_lengths=jnp.array([250, 100])
    )

    def fwd_and_grad(q, k, v):
        def loss(q, k, v):
            return jnp.sum(attention(q, k, v, mask=mask, impl="pallas").astype(jnp.float32))

        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    text = lower_for_cuda(fwd_and_grad, q, k, k)
    assert text.count("xla.gpu.triton") == 3  # forward, dQ, dK/dV


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_errors_name_the_argument_and_shapes():
    q = jnp.zeros((2, 8, 4, 16))
    k = jnp.zeros((2, 8, 2, 16))
    with pytest.raises(ValueError, match=r"multiple of k/v's kv_heads \(3\)"):
        attention(q, jnp.zeros((2, 8, 3, 16)), jnp.zeros((2, 8, 3, 16)))
    with pytest.raises(ValueError, match=r"same batch size.*\(3, 8, 2, 16\)"):
        attention(q, jnp.zeros((3, 8, 2, 16)), jnp.zeros((3, 8, 2, 16)))
    with pytest.raises(ValueError, match="same head_dim"):
        attention(q, jnp.zeros((2, 8, 2, 8)), jnp.zeros((2, 8, 2, 8)))
    with pytest.raises(ValueError, match=r"`k` and `v` must have the same shape"):
        attention(q, k, jnp.zeros((2, 9, 2, 16)))
    with pytest.raises(TypeCheckError, match="parameter 'q'"):  # no batch axis
        attention(jnp.zeros((8, 4, 16)), k, k)
    with pytest.raises(ValueError, match=r"mask.kv_lengths` must lie in \[0, kv_len=8\].*9"):
        attention(q, k, k, mask=AttentionMask(kv_lengths=np.array([3, 9])))
    with pytest.raises(ValueError, match=r"mask.q_lengths` must lie in \[0, q_len=8\].*-1"):
        attention(q, k, k, mask=AttentionMask(q_lengths=np.array([-1, 2])))
    with pytest.raises(ValueError, match=r"mask.q_lengths` must have shape \(batch,\)=\(2,\)"):
        attention(q, k, k, mask=AttentionMask(q_lengths=np.array([1, 2, 3])))
    with pytest.raises(TypeCheckError, match="parameter 'impl'"):
        attention(q, k, k, impl=cast(Any, "flash"))
    with pytest.raises(ValueError, match="cuDNN has no native form for frame-block-causal"):
        attention(q, k, k, mask=AttentionMask.frame_causal(4), impl="cudnn")
    with pytest.raises(TypeError, match="kernel takes float32, bfloat16 or float16"):
        with jax.enable_x64(True):
            attention(
                q.astype(jnp.float64), k.astype(jnp.float64), k.astype(jnp.float64), impl="pallas"
            )


def test_mask_fields_are_validated():
    with pytest.raises(ValueError, match="tokens_per_frame"):
        AttentionMask(tokens_per_frame=0)
    with pytest.raises(ValueError, match="window"):
        AttentionMask(window=0)
    with pytest.raises(TypeCheckError, match="parameter 'kv_lengths'"):
        AttentionMask(kv_lengths=np.array([1.5]))
    with pytest.raises(TypeCheckError, match="parameter 'causal'"):
        AttentionMask(causal=cast(Any, "yes"))


def test_mask_is_a_pytree_with_static_structure():
    mask = AttentionMask.frame_causal(4, window=2).with_lengths(kv_lengths=jnp.array([3, 4]))
    leaves, tree = jax.tree_util.tree_flatten(mask)
    assert len(leaves) == 1  # only the lengths are traced; a Python-int offset is static
    again = jax.tree_util.tree_unflatten(tree, leaves)
    assert again.window == 2 and again.tokens_per_frame == 4 and again.q_offset == 0


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_q_offset_outside_the_keys_is_refused(impl):
    """A query offset placing real query rows before key 0 or past the last key used to
    give numbers (rows past the keys saw every key); both the reference and the kernel
    (interpreted here) refuse it, and accept offsets up to `kv_len - rows`."""
    q, k, v = draw(np.random.default_rng(9), 2, 4, 16, 1, 1, 16)
    run = lambda mask: attention(q, k, v, mask=mask, impl=impl)
    causal = AttentionMask(causal=True, tokens_per_frame=2)
    rule = r"`mask.q_offset` must place the queries inside the keys"
    with pytest.raises(ValueError, match=rule + r".*got q_offset=13 with 4 query rows"):
        run(dataclasses.replace(causal, q_offset=13))
    with pytest.raises(ValueError, match=rule + r".*got q_offset=-2 with 4 query rows"):
        run(dataclasses.replace(causal, q_offset=np.array([0, -2])))
    windowed = AttentionMask(tokens_per_frame=2, window=2, q_offset=14)
    with pytest.raises(ValueError, match=rule):
        run(windowed)
    # Within the keys: the last position, and padded query rows past the keys.
    assert run(dataclasses.replace(causal, q_offset=12)).shape == q.shape
    padded = causal.with_lengths(q_lengths=np.array([4, 2]))
    assert run(dataclasses.replace(padded, q_offset=np.array([12, 14]))).shape == q.shape
    # Without positions (bidirectional, offset 0) more queries than keys is cross-attention.
    long_q = jnp.concatenate([q, q, q, q, q], axis=1)
    assert attention(long_q, k, v, impl=impl).shape == long_q.shape


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_traced_lengths_and_offset_outside_the_sequences_give_nan(impl):
    """Under jit the lengths and the offset are traced: negative lengths, lengths past
    the sequence and an offset outside the keys used to return numbers; now the result
    is NaN (raising would need a host callback), and valid values still run."""
    q, k, v = draw(np.random.default_rng(10), 2, 4, 16, 1, 1, 16)

    def mask_of(offset, q_lengths, kv_lengths):
        return AttentionMask(
            causal=True, q_offset=offset, q_lengths=q_lengths, kv_lengths=kv_lengths
        )

    @jax.jit
    def run(offset, q_lengths, kv_lengths):
        return attention(q, k, v, mask=mask_of(offset, q_lengths, kv_lengths), impl=impl)

    ok = (jnp.array([12, 0]), jnp.array([4, 4]), jnp.array([16, 5]))
    want = attention(q, k, v, mask=mask_of(*(np.asarray(a) for a in ok)), impl="xla")
    np.testing.assert_allclose(np.asarray(run(*ok)), np.asarray(want), rtol=1e-5, atol=1e-6)
    offset, q_lengths, kv_lengths = ok
    bad = [
        (offset, q_lengths, jnp.array([-1, 5])),  # kv_lengths below 0
        (offset, q_lengths, jnp.array([17, 5])),  # kv_lengths past kv_len
        (offset, jnp.array([4, -3]), kv_lengths),  # q_lengths below 0
        (jnp.array([13, 0]), q_lengths, kv_lengths),  # queries past the last key
        (jnp.array([0, -1]), q_lengths, kv_lengths),  # queries before key 0
    ]
    for args in bad:
        assert np.isnan(np.asarray(run(*args))).all(), args


def test_dispatch_never_breaks_without_the_triton_backend(monkeypatch):
    """A jax without Pallas's Triton backend (simulated): a forced `"triton"` raises,
    naming what the machine has; a forced `"pallas"` runs on Mosaic GPU where it
    takes the inputs and raises where nothing can; `"auto"` on an older GPU falls
    back to the reference with one warning naming why."""
    import importlib

    backends = importlib.import_module("eqvid.kernels._kernel_backends")
    attention_module = importlib.import_module("eqvid.kernels.attention")
    real = backends.missing
    reason = "jax 0.13 has no Pallas Triton backend (removed after 0.11)"
    monkeypatch.setattr(backends, "missing", lambda b: reason if b == "triton" else real(b))
    q = jnp.ones((1, 8, 2, 16), jnp.float32)
    with pytest.raises(
        ValueError, match=r"impl='triton' cannot run here: jax 0.13 .*has 'mosaic', 'xla', 'cudnn'"
    ):
        attention(q, q, q, impl="triton")
    with pytest.raises(ValueError, match=r"impl='pallas': no Pallas backend .*float32 as TF32"):
        attention(q, q, q, impl="pallas")
    with pytest.warns(RuntimeWarning, match="running on 'mosaic' because triton: jax 0.13"):
        assert attention_module._resolve("pallas", jnp.bfloat16) == "mosaic"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # as on an A100
    monkeypatch.setattr(backends, "gpu_compute_capability", lambda: (8, 0))
    with pytest.warns(RuntimeWarning, match="attention: running on 'xla' because triton: jax 0.13"):
        assert attention_module._resolve("auto", jnp.bfloat16) == "xla"


def test_dispatch_on_hopper_routes_float32_to_triton(monkeypatch):
    """On a (simulated) Hopper GPU `"auto"` takes Mosaic GPU for bfloat16 and float16,
    Triton for float32 with one warning saying why; a forced `"mosaic"` refuses
    float32 and head_dim > 128, naming the reason."""
    import importlib

    backends = importlib.import_module("eqvid.kernels._kernel_backends")
    attention_module = importlib.import_module("eqvid.kernels.attention")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(backends, "gpu_compute_capability", lambda: (9, 0))
    monkeypatch.setattr(attention_module, "_probe", lambda backend: None)  # lowers fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert attention_module._resolve("auto", jnp.bfloat16) == "mosaic"
        assert attention_module._resolve("auto", jnp.float16, 128) == "mosaic"
    with pytest.warns(RuntimeWarning, match="running on 'triton' because mosaic: .*TF32"):
        assert attention_module._resolve("auto", jnp.float32) == "triton"
    with pytest.warns(RuntimeWarning, match="because mosaic: .*head_dim ≤ 128 .*got 256"):
        assert attention_module._resolve("auto", jnp.bfloat16, 256) == "triton"
    q = jnp.ones((1, 8, 2, 16), jnp.float32)
    with pytest.raises(ValueError, match=r"impl='mosaic' cannot run here: .*TF32"):
        attention(q, q, q, impl="mosaic")
