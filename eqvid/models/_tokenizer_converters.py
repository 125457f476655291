"""Converters of public VQGAN checkpoints into eqvid tokenizer folders (`save_tokenizer`),
without PyTorch or Flax.

- **taming-transformers** (`VQModel`, a PyTorch Lightning `.ckpt`): the arrays of its
  `state_dict` map 1:1 onto `VQGAN2D`'s fields (see `eqvid.nn._vqgan_codec` and
  `eqvid.nn._patch_discriminator` for the table); convolution weights are transposed
  from OIHW to HWIO. The architecture is read off the tensor shapes; only the frame
  size is not in the file (`resolution`, 256 for the released ImageNet models).
- **TATS** (the 3D VQGAN of TATS / MeBT, a PyTorch Lightning `.ckpt` whose
  `hyper_parameters` hold `{'args': argparse.Namespace}`): the hyperparameters come
  from the Namespace, the arrays map onto `VQGAN3D` as `eqvid.nn._vqgan3d_codec`'s
  table says (3-D convolutions `(out, in, kT, kH, kW)` → `(kT, kH, kW, in, out)`,
  transposed ones `(in, out, …)` → `(…, in, out)`), the EMA codebook and the
  BatchNorm running statistics into the model state, folded in before saving.
- **TECO** (the per-frame VQGAN that TECO converted from taming to Flax): a folder
  holding `args` (a pickled `argparse.Namespace` with the hyperparameters) and
  `checkpoints/checkpoint_<step>` (a Flax msgpack file with `params` and
  `model_state`, the codebook at `model_state/stats/quantize/embeddings`). Flax's
  automatic module names (`ResnetBlock_3/Conv_0/kernel`, …) are mapped onto taming's.

Files are read with a *restricted* unpickler (nothing in them is executed: the
PyTorch reader resolves only tensor-building functions and replaces any other class a
Lightning checkpoint names — callbacks, hyperparameter containers — by an inert stand-in;
the TECO `args` reader and the TATS hyperparameters reader also accept
`argparse.Namespace`) and with `msgpack`.

Every tensor the model needs is checked by name and shape; the first missing or
mis-shaped one is named with the file, and tensors of the converted parts that the
model has no place for are refused (they mean the file holds another architecture).
"""

import argparse
import dataclasses
import pathlib
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import msgpack
import numpy as np

from ..metrics import _torch_checkpoint as _tc
from ..nn._patch_discriminator import PatchDiscriminator
from ._tokenizer_files import save_tokenizer
from ._vqgan2d import VQGAN2D, VQGAN2DConfig
from ._vqgan3d import VQGAN3D, VQGAN3DConfig, _generator_norms

__all__ = [
    "ConversionError",
    "ConvertedTokenizer",
    "convert_taming",
    "convert_tats",
    "convert_teco",
    "infer_taming_config",
    "read_lightning_checkpoint",
    "read_lightning_state_dict",
    "read_teco_checkpoint",
    "tats_config",
]


class ConversionError(ValueError):
    """A checkpoint that cannot be converted: not of the expected kind, or missing,
    mis-shaped or unexpected tensors (the message names the file and the tensor)."""


@dataclasses.dataclass(frozen=True)
class ConvertedTokenizer:
    """What a converter wrote."""

    folder: pathlib.Path
    """The tokenizer folder (`load_tokenizer(folder)` reads it)."""
    config: VQGAN2DConfig | VQGAN3DConfig
    """The configuration of the converted `VQGAN2D` (or `VQGAN3D`)."""
    tensors: int
    """How many arrays were taken from the checkpoint."""
    parameters: int
    """How many numbers they hold."""
    notes: tuple[str, ...] = ()
    """What was left out or made up (e.g. a discriminator initialised afresh)."""

    def summary(self) -> str:
        """A few lines for the command line."""
        c = self.config
        head = f"wrote {self.folder} ({self.tensors} tensors, {self.parameters:,} numbers)"
        if isinstance(c, VQGAN3DConfig):
            lines = [
                head,
                f"  vqgan3d: {c.frame_size}×{c.frame_size}×{c.channels} frames, downsample "
                f"{c.downsample} → codes of {c.n_codes} (embedding_dim {c.embedding_dim}); "
                f"n_hiddens {c.n_hiddens}, norm {c.norm_type}, padding {c.padding_type}",
            ]
            return "\n".join(lines + [f"  note: {n}" for n in self.notes])
        lines = [
            head,
            f"  vqgan2d: {c.frame_size}×{c.frame_size}×{c.channels} frames → "
            f"{c.code_size}×{c.code_size} codes of {c.n_embed} (embed_dim {c.embed_dim}); "
            f"ch {c.ch}, ch_mult {c.ch_mult}, num_res_blocks {c.num_res_blocks}, "
            f"attn_resolutions {c.attn_resolutions}, z_channels {c.z_channels}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------
# Reading a PyTorch Lightning checkpoint.
# ------------------------------------------------------------------------------------


class _Inert:
    """Stands in for a class or function a checkpoint's pickle names that is not a tensor
    builder (Lightning's callbacks, OmegaConf containers, …): building, calling and
    filling it does nothing, so nothing of the file is ever executed."""

    def __new__(cls, *args: Any, **kwargs: Any):
        del args, kwargs
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any):
        del args, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        del args, kwargs
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        del state

    def __setitem__(self, key: Any, value: Any) -> None:
        del key, value

    def append(self, value: Any) -> None:
        del value

    def extend(self, values: Any) -> None:
        del values

    def __repr__(self) -> str:
        return f"<{getattr(type(self), 'pickled_name', 'object')} (not read)>"


class _LenientUnpickler(_tc._RestrictedUnpickler):
    """The tensor checkpoint unpickler, with every other global replaced by an inert
    stand-in class instead of refused (a Lightning `.ckpt` names its callbacks' classes)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except _tc.CheckpointFormatError:
            return type(name, (_Inert,), {"pickled_name": f"{module}.{name}"})


class _AttributeDict(dict):
    """Stands in for Lightning's `AttributeDict` (a dict subclass) holding hyperparameters."""


class _HyperparameterUnpickler(_LenientUnpickler):
    """The lenient Lightning unpickler that also rebuilds `argparse.Namespace` (TATS's
    `hyper_parameters['args']`) and Lightning's `AttributeDict` (as a dict); both only
    take attribute values, nothing is executed."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        if name == "AttributeDict" and module.split(".")[0] in (
            "pytorch_lightning",
            "lightning",
            "lightning_fabric",
        ):
            return _AttributeDict
        return super().find_class(module, name)


def _read_lightning_zip(
    path: pathlib.Path, unpickler: type[_LenientUnpickler] = _LenientUnpickler
) -> Any:
    """The object of a zip-format `torch.save` file with only the tensors of its
    `state_dict` (or, for a plain state dict, all tensors) read from the archive."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ConversionError(
                f"{path}: not a PyTorch checkpoint (a zip checkpoint holds exactly one "
                f"`<prefix>/data.pkl`, found {len(pickles)})."
            )
        prefix = pickles[0][: -len("data.pkl")]
        little_endian = True
        if prefix + "byteorder" in names:
            little_endian = archive.read(prefix + "byteorder").decode("ascii").strip() == "little"
        storages: dict[str, Any] = {}

        def persistent_load(pid: Any) -> Any:
            storage_type, key, numel, _ = _tc._parse_storage_pid(pid, legacy=False)
            if key not in storages:
                storages[key] = _tc._Storage(key, storage_type.dtype, numel)
            return storages[key]

        with cast(zipfile.ZipExtFile, archive.open(pickles[0])) as f:
            obj = unpickler(f, persistent_load).load()

        wanted = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(wanted, dict):
            return obj
        for value in wanted.values():
            if not isinstance(value, _tc._TensorRef) or not isinstance(value.storage, _tc._Storage):
                continue
            storage = value.storage
            if storage.data is not None:
                continue
            record = f"{prefix}data/{storage.key}"
            if record not in names:
                raise ConversionError(f"{path}: storage record {record!r} is missing.")
            raw = archive.read(record)
            if len(raw) != storage.numel * storage.dtype.itemsize:
                raise ConversionError(f"{path}: storage {record!r} is truncated.")
            order = storage.dtype.newbyteorder("<" if little_endian else ">")
            storage.data = np.frombuffer(raw, order, storage.numel)
        tensors = {
            k: v.materialise() if isinstance(v, _tc._TensorRef) else v for k, v in wanted.items()
        }
    if wanted is obj:
        return tensors
    return {**obj, "state_dict": tensors}


def _read_checkpoint(
    path: str | pathlib.Path, unpickler: type[_LenientUnpickler]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}.")
    try:
        if zipfile.is_zipfile(path):
            obj = _read_lightning_zip(path, unpickler)
        else:  # PyTorch < 1.6 (legacy format): the strict reader
            obj = _tc.read_torch_checkpoint(path)
    except (_tc.CheckpointFormatError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
        raise ConversionError(f"{path}: cannot read it as a PyTorch checkpoint ({e}).") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        rest = {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        state, rest = obj, {}
    else:
        raise ConversionError(
            f"{path} holds a {type(obj).__name__} without a `state_dict`: not a Lightning "
            "checkpoint or a state dict."
        )
    bad = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise ConversionError(
            f"{path}: state_dict entries {bad[:5]} are not tensors ({state[bad[0]]!r})."
        )
    return state, rest


def read_lightning_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The `state_dict` of a PyTorch Lightning checkpoint (`.ckpt`), or a plain PyTorch
    state dict file, as NumPy arrays, without PyTorch.

    Only the state dict's tensors are read. Objects that a Lightning checkpoint pickles
    besides tensors (callback classes, hyperparameter containers) are replaced by inert
    stand-ins: nothing of the file is executed.

    **Raises** `FileNotFoundError`, and `ConversionError` (a `ValueError`) naming the
    file when it is not such a checkpoint or its state dict holds non-tensors.
    """
    return _read_checkpoint(path, _LenientUnpickler)[0]


def read_lightning_checkpoint(
    path: str | pathlib.Path,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A PyTorch Lightning checkpoint's `state_dict` (NumPy arrays) and its other
    entries (`hyper_parameters`, `epoch`, …), without PyTorch.

    As `read_lightning_state_dict`, but `argparse.Namespace` (TATS keeps its
    hyperparameters as `hyper_parameters['args']`, a Namespace) and Lightning's
    `AttributeDict` (as a dict) are rebuilt; any other class the file names is an inert
    stand-in. A plain state dict gives no other entries. The tensors outside the state
    dict (optimiser states) are not read: they are storage references.

    **Raises** as `read_lightning_state_dict`.
    """
    return _read_checkpoint(path, _HyperparameterUnpickler)


# ------------------------------------------------------------------------------------
# Filling a VQGAN2D from named arrays.
# ------------------------------------------------------------------------------------

_Mapping = dict[str, tuple[str, bool]]
"""eqvid leaf key (`encoder.down.0.block.0.conv1.weight`) → (source array name, whether
the source is an OIHW convolution weight to transpose to HWIO)."""


def _leaf_key(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _source_shape(shape: tuple[int, ...], oihw: bool) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if oihw else shape


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _check_config(config: VQGAN2DConfig) -> None:
    if config.codebook_ema_decay is not None or config.cosine_codebook:
        raise ConversionError(
            "the converted codebook is a plain (Euclidean) codebook trained by gradient: pass a "
            "config with codebook_ema_decay=None, restart_threshold=None and "
            "cosine_codebook=False."
        )


def _fill(
    config: VQGAN2DConfig,
    mapping: _Mapping,
    arrays: Mapping[str, np.ndarray],
    where: str,
    *,
    scope: Callable[[str], bool],
    what: str,
    discriminator: PatchDiscriminator | None = None,
) -> tuple[VQGAN2D, int, int]:
    """A `VQGAN2D` of `config` with every leaf `mapping` names taken from `arrays`, the
    discriminator `discriminator` (a fresh one if None and the mapping has none), and
    the count of arrays and numbers taken. Raises `ConversionError` on the first missing
    or mis-shaped array, and on arrays in `scope` that the model has no place for."""
    _check_config(config)
    template = eqx.filter_eval_shape(VQGAN2D, config, key=jax.random.key(0))
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves: list[Any] = []
    used: set[str] = set()
    problems: list[str] = []
    numbers = 0
    for path, leaf in flat:
        key = _leaf_key(path)
        if key not in mapping:
            leaves.append(leaf)  # the frozen LPIPS, a discriminator set afterwards
            continue
        name, oihw = mapping[key]
        used.add(name)
        expected = _source_shape(tuple(leaf.shape), oihw)
        value = arrays.get(name)
        if value is None:
            problems.append(f"tensor `{name}` is missing (expected shape {_fmt(expected)})")
        elif tuple(value.shape) != expected:
            problems.append(
                f"tensor `{name}` has shape {_fmt(tuple(value.shape))}, expected {_fmt(expected)}"
            )
        if problems:
            leaves.append(leaf)
            continue
        assert value is not None
        host = np.asarray(value, np.float32)
        leaves.append(jnp.asarray(host.transpose(2, 3, 1, 0) if oihw else host))
        numbers += host.size
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConversionError(
            f"{where}: {problems[0]}{more}. The file does not hold a {what} of the "
            "expected architecture, or it is incomplete."
        )
    extra = [k for k in arrays if scope(k) and k not in used]
    if extra:
        shape = _fmt(tuple(arrays[extra[0]].shape))
        more = f" (and {len(extra) - 1} more: {extra[1:4]})" if len(extra) > 1 else ""
        raise ConversionError(
            f"{where}: unexpected tensor `{extra[0]}` {shape}{more}: the file holds a {what} "
            f"that differs from the configuration {_config_text(config)}."
        )
    model = jax.tree_util.tree_unflatten(treedef, leaves)
    if not any(k.startswith("discriminator.") for k in mapping):
        if discriminator is None:
            discriminator = PatchDiscriminator(
                config.channels, config.disc_ndf, config.disc_layers, key=jax.random.key(0)
            )
        model = eqx.tree_at(lambda m: m.discriminator, model, discriminator)
    return cast(VQGAN2D, model), len(used), numbers


def _config_text(c: VQGAN2DConfig) -> str:
    return (
        f"(frame_size={c.frame_size}, channels={c.channels}, ch={c.ch}, ch_mult={c.ch_mult}, "
        f"num_res_blocks={c.num_res_blocks}, attn_resolutions={c.attn_resolutions}, "
        f"z_channels={c.z_channels}, embed_dim={c.embed_dim}, n_embed={c.n_embed})"
    )


def _template_keys(config: VQGAN2DConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    template = eqx.filter_eval_shape(VQGAN2D, config, key=jax.random.key(0))
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        yield _leaf_key(path), tuple(leaf.shape)


# ------------------------------------------------------------------------------------
# taming-transformers.
# ------------------------------------------------------------------------------------

_TAMING_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
_DISC = "loss.discriminator."


def _need(state: Mapping[str, np.ndarray], name: str, where: str, ndim: int) -> np.ndarray:
    value = state.get(name)
    if value is None:
        raise ConversionError(
            f"{where}: tensor `{name}` is missing: not a taming-transformers VQModel checkpoint, "
            "or an incomplete one."
        )
    if value.ndim != ndim:
        raise ConversionError(
            f"{where}: tensor `{name}` has shape {_fmt(tuple(value.shape))}, expected {ndim} axes."
        )
    return value


def _indices(state: Mapping[str, np.ndarray], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := regex.match(k))})


def infer_taming_config(
    state: Mapping[str, np.ndarray], *, resolution: int = 256, where: str = "state_dict"
) -> VQGAN2DConfig:
    """The `VQGAN2DConfig` of a taming `VQModel` state dict, read off its tensor shapes:
    `ch` and `channels` (`encoder.conv_in`), `ch_mult` (the levels' first blocks),
    `num_res_blocks`, `attn_resolutions` (the levels with `attn` keys, at
    `resolution / 2**level`), `z_channels`, `embed_dim` and `n_embed` (the codebook), and
    the discriminator's `disc_ndf` / `disc_layers` when the file has it. The frame size
    is not in the file: `resolution`. Loss settings keep their defaults, except
    `perceptual_weight = 0` (no LPIPS needed to load it) and `beta_on = "codebook"` (as
    taming's quantiser)."""
    if gumbel := [k for k in state if k.startswith(("quantize.embed.", "quantize.proj."))]:
        raise ConversionError(
            f"{where}: `{gumbel[0]}` belongs to a GumbelVQ (Gumbel-softmax quantiser), which "
            "eqvid's VQGAN2D does not have; only VQModel checkpoints convert."
        )
    conv_in = _need(state, "encoder.conv_in.weight", where, 4)
    ch, channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ConversionError(f"{where}: no `encoder.down.*` tensors: not a taming VQModel.")
    ch_mult = []
    for i in range(levels[-1] + 1):
        out = int(_need(state, f"encoder.down.{i}.block.0.conv1.weight", where, 4).shape[0])
        if out % ch:
            raise ConversionError(
                f"{where}: `encoder.down.{i}.block.0.conv1.weight` has {out} output channels, "
                f"not a multiple of ch = {ch}."
            )
        ch_mult.append(out // ch)
    blocks = _indices(state, r"encoder\.down\.0\.block\.(\d+)\.")
    down = 2 ** (len(ch_mult) - 1)
    if resolution < down or resolution % down:
        raise ConversionError(
            f"{where}: the frame size (resolution={resolution}) must be a multiple of "
            f"2**(len(ch_mult)-1) = {down} for this model of {len(ch_mult)} levels."
        )
    attn = tuple(
        resolution // 2**i
        for i in range(len(ch_mult))
        if any(k.startswith(f"encoder.down.{i}.attn.") for k in state)
    )
    z_channels = int(_need(state, "decoder.conv_in.weight", where, 4).shape[1])
    enc_out = int(_need(state, "encoder.conv_out.weight", where, 4).shape[0])
    if enc_out == 2 * z_channels:
        raise ConversionError(
            f"{where}: `encoder.conv_out.weight` has 2·z_channels = {enc_out} outputs "
            "(double_z=True): not a VQGAN; eqvid's VQGAN2D has double_z=False."
        )
    codebook = _need(state, "quantize.embedding.weight", where, 2)
    disc_ndf, disc_layers = VQGAN2DConfig.disc_ndf, VQGAN2DConfig.disc_layers
    first = state.get(_DISC + "main.0.weight")
    if first is not None and first.ndim == 4:
        norms = _indices(state, re.escape(_DISC) + r"main\.(\d+)\.running_mean$")
        if norms:
            disc_ndf, disc_layers = int(first.shape[0]), len(norms)
    return VQGAN2DConfig(
        frame_size=resolution,
        channels=channels,
        ch=ch,
        ch_mult=tuple(ch_mult),
        num_res_blocks=len(blocks),
        attn_resolutions=attn,
        z_channels=z_channels,
        embed_dim=int(codebook.shape[1]),
        n_embed=int(codebook.shape[0]),
        dropout=0.0,
        beta_on="codebook",
        perceptual_weight=0.0,
        disc_ndf=disc_ndf,
        disc_layers=disc_layers,
    )


def _taming_mapping(config: VQGAN2DConfig) -> _Mapping:
    mapping: _Mapping = {}
    for key, shape in _template_keys(config):
        if key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            mapping[key] = (key, len(shape) == 4)
        elif key == "quantize.embedding":
            mapping[key] = ("quantize.embedding.weight", False)
    return mapping


def _taming_discriminator(
    config: VQGAN2DConfig, state: Mapping[str, np.ndarray]
) -> tuple[PatchDiscriminator | None, str]:
    """The file's discriminator (`loss.discriminator.main.*`) when it fits `config`, or
    None and why not."""
    keys = [k for k in state if k.startswith(_DISC)]
    if not keys:
        return None, "the file has no discriminator (loss.discriminator.*): a fresh one was made"
    if any(k.endswith((".loc", ".scale")) for k in keys):
        return (
            None,
            "the file's discriminator uses ActNorm (not eqvid's BatchNorm): a fresh one was made",
        )
    disc = PatchDiscriminator(
        config.channels, config.disc_ndf, config.disc_layers, key=jax.random.key(0)
    )
    flat, treedef = jax.tree_util.tree_flatten_with_path(disc)
    leaves = []
    for path, leaf in flat:
        name = _DISC + "main" + _leaf_key(path)[len("main") :]
        oihw = leaf.ndim == 4
        value = state.get(name)
        expected = _source_shape(tuple(leaf.shape), oihw)
        if value is None or tuple(value.shape) != expected:
            got = "missing" if value is None else f"of shape {_fmt(tuple(value.shape))}"
            return None, (
                f"the file's discriminator does not fit disc_ndf={config.disc_ndf}, "
                f"disc_layers={config.disc_layers} (`{name}` {got}, expected "
                f"{_fmt(expected)}): a fresh one was made"
            )
        host = np.asarray(value, np.float32)
        leaves.append(jnp.asarray(host.transpose(2, 3, 1, 0) if oihw else host))
    model = jax.tree_util.tree_unflatten(treedef, leaves)
    return model, "discriminator converted (BatchNorm running statistics are not used)"


def convert_taming(
    ckpt_path: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    config: VQGAN2DConfig | None = None,
    resolution: int = 256,
) -> ConvertedTokenizer:
    """Convert a taming-transformers `VQModel` checkpoint (a Lightning `.ckpt`, e.g.
    `vqgan_imagenet_f16_1024/ckpts/last.ckpt`, or a plain state dict) into a `VQGAN2D`
    tokenizer folder.

    **Arguments:**

    - `ckpt_path`: the checkpoint file.
    - `out_dir`: the tokenizer folder to write (created if needed).
    - `config`: the `VQGAN2DConfig` to build (its architecture must match the file);
      None reads it off the tensor shapes (`infer_taming_config`).
    - `resolution`: the frame size when `config` is None (taming's `resolution`; it is
      not stored in the file and decides where `attn_resolutions` lie).

    The encoder, decoder, `quant_conv`, `post_quant_conv` and the codebook
    (`quantize.embedding.weight`) are converted; the PatchGAN discriminator too when
    `loss.discriminator.main.*` fits the config (otherwise it is initialised afresh);
    the LPIPS weights (`loss.perceptual_loss.*`) and everything outside `state_dict`
    (optimiser states, callbacks) are ignored.

    **Returns:** a `ConvertedTokenizer` (the folder, the config, counts, notes).

    **Raises:** `FileNotFoundError`; `ConversionError` (a `ValueError`) naming the file and
    the first missing or mis-shaped tensor (name, expected and actual shape), or an
    unexpected one.
    """
    ckpt_path = pathlib.Path(ckpt_path)
    where = str(ckpt_path)
    state = read_lightning_state_dict(ckpt_path)
    notes = []
    if config is None:
        config = infer_taming_config(state, resolution=resolution, where=where)
    ignored_ema = ("quantize.embedding.cluster_size", "quantize.embedding.embed_avg")
    if any(k in state for k in ignored_ema):
        notes.append("EMA statistics of the codebook (EMAVQ) were not converted")
    disc, disc_note = _taming_discriminator(config, state)
    notes.append(disc_note)
    mapping = _taming_mapping(config)
    if disc is None:
        disc = PatchDiscriminator(
            config.channels, config.disc_ndf, config.disc_layers, key=jax.random.key(0)
        )
    model, count, numbers = _fill(
        config,
        mapping,
        state,
        where,
        scope=lambda k: k.startswith(_TAMING_PREFIXES) and k not in ignored_ema,
        what="taming-transformers VQModel",
        discriminator=disc,
    )
    if disc_note.startswith("discriminator converted"):
        count += len(jax.tree_util.tree_leaves(disc))
        numbers += sum(x.size for x in jax.tree_util.tree_leaves(disc))
    folder = save_tokenizer(
        model,
        out_dir,
        source=f"taming-transformers VQModel checkpoint {ckpt_path.name} "
        "(python -m eqvid.models.convert_tokenizer taming)",
    )
    return ConvertedTokenizer(folder, config, count, numbers, tuple(notes))


# ------------------------------------------------------------------------------------
# TECO (Flax).
# ------------------------------------------------------------------------------------


class _ArgsUnpickler(pickle.Unpickler):
    """Unpickles TECO's `args` file: an `argparse.Namespace` of plain values only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        raise ConversionError(
            f"refusing to unpickle the global {module}.{name}: a TECO `args` file holds an "
            "argparse.Namespace of plain values only."
        )


def _flax_ext(code: int, data: bytes) -> Any:
    """Flax's msgpack extension types: 1 ndarray, 2 complex, 3 NumPy scalar."""
    if code in (1, 3):
        shape, dtype, buffer = msgpack.unpackb(data, raw=True)
        name = dtype.decode("ascii") if isinstance(dtype, bytes) else str(dtype)
        array = np.frombuffer(buffer, dtype=np.dtype(name)).reshape(shape)
        return array if code == 1 else array[()]
    if code == 2:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    return msgpack.ExtType(code, data)


def _unchunk(tree: Any) -> Any:
    """Flax's chunked form of arrays over 1 GiB, joined back."""
    if not isinstance(tree, dict):
        return tree
    if tree.get("__msgpack_chunked_array__"):
        shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return {k: _unchunk(v) for k, v in tree.items()}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
    else:
        out[prefix[:-1]] = tree
    return out


def _latest_checkpoint(folder: pathlib.Path) -> pathlib.Path:
    ckpts = folder / "checkpoints"
    found = (
        sorted(
            (int(m.group(1)), p)
            for p in ckpts.iterdir()
            if (m := re.fullmatch(r"checkpoint_(\d+)", p.name))
        )
        if ckpts.is_dir()
        else []
    )
    if not found:
        raise FileNotFoundError(
            f"{ckpts} holds no Flax checkpoint file `checkpoint_<step>`: pass TECO's VQGAN "
            "folder (with `args` and `checkpoints/`)."
        )
    path = found[-1][1]
    if path.is_dir():
        raise ConversionError(
            f"{path} is a folder (an Orbax checkpoint of a newer Flax), not the msgpack file "
            "that TECO's Flax 0.6 wrote; it is not supported."
        )
    return path


def read_teco_checkpoint(
    checkpoint_dir: str | pathlib.Path,
) -> tuple[argparse.Namespace, dict[str, Any], pathlib.Path]:
    """TECO's VQGAN folder: its hyperparameters (the pickled `args`), the arrays of its
    latest `checkpoints/checkpoint_<step>` flattened to `params/encoder/Conv_0/kernel`-style
    names (`step`, `params`, `opt_state`, `model_state`), and that file's path.
    Needs neither Flax nor TensorFlow."""
    folder = pathlib.Path(checkpoint_dir)
    args_file = folder / "args"
    if not args_file.is_file():
        raise FileNotFoundError(
            f"{args_file} does not exist: pass TECO's VQGAN folder (with `args` and "
            "`checkpoints/checkpoint_<step>`)."
        )
    try:
        with open(args_file, "rb") as f:
            args = _ArgsUnpickler(f).load()
    except ConversionError as error:
        raise ConversionError(f"{args_file}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, IndexError) as error:
        raise ConversionError(f"{args_file}: not a pickled argparse.Namespace ({error}).") from None
    if not isinstance(args, argparse.Namespace):
        raise ConversionError(
            f"{args_file} holds a {type(args).__name__}, not an argparse.Namespace."
        )
    path = _latest_checkpoint(folder)
    try:
        tree = msgpack.unpackb(
            path.read_bytes(), ext_hook=_flax_ext, raw=False, strict_map_key=False
        )
    except (ValueError, msgpack.UnpackException, TypeError) as error:
        raise ConversionError(f"{path}: not a Flax msgpack checkpoint ({error}).") from None
    if not isinstance(tree, dict) or "params" not in tree:
        raise ConversionError(
            f"{path}: not a Flax TrainState checkpoint (no `params`; top-level keys "
            f"{sorted(tree)[:6] if isinstance(tree, dict) else type(tree).__name__})."
        )
    return args, _flatten(_unchunk(tree)), path


_TECO_ARGS = (
    "resolution",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "z_channels",
    "embed_dim",
    "n_embed",
)


def _teco_config(args: argparse.Namespace, where: str) -> VQGAN2DConfig:
    model = getattr(args, "model", "vqgan")
    if model != "vqgan":
        raise ConversionError(f"{where}: a TECO `{model}` run, not its VQGAN (model='vqgan').")
    missing = [a for a in _TECO_ARGS if not hasattr(args, a)]
    if missing:
        raise ConversionError(
            f"{where}: the hyperparameter `{missing[0]}` is missing (a TECO VQGAN's args have "
            f"{', '.join(_TECO_ARGS)}, double_z, dropout)."
        )
    if getattr(args, "double_z", False):
        raise ConversionError(
            f"{where}: double_z=True (the encoder outputs 2·z_channels): not a VQGAN that "
            "eqvid's VQGAN2D (double_z=False) can hold."
        )
    try:
        return VQGAN2DConfig(
            frame_size=int(args.resolution),
            channels=3,
            ch=int(args.ch),
            ch_mult=tuple(int(m) for m in args.ch_mult),
            num_res_blocks=int(args.num_res_blocks),
            attn_resolutions=tuple(int(r) for r in args.attn_resolutions),
            z_channels=int(args.z_channels),
            embed_dim=int(args.embed_dim),
            n_embed=int(args.n_embed),
            dropout=float(getattr(args, "dropout", 0.0) or 0.0),
            beta_on="codebook",  # TECO trained its VQGAN with taming-transformers
            perceptual_weight=0.0,
        )
    except (TypeError, ValueError) as error:
        raise ConversionError(
            f"{where}: hyperparameters that do not make a VQGAN ({error})."
        ) from None


def _teco_mapping(c: VQGAN2DConfig) -> _Mapping:
    """eqvid leaf → Flax name, following TECO's `vqgan.py` and Flax's automatic names
    (`<Class>_<n>`, counted per class within each parent module, in call order)."""
    mapping: _Mapping = {}

    def conv(eq: str, fl: str) -> None:
        mapping[f"{eq}.weight"] = (f"{fl}/kernel", False)
        mapping[f"{eq}.bias"] = (f"{fl}/bias", False)

    def norm(eq: str, fl: str) -> None:
        mapping[f"{eq}.weight"] = (f"{fl}/scale", False)
        mapping[f"{eq}.bias"] = (f"{fl}/bias", False)

    def resnet(eq: str, fl: str) -> None:
        norm(f"{eq}.norm1", f"{fl}/GroupNorm_0")
        conv(f"{eq}.conv1", f"{fl}/Conv_0")
        norm(f"{eq}.norm2", f"{fl}/GroupNorm_1")
        conv(f"{eq}.conv2", f"{fl}/Conv_1")
        conv(f"{eq}.nin_shortcut", f"{fl}/Conv_2")  # only where the channel count changes

    def attention(eq: str, fl: str) -> None:
        norm(f"{eq}.norm", f"{fl}/GroupNorm_0")
        for j, part in enumerate(("q", "k", "v", "proj_out")):
            conv(f"{eq}.{part}", f"{fl}/Conv_{j}")

    levels, blocks = len(c.ch_mult), c.num_res_blocks
    # Encoder: Conv_0, per level ResnetBlock (+ AttnBlock) × R and Downsample, the middle,
    # GroupNorm_0, Conv_1.
    e, fe = "encoder", "params/encoder"
    conv(f"{e}.conv_in", f"{fe}/Conv_0")
    n_res = n_attn = 0
    size = c.frame_size
    for i in range(levels):
        for j in range(blocks):
            resnet(f"{e}.down.{i}.block.{j}", f"{fe}/ResnetBlock_{n_res}")
            n_res += 1
            if size in c.attn_resolutions:
                attention(f"{e}.down.{i}.attn.{j}", f"{fe}/AttnBlock_{n_attn}")
                n_attn += 1
        if i != levels - 1:
            conv(f"{e}.down.{i}.downsample.conv", f"{fe}/Downsample_{i}/Conv_0")
            size //= 2
    resnet(f"{e}.mid.block_1", f"{fe}/ResnetBlock_{n_res}")
    attention(f"{e}.mid.attn_1", f"{fe}/AttnBlock_{n_attn}")
    resnet(f"{e}.mid.block_2", f"{fe}/ResnetBlock_{n_res + 1}")
    norm(f"{e}.norm_out", f"{fe}/GroupNorm_0")
    conv(f"{e}.conv_out", f"{fe}/Conv_1")
    # Decoder: Conv_0, the middle (ResnetBlock_0, AttnBlock_0, ResnetBlock_1), the levels
    # from the last, GroupNorm_0, Conv_1.
    d, fd = "decoder", "params/decoder"
    conv(f"{d}.conv_in", f"{fd}/Conv_0")
    resnet(f"{d}.mid.block_1", f"{fd}/ResnetBlock_0")
    attention(f"{d}.mid.attn_1", f"{fd}/AttnBlock_0")
    resnet(f"{d}.mid.block_2", f"{fd}/ResnetBlock_1")
    n_res, n_attn = 2, 1
    size = c.frame_size // 2 ** (levels - 1)
    for k, i in enumerate(reversed(range(levels))):
        for j in range(blocks + 1):
            resnet(f"{d}.up.{i}.block.{j}", f"{fd}/ResnetBlock_{n_res}")
            n_res += 1
            if size in c.attn_resolutions:
                attention(f"{d}.up.{i}.attn.{j}", f"{fd}/AttnBlock_{n_attn}")
                n_attn += 1
        if i != 0:
            conv(f"{d}.up.{i}.upsample.conv", f"{fd}/Upsample_{k}/Conv_0")
            size *= 2
    norm(f"{d}.norm_out", f"{fd}/GroupNorm_0")
    conv(f"{d}.conv_out", f"{fd}/Conv_1")
    conv("quant_conv", "params/quant_conv")
    conv("post_quant_conv", "params/post_quant_conv")
    mapping["quantize.embedding"] = ("model_state/stats/quantize/embeddings", False)
    return mapping


def convert_teco(
    checkpoint_dir: str | pathlib.Path, out_dir: str | pathlib.Path
) -> ConvertedTokenizer:
    """Convert TECO's released JAX VQGAN (a folder with `args` and
    `checkpoints/checkpoint_<step>`, e.g. `dmlab_vqgan/`) into a `VQGAN2D` tokenizer
    folder.

    The hyperparameters come from `args` (`resolution`, `ch`, `ch_mult`,
    `num_res_blocks`, `attn_resolutions`, `z_channels`, `embed_dim`, `n_embed`,
    `dropout`; `double_z` must be False), RGB frames (`channels = 3`, as TECO's decoder).
    The parameters come from `params` (`encoder`, `decoder`, `quant_conv`,
    `post_quant_conv`; HWIO kernels as eqvid's) and the codebook from
    `model_state/stats/quantize/embeddings` (a plain Euclidean codebook: TECO's VQGAN does
    not normalise it). TECO has no discriminator: the folder gets a fresh one.

    **Returns:** a `ConvertedTokenizer`.

    **Raises:** `FileNotFoundError`; `ConversionError` (a `ValueError`) naming the file and
    the first missing or mis-shaped array (its Flax name, expected and actual shape), or
    an unexpected one.
    """
    folder = pathlib.Path(checkpoint_dir)
    args, arrays, path = read_teco_checkpoint(folder)
    config = _teco_config(args, str(folder / "args"))
    model, count, numbers = _fill(
        config,
        _teco_mapping(config),
        {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)},
        str(path),
        scope=lambda k: k.startswith(("params/", "model_state/stats/quantize/")),
        what="TECO VQGAN",
    )
    out = save_tokenizer(
        model,
        out_dir,
        source=f"TECO VQGAN (Flax) {folder.name}/checkpoints/{path.name} "
        "(python -m eqvid.models.convert_tokenizer teco)",
    )
    notes = ("TECO's VQGAN has no discriminator: a fresh one was made",)
    return ConvertedTokenizer(out, config, count, numbers, notes)


# ------------------------------------------------------------------------------------
# TATS (3D VQGAN, PyTorch Lightning).
# ------------------------------------------------------------------------------------

_TATS_PREFIXES = ("encoder.", "decoder.", "pre_vq_conv.", "post_vq_conv.", "codebook.")
_TATS_ARCH = ("n_hiddens", "downsample", "embedding_dim", "n_codes")

_TatsMapping = dict[str, tuple[str, tuple[int, ...] | None]]
"""eqvid leaf key → (TATS state-dict name, the axis permutation from the PyTorch layout
to eqvid's, None for as is)."""

_CONV3D = (2, 3, 4, 1, 0)  # Conv3d (out, in, kT, kH, kW) → (kT, kH, kW, in, out)
_CONVT3D = (2, 3, 4, 0, 1)  # ConvTranspose3d (in, out, kT, kH, kW) → (kT, kH, kW, in, out)
_CONV2D = (2, 3, 1, 0)  # Conv2d (out, in, kH, kW) → (kH, kW, in, out)


def _tats_args(rest: Mapping[str, Any], where: str) -> argparse.Namespace | None:
    """TATS's `hyper_parameters['args']` Namespace, None when the file has none."""
    hparams = rest.get("hyper_parameters")
    if hparams is None:
        return None
    if not isinstance(hparams, dict):
        raise ConversionError(
            f"{where}: `hyper_parameters` is a {type(hparams).__name__}, not the dict "
            "`{'args': argparse.Namespace}` that TATS's VQGAN saves."
        )
    args = hparams.get("args")
    if isinstance(args, argparse.Namespace):
        return args
    if all(a in hparams for a in _TATS_ARCH):  # hyperparameters saved flat
        return argparse.Namespace(**hparams)
    raise ConversionError(
        f"{where}: `hyper_parameters['args']` is "
        f"{'missing' if args is None else 'a ' + type(args).__name__}, not TATS's "
        "argparse.Namespace; pass `config`."
    )


def tats_config(
    args: argparse.Namespace, *, resolution: int | None = None, where: str = "args"
) -> VQGAN3DConfig:
    """The `VQGAN3DConfig` of TATS's hyperparameters (`hyper_parameters['args']`):

    | TATS `args` | `VQGAN3DConfig` |
    |---|---|
    | `resolution` (or the `resolution` argument, which wins) | `frame_size` |
    | `image_channels` (3) | `channels` |
    | `n_hiddens`, `downsample`, `embedding_dim`, `n_codes` | the same |
    | `norm_type` ('group'), `padding_type` ('replicate') | the same |
    | `num_groups` (absent in TATS: 32) | `norm_groups` |
    | `no_random_restart`, `restart_thres` (1.0) | `restart_threshold` (None if no restart) |
    | `l1_weight` (4), `image_gan_weight`, `video_gan_weight` (1), `gan_feat_weight` (0) | the same |
    | `disc_channels` (64), `disc_layers` (3) | the same |
    | `discriminator_iter_start` (50000) | `disc_start` = it + 1 |
    | `sequence_length` (16) | `train_frames` |

    TATS's argparse defaults (in brackets) fill absent optional fields; the four
    architecture fields must be there. Besides: `perceptual_weight = 0` (eqvid's LPIPS
    is not TATS's VGG one: set it to fine-tune with a perceptual term) and
    `codebook_init_from_data = False` (the converted codebook must not be replaced by
    encoder outputs at step 1)."""
    missing = [a for a in _TATS_ARCH if getattr(args, a, None) is None]
    if missing:
        raise ConversionError(
            f"{where}: the hyperparameter `{missing[0]}` is missing (TATS's VQGAN args have "
            f"{', '.join(_TATS_ARCH)}, norm_type, image_channels, resolution)."
        )
    size = resolution if resolution is not None else getattr(args, "resolution", None)
    if size is None:
        raise ConversionError(
            f"{where}: no `resolution` in the hyperparameters: pass the frame size "
            "(resolution=… / --resolution)."
        )

    def get(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    try:
        downsample = tuple(int(d) for d in args.downsample)
        restart = None if get("no_random_restart", False) else float(get("restart_thres", 1.0))
        frames = int(get("sequence_length", 16))
        return VQGAN3DConfig(
            frame_size=int(size),
            channels=int(get("image_channels", 3)),
            n_hiddens=int(args.n_hiddens),
            downsample=cast(tuple[int, int, int], downsample),
            embedding_dim=int(args.embedding_dim),
            n_codes=int(args.n_codes),
            norm_type=get("norm_type", "group"),
            norm_groups=int(get("num_groups", 32)),
            padding_type=get("padding_type", "replicate"),
            restart_threshold=restart,
            codebook_init_from_data=False,
            l1_weight=float(get("l1_weight", 4.0)),
            perceptual_weight=0.0,
            image_gan_weight=float(get("image_gan_weight", 1.0)),
            video_gan_weight=float(get("video_gan_weight", 1.0)),
            gan_feat_weight=float(get("gan_feat_weight", 0.0)),
            disc_channels=int(get("disc_channels", 64)),
            disc_layers=int(get("disc_layers", 3)),
            disc_start=int(get("discriminator_iter_start", 50_000)) + 1,
            train_frames=frames if frames % downsample[0] == 0 else None,
        )
    except (TypeError, ValueError) as error:
        raise ConversionError(
            f"{where}: hyperparameters that do not make a VQGAN3D ({error})."
        ) from None


def _tats_mapping(model: VQGAN3D) -> tuple[_TatsMapping, _TatsMapping]:
    """(generator mapping, discriminators' mapping) of `model`'s leaves."""
    from ..nn._vqgan3d_codec import SamePadConvTranspose3d

    generator: _TatsMapping = {}
    discs: _TatsMapping = {}
    parts = (model.encoder, model.pre_vq_conv, model.post_vq_conv, model.decoder)
    names = ("encoder", "pre_vq_conv", "post_vq_conv", "decoder")
    for part, prefix in zip(parts, names):
        for path, leaf in jax.tree_util.tree_flatten_with_path(part)[0]:
            key = f"{prefix}.{_leaf_key(path)}" if path else prefix
            module, _, field = key.rpartition(".")
            if leaf.ndim == 5:
                is_t = isinstance(_module_at(model, module), SamePadConvTranspose3d)
                sub = "convt" if is_t else "conv"
                generator[key] = (f"{module}.{sub}.{field}", _CONVT3D if is_t else _CONV3D)
            elif field == "bias" and leaf.ndim == 1 and _is_conv(_module_at(model, module)):
                is_t = isinstance(_module_at(model, module), SamePadConvTranspose3d)
                generator[key] = (f"{module}.{'convt' if is_t else 'conv'}.bias", None)
            elif module.endswith("final_block"):
                generator[key] = (f"{module}.0.{field}", None)
            else:
                generator[key] = (key, None)
    for prefix in ("image_discriminator", "video_discriminator"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(getattr(model, prefix))[0]:
            key = _leaf_key(path)  # layers.{n}.{conv,norm}.{field}
            m = re.fullmatch(r"layers\.(\d+)\.(conv|norm)\.(\w+)", key)
            assert m is not None, key
            n, kind, field = m.groups()
            perm = {5: _CONV3D, 4: _CONV2D}.get(leaf.ndim)
            src = f"{prefix}.model{n}.{0 if kind == 'conv' else 1}.{field}"
            discs[f"{prefix}.{key}"] = (src, perm)
    return generator, discs


def _module_at(model: Any, dotted: str) -> Any:
    node = model
    for part in dotted.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _is_conv(module: Any) -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and weight.ndim == 5


def _expected(shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[int, ...]:
    """The PyTorch shape whose permutation `perm` gives the eqvid `shape`."""
    if perm is None:
        return shape
    out = [0] * len(shape)
    for i, p in enumerate(perm):
        out[p] = shape[i]
    return tuple(out)


def _take(
    mapping: _TatsMapping,
    state: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The converted arrays of `mapping` (eqvid key → array), and the problems (missing
    or mis-shaped tensors, in order)."""
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for key, (name, perm) in mapping.items():
        expected = _expected(shapes[key], perm)
        value = state.get(name)
        if value is None:
            problems.append(f"tensor `{name}` is missing (expected shape {_fmt(expected)})")
        elif tuple(value.shape) != expected:
            problems.append(
                f"tensor `{name}` has shape {_fmt(tuple(value.shape))}, expected {_fmt(expected)}"
            )
        else:
            host = np.asarray(value, np.float32)
            out[key] = host.transpose(perm) if perm is not None else host
    return out, problems


def _tats_config_text(c: VQGAN3DConfig) -> str:
    return (
        f"(channels={c.channels}, n_hiddens={c.n_hiddens}, downsample={c.downsample}, "
        f"embedding_dim={c.embedding_dim}, n_codes={c.n_codes}, norm_type={c.norm_type!r})"
    )


def _bn_folded_into_affine(model: VQGAN3D) -> VQGAN3D:
    """`model` (running statistics in its layers) with every codec BatchNorm's running
    statistics folded into its scale and bias, the statistics reset to (0, 1): the same
    inference function, `w·(x - μ)/√(σ² + ε) + b = w'·(x - 0)/√(1 + ε) + b'`."""
    norms = _generator_norms(model.encoder, model.decoder)
    new = []
    for n in norms:
        mu = np.asarray(n.running_mean, np.float64)
        var = np.asarray(n.running_var, np.float64)
        w = np.asarray(n.weight, np.float64)
        b = np.asarray(n.bias, np.float64)
        inv = w / np.sqrt(var + n.eps)
        new += [
            jnp.asarray(inv * np.sqrt(1.0 + n.eps), jnp.float32),
            jnp.asarray(b - mu * inv, jnp.float32),
            jnp.zeros_like(n.running_mean),
            jnp.ones_like(n.running_var),
        ]
    return eqx.tree_at(
        lambda m: [
            a
            for n in _generator_norms(m.encoder, m.decoder)
            for a in (n.weight, n.bias, n.running_mean, n.running_var)
        ],
        model,
        new,
    )


def _running_stats_survive(model: VQGAN3D, folder: pathlib.Path) -> bool:
    """Whether the tokenizer folder gives back the codec's BatchNorm running statistics
    (the tokenizer format leaves out arrays declared frozen, which they are)."""
    from ._tokenizer_files import load_tokenizer

    loaded = load_tokenizer(folder)
    assert isinstance(loaded, VQGAN3D)
    for a, b in zip(
        _generator_norms(model.encoder, model.decoder),
        _generator_norms(loaded.encoder, loaded.decoder),
    ):
        for x, y in ((a.running_mean, b.running_mean), (a.running_var, b.running_var)):
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                return False
    return True


def convert_tats(
    ckpt_path: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    config: VQGAN3DConfig | None = None,
    resolution: int | None = None,
) -> ConvertedTokenizer:
    """Convert a TATS 3D VQGAN checkpoint (TATS's / MeBT's PyTorch Lightning `.ckpt`,
    e.g. `vqgan_ucf_128_488_epoch=1-step=29999.ckpt`) into a `VQGAN3D` tokenizer folder.

    **Arguments:**

    - `ckpt_path`: the checkpoint file.
    - `out_dir`: the tokenizer folder to write (created if needed).
    - `config`: the `VQGAN3DConfig` to build (its architecture must match the file);
      None reads it from the file's `hyper_parameters['args']` (`tats_config`).
    - `resolution`: the frame size when `config` is None; None takes the args'
      `resolution`.

    Converted: the encoder, decoder, `pre_vq_conv`, `post_vq_conv` (the key map of
    `eqvid.nn._vqgan3d_codec`), the codebook and, with `norm_type="batch"`, the
    BatchNorm running statistics; the image and video discriminators when their
    tensors fit `disc_channels` / `disc_layers` (else fresh ones, with a note).
    Ignored: `perceptual_model.*` (TATS's VGG LPIPS), `num_batches_tracked`, the
    optimiser states.

    **The codebook** goes into the model state as the EMA state
    `CodebookEMA(codebook.embeddings, codebook.N, codebook.z_avg)`: TATS's `N` and
    `z_avg` are eqvid's `cluster_size` and `embed_sum`, with the same update
    (`N ← 0.99·N + 0.01·n`, `z_avg ← 0.99·z_avg + 0.01·Σz`) and the same Laplace-smoothed
    codebook `z_avg / N̂`, `N̂ = (N + 1e-7) / (ΣN + K·1e-7) · ΣN`. One difference: a
    restarted dead code (TATS's `restart_thres`, off in the released checkpoints) gets
    a new vector in TATS, but `N` and `z_avg` are left, so the file's codebook differs
    from `z_avg / N̂` there; eqvid's restart also resets `N` and `S`. The file's vectors
    are kept as they are (a note counts the codes where they differ).

    **The BatchNorm running statistics** go into the state (`bn_stats`); the model is
    saved with its state folded in (`with_state`). The tokenizer format leaves out
    arrays declared frozen, which the running statistics are; when the folder written
    does not give them back, the converter folds them into each norm's scale and bias
    (`w' = w·√(1 + ε)/√(σ² + ε)`, `b' = b - μ·w/√(σ² + ε)`, statistics (0, 1)): the
    same encoder and decoder at inference, but not TATS's parameters for fine-tuning
    with batch statistics (a note says so). The tokenizer folder keeps no EMA
    statistics either (only the codebook, folded in).

    **Returns:** a `ConvertedTokenizer`.

    **Raises:** `FileNotFoundError`; `ConversionError` (a `ValueError`) naming the file
    and the first missing or mis-shaped tensor (name, expected and actual shape), an
    unexpected one, or a missing hyperparameter.
    """
    from ..nn._quantize import CodebookEMA

    ckpt_path = pathlib.Path(ckpt_path)
    where = str(ckpt_path)
    state_dict, rest = read_lightning_checkpoint(ckpt_path)
    notes: list[str] = []
    if config is None:
        args = _tats_args(rest, where)
        if args is None:
            raise ConversionError(
                f"{where}: no `hyper_parameters` (a plain state dict?): pass `config`, a "
                "VQGAN3DConfig of the file's architecture."
            )
        config = tats_config(args, resolution=resolution, where=f"{where} (hyper_parameters)")
    elif config.perceptual_weight > 0:
        notes.append("perceptual_weight > 0: eqvid's LPIPS (AlexNet), not TATS's VGG one")
    model, mstate = eqx.nn.make_with_state(VQGAN3D)(config, key=jax.random.key(0))
    generator, discs = _tats_mapping(model)
    shapes = {
        k: tuple(leaf.shape)
        for k, leaf in (
            (_leaf_key(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(model)[0]
        )
    }
    k, d = config.n_codes, config.embedding_dim
    book = {"codebook.embeddings": (k, d), "codebook.N": (k,), "codebook.z_avg": (k, d)}
    values, problems = _take(generator, state_dict, shapes)
    book_values, book_problems = _take({name: (name, None) for name in book}, state_dict, book)
    problems += book_problems
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConversionError(
            f"{where}: {problems[0]}{more}. The file does not hold a TATS VQGAN of the "
            f"configuration {_tats_config_text(config)}, or it is incomplete."
        )
    used = {name for name, _ in generator.values()} | set(book)
    extra = [
        key
        for key in state_dict
        if key.startswith(_TATS_PREFIXES)
        and key not in used
        and not key.endswith(".num_batches_tracked")
    ]
    if extra:
        shape = _fmt(tuple(state_dict[extra[0]].shape))
        more = f" (and {len(extra) - 1} more: {extra[1:4]})" if len(extra) > 1 else ""
        raise ConversionError(
            f"{where}: unexpected tensor `{extra[0]}` {shape}{more}: the file holds a TATS "
            f"VQGAN that differs from the configuration {_tats_config_text(config)}."
        )
    disc_values, disc_problems = _take(discs, state_dict, shapes)
    if not any(
        key.startswith(("image_discriminator.", "video_discriminator.")) for key in state_dict
    ):
        notes.append("the file has no discriminators: fresh ones were made")
        disc_values = {}
    elif disc_problems:
        notes.append(
            f"the file's discriminators do not fit disc_channels={config.disc_channels}, "
            f"disc_layers={config.disc_layers} ({disc_problems[0]}): fresh ones were made"
        )
        disc_values = {}
    else:
        notes.append(
            "discriminators converted (their BatchNorm uses batch statistics, as TATS's "
            "while training; the video one's running statistics are not kept)"
        )
    values.update(disc_values)
    flat, treedef = jax.tree_util.tree_flatten_with_path(model)
    leaves = [
        jnp.asarray(values[_leaf_key(p)]) if _leaf_key(p) in values else leaf for p, leaf in flat
    ]
    model = cast(VQGAN3D, jax.tree_util.tree_unflatten(treedef, leaves))
    count = len(values) + len(book_values)
    numbers = sum(v.size for v in values.values()) + sum(v.size for v in book_values.values())

    embeddings = book_values["codebook.embeddings"]
    sizes, sums = book_values["codebook.N"], book_values["codebook.z_avg"]
    assert model.quantize.ema is not None
    mstate = mstate.set(
        model.quantize.ema,
        CodebookEMA(jnp.asarray(embeddings), jnp.asarray(sizes), jnp.asarray(sums)),
    )
    total = np.float64(sizes.sum())
    smoothed = (sizes.astype(np.float64) + 1e-7) / (total + k * 1e-7) * total
    implied = sums / np.maximum(smoothed, 1e-30)[:, None]
    differ = int(np.sum(~np.all(np.isclose(implied, embeddings, rtol=1e-3, atol=1e-5), axis=1)))
    if differ:
        notes.append(
            f"{differ} of {k} codes differ from z_avg / N̂ (TATS's dead-code restarts replace "
            "the vector only): the file's vectors were kept"
        )
    if model.bn_stats is not None:
        norms = _generator_norms(model.encoder, model.decoder)
        mstate = mstate.set(
            model.bn_stats,
            tuple((n.running_mean, n.running_var) for n in norms),
        )
    folded = model.with_state(mstate)
    source = (
        f"TATS 3D VQGAN checkpoint {ckpt_path.name} (python -m eqvid.models.convert_tokenizer tats)"
    )
    folder = save_tokenizer(folded, out_dir, source=source)
    if config.norm_type == "batch" and not _running_stats_survive(folded, folder):
        folder = save_tokenizer(_bn_folded_into_affine(folded), out_dir, source=source)
        notes.append(
            "the tokenizer format does not keep BatchNorm running statistics (frozen arrays): "
            "they were folded into the norms' scale and bias (exact at inference; fine-tuning "
            "with batch statistics starts from other norm parameters than TATS's)"
        )
    notes.append("the EMA statistics N / z_avg are not kept in a tokenizer folder")
    return ConvertedTokenizer(folder, config, count, numbers, tuple(notes))
