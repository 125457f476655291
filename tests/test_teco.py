"""TECO on a frozen tokenizer's codes: the released configurations' parameter counts,
DropLoss and action dropout, the loss terms, cached == uncached generation, training
on a codes dataset through the one entry (and resuming), and the errors for codes,
actions and lengths that do not fit."""

import dataclasses
import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.data._codes import CodesConfig
from eqvid.models import (
    TECO,
    VQGAN2D,
    AbstractVideoModel,
    VideoBatch,
    VQGAN2DConfig,
    encode_videos,
    make_model,
    model_spec,
)
from eqvid.models._latent import drop_actions, drop_loss_frames
from eqvid.models._teco import TECOConfig
from eqvid.models._tokenizer_files import save_tokenizer

TOKENIZER = dataclasses.replace(VQGAN2DConfig.preset("small"), frame_size=32, perceptual_weight=0.0)
"""A tiny 2D VQGAN: 32×32 grey frames → 8×8 codes of 256, code vectors of 32."""

TINY = dataclasses.replace(
    TECOConfig.preset("small"),
    frame_size=32,
    channels=1,
    patch_size=2,
    max_frames=12,
    n_layers=1,
    maskgit_layers=1,
)


TINY_CONVS5 = dataclasses.replace(
    model_spec("teco-convs5").preset("small"),
    frame_size=32,
    channels=1,
    max_frames=12,
    n_layers=1,
    maskgit_layers=1,
)


TINY_S5 = dataclasses.replace(
    model_spec("teco-s5").preset("small"),
    frame_size=32,
    channels=1,
    max_frames=12,
    n_layers=1,
    maskgit_layers=1,
)


def build(config, tokenizer, seed=1):
    """A TECO built inside one jit (eager construction compiles every initialiser)."""
    return eqx.filter_jit(lambda tok: TECO(config, key=jax.random.key(seed), tokenizer=tok))(
        tokenizer
    )


@pytest.fixture(scope="module")
def tokenizer():
    model, state = eqx.filter_jit(lambda: make_model(TOKENIZER, key=jax.random.key(0)))()
    return model.with_state(state)


@pytest.fixture(scope="module")
def teco(tokenizer):
    return build(TINY, tokenizer)


def trainable_count(model) -> int:
    """Parameters outside the frozen tokenizer (shape-only models count too)."""

    def size(tree):
        return sum(math.prod(x.shape) for x in jax.tree.leaves(tree) if hasattr(x, "shape"))

    return size(model) - size(model.tokenizer)


# Counted from the originals' modules (`jax.eval_shape(model.init)`): wilson1yan/teco
# configs/*.yaml (teco) and NVlabs/ConvSSM configs/3D_ENV_BENCHMARK/*_teco_convS5.yaml
# (teco-convs5), with a VQGAN of 256-wide code vectors (1024 codes; Habitat's 8192).
RELEASED = {
    ("teco", "dmlab"): ("teco-dmlab", 173_088_944),
    ("teco", "minecraft"): ("teco-minecraft-128", 271_278_832),
    ("teco", "habitat"): ("teco-habitat-128", 386_098_544),
    ("teco", "kinetics600"): ("teco-minecraft-128", 1_091_846_512),
    ("teco-convs5", "dmlab"): ("teco-dmlab", 175_374_000),
    ("teco-convs5", "habitat"): ("teco-habitat-128", 351_100_784),
    ("teco-convs5", "minecraft"): ("teco-minecraft-128", 214_754_544),
    # configs/3D_ENV_BENCHMARK/dmlab/dmlab_teco_S5.yaml, counted from the shapes of
    # teco_S5.py's modules: 180,409,520, of which an unused `sos` (1×1×2048, created
    # but never read) that eqvid leaves out; the S5 stack is 8 × 12,594,176.
    ("teco-s5", "dmlab"): ("teco-dmlab", 180_409_520 - 2_048),
}


@pytest.mark.parametrize("family,name", sorted(RELEASED))
def test_released_configs_have_the_originals_parameter_counts(family, name):
    vq_preset, expected = RELEASED[(family, name)]
    vq = dataclasses.replace(VQGAN2DConfig.preset(vq_preset), perceptual_weight=0.0)
    config = dataclasses.replace(model_spec(family).preset(name), frame_size=vq.frame_size)
    tok = eqx.filter_eval_shape(lambda: make_model(vq, key=jax.random.key(0))[0])
    assert tok.embed_dim == 256
    model = eqx.filter_eval_shape(lambda: TECO(config, key=jax.random.key(0), tokenizer=tok))
    assert trainable_count(model) == expected


def test_the_convs5_core_steps_as_it_scans():
    from eqvid.nn._temporal_core import ConvS5Core

    core = ConvS5Core(5, latent=4, d_model=8, ssm_size=8, n_layers=2, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 4, 4, 5))
    whole = core(x)
    state, first = core.prefill(core.init_state(6), x[:2])
    np.testing.assert_allclose(first, whole[:2], atol=1e-5)
    for t in range(2, 6):
        state, y = core.step(state, x[t], jnp.asarray(t))
        np.testing.assert_allclose(y, whole[t], atol=1e-5)


def test_drop_loss_keeps_tecos_count_of_frames_drawn_as_teco_draws_them():
    frames = drop_loss_frames(jax.random.key(0), 300, 1, 0.9)
    assert frames.shape == (29,)  # int(0.1 · 299), TECO's DMLab
    assert int(frames.min()) >= 1 and int(frames.max()) <= 299
    draws = np.concatenate(
        [np.asarray(drop_loss_frames(jax.random.key(s), 10, 1, 0.5)) for s in range(400)]
    )
    # randint(0, 10) on 9 targets: frame 9 gets the clamped index too (2/10), others 1/10.
    counts = np.bincount(draws, minlength=10)
    assert counts[0] == 0 and counts[9] > 1.5 * counts[1:9].mean()
    np.testing.assert_array_equal(drop_loss_frames(None, 6, 2, 0.9), [2, 3, 4, 5])
    np.testing.assert_array_equal(drop_loss_frames(jax.random.key(1), 6, 1, 0.0), [1, 2, 3, 4, 5])
    assert drop_loss_frames(jax.random.key(2), 3, 1, 0.99).shape == (1,)  # at least one


def test_action_dropout_drops_whole_sequences():
    actions = jnp.tile(jnp.arange(5, dtype=jnp.int32), (64, 1))
    out = np.asarray(drop_actions(jax.random.split(jax.random.key(0), 64), actions, 0.5))
    dropped = (out == -1).all(axis=1)
    kept = (out == np.arange(5)).all(axis=1)
    assert (dropped | kept).all()  # a sequence is dropped whole or not at all
    assert 16 < dropped.sum() < 48
    none = drop_actions(jax.random.split(jax.random.key(0), 64), actions, 0.0)
    np.testing.assert_array_equal(none, actions)


def codes_and_actions(b=2, t=6, seed=2):
    codes = jax.random.randint(jax.random.key(seed), (b, t, 8, 8), 0, 256)
    actions = jax.random.randint(jax.random.key(seed + 1), (b, t), -1, 6)
    return codes, actions


def test_the_loss_reports_tecos_terms_and_trains_every_part_but_the_tokenizer(teco):
    codes, actions = codes_and_actions()

    @eqx.filter_jit
    def loss_and_grads(model):
        def loss(m):
            value, terms, _ = m.codes_loss(codes, actions, key=jax.random.key(0))
            return value, terms

        return eqx.filter_value_and_grad(loss, has_aux=True)(model)

    (loss, terms), grads = loss_and_grads(teco)
    assert set(terms) == {
        "recon_loss", "trans_loss", "commitment_loss", "codebook_loss", "perplexity"
    }  # fmt: skip
    total = sum(float(terms[k]) for k in terms if k != "perplexity")
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)
    # Untrained: the decoder's CE is about log(256) per code position, 64 positions.
    assert 0.8 * 64 * math.log(256) < float(terms["recon_loss"]) < 1.5 * 64 * math.log(256)
    # The prior's masked-token CE, scaled by the 4×4 latent grid: about 16 · log(64).
    assert 0.7 * 16 * math.log(64) < float(terms["trans_loss"]) < 1.5 * 16 * math.log(64)
    for part in ("encoder", "codebook", "temporal", "prior", "decoder", "sos_post"):
        leaves = jax.tree.leaves(eqx.filter(getattr(grads, part), eqx.is_array))
        assert any(float(jnp.abs(g).max()) > 0 for g in leaves), part
    tok = jax.tree.leaves(eqx.filter(grads.tokenizer, eqx.is_array))
    assert all(float(jnp.abs(g).max()) == 0 for g in tok)
    # Frames are encoded by the tokenizer: the same loss as on their codes.
    video = jax.random.uniform(jax.random.key(9), (2, 4, 32, 32, 1), minval=-1, maxval=1)
    batch_loss = eqx.filter_jit(lambda m, b: m.loss(b)[0])
    codes_of = encode_videos(teco.tokenizer, video)
    on_frames = batch_loss(teco, VideoBatch(video, actions[:, :4]))
    on_codes = batch_loss(teco, VideoBatch(codes=codes_of, actions=actions[:, :4]))
    np.testing.assert_allclose(float(on_frames), float(on_codes), rtol=1e-6)


def test_cached_generation_equals_tecos_rerun_of_the_whole_sequence(teco):
    codes, _ = codes_and_actions()
    actions = jnp.arange(8, dtype=jnp.int32) % 6
    run = eqx.filter_jit(
        lambda m, c, k, cache: m.generate_codes(c, 5, key=k, actions=actions, cache=cache),
    )
    cached = run(teco, codes[0, :3], jax.random.key(5), True)
    uncached = run(teco, codes[0, :3], jax.random.key(5), False)
    assert cached.shape == (5, 8, 8) and cached.dtype == jnp.int32
    np.testing.assert_array_equal(cached, uncached)
    other = run(teco, codes[0, :3], jax.random.key(6), True)
    assert not np.array_equal(cached, other)  # a stochastic sampler: another key, other codes
    # TECO-ConvS5 generates through its recurrence: the same codes as teacher forcing
    # would see, one step per frame (no re-run path).
    convs5 = build(TINY_CONVS5, teco.tokenizer)
    out = run(convs5, codes[0, :3], jax.random.key(5), True)
    assert out.shape == (5, 8, 8) and int(out.min()) >= 0 and int(out.max()) < 256
    with pytest.raises(ValueError, match="cache=False re-runs a transformer"):
        run(convs5, codes[0, :3], jax.random.key(5), False)


@pytest.mark.parametrize("stride", [1, 3])
def test_generation_slides_past_max_frames_as_tecos_sampler(teco, stride):
    """Past `max_frames` the transformer re-reads the last `max_frames - stride` frames
    (the posterior over their codes): cached and re-run generation agree there too, and
    TECO-ConvS5 steps on with no window."""
    codes, _ = codes_and_actions()
    short = build(dataclasses.replace(TINY, max_frames=5, slide_stride=stride), teco.tokenizer)
    actions = jnp.arange(13, dtype=jnp.int32) % 6
    run = eqx.filter_jit(
        lambda m, c, cache: m.generate_codes(
            c, 10, key=jax.random.key(5), actions=actions, cache=cache
        )
    )
    cached = run(short, codes[0, :3], True)
    assert cached.shape == (10, 8, 8)
    np.testing.assert_array_equal(cached, run(short, codes[0, :3], False))
    convs5 = build(dataclasses.replace(TINY_CONVS5, max_frames=5), teco.tokenizer)
    assert run(convs5, codes[0, :3], True).shape == (10, 8, 8)


def test_teco_s5_trains_every_part_and_steps_past_any_length(teco):
    """TECO-S5 (the S5 stack over each frame's flattened latents): the loss reaches every
    trained part, and generation steps the recurrence with no window (14 frames from a
    model of max_frames 12); the core's steps equal its scan in tests/test_s5.py."""
    codes, actions = codes_and_actions()
    s5 = build(TINY_S5, teco.tokenizer)
    grads = eqx.filter_jit(
        eqx.filter_grad(lambda m: m.codes_loss(codes, actions, key=jax.random.key(0))[0])
    )(s5)
    for part in ("encoder", "codebook", "temporal", "prior", "decoder"):
        leaves = jax.tree.leaves(eqx.filter(getattr(grads, part), eqx.is_array))
        assert all(float(jnp.abs(g).max()) > 0 for g in leaves[:3]), part
    out = eqx.filter_jit(lambda m, c: m.generate_codes(c, 12, key=jax.random.key(5)))(
        s5, codes[0, :2]
    )
    assert out.shape == (12, 8, 8) and int(out.min()) >= 0 and int(out.max()) < 256


def test_causal_masking_feeds_the_temporal_model_the_mask_constant(teco):
    """ConvSSM's DMLab mode for the TECO family: videos that keep their actions give the
    temporal model the mask constant in place of their latents from `open_loop_context`
    on (the decoder still reads the true latents, every frame is scored); videos whose
    actions were dropped see every frame. Generation given actions is open-loop."""
    config = dataclasses.replace(
        TINY_S5, causal_masking=True, open_loop_context=3, drop_loss_rate=0.0
    )
    model = build(config, teco.tokenizer)
    codes, _ = codes_and_actions(b=4, t=6)
    actions = jax.random.randint(jax.random.key(3), (4, 6), 0, 6)

    def recon(m, video, acts, masked_from):
        latents, z = m._posterior(video)[:2]
        seen = jnp.where(jnp.arange(5)[:, None, None, None] >= masked_from, -2.0, latents[:-1])
        deter = m.temporal(m._inputs(seen, acts))
        logp = jax.nn.log_softmax(m._logits(deter, z[1:]))
        labels = jax.nn.one_hot(video[1:], 256) * 0.99 + 0.01 / 256
        return -jnp.sum(labels * logp, axis=(1, 2, 3))  # frames 1…5

    # Evaluation (no key, actions given): every video open-loop from frame 3.
    got = eqx.filter_jit(lambda m: m.codes_loss(codes, actions)[1]["recon_loss"])(model)
    want = eqx.filter_jit(
        lambda m: jnp.mean(jnp.stack([recon(m, codes[v], actions[v], 3) for v in range(4)]))
    )(model)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    # Without actions nothing is masked.
    got = eqx.filter_jit(lambda m: m.codes_loss(codes, None)[1]["recon_loss"])(model)
    none = jnp.full((6,), -1)
    want = eqx.filter_jit(
        lambda m: jnp.mean(jnp.stack([recon(m, codes[v], none, 99) for v in range(4)]))
    )(model)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    # Training: the dropped videos (drawn as the model draws them) see every frame.
    from eqvid.models._abstract import per_video_keys
    from eqvid.models._latent import action_drop_flags

    key = jax.random.key(7)
    drop = np.asarray(
        action_drop_flags(jax.vmap(lambda k: jax.random.fold_in(k, 1))(per_video_keys(key, 4)), 0.5)
    )
    assert 0 < drop.sum() < 4, drop  # both kinds in the batch (else pick another key)
    got = eqx.filter_jit(lambda m: m.codes_loss(codes, actions, key=key)[1]["recon_loss"])(model)

    def restated(m):
        per_video = [
            recon(m, codes[v], none, 99) if drop[v] else recon(m, codes[v], actions[v], 3)
            for v in range(4)
        ]
        return jnp.mean(jnp.stack(per_video))

    np.testing.assert_allclose(float(got), float(eqx.filter_jit(restated)(model)), rtol=1e-5)

    # Open-loop generation: every generated frame's temporal input is the mask constant,
    # so the frames are those a teacher-forced pass over masked inputs samples.
    key = jax.random.key(4)
    out = eqx.filter_jit(lambda m: m.generate_codes(codes[0, :3], 3, key=key, actions=actions[0]))(
        model
    )

    @eqx.filter_jit
    def masked_pass(m):
        latents = m._posterior(codes[0, :3])[0]
        seen = jnp.concatenate([latents, jnp.full((2,) + latents.shape[1:], -2.0)])
        deter = m.temporal(m._inputs(seen, actions[0]))[2:]
        frames = []
        for y, k in zip(deter, jax.random.split(key, 3)):
            z = m.codebook.lookup(m._sample_latent(y, k))
            frames.append(jnp.argmax(m._logits(y, z), axis=-1))
        return jnp.stack(frames)

    np.testing.assert_array_equal(masked_pass(model), out)
    with pytest.raises(ValueError, match="causal masking needs windows longer than"):
        model.codes_loss(codes[:, :4], actions[:, :4])


def test_bad_inputs_name_the_value_and_the_fix(teco):
    codes, actions = codes_and_actions()
    np_codes, np_actions = np.asarray(codes), np.asarray(actions)
    teco.check_codes_batch(np_codes, np_actions)
    with pytest.raises(ValueError, match=r"\(batch, steps, 8, 8\).*another tokenizer"):
        teco.check_codes_batch(np.zeros((2, 6, 16, 16), np.int32), None)
    bad = np_codes.copy()
    bad[1, 2, 3, 4] = 256
    with pytest.raises(ValueError, match=r"code 256, outside \[0, 256\)"):
        teco.check_codes_batch(bad, None)
    with pytest.raises(ValueError, match=r"action 6 is outside \[-1, 6\)"):
        teco.check_codes_batch(np_codes, np.full((2, 6), 6))
    with pytest.raises(ValueError, match=r"fewer than n_cond = 1"):
        teco.generate_codes(codes[0, :0], 2, key=jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"context has 12 frames, but .* max_frames = 12; give at most 11"
    ):
        teco.generate_codes(jnp.zeros((12, 8, 8), jnp.int32), 7, key=jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"`slide_stride` must be in \[1, max_frames - n_cond\] = \[1, 11\]"
    ):
        dataclasses.replace(TINY, slide_stride=12)
    with pytest.raises(ValueError, match=r"more than n_cond = 1 frames"):
        teco.codes_loss(codes[:, :1], None)
    with pytest.raises(ValueError, match=r"exceed max_frames = 12"):
        teco.codes_loss(jnp.zeros((1, 13, 8, 8), jnp.int32), None)
    with pytest.raises(ValueError, match=r"no tokenizer: set `tokenizer`"):
        TECO(TINY, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"patch_size 3 must divide"):
        TECO(
            dataclasses.replace(TINY, patch_size=3), key=jax.random.key(0), tokenizer=teco.tokenizer
        )


def test_trains_on_codes_through_the_one_entry_and_resumes(tokenizer, tmp_path):
    from eqvid.data.encode import main as encode
    from eqvid.evaluate._rollout_report import RolloutReport
    from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train
    from eqvid.train._setup import check_model_takes_data

    folder = tmp_path / "tok"
    save_tokenizer(tokenizer, folder)
    args = ["--tokenizer", str(folder), "--out", str(tmp_path / "codes"), "--no-progress"]
    args += ["--frame-size", "32", "--seq-len", "6", "--train-sequences", "4"]
    encode([*args, "--test-sequences", "2"])
    data = CodesConfig(root=str(tmp_path / "codes"), seq_len=6)
    model = dataclasses.replace(TINY, tokenizer=str(folder))

    def config(steps):
        return TrainConfig(
            model=model,
            data=data,
            optimizer=OptimizerConfig(lr=1e-3, warmup_steps=0),
            run=RunConfig(
                run_dir=str(tmp_path / "run"), steps=steps, batch_size=2, log_every=1,
                sample_every=0, checkpoint_every=1, eval_sequences=2 if steps > 2 else 0,
                eval_context=3, eval_horizon=3, progress=False, tensorboard=False,
                resume=steps > 2,
            ),
            mesh=MeshConfig(devices=1),
        )  # fmt: skip

    first = train(config(2))
    assert first.step == 2 and first.report is None
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"recon_loss", "trans_loss", "commitment_loss", "codebook_loss"} <= set(header)
    resumed = train(config(3))  # the end-of-run report decodes rollouts to frames
    assert resumed.step == 3
    assert isinstance(resumed.report, RolloutReport) and resumed.report.horizon == 3
    # The evaluation entry scores the run, and the model saved as a folder (as the
    # converters write released checkpoints) with its data named in a file.
    from eqvid.evaluate import EvalConfig, evaluate
    from eqvid.evaluate._trained_run import load_trained_run
    from eqvid.models import save_model

    def eval_config(**kwargs) -> EvalConfig:
        return EvalConfig(
            protocol="quick", context=3, horizon=3, num_videos=2, chunk=2, batch_size=2,
            progress=False, save_samples=False, **kwargs,
        )  # fmt: skip

    conditioned = evaluate(eval_config(run_dir=str(tmp_path / "run")))
    free = evaluate(eval_config(run_dir=str(tmp_path / "run"), actions=False))
    assert (
        conditioned.out_dir.endswith("eval/quick") and "without actions" not in conditioned.source
    )
    assert free.out_dir.endswith("eval/quick-no-actions") and "without actions" in free.source
    assert np.isfinite(conditioned.scores["psnr"].mean) and conditioned.horizon == 3
    run = load_trained_run(tmp_path / "run", report=lambda _: None)
    assert isinstance(run.model, AbstractVideoModel)
    save_model(run.model, tmp_path / "folder", source="test")
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps({"dataset_name": "codes", "data": dataclasses.asdict(data)}))
    folder = evaluate(eval_config(model_dir=str(tmp_path / "folder"), data_config=str(data_file)))
    assert folder.source == str(tmp_path / "folder")
    assert folder.scores["psnr"].mean == conditioned.scores["psnr"].mean  # same model, seed
    with pytest.raises(ValueError, match="--model-dir needs --data-config"):
        evaluate(eval_config(model_dir=str(tmp_path / "folder")))
    (tmp_path / "bad.json").write_text('{"data": {}}')
    with pytest.raises(ValueError, match="expected a mapping with `dataset_name`"):
        evaluate(eval_config(model_dir=str(tmp_path / "f"), data_config=str(tmp_path / "bad.json")))
    # Frames models refuse codes; codes of another tokenizer are refused by name.
    pixel = eqx.filter_eval_shape(
        lambda: make_model(model_spec("convs5").preset("small"), key=jax.random.key(0))[0]
    )
    with pytest.raises(ValueError, match="yields a tokenizer's codes, but ConvS5VideoModel"):
        check_model_takes_data(pixel, data)
    other_tok, other_state = eqx.filter_jit(lambda: make_model(TOKENIZER, key=jax.random.key(7)))()
    assert isinstance(other_tok, VQGAN2D)
    other = build(TINY, other_tok.with_state(other_state))
    with pytest.raises(ValueError, match="other weights"):
        check_model_takes_data(other, data)
    with pytest.raises(ValueError, match="trains on frames, but this batch holds"):
        pixel.loss(VideoBatch(codes=jnp.zeros((1, 4, 8, 8), jnp.int32)))
