"""The 3-D convolutional VQGAN codec of TATS (Ge et al., 2022), the video tokenizer MeBT
uses unchanged: replicate-padded 3-D convolutions, the encoder and decoder, their
residual blocks and norms, and the 3-D patch discriminator. Channels last: videos are
`(*batch, time, height, width, channels)`.

The codebook and the 1 × 1 × 1 convolutions around it (`pre_vq_conv =
SamePadConv3d(encoder.out_channels, embedding_dim, 1)` and `post_vq_conv =
SamePadConv3d(embedding_dim, encoder.out_channels, 1)`) are left to the model that
holds the codec; they are plain `SamePadConv3d`s.

**Mapping from a TATS / MeBT `state_dict`.** Field names follow the PyTorch modules, so
every key maps to one eqvid path:

| PyTorch key | eqvid path | conversion |
|---|---|---|
| `<conv>.conv.weight` (out, in, kT, kH, kW) | `<conv>.weight` (kT, kH, kW, in, out) | `w.transpose(2, 3, 4, 1, 0)` |
| `<conv>.conv.bias` | `<conv>.bias` | as is |
| `<convt>.convt.weight` (in, out, kT, kH, kW) | `<convt>.weight` (kT, kH, kW, in, out) | `w.transpose(2, 3, 4, 0, 1)` (no flip) |
| `<convt>.convt.bias` | `<convt>.bias` | as is |
| `<norm>.{weight,bias,running_mean,running_var}` | `<norm>.{...}` | as is |
| `<norm>.num_batches_tracked` | (none) | dropped |
| `encoder.final_block.0.*`, `decoder.final_block.0.*` | `….final_block.*` | the norm of the `Sequential(norm, SiLU)` |
| `encoder.conv_blocks.{i}.{down,res}.…` | `encoder.conv_blocks[i].{down,res}.…` | |
| `decoder.conv_blocks.{i}.{up,res1,res2}.…` | `decoder.conv_blocks[i].{up,res1,res2}.…` | |
| `…res….{norm1,conv1,norm2,conv2,conv_shortcut}` | the same fields of `ResBlock3d` | |
| `video_discriminator.model{n}.0.*` (a `Conv3d`) | `layers[n].conv.*` | conv rule above |
| `video_discriminator.model{n}.1.*` (BatchNorm) | `layers[n].norm.*` | |

Here `<conv>` is a `SamePadConv3d` (its PyTorch module wraps an `nn.Conv3d` named `conv`)
and `<convt>` a `SamePadConvTranspose3d` (an `nn.ConvTranspose3d` named `convt`). The
released checkpoints (`--norm_type batch`) hold BatchNorm running statistics, which
`BatchNorm3d` keeps as plain arrays.

**Initialisation** is PyTorch's default, so that a freshly built codec has the scales
of a freshly built TATS one: convolution weights and biases are `U(±1/√fan_in)` (the
kaiming-uniform with `a = √5` of `nn.Conv3d.reset_parameters`), with `fan_in = in ·
kT · kH · kW` for convolutions and, as PyTorch computes it from the `(in, out, …)`
weight, `fan_in = out · kT · kH · kW` for transposed convolutions; norms start at
weight 1, bias 0 (and running mean 0, variance 1).
"""

import contextlib
import math
import typing
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._norm import GroupNorm
from ._roles import role

PaddingType = typing.Literal["replicate", "constant", "reflect", "circular"]
"""How `SamePadConv3d` pads (PyTorch's `F.pad` modes): `"replicate"` repeats the edge
(TATS's default and the only mode its decoder and residual blocks use), `"constant"`
pads zeros, `"reflect"` mirrors without repeating the edge, `"circular"` wraps."""

NormType = typing.Literal["group", "batch"]
"""TATS's `Normalize`: `"group"` (GroupNorm, 32 groups, eps 1e-6) or `"batch"`
(`BatchNorm3d`, eps 1e-5; the released checkpoints)."""

_JNP_PAD_MODE = {
    "replicate": "edge",
    "constant": "constant",
    "reflect": "reflect",
    "circular": "wrap",
}

Triple = tuple[int, int, int]


def _triple(owner: str, name: str, value: int | tuple[int, ...]) -> Triple:
    values = (value,) * 3 if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(values, tuple)
        or len(values) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)
    ):
        raise ValueError(
            f"{owner}: `{name}` must be an int ≥ 1 or three of them (time, height, width), "
            f"got {value!r}."
        )
    return typing.cast(Triple, values)


def same_padding(kernel_size: Triple, stride: Triple) -> tuple[tuple[int, int], ...]:
    """TATS's padding of `SamePadConv3d` and `SamePadConvTranspose3d`: `k - s` cells per
    axis, the odd one on the left (start): `(⌈(k - s) / 2⌉, ⌊(k - s) / 2⌋)`."""
    return tuple(((k - s) - (k - s) // 2, (k - s) // 2) for k, s in zip(kernel_size, stride))


def _check_padding_type(owner: str, padding_type: str) -> None:
    if padding_type not in _JNP_PAD_MODE:
        raise ValueError(
            f"{owner}: `padding_type` must be one of {tuple(_JNP_PAD_MODE)}, got {padding_type!r}."
        )


def _check_video(owner: str, x, channels: int) -> None:
    if x.ndim < 4 or x.shape[-1] != channels:
        raise ValueError(
            f"{owner}: `x` must have shape (*batch, time, height, width, {channels}) (the "
            f"layer's {channels} channels), got {tuple(x.shape)}."
        )


def _pad_video(x, pads: tuple[tuple[int, int], ...], padding_type: str):
    """Pad the time, height and width axes of `(*batch, t, h, w, c)`."""
    widths = ((0, 0),) * (x.ndim - 4) + tuple(pads) + ((0, 0),)
    if all(p == (0, 0) for p in pads):
        return x
    return jnp.pad(x, widths, mode=_JNP_PAD_MODE[padding_type])


def conv3d_ndhwc(
    x: Float[Array, "*batch time height width c_in"],
    kernel: Float[Array, "kt kh kw c_in c_out"],
    *,
    stride: Triple = (1, 1, 1),
    padding: tuple[tuple[int, int], ...] = ((0, 0), (0, 0), (0, 0)),
    lhs_dilation: Triple = (1, 1, 1),
) -> Float[Array, "*batch out_time out_height out_width c_out"]:
    """Cross-correlation of channels-last videos with a `(kT, kH, kW, in, out)` kernel,
    zero `padding` `((t0, t1), (h0, h1), (w0, w1))` (VALID by default).

    All leading axes are folded into one batch axis for a single XLA convolution; the
    kernel is cast to the dtype of `x`. `lhs_dilation` inserts `s - 1` zeros between
    input cells (the transposed convolution).
    """
    lead = x.shape[:-4]
    x5 = x.reshape((math.prod(lead),) + x.shape[-4:])
    y = jax.lax.conv_general_dilated(
        x5,
        kernel.astype(x.dtype),
        window_strides=stride,
        padding=padding,
        lhs_dilation=lhs_dilation,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
    return y.reshape(lead + y.shape[1:])


def _torch_uniform(key: PRNGKeyArray, shape: tuple[int, ...], fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _add_bias(y, bias):
    if bias is None:
        return y
    return y + jnp.broadcast_to(bias.astype(y.dtype), y.shape)


class Conv3d(eqx.Module):
    """A channels-last 3-D convolution with PyTorch's `nn.Conv3d` semantics: `padding`
    zeros on every side of time, height and width (the patch discriminator's
    convolutions). Weight `(kT, kH, kW, in, out)`, PyTorch's default initialisation.

    Roles: the weight's axes are `("kt", "kh", "kw", "in", "out")`, the bias's `("out",)`.
    """

    stride: Triple = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    weight: Float[Array, "kt kh kw c_in c_out"] = eqx.field(
        metadata=role(axes=("kt", "kh", "kw", "in", "out"))
    )
    bias: Float[Array, " c_out"] | None = eqx.field(metadata=role(axes=("out",)))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int = 0,
        *,
        bias: bool = True,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`: channels of the input and the output.
        - `kernel_size`, `stride`: an int or `(time, height, width)`.
        - `padding`: zeros added on both sides of each of time, height and width.
        - `bias`: add a learned bias.
        - `key`: a `jax.random` key.
        """
        kernel = _triple("Conv3d", "kernel_size", kernel_size)
        self.stride = _triple("Conv3d", "stride", stride)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"Conv3d: `padding` must be an int ≥ 0, got {padding!r}.")
        self.padding = padding
        fan_in = in_channels * math.prod(kernel)
        kw, kb = jax.random.split(key)
        self.weight = _torch_uniform(kw, (*kernel, in_channels, out_channels), fan_in)
        self.bias = _torch_uniform(kb, (out_channels,), fan_in) if bias else None

    def __call__(
        self, x: Float[Array, "*batch time height width c_in"]
    ) -> Float[Array, "*batch out_time out_height out_width c_out"]:
        """**Arguments:**

        - `x`: `(*batch, time, height, width, in_channels)`.

        **Returns:** `(*batch, t', h', w', out_channels)` with `n' = (n + 2·padding -
        kernel) // stride + 1` per axis.
        """
        _check_video("Conv3d", x, self.weight.shape[3])
        p = self.padding
        y = conv3d_ndhwc(x, self.weight, stride=self.stride, padding=((p, p),) * 3)
        return _add_bias(y, self.bias)


class SamePadConv3d(eqx.Module):
    """TATS's `SamePadConv3d`: pad `k - s` cells per axis (the odd one at the start, see
    `same_padding`) in `padding_type` mode, then an unpadded strided convolution, so a
    size divisible by the stride shrinks exactly by it (`n / s`).

    Weight `(kT, kH, kW, in, out)` (PyTorch's `(out, in, kT, kH, kW)` transposed by
    `(2, 3, 4, 1, 0)`); PyTorch's default initialisation, `U(±1/√(in·kT·kH·kW))` for
    weight and bias.

    Roles: the weight's axes are `("kt", "kh", "kw", "in", "out")`, the bias's `("out",)`.
    """

    stride: Triple = eqx.field(static=True)
    padding_type: PaddingType = eqx.field(static=True)
    weight: Float[Array, "kt kh kw c_in c_out"] = eqx.field(
        metadata=role(axes=("kt", "kh", "kw", "in", "out"))
    )
    bias: Float[Array, " c_out"] | None = eqx.field(metadata=role(axes=("out",)))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        *,
        bias: bool = True,
        padding_type: PaddingType = "replicate",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`: channels of the input and the output.
        - `kernel_size`: an int or `(time, height, width)`.
        - `stride`: an int or `(time, height, width)`, each at most the kernel's size.
        - `bias`: add a learned bias.
        - `padding_type`: `"replicate"` (default), `"constant"`, `"reflect"` or
          `"circular"`; see `PaddingType`.
        - `key`: a `jax.random` key.
        """
        kernel = _triple("SamePadConv3d", "kernel_size", kernel_size)
        strides = _triple("SamePadConv3d", "stride", stride)
        if any(s > k for k, s in zip(kernel, strides)):
            raise ValueError(
                f"SamePadConv3d: `stride` must be at most kernel_size={kernel} per axis, "
                f"got {strides}."
            )
        _check_padding_type("SamePadConv3d", padding_type)
        self.stride = strides
        self.padding_type = padding_type
        fan_in = in_channels * math.prod(kernel)
        kw, kb = jax.random.split(key)
        self.weight = _torch_uniform(kw, (*kernel, in_channels, out_channels), fan_in)
        self.bias = _torch_uniform(kb, (out_channels,), fan_in) if bias else None

    def __call__(
        self, x: Float[Array, "*batch time height width c_in"]
    ) -> Float[Array, "*batch out_time out_height out_width c_out"]:
        """**Arguments:**

        - `x`: `(*batch, time, height, width, in_channels)`.

        **Returns:** `(*batch, t', h', w', out_channels)` with `n' = ⌊(n - s) / s⌋ + 1`
        per axis (`n / s` when `s` divides `n`).
        """
        _check_video("SamePadConv3d", x, self.weight.shape[3])
        kernel = typing.cast(Triple, self.weight.shape[:3])
        if kernel == (1, 1, 1) and self.stride == (1, 1, 1):
            y = x @ self.weight[0, 0, 0].astype(x.dtype)
        else:
            x = _pad_video(x, same_padding(kernel, self.stride), self.padding_type)
            y = conv3d_ndhwc(x, self.weight, stride=self.stride)
        return _add_bias(y, self.bias)


class SamePadConvTranspose3d(eqx.Module):
    """TATS's `SamePadConvTranspose3d`: pad the input like `SamePadConv3d` (`k - s`
    cells per axis, the odd one at the start, `padding_type` mode), then PyTorch's
    `ConvTranspose3d(k, stride=s, padding=k - 1)`. The output has `n · s` cells per axis
    (for the `k = 4`, `s ∈ {1, 2}` of the decoder; in general `(n + k - s - 1) · s - k +
    2`).

    Computed as a convolution of the zero-dilated input (`s - 1` zeros between cells,
    no further padding since `k - 1 - (k - 1) = 0`) with the kernel flipped in time,
    height and width. The weight is stored unflipped, `W[a, b, c, i, o]` mapping input
    channel `i` to output channel `o`: PyTorch's `(in, out, kT, kH, kW)` weight
    transposed by `(2, 3, 4, 0, 1)`, with no flip. PyTorch's default initialisation,
    `U(±1/√(out·kT·kH·kW))` (PyTorch takes the fan-in from the weight's second axis).

    Roles: the weight's axes are `("kt", "kh", "kw", "in", "out")`, the bias's `("out",)`.
    """

    stride: Triple = eqx.field(static=True)
    padding_type: PaddingType = eqx.field(static=True)
    weight: Float[Array, "kt kh kw c_in c_out"] = eqx.field(
        metadata=role(axes=("kt", "kh", "kw", "in", "out"))
    )
    bias: Float[Array, " c_out"] | None = eqx.field(metadata=role(axes=("out",)))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 4,
        stride: int | tuple[int, int, int] = 1,
        *,
        bias: bool = True,
        padding_type: PaddingType = "replicate",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`: channels of the input and the output.
        - `kernel_size`: an int or `(time, height, width)`.
        - `stride`: the upsampling factor, an int or `(time, height, width)`, each at
          most the kernel's size.
        - `bias`: add a learned bias.
        - `padding_type`: how the input is padded; see `PaddingType`.
        - `key`: a `jax.random` key.
        """
        kernel = _triple("SamePadConvTranspose3d", "kernel_size", kernel_size)
        strides = _triple("SamePadConvTranspose3d", "stride", stride)
        if any(s > k for k, s in zip(kernel, strides)):
            raise ValueError(
                f"SamePadConvTranspose3d: `stride` must be at most kernel_size={kernel} "
                f"per axis, got {strides}."
            )
        _check_padding_type("SamePadConvTranspose3d", padding_type)
        self.stride = strides
        self.padding_type = padding_type
        fan_in = out_channels * math.prod(kernel)
        kw, kb = jax.random.split(key)
        self.weight = _torch_uniform(kw, (*kernel, in_channels, out_channels), fan_in)
        self.bias = _torch_uniform(kb, (out_channels,), fan_in) if bias else None

    def __call__(
        self, x: Float[Array, "*batch time height width c_in"]
    ) -> Float[Array, "*batch out_time out_height out_width c_out"]:
        """**Arguments:**

        - `x`: `(*batch, time, height, width, in_channels)`.

        **Returns:** `(*batch, t·s_t, h·s_h, w·s_w, out_channels)` for the decoder's
        `k = 4, s ∈ {1, 2}` (in general `(n + k - s - 1) · s - k + 2` per axis).
        """
        _check_video("SamePadConvTranspose3d", x, self.weight.shape[3])
        kernel = typing.cast(Triple, self.weight.shape[:3])
        x = _pad_video(x, same_padding(kernel, self.stride), self.padding_type)
        y = conv3d_ndhwc(x, self.weight[::-1, ::-1, ::-1], lhs_dilation=self.stride)
        return _add_bias(y, self.bias)


class BatchNorm3d(eqx.Module):
    """PyTorch's `BatchNorm3d` (TATS's `SyncBatchNorm`) on channels-last videos:
    per-channel normalisation, then a learned scale and bias.

    - `training=False` (inference, `model.eval()`): with the stored running statistics,
      `(x - running_mean) / √(running_var + eps)`.
    - `training=True`: with the statistics of the batch, over every axis but the
      channels (all leading axes, time, height, width; variance biased), as PyTorch in
      train mode. Call it on the whole batch, not under `vmap` (per-example statistics
      would differ). Under `jit` with a sharded batch the mean is the global one, as
      `SyncBatchNorm`'s.

    The running statistics are plain arrays, read-only here: the layer does not update
    them (PyTorch's moving average, momentum 0.1 over the unbiased variance, is left to
    the model that holds the layer, which can read each training call's statistics
    with `record_batch_statistics`), and `num_batches_tracked` is not kept. They take
    no gradient (`stop_gradient`) and are declared `frozen` (no optimiser state, no
    weight decay, kept in float32).
    """

    eps: float = eqx.field(static=True)
    weight: Float[Array, " channels"]
    bias: Float[Array, " channels"]
    running_mean: Float[Array, " channels"] = eqx.field(
        metadata=role(frozen=True, weight_decay=False, keep_float32=True)
    )
    running_var: Float[Array, " channels"] = eqx.field(
        metadata=role(frozen=True, weight_decay=False, keep_float32=True)
    )

    def __init__(self, channels: int, *, eps: float = 1e-5):
        """**Arguments:**

        - `channels`: the number of channels (the last axis).
        - `eps`: added to the variance (PyTorch's default 1e-5).
        """
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"BatchNorm3d: `channels` must be an int ≥ 1, got {channels!r}.")
        self.eps = eps
        self.weight = jnp.ones((channels,), jnp.float32)
        self.bias = jnp.zeros((channels,), jnp.float32)
        self.running_mean = jnp.zeros((channels,), jnp.float32)
        self.running_var = jnp.ones((channels,), jnp.float32)

    def __call__(
        self, x: Float[Array, "*batch time height width channels"], *, training: bool = False
    ) -> Float[Array, "*batch time height width channels"]:
        """**Arguments:**

        - `x`: `(*batch, time, height, width, channels)`.
        - `training`: normalise with the batch's statistics instead of the running ones.

        **Returns:** an array of the shape and dtype of `x`.
        """
        _check_video("BatchNorm3d", x, self.weight.shape[0])
        if training:
            x32 = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            mean = mean.reshape(-1)
            if _RECORDERS:
                size = math.prod(x.shape[:-1])
                _RECORDERS[-1].append(BatchStatistics(self, mean, var, size))
        else:
            mean = jax.lax.stop_gradient(self.running_mean)
            var = jax.lax.stop_gradient(self.running_var)
        scale = self.weight * jax.lax.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        scale = jnp.broadcast_to(scale.astype(x.dtype), x.shape)
        shift = jnp.broadcast_to(shift.astype(x.dtype), x.shape)
        return x * scale + shift


class BatchStatistics(typing.NamedTuple):
    """The statistics one training call of a `BatchNorm3d` normalised with (see
    `record_batch_statistics`)."""

    norm: BatchNorm3d
    """The layer (the very object called)."""
    mean: Float[Array, " channels"]
    """The batch mean per channel (float32, differentiable)."""
    var: Float[Array, " channels"]
    """The biased batch variance per channel (what the call divided by)."""
    size: int
    """The values per channel the statistics span (PyTorch's unbiased running variance
    is `var · size / (size - 1)`)."""


_RECORDERS: list[list[BatchStatistics]] = []


@contextlib.contextmanager
def record_batch_statistics() -> Iterator[list[BatchStatistics]]:
    """Collect the statistics of every `BatchNorm3d` called with `training=True` inside
    the `with` block, in call order, as `BatchStatistics` (the layer object, mean,
    biased variance, size): what a model needs to keep PyTorch's running statistics
    (`running ← (1 - m)·running + m·batch`, momentum `m = 0.1`, the variance unbiased)
    in its state. Nested blocks collect into the innermost only.

    The recorded arrays belong to the trace the calls ran in: read them in the same
    function (e.g. the loss under `jax.grad` or `jit`), and use the layer objects'
    identity (`record.norm is layer`) only for layers of the model that function was
    called on.

    ```python
    with record_batch_statistics() as records:
        h = encoder(x, training=True)
    for r in records: ...  # r.norm, r.mean, r.var, r.size
    ```
    """
    records: list[BatchStatistics] = []
    _RECORDERS.append(records)
    try:
        yield records
    finally:
        _RECORDERS.pop()


Norm3d = GroupNorm | BatchNorm3d
"""The norm of TATS's `Normalize`: a `GroupNorm` (statistics per video over time,
height, width and the group's channels) or a `BatchNorm3d`."""


def make_norm3d(channels: int, norm_type: NormType = "group", *, groups: int = 32) -> Norm3d:
    """TATS's `Normalize(channels, norm_type)`: `GroupNorm(groups, eps=1e-6)` (TATS
    always uses 32 groups) or `BatchNorm3d(eps=1e-5)`.

    **Arguments:**

    - `channels`: the number of channels.
    - `norm_type`: `"group"` or `"batch"`.
    - `groups`: the GroupNorm's group count (an eqvid extension for small test models;
      it must divide `channels`).
    """
    if norm_type == "group":
        return GroupNorm(channels, groups, eps=1e-6)
    if norm_type == "batch":
        return BatchNorm3d(channels)
    raise ValueError(f"make_norm3d: `norm_type` must be 'group' or 'batch', got {norm_type!r}.")


def apply_norm3d(
    norm: Norm3d, x: Float[Array, "*batch time height width channels"], *, training: bool = False
) -> Float[Array, "*batch time height width channels"]:
    """Apply a `Norm3d` to a video: a `GroupNorm` over `(time, height, width, channels /
    groups)` per video, a `BatchNorm3d` with running (`training=False`) or batch
    (`training=True`) statistics.

    **Arguments:**

    - `norm`: the norm.
    - `x`: `(*batch, time, height, width, channels)`.
    - `training`: for a `BatchNorm3d`, use the batch's statistics (ignored by GroupNorm).
    """
    if isinstance(norm, BatchNorm3d):
        return norm(x, training=training)
    _check_video("GroupNorm", x, norm.weight.shape[0])
    *lead, t, h, w, c = x.shape
    # Time and height folded together: GroupNorm's statistics span (t·h, w, c/g).
    return norm(x.reshape(*lead, t * h, w, c)).reshape(x.shape)


class ResBlock3d(eqx.Module):
    """TATS's `ResBlock`: `x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`, both convs
    `SamePadConv3d` with `3 × 3 × 3` kernels; when the channel count changes the skip is
    `conv_shortcut`, also a `3 × 3 × 3` `SamePadConv3d` (never the case in the VQGAN).

    TATS builds `norm2` over `in_channels`, which only works when `in == out`; here it
    has `out_channels` (the same whenever TATS runs).
    """

    norm1: Norm3d
    conv1: SamePadConv3d
    norm2: Norm3d
    conv2: SamePadConv3d
    conv_shortcut: SamePadConv3d | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        norm_type: NormType = "group",
        norm_groups: int = 32,
        padding_type: PaddingType = "replicate",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`: channels of the input.
        - `out_channels`: channels of the output (default `in_channels`).
        - `norm_type`: `"group"` or `"batch"`; see `make_norm3d`.
        - `norm_groups`: GroupNorm's group count (TATS: 32).
        - `padding_type`: the convolutions' padding; see `PaddingType`.
        - `key`: a `jax.random` key.
        """
        out_channels = in_channels if out_channels is None else out_channels
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = make_norm3d(in_channels, norm_type, groups=norm_groups)
        self.conv1 = SamePadConv3d(in_channels, out_channels, 3, padding_type=padding_type, key=k1)
        self.norm2 = make_norm3d(out_channels, norm_type, groups=norm_groups)
        self.conv2 = SamePadConv3d(out_channels, out_channels, 3, padding_type=padding_type, key=k2)
        self.conv_shortcut = (
            None
            if in_channels == out_channels
            else SamePadConv3d(in_channels, out_channels, 3, padding_type=padding_type, key=k3)
        )

    def __call__(
        self, x: Float[Array, "*batch time height width c_in"], *, training: bool = False
    ) -> Float[Array, "*batch time height width c_out"]:
        """**Arguments:**

        - `x`: `(*batch, time, height, width, in_channels)`.
        - `training`: BatchNorm uses the batch's statistics (see `BatchNorm3d`).

        **Returns:** `(*batch, time, height, width, out_channels)`.
        """
        _check_video("ResBlock3d", x, self.conv1.weight.shape[3])
        h = self.conv1(jax.nn.silu(apply_norm3d(self.norm1, x, training=training)))
        h = self.conv2(jax.nn.silu(apply_norm3d(self.norm2, h, training=training)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


def level_strides(
    factors: int | tuple[int, int, int], owner: str = "level_strides"
) -> list[Triple]:
    """The per-level `(time, height, width)` strides of TATS's encoder and decoder for
    down- / upsampling `factors` (powers of two): `max log2(factor)` levels, each axis
    strided by 2 in its first `log2(factor)` levels and by 1 after. For `(4, 8, 8)`:
    `[(2, 2, 2), (2, 2, 2), (1, 2, 2)]`.

    **Arguments:**

    - `factors`: an int or `(time, height, width)`, powers of two, at least one > 1.
    - `owner`: the name errors are reported under.
    """
    triple = _triple(owner, "factors", factors)
    if any(f & (f - 1) for f in triple) or max(triple) < 2:
        raise ValueError(
            f"{owner}: the down/upsampling factors must be powers of two, at least one "
            f"> 1, got {factors!r}."
        )
    logs = [f.bit_length() - 1 for f in triple]
    return [typing.cast(Triple, tuple(2 if n > i else 1 for n in logs)) for i in range(max(logs))]


class _DownBlock(eqx.Module):
    down: SamePadConv3d
    res: ResBlock3d


class _UpBlock(eqx.Module):
    up: SamePadConvTranspose3d
    res1: ResBlock3d
    res2: ResBlock3d


class VQGAN3DEncoder(eqx.Module):
    """TATS's `Encoder`: `conv_first` (3³, `image_channel → n_hiddens`), then per level
    `i` a strided `down` convolution (4³, `n_hiddens·2^i → n_hiddens·2^(i+1)`, strides
    of `level_strides(downsample)`) and a `ResBlock3d`, then `final_block` (the norm)
    and SiLU. No output convolution: `pre_vq_conv` (1³, `out_channels → embedding_dim`)
    belongs to the model.

    With `downsample = (4, 8, 8)` and `n_hiddens = 32` (the released checkpoints) the
    channels go `3 → 32 → 64 → 128 → 256` and `(16, 128, 128)` frames become a
    `(4, 16, 16)` latent grid; time is strided in the first levels.

    As in TATS, `padding_type` applies to `conv_first` and the `down` convolutions; the
    residual blocks always pad by replication.
    """

    downsample: Triple = eqx.field(static=True)
    conv_first: SamePadConv3d
    conv_blocks: tuple[_DownBlock, ...]
    final_block: Norm3d

    def __init__(
        self,
        *,
        n_hiddens: int,
        downsample: int | tuple[int, int, int] = (4, 8, 8),
        image_channel: int = 3,
        norm_type: NormType = "group",
        norm_groups: int = 32,
        padding_type: PaddingType = "replicate",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `n_hiddens`: channels of the first convolution; doubled at every level.
        - `downsample`: `(time, height, width)` downsampling factors, powers of two.
        - `image_channel`: channels of the input video.
        - `norm_type`: `"group"` or `"batch"` (the released checkpoints); see
          `make_norm3d`.
        - `norm_groups`: GroupNorm's group count (TATS: 32).
        - `padding_type`: padding of `conv_first` and the `down` convolutions.
        - `key`: a `jax.random` key.
        """
        strides = level_strides(downsample, "VQGAN3DEncoder")
        self.downsample = _triple("VQGAN3DEncoder", "downsample", downsample)
        keys = jax.random.split(key, 2 * len(strides) + 1)
        self.conv_first = SamePadConv3d(
            image_channel, n_hiddens, 3, padding_type=padding_type, key=keys[0]
        )
        blocks = []
        for i, stride in enumerate(strides):
            c_in, c_out = n_hiddens * 2**i, n_hiddens * 2 ** (i + 1)
            down = SamePadConv3d(
                c_in, c_out, 4, stride, padding_type=padding_type, key=keys[2 * i + 1]
            )
            res = ResBlock3d(
                c_out, c_out, norm_type=norm_type, norm_groups=norm_groups, key=keys[2 * i + 2]
            )
            blocks.append(_DownBlock(down, res))
        self.conv_blocks = tuple(blocks)
        self.final_block = make_norm3d(n_hiddens * 2 ** len(strides), norm_type, groups=norm_groups)

    @property
    def out_channels(self) -> int:
        """Channels of the output, `n_hiddens · 2^max(log2 downsample)`."""
        return self.final_block.weight.shape[0]

    def __call__(
        self, x: Float[Array, "*batch time height width c_in"], *, training: bool = False
    ) -> Float[Array, "*batch t_latent h_latent w_latent c_out"]:
        """**Arguments:**

        - `x`: `(*batch, time, height, width, image_channel)`, each of time, height and
          width divisible by its `downsample` factor. TATS feeds pixels in `[-0.5, 0.5]`.
        - `training`: BatchNorm uses the batch's statistics (see `BatchNorm3d`).

        **Returns:** `(*batch, time / d_t, height / d_h, width / d_w, out_channels)`,
        after the final norm and SiLU.
        """
        _check_video("VQGAN3DEncoder", x, self.conv_first.weight.shape[3])
        sizes = tuple(x.shape[-4:-1])
        if any(n % d for n, d in zip(sizes, self.downsample)):
            raise ValueError(
                f"VQGAN3DEncoder: `x` must have (time, height, width) divisible by the "
                f"downsampling {self.downsample}, got {sizes} (shape {tuple(x.shape)})."
            )
        h = self.conv_first(x)
        for block in self.conv_blocks:
            h = block.res(block.down(h), training=training)
        return jax.nn.silu(apply_norm3d(self.final_block, h, training=training))


class VQGAN3DDecoder(eqx.Module):
    """TATS's `Decoder`: `final_block` (the norm, applied *first* despite its name) and
    SiLU, then per level `i` a transposed convolution `up` (4³, strides of
    `level_strides(upsample)`) and two `ResBlock3d`s, then `conv_last` (3³, to
    `image_channel`), with no output activation (TATS clamps samples to `[-0.5, 0.5]`
    only for display).

    Channels, with `m = max log2(upsample)` and `c_j = n_hiddens · 2^j`: input `c_m`,
    level 0 `c_m → c_m`, level `i ≥ 1` `c_(m-i+1) → c_(m-i)`, so the last level has
    `c_1 = 2 · n_hiddens` channels. Time is upsampled in the first levels (so the
    decoder is not the encoder's mirror image stride for stride; the shapes agree).

    TATS's decoder does not take a padding type (every convolution pads by
    replication); `padding_type` here is an eqvid extension, replicate by default.
    """

    upsample: Triple = eqx.field(static=True)
    final_block: Norm3d
    conv_blocks: tuple[_UpBlock, ...]
    conv_last: SamePadConv3d

    def __init__(
        self,
        *,
        n_hiddens: int,
        upsample: int | tuple[int, int, int] = (4, 8, 8),
        image_channel: int = 3,
        norm_type: NormType = "group",
        norm_groups: int = 32,
        padding_type: PaddingType = "replicate",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `n_hiddens`: as the encoder's; the input has `n_hiddens · 2^m` channels.
        - `upsample`: `(time, height, width)` upsampling factors, powers of two (the
          encoder's `downsample`).
        - `image_channel`: channels of the output video.
        - `norm_type`: `"group"` or `"batch"`; see `make_norm3d`.
        - `norm_groups`: GroupNorm's group count (TATS: 32).
        - `padding_type`: padding of every convolution (TATS: replicate).
        - `key`: a `jax.random` key.
        """
        strides = level_strides(upsample, "VQGAN3DDecoder")
        self.upsample = _triple("VQGAN3DDecoder", "upsample", upsample)
        m = len(strides)
        keys = jax.random.split(key, 3 * m + 1)
        c_in = n_hiddens * 2**m
        self.final_block = make_norm3d(c_in, norm_type, groups=norm_groups)
        blocks = []
        c_out = c_in
        for i, stride in enumerate(strides):
            c_in = c_in if i == 0 else n_hiddens * 2 ** (m - i + 1)
            c_out = n_hiddens * 2 ** (m - i)
            up = SamePadConvTranspose3d(
                c_in, c_out, 4, stride, padding_type=padding_type, key=keys[3 * i]
            )
            res1, res2 = (
                ResBlock3d(
                    c_out,
                    c_out,
                    norm_type=norm_type,
                    norm_groups=norm_groups,
                    padding_type=padding_type,
                    key=k,
                )
                for k in (keys[3 * i + 1], keys[3 * i + 2])
            )
            blocks.append(_UpBlock(up, res1, res2))
        self.conv_blocks = tuple(blocks)
        self.conv_last = SamePadConv3d(
            c_out, image_channel, 3, padding_type=padding_type, key=keys[-1]
        )

    @property
    def in_channels(self) -> int:
        """Channels of the input, `n_hiddens · 2^max(log2 upsample)`."""
        return self.final_block.weight.shape[0]

    def __call__(
        self, z: Float[Array, "*batch t_latent h_latent w_latent c_in"], *, training: bool = False
    ) -> Float[Array, "*batch time height width c_out"]:
        """**Arguments:**

        - `z`: `(*batch, t, h, w, in_channels)`, the `post_vq_conv` output.
        - `training`: BatchNorm uses the batch's statistics (see `BatchNorm3d`).

        **Returns:** `(*batch, t·u_t, h·u_h, w·u_w, image_channel)`, unbounded (TATS's
        pixels live in `[-0.5, 0.5]`).
        """
        _check_video("VQGAN3DDecoder", z, self.in_channels)
        h = jax.nn.silu(apply_norm3d(self.final_block, z, training=training))
        for block in self.conv_blocks:
            h = block.up(h)
            h = block.res1(h, training=training)
            h = block.res2(h, training=training)
        return self.conv_last(h)


class _DiscLayer(eqx.Module):
    activation: bool = eqx.field(static=True)
    conv: Conv3d
    norm: BatchNorm3d | None


class PatchDiscriminator3D(eqx.Module):
    """TATS's `NLayerDiscriminator3D`, a 3-D PatchGAN that also returns its
    intermediate features (pix2pixHD's `getIntermFeat`) for TATS's feature-matching
    loss. With `disc_channels = 64`, `disc_layers = 3` (TATS's defaults, used by the
    released checkpoints):

    | layer | convolution (4³, zero padding 2) | norm | activation |
    |---|---|---|---|
    | 0 | `3 → 64`, stride 2 | none | LeakyReLU(0.2) |
    | 1 | `64 → 128`, stride 2 | BatchNorm3d | LeakyReLU(0.2) |
    | 2 | `128 → 256`, stride 2 | BatchNorm3d | LeakyReLU(0.2) |
    | 3 | `256 → 512`, stride 1 | BatchNorm3d | LeakyReLU(0.2) |
    | 4 | `512 → 1`, stride 1 | none | none (logits) |

    Channels double per layer up to 512. Each stride-2 layer maps `n` cells to `⌊n/2⌋ +
    1`, each stride-1 layer to `n + 1`: 16 frames of `128²` give `(5, 19, 19)` logits.
    Every convolution has a bias; the norm is BatchNorm whatever the codec's
    `norm_type` (TATS's `SyncBatchNorm`), PyTorch's default initialisation.

    TATS's 2-D `NLayerDiscriminator` (the image discriminator, not built here) is the
    same network with 2-D convolutions. Both differ from taming-transformers'
    `NLayerDiscriminator` (the image VQGAN's): taming pads by 1 (not 2), drops the
    biases of the convolutions followed by BatchNorm, initialises weights `N(0, 0.02)`
    (BatchNorm scales `N(1, 0.02)`), and returns only the logits, no features.
    """

    layers: tuple[_DiscLayer, ...]

    def __init__(
        self,
        image_channels: int = 3,
        disc_channels: int = 64,
        disc_layers: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `image_channels`: channels of the input video.
        - `disc_channels`: channels of the first convolution (`ndf`).
        - `disc_layers`: strided layers (`n_layers`, ≥ 1); the network has
          `disc_layers + 2` convolutions.
        - `key`: a `jax.random` key.
        """
        if isinstance(disc_layers, bool) or not isinstance(disc_layers, int) or disc_layers < 1:
            raise ValueError(
                f"PatchDiscriminator3D: `disc_layers` must be an int ≥ 1, got {disc_layers!r}."
            )
        keys = iter(jax.random.split(key, disc_layers + 2))
        layers = [
            _DiscLayer(True, Conv3d(image_channels, disc_channels, 4, 2, 2, key=next(keys)), None)
        ]
        nf = disc_channels
        for n in range(1, disc_layers + 1):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 2 if n < disc_layers else 1
            conv = Conv3d(nf_prev, nf, 4, stride, 2, key=next(keys))
            layers.append(_DiscLayer(True, conv, BatchNorm3d(nf)))
        layers.append(_DiscLayer(False, Conv3d(nf, 1, 4, 1, 2, key=next(keys)), None))
        self.layers = tuple(layers)

    def __call__(
        self, x: Float[Array, "*batch time height width channels"], *, training: bool = True
    ) -> tuple[
        Float[Array, "*batch t_out h_out w_out 1"],
        tuple[Float[Array, "*batch _t _h _w _c"], ...],
    ]:
        """**Arguments:**

        - `x`: `(*batch, time, height, width, image_channels)`, real or decoded videos.
        - `training`: BatchNorm uses the batch's statistics, as TATS's discriminator
          always does during training (its only use), hence the default `True`;
          `False` uses the running statistics.

        **Returns:** `(logits, features)`: the `(*batch, t', h', w', 1)` patch logits and
        the outputs of all `disc_layers + 2` layers, after their activations, the last
        being the logits themselves (TATS's `res[1:]`); TATS's feature matching compares
        `features[:-1]`.
        """
        _check_video("PatchDiscriminator3D", x, self.layers[0].conv.weight.shape[3])
        features = []
        h = x
        for layer in self.layers:
            h = layer.conv(h)
            if layer.norm is not None:
                h = layer.norm(h, training=training)
            if layer.activation:
                h = jax.nn.leaky_relu(h, 0.2)
            features.append(h)
        return h, tuple(features)
