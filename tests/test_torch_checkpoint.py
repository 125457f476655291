"""Reading PyTorch checkpoints without PyTorch: both on-disk formats, round trips, refusals.

The writers below emit the pickle opcodes by hand (protocol 2) following PyTorch's
`torch/serialization.py`, so they share no code with the reader; `test_lpips.py` and
`test_i3d.py` use them to make synthetic weight files.
"""

import collections
import struct
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest

from eqvid.metrics._torch_checkpoint import (
    LEGACY_MAGIC_NUMBER,
    CheckpointFormatError,
    read_torch_checkpoint,
    read_torch_state_dict,
)

# --------------------------------------------------------------------------- writer

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
}


@dataclass
class StoredTensor:
    """A tensor as PyTorch stores it: a view (offset, size, stride in elements) into a
    1-D storage that several tensors may share (same `key`)."""

    storage: np.ndarray
    key: str
    offset: int
    size: tuple
    stride: tuple
    parameter: bool = False  # pickled as nn.Parameter (torch._utils._rebuild_parameter)


@dataclass
class Global:
    module: str
    name: str


@dataclass
class Reduce:
    func: Global
    args: tuple


def _ops(obj, pid) -> bytes:
    """Protocol-2 pickle opcodes for `obj`; `pid(tensor)` gives a storage's persistent id."""
    if obj is None:
        return b"N"
    if obj is True:
        return b"\x88"
    if obj is False:
        return b"\x89"
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        if -(2**31) <= obj < 2**31:
            return b"J" + struct.pack("<i", obj)
        raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw  # LONG1
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    if isinstance(obj, str):
        raw = obj.encode("utf-8")
        return b"X" + struct.pack("<I", len(raw)) + raw
    if isinstance(obj, Global):
        return b"c" + f"{obj.module}\n{obj.name}\n".encode("ascii")
    if isinstance(obj, Reduce):
        return _ops(obj.func, pid) + _ops(obj.args, pid) + b"R"
    if isinstance(obj, tuple):
        return b")" if not obj else b"(" + b"".join(_ops(o, pid) for o in obj) + b"t"
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(_ops(o, pid) for o in obj) + b"e" if obj else b"")
    if isinstance(obj, collections.OrderedDict):
        # OrderedDict() then SETITEMS, then BUILD with {'_metadata': {...}} as
        # `state_dict()` results carry.
        items = b"".join(_ops(k, pid) + _ops(v, pid) for k, v in obj.items())
        state = {"_metadata": {"": {"version": 1}}}
        out = _ops(Reduce(Global("collections", "OrderedDict"), ()), pid)
        if items:
            out += b"(" + items + b"u"
        return out + _ops(state, pid) + b"b"
    if isinstance(obj, dict):
        items = b"".join(_ops(k, pid) + _ops(v, pid) for k, v in obj.items())
        return b"}" + (b"(" + items + b"u" if items else b"")
    if isinstance(obj, StoredTensor):
        storage = _ops(pid(obj), pid) + b"Q"  # BINPERSID
        hooks = _ops(Reduce(Global("collections", "OrderedDict"), ()), pid)
        args = (
            storage
            + _ops(obj.offset, pid)
            + _ops(tuple(obj.size), pid)
            + _ops(tuple(obj.stride), pid)
            + _ops(False, pid)
            + hooks
        )
        tensor = _ops(Global("torch._utils", "_rebuild_tensor_v2"), pid) + b"(" + args + b"tR"
        if obj.parameter:
            return (
                _ops(Global("torch._utils", "_rebuild_parameter"), pid)
                + b"("
                + tensor
                + _ops(True, pid)
                + hooks
                + b"tR"
            )
        return tensor
    raise TypeError(f"the test writer cannot pickle {type(obj)}")


def _pickle(obj, pid=lambda t: None) -> bytes:
    return b"\x80\x02" + _ops(obj, pid) + b"."


def as_stored(obj, counter=None):
    """Replace every NumPy array in `obj` by a contiguous StoredTensor with its own key."""
    counter = counter if counter is not None else [0]
    if isinstance(obj, np.ndarray):
        key = str(counter[0])
        counter[0] += 1
        a = np.array(obj, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        stride = tuple(s // a.itemsize for s in a.strides) if a.ndim else ()
        return StoredTensor(a.reshape(-1), key, 0, a.shape, stride)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, as_stored(v, counter)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: as_stored(v, counter) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_stored(v, counter) for v in obj)
    return obj


def _storages(obj, found):
    if isinstance(obj, StoredTensor):
        found.setdefault(obj.key, obj.storage)
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _storages(v, found)
    return found


def write_torch_zip(path, obj, *, prefix="archive", byteorder="little"):
    """Write `obj` (containing NumPy arrays / StoredTensors) as `torch.save` (≥ 1.6) does."""
    obj = as_stored(obj)
    storages = _storages(obj, {})

    def pid(t):
        s = storages[t.key]
        return ("storage", Global("torch", _STORAGE_NAMES[s.dtype]), t.key, "cpu", s.size)

    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", _pickle(obj, pid))
        if byteorder is not None:
            archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, s in storages.items():
            archive.writestr(
                f"{prefix}/data/{key}", s.astype(s.dtype.newbyteorder(order)).tobytes()
            )
        archive.writestr(f"{prefix}/version", "3\n")


def write_torch_legacy(path, obj, *, views=None):
    """Write `obj` as PyTorch < 1.6 (`_legacy_save`) does. `views` maps a StoredTensor key
    to `(root_key, offset, numel)`: that storage is a view into a root storage."""
    obj = as_stored(obj)
    storages = _storages(obj, {})
    views = views or {}

    def pid(t):
        if t.key in views:
            root_key, offset, numel = views[t.key]
            root = storages[root_key]
            return (
                "storage",
                Global("torch", _STORAGE_NAMES[root.dtype]),
                root_key,
                "cpu",
                root.size,
                (t.key, offset, numel),
            )
        s = storages[t.key]
        return ("storage", Global("torch", _STORAGE_NAMES[s.dtype]), t.key, "cpu", s.size, None)

    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    roots = sorted(k for k in storages if k not in views)
    with open(path, "wb") as f:
        f.write(_pickle(LEGACY_MAGIC_NUMBER))
        f.write(_pickle(1001))
        f.write(_pickle(sys_info))
        f.write(_pickle(obj, pid))
        f.write(_pickle(list(roots)))
        for key in roots:
            s = storages[key]
            f.write(struct.pack("<q", s.size))
            f.write(s.astype(s.dtype.newbyteorder("<")).tobytes())


# --------------------------------------------------------------------------- tests


def _example_state(rng):
    return collections.OrderedDict(
        [
            ("conv.weight", rng.standard_normal((4, 3, 2, 2)).astype(np.float32)),
            ("conv.bias", rng.standard_normal(4).astype(np.float32)),
            ("half", rng.standard_normal((2, 3)).astype(np.float16)),
            ("double", rng.standard_normal(5)),
            ("bn.num_batches_tracked", np.array(12345678901, np.int64)),  # 0-d
            ("empty", np.zeros((0, 3), np.float32)),
        ]
    )


@pytest.mark.parametrize("fmt", ["zip", "zip-big-endian", "legacy"])
def test_round_trip_is_exact(tmp_path, fmt):
    rng = np.random.default_rng(0)
    state = _example_state(rng)
    path = tmp_path / "w.pth"
    if fmt == "legacy":
        write_torch_legacy(path, state)
    else:
        write_torch_zip(path, state, byteorder="big" if fmt == "zip-big-endian" else "little")
    read = read_torch_state_dict(path)
    assert list(read) == list(state)
    for k, v in state.items():
        assert read[k].dtype == v.dtype and read[k].shape == v.shape, k
        np.testing.assert_array_equal(read[k], v)
        assert read[k].dtype.isnative and read[k].flags.c_contiguous


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_shared_storage_offsets_strides_and_parameters(tmp_path, fmt):
    storage = np.arange(24, dtype=np.float32)
    state = {
        "transposed": StoredTensor(storage, "s", 0, (4, 6), (1, 4)),  # a .t() of (6, 4)
        "offset": StoredTensor(storage, "s", 5, (2, 3), (6, 2)),
        "param": StoredTensor(storage, "s", 1, (3,), (1,), parameter=True),
        "nested": {"list": [StoredTensor(storage, "s", 2, (2,), (1,)), 7, "text", None, 2.5]},
    }
    path = tmp_path / "w.pt"
    (write_torch_legacy if fmt == "legacy" else write_torch_zip)(path, state)
    read = read_torch_checkpoint(path)
    np.testing.assert_array_equal(read["transposed"], storage[:24].reshape(6, 4).T)
    np.testing.assert_array_equal(read["offset"], [[5, 7, 9], [11, 13, 15]])
    np.testing.assert_array_equal(read["param"], [1, 2, 3])
    assert read["nested"]["list"][1:] == [7, "text", None, 2.5]
    np.testing.assert_array_equal(read["nested"]["list"][0], [2, 3])


def test_legacy_storage_views(tmp_path):
    root = np.arange(10, dtype=np.float64)
    state = {
        "root": StoredTensor(root, "r", 0, (10,), (1,)),
        "view": StoredTensor(root[4:7], "v", 1, (2,), (1,)),  # view storage = root[4:7]
    }
    path = tmp_path / "w.pth"
    write_torch_legacy(path, state, views={"v": ("r", 4, 3)})
    read = read_torch_checkpoint(path)
    np.testing.assert_array_equal(read["view"], [5.0, 6.0])
    np.testing.assert_array_equal(read["root"], root)


def test_refuses_code_and_foreign_objects(tmp_path):
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr(
            "archive/data.pkl", _pickle(Reduce(Global("os", "system"), ("echo pwned",)))
        )
    with pytest.raises(CheckpointFormatError, match=r"refusing to unpickle the global os\.system"):
        read_torch_checkpoint(evil)
    model = tmp_path / "model.pt"
    write_torch_legacy(model, {"net": Reduce(Global("torch.nn.modules.linear", "Linear"), ())})
    with pytest.raises(CheckpointFormatError, match="torch.nn.modules.linear.Linear"):
        read_torch_checkpoint(model)


def test_bad_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        read_torch_checkpoint(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        CheckpointFormatError, match="neither a PyTorch zip checkpoint nor a legacy one"
    ):
        read_torch_checkpoint(junk)
    # A truncated legacy file (the last storage cut short).
    full = tmp_path / "full.pth"
    write_torch_legacy(full, {"w": np.ones(100, np.float32)})
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[:-8])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_torch_checkpoint(cut)
    # A tensor that reads past its storage.
    bad = tmp_path / "bad.pt"
    write_torch_zip(bad, {"w": StoredTensor(np.zeros(4, np.float32), "0", 2, (3,), (1,))})
    with pytest.raises(CheckpointFormatError, match="reads past its storage"):
        read_torch_checkpoint(bad)
    # Not a flat state dict.
    nested = tmp_path / "nested.pt"
    write_torch_zip(nested, {"state_dict": {"w": np.ones(2, np.float32)}, "epoch": 3})
    with pytest.raises(CheckpointFormatError, match="not a flat state dict"):
        read_torch_state_dict(nested)
