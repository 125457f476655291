"""SlotSSM's encoders and decoders: MAE's 2D sin-cos table, PyTorch's transformer
layer (post- and pre-LN) and transposed convolution restated in NumPy, the ViT
encoder's patch order against the original's strided convolution, the parameter counts
of the CLEVRER example, the decoder's frozen positions, and the spatial broadcast
decoder's alpha masks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.nn import (
    SpatialBroadcastDecoder,
    TorchConvTranspose2d,
    TorchTransformerLayer,
    ViTDecoder,
    ViTEncoder,
    parameter_roles,
    sincos_2d_positions,
)


def _size(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree) if hasattr(x, "size"))


def test_sincos_table_is_maes():
    grid, dim = 4, 16

    def one_d(e, pos):  # MAE's get_1d_sincos_pos_embed_from_grid, float64 ω
        omega = 1.0 / 10000 ** (np.arange(e // 2, dtype=np.float64) / (e / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    want = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    want = np.concatenate([np.zeros((2, dim)), want])
    np.testing.assert_allclose(sincos_2d_positions(grid, dim, extra_rows=2), want, atol=1e-6)


def _ln(x):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


@pytest.mark.parametrize("norm_first,activation", [(False, "gelu"), (True, "relu")])
def test_transformer_layer_is_pytorchs(norm_first, activation):
    from scipy.special import erf

    layer = TorchTransformerLayer(
        8, 2, ffn_dim=12, norm_first=norm_first, activation=activation, impl="xla",
        key=jax.random.key(0),
    )  # fmt: skip
    x = np.asarray(jax.random.normal(jax.random.key(1), (5, 8)), np.float64)

    def lin(d, v):
        return v @ np.asarray(d.weight) + np.asarray(d.bias)

    def sa(v):
        q, k, w = np.split(lin(layer.in_proj, v), 3, axis=-1)  # in_proj rows: q, k, v
        heads = []
        for h in range(2):
            s = slice(4 * h, 4 * h + 4)
            a = q[:, s] @ k[:, s].T / 2.0
            a = np.exp(a - a.max(-1, keepdims=True))
            heads.append((a / a.sum(-1, keepdims=True)) @ w[:, s])
        return lin(layer.out_proj, np.concatenate(heads, -1))

    def ffn(v):
        h = lin(layer.linear1, v)
        h = 0.5 * h * (1 + erf(h / np.sqrt(2))) if activation == "gelu" else np.maximum(h, 0)
        return lin(layer.linear2, h)

    if norm_first:
        y = x + sa(_ln(x))
        y = y + ffn(_ln(y))
    else:
        y = _ln(x + sa(x))
        y = _ln(y + ffn(y))
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), y, rtol=1e-4, atol=1e-5)


def test_vit_encoder_patches_as_the_originals_strided_convolution():
    enc = ViTEncoder(image_size=16, patch=4, channels=3, dim=8, num_layers=1, num_heads=2,
                     impl="xla", key=jax.random.key(2))  # fmt: skip
    image = jax.random.normal(jax.random.key(3), (16, 16, 3))
    from eqvid.nn._vit import _patchify

    # The original: Conv2d(3, dim, 4, stride 4), weight (out, in, kh, kw); eqvid's dense
    # weight row (ph·P + pw)·C + c holds weight[:, c, ph, pw].
    w = np.asarray(enc.patch_embedding.weight).reshape(4, 4, 3, 8)  # (kh, kw, in, out)
    conv = (
        jax.lax.conv_general_dilated(
            image[None], jnp.asarray(w), (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )[0]
        + jnp.asarray(enc.patch_embedding.bias)[None, None]
    )
    got = enc.patch_embedding(_patchify(image, 4))
    np.testing.assert_allclose(got, conv.reshape(16, 8), rtol=1e-5, atol=1e-5)  # row-major
    assert enc(image).shape == (16, 8)


def test_clevrer_sizes_and_the_decoders_frozen_positions():
    enc = eqx.filter_eval_shape(lambda: ViTEncoder(key=jax.random.key(0)))
    dec = eqx.filter_eval_shape(lambda: ViTDecoder(key=jax.random.key(0)))
    assert _size(enc) == 4_919_808 and _size(dec) == 3_342_016
    real = ViTDecoder(num_slots=2, slot_dim=8, image_size=8, patch=4, channels=3, dim=8,
                      num_layers=2, num_heads=2, impl="xla", key=jax.random.key(4))  # fmt: skip
    roles = parameter_roles(real)
    assert roles.position_embeddings.frozen and not roles.mask_token.frozen
    # The original deep-copies its layer: every layer starts from the same weights.
    np.testing.assert_array_equal(real.layers[0].linear1.weight, real.layers[1].linear1.weight)
    frame = real(jax.random.normal(jax.random.key(5), (2, 8)))
    assert frame.shape == (8, 8, 3)
    # Patch (0, 1)'s pixels come from the second mask token's prediction, channels fastest.
    g = eqx.filter_grad(lambda m: m(jnp.ones((2, 8)))[0, 4, 1])(real)
    assert np.flatnonzero(np.asarray(g.pred.bias)).tolist() == [1]


@pytest.mark.parametrize(
    "k, s, p, op",
    [(5, 2, 2, 1), (4, 2, 1, 0), (3, 2, 0, 1), (5, 3, 1, 2), (2, 2, 0, 1), (3, 1, 1, 0)],
)
def test_transposed_convolution_is_pytorchs(k, s, p, op):
    """Restated from PyTorch's definition (every input pixel scatters its kernel at
    stride `s`, `p` cropped from each side, `op` added at the end), float64; the
    strided ones run in the polyphase form, their gradients too."""
    conv = TorchConvTranspose2d(
        2, 3, k, stride=s, padding=p, output_padding=op, key=jax.random.key(6)
    )
    n, n2 = 3, 2  # height, width
    x = np.asarray(jax.random.normal(jax.random.key(7), (n, n2, 2)), np.float64)
    w = np.asarray(conv.weight)  # (k, k, in, out)
    size, size2 = ((a - 1) * s - 2 * p + k + op for a in (n, n2))
    full = np.zeros((size + 2 * p + k, size2 + 2 * p + k, 3))
    for i in range(n):
        for j in range(n2):
            full[i * s : i * s + k, j * s : j * s + k] += np.einsum("c,abco->abo", x[i, j], w)
    want = full[p : p + size, p : p + size2] + np.asarray(conv.bias)
    got = conv(jnp.asarray(x, jnp.float32))
    assert got.shape == (size, size2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The gradient of a weighted sum of the output is the input's correlation with it.
    g = np.asarray(jax.random.normal(jax.random.key(8), (size, size2, 3)), np.float64)
    grad = jax.grad(lambda m: jnp.sum(m(jnp.asarray(x, jnp.float32)) * g))(conv)
    gfull = np.zeros_like(full)
    gfull[p : p + size, p : p + size2] = g
    want_w = sum(
        np.einsum("c,abo->abco", x[i, j], gfull[i * s : i * s + k, j * s : j * s + k])
        for i in range(n)
        for j in range(n2)
    )
    np.testing.assert_allclose(grad.weight, want_w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("resolution", [32, 64])
def test_spatial_broadcast_masks_split_each_pixel_between_the_slots(resolution):
    dec = SpatialBroadcastDecoder(8, channels=3, hidden=6, initial_size=4,
                                  output_resolution=resolution, key=jax.random.key(8))  # fmt: skip
    slots = jax.random.normal(jax.random.key(9), (3, 8))
    frame, masks = dec(slots)
    assert frame.shape == (resolution, resolution, 3) and masks.shape == (3, resolution, resolution)
    np.testing.assert_allclose(masks.sum(0), 1.0, rtol=1e-5)
    colours = jax.vmap(dec._one)(slots)[..., :3]
    np.testing.assert_allclose(frame, (colours * masks[..., None]).sum(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="output_resolution"):
        SpatialBroadcastDecoder(8, initial_size=4, output_resolution=48, key=jax.random.key(0))
