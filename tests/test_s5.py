"""The S5 layer and the S5 temporal core: the layer against a NumPy restatement of
ConvSSM's S5 (`src/models/S5/diagonal_ssm.py` and `layers.py`: ZOH, the sequential
recurrence, `2·Re(C̃x) + D⊙u`, tanh-GELU, the gate, post-LayerNorm), every way to run it
(parallel scan, sequential scan, steps), its initialisation, and the core's steps against
its whole-sequence pass."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.nn import S5, S5Core, hippo_block_init


def numpy_s5(layer: S5, u: np.ndarray, x0: np.ndarray | None = None):
    """ConvSSM's `S5SSM` + `SequenceLayer` (use_norm, post-norm, per-layer skip), in
    float64 NumPy from the layer's parameters: `(outputs, last_state)`."""
    names = ("lambda_re", "lambda_im", "log_step", "B", "C", "D")
    p = {k: np.asarray(getattr(layer, k), np.float64) for k in names}
    lam = p["lambda_re"] + 1j * p["lambda_im"]
    step = np.exp(p["log_step"])
    lam_bar = np.exp(lam * step)
    b_tilde = p["B"][..., 0] + 1j * p["B"][..., 1]  # (P, U)
    b_bar = ((lam_bar - 1) / lam)[:, None] * b_tilde
    c_tilde = p["C"][..., 0] + 1j * p["C"][..., 1]  # (U, P)
    x = np.zeros(lam.shape, np.complex128) if x0 is None else np.asarray(x0, np.complex128)
    ys = []
    for u_t in u.astype(np.float64):
        x = lam_bar * x + b_bar @ u_t
        ys.append(2 * (c_tilde @ x).real)
    y = np.stack(ys) + p["D"] * u
    g = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))  # gelu, tanh
    w = np.asarray(layer.gate.weight, np.float64)
    b = np.asarray(layer.gate.bias, np.float64)
    g = g / (1 + np.exp(-(g @ w + b)))
    h = u + g
    mean = h.mean(-1, keepdims=True)
    var = ((h - mean) ** 2).mean(-1, keepdims=True)
    out = (h - mean) / np.sqrt(var + 1e-6) * np.asarray(layer.norm.weight) + np.asarray(
        layer.norm.bias
    )
    return out, x


@pytest.fixture(scope="module")
def layer():
    s5 = S5(6, 8, blocks=2, key=jax.random.key(0))
    # Move every parameter off its initial value, so the check sees each of them.
    leaves, tree = jax.tree.flatten(s5)
    keys = jax.random.split(jax.random.key(9), len(leaves))
    moved = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, moved)


def test_the_layer_is_convssms_s5_in_every_way_to_run_it(layer):
    u = np.asarray(jax.random.normal(jax.random.key(1), (7, 6)))
    re, im = np.asarray(jax.random.normal(jax.random.key(2), (2, 4)))
    x0 = re + 1j * im
    want, want_last = numpy_s5(layer, u, x0)
    for impl in ("xla", "sequential"):
        out, last = layer(jnp.asarray(u), jnp.asarray(x0, jnp.complex64), impl=impl)
        np.testing.assert_allclose(out, want, atol=2e-5, err_msg=impl)
        np.testing.assert_allclose(last, want_last, atol=2e-5, err_msg=impl)
    state, outs = jnp.asarray(x0, jnp.complex64), []
    for u_t in u:
        state, o = layer.step(state, jnp.asarray(u_t))
        outs.append(o)
    np.testing.assert_allclose(np.stack(outs), want, atol=2e-5)
    np.testing.assert_allclose(state, want_last, atol=2e-5)
    # From the zero state, and the same through jit.
    out, _ = eqx.filter_jit(lambda m, u: m(u))(layer, jnp.asarray(u))
    np.testing.assert_allclose(out, numpy_s5(layer, u)[0], atol=2e-5)


def test_initialisation_is_convssms():
    layer = S5(16, 32, blocks=2, dt_min=1e-3, dt_max=1e-1, key=jax.random.key(3))
    lam, _, _ = hippo_block_init(32, 2)
    np.testing.assert_allclose(layer.lambda_re, np.real(lam), rtol=1e-6)
    np.testing.assert_allclose(layer.lambda_im, np.imag(lam), rtol=1e-6)
    assert layer.B.shape == (16, 16, 2) and layer.C.shape == (16, 16, 2)
    assert layer.log_step.shape == (16,) and layer.state_size == 16
    step = np.exp(np.asarray(layer.log_step))
    assert step.min() >= 1e-3 and step.max() <= 1e-1
    # C̃ = C V with C's entries LeCun-normal over fan-in ssm_size: V's columns are
    # orthonormal, so C̃'s real and imaginary parts keep C's variance, 1 / ssm_size.
    big = S5(64, 256, key=jax.random.key(4))
    assert abs(float(jnp.var(big.C)) * 256 - 1.0) < 0.1
    assert abs(float(jnp.std(big.D)) - 1.0) < 0.15
    np.testing.assert_array_equal(big.gate.bias, 0.0)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"`ssm_size` \(6\) must split into `blocks` \(2\)"):
        S5(4, 6, blocks=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        S5(4, 8, dt_min=0.1, dt_max=0.01, key=jax.random.key(0))
    layer = S5(4, 8, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`u` must be \(time, channels\) with 4 channels"):
        layer(jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"`u` must be \(channels,\) with 4 channels"):
        layer.step(layer.init_state(), jnp.zeros((5,)))


def test_the_core_steps_as_it_runs_the_whole_sequence():
    core = S5Core(5, 3, latent=4, d_model=16, ssm_size=8, n_layers=2, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 4, 4, 5))
    whole = core(x)
    assert whole.shape == (6, 4, 4, 3)
    state, first = core.prefill(core.init_state(6), x[:2])
    np.testing.assert_allclose(first, whole[:2], atol=1e-5)
    for i in range(2, 6):
        state, y = core.step(state, x[i], jnp.asarray(i))
        np.testing.assert_allclose(y, whole[i], atol=1e-5)
    # Flattening: one frame's whole grid feeds one vector (a change anywhere in frame 0
    # reaches every cell of every output).
    nudged = core(x.at[0, 3, 3].add(1.0))
    assert bool(jnp.all(jnp.abs(nudged - whole).max(axis=-1) > 0))
