"""MCVD's denoiser: the NCSN++ U-Net of score_sde as MCVD configures it
(voletiv/mcvd-pytorch `models/better/ncsnpp_more.py` `NCSNpp` and `SPADE_NCSNpp`,
layers from `layerspp.py`, `layers.py`, `up_or_down_sampling.py`), channels-last.

    h = conv3x3([x_t, cond])                         # frames stacked on channels
    down:   per level: num_res_blocks × (ResBlock, attention at listed widths), then a
            down-sampling ResBlock (not after the last level)
    middle: ResBlock, attention, ResBlock
    up:     per level: (num_res_blocks + 1) × ResBlock on [h, skip], attention once at
            listed widths, then an up-sampling ResBlock (not after the first level)
    ε̂ = conv3x3(SiLU(GroupNorm(h)))

Every ResBlock is BigGAN-style (`ResnetBlockBigGANpp`): AdaGN (GroupNorm without
affine, then `· (1 + scale) + shift` from the timestep embedding) → SiLU → (FIR
resampling) → conv → AdaGN → SiLU → dropout → conv (initialised near zero), the
skip through a 1×1 conv where channels or size change, the sum scaled by `1/√2`.
Attention (`AttnBlockpp`) is multi-head over all pixels, heads of `n_head_channels`
channels, its output projection initialised near zero, the residual scaled by `1/√2`.
Up- and down-sampling use the `[1, 3, 3, 1]` FIR kernel with zero boundaries.

With `cond_channels` and `spade_dim` (the SPATIN variant, `model.spade`), the
conditioning frames are not stacked with the input: every normalisation is SPADE
(space-time adaptive: GroupNorm, then `· (1 + γ) + β` with γ, β convolved from the
conditioning frames resized to the feature map).

**Time index.** The network embeds eqvid's step index `t` (0 the least noisy step,
`T - 1` the noisiest; see `DiffusionSchedule`). MCVD's own network embeds its
reversed label `T - 1 - t`: a converted MCVD checkpoint needs `t` mapped so.

Initialisation as the original's (`default_init`: variance scaling, fan average,
uniform; scale 0 means 1e-10): the last conv of each block, the attention's output
and the final conv start near zero, so a fresh network predicts ε̂ ≈ 0.
"""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Real

from ._conv import Conv2d
from ._dense import Dense
from ._embeddings import timestep_embedding
from ._norm import GroupNorm

_SKIP_SCALE = 1.0 / math.sqrt(2.0)


def mcvd_groups(channels: int) -> int:
    """NCSN++'s GroupNorm group count: `min(channels // 4, 32)`, lowered until it
    divides `channels` (16 groups for 64 channels, 32 from 128 on)."""
    groups = max(1, min(channels // 4, 32))
    while channels % groups:
        groups -= 1
    return groups


def _variance_scaling(key: PRNGKeyArray, shape: tuple[int, ...], scale: float) -> Array:
    """score_sde's `default_init(scale)`: uniform with variance `scale / fan_avg`, the
    receptive field counted into both fans (`scale = 0` means 1e-10). `shape` is
    HWIO for convolutions, `(in, out)` for dense layers."""
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(shape[:-2])
    fan_avg = (shape[-2] + shape[-1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _conv(c_in: int, c_out: int, kernel: int, key: PRNGKeyArray, scale: float = 1.0) -> Conv2d:
    conv = Conv2d(c_in, c_out, kernel, key=key)
    return eqx.tree_at(lambda c: c.weight, conv, _variance_scaling(key, conv.weight.shape, scale))


def _dense(c_in: int, c_out: int, key: PRNGKeyArray, scale: float = 1.0) -> Dense:
    dense = Dense(c_in, c_out, key=key)
    return eqx.tree_at(lambda d: d.weight, dense, _variance_scaling(key, (c_in, c_out), scale))


def _normalize(x: Array, groups: int, eps: float) -> Array:
    """GroupNorm without its affine part, on `(height, width, channels)`."""
    h, w, c = x.shape
    g = x.reshape(h, w, groups, c // groups)
    mean = jnp.mean(g, axis=(0, 1, 3), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(0, 1, 3), keepdims=True)
    return ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)


def fir_downsample(x: Float[Array, "*batch height width channels"]) -> Float[Array, "..."]:
    """Halve height and width with the `[1, 3, 3, 1] / 8` FIR kernel per axis and zero
    boundaries (score_sde's `downsample_2d`): `out[i] = (x[2i-1] + 3x[2i] + 3x[2i+1] +
    x[2i+2]) / 8`."""

    def axis(v, a):
        n = v.shape[a]
        pad = [(0, 0)] * v.ndim
        pad[a] = (1, 1)
        p = jnp.pad(v, pad)
        take = lambda start: jax.lax.slice_in_dim(p, start, start + n - 1, stride=2, axis=a)
        return (take(0) + 3 * take(1) + 3 * take(2) + take(3)) / 8

    return axis(axis(x, x.ndim - 3), x.ndim - 2)


def fir_upsample(x: Float[Array, "*batch height width channels"]) -> Float[Array, "..."]:
    """Double height and width with the `[1, 3, 3, 1] / 4` FIR kernel per axis and zero
    boundaries (score_sde's `upsample_2d`): `out[2i] = x[i-1]/4 + 3x[i]/4`,
    `out[2i+1] = 3x[i]/4 + x[i+1]/4`."""

    def axis(v, a):
        n = v.shape[a]
        pad = [(0, 0)] * v.ndim
        pad[a] = (1, 1)
        p = jnp.pad(v, pad)
        prev = jax.lax.slice_in_dim(p, 0, n, axis=a)
        nxt = jax.lax.slice_in_dim(p, 2, n + 2, axis=a)
        even, odd = 0.25 * prev + 0.75 * v, 0.75 * v + 0.25 * nxt
        out = jnp.stack([even, odd], axis=a + 1)
        return out.reshape(*v.shape[:a], 2 * n, *v.shape[a + 1 :])

    return axis(axis(x, x.ndim - 3), x.ndim - 2)


class SpatialAdaptiveNorm(eqx.Module):
    """SPADE as MCVD's SPATIN uses it (`MySPADE`): GroupNorm without affine (ε 1e-6),
    then `· (1 + γ) + β`, where `γ, β = conv3x3(SiLU(conv3x3(cond)))` and `cond` (the
    conditioning frames on channels) is resized to the feature map by nearest
    sampling (`cond[::s, ::s]`). Names as the original's (`mlp_shared`, `mlp_gamma`,
    `mlp_beta`)."""

    mlp_shared: Conv2d
    mlp_gamma: Conv2d
    mlp_beta: Conv2d
    groups: int = eqx.field(static=True)

    def __init__(self, channels: int, cond_channels: int, hidden: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.mlp_shared = _conv(cond_channels, hidden, 3, k1)
        self.mlp_gamma = _conv(hidden, channels, 3, k2)
        self.mlp_beta = _conv(hidden, channels, 3, k3)
        self.groups = mcvd_groups(channels)

    def __call__(self, x: Array, cond: Array) -> Array:
        stride = cond.shape[0] // x.shape[0]
        seg = cond[::stride, ::stride].astype(x.dtype)
        actv = jax.nn.silu(self.mlp_shared(seg))
        normalized = _normalize(x, self.groups, 1e-6)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class _AdaNorm(eqx.Module):
    """`get_act_norm`: GroupNorm (ε 1e-5, no affine) or SPADE, then `· (1 + scale) +
    shift` from `Dense_0(SiLU(temb))`, then SiLU."""

    Dense_0: Dense
    Norm_0: SpatialAdaptiveNorm | None
    groups: int = eqx.field(static=True)

    def __init__(self, channels, temb_dim, cond_channels, spade_dim, *, key):
        k_dense, k_norm = jax.random.split(key)
        self.Dense_0 = _dense(temb_dim, 2 * channels, k_dense)
        self.Norm_0 = (
            SpatialAdaptiveNorm(channels, cond_channels, spade_dim, key=k_norm)
            if spade_dim
            else None
        )
        self.groups = mcvd_groups(channels)

    def __call__(self, x, temb, cond):
        scale, shift = jnp.split(self.Dense_0(jax.nn.silu(temb)).astype(x.dtype), 2)
        n = _normalize(x, self.groups, 1e-5) if self.Norm_0 is None else self.Norm_0(x, cond)
        return jax.nn.silu(n * (1 + scale[None, None]) + shift[None, None])


class NCSNppResBlock(eqx.Module):
    """`ResnetBlockBigGANpp` with AdaGN (or SPADE) norms, the original's names:
    `actnorm0`, `Conv_0`, `actnorm1`, `Conv_1` (initialised near zero), `Conv_2` (the
    1×1 skip, where channels or size change). `resample`: `"up"`, `"down"` or `None`."""

    actnorm0: _AdaNorm
    Conv_0: Conv2d
    actnorm1: _AdaNorm
    Conv_1: Conv2d
    Conv_2: Conv2d | None
    resample: str | None = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        temb_dim: int,
        dropout: float,
        resample: str | None = None,
        cond_channels: int = 0,
        spade_dim: int = 0,
        key: PRNGKeyArray,
    ):
        keys = jax.random.split(key, 5)
        self.actnorm0 = _AdaNorm(c_in, temb_dim, cond_channels, spade_dim, key=keys[0])
        self.Conv_0 = _conv(c_in, c_out, 3, keys[1])
        self.actnorm1 = _AdaNorm(c_out, temb_dim, cond_channels, spade_dim, key=keys[2])
        self.Conv_1 = _conv(c_out, c_out, 3, keys[3], scale=0.0)
        self.Conv_2 = (
            _conv(c_in, c_out, 1, keys[4]) if c_in != c_out or resample is not None else None
        )
        self.resample, self.dropout = resample, dropout

    def __call__(self, x, temb, cond, key):
        h = self.actnorm0(x, temb, cond)
        if self.resample == "up":
            h, x = fir_upsample(h), fir_upsample(x)
        elif self.resample == "down":
            h, x = fir_downsample(h), fir_downsample(x)
        h = self.actnorm1(self.Conv_0(h), temb, cond)
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(key, 1 - self.dropout, h.shape)
            h = jnp.where(keep, h / (1 - self.dropout), 0).astype(h.dtype)
        h = self.Conv_1(h)
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        return (x + h) * _SKIP_SCALE


class NCSNppAttention(eqx.Module):
    """`AttnBlockpp`: GroupNorm (ε 1e-6, affine) → per-pixel q, k, v (`NIN_0..2`,
    init scale 0.1) → softmax attention over all pixels, per head of
    `channels / heads` consecutive channels → `NIN_3` (init near zero); `(x + h)/√2`."""

    GroupNorm_0: GroupNorm
    NIN_0: Dense
    NIN_1: Dense
    NIN_2: Dense
    NIN_3: Dense
    heads: int = eqx.field(static=True)

    def __init__(self, channels: int, heads: int, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 4)
        self.GroupNorm_0 = GroupNorm(channels, mcvd_groups(channels), eps=1e-6)
        self.NIN_0, self.NIN_1, self.NIN_2 = (_dense(channels, channels, k, 0.1) for k in keys[:3])
        self.NIN_3 = _dense(channels, channels, keys[3], 0.0)
        self.heads = heads

    def __call__(self, x):
        h, w, c = x.shape
        n = self.GroupNorm_0(x).reshape(h * w, c)
        split = lambda v: v.reshape(h * w, self.heads, c // self.heads)
        q, k, v = split(self.NIN_0(n)), split(self.NIN_1(n)), split(self.NIN_2(n))
        logits = jnp.einsum("qhc,khc->hqk", q, k) * (c // self.heads) ** -0.5
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
        out = jnp.einsum("hqk,khc->qhc", weights, v).reshape(h, w, c)
        return (x + self.NIN_3(out)) * _SKIP_SCALE


class _DownLevel(eqx.Module):
    blocks: tuple[NCSNppResBlock, ...]
    attns: tuple[NCSNppAttention | None, ...]
    downsample: NCSNppResBlock | None


class _UpLevel(eqx.Module):
    blocks: tuple[NCSNppResBlock, ...]
    attn: NCSNppAttention | None
    upsample: NCSNppResBlock | None


class NCSNppUNet(eqx.Module):
    """MCVD's denoiser (NCSN++ with BigGAN blocks, see the module notes):
    `unet(x_t, t, cond)` → ε̂ for one example, channels-last, frames stacked on
    channels (frame-major: channel `f · C + c`).

    Names follow the original's modules where it names them (`Dense_0`, `Dense_1`
    for the timestep MLP; `Conv_0..2`, `actnorm0/1`, `NIN_0..3`, `GroupNorm_0`).
    SMMNIST's `big5` configuration has 27,941,765 parameters (SPATIN: 53,953,989),
    as the original's module.
    """

    Dense_0: Dense
    Dense_1: Dense
    conv_in: Conv2d
    down: tuple[_DownLevel, ...]
    mid_block1: NCSNppResBlock
    mid_attn: NCSNppAttention
    mid_block2: NCSNppResBlock
    up: tuple[_UpLevel, ...]
    norm_out: GroupNorm | None
    spade_out: SpatialAdaptiveNorm | None
    conv_out: Conv2d
    ngf: int = eqx.field(static=True)
    image_size: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    cond_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    spade: bool = eqx.field(static=True)

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        out_channels: int,
        cond_channels: int = 0,
        ngf: int = 64,
        ch_mult: Sequence[int] = (1, 2, 3, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (8, 16, 32),
        n_head_channels: int = 64,
        dropout: float = 0.1,
        spade_dim: int = 0,
        key: PRNGKeyArray,
    ):
        """**Arguments** (MCVD's config names; SMMNIST `big5` values in brackets):

        - `image_size`: frame height and width [64]; it must halve `len(ch_mult) - 1`
          times.
        - `in_channels`: channels of the noisy input `x_t` (frames × channels) [5].
        - `out_channels`: channels of ε̂ (the same frames × channels) [5].
        - `cond_channels`: channels of the conditioning frames (past then future,
          frames × channels) [5]; stacked after `x_t` on the input, or read by SPADE.
        - `ngf` [64], `ch_mult` [(1, 2, 3, 4)], `num_res_blocks` [2]: the widths
          `ngf · ch_mult[level]` and the blocks per level.
        - `attn_resolutions` [(8, 16, 32)]: feature widths that get attention.
        - `n_head_channels` [64]: channels per attention head (one head below it;
          -1: always one head).
        - `dropout` [0.1]: inside every block (only in calls with a `key`).
        - `spade_dim`: 0 for the concatenation variant; > 0 for SPATIN, the hidden
          width of its SPADE convolutions [128].
        - `key`: a `jax.random` key.
        """
        levels = len(ch_mult)
        for name, value in (
            ("image_size", image_size), ("in_channels", in_channels),
            ("out_channels", out_channels), ("ngf", ngf), ("levels (len(ch_mult))", levels),
            ("num_res_blocks", num_res_blocks),
        ):  # fmt: skip
            if value < 1:
                raise ValueError(f"NCSNppUNet: `{name}` must be ≥ 1, got {value}.")
        if cond_channels < 0 or spade_dim < 0 or not 0 <= dropout < 1:
            raise ValueError(
                "NCSNppUNet: `cond_channels` and `spade_dim` must be ≥ 0 and `dropout` in "
                f"[0, 1); got {cond_channels}, {spade_dim}, {dropout}."
            )
        if spade_dim and not cond_channels:
            raise ValueError("NCSNppUNet: SPATIN (`spade_dim` > 0) needs `cond_channels` > 0.")
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"NCSNppUNet: `image_size` {image_size} cannot be halved {levels - 1} times "
                f"(len(ch_mult) = {levels}); use a multiple of {2 ** (levels - 1)} or fewer "
                "levels."
            )
        self.ngf, self.image_size, self.spade = ngf, image_size, bool(spade_dim)
        self.in_channels, self.cond_channels, self.out_channels = (
            in_channels,
            cond_channels,
            out_channels,
        )
        temb_dim = 4 * ngf
        keys = iter(jax.random.split(key, 8 + 4 * levels * (2 * num_res_blocks + 4)))

        def block(c_in, c_out, resample=None):
            return NCSNppResBlock(
                c_in, c_out, temb_dim=temb_dim, dropout=dropout, resample=resample,
                cond_channels=cond_channels, spade_dim=spade_dim, key=next(keys),
            )  # fmt: skip

        def attention(channels):
            if n_head_channels == -1 or channels < n_head_channels:
                heads = 1
            elif channels % n_head_channels:
                raise ValueError(
                    f"NCSNppUNet: `n_head_channels` {n_head_channels} must divide the "
                    f"{channels} channels of an attention block."
                )
            else:
                heads = channels // n_head_channels
            return NCSNppAttention(channels, heads, key=next(keys))

        self.Dense_0 = _dense(ngf, temb_dim, next(keys))
        self.Dense_1 = _dense(temb_dim, temb_dim, next(keys))
        first_in = in_channels if spade_dim else in_channels + cond_channels
        self.conv_in = _conv(first_in, ngf, 3, next(keys))
        skips, ch = [ngf], ngf
        down = []
        for level, mult in enumerate(ch_mult):
            res = image_size // 2**level
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(block(ch, ngf * mult))
                ch = ngf * mult
                attns.append(attention(ch) if res in attn_resolutions else None)
                skips.append(ch)
            downsample = None
            if level != levels - 1:
                downsample = block(ch, ch, "down")
                skips.append(ch)
            down.append(_DownLevel(tuple(blocks), tuple(attns), downsample))
        self.down = tuple(down)
        self.mid_block1, self.mid_attn, self.mid_block2 = (
            block(ch, ch),
            attention(ch),
            block(ch, ch),
        )
        up = []
        for level in reversed(range(levels)):
            res = image_size // 2**level
            blocks = []
            for _ in range(num_res_blocks + 1):
                out = ngf * ch_mult[level]
                blocks.append(block(ch + skips.pop(), out))
                ch = out
            attn = attention(ch) if res in attn_resolutions else None
            upsample = block(ch, ch, "up") if level != 0 else None
            up.append(_UpLevel(tuple(blocks), attn, upsample))
        self.up = tuple(up)
        k_out = next(keys)
        self.norm_out = None if spade_dim else GroupNorm(ch, mcvd_groups(ch), eps=1e-5)
        self.spade_out = (
            SpatialAdaptiveNorm(ch, cond_channels, spade_dim, key=k_out) if spade_dim else None
        )
        self.conv_out = _conv(ch, out_channels, 3, next(keys), scale=0.0)

    def __call__(
        self,
        x: Float[Array, "height width in_channels"],
        t: Real[Array, ""],
        cond: Float[Array, "height width cond_channels"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "height width out_channels"]:
        """ε̂ for the noisy frames `x` at step `t` (eqvid's index: 0 least noisy),
        conditioned on `cond` (required when the network has `cond_channels`; masked
        frames are zeros). `key` enables dropout (training)."""
        want = (self.image_size, self.image_size, self.in_channels)
        if x.shape != want:
            raise ValueError(f"NCSNppUNet: `x` must be {want}, got {x.shape}.")
        if self.cond_channels:
            want_c = (self.image_size, self.image_size, self.cond_channels)
            if cond is None or cond.shape != want_c:
                got = None if cond is None else cond.shape
                raise ValueError(f"NCSNppUNet: `cond` must be {want_c}, got {got}.")
        elif cond is not None:
            raise ValueError("NCSNppUNet: this network takes no `cond` (cond_channels = 0).")
        temb = timestep_embedding(jnp.asarray(t), self.ngf)
        temb = self.Dense_1(jax.nn.silu(self.Dense_0(temb)))
        n_blocks = (
            3
            + sum(len(lv.blocks) + 1 for lv in self.down)
            + sum(len(lv.blocks) + 1 for lv in self.up)
        )
        keys = iter([None] * n_blocks if key is None else list(jax.random.split(key, n_blocks)))
        c = None if cond is None else cond.astype(x.dtype)
        h = self.conv_in(x if self.spade or c is None else jnp.concatenate([x, c], axis=-1))
        hs = [h]
        for level in self.down:
            for blk, attn in zip(level.blocks, level.attns):
                h = blk(h, temb, c, next(keys))
                h = h if attn is None else attn(h)
                hs.append(h)
            if level.downsample is not None:
                h = level.downsample(h, temb, c, next(keys))
                hs.append(h)
        h = self.mid_block1(h, temb, c, next(keys))
        h = self.mid_block2(self.mid_attn(h), temb, c, next(keys))
        for level in self.up:
            for blk in level.blocks:
                h = blk(jnp.concatenate([h, hs.pop()], axis=-1), temb, c, next(keys))
            if level.attn is not None:
                h = level.attn(h)
            if level.upsample is not None:
                h = level.upsample(h, temb, c, next(keys))
        if self.spade_out is not None:
            assert c is not None
            h = jax.nn.silu(self.spade_out(h, c))
        else:
            assert self.norm_out is not None
            h = jax.nn.silu(self.norm_out(h))
        return self.conv_out(h)
