"""Train the small 2D VQGAN on Moving MNIST and record it: reconstruction quality on
held-out frames against the time it took, and the tokenizer's encoding throughput.

Runs `python -m eqvid.train --model vqgan2d` with the recipe below (plus any options
given after `--`) in its own process, timing the whole command and sampling the
machine load; then loads the trained run and times `encode_videos` and
`decode_codes` on held-out frames. Writes, into a new folder under
`benchmarks/results/runs/` (with `--update-reference`: into `benchmarks/results/`):

- `tokenizer_mmnist_cpu.md` (`tokenizer_mmnist.md` on GPU hosts): device, jax, git
  commit, the exact command, wall time, machine load, the reconstruction report
  (PSNR, SSIM, codebook use) against the target (PSNR ≥ 25 dB within 10 minutes on
  a 2-core CPU), encoding and decoding throughput;
- `tokenizer_mmnist_cpu_strip.png`: held-out frames above their reconstructions;
- `tokenizer_mmnist_cpu_curve.png`: the reconstruction and quantiser losses against
  the step;
- `tokenizer_mmnist_cpu_eval.json`, `tokenizer_mmnist_cpu_metrics.csv`: raw numbers;
- `logs/tokenizer_mmnist_cpu.log`: everything the run printed.

    python benchmarks/tokenizer_mmnist.py                      # the recipe (about 7 minutes on 2 cores)
    python benchmarks/tokenizer_mmnist.py -- --steps 100       # any option of the run after --
    python benchmarks/tokenizer_mmnist.py --update-reference   # refresh the committed record
"""

import os
import pathlib
import shlex
import shutil
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import begin_recorded_run, environment, record_parser, split_run_options
from demo_mmnist import LoadSampler, plot_curve, run_example

RECIPE = shlex.split(
    "--model vqgan2d --preset small --dataset moving_mnist --frame-size 64 --seq-len 4 "
    "--steps 500 --batch-size 8 --lr 1e-3 --warmup-steps 20 --log-every 25 "
    "--sample-every 250 --checkpoint-every 0 --eval-sequences 128"
)
"""The run: the `small` preset (EMA codebook with dead-code restart, 2 random frames
of each of 8 videos per step) on 64×64 Moving MNIST."""

TARGET_PSNR = 25.0
TARGET_MINUTES = 10.0


def throughput(run_dir: pathlib.Path, frames: int = 256, repeats: int = 3) -> dict[str, float]:
    """Frames per second of `encode_videos` and `decode_codes` (jitted, warm) on
    held-out frames of the trained run, `frames` at a time."""
    import numpy as np

    from eqvid.data import evaluation_videos
    from eqvid.evaluate import load_trained_run
    from eqvid.evaluate._trained_run import data_config_from_run
    from eqvid.models import AbstractVideoTokenizer, decode_codes, encode_videos

    run = load_trained_run(run_dir, report=lambda _: None)
    model = run.model
    assert isinstance(model, AbstractVideoTokenizer)
    data = data_config_from_run(run.config)
    videos, _ = next(evaluation_videos(data, num_videos=frames, length=1, batch_size=frames))
    x = videos.astype(np.float32) / 127.5 - 1.0
    codes = jax.block_until_ready(encode_videos(model, x))
    jax.block_until_ready(decode_codes(model, codes))
    out = {}
    for name, fn in (
        ("encode", lambda: encode_videos(model, x)),
        ("decode", lambda: decode_codes(model, codes)),
    ):
        start = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(fn())
        out[name] = frames * repeats / (time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_run_options(argv)
    parser = record_parser(
        __doc__,
        timeout_help="stop the run after this many seconds",
        usage="%(prog)s [-h] [--out-dir DIR | --update-reference] [--timeout S] [--throughput-frames N] [-- RUN OPTIONS]",
    )
    parser.add_argument(
        "--throughput-frames",
        type=int,
        default=256,
        help="frames per encode/decode call when measuring throughput (default: 256)",
    )
    args = parser.parse_args(argv)
    folder = begin_recorded_run(parser, str(pathlib.Path(__file__)), argv, extra, args)
    backend = jax.default_backend()
    name = "tokenizer_mmnist" if backend == "gpu" else f"tokenizer_mmnist_{backend}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    log = folder / "logs" / f"{name}.log"
    command = "python -m eqvid.train " + " ".join(shlex.quote(a) for a in [*RECIPE, *extra])
    print(f"running `{command}` (log: {log}) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = pathlib.Path(tmp) / "run"
        with LoadSampler() as load:
            code, wall = run_example(
                [*RECIPE, *extra], run_dir, log, args.timeout, program=("-m", "eqvid.train")
            )
        if code != 0:
            print(log.read_text()[-4000:])
            print(f"the run exited with {code}; see {log}", file=sys.stderr)
            return code
        samples = sorted((run_dir / "samples").glob("step_*.png"))
        shutil.copy(samples[-1], folder / f"{name}_strip.png")
        shutil.copy(run_dir / "eval.json", folder / f"{name}_eval.json")
        shutil.copy(run_dir / "metrics.csv", folder / f"{name}_metrics.csv")
        plot_curve(
            run_dir / "metrics.csv",
            folder / f"{name}_curve.png",
            terms=("loss", "rec_loss", "quant_loss", "commitment_loss", "disc_loss"),
            ylabel="loss term (log)",
            title="VQGAN training: reconstruction (L1) and quantiser losses",
        )
        report = (run_dir / "eval.md").read_text().strip()
        import json

        psnr = json.loads((run_dir / "eval.json").read_text())["psnr"]
        speed = throughput(run_dir, frames=args.throughput_frames)
    minutes, seconds = divmod(round(wall), 60)
    met = psnr >= TARGET_PSNR and wall <= 60 * TARGET_MINUTES
    verdict = (
        f"**{'met' if met else 'not met'}**: held-out PSNR {psnr:.2f} dB "
        f"(target ≥ {TARGET_PSNR:g} dB) in {minutes} min {seconds:02d} s "
        f"(target ≤ {TARGET_MINUTES:g} min)"
    )
    body = (
        f"{environment()}"
        f"- the run: `{command}` (this script adds `--no-progress` and a temporary "
        "`--run-dir`)\n"
        f"- wall time of the whole command (start-up, compilation, training, samples, "
        f"the final report), install excluded: **{minutes} min {seconds:02d} s**\n"
        f"- {load.summary()}\n"
        f"- target: {verdict}\n"
        f"- throughput of the trained tokenizer on held-out frames (jitted, "
        f"{args.throughput_frames} frames per call, warm): encode **{speed['encode']:.0f} frames/s**, decode "
        f"**{speed['decode']:.0f} frames/s**\n\n"
        f"## Held-out frames and their reconstructions at the last step\n\n"
        f"![reconstructions]({name}_strip.png)\n\n"
        f"## Training curve\n\n![training losses]({name}_curve.png)\n\n"
        f"## The report (`eval.md`)\n\n{report}\n"
    )
    path = folder / f"{name}.md"
    path.write_text(f"# The 2D VQGAN tokenizer on Moving MNIST, on this machine\n\n{body}")
    print(body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
