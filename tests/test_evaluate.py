"""The evaluation entry point end to end: a tiny run trained on TECO-format files
(RGB, actions) → generation under a protocol → sample files, metrics (checked
against the saved files), plot; scoring existing samples; errors."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import eqvid
from eqvid.data import TecoConfig, evaluation_videos
from eqvid.evaluate import EvalConfig, evaluate, load_trained_run
from eqvid.evaluate.__main__ import main as cli_main
from eqvid.metrics import LPIPS, frame_metrics, load_samples_npz, psnr_ceiling, save_samples_npz
from eqvid.metrics._lpips import lpips_weight_shapes
from eqvid.models import rollout
from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train

TINY = eqvid.ConvS5Config(
    frame_size=32,
    channels=3,
    encoder_depths=(4, 8),
    d_model=8,
    ssm_size=8,
    n_layers=1,
    action_dim=3,
)


def _teco_files(root, split, count, rng):
    """TECO's layout: one npz per trajectory with `video` (T, H, W, 3) and `actions` (T,)."""
    folder = root / split / "part0"
    folder.mkdir(parents=True)
    for i in range(count):
        np.savez(
            folder / f"{i:03d}.npz",
            video=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
            actions=rng.integers(0, 3, 8),
        )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmlab")
    rng = np.random.default_rng(0)
    _teco_files(root, "train", 6, rng)
    _teco_files(root, "test", 4, rng)
    return TecoConfig(root=str(root), seq_len=5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("run")
    train(
        TrainConfig(
            model=TINY,
            data=data,
            optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1),
            run=RunConfig(
                run_dir=str(run_dir),
                steps=2,
                batch_size=2,
                checkpoint_every=0,
                sample_every=0,
                eval_sequences=0,
                progress=False,
            ),
            mesh=MeshConfig(devices=1),
        )
    )
    return run_dir


def _features(videos):
    """A cheap stand-in for I3D: per-video statistics (the FVD plumbing under test)."""
    v = np.asarray(videos, np.float64)
    return np.stack(
        [v.mean(axis=(1, 2, 3, 4)), v.std(axis=(1, 2, 3, 4)), v[:, -1].mean(axis=(1, 2, 3))], 1
    )


def _psnr_reference(real, fake, context, chunk):
    r = real[:, context:].astype(np.float64) / 255
    f = fake[:, context:].astype(np.float64) / 255
    mse = np.mean((r - f) ** 2, axis=(2, 3, 4))
    per_video = np.mean(-10 * np.log10(mse), axis=1)
    chunks = per_video.reshape(-1, chunk).mean(axis=1)
    return chunks.mean(), chunks.std()


def _predicted(real, context, frames):
    """`real`'s context frames followed by `frames` (broadcast to the horizon)."""
    b, t = real.shape[:2]
    after = np.broadcast_to(frames, (b, t - context, *real.shape[2:])).astype(np.uint8)
    return np.concatenate([real[:, :context], after], axis=1)


def test_evaluate_a_run_writes_samples_metrics_and_plot(run_dir, data, tmp_path):
    rng = np.random.default_rng(0)
    weights = {
        k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in lpips_weight_shapes().items()
    }
    lpips = LPIPS({k: np.abs(v) if k.startswith("lin") else v for k, v in weights.items()})
    out = tmp_path / "eval"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "data_9.npz").write_bytes(b"left by an earlier evaluation")
    config = EvalConfig(
        run_dir=str(run_dir),
        protocol="quick",
        context=3,
        horizon=2,
        num_videos=4,
        chunk=2,
        batch_size=2,
        metrics=("psnr", "ssim", "lpips", "fvd"),
        out_dir=str(out),
        progress=False,
    )
    with pytest.warns(UserWarning, match="chunk=2"):
        report = evaluate(config, lpips=lpips, i3d=_features)

    # The sample files hold the real videos and the model's rollout after them.
    samples = load_samples_npz(out / "samples")
    assert samples.real.shape == (4, 5, 32, 32, 3) and samples.context == 3
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["data_0.npz", "data_1.npz"]
    np.testing.assert_array_equal(samples.fake[:, :3], samples.real[:, :3])
    model = load_trained_run(run_dir).model
    assert isinstance(model, eqvid.AbstractVideoModel)
    context = samples.real[:2, :3].astype(np.float32) / np.float32(127.5) - np.float32(1)
    real, actions = next(evaluation_videos(data, num_videos=2, length=5, batch_size=2))
    np.testing.assert_array_equal(real, samples.real[:2])  # the test split, from frame 0
    pred = np.asarray(rollout(model, context, 2, key=jax.random.key(0), actions=actions))
    pred = np.clip(pred, -1, 1)
    want = np.round((pred + np.float32(1)) * np.float32(127.5)).astype(np.uint8)
    np.testing.assert_array_equal(samples.fake[:2, 3:], want)

    # PSNR as the papers reduce it, recomputed from the files.
    mean, std = _psnr_reference(samples.real, samples.fake, 3, 2)
    np.testing.assert_allclose(
        [report.scores["psnr"].mean, report.scores["psnr"].std], [mean, std], rtol=1e-5
    )
    assert set(report.scores) == {"psnr", "ssim", "lpips", "fvd"} and report.kvd is not None
    assert len(report.per_frame["ssim"]) == 2 and report.num_videos == 4
    assert all(len(s.per_chunk) == 2 for s in report.scores.values())

    # The baselines, from the same real videos, on the frame metrics (not FVD).
    assert set(report.baselines) == {"copy_last", "mean_context", "empty"}
    for baseline in report.baselines.values():
        assert set(baseline) == {"psnr", "ssim", "lpips"}
        assert all(len(s.per_chunk) == 2 for s in baseline.values())
    copy_last = _predicted(samples.real, 3, samples.real[:, 2:3])
    mean, std = _psnr_reference(samples.real, copy_last, 3, 2)
    got = report.baselines["copy_last"]["psnr"]
    np.testing.assert_allclose([got.mean, got.std], [mean, std], rtol=1e-5)
    assert len(report.baseline_per_frame["empty"]["lpips"]) == 2

    written = json.loads((out / "metrics.json").read_text())
    assert written["scores"]["fvd"]["chunk_size"] == 2 and written["horizon"] == 2
    assert written["baselines"]["copy_last"]["psnr"]["mean"] == got.mean
    assert (
        written["baseline_per_frame"]["empty"]["ssim"] == report.baseline_per_frame["empty"]["ssim"]
    )
    table = (out / "metrics.md").read_text()
    assert table.count("# Evaluation") == 1 and table.count(" → ") == 1  # settings said once
    assert "| metric | model | copy last frame | mean context frame | empty frame |" in table
    assert "| PSNR (dB) | " in table and " ± " in table and "2 chunks of 2 videos" in table
    assert "| FVD (lower is better) | " in table and "| — | — | — |" in table
    assert "not for the baselines" in table and "not comparable" in table
    assert (out / "per_frame.png").stat().st_size > 0
    csv = (out / "per_frame.csv").read_text().splitlines()
    assert csv[0].startswith("frame,predicted_frame,psnr,") and "lpips_empty" in csv[0]
    assert csv[1].startswith("4,1,")
    assert report.out_dir == str(out)
    assert report.files == (
        "metrics.json",
        "metrics.md",
        "per_frame.csv",
        "per_frame.png",
        "samples/",
    )

    # Scoring the saved files again gives the same frame metrics.
    again = evaluate(
        EvalConfig(
            samples=str(out / "samples"),
            context=3,
            chunk=2,
            metrics=("psnr", "ssim"),
            out_dir=str(tmp_path / "again"),
            progress=False,
        )
    )
    for name in ("psnr", "ssim"):
        assert again.scores[name] == report.scores[name]


def test_evaluate_errors_name_what_is_wrong(run_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="exactly one of --run-dir"):
        evaluate(EvalConfig())
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluate(EvalConfig(run_dir=str(tmp_path / "nothing"), metrics=("psnr",)))
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
        load_trained_run(run_dir, step=7)
    with pytest.raises(ValueError, match="unknown protocol 'nope'"):
        evaluate(EvalConfig(run_dir=str(run_dir), protocol="nope"))
    with pytest.raises(ValueError, match=r"--metrics: unknown \['mse'\]"):
        evaluate(EvalConfig(run_dir=str(run_dir), metrics=("mse",)))
    monkeypatch.setenv("EQVID_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(FileNotFoundError, match="lpips_alexnet.npz"):
        evaluate(EvalConfig(run_dir=str(run_dir), metrics=("lpips",), out_dir=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="one chunk needs 64 videos, got 4"):
        evaluate(
            EvalConfig(
                run_dir=str(run_dir),
                context=3,
                horizon=2,
                num_videos=4,
                metrics=("psnr",),
                out_dir=str(tmp_path / "o"),
                progress=False,
            )
        )


def test_scoring_files_takes_their_context_from_the_files_or_asks(tmp_path):
    """TECO's files do not record the context: it must be given (or a protocol named),
    never guessed; a perfect prediction's infinite PSNR counts as the finite ceiling."""
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (4, 6, 16, 16, 1), dtype=np.uint8)
    fake = real.copy()
    fake[:2, 4:] = rng.integers(0, 256, (2, 2, 16, 16, 1), dtype=np.uint8)  # frames 4, 5 differ
    folder = tmp_path / "teco_samples"
    folder.mkdir()
    np.savez(folder / "data_0.npz", real=real, fake=fake)  # no `context`, as TECO writes them
    with pytest.raises(ValueError, match="do not record their number of context frames.*--context"):
        evaluate(EvalConfig(samples=str(folder), chunk=2, metrics=("psnr",), progress=False))

    def scored(**given):
        return evaluate(
            EvalConfig(
                samples=str(folder),
                chunk=2,
                metrics=("psnr", "ssim"),
                out_dir=str(tmp_path / "out"),
                progress=False,
                **given,
            )
        )

    four = scored(context=4)
    assert four.context == 4 and four.horizon == 2
    r, f = real[:2, 4:].astype(np.float64) / 255, fake[:2, 4:].astype(np.float64) / 255
    per_video = np.mean(-10 * np.log10(np.mean((r - f) ** 2, axis=(2, 3, 4))), axis=1)
    np.testing.assert_allclose(four.scores["psnr"].per_chunk[0], per_video.mean(), rtol=1e-5)
    # Videos 2, 3 are predicted exactly (PSNR +inf): they count as the ceiling, and the
    # report says how many frames did.
    cap = psnr_ceiling(16, 16, 1)
    np.testing.assert_allclose(cap, 10 * np.log10(255**2 * 16 * 16))
    np.testing.assert_allclose(four.scores["psnr"].per_chunk[1], cap, rtol=1e-6)
    assert four.identical == {"model": 4, "copy_last": 0, "mean_context": 0, "empty": 0}
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert np.isfinite(written["scores"]["psnr"]["mean"]) and written["identical"]["model"] == 4
    text = (tmp_path / "out" / "metrics.md").read_text()
    assert f"count as {cap:.2f} dB" in text and "the model: 4 of 8" in text
    # A named protocol lends its context (quick: 10 > 6 frames: an error saying so).
    with pytest.raises(ValueError, match="context"):
        scored(protocol="quick")
    assert scored(protocol="quick", context=3).horizon == 3  # --context wins


def test_cli_help_lists_the_protocols(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for word in (
        "convs5-mmnist-800",
        "teco-dmlab",
        "--run-dir",
        "--samples",
        "--metrics",
        "convert_weights",
    ):
        assert word in text


def test_baselines_are_scored_beside_the_model(tmp_path):
    """A model that copies the last context frame scores exactly as that baseline;
    the empty (black) and mean-context baselines match PSNR computed by hand; the
    report says plainly where a baseline beats the model; ± only over several chunks;
    no FVD sentence without FVD."""
    rng = np.random.default_rng(2)
    real = rng.integers(0, 256, (4, 6, 16, 16, 1), dtype=np.uint8)
    copies = tmp_path / "copies"
    save_samples_npz(copies / "data_0.npz", real, _predicted(real, 3, real[:, 2:3]), context=3)

    def scored(folder, chunk, out):
        return evaluate(
            EvalConfig(
                samples=str(folder),
                chunk=chunk,
                metrics=("psnr", "ssim"),
                out_dir=str(tmp_path / out),
                progress=False,
            )
        )

    report = scored(copies, 2, "two_chunks")
    assert report.baselines["copy_last"] == report.scores  # the same numbers, exactly
    assert report.baseline_per_frame["copy_last"] == report.per_frame
    for name, black in (
        ("empty", np.zeros((1, 1, 16, 16, 1), np.uint8)),
        ("mean_context", np.round(real[:, :3].mean(axis=1, keepdims=True))),
    ):
        mean, std = _psnr_reference(real, _predicted(real, 3, black), 3, 2)
        got = report.baselines[name]["psnr"]
        np.testing.assert_allclose([got.mean, got.std], [mean, std], rtol=1e-5)
    # The empty frame by hand: PSNR of black against frames in [0, 1] is -10 log10(E[x²]).
    x = real[:, 3:].astype(np.float64) / 255
    by_hand = np.mean(-10 * np.log10(np.mean(x**2, axis=(2, 3, 4))), axis=1)
    np.testing.assert_allclose(
        report.baselines["empty"]["psnr"].per_chunk,
        [by_hand[:2].mean(), by_hand[2:].mean()],
        rtol=1e-5,
    )
    table = report.markdown()
    assert " ± " in table and "2 chunks of 2 videos" in table
    # Noise is better predicted by its mean: on PSNR the model (= copy last) loses to
    # it, and only to it, at every frame.
    assert "- PSNR: the model is below mean context frame at every predicted frame.\n" in table

    # A model that copies for two frames, then predicts the third almost exactly.
    near = real ^ np.uint8(1)  # the lowest bit flipped: PSNR ≈ 48 dB
    fake = _predicted(real, 3, real[:, 2:3])
    fake[:, 5] = near[:, 5]
    mixed = tmp_path / "mixed"
    save_samples_npz(mixed / "data_0.npz", real, fake, context=3)
    report = scored(mixed, 4, "one_chunk")
    assert report.per_frame["psnr"][:2] == report.baseline_per_frame["copy_last"]["psnr"][:2]
    table = (tmp_path / "one_chunk" / "metrics.md").read_text()
    assert table.count("# Evaluation") == 1 and table.count(" → ") == 1
    assert "±" not in table and "no spread" in table
    assert "FVD" not in table
    assert "below mean context frame at predicted frames 1–2." in table
    psnr_row = next(line for line in table.splitlines() if line.startswith("| PSNR (dB) |"))
    assert psnr_row.count("|") == 6  # metric, model and three baselines


def test_cli_prints_the_report_once_and_where_it_wrote(tmp_path, capsys):
    rng = np.random.default_rng(3)
    real = rng.integers(0, 256, (2, 5, 16, 16, 1), dtype=np.uint8)
    folder = tmp_path / "samples"
    save_samples_npz(folder / "data_0.npz", real, _predicted(real, 2, real[:, 1:2]), context=2)
    out = tmp_path / "out"
    argv = ["--samples", str(folder), "--chunk", "2", "--metrics", "psnr", "ssim"]
    assert cli_main([*argv, "--out-dir", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.count("# Evaluation") == 1 and text.count(" → ") == 1
    assert "| PSNR (dB) |" in text
    assert text.strip().splitlines()[-1] == (
        f"eqvid: wrote metrics.json, metrics.md, per_frame.csv, per_frame.png to {out}"
    )


def test_best_of_k_scores_each_video_by_its_best_sample_per_metric(run_dir, tmp_path, monkeypatch):
    # A stand-in for a stochastic model: each key gives another noisy copy of the truth's
    # last context frame, so the samples of a video differ and best-of-k has a choice.
    drawn = []

    def noisy_rollout(model, context, horizon, *, key, actions=None):
        del model, actions
        noise = jax.random.uniform(key, (context.shape[0], horizon, *context.shape[2:]))
        pred = np.clip(np.asarray(context[:, -1:]) + 0.8 * np.asarray(noise) - 0.4, -1, 1)
        drawn.append(pred)
        return pred

    monkeypatch.setattr(eqvid.models, "rollout", noisy_rollout)
    base = EvalConfig(
        run_dir=str(run_dir), context=3, horizon=2, num_videos=4, chunk=4, batch_size=4,
        metrics=("psnr", "ssim"), progress=False,
    )  # fmt: skip
    config = dataclasses.replace(base, samples_per_video=3, out_dir=str(tmp_path / "k3"))
    report = evaluate(config)
    assert len(drawn) == 3 and report.samples_per_video == 3
    real = load_samples_npz(tmp_path / "k3" / "samples").real
    ctx = real[:, :3]
    scores = {}
    for pred in drawn:
        fake = np.concatenate(
            [ctx, np.round((pred + 1) * np.float32(127.5)).astype(np.uint8)], axis=1
        )
        values = frame_metrics(real, fake, context=3, value_range="uint8")
        for name in ("psnr", "ssim"):
            scores.setdefault(name, []).append(values[name].mean(axis=1))
    for name in ("psnr", "ssim"):
        best = np.max(scores[name], axis=0)  # per video, this metric's own best sample
        np.testing.assert_allclose(report.scores[name].mean, best.mean(), rtol=1e-5)
        assert report.scores[name].mean > np.mean(scores[name][0])  # better than sample 0
    assert (
        "best of its 3 samples, chosen per frame metric"
        in (tmp_path / "k3" / "metrics.md").read_text()
    )
    # The saved samples are each video's first.
    saved = load_samples_npz(tmp_path / "k3" / "samples").fake[:, 3:]
    np.testing.assert_array_equal(saved, np.round((drawn[0] + 1) * np.float32(127.5)))
    with pytest.raises(ValueError, match="--samples-per-video must be ≥ 1, got 0"):
        evaluate(dataclasses.replace(base, samples_per_video=0, out_dir=str(tmp_path / "k0")))
