"""Mamba and Mamba2 (the selective SSM layers): a NumPy restatement of the original's
reference math (state-spaces/mamba `selective_scan_ref`, `Mamba2` with
`rms_norm_ref`) from the parameters in the original's layout; the whole sequence ==
sequential scan == step by step == chunked; a sequence split in two through the
carried state; gradients; initialisation; parameter counts; bad input."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.nn import GatedRMSNorm, Mamba, Mamba2, SelectiveSSMState


def _count(layer) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(layer, eqx.is_array)))


def _silu(x):
    return x / (1 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(x))


def _conv(x, w, b):
    """PyTorch's depthwise Conv1d(padding=K-1) on (T, C), first T outputs kept;
    `w` (C, 1, K) as the original stores it."""
    t, k = x.shape[0], w.shape[-1]
    padded = np.concatenate([np.zeros((k - 1, x.shape[1])), x])
    return np.stack([(padded[i : i + k].T * w[:, 0, :]).sum(-1) + b for i in range(t)])


def mamba_reference(layer: Mamba, u: np.ndarray) -> np.ndarray:
    """The original's forward, restated from its state dict (torch layout)."""
    sd = {
        "in_proj.weight": np.asarray(layer.in_proj.weight).T,
        "conv1d.weight": np.asarray(layer.conv_weight)[:, None, :],
        "conv1d.bias": np.asarray(layer.conv_bias),
        "x_proj.weight": np.asarray(layer.x_proj.weight).T,
        "dt_proj.weight": np.asarray(layer.dt_proj.weight).T,
        "dt_proj.bias": np.asarray(layer.dt_proj.bias),
        "A_log": np.asarray(layer.A_log),
        "D": np.asarray(layer.D),
        "out_proj.weight": np.asarray(layer.out_proj.weight).T,
    }
    u = u.astype(np.float64)
    xz = u @ sd["in_proj.weight"].T
    d_inner = xz.shape[1] // 2
    x, z = xz[:, :d_inner], xz[:, d_inner:]  # x first, then z
    x = _silu(_conv(x, sd["conv1d.weight"], sd["conv1d.bias"]))
    r, n = layer.dt_rank, layer.d_state
    dbc = x @ sd["x_proj.weight"].T
    dt, B, C = dbc[:, :r], dbc[:, r : r + n], dbc[:, r + n :]  # dt, B, C
    delta = _softplus(dt @ sd["dt_proj.weight"].T + sd["dt_proj.bias"])
    A = -np.exp(sd["A_log"])
    h = np.zeros((d_inner, n))
    ys = []
    for t in range(u.shape[0]):
        h = np.exp(delta[t][:, None] * A) * h + (delta[t] * x[t])[:, None] * B[t][None, :]
        ys.append(h @ C[t] + sd["D"] * x[t])
    y = np.stack(ys) * _silu(z)
    return y @ sd["out_proj.weight"].T


def mamba2_reference(layer: Mamba2, u: np.ndarray) -> np.ndarray:
    """Mamba2's forward (`mamba_split_conv1d_scan_ref`), restated from its state dict."""
    sd = {
        "in_proj.weight": np.asarray(layer.in_proj.weight).T,
        "conv1d.weight": np.asarray(layer.conv_weight)[:, None, :],
        "conv1d.bias": np.asarray(layer.conv_bias),
        "dt_bias": np.asarray(layer.dt_bias),
        "A_log": np.asarray(layer.A_log),
        "D": np.asarray(layer.D),
        "norm.weight": np.asarray(layer.norm.weight),
        "out_proj.weight": np.asarray(layer.out_proj.weight).T,
    }
    u = u.astype(np.float64)
    d, g, n, p = layer.d_inner, layer.ngroups, layer.d_state, layer.headdim
    heads = d // p
    zxbcdt = u @ sd["in_proj.weight"].T
    z, xbc, dt = zxbcdt[:, :d], zxbcdt[:, d : 2 * d + 2 * g * n], zxbcdt[:, 2 * d + 2 * g * n :]
    xbc = _silu(_conv(xbc, sd["conv1d.weight"], sd["conv1d.bias"]))
    x, B, C = xbc[:, :d], xbc[:, d : d + g * n], xbc[:, d + g * n :]
    dt = _softplus(dt + sd["dt_bias"])
    A = -np.exp(sd["A_log"])
    S = np.zeros((heads, p, n))
    ys = []
    for t in range(u.shape[0]):
        yt = np.zeros((heads, p))
        for h in range(heads):
            grp = h // (heads // g)
            xh = x[t, h * p : (h + 1) * p]
            Bg, Cg = B[t, grp * n : (grp + 1) * n], C[t, grp * n : (grp + 1) * n]
            S[h] = np.exp(dt[t, h] * A[h]) * S[h] + dt[t, h] * np.outer(xh, Bg)
            yt[h] = S[h] @ Cg + sd["D"][h] * xh
        ys.append(yt.reshape(d))
    y = np.stack(ys) * _silu(z)  # norm_before_gate=False: gate, then RMS per group
    yg = y.reshape(y.shape[0], g, d // g)
    yg = yg / np.sqrt(np.mean(yg**2, axis=-1, keepdims=True) + 1e-5)
    y = yg.reshape(y.shape) * sd["norm.weight"]
    return y @ sd["out_proj.weight"].T


def _stepwise(layer, u, state=None):
    state = layer.init_state() if state is None else state
    state, ys = jax.lax.scan(lambda s, x: layer.step(s, x), state, u)
    return ys, state


def _perturbed(layer, key):
    """Random non-trivial values for D and the norm (the inits are all ones)."""
    k1, k2 = jax.random.split(key)
    layer = eqx.tree_at(lambda m: m.D, layer, 1 + 0.3 * jax.random.normal(k1, layer.D.shape))
    if isinstance(layer, Mamba2):
        w = 1 + 0.3 * jax.random.normal(k2, layer.norm.weight.shape)
        layer = eqx.tree_at(lambda m: m.norm.weight, layer, w)
    return layer


def test_mamba_matches_the_originals_reference_math():
    key = jax.random.key(0)
    layer = _perturbed(Mamba(16, d_state=5, d_conv=4, expand=2, key=key), jax.random.key(1))
    assert layer.dt_rank == 1 and layer.d_inner == 32
    u = jax.random.normal(jax.random.key(2), (11, 16))
    y, _ = layer(u)
    np.testing.assert_allclose(y, mamba_reference(layer, np.asarray(u)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ngroups,scan", [(1, "chunked"), (2, "chunked"), (2, "linear")])
def test_mamba2_matches_the_originals_reference_math(ngroups, scan):
    layer = Mamba2(16, d_state=6, headdim=8, ngroups=ngroups, scan=scan, key=jax.random.key(3))
    layer = _perturbed(layer, jax.random.key(4))
    assert layer.heads == 4
    u = jax.random.normal(jax.random.key(5), (9, 16))
    y, _ = layer(u)
    np.testing.assert_allclose(y, mamba2_reference(layer, np.asarray(u)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda k, impl: Mamba(12, d_state=4, d_conv=3, scan_impl=impl, key=k),
        lambda k, impl: Mamba2(
            12, d_state=4, headdim=6, ngroups=2, scan="linear", scan_impl=impl, key=k
        ),
        lambda k, impl: Mamba2(12, d_state=4, headdim=6, ngroups=2, chunk_size=4, key=k),
    ],
    ids=["mamba", "mamba2", "mamba2-chunked"],
)
def test_parallel_sequential_and_stepwise_agree_and_carry_the_state(make):
    key = jax.random.key(6)
    parallel, sequential = make(key, "xla"), make(key, "sequential")
    u = jax.random.normal(jax.random.key(7), (13, 12))
    y_par, s_par = parallel(u)
    y_seq, s_seq = sequential(u)
    y_step, s_step = _stepwise(parallel, u)
    for y, s in ((y_seq, s_seq), (y_step, s_step)):
        np.testing.assert_allclose(y, y_par, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.ssm, s_par.ssm, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.conv, s_par.conv, rtol=1e-6, atol=1e-6)
    # A sequence in two calls, the state carried: the same as in one call.
    y1, s1 = parallel(u[:5])
    y2, s2 = parallel(u[5:], s1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2]), y_par, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2.ssm, s_par.ssm, rtol=1e-5, atol=1e-5)
    # Streaming after a parallel prefix (how a model generates after its context).
    y3, _ = _stepwise(parallel, u[5:], s1)
    np.testing.assert_allclose(y3, y_par[5:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_chunked_form_and_its_gradients_match_the_scan(ngroups):
    key = jax.random.key(8)
    linear = Mamba2(
        8, d_state=4, headdim=4, ngroups=ngroups, scan="linear", scan_impl="xla",
        use_mem_eff_path=False, key=key,
    )  # fmt: skip
    chunked = Mamba2(  # recomputed in the backward pass (use_mem_eff_path)
        8, d_state=4, headdim=4, ngroups=ngroups, scan="chunked", chunk_size=4, key=key
    )
    u = jax.random.normal(jax.random.key(9), (10, 8))  # not a multiple of the chunk
    state = SelectiveSSMState(
        conv=jax.random.normal(jax.random.key(10), linear.init_state().conv.shape),
        ssm=jax.random.normal(jax.random.key(11), linear.init_state().ssm.shape),
    )
    (y_l, s_l), (y_c, s_c) = linear(u, state), chunked(u, state)
    np.testing.assert_allclose(y_c, y_l, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_c.ssm, s_l.ssm, rtol=1e-5, atol=1e-5)

    def loss(layer, u):
        y, s = layer(u, state)
        return jnp.sum(jnp.sin(y)) + jnp.sum(s.ssm**2)

    g_l = eqx.filter_grad(loss)(linear, u)
    g_c = eqx.filter_grad(loss)(chunked, u)
    for a, b in zip(jax.tree.leaves(g_l), jax.tree.leaves(g_c)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_initialisation_and_parameter_counts_follow_the_original():
    m = Mamba(256, d_state=16, key=jax.random.key(12))
    np.testing.assert_allclose(np.exp(m.A_log[3]), np.arange(1, 17), rtol=1e-6)  # S4D-real
    assert m.dt_proj.bias is not None
    dt = jax.nn.softplus(m.dt_proj.bias)
    assert float(dt.min()) >= 1e-3 * 0.999 and float(dt.max()) <= 0.1 * 1.001
    bound = 1 / math.sqrt(4)
    assert float(jnp.abs(m.conv_weight).max()) <= bound  # PyTorch's Conv1d default
    # 256 → d_inner 512, dt_rank 16: in 256·1024, conv 512·4 + 512, x_proj 512·48,
    # dt_proj 16·512 + 512, A_log 512·16, D 512, out 512·256.
    assert _count(m) == 262144 + 2560 + 24576 + 8704 + 8192 + 512 + 131072

    # SlotSSM's CLEVRER time mixer: Mamba2(256, d_state 128, headdim 64) is 465,176.
    m2 = Mamba2(256, key=jax.random.key(13))
    assert m2.heads == 8 and _count(m2) == 465_176
    a = np.exp(np.asarray(m2.A_log))
    assert a.min() >= 1 and a.max() <= 16
    dt2 = jax.nn.softplus(m2.dt_bias)
    assert float(dt2.min()) >= 1e-3 * 0.999 and float(dt2.max()) <= 0.1 * 1.001


def test_gated_rms_norm_gates_then_normalises_per_group():
    norm = GatedRMSNorm(6, group_size=3)
    x = jax.random.normal(jax.random.key(14), (2, 6))
    z = jax.random.normal(jax.random.key(15), (2, 6))
    g = np.asarray(x) * _silu(np.asarray(z))
    g = g.reshape(2, 2, 3)
    want = (g / np.sqrt((g**2).mean(-1, keepdims=True) + 1e-5)).reshape(2, 6)
    np.testing.assert_allclose(norm(x, z), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="group_size"):
        GatedRMSNorm(6, group_size=4)


def test_bad_input_is_refused_by_name():
    m = Mamba(8, key=jax.random.key(16))
    with pytest.raises(ValueError, match=r"Mamba: `u` must be \(time ≥ 1, d_model = 8\)"):
        m(jnp.zeros((3, 7)))
    with pytest.raises(ValueError, match=r"Mamba.step: `u` must be \(8,\)"):
        m.step(m.init_state(), jnp.zeros((7,)))
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(8, headdim=5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(8, headdim=4, ngroups=3, key=jax.random.key(0))
    with pytest.raises((ValueError, TypeError), match="scan"):  # the runtime type check
        Mamba2(8, headdim=4, scan="fft", key=jax.random.key(0))  # type: ignore[arg-type]


def _make_pair(kind, segment):
    """The same layer with and without the segmented memory-efficient path."""
    key = jax.random.key(13)
    if kind == "mamba":
        make = lambda **kw: Mamba(8, d_state=4, scan_impl="xla", key=key, **kw)
    else:
        make = lambda **kw: Mamba2(8, d_state=4, headdim=4, chunk_size=2, key=key, **kw)
    return make(use_mem_eff_path=False), make(checkpoint_segment=segment)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("segment", [3, 4, 16])  # a remainder, whole segments, one short one
def test_segmented_memory_efficient_path_gives_the_same_values_and_gradients(kind, segment):
    plain, segmented = _make_pair(kind, segment)
    init = plain.init_state()
    state = SelectiveSSMState(
        conv=jax.random.normal(jax.random.key(14), init.conv.shape),
        ssm=jax.random.normal(jax.random.key(15), init.ssm.shape),
    )
    u = jax.random.normal(jax.random.key(16), (11, 8))
    (y_p, s_p), (y_s, s_s) = plain(u, state), segmented(u, state)
    np.testing.assert_allclose(y_s, y_p, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_s.ssm, s_p.ssm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_s.conv, s_p.conv, rtol=1e-6, atol=1e-6)

    def loss(layer, u, state):
        y, s = layer(u, state)
        return jnp.sum(jnp.sin(y)) + jnp.sum(s.ssm**2) + jnp.sum(jnp.cos(s.conv))

    g_p = eqx.filter_grad(loss)(plain, u, state)
    g_s = eqx.filter_grad(loss)(segmented, u, state)
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_s)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    gu_p = jax.grad(loss, argnums=(1, 2))(plain, u, state)
    gu_s = jax.grad(loss, argnums=(1, 2))(segmented, u, state)
    for a, b in zip(jax.tree.leaves(gu_p), jax.tree.leaves(gu_s)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_segmented_path_bounds_the_backward_passs_memory(kind):
    # The compiled gradient's temporary memory (XLA's own count, not a timing):
    # recomputing 32-step segments one at a time must hold far less than keeping the
    # whole 1,024-step sequence's intermediates.
    plain, segmented = _make_pair(kind, 32)
    u = jnp.zeros((1024, 8))

    def temp_bytes(layer):
        params, static = eqx.partition(layer, eqx.is_array)
        loss = lambda params, u: jnp.sum(eqx.combine(params, static)(u)[0] ** 2)
        analysis = jax.jit(jax.grad(loss)).lower(params, u).compile().memory_analysis()
        assert analysis is not None
        return analysis.temp_size_in_bytes

    plain_bytes, segmented_bytes = temp_bytes(plain), temp_bytes(segmented)
    assert segmented_bytes < 0.5 * plain_bytes, (segmented_bytes, plain_bytes)
