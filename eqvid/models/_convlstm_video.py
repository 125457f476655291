"""ConvLSTM video predictor: the ConvS5 paper's ConvLSTM ("novq") baseline.

The recurrent frame predictor with ConvLSTM layers, as in the released ConvSSM code
(`src/models/sequence_models/noVQ/convLSTM.py`): the same per-frame ResNet encoder,
action embedding and 1×1 projection to `d_model`, ResNet decoder, loss and teacher
forcing as ConvS5; each layer a ConvLSTM with hidden size `d_model` and a
post-LayerNorm residual. Parameter counts of the released MNIST-300 / MNIST-600
configurations are reproduced. There is no parallel form: the context and the
rollout both run with `lax.scan`.
"""

import dataclasses

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from ..nn._conv import Conv2d
from ..nn._convlstm import ConvLSTM
from ..nn._resnet import ResNetDecoder, ResNetEncoder
from ._abstract import GroupSettings
from ._recurrent import AbstractRecurrentVideoModel, RecurrentConfig, make_codec
from ._registry import ModelSpec, register_model


@dataclasses.dataclass(frozen=True)
class ConvLSTMConfig(RecurrentConfig):
    """Architecture of a `ConvLSTMVideoModel` (the fields of `RecurrentConfig`; each
    layer's hidden size is `d_model`). Presets: `ConvLSTMConfig.preset(name)`.

    The released configurations train with AdamW at learning rate 5e-4 (cosine
    schedule, 5k warm-up steps, weight decay 1e-5), lower than ConvS5's 1e-3.
    """


CONVLSTM_PRESETS: dict[str, ConvLSTMConfig] = {
    # Released configs/Moving-MNIST/300_train_len/mnist_convLSTM_novq.yaml.
    "mnist-300": ConvLSTMConfig(d_model=256, n_layers=8),
    # Released configs/Moving-MNIST/600_train_len/mnist_convLSTM_novq.yaml.
    "mnist-600": ConvLSTMConfig(d_model=128, n_layers=8),
    # ConvS5's "small" codec and width (4×4 pixel patches, 64x64 frames → 8x8 latents)
    # with 2 ConvLSTM layers.
    "small": ConvLSTMConfig(pixel_patch=4, encoder_depths=(16, 64), d_model=64, n_layers=2),
}


class ConvLSTMVideoModel(AbstractRecurrentVideoModel):
    """The ConvLSTM video predictor (deterministic; trained with teacher forcing): the
    recurrent frame predictor of `AbstractRecurrentVideoModel` over `ConvLSTM` layers
    (states: one `(h, c)` pair per layer)."""

    encoder: ResNetEncoder
    action_embedding: Float[Array, "actions embed"]
    project: Conv2d
    layers: tuple[ConvLSTM, ...]
    decoder: ResNetDecoder
    config: ConvLSTMConfig = eqx.field(static=True)

    def __init__(self, config: ConvLSTMConfig, *, key: PRNGKeyArray):
        c = config
        self.encoder, self.action_embedding, self.project, self.decoder, layer_key = make_codec(
            c, key
        )
        self.layers = tuple(
            ConvLSTM(c.d_model, c.kernel_size, key=k)
            for k in jax.random.split(layer_key, c.n_layers)
        )
        self.config = config

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """One group: every parameter learns at the run's rate."""
        return {}


register_model(
    ModelSpec("convlstm", "ConvLSTM", ConvLSTMConfig, ConvLSTMVideoModel, CONVLSTM_PRESETS)
)
