"""The TATS / MeBT 3-D VQGAN codec (`eqvid/nn/_vqgan3d_codec.py`): parameter counts of
the released configuration, the replicate-padded convolutions against NumPy references
written from PyTorch's definitions (with PyTorch-layout weights, converted as the
module docstring says), the norms, a residual block, the encoder and decoder shapes,
the 3-D patch discriminator, and bad input."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng
from jaxtyping import TypeCheckError

import eqvid  # noqa: F401  (installs the jaxtyping import hook before the import below)
from eqvid.nn._roles import parameter_roles
from eqvid.nn._vqgan3d_codec import (
    BatchNorm3d,
    Conv3d,
    PatchDiscriminator3D,
    ResBlock3d,
    SamePadConv3d,
    SamePadConvTranspose3d,
    VQGAN3DDecoder,
    VQGAN3DEncoder,
    level_strides,
    record_batch_statistics,
    same_padding,
)

# ----------------------------------------------------------------------------
# NumPy references (float64, PyTorch weight layouts).
# ----------------------------------------------------------------------------

NP_MODE: dict[str, Any] = {
    "replicate": "edge",
    "constant": "constant",
    "reflect": "reflect",
    "circular": "wrap",
}


def np_pad(x, pads, mode):
    """Pad the (t, h, w) axes of `(n, t, h, w, c)` as PyTorch's `F.pad(mode)`."""
    return np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)), mode=NP_MODE[mode])


def np_conv3d_torch(x, w_pt, b, stride):
    """PyTorch's unpadded `conv3d` on channels-last `(n, t, h, w, c_in)` with an
    `(out, in, kT, kH, kW)` weight: `y[o] = b[o] + Σ w[o, i, a, b, c] x[i, t·s + a, …]`."""
    _, _, kt, kh, kw = w_pt.shape
    st, sh, sw = stride
    n, t, h, wd, _ = x.shape
    ot, oh, ow = (t - kt) // st + 1, (h - kh) // sh + 1, (wd - kw) // sw + 1
    y = np.zeros((n, ot, oh, ow, w_pt.shape[0]))
    for i in range(ot):
        for j in range(oh):
            for k in range(ow):
                patch = x[:, i * st : i * st + kt, j * sh : j * sh + kh, k * sw : k * sw + kw]
                y[:, i, j, k] = np.einsum("nabci,oiabc->no", patch, w_pt)
    return y + b


def tats_pads(kernel, stride):
    """TATS's `pad_input`, per axis `(p // 2 + p % 2, p // 2)` with `p = k - s`."""
    return [((k - s) // 2 + (k - s) % 2, (k - s) // 2) for k, s in zip(kernel, stride)]


def np_conv_transpose3d_torch(x, w_pt, b, stride, padding):
    """PyTorch's `conv_transpose3d` with an `(in, out, kT, kH, kW)` weight, by its
    scatter definition: input cell `(t, h, w)` adds `x[t, h, w] @ w[:, :, a, b, c]` at
    `(t·s + a, …)`; the canvas is then cropped by `padding` on both sides."""
    _, c_out, kt, kh, kw = w_pt.shape
    st, sh, sw = stride
    n, t, h, wd, _ = x.shape
    canvas = np.zeros((n, (t - 1) * st + kt, (h - 1) * sh + kh, (wd - 1) * sw + kw, c_out))
    for i in range(t):
        for j in range(h):
            for k in range(wd):
                canvas[:, i * st : i * st + kt, j * sh : j * sh + kh, k * sw : k * sw + kw] += (
                    np.einsum("ni,ioabc->nabco", x[:, i, j, k], w_pt)
                )
    pt, ph, pw = padding
    out = canvas[:, pt : canvas.shape[1] - pt, ph : canvas.shape[2] - ph, pw : canvas.shape[3] - pw]
    return out + b


def np_group_norm(x, weight, bias, groups, eps=1e-6):
    n, t, h, w, c = x.shape
    g = x.reshape(n, t, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 3, 5), keepdims=True)
    var = g.var(axis=(1, 2, 3, 5), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * weight + bias


def np_silu(x):
    return x / (1 + np.exp(-x))


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol
    )


def f32(a):
    return jnp.asarray(np.asarray(a, np.float32))


def count_parameters(tree):
    """Elements of every array leaf except BatchNorm's running statistics (buffers in
    PyTorch, not parameters); works on `eqx.filter_eval_shape` output."""
    total = buffers = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        size = math.prod(leaf.shape)
        if getattr(path[-1], "name", None) in ("running_mean", "running_var"):
            buffers += size
        else:
            total += size
    return total, buffers


# ----------------------------------------------------------------------------
# Parameter counts of the released configuration (shapes only, no arrays).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(("norm_type", "gen_buffers"), [("batch", 6400), ("group", 0)])
def test_parameter_counts_of_the_released_config(norm_type, gen_buffers):
    """TATS's README command (n_hiddens 32, downsample 4 8 8, embedding_dim 256,
    norm_type batch, disc_channels 64, disc_layers 3): counts from the PyTorch shapes."""
    key = jax.random.key(0)

    def build(cls, **kw):
        return eqx.filter_eval_shape(lambda k: cls(**kw, key=k), key)

    enc = build(VQGAN3DEncoder, n_hiddens=32, downsample=(4, 8, 8), norm_type=norm_type)
    dec = build(VQGAN3DDecoder, n_hiddens=32, upsample=(4, 8, 8), norm_type=norm_type)
    pre = eqx.filter_eval_shape(lambda k: SamePadConv3d(256, 256, 1, key=k), key)
    disc = eqx.filter_eval_shape(lambda k: PatchDiscriminator3D(3, 64, 3, key=k), key)
    (n_enc, b_enc), (n_dec, b_dec) = count_parameters(enc), count_parameters(dec)
    assert n_enc == 7_403_648
    assert n_dec == 16_116_995
    assert count_parameters(pre) == (65_792, 0)  # pre_vq_conv; post_vq_conv alike
    assert n_enc + n_dec + 2 * 65_792 == 23_652_227
    assert b_enc + b_dec == gen_buffers  # 20 BatchNorms: running mean + var
    assert count_parameters(disc) == (11_057_857, 2 * (128 + 256 + 512))
    assert enc.out_channels == dec.in_channels == 256


# ----------------------------------------------------------------------------
# Padding rule and level strides.
# ----------------------------------------------------------------------------


def test_same_padding_puts_the_odd_cell_first():
    assert same_padding((3, 4, 4), (1, 2, 1)) == ((1, 1), (1, 1), (2, 1))
    assert same_padding((1, 1, 1), (1, 1, 1)) == ((0, 0),) * 3
    assert same_padding((5, 4, 3), (2, 3, 3)) == ((2, 1), (1, 0), (0, 0))
    for k, s in [(3, 1), (4, 1), (4, 2), (5, 2), (4, 3)]:
        assert same_padding((k, k, k), (s, s, s))[0] == tuple(tats_pads((k,), (s,))[0])


def test_level_strides_stride_time_in_the_first_levels():
    assert level_strides((4, 8, 8)) == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert level_strides((1, 4, 2)) == [(1, 2, 2), (1, 2, 1)]
    assert level_strides(4) == [(2, 2, 2), (2, 2, 2)]


# ----------------------------------------------------------------------------
# Convolutions against PyTorch's definitions.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "padding_type"),
    [
        (3, 1, "replicate"),
        (4, 2, "replicate"),
        (4, (1, 2, 2), "replicate"),
        (4, 1, "replicate"),
        ((3, 4, 2), (1, 2, 1), "constant"),
        (3, (2, 1, 1), "reflect"),
        (4, (2, 1, 2), "circular"),
        (1, 1, "replicate"),
    ],
)
def test_same_pad_conv3d_matches_pytorch_definition(kernel, stride, padding_type, getkey):
    g = rng("samepad", kernel, stride, padding_type)
    layer = SamePadConv3d(4, 5, kernel, stride, padding_type=padding_type, key=getkey())
    k3 = layer.weight.shape[:3]
    s3 = (stride,) * 3 if isinstance(stride, int) else stride
    w_pt = g.normal(size=(5, 4, *k3)) / 6  # PyTorch layout (out, in, kT, kH, kW)
    b = g.normal(size=(5,))
    layer = eqx.tree_at(
        lambda m: (m.weight, m.bias), layer, (f32(w_pt.transpose(2, 3, 4, 1, 0)), f32(b))
    )
    x = g.normal(size=(2, 3, 4, 8, 6, 4)).astype(np.float32)  # two leading axes
    y = layer(jnp.asarray(x))
    flat = x.reshape(6, 4, 8, 6, 4)
    ref = np_conv3d_torch(np_pad(flat, tats_pads(k3, s3), padding_type), w_pt, b, s3)
    assert y.shape == (2, 3, *(n // s for n, s in zip((4, 8, 6), s3)), 5)
    close(y.reshape(ref.shape), ref)


@pytest.mark.parametrize("stride", [2, 1, (1, 2, 2), (2, 1, 2)])
def test_same_pad_conv_transpose3d_matches_pytorch_definition(stride, getkey):
    g = rng("samepad_t", stride)
    layer = SamePadConvTranspose3d(3, 5, 4, stride, key=getkey())
    s3 = (stride,) * 3 if isinstance(stride, int) else stride
    w_pt = g.normal(size=(3, 5, 4, 4, 4)) / 6  # PyTorch layout (in, out, kT, kH, kW)
    b = g.normal(size=(5,))
    layer = eqx.tree_at(
        lambda m: (m.weight, m.bias), layer, (f32(w_pt.transpose(2, 3, 4, 0, 1)), f32(b))
    )
    x = g.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
    y = layer(jnp.asarray(x))
    padded = np_pad(x, tats_pads((4, 4, 4), s3), "replicate")
    ref = np_conv_transpose3d_torch(padded, w_pt, b, s3, (3, 3, 3))
    assert y.shape == ref.shape == (2, 3 * s3[0], 4 * s3[1], 5 * s3[2], 5)
    close(y, ref)


def test_conv3d_zero_padding_matches_pytorch_definition(getkey):
    g = rng("conv3d")
    layer = Conv3d(3, 4, 4, 2, 2, key=getkey())
    w_pt = g.normal(size=(4, 3, 4, 4, 4)) / 6
    b = g.normal(size=(4,))
    layer = eqx.tree_at(
        lambda m: (m.weight, m.bias), layer, (f32(w_pt.transpose(2, 3, 4, 1, 0)), f32(b))
    )
    x = g.normal(size=(2, 5, 6, 7, 3)).astype(np.float32)
    y = layer(jnp.asarray(x))
    ref = np_conv3d_torch(np_pad(x, [(2, 2)] * 3, "constant"), w_pt, b, (2, 2, 2))
    assert y.shape == (2, 3, 4, 4, 4)  # ⌊n/2⌋ + 1
    close(y, ref)


def test_pytorch_default_initialisation_bounds(getkey):
    conv = SamePadConv3d(4, 6, 3, key=getkey())
    convt = SamePadConvTranspose3d(4, 6, 4, 2, key=getkey())
    for w, b, fan_in in [
        (conv.weight, conv.bias, 4 * 27),
        (convt.weight, convt.bias, 6 * 64),  # PyTorch: fan-in from the (in, out, …) axis 1
    ]:
        bound = 1 / math.sqrt(fan_in)
        assert b is not None
        assert float(jnp.max(jnp.abs(w))) <= bound
        assert float(jnp.max(jnp.abs(w))) > 0.9 * bound
        assert float(jnp.max(jnp.abs(b))) <= bound


# ----------------------------------------------------------------------------
# Norms and the residual block.
# ----------------------------------------------------------------------------


def test_batchnorm3d_running_and_batch_statistics():
    g = rng("bn")
    norm = BatchNorm3d(3)
    w, b, rm, rv = g.normal(size=3), g.normal(size=3), g.normal(size=3), g.uniform(0.5, 2, 3)
    norm = eqx.tree_at(
        lambda m: (m.weight, m.bias, m.running_mean, m.running_var),
        norm,
        (f32(w), f32(b), f32(rm), f32(rv)),
    )
    x = (g.normal(size=(2, 3, 4, 5, 3)) * 3 + 1).astype(np.float32)
    close(norm(jnp.asarray(x)), (x - rm) / np.sqrt(rv + 1e-5) * w + b)
    mean, var = x.mean(axis=(0, 1, 2, 3)), x.var(axis=(0, 1, 2, 3))
    close(norm(jnp.asarray(x), training=True), (x - mean) / np.sqrt(var + 1e-5) * w + b, 1e-4)
    # The running statistics take no gradient and are frozen for training.
    grads = jax.grad(lambda m: jnp.sum(m(jnp.asarray(x)) ** 2))(norm)
    assert float(jnp.abs(grads.running_mean).sum()) == 0.0
    roles = parameter_roles(norm)
    assert roles.running_var.frozen and not roles.weight.frozen


def test_record_batch_statistics_collects_training_calls_only():
    """Inside `record_batch_statistics`, each `training=True` call of a `BatchNorm3d`
    leaves (the layer, batch mean, biased variance, size); running-statistics calls
    and calls outside the block leave nothing, and nested blocks collect innermost."""
    x = jnp.asarray((rng("bn-record").normal(size=(2, 3, 4, 5, 3)) * 2 + 1).astype(np.float32))
    a, b = BatchNorm3d(3), BatchNorm3d(3)
    with record_batch_statistics() as outer:
        a(x, training=True)
        a(x)  # running statistics: not recorded
        with record_batch_statistics() as inner:
            b(x, training=True)
    b(x, training=True)  # outside: not recorded
    assert [r.norm for r in outer] == [a] and [r.norm for r in inner] == [b]
    r = outer[0]
    assert r.size == 2 * 3 * 4 * 5
    close(r.mean, np.asarray(x).mean(axis=(0, 1, 2, 3)), 1e-5)
    close(r.var, np.asarray(x).var(axis=(0, 1, 2, 3)), 1e-4)


@pytest.mark.parametrize(("norm_type", "c_in", "c_out"), [("group", 8, 8), ("batch", 4, 6)])
def test_resblock3d_matches_numpy(norm_type, c_in, c_out, getkey):
    g = rng("resblock", norm_type, c_in, c_out)
    block = ResBlock3d(c_in, c_out, norm_type=norm_type, norm_groups=4, key=getkey())
    assert (block.conv_shortcut is None) == (c_in == c_out)
    norms = [(g.normal(size=c), g.normal(size=c), g.normal(size=c), g.uniform(0.5, 2, c))
             for c in (c_in, c_out)]  # fmt: skip
    block = eqx.tree_at(
        lambda m: (m.norm1.weight, m.norm1.bias, m.norm2.weight, m.norm2.bias),
        block,
        tuple(f32(a) for n in norms for a in n[:2]),
    )
    if norm_type == "batch":
        block = eqx.tree_at(
            lambda m: (m.norm1.running_mean, m.norm1.running_var),  # pyright: ignore
            block,
            (f32(norms[0][2]), f32(norms[0][3])),
        )
        block = eqx.tree_at(
            lambda m: (m.norm2.running_mean, m.norm2.running_var),  # pyright: ignore
            block,
            (f32(norms[1][2]), f32(norms[1][3])),
        )

    def np_norm(x, i):
        w, b, rm, rv = norms[i]
        if norm_type == "group":
            return np_group_norm(x, w, b, 4)
        return (x - rm) / np.sqrt(rv + 1e-5) * w + b

    def np_conv(conv, x):
        w_pt = np.asarray(conv.weight, np.float64).transpose(4, 3, 0, 1, 2)
        return np_conv3d_torch(
            np_pad(x, [(1, 1)] * 3, "replicate"), w_pt, np.asarray(conv.bias), (1, 1, 1)
        )

    x = g.normal(size=(2, 3, 5, 4, c_in))
    h = np_conv(block.conv1, np_silu(np_norm(x, 0)))
    h = np_conv(block.conv2, np_silu(np_norm(h, 1)))
    skip = x if block.conv_shortcut is None else np_conv(block.conv_shortcut, x)
    close(block(f32(x)), skip + h, 1e-4)


# ----------------------------------------------------------------------------
# Encoder, decoder, discriminator.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", ["group", "batch"])
def test_tiny_encoder_decoder_shapes_and_channels(norm_type, getkey):
    kw = dict(n_hiddens=8, norm_type=norm_type, norm_groups=4)
    enc = VQGAN3DEncoder(downsample=(2, 4, 4), **kw, key=getkey())  # pyright: ignore
    dec = VQGAN3DDecoder(upsample=(2, 4, 4), **kw, key=getkey())  # pyright: ignore
    assert [b.down.stride for b in enc.conv_blocks] == [(2, 2, 2), (1, 2, 2)]
    assert [b.down.weight.shape for b in enc.conv_blocks] == [(4, 4, 4, 8, 16), (4, 4, 4, 16, 32)]
    assert [b.up.weight.shape[3:] for b in dec.conv_blocks] == [(32, 32), (32, 16)]
    assert dec.conv_last.weight.shape == (3, 3, 3, 16, 3)  # last stage: 2 · n_hiddens
    x = jnp.asarray(rng("codec").uniform(-0.5, 0.5, size=(2, 8, 16, 16, 3)), jnp.float32)

    @eqx.filter_jit
    def run(enc, dec, x):
        z = enc(x)
        y_train = dec(enc(x, training=True), training=True)
        return z, dec(z), y_train, enc(x[0])

    z, y, y_train, z_single = run(enc, dec, x)
    assert z.shape == (2, 4, 4, 4, 32)
    assert bool(jnp.all(z >= -0.2785))  # ends in SiLU (minimum ≈ -0.2785)
    assert y.shape == y_train.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(y_train)))
    close(z_single, z[0], 1e-4 if norm_type == "group" else 1e-5)  # no batch axis


def test_patch_discriminator3d_layers_features_and_batch_statistics(getkey):
    disc = PatchDiscriminator3D(3, 4, 3, key=getkey())
    assert [(lay.conv.stride, lay.conv.weight.shape[3:]) for lay in disc.layers] == [
        ((2, 2, 2), (3, 4)),
        ((2, 2, 2), (4, 8)),
        ((2, 2, 2), (8, 16)),
        ((1, 1, 1), (16, 32)),
        ((1, 1, 1), (32, 1)),
    ]
    assert [lay.norm is not None for lay in disc.layers] == [False, True, True, True, False]
    x = jnp.asarray(rng("disc").normal(size=(2, 8, 12, 10, 3)), jnp.float32)
    logits, feats = disc(x)
    # Per axis ⌊n/2⌋ + 1 three times, then n + 1 twice: 8 → 5 → 3 → 2 → 3 → 4.
    assert [f.shape[1:4] for f in feats] == [(5, 7, 6), (3, 4, 4), (2, 3, 3), (3, 4, 4), (4, 5, 5)]
    assert logits.shape == (2, 4, 5, 5, 1) and feats[-1] is logits
    # Layer 1 in training mode: batch statistics over (batch, time, height, width).
    pre = np.asarray(disc.layers[1].conv(feats[0]), np.float64)
    mean, var = pre.mean(axis=(0, 1, 2, 3)), pre.var(axis=(0, 1, 2, 3))
    normed = (pre - mean) / np.sqrt(var + 1e-5)
    close(feats[1], np.where(normed > 0, normed, 0.2 * normed), 1e-4)
    # Inference mode uses the running statistics (initially 0 and 1).
    _, feats_eval = disc(x, training=False)
    pre_eval = pre / np.sqrt(1 + 1e-5)
    close(feats_eval[1], np.where(pre_eval > 0, pre_eval, 0.2 * pre_eval), 1e-4)


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


def test_encoder_rejects_sizes_not_divisible_by_the_downsampling(getkey):
    enc = VQGAN3DEncoder(n_hiddens=4, downsample=(2, 4, 4), norm_groups=4, key=getkey())
    with pytest.raises(
        ValueError, match=r"divisible by the downsampling \(2, 4, 4\), got \(3, 16, 16\)"
    ):
        enc(jnp.zeros((1, 3, 16, 16, 3)))
    with pytest.raises(
        ValueError, match=r"divisible by the downsampling \(2, 4, 4\), got \(4, 16, 6\)"
    ):
        enc(jnp.zeros((4, 16, 6, 3)))
    with pytest.raises(
        ValueError, match=r"\(\*batch, time, height, width, 3\).*got \(1, 4, 8, 8, 1\)"
    ):
        enc(jnp.zeros((1, 4, 8, 8, 1)))


def test_bad_arguments_name_what_was_expected(getkey):
    dec = VQGAN3DDecoder(n_hiddens=4, upsample=(1, 2, 2), norm_groups=4, key=getkey())
    with pytest.raises(ValueError, match=r"VQGAN3DDecoder: .*, 8\).*got \(1, 2, 2, 2, 4\)"):
        dec(jnp.zeros((1, 2, 2, 2, 4)))
    with pytest.raises(ValueError, match=r"powers of two.*got \(3, 4, 4\)"):
        VQGAN3DEncoder(n_hiddens=4, downsample=(3, 4, 4), key=getkey())
    with pytest.raises(ValueError, match=r"powers of two.*got \(1, 1, 1\)"):
        VQGAN3DDecoder(n_hiddens=4, upsample=(1, 1, 1), key=getkey())
    with pytest.raises(
        ValueError, match=r"`stride` must be at most kernel_size=\(3, 3, 3\).*got \(1, 4, 1\)"
    ):
        SamePadConv3d(2, 2, 3, (1, 4, 1), key=getkey())
    # A bad literal is caught by the run-time type check, else by the layer.
    with pytest.raises((ValueError, TypeCheckError), match=r"padding_type.*'zeros'"):
        SamePadConv3d(2, 2, 3, padding_type="zeros", key=getkey())  # pyright: ignore
    with pytest.raises((ValueError, TypeCheckError), match=r"norm_type.*'layer'"):
        ResBlock3d(8, norm_type="layer", key=getkey())  # pyright: ignore
    with pytest.raises(ValueError, match=r"`groups` must divide channels=8, got 32"):
        ResBlock3d(8, key=getkey())
    with pytest.raises(ValueError, match=r"`disc_layers` must be an int ≥ 1, got 0"):
        PatchDiscriminator3D(3, 4, 0, key=getkey())
