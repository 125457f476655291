"""SlotSSM's ViT encoder and MAE-style decoder (JindongJiang/SlotSSMs
`src/models/encoder.py` `VitEncoder`, `src/models/decoder.py` `VitDecoder`), on
PyTorch's `nn.TransformerEncoderLayer` (post-LN in the encoder, pre-LN in the
decoder), with MAE's 2D sin-cos positions."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from eqvid.kernels import attention
from eqvid.kernels.attention import AttentionImpl

from ._dense import Dense, torch_linear
from ._embeddings import sinusoidal_positions
from ._norm import LayerNorm
from ._roles import role


def sincos_2d_positions(grid: int, dim: int, *, extra_rows: int = 0) -> Float[Array, "rows {dim}"]:
    """MAE's 2D sin-cos position table for a `grid × grid` patch grid, row-major (patch
    `(i, j)` at row `i·grid + j`): `[sin(j·ω), cos(j·ω), sin(i·ω), cos(i·ω)]` with
    `ω_k = 10000^(-k / (dim/4))` (the column's code first, as MAE's
    `get_2d_sincos_pos_embed`), after `extra_rows` rows of zeros (the CLS token's or
    the slots' positions). `dim` must be a multiple of 4."""
    if dim % 4:
        raise ValueError(f"sincos_2d_positions: `dim` must be a multiple of 4, got {dim}.")
    i, j = jnp.meshgrid(jnp.arange(grid), jnp.arange(grid), indexing="ij")
    table = jnp.concatenate(
        [
            sinusoidal_positions(j.reshape(-1), dim // 2),
            sinusoidal_positions(i.reshape(-1), dim // 2),
        ],
        axis=-1,
    )
    return jnp.concatenate([jnp.zeros((extra_rows, dim), jnp.float32), table])


class TorchTransformerLayer(eqx.Module):
    """PyTorch's `nn.TransformerEncoderLayer` (batch first, no dropout):
    post-LN `x = norm1(x + SA(x)); x = norm2(x + FFN(x))` or, with `norm_first`,
    pre-LN `x = x + SA(norm1(x)); x = x + FFN(norm2(x))`; FFN `linear2(act(linear1))`
    (exact GELU or ReLU); LayerNorm ε 1e-5. Attention as `nn.MultiheadAttention`:
    `in_proj` `(dim, 3·dim)` (q, k, v; Xavier-uniform, zero bias), `out_proj` (zero
    bias), run through `eqvid.kernels.attention`."""

    in_proj: Dense
    out_proj: Dense
    linear1: Dense
    linear2: Dense
    norm1: LayerNorm
    norm2: LayerNorm
    num_heads: int = eqx.field(static=True)
    norm_first: bool = eqx.field(static=True)
    activation: Literal["gelu", "relu"] = eqx.field(static=True)
    impl: AttentionImpl = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        ffn_dim: int | None = None,
        norm_first: bool = False,
        activation: Literal["gelu", "relu"] = "gelu",
        impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        if num_heads < 1 or dim % num_heads:
            raise ValueError(
                f"TorchTransformerLayer: `num_heads` must divide `dim` = {dim}; got {num_heads}."
            )
        ffn_dim = ffn_dim or 4 * dim
        k_in, k_out, k1, k2 = jax.random.split(key, 4)
        bound = float(np.sqrt(6.0 / (dim + 3 * dim)))  # Xavier-uniform of (3·dim, dim)
        in_proj = Dense(dim, 3 * dim, key=k_in)
        self.in_proj = eqx.tree_at(
            lambda d: d.weight,
            in_proj,
            jax.random.uniform(k_in, (dim, 3 * dim), jnp.float32, -bound, bound),
        )
        out_proj = torch_linear(dim, dim, key=k_out)
        self.out_proj = eqx.tree_at(lambda d: d.bias, out_proj, jnp.zeros((dim,), jnp.float32))
        self.linear1 = torch_linear(dim, ffn_dim, key=k1)
        self.linear2 = torch_linear(ffn_dim, dim, key=k2)
        self.norm1, self.norm2 = LayerNorm(dim, eps=1e-5), LayerNorm(dim, eps=1e-5)
        self.num_heads, self.norm_first, self.activation = num_heads, norm_first, activation
        self.impl = impl

    def _attend(self, x):
        n, d = x.shape
        q, k, v = jnp.split(self.in_proj(x).reshape(n, 3, self.num_heads, -1), 3, axis=1)
        out = attention(
            q.transpose(1, 0, 2, 3), k.transpose(1, 0, 2, 3), v.transpose(1, 0, 2, 3),
            impl=self.impl,
        )  # fmt: skip
        return self.out_proj(out.reshape(n, d))

    def _ffn(self, x):
        h = self.linear1(x)
        h = jax.nn.gelu(h, approximate=False) if self.activation == "gelu" else jax.nn.relu(h)
        return self.linear2(h)

    def __call__(self, x: Float[Array, "tokens dim"]) -> Float[Array, "tokens dim"]:
        if self.norm_first:
            x = x + self._attend(self.norm1(x))
            return x + self._ffn(self.norm2(x))
        x = self.norm1(x + self._attend(x))
        return self.norm2(x + self._ffn(x))


def _stack(layer: TorchTransformerLayer, count: int) -> tuple[TorchTransformerLayer, ...]:
    """`count` copies of one layer: `nn.TransformerEncoder` deep-copies its layer, so
    every layer starts with the same weights."""
    return (layer,) * count


def _patchify(image: Float[Array, "height width channels"], patch: int):
    h, w, c = image.shape
    x = image.reshape(h // patch, patch, w // patch, patch, c).transpose(0, 2, 1, 3, 4)
    return x.reshape((h // patch) * (w // patch), patch * patch * c)


class ViTEncoder(eqx.Module):
    """SlotSSM's ViT encoder of one frame: a `patch × patch` stride-`patch` convolution
    (as a dense layer on the flattened patches, channels fastest), a learned CLS token
    (zeros), learned positions initialised to the 2D sin-cos table (zeros for the CLS
    row), post-LN transformer layers (GELU; all starting from the same weights, as the
    original's deep copies) and an output projection; returns the patch tokens (the CLS
    token's output is dropped, as the original does)."""

    patch_embedding: Dense
    cls_token: Float[Array, " dim"]
    position_embeddings: Float[Array, "rows dim"]
    layers: tuple[TorchTransformerLayer, ...]
    output_proj: Dense
    image_size: int = eqx.field(static=True)
    patch: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        image_size: int = 128,
        patch: int = 8,
        channels: int = 3,
        dim: int = 256,
        num_layers: int = 6,
        num_heads: int = 4,
        impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """Defaults: SlotSSM's CLEVRER example (128² frames, 8² patches, width 256, 6
        layers of 4 heads)."""
        if image_size % patch:
            raise ValueError(f"ViTEncoder: `patch` {patch} must divide `image_size` {image_size}.")
        k_patch, k_layer, k_out = jax.random.split(key, 3)
        self.patch_embedding = torch_linear(patch * patch * channels, dim, key=k_patch)
        self.cls_token = jnp.zeros((dim,), jnp.float32)
        self.position_embeddings = sincos_2d_positions(image_size // patch, dim, extra_rows=1)
        layer = TorchTransformerLayer(dim, num_heads, activation="gelu", impl=impl, key=k_layer)
        self.layers = _stack(layer, num_layers)
        self.output_proj = torch_linear(dim, dim, key=k_out)
        self.image_size, self.patch = image_size, patch

    def __call__(self, image: Float[Array, "height width channels"]) -> Float[Array, "patches dim"]:
        """The patch tokens of one frame, row-major over the patch grid."""
        if image.shape[:2] != (self.image_size, self.image_size):
            raise ValueError(
                f"ViTEncoder: `image` must be ({self.image_size}, {self.image_size}, "
                f"channels); got {image.shape}."
            )
        x = self.patch_embedding(_patchify(image, self.patch))
        x = jnp.concatenate([self.cls_token[None].astype(x.dtype), x])
        x = x + self.position_embeddings.astype(x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.output_proj(x)[1:]


class ViTDecoder(eqx.Module):
    """SlotSSM's MAE-style decoder of one frame from its slots: the projected slots
    then one learned mask token (zeros) per patch, plus fixed 2D sin-cos positions
    (zeros for the slots' rows; not trained), pre-LN transformer layers (ReLU; all
    starting from the same weights), then `LayerNorm → Linear` to each patch's pixels
    (channels fastest within a patch), un-patchified. No output activation."""

    input_proj: Dense
    mask_token: Float[Array, " dim"]
    position_embeddings: Float[Array, "rows dim"] = eqx.field(metadata=role(frozen=True))
    layers: tuple[TorchTransformerLayer, ...]
    pred_norm: LayerNorm
    pred: Dense
    image_size: int = eqx.field(static=True)
    patch: int = eqx.field(static=True)
    channels: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        num_slots: int = 6,
        slot_dim: int = 256,
        image_size: int = 128,
        patch: int = 8,
        channels: int = 3,
        dim: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """Defaults: SlotSSM's CLEVRER example (6 slots of 256, 128² frames, 8² patches,
        width 256, 4 layers of 4 heads)."""
        if image_size % patch:
            raise ValueError(f"ViTDecoder: `patch` {patch} must divide `image_size` {image_size}.")
        k_in, k_layer, k_pred = jax.random.split(key, 3)
        self.input_proj = torch_linear(slot_dim, dim, key=k_in)
        self.mask_token = jnp.zeros((dim,), jnp.float32)
        self.position_embeddings = sincos_2d_positions(
            image_size // patch, dim, extra_rows=num_slots
        )
        layer = TorchTransformerLayer(
            dim, num_heads, norm_first=True, activation="relu", impl=impl, key=k_layer
        )
        self.layers = _stack(layer, num_layers)
        self.pred_norm = LayerNorm(dim, eps=1e-5)
        self.pred = torch_linear(dim, patch * patch * channels, key=k_pred)
        self.image_size, self.patch, self.channels = image_size, patch, channels

    def __call__(
        self, slots: Float[Array, "slots slot_dim"]
    ) -> Float[Array, "height width channels"]:
        """One frame from its slots."""
        k = self.position_embeddings.shape[0] - (self.image_size // self.patch) ** 2
        if slots.shape[0] != k:
            raise ValueError(f"ViTDecoder: `slots` must be ({k}, slot_dim); got {slots.shape}.")
        g = self.image_size // self.patch
        x = self.input_proj(slots)
        masks = jnp.broadcast_to(self.mask_token.astype(x.dtype), (g * g, x.shape[-1]))
        x = jnp.concatenate([x, masks]) + jax.lax.stop_gradient(self.position_embeddings)
        for layer in self.layers:
            x = layer(x)
        patches = self.pred(self.pred_norm(x[k:]))
        p, c = self.patch, self.channels
        return patches.reshape(g, g, p, p, c).transpose(0, 2, 1, 3, 4).reshape(g * p, g * p, c)
