"""Reading chosen frames of an array inside an `.npz` file without loading the rest.

`np.savez` stores each array uncompressed in the zip archive, so a window of frames
can be read with one `seek` + `readinto` per frame from the member's data offset.
Compressed members (`np.savez_compressed`) are decompressed whole with `np.load`.
"""

import dataclasses
import struct
import zipfile

import numpy as np

from ._bad_video import BadVideoError
from ._hot_path import hot_path

__all__ = ["NpzMember", "npz_member", "read_npz_rows"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"


@dataclasses.dataclass(frozen=True)
class NpzMember:
    """Where an array lives inside an `.npz` file."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    """Byte offset of the raw array data in the file; -1 if the member is compressed
    (or Fortran-ordered) and must be loaded whole."""


def npz_member(path: str, key: str) -> NpzMember | None:
    """Shape, dtype and data offset of array `key` in the `.npz` file `path`; `None` if
    the archive has no such array.

    **Raises** `BadVideoError` if the file is not a readable `.npz` archive or the
    member is truncated.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(key + ".npy")
            except KeyError:
                return None
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = _read_header(f, version)
                return NpzMember(key, tuple(shape), dtype, -1)
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if signature != _LOCAL_SIGNATURE:
                raise BadVideoError(f"array {key!r}: corrupt zip local header")
            start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            f.seek(start)
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = _read_header(f, version)
            offset = f.tell()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as e:
        if isinstance(e, BadVideoError):
            raise
        raise BadVideoError(f"is not a readable .npz archive ({type(e).__name__}: {e})") from e
    header = offset - start
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != expected:
        raise BadVideoError(
            f"array {key!r} is truncated or corrupt: its header declares shape {tuple(shape)} "
            f"{dtype} ({expected} bytes with the header), the archive member holds {info.file_size}"
        )
    return NpzMember(key, tuple(shape), dtype, -1 if fortran else offset)


def _read_header(f, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


@hot_path
def read_npz_rows(path: str, member: NpzMember, rows: np.ndarray | None) -> np.ndarray:
    """Rows `rows` (indices along axis 0; `None`: all) of the array `member` of `path`."""
    if member.offset < 0:
        with np.load(path) as archive:
            array = archive[member.key]
        return array if rows is None else array[rows]
    if rows is None:
        rows = np.arange(member.shape[0] if member.shape else 0)
    row_shape = member.shape[1:]
    out = np.empty((len(rows),) + row_shape, member.dtype)
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * member.dtype.itemsize
    with open(path, "rb", buffering=0) as f:
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for k, r in enumerate(rows):
            f.seek(member.offset + int(r) * row_bytes)
            got = f.readinto(flat[k])
            if got != row_bytes:
                raise BadVideoError(
                    f"array {member.key!r} is truncated: row {int(r)} could not be read whole"
                )
    return out
