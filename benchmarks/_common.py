"""Shared helpers for the benchmark scripts: timing, environment, result files."""

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
"""The committed reference results: written only with `--update-reference`."""
RUNS = RESULTS / "runs"
"""Where a run writes by default: a new folder per run (ignored by git)."""
REPO = pathlib.Path(__file__).resolve().parents[1]
UNKNOWN = "unknown"


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds, after `warmup` calls (compilation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _git(*args: str) -> str:
    """The stdout of `git <args>` run in this repository (raises when git is missing,
    fails or this is not a checkout). `GIT_OPTIONAL_LOCKS=0`: `git status` must not
    refresh (write) the index, which other processes may be using."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    done = subprocess.run(
        ["git", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def git_state() -> tuple[str, str]:
    """`(commit, dirty)` of the checkout these scripts run from: the full hash of
    HEAD, and `"yes"` when tracked files have uncommitted changes (staged or not;
    untracked files and the result files under benchmarks/results/, which a suite
    run rewrites as it goes, do not count), `"no"` when they have none. Both are
    `"unknown"` when git is not installed, fails, or this is not a git checkout."""
    try:
        commit = _git("rev-parse", "--verify", "HEAD").strip()
        changes = _git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)benchmarks/results",
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN, UNKNOWN
    if not commit:
        return UNKNOWN, UNKNOWN
    return commit, "yes" if changes.strip() else "no"


def jaxlib_version() -> str:
    try:
        import jaxlib

        return str(getattr(jaxlib, "__version__", UNKNOWN))
    except ImportError:
        return UNKNOWN


def command_line(script: str = "", argv: list[str] | None = None) -> str:
    """The command that is running, as one shell line with the Python executable as
    `python`: `sys.argv`, or `script` (shown relative to the repository root) with
    `argv` when a script's `main(argv)` is called from Python (run_all.py, tests)."""
    if script and argv is not None:
        path = pathlib.Path(script).resolve()
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        words = [str(shown), *argv]
    else:
        words = sys.argv
    return "python " + shlex.join(words)


def load_average() -> float | None:
    """The machine's 1-minute load average now (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclasses.dataclass(frozen=True)
class Run:
    """How one benchmark run started: its command and the machine load then."""

    command: str
    load_start: float | None


_IMPORTED = Run(command_line(), load_average())
_current: Run | None = None


def begin_run(
    parser: argparse.ArgumentParser,
    script: str,
    argv: list[str] | None,
    *,
    out_dir: str,
    update_reference: bool,
) -> pathlib.Path:
    """Start a benchmark run: note its command and the machine load now (for every
    result file it writes) and return the folder its results go to (see
    `results_folder`; a bad combination of options is a usage error)."""
    global _current
    _current = Run(command_line(script, argv), load_average())
    try:
        return results_folder(out_dir, update_reference)
    except ValueError as error:
        parser.error(str(error))


def split_run_options(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """`(this script's options, the options after `--`)`: the scripts that record a
    training run pass everything after `--` on to it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def record_parser(
    doc: str | None, *, timeout_help: str, usage: str | None = None
) -> argparse.ArgumentParser:
    """The parser of a script that records a training run (description and epilog from
    its docstring) with the options every such script has: `--out-dir`,
    `--update-reference` and `--timeout`."""
    parser = argparse.ArgumentParser(
        description=(doc or "").partition("\n\n")[0],
        epilog=(doc or "").partition("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=usage,
    )
    parser.add_argument("--out-dir", default="", help="write the results here")
    parser.add_argument(
        "--update-reference",
        action="store_true",
        help="write into benchmarks/results/, replacing the committed record",
    )
    parser.add_argument("--timeout", type=float, default=3600, help=timeout_help)
    return parser


def begin_recorded_run(
    parser: argparse.ArgumentParser,
    script: str,
    own: list[str],
    extra: list[str],
    args: argparse.Namespace,
) -> pathlib.Path:
    """`begin_run` for a `record_parser` script: its command line is its own options
    then `-- extra`."""
    return begin_run(
        parser,
        script,
        [*own, *(["--", *extra] if extra else [])],
        out_dir=args.out_dir,
        update_reference=args.update_reference,
    )


def current_run() -> Run:
    """The run begun last (`begin_run`), else this process since it imported this module."""
    return _current or _IMPORTED


def fresh_folder(tag: str = "") -> pathlib.Path:
    """Create and return a new folder `benchmarks/results/runs/<UTC time>-<commit>[-tag]`
    (a suffix `-2`, `-3`, … when that name is taken)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    commit, _ = git_state()
    name = "-".join(part for part in (stamp, commit[:7] if commit != UNKNOWN else "", tag) if part)
    RUNS.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = RUNS / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free folder name under {RUNS} for {name}")


def results_folder(out_dir: str = "", update_reference: bool = False) -> pathlib.Path:
    """Where a run's results go: `out_dir` when given; benchmarks/results/ itself (the
    committed reference files) with `update_reference`; otherwise a new folder under
    benchmarks/results/runs/ (`fresh_folder`), so a run never overwrites the references
    by default."""
    if out_dir and update_reference:
        raise ValueError("give --out-dir or --update-reference, not both")
    if out_dir:
        return pathlib.Path(out_dir)
    if update_reference:
        return RESULTS
    return fresh_folder()


def load_line(start: object, end: object) -> str:
    """`machine load (1-min average): 1.93 at start, 2.10 at end, on 2 CPUs`
    (`unknown` for a load that is not a number)."""

    def shown(load: object) -> str:
        return f"{load:.2f}" if isinstance(load, int | float) else UNKNOWN

    return (
        f"machine load (1-min average): {shown(start)} at start, {shown(end)} at end, "
        f"on {os.cpu_count() or UNKNOWN} CPUs"
    )


def environment_record(run: Run | None = None) -> dict[str, object]:
    """What produced a result, as a dict for JSON files: device, backend, jax and
    jaxlib versions, Python, host, git commit and dirty flag, the command and the
    machine load (1-minute average) at the start of `run` (default: `current_run()`)
    and now, with the number of CPUs."""
    run = run or current_run()
    dev = jax.devices()[0]
    commit, dirty = git_state()
    return dict(
        device=getattr(dev, "device_kind", dev.platform),
        backend=jax.default_backend(),
        device_count=jax.device_count(),
        jax=jax.__version__,
        jaxlib=jaxlib_version(),
        python=platform.python_version(),
        host=f"{platform.machine()}, {os.cpu_count()} CPU cores",
        git_commit=commit,
        git_dirty=dirty,
        command=run.command,
        load_start=run.load_start,
        load_end=load_average(),
        cpu_count=os.cpu_count(),
    )


def environment(run: Run | None = None) -> str:
    """Device, jax version, Python, git commit (and whether tracked files had
    uncommitted changes), the command that produced a result and the machine load
    during `run` (default: `current_run()`), as markdown lines."""
    env = environment_record(run)
    return (
        f"- device: {env['device']} ({env['backend']}, {env['device_count']} device(s)); "
        f"host: {env['host']}\n"
        f"- jax {env['jax']}, jaxlib {env['jaxlib']}, Python {env['python']}\n"
        f"- git commit: {env['git_commit']}, uncommitted changes to tracked files: "
        f"{env['git_dirty']}\n"
        f"- command: `{env['command']}`\n"
        f"- {load_line(env['load_start'], env['load_end'])}\n"
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def publish(
    name: str, title: str, body: str, *, custom_name: str = "", out_dir: str = ""
) -> pathlib.Path:
    """Write a benchmark's result file and print it: `<name>.md` on GPU,
    `<name>_<backend>.md` elsewhere (unless `custom_name`), under `out_dir` (default:
    a new folder under benchmarks/results/runs/)."""
    if not custom_name:
        gpu = jax.default_backend() == "gpu"
        custom_name = name if gpu else f"{name}_{jax.default_backend()}"
    path = write_result(custom_name, title, body, out_dir)
    print()
    print(body)
    print(f"wrote {path}")
    return path


def write_result(name: str, title: str, body: str, out_dir: str = "") -> pathlib.Path:
    """Write `<out_dir>/<name>.md` (default: a new folder under benchmarks/results/runs/)
    and return its path."""
    folder = results_folder(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    path.write_text(f"# {title}\n\n{environment()}\n{body}\n")
    return path


@dataclasses.dataclass(frozen=True)
class Timing:
    """One measurement: median seconds and temporary bytes, or why it failed."""

    seconds: float | None = None
    temp: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.seconds is not None

    @property
    def time(self) -> float:
        """The median seconds (for a measurement that is `ok`)."""
        if self.seconds is None:
            raise ValueError(f"no time: the measurement failed ({self.error})")
        return self.seconds

    @property
    def memory(self) -> int:
        """The temporary bytes (-1: unknown) of a measurement that is `ok`."""
        return -1 if self.temp is None else self.temp


def short_reason(error: BaseException) -> str:
    """`OOM`, or `failed: <first line of the message>` (short, table-safe)."""
    text = str(error).strip()
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return "OOM"
    first = text.splitlines()[0] if text else type(error).__name__
    first = first.replace("|", "/").replace("`", "'")
    return "failed: " + (first[:57] + "…" if len(first) > 60 else first)


def temp_bytes(compiled) -> int:
    """Temporary (intermediate) memory of a compiled program, in bytes (-1: unknown)."""
    analysis = compiled.memory_analysis()
    return int(getattr(analysis, "temp_size_in_bytes", 0)) if analysis is not None else -1


def measure(fn, args, repeats: int) -> Timing:
    """Compile `fn` for `args` once, then time it; a failure is returned, not raised."""
    try:
        compiled = jax.jit(fn).lower(*args).compile()
        temp = temp_bytes(compiled)
        seconds = time_call(lambda: compiled(*args), repeats=repeats)
    except Exception as error:
        return Timing(error=short_reason(error))
    return Timing(seconds=seconds, temp=temp)


def fmt_ms(t: Timing | None, digits: int = 1) -> str:
    """A measurement's median in milliseconds (`–` when absent, the reason if it failed)."""
    if t is None:
        return "–"
    return t.error if t.seconds is None else f"{t.seconds * 1e3:.{digits}f}"


def fmt_mib(t: Timing | None) -> str:
    """A measurement's temporary memory in MiB (`–` when unknown)."""
    if t is None or not t.ok or t.temp is None or t.temp < 0:
        return "–"
    return f"{t.temp / 2**20:.1f}"
