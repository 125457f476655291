"""2× spatial down- and upsampling of channels-last images: the parameter-free
functions and the DDPM / VQGAN layers (`Downsample`, `Upsample`)."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._conv import Conv2d


def avg_pool_2x(
    x: Float[Array, "*batch height width channels"],
) -> Float[Array, "*batch half_height half_width channels"]:
    """2 × 2 average pooling with stride 2 (height and width must be even)."""
    *lead, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"avg_pool_2x: `x` must have even height and width, got shape {x.shape}.")
    return x.reshape(*lead, h // 2, 2, w // 2, 2, c).mean(axis=(-4, -2))


def upsample_nearest_2x(
    x: Float[Array, "*batch height width channels"],
) -> Float[Array, "*batch double_height double_width channels"]:
    """Nearest-neighbour upsampling by 2 in height and width."""
    return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


def space_to_depth(
    x: Float[Array, "*batch height width channels"], patch: int
) -> Float[Array, "*batch h_out w_out c_out"]:
    """Fold each `patch × patch` block of pixels into the channels (row-major within
    the block, channels fastest): `(…, H, W, C)` → `(…, H/p, W/p, p·p·C)`. The inverse
    is `depth_to_space`; `patch = 1` returns `x`."""
    *lead, h, w, c = x.shape
    if h % patch or w % patch:
        raise ValueError(
            f"space_to_depth: height and width of `x` must be multiples of `patch` = {patch}, "
            f"got shape {tuple(x.shape)}."
        )
    if patch == 1:
        return x
    n = len(lead)
    x = x.reshape(*lead, h // patch, patch, w // patch, patch, c)
    x = jnp.moveaxis(x, n + 1, n + 2)  # (…, H/p, W/p, p_row, p_col, C)
    return x.reshape(*lead, h // patch, w // patch, patch * patch * c)


def depth_to_space(
    x: Float[Array, "*batch height width channels"], patch: int
) -> Float[Array, "*batch h_out w_out c_out"]:
    """Unfold channels into `patch × patch` pixel blocks, the inverse of
    `space_to_depth`: `(…, H, W, p·p·C)` → `(…, H·p, W·p, C)`."""
    *lead, h, w, pc = x.shape
    if pc % (patch * patch):
        raise ValueError(
            f"depth_to_space: the channels of `x` must be a multiple of patch² = "
            f"{patch * patch}, got shape {tuple(x.shape)}."
        )
    if patch == 1:
        return x
    n = len(lead)
    c = pc // (patch * patch)
    x = x.reshape(*lead, h, w, patch, patch, c)
    x = jnp.moveaxis(x, n + 2, n + 1)  # (…, H, p_row, W, p_col, C)
    return x.reshape(*lead, h * patch, w * patch, c)


def _check_key(owner, with_conv, key):
    if with_conv and key is None:
        raise ValueError(f"{owner}: `key` is required when `with_conv=True`, got None.")


class Downsample(eqx.Module):
    """Halve height and width: a `3 × 3` convolution with stride 2 (SAME padding, i.e.
    one row and column of zeros at the end of even-sized images, as DDPM's and the
    VQGAN encoders' `Downsample(with_conv=True)`), or, with `with_conv=False`, 2 × 2
    average pooling (DDPM's `with_conv=False`; needs even sizes)."""

    conv: Conv2d | None

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        with_conv: bool = True,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `channels`: input channels.
        - `out_channels`: output channels (default `channels`; must equal it without
          a convolution).
        - `with_conv`: strided convolution (True) or average pooling (False).
        - `key`: a `jax.random` key for the convolution (not needed without one).
        """
        out_channels = channels if out_channels is None else out_channels
        _check_key("Downsample", with_conv, key)
        if not with_conv and out_channels != channels:
            raise ValueError(
                f"Downsample: with `with_conv=False` (average pooling) `out_channels` must "
                f"equal `channels` = {channels}, got {out_channels}."
            )
        self.conv = (
            Conv2d(channels, out_channels, 3, stride=2, padding="SAME", key=key)
            if with_conv and key is not None
            else None
        )

    def __call__(
        self, x: Float[Array, "*batch height width c_in"]
    ) -> Float[Array, "*batch half_height half_width c_out"]:
        """`(*batch, height, width, channels)` → `(*batch, ⌈height/2⌉, ⌈width/2⌉,
        out_channels)`."""
        return avg_pool_2x(x) if self.conv is None else self.conv(x)


class Upsample(eqx.Module):
    """Double height and width: nearest-neighbour upsampling, then (by default) a
    `3 × 3` SAME convolution, as DDPM's and the VQGAN decoders' `Upsample`."""

    conv: Conv2d | None

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        *,
        with_conv: bool = True,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `channels`: input channels.
        - `out_channels`: output channels (default `channels`; must equal it without
          a convolution).
        - `with_conv`: follow the upsampling with a `3 × 3` convolution.
        - `key`: a `jax.random` key for the convolution (not needed without one).
        """
        out_channels = channels if out_channels is None else out_channels
        _check_key("Upsample", with_conv, key)
        if not with_conv and out_channels != channels:
            raise ValueError(
                f"Upsample: with `with_conv=False` `out_channels` must equal `channels` = "
                f"{channels}, got {out_channels}."
            )
        self.conv = (
            Conv2d(channels, out_channels, 3, key=key) if with_conv and key is not None else None
        )

    def __call__(
        self, x: Float[Array, "*batch height width c_in"]
    ) -> Float[Array, "*batch double_height double_width c_out"]:
        """`(*batch, height, width, channels)` → `(*batch, 2·height, 2·width,
        out_channels)`."""
        x = upsample_nearest_2x(x)
        return x if self.conv is None else self.conv(x)
