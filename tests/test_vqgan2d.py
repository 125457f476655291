"""The 2D VQGAN tokenizer family (`vqgan2d`): the taming configurations' sizes, the
tokenizer contract (codes, decode, bad input), the objective (taming's adaptive GAN
weight, the discriminator's start, the terms it logs) and training through
`eqvid.train` with its reconstruction report and sample strip."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng

import eqvid
from eqvid.data import MovingMNISTConfig
from eqvid.evaluate import ReconstructionReport
from eqvid.models import (
    AbstractVideoTokenizer,
    VideoBatch,
    decode_codes,
    encode_videos,
    make_model,
    reconstruct_videos,
)
from eqvid.models._vqgan2d import VQGAN2D, VQGAN2DConfig, adaptive_weight, hinge_d_loss
from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train

TINY = VQGAN2DConfig(
    frame_size=16,
    channels=1,
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    z_channels=8,
    embed_dim=8,
    n_embed=16,
    disc_layers=1,
    disc_ndf=8,
    disc_start=3,
    perceptual_weight=0.0,
    train_frames=2,
)


def build(config: VQGAN2DConfig, seed: int = 0) -> tuple[VQGAN2D, eqx.nn.State | None]:
    model, state = make_model(config, key=jax.random.key(seed))
    assert isinstance(model, VQGAN2D)
    return model, state


def count(tree) -> int:
    """Parameters of a module built concretely or with `eqx.filter_eval_shape`."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return sum(int(np.prod(a.shape)) for a in leaves if hasattr(a, "shape"))


def videos(batch=2, time=3, size=16, channels=1, seed=0):
    return jnp.asarray(
        rng("vqgan2d", seed).uniform(-1, 1, (batch, time, size, size, channels)), jnp.float32
    )


@pytest.mark.parametrize(
    ("preset", "codebook"), [("taming-f16-1024", 1024), ("taming-f16-16384", 16384)]
)
def test_taming_presets_have_the_released_parameter_counts(preset, codebook):
    """Encoder, decoder, quant convs and codebook as taming's VQModel (72,141,699 and
    76,073,859 parameters, counted from the original code's shapes)."""
    config = dataclasses.replace(VQGAN2DConfig.preset(preset), perceptual_weight=0.0)
    model = eqx.filter_eval_shape(lambda: VQGAN2D(config, key=jax.random.key(0)))
    parts = (model.encoder, model.decoder, model.quant_conv, model.post_quant_conv)
    assert count(model.encoder) == 29_298_176
    assert count(model.decoder) == 42_449_795
    total = sum(count(p) for p in parts) + count(model.quantize)
    assert count(model.quantize) == codebook * 256
    assert total == {1024: 72_141_699, 16384: 76_073_859}[codebook]


@pytest.mark.parametrize(
    ("preset", "size", "codebook"),
    [("teco-dmlab", 64, 1024), ("teco-minecraft-128", 128, 1024), ("teco-habitat-128", 128, 8192)],
)
def test_teco_presets_code_frames_as_16_by_16(preset, size, codebook):
    config = dataclasses.replace(VQGAN2DConfig.preset(preset), perceptual_weight=0.0)
    assert (config.frame_size, config.code_size, config.n_embed) == (size, 16, codebook)
    model = eqx.filter_eval_shape(lambda: VQGAN2D(config, key=jax.random.key(0)))
    assert model.code_shape(5, size, size) == (5, 16, 16)


def test_codes_decode_and_reconstruct():
    model, state = build(TINY, 0)
    assert isinstance(model, AbstractVideoTokenizer) and state is None
    v = videos()
    codes = encode_videos(model, v)
    assert codes.shape == (2, 3, 8, 8) and codes.dtype == jnp.int32
    assert model.code_shape(3, 16, 16) == (3, 8, 8)
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    frames = decode_codes(model, codes)
    assert frames.shape == v.shape
    # reconstruct = decode(encode): the straight-through vector is the code vector.
    np.testing.assert_allclose(reconstruct_videos(model, v), frames, atol=1e-5)


def test_bad_input_names_what_is_wrong():
    model, _ = build(TINY, 0)
    with pytest.raises(ValueError, match=r"`codes` holds code 16, outside \[0, 16\)"):
        decode_codes(model, np.full((1, 1, 8, 8), 16, np.int32))
    with pytest.raises(ValueError, match=r"`codes` holds code -1"):
        decode_codes(model, np.full((1, 1, 8, 8), -1, np.int32))
    with pytest.raises(ValueError, match=r"VQGAN2D: frames must be 16×16 .* got 32×32"):
        model.encode(videos(size=32)[0])
    with pytest.raises(ValueError, match=r"VQGAN2D: videos must have 1 channels .* got 3"):
        model.check_batch(np.zeros((1, 2, 16, 16, 3), np.float32), None)
    with pytest.raises(ValueError, match=r"`frame_size` \(17\) must be a multiple of 2\*\*"):
        dataclasses.replace(TINY, frame_size=17)
    with pytest.raises(ValueError, match=r"`restart_threshold` needs `codebook_ema_decay`"):
        dataclasses.replace(TINY, restart_threshold=1.0)


def test_adaptive_weight_is_tamings_gradient_ratio_at_the_last_layer():
    """`d_weight` = ‖∇nll‖ / (‖∇g‖ + 1e-4) at `decoder.conv_out.weight`, clamped,
    times `disc_weight`: re-computed here by differentiating the decoder's whole
    output path with respect to that weight."""
    config = dataclasses.replace(TINY, disc_weight=0.7, train_frames=None)
    model, _ = build(config, 1)
    batch = VideoBatch(videos(seed=1))
    _, terms, _ = model.loss(batch, step=5)
    x = batch.frames("test").reshape(-1, 16, 16, 1)
    q, _ = model.quantize(model.quant_conv(model.encoder(x)))
    z = model.post_quant_conv(q.quantized)

    def nll_and_g(w):
        dec = eqx.tree_at(lambda d: d.conv_out.weight, model.decoder, w)
        x_hat = dec(z)
        return jnp.mean(jnp.abs(x - x_hat)), -jnp.mean(model.discriminator(x_hat))

    w = model.decoder.conv_out.weight
    g_nll = jax.grad(lambda w: nll_and_g(w)[0])(w)
    g_g = jax.grad(lambda w: nll_and_g(w)[1])(w)
    want = np.clip(np.linalg.norm(g_nll) / (np.linalg.norm(g_g) + 1e-4), 0, 1e4) * 0.7
    np.testing.assert_allclose(float(terms["d_weight"]), want, rtol=1e-4)
    np.testing.assert_allclose(float(adaptive_weight(g_nll, g_g, 0.7)), want, rtol=1e-5)


def test_without_lpips_weights_it_says_so_and_trains_without_the_term(tmp_path, monkeypatch):
    monkeypatch.setenv("EQVID_WEIGHTS", str(tmp_path))
    with pytest.warns(UserWarning, match=r"no LPIPS weights .*training without the perceptual"):
        model, _ = build(dataclasses.replace(TINY, perceptual_weight=1.0))
    assert model.lpips is None
    _, terms, _ = model.loss(VideoBatch(videos()), step=1)
    assert float(terms["p_loss"]) == 0.0


def test_hinge_loss():
    real = jnp.asarray([2.0, 0.5, -1.0])
    fake = jnp.asarray([-2.0, 0.0])
    want = 0.5 * (np.mean([0.0, 0.5, 2.0]) + np.mean([0.0, 1.0]))
    np.testing.assert_allclose(float(hinge_d_loss(real, fake)), want, rtol=1e-6)


def test_gan_terms_start_at_disc_start_and_each_part_descends_its_own():
    """Before `disc_start` the GAN terms are off (factor 0: the generator's loss has no
    adversarial part and the discriminator's loss is 0); from it on they count. The
    generator's loss does not train the discriminator's BatchNorm-free head by
    itself: training reads the discriminator's `disc_loss` term (its role)."""
    model, _ = build(TINY, 2)
    batch = VideoBatch(videos(seed=2))
    keys = jax.random.split(jax.random.key(3), 2)
    loss_before, before, _ = model.loss(batch, key=keys, step=2)
    loss_after, after, _ = model.loss(batch, key=keys, step=3)
    assert float(before["disc_factor"]) == 0.0 and float(after["disc_factor"]) == 1.0
    assert float(before["disc_loss"]) == 0.0 and float(after["disc_loss"]) > 0.0
    gan = float(after["d_weight"]) * float(after["g_loss"])
    np.testing.assert_allclose(float(loss_after) - float(loss_before), gan, rtol=1e-4, atol=1e-6)
    expected = {
        "rec_loss",
        "p_loss",
        "nll_loss",
        "g_loss",
        "d_weight",
        "disc_factor",
        "quant_loss",
        "commitment_loss",
        "codebook_loss",
        "perplexity",
        "usage",
        "disc_loss",
        "logits_real",
        "logits_fake",
    }
    assert set(after) == expected
    roles = eqvid.nn.parameter_roles(model)
    disc_roles = jax.tree.leaves(roles.discriminator, is_leaf=lambda r: hasattr(r, "group"))
    assert {(r.group, r.objective) for r in disc_roles} == {("discriminator", "disc_loss")}
    groups = model.optimizer_groups()
    assert groups["discriminator"].start_step == 3 and groups["default"].b1 == 0.5


def test_ema_codebook_lives_in_the_state_and_is_folded_in():
    config = dataclasses.replace(TINY, codebook_ema_decay=0.9, restart_threshold=0.5)
    model, state = build(config, 4)
    assert state is not None
    batch = VideoBatch(videos(seed=4))
    keys = jax.random.split(jax.random.key(5), 2)
    before = np.asarray(model.quantize.codebook(state))
    _, terms, new_state = model.loss(batch, state, key=keys, step=1)
    assert float(terms["codebook_loss"]) == 0.0
    after = np.asarray(model.quantize.codebook(new_state))
    assert not np.allclose(before, after)
    folded = model.with_state(new_state)
    np.testing.assert_allclose(folded.quantize.codebook(), after)
    _, _, same = model.loss(batch, new_state, key=None, step=1)  # evaluation: no update
    assert same is not None
    np.testing.assert_allclose(model.quantize.codebook(same), after)


def test_trains_through_the_one_entry_with_a_reconstruction_report(tmp_path):
    """`train()` takes the tokenizer by its config: input | reconstruction samples and
    eval.md / eval.json with PSNR, SSIM and the codebook's use."""
    run_dir = tmp_path / "run"
    config = TrainConfig(
        model=dataclasses.replace(TINY, frame_size=32, disc_start=2),
        data=MovingMNISTConfig(frame_size=32, seq_len=3, train_sequences=8, test_sequences=4),
        optimizer=OptimizerConfig(lr=1e-3, warmup_steps=0),
        run=RunConfig(
            run_dir=str(run_dir),
            steps=3,
            batch_size=2,
            log_every=1,
            sample_every=2,
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
    assert report["num_videos"] == 4 and report["frames"] == 3
    assert 0 < report["codes_used"] <= 16 and report["n_codes"] == 16
    assert np.isfinite(report["psnr"]) and report["ssim"] is not None
    text = (run_dir / "eval.md").read_text()
    assert "reconstruction of held-out videos" in text and "codes used" in text
    assert (run_dir / "samples" / "step_000002.png").is_file()
    assert (run_dir / "samples" / "step_000003.png").is_file()
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"disc_loss", "d_weight", "perplexity", "usage", "rec_loss"} <= set(header)
    assert "grad_norm_disc_loss" in header

    # The evaluation entry scores a tokenizer's run on reconstructions.
    from eqvid.evaluate import EvalConfig, evaluate, evaluate_tokenizer, is_tokenizer_run

    out = tmp_path / "eval"
    eval_config = EvalConfig(run_dir=str(run_dir), num_videos=3, out_dir=str(out))
    assert is_tokenizer_run(str(run_dir))
    with pytest.raises(ValueError, match="is a tokenizer's run: score its reconstructions"):
        evaluate(eval_config)
    evaluated = evaluate_tokenizer(eval_config)
    assert isinstance(evaluated, ReconstructionReport)
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["num_videos"] == 3 and scored["n_codes"] == 16 and scored["lpips"] is None
    assert "codes used" in (out / "metrics.md").read_text()
    assert evaluated.wrote() == f"eqvid: wrote metrics.json, metrics.md to {out}"
