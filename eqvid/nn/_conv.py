"""Channels-last 2-D convolutions (strided, and transposed) on any number of leading
(batch, time) axes."""

import math
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._roles import role

Padding = typing.Literal["SAME", "VALID"] | int
"""`"SAME"` (output size `ceil(input / stride)`, the padding split as evenly as
possible with any extra row/column at the end, as TensorFlow and `jax.lax`),
`"VALID"` (no padding) or an int `p` (`p` zeros on every side, as PyTorch)."""


def _check_stride_padding(owner: str, stride: int, padding: Padding):
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{owner}: `stride` must be an int ≥ 1, got {stride!r}.")
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            raise ValueError(
                f"{owner}: `padding` must be 'SAME', 'VALID' or an int ≥ 0, got {padding!r}."
            )
    elif isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(
            f"{owner}: `padding` must be 'SAME', 'VALID' or an int ≥ 0, got {padding!r}."
        )


def _lax_padding(padding: Padding):
    return padding if isinstance(padding, str) else ((padding, padding), (padding, padding))


def _fold(x):
    """`(*lead, h, w, c)` → `(prod(lead), h, w, c)` and the leading shape."""
    lead = x.shape[:-3]
    return x.reshape((math.prod(lead),) + x.shape[-3:]), lead


def conv2d_nhwc(
    x: Float[Array, "*batch height width c_in"],
    kernel: Float[Array, "kh kw c_in c_out"],
    *,
    stride: int = 1,
    padding: Padding = "SAME",
) -> Float[Array, "*batch out_height out_width c_out"]:
    """Convolution (cross-correlation) of channels-last images with an HWIO kernel; by
    default SAME-padded with stride 1 (the output has the input's height and width).

    All leading axes are folded into one batch axis for a single XLA convolution. The
    kernel is cast to the dtype of `x`.
    """
    _check_stride_padding("conv2d_nhwc", stride, padding)
    x4, lead = _fold(x)
    y = jax.lax.conv_general_dilated(
        x4,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding=_lax_padding(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(lead + y.shape[1:])


class Conv2d(eqx.Module):
    """A `k × k` channels-last convolution, SAME-padded with stride 1 by default.

    Accepts inputs of shape `(*batch, height, width, in_channels)`; a `1 × 1`
    kernel is a per-pixel dense layer. Weights use LeCun-normal initialisation
    (truncated), biases start at zero, as Flax does. With `stride = 2` and SAME
    padding a `3 × 3` convolution of an even-sized image pads one row and column at
    the end only: the downsampling convolution of DDPM and of the VQGAN encoders
    (`F.pad(x, (0, 1, 0, 1))` then an unpadded stride-2 convolution).

    Roles: the weight's axes are `("kh", "kw", "in", "out")`, the bias's `("out",)`.
    """

    # Static fields first and `role(...)` fields last: type checkers read `role(...)` as a
    # default value. Parameter order (and so checkpoint paths) is unaffected.
    stride: int = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    weight: Float[Array, "kh kw c_in c_out"] = eqx.field(
        metadata=role(axes=("kh", "kw", "in", "out"))
    )
    bias: Float[Array, " c_out"] | None = eqx.field(metadata=role(axes=("out",)))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: Padding = "SAME",
        use_bias: bool = True,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`: channels of the input and the output.
        - `kernel_size`: height and width of the kernel. With SAME padding and stride 1
          it must be odd (an even kernel would shift the image by half a pixel).
        - `stride`: step of the kernel in height and width.
        - `padding`: `"SAME"`, `"VALID"` or an int (zeros on every side); see `Padding`.
        - `use_bias`: add a learned bias (zero at initialisation).
        - `key`: a `jax.random` key for the weight.
        """
        _check_stride_padding("Conv2d", stride, padding)
        if kernel_size < 1 or (padding == "SAME" and stride == 1 and kernel_size % 2 == 0):
            raise ValueError(
                f"Conv2d: `kernel_size` must be a positive odd integer (SAME padding), "
                f"got {kernel_size}."
            )
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        # fan_in = kh * kw * c_in (variance_scaling's default for HWIO kernels).
        self.weight = jax.nn.initializers.lecun_normal()(key, shape, jnp.float32)
        self.bias = jnp.zeros((out_channels,), jnp.float32) if use_bias else None
        self.stride = stride
        self.padding = padding

    def __call__(
        self, x: Float[Array, "*batch height width c_in"]
    ) -> Float[Array, "*batch out_height out_width c_out"]:
        """**Arguments:**

        - `x`: `(*batch, height, width, in_channels)`.

        **Returns:** `(*batch, out_height, out_width, out_channels)`: with SAME padding
        `ceil(height / stride)`, with VALID `(height - kernel_size) // stride + 1`,
        with padding `p` `(height + 2p - kernel_size) // stride + 1` (widths alike).
        """
        if x.ndim < 3 or x.shape[-1] != self.weight.shape[2]:
            raise ValueError(
                f"Conv2d: `x` must have shape (*batch, height, width, {self.weight.shape[2]}), "
                f"got {x.shape}."
            )
        if self.weight.shape[:2] == (1, 1) and self.stride == 1 and self.padding in ("SAME", 0):
            y = x @ self.weight[0, 0].astype(x.dtype)
        else:
            y = conv2d_nhwc(x, self.weight, stride=self.stride, padding=self.padding)
        if self.bias is not None:
            y = y + jnp.broadcast_to(self.bias.astype(y.dtype), y.shape)
        return y


def _transpose_padding(kernel: int, stride: int, padding: Padding, in_size: int):
    """The transposed convolution's output size and the padding of its
    input-dilated convolution, so that it is the adjoint of `Conv2d(kernel, stride,
    padding)` applied to an image of that output size."""
    if padding == "SAME":
        out = in_size * stride
        total = max(kernel - stride, 0)  # the forward convolution's SAME padding
        lo, hi = total // 2, total - total // 2
    else:
        p = 0 if padding == "VALID" else padding
        out = (in_size - 1) * stride - 2 * p + kernel
        lo = hi = p
    # Rows the forward convolution reads past its last window, never touched.
    rest = (out + lo + hi - kernel) % stride
    return out, (kernel - 1 - lo, kernel - 1 - hi + rest)


class ConvTranspose2d(eqx.Module):
    """A `k × k` channels-last transposed convolution: the adjoint (gradient with
    respect to the input) of `Conv2d` with the same kernel size, stride and padding,
    as PyTorch's `ConvTranspose2d`. It upsamples by `stride`.

    Output size, for input size `n` (height and width alike): with SAME padding
    `n · stride` (TensorFlow's `Conv2DTranspose`), with VALID `(n - 1) · stride +
    kernel_size`, with padding `p` `(n - 1) · stride - 2p + kernel_size` (PyTorch's,
    without `output_padding`).

    - `kernel_size = stride` with VALID padding un-patchifies: every input pixel
      becomes a `stride × stride` patch, `out[i·s + a, j·s + b] = x[i, j] @ W[a, b]`
      (computed as one matrix product, no dilated convolution).
    - `kernel_size = 4, stride = 2, padding = 1` (or SAME) is the learned 2×
      upsampling of DCGAN-style decoders.

    The weight is `(kh, kw, in_channels, out_channels)`: `W[a, b]` maps the input's
    channels to the output's, and `ConvTranspose2d` with weight `W` is the adjoint of
    `Conv2d` with weight `W.swapaxes(2, 3)`. LeCun-normal initialisation with
    `fan_in = kh · kw · in_channels`, zero bias.

    Roles: the weight's axes are `("kh", "kw", "in", "out")`, the bias's `("out",)`.
    """

    # Static fields first and `role(...)` fields last: type checkers read `role(...)` as a
    # default value. Parameter order (and so checkpoint paths) is unaffected.
    stride: int = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    weight: Float[Array, "kh kw c_in c_out"] = eqx.field(
        metadata=role(axes=("kh", "kw", "in", "out"))
    )
    bias: Float[Array, " c_out"] | None = eqx.field(metadata=role(axes=("out",)))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        padding: Padding = "VALID",
        use_bias: bool = True,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`: channels of the input and the output.
        - `kernel_size`: height and width of the kernel.
        - `stride`: the upsampling factor.
        - `padding`: the padding of the convolution this one is the adjoint of:
          `"SAME"`, `"VALID"` (default) or an int; see `Padding`.
        - `use_bias`: add a learned bias (zero at initialisation).
        - `key`: a `jax.random` key for the weight.
        """
        _check_stride_padding("ConvTranspose2d", stride, padding)
        if kernel_size < 1:
            raise ValueError(f"ConvTranspose2d: `kernel_size` must be ≥ 1, got {kernel_size}.")
        if isinstance(padding, int) and padding > kernel_size - 1:
            raise ValueError(
                f"ConvTranspose2d: integer `padding` must be ≤ kernel_size - 1 = "
                f"{kernel_size - 1}, got {padding}."
            )
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.weight = jax.nn.initializers.lecun_normal()(key, shape, jnp.float32)
        self.bias = jnp.zeros((out_channels,), jnp.float32) if use_bias else None
        self.stride = stride
        self.padding = padding

    def __call__(
        self, x: Float[Array, "*batch height width c_in"]
    ) -> Float[Array, "*batch out_height out_width c_out"]:
        """**Arguments:**

        - `x`: `(*batch, height, width, in_channels)`.

        **Returns:** `(*batch, out_height, out_width, out_channels)` (sizes above).
        """
        k, s = self.weight.shape[0], self.stride
        if x.ndim < 3 or x.shape[-1] != self.weight.shape[2]:
            raise ValueError(
                f"ConvTranspose2d: `x` must have shape (*batch, height, width, "
                f"{self.weight.shape[2]}), got {x.shape}."
            )
        w = self.weight.astype(x.dtype)
        if k == s and self.padding in ("VALID", 0):
            *lead, h, wd, _ = x.shape
            y = jnp.einsum("...hwi,abio->...hawbo", x, w)
            y = y.reshape(*lead, h * k, wd * k, w.shape[-1])
        else:
            x4, lead = _fold(x)
            _, pad_h = _transpose_padding(k, s, self.padding, x.shape[-3])
            _, pad_w = _transpose_padding(k, s, self.padding, x.shape[-2])
            y = jax.lax.conv_general_dilated(
                x4,
                w[::-1, ::-1],
                window_strides=(1, 1),
                padding=(pad_h, pad_w),
                lhs_dilation=(s, s),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            y = y.reshape(lead + y.shape[1:])
        if self.bias is not None:
            y = y + jnp.broadcast_to(self.bias.astype(y.dtype), y.shape)
        return y
