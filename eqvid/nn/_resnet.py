"""ResNet frame encoder and decoder (TECO / ConvS5 style), channels last.

Both act on any leading axes (`(*batch, height, width, channels)`), so a whole
video (time as a batch axis) is encoded with one convolution per layer.
"""

import itertools
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._conv import Conv2d
from ._norm import GroupNorm, LayerNorm
from ._sampling import avg_pool_2x, depth_to_space, space_to_depth, upsample_nearest_2x
from ._shapes import check_channels


class ResNetBlock(eqx.Module):
    """`skip(x) + 0.1 · (Conv3 ∘ ELU ∘ GN ∘ Conv3 ∘ ELU ∘ GN)(x) + bias`.

    The skip is a bias-free `1 × 1` convolution when the channel count changes.
    """

    norm1: GroupNorm
    conv1: Conv2d
    norm2: GroupNorm
    conv2: Conv2d
    bias: Float[Array, " c_out"]
    skip: Conv2d | None

    def __init__(self, in_channels: int, out_channels: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = GroupNorm(in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, key=k1)
        self.norm2 = GroupNorm(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, use_bias=False, key=k2)
        self.bias = jnp.zeros((out_channels,), jnp.float32)
        self.skip = (
            None
            if in_channels == out_channels
            else Conv2d(in_channels, out_channels, 1, use_bias=False, key=k3)
        )

    def __call__(
        self, x: Float[Array, "*batch height width c_in"]
    ) -> Float[Array, "*batch height width c_out"]:
        check_channels("ResNetBlock", x, self.conv1.weight.shape[2], image=True)
        skip = x if self.skip is None else self.skip(x)
        h = self.conv1(jax.nn.elu(self.norm1(x)))
        h = self.conv2(jax.nn.elu(self.norm2(h)))
        h = h + jnp.broadcast_to(self.bias.astype(h.dtype), h.shape)
        return skip + 0.1 * h


def _check_blocks(owner: str, blocks: int) -> int:
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"{owner}: `blocks` must be an int >= 1, got {blocks!r}.")
    return blocks


def _check_patch(owner: str, patch: int) -> int:
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"{owner}: `patch` must be an int >= 1, got {patch!r}.")
    return patch


class ResNetEncoder(eqx.Module):
    """`[space-to-depth p×p →] Conv3 → ResBlock(depths[0]) → [avg-pool 2× →
    blocks × ResBlock(depths[i])]…`.

    Downsamples by `patch · 2 ** (len(depths) - 1)`; outputs `depths[-1]` channels.
    With `patch = p > 1` each `p × p` pixel block is first folded into the channels
    (`space_to_depth`, as PredRNN's `patch_size`), so the first stage runs at `1/p`
    of the resolution; `patch = 1` (the default) is the released TECO / ConvS5 encoder.
    The first stage always has one block; each later stage has `blocks` (TECO's
    `encoder.blocks`; the first block of a stage changes the channels).
    """

    stem: Conv2d
    blocks: tuple[ResNetBlock, ...]
    patch: int = eqx.field(static=True, default=1)
    stage_blocks: int = eqx.field(static=True, default=1)

    def __init__(
        self,
        in_channels: int,
        depths: Sequence[int],
        *,
        patch: int = 1,
        blocks: int = 1,
        key: PRNGKeyArray,
    ):
        self.patch = _check_patch("ResNetEncoder", patch)
        self.stage_blocks = _check_blocks("ResNetEncoder", blocks)
        ins, outs = [depths[0]], [depths[0]]
        for prev, depth in itertools.pairwise(depths):
            ins += [prev] + [depth] * (blocks - 1)
            outs += [depth] * blocks
        keys = jax.random.split(key, len(outs) + 1)
        self.stem = Conv2d(in_channels * patch * patch, depths[0], 3, key=keys[0])
        self.blocks = tuple(ResNetBlock(i, o, key=k) for i, o, k in zip(ins, outs, keys[1:]))

    def __call__(
        self, x: Float[Array, "*batch height width c_in"]
    ) -> Float[Array, "*batch h_latent w_latent c_out"]:
        return self.with_first_stage(x)[0]

    def with_first_stage(
        self, x: Float[Array, "*batch height width c_in"]
    ) -> tuple[
        Float[Array, "*batch h_latent w_latent c_out"],
        Float[Array, "*batch h_first w_first c_first"],
    ]:
        """`(latent, first)`: the encoding and the first stage's output (`depths[0]`
        channels at `1/patch` of the resolution), the skip a `ResNetDecoder` with
        `skip_channels = depths[0]` takes."""
        p, b = self.patch, self.stage_blocks
        check_channels("ResNetEncoder", x, self.stem.weight.shape[2] // (p * p), image=True)
        x = first = self.blocks[0](self.stem(space_to_depth(x, p)))
        for i, block in enumerate(self.blocks[1:]):
            if i % b == 0:
                x = avg_pool_2x(x)
            x = block(x)
        return x, first


class ResNetDecoder(eqx.Module):
    """Mirror of `ResNetEncoder`: `Conv3 → [blocks × ResBlock(d) → upsample 2×]… →
    blocks × ResBlock → LayerNorm → dense`, with depths walked in reverse.

    With `skip_channels = k > 0` the last stage also takes a skip of `k` channels at
    its resolution (`1/patch` of the frame: the encoder's first stage, a U-Net skip),
    concatenated to its input; 0 (the default) is the released decoder.

    As in the released ConvS5/TECO code, the stem maps to `depths[0]` channels
    (not `depths[-1]`); keeping it reproduces the papers' parameter counts. With
    `patch = p > 1` (the encoder's) the head predicts `p · p · out_channels` channels
    that `depth_to_space` unfolds into `p × p` pixel blocks. Each stage has `blocks`
    blocks (TECO's `decoder.blocks`; the first of a stage changes the channels).
    """

    stem: Conv2d
    blocks: tuple[ResNetBlock, ...]
    norm: LayerNorm
    head: Conv2d
    patch: int = eqx.field(static=True, default=1)
    stage_blocks: int = eqx.field(static=True, default=1)
    skip_channels: int = eqx.field(static=True, default=0)

    def __init__(
        self,
        in_channels: int,
        depths: Sequence[int],
        out_channels: int,
        *,
        patch: int = 1,
        blocks: int = 1,
        skip_channels: int = 0,
        key: PRNGKeyArray,
    ):
        self.patch = _check_patch("ResNetDecoder", patch)
        self.stage_blocks = _check_blocks("ResNetDecoder", blocks)
        if (
            isinstance(skip_channels, bool)
            or not isinstance(skip_channels, int)
            or skip_channels < 0
        ):
            raise ValueError(
                f"ResNetDecoder: `skip_channels` must be an int >= 0, got {skip_channels!r}."
            )
        self.skip_channels = skip_channels
        ins, outs = [], []
        prev = depths[0]
        for depth in reversed(depths):
            ins += [prev] + [depth] * (blocks - 1)
            outs += [depth] * blocks
            prev = depth
        ins[len(ins) - blocks] += skip_channels  # the last stage's first block
        keys = jax.random.split(key, len(outs) + 2)
        self.stem = Conv2d(in_channels, depths[0], 3, key=keys[0])
        self.blocks = tuple(ResNetBlock(i, o, key=k) for i, o, k in zip(ins, outs, keys[1:]))
        self.norm = LayerNorm(depths[0])
        self.head = Conv2d(depths[0], out_channels * patch * patch, 1, key=keys[-1])

    def __call__(
        self,
        x: Float[Array, "*batch h_latent w_latent c_in"],
        skip: Float[Array, "*batch h_first w_first c_skip"] | None = None,
    ) -> Float[Array, "*batch height width c_out"]:
        """Decode `x`; `skip` (the encoder's first stage) is required exactly when the
        decoder was built with `skip_channels > 0`."""
        check_channels("ResNetDecoder", x, self.stem.weight.shape[2], image=True)
        if (skip is None) != (self.skip_channels == 0):
            raise ValueError(
                f"ResNetDecoder: built with skip_channels={self.skip_channels}, so `skip` "
                f"must be {'None' if self.skip_channels == 0 else 'given'}; got "
                f"{'None' if skip is None else tuple(skip.shape)}."
            )
        b = self.stage_blocks
        x = self.stem(x)
        last = len(self.blocks) - b
        for i, block in enumerate(self.blocks):
            if i == last and skip is not None:
                want = x.shape[:-1] + (self.skip_channels,)
                if skip.shape != want:
                    raise ValueError(
                        f"ResNetDecoder: `skip` must have shape {want} (the last stage's "
                        f"grid × skip_channels), got {tuple(skip.shape)}."
                    )
                x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
            x = block(x)
            if (i + 1) % b == 0 and i < last:
                x = upsample_nearest_2x(x)
        return depth_to_space(self.head(self.norm(x)), self.patch)
