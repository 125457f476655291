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
- `demo_mmnist_cpu_closeup.png`: the same held-out videos, enlarged: the last context
  frame and predicted frames 1, 2, 3 and 10, each above the true frame;
- `demo_mmnist_cpu_curve.png`: the training loss and its terms against the step;
- `demo_mmnist_cpu_eval.json`, `demo_mmnist_cpu_metrics.csv`: the raw numbers;
- `logs/demo_mmnist_cpu.log`: everything the example printed.

    python benchmarks/demo_mmnist.py                      # the README's command (about 9 minutes on 2 cores)
    python benchmarks/demo_mmnist.py -- --steps 1500      # any option of the example after --
    python benchmarks/demo_mmnist.py --update-reference   # refresh the committed record
"""

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
from _common import (
    REPO,
    begin_recorded_run,
    environment,
    load_average,
    record_parser,
    split_run_options,
)

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


def run_example(
    args: list[str],
    run_dir: pathlib.Path | None,
    log: pathlib.Path,
    timeout: float,
    program: tuple[str, ...] = (str(EXAMPLE),),
):
    """Run the example (or `program`: a script, or `-m module`) in its own process
    group, with `--no-progress` and `--run-dir run_dir` (none: no run folder, e.g. for
    `-m eqvid.data.encode`); return (exit code, wall seconds)."""
    folder = [] if run_dir is None else ["--run-dir", str(run_dir)]
    command = [sys.executable, *program, "--no-progress", *folder, *args]
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


def plot_curve(
    metrics_csv: pathlib.Path,
    path: pathlib.Path,
    *,
    terms: tuple[str, ...] | None = None,
    ylabel: str = "per-row error, summed over width (log)",
    title: str = "training loss (teacher forcing)",
) -> None:
    """The loss and each loss term (or those in `terms`) against the step (log
    scale)."""
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
        if name not in skip and (terms is None or name in terms):
            ax.plot(step, data[:, i], lw=2 if name == "loss" else 1, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CLOSEUP_FRAMES = (1, 2, 3, 10)
"""Predicted frames shown in the close-up (1 = the first after the context)."""


def save_closeup(run_dir: pathlib.Path, path: pathlib.Path, scale: int = 4) -> None:
    """The trained model's rollout of the sample strip's held-out videos, enlarged
    `scale` times, grey: per video a row of the model's frames above a row of the
    truth (the last context frame first, then `CLOSEUP_FRAMES`)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from eqvid.data import evaluation_videos
    from eqvid.evaluate import load_trained_run
    from eqvid.evaluate._trained_run import data_config_from_run
    from eqvid.models import AbstractVideoModel, rollout
    from eqvid.train._samples import to_uint8

    run = load_trained_run(run_dir, report=lambda _: None)
    rc = run.config["run"]
    context, horizon = rc["eval_context"], rc["eval_horizon"]
    data = data_config_from_run(run.config)
    videos, actions = next(
        evaluation_videos(data, num_videos=4, length=context + horizon, batch_size=4)
    )
    real = videos.astype(np.float32) / 127.5 - 1.0
    assert isinstance(run.model, AbstractVideoModel)
    pred = np.asarray(
        rollout(run.model, real[:, :context], horizon, key=jax.random.key(0), actions=actions)
    )
    shown = [f for f in CLOSEUP_FRAMES if f <= horizon]

    def grey(frame: np.ndarray) -> np.ndarray:
        return np.kron(to_uint8(frame)[..., 0], np.ones((scale, scale), np.uint8))

    size, gap, label_w, head = real.shape[2] * scale, 6, 58, 16
    cols = 1 + len(shown)
    width = label_w + cols * (size + gap)
    height = head + len(real) * (2 * size + 3 * gap)
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    titles = [f"frame {context}"] + [f"frame {context + f}" for f in shown]
    for c, title in enumerate(titles):
        draw.text((label_w + c * (size + gap), 1), title, fill=0)
    y = head
    for v in range(len(real)):
        for name, source in (("model", pred), ("truth", real[:, context:])):
            draw.text((2, y + size // 2 - 5), name, fill=0)
            frames = [real[v, context - 1]] + [source[v, f - 1] for f in shown]
            for c, frame in enumerate(frames):
                canvas.paste(Image.fromarray(grey(frame)), (label_w + c * (size + gap), y))
            y += size + gap
        y += gap
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    argv, example_args = split_run_options(argv)
    parser = record_parser(
        __doc__,
        timeout_help="stop the example after this many seconds",
        usage="%(prog)s [-h] [--out-dir DIR | --update-reference] [--timeout S] [-- EXAMPLE OPTIONS]",
    )
    parser.add_argument(
        "--keep-run", default="", help="also keep the example's whole run folder here"
    )
    args = parser.parse_args(argv)
    folder = begin_recorded_run(parser, str(pathlib.Path(__file__)), argv, example_args, args)
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
        save_closeup(run_dir, folder / f"{name}_closeup.png")
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
        f"Enlarged (the same videos, grey): the last context frame, then predicted frames "
        f"{', '.join(str(f) for f in CLOSEUP_FRAMES)}, the model above the truth.\n\n"
        f"![close-up]({name}_closeup.png)\n\n"
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
