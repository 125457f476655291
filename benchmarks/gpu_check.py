"""One prepared check for a GPU session: are the Pallas kernels right when compiled, and how fast are they and the models?

How to run on a GPU (an NVIDIA H100 or H200 with the CUDA build of JAX installed),
from the repository root:

    python benchmarks/gpu_check.py --quick    # first: every section at small sizes, ≤ 3 minutes
    python benchmarks/gpu_check.py            # then: the full check, ≤ 8 minutes

Everything goes to a new folder benchmarks/results/runs/<UTC time>-<commit>-gpu-<quick|full>/
(ignored by git; or --out-dir): `summary.md` (device, driver, jax/jaxlib, git commit
and dirty flag, the command, the machine load, a pass/fail/time table of the
sections, then every section's results), `summary.json` (the same for machines),
every sub-benchmark's own result file, and `raw/` (each section's complete output with
its exact command, nvidia-smi, jax.print_environment_info, git status and the
uncommitted diff, the pytest JUnit XML). The summary is rewritten after every section,
so a run cut short still leaves one. `--update-reference` writes
benchmarks/results/gpu/<quick|full>/ instead, replacing the committed reference: commit
that folder.

Sections, in order; each runs in its own subprocess with its own time limit, and one
that fails, crashes or runs out of time is recorded (error and output kept) before the
next one starts:

  environment     device, driver (nvidia-smi), jax/jaxlib/CUDA versions, git state
  kernel-tests    correctness: tests/test_linear_scan.py, test_linear_scan_mosaic.py and
                  tests/test_attention.py under pytest on this device. Their `impl="pallas"` / `"auto"` cases
                  compile the kernels on a GPU; cases pinned to `interpret=True` stay
                  interpreted (hence the next section). --quick runs only the cases that
                  reach the kernels through the public functions.
  kernel-compare  correctness: the kernels against the `impl="xla"` reference at
                  realistic sizes (ConvS5 layers, each once per Pallas backend this GPU
                  runs, Mosaic GPU and Triton side by side; Mamba's fused selective
                  scan; transformer attention with every mask kind) in float32 and bfloat16, outputs and gradients, with
                  the tests' tolerances; checks that the kernels were compiled (Triton or
                  Mosaic GPU calls in the lowered program) and logs every maximum error.
  scan            linear-scan GB/s against this run's copy bandwidth at the ConvS5
                  layer sizes (scan_speed.py).
  selective       Mamba's fused selective scan (Mosaic GPU) against the unfused layer,
                  time and memory, and the Mamba2 forms (selective_scan_speed.py).
  attention       attention TFLOP/s against cuDNN (`jax.nn.dot_product_attention`) and
                  XLA, bidirectional, causal and frame-block-causal (attention_speed.py).
  train           ConvS5 vs ConvLSTM training frames/s at T=300 with the MNIST-300
                  presets (train_throughput.py).
  generation      100 context frames → 800 generated: ConvS5 against the Transformer with
                  and without a KV cache, MNIST-300 presets (generation_speed.py).

A benchmark section fails when its script fails or runs out of time, or when a
measurement of eqvid's own code records an error (an OOM included); failed reference
measurements (XLA, cuDNN, lax.scan) are reported but do not fail it.

Time budget: the section limits add up to 460 s (full) and 175 s (--quick), so with
process start-up a run ends within 8 and 3 minutes; a section that would overrun is
stopped and the rest still run. `--budget` scales every limit. The sections share a
JAX compilation cache (--cache-dir), so a full run after --quick compiles less.

--cpu runs every section at tiny sizes on the CPU (kernels interpreted, cuDNN skipped)
into a new temporary folder: a check that this script still works, for CI; its
numbers mean nothing.

Exit status: 0 every section passed; 1 a correctness section (or the environment)
failed or ran out of time; 3 only benchmark sections failed; 2 bad usage, or no GPU
found without --cpu.

    python benchmarks/gpu_check.py --quick --sections kernel-compare attention
    python benchmarks/gpu_check.py --budget 900 --out-dir /tmp/gpu-check
    python benchmarks/gpu_check.py --cpu
"""

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    REPO,
    RESULTS,
    UNKNOWN,
    fresh_folder,
    git_state,
    load_average,
    load_line,
    markdown_table,
)

SCRIPT = pathlib.Path(__file__).resolve()
MODES = ("full", "quick", "cpu")
CORRECTNESS = ("environment", "kernel-tests", "kernel-compare")


# ----------------------------------------------------------------------------
# The sections: what each runs in each mode, and its time limit.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    kind: str  # "setup", "correctness" or "benchmark"
    checks: str
    limits: dict[str, int]  # seconds per mode
    script: str = ""  # the benchmark script a benchmark section runs
    result: str = ""  # its result file's name (without .md)
    args: dict[str, str] = dataclasses.field(default_factory=dict)  # per mode


KERNEL_TESTS = [
    "tests/test_linear_scan.py",
    "tests/test_linear_scan_mosaic.py",
    "tests/test_attention.py",
]
# --quick: the cases that reach the kernels through `impl="pallas"` / `"auto"` (compiled
# on a GPU), not the ones pinned to interpret mode.
QUICK_TESTS = (
    "(pallas or auto or cuda or split_layout or through_linear_scan) "
    "and not kernel_matches_numpy_loop"
)
# --cpu: two cheap cases, one per file: the section's plumbing, not the kernels.
CPU_TESTS = "auto_dispatch or mask_fields_are_validated"

GENERATION_MODES = "--modes convs5 transformer-cache transformer-nocache"

SECTIONS = (
    Section(
        "environment",
        "setup",
        "device, driver, jax/jaxlib/CUDA versions, git state",
        {"full": 25, "quick": 15, "cpu": 60},
    ),
    Section(
        "kernel-tests",
        "correctness",
        "pytest " + " ".join(KERNEL_TESTS) + " on this device",
        {"full": 90, "quick": 30, "cpu": 120},
    ),
    Section(
        "kernel-compare",
        "correctness",
        'the kernels (compiled; scans per backend) vs impl="xla": outputs and gradients',
        {"full": 95, "quick": 30, "cpu": 180},
    ),
    Section(
        "scan",
        "benchmark",
        "linear-scan GB/s vs copy bandwidth, ConvS5 layer sizes",
        {"full": 40, "quick": 15, "cpu": 120},
        script="scan_speed.py",
        result="scan_speed",
        args={
            "full": "--sizes mnist-300 teco long few-channels --repeats 10",
            "quick": "--sizes mnist-300 --repeats 5",
            # The smallest named size; the kernel interpreted there takes minutes, so the
            # references only (kernel-compare runs the interpreted kernel).
            "cpu": "--sizes cpu-small --impls xla sequential --repeats 1",
        },
    ),
    Section(
        "selective",
        "benchmark",
        "Mamba's fused selective scan (Mosaic GPU) vs the unfused layer; Mamba2 forms",
        {"full": 30, "quick": 15, "cpu": 120},
        script="selective_scan_speed.py",
        result="selective_scan_speed",
        args={
            "full": "--lengths 1024 4096 --batch 8 --d-model 768 --d-state 16 --chunks 64 "
            "--repeats 3",
            "quick": "--lengths 1024 --batch 8 --d-model 768 --d-state 16 --chunks 64 --repeats 2",
            "cpu": "--lengths 8 --batch 2 --d-model 8 --d-state 4 --headdim 4 --chunks 4 "
            "--repeats 1",
        },
    ),
    Section(
        "attention",
        "benchmark",
        "attention TFLOP/s, Mosaic GPU and Triton kernels vs tokamax, cuDNN and XLA",
        {"full": 60, "quick": 20, "cpu": 120},
        script="attention_speed.py",
        result="attention_speed",
        args={
            # L=2048: the frame-causal target's 8 frames × 256 tokens.
            "full": "--lengths 2048 4096 --head-dims 64 --repeats 5",
            "quick": "--lengths 2048 --head-dims 64 --masks bidirectional frame-causal --repeats 5",
            "cpu": "--lengths 32 --head-dims 16 --tokens-per-frame 8 --batch 1 --heads 2 "
            "--masks frame-causal --impls triton xla --dtype float32 --repeats 1",
        },
    ),
    Section(
        "train",
        "benchmark",
        "ConvS5 vs ConvLSTM training frames/s, T=300, MNIST-300 presets",
        {"full": 65, "quick": 30, "cpu": 300},
        script="train_throughput.py",
        result="train_throughput",
        args={
            "full": "--preset paper --lengths 300 --models convs5 convlstm --repeats 5",
            "quick": "--preset paper --lengths 300 --models convs5 convlstm --repeats 2",
            "cpu": "--lengths 2 --batch 1 --models convs5 convlstm --repeats 1",
        },
    ),
    Section(
        "generation",
        "benchmark",
        "100 → 800 frames: ConvS5 vs Transformer with / without KV cache",
        {"full": 55, "quick": 20, "cpu": 300},
        script="generation_speed.py",
        result="generation_speed",
        args={
            "full": f"--preset paper --horizons 800 {GENERATION_MODES} --repeats 2",
            # Batch 2: the cache-less Transformer re-runs the whole sequence per frame.
            "quick": f"--preset paper --horizons 800 {GENERATION_MODES} --batch 2 --repeats 1",
            "cpu": f"--context 1 --horizons 2 --batch 1 {GENERATION_MODES} --repeats 1",
        },
    ),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


def default_budget(mode: str, sections: Sequence[Section] = SECTIONS) -> int:
    return sum(s.limits[mode] for s in sections)


# ----------------------------------------------------------------------------
# Small helpers: shown paths, markdown tables, child processes.
# ----------------------------------------------------------------------------


def shown(path: pathlib.Path) -> str:
    """`path` relative to the repository when inside it (as the commands are run)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in `text`, as rows of `{header: cell}`."""

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    lines, tables, i = text.splitlines(), [], 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+\s*", lines[i + 1]):
            header, rows = cells(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, cells(lines[i]))))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def result_body(markdown: str) -> str:
    """A result file without its title and environment lines (the summary has them)."""
    keep = [
        line
        for line in markdown.splitlines()[1:]
        if not re.match(r"- (device: |jax |git commit: |command: |machine load )", line)
    ]
    return "\n".join(keep).strip()


@dataclasses.dataclass
class ChildRun:
    returncode: int | None  # None: killed at the time limit (or interrupted)
    seconds: float
    timed_out: bool
    tail: list[str]


def run_child(
    argv: list[str], *, log_path: pathlib.Path, limit: float, env: dict[str, str], label: str
) -> ChildRun:
    """Run `argv` in the repository root in its own process group, its output streamed
    to the console (indented) and to `log_path`; kill the whole group after `limit`
    seconds (or on Ctrl-C, which is then re-raised)."""
    start = time.monotonic()
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(argv)}\n# cwd: {REPO}\n")
        if changed:
            log.write(f"# environment: {' '.join(f'{k}={v}' for k, v in changed.items())}\n")
        log.write(f"# time limit: {limit:.0f} s\n\n")
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        tail: collections.deque[str] = collections.deque(maxlen=30)

        def pump():
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                print(f"    {line}", end="", flush=True)

        reader = threading.Thread(target=pump, name=f"{label} output", daemon=True)
        reader.start()
        timed_out = False
        try:
            returncode = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out, returncode = True, None
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)
            reader.join(timeout=5)
            log.write(f"\n# interrupted after {time.monotonic() - start:.1f} s\n")
            raise
        finally:
            # Any grandchild still holding the pipe died with the group.
            reader.join(timeout=10)
            if proc.stdout is not None and not reader.is_alive():
                proc.stdout.close()
        seconds = time.monotonic() - start
        log.write(
            f"\n# {'killed at the time limit' if timed_out else f'exit status {returncode}'}"
            f" after {seconds:.1f} s\n"
        )
    return ChildRun(returncode, seconds, timed_out, list(tail))


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def capture(argv: list[str], timeout: float = 20) -> str:
    """The output of a short command, or why there is none."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # git: never write the index
    try:
        done = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"not available: {type(error).__name__}: {error}"
    text = (done.stdout + done.stderr).strip()
    return text if done.returncode == 0 else f"not available (exit {done.returncode}): {text}"


# ----------------------------------------------------------------------------
# What each section's output says, in a few lines for the summary.
# ----------------------------------------------------------------------------


REFERENCES = ("xla", "cudnn", "sequential")  # competitors, not eqvid's own code


def failed_rows(tables: list[list[dict[str, str]]]) -> tuple[int, int]:
    """Rows that record a failed measurement (an error or OOM): `(eqvid's own,
    the references')`; a row is a reference's when its `impl` is one of REFERENCES."""
    own = other = 0
    for rows in tables:
        for row in rows:
            if any(c.startswith("failed") or c == "OOM" for c in row.values()):
                if row.get("impl") in REFERENCES:
                    other += 1
                else:
                    own += 1
    return own, other


def scan_headline(markdown: str) -> list[str]:
    lines = []
    for rows in markdown_tables(markdown)[:1]:
        # The kernel's rows first (the Pallas forms), then the references'.
        for r in sorted(rows, key=lambda r: not r.get("impl", "").startswith("pallas")):
            lines.append(
                f"{r.get('size', '?')} {r.get('impl', '?')}: forward {r.get('fwd GB/s', '?')} "
                f"GB/s = {r.get('of copy BW', '?')} of copy bandwidth; fwd+bwd "
                f"{r.get('fwd+bwd ms', '?')} ms, {r.get('fwd+bwd speed-up vs xla', '?')} vs xla"
            )
    lines += [
        f"{m.group(1)}: copy bandwidth {m.group(2)} GB/s"
        for m in re.finditer(r"^- (\S+): copy bandwidth (\d+) GB/s", markdown, re.M)
    ]
    return lines


def attention_headline(markdown: str) -> list[str]:
    tables = markdown_tables(markdown)
    lines = []
    for rows in tables[:1]:
        for r in rows:
            if r.get("impl") not in ("mosaic", "triton", "pallas"):
                continue
            text = (
                f"{r.get('mask', '?')} L={r.get('L', '?')} d={r.get('d', '?')} {r['impl']}: "
                f"forward {r.get('fwd TFLOP/s', '?')} TFLOP/s ({r.get('fwd vs cudnn', '?')} vs "
                f"cuDNN, {r.get('fwd vs tokamax', '?')} vs tokamax, {r.get('fwd vs xla', '?')} "
                "vs XLA)"
            )
            if "fwd+bwd TFLOP/s" in r:
                text += (
                    f"; fwd+bwd {r['fwd+bwd TFLOP/s']} TFLOP/s "
                    f"({r.get('fwd+bwd vs cudnn', '?')} vs cuDNN)"
                )
            lines.append(text)
    for rows in tables[1:2]:
        lines += [f"target: {r.get('target', '?')}: {r.get('result', '?')}" for r in rows]
    return lines


def train_headline(markdown: str) -> list[str]:
    lines = []
    for rows in markdown_tables(markdown)[:1]:
        for r in rows:
            text = (
                f"T={r.get('T', '?')} {r.get('model', '?')}: {r.get('frames/s', '?')} frames/s "
                f"({r.get('ms/step', '?')} ms/step)"
            )
            if r.get("model") == "convs5":
                text += f"; ConvS5 vs ConvLSTM {r.get('ConvS5 vs ConvLSTM', '?')}"
            lines.append(text)
    return lines


def generation_headline(markdown: str) -> list[str]:
    lines = []
    for rows in markdown_tables(markdown)[:1]:
        for r in rows:
            text = (
                f"{r.get('context→generated', '?')} {r.get('mode', '?')}: "
                f"{r.get('seconds', '?')} s, {r.get('frames/s', '?')} frames/s"
            )
            if r.get("mode") == "convs5":
                ratios = [f"{k} {v}" for k, v in r.items() if k.startswith("ConvS5 vs ")]
                text += "; " + ", ".join(ratios)
            lines.append(text)
    return lines


def selective_headline(markdown: str) -> list[str]:
    """The fused kernel's speed-up and memory lines, else the fastest Mamba2 forms."""
    lines = [line[2:] for line in markdown.splitlines() if line.startswith("- ")]
    fused = [line for line in lines if "fused" in line]
    return fused or [line for line in lines if "steps," in line][:2]


HEADLINES: dict[str, Callable[[str], list[str]]] = {
    "scan": scan_headline,
    "selective": selective_headline,
    "attention": attention_headline,
    "train": train_headline,
    "generation": generation_headline,
}


def pytest_headline(output: str) -> list[str]:
    """The totals of a `pytest -v` run and the tests that failed; for a run killed
    before its summary, what its progress lines say so far."""
    totals = ""
    for line in output.splitlines():
        if re.search(r"\b\d+ (passed|failed|errors?|skipped|deselected)\b.* in [\d.]+s", line):
            totals = line.strip("= ").strip()
    # `FAILED id` (summary, and xdist progress after `[gwN] [ n%]`) or `id FAILED` (-n 0).
    results: dict[str, str] = {}
    for line in output.splitlines():
        match = re.match(
            r"(?:\[gw\d+\] \[\s*\d+%\] )?(PASSED|FAILED|ERROR|SKIPPED) (\S+::\S+)", line
        )
        if match:
            results.setdefault(match.group(2), match.group(1))
            continue
        match = re.match(r"(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)\b", line)
        if match:
            results.setdefault(match.group(1), match.group(2))
    failed = [name for name, result in results.items() if result in ("FAILED", "ERROR")]
    if not totals:
        counts = collections.Counter(results.values())
        totals = "no pytest summary line (killed?); so far " + (
            ", ".join(f"{n} {r.lower()}" for r, n in sorted(counts.items())) or "nothing"
        )
    lines = [totals]
    if failed:
        lines.append(f"{len(failed)} failed: " + ", ".join(failed[:8]))
        if len(failed) > 8:
            lines[-1] += f", … ({len(failed) - 8} more in the log)"
    return lines


def _cell(text: str, width: int = 160) -> str:
    """`text` fit for one markdown table cell."""
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    section: Section
    status: str = "not run"  # pass, FAIL, timeout, skipped, not run, interrupted
    seconds: float = 0.0
    limit: float = 0.0
    command: str = ""
    log: str = ""
    result: str = ""  # result file, relative to the output folder
    headline: list[str] = dataclasses.field(default_factory=list)
    body: str = ""  # markdown shown under the section in the summary


class Check:
    """One run of every selected section, with its summary files."""

    def __init__(
        self, mode: str, out: pathlib.Path, sections, budget: float, cache: str, command: str
    ):
        self.mode, self.out, self.budget, self.cache = mode, out, budget, cache
        self.command = command
        self.raw = out / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.outcomes = [Outcome(s) for s in sections]
        self.scale = budget / default_budget(mode, sections)
        self.started = time.monotonic()
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.load_start = load_average()
        self.commit, self.dirty = git_state()
        self.env_info: dict[str, object] = {}
        self.nvidia = ""

    # -- child processes -----------------------------------------------------

    def child_env(self, section: Section) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.mode == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
        if section.name == "kernel-tests":
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # several pytest workers, one GPU
        elif self.cache:
            env["JAX_COMPILATION_CACHE_DIR"] = self.cache
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
            env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
        return env

    def argv(self, section: Section) -> list[str]:
        python = sys.executable
        if section.name == "environment":
            return [python, shown(SCRIPT), "--child", "environment"]
        if section.name == "kernel-tests":
            # One line per test (-v), so a run killed at its limit still tells which
            # passed. Several workers on a GPU (it has cores; memory is not preallocated).
            workers = {"full": "8", "quick": "4", "cpu": "0"}[self.mode]
            argv = [python, "-m", "pytest", "-v", "-rfE", "-n", workers, "--maxprocesses", workers]
            argv += ["--junitxml", shown(self.raw / "kernel_tests.xml"), *KERNEL_TESTS]
            if self.mode != "full":
                argv += ["-k", QUICK_TESTS if self.mode == "quick" else CPU_TESTS]
            return argv
        if section.name == "kernel-compare":
            argv = [python, shown(SCRIPT), "--child", "compare", "--mode", self.mode]
            return argv + ["--out-dir", shown(self.out)]
        return [
            python,
            shown(SCRIPT.parent / section.script),
            *shlex.split(section.args[self.mode]),
            "--out-dir",
            shown(self.out),
            "--name",
            section.result,
        ]

    def products(self, section: Section) -> list[pathlib.Path]:
        """The files a section writes (removed before it runs: none is left from an
        earlier run in the same folder)."""
        if section.name == "kernel-tests":
            return [self.raw / "kernel_tests.xml"]
        if section.name == "kernel-compare":
            return [self.out / "kernel_compare.md", self.out / "kernel_compare.json"]
        if section.result:
            return [self.out / f"{section.result}.md"]
        return []

    def limit_for(self, index: int) -> float:
        """The section's own limit (scaled), cut so that the sections after it keep
        at least their minimum share of what is left of the budget."""
        own = self.outcomes[index].section.limits[self.mode] * self.scale
        later = sum(
            min(15.0, o.section.limits[self.mode] * self.scale) for o in self.outcomes[index + 1 :]
        )
        left = self.budget - (time.monotonic() - self.started) - later
        return min(own, left)

    # -- the sections ----------------------------------------------------------

    def run(self) -> int:
        self.write_git_files()
        total = len(self.outcomes)
        for index, outcome in enumerate(self.outcomes):
            section = outcome.section
            limit = self.limit_for(index)
            argv = self.argv(section)
            outcome.command = shlex.join(["python", *argv[1:]])
            outcome.limit = limit
            if self.mode != "cpu" and self.env_info and self.env_info.get("backend") != "gpu":
                outcome.status = "skipped"
                outcome.headline = ["no GPU (see environment)"]
                self.write_summary()
                continue
            if limit < 5:
                outcome.status = "skipped"
                outcome.headline = [f"no time left in the {self.budget:.0f} s budget"]
                self.write_summary()
                continue
            print(
                f"\n[{index + 1}/{total}] {section.name} ({section.kind}; limit {limit:.0f} s; "
                f"{time.monotonic() - self.started:.0f} s elapsed)\n    $ {outcome.command}",
                flush=True,
            )
            log_path = self.raw / f"{section.name}.log"
            outcome.log = f"raw/{log_path.name}"
            for stale in self.products(section):
                stale.unlink(missing_ok=True)
            try:
                child = run_child(
                    argv,
                    log_path=log_path,
                    limit=limit,
                    env=self.child_env(section),
                    label=section.name,
                )
            except KeyboardInterrupt:
                outcome.status = "interrupted"
                self.write_summary()
                raise
            outcome.seconds = child.seconds
            output = log_path.read_text(encoding="utf-8", errors="replace")
            self.finish(outcome, child, output)
            print(
                f"  → {section.name}: {outcome.status} in {child.seconds:.0f} s"
                + (f" — {outcome.headline[0]}" if outcome.headline else ""),
                flush=True,
            )
            self.write_summary()
        return self.exit_status()

    def finish(self, outcome: Outcome, child: ChildRun, output: str) -> None:
        section = outcome.section
        ok = child.returncode == 0
        if child.timed_out:
            outcome.status = "timeout"
        else:
            outcome.status = "pass" if ok else "FAIL"
        if section.name == "environment":
            self.read_environment(output)
            if not self.env_info and outcome.status == "pass":
                outcome.status = "FAIL"
            outcome.headline = [self.device_line()]
            if self.mode != "cpu" and self.env_info and self.env_info.get("backend") != "gpu":
                outcome.headline.append(
                    f"no GPU: JAX's backend is {self.env_info.get('backend')} (use --cpu)"
                )
            return
        if section.name == "kernel-tests":
            outcome.headline = pytest_headline(output)
            outcome.result = "raw/kernel_tests.xml"
        elif section.name == "kernel-compare":
            path = self.out / "kernel_compare.md"
            if path.is_file():
                text = path.read_text(encoding="utf-8")
                outcome.result = path.name
                outcome.body = result_body(text)
                outcome.headline = [
                    line[len("- verdict: ") :]
                    for line in text.splitlines()
                    if line.startswith("- verdict: ")
                ]
            elif ok:
                outcome.status = "FAIL"
                outcome.headline = ["exit status 0 but no kernel_compare.md written"]
        else:
            path = self.out / f"{section.result}.md"
            if path.is_file():
                text = path.read_text(encoding="utf-8")
                outcome.result = path.name
                outcome.body = result_body(text)
                outcome.headline = HEADLINES[section.name](text)
                own, other = failed_rows(markdown_tables(text))
                if other:
                    outcome.headline.insert(0, f"{other} reference row(s) failed (see the table)")
                if own:  # a failed measurement of eqvid's own code fails the section
                    outcome.headline.insert(0, f"{own} row(s) failed (see the table)")
                    if outcome.status == "pass":
                        outcome.status = "FAIL"
                if not outcome.headline:
                    outcome.headline = [f"no table found in {path.name}"]
            elif ok:
                outcome.status = "FAIL"
                outcome.headline = [f"exit status 0 but no {section.result}.md written"]
        if outcome.status != "pass" and child.tail:
            what = "killed at the time limit" if child.timed_out else "failed"
            outcome.headline.append(f"{what}; last output: {child.tail[-1][:200]}")
            outcome.body = (
                (outcome.body + "\n\n" if outcome.body else "")
                + "Last lines of the output:\n\n```\n"
                + "\n".join(child.tail[-15:])
                + "\n```"
            )

    def exit_status(self) -> int:
        bad = [o for o in self.outcomes if o.status not in ("pass",)]
        if any(o.section.name in CORRECTNESS for o in bad):
            return 1
        return 3 if bad else 0

    # -- environment -----------------------------------------------------------

    def write_git_files(self) -> None:
        status = capture(["git", "status", "--porcelain", "--untracked-files=no"])
        lines = [
            f"commit: {self.commit}",
            f"uncommitted changes to tracked files: {self.dirty}",
            "",
            "$ git status --porcelain --untracked-files=no",
            status,
            "",
            "$ git log -1 --format=%H%n%an%n%ad%n%s",
            capture(["git", "log", "-1", "--format=%H%n%an%n%ad%n%s"]),
        ]
        (self.raw / "git.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self.dirty == "yes":
            diff = capture(["git", "diff", "HEAD"], timeout=60)
            (self.raw / "git_diff.patch").write_text(diff + "\n", encoding="utf-8")
        self.nvidia = capture(["nvidia-smi"])
        query = capture(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                "--format=csv",
            ]
        )
        (self.raw / "nvidia-smi.txt").write_text(
            f"$ nvidia-smi\n{self.nvidia}\n\n$ nvidia-smi --query-gpu=...\n{query}\n",
            encoding="utf-8",
        )

    def read_environment(self, output: str) -> None:
        for line in output.splitlines():
            if line.startswith("GPU_CHECK_ENV "):
                with contextlib.suppress(json.JSONDecodeError):
                    self.env_info = json.loads(line[len("GPU_CHECK_ENV ") :])

    def driver(self) -> str:
        match = re.search(r"Driver Version:\s*(\S+)\s+CUDA Version:\s*(\S+)", self.nvidia)
        if match:
            return f"driver {match.group(1)}, CUDA {match.group(2)} (nvidia-smi)"
        return "nvidia-smi " + ("not available" if "not available" in self.nvidia else "output")

    def device_line(self) -> str:
        e = self.env_info
        if not e:
            return "device unknown (the environment section did not report)"
        return (
            f"{e.get('device', UNKNOWN)} ({e.get('backend', UNKNOWN)}, "
            f"{e.get('device_count', '?')} device(s)); jax {e.get('jax', UNKNOWN)}, "
            f"jaxlib {e.get('jaxlib', UNKNOWN)}; {self.driver()}"
        )

    # -- the summary -------------------------------------------------------------

    def write_summary(self) -> None:
        e = self.env_info
        elapsed = time.monotonic() - self.started
        status = self.exit_status()
        rows = [
            [
                o.section.name,
                o.section.kind,
                o.section.checks,
                o.status,
                f"{o.seconds:.0f}" if o.status not in ("not run", "skipped") else "–",
                f"{o.limit:.0f}" if o.limit else "–",
                _cell(o.headline[0] if o.headline else "–"),
            ]
            for o in self.outcomes
        ]
        table = markdown_table(
            ["section", "kind", "checks", "status", "seconds", "limit s", "result"], rows
        )
        finished = all(o.status != "not run" for o in self.outcomes)
        load_now = load_average()
        header = [
            f"# eqvid GPU check ({self.mode})",
            "",
            f"- device: {e.get('device', UNKNOWN)} ({e.get('backend', UNKNOWN)}, "
            f"{e.get('device_count', '?')} device(s)); host: {e.get('host', UNKNOWN)}",
            f"- driver: {self.driver()}",
            f"- jax {e.get('jax', UNKNOWN)}, jaxlib {e.get('jaxlib', UNKNOWN)}, "
            f"Python {e.get('python', UNKNOWN)}",
            f"- git commit: {self.commit}, uncommitted changes to tracked files: {self.dirty}"
            + (" (diff in raw/git_diff.patch)" if self.dirty == "yes" else ""),
            f"- command: `{self.command}` (from the repository root)",
            f"- {load_line(self.load_start, load_now)}" + ("" if finished else " (so far)"),
            f"- mode: {self.mode}; time budget {self.budget:.0f} s; started "
            f"{self.started_at:%Y-%m-%d %H:%M:%S} UTC; "
            + (f"took {elapsed:.0f} s" if finished else f"{elapsed:.0f} s so far (still running)"),
            "- JAX compilation cache shared by the sections: "
            + (f"`{self.cache}`" if self.cache else "off"),
            "",
            "## Summary",
            "",
            table,
            "",
            f"Exit status {status}"
            + (" (so far)" if not finished else "")
            + ": 0 every section passed, 1 a correctness section (or the environment) "
            "failed or ran out of time, 3 only benchmark sections failed. Each section's "
            "complete output, with its exact command, is in `raw/<section>.log`.",
        ]
        if self.mode == "cpu":
            header += [
                "",
                "**--cpu run: tiny sizes, kernels interpreted — a check that the script "
                "works; the numbers mean nothing.**",
            ]
        parts = ["\n".join(header)]
        for o in self.outcomes:
            lines = [f"## {o.section.name}: {o.status}", ""]
            if o.command:
                lines.append(
                    f"`{o.command}` ({o.seconds:.0f} s of {o.limit:.0f} s"
                    + (f"; [log]({o.log})" if o.log else "")
                    + (f"; [result]({o.result})" if o.result else "")
                    + ")"
                )
                lines.append("")
            lines += [f"- {h}" for h in o.headline]
            if o.body:
                lines += ["", o.body]
            parts.append("\n".join(lines).rstrip())
        (self.out / "summary.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
        record = dict(
            mode=self.mode,
            command=self.command,
            git_commit=self.commit,
            git_dirty=self.dirty,
            load_start=self.load_start,
            load_end=load_now,
            cpu_count=os.cpu_count(),
            environment=e,
            driver=self.driver(),
            budget_s=self.budget,
            elapsed_s=elapsed,
            finished=finished,
            exit_status=status,
            compilation_cache=self.cache,
            sections=[
                dict(
                    name=o.section.name,
                    kind=o.section.kind,
                    status=o.status,
                    seconds=o.seconds,
                    limit_s=o.limit,
                    command=o.command,
                    log=o.log,
                    result=o.result,
                    headline=o.headline,
                )
                for o in self.outcomes
            ],
        )
        (self.out / "summary.json").write_text(json.dumps(record, indent=1) + "\n")


# ----------------------------------------------------------------------------
# Child: the environment.
# ----------------------------------------------------------------------------


def child_environment() -> int:
    import jax
    from _common import environment_record

    print(jax.print_environment_info(return_string=True), flush=True)
    for device in jax.devices():
        print(f"device {device.id}: {device.device_kind} ({device.platform})")
        stats = getattr(device, "memory_stats", lambda: None)()
        if stats:
            limit = stats.get("bytes_limit")
            if limit:
                print(f"  memory limit: {limit / 2**30:.1f} GiB")
    record = environment_record()
    print("GPU_CHECK_ENV " + json.dumps(record), flush=True)
    return 0


# ----------------------------------------------------------------------------
# Child: the kernels compiled, against the references.
# ----------------------------------------------------------------------------

# Tolerances, from the tests (tests/test_linear_scan.py, tests/test_attention.py):
# scan float32: element-wise |got − want| ≤ atol + rtol·|want| with 1e-4 for outputs
# and 1e-3 for gradients (the T=300 time-chunked gradient test); scan bfloat16
# outputs: within one bf16 ulp of the float32 result (the bf16 tests), plus the float32
# tolerance for the reordered float32 sums at these lengths; scan bfloat16 gradients
# (no test has them): the half-precision attention bound, 2e-2 element-wise.
# Attention: max|got − want| / max|want| < 1e-5 in float32 and < 2e-2 in bfloat16.
SCAN_TOL = {"float32": (1e-4, 1e-3), "bfloat16": (1e-4, 2e-2)}
ATTENTION_TOL = {"float32": 1e-5, "bfloat16": 2e-2}


@dataclasses.dataclass(frozen=True)
class ScanCase:
    """`linear_scan` (layout complex / real) or `linear_scan_split` (split) on `b` of
    shape `(length, *rest)` (the last axis is P states; `2P` planes for split)."""

    name: str
    length: int
    rest: tuple[int, ...]
    layout: str  # "complex", "split" or "real"
    dtype: str  # "float32" (complex64 for complex) or "bfloat16"
    per_step: bool = False
    reverse: bool = False
    impl: str = "pallas"  # the kernel: "mosaic", "triton" or "pallas" (the machine's)

    @property
    def label(self) -> str:
        kind = {"complex": "complex64", "split": "split [Re, Im]", "real": "real"}[self.layout]
        extra = (", per-step a" if self.per_step else "") + (", reverse" if self.reverse else "")
        return f"scan ({self.impl}): {self.name} ({kind}{extra})"

    @property
    def shape(self) -> str:
        return "×".join(map(str, (self.length, *self.rest)))

    def structs(self):
        """`(a, b, cotangent)` as `jax.ShapeDtypeStruct`s."""
        import jax
        import jax.numpy as jnp

        p = self.rest[-1]
        if self.layout == "real":
            a_dtype = b_dtype = jnp.dtype(self.dtype)
        elif self.layout == "split":
            a_dtype, b_dtype = jnp.dtype(jnp.complex64), jnp.dtype(self.dtype)
        else:
            a_dtype = b_dtype = jnp.dtype(jnp.complex64)
        b_shape = (self.length, *self.rest[:-1], 2 * p if self.layout == "split" else p)
        state_shape = (self.length, *self.rest)
        a_shape = state_shape if self.per_step else (p,)
        b = jax.ShapeDtypeStruct(b_shape, b_dtype)
        return jax.ShapeDtypeStruct(a_shape, a_dtype), b, b

    def inputs(self, key):
        import jax
        import jax.numpy as jnp

        a_s, b_s, _ = self.structs()
        k1, k2, k3, k4 = jax.random.split(key, 4)
        if self.layout == "real":
            mag = jax.random.uniform(k1, a_s.shape, minval=0.3, maxval=0.99)
            a = (mag * jnp.where(jax.random.bernoulli(k2, 0.5, a_s.shape), 1, -1)).astype(a_s.dtype)
        else:  # the ConvS5 eigenvalues: |a| in [0.9, 0.999], any phase
            mag = jax.random.uniform(k1, a_s.shape, minval=0.9, maxval=0.999)
            phase = jax.random.uniform(k2, a_s.shape, maxval=2 * math.pi)
            a = jax.lax.complex(mag * jnp.cos(phase), mag * jnp.sin(phase))

        def draw(k):
            if self.layout == "complex":
                re, im = jax.random.normal(k, (2, *b_s.shape))
                return jax.lax.complex(re, im)
            return jax.random.normal(k, b_s.shape).astype(b_s.dtype)

        return a, draw(k3), draw(k4)

    def run(self, impl: str, a, b, ct):
        """The scan's output and its gradients with respect to `a` and `b` (for the
        cotangent `ct`); a reference `impl` computes in float32 on the same values."""
        import jax
        import jax.numpy as jnp

        from eqvid.kernels import linear_scan, linear_scan_split
        from eqvid.kernels.linear_scan import ScanImpl

        if impl in ("xla", "sequential") and b.dtype == jnp.bfloat16:
            b, ct = b.astype(jnp.float32), ct.astype(jnp.float32)
            if self.layout == "real":
                a = a.astype(jnp.float32)
        scan = linear_scan_split if self.layout == "split" else linear_scan

        def f(a, b):
            return scan(a, b, reverse=self.reverse, impl=typing.cast(ScanImpl, impl))

        out, vjp = jax.vjp(f, a, b)
        return out, vjp(ct)


@dataclasses.dataclass(frozen=True)
class SelectiveCase:
    """Mamba's selective scan (`eqvid.kernels.selective_scan`) on one sequence of
    `length` steps, `channels` channels and `d_state` states, gated: the fused kernel
    (`impl="mosaic"`) against the reference (`impl="xla"`), float32."""

    name: str
    length: int
    channels: int
    d_state: int
    dtype: str = "float32"
    impl: str = "mosaic"
    quantities = ("output", "dx", "ddt", "dA", "dB", "dC", "dD", "dz")

    @property
    def label(self) -> str:
        return f"selective scan ({self.impl}): {self.name}"

    @property
    def shape(self) -> str:
        return f"T{self.length} D{self.channels} N{self.d_state}"

    def structs(self):
        import jax
        import jax.numpy as jnp

        s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
        t, d, n = self.length, self.channels, self.d_state
        return s(t, d), s(t, d), s(d, n), s(t, n), s(t, n), s(d), s(t, d), s(t, d)

    def inputs(self, key):
        """Mamba-like values (Δ = softplus, A < 0) and a random cotangent of `y`."""
        import jax
        import jax.numpy as jnp

        k = jax.random.split(key, 8)
        x, dt, A, B, C, D, z, ct = (
            jax.random.normal(kk, s.shape) for kk, s in zip(k, self.structs(), strict=True)
        )
        return x, jax.nn.softplus(dt - 1), -jnp.exp(0.5 * A), B, C, D, z, ct

    def run(self, impl: str, x, dt, A, B, C, D, z, ct):
        """The outputs `y` and the gradients of `y · ct` with respect to every input."""
        import jax

        from eqvid.kernels import selective_scan

        def f(x, dt, A, B, C, D, z):
            return selective_scan(x, dt, A, B, C, D, z, impl=impl)[0]  # type: ignore[arg-type]

        out, vjp = jax.vjp(f, x, dt, A, B, C, D, z)
        return out, vjp(ct)


@dataclasses.dataclass(frozen=True)
class AttentionCase:
    name: str
    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    dim: int
    mask: object  # an AttentionMask or None
    dtype: str
    impl: str = "pallas"  # the kernel: "mosaic", "triton" or "pallas" (the machine's)

    @property
    def label(self) -> str:
        return f"attention ({self.impl}): {self.name}"

    @property
    def shape(self) -> str:
        kv = f"/{self.kv_len}" if self.kv_len != self.q_len else ""
        gqa = f"/{self.kv_heads}" if self.kv_heads != self.heads else ""
        return f"B{self.batch} L{self.q_len}{kv} H{self.heads}{gqa} d{self.dim}"

    def structs(self):
        import jax
        import jax.numpy as jnp

        dtype = jnp.dtype(self.dtype)
        q = jax.ShapeDtypeStruct((self.batch, self.q_len, self.heads, self.dim), dtype)
        kv = jax.ShapeDtypeStruct((self.batch, self.kv_len, self.kv_heads, self.dim), dtype)
        return q, kv, kv, q

    def inputs(self, key):
        import jax

        return tuple(
            jax.random.normal(k, s.shape, s.dtype)
            for k, s in zip(jax.random.split(key, 4), self.structs())
        )

    def run(self, impl: str, q, k, v, ct):
        import jax

        from eqvid.kernels import attention

        def f(q, k, v):
            return attention(q, k, v, mask=self.mask, impl=impl)  # type: ignore[arg-type]

        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(ct)


Case = ScanCase | SelectiveCase | AttentionCase


def compare_cases(mode: str) -> list[Case]:
    """The comparisons kernel-compare runs in `mode` (GPU sizes in full and quick)."""
    import numpy as np

    # `eqvid.kernels` is the kernels/ folder, found through setuptools' editable finder,
    # which pyright cannot follow.
    from eqvid.kernels import AttentionMask, pallas_backends

    # Every scan case once per Pallas backend this machine runs, side by side.
    kernels = [k for k, why in pallas_backends().items() if why is None] or ["pallas"]
    per_backend = lambda scans: [dataclasses.replace(c, impl=k) for c in scans for k in kernels]
    # The fused selective scan exists for Mosaic GPU only.
    fused = lambda cases: cases if "mosaic" in kernels else []
    causal = AttentionMask(causal=True)
    if mode == "cpu":  # tiny: the kernels are interpreted
        # Four cases, every code path of this check, each a few seconds interpreted.
        scans = per_backend(
            [
                ScanCase("ConvS5 layer", 12, (2, 3, 3, 8), "split", "bfloat16"),
                ScanCase("few channels, time chunks", 256, (2,), "complex", "float32", True, True),
            ]
        )
        window = AttentionMask.frame_causal(8, window=2).with_lengths(
            q_lengths=np.array([40]), kv_lengths=np.array([33])
        )
        decode = AttentionMask(causal=True, tokens_per_frame=8, q_offset=40)
        return [
            *scans,
            *fused([SelectiveCase("Mamba, 2 channel blocks", 20, 130, 6)]),
            *(
                AttentionCase("frame window, GQA, padding", 1, 48, 48, 2, 1, 24, window, dtype, k)
                for dtype in ("float32", "bfloat16")
                for k in attention_kernels(kernels, dtype)[:1]  # Triton fp32, Mosaic bf16
            ),
            *(
                AttentionCase("KV-cache decode", 1, 8, 48, 2, 2, 16, decode, "bfloat16", k)
                for k in attention_kernels(kernels, "bfloat16")
            ),
        ]
    # --quick's cases first (a full run cut short has checked at least those), each
    # attention case in float32 then bfloat16.
    layer = (300, (8, 16, 16, 128))  # the ConvS5 MNIST-300 layer at train length 300
    cases: list[Case] = [
        *per_backend(
            [
                ScanCase("ConvS5 MNIST-300 layer", *layer, "complex", "float32"),
                ScanCase("ConvS5 MNIST-300 layer", *layer, "split", "bfloat16"),
            ]
        ),
        *fused([SelectiveCase("Mamba layer, d_inner 1536", 1024, 1536, 16)]),
    ]
    quick_scans = len(cases)
    decode = AttentionMask(causal=True, tokens_per_frame=256, q_offset=1792)
    frames = AttentionMask.frame_causal(256)  # a 16×16 latent per frame
    attn = [
        ("frame-causal, 256 tokens/frame", 2, 2048, 2048, 8, 8, 64, frames),
        ("KV-cache decode: 256 queries at 1792", 2, 256, 2048, 8, 8, 64, decode),
    ]
    if mode == "full":
        cases += per_backend(
            [
                ScanCase("ConvS5 MNIST-300 layer", *layer, "split", "float32"),
                ScanCase("TECO layer", 300, (16, 8, 8, 512), "split", "float32"),
                ScanCase(
                    "few channels, T=4096: time chunks",
                    4096,
                    (1, 8, 8, 32),
                    "complex",
                    "float32",
                    per_step=True,
                    reverse=True,
                ),
                ScanCase("selective", 1200, (8, 8, 8, 64), "real", "bfloat16", per_step=True),
            ]
        )
        cases += fused([SelectiveCase("long, d_state 64", 4096, 256, 64)])
        padded = AttentionMask.frame_causal(64, window=4).with_lengths(
            q_lengths=np.array([2048, 1500]), kv_lengths=np.array([2048, 1200])
        )
        odd = AttentionMask.frame_causal(40)
        attn += [
            ("bidirectional", 2, 2048, 2048, 8, 8, 64, None),
            ("causal", 2, 2048, 2048, 8, 8, 64, causal),
            ("frame window 4, GQA 8/2, padding", 2, 2048, 2048, 8, 2, 64, padded),
            ("causal, d=128", 1, 4096, 4096, 4, 4, 128, causal),
            ("frame-causal, d=48 (padded), L=1000", 2, 1000, 1000, 4, 4, 48, odd),
        ]
    per_spec = [
        [
            AttentionCase(*spec, dtype=dtype, impl=impl)  # type: ignore[misc]
            for dtype in ("float32", "bfloat16")
            for impl in attention_kernels(kernels, dtype)
        ]
        for spec in attn
    ]
    attention_cases = [c for spec in per_spec for c in spec]
    quick_attention = sum(len(spec) for spec in per_spec[:2])
    # Interleave: the quick cases (2 scans per backend, a fused selective scan, the
    # first 2 attention shapes in float32 and bfloat16 per backend) come first.
    return (
        cases[:quick_scans]
        + attention_cases[:quick_attention]
        + cases[quick_scans:]
        + attention_cases[quick_attention:]
    )


def attention_kernels(kernels: list[str], dtype: str) -> list[str]:
    """The attention kernels to check in `dtype`: every Pallas backend this machine
    runs (`kernels`, Mosaic GPU first), side by side, except Mosaic GPU for float32
    (it takes bfloat16/float16; float32 runs on Triton)."""
    if dtype == "float32":
        return [k for k in kernels if k != "mosaic"]
    return kernels


def _errors(got, want, bound):
    """Device-side reductions: max |got − want|, that over max |want|, the worst ratio
    of the error to its allowed bound `bound(|want|)` (≤ 1 passes; NaN fails), and
    whether the kernel's values are finite wherever the reference's are."""
    import jax.numpy as jnp

    wide = jnp.complex64 if jnp.iscomplexobj(want) else jnp.float32
    got, want = got.astype(wide), want.astype(wide)
    err = jnp.abs(got - want)
    mag = jnp.abs(want)
    max_err = jnp.max(err)
    worst = jnp.max(err / bound(mag))
    # Any NaN / inf in the kernel's output where the reference is finite fails.
    finite = jnp.all(jnp.isfinite(got) | ~jnp.isfinite(want))
    return max_err, max_err / jnp.maximum(jnp.max(mag), 1e-30), worst, finite


def bf16_ulp(mag):
    """The spacing of bfloat16 numbers at `mag` (float32, ≥ 0) rounded to bfloat16."""
    import jax.numpy as jnp

    rounded = mag.astype(jnp.bfloat16).astype(jnp.float32)
    _, exponent = jnp.frexp(rounded)  # rounded = m·2^e, m in [0.5, 1): 8 significant bits
    ulp = jnp.ldexp(jnp.float32(1.0), jnp.maximum(exponent - 8, -133))
    return jnp.where(rounded > 0, ulp, jnp.float32(2.0**-133))


def tolerance(case, gradient: bool, kernel_dtype) -> tuple[str, Callable]:
    """The bound on |got − want| for one output or gradient of `case`, as
    `(description, bound(|want|))`."""
    import jax.numpy as jnp

    if isinstance(case, AttentionCase):
        tol = ATTENTION_TOL[case.dtype]
        return (
            f"{tol:g}·max abs(want)",
            lambda mag: tol * jnp.maximum(jnp.max(mag), 1e-30) * jnp.ones_like(mag),
        )
    out_tol, grad_tol = SCAN_TOL[case.dtype]
    if case.dtype == "bfloat16" and not gradient and kernel_dtype == jnp.bfloat16:
        return (
            f"1 bf16 ulp + {out_tol:g}·(1 + abs(want))",
            lambda mag: bf16_ulp(mag) + out_tol * (1 + mag),
        )
    tol = grad_tol if gradient else out_tol
    return f"{tol:g}·(1 + abs(want))", lambda mag: tol * (1 + mag)


def kernel_calls(text: str) -> str:
    """What runs the kernel in a lowered program: `Triton ×n`, `Mosaic GPU ×n` (its
    custom calls) or `interpreted`."""
    triton, mosaic = text.count("xla.gpu.triton"), text.count("@mosaic_gpu")
    if mosaic:
        return f"Mosaic GPU ×{mosaic}"
    return f"Triton ×{triton}" if triton else "interpreted"


def compare_one(case, key) -> list[dict]:
    """Run `case` with the kernel and the reference; one record per output/gradient."""
    import jax

    args = case.inputs(key)
    kernel = getattr(case, "impl", "pallas")
    lowered = jax.jit(lambda *a: case.run(kernel, *a)).lower(*args)
    compiled = kernel_calls(lowered.as_text())
    got = lowered.compile()(*args)
    want = jax.jit(lambda *a: case.run("xla", *a))(*args)
    if isinstance(case, SelectiveCase):
        names = list(case.quantities)
    else:
        names = ["output"] + (["da", "db"] if isinstance(case, ScanCase) else ["dq", "dk", "dv"])
    flat_got = [got[0], *got[1]]
    flat_want = [want[0], *want[1]]
    records = []
    for i, (name, g, w) in enumerate(zip(names, flat_got, flat_want)):
        rule, bound = tolerance(case, i > 0, g.dtype)
        max_err, rel, worst, finite = (float(x) for x in _errors(g, w, bound))
        ok = bool(finite) and worst <= 1.0 and g.shape == w.shape
        records.append(
            dict(
                case=case.label,
                dtype=case.dtype,
                shape=case.shape,
                compiled=compiled,
                quantity=name,
                max_abs_err=max_err,
                max_rel_err=rel,
                worst_err_over_bound=worst,
                tolerance=rule,
                ok=ok,
                error="",
            )
        )
    return records


def write_compare_report(out_dir: str, records: list[dict], done: int, total: int) -> str:
    """Write kernel_compare.md / .json for the cases run so far; return the verdict."""
    import jax
    from _common import environment_record, write_result

    failures = [r for r in records if not r["ok"]]
    rows = [
        [
            r["case"],
            r["dtype"],
            r["shape"],
            r["compiled"],
            r["quantity"],
            f"{r['max_abs_err']:.2e}",
            f"{r['max_rel_err']:.2e}",
            f"{r['worst_err_over_bound']:.3g}",
            r["tolerance"],
            "ok" if r["ok"] else ("FAILED: " + r["error"]).rstrip(": ").replace("|", "/"),
        ]
        for r in records
    ]
    table = markdown_table(
        [
            "case",
            "dtype",
            "shape",
            "kernel",
            "quantity",
            "max abs err",
            "max err / max abs(ref)",
            "worst err / bound",
            "bound",
            "result",
        ],
        rows,
    )
    verdict = (
        f"{len(failures)} of {len(records)} comparisons FAILED"
        if failures
        else f"all {len(records)} comparisons within tolerance"
    )
    if done < total:
        verdict += f" (so far: {done} of {total} cases run)"
    compiled = "compiled" if jax.default_backend() == "gpu" else "interpreted, as off GPU"
    body = (
        f'- verdict: {verdict} ({total} cases; `impl="pallas"` {compiled}, against '
        '`impl="xla"`)\n\n'
        "Each case runs the kernel and the reference on the same inputs and compares the "
        "output and the gradients (a vector-Jacobian product with a random cotangent). "
        "bfloat16 scans are compared with the float32 reference on the same "
        "(bf16-valued) inputs; bfloat16 attention with the reference on the same inputs "
        "(it computes in float32 and rounds). `kernel`: Triton or Mosaic GPU calls in the "
        "lowered program (compiled), or `interpreted`; each scan runs once per Pallas "
        "backend this machine has (`scan (mosaic)`, `scan (triton)`). `worst err / bound` ≤ 1 passes. Bounds "
        "from the tests: scan float32 1e-4 (outputs) and 1e-3 (gradients) element-wise "
        "(atol = rtol); scan bfloat16 outputs one bf16 ulp (plus the float32 bound for "
        "sums reordered at these lengths), gradients 2e-2 (the attention half-precision "
        "bound; no scan test has bf16 gradients); attention max abs(err) / max abs(ref) "
        f"below 1e-5 (float32) and 2e-2 (bfloat16).\n\n{table}\n"
    )
    write_result("kernel_compare", "Kernels against the references", body, out_dir)
    (pathlib.Path(out_dir) / "kernel_compare.json").write_text(
        json.dumps(dict(environment=environment_record(), records=records), indent=1) + "\n"
    )
    return verdict


def child_compare(mode: str, out_dir: str) -> int:
    import jax

    on_gpu = jax.default_backend() == "gpu"
    cases = compare_cases(mode)
    records: list[dict] = []
    verdict = write_compare_report(out_dir, records, 0, len(cases))
    for index, case in enumerate(cases):
        start = time.perf_counter()
        try:
            found = compare_one(case, jax.random.key(index))
            if on_gpu and found[0]["compiled"] == "interpreted":
                for r in found:
                    r["ok"], r["error"] = False, "no kernel call in the lowered program"
        except Exception as error:  # recorded; the next case still runs
            text = f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]
            found = [
                dict(
                    case=case.label,
                    dtype=case.dtype,
                    shape=case.shape,
                    compiled="–",
                    quantity="–",
                    max_abs_err=math.nan,
                    max_rel_err=math.nan,
                    worst_err_over_bound=math.nan,
                    tolerance="–",
                    ok=False,
                    error=text,
                )
            ]
        records += found
        seconds = time.perf_counter() - start
        worst = max((r["worst_err_over_bound"] for r in found), default=math.nan)
        detail = found[0]["error"] or ", ".join(
            f"{r['quantity']} {r['max_abs_err']:.2e}" for r in found
        )
        print(
            f"[{index + 1}/{len(cases)}] {case.label} {case.dtype} {case.shape}: "
            f"{'ok' if all(r['ok'] for r in found) else 'FAILED'} ({found[0]['compiled']}; "
            f"max abs err {detail}; worst err/bound {worst:.3g}; {seconds:.1f} s)",
            flush=True,
        )
        verdict = write_compare_report(out_dir, records, index + 1, len(cases))
        jax.clear_caches()
    print(f"\n{verdict}; wrote {pathlib.Path(out_dir) / 'kernel_compare.md'}", flush=True)
    return 0 if all(r["ok"] for r in records) else 1


# ----------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu_check.py",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--quick",
        action="store_true",
        help="every section at small sizes: ≤ 3 minutes on an H100/H200 (section limits "
        f"add up to {default_budget('quick')} s). Run it first.",
    )
    modes.add_argument(
        "--cpu",
        action="store_true",
        help="tiny sizes on the CPU (JAX_PLATFORMS=cpu, kernels interpreted, cuDNN "
        "skipped): checks that the script works; writes to a new temporary folder "
        "unless --out-dir is given.",
    )
    parser.add_argument(
        "--out-dir",
        default="",
        help="folder for everything (default: a new folder under benchmarks/results/runs/, "
        "which git ignores; with --cpu a new temporary folder)",
    )
    parser.add_argument(
        "--update-reference",
        action="store_true",
        help="write into benchmarks/results/gpu/full or benchmarks/results/gpu/quick, "
        "replacing the committed reference results (not with --out-dir or --cpu)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTION_NAMES,
        default=list(SECTION_NAMES),
        metavar="SECTION",
        help=f"sections to run, in this order ({', '.join(SECTION_NAMES)}; default: all)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="total time limit in seconds; every section's limit is scaled to fit "
        f"(default: the sum of the section limits: {default_budget('full')} s full, "
        f"{default_budget('quick')} s --quick, {default_budget('cpu')} s --cpu)",
    )
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(tempfile.gettempdir(), "eqvid-gpu-check-jax-cache"),
        help="JAX persistent compilation cache shared by the sections (not pytest), so a "
        "later run compiles less; 'none' turns it off (default: %(default)s)",
    )
    parser.add_argument("--child", choices=("environment", "compare"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="full", help=argparse.SUPPRESS)
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    if args.child == "environment":
        return child_environment()
    if args.child == "compare":
        return child_compare(args.mode, args.out_dir or str(pathlib.Path.cwd()))

    mode = "cpu" if args.cpu else "quick" if args.quick else "full"
    # The environment always runs: it tells every result's device and versions.
    sections = [s for s in SECTIONS if s.name in {"environment", *args.sections}]
    if args.update_reference and (args.out_dir or mode == "cpu"):
        parser.error("--update-reference writes the GPU reference: not with --out-dir or --cpu")
    if args.budget < 0:
        parser.error("--budget must be positive")
    if args.out_dir:
        out = pathlib.Path(args.out_dir).resolve()
    elif mode == "cpu":
        out = pathlib.Path(tempfile.mkdtemp(prefix="eqvid-gpu-check-cpu-"))
    elif args.update_reference:
        out = RESULTS / "gpu" / mode
    else:
        out = fresh_folder(f"gpu-{mode}")
    budget = args.budget or default_budget(mode, sections)
    cache = "" if args.cache_dir.lower() in ("", "none", "off") else args.cache_dir
    if cache:
        pathlib.Path(cache).mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # The compare child writes here, so it must see the same folder.
    command = shlex.join(["python", shown(SCRIPT), *(sys.argv[1:] if argv is None else argv)])
    check = Check(mode, out, sections, budget, cache, command)
    print(
        f"eqvid GPU check, mode {mode}: {len(sections)} section(s), time budget {budget:.0f} s, "
        f"writing to {out}\ngit commit {check.commit} (dirty: {check.dirty})",
        flush=True,
    )
    try:
        status = check.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted; partial summary in {out / 'summary.md'}", flush=True)
        return 130
    if mode != "cpu" and check.env_info and check.env_info.get("backend") != "gpu":
        print(
            f"\nno GPU: JAX's backend is {check.env_info.get('backend')}. Install the CUDA "
            "build of JAX, or use --cpu for the tiny smoke run.",
            flush=True,
        )
        status = 2
    print("\n" + (out / "summary.md").read_text().split("## Summary", 1)[-1].split("\n## ")[0])
    print(f"exit status {status}; wrote {out / 'summary.md'}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
