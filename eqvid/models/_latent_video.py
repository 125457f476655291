"""ConvSSM's plain latent models (Smith et al., NeurIPS 2023, NVlabs/ConvSSM
`src/models/sequence_models/VQ/{convS5,transformer}.py`): a tokenizer's code vectors →
per-frame ResNet encoder → a temporal model (a ConvS5 stack over the 16×16 grid, or a
frame-causal transformer with one token per frame) → ResNet decoder to logits over the
tokenizer's codes. No latent codebook, no MaskGit: generation samples each frame's codes
from the decoder's logits and feeds them back, one recurrent (or cached) step per frame.
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
from ..nn._roles import role
from ..nn._temporal_core import AbstractTemporalCore, ConvS5Core, S5Core, TransformerCore
from ._abstract import GroupSettings, KeyOrKeys, LossTerms, per_video_keys
from ._frames import check_positive, embed_actions
from ._latent import (
    AbstractLatentVideoModel,
    action_drop_flags,
    check_latent_batch,
    check_latent_frames,
    drop_loss_frames,
    latent_actions,
    smoothed_code_loss,
    tokenizer_argument,
)
from ._registry import ModelSpec, preset_of, register_model
from ._tokenizer import AbstractVideoTokenizer
from ._windowed_rollout import windowed_rollout

Temporal = typing.Literal["convs5", "transformer", "s5"]


@dataclasses.dataclass(frozen=True)
class LatentVideoConfig:
    """Architecture and losses of a `LatentVideoModel` (ConvSSM's config keys in
    brackets). Presets: `LatentConvS5Config.preset(name)`,
    `LatentTransformerConfig.preset(name)`."""

    frame_size: int = 64
    """Height and width of the frames (the tokenizer's; set from the data)."""
    channels: int = 3
    """Colour channels of the frames (the tokenizer's; set from the data)."""
    tokenizer: str = ""
    """The tokenizer folder or training run the model stands on (with --dataset codes:
    the one the codes were encoded with)."""
    temporal: Temporal = "convs5"
    """The temporal model: a ConvS5 stack over the code grid, a frame-causal
    transformer over `(grid / patch_size)²` tokens per frame, or an S5 stack over each
    frame's grid flattened into one vector."""
    encoder_depths: tuple[int, ...] = (256,)
    """Channels of the per-frame encoder's stages (`encoder.depths`)."""
    encoder_blocks: int = 1
    """ResNet blocks per encoder stage after the first (`encoder.blocks`)."""
    decoder_depths: tuple[int, ...] = (512,)
    """Channels of the decoder's stages, walked in reverse (`decoder.depths`)."""
    decoder_blocks: int = 4
    """ResNet blocks per decoder stage (`decoder.blocks`)."""
    n_layers: int = 8
    """Layers of the temporal model (`seq_model.n_layers`, `z_tfm.num_layers`)."""
    d_model: int = 512
    """Channels of the ConvS5 stack, or width of the S5 stack (`d_model`)."""
    ssm_size: int = 512
    """HiPPO size N of each ConvS5 / S5 layer (`ssm.ssm_size`)."""
    ssm_blocks: int = 1
    """HiPPO blocks J of each ConvS5 / S5 layer (`ssm.blocks`)."""
    clip_eigs: bool = False
    """Clamp the ConvS5 eigenvalues' real parts below zero (`ssm.clip_eigs`)."""
    patch_size: int = 16
    """Kernel and stride of the transformer's patchifying convolution (`z_ds`)."""
    width: int = 512
    """Token width of the transformer (`z_tfm.embed_dim`)."""
    mlp_dim: int = 2048
    """MLP width of the transformer (`z_tfm.mlp_dim`)."""
    n_heads: int = 16
    """Attention heads of the transformer (`z_tfm.num_heads`)."""
    embedding_dim: int = 512
    """Channels of the grid the transformer's (or the S5 stack's) transposed
    convolution gives the decoder (`embedding_dim`)."""
    max_frames: int = 300
    """Longest video the transformer is run on (`seq_len`): its window; generation
    slides the window past it (`slide_stride`). The ConvS5 stack has no window."""
    slide_stride: int = 1
    """Past `max_frames`, the transformer re-reads the last `max_frames - slide_stride`
    frames and generates `slide_stride` frames from that read: 1 is ConvSSM's (and
    TECO's) sampler; larger strides spread a re-read over more frames."""
    action_dim: int = 6
    """Number of distinct actions (`action_dim`; -1 is no action)."""
    action_embed_dim: int = 16
    """Width of the action embedding (`action_embed_dim`)."""
    use_actions: bool = True
    """Condition on the actions (false: every action is 0)."""
    action_dropout: float = 0.5
    """Probability that a whole sequence's actions are dropped to -1 in training
    (`action_dropout_rate`); 0 never."""
    drop_loss_rate: float = 0.0
    """DropLoss: the loss sees a random `1 - rate` of the time steps (`drop_loss_rate`)."""
    causal_masking: bool = False
    """ConvSSM's DMLab training (`causal_masking`): a sequence that keeps its actions
    has its encoder features from frame `open_loop_context` on replaced by
    `frame_mask_value`, and its loss covers the frames predicted from there (open-loop,
    action-driven prediction); a sequence whose actions were dropped trains with teacher
    forcing on every frame. Generation given actions then runs open-loop after the
    context (masked inputs; the sampled codes are not fed back)."""
    open_loop_context: int = 144
    """Frames seen before the masked, open-loop part under `causal_masking`
    (`open_loop_ctx_1`)."""
    frame_mask_value: float = -2.0
    """The constant that replaces masked frames' encoder features (`frame_mask_id`)."""
    label_smoothing: float = 0.01
    """Label smoothing of the cross-entropy over the tokenizer's codes."""
    temperature: float = 1.0
    """Sampling temperature of the generated codes (ConvSSM: 1, categorical)."""
    attention_impl: AttentionImpl = "auto"
    """`eqvid.kernels.attention` implementation: "auto", "pallas", "xla" or "cudnn"."""
    remat: bool = False
    """Recompute the temporal layers' activations in the backward pass."""

    def __post_init__(self):
        name = type(self).__name__
        check_positive(
            self, "frame_size", "channels", "encoder_blocks", "decoder_blocks", "n_layers",
            "d_model", "ssm_size", "ssm_blocks", "patch_size", "width", "mlp_dim", "n_heads",
            "embedding_dim", "max_frames", "action_dim", "action_embed_dim",
            "open_loop_context", "slide_stride",
        )  # fmt: skip
        if self.slide_stride >= self.max_frames:
            raise ValueError(
                f"{name}: `slide_stride` must be in [1, max_frames) = [1, {self.max_frames}); "
                f"got {self.slide_stride}."
            )
        if self.causal_masking and self.drop_loss_rate > 0:
            raise ValueError(
                f"{name}: `causal_masking` takes no DropLoss (ConvSSM has none with it); "
                f"set drop_loss_rate to 0 (got {self.drop_loss_rate!r})."
            )
        for field in ("action_dropout", "drop_loss_rate", "label_smoothing"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: `{field}` must be in [0, 1); got {value!r}.")
        if not self.temperature > 0:
            raise ValueError(f"{name}: `temperature` must be > 0; got {self.temperature!r}.")
        if self.temporal not in typing.get_args(Temporal):
            raise ValueError(
                f"{name}: `temporal` must be one of {typing.get_args(Temporal)}; got "
                f"{self.temporal!r}."
            )

    @classmethod
    def preset(cls, name: str) -> "LatentVideoConfig":
        """A named configuration (`"dmlab"`, … and `"small"` for a CPU)."""
        return preset_of(cls, name)


@dataclasses.dataclass(frozen=True)
class LatentConvS5Config(LatentVideoConfig):
    """ConvSSM's latent ConvS5 (`convS5`): a ConvS5 stack over the tokenizer's code grid."""

    temporal: Temporal = "convs5"
    """The temporal model (see `LatentVideoConfig`)."""


@dataclasses.dataclass(frozen=True)
class LatentTransformerConfig(LatentVideoConfig):
    """ConvSSM's latent Transformer baseline (`transformer`): one token per frame."""

    temporal: Temporal = "transformer"
    """The temporal model (see `LatentVideoConfig`)."""


@dataclasses.dataclass(frozen=True)
class LatentS5Config(LatentVideoConfig):
    """ConvSSM's latent S5 (`S5`): an S5 stack over each frame's flattened grid."""

    temporal: Temporal = "s5"
    """The temporal model (see `LatentVideoConfig`)."""


LATENT_CONVS5_PRESETS: dict[str, LatentConvS5Config] = {
    # NVlabs/ConvSSM configs/3D_ENV_BENCHMARK/*/{dmlab_convs5,habitat_convS5,
    # minecraft_convS5}.yaml. DMLab trains with causal frame masking (144 context
    # frames), Habitat and Minecraft with DropLoss 0.9.
    "dmlab": LatentConvS5Config(causal_masking=True),
    "habitat": LatentConvS5Config(frame_size=128, drop_loss_rate=0.9),
    "minecraft": LatentConvS5Config(
        frame_size=128, n_layers=12, drop_loss_rate=0.9, action_dropout=0.0
    ),
    "small": LatentConvS5Config(
        encoder_depths=(32,),
        decoder_depths=(64,),
        decoder_blocks=1,
        n_layers=2,
        d_model=32,
        ssm_size=32,
        action_embed_dim=4,
    ),
}

LATENT_S5_PRESETS: dict[str, LatentS5Config] = {
    # configs/3D_ENV_BENCHMARK/dmlab/dmlab_S5.yaml (the only S5 config): the 16×16 grid
    # of 256 + 16 channels flattened into d_model 1024, 8 S5 layers (ssm 1024, one
    # block), back to a 16×16×512 grid; causal frame masking as the ConvS5's.
    "dmlab": LatentS5Config(causal_masking=True, d_model=1024, ssm_size=1024),
    "small": LatentS5Config(
        encoder_depths=(32,),
        decoder_depths=(64,),
        decoder_blocks=1,
        n_layers=2,
        d_model=64,
        ssm_size=32,
        embedding_dim=32,
        action_embed_dim=4,
    ),
}

LATENT_TRANSFORMER_PRESETS: dict[str, LatentTransformerConfig] = {
    # configs/3D_ENV_BENCHMARK/dmlab/dmlab_transformer.yaml.
    "dmlab": LatentTransformerConfig(causal_masking=True),
    "small": LatentTransformerConfig(
        encoder_depths=(32,),
        decoder_depths=(64,),
        decoder_blocks=1,
        n_layers=2,
        patch_size=4,
        width=64,
        mlp_dim=256,
        n_heads=4,
        embedding_dim=32,
        action_embed_dim=4,
    ),
}


class LatentVideoModel(AbstractLatentVideoModel):
    """ConvSSM's plain latent model on a frozen tokenizer's codes (see the module
    docstring).

    **Per video** (codes `(T, S, S)`, actions `(T,)`): `f_t = encoder(embed(codes_t))`;
    temporal inputs `[f_j, a_{j+1}]`; output `y_j` predicts frame `j + 1`:
    `logits = decoder(y_j)` over the tokenizer's codes; loss the label-smoothed
    cross-entropy summed over the code grid, averaged over the frames (DropLoss: a
    random subset). Generation samples each frame's codes from the logits
    (`temperature`) and feeds them back.
    """

    tokenizer: AbstractVideoTokenizer = eqx.field(metadata=role(frozen=True))
    encoder: ResNetEncoder
    action_embedding: Float[Array, "actions embed"]
    temporal: AbstractTemporalCore
    decoder: ResNetDecoder
    config: LatentVideoConfig = eqx.field(static=True)
    code_size: int = eqx.field(static=True)

    def __init__(
        self,
        config: LatentVideoConfig,
        *,
        key: PRNGKeyArray,
        tokenizer: AbstractVideoTokenizer | None = None,
    ):
        c = config
        owner = type(self).__name__
        tok = tokenizer_argument(owner, c, tokenizer)
        shape = tok.code_shape(1, c.frame_size, c.frame_size)
        size = shape[1]
        latent = size // 2 ** (len(c.encoder_depths) - 1)
        if shape[1] != shape[2] or latent * 2 ** (len(c.encoder_depths) - 1) != size:
            raise ValueError(
                f"{owner}: the tokenizer's {shape[1]}×{shape[2]} code grid does not fit "
                f"{len(c.encoder_depths)} encoder stages (square, divisible by "
                f"{2 ** (len(c.encoder_depths) - 1)})."
            )
        if c.temporal == "transformer" and latent % c.patch_size:
            raise ValueError(
                f"{owner}: patch_size {c.patch_size} must divide the {latent}×{latent} "
                "latent grid; choose a patch_size for this tokenizer."
            )
        ke, ka, kt, kd = jax.random.split(key, 4)
        feat = c.encoder_depths[-1] + c.action_embed_dim
        self.tokenizer = tok
        self.encoder = ResNetEncoder(
            tok.embed_dim, c.encoder_depths, blocks=c.encoder_blocks, key=ke
        )
        self.action_embedding = jax.random.normal(
            ka, (c.action_dim + 1, c.action_embed_dim), jnp.float32
        )
        if c.temporal == "s5":
            self.temporal = S5Core(
                feat,
                c.embedding_dim,
                latent=latent,
                d_model=c.d_model,
                ssm_size=c.ssm_size,
                n_layers=c.n_layers,
                blocks=c.ssm_blocks,
                clip_eigs=c.clip_eigs,
                remat=c.remat,
                key=kt,
            )
            out = c.embedding_dim
        elif c.temporal == "convs5":
            self.temporal = ConvS5Core(
                feat,
                latent=latent,
                d_model=c.d_model,
                ssm_size=c.ssm_size,
                n_layers=c.n_layers,
                blocks=c.ssm_blocks,
                clip_eigs=c.clip_eigs,
                remat=c.remat,
                key=kt,
            )
            out = c.d_model
        else:
            self.temporal = TransformerCore(
                feat,
                c.embedding_dim,
                latent=latent,
                patch=c.patch_size,
                width=c.width,
                n_layers=c.n_layers,
                n_heads=c.n_heads,
                mlp_dim=c.mlp_dim,
                impl=c.attention_impl,
                remat=c.remat,
                key=kt,
            )
            out = c.embedding_dim
        self.decoder = ResNetDecoder(
            out, c.decoder_depths, tok.n_codes, blocks=c.decoder_blocks, key=kd
        )
        self.config = config
        self.code_size = size

    def _features(self, codes):
        emb = jax.lax.stop_gradient(self.tokenizer.embed(codes))
        return self.encoder(emb)

    def _inputs(self, features, actions):
        a = embed_actions(self.action_embedding, actions[1:]).astype(features.dtype)
        a = jnp.broadcast_to(a[:, None, None, :], features.shape[:-1] + a.shape[-1:])
        return jnp.concatenate([features, a], axis=-1)

    def _video_loss(self, codes, actions, key, open_loop):
        """`(loss sum, frame count)` of one video; under `causal_masking` `(mean, 1)`,
        the open-loop part (`open_loop` true) or teacher forcing on every frame."""
        c = self.config
        t = codes.shape[0]
        k_drop = k_temporal = None
        if key is not None:
            k_drop, k_temporal = jax.random.split(key)
        features = self._features(codes[:-1])
        if c.causal_masking:
            masked = open_loop & (jnp.arange(t - 1) >= c.open_loop_context)
            fill = jnp.asarray(c.frame_mask_value, features.dtype)
            features = jnp.where(masked[:, None, None, None], fill, features)
        y = self.temporal(self._inputs(features, actions), key=k_temporal)
        if c.causal_masking:
            targets = jnp.arange(1, t)
            weight = jnp.where(open_loop, targets >= c.open_loop_context, True)
            weight = weight.astype(jnp.float32)
            per_frame = jax.vmap(lambda lg, cd: smoothed_code_loss(lg, cd, c.label_smoothing))(
                self.decoder(y), codes[1:]
            )
            return jnp.sum(weight * per_frame) / jnp.sum(weight), 1
        frames = drop_loss_frames(k_drop, t, 1, c.drop_loss_rate)
        loss = smoothed_code_loss(self.decoder(y[frames - 1]), codes[frames], c.label_smoothing)
        return loss, len(frames)

    def codes_loss(
        self,
        codes: Int[Array, "batch steps code_height code_width"],
        actions: Int[Array, "batch frames"] | None,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """The label-smoothed cross-entropy of the next frame's codes, summed over the
        code grid and averaged over the predicted frames (term `recon_loss`). `key`
        drives action dropout and DropLoss; `None` (evaluation) uses every frame."""
        del step
        c = self.config
        b, t = codes.shape[:2]
        owner = type(self).__name__
        if t < 2:
            raise ValueError(f"{owner}: a training window needs at least 2 frames; got {t}.")
        if c.temporal == "transformer" and t > c.max_frames:
            raise ValueError(
                f"{owner}: windows of {t} frames exceed max_frames = {c.max_frames}; train "
                "on shorter windows (--seq-len) or raise max_frames."
            )
        if c.causal_masking and t <= c.open_loop_context + 1:
            raise ValueError(
                f"{owner}: causal masking needs windows longer than open_loop_context + 1 "
                f"= {c.open_loop_context + 1} frames; got {t} (train on longer windows, "
                "--seq-len, or lower open_loop_context)."
            )
        keys = per_video_keys(key, b)
        given = actions is not None and c.use_actions
        actions = latent_actions(owner, actions, (b, t), c.use_actions)
        # Under causal masking, the videos that keep their (given) actions run open-loop.
        open_loop = jnp.full((b,), given)
        if keys is None:
            loss_keys = None
        else:
            if c.action_dropout > 0:
                action_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(keys)
                drop = action_drop_flags(action_keys, c.action_dropout)
                actions = jnp.where(drop[:, None], -1, actions)
                open_loop = open_loop & ~drop
            loss_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 2))(keys)
        sums, counts = jax.vmap(
            self._video_loss, in_axes=(0, 0, None if loss_keys is None else 0, 0)
        )(codes, actions, loss_keys, open_loop)
        loss = jnp.sum(sums) / jnp.sum(counts).astype(sums.dtype)
        return loss, {"recon_loss": loss}, state

    def generate_codes(
        self,
        context: Int[Array, "context_steps code_height code_width"],
        num_steps: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " frames"] | None = None,
    ) -> Int[Array, "{num_steps} code_height code_width"]:
        """Continue `context` by `num_steps` frames, sampling each frame's codes from the
        decoder's logits (`config.temperature`) and feeding them back: the ConvS5 stack
        steps its recurrence, the transformer its key/value cache (O(1) per frame),
        sliding its window past `max_frames` as ConvSSM's sampler
        (`config.slide_stride`)."""
        c = self.config
        owner = type(self).__name__
        n_ctx = context.shape[0]
        if n_ctx < 1 or num_steps < 1:
            raise ValueError(
                f"{owner}.generate: needs at least one context frame and one frame to "
                f"generate; got {n_ctx} and {num_steps}."
            )
        total = n_ctx + num_steps
        open_loop = c.causal_masking and c.use_actions and actions is not None
        actions = latent_actions(f"{owner}.generate", actions, (total,), c.use_actions)
        masked = jnp.full_like(self._features(context[:1]), c.frame_mask_value)

        def window_inputs(codes, actions, start):
            features = self._features(codes)
            if open_loop:  # generated frames are masked, as they were fed
                generated = start + jnp.arange(codes.shape[0]) >= n_ctx
                features = jnp.where(generated[:, None, None, None], masked, features)
            return self._inputs(features, actions)

        def sample_frame(y, k):
            logits = self.decoder(y).astype(jnp.float32) / c.temperature
            return None, jax.random.categorical(k, logits).astype(jnp.int32)

        def next_input(_, codes, actions, index):
            del index
            return self._inputs(masked if open_loop else self._features(codes[None]), actions)[0]

        return windowed_rollout(
            owner,
            self.temporal,
            context,
            actions,
            num_steps,
            key=key,
            window_inputs=window_inputs,
            sample_frame=sample_frame,
            next_input=next_input,
            max_frames=c.max_frames if c.temporal == "transformer" else None,
            stride=c.slide_stride,
        )

    def check_codes_batch(
        self,
        codes: Int[np.ndarray, "batch steps code_height code_width"],
        actions: Int[np.ndarray, "batch frames"] | None,
    ) -> None:
        """Codes of the tokenizer's grid and codebook; actions in `[-1, action_dim)`."""
        check_latent_batch(
            type(self).__name__,
            codes,
            actions if self.config.use_actions else None,
            n_codes=self.tokenizer.n_codes,
            grid=(self.code_size, self.code_size),
            num_actions=self.config.action_dim,
        )

    def check_batch(
        self,
        video: Float[np.ndarray, "batch time height width channels"],
        actions: Int[np.ndarray, "batch time"] | None,
    ) -> None:
        """Frames of the tokenizer's size; actions in `[-1, action_dim)`."""
        c = self.config
        check_latent_frames(
            type(self).__name__,
            video,
            actions,
            frame_size=c.frame_size,
            channels=c.channels,
            num_actions=c.action_dim if c.use_actions else None,
        )

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """The ConvS5 layers' "ssm" group at the run's rate (ConvSSM uses one rate)."""
        return {}

    def with_state(self, state: eqx.nn.State | None) -> "LatentVideoModel":
        """No model state: the model itself."""
        del state
        return self


register_model(
    ModelSpec(
        "convs5-latent",
        "ConvS5 (latent)",
        LatentConvS5Config,
        LatentVideoModel,
        LATENT_CONVS5_PRESETS,
    )
)
register_model(
    ModelSpec(
        "transformer-latent",
        "Transformer (latent)",
        LatentTransformerConfig,
        LatentVideoModel,
        LATENT_TRANSFORMER_PRESETS,
    )
)
register_model(
    ModelSpec("s5-latent", "S5 (latent)", LatentS5Config, LatentVideoModel, LATENT_S5_PRESETS)
)
