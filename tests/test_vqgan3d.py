"""The 3D VQGAN tokenizer family (`vqgan3d`, TATS / MeBT): the released configuration's
sizes, the tokenizer contract (codes, decode, bad input), the objective (the GAN and
feature-matching terms from `disc_start`, the discriminators' roles), the state (EMA
codebook with TATS's first-batch initialisation, BatchNorm running statistics) and
training through `eqvid.train` with its reconstruction report."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng

import eqvid
from eqvid.data import MovingMNISTConfig
from eqvid.models import (
    AbstractVideoTokenizer,
    VideoBatch,
    decode_codes,
    encode_videos,
    make_model,
    model_spec,
    reconstruct_videos,
)
from eqvid.models._vqgan3d import (
    VQGAN3D,
    TATSImageDiscriminator,
    VQGAN3DConfig,
    feature_matching,
)
from eqvid.nn import BatchNorm3d
from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train

TINY = VQGAN3DConfig(
    frame_size=16,
    channels=1,
    n_hiddens=4,
    downsample=(2, 4, 4),
    embedding_dim=8,
    n_codes=16,
    norm_type="batch",
    restart_threshold=1.0,
    perceptual_weight=0.0,
    disc_channels=4,
    disc_layers=1,
    disc_start=3,
    train_frames=None,
)


def build(config: VQGAN3DConfig = TINY, seed: int = 0) -> tuple[VQGAN3D, eqx.nn.State]:
    model, state = make_model(config, key=jax.random.key(seed))
    assert isinstance(model, VQGAN3D) and state is not None
    return model, state


def count(tree) -> int:
    """Trainable parameters of a module built concretely or with
    `eqx.filter_eval_shape` (BatchNorm running statistics left out)."""
    leaves = jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )
    total = 0
    for path, leaf in leaves:
        name = getattr(path[-1], "name", None)
        if hasattr(leaf, "shape") and name not in ("running_mean", "running_var"):
            total += int(np.prod(leaf.shape))
    return total


def videos(batch=2, time=4, size=16, channels=1, seed=0):
    return jnp.asarray(
        rng("vqgan3d", seed).uniform(-1, 1, (batch, time, size, size, channels)), jnp.float32
    )


@pytest.mark.parametrize("preset", ["tats-ucf101-128", "tats-sky-128", "tats-taichi-128"])
def test_released_presets_have_the_original_parameter_counts(preset):
    """TATS's README configuration, counted from the original code's shapes: encoder
    7,403,648, decoder 16,116,995, each 1×1×1 conv 65,792 (generator 23,652,227);
    video discriminator 11,057,857, image discriminator 2,766,529; 20 BatchNorm
    layers with 6,400 running statistics; an EMA codebook of 16384 × 256."""
    config = dataclasses.replace(VQGAN3DConfig.preset(preset), perceptual_weight=0.0)
    assert (config.n_hiddens, config.downsample, config.norm_type) == (32, (4, 8, 8), "batch")
    assert (config.embedding_dim, config.n_codes, config.restart_threshold) == (256, 16384, None)
    assert (config.l1_weight, config.gan_feat_weight, config.disc_start) == (4.0, 4.0, 10_001)
    assert VQGAN3DConfig.preset(preset).perceptual_weight == 4.0
    model = eqx.filter_eval_shape(lambda: VQGAN3D(config, key=jax.random.key(0)))
    assert count(model.encoder) == 7_403_648
    assert count(model.decoder) == 16_116_995
    assert count(model.pre_vq_conv) == count(model.post_vq_conv) == 65_792
    parts = (model.encoder, model.decoder, model.pre_vq_conv, model.post_vq_conv)
    assert sum(count(p) for p in parts) == 23_652_227
    assert count(model.video_discriminator) == 11_057_857
    assert count(model.image_discriminator) == 2_766_529
    assert model.bn_stats is not None
    stats = model.bn_stats.init
    assert len(stats) == 20 and sum(a.size for pair in stats for a in pair) == 6_400
    assert model.quantize.ema is not None
    assert model.quantize.ema.init.codebook.shape == (16384, 256)
    assert model.code_shape(16, 128, 128) == (4, 16, 16)


def test_image_discriminator_layers_and_features():
    """TATS's 2D discriminator: padding 2, a bias on every convolution, 128² → 19²
    logits; features of every layer, the last being the logits."""
    d = TATSImageDiscriminator(3, 8, 3, key=jax.random.key(0))
    assert all(layer.conv.bias is not None for layer in d.layers)
    assert [layer.norm is not None for layer in d.layers] == [False, True, True, True, False]
    logits, feats = eqx.filter_eval_shape(d, jnp.zeros((2, 128, 128, 3)))
    assert logits.shape == (2, 19, 19, 1) and len(feats) == 5 and feats[-1] == logits
    assert [f.shape[1] for f in feats] == [65, 33, 17, 18, 19]
    assert [f.shape[-1] for f in feats] == [8, 16, 32, 64, 1]


def test_codes_decode_and_reconstruct():
    model, state = build()
    assert isinstance(model, AbstractVideoTokenizer)
    assert model_spec("vqgan3d").module is VQGAN3D
    model = model.with_state(state)
    v = videos()
    codes = encode_videos(model, v)
    assert codes.shape == (2, 2, 4, 4) and codes.dtype == jnp.int32
    assert model.code_shape(4, 16, 16) == (2, 4, 4)
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    frames = decode_codes(model, codes)
    assert frames.shape == v.shape
    # reconstruct = decode(encode): the straight-through vector is the code vector.
    np.testing.assert_allclose(reconstruct_videos(model, v), frames, atol=1e-5)
    # A convolutional codec: other divisible sizes give their own grids.
    assert eqx.filter_eval_shape(model.encode, videos(1, 6, 8)[0]).shape == (3, 2, 2)


def test_bad_input_names_what_is_wrong():
    model, state = build()
    model = model.with_state(state)
    with pytest.raises(ValueError, match=r"not divisible: time 3 by 2\. Use clips of a multiple"):
        model.code_shape(3, 16, 16)
    with pytest.raises(ValueError, match=r"not divisible: height 18 by 4, width 6 by 4"):
        model.encode(jnp.zeros((4, 18, 6, 1)))
    with pytest.raises(ValueError, match=r"`codes` holds code 16, outside \[0, 16\)"):
        decode_codes(model, np.full((1, 2, 4, 4), 16, np.int32))
    with pytest.raises(ValueError, match=r"VQGAN3D: videos must have 1 channels .* got 3"):
        model.check_batch(np.zeros((1, 4, 16, 16, 3), np.float32), None)
    with pytest.raises(ValueError, match=r"VQGAN3D: frames must be 16×16 .* got 32×32"):
        model.check_batch(np.zeros((1, 4, 32, 32, 1), np.float32), None)
    with pytest.raises(ValueError, match=r"time 5 by 2"):
        model.check_batch(np.zeros((1, 5, 16, 16, 1), np.float32), None)
    with pytest.raises(ValueError, match=r"`downsample` must be three powers of two"):
        dataclasses.replace(TINY, downsample=(3, 4, 4))
    with pytest.raises(ValueError, match=r"`frame_size` \(18\) must be a multiple"):
        dataclasses.replace(TINY, frame_size=18)
    with pytest.raises(ValueError, match=r"`train_frames` must be None or a positive multiple"):
        dataclasses.replace(TINY, train_frames=3)
    with pytest.raises(ValueError, match=r"`norm_groups` \(32\) must divide 2 · n_hiddens = 8"):
        dataclasses.replace(TINY, norm_type="group")


def test_feature_matching_and_its_weight():
    """Σ over all features but the logits of mean |f̂ - sg f|, weight 4/(3+1) = 1."""
    fake = (jnp.ones((2, 3)), jnp.zeros((4,)), jnp.full((1,), 9.0))
    real = (jnp.zeros((2, 3)), jnp.full((4,), 2.0), jnp.zeros((1,)))
    assert float(feature_matching(fake, real)) == pytest.approx(3.0)
    grad = jax.grad(lambda r: feature_matching(fake, r))(real)
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in grad)


def test_gan_terms_start_at_disc_start_and_each_part_descends_its_own():
    """Before `disc_start` the GAN and feature-matching terms are off (factor 0, the
    discriminators' loss 0); from it on the generator's loss gains exactly
    `image_gan_weight · g_image + video_gan_weight · g_video + gan_feat_loss`."""
    model, state = build(TINY, 2)
    batch = VideoBatch(videos(seed=2))
    keys = jax.random.split(jax.random.key(3), 2)
    loss_before, before, _ = model.loss(batch, state, key=keys, step=2)
    _, state = build(TINY, 2)  # a state passed to a training call is used up
    loss_after, after, _ = model.loss(batch, state, key=keys, step=3)
    assert float(before["disc_factor"]) == 0.0 and float(after["disc_factor"]) == 1.0
    assert float(before["disc_loss"]) == 0.0 and float(after["disc_loss"]) > 0.0
    assert float(before["gan_feat_loss"]) == 0.0 and float(after["gan_feat_loss"]) > 0.0
    for name in ("recon_loss", "commitment_loss", "image_gan_feat_loss", "g_video_loss"):
        assert float(before[name]) == pytest.approx(float(after[name]), rel=1e-6)
    gan = float(after["g_image_loss"]) + float(after["g_video_loss"])
    gan += 4.0 * (float(after["image_gan_feat_loss"]) + float(after["video_gan_feat_loss"]))
    np.testing.assert_allclose(float(loss_after) - float(loss_before), gan, rtol=1e-4, atol=1e-6)
    want = float(after["d_image_loss"]) + float(after["d_video_loss"])
    np.testing.assert_allclose(float(after["disc_loss"]), want, rtol=1e-6)
    assert set(after) == {
        "recon_loss",
        "perceptual_loss",
        "commitment_loss",
        "perplexity",
        "usage",
        "g_image_loss",
        "g_video_loss",
        "image_gan_feat_loss",
        "video_gan_feat_loss",
        "gan_feat_loss",
        "disc_factor",
        "d_image_loss",
        "d_video_loss",
        "disc_loss",
        "logits_image_real",
        "logits_image_fake",
        "logits_video_real",
        "logits_video_fake",
    }
    roles = eqvid.nn.parameter_roles(model)
    is_role = lambda r: hasattr(r, "group")
    for part in (roles.image_discriminator, roles.video_discriminator):
        found = {(r.group, r.objective) for r in jax.tree.leaves(part, is_leaf=is_role)}
        assert found == {("discriminator", "disc_loss")}
    gen = {r.group for r in jax.tree.leaves(roles.decoder, is_leaf=is_role)}
    assert gen == {"default"}
    groups = model.optimizer_groups()
    assert groups["discriminator"].start_step == 3
    assert (groups["default"].b1, groups["default"].b2) == (0.5, 0.9)


def test_no_image_gan_weight_no_image_feature_matching():
    config = dataclasses.replace(TINY, image_gan_weight=0.0)
    model, state = build(config, 6)
    _, terms, _ = model.loss(VideoBatch(videos(seed=6)), state, step=5)
    assert float(terms["image_gan_feat_loss"]) == 0.0
    assert float(terms["video_gan_feat_loss"]) > 0.0
    assert float(terms["d_image_loss"]) > 0.0  # logged, weighted 0 in disc_loss
    want = float(terms["d_video_loss"])
    np.testing.assert_allclose(float(terms["disc_loss"]), want, rtol=1e-6)


def test_codebook_starts_from_the_first_batch():
    """Step 1 sets every code to an encoder output of the batch (tiled with noise of
    scale 0.01/√dim when the batch has fewer vectors than codes), counts to 1; other
    steps leave the codebook alone."""
    config = dataclasses.replace(TINY, n_codes=64)
    model, state = build(config, 7)
    z = jax.random.normal(jax.random.key(8), (1, 1, 2, 2, 8))  # 4 vectors < 64 codes
    index = model.quantize.ema
    assert index is not None
    before = np.asarray(state.get(index).codebook)
    same = model._init_codebook(state, z, 2, jax.random.key(9)).get(index)
    np.testing.assert_array_equal(np.asarray(same.codebook), before)
    _, state = build(config, 7)
    new = model._init_codebook(state, z, 1, jax.random.key(9)).get(index)
    codebook = np.asarray(new.codebook)
    dist = np.abs(codebook[:, None, :] - np.asarray(z).reshape(1, 4, 8)).max(axis=-1)
    assert dist.min(axis=1).max() < 5 * 0.01 / np.sqrt(8)
    assert len({int(i) for i in dist.argmin(axis=1)}) == 4  # every vector used
    np.testing.assert_array_equal(np.asarray(new.cluster_size), np.ones(64))
    np.testing.assert_array_equal(np.asarray(new.embed_sum), codebook)


def test_ema_codebook_and_running_statistics_live_in_the_state():
    """A training call moves the EMA codebook and each codec BatchNorm's running
    statistics (momentum 0.1, unbiased variance); an evaluation call leaves the state;
    `with_state` folds both in."""
    model, state = build(TINY, 4)
    batch = VideoBatch(videos(seed=4))
    keys = jax.random.split(jax.random.key(5), 2)
    assert model.bn_stats is not None and model.quantize.ema is not None
    before = np.asarray(model.quantize.codebook(state))
    n_stats = len(state.get(model.bn_stats))
    _, _, new_state = model.loss(batch, state, key=keys, step=1)
    assert new_state is not None
    after = np.asarray(model.quantize.codebook(new_state))
    assert not np.allclose(before, after)
    stats = new_state.get(model.bn_stats)
    assert len(stats) == n_stats == 14  # encoder 2 levels · 2 + final; decoder final + 2 · 4
    # The first norm (encoder level 0, res.norm1) normalises down(conv_first(x / 2)).
    h = model.encoder.conv_first(0.5 * batch.frames("test"))
    h = np.asarray(model.encoder.conv_blocks[0].down(h), np.float64)
    flat = h.reshape(-1, h.shape[-1])
    np.testing.assert_allclose(stats[0][0], 0.1 * flat.mean(0), rtol=1e-4, atol=1e-6)
    # Unbiased variance (count / (count - 1) = 256 / 255 here), momentum 0.1 from 1.
    np.testing.assert_allclose((stats[0][1] - 0.9) / 0.1, flat.var(0, ddof=1), rtol=1e-3)
    # Evaluation: running statistics, state unchanged.
    _, _, same = model.loss(batch, new_state, key=None, step=1)
    assert same is not None
    np.testing.assert_allclose(model.quantize.codebook(same), after)
    np.testing.assert_allclose(same.get(model.bn_stats)[0][0], stats[0][0])
    folded = model.with_state(same)
    assert folded.bn_stats is None
    np.testing.assert_allclose(folded.quantize.codebook(), after)
    norm = folded.encoder.conv_blocks[0].res.norm1
    assert isinstance(norm, BatchNorm3d)
    np.testing.assert_allclose(norm.running_mean, stats[0][0])
    np.testing.assert_allclose(norm.running_var, stats[0][1])
    assert folded.encode(batch.frames("test")[0]).shape == (2, 4, 4)


def test_without_lpips_weights_it_says_so_and_trains_without_the_term(tmp_path, monkeypatch):
    monkeypatch.setenv("EQVID_WEIGHTS", str(tmp_path))
    with pytest.warns(UserWarning, match=r"VQGAN3D: no LPIPS weights .*without the perceptual"):
        model, state = build(dataclasses.replace(TINY, perceptual_weight=4.0))
    assert model.lpips is None
    _, terms, _ = model.loss(VideoBatch(videos()), state, step=1)
    assert float(terms["perceptual_loss"]) == 0.0


def test_small_preset_is_cpu_sized():
    config = VQGAN3DConfig.preset("small")
    assert (config.frame_size, config.channels, config.norm_type) == (64, 1, "group")
    assert config.restart_threshold == 1.0 and config.codebook_ema_decay == 0.99
    model = eqx.filter_eval_shape(lambda: VQGAN3D(config, key=jax.random.key(0)))
    assert model.bn_stats is None
    assert model.code_shape(8, 64, 64) == (4, 16, 16)
    assert count((model.encoder, model.decoder)) == 1_389_985


def test_trains_through_the_one_entry_with_a_reconstruction_report(tmp_path):
    """`train()` takes the tokenizer by its config (BatchNorm codec: running statistics
    in the model state, used by the report): input | reconstruction samples and
    eval.md / eval.json with PSNR, SSIM and the codebook's use."""
    run_dir = tmp_path / "run"
    config = TrainConfig(
        model=dataclasses.replace(TINY, frame_size=32, disc_start=2),
        data=MovingMNISTConfig(frame_size=32, seq_len=4, train_sequences=8, test_sequences=4),
        optimizer=OptimizerConfig(lr=1e-3, warmup_steps=0),
        run=RunConfig(
            run_dir=str(run_dir),
            steps=3,
            batch_size=2,
            log_every=1,
            sample_every=3,
            checkpoint_every=0,
            eval_sequences=4,
            progress=False,
            tensorboard=False,
        ),
        mesh=MeshConfig(devices=1),
    )
    result = train(config)
    assert result.report is not None
    report = result.report.as_dict()
    assert report["num_videos"] == 4 and report["frames"] == 4
    assert 0 < report["codes_used"] <= 16 and report["n_codes"] == 16
    assert np.isfinite(report["psnr"]) and report["ssim"] is not None
    text = (run_dir / "eval.md").read_text()
    assert "reconstruction of held-out videos" in text and "codes used" in text
    assert (run_dir / "samples" / "step_000003.png").is_file()
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"disc_loss", "g_video_loss", "image_gan_feat_loss", "recon_loss"} <= set(header)
    assert "grad_norm_disc_loss" in header
