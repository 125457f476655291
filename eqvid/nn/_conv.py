"""Channels-last 2-D convolution on any number of leading (batch, time) axes."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def conv2d_nhwc(
    x: Float[Array, "*batch height width c_in"],
    kernel: Float[Array, "kh kw c_in c_out"],
) -> Float[Array, "*batch height width c_out"]:
    """SAME-padded, stride-1 convolution of channels-last images with an HWIO kernel.

    All leading axes are folded into one batch axis for a single XLA convolution.
    """
    lead = x.shape[:-3]
    x4 = x.reshape((math.prod(lead),) + x.shape[-3:])
    y = jax.lax.conv_general_dilated(
        x4,
        kernel.astype(x.dtype),
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(lead + y.shape[1:])


class Conv2d(eqx.Module):
    """A `k × k` channels-last convolution (SAME padding, stride 1).

    Accepts inputs of shape `(*batch, height, width, in_channels)`; a `1 × 1`
    kernel is a per-pixel dense layer. Weights use LeCun-normal initialisation
    (truncated), biases start at zero, as Flax does.
    """

    weight: Float[Array, "kh kw c_in c_out"]
    bias: Float[Array, " c_out"] | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        use_bias: bool = True,
        key: PRNGKeyArray,
    ):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"Conv2d: `kernel_size` must be a positive odd integer (SAME padding), "
                f"got {kernel_size}."
            )
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        # fan_in = kh * kw * c_in (variance_scaling's default for HWIO kernels).
        self.weight = jax.nn.initializers.lecun_normal()(key, shape, jnp.float32)
        self.bias = jnp.zeros((out_channels,), jnp.float32) if use_bias else None

    def __call__(
        self, x: Float[Array, "*batch height width c_in"]
    ) -> Float[Array, "*batch height width c_out"]:
        if self.weight.shape[:2] == (1, 1):
            y = x @ self.weight[0, 0].astype(x.dtype)
        else:
            y = conv2d_nhwc(x, self.weight)
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y
