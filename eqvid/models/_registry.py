"""Models by name: the config class, presets and module of each video predictor.

`train(config)` and the example scripts build any model from its config, so a
new model becomes trainable by adding one `ModelSpec` here.
"""

import dataclasses
from typing import Any

from jaxtyping import PRNGKeyArray

from ._abstract import AbstractVideoPredictor
from ._convlstm_video import CONVLSTM_PRESETS, ConvLSTMConfig, ConvLSTMVideoModel
from ._convs5_video import CONVS5_PRESETS, ConvS5Config, ConvS5VideoModel
from ._transformer_video import TRANSFORMER_PRESETS, TransformerConfig, TransformerVideoModel

ModelConfig = ConvS5Config | ConvLSTMConfig | TransformerConfig
"""The config of any eqvid video predictor."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What it takes to build one kind of model."""

    name: str
    """Its name on the command line (`--model`)."""
    title: str
    """Its name in reports."""
    config: type
    """Its frozen config dataclass."""
    module: type[AbstractVideoPredictor]
    """Its Equinox module, built as `module(config, key=key)`."""
    presets: dict[str, Any]
    """Named configs."""


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("convs5", "ConvS5", ConvS5Config, ConvS5VideoModel, CONVS5_PRESETS),
        ModelSpec("convlstm", "ConvLSTM", ConvLSTMConfig, ConvLSTMVideoModel, CONVLSTM_PRESETS),
        ModelSpec(
            "transformer",
            "Transformer",
            TransformerConfig,
            TransformerVideoModel,
            TRANSFORMER_PRESETS,
        ),
    )
}


def model_spec(config_or_name: Any) -> ModelSpec:
    """The `ModelSpec` of a model name (`"convs5"`, …) or of a model config instance."""
    if isinstance(config_or_name, str):
        try:
            return MODELS[config_or_name]
        except KeyError:
            raise ValueError(
                f"unknown model {config_or_name!r}; choose one of {sorted(MODELS)}."
            ) from None
    for spec in MODELS.values():
        if type(config_or_name) is spec.config:
            return spec
    raise TypeError(
        f"expected a model config ({', '.join(s.config.__name__ for s in MODELS.values())}); "
        f"got {type(config_or_name).__name__}."
    )


def make_model(config: ModelConfig, *, key: PRNGKeyArray) -> AbstractVideoPredictor:
    """Build the video predictor that `config` describes (its class follows the
    config's type)."""
    return model_spec(config).module(config, key=key)
