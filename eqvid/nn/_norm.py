"""Channels-last normalisation layers (`LayerNorm` over channels, `GroupNorm` per image)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._shapes import check_channels


class LayerNorm(eqx.Module):
    """Layer normalisation over the last (channel) axis, with learned scale and bias."""

    weight: Float[Array, " channels"]
    bias: Float[Array, " channels"]
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, *, eps: float = 1e-6):
        self.weight = jnp.ones((channels,), jnp.float32)
        self.bias = jnp.zeros((channels,), jnp.float32)
        self.eps = eps

    def __call__(self, x: Float[Array, "*batch channels"]) -> Float[Array, "*batch channels"]:
        check_channels("LayerNorm", x, self.weight.shape[0])
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        weight = jnp.broadcast_to(self.weight.astype(x.dtype), x.shape)
        bias = jnp.broadcast_to(self.bias.astype(x.dtype), x.shape)
        return y * weight + bias


def default_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count `≤ max_groups` that divides `channels` (32 for ≥ 32 channels
    that are multiples of 32, as Flax's default)."""
    return math.gcd(channels, max_groups)


class GroupNorm(eqx.Module):
    """Group normalisation of channels-last images: statistics per image over
    `(height, width, channels // groups)`, with learned per-channel scale and bias."""

    weight: Float[Array, " channels"]
    bias: Float[Array, " channels"]
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, groups: int | None = None, *, eps: float = 1e-6):
        groups = default_groups(channels) if groups is None else groups
        if groups < 1 or channels % groups != 0:
            raise ValueError(f"GroupNorm: `groups` must divide channels={channels}, got {groups}.")
        self.weight = jnp.ones((channels,), jnp.float32)
        self.bias = jnp.zeros((channels,), jnp.float32)
        self.groups = groups
        self.eps = eps

    def __call__(
        self, x: Float[Array, "*batch height width channels"]
    ) -> Float[Array, "*batch height width channels"]:
        check_channels("GroupNorm", x, self.weight.shape[0], image=True)
        *lead, h, w, c = x.shape
        g = x.reshape(*lead, h, w, self.groups, c // self.groups)
        axes = (-4, -3, -1)
        mean = jnp.mean(g, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        y = g.reshape(x.shape)
        weight = jnp.broadcast_to(self.weight.astype(x.dtype), x.shape)
        bias = jnp.broadcast_to(self.bias.astype(x.dtype), x.shape)
        return y * weight + bias


class GatedRMSNorm(eqx.Module):
    """Mamba2's gated RMSNorm (state-spaces/mamba `RMSNormGated`, `norm_before_gate =
    False`): `rms_norm(x ⊙ silu(z)) ⊙ weight`, the root mean square taken over groups
    of `group_size` channels (the whole axis by default), in float32; no bias."""

    weight: Float[Array, " channels"]
    eps: float = eqx.field(static=True)
    group_size: int = eqx.field(static=True)

    def __init__(self, channels: int, *, eps: float = 1e-5, group_size: int | None = None):
        group_size = channels if group_size is None else group_size
        if group_size < 1 or channels % group_size:
            raise ValueError(
                f"GatedRMSNorm: `group_size` must divide the {channels} channels; got {group_size}."
            )
        self.weight = jnp.ones((channels,), jnp.float32)
        self.eps = eps
        self.group_size = group_size

    def __call__(
        self, x: Float[Array, "*batch channels"], z: Float[Array, "*batch channels"] | None = None
    ) -> Float[Array, "*batch channels"]:
        """`x` normalised (after the gate `silu(z)` if given), in the dtype of `x`."""
        check_channels("GatedRMSNorm", x, self.weight.shape[0])
        y = x.astype(jnp.float32)
        if z is not None:
            y = y * jax.nn.silu(z.astype(jnp.float32))
        g = y.reshape(*y.shape[:-1], -1, self.group_size)
        g = g * jax.lax.rsqrt(jnp.mean(jnp.square(g), axis=-1, keepdims=True) + self.eps)
        return (g.reshape(y.shape) * jnp.broadcast_to(self.weight, y.shape)).astype(x.dtype)
