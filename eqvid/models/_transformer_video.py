"""Transformer video predictor: the Transformer baseline of the ConvS5 paper.

Per-frame ResNet encoder → patchifying convolution (kernel = stride = `patch_size`)
to frame tokens → pre-LN causal transformer over all frames' tokens (sinusoidal
positions, frame-block-causal mask) → transposed convolution back to the latent
grid → ResNet decoder. This is the Moving-MNIST "noVQ" Transformer of Smith et
al. (NeurIPS 2023), reproduced layer for layer (parameter counts of the released
MNIST-300 / MNIST-600 configurations: 240,073,475 and 163,500,291).

The released sampler re-runs the whole sequence for every generated frame;
`generate(..., cache=False)` does the same (inside one `lax.scan`), and
`generate(..., cache=True)` (the default) keeps a key/value cache and computes
only the new frame's tokens at each step.
"""

import dataclasses
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..kernels.attention import AttentionImpl
from ..nn._resnet import ResNetDecoder, ResNetEncoder
from ..nn._temporal_transformer import TemporalTransformer
from ..nn._transformer import KVCache
from ._abstract import (
    AbstractVideoModel,
    GroupSettings,
    KeyOrKeys,
    LossTerms,
    VideoBatch,
    mean_over_videos,
)
from ._frames import (
    FramePredictorConfig,
    check_context,
    check_positive,
    check_teacher_forcing,
    check_video_batch,
    embed_actions,
    frame_actions,
    no_actions,
    released_loss,
    rollout_actions,
)
from ._registry import ModelSpec, register_model


@dataclasses.dataclass(frozen=True)
class TransformerConfig(FramePredictorConfig):
    """Architecture of a `TransformerVideoModel` (the shared fields of
    `FramePredictorConfig` plus the transformer's). Presets:
    `TransformerConfig.preset(name)`.

    Frames are encoded to a `latent_size × latent_size` grid, cut into
    `(latent_size // patch_size)²` tokens per frame (`tokens_per_frame`), and the
    transformer runs over `width`-dimensional tokens.
    """

    d_model: int = 256
    """Channels of the latent grid the transposed convolution produces and the
    decoder reads (the released `embedding_dim`). The encoder's output (plus the
    action embedding) goes straight into the patchifying convolution, which is the
    input projection."""
    patch_size: int = 16
    """Kernel and stride of the patchifying convolution (the released `z_ds`); must
    divide `latent_size`."""
    width: int = 1024
    """Token dimension of the transformer (the released `embed_dim`); even (sinusoidal
    positions) and divisible by `n_heads`."""
    n_layers: int = 8
    """Number of pre-LN transformer blocks."""
    n_heads: int = 16
    """Attention heads per block."""
    mlp_dim: int = 4096
    """Hidden width of each block's MLP."""
    max_frames: int = 1500
    """Longest video (context plus generated frames) the model is run on; bounds the
    KV cache. Positions are computed, so this is no learned table."""
    attention_impl: AttentionImpl = "auto"
    """`eqvid.kernels.attention` implementation: "auto", "pallas", "xla" or "cudnn"."""

    def __post_init__(self):
        super().__post_init__()
        name = "TransformerConfig"
        check_positive(self, "d_model", "patch_size", "width", "n_layers", "n_heads", "mlp_dim")
        latent = self.latent_size
        if latent % self.patch_size:
            raise ValueError(
                f"{name}: `patch_size` ({self.patch_size}) must divide the latent size "
                f"frame_size // (pixel_patch * 2**(len(encoder_depths)-1)) = {latent}."
            )
        if self.width % self.n_heads:
            raise ValueError(
                f"{name}: `width` ({self.width}) must be divisible by `n_heads` ({self.n_heads})."
            )
        if self.width % 2:
            raise ValueError(
                f"{name}: `width` ({self.width}) must be even (sinusoidal positions use "
                f"width // 2 frequencies, each as a sine and a cosine)."
            )
        if not isinstance(self.max_frames, int) or self.max_frames < 2:
            raise ValueError(f"{name}: `max_frames` must be an int ≥ 2, got {self.max_frames!r}.")
        impls = typing.get_args(AttentionImpl)
        if self.attention_impl not in impls:
            raise ValueError(
                f"{name}: `attention_impl` must be one of {impls}, got {self.attention_impl!r}."
            )

    @property
    def grid_size(self) -> int:
        """Tokens along each side of a frame: `latent_size // patch_size`."""
        return self.latent_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per frame: `grid_size²`."""
        return self.grid_size**2


TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    # Released configs/Moving-MNIST/300_train_len/mnist_noVQ_transformer.yaml: 16x16
    # latents, z_ds 16 → one token per frame. max_frames from the eval config
    # (seq_len 1500). 240,073,475 parameters.
    "mnist-300": TransformerConfig(),
    # Released configs/Moving-MNIST/600_train_len/mnist_noVQ_transformer.yaml: a fourth
    # encoder stage (8x8 latents of 512 channels), z_ds 8 → one token per frame.
    # 163,500,291 parameters.
    "mnist-600": TransformerConfig(encoder_depths=(64, 128, 256, 512), patch_size=8),
    # CPU-sized, ConvS5's "small" codec: 64x64 frames → 8x8 latents → 4x4 = 16 tokens
    # per frame (48x48 → 6x6 → 9 tokens).
    "small": TransformerConfig(
        pixel_patch=4,
        encoder_depths=(16, 64),
        d_model=64,
        patch_size=2,
        width=128,
        n_layers=2,
        n_heads=4,
        mlp_dim=512,
        max_frames=300,
    ),
}


# ----------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------


class TransformerVideoModel(AbstractVideoModel):
    """The Transformer baseline of the ConvS5 paper (deterministic; teacher forcing).

    **Layers** (as released): ResNet encoder; action embedding tiled over the
    latent grid and concatenated; `eqvid.nn.TemporalTransformer` (patchifying
    convolution to `tokens_per_frame` tokens of `width`, input dense, `n_layers`
    pre-LN blocks, output dense → GELU → LayerNorm, transposed convolution to the
    `d_model`-channel latent grid, the same trunk as TECO's); ResNet decoder; `tanh`.

    **Sequence layout.** Position ("slot") 0 holds a learned start token (one
    `width` vector per token of a frame, the released `sos`); slot `s ≥ 1` holds
    the tokens of frame `s - 1` (paired with action `s`, the action taken towards
    frame `s`). The output at slot `s` predicts frame `s`. A video of `T` frames
    therefore fills `T` slots — `[start, frame 0, …, frame T-2]` — and the outputs
    at slots `1 … T-1` are the predictions of frames `1 … T-1`; the output at the
    start slot (a prediction of frame 0 from nothing) is computed and dropped, as
    in the released code. The start token is still seen by every later token.

    **Positions.** Sinusoidal in the token position `slot · tokens_per_frame +
    token` (row-major token order within a frame), computed, not learned, added
    after the input dense layer.

    `model(frames)` runs the whole video in one pass (frame-block-causal mask:
    every token sees all tokens of its own and earlier slots).
    `model.generate(context, n, key=key)` rolls out `n` frames inside one
    `lax.scan`, with a KV cache (`cache=True`) or re-running the full padded
    sequence per frame like the released sampler (`cache=False`).
    """

    encoder: ResNetEncoder
    action_embedding: Float[Array, "actions embed"]
    temporal: TemporalTransformer
    decoder: ResNetDecoder
    config: TransformerConfig = eqx.field(static=True)

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray):
        c = config
        ke, ka, kt, kd = jax.random.split(key, 4)
        self.encoder = ResNetEncoder(c.channels, c.encoder_depths, patch=c.pixel_patch, key=ke)
        self.action_embedding = jax.random.normal(
            ka, (c.action_dim + 1, c.action_embed_dim), jnp.float32
        )
        self.temporal = TemporalTransformer(
            c.encoder_depths[-1] + c.action_embed_dim,
            c.d_model,
            latent=c.latent_size,
            patch=c.patch_size,
            width=c.width,
            n_layers=c.n_layers,
            n_heads=c.n_heads,
            mlp_dim=c.mlp_dim,
            impl=c.attention_impl,
            remat=c.remat,
            key=kt,
        )
        self.decoder = ResNetDecoder(
            c.d_model, c.encoder_depths, c.channels, patch=c.pixel_patch, key=kd
        )
        self.config = config

    # -- pieces ------------------------------------------------------------------

    def _frame_tokens(self, frames, actions):
        """Frames `(T, H, W, C)` and their actions `(T,)` → embedded tokens `(T, F, width)`
        (encoder, tiled action embedding, patchifying conv, input dense)."""
        z = self.encoder(frames)
        a = embed_actions(self.action_embedding, actions)
        a = jnp.broadcast_to(a[..., None, None, :], z.shape[:-1] + a.shape[-1:])
        return self.temporal.tokens(jnp.concatenate([z, a], axis=-1))

    def _start(self):
        return self.temporal.start()  # (1, F, width)

    def _readout(self, h):
        """Transformer outputs `(..., F, width)` → frames `(..., H, W, C)` (output dense,
        GELU, LayerNorm, transposed conv, decoder, tanh)."""
        return jnp.tanh(self.decoder(self.temporal.readout(h)))

    def _transformer(self, slots):
        """Slots `(S, F, width)` (embedded, no positions) → outputs `(S, F, width)`."""
        return self.temporal(slots)

    def _transformer_cached(self, slots, caches, first_slot):
        """Slots `(S, F, width)` at `first_slot …` through the cached path."""
        return self.temporal.cached(slots, caches, first_slot)

    def init_cache(self, n_slots: int) -> tuple[KVCache, ...]:
        """Zero key/value caches for `n_slots` slots (frames): per layer two arrays
        `(n_slots · tokens_per_frame, heads, head_dim)`."""
        return self.temporal.init_cache(n_slots)

    # -- public API --------------------------------------------------------------

    def __call__(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
    ) -> Float[Array, "time-1 height width channels"]:
        """Teacher-forced predictions of frames `1…T-1` given frames `0…T-2`, in one
        pass over `[start, frame 0, …, frame T-2]`.

        The input for frame `t` pairs it with the action taken towards frame `t + 1`
        (`actions[t + 1]`), as in the released code.
        """
        self._check_frames(frames)
        return self._teacher_forced(frames, frame_actions(self, actions, frames.shape[0]))

    def _check_frames(self, frames):
        """Teacher forcing needs 2 to `config.max_frames` frames of the model's size."""
        check_teacher_forcing(self, frames)
        n = frames.shape[0]
        if n > self.config.max_frames:
            raise ValueError(
                f"TransformerVideoModel: `frames` has {n} frames, more than "
                f"config.max_frames = {self.config.max_frames}."
            )

    def _teacher_forced(self, frames, actions):
        """`__call__` on frames and actions already checked."""
        slots = jnp.concatenate([self._start(), self._frame_tokens(frames[:-1], actions[1:])])
        return self._readout(self._transformer(slots)[1:])

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
        """`w · mean Σ_{W,C}(ŷ-y)² + (1-w) · mean Σ_{W,C}|ŷ-y|` over frames 1…T-1 of
        every video (the released objective, `w = config.loss_weight`), averaged over
        the batch, with its terms `squared_error` and `absolute_error`. Deterministic
        (no dropout): `key` and `step` are unused; no model state."""
        del key, step
        actions = check_video_batch(self, batch.frames(type(self).__name__), batch.actions)

        def one(video, actions, key):
            del key
            self._check_frames(video)
            if actions is None:
                actions = no_actions(video.shape[0])
            predictions = self._teacher_forced(video, actions)
            return released_loss(predictions, video[1:], self.config.loss_weight)

        loss, terms = mean_over_videos(
            one, VideoBatch(batch.frames(type(self).__name__), actions), None
        )
        return loss, terms, state

    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " total"] | None = None,
        cache: bool = True,
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Predict `num_frames` frames after `context` (deterministic: the same for
        every `key`).

        Needs `len(context) + num_frames ≤ config.max_frames`; that many slots are
        used (`[start, context…, generated frames but the last]`).

        - `cache=True`: the context runs once, filling a preallocated key/value
          cache per layer; then each step of a `lax.scan` encodes the last predicted
          frame, computes queries/keys/values for its tokens only, writes the keys
          and values into the cache at its position and attends over the cache:
          O(length) work per frame.
        - `cache=False`: the released sampler's way: each step re-runs the whole
          transformer over the fixed-length (padded) sequence and reads the
          prediction at the current position: O(length²) work per frame.

        Both give the frames that teacher forcing on the generated video predicts.
        """
        del key
        check_context(self, context)
        n_ctx = context.shape[0]
        actions = rollout_actions(self, actions, n_ctx, num_frames)
        total = n_ctx + num_frames
        if total > self.config.max_frames:
            raise ValueError(
                f"generate: `context` ({n_ctx} frames) + `num_frames` ({num_frames}) = "
                f"{total} exceeds config.max_frames = {self.config.max_frames}."
            )
        prefix = jnp.concatenate(
            [self._start(), self._frame_tokens(context, actions[1 : n_ctx + 1])]
        )  # slots 0 … n_ctx
        # Step i feeds generated frame n_ctx + i (with action n_ctx + i + 1) into slot
        # n_ctx + 1 + i and reads the prediction of frame n_ctx + 1 + i there.
        steps = (jnp.arange(num_frames - 1, dtype=jnp.int32) + n_ctx + 1, actions[n_ctx + 1 :])

        if cache:
            h, caches = self._transformer_cached(prefix, self.init_cache(total), 0)
            first = self._readout(h[-1])

            def cached_step(carry, step):
                caches, frame = carry
                slot, action = step
                tokens = self._frame_tokens(frame[None], action[None])
                h, caches = self._transformer_cached(tokens, caches, slot)
                frame = self._readout(h[0])
                return (caches, frame), frame

            _, rest = jax.lax.scan(cached_step, (caches, first), steps)
        else:
            pad = jnp.zeros((total - prefix.shape[0],) + prefix.shape[1:], prefix.dtype)
            slots = jnp.concatenate([prefix, pad])
            first = self._readout(self._transformer(slots)[n_ctx])

            def full_step(carry, step):
                slots, frame = carry
                slot, action = step
                tokens = self._frame_tokens(frame[None], action[None])
                slots = jax.lax.dynamic_update_slice(slots, tokens, (slot, 0, 0))
                h = self._transformer(slots)
                frame = self._readout(jax.lax.dynamic_index_in_dim(h, slot, keepdims=False))
                return (slots, frame), frame

            _, rest = jax.lax.scan(full_step, (slots, first), steps)
        return jnp.concatenate([first[None], rest], axis=0)

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """One group: every parameter learns at the run's rate."""
        return {}

    def with_state(self, state: eqx.nn.State | None) -> "TransformerVideoModel":
        """No model state: the model itself."""
        del state
        return self


register_model(
    ModelSpec(
        "transformer", "Transformer", TransformerConfig, TransformerVideoModel, TRANSFORMER_PRESETS
    )
)
