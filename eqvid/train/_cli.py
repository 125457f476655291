"""The training command line, generated from the configs of every registered model and
dataset: `python -m eqvid.train` (the library's defaults) and
`examples/train_mmnist.py` (Moving-MNIST defaults) are this one command."""

import argparse
import dataclasses
import sys
from typing import Any

from .._cli import add_config_arguments, config_from_args
from ..data import DATASETS, MovingMNISTConfig, dataset_config_class, frame_spec
from ..models import MODELS, model_spec
from ._config import OptimizerConfig, RunConfig, TrainConfig
from ._distributed import DistributedConfig
from ._loop import train
from ._mesh import MeshConfig


@dataclasses.dataclass(frozen=True)
class CommandDefaults:
    """What a training command starts from; its flags override these."""

    prog: str = "python -m eqvid.train"
    description: str = "Train any eqvid model on any eqvid dataset."
    epilog: str = ""
    model: str = "convs5"
    """The model when --model is not given."""
    dataset: str = "moving_mnist"
    """The dataset when --dataset is not given."""
    preset: str = "small"
    """The model preset when --preset is not given."""
    run_dir: str = "runs/{model}-{dataset}"
    """The run folder when --run-dir is not given, from the model and dataset names."""
    dataset_abbreviations: tuple[tuple[str, str], ...] = ()
    """Shorter dataset names for `run_dir` (`(("moving_mnist", "mmnist"),)`)."""
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    moving_mnist: MovingMNISTConfig = dataclasses.field(default_factory=MovingMNISTConfig)
    """Moving MNIST's settings (other datasets start from their config's defaults)."""


def _data_defaults(dataset: str, defaults: CommandDefaults) -> Any:
    return defaults.moving_mnist if dataset == "moving_mnist" else dataset_config_class(dataset)()


def _choices(argv: list[str] | None, defaults: CommandDefaults) -> tuple[str, str, str]:
    """The `--model`, `--dataset` and `--preset` given in `argv` (the other options and
    their defaults depend on them)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default=defaults.model, choices=sorted(MODELS))
    pre.add_argument("--dataset", default=defaults.dataset, choices=list(DATASETS))
    pre.add_argument("--preset", default=defaults.preset)
    known, _ = pre.parse_known_args(argv)
    return known.model, known.dataset, known.preset


def _run_defaults(model: str, dataset: str, defaults: CommandDefaults) -> RunConfig:
    """The run settings a command starts from, with its run folder for this model and
    dataset."""
    short = dict(defaults.dataset_abbreviations).get(dataset, dataset.replace("_", "-"))
    return dataclasses.replace(
        defaults.run, run_dir=defaults.run_dir.format(model=model, dataset=short)
    )


def build_parser(
    model: str,
    dataset: str,
    defaults: CommandDefaults = CommandDefaults(),
    preset: str | None = None,
) -> argparse.ArgumentParser:
    """The parser for `model` on `dataset`: every field of the model (its defaults
    from `preset`), dataset, optimiser, run, mesh and distributed configs as an
    option."""
    spec = model_spec(model)
    if preset is None or preset not in spec.presets:
        preset = defaults.preset if defaults.preset in spec.presets else "small"
    parser = argparse.ArgumentParser(
        prog=defaults.prog,
        description=defaults.description,
        epilog=defaults.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=defaults.model,
        choices=sorted(MODELS),
        help="the model to train; `--model NAME --help` lists that model's options "
        f"(default: {defaults.model})",
    )
    parser.add_argument(
        "--dataset",
        default=defaults.dataset,
        choices=list(DATASETS),
        help="the data; `--dataset NAME --help` lists that dataset's options "
        f"(default: {defaults.dataset})",
    )
    parser.add_argument(
        "--preset",
        default=defaults.preset,
        choices=sorted(spec.presets),
        help=f"{spec.title} preset; the model options below override its fields "
        f"(default: {defaults.preset})",
    )
    # The frame size and channels of the model follow the data.
    add_config_arguments(
        parser,
        f"model ({spec.title}, preset {preset})",
        spec.config,
        spec.preset(preset),
        exclude=("frame_size", "channels"),
    )
    add_config_arguments(
        parser,
        f"data ({dataset})",
        dataset_config_class(dataset),
        _data_defaults(dataset, defaults),
    )
    add_config_arguments(parser, "optimizer", OptimizerConfig, defaults.optimizer)
    add_config_arguments(parser, "run", RunConfig, _run_defaults(model, dataset, defaults))
    add_config_arguments(parser, "mesh", MeshConfig, prefix="mesh_")
    add_config_arguments(parser, "distributed", DistributedConfig)
    return parser


def config_from_argv(
    argv: list[str] | None = None, defaults: CommandDefaults = CommandDefaults()
) -> TrainConfig:
    """The `TrainConfig` a command line describes."""
    model_name, dataset, preset = _choices(argv, defaults)
    spec = model_spec(model_name)
    args = build_parser(model_name, dataset, defaults, preset).parse_args(argv)
    data = config_from_args(args, f"data ({dataset})", _data_defaults(dataset, defaults))
    model = config_from_args(
        args, f"model ({spec.title}, preset {args.preset})", spec.preset(args.preset)
    )
    if isinstance(data, MovingMNISTConfig):
        model = dataclasses.replace(model, frame_size=data.frame_size, channels=1)
    else:  # the size and channels of the stored frames (after --frame-size)
        frames = frame_spec(data)
        if frames.height != frames.width:
            raise SystemExit(
                f"{defaults.prog}: the frames are {frames.height}×{frames.width}; the models "
                "take square frames: pass --frame-size N to crop and resize."
            )
        model = dataclasses.replace(model, frame_size=frames.height, channels=frames.channels)
    run = config_from_args(args, "run", _run_defaults(model_name, dataset, defaults))
    return TrainConfig(
        model=model,
        data=data,
        optimizer=config_from_args(args, "optimizer", defaults.optimizer),
        run=run,
        mesh=config_from_args(args, "mesh", MeshConfig()),
        distributed=config_from_args(args, "distributed", DistributedConfig()),
    )


def main(argv: list[str] | None = None, defaults: CommandDefaults = CommandDefaults()) -> int:
    """Parse `argv`, train, print where everything went and the held-out report."""
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
        flags.FLAGS.mark_as_parsed()
    config = config_from_argv(argv, defaults)
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
            "is saved: continue with the same command plus --resume"
        )
        return 0
    print(f"eqvid: done after {result.step} steps; samples in {result.run_dir / 'samples'}")
    if config.run.tensorboard:
        print(f"eqvid: watch it with `tensorboard --logdir {result.run_dir / 'tensorboard'}`")
    if result.report is not None:
        print()
        print(result.report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
