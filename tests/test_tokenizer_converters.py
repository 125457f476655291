"""Converters of public VQGAN checkpoints (taming-transformers' Lightning `.ckpt`, TECO's
Flax folder, TATS's 3D VQGAN `.ckpt`) into tokenizer folders: synthetic files of the real structure, a NumPy
re-computation of taming's forward on the file's own weights, and the errors.

The synthetic files follow the public code, not eqvid's: the taming state dict's keys and
shapes as `taming/modules/diffusionmodules/model.py` builds them, written by the
hand-made PyTorch pickle writer of `test_torch_checkpoint.py` inside a Lightning
checkpoint dict; TECO's parameter tree as Flax names `teco/models/vqgan.py`'s modules
(`<Class>_<n>` per class within each parent), written as Flax's msgpack; TATS's as
`tests/_tats_files.py` builds them (with its NumPy forward of TATS).
"""

import argparse
import collections
import pickle

import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from _tats_files import TatsReference, tats_args, tats_state, write_tats_ckpt
from test_torch_checkpoint import Global, Reduce, write_torch_zip

from eqvid.models._tokenizer_converters import (
    ConversionError,
    convert_taming,
    convert_tats,
    convert_teco,
    read_lightning_checkpoint,
)
from eqvid.models._tokenizer_files import load_tokenizer
from eqvid.models._vqgan2d import VQGAN2D
from eqvid.models._vqgan3d import VQGAN3D, VQGAN3DConfig
from eqvid.models.convert_tokenizer import main as convert_main
from eqvid.nn._conv import Conv2d
from eqvid.nn._patch_discriminator import BatchNorm

# The tiny model: 16×16 RGB frames, two levels (32 and 64 channels), attention at 8×8.
CH, CH_MULT, NUM_RES_BLOCKS, ATTN_RESOLUTIONS = 32, (1, 2), 1, (8,)
RESOLUTION, Z_CHANNELS, CHANNELS = 16, 8, 3
N_EMBED, EMBED_DIM = 16, 4
DISC_NDF, DISC_LAYERS = 8, 2

# --------------------------------------------------------------------- taming's keys


def _taming_shapes():
    """taming `VQModel` state-dict keys and shapes in module order (from the public code)."""
    out = []

    def conv(p, cin, cout, k):
        out.extend([(f"{p}.weight", (cout, cin, k, k)), (f"{p}.bias", (cout,))])

    def gn(p, c):
        out.extend([(f"{p}.weight", (c,)), (f"{p}.bias", (c,))])

    def res(p, cin, cout):
        gn(f"{p}.norm1", cin)
        conv(f"{p}.conv1", cin, cout, 3)
        gn(f"{p}.norm2", cout)
        conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.nin_shortcut", cin, cout, 1)

    def attn(p, c):
        gn(f"{p}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{part}", c, c, 1)

    ch, mult, nrb = CH, CH_MULT, NUM_RES_BLOCKS
    n, res_ = len(mult), RESOLUTION
    conv("encoder.conv_in", CHANNELS, ch, 3)
    bi = ch
    for i in range(n):
        bo = ch * mult[i]
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", bi, bo)
            bi = bo
        if res_ // 2**i in ATTN_RESOLUTIONS:
            for j in range(nrb):
                attn(f"encoder.down.{i}.attn.{j}", bi)
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", bi, bi, 3)
    res("encoder.mid.block_1", bi, bi)
    attn("encoder.mid.attn_1", bi)
    res("encoder.mid.block_2", bi, bi)
    gn("encoder.norm_out", bi)
    conv("encoder.conv_out", bi, Z_CHANNELS, 3)
    conv("decoder.conv_in", Z_CHANNELS, bi, 3)
    res("decoder.mid.block_1", bi, bi)
    attn("decoder.mid.attn_1", bi)
    res("decoder.mid.block_2", bi, bi)
    cin = {n - 1: bi}
    for i in reversed(range(n)):
        cin[i - 1] = ch * mult[i]
    for i in range(n):
        bi, bo = cin[i], ch * mult[i]
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", bi, bo)
            bi = bo
        if res_ // 2**i in ATTN_RESOLUTIONS:
            for j in range(nrb + 1):
                attn(f"decoder.up.{i}.attn.{j}", bo)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", bo, bo, 3)
    gn("decoder.norm_out", ch * mult[0])
    conv("decoder.conv_out", ch * mult[0], CHANNELS, 3)
    # loss.*: a few LPIPS tensors (ignored) and the PatchGAN (n_layers=2, BatchNorm).
    out.append(("loss.perceptual_loss.scaling_layer.shift", (1, 3, 1, 1)))
    out.append(("loss.perceptual_loss.lin0.model.1.weight", (1, 64, 1, 1)))
    d = "loss.discriminator.main"
    conv(f"{d}.0", CHANNELS, DISC_NDF, 4)
    c_in, idx = DISC_NDF, 2
    for k in range(1, DISC_LAYERS + 1):
        c_out = DISC_NDF * min(2**k, 8)
        out.append((f"{d}.{idx}.weight", (c_out, c_in, 4, 4)))
        for stat in ("weight", "bias", "running_mean", "running_var"):
            out.append((f"{d}.{idx + 1}.{stat}", (c_out,)))
        out.append((f"{d}.{idx + 1}.num_batches_tracked", ()))
        c_in, idx = c_out, idx + 3
    conv(f"{d}.{idx}", c_in, 1, 4)
    out.append(("quantize.embedding.weight", (N_EMBED, EMBED_DIM)))
    conv("quant_conv", Z_CHANNELS, EMBED_DIM, 1)
    conv("post_quant_conv", EMBED_DIM, Z_CHANNELS, 1)
    return out


def _taming_state(seed=0):
    """Random weights at PyTorch-like scales (norm scales and biases away from 1 and 0)."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    for key, shape in _taming_shapes():
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(7, np.int64)
        elif len(shape) == 4:
            bound = (shape[1] * shape[2] * shape[3]) ** -0.5
            state[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
        elif ".norm" in key or "running_var" in key or key.endswith(("3.weight", "6.weight")):
            base = 1.0 if key.endswith(("weight", "running_var")) else 0.0
            state[key] = (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            state[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return state


class _ClassKey(Global):
    """A pickled class used as a dict key (Lightning keys callback states by class)."""

    def __hash__(self):
        return id(self)


def _write_lightning(path, state):
    """A Lightning checkpoint dict around `state`, with what Lightning pickles beside it:
    optimiser states, and callback states keyed by the callback's class."""
    first = next(iter(state.values()))
    ckpt = {
        "epoch": 12,
        "global_step": 250_001,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {
            _ClassKey("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): {
                "best_model_score": np.array(0.5, np.float32),
                "best_model_path": "logs/last.ckpt",
            }
        },
        "optimizer_states": [
            {"state": {0: {"step": 3, "exp_avg": np.zeros_like(first)}}, "param_groups": []}
        ],
        "lr_schedulers": [],
        "hparams": Reduce(Global("omegaconf.dictconfig", "DictConfig"), ({"n_embed": 16},)),
        "state_dict": state,
    }
    write_torch_zip(path, ckpt)


# --------------------------------------------------------- NumPy reference (taming, NCHW)


def _conv(x, w, b, stride=1, pad=None):
    k = w.shape[-1]
    if pad is None:
        pad = ((k // 2, k // 2), (k // 2, k // 2))
    x = np.pad(x, ((0, 0), (0, 0), *pad))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, w) + b[None, :, None, None]


def _gn(x, w, b):
    n, c, h, wd = x.shape
    g = x.reshape(n, 32, c // 32, h, wd)
    mean = g.mean(axis=(2, 3, 4), keepdims=True)
    var = g.var(axis=(2, 3, 4), keepdims=True)
    y = ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
    return y * w[None, :, None, None] + b[None, :, None, None]


def _swish(x):
    return x / (1 + np.exp(-x))


class _Ref:
    """taming's `Encoder`, `Decoder`, `quant_conv` and codebook lookup on the raw
    (OIHW, float64) state dict."""

    def __init__(self, state):
        self.sd = {k: np.asarray(v, np.float64) for k, v in state.items()}

    def conv(self, p, x, **kw):
        return _conv(x, self.sd[f"{p}.weight"], self.sd[f"{p}.bias"], **kw)

    def norm(self, p, x):
        return _gn(x, self.sd[f"{p}.weight"], self.sd[f"{p}.bias"])

    def res(self, p, x):
        h = self.conv(f"{p}.conv1", _swish(self.norm(f"{p}.norm1", x)))
        h = self.conv(f"{p}.conv2", _swish(self.norm(f"{p}.norm2", h)))
        if f"{p}.nin_shortcut.weight" in self.sd:
            x = self.conv(f"{p}.nin_shortcut", x)
        return x + h

    def attn(self, p, x):
        b, c, h, w = x.shape
        hn = self.norm(f"{p}.norm", x)
        q, k, v = (self.conv(f"{p}.{n}", hn).reshape(b, c, h * w) for n in "qkv")
        s = np.einsum("bci,bcj->bij", q, k) * c**-0.5
        s = np.exp(s - s.max(axis=2, keepdims=True))
        s /= s.sum(axis=2, keepdims=True)
        out = np.einsum("bcj,bij->bci", v, s).reshape(b, c, h, w)
        return x + self.conv(f"{p}.proj_out", out)

    def encoder(self, x):
        n, nrb = len(CH_MULT), NUM_RES_BLOCKS
        h = self.conv("encoder.conv_in", x)
        for i in range(n):
            for j in range(nrb):
                h = self.res(f"encoder.down.{i}.block.{j}", h)
                if f"encoder.down.{i}.attn.{j}.q.weight" in self.sd:
                    h = self.attn(f"encoder.down.{i}.attn.{j}", h)
            if i != n - 1:  # F.pad(x, (0, 1, 0, 1)) then a stride-2 unpadded conv
                h = self.conv(
                    f"encoder.down.{i}.downsample.conv", h, stride=2, pad=((0, 1), (0, 1))
                )
        h = self.res("encoder.mid.block_1", h)
        h = self.attn("encoder.mid.attn_1", h)
        h = self.res("encoder.mid.block_2", h)
        return self.conv("encoder.conv_out", _swish(self.norm("encoder.norm_out", h)))

    def decoder(self, z):
        n, nrb = len(CH_MULT), NUM_RES_BLOCKS
        h = self.conv("decoder.conv_in", z)
        h = self.res("decoder.mid.block_1", h)
        h = self.attn("decoder.mid.attn_1", h)
        h = self.res("decoder.mid.block_2", h)
        for i in reversed(range(n)):
            for j in range(nrb + 1):
                h = self.res(f"decoder.up.{i}.block.{j}", h)
                if f"decoder.up.{i}.attn.{j}.q.weight" in self.sd:
                    h = self.attn(f"decoder.up.{i}.attn.{j}", h)
            if i != 0:  # nearest 2× then a 3×3 conv
                h = self.conv(f"decoder.up.{i}.upsample.conv", h.repeat(2, 2).repeat(2, 3))
        return self.conv("decoder.conv_out", _swish(self.norm("decoder.norm_out", h)))

    def latents(self, x_nhwc):
        z = self.conv("quant_conv", self.encoder(np.transpose(x_nhwc, (0, 3, 1, 2))))
        return np.transpose(z, (0, 2, 3, 1))

    def codes(self, latents):
        e = self.sd["quantize.embedding.weight"]
        d = (latents**2).sum(-1)[..., None] - 2 * latents @ e.T + (e**2).sum(-1)
        return d.argmin(-1), np.sort(d, axis=-1)

    def decode(self, codes):
        q = np.transpose(self.sd["quantize.embedding.weight"][codes], (0, 3, 1, 2))
        out = self.decoder(self.conv("post_quant_conv", q))
        return np.transpose(out, (0, 2, 3, 1))


def _check_against_reference(model, state):
    """Encoder → quant_conv → nearest code, and the decoder on given codes, against the
    NumPy re-computation on the file's weights."""
    assert isinstance(model, VQGAN2D)
    ref = _Ref(state)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    want = ref.latents(x.astype(np.float64))
    got = np.asarray(model._latents(jnp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    codes, dist = ref.codes(want)
    clear = dist[..., 1] - dist[..., 0] > 1e-5  # no near-tie that rounding could flip
    assert clear.mean() > 0.9
    got_codes = np.asarray(model.encode(jnp.asarray(x)))
    np.testing.assert_array_equal(got_codes[clear], codes[clear])
    given = rng.integers(0, N_EMBED, (2, 8, 8))
    want = ref.decode(given)
    got = np.asarray(model.decode(jnp.asarray(given, jnp.int32)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# -------------------------------------------------------------------------- taming


@pytest.fixture(scope="module")
def taming_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("taming") / "last.ckpt"
    state = _taming_state()
    _write_lightning(path, state)
    return path, state


def test_taming_round_trip(taming_file, tmp_path, capsys):
    path, state = taming_file
    out = tmp_path / "tok"
    assert convert_main(["taming", str(path), "--out", str(out), "--resolution", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "discriminator converted" in printed
    model = load_tokenizer(out)
    assert isinstance(model, VQGAN2D)
    c = model.config
    assert (c.frame_size, c.channels, c.ch, c.ch_mult, c.num_res_blocks) == (16, 3, 32, (1, 2), 1)
    assert (c.attn_resolutions, c.z_channels, c.embed_dim, c.n_embed) == ((8,), 8, 4, 16)
    assert (c.beta_on, c.perceptual_weight, c.disc_ndf, c.disc_layers) == ("codebook", 0.0, 8, 2)
    _check_against_reference(model, state)
    # The discriminator is the file's (OIHW → HWIO; BatchNorm scale and bias).
    first, norm = model.discriminator.main[0], model.discriminator.main[3]
    assert isinstance(first, Conv2d) and isinstance(norm, BatchNorm)
    np.testing.assert_array_equal(
        np.asarray(first.weight),
        state["loss.discriminator.main.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        np.asarray(norm.weight),
        state["loss.discriminator.main.3.weight"],
    )


def test_taming_explicit_config_and_no_discriminator(taming_file, tmp_path):
    _, state = taming_file
    plain = {k: v for k, v in state.items() if not k.startswith("loss.")}
    src = tmp_path / "plain.pt"
    write_torch_zip(src, plain)  # a bare state dict (torch.save(model.state_dict()))
    from eqvid.models._vqgan2d import VQGAN2DConfig

    config = VQGAN2DConfig(
        frame_size=16,
        channels=3,
        ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=8,
        embed_dim=4,
        n_embed=16,
        perceptual_weight=0.0,
        disc_start=5,
    )
    result = convert_taming(src, tmp_path / "tok", config=config)
    assert result.config == config
    assert any("no discriminator" in n for n in result.notes)
    model = load_tokenizer(result.folder)
    assert model.config.disc_start == 5
    _check_against_reference(model, state)


@pytest.mark.parametrize(
    "drop",
    [
        "decoder.up.1.attn.1.proj_out.weight",  # found by the shape check
        "quantize.embedding.weight",  # found while reading the architecture off the file
    ],
)
def test_taming_partial_file_names_the_missing_tensor(tmp_path, drop):
    state = _taming_state()
    shape = list(state.pop(drop).shape)
    path = tmp_path / "partial.ckpt"
    _write_lightning(path, state)
    with pytest.raises(ConversionError) as info:
        convert_taming(path, tmp_path / "tok", resolution=16)
    message = str(info.value)
    assert str(path) in message and f"`{drop}` is missing" in message
    if drop.startswith("decoder"):
        assert f"expected shape [{', '.join(map(str, shape))}]" in message


def test_taming_wrong_shape_and_unexpected_tensor(tmp_path, capsys):
    state = _taming_state()
    state["encoder.mid.block_1.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    path = tmp_path / "bad.ckpt"
    _write_lightning(path, state)
    assert convert_main(["taming", str(path), "--out", str(tmp_path / "t"), "--resolution", "16"])
    err = capsys.readouterr().err
    assert str(path) in err
    assert (
        "`encoder.mid.block_1.conv2.weight` has shape [64, 64, 1, 1], expected [64, 64, 3, 3]"
        in err
    )
    state = _taming_state()
    state["encoder.down.0.block.0.temb_proj.weight"] = np.zeros((32, 512), np.float32)
    _write_lightning(path, state)
    with pytest.raises(
        ConversionError,
        match=r"unexpected tensor `encoder\.down\.0\.block\.0\.temb_proj\.weight` \[32, 512\]",
    ):
        convert_taming(path, tmp_path / "t", resolution=16)
    # A wrong --resolution puts the attention elsewhere: named too.
    with pytest.raises(ConversionError, match="multiple of"):
        convert_taming(path, tmp_path / "t", resolution=15)


# ---------------------------------------------------------------------------- TECO


class _Scope:
    """Flax's automatic names: `<Class>_<n>`, counted per class within each parent."""

    def __init__(self, path):
        self.path, self.count = path, collections.Counter()

    def child(self, cls):
        n = self.count[cls]
        self.count[cls] += 1
        return _Scope(f"{self.path}/{cls}_{n}")


def _teco_params(state):
    """The Flax variables TECO's `VQGAN` (teco/models/vqgan.py) would have with taming's
    weights `state`, built in the order its `__call__`s create their submodules."""
    flat = {}

    def conv(scope, key, named=None):
        path = f"{scope.path}/{named}" if named else scope.child("Conv").path
        flat[f"{path}/kernel"] = state[f"{key}.weight"].transpose(2, 3, 1, 0)
        flat[f"{path}/bias"] = state[f"{key}.bias"]

    def gn(scope, key):
        path = scope.child("GroupNorm").path
        flat[f"{path}/scale"], flat[f"{path}/bias"] = state[f"{key}.weight"], state[f"{key}.bias"]

    def resnet(scope, key):
        s = scope.child("ResnetBlock")
        gn(s, f"{key}.norm1")
        conv(s, f"{key}.conv1")
        gn(s, f"{key}.norm2")
        conv(s, f"{key}.conv2")
        if f"{key}.nin_shortcut.weight" in state:
            conv(s, f"{key}.nin_shortcut")

    def attn(scope, key):
        s = scope.child("AttnBlock")
        gn(s, f"{key}.norm")
        for part in ("q", "k", "v", "proj_out"):
            conv(s, f"{key}.{part}")

    n, nrb = len(CH_MULT), NUM_RES_BLOCKS
    enc = _Scope("params/encoder")
    conv(enc, "encoder.conv_in")
    for i in range(n):
        for j in range(nrb):
            resnet(enc, f"encoder.down.{i}.block.{j}")
            if f"encoder.down.{i}.attn.{j}.q.weight" in state:
                attn(enc, f"encoder.down.{i}.attn.{j}")
        if i != n - 1:
            conv(enc.child("Downsample"), f"encoder.down.{i}.downsample.conv")
    resnet(enc, "encoder.mid.block_1")
    attn(enc, "encoder.mid.attn_1")
    resnet(enc, "encoder.mid.block_2")
    gn(enc, "encoder.norm_out")
    conv(enc, "encoder.conv_out")
    dec = _Scope("params/decoder")
    conv(dec, "decoder.conv_in")
    resnet(dec, "decoder.mid.block_1")
    attn(dec, "decoder.mid.attn_1")
    resnet(dec, "decoder.mid.block_2")
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            resnet(dec, f"decoder.up.{i}.block.{j}")
            if f"decoder.up.{i}.attn.{j}.q.weight" in state:
                attn(dec, f"decoder.up.{i}.attn.{j}")
        if i != 0:
            conv(dec.child("Upsample"), f"decoder.up.{i}.upsample.conv")
    gn(dec, "decoder.norm_out")
    conv(dec, "decoder.conv_out")
    top = _Scope("params")
    conv(top, "quant_conv", named="quant_conv")
    conv(top, "post_quant_conv", named="post_quant_conv")
    return flat


def _nest(flat):
    tree = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _flax_msgpack(tree):
    """Flax's `msgpack_serialize`: arrays as ExtType 1 `(shape, dtype name, C bytes)`,
    NumPy scalars as ExtType 3."""

    def ext(x):
        if isinstance(x, np.ndarray | np.generic):
            a = np.asarray(x)
            code = 1 if isinstance(x, np.ndarray) else 3
            payload = msgpack.packb((a.shape, a.dtype.name, a.tobytes("C")), use_bin_type=True)
            return msgpack.ExtType(code, payload)
        raise TypeError(type(x))

    return msgpack.packb(tree, default=ext, strict_types=True)


TECO_ARGS = dict(
    model="vqgan",
    resolution=16,
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[8],
    z_channels=8,
    double_z=False,
    dropout=0.0,
    n_embed=N_EMBED,
    embed_dim=EMBED_DIM,
    data_path="dmlab",  # the run's other settings ride along
    batch_size=64,
)


def _write_teco(folder, state, *, flat=None, args=None):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "args").write_bytes(pickle.dumps(argparse.Namespace(**(args or TECO_ARGS))))
    flat = _teco_params(state) if flat is None else flat
    codebook = state["quantize.embedding.weight"].reshape(-1)
    tree = {
        "step": np.int64(200_000),
        "params": _nest(flat)["params"],
        "opt_state": {"0": {"count": np.int32(5), "mu": {}, "nu": {}}, "1": {}},
        # The codebook in Flax's chunked form (as arrays over 1 GiB are written).
        "model_state": {
            "stats": {
                "quantize": {
                    "embeddings": {
                        "__msgpack_chunked_array__": True,
                        "shape": {"0": N_EMBED, "1": EMBED_DIM},
                        "chunks": {"0": codebook[:40], "1": codebook[40:]},
                    }
                }
            }
        },
    }
    (folder / "checkpoints" / "checkpoint_200000").write_bytes(_flax_msgpack(tree))
    # An older checkpoint with other weights: the latest step must be the one read.
    old = {**tree, "params": _nest({k: np.zeros_like(v) for k, v in flat.items()})["params"]}
    (folder / "checkpoints" / "checkpoint_99999").write_bytes(_flax_msgpack(old))


def test_teco_round_trip(tmp_path, capsys):
    state = _taming_state(seed=3)
    folder = tmp_path / "dmlab_vqgan"
    _write_teco(folder, state)
    out = tmp_path / "tok"
    assert convert_main(["teco", str(folder), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = load_tokenizer(out)
    assert isinstance(model, VQGAN2D)
    c = model.config
    assert (c.frame_size, c.channels, c.ch, c.ch_mult, c.attn_resolutions) == (
        16,
        3,
        32,
        (1, 2),
        (8,),
    )
    assert (c.cosine_codebook, c.codebook_ema_decay, c.n_embed, c.embed_dim) == (False, None, 16, 4)
    _check_against_reference(model, state)


def test_teco_errors(tmp_path):
    state = _taming_state()
    flat = _teco_params(state)
    gone = "params/decoder/AttnBlock_2/Conv_3/kernel"
    assert gone in flat  # decoder: mid, then up.1's two blocks' attentions
    del flat[gone]
    folder = tmp_path / "partial"
    _write_teco(folder, state, flat=flat)
    ckpt = folder / "checkpoints" / "checkpoint_200000"
    with pytest.raises(ConversionError) as info:
        convert_teco(folder, tmp_path / "t")
    assert str(ckpt) in str(info.value)
    assert f"`{gone}` is missing (expected shape [1, 1, 64, 64])" in str(info.value)

    flat = _teco_params(state)
    flat["params/encoder/Conv_1/kernel"] = np.zeros((3, 3, 64, 16), np.float32)
    folder = tmp_path / "wrong"
    _write_teco(folder, state, flat=flat)
    with pytest.raises(
        ConversionError,
        match=r"`params/encoder/Conv_1/kernel` has shape \[3, 3, 64, 16\], expected \[3, 3, 64, 8\]",
    ):
        convert_teco(folder, tmp_path / "t")

    folder = tmp_path / "noargs"
    _write_teco(folder, state, args={k: v for k, v in TECO_ARGS.items() if k != "n_embed"})
    with pytest.raises(ConversionError, match=r"args: the hyperparameter `n_embed` is missing"):
        convert_teco(folder, tmp_path / "t")

    # The args pickle may hold an argparse.Namespace only: nothing else is unpickled.
    (folder / "args").write_bytes(pickle.dumps(Reduce, protocol=2))  # a class of this module
    with pytest.raises(ConversionError, match="refusing to unpickle the global"):
        convert_teco(folder, tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="args"):
        convert_teco(tmp_path / "nowhere", tmp_path / "t")


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        convert_main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "taming" in text and "teco" in text and "tats" in text
    with pytest.raises(SystemExit):
        convert_main(["taming", "--help"])
    assert "--resolution" in capsys.readouterr().out


# ---------------------------------------------------------------------------- TATS

# The tiny TATS VQGAN: 4 frames of 16² RGB, n_hiddens 8, downsample (2, 4, 4) → (2, 4, 4)
# codes of 16 (embedding_dim 8); BatchNorm (replicate padding) or GroupNorm of 4 groups
# (zero padding in the encoder, TATS's `padding_type`).
TATS_CASES = {
    "batch": tats_args(),
    "group": tats_args(norm_type="group", num_groups=4, padding_type="constant"),
}


@pytest.fixture(scope="module", params=sorted(TATS_CASES))
def tats_file(request, tmp_path_factory):
    args = TATS_CASES[request.param]
    path = tmp_path_factory.mktemp(f"tats-{request.param}") / "vqgan_tiny_epoch=1-step=29999.ckpt"
    state = tats_state(args)
    write_tats_ckpt(path, state, args)
    return path, state, args


def _check_tats_against_reference(model, state, args):
    """(a) encoder → pre_vq_conv, layer by layer and whole; (b) the codes are the nearest
    codebook entries; (c) decoding given codes; all against TATS's forward in NumPy."""
    assert isinstance(model, VQGAN3D)
    ref = TatsReference(state, args)
    rng = np.random.default_rng(3)
    video = rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)  # eqvid: [-1, 1], THWC
    x = 0.5 * np.moveaxis(video, -1, 0).astype(np.float64)  # TATS: [-0.5, 0.5], CTHW

    def close(got, want):
        got = np.moveaxis(np.asarray(got, np.float64), -1, 0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    # One SamePadConv3d (the encoder's padding_type) and one ResBlock, fed the same input.
    first = ref.conv("encoder.conv_first", x, mode=args["padding_type"])
    close(model.encoder.conv_first(jnp.asarray(0.5 * video)), first)
    h = np.moveaxis(first, 0, -1)
    h = model.encoder.conv_blocks[0].down(jnp.asarray(h, jnp.float32))
    want = ref.res("encoder.conv_blocks.0.res", np.moveaxis(np.asarray(h, np.float64), -1, 0))
    close(model.encoder.conv_blocks[0].res(h), want)
    # The whole encoder and pre_vq_conv.
    z = ref.latents(x)
    close(model._latents(jnp.asarray(video)), z)
    # (b) codes: the nearest codebook entries (away from near-ties).
    codes, dist = ref.codes(z)
    clear = dist[..., 1] - dist[..., 0] > 1e-5
    assert clear.mean() > 0.9
    got = np.asarray(model.encode(jnp.asarray(video)))
    assert got.shape == (2, 4, 4)
    np.testing.assert_array_equal(got[clear], codes[clear])
    # (c) decode: TATS's decode, divided by pixel_scale (eqvid's [-1, 1]).
    given = rng.integers(0, args["n_codes"], (2, 4, 4))
    want = ref.decode(given) / 0.5
    close(model.decode(jnp.asarray(given, jnp.int32)), want)


def test_tats_round_trip(tats_file, tmp_path, capsys):
    path, state, args = tats_file
    out = tmp_path / "tok"
    assert convert_main(["tats", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "vqgan3d" in printed
    assert "discriminators converted" in printed
    assert "2 of 16 codes differ from z_avg" in printed
    model = load_tokenizer(out)
    assert isinstance(model, VQGAN3D)
    c = model.config
    assert (c.frame_size, c.channels, c.n_hiddens, c.downsample) == (16, 3, 8, (2, 4, 4))
    assert (c.embedding_dim, c.n_codes, c.norm_type) == (8, 16, args["norm_type"])
    assert (c.padding_type, c.perceptual_weight, c.restart_threshold) == (
        args["padding_type"],
        0.0,
        None,
    )
    assert (c.disc_channels, c.disc_layers, c.disc_start, c.train_frames) == (8, 2, 101, 4)
    assert c.codebook_init_from_data is False
    if args["norm_type"] == "group":
        assert c.norm_groups == 4
    _check_tats_against_reference(model, state, args)
    # The codebook is the file's `codebook.embeddings`, restarted codes included.
    np.testing.assert_array_equal(
        np.asarray(model.quantize.codebook()), state["codebook.embeddings"]
    )
    # The discriminators are the file's (2-D OIHW → HWIO, 3-D → DHWIO; norm scale, bias).
    np.testing.assert_array_equal(
        np.asarray(model.image_discriminator.layers[1].conv.weight),
        state["image_discriminator.model1.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        np.asarray(model.video_discriminator.layers[0].conv.weight),
        state["video_discriminator.model0.0.weight"].transpose(2, 3, 4, 1, 0),
    )
    norm = model.video_discriminator.layers[2].norm
    assert norm is not None
    np.testing.assert_array_equal(np.asarray(norm.bias), state["video_discriminator.model2.1.bias"])


def test_tats_hyperparameters_and_explicit_config(tats_file, tmp_path):
    path, state, args = tats_file
    _, rest = read_lightning_checkpoint(path)
    namespace = rest["hyper_parameters"]["args"]
    assert isinstance(namespace, argparse.Namespace)
    assert namespace.downsample == [2, 4, 4] and namespace.data_path == "/data/ucf101"
    # An explicit frame size wins over args.resolution; an explicit config over both.
    result = convert_tats(path, tmp_path / "a", resolution=32)
    assert isinstance(result.config, VQGAN3DConfig) and result.config.frame_size == 16 * 2
    plain = tmp_path / "plain.ckpt"
    write_tats_ckpt(plain, state, args, hyper_parameters=False)
    with pytest.raises(ConversionError, match="no `hyper_parameters`.*pass `config`"):
        convert_tats(plain, tmp_path / "b")
    config = VQGAN3DConfig(
        frame_size=16,
        channels=3,
        n_hiddens=8,
        downsample=(2, 4, 4),
        embedding_dim=8,
        n_codes=16,
        norm_type=args["norm_type"],
        norm_groups=args.get("num_groups", 32),
        padding_type=args["padding_type"],
        disc_channels=16,  # not the file's: fresh discriminators
        perceptual_weight=0.0,
    )
    result = convert_tats(plain, tmp_path / "c", config=config)
    assert any("do not fit disc_channels=16" in n for n in result.notes)
    _check_tats_against_reference(load_tokenizer(result.folder), state, args)


def _tats_variant(tmp_path, state, args, name):
    path = tmp_path / f"{name}.ckpt"
    write_tats_ckpt(path, state, args)
    return path


@pytest.mark.parametrize(
    "drop",
    ["encoder.conv_blocks.1.res.conv2.conv.weight", "codebook.z_avg", "decoder.final_block.0.bias"],
)
def test_tats_partial_file_names_the_missing_tensor(tmp_path, drop):
    args = TATS_CASES["batch"]
    state = tats_state(args)
    partial = collections.OrderedDict((k, v) for k, v in state.items() if k != drop)
    path = _tats_variant(tmp_path, partial, args, "partial")
    with pytest.raises(ConversionError) as info:
        convert_tats(path, tmp_path / "t")
    message = str(info.value)
    assert message.startswith(f"{path}: tensor `{drop}` is missing (expected shape [")
    # The first missing one is named when several are.
    many = collections.OrderedDict((k, v) for k, v in state.items() if ".running_var" not in k)
    path = _tats_variant(tmp_path, many, args, "many")
    with pytest.raises(
        ConversionError,
        match="encoder.conv_blocks.0.res.norm1.running_var` is "
        r"missing \(expected shape \[16\]\) \(and \d+ more\)",
    ):
        convert_tats(path, tmp_path / "t")


def test_tats_wrong_shape_unexpected_tensor_and_bad_args(tmp_path, capsys):
    args = TATS_CASES["batch"]
    state = tats_state(args)
    bad = collections.OrderedDict(state)
    bad["decoder.conv_blocks.1.up.convt.weight"] = np.zeros((32, 8, 4, 4, 4), np.float32)
    path = _tats_variant(tmp_path, bad, args, "bad")
    assert convert_main(["tats", str(path), "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert (
        f"{path}: tensor `decoder.conv_blocks.1.up.convt.weight` has shape [32, 8, 4, 4, 4], "
        "expected [32, 16, 4, 4, 4]"
    ) in err
    extra = collections.OrderedDict(state)
    extra["encoder.conv_blocks.2.down.conv.bias"] = np.zeros((64,), np.float32)
    path = _tats_variant(tmp_path, extra, args, "extra")
    with pytest.raises(ConversionError, match="unexpected tensor `encoder.conv_blocks.2.down"):
        convert_tats(path, tmp_path / "t")
    no_arch = {k: v for k, v in args.items() if k != "n_hiddens"}
    path = tmp_path / "noarch.ckpt"
    write_tats_ckpt(path, state, no_arch)
    with pytest.raises(ConversionError, match="hyperparameter `n_hiddens` is missing"):
        convert_tats(path, tmp_path / "t")
    no_res = {k: v for k, v in args.items() if k != "resolution"}
    path = tmp_path / "nores.ckpt"
    write_tats_ckpt(path, state, no_res)
    with pytest.raises(ConversionError, match="no `resolution`"):
        convert_tats(path, tmp_path / "t")
    assert convert_tats(path, tmp_path / "t", resolution=16).config.frame_size == 16
