"""TECO's MaskGit prior (`eqvid.nn._maskgit`): the parameter count of TECO's DMLab
prior, the forward pass against a NumPy reference (weight-tied head, [MASK] row), mask
schedules and training masks, the masked-token loss, and both samplers (chunk
partitions, pass-by-pass replay against a stub prior, confidence schedule, jit)."""

import itertools
import math
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng
from jaxtyping import TypeCheckError

from eqvid.nn._maskgit import (
    MASK_ID,
    TECO_MASKGIT_PRESETS,
    MaskGitPrior,
    draft_and_revise_masks,
    mask_by_random_topk,
    mask_ratio,
    masked_token_loss,
    num_masked,
    random_chunks,
    sample_chunks,
    sample_confidence,
    sample_draft_and_revise,
    sample_logits,
    training_mask,
)

H, W, K, COND = 3, 4, 12, 3


def random_like(shapes, seed):
    """A module of the structure of `shapes` (from `eqx.filter_eval_shape`) with every
    array drawn from N(0, 0.3²) in NumPy: cheap (initialising under XLA compiles every
    random draw) and non-trivial everywhere (LayerNorm scales, biases, [MASK] row)."""
    g = rng("maskgit params", seed)

    def fill(x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jnp.asarray(0.3 * g.normal(size=x.shape), x.dtype)

    return jax.tree.map(fill, shapes)


def build_prior(key):
    """A tiny prior with non-trivial parameters everywhere (LayerNorms, biases, the
    [MASK] row)."""
    shapes = eqx.filter_eval_shape(
        lambda k: MaskGitPrior(
            (H, W), K, COND, dim=16, num_heads=2, num_layers=2, vocab_dim=8, key=k
        ),
        key,
    )
    return random_like(shapes, 0)


@eqx.filter_jit
def apply(model, tokens, cond=None, key=None):
    return model(tokens, cond, key=key)


@pytest.fixture(scope="module")
def prior():
    return build_prior(jax.random.key(0))


@pytest.fixture(scope="module")
def cond():
    return jnp.asarray(rng("maskgit cond").normal(size=(H, W, COND)), jnp.float32)


class StubPrior(eqx.Module):
    """A deterministic prior whose argmax at position `p` is `(7·s + 3·p) mod K`, with
    `s` a checksum of all the tokens, so that any wrong pass order, missed re-mask or
    write outside the chunk changes later passes."""

    shape: tuple[int, int] = eqx.field(static=True)
    num_codes: int = eqx.field(static=True)

    def __call__(self, tokens, cond):
        h, w = self.shape
        return jax.nn.one_hot(stub_target(tokens, h, w, self.num_codes, jnp), self.num_codes)


def stub_target(tokens, h, w, k, xp):
    weights = xp.arange(1, h * w + 1).reshape(h, w)
    s = xp.sum(xp.where(tokens < 0, 5, tokens + 1) * weights)
    return (7 * s + 3 * xp.arange(h * w).reshape(h, w)) % k


def replay(masks, k, start=None):
    """`sample_chunks` with the stub at temperature 0, in NumPy."""
    h, w = masks.shape[1:]
    tokens = np.full((h, w), -1) if start is None else np.array(start)
    history = []
    for mask in masks:
        tokens = np.where(mask, -1, tokens)
        tokens = np.where(mask, stub_target(tokens, h, w, k, np), tokens)
        history.append(tokens)
    return tokens, np.stack(history)


def n_params(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree) if hasattr(x, "shape"))


# ----------------------------------------------------------------------------
# The prior.
# ----------------------------------------------------------------------------


def test_dmlab_parameter_count():
    preset = TECO_MASKGIT_PRESETS["dmlab"]
    model = eqx.filter_eval_shape(lambda k: MaskGitPrior(**preset, key=k), jax.random.key(0))
    # TECO's DMLab `params/z_git` (notes §5: the original's tree under jax.eval_shape).
    assert n_params(model) == 26_046_464
    assert model.token_embed.weight.shape == (1025, 256)
    assert model.fc_in.weight.shape == (256 + 64, 512)
    assert [t.shape for t in model.position.tables] == [(8, 256), (8, 256)]
    assert len(model.blocks) == 8 and model.mlm.bias.shape == (1024,)
    # Closed form per block (4W² + 2WM + 9W + M): q/k/v/out biases, two LayerNorms.
    assert n_params(model.blocks[0]) == 4 * 512**2 + 2 * 512 * 2048 + 9 * 512 + 2048


def np_layer_norm(x, norm):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + norm.eps) * np.asarray(norm.weight) + np.asarray(norm.bias)


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_dense(x, dense):
    return x @ np.asarray(dense.weight, np.float64) + np.asarray(dense.bias, np.float64)


@eqx.filter_jit
def run_blocks(blocks, y):
    for block in blocks:
        y = block(y)
    return y


def test_forward_matches_numpy_reference(prior, cond):
    """Embedding ([MASK] → row K), [token, cond] concatenation, input Dense, row ⊕
    column positions, then (the blocks in JAX) the head and the weight-tied logits
    `x @ token_embed[:K]ᵀ + bias`, recomputed in NumPy from the module's arrays."""
    tokens = rng("maskgit tokens").integers(0, K, size=(H, W))
    tokens[0, 1] = tokens[2, 3] = MASK_ID
    table = np.asarray(prior.token_embed.weight, np.float64)
    x = np.concatenate([table[np.where(tokens < 0, K, tokens)], np.asarray(cond)], axis=-1)
    x = np_dense(x, prior.fc_in)
    rows, cols = (np.asarray(t, np.float64) for t in prior.position.tables)
    half = rows.shape[1]
    x[..., :half] += rows[:, None, :]
    x[..., half:] += cols[None, :, :]
    y = run_blocks(prior.blocks, jnp.asarray(x.reshape(H * W, -1), jnp.float32))
    x = np_layer_norm(np_gelu_tanh(np_dense(np.asarray(y, np.float64), prior.fc_out)), prior.norm)
    x = np_layer_norm(np_gelu_tanh(np_dense(x, prior.mlm.dense)), prior.mlm.norm)
    logits = x @ table[:K].T + np.asarray(prior.mlm.bias)
    got = eqx.filter_jit(prior)(jnp.asarray(tokens), cond)
    assert got.shape == (H, W, K)
    np.testing.assert_allclose(np.asarray(got), logits.reshape(H, W, K), rtol=0, atol=1e-5)


def test_mask_id_uses_last_row(prior, cond):
    tokens = jnp.asarray(rng("maskgit mask row").integers(0, K, size=(H, W)))
    table = prior.token_embed.weight
    masked_rows = prior.embed_tokens(jnp.full((H, W), MASK_ID))
    np.testing.assert_array_equal(masked_rows, jnp.broadcast_to(table[K], (H, W, table.shape[1])))
    np.testing.assert_array_equal(prior.embed_tokens(tokens), table[tokens])
    # Changing row K changes the logits of masked inputs only; it is not a logit.
    other = eqx.tree_at(lambda p: p.token_embed.weight, prior, table.at[K].add(1.0))
    masked = tokens.at[1, 1].set(MASK_ID)
    assert not np.allclose(apply(prior, masked, cond), apply(other, masked, cond))
    np.testing.assert_array_equal(apply(prior, tokens, cond), apply(other, tokens, cond))
    # Bidirectional: the last position's token changes the first position's logits.
    changed = tokens.at[H - 1, W - 1].set((tokens[H - 1, W - 1] + 1) % K)
    assert not np.allclose(apply(prior, tokens, cond)[0, 0], apply(prior, changed, cond)[0, 0])


def test_bad_inputs(prior, cond):
    with pytest.raises(ValueError, match=r"`tokens` must lie in \[0, 12\) or be -1"):
        prior(jnp.full((H, W), K), cond)
    with pytest.raises(ValueError, match=r"`tokens` must lie in"):
        prior(jnp.full((H, W), -2), cond)
    # Traced out-of-range ids cannot be checked: NaN rows instead of wrapping around.
    assert np.isnan(np.asarray(eqx.filter_jit(prior.embed_tokens)(jnp.full((H, W), -2)))).all()
    with pytest.raises(ValueError, match=r"`tokens` must have shape \(3, 4\)"):
        prior(jnp.zeros((H, W + 1), jnp.int32), jnp.zeros((H, W + 1, COND)))
    with pytest.raises(ValueError, match=r"`cond` must have shape \(3, 4, 3\), got None"):
        prior(jnp.zeros((H, W), jnp.int32))
    with pytest.raises(ValueError, match=r"`dim` \(10\) must be divisible by `num_heads` \(4\)"):
        MaskGitPrior((2, 2), 4, 0, dim=10, num_heads=4, num_layers=1, key=jax.random.key(0))
    with pytest.raises((ValueError, TypeCheckError), match=r"`schedule` must be one of"):
        mask_ratio(0.5, "quadratic")
    with pytest.raises(ValueError, match=r"needs `total`"):
        mask_ratio(0.5, "log")
    with pytest.raises(ValueError, match=r"`temperature` must be ≥ 0"):
        sample_logits(jax.random.key(0), jnp.zeros((2, 3)), temperature=-1.0)


def test_unconditional_and_dropout():
    model = random_like(
        eqx.filter_eval_shape(
            lambda k: MaskGitPrior(
                (2, 3), 5, 0, dim=8, num_heads=2, num_layers=1, vocab_dim=4, dropout=0.5, key=k
            ),
            jax.random.key(3),
        ),
        1,
    )
    tokens = jnp.asarray([[0, -1, 4], [2, -1, 1]])
    out = apply(model, tokens)
    assert out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, apply(model, tokens))  # no key: no dropout
    assert not np.allclose(out, apply(model, tokens, key=jax.random.key(4)))
    with pytest.raises(ValueError, match=r"cond_dim=0, so `cond` must be None"):
        model(tokens, jnp.zeros((2, 3, 1)))


# ----------------------------------------------------------------------------
# Schedules, training masks, loss.
# ----------------------------------------------------------------------------


def test_mask_ratio_schedules():
    r = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    cases = {
        "cosine": np.cos(np.pi / 2 * r),
        "linear": 1 - r,
        "uniform": 1 - r,
        "square": 1 - r**2,
        "pow2": 1 - r**2,
        "pow0.5": 1 - r**0.5,
        "log": -np.log2(np.maximum(r, 1e-30)) / np.log2(64),
        "exp": 1 - np.exp2(-np.log2(64) * (1 - r)),
    }
    for name, want in cases.items():
        got = mask_ratio(jnp.asarray(r), name, total=64)
        np.testing.assert_allclose(got, np.clip(want, 1e-6, 1.0), rtol=1e-5, atol=1e-6)
        if name != "exp":  # exp starts at 1 - 1/total
            assert float(got[0]) == 1.0 and float(got[-1]) == pytest.approx(1e-6), name


def test_num_masked():
    total = 64
    r = np.asarray([0.0, 0.013, 0.21, 0.37, 0.5, 0.77, 0.9, 0.999, 1.0], np.float32)
    for name in ("cosine", "linear", "pow3"):
        ratio = np.clip(np.asarray(mask_ratio(jnp.asarray(r), name)), 1e-6, 1.0)
        want = np.maximum(1, np.floor(ratio.astype(np.float32) * np.float32(total)))
        np.testing.assert_array_equal(num_masked(jnp.asarray(r), total, name), want)
    np.testing.assert_array_equal(
        num_masked(jnp.asarray(r), total), [64, 63, 60, 53, 45, 22, 10, 1, 1]
    )
    assert int(num_masked(0.5, 64, "linear")) == 32


def test_training_mask_counts_and_uniformity():
    keys = jax.random.split(jax.random.key(7), 2000)
    masks = jax.jit(jax.vmap(lambda k: training_mask(k, (8, 8))))(keys)
    assert masks.shape == (2000, 8, 8) and masks.dtype == jnp.bool_
    # Exactly num_masked(r) positions, with r drawn from the key's first half.
    r = jax.vmap(lambda k: jax.random.uniform(jax.random.split(k)[0], (), jnp.float32))(keys)
    np.testing.assert_array_equal(masks.sum(axis=(1, 2)), num_masked(r, 64))
    # Positions uniformly chosen: every position masked about equally often.
    freq = np.asarray(masks.mean(axis=0))
    assert np.abs(freq - freq.mean()).max() < 0.06
    # Cosine schedule: E[cos(π r / 2)] = 2/π of the tokens.
    assert abs(float(masks.mean()) - 2 / np.pi) < 0.03


def test_masked_token_loss():
    g = rng("maskgit loss")
    logits = g.normal(size=(2, 3, 4, 5)).astype(np.float32)
    targets = g.integers(0, 5, size=(2, 3, 4))
    mask = g.random(size=(2, 3, 4)) < 0.4
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    want = (ce * mask).sum() / mask.sum()
    got = masked_token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    assert float(got) == pytest.approx(want, rel=1e-5)
    with pytest.raises((ValueError, TypeCheckError)):
        masked_token_loss(jnp.asarray(logits), jnp.asarray(targets[0]), jnp.asarray(mask[0]))


# ----------------------------------------------------------------------------
# Draft-and-revise.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "n"), [((8, 8), 8), ((2, 5), 3), ((2, 2), 6), ((3, 3), 1)])
def test_random_chunks_are_array_split_partitions(shape, n):
    ids = np.asarray(random_chunks(jax.random.key(5), shape, n))
    total = math.prod(shape)
    assert ids.shape == shape and ids.min() >= 0 and ids.max() < n
    want = [len(c) for c in np.array_split(np.arange(total), n)]
    assert np.bincount(ids.ravel(), minlength=n).tolist() == want
    if 1 < n < total:
        assert not np.array_equal(ids, np.asarray(random_chunks(jax.random.key(6), shape, n)))


def test_draft_and_revise_masks_partition_each_round():
    masks = np.asarray(
        draft_and_revise_masks(jax.random.key(2), (8, 8), t_draft=8, t_revise=4, m=2)
    )
    assert masks.shape == (8 + 2 * 4, 8, 8)
    rounds = [masks[:8], masks[8:12], masks[12:]]
    for chunks in rounds:  # disjoint and covering, near-equal sizes
        np.testing.assert_array_equal(chunks.sum(axis=0), 1)
        assert chunks.sum(axis=(1, 2)).tolist() == [
            len(c) for c in np.array_split(range(64), len(chunks))
        ]
    assert not np.array_equal(rounds[1], rounds[2])  # a fresh partition per round


def test_sample_chunks_replays_pass_by_pass():
    """Each pass re-masks its chunk, runs the prior on everything else and writes only
    its chunk: the result equals a NumPy replay, pass by pass."""
    stub = StubPrior((4, 4), 9)
    masks = draft_and_revise_masks(jax.random.key(11), (4, 4), t_draft=3, t_revise=5, m=2)
    final, history = sample_chunks(
        stub, None, masks, jax.random.key(0), temperature=0.0, return_history=True
    )
    want_final, want_history = replay(np.asarray(masks), 9)
    np.testing.assert_array_equal(history, want_history)
    np.testing.assert_array_equal(final, want_final)
    # From a given start (revising an existing frame).
    start = jnp.asarray(rng("maskgit start").integers(0, 9, size=(4, 4)))
    got = sample_chunks(stub, None, masks, jax.random.key(0), tokens=start, temperature=0.0)
    np.testing.assert_array_equal(got, replay(np.asarray(masks), 9, start)[0])


def test_draft_and_revise_writes_only_its_chunk(prior, cond):
    t_draft, t_revise, m = 4, 4, 2
    key = jax.random.key(9)
    run = eqx.filter_jit(sample_draft_and_revise)
    final, history = run(
        prior, cond, key, t_draft=t_draft, t_revise=t_revise, m=m, return_history=True
    )
    k_masks = jax.random.split(key)[0]  # the documented split: (masks, samples)
    sizes = dict(t_draft=t_draft, t_revise=t_revise, m=m)
    masks = np.asarray(draft_and_revise_masks(k_masks, (H, W), **sizes))
    history = np.asarray(history)
    assert history.shape == (t_draft + m * t_revise, H, W)
    before = np.full((H, W), -1)
    for p, (mask, after) in enumerate(zip(masks, history)):
        assert not np.any((after != before) & ~mask), f"pass {p} wrote outside its chunk"
        assert np.all(after[mask] >= 0) and np.all(after[mask] < K)
        if p < t_draft:  # the draft: exactly the chunks drawn so far are filled
            np.testing.assert_array_equal(after >= 0, masks[: p + 1].any(axis=0))
        before = after
    np.testing.assert_array_equal(final, history[-1])
    # Same key: same sample; another key: another sample.
    again = run(prior, cond, key, **sizes, return_history=True)[0]
    np.testing.assert_array_equal(again, final)
    other = run(prior, cond, jax.random.key(10), **sizes, return_history=True)[0]
    assert not np.array_equal(other, final)


def test_sample_logits_limits():
    logits = jnp.asarray(rng("maskgit logits").normal(size=(50, 7)), jnp.float32)
    argmax = np.argmax(np.asarray(logits), axis=-1)
    np.testing.assert_array_equal(sample_logits(jax.random.key(0), logits, temperature=0.0), argmax)
    np.testing.assert_array_equal(
        sample_logits(jax.random.key(0), logits, temperature=1e-4), argmax
    )
    np.testing.assert_array_equal(sample_logits(jax.random.key(1), logits, top_k=1), argmax)
    keys = jax.random.split(jax.random.key(2), 200)
    draws = np.asarray(jax.vmap(lambda k: sample_logits(k, logits, top_k=3))(keys))
    top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    assert np.all((draws[..., None] == top3[None]).any(-1))
    assert len(np.unique(draws[:, 0])) > 1  # still random within the top 3


# ----------------------------------------------------------------------------
# Confidence-based decoding.
# ----------------------------------------------------------------------------


def expected_masked(steps, n, schedule):
    """Tokens still masked after each step: MaskGIT's `mask_len` in NumPy."""
    counts, unknown = [], n
    for i in range(steps):
        r = np.float32((i + 1) / steps)
        ratio = np.cos(np.pi / 2 * r) if schedule == "cosine" else 1 - r
        target = np.floor(np.float32(n) * np.clip(np.float32(ratio), 1e-6, 1))
        unknown = 0 if i == steps - 1 else max(1, min(unknown - 1, int(target)))
        counts.append(unknown)
    return counts


@pytest.mark.parametrize(("steps", "schedule"), [(5, "cosine"), (20, "linear")])
def test_confidence_follows_schedule(prior, cond, steps, schedule):
    run = eqx.filter_jit(sample_confidence)
    final, history = run(
        prior, cond, jax.random.key(8), steps=steps, schedule=schedule, return_history=True
    )
    history = np.asarray(history)
    masked = (history == MASK_ID).sum(axis=(1, 2)).tolist()
    assert masked == expected_masked(steps, H * W, schedule)
    assert masked[-1] == 0 and np.all((final >= 0) & (final < K))
    for before, after in itertools.pairwise(history):  # revealed tokens stay
        known = before != MASK_ID
        np.testing.assert_array_equal(after[known], before[known])
    np.testing.assert_array_equal(final, history[-1])


def test_confidence_keeps_given_tokens(prior, cond):
    start = jnp.asarray(rng("maskgit partial").integers(0, K, size=(H, W)))
    start = start.at[:2].set(MASK_ID)  # 8 unknown
    final, history = sample_confidence(
        prior, cond, jax.random.key(3), steps=4, tokens=start, return_history=True
    )
    np.testing.assert_array_equal(final[2:], start[2:])
    assert np.all(np.asarray(final) >= 0)
    assert (np.asarray(history) == MASK_ID).sum(axis=(1, 2)).tolist() == expected_masked(
        4, 8, "cosine"
    )


def test_mask_by_random_topk():
    logp = jnp.log(jnp.asarray([0.5, 0.1, 0.9, 0.3, 0.2, 0.7]))
    # No noise: the lowest-confidence positions.
    np.testing.assert_array_equal(
        mask_by_random_topk(jax.random.key(0), 2, logp, 0.0), [0, 1, 0, 0, 1, 0]
    )
    # Known tokens (+inf) are never masked; exactly mask_len of the others are.
    known = logp.at[jnp.asarray([1, 4])].set(jnp.inf)
    for seed in range(5):
        got = np.asarray(mask_by_random_topk(jax.random.key(seed), 3, known, 10.0))
        assert got.sum() == 3 and not got[[1, 4]].any()
    assert not np.asarray(mask_by_random_topk(jax.random.key(0), 5, known.at[:].set(jnp.inf))).any()


def test_samplers_same_under_jit():
    """Same key, same tokens: eagerly (the scans compile on their own), under jit and
    again; another key, other tokens. (A stub prior: the sampler's keys are under test.)"""
    stub = StubPrior((4, 4), 9)
    key = jax.random.key(12)
    cases: list[tuple[typing.Callable[..., typing.Any], dict[str, typing.Any]]] = [
        (sample_draft_and_revise, dict(t_draft=2, t_revise=3, m=1)),
        (sample_confidence, dict(steps=3)),
    ]
    for sampler, kwargs in cases:
        eager = sampler(stub, None, key, **kwargs)
        jitted = eqx.filter_jit(sampler)(stub, None, key, **kwargs)
        np.testing.assert_array_equal(eager, jitted)
        np.testing.assert_array_equal(eager, sampler(stub, None, key, **kwargs))
        assert not np.array_equal(eager, sampler(stub, None, jax.random.key(13), **kwargs))
