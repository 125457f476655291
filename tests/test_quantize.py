"""`eqvid.nn`'s vector quantiser against NumPy written out here: nearest codes (squared
and cosine distances), straight-through gradients, the two loss weightings, the EMA
codebook update and dead-code restarts, batch statistics, folding the state in, `jit`
and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng

from eqvid.nn import parameter_roles
from eqvid.nn._quantize import CodebookEMA, Quantized, VectorQuantizer

# ----------------------------------------------------------------------------
# NumPy references and helpers.
# ----------------------------------------------------------------------------


def np_normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def np_nearest(z, codebook, cosine=False):
    """Brute force: the index of the nearest row of `codebook` for every vector of `z`
    (`(*batch, dim)`), ties to the lowest index."""
    flat = np.asarray(z, np.float64).reshape(-1, codebook.shape[1])
    table = np.asarray(codebook, np.float64)
    if cosine:
        flat, table = np_normalise(flat), np_normalise(table)
    dist = np.array([[np.sum((v - e) ** 2) for e in table] for v in flat])
    return np.argmin(dist, axis=1).reshape(np.shape(z)[:-1])


def np_ema(codebook_state, z, codes, n_embed, decay, eps):
    """One EMA step (TATS / VQ-VAE-2): `(codebook, N, S)` after the batch `z` with
    `codes`."""
    _, size, embed_sum = (np.asarray(a, np.float64) for a in codebook_state)
    flat = np.asarray(z, np.float64).reshape(-1, embed_sum.shape[1])
    codes = np.asarray(codes).reshape(-1)
    counts = np.bincount(codes, minlength=n_embed).astype(np.float64)
    sums = np.zeros_like(embed_sum)
    for v, c in zip(flat, codes, strict=True):
        sums[c] += v
    size = decay * size + (1 - decay) * counts
    embed_sum = decay * embed_sum + (1 - decay) * sums
    total = size.sum()
    smoothed = (size + eps) / (total + n_embed * eps) * total
    return embed_sum / smoothed[:, None], size, embed_sum


def np_stats(codes, n_embed):
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=n_embed)
    p = counts / counts.sum()
    nz = p[p > 0]
    return np.exp(-np.sum(nz * np.log(nz))), np.mean(counts > 0)


def with_embedding(vq, table):
    return eqx.tree_at(lambda m: m.embedding, vq, jnp.asarray(table, jnp.float32))


def clone(state):
    """A copy of `state` that stays valid after the original is used up by `set`."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def ema_values(vq, state):
    return tuple(np.asarray(a) for a in state.get(vq.ema))


def set_ema(vq, state, codebook, size, embed_sum):
    return state.set(
        vq.ema,
        CodebookEMA(
            jnp.asarray(codebook, jnp.float32),
            jnp.asarray(size, jnp.float32),
            jnp.asarray(embed_sum, jnp.float32),
        ),
    )


# ----------------------------------------------------------------------------
# Nearest codes and the straight-through path.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("cosine", [False, True])
def test_nearest_codes_match_brute_force(cosine, getkey):
    g = rng("nearest", cosine)
    n, dim = 11, 5
    table = g.normal(size=(n, dim)) * g.uniform(0.2, 3.0, size=(n, 1))  # varied norms
    z = g.normal(size=(4, 6, dim)) * 1.5
    vq = with_embedding(VectorQuantizer(n, dim, cosine=cosine, key=getkey()), table)
    out, state = vq(jnp.asarray(z, jnp.float32))
    assert state is None
    assert out.codes.dtype == jnp.int32 and out.codes.shape == (4, 6)
    expected = np_nearest(z, table, cosine)
    np.testing.assert_array_equal(np.asarray(out.codes), expected)
    ref_table = np_normalise(table) if cosine else table
    np.testing.assert_allclose(np.asarray(out.quantized), ref_table[expected], atol=1e-5)
    np.testing.assert_allclose(np.asarray(vq.lookup(out.codes)), ref_table[expected], atol=1e-6)


def test_ties_go_to_lowest_index(getkey):
    table = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    vq = with_embedding(VectorQuantizer(4, 2, key=getkey()), table)
    # (0, 1) matches codes 1 and 2, (1, 0) codes 0 and 3, (1, 1) all four equally.
    z = jnp.asarray([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(vq(z)[0].codes), [1, 0, 0])


def test_straight_through_gradient_is_identity(getkey):
    g = rng("straight-through")
    dim = 3
    vq = with_embedding(VectorQuantizer(6, dim, key=getkey()), g.normal(size=(6, dim)))
    z = jnp.asarray(g.normal(size=(4, dim)), jnp.float32)
    jac = jax.jacrev(lambda x: vq(x)[0].quantized)(z)
    np.testing.assert_allclose(np.asarray(jac).reshape(4 * dim, 4 * dim), np.eye(4 * dim))
    # A linear function of the quantized vectors: its gradient passes to z unchanged.
    w = jnp.asarray(g.normal(size=(4, dim)), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(w * vq(x)[0].quantized))(z)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(w), rtol=1e-6)


def test_bfloat16_input(getkey):
    g = rng("bfloat16")
    vq = with_embedding(VectorQuantizer(7, 4, key=getkey()), g.normal(size=(7, 4)))
    z = jnp.asarray(g.normal(size=(3, 4)), jnp.bfloat16)
    out, _ = vq(z)
    assert out.quantized.dtype == jnp.bfloat16 and out.codes.dtype == jnp.int32
    assert out.loss.dtype == jnp.float32
    expected = np_nearest(np.asarray(z.astype(jnp.float32)), np.asarray(vq.embedding))
    np.testing.assert_array_equal(np.asarray(out.codes), expected)


# ----------------------------------------------------------------------------
# Losses and their gradients.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("beta_on", ["commitment", "codebook"])
def test_losses_and_their_gradients(beta_on, getkey):
    g = rng("losses", beta_on)
    n, dim, beta = 5, 3, 0.3
    table = g.normal(size=(n, dim))
    z = g.normal(size=(2, 4, dim))
    vq = with_embedding(VectorQuantizer(n, dim, beta=beta, beta_on=beta_on, key=getkey()), table)
    zj = jnp.asarray(z, jnp.float32)
    out, _ = vq(zj)
    codes = np_nearest(z, table)
    e = table[codes]
    size = z.size
    commitment = np.mean((z - e) ** 2)
    np.testing.assert_allclose(float(out.commitment_loss), commitment, rtol=1e-5)
    np.testing.assert_allclose(float(out.codebook_loss), commitment, rtol=1e-5)  # same value
    total = (1 + beta) * commitment
    np.testing.assert_allclose(float(out.loss), total, rtol=1e-5)

    def grads(term):
        return jax.grad(lambda m, x: getattr(m(x)[0], term), argnums=(0, 1))(vq, zj)

    # Commitment: gradient to z only.
    g_vq, g_z = grads("commitment_loss")
    np.testing.assert_allclose(np.asarray(g_z), 2 * (z - e) / size, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(g_vq.embedding), 0.0)
    # Codebook: gradient to the embedding only (its assigned rows).
    g_vq, g_z = grads("codebook_loss")
    np.testing.assert_array_equal(np.asarray(g_z), 0.0)
    expected = np.zeros_like(table)
    np.add.at(expected, codes.reshape(-1), (2 * (e - z) / size).reshape(-1, dim))
    np.testing.assert_allclose(np.asarray(g_vq.embedding), expected, rtol=1e-4, atol=1e-7)
    # The loss weighs one of them by beta.
    g_vq, g_z = grads("loss")
    w_commit, w_code = (beta, 1.0) if beta_on == "commitment" else (1.0, beta)
    np.testing.assert_allclose(np.asarray(g_z), w_commit * 2 * (z - e) / size, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_vq.embedding), w_code * expected, rtol=1e-4, atol=1e-7)


def test_cosine_codebook_is_unit_vectors(getkey):
    g = rng("cosine")
    n, dim = 9, 6
    vq = VectorQuantizer(n, dim, cosine=True, key=getkey())
    vq = with_embedding(vq, g.normal(size=(n, dim)) * 5)
    z = jnp.asarray(g.normal(size=(3, 5, dim)) * 7, jnp.float32)
    out, _ = vq(z)
    for vectors in (out.quantized, vq.codebook(), vq.lookup(out.codes)):
        np.testing.assert_allclose(np.linalg.norm(np.asarray(vectors), axis=-1), 1.0, rtol=1e-5)
    # The losses use the normalised z.
    e = np_normalise(np.asarray(vq.embedding))[np.asarray(out.codes)]
    expected = np.mean((np_normalise(np.asarray(z)) - e) ** 2)
    np.testing.assert_allclose(float(out.commitment_loss), expected, rtol=1e-5)
    # A zero vector is safe (finite values and gradients).
    zero = jnp.zeros((2, dim), jnp.float32)
    grad = jax.grad(lambda x: vq(x)[0].loss)(zero)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_trained_codebook_initialisation_and_roles(getkey):
    vq = VectorQuantizer(64, 8, key=getkey())
    assert vq.embedding is not None and vq.ema is None
    table = np.asarray(vq.embedding)
    assert table.shape == (64, 8) and np.abs(table).max() <= 1 / 64
    assert np.abs(table).max() > 0.9 / 64  # uniform over the whole interval
    roles = parameter_roles(vq)
    assert roles.embedding.keep_float32 and roles.embedding.axes == ("vocab", "embed")
    ema, _ = eqx.nn.make_with_state(VectorQuantizer)(64, 8, ema_decay=0.99, key=getkey())
    assert ema.embedding is None
    assert not jax.tree.leaves(eqx.filter(ema, eqx.is_inexact_array))  # nothing to train


# ----------------------------------------------------------------------------
# The EMA codebook.
# ----------------------------------------------------------------------------


def test_ema_updates_match_formula(getkey):
    g = rng("ema")
    n, dim, decay, eps = 6, 3, 0.8, 1e-3
    vq, state = eqx.nn.make_with_state(VectorQuantizer)(
        n, dim, ema_decay=decay, eps=eps, beta=0.4, key=getkey()
    )
    initial = ema_values(vq, state)
    np.testing.assert_array_equal(initial[1], 1.0)  # N = 1, S = codebook
    np.testing.assert_array_equal(initial[2], initial[0])
    reference = tuple(np.asarray(a, np.float64) for a in initial)
    for step in range(2):
        z = g.normal(size=(4, 5, dim))
        codes = np_nearest(z, reference[0])
        out, state = vq(jnp.asarray(z, jnp.float32), state, update=True)
        np.testing.assert_array_equal(np.asarray(out.codes), codes, err_msg=f"step {step}")
        # The code vectors of this call are those before the update; loss = beta · c.
        commitment = np.mean((z - reference[0][codes]) ** 2)
        np.testing.assert_allclose(float(out.loss), 0.4 * commitment, rtol=1e-5)
        assert float(out.codebook_loss) == 0.0
        reference = np_ema(reference, z, codes, n, decay, eps)
        for got, want, name in zip(ema_values(vq, state), reference, CodebookEMA._fields):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {step}")
    np.testing.assert_allclose(np.asarray(vq.codebook(state)), reference[0], rtol=1e-5)


def test_no_update_leaves_state_untouched(getkey):
    g = rng("no-update")
    vq, state = eqx.nn.make_with_state(VectorQuantizer)(5, 3, ema_decay=0.9, key=getkey())
    before = ema_values(vq, state)
    z = jnp.asarray(g.normal(size=(7, 3)), jnp.float32)
    _, after = vq(z, state)
    assert after is state
    for got, want in zip(ema_values(vq, after), before, strict=True):
        np.testing.assert_array_equal(got, want)
    # No gradient reaches the EMA codebook.
    grad = jax.grad(lambda s: vq(z, s)[0].loss, allow_int=True)(state)
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(grad))
    # Without EMA a state passes through, and update=True changes nothing.
    plain = VectorQuantizer(5, 3, key=getkey())
    assert plain(z, state, update=True)[1] is state
    assert plain(z, update=True)[1] is None


def test_dead_codes_restart_from_the_batch(getkey):
    g = rng("restart")
    n, dim, decay, eps, threshold = 6, 3, 0.9, 1e-5, 0.5
    vq, state = eqx.nn.make_with_state(VectorQuantizer)(
        n, dim, ema_decay=decay, eps=eps, restart_threshold=threshold, key=getkey()
    )
    # Codes 0-2 near the data and well used; codes 3-5 far away and nearly dead.
    codebook = np.concatenate([g.normal(size=(3, dim)), 100 + g.normal(size=(3, dim))])
    size = np.array([5.0, 5.0, 5.0, 0.2, 0.01, 2.0])
    state = set_ema(vq, state, codebook, size, codebook * size[:, None])
    z = g.normal(size=(2, 4, dim))  # 8 vectors ≥ 6 codes: no tiling, no noise
    codes = np_nearest(z, codebook)
    assert set(codes.reshape(-1)) <= {0, 1, 2}
    before = (codebook, size, codebook * size[:, None])
    expected = np_ema(before, z, codes, n, decay, eps)
    dead = expected[1] < threshold
    np.testing.assert_array_equal(dead, [False, False, False, True, True, False])
    _, state = vq(jnp.asarray(z, jnp.float32), state, key=getkey(), update=True)
    got = ema_values(vq, state)
    live = ~dead
    # Live codes follow the EMA formula (code 5 is unused but above the threshold).
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a[live], b[live], rtol=1e-5, atol=1e-6)
    # Dead codes become distinct vectors of the batch, with N = 1 and S = the vector.
    flat = z.reshape(-1, dim)
    picked = []
    for row in got[0][dead]:
        match = np.flatnonzero(np.all(np.isclose(flat, row, atol=1e-6), axis=1))
        assert match.size == 1, row
        picked.append(int(match[0]))
    assert len(set(picked)) == len(picked)
    np.testing.assert_array_equal(got[1][dead], 1.0)
    np.testing.assert_array_equal(got[2][dead], got[0][dead])


def test_restart_tiles_a_small_batch(getkey):
    vq, state = eqx.nn.make_with_state(VectorQuantizer)(
        8, 4, ema_decay=0.9, restart_threshold=10.0, key=getkey()
    )
    z = jnp.asarray(rng("tile").normal(size=(3, 4)), jnp.float32)  # 3 vectors, 8 dead codes
    _, state = vq(z, state, key=getkey(), update=True)
    codebook = ema_values(vq, state)[0]
    # Each code is a batch vector plus small noise (0.01 / √dim), all distinct.
    gaps = np.linalg.norm(codebook[:, None] - np.asarray(z)[None], axis=-1).min(axis=1)
    assert np.all(gaps < 0.05) and np.all(gaps > 0)
    assert len({tuple(row) for row in codebook}) == 8


# ----------------------------------------------------------------------------
# Statistics, folding the state in, jit and batched axes.
# ----------------------------------------------------------------------------


def test_perplexity_and_usage(getkey):
    g = rng("stats")
    n, dim = 10, 4
    vq = with_embedding(VectorQuantizer(n, dim, key=getkey()), g.normal(size=(n, dim)))
    z = g.normal(size=(3, 7, dim))
    out, _ = vq(jnp.asarray(z, jnp.float32))
    perplexity, usage = np_stats(np_nearest(z, np.asarray(vq.embedding)), n)
    assert 1 < perplexity < n and 0 < usage < 1
    np.testing.assert_allclose(float(out.perplexity), perplexity, rtol=1e-5)
    np.testing.assert_allclose(float(out.usage), usage, rtol=1e-6)
    # Every vector on one code: usage 1/n, perplexity 1.
    same = jnp.broadcast_to(vq.embedding[3], (5, dim))
    out, _ = vq(same)
    np.testing.assert_array_equal(np.asarray(out.codes), 3)
    np.testing.assert_allclose(float(out.usage), 1 / n, rtol=1e-6)
    np.testing.assert_allclose(float(out.perplexity), 1.0, rtol=1e-6)


def test_with_state_folds_the_ema_codebook(getkey):
    g = rng("fold")
    vq, state = eqx.nn.make_with_state(VectorQuantizer)(7, 3, ema_decay=0.5, key=getkey())
    z = jnp.asarray(g.normal(size=(4, 3)), jnp.float32)
    _, state = vq(z, state, update=True)
    codebook = ema_values(vq, state)[0]
    folded = vq.with_state(state)
    assert folded.ema is None and folded.embedding is not None
    codes = jnp.arange(7)
    np.testing.assert_array_equal(np.asarray(folded.lookup(codes)), codebook)
    np.testing.assert_array_equal(np.asarray(folded.codebook()), codebook)
    np.testing.assert_array_equal(np.asarray(vq.lookup(codes, state)), codebook)
    out_folded, none = folded(z)
    out, _ = vq(z, state)
    assert none is None
    np.testing.assert_array_equal(np.asarray(out_folded.codes), np.asarray(out.codes))
    np.testing.assert_allclose(float(out_folded.loss), float(out.loss), rtol=1e-6)
    assert float(out_folded.codebook_loss) == 0.0
    # The folded codebook is fixed: no gradient, no update.
    for f in (lambda m: m(z)[0].loss, lambda m: jnp.sum(m.lookup(codes))):
        np.testing.assert_array_equal(np.asarray(jax.grad(f)(folded).embedding), 0.0)
    with pytest.raises(ValueError, match="with_state"):
        folded(z, update=True)
    plain = VectorQuantizer(7, 3, key=getkey())
    assert plain.with_state(None) is plain


def test_jit_and_leading_axes(getkey):
    g = rng("jit")
    n, dim = 12, 5
    vq, state = eqx.nn.make_with_state(VectorQuantizer)(
        n, dim, ema_decay=0.9, restart_threshold=0.95, cosine=True, key=getkey()
    )
    z = jnp.asarray(g.normal(size=(2, 3, 4, dim)), jnp.float32)
    key = getkey()
    eager, eager_state = vq(z, clone(state), key=key, update=True)

    @eqx.filter_jit
    def step(m, x, s, k):
        return m(x, s, key=k, update=True)

    jitted, jit_state = step(vq, z, state, key)
    assert jitted.quantized.shape == z.shape and jitted.codes.shape == (2, 3, 4)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for a, b in zip(ema_values(vq, jit_state), ema_values(vq, eager_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The leading axes are one flattened batch: the same codes as a (24, dim) batch.
    flat, _ = vq(z.reshape(-1, dim), eager_state)
    again, _ = vq(z, eager_state)
    np.testing.assert_array_equal(np.asarray(flat.codes).reshape(2, 3, 4), np.asarray(again.codes))
    # A traced out-of-range code gives NaNs rather than a wrapped-around vector.
    rows = jax.jit(lambda c: vq.lookup(c, eager_state))(jnp.asarray([0, -1, n]))
    assert np.all(np.isfinite(np.asarray(rows[0]))) and np.all(np.isnan(np.asarray(rows[1:])))
    assert isinstance(jitted, Quantized)


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_embed=0), r"`n_embed` must be an int ≥ 1, got 0"),
        (dict(embed_dim=0), r"`embed_dim` must be an int ≥ 1, got 0"),
        (dict(beta=-0.1), r"`beta` must be ≥ 0, got -0.1"),
        (dict(ema_decay=1.0), r"`ema_decay` must be in \(0, 1\), got 1.0"),
        (dict(ema_decay=0.0), r"`ema_decay` must be in \(0, 1\), got 0.0"),
        (dict(eps=0.0), r"`eps` must be > 0, got 0.0"),
        (dict(restart_threshold=1.0), r"`restart_threshold` needs an EMA codebook"),
        (dict(ema_decay=0.9, restart_threshold=0.0), r"`restart_threshold` must be > 0"),
    ],
)
def test_bad_arguments(kwargs, match, getkey):
    args = dict(n_embed=4, embed_dim=3) | kwargs
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**args, key=getkey())


def test_bad_call_inputs(getkey):
    vq = VectorQuantizer(4, 3, key=getkey())
    with pytest.raises(ValueError, match=r"`z` must have shape \(\*batch, 3\), got \(2, 5\)"):
        vq(jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"`z` must hold at least one vector, got \(0, 3\)"):
        vq(jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"`codes` must lie in \[0, 4\), got code 4"):
        vq.lookup(jnp.asarray([0, 4]))
    with pytest.raises(ValueError, match=r"`codes` must lie in \[0, 4\), got code -1"):
        vq.lookup(np.asarray([[-1, 2]]))
    ema, state = eqx.nn.make_with_state(VectorQuantizer)(
        4, 3, ema_decay=0.9, restart_threshold=1.0, key=getkey()
    )
    z = jnp.ones((2, 3))
    for call in (lambda: ema(z), lambda: ema.lookup(jnp.asarray([0])), ema.codebook):
        with pytest.raises(ValueError, match=r"`state` is required.*got state=None"):
            call()
    with pytest.raises(ValueError, match=r"`key` is required for dead-code restarts"):
        ema(z, state, update=True)
    with pytest.raises(ValueError, match=r"`state` must hold the EMA codebook, got None"):
        ema.with_state(None)
