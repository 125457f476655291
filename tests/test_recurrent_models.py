"""The recurrent frame predictors (ConvS5 and ConvLSTM: one model written once over
the sequence-layer interface): exact paper parameter counts, generation against
teacher forcing and a Python loop of steps, the released loss and its terms, the
batch never baked in, learning on a fixed batch, validation in one place, and
checkpoints written before the registry still loading and generating the same."""

import dataclasses
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import TypeCheckError

import eqvid
from eqvid.models import VideoBatch

FIXTURES = pathlib.Path(__file__).parent / "data" / "pre_registry_runs"

# Model construction compiles one small XLA program per distinct weight shape, so the
# test models share their widths.
TINY = {
    "convs5": eqvid.ConvS5Config(
        frame_size=16, encoder_depths=(8, 16), d_model=8, ssm_size=8, n_layers=2, action_dim=3
    ),
    "convlstm": eqvid.ConvLSTMConfig(
        frame_size=16, encoder_depths=(8, 16), d_model=8, n_layers=2, action_dim=3
    ),
}
FAMILIES = sorted(TINY)


def build(name, key, **changes) -> eqvid.AbstractRecurrentVideoModel:
    model, state = eqvid.make_model(dataclasses.replace(TINY[name], **changes), key=key)
    assert state is None and isinstance(model, eqvid.AbstractRecurrentVideoModel)
    return model


def random_video(key, t=8, size=16):
    return jnp.tanh(2 * jax.random.normal(key, (t, size, size, 1)))


def count_params(config):
    shapes = eqx.filter_eval_shape(lambda k: eqvid.make_model(config, key=k)[0], jax.random.key(0))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes) if hasattr(x, "shape"))


@pytest.mark.parametrize(
    "config_class, preset, count",
    [
        (eqvid.ConvS5Config, "mnist-300", 21_681_411),
        (eqvid.ConvS5Config, "mnist-600", 7_409_155),
        (eqvid.ConvLSTMConfig, "mnist-300", 40_540_419),
        (eqvid.ConvLSTMConfig, "mnist-600", 12_120_067),
    ],
)
def test_paper_presets_have_exactly_the_released_parameter_counts(config_class, preset, count):
    assert count_params(config_class.preset(preset)) == count


@pytest.mark.parametrize("name, skip", [(n, False) for n in FAMILIES] + [("convs5", True)])
def test_generate_equals_a_loop_of_steps_and_teacher_forcing(name, skip, getkey):
    """Rolling out with the O(1) step gives the frames a Python loop of `step` gives,
    and the frames the parallel teacher-forced pass predicts when fed the context plus
    those same frames; the batched loss is the released objective with its terms. With
    the decoder skip each prediction also depends on its input frame's detail."""
    model = build(name, getkey(), decoder_skip=skip)
    context = random_video(getkey(), t=4)
    actions = jax.random.randint(getkey(), (7,), -1, 3, jnp.int32)
    gen = jax.jit(lambda m, c, a, k: m.generate(c, 3, key=k, actions=a))(
        model, context, actions, getkey()
    )
    assert gen.shape == (3, 16, 16, 1)
    assert float(jnp.abs(gen).max()) <= 1.0

    step = eqx.filter_jit(lambda m, s, f, a: m.step(s, f, a))
    states, want = model.init_state(), []
    for t in range(4):  # context: frame t with the action towards frame t + 1
        states, prediction = step(model, states, context[t], actions[t + 1])
        if t == 3:
            want.append(prediction)
    for t in range(4, 6):  # feed predictions back
        states, prediction = step(model, states, want[-1], actions[t + 1])
        want.append(prediction)
    np.testing.assert_allclose(gen, jnp.stack(want), rtol=1e-5, atol=1e-5)

    full = jnp.concatenate([context, gen])
    batch = VideoBatch(full[None], actions[None])
    tf, (loss, terms, state) = jax.jit(lambda m, b: (jax.vmap(m)(b.video, b.actions), m.loss(b)))(
        model, batch
    )
    assert state is None
    np.testing.assert_allclose(tf[0, 3:], gen, rtol=1e-5, atol=1e-5)
    err = np.asarray(tf[0], np.float64) - np.asarray(full[1:], np.float64)
    sq = np.mean(np.sum(err**2, axis=(-2, -1)))
    ab = np.mean(np.sum(np.abs(err), axis=(-2, -1)))
    np.testing.assert_allclose(float(terms["squared_error"]), sq, rtol=1e-5)
    np.testing.assert_allclose(float(terms["absolute_error"]), ab, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.5 * sq + 0.5 * ab, rtol=1e-5)
    if skip:  # the skip carries the input's detail: a change of one pixel reaches
        # the prediction without passing the latent grid (zeroed here)
        nudged = context.at[-2, 0, 0, 0].add(0.5)  # the last prediction's input
        zero_latent = eqx.tree_at(
            lambda m: m.project, model, replace_fn=lambda p: jax.tree.map(jnp.zeros_like, p)
        )
        outs = [jax.jit(lambda m, v: m(v))(zero_latent, v)[-1] for v in (context, nudged)]
        assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-4


def test_convs5_scans_agree_with_the_rollout(getkey):
    """The parallel (`xla`) and `sequential` scans give the frames the O(1) rollout
    gives."""
    key = getkey()
    context = random_video(getkey(), t=5)
    gen = None
    for impl in ("xla", "sequential"):
        model = build("convs5", key, scan_impl=impl)
        if gen is None:
            gen = jax.jit(lambda m, c: m.generate(c, 6, key=jax.random.key(0)))(model, context)
        tf = jax.jit(lambda m, v: m(v))(model, jnp.concatenate([context, gen]))
        np.testing.assert_allclose(tf[4:], gen, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_size_is_not_baked_in_and_actions_condition(name, getkey):
    model = build(name, getkey())
    predict = jax.jit(jax.vmap(model))
    for batch in (1, 3):
        videos = jax.vmap(lambda k: random_video(k, t=4))(jax.random.split(getkey(), batch))
        assert predict(videos).shape == (batch, 3, 16, 16, 1)
        assert eqvid.rollout(model, videos, 2, key=getkey()).shape == (batch, 2, 16, 16, 1)
    video = random_video(getkey(), t=4)
    a = model(video, jnp.array([-1, 0, 1, 2], jnp.int32))
    b = model(video, jnp.array([-1, 2, 1, 0], jnp.int32))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(video), model(video, jnp.full((4,), -1, jnp.int32)))


def moving_squares(batch, t, size, side=4):
    """Videos of a bright square on a dark background moving one pixel right per frame."""
    v = -np.ones((batch, t, size, size, 1), np.float32)
    for b in range(batch):
        row = (2 + 3 * b) % (size - side)
        for i in range(t):
            col = (b + i) % (size - side + 1)
            v[b, i, row : row + side, col : col + side] = 1.0
    return jnp.asarray(v)


@pytest.mark.parametrize("name", FAMILIES)
def test_loss_decreases_on_a_fixed_batch(name, getkey):
    model = build(name, getkey(), d_model=32, action_dim=1)
    batch = VideoBatch(moving_squares(batch=2, t=6, size=16))
    opt = optax.adam(3e-3)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: m.loss(batch)[0])(model)
        with jax.numpy_dtype_promotion("standard"):  # optax promotes implicitly
            updates, state = opt.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(20):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    # The first steps learn the dark background; the rest must keep improving.
    assert losses[-1] < 0.3 * losses[0], losses
    assert losses[-1] < 0.7 * losses[2], losses


def test_dropout_draws_from_the_key(getkey):
    model = build("convs5", getkey(), dropout=0.3)
    batch = VideoBatch(random_video(getkey(), t=4)[None])
    k1, k2 = jax.random.split(getkey())
    assert float(model.loss(batch, key=k1)[0]) != float(model.loss(batch, key=k2)[0])
    assert float(model.loss(batch, key=k1)[0]) == float(model.loss(batch, key=k1)[0])
    assert float(model.loss(batch)[0]) == float(model.loss(batch)[0])  # no key: no dropout
    # One key per video (as training passes them) is the same as the split key.
    keys = jax.random.split(k1, 1)
    assert float(model.loss(batch, key=keys)[0]) == float(model.loss(batch, key=k1)[0])


@pytest.mark.parametrize("config_class", [eqvid.ConvS5Config, eqvid.ConvLSTMConfig])
@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(frame_size=62), r"`frame_size` \(62\).*divisible.*4"),
        (dict(encoder_depths=()), r"`encoder_depths`"),
        (dict(d_model=0), r"`d_model` must be an int ≥ 1"),
        (dict(n_layers=0), r"`n_layers` must be an int ≥ 1"),
        (dict(channels=0), r"`channels` must be an int ≥ 1"),
        (dict(kernel_size=2), r"`kernel_size` must be a positive odd"),
        (dict(loss_weight=1.5), r"`loss_weight` must be in \[0, 1\]"),
    ],
)
def test_bad_configs_name_the_field_in_both_families(config_class, changes, match):
    with pytest.raises(ValueError, match=f"{config_class.__name__}: {match}"):
        config_class(**changes)


def test_convs5_config_errors():
    with pytest.raises(ValueError, match=r"ssm_size.*\(100\).*2 \* blocks = 64"):
        eqvid.ConvS5Config(ssm_size=100, blocks=32)
    with pytest.raises(ValueError, match=r"dt_min <= dt_max"):
        eqvid.ConvS5Config(dt_min=0.5, dt_max=0.1)
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\)"):
        eqvid.ConvS5Config(dropout=1.0)
    with pytest.raises(ValueError, match="Unknown ConvS5 preset 'mnist-9000'.*mnist-300"):
        eqvid.ConvS5Config.preset("mnist-9000")
    with pytest.raises(ValueError, match="Unknown ConvLSTM preset 'mnist-9000'.*mnist-300"):
        eqvid.ConvLSTMConfig.preset("mnist-9000")


def test_presets_share_the_codec():
    small, convs5 = eqvid.ConvLSTMConfig.preset("small"), eqvid.ConvS5Config.preset("small")
    for field in ("frame_size", "channels", "pixel_patch", "encoder_depths", "d_model", "n_layers"):
        assert getattr(small, field) == getattr(convs5, field), field
    assert eqvid.ConvS5Config.preset("mnist-300").latent_size == 16
    assert set(eqvid.models.CONVLSTM_PRESETS) == {"mnist-300", "mnist-600", "small"}


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_inputs_name_the_argument_in_both_families(name, getkey):
    model = build(name, getkey())
    title = type(model).__name__
    key = getkey()
    with pytest.raises(ValueError, match=rf"{title}: `frames`.*\(16, 16, 1\).*\(32, 32, 1\)"):
        model(jnp.zeros((4, 32, 32, 1)))
    with pytest.raises(TypeCheckError, match="frames"):
        model(jnp.zeros((4, 16, 16)))  # missing channel axis
    with pytest.raises(ValueError, match=r"`frames` needs at least 2 frames.*got 1"):
        model.loss(VideoBatch(jnp.zeros((1, 1, 16, 16, 1))))
    with pytest.raises(ValueError, match=rf"{title}: `frames` needs at least 2 frames.*got 0"):
        model(jnp.zeros((0, 16, 16, 1)))  # an empty time axis
    with pytest.raises(ValueError, match=r"`frames` needs at least 2 frames.*got 0"):
        jax.jit(lambda m, b: m.loss(b)[0])(model, VideoBatch(jnp.zeros((2, 0, 16, 16, 1))))
    with pytest.raises(ValueError, match=rf"{title}: `batch` needs at least 1 video, got 0"):
        model.loss(VideoBatch(jnp.zeros((0, 4, 16, 16, 1))))  # was a NaN loss
    with pytest.raises(ValueError, match=rf"{title}: `context`"):
        model.generate(jnp.zeros((4, 16, 16, 3)), 2, key=key)
    with pytest.raises(ValueError, match=rf"{title}: `context` needs at least 1 frame"):
        model.generate(jnp.zeros((0, 16, 16, 1)), 2, key=key)
    with pytest.raises(ValueError, match=r"`num_frames` must be ≥ 1"):
        model.generate(jnp.zeros((4, 16, 16, 1)), 0, key=key)
    with pytest.raises(ValueError, match=r"`actions`.*\(6,\)"):
        model.generate(jnp.zeros((4, 16, 16, 1)), 2, key=key, actions=jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match=rf"{title}: `frame`"):
        model.step(model.init_state(), jnp.zeros((8, 8, 1)))
    with pytest.raises(TypeError, match="key"):
        model.generate(jnp.zeros((4, 16, 16, 1)), 2)  # pyright: ignore[reportCallIssue]  # the key is required
    with pytest.raises(TypeCheckError, match="actions"):
        VideoBatch(jnp.zeros((2, 4, 16, 16, 1)), jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("name", FAMILIES)
def test_action_ids_outside_the_table_are_rejected_not_clamped(name, getkey):
    """Ids outside [-1, action_dim) used to be clamped by the embedding lookup without a
    word. Known ids raise a ValueError naming the argument, the id and the range (and
    `check_batch`, which training runs on every batch before it reaches the devices);
    traced ids (jit, vmap, scan) give NaN, never a clamped action's numbers."""
    model = build(name, getkey())  # action_dim = 3
    title, key = type(model).__name__, getkey()
    video = random_video(getkey(), t=4)
    allowed = r"must lie in \[-1, action_dim\) = \[-1, 3\) \(-1: no action\)"
    with pytest.raises(ValueError, match=rf"{title}: `actions` {allowed}.*got 3 at index 2"):
        model(video, jnp.array([-1, 0, 3, 1], jnp.int32))
    with pytest.raises(ValueError, match=rf"`actions` {allowed}.*got -2 at index 1"):
        model(video, jnp.array([0, -2, 1, 1], jnp.int32))
    bad_batch = VideoBatch(video[None], jnp.array([[0, 1, 2, 7]], jnp.int32))
    with pytest.raises(ValueError, match=rf"`batch.actions` {allowed}.*got 7 at index \(0, 3\)"):
        model.loss(bad_batch)
    with pytest.raises(ValueError, match=rf"`batch.actions` {allowed}.*got 7 at index \(0, 3\)"):
        model.check_batch(np.asarray(bad_batch.video), np.asarray(bad_batch.actions))
    with pytest.raises(ValueError, match=rf"`actions` {allowed}.*got 5 at index 5"):
        model.generate(video, 2, key=key, actions=jnp.array([0, 0, 0, 0, 0, 5], jnp.int32))
    with pytest.raises(ValueError, match=rf"`action` {allowed}; got 3\."):
        model.step(model.init_state(), video[0], jnp.asarray(3, jnp.int32))

    loss = eqx.filter_jit(lambda m, b: m.loss(b)[0])
    generate = eqx.filter_jit(lambda m, c, a: m.generate(c, 2, key=key, actions=a))
    step = eqx.filter_jit(lambda m, f, a: m.step(m.init_state(), f, a)[1])
    ok = jnp.array([-1, 0, 2, 1], jnp.int32)  # both ends of the range are fine
    assert np.isfinite(float(loss(model, VideoBatch(video[None], ok[None]))))
    assert np.isnan(float(loss(model, bad_batch)))
    assert generate(model, video, jnp.concatenate([ok, ok[:2]])).shape == (2, 16, 16, 1)
    generated = generate(model, video, jnp.array([0, 0, 0, 0, -3, 0], jnp.int32))
    assert np.isnan(np.asarray(generated)).all()
    assert step(model, video[0], jnp.asarray(2, jnp.int32)).shape == (16, 16, 1)
    assert np.isnan(np.asarray(step(model, video[0], jnp.asarray(3, jnp.int32)))).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoints_from_before_the_registry_load_and_generate_the_same(name):
    """A run written by eqvid 1104e7c (separate ConvS5/ConvLSTM model classes) loads
    into today's model and generates what it generated then (bit for bit on jax
    0.10.2, the version that wrote it; to float32 rounding on others)."""
    from eqvid.evaluate import load_trained_run

    run = load_trained_run(FIXTURES / name)
    assert run.step == 2 and isinstance(run.model, eqvid.AbstractVideoModel)
    expected = np.load(FIXTURES / name / "expected_generate.npz")
    got = run.model.generate(jnp.asarray(expected["context"]), 2, key=jax.random.key(0))
    # Exact on the jax that wrote the file (0.10.2); other XLA versions round differently.
    np.testing.assert_allclose(np.asarray(got), expected["generated"], rtol=1e-5, atol=1e-5)


def test_a_convs5_run_from_before_the_registry_resumes(tmp_path):
    """Its optimiser state (groups "default" and "ssm") has today's layout: training
    goes on from step 2 with its parameters, optimiser state, data position and key."""
    import shutil

    from eqvid.data import MovingMNISTConfig
    from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train

    run_dir = tmp_path / "convs5"
    shutil.copytree(FIXTURES / "convs5", run_dir)
    model = eqvid.ConvS5Config(
        frame_size=32, encoder_depths=(4, 8), d_model=8, ssm_size=8, n_layers=1
    )
    result = train(
        TrainConfig(
            model=model,
            data=MovingMNISTConfig(frame_size=32, seq_len=4, num_digits=1),
            optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1),
            run=RunConfig(
                run_dir=str(run_dir),
                steps=4,
                batch_size=2,
                log_every=1,
                sample_every=0,
                checkpoint_every=2,
                eval_sequences=0,
                progress=False,
                resume=True,
            ),
            mesh=MeshConfig(devices=1),
        )
    )
    assert result.step == 4 and len(result.losses) == 2 and np.all(np.isfinite(result.losses))
