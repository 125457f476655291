"""Model families by name: each registers one `ModelSpec` from its own file.

`eqvid.train` and `eqvid.evaluate` build any model from its config or from the
model name recorded in a run's `config.json`, so a new family becomes trainable and
evaluable by calling `register_model` once, with no edit to either.
"""

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from ._abstract import AbstractModel


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What it takes to build one family of models."""

    name: str
    """Its name on the command line (`--model`) and in `config.json`."""
    title: str
    """Its name in reports."""
    config: type
    """Its frozen config dataclass (must have `frame_size` and `channels`)."""
    module: type[AbstractModel]
    """Its final Equinox module (an `AbstractVideoModel` or an `AbstractVideoTokenizer`),
    built as `module(config, key=key)`."""
    presets: Mapping[str, Any]
    """Named configs (`"small"` must exist: the command line starts from it)."""

    def __post_init__(self):
        if "small" not in self.presets:
            raise ValueError(f"ModelSpec {self.name!r}: the presets need a 'small' entry.")
        for name, preset in self.presets.items():
            if type(preset) is not self.config:
                raise TypeError(
                    f"ModelSpec {self.name!r}: preset {name!r} is a {type(preset).__name__}, "
                    f"not a {self.config.__name__}."
                )

    def preset(self, name: str) -> Any:
        """The named config."""
        try:
            return self.presets[name]
        except KeyError:
            raise ValueError(
                f"Unknown {self.title} preset {name!r}; choose one of {sorted(self.presets)}."
            ) from None


MODELS: dict[str, ModelSpec] = {}
"""Every registered family, by name (filled as the families' modules are imported)."""


def register_model(spec: ModelSpec) -> ModelSpec:
    """Make a family known to `make_model`, `model_spec`, training and evaluation
    (called once, at the bottom of the family's own file)."""
    for other in MODELS.values():
        if other.name == spec.name or other.config is spec.config:
            raise ValueError(
                f"register_model: {spec.name!r} ({spec.config.__name__}) clashes with the "
                f"registered {other.name!r} ({other.config.__name__})."
            )
    MODELS[spec.name] = spec
    return spec


def model_spec(config_or_name: Any) -> ModelSpec:
    """The `ModelSpec` of a model name (`"convs5"`, …), of a config instance, or of a
    config class."""
    if isinstance(config_or_name, str):
        try:
            return MODELS[config_or_name]
        except KeyError:
            raise ValueError(
                f"unknown model {config_or_name!r}; choose one of {sorted(MODELS)}."
            ) from None
    cls = config_or_name if isinstance(config_or_name, type) else type(config_or_name)
    for spec in MODELS.values():
        if cls is spec.config:
            return spec
    raise TypeError(
        f"expected the config of a registered model "
        f"({', '.join(s.config.__name__ for s in MODELS.values())}); got {cls.__name__}."
    )


def preset_of(config_class: type, name: str) -> Any:
    """The preset `name` of the family whose config class is `config_class`."""
    return model_spec(config_class).preset(name)


def make_model(config: Any, *, key: PRNGKeyArray) -> tuple[AbstractModel, eqx.nn.State | None]:
    """Build the model `config` describes (its class follows the config's type) with
    its initial state: `(model, state)`, `state` None for a model without any."""
    spec = model_spec(config)
    build = typing.cast(Callable[..., AbstractModel], spec.module)
    model, state = eqx.nn.make_with_state(build)(config, key=key)
    return model, (state if jax.tree_util.tree_leaves(state) else None)
