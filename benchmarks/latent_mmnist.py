"""Train the latent models (TECO, TECO-ConvS5, …) on Moving MNIST codes and record how
their held-out rollouts compare with copying the last frame.

The whole two-stage chain, each stage through its command: the small 2D VQGAN (the
recipe of `tokenizer_mmnist.py`, unless `--tokenizer` names a trained one), the
dataset encoded once (`python -m eqvid.data.encode`), then each model trained on the
codes (`python -m eqvid.train --model M --preset small --dataset codes`) in its own
process, timed whole. The end-of-run report decodes the rollouts to frames and scores
them per frame (MSE, SSIM) against copy-last-frame, mean-context-frame and empty-frame.
Writes, into a new folder under `benchmarks/results/runs/` (with `--update-reference`:
into `benchmarks/results/`):

- `latent_mmnist_cpu.md` (`latent_mmnist.md` on GPU hosts): device, jax, git commit,
  the commands, wall times, and per model the mean MSE against copy-last-frame and the
  frames where the model wins (the target: every model beats copy-last-frame);
- `latent_mmnist_cpu_<model>_strip.png`: a held-out rollout of each model;
- `latent_mmnist_cpu_<model>_eval.json` and `logs/`: raw numbers and everything printed.

    python benchmarks/latent_mmnist.py                                    # about 25 minutes on 2 cores
    python benchmarks/latent_mmnist.py --tokenizer runs/vqgan2d-moving-mnist --steps 300
    python benchmarks/latent_mmnist.py --models teco -- --lr 5e-4         # options after -- go to each run
"""

import json
import os
import pathlib
import shlex
import shutil
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import begin_recorded_run, environment, record_parser, split_run_options
from demo_mmnist import LoadSampler, run_example
from tokenizer_mmnist import RECIPE as TOKENIZER_RECIPE

MODELS = ("teco", "teco-convs5")
FRAME_SIZE = 64
SEQ_LEN = 20
CONTEXT, HORIZON = 10, 10


def train_recipe(model: str, codes: pathlib.Path, steps: int) -> list[str]:
    """The training command's options for `model` on the encoded codes."""
    return [
        *("--model", model, "--preset", "small", "--dataset", "codes", "--root", str(codes)),
        *("--seq-len", str(SEQ_LEN), "--steps", str(steps), "--batch-size", "8"),
        *("--lr", "1e-3", "--warmup-steps", "50", "--log-every", "50"),
        *("--sample-every", str(steps), "--checkpoint-every", "0", "--eval-sequences", "128"),
        *("--eval-context", str(CONTEXT), "--eval-horizon", str(HORIZON), "--no-tensorboard"),
    ]


def summary(report: dict) -> tuple[float, float, list[int]]:
    """(model mean MSE, copy-last mean MSE, frames where the model's MSE is lower)."""
    mse = report["mse_per_frame"]
    model, copy = mse["model"], mse["copy_last"]
    wins = [i + 1 for i, (m, c) in enumerate(zip(model, copy)) if m < c]
    return sum(model) / len(model), sum(copy) / len(copy), wins


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_run_options(argv)
    parser = record_parser(__doc__, timeout_help="stop each run after this many seconds")
    parser.add_argument(
        "--tokenizer", default="", help="a trained tokenizer (folder or run); default: train one"
    )
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), help=f"models to train (default: {MODELS})"
    )
    parser.add_argument("--steps", type=int, default=600, help="training steps per model")
    parser.add_argument(
        "--train-sequences", type=int, default=2000, help="Moving MNIST videos encoded for training"
    )
    args = parser.parse_args(argv)
    folder = begin_recorded_run(parser, str(pathlib.Path(__file__)), argv, extra, args)
    backend = jax.default_backend()
    name = "latent_mmnist" if backend == "gpu" else f"latent_mmnist_{backend}"
    folder.mkdir(parents=True, exist_ok=True)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    rows, commands = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        tokenizer = args.tokenizer
        if not tokenizer:
            tokenizer = str(work / "tokenizer")
            recipe = [*TOKENIZER_RECIPE, "--eval-sequences", "16"]
            commands.append("python -m eqvid.train " + shlex.join(recipe))
            print(f"training the tokenizer: `{commands[-1]}` ...", flush=True)
            code, wall = run_example(
                recipe, pathlib.Path(tokenizer), logs / "tokenizer.log", args.timeout,
                program=("-m", "eqvid.train"),
            )  # fmt: skip
            if code != 0:
                print((logs / "tokenizer.log").read_text()[-3000:])
                return code
            rows.append(("tokenizer (vqgan2d small)", wall, None))
        codes = work / "codes"
        encode = [
            *("--tokenizer", tokenizer, "--dataset", "moving_mnist"),
            *("--frame-size", str(FRAME_SIZE), "--seq-len", str(SEQ_LEN)),
            *("--train-sequences", str(args.train_sequences), "--test-sequences", "128"),
            *("--out", str(codes)),
        ]
        commands.append("python -m eqvid.data.encode --no-progress " + shlex.join(encode))
        print(f"encoding: `{commands[-1]}` ...", flush=True)
        code, wall = run_example(
            encode, None, logs / "encode.log", args.timeout, program=("-m", "eqvid.data.encode")
        )
        if code != 0:
            print((logs / "encode.log").read_text()[-3000:])
            return code
        rows.append(("encode", wall, None))
        for model in args.models:
            options = [*train_recipe(model, codes, args.steps), *extra]
            commands.append("python -m eqvid.train " + shlex.join(options))
            print(f"training {model}: `{commands[-1]}` ...", flush=True)
            run_dir = work / model
            with LoadSampler() as load:
                code, wall = run_example(
                    options, run_dir, logs / f"{model}.log", args.timeout,
                    program=("-m", "eqvid.train"),
                )  # fmt: skip
            if code != 0:
                print((logs / f"{model}.log").read_text()[-3000:])
                return code
            report = json.loads((run_dir / "eval.json").read_text())
            shutil.copy(run_dir / "eval.json", folder / f"{name}_{model}_eval.json")
            strips = sorted((run_dir / "samples").glob("step_*.png"))
            if strips:
                shutil.copy(strips[-1], folder / f"{name}_{model}_strip.png")
            rows.append((model, wall, (summary(report), load.summary())))
    lines = [
        "| stage | wall | mean MSE (model) | mean MSE (copy last) | frames where the model wins |",
        "|---|---|---|---|---|",
    ]
    met = True
    for stage, wall, result in rows:
        minutes, seconds = divmod(round(wall), 60)
        if result is None:
            lines.append(f"| {stage} | {minutes} min {seconds:02d} s | | | |")
            continue
        (mse, copy, wins), _ = result
        met = met and len(wins) == HORIZON
        won = "all" if len(wins) == HORIZON else (", ".join(map(str, wins)) or "none")
        lines.append(
            f"| {stage} | {minutes} min {seconds:02d} s | {mse:.5f} | {copy:.5f} | {won} of {HORIZON} |"
        )
    loads = [f"- {stage}: {result[1]}" for stage, _, result in rows if result is not None]
    body = (
        f"{environment()}"
        + "- commands (each in its own process; this script adds `--no-progress` and a "
        "temporary `--run-dir` / `--out`):\n"
        + "".join(f"  - `{c}`\n" for c in commands)
        + f"- {CONTEXT} context frames → {HORIZON} generated, 128 held-out videos, decoded "
        "by the tokenizer and scored on pixels in [0, 1]\n"
        + f"- target (every model beats copying the last frame at every generated frame): "
        f"**{'met' if met else 'not met'}**\n"
        + "- machine load during each run:\n"
        + "\n".join(loads)
        + "\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "".join(
            f"## {stage}\n\n![{stage}]({name}_{stage}_strip.png)\n\n"
            for stage, _, result in rows
            if result is not None
        )
    )
    path = folder / f"{name}.md"
    path.write_text(f"# Latent models on Moving MNIST codes, on this machine\n\n{body}")
    print(body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
