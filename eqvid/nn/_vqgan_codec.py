"""The VQGAN encoder and decoder of taming-transformers (`Encoder` / `Decoder` of
`taming/modules/diffusionmodules/model.py`), channels last.

Both act on any leading axes, `(*batch, height, width, channels)`, so a video
(time as a batch axis) is encoded frame by frame in one convolution per layer.
The module tree, the operation order and the initialisation are taming's:

- `VQGANResnetBlock`: `x' + conv2(dropout(swish(norm2(conv1(swish(norm1(x)))))))`,
  with `x' = nin_shortcut(x)` (a `1 × 1` convolution) when the channel count changes.
- `SpatialSelfAttention` (taming's `AttnBlock`): one head over all `H · W`
  positions, `x + proj_out(softmax(q kᵀ / √C) v)` with `q, k, v` `1 × 1`
  convolutions of `norm(x)`.
- `GroupNorm` with 32 groups and `eps = 1e-6`, swish `x · σ(x)`, the strided `3 × 3`
  downsampling convolution of `F.pad(x, (0, 1, 0, 1))` (`Downsample`, SAME-padded),
  nearest 2× upsampling then a `3 × 3` convolution (`Upsample`). The decoder has no
  final `tanh`: its output is unbounded, as taming's.
- Convolutions start from PyTorch's default initialisation (weights and biases
  `U(±1/√fan_in)`, `fan_in = k · k · in_channels`), GroupNorm from scale 1, bias 0.

Group count: taming's `Normalize` always uses 32 groups (PyTorch rejects channel
counts that are not multiples of 32). Here every norm is `GroupNorm(c)`, whose
default group count is `gcd(c, 32)`: 32 for every multiple of 32 (all of taming's
configurations), and otherwise the largest power of two ≤ 32 that divides `c`, so
that small test configurations (e.g. 8 or 16 channels) still build.

**Field names mirror taming's `state_dict`**, so that a converter maps them 1:1:
a field path `a.b[i].c` is the key `a.b.i.c` (tuples index as PyTorch's
`ModuleList`), with every array transposed from channels last:

| eqvid leaf | PyTorch key (prefix `encoder.` / `decoder.`) | conversion |
|---|---|---|
| `….conv*.weight`, `q`/`k`/`v`/`proj_out`/`nin_shortcut.weight` | same path | HWIO `(kh, kw, in, out)` ← OIHW: `w.permute(2, 3, 1, 0)` |
| `….bias` of a convolution | same path | as is |
| `….norm*.weight` / `.bias`, `norm_out.*` | same path | as is |
| `down[i].downsample.conv.*` | `down.{i}.downsample.conv.*` | as a convolution |
| `up[i].upsample.conv.*` | `up.{i}.upsample.conv.*` | as a convolution |
| `mid.block_1`, `mid.attn_1`, `mid.block_2` | `mid.block_1`, `mid.attn_1`, `mid.block_2` | — |

`VQGANDecoder.up[i]` is taming's `decoder.up.{i}` (the level with `ch · ch_mult[i]`
channels; `up[0]` is the full-resolution level, without an upsample), and it runs
from the last index down, as taming's. Taming's `temb_proj` does not exist in the
VQGAN (its `temb_ch` is 0), nor does it here. `nin_shortcut` is `None` (no key)
when a block keeps its channel count; a level's `attn` is `()` (no keys) when its
resolution is not in `attn_resolutions`, and the last encoder level's
`downsample` is `None`.
"""

from collections.abc import Iterator, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._conv import Conv2d
from ._norm import GroupNorm
from ._sampling import Downsample, Upsample
from ._shapes import check_channels

_GN_EPS = 1e-6


def _torch_init(conv: Conv2d, key: PRNGKeyArray) -> Conv2d:
    """`conv` with PyTorch's default `nn.Conv2d` initialisation: weight and bias
    `U(±1/√fan_in)` (kaiming-uniform with `a = √5` for the weight)."""
    kh, kw, c_in, _ = conv.weight.shape
    bound = (kh * kw * c_in) ** -0.5
    kw_, kb = jax.random.split(key)
    weight = jax.random.uniform(kw_, conv.weight.shape, jnp.float32, -bound, bound)
    conv = eqx.tree_at(lambda c: c.weight, conv, weight)
    if conv.bias is not None:
        bias = jax.random.uniform(kb, conv.bias.shape, jnp.float32, -bound, bound)
        conv = eqx.tree_at(lambda c: c.bias, conv, bias)
    return conv


def _conv(c_in: int, c_out: int, kernel: int, key: PRNGKeyArray) -> Conv2d:
    """A stride-1, SAME-padded (taming's `padding = k // 2`) convolution with bias.
    (`Conv2d`'s own initialisation is only traced for its structure, not run.)"""
    return _torch_init(eqx.filter_eval_shape(Conv2d, c_in, c_out, kernel, key=key), key)


def _resample(cls: type[Downsample] | type[Upsample], channels: int, key: PRNGKeyArray):
    """taming's `Downsample` / `Upsample` with its convolution's PyTorch initialisation."""
    layer = eqx.filter_eval_shape(cls, channels, key=key)
    assert layer.conv is not None
    return eqx.tree_at(lambda m: m.conv, layer, _torch_init(layer.conv, key))


def _init_keys(key: PRNGKeyArray) -> Iterator[PRNGKeyArray]:
    """An endless stream of fresh keys split from `key`."""
    while True:
        key, sub = jax.random.split(key)
        yield sub


def _call_keys(key: PRNGKeyArray | None) -> Iterator[PRNGKeyArray | None]:
    """Dropout keys: fresh keys split from `key`, or `None`s without one."""
    if key is None:
        while True:
            yield None
    yield from _init_keys(key)


def _check_positive_int(owner: str, name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: `{name}` must be an int ≥ {minimum}, got {value!r}.")


def _check_dropout(owner: str, dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}: `dropout` must be in [0, 1), got {dropout}.")


class VQGANResnetBlock(eqx.Module):
    """Taming's `ResnetBlock` (without a timestep embedding): `shortcut(x) +
    conv2(dropout(swish(norm2(conv1(swish(norm1(x)))))))`.

    `nin_shortcut` is a `1 × 1` convolution when `in_channels != out_channels`,
    otherwise `None` and the shortcut is the identity.
    """

    dropout: float = eqx.field(static=True)
    norm1: GroupNorm
    conv1: Conv2d
    norm2: GroupNorm
    conv2: Conv2d
    nin_shortcut: Conv2d | None

    def __init__(
        self, in_channels: int, out_channels: int, *, dropout: float = 0.0, key: PRNGKeyArray
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`: channels of the input and the output.
        - `dropout`: rate of the dropout before `conv2` (only in calls with a `key`).
        - `key`: a `jax.random` key for the convolutions.
        """
        _check_positive_int("VQGANResnetBlock", "in_channels", in_channels)
        _check_positive_int("VQGANResnetBlock", "out_channels", out_channels)
        _check_dropout("VQGANResnetBlock", dropout)
        k1, k2, k3 = jax.random.split(key, 3)
        self.dropout = dropout
        self.norm1 = GroupNorm(in_channels, eps=_GN_EPS)
        self.conv1 = _conv(in_channels, out_channels, 3, k1)
        self.norm2 = GroupNorm(out_channels, eps=_GN_EPS)
        self.conv2 = _conv(out_channels, out_channels, 3, k2)
        self.nin_shortcut = (
            None if in_channels == out_channels else _conv(in_channels, out_channels, 1, k3)
        )

    def __call__(
        self, x: Float[Array, "*batch height width c_in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*batch height width c_out"]:
        """**Arguments:**

        - `x`: `(*batch, height, width, in_channels)`.
        - `key`: dropout randomness (training); `None` (default) applies no dropout.

        **Returns:** `(*batch, height, width, out_channels)`.
        """
        check_channels("VQGANResnetBlock", x, self.conv1.weight.shape[2], image=True)
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = jax.nn.silu(self.norm2(h))
        if key is not None and self.dropout > 0.0:
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - self.dropout), 0).astype(h.dtype)
        h = self.conv2(h)
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class SpatialSelfAttention(eqx.Module):
    """Taming's `AttnBlock`: single-head self-attention over all `height · width`
    positions of each image, `x + proj_out(softmax(q kᵀ · C^-½) v)`, where `q`, `k`,
    `v` are `1 × 1` convolutions of `norm(x)` and the softmax runs over the keys.

    The scores and softmax are computed in float32 (for bfloat16 inputs too).
    """

    norm: GroupNorm
    q: Conv2d
    k: Conv2d
    v: Conv2d
    proj_out: Conv2d

    def __init__(self, channels: int, *, key: PRNGKeyArray):
        """**Arguments:**

        - `channels`: channels of the input (and the output).
        - `key`: a `jax.random` key for the four `1 × 1` convolutions.
        """
        _check_positive_int("SpatialSelfAttention", "channels", channels)
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.norm = GroupNorm(channels, eps=_GN_EPS)
        self.q = _conv(channels, channels, 1, kq)
        self.k = _conv(channels, channels, 1, kk)
        self.v = _conv(channels, channels, 1, kv)
        self.proj_out = _conv(channels, channels, 1, ko)

    def __call__(
        self, x: Float[Array, "*batch height width channels"]
    ) -> Float[Array, "*batch height width channels"]:
        """**Arguments:**

        - `x`: `(*batch, height, width, channels)`.

        **Returns:** `x` plus the attention output, of `x`'s shape.
        """
        c = self.q.weight.shape[2]
        check_channels("SpatialSelfAttention", x, c, image=True)
        *lead, height, width, _ = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(*lead, height * width, c) for f in (self.q, self.k, self.v))
        scores = jnp.einsum("...ic,...jc->...ij", q, k).astype(jnp.float32) * (c**-0.5)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("...ij,...jc->...ic", weights, v).reshape(x.shape)
        return x + self.proj_out(out)


def _apply_level(level, h, keys):
    """The residual blocks of one level, each followed by its attention if any."""
    for j, block in enumerate(level.block):
        h = block(h, key=next(keys))
        if level.attn:
            h = level.attn[j](h)
    return h


class _DownLevel(eqx.Module):
    """One encoder level (taming's `encoder.down.{i}`): `block[j]` then `attn[j]`
    (if any) for each `j`, then `downsample` (none at the last level)."""

    block: tuple[VQGANResnetBlock, ...]
    attn: tuple[SpatialSelfAttention, ...]
    downsample: Downsample | None


class _UpLevel(eqx.Module):
    """One decoder level (taming's `decoder.up.{i}`): `block[j]` then `attn[j]` (if
    any) for each `j`, then `upsample` (none at level 0)."""

    block: tuple[VQGANResnetBlock, ...]
    attn: tuple[SpatialSelfAttention, ...]
    upsample: Upsample | None


class _Mid(eqx.Module):
    """The middle of the encoder or decoder: `block_2(attn_1(block_1(x)))`."""

    block_1: VQGANResnetBlock
    attn_1: SpatialSelfAttention
    block_2: VQGANResnetBlock

    def __init__(self, channels: int, dropout: float, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.block_1 = VQGANResnetBlock(channels, channels, dropout=dropout, key=k1)
        self.attn_1 = SpatialSelfAttention(channels, key=k2)
        self.block_2 = VQGANResnetBlock(channels, channels, dropout=dropout, key=k3)

    def __call__(self, h, keys):
        h = self.block_1(h, key=next(keys))
        return self.block_2(self.attn_1(h), key=next(keys))


def _check_common(
    owner: str,
    ch: int,
    ch_mult: Sequence[int],
    num_res_blocks: int,
    attn_resolutions: Sequence[int],
    resolution: int,
    z_channels: int,
    dropout: float,
) -> tuple[int, ...]:
    _check_positive_int(owner, "ch", ch)
    mult = tuple(ch_mult)
    if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
        raise ValueError(
            f"{owner}: `ch_mult` must be a non-empty sequence of ints ≥ 1, got {ch_mult!r}."
        )
    _check_positive_int(owner, "num_res_blocks", num_res_blocks, minimum=0)
    if any(isinstance(r, bool) or not isinstance(r, int) for r in attn_resolutions):
        raise ValueError(
            f"{owner}: `attn_resolutions` must be a sequence of ints, got {attn_resolutions!r}."
        )
    _check_positive_int(owner, "resolution", resolution)
    factor = 2 ** (len(mult) - 1)
    if resolution % factor:
        raise ValueError(
            f"{owner}: `resolution` must be a multiple of 2 ** (len(ch_mult) - 1) = {factor} "
            f"(every level halves an even size), got {resolution}."
        )
    _check_positive_int(owner, "z_channels", z_channels)
    _check_dropout(owner, dropout)
    return mult


def _check_frames(owner: str, arg: str, x, size: int, channels: int, what: str, fix: str) -> None:
    if x.ndim < 3 or x.shape[-1] != channels:
        raise ValueError(
            f"{owner}: `{arg}` must have shape (*batch, {size}, {size}, {channels}) ({what} with "
            f"the {channels} channels it was built for), got {tuple(x.shape)}."
        )
    if tuple(x.shape[-3:-1]) != (size, size):
        raise ValueError(
            f"{owner}: `{arg}` must be {size}×{size} {what}, got {x.shape[-3]}×{x.shape[-2]} "
            f"(shape {tuple(x.shape)}). {fix}"
        )


class VQGANEncoder(eqx.Module):
    """Taming's VQGAN `Encoder`: `conv_in`, then per level `i` (resolution
    `resolution / 2**i`, `ch · ch_mult[i]` channels) `num_res_blocks` residual blocks
    (each followed by attention when the level's resolution is in
    `attn_resolutions`) and a stride-2 downsample (not at the last level), then
    `mid` (block, attention, block), `norm_out`, swish and `conv_out`.

    Maps `(*batch, resolution, resolution, in_channels)` frames to latents
    `(*batch, r, r, z_channels)` (`2 · z_channels` with `double_z`), `r =
    resolution / 2 ** (len(ch_mult) - 1)`. Field names mirror taming's `state_dict`
    (see the module docstring for the map).

    ```python
    # taming's f16 VQGAN (ImageNet / FacesHQ): 256×256 → 16×16×256
    enc = VQGANEncoder(in_channels=3, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                       attn_resolutions=(16,), resolution=256, z_channels=256, key=key)
    ```
    """

    resolution: int = eqx.field(static=True)
    conv_in: Conv2d
    down: tuple[_DownLevel, ...]
    mid: _Mid
    norm_out: GroupNorm
    conv_out: Conv2d

    def __init__(
        self,
        *,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        double_z: bool = False,
        dropout: float = 0.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`: channels of the frames (3 for RGB).
        - `ch`: base channel count; level `i` has `ch · ch_mult[i]` channels.
        - `ch_mult`: channel multiplier of each level; `len(ch_mult) - 1` halvings.
        - `num_res_blocks`: residual blocks per level.
        - `attn_resolutions`: the level resolutions (`resolution / 2**i`) at which each
          residual block is followed by self-attention.
        - `resolution`: height and width of the frames; a multiple of
          `2 ** (len(ch_mult) - 1)`.
        - `z_channels`: channels of the latent.
        - `double_z`: output `2 · z_channels` channels (taming's `Encoder` default is
          True; its VQGAN configurations set False, the default here).
        - `dropout`: dropout rate in the residual blocks (calls with a `key`).
        - `key`: a `jax.random` key for the parameters.
        """
        owner = "VQGANEncoder"
        mult = _check_common(
            owner, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, dropout
        )
        _check_positive_int(owner, "in_channels", in_channels)
        self.resolution = resolution
        keys = _init_keys(key)
        self.conv_in = _conv(in_channels, ch, 3, next(keys))
        in_mult = (1,) + mult
        size = resolution
        block_in = ch
        levels = []
        for i, m in enumerate(mult):
            block_in, block_out = ch * in_mult[i], ch * m
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(
                    VQGANResnetBlock(block_in, block_out, dropout=dropout, key=next(keys))
                )
                block_in = block_out
                if size in attn_resolutions:
                    attns.append(SpatialSelfAttention(block_in, key=next(keys)))
            downsample = None
            if i != len(mult) - 1:
                downsample = _resample(Downsample, block_in, next(keys))
                size //= 2
            levels.append(_DownLevel(tuple(blocks), tuple(attns), downsample))
        self.down = tuple(levels)
        self.mid = _Mid(block_in, dropout, next(keys))
        self.norm_out = GroupNorm(block_in, eps=_GN_EPS)
        out = 2 * z_channels if double_z else z_channels
        self.conv_out = _conv(block_in, out, 3, next(keys))

    @property
    def latent_resolution(self) -> int:
        """Height and width of the latent: `resolution / 2 ** (len(ch_mult) - 1)`."""
        return self.resolution // 2 ** (len(self.down) - 1)

    def __call__(
        self, x: Float[Array, "*batch height width c_in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*batch h_latent w_latent c_latent"]:
        """**Arguments:**

        - `x`: frames `(*batch, resolution, resolution, in_channels)`.
        - `key`: dropout randomness (training); `None` (default) applies no dropout.

        **Returns:** the latent `(*batch, r, r, z_channels)` (`2 · z_channels` with
        `double_z`), `r = latent_resolution`.
        """
        r = self.resolution
        _check_frames(
            "VQGANEncoder",
            "x",
            x,
            r,
            self.conv_in.weight.shape[2],
            "frames",
            f"Resize the frames to {r}×{r}, or build the encoder with "
            f"resolution={x.shape[-3] if x.ndim >= 3 else '…'} (square frames; attention "
            f"then sits at the levels whose size is in attn_resolutions).",
        )
        keys = _call_keys(key)
        h = self.conv_in(x)
        for level in self.down:
            h = _apply_level(level, h, keys)
            if level.downsample is not None:
                h = level.downsample(h)
        h = self.mid(h, keys)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class VQGANDecoder(eqx.Module):
    """Taming's VQGAN `Decoder`: `conv_in`, `mid` (block, attention, block), then the
    levels from the last (`ch · ch_mult[-1]` channels, the latent's resolution) to
    the first, each with `num_res_blocks + 1` residual blocks (each followed by
    attention when the level's resolution is in `attn_resolutions`) and a nearest 2×
    upsample with a `3 × 3` convolution (not at level 0), then `norm_out`, swish
    and `conv_out`. No `tanh`: the output is unbounded, as taming's.

    Maps latents `(*batch, r, r, z_channels)`, `r = resolution / 2 **
    (len(ch_mult) - 1)`, to frames `(*batch, resolution, resolution,
    out_channels)`. `up[i]` is taming's `decoder.up.{i}` (see the module docstring
    for the map of field names to `state_dict` keys). `last_layer` is
    `conv_out.weight`, the parameter taming's adaptive GAN weight differentiates by,
    and `features(z)` the input of `conv_out`.
    """

    resolution: int = eqx.field(static=True)
    conv_in: Conv2d
    mid: _Mid
    up: tuple[_UpLevel, ...]
    norm_out: GroupNorm
    conv_out: Conv2d

    def __init__(
        self,
        *,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `out_channels`: channels of the output frames (taming's `out_ch`).
        - `ch`: base channel count; level `i` has `ch · ch_mult[i]` channels.
        - `ch_mult`: channel multiplier of each level; `len(ch_mult) - 1` doublings.
        - `num_res_blocks`: taming's setting; each level has `num_res_blocks + 1`
          residual blocks.
        - `attn_resolutions`: the level resolutions (`resolution / 2**i`) at which each
          residual block is followed by self-attention.
        - `resolution`: height and width of the output frames; a multiple of
          `2 ** (len(ch_mult) - 1)`.
        - `z_channels`: channels of the latent.
        - `dropout`: dropout rate in the residual blocks (calls with a `key`).
        - `key`: a `jax.random` key for the parameters.
        """
        owner = "VQGANDecoder"
        mult = _check_common(
            owner, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, dropout
        )
        _check_positive_int(owner, "out_channels", out_channels)
        self.resolution = resolution
        keys = _init_keys(key)
        n = len(mult)
        block_in = ch * mult[-1]
        size = resolution // 2 ** (n - 1)
        self.conv_in = _conv(z_channels, block_in, 3, next(keys))
        self.mid = _Mid(block_in, dropout, next(keys))
        levels: list[_UpLevel] = []
        for i in reversed(range(n)):
            block_out = ch * mult[i]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(
                    VQGANResnetBlock(block_in, block_out, dropout=dropout, key=next(keys))
                )
                block_in = block_out
                if size in attn_resolutions:
                    attns.append(SpatialSelfAttention(block_in, key=next(keys)))
            upsample = None
            if i != 0:
                upsample = _resample(Upsample, block_in, next(keys))
                size *= 2
            levels.insert(0, _UpLevel(tuple(blocks), tuple(attns), upsample))
        self.up = tuple(levels)
        self.norm_out = GroupNorm(block_in, eps=_GN_EPS)
        self.conv_out = _conv(block_in, out_channels, 3, next(keys))

    @property
    def latent_resolution(self) -> int:
        """Height and width of the latent input: `resolution / 2 ** (len(ch_mult) - 1)`."""
        return self.resolution // 2 ** (len(self.up) - 1)

    @property
    def last_layer(self) -> Float[Array, "3 3 c_in c_out"]:
        """`conv_out.weight` (HWIO): the parameter by whose gradients taming's
        `calculate_adaptive_weight` balances the GAN loss against the reconstruction
        loss (`VQModel.get_last_layer`)."""
        return self.conv_out.weight

    def features(
        self,
        z: Float[Array, "*batch h_latent w_latent c_latent"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch height width c_features"]:
        """The decoder up to `conv_out`'s input, `swish(norm_out(h))`, so that
        `decoder(z) == decoder.conv_out(decoder.features(z))`: what the adaptive GAN
        weight's gradients at `last_layer` are taken through.

        **Arguments:** as `__call__`.

        **Returns:** `(*batch, resolution, resolution, ch · ch_mult[0])`.
        """
        r = self.latent_resolution
        factor = self.resolution // r
        got = f"resolution={z.shape[-3] * factor}" if z.ndim >= 3 else "another resolution"
        _check_frames(
            "VQGANDecoder",
            "z",
            z,
            r,
            self.conv_in.weight.shape[2],
            "latents",
            f"The decoder of resolution={self.resolution} decodes {r}×{r} latents (1/{factor} "
            f"of the frame size); these latents need a decoder built with {got}.",
        )
        keys = _call_keys(key)
        h = self.mid(self.conv_in(z), keys)
        for level in reversed(self.up):
            h = _apply_level(level, h, keys)
            if level.upsample is not None:
                h = level.upsample(h)
        return jax.nn.silu(self.norm_out(h))

    def __call__(
        self,
        z: Float[Array, "*batch h_latent w_latent c_latent"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch height width c_out"]:
        """**Arguments:**

        - `z`: latents `(*batch, r, r, z_channels)`, `r = latent_resolution`.
        - `key`: dropout randomness (training); `None` (default) applies no dropout.

        **Returns:** frames `(*batch, resolution, resolution, out_channels)`:
        `conv_out(features(z))`.
        """
        return self.conv_out(self.features(z, key=key))
