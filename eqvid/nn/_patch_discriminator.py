"""The PatchGAN discriminator of pix2pix, as taming-transformers' VQGAN uses it
(`NLayerDiscriminator` of `taming/modules/discriminator/model.py`), channels last.

`PatchDiscriminator.main` mirrors taming's `nn.Sequential` `main` index for index,
so a converter maps `main[i].…` to the key `main.{i}.…` (prefix
`loss.discriminator.` in a VQGAN checkpoint), for the default `n_layers = 3`:

| eqvid leaf | PyTorch key | shape (PyTorch) | conversion |
|---|---|---|---|
| `main[0].weight`, `main[0].bias` | `main.0.weight`, `main.0.bias` | `[ndf, in, 4, 4]`, `[ndf]` | HWIO ← OIHW: `w.permute(2, 3, 1, 0)` |
| `main[1]` (LeakyReLU 0.2) | — | — | no parameters |
| `main[3k - 1].weight`, k = 1 … n_layers | `main.{3k-1}.weight` (no bias) | `[out, in, 4, 4]` | as above |
| `main[3k].weight`, `main[3k].bias` (`BatchNorm`) | `main.{3k}.weight`, `main.{3k}.bias` | `[out]` | as is |
| `main[3k + 1]` (LeakyReLU 0.2) | — | — | no parameters |
| `main[3·n_layers + 2].weight`, `.bias` | `main.{3n+2}.weight`, `.bias` | `[1, ndf·min(2ⁿ, 8), 4, 4]`, `[1]` | as above |

PyTorch's `main.{3k}.running_mean`, `running_var` and `num_batches_tracked` have no
counterpart, see `BatchNorm`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._conv import Conv2d
from ._shapes import check_channels


class BatchNorm(eqx.Module):
    """Batch normalisation with the statistics of the batch it is given (PyTorch's
    `BatchNorm2d` in training mode): per channel, the mean and the biased variance
    over every axis but the last (all leading batch axes, height and width), then a
    learned scale and bias. Statistics are computed in float32.

    There are no running statistics. Taming trains its discriminator, and the
    generator against it, in training mode only (batch statistics); the running
    averages PyTorch keeps are read only in `validation_step`'s eval mode, for the
    logged `val/disc_loss`, `val/logits_*` and `val/g_loss` (whose weight there is
    0), never for training or for encoding and decoding. So a checkpoint's
    `running_mean`, `running_var` and `num_batches_tracked` are not needed.

    The statistics span the whole array passed in: call it on a full batch, not
    under `jax.vmap` (which would normalise each example on its own), and on real and
    reconstructed frames separately, as taming does (`D(x)` and `D(x̂)` are two
    calls). Under `jit` on a sharded batch the mean is over the global batch
    (taming's multi-GPU runs normalise per device, with plain `BatchNorm2d`).
    """

    weight: Float[Array, " channels"]
    bias: Float[Array, " channels"]
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, *, eps: float = 1e-5, key: PRNGKeyArray | None = None):
        """**Arguments:**

        - `channels`: channels of the input.
        - `eps`: added to the variance (PyTorch's default, `1e-5`).
        - `key`: with a key the scale starts at `N(1, 0.02)` (taming's
          `weights_init`); without one at 1. The bias starts at 0.
        """
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"BatchNorm: `channels` must be an int ≥ 1, got {channels!r}.")
        self.weight = (
            jnp.ones((channels,), jnp.float32)
            if key is None
            else 1.0 + 0.02 * jax.random.normal(key, (channels,), jnp.float32)
        )
        self.bias = jnp.zeros((channels,), jnp.float32)
        self.eps = eps

    def __call__(self, x: Float[Array, "*batch channels"]) -> Float[Array, "*batch channels"]:
        """**Arguments:**

        - `x`: `(*batch, channels)`, e.g. `(*batch, height, width, channels)`; the
          statistics are taken over all of `*batch`.

        **Returns:** the normalised `x`, of its shape and dtype.
        """
        check_channels("BatchNorm", x, self.weight.shape[0])
        axes = tuple(range(x.ndim - 1))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * jnp.broadcast_to(self.weight, y.shape) + jnp.broadcast_to(self.bias, y.shape)
        return y.astype(x.dtype)


class LeakyReLU(eqx.Module):
    """`max(x, slope · x)`, as a layer of `PatchDiscriminator.main` (no parameters)."""

    negative_slope: float = eqx.field(static=True, default=0.2)

    def __call__(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """**Returns:** `x` where positive, `negative_slope · x` elsewhere."""
        return jax.nn.leaky_relu(x, self.negative_slope)


def _gan_conv(c_in: int, c_out: int, stride: int, use_bias: bool, key: PRNGKeyArray) -> Conv2d:
    """A `4 × 4` convolution with padding 1 and taming's `weights_init`: weight
    `N(0, 0.02)`; the bias (if any) keeps PyTorch's default `U(±1/√fan_in)`."""
    kw, kb = jax.random.split(key)
    # `Conv2d`'s own initialisation is only traced for the structure, not run.
    conv = eqx.filter_eval_shape(
        Conv2d, c_in, c_out, 4, stride=stride, padding=1, use_bias=use_bias, key=key
    )
    weight = 0.02 * jax.random.normal(kw, conv.weight.shape, jnp.float32)
    conv = eqx.tree_at(lambda c: c.weight, conv, weight)
    if conv.bias is not None:
        bound = (16 * c_in) ** -0.5
        bias = jax.random.uniform(kb, conv.bias.shape, jnp.float32, -bound, bound)
        conv = eqx.tree_at(lambda c: c.bias, conv, bias)
    return conv


class PatchDiscriminator(eqx.Module):
    """The pix2pix PatchGAN discriminator (taming's `NLayerDiscriminator` with
    BatchNorm): a map of real/fake logits, one per overlapping image patch.

    ```
    Conv 4×4 /2 (bias) → LeakyReLU(0.2)
    n_layers - 1 × [Conv 4×4 /2 (no bias) → BatchNorm → LeakyReLU(0.2)]
    Conv 4×4 /1 (no bias) → BatchNorm → LeakyReLU(0.2)
    Conv 4×4 /1 (bias) → 1 channel (logits, no sigmoid)
    ```

    Every convolution pads 1 pixel on each side; layer `n` has `ndf · min(2ⁿ, 8)`
    channels. A `256 × 256` input gives `30 × 30` logits with `n_layers = 3` (`62 ×
    62` with 2). Initialisation is taming's `weights_init`: convolution weights
    `N(0, 0.02)`, BatchNorm scales `N(1, 0.02)` and biases 0 (the two biased
    convolutions keep PyTorch's default `U(±1/√fan_in)` bias).

    BatchNorm uses the statistics of the batch it is given (see `BatchNorm`), so an
    image's logits depend on the other images of the call. The field `main` is
    taming's `main` index for index (module docstring).
    """

    main: tuple[Conv2d | BatchNorm | LeakyReLU, ...]

    def __init__(
        self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, *, key: PRNGKeyArray
    ):
        """**Arguments:**

        - `in_channels`: channels of the images (taming's `input_nc`).
        - `ndf`: channels of the first convolution.
        - `n_layers`: stride-2 convolutions (the first included); the receptive field
          grows with it (70 × 70 pixels for 3).
        - `key`: a `jax.random` key for the parameters.
        """
        for name, value, minimum in (
            ("in_channels", in_channels, 1),
            ("ndf", ndf, 1),
            ("n_layers", n_layers, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"PatchDiscriminator: `{name}` must be an int ≥ {minimum}, got {value!r}."
                )
        keys = iter(jax.random.split(key, 2 * n_layers + 2))
        layers: list[Conv2d | BatchNorm | LeakyReLU] = [
            _gan_conv(in_channels, ndf, 2, True, next(keys)),
            LeakyReLU(0.2),
        ]
        c_in = ndf
        for n in range(1, n_layers + 1):
            c_out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                _gan_conv(c_in, c_out, stride, False, next(keys)),
                BatchNorm(c_out, key=next(keys)),
                LeakyReLU(0.2),
            ]
            c_in = c_out
        layers.append(_gan_conv(c_in, 1, 1, True, next(keys)))
        self.main = tuple(layers)

    def output_size(self, size: int) -> int:
        """Height (or width) of the logit map for an input of height (width) `size`:
        each stride-2 layer maps `n` to `⌊n / 2⌋`, each stride-1 layer to `n - 1`."""
        for layer in self.main:
            if isinstance(layer, Conv2d):
                size = size // 2 if layer.stride == 2 else size - 1
        return size

    def __call__(
        self, x: Float[Array, "*batch height width channels"]
    ) -> Float[Array, "*batch out_height out_width 1"]:
        """**Arguments:**

        - `x`: images `(*batch, height, width, in_channels)` (taming feeds `[-1, 1]`
          pixels). BatchNorm normalises over all of `*batch`.

        **Returns:** logits `(*batch, h', w', 1)`, `h' = output_size(height)`.
        """
        first = self.main[0]
        assert isinstance(first, Conv2d)
        check_channels("PatchDiscriminator", x, first.weight.shape[2], image=True)
        h, w = x.shape[-3], x.shape[-2]
        if self.output_size(h) < 1 or self.output_size(w) < 1:
            minimum = next(s for s in range(1, 1 << 16) if self.output_size(s) >= 1)
            raise ValueError(
                f"PatchDiscriminator: `x` must be at least {minimum}×{minimum} for this "
                f"discriminator's {len(self.main) // 3 - 1} layers (no logits otherwise), got "
                f"{h}×{w} (shape {tuple(x.shape)})."
            )
        for layer in self.main:
            x = layer(x)
        return x
