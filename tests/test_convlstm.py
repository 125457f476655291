"""The ConvLSTM baseline's layers: the cell against hand-written gates, the layer's
scan against stepping, and errors (the video model is tested with ConvS5's in
test_recurrent_models.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

import eqvid


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def conv_same_reference(x, w):
    """SAME, stride-1 cross-correlation of one `(H, W, I)` image with an HWIO kernel."""
    k = w.shape[0]
    p = k // 2
    xp = np.pad(x, ((p, p), (p, p), (0, 0)))
    h, wd = x.shape[:2]
    out = np.zeros((h, wd, w.shape[-1]))
    for dy in range(k):
        for dx in range(k):
            out += xp[dy : dy + h, dx : dx + wd] @ w[dy, dx]
    return out


def random_lstm_state(key, h, w, p):
    kh, kc = jax.random.split(key)
    return jax.random.normal(kh, (h, w, p)), jax.random.normal(kc, (h, w, p))


def test_cell_step_is_the_released_convlstm(getkey):
    u_size, p = 3, 5
    cell = eqvid.ConvLSTMCell(u_size, p, key=getkey())
    assert cell.weight.shape == (3, 3, u_size + p, 4 * p)
    assert [x.shape for x in jax.tree.leaves(cell)] == [(3, 3, u_size + p, 4 * p)]  # no bias
    state = random_lstm_state(getkey(), 5, 7, p)
    u = jax.random.normal(getkey(), (5, 7, u_size))
    (h, c), out = cell.step(state, u)

    w = np.asarray(cell.weight, np.float64)
    h0, c0 = (np.asarray(x, np.float64) for x in state)
    z = conv_same_reference(np.concatenate([np.asarray(u, np.float64), h0], -1), w)
    i, f, o, g = z[..., :p], z[..., p : 2 * p], z[..., 2 * p : 3 * p], z[..., 3 * p :]
    c_want = sigmoid(f) * c0 + sigmoid(i) * np.tanh(g)
    h_want = sigmoid(o) * np.tanh(c_want)
    np.testing.assert_allclose(c, c_want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, h_want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, h)
    # He-normal: variance 2 / fan_in with fan_in = 3·3·(U + P) (truncated, so ≈).
    big = eqvid.ConvLSTMCell(32, 32, key=getkey())
    assert 0.8 < float(jnp.var(big.weight)) * 9 * 64 / 2 < 1.1


def test_layer_scan_equals_stepping_and_is_post_norm_residual(getkey):
    layer = eqvid.ConvLSTM(6, key=getkey())
    u = jax.random.normal(getkey(), (8, 5, 7, 6))
    x0 = random_lstm_state(getkey(), 5, 7, 6)
    run = jax.jit(lambda u, x: layer(u, x))
    y, last = run(u, x0)
    x_step, y_step = jax.jit(lambda x, u: jax.lax.scan(lambda s, f: layer.step(s, f), x, u))(x0, u)
    assert y.shape == u.shape and last[0].shape == last[1].shape == (5, 7, 6)
    np.testing.assert_allclose(y, y_step, rtol=1e-5, atol=1e-5)
    for a, b in zip(last, x_step):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # out_t = LayerNorm_C(u_t + h_t), with h_t the cell's output.
    _, h1 = layer.cell.step(x0, u[0])
    np.testing.assert_allclose(y[0], layer.norm(u[0] + h1), rtol=1e-5, atol=1e-5)
    # The last state continues the video; no state means zeros.
    y1, s1 = run(u[:4], x0)
    y2, s2 = run(u[4:], s1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2]), y, rtol=1e-5, atol=1e-5)
    for a, b in zip(s2, last):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    zero = run(u[:4], layer.init_state(5, 7))[0]
    np.testing.assert_allclose(jax.jit(lambda u: layer(u)[0])(u[:4]), zero, rtol=1e-6)


def test_bad_inputs_name_the_argument(getkey):
    cell = eqvid.ConvLSTMCell(3, 4, key=getkey())
    with pytest.raises(ValueError, match=r"`u` must have 3 channels"):
        cell.step(cell.init_state(5, 5), jnp.zeros((5, 5, 2)))
    with pytest.raises(TypeCheckError, match="state"):
        bad_state = (jnp.zeros((6, 5, 4)), jnp.zeros((6, 5, 4)))  # height 6, not 5
        eqvid.ConvLSTM(4, key=getkey())(jnp.zeros((2, 5, 5, 4)), bad_state)
    for bad, match in (
        (dict(input_size=0), "input_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(kernel_size=4), "kernel_size"),
    ):
        args = dict(input_size=3, hidden_size=4, kernel_size=3) | bad
        with pytest.raises(ValueError, match=f"ConvLSTMCell: `{match}`"):
            eqvid.ConvLSTMCell(**args, key=getkey())
