"""End to end: the training entry point, checkpoint → resume equality, outputs a
person looks at, the rollout report, and the example's command line."""

import dataclasses
import json
import pathlib
import re
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_RUN_ARGS, kill_group, load_example, run_python

import eqvid
import eqvid.data
import eqvid.train
from eqvid.data._config import MovingMNISTConfig
from eqvid.evaluate._rollout_report import RolloutReport, rollout_report
from eqvid.metrics import frame_metrics, ssim
from eqvid.models import AbstractVideoModel, GroupSettings
from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train
from eqvid.train._cli import build_parser, config_from_argv

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY_MODEL = eqvid.ConvS5Config(
    frame_size=32, encoder_depths=(4, 8), d_model=8, ssm_size=8, n_layers=1
)


ONE_DEVICE = MeshConfig(devices=1, backend="cpu")  # as the subprocesses, also on a GPU host


def tiny_config(run_dir, mesh=ONE_DEVICE, **run):
    defaults: dict[str, Any] = dict(
        run_dir=str(run_dir),
        steps=4,
        batch_size=2,
        log_every=1,
        checkpoint_every=2,
        sample_every=0,
        eval_sequences=4,
        eval_context=3,
        eval_horizon=2,
        progress=False,
    )
    defaults.update(run)
    return TrainConfig(
        model=TINY_MODEL,
        data=MovingMNISTConfig(frame_size=32, seq_len=5, train_sequences=64),
        optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1),
        run=RunConfig(**defaults),
        mesh=mesh,
    )


def test_train_writes_everything_and_resumes_exactly(tmp_path):
    run_dir = tmp_path / "run"
    result = train(tiny_config(run_dir))
    assert len(result.losses) == 4 and np.all(np.isfinite(result.losses))
    # What a person looks at.
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert (
        rows[0] == ("step,loss,absolute_error,squared_error,lr,grad_norm,frames_per_s,elapsed_s")
        and len(rows) == 5
    )
    assert [m["loss"] for m in result.metrics] == result.losses
    assert set(result.metrics[0]) == {"loss", "absolute_error", "squared_error", "grad_norm"}
    assert (run_dir / "samples" / "step_000004.png").stat().st_size > 0
    assert (run_dir / "samples" / "step_000004.gif").stat().st_size > 0
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["horizon"] == 2 and len(report["mse_per_frame"]["model"]) == 2
    assert "copy last frame" in (run_dir / "eval.md").read_text()
    assert json.loads((run_dir / "config.json").read_text())["run"]["steps"] == 4

    # A run that stops is refused a silent restart ...
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(run_dir))
    # ... and, interrupted after step 2 (the step-4 checkpoint never written),
    # resumes with the same parameters, optimiser state and data order.
    shutil.rmtree(run_dir / "checkpoints" / "4")
    resumed = train(tiny_config(run_dir, resume=True))
    np.testing.assert_array_equal(resumed.losses, result.losses[2:])
    steps = [int(r.split(",")[0]) for r in (run_dir / "metrics.csv").read_text().split()[1:]]
    assert steps == [1, 2, 3, 4]  # the redone steps replace the interrupted run's rows
    a = jax.tree.leaves(eqvid_params(result.model))
    b = jax.tree.leaves(eqvid_params(resumed.model))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_resume_on_another_mesh_continues_the_run(tmp_path):
    """Checkpoint on an 8-way data-parallel mesh, resume on a 4 × 2 data × fsdp mesh
    (parameters split over fsdp): the same run as without the interruption. (The 8
    simulated CPU devices, also on a machine with fewer accelerators.)"""
    eight = MeshConfig(devices=8, min_fsdp_size=64, backend="cpu")
    four_by_two = MeshConfig(data=4, fsdp=2, devices=8, min_fsdp_size=64, backend="cpu")
    quick = dict(batch_size=8, eval_sequences=0)
    run_dir = tmp_path / "run"
    straight = train(tiny_config(run_dir, mesh=eight, **quick))
    shutil.rmtree(run_dir / "checkpoints" / "4")  # as if stopped after the step-2 checkpoint
    resumed = train(tiny_config(run_dir, mesh=four_by_two, resume=True, **quick))
    np.testing.assert_allclose(resumed.losses, straight.losses[2:], rtol=1e-5)
    leaves = jax.tree.leaves(eqvid_params(resumed.model))
    assert any("fsdp" in str(x.sharding.spec) for x in leaves)
    want = jax.tree.leaves(eqvid_params(straight.model))
    scale = max(float(np.max(np.abs(y))) for y in want)
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(leaves, want))
    assert worst <= 1e-5 * scale


def test_resume_with_another_model_is_refused_with_the_shapes(tmp_path):
    train(tiny_config(tmp_path, steps=2, eval_sequences=0))
    wider = dataclasses.replace(
        tiny_config(tmp_path, steps=4, resume=True, eval_sequences=0),
        model=dataclasses.replace(TINY_MODEL, d_model=12),
    )
    written = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"--resume: .*d-model 8 → 12.*--resume-with-changes"):
        train(wider)
    # Allowed to change, the model still cannot take the other model's parameters.
    anyway = dataclasses.replace(
        wider, run=dataclasses.replace(wider.run, resume_with_changes=True)
    )
    with pytest.raises(
        ValueError, match=r"other parameters: .* has shape \(.*\) there but .* here.*config.json"
    ):
        train(anyway)
    assert (tmp_path / "config.json").read_text() == written  # the run's config is kept


def test_metrics_log_adds_a_column_a_resumed_run_logs_for_the_first_time(tmp_path):
    """A run written by an eqvid that logged no loss terms, resumed by this one: the
    term columns are added, earlier rows left blank there, rows after the resumed step
    dropped."""
    from eqvid.train._hooks import MetricsLog

    (tmp_path / "metrics.csv").write_text(
        "step,loss,lr,grad_norm,frames_per_s,elapsed_s\n"
        "1,2.0,1e-3,1.0,10.0,1.0\n2,1.5,1e-3,1.0,10.0,2.0\n3,1.2,1e-3,1.0,10.0,3.0\n"
    )
    log = MetricsLog(tmp_path, start=2, main=True, tensorboard=False)
    log.write(3, {"loss": 1.25, "recon": 0.5, "grad_norm": 0.9}, lr=1e-3)
    log.write(4, {"loss": 1.0, "recon": 0.4, "grad_norm": 0.8}, lr=1e-3)
    log.close()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,recon,lr,grad_norm,frames_per_s,elapsed_s"
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert rows[1].split(",")[2] == "" and rows[3].split(",")[2] == "0.500000"


def test_train_builds_the_model_its_config_names(tmp_path):
    lstm = eqvid.ConvLSTMConfig(frame_size=32, encoder_depths=(4, 8), d_model=8, n_layers=1)
    config = dataclasses.replace(tiny_config(tmp_path, steps=2, checkpoint_every=0), model=lstm)
    result = train(config)
    assert isinstance(result.model, eqvid.ConvLSTMVideoModel) and np.all(np.isfinite(result.losses))
    assert "| frame | ConvLSTM |" in (tmp_path / "eval.md").read_text()
    with pytest.raises(ValueError, match="channels \\(3\\) must equal the data's channels \\(1\\)"):
        dataclasses.replace(config, model=dataclasses.replace(lstm, channels=3))


def test_resume_restores_the_random_stream_of_dropout(tmp_path):
    dropout = dataclasses.replace(TINY_MODEL, dropout=0.3)
    run_dir = tmp_path / "run"
    straight = train(dataclasses.replace(tiny_config(run_dir, eval_sequences=0), model=dropout))
    shutil.rmtree(run_dir / "checkpoints" / "4")
    resumed = train(
        dataclasses.replace(tiny_config(run_dir, eval_sequences=0, resume=True), model=dropout)
    )
    np.testing.assert_array_equal(resumed.losses, straight.losses[2:])
    for x, y in zip(
        jax.tree.leaves(eqvid_params(resumed.model)), jax.tree.leaves(eqvid_params(straight.model))
    ):
        np.testing.assert_array_equal(x, y)


def test_checkpoint_restores_the_saved_key_not_the_template(tmp_path):
    from eqvid.train._checkpoint import Checkpointer

    trees = {"params": {"w": jnp.arange(3.0)}, "opt_state": {"m": jnp.zeros(3)}}
    saved = jax.random.key(7)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, trees, rng=saved)
    ckpt.wait()
    assert ckpt.items(1) >= {"params", "opt_state", "rng", "metadata"}
    key = ckpt.restore(1, trees, rng_like=jax.random.key(0))["rng"]
    with pytest.raises(ValueError, match=r"has no ema \(it holds"):
        ckpt.restore(1, {"ema": trees["params"]})
    ckpt.close()
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(saved))


_DIE_WHILE_SAVING = """
import os, sys
import jax.numpy as jnp
from eqvid.train._checkpoint import Checkpointer
ckpt = Checkpointer(sys.argv[1])
small = {"w": jnp.full((4,), 1.0)}
ckpt.save(1, {"params": small})
ckpt.wait()
big = {"w": jnp.full((32, 1024, 1024), 2.0)}  # 128 MiB: still being written below
ckpt.save(2, {"params": big})
# Die once step 2's temporary directory exists, i.e. with step 2 surely in flight.
while not any(p.startswith("2.") for p in os.listdir(sys.argv[1])):
    pass
os._exit(0)
"""


def test_a_checkpoint_cut_off_while_written_is_never_restored(tmp_path):
    import os

    from eqvid.train._checkpoint import Checkpointer

    run_python(
        ["-c", _DIE_WHILE_SAVING, str(tmp_path)],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    left = sorted(p.name for p in tmp_path.iterdir())
    assert any(name.startswith("2.") for name in left), left  # step 2 was cut off mid-write
    ckpt = Checkpointer(tmp_path)
    latest = ckpt.latest_step()
    assert latest == 1, left
    params = ckpt.restore(latest, {"params": {"w": jnp.zeros(4)}})["params"]
    ckpt.close()
    np.testing.assert_array_equal(params["w"], np.ones(4))


_TRAIN_UNTIL_KILLED = """
import sys
sys.path.insert(0, sys.argv[2])
import test_train
from eqvid.train import train
train(test_train.tiny_config(sys.argv[1], steps=int(sys.argv[3]), checkpoint_every=3,
                             eval_sequences=0))
"""


def test_a_killed_run_resumes_to_the_parameters_of_a_straight_run(tmp_path):
    """SIGKILL (no handler, no final save) once a checkpoint is committed, then
    `resume`: the same parameters as N steps without the interruption. Older
    checkpoints are deleted as new ones commit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    steps, run_dir = 24, tmp_path / "killed"
    # As many CPU devices as this process (conftest), so XLA splits its threads alike.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(len(jax.devices("cpu"))))
    process = subprocess.Popen(
        [sys.executable, "-c", _TRAIN_UNTIL_KILLED, str(run_dir), str(REPO / "tests"), str(steps)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        committed = []
        while time.monotonic() < deadline and process.poll() is None and not committed:
            if (run_dir / "checkpoints").is_dir():
                committed = [p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.returncode is None:
            kill_group(process)
    assert process.returncode == -signal.SIGKILL, output  # killed, not finished
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert 3 <= int(rows[-1].split(",")[0]) < steps  # died mid-run

    resumed = train(
        tiny_config(
            run_dir, steps=steps, checkpoint_every=3, eval_sequences=0, log_every=steps, resume=True
        )
    )
    straight = train(
        tiny_config(
            tmp_path / "straight",
            steps=steps,
            checkpoint_every=3,
            eval_sequences=0,
            log_every=steps,
        )
    )
    assert resumed.step == straight.step == steps
    # Only the last `keep_checkpoints` (2) stay on disk.
    for run in ("killed", "straight"):
        assert sorted(int(p.name) for p in (tmp_path / run / "checkpoints").iterdir()) == [21, 24]
    with pytest.raises(ValueError, match="keep_checkpoints"):
        tiny_config(tmp_path, keep_checkpoints=0)
    for x, y in zip(
        jax.tree.leaves(eqvid_params(resumed.model)), jax.tree.leaves(eqvid_params(straight.model))
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def eqvid_params(model):
    import equinox as eqx

    return eqx.filter(model, eqx.is_inexact_array)


class CopyLast(AbstractVideoModel):
    """A predictor that repeats the last context frame (its rollout error must
    equal the copy-last baseline)."""

    config: None = None

    def loss(self, batch, state=None, *, key=None, step=0):
        return jnp.zeros(()), {}, state

    def generate(self, context, num_frames, *, key, actions=None):
        return jnp.repeat(context[-1:], num_frames, axis=0)

    def check_batch(self, video, actions):
        pass  # nothing to check

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        return {}

    def with_state(self, state):
        return self


def test_rollout_report_baselines():
    rng = np.random.default_rng(0)
    videos = rng.uniform(-1, 1, size=(5, 6, 12, 12, 1)).astype(np.float32)
    report = rollout_report(
        CopyLast(), videos, context=3, horizon=3, chunk=2, key=jax.random.key(0)
    )
    for metric in ("mse", "ssim"):
        np.testing.assert_allclose(report.curve(metric)["model"], report.curve(metric)["copy_last"])
    want_empty = np.mean(((videos[:, 3:] + 1) / 2) ** 2, axis=(0, 2, 3, 4))
    np.testing.assert_allclose(report.mse["empty"], want_empty, rtol=1e-6)
    mean_frame = videos[:, :3].mean(axis=1, keepdims=True)
    want_mean = np.mean(((videos[:, 3:] - mean_frame) / 2) ** 2, axis=(0, 2, 3, 4))
    np.testing.assert_allclose(report.mse["mean_context"], want_mean, rtol=1e-5)
    # SSIM of frame 4 (the first generated) of video 0 against copying frame 3, by hand.
    want = ssim(videos[0, 3] / 2 + 0.5, videos[0, 2] / 2 + 0.5, data_range=1.0)
    got = frame_metrics(videos[:1, :4], videos[:1, [0, 1, 2, 2]], context=3, value_range="[-1,1]")
    np.testing.assert_allclose(got["ssim"][0, 0], want, rtol=1e-5)
    # A tie with copy-last is not a win: the model must be better at every frame.
    assert not report.beats_baselines()
    assert report.losses()["mse"]["mean_context"] == [4, 5, 6]
    with pytest.raises(ValueError, match="context \\+ horizon = 7"):
        rollout_report(CopyLast(), videos, context=3, horizon=4, key=jax.random.key(0))


def test_rollout_report_says_where_the_model_loses():
    frames = lambda *v: np.asarray(v, np.float64)
    report = RolloutReport(
        context=2,
        horizon=3,
        num_videos=1,
        mse={
            "model": frames(0.1, 0.2, 0.5),
            "copy_last": frames(0.2, 0.3, 0.4),
            "mean_context": frames(0.3, 0.15, 0.3),
            "empty": frames(0.6, 0.6, 0.6),
        },
        ssim={
            "model": frames(0.9, 0.8, 0.7),
            "copy_last": frames(0.8, 0.7, 0.6),
            "mean_context": frames(0.5, 0.5, 0.5),
            "empty": frames(0.7, 0.75, 0.8),
        },
        model_name="M",
    )
    assert report.losses() == {
        "mse": {"copy_last": [5], "mean_context": [4, 5]},
        "ssim": {"empty": [5]},
    }
    assert not report.beats_baselines()
    text = report.markdown()
    assert "| 3 | **0.10000** | 0.20000 | 0.30000 | 0.60000 |" in text
    assert "- MSE: copy last frame at frame 5." in text
    assert "- MSE: mean context frame at frames 4–5." in text
    assert "- SSIM: empty frame at frame 5." in text
    better = dataclasses.replace(
        report,
        mse=report.mse | {"model": frames(0.1, 0.2, 0.2)},
        ssim=report.ssim | {"model": frames(0.9, 0.8, 0.9)},
    )
    assert better.beats_baselines()
    assert "beats copying the last frame and the empty frame" in better.markdown()
    assert better.as_dict()["losses"] == {"mse": {"mean_context": [4]}}
    tied = dataclasses.replace(better, ssim=better.ssim | {"empty": better.ssim["model"]})
    assert tied.losses() == better.losses() and not tied.beats_baselines()  # a tie is no win


def example_config(argv):
    return config_from_argv(argv, load_example().DEFAULTS)


def test_example_cli_help_and_overrides(capsys):
    example = load_example()
    with pytest.raises(SystemExit) as exit_:
        build_parser("convs5", "moving_mnist", example.DEFAULTS).parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--preset",
        "--lr",
        "--steps",
        "--resume",
        "--mnist-path",
        "--d-model",
        "--checkpoint-every",
        "--sample-every",
        "--run-dir",
    ):
        assert option in text
    config = example_config(
        [
            "--preset",
            "mnist-600",
            "--lr",
            "5e-4",
            "--frame-size",
            "32",
            "--encoder-depths",
            "8",
            "16",
            "--resume",
            "--mnist-path",
            "none",
        ]
    )
    assert config.model.d_model == 128 and config.model.encoder_depths == (8, 16)
    assert isinstance(config.data, MovingMNISTConfig)
    assert config.model.frame_size == 32 == config.data.frame_size
    assert config.optimizer.lr == 5e-4 and config.run.resume and config.data.mnist_path is None
    default = example_config([])
    demo = eqvid.ConvS5Config.preset("demo")
    assert default.model == dataclasses.replace(demo, frame_size=48)
    assert default.model.latent_size == 12 and default.model.decoder_skip
    assert (default.run.steps, default.run.batch_size, default.run.run_dir) == (
        3600,
        4,
        "runs/convs5-mmnist",
    )
    assert isinstance(default.data, MovingMNISTConfig) and default.data.seq_len == 20
    assert (default.data.frame_size, default.optimizer.lr) == (48, 4e-3)
    # A model without a `demo` preset starts from its `small` one.
    baseline = example_config(["--model", "convlstm"])
    assert baseline.model == dataclasses.replace(
        eqvid.ConvLSTMConfig.preset("small"), frame_size=48
    )
    # `python -m eqvid.train` is the same command with the library's defaults.
    library = config_from_argv(["--steps", "7"])
    assert library.run.steps == 7 and library.run.batch_size == RunConfig().batch_size
    assert library.run.run_dir == "runs/convs5-moving-mnist"  # not the example's folder
    # --help shows the chosen preset's values.
    with pytest.raises(SystemExit):
        build_parser("convs5", "moving_mnist", example.DEFAULTS, "mnist-600").parse_args(["--help"])
    shown = re.search(r"--d-model D_MODEL\s+[^(]*\(default:\s+(\d+)\)", capsys.readouterr().out)
    assert shown is not None and shown.group(1) == "128"
    with pytest.raises(SystemExit):
        example_config(["--preset", "nope"])
    # Any model trains through the same command; its options follow --model.
    lstm = example_config(["--model", "convlstm", "--preset", "mnist-600", "--n-layers", "3"])
    assert isinstance(lstm.model, eqvid.ConvLSTMConfig) and lstm.model.n_layers == 3
    assert lstm.model.d_model == 128 and lstm.run.run_dir == "runs/convlstm-mmnist"
    with pytest.raises(SystemExit) as exit_:
        example_config(["--model", "transformer", "--help"])
    assert exit_.value.code == 0 and "--n-heads" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a ConvS5 option is not a ConvLSTM option
        example_config(["--model", "convlstm", "--ssm-size", "8"])


def test_missing_mnist_file_names_the_path(tmp_path):
    config = tiny_config(tmp_path / "run")
    missing = tmp_path / "nowhere" / "train-images-idx3-ubyte.gz"
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, mnist_path=str(missing))
    )
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(config)


def test_sigterm_saves_the_step_in_flight_and_exits_cleanly(tmp_path):
    """Pre-emption: SIGTERM during training → the run finishes its step, commits a
    checkpoint there, exits with status 0 and says how to resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO / "examples" / "train_mmnist.py"),
        "--run-dir",
        str(run_dir),
        *TINY_RUN_ARGS,
        *("--steps", "100000", "--batch-size", "1", "--train-sequences", "16"),
        # A checkpoint every step: the signal always lands on a step already saved.
        *("--checkpoint-every", "1", "--no-progress"),
        "--mesh-devices",
        "1",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    metrics = run_dir / "metrics.csv"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # header + 2
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.returncode is None:
            kill_group(process)
    assert process.returncode == 0, output
    assert "SIGTERM received" in output and "--resume" in output
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    logged = int(metrics.read_text().splitlines()[-1].split(",")[0])
    assert steps and steps[-1] == logged >= 2


def test_example_trains_any_dataset_by_a_flag(tmp_path):
    """`--dataset NAME` swaps the data; the model's frame size and channels follow the
    frames the dataset yields."""
    folder = tmp_path / "dmlab" / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(
        folder / "0.npz",
        video=rng.integers(0, 256, (6, 40, 48, 3), dtype=np.uint8),
        actions=rng.integers(0, 6, 6),
    )
    config = example_config(
        [
            "--dataset",
            "teco",
            "--root",
            str(tmp_path / "dmlab"),
            "--frame-size",
            "32",
            "--seq-len",
            "4",
            "--action-dim",
            "6",
        ]
    )
    assert isinstance(config.data, eqvid.data.TecoConfig) and config.data.seq_len == 4
    assert (config.model.frame_size, config.model.channels, config.model.action_dim) == (32, 3, 6)
    assert config.run.run_dir == "runs/convs5-teco"
    with pytest.raises(SystemExit, match="48|40"):  # non-square frames need --frame-size
        example_config(["--dataset", "teco", "--root", str(tmp_path / "dmlab"), "--seq-len", "4"])
