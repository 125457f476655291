"""Tokenizer files: a trained or converted tokenizer saved as one folder, and one loader
for those folders and for training runs.

A tokenizer folder holds `tokenizer.json` (`{"format": "eqvid-tokenizer/1",
"model_name": ..., "model": {config fields}, "source": ...}`) and `tokenizer.eqx`
(the model's arrays, its state folded in, as `equinox.tree_serialise_leaves` writes
them; metric networks held for the loss, such as LPIPS, are left out: the loader takes
them from their weight files, as a new model would). Converters of public checkpoints write such folders; `load_tokenizer` reads
them, and also takes a training run's folder (its latest checkpoint).
"""

import dataclasses
import json
import pathlib
from typing import Any

import equinox as eqx
import jax

from ._registry import make_model, model_spec
from ._tokenizer import AbstractVideoTokenizer

FORMAT = "eqvid-tokenizer/1"
CONFIG_FILE = "tokenizer.json"
ARRAYS_FILE = "tokenizer.eqx"


def _config_dict(config: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _own_arrays(model: Any) -> Any:
    """`model` without the metric networks it holds for its loss (LPIPS, I3D: None):
    those come from their own weight files, as for a new model."""
    from ..metrics import I3D, LPIPS

    def is_metric(x: Any) -> bool:
        return isinstance(x, (LPIPS, I3D))

    return jax.tree.map(lambda x: None if is_metric(x) else x, model, is_leaf=is_metric)


def save_tokenizer(
    model: AbstractVideoTokenizer, path: str | pathlib.Path, *, source: str = ""
) -> pathlib.Path:
    """Write `model` (its state folded in: `model.with_state(state)`) as a tokenizer
    folder at `path` (created if needed); `source` says where its weights came from.
    Returns the folder."""
    if not isinstance(model, AbstractVideoTokenizer):
        raise TypeError(
            f"save_tokenizer: `model` must be an AbstractVideoTokenizer, got {type(model).__name__}."
        )
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    spec = model_spec(model.config)
    meta = {
        "format": FORMAT,
        "model_name": spec.name,
        "model": _config_dict(model.config),
        "source": source,
    }
    eqx.tree_serialise_leaves(folder / ARRAYS_FILE, _own_arrays(model))
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_tokenizer(path: str | pathlib.Path, *, ema: bool = True) -> AbstractVideoTokenizer:
    """The tokenizer at `path`, its state folded in: a tokenizer folder (written by
    `save_tokenizer` or a converter) or a training run's folder (its latest intact
    checkpoint; the moving average of the parameters when the run kept one, unless
    `ema=False`).

    **Raises** `FileNotFoundError` naming what is missing, `ValueError` if the folder
    holds a model that is not a tokenizer or files that do not fit its config."""
    from ..evaluate._trained_run import config_from_dict

    folder = pathlib.Path(path)
    if (folder / CONFIG_FILE).is_file():
        meta = json.loads((folder / CONFIG_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{folder / CONFIG_FILE} is not an eqvid tokenizer file (format "
                f"{meta.get('format')!r}, expected {FORMAT!r})."
            )
        spec = model_spec(meta["model_name"])
        config = config_from_dict(spec.config, meta["model"])
        template, state = make_model(config, key=jax.random.key(0))
        if not isinstance(template, AbstractVideoTokenizer):
            raise ValueError(f"{folder}: {spec.name!r} is not a tokenizer.")
        template = template.with_state(state)
        arrays = folder / ARRAYS_FILE
        if not arrays.is_file():
            raise FileNotFoundError(f"{arrays} does not exist: the tokenizer folder is incomplete.")
        try:
            loaded = eqx.tree_deserialise_leaves(arrays, _own_arrays(template))
            return eqx.combine(loaded, template)
        except Exception as error:  # wrong shapes, truncated file
            raise ValueError(
                f"{arrays} does not fit the model {folder / CONFIG_FILE} describes ({error})."
            ) from None
    if (folder / "config.json").is_file():
        from ..evaluate._trained_run import load_trained_run

        model = load_trained_run(folder, ema=ema).model
        if not isinstance(model, AbstractVideoTokenizer):
            raise ValueError(
                f"{folder} is a training run of a {type(model).__name__}, not of a tokenizer."
            )
        return model
    raise FileNotFoundError(
        f"{folder} is neither a tokenizer folder (with {CONFIG_FILE}) nor a training run "
        "(with config.json): pass a folder written by a converter, by save_tokenizer or by "
        "python -m eqvid.train --model vqgan2d."
    )
