"""The training contract with a family defined here, in a test file, with no edit to
`eqvid.train` or `eqvid.evaluate`: parameter roles (optimiser groups, weight decay,
keep-float32, the `model` mesh axis, frozen parts, a discriminator-like part on its
own objective that starts late), model state through steps, accumulation and
checkpoints, the moving average of the parameters, required generation keys,
TensorBoard events, and loading a run by its registered name."""

import dataclasses
import itertools
import pathlib
import struct
import typing
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int, PRNGKeyArray

import eqvid
from eqvid.data import MovingMNISTConfig
from eqvid.models import AbstractVideoModel, GroupSettings, ModelSpec, VideoBatch, register_model
from eqvid.nn import ConvS5, role
from eqvid.train import (
    MeshConfig,
    OptimizerConfig,
    ParameterPlan,
    RunConfig,
    TrainConfig,
    init_train_state,
    make_mesh,
    make_optimizer,
    make_train_step,
    train,
)
from eqvid.train._mesh import tree_shardings

ONE_CPU = jax.devices("cpu")[:1]


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    frame_size: int = 32
    channels: int = 1
    hidden: int = 4
    critic_start: int = 1
    """The first step that trains the critic."""
    adversarial_weight: float = 0.1
    noise: float = 0.1
    """Noise of the generated frames (a stochastic model)."""
    diverge_at: int = 0
    """From this step on the loss is NaN (0: never), to test what training does then."""


class Gain(eqx.Module):
    """A new layer type that declares its parameters' roles."""

    scale: Float[Array, " hidden"] = eqx.field(
        metadata=role(group="gain", weight_decay=False, keep_float32=True)
    )
    mix: Float[Array, "channels hidden"] = eqx.field(
        metadata=role(axes=("in", "hidden"), model_axis="hidden")
    )

    def __init__(self, channels: int, hidden: int, *, key: PRNGKeyArray):
        self.scale = jnp.ones((hidden,), jnp.float32)
        self.mix = 0.5 * jax.random.normal(key, (channels, hidden), jnp.float32)


class Critic(eqx.Module):
    weight: Float[Array, ""]
    bias: Float[Array, ""]

    def __call__(self, frames: Float[Array, "..."]) -> Float[Array, ""]:
        return self.weight * jnp.mean(frames) + self.bias


class ToyModel(AbstractVideoModel):
    """Next frame = tanh(frozen · (frame @ mix · scale) @ 1 + offset); a critic on its
    own objective; a model state that counts the loss's calls."""

    gain: Gain
    offset: Float[Array, ""]
    frozen_scale: Float[Array, ""] = eqx.field(metadata=role(frozen=True))
    critic: Critic = eqx.field(metadata=role(group="critic", objective="critic_loss"))
    calls: eqx.nn.StateIndex
    config: ToyConfig = eqx.field(static=True)

    def __init__(self, config: ToyConfig, *, key: PRNGKeyArray):
        self.gain = Gain(config.channels, config.hidden, key=key)
        self.offset = jnp.asarray(0.05, jnp.float32)
        self.frozen_scale = jnp.asarray(0.7, jnp.float32)
        self.critic = Critic(jnp.asarray(0.3, jnp.float32), jnp.asarray(0.0, jnp.float32))
        self.calls = eqx.nn.StateIndex(jnp.zeros((), jnp.int32))
        self.config = config

    def predict(self, frames):
        weights = self.gain.mix * self.gain.scale[None, :]
        h = jnp.einsum("...c,ch->...h", frames, weights.astype(frames.dtype))
        return jnp.tanh(self.frozen_scale * jnp.mean(h, axis=-1, keepdims=True) + self.offset)

    def loss(self, batch, state=None, *, key=None, step=0):
        x = batch.frames("test")
        pred = self.predict(x[:, :-1])
        recon = jnp.mean(jnp.square(pred - x[:, 1:]))
        active = (jnp.asarray(step) >= self.config.critic_start).astype(recon.dtype)
        adversarial = jax.nn.softplus(-self.critic(pred))
        critic_loss = jax.nn.softplus(self.critic(jax.lax.stop_gradient(pred))) + jax.nn.softplus(
            -self.critic(x[:, 1:])
        )
        assert state is not None
        state = state.set(self.calls, state.get(self.calls) + 1)
        loss = recon + self.config.adversarial_weight * active * adversarial
        if self.config.diverge_at:
            loss = jnp.where(jnp.asarray(step) >= self.config.diverge_at, jnp.nan, loss)
        return loss, {"recon": recon, "critic_loss": critic_loss}, state

    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " total"] | None = None,
    ) -> Float[Array, "{num_frames} height width channels"]:
        def body(frame, k):
            frame = self.predict(frame) + self.config.noise * jax.random.normal(k, frame.shape)
            return frame, frame

        _, frames = jax.lax.scan(body, context[-1], jax.random.split(key, num_frames))
        return frames

    def check_batch(self, video, actions):
        pass  # nothing to check

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        return {"critic": GroupSettings(lr_scale=0.5, start_step=self.config.critic_start)}

    def with_state(self, state):
        return self


register_model(ModelSpec("toy", "Toy", ToyConfig, ToyModel, {"small": ToyConfig()}))


def toy(**changes) -> tuple[ToyModel, eqx.nn.State]:
    model, state = eqvid.make_model(
        dataclasses.replace(ToyConfig(), **changes), key=jax.random.key(0)
    )
    assert isinstance(model, ToyModel) and state is not None
    return model, state


def videos(batch=4, length=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return VideoBatch(jnp.asarray(rng.uniform(-1, 1, (batch, length, size, size, 1)), jnp.float32))


def path_values(tree):
    """The arrays of `tree` by path, copied to the host (the train step donates its
    inputs' buffers)."""
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def fresh(state):
    """A copy of a model state that may be used again (a `State` is spent by `set`)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def test_registration_is_one_call_and_refuses_clashes():
    assert eqvid.models.model_spec("toy").module is ToyModel
    assert eqvid.models.model_spec(ToyConfig()).name == "toy"
    with pytest.raises(ValueError, match="'toy'.*clashes"):
        register_model(ModelSpec("toy", "Toy", ToyConfig, ToyModel, {"small": ToyConfig()}))
    with pytest.raises(ValueError, match="'small' entry"):
        ModelSpec("other", "Other", ToyConfig, ToyModel, {})


def test_roles_decide_groups_decay_precision_sharding_and_freezing():
    model, state = toy()
    assert state is not None  # the model declares a StateIndex
    plan = ParameterPlan(model)
    params, rest = plan.partition(model)
    assert set(path_values(params)) == {
        ".gain.scale",
        ".gain.mix",
        ".offset",
        ".critic.weight",
        ".critic.bias",
    }
    assert set(path_values(eqx.filter(rest, eqx.is_inexact_array))) == {".frozen_scale"}
    assert plan.objectives == ("loss", "critic_loss")
    roles = plan.roles
    assert roles[".gain.scale"].group == "gain" and not roles[".gain.scale"].weight_decay
    assert roles[".critic.bias"].group == "critic"  # inherited from the field holding it
    assert roles[".critic.weight"].objective == "critic_loss"

    # Groups and weight decay: with zero gradients only weight decay moves parameters.
    config = OptimizerConfig(lr=1e-2, warmup_steps=0, weight_decay=0.5, grad_clip=0.0)
    opt = make_optimizer(config, model, plan.trainable_roles(params), total_steps=10)
    labels = set(typing.cast(Any, opt.init(params)).inner_states)  # multi_transform's groups
    assert labels == {"default", "gain", "critic"}
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    moved = {k: float(jnp.abs(v).max()) for k, v in path_values(updates).items()}
    assert moved[".gain.scale"] == 0.0 and moved[".gain.mix"] > 0.0 and moved[".offset"] > 0.0

    # Precision: keep-float32 parameters are not cast.
    cast = path_values(plan.cast(params, jnp.bfloat16))
    assert cast[".gain.scale"].dtype == jnp.float32 and cast[".gain.mix"].dtype == jnp.bfloat16

    # Sharding: the declared "hidden" axis goes over the model axis.
    mesh = make_mesh(MeshConfig(data=4, model=2), devices=jax.devices("cpu")[:8])
    shardings = tree_shardings(params, mesh, 1, plan.model_dims())
    assert shardings.gain.mix.spec == P(None, "model")
    assert shardings.gain.scale.spec == P(None)  # no axes declared: not on `model`


class Stack(eqx.Module):
    """A sub-module whose layer declares its own group and weight decay."""

    inner: Gain


class Outer(eqx.Module):
    disc: Stack = eqx.field(metadata=role(group="critic", objective="critic_loss"))
    plain: Stack


def test_what_a_part_is_for_is_decided_outside_what_a_parameter_is_inside():
    """`Gain.scale` declares group "gain" and no weight decay; inside a field declared
    as the critic it trains with the critic (group, objective) and still never decays."""
    gains = [Gain(1, 4, key=jax.random.key(i)) for i in range(2)]
    roles = eqvid.nn.parameter_roles(Outer(disc=Stack(gains[0]), plain=Stack(gains[1])))
    inside, alone = roles.disc.inner.scale, roles.plain.inner.scale
    assert (inside.group, inside.objective, inside.weight_decay) == ("critic", "critic_loss", False)
    assert (alone.group, alone.objective, alone.weight_decay) == ("gain", "loss", False)
    assert roles.disc.inner.mix.model_dim() == 1 and roles.disc.inner.mix.group == "critic"


def test_each_objective_is_clipped_on_its_own():
    """A huge critic gradient does not shrink the generator's update: clipping is per
    objective (with one objective it is optax.clip_by_global_norm exactly)."""
    from eqvid.train._optimizer import clip_by_objective

    grads = {"g": jnp.asarray([0.3, 0.4]), "d": jnp.asarray([300.0, 400.0])}
    objectives = {"g": "loss", "d": "critic_loss"}
    clipped: Any
    clipped, _ = clip_by_objective(1.0, objectives).update(grads, optax.EmptyState())
    np.testing.assert_array_equal(clipped["g"], grads["g"])  # norm 0.5 < 1: untouched
    np.testing.assert_allclose(clipped["d"], [0.6, 0.8], rtol=1e-6)
    together = {"g": "loss", "d": "loss"}
    want: Any
    got: Any
    want, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    got, _ = clip_by_objective(1.0, together).update(grads, optax.EmptyState())
    for k in grads:
        np.testing.assert_array_equal(got[k], want[k])


def test_a_late_group_joins_the_runs_learning_rate_schedule():
    """A group starting at step 5 makes its first update with the schedule's value at
    step 5 (not the warm-up's start): with SGD-like sign updates on a flat loss, the
    first step's size is the learning rate."""
    from eqvid.train._optimizer import learning_rate_schedule

    model, _ = toy(critic_start=5)
    plan = ParameterPlan(model)
    params, _ = plan.partition(model)
    config = OptimizerConfig(lr=1e-2, warmup_steps=8, weight_decay=0.0, grad_clip=0.0)
    opt = make_optimizer(config, model, plan.trainable_roles(params), total_steps=20)
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    sizes = []
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(5):
            updates, state = opt.update(grads, state, params)
            sizes.append(float(jnp.abs(path_values(updates)[".critic.weight"])))
    schedule = learning_rate_schedule(config, 20)
    assert sizes[:4] == [0.0] * 4
    # Adam's first step with a constant gradient moves by the learning rate itself.
    np.testing.assert_allclose(
        sizes[4], 0.5 * float(np.asarray(schedule(4))), rtol=1e-4
    )  # lr_scale 0.5


def test_loss_terms_may_not_take_the_logs_own_names():
    model, state = toy()
    plan = ParameterPlan(model)
    mesh = make_mesh(devices=ONE_CPU)
    optimizer = optax.sgd(0.1)
    train_state, rest = init_train_state(model, state, optimizer, plan, mesh)

    original = ToyModel.loss

    def bad_loss(self, batch, state=None, *, key=None, step=0):
        loss, terms, state = original(self, batch, state, key=key, step=step)
        return loss, {**terms, "lr": loss}, state

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ToyModel, "loss", bad_loss)
        step = make_train_step(optimizer, plan, mesh)
        with pytest.raises(ValueError, match=r"terms named \['lr'\].*rename them"):
            step(train_state, rest, videos(), None, 1)


def test_each_objective_trains_its_own_parameters():
    """With plain SGD (lr 1), the update of each parameter is minus the gradient of its
    own objective: the generator's of the loss, the critic's of its term only."""
    model, state = toy()
    plan = ParameterPlan(model)
    mesh = make_mesh(devices=ONE_CPU)
    optimizer = optax.sgd(1.0)
    train_state, rest = init_train_state(model, fresh(state), optimizer, plan, mesh)
    step = make_train_step(optimizer, plan, mesh)
    batch = videos()
    before = path_values(train_state.params)
    after_state, metrics = step(train_state, rest, batch, None, 1)
    after = path_values(after_state.params)

    params, _ = plan.partition(model)

    def objective(name):
        def f(p):
            loss, terms, _ = eqx.combine(p, rest).loss(batch, fresh(state), step=1)
            return loss if name == "loss" else terms[name]

        return path_values(jax.grad(f)(params))

    g_loss, g_critic = objective("loss"), objective("critic_loss")
    for path in before:
        want = g_critic[path] if path.startswith(".critic") else g_loss[path]
        np.testing.assert_allclose(before[path] - after[path], want, rtol=1e-5, atol=1e-7)
    # The loss also depends on the critic (the adversarial term), but the critic
    # ignores that gradient.
    assert float(jnp.abs(g_loss[".critic.weight"])) > 1e-4
    assert set(metrics) == {"loss", "recon", "critic_loss", "grad_norm", "grad_norm_critic_loss"}
    assert after_state.model_state is not None
    assert int(after_state.model_state.get(model.calls)) == 1


def test_a_late_group_is_untouched_until_its_start_step():
    model, state = toy(critic_start=3)
    plan = ParameterPlan(model)
    params, _ = plan.partition(model)
    config = OptimizerConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1)
    optimizer = make_optimizer(config, model, plan.trainable_roles(params), total_steps=10)
    mesh = make_mesh(devices=ONE_CPU)
    train_state, rest = init_train_state(model, state, optimizer, plan, mesh)
    step = make_train_step(optimizer, plan, mesh)
    critic = [path_values(train_state.params)[".critic.weight"]]
    offset = [path_values(train_state.params)[".offset"]]
    for i in range(1, 5):
        train_state, _ = step(train_state, rest, videos(seed=i), None, i)
        critic.append(path_values(train_state.params)[".critic.weight"])
        offset.append(path_values(train_state.params)[".offset"])
    assert float(critic[1]) == float(critic[2]) == float(critic[0])  # steps 1, 2: waiting
    assert float(critic[3]) != float(critic[2]) and float(critic[4]) != float(critic[3])
    assert all(float(a) != float(b) for a, b in itertools.pairwise(offset))  # the rest trains
    # The critic's Adam state starts at its first update (bias correction from 1).
    adam_counts = [
        int(x)
        for p, x in jax.tree_util.tree_flatten_with_path(
            typing.cast(Any, train_state.opt_state)[1].inner_states["critic"]  # after clipping
        )[0]
        if jax.tree_util.keystr(p).endswith(".count")
    ]
    assert 2 in adam_counts


def test_moving_average_follows_the_parameters():
    model, state = toy()
    plan = ParameterPlan(model)
    mesh = make_mesh(devices=ONE_CPU)
    optimizer = optax.sgd(0.1)
    train_state, rest = init_train_state(model, state, optimizer, plan, mesh, ema=True)
    step = make_train_step(optimizer, plan, mesh, ema_decay=0.75)
    ema = path_values(train_state.params)
    for i in range(1, 25):
        train_state, _ = step(train_state, rest, videos(seed=i), None, i)
        params = path_values(train_state.params)
        decay = min(0.75, (1 + i) / (10 + i))  # warmed up: 2/11, 3/12, …, then 0.75
        ema = {k: v + (1 - decay) * (params[k] - v) for k, v in ema.items()}
        got = path_values(train_state.ema)
        for k in ema:
            np.testing.assert_allclose(got[k], ema[k], rtol=1e-6, atol=1e-7)


def test_model_state_is_threaded_through_accumulated_micro_batches():
    model, state = toy()
    plan = ParameterPlan(model)
    mesh = make_mesh(devices=ONE_CPU)
    optimizer = optax.sgd(0.1)
    train_state, rest = init_train_state(model, state, optimizer, plan, mesh)
    step = make_train_step(optimizer, plan, mesh, accumulate=2)
    for i in range(1, 4):
        train_state, _ = step(train_state, rest, videos(), None, i)
    assert train_state.model_state is not None
    assert int(train_state.model_state.get(model.calls)) == 6  # 3 steps × 2 micro-batches


def test_a_step_compiled_ahead_runs_the_same_program():
    # Multi-process runs compile the step before its first call (then wait for every
    # process): the compiled program must give what the jitted calls give, step after step.
    model, state = toy()
    plan = ParameterPlan(model)
    mesh = make_mesh(devices=ONE_CPU)
    optimizer = optax.adam(0.1)
    states = []
    for ahead in (False, True):
        train_state, rest = init_train_state(model, state, optimizer, plan, mesh, ema=True)
        step = make_train_step(optimizer, plan, mesh, ema_decay=0.75)
        if ahead:
            step.compile(train_state, rest, videos(seed=1), None, 1)
        for i in range(1, 4):
            train_state, _ = step(train_state, rest, videos(seed=i), None, i)
        states.append((path_values(train_state.params), path_values(train_state.ema)))
    assert step._compiled is not None
    for want, got in zip(*states):
        assert want.keys() == got.keys()
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_generation_needs_a_key_and_draws_per_key():
    model, _ = toy()
    context = videos(batch=2).frames("test")
    a = eqvid.rollout(model, context, 3, key=jax.random.key(1))
    b = eqvid.rollout(model, context, 3, key=jax.random.key(1))
    c = eqvid.rollout(model, context, 3, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0], a[1])  # each video its own key
    with pytest.raises(TypeError, match="key"):
        eqvid.rollout(model, context, 3)  # pyright: ignore[reportCallIssue]


SEEN: dict[str, object] = {}
"""What the probe's loss saw at trace time."""


class SSMProbe(AbstractVideoModel):
    """A ConvS5 layer as a model, recording the dtypes its parameters arrive in."""

    layer: ConvS5
    config: None = eqx.field(static=True)

    def __init__(self, *, key: PRNGKeyArray):
        self.layer = ConvS5(4, 4, key=key)
        self.config = None

    def loss(self, batch, state=None, *, key=None, step=0):
        for name in ("lambda_re", "lambda_im", "log_step", "B", "C"):
            SEEN[name] = getattr(self.layer, name).dtype
        SEEN["video"] = batch.frames("test").dtype
        y, _ = jax.vmap(self.layer)(batch.frames("test"))
        return jnp.mean(jnp.square(y.astype(jnp.float32))), {}, state

    def generate(self, context, num_frames, *, key, actions=None):
        raise NotImplementedError  # not needed by this test

    def check_batch(self, video, actions):
        pass  # nothing to check

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        return {}

    def with_state(self, state):
        return self


def test_ssm_parameters_reach_the_loss_in_float32_under_bfloat16():
    model = SSMProbe(key=jax.random.key(0))
    plan = ParameterPlan(model)
    mesh = make_mesh(devices=ONE_CPU)
    optimizer = optax.sgd(0.1)
    train_state, rest = init_train_state(model, None, optimizer, plan, mesh)
    step = make_train_step(optimizer, plan, mesh, compute_dtype="bfloat16")
    batch = VideoBatch(
        jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 6, 6, 4)), jnp.float32)
    )
    train_state, metrics = step(train_state, rest, batch, None, 1)
    assert np.isfinite(float(metrics["loss"]))
    assert SEEN["video"] == jnp.bfloat16 and SEEN["C"] == jnp.bfloat16
    for name in ("lambda_re", "lambda_im", "log_step", "B"):
        assert SEEN[name] == jnp.float32, name
    for leaf in jax.tree.leaves(train_state.params):  # master weights stay float32
        assert leaf.dtype == jnp.float32


def toy_config(run_dir, **run):
    options: dict[str, Any] = dict(
        run_dir=str(run_dir),
        steps=4,
        batch_size=2,
        log_every=1,
        checkpoint_every=2,
        sample_every=2,
        eval_sequences=2,
        eval_context=2,
        eval_horizon=1,
        progress=False,
        accumulate=2,
    )
    options.update(run)
    return TrainConfig(
        model=ToyConfig(critic_start=2),
        data=MovingMNISTConfig(frame_size=32, seq_len=3, train_sequences=16),
        optimizer=OptimizerConfig(lr=1e-2, warmup_steps=0, ema_decay=0.5),
        run=RunConfig(**options),
        mesh=MeshConfig(devices=1),
    )


def read_events(folder: pathlib.Path):
    """`(scalar tags, image tags)` of the TensorBoard event files in `folder` (TFRecord
    framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2

    scalars, images = set(), set()
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]
            event = event_pb2.Event.FromString(record)  # pyright: ignore[reportAttributeAccessIssue]
            offset += 12 + length + 4
            for value in event.summary.value:
                (images if value.HasField("image") else scalars).add(value.tag)
    return scalars, images


def test_a_family_defined_outside_the_library_trains_resumes_and_evaluates(tmp_path):
    """`train()` and `load_trained_run` take the test's family by its registered name:
    frozen parts saved once and never trained, model state and the moving average
    checkpointed and restored, every loss term logged (CSV and TensorBoard)."""
    from eqvid.evaluate import load_trained_run

    run_dir = tmp_path / "run"
    result = train(toy_config(run_dir))
    # Frozen: saved once beside the checkpoints, never in them, and never changed.
    assert (run_dir / "frozen").is_dir()
    step_items = {p.name for p in (run_dir / "checkpoints" / "4").iterdir() if p.is_dir()}
    assert {"params", "opt_state", "model_state", "ema"} <= step_items
    model = result.model
    assert isinstance(model, ToyModel)
    assert float(model.frozen_scale) == pytest.approx(0.7)
    # Every term in metrics.csv and TensorBoard (with lr, gradient norm, throughput and
    # the sample strips).
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert header == (
        "step,loss,critic_loss,grad_norm_critic_loss,recon,lr,grad_norm,frames_per_s,elapsed_s"
    )
    scalars, images = read_events(run_dir / "tensorboard")
    assert {"train/loss", "train/recon", "train/critic_loss", "train/grad_norm"} <= scalars
    assert "train/grad_norm_critic_loss" in scalars
    assert {"run/lr", "run/frames_per_s", "run/elapsed_s"} <= scalars
    assert images == {"samples"}

    # Evaluation loads the run by its model name: the moving average by default.
    loaded = load_trained_run(run_dir)
    assert isinstance(loaded.model, ToyModel) and loaded.step == 4
    raw = load_trained_run(run_dir, ema=False)
    assert isinstance(raw.model, ToyModel)
    ema_offset, raw_offset = float(loaded.model.offset), float(raw.model.offset)
    assert ema_offset == pytest.approx(float(model.offset))  # what train() returned
    assert ema_offset != raw_offset
    assert float(raw.model.frozen_scale) == pytest.approx(0.7)

    # Resume after step 2: the same parameters, moving average and model state.
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "4")
    resumed = train(toy_config(run_dir, resume=True))
    np.testing.assert_allclose(resumed.losses, result.losses[2:], rtol=1e-6)
    for name in ("ema", "params"):
        a = load_trained_run(run_dir, ema=name == "ema").model
        b = loaded.model if name == "ema" else raw.model
        for x, y in zip(
            jax.tree.leaves(eqx.filter(a, eqx.is_inexact_array)),
            jax.tree.leaves(eqx.filter(b, eqx.is_inexact_array)),
        ):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)
    from eqvid.train._checkpoint import Checkpointer

    ckpt = Checkpointer(run_dir / "checkpoints")
    _, state = toy()
    counted = ckpt.restore(4, {"model_state": state})["model_state"]
    ckpt.close()
    assert int(counted.get(model.calls)) == 4 * 2  # 4 steps × 2 micro-batches, resumed
