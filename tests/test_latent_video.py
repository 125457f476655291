"""ConvSSM's plain latent models (convs5-latent, transformer-latent) on a frozen
tokenizer's codes: the released configurations' parameter counts, the loss, generation
that steps exactly as the whole-sequence pass (recurrence / key-value cache), training
through the one entry, and the errors."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.models import VQGAN2D, LatentVideoModel, VQGAN2DConfig, make_model, model_spec

TOKENIZER = dataclasses.replace(VQGAN2DConfig.preset("small"), frame_size=32, perceptual_weight=0.0)
"""32×32 grey frames → 8×8 codes of 256, code vectors of 32."""


def tiny(family: str):
    return dataclasses.replace(
        model_spec(family).preset("small"), frame_size=32, channels=1, patch_size=2, max_frames=12
    )


def build(config, tokenizer, seed=1):
    """A model built inside one jit (eager construction compiles every initialiser)."""
    return eqx.filter_jit(
        lambda tok: LatentVideoModel(config, key=jax.random.key(seed), tokenizer=tok)
    )(tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    model, state = eqx.filter_jit(lambda: make_model(TOKENIZER, key=jax.random.key(0)))()
    assert isinstance(model, VQGAN2D)
    return model.with_state(state)


# From NVlabs/ConvSSM's modules (`jax.eval_shape(model.init)`) on
# configs/3D_ENV_BENCHMARK/*, with a VQGAN of 256-wide code vectors (1024 codes;
# Habitat's 8192). The original Transformer also creates an unused `sos_post` (16×16×256
# = 65,536 parameters: 152,116,080 in its tree) that eqvid leaves out.
RELEASED = {
    ("convs5-latent", "dmlab"): ("teco-dmlab", 99_220_336),
    ("convs5-latent", "habitat"): ("teco-habitat-128", 102_897_520),
    ("convs5-latent", "minecraft"): ("teco-minecraft-128", 136_988_528),
    ("transformer-latent", "dmlab"): ("teco-dmlab", 152_116_080 - 65_536),
    # configs/3D_ENV_BENCHMARK/dmlab/dmlab_S5.yaml, counted from the shapes its modules
    # create (S5.py, S5/diagonal_ssm.py, base.py): z_proj 71,303,168 + 8 S5 layers of
    # 3,151,360 + z_unproj 134,217,728 + encoder 1,771,264 + decoder 21,772,800 + 112.
    ("s5-latent", "dmlab"): ("teco-dmlab", 254_275_952),
}


@pytest.mark.parametrize("family,name", sorted(RELEASED))
def test_released_configs_have_the_originals_parameter_counts(family, name):
    vq_preset, expected = RELEASED[(family, name)]
    vq = dataclasses.replace(VQGAN2DConfig.preset(vq_preset), perceptual_weight=0.0)
    config = dataclasses.replace(model_spec(family).preset(name), frame_size=vq.frame_size)
    tok = eqx.filter_eval_shape(lambda: make_model(vq, key=jax.random.key(0))[0])
    model = eqx.filter_eval_shape(
        lambda: LatentVideoModel(config, key=jax.random.key(0), tokenizer=tok)
    )

    def size(tree):
        return sum(math.prod(x.shape) for x in jax.tree.leaves(tree) if hasattr(x, "shape"))

    assert size(model) - size(model.tokenizer) == expected


@pytest.mark.parametrize("family", ["convs5-latent", "transformer-latent", "s5-latent"])
def test_generation_steps_as_the_whole_sequence_predicts(family, tokenizer):
    """At a near-zero temperature the generated codes are the decoder's argmax; fed
    back through the whole-sequence (teacher-forced) pass they give the same argmax:
    the recurrent / cached steps equal the parallel pass."""
    config = dataclasses.replace(tiny(family), temperature=1e-6)
    model = build(config, tokenizer, 1)
    context = jax.random.randint(jax.random.key(2), (3, 8, 8), 0, 256)
    actions = jnp.arange(8, dtype=jnp.int32) % 6
    out = eqx.filter_jit(
        lambda m, c: m.generate_codes(c, 5, key=jax.random.key(3), actions=actions)
    )(model, context)
    assert out.shape == (5, 8, 8) and out.dtype == jnp.int32
    video = jnp.concatenate([context, out])

    @eqx.filter_jit
    def teacher_forced(m, codes):
        y = m.temporal(m._inputs(m._features(codes[:-1]), actions))
        return jnp.argmax(m.decoder(y), axis=-1)

    np.testing.assert_array_equal(teacher_forced(model, video)[2:], out)
    hot = build(tiny(family), tokenizer, 1)
    a = hot.generate_codes(context, 2, key=jax.random.key(4), actions=actions[:5])
    b = hot.generate_codes(context, 2, key=jax.random.key(5), actions=actions[:5])
    assert not np.array_equal(a, b)  # sampled: another key, other codes


@pytest.mark.parametrize("stride", [1, 2])
def test_the_transformer_slides_its_window_past_max_frames(stride, tokenizer):
    """Generating past `max_frames` is, frame for frame, what re-reading the last
    `max_frames - stride` frames and generating `stride` frames from them gives
    (ConvSSM's / TECO's sampler at stride 1), here at a near-zero temperature so that
    the keys do not matter."""
    config = dataclasses.replace(
        tiny("transformer-latent"), temperature=1e-6, max_frames=5, slide_stride=stride
    )
    model = build(config, tokenizer, 1)
    context = jax.random.randint(jax.random.key(2), (3, 8, 8), 0, 256)
    actions = jnp.arange(12, dtype=jnp.int32) % 6
    gen = eqx.filter_jit(
        lambda m, c, n, a: m.generate_codes(c, n, key=jax.random.key(3), actions=a)
    )
    out = gen(model, context, 9, actions)
    assert out.shape == (9, 8, 8)
    video = jnp.concatenate([context, gen(model, context, 2, actions[:5])])  # fills the window
    while video.shape[0] < 12:
        start, n = video.shape[0] - (5 - stride), min(stride, 12 - video.shape[0])
        new = gen(model, video[start:], n, actions[start : video.shape[0] + n])
        video = jnp.concatenate([video, new])
    np.testing.assert_array_equal(out, video[3:])


def test_the_loss_is_the_smoothed_cross_entropy_of_the_next_frames_codes(tokenizer):
    model = build(tiny("convs5-latent"), tokenizer, 1)
    codes = jax.random.randint(jax.random.key(2), (2, 5, 8, 8), 0, 256)

    trained = eqx.filter_jit(lambda m: m.codes_loss(codes, None, key=jax.random.key(0)))(model)
    loss, terms = trained[0], trained[1]
    assert set(terms) == {"recon_loss"}
    assert 0.8 * 64 * math.log(256) < float(loss) < 1.5 * 64 * math.log(256)
    # Evaluation (no key): every frame, the same value as a re-statement.
    evaluated = eqx.filter_jit(lambda m: m.codes_loss(codes, None)[0])(model)

    def restated(m):
        total = 0.0
        for v in range(2):
            y = m.temporal(m._inputs(m._features(codes[v, :-1]), jnp.full((5,), -1, jnp.int32)))
            logp = jax.nn.log_softmax(m.decoder(y))
            labels = jax.nn.one_hot(codes[v, 1:], 256) * 0.99 + 0.01 / 256
            total += -jnp.sum(labels * logp)
        return total / 8

    np.testing.assert_allclose(float(evaluated), float(eqx.filter_jit(restated)(model)), rtol=1e-5)


def test_bad_inputs_name_the_value_and_the_fix(tokenizer):
    model = build(tiny("convs5-latent"), tokenizer, 1)
    with pytest.raises(ValueError, match=r"\(batch, steps, 8, 8\).*another tokenizer"):
        model.check_codes_batch(np.zeros((1, 4, 16, 16), np.int32), None)
    with pytest.raises(ValueError, match=r"action 9 is outside \[-1, 6\)"):
        model.check_codes_batch(np.zeros((1, 4, 8, 8), np.int32), np.full((1, 4), 9))
    with pytest.raises(ValueError, match="`actions` must cover context and generated frames"):
        model.generate_codes(
            jnp.zeros((2, 8, 8), jnp.int32),
            3,
            key=jax.random.key(0),
            actions=jnp.zeros((4,), jnp.int32),
        )
    transformer = build(tiny("transformer-latent"), tokenizer)
    with pytest.raises(ValueError, match="context has 12 frames, .* give at most 11"):
        transformer.generate_codes(jnp.zeros((12, 8, 8), jnp.int32), 7, key=jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"`slide_stride` must be in \[1, max_frames\) = \[1, 12\)"
    ):
        dataclasses.replace(tiny("transformer-latent"), slide_stride=12)
    with pytest.raises(ValueError, match="patch_size 3 must divide"):
        LatentVideoModel(
            dataclasses.replace(tiny("transformer-latent"), patch_size=3),
            key=jax.random.key(0),
            tokenizer=tokenizer,
        )


def test_causal_masking_trains_and_generates_open_loop_after_the_context(tokenizer):
    """ConvSSM's DMLab mode: videos that keep their actions see the mask constant for
    inputs from `open_loop_context` on and are scored from there; videos whose actions
    were dropped train with teacher forcing on every frame. Generation given actions
    feeds the mask constant, not the sampled codes."""
    config = dataclasses.replace(
        tiny("convs5-latent"), causal_masking=True, open_loop_context=3, action_dropout=0.5
    )
    model = build(config, tokenizer, 1)
    codes = jax.random.randint(jax.random.key(2), (4, 6, 8, 8), 0, 256)
    actions = jax.random.randint(jax.random.key(3), (4, 6), 0, 6)

    def per_frame(m, video, acts, masked_from):
        feats = m._features(video[:-1])
        idx = jnp.arange(5)[:, None, None, None]
        feats = jnp.where(idx >= masked_from, -2.0, feats)
        logp = jax.nn.log_softmax(m.decoder(m.temporal(m._inputs(feats, acts))))
        labels = jax.nn.one_hot(video[1:], 256) * 0.99 + 0.01 / 256
        return -jnp.sum(labels * logp, axis=(1, 2, 3))  # frames 1…5

    # Evaluation (no key, actions given): every video open-loop, frames 3…5 scored.
    got = eqx.filter_jit(lambda m: m.codes_loss(codes, actions)[0])(model)
    want = eqx.filter_jit(
        lambda m: jnp.mean(
            jnp.stack([jnp.mean(per_frame(m, codes[v], actions[v], 3)[2:]) for v in range(4)])
        )
    )(model)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    # Training: the dropped videos (drawn as the model draws them) are teacher-forced.
    key = jax.random.key(7)
    from eqvid.models._abstract import per_video_keys
    from eqvid.models._latent import action_drop_flags

    keys = per_video_keys(key, 4)
    drop = np.asarray(action_drop_flags(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), 0.5))
    assert 0 < drop.sum() < 4, drop  # both kinds in the batch (else pick another key)
    trained = eqx.filter_jit(lambda m: m.codes_loss(codes, actions, key=key)[0])(model)

    def restated(m):
        losses = []
        for v in range(4):
            if drop[v]:
                losses.append(jnp.mean(per_frame(m, codes[v], jnp.full((6,), -1), 99)))
            else:
                losses.append(jnp.mean(per_frame(m, codes[v], actions[v], 3)[2:]))
        return jnp.mean(jnp.stack(losses))

    np.testing.assert_allclose(float(trained), float(eqx.filter_jit(restated)(model)), rtol=1e-5)

    # Open-loop generation: the argmax codes equal the masked whole-sequence pass's.
    cold = build(dataclasses.replace(config, temperature=1e-6), tokenizer, 1)
    out = cold.generate_codes(codes[0, :3], 3, key=jax.random.key(4), actions=actions[0])
    video = jnp.concatenate([codes[0, :3], out])

    @eqx.filter_jit
    def masked_pass(m):
        feats = jnp.where(jnp.arange(5)[:, None, None, None] >= 3, -2.0, m._features(video[:-1]))
        return jnp.argmax(m.decoder(m.temporal(m._inputs(feats, actions[0]))), axis=-1)

    np.testing.assert_array_equal(masked_pass(cold)[2:], out)
    with pytest.raises(ValueError, match="causal masking needs windows longer than"):
        model.codes_loss(codes[:, :4], actions[:, :4])
    with pytest.raises(ValueError, match="`causal_masking` takes no DropLoss"):
        dataclasses.replace(config, drop_loss_rate=0.5)
