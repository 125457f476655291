"""`CausalTimeAttention` (the SlotTransformer baseline's time mixer): the parallel pass
restated in NumPy, parallel == split through the cache == step by step (values and
gradients), and sequences too long for its cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.nn import CausalTimeAttention


def _reference(layer: CausalTimeAttention, u: np.ndarray) -> np.ndarray:
    """Sinusoidal positions added, per-head causal softmax attention, output projection."""
    t, d = u.shape
    half = d // 2
    freqs = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
    angles = np.arange(t)[:, None] * freqs[None, :half]
    h = u + np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    a = layer.attention
    w = lambda x: np.asarray(x, np.float64)
    q = np.einsum("tc,chd->htd", h, w(a.query_weight)) + w(a.query_bias)[:, None]
    k = np.einsum("tc,chd->htd", h, w(a.key_weight)) + w(a.key_bias)[:, None]
    v = np.einsum("tc,chd->htd", h, w(a.value_weight)) + w(a.value_bias)[:, None]
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((t, t), bool))[None], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = p @ v  # (heads, time, head_dim)
    return np.einsum("htd,hdc->tc", o, w(a.output_weight)) + w(a.output_bias)


def _layer(max_len=8):
    return CausalTimeAttention(16, 4, max_len=max_len, impl="xla", key=jax.random.key(0))


def test_the_parallel_pass_is_causal_attention_over_positions():
    layer = _layer()
    u = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    y, state = layer(jnp.asarray(u))
    np.testing.assert_allclose(y, _reference(layer, u.astype(np.float64)), rtol=1e-4, atol=1e-5)
    assert int(state.length) == 7 and state.keys.shape == (8, 4, 4)
    # Causal: changing the last step changes nothing before it.
    u2 = u.copy()
    u2[-1] += 1.0
    np.testing.assert_allclose(layer(jnp.asarray(u2))[0][:-1], y[:-1], rtol=1e-6, atol=1e-6)


def test_parallel_equals_split_equals_step_by_step_with_gradients():
    layer = _layer()
    u = jax.random.normal(jax.random.key(2), (6, 16))
    y, last = layer(u)
    first, mid = layer(u[:2])
    rest, last_split = layer(u[2:], mid)
    np.testing.assert_allclose(jnp.concatenate([first, rest]), y, rtol=1e-5, atol=1e-5)
    _, stepped = jax.lax.scan(lambda s, x: layer.step(s, x), layer.init_state(), u)
    np.testing.assert_allclose(stepped, y, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(last_split)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    def parallel(u):
        return jnp.sum(jnp.sin(layer(u)[0]))

    def streamed(u):
        return jnp.sum(
            jnp.sin(jax.lax.scan(lambda s, x: layer.step(s, x), layer.init_state(), u)[1])
        )

    np.testing.assert_allclose(jax.grad(parallel)(u), jax.grad(streamed)(u), rtol=1e-4, atol=1e-5)


def test_sequences_too_long_for_the_cache():
    layer = _layer(max_len=4)
    with pytest.raises(ValueError, match="5 steps does not fit `max_len` = 4"):
        layer(jnp.zeros((5, 16)))
    _, state = layer(jnp.ones((3, 16)))
    with pytest.raises(ValueError, match="3 cached steps and 2 new ones do not fit `max_len` = 4"):
        layer(jnp.ones((2, 16)), state)  # 3 + 2 > 4, known here
    # Traced (a step under jit), the output becomes NaN rather than silently wrong.
    full = jax.jit(lambda s, x: layer.step(s, x))(layer(jnp.ones((4, 16)))[1], jnp.ones(16))[1]
    assert np.all(np.isnan(full))
    with pytest.raises(ValueError, match=r"`u` must be \(16,\)"):
        layer.step(layer.init_state(), jnp.ones(8))
    with pytest.raises(ValueError, match="`num_heads` must divide `d_model` = 16; got 3"):
        CausalTimeAttention(16, 3, key=jax.random.key(0))
