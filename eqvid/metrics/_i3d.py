"""The Kinetics-400 I3D (Inception-v1, inflated to 3-D) in JAX, for FVD.

A faithful port, inference only, of the network in `i3d_pretrained_400.pt` — DeepMind's
TF-Hub `i3d-kinetics-400/1` converted to piergiaj/pytorch-i3d's `InceptionI3d` (the file
VideoGPT, TATS and MeBT use). Layer names follow that PyTorch module, so every tensor of
the state dict maps to one field here (`Conv3d_1a_7x7`, `Mixed_3b.b1b`, `logits`, ...).

- `Unit3D`: 3-D convolution with TensorFlow "SAME" padding (total padding
  `max((ceil(s / stride) - 1) * stride + k - s, 0)`, the smaller half in front), no bias,
  batch norm in inference form (folded into the kernel and a bias), ReLU.
- Max pools use "SAME" padding too. TensorFlow pads them with −∞ and pytorch-i3d with 0;
  every pool follows a ReLU, so both give the same result.
- `Logits`: average pool (2, 7, 7) with stride 1, VALID; 1×1×1 convolution with bias (no
  batch norm, no ReLU); spatial squeeze; mean over the remaining time steps → 400 logits
  (TF-Hub's `RGB/inception_i3d/Mean:0`, the standard FVD embedding).

Input: `(batch, time, 224, 224, 3)` in [-1, 1], at least 9 frames (the temporal size is
divided by 8 and the final average pool spans 2 steps). `preprocess_for_i3d` resizes any
video batch to that, and `i3d_features` runs the whole thing in memory-bounded chunks.

Batch-norm epsilon: the TF-Hub original uses Sonnet's default 1e-3 (the default here);
the PyTorch copies in VideoGPT / TATS / MeBT construct `BatchNorm3d(eps=1e-5)` — pass
`batch_norm_eps=1e-5` to `I3D.load` to reproduce their numbers exactly.
"""

import os
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, Float

from eqvid.metrics._protocol import check_value_range
from eqvid.metrics._weights import I3D_WEIGHTS, check_tensors

__all__ = [
    "I3D",
    "Unit3D",
    "bilinear_resize_matrix",
    "i3d_features",
    "i3d_weight_shapes",
    "preprocess_for_i3d",
]

I3D_RESOLUTION = 224
I3D_MIN_FRAMES = 9
NUM_CLASSES = 400
TF_HUB_BATCH_NORM_EPS = 1e-3

# Inception blocks: (name, in_channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels).
_MIXED = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
# Stem units: (name, in, out, kernel, stride).
_STEM = (
    ("Conv3d_1a_7x7", 3, 64, (7, 7, 7), (2, 2, 2)),
    ("Conv3d_2b_1x1", 64, 64, (1, 1, 1), (1, 1, 1)),
    ("Conv3d_2c_3x3", 64, 192, (3, 3, 3), (1, 1, 1)),
)
# Max pools before a block: block name -> (window, stride).
_POOL_BEFORE = {
    "Conv3d_2b_1x1": ((1, 3, 3), (1, 2, 2)),  # MaxPool3d_2a_3x3
    "Mixed_3b": ((1, 3, 3), (1, 2, 2)),  # MaxPool3d_3a_3x3
    "Mixed_4b": ((3, 3, 3), (2, 2, 2)),  # MaxPool3d_4a_3x3
    "Mixed_5b": ((2, 2, 2), (2, 2, 2)),  # MaxPool3d_5a_2x2
}


def _branch_units(in_channels: int, out: tuple[int, ...]):
    # (attribute, in, out, kernel) of the six Unit3Ds of an InceptionModule.
    b0, b1a, b1b, b2a, b2b, b3b = out
    return (
        ("b0", in_channels, b0, (1, 1, 1)),
        ("b1a", in_channels, b1a, (1, 1, 1)),
        ("b1b", b1a, b1b, (3, 3, 3)),
        ("b2a", in_channels, b2a, (1, 1, 1)),
        ("b2b", b2a, b2b, (3, 3, 3)),
        ("b3b", in_channels, b3b, (1, 1, 1)),
    )


def i3d_weight_shapes(num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """The tensors of pytorch-i3d's `InceptionI3d(num_classes)` state dict that the
    network uses — names and PyTorch shapes (conv `(out, in, kt, kh, kw)`); the
    `bn.num_batches_tracked` counters are not needed."""
    shapes: dict[str, tuple[int, ...]] = {}

    def unit(prefix: str, c_in: int, c_out: int, kernel: tuple[int, int, int]) -> None:
        shapes[f"{prefix}.conv3d.weight"] = (c_out, c_in, *kernel)
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{buffer}"] = (c_out,)

    for name, c_in, c_out, kernel, _ in _STEM:
        unit(name, c_in, c_out, kernel)
    for name, c_in, out in _MIXED:
        for attr, u_in, u_out, kernel in _branch_units(c_in, out):
            unit(f"{name}.{attr}", u_in, u_out, kernel)
    shapes["logits.conv3d.weight"] = (num_classes, 1024, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (num_classes,)
    return shapes


def _max_pool_same(
    x: Float[Array, "batch time height width channels"],
    window: tuple[int, int, int],
    stride: tuple[int, int, int],
) -> Float[Array, "batch time2 height2 width2 channels"]:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), "SAME")


class Unit3D(eqx.Module):
    """pytorch-i3d's `Unit3D`: SAME-padded 3-D convolution, inference batch norm folded
    into `weight` and `bias`, optional ReLU. `name` is its PyTorch state-dict prefix."""

    weight: Float[Array, "kt kh kw c_in c_out"]
    bias: Float[Array, " c_out"]
    stride: tuple[int, int, int] = eqx.field(static=True)
    relu: bool = eqx.field(static=True)
    name: str = eqx.field(static=True)

    @classmethod
    def from_torch(
        cls,
        tensors: dict[str, np.ndarray],
        name: str,
        *,
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm_eps: float | None = TF_HUB_BATCH_NORM_EPS,
        relu: bool = True,
    ) -> "Unit3D":
        """Build from PyTorch tensors `{name}.conv3d.weight` and either the batch norm
        `{name}.bn.{weight,bias,running_mean,running_var}` (`batch_norm_eps` given) or
        the conv bias `{name}.conv3d.bias` (`batch_norm_eps=None`)."""
        w = np.asarray(tensors[f"{name}.conv3d.weight"], np.float64).transpose(2, 3, 4, 1, 0)
        if batch_norm_eps is None:
            b = np.asarray(tensors[f"{name}.conv3d.bias"], np.float64)
        else:
            gamma = np.asarray(tensors[f"{name}.bn.weight"], np.float64)
            beta = np.asarray(tensors[f"{name}.bn.bias"], np.float64)
            mean = np.asarray(tensors[f"{name}.bn.running_mean"], np.float64)
            var = np.asarray(tensors[f"{name}.bn.running_var"], np.float64)
            scale = gamma / np.sqrt(var + batch_norm_eps)
            w = w * scale
            b = beta - mean * scale
        return cls(
            weight=jnp.asarray(w, jnp.float32),
            bias=jnp.asarray(b, jnp.float32),
            stride=cast(tuple[int, int, int], tuple(stride)),  # a tuple even if given a list
            relu=relu,
            name=name,
        )

    def __call__(
        self, x: Float[Array, "batch time height width c_in"], precision: str = "highest"
    ) -> Float[Array, "batch time2 height2 width2 c_out"]:
        y = jax.lax.conv_general_dilated(
            x,
            self.weight.astype(x.dtype),
            window_strides=self.stride,
            padding="SAME",  # TensorFlow's rule, as pytorch-i3d's compute_pad
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
            precision=precision,
        )
        y = y + self.bias.astype(y.dtype)[None, None, None, None, :]
        return jax.nn.relu(y) if self.relu else y


class InceptionModule(eqx.Module):
    """pytorch-i3d's `InceptionModule`: four branches (1×1; 1×1→3×3; 1×1→3×3;
    max-pool 3×3×3→1×1) concatenated over channels in that order."""

    b0: Unit3D
    b1a: Unit3D
    b1b: Unit3D
    b2a: Unit3D
    b2b: Unit3D
    b3b: Unit3D

    def __call__(
        self, x: Float[Array, "batch time height width c_in"], precision: str
    ) -> Float[Array, "batch time height width c_out"]:
        b0 = self.b0(x, precision)
        b1 = self.b1b(self.b1a(x, precision), precision)
        b2 = self.b2b(self.b2a(x, precision), precision)
        b3 = self.b3b(_max_pool_same(x, (3, 3, 3), (1, 1, 1)), precision)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(eqx.Module):
    """The Kinetics-400 I3D classifier: videos → 400 logits (the FVD embedding).

    Build it with `I3D.load()`. `I3D(videos)` takes `(batch, time, 224, 224, 3)` in
    [-1, 1] with `time ≥ 9` and returns `(batch, 400)` logits averaged over time.
    Batched and jit-able; use `preprocess_for_i3d` / `i3d_features` for other sizes.
    """

    Conv3d_1a_7x7: Unit3D
    Conv3d_2b_1x1: Unit3D
    Conv3d_2c_3x3: Unit3D
    Mixed_3b: InceptionModule
    Mixed_3c: InceptionModule
    Mixed_4b: InceptionModule
    Mixed_4c: InceptionModule
    Mixed_4d: InceptionModule
    Mixed_4e: InceptionModule
    Mixed_4f: InceptionModule
    Mixed_5b: InceptionModule
    Mixed_5c: InceptionModule
    logits: Unit3D
    precision: str = eqx.field(static=True)

    def __init__(
        self,
        tensors: dict[str, np.ndarray],
        *,
        batch_norm_eps: float = TF_HUB_BATCH_NORM_EPS,
        precision: str = "highest",
    ):
        """**Arguments:**

        - `tensors`: the PyTorch-named tensors of `i3d_weight_shapes()` (as read from an
            eqvid I3D file); shapes are checked.
        - `batch_norm_eps`: 1e-3 as in TF-Hub's original (default); 1e-5 as in the
            PyTorch code of VideoGPT / TATS / MeBT.
        - `precision`: `jax.lax` convolution precision (`"highest"`: float32 accuracy on
            GPU/TPU too; `"default"` is several times faster there).
        """
        check_tensors(
            tensors,
            i3d_weight_shapes(),
            source="`tensors`",
            ignore=lambda k: k.endswith(".bn.num_batches_tracked"),
        )
        for name, _, _, _, stride in _STEM:
            setattr(
                self,
                name,
                Unit3D.from_torch(tensors, name, stride=stride, batch_norm_eps=batch_norm_eps),
            )
        for name, c_in, out in _MIXED:
            units = {
                attr: Unit3D.from_torch(tensors, f"{name}.{attr}", batch_norm_eps=batch_norm_eps)
                for attr, *_ in _branch_units(c_in, out)
            }
            setattr(self, name, InceptionModule(**units))
        self.logits = Unit3D.from_torch(tensors, "logits", batch_norm_eps=None, relu=False)
        self.precision = precision

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        *,
        batch_norm_eps: float = TF_HUB_BATCH_NORM_EPS,
        precision: str = "highest",
    ) -> "I3D":
        """Load the converted Kinetics-400 I3D weights.

        **Arguments:**

        - `path`: an eqvid I3D file; None looks for `i3d_kinetics400.npz` in the default
            folder (`$EQVID_WEIGHTS`, else `$XDG_CACHE_HOME/eqvid`, else `~/.cache/eqvid`).
        - `batch_norm_eps`, `precision`: see `I3D.__init__`.

        **Raises:**

        - `FileNotFoundError` saying which public file to get, the converter command and
            where to put its output, if the file is missing.
        - `ValueError` if the file is not an eqvid I3D file or its tensors are wrong.
        """
        tensors = I3D_WEIGHTS.load(path, i3d_weight_shapes())
        return cls(tensors, batch_norm_eps=batch_norm_eps, precision=precision)

    def __call__(self, videos: Float[Array, "batch time 224 224 3"]) -> Float[Array, "batch 400"]:
        """Logits of `videos` `(batch, time ≥ 9, 224, 224, 3)` in [-1, 1].

        **Raises:**

        - `ValueError` naming `videos` if the shape is not as above.
        """
        if (
            videos.ndim != 5
            or videos.shape[2:] != (I3D_RESOLUTION, I3D_RESOLUTION, 3)
            or videos.shape[1] < I3D_MIN_FRAMES
        ):
            raise ValueError(
                f"I3D: `videos` must be (batch, time >= {I3D_MIN_FRAMES}, {I3D_RESOLUTION}, "
                f"{I3D_RESOLUTION}, 3) in [-1, 1], got videos.shape={videos.shape}; "
                "`preprocess_for_i3d` resizes videos and repeats grey to RGB."
            )
        p = self.precision
        x = self.Conv3d_1a_7x7(videos, p)
        x = _max_pool_same(x, *_POOL_BEFORE["Conv3d_2b_1x1"])
        x = self.Conv3d_2b_1x1(x, p)
        x = self.Conv3d_2c_3x3(x, p)
        for name, _, _ in _MIXED:
            if name in _POOL_BEFORE:
                x = _max_pool_same(x, *_POOL_BEFORE[name])
            x = getattr(self, name)(x, p)
        return self.head(x)

    def head(self, x: Float[Array, "batch time 7 7 1024"]) -> Float[Array, "batch classes"]:
        """The `Logits` endpoint on `Mixed_5c`'s output: AvgPool3d((2, 7, 7), stride 1,
        VALID), dropout (identity at inference), 1×1×1 conv with bias, spatial squeeze,
        mean over time."""
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1), "VALID")
        x = self.logits(x / (2 * 7 * 7), self.precision)  # (batch, time - 1, 1, 1, classes)
        return jnp.mean(x[:, :, 0, 0, :], axis=1)


def bilinear_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """The `(size_out, size_in)` matrix of 1-D bilinear resampling with half-pixel
    centres and no antialiasing: output `o` samples input position
    `max((o + 0.5) * size_in / size_out - 0.5, 0)` (clamped to the last pixel).

    This is `F.interpolate(mode="bilinear", align_corners=False)` and TF2's
    `tf.image.resize(method="bilinear")` along one axis, computed in float64.
    (`jax.image.resize(..., "linear", antialias=False)` implements the same formula but
    places samples in float32, which is off by up to ~4e-5 when downsampling 300 → 224.)
    """
    src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    m = np.zeros((size_out, size_in))
    np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(size_out), hi), frac)
    return m


def preprocess_for_i3d(
    videos: Float[Array, "batch time height width channels"],
) -> Float[Array, "batch time 224 224 3"]:
    """Resize videos in [-1, 1] to 224×224 and repeat grey to RGB, as FVD does.

    Bilinear with half-pixel centres and no antialiasing (`bilinear_resize_matrix`) — as TF2's
    `tf.image.resize(..., "bilinear")` (TECO's FVD) and PyTorch's
    `F.interpolate(mode="bilinear", align_corners=False)` (VideoGPT / TATS / MeBT). Values
    stay in [-1, 1] (resizing commutes with the affine map from uint8).

    **Raises:**

    - `ValueError` naming `videos` if it is not `(batch, time, height, width, 1 or 3)`.
    """
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
        raise ValueError(
            "preprocess_for_i3d: `videos` must be (batch, time, height, width, channels) with "
            f"1 (grey) or 3 (RGB) channels in [-1, 1], got videos.shape={videos.shape}."
        )
    h, w = videos.shape[2:4]
    if (h, w) != (I3D_RESOLUTION, I3D_RESOLUTION):
        rows = jnp.asarray(bilinear_resize_matrix(h, I3D_RESOLUTION), videos.dtype)
        cols = jnp.asarray(bilinear_resize_matrix(w, I3D_RESOLUTION), videos.dtype)
        videos = jnp.einsum(
            "oh,bthwc,pw->btopc", rows, videos, cols, precision=jax.lax.Precision.HIGHEST
        )
    if videos.shape[-1] == 1:
        videos = jnp.repeat(videos, 3, axis=-1)
    return videos


@eqx.filter_jit
def _features_chunk(model: I3D, videos: Array) -> Array:
    return model(preprocess_for_i3d(videos))


def i3d_features(
    model: I3D,
    videos: Float[Array | np.ndarray, "batch time height width channels"],
    *,
    batch_size: int = 16,
) -> Float[Array, "batch 400"]:
    """I3D logits of a video batch, for FVD / KVD: preprocess (`preprocess_for_i3d`) and
    run `model` on `batch_size` videos at a time to bound memory.

    `videos` may be a host (NumPy) array: only one chunk is on the device at a time. The
    last chunk is padded to `batch_size` internally (one compilation) and the padding's
    outputs dropped.

    **Arguments:**

    - `model`: an `I3D`.
    - `videos`: `(batch, time ≥ 9, height, width, 1 or 3)`, floating point in [-1, 1].
    - `batch_size`: videos per forward pass.

    **Returns:**

    `(batch, 400)` float32 logits.

    **Raises:**

    - `ValueError` naming `videos` or `batch_size` if they are not as above (values
      outside [-1, 1], e.g. 0..255 floats, included).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"i3d_features: `batch_size` must be a positive integer, got {batch_size!r}."
        )
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3) or videos.shape[1] < I3D_MIN_FRAMES:
        raise ValueError(
            f"i3d_features: `videos` must be (batch, time >= {I3D_MIN_FRAMES}, height, width, "
            f"1 or 3 channels) in [-1, 1], got videos.shape={videos.shape}."
        )
    if not jnp.issubdtype(videos.dtype, jnp.floating):
        raise ValueError(
            f"i3d_features: `videos` must be floating point in [-1, 1], got dtype "
            f"{videos.dtype} (convert uint8 with `x / 127.5 - 1`)."
        )
    if not isinstance(videos, Tracer):
        check_value_range(videos, value_range="[-1,1]", name="videos")
    n = videos.shape[0]
    outputs = []
    for start in range(0, n, batch_size):
        chunk = videos[start : start + batch_size]
        size = chunk.shape[0]
        if size < batch_size:
            pad = np.zeros((batch_size - size,) + tuple(chunk.shape[1:]), chunk.dtype)
            chunk = jnp.concatenate([jnp.asarray(chunk), jnp.asarray(pad)], axis=0)
        outputs.append(_features_chunk(model, jnp.asarray(chunk, jnp.float32))[:size])
    if not outputs:
        return jnp.zeros((0, NUM_CLASSES), jnp.float32)
    return jnp.concatenate(outputs, axis=0) if len(outputs) > 1 else outputs[0]
