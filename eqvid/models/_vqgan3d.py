"""The 3D VQGAN tokenizer of TATS (Ge et al., ECCV 2022), the video tokenizer MeBT
stands on unchanged: a clip of frames to a `(time / d_t, height / d_s, width / d_s)`
grid of codes and back, trained with L1 + perceptual reconstruction, an EMA codebook
with dead-code restarts, and two discriminators with hinge losses and feature
matching: a 2D one on a random frame of each clip and a 3D one on the whole clip.

Registered as `vqgan3d`: `python -m eqvid.train --model vqgan3d`.

**Differences from TATS** (`tats/tats_vqgan.py`), besides the layout (channels
last, one video `(time, height, width, channels)` per call of `encode`):

- Pixels: eqvid's videos live in `[-1, 1]`, TATS's in `[-0.5, 0.5]`. The model
  multiplies its input by `pixel_scale` (0.5) and `decode` divides by it, so that a
  converted TATS checkpoint sees the values it was trained on; the losses are
  computed on the scaled pixels, so their weights mean what they mean in TATS.
- The perceptual term is eqvid's LPIPS (AlexNet trunk), not TATS's VGG LPIPS (whose
  lin layers' dropout TATS leaves active while training); it gets TATS's input, the
  scaled frames in `[-0.5, 0.5]`.
- The discriminators' generator-side and discriminator-side losses come from one
  pass (TATS alternates two optimiser steps on the same batch), and the image and
  video discriminators' BatchNorm always uses the statistics of the call, as TATS's
  do while training (their only use).
- The discriminator's first step is `disc_start` (1-based), TATS's
  `discriminator_iter_start + 1` (TATS switches on at 0-based `global_step ≥
  discriminator_iter_start`, its optimiser steps with gradient accumulation, as
  eqvid's steps).
"""

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..metrics import LPIPS
from ..nn._conv import Conv2d
from ..nn._patch_discriminator import BatchNorm
from ..nn._quantize import CodebookEMA, VectorQuantizer
from ..nn._roles import role
from ..nn._vqgan3d_codec import (
    BatchNorm3d,
    NormType,
    PaddingType,
    PatchDiscriminator3D,
    SamePadConv3d,
    VQGAN3DDecoder,
    VQGAN3DEncoder,
    record_batch_statistics,
)
from ._abstract import GroupSettings, KeyOrKeys, LossTerms, VideoBatch, per_video_keys
from ._frames import check_positive
from ._registry import ModelSpec, preset_of, register_model
from ._tokenizer import AbstractVideoTokenizer, load_perceptual
from ._vqgan2d import hinge_d_loss

BN_MOMENTUM = 0.1
"""PyTorch's BatchNorm momentum: `running ← (1 - m)·running + m·batch`."""


@dataclasses.dataclass(frozen=True)
class VQGAN3DConfig:
    """Architecture and objective of a `VQGAN3D` (TATS's `VQGAN` arguments). The
    defaults are the released 128×128 checkpoints' configuration (TATS's README
    command), on 64×64 grey frames. Presets: `VQGAN3DConfig.preset(name)`."""

    frame_size: int = 64
    """Height and width of the frames (TATS's `resolution`)."""
    channels: int = 1
    """Colour channels of the frames (TATS's `image_channels`)."""
    n_hiddens: int = 32
    """Channels of the encoder's first convolution, doubled at every level (the
    encoder's output has `n_hiddens · 2^max(log2 downsample)`)."""
    downsample: tuple[int, int, int] = (4, 8, 8)
    """`(time, height, width)` downsampling factors, powers of two: a clip of `T`
    frames of `H × W` gives `(T / d_t, H / d_h, W / d_w)` codes."""
    embedding_dim: int = 256
    """Width of the code vectors."""
    n_codes: int = 16384
    """Codebook size."""
    norm_type: NormType = "batch"
    """The codec's norm: `"batch"` (BatchNorm, the released checkpoints: batch
    statistics while training, running statistics, kept in the model state, to
    encode and decode) or `"group"` (GroupNorm, TATS's default)."""
    norm_groups: int = 32
    """GroupNorm's group count (TATS: 32); must divide `2 · n_hiddens`."""
    padding_type: PaddingType = "replicate"
    """How the encoder's convolutions pad (`"replicate"`, `"constant"`, `"reflect"`,
    `"circular"`); the residual blocks and the decoder pad by replication, as TATS."""
    codebook_ema_decay: float = 0.99
    """Decay of the codebook's exponential moving averages (TATS: 0.99); the codebook
    lives in the model state and learns by these averages, not by gradient."""
    restart_threshold: float | None = None
    """Codes whose moving-average count falls below this are restarted at random
    encoder outputs of the batch (TATS's `restart_thres`, default 1.0); None: never
    (`--no_random_restart`, the released checkpoints)."""
    codebook_init_from_data: bool = True
    """At step 1, set every code to a random encoder output of the batch (tiled with
    small noise when the batch has fewer than `n_codes`), as TATS's first training
    batch does; False keeps the standard-normal start."""
    commitment_weight: float = 0.25
    """Weight of the commitment term `mean((z - sg[e])²)` (TATS: 0.25)."""
    l1_weight: float = 4.0
    """Weight of the mean absolute error between clip and reconstruction."""
    perceptual_weight: float = 4.0
    """Weight of the LPIPS term on one random frame per clip; 0 trains without it.
    Without LPIPS weights on this machine (`python -m eqvid.metrics.convert_weights
    lpips`), the run says so once and trains without it."""
    lpips_weights: str | None = None
    """The converted LPIPS file (None: the default place, `$EQVID_WEIGHTS` or
    `~/.cache/eqvid/lpips_alexnet.npz`)."""
    image_gan_weight: float = 1.0
    """Weight of the image discriminator's terms (generator and discriminator)."""
    video_gan_weight: float = 1.0
    """Weight of the video discriminator's terms (generator and discriminator)."""
    gan_feat_weight: float = 4.0
    """Weight of the discriminators' feature matching (L1 between their features of
    the real and the reconstructed input); TATS's default is 0, the released
    checkpoints use 4."""
    disc_channels: int = 64
    """Channels of the discriminators' first layer (`ndf`)."""
    disc_layers: int = 3
    """Strided layers of the discriminators (`n_layers`)."""
    disc_start: int = 10_001
    """The training step (1-based) from which the discriminators train and the GAN
    and feature-matching terms enter the generator's loss (TATS's
    `discriminator_iter_start + 1`; 10,000 for the released checkpoints)."""
    pixel_scale: float = 0.5
    """The codec sees `pixel_scale · video` (TATS's pixels are in `[-0.5, 0.5]`,
    eqvid's in `[-1, 1]`); `decode` divides by it."""
    train_frames: int | None = 16
    """Each training step sees a random window of this many consecutive frames of each
    video (TATS trains on clips of `sequence_length` 16), a multiple of the time
    downsampling; None: every frame. Evaluation losses use the first window."""

    def __post_init__(self):
        check_positive(self, "frame_size", "channels", "n_hiddens", "embedding_dim")
        check_positive(self, "n_codes", "norm_groups", "disc_channels", "disc_layers")
        ds = self.downsample
        if (
            not isinstance(ds, tuple)
            or len(ds) != 3
            or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 or d & (d - 1) for d in ds
            )
            or max(ds) < 2
        ):
            raise ValueError(
                "VQGAN3DConfig: `downsample` must be three powers of two (time, height, "
                f"width), at least one > 1, got {ds!r}."
            )
        if self.frame_size % ds[1] or self.frame_size % ds[2]:
            raise ValueError(
                f"VQGAN3DConfig: `frame_size` ({self.frame_size}) must be a multiple of the "
                f"spatial downsampling {ds[1:]}; use another frame size or downsampling."
            )
        if self.norm_type not in ("group", "batch"):
            raise ValueError(
                f"VQGAN3DConfig: `norm_type` must be 'group' or 'batch', got {self.norm_type!r}."
            )
        if self.norm_type == "group" and (2 * self.n_hiddens) % self.norm_groups:
            raise ValueError(
                f"VQGAN3DConfig: `norm_groups` ({self.norm_groups}) must divide 2 · n_hiddens "
                f"= {2 * self.n_hiddens} (the fewest channels a norm sees)."
            )
        if not 0 < self.codebook_ema_decay < 1:
            raise ValueError(
                f"VQGAN3DConfig: `codebook_ema_decay` must be in (0, 1), got "
                f"{self.codebook_ema_decay}."
            )
        if self.restart_threshold is not None and not self.restart_threshold > 0:
            raise ValueError(
                f"VQGAN3DConfig: `restart_threshold` must be > 0 or None, got "
                f"{self.restart_threshold}."
            )
        for name in (
            "commitment_weight",
            "l1_weight",
            "perceptual_weight",
            "image_gan_weight",
            "video_gan_weight",
            "gan_feat_weight",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"VQGAN3DConfig: `{name}` must be ≥ 0, got {getattr(self, name)}.")
        if not self.pixel_scale > 0:
            raise ValueError(f"VQGAN3DConfig: `pixel_scale` must be > 0, got {self.pixel_scale}.")
        if self.disc_start < 1:
            raise ValueError(f"VQGAN3DConfig: `disc_start` must be ≥ 1, got {self.disc_start}.")
        if self.train_frames is not None and (self.train_frames < 1 or self.train_frames % ds[0]):
            raise ValueError(
                f"VQGAN3DConfig: `train_frames` must be None or a positive multiple of the "
                f"time downsampling {ds[0]}, got {self.train_frames}."
            )

    @property
    def code_size(self) -> tuple[int, int]:
        """Codes per frame side, `(height, width)`."""
        return (self.frame_size // self.downsample[1], self.frame_size // self.downsample[2])

    @classmethod
    def preset(cls, name: str) -> "VQGAN3DConfig":
        """A named configuration (`"small"`, `"tats-ucf101-128"`, `"tats-sky-128"`,
        `"tats-taichi-128"`)."""
        return preset_of(cls, name)


# ----------------------------------------------------------------------------------
# TATS's 2D image discriminator.
# ----------------------------------------------------------------------------------


def _torch_conv2d(c_in: int, c_out: int, stride: int, key: PRNGKeyArray) -> Conv2d:
    """A `4 × 4` convolution with zero padding 2 and PyTorch's default initialisation
    (weight and bias `U(±1/√(16·c_in))`)."""
    kw, kb = jax.random.split(key)
    # `Conv2d`'s own initialisation is only traced for the structure, not run.
    conv = eqx.filter_eval_shape(Conv2d, c_in, c_out, 4, stride=stride, padding=2, key=key)
    bound = 1.0 / math.sqrt(16 * c_in)
    weight = jax.random.uniform(kw, (4, 4, c_in, c_out), jnp.float32, -bound, bound)
    bias = jax.random.uniform(kb, (c_out,), jnp.float32, -bound, bound)
    return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (weight, bias))


class _ImageDiscLayer(eqx.Module):
    activation: bool = eqx.field(static=True)
    conv: Conv2d
    norm: BatchNorm | None


class TATSImageDiscriminator(eqx.Module):
    """TATS's 2D `NLayerDiscriminator` (pix2pixHD's, with `getIntermFeat`): the image
    twin of `eqvid.nn.PatchDiscriminator3D`, returning its intermediate features for
    the feature-matching loss. With `disc_channels = 64`, `disc_layers = 3`:

    | layer | convolution (4 × 4, zero padding 2, bias) | norm | activation |
    |---|---|---|---|
    | 0 | `C → 64`, stride 2 | none | LeakyReLU(0.2) |
    | 1 | `64 → 128`, stride 2 | BatchNorm | LeakyReLU(0.2) |
    | 2 | `128 → 256`, stride 2 | BatchNorm | LeakyReLU(0.2) |
    | 3 | `256 → 512`, stride 1 | BatchNorm | LeakyReLU(0.2) |
    | 4 | `512 → 1`, stride 1 | none | none (logits) |

    2,766,529 parameters for 3 input channels (counted from the original's shapes).
    A `128²` frame gives `19 × 19` logits (stride 2: `n → ⌊n/2⌋ + 1`; stride 1:
    `n → n + 1`).

    It differs from taming-transformers' PatchGAN (`eqvid.nn.PatchDiscriminator`, the
    2D VQGAN's): padding 2 instead of 1, a bias on every convolution, PyTorch's
    default initialisation instead of `N(0, 0.02)`, and the features returned. The
    BatchNorm always uses the statistics of the call (`eqvid.nn.BatchNorm`): call it
    on the whole batch, not under `vmap`.

    Parameter paths: `layers[n].conv.*` is TATS's `model{n}.0.*` (weight OIHW →
    HWIO: `w.transpose(2, 3, 1, 0)`), `layers[n].norm.*` its `model{n}.1.{weight,
    bias}` (running statistics not kept).
    """

    layers: tuple[_ImageDiscLayer, ...]

    def __init__(
        self,
        image_channels: int = 3,
        disc_channels: int = 64,
        disc_layers: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `image_channels`: channels of the input frames.
        - `disc_channels`: channels of the first convolution (`ndf`).
        - `disc_layers`: strided layers (`n_layers`, ≥ 1); the network has
          `disc_layers + 2` convolutions.
        - `key`: a `jax.random` key.
        """
        if isinstance(disc_layers, bool) or not isinstance(disc_layers, int) or disc_layers < 1:
            raise ValueError(
                f"TATSImageDiscriminator: `disc_layers` must be an int ≥ 1, got {disc_layers!r}."
            )
        keys = iter(jax.random.split(key, disc_layers + 2))
        layers = [
            _ImageDiscLayer(True, _torch_conv2d(image_channels, disc_channels, 2, next(keys)), None)
        ]
        nf = disc_channels
        for n in range(1, disc_layers + 1):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 2 if n < disc_layers else 1
            layers.append(
                _ImageDiscLayer(True, _torch_conv2d(nf_prev, nf, stride, next(keys)), BatchNorm(nf))
            )
        layers.append(_ImageDiscLayer(False, _torch_conv2d(nf, 1, 1, next(keys)), None))
        self.layers = tuple(layers)

    def __call__(
        self, x: Float[Array, "*batch height width channels"]
    ) -> tuple[Float[Array, "*batch h_out w_out 1"], tuple[Float[Array, "*batch _h _w _c"], ...]]:
        """**Arguments:**

        - `x`: frames `(*batch, height, width, image_channels)`.

        **Returns:** `(logits, features)`: the patch logits and the outputs of all
        `disc_layers + 2` layers after their activations, the last being the logits
        (TATS's `res[1:]`; feature matching compares `features[:-1]`).
        """
        features = []
        h = x
        for layer in self.layers:
            h = layer.conv(h)
            if layer.norm is not None:
                h = layer.norm(h)
            if layer.activation:
                h = jax.nn.leaky_relu(h, 0.2)
            features.append(h)
        return h, tuple(features)


# ----------------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------------


def _generator_norms(encoder: VQGAN3DEncoder, decoder: VQGAN3DDecoder) -> list[BatchNorm3d]:
    """The codec's BatchNorm layers, encoder then decoder, in parameter order."""
    return [
        leaf
        for leaf in jax.tree.leaves(
            (encoder, decoder), is_leaf=lambda x: isinstance(x, BatchNorm3d)
        )
        if isinstance(leaf, BatchNorm3d)
    ]


def feature_matching(fake: tuple[Array, ...], real: tuple[Array, ...]) -> Float[Array, ""]:
    """TATS's feature-matching loss: `Σ_i (4 / (3 + 1)) · mean|f_i(x̂) - sg f_i(x)|`
    over every discriminator feature but the last (the logits). TATS hard-codes the
    factor `4 / (n_layers + 1)` with `n_layers = 3`, i.e. 1, whatever `disc_layers`."""
    feat_weights = 4.0 / (3 + 1)
    total = jnp.zeros((), jnp.float32)
    for f_fake, f_real in zip(fake[:-1], real[:-1]):
        diff = f_fake.astype(jnp.float32) - jax.lax.stop_gradient(f_real).astype(jnp.float32)
        total = total + feat_weights * jnp.mean(jnp.abs(diff))
    return total


class VQGAN3D(AbstractVideoTokenizer):
    """TATS's 3D VQGAN: `encoder → pre_vq_conv (1×1×1) → EMA vector quantiser →
    post_vq_conv (1×1×1) → decoder` on whole clips, with a 2D `image_discriminator`
    (on one random frame of each clip) and a 3D `video_discriminator` (on the clip),
    both in the optimiser group `"discriminator"` descending the `disc_loss` term
    from `disc_start`, and a frozen LPIPS network for the perceptual term.

    The generator's loss, as TATS's (`x` the clip times `pixel_scale`, `x̂` its
    reconstruction, `f`/`f̂` one random frame of each, `factor` 1 from `disc_start`
    on, 0 before):

        l1_weight · mean|x - x̂| + commitment_weight · mean((z - sg e)²)
        + perceptual_weight · LPIPS(f, f̂)
        + factor · (image_gan_weight · (-mean D_img(f̂)) + video_gan_weight · (-mean D_vid(x̂)))
        + factor · gan_feat_weight · (FM_img + FM_vid)

    with `FM` the feature matching of `feature_matching` (each only when its GAN
    weight is > 0). The discriminators' loss: `factor · (image_gan_weight ·
    hinge(D_img(f), D_img(sg f̂)) + video_gan_weight · hinge(D_vid(x), D_vid(sg x̂)))`.

    **State**: the EMA codebook (`quantize`) and, with `norm_type="batch"`, the
    codec's BatchNorm running statistics (`bn_stats`: `(running_mean, running_var)`
    per BatchNorm layer, encoder then decoder). A training call of `loss` (with a
    key) normalises with the batch's statistics and moves the running ones as
    PyTorch does (momentum 0.1, unbiased variance); `encode`, `decode`,
    `reconstruct` and the evaluation loss (no key) use the running statistics, those
    of the state folded in by `with_state` (for a converted TATS checkpoint, set
    them in the state, or in the layers' `running_mean` / `running_var` of a model
    with `bn_stats` None).
    """

    encoder: VQGAN3DEncoder
    pre_vq_conv: SamePadConv3d
    quantize: VectorQuantizer
    post_vq_conv: SamePadConv3d
    decoder: VQGAN3DDecoder
    bn_stats: eqx.nn.StateIndex | None
    image_discriminator: TATSImageDiscriminator = eqx.field(
        metadata=role(group="discriminator", objective="disc_loss")
    )
    video_discriminator: PatchDiscriminator3D = eqx.field(
        metadata=role(group="discriminator", objective="disc_loss")
    )
    lpips: LPIPS | None = eqx.field(metadata=role(frozen=True))
    config: VQGAN3DConfig = eqx.field(static=True)

    def __init__(self, config: VQGAN3DConfig, *, key: PRNGKeyArray):
        c = config
        ke, kpre, kq, kpost, kd, kimg, kvid = jax.random.split(key, 7)
        codec: dict[str, Any] = dict(
            n_hiddens=c.n_hiddens,
            image_channel=c.channels,
            norm_type=c.norm_type,
            norm_groups=c.norm_groups,
        )
        self.encoder = VQGAN3DEncoder(
            downsample=c.downsample, padding_type=c.padding_type, **codec, key=ke
        )
        width = self.encoder.out_channels
        # TATS passes padding_type to pre_vq_conv only; a 1×1×1 kernel pads nothing.
        self.pre_vq_conv = SamePadConv3d(width, c.embedding_dim, 1, key=kpre)
        self.quantize = VectorQuantizer(
            c.n_codes,
            c.embedding_dim,
            beta=c.commitment_weight,
            beta_on="commitment",
            ema_decay=c.codebook_ema_decay,
            eps=1e-7,
            restart_threshold=c.restart_threshold,
            key=kq,
        )
        self.post_vq_conv = SamePadConv3d(c.embedding_dim, width, 1, key=kpost)
        self.decoder = VQGAN3DDecoder(upsample=c.downsample, **codec, key=kd)
        norms = _generator_norms(self.encoder, self.decoder)
        self.bn_stats = (
            eqx.nn.StateIndex(tuple((n.running_mean, n.running_var) for n in norms))
            if norms
            else None
        )
        self.image_discriminator = TATSImageDiscriminator(
            c.channels, c.disc_channels, c.disc_layers, key=kimg
        )
        self.video_discriminator = PatchDiscriminator3D(
            c.channels, c.disc_channels, c.disc_layers, key=kvid
        )
        self.lpips = load_perceptual("VQGAN3D", c.perceptual_weight, c.lpips_weights)
        self.config = config

    # -- the tokenizer -----------------------------------------------------------

    @property
    def n_codes(self) -> int:
        return self.config.n_codes

    def code_shape(self, time: int, height: int, width: int) -> tuple[int, int, int]:
        """`(time / d_t, height / d_h, width / d_w)` for the `downsample` factors
        `(d_t, d_h, d_w)`; any sizes divisible by them (the codec is convolutional)."""
        ds = self.config.downsample
        sizes = (time, height, width)
        bad = [
            f"{name} {n} by {d}"
            for name, n, d in zip(("time", "height", "width"), sizes, ds)
            if n < 1 or n % d
        ]
        if bad:
            raise ValueError(
                f"VQGAN3D: (time, height, width) = {sizes} must be divisible by the "
                f"downsampling {ds}; not divisible: {', '.join(bad)}. Use clips of a "
                f"multiple of {ds[0]} frames (e.g. the data's seq_len) and frames whose "
                f"sides are multiples of {ds[1]}×{ds[2]} (crop or resize)."
            )
        return (time // ds[0], height // ds[1], width // ds[2])

    def _check_video(self, video) -> None:
        self.code_shape(*video.shape[-4:-1])
        if video.shape[-1] != self.config.channels:
            raise ValueError(
                f"VQGAN3D: videos must have {self.config.channels} channels (the "
                f"tokenizer's `channels`), got shape {tuple(video.shape)}."
            )

    def _latents(self, video, training: bool = False):
        """`pre_vq_conv(encoder(pixel_scale · video))`: what the quantiser quantises."""
        x = self.config.pixel_scale * video
        return self.pre_vq_conv(self.encoder(x, training=training))

    def _pixels(self, e, training: bool = False):
        """The decoder's output for code vectors `e`, in TATS's pixel scale."""
        return self.decoder(self.post_vq_conv(e), training=training)

    def encode(
        self, video: Float[Array, "time height width channels"]
    ) -> Int[Array, "code_time code_height code_width"]:
        """The codes of one clip (BatchNorm with running statistics)."""
        self._check_video(video)
        q, _ = self.quantize(self._latents(video))
        return q.codes

    def decode(
        self, codes: Int[Array, "code_time code_height code_width"]
    ) -> Float[Array, "time height width channels"]:
        """The clip of a grid of codes, in `[-1, 1]` up to the decoder's overshoot (TATS's
        decoder output divided by `pixel_scale`, unclipped)."""
        return self._pixels(self.quantize.lookup(codes)) / self.config.pixel_scale

    @property
    def embed_dim(self) -> int:
        return self.config.embedding_dim

    def embed(self, codes: Int[Array, "*shape"]) -> Float[Array, "*shape {self.embed_dim}"]:
        """The codebook vectors of `codes` (unit vectors with a cosine codebook)."""
        return self.quantize.lookup(codes)

    def reconstruct(
        self, video: Float[Array, "time height width channels"]
    ) -> Float[Array, "time height width channels"]:
        self._check_video(video)
        q, _ = self.quantize(self._latents(video))
        return self._pixels(q.quantized) / self.config.pixel_scale

    # -- training ----------------------------------------------------------------

    def _clips(self, video, keys):
        """The clips a step sees: a window of `train_frames` consecutive frames of each
        video (at a random start per video's key; the first window without keys), or
        the whole videos."""
        n = self.config.train_frames
        t = video.shape[1]
        if n is None or n >= t:
            return video
        if keys is None:
            return video[:, :n]

        def window(v, key):
            start = jax.random.randint(jax.random.fold_in(key, 1), (), 0, t - n + 1)
            return jax.lax.dynamic_slice_in_dim(v, start, n, axis=0)

        return jax.vmap(window)(video, keys)

    def _frame_ids(self, keys, batch: int, time: int):
        """One frame per clip for the image discriminator and LPIPS (TATS's
        `torch.randint(0, T, [B])`); the first frame without keys."""
        if keys is None:
            return jnp.zeros((batch,), jnp.int32)
        return jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 2), (), 0, time))(keys)

    def _fold_norms(self, stats) -> "VQGAN3D":
        """The model with the running statistics `stats` in its BatchNorm layers."""
        norms = lambda m: _generator_norms(m.encoder, m.decoder)
        leaves = [s for pair in stats for s in pair]
        return eqx.tree_at(
            lambda m: [a for n in norms(m) for a in (n.running_mean, n.running_var)],
            self,
            leaves,
        )

    def _init_codebook(self, state: eqx.nn.State, z, step, key) -> eqx.nn.State:
        """TATS's `_init_embeddings` at step 1: every code (and its moving-average sum)
        a random encoder output of the batch, tiled with noise `N(0, (0.01/√dim)²)`
        when the batch has fewer vectors than codes; counts 1."""
        index = self.quantize.ema
        assert index is not None
        old: CodebookEMA = state.get(index)
        n, dim = self.config.n_codes, self.config.embedding_dim
        flat = jax.lax.stop_gradient(z).reshape(-1, dim).astype(old.codebook.dtype)
        m = flat.shape[0]
        repeats = -(-n // m)
        k_perm, k_noise = jax.random.split(key)
        picks = jax.random.permutation(k_perm, jnp.tile(jnp.arange(m), repeats))[:n]
        fresh = jnp.take(flat, picks, axis=0)
        if repeats > 1:
            fresh = fresh + (0.01 / math.sqrt(dim)) * jax.random.normal(
                k_noise, fresh.shape, fresh.dtype
            )
        first = jnp.asarray(step) == 1
        new = CodebookEMA(
            jnp.where(first, fresh, old.codebook),
            jnp.where(first, jnp.ones_like(old.cluster_size), old.cluster_size),
            jnp.where(first, fresh, old.embed_sum),
        )
        return state.set(index, new)

    def _perceptual(self, frames, frames_hat):
        if self.lpips is None:
            return jnp.zeros((), jnp.float32)
        # TATS feeds LPIPS its [-0.5, 0.5] frames; grey frames are repeated to RGB.
        return jnp.mean(jax.lax.stop_gradient(self.lpips)(frames, frames_hat))

    def loss(
        self,
        batch: VideoBatch,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """The generator's loss and its terms (`recon_loss` = `l1_weight · L1`,
        `perceptual_loss` = `perceptual_weight · LPIPS`, `commitment_loss` =
        `commitment_weight · mse`, as TATS logs them; `g_image_loss`, `g_video_loss`,
        `image_gan_feat_loss`, `video_gan_feat_loss` unweighted; `gan_feat_loss`,
        `disc_factor`, `perplexity`, `usage`), the discriminators' `disc_loss` (with
        `d_image_loss`, `d_video_loss` and the mean `logits_{image,video}_{real,fake}`),
        and the state.

        With `key` (training) the codec's BatchNorm uses the batch's statistics and
        the state moves (EMA codebook, its step-1 initialisation and restarts,
        BatchNorm running statistics); without (evaluation) the running statistics
        are used and the state is returned unchanged."""
        c = self.config
        keys = per_video_keys(key, batch.size)
        training = keys is not None
        clips = self._clips(batch.frames("VQGAN3D"), keys)
        b, t = clips.shape[:2]
        model = self
        if self.bn_stats is not None and state is not None and not training:
            model = self._fold_norms(state.get(self.bn_stats))
        if keys is None:
            k_init = k_quant = None
        else:
            k_init, k_quant = jax.random.split(jax.random.fold_in(keys[0], 0x5EED))

        x = c.pixel_scale * clips
        with record_batch_statistics() as records:
            z = model.pre_vq_conv(model.encoder(x, training=training))
            init = training and c.codebook_init_from_data and self.quantize.ema is not None
            if init and state is not None:
                state = self._init_codebook(state, z, step, k_init)
            q, state = model.quantize(z, state, key=k_quant, update=training)
            x_hat = model._pixels(q.quantized, training=training)
        if training and self.bn_stats is not None and state is not None:
            state = state.set(self.bn_stats, self._moved_stats(state.get(self.bn_stats), records))

        recon = c.l1_weight * jnp.mean(jnp.abs(x - x_hat))
        ids = self._frame_ids(keys, b, t)
        frames = x[jnp.arange(b), ids]
        frames_hat = x_hat[jnp.arange(b), ids]
        perceptual = c.perceptual_weight * self._perceptual(frames, frames_hat)

        factor = jnp.where(jnp.asarray(step) >= c.disc_start, 1.0, 0.0)
        logits_img_fake, feats_img_fake = self.image_discriminator(frames_hat)
        logits_vid_fake, feats_vid_fake = self.video_discriminator(x_hat)
        logits_img_real, feats_img_real = self.image_discriminator(frames)
        logits_vid_real, feats_vid_real = self.video_discriminator(x)
        g_image = -jnp.mean(logits_img_fake)
        g_video = -jnp.mean(logits_vid_fake)
        g_loss = c.image_gan_weight * g_image + c.video_gan_weight * g_video
        zero = jnp.zeros((), jnp.float32)
        img_feat = (
            feature_matching(feats_img_fake, feats_img_real) if c.image_gan_weight > 0 else zero
        )
        vid_feat = (
            feature_matching(feats_vid_fake, feats_vid_real) if c.video_gan_weight > 0 else zero
        )
        gan_feat = factor * c.gan_feat_weight * (img_feat + vid_feat)
        loss = recon + q.loss + factor * g_loss + perceptual + gan_feat

        logits_img_fake_d, _ = self.image_discriminator(jax.lax.stop_gradient(frames_hat))
        logits_vid_fake_d, _ = self.video_discriminator(jax.lax.stop_gradient(x_hat))
        d_image = hinge_d_loss(logits_img_real, logits_img_fake_d)
        d_video = hinge_d_loss(logits_vid_real, logits_vid_fake_d)
        disc_loss = factor * (c.image_gan_weight * d_image + c.video_gan_weight * d_video)
        terms = {
            "recon_loss": recon,
            "perceptual_loss": perceptual,
            "commitment_loss": q.loss,
            "perplexity": q.perplexity,
            "usage": q.usage,
            "g_image_loss": g_image,
            "g_video_loss": g_video,
            "image_gan_feat_loss": img_feat,
            "video_gan_feat_loss": vid_feat,
            "gan_feat_loss": gan_feat,
            "disc_factor": factor,
            "d_image_loss": d_image,
            "d_video_loss": d_video,
            "disc_loss": disc_loss,
            "logits_image_real": jnp.mean(logits_img_real),
            "logits_image_fake": jnp.mean(logits_img_fake),
            "logits_video_real": jnp.mean(logits_vid_real),
            "logits_video_fake": jnp.mean(logits_vid_fake),
        }
        terms = {k: jnp.asarray(v, jnp.float32) for k, v in terms.items()}
        return loss, terms, state

    def _moved_stats(self, stats, records):
        """PyTorch's running-statistics update of every codec BatchNorm layer from the
        batch statistics `records` of this call (momentum 0.1, unbiased variance)."""
        norms = _generator_norms(self.encoder, self.decoder)
        found = {id(r.norm): r for r in records}
        if len(found) != len(records) or set(found) != {id(n) for n in norms}:
            raise RuntimeError(
                "VQGAN3D: every codec BatchNorm layer must run once per training call "
                f"({len(norms)} layers, {len(records)} calls recorded)."
            )
        moved = []
        for norm, (mean, var) in zip(norms, stats):
            r = found[id(norm)]
            unbiased = r.var * (r.size / max(r.size - 1, 1))
            new_mean = (1 - BN_MOMENTUM) * mean + BN_MOMENTUM * jax.lax.stop_gradient(r.mean)
            new_var = (1 - BN_MOMENTUM) * var + BN_MOMENTUM * jax.lax.stop_gradient(unbiased)
            moved.append((new_mean.astype(mean.dtype), new_var.astype(var.dtype)))
        return tuple(moved)

    def check_batch(
        self,
        video: Float[np.ndarray, "batch time height width channels"],
        actions: Int[np.ndarray, "batch time"] | None,
    ) -> None:
        """Frames of the tokenizer's size and channels, clips of a time divisible by
        the time downsampling (at least `train_frames` frames), at least one video."""
        del actions
        c = self.config
        if video.shape[0] == 0:
            raise ValueError("VQGAN3D: the batch holds no video.")
        t, h, w = video.shape[1:4]
        if (h, w) != (c.frame_size, c.frame_size):
            raise ValueError(
                f"VQGAN3D: frames must be {c.frame_size}×{c.frame_size} (the tokenizer's "
                f"frame_size), got {h}×{w}; resize the videos or set frame_size."
            )
        if c.train_frames is not None and t > c.train_frames:
            self.code_shape(c.train_frames, h, w)
        else:
            self.code_shape(t, h, w)
        if video.shape[-1] != c.channels:
            raise ValueError(
                f"VQGAN3D: videos must have {c.channels} channels (the tokenizer's "
                f"`channels`), got {video.shape[-1]}."
            )

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """Adam β = (0.5, 0.9) for both parts, as TATS; the discriminators from
        `disc_start` (before it TATS's discriminator loss is multiplied by 0)."""
        return {
            "default": GroupSettings(b1=0.5, b2=0.9),
            "discriminator": GroupSettings(b1=0.5, b2=0.9, start_step=self.config.disc_start),
        }

    def with_state(self, state: eqx.nn.State | None) -> "VQGAN3D":
        """The EMA codebook folded into the quantiser and the BatchNorm running
        statistics into the codec's layers (`bn_stats` becomes None): ready to encode
        and decode without a state."""
        if state is None:
            return self
        model = eqx.tree_at(lambda m: m.quantize, self, self.quantize.with_state(state))
        if self.bn_stats is not None:
            model = model._fold_norms(state.get(self.bn_stats))
            model = eqx.tree_at(lambda m: m.bn_stats, model, None, is_leaf=lambda x: x is None)
        return model


_RELEASED = VQGAN3DConfig(frame_size=128, channels=3)
"""TATS's README command for the 128×128 VQGANs (`--embedding_dim 256 --n_codes 16384
--n_hiddens 32 --downsample 4 8 8 --no_random_restart --norm_type batch
--discriminator_iter_start 10000 --perceptual_weight 4 --image_gan_weight 1
--video_gan_weight 1 --gan_feat_weight 4`, l1_weight 4 by default, 16-frame clips)."""

VQGAN3D_PRESETS: dict[str, VQGAN3DConfig] = {
    # The released TATS / MeBT VQGANs (`vqgan_{ucf,sky,taichi}_128_488*.ckpt`): one
    # architecture, 16 frames of 128² RGB → (4, 16, 16) codes of 16384. Taichi's
    # data takes every 4th frame (`--sample_every_n_frames 4`, a data setting). TATS
    # trained with lr 9e-5 effective, batch 2 × 8 GPUs × 6 accumulated, gradient
    # clipping 1.0 (run settings).
    "tats-ucf101-128": _RELEASED,
    "tats-sky-128": dataclasses.replace(_RELEASED),
    "tats-taichi-128": dataclasses.replace(_RELEASED),
    # Small enough for a 2-core CPU: 64² grey clips → (T/2, 16, 16) codes of 256,
    # GroupNorm (no running statistics to warm up), an EMA codebook with TATS's
    # default dead-code restart, the GAN from step 1001, no LPIPS.
    "small": VQGAN3DConfig(
        n_hiddens=16,
        downsample=(2, 4, 4),
        embedding_dim=32,
        n_codes=256,
        norm_type="group",
        norm_groups=8,
        restart_threshold=1.0,
        perceptual_weight=0.0,
        disc_channels=16,
        disc_layers=2,
        disc_start=1001,
        train_frames=None,
    ),
}

register_model(ModelSpec("vqgan3d", "VQGAN (3D, TATS)", VQGAN3DConfig, VQGAN3D, VQGAN3D_PRESETS))
