"""The frame codec shared by the "novq" video predictors.

Encoder, action embedding, 1×1 projection to `d_model`, decoder, the released loss,
input checks and the recurrent rollout of the released ConvS5 models;
`ConvS5VideoModel` and `ConvLSTMVideoModel` use them around their own layer stacks.
Each model keeps these parts as its own fields (not a sub-module), so parameter
paths (`.encoder…`, `.layers[i]…`) are the ones checkpoints know.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from ..nn._conv import Conv2d
from ..nn._resnet import ResNetDecoder, ResNetEncoder


def check_codec_config(config) -> None:
    """Validate `encoder_depths` and `frame_size` of a model config (errors name the
    field and the config class)."""
    name = type(config).__name__
    down = 2 ** (len(config.encoder_depths) - 1)
    if not config.encoder_depths or min(config.encoder_depths) < 1:
        raise ValueError(
            f"{name}: `encoder_depths` must be positive channel counts, got "
            f"{config.encoder_depths}."
        )
    if config.frame_size % down:
        raise ValueError(
            f"{name}: `frame_size` ({config.frame_size}) must be divisible by the "
            f"encoder's downsampling 2**(len(encoder_depths)-1) = {down}; use a frame "
            f"size that is a multiple of {down} or fewer encoder stages."
        )


def check_loss_weight(config) -> None:
    """Validate `loss_weight ∈ [0, 1]`."""
    if not 0.0 <= config.loss_weight <= 1.0:
        raise ValueError(
            f"{type(config).__name__}: `loss_weight` must be in [0, 1], got {config.loss_weight}."
        )


def make_codec(
    config,
    *,
    encoder_key: PRNGKeyArray,
    action_key: PRNGKeyArray,
    project_key: PRNGKeyArray,
    decoder_key: PRNGKeyArray,
) -> tuple[ResNetEncoder, Float[Array, "actions embed"], Conv2d, ResNetDecoder]:
    """`(encoder, action_embedding, project, decoder)` for `config` (frame_size, channels,
    encoder_depths, d_model, action_dim, action_embed_dim)."""
    c = config
    encoder = ResNetEncoder(c.channels, c.encoder_depths, key=encoder_key)
    action_embedding = jax.random.normal(
        action_key, (c.action_dim + 1, c.action_embed_dim), jnp.float32
    )
    project = Conv2d(c.encoder_depths[-1] + c.action_embed_dim, c.d_model, 1, key=project_key)
    decoder = ResNetDecoder(c.d_model, c.encoder_depths, c.channels, key=decoder_key)
    return encoder, action_embedding, project, decoder


def embed_frames(
    model,
    frames: Float[Array, "*time height width channels"],
    actions: Int[Array, "*time"],
) -> Float[Array, "*time h_latent w_latent d_model"]:
    """Encode frames and append the tiled action embedding (`-1` = no action), then
    project to `d_model` channels (`model` has `encoder`, `action_embedding`, `project`)."""
    z = model.encoder(frames)
    a = model.action_embedding[actions + 1]
    a = jnp.broadcast_to(a[..., None, None, :], z.shape[:-1] + a.shape[-1:])
    return model.project(jnp.concatenate([z, a], axis=-1))


def decode_latents(
    model, h: Float[Array, "*time h_latent w_latent d_model"]
) -> Float[Array, "*time height width channels"]:
    """Frames in `[-1, 1]` from latents: `tanh(model.decoder(h))`."""
    return jnp.tanh(model.decoder(h))


def no_actions(length: int) -> Int[Array, " time"]:
    """`length` "no action" entries (`-1`)."""
    return jnp.full((length,), -1, jnp.int32)


def released_loss(
    predictions: Float[Array, "time height width channels"],
    targets: Float[Array, "time height width channels"],
    weight: float,
) -> Scalar:
    """`w · mean Σ_{W,C}(ŷ-y)² + (1-w) · mean Σ_{W,C}|ŷ-y|` (the released objective)."""
    err = predictions - targets
    sq = jnp.mean(jnp.sum(jnp.square(err), axis=(-2, -1)))
    ab = jnp.mean(jnp.sum(jnp.abs(err), axis=(-2, -1)))
    return weight * sq + (1 - weight) * ab


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


def check_teacher_forcing(model, frames) -> None:
    """Teacher forcing needs at least two frames."""
    if frames.shape[0] < 2:
        raise ValueError(
            f"{type(model).__name__}: `frames` needs at least 2 frames for teacher "
            f"forcing, got {frames.shape[0]}."
        )


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


def step_layers(model, states, frame, action):
    """One frame through the codec and `model.layers` (each `layer.step(state, h) →
    (state, h)`): `(new_states, prediction of the next frame)`."""
    if action is None:
        action = jnp.asarray(-1, jnp.int32)
    h = embed_frames(model, frame, action)
    new = []
    for layer, state in zip(model.layers, states):
        state, h = layer.step(state, h)
        new.append(state)
    return tuple(new), decode_latents(model, h)


def rollout(model, states, first, actions: Int[Array, " steps"]):
    """`[first, model.step(...), …]`: `len(actions) + 1` frames, each prediction fed
    back as the next input inside one `lax.scan` (`actions[i]` goes with the `i`-th
    fed-back frame)."""

    def body(carry, action):
        states, frame = carry
        states, frame = model.step(states, frame, action)
        return (states, frame), frame

    _, rest = jax.lax.scan(body, (states, first), actions)
    return jnp.concatenate([first[None], rest], axis=0)
