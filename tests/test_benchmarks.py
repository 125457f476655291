"""The benchmark scripts run end to end (tiny sizes; their numbers are not checked)."""

import contextlib
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import TINY_RUN_ARGS, run_python

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
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
    impls = ("mosaic", "triton", "triton[q=16,kv=32]", "tokamax", "cudnn", "xla")
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
    # The Triton kernel (interpreted) and XLA run everywhere; cuDNN off GPU, tokamax
    # where it is not installed and the Mosaic GPU kernel on float32 (it takes bf16 and
    # fp16) are failed rows naming why, not a crash.
    for impl in ("xla", "triton", "triton[q=16,kv=32]"):  # and a block-size variant
        assert f"| causal | 32 | 16 | 1×2 | 51.6% | {impl} | failed" not in text, impl
    assert (
        "| causal | 32 | 16 | 1×2 | 51.6% | mosaic | failed: attention: impl='mosaic' cannot"
        in text
    )
    if attention_speed.jax.default_backend() != "gpu":
        assert "| causal | 32 | 16 | 1×2 | 51.6% | cudnn | failed: " in text
    if importlib.util.find_spec("tokamax") is None:
        assert "| causal | 32 | 16 | 1×2 | 51.6% | tokamax | failed: No module named" in text
    assert "## Targets" in text
    for kernel in ("mosaic", "triton"):
        assert f"| {kernel}: forward ≥ 1.0× tokamax (every mask) |" in text
    assert "| mosaic: frame-causal forward, 8 frames × 8 tokens, ≥ 1.7× cuDNN |" in text
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        attention_speed.main(["--impls", "mosaic[rows=64]", "--out-dir", str(tmp_path)])
    assert "'rows=64' is not field=integer with a field of BlockSizes" in capsys.readouterr().err


def test_demo_records_the_example_run(tmp_path, capsys):
    """demo_mmnist.py runs the example in its own process (options after `--` go to
    it) and writes the record: command, wall time, load, the report's tables, the last
    sample strip, the loss curve and the raw files."""
    demo = load("demo_mmnist")
    tiny = [*TINY_RUN_ARGS, "--steps", "2", "--sample-every", "2", "--eval-sequences", "3"]
    tiny += ["--eval-context", "2", "--eval-horizon", "1", "--no-tensorboard"]
    assert demo.main(["--out-dir", str(tmp_path), "--", *tiny]) == 0
    name = "demo_mmnist" if demo.jax.default_backend() == "gpu" else "demo_mmnist_cpu"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["logs", *(f"{name}{end}" for end in (".md", "_strip.png", "_closeup.png", "_curve.png"))]
        + [f"{name}_eval.json", f"{name}_metrics.csv"]
    )
    text = (tmp_path / f"{name}.md").read_text()
    assert f"`python examples/train_mmnist.py {shlex.join(tiny)}`" in text
    assert re.search(r"install excluded: \*\*\d+ min \d\d s\*\*", text)
    assert re.search(r"machine load while it ran .*: mean \d+\.\d\d, max \d+\.\d\d", text)
    assert "| 3 | " in text and "SSIM (higher is better" in text  # frame 3: the one generated
    assert (
        f"![sample strip]({name}_strip.png)" in text and f"![close-up]({name}_closeup.png)" in text
    )
    assert "eqvid: done after 2 steps" in (tmp_path / "logs" / f"{name}.log").read_text()
    assert json.loads((tmp_path / f"{name}_eval.json").read_text())["horizon"] == 1
    # A failing example: its exit status, and the log's tail on the screen.
    assert demo.main(["--out-dir", str(tmp_path / "bad"), "--", "--steps", "-1"]) == 2
    assert "--steps" in capsys.readouterr().out


def test_tokenizer_benchmark_records_the_run(tmp_path):
    """tokenizer_mmnist.py trains the 2D VQGAN in its own process (options after `--`
    go to it), then records the report against the target, the throughput, the strip
    and the curve."""
    bench = load("tokenizer_mmnist")
    tiny = ["--steps", "2", "--frame-size", "32", "--sample-every", "2", "--eval-sequences", "2"]
    tiny += ["--train-sequences", "8", "--ch", "8", "--n-embed", "16", "--no-tensorboard"]
    assert bench.main(["--out-dir", str(tmp_path), "--throughput-frames", "8", "--", *tiny]) == 0
    name = "tokenizer_mmnist" if bench.jax.default_backend() == "gpu" else "tokenizer_mmnist_cpu"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["logs", *(f"{name}{end}" for end in (".md", "_strip.png", "_curve.png"))]
        + [f"{name}_eval.json", f"{name}_metrics.csv"]
    )
    text = (tmp_path / f"{name}.md").read_text()
    assert "python -m eqvid.train --model vqgan2d" in text and shlex.join(tiny) in text
    assert re.search(r"target: \*\*(met|not met)\*\*: held-out PSNR \d+\.\d\d dB", text)
    assert re.search(r"encode \*\*\d+ frames/s\*\*, decode \*\*\d+ frames/s\*\*", text)
    assert "codes used" in text
    assert json.loads((tmp_path / f"{name}_eval.json").read_text())["n_codes"] == 16


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


def test_generation_speed_times_teco_per_frame_against_the_video_length(tmp_path):
    """The TECO modes past the window: the cached rollout re-reading every 2 frames and
    TECO-ConvS5's recurrence, per generated frame, with the ratio to the shortest video
    (the other two TECO modes differ only in `cache` and the stride, tested in
    tests/test_teco.py)."""
    generation = load("generation_speed")
    records = generation.main(
        [
            "--modes",
            "teco-cache-stride",
            "teco-convs5",
            "--teco-context",
            "2",
            "--teco-lengths",
            "4",
            "7",
            "--teco-window",
            "5",
            "--slide-stride",
            "2",
            "--batch",
            "1",
            "--repeats",
            "1",
            "--out-dir",
            str(tmp_path),
            "--name",
            "generation",
        ]
    )
    assert len(records) == 4 and all(r["seconds_per_frame"] > 0 for r in records), records
    assert {(r["mode"], r["horizon"], r["slide_stride"]) for r in records} == {
        (m, h, s) for m, s in (("teco-cache-stride", 2), ("teco-convs5", None)) for h in (2, 5)
    }
    text = (tmp_path / "generation.md").read_text()
    assert "## TECO on VQ codes" in text and "re-reads the last 3 frames every 2 frames" in text
    assert "| 2→4 | teco-convs5 |" in text and "1.00× |" in text
    assert re.search(r"\| 2→7 \| teco-cache-stride \| [\d.]+ \| [\d.]+ \| \d\.\d\d× \|", text)
    assert "ConvS5 vs" not in text  # no pixel modes were run


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
    assert records[0]["minimal_s"] > 0 and records[0]["eqvid_s"] > 0
    assert "| convs5 |" in (tmp_path / "overhead.md").read_text()


# ----------------------------------------------------------------------------
# _common: what every result file records.
# ----------------------------------------------------------------------------


def git_output(*args):
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    return subprocess.run(
        ["git", *args], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout


def test_environment_records_git_commit_and_dirty_flag():
    common = load("_common")
    try:
        head = git_output("rev-parse", "HEAD").strip()
        before = (
            "yes"
            if git_output(
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)benchmarks/results",
            )
            else "no"
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    text = common.environment()
    after = (
        "yes"
        if git_output(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)benchmarks/results",
        )
        else "no"
    )
    assert f"- git commit: {head}, uncommitted changes to tracked files: " in text, text
    record = common.environment_record()
    assert record["git_commit"] == head and record["git_dirty"] in ("yes", "no")
    if before == after:  # (other processes may edit the tree meanwhile)
        assert f"uncommitted changes to tracked files: {before}\n" in text
    for line in ("- device: ", "- jax ", "- command: `python ", "- machine load (1-min average): "):
        assert line in text


def test_environment_says_unknown_without_git(tmp_path, monkeypatch):
    common = load("_common")
    monkeypatch.setattr(common, "REPO", tmp_path)  # not a checkout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert common.git_state() == ("unknown", "unknown")
    monkeypatch.setattr(common, "REPO", REPO)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program
    assert common.git_state() == ("unknown", "unknown")
    assert "- git commit: unknown, uncommitted changes to tracked files: unknown" in (
        common.environment()
    )


# ----------------------------------------------------------------------------
# Where results go: a new folder per run; the committed references only on request.
# ----------------------------------------------------------------------------

LOAD_LINE = re.compile(
    r"^- machine load \(1-min average\): \d+\.\d\d at start, \d+\.\d\d at end, "
    r"on \d+ CPUs$",
    re.MULTILINE,
)


def reference_files(results: pathlib.Path) -> dict[pathlib.Path, tuple[bytes, int]]:
    """Bytes and modification time of every committed-result file a run could write
    (benchmarks/results/ and its logs/, not runs/)."""
    files = [p for folder in (results, results / "logs") for p in folder.glob("*")]
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.is_file()}


@contextlib.contextmanager
def guarded_references(results: pathlib.Path):
    """Yield the reference files' state before the block; afterwards put back any the
    block changed and remove any it created, so a regression cannot dirty the checkout
    (the test compares the states itself)."""
    before = reference_files(results)
    try:
        yield before
    finally:
        for path, (data, _) in before.items():
            if not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)
        for path in set(reference_files(results)) - set(before):
            path.unlink()


def short_commit() -> str:
    try:
        return git_output("rev-parse", "--short=7", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def test_benchmark_writes_a_new_folder_not_the_reference(tmp_path, monkeypatch, capsys):
    """With neither --out-dir nor --update-reference, a benchmark writes a new folder
    `benchmarks/results/runs/<UTC time>-<commit>/` (ignored by git) and leaves the
    committed reference file alone; its result records the exact command and the
    machine load."""
    scan_speed = load("scan_speed")
    common = sys.modules["_common"]  # the module scan_speed writes through
    assert common.RUNS == REPO / "benchmarks" / "results" / "runs"
    if short_commit():
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "benchmarks/results/runs/x/scan_speed_cpu.md"],
            cwd=REPO,
            env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"),
        )
        assert ignored.returncode == 0, "benchmarks/results/runs/ is not ignored by git"
    monkeypatch.setattr(common, "RUNS", tmp_path / "runs")  # keeps the checkout clean
    scan_speed.SIZES["test-tiny"] = (9, 1, 2, 3)
    args = ["--sizes", "test-tiny", "--impls", "sequential", "--repeats", "1"]
    with guarded_references(common.RESULTS) as before:
        scan_speed.main(args)
        after = reference_files(common.RESULTS)
    assert after == before, "the run changed benchmarks/results/"
    (folder,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(
        r"\d{8}T\d{6}Z" + (f"-{short_commit()}" if short_commit() else ""), (folder.name)
    )
    backend = scan_speed.jax.default_backend()
    name = "scan_speed" if backend == "gpu" else f"scan_speed_{backend}"
    assert [p.name for p in folder.iterdir()] == [f"{name}.md"]
    text = (folder / f"{name}.md").read_text()
    assert f"- command: `python benchmarks/scan_speed.py {shlex.join(args)}`\n" in text, text
    assert LOAD_LINE.search(text), text
    assert f"wrote {folder / name}.md" in capsys.readouterr().out


def test_update_reference_writes_benchmarks_results(tmp_path, monkeypatch):
    """`--update-reference` writes into benchmarks/results/ itself (here a stand-in);
    with --out-dir as well it is a usage error."""
    scan_speed = load("scan_speed")
    common = sys.modules["_common"]
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "RUNS", tmp_path / "results" / "runs")
    scan_speed.SIZES["test-tiny"] = (9, 1, 2, 3)
    args = ["--sizes", "test-tiny", "--impls", "sequential", "--repeats", "1"]
    scan_speed.main([*args, "--update-reference", "--name", "scan"])
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["scan.md"]
    assert LOAD_LINE.search((tmp_path / "results" / "scan.md").read_text())
    with pytest.raises(SystemExit):
        scan_speed.main([*args, "--update-reference", "--out-dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_run_all_writes_one_new_folder(tmp_path, monkeypatch):
    """run_all.py without a folder: the whole suite lands in one new folder under
    benchmarks/results/runs/, the committed results stay as they are, and its README
    and run_all.json record the command and the machine load."""
    run_all = load("run_all")
    common = sys.modules["_common"]
    monkeypatch.setattr(common, "RUNS", tmp_path / "runs")
    with guarded_references(common.RESULTS) as before:
        readme = run_all.main(["--smoke", "--only", "scan"])
        after = reference_files(common.RESULTS)
    assert after == before, "the suite changed benchmarks/results/"
    (folder,) = (tmp_path / "runs").iterdir()
    assert readme == folder / "README.md"
    backend = run_all.jax.default_backend()
    name = "scan_speed" if backend == "gpu" else f"scan_speed_{backend}"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["README.md", "logs", "run_all.json", f"{name}.md", f"{name}.png"])
    assert [p.name for p in (folder / "logs").iterdir()] == [f"{name}.log"]
    text = readme.read_text()
    assert "- command: `python benchmarks/run_all.py --smoke --only scan`\n" in text
    assert LOAD_LINE.search(text) and "committed reference results" not in text
    scan = (folder / f"{name}.md").read_text()
    assert LOAD_LINE.search(scan) and "- command: `python benchmarks/scan_speed.py " in scan
    record = json.loads((folder / "run_all.json").read_text())
    assert record["command"] == "python benchmarks/run_all.py --smoke --only scan"
    assert isinstance(record["load_start"], float) and isinstance(record["load_end"], float)
    assert record["cpu_count"] == os.cpu_count()


# ----------------------------------------------------------------------------
# gpu_check.py: the prepared GPU session, kept from rotting on the CPU.
# ----------------------------------------------------------------------------


def test_gpu_check_cpu_runs_every_section(tmp_path):
    """`--cpu`: every section at tiny sizes, each in its own process; the summary, the
    raw logs and every sub-benchmark's result file exist and every section passed."""
    gpu_check = load("gpu_check")
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    args = ["benchmarks/gpu_check.py", "--cpu", "--out-dir", str(out), "--budget", "600"]
    done = run_python(args, timeout=700, cwd=str(REPO), env=env, check=False)
    summary = json.loads((out / "summary.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["sections"]}
    assert statuses == dict.fromkeys(gpu_check.SECTION_NAMES, "pass"), (
        (out / "summary.md").read_text()[:6000] + "\n…\n" + done.stdout[-4000:]
    )
    assert done.returncode == 0 and summary["exit_status"] == 0 and summary["finished"]
    text = (out / "summary.md").read_text()
    assert text.startswith("# eqvid GPU check (cpu)")
    for line in ("- device: cpu", "- driver: ", "- jax ", "- git commit: ", "- command: `python"):
        assert line in text, line
    assert "`python benchmarks/gpu_check.py --cpu --out-dir" in text
    assert summary["git_commit"] and summary["git_dirty"] in ("yes", "no", "unknown")
    for name in gpu_check.SECTION_NAMES:
        log = (out / "raw" / f"{name}.log").read_text()
        assert log.startswith("$ ") and "exit status 0 after" in log, name
        assert f"## {name}: pass" in text
    for extra in ("git.txt", "nvidia-smi.txt", "kernel_tests.xml"):
        assert (out / "raw" / extra).is_file(), extra
    assert "GPU_CHECK_ENV " in (out / "raw" / "environment.log").read_text()
    results = ("scan_speed", "selective_scan_speed", "attention_speed", "train_throughput")
    for result in (*results, "generation_speed"):
        assert "git commit: " in (out / f"{result}.md").read_text(), result
    compare = json.loads((out / "kernel_compare.json").read_text())
    assert len(compare["records"]) >= 4 * 3 and all(r["ok"] for r in compare["records"])
    assert {r["compiled"] for r in compare["records"]} == {"interpreted"}
    scans = {r["case"].split(":")[0] for r in compare["records"] if "scan" in r["case"]}
    # Both scan backends side by side, and the fused selective scan.
    assert scans == {"scan (mosaic)", "scan (triton)", "selective scan (mosaic)"}
    attention = {r["case"].split(":")[0] for r in compare["records"] if "attention" in r["case"]}
    assert attention == {"attention (mosaic)", "attention (triton)"}


def lower_for_cuda(fn, *args):
    """Lower `fn` for an H100 from this CPU machine (as tests/test_attention.py does)."""
    import jax
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType, use_abstract_mesh

    device = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    mesh = AbstractMesh((1,), ("x",), (AxisType.Auto,), abstract_device=device)
    with use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_gpu_check_comparisons_lower_for_cuda(monkeypatch):
    """Every kernel comparison of the full GPU run (a superset of --quick's) traces and
    lowers to Triton or Mosaic GPU calls at its real sizes: forward and gradient
    kernels; each scan once per backend."""
    import importlib

    scan_module = importlib.import_module("eqvid.kernels.linear_scan")
    monkeypatch.setattr(scan_module, "_mosaic_interpret", lambda: None)  # compiled
    selective = importlib.import_module("eqvid.kernels.selective_scan")
    monkeypatch.setattr(selective, "_interpret", lambda: None)
    attention_module = importlib.import_module("eqvid.kernels.attention")
    monkeypatch.setattr(attention_module, "_mosaic_interpret", lambda: None)
    gpu_check = load("gpu_check")
    quick = {(c.label, c.dtype) for c in gpu_check.compare_cases("quick")}
    cases = gpu_check.compare_cases("full")
    assert quick <= {(c.label, c.dtype) for c in cases}
    assert {c.impl for c in cases if isinstance(c, gpu_check.ScanCase)} == {"mosaic", "triton"}
    attention_impls = {(c.impl, c.dtype) for c in cases if isinstance(c, gpu_check.AttentionCase)}
    assert attention_impls == {
        ("triton", "float32"),
        ("triton", "bfloat16"),
        ("mosaic", "bfloat16"),
    }
    assert any(isinstance(c, gpu_check.SelectiveCase) for c in cases)
    failures = []
    for case in cases:
        kernel = getattr(case, "impl", "pallas")
        try:
            run = lambda *a, case=case, kernel=kernel: case.run(kernel, *a)
            text = lower_for_cuda(run, *case.structs())
        except Exception as error:
            failures.append(f"{case.label} {case.dtype}: {type(error).__name__}: {error}"[:400])
            continue
        calls = gpu_check.kernel_calls(text)
        wanted = 3 if isinstance(case, gpu_check.AttentionCase) else 2  # fwd, dQ, dK/dV
        expect = "Mosaic GPU" if kernel == "mosaic" else "Triton"
        if not calls.startswith(expect) or int(calls.split("×")[1]) < wanted:
            failures.append(f"{case.label} {case.dtype}: {calls}")
    assert not failures, "\n".join(failures)


def test_gpu_check_kills_a_section_at_its_limit(tmp_path):
    """A section that hangs is killed with its whole process group at its limit."""
    gpu_check = load("gpu_check")
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('grandchild', child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    log = tmp_path / "hang.log"
    start = time.monotonic()
    run = gpu_check.run_child(
        [sys.executable, "-c", code], log_path=log, limit=3, env=dict(os.environ), label="hang"
    )
    assert run.timed_out and run.returncode is None and time.monotonic() - start < 30
    text = log.read_text()
    assert text.startswith("$ ") and "killed at the time limit after" in text
    pid = int(next(line for line in run.tail if line.startswith("grandchild")).split()[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # gone, or a zombie waiting for its reaper
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"grandchild {pid} still running")


def test_gpu_check_reads_the_benchmark_tables():
    """The summary's headlines come from the sub-benchmarks' markdown tables."""
    gpu_check = load("gpu_check")
    scan = (
        "# t\n\n- mnist-300: copy bandwidth 3900 GB/s on 600 MiB\n\n"
        "| size | T×B×HW×P | impl | fwd ms | fwd GB/s | of copy BW | fwd+bwd ms | "
        "fwd+bwd speed-up vs xla | vs sequential | fwd temp / output |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| mnist-300 | 300×8×16²×128 | xla | 2.0 | 600 | 15% | 9.0 | 1.00× | 3.0× | 2.0 |\n"
        "| mnist-300 | 300×8×16²×128 | pallas-split | 0.4 | 3100 | 79% | 1.5 | 6.00× | 18× | 0 |\n"
    )
    lines = gpu_check.scan_headline(scan)
    assert lines[0] == (
        "mnist-300 pallas-split: forward 3100 GB/s = 79% of copy bandwidth; "
        "fwd+bwd 1.5 ms, 6.00× vs xla"
    )
    assert lines[-1] == "mnist-300: copy bandwidth 3900 GB/s"
    generation = (
        "| context→generated | mode | seconds | frames/s | temp MiB | temp KiB / frame | "
        "ConvS5 vs transformer-cache |\n|---:|---:|---:|---:|---:|---:|---:|\n"
        "| 100→800 | convs5 | 1.0 | 6400 | 10 | 1 | 2.5× |\n"
        "| 100→800 | transformer-cache | 2.5 | 2560 | OOM | – | – |\n"
    )
    assert gpu_check.generation_headline(generation)[0] == (
        "100→800 convs5: 1.0 s, 6400 frames/s; ConvS5 vs transformer-cache 2.5×"
    )
    assert gpu_check.failed_rows(gpu_check.markdown_tables(generation)) == (1, 0)
    progress = (
        "[gw0] [ 25%] PASSED tests/test_a.py::test_w\n"
        "[gw1] [ 50%] FAILED tests/test_a.py::test_x[1-2]\n"
        "tests/test_b.py::test_y PASSED                [ 75%]\n"
    )
    summary = "FAILED tests/test_a.py::test_x[1-2] - boom\n=== 1 failed, 2 passed in 2.00s ===\n"
    assert gpu_check.pytest_headline(progress + summary) == [
        "1 failed, 2 passed in 2.00s",
        "1 failed: tests/test_a.py::test_x[1-2]",
    ]
    assert gpu_check.pytest_headline(progress)[0].endswith("so far 1 failed, 2 passed")


def test_latent_benchmark_reads_the_rollout_report_and_explains_itself(capsys):
    """latent_mmnist.py (a long run: tokenizer, encode, two latent models; recorded under
    benchmarks/results/) compares each model's per-frame MSE with copy-last-frame."""
    bench = load("latent_mmnist")
    report = {"mse_per_frame": {"model": [0.01, 0.05, 0.02], "copy_last": [0.03, 0.04, 0.05]}}
    mse, copy, wins = bench.summary(report)
    assert (round(mse, 6), round(copy, 6), wins) == (0.026667, 0.04, [1, 3])
    options = bench.train_recipe("teco", pathlib.Path("codes"), 7)
    assert options[:2] == ["--model", "teco"] and "--dataset" in options and "7" in options
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    assert "--tokenizer" in capsys.readouterr().out


def test_mebt_scaling_compares_mebt_with_full_attention(tmp_path, capsys):
    mebt_scaling = load("mebt_scaling")
    args = ["--tokens", "32", "64", "--dim", "16", "--heads", "2", "--latents", "4"]
    args += ["--encoder-layers", "1", "--decoder-layers", "1", "--num-codes", "8"]
    args += ["--sample-steps", "2", "--repeats", "1", "--out-dir", str(tmp_path), "--name", "m"]
    records = mebt_scaling.main(args)
    text = (tmp_path / "m.md").read_text()
    assert "jax " in text and "command:" in text and "device:" in text
    assert "| train step | 64 |" in text and "| sampling | 64 |" in text
    assert "MeBT grows ≤ 2.3× from 32 to 64 tokens" in text
    assert len(records) == 4 and all(r["mebt_seconds"] and r["full_seconds"] for r in records)
    assert all(r["mebt_temp_bytes"] > 0 and r["full_temp_bytes"] > 0 for r in records)
    assert "wrote" in capsys.readouterr().out


def test_selective_scan_speed_compares_the_scan_forms(tmp_path, capsys):
    bench = load("selective_scan_speed")
    args = ["--lengths", "8", "16", "--batch", "2", "--d-model", "8", "--d-state", "4"]
    args += ["--headdim", "4", "--chunks", "4", "--repeats", "1"]
    records = bench.main([*args, "--out-dir", str(tmp_path), "--name", "s"])
    text = (tmp_path / "s.md").read_text()
    assert "jax " in text and "command:" in text and "device:" in text
    assert "| 16 | forward + backward | mamba2 chunked/4 |" in text
    assert "16 steps, forward + backward: **mamba2" in text
    forms = {"mamba2 linear/sequential", "mamba2 linear/xla", "mamba2 chunked/4"}
    assert {r["form"] for r in records} == forms | {"mamba linear/sequential"}
    assert len(records) == 2 * 4 * 2 and all(r["seconds"] for r in records)
    assert "wrote" in capsys.readouterr().out
    # On GPUs the fused kernel joins, against the unfused layer.
    config = bench.SelectiveScanConfig(d_model=8, d_state=4, headdim=4, chunks=(4,))
    gpu_forms = bench._forms(config, gpu=True)
    assert gpu_forms["mamba fused/mosaic"].scan_impl == "mosaic"
    assert gpu_forms["mamba linear/auto"].scan_impl == "auto"
    timing = lambda t: bench.Timing(seconds=t, temp=int(1000 * t))
    timings = {
        ("mamba fused/mosaic", "forward"): timing(1.0),
        ("mamba linear/auto", "forward"): timing(4.0),
        ("mamba fused/mosaic", "forward + backward"): timing(2.0),
        ("mamba linear/auto", "forward + backward"): timing(4.0),
    }
    lines = bench.fused_summary(timings, 64)
    assert lines[0] == (
        "- 64 steps, forward: fused 4.00× as fast as unfused, 0.25× its memory "
        "(target ≥ 3× and ≤ 0.25×: met)"
    )
    assert lines[1].endswith(
        "2.00× as fast as unfused, 0.50× its memory (target ≥ 3× and ≤ 0.25×: not met)"
    )


def test_slotssm_speed_compares_slotssm_with_the_slot_transformer(tmp_path, capsys):
    bench = load("slotssm_speed")
    args = ["--lengths", "8", "64", "128", "--batch", "1", "--tokens", "4", "--slots", "2"]
    args += ["--dim", "16", "--blocks", "1", "--d-state", "4", "--headdim", "8"]
    args += ["--time-heads", "2", "--repeats", "1", "--out-dir", str(tmp_path), "--name", "s"]
    records = bench.main(args)
    text = (tmp_path / "s.md").read_text()
    assert "jax " in text and "command:" in text and "device:" in text
    assert "| 128 | SlotSSM |" in text and "| 128 | SlotTransformer |" in text
    assert "training at T = 128: SlotSSM" in text and "memory at T = 128" in text
    # The streaming target counts from the shortest length ≥ 64.
    assert "SlotSSM streaming per frame from T = 64 to 128" in text
    assert {(r["length"], r["model"]) for r in records} == {
        (n, m) for n in (8, 64, 128) for m in ("SlotSSM", "SlotTransformer")
    }
    assert all(r["train_seconds"] and r["stream_seconds_per_frame"] for r in records)
    assert all(r["train_temp_bytes"] > 0 for r in records)
    assert "wrote" in capsys.readouterr().out


def test_slotssm_bouncing_balls_records_prediction_and_slots(tmp_path):
    """slotssm_bouncing_balls.py trains SlotSSM through the one entry in its own process
    (options after `--` override the recipe) and records the rollout report, the slot
    pictures and FG-ARI; the true segmentation it scores against is the drawn balls."""
    bench = load("slotssm_bouncing_balls")
    tiny = ["--steps", "2", "--sample-every", "2", "--eval-sequences", "2", "--seq-len", "4"]
    tiny += ["--eval-context", "2", "--eval-horizon", "2", "--train-sequences", "8"]
    tiny += ["--encoder-dim", "16", "--slot-dim", "16", "--num-blocks", "1", "--no-tensorboard"]
    assert bench.main(["--out-dir", str(tmp_path), "--tasks", "predict", "--", *tiny]) == 0
    cpu = bench.jax.default_backend() != "gpu"
    name = "slotssm_bouncing_balls" + ("_cpu" if cpu else "")
    ends = ("_strip.png", "_slots.png", "_curve.png", "_eval.json", "_metrics.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["logs", f"{name}.md", *(f"{name}_predict{end}" for end in ends)]
    )
    text = (tmp_path / f"{name}.md").read_text()
    assert "python -m eqvid.train --model slotssm" in text and shlex.join(tiny) in text
    assert re.search(r"FG-ARI of the slots on 64 held-out videos: \*\*-?\d\.\d{3}\*\*", text)
    assert re.search(r"Target .*: \*\*(met|not met)\*\*", text)
    assert "| predict | " in text and "copy last frame" in text

    from eqvid.data import BouncingBallsConfig
    from eqvid.data._bouncing_balls import _PALETTE

    _, test = BouncingBallsConfig(frame_size=32, num_balls=3, seq_len=5).splits(test_sequences=2)
    seg, video = bench.ball_segmentation(test, 1), test[1]["video"]
    assert seg.shape == video.shape[:3] and set(np.unique(seg)) == {0, 1, 2, 3}
    assert (video[seg == 0] == 0).all(axis=-1).mean() > 0.9  # black but for the balls' rims
    for k in (1, 2, 3):  # most of each ball's pixels in its own colour (its rim blends)
        colours, counts = np.unique(video[seg == k], axis=0, return_counts=True)
        assert counts.max() > 0.5 * counts.sum(), (k, colours, counts)
        np.testing.assert_array_equal(colours[counts.argmax()], _PALETTE[k - 1])


def test_mcvd_speed_times_the_samplers_side_by_side(tmp_path, capsys, monkeypatch):
    bench = load("mcvd_speed")
    tiny = bench.MCVDConfig(
        frame_size=8, num_frames_cond=2, num_frames=2, ngf=8, ch_mult=(1, 2),
        num_res_blocks=1, attn_resolutions=(4,), n_head_channels=-1,
    )  # fmt: skip
    monkeypatch.setitem(bench.MCVD_PRESETS, "test-tiny", tiny)
    args = ["--preset", "test-tiny", "--samplers", "ddpm:20", "ddim:4", "--videos", "1"]
    args += ["--batch", "1"]
    records = bench.main([*args, "--repeats", "1", "--out-dir", str(tmp_path), "--name", "m"])
    text = (tmp_path / "m.md").read_text()
    assert "jax " in text and "command:" in text and "device:" in text
    assert "| DDPM-20 |" in text and "| DDIM-4 |" in text and "speed-up over DDPM-20" in text
    assert "(DDPM-1000 or DDIM-25 not measured)" in text
    assert [(r.get("sampler"), r.get("steps")) for r in records[:2]] == [("ddpm", 20), ("ddim", 4)]
    assert all(r["seconds_per_frame"] for r in records[:2]) and records[2]["train_seconds"]
    with pytest.raises(SystemExit):
        bench.main(["--samplers", "ddim:30", "--out-dir", str(tmp_path)])  # 30 ∤ 1000
    assert "wrote" in capsys.readouterr().out


def test_mcvd_mmnist_trains_evaluates_best_of_k_and_records(tmp_path):
    """mcvd_mmnist.py trains through the README's command and evaluates with the MCVD
    protocol (best of k) in their own processes; the record states the SSIM target."""
    bench = load("mcvd_mmnist")
    tiny = ["--steps", "2", "--sample-every", "2", "--checkpoint-every", "2", "--ngf", "8"]
    tiny += ["--ch-mult", "1", "2", "--attn-resolutions", "24", "--sampling-steps", "2"]
    tiny += ["--train-sequences", "8", "--eval-sequences", "2", "--no-tensorboard"]
    args = ["--out-dir", str(tmp_path), "--eval-videos", "2", "--samples", "2", "--", *tiny]
    assert bench.main(args) == 0
    name = "mcvd_mmnist" + ("_cpu" if bench.jax.default_backend() != "gpu" else "")
    ends = ("_strip.png", "_per_frame.png", "_curve.png", "_metrics.json", "_train.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["logs", f"{name}.md", *(f"{name}{end}" for end in ends)]
    )
    text = (tmp_path / f"{name}.md").read_text()
    assert "python -m eqvid.train --model mcvd" in text and shlex.join(tiny) in text
    assert "python -m eqvid.evaluate --protocol mcvd-smmnist" in text
    assert re.search(r"Target .*: \*\*(met|not met)\*\*: best-of-2 SSIM", text)
    assert "| 10 | SSIM |" in text and "| 10 | PSNR |" in text
    metrics = json.loads((tmp_path / f"{name}_metrics.json").read_text())
    assert metrics["samples_per_video"] == 2 and metrics["num_videos"] == 2
    met, sentence = bench.ssim_verdict(
        {"samples_per_video": 4, "per_frame": {"ssim": [0.9, 0.5]},
         "baseline_per_frame": {"copy_last": {"ssim": [0.6, 0.7]}}}
    )  # fmt: skip
    assert met and "below copy-last at predicted frame(s) 2" in sentence
