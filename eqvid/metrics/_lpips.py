"""LPIPS (v0.1, AlexNet trunk): the learned perceptual image distance, in JAX.

A faithful port of `lpips.LPIPS(net="alex", version="0.1")` from
richzhang/PerceptualSimilarity (the `lpips` pip package), inference only:

1. inputs in [-1, 1] are standardised per channel, `(x - shift) / scale` with
   `shift = (-0.030, -0.088, -0.188)`, `scale = (0.458, 0.448, 0.450)` (RGB);
2. torchvision's AlexNet `features` are tapped after each ReLU — relu1 (conv 11×11 /4,
   pad 2, 64 ch), relu2 (max-pool 3/2, conv 5×5 pad 2, 192), relu3 (max-pool 3/2,
   conv 3×3 pad 1, 384), relu4 (conv 3×3, 256), relu5 (conv 3×3, 256);
3. each tap is unit-normalised over channels, `f / (‖f‖₂ + 1e-10)`;
4. the squared difference of the two images' taps goes through the layer's 1×1 linear
   layer (`lin{k}`, no bias), is averaged over space, and the five layers are summed.
"""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, Float

from eqvid.metrics._protocol import check_value_range
from eqvid.metrics._weights import LPIPS_WEIGHTS

__all__ = ["LPIPS", "lpips_weight_shapes"]

# ScalingLayer of lpips v0.1.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10

# torchvision AlexNet `features`: (index in the Sequential, c_in, c_out, kernel, stride,
# padding, max-pool 3/2 before it). LPIPS taps the ReLU after each of these five convs.
_ALEXNET_CONVS = (
    (0, 3, 64, 11, 4, 2, False),
    (3, 64, 192, 5, 1, 2, True),
    (6, 192, 384, 3, 1, 1, True),
    (8, 384, 256, 3, 1, 1, False),
    (10, 256, 256, 3, 1, 1, False),
)
# The smallest image side for which every AlexNet stage has a non-empty output.
MIN_IMAGE_SIZE = 31


def lpips_weight_shapes() -> dict[str, tuple[int, ...]]:
    """The tensors an eqvid LPIPS file holds: PyTorch names and shapes (torchvision
    AlexNet `features.{0,3,6,8,10}.{weight,bias}`, lpips `lin{0..4}.model.1.weight`)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for index, c_in, c_out, kernel, _, _, _ in _ALEXNET_CONVS:
        shapes[f"features.{index}.weight"] = (c_out, c_in, kernel, kernel)
        shapes[f"features.{index}.bias"] = (c_out,)
    for k, (_, _, c_out, *_rest) in enumerate(_ALEXNET_CONVS):
        shapes[f"lin{k}.model.1.weight"] = (1, c_out, 1, 1)
    return shapes


class AlexNetConv(eqx.Module):
    """One AlexNet convolution (+ ReLU), channels last; `index` is its position in
    torchvision's `alexnet().features`."""

    weight: Float[Array, "kh kw c_in c_out"]
    bias: Float[Array, " c_out"]
    index: int = eqx.field(static=True)
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    pool_before: bool = eqx.field(static=True)

    def __call__(
        self, x: Float[Array, "batch height width c_in"], precision: str
    ) -> Float[Array, "batch height2 width2 c_out"]:
        if self.pool_before:  # nn.MaxPool2d(kernel_size=3, stride=2), no padding
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
        y = jax.lax.conv_general_dilated(
            x,
            self.weight.astype(x.dtype),
            window_strides=(self.stride, self.stride),
            padding=((self.padding, self.padding), (self.padding, self.padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        )
        return jax.nn.relu(y + self.bias.astype(y.dtype)[None, None, None, :])


def _unit_normalise(f: Float[Array, "*batch channels"]) -> Float[Array, "*batch channels"]:
    # lpips.normalize_tensor: f / (sqrt(sum f^2) + eps). The double `where` keeps the
    # gradient finite where a feature vector is exactly zero (the value there is 0 anyway).
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return f / (norm + _NORM_EPS)


class LPIPS(eqx.Module):
    """LPIPS v0.1 with the AlexNet trunk (inference). Build it with `LPIPS.load()`.

    `LPIPS(x, y)` compares image batches `(batch, height, width, channels)` in [-1, 1],
    RGB (`channels == 3`) or grey (`channels == 1`, repeated to RGB, as for FVD); images
    need at least 31×31 pixels. Returns `(batch,)` distances ≥ 0, 0 for identical
    images, symmetric. Batched and jit-able; `per_frame` handles videos.
    """

    convs: tuple[AlexNetConv, ...]
    linear: tuple[Float[Array, " channels"], ...]
    precision: str = eqx.field(static=True)

    def __init__(self, tensors: dict[str, np.ndarray], *, precision: str = "highest"):
        """**Arguments:**

        - `tensors`: the PyTorch-named tensors of `lpips_weight_shapes()` (as read from an
            eqvid LPIPS file); shapes are checked.
        - `precision`: `jax.lax` convolution precision (`"highest"` gives float32
            accuracy on GPU/TPU too; `"default"` is faster there).
        """
        from eqvid.metrics._weights import check_tensors

        check_tensors(tensors, lpips_weight_shapes(), source="`tensors`")
        convs = []
        for index, _, _, _, stride, padding, pool_before in _ALEXNET_CONVS:
            w = np.asarray(tensors[f"features.{index}.weight"], np.float32)  # OIHW
            convs.append(
                AlexNetConv(
                    weight=jnp.asarray(w.transpose(2, 3, 1, 0)),
                    bias=jnp.asarray(np.asarray(tensors[f"features.{index}.bias"], np.float32)),
                    index=index,
                    stride=stride,
                    padding=padding,
                    pool_before=pool_before,
                )
            )
        self.convs = tuple(convs)
        self.linear = tuple(
            jnp.asarray(np.asarray(tensors[f"lin{k}.model.1.weight"], np.float32).reshape(-1))
            for k in range(len(_ALEXNET_CONVS))
        )
        self.precision = precision

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, precision: str = "highest") -> "LPIPS":
        """Load the converted LPIPS weights.

        **Arguments:**

        - `path`: an eqvid LPIPS file; None looks for `lpips_alexnet.npz` in the default
            folder (`$EQVID_WEIGHTS`, else `$XDG_CACHE_HOME/eqvid`, else `~/.cache/eqvid`).
        - `precision`: see `LPIPS.__init__`.

        **Raises:**

        - `FileNotFoundError` saying which public files to get, the converter command and
            where to put its output, if the file is missing.
        - `ValueError` if the file is not an eqvid LPIPS file or its tensors are wrong.
        """
        return cls(LPIPS_WEIGHTS.load(path, lpips_weight_shapes()), precision=precision)

    def features(self, x: Float[Array, "batch height width 3"]) -> list[Array]:
        """The five unit-normalised AlexNet taps (relu1..relu5) of images in [-1, 1]."""
        shift = jnp.asarray(_SHIFT, x.dtype)[None, None, None, :]
        scale = jnp.asarray(_SCALE, x.dtype)[None, None, None, :]
        h = (x - shift) / scale
        taps = []
        for conv in self.convs:
            h = conv(h, self.precision)
            taps.append(_unit_normalise(h))
        return taps

    def __call__(
        self,
        x: Float[Array, "batch height width channels"],
        y: Float[Array, "batch height width channels"],
    ) -> Float[Array, " batch"]:
        """LPIPS distance between image batches `x` and `y` (in [-1, 1]).

        **Raises:**

        - `ValueError` naming `x` or `y` if the shapes differ, are not
            `(batch, height, width, 1 or 3)`, the images are smaller than 31×31, or
            (outside `jit`, where values are known) they leave [-1, 1].
        """
        x = _check_images(x, "x")
        y = _check_images(y, "y")
        if x.shape != y.shape:
            raise ValueError(
                f"LPIPS: `x` and `y` must have the same shape, got x.shape={x.shape} and "
                f"y.shape={y.shape}."
            )
        # Both batches go through the trunk as one batch. Identical images give 0 up to
        # rounding: under jit, XLA may reduce the channel norms of the two halves in
        # different orders (LPIPS(x, x) ~ 1e-17 on CPU; exactly 0 eagerly).
        n = x.shape[0]
        total = jnp.zeros((n,), x.dtype)
        for f, w in zip(self.features(jnp.concatenate([x, y], axis=0)), self.linear):
            a, b = f[:n], f[n:]
            per_pixel = jnp.square(a - b) @ w.astype(a.dtype)  # the 1x1 conv lin{k}
            total = total + jnp.mean(per_pixel, axis=(1, 2))
        return total

    def per_frame(
        self,
        x: Float[Array, "batch time height width channels"],
        y: Float[Array, "batch time height width channels"],
    ) -> Float[Array, "batch time"]:
        """LPIPS of each frame of video batches `x` and `y` (in [-1, 1]).

        **Raises:**

        - `ValueError` naming `x` or `y` if they are not equal-shaped
            `(batch, time, height, width, 1 or 3)` videos.
        """
        for name, v in (("x", x), ("y", y)):
            if v.ndim != 5:
                raise ValueError(
                    f"LPIPS.per_frame: `{name}` must be a video batch (batch, time, height, "
                    f"width, channels), got {name}.shape={v.shape}."
                )
        if x.shape != y.shape:
            raise ValueError(
                f"LPIPS.per_frame: `x` and `y` must have the same shape, got "
                f"x.shape={x.shape} and y.shape={y.shape}."
            )
        b, t = x.shape[:2]
        d = self(x.reshape((b * t,) + x.shape[2:]), y.reshape((b * t,) + y.shape[2:]))
        return d.reshape(b, t)


def _check_images(v: Array, name: str) -> Array:
    if v.ndim != 4 or v.shape[-1] not in (1, 3):
        raise ValueError(
            f"LPIPS: `{name}` must be an image batch (batch, height, width, channels) with "
            f"1 (grey) or 3 (RGB) channels in [-1, 1], got {name}.shape={v.shape}."
        )
    if min(v.shape[1:3]) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"LPIPS: `{name}` images must be at least {MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE} "
            f"(so that AlexNet's second max-pool has an output), got {name}.shape={v.shape}."
        )
    if not isinstance(v, Tracer):  # concrete input: check the range (under jit: trusted)
        check_value_range(v, value_range="[-1,1]", name=name)
    if v.shape[-1] == 1:
        v = jnp.repeat(v, 3, axis=-1)
    return v
