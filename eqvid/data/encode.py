"""Encode a video dataset once with a trained tokenizer: ArrayRecord shards of codes.

    python -m eqvid.data.encode --tokenizer runs/vqgan2d-moving-mnist --dataset moving_mnist \\
        --frame-size 64 --train-sequences 100000 --out data/mmnist_codes
    python -m eqvid.data.encode --tokenizer weights/teco_dmlab_vqgan --dataset teco \\
        --root data/dmlab --out data/dmlab_codes
    python -m eqvid.data.encode --tokenizer runs/vqgan3d --dataset video_folder \\
        --root data/ucf --frame-size 128 --clip-len 16 --out data/ucf_codes

--tokenizer is a tokenizer folder (a converter's or `save_tokenizer`'s) or a training
run of one (its latest checkpoint). --dataset and its options are those of `python -m
eqvid.train --dataset NAME --help` (less the window's: seq_len, crop, value_range of
the file formats; Moving MNIST's seq_len is its videos' length). Every video of each
split (--splits) is read whole, every frame_stride-th frame, resized to --frame-size
(centre square crop) when set, scaled to [-1, 1] and encoded, with its actions when
the data has them. The tokenizer must accept the videos' length (`code_shape`);
--clip-len L encodes instead the consecutive clips of L frames of every video
(frames 0..L-1, L..2L-1, ...; the last frames that fill no clip are left out; a
video shorter than L is a bad file), each clip an entry of its own: choose an L the
tokenizer takes (a multiple of its time downsampling).

Output: <out>/<split>/ with codes-NNNNN.array_record shards, their codes-NNNNN.npz
index parts, encode.json (the tokenizer: folder, model name, n_codes, weights sha256,
whether its moving average was used; the dataset; once finished the codes' shape)
and, once the split is finished, index.npz. Read it with
`eqvid.data.CodesVideos(<out>, split)`; decode it back to frames with `python -m
eqvid.data.decode --codes <out> --out DIR`. Running the same
command again continues where a stopped or killed run left off (at most the shard
in progress, --shard-videos videos, is encoded again) and leaves a finished split as
it is; other settings against an existing output are an error (--overwrite starts
over).
"""

import argparse
import dataclasses
import glob
import json
import os
import re
import sys
import warnings
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._cli import add_config_arguments, command_parser, config_from_args
from ._bad_video import BadVideoError, BadVideoWarning
from ._codes import (
    CODES_FORMAT,
    INDEX_FILE,
    META_FILE,
    _config_dict,
    read_meta,
    tokenizer_record,
)
from ._datasets import DATASETS, open_source
from ._file_config import VideoFilesConfig
from ._transforms import resize_crop

__all__ = ["EncodeConfig", "EncodeSummary", "encode_split", "main"]

# Fields of the file formats that only matter when reading training windows.
_WINDOW_FIELDS = ("seq_len", "crop", "value_range")
_SHARD = re.compile(r"codes-(\d{5})\.(array_record|npz)$")
_SCALE = np.float32(1.0 / 127.5)


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
    """The tokenizer, and where and how to write the codes."""

    tokenizer: str = ""
    """A tokenizer folder, or a training run of a tokenizer (its latest checkpoint)."""
    ema: bool = True
    """From a training run, the moving average of the parameters when it kept one."""
    out: str = ""
    """Output folder: each split goes to <out>/<split>/."""
    splits: tuple[str, ...] = ("train", "test")
    """Splits to encode."""
    clip_len: int | None = None
    """Encode consecutive clips of this many frames of every video, each an entry;
    none encodes every video whole."""
    batch_size: int = 16
    """Videos (or clips) of one shape encoded together."""
    shard_videos: int = 256
    """Source videos per shard: a killed run encodes at most this many again."""
    compression: str = "zstd:3"
    """ArrayRecord compression: zstd:N, snappy, brotli:N or uncompressed."""
    limit: int | None = None
    """Encode at most this many videos of each split in this run, then stop (a later
    run continues); none: all."""
    overwrite: bool = False
    """Encode again into an output that holds other codes (otherwise an error)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        for name in ("clip_len", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(
                    f"EncodeConfig: `{name}` must be an int >= 1 or none; got {value!r}."
                )
        for name in ("batch_size", "shard_videos"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EncodeConfig: `{name}` must be an int >= 1; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class EncodeSummary:
    """What `encode_split` left in its folder."""

    folder: str
    complete: bool
    """Every video of the split is encoded (`index.npz` written)."""
    source_videos: int
    """Videos in the split."""
    done: int
    """Source videos encoded (or skipped as bad) so far."""
    encoded_now: int
    """Source videos this call encoded or skipped (0 for a split already finished)."""
    entries: int
    """Entries (videos or clips) in the finished output; 0 until complete."""
    shards: int
    skipped: tuple[str, ...]
    """The bad files left out (with `on_bad_file="skip"`), each with its reason."""


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _dataset_record(name: str, config: Any) -> dict[str, Any]:
    fields = _config_dict(config)
    if fields.get("root"):
        fields["root"] = os.path.abspath(fields["root"])
    return {"name": name, "config": _json(fields)}


def _same_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings in which `old` (an output's encode.json) and `new` differ."""
    differ = []
    for key in ("model_name", "n_codes", "weights_sha256", "config"):
        if old["tokenizer"].get(key) != new["tokenizer"].get(key):
            differ.append(f"tokenizer {key}")
    if old["dataset"]["name"] != new["dataset"]["name"]:
        differ.append("dataset")
    old_c, new_c = old["dataset"]["config"], new["dataset"]["config"]
    for key in sorted(set(old_c) | set(new_c)):
        if key != "on_bad_file" and old_c.get(key) != new_c.get(key):
            differ.append(f"dataset {key} ({old_c.get(key)!r} -> {new_c.get(key)!r})")
    for key in ("split", "clip_len", "source_videos"):
        if old.get(key) != new.get(key):
            differ.append(f"{key} ({old.get(key)!r} -> {new.get(key)!r})")
    return differ


def _write_json(path: str, value: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _write_npz(path: str, arrays: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
    os.replace(tmp, path)


def _own_files(folder: str) -> list[str]:
    names = [META_FILE, INDEX_FILE, META_FILE + ".tmp", INDEX_FILE + ".tmp"]
    files = [os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n))]
    return files + sorted(glob.glob(os.path.join(folder, "codes-*")))


def _num_records(path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return int(reader.num_records())
    finally:
        reader.close()


def _intact_shards(folder: str) -> list[dict[str, Any]]:
    """The shard index parts of `folder` that continue one another from video 0, each
    with its shard; files after the first gap (a shard cut short by a killed run, and
    anything after it) are removed."""
    parts: list[dict[str, Any]] = []
    stop = 0
    while True:
        name = f"codes-{len(parts):05d}"
        part_path = os.path.join(folder, name + ".npz")
        shard_path = os.path.join(folder, name + ".array_record")
        try:
            loaded = _load_part(part_path)
            intact = int(loaded["source_start"]) == stop and _num_records(shard_path) == len(
                loaded["sources"]
            )
        except (OSError, ValueError, KeyError, RuntimeError):
            break
        if not intact:
            break
        parts.append(loaded)
        stop = int(loaded["source_stop"])
    for path in glob.glob(os.path.join(folder, "codes-*")):
        match = _SHARD.search(os.path.basename(path))
        if match is None or int(match.group(1)) >= len(parts):
            os.remove(path)  # a cut-short shard, its part, or a temporary file
    return parts


class _Shard:
    """One shard being written: its records, and the part of the index they make."""

    def __init__(self, folder: str, number: int, source_start: int, options: str) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        self.base = os.path.join(folder, f"codes-{number:05d}")
        self.writer = ArrayRecordWriter(self.base + ".array_record", options)
        self.source_start = source_start
        self.sources: list[int] = []
        self.starts: list[int] = []
        self.frames: list[int] = []
        self.shapes: list[tuple[int, ...]] = []
        self.names: list[str] = []
        self.actions: list[np.ndarray] = []
        self.skipped: list[str] = []
        self.frame_shape: tuple[int, ...] | None = None

    def write(self, codes: np.ndarray, entry: "_Entry") -> None:
        self.writer.write(np.ascontiguousarray(codes, "<i4").tobytes())
        self.sources.append(entry.source)
        self.starts.append(entry.start)
        self.frames.append(len(entry.video))
        self.shapes.append(tuple(codes.shape))
        self.names.append(entry.name)
        if entry.actions is not None:
            self.actions.append(entry.actions)
        self.frame_shape = tuple(entry.video.shape[1:])

    def commit(self, source_stop: int, has_actions: bool) -> None:
        """Close the shard and write its part of the index (the shard now counts)."""
        self.writer.close()
        part: dict[str, Any] = dict(
            source_start=np.int64(self.source_start),
            source_stop=np.int64(source_stop),
            sources=np.array(self.sources, np.int64),
            starts=np.array(self.starts, np.int64),
            frames=np.array(self.frames, np.int64),
            shapes=np.array(self.shapes, np.int64).reshape(-1, 3),
            names=np.array(self.names, dtype=str),
            skipped=np.array(self.skipped, dtype=str),
            frame_shape=np.array(self.frame_shape or (), np.int64),
        )
        if has_actions:
            part["actions"] = (
                np.concatenate(self.actions).astype(np.int32)
                if self.actions
                else np.zeros(0, np.int32)
            )
            part["action_lengths"] = np.array([len(a) for a in self.actions], np.int64)
        _write_npz(self.base + ".npz", part)


@dataclasses.dataclass
class _Entry:
    source: int
    start: int
    name: str
    video: np.ndarray
    actions: np.ndarray | None


def _entries(
    source: Any,
    i: int,
    name: str,
    *,
    frame_stride: int,
    frame_size: int | None,
    interpolation: str,
    clip_len: int | None,
) -> list[_Entry]:
    item = source[i]
    video = np.asarray(item["video"])[::frame_stride]
    actions = item.get("actions")
    if actions is not None:
        actions = np.asarray(actions, np.int32)[::frame_stride]
    video = resize_crop(video, frame_size, crop="center", interpolation=interpolation)
    if clip_len is None:
        return [_Entry(i, 0, name, video, actions)]
    count = len(video) // clip_len
    if count == 0:
        raise BadVideoError(
            f"{name}: has {len(video)} frame(s) (every {frame_stride}-th), too few for one "
            f"clip of clip_len={clip_len}"
        )
    return [
        _Entry(
            i,
            k * clip_len,
            name,
            video[k * clip_len : (k + 1) * clip_len],
            None if actions is None else actions[k * clip_len : (k + 1) * clip_len],
        )
        for k in range(count)
    ]


class _Encoder:
    """Encodes entries of one shape in batches, checking what the tokenizer makes."""

    def __init__(self, tokenizer: Any, batch_size: int) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pending: list[_Entry] = []
        self.code_shapes: dict[tuple[int, ...], tuple[int, int, int]] = {}
        self.channels = getattr(getattr(tokenizer, "config", None), "channels", None)

    def code_shape(self, entry: _Entry) -> tuple[int, int, int]:
        t, h, w, c = entry.video.shape
        if (t, h, w, c) not in self.code_shapes:
            if self.channels is not None and c != self.channels:
                raise ValueError(
                    f"{entry.name}: frames of {c} channel(s), the tokenizer takes {self.channels}; "
                    "use a tokenizer for these videos (or --grayscale where the dataset has it)."
                )
            try:
                shape = tuple(int(s) for s in self.tokenizer.code_shape(t, h, w))
            except ValueError as error:
                raise ValueError(
                    f"{entry.name}: the tokenizer cannot encode {t} frames of {h}×{w} ({error}); "
                    "set --frame-size to resize the frames, or --clip-len to encode clips of a "
                    "length it takes."
                ) from None
            self.code_shapes[(t, h, w, c)] = shape  # type: ignore[assignment]
        return self.code_shapes[(t, h, w, c)]

    def add(self, entry: _Entry) -> list[tuple[np.ndarray, _Entry]]:
        """Queue `entry`; returns the entries encoded meanwhile, with their codes."""
        self.code_shape(entry)
        done = []
        if self.pending and self.pending[0].video.shape != entry.video.shape:
            done = self.flush()
        self.pending.append(entry)
        if len(self.pending) >= self.batch_size:
            done += self.flush()
        return done

    def flush(self) -> list[tuple[np.ndarray, _Entry]]:
        if not self.pending:
            return []
        from ..models import encode_videos

        batch, self.pending = self.pending, []
        videos = np.stack([e.video for e in batch]).astype(np.float32) * _SCALE - np.float32(1.0)
        codes = np.asarray(encode_videos(self.tokenizer, videos))
        expected = (len(batch), *self.code_shape(batch[0]))
        if codes.shape != expected or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(
                f"the tokenizer encoded {videos.shape} to {codes.dtype} {codes.shape}, not int "
                f"{expected} as its code_shape says."
            )
        n_codes = int(self.tokenizer.n_codes)
        if codes.size and (codes.min() < 0 or codes.max() >= n_codes):
            raise ValueError(
                f"the tokenizer made codes in [{codes.min()}, {codes.max()}], outside its "
                f"[0, {n_codes})."
            )
        return list(zip(codes.astype(np.int32), batch, strict=True))


def _merge(folder: str, parts: list[dict[str, Any]], has_actions: bool) -> dict[str, Any]:
    shapes = {tuple(int(s) for s in p["frame_shape"]) for p in parts if len(p["sources"])}
    if len(shapes) > 1:
        raise ValueError(
            f"{folder}: videos of different frame shapes {sorted(shapes)} were encoded; set "
            "--frame-size to resize every video to one size."
        )
    index = dict(
        format=np.array(CODES_FORMAT),
        shards=np.array([f"codes-{k:05d}.array_record" for k in range(len(parts))]),
        shard_records=np.array([len(p["sources"]) for p in parts], np.int64),
        sources=np.concatenate([p["sources"] for p in parts]).astype(np.int64),
        starts=np.concatenate([p["starts"] for p in parts]).astype(np.int64),
        frames=np.concatenate([p["frames"] for p in parts]).astype(np.int64),
        shapes=np.concatenate([p["shapes"] for p in parts]).astype(np.int64).reshape(-1, 3),
        names=np.concatenate([p["names"] for p in parts]).astype(str),
        skipped=np.concatenate([p["skipped"] for p in parts]).astype(str),
        frame_shape=np.array(shapes.pop() if shapes else (), np.int64),
    )
    if has_actions:
        lengths = np.concatenate([p["action_lengths"] for p in parts]).astype(np.int64)
        index["actions"] = np.concatenate([p["actions"] for p in parts]).astype(np.int32)
        index["action_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return index


def encode_split(
    tokenizer: Any,
    source: Any,
    folder: str,
    *,
    tokenizer_path: str = "",
    dataset_name: str = "",
    dataset_config: Any = None,
    split: str = "train",
    frame_stride: int = 1,
    frame_size: int | None = None,
    interpolation: str = "bilinear",
    on_bad_file: str = "error",
    encode: EncodeConfig = EncodeConfig(),
) -> EncodeSummary:
    """Encode every video of `source` (a random-access source of whole videos, as
    `open_source` returns) with `tokenizer` (its state folded in) into `folder`.

    `tokenizer_path`, `dataset_name` and `dataset_config` are recorded in
    `encode.json` (a re-run must match them); `frame_stride`, `frame_size`,
    `interpolation` and `on_bad_file` say how videos are read (the dataset config's
    fields); `encode` the clips, batches, shards, limit, overwrite and progress bar.

    Resumable: an unfinished output with the same settings is continued from its
    last intact shard, a finished one is left as it is.

    **Raises** `FileExistsError` for an output of other settings (unless
    `encode.overwrite`), `ValueError` for videos the tokenizer cannot encode,
    `BadVideoError` naming a bad file (with `on_bad_file="error"`).
    """
    meta = {
        "format": CODES_FORMAT,
        "tokenizer": {**tokenizer_record(tokenizer, tokenizer_path), "ema": encode.ema},
        "dataset": _dataset_record(dataset_name, dataset_config),
        "split": split,
        "clip_len": encode.clip_len,
        "source_videos": len(source),
        "complete": False,
    }
    meta = _json(meta)
    os.makedirs(folder, exist_ok=True)
    old = read_meta(folder)
    if old is None and _own_files(folder) and not encode.overwrite:
        raise FileExistsError(
            f"{folder!r} holds codes files but no {META_FILE}; pass --overwrite to encode again."
        )
    if old is not None and not encode.overwrite:
        differ = _same_settings(old, meta)
        if differ:
            raise FileExistsError(
                f"{folder!r} holds codes encoded with other settings ({'; '.join(differ)}); "
                "pass --overwrite to encode again, or choose another --out."
            )
    if encode.overwrite or old is None:
        for path in _own_files(folder):
            os.remove(path)
        _write_json(os.path.join(folder, META_FILE), meta)
    elif old.get("complete") and os.path.isfile(os.path.join(folder, INDEX_FILE)):
        with np.load(os.path.join(folder, INDEX_FILE)) as index:
            entries, shards = len(index["sources"]), len(index["shards"])
            skipped = tuple(str(s) for s in index["skipped"])
        return EncodeSummary(folder, True, len(source), len(source), 0, entries, shards, skipped)

    parts = _intact_shards(folder)
    start = int(parts[-1]["source_stop"]) if parts else 0
    has_actions = bool(getattr(source, "has_actions", False))
    options = f"group_size:1,{encode.compression}"
    stop = len(source) if encode.limit is None else min(len(source), start + encode.limit)
    encoder = _Encoder(tokenizer, encode.batch_size)
    bar = tqdm(
        total=len(source),
        initial=start,
        desc=f"encode {split}",
        unit="video",
        disable=not encode.progress,
        dynamic_ncols=True,
    )
    shard = None
    try:
        for i in range(start, stop):
            if shard is None:
                shard = _Shard(folder, len(parts), i, options)
            name = source.path(i) if hasattr(source, "path") else f"{split} video {i}"
            try:
                entries = _entries(
                    source,
                    i,
                    name,
                    frame_stride=frame_stride,
                    frame_size=frame_size,
                    interpolation=interpolation,
                    clip_len=encode.clip_len,
                )
            except BadVideoError as e:
                if on_bad_file == "error":
                    raise
                shard.skipped.append(str(e))
                warnings.warn(f"skipped bad file {e}", BadVideoWarning, stacklevel=2)
                entries = []
            for entry in entries:
                for codes, done in encoder.add(entry):
                    shard.write(codes, done)
            bar.update(1)
            if i + 1 - shard.source_start >= encode.shard_videos or i + 1 == stop:
                for codes, done in encoder.flush():
                    shard.write(codes, done)
                shard.commit(i + 1, has_actions)
                parts.append(_load_part(shard.base + ".npz"))
                shard = None
    finally:
        bar.close()
        if shard is not None:  # failed or interrupted mid-shard: encoded again next time
            shard.writer.close()
            for path in glob.glob(shard.base + ".*"):
                os.remove(path)
    done = int(parts[-1]["source_stop"]) if parts else 0
    skipped = tuple(str(s) for p in parts for s in p["skipped"])
    if done < len(source):
        return EncodeSummary(folder, False, len(source), done, done - start, 0, len(parts), skipped)
    index = _merge(folder, parts, has_actions)
    if len(index["sources"]) == 0:
        raise ValueError(f"encode: no readable video in {source!r}; nothing was encoded.")
    _write_npz(os.path.join(folder, INDEX_FILE), index)
    first_shape = [int(s) for s in index["frame_shape"]]
    meta["complete"] = True
    meta["videos"] = len(index["sources"])
    meta["code_shape"] = {
        "frames": int(index["frames"][0]),
        "height": first_shape[0],
        "width": first_shape[1],
        "channels": first_shape[2],
        "codes": [int(s) for s in index["shapes"][0]],
    }
    _write_json(os.path.join(folder, META_FILE), meta)
    return EncodeSummary(
        folder, True, len(source), done, done - start, meta["videos"], len(parts), skipped
    )


def _load_part(path: str) -> dict[str, Any]:
    with np.load(path) as part:
        return {k: part[k] for k in part.files}


def _parser(dataset: str) -> argparse.ArgumentParser:
    parser = command_parser("python -m eqvid.data.encode", __doc__)
    parser.add_argument(
        "--dataset",
        default="moving_mnist",
        choices=list(DATASETS),
        help="the videos to encode; `--dataset NAME --help` lists that dataset's options "
        "(default: moving_mnist)",
    )
    cls = DATASETS[dataset]
    exclude = _WINDOW_FIELDS if issubclass(cls, VideoFilesConfig) else ()
    title = f"data ({dataset})"
    add_config_arguments(parser, title, cls, exclude=exclude)
    add_config_arguments(parser, "encode", EncodeConfig)
    parser.set_defaults(_data_title=title)
    return parser


def main(argv: list[str] | None = None) -> list[EncodeSummary]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default="moving_mnist", choices=list(DATASETS))
    known, _ = pre.parse_known_args(argv)
    parser = _parser(known.dataset)
    args = parser.parse_args(argv)
    config = config_from_args(args, args._data_title, DATASETS[args.dataset]())
    encode = config_from_args(args, "encode", EncodeConfig())
    if not encode.tokenizer:
        parser.error("--tokenizer is required")
    if not encode.out:
        parser.error("--out is required")
    if isinstance(config, VideoFilesConfig):
        if not config.root:
            parser.error("--root is required")
        if os.path.abspath(encode.out) == os.path.abspath(config.root):
            parser.error("--out must differ from --root")
    from ..models._tokenizer_files import load_tokenizer

    tokenizer = load_tokenizer(encode.tokenizer, ema=encode.ema)
    summaries = []
    for split in encode.splits:
        source = open_source(config, split)
        files = isinstance(config, VideoFilesConfig)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BadVideoWarning)
            summary = encode_split(
                tokenizer,
                source,
                os.path.join(encode.out, split),
                tokenizer_path=encode.tokenizer,
                dataset_name=args.dataset,
                dataset_config=config,
                split=split,
                frame_stride=config.frame_stride if files else 1,
                frame_size=config.frame_size if files else None,
                interpolation=config.interpolation if files else "bilinear",
                on_bad_file=config.on_bad_file if files else "error",
                encode=encode,
            )
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        skipped = f"; skipped {len(summary.skipped)} bad file(s)" if summary.skipped else ""
        if summary.complete and summary.encoded_now == 0:
            print(f"{split}: already encoded, {summary.entries} entries -> {summary.folder}")
        elif summary.complete:
            print(
                f"{split}: {summary.entries} entries of {summary.source_videos} videos in "
                f"{summary.shards} shard(s) -> {summary.folder}{skipped}"
            )
        else:
            print(
                f"{split}: stopped after {summary.done} of {summary.source_videos} videos "
                f"(--limit); run the same command again to continue -> {summary.folder}{skipped}"
            )
        summaries.append(summary)
    return summaries


if __name__ == "__main__":
    try:
        main()
    except (BadVideoError, OSError, ValueError) as error:  # a message, not a traceback
        sys.exit(f"error: {error}")
