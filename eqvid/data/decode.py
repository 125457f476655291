"""Decode codes written by `python -m eqvid.data.encode` back to frames.

    python -m eqvid.data.decode --codes data/mmnist-codes --out data/mmnist-decoded
    python -m eqvid.data.decode --codes data/dmlab_codes --splits test --limit 64 \\
        --compare --out data/dmlab_decoded

--codes is the encoder's output folder (every split it holds is decoded, or those of
--splits). The tokenizer is the one encode.json records (its folder, and whether its
moving average was used), unless --tokenizer names another folder or training run;
either way it must be the one the codes were encoded with (codebook size, codes'
shape and weights sha256 are checked).

Output, per split, <out>/<split>/:
- NNNNNN.npz, one per entry (a video, or a clip with --clip-len), in the TECO
  format that `--dataset teco --root <out>` reads: `video` uint8 (T, H, W, C),
  `actions` int32 (T,) when the codes have them, and `name` (the source video and
  first frame);
- preview.png: the first --preview entries' frames (with --compare the source
  frames above the decoded ones);
- with --compare: decode.json and decode.md, the decoded frames against the source
  videos (read again as encode.json records them): PSNR and SSIM (TECO's forms, on
  uint8 frames), their mean over the split and by frame position.

Entries already decoded are kept (a stopped run continues); --overwrite writes them
again.
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._cli import add_config_arguments, command_parser, config_from_args
from ._bad_video import BadVideoError
from ._codes import META_FILE, CodesVideos, codes_to_frames, read_meta

__all__ = ["DecodeConfig", "DecodeSummary", "decode_split", "main"]

PREVIEW_FILE = "preview.png"
REPORT_FILE = "decode.json"


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """The codes, the tokenizer and what to write."""

    codes: str = ""
    """The encoder's output folder (holding <split>/encode.json)."""
    out: str = ""
    """Output folder: each split goes to <out>/<split>/."""
    splits: tuple[str, ...] = ()
    """Splits to decode (default: every split the codes folder holds)."""
    tokenizer: str = ""
    """A tokenizer folder or training run (default: the one encode.json records)."""
    ema: bool = True
    """With --tokenizer a training run: its moving average of the parameters (without
    --tokenizer, what the encoder used)."""
    limit: int | None = None
    """Decode at most this many entries of each split (the first ones); none: all."""
    batch_size: int = 16
    """Entries of one shape decoded together."""
    preview: int = 8
    """Entries shown in preview.png (0: no preview)."""
    compare: bool = False
    """Read the source videos again and report PSNR/SSIM of the decoded frames."""
    overwrite: bool = False
    """Decode again entries whose file is already there."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ValueError(
                f"DecodeConfig: `limit` must be an int >= 1 or none; got {self.limit!r}."
            )
        for name, low in (("batch_size", 1), ("preview", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DecodeConfig: `{name}` must be an int >= {low}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DecodeSummary:
    """What `decode_split` wrote."""

    folder: str
    entries: int
    """Entries written (or found already written) in `folder`."""
    decoded_now: int
    preview: str | None
    """The preview image, if one was written."""
    psnr: float | None = None
    """Mean PSNR (dB) over the decoded frames against the source's (with compare)."""
    ssim: float | None = None
    """Mean SSIM over the decoded frames against the source's (with compare)."""


def entry_file(folder: str, index: int) -> str:
    """The file of entry `index` in a split's output folder."""
    return os.path.join(folder, f"{index:06d}.npz")


def _write_entry(path: str, video: np.ndarray, actions: np.ndarray | None, name: str) -> None:
    arrays: dict[str, Any] = {"video": video, "name": np.asarray(name)}
    if actions is not None:
        arrays["actions"] = actions.astype(np.int32)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class _SourceFrames:
    """The frames an entry of the codes was encoded from, read again from the source
    dataset as encode.json records it."""

    def __init__(self, meta: dict[str, Any], split: str) -> None:
        from ..evaluate._trained_run import config_from_dict
        from ._datasets import dataset_config_class, open_source
        from ._file_config import VideoFilesConfig

        name = meta["dataset"]["name"]
        if not name:
            raise ValueError(
                "--compare: encode.json records no dataset (the codes were not written by "
                "`python -m eqvid.data.encode`); decode without --compare."
            )
        config = config_from_dict(dataset_config_class(name), meta["dataset"]["config"])
        self.files = isinstance(config, VideoFilesConfig)
        self.config = config
        self.source = open_source(config, split)
        if len(self.source) != int(meta["source_videos"]):
            raise ValueError(
                f"--compare: the {split} split of the source dataset ({name}) now holds "
                f"{len(self.source)} videos; the codes were encoded from "
                f"{meta['source_videos']}. Compare against the same data."
            )

    def __call__(self, codes: CodesVideos, i: int) -> np.ndarray:
        from ._transforms import resize_crop

        video = np.asarray(self.source[int(codes.sources[i])]["video"])
        if self.files:
            video = video[:: self.config.frame_stride]
            video = resize_crop(
                video,
                self.config.frame_size,
                crop="center",
                interpolation=self.config.interpolation,
            )
        start, count = int(codes.starts[i]), int(codes.frames[i])
        return video[start : start + count]


SSIM_MIN_SIZE = 11
"""SSIM is computed on frames of at least 11×11 (its Gaussian window)."""


def _scores(decoded: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (frames decoded exactly count as `psnr_ceiling`) and SSIM (NaN on frames
    under 11×11) of every frame."""
    from ..metrics import psnr, psnr_ceiling, ssim

    _t, h, w, c = source.shape
    p = np.asarray(psnr(source, decoded, data_range=255), np.float64)
    p = np.where(np.isinf(p), psnr_ceiling(h, w, c), p)
    if min(h, w) < SSIM_MIN_SIZE:
        return p, np.full_like(p, np.nan)
    return p, np.asarray(ssim(source, decoded, data_range=255), np.float64)


def _write_report(
    folder: str, psnrs: list[np.ndarray], ssims: list[np.ndarray], identical: int, meta: dict
) -> dict:
    flat_p, flat_s = np.concatenate(psnrs), np.concatenate(ssims)
    has_ssim = not np.isnan(flat_s).any()
    longest = max(len(p) for p in psnrs)
    by_frame = []
    for t in range(longest):
        ps = [p[t] for p in psnrs if len(p) > t]
        ss = [s[t] for s in ssims if len(s) > t]
        by_frame.append(
            {
                "frame": t,
                "entries": len(ps),
                "psnr": float(np.mean(ps)),
                "ssim": float(np.mean(ss)) if has_ssim else None,
            }
        )
    report = {
        "tokenizer": meta["tokenizer"]["model_name"],
        "tokenizer_path": meta["tokenizer"]["path"],
        "dataset": meta["dataset"]["name"],
        "split": meta["split"],
        "entries": len(psnrs),
        "frames": int(flat_p.size),
        "psnr": float(np.mean(flat_p)),
        "ssim": float(np.mean(flat_s)) if has_ssim else None,
        "identical_frames": identical,
        "by_frame": by_frame,
    }
    with open(os.path.join(folder, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)

    def cell(value: float | None, form: str) -> str:
        return "—" if value is None else format(value, form)

    lines = [
        f"# Decoded codes against the source ({report['dataset']}, {report['split']})",
        "",
        f"Tokenizer: {report['tokenizer']} ({report['tokenizer_path'] or 'unnamed'}); "
        f"{report['entries']} entries, {report['frames']} frames; PSNR and SSIM on uint8 "
        "frames (TECO's forms).",
        "",
        "| frames | entries | PSNR (dB) | SSIM |",
        "|---|---|---|---|",
        f"| all | {report['entries']} | {report['psnr']:.2f} | {cell(report['ssim'], '.4f')} |",
    ]
    lines += [
        f"| {r['frame']} | {r['entries']} | {r['psnr']:.2f} | {cell(r['ssim'], '.4f')} |"
        for r in by_frame
    ]
    if identical:
        lines += [
            "",
            f"{identical} frame(s) came back exactly; their PSNR counts as the finite "
            "ceiling (`eqvid.metrics.psnr_ceiling`).",
        ]
    if not has_ssim:
        lines += ["", f"SSIM is not computed: frames are smaller than {SSIM_MIN_SIZE}×11."]
    with open(os.path.join(folder, "decode.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return report


def _save_preview(path: str, decoded: list[np.ndarray], sources: list[np.ndarray] | None) -> str:
    from ..train._samples import save_reconstruction_strip, save_video_strip

    signed = [v.astype(np.float32) / 127.5 - 1.0 for v in decoded]
    shapes = {v.shape for v in signed}
    if len(shapes) > 1:  # entries of several lengths: show the shortest's frames
        t = min(v.shape[0] for v in signed)
        signed = [v[:t] for v in signed]
        sources = None if sources is None else [v[:t] for v in sources]
    if sources is None:
        return str(save_video_strip(path, np.stack(signed), label="decoded"))
    inputs = np.stack([v.astype(np.float32) / 127.5 - 1.0 for v in sources])
    label = "source (white) / decoded (green)"
    return str(save_reconstruction_strip(path, inputs, np.stack(signed), label=label))


def decode_split(
    tokenizer: Any, codes: CodesVideos, folder: str, *, config: DecodeConfig = DecodeConfig()
) -> DecodeSummary:
    """Decode the entries of `codes` (the first `config.limit`) with `tokenizer` into
    `folder`: one TECO-format `.npz` per entry, a preview image and, with
    `config.compare`, the PSNR/SSIM report against the source videos.

    **Raises** `ValueError` for codes the tokenizer cannot decode (outside its
    codebook, or of a shape it does not take) and, with `compare`, for a source that
    no longer matches the codes."""
    os.makedirs(folder, exist_ok=True)
    count = len(codes) if config.limit is None else min(config.limit, len(codes))
    source = _SourceFrames(codes.meta, codes.meta["split"]) if config.compare else None
    todo = [
        i for i in range(count) if config.overwrite or not os.path.isfile(entry_file(folder, i))
    ]
    shown: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # the preview's entries
    scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # PSNR and SSIM by frame
    identical = [0]  # frames decoded exactly

    def look(i: int, video: np.ndarray) -> None:
        """Keep what the preview and the report need of entry `i` (not its frames)."""
        real = None
        if source is not None:
            real = source(codes, i)
            if real.shape != video.shape:
                raise ValueError(
                    f"--compare: entry {i} ({codes.path(i)}) decodes to frames {video.shape}, "
                    f"but its source frames are {real.shape}: the source changed since encoding."
                )
            scores[i] = _scores(video, real)
            identical[0] += int(np.all(real == video, axis=(1, 2, 3)).sum())
        if i < config.preview:
            shown[i] = (video, real)

    batch: list[int] = []

    def flush() -> None:
        if not batch:
            return
        frames = codes_to_frames(tokenizer, np.stack([codes[i]["codes"] for i in batch]))
        for i, video in zip(batch, frames):
            name = f"{codes.names[i]}@{int(codes.starts[i])}"
            _write_entry(entry_file(folder, i), video, codes[i].get("actions"), name)
            look(i, video)
        bar.update(len(batch))
        batch.clear()

    bar = tqdm(
        total=len(todo),
        desc=f"decode {os.path.basename(os.path.normpath(folder))}",
        unit="entry",
        disable=not config.progress,
    )
    with bar:
        for i in todo:
            if batch and codes.shapes[i].tolist() != codes.shapes[batch[0]].tolist():
                flush()
            batch.append(i)
            if len(batch) == config.batch_size:
                flush()
        flush()
    # Entries written by an earlier run are read back, not decoded again.
    done = set(todo)
    for i in range(count if source is not None else min(config.preview, count)):
        if i not in done:
            with np.load(entry_file(folder, i)) as f:
                look(i, f["video"])

    psnr_mean = ssim_mean = None
    if source is not None:
        ordered = [scores[i] for i in range(count)]
        report = _write_report(
            folder, [p for p, _ in ordered], [s for _, s in ordered], identical[0], codes.meta
        )
        psnr_mean, ssim_mean = report["psnr"], report["ssim"]
    preview = None
    if shown:
        order = sorted(shown)
        reals = [shown[i][1] for i in order]
        preview = _save_preview(
            os.path.join(folder, PREVIEW_FILE),
            [shown[i][0] for i in order],
            None if source is None else [r for r in reals if r is not None],
        )
    return DecodeSummary(folder, count, len(todo), preview, psnr_mean, ssim_mean)


def _splits(root: str, asked: tuple[str, ...]) -> list[str]:
    if asked:
        for split in asked:
            if read_meta(os.path.join(root, split)) is None:
                raise FileNotFoundError(
                    f"--codes {root!r} holds no encoded {split!r} split ({split}/{META_FILE})."
                )
        return list(asked)
    found = sorted(
        name
        for name in (os.listdir(root) if os.path.isdir(root) else [])
        if os.path.isfile(os.path.join(root, name, META_FILE))
    )
    if not found:
        hint = ""
        if os.path.isfile(os.path.join(root, META_FILE)):
            hint = f" ({root!r} is one split's folder: pass its parent)"
        raise FileNotFoundError(
            f"--codes {root!r} holds no encoded splits (<split>/{META_FILE}){hint}; write them "
            "with `python -m eqvid.data.encode`."
        )
    return found


def _tokenizer_for(decode: DecodeConfig, meta: dict[str, Any]) -> Any:
    from ..models._tokenizer_files import load_tokenizer

    if decode.tokenizer:
        return load_tokenizer(decode.tokenizer, ema=decode.ema)
    path = meta["tokenizer"].get("path")
    if not path:
        raise ValueError("the codes record no tokenizer folder; pass --tokenizer.")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"the tokenizer the codes were encoded with, {path!r} (recorded in encode.json), "
            "is not there; pass --tokenizer with its new place."
        )
    return load_tokenizer(path, ema=bool(meta["tokenizer"].get("ema", True)))


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m eqvid.data.decode", __doc__)
    add_config_arguments(parser, "decode", DecodeConfig)
    return parser


def main(argv: list[str] | None = None) -> list[DecodeSummary]:
    parser = _parser()
    args = parser.parse_args(argv)
    decode = config_from_args(args, "decode", DecodeConfig())
    if not decode.codes:
        parser.error("--codes is required")
    if not decode.out:
        parser.error("--out is required")
    if os.path.abspath(decode.out) == os.path.abspath(decode.codes):
        parser.error("--out must differ from --codes")
    splits = _splits(decode.codes, decode.splits)
    tokenizer = None
    summaries = []
    for split in splits:
        meta = read_meta(os.path.join(decode.codes, split))
        assert meta is not None
        if tokenizer is None:
            tokenizer = _tokenizer_for(decode, meta)
        codes = CodesVideos(decode.codes, split, tokenizer=tokenizer)
        summary = decode_split(tokenizer, codes, os.path.join(decode.out, split), config=decode)
        scores = (
            f"; PSNR {summary.psnr:.2f} dB, SSIM "
            f"{'—' if summary.ssim is None else format(summary.ssim, '.4f')} against the source"
            if summary.psnr is not None
            else ""
        )
        print(
            f"{split}: {summary.entries} entries ({summary.decoded_now} decoded now) -> "
            f"{summary.folder}{scores}"
        )
        summaries.append(summary)
    return summaries


if __name__ == "__main__":
    try:
        main()
    except (BadVideoError, OSError, ValueError) as error:  # a message, not a traceback
        sys.exit(f"error: {error}")
