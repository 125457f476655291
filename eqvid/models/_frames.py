"""What the frame-predicting families on the ResNet frame codec share (ConvS5,
ConvLSTM, the Transformer baseline): their common config fields, checks of frames
and actions, and the released ConvS5 objective."""

import dataclasses
from typing import TypeVar

import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Float, Int, Scalar

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


def check_actions(
    model, actions: Int[ArrayLike, "*time"], name: str = "actions"
) -> Int[Array, "*time"]:
    """Action ids must be signed integers in `[-1, action_dim)` (`-1`: no action).

    Known values (NumPy arrays, JAX arrays outside `jit`/`vmap`) raise a `ValueError`
    naming `name`, the first bad id, its index and the allowed range; a non-integer
    dtype raises either way. Traced ids (under `jit`, `vmap`, `scan`) cannot raise
    without a host callback in the program, which costs every step a device sync
    (+2–12 % measured on CPU) and aborts a multi-device program instead of raising
    (Equinox issue 1232): there an id outside the range embeds as NaN
    (`embed_actions`), so the prediction and the loss are NaN, never a clamped
    action's numbers. Training checks each batch on the host first
    (`AbstractVideoModel.check_batch`).
    """
    title = type(model).__name__
    n = model.config.action_dim
    allowed = f"[-1, action_dim) = [-1, {n}) (-1: no action)"
    dtype = jnp.result_type(actions)
    if not jnp.issubdtype(dtype, jnp.signedinteger):
        raise ValueError(
            f"{title}: `{name}` must be signed integer action ids in {allowed}, got dtype {dtype}."
        )
    if isinstance(actions, Tracer):
        return actions  # out-of-range ids embed as NaN (`embed_actions`)
    values = np.asarray(actions)
    bad = np.flatnonzero((values < -1) | (values >= n))
    if bad.size:
        got = f"got {values.flat[bad[0]]}"
        if values.ndim:
            index = tuple(int(i) for i in np.unravel_index(bad[0], values.shape))
            got += (
                f" at index {index[0] if len(index) == 1 else index} ({bad.size} of "
                f"{values.size} ids outside)"
            )
        raise ValueError(f"{title}: `{name}` must lie in {allowed}; {got}.")
    return jnp.asarray(actions)


def embed_actions(
    table: Float[Array, "actions_plus_one embed"], actions: Int[Array, "*time"]
) -> Float[Array, "*time embed"]:
    """Row `action + 1` of `table` (row 0: no action, `-1`); an id outside
    `[-1, len(table) - 1)` gives a NaN row, never a clamped neighbour's."""
    rows = actions + 1
    rows = jnp.where(rows < 0, table.shape[0], rows)  # negative would wrap around
    return table.at[rows].get(mode="fill", fill_value=jnp.nan)


def check_video_batch(model, video, actions) -> Int[Array, "batch time"] | None:
    """A loss needs at least one video (the mean of none is NaN); `actions`, if given,
    are checked as `check_actions` does (named `batch.actions`). Returns the checked
    actions (or `None`)."""
    if video.shape[0] < 1:
        raise ValueError(
            f"{type(model).__name__}: `batch` needs at least 1 video, got 0 "
            f"(video shape {tuple(video.shape)})."
        )
    if actions is None:
        return None
    return check_actions(model, actions, "batch.actions")


def no_actions(length: int) -> Int[Array, " time"]:
    """`length` "no action" entries (`-1`)."""
    return jnp.full((length,), -1, jnp.int32)


def frame_actions(
    model, actions: Int[Array, " time"] | None, num_frames: int
) -> Int[Array, " time"]:
    """The actions of `num_frames` frames (teacher forcing): one per frame, checked as
    `check_actions` does; all "no action" if absent."""
    if actions is None:
        return no_actions(num_frames)
    if actions.shape != (num_frames,):
        raise ValueError(
            f"{type(model).__name__}: `actions` must have one entry per frame, shape "
            f"({num_frames},); got {actions.shape}."
        )
    return check_actions(model, actions)


def rollout_actions(
    model, actions: Int[Array, " total"] | None, n_context: int, num_frames: int
) -> Int[Array, " total"]:
    """Check `num_frames ≥ 1` and that `actions` covers context and generated frames,
    checked as `check_actions` does; all "no action" if absent."""
    if num_frames < 1:
        raise ValueError(f"generate: `num_frames` must be ≥ 1, got {num_frames}.")
    if actions is None:
        return no_actions(n_context + num_frames)
    if actions.shape != (n_context + num_frames,):
        raise ValueError(
            f"generate: `actions` must cover context and generated frames, shape "
            f"({n_context + num_frames},); got {actions.shape}."
        )
    return check_actions(model, actions)


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
    patch = config.pixel_patch
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"{name}: `pixel_patch` must be an int ≥ 1, got {patch!r}.")
    down = patch * 2 ** (len(config.encoder_depths) - 1)
    if config.frame_size % down:
        raise ValueError(
            f"{name}: `frame_size` ({config.frame_size}) must be divisible by the "
            f"encoder's downsampling pixel_patch * 2**(len(encoder_depths)-1) = {down}; use "
            f"a frame size that is a multiple of {down}, a smaller pixel_patch or fewer "
            "encoder stages."
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
    pixel_patch: int = 1
    """Side of the pixel blocks folded into channels before the encoder (space-to-depth)
    and unfolded after the decoder, so the codec's first stage runs at `1/pixel_patch`
    of the frame size; 1 is the released architecture."""
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
        return self.frame_size // (self.pixel_patch * 2 ** (len(self.encoder_depths) - 1))

    @classmethod
    def preset(cls: type[_Config], name: str) -> _Config:
        """A named configuration of this family (`"small"`, and the papers' presets
        `"mnist-300"`, `"mnist-600"`)."""
        return preset_of(cls, name)
