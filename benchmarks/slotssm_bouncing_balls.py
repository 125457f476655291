"""Train SlotSSM's small preset on bouncing balls and record what it learned: held-out
prediction against copying the last frame, and whether its slots separate the balls.

Two runs of the README's command, `python -m eqvid.train --model slotssm --preset
small --dataset bouncing_balls …`, each in its own process and timed whole: `--task
predict` (frame t + 1 from the slots of frames ≤ t; the end-of-run report rolls out
10 frames from 10 held-out context frames, per frame against copy-last-frame,
mean-context-frame and empty-frame) and `--task reconstruct` (the official example's
task). For both, the slots' masks over held-out videos are scored with FG-ARI against
the true balls (the balls' positions come from the generator; 1 = every ball its own
slot, 0 = chance). Writes, into a new folder under `benchmarks/results/runs/` (with
`--update-reference`: into `benchmarks/results/`):

- `slotssm_bouncing_balls_cpu.md` (`slotssm_bouncing_balls.md` on GPU hosts): device,
  jax, git commit, the commands, wall times and machine load, the prediction report's
  per-frame tables, FG-ARI, and whether the prediction beats copy-last-frame at every
  predicted frame (the issue's target);
- `…_<task>_strip.png` (context | prediction | truth), `…_<task>_slots.png` (frames,
  segmentation, each slot's part), `…_<task>_curve.png`, `…_<task>_eval.json`,
  `…_<task>_metrics.csv` and `logs/`.

    python benchmarks/slotssm_bouncing_balls.py                       # about 30 minutes on 2 cores
    python benchmarks/slotssm_bouncing_balls.py --tasks predict -- --steps 500
"""

import json
import os
import pathlib
import shlex
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import begin_recorded_run, environment, record_parser, split_run_options
from demo_mmnist import LoadSampler, plot_curve, run_example

TASKS = ("predict", "reconstruct")
RECIPE = (
    *("--model", "slotssm", "--preset", "small", "--dataset", "bouncing_balls"),
    *("--frame-size", "32", "--num-balls", "3", "--seq-len", "12", "--broadcast-hidden", "16"),
    *("--steps", "1500", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "100"),
    *("--log-every", "20", "--sample-every", "500", "--checkpoint-every", "500"),
)
"""The training command's options (then `--task`, then any given after `--`)."""
ARI_VIDEOS = 64
"""Held-out videos FG-ARI is averaged over."""


def ball_segmentation(source, index: int) -> np.ndarray:
    """The true segmentation `(time, height, width)` of video `index` of a
    `BouncingBalls` source: 0 the background, `k + 1` where ball `k` is drawn on top
    (a pixel belongs to a ball whose centre is within its radius; later balls over
    earlier ones, as drawn)."""
    size = source.frame_size
    centres = source.trajectories(index) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    seg = np.zeros((source.seq_len, size, size), np.int32)
    for t in range(source.seq_len):
        for k in range(source.num_balls):
            inside = np.hypot(yy - centres[t, k, 0], xx - centres[t, k, 1]) <= source.radius * size
            seg[t][inside] = k + 1
    return seg


def slot_ari(run_dir: pathlib.Path, task: str, num_videos: int = ARI_VIDEOS) -> float:
    """Mean FG-ARI of the trained model's slot masks on `num_videos` held-out videos:
    the masks of the slots of frame t against the balls of the frame they decode
    (t for `reconstruct`, t + 1 for `predict`)."""
    from eqvid.evaluate import load_trained_run
    from eqvid.evaluate._trained_run import data_config_from_run
    from eqvid.metrics import foreground_ari
    from eqvid.models import AbstractObjectCentricVideoModel

    run = load_trained_run(run_dir, report=lambda _: None)
    model = run.model
    assert isinstance(model, AbstractObjectCentricVideoModel)
    data = data_config_from_run(run.config)
    _, test = data.splits(test_sequences=num_videos)
    videos = np.stack([test[i]["video"] for i in range(num_videos)])
    seg = np.stack([ball_segmentation(test, i) for i in range(num_videos)])
    masks = jax.jit(jax.vmap(model.object_masks))(jnp.asarray(videos, jnp.float32) / 127.5 - 1)
    if task == "predict":
        masks, seg = masks[:, :-1], seg[:, 1:]
    scores = foreground_ari(jnp.asarray(seg), masks, num_objects=data.num_balls)
    return float(jnp.mean(scores))


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_run_options(argv)
    parser = record_parser(
        __doc__,
        timeout_help="stop a run after this many seconds",
        usage="%(prog)s [-h] [--tasks T ...] [--out-dir DIR | --update-reference] [--timeout S] [-- TRAIN OPTIONS]",
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    args = parser.parse_args(argv)
    folder = begin_recorded_run(parser, str(pathlib.Path(__file__)), argv, extra, args)
    backend = jax.default_backend()
    name = "slotssm_bouncing_balls" + ("" if backend == "gpu" else f"_{backend}")
    folder.mkdir(parents=True, exist_ok=True)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    sections, summary = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            options = [*RECIPE, "--task", task, *extra]
            command = "python -m eqvid.train " + shlex.join(options)
            print(f"training ({task}): `{command}` ...", flush=True)
            run_dir = pathlib.Path(tmp) / task
            log = logs / f"{name}_{task}.log"
            with LoadSampler() as load:
                code, wall = run_example(
                    options, run_dir, log, args.timeout, program=("-m", "eqvid.train")
                )
            if code != 0:
                print(log.read_text()[-4000:])
                print(f"the {task} run exited with {code}; see {log}", file=sys.stderr)
                return code
            prefix = f"{name}_{task}"
            samples = run_dir / "samples"
            shutil.copy(sorted(samples.glob("step_*[0-9].png"))[-1], folder / f"{prefix}_strip.png")
            shutil.copy(
                sorted(samples.glob("step_*_slots.png"))[-1], folder / f"{prefix}_slots.png"
            )
            shutil.copy(run_dir / "eval.json", folder / f"{prefix}_eval.json")
            shutil.copy(run_dir / "metrics.csv", folder / f"{prefix}_metrics.csv")
            plot_curve(
                run_dir / "metrics.csv",
                folder / f"{prefix}_curve.png",
                ylabel="mean squared error in [-1, 1] (log)",
                title=f"training loss ({task})",
            )
            ari = slot_ari(run_dir, task)
            report = json.loads((run_dir / "eval.json").read_text())
            model = report["mse_per_frame"]["model"]
            copy = report["mse_per_frame"]["copy_last"]
            wins = [f for f, m, c in zip(report["frames"], model, copy) if m < c]
            minutes, seconds = divmod(round(wall), 60)
            summary.append(
                f"| {task} | {minutes} min {seconds:02d} s | {np.mean(model):.5f} | "
                f"{np.mean(copy):.5f} | {len(wins)} of {len(model)} | {ari:.3f} |"
            )
            target = ""
            if task == "predict":
                met = len(wins) == len(model)
                target = (
                    "Target (held-out prediction MSE below copy-last-frame at every predicted "
                    f"frame): **{'met' if met else 'not met'}**.\n\n"
                )
            sections.append(
                f"## `--task {task}`\n\n"
                f"- command: `{command}`\n- {load.summary()}\n- FG-ARI of the slots on "
                f"{ARI_VIDEOS} held-out videos: **{ari:.3f}**\n\n{target}"
                f"Samples at the last step (context | rollout | truth):\n\n"
                f"![strip]({prefix}_strip.png)\n\n"
                f"Slots (per video: frames, segmentation, each slot's part):\n\n"
                f"![slots]({prefix}_slots.png)\n\n![curve]({prefix}_curve.png)\n\n"
                f"### The report (`eval.md`)\n\n{(run_dir / 'eval.md').read_text().strip()}\n\n"
            )
    body = (
        f"{environment()}"
        "- each run is the README's command in its own process (this script adds "
        "`--no-progress` and a temporary `--run-dir`), timed whole: start-up, "
        "compilation, training, samples, checkpoints, the end-of-run report\n"
        "- FG-ARI: each pixel to its largest slot mask, against the true balls, over the "
        "balls' pixels of all frames of a video (1: every ball its own slot; 0: chance)"
        "\n\n"
        "| task | wall | mean MSE (model) | mean MSE (copy last) | frames where the model "
        "beats copy-last | FG-ARI |\n|---|---|---|---|---|---|\n"
        + "\n".join(summary)
        + "\n\n"
        + "".join(sections)
    )
    path = folder / f"{name}.md"
    path.write_text(f"# SlotSSM on bouncing balls, on this machine\n\n{body}")
    print(body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
