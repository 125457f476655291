"""Train a video model (ConvS5 by default; ConvLSTM or Transformer) on Moving MNIST or any eqvid dataset.

With no arguments this trains the `small` preset on a laptop-class CPU in a few
minutes and writes everything to `runs/convs5-mmnist/`: metrics.csv, sample
videos (samples/*.png, *.gif: context | prediction | ground truth), Orbax
checkpoints, and eval.md — the per-frame MSE of a 10-frame rollout from 10
context frames on held-out videos, next to copying the last frame and
predicting an empty frame.

    python examples/train_mmnist.py                        # small preset, CPU
    python examples/train_mmnist.py --preset mnist-600 --steps 300000 --lr 5e-4 \\
        --mnist-path data/train-images-idx3-ubyte.gz --seq-len 600
    python examples/train_mmnist.py --resume               # continue a run
    python examples/train_mmnist.py --model convlstm --run-dir runs/convlstm  # a baseline
    python examples/train_mmnist.py --model transformer --help  # the Transformer's options
    python examples/train_mmnist.py --dataset teco --root data/dmlab --seq-len 300 \
        --action-dim 6 --preset mnist-300 --run-dir runs/dmlab   # TECO's DMLab files
    python examples/train_mmnist.py --mesh-fsdp 4 --compute-dtype bfloat16  # 4+ GPUs

Digits: real MNIST if `--mnist-path` points to the standard
`train-images-idx3-ubyte(.gz)` file, otherwise scikit-learn's bundled
handwritten digits (real handwriting, 8x8 scans upsampled; works offline).
"""

import argparse
import dataclasses
import sys

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.data import DATASETS, MovingMNISTConfig, dataset_config_class, frame_spec
from eqvid.models import MODELS, model_spec
from eqvid.train import (
    DistributedConfig,
    MeshConfig,
    OptimizerConfig,
    RunConfig,
    TrainConfig,
    train,
)

# Defaults of this example (the library's own defaults are in the config classes).
EXAMPLE_RUN = RunConfig(
    run_dir="runs/convs5-mmnist",
    steps=150,
    batch_size=8,
    log_every=5,
    sample_every=50,
    checkpoint_every=50,
)
EXAMPLE_OPTIMIZER = OptimizerConfig(lr=3e-3, warmup_steps=20)
EXAMPLE_DATA = MovingMNISTConfig(seq_len=20)


def _choices(argv: list[str] | None) -> tuple[str, str]:
    """The `--model` and `--dataset` given in `argv` (the other options depend on them)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="convs5", choices=sorted(MODELS))
    pre.add_argument("--dataset", default="moving_mnist", choices=list(DATASETS))
    known, _ = pre.parse_known_args(argv)
    return known.model, known.dataset


def _data_defaults(dataset: str):
    return EXAMPLE_DATA if dataset == "moving_mnist" else dataset_config_class(dataset)()


def build_parser(model: str = "convs5", dataset: str = "moving_mnist") -> argparse.ArgumentParser:
    spec = model_spec(model)
    parser = argparse.ArgumentParser(
        prog="train_mmnist.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="convs5",
        choices=sorted(MODELS),
        help="the model to train; `--model NAME --help` lists that model's options "
        "(default: convs5)",
    )
    parser.add_argument(
        "--dataset",
        default="moving_mnist",
        choices=list(DATASETS),
        help="the data; `--dataset NAME --help` lists that dataset's options "
        "(default: moving_mnist)",
    )
    parser.add_argument(
        "--preset",
        default="small",
        choices=sorted(spec.presets),
        help=f"{spec.title} preset; the model options below override its fields (default: small)",
    )
    # The frame size and channels of the model follow the data.
    add_config_arguments(
        parser,
        f"model ({spec.title})",
        spec.config,
        spec.presets["small"],
        exclude=("frame_size", "channels"),
    )
    add_config_arguments(
        parser, f"data ({dataset})", dataset_config_class(dataset), _data_defaults(dataset)
    )
    add_config_arguments(parser, "optimizer", OptimizerConfig, EXAMPLE_OPTIMIZER)
    add_config_arguments(parser, "run", RunConfig, EXAMPLE_RUN)
    add_config_arguments(parser, "mesh", MeshConfig, prefix="mesh_")
    add_config_arguments(parser, "distributed", DistributedConfig)
    return parser


def config_from_argv(argv: list[str] | None = None) -> TrainConfig:
    model_name, dataset = _choices(argv)
    spec = model_spec(model_name)
    args = build_parser(model_name, dataset).parse_args(argv)
    data = config_from_args(args, f"data ({dataset})", _data_defaults(dataset))
    model = config_from_args(args, f"model ({spec.title})", spec.presets[args.preset])
    if isinstance(data, MovingMNISTConfig):
        model = dataclasses.replace(model, frame_size=data.frame_size, channels=1)
    else:  # the size and channels of the stored frames (after --frame-size)
        frames = frame_spec(data)
        if frames.height != frames.width:
            raise SystemExit(
                f"train_mmnist.py: the frames are {frames.height}×{frames.width}; the "
                "models take square frames: pass --frame-size N to crop and resize."
            )
        model = dataclasses.replace(model, frame_size=frames.height, channels=frames.channels)
    run = config_from_args(args, "run", EXAMPLE_RUN)
    if "run.run_dir" not in vars(args) and (model_name, dataset) != ("convs5", "moving_mnist"):
        suffix = "mmnist" if dataset == "moving_mnist" else dataset.replace("_", "-")
        run = dataclasses.replace(run, run_dir=f"runs/{model_name}-{suffix}")
    return TrainConfig(
        model=model,
        data=data,
        optimizer=config_from_args(args, "optimizer", EXAMPLE_OPTIMIZER),
        run=run,
        mesh=config_from_args(args, "mesh", MeshConfig()),
        distributed=config_from_args(args, "distributed", DistributedConfig()),
    )


def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(argv)
    title = model_spec(config.model).title
    if isinstance(config.data, MovingMNISTConfig):
        digits = config.data.mnist_path or "scikit-learn's bundled handwritten digits (offline)"
        print(f"eqvid: training {title} on Moving MNIST; digits: {digits}")
    else:
        print(f"eqvid: training {title} on {type(config.data).__name__}(root={config.data.root!r})")
    print(f"eqvid: writing to {config.run.run_dir}/")
    result = train(config)
    if result.stopped_by is not None:
        print(
            f"eqvid: stopped by {result.stopped_by} after step {result.step}; the checkpoint "
            f"is saved: continue with the same command plus --resume"
        )
        return 0
    print(f"eqvid: done after {result.step} steps; samples in {result.run_dir / 'samples'}")
    if result.report is not None:
        print()
        print(result.report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
