"""The evaluation protocol's plumbing: value ranges, per-frame metrics on generated
frames, TECO's chunked mean ± std, chunked FVD, and the `real`/`fake` sample files.

The papers' protocol (TECO's `scripts/compute_metrics.py` and `compute_fvd.py`, which
ConvS5 reuses):

- samples are `npz` files `data_<i>.npz` holding `real` and `fake` uint8 videos
  `(videos, time, height, width, channels)` whose first `context` frames of `fake`
  are the real ones;
- PSNR / SSIM / LPIPS are computed per generated frame (frames `≥ context`) on
  `[0, 1]` images (`[-1, 1]` for LPIPS), averaged over time per video, then over the
  videos of each chunk of 256; the reported number is the mean ± (population) std
  of the chunk means;
- FVD uses the whole videos (context included), one Fréchet distance per chunk of
  256 real and the 256 matching fake videos, reported as mean ± std over chunks.
"""

import dataclasses
import itertools
import os
import pathlib
import re
import warnings
from collections.abc import Callable
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Real, UInt8

from ._frechet import fvd_from_features
from ._psnr import psnr
from ._ssim import SSIMForm, ssim

ValueRange = Literal["uint8", "[0,1]", "[-1,1]"]
VALUE_RANGES: tuple[str, ...] = ("uint8", "[0,1]", "[-1,1]")
_BOUNDS = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0)}
RANGE_TOLERANCE = 1e-6
"""Float values may overshoot their declared range by this much (round-off); they are
clipped into it when converted."""

PAPER_CHUNK = 256
"""Videos per chunk in TECO's (and ConvS5's) metric and FVD reduction."""

Remainder = Literal["error", "keep", "drop"]


# --------------------------------------------------------------------------------------
# Value ranges


def _check_value_range_name(value_range, fn: str) -> None:
    if value_range not in VALUE_RANGES:
        raise ValueError(
            f"{fn}: `value_range` must be one of {', '.join(map(repr, VALUE_RANGES))}, "
            f"got {value_range!r}."
        )


def _check_videos_shape(x, name: str, fn: str) -> None:
    if x.ndim != 5:
        raise ValueError(
            f"{fn}: `{name}` must have shape (videos, time, height, width, channels), "
            f"got shape {x.shape}."
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{fn}: `{name}` holds no frames (shape {x.shape}).")


def _check_same_shape(real, fake, fn: str) -> None:
    if real.shape != fake.shape:
        raise ValueError(
            f"{fn}: `real` and `fake` must have the same shape, got {real.shape} and {fake.shape}."
        )


def check_value_range(
    videos: Real[np.ndarray | Array, "..."],
    *,
    value_range: ValueRange,
    name: str = "videos",
) -> None:
    """Check that `videos` hold what `value_range` declares; never guesses.

    - `"uint8"`: dtype `uint8` (integers 0..255).
    - `"[0,1]"` / `"[-1,1]"`: a floating dtype, finite values within the interval
      (up to `RANGE_TOLERANCE`).

    **Arguments:**

    - `videos`: a NumPy or JAX array (JAX arrays are read back to the host).
    - `value_range`: `"uint8"`, `"[0,1]"` or `"[-1,1]"`.
    - `name`: the argument name used in error messages.

    **Raises:**

    `ValueError` naming `name`, the declared range and what was found (dtype, or the
    observed minimum and maximum).
    """
    _check_value_range_name(value_range, "check_value_range")
    x = np.asarray(videos)
    dtype = x.dtype
    if value_range == "uint8":
        if dtype != np.uint8:
            hint = (
                " For floating-point videos pass value_range='[0,1]' or '[-1,1]'."
                if np.issubdtype(dtype, np.floating)
                else " Convert them to uint8 (0..255) first."
            )
            raise ValueError(f"`{name}`: value_range='uint8' needs dtype uint8, got {dtype}.{hint}")
        return
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"`{name}`: value_range={value_range!r} needs floating-point values, got dtype "
            f"{dtype}."
            + (" For uint8 videos pass value_range='uint8'." if dtype == np.uint8 else "")
        )
    if x.size == 0:
        return
    lo, hi = _BOUNDS[value_range]
    xmin, xmax = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(xmin) and np.isfinite(xmax)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    if xmin < lo - RANGE_TOLERANCE or xmax > hi + RANGE_TOLERANCE:
        hint = ""
        if xmax > 1.0 + RANGE_TOLERANCE and xmax <= 255.0 and xmin >= 0.0:
            hint = (
                " Values up to 255 look like 0..255 pixel values: cast them to uint8 and "
                "pass value_range='uint8'."
            )
        elif (
            value_range == "[0,1]"
            and xmin >= -1.0 - RANGE_TOLERANCE
            and xmax <= 1.0 + RANGE_TOLERANCE
        ):
            hint = " Negative values look like [-1, 1] videos: pass value_range='[-1,1]'."
        raise ValueError(
            f"`{name}`: value_range={value_range!r} but the values range from {xmin:.6g} to "
            f"{xmax:.6g}.{hint}"
        )


def videos_to_unit(
    videos: Real[np.ndarray | Array, "..."],
    *,
    value_range: ValueRange,
    name: str = "videos",
) -> Float[np.ndarray, "..."]:
    """Check `videos` against `value_range` and map them to float32 in `[0, 1]` (the
    range TECO computes PSNR and SSIM on): `x / 255`, `x`, or `(x + 1) / 2`.

    **Raises:**

    `ValueError` as `check_value_range`.
    """
    check_value_range(videos, value_range=value_range, name=name)
    x = np.asarray(videos)
    if value_range == "uint8":
        return x.astype(np.float32) / np.float32(255.0)
    if value_range == "[-1,1]":
        x = (x.astype(np.float32) + np.float32(1.0)) * np.float32(0.5)
    return np.clip(x.astype(np.float32), 0.0, 1.0)


def videos_to_uint8(
    videos: Real[np.ndarray | Array, "..."],
    *,
    value_range: ValueRange,
    name: str = "videos",
) -> UInt8[np.ndarray, "..."]:
    """Check `videos` against `value_range` and map them to `uint8` (rounded:
    `round(255 x)` for `[0, 1]`, `round(127.5 (x + 1))` for `[-1, 1]`, as
    `eqvid.train` exports samples); `uint8` input is returned as is.

    **Raises:**

    `ValueError` as `check_value_range`.
    """
    check_value_range(videos, value_range=value_range, name=name)
    x = np.asarray(videos)
    if value_range == "uint8":
        return x
    scaled = (
        x.astype(np.float32) * 255.0
        if value_range == "[0,1]"
        else (x.astype(np.float32) + 1.0) * 127.5
    )
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _to_unit_jnp(x, value_range: str):
    if value_range == "uint8":
        return x.astype(jnp.float32) / 255.0
    x = x.astype(jnp.float32)
    if value_range == "[-1,1]":
        x = (x + 1.0) * 0.5
    return jnp.clip(x, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# Per-frame metrics


@partial(jax.jit, static_argnames=("value_range", "ssim_form"))
def _psnr_ssim_batch(real, fake, *, value_range, ssim_form):
    r = _to_unit_jnp(real, value_range)
    f = _to_unit_jnp(fake, value_range)
    # PSNR on the frames as given, with their range: the same number as on [0, 1], but
    # identical frames give exactly mse = 0 (+inf) instead of the residue XLA leaves
    # when it fuses the scaling into the difference (a fused multiply-add).
    lo, hi = _BOUNDS.get(value_range, (0.0, 255.0))  # uint8: 0..255
    clipped = [jnp.clip(x.astype(jnp.float32), lo, hi) for x in (real, fake)]
    return (
        psnr(*clipped, data_range=hi - lo),
        ssim(r, f, data_range=1.0, form=ssim_form),
        jnp.clip(2.0 * r - 1.0, -1.0, 1.0),  # LPIPS inputs, exactly within [-1, 1]
        jnp.clip(2.0 * f - 1.0, -1.0, 1.0),
    )


def frame_metrics(
    real: Real[np.ndarray | Array, "videos time height width channels"],
    fake: Real[np.ndarray | Array, "videos time height width channels"],
    *,
    context: int,
    value_range: ValueRange,
    ssim_form: SSIMForm = "tf",
    lpips_fn: Callable[[Array, Array], Array | np.ndarray] | None = None,
    frames_per_batch: int = 256,
) -> dict[str, Float[np.ndarray, "videos horizon"]]:
    """PSNR, SSIM (and optionally LPIPS) of every generated frame.

    Only frames `t ≥ context` are compared (the first `context` frames of `fake` are
    the real ones in the papers' sample files). Frames are converted to `[0, 1]` and
    compared with `data_range = 1`, as TECO does; LPIPS gets `[-1, 1]`. The frames
    are streamed through one jitted function in fixed batches of `frames_per_batch`
    (the last one padded and trimmed), so memory stays bounded and it compiles once;
    value ranges are checked batch by batch on the host.

    Reduce the result with `reduce_over_chunks` (the papers' numbers) or
    `per_frame_curve` (metric against horizon).

    **Arguments:**

    - `real`, `fake`: videos of the same shape `(videos, time, height, width,
      channels)`, NumPy or JAX, holding what `value_range` declares; height and width
      at least 11 (the SSIM window).
    - `context`: the number of leading context frames to skip, `0 ≤ context < time`.
    - `value_range`: `"uint8"`, `"[0,1]"` or `"[-1,1]"` (see `check_value_range`).
    - `ssim_form`: `"tf"` (TECO, default) or `"skimage"` (MCVD); see `ssim`.
    - `lpips_fn`: optional `lpips_fn(x, y) -> (n,)` (a JAX or NumPy array) on float32
      `(n, height, width, channels)` images in `[-1, 1]` (e.g. AlexNet-LPIPS); its
      values are returned under `"lpips"`.
    - `frames_per_batch`: frames per metric call.

    **Returns:**

    `{"psnr": ..., "ssim": ...[, "lpips": ...]}`, each a float32 array
    `(videos, time - context)`.

    **Raises:**

    `ValueError` for mismatched shapes, a bad `context`, values outside
    `value_range`, or an `lpips_fn` returning the wrong shape.
    """
    fn = "frame_metrics"
    _check_value_range_name(value_range, fn)
    real = np.asarray(real)
    fake = np.asarray(fake)
    _check_videos_shape(real, "real", fn)
    _check_videos_shape(fake, "fake", fn)
    _check_same_shape(real, fake, fn)
    b, t, h, w, _c = real.shape
    if (
        isinstance(context, bool)
        or not isinstance(context, (int, np.integer))
        or not 0 <= context < t
    ):
        raise ValueError(
            f"{fn}: `context` must be an int with 0 <= context < time = {t} (at least one "
            f"generated frame), got {context!r}."
        )
    if (
        isinstance(frames_per_batch, bool)
        or not isinstance(frames_per_batch, int)
        or frames_per_batch < 1
    ):
        raise ValueError(
            f"{fn}: `frames_per_batch` must be a positive int, got {frames_per_batch!r}."
        )
    if min(h, w) < 11:
        raise ValueError(f"{fn}: frames must be at least 11x11 for SSIM, got {h}x{w}.")
    horizon = t - int(context)
    total = b * horizon
    batch = min(frames_per_batch, total)
    names = ["psnr", "ssim"] + (["lpips"] if lpips_fn is not None else [])
    out = {k: np.empty((total,), np.float32) for k in names}
    for start in range(0, total, batch):
        idx = np.arange(start, min(start + batch, total))
        n = idx.shape[0]
        vid, step = idx // horizon, int(context) + idx % horizon
        rb, fb = real[vid, step], fake[vid, step]
        check_value_range(rb, value_range=value_range, name="real")
        check_value_range(fb, value_range=value_range, name="fake")
        if n < batch:  # pad the last batch to the compiled shape; the padding is trimmed
            pad = [(0, batch - n), (0, 0), (0, 0), (0, 0)]
            rb, fb = np.pad(rb, pad), np.pad(fb, pad)
        p, s, rs, fs = _psnr_ssim_batch(rb, fb, value_range=value_range, ssim_form=ssim_form)
        out["psnr"][start : start + n] = np.asarray(p)[:n]
        out["ssim"][start : start + n] = np.asarray(s)[:n]
        if lpips_fn is not None:
            d = np.asarray(lpips_fn(rs, fs))
            if d.shape != (batch,):
                raise ValueError(
                    f"{fn}: `lpips_fn` must return one value per frame, shape ({batch},), "
                    f"got shape {d.shape}."
                )
            out["lpips"][start : start + n] = d[:n]
    return {k: v.reshape(b, horizon) for k, v in out.items()}


def per_frame_curve(
    values: Real[np.ndarray | Array, "videos horizon"],
) -> Float[np.ndarray, " horizon"]:
    """Mean over videos at each horizon step (for a metric-against-horizon plot).

    **Arguments:**

    - `values`: per-video, per-frame values, e.g. `frame_metrics(...)["psnr"]`.

    **Returns:**

    float64 array `(horizon,)`.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(
            f"per_frame_curve: `values` must have shape (videos, horizon), got {x.shape}."
        )
    return x.mean(axis=0)


# --------------------------------------------------------------------------------------
# TECO's chunked reduction


@dataclasses.dataclass(frozen=True)
class MeanStd:
    """A metric reported as mean ± std over chunks of videos."""

    mean: float
    """Mean of the chunk values."""
    std: float
    """Population standard deviation of the chunk values (`np.std`, as TECO)."""
    per_chunk: tuple[float, ...]
    """The value of each chunk, in order."""
    chunk_size: int
    """Videos per (full) chunk."""

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return dataclasses.asdict(self) | {"per_chunk": list(self.per_chunk)}


def _chunk_bounds(
    n: int, chunk: int, remainder: str, fn: str, min_chunk: int = 1, *, flags: bool = False
) -> list[tuple[int, int]]:
    """The `(start, stop)` of each chunk of `n` videos. Errors suggest keyword
    arguments (`chunk=4`), or with `flags` the command line's options (`--chunk 4`)."""

    def option(name: str, value) -> str:
        return f"--{name} {value}" if flags else f"{name}={value!r}"

    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < min_chunk:
        raise ValueError(f"{fn}: `chunk` must be an int >= {min_chunk}, got {chunk!r}.")
    if remainder not in ("error", "keep", "drop"):
        raise ValueError(f"{fn}: `remainder` must be 'error', 'keep' or 'drop', got {remainder!r}.")
    full, rest = divmod(n, chunk)
    if full == 0 and remainder != "keep":
        raise ValueError(
            f"{fn}: one chunk needs {chunk} videos, got {n}. Pass {option('chunk', n)} to "
            f"compute it over the {n} videos anyway; the number is not comparable with "
            f"{chunk}-video chunks."
        )
    if rest and remainder == "error":
        raise ValueError(
            f"{fn}: {n} videos do not split into chunks of {chunk} ({full} chunk(s) and {rest} "
            f"left over). Pass {option('remainder', 'drop')} to leave the last {rest} out, "
            f"{option('remainder', 'keep')} to count them as one smaller chunk (as TECO's "
            f"scripts do), or a chunk size dividing {n}."
        )
    bounds = [(i * chunk, (i + 1) * chunk) for i in range(full)]
    if rest and remainder == "keep":
        if rest < min_chunk:
            raise ValueError(
                f"{fn}: the last chunk would hold {rest} video(s), fewer than {min_chunk}; "
                f"pass {option('remainder', 'drop')} or another chunk size."
            )
        bounds.append((full * chunk, n))
    return bounds


def reduce_over_chunks(
    values: Real[np.ndarray | Array, "videos horizon"],
    *,
    chunk: int = PAPER_CHUNK,
    remainder: Remainder = "error",
) -> MeanStd:
    """TECO's reduction of per-frame metrics: mean over time per video, mean over the
    videos of each chunk of `chunk` consecutive videos, then mean ± std over chunks.

    This is `scripts/compute_metrics.py`: it averages each `data_<i>.npz` file's
    per-video time means, averages the files of a 256-video chunk, and prints
    `np.mean` ± `np.std` of the chunk values; with equal-sized files (as TECO's
    sampler writes) that is the mean over the chunk's videos used here. A `+inf`
    PSNR (a frame generated exactly) makes its video, chunk and result `inf`.

    **Arguments:**

    - `values`: `(videos, horizon)`, e.g. `frame_metrics(...)["ssim"]`.
    - `chunk`: videos per chunk (256 in the papers).
    - `remainder`: what to do when `chunk` does not divide the number of videos:
      `"error"` (default), `"drop"` the leftover videos, or `"keep"` them as a last,
      smaller chunk (TECO's scripts do this).

    **Returns:**

    A `MeanStd`.

    **Raises:**

    `ValueError` for a bad shape, fewer videos than `chunk`, or an uneven split with
    `remainder="error"`, saying what to pass instead.
    """
    fn = "reduce_over_chunks"
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{fn}: `values` must have shape (videos, horizon), got {x.shape}.")
    per_video = x.mean(axis=1)
    per_chunk = tuple(
        float(per_video[a:b].mean()) for a, b in _chunk_bounds(x.shape[0], chunk, remainder, fn)
    )
    with np.errstate(invalid="ignore"):  # an infinite chunk (PSNR of exact frames): std is NaN
        return MeanStd(float(np.mean(per_chunk)), float(np.std(per_chunk)), per_chunk, chunk)


def chunked_fvd(
    real_features: Float[np.ndarray | Array, "videos dim"],
    fake_features: Float[np.ndarray | Array, "videos dim"],
    *,
    chunk: int = PAPER_CHUNK,
    remainder: Remainder = "error",
) -> MeanStd:
    """FVD as TECO's `scripts/compute_fvd.py` reports it: one Fréchet distance per
    chunk of `chunk` real videos and the matching `chunk` fake ones (row `i` of both
    comes from the same sample), then mean ± std over chunks.

    FVD is biased by the number of videos per estimate, so only numbers with the same
    `chunk` are comparable; any `chunk` other than the papers' 256 warns.

    **Arguments:**

    - `real_features`, `fake_features`: I3D features of the whole videos (context
      included), `(videos, dim)`, in the same video order.
    - `chunk`: videos per chunk (256 in the papers; at least 2).
    - `remainder`: as in `reduce_over_chunks`.

    **Returns:**

    A `MeanStd`.

    **Raises:**

    `ValueError` for mismatched feature arrays, or fewer videos than `chunk` (saying
    how many are needed and what to pass to get a number anyway).
    """
    fn = "chunked_fvd"
    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(fake_features, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape != fake.shape:
        raise ValueError(
            f"{fn}: `real_features` and `fake_features` must have the same shape (videos, dim), "
            f"got {real.shape} and {fake.shape}."
        )
    bounds = _chunk_bounds(real.shape[0], chunk, remainder, fn, min_chunk=2)
    if chunk != PAPER_CHUNK:
        warnings.warn(
            f"chunked_fvd: chunk={chunk}; FVD depends on the number of videos per estimate, so "
            f"these numbers are comparable only with FVDs on {chunk}-video chunks, not with the "
            f"papers' {PAPER_CHUNK}.",
            stacklevel=2,
        )
    per_chunk = tuple(fvd_from_features(real[a:b], fake[a:b]) for a, b in bounds)
    return MeanStd(float(np.mean(per_chunk)), float(np.std(per_chunk)), per_chunk, chunk)


# --------------------------------------------------------------------------------------
# Sample files


@dataclasses.dataclass(frozen=True)
class Samples:
    """Real and generated videos read from sample files."""

    real: UInt8[np.ndarray, "videos time height width channels"]
    fake: UInt8[np.ndarray, "videos time height width channels"]
    context: int | None
    """Context frames (the first frames of `fake` are the real ones); `None` when the
    files do not record it (TECO's files keep it in the folder name instead)."""
    files: tuple[pathlib.Path, ...]
    """The files read, in order."""


def save_samples_npz(
    path: str | os.PathLike,
    real: Real[np.ndarray | Array, "videos time height width channels"],
    fake: Real[np.ndarray | Array, "videos time height width channels"],
    *,
    context: int,
    value_range: ValueRange = "uint8",
) -> pathlib.Path:
    """Write one sample file in TECO's format: `real` and `fake` as uint8 `(videos,
    time, height, width, channels)`, with the first `context` frames of `fake`
    replaced by the real ones, plus the `context` itself.

    The file is written to a temporary name and renamed, so an interrupted run never
    leaves a truncated `.npz` behind. Name the files of one run `data_<i>.npz` in one
    folder to read them back together.

    **Arguments:**

    - `path`: the file, ending in `.npz`.
    - `real`, `fake`: videos of the same shape holding what `value_range` declares
      (float videos are rounded to uint8 after the range check).
    - `context`: the number of context frames, `0 ≤ context ≤ time`.
    - `value_range`: `"uint8"` (default), `"[0,1]"` or `"[-1,1]"`.

    **Returns:**

    The path written.

    **Raises:**

    `ValueError` for a path not ending in `.npz`, mismatched shapes, a bad `context`
    or values outside `value_range`.
    """
    fn = "save_samples_npz"
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{fn}: `path` must end in .npz, got {str(path)!r}.")
    _check_value_range_name(value_range, fn)
    real = np.asarray(real)
    fake = np.asarray(fake)
    _check_videos_shape(real, "real", fn)
    _check_videos_shape(fake, "fake", fn)
    _check_same_shape(real, fake, fn)
    t = real.shape[1]
    if (
        isinstance(context, bool)
        or not isinstance(context, (int, np.integer))
        or not 0 <= context <= t
    ):
        raise ValueError(
            f"{fn}: `context` must be an int with 0 <= context <= time = {t}, got {context!r}."
        )
    real_u8 = videos_to_uint8(real, value_range=value_range, name="real")
    fake_u8 = np.array(videos_to_uint8(fake, value_range=value_range, name="fake"), copy=True)
    fake_u8[:, :context] = real_u8[:, :context]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, real=real_u8, fake=fake_u8, context=np.int64(context))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _sample_files(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"load_samples_npz: no such file or folder: {str(path)!r}.")
    indexed = []
    for f in path.glob("data_*.npz"):
        m = re.fullmatch(r"data_(\d+)\.npz", f.name)
        if m is None:
            raise ValueError(f"{f}: sample files in a folder must be named data_<integer>.npz.")
        indexed.append((int(m.group(1)), f))
    if not indexed:
        raise ValueError(f"load_samples_npz: {str(path)!r} holds no data_<i>.npz sample files.")
    indexed.sort()
    seen: dict[int, pathlib.Path] = {}
    for i, f in indexed:
        if i in seen:
            raise ValueError(
                f"load_samples_npz: {seen[i].name} and {f.name} in {str(path)!r} both claim "
                f"index {i}; name the files data_0.npz, data_1.npz, ... without leading zeros."
            )
        seen[i] = f
    # Files are numbered 0, 1, 2, ... (as eqvid.evaluate writes them); a hole means
    # samples are missing, and reading the rest would silently evaluate fewer videos.
    last = indexed[-1][0]
    n_missing = last + 1 - len(seen)
    if n_missing:
        first = [
            f"data_{i}.npz" for i in itertools.islice((i for i in range(last) if i not in seen), 10)
        ]
        shown = ", ".join(first) + (f" (and {n_missing - 10} more)" if n_missing > 10 else "")
        raise ValueError(
            f"load_samples_npz: {str(path)!r} holds data_<i>.npz up to {indexed[-1][1].name} "
            f"but {n_missing} file(s) are missing: {shown}. Restore them, or renumber "
            "the files you mean to evaluate data_0.npz, data_1.npz, ... without gaps."
        )
    return [f for _, f in indexed]


def _read_sample_file(f: pathlib.Path, context: int | None):
    try:
        with open(f, "rb") as fh:  # our own handle: closed even when np.load fails
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            with z:
                missing = [k for k in ("real", "fake") if k not in z.files]
                if missing:
                    raise ValueError(f"missing key(s) {missing}; it holds {sorted(z.files)}")
                real, fake = z["real"], z["fake"]
                stored = z["context"] if "context" in z.files else None
    except Exception as e:  # a damaged archive fails in zipfile, zlib or numpy, in many ways
        raise ValueError(f"{f}: cannot read this sample file ({type(e).__name__}: {e}).") from e
    for name, x in (("real", real), ("fake", fake)):
        if x.dtype != np.uint8 or x.ndim != 5:
            raise ValueError(
                f"{f}: `{name}` must be uint8 (videos, time, height, width, channels), got "
                f"{x.dtype} with shape {x.shape}."
            )
    if real.shape != fake.shape:
        raise ValueError(f"{f}: `real` and `fake` differ in shape: {real.shape} and {fake.shape}.")
    if stored is not None:
        if stored.shape != () or not np.issubdtype(stored.dtype, np.integer):
            raise ValueError(
                f"{f}: `context` must be an integer scalar, got {stored.dtype} {stored.shape}."
            )
        stored = int(stored)
        if context is not None and context != stored:
            raise ValueError(
                f"{f}: the file records context={stored}, but context={context} was passed."
            )
        context = stored
    if context is not None:
        if not 0 <= context <= real.shape[1]:
            raise ValueError(
                f"{f}: context={context} is outside 0..{real.shape[1]} (the video length)."
            )
        if not np.array_equal(real[:, :context], fake[:, :context]):
            raise ValueError(
                f"{f}: the first {context} (context) frames of `fake` differ from `real`; the file "
                "was not written with this context."
            )
    return real, fake, context


def load_samples_npz(
    path: str | os.PathLike,
    *,
    context: int | None = None,
) -> Samples:
    """Read one sample file, or a folder of `data_<i>.npz` files (TECO's naming, read in
    the order of `i` and concatenated along the videos; `i` runs over `0, 1, 2, …`
    without holes).

    Every file is validated: readable `npz`, keys `real` and `fake`, both uint8
    `(videos, time, height, width, channels)` of one shape, the same frame shape and
    context in every file, and, when the context is known, context frames of `fake`
    equal to the real ones. Any failure raises an error naming the file.

    **Arguments:**

    - `path`: an `.npz` file or a folder of `data_<i>.npz` files.
    - `context`: the context length, for files that do not record it (TECO's); when
      a file records one, the two must agree.

    **Returns:**

    A `Samples`.

    **Raises:**

    `FileNotFoundError` for a missing path; `ValueError` naming the file for a
    corrupted, truncated or inconsistent file, naming the folder when it holds no
    sample files, and naming the missing files when the numbering `0, 1, 2, …` has
    holes (e.g. `data_0`, `data_1`, `data_3`: `data_2.npz` is missing) or two files
    claim one index (`data_1`, `data_01`).
    """
    files = _sample_files(pathlib.Path(path))
    reals, fakes = [], []
    ctx, shape = None, None
    for f in files:
        real, fake, file_ctx = _read_sample_file(f, context)
        if shape is None:
            shape, ctx = real.shape[1:], file_ctx
        elif real.shape[1:] != shape:
            raise ValueError(
                f"{f}: videos of shape {real.shape[1:]} (time, height, width, channels) differ "
                f"from {shape} in {files[0]}."
            )
        elif file_ctx != ctx:
            raise ValueError(f"{f}: context={file_ctx} differs from context={ctx} in {files[0]}.")
        reals.append(real)
        fakes.append(fake)
    real = reals[0] if len(reals) == 1 else np.concatenate(reals)
    fake = fakes[0] if len(fakes) == 1 else np.concatenate(fakes)
    return Samples(real, fake, ctx, tuple(files))
