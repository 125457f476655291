"""SlotSSM as an eqvid model family (`--model slotssm`): a ViT encoder per frame, the
SlotSSM stack over time (one selective SSM state per slot), and a decoder from each
frame's slots, for video reconstruction (the official example) or video prediction.

    tokens_t = ViTEncoder(frame_t)                     # (patches, dim)
    slots_t  = SlotSSM(tokens_≤t)                      # (slots, slot_dim), causal in time
    frame'   = decoder(slots_t)                        # ViT (MAE-style) or spatial broadcast

`task="reconstruct"` decodes frame `t` from `slots_t` (JindongJiang/SlotSSMs
`train.py`); `task="predict"` decodes frame `t + 1` from `slots_t`. Generation feeds
each predicted frame back through the encoder and one O(1) `SlotSSM.step`.
"""

import dataclasses
import typing
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..kernels.attention import AttentionImpl
from ..nn._slotssm import SlotSSM, TimeMixer
from ..nn._spatial_broadcast import SpatialBroadcastDecoder
from ..nn._vit import ViTDecoder, ViTEncoder
from ._abstract import (
    AbstractObjectCentricVideoModel,
    GroupSettings,
    KeyOrKeys,
    LossTerms,
    VideoBatch,
    mean_over_videos,
)
from ._frames import check_context, check_frames, check_positive
from ._registry import ModelSpec, preset_of, register_model


@dataclasses.dataclass(frozen=True)
class SlotSSMConfig:
    """Architecture and task of a `SlotSSMVideoModel`. Presets:
    `SlotSSMConfig.preset(name)` (`clevrer`: the official example's; `small`)."""

    frame_size: int = 128
    """Height and width of the frames."""
    channels: int = 3
    """Colour channels of the frames."""
    task: Literal["reconstruct", "predict"] = "reconstruct"
    """`reconstruct`: decode each frame from the slots that read it (the official
    example); `predict`: decode the next frame from them."""
    patch: int = 8
    """Side of the ViT encoder's (and decoder's) patches."""
    encoder_dim: int = 256
    """Width of the ViT encoder (its tokens go into the slots' read-in)."""
    encoder_layers: int = 6
    """Post-LN transformer layers of the encoder."""
    encoder_heads: int = 4
    """Attention heads of the encoder."""
    num_slots: int | tuple[int, ...] = 6
    """Slots per frame: one count for every block, or one per block (where it changes,
    the block's own learned slots read in the previous block's; see `eqvid.nn.SlotSSM`).
    The decoder gets the last block's."""
    slot_dim: int = 256
    """Width of each slot."""
    num_blocks: int = 4
    """SlotSSM blocks."""
    read_in_heads: int = 1
    """Heads of the read-in from the encoder's tokens."""
    inverted: bool = True
    """Inverted read-in (slots compete for each token), as the official example."""
    space_heads: int = 4
    """Heads of the slot self-attention."""
    time_mixer: TimeMixer = "mamba2"
    """The per-slot time mixer: `mamba2` (the official example's), `mamba1`, or
    `attention` (causal self-attention over each slot's past frames: the SlotTransformer
    baseline)."""
    d_state: int = 128
    """The selective SSM's state size."""
    headdim: int = 64
    """Mamba2's channels per head."""
    expand: int = 2
    """The selective SSM's inner width over `slot_dim`."""
    time_heads: int = 4
    """Heads of the `attention` time mixer."""
    max_frames: int = 1024
    """The most frames the `attention` time mixer attends over (training videos, and
    context plus generated frames; its cache's size)."""
    ffn: bool = False
    """An FFN after the slot self-attention in each block."""
    decoder: Literal["vit", "spatial_broadcast"] = "vit"
    """`vit`: the MAE-style decoder (the official example); `spatial_broadcast`: each
    slot decoded on its own and mixed by alpha masks (the slots' segmentation)."""
    decoder_dim: int = 256
    """Width of the ViT decoder."""
    decoder_layers: int = 4
    """Pre-LN transformer layers of the ViT decoder."""
    decoder_heads: int = 4
    """Attention heads of the ViT decoder."""
    broadcast_hidden: int = 192
    """Channels of the spatial broadcast decoder."""
    broadcast_size: int = 0
    """Grid the spatial broadcast decoder starts from (`frame_size` must be 8 or 16
    times it); 0: `frame_size / 8` (three 2× transposed convolutions, then a
    convolution)."""
    attention_impl: AttentionImpl = "auto"
    """`eqvid.kernels.attention` implementation of every attention."""

    def __post_init__(self):
        name = "SlotSSMConfig"
        check_positive(
            self, "frame_size", "channels", "patch", "encoder_dim", "encoder_layers",
            "encoder_heads", "slot_dim", "num_blocks", "read_in_heads", "space_heads",
            "d_state", "headdim", "expand", "time_heads", "max_frames", "decoder_dim",
            "decoder_layers", "decoder_heads", "broadcast_hidden",
        )  # fmt: skip
        counts = self.slot_counts
        if len(counts) != self.num_blocks or any(
            not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in counts
        ):
            raise ValueError(
                f"{name}: `num_slots` must be one count ≥ 1 or one per block "
                f"(`num_blocks` = {self.num_blocks}); got {self.num_slots!r}."
            )
        for field, allowed in (
            ("task", ("reconstruct", "predict")),
            ("time_mixer", typing.get_args(TimeMixer)),
            ("decoder", ("vit", "spatial_broadcast")),
            ("attention_impl", typing.get_args(AttentionImpl)),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"{name}: `{field}` must be one of {allowed}, got {getattr(self, field)!r}."
                )
        if self.frame_size % self.patch:
            raise ValueError(
                f"{name}: `patch` ({self.patch}) must divide `frame_size` ({self.frame_size})."
            )
        for width, heads in (
            ("encoder_dim", "encoder_heads"),
            ("slot_dim", "space_heads"),
            ("slot_dim", "read_in_heads"),
            ("slot_dim", "time_heads"),
            ("decoder_dim", "decoder_heads"),
        ):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"{name}: `{heads}` ({getattr(self, heads)}) must divide `{width}` "
                    f"({getattr(self, width)})."
                )
        if self.time_mixer == "mamba2" and (self.expand * self.slot_dim) % self.headdim:
            raise ValueError(
                f"{name}: `headdim` ({self.headdim}) must divide expand · slot_dim = "
                f"{self.expand * self.slot_dim}."
            )
        if self.broadcast_size < 0:
            raise ValueError(f"{name}: `broadcast_size` must be ≥ 0, got {self.broadcast_size}.")
        if self.decoder == "spatial_broadcast" and self.frame_size not in (
            8 * self.start_size,
            16 * self.start_size,
        ):
            raise ValueError(
                f"{name}: with the spatial broadcast decoder `frame_size` ({self.frame_size}) "
                f"must be 8 or 16 × `broadcast_size` ({self.broadcast_size}; 0: frame_size / 8, "
                "a multiple of 8)."
            )

    @property
    def slot_counts(self) -> tuple[int, ...]:
        """The slots of each block."""
        n = self.num_slots
        return (n,) * self.num_blocks if isinstance(n, int) else tuple(n)

    @property
    def start_size(self) -> int:
        """The spatial broadcast decoder's starting grid (`broadcast_size`, or
        `frame_size / 8` for 0)."""
        return self.broadcast_size or max(1, self.frame_size // 8)

    @classmethod
    def preset(cls, name: str) -> "SlotSSMConfig":
        """A named configuration (`clevrer`, `small`)."""
        return preset_of(cls, name)


SLOTSSM_PRESETS: dict[str, SlotSSMConfig] = {
    # JindongJiang/SlotSSMs train.py (CLEVRER, 128² frames, patches of 8, a 6-layer ViT
    # of 256, 6 slots × 256, 4 blocks, inverted read-in, Mamba2 with d_state 128, an
    # MAE decoder of 4 layers): 12,500,768 parameters (67,072 of them the decoder's
    # frozen positions).
    "clevrer": SlotSSMConfig(),
    # CPU-sized: patches of 4, 4 slots of 64, 2 blocks, the spatial broadcast decoder
    # (alpha masks per slot) from a frame_size / 8 grid (32², 48², 64² frames alike).
    "small": SlotSSMConfig(
        frame_size=32,
        patch=4,
        encoder_dim=64,
        encoder_layers=2,
        encoder_heads=2,
        num_slots=4,
        slot_dim=64,
        num_blocks=2,
        space_heads=2,
        d_state=16,
        headdim=16,
        decoder="spatial_broadcast",
        broadcast_hidden=32,
    ),
}


class SlotSSMVideoModel(AbstractObjectCentricVideoModel):
    """SlotSSM on frames (see the module docstring). Deterministic.

    **Loss**: the mean squared error of the decoded frames (`mse`: frames `0…T-1` for
    `reconstruct`, `1…T-1` from the slots of `0…T-2` for `predict`), in eqvid's
    `[-1, 1]` frame range (the original normalises with ImageNet's mean and std).

    **Generation**: the context runs through the encoder and the SlotSSM stack in
    parallel; each generated frame is decoded from the last slots, then encoded and
    stepped through the stack (`SlotSSM.step`, O(1) per frame), inside one
    `lax.scan`. A `predict` model continues the video; a `reconstruct` model decodes
    the frame its slots read, so its rollout repeats the last frame it saw.
    `decode_with_masks` also returns the spatial broadcast decoder's per-slot masks.
    """

    encoder: ViTEncoder
    slots: SlotSSM
    decoder: ViTDecoder | SpatialBroadcastDecoder
    config: SlotSSMConfig = eqx.field(static=True)

    def __init__(self, config: SlotSSMConfig, *, key: PRNGKeyArray):
        c = config
        ke, ks, kd = jax.random.split(key, 3)
        self.encoder = ViTEncoder(
            image_size=c.frame_size, patch=c.patch, channels=c.channels, dim=c.encoder_dim,
            num_layers=c.encoder_layers, num_heads=c.encoder_heads, impl=c.attention_impl,
            key=ke,
        )  # fmt: skip
        self.slots = SlotSSM(
            num_slots=c.slot_counts,
            dim=c.slot_dim, input_dim=c.encoder_dim, num_blocks=c.num_blocks,
            read_in_heads=c.read_in_heads, inverted=c.inverted, space_heads=c.space_heads,
            time_mixer=c.time_mixer, d_state=c.d_state, expand=c.expand, headdim=c.headdim,
            time_heads=c.time_heads, max_frames=c.max_frames, ffn=c.ffn,
            attention_impl=c.attention_impl, key=ks,
        )  # fmt: skip
        if c.decoder == "vit":
            self.decoder = ViTDecoder(
                num_slots=c.slot_counts[-1], slot_dim=c.slot_dim, image_size=c.frame_size,
                patch=c.patch, channels=c.channels, dim=c.decoder_dim,
                num_layers=c.decoder_layers, num_heads=c.decoder_heads,
                impl=c.attention_impl, key=kd,
            )  # fmt: skip
        else:
            self.decoder = SpatialBroadcastDecoder(
                c.slot_dim, channels=c.channels, hidden=c.broadcast_hidden,
                initial_size=c.start_size, output_resolution=c.frame_size, key=kd,
            )  # fmt: skip
        self.config = config

    # -- pieces --------------------------------------------------------------------

    def decode_with_masks(
        self, slots: Float[Array, "slots slot_dim"]
    ) -> tuple[Float[Array, "height width channels"], Float[Array, "slots height width"] | None]:
        """One frame from its slots, and the per-slot alpha masks (spatial broadcast
        decoder; `None` for the ViT decoder)."""
        if isinstance(self.decoder, SpatialBroadcastDecoder):
            return self.decoder(slots)
        return self.decoder(slots), None

    def _decode(self, slots):
        return self.decode_with_masks(slots)[0]

    def object_masks(
        self, frames: Float[Array, "time height width channels"]
    ) -> Float[Array, "time slots height width"]:
        """Each slot's share of each pixel: the spatial broadcast decoder's alpha masks
        of the slots that read the frame; with the ViT decoder, the last block's read-in
        weights of each patch (mean over heads, renormalised over the slots, each patch
        its pixels)."""
        check_frames(self, frames, "frames")
        slots, _, weights = self.slots(jax.vmap(self.encoder)(frames))
        if isinstance(self.decoder, SpatialBroadcastDecoder):
            return jax.vmap(lambda s: self.decoder(s)[1])(slots)
        w = jnp.mean(weights[-1], axis=1)  # (time, slots, patches)
        w = w / (jnp.sum(w, axis=1, keepdims=True) + 1e-12)
        c = self.config
        g = c.frame_size // c.patch
        w = w.reshape(*w.shape[:2], g, g)
        return jnp.repeat(jnp.repeat(w, c.patch, axis=-2), c.patch, axis=-1)

    def __call__(
        self, frames: Float[Array, "time height width channels"]
    ) -> tuple[Float[Array, "time height width channels"], Float[Array, "time slots slot_dim"]]:
        """`(decoded frames, slots)` of a video: frame `t` decoded from `slots_t` (the
        task decides whether that is frame `t` or `t + 1`)."""
        check_frames(self, frames, "frames")
        slots, _, _ = self.slots(jax.vmap(self.encoder)(frames))
        return jax.vmap(self._decode)(slots), slots

    # -- the contract ----------------------------------------------------------------

    def check_batch(
        self,
        video: Float[np.ndarray, "batch time height width channels"],
        actions: Int[np.ndarray, "batch time"] | None,
    ) -> None:
        """At least one video (of two frames to predict); frames of the model's size; no
        actions (SlotSSM is not action-conditioned)."""
        owner = type(self).__name__
        if video.shape[0] < 1:
            raise ValueError(f"{owner}: `batch` needs at least 1 video, got 0.")
        check_frames(self, video[0], "batch.video")
        if self.config.task == "predict" and video.shape[1] < 2:
            raise ValueError(
                f"{owner}: the predict task needs videos of at least 2 frames, got {video.shape[1]}."
            )
        if actions is not None and np.any(np.asarray(actions) >= 0):
            raise ValueError(
                f"{owner}: SlotSSM takes no actions; train it on a dataset without them."
            )

    def loss(
        self,
        batch: VideoBatch,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """The mean squared error of the decoded frames (term `mse`), averaged over the
        batch. Deterministic: `key` and `step` are unused; no model state."""
        del key, step
        video = batch.frames(type(self).__name__)

        def one(frames, actions, key):
            del actions, key
            decoded, _ = self(frames)
            if self.config.task == "predict":
                decoded, frames = decoded[:-1], frames[1:]
            mse = jnp.mean(jnp.square(decoded.astype(jnp.float32) - frames.astype(jnp.float32)))
            return mse, {"mse": mse}

        loss, terms = mean_over_videos(one, VideoBatch(video, None), None)
        return loss, terms, state

    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " total"] | None = None,
    ) -> Float[Array, "{num_frames} height width channels"]:
        """The `num_frames` frames after `context` (deterministic: the same for every
        `key`): each decoded from the last slots, then fed back (see the class)."""
        del key
        owner = f"{type(self).__name__}.generate"
        check_context(self, context)
        if num_frames < 1:
            raise ValueError(f"{owner}: `num_frames` must be ≥ 1, got {num_frames}.")
        if actions is not None:
            raise ValueError(f"{owner}: SlotSSM takes no actions; got `actions`.")
        total = context.shape[0] + num_frames - 1
        if self.config.time_mixer == "attention" and total > self.config.max_frames:
            raise ValueError(
                f"{owner}: the attention time mixer sees at most `max_frames` = "
                f"{self.config.max_frames} frames; {context.shape[0]} context + "
                f"{num_frames - 1} fed back need {total}."
            )
        slots, state, _ = self.slots(jax.vmap(self.encoder)(context))
        first = self._decode(slots[-1])

        def next_frame(carry, _):
            state, frame = carry
            state, slots, _ = self.slots.step(state, self.encoder(frame))
            frame = self._decode(slots)
            return (state, frame), frame

        _, rest = jax.lax.scan(next_frame, (state, first), None, length=num_frames - 1)
        return jnp.concatenate([first[None], rest])

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """One group (the original trains every parameter with one Adam)."""
        return {}

    def with_state(self, state: eqx.nn.State | None) -> "SlotSSMVideoModel":
        """No model state: the model itself."""
        del state
        return self


register_model(ModelSpec("slotssm", "SlotSSM", SlotSSMConfig, SlotSSMVideoModel, SLOTSSM_PRESETS))

__all__ = ["SLOTSSM_PRESETS", "SlotSSMConfig", "SlotSSMVideoModel"]
