"""`eqvid.MultiheadAttention`: against a hand-written einsum attention, the kernel
path under vmap, cross-attention with padding, the KV-cache building blocks,
`process_heads`, gradients and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqvid
from eqvid import AttentionMask, MultiheadAttention


def einsum_attention(mha, x, context, causal=False, kv_length=None):
    """Plain multi-head attention from the layer's weights, no eqvid kernel."""
    q = jnp.einsum("lc,chd->lhd", x, mha.query_weight)
    k = jnp.einsum("lc,chd->lhd", context, mha.key_weight)
    v = jnp.einsum("lc,chd->lhd", context, mha.value_weight)
    group = mha.num_heads // mha.num_kv_heads
    k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
    s = jnp.einsum("qhd,khd->hqk", q, k, precision="highest") / np.sqrt(mha.head_dim)
    allowed = jnp.ones(s.shape[1:], bool)
    if causal:
        allowed &= jnp.tril(allowed)
    if kv_length is not None:
        allowed &= jnp.arange(s.shape[-1])[None, :] < kv_length
    w = jax.nn.softmax(jnp.where(allowed, s, -jnp.inf), axis=-1)
    o = jnp.einsum("hqk,khd->qhd", w, v, precision="highest")
    return jnp.einsum("qhd,hdc->qc", o, mha.output_weight, precision="highest")


def test_self_attention_matches_einsum(getkey):
    mha = MultiheadAttention(32, num_heads=4, num_kv_heads=2, key=getkey())
    assert mha.query_weight.shape == (32, 4, 8) and mha.key_weight.shape == (32, 2, 8)
    x = jax.random.normal(getkey(), (3, 11, 32))
    y = mha(x, mask=AttentionMask(causal=True))
    assert y.shape == (3, 11, 32)
    for b in range(3):
        np.testing.assert_allclose(
            np.asarray(y[b]),
            np.asarray(einsum_attention(mha, x[b], x[b], causal=True)),
            rtol=1e-5,
            atol=1e-5,
        )


def test_leading_axes_and_no_batch(getkey):
    mha = MultiheadAttention(16, num_heads=2, key=getkey())
    x = jax.random.normal(getkey(), (2, 3, 5, 16))
    y = mha(x)
    assert y.shape == (2, 3, 5, 16)
    np.testing.assert_allclose(np.asarray(mha(x[1, 2])), np.asarray(y[1, 2]), rtol=1e-5, atol=1e-6)


def test_cross_attention_with_key_padding(getkey):
    mha = MultiheadAttention(
        16, num_heads=4, num_kv_heads=1, kv_dim=24, out_dim=8, head_dim=4, key=getkey()
    )
    x = jax.random.normal(getkey(), (2, 6, 16))
    context = jax.random.normal(getkey(), (2, 9, 24))
    lengths = jnp.array([9, 4])
    y = mha(x, context, mask=AttentionMask(kv_lengths=lengths))
    assert y.shape == (2, 6, 8)
    for b in range(2):
        want = einsum_attention(mha, x[b], context[b], kv_length=int(lengths[b]))
        np.testing.assert_allclose(np.asarray(y[b]), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_kernel_path_under_vmap_matches_reference(getkey):
    key = getkey()
    fast = MultiheadAttention(32, num_heads=2, impl="pallas", key=key)
    ref = MultiheadAttention(32, num_heads=2, impl="xla", key=key)
    x = jax.random.normal(getkey(), (2, 20, 32))
    mask = AttentionMask.frame_causal(5)
    got = jax.vmap(lambda x: fast(x, mask=mask))(x)
    want = ref(x, mask=mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_kv_cache_blocks_equal_call(getkey):
    """Project keys/values once, attend frame by frame with an offset: the cache path."""
    mha = MultiheadAttention(16, num_heads=2, key=getkey())
    x = jax.random.normal(getkey(), (1, 12, 16))
    full = mha(x, mask=AttentionMask.frame_causal(3))
    k, v = mha.keys_values(x)
    for t in range(4):
        q = mha.queries(x[:, 3 * t : 3 * t + 3])
        y = mha.attend(q, k, v, mask=AttentionMask(causal=True, tokens_per_frame=3, q_offset=3 * t))
        np.testing.assert_allclose(
            np.asarray(y), np.asarray(full[:, 3 * t : 3 * t + 3]), rtol=1e-5, atol=1e-6
        )


def test_cache_offset_past_the_keys_is_refused(getkey):
    """A decode step whose offset runs past the projected keys used to return numbers
    (the rows past the keys saw every key); now it raises for a Python int, and a
    traced offset (a decoding loop under jit) gives NaN."""
    mha = MultiheadAttention(16, num_heads=2, key=getkey())
    x = jax.random.normal(getkey(), (1, 12, 16))
    k, v = mha.keys_values(x)
    q = mha.queries(x[:, :3])
    with pytest.raises(ValueError, match=r"`mask.q_offset` must place the queries inside"):
        mha.attend(q, k, v, mask=AttentionMask(causal=True, tokens_per_frame=3, q_offset=12))

    @jax.jit
    def step(t):
        return mha.attend(q, k, v, mask=AttentionMask(causal=True, tokens_per_frame=3, q_offset=t))

    assert step(jnp.int32(9)).shape == (1, 3, 16)
    assert np.isnan(np.asarray(step(jnp.int32(12)))).all()


def test_process_heads_is_applied(getkey):
    mha = MultiheadAttention(16, num_heads=2, use_bias=True, key=getkey())
    x = jax.random.normal(getkey(), (4, 16))
    calls = []

    def flip_keys(q, k, v):
        calls.append((q.shape, k.shape, v.shape))
        return q, -k, v

    y = mha(x, process_heads=flip_keys)
    assert calls == [((4, 2, 8), (4, 2, 8), (4, 2, 8))]
    q = mha.queries(x)
    k, v = mha.keys_values(x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(mha.attend(q, -k, v)), rtol=1e-6)
    assert not np.allclose(np.asarray(y), np.asarray(mha(x)))


def test_gradients_are_finite_and_bf16_runs(getkey):
    mha = MultiheadAttention(16, num_heads=2, key=getkey())
    x = jax.random.normal(getkey(), (2, 7, 16))
    mask = AttentionMask(causal=True, q_lengths=jnp.array([7, 3]))

    @eqx.filter_grad
    def grads(model):
        return jnp.sum(model(x, mask=mask) ** 2)

    g = grads(mha)
    for leaf in jax.tree_util.tree_leaves(g):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert np.any(np.asarray(g.query_weight) != 0)
    y = mha(x.astype(jnp.bfloat16), mask=mask)
    assert y.dtype == jnp.bfloat16 and np.all(np.asarray(y[1, 3:], np.float32) == 0)


def test_bad_configuration_and_input(getkey):
    with pytest.raises(
        ValueError, match=r"num_heads \(6\) must be a positive multiple of num_kv_heads \(4\)"
    ):
        MultiheadAttention(24, num_heads=6, num_kv_heads=4, key=getkey())
    with pytest.raises(ValueError, match=r"dim \(10\) is not divisible by num_heads \(4\)"):
        MultiheadAttention(10, num_heads=4, key=getkey())
    mha = MultiheadAttention(16, num_heads=2, key=getkey())
    with pytest.raises(
        ValueError, match=r"`x` must have shape \(\*batch, length, 16\), got \(3, 8\)"
    ):
        mha.queries(jnp.zeros((3, 8)))
    assert eqvid.kernels.AttentionMask is AttentionMask


def test_projection_roles_put_heads_on_the_model_axis(getkey):
    """Every projection names its axes, with the heads axis (key/value heads too) the
    one split over the `model` mesh axis; the output bias stays replicated."""
    mha = MultiheadAttention(16, num_heads=4, num_kv_heads=2, use_bias=True, key=getkey())
    roles = eqvid.nn.parameter_roles(mha)
    for name in ("query_weight", "key_weight", "value_weight"):
        role = getattr(roles, name)
        assert role.axes == ("in", "heads", "head_dim") and role.model_axis == "heads"
        assert getattr(mha, name).shape[role.model_dim()] == (4 if name == "query_weight" else 2)
    assert roles.output_weight.axes == ("heads", "head_dim", "out")
    assert roles.output_weight.model_dim() == 0
    for name in ("query_bias", "key_bias", "value_bias"):
        assert getattr(roles, name).model_dim() == 0
    assert roles.output_bias.axes == ("out",) and roles.output_bias.model_dim() is None
    assert all(r.weight_decay and r.group == "default" for r in jax.tree.leaves(roles))
