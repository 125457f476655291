"""MeBT's network, training split and samplers (`eqvid.nn`), checked against a NumPy
restatement of the original's math (`mebt/modules/gpt.py`, `mebt/transformer.py`,
`mebt/mask_sampler.py` of Ugness/MeBT)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.nn import (
    MEBT_RELEASED_LAYERS,
    MeBTTransformer,
    check_index_sets,
    maskgen_split,
    mebt_layers,
    mebt_length_prior,
    mebt_mask_ratio,
    mebt_num_masked,
    mebt_parameter_count,
    mebt_revise,
    mebt_sample,
)

# ----------------------------------------------------------------------------
# A NumPy restatement of the original's forward (gpt.py:98-253, transformer.py:255-276).
# ----------------------------------------------------------------------------


def _ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * np.asarray(p.weight) + np.asarray(p.bias)


def _attn(block, q, kv):
    a = block.attention
    heads, hd = a.num_heads, a.head_dim
    Q = np.einsum("lc,chd->lhd", q, a.query_weight) + np.asarray(a.query_bias)
    K = np.einsum("lc,chd->lhd", kv, a.key_weight) + np.asarray(a.key_bias)
    V = np.einsum("lc,chd->lhd", kv, a.value_weight) + np.asarray(a.value_bias)
    if kv.shape[0] == 0:  # torch: softmax over an empty axis, then an empty product: 0
        y = np.zeros((q.shape[0], heads, hd))
    else:
        s = np.einsum("qhd,khd->hqk", Q, K) / math.sqrt(hd)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        y = np.einsum("hqk,khd->qhd", p, V)
    return np.einsum("qhd,hdc->qc", y, a.output_weight) + np.asarray(a.output_bias)


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _block(block, q_in, kv_in):
    q, kv = _ln(q_in, block.ln1), _ln(kv_in, block.ln1)
    x = q + _attn(block, q, kv)  # the residual from the normalised query (gpt.py:184)
    h = _gelu(_ln(x, block.ln2) @ np.asarray(block.mlp_in.weight) + np.asarray(block.mlp_in.bias))
    return x + h @ np.asarray(block.mlp_out.weight) + np.asarray(block.mlp_out.bias)


def reference_logits(net, codes, ctx, tgt):
    """The original's forward on the real index sets only (no padding anywhere)."""
    p = lambda x: np.asarray(x, np.float64)
    pos = p(net.position_embed)
    L = p(net.latents)
    C = p(net.token_embed)[codes[ctx]] + pos[ctx]
    T = p(net.mask_embed) + pos[tgt]
    for block in net.blocks:
        b = jax.tree.map(lambda x: np.asarray(x, np.float64) if eqx.is_array(x) else x, block)
        if block.kind == "latent_self":
            L = _block(b, L, L)
        elif block.kind == "latent_enc":
            L = _block(b, L, C)
        elif block.kind == "latent_dec":
            T = _block(b, T, L)
        elif block.kind == "lt2l":
            L = _block(b, L, np.concatenate([L, T]))
        else:
            both = _block(b, np.concatenate([C, T]), np.concatenate([C, T]))
            C, T = both[: len(C)], both[len(C) :]
    return _ln(T, net.final_norm) @ p(net.head.weight)


def small_net(key, layers, *, tokens=48, codes=11):
    return MeBTTransformer(
        num_codes=codes, max_tokens=tokens, dim=16, num_heads=2, num_latents=5,
        layers=layers, impl="xla", key=key,
    )  # fmt: skip


def _padded(index, n, size, fill):
    out = np.full(size, fill, np.int32)
    out[:n] = index
    return out


@pytest.mark.parametrize(
    "layers",
    [
        ("latent_enc", "latent_dec"),
        ("latent_self", "latent_dec"),
        ("latent_enc", "lt2l", "latent_dec"),
        ("maskgit",),
        ("latent_enc", "maskgit", "latent_dec", "lt2l", "latent_dec"),
    ],
    ids=lambda layers: "+".join(layers),
)
def test_each_layer_kind_matches_dense_attention_on_the_real_tokens(getkey, layers):
    net = small_net(getkey(), layers)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 11, 48).astype(np.int32)
    perm = rng.permutation(48).astype(np.int32)
    for n_ctx, n_tgt in [(20, 9), (0, 12), (30, 18)]:
        ctx, tgt = perm[:n_ctx], perm[n_ctx : n_ctx + n_tgt]
        want = reference_logits(net, codes, ctx, tgt)
        # Padding rows hold arbitrary positions (even real ones): they must not matter.
        got = net(
            jnp.asarray(codes),
            jnp.asarray(_padded(ctx, n_ctx, 40, 7)),
            n_ctx,
            jnp.asarray(_padded(tgt, n_tgt, 24, 3)),
            n_tgt,
        )
        np.testing.assert_allclose(np.asarray(got)[:n_tgt], want, rtol=2e-4, atol=2e-5)


def test_counts_may_be_traced_and_batched(getkey):
    net = small_net(getkey(), ("latent_enc", "latent_self", "latent_dec", "lt2l", "latent_dec"))
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 11, (3, 48)).astype(np.int32)
    perms = np.stack([rng.permutation(48) for _ in range(3)]).astype(np.int32)
    n_ctx, n_tgt = np.array([5, 0, 40]), np.array([20, 48, 8])
    tgt = np.stack([np.roll(perms[i], -n_ctx[i]) for i in range(3)])
    got = jax.jit(jax.vmap(net))(codes, perms, n_ctx, tgt, n_tgt)
    for i in range(3):
        want = reference_logits(net, codes[i], perms[i, : n_ctx[i]], tgt[i, : n_tgt[i]])
        np.testing.assert_allclose(np.asarray(got[i])[: n_tgt[i]], want, rtol=2e-4, atol=2e-5)


def test_initialisation_and_parameter_count_follow_the_original(getkey):
    net = small_net(getkey(), mebt_layers(2, 2), tokens=64, codes=32)
    assert net.layers == (
        "latent_enc",
        "latent_self",
        "latent_enc",
        "latent_dec",
        "lt2l",
        "latent_dec",
    )
    count = sum(x.size for x in jax.tree.leaves(eqx.filter(net, eqx.is_array)))
    assert count == mebt_parameter_count(
        num_codes=32, max_tokens=64, dim=16, num_latents=5, num_layers=6
    )
    assert net.head.bias is None and net.blocks[0].attention.query_bias is not None
    a = net.blocks[0].attention
    assert float(jnp.std(a.query_weight)) == pytest.approx(0.02, rel=0.25)
    for bias in (a.query_bias, a.output_bias, net.blocks[0].mlp_in.bias):
        assert bias is not None and float(jnp.abs(bias).max()) == 0.0
    assert float(jnp.std(net.token_embed)) == pytest.approx(0.02, rel=0.25)
    assert mebt_layers(7, 6) == MEBT_RELEASED_LAYERS and len(MEBT_RELEASED_LAYERS) == 24


@pytest.mark.parametrize("max_tokens,want", [(1024, 337_177_600), (8192, 344_517_632)])
def test_released_configs_parameter_counts(max_tokens, want):
    # The original's shapes (facts: gpt.py, transformer.py): 16384 codes, width 1024,
    # 16 heads, 24 layers, 256 latents; block_size 1024 (16 frames) or 8192 (128).
    net = eqx.filter_eval_shape(
        lambda: MeBTTransformer(
            num_codes=16384, max_tokens=max_tokens, dim=1024, num_heads=16, num_latents=256,
            key=jax.random.key(0),
        )
    )  # fmt: skip
    count = sum(x.size for x in jax.tree.leaves(net) if hasattr(x, "shape"))
    assert (
        count
        == want
        == mebt_parameter_count(
            num_codes=16384, max_tokens=max_tokens, dim=1024, num_latents=256, num_layers=24
        )
    )


def test_bad_configurations_and_counts_are_refused(getkey):
    with pytest.raises(ValueError, match="latent_dec"):
        small_net(getkey(), ("latent_enc", "latent_self"))
    with pytest.raises(ValueError, match="layers"):
        small_net(getkey(), ("latent_enc", "decoder"))
    net = small_net(getkey(), ("latent_enc", "latent_dec"))
    idx = jnp.arange(10, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"n_targets.*\[0, 10\].*got 11"):
        net(jnp.zeros(48, jnp.int32), idx, 3, idx, 11)
    with pytest.raises(ValueError, match="more than the 48 positions"):
        net(jnp.zeros(50, jnp.int32), idx, 3, idx, 4)
    with pytest.raises(ValueError, match="2 positions are both context and target"):
        check_index_sets(48, np.arange(5), 5, np.arange(3, 10), 7)
    with pytest.raises(ValueError, match="8 targets are more than the budget of 6"):
        check_index_sets(48, np.arange(5), 5, np.arange(5, 15), 8, budget=6)
    with pytest.raises(ValueError, match=r"40 contexts \+ 10 targets = 50 exceed the 48"):
        check_index_sets(48, np.arange(40), 40, np.arange(40, 50), 10)
    with pytest.raises(ValueError, match=r"positions in \[0, 48\)"):
        check_index_sets(48, np.arange(45, 50), 5, np.arange(5), 3)


# ----------------------------------------------------------------------------
# MaskGen.
# ----------------------------------------------------------------------------


def test_schedules_are_the_originals():
    t = np.linspace(0, 1, 9, dtype=np.float32)
    want = {
        "cosine": np.cos(np.pi * t / 2), "cosine_plus": 0.5 * (1 + np.cos(np.pi * t)),
        "linear": 1 - t, "quadratic": (1 - t) ** 2, "square": 1 - t**2, "cube": 1 - t**3,
        "sqrt": 1 - np.sqrt(t), "convex": (1 - t) ** 3,
    }  # fmt: skip
    for name, values in want.items():
        np.testing.assert_allclose(mebt_mask_ratio(t, name), values, atol=1e-6, err_msg=name)
    # ⌈ratio · N⌉, and cosine at t = 1 is −4.4e-8 in float32: nothing stays masked.
    assert int(mebt_num_masked(0.3, 1024, "linear")) == math.ceil(np.float32(0.7) * 1024)
    assert int(mebt_num_masked(1.0, 1024, "cosine")) == 0
    with pytest.raises(ValueError, match="schedule"):
        mebt_mask_ratio(0.5, "log")


def test_length_priors_are_the_originals():
    np.testing.assert_array_equal(mebt_length_prior("longest", 4), [0, 0, 0, 1])
    np.testing.assert_allclose(mebt_length_prior("uniform", 4), [0.25] * 4)
    for name, b in (("gaussian2", 30000.0), ("gaussian100000_2", 1e5)):
        for step in (0, 250_000, 2_000_000):
            L = np.arange(1, 33)
            w = np.exp(-((step - (L - 1) * b) ** 2) / (2 * (b * 2) ** 2))
            np.testing.assert_allclose(
                mebt_length_prior(name, 32, step), w / w.sum(), rtol=1e-4, atol=1e-12
            )


@pytest.mark.parametrize("prior,budget", [("longest", None), ("uniform", None), ("longest", 20)])
def test_maskgen_splits_a_permutation_into_disjoint_context_and_targets(getkey, prior, budget):
    shape = (4, 3, 3)
    n_all = 36
    splits = jax.jit(
        jax.vmap(lambda k: maskgen_split(k, shape, budget=budget, length_prior=prior))
    )(jax.random.split(getkey(), 200))
    lengths = set()
    for i in range(200):
        s = jax.tree.map(lambda x, i=i: np.asarray(x[i]), splits)
        lo, hi = s.window
        n = hi - lo
        lengths.add(n // 9)
        assert lo % 9 == 0 and 0 <= lo < hi <= n_all
        order = s.context_index[:n]
        assert sorted(order) == list(range(lo, hi))  # a permutation of the window
        ctx = s.context_index[: s.n_contexts]
        tgt = s.target_index[: s.n_targets]
        assert s.n_contexts + s.n_masked == n and 1 <= s.n_masked <= n
        assert s.n_targets == min(budget or n_all, s.n_masked)
        np.testing.assert_array_equal(tgt, order[n - s.n_targets :])  # the last ones
        assert not set(ctx) & set(tgt)
        check_index_sets(
            n_all, s.context_index, int(s.n_contexts), s.target_index, int(s.n_targets)
        )
    assert lengths == ({4} if prior == "longest" else {1, 2, 3, 4})


def test_maskgen_mask_ratio_follows_a_uniform_time():
    splits = jax.vmap(lambda k: maskgen_split(k, (2, 4, 4)))(
        jax.random.split(jax.random.key(3), 4000)
    )
    ratio = np.asarray(splits.n_masked) / 32
    # linear: n_masked = ⌈(1 − t)·32⌉ with t ~ U[0, 1): each count 1 … 32 equally likely.
    counts = np.bincount(np.asarray(splits.n_masked), minlength=33)[1:]
    assert counts.min() > 4000 / 32 * 0.7 and ratio.max() == 1.0


# ----------------------------------------------------------------------------
# Samplers.
# ----------------------------------------------------------------------------


def test_sampling_keeps_observed_tokens_and_fills_the_rest(getkey):
    net = small_net(getkey(), ("latent_enc", "latent_dec"), tokens=48, codes=11)
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 11, 48).astype(np.int32)
    known = np.zeros(48, bool)
    known[:16] = True  # the first latent step observed: frame prediction
    start = np.where(known, codes, -1)  # unknown values are never read
    out, calls = jax.jit(
        lambda c, k, key: mebt_sample(net, c, k, key=key, num_steps=8, context_temp=4.0)
    )(jnp.asarray(np.maximum(start, 0)), jnp.asarray(known), getkey())
    out = np.asarray(out)
    np.testing.assert_array_equal(out[:16], codes[:16])
    assert out.min() >= 0 and out.max() < 11
    assert int(calls) <= 8
    again = mebt_revise(
        net, jnp.asarray(out), jnp.asarray(known), key=getkey(), num_chunks=4, rounds=2
    )
    np.testing.assert_array_equal(np.asarray(again)[:16], codes[:16])


def _sim_calls(n_total, n_steps, schedule="cosine", bootstrap=0, n_known=0):
    """The original's step loop (transformer.py:391-447) on counts alone."""
    m = n_total - n_known
    targets = m - bootstrap
    calls = bootstrap
    promoted = []
    for k in range(1, n_steps + 1):
        t = np.float32(k / n_steps)
        ratio = (
            np.float32(np.cos(np.float32(np.pi) * t / np.float32(2)))
            if schedule == "cosine"
            else np.float32(1) - t
        )
        n_masked = max(0, math.ceil(np.float32(ratio * np.float32(m))))
        if n_masked > targets:
            promoted.append(None)
            continue
        calls += 1
        promoted.append(targets - n_masked)
        targets = n_masked
    return calls, promoted


@pytest.mark.parametrize(
    "n_total,n_steps,bootstrap", [(48, 8, 0), (48, 20, 0), (48, 8, 4), (40, 8, 1), (30, 30, 0)]
)
def test_sampler_step_counts_are_the_originals(getkey, n_total, n_steps, bootstrap):
    net = small_net(getkey(), ("latent_enc", "latent_dec"), tokens=n_total, codes=5)
    codes = jnp.zeros(n_total, jnp.int32)
    known = jnp.zeros(n_total, bool)
    _out, calls = mebt_sample(
        net, codes, known, key=getkey(), num_steps=n_steps, bootstrap=bootstrap
    )
    want_calls, _ = _sim_calls(n_total, n_steps, bootstrap=bootstrap)
    assert int(calls) == want_calls


def test_the_context_temperature_anneals_linearly():
    from eqvid.nn import context_temperature

    for t in (0.0, 0.25, 1.0):
        assert float(context_temperature(jnp.float32(t), 6.0)) == pytest.approx(6.0 * (1 - t))
        assert float(context_temperature(jnp.float32(t), 6.0, "constant")) == 6.0
        assert float(context_temperature(jnp.float32(t), 2.0, "cosine")) == pytest.approx(
            2 * math.cos(math.pi * t / 2), abs=1e-6
        )
