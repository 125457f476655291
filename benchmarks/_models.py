"""The video predictors the benchmarks compare, built by name through eqvid's public API."""

import dataclasses

import equinox as eqx
import jax

from eqvid.models import MODELS as _REGISTRY
from eqvid.models import make_model, model_spec

MODELS = tuple(_REGISTRY)  # convs5, convlstm, transformer

# --preset: the model preset each benchmark preset uses.
MODEL_PRESETS = {"cpu": "small", "paper": "mnist-300"}


def config_for(name: str, preset: str, frames: int):
    """The named preset of model `name`, able to take `frames` frames (the
    Transformer's position table and cache grow to fit)."""
    config = model_spec(name).config.preset(preset)
    if hasattr(config, "max_frames") and config.max_frames < frames:
        config = dataclasses.replace(config, max_frames=frames)
    return config


def build(name: str, preset: str, frames: int, key):
    """`(params, static, config)`: the model split into its arrays and the rest, so
    the arrays can be jit arguments (and donated)."""
    config = config_for(name, preset, frames)
    model = make_model(config, key=key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return params, static, config


def parameter_count(params) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))
