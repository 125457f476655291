"""The taming-transformers VQGAN encoder/decoder (`VQGANEncoder`, `VQGANDecoder`) and
PatchGAN discriminator (`PatchDiscriminator`): parameter counts and `state_dict`
keys of the released f16 configuration, and forwards against NumPy re-computations
written here in PyTorch's NCHW layout, in taming's operation order, from the
parameters converted to taming's `state_dict` keys."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng

from eqvid.nn import Conv2d
from eqvid.nn._patch_discriminator import BatchNorm, PatchDiscriminator
from eqvid.nn._vqgan_codec import (
    SpatialSelfAttention,
    VQGANDecoder,
    VQGANEncoder,
    VQGANResnetBlock,
)

F16: dict[str, Any] = dict(
    ch=128,
    ch_mult=(1, 1, 2, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(16,),
    resolution=256,
    z_channels=256,
)
"""taming's `vqgan_imagenet_f16_1024` / `_16384` autoencoder (`ddconfig`)."""

TINY: dict[str, Any] = dict(
    ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, z_channels=4
)
"""Two levels (16×16 at 32 channels, 8×8 at 64 with attention): every kind of layer."""


def tiny(**changes: Any) -> dict[str, Any]:
    """`TINY` with some settings changed."""
    return {**TINY, **changes}


# ----------------------------------------------------------------------------
# Conversion to taming's state_dict (the map of the modules' docstrings).
# ----------------------------------------------------------------------------


def _key_of(path) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        else:
            raise AssertionError(f"unexpected path entry {entry!r}")
    return ".".join(parts)


def state_dict(module) -> dict[str, np.ndarray]:
    """`{taming key: float64 array in PyTorch layout}` (HWIO kernels → OIHW)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(module)[0]:
        a = np.asarray(leaf, np.float64)
        out[_key_of(path)] = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a
    return out


def key_shapes(abstract_module) -> list[tuple[str, tuple[int, ...]]]:
    """`(taming key, PyTorch shape)` of every parameter of an `eval_shape`d module, in
    flattening order."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_module)[0]:
        shape = tuple(leaf.shape)
        out.append(
            (_key_of(path), (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape)
        )
    return out


# ----------------------------------------------------------------------------
# taming's state_dict shapes, from the constructors of
# taming/modules/diffusionmodules/model.py and discriminator/model.py.
# ----------------------------------------------------------------------------


def _t_conv(name, c_in, c_out, k, bias=True):
    return [(f"{name}.weight", (c_out, c_in, k, k))] + (
        [(f"{name}.bias", (c_out,))] if bias else []
    )


def _t_norm(name, c):
    return [(f"{name}.weight", (c,)), (f"{name}.bias", (c,))]


def _t_resnet(name, c_in, c_out):
    keys = _t_norm(f"{name}.norm1", c_in) + _t_conv(f"{name}.conv1", c_in, c_out, 3)
    keys += _t_norm(f"{name}.norm2", c_out) + _t_conv(f"{name}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        keys += _t_conv(f"{name}.nin_shortcut", c_in, c_out, 1)
    return keys


def _t_attn(name, c):
    return _t_norm(f"{name}.norm", c) + [
        key for part in ("q", "k", "v", "proj_out") for key in _t_conv(f"{name}.{part}", c, c, 1)
    ]


def _t_mid(c):
    return (
        _t_resnet("mid.block_1", c, c) + _t_attn("mid.attn_1", c) + _t_resnet("mid.block_2", c, c)
    )


def taming_encoder_keys(
    in_channels, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels
):
    keys = _t_conv("conv_in", in_channels, ch, 3)
    widths = [ch] + [ch * m for m in ch_mult]
    for i in range(len(ch_mult)):
        blocks, attns = [], []
        c = widths[i]
        for j in range(num_res_blocks):
            blocks += _t_resnet(f"down.{i}.block.{j}", c, widths[i + 1])
            c = widths[i + 1]
            if resolution // 2**i in attn_resolutions:
                attns += _t_attn(f"down.{i}.attn.{j}", c)
        keys += blocks + attns  # ModuleList registration order: block, attn, downsample
        if i < len(ch_mult) - 1:
            keys += _t_conv(f"down.{i}.downsample.conv", c, c, 3)
    c = ch * ch_mult[-1]
    return keys + _t_mid(c) + _t_norm("norm_out", c) + _t_conv("conv_out", c, z_channels, 3)


def taming_decoder_keys(
    out_channels, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels
):
    n = len(ch_mult)
    c_top = ch * ch_mult[-1]
    keys = _t_conv("conv_in", z_channels, c_top, 3) + _t_mid(c_top)
    for i in range(n):  # state_dict order up.0 … up.{n-1}
        c_in = ch * ch_mult[min(i + 1, n - 1)]
        c = ch * ch_mult[i]
        blocks, attns = [], []
        for j in range(num_res_blocks + 1):
            blocks += _t_resnet(f"up.{i}.block.{j}", c_in if j == 0 else c, c)
            if resolution // 2**i in attn_resolutions:
                attns += _t_attn(f"up.{i}.attn.{j}", c)
        keys += blocks + attns
        if i > 0:
            keys += _t_conv(f"up.{i}.upsample.conv", c, c, 3)
    c0 = ch * ch_mult[0]
    return keys + _t_norm("norm_out", c0) + _t_conv("conv_out", c0, out_channels, 3)


def taming_discriminator_keys(input_nc=3, ndf=64, n_layers=3):
    """Trainable parameters of `NLayerDiscriminator` with BatchNorm (running statistics
    and `num_batches_tracked` left out)."""
    keys = _t_conv("main.0", input_nc, ndf, 4)
    idx, c = 2, ndf
    for n in range(1, n_layers + 1):
        c_out = ndf * min(2**n, 8)
        keys += _t_conv(f"main.{idx}", c, c_out, 4, bias=False) + _t_norm(f"main.{idx + 1}", c_out)
        idx, c = idx + 3, c_out
    return keys + _t_conv(f"main.{idx}", c, 1, 4)


def _count(abstract_module) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_module))


def test_f16_parameter_counts_and_state_dict_keys():
    encoder = eqx.filter_eval_shape(
        lambda k: VQGANEncoder(in_channels=3, **F16, key=k), jax.random.key(0)
    )
    decoder = eqx.filter_eval_shape(
        lambda k: VQGANDecoder(out_channels=3, **F16, key=k), jax.random.key(0)
    )
    disc = eqx.filter_eval_shape(lambda k: PatchDiscriminator(key=k), jax.random.key(0))
    # Totals of taming's state_dict (its VQModel: 72,141,699 parameters with 1024 codes,
    # of which these two networks are the bulk).
    assert _count(encoder) == 29_298_176
    assert _count(decoder) == 42_449_795
    # NLayerDiscriminator(3, 64, 3): 3136 + 131,072 + 256 + 524,288 + 512 + 2,097,152 +
    # 1024 + 8193 trainable parameters.
    assert _count(disc) == 2_765_633
    assert (
        _count(
            eqx.filter_eval_shape(
                lambda k: PatchDiscriminator(n_layers=2, key=k), jax.random.key(0)
            )
        )
        == 663_361
    )
    # Every key, shape and the order of taming's state_dict (converter: 1:1).
    assert key_shapes(encoder) == taming_encoder_keys(3, **F16)
    assert key_shapes(decoder) == taming_decoder_keys(3, **F16)
    assert key_shapes(disc) == taming_discriminator_keys()
    assert len(key_shapes(encoder)) + len(key_shapes(decoder)) == 338  # + 5 quantizer/convs = 343
    # Shapes of the forward: 256² frames ↔ 16×16×256 latents; 30×30 patch logits.
    frames = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
    latents = eqx.filter_eval_shape(lambda m, x: m(x), encoder, frames)
    assert latents.shape == (2, 16, 16, 256)
    assert eqx.filter_eval_shape(lambda m, z: m(z), decoder, latents).shape == (2, 256, 256, 3)
    assert eqx.filter_eval_shape(lambda m, x: m(x), disc, frames).shape == (2, 30, 30, 1)
    assert encoder.latent_resolution == decoder.latent_resolution == 16
    assert decoder.conv_out.weight.shape == (3, 3, 128, 3)  # last_layer


# ----------------------------------------------------------------------------
# NumPy re-computations, NCHW, in taming's operation order.
# ----------------------------------------------------------------------------


def t_conv(x, sd, name, stride=1, pad=None):
    """`nn.Conv2d` (cross-correlation) with `sd[name + ".weight"]` OIHW; `pad` an int
    (every side) or ((top, bottom), (left, right)); default `k // 2`."""
    w = sd[f"{name}.weight"]
    k = w.shape[-1]
    pad = k // 2 if pad is None else pad
    if isinstance(pad, int):
        pad = ((pad, pad), (pad, pad))
    xp = np.pad(x, ((0, 0), (0, 0), *pad))
    oh = (xp.shape[2] - k) // stride + 1
    ow = (xp.shape[3] - k) // stride + 1
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for a in range(k):
        for b in range(k):
            window = xp[
                :, :, a : a + stride * (oh - 1) + 1 : stride, b : b + stride * (ow - 1) + 1 : stride
            ]
            y += np.einsum("nchw,oc->nohw", window, w[:, :, a, b])
    if f"{name}.bias" in sd:
        y += sd[f"{name}.bias"][None, :, None, None]
    return y


def t_group_norm(x, sd, name, groups=32, eps=1e-6):
    n, c, h, w = x.shape
    g = x.reshape(n, groups, c // groups, h, w)
    g = (g - g.mean(axis=(2, 3, 4), keepdims=True)) / np.sqrt(
        g.var(axis=(2, 3, 4), keepdims=True) + eps
    )
    return (
        g.reshape(x.shape) * sd[f"{name}.weight"][None, :, None, None]
        + sd[f"{name}.bias"][None, :, None, None]
    )


def swish(x):
    return x / (1.0 + np.exp(-x))


def t_resnet(x, sd, name):
    h = t_conv(swish(t_group_norm(x, sd, f"{name}.norm1")), sd, f"{name}.conv1")
    h = t_conv(swish(t_group_norm(h, sd, f"{name}.norm2")), sd, f"{name}.conv2")
    if x.shape[1] != h.shape[1]:
        x = t_conv(x, sd, f"{name}.nin_shortcut")
    return x + h


def t_attn(x, sd, name):
    h = t_group_norm(x, sd, f"{name}.norm")
    q, k, v = (t_conv(h, sd, f"{name}.{p}") for p in ("q", "k", "v"))
    b, c, hh, ww = q.shape
    q = q.reshape(b, c, hh * ww).transpose(0, 2, 1)  # b, hw, c
    k = k.reshape(b, c, hh * ww)  # b, c, hw
    w_ = (q @ k) * (c**-0.5)
    w_ = np.exp(w_ - w_.max(axis=2, keepdims=True))
    w_ = w_ / w_.sum(axis=2, keepdims=True)  # softmax over keys
    h = v.reshape(b, c, hh * ww) @ w_.transpose(0, 2, 1)
    return x + t_conv(h.reshape(b, c, hh, ww), sd, f"{name}.proj_out")


def t_encoder(x, sd, ch_mult, num_res_blocks, attn_resolutions, resolution, **_):
    h = t_conv(x, sd, "conv_in")
    for i in range(len(ch_mult)):
        for j in range(num_res_blocks):
            h = t_resnet(h, sd, f"down.{i}.block.{j}")
            if resolution // 2**i in attn_resolutions:
                h = t_attn(h, sd, f"down.{i}.attn.{j}")
        if i != len(ch_mult) - 1:  # F.pad(x, (0, 1, 0, 1)): right and bottom
            h = t_conv(h, sd, f"down.{i}.downsample.conv", stride=2, pad=((0, 1), (0, 1)))
    h = t_resnet(h, sd, "mid.block_1")
    h = t_attn(h, sd, "mid.attn_1")
    h = t_resnet(h, sd, "mid.block_2")
    return t_conv(swish(t_group_norm(h, sd, "norm_out")), sd, "conv_out")


def t_decoder(z, sd, ch_mult, num_res_blocks, attn_resolutions, resolution, **_):
    h = t_conv(z, sd, "conv_in")
    h = t_resnet(h, sd, "mid.block_1")
    h = t_attn(h, sd, "mid.attn_1")
    h = t_resnet(h, sd, "mid.block_2")
    for i in reversed(range(len(ch_mult))):
        for j in range(num_res_blocks + 1):
            h = t_resnet(h, sd, f"up.{i}.block.{j}")
            if resolution // 2**i in attn_resolutions:
                h = t_attn(h, sd, f"up.{i}.attn.{j}")
        if i != 0:  # F.interpolate(scale_factor=2, mode="nearest"), then a 3×3 conv
            h = t_conv(h.repeat(2, axis=2).repeat(2, axis=3), sd, f"up.{i}.upsample.conv")
    return t_conv(swish(t_group_norm(h, sd, "norm_out")), sd, "conv_out")


def t_batch_norm(x, sd, name, eps=1e-5):
    """`BatchNorm2d` in training mode: statistics over (N, H, W), biased variance."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * sd[f"{name}.weight"][None, :, None, None] + sd[
        f"{name}.bias"
    ][None, :, None, None]


def leaky(x):
    return np.where(x > 0, x, 0.2 * x)


def t_discriminator(x, sd, n_layers):
    h = leaky(t_conv(x, sd, "main.0", stride=2, pad=1))
    idx = 2
    for n in range(1, n_layers + 1):
        h = t_conv(h, sd, f"main.{idx}", stride=2 if n < n_layers else 1, pad=1)
        h = leaky(t_batch_norm(h, sd, f"main.{idx + 1}"))
        idx += 3
    return t_conv(h, sd, f"main.{idx}", stride=1, pad=1)


def nchw(x):
    return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def nhwc(x):
    return x.transpose(0, 2, 3, 1)


def close(actual, expected, tol=1e-4):
    expected = np.asarray(expected)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol, atol=tol * scale)


def perturb_vectors(module, *seed):
    """Noise on every 1-D parameter (norm scales and biases, convolution biases), so
    that a swapped or ignored one shows."""
    gen = rng(*seed)
    return jax.tree.map(
        lambda a: a + 0.1 * jnp.asarray(gen.normal(size=a.shape), a.dtype) if a.ndim == 1 else a,
        module,
    )


# ----------------------------------------------------------------------------
# Forwards.
# ----------------------------------------------------------------------------


def test_blocks_match_taming_over_leading_axes(getkey):
    block = perturb_vectors(VQGANResnetBlock(32, 64, key=getkey()), "block")
    attn = perturb_vectors(SpatialSelfAttention(64, key=getkey()), "attn")
    assert block.nin_shortcut is not None
    assert VQGANResnetBlock(32, 32, key=getkey()).nin_shortcut is None
    x = rng("blocks").normal(size=(2, 3, 6, 5, 32)).astype(np.float32)
    y = attn(block(jnp.asarray(x)))
    assert y.shape == (2, 3, 6, 5, 64)
    flat = nchw(x.reshape(6, 6, 5, 32))
    sd = {f"b.{k}": v for k, v in state_dict(block).items()} | {
        f"a.{k}": v for k, v in state_dict(attn).items()
    }
    ref = nhwc(t_attn(t_resnet(flat, sd, "b"), sd, "a"))
    close(y.reshape(6, 6, 5, 64), ref)
    # Inputs of variance ~1e-6, where GroupNorm's eps (1e-6) matters.
    tiny_x = 1e-3 * x[0]
    ref = nhwc(t_resnet(nchw(tiny_x), sd, "b"))
    close(block(jnp.asarray(tiny_x)), ref)


def test_resnet_block_dropout_only_with_a_key(getkey):
    block = VQGANResnetBlock(32, 32, dropout=0.5, key=getkey())
    plain = VQGANResnetBlock(32, 32, key=getkey())
    plain = eqx.tree_at(lambda b: (b.conv1, b.conv2), plain, (block.conv1, block.conv2))
    x = jnp.asarray(rng("dropout").normal(size=(2, 4, 4, 32)).astype(np.float32))
    k = getkey()
    np.testing.assert_array_equal(block(x), plain(x))  # no key: evaluation
    np.testing.assert_array_equal(plain(x, key=k), plain(x))  # rate 0
    assert not np.allclose(block(x, key=k), block(x), atol=1e-3)
    np.testing.assert_array_equal(block(x, key=k), block(x, key=k))
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\), got 1.0"):
        VQGANResnetBlock(32, 32, dropout=1.0, key=getkey())


def test_encoder_and_decoder_match_taming(getkey):
    encoder = perturb_vectors(VQGANEncoder(in_channels=3, **TINY, key=getkey()), "enc")
    decoder = perturb_vectors(VQGANDecoder(out_channels=3, **TINY, key=getkey()), "dec")
    # The structure the reference relies on: attention at 8×8 only, up[0] full size.
    assert [len(level.attn) for level in encoder.down] == [0, 1]
    assert [len(level.attn) for level in decoder.up] == [0, 2]
    assert encoder.down[-1].downsample is None and decoder.up[0].upsample is None
    assert decoder.last_layer is decoder.conv_out.weight

    x = rng("frames").uniform(-1, 1, size=(2, 16, 16, 3)).astype(np.float32)
    z = encoder(jnp.asarray(x))
    assert z.shape == (2, 8, 8, 4)
    close(z, nhwc(t_encoder(nchw(x), state_dict(encoder), **TINY)))
    # Any leading axes, and under jit.
    close(
        eqx.filter_jit(encoder)(jnp.asarray(x.reshape(1, 2, 16, 16, 3))).reshape(2, 8, 8, 4),
        z,
        1e-5,
    )

    latents = rng("latents").normal(size=(2, 8, 8, 4)).astype(np.float32)
    y = decoder(jnp.asarray(latents))
    assert y.shape == (2, 16, 16, 3)
    close(y, nhwc(t_decoder(nchw(latents), state_dict(decoder), **TINY)))
    features = decoder.features(jnp.asarray(latents))
    assert features.shape == (2, 16, 16, 32)
    np.testing.assert_array_equal(decoder.conv_out(features), y)


def test_double_z_and_initialisation(getkey):
    encoder = VQGANEncoder(in_channels=3, **TINY, double_z=True, key=getkey())
    assert encoder.conv_out.weight.shape == (3, 3, 64, 8)
    # PyTorch's default Conv2d initialisation, U(±1/√fan_in), weights and biases.
    w = np.asarray(encoder.mid.block_1.conv1.weight)
    bound = 1 / math.sqrt(9 * 64)
    assert np.abs(w).max() <= bound and abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    b = np.asarray(encoder.mid.block_1.conv1.bias)
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.5 * bound
    down = encoder.down[0].downsample
    assert down is not None and down.conv is not None
    assert np.abs(np.asarray(down.conv.weight)).max() <= 1 / math.sqrt(9 * 32)
    norm = encoder.mid.attn_1.norm
    assert norm.groups == 32 and norm.eps == 1e-6
    np.testing.assert_array_equal(norm.weight, 1.0)
    # Channel counts that are not multiples of 32 (taming would reject): gcd(c, 32).
    small = VQGANEncoder(
        in_channels=1,
        ch=8,
        ch_mult=(1, 3),
        num_res_blocks=1,
        attn_resolutions=(),
        resolution=8,
        z_channels=2,
        key=getkey(),
    )
    assert small.down[1].block[0].norm2.groups == 8  # 24 channels
    assert small(jnp.zeros((8, 8, 1))).shape == (4, 4, 2)


def test_patch_discriminator_matches_taming_with_batch_statistics(getkey):
    disc = PatchDiscriminator(in_channels=3, ndf=8, n_layers=2, key=getkey())
    disc = perturb_vectors(disc, "disc")
    assert [type(layer).__name__ for layer in disc.main] == [
        "Conv2d", "LeakyReLU", "Conv2d", "BatchNorm", "LeakyReLU",
        "Conv2d", "BatchNorm", "LeakyReLU", "Conv2d",
    ]  # fmt: skip
    x = rng("disc").uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
    logits = disc(jnp.asarray(x))
    assert logits.shape == (3, 6, 6, 1) and disc.output_size(32) == 6  # 32 → 16 → 8 → 7 → 6
    close(logits, nhwc(t_discriminator(nchw(x), state_dict(disc), 2)))
    # The statistics span the whole batch: another third image changes the first's logits.
    x2 = x.copy()
    x2[2] = rng("other").uniform(-1, 1, size=x[2].shape)
    assert not np.allclose(disc(jnp.asarray(x2))[0], logits[0], atol=1e-4)
    # … over all leading axes at once.
    x6 = rng("six").uniform(-1, 1, size=(2, 3, 32, 32, 3)).astype(np.float32)
    close(
        disc(jnp.asarray(x6)).reshape(6, 6, 6, 1), disc(jnp.asarray(x6.reshape(6, 32, 32, 3))), 1e-5
    )


def test_patch_discriminator_initialisation_and_batch_norm(getkey):
    disc = PatchDiscriminator(key=getkey())  # taming's default (3, 64, 3)
    conv, norm = disc.main[2], disc.main[3]
    assert isinstance(conv, Conv2d) and isinstance(norm, BatchNorm)
    w = np.asarray(conv.weight)
    assert w.shape == (4, 4, 64, 128) and conv.bias is None
    assert abs(w.mean()) < 1e-3 and abs(w.std() - 0.02) < 5e-4  # N(0, 0.02)
    assert abs(float(norm.weight.mean()) - 1) < 0.01 and 0.01 < float(norm.weight.std()) < 0.03
    np.testing.assert_array_equal(norm.bias, 0.0)
    assert norm.eps == 1e-5
    # BatchNorm alone: per-channel mean 0, variance 1 over every leading axis.
    bn = BatchNorm(5)
    x = jnp.asarray(rng("bn").normal(3.0, 2.0, size=(4, 3, 6, 6, 5)).astype(np.float32))
    y = np.asarray(bn(x), np.float64)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2, 3)), 1.0, rtol=1e-4)
    assert bn(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_wrong_frames_latents_and_settings_raise(getkey):
    encoder = VQGANEncoder(in_channels=3, **TINY, key=getkey())
    decoder = VQGANDecoder(out_channels=3, **TINY, key=getkey())
    with pytest.raises(
        ValueError,
        match=r"VQGANEncoder: `x` must be 16×16 frames, got 32×32 .*Resize the frames to 16×16, or build the encoder with resolution=32",
    ):
        encoder(jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"VQGANEncoder: `x` must be 16×16 frames, got 16×8"):
        encoder(jnp.zeros((16, 8, 3)))
    with pytest.raises(
        ValueError,
        match=r"VQGANEncoder: `x` must have shape \(\*batch, 16, 16, 3\) .*got \(2, 16, 16, 1\)",
    ):
        encoder(jnp.zeros((2, 16, 16, 1)))
    with pytest.raises(
        ValueError, match=r"VQGANDecoder: `z` must be 8×8 latents, got 16×16 .*resolution=32"
    ):
        decoder(jnp.zeros((2, 16, 16, 4)))
    with pytest.raises(
        ValueError,
        match=r"VQGANDecoder: `z` must have shape \(\*batch, 8, 8, 4\) .*got \(8, 8, 3\)",
    ):
        decoder(jnp.zeros((8, 8, 3)))
    with pytest.raises(
        ValueError,
        match=r"`resolution` must be a multiple of 2 \*\* \(len\(ch_mult\) - 1\) = 4 .*got 18",
    ):
        VQGANEncoder(in_channels=3, **tiny(ch_mult=(1, 1, 2), resolution=18), key=getkey())
    with pytest.raises(ValueError, match=r"VQGANDecoder: `ch_mult` must be a non-empty sequence"):
        VQGANDecoder(out_channels=3, **tiny(ch_mult=()), key=getkey())
    disc = PatchDiscriminator(in_channels=3, ndf=8, n_layers=3, key=getkey())
    with pytest.raises(
        ValueError, match=r"PatchDiscriminator: `x` must be at least 24×24 .*got 16×16"
    ):
        disc(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(
        ValueError, match=r"PatchDiscriminator: `x` must have shape \(\*batch, height, width, 3\)"
    ):
        disc(jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match=r"`n_layers` must be an int ≥ 0, got -1"):
        PatchDiscriminator(n_layers=-1, key=getkey())
