"""`eqvid.nn`'s generic layers: Dense, strided and transposed convolutions, up- and
downsampling, activations, embeddings and the transformer block, against NumPy
references written out here; their declared parameter roles; and bad input."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng
from jaxtyping import TypeCheckError

import eqvid
import eqvid.nn as nn
from eqvid import AttentionMask

# ----------------------------------------------------------------------------
# NumPy references.
# ----------------------------------------------------------------------------


def np_conv2d(x, w, stride, pad):
    """Cross-correlation of `(n, h, w, c_in)` with HWIO `w`; `pad` = ((top, bottom),
    (left, right)) zeros."""
    k = w.shape[0]
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
    oh = (x.shape[1] - k) // stride + 1
    ow = (x.shape[2] - k) // stride + 1
    y = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k]
            y[:, i, j] = np.einsum("nabc,abco->no", patch, w)
    return y


def same_padding(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return (total // 2, total - total // 2)


def np_conv_transpose2d(x, w, stride, crop, out_size):
    """Scatter-add definition: input pixel `(i, j)` adds `x[i, j] @ w[a, b]` at `(i·s + a,
    j·s + b)` of a padded canvas, which is then cropped by `crop = (top, left)` to
    `out_size`."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    canvas = np.zeros(
        (n, (h - 1) * stride + k + stride, (wd - 1) * stride + k + stride, w.shape[-1])
    )
    for i in range(h):
        for j in range(wd):
            canvas[:, i * stride : i * stride + k, j * stride : j * stride + k] += np.einsum(
                "nc,abco->nabo", np.asarray(x[:, i, j], np.float64), w
            )
    t, left = crop
    return canvas[:, t : t + out_size[0], left : left + out_size[1]]


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol
    )


# ----------------------------------------------------------------------------
# Dense.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("lead", [(), (3,), (2, 5)])
def test_dense_matches_numpy_over_leading_axes(lead, getkey):
    layer = nn.Dense(6, 4, key=getkey())
    layer = eqx.tree_at(lambda m: m.bias, layer, jax.random.normal(getkey(), (4,)))
    x = rng("dense", lead).normal(size=(*lead, 6)).astype(np.float32)
    y = layer(jnp.asarray(x))
    assert y.shape == (*lead, 4)
    close(y, x @ np.asarray(layer.weight) + np.asarray(layer.bias))
    assert layer.weight.shape == (6, 4)
    no_bias = nn.Dense(6, 4, use_bias=False, key=getkey())
    assert no_bias.bias is None
    close(no_bias(jnp.asarray(x)), x @ np.asarray(no_bias.weight))


def test_dense_initialisation_and_bad_input(getkey):
    layer = nn.Dense(400, 300, key=getkey())
    assert np.all(np.asarray(layer.bias) == 0)
    std = float(jnp.std(layer.weight))
    assert abs(std - 1 / math.sqrt(400)) < 0.05 / math.sqrt(400), std  # LeCun normal
    assert float(jnp.max(jnp.abs(layer.weight))) <= 2 / math.sqrt(400) / 0.8796 + 1e-6  # truncated
    with pytest.raises(
        ValueError, match=r"Dense: `x` must have shape \(\*batch, 400\), got \(2, 3\)"
    ):
        layer(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`out_features` must be ≥ 1, got 0"):
        nn.Dense(3, 0, key=getkey())


# ----------------------------------------------------------------------------
# Convolutions.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel, stride, padding, size",
    [
        (3, 1, "SAME", (7, 6)),
        (1, 1, "SAME", (5, 5)),
        (3, 2, "SAME", (8, 8)),
        (3, 2, "SAME", (7, 9)),
        (4, 2, "SAME", (8, 6)),
        (3, 2, "VALID", (9, 8)),
        (4, 4, "VALID", (8, 12)),
        (4, 2, 1, (8, 8)),
        (3, 3, 2, (7, 5)),
        (1, 2, "VALID", (6, 6)),
    ],
)
def test_conv2d_with_stride_and_padding_matches_numpy(kernel, stride, padding, size, getkey):
    conv = nn.Conv2d(3, 5, kernel, stride=stride, padding=padding, key=getkey())
    conv = eqx.tree_at(lambda m: m.bias, conv, jax.random.normal(getkey(), (5,)))
    x = rng("conv", kernel, stride, padding, size).normal(size=(2, 2, *size, 3)).astype(np.float32)
    y = conv(jnp.asarray(x))
    if padding == "SAME":
        pad = (same_padding(size[0], kernel, stride), same_padding(size[1], kernel, stride))
    elif padding == "VALID":
        pad = ((0, 0), (0, 0))
    else:
        pad = ((padding, padding), (padding, padding))
    w = np.asarray(conv.weight, np.float64)
    want = np_conv2d(x.reshape(4, *size, 3), w, stride, pad) + np.asarray(conv.bias)
    assert y.shape == (2, 2) + want.shape[1:]
    close(y.reshape(want.shape), want, 1e-4)


def test_conv2d_defaults_are_unchanged(getkey):
    """The defaults (SAME, stride 1) keep the parameters and outputs of the layer the
    models were built with: same weight for the same key, same-size output."""
    key = getkey()
    conv = nn.Conv2d(4, 6, 3, key=key)
    assert conv.stride == 1 and conv.padding == "SAME"
    assert conv.weight.shape == (3, 3, 4, 6) and conv.bias is not None
    np.testing.assert_array_equal(
        conv.weight, jax.nn.initializers.lecun_normal()(key, (3, 3, 4, 6), jnp.float32)
    )
    params = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(conv)]
    assert params == [".weight", ".bias"]
    x = jax.random.normal(getkey(), (5, 9, 4))
    close(conv(x), np_conv2d(x[None], np.asarray(conv.weight), 1, ((1, 1), (1, 1)))[0], 1e-4)
    with pytest.raises(ValueError, match=r"`kernel_size` must be a positive odd integer"):
        nn.Conv2d(4, 6, 2, key=key)
    nn.Conv2d(4, 6, 2, stride=2, key=key)  # even kernels are fine when strided
    with pytest.raises(ValueError, match=r"`stride` must be an int ≥ 1, got 0"):
        nn.Conv2d(4, 6, 3, stride=0, key=key)
    with pytest.raises((ValueError, TypeCheckError), match=r"padding"):
        nn.Conv2d(4, 6, 3, padding="FULL", key=key)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"`x` must have shape \(\*batch, height, width, 4\)"):
        conv(jnp.zeros((5, 9, 3)))


def test_conv2d_nhwc_stride_matches_lax(getkey):
    x = jax.random.normal(getkey(), (2, 3, 10, 10, 4))
    k = jax.random.normal(getkey(), (3, 3, 4, 2))
    got = nn.conv2d_nhwc(x, k, stride=2, padding=1)
    want = jax.lax.conv_general_dilated(
        x.reshape(6, 10, 10, 4),
        k,
        (2, 2),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    close(got, want.reshape(2, 3, 5, 5, 2))


@pytest.mark.parametrize(
    "kernel, stride, padding, size",
    [
        (4, 4, "VALID", (2, 3)),  # un-patchify (fast path)
        (2, 2, 0, (3, 3)),  # un-patchify, padding given as 0
        (4, 2, 1, (4, 5)),  # DCGAN-style 2x upsampling
        (3, 2, "SAME", (4, 4)),
        (4, 2, "SAME", (3, 5)),
        (1, 2, "SAME", (3, 2)),
        (3, 2, "VALID", (3, 4)),
        (3, 1, 1, (5, 4)),
    ],
)
def test_conv_transpose_matches_numpy_and_is_the_adjoint_of_conv(
    kernel, stride, padding, size, getkey
):
    convt = nn.ConvTranspose2d(3, 2, kernel, stride, padding=padding, key=getkey())
    x = rng("convt", kernel, stride, padding).normal(size=(2, *size, 3)).astype(np.float32)
    y = convt(jnp.asarray(x))
    w = np.asarray(convt.weight, np.float64)
    # Output size and crop of the scatter-add canvas.
    if padding == "SAME":
        out = (size[0] * stride, size[1] * stride)
        crops = [same_padding(n, kernel, stride)[0] for n in out]
    else:
        p = 0 if padding == "VALID" else padding
        out = tuple((n - 1) * stride - 2 * p + kernel for n in size)
        crops = [p, p]
    assert y.shape == (2, *out, 2)
    close(y, np_conv_transpose2d(x, w, stride, crops, out), 1e-4)

    # Adjoint: <Conv(z), x> = <z, ConvT(x)> with the conv's weight W.swapaxes(2, 3).
    conv = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding, use_bias=False, key=getkey())
    conv = eqx.tree_at(lambda m: m.weight, conv, convt.weight.swapaxes(2, 3))
    convt0 = eqx.tree_at(lambda m: m.bias, convt, None, is_leaf=lambda v: v is None)
    z = jax.random.normal(getkey(), (2, *out, 2))
    assert conv(z).shape == x.shape
    lhs = jnp.vdot(conv(z), jnp.asarray(x))
    rhs = jnp.vdot(z, convt0(jnp.asarray(x)))
    np.testing.assert_allclose(float(lhs), float(rhs), rtol=1e-4)
    # ... and ConvT is that conv's vector-Jacobian product.
    _, vjp = jax.vjp(conv, z)
    close(vjp(jnp.asarray(x))[0], convt0(jnp.asarray(x)), 1e-4)


def test_conv_transpose_leading_axes_bias_and_errors(getkey):
    convt = nn.ConvTranspose2d(4, 3, 2, 2, key=getkey())
    convt = eqx.tree_at(lambda m: m.bias, convt, jnp.arange(3.0))
    x = jax.random.normal(getkey(), (2, 3, 4, 5, 4))
    y = convt(x)
    assert y.shape == (2, 3, 8, 10, 3)
    close(y[1, 2], convt(x[1, 2]))
    # Every input pixel becomes its own 2x2 patch: out[2i + a, 2j + b] = x[i, j] @ W[a, b] + b.
    close(y[0, 0, 3, 4], x[0, 0, 1, 2] @ convt.weight[1, 0] + jnp.arange(3.0))
    with pytest.raises(ValueError, match=r"`x` must have shape \(\*batch, height, width, 4\)"):
        convt(jnp.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match=r"integer `padding` must be ≤ kernel_size - 1 = 1, got 2"):
        nn.ConvTranspose2d(4, 3, 2, 2, padding=2, key=getkey())


# ----------------------------------------------------------------------------
# Up- and downsampling.
# ----------------------------------------------------------------------------


def test_downsample_is_ddpm_pad_then_strided_conv(getkey):
    down = nn.Downsample(3, 5, key=getkey())
    x = jax.random.normal(getkey(), (2, 8, 6, 3))
    y = down(x)
    assert y.shape == (2, 4, 3, 5)
    # DDPM / taming VQGAN: F.pad(x, (0, 1, 0, 1)) then an unpadded stride-2 3x3 conv.
    padded = np.pad(np.asarray(x), ((0, 0), (0, 1), (0, 1), (0, 0)))
    want = np_conv2d(padded, np.asarray(down.conv.weight), 2, ((0, 0), (0, 0)))  # pyright: ignore[reportOptionalMemberAccess]
    close(y, want, 1e-4)
    pool = nn.Downsample(3, with_conv=False)
    assert pool.conv is None
    close(pool(x), np.asarray(x).reshape(2, 4, 2, 3, 2, 3).mean(axis=(2, 4)))
    assert nn.avg_pool_2x is not None and pool(x).shape == (2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"avg_pool_2x: `x` must have even height and width"):
        pool(jnp.zeros((7, 6, 3)))
    with pytest.raises(ValueError, match=r"Downsample: `key` is required"):
        nn.Downsample(3)
    with pytest.raises(ValueError, match=r"`out_channels` must equal `channels` = 3, got 4"):
        nn.Downsample(3, 4, with_conv=False)


def test_upsample_is_nearest_then_conv(getkey):
    up = nn.Upsample(3, 4, key=getkey())
    x = jax.random.normal(getkey(), (5, 3, 3))
    y = up(x)
    assert y.shape == (10, 6, 4)
    nearest = np.asarray(x).repeat(2, axis=0).repeat(2, axis=1)
    want = np_conv2d(nearest[None], np.asarray(up.conv.weight), 1, ((1, 1), (1, 1)))[0]  # pyright: ignore[reportOptionalMemberAccess]
    close(y, want, 1e-4)
    close(nn.Upsample(3, with_conv=False)(x), nearest)
    # The ResNet codec still finds the pooling functions where it always did.
    from eqvid.nn import _resnet

    assert _resnet.avg_pool_2x is nn.avg_pool_2x
    assert _resnet.upsample_nearest_2x is nn.upsample_nearest_2x


def test_space_to_depth_folds_pixel_blocks_and_depth_to_space_undoes_it(getkey):
    x = jax.random.normal(getkey(), (2, 3, 8, 12, 5))
    y = nn.space_to_depth(x, 4)
    assert y.shape == (2, 3, 2, 3, 80)
    # Channel (r * 4 + c) * 5 + k of block (i, j) is pixel (4 i + r, 4 j + c), channel k.
    close(y[1, 2, 1, 2, (3 * 4 + 1) * 5 + 4], x[1, 2, 4 + 3, 8 + 1, 4])
    close(nn.depth_to_space(y, 4), x)
    assert nn.space_to_depth(x, 1) is x and nn.depth_to_space(x, 1) is x
    with pytest.raises(ValueError, match=r"space_to_depth: height and width .* `patch` = 5"):
        nn.space_to_depth(x, 5)
    with pytest.raises(ValueError, match=r"depth_to_space: the channels of `x` .* patch² = 4"):
        nn.depth_to_space(x, 2)


def test_resnet_codec_with_pixel_patches(getkey):
    k_enc, k_dec = getkey(), getkey()
    enc = nn.ResNetEncoder(3, (8, 16), patch=4, key=k_enc)
    dec = nn.ResNetDecoder(16, (8, 16), 3, patch=4, key=k_dec)
    x = jax.random.normal(getkey(), (5, 32, 32, 3))
    z = enc(x)
    assert z.shape == (5, 4, 4, 16) and enc.stem.weight.shape[2] == 48
    assert dec(z).shape == (5, 32, 32, 3) and dec.head.weight.shape[-1] == 48
    # The patched encoder is the plain one on space_to_depth(x); the decoder unfolds.
    plain_enc = nn.ResNetEncoder(48, (8, 16), key=k_enc)  # the same weights
    plain_dec = nn.ResNetDecoder(16, (8, 16), 48, key=k_dec)
    close(z, plain_enc(nn.space_to_depth(x, 4)), 1e-5)
    close(dec(z), nn.depth_to_space(plain_dec(z), 4), 1e-5)
    with pytest.raises(ValueError, match=r"ResNetEncoder: `x` must have shape .*3\)"):
        enc(jnp.zeros((32, 32, 48)))
    with pytest.raises(ValueError, match=r"ResNetDecoder: `patch` must be an int >= 1, got 0"):
        nn.ResNetDecoder(16, (8, 16), 3, patch=0, key=getkey())


def test_resnet_decoder_skip_takes_the_encoders_first_stage(getkey):
    enc = nn.ResNetEncoder(1, (8, 16), patch=4, key=getkey())
    dec = nn.ResNetDecoder(16, (8, 16), 1, patch=4, skip_channels=8, key=getkey())
    x = jax.random.normal(getkey(), (2, 32, 32, 1))
    z, first = enc.with_first_stage(x)
    assert first.shape == (2, 8, 8, 8) and jnp.array_equal(z, enc(x))
    out = dec(z, first)
    assert out.shape == (2, 32, 32, 1)
    assert not jnp.allclose(out, dec(z, first + 1.0))  # the skip reaches the output
    with pytest.raises(ValueError, match=r"skip_channels=8, so `skip` must be given; got None"):
        dec(z)
    with pytest.raises(
        ValueError, match=r"`skip` must have shape \(2, 8, 8, 8\) .* got \(2, 4, 4, 8\)"
    ):
        dec(z, first[:, :4, :4])
    plain = nn.ResNetDecoder(16, (8, 16), 1, patch=4, key=getkey())
    with pytest.raises(ValueError, match=r"skip_channels=0, so `skip` must be None"):
        plain(z, first)
    with pytest.raises(ValueError, match=r"`skip_channels` must be an int >= 0, got -1"):
        nn.ResNetDecoder(16, (8, 16), 1, skip_channels=-1, key=getkey())


def test_frame_predictors_take_a_pixel_patch(getkey):
    config = eqvid.ConvS5Config(
        frame_size=32, pixel_patch=4, encoder_depths=(8, 16), d_model=8, ssm_size=8, n_layers=1
    )
    assert config.latent_size == 4
    model = eqvid.ConvS5VideoModel(config, key=getkey())
    video = jax.random.uniform(getkey(), (6, 32, 32, 1), minval=-1, maxval=1)
    assert model(video).shape == (5, 32, 32, 1)
    assert eqvid.rollout(model, video[None, :3], 2, key=getkey()).shape == (1, 2, 32, 32, 1)
    transformer = eqvid.TransformerConfig(
        frame_size=32, pixel_patch=2, encoder_depths=(8, 16), patch_size=2, width=16, n_heads=2
    )
    assert transformer.latent_size == 8
    with pytest.raises(ValueError, match=r"pixel_patch \* 2\*\*\(len\(encoder_depths\)-1\) = 12"):
        eqvid.ConvLSTMConfig(frame_size=32, pixel_patch=3, encoder_depths=(8, 16, 32))
    with pytest.raises(ValueError, match=r"`pixel_patch` must be an int ≥ 1, got 0"):
        eqvid.ConvS5Config(pixel_patch=0)


# ----------------------------------------------------------------------------
# Activations.
# ----------------------------------------------------------------------------


def test_activations_match_their_formulas():
    x = np.linspace(-4, 4, 101)
    xj = jnp.asarray(x, jnp.float32)
    erf = np.vectorize(math.erf)
    exact = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    sigmoid = x / (1 + np.exp(-1.702 * x))
    close(nn.gelu(xj), exact)
    close(nn.gelu(xj, approximate=True), tanh)
    close(nn.gelu_sigmoid(xj), sigmoid)
    assert not np.allclose(exact, sigmoid, atol=1e-3)  # the variants really differ
    for name, want in [
        ("gelu", exact),
        ("gelu_tanh", tanh),
        ("gelu_sigmoid", sigmoid),
        ("relu", np.maximum(x, 0)),
        ("silu", x / (1 + np.exp(-x))),
    ]:
        close(nn.activation(name)(xj), want)
    with pytest.raises((ValueError, TypeCheckError), match=r"swish"):
        nn.activation("swish")  # pyright: ignore[reportArgumentType]


# ----------------------------------------------------------------------------
# Embeddings.
# ----------------------------------------------------------------------------


def test_sinusoidal_positions_sines_then_cosines():
    pos = np.array([0, 1, 5, 17])
    got = nn.sinusoidal_positions(jnp.asarray(pos), 8)
    freqs = 10000.0 ** (-np.arange(0, 8, 2) / 8)
    want = np.concatenate([np.sin(pos[:, None] * freqs), np.cos(pos[:, None] * freqs)], -1)
    close(got, want)
    grid = nn.sinusoidal_positions(jnp.asarray(pos).reshape(2, 2), 8)
    assert grid.shape == (2, 2, 8)
    close(grid.reshape(4, 8), want)
    with pytest.raises(ValueError, match=r"`dim` must be even and ≥ 2, got 7"):
        nn.sinusoidal_positions(jnp.arange(3), 7)


def ddpm_get_timestep_embedding(timesteps, embedding_dim):
    """DDPM's `get_timestep_embedding` (Ho et al., diffusion_utils), in NumPy."""
    half_dim = embedding_dim // 2
    emb = math.log(10000) / (half_dim - 1)
    emb = np.exp(np.arange(half_dim, dtype=np.float64) * -emb)
    emb = np.asarray(timesteps, np.float64)[:, None] * emb[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1)
    if embedding_dim % 2 == 1:
        emb = np.pad(emb, [[0, 0], [0, 1]])
    return emb


@pytest.mark.parametrize("dim", [4, 9, 32, 33])
def test_timestep_embedding_is_ddpms(dim):
    t = np.array([0, 1, 7, 250, 999])
    got = nn.timestep_embedding(jnp.asarray(t, jnp.int32), dim)
    assert got.shape == (5, dim) and got.dtype == jnp.float32
    close(got, ddpm_get_timestep_embedding(t, dim), 2e-4)
    sigmas = np.array([[0.01, 0.5], [3.0, 50.0]])  # continuous times, leading axes
    got = nn.timestep_embedding(jnp.asarray(sigmas, jnp.float32), dim)
    assert got.shape == (2, 2, dim)
    close(got.reshape(4, dim), ddpm_get_timestep_embedding(sigmas.reshape(-1), dim), 1e-5)
    assert not np.allclose(
        np.asarray(nn.timestep_embedding(jnp.arange(5), 32)),
        np.asarray(nn.sinusoidal_positions(jnp.arange(5), 32)),
    )  # different frequencies from the transformer positions


def test_timestep_embedding_rejects_tiny_dims():
    with pytest.raises(ValueError, match=r"`dim` must be ≥ 4, got 3"):
        nn.timestep_embedding(jnp.arange(2), 3)


def test_embedding_lookup_attend_and_errors(getkey):
    emb = nn.Embedding(10, 4, key=getkey())
    ids = np.array([[0, 3], [9, 3]])
    got = emb(jnp.asarray(ids))
    assert got.shape == (2, 2, 4)
    close(got, np.asarray(emb.weight)[ids])
    close(emb(7), emb.weight[7])
    x = jax.random.normal(getkey(), (3, 4))
    close(emb.attend(x), np.asarray(x) @ np.asarray(emb.weight).T)
    for bad, shown in [
        (10, "10 to 10"),
        (np.array([2, -1]), "-1 to 2"),
        (jnp.array([[0, 12]]), "0 to 12"),
    ]:
        with pytest.raises(
            ValueError, match=rf"`ids` must lie in \[0, 10\), got values from {shown}"
        ):
            emb(bad)
    # Traced ids cannot be checked: out-of-range ones give NaN rows, never another row.
    traced = eqx.filter_jit(lambda e, i: e(i))(emb, jnp.array([-1, 10, 2]))
    assert np.all(np.isnan(np.asarray(traced[:2])))
    close(traced[2], emb.weight[2])
    with pytest.raises(
        ValueError, match=r"attend: `x` must have shape \(\*batch, 4\), got \(3, 5\)"
    ):
        emb.attend(jnp.zeros((3, 5)))
    small = nn.Embedding(3, 1000, init_std=0.02, key=getkey())
    assert abs(float(jnp.std(small.weight)) - 0.02) < 0.002


def test_factorised_positions_concat_and_sum(getkey):
    concat = nn.FactorisedPositionEmbedding((2, 3, 4), 10, key=getkey())
    assert [t.shape for t in concat.tables] == [(2, 4), (3, 3), (4, 3)]  # TECO's chunks
    grid = concat()
    assert grid.shape == (2, 3, 4, 10) and concat.shape == (2, 3, 4)
    t0, t1, t2 = (np.asarray(t) for t in concat.tables)
    close(grid[1, 2, 3], np.concatenate([t0[1], t1[2], t2[3]]))
    close(grid[0, 1, 0], np.concatenate([t0[0], t1[1], t2[0]]))
    assert abs(float(np.std(np.concatenate([t.ravel() for t in (t0, t1, t2)]))) - 0.02) < 0.01

    summed = nn.FactorisedPositionEmbedding((3, 5), 6, combine="sum", key=getkey())
    assert [t.shape for t in summed.tables] == [(3, 6), (5, 6)]
    s0, s1 = (np.asarray(t) for t in summed.tables)
    close(summed(), s0[:, None, :] + s1[None, :, :])
    # Per-axis structure: moving along axis 1 changes only table 1's contribution.
    close(summed()[2, 4] - summed()[2, 1], s1[4] - s1[1])

    with pytest.raises(ValueError, match=r"`dim` must be ≥ len\(shape\) = 3"):
        nn.FactorisedPositionEmbedding((2, 2, 2), 2, key=getkey())
    with pytest.raises(ValueError, match=r"`shape` must be a non-empty sequence"):
        nn.FactorisedPositionEmbedding((), 4, key=getkey())


# ----------------------------------------------------------------------------
# Transformer block.
# ----------------------------------------------------------------------------


@eqx.filter_jit
def apply(block, x, context=None, mask=None, context_mask=None, key=None):
    """`block(...)` compiled as a whole (op-by-op dispatch is slow)."""
    return block(x, context, mask=mask, context_mask=context_mask, key=key)


@eqx.filter_jit
def apply_cached(block, x, cache, offset, mask=None, context=None):
    return block.cached(x, cache, offset, mask=mask, context=context)


@eqx.filter_jit
def reference_block(block, x, context=None, mask=None, context_mask=None):
    """The block written out from its sub-layers (no dropout)."""
    act = nn.activation(block.activation)

    def mlp(h):
        return block.mlp_out(act(block.mlp_in(h)))

    def cross(h):
        c = context if block.context_norm is None else block.context_norm(context)
        return block.cross_attention(h, c, mask=context_mask)

    if block.norm == "pre":
        x = x + block.attention(block.norm1(x), mask=mask)
        if block.cross_attention is not None:
            x = x + cross(block.cross_norm(x))
        return x + mlp(block.norm2(x))
    x = block.norm1(x + block.attention(x, mask=mask))
    if block.cross_attention is not None:
        x = block.cross_norm(x + cross(x))
    return block.norm2(x + mlp(x))


@pytest.mark.parametrize("cross", [False, True])
def test_pre_and_post_norm_blocks_follow_their_definitions(cross, getkey):
    key = getkey()
    context_dim = 12 if cross else None
    pre, post = (
        nn.TransformerBlock(
            16,
            4,
            32,
            norm=norm,
            cross_attention=cross,
            context_dim=context_dim,
            impl="xla",
            key=key,
        )
        for norm in ("pre", "post")
    )
    x = jax.random.normal(getkey(), (2, 6, 16))
    context = jax.random.normal(getkey(), (2, 5, 12)) if cross else None
    mask = AttentionMask.frame_causal(2)
    y_pre, y_post = apply(pre, x, context, mask), apply(post, x, context, mask)
    assert y_pre.shape == y_post.shape == (2, 6, 16)
    close(y_pre, reference_block(pre, x, context, mask))
    close(y_post, reference_block(post, x, context, mask))
    assert not np.allclose(np.asarray(y_pre), np.asarray(y_post), atol=1e-3)
    # Post-LN ends in a LayerNorm with unit scale and zero bias: zero mean per token.
    close(jnp.mean(y_post, axis=-1), np.zeros((2, 6)), 1e-4)


def test_cross_attention_reads_the_context(getkey):
    block = nn.TransformerBlock(
        16, 2, 32, cross_attention=True, context_dim=8, impl="xla", key=getkey()
    )
    x = jax.random.normal(getkey(), (5, 16))
    c1 = jax.random.normal(getkey(), (7, 8))
    c2 = c1.at[3].set(jax.random.normal(getkey(), (8,)))
    y1, y2 = apply(block, x, c1), apply(block, x, c2)
    assert not np.allclose(np.asarray(y1), np.asarray(y2), atol=1e-4)
    # Padding hides context entries: changing a hidden one changes nothing.
    pad = AttentionMask(kv_lengths=3)
    close(apply(block, x, c1, None, pad), apply(block, x, c2, None, pad), 1e-6)
    with pytest.raises(ValueError, match=r"`context` .* is required, got None"):
        block(x)
    plain = nn.TransformerBlock(16, 2, 32, impl="xla", key=getkey())
    assert plain.cross_attention is None and plain.context_norm is None
    with pytest.raises(ValueError, match=r"got a `context` but the block has no cross-attention"):
        plain(x, jnp.zeros((7, 16)))
    with pytest.raises(ValueError, match=r"`context_dim` \(8\) needs `cross_attention=True`"):
        nn.TransformerBlock(16, 2, 32, context_dim=8, key=getkey())


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_kv_cache_path_equals_the_full_pass(norm, getkey):
    """Feed a frame-causal sequence in pieces through `cached`; with a traced offset in a
    `lax.scan` too."""
    block = nn.TransformerBlock(
        16,
        4,
        32,
        num_kv_heads=2,
        norm=norm,
        cross_attention=True,
        activation="gelu_sigmoid",
        impl="xla",
        key=getkey(),
    )
    x = jax.random.normal(getkey(), (3, 12, 16))
    context = jax.random.normal(getkey(), (3, 4, 16))
    mask = AttentionMask.frame_causal(2)
    full = apply(block, x, context, mask)
    cache = block.init_cache(12, batch_shape=(3,))
    assert cache[0].shape == (3, 12, 2, 4)
    outs = []
    for start, stop in [(0, 4), (4, 12)]:
        y, cache = apply_cached(block, x[:, start:stop], cache, start, mask, context)
        outs.append(y)
    close(jnp.concatenate(outs, axis=1), full, 2e-5)
    # Keys/values of every token were written.
    k, _ = block.attention.keys_values(block.norm1(x) if norm == "pre" else x)
    close(cache[0], k, 1e-6)

    def body(cache, i):
        piece = jax.lax.dynamic_slice_in_dim(x, i * 2, 2, axis=1)
        y, cache = block.cached(piece, cache, i * 2, mask=mask, context=context)
        return cache, y

    _, ys = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(6)))(
        block.init_cache(12, batch_shape=(3,))
    )
    close(jnp.moveaxis(ys, 0, 1).reshape(3, 12, 16), full, 2e-5)


def test_kv_cache_hides_unwritten_entries_without_a_causal_mask(getkey):
    """With no mask, the new tokens see what has been written so far (themselves
    included), never the zeros beyond."""
    block = nn.TransformerBlock(8, 2, 16, impl="xla", key=getkey())
    x = jax.random.normal(getkey(), (6, 8))
    cache = block.init_cache(10)
    _, cache = apply_cached(block, x[:4], cache, 0)
    y, _ = apply_cached(block, x[4:], cache, 4)
    close(y, apply(block, x)[4:], 2e-5)
    with pytest.raises(ValueError, match=r"`offset` \+ length \(8 \+ 4\) must fit the cache of 10"):
        block.cached(x[:4], cache, 8)


def test_dropout_only_with_a_key(getkey):
    key = getkey()
    block = nn.TransformerBlock(16, 2, 32, dropout=0.5, impl="xla", key=key)
    x = jax.random.normal(getkey(), (6, 16))
    evaluation = apply(block, x)
    close(evaluation, reference_block(block, x))
    k1, k2 = getkey(), getkey()
    a, b = apply(block, x, key=k1), apply(block, x, key=k1)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(evaluation), atol=1e-4)
    assert not np.allclose(np.asarray(a), np.asarray(apply(block, x, key=k2)), atol=1e-4)
    # Rate 1 drops every sublayer: a pre-LN block is then the identity, with finite gradients.
    drop_all = nn.TransformerBlock(16, 2, 32, dropout=1.0, impl="xla", key=key)
    np.testing.assert_array_equal(np.asarray(apply(drop_all, x, key=k1)), np.asarray(x))
    grads = jax.jit(jax.grad(lambda x: jnp.sum(drop_all(x, key=k1) ** 2)))(x)
    assert np.all(np.isfinite(np.asarray(grads)))
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\], got 1.5"):
        nn.TransformerBlock(16, 2, 32, dropout=1.5, key=getkey())


def test_activation_is_selected_by_name(getkey):
    key = getkey()
    x = jax.random.normal(getkey(), (4, 16))
    outs = {
        name: apply(nn.TransformerBlock(16, 2, 32, activation=name, impl="xla", key=key), x)
        for name in ("gelu", "gelu_sigmoid", "relu")
    }
    assert not np.allclose(np.asarray(outs["gelu"]), np.asarray(outs["gelu_sigmoid"]), atol=1e-5)
    assert not np.allclose(np.asarray(outs["gelu"]), np.asarray(outs["relu"]), atol=1e-5)
    with pytest.raises((ValueError, TypeCheckError), match=r"gelu3"):
        nn.TransformerBlock(16, 2, 32, activation="gelu3", key=key)  # pyright: ignore[reportArgumentType]
    with pytest.raises((ValueError, TypeCheckError), match=r"middle"):
        nn.TransformerBlock(16, 2, 32, norm="middle", key=key)  # pyright: ignore[reportArgumentType]


# ----------------------------------------------------------------------------
# Roles.
# ----------------------------------------------------------------------------


def resolved_roles(model):
    """`{keystr path: ParamRole}` of every floating-point array."""
    roles = nn.parameter_roles(model)
    leaves = jax.tree_util.tree_leaves_with_path(
        roles, is_leaf=lambda r: isinstance(r, nn.ParamRole)
    )
    return {jax.tree_util.keystr(p): r for p, r in leaves if isinstance(r, nn.ParamRole)}


def test_transformer_block_roles_resolve_as_declared(getkey):
    block = nn.TransformerBlock(
        16, 4, 32, num_kv_heads=2, cross_attention=True, context_dim=8, key=getkey()
    )
    roles = resolved_roles(block)
    dims = {path: role.model_dim() for path, role in roles.items()}
    for attn in (".attention", ".cross_attention"):
        assert roles[attn + ".query_weight"].axes == ("in", "heads", "head_dim")
        assert dims[attn + ".query_weight"] == 1
        assert dims[attn + ".key_weight"] == dims[attn + ".value_weight"] == 1
        assert roles[attn + ".output_weight"].axes == ("heads", "head_dim", "out")
        assert dims[attn + ".output_weight"] == 0
        assert dims[attn + ".query_bias"] == dims[attn + ".key_bias"] == 0
        assert dims[attn + ".value_bias"] == 0
        assert dims[attn + ".output_bias"] is None
    assert roles[".mlp_in.weight"].axes == ("in", "out") and dims[".mlp_in.weight"] == 1
    assert roles[".mlp_in.bias"].axes == ("out",) and dims[".mlp_in.bias"] == 0
    assert dims[".mlp_out.weight"] == 0 and dims[".mlp_out.bias"] is None
    for norm in (".norm1", ".norm2", ".cross_norm", ".context_norm"):
        assert dims[norm + ".weight"] is None
    assert all(r.group == "default" and r.weight_decay and not r.frozen for r in roles.values())
    assert len(roles) == len(jax.tree.leaves(eqx.filter(block, eqx.is_inexact_array)))


def test_generic_layers_name_their_axes_without_a_model_axis(getkey):
    layers = {
        "dense": nn.Dense(3, 4, key=getkey()),
        "conv": nn.Conv2d(3, 4, 3, key=getkey()),
        "convt": nn.ConvTranspose2d(3, 4, 2, 2, key=getkey()),
        "embedding": nn.Embedding(5, 4, key=getkey()),
        "positions": nn.FactorisedPositionEmbedding((2, 3), 4, key=getkey()),
    }
    roles = {name: resolved_roles(layer) for name, layer in layers.items()}
    assert roles["dense"][".weight"].axes == ("in", "out")
    assert roles["conv"][".weight"].axes == ("kh", "kw", "in", "out")
    assert roles["convt"][".bias"].axes == ("out",)
    assert roles["embedding"][".weight"].axes == ("vocab", "embed")
    assert roles["positions"][".tables[1]"].axes == ("position", "embed")
    assert all(r.model_dim() is None for rs in roles.values() for r in rs.values())
