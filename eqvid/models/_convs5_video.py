"""ConvS5 video predictor: per-frame ResNet encoder → ConvS5 stack → ResNet decoder.

The Moving-MNIST ("novq") model of Smith et al. (NeurIPS 2023), reproduced
layer for layer (parameter counts of the released MNIST-300 / MNIST-600
configurations), with the batch size never baked in and a jitted O(1)-per-frame
rollout.
"""

import dataclasses

import equinox as eqx
import jax
from jaxtyping import Array, Complex, Float, Int, PRNGKeyArray, Scalar

from ..nn._conv import Conv2d
from ..nn._convs5 import ConvS5, ScanImpl
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
class ConvS5Config:
    """Architecture of a `ConvS5VideoModel`. Presets: `ConvS5Config.preset(name)`."""

    frame_size: int = 64
    """Height and width of the frames."""
    channels: int = 1
    """Colour channels of the frames (1 for Moving MNIST)."""
    encoder_depths: tuple[int, ...] = (64, 128, 256)
    """Channels per encoder stage; each stage after the first halves the resolution."""
    d_model: int = 256
    """Channels `U` of the ConvS5 stack."""
    n_layers: int = 8
    """Number of ConvS5 layers."""
    ssm_size: int = 256
    """HiPPO size `N` per layer; the complex state has `N // 2` channels."""
    blocks: int = 1
    """HiPPO blocks `J`."""
    kernel_size: int = 3
    """Kernel size of the B, C and output-map convolutions."""
    dt_min: float = 1e-3
    """Smallest initial time step."""
    dt_max: float = 1e-1
    """Largest initial time step."""
    clip_eigs: bool = True
    """Clamp Re Λ ≤ -1e-4 (stable recurrence)."""
    action_dim: int = 1
    """Number of distinct actions (embedding table has one more row: no action)."""
    action_embed_dim: int = 1
    """Width of the action embedding, tiled over the latent grid."""
    loss_weight: float = 0.5
    """Loss = w · Σ_{W,C}(ŷ-y)² + (1-w) · Σ_{W,C}|ŷ-y|, averaged over time and rows."""
    dropout: float = 0.0
    """Dropout rate on each layer's output map during training (0 in the released
    configs); generation never drops."""
    remat: bool = False
    """Recompute each layer's activations in the backward pass instead of storing them
    (less memory for long videos, about one more forward pass of compute)."""

    def __post_init__(self):
        check_codec_config(self)
        if self.ssm_size % (2 * self.blocks):
            raise ValueError(
                f"ConvS5Config: `ssm_size` ({self.ssm_size}) must be divisible by "
                f"2 * blocks = {2 * self.blocks} (blocks of conjugate pairs)."
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"ConvS5Config: need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, "
                f"dt_max={self.dt_max}."
            )
        check_loss_weight(self)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ConvS5Config: `dropout` must be in [0, 1), got {self.dropout}.")

    @property
    def latent_size(self) -> int:
        return self.frame_size // 2 ** (len(self.encoder_depths) - 1)

    @staticmethod
    def preset(name: str) -> "ConvS5Config":
        """A named configuration: `"mnist-300"`, `"mnist-600"` (the paper's, 21.68M and
        7.41M parameters) or `"small"` (trains on a 2-core CPU in minutes)."""
        try:
            return CONVS5_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"Unknown ConvS5 preset {name!r}; choose one of {sorted(CONVS5_PRESETS)}."
            ) from None


CONVS5_PRESETS: dict[str, ConvS5Config] = {
    # Released configs/Moving-MNIST/300_train_len/mnist_convS5_novq.yaml.
    "mnist-300": ConvS5Config(d_model=256, ssm_size=256, n_layers=8),
    # Released configs/Moving-MNIST/600_train_len/mnist_convS5_novq.yaml.
    "mnist-600": ConvS5Config(d_model=128, ssm_size=128, n_layers=8),
    # Small enough to learn Moving MNIST on a laptop CPU in a few minutes.
    # (64x64 frames → 8x8 latents; 0.46M parameters.)
    "small": ConvS5Config(encoder_depths=(8, 16, 32, 64), d_model=64, ssm_size=64, n_layers=2),
}

LayerStates = tuple[Complex[Array, "h w state"], ...]


class ConvS5VideoModel(AbstractVideoPredictor):
    """The ConvS5 video predictor (deterministic; trained with teacher forcing).

    `model(frames)` predicts frames `1…T-1` from `0…T-2` in one parallel pass;
    `model.generate(context, n, key=key)` runs the context through the parallel
    scan and rolls out `n` frames with each layer's O(1) `step` inside
    `lax.scan`, feeding each prediction back as the next input.
    """

    encoder: ResNetEncoder
    action_embedding: Float[Array, "actions embed"]
    project: Conv2d
    layers: tuple[ConvS5, ...]
    decoder: ResNetDecoder
    config: ConvS5Config = eqx.field(static=True)

    def __init__(self, config: ConvS5Config, *, key: PRNGKeyArray):
        ke, ka, kp, kl, kd = jax.random.split(key, 5)
        c = config
        self.encoder, self.action_embedding, self.project, self.decoder = make_codec(
            c, encoder_key=ke, action_key=ka, project_key=kp, decoder_key=kd
        )
        self.layers = tuple(
            ConvS5(
                c.d_model,
                c.ssm_size,
                blocks=c.blocks,
                kernel_size=c.kernel_size,
                output_kernel_size=c.kernel_size,
                dt_min=c.dt_min,
                dt_max=c.dt_max,
                clip_eigs=c.clip_eigs,
                key=k,
            )
            for k in jax.random.split(kl, c.n_layers)
        )
        self.config = config

    # -- pieces ------------------------------------------------------------------

    def init_state(self) -> LayerStates:
        """Zero states for every layer."""
        s = self.config.latent_size
        return tuple(layer.init_state(s, s) for layer in self.layers)

    def _sequence(self, h, states, impl, key=None):
        rate = self.config.dropout

        def run(layer, h, state, key):
            return layer(h, state, impl=impl, dropout=rate, key=key)

        if self.config.remat:
            run = eqx.filter_checkpoint(run)
        keys = [None] * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        last = []
        for layer, state, k in zip(self.layers, states, keys):
            h, x = run(layer, h, state, k)
            last.append(x)
        return h, tuple(last)

    # -- public API --------------------------------------------------------------

    def __call__(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
        *,
        impl: ScanImpl = "auto",
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "time-1 height width channels"]:
        """Teacher-forced predictions of frames `1…T-1` given frames `0…T-2`.

        The input for step `t` pairs frame `t` with the action taken towards frame
        `t + 1` (`actions[t + 1]`), as in the released code. With a `key`, the
        layers apply `config.dropout` (training); without, they are deterministic.
        """
        check_frames(self, frames, "frames")
        check_teacher_forcing(self, frames)
        if actions is None:
            actions = no_actions(frames.shape[0])
        h = embed_frames(self, frames[:-1], actions[1:])
        h, _ = self._sequence(h, self.init_state(), impl, key)
        return decode_latents(self, h)

    def loss(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Scalar:
        """`w · mean Σ_{W,C}(ŷ-y)² + (1-w) · mean Σ_{W,C}|ŷ-y|` over frames 1…T-1 (the
        released ConvS5 objective, `w = config.loss_weight`); `key` drives dropout."""
        return released_loss(self(frames, actions, key=key), frames[1:], self.config.loss_weight)

    def step(
        self,
        states: LayerStates,
        frame: Float[Array, "height width channels"],
        action: Int[Array, ""] | None = None,
    ) -> tuple[LayerStates, Float[Array, "height width channels"]]:
        """One frame in, the next frame's prediction out, in O(1): `(states, frame,
        action) → (new_states, prediction)`."""
        return step_layers(self, states, frame, action)

    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray | None = None,
        actions: Int[Array, " total"] | None = None,
        impl: ScanImpl = "auto",
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Predict `num_frames` frames after `context` (deterministic: `key` is
        accepted for the common interface and unused).

        The context goes through the parallel scan; its last states seed the
        recurrent rollout, one `step` per frame inside `lax.scan`.
        """
        del key
        check_frames(self, context, "context")
        n_ctx = context.shape[0]
        actions = rollout_actions(actions, n_ctx, num_frames)
        h = embed_frames(self, context, actions[1 : n_ctx + 1])
        h, states = self._sequence(h, self.init_state(), impl)
        return rollout(self, states, decode_latents(self, h[-1]), actions[n_ctx + 1 :])
