"""Load a training run (its `config.json` and a checkpoint) back into a model."""

import dataclasses
import json
import pathlib
import types
import typing
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax

from ..models import MODELS, AbstractModel, make_model, model_spec

_UNIONS = (typing.Union, types.UnionType)


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild the frozen dataclass `cls` from its JSON form (lists back to tuples)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}.")
    out = {}
    for name, value in values.items():
        hint = hints[name]
        kinds = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
        if isinstance(value, list) and any(typing.get_origin(k) is tuple for k in kinds):
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


def data_config_from_file(path: str | pathlib.Path) -> Any:
    """The dataset config a YAML or JSON file describes: `dataset_name` and `data` (that
    dataset's options), as in a run's `config.json` (which works as it is)."""
    from .._cli import read_config_file

    values = read_config_file(path)
    if not isinstance(values.get("dataset_name"), str) or not isinstance(values.get("data"), dict):
        raise ValueError(
            f"--data-config {path}: expected a mapping with `dataset_name` (e.g. teco) and "
            f"`data` (that dataset's options); got keys {sorted(values)}."
        )
    try:
        return data_config_from_run(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--data-config {path}: {error}") from None


def model_config_from_run(config: dict[str, Any]) -> Any:
    """The model config of a run's `config.json`, rebuilt by the family name it records
    (`model_name`)."""
    name = config.get("model_name")
    if name is None:
        raise ValueError(
            "config.json records no `model_name`: it was written by an eqvid older than the "
            f'model registry; add "model_name": one of {sorted(MODELS)} to it.'
        )
    return config_from_dict(model_spec(name).config, config["model"])


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained model with what it was trained on."""

    model: AbstractModel
    """The model to sample from (or to tokenize with): the moving average of its parameters when the run kept
    one, its state folded in."""
    step: int
    """The checkpoint step the parameters come from."""
    config: dict[str, Any]
    """The run's `config.json`."""
    run_dir: pathlib.Path


def load_trained_run(
    run_dir: str | pathlib.Path,
    step: int | None = None,
    *,
    ema: bool = True,
    report: Callable[[str], object] = print,
) -> TrainedRun:
    """The model of the training run in `run_dir` with the parameters of checkpoint
    `step` (the latest if None): the moving average of the parameters when the run
    kept one (unless `ema=False`), its frozen parts as saved when the run started, its
    state folded in.

    Without `step`, a latest checkpoint that is corrupt (an item missing, unreadable
    or not what was written) is reported in one line (`report`) and the newest intact
    one is used.

    **Raises** `FileNotFoundError` naming what is missing (the folder, its
    `config.json`, any checkpoint, the requested step), `CorruptCheckpointError` if the
    requested step (or, without `step`, every step) is corrupt, and `ValueError` if
    the checkpoint does not fit the configured model or config.json is unreadable.
    """
    from ..train._checkpoint import Checkpointer, CorruptCheckpointError, restore_frozen
    from ..train._step import ParameterPlan

    run_dir = pathlib.Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist: `run_dir` must be a folder written by "
            "eqvid.train.train / python -m eqvid.train (it holds config.json and checkpoints/)."
        )
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}).") from None
    model_config = model_config_from_run(config)
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist: the run saved no checkpoint yet.")
    ckpt = Checkpointer(directory)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint.")
        if step is not None and step not in steps:
            raise FileNotFoundError(
                f"{directory} has no checkpoint at step {step}; it has steps {steps}."
            )
        model, state = make_model(model_config, key=jax.random.key(0))
        plan = ParameterPlan(model)
        params, rest = plan.partition(model)
        candidates = [step] if step is not None else sorted(steps, reverse=True)
        problems = []
        for i, candidate in enumerate(candidates):
            which = "ema" if ema and "ema" in ckpt.items(candidate) else "params"
            templates = {which: params}
            if state is not None:
                templates["model_state"] = state
            try:
                restored = ckpt.restore(candidate, templates)
            except CorruptCheckpointError as error:
                if step is not None:
                    raise
                problems.append(str(error))
                later = candidates[i + 1 :]
                report(
                    f"eqvid: {error}; " + (f"using step {later[0]}." if later else "no older step.")
                )
                continue
            step = candidate
            break
        else:
            raise CorruptCheckpointError(directory, steps[-1], "every step", "; ".join(problems))
    finally:
        ckpt.close()
    frozen = eqx.filter(rest, eqx.is_array)
    if jax.tree_util.tree_leaves(frozen):
        rest = eqx.combine(restore_frozen(run_dir / "frozen", frozen), rest)
    model = eqx.combine(restored[which], rest).with_state(restored.get("model_state"))
    return TrainedRun(model=model, step=step, config=config, run_dir=run_dir)
