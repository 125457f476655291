"""MeBT as an eqvid model family: the released configs' sizes, training on encoded
codes through the one entry (the loss falls; resume; evaluation), generation that
keeps the observed tokens, and the errors bad input gets."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.data import CodesConfig
from eqvid.models import (
    VQGAN3D,
    MeBTConfig,
    MeBTVideoModel,
    VQGAN3DConfig,
    make_model,
    model_spec,
    save_tokenizer,
)

TOKENIZER = VQGAN3DConfig(
    frame_size=16, channels=1, n_hiddens=4, downsample=(2, 4, 4), embedding_dim=8, n_codes=16,
    norm_type="batch", perceptual_weight=0.0, disc_channels=4, disc_layers=1, train_frames=None,
)  # fmt: skip
TINY = dataclasses.replace(
    MeBTConfig.preset("small"), frame_size=16, channels=1, max_steps=4, dim=32, num_heads=2,
    num_latents=8, sample_steps=6, attention_impl="xla",
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    model, state = eqx.filter_jit(lambda: make_model(TOKENIZER, key=jax.random.key(0)))()
    return model.with_state(state)


@pytest.fixture(scope="module")
def mebt(tokenizer):
    return eqx.filter_jit(lambda t: MeBTVideoModel(TINY, key=jax.random.key(1), tokenizer=t))(
        tokenizer
    )


def trainable_count(model) -> int:
    def size(tree):
        return sum(math.prod(x.shape) for x in jax.tree.leaves(tree) if hasattr(x, "shape"))

    return size(model) - size(model.tokenizer)


# Counted from the original's module shapes (Ugness/MeBT gpt.py, transformer.py; the
# frozen TATS VQGAN of 16384 codes left out): 24 × (12·1024² + 13·1024) + ln_f + head +
# tok_emb + mask_emb + 256 latents + 1024 (16 frames) or 8192 (128) positions.
@pytest.mark.parametrize(
    "name,expected",
    [
        ("ucf-16f", 337_177_600), ("ucf-128f", 344_517_632), ("sky-16f", 337_177_600),
        ("sky-128f", 344_517_632), ("taichi-16f", 337_177_600), ("taichi-128f", 344_517_632),
    ],
)  # fmt: skip
def test_released_configs_have_the_originals_parameter_counts(name, expected):
    tats = dataclasses.replace(VQGAN3DConfig(frame_size=128, channels=3), perceptual_weight=0.0)
    tok = eqx.filter_eval_shape(lambda: make_model(tats, key=jax.random.key(0))[0])
    config = model_spec("mebt").preset(name)
    model = eqx.filter_eval_shape(
        lambda: MeBTVideoModel(config, key=jax.random.key(0), tokenizer=tok)
    )
    assert model.grid == (16, 16) and model.network.max_tokens == config.max_steps * 256
    assert trainable_count(model) == expected


def test_the_loss_is_the_mean_cross_entropy_of_the_masked_tokens(mebt):
    codes = jax.random.randint(jax.random.key(2), (3, 4, 4, 4), 0, 16)
    keys = jax.random.split(jax.random.key(3), 3)
    loss, terms, _ = eqx.filter_jit(lambda m, c, k: m.codes_loss(c, None, key=k))(mebt, codes, keys)
    # Restated: each video's own split (the keys the model folds), its targets' CE summed,
    # over the batch's masked tokens.
    from eqvid.nn import maskgen_split

    total, masked = 0.0, 0
    for i in range(3):
        split = maskgen_split(jax.random.fold_in(keys[i], 1), (4, 4, 4), budget=64)
        flat = codes[i].reshape(-1)
        logits = mebt.network(
            flat, split.context_index, split.n_contexts, split.target_index, split.n_targets
        )
        logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
        n = int(split.n_targets)
        tgt = np.asarray(split.target_index)[:n]
        total += -np.sum(np.asarray(logp)[np.arange(n), np.asarray(flat)[tgt]])
        masked += int(split.n_masked)
    assert float(loss) == pytest.approx(total / masked, rel=1e-5)
    assert set(terms) == {"mask_loss", "acc1"} and 0 <= float(terms["acc1"]) <= 1
    # Evaluation (no key) splits from a fixed key: the same loss every time.
    a = mebt.codes_loss(codes, None)[0]
    assert float(a) == float(mebt.codes_loss(codes, None)[0])


def test_generation_keeps_the_observed_tokens_and_draws_the_rest(mebt):
    codes = jax.random.randint(jax.random.key(4), (4, 4, 4), 0, 16)
    gen = eqx.filter_jit(lambda m, c, k: m.generate_codes(c, 2, key=k))
    a = gen(mebt, codes[:2], jax.random.key(5))
    b = gen(mebt, codes[:2], jax.random.key(6))
    assert a.shape == (2, 4, 4) and int(a.min()) >= 0 and int(a.max()) < 16
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # different keys, different draws
    np.testing.assert_array_equal(a, gen(mebt, codes[:2], jax.random.key(5)))
    # The observed tokens are kept exactly inside the sampler (the volume it decodes).
    from eqvid.nn import mebt_sample

    flat = codes.reshape(-1)
    known = jnp.arange(64) < 32
    out, _ = mebt_sample(mebt.network, flat, known, key=jax.random.key(7), num_steps=4)
    np.testing.assert_array_equal(np.asarray(out)[:32], np.asarray(flat)[:32])
    # From nothing: frames decoded by the tokenizer.
    video = eqx.filter_jit(lambda m, k: m.generate_unconditional(8, key=k))(mebt, jax.random.key(8))
    assert video.shape == (8, 16, 16, 1) and float(jnp.abs(video).max()) <= 1.0


def test_bad_inputs_name_the_counts(mebt):
    with pytest.raises(ValueError, match="max_steps = 4"):
        mebt.generate_codes(jnp.zeros((3, 4, 4), jnp.int32), 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="unconditional on actions"):
        mebt.generate_codes(
            jnp.zeros((1, 4, 4), jnp.int32),
            1,
            key=jax.random.key(0),
            actions=jnp.zeros(4, jnp.int32),
        )
    with pytest.raises(ValueError, match="code 16 is outside|outside"):
        mebt.check_codes_batch(np.full((1, 2, 4, 4), 16), None)
    with pytest.raises(ValueError, match="5 latent steps exceed max_steps = 4"):
        mebt.check_codes_batch(np.zeros((1, 5, 4, 4), np.int64), None)
    with pytest.raises(ValueError, match="grid"):
        mebt.check_codes_batch(np.zeros((1, 2, 8, 8), np.int64), None)
    with pytest.raises(ValueError, match="unconditional on actions"):
        mebt.check_codes_batch(np.zeros((1, 2, 4, 4), np.int64), np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match="budget"):
        MeBTVideoModel(
            dataclasses.replace(TINY, budget=65), key=jax.random.key(0), tokenizer=mebt.tokenizer
        )
    with pytest.raises((ValueError, TypeError), match="schedule"):  # the runtime type check
        dataclasses.replace(TINY, schedule="log")
    with pytest.raises((ValueError, TypeError), match="length_prior"):  # the runtime type check
        dataclasses.replace(TINY, length_prior="gaussian")


def test_trains_on_codes_through_the_one_entry_and_evaluates(tmp_path):
    from eqvid.data.encode import main as encode
    from eqvid.evaluate._rollout_report import RolloutReport
    from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train

    # Moving MNIST's digits need 32×32 frames: a 3D tokenizer of them (8×8 codes).
    tok32, state = eqx.filter_jit(
        lambda: make_model(dataclasses.replace(TOKENIZER, frame_size=32), key=jax.random.key(0))
    )()
    assert isinstance(tok32, VQGAN3D)
    folder = tmp_path / "tok"
    save_tokenizer(tok32.with_state(state), folder)
    args = ["--tokenizer", str(folder), "--out", str(tmp_path / "codes"), "--no-progress"]
    args += ["--frame-size", "32", "--seq-len", "8", "--train-sequences", "4"]
    encode([*args, "--test-sequences", "2"])
    data = CodesConfig(root=str(tmp_path / "codes"), seq_len=4)
    model = dataclasses.replace(TINY, frame_size=32, tokenizer=str(folder))

    def config(steps, resume):
        return TrainConfig(
            model=model,
            data=data,
            optimizer=OptimizerConfig(lr=3e-3, warmup_steps=0),
            run=RunConfig(
                run_dir=str(tmp_path / "run"), steps=steps, batch_size=4, log_every=1,
                sample_every=0, checkpoint_every=steps, eval_sequences=2 if resume else 0,
                eval_context=4, eval_horizon=4, progress=False, tensorboard=False,
                resume=resume,
            ),
            mesh=MeshConfig(devices=1),
        )  # fmt: skip

    first = train(config(24, False))
    import csv

    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["mask_loss"]) for r in rows]
    assert len(losses) == 24 and {"mask_loss", "acc1"} <= set(rows[0])
    assert np.mean(losses[-6:]) < 0.9 * np.mean(losses[:6])  # the loss falls
    assert first.step == 24
    resumed = train(config(25, True))  # the end-of-run report: rollouts decoded to frames
    assert resumed.step == 25 and isinstance(resumed.report, RolloutReport)
    assert resumed.report.horizon == 4

    # MeBT's own evaluation: clips drawn from nothing against the training split's
    # videos (here the codes decoded by their tokenizer), FVD/KVD per run.
    from eqvid.evaluate import EvalConfig, evaluate_unconditional

    def stats(videos):  # a cheap stand-in for I3D
        v = np.asarray(videos, np.float64)
        return np.stack([v.mean(axis=(1, 2, 3, 4)), v.std(axis=(1, 2, 3, 4))], 1)

    settings = EvalConfig(
        run_dir=str(tmp_path / "run"), protocol="mebt-16f", horizon=8, num_videos=4, runs=1,
        batch_size=4, save_samples=False, progress=False,
    )  # fmt: skip
    report = evaluate_unconditional(settings, i3d=stats)
    assert report.source.endswith("(step 25)") and "train split" in report.real
    assert "decoded by their tokenizer" in report.real
    assert np.isfinite(report.scores["fvd"].mean) and report.out_dir.endswith("eval/mebt-16f")
