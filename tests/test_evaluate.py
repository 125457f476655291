"""The evaluation entry point end to end: a tiny run trained on TECO-format files
(RGB, actions) → generation under a protocol → sample files, metrics (checked
against the saved files), plot; scoring existing samples; errors."""

import json

import jax
import numpy as np
import pytest

import eqvid
from eqvid.data import TecoConfig, evaluation_videos
from eqvid.evaluate import EvalConfig, evaluate, load_trained_run
from eqvid.evaluate.__main__ import main as cli_main
from eqvid.metrics import LPIPS, load_samples_npz
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

    written = json.loads((out / "metrics.json").read_text())
    assert written["scores"]["fvd"]["chunk_size"] == 2 and written["horizon"] == 2
    table = (out / "metrics.md").read_text()
    assert "| PSNR |" in table and "| FVD |" in table and "not comparable" in table
    assert (out / "per_frame.png").stat().st_size > 0
    assert (out / "per_frame.csv").read_text().splitlines()[1].startswith("4,")

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
    never guessed; a perfect prediction's infinite PSNR is written as valid JSON."""
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
    assert four.scores["psnr"].per_chunk[1] == np.inf  # videos 2, 3 predicted exactly
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["scores"]["psnr"]["mean"] == "inf"
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
