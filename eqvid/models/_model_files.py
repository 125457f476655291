"""Model files: a trained or converted video model saved as one folder, and its loader.

A model folder holds `model.json` (`{"format": "eqvid-model/1", "model_name": ...,
"model": {config fields, tuples as lists}, "source": ...}`) and `model.eqx` (the
model's arrays, its state folded in, as `equinox.tree_serialise_leaves` writes them;
metric networks held for a loss, such as LPIPS, are left out, as in tokenizer folders).
`load_model` rebuilds the model from its config with `make_model` and reads the arrays
into it, naming the first array that does not fit.

A latent model (TECO) keeps its frozen tokenizer: its arrays are in `model.eqx` too,
and the config's `tokenizer` names the tokenizer folder `make_model` builds it from
(that folder must still be there to load the model).
"""

import json
import pathlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._abstract import AbstractVideoModel
from ._registry import make_model, model_spec
from ._tokenizer import AbstractVideoTokenizer
from ._tokenizer_files import _config_dict, _own_arrays

__all__ = ["ARRAYS_FILE", "CONFIG_FILE", "FORMAT", "load_model", "save_model"]

FORMAT = "eqvid-model/1"
CONFIG_FILE = "model.json"
ARRAYS_FILE = "model.eqx"


def save_model(
    model: AbstractVideoModel, path: str | pathlib.Path, *, source: str = ""
) -> pathlib.Path:
    """Write `model` (its state folded in: `model.with_state(state)`) as a model folder
    at `path` (created if needed; existing files are replaced); `source` says where its
    weights came from. Returns the folder.

    **Raises** `TypeError` if `model` is not a video model of a registered family (a
    tokenizer goes to `save_tokenizer`)."""
    if isinstance(model, AbstractVideoTokenizer) or not isinstance(model, AbstractVideoModel):
        hint = (
            " (tokenizers go to save_tokenizer)"
            if isinstance(model, AbstractVideoTokenizer)
            else ""
        )
        raise TypeError(
            f"save_model: `model` must be an AbstractVideoModel, got {type(model).__name__}{hint}."
        )
    spec = model_spec(model.config)
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "model_name": spec.name,
        "model": _config_dict(model.config),
        "source": source,
    }
    eqx.tree_serialise_leaves(folder / ARRAYS_FILE, _own_arrays(model))
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _read_arrays(file: pathlib.Path, like: Any, config_file: pathlib.Path) -> Any:
    """`like` with its arrays read from `file` (`equinox.tree_serialise_leaves`'s
    format: one `.npy` record per leaf in flattening order), each checked against the
    leaf it replaces; a `ValueError` names the first leaf that does not fit."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    out = []
    with open(file, "rb") as f:
        for index, (path, leaf) in enumerate(flat):
            name = jax.tree_util.keystr(path, simple=True, separator=".")
            is_array = isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray))
            if not (is_array or eqx.is_array_like(leaf)):
                out.append(leaf)
                continue
            try:
                value = np.load(f) if isinstance(leaf, np.ndarray) else jnp.load(f)
            except (EOFError, ValueError, OSError) as error:
                raise ValueError(
                    f"{file} ends or breaks at array {index} (`{name}`, expected shape "
                    f"{_shape(tuple(np.shape(leaf)))}) ({error}): the file is truncated or is "
                    f"not an {ARRAYS_FILE} of the model {config_file} describes."
                ) from None
            if not is_array:  # a Python or NumPy scalar leaf
                out.append(type(leaf)(np.asarray(value).item()))
                continue
            want_shape, want_dtype = tuple(leaf.shape), jnp.dtype(leaf.dtype)
            if tuple(value.shape) != want_shape or jnp.dtype(value.dtype) != want_dtype:
                raise ValueError(
                    f"{file}: the array `{name}` has shape {_shape(tuple(value.shape))} "
                    f"({value.dtype}) on disk, but the model {config_file} describes needs "
                    f"{_shape(want_shape)} ({want_dtype}): the arrays are of another model "
                    "or configuration."
                )
            out.append(value)
        if f.read(1):
            raise ValueError(
                f"{file} holds more arrays than the model {config_file} describes "
                f"({len(out)} leaves): the arrays are of another model or configuration."
            )
    return jax.tree_util.tree_unflatten(treedef, out)


def load_model(path: str | pathlib.Path) -> AbstractVideoModel:
    """The video model saved in the model folder at `path` (written by `save_model` or
    a converter such as `python -m eqvid.models.convert_checkpoint`), its state folded
    in.

    **Raises** `FileNotFoundError` naming what is missing; `ValueError` if `model.json`
    is not an eqvid model file (its `format`), names an unknown family or config
    fields it does not have, describes a tokenizer, or if `model.eqx` holds arrays that
    do not fit its config (the first such array is named, with both shapes)."""
    from ..evaluate._trained_run import config_from_dict

    folder = pathlib.Path(path)
    config_file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"load_model: the model folder {folder} does not exist.")
    if not config_file.is_file():
        hint = (
            " It is a training run: load it with eqvid.evaluate.load_trained_run."
            if (folder / "config.json").is_file()
            else " It is a tokenizer folder: load it with eqvid.models.load_tokenizer."
            if (folder / "tokenizer.json").is_file()
            else ""
        )
        raise FileNotFoundError(
            f"{config_file} does not exist: {folder} is not a model folder (written by "
            f"save_model or python -m eqvid.models.convert_checkpoint).{hint}"
        )
    try:
        meta = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not JSON ({error}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(
            f"{config_file} is not an eqvid model file (format {found!r}, expected {FORMAT!r})."
        )
    for key in ("model_name", "model"):
        if key not in meta:
            raise ValueError(f"{config_file} has no `{key}` entry (an {FORMAT} file has one).")
    try:
        spec = model_spec(meta["model_name"])
        config = config_from_dict(spec.config, meta["model"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_file}: {error}") from None
    arrays = folder / ARRAYS_FILE
    if not arrays.is_file():
        raise FileNotFoundError(f"{arrays} does not exist: the model folder is incomplete.")
    template, state = make_model(config, key=jax.random.key(0))
    if not isinstance(template, AbstractVideoModel) or isinstance(template, AbstractVideoTokenizer):
        raise ValueError(
            f"{config_file}: {spec.name!r} is not a video model (load tokenizers with "
            "eqvid.models.load_tokenizer)."
        )
    template = template.with_state(state)
    loaded = _read_arrays(arrays, _own_arrays(template), config_file)
    return eqx.combine(loaded, template)
