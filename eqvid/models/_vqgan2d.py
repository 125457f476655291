"""The 2D VQGAN tokenizer (Esser et al., CVPR 2021; taming-transformers): each frame to
a grid of codes and back, trained with L1 + perceptual reconstruction, a vector
quantiser, and a PatchGAN discriminator with hinge loss and taming's adaptive weight.

The tokenizer under TECO and ConvS5 on latents (TECO trained its per-frame VQGAN with
taming-transformers and converted it). Registered as `vqgan2d`:
`python -m eqvid.train --model vqgan2d`.
"""

import dataclasses
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..metrics import LPIPS
from ..nn._conv import Conv2d
from ..nn._patch_discriminator import PatchDiscriminator
from ..nn._quantize import VectorQuantizer
from ..nn._roles import role
from ..nn._vqgan_codec import VQGANDecoder, VQGANEncoder
from ._abstract import GroupSettings, KeyOrKeys, LossTerms, VideoBatch, per_video_keys
from ._frames import check_positive
from ._registry import ModelSpec, preset_of, register_model
from ._tokenizer import AbstractVideoTokenizer, load_perceptual


@dataclasses.dataclass(frozen=True)
class VQGAN2DConfig:
    """Architecture and objective of a `VQGAN2D` (taming-transformers' `ddconfig`,
    quantiser and `lossconfig`). Presets: `VQGAN2DConfig.preset(name)`."""

    frame_size: int = 64
    """Height and width of the frames (taming's `resolution`)."""
    channels: int = 1
    """Colour channels of the frames (taming's `in_channels` = `out_ch`)."""
    ch: int = 128
    """Base channels; level `i` of the encoder and decoder has `ch · ch_mult[i]`."""
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    """Channel multiplier per level; each level after the first halves the resolution,
    so codes are `frame_size / 2**(len(ch_mult) - 1)` on a side."""
    num_res_blocks: int = 2
    """Residual blocks per encoder level (the decoder has one more)."""
    attn_resolutions: tuple[int, ...] = (16,)
    """Resolutions at which the residual blocks are followed by self-attention."""
    z_channels: int = 256
    """Channels of the encoder's output and the decoder's input."""
    embed_dim: int = 256
    """Width of the code vectors."""
    n_embed: int = 1024
    """Codebook size."""
    dropout: float = 0.0
    """Dropout in the residual blocks during training."""
    beta: float = 0.25
    """Weight of the quantiser's β term (see `beta_on`)."""
    beta_on: Literal["codebook", "commitment"] = "codebook"
    """Which quantiser term β weighs: taming's VQGAN weighs the codebook term
    (`VectorQuantizer2(legacy=True)`), the VQ-VAE paper and TATS the commitment term."""
    cosine_codebook: bool = False
    """l2-normalised codes and inputs (cosine distance), as TECO's codebook."""
    codebook_ema_decay: float | None = None
    """Learn the codebook by exponential moving averages of the assigned vectors (model
    state) instead of by gradient; None: by gradient, as taming."""
    restart_threshold: float | None = None
    """With `codebook_ema_decay`: codes whose moving-average count falls below this are restarted
    at random vectors of the batch (dead-code restart, as TATS); None: never."""
    codebook_weight: float = 1.0
    """Weight of the quantiser's loss."""
    perceptual_weight: float = 1.0
    """Weight of the LPIPS term; 0 trains without it. Without LPIPS weights on this
    machine (`python -m eqvid.metrics.convert_weights lpips`), the run says so once and
    trains without it."""
    lpips_weights: str | None = None
    """The converted LPIPS file (None: the default place, `$EQVID_WEIGHTS` or
    `~/.cache/eqvid/lpips_alexnet.npz`)."""
    disc_layers: int = 3
    """Stride-2 layers of the PatchGAN discriminator."""
    disc_ndf: int = 64
    """Channels of the discriminator's first layer."""
    disc_start: int = 10_000
    """The training step (1-based) from which the discriminator trains and the GAN term
    enters the generator's loss."""
    disc_weight: float = 0.8
    """Multiplies the adaptive weight of the GAN term."""
    disc_factor: float = 1.0
    """The GAN terms' factor once the discriminator has started."""
    train_frames: int | None = 4
    """Frames drawn at random from each training video per step (a per-frame tokenizer
    needs no more); None: every frame."""

    def __post_init__(self):
        check_positive(self, "frame_size", "channels", "ch", "num_res_blocks")
        check_positive(self, "z_channels", "embed_dim", "n_embed", "disc_ndf")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(
                f"VQGAN2DConfig: `ch_mult` must be a non-empty tuple of ints ≥ 1, got "
                f"{self.ch_mult!r}."
            )
        down = 2 ** (len(self.ch_mult) - 1)
        if self.frame_size % down:
            raise ValueError(
                f"VQGAN2DConfig: `frame_size` ({self.frame_size}) must be a multiple of "
                f"2**(len(ch_mult)-1) = {down}; use another frame size or fewer levels."
            )
        if self.train_frames is not None and self.train_frames < 1:
            raise ValueError(
                f"VQGAN2DConfig: `train_frames` must be ≥ 1 or None, got {self.train_frames}."
            )
        if self.disc_start < 1:
            raise ValueError(f"VQGAN2DConfig: `disc_start` must be ≥ 1, got {self.disc_start}.")
        for name in ("beta", "codebook_weight", "perceptual_weight", "disc_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"VQGAN2DConfig: `{name}` must be ≥ 0, got {getattr(self, name)}.")
        if self.restart_threshold is not None and self.codebook_ema_decay is None:
            raise ValueError(
                "VQGAN2DConfig: `restart_threshold` needs `codebook_ema_decay` (dead codes are found "
                "by their moving-average counts)."
            )

    @property
    def code_size(self) -> int:
        """Codes per side of a frame."""
        return self.frame_size // 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def preset(cls, name: str) -> "VQGAN2DConfig":
        """A named configuration (`"small"`, `"taming-f16-1024"`, `"taming-f16-16384"`,
        `"teco-dmlab"`, `"teco-minecraft-128"`, `"teco-habitat-128"`)."""
        return preset_of(cls, name)


def hinge_d_loss(
    logits_real: Float[Array, "..."], logits_fake: Float[Array, "..."]
) -> Float[Array, ""]:
    """The discriminator's hinge loss: `(mean relu(1 - D(x)) + mean relu(1 + D(x̂))) / 2`."""
    return 0.5 * (
        jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))
    )


def adaptive_weight(
    grad_nll: Float[Array, "..."], grad_gan: Float[Array, "..."], disc_weight: float
) -> Float[Array, ""]:
    """taming's `calculate_adaptive_weight`: `‖∇nll‖ / (‖∇gan‖ + 1e-4)` at the decoder's
    last layer, clamped to `[0, 1e4]`, no gradient, times `disc_weight`."""
    w = jnp.linalg.norm(grad_nll) / (jnp.linalg.norm(grad_gan) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, 1e4)) * disc_weight


class VQGAN2D(AbstractVideoTokenizer):
    """taming-transformers' VQGAN on every frame of a video: `encoder → quant_conv (1×1)
    → vector quantiser → post_quant_conv (1×1) → decoder`, with the PatchGAN
    `discriminator` (its own optimiser group, trained on the `disc_loss` term from
    `disc_start`) and a frozen LPIPS network for the perceptual term.

    The generator's loss, as taming's `VQLPIPSWithDiscriminator`:
    `mean|x - x̂| + perceptual_weight · LPIPS(x, x̂) + d_weight · factor · (-mean D(x̂)) +
    codebook_weight · quantiser loss`, with `d_weight` the adaptive weight at the
    decoder's last layer and `factor = disc_factor` from `disc_start` on (0 before).
    The discriminator's: `factor · hinge(D(x), D(sg x̂))`. Both are computed in one
    pass of a training step (taming runs the generator's and the discriminator's
    steps one after the other on the same batch).
    """

    encoder: VQGANEncoder
    quant_conv: Conv2d
    quantize: VectorQuantizer
    post_quant_conv: Conv2d
    decoder: VQGANDecoder
    discriminator: PatchDiscriminator = eqx.field(
        metadata=role(group="discriminator", objective="disc_loss")
    )
    lpips: LPIPS | None = eqx.field(metadata=role(frozen=True))
    config: VQGAN2DConfig = eqx.field(static=True)

    def __init__(self, config: VQGAN2DConfig, *, key: PRNGKeyArray):
        c = config
        ke, kq, kc, kp, kd, kdisc = jax.random.split(key, 6)
        codec: dict[str, Any] = dict(
            ch=c.ch,
            ch_mult=c.ch_mult,
            num_res_blocks=c.num_res_blocks,
            attn_resolutions=c.attn_resolutions,
            resolution=c.frame_size,
            z_channels=c.z_channels,
            dropout=c.dropout,
        )
        self.encoder = VQGANEncoder(in_channels=c.channels, **codec, key=ke)
        self.quant_conv = Conv2d(c.z_channels, c.embed_dim, 1, key=kc)
        self.quantize = VectorQuantizer(
            c.n_embed,
            c.embed_dim,
            beta=c.beta,
            beta_on=c.beta_on,
            cosine=c.cosine_codebook,
            ema_decay=c.codebook_ema_decay,
            restart_threshold=c.restart_threshold,
            key=kq,
        )
        self.post_quant_conv = Conv2d(c.embed_dim, c.z_channels, 1, key=kp)
        self.decoder = VQGANDecoder(out_channels=c.channels, **codec, key=kd)
        self.discriminator = PatchDiscriminator(c.channels, c.disc_ndf, c.disc_layers, key=kdisc)
        self.lpips = load_perceptual("VQGAN2D", c.perceptual_weight, c.lpips_weights)
        self.config = config

    # -- the tokenizer -----------------------------------------------------------

    @property
    def n_codes(self) -> int:
        return self.config.n_embed

    def code_shape(self, time: int, height: int, width: int) -> tuple[int, int, int]:
        s = self.config.frame_size
        if (height, width) != (s, s):
            raise ValueError(
                f"VQGAN2D: frames must be {s}×{s} (the tokenizer's frame_size), got "
                f"{height}×{width}; resize the videos or use a tokenizer built for them."
            )
        return (time, self.config.code_size, self.config.code_size)

    def _latents(self, frames, key=None):
        """`quant_conv(encoder(frames))`: what the quantiser quantises."""
        return self.quant_conv(self.encoder(frames, key=key))

    def encode(
        self, video: Float[Array, "time height width channels"]
    ) -> Int[Array, "time code_height code_width"]:
        """The codes of every frame."""
        self.code_shape(*video.shape[:3])
        q, _ = self.quantize(self._latents(video))
        return q.codes

    def decode(
        self, codes: Int[Array, "time code_height code_width"]
    ) -> Float[Array, "time height width channels"]:
        """Frames from codes (unclipped, as taming's decoder)."""
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def embed(self, codes: Int[Array, "*shape"]) -> Float[Array, "*shape {self.embed_dim}"]:
        """The codebook vectors of `codes` (unit vectors with a cosine codebook)."""
        return self.quantize.lookup(codes)

    def reconstruct(
        self, video: Float[Array, "time height width channels"]
    ) -> Float[Array, "time height width channels"]:
        self.code_shape(*video.shape[:3])
        q, _ = self.quantize(self._latents(video))
        return self.decoder(self.post_quant_conv(q.quantized))

    # -- training ----------------------------------------------------------------

    def _frames(self, video, keys):
        """The training frames `(n, H, W, C)`: `train_frames` drawn from each video
        (without replacement, by its own key), or all frames."""
        k = self.config.train_frames
        b, t = video.shape[:2]
        if keys is None or k is None or k >= t:
            return video.reshape(b * t, *video.shape[2:])

        def pick(v, key):
            idx = jax.random.choice(key, t, (k,), replace=False)
            return v[idx]

        return jax.vmap(pick)(video, keys).reshape(b * k, *video.shape[2:])

    def _perceptual(self, x, x_hat):
        if self.lpips is None:
            return jnp.zeros((), x.dtype)
        return jnp.mean(jax.lax.stop_gradient(self.lpips)(x, x_hat))  # grey frames as RGB

    def loss(
        self,
        batch: VideoBatch,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """The generator's loss and its terms (`rec_loss` L1, `p_loss` LPIPS, `nll_loss`,
        `g_loss`, `d_weight`, `disc_factor`, `quant_loss`, `commitment_loss`,
        `codebook_loss`, `perplexity`, `usage`), the discriminator's `disc_loss` (with
        `logits_real`, `logits_fake`), and the state (an EMA codebook, updated when
        `key` is given)."""
        c = self.config
        keys = per_video_keys(key, batch.size)
        x = self._frames(batch.frames("VQGAN2D"), keys)
        if keys is None:
            k_drop = k_quant = None
        else:
            k_drop, k_quant = jax.random.split(jax.random.fold_in(keys[0], 0x5EED))
        kd_enc, kd_dec = (None, None) if k_drop is None else jax.random.split(k_drop)
        if c.dropout == 0:
            kd_enc = kd_dec = None
        q, state = self.quantize(
            self._latents(x, kd_enc), state, key=k_quant, update=keys is not None
        )
        h = self.decoder.features(self.post_quant_conv(q.quantized), key=kd_dec)
        conv_out = self.decoder.conv_out
        factor = jnp.where(jnp.asarray(step) >= c.disc_start, c.disc_factor, 0.0)

        def generator_terms(x_hat):
            rec = jnp.mean(jnp.abs(x - x_hat))
            p = self._perceptual(x, x_hat)
            nll = rec + c.perceptual_weight * p
            g = -jnp.mean(self.discriminator(x_hat))
            return (nll, g), (rec, p)

        x_hat = conv_out(h)
        (nll, g), vjp, (rec, p) = jax.vjp(generator_terms, x_hat, has_aux=True)
        # The adaptive weight: gradients of nll and of g at the last layer's weight.
        _, weight_vjp = jax.vjp(
            lambda w: eqx.tree_at(lambda m: m.weight, conv_out, w)(jax.lax.stop_gradient(h)),
            conv_out.weight,
        )
        one, zero = jnp.ones_like(nll), jnp.zeros_like(nll)
        (d_nll,) = weight_vjp(vjp((one, zero))[0])
        (d_g,) = weight_vjp(vjp((zero, one))[0])
        d_weight = adaptive_weight(d_nll, d_g, c.disc_weight)
        loss = nll + d_weight * factor * g + c.codebook_weight * q.loss

        logits_real = self.discriminator(x)
        logits_fake = self.discriminator(jax.lax.stop_gradient(x_hat))
        disc_loss = factor * hinge_d_loss(logits_real, logits_fake)
        terms = {
            "rec_loss": rec,
            "p_loss": p,
            "nll_loss": nll,
            "g_loss": g,
            "d_weight": d_weight,
            "disc_factor": factor,
            "quant_loss": q.loss,
            "commitment_loss": q.commitment_loss,
            "codebook_loss": q.codebook_loss,
            "perplexity": q.perplexity,
            "usage": q.usage,
            "disc_loss": disc_loss,
            "logits_real": jnp.mean(logits_real),
            "logits_fake": jnp.mean(logits_fake),
        }
        return loss, terms, state

    def check_batch(
        self,
        video: Float[np.ndarray, "batch time height width channels"],
        actions: Int[np.ndarray, "batch time"] | None,
    ) -> None:
        """Frames of the tokenizer's size and channels, at least one video."""
        del actions
        if video.shape[0] == 0:
            raise ValueError("VQGAN2D: the batch holds no video.")
        self.code_shape(*video.shape[1:4])
        if video.shape[-1] != self.config.channels:
            raise ValueError(
                f"VQGAN2D: videos must have {self.config.channels} channels (the "
                f"tokenizer's `channels`), got {video.shape[-1]}."
            )

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """Adam β = (0.5, 0.9) for both parts, as taming; the discriminator from
        `disc_start`."""
        return {
            "default": GroupSettings(b1=0.5, b2=0.9),
            "discriminator": GroupSettings(b1=0.5, b2=0.9, start_step=self.config.disc_start),
        }

    def with_state(self, state: eqx.nn.State | None) -> "VQGAN2D":
        """The EMA codebook (if any) folded into the quantiser."""
        if state is None:
            return self
        return eqx.tree_at(lambda m: m.quantize, self, self.quantize.with_state(state))


VQGAN2D_PRESETS: dict[str, VQGAN2DConfig] = {
    # taming-transformers' ImageNet VQGANs (f = 16): vqgan_imagenet_f16_1024 and
    # _16384 (configs/imagenet_vqgan.yaml; 256×256 RGB, 16×16 codes).
    "taming-f16-1024": VQGAN2DConfig(frame_size=256, channels=3, disc_start=250_001),
    "taming-f16-16384": VQGAN2DConfig(
        frame_size=256, channels=3, n_embed=16384, disc_start=1, disc_weight=0.75, disc_layers=2
    ),
    # TECO's tokenizers (Yan et al. 2023; converted from taming-transformers): 16×16
    # codes per frame, so three levels for 64² (DMLab) and four for 128² (Minecraft,
    # Habitat). The code grids are TECO's; the codebook sizes are 1024, and 8192 for
    # Habitat (its checkpoint folder's name); the widths are taming's defaults, since
    # TECO's repository does not record them: each released checkpoint's `args` does,
    # and `python -m eqvid.models.convert_tokenizer teco` builds the model from those.
    "teco-dmlab": VQGAN2DConfig(
        frame_size=64, channels=3, ch_mult=(1, 2, 2), attn_resolutions=(16,)
    ),
    "teco-minecraft-128": VQGAN2DConfig(
        frame_size=128, channels=3, ch_mult=(1, 1, 2, 2), attn_resolutions=(16,)
    ),
    "teco-habitat-128": VQGAN2DConfig(
        frame_size=128, channels=3, ch_mult=(1, 1, 2, 2), attn_resolutions=(16,), n_embed=8192
    ),
    # Small enough to train on a 2-core CPU in minutes: 64×64 grey frames → 16×16
    # codes of 256, an EMA codebook with dead-code restart (every code stays in use),
    # two frames of each video per step, the GAN from step 1001 (after a CPU run).
    "small": VQGAN2DConfig(
        ch=16,
        ch_mult=(1, 2, 4),
        num_res_blocks=1,
        attn_resolutions=(),
        z_channels=32,
        embed_dim=32,
        n_embed=256,
        codebook_ema_decay=0.99,
        restart_threshold=1.0,
        beta_on="commitment",
        disc_layers=2,
        disc_ndf=32,
        disc_start=1001,
        disc_weight=0.1,
        perceptual_weight=0.0,
        train_frames=2,
    ),
}

register_model(ModelSpec("vqgan2d", "VQGAN (2D)", VQGAN2DConfig, VQGAN2D, VQGAN2D_PRESETS))
