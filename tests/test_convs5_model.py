"""The ConvS5 video model: preset sizes, teacher forcing vs rollout consistency,
learning on a fixed batch, and errors."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import TypeCheckError

import eqvid

TINY = eqvid.ConvS5Config(frame_size=16, encoder_depths=(4, 8), d_model=8, ssm_size=8, n_layers=2)


def count_params(config):
    shapes = eqx.filter_eval_shape(eqvid.ConvS5VideoModel, config, key=jax.random.key(0))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes) if hasattr(x, "shape"))


@pytest.mark.parametrize("name, paper", [("mnist-300", 21.68e6), ("mnist-600", 7.41e6)])
def test_paper_presets_have_the_paper_parameter_counts(name, paper):
    n = count_params(eqvid.ConvS5Config.preset(name))
    assert abs(n - paper) / paper < 0.05, n


def test_presets_and_unknown_preset():
    assert eqvid.ConvS5Config.preset("mnist-300").latent_size == 16
    with pytest.raises(ValueError, match="Unknown ConvS5 preset 'mnist-9000'.*mnist-300"):
        eqvid.ConvS5Config.preset("mnist-9000")


def random_video(key, t=8, size=16):
    return jnp.tanh(2 * jax.random.normal(key, (t, size, size, 1)))


def test_generate_equals_teacher_forcing_on_its_own_output(getkey):
    """Rolling out with the O(1) step must give the frames that the parallel
    teacher-forced pass predicts when fed the context plus those same frames."""
    model = eqvid.ConvS5VideoModel(TINY, key=getkey())
    context = random_video(getkey(), t=5)
    gen = jax.jit(lambda m, c: m.generate(c, 6))(model, context)
    assert gen.shape == (6, 16, 16, 1)
    assert float(jnp.abs(gen).max()) <= 1.0
    full = jnp.concatenate([context, gen], axis=0)
    for impl in ("xla", "sequential"):
        tf = jax.jit(lambda m, v, impl=impl: m(v, impl=impl))(
            model, full
        )  # predictions of frames 1..10
        np.testing.assert_allclose(tf[4:], gen, rtol=1e-5, atol=1e-5)


def test_batch_size_is_not_baked_in(getkey):
    model = eqvid.ConvS5VideoModel(TINY, key=getkey())
    predict = jax.jit(jax.vmap(model))
    generate = jax.jit(jax.vmap(lambda c: model.generate(c, 2)))
    for batch in (1, 3):
        videos = jax.vmap(lambda k: random_video(k, t=4))(jax.random.split(getkey(), batch))
        assert predict(videos).shape == (batch, 3, 16, 16, 1)
        assert generate(videos).shape == (batch, 2, 16, 16, 1)


def test_actions_condition_the_prediction(getkey):
    config = dataclasses.replace(TINY, action_dim=3, action_embed_dim=2)
    model = eqvid.ConvS5VideoModel(config, key=getkey())
    video = random_video(getkey(), t=4)
    a = model(video, jnp.array([-1, 0, 1, 2], jnp.int32))
    b = model(video, jnp.array([-1, 2, 1, 0], jnp.int32))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(video), model(video, jnp.full((4,), -1, jnp.int32)))


def test_loss_decreases_on_a_fixed_batch(getkey):
    model = eqvid.ConvS5VideoModel(TINY, key=getkey())
    videos = jax.vmap(lambda k: random_video(k, t=6))(jax.random.split(getkey(), 2))
    opt = optax.adam(3e-3)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean(jax.vmap(m.loss)(videos)))(model)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(25):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_loss_is_the_released_objective(getkey):
    model = eqvid.ConvS5VideoModel(TINY, key=getkey())
    video = random_video(getkey(), t=5)
    err = np.asarray(model(video)) - np.asarray(video[1:])
    want = 0.5 * np.mean(np.sum(err**2, axis=(-2, -1))) + 0.5 * np.mean(
        np.sum(np.abs(err), axis=(-2, -1))
    )
    np.testing.assert_allclose(float(model.loss(video)), want, rtol=1e-5)


def test_impossible_configurations_say_how_to_fix():
    with pytest.raises(ValueError, match=r"frame_size.*\(62\).*divisible.*4"):
        eqvid.ConvS5Config(frame_size=62)
    with pytest.raises(ValueError, match=r"ssm_size.*\(100\).*2 \* blocks = 64"):
        eqvid.ConvS5Config(ssm_size=100, blocks=32)
    with pytest.raises(ValueError, match=r"dt_min <= dt_max"):
        eqvid.ConvS5Config(dt_min=0.5, dt_max=0.1)


def test_bad_frames_name_the_argument(getkey):
    model = eqvid.ConvS5VideoModel(TINY, key=getkey())
    with pytest.raises(ValueError, match=r"`frames`.*\(16, 16, 1\).*\(32, 32, 1\)"):
        model(jnp.zeros((4, 32, 32, 1)))
    with pytest.raises(TypeCheckError, match="frames"):
        model(jnp.zeros((4, 16, 16)))  # missing channel axis
    with pytest.raises(ValueError, match=r"`context`"):
        model.generate(jnp.zeros((4, 16, 16, 3)), 2)
    with pytest.raises(ValueError, match=r"`actions`.*\(6,\)"):
        model.generate(jnp.zeros((4, 16, 16, 1)), 2, actions=jnp.zeros((4,), jnp.int32))
