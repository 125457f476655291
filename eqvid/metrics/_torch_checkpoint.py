"""Read PyTorch checkpoint files (`.pt` / `.pth`) into NumPy arrays, without PyTorch.

Pretrained metric networks (I3D, AlexNet, the LPIPS linear layers) are published as
PyTorch checkpoints. This module reads the two formats `torch.save` has written, using
only `zipfile`, `struct` and a *restricted* `pickle.Unpickler`:

- **zip format** (PyTorch ≥ 1.6, the default since): a zip archive with one top-level
  folder `<prefix>/` holding `data.pkl` (the pickled object), `data/<key>` (one raw,
  uncompressed storage per key), optionally `byteorder` (`little` / `big`) and `version`.
- **legacy format** (PyTorch < 1.6, e.g. files saved by PyTorch 0.4): six pickles and raw
  data back to back in one stream — the magic number `0x1950a86a20f9469cfc6c`, the
  protocol version `1001`, a `sys_info` dict (`little_endian`, type sizes), the object
  itself, the sorted list of storage keys, and then each storage in that order as an
  8-byte element count followed by its raw bytes.

In both formats the object pickle refers to storages through *persistent ids*
`('storage', <torch.XStorage class>, key, location, numel[, view_metadata])` and builds
tensors with `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.

Only what a weight file needs is accepted: tensors (float32, float16, float64, int64,
int32, uint8, bool storages), `collections.OrderedDict` and plain Python containers and
scalars. Any other global in the pickle (classes, functions — the usual way a malicious
pickle runs code) is refused with `CheckpointFormatError`; nothing in the file is ever
executed. The very old tar-based format (PyTorch ≤ 0.3) is refused too.
"""

import collections
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np

__all__ = ["CheckpointFormatError", "read_torch_checkpoint", "read_torch_state_dict"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> element dtype (native order; byte order is applied on reading).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch checkpoint this reader accepts (corrupt, unsupported, or
    it contains pickled objects other than tensors and containers)."""


class _StorageType:
    """Stands in for a `torch.<Name>Storage` class named in a persistent id."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage: its element type and count, and its data once it has been read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _StorageView:
    """A legacy-format view into part of a root storage (`view_metadata`)."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        self.root = root
        self.offset = offset
        self.numel = numel


class _TensorRef:
    """A tensor whose storage may not have been read yet (legacy files keep the data
    after the pickle); materialised into a NumPy array at the end."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise CheckpointFormatError(
                f"a tensor refers to {type(storage).__name__!r}, not to a storage."
            )
        if not (
            isinstance(offset, int)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(isinstance(s, int) and s >= 0 for s in size + stride)
            and offset >= 0
        ):
            raise CheckpointFormatError(
                f"bad tensor layout: offset={offset!r}, size={size!r}, stride={stride!r}."
            )
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def materialise(self) -> np.ndarray:
        if isinstance(self.storage, _StorageView):
            root, base, limit = self.storage.root, self.storage.offset, self.storage.numel
        else:
            root, base, limit = self.storage, 0, self.storage.numel
        assert root.data is not None, "storage data must be read before materialising"
        flat = root.data[base : base + limit]
        if 0 in self.size:
            return np.zeros(self.size, root.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:
            raise CheckpointFormatError(
                f"a tensor of size {self.size}, stride {self.stride} at offset {self.offset} "
                f"reads past its storage {root.key!r} of {flat.size} elements."
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=root.dtype.newbyteorder("="), copy=True)


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    # torch._utils._rebuild_tensor(storage, offset, size, stride) and
    # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata]):
    # requires_grad, hooks and metadata do not matter for weights.
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, _requires_grad=None, _backward_hooks=None, *_unused):
    # torch._utils._rebuild_parameter(data, requires_grad, backward_hooks): an nn.Parameter.
    if not isinstance(data, _TensorRef):
        raise CheckpointFormatError("a parameter must wrap a tensor.")
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a tensor checkpoint needs and hands
    storage persistent ids to `persistent_load_fn`."""

    def __init__(self, file: io.BufferedIOBase, persistent_load_fn=None):
        super().__init__(file, encoding="latin1")
        self._persistent_load_fn = persistent_load_fn

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointFormatError(
            f"refusing to unpickle the global {module}.{name}: only tensors "
            f"({', '.join(sorted(_STORAGE_DTYPES))}), dicts, lists and scalars are read. "
            "Save a plain state dict (`torch.save(model.state_dict(), path)`)."
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load_fn is None:
            raise CheckpointFormatError(f"unexpected persistent id {pid!r}.")
        return self._persistent_load_fn(pid)


def _parse_storage_pid(pid: Any, legacy: bool) -> tuple[_StorageType, str, int, Any]:
    if not isinstance(pid, tuple) or not pid:
        raise CheckpointFormatError(f"bad persistent id {pid!r}.")
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if typename != "storage":
        raise CheckpointFormatError(f"unsupported persistent id of type {typename!r}.")
    expected = 6 if legacy else 5
    if len(pid) != expected:
        raise CheckpointFormatError(
            f"a storage persistent id should have {expected} fields, got {pid!r}."
        )
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if legacy else None
    if not isinstance(storage_type, _StorageType):
        raise CheckpointFormatError(f"bad storage type {storage_type!r} in {pid!r}.")
    key = key.decode("ascii") if isinstance(key, bytes) else str(key)
    if not isinstance(numel, int) or numel < 0:
        raise CheckpointFormatError(f"bad storage size {numel!r} in {pid!r}.")
    return storage_type, key, numel, view


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    if isinstance(obj, (_Storage, _StorageView, _StorageType)):
        raise CheckpointFormatError("the checkpoint holds a bare storage, not a tensor.")
    return obj


def _byte_order_dtype(dtype: np.dtype, little_endian: bool) -> np.dtype:
    return dtype.newbyteorder("<" if little_endian else ">")


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{path}: a PyTorch zip checkpoint holds exactly one `<prefix>/data.pkl`, "
                f"found {len(pickles)}."
            )
        prefix = pickles[0][: -len("data.pkl")]
        little_endian = True
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode("ascii").strip()
            if order not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byte order {order!r}.")
            little_endian = order == "little"
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            storage_type, key, numel, _ = _parse_storage_pid(pid, legacy=False)
            if key not in storages:
                storage = _Storage(key, storage_type.dtype, numel)
                record = prefix + "data/" + key
                if record not in names:
                    raise CheckpointFormatError(f"{path}: storage record {record!r} is missing.")
                raw = archive.read(record)
                nbytes = numel * storage.dtype.itemsize
                if len(raw) != nbytes:
                    raise CheckpointFormatError(
                        f"{path}: storage {record!r} has {len(raw)} bytes, expected "
                        f"{numel} × {storage.dtype.itemsize} = {nbytes}."
                    )
                storage.data = np.frombuffer(
                    raw, _byte_order_dtype(storage.dtype, little_endian), numel
                )
                storages[key] = storage
            return storages[key]

        # `ZipFile.open` returns a `ZipExtFile` (a `BufferedIOBase`); typeshed says `IO[bytes]`.
        with cast(zipfile.ZipExtFile, archive.open(pickles[0])) as f:
            obj = _RestrictedUnpickler(f, persistent_load).load()
    return _materialise(obj)


def _read_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            magic = _RestrictedUnpickler(f).load()
        except CheckpointFormatError:
            raise
        except Exception as error:
            raise CheckpointFormatError(
                f"{path} is neither a PyTorch zip checkpoint nor a legacy one ({error})."
            ) from error
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(
                f"{path} is neither a PyTorch zip checkpoint nor a legacy one (wrong magic number)."
            )
        protocol = _RestrictedUnpickler(f).load()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(
                f"{path}: unsupported legacy protocol version {protocol!r} "
                f"(expected {LEGACY_PROTOCOL_VERSION})."
            )
        sys_info = _RestrictedUnpickler(f).load()
        little_endian = (
            bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        )
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage | _StorageView:
            storage_type, key, numel, view = _parse_storage_pid(pid, legacy=True)
            root = storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
            if root.dtype != storage_type.dtype or root.numel != numel:
                raise CheckpointFormatError(
                    f"{path}: storage {key!r} is described twice, differently."
                )
            if view is None:
                return root
            if not (isinstance(view, tuple) and len(view) == 3):
                raise CheckpointFormatError(f"{path}: bad storage view {view!r}.")
            _view_key, offset, view_numel = view
            if not (offset >= 0 and offset + view_numel <= numel):
                raise CheckpointFormatError(f"{path}: storage view {view!r} is out of bounds.")
            return _StorageView(root, offset, view_numel)

        obj = _RestrictedUnpickler(f, persistent_load).load()
        keys = _RestrictedUnpickler(f).load()
        if not isinstance(keys, list):
            raise CheckpointFormatError(f"{path}: the storage key list is missing.")
        count_format = "<q" if little_endian else ">q"
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            if key not in storages:
                raise CheckpointFormatError(f"{path}: data for unknown storage {key!r}.")
            storage = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointFormatError(f"{path}: truncated before storage {key!r}.")
            (numel,) = struct.unpack(count_format, header)
            if numel != storage.numel:
                raise CheckpointFormatError(
                    f"{path}: storage {key!r} has {numel} elements on disk, "
                    f"the pickle says {storage.numel}."
                )
            nbytes = numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise CheckpointFormatError(f"{path}: storage {key!r} is truncated.")
            storage.data = np.frombuffer(
                raw, _byte_order_dtype(storage.dtype, little_endian), numel
            )
        missing = sorted(k for k, s in storages.items() if s.data is None)
        if missing:
            raise CheckpointFormatError(f"{path}: no data for storages {missing}.")
    return _materialise(obj)


def read_torch_checkpoint(path: str | Path) -> Any:
    """Read a file written by `torch.save`, without importing PyTorch.

    **Arguments:**

    - `path`: a `.pt` / `.pth` file in PyTorch's zip format (PyTorch ≥ 1.6) or its
        legacy format (PyTorch 0.4 – 1.5).

    **Returns:**

    The saved object with every tensor replaced by a contiguous NumPy array in native
    byte order (`OrderedDict`s become plain `dict`s, key order kept).

    **Raises:**

    - `FileNotFoundError` if `path` does not exist.
    - `CheckpointFormatError` if the file is not such a checkpoint, is truncated or
        inconsistent, or pickles anything but tensors, dicts, lists, tuples and scalars.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}.")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    if tarfile.is_tarfile(path):
        raise CheckpointFormatError(
            f"{path} uses PyTorch's pre-0.4 tar format, which is not supported; re-save it "
            "with a newer PyTorch (`torch.save(torch.load(path), new_path)`)."
        )
    return _read_legacy(path)


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (a flat mapping from names to tensors).

    **Arguments:**

    - `path`: a checkpoint holding `model.state_dict()` (see `read_torch_checkpoint`).

    **Returns:**

    A dict from parameter / buffer name to NumPy array, in file order.

    **Raises:**

    - `CheckpointFormatError` if the file holds anything other than a flat mapping from
        strings to tensors (and the errors of `read_torch_checkpoint`).
    """
    obj = read_torch_checkpoint(path)
    if not isinstance(obj, dict):
        raise CheckpointFormatError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)."
        )
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise CheckpointFormatError(
            f"{path} is not a flat state dict: entries {bad[:5]} are not name → tensor."
        )
    return obj
