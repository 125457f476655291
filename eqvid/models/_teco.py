"""TECO (Yan et al. 2023, `wilson1yan/teco`): temporally consistent video generation on
a VQ tokenizer's codes.

Per frame, a posterior encoder reads the tokenizer's code vectors of the previous and
current frame and a cosine codebook quantises its 8×8 output (the first `n_cond`
frames stay unquantised); a temporal model (TECO's frame-causal transformer, behind
`eqvid.nn.AbstractTemporalCore`) runs over the shifted latents with the actions; a
MaskGit prior models each frame's latent codes given the temporal output; a decoder
predicts the tokenizer's codes from the temporal output and the frame's latent.
Generation samples the latent codes with MaskGit (draft-and-revise as TECO, or
confidence-based) and takes the decoder's argmax; the temporal transformer keeps a
key/value cache, so each frame costs the same however long the video.
"""

import dataclasses
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..kernels.attention import AttentionImpl
from ..nn._dense import Dense
from ..nn._maskgit import (
    MaskGitPrior,
    sample_confidence,
    sample_draft_and_revise,
    training_mask,
)
from ..nn._quantize import VectorQuantizer
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

Sampler = typing.Literal["draft-revise", "confidence"]
Temporal = typing.Literal["transformer", "convs5", "s5"]


@dataclasses.dataclass(frozen=True)
class TECOConfig:
    """Architecture, losses and sampler of a `TECO` model (TECO's config keys in
    brackets). Presets: `TECOConfig.preset(name)`."""

    frame_size: int = 64
    """Height and width of the frames (the tokenizer's; set from the data)."""
    channels: int = 3
    """Colour channels of the frames (the tokenizer's; set from the data)."""
    tokenizer: str = ""
    """The tokenizer folder or training run the model stands on (with --dataset codes:
    the one the codes were encoded with)."""
    encoder_depths: tuple[int, ...] = (256, 512)
    """Channels of the posterior encoder's stages (`encoder.depths`); each stage after
    the first halves the code grid."""
    encoder_blocks: int = 2
    """ResNet blocks per encoder stage after the first (`encoder.blocks`)."""
    decoder_depths: tuple[int, ...] = (256, 512)
    """Channels of the decoder's stages, walked in reverse (`decoder.depths`)."""
    decoder_blocks: int = 4
    """ResNet blocks per decoder stage (`decoder.blocks`)."""
    embedding_dim: int = 64
    """Channels of the latent grid (`embedding_dim`)."""
    codebook_size: int = 1024
    """Codes of TECO's own latent codebook (`codebook.n_codes`)."""
    codebook_dim: int = 32
    """Width of the cosine codebook's projected space (`codebook.proj_dim`)."""
    n_cond: int = 1
    """Leading frames whose latents stay unquantised (`n_cond`)."""
    drop_loss_rate: float = 0.9
    """DropLoss: the decoder and prior losses see a random `1 - rate` of the time steps
    (`drop_loss_rate`); 0 keeps them all."""
    action_dim: int = 6
    """Number of distinct actions (`action_dim`; -1 is no action)."""
    action_embed_dim: int = 16
    """Width of the action embedding (`action_embed_dim`)."""
    use_actions: bool = True
    """Condition on the actions (false: every action is 0, as TECO's Kinetics)."""
    action_dropout: float = 0.5
    """Probability that a whole sequence's actions are dropped to -1 in training
    (`dropout_actions` with p = 0.5); 0 never."""
    label_smoothing: float = 0.01
    """Label smoothing of the decoder's cross-entropy (TECO: 0.01)."""
    causal_masking: bool = False
    """ConvSSM's DMLab training of the TECO family (`causal_masking`): a sequence that
    keeps its actions gives the temporal model `frame_mask_value` in place of its
    latents from frame `open_loop_context` on, so the model learns to predict
    open-loop from the actions; a sequence whose actions were dropped sees every
    frame. The decoder and the prior still read the true latents, and the losses cover
    every frame DropLoss keeps (as ConvSSM's runs computed them). Generation given
    actions then runs open-loop after the context (the mask constant goes in, not the
    sampled latents)."""
    open_loop_context: int = 144
    """Frames seen before the masked, open-loop part under `causal_masking`
    (`open_loop_ctx_1`)."""
    frame_mask_value: float = -2.0
    """The constant that replaces masked latents (`frame_mask_id`)."""
    temporal: Temporal = "transformer"
    """The temporal model: TECO's frame-causal transformer, a ConvS5 stack over the
    full latent grid (ConvSSM's TECO-ConvS5), or an S5 stack over the flattened grid
    (ConvSSM's TECO-S5)."""
    n_layers: int = 8
    """Blocks of the temporal model (`z_tfm.num_layers`, `seq_model.n_layers`)."""
    patch_size: int = 8
    """Kernel and stride of the transformer's patchifying convolution (`z_ds`): tokens
    per frame = (latent / patch_size)²."""
    width: int = 1024
    """Token width of the temporal transformer (`z_tfm.embed_dim`)."""
    mlp_dim: int = 4096
    """MLP width of the temporal transformer (`z_tfm.mlp_dim`)."""
    n_heads: int = 16
    """Attention heads of the temporal transformer (`z_tfm.num_heads`)."""
    d_model: int = 512
    """Channels of the ConvS5 stack, or width of the S5 stack (`d_model`; temporal
    "convs5", "s5")."""
    ssm_size: int = 1024
    """HiPPO size N of each ConvS5 / S5 layer (`ssm.ssm_size`); the state has N/2
    channels."""
    ssm_blocks: int = 32
    """HiPPO blocks J of each ConvS5 / S5 layer (`ssm.blocks`)."""
    clip_eigs: bool = False
    """Clamp the ConvS5 eigenvalues' real parts below zero (`ssm.clip_eigs`)."""
    max_frames: int = 300
    """Longest video the temporal transformer is run on (`seq_len`): its window, and the
    size of its key/value cache. Generation slides the window past it (`slide_stride`);
    the ConvS5 temporal model has no window."""
    slide_stride: int = 1
    """Past `max_frames`, the transformer re-reads the last `max_frames - slide_stride`
    frames and generates `slide_stride` frames from that read: 1 is TECO's sampler (a
    whole window's work per frame); larger strides spread a re-read over more frames."""
    maskgit_vocab_dim: int = 256
    """Width of the MaskGit token embedding (`z_git.vocab_dim`)."""
    maskgit_width: int = 512
    """Width of the MaskGit transformer (`z_git.embed_dim`)."""
    maskgit_mlp_dim: int = 2048
    """MLP width of the MaskGit transformer (`z_git.mlp_dim`)."""
    maskgit_heads: int = 8
    """Attention heads of the MaskGit transformer (`z_git.num_heads`)."""
    maskgit_layers: int = 8
    """Blocks of the MaskGit transformer (`z_git.num_layers`)."""
    mask_schedule: str = "cosine"
    """Masking schedule of MaskGit training (`z_git.mask_schedule`)."""
    sampler: Sampler = "draft-revise"
    """MaskGit sampling: TECO's draft-and-revise (uniform random chunks) or MaskGIT's
    confidence-based decoding."""
    t_draft: int = 8
    """Draft passes (draft-and-revise), or decoding steps (confidence) (`T_draft`)."""
    t_revise: int = 8
    """Passes per revise round (`T_revise`)."""
    revise_rounds: int = 2
    """Revise rounds (`M`)."""
    temperature: float = 1.0
    """Sampling temperature of the latent codes."""
    top_k: int = 0
    """Sample the latent codes among the `top_k` most likely (0: all)."""
    attention_impl: AttentionImpl = "auto"
    """`eqvid.kernels.attention` implementation: "auto", "pallas", "xla" or "cudnn"."""
    remat: bool = False
    """Recompute the temporal blocks' activations in the backward pass."""

    def __post_init__(self):
        check_positive(
            self, "frame_size", "channels", "encoder_blocks", "decoder_blocks", "embedding_dim",
            "codebook_size", "codebook_dim", "n_cond", "action_dim", "action_embed_dim",
            "patch_size", "width", "mlp_dim", "n_heads", "n_layers", "maskgit_vocab_dim",
            "d_model", "ssm_size", "ssm_blocks", "maskgit_width", "maskgit_mlp_dim",
            "maskgit_heads", "maskgit_layers", "t_draft", "t_revise", "open_loop_context",
        )  # fmt: skip
        for name in ("revise_rounds", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TECOConfig: `{name}` must be an int >= 0; got {value!r}.")
        for name in ("drop_loss_rate", "action_dropout", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TECOConfig: `{name}` must be in [0, 1); got {value!r}.")
        if not self.temperature > 0:
            raise ValueError(f"TECOConfig: `temperature` must be > 0; got {self.temperature!r}.")
        if self.max_frames <= self.n_cond:
            raise ValueError(
                f"TECOConfig: `max_frames` ({self.max_frames}) must exceed `n_cond` "
                f"({self.n_cond})."
            )
        if not 1 <= self.slide_stride <= self.max_frames - self.n_cond:
            raise ValueError(
                f"TECOConfig: `slide_stride` must be in [1, max_frames - n_cond] = [1, "
                f"{self.max_frames - self.n_cond}] (the re-read window keeps n_cond "
                f"frames); got {self.slide_stride!r}."
            )
        if self.temporal not in typing.get_args(Temporal):
            raise ValueError(
                f"TECOConfig: `temporal` must be one of {typing.get_args(Temporal)}; got "
                f"{self.temporal!r}."
            )
        if self.sampler not in typing.get_args(Sampler):
            raise ValueError(
                f"TECOConfig: `sampler` must be one of {typing.get_args(Sampler)}; got "
                f"{self.sampler!r}."
            )
        for name in ("encoder_depths", "decoder_depths"):
            depths = getattr(self, name)
            if not depths or any(d < 1 for d in depths):
                raise ValueError(f"TECOConfig: `{name}` must be positive ints; got {depths!r}.")

    @classmethod
    def preset(cls, name: str) -> "TECOConfig":
        """A named configuration (`"dmlab"`, `"minecraft"`, `"habitat"`, `"kinetics600"`,
        and `"small"` for a CPU)."""
        return preset_of(cls, name)


TECO_PRESETS: dict[str, TECOConfig] = {
    # wilson1yan/teco configs/*.yaml (TECO's own, with the transformer).
    "dmlab": TECOConfig(),
    "minecraft": TECOConfig(
        frame_size=128,
        encoder_blocks=4,
        decoder_blocks=6,
        embedding_dim=128,
        n_layers=12,
        maskgit_width=768,
        maskgit_mlp_dim=3072,
        maskgit_heads=12,
        maskgit_layers=6,
        action_dropout=0.0,
    ),
    "habitat": TECOConfig(
        frame_size=128,
        encoder_blocks=4,
        decoder_blocks=8,
        embedding_dim=256,
        codebook_size=2048,
        patch_size=4,
        maskgit_width=1024,
        maskgit_mlp_dim=4096,
        maskgit_heads=16,
        maskgit_layers=16,
    ),
    "kinetics600": TECOConfig(
        frame_size=128,
        encoder_blocks=8,
        decoder_blocks=10,
        embedding_dim=256,
        patch_size=2,
        width=1536,
        mlp_dim=6144,
        n_heads=24,
        n_layers=24,
        max_frames=100,
        maskgit_width=1024,
        maskgit_mlp_dim=4096,
        maskgit_heads=16,
        maskgit_layers=24,
        use_actions=False,
        action_dropout=0.0,
    ),
    # CPU-sized: a 16×16 code grid (e.g. the small 2D VQGAN's 64×64 frames) → 8×8
    # latents → 2×2 = 4 tokens per frame.
    "small": TECOConfig(
        encoder_depths=(32, 64),
        encoder_blocks=1,
        decoder_depths=(32, 64),
        decoder_blocks=1,
        embedding_dim=16,
        codebook_size=64,
        codebook_dim=8,
        patch_size=4,
        width=64,
        mlp_dim=256,
        n_heads=4,
        n_layers=2,
        maskgit_vocab_dim=32,
        maskgit_width=64,
        maskgit_mlp_dim=256,
        maskgit_heads=4,
        maskgit_layers=2,
        t_draft=4,
        t_revise=4,
        revise_rounds=1,
        drop_loss_rate=0.5,
    ),
}


class LatentCodebook(eqx.Module):
    """TECO's codebook (`Codebook`, `teco/models/base.py`): project to `dim`
    (`proj_in`, no bias), l2-normalise, pick the nearest of `n` unit codes (cosine),
    straight-through in the normalised space, project back (`proj_out`, no bias).

    Losses as TECO logs them: `commitment = 0.25 · ½ mean‖z - sg(q)‖²` and `codebook =
    ½ mean‖sg(z) - q‖²` over every element."""

    proj_in: Dense
    proj_out: Dense
    quantizer: VectorQuantizer

    def __init__(self, embedding_dim: int, n: int, dim: int, *, key: PRNGKeyArray):
        ki, ko, kq = jax.random.split(key, 3)
        self.proj_in = Dense(embedding_dim, dim, use_bias=False, key=ki)
        self.proj_out = Dense(dim, embedding_dim, use_bias=False, key=ko)
        self.quantizer = VectorQuantizer(n, dim, cosine=True, key=kq)

    def __call__(self, z: Float[Array, "*shape embedding"]):
        """`(vectors (straight-through, projected back), codes, commitment, codebook,
        perplexity)`."""
        q, _ = self.quantizer(self.proj_in(z))
        return (
            self.proj_out(q.quantized),
            q.codes,
            0.25 * 0.5 * q.commitment_loss,
            0.5 * q.codebook_loss,
            q.perplexity,
        )

    def lookup(self, codes: Int[Array, "*shape"]) -> Float[Array, "*shape embedding"]:
        """The latent vectors of codes: `proj_out(codebook[codes])`."""
        return self.proj_out(self.quantizer.lookup(codes))


class TECO(AbstractLatentVideoModel):
    """TECO on a frozen tokenizer's codes (see the module docstring).

    **Per video** (codes `(T, S, S)` of the tokenizer, actions `(T,)`):

    ```
    e_t   = tokenizer.embed(codes_t)                       (S, S, E)  frozen
    out_t = dense(encoder([e_{t-1}, e_t]))                 (s, s, D)  e_{-1} = sos_post (learned)
    z_t, k_t = codebook(out_t)                             cosine VQ, straight-through
    l_t   = out_t (t < n_cond) else z_t                    the latents
    y_j   = temporal([l_j, a_{j+1}] for j ≤ ...)           causal; y_j predicts frame j + 1
    loss on frames f ≥ n_cond (DropLoss: a random subset):
      trans  = MaskGit CE of k_f on masked positions, given y_{f-1}   (× s², as TECO)
      recon  = Σ_{S×S} CE(decoder([y_{f-1}, z_f]), codes_f, smoothed)
      loss   = recon + trans + commitment + codebook
    ```

    Generation: the context's latents through the temporal model (cached), then per
    frame: MaskGit samples `k_f` given `y_{f-1}`, `z_f = codebook.lookup(k_f)`, the
    decoder's argmax gives the tokenizer's codes, `[z_f, a_{f+1}]` is the next input.
    """

    tokenizer: AbstractVideoTokenizer = eqx.field(metadata=role(frozen=True))
    sos_post: Float[Array, "code code embed"]
    encoder: ResNetEncoder
    encoder_out: Dense
    codebook: LatentCodebook
    action_embedding: Float[Array, "actions embed"]
    temporal: AbstractTemporalCore
    prior: MaskGitPrior
    decoder: ResNetDecoder
    config: TECOConfig = eqx.field(static=True)
    code_size: int = eqx.field(static=True)

    def __init__(
        self,
        config: TECOConfig,
        *,
        key: PRNGKeyArray,
        tokenizer: AbstractVideoTokenizer | None = None,
    ):
        c = config
        tok = tokenizer_argument("TECO", c, tokenizer)
        shape = tok.code_shape(1, c.frame_size, c.frame_size)
        if shape[1] != shape[2]:
            raise ValueError(f"TECO: the tokenizer's code grid must be square; got {shape[1:]}.")
        size = shape[1]
        latent = size // 2 ** (len(c.encoder_depths) - 1)
        patch = c.patch_size if c.temporal == "transformer" else 1
        if latent * 2 ** (len(c.encoder_depths) - 1) != size or latent % patch:
            raise ValueError(
                f"TECO: the tokenizer's {size}×{size} code grid over {len(c.encoder_depths)} "
                f"encoder stages gives {size / 2 ** (len(c.encoder_depths) - 1):g}×… latents, "
                f"which patch_size {c.patch_size} must divide; choose encoder_depths / "
                "patch_size for this tokenizer."
            )
        ks, ke, ko, kc, ka, kt, kp, kd = jax.random.split(key, 8)
        e = tok.embed_dim
        self.tokenizer = tok
        self.sos_post = 0.02 * jax.random.normal(ks, (size, size, e), jnp.float32)
        self.encoder = ResNetEncoder(2 * e, c.encoder_depths, blocks=c.encoder_blocks, key=ke)
        self.encoder_out = Dense(c.encoder_depths[-1], c.embedding_dim, key=ko)
        self.codebook = LatentCodebook(c.embedding_dim, c.codebook_size, c.codebook_dim, key=kc)
        self.action_embedding = jax.random.normal(
            ka, (c.action_dim + 1, c.action_embed_dim), jnp.float32
        )
        if c.temporal == "s5":
            self.temporal = S5Core(
                c.embedding_dim + c.action_embed_dim,
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
        elif c.temporal == "convs5":
            self.temporal = ConvS5Core(
                c.embedding_dim + c.action_embed_dim,
                latent=latent,
                d_model=c.d_model,
                ssm_size=c.ssm_size,
                n_layers=c.n_layers,
                blocks=c.ssm_blocks,
                clip_eigs=c.clip_eigs,
                remat=c.remat,
                key=kt,
            )
        else:
            self.temporal = TransformerCore(
                c.embedding_dim + c.action_embed_dim,
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
        deter = c.d_model if c.temporal == "convs5" else c.embedding_dim
        self.prior = MaskGitPrior(
            (latent, latent),
            c.codebook_size,
            deter,
            dim=c.maskgit_width,
            num_heads=c.maskgit_heads,
            num_layers=c.maskgit_layers,
            mlp_dim=c.maskgit_mlp_dim,
            vocab_dim=c.maskgit_vocab_dim,
            impl=c.attention_impl,
            key=kp,
        )
        self.decoder = ResNetDecoder(
            deter + c.embedding_dim, c.decoder_depths, tok.n_codes, blocks=c.decoder_blocks, key=kd
        )
        self.config = config
        self.code_size = size

    # -- pieces ------------------------------------------------------------------

    @property
    def latent_size(self) -> int:
        return self.code_size // 2 ** (len(self.config.encoder_depths) - 1)

    def _posterior(self, codes: Int[Array, "time code code"]):
        """The encoder's outputs and their quantisation for every frame."""
        emb = jax.lax.stop_gradient(self.tokenizer.embed(codes))
        prev = jnp.concatenate([self.sos_post[None].astype(emb.dtype), emb[:-1]])
        out = self.encoder_out(self.encoder(jnp.concatenate([prev, emb], axis=-1)))
        z, k, commitment, codebook_loss, perplexity = self.codebook(out)
        n = self.config.n_cond
        latents = jnp.concatenate([out[:n], z[n:]])
        return latents, z, k, commitment, codebook_loss, perplexity

    def _inputs(self, latents, actions):
        """Temporal inputs `[l_j, a_{j+1}]` for `j = 0 … len(latents) - 1` (`actions`
        one longer than `latents`)."""
        a = embed_actions(self.action_embedding, actions[1:]).astype(latents.dtype)
        a = jnp.broadcast_to(a[:, None, None, :], latents.shape[:-1] + a.shape[-1:])
        return jnp.concatenate([latents, a], axis=-1)

    def _logits(self, deter, z):
        return self.decoder(jnp.concatenate([deter, z], axis=-1))

    # -- training ----------------------------------------------------------------

    def _video_loss(self, codes, actions, key, open_loop):
        """Per video: `(recon CE sum over frames, (masked CE sum, mask count), frames,
        commitment, codebook, perplexity)`; `open_loop`: under `causal_masking`, the
        temporal model sees the mask constant from `open_loop_context` on."""
        c = self.config
        t, n = codes.shape[0], c.n_cond
        latents, z, k, commitment, codebook_loss, perplexity = self._posterior(codes)
        seen = latents[:-1]
        if c.causal_masking:
            masked = open_loop & (jnp.arange(t - 1) >= c.open_loop_context)
            fill = jnp.asarray(c.frame_mask_value, seen.dtype)
            seen = jnp.where(masked[:, None, None, None], fill, seen)
        k_temporal = None if key is None else jax.random.fold_in(key, 3)
        deter = self.temporal(self._inputs(seen, actions), key=k_temporal)  # y_0 … y_{T-2}
        k_drop = k_mask = None
        if key is not None:
            k_drop, k_mask = jax.random.split(key)
        frames = drop_loss_frames(k_drop, t, n, c.drop_loss_rate)
        y = deter[frames - 1]
        z_f, k_f, codes_f = z[frames], k[frames], codes[frames]
        # MaskGit: a random mask per frame, the codes' logits given the temporal output.
        if k_mask is None:
            k_mask = jax.random.key(0)
        masks = jax.vmap(lambda kk: training_mask(kk, k_f.shape[1:], c.mask_schedule))(
            jax.random.split(k_mask, len(frames))
        )
        tokens = jnp.where(masks, -1, k_f)
        logits = jax.vmap(self.prior)(tokens, y)
        ce = -jnp.take_along_axis(
            jax.nn.log_softmax(logits.astype(jnp.float32)), k_f[..., None], -1
        )[..., 0]
        masked_sum = jnp.sum(ce * masks.astype(ce.dtype))
        mask_count = jnp.sum(masks.astype(jnp.int32))
        # Decoder: the tokenizer's codes with label smoothing, summed over the grid.
        recon_sum = smoothed_code_loss(self._logits(y, z_f), codes_f, c.label_smoothing)
        return recon_sum, masked_sum, mask_count, len(frames), commitment, codebook_loss, perplexity

    def codes_loss(
        self,
        codes: Int[Array, "batch steps code_height code_width"],
        actions: Int[Array, "batch frames"] | None,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """TECO's loss and its terms `recon_loss`, `trans_loss`, `commitment_loss`,
        `codebook_loss` (and `perplexity`, logged, not descended). Masked-token CE is
        averaged over every masked position of the batch and scaled by the latent
        grid's size; the decoder's CE is summed over the code grid and averaged over
        the frames DropLoss keeps. `key=None` (evaluation): no action dropout, every
        frame, fixed masks."""
        del step
        c = self.config
        b, t = codes.shape[:2]
        if t <= c.n_cond:
            raise ValueError(
                f"TECO: a training window needs more than n_cond = {c.n_cond} frames; got {t}."
            )
        if t > c.max_frames:
            raise ValueError(
                f"TECO: windows of {t} frames exceed max_frames = {c.max_frames}; train on "
                "shorter windows (--seq-len) or raise max_frames."
            )
        if c.causal_masking and t <= c.open_loop_context + 1:
            raise ValueError(
                f"TECO: causal masking needs windows longer than open_loop_context + 1 = "
                f"{c.open_loop_context + 1} frames; got {t} (train on longer windows, "
                "--seq-len, or lower open_loop_context)."
            )
        keys = per_video_keys(key, b)
        given = actions is not None and c.use_actions
        actions = latent_actions("TECO", actions, (b, t), c.use_actions)
        # Under causal masking, the videos that keep their (given) actions run open-loop.
        open_loop = jnp.full((b,), given)
        loss_keys = None
        if keys is not None:
            if c.action_dropout > 0:
                action_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(keys)
                drop = action_drop_flags(action_keys, c.action_dropout)
                actions = jnp.where(drop[:, None], -1, actions)
                open_loop = open_loop & ~drop
            loss_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 2))(keys)
        if loss_keys is None:
            out = jax.vmap(lambda cd, a, o: self._video_loss(cd, a, None, o))(
                codes, actions, open_loop
            )
        else:
            out = jax.vmap(self._video_loss)(codes, actions, loss_keys, open_loop)
        recon_sum, masked_sum, mask_count, frames, commitment, codebook_loss, perplexity = out
        grid = self.latent_size**2
        recon_loss = jnp.sum(recon_sum) / jnp.sum(frames).astype(recon_sum.dtype)
        masked = jnp.maximum(jnp.sum(mask_count), 1).astype(masked_sum.dtype)
        trans_loss = jnp.sum(masked_sum) / masked * grid
        commitment = jnp.mean(commitment)
        codebook_loss = jnp.mean(codebook_loss)
        loss = recon_loss + trans_loss + commitment + codebook_loss
        terms = {
            "recon_loss": recon_loss,
            "trans_loss": trans_loss,
            "commitment_loss": commitment,
            "codebook_loss": codebook_loss,
            "perplexity": jnp.mean(perplexity),
        }
        return loss, terms, state

    # -- generation ---------------------------------------------------------------

    def _sample_latent(self, deter, key) -> Array:
        c = self.config
        top_k = c.top_k or None
        if c.sampler == "confidence":
            out = sample_confidence(
                self.prior, deter, key, steps=c.t_draft, temperature=c.temperature, top_k=top_k,
                schedule=c.mask_schedule,
            )  # fmt: skip
        else:
            out = sample_draft_and_revise(
                self.prior, deter, key, t_draft=c.t_draft, t_revise=c.t_revise,
                m=c.revise_rounds, temperature=c.temperature, top_k=top_k,
            )  # fmt: skip
        assert not isinstance(out, tuple)  # no history asked for
        return out

    def generate_codes(
        self,
        context: Int[Array, "context_steps code_height code_width"],
        num_steps: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " frames"] | None = None,
        cache: bool = True,
    ) -> Int[Array, "{num_steps} code_height code_width"]:
        """Continue the codes of `context` (at least `n_cond` frames) by `num_steps`
        frames: the context's latents are the posterior's; then per frame MaskGit
        samples the latent codes given the temporal output, the decoder's argmax gives
        the tokenizer's codes, and the sampled latent is the next input.

        `cache=True`: the temporal transformer keeps a key/value cache (each frame
        computes one frame's tokens); `cache=False`: it re-runs the whole sequence per
        frame, as TECO's sampler. Both give the same frames for the same key. Past
        `max_frames` the transformer slides its window as TECO's sampler
        (`config.slide_stride`); the ConvS5 and S5 temporal models keep stepping. Under
        `config.causal_masking`, given actions, generation is open-loop: the temporal
        model takes the mask constant for every generated frame (the context's last
        frame it sees, as in training).
        """
        c = self.config
        n_ctx = context.shape[0]
        if n_ctx < c.n_cond:
            raise ValueError(
                f"TECO.generate: the context has {n_ctx} frames, fewer than n_cond = "
                f"{c.n_cond}; give at least {c.n_cond}."
            )
        if num_steps < 1:
            raise ValueError(f"TECO.generate: `num_frames` must be >= 1; got {num_steps}.")
        open_loop = c.causal_masking and c.use_actions and actions is not None
        actions = latent_actions("TECO.generate", actions, (n_ctx + num_steps,), c.use_actions)
        size = self.latent_size
        fill = jnp.full((size, size, c.embedding_dim), c.frame_mask_value, jnp.float32)

        def window_inputs(codes, actions, start):
            latents = self._posterior(codes)[0]
            if open_loop:  # generated frames are masked, as they were fed
                generated = start + jnp.arange(codes.shape[0]) >= n_ctx
                latents = jnp.where(
                    generated[:, None, None, None], fill.astype(latents.dtype), latents
                )
            return self._inputs(latents, actions)

        def sample_frame(y, k):
            z = self.codebook.lookup(self._sample_latent(y, k))
            return z, jnp.argmax(self._logits(y, z), axis=-1).astype(jnp.int32)

        def next_input(z, codes, actions, index):
            del codes, index
            return self._inputs((fill.astype(z.dtype) if open_loop else z)[None], actions)[0]

        return windowed_rollout(
            "TECO",
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
            cache=cache,
        )

    # -- contract -------------------------------------------------------------------

    def check_codes_batch(
        self,
        codes: Int[np.ndarray, "batch steps code_height code_width"],
        actions: Int[np.ndarray, "batch frames"] | None,
    ) -> None:
        """Codes of the tokenizer's grid and codebook; actions in `[-1, action_dim)`."""
        check_latent_batch(
            "TECO",
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
        """One group (TECO decays every parameter with AdamW)."""
        return {}

    def with_state(self, state: eqx.nn.State | None) -> "TECO":
        """No model state (the tokenizer's is folded in): the model itself."""
        del state
        return self


@dataclasses.dataclass(frozen=True)
class TECOConvS5Config(TECOConfig):
    """TECO with a ConvS5 stack as its temporal model (ConvSSM's TECO-ConvS5: the
    transformer and its 1-token bottleneck replaced by ConvS5 layers over the full 8×8
    latent grid). Presets: `TECOConvS5Config.preset(name)`."""

    temporal: Temporal = "convs5"
    """The temporal model (see `TECOConfig`)."""


@dataclasses.dataclass(frozen=True)
class TECOS5Config(TECOConfig):
    """TECO with an S5 stack as its temporal model (ConvSSM's TECO-S5: each frame's 8×8
    latent grid flattened into one `d_model` vector, S5 layers over time, projected back
    to the grid). Presets: `TECOS5Config.preset(name)`."""

    temporal: Temporal = "s5"
    """The temporal model (see `TECOConfig`)."""


def _with_temporal(base: TECOConfig, config_class: type, temporal: str, **changes: typing.Any):
    """TECO's preset `base` with another temporal model: ConvSSM's TECO-ConvS5 and
    TECO-S5 configs keep TECO's other settings and add the stack's."""
    fields: dict[str, typing.Any] = {
        f.name: getattr(base, f.name) for f in dataclasses.fields(TECOConfig) if f.init
    }
    fields.update(changes, temporal=temporal)
    return config_class(**fields)


def _with_convs5(base: TECOConfig, **changes: typing.Any) -> TECOConvS5Config:
    """TECO's preset `base` with a ConvS5 stack as its temporal model."""
    return _with_temporal(base, TECOConvS5Config, "convs5", **changes)


TECO_CONVS5_PRESETS: dict[str, TECOConvS5Config] = {
    # NVlabs/ConvSSM configs/3D_ENV_BENCHMARK/*/..._teco_convS5.yaml: TECO's settings,
    # a ConvS5 stack of d_model 512 (DMLab: ssm 1024 in 32 blocks; the released Habitat
    # and Minecraft models: ssm 512 in one block).
    "dmlab": _with_convs5(TECO_PRESETS["dmlab"], causal_masking=True),
    "habitat": _with_convs5(TECO_PRESETS["habitat"], ssm_size=512, ssm_blocks=1),
    "minecraft": _with_convs5(TECO_PRESETS["minecraft"], ssm_size=512, ssm_blocks=1),
    # CPU-sized: TECO's "small" with a ConvS5 stack over the 8×8 latents.
    "small": _with_convs5(TECO_PRESETS["small"], d_model=32, ssm_size=32, ssm_blocks=1),
}

TECO_S5_PRESETS: dict[str, TECOS5Config] = {
    # NVlabs/ConvSSM configs/3D_ENV_BENCHMARK/dmlab/dmlab_teco_S5.yaml (the only
    # TECO-S5 config): TECO's DMLab settings, 8 S5 layers of width 2048, ssm 2048 in one
    # block.
    "dmlab": _with_temporal(
        TECO_PRESETS["dmlab"],
        TECOS5Config,
        "s5",
        d_model=2048,
        ssm_size=2048,
        ssm_blocks=1,
        causal_masking=True,
    ),
    # CPU-sized: TECO's "small" with an S5 stack over the flattened 8×8 latents.
    "small": _with_temporal(
        TECO_PRESETS["small"], TECOS5Config, "s5", d_model=64, ssm_size=32, ssm_blocks=1
    ),
}

register_model(ModelSpec("teco", "TECO", TECOConfig, TECO, TECO_PRESETS))
register_model(ModelSpec("teco-convs5", "TECO-ConvS5", TECOConvS5Config, TECO, TECO_CONVS5_PRESETS))
register_model(ModelSpec("teco-s5", "TECO-S5", TECOS5Config, TECO, TECO_S5_PRESETS))
