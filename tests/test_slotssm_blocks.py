"""SlotSSM's blocks: the read-in (standard and inverted) and the slot self-attention
restated in NumPy from the original's code, a block's composition restated from its
parts, the stack's parameter count (CLEVRER example), whole video == frame by frame
(with a selective SSM or attention over time, one slot count or one per block), the
regrouping between blocks of different counts, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.nn import SlotReadIn, SlotRegroup, SlotSelfAttention, SlotSSM, SlotSSMBlock


def _linear(layer, x):
    return x @ np.asarray(layer.weight) + np.asarray(layer.bias)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def read_in_reference(layer: SlotReadIn, slots, tokens):
    """`module.py` MultiHeadAttention.forward with one batch element."""
    h = layer.num_heads
    k, n, d = slots.shape[0], tokens.shape[0], slots.shape[1]
    dh = d // h
    q = _linear(layer.proj_q, slots).reshape(k, h, dh).transpose(1, 0, 2) * dh**-0.5
    kk = _linear(layer.proj_k, tokens).reshape(n, h, dh).transpose(1, 0, 2)
    v = _linear(layer.proj_v, tokens).reshape(n, h, dh).transpose(1, 0, 2)
    attn = q @ kk.transpose(0, 2, 1)  # (H, K, N)
    if layer.inverted:
        attn = _softmax(attn.reshape(h * k, n), axis=0).reshape(h, k, n)  # joint heads × slots
        shown = attn
        attn = attn / (attn.sum(-1, keepdims=True) + 1e-5)
    else:
        attn = shown = _softmax(attn, axis=-1)
    out = (attn @ v).transpose(1, 0, 2).reshape(k, d)
    return _linear(layer.proj_o, out), shown


@pytest.mark.parametrize("inverted,heads", [(True, 1), (True, 2), (False, 2)])
def test_read_in_matches_the_originals_attention(inverted, heads):
    layer = SlotReadIn(8, heads, inverted=inverted, key=jax.random.key(0))
    slots = jax.random.normal(jax.random.key(1), (3, 8))
    tokens = jax.random.normal(jax.random.key(2), (5, 8))
    out, weights = layer(slots, tokens)
    want_out, want_w = read_in_reference(layer, np.asarray(slots), np.asarray(tokens))
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, want_w, rtol=1e-5, atol=1e-6)
    axis = (0, 1) if inverted else 2  # what sums to one: slots compete, or tokens do
    np.testing.assert_allclose(np.sum(weights, axis=axis), 1.0, rtol=1e-5)


def test_slot_self_attention_uses_flash_attns_fused_layout():
    layer = SlotSelfAttention(8, 2, impl="xla", key=jax.random.key(3))
    slots = np.asarray(jax.random.normal(jax.random.key(4), (4, 8)))
    qkv = _linear(layer.Wqkv, slots).reshape(4, 3, 2, 4)  # "... (three h d)"
    q, k, v = (qkv[:, i].transpose(1, 0, 2) for i in range(3))
    attn = _softmax(q @ k.transpose(0, 2, 1) / 2.0, axis=-1)
    want = _linear(layer.out_proj, (attn @ v).transpose(1, 0, 2).reshape(4, 8))
    np.testing.assert_allclose(layer(jnp.asarray(slots)), want, rtol=1e-5, atol=1e-5)


def test_a_block_is_read_in_then_time_then_space_each_pre_norm_with_a_residual():
    block = SlotSSMBlock(
        16, input_dim=12, space_heads=2, d_state=4, headdim=8, ffn=True, key=jax.random.key(5)
    )
    slots = jax.random.normal(jax.random.key(6), (5, 3, 16))
    tokens = jax.random.normal(jax.random.key(7), (5, 7, 12))
    got, _, weights = block(slots, tokens)

    ref = block.cross_attn_ref_norm(block.input_proj(tokens))
    read = jax.vmap(block.cross_attn)(block.cross_attn_input_norm(slots), ref)[0]
    s1 = slots + read
    mixed = jnp.stack(
        [block.time_mixer(block.time_mixer_norm(s1[:, i]))[0] for i in range(3)], axis=1
    )
    s2 = s1 + mixed
    s3 = s2 + jax.vmap(block.space_attn)(block.space_attn_norm(s2))
    assert block.ffn_in is not None and block.ffn_out is not None and block.ffn_norm is not None
    s4 = s3 + block.ffn_out(jax.nn.gelu(block.ffn_in(block.ffn_norm(s3)), approximate=False))
    np.testing.assert_allclose(got, s4, rtol=1e-5, atol=1e-5)
    assert weights.shape == (5, 1, 3, 7)


def test_the_clevrer_stack_has_the_originals_parameter_count():
    model = eqx.filter_eval_shape(lambda: SlotSSM(key=jax.random.key(0)))
    count = sum(x.size for x in jax.tree.leaves(model) if hasattr(x, "size"))
    assert count == 4_238_944  # 4 blocks × 1,059,352 + 6 × 256 initial slots
    mamba1 = eqx.filter_eval_shape(lambda: SlotSSM(time_mixer="mamba1", key=jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(mamba1) if hasattr(x, "size")) == 4_817_408


def test_a_video_in_parallel_equals_frame_by_frame():
    model = SlotSSM(
        num_slots=3, dim=16, input_dim=12, num_blocks=2, space_heads=2, d_state=4, headdim=8,
        attention_impl="xla", key=jax.random.key(8),
    )  # fmt: skip
    tokens = jax.random.normal(jax.random.key(9), (6, 5, 12))
    slots, state, weights = model(tokens)
    assert slots.shape == (6, 3, 16) and [w.shape for w in weights] == [(6, 1, 3, 5)] * 2

    def one(s, x):
        s, y, w = model.step(s, x)
        return s, (y, w)

    step_state, (step_slots, step_w) = jax.lax.scan(one, model.init_state(), tokens)
    np.testing.assert_allclose(step_slots, slots, rtol=1e-4, atol=1e-5)
    for a, b in zip(step_w, weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(step_state), jax.tree.leaves(state)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The first frames in parallel, the rest step by step from their state.
    first, mid, _ = model(tokens[:4])
    _, (rest, _) = jax.lax.scan(one, mid, tokens[4:])
    np.testing.assert_allclose(jnp.concatenate([first, rest]), slots, rtol=1e-4, atol=1e-5)


def test_bad_input_is_refused_by_name():
    model = SlotSSM(num_slots=2, dim=8, num_blocks=1, d_state=2, headdim=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`tokens` must be \(time, tokens, input_dim = 8\)"):
        model(jnp.zeros((3, 4, 6)))
    with pytest.raises(ValueError, match=r"`tokens` must be \(tokens, input_dim = 8\)"):
        model.step(model.init_state(), jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="num_heads"):
        SlotReadIn(8, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="slot count must be ≥ 1"):
        SlotSSM(num_slots=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"one per block \(2\); got 3 counts \(4, 4, 2\)"):
        SlotSSM(num_slots=(4, 4, 2), num_blocks=2, key=jax.random.key(0))
    # A streaming state from another configuration (other slot counts) is named.
    other = SlotSSM(num_slots=3, dim=8, num_blocks=1, d_state=2, headdim=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"slots per block \(2,\).*got \[\(3, 3, 20\)"):
        model.step(other.init_state(), jnp.zeros((4, 8)))
    with pytest.raises(ValueError, match="does not belong to this stack"):
        model(jnp.zeros((3, 4, 8)), other.init_state())


@pytest.mark.parametrize("time_mixer", ["mamba2", "attention"])
def test_slot_counts_per_block_regroup_and_stream(time_mixer):
    model = SlotSSM(
        num_slots=(3, 3, 5), dim=16, input_dim=12, num_blocks=3, space_heads=2, d_state=4,
        headdim=8, time_mixer=time_mixer, time_heads=2, max_frames=8, attention_impl="xla",
        key=jax.random.key(10),
    )  # fmt: skip
    assert model.regroup[0] is None and model.regroup[1] is None
    regroup = model.regroup[2]
    assert isinstance(regroup, SlotRegroup) and regroup.init_slots.shape == (5, 16)
    tokens = jax.random.normal(jax.random.key(11), (6, 7, 12))
    slots, _, weights = model(tokens)
    assert slots.shape == (6, 5, 16) and model.num_slots == 5
    assert [w.shape for w in weights] == [(6, 1, 3, 7), (6, 1, 3, 7), (6, 1, 5, 7)]

    # Block 3 starts from its own slots, which read in block 2's output.
    s2 = model.blocks[0](jnp.broadcast_to(model.init_slots, (6, 3, 16)), tokens)[0]
    s2 = model.blocks[1](s2, tokens)[0]
    init = np.asarray(regroup.init_slots)
    queries = np.asarray(regroup.input_norm(regroup.init_slots))
    new = []
    for t in range(6):
        out, _ = read_in_reference(regroup.read_in, queries, np.asarray(regroup.ref_norm(s2[t])))
        new.append(init + out)
    want = model.blocks[2](jnp.asarray(np.stack(new)), tokens)[0]
    np.testing.assert_allclose(slots, want, rtol=1e-4, atol=1e-5)

    def one(s, x):
        s, y, _ = model.step(s, x)
        return s, y

    _, stepped = jax.lax.scan(one, model.init_state(), tokens)
    np.testing.assert_allclose(stepped, slots, rtol=1e-4, atol=1e-5)
    first, mid, _ = model(tokens[:4])
    rest, _, _ = model(tokens[4:], mid)
    np.testing.assert_allclose(jnp.concatenate([first, rest]), slots, rtol=1e-4, atol=1e-5)
    # The regrouping has its own parameters: initial slots, two norms, a read-in.
    base = SlotSSM(
        num_slots=3, dim=16, input_dim=12, num_blocks=3, space_heads=2, d_state=4, headdim=8,
        time_mixer=time_mixer, time_heads=2, max_frames=8, key=jax.random.key(10),
    )  # fmt: skip
    count = lambda m: sum(x.size for x in jax.tree.leaves(eqx.filter(m, eqx.is_array)))
    assert count(model) - count(base) == 5 * 16 + 2 * 2 * 16 + 4 * (16 * 16 + 16)
