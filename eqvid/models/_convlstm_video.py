"""ConvLSTM video predictor: the ConvS5 paper's ConvLSTM ("novq") baseline.

The `ConvS5VideoModel` with its ConvS5 layers replaced by `ConvLSTM` layers, as in
the released ConvSSM code (`src/models/sequence_models/noVQ/convLSTM.py`): the same
per-frame ResNet encoder, action embedding and 1×1 projection to `d_model`, ResNet
decoder, loss and teacher forcing; each layer is a ConvLSTM with hidden size
`d_model` and a post-LayerNorm residual. Parameter counts of the released
MNIST-300 / MNIST-600 configurations are reproduced. There is no parallel form:
the context and the rollout both run with `lax.scan`.
"""

import dataclasses

import equinox as eqx
import jax
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from ..nn._conv import Conv2d
from ..nn._convlstm import ConvLSTM
from ..nn._resnet import ResNetDecoder, ResNetEncoder
from ._abstract import AbstractVideoPredictor
from ._codec import (
    check_codec_config,
    check_frames,
    check_loss_weight,
    check_teacher_forcing,
    decode_latents,
    embed_frames,
    make_codec,
    no_actions,
    released_loss,
    rollout,
    rollout_actions,
    step_layers,
)


@dataclasses.dataclass(frozen=True)
class ConvLSTMConfig:
    """Architecture of a `ConvLSTMVideoModel`. Presets: `ConvLSTMConfig.preset(name)`.

    The released configurations train with AdamW at learning rate 5e-4 (cosine
    schedule, 5k warm-up steps, weight decay 1e-5), lower than ConvS5's 1e-3.
    """

    frame_size: int = 64
    """Height and width of the frames."""
    channels: int = 1
    """Colour channels of the frames (1 for Moving MNIST)."""
    encoder_depths: tuple[int, ...] = (64, 128, 256)
    """Channels per encoder stage; each stage after the first halves the resolution."""
    d_model: int = 256
    """Channels `U` of the ConvLSTM stack, and each layer's hidden size `P`."""
    n_layers: int = 8
    """Number of ConvLSTM layers."""
    kernel_size: int = 3
    """Kernel size of the gate convolution on `[u_t, h_{t-1}]`."""
    action_dim: int = 1
    """Number of distinct actions (embedding table has one more row: no action)."""
    action_embed_dim: int = 1
    """Width of the action embedding, tiled over the latent grid."""
    loss_weight: float = 0.5
    """Loss = w · Σ_{W,C}(ŷ-y)² + (1-w) · Σ_{W,C}|ŷ-y|, averaged over time and rows."""
    remat: bool = False
    """Recompute each layer's activations in the backward pass instead of storing them
    (less memory for long videos, about one more forward pass of compute)."""

    def __post_init__(self):
        check_codec_config(self)
        for name in ("channels", "d_model", "n_layers", "action_dim", "action_embed_dim"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"ConvLSTMConfig: `{name}` must be positive, got {value}.")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"ConvLSTMConfig: `kernel_size` must be a positive odd integer (SAME "
                f"padding), got {self.kernel_size}."
            )
        check_loss_weight(self)

    @property
    def latent_size(self) -> int:
        return self.frame_size // 2 ** (len(self.encoder_depths) - 1)

    @staticmethod
    def preset(name: str) -> "ConvLSTMConfig":
        """A named configuration: `"mnist-300"`, `"mnist-600"` (the paper's, 40.54M and
        12.12M parameters) or `"small"` (the encoder and width of ConvS5's `small`)."""
        try:
            return CONVLSTM_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"Unknown ConvLSTM preset {name!r}; choose one of {sorted(CONVLSTM_PRESETS)}."
            ) from None


CONVLSTM_PRESETS: dict[str, ConvLSTMConfig] = {
    # Released configs/Moving-MNIST/300_train_len/mnist_convLSTM_novq.yaml.
    "mnist-300": ConvLSTMConfig(d_model=256, n_layers=8),
    # Released configs/Moving-MNIST/600_train_len/mnist_convLSTM_novq.yaml.
    "mnist-600": ConvLSTMConfig(d_model=128, n_layers=8),
    # ConvS5's "small" encoder and width (64x64 frames → 8x8 latents) with 2 ConvLSTM layers.
    "small": ConvLSTMConfig(encoder_depths=(8, 16, 32, 64), d_model=64, n_layers=2),
}

LayerStates = tuple[
    tuple[Float[Array, "h_latent w_latent d_model"], Float[Array, "h_latent w_latent d_model"]],
    ...,
]
"""One `(h, c)` per layer (axis names apart from the frames' `height width`)."""


class ConvLSTMVideoModel(AbstractVideoPredictor):
    """The ConvLSTM video predictor (deterministic; trained with teacher forcing).

    `model(frames)` predicts frames `1…T-1` from `0…T-2`, each layer a `lax.scan`
    over time; `model.generate(context, n)` runs the context through the layers
    and rolls out `n` frames with `step` inside `lax.scan`, feeding each prediction
    back as the next input. States are one `(h, c)` pair per layer.
    """

    encoder: ResNetEncoder
    action_embedding: Float[Array, "actions embed"]
    project: Conv2d
    layers: tuple[ConvLSTM, ...]
    decoder: ResNetDecoder
    config: ConvLSTMConfig = eqx.field(static=True)

    def __init__(self, config: ConvLSTMConfig, *, key: PRNGKeyArray):
        ke, ka, kp, kl, kd = jax.random.split(key, 5)
        c = config
        self.encoder, self.action_embedding, self.project, self.decoder = make_codec(
            c, encoder_key=ke, action_key=ka, project_key=kp, decoder_key=kd
        )
        self.layers = tuple(
            ConvLSTM(c.d_model, c.kernel_size, key=k) for k in jax.random.split(kl, c.n_layers)
        )
        self.config = config

    def init_state(self) -> LayerStates:
        """Zero `(h, c)` for every layer."""
        s = self.config.latent_size
        return tuple(layer.init_state(s, s) for layer in self.layers)

    def _sequence(self, h, states):
        def run(layer, h, state):
            return layer(h, state)

        if self.config.remat:
            run = eqx.filter_checkpoint(run)
        last = []
        for layer, state in zip(self.layers, states):
            h, x = run(layer, h, state)
            last.append(x)
        return h, tuple(last)

    # -- public API --------------------------------------------------------------

    def __call__(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
    ) -> Float[Array, "time-1 height width channels"]:
        """Teacher-forced predictions of frames `1…T-1` given frames `0…T-2`.

        The input for step `t` pairs frame `t` with the action taken towards frame
        `t + 1` (`actions[t + 1]`), as in the released code.
        """
        check_frames(self, frames, "frames")
        check_teacher_forcing(self, frames)
        if actions is None:
            actions = no_actions(frames.shape[0])
        h = embed_frames(self, frames[:-1], actions[1:])
        h, _ = self._sequence(h, self.init_state())
        return decode_latents(self, h)

    def loss(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Scalar:
        """`w · mean Σ_{W,C}(ŷ-y)² + (1-w) · mean Σ_{W,C}|ŷ-y|` over frames 1…T-1 (the
        released objective, `w = config.loss_weight`); deterministic: `key` is accepted
        for the common interface and unused."""
        return released_loss(self(frames, actions), frames[1:], self.config.loss_weight)

    def step(
        self,
        states: LayerStates,
        frame: Float[Array, "height width channels"],
        action: Int[Array, ""] | None = None,
    ) -> tuple[LayerStates, Float[Array, "height width channels"]]:
        """One frame in, the next frame's prediction out: `(states, frame, action) →
        (new_states, prediction)`. `action` is the one taken towards the next frame."""
        check_frames(self, frame[None], "frame")
        return step_layers(self, states, frame, action)

    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray | None = None,
        actions: Int[Array, " total"] | None = None,
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Predict `num_frames` frames after `context` (deterministic: `key` is
        accepted for the common interface and unused).

        The context goes through the layers (one `lax.scan` each); their last states
        seed the rollout, one `step` per frame inside `lax.scan`.
        """
        del key
        check_frames(self, context, "context")
        n_ctx = context.shape[0]
        if n_ctx < 1:
            raise ValueError("generate: `context` needs at least 1 frame, got 0.")
        actions = rollout_actions(actions, n_ctx, num_frames)
        h = embed_frames(self, context, actions[1 : n_ctx + 1])
        h, states = self._sequence(h, self.init_state())
        return rollout(self, states, decode_latents(self, h[-1]), actions[n_ctx + 1 :])
