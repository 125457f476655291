"""The Transformer baseline: preset sizes, KV-cache generation against the
released full-recompute sampling and against teacher forcing, causality,
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
from eqvid.models import TRANSFORMER_PRESETS, VideoBatch

KEY = jax.random.key(0)  # the Transformer is deterministic: any key gives the same frames

# 16x16 frames → 8x8 latents → 2x2 = 4 tokens per frame.
TINY = eqvid.TransformerConfig(
    frame_size=16,
    encoder_depths=(4, 8),
    d_model=8,
    patch_size=4,
    width=32,
    n_layers=2,
    n_heads=4,
    mlp_dim=64,
    max_frames=12,
    attention_impl="xla",
)


@pytest.fixture(scope="module")
def model():
    return eqvid.TransformerVideoModel(TINY, key=jax.random.key(0))


teacher = jax.jit(lambda m, v, a=None: m(v, a))
generate5 = jax.jit(lambda m, c: m.generate(c, 5, key=KEY))


def count_params(config):
    shapes = eqx.filter_eval_shape(eqvid.TransformerVideoModel, config, key=jax.random.key(0))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes) if hasattr(x, "shape"))


def random_video(key, t=8, size=16):
    return jnp.tanh(2 * jax.random.normal(key, (t, size, size, 1)))


@pytest.mark.parametrize(
    "name, exact, paper", [("mnist-300", 240_073_475, 240.1e6), ("mnist-600", 163_500_291, 163.5e6)]
)
def test_paper_presets_have_the_paper_parameter_counts(name, exact, paper):
    config = eqvid.TransformerConfig.preset(name)
    assert config.tokens_per_frame == 1
    n = count_params(config)
    assert n == exact
    assert abs(n - paper) < 0.05e6, n


def test_transformer_parameters_keep_their_paths_and_roles(model):
    """Checkpoints address the blocks' parameters by these paths; the shared
    `eqvid.nn.TransformerBlock` declares which axis of each goes over `model`."""
    params = eqx.filter(model, eqx.is_inexact_array)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    block = [
        p.removeprefix(".temporal.blocks[1]") for p in paths if p.startswith(".temporal.blocks[1].")
    ]
    assert block == [
        ".norm1.weight",
        ".norm1.bias",
        ".attention.query_weight",
        ".attention.key_weight",
        ".attention.value_weight",
        ".attention.output_weight",
        ".attention.query_bias",
        ".attention.key_bias",
        ".attention.value_bias",
        ".attention.output_bias",
        ".norm2.weight",
        ".norm2.bias",
        ".mlp_in.weight",
        ".mlp_in.bias",
        ".mlp_out.weight",
        ".mlp_out.bias",
    ]
    top = [p for p in paths if not p.startswith((".temporal.blocks", ".encoder", ".decoder"))]
    assert top == [
        ".action_embedding",
        ".temporal.patch_weight",
        ".temporal.start_token",
        ".temporal.embed.weight",
        ".temporal.embed.bias",
        ".temporal.head.weight",
        ".temporal.head.bias",
        ".temporal.head_norm.weight",
        ".temporal.head_norm.bias",
        ".temporal.unpatch_weight",
    ]
    roles = eqvid.nn.parameter_roles(model).temporal.blocks[0]
    assert roles.mlp_in.weight.model_dim() == 1 and roles.mlp_out.weight.model_dim() == 0
    assert roles.attention.query_weight.model_dim() == 1
    assert roles.attention.output_weight.model_dim() == 0
    block = model.temporal.blocks[0]
    assert block.activation == "gelu_sigmoid" and block.norm == "pre"


def test_small_preset_and_unknown_preset():
    small = eqvid.TransformerConfig.preset("small")
    convs5 = eqvid.ConvS5Config.preset("small")
    assert small.encoder_depths == convs5.encoder_depths and small.d_model == convs5.d_model
    assert small.pixel_patch == convs5.pixel_patch == 4
    assert small.latent_size == 8 and small.tokens_per_frame == 16
    assert dataclasses.replace(small, frame_size=48).tokens_per_frame == 9
    assert set(TRANSFORMER_PRESETS) == {"mnist-300", "mnist-600", "small"}
    model = eqx.filter_eval_shape(eqvid.TransformerVideoModel, small, key=jax.random.key(0))
    out = eqx.filter_eval_shape(lambda m, v: m(v), model, jnp.zeros((5, 64, 64, 1)))
    assert out.shape == (4, 64, 64, 1)
    with pytest.raises(ValueError, match="Unknown Transformer preset 'mnist-9000'.*mnist-300"):
        eqvid.TransformerConfig.preset("mnist-9000")


def test_generate_with_and_without_cache_equals_step_by_step_teacher_forcing(model, getkey):
    """KV-cache rollout, the released full-recompute rollout and a reference that
    runs teacher forcing on the growing sequence and keeps its last prediction
    all give the same frames."""
    context = random_video(getkey(), t=3)
    n = 5
    cached = generate5(model, context)
    recompute = jax.jit(lambda m, c: m.generate(c, n, cache=False, key=KEY))(model, context)
    assert cached.shape == recompute.shape == (n, 16, 16, 1)
    assert float(jnp.abs(cached).max()) <= 1.0
    np.testing.assert_allclose(cached, recompute, rtol=1e-5, atol=1e-5)

    # The growing sequence, zero-padded to one length so that `teacher` compiles
    # once: the prediction of frame t reads frames 0…t-1 only (causality is
    # tested below), so the padding is never seen.
    video = jnp.zeros((3 + n + 1, 16, 16, 1)).at[:3].set(context)
    for t in range(3, 3 + n):
        video = video.at[t].set(teacher(model, video)[t - 1])
    np.testing.assert_allclose(cached, video[3:-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(cached[0], cached[-1])


def test_generate_with_actions_and_one_frame(getkey):
    config = dataclasses.replace(TINY, action_dim=3, action_embed_dim=2)
    model = eqvid.TransformerVideoModel(config, key=getkey())
    context = random_video(getkey(), t=2)
    actions = jnp.array([-1, 0, 2, 1, 0], jnp.int32)
    generate = jax.jit(lambda m, c, a: m.generate(c, 3, actions=a, key=KEY))
    a = generate(model, context, actions)
    b = jax.jit(lambda m, c, a: m.generate(c, 3, actions=a, cache=False, key=KEY))(
        model, context, actions
    )
    # Each generated frame is fed back, so float32 rounding of the two attention paths
    # compounds over the three frames (a CI run saw 1.4e-5 at the third).
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Teacher forcing on the generated video, with the same actions.
    tf = teacher(model, jnp.concatenate([context, a]), actions)
    np.testing.assert_allclose(tf[1:], a, rtol=1e-5, atol=1e-5)
    other = generate(model, context, jnp.array([-1, 2, 0, 0, 1], jnp.int32))
    assert not np.allclose(a, other)
    one = jax.jit(lambda m, c, a: m.generate(c, 1, actions=a, key=KEY))(model, context, actions[:3])
    np.testing.assert_allclose(one, a[:1], rtol=1e-5, atol=1e-5)


def test_teacher_forcing_is_causal_in_frames(model, getkey):
    video = random_video(getkey(), t=6)
    out = teacher(model, video)
    for t in (0, 2, 4):
        changed = video.at[t + 1 :].set(random_video(getkey(), t=5 - t))
        new = teacher(model, changed)
        # Predictions of frames 1…t+1 read frames 0…t only.
        np.testing.assert_allclose(new[: t + 1], out[: t + 1], rtol=1e-6, atol=1e-6)
        if t + 1 < 5:
            assert not np.allclose(new[t + 1], out[t + 1])


def test_generate_under_vmap(model, getkey):
    videos = jax.vmap(lambda k: random_video(k, t=3))(jax.random.split(getkey(), 3))
    gen = jax.jit(jax.vmap(lambda c: model.generate(c, 5, key=KEY)))(videos)
    assert gen.shape == (3, 5, 16, 16, 1)
    np.testing.assert_allclose(gen[1], generate5(model, videos[1]), rtol=1e-5, atol=1e-5)


def square_video(x0, y0, t=6):
    """A 4x4 white square on black moving one pixel down-right per frame."""
    i = jnp.arange(16)
    frames = [
        (i[:, None] >= y0 + s)
        & (i[:, None] < y0 + s + 4)
        & (i[None, :] >= x0 + s)
        & (i[None, :] < x0 + s + 4)
        for s in range(t)
    ]
    return 2.0 * jnp.stack(frames)[..., None].astype(jnp.float32) - 1.0


def test_loss_decreases_on_a_fixed_batch(model):
    videos = jnp.stack([square_video(1, 3), square_video(5, 2)])
    opt = optax.adam(3e-3)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: m.loss(VideoBatch(videos))[0])(model)
        with jax.numpy_dtype_promotion("standard"):  # optax promotes implicitly
            updates, state = opt.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(30):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.4 * losses[0] and losses[-1] < losses[10], losses


def test_loss_is_the_released_objective(model, getkey):
    video = random_video(getkey(), t=6)
    err = np.asarray(teacher(model, video)) - np.asarray(video[1:])
    want = 0.5 * np.mean(np.sum(err**2, axis=(-2, -1))) + 0.5 * np.mean(
        np.sum(np.abs(err), axis=(-2, -1))
    )
    loss, terms, _ = jax.jit(lambda m, v: m.loss(VideoBatch(v[None])))(model, video)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert set(terms) == {"squared_error", "absolute_error"}


def test_impossible_configurations_name_the_field():
    with pytest.raises(ValueError, match=r"frame_size.*\(62\).*divisible.*4"):
        eqvid.TransformerConfig(frame_size=62)
    with pytest.raises(ValueError, match=r"patch_size.*\(6\).*latent size.*16"):
        eqvid.TransformerConfig(patch_size=6)
    with pytest.raises(ValueError, match=r"`width` \(100\).*`n_heads` \(16\)"):
        eqvid.TransformerConfig(width=100)
    with pytest.raises(ValueError, match=r"`width` \(9\) must be even"):
        eqvid.TransformerConfig(width=9, n_heads=3)
    with pytest.raises(ValueError, match=r"`max_frames` must be an int ≥ 2, got 1"):
        eqvid.TransformerConfig(max_frames=1)
    with pytest.raises(ValueError, match=r"`n_layers` must be an int ≥ 1, got 0"):
        eqvid.TransformerConfig(n_layers=0)
    # eqvid's type checks reject the Literal (with EQVID_TYPECHECK=0, __post_init__ does).
    with pytest.raises(TypeCheckError, match=r"attention_impl"):
        eqvid.TransformerConfig(attention_impl="flash")  # pyright: ignore[reportArgumentType]


def test_bad_input_names_the_argument_and_numbers(model):
    with pytest.raises(ValueError, match=r"`frames`.*\(16, 16, 1\).*\(32, 32, 1\)"):
        model(jnp.zeros((4, 32, 32, 1)))
    with pytest.raises(TypeCheckError, match="frames"):
        model(jnp.zeros((4, 16, 16)))  # missing channel axis
    with pytest.raises(ValueError, match=r"`frames` needs at least 2 frames.*got 1"):
        model(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match=r"`frames` needs at least 2 frames.*got 0"):
        model(jnp.zeros((0, 16, 16, 1)))  # an empty time axis
    with pytest.raises(ValueError, match=r"`frames` needs at least 2 frames.*got 0"):
        jax.jit(lambda m, b: m.loss(b)[0])(model, VideoBatch(jnp.zeros((2, 0, 16, 16, 1))))
    with pytest.raises(ValueError, match=r"`frames` has 13 frames.*max_frames = 12"):
        model.loss(VideoBatch(jnp.zeros((1, 13, 16, 16, 1))))
    with pytest.raises(ValueError, match=r"`batch` needs at least 1 video, got 0"):
        model.loss(VideoBatch(jnp.zeros((0, 4, 16, 16, 1))))  # was a NaN loss
    with pytest.raises(ValueError, match=r"`frames` has 13 frames.*max_frames = 12"):
        model(jnp.zeros((13, 16, 16, 1)))
    with pytest.raises(ValueError, match=r"`context` needs at least 1 frame"):
        model.generate(jnp.zeros((0, 16, 16, 1)), 2, key=KEY)
    with pytest.raises(ValueError, match=r"`context`.*\(16, 16, 1\).*\(16, 16, 3\)"):
        model.generate(jnp.zeros((4, 16, 16, 3)), 2, key=KEY)
    with pytest.raises(
        ValueError,
        match=r"`context` \(4 frames\) \+ `num_frames` \(9\) = 13 "
        r"exceeds config.max_frames = 12",
    ):
        model.generate(jnp.zeros((4, 16, 16, 1)), 9, key=KEY)
    with pytest.raises(ValueError, match=r"`num_frames` must be ≥ 1, got 0"):
        model.generate(jnp.zeros((4, 16, 16, 1)), 0, key=KEY)
    with pytest.raises(ValueError, match=r"`actions`.*\(6,\)"):
        model.generate(jnp.zeros((4, 16, 16, 1)), 2, key=KEY, actions=jnp.zeros((4,), jnp.int32))


def test_action_ids_outside_the_table_are_rejected_not_clamped(model):
    """Ids outside [-1, action_dim) used to be clamped by the embedding lookup without a
    word. Known ids raise a ValueError naming the argument, the id and the range (also
    from `check_batch`, which training runs on every batch on the host); traced ids
    (jit, vmap) give NaN, never a clamped action's numbers."""
    video = random_video(jax.random.key(1), t=4)
    allowed = r"must lie in \[-1, action_dim\) = \[-1, 1\) \(-1: no action\)"
    with pytest.raises(ValueError, match=rf"TransformerVideoModel: `actions` {allowed}.*got 1"):
        model(video, jnp.array([-1, 0, 1, 0], jnp.int32))
    bad_batch = VideoBatch(video[None], jnp.array([[0, -2, 0, 0]], jnp.int32))
    with pytest.raises(ValueError, match=rf"`batch.actions` {allowed}.*got -2 at index \(0, 1\)"):
        model.loss(bad_batch)
    with pytest.raises(ValueError, match=rf"`batch.actions` {allowed}.*got -2 at index \(0, 1\)"):
        model.check_batch(np.asarray(bad_batch.video), np.asarray(bad_batch.actions))
    with pytest.raises(ValueError, match=rf"`actions` {allowed}.*got 4 at index 0"):
        model.generate(video, 2, key=KEY, actions=jnp.array([4, 0, 0, 0, 0, 0], jnp.int32))

    loss = eqx.filter_jit(lambda m, b: m.loss(b)[0])
    ok = jnp.array([-1, 0, 0, -1], jnp.int32)
    assert np.isfinite(float(loss(model, VideoBatch(video[None], ok[None]))))
    assert np.isnan(float(loss(model, bad_batch)))

    @eqx.filter_jit
    def generate(m, a, cache):  # a Python bool `cache`: static under filter_jit
        return m.generate(video, 2, key=KEY, actions=a, cache=cache)

    for cache in (True, False):
        assert generate(model, jnp.zeros((6,), jnp.int32), cache).shape == (2, 16, 16, 1)
        bad = generate(model, jnp.array([0, 0, 0, 0, 0, 1], jnp.int32), cache)
        assert np.isnan(np.asarray(bad)[-1]).all()  # the frame after the bad action
