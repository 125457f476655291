"""Shared helpers for the benchmark scripts: timing, environment, result files."""

import dataclasses
import pathlib
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


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


def environment() -> str:
    """Device, jax version, Python and the command that produced a result."""
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return (
        f"- device: {kind} ({jax.default_backend()}, {jax.device_count()} device(s)); "
        f"host: {platform.machine()}, {__import__('os').cpu_count()} CPU cores\n"
        f"- jax {jax.__version__}, Python {platform.python_version()}\n"
        f"- command: `{command}`\n"
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def publish(
    name: str, title: str, body: str, *, custom_name: str = "", out_dir: str = ""
) -> pathlib.Path:
    """Write a benchmark's result file and print it: `<name>.md` on GPU,
    `<name>_<backend>.md` elsewhere (unless `custom_name`), under `out_dir` or
    benchmarks/results."""
    if not custom_name:
        gpu = jax.default_backend() == "gpu"
        custom_name = name if gpu else f"{name}_{jax.default_backend()}"
    path = write_result(custom_name, title, body, out_dir)
    print()
    print(body)
    print(f"wrote {path}")
    return path


def write_result(name: str, title: str, body: str, out_dir: str = "") -> pathlib.Path:
    """Write `<out_dir or benchmarks/results>/<name>.md` and return its path."""
    folder = pathlib.Path(out_dir) if out_dir else RESULTS
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
