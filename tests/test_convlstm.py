"""The ConvLSTM baseline: the cell against hand-written gates, the layer's scan against
stepping, the video model's rollout against a Python loop of `step`, learning on a
fixed batch, the paper presets' parameter counts, and errors."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import TypeCheckError

import eqvid

# Model construction compiles one small XLA program per distinct weight shape (~0.3 s
# each on a 2-core CPU), so the test models share their encoder widths.
TINY = eqvid.ConvLSTMConfig(
    frame_size=16,
    encoder_depths=(8, 16),
    d_model=8,
    n_layers=2,
    action_dim=3,
    action_embed_dim=2,
)


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


def random_video(key, t=8, size=16):
    return jnp.tanh(2 * jax.random.normal(key, (t, size, size, 1)))


def test_generate_equals_a_python_loop_of_steps_and_teacher_forcing(getkey):
    model = eqvid.ConvLSTMVideoModel(TINY, key=getkey())
    context = random_video(getkey(), t=4)
    actions = jax.random.randint(getkey(), (7,), -1, 3, jnp.int32)
    gen = jax.jit(lambda m, c, a: m.generate(c, 3, actions=a))(model, context, actions)
    assert gen.shape == (3, 16, 16, 1)

    step = eqx.filter_jit(lambda m, s, f, a: m.step(s, f, a))
    states, want = model.init_state(), []
    for t in range(4):  # context: frame t with the action towards frame t + 1
        states, pred = step(model, states, context[t], actions[t + 1])
    want.append(pred)
    for t in range(4, 6):  # feed predictions back
        states, pred = step(model, states, pred, actions[t + 1])
        want.append(pred)
    np.testing.assert_allclose(gen, jnp.stack(want), rtol=1e-5, atol=1e-5)

    # Teacher forcing on the context plus the generated frames predicts the same
    # frames (batched: the batch size is not baked in), and the loss is the released
    # objective on those predictions.
    full = jnp.concatenate([context, gen])
    tf, loss = jax.jit(jax.vmap(lambda v, a: (model(v, a), model.loss(v, a))))(
        full[None], actions[None]
    )
    assert tf.shape == (1, 6, 16, 16, 1)
    np.testing.assert_allclose(tf[0, 3:], gen, rtol=1e-5, atol=1e-5)
    err = np.asarray(tf[0]) - np.asarray(full[1:])
    released = 0.5 * np.mean(np.sum(err**2, axis=(-2, -1))) + 0.5 * np.mean(
        np.sum(np.abs(err), axis=(-2, -1))
    )
    np.testing.assert_allclose(float(loss[0]), released, rtol=1e-5)


def moving_squares(batch, t, size, side=4):
    """Videos of a bright square on a dark background moving one pixel right per frame."""
    v = -np.ones((batch, t, size, size, 1), np.float32)
    for b in range(batch):
        row = (2 + 3 * b) % (size - side)
        for i in range(t):
            col = (b + i) % (size - side + 1)
            v[b, i, row : row + side, col : col + side] = 1.0
    return jnp.asarray(v)


def test_loss_decreases_on_a_fixed_batch(getkey):
    # The small preset's widths (d_model 64, 2 layers) on 16x16 frames, 2 encoder stages.
    config = dataclasses.replace(
        eqvid.ConvLSTMConfig.preset("small"), frame_size=16, encoder_depths=(8, 16)
    )
    model = eqvid.ConvLSTMVideoModel(config, key=getkey())
    videos = moving_squares(batch=2, t=6, size=16)
    opt = optax.adam(3e-3)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean(jax.vmap(m.loss)(videos)))(model)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(20):
        model, state, loss = train_step(model, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    # The first steps learn the dark background; the rest must keep improving.
    assert losses[-1] < 0.15 * losses[0], losses
    assert losses[-1] < 0.5 * losses[2], losses


def count_params(config):
    shapes = jax.eval_shape(
        lambda k: eqx.filter(eqvid.ConvLSTMVideoModel(config, key=k), eqx.is_inexact_array),
        jax.random.key(0),
    )
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name, paper", [("mnist-300", 40.54e6), ("mnist-600", 12.12e6)])
def test_paper_presets_have_the_paper_parameter_counts(name, paper):
    n = count_params(eqvid.ConvLSTMConfig.preset(name))
    assert abs(n - paper) / paper < 0.005, n


def test_presets():
    small, convs5 = eqvid.ConvLSTMConfig.preset("small"), eqvid.ConvS5Config.preset("small")
    for field in ("frame_size", "channels", "encoder_depths", "d_model", "n_layers"):
        assert getattr(small, field) == getattr(convs5, field), field
    assert eqvid.ConvLSTMConfig.preset("mnist-600").latent_size == 16
    assert set(eqvid.models.CONVLSTM_PRESETS) == {"mnist-300", "mnist-600", "small"}
    with pytest.raises(ValueError, match="Unknown ConvLSTM preset 'mnist-9000'.*mnist-300"):
        eqvid.ConvLSTMConfig.preset("mnist-9000")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(frame_size=62), r"ConvLSTMConfig: `frame_size` \(62\).*divisible.*4"),
        (dict(encoder_depths=()), r"`encoder_depths`"),
        (dict(d_model=0), r"`d_model` must be positive"),
        (dict(n_layers=0), r"`n_layers` must be positive"),
        (dict(kernel_size=2), r"`kernel_size` must be a positive odd"),
        (dict(loss_weight=1.5), r"`loss_weight` must be in \[0, 1\]"),
    ],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        eqvid.ConvLSTMConfig(**kwargs)


def test_bad_inputs_name_the_argument(getkey):
    model = eqvid.ConvLSTMVideoModel(TINY, key=getkey())
    shape_error = r"ConvLSTMVideoModel: `frames`.*\(16, 16, 1\).*\(32, 32, 1\)"
    with pytest.raises(ValueError, match=shape_error):
        model(jnp.zeros((4, 32, 32, 1)))
    with pytest.raises(TypeCheckError, match="frames"):
        model(jnp.zeros((4, 16, 16)))  # missing channel axis
    with pytest.raises(ValueError, match=r"`frames` needs at least 2 frames.*got 1"):
        model.loss(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match=r"`context`"):
        model.generate(jnp.zeros((4, 16, 16, 3)), 2)
    with pytest.raises(ValueError, match=r"`context` needs at least 1 frame"):
        model.generate(jnp.zeros((0, 16, 16, 1)), 2)
    with pytest.raises(ValueError, match=r"`num_frames` must be ≥ 1"):
        model.generate(jnp.zeros((4, 16, 16, 1)), 0)
    with pytest.raises(ValueError, match=r"`actions`.*\(6,\)"):
        model.generate(jnp.zeros((4, 16, 16, 1)), 2, actions=jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match=r"`frame`"):
        model.step(model.init_state(), jnp.zeros((8, 8, 1)))
    cell = eqvid.ConvLSTMCell(3, 4, key=getkey())
    with pytest.raises(ValueError, match=r"`u` must have 3 channels"):
        cell.step(cell.init_state(5, 5), jnp.zeros((5, 5, 2)))
    with pytest.raises(TypeCheckError, match="state"):
        eqvid.ConvLSTM(4, key=getkey())(jnp.zeros((2, 5, 5, 4)), (jnp.zeros((6, 5, 4)),) * 2)
    for bad, match in (
        (dict(input_size=0), "input_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(kernel_size=4), "kernel_size"),
    ):
        args = dict(input_size=3, hidden_size=4, kernel_size=3) | bad
        with pytest.raises(ValueError, match=f"ConvLSTMCell: `{match}`"):
            eqvid.ConvLSTMCell(**args, key=getkey())
