"""The recurrent frame predictor, written once: per-frame ResNet encoder → a stack of
sequence layers (`eqvid.nn.AbstractSequenceLayer`: ConvS5, ConvLSTM, …) → ResNet
decoder, as in the "novq" models of the ConvS5 paper (Smith et al., NeurIPS 2023).

A family is its config (a `RecurrentConfig` with the layer's own fields) and a final
class that declares the fields and builds its layers; everything else (teacher
forcing, the released loss, O(1)-per-frame stepping, generation, validation) lives
here.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..nn._conv import Conv2d
from ..nn._resnet import ResNetDecoder, ResNetEncoder
from ..nn._sequence import AbstractSequenceLayer
from ._abstract import AbstractVideoModel, KeyOrKeys, LossTerms, VideoBatch, mean_over_videos
from ._frames import (
    FramePredictorConfig,
    check_actions,
    check_context,
    check_frames,
    check_positive,
    check_teacher_forcing,
    check_video_batch,
    embed_actions,
    frame_actions,
    no_actions,
    released_loss,
    rollout_actions,
)


@dataclasses.dataclass(frozen=True)
class RecurrentConfig(FramePredictorConfig):
    """The fields every recurrent frame predictor shares (its layer's config adds its
    own). Validated on construction."""

    d_model: int = 256
    """Channels `U` of the sequence-layer stack."""
    n_layers: int = 8
    """Number of sequence layers."""
    kernel_size: int = 3
    """Kernel size of the layers' convolutions (odd: SAME padding)."""
    decoder_skip: bool = False
    """Give the decoder's last stage the encoder's first-stage features of the input
    frame (a U-Net skip at `1/pixel_patch` of the resolution), so the prediction can
    keep the input's detail where the latent grid is coarse; `False` is the released
    architecture."""

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "d_model", "n_layers")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"{type(self).__name__}: `kernel_size` must be a positive odd integer (SAME "
                f"padding), got {self.kernel_size}."
            )


def make_codec(
    config: RecurrentConfig, key: PRNGKeyArray
) -> tuple[ResNetEncoder, Float[Array, "actions embed"], Conv2d, ResNetDecoder, PRNGKeyArray]:
    """`(encoder, action_embedding, project, decoder, layer_key)` for `config`; the
    layers are built from `layer_key` (keys split as the released models were)."""
    c = config
    ke, ka, kp, kl, kd = jax.random.split(key, 5)
    encoder = ResNetEncoder(c.channels, c.encoder_depths, patch=c.pixel_patch, key=ke)
    action_embedding = jax.random.normal(ka, (c.action_dim + 1, c.action_embed_dim), jnp.float32)
    project = Conv2d(c.encoder_depths[-1] + c.action_embed_dim, c.d_model, 1, key=kp)
    skip = c.encoder_depths[0] if c.decoder_skip else 0
    decoder = ResNetDecoder(
        c.d_model, c.encoder_depths, c.channels, patch=c.pixel_patch, skip_channels=skip, key=kd
    )
    return encoder, action_embedding, project, decoder, kl


class AbstractRecurrentVideoModel(AbstractVideoModel):
    """A deterministic frame predictor over a stack of sequence layers, trained with
    teacher forcing.

    `model(frames)` predicts frames `1…T-1` from `0…T-2` in one pass (each layer in
    parallel over time where it can); `model.generate(context, n, key=key)` runs the
    context through the layers and rolls out `n` frames with each layer's O(1) `step`
    inside `lax.scan`, feeding each prediction back as the next input.

    The input for step `t` pairs frame `t` with the action taken towards frame
    `t + 1` (`actions[t + 1]`), as in the released code.
    """

    encoder: eqx.AbstractVar[ResNetEncoder]
    action_embedding: eqx.AbstractVar[Float[Array, "actions embed"]]
    project: eqx.AbstractVar[Conv2d]
    layers: eqx.AbstractVar[tuple[AbstractSequenceLayer, ...]]
    decoder: eqx.AbstractVar[ResNetDecoder]
    config: eqx.AbstractVar[RecurrentConfig]

    # -- pieces ------------------------------------------------------------------

    def init_state(self) -> tuple[Any, ...]:
        """The zero state of every layer."""
        s = self.config.latent_size
        return tuple(layer.init_state(s, s) for layer in self.layers)

    def _embed(
        self, frames: Float[Array, "*time height width channels"], actions: Int[Array, "*time"]
    ) -> tuple[
        Float[Array, "*time h_latent w_latent d_model"],
        Float[Array, "*time h_first w_first c_first"] | None,
    ]:
        """Encode frames, append the tiled action embedding (`-1` = no action), project
        to `d_model` channels: `(h, skip)`, `skip` the encoder's first stage for the
        decoder (`None` without `config.decoder_skip`)."""
        z, first = self.encoder.with_first_stage(frames)
        a = embed_actions(self.action_embedding, actions).astype(z.dtype)
        a = jnp.broadcast_to(a[..., None, None, :], z.shape[:-1] + a.shape[-1:])
        h = self.project(jnp.concatenate([z, a], axis=-1))
        return h, (first if self.config.decoder_skip else None)

    def _decode(
        self,
        h: Float[Array, "*time h_latent w_latent d_model"],
        skip: Float[Array, "*time h_first w_first c_first"] | None,
    ) -> Float[Array, "*time height width channels"]:
        """Frames in `[-1, 1]`: `tanh(decoder(h, skip))`."""
        return jnp.tanh(self.decoder(h, skip))

    def _sequence(self, h, states, key=None):
        """All layers over a whole video: `(outputs, last states)`."""

        def run(layer, h, state, key):
            return layer(h, state, key=key)

        if self.config.remat:
            run = eqx.filter_checkpoint(run)
        n = len(self.layers)
        keys = [None] * n if key is None else list(jax.random.split(key, n))
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
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "time-1 height width channels"]:
        """Teacher-forced predictions of frames `1…T-1` given frames `0…T-2`. With a
        `key` the layers apply their training randomness (dropout); without, they are
        deterministic."""
        check_teacher_forcing(self, frames)
        return self._teacher_forced(frames, frame_actions(self, actions, frames.shape[0]), key)

    def _teacher_forced(self, frames, actions, key):
        """`__call__` on frames and actions already checked."""
        h, skip = self._embed(frames[:-1], actions[1:])
        h, _ = self._sequence(h, self.init_state(), key)
        return self._decode(h, skip)

    def check_batch(
        self,
        video: Float[np.ndarray, "batch time height width channels"],
        actions: Int[np.ndarray, "batch time"] | None,
    ) -> None:
        """A batch of known values: at least one video, action ids in `[-1,
        action_dim)` (see `AbstractVideoModel.check_batch`)."""
        check_video_batch(self, video, actions)

    def loss(
        self,
        batch: VideoBatch,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """The released objective over frames `1…T-1` of every video (teacher forcing),
        averaged over the batch, with its terms `squared_error` and `absolute_error`;
        `key` drives dropout (`None`: deterministic). No model state."""
        del step
        actions = check_video_batch(self, batch.frames(type(self).__name__), batch.actions)

        def one(video, actions, key):
            check_teacher_forcing(self, video)
            if actions is None:
                actions = no_actions(video.shape[0])
            predictions = self._teacher_forced(video, actions, key)
            return released_loss(predictions, video[1:], self.config.loss_weight)

        loss, terms = mean_over_videos(
            one, VideoBatch(batch.frames(type(self).__name__), actions), key
        )
        return loss, terms, state

    def step(
        self,
        states: tuple[Any, ...],
        frame: Float[Array, "height width channels"],
        action: Int[Array, ""] | None = None,
    ) -> tuple[tuple[Any, ...], Float[Array, "height width channels"]]:
        """One frame in, the next frame's prediction out, in O(1): `(states, frame,
        action) → (new_states, prediction)`; `action` is the one taken towards the next
        frame."""
        check_frames(self, frame[None], "frame")
        if action is None:
            action = jnp.asarray(-1, jnp.int32)
        else:
            action = check_actions(self, action, "action")
        return self._step(states, frame, action)

    def _step(self, states, frame, action):
        """`step` on a frame and an action already checked."""
        h, skip = self._embed(frame, action)
        new = []
        for layer, state in zip(self.layers, states):
            state, h = layer.step(state, h)
            new.append(state)
        return tuple(new), self._decode(h, skip)

    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " total"] | None = None,
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Predict `num_frames` frames after `context` (deterministic: the same for
        every `key`).

        The context goes through the layers in parallel; their last states seed the
        recurrent rollout, one `step` per frame inside `lax.scan`.
        """
        del key
        check_context(self, context)
        n_ctx = context.shape[0]
        actions = rollout_actions(self, actions, n_ctx, num_frames)
        h, skip = self._embed(context, actions[1 : n_ctx + 1])
        h, states = self._sequence(h, self.init_state())
        first = self._decode(h[-1], None if skip is None else skip[-1])

        def body(carry, action):
            states, frame = carry
            states, frame = self._step(states, frame, action)  # actions checked above
            return (states, frame), frame

        _, rest = jax.lax.scan(body, (states, first), actions[n_ctx + 1 :])
        return jnp.concatenate([first[None], rest], axis=0)

    def with_state(self, state: eqx.nn.State | None) -> "AbstractRecurrentVideoModel":
        """No model state: the model itself."""
        del state
        return self
