"""The video models the benchmarks compare, built by name through eqvid's public API,
and the library's own train step for them."""

import dataclasses

import equinox as eqx
import jax
import optax

from eqvid.models import MODELS as _REGISTRY
from eqvid.models import VideoBatch, make_model, model_spec
from eqvid.train import MeshConfig, ParameterPlan, init_train_state, make_mesh, make_train_step

MODELS = ("convs5", "convlstm", "transformer")
assert set(MODELS) <= set(_REGISTRY), sorted(_REGISTRY)

# --preset: the model preset each benchmark preset uses.
MODEL_PRESETS = {"cpu": "small", "paper": "mnist-300"}


def config_for(name: str, preset: str, frames: int):
    """The named preset of model `name`, able to take `frames` frames (the
    Transformer's position table and cache grow to fit)."""
    config = model_spec(name).preset(preset)
    if hasattr(config, "max_frames") and config.max_frames < frames:
        config = dataclasses.replace(config, max_frames=frames)
    return config


def build(name: str, preset: str, frames: int, key):
    """`(params, static, config)`: the model split into its arrays and the rest, so
    the arrays can be jit arguments (and donated)."""
    config = config_for(name, preset, frames)
    model, _ = make_model(config, key=key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return params, static, config


def library_step(name: str, preset: str, batch: VideoBatch, key, optimizer=None):
    """eqvid's own train step (`eqvid.train.make_train_step`) for model `name` on the
    one-device mesh, as `train()` runs it: `(step, train_state, rest)`; call
    `step(train_state, rest, batch, None, 1)`."""
    config = config_for(name, preset, batch.frames("benchmark").shape[1])
    model, state = make_model(config, key=key)
    optimizer = optax.adam(1e-4) if optimizer is None else optimizer
    plan = ParameterPlan(model)
    mesh = make_mesh(MeshConfig(devices=1))
    train_state, rest = init_train_state(model, state, optimizer, plan, mesh)
    return make_train_step(optimizer, plan, mesh), train_state, rest


def parameter_count(params) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))
