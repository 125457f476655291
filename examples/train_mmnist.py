"""Train a video model (ConvS5 by default; ConvLSTM or Transformer) on Moving MNIST or any eqvid dataset.

With no arguments this trains the `demo` preset for 3600 steps of 4 videos on 48x48
Moving MNIST (two digits; the papers use 64x64, `--frame-size 64`), about 8 minutes
on a 2-core CPU, and writes everything to `runs/convs5-mmnist/`: metrics.csv, sample
videos (samples/*.png, *.gif: context | prediction | ground truth), Orbax
checkpoints, and eval.md — per-frame MSE and SSIM of a 10-frame rollout from 10
context frames on held-out videos, next to copying the last frame, repeating the
mean context frame and predicting an empty frame, and where any of them does
better.

    python examples/train_mmnist.py                        # demo preset, CPU
    python examples/train_mmnist.py --preset mnist-600 --steps 300000 --lr 5e-4 \\
        --mnist-path data/train-images-idx3-ubyte.gz --seq-len 600
    python examples/train_mmnist.py --resume               # continue a run
    python examples/train_mmnist.py --model convlstm --run-dir runs/convlstm  # a baseline
    python examples/train_mmnist.py --model transformer --help  # the Transformer's options
    python examples/train_mmnist.py --dataset teco --root data/dmlab --seq-len 300 \\
        --action-dim 6 --preset mnist-300 --run-dir runs/dmlab   # TECO's DMLab files
    python examples/train_mmnist.py --mesh-fsdp 4 --compute-dtype bfloat16  # 4+ GPUs
    python examples/train_mmnist.py --config runs/convs5-mmnist/config.json --resume  # its own

Digits: real MNIST if `--mnist-path` points to the standard
`train-images-idx3-ubyte(.gz)` file, otherwise scikit-learn's bundled
handwritten digits (real handwriting, 8x8 scans upsampled; works offline).
"""

import sys

from eqvid.data import MovingMNISTConfig
from eqvid.train import OptimizerConfig, RunConfig
from eqvid.train._cli import CommandDefaults
from eqvid.train._cli import main as train_main

# Defaults of this example (the library's own defaults are in the config classes).
# The demo's recipe: on 48x48 frames the demo preset learns, in 3600 steps of 4 videos
# (about 8 minutes on 2 CPU cores), to beat copying the last frame and an empty frame
# on MSE and SSIM at every one of the 10 predicted frames
# (benchmarks/results/demo_mmnist_cpu.md). Screened on the same CPU on as many videos:
# batches of 4 beat batches of 8 (first-frame SSIM 0.839 against 0.820), lr 4e-3
# beats 2e-3; an SSIM loss term and the L1 loss alone did not help.
EXAMPLE_RUN = RunConfig(
    run_dir="runs/convs5-mmnist",
    steps=3600,
    batch_size=4,
    log_every=20,
    sample_every=400,
    checkpoint_every=400,
)
EXAMPLE_OPTIMIZER = OptimizerConfig(lr=4e-3, warmup_steps=40)
EXAMPLE_DATA = MovingMNISTConfig(seq_len=20, frame_size=48)


DEFAULTS = CommandDefaults(
    prog="train_mmnist.py",
    description=(__doc__ or "").partition("\n\n")[0],
    epilog=(__doc__ or "").partition("\n\n")[2],
    run=EXAMPLE_RUN,
    optimizer=EXAMPLE_OPTIMIZER,
    moving_mnist=EXAMPLE_DATA,
    preset="demo",  # ConvS5's; models without a `demo` preset start from `small`
    run_dir="runs/{model}-{dataset}",  # runs/convs5-mmnist, runs/convlstm-mmnist, runs/convs5-teco
    dataset_abbreviations=(("moving_mnist", "mmnist"),),
)


def main(argv: list[str] | None = None) -> int:
    """`python -m eqvid.train` with this example's defaults."""
    return train_main(argv, DEFAULTS)


if __name__ == "__main__":
    sys.exit(main())
