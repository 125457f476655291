"""Synthetic TATS 3D VQGAN checkpoints and a NumPy re-computation of TATS's forward.

Both follow TATS's public code (`tats/tats_vqgan.py`, `tats/modules/codebook.py`,
`tats/modules/gan.py`), not eqvid's: the state-dict keys and shapes as TATS's modules
name them, written as a PyTorch Lightning checkpoint (`hyper_parameters = {'args':
argparse.Namespace}`) by the hand-made pickle writer of `test_torch_checkpoint.py`;
the forward in PyTorch's NCTHW layout with PyTorch's definitions of `F.pad`,
`Conv3d` and `ConvTranspose3d` (scatter form), BatchNorm in eval mode and GroupNorm.
"""

import collections
import contextlib
import math
from typing import Any

import numpy as np
import test_torch_checkpoint as ttc
from test_torch_checkpoint import Global, write_torch_zip


class Namespace:
    """An `argparse.Namespace` as pickle protocol 2 writes it: `argparse.Namespace`,
    NEWOBJ with no arguments, BUILD with its `__dict__`."""

    def __init__(self, **fields):
        self.fields = fields


@contextlib.contextmanager
def _namespace_pickling():
    original = ttc._ops

    def ops(obj, pid):
        if isinstance(obj, Namespace):
            cls = original(Global("argparse", "Namespace"), pid)
            return cls + b")\x81" + original(obj.fields, pid) + b"b"
        return original(obj, pid)

    ttc._ops = ops
    try:
        yield
    finally:
        ttc._ops = original


def tats_args(**overrides):
    """TATS's args Namespace fields of the tiny model (model, data and Trainer args)."""
    fields = dict(
        embedding_dim=8,
        n_codes=16,
        n_hiddens=8,
        lr=3e-4,
        downsample=[2, 4, 4],
        disc_channels=8,
        disc_layers=2,
        discriminator_iter_start=100,
        disc_loss_type="hinge",
        image_gan_weight=1.0,
        video_gan_weight=1.0,
        l1_weight=4.0,
        gan_feat_weight=4.0,
        perceptual_weight=4.0,
        i3d_feat=False,
        restart_thres=1.0,
        no_random_restart=True,
        norm_type="batch",
        padding_type="replicate",
        data_path="/data/ucf101",
        sequence_length=4,
        resolution=16,
        batch_size=2,
        num_workers=8,
        image_channels=3,
        sample_every_n_frames=1,
        gpus=8,
        max_steps=2_000_000,
        sync_batchnorm=True,
        default_root_dir="/ckpts",
    )
    fields.update(overrides)
    return fields


def _log2s(downsample):
    return [int(math.log2(d)) for d in downsample]


def tats_shapes(args):
    """TATS VQGAN state-dict keys and shapes, in module order, for the `args` fields."""
    out = []
    nh, c_img, dim = args["n_hiddens"], args["image_channels"], args["embedding_dim"]
    batch = args["norm_type"] == "batch"
    m = max(_log2s(args["downsample"]))

    def conv(p, cin, cout, k, sub="conv"):
        out.extend([(f"{p}.{sub}.weight", (cout, cin, k, k, k)), (f"{p}.{sub}.bias", (cout,))])

    def norm(p, c):
        out.extend([(f"{p}.weight", (c,)), (f"{p}.bias", (c,))])
        if batch:
            out.extend([(f"{p}.running_mean", (c,)), (f"{p}.running_var", (c,))])
            out.append((f"{p}.num_batches_tracked", ()))

    def res(p, c):
        norm(f"{p}.norm1", c)
        conv(f"{p}.conv1", c, c, 3)
        norm(f"{p}.norm2", c)
        conv(f"{p}.conv2", c, c, 3)

    conv("encoder.conv_first", c_img, nh, 3)
    for i in range(m):
        conv(f"encoder.conv_blocks.{i}.down", nh * 2**i, nh * 2 ** (i + 1), 4)
        res(f"encoder.conv_blocks.{i}.res", nh * 2 ** (i + 1))
    norm("encoder.final_block.0", nh * 2**m)
    norm("decoder.final_block.0", nh * 2**m)
    for i in range(m):
        cin = nh * 2**m if i == 0 else nh * 2 ** (m - i + 1)
        cout = nh * 2 ** (m - i)
        p = f"decoder.conv_blocks.{i}"
        out.extend(
            [(f"{p}.up.convt.weight", (cin, cout, 4, 4, 4)), (f"{p}.up.convt.bias", (cout,))]
        )
        res(f"{p}.res1", cout)
        res(f"{p}.res2", cout)
    conv("decoder.conv_last", nh * 2, c_img, 3)
    conv("pre_vq_conv", nh * 2**m, dim, 1)
    conv("post_vq_conv", dim, nh * 2**m, 1)
    n = args["n_codes"]
    out += [("codebook.embeddings", (n, dim)), ("codebook.N", (n,)), ("codebook.z_avg", (n, dim))]
    for kind, nd in (("image_discriminator", 2), ("video_discriminator", 3)):
        ndf, layers = args["disc_channels"], args["disc_layers"]
        k4 = (4,) * nd
        out += [(f"{kind}.model0.0.weight", (ndf, c_img, *k4)), (f"{kind}.model0.0.bias", (ndf,))]
        nf = ndf
        for j in range(1, layers + 1):
            prev, nf = nf, min(nf * 2, 512)
            out += [
                (f"{kind}.model{j}.0.weight", (nf, prev, *k4)),
                (f"{kind}.model{j}.0.bias", (nf,)),
            ]
            for stat in ("weight", "bias", "running_mean", "running_var"):
                out.append((f"{kind}.model{j}.1.{stat}", (nf,)))
            out.append((f"{kind}.model{j}.1.num_batches_tracked", ()))
        j = layers + 1
        out += [(f"{kind}.model{j}.0.weight", (1, nf, *k4)), (f"{kind}.model{j}.0.bias", (1,))]
    out.append(("perceptual_model.scaling_layer.shift", (1, 3, 1, 1)))
    out.append(("perceptual_model.lin0.model.1.weight", (1, 64, 1, 1)))
    return out


def tats_state(args, seed=0, restarted=(3, 7)):
    """Random weights at PyTorch-like scales; the codebook's `z_avg` is consistent with
    `N` and `embeddings` (`z_avg = embeddings · N̂`) except at the codes `restarted`."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    for key, shape in tats_shapes(args):
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(1234, np.int64)
        elif len(shape) >= 4:
            fan_in = (
                math.prod(shape[1:]) if ".convt." not in key else math.prod((shape[1], *shape[2:]))
            )
            bound = fan_in**-0.5
            state[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
        elif key.endswith("running_var") or key == "codebook.N":
            state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif key.endswith("running_mean"):
            state[key] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
        elif ("norm" in key or "final_block" in key or ".1." in key) and key.endswith("weight"):
            state[key] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif key.startswith("codebook."):
            state[key] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        else:
            state[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    n = state["codebook.N"].astype(np.float64)
    total = n.sum()
    smoothed = (n + 1e-7) / (total + len(n) * 1e-7) * total
    z_avg = state["codebook.embeddings"] * smoothed[:, None]
    for k in restarted:
        z_avg[k] += 1.0
    state["codebook.z_avg"] = z_avg.astype(np.float32)
    return state


def write_tats_ckpt(path, state, args, *, hyper_parameters=True):
    """A PyTorch Lightning 1.5 checkpoint of TATS's VQGAN around `state`."""
    first = next(iter(state.values()))
    ckpt = {
        "epoch": 1,
        "global_step": 29_999,
        "pytorch-lightning_version": "1.5.4",
        "state_dict": state,
        "callbacks": {},
        "optimizer_states": [
            {"state": {0: {"step": 3, "exp_avg": np.zeros_like(first)}}, "param_groups": []}
        ],
        "lr_schedulers": [],
    }
    if hyper_parameters:
        ckpt["hyper_parameters"] = {"args": Namespace(**args)}
    with _namespace_pickling():
        write_torch_zip(path, ckpt)


# ---------------------------------------------- NumPy reference (TATS, NCTHW, float64)

_NP_MODE: dict[str, Any] = {
    "replicate": "edge",
    "constant": "constant",
    "reflect": "reflect",
    "circular": "wrap",
}


def _same_pad(k, s):
    p = k - s
    return (p // 2 + p % 2, p // 2)


def pad3(x, kernel, stride, mode):
    """TATS's `F.pad(x, pad_input, mode)` of `SamePadConv3d` on `(C, T, H, W)`."""
    pads = [(0, 0)] + [_same_pad(k, s) for k, s in zip(kernel, stride)]
    return np.pad(x, pads, mode=_NP_MODE[mode])


def conv3d(x, w, b, stride=(1, 1, 1)):
    """`nn.Conv3d` (no padding): `(C, T, H, W)`, weight `(O, C, kT, kH, kW)`."""
    kt, kh, kw = w.shape[2:]
    to, ho, wo = ((n - k) // s + 1 for n, k, s in zip(x.shape[1:], (kt, kh, kw), stride))
    st, sh, sw = stride
    y = np.zeros((w.shape[0], to, ho, wo))
    for a in range(kt):
        for c in range(kh):
            for d in range(kw):
                patch = x[:, a : a + st * to : st, c : c + sh * ho : sh, d : d + sw * wo : sw]
                y += np.einsum("cthw,oc->othw", patch, w[:, :, a, c, d])
    return y + b[:, None, None, None]


def conv_transpose3d(x, w, b, stride, padding):
    """`nn.ConvTranspose3d` by its scatter definition: weight `(C, O, kT, kH, kW)`."""
    kernel = w.shape[2:]
    full = [(n - 1) * s + k for n, s, k in zip(x.shape[1:], stride, kernel)]
    y: Any = np.zeros((w.shape[1], *full))
    n_t, n_h, n_w = x.shape[1:]
    st, sh, sw = stride
    for a in range(kernel[0]):
        for c in range(kernel[1]):
            for d in range(kernel[2]):
                contrib = np.einsum("cthw,co->othw", x, w[:, :, a, c, d])
                y[:, a : a + st * n_t : st, c : c + sh * n_h : sh, d : d + sw * n_w : sw] += contrib
    p = padding
    y = y[:, p : y.shape[1] - p, p : y.shape[2] - p, p : y.shape[3] - p]
    return y + b[:, None, None, None]


def silu(x):
    return x / (1 + np.exp(-x))


class TatsReference:
    """TATS's VQGAN forward on a raw state dict (float64), one clip `(C, T, H, W)`."""

    def __init__(self, state, args):
        self.sd = {k: np.asarray(v, np.float64) for k, v in state.items()}
        self.args = args
        self.groups = args.get("num_groups", 32)
        n = _log2s(args["downsample"])
        self.strides = []
        for _ in range(max(n)):
            self.strides.append(tuple(2 if d > 0 else 1 for d in n))
            n = [d - 1 for d in n]

    def conv(self, p, x, stride=(1, 1, 1), mode="replicate"):
        w, b = self.sd[f"{p}.conv.weight"], self.sd[f"{p}.conv.bias"]
        return conv3d(pad3(x, w.shape[2:], stride, mode), w, b, stride)

    def convt(self, p, x, stride):
        w, b = self.sd[f"{p}.convt.weight"], self.sd[f"{p}.convt.bias"]
        x = pad3(x, w.shape[2:], stride, "replicate")
        return conv_transpose3d(x, w, b, stride, padding=w.shape[2] - 1)

    def norm(self, p, x):
        w = self.sd[f"{p}.weight"][:, None, None, None]
        b = self.sd[f"{p}.bias"][:, None, None, None]
        if self.args["norm_type"] == "batch":  # eval mode: the running statistics
            mean = self.sd[f"{p}.running_mean"][:, None, None, None]
            var = self.sd[f"{p}.running_var"][:, None, None, None]
            return (x - mean) / np.sqrt(var + 1e-5) * w + b
        c = x.shape[0]
        g = x.reshape(self.groups, c // self.groups, *x.shape[1:])
        mean = g.mean(axis=(1, 2, 3, 4), keepdims=True)
        var = g.var(axis=(1, 2, 3, 4), keepdims=True)
        return ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape) * w + b

    def res(self, p, x):
        h = self.conv(f"{p}.conv1", silu(self.norm(f"{p}.norm1", x)))
        h = self.conv(f"{p}.conv2", silu(self.norm(f"{p}.norm2", h)))
        return x + h

    def encoder(self, x):
        mode = self.args["padding_type"]
        h = self.conv("encoder.conv_first", x, mode=mode)
        for i, stride in enumerate(self.strides):
            h = self.conv(f"encoder.conv_blocks.{i}.down", h, stride, mode=mode)
            h = self.res(f"encoder.conv_blocks.{i}.res", h)
        return silu(self.norm("encoder.final_block.0", h))

    def latents(self, x):
        """`pre_vq_conv(encoder(x))` of a clip in TATS's `[-0.5, 0.5]`."""
        return self.conv("pre_vq_conv", self.encoder(x))

    def codes(self, z):
        """The codebook's nearest codes of `z` `(D, t, h, w)` and the sorted distances."""
        e = self.sd["codebook.embeddings"]
        flat = np.moveaxis(z, 0, -1)
        d = (flat**2).sum(-1)[..., None] - 2 * flat @ e.T + (e**2).sum(-1)
        return d.argmin(-1), np.sort(d, axis=-1)

    def decoder(self, h):
        h = silu(self.norm("decoder.final_block.0", h))
        for i, stride in enumerate(self.strides):
            p = f"decoder.conv_blocks.{i}"
            h = self.convt(f"{p}.up", h, stride)
            h = self.res(f"{p}.res1", h)
            h = self.res(f"{p}.res2", h)
        return self.conv("decoder.conv_last", h)

    def decode(self, codes):
        """TATS's `decode`: the clip `(C, T, H, W)` of codes `(t, h, w)`, unclamped."""
        e = np.moveaxis(self.sd["codebook.embeddings"][codes], -1, 0)
        return self.decoder(self.conv("post_vq_conv", e))
