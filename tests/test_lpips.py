"""LPIPS (AlexNet, v0.1): conversion from synthetic public-format files, a NumPy reference
of the whole forward, invariances, architecture table, errors."""

import collections

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError
from test_torch_checkpoint import write_torch_legacy, write_torch_zip

from eqvid.metrics._lpips import LPIPS, lpips_weight_shapes
from eqvid.metrics.convert_weights import main as convert_main

# From the public code. torchvision `alexnet().features`:
#   0 Conv2d(3, 64, 11, stride 4, padding 2), 1 ReLU, 2 MaxPool2d(3, 2),
#   3 Conv2d(64, 192, 5, padding 2), 4 ReLU, 5 MaxPool2d(3, 2),
#   6 Conv2d(192, 384, 3, padding 1), 7 ReLU, 8 Conv2d(384, 256, 3, padding 1), 9 ReLU,
#   10 Conv2d(256, 256, 3, padding 1), 11 ReLU, 12 MaxPool2d(3, 2)
# lpips.pretrained_networks.alexnet slices [0:2], [2:5], [5:8], [8:10], [10:12] -> relu1..5,
# lpips.LPIPS chns = [64, 192, 384, 256, 256], NetLinLayer = Sequential(Dropout, Conv2d(c, 1, 1, bias=False)).
PUBLIC_ALEXNET = [  # (index, c_in, c_out, kernel, stride, padding, max-pool before)
    (0, 3, 64, 11, 4, 2, False),
    (3, 64, 192, 5, 1, 2, True),
    (6, 192, 384, 3, 1, 1, True),
    (8, 384, 256, 3, 1, 1, False),
    (10, 256, 256, 3, 1, 1, False),
]
SHIFT = np.array([-0.030, -0.088, -0.188])
SCALE = np.array([0.458, 0.448, 0.450])


def _synthetic_public_weights(rng):
    alexnet = collections.OrderedDict()
    for index, c_in, c_out, k, *_ in PUBLIC_ALEXNET:
        std = np.sqrt(2.0 / (c_in * k * k))
        alexnet[f"features.{index}.weight"] = (
            std * rng.standard_normal((c_out, c_in, k, k))
        ).astype(np.float32)
        alexnet[f"features.{index}.bias"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
    alexnet["classifier.6.bias"] = np.zeros(
        1000, np.float32
    )  # present in the real file, not needed
    lins = collections.OrderedDict(
        (f"lin{k}.model.1.weight", np.abs(rng.standard_normal((1, c, 1, 1))).astype(np.float32))
        for k, (_, _, c, *_) in enumerate(PUBLIC_ALEXNET)
    )
    return alexnet, lins


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Synthetic `alexnet-owt-7be5be79.pth` (zip format) and `alex.pth` (legacy format),
    converted with the CLI and loaded."""
    root = tmp_path_factory.mktemp("lpips")
    alexnet, lins = _synthetic_public_weights(np.random.default_rng(0))
    write_torch_zip(root / "alexnet-owt-7be5be79.pth", alexnet)
    write_torch_legacy(root / "alex.pth", lins)
    out = root / "lpips_alexnet.npz"
    # Inputs in either order.
    assert (
        convert_main(
            [
                "lpips",
                str(root / "alex.pth"),
                str(root / "alexnet-owt-7be5be79.pth"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return LPIPS.load(out), {**alexnet, **lins}, root


@pytest.fixture(scope="module")
def jitted():
    return eqx.filter_jit(lambda model, x, y: model(x, y))


# ---------------------------------------------------------------- NumPy reference (NCHW)


def _conv_nchw(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    patches = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[
        :, :, ::stride, ::stride
    ]
    return np.einsum("nchwij,ocij->nohw", patches, w) + b[None, :, None, None]


def _max_pool_nchw(x):
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(
        axis=(-2, -1)
    )


def _lpips_reference(tensors, x_nhwc, y_nhwc):
    def taps(img):
        h = (
            np.transpose(img, (0, 3, 1, 2)).astype(np.float64) - SHIFT[None, :, None, None]
        ) / SCALE[None, :, None, None]
        out = []
        for index, _, _, _, stride, pad, pool in PUBLIC_ALEXNET:
            if pool:
                h = _max_pool_nchw(h)
            h = np.maximum(
                _conv_nchw(
                    h,
                    tensors[f"features.{index}.weight"],
                    tensors[f"features.{index}.bias"],
                    stride,
                    pad,
                ),
                0,
            )
            out.append(h / (np.sqrt(np.sum(h**2, axis=1, keepdims=True)) + 1e-10))
        return out

    total = 0.0
    for k, (a, b) in enumerate(zip(taps(x_nhwc), taps(y_nhwc))):
        w = tensors[f"lin{k}.model.1.weight"].reshape(-1)
        total = total + np.einsum("nchw,c->nhw", (a - b) ** 2, w).mean(axis=(1, 2))
    return total


# ---------------------------------------------------------------- tests


def test_matches_numpy_reference_of_the_public_forward(converted, jitted):
    model, tensors, _ = converted
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 40, 48, 3)).astype(np.float32)  # non-square: H/W mix-ups fail
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    got = np.asarray(jitted(model, jnp.asarray(x), jnp.asarray(y)))
    want = _lpips_reference(tensors, x, y)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_invariances_and_shapes(converted, jitted):
    model, _, _ = converted
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 40, 48, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, (2, 40, 48, 3)), jnp.float32)
    d_xy, d_yx, d_xx = jitted(model, x, y), jitted(model, y, x), jitted(model, x, x)
    assert d_xy.shape == (2,) and d_xy.dtype == jnp.float32
    # 0 up to rounding (XLA may fuse the channel norms of the two halves differently).
    np.testing.assert_allclose(d_xx, 0.0, atol=1e-10)
    np.testing.assert_allclose(d_xy, d_yx, rtol=1e-6)
    assert bool(jnp.all(d_xy > 0))
    # Grey images are repeated to RGB.
    g, h = x[..., :1], y[..., :1]
    np.testing.assert_allclose(
        jitted(model, g, h), jitted(model, jnp.repeat(g, 3, -1), jnp.repeat(h, 3, -1)), rtol=1e-5
    )
    # Videos: per frame (one video of two frames: (x[0], y[0]) and (x[1], x[1])).
    per_frame = eqx.filter_jit(lambda m, a, b: m.per_frame(a, b))(
        model, jnp.stack([x[0], x[1]])[None], jnp.stack([y[0], x[1]])[None]
    )
    assert per_frame.shape == (1, 2)
    np.testing.assert_allclose(per_frame[0, 0], d_xy[0], rtol=1e-5)
    np.testing.assert_allclose(per_frame[0, 1], 0.0, atol=1e-10)


def test_architecture_matches_public_table(converted):
    model, _, _ = converted
    expected = {}
    for index, c_in, c_out, k, *_ in PUBLIC_ALEXNET:
        expected[f"features.{index}.weight"] = (c_out, c_in, k, k)
        expected[f"features.{index}.bias"] = (c_out,)
    for k, c in enumerate([64, 192, 384, 256, 256]):
        expected[f"lin{k}.model.1.weight"] = (1, c, 1, 1)
    assert lpips_weight_shapes() == expected
    layers = [
        (
            c.index,
            c.weight.shape[2],
            c.weight.shape[3],
            c.weight.shape[0],
            c.stride,
            c.padding,
            c.pool_before,
        )
        for c in model.convs
    ]
    assert layers == [(i, ci, co, k, s, p, pool) for i, ci, co, k, s, p, pool in PUBLIC_ALEXNET]
    assert [w.shape for w in model.linear] == [(64,), (192,), (384,), (256,), (256,)]


def test_bad_inputs_name_the_argument(converted):
    model, _, _ = converted
    x = jnp.zeros((1, 40, 40, 3))
    with pytest.raises(TypeCheckError, match="parameter 'y'"):  # its shape differs from x's
        model(x, jnp.zeros((1, 40, 44, 3)))
    # Values are checked when they are known (not under jit): 0..255 is not [-1, 1].
    with pytest.raises(ValueError, match=r"`y`: value_range='\[-1,1\]'.*255"):
        model(x, jnp.full((1, 40, 40, 3), 255.0))
    with pytest.raises(ValueError, match=r"`x` images must be at least 31×31.*\(1, 30, 40, 3\)"):
        model(jnp.zeros((1, 30, 40, 3)), jnp.zeros((1, 30, 40, 3)))
    with pytest.raises(ValueError, match=r"`x` must be an image batch.*1 \(grey\) or 3 \(RGB\)"):
        model(jnp.zeros((1, 40, 40, 2)), jnp.zeros((1, 40, 40, 2)))
    with pytest.raises(TypeCheckError, match="parameter 'x'"):  # images, not videos
        model.per_frame(x, x)


def test_corrupted_weight_file_is_named(tmp_path):
    bad = tmp_path / "lpips_alexnet.npz"
    bad.write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(
        ValueError, match=r"lpips_alexnet\.npz is not a readable eqvid .*convert_weights"
    ):
        LPIPS.load(bad)


def test_missing_file_says_what_to_get_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("EQVID_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(FileNotFoundError) as error:
        LPIPS.load()
    text = str(error.value)
    target = str(tmp_path / "weights" / "lpips_alexnet.npz")
    for needle in (
        target,
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "alex.pth",
        "richzhang/PerceptualSimilarity",
        f"python -m eqvid.metrics.convert_weights lpips alexnet-owt-7be5be79.pth alex.pth --out {target}",
        "EQVID_WEIGHTS",
    ):
        assert needle in text, needle
    with pytest.raises(FileNotFoundError, match="given `path`"):
        LPIPS.load(tmp_path / "elsewhere.npz")


def test_converter_names_missing_and_misshaped_tensors(converted, capsys):
    _, tensors, root = converted
    alexnet = {
        k: v for k, v in tensors.items() if k.startswith("features.") and k != "features.10.bias"
    }
    lins = {k: v for k, v in tensors.items() if k.startswith("lin")}
    lins["lin2.model.1.weight"] = lins["lin2.model.1.weight"][:, :100]
    write_torch_zip(root / "bad_alexnet.pth", alexnet)
    write_torch_zip(root / "bad_alex.pth", lins)
    status = convert_main(
        [
            "lpips",
            str(root / "bad_alexnet.pth"),
            str(root / "bad_alex.pth"),
            "--out",
            str(root / "x.npz"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "missing 1 tensor(s): features.10.bias" in err
    assert "`lin2.model.1.weight` has shape (1, 100, 1, 1), expected (1, 384, 1, 1)" in err
    assert not (root / "x.npz").exists()
    # An eqvid file of another network is refused by its format tag.
    np.savez(root / "other.npz", __format__=np.array("eqvid-i3d-kinetics400-v1"))
    with pytest.raises(ValueError, match="not an eqvid lpips weight file"):
        LPIPS.load(root / "other.npz")
