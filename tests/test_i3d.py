"""Kinetics-400 I3D: conversion of a synthetic `i3d_pretrained_400.pt`, the architecture
against the public table, NumPy checks of the pieces (TF-"SAME" Unit3D, max pool, head,
bilinear resize), the FVD feature path, and errors."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError
from test_torch_checkpoint import write_torch_zip

from eqvid.metrics._i3d import (
    _MIXED,
    _POOL_BEFORE,
    _STEM,
    I3D,
    InceptionModule,
    Unit3D,
    _max_pool_same,
    i3d_features,
    i3d_weight_shapes,
    preprocess_for_i3d,
)
from eqvid.metrics.convert_weights import main as convert_main

# From piergiaj/pytorch-i3d `InceptionI3d.__init__` (as copied into VideoGPT / MeBT):
# Unit3D(in, out, kernel, stride) for the stem, InceptionModule(in, [b0, b1a, b1b, b2a, b2b, b3b]).
PUBLIC_STEM = [
    ("Conv3d_1a_7x7", 3, 64, [7, 7, 7], (2, 2, 2)),
    ("Conv3d_2b_1x1", 64, 64, [1, 1, 1], (1, 1, 1)),
    ("Conv3d_2c_3x3", 64, 192, [3, 3, 3], (1, 1, 1)),
]
PUBLIC_MIXED = [
    ("Mixed_3b", 192, [64, 96, 128, 16, 32, 32]),
    ("Mixed_3c", 256, [128, 128, 192, 32, 96, 64]),
    ("Mixed_4b", 128 + 192 + 96 + 64, [192, 96, 208, 16, 48, 64]),
    ("Mixed_4c", 192 + 208 + 48 + 64, [160, 112, 224, 24, 64, 64]),
    ("Mixed_4d", 160 + 224 + 64 + 64, [128, 128, 256, 24, 64, 64]),
    ("Mixed_4e", 128 + 256 + 64 + 64, [112, 144, 288, 32, 64, 64]),
    ("Mixed_4f", 112 + 288 + 64 + 64, [256, 160, 320, 32, 128, 128]),
    ("Mixed_5b", 256 + 320 + 128 + 128, [256, 160, 320, 32, 128, 128]),
    ("Mixed_5c", 256 + 320 + 128 + 128, [384, 192, 384, 48, 128, 128]),
]
PUBLIC_LOGITS_IN = 384 + 384 + 128 + 128
# VALID_ENDPOINTS up to Mixed_5c, with the MaxPool3dSamePadding(kernel, stride) ones.
PUBLIC_ENDPOINTS = [
    "Conv3d_1a_7x7",
    ("MaxPool3d_2a_3x3", (1, 3, 3), (1, 2, 2)),
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    "Mixed_3b",
    "Mixed_3c",
    ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    "Mixed_5b",
    "Mixed_5c",
]


def _public_units():
    """(state-dict prefix, in, out, kernel, stride, batch norm) of every Unit3D."""
    units = [(n, i, o, k, s, True) for n, i, o, k, s in PUBLIC_STEM]
    for name, c_in, out in PUBLIC_MIXED:
        units += [
            (f"{name}.b0", c_in, out[0], [1, 1, 1], (1, 1, 1), True),
            (f"{name}.b1a", c_in, out[1], [1, 1, 1], (1, 1, 1), True),
            (f"{name}.b1b", out[1], out[2], [3, 3, 3], (1, 1, 1), True),
            (f"{name}.b2a", c_in, out[3], [1, 1, 1], (1, 1, 1), True),
            (f"{name}.b2b", out[3], out[4], [3, 3, 3], (1, 1, 1), True),
            (f"{name}.b3b", c_in, out[5], [1, 1, 1], (1, 1, 1), True),
        ]
    units.append(("logits", PUBLIC_LOGITS_IN, 400, [1, 1, 1], (1, 1, 1), False))
    return units


def _synthetic_state_dict(rng):
    state = collections.OrderedDict()
    for name, c_in, c_out, kernel, _, bn in _public_units():
        fan_in = c_in * int(np.prod(kernel))
        state[f"{name}.conv3d.weight"] = (
            np.sqrt(2.0 / fan_in) * rng.standard_normal((c_out, c_in, *kernel))
        ).astype(np.float32)
        if bn:
            state[f"{name}.bn.weight"] = np.ones(c_out, np.float32)
            state[f"{name}.bn.bias"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
            state[f"{name}.bn.running_mean"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
            state[f"{name}.bn.running_var"] = rng.uniform(0.5, 2.0, c_out).astype(np.float32)
            state[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
        else:
            state[f"{name}.conv3d.bias"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A synthetic `i3d_pretrained_400.pt` (real names and shapes, random values),
    converted with the CLI and loaded."""
    root = tmp_path_factory.mktemp("i3d")
    state = _synthetic_state_dict(np.random.default_rng(0))
    write_torch_zip(root / "i3d_pretrained_400.pt", state, prefix="i3d_pretrained_400")
    out = root / "i3d_kinetics400.npz"
    assert convert_main(["i3d", str(root / "i3d_pretrained_400.pt"), "--out", str(out)]) == 0
    return I3D.load(out), state, root


# ---------------------------------------------------------------- NumPy references


def _torch_same_pad(size, kernel, stride):
    # pytorch-i3d's Unit3D.compute_pad / MaxPool3dSamePadding.compute_pad.
    pad = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return pad // 2, pad - pad // 2


def _numpy_conv3d_bn_relu(x, w, stride, bn=None, eps=1e-3):
    """x (T, H, W, C) channels-last, w (O, I, kt, kh, kw) PyTorch layout; loops."""
    pads = [_torch_same_pad(s, k, st) for s, k, st in zip(x.shape[:3], w.shape[2:], stride)]
    xp = np.pad(x, pads + [(0, 0)])
    out_shape = [(xp.shape[d] - w.shape[2 + d]) // stride[d] + 1 for d in range(3)]
    y = np.zeros(out_shape + [w.shape[0]])
    for t in range(out_shape[0]):
        for i in range(out_shape[1]):
            for j in range(out_shape[2]):
                t0, i0, j0 = t * stride[0], i * stride[1], j * stride[2]
                patch = xp[
                    t0 : t0 + w.shape[2], i0 : i0 + w.shape[3], j0 : j0 + w.shape[4]
                ]  # kt kh kw I
                y[t, i, j] = np.einsum("abci,oiabc->o", patch, w)
    if bn is not None:
        gamma, beta, mean, var = bn
        y = (y - mean) / np.sqrt(var + eps) * gamma + beta
    return np.maximum(y, 0)


def _numpy_max_pool_zero_padded(x, kernel, stride):
    """pytorch-i3d's MaxPool3dSamePadding: F.pad with zeros, then MaxPool3d."""
    pads = [_torch_same_pad(s, k, st) for s, k, st in zip(x.shape[:3], kernel, stride)]
    xp = np.pad(x, pads + [(0, 0)])
    out_shape = [(xp.shape[d] - kernel[d]) // stride[d] + 1 for d in range(3)]
    y = np.zeros(out_shape + [x.shape[-1]])
    for t in range(out_shape[0]):
        for i in range(out_shape[1]):
            for j in range(out_shape[2]):
                t0, i0, j0 = t * stride[0], i * stride[1], j * stride[2]
                y[t, i, j] = xp[t0 : t0 + kernel[0], i0 : i0 + kernel[1], j0 : j0 + kernel[2]].max(
                    axis=(0, 1, 2)
                )
    return y


def _half_pixel_bilinear_matrix(n_in, n_out):
    """F.interpolate(mode='bilinear', align_corners=False) along one axis, as a matrix."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[o, i0] += 1 - frac
        m[o, i1] += frac
    return m


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "size, kernel, stride",
    [
        ((5, 7, 6), (3, 3, 3), (2, 2, 2)),
        ((4, 5, 5), (7, 7, 7), (2, 2, 2)),
        ((3, 4, 5), (3, 3, 3), (1, 1, 1)),
    ],
)
def test_unit3d_tf_same_padding_and_folded_batch_norm(size, kernel, stride):
    rng = np.random.default_rng(1)
    c_in, c_out = 2, 3
    tensors = {
        "u.conv3d.weight": rng.standard_normal((c_out, c_in, *kernel)).astype(np.float32),
        "u.bn.weight": rng.uniform(0.5, 1.5, c_out).astype(np.float32),
        "u.bn.bias": rng.standard_normal(c_out).astype(np.float32),
        "u.bn.running_mean": rng.standard_normal(c_out).astype(np.float32),
        "u.bn.running_var": rng.uniform(0.5, 2, c_out).astype(np.float32),
    }
    unit = Unit3D.from_torch(tensors, "u", stride=stride)
    x = rng.standard_normal((1, *size, c_in)).astype(np.float32)
    got = np.asarray(unit(jnp.asarray(x)))
    bn = tuple(
        tensors[f"u.bn.{k}"].astype(np.float64)
        for k in ("weight", "bias", "running_mean", "running_var")
    )
    want = _numpy_conv3d_bn_relu(
        x[0].astype(np.float64), tensors["u.conv3d.weight"].astype(np.float64), stride, bn
    )
    assert got.shape == (1, *want.shape)
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kernel, stride",
    [
        ((1, 3, 3), (1, 2, 2)),
        ((3, 3, 3), (2, 2, 2)),
        ((2, 2, 2), (2, 2, 2)),
        ((3, 3, 3), (1, 1, 1)),
    ],
)
def test_max_pool_same_matches_pytorch_i3d_after_relu(kernel, stride):
    x = np.maximum(np.random.default_rng(2).standard_normal((1, 5, 7, 6, 2)), 0).astype(np.float32)
    got = np.asarray(_max_pool_same(jnp.asarray(x), kernel, stride))
    np.testing.assert_array_equal(got[0], _numpy_max_pool_zero_padded(x[0], kernel, stride))


def test_inception_module_branches_and_concatenation_order():
    rng = np.random.default_rng(6)
    c_in, out = 4, (2, 3, 2, 2, 3, 2)  # b0, b1a, b1b, b2a, b2b, b3b
    layout = [("b0", c_in, 0, 1), ("b1a", c_in, 1, 1), ("b1b", out[1], 2, 3)]
    layout += [("b2a", c_in, 3, 1), ("b2b", out[3], 4, 3), ("b3b", c_in, 5, 1)]
    tensors, units = {}, {}
    for attr, u_in, i, k in layout:
        tensors[f"m.{attr}.conv3d.weight"] = rng.standard_normal((out[i], u_in, k, k, k))
        tensors[f"m.{attr}.bn.weight"] = rng.uniform(0.5, 1.5, out[i])
        tensors[f"m.{attr}.bn.bias"] = rng.standard_normal(out[i])
        tensors[f"m.{attr}.bn.running_mean"] = rng.standard_normal(out[i])
        tensors[f"m.{attr}.bn.running_var"] = rng.uniform(0.5, 2, out[i])
        units[attr] = Unit3D.from_torch(tensors, f"m.{attr}")
    block = InceptionModule(**units)
    x = np.maximum(rng.standard_normal((1, 3, 5, 4, c_in)), 0).astype(np.float32)

    def unit(attr, h):
        bn = tuple(
            tensors[f"m.{attr}.bn.{b}"] for b in ("weight", "bias", "running_mean", "running_var")
        )
        return _numpy_conv3d_bn_relu(h, tensors[f"m.{attr}.conv3d.weight"], (1, 1, 1), bn)

    h = x[0].astype(np.float64)
    want = np.concatenate(
        [
            unit("b0", h),
            unit("b1b", unit("b1a", h)),
            unit("b2b", unit("b2a", h)),
            unit("b3b", _numpy_max_pool_zero_padded(h, (3, 3, 3), (1, 1, 1))),
        ],
        axis=-1,
    )
    got = np.asarray(block(jnp.asarray(x), "highest"))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_logits_head(converted):
    model, state, _ = converted
    x = np.random.default_rng(3).standard_normal((1, 3, 7, 7, 1024)).astype(np.float32)
    pooled = np.stack(
        [x[0, t : t + 2].mean(axis=(0, 1, 2)) for t in range(2)]
    )  # avg pool (2, 7, 7)
    w = state["logits.conv3d.weight"][:, :, 0, 0, 0].astype(np.float64)
    want = (pooled @ w.T + state["logits.conv3d.bias"]).mean(axis=0)
    np.testing.assert_allclose(
        np.asarray(model.head(jnp.asarray(x)))[0], want, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("height, width", [(9, 13), (300, 250), (224, 224)])
def test_preprocess_is_half_pixel_bilinear_without_antialias(height, width):
    x = np.random.default_rng(4).uniform(-1, 1, (1, 1, height, width, 1)).astype(np.float32)
    got = np.asarray(preprocess_for_i3d(jnp.asarray(x)))
    want = (
        _half_pixel_bilinear_matrix(height, 224)
        @ x[0, 0, :, :, 0].astype(np.float64)
        @ _half_pixel_bilinear_matrix(width, 224).T
    )
    assert got.shape == (1, 1, 224, 224, 3)
    for c in range(3):  # grey repeated to RGB
        np.testing.assert_allclose(got[0, 0, :, :, c], want, atol=2e-6)
    # jax.image.resize implements the same formula, with float32 sample positions.
    resized = jax.image.resize(jnp.asarray(x[0, 0, :, :, 0]), (224, 224), "linear", antialias=False)
    np.testing.assert_allclose(resized, want, atol=1e-4)


def test_architecture_matches_public_table(converted):
    model, _, _ = converted
    expected = {}
    for name, c_in, c_out, kernel, _, bn in _public_units():
        expected[f"{name}.conv3d.weight"] = (c_out, c_in, *kernel)
        for b in ("weight", "bias", "running_mean", "running_var") if bn else ():
            expected[f"{name}.bn.{b}"] = (c_out,)
        if not bn:
            expected[f"{name}.conv3d.bias"] = (c_out,)
    assert i3d_weight_shapes() == expected
    # The order of stem units, pools and inception blocks that `I3D.__call__` follows.
    sequence = []
    for name in [n for n, *_ in _STEM] + [n for n, *_ in _MIXED]:
        if name in _POOL_BEFORE:
            sequence.append(("max pool", *_POOL_BEFORE[name]))
        sequence.append(name)
    public = [("max pool", *e[1:]) if isinstance(e, tuple) else e for e in PUBLIC_ENDPOINTS]
    assert sequence == public
    # Every Unit3D of the module: its PyTorch name, kernel / channels and stride.
    units = []
    for name, *_ in PUBLIC_STEM:
        units.append(getattr(model, name))
    for name, _, _ in PUBLIC_MIXED:
        block = getattr(model, name)
        assert isinstance(block, InceptionModule)
        units += [block.b0, block.b1a, block.b1b, block.b2a, block.b2b, block.b3b]
    units.append(model.logits)
    got = [
        (u.name, u.weight.shape[3], u.weight.shape[4], list(u.weight.shape[:3]), u.stride, u.relu)
        for u in units
    ]
    want = [(n, i, o, k, s, bn) for n, i, o, k, s, bn in _public_units()]
    assert got == want


def test_features_shape_and_identity(converted):
    model, _, _ = converted
    rng = np.random.default_rng(5)
    v = rng.uniform(-1, 1, (9, 16, 20, 1)).astype(np.float32)
    w = rng.uniform(-1, 1, (9, 16, 20, 1)).astype(np.float32)
    # Chunks of two: [v, w] and [v, <padding>] — one compiled shape, two forward passes.
    features = np.asarray(i3d_features(model, np.stack([v, w, v]), batch_size=2))
    assert features.shape == (3, 400) and np.all(np.isfinite(features))
    # The same video gives the same features, whatever its batch neighbours.
    np.testing.assert_allclose(features[0], features[2], rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(features[0] - features[1])) > 1e-3
    # FVD of a set of videos with itself (computed in other batches) is 0.
    from eqvid.metrics import fvd_from_features

    assert fvd_from_features(features[[0, 1]], features[[2, 1]]) < 1e-6 * np.sum(features**2)


def test_bad_inputs_name_the_argument(converted):
    model, _, _ = converted
    with pytest.raises(
        ValueError,
        match=r"`videos` must be \(batch, time >= 9, 224, 224, 3\).*\(1, 8, 224, 224, 3\)",
    ):
        model(jnp.zeros((1, 8, 224, 224, 3)))
    with pytest.raises(TypeCheckError, match="parameter 'videos'"):  # 112 × 112, not 224 × 224
        model(jnp.zeros((1, 9, 112, 112, 3)))
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        i3d_features(model, np.zeros((1, 9, 16, 16, 1), np.float32), batch_size=0)
    with pytest.raises(
        ValueError, match=r"`videos` must be .*1 or 3 channels.*\(1, 9, 16, 16, 2\)"
    ):
        i3d_features(model, np.zeros((1, 9, 16, 16, 2), np.float32))
    with pytest.raises(ValueError, match=r"`videos`: value_range='\[-1,1\]'.*255"):
        i3d_features(model, np.full((1, 9, 16, 16, 1), 255.0, np.float32))
    with pytest.raises(TypeCheckError, match="parameter 'videos'"):  # no batch axis
        preprocess_for_i3d(jnp.zeros((9, 16, 16, 3)))


def test_missing_file_says_what_to_get_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("EQVID_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        I3D.load()
    text = str(error.value)
    target = str(tmp_path / "i3d_kinetics400.npz")
    for needle in (
        target,
        "i3d_pretrained_400.pt",
        "wilson1yan/VideoGPT",
        "1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT",
        f"python -m eqvid.metrics.convert_weights i3d i3d_pretrained_400.pt --out {target}",
        "EQVID_WEIGHTS",
    ):
        assert needle in text, needle


def test_converter_names_bad_tensors(converted, capsys):
    _, state, root = converted
    bad = dict(state)
    bad["Mixed_4d.b2b.conv3d.weight"] = bad["Mixed_4d.b2b.conv3d.weight"][:, :, :1]
    bad["Mixed_9z.b0.conv3d.weight"] = np.zeros((1, 1, 1, 1, 1), np.float32)
    del bad["logits.conv3d.bias"]
    write_torch_zip(root / "bad.pt", bad)
    assert convert_main(["i3d", str(root / "bad.pt"), "--out", str(root / "bad.npz")]) == 1
    err = capsys.readouterr().err
    assert "missing 1 tensor(s): logits.conv3d.bias" in err
    assert (
        "`Mixed_4d.b2b.conv3d.weight` has shape (64, 24, 1, 3, 3), expected (64, 24, 3, 3, 3)"
        in err
    )
    assert "unexpected tensor(s): Mixed_9z.b0.conv3d.weight" in err
