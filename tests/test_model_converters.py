"""Converters of the released ConvSSM and TECO video-model checkpoints into model folders,
and the model folders themselves: synthetic Flax checkpoints of the originals' exact
trees, a NumPy re-statement of the originals' forward on the file's own weights, the
released trees, and the errors.

The synthetic trees follow the public code, not eqvid's: the builders below name and
shape every array as Flax names the modules of NVlabs/ConvSSM (`CONVS5_NOVQ`,
`TECO_CONVS5`) and wilson1yan/teco (`TECO`) build them (`<Class>_<n>` per parent, in
call order), and a test checks that for the released configurations they give exactly
the trees recorded from the originals (`tests/data/released_flax_trees.txt`). The files
are written as Flax 0.6's `msgpack_serialize` writes them (ndarrays as ExtType 1
`(shape, dtype name, bytes)`). The references are written from the originals' math:
HWIO cross-correlations with SAME padding, GroupNorm of 32 groups and LayerNorm with
ε 1e-6, ELU / tanh-GELU / x·σ(1.702x), the ConvS5 recurrence with B flattened u-major,
Flax's transposed convolution as `lax.conv_transpose` defines it (input dilated by
the stride, padded by k - 1, correlated with the unflipped kernel), and so on.
"""

import ast
import dataclasses
import math
import pathlib
import pickle
from argparse import Namespace
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from eqvid.models import (
    TECO,
    VQGAN2D,
    ConvS5Config,
    ConvS5VideoModel,
    VQGAN2DConfig,
    make_model,
)
from eqvid.models._checkpoint_converters import (
    ConversionError,
    convert_convs5_latent,
    convert_convs5_mnist,
    convert_teco_convs5,
    convert_teco_model,
    convert_video_checkpoint,
    flax_parameter_shapes,
    read_flax_checkpoint,
)
from eqvid.models._convs5_video import CONVS5_PRESETS
from eqvid.models._frames import embed_actions
from eqvid.models._latent_video import (
    LATENT_CONVS5_PRESETS,
    LatentConvS5Config,
    LatentTransformerConfig,
    LatentVideoModel,
)
from eqvid.models._model_files import load_model, save_model
from eqvid.models._registry import model_spec
from eqvid.models._teco import TECO_CONVS5_PRESETS, TECO_PRESETS, TECOConfig, TECOConvS5Config
from eqvid.models._tokenizer_files import load_tokenizer, save_tokenizer
from eqvid.models.convert_checkpoint import main as convert_main
from eqvid.nn._temporal_core import TransformerCore

DATA = pathlib.Path(__file__).parent / "data" / "released_flax_trees.txt"

# ------------------------------------------------------------------ the originals' trees


class Tree(dict):
    """`{Flax path: shape}` in the order the original creates its parameters."""

    def conv(self, p, cin, cout, k=3, bias=True):
        self[f"{p}/kernel"] = (k, k, cin, cout)
        if bias:
            self[f"{p}/bias"] = (cout,)

    def dense(self, p, cin, cout, bias=True):
        self[f"{p}/kernel"] = (cin, cout)
        if bias:
            self[f"{p}/bias"] = (cout,)

    def norm(self, p, c):
        self[f"{p}/scale"] = self[f"{p}/bias"] = (c,)

    def resnet_block(self, p, cin, c):
        """ConvSSM/TECO `base.ResNetBlock(depth=c)`."""
        if cin != c:
            self.conv(f"{p}/skip", cin, c, 1, bias=False)
        self.norm(f"{p}/GroupNorm_0", cin)
        self.conv(f"{p}/Conv_0", cin, c)
        self.norm(f"{p}/GroupNorm_1", c)
        self.conv(f"{p}/Conv_1", c, c, bias=False)
        self[f"{p}/AddBias_0/bias"] = (c,)

    def resnet_encoder(self, p, cin, depths, blocks):
        """`base.ResNetEncoder(depths, blocks)`; returns its output channels."""
        self.conv(f"{p}/Conv_0", cin, depths[0])
        self.resnet_block(f"{p}/ResNetBlock_0", depths[0], depths[0])
        n, c = 1, depths[0]
        for d in depths[1:]:
            for _ in range(blocks):
                self.resnet_block(f"{p}/ResNetBlock_{n}", c, d)
                n, c = n + 1, d
        return c

    def resnet_decoder(self, p, cin, depths, blocks, out):
        """`base.ResNetDecoder(depths, blocks, out_dim)`: Conv_0 to `depths[0]` (sic)."""
        self.conv(f"{p}/Conv_0", cin, depths[0])
        n, c = 0, depths[0]
        for d in reversed(depths):
            for _ in range(blocks):
                self.resnet_block(f"{p}/ResNetBlock_{n}", c, d)
                n, c = n + 1, d
        self.norm(f"{p}/LayerNorm_0", c)
        self.dense(f"{p}/Dense_0", c, out)

    def convs5_layer(self, p, u, ssm_size, k=3):
        """ConvSSM `SequenceLayer(ConvS5SSM, C_D_config='resnet')`, post-norm."""
        q, s = ssm_size // 2, f"{p}/seq"
        self[f"{s}/Lambda_re"] = self[f"{s}/Lambda_im"] = (q,)
        self[f"{s}/B"] = (q, u * k * k, 2)
        self[f"{s}/C"] = (k, k, q, u, 2)
        self.norm(f"{s}/C_D_conv/GroupNorm_0", u)
        self.conv(f"{s}/C_D_conv/Conv_0", u, u)
        self.norm(f"{s}/C_D_conv/GroupNorm_1", u)
        self.conv(f"{s}/C_D_conv/Conv_1", u, u)
        self[f"{s}/log_step"] = (q, 1)
        self.norm(f"{p}/norm", u)

    def transformer_layer(self, p, w, heads, mlp):
        """TECO `transformer.TransformerLayer` (pre-LN)."""
        self.norm(f"{p}/LayerNorm_0", w)
        a = f"{p}/MultiHeadAttention_0"
        for part in ("query", "key", "value"):
            self[f"{a}/{part}/kernel"] = (w, heads, w // heads)
            self[f"{a}/{part}/bias"] = (heads, w // heads)
        self[f"{a}/out/kernel"] = (heads, w // heads, w)
        self[f"{a}/out_bias/bias"] = (w,)
        self.norm(f"{p}/LayerNorm_1", w)
        self.dense(f"{p}/MlpBlock_0/wi", w, mlp)
        self.dense(f"{p}/MlpBlock_0/wo", mlp, w, bias=False)
        self[f"{p}/MlpBlock_0/wo_bias/bias"] = (w,)

    def maskgit(self, p, k, vocab_dim, cond, w, heads, mlp, layers, grid):
        """TECO `maskgit.MaskGit` with `Transformer(pos_embed_type='broadcast')` and
        `MlmLayer`."""
        self[f"{p}/token_embed"] = (k + 1, vocab_dim)
        self.dense(f"{p}/net/Dense_0", vocab_dim + cond, w)
        for i in range(2):
            self[f"{p}/net/BroadcastPositionBiases_0/d_{i}"] = (grid, w // 2 + (i < w % 2))
        for i in range(layers):
            self.transformer_layer(f"{p}/net/TransformerLayer_{i}", w, heads, mlp)
        self.dense(f"{p}/net/Dense_1", w, w)
        self.norm(f"{p}/net/LayerNorm_0", w)
        self.dense(f"{p}/mlm/Dense_0", w, vocab_dim)
        self.norm(f"{p}/mlm/LayerNorm_0", vocab_dim)
        self[f"{p}/mlm/AddBias_0/bias"] = (k,)


def convs5_tree(o, *, cin, out):
    """ConvSSM's `CONVS5` (VQ) / `CONVS5_NOVQ` of the YAML values `o` (encoder on `cin`
    channels, decoder to `out`): they build the same modules."""
    t = Tree()
    t["params/action_embeds/embedding"] = (o["action_dim"] + 1, o["action_embed_dim"])
    c = t.resnet_encoder("params/encoder", cin, o["enc_depths"], 1)
    t.conv("params/action_conv/Conv_0", c + o["action_embed_dim"], o["d_model"], 1)
    for i in range(o["n_layers"]):
        t.convs5_layer(f"params/sequence_model/layers_{i}", o["d_model"], o["ssm_size"])
    t.resnet_decoder("params/decoder", o["d_model"], o["dec_depths"], o["dec_blocks"], out)
    return t


def mnist_tree(o):
    """`CONVS5_NOVQ` of the YAML values `o`."""
    c = o["channels"]
    o = dict(o, enc_depths=o["depths"], dec_depths=o["depths"], dec_blocks=1)
    return convs5_tree(o, cin=c, out=c)


def latent_tree(o, *, e, nc):
    """ConvSSM's latent `CONVS5` (`sequence_models/VQ/convS5.py`) of the YAML values `o`,
    on a VQGAN of `nc` codes of `e` channels."""
    return convs5_tree(o, cin=e, out=nc)


def teco_tree(o, *, e, nc, s):
    """wilson1yan/teco `TECO` (`o["temporal"] == "transformer"`) or ConvSSM `TECO_CONVS5`
    of the YAML values `o`, on a VQGAN of `nc` codes of `e` channels on an `s × s` grid."""
    t = Tree()
    emb, ea = o["embedding_dim"], o["action_embed_dim"]
    t["params/action_embeds/embedding"] = (o["action_dim"] + 1, ea)
    t["params/sos_post"] = (s, s, e)
    c = t.resnet_encoder("params/encoder/layers_0", 2 * e, o["enc_depths"], o["enc_blocks"])
    t.dense("params/encoder/layers_1", c, emb)
    t["params/codebook/codebook"] = (o["n_codes"], o["proj_dim"])
    t.dense("params/codebook/Dense_0", emb, o["proj_dim"], bias=False)
    t.dense("params/codebook/Dense_1", o["proj_dim"], emb, bias=False)
    latent = s // 2 ** (len(o["enc_depths"]) - 1)
    if o["temporal"] == "transformer":
        w, z = o["width"], o["z_ds"]
        t["params/sos"] = (latent // z, latent // z, w)
        t["params/z_proj/kernel"] = (z, z, emb + ea, w)
        t.dense("params/z_tfm/Dense_0", w, w)
        for i in range(o["n_layers"]):
            t.transformer_layer(f"params/z_tfm/TransformerLayer_{i}", w, o["heads"], o["mlp"])
        t.dense("params/z_tfm/Dense_1", w, w)
        t.norm("params/z_tfm/LayerNorm_0", w)
        t["params/z_unproj/kernel"] = (z, z, w, emb)
        deter = emb
    else:
        deter = o["d_model"]
        t.conv("params/action_conv/Conv_0", emb + ea, deter, 1)
        for i in range(o["n_layers"]):
            t.convs5_layer(f"params/sequence_model/layers_{i}", deter, o["ssm_size"])
    g = o["git"]
    t.maskgit("params/z_git", o["n_codes"], g["vocab_dim"], deter, g["width"], g["heads"],
              g["mlp"], g["layers"], latent)  # fmt: skip
    t.resnet_decoder("params/decoder", deter + emb, o["dec_depths"], o["dec_blocks"], nc)
    return t


# The released configurations, as their YAML files give them.
MNIST_300 = dict(channels=1, depths=[64, 128, 256], d_model=256, ssm_size=256, n_layers=8,
                 action_dim=1, action_embed_dim=1)  # fmt: skip
DMLAB_GIT = dict(vocab_dim=256, width=512, heads=8, mlp=2048, layers=8)
DMLAB_TECO = dict(embedding_dim=64, action_dim=6, action_embed_dim=16, enc_depths=[256, 512],
                  enc_blocks=2, dec_depths=[256, 512], dec_blocks=4, n_codes=1024, proj_dim=32,
                  git=DMLAB_GIT)  # fmt: skip
DMLAB_CONVS5 = dict(enc_depths=[256], dec_depths=[512], dec_blocks=4, d_model=512, ssm_size=512,
                    n_layers=8, action_dim=6, action_embed_dim=16)  # fmt: skip
RELEASED = {
    "mnist300_convS5_novq": lambda: mnist_tree(MNIST_300),
    "dmlab_convs5": lambda: latent_tree(DMLAB_CONVS5, e=256, nc=1024),
    "dmlab_teco_convS5": lambda: teco_tree(
        dict(DMLAB_TECO, temporal="convs5", d_model=512, ssm_size=1024, n_layers=8),
        e=256, nc=1024, s=16,
    ),
    "habitat_teco_convS5": lambda: teco_tree(
        dict(DMLAB_TECO, temporal="convs5", d_model=512, ssm_size=512, n_layers=8,
             embedding_dim=256, enc_blocks=4, dec_blocks=8, n_codes=2048,
             git=dict(vocab_dim=256, width=1024, heads=16, mlp=4096, layers=16)),
        e=256, nc=8192, s=16,
    ),
    "minecraft_teco_convS5": lambda: teco_tree(
        dict(DMLAB_TECO, temporal="convs5", d_model=512, ssm_size=512, n_layers=12,
             embedding_dim=128, enc_blocks=4, dec_blocks=6,
             git=dict(vocab_dim=256, width=768, heads=12, mlp=3072, layers=6)),
        e=256, nc=1024, s=16,
    ),
    "dmlab_teco_transformer": lambda: teco_tree(
        dict(DMLAB_TECO, temporal="transformer", z_ds=8, width=1024, heads=16, mlp=4096,
             n_layers=8),
        e=256, nc=1024, s=16,
    ),
}  # fmt: skip


def released_trees():
    out, name = {}, None
    for line in DATA.read_text().splitlines():
        if line.startswith("## "):
            name, total = line[3:].split()
            out[name] = ({}, int(total))
        elif line and not line.startswith("#"):
            path, shape = line.split("\t")
            out[name][0][path] = ast.literal_eval(shape)
    return out


def test_the_tree_builders_give_the_released_trees():
    trees = released_trees()
    for name, build in RELEASED.items():
        want, total = trees[name]
        assert sum(math.prod(s) for s in want.values()) == total
        assert dict(build()) == want, name


def _shape_only_vqgan(preset):
    vq = dataclasses.replace(VQGAN2DConfig.preset(preset), perceptual_weight=0.0)
    return vq, eqx.filter_eval_shape(lambda: make_model(vq, key=jax.random.key(0))[0])


@pytest.fixture
def shapes_only_hippo(monkeypatch):
    """The HiPPO eigendecomposition is values only (eigh of up to 512×512 per layer, slow
    with the suite's 8 simulated devices competing for BLAS threads): zeros of its
    shapes for the shape-only templates."""

    def hippo(ssm_size, blocks):
        p = ssm_size // 2
        return (
            np.zeros(p, complex),
            np.zeros((ssm_size, p), complex),
            np.zeros((p, ssm_size), complex),
        )

    monkeypatch.setattr("eqvid.nn._convs5.hippo_block_init", hippo)


@pytest.mark.usefixtures("shapes_only_hippo")
@pytest.mark.parametrize(
    "name,family,preset,vqgan",
    [
        ("mnist300_convS5_novq", "convs5", "mnist-300", None),
        ("dmlab_convs5", "convs5-latent", "dmlab", "teco-dmlab"),
        ("dmlab_teco_convS5", "teco-convs5", "dmlab", "teco-dmlab"),
        ("habitat_teco_convS5", "teco-convs5", "habitat", "teco-habitat-128"),
        ("minecraft_teco_convS5", "teco-convs5", "minecraft", "teco-minecraft-128"),
        ("dmlab_teco_transformer", "teco", "dmlab", "teco-dmlab"),
    ],
)
def test_the_converter_expects_the_released_trees(name, family, preset, vqgan):
    """For each released preset, the Flax arrays the converter reads are exactly those
    of the original's tree (paths and shapes)."""
    want, _ = released_trees()[name]
    if vqgan is None:
        got = flax_parameter_shapes(ConvS5Config.preset(preset))
    else:
        vq, tok = _shape_only_vqgan(vqgan)
        config = dataclasses.replace(model_spec(family).preset(preset), frame_size=vq.frame_size)
        got = flax_parameter_shapes(config, tokenizer=tok)
    assert got == want


# ------------------------------------------------------------------ writing checkpoints


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
    """Flax's `msgpack_serialize`: ndarrays as ExtType 1 `(shape, dtype name, C bytes)`,
    NumPy scalars as ExtType 3."""

    def ext(x):
        if isinstance(x, np.ndarray | np.generic):
            a = np.asarray(x)
            payload = msgpack.packb((a.shape, a.dtype.name, a.tobytes("C")), use_bin_type=True)
            return msgpack.ExtType(1 if isinstance(x, np.ndarray) else 3, payload)
        raise TypeError(type(x))

    return msgpack.packb(tree, default=ext, strict_types=True)


def write_run(folder, flat, *, step=250_000, model=None, older=True, chunked=()):
    """A run's folder as the originals' train.py leaves it: `checkpoints/checkpoint_<step>`
    (a TrainState: step, params, Adam's opt_state, empty model_state), an older
    checkpoint with other weights, and the pickled `args` if `model` is given. The arrays
    named in `chunked` are written in Flax's chunked form (as arrays over 1 GiB are)."""
    (folder / "checkpoints").mkdir(parents=True)
    written = dict(flat)
    for name in chunked:
        a = flat[name]
        written[name] = {
            "__msgpack_chunked_array__": True,
            "shape": {str(i): n for i, n in enumerate(a.shape)},
            "chunks": {str(i): c for i, c in enumerate(np.array_split(a.reshape(-1), 3))},
        }
    params = _nest(written)["params"]
    zeros = _nest({k: np.zeros_like(v) for k, v in flat.items()})["params"]
    tree = {
        "step": np.int64(step),
        "params": params,
        "opt_state": {"0": {"count": np.int32(step), "mu": zeros, "nu": zeros}, "1": {},
                      "2": {"count": np.int32(step)}},
        "model_state": {},
    }  # fmt: skip
    (folder / "checkpoints" / f"checkpoint_{step}").write_bytes(_flax_msgpack(tree))
    if older:
        old = {**tree, "step": np.int64(step // 2), "params": zeros}
        (folder / "checkpoints" / f"checkpoint_{step // 2}").write_bytes(_flax_msgpack(old))
    if model is not None:
        (folder / "args").write_bytes(pickle.dumps(Namespace(model=model, seed=1)))
    return folder


def random_params(tree, seed):
    """Weights at trained-like scales: norm scales near 1, biases near 0, kernels with
    unit fan-in variance, SSM eigenvalues and steps in their ranges."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, shape in tree.items():
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "scale":
            a = 1 + 0.2 * rng.standard_normal(shape)
        elif leaf in ("bias", "d_0", "d_1", "sos", "sos_post", "token_embed", "codebook"):
            a = 0.3 * rng.standard_normal(shape)
        elif leaf == "Lambda_re":
            a = rng.uniform(-0.8, 0.05, shape)  # some > -1e-4: clip_eigs clamps them
        elif leaf == "Lambda_im":
            a = rng.uniform(-30, 30, shape)
        elif leaf == "log_step":
            a = rng.uniform(np.log(1e-3), np.log(1e-1), shape)
        elif leaf in ("B", "C"):
            a = rng.standard_normal(shape) / math.sqrt(
                math.prod(shape[:-2]) if leaf == "C" else shape[1]
            )
        elif leaf == "embedding":
            a = rng.standard_normal(shape)
        else:  # kernels: fan-in = all axes but the last (DenseGeneral out: heads · head_dim)
            a = rng.standard_normal(shape) / math.sqrt(math.prod(shape[:-1]))
            if "/query/" in path or "/key/" in path or "/value/" in path:
                a = rng.standard_normal(shape) / math.sqrt(shape[0])
        out[path] = np.asarray(a, np.float32)
    return out


# ------------------------------------------------------------------ NumPy re-statements


def conv(x, k, b=None, stride=1, padding="SAME"):
    """Flax `nn.Conv`: cross-correlation of NHWC with an HWIO kernel (any leading axes)."""
    kh, kw = k.shape[:2]
    if padding == "SAME":
        pad = [(0, 0)] * (x.ndim - 3) + [(kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)]
        x = np.pad(x, pad)
    h = (x.shape[-3] - kh) // stride + 1
    w = (x.shape[-2] - kw) // stride + 1
    terms = []
    for i in range(kh):
        for j in range(kw):
            patch = x[
                ..., i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride, :
            ]
            terms.append(patch @ k[i, j])
    out = np.sum(terms, axis=0)
    return out if b is None else out + b


def conv_transpose(x, k, stride):
    """Flax `nn.ConvTranspose(padding='VALID')` = `lax.conv_transpose(transpose_kernel=False)`:
    the input dilated by the stride, padded by `k - 1` on each side (plus `max(s - k, 0)`
    at the end), cross-correlated with the kernel as stored."""
    kh = k.shape[0]
    *lead, h, w, c = x.shape
    dil = np.zeros((*lead, (h - 1) * stride + 1, (w - 1) * stride + 1, c), x.dtype)
    dil[..., ::stride, ::stride, :] = x
    extra = max(stride - kh, 0)
    pad = [(0, 0)] * len(lead) + [(kh - 1, kh - 1 + extra), (kh - 1, kh - 1 + extra), (0, 0)]
    return conv(np.pad(dil, pad), k, padding="VALID")


def group_norm(x, scale, bias, groups=32, eps=1e-6):
    *lead, h, w, c = x.shape
    g = x.reshape(*lead, h, w, groups, c // groups)
    mean = g.mean(axis=(-4, -3, -1), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(-4, -3, -1), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = np.maximum((x**2).mean(-1, keepdims=True) - mean**2, 0)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def gelu(x):  # flax nn.gelu: the tanh approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Ref:
    """The originals' modules on a file's weights `p` (float64)."""

    def __init__(self, p):
        self.p = {k: np.asarray(v, np.float64) for k, v in p.items()}

    def __getitem__(self, k):
        return self.p[k]

    def has(self, k):
        return k in self.p

    def conv(self, pre, x, **kw):
        return conv(x, self[f"{pre}/kernel"], self.p.get(f"{pre}/bias"), **kw)

    def dense(self, pre, x):
        y = x @ self[f"{pre}/kernel"]
        return y + self[f"{pre}/bias"] if self.has(f"{pre}/bias") else y

    def gn(self, pre, x):
        return group_norm(x, self[f"{pre}/scale"], self[f"{pre}/bias"])

    def ln(self, pre, x):
        return layer_norm(x, self[f"{pre}/scale"], self[f"{pre}/bias"])

    def resnet_block(self, pre, x):
        skip = self.conv(f"{pre}/skip", x) if self.has(f"{pre}/skip/kernel") else x
        h = self.conv(f"{pre}/Conv_0", elu(self.gn(f"{pre}/GroupNorm_0", x)))
        h = self.conv(f"{pre}/Conv_1", elu(self.gn(f"{pre}/GroupNorm_1", h)))
        return skip + 0.1 * (h + self[f"{pre}/AddBias_0/bias"])

    def blocks(self, pre):
        return sorted({int(k[len(pre) :].split("/")[0]) for k in self.p if k.startswith(pre)})

    def encoder(self, pre, x, blocks):
        x = self.resnet_block(f"{pre}/ResNetBlock_0", self.conv(f"{pre}/Conv_0", x))
        for i in self.blocks(f"{pre}/ResNetBlock_")[1:]:
            if (i - 1) % blocks == 0:  # avg_pool 2×2 before each later stage
                *lead, h, w, c = x.shape
                x = x.reshape(*lead, h // 2, 2, w // 2, 2, c).mean(axis=(-4, -2))
            x = self.resnet_block(f"{pre}/ResNetBlock_{i}", x)
        return x

    def decoder(self, pre, x, blocks):
        x = self.conv(f"{pre}/Conv_0", x)
        ids = self.blocks(f"{pre}/ResNetBlock_")
        for i in ids:
            x = self.resnet_block(f"{pre}/ResNetBlock_{i}", x)
            if (i + 1) % blocks == 0 and i + 1 < len(ids):  # nearest ×2 between stages
                x = np.repeat(np.repeat(x, 2, axis=-3), 2, axis=-2)
        return self.dense(f"{pre}/Dense_0", self.ln(f"{pre}/LayerNorm_0", x))

    def convs5_layer(self, pre, u, clip):
        """`SequenceLayer` over `u` (L, H, W, U) from the zero state: the ConvS5 SSM
        (ZOH; B̃ (P, U·k²) reshaped (P, U, k, k) → HWIO), the resnet C/D block, post-LN."""
        s = f"{pre}/seq"
        re = np.minimum(self[f"{s}/Lambda_re"], -1e-4) if clip else self[f"{s}/Lambda_re"]
        lam = re + 1j * self[f"{s}/Lambda_im"]
        delta = np.exp(self[f"{s}/log_step"][:, 0])
        lam_bar = np.exp(lam * delta)
        b = self[f"{s}/B"][..., 0] + 1j * self[f"{s}/B"][..., 1]
        b_bar = ((lam_bar - 1) / lam)[:, None] * b
        p, uk = b.shape
        k = round(math.sqrt(uk / u.shape[-1]))
        b_bar = b_bar.reshape(p, u.shape[-1], k, k).transpose(2, 3, 1, 0)
        c = self[f"{s}/C"][..., 0] + 1j * self[f"{s}/C"][..., 1]
        x = np.zeros(u.shape[1:3] + (p,), complex)
        ys = []
        for t in range(u.shape[0]):
            x = lam_bar * x + conv(u[t].astype(complex), b_bar)
            ys.append(2 * conv(x, c).real)
        y = np.stack(ys)
        cd = f"{s}/C_D_conv"
        h = self.conv(f"{cd}/Conv_0", gelu(self.gn(f"{cd}/GroupNorm_0", y)))
        h = self.conv(f"{cd}/Conv_1", gelu(self.gn(f"{cd}/GroupNorm_1", h)))
        y = gelu(y + h)
        return self.ln(f"{pre}/norm", u + y)

    def attention(self, pre, x, mask):
        q, k, v = (
            np.einsum("nw,whd->nhd", x, self[f"{pre}/{n}/kernel"]) + self[f"{pre}/{n}/bias"]
            for n in ("query", "key", "value")
        )
        logits = np.einsum("qhd,khd->hqk", q / math.sqrt(q.shape[-1]), k)
        if mask is not None:
            logits = logits + np.where(mask, 0.0, -1e10)
        out = np.einsum("hqk,khd->qhd", softmax(logits), v)
        return (
            np.einsum("qhd,hdw->qw", out, self[f"{pre}/out/kernel"]) + self[f"{pre}/out_bias/bias"]
        )

    def transformer_layer(self, pre, x, mask):
        h = x + self.attention(
            f"{pre}/MultiHeadAttention_0", self.ln(f"{pre}/LayerNorm_0", x), mask
        )
        y = self.dense(f"{pre}/MlpBlock_0/wi", self.ln(f"{pre}/LayerNorm_1", h))
        y = y / (1 + np.exp(-1.702 * y))  # gelu2
        y = y @ self[f"{pre}/MlpBlock_0/wo/kernel"] + self[f"{pre}/MlpBlock_0/wo_bias/bias"]
        return h + y

    def transformer_trunk(self, pre, x, mask):
        for i in self.blocks(f"{pre}/TransformerLayer_"):
            x = self.transformer_layer(f"{pre}/TransformerLayer_{i}", x, mask)
        return self.ln(f"{pre}/LayerNorm_0", gelu(self.dense(f"{pre}/Dense_1", x)))


def ref_convs5(r, x, actions, *, clip, dec_blocks):
    """`CONVS5(_NOVQ).condition` + the decoder: per-frame encoder features of `x`
    (T, H, W, C), frame j's concatenated with the embedding of action j + 1 (tiled;
    -1 is the table's last row, as `jnp.take` wraps), `action_conv`, the ConvS5 stack
    from the zero state, the decoder: outputs for frames 1…T-1."""
    feats = r.encoder("params/encoder", x, 1)
    act = r["params/action_embeds/embedding"][np.asarray(actions)]
    act = np.broadcast_to(act[:, None, None], feats.shape[:-1] + act.shape[-1:])
    u = r.conv("params/action_conv/Conv_0", np.concatenate([feats[:-1], act[1:]], -1))
    for i in r.blocks("params/sequence_model/layers_"):
        u = r.convs5_layer(f"params/sequence_model/layers_{i}", u, clip)
    return r.decoder("params/decoder", u, dec_blocks)


def ref_mnist(p, video, *, clip=True):
    """`CONVS5_NOVQ.__call__`'s predictions (use_actions False: action 0 everywhere):
    frames 1…T-1 from 0…T-2, `tanh(decoder(...))`."""
    actions = np.zeros(len(video), int)
    return np.tanh(ref_convs5(Ref(p), video, actions, clip=clip, dec_blocks=1))


def ref_mnist_rollout(p, context, n):
    """The original's sampler: the context, then each prediction fed back as the next
    frame (a re-run from the zero state is the same recurrence)."""
    frames = list(np.asarray(context, np.float64))
    for _ in range(n):
        video = np.stack(frames + [frames[-1]])  # the last entry is never an input
        frames.append(ref_mnist(p, video)[-1])
    return np.stack(frames[len(context) :])


# ------------------------------------------------------------------ Moving MNIST ConvS5

TINY_MNIST = ConvS5Config(
    frame_size=8, channels=1, encoder_depths=(32, 64), d_model=32, ssm_size=8, n_layers=2
)
TINY_MNIST_YAML = dict(channels=1, depths=[32, 64], d_model=32, ssm_size=8, n_layers=2,
                       action_dim=1, action_embed_dim=1)  # fmt: skip


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    params = random_params(mnist_tree(TINY_MNIST_YAML), seed=0)
    folder = write_run(
        tmp_path_factory.mktemp("mnist") / "mnist_300",
        params,
        model="convS5_noVQ",
        chunked=["params/sequence_model/layers_0/seq/B"],
    )
    return folder, params


def test_convs5_mnist_gives_the_originals_outputs(mnist_run, tmp_path):
    folder, params = mnist_run
    result = convert_convs5_mnist(folder, tmp_path / "out", config=TINY_MNIST)
    assert result.step == 250_000 and result.preset is None
    assert result.tensors == len(params) and result.parameters == sum(
        a.size for a in params.values()
    )
    model = load_model(result.folder)
    assert isinstance(model, ConvS5VideoModel) and model.config == TINY_MNIST
    video = np.random.default_rng(1).uniform(-1, 1, (5, 8, 8, 1)).astype(np.float32)
    want = ref_mnist(params, video)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(video))), want, atol=2e-5, rtol=1e-4)
    # Actions are ignored, as the original (use_actions False) ignored them.
    acted = model(jnp.asarray(video), jnp.asarray([0, -1, 0, 0, -1], jnp.int32))
    np.testing.assert_allclose(np.asarray(acted), want, atol=2e-5, rtol=1e-4)
    # Generation: O(1) steps from the context's states = the original's closed loop.
    got = model.generate(jnp.asarray(video[:3]), 3, key=jax.random.key(0))
    np.testing.assert_allclose(np.asarray(got), ref_mnist_rollout(params, video[:3], 3), atol=5e-5)


def test_convs5_mnist_cli_step_and_preset(mnist_run, tmp_path, capsys, monkeypatch):
    folder, params = mnist_run
    monkeypatch.setitem(CONVS5_PRESETS, "tiny-test", TINY_MNIST)
    out = tmp_path / "cli"
    argv = ["convs5-mnist", str(folder), "--out", str(out), "--preset", "tiny-test"]
    assert convert_main(argv) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "step 250,000" in text and "'tiny-test'" in text
    video = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
    model = load_model(out)
    assert isinstance(model, ConvS5VideoModel)
    np.testing.assert_allclose(model(video), ref_mnist(params, np.asarray(video)), atol=2e-5)
    # --step: the older checkpoint (zero weights) from the checkpoints/ folder.
    assert convert_main(argv[:1] + [str(folder / "checkpoints"), "--out", str(tmp_path / "old"),
                                    "--preset", "tiny-test", "--step", "125000"]) == 0  # fmt: skip
    old = load_model(tmp_path / "old")
    assert isinstance(old, ConvS5VideoModel)
    assert not np.any(np.asarray(old.layers[0].C))
    assert convert_main(argv[:2] + ["--out", str(tmp_path / "x"), "--preset", "tiny-test",
                                    "--step", "7"]) == 1  # fmt: skip
    assert "no checkpoint of step 7; it has steps [125000, 250000]" in capsys.readouterr().err


@pytest.mark.usefixtures("shapes_only_hippo")  # only templates are built
def test_convs5_mnist_wrong_files_name_the_array(mnist_run, tmp_path):
    folder, params = mnist_run
    ckpt = folder / "checkpoints" / "checkpoint_250000"
    # A released preset the file is not of: the first mismatch, with both shapes.
    with pytest.raises(ConversionError) as info:
        convert_convs5_mnist(folder, tmp_path / "a", preset="mnist-300")
    assert str(ckpt) in str(info.value)
    assert "`params/encoder/Conv_0/kernel` has shape [3, 3, 1, 32], expected [3, 3, 1, 64]" in str(
        info.value
    )
    # No preset: it fits neither released one.
    with pytest.raises(
        ConversionError, match=r"fits none of the released .*'mnist-300': .*'mnist-600'"
    ):
        convert_convs5_mnist(folder, tmp_path / "b")
    # Missing and unexpected arrays.
    gone = "params/sequence_model/layers_1/seq/B"
    partial = {k: v for k, v in params.items() if k != gone}
    run = write_run(tmp_path / "partial", partial, older=False)
    with pytest.raises(
        ConversionError, match=rf"`{gone}` is missing \(expected shape \[4, 288, 2\]\)"
    ):
        convert_convs5_mnist(run, tmp_path / "c", config=TINY_MNIST)
    extra = dict(params, **{"params/sequence_model/layers_2/norm/scale": np.ones(32, np.float32)})
    run = write_run(tmp_path / "extra", extra, older=False)
    with pytest.raises(
        ConversionError,
        match=r"unexpected array `params/sequence_model/layers_2/norm/scale` \[32\]",
    ):
        convert_convs5_mnist(run, tmp_path / "d", config=TINY_MNIST)
    # Another model's run (its args say so), not a checkpoint, no checkpoint at all.
    run = write_run(tmp_path / "teco_run", params, model="teco_convS5", older=False)
    with pytest.raises(ConversionError, match=r"args: the run is a `teco_convS5` model"):
        convert_convs5_mnist(run, tmp_path / "e", config=TINY_MNIST)
    (tmp_path / "junk" / "checkpoints").mkdir(parents=True)
    (tmp_path / "junk" / "checkpoints" / "checkpoint_1").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(ConversionError, match="not a Flax msgpack checkpoint"):
        convert_convs5_mnist(tmp_path / "junk", tmp_path / "f", config=TINY_MNIST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no Flax checkpoint file"):
        convert_convs5_mnist(tmp_path / "empty", tmp_path / "g", config=TINY_MNIST)
    with pytest.raises(ConversionError, match="pixel_patch"):
        convert_convs5_mnist(folder, tmp_path / "h", preset="small")
    arrays, path, step = read_flax_checkpoint(ckpt)
    assert path == ckpt and step == 250_000 and set(arrays) == set(params)


# ------------------------------------------------------------------ TECO and TECO-ConvS5

TOKENIZER = dataclasses.replace(VQGAN2DConfig.preset("small"), frame_size=32, perceptual_weight=0.0)
"""32×32 grey frames → 8×8 codes of 256, code vectors of 32."""

TINY_TECO = dict(
    embedding_dim=16, action_dim=3, action_embed_dim=4, enc_depths=[32, 64], enc_blocks=1,
    dec_depths=[32, 64], dec_blocks=2, n_codes=12, proj_dim=8,
    git=dict(vocab_dim=16, width=32, heads=2, mlp=48, layers=1),
)  # fmt: skip
_Config = TypeVar("_Config", bound=TECOConfig)


def tiny_teco(cls: type[_Config], **kw: Any) -> _Config:
    """The eqvid config of `TINY_TECO`, plus the temporal model's fields `kw`."""
    return cls(
        encoder_depths=(32, 64), encoder_blocks=1, decoder_depths=(32, 64), decoder_blocks=2,
        embedding_dim=16, codebook_size=12, codebook_dim=8, action_dim=3, action_embed_dim=4,
        maskgit_vocab_dim=16, maskgit_width=32, maskgit_mlp_dim=48, maskgit_heads=2,
        maskgit_layers=1, max_frames=8, **kw,
    )  # fmt: skip


TINY_TRANSFORMER = dict(
    TINY_TECO, temporal="transformer", z_ds=2, width=32, heads=2, mlp=40, n_layers=2
)
TINY_CONVS5 = dict(TINY_TECO, temporal="convs5", d_model=32, ssm_size=8, n_layers=2)
TECO_CONFIG = tiny_teco(TECOConfig, patch_size=2, width=32, mlp_dim=40, n_heads=2, n_layers=2)
TECO_CONVS5_CONFIG = tiny_teco(TECOConvS5Config, d_model=32, ssm_size=8, ssm_blocks=1, n_layers=2)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    model, state = make_model(TOKENIZER, key=jax.random.key(0))
    model = model.with_state(state)
    assert isinstance(model, VQGAN2D)
    return save_tokenizer(model, tmp_path_factory.mktemp("tok") / "vqgan")


def teco_run(tmp_path, original, *, model):
    params = random_params(teco_tree(original, e=32, nc=256, s=8), seed=3)
    return write_run(tmp_path / "run", params, model=model), params


ATOL, RTOL = 5e-5, 2e-4


def check_teco_pieces(model, p, original):
    """The converted TECO's pieces against the original's, on the file's weights."""
    r = Ref(p)
    rng = np.random.default_rng(4)
    e, emb, ea = 32, original["embedding_dim"], original["action_embed_dim"]
    np.testing.assert_array_equal(model.sos_post, p["params/sos_post"])
    # Posterior encoder: [previous, current] code vectors (2E) → ResNetEncoder → Dense.
    x = rng.standard_normal((3, 8, 8, 2 * e))
    want = r.dense("params/encoder/layers_1", r.encoder("params/encoder/layers_0", x, 1))
    np.testing.assert_allclose(
        model.encoder_out(model.encoder(jnp.asarray(x, jnp.float32))), want, atol=ATOL, rtol=RTOL
    )
    # Codebook: quantisation in the normalised projected space, lookup = proj_out(ĉ[idx]).
    book = r["params/codebook/codebook"]
    book = book / np.linalg.norm(book, axis=-1, keepdims=True)
    z = rng.standard_normal((4, 4, emb))
    zp = r.dense("params/codebook/Dense_0", z)
    zp = zp / np.linalg.norm(zp, axis=-1, keepdims=True)
    codes = np.argmin(2 - 2 * zp @ book.T, axis=-1)
    np.testing.assert_array_equal(model.codebook(jnp.asarray(z, jnp.float32))[1], codes)
    np.testing.assert_allclose(
        model.codebook.lookup(jnp.asarray(codes)),
        r.dense("params/codebook/Dense_1", book[codes]),
        atol=ATOL,
        rtol=RTOL,
    )
    # Actions: the original's row a, its row A (-1 wraps around) for no action.
    table = p["params/action_embeds/embedding"]
    ids = jnp.arange(-1, original["action_dim"], dtype=jnp.int32)
    np.testing.assert_array_equal(
        embed_actions(model.action_embedding, ids), table[np.asarray(ids)]
    )
    # The temporal model over inputs [latent_j, action_{j+1}] (n, 4, 4, emb + ea).
    inputs = rng.standard_normal((5, 4, 4, emb + ea))
    if original["temporal"] == "transformer":
        s = original["z_ds"]
        tokens = r.conv("params/z_proj", inputs, stride=s, padding="VALID")  # (n, g, g, W)
        n, g, _, w = tokens.shape
        slots = np.concatenate([r["params/sos"][None], tokens]).reshape(-1, w)
        h = r.dense("params/z_tfm/Dense_0", slots)
        pos = np.arange(len(h))[:, None] / 10000 ** (np.arange(0, w, 2) / w)
        h = h + np.concatenate([np.sin(pos), np.cos(pos)], -1)
        mask = np.tril(np.ones((n + 1, n + 1), bool)).repeat(g * g, 0).repeat(g * g, 1)
        h = r.transformer_trunk("params/z_tfm", h, mask).reshape(n + 1, g, g, w)[1:]  # n_cond = 1
        deter = conv_transpose(h, r["params/z_unproj/kernel"], s)
    else:
        deter = r.conv("params/action_conv/Conv_0", inputs)
        for i in range(original["n_layers"]):
            deter = r.convs5_layer(f"params/sequence_model/layers_{i}", deter, clip=False)
    got = model.temporal(jnp.asarray(inputs, jnp.float32))
    np.testing.assert_allclose(got, deter, atol=ATOL, rtol=RTOL)
    # MaskGit logits: token_embed ([MASK] = -1 → row K), cond concatenated, broadcast
    # positions, bidirectional layers, weight-tied MLM head.
    k = original["n_codes"]
    tokens = rng.integers(-1, k, (4, 4))
    cond = deter[2]
    emb_tok = r["params/z_git/token_embed"][tokens]
    h = r.dense("params/z_git/net/Dense_0", np.concatenate([emb_tok, cond], -1))
    d0, d1 = (
        r["params/z_git/net/BroadcastPositionBiases_0/d_0"],
        r["params/z_git/net/BroadcastPositionBiases_0/d_1"],
    )
    h = h + np.concatenate([np.broadcast_to(d0[:, None], (4, 4, d0.shape[1])),
                            np.broadcast_to(d1[None, :], (4, 4, d1.shape[1]))], -1)  # fmt: skip
    h = r.transformer_trunk("params/z_git/net", h.reshape(16, -1), None)
    m = r.ln("params/z_git/mlm/LayerNorm_0", gelu(r.dense("params/z_git/mlm/Dense_0", h)))
    logits = m @ r["params/z_git/token_embed"][:k].T + r["params/z_git/mlm/AddBias_0/bias"]
    got = model.prior(jnp.asarray(tokens, jnp.int32), jnp.asarray(cond, jnp.float32))
    np.testing.assert_allclose(got, logits.reshape(4, 4, k), atol=ATOL, rtol=RTOL)
    # Decoder logits over the tokenizer's codes from [deter, z].
    zs = rng.standard_normal((2, 4, 4, emb))
    want = r.decoder("params/decoder", np.concatenate([deter[:2], zs], -1), original["dec_blocks"])
    got = model.decoder(jnp.asarray(np.concatenate([deter[:2], zs], -1), jnp.float32))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("temporal", ["transformer", "convs5"])
def test_teco_every_array_lands_where_the_original_uses_it(temporal, tokenizer_folder, tmp_path):
    original = TINY_TRANSFORMER if temporal == "transformer" else TINY_CONVS5
    name = "teco" if temporal == "transformer" else "teco_convS5"
    run, params = teco_run(tmp_path, original, model=name)
    if temporal == "transformer":
        result = convert_teco_model(
            run, tmp_path / "out", tokenizer=tokenizer_folder, config=TECO_CONFIG
        )
    else:
        result = convert_teco_convs5(
            run, tmp_path / "out", tokenizer=tokenizer_folder, config=TECO_CONVS5_CONFIG
        )
    assert result.tensors == len(params)
    model = load_model(result.folder)
    assert isinstance(model, TECO)
    c = model.config
    assert c.tokenizer == str(tokenizer_folder.resolve()) and (c.frame_size, c.channels) == (32, 1)
    check_teco_pieces(model, params, original)
    # The frozen tokenizer is the folder's, arrays included.
    tokenizer = load_tokenizer(tokenizer_folder)
    for a, b in zip(jax.tree.leaves(model.tokenizer), jax.tree.leaves(tokenizer), strict=True):
        np.testing.assert_array_equal(a, b)


def test_teco_cli_and_wrong_files(tokenizer_folder, tmp_path, capsys, monkeypatch):
    run, params = teco_run(tmp_path, TINY_TRANSFORMER, model="teco")
    monkeypatch.setitem(TECO_PRESETS, "tiny-test", TECO_CONFIG)
    monkeypatch.setitem(TECO_CONVS5_PRESETS, "tiny-test", TECO_CONVS5_CONFIG)
    out = tmp_path / "cli"
    argv = [
        "teco",
        str(run),
        "--out",
        str(out),
        "--preset",
        "tiny-test",
        "--tokenizer",
        str(tokenizer_folder),
    ]
    assert convert_main(argv) == 0
    text = capsys.readouterr().out
    assert "z_unproj kernel flipped" in text and "rolled" in text
    model = load_model(out)
    assert isinstance(model, TECO) and isinstance(model.temporal, TransformerCore)
    np.testing.assert_array_equal(
        model.temporal.transformer.unpatch_weight, params["params/z_unproj/kernel"][::-1, ::-1]
    )
    # TECO's file as a TECO-ConvS5: its args say so; without them, the first missing array.
    assert convert_main(["teco-convs5", *argv[1:]]) == 1
    assert "the run is a `teco` model, not a ConvSSM TECO-ConvS5" in capsys.readouterr().err
    (run / "args").unlink()
    with pytest.raises(ConversionError) as info:
        convert_teco_convs5(run, tmp_path / "b", tokenizer=tokenizer_folder, preset="tiny-test")
    assert "`params/action_conv/Conv_0/kernel` is missing (expected shape [1, 1, 20, 32])" in str(
        info.value
    )
    assert str(run / "checkpoints" / "checkpoint_250000") in str(info.value)
    # The released presets do not fit this tiny tree (named per preset); no tokenizer.
    with pytest.raises(
        ConversionError, match=r"fits none of the released TECO .*'dmlab': .*'kinetics600'"
    ):
        convert_teco_model(run, tmp_path / "c", tokenizer=tokenizer_folder)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        convert_video_checkpoint("teco", run, tmp_path / "d", preset="tiny-test")
    assert (
        convert_main(argv[:2] + ["--out", str(tmp_path / "e"), "--tokenizer", str(tmp_path)]) == 1
    )
    assert "neither a tokenizer folder" in capsys.readouterr().err


# ------------------------------------------------------------------ latent ConvS5 (VQ)

TINY_LATENT = dict(enc_depths=[32], dec_depths=[64], dec_blocks=2, d_model=32, ssm_size=8,
                   n_layers=2, action_dim=3, action_embed_dim=4)  # fmt: skip
LATENT_CONFIG = LatentConvS5Config(
    encoder_depths=(32,), decoder_depths=(64,), decoder_blocks=2, d_model=32, ssm_size=8,
    n_layers=2, action_dim=3, action_embed_dim=4,
)  # fmt: skip


def latent_run(tmp_path, args=None):
    """A tiny `convS5` run on `TOKENIZER`'s 8×8 grid of 256 codes of 32 channels; `args`
    pickled beside it (default: `model: convS5`)."""
    params = random_params(latent_tree(TINY_LATENT, e=32, nc=256), seed=6)
    run = write_run(tmp_path / "convs5_run", params, older=False)
    args = Namespace(model="convS5", seed=1) if args is None else args
    (run / "args").write_bytes(pickle.dumps(args))
    return run, params


def test_convs5_latent_gives_the_originals_logits(tokenizer_folder, tmp_path):
    run, params = latent_run(tmp_path)
    result = convert_convs5_latent(
        run, tmp_path / "out", tokenizer=tokenizer_folder, config=LATENT_CONFIG
    )
    assert result.tensors == len(params) and result.preset is None
    model = load_model(result.folder)
    assert isinstance(model, LatentVideoModel)
    c = model.config
    assert c == dataclasses.replace(
        LATENT_CONFIG, tokenizer=str(tokenizer_folder.resolve()), frame_size=32, channels=1
    )
    # Teacher forcing over 4 frames of codes; the actions include -1 (no action).
    rng = np.random.default_rng(7)
    codes = jnp.asarray(rng.integers(0, 256, (4, 8, 8)), jnp.int32)
    actions = jnp.asarray([2, -1, 0, 2], jnp.int32)
    vectors = np.asarray(model.tokenizer.embed(codes))  # the VQGAN's lookup
    want = ref_convs5(Ref(params), vectors, actions, clip=False, dec_blocks=2)
    got = model.decoder(model.temporal(model._inputs(model._features(codes[:-1]), actions)))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    # The loss (evaluation: every frame): label-smoothed CE summed over the grid.
    labels = np.eye(256)[np.asarray(codes[1:])] * 0.99 + 0.01 / 256
    logp = want - want.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    loss, _, _ = model.codes_loss(codes[None], actions[None])
    np.testing.assert_allclose(loss, -(labels * logp).sum() / 3, rtol=1e-5)


@pytest.mark.usefixtures("shapes_only_hippo")  # the full presets: templates only
def test_convs5_latent_cli_presets_and_wrong_files(tokenizer_folder, tmp_path, capsys, monkeypatch):
    run, params = latent_run(
        tmp_path, Namespace(model="convS5", use_actions=True, causal_masking=True)
    )
    monkeypatch.setitem(LATENT_CONVS5_PRESETS, "tiny-test", LATENT_CONFIG)
    tok = ["--tokenizer", str(tokenizer_folder)]
    assert convert_main(["convs5-latent", str(run), "--out", str(tmp_path / "cli"),
                         "--preset", "tiny-test", *tok]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "ConvSSM latent ConvS5 (convS5) → ConvS5 (latent)" in text and "rolled" in text
    assert "causal masking" in text
    model = load_model(tmp_path / "cli")
    assert isinstance(model, LatentVideoModel)
    assert model.config.causal_masking and model.config.open_loop_context == 144
    np.testing.assert_array_equal(
        model.action_embedding, np.roll(params["params/action_embeds/embedding"], 1, 0)
    )
    # DMLab's and Habitat's trees are alike: the run's drop_loss_rate decides, else dmlab.
    monkeypatch.setitem(LATENT_CONVS5_PRESETS, "dmlab", LATENT_CONFIG)
    monkeypatch.setitem(
        LATENT_CONVS5_PRESETS, "habitat", dataclasses.replace(LATENT_CONFIG, drop_loss_rate=0.9)
    )
    result = convert_convs5_latent(run, tmp_path / "a", tokenizer=tokenizer_folder)
    assert result.preset == "dmlab" and any("fits presets ['dmlab', 'habitat']" in n
                                            for n in result.notes)  # fmt: skip
    habitat, _ = latent_run(tmp_path / "h", Namespace(model="convS5", drop_loss_rate=0.9,
                                                      use_actions=False))  # fmt: skip
    result = convert_convs5_latent(habitat, tmp_path / "b", tokenizer=tokenizer_folder)
    assert result.preset == "habitat" and isinstance(result.config, LatentConvS5Config)
    assert not result.config.use_actions
    monkeypatch.undo()
    # The released presets do not fit this tiny tree: the first mismatch per preset.
    with pytest.raises(ConversionError) as info:
        convert_convs5_latent(run, tmp_path / "c", tokenizer=tokenizer_folder)
    assert str(run / "checkpoints" / "checkpoint_250000") in str(info.value)
    assert (
        "'dmlab': `params/encoder/Conv_0/kernel` has shape [3, 3, 32, 32], expected "
        "[3, 3, 32, 256]" in str(info.value)
    )
    # TECO-ConvS5's file (no args): the first array the latent ConvS5 reads is missing.
    teco, _ = teco_run(tmp_path / "t", TINY_CONVS5, model="teco_convS5")
    with pytest.raises(ConversionError, match=r"args: the run is a `teco_convS5` model"):
        convert_convs5_latent(
            teco, tmp_path / "d", tokenizer=tokenizer_folder, config=LATENT_CONFIG
        )
    (teco / "args").unlink()
    with pytest.raises(
        ConversionError, match=r"`params/encoder/Conv_0/kernel` is missing \(expected shape "
        r"\[3, 3, 32, 32\]\) \(and \d+ more\)"
    ):  # fmt: skip
        convert_convs5_latent(
            teco, tmp_path / "d", tokenizer=tokenizer_folder, config=LATENT_CONFIG
        )
    with pytest.raises(ValueError, match="needs its tokenizer"):
        convert_video_checkpoint("convs5-latent", run, tmp_path / "e", config=LATENT_CONFIG)
    with pytest.raises(TypeError, match="LatentConvS5Config"):  # or jaxtyping's check
        convert_video_checkpoint(
            "convs5-latent", run, tmp_path / "f", tokenizer=tokenizer_folder,
            config=LatentTransformerConfig.preset("small"),  # type: ignore[arg-type]
        )  # fmt: skip


# ------------------------------------------------------------------ model folders


def test_model_folders_round_trip_and_errors(tmp_path):
    model = make_model(TINY_MNIST, key=jax.random.key(5))[0]
    assert isinstance(model, ConvS5VideoModel)
    folder = save_model(model, tmp_path / "m", source="a test")
    meta = (folder / "model.json").read_text()
    assert '"format": "eqvid-model/1"' in meta and '"model_name": "convs5"' in meta
    assert '"encoder_depths": [\n      32,\n      64\n    ]' in meta
    loaded = load_model(folder)
    assert loaded.config == TINY_MNIST
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    # Arrays of another configuration: the first leaf that does not fit, both shapes.
    other = make_model(dataclasses.replace(TINY_MNIST, d_model=64), key=jax.random.key(0))[0]
    eqx.tree_serialise_leaves(folder / "model.eqx", other)
    with pytest.raises(
        ValueError,
        match=r"the array `project.weight` has shape \(1, 1, 65, 64\) .*needs \(1, 1, 65, 32\)",
    ):
        load_model(folder)
    data = save_model(model, tmp_path / "m2")
    blob = (data / "model.eqx").read_bytes()
    (data / "model.eqx").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_model(data)
    (data / "model.eqx").write_bytes(blob + blob[:200])
    with pytest.raises(ValueError, match="more arrays than the model"):
        load_model(data)
    (data / "model.eqx").unlink()
    with pytest.raises(FileNotFoundError, match="model.eqx does not exist"):
        load_model(data)
    (data / "model.json").write_text('{"format": "eqvid-tokenizer/1"}')
    with pytest.raises(ValueError, match="not an eqvid model file"):
        load_model(data)
    (data / "model.json").write_text(
        '{"format": "eqvid-model/1", "model_name": "convs5", "model": {"depth": 3}}'
    )
    with pytest.raises(ValueError, match=r"model.json: ConvS5Config has no field\(s\) \['depth'\]"):
        load_model(data)
    (data / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        load_model(data)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    tok = eqx.filter_eval_shape(lambda: make_model(TOKENIZER, key=jax.random.key(0))[0])
    with pytest.raises(TypeError, match="save_model"):  # jaxtyping's check, or save_model's
        save_model(tok, tmp_path / "t")  # type: ignore[arg-type]
