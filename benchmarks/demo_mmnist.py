"""Record the README's demo: `python examples/train_mmnist.py` from start to finish.

Runs the example as a user would (its own process, its defaults, plus any options
given after `--`), timing the whole command (start-up, compilation, training,
samples, checkpoints, the final held-out report) and sampling the machine load every
few seconds while it runs. Then writes, into a new folder under
`benchmarks/results/runs/` (with `--update-reference`: into `benchmarks/results/`,
replacing the committed record):

- `demo_mmnist_cpu.md` (`demo_mmnist.md` on GPU hosts): device, jax, git commit,
  the exact command, wall time, machine load, the report's per-frame MSE and SSIM
  tables beside the baselines, and where the model loses;
- `demo_mmnist_cpu_strip.png`: the last sample strip (context | prediction | truth);
- `demo_mmnist_cpu_curve.png`: the training loss and its terms against the step;
- `demo_mmnist_cpu_eval.json`, `demo_mmnist_cpu_metrics.csv`: the raw numbers;
- `logs/demo_mmnist_cpu.log`: everything the example printed.

    python benchmarks/demo_mmnist.py                      # the README's command (about 8 minutes on 2 cores)
    python benchmarks/demo_mmnist.py -- --steps 1500      # any option of the example after --
    python benchmarks/demo_mmnist.py --update-reference   # refresh the committed record
"""

import argparse
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, begin_run, environment, load_average

EXAMPLE = REPO / "examples" / "train_mmnist.py"


class LoadSampler:
    """The 1-minute load average every `every` seconds, in a background thread."""

    def __init__(self, every: float = 5.0):
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            load = load_average()
            if load is not None:
                self.samples.append(load)
            self._stop.wait(self.every)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "machine load: unknown (no load average on this OS)"
        s = self.samples
        return (
            f"machine load while it ran (1-min average, sampled every {self.every:g} s): "
            f"mean {sum(s) / len(s):.2f}, max {max(s):.2f}, on {os.cpu_count()} CPUs "
            "(the example uses them all: a load near the CPU count means nothing else ran)"
        )


def run_example(args: list[str], run_dir: pathlib.Path, log: pathlib.Path, timeout: float):
    """Run the example in its own process group; return (exit code, wall seconds)."""
    command = [sys.executable, str(EXAMPLE), "--no-progress", "--run-dir", str(run_dir), *args]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except BaseException:  # timeout, Ctrl-C: never leave the run behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return code, time.perf_counter() - start


def plot_curve(metrics_csv: pathlib.Path, path: pathlib.Path) -> None:
    """The loss and each loss term against the step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = metrics_csv.read_text().strip().splitlines()
    header = rows[0].split(",")
    data = np.array([[float(v) for v in r.split(",")] for r in rows[1:]])
    step = data[:, header.index("step")]
    skip = {"step", "lr", "grad_norm", "frames_per_s", "elapsed_s"}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, name in enumerate(header):
        if name not in skip:
            ax.plot(step, data[:, i], lw=2 if name == "loss" else 1, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("per-row error, summed over width (log)")
    ax.set_title("training loss (teacher forcing)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    example_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, example_args = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").partition("\n\n")[0],
        epilog=(__doc__ or "").partition("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [-h] [--out-dir DIR | --update-reference] [--timeout S] [-- EXAMPLE OPTIONS]",
    )
    parser.add_argument("--out-dir", default="", help="write the results here")
    parser.add_argument(
        "--update-reference",
        action="store_true",
        help="write into benchmarks/results/, replacing the committed record",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="stop the example after this many seconds"
    )
    parser.add_argument(
        "--keep-run", default="", help="also keep the example's whole run folder here"
    )
    args = parser.parse_args(argv)
    folder = begin_run(
        parser,
        str(pathlib.Path(__file__)),
        [*argv, *(["--", *example_args] if example_args else [])],
        out_dir=args.out_dir,
        update_reference=args.update_reference,
    )
    name = (
        "demo_mmnist" if jax.default_backend() == "gpu" else f"demo_mmnist_{jax.default_backend()}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    log = folder / "logs" / f"{name}.log"
    example = "python examples/train_mmnist.py" + "".join(
        " " + shlex.quote(a) for a in example_args
    )
    print(f"running `{example}` (log: {log}) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = pathlib.Path(tmp) / "run"
        with LoadSampler() as load:
            code, wall = run_example(example_args, run_dir, log, args.timeout)
        if code != 0:
            print(log.read_text()[-4000:])
            print(f"the example exited with {code}; see {log}", file=sys.stderr)
            return code
        samples = sorted((run_dir / "samples").glob("step_*.png"))
        shutil.copy(samples[-1], folder / f"{name}_strip.png")
        shutil.copy(run_dir / "eval.json", folder / f"{name}_eval.json")
        shutil.copy(run_dir / "metrics.csv", folder / f"{name}_metrics.csv")
        plot_curve(run_dir / "metrics.csv", folder / f"{name}_curve.png")
        report = (run_dir / "eval.md").read_text().strip()
        if args.keep_run:
            shutil.copytree(run_dir, args.keep_run, dirs_exist_ok=True)
    minutes, seconds = divmod(round(wall), 60)
    body = (
        f"{environment()}"
        f"- the demo: `{example}` (the README's command; this script adds `--no-progress` "
        "and a temporary `--run-dir`)\n"
        f"- wall time of the whole command (start-up, compilation, training, samples, "
        f"checkpoints, TensorBoard, the final report), install excluded: "
        f"**{minutes} min {seconds:02d} s**\n"
        f"- {load.summary()}\n\n"
        f"## Samples at the last step\n\n"
        f"Held-out videos; per row: the 10 context frames | the model's rollout | the "
        f"truth.\n\n![sample strip]({name}_strip.png)\n\n"
        f"## Training curve\n\n![training loss]({name}_curve.png)\n\n"
        f"## The report (`eval.md`)\n\n{report}\n"
    )
    path = folder / f"{name}.md"
    path.write_text(f"# The demo: `python examples/train_mmnist.py` on this machine\n\n{body}")
    print(body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
