"""A run never loses data: corrupt or non-finite checkpoints never replace good ones,
a corrupt latest checkpoint falls back to the newest intact one (in training and in
evaluation), logs and config survive a kill, and resume refuses silent changes.

Every test here failed on eqvid before the fix it guards (issue "A run never loses
data")."""

import dataclasses
import json
import pathlib
import shutil
import time
from typing import Any

import jax
import numpy as np
import pytest
from test_train import TINY_MODEL, tiny_config
from test_training_core import ToyConfig

import eqvid
from eqvid.train import OptimizerConfig, TrainConfig, train
from eqvid.train._checkpoint import Checkpointer, CorruptCheckpointError


def config(run_dir, model: Any = TINY_MODEL, **run) -> TrainConfig:
    """test_train's tiny run (no held-out report unless asked), with `model`."""
    return dataclasses.replace(tiny_config(run_dir, **{"eval_sequences": 0, **run}), model=model)


def steps_on_disk(run_dir) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def biggest_data_file(item: pathlib.Path) -> pathlib.Path:
    """The largest file holding an item's array data (Orbax's OCDBT store)."""
    files = [p for p in (item / "ocdbt.process_0" / "d").iterdir() if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def flip_bytes(path: pathlib.Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """A 4-step run (checkpoints 2 and 4) to corrupt copies of."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = train(config(run_dir))
    return run_dir, result


def corrupted_copy(straight_run, tmp_path, damage) -> pathlib.Path:
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run[0], run_dir)
    damage(run_dir / "checkpoints" / "4")
    return run_dir


# -- 1. corrupt checkpoints are detected ---------------------------------------------


def test_a_checkpoint_that_reads_back_other_values_is_refused(tmp_path):
    """The checksums written with each step are checked on restore (here the stored
    sums are altered, as if the arrays had changed on disk without a read error)."""
    trees = {"params": {"w": np.arange(6.0, dtype=np.float32)}}
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, trees)
    ckpt.wait()
    assert ckpt.metadata(1)["checksums"]["params"]["['w']"]
    ckpt.restore(1, trees)  # intact: fine
    ckpt.close()
    meta = next((tmp_path / "1" / "metadata").rglob("metadata"))
    text = json.loads(meta.read_text())
    text["checksums"]["params"]["['w']"][0] += 1
    meta.write_text(json.dumps(text))
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CorruptCheckpointError, match=r"step 1 .*: params is unusable .*checksums"):
        ckpt.restore(1, trees)
    ckpt.close()


@pytest.mark.parametrize(
    "damage, item",
    [
        (lambda step: flip_bytes(biggest_data_file(step / "opt_state")), "opt_state"),
        (lambda step: shutil.rmtree(step / "params"), "params"),
        (lambda step: biggest_data_file(step / "params").write_bytes(b""), "params"),
        (lambda step: next((step / "data").glob("*.json")).write_text("{broken"), "data"),
    ],
    ids=["flipped-bytes", "deleted-item", "truncated-item", "broken-iterator-json"],
)
# Orbax's failed restore of a damaged file can leave asyncio objects that are
# collected after their event loop closed ("Event loop is closed", raised in no
# caller; seen once under heavy load): not what this test checks.
@pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
def test_resume_falls_back_to_the_newest_intact_checkpoint(
    straight_run, tmp_path, capsys, damage, item
):
    """Step 4 damaged: one line names the step and the item, and the run goes on from
    step 2 exactly as the undamaged run did."""
    run_dir = corrupted_copy(straight_run, tmp_path, damage)
    resumed = train(config(run_dir, resume=True))
    out = capsys.readouterr().out
    assert f"checkpoint step 4 in {run_dir / 'checkpoints'}: {item} is unusable" in out
    assert "using step 2" in out and "Traceback" not in out
    assert (run_dir / "corrupt_checkpoints" / "4").is_dir()  # kept, out of the way
    np.testing.assert_allclose(resumed.losses, straight_run[1].losses[2:], rtol=1e-6)


def test_evaluation_falls_back_too_and_names_a_requested_corrupt_step(straight_run, tmp_path):
    from eqvid.evaluate import load_trained_run

    run_dir = corrupted_copy(straight_run, tmp_path, lambda s: shutil.rmtree(s / "params"))
    lines = []
    loaded = load_trained_run(run_dir, report=lines.append)
    assert loaded.step == 2 and len(lines) == 1 and "params is unusable" in lines[0]
    with pytest.raises(CorruptCheckpointError, match="step 4 .*params is unusable"):
        load_trained_run(run_dir, step=4)
    shutil.rmtree(run_dir / "checkpoints" / "2" / "opt_state")  # not read by evaluation
    shutil.rmtree(run_dir / "checkpoints" / "2" / "params")
    with pytest.raises(CorruptCheckpointError, match="every step"):
        load_trained_run(run_dir, report=lambda _: None)


# -- 2. a diverged state is never saved ----------------------------------------------


def test_a_non_finite_state_is_never_saved_and_the_error_names_the_last_good_step(tmp_path):
    """The loss turns NaN at step 3; with a checkpoint every step and a log line only
    every 5, the run stops at step 3's checkpoint, which is not written."""
    run_dir = tmp_path / "run"
    diverging = config(
        run_dir, model=ToyConfig(diverge_at=3), steps=6, checkpoint_every=1, log_every=5
    )
    with pytest.raises(FloatingPointError, match=r"step 3.*last good checkpoint is step 2"):
        train(diverging)
    assert steps_on_disk(run_dir) == [1, 2]
    ckpt = Checkpointer(run_dir / "checkpoints")
    for step in (1, 2):  # what is on disk is finite
        for x in jax.tree.leaves(ckpt.manager.restore(step, args=_params_args())["params"]):
            assert np.all(np.isfinite(np.asarray(x)))
    ckpt.close()


def _params_args():
    import orbax.checkpoint as ocp

    return ocp.args.Composite(params=ocp.args.StandardRestore())


# -- 3, 4. logs and config survive -----------------------------------------------------


def test_metrics_csv_is_never_left_empty_by_a_failed_rewrite(tmp_path, monkeypatch):
    """The resumed run rewrites metrics.csv at start-up; a crash (here: the write
    fails) in that window leaves the old rows in place."""
    from eqvid.train import _files
    from eqvid.train._hooks import MetricsLog

    old = "step,loss,lr\n1,2.0,1e-3\n2,1.5,1e-3\n3,1.2,1e-3\n"
    (tmp_path / "metrics.csv").write_text(old)

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(_files.os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        MetricsLog(tmp_path, start=2, main=True, tensorboard=False)
    assert (tmp_path / "metrics.csv").read_text() == old


def test_config_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from eqvid.train import _files

    (tmp_path / "config.json").write_text('{"old": true}')

    def crash(*args):
        raise OSError("killed")

    monkeypatch.setattr(_files.os, "replace", crash)
    with pytest.raises(OSError):
        _files.write_atomic(tmp_path / "config.json", '{"new": true}')
    assert (tmp_path / "config.json").read_text() == '{"old": true}'


# -- 6. resume refuses silent changes ----------------------------------------------------


@pytest.mark.parametrize(
    "change, shown",
    [
        (dict(batch_size=4), "batch-size 2 → 4"),
        (dict(seed=1), "seed 0 → 1"),
    ],
)
def test_resume_refuses_settings_that_change_the_run(straight_run, tmp_path, change, shown):
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run[0], run_dir)
    before = (run_dir / "config.json").read_text()
    with pytest.raises(ValueError, match=rf"--resume: .*{shown}.*--resume-with-changes"):
        train(config(run_dir, resume=True, **change))
    assert (run_dir / "config.json").read_text() == before


def test_resume_refuses_another_learning_rate_or_sequence_length(straight_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run[0], run_dir)
    base = config(run_dir, resume=True)
    faster = dataclasses.replace(base, optimizer=dataclasses.replace(base.optimizer, lr=2e-3))
    with pytest.raises(ValueError, match=r"lr 0.001 → 0.002"):
        train(faster)
    longer = dataclasses.replace(base, data=dataclasses.replace(base.data, seq_len=6))
    with pytest.raises(ValueError, match=r"seq-len 5 → 6"):
        train(longer)
    # Asked for, the change is made and recorded with the step it was made at.
    allowed = dataclasses.replace(
        faster, run=dataclasses.replace(faster.run, resume_with_changes=True, steps=6)
    )
    train(allowed)
    record = json.loads((run_dir / "config.json").read_text())
    assert record["optimizer"]["lr"] == 2e-3
    assert record["changes_on_resume"] == [{"step": 4, "changes": {"optimizer.lr": [0.001, 0.002]}}]


# -- 7, 8, 12. up-front checks -------------------------------------------------------------


def test_a_checkpoints_file_is_refused_at_once(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("not a folder")
    start = time.monotonic()
    with pytest.raises(NotADirectoryError, match="checkpoints is a file"):
        train(config(tmp_path / "run"))
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: OptimizerConfig(lr=0.0), r"`lr` must be > 0"),
        (lambda: OptimizerConfig(lr=-1e-3), r"`lr` must be > 0"),
        (lambda: OptimizerConfig(b1=1.0), r"`b1` must be in \[0, 1\)"),
        (lambda: OptimizerConfig(b2=-0.1), r"`b2` must be in \[0, 1\)"),
        (lambda: eqvid.ConvS5Config(frame_size=0), r"`frame_size` must be an int ≥ 1"),
        (lambda: eqvid.ConvS5Config(d_model=0), r"`d_model` must be an int ≥ 1"),
        (lambda: eqvid.ConvLSTMConfig(channels=-1), r"`channels` must be an int ≥ 1"),
        (lambda: eqvid.TransformerConfig(d_model=0), r"`d_model` must be an int ≥ 1"),
        (
            lambda: config("run", batch_size=6, accumulate=4),
            r"`batch_size` \(6\).*`accumulate` \(4\)",
        ),
    ],
)
def test_configs_are_checked_when_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_resume_of_a_missing_run_says_it_starts_a_new_one(tmp_path, capsys):
    train(config(tmp_path / "new", steps=1, resume=True))
    assert "holds no checkpoint; starting a new run" in capsys.readouterr().out


# -- 12. evaluation speaks in flags; the converter leaves nothing half-written ------


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(), r"exactly one of --run-dir .* and --samples"),
        (dict(samples="s.npz", batch_size=0), r"--batch-size must be ≥ 1, got 0"),
        (dict(samples="s.npz", num_videos=0), r"--num-videos must be ≥ 1, got 0"),
        (dict(samples="s.npz", metrics=("psnr", "fid")), r"--metrics: unknown \['fid'\]"),
    ],
)
def test_evaluation_errors_name_the_command_line_flags(settings, match):
    from eqvid.evaluate import EvalConfig, evaluate

    with pytest.raises(ValueError, match=match):
        evaluate(EvalConfig(**settings))


def test_evaluation_hints_spell_the_flags(tmp_path):
    """Videos that do not fill the protocol's chunks: the hint names `--chunk` and
    `--remainder` as typed on the command line, also when scoring sample files."""
    from eqvid.evaluate import EvalConfig, evaluate
    from eqvid.metrics import save_samples_npz

    videos = np.random.default_rng(0).integers(0, 256, (6, 4, 8, 8, 3), np.uint8)
    fake = videos.copy()
    fake[:, 2:] = 255 - fake[:, 2:]
    save_samples_npz(tmp_path / "s" / "data_0.npz", videos, fake, context=2)
    base: dict[str, Any] = dict(samples=str(tmp_path / "s"), metrics=("psnr",), progress=False)
    with pytest.raises(ValueError, match=r"one chunk needs 8 videos, got 6\. Pass --chunk 6"):
        evaluate(EvalConfig(**base, chunk=8))
    with pytest.raises(ValueError, match=r"Pass --remainder drop .* --remainder keep"):
        evaluate(EvalConfig(**base, chunk=4))


def test_a_failed_conversion_leaves_no_partial_output(tmp_path):
    """A bad file stops `python -m eqvid.data.convert`: the shards already written are
    removed, and data it was to `--overwrite` is kept."""
    from eqvid.data import ArrayRecordVideos, BadVideoError, convert

    root = tmp_path / "teco"
    (root / "train").mkdir(parents=True)
    video = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), np.uint8)
    np.savez(root / "train" / "0_good.npz", video=video)
    np.savez(root / "train" / "1_good.npz", video=video[::-1])
    argv = ["teco", "--root", str(root), "--out", str(tmp_path / "out")]
    argv += ["--splits", "train", "--no-actions", "--no-progress"]
    convert.main(argv)  # a good dataset, to be overwritten below
    (root / "train" / "2_bad.npz").write_bytes(b"not a zip file")
    np.savez(root / "train" / "1_good.npz", video=video)

    with pytest.raises(BadVideoError, match=r"2_bad\.npz"):
        convert.main([*argv[:2], str(root), "--out", str(tmp_path / "fresh"), *argv[5:]])
    assert not (tmp_path / "fresh" / "train").exists()
    assert not list(tmp_path.rglob("*.partial"))

    with pytest.raises(BadVideoError, match=r"2_bad\.npz"):
        convert.main([*argv, "--overwrite"])
    kept = ArrayRecordVideos(str(tmp_path / "out"), "train", actions=False)
    assert len(kept) == 2
    np.testing.assert_array_equal(kept[1]["video"], video[::-1])  # the old data, whole
    assert not list(tmp_path.rglob("*.partial"))


# -- 11. a wrong channel count is named by the layer that gets it --------------------


@pytest.mark.parametrize(
    "make, x, match",
    [
        (lambda k: eqvid.nn.LayerNorm(4), (3,), r"LayerNorm: `x` must have shape \(\*batch, 4\)"),
        (
            lambda k: eqvid.nn.GroupNorm(8),
            (4, 4, 3),
            r"GroupNorm: `x` must have shape \(\*batch, height, width, 8\)",
        ),
        (
            lambda k: eqvid.nn.ResNetEncoder(3, (4, 8), key=k),
            (16, 16, 1),
            r"ResNetEncoder: `x` must have shape \(\*batch, height, width, 3\).*got \(16, 16, 1\)",
        ),
        (
            lambda k: eqvid.nn.ResNetDecoder(8, (8, 4), 3, key=k),
            (4, 4, 2),
            r"ResNetDecoder: `x` must have shape \(\*batch, height, width, 8\)",
        ),
    ],
    ids=["LayerNorm", "GroupNorm", "ResNetEncoder", "ResNetDecoder"],
)
def test_layers_name_a_wrong_channel_count(make, x, match):
    layer = make(jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        layer(jax.numpy.zeros(x))


def test_training_checks_each_batch_on_the_host(tmp_path):
    """Every batch goes through the model's `check_batch` before it reaches the
    devices, where an out-of-range action id could not raise."""
    from eqvid.train._setup import setup

    run = setup(config(tmp_path / "run"))
    try:
        video = np.zeros((2, 5, 32, 32, 1), np.float32)
        run.put_batch({"video": video, "actions": np.full((2, 5), -1, np.int32)})  # fine
        bad = np.full((2, 5), -1, np.int32)
        bad[1, 3] = TINY_MODEL.action_dim
        with pytest.raises(ValueError, match=r"`batch.actions` must lie in \[-1, action_dim\)"):
            run.put_batch({"video": video, "actions": bad})
    finally:
        run.close()
