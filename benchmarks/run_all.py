"""Run eqvid's whole benchmark suite and write a `README.md` of all its results.

Runs, in order, the scan kernel (`scan_speed.py`), the attention kernel
(`attention_speed.py`), training throughput (`train_throughput.py`),
generation speed (`generation_speed.py`) and the input pipeline
(`data_speed.py`), each writing its own markdown file into one folder: a new
folder under `benchmarks/results/runs/` (ignored by git), or `benchmarks/results/`
itself with `--update-reference`, which replaces the committed reference results.
Then writes `README.md` in the same folder: the device, jax version and the
command of every benchmark, one table per benchmark, and PNG plots of time
against sequence length (log scales). The full stdout of each benchmark is kept
in `logs/<benchmark>.log` beside the results, and the raw numbers in
`run_all.json`.

    python benchmarks/run_all.py                    # CPU-sized defaults: a few minutes on 2 cores
    python benchmarks/run_all.py --preset paper     # the papers' sizes, for a GPU
    python benchmarks/run_all.py --only scan attention
    python benchmarks/run_all.py --update-reference  # refresh the committed results

Plots use matplotlib (a dependency of eqvid).
"""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Literal

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_speed
import data_speed
import generation_speed
import scan_speed
import train_throughput
from _common import RESULTS, begin_run, current_run, environment, environment_record

from eqvid._cli import add_config_arguments, config_from_args

REFERENCE_NOTE = (
    "These are eqvid's committed reference results, refreshed only by "
    "`python benchmarks/run_all.py --update-reference` (or a benchmark script run with "
    "`--update-reference`). Without that flag every benchmark writes a new folder under "
    "`benchmarks/results/runs/` (ignored by git) and leaves these files alone. Every "
    "result file records the device, jax version, git commit and dirty flag, the exact "
    "command, and the machine load (1-minute average) at the start and end of its run "
    "with the number of CPUs: other work on the machine slows every number.\n\n"
)
BENCHMARKS = ("scan", "attention", "train", "generation", "data")
SCRIPTS = {
    "scan": scan_speed,
    "attention": attention_speed,
    "train": train_throughput,
    "generation": generation_speed,
    "data": data_speed,
}
TITLES = {
    "scan": "linear_scan speed",
    "attention": "attention speed",
    "train": "training throughput",
    "generation": "generation speed",
    "data": "input pipeline speed",
}


@dataclasses.dataclass(frozen=True)
class RunAllConfig:
    """Which benchmarks, at which sizes, written where."""

    preset: Literal["cpu", "paper"] = "cpu"
    """`cpu`: sizes that finish in minutes on a 2-core CPU; `paper`: the papers'
    sizes (MNIST-300 models, T up to 600, 100 → 1200 frame rollouts, attention to
    L = 16k), for a GPU."""
    only: tuple[str, ...] = BENCHMARKS
    """Benchmarks to run (scan, attention, train, generation, data)."""
    smoke: bool = False
    """Tiny sizes that only check the suite runs end to end (seconds; numbers meaningless)."""
    out_dir: str = ""
    """Folder for all results (default: a new folder under benchmarks/results/runs/,
    which git ignores)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference results."""


def benchmark_args(bench: str, preset: str, smoke: bool) -> list[str]:
    """The command-line arguments each benchmark gets from a suite preset."""
    if smoke:
        return {
            "scan": ["--sizes", "cpu-small", "--impls", "sequential", "--repeats", "1"],
            "attention": [
                "--lengths",
                "64",
                "128",
                "--head-dims",
                "16",
                "--heads",
                "2",
                "--batch",
                "1",
                "--tokens-per-frame",
                "16",
                "--impls",
                "xla",
                "--repeats",
                "1",
            ],
            "train": ["--lengths", "4", "6", "--batch", "1", "--repeats", "1"],
            "generation": [
                "--modes",
                *generation_speed.PIXEL_MODES,
                "--context",
                "2",
                "--horizons",
                "2",
                "4",
                "--batch",
                "1",
                "--repeats",
                "1",
            ],
            "data": ["--quick"],
        }[bench]
    if bench in ("train", "generation"):
        return ["--preset", preset]
    return []  # scan and attention pick their sizes from the device


class _Tee(io.TextIOBase):
    """Write to several streams at once (the console and a log file)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()


def plot(bench: str, records: list[dict], path: pathlib.Path) -> bool:
    """A log-log plot of time against sequence length, one line per series. Returns
    False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = {}
    if bench == "scan":
        xlabel, ylabel = "sequence length T", "forward+backward time (ms)"
        for r in records:
            if r.get("fwd_bwd_s"):
                series.setdefault(r["impl"], []).append((r["length"], 1e3 * r["fwd_bwd_s"]))
    elif bench == "attention":
        xlabel, ylabel = "sequence length L", "forward time (ms)"
        for r in records:
            if r.get("forward_s"):
                label = f"{r['impl']} {r['mask']} d={r['head_dim']}"
                series.setdefault(label, []).append((r["length"], 1e3 * r["forward_s"]))
    elif bench == "train":
        xlabel, ylabel = "sequence length T (frames)", "training step time (ms)"
        for r in records:
            if r.get("step_s"):
                series.setdefault(r["model"], []).append((r["length"], 1e3 * r["step_s"]))
    elif bench == "data":
        xlabel, ylabel = "frame size (pixels)", "frames/s delivered"
        for r in records:
            if r.get("frames_per_s"):
                label = f"{r['format']} {r['workers']} worker(s)"
                series.setdefault(label, []).append((r["size"], r["frames_per_s"]))
    else:
        xlabel, ylabel = "generated frames", "rollout time (s)"
        for r in records:
            if r.get("seconds"):
                series.setdefault(r["mode"], []).append((r["horizon"], r["seconds"]))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, points in sorted(series.items()):
        points.sort()
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({x for points in series.values() for x, _ in points})
    ax.set_xticks(ticks, [str(int(x)) for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{TITLES[bench]} — {jax.devices()[0].device_kind}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _table_of(markdown: str) -> str:
    """The body of a benchmark's result file, without its title and environment lines."""
    lines = markdown.splitlines()
    body = [
        line
        for line in lines[1:]
        if not line.startswith("- device:")
        and not line.startswith("- jax ")
        and not line.startswith("- command:")
        and not line.startswith("- git commit:")
        and not line.startswith("- machine load")
    ]
    return "\n".join(body).strip()


def main(argv: list[str] | None = None) -> pathlib.Path:
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "suite", RunAllConfig)
    config = config_from_args(parser.parse_args(argv), "suite", RunAllConfig())
    for bench in config.only:
        if bench not in BENCHMARKS:
            parser.error(f"unknown benchmark {bench!r}; choose from {', '.join(BENCHMARKS)}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("plots need matplotlib: pip install matplotlib")
    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    suite = current_run()  # each benchmark begins its own run; the suite's is this one
    (out / "logs").mkdir(parents=True, exist_ok=True)
    print(f"writing the results to {out}", flush=True)
    gpu = jax.default_backend() == "gpu"
    suffix = "" if gpu else f"_{jax.default_backend()}"

    sections, raw = [], {}
    for bench in config.only:
        script = SCRIPTS[bench]
        if script.__file__ is None:  # imported from a file above, so it has one
            raise RuntimeError(f"run_all: the {bench} benchmark module has no file.")
        script_file = pathlib.Path(script.__file__)
        name = script_file.stem + suffix
        shown_out = os.path.relpath(out) if out.is_absolute() else str(out)
        args = benchmark_args(bench, config.preset, config.smoke) + [
            "--out-dir",
            shown_out,
            "--name",
            name,
        ]
        command = f"python benchmarks/{script_file.name} {shlex.join(args)}"
        print(f"\n=== {command}", flush=True)
        start = time.perf_counter()
        with open(out / "logs" / f"{name}.log", "w") as log:
            log.write(f"$ {command}\n{environment(suite)}\n")
            # Each result file records its own command (`main(args)` notes it).
            with contextlib.redirect_stdout(_Tee(sys.stdout, log)):
                records = script.main(args)
        elapsed = time.perf_counter() - start
        raw[bench] = dict(command=command, seconds=elapsed, records=records)
        figure = out / f"{name}.png"
        has_plot = plot(bench, records, figure)
        table = _table_of((out / f"{name}.md").read_text())
        section = (
            f"## {TITLES[bench]}\n\n`{command}` ({elapsed:.0f} s; "
            f"[{name}.md]({name}.md), [log](logs/{name}.log))\n\n"
        )
        if has_plot:
            section += f"![{TITLES[bench]}]({figure.name})\n\n"
        sections.append(section + table + "\n")

    (out / "run_all.json").write_text(
        json.dumps(
            dict(
                **environment_record(suite),
                preset=config.preset,
                benchmarks=raw,
            ),
            indent=1,
            default=str,
        )
    )
    readme = out / "README.md"
    readme.write_text(
        "# eqvid benchmark results\n\n"
        f"Written by `{suite.command}`.\n\n"
        f"{environment(suite)}\n"
        + (REFERENCE_NOTE if out.resolve() == RESULTS else "")
        + "Every number comes from the run recorded here; ratios compare implementations "
        "measured side by side in the same run. Each section gives the exact command, "
        "its own result file and the full log.\n\n" + "\n".join(sections)
    )
    print(f"\nwrote {readme}")
    return readme


if __name__ == "__main__":
    main()
