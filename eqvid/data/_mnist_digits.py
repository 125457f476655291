"""Handwritten digit images for Moving-MNIST.

Two sources, both returning `uint8` arrays of shape `(N, 28, 28)` with a black
(0) background:

- `load_idx_images(path)`: the standard MNIST `train-images-idx3-ubyte` file,
  plain or gzip-compressed (detected by its magic bytes, not its name).
- `sklearn_digits()`: scikit-learn's bundled 8x8 handwritten digits (1797 real
  digits, no download), upsampled to 20x20 and centred in a 28x28 canvas the way
  MNIST places its digits. An offline stand-in for MNIST in tests and examples.

`load_digits(mnist_path)` picks one: a path reads MNIST, `None` uses scikit-learn.
"""

import gzip
import os
import zlib
from typing import cast

import numpy as np

__all__ = ["load_digits", "load_idx_images", "sklearn_digits"]

_IDX_IMAGES_MAGIC = 2051
_HEADER_BYTES = 16
_DIGIT_SIZE = 28
_GZIP_MAGIC = b"\x1f\x8b"
_MNIST_FILENAMES = ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")
_EXPECTED_FILE = (
    "the standard MNIST train-images-idx3-ubyte(.gz) file (60000 images of "
    "28x28 uint8; available from http://yann.lecun.com/exdb/mnist/ or a mirror "
    "such as https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz)"
)


def _resolve_mnist_path(path: str | os.PathLike[str]) -> str:
    """Return the file to read: `path` itself, or the MNIST file inside a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in _MNIST_FILENAMES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"MNIST digits: directory {path!r} contains neither "
            f"{_MNIST_FILENAMES[0]!r} nor {_MNIST_FILENAMES[1]!r}. Expected {_EXPECTED_FILE}. "
            "Pass mnist_path=None to use scikit-learn's bundled digits instead."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MNIST digits: no such file {path!r}. Expected {_EXPECTED_FILE}. "
            "Pass mnist_path=None to use scikit-learn's bundled digits instead."
        )
    return path


def load_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an MNIST idx3 image file into a `uint8` array of shape `(N, 28, 28)`.

    `path` is the standard MNIST `train-images-idx3-ubyte` file, plain or
    gzip-compressed (detected from the magic bytes `1f 8b`, whatever the name), or a
    directory containing `train-images-idx3-ubyte` or `train-images-idx3-ubyte.gz`.

    **Raises**

    - `FileNotFoundError` if the file does not exist (the message says which file is
      expected and where to get it).
    - `ValueError` if the file is not an idx3 `uint8` image file (magic number
      2051), its images are not 28x28, or its size does not match its header
      (truncated or trailing bytes): nothing is ever silently truncated.
    """
    path = _resolve_mnist_path(path)
    with open(path, "rb") as f:
        raw = f.read()
    compressed = raw[:2] == _GZIP_MAGIC
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(
                f"MNIST digits: {path!r} starts with the gzip magic bytes but could not be "
                f"decompressed ({type(e).__name__}: {e}); the file is probably truncated "
                f"or corrupt. Expected {_EXPECTED_FILE}."
            ) from e
    what = "decompressed size" if compressed else "file size"
    if len(raw) < _HEADER_BYTES:
        raise ValueError(
            f"MNIST digits: {path!r} is too short for an idx3 header: expected at least "
            f"{_HEADER_BYTES} bytes, found {len(raw)} ({what}). Expected {_EXPECTED_FILE}."
        )
    magic, count, rows, cols = (int(v) for v in np.frombuffer(raw, ">u4", count=4, offset=0))
    if magic != _IDX_IMAGES_MAGIC:
        raise ValueError(
            f"MNIST digits: {path!r} has magic number {magic} (0x{magic:08x}); expected "
            f"{_IDX_IMAGES_MAGIC} (0x{_IDX_IMAGES_MAGIC:08x}, idx3 uint8 images). "
            f"Is this a labels file or another format? Expected {_EXPECTED_FILE}."
        )
    if rows != _DIGIT_SIZE or cols != _DIGIT_SIZE:
        raise ValueError(
            f"MNIST digits: {path!r} holds images of {rows}x{cols} pixels; expected "
            f"{_DIGIT_SIZE}x{_DIGIT_SIZE}."
        )
    if count == 0:
        raise ValueError(f"MNIST digits: {path!r} holds 0 images; expected at least one.")
    expected = _HEADER_BYTES + count * rows * cols
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"MNIST digits: {path!r} is {problem}: its header declares {count} images of "
            f"{rows}x{cols}, i.e. {expected} bytes, but the {what} is {len(raw)} bytes."
        )
    images = np.frombuffer(raw, np.uint8, offset=_HEADER_BYTES).reshape(count, rows, cols)
    return images.copy()  # writable, owns its memory


def _bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """`(dst, src)` weights for 1-D bilinear resampling with half-pixel centres."""
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    weights = np.zeros((dst, src), np.float64)
    rows = np.arange(dst)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def sklearn_digits() -> np.ndarray:
    """scikit-learn's bundled handwritten digits, made MNIST-like.

    Returns a `uint8` array of shape `(1797, 28, 28)`: the 8x8 images of
    `sklearn.datasets.load_digits` (values 0..16, no download needed) scaled to
    0..255, upsampled to 20x20 with bilinear interpolation and centred in a 28x28
    black canvas, as MNIST centres its digits in a 20x20 box.
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # slow import: lazy
    from sklearn.utils import Bunch

    # Without `return_X_y` scikit-learn returns a Bunch (its annotations allow a tuple too).
    digits = cast(Bunch, _sk_load_digits())
    small = np.asarray(digits.images, np.float64) * (255.0 / 16.0)  # (N, 8, 8)
    box = 20
    w = _bilinear_matrix(small.shape[1], box)
    big = np.einsum("ij,njk,lk->nil", w, small, w)  # convex combinations: stays in [0, 255]
    out = np.zeros((small.shape[0], _DIGIT_SIZE, _DIGIT_SIZE), np.uint8)
    off = (_DIGIT_SIZE - box) // 2
    out[:, off : off + box, off : off + box] = np.clip(np.rint(big), 0, 255).astype(np.uint8)
    return out


def load_digits(mnist_path: str | os.PathLike[str] | None) -> np.ndarray:
    """Digit images for Moving-MNIST: `uint8`, shape `(N, 28, 28)`.

    `mnist_path` is the MNIST `train-images-idx3-ubyte(.gz)` file (or a directory
    holding it), read with `load_idx_images`; `None` uses the offline
    `sklearn_digits()` instead.
    """
    if mnist_path is None:
        return sklearn_digits()
    return load_idx_images(mnist_path)
