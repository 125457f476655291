"""What the frame-predicting families on the ResNet frame codec share (ConvS5,
ConvLSTM, the Transformer baseline): their common config fields, checks of frames
and actions, and the released ConvS5 objective."""

import dataclasses
from typing import TypeVar

import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Scalar

from ._registry import preset_of


def check_frames(model, frames, name: str) -> None:
    """Each frame (`frames.shape[1:]`) must be `(frame_size, frame_size, channels)` of
    `model.config`; the error names the argument `name`."""
    c = model.config
    want = (c.frame_size, c.frame_size, c.channels)
    if tuple(frames.shape[1:]) != want:
        raise ValueError(
            f"{type(model).__name__}: `{name}` frames must be (height, width, channels) = "
            f"{want} for this config, got {tuple(frames.shape[1:])}."
        )


def check_context(model, context) -> None:
    """`context` must hold at least one frame of the model's size."""
    check_frames(model, context, "context")
    if context.shape[0] < 1:
        raise ValueError(f"{type(model).__name__}: `context` needs at least 1 frame, got 0.")


def check_teacher_forcing(model, frames) -> None:
    """Teacher forcing needs at least two frames of the model's size."""
    check_frames(model, frames, "frames")
    if frames.shape[0] < 2:
        raise ValueError(
            f"{type(model).__name__}: `frames` needs at least 2 frames for teacher "
            f"forcing, got {frames.shape[0]}."
        )


def no_actions(length: int) -> Int[Array, " time"]:
    """`length` "no action" entries (`-1`)."""
    return jnp.full((length,), -1, jnp.int32)


def rollout_actions(
    actions: Int[Array, " total"] | None, n_context: int, num_frames: int
) -> Int[Array, " total"]:
    """Check `num_frames ≥ 1` and that `actions` covers context and generated frames
    (all "no action" if absent)."""
    if num_frames < 1:
        raise ValueError(f"generate: `num_frames` must be ≥ 1, got {num_frames}.")
    if actions is None:
        return no_actions(n_context + num_frames)
    if actions.shape[0] != n_context + num_frames:
        raise ValueError(
            f"generate: `actions` must cover context and generated frames, shape "
            f"({n_context + num_frames},); got {actions.shape}."
        )
    return actions


def released_loss(
    predictions: Float[Array, "time height width channels"],
    targets: Float[Array, "time height width channels"],
    weight: float,
) -> tuple[Scalar, dict[str, Scalar]]:
    """The released ConvS5 objective `w · mean Σ_{W,C}(ŷ-y)² + (1-w) · mean Σ_{W,C}|ŷ-y|`
    (means over time and rows) with its two terms: `(loss, {"squared_error": …,
    "absolute_error": …})`."""
    err = predictions - targets.astype(predictions.dtype)
    sq = jnp.mean(jnp.sum(jnp.square(err), axis=(-2, -1)))
    ab = jnp.mean(jnp.sum(jnp.abs(err), axis=(-2, -1)))
    return weight * sq + (1 - weight) * ab, {"squared_error": sq, "absolute_error": ab}


def check_loss_weight(config) -> None:
    """Validate `loss_weight ∈ [0, 1]`."""
    if not 0.0 <= config.loss_weight <= 1.0:
        raise ValueError(
            f"{type(config).__name__}: `loss_weight` must be in [0, 1], got {config.loss_weight}."
        )


def check_positive(config, *names: str) -> None:
    """Each named field of `config` must be an int ≥ 1 (the error names the field)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"{type(config).__name__}: `{name}` must be an int ≥ 1, got {value!r}."
            )


def check_encoder(config) -> None:
    """`encoder_depths` positive, and `frame_size` divisible by the encoder's downsampling."""
    name = type(config).__name__
    if not config.encoder_depths or min(config.encoder_depths) < 1:
        raise ValueError(
            f"{name}: `encoder_depths` must be positive channel counts, got "
            f"{config.encoder_depths}."
        )
    down = 2 ** (len(config.encoder_depths) - 1)
    if config.frame_size % down:
        raise ValueError(
            f"{name}: `frame_size` ({config.frame_size}) must be divisible by the "
            f"encoder's downsampling 2**(len(encoder_depths)-1) = {down}; use a frame "
            f"size that is a multiple of {down} or fewer encoder stages."
        )


_Config = TypeVar("_Config", bound="FramePredictorConfig")


@dataclasses.dataclass(frozen=True)
class FramePredictorConfig:
    """The fields every frame predictor on the ResNet codec shares; a family's config
    adds its own. Validated on construction."""

    frame_size: int = 64
    """Height and width of the frames."""
    channels: int = 1
    """Colour channels of the frames (1 for Moving MNIST)."""
    encoder_depths: tuple[int, ...] = (64, 128, 256)
    """Channels per encoder (and mirrored decoder) stage; each stage after the first
    halves the resolution."""
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
        check_positive(self, "frame_size", "channels", "action_dim", "action_embed_dim")
        check_encoder(self)
        check_loss_weight(self)

    @property
    def latent_size(self) -> int:
        """Height and width of the encoder's latent grid."""
        return self.frame_size // 2 ** (len(self.encoder_depths) - 1)

    @classmethod
    def preset(cls: type[_Config], name: str) -> _Config:
        """A named configuration of this family (`"small"`, and the papers' presets
        `"mnist-300"`, `"mnist-600"`)."""
        return preset_of(cls, name)
