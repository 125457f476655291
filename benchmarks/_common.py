"""Shared helpers for the benchmark scripts: timing, environment, result files."""

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


def write_result(name: str, title: str, body: str, out_dir: str = "") -> pathlib.Path:
    """Write `<out_dir or benchmarks/results>/<name>.md` and return its path."""
    folder = pathlib.Path(out_dir) if out_dir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    path.write_text(f"# {title}\n\n{environment()}\n{body}\n")
    return path
