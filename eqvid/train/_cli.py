"""The training command line, generated from the configs of every registered model and
dataset: `python -m eqvid.train` (the library's defaults) and
`examples/train_mmnist.py` (Moving-MNIST defaults) are this one command."""

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from .._cli import (
    ConfigFileError,
    add_config_arguments,
    config_from_args,
    config_from_mapping,
    read_config_file,
)
from ..data import (
    DATASETS,
    BouncingBallsConfig,
    MovingMNISTConfig,
    dataset_config_class,
    frame_spec,
)
from ..models import MODELS, model_spec
from ._config import OptimizerConfig, RunConfig, TrainConfig
from ._distributed import DistributedConfig
from ._loop import train
from ._mesh import MeshConfig

EPILOG = """\
    python -m eqvid.train                          # ConvS5 on Moving MNIST, small preset
    python -m eqvid.train --model convlstm --dataset teco --root data/dmlab --help
    python -m eqvid.train --config train.yaml --steps 500   # options from a file; flags win
    python -m eqvid.train --config runs/x/config.json --resume  # a run's own settings

`eqvid-train` is the same command. A --config file (YAML, or JSON for a .json name)
holds the options nested as a run's config.json: sections model, data, optimizer,
run, mesh and distributed of field names, and model_name, dataset_name, preset."""

FILE_SECTIONS = ("model", "data", "optimizer", "run", "mesh", "distributed")
"""The sections of a `--config` file (and of a run's config.json): a config each."""
FILE_CHOICES = ("model_name", "dataset_name", "preset")
"""The keys of a `--config` file that stand for `--model`, `--dataset` and `--preset`."""
FILE_IGNORED = ("changes_on_resume",)
"""Keys of a run's config.json that record its history and set nothing."""


@dataclasses.dataclass(frozen=True)
class CommandDefaults:
    """What a training command starts from; its flags override these."""

    prog: str = "python -m eqvid.train"
    description: str = "Train any eqvid model on any eqvid dataset."
    epilog: str = EPILOG
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


def _prog(defaults: CommandDefaults) -> str:
    """The program name in usage and errors: `eqvid-train` when run as that console
    script with the library's defaults."""
    if defaults.prog == CommandDefaults.prog and pathlib.Path(sys.argv[0]).name == "eqvid-train":
        return "eqvid-train"
    return defaults.prog


def _data_defaults(dataset: str, defaults: CommandDefaults) -> Any:
    return defaults.moving_mnist if dataset == "moving_mnist" else dataset_config_class(dataset)()


def _run_defaults(model: str, dataset: str, defaults: CommandDefaults) -> RunConfig:
    """The run settings a command starts from, with its run folder for this model and
    dataset."""
    short = dict(defaults.dataset_abbreviations).get(dataset, dataset.replace("_", "-"))
    return dataclasses.replace(
        defaults.run, run_dir=defaults.run_dir.format(model=model, dataset=short)
    )


@dataclasses.dataclass(frozen=True)
class _Start:
    """What a command line starts from before its other flags: the command's defaults,
    then its `--config` file, for the model and dataset it chose."""

    model_name: str
    dataset_name: str
    preset: str
    source: str
    """The `--config` file ("" without one)."""
    default_model: str
    """The model without --model (the file's model_name, else the command's)."""
    default_dataset: str
    default_preset: str
    """The preset of `model_name` without --preset."""
    model: Any
    data: Any
    optimizer: OptimizerConfig
    run: RunConfig
    mesh: MeshConfig
    distributed: DistributedConfig

    @property
    def model_title(self) -> str:
        return f"model ({model_spec(self.model_name).title}, preset {self.preset})"

    @property
    def data_title(self) -> str:
        return f"data ({self.dataset_name})"


def _file_choice(file: dict[str, Any], key: str, choices: Sequence[str], source: str) -> str:
    value = file.get(key)
    if value is None:
        return ""
    if value not in choices:
        raise ConfigFileError(f"{source}: {key} {value!r} is not one of {', '.join(choices)}")
    return value


def _start(
    model: str | None,
    dataset: str | None,
    preset: str | None,
    defaults: CommandDefaults,
    file: dict[str, Any] | None = None,
    source: str = "",
) -> _Start:
    """The configs a command starts from: `defaults`, then `file` (a `--config` file's
    mapping, read from `source`), for the model, dataset and preset given on the
    command line (None: not given)."""
    file = file or {}
    unknown = [str(k) for k in file if k not in FILE_SECTIONS + FILE_CHOICES + FILE_IGNORED]
    if unknown:
        raise ConfigFileError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(a config file has the sections {', '.join(FILE_SECTIONS)} and the keys "
            f"{', '.join(FILE_CHOICES)})"
        )
    default_model = _file_choice(file, "model_name", sorted(MODELS), source) or defaults.model
    default_dataset = _file_choice(file, "dataset_name", list(DATASETS), source) or defaults.dataset
    model = model or default_model
    dataset = dataset or default_dataset
    spec = model_spec(model)
    default_preset = _file_choice(file, "preset", sorted(spec.presets), source) or (
        defaults.preset if defaults.preset in spec.presets else "small"
    )
    preset = preset if preset is not None and preset in spec.presets else default_preset

    def section(name: str, base: Any, chosen: str, file_choice: str, flag: str, **kw) -> Any:
        try:
            return config_from_mapping(base, file.get(name, {}), source, name, **kw)
        except ConfigFileError as error:
            if file.get(file_choice, chosen) == chosen:
                raise
            raise ConfigFileError(
                f"{error}; the file's {name} section is for {file_choice} "
                f"{file[file_choice]}, the command line chose {flag} {chosen}"
            ) from None

    return _Start(
        model_name=model,
        dataset_name=dataset,
        preset=preset,
        source=source,
        default_model=default_model,
        default_dataset=default_dataset,
        default_preset=default_preset,
        # The frame size and channels of the model follow the data.
        model=section(
            "model",
            spec.preset(preset),
            model,
            "model_name",
            "--model",
            ignore=("frame_size", "channels"),
        ),
        data=section(
            "data", _data_defaults(dataset, defaults), dataset, "dataset_name", "--dataset"
        ),
        optimizer=config_from_mapping(
            defaults.optimizer, file.get("optimizer", {}), source, "optimizer"
        ),
        run=config_from_mapping(
            _run_defaults(model, dataset, defaults), file.get("run", {}), source, "run"
        ),
        mesh=config_from_mapping(MeshConfig(), file.get("mesh", {}), source, "mesh"),
        distributed=config_from_mapping(
            DistributedConfig(), file.get("distributed", {}), source, "distributed"
        ),
    )


def _start_from_argv(argv: list[str] | None, defaults: CommandDefaults) -> _Start:
    """The `--config`, `--model`, `--dataset` and `--preset` given in `argv` (the other
    options and their defaults depend on them), and what they start from."""
    pre = argparse.ArgumentParser(prog=_prog(defaults), add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--model", choices=sorted(MODELS))
    pre.add_argument("--dataset", choices=list(DATASETS))
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv)
    try:
        file = None if known.config is None else read_config_file(known.config)
        return _start(known.model, known.dataset, known.preset, defaults, file, known.config or "")
    except ConfigFileError as error:
        pre.exit(2, f"{pre.prog}: error: {error}\n")


def _parser(start: _Start, defaults: CommandDefaults) -> argparse.ArgumentParser:
    spec = model_spec(start.model_name)
    parser = argparse.ArgumentParser(
        prog=_prog(defaults),
        description=defaults.description,
        epilog=defaults.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML or JSON file of options, nested as a run's config.json (which repeats "
        "that run); the options below override it, and show its values as their defaults",
    )
    parser.add_argument(
        "--model",
        default=start.default_model,
        choices=sorted(MODELS),
        help="the model to train; `--model NAME --help` lists that model's options "
        f"(default: {start.default_model})",
    )
    parser.add_argument(
        "--dataset",
        default=start.default_dataset,
        choices=list(DATASETS),
        help="the data; `--dataset NAME --help` lists that dataset's options "
        f"(default: {start.default_dataset})",
    )
    parser.add_argument(
        "--preset",
        default=start.default_preset,
        choices=sorted(spec.presets),
        help=f"{spec.title} preset; the model options below override its fields "
        f"(default: {start.default_preset})",
    )
    # The frame size and channels of the model follow the data.
    add_config_arguments(
        parser, start.model_title, spec.config, start.model, exclude=("frame_size", "channels")
    )
    add_config_arguments(
        parser, start.data_title, dataset_config_class(start.dataset_name), start.data
    )
    add_config_arguments(parser, "optimizer", OptimizerConfig, start.optimizer)
    add_config_arguments(parser, "run", RunConfig, start.run)
    add_config_arguments(parser, "mesh", MeshConfig, start.mesh, prefix="mesh_")
    add_config_arguments(parser, "distributed", DistributedConfig, start.distributed)
    return parser


def build_parser(
    model: str,
    dataset: str,
    defaults: CommandDefaults = CommandDefaults(),
    preset: str | None = None,
) -> argparse.ArgumentParser:
    """The parser for `model` on `dataset`: every field of the model (its defaults
    from `preset`), dataset, optimiser, run, mesh and distributed configs as an
    option, with `defaults` (no `--config` file)."""
    return _parser(_start(model, dataset, preset, defaults), defaults)


def config_from_argv(
    argv: list[str] | None = None, defaults: CommandDefaults = CommandDefaults()
) -> TrainConfig:
    """The `TrainConfig` a command line describes: `defaults`, then its `--config`
    file, then its flags."""
    start = _start_from_argv(argv, defaults)
    parser = _parser(start, defaults)
    args = parser.parse_args(argv)
    try:
        data = config_from_args(args, start.data_title, start.data)
        model = config_from_args(args, start.model_title, start.model)
        if isinstance(data, MovingMNISTConfig):
            model = dataclasses.replace(model, frame_size=data.frame_size, channels=1)
        else:  # the size and channels of the stored frames (after --frame-size)
            frames = frame_spec(data)
            if frames.height != frames.width:
                raise SystemExit(
                    f"{parser.prog}: the frames are {frames.height}×{frames.width}; the models "
                    "take square frames: pass --frame-size N to crop and resize."
                )
            model = dataclasses.replace(model, frame_size=frames.height, channels=frames.channels)
            if frames.tokenizer and not getattr(model, "tokenizer", "x"):
                # A latent model on codes: the tokenizer they were encoded with.
                model = dataclasses.replace(model, tokenizer=frames.tokenizer)
        return TrainConfig(
            model=model,
            data=data,
            optimizer=config_from_args(args, "optimizer", start.optimizer),
            run=config_from_args(args, "run", start.run),
            mesh=config_from_args(args, "mesh", start.mesh),
            distributed=config_from_args(args, "distributed", start.distributed),
        )
    except ValueError as error:  # the configs' own checks, or data that cannot be read
        where = f" (settings from {start.source} and the command line)" if start.source else ""
        parser.exit(2, f"{parser.prog}: error: {error}{where}\n")


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
    elif isinstance(config.data, BouncingBallsConfig):
        print(f"eqvid: training {title} on bouncing balls (generated on the fly)")
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
