"""Load a training run (its `config.json` and a checkpoint) back into a model."""

import dataclasses
import json
import pathlib
import typing
from typing import Any

import equinox as eqx
import jax

from ..models import MODELS, AbstractVideoPredictor, make_model


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild the frozen dataclass `cls` from its JSON form (lists back to tuples)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}.")
    out = {}
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(hints[name]) is tuple:
            value = tuple(value)
        out[name] = value
    return cls(**out)


def data_config_from_run(config: dict[str, Any]) -> Any:
    """The dataset config of a run's `config.json` (`dataset_name` says which; runs
    written before it was recorded are Moving MNIST)."""
    from ..data import dataset_config_class

    return config_from_dict(
        dataset_config_class(config.get("dataset_name", "moving_mnist")), config["data"]
    )


def model_config_from_dict(values: dict[str, Any]) -> Any:
    """The model config a run's `config.json` describes; its fields say which model."""
    keys = set(values)
    for spec in MODELS.values():
        if keys == {f.name for f in dataclasses.fields(spec.config) if f.init}:
            return config_from_dict(spec.config, values)
    raise ValueError(
        f"the model in config.json matches none of {sorted(MODELS)} (fields: {sorted(keys)}); "
        "was it written by another version of eqvid?"
    )


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained model with what it was trained on."""

    model: AbstractVideoPredictor
    step: int
    """The checkpoint step the parameters come from."""
    config: dict[str, Any]
    """The run's `config.json`."""
    run_dir: pathlib.Path


def load_trained_run(run_dir: str | pathlib.Path, step: int | None = None) -> TrainedRun:
    """The model of the training run in `run_dir` with the parameters of checkpoint
    `step` (the latest if None).

    **Raises** `FileNotFoundError` naming what is missing (the folder, its
    `config.json`, any checkpoint, the requested step) and `ValueError` if the
    checkpoint does not fit the configured model.
    """
    from ..train._checkpoint import Checkpointer

    run_dir = pathlib.Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist: `run_dir` must be a folder written by "
            "eqvid.train.train / examples/train_mmnist.py (it holds config.json and checkpoints/)."
        )
    config = json.loads(config_path.read_text())
    model_config = model_config_from_dict(config["model"])
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist: the run saved no checkpoint yet.")
    ckpt = Checkpointer(directory)
    try:
        steps = ckpt.manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint.")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise FileNotFoundError(
                f"{directory} has no checkpoint at step {step}; it has steps {sorted(steps)}."
            )
        model = make_model(model_config, key=jax.random.key(0))
        params, static = eqx.partition(model, eqx.is_inexact_array)
        params = ckpt.restore_params(step, params)
    finally:
        ckpt.close()
    return TrainedRun(model=eqx.combine(params, static), step=step, config=config, run_dir=run_dir)
