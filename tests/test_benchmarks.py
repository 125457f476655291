"""The benchmark scripts run end to end (tiny sizes; their numbers are not checked)."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scan_speed_writes_a_table(tmp_path, capsys):
    scan_speed = load("scan_speed")
    scan_speed.SIZES["test-tiny"] = (9, 1, 2, 3)
    scan_speed.main(
        [
            "--sizes",
            "test-tiny",
            "--repeats",
            "1",
            "--out-dir",
            str(tmp_path),
            "--name",
            "scan",
            "--impls",
            "pallas-split",
            "pallas",
            "xla",
            "sequential",
        ]
    )
    text = (tmp_path / "scan.md").read_text()
    assert "jax " in text and "command:" in text and "device:" in text
    for impl in ("pallas-split", "pallas", "xla", "sequential"):
        assert f"| test-tiny | 9×1×2²×3 | {impl} |" in text
    assert "wrote" in capsys.readouterr().out


def test_attention_speed_writes_a_table(tmp_path, capsys):
    attention_speed = load("attention_speed")
    impls = ("pallas", "cudnn", "xla")
    attention_speed.main(
        [
            "--lengths",
            "32",
            "--head-dims",
            "16",
            "--tokens-per-frame",
            "8",
            "--batch",
            "1",
            "--heads",
            "2",
            "--impls",
            *impls,
            "--repeats",
            "1",
            "--dtype",
            "float32",
            "--out-dir",
            str(tmp_path),
            "--name",
            "att",
        ]
    )
    text = (tmp_path / "att.md").read_text()
    assert "jax " in text and "command:" in text and "device:" in text
    lines = text.splitlines()
    for mask, visited in (
        ("bidirectional", "100.0%"),
        ("causal", "51.6%"),
        ("frame-causal", "62.5%"),
    ):
        for impl in impls:
            prefix = f"| {mask} | 32 | 16 | 1×2 | {visited} | {impl} |"
            assert sum(line.startswith(prefix) for line in lines) == 1, (mask, impl)
    # Pallas and XLA run everywhere; cuDNN off GPU is a failed row, not a crash.
    assert "| causal | 32 | 16 | 1×2 | 51.6% | xla | failed" not in text
    assert "| causal | 32 | 16 | 1×2 | 51.6% | pallas | failed" not in text
    if attention_speed.jax.default_backend() != "gpu":
        assert "| causal | 32 | 16 | 1×2 | 51.6% | cudnn | failed: " in text
    assert "## Targets" in text
    assert "wrote" in capsys.readouterr().out


def test_train_throughput_table(tmp_path):
    """Every model trains a step; `generation_speed.py` runs (every mode) in the
    `run_all` test below."""
    train = load("train_throughput")
    records = train.main(
        [
            "--lengths",
            "3",
            "--batch",
            "1",
            "--repeats",
            "1",
            "--out-dir",
            str(tmp_path),
            "--name",
            "train",
        ]
    )
    text = (tmp_path / "train.md").read_text()
    for model in ("convs5", "convlstm", "transformer"):
        assert f"| 3 | {model} |" in text
    assert all(r["step_s"] and r["frames_per_s"] > 0 for r in records), records
    convs5_row = next(line for line in text.splitlines() if line.startswith("| 3 | convs5 |"))
    assert convs5_row.count("×") == 2  # both ratios measured


def test_run_all_writes_readme_with_plots(tmp_path):
    run_all = load("run_all")
    readme = run_all.main(["--smoke", "--only", "scan", "generation", "--out-dir", str(tmp_path)])
    text = readme.read_text()
    assert "## linear_scan speed" in text and "## generation speed" in text
    assert "command:" in text and "jax " in text
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 2 and all(f"]({p})" in text for p in pngs)
    assert (tmp_path / "logs").is_dir() and (tmp_path / "run_all.json").is_file()
    log = next((tmp_path / "logs").glob("generation_speed*.log")).read_text()
    assert "wrote" in log
    generation = next(tmp_path.glob("generation_speed*.md")).read_text()
    for mode in ("convs5", "convlstm", "transformer-cache", "transformer-nocache"):
        assert f"| 2→4 | {mode} |" in generation
    assert "ConvS5 vs transformer-nocache" in generation and "failed" not in generation


def test_sharding_overhead_table(tmp_path):
    overhead = load("sharding_overhead")
    records = overhead.main(
        [
            "--models",
            "convs5",
            "--length",
            "3",
            "--batch",
            "1",
            "--repeats",
            "1",
            "--out-dir",
            str(tmp_path),
            "--name",
            "overhead",
        ]
    )
    assert records[0]["plain_s"] > 0 and records[0]["sharded_s"] > 0
    assert "| convs5 |" in (tmp_path / "overhead.md").read_text()
