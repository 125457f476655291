"""Converters of the released ConvSSM and TECO video-model checkpoints into eqvid model
folders (`save_model`), without Flax, TensorFlow or PyTorch.

Both codebases save a Flax 0.6 `TrainState` with `flax.training.checkpoints` as one
msgpack file, `checkpoints/checkpoint_<step>` (`step`, `params`, `opt_state`,
`model_state`); only `params` is read. Four kinds:

| kind | original | eqvid family (class) | released presets |
|---|---|---|---|
| `convs5-mnist` | NVlabs/ConvSSM `convS5_noVQ` (Moving MNIST) | `convs5` (`ConvS5VideoModel`) | `mnist-300`, `mnist-600` |
| `convs5-latent` | NVlabs/ConvSSM `convS5` (VQGAN codes) | `convs5-latent` (`LatentVideoModel`) | `dmlab` (configs: `minecraft`, `habitat`) |
| `teco` | wilson1yan/teco `TECO` (also ConvSSM's `teco_transformer`) | `teco` (`TECO`) | `dmlab`, `minecraft`, `habitat`, `kinetics600` |
| `teco-convs5` | NVlabs/ConvSSM `teco_convS5` | `teco-convs5` (`TECO`) | `dmlab`, `habitat`, `minecraft` |

The architecture is the preset's (or the `config` passed in); without one, the
released preset whose parameter tree the file holds is chosen. Every Flax array the
eqvid model needs is checked by name and shape, the first missing or mis-shaped one
is named with the file, and arrays under `params/` that the model has no place for are
refused. The models on codes (all but `convs5-mnist`) stand on a tokenizer folder
(TECO's VQGAN, converted with `python -m eqvid.models.convert_tokenizer teco`): the
config's `tokenizer` is its absolute path, `frame_size` and `channels` are the
tokenizer's.

**Layout changes** (Flax → eqvid):

- `Dense` kernels `(in, out)`, `Conv` kernels HWIO, `GroupNorm`/`LayerNorm`
  `scale`/`bias`: as they are (`weight`/`bias`); the ResNet decoders' `Dense_0` head is
  a `1 × 1` convolution (`(1, 1, in, out)`).
- Attention `DenseGeneral` q/k/v `(W, heads, head_dim)` + bias `(heads, head_dim)`,
  `out` `(heads, head_dim, W)` + `out_bias`: as they are.
- ConvS5 `B` `(P, U·k², 2)` (u-major: `B̃[p, u·k² + i·k + j]`) → `(k, k, U, P, 2)`;
  `C` `(k, k, P, U, 2)` as it is; `log_step` `(P, 1)` → `(P,)`.
- TECO's `z_unproj` (`ConvTranspose`, kernel = stride) reads its kernel flipped
  (`out[s·i + a, s·j + b] = x[i, j] @ K[s-1-a, s-1-b]`); eqvid's `unpatch_weight[a, b]`
  is `K[s-1-a, s-1-b]`. `sos` `(g, g, W)` → `start_token` `(g·g, W)`.
- Action tables: the original's row `A` is "no action" (`-1` wraps around); eqvid's
  `embed_actions` reads row 0 for -1 and row `a + 1` for action `a`, so the rows are
  rolled by one. The released Moving-MNIST models ran with `use_actions: False`, which
  embeds action 0 for every frame: every row of their table is the original's row 0
  (the converted model ignores actions, as the original did).
"""

import dataclasses
import mmap
import pathlib
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import msgpack
import numpy as np

from ..nn._resnet import ResNetBlock, ResNetDecoder, ResNetEncoder
from ..nn._temporal_core import ConvS5Core, TransformerCore
from ._convs5_video import ConvS5Config, ConvS5VideoModel
from ._latent_video import LatentConvS5Config, LatentVideoModel
from ._model_files import save_model
from ._registry import model_spec
from ._teco import TECO, TECOConfig, TECOConvS5Config
from ._tokenizer import AbstractVideoTokenizer
from ._tokenizer_converters import (
    ConversionError,
    _ArgsUnpickler,
    _flatten,
    _flax_ext,
    _fmt,
    _leaf_key,
    _unchunk,
)
from ._tokenizer_files import load_tokenizer

__all__ = [
    "CHECKPOINT_KINDS",
    "ConversionError",
    "ConvertedModel",
    "convert_convs5_latent",
    "convert_convs5_mnist",
    "convert_teco_convs5",
    "convert_teco_model",
    "convert_video_checkpoint",
    "flax_parameter_shapes",
    "read_flax_checkpoint",
]


@dataclasses.dataclass(frozen=True)
class _Kind:
    name: str
    family: str
    title: str
    released: tuple[str, ...]
    originals: tuple[str, ...]
    """The original's `model` names (its `args`/YAML `model` key) this kind converts."""


_KINDS = {
    k.name: k
    for k in (
        _Kind(
            "convs5-mnist",
            "convs5",
            "ConvSSM Moving-MNIST ConvS5 (convS5_noVQ)",
            ("mnist-300", "mnist-600"),
            ("convS5_noVQ",),
        ),
        _Kind(
            "convs5-latent",
            "convs5-latent",
            "ConvSSM latent ConvS5 (convS5)",
            ("dmlab", "minecraft", "habitat"),
            ("convS5",),
        ),
        _Kind(
            "teco",
            "teco",
            "TECO (wilson1yan/teco)",
            ("dmlab", "minecraft", "habitat", "kinetics600"),
            ("teco", "teco_transformer"),
        ),
        _Kind(
            "teco-convs5",
            "teco-convs5",
            "ConvSSM TECO-ConvS5 (teco_convS5)",
            ("dmlab", "habitat", "minecraft"),
            ("teco_convS5",),
        ),
    )
}

CHECKPOINT_KINDS: tuple[str, ...] = tuple(_KINDS)
"""The kinds `convert_video_checkpoint` takes: `"convs5-mnist"`, `"convs5-latent"`,
`"teco"`, `"teco-convs5"`."""


@dataclasses.dataclass(frozen=True)
class ConvertedModel:
    """What a checkpoint converter wrote."""

    folder: pathlib.Path
    """The model folder (`load_model(folder)` reads it)."""
    kind: str
    """The kind converted (`"convs5-mnist"`, `"convs5-latent"`, `"teco"`, `"teco-convs5"`)."""
    config: ConvS5Config | LatentConvS5Config | TECOConfig
    """The configuration of the converted model."""
    preset: str | None
    """The preset the configuration came from (None for a config passed in)."""
    checkpoint: pathlib.Path
    """The Flax checkpoint file read."""
    step: int | None
    """Its training step (None if the file does not say)."""
    tensors: int
    """How many arrays were taken from the checkpoint."""
    parameters: int
    """How many numbers they hold."""
    notes: tuple[str, ...] = ()
    """How arrays were rearranged or what was left out."""

    def summary(self) -> str:
        """A few lines for the command line."""
        kind = _KINDS[self.kind]
        spec = model_spec(self.config)
        where = f"preset {self.preset!r}" if self.preset else "the given config"
        step = "" if self.step is None else f", step {self.step:,}"
        lines = [
            f"wrote {self.folder} ({self.tensors} arrays, {self.parameters:,} numbers)",
            f"  from {self.checkpoint}{step}: {kind.title} → {spec.title} ({spec.name!r}, {where})",
        ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


# ------------------------------------------------------------------------------------
# Reading the Flax checkpoint.
# ------------------------------------------------------------------------------------


def _checkpoint_file(src: pathlib.Path, step: int | None) -> pathlib.Path:
    """The checkpoint file `src` names: the file itself, or `checkpoint_<step>` (the
    latest, or `step`) in `src/checkpoints/` or in `src`."""
    if src.is_file():
        if step is not None and src.name != f"checkpoint_{step}":
            raise FileNotFoundError(
                f"{src} is a checkpoint file, not the one of step {step} "
                f"(checkpoint_{step}); pass its folder or drop --step."
            )
        return src
    if not src.exists():
        raise FileNotFoundError(
            f"{src} does not exist: pass a run's folder (with checkpoints/), its "
            "checkpoints/ folder or a checkpoint_<step> file."
        )
    folder = src / "checkpoints" if (src / "checkpoints").is_dir() else src
    found = sorted(
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := re.fullmatch(r"checkpoint_(\d+)", p.name))
    )
    if not found:
        raise FileNotFoundError(
            f"{folder} holds no Flax checkpoint file `checkpoint_<step>`: pass a run's folder "
            "(with checkpoints/), its checkpoints/ folder or a checkpoint_<step> file."
        )
    if step is None:
        path = found[-1][1]
    else:
        chosen = [p for s, p in found if s == step]
        if not chosen:
            raise FileNotFoundError(
                f"{folder} has no checkpoint of step {step}; it has steps {[s for s, _ in found]}."
            )
        path = chosen[0]
    if path.is_dir():
        raise ConversionError(
            f"{path} is a folder (an Orbax checkpoint of a newer Flax), not the msgpack file "
            "that Flax 0.6 wrote; it is not supported."
        )
    return path


def _args_of(path: pathlib.Path) -> tuple[Any, pathlib.Path | None]:
    """The run's pickled `args` (an argparse.Namespace) beside `checkpoints/`, and its
    file; `(None, None)` if there is none."""
    for folder in (path.parent, path.parent.parent):
        file = folder / "args"
        if file.is_file():
            try:
                with open(file, "rb") as f:
                    return _ArgsUnpickler(f).load(), file
            except ConversionError as error:
                raise ConversionError(f"{file}: {error}") from None
            except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as error:
                raise ConversionError(
                    f"{file}: not a pickled argparse.Namespace ({error})."
                ) from None
    return None, None


def read_flax_checkpoint(
    src: str | pathlib.Path, *, step: int | None = None
) -> tuple[dict[str, np.ndarray], pathlib.Path, int | None]:
    """The parameters of a Flax 0.6 `TrainState` checkpoint: `(arrays, file, step)`
    with `arrays` named as Flax nests them (`params/encoder/Conv_0/kernel`, …).

    `src` is the checkpoint file, a run's folder holding `checkpoints/`, or the
    `checkpoints/` folder; from a folder the latest `checkpoint_<step>` is read, or the
    one of `step`. The file is memory-mapped and read with `msgpack` (Flax's ext types;
    arrays over 1 GiB that Flax wrote in chunks are joined); the optimiser state is
    dropped. Needs neither Flax nor TensorFlow.

    **Raises:** `FileNotFoundError`; `ConversionError` if the file is not a Flax
    msgpack checkpoint with `params`."""
    path = _checkpoint_file(pathlib.Path(src), step)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            tree = msgpack.unpackb(data, ext_hook=_flax_ext, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as error:
        raise ConversionError(f"{path}: not a Flax msgpack checkpoint ({error}).") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("params"), dict):
        keys = sorted(map(str, tree))[:6] if isinstance(tree, dict) else type(tree).__name__
        raise ConversionError(
            f"{path}: not a Flax TrainState checkpoint (no `params`; top level: {keys})."
        )
    saved_step = tree.get("step")
    try:
        saved_step = None if saved_step is None else int(np.asarray(saved_step))
    except (TypeError, ValueError):
        saved_step = None
    flat = _flatten(_unchunk(tree["params"]), "params/")
    return {k: v for k, v in flat.items() if isinstance(v, np.ndarray)}, path, saved_step


# ------------------------------------------------------------------------------------
# Where each eqvid array comes from.
# ------------------------------------------------------------------------------------


def _same(a: np.ndarray) -> np.ndarray:
    return a


@dataclasses.dataclass(frozen=True)
class _Source:
    name: str
    """The Flax array's path (`params/…`)."""
    shape: tuple[int, ...]
    """Its shape in the original."""
    convert: Callable[[np.ndarray], np.ndarray]
    """Flax array → the eqvid leaf."""


class _Plan:
    """eqvid leaf key (`encoder.blocks.0.conv1.weight`) → its `_Source`, written from the
    original code's module names (Flax's automatic `<Class>_<n>` per parent module)."""

    def __init__(self, template: eqx.Module):
        flat = jax.tree_util.tree_flatten_with_path(template)[0]
        self.shapes = {_leaf_key(p): tuple(x.shape) for p, x in flat if hasattr(x, "shape")}
        self.sources: dict[str, _Source] = {}

    def take(
        self,
        key: str,
        name: str,
        *,
        shape: tuple[int, ...] | None = None,
        convert: Callable[[np.ndarray], np.ndarray] = _same,
    ) -> None:
        own = self.shapes[key]
        self.sources[key] = _Source(name, own if shape is None else shape, convert)

    def params(self, eq: str, fl: str, pairs: tuple[tuple[str, str], ...]) -> None:
        for mine, theirs in pairs:
            if f"{eq}.{mine}" in self.shapes:  # biases that are None are no leaves
                self.take(f"{eq}.{mine}", f"{fl}/{theirs}")

    def dense(self, eq: str, fl: str) -> None:
        self.params(eq, fl, (("weight", "kernel"), ("bias", "bias")))

    conv = dense

    def norm(self, eq: str, fl: str) -> None:
        self.params(eq, fl, (("weight", "scale"), ("bias", "bias")))

    def head(self, eq: str, fl: str) -> None:
        """A `1 × 1` convolution from a Flax `Dense` `(in, out)`."""
        shape = self.shapes[f"{eq}.weight"]
        self.take(f"{eq}.weight", f"{fl}/kernel", shape=shape[2:], convert=lambda a: a[None, None])
        self.take(f"{eq}.bias", f"{fl}/bias")

    def resnet_block(self, eq: str, fl: str, block: ResNetBlock) -> None:
        """ConvSSM/TECO `base.ResNetBlock`: GroupNorm_0, Conv_0, GroupNorm_1, Conv_1 (no
        bias), AddBias_0, `skip` (a bias-free 1×1 conv, when the channels change)."""
        self.norm(f"{eq}.norm1", f"{fl}/GroupNorm_0")
        self.conv(f"{eq}.conv1", f"{fl}/Conv_0")
        self.norm(f"{eq}.norm2", f"{fl}/GroupNorm_1")
        self.conv(f"{eq}.conv2", f"{fl}/Conv_1")
        self.take(f"{eq}.bias", f"{fl}/AddBias_0/bias")
        if block.skip is not None:
            self.conv(f"{eq}.skip", f"{fl}/skip")

    def resnet_encoder(self, eq: str, fl: str, encoder: ResNetEncoder) -> None:
        """`base.ResNetEncoder`: Conv_0, ResNetBlock_0 …"""
        if encoder.patch != 1:
            raise ConversionError(
                f"the config folds {encoder.patch}×{encoder.patch} pixel blocks into the "
                "encoder's channels (pixel_patch); the original has no such thing: use "
                "pixel_patch=1."
            )
        self.conv(f"{eq}.stem", f"{fl}/Conv_0")
        for i, block in enumerate(encoder.blocks):
            self.resnet_block(f"{eq}.blocks.{i}", f"{fl}/ResNetBlock_{i}", block)

    def resnet_decoder(self, eq: str, fl: str, decoder: ResNetDecoder) -> None:
        """`base.ResNetDecoder`: Conv_0, ResNetBlock_0 …, LayerNorm_0, Dense_0."""
        if decoder.patch != 1:
            raise ConversionError(
                "the config's decoder unfolds pixel blocks (pixel_patch); the original has "
                "no such thing: use pixel_patch=1."
            )
        self.conv(f"{eq}.stem", f"{fl}/Conv_0")
        for i, block in enumerate(decoder.blocks):
            self.resnet_block(f"{eq}.blocks.{i}", f"{fl}/ResNetBlock_{i}", block)
        self.norm(f"{eq}.norm", f"{fl}/LayerNorm_0")
        self.head(f"{eq}.head", f"{fl}/Dense_0")

    def convs5_layer(self, eq: str, fl: str) -> None:
        """ConvSSM `SequenceLayer` of a `ConvS5SSM` with `C_D_config: resnet`: `seq/`
        (Lambda_re, Lambda_im, B, C, log_step, C_D_conv) and the post-`norm`."""
        s = f"{fl}/seq"
        self.take(f"{eq}.lambda_re", f"{s}/Lambda_re")
        self.take(f"{eq}.lambda_im", f"{s}/Lambda_im")
        (p,) = self.shapes[f"{eq}.log_step"]
        self.take(f"{eq}.log_step", f"{s}/log_step", shape=(p, 1), convert=lambda a: a[:, 0])
        k, _, u, p, two = self.shapes[f"{eq}.B"]

        def b_layout(a: np.ndarray) -> np.ndarray:
            # B̃[p, u·k² + i·k + j] ↔ kernel[i, j, u, p] (diagonal_ssm.py).
            return a.reshape(p, u, k, k, two).transpose(2, 3, 1, 0, 4)

        self.take(f"{eq}.B", f"{s}/B", shape=(p, u * k * k, two), convert=b_layout)
        self.take(f"{eq}.C", f"{s}/C")
        o = f"{eq}.output_map"
        self.norm(f"{o}.norm1", f"{s}/C_D_conv/GroupNorm_0")
        self.conv(f"{o}.conv1", f"{s}/C_D_conv/Conv_0")
        self.norm(f"{o}.norm2", f"{s}/C_D_conv/GroupNorm_1")
        self.conv(f"{o}.conv2", f"{s}/C_D_conv/Conv_1")
        self.norm(f"{eq}.norm", f"{fl}/norm")

    def convs5_stack(self, prefix: str, n_layers: int) -> None:
        """ConvSSM's `action_conv` (a `1 × 1` `Conv_0`) and `StackedLayers` (`layers_<i>`)
        → eqvid's `{prefix}project` and `{prefix}layers.<i>` (a `ConvS5Core`'s, or
        `ConvS5VideoModel`'s with `prefix=""`)."""
        self.conv(f"{prefix}project", "params/action_conv/Conv_0")
        for i in range(n_layers):
            self.convs5_layer(f"{prefix}layers.{i}", f"params/sequence_model/layers_{i}")

    def transformer_block(self, eq: str, fl: str) -> None:
        """TECO's pre-LN `TransformerLayer`: LayerNorm_0, MultiHeadAttention_0
        (query/key/value DenseGeneral with biases, `out` without, `out_bias`),
        LayerNorm_1, MlpBlock_0 (`wi` with bias, `wo` without, `wo_bias`)."""
        self.norm(f"{eq}.norm1", f"{fl}/LayerNorm_0")
        a, fa = f"{eq}.attention", f"{fl}/MultiHeadAttention_0"
        for part in ("query", "key", "value"):
            self.take(f"{a}.{part}_weight", f"{fa}/{part}/kernel")
            self.take(f"{a}.{part}_bias", f"{fa}/{part}/bias")
        self.take(f"{a}.output_weight", f"{fa}/out/kernel")
        self.take(f"{a}.output_bias", f"{fa}/out_bias/bias")
        self.norm(f"{eq}.norm2", f"{fl}/LayerNorm_1")
        self.dense(f"{eq}.mlp_in", f"{fl}/MlpBlock_0/wi")
        self.take(f"{eq}.mlp_out.weight", f"{fl}/MlpBlock_0/wo/kernel")
        self.take(f"{eq}.mlp_out.bias", f"{fl}/MlpBlock_0/wo_bias/bias")

    def check_complete(self, external: tuple[str, ...] = ()) -> None:
        left = [k for k in self.shapes if k not in self.sources and not k.startswith(external)]
        if left:  # a layout change in eqvid that the converter does not know yet
            raise RuntimeError(f"the converter has no Flax source for the eqvid arrays {left[:5]}")


def _roll_actions(a: np.ndarray) -> np.ndarray:
    """Row `A` ("no action", the original's `-1`) first: eqvid's row `a + 1` is action `a`."""
    return np.roll(a, 1, axis=0)


def _action_zero_everywhere(a: np.ndarray) -> np.ndarray:
    """`use_actions: False`: the original embeds action 0 for every frame."""
    return np.array(np.broadcast_to(a[:1], a.shape))


def _convs5_plan(model: ConvS5VideoModel, *, use_actions: bool) -> _Plan:
    """`CONVS5_NOVQ` (`sequence_models/noVQ/convS5.py`)."""
    plan = _Plan(model)
    plan.resnet_encoder("encoder", "params/encoder", model.encoder)
    plan.take(
        "action_embedding",
        "params/action_embeds/embedding",
        convert=_roll_actions if use_actions else _action_zero_everywhere,
    )
    plan.convs5_stack("", len(model.layers))
    plan.resnet_decoder("decoder", "params/decoder", model.decoder)
    plan.check_complete()
    return plan


def _latent_convs5_plan(model: LatentVideoModel) -> _Plan:
    """ConvSSM's plain latent `CONVS5` (`sequence_models/VQ/convS5.py`): the encoder on
    the tokenizer's code vectors, `action_conv` + `StackedLayers`, the decoder to logits
    over the tokenizer's codes (its `Dense_0` a `1 × 1` convolution)."""
    assert isinstance(model.temporal, ConvS5Core)  # checked by `_template`
    plan = _Plan(model)
    plan.resnet_encoder("encoder", "params/encoder", model.encoder)
    plan.take("action_embedding", "params/action_embeds/embedding", convert=_roll_actions)
    plan.convs5_stack("temporal.", len(model.temporal.layers))
    plan.resnet_decoder("decoder", "params/decoder", model.decoder)
    plan.check_complete(external=("tokenizer.",))
    return plan


def _teco_plan(model: TECO) -> _Plan:
    """wilson1yan/teco `TECO` (`teco/models/teco.py`) and ConvSSM's `TECO_CONVS5`."""
    plan = _Plan(model)
    plan.take("sos_post", "params/sos_post")
    # encoder = nn.Sequential([ResNetEncoder, Dense]): layers_0, layers_1.
    plan.resnet_encoder("encoder", "params/encoder/layers_0", model.encoder)
    plan.dense("encoder_out", "params/encoder/layers_1")
    plan.take("codebook.quantizer.embedding", "params/codebook/codebook")
    plan.dense("codebook.proj_in", "params/codebook/Dense_0")
    plan.dense("codebook.proj_out", "params/codebook/Dense_1")
    plan.take("action_embedding", "params/action_embeds/embedding", convert=_roll_actions)
    temporal = model.temporal
    if isinstance(temporal, ConvS5Core):
        plan.convs5_stack("temporal.", len(temporal.layers))
    else:
        assert isinstance(temporal, TransformerCore)
        t, tt = "temporal.transformer", temporal.transformer
        g, w = tt.grid, tt.width
        plan.take(f"{t}.patch_weight", "params/z_proj/kernel")
        plan.take(
            f"{t}.start_token",
            "params/sos",
            shape=(g, g, w),
            convert=lambda a: a.reshape(g * g, w),
        )
        plan.dense(f"{t}.embed", "params/z_tfm/Dense_0")
        for i in range(len(tt.blocks)):
            plan.transformer_block(f"{t}.blocks.{i}", f"params/z_tfm/TransformerLayer_{i}")
        plan.dense(f"{t}.head", "params/z_tfm/Dense_1")
        plan.norm(f"{t}.head_norm", "params/z_tfm/LayerNorm_0")
        # Flax's ConvTranspose reads its kernel flipped: unpatch_weight[a, b] = K[s-1-a, s-1-b].
        plan.take(f"{t}.unpatch_weight", "params/z_unproj/kernel", convert=lambda a: a[::-1, ::-1])
    # z_git = nn.vmap(MaskGit): token_embed, net (Transformer), mlm (MlmLayer).
    z = "params/z_git"
    plan.take("prior.token_embed.weight", f"{z}/token_embed")
    plan.dense("prior.fc_in", f"{z}/net/Dense_0")
    for i in range(len(model.prior.position.tables)):
        plan.take(f"prior.position.tables.{i}", f"{z}/net/BroadcastPositionBiases_0/d_{i}")
    for i in range(len(model.prior.blocks)):
        plan.transformer_block(f"prior.blocks.{i}", f"{z}/net/TransformerLayer_{i}")
    plan.dense("prior.fc_out", f"{z}/net/Dense_1")
    plan.norm("prior.norm", f"{z}/net/LayerNorm_0")
    plan.dense("prior.mlm.dense", f"{z}/mlm/Dense_0")
    plan.norm("prior.mlm.norm", f"{z}/mlm/LayerNorm_0")
    plan.take("prior.mlm.bias", f"{z}/mlm/AddBias_0/bias")
    plan.resnet_decoder("decoder", "params/decoder", model.decoder)
    plan.check_complete(external=("tokenizer.",))
    return plan


def _template(config: Any, tokenizer: AbstractVideoTokenizer | None) -> eqx.Module:
    """The eqvid model of `config` with shapes only (TECO on `tokenizer`)."""
    key = jax.random.key(0)
    if isinstance(config, ConvS5Config):
        return eqx.filter_eval_shape(ConvS5VideoModel, config, key=key)
    if isinstance(config, TECOConfig | LatentConvS5Config):
        if tokenizer is None:
            raise ValueError(f"a {type(config).__name__} model needs its tokenizer (`tokenizer`).")
        if isinstance(config, TECOConfig):
            return eqx.filter_eval_shape(lambda: TECO(config, key=key, tokenizer=tokenizer))
        if config.temporal != "convs5":
            raise ValueError(
                "the original (convS5) has a ConvS5 stack: the config's temporal model must "
                f"be 'convs5', not {config.temporal!r}."
            )
        return eqx.filter_eval_shape(lambda: LatentVideoModel(config, key=key, tokenizer=tokenizer))
    raise TypeError(
        "expected a ConvS5Config, TECOConfig, TECOConvS5Config or LatentConvS5Config, got "
        f"{type(config).__name__}."
    )


def _plan(template: eqx.Module, *, use_actions: bool = False) -> _Plan:
    if isinstance(template, ConvS5VideoModel):
        return _convs5_plan(template, use_actions=use_actions)
    if isinstance(template, LatentVideoModel):
        return _latent_convs5_plan(template)
    assert isinstance(template, TECO)
    return _teco_plan(template)


def flax_parameter_shapes(
    config: ConvS5Config | LatentConvS5Config | TECOConfig,
    *,
    tokenizer: AbstractVideoTokenizer | None = None,
) -> dict[str, tuple[int, ...]]:
    """The parameter tree `{Flax path: shape}` (`params/…`) that the original model of
    `config` has, as the converter expects it: ConvSSM's `convS5_noVQ` for a
    `ConvS5Config`, its `convS5` for a `LatentConvS5Config`, TECO's `TECO` for a
    `TECOConfig`, ConvSSM's `teco_convS5` for a `TECOConvS5Config` (all but the first on
    `tokenizer`, which may be shapes only, `equinox.filter_eval_shape`)."""
    plan = _plan(_template(config, tokenizer))
    return {s.name: s.shape for s in plan.sources.values()}


def _problems(plan: _Plan, arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Missing and mis-shaped arrays in the plan's order, then unexpected ones."""
    out: list[str] = []
    used = set()
    for source in plan.sources.values():
        used.add(source.name)
        value = arrays.get(source.name)
        if value is None:
            out.append(f"`{source.name}` is missing (expected shape {_fmt(source.shape)})")
        elif tuple(value.shape) != source.shape:
            out.append(
                f"`{source.name}` has shape {_fmt(tuple(value.shape))}, expected "
                f"{_fmt(source.shape)}"
            )
    out += [
        f"unexpected array `{k}` {_fmt(tuple(arrays[k].shape))}"
        for k in arrays
        if k.startswith("params/") and k not in used
    ]
    return out


def _fill(
    template: eqx.Module, plan: _Plan, arrays: Mapping[str, np.ndarray]
) -> tuple[Any, int, int]:
    """`template` with every planned leaf taken from `arrays` (checked beforehand) and the
    count of arrays and numbers taken."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in flat:
        source = plan.sources.get(_leaf_key(path))
        if source is None:
            leaves.append(leaf)  # the tokenizer, set afterwards
            continue
        value = np.asarray(source.convert(np.asarray(arrays[source.name], np.float32)))
        leaves.append(jnp.asarray(value, jnp.float32))
    names = {s.name for s in plan.sources.values()}
    numbers = sum(arrays[n].size for n in names)
    return jax.tree_util.tree_unflatten(treedef, leaves), len(names), numbers


# ------------------------------------------------------------------------------------
# The converters.
# ------------------------------------------------------------------------------------


def _candidates(
    kind: _Kind,
    preset: str | None,
    config: Any,
    adapt: Callable[[Any], Any],
) -> list[tuple[str | None, Any]]:
    spec = model_spec(kind.family)
    if config is not None:
        if preset is not None:
            raise ValueError("pass either `preset` or `config`, not both.")
        if type(config) is not spec.config:
            raise TypeError(
                f"a {kind.name} checkpoint converts to a {spec.config.__name__}; `config` is a "
                f"{type(config).__name__}."
            )
        return [(None, adapt(config))]
    names = kind.released if preset is None else (preset,)
    return [(name, adapt(spec.preset(name))) for name in names]


def _convert(
    kind_name: str,
    src: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    preset: str | None,
    config: Any,
    step: int | None,
    tokenizer: str | pathlib.Path | None,
) -> ConvertedModel:
    kind = _KINDS[kind_name]
    arrays, path, saved_step = read_flax_checkpoint(src, step=step)
    args, args_file = _args_of(path)
    original = getattr(args, "model", None)
    if original is not None and original not in kind.originals:
        raise ConversionError(
            f"{args_file}: the run is a `{original}` model, not a "
            f"{kind.title} (`model: {kind.originals[0]}`)."
        )
    tok = None
    notes: list[str] = []
    if kind.family == "convs5":
        use_actions = bool(getattr(args, "use_actions", False))

        def adapt(c: Any) -> Any:
            return c

        notes.append(
            "actions: the original embeds action 0 for every frame (use_actions: False), so "
            "every row of the action table is its row 0"
            if not use_actions
            else "action table rows rolled by one (eqvid's row 0 is no action, -1)"
        )
    else:
        use_actions = True
        if tokenizer is None:
            raise ValueError(
                f"a {kind.title} model needs its tokenizer: pass the tokenizer folder "
                "(--tokenizer, e.g. converted with python -m eqvid.models.convert_tokenizer "
                "teco)."
            )
        tok_path = pathlib.Path(tokenizer).resolve()
        tok = load_tokenizer(tok_path)
        tok_config = tok.config
        extra = {}
        if kind.family == "convs5-latent" and args is not None:
            if not getattr(args, "use_actions", True):
                # The original then embeds action 0 for every frame, as eqvid does.
                extra["use_actions"] = False
                notes.append("the run ignores actions (use_actions: False), so does the model")
            masking = bool(getattr(args, "causal_masking", False))
            if hasattr(args, "causal_masking"):
                extra["causal_masking"] = masking
            if masking:  # the original's causal mode has no DropLoss
                extra["drop_loss_rate"] = 0.0
                extra["open_loop_context"] = int(getattr(args, "open_loop_ctx_1", 144))
                extra["frame_mask_value"] = float(getattr(args, "frame_mask_id", -2.0))
                notes.append(
                    "the run trained with causal masking (open-loop after "
                    f"{extra['open_loop_context']} frames), so does the model: given "
                    "actions, it generates open-loop after the context"
                )

        def adapt(c: Any) -> Any:
            return dataclasses.replace(
                c,
                tokenizer=str(tok_path),
                frame_size=tok_config.frame_size,
                channels=tok_config.channels,
                **extra,
            )

        notes += [
            f"tokenizer: {tok_path} ({type(tok).__name__}, {tok.n_codes} codes of "
            f"{tok.embed_dim} channels)",
            "action table rows rolled by one (eqvid's row 0 is no action, -1)",
        ]
        if kind.family == "teco":
            notes.append("z_unproj kernel flipped (Flax's ConvTranspose reads it flipped)")
    found = []
    for name, cfg in _candidates(kind, preset, config, adapt):
        try:
            template = _template(cfg, tok)
        except ValueError as error:  # e.g. a code grid the preset's encoder cannot take
            found.append((name, cfg, None, None, [str(error)]))
            continue
        plan = _plan(template, use_actions=use_actions)
        found.append((name, cfg, template, plan, _problems(plan, arrays)))
    fits = [f for f in found if not f[4]]
    if not fits:
        if len(found) == 1:
            name, _, _, _, problems = found[0]
            what = "the given config" if name is None else f"preset {name!r}"
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ConversionError(
                f"{path}: {problems[0]}{more}. The file does not hold a {kind.title} of "
                f"{what}, or it is incomplete."
            )
        each = "; ".join(f"{name!r}: {problems[0]}" for name, _, _, _, problems in found)
        raise ConversionError(
            f"{path} fits none of the released {kind.title} presets ({each}). It holds another "
            "model, or another configuration: pass its preset (--preset) or config."
        )
    if len(fits) > 1:  # e.g. DMLab's and Habitat's latent ConvS5: training settings differ
        loss_rate = getattr(args, "drop_loss_rate", None)
        if isinstance(loss_rate, int | float):  # the run's own, if its args say
            fits = [f for f in fits if getattr(f[1], "drop_loss_rate", None) == loss_rate] or fits
        if len(fits) > 1:
            notes.append(
                f"the file's tree fits presets {[f[0] for f in fits]} alike; took "
                f"{fits[0][0]!r} (pass --preset to choose)"
            )
    name, cfg, template, plan, _ = fits[0]
    assert template is not None and plan is not None
    model, count, numbers = _fill(template, plan, arrays)
    if tok is not None:
        model = eqx.tree_at(lambda m: m.tokenizer, model, tok)
    where = f"{path.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name
    folder = save_model(
        model,
        out_dir,
        source=f"{kind.title} checkpoint {where}"
        + ("" if saved_step is None else f" (step {saved_step})")
        + f" (python -m eqvid.models.convert_checkpoint {kind.name})",
    )
    return ConvertedModel(
        folder, kind.name, cfg, name, path, saved_step, count, numbers, tuple(notes)
    )


def convert_convs5_mnist(
    src: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    preset: str | None = None,
    config: ConvS5Config | None = None,
    step: int | None = None,
) -> ConvertedModel:
    """Convert a released ConvSSM Moving-MNIST ConvS5 checkpoint (`convS5_noVQ`, e.g.
    the MNIST-300 run's folder) into a `ConvS5VideoModel` folder.

    The architecture is `ConvS5Config.preset(preset)`, or `config`; without either,
    the released preset (`mnist-300`, `mnist-600`) whose tree the file holds. On the
    same weights the converted model computes the original's outputs (teacher forcing
    and generation). `step` picks `checkpoint_<step>` (default: the latest).

    **Returns:** a `ConvertedModel`. **Raises:** `FileNotFoundError`;
    `ConversionError` (a `ValueError`) naming the file and the first missing or
    mis-shaped array (its Flax path, expected and found shapes), or an unexpected one.
    """
    return _convert(
        "convs5-mnist", src, out_dir, preset=preset, config=config, step=step, tokenizer=None
    )


def convert_convs5_latent(
    src: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    tokenizer: str | pathlib.Path,
    preset: str | None = None,
    config: LatentConvS5Config | None = None,
    step: int | None = None,
) -> ConvertedModel:
    """Convert a ConvSSM latent ConvS5 checkpoint (`convS5`, the released DMLab run) into
    a `LatentVideoModel` folder (family `convs5-latent`) on the tokenizer folder
    `tokenizer` (the run's VQGAN, converted with `convert_tokenizer teco`).

    The architecture is `LatentConvS5Config.preset(preset)` (`dmlab`, `minecraft`,
    `habitat`), or `config`, with the tokenizer's frame size and channels; without
    either, the released preset whose tree the file holds (DMLab's and Habitat's trees
    are alike: the run's `args`, if beside the checkpoints, decide by its
    `drop_loss_rate`, else `dmlab`). On the same weights the converted model gives the
    original's decoder logits (teacher forcing).

    **Returns:** a `ConvertedModel`. **Raises:** as `convert_convs5_mnist`."""
    return _convert(
        "convs5-latent", src, out_dir, preset=preset, config=config, step=step, tokenizer=tokenizer
    )


def convert_teco_model(
    src: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    tokenizer: str | pathlib.Path,
    preset: str | None = None,
    config: TECOConfig | None = None,
    step: int | None = None,
) -> ConvertedModel:
    """Convert a TECO checkpoint (wilson1yan/teco's `TECO`, or ConvSSM's
    `teco_transformer`, the same tree) into a `TECO` model folder on the tokenizer
    folder `tokenizer` (TECO's VQGAN, converted with `convert_tokenizer teco`).

    The architecture is `TECOConfig.preset(preset)` (`dmlab`, `minecraft`, `habitat`,
    `kinetics600`), or `config`, with the tokenizer's frame size and channels; without
    either, the released preset whose tree the file holds. `step` picks
    `checkpoint_<step>` (default: the latest).

    **Returns:** a `ConvertedModel`. **Raises:** as `convert_convs5_mnist`."""
    return _convert(
        "teco", src, out_dir, preset=preset, config=config, step=step, tokenizer=tokenizer
    )


def convert_teco_convs5(
    src: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    tokenizer: str | pathlib.Path,
    preset: str | None = None,
    config: TECOConvS5Config | None = None,
    step: int | None = None,
) -> ConvertedModel:
    """Convert a ConvSSM TECO-ConvS5 checkpoint (`teco_convS5`, the released Habitat and
    Minecraft runs) into a `TECO` model folder (family `teco-convs5`) on the tokenizer
    folder `tokenizer`.

    The architecture is `TECOConvS5Config.preset(preset)` (`dmlab`, `habitat`,
    `minecraft`), or `config`, with the tokenizer's frame size and channels; without
    either, the released preset whose tree the file holds.

    **Returns:** a `ConvertedModel`. **Raises:** as `convert_convs5_mnist`."""
    return _convert(
        "teco-convs5", src, out_dir, preset=preset, config=config, step=step, tokenizer=tokenizer
    )


def convert_video_checkpoint(
    kind: str,
    src: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    preset: str | None = None,
    config: ConvS5Config | LatentConvS5Config | TECOConfig | None = None,
    tokenizer: str | pathlib.Path | None = None,
    step: int | None = None,
) -> ConvertedModel:
    """Convert a checkpoint of `kind` (`CHECKPOINT_KINDS`: `"convs5-mnist"`,
    `"convs5-latent"`, `"teco"`, `"teco-convs5"`) into a model folder at `out_dir`; see
    the per-kind converters. `tokenizer` is required for the latent kinds (all but
    `convs5-mnist`) and refused for `convs5-mnist`."""
    if kind not in _KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {CHECKPOINT_KINDS}.")
    if kind == "convs5-mnist" and tokenizer is not None:
        raise ValueError("a convs5-mnist model works on frames: it takes no tokenizer.")
    return _convert(
        kind, src, out_dir, preset=preset, config=config, step=step, tokenizer=tokenizer
    )
