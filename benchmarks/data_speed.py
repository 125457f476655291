"""How fast does `eqvid.data.make_dataset` deliver batches from each file format?

Writes small synthetic datasets in every format eqvid reads — TECO `.npz`
(uncompressed, with actions), TECO `.mp4` (H.264, sidecar actions), MeBT PNG frame
folders, a folder of `.webm` (VP9) files, and ArrayRecord shards packed from the
npz — then times `make_dataset(config, batch_size=..., num_workers=w)` (random
windows of `seq_len` frames, shuffled, endless: the training path, including
decoding, batching and the float conversion) for each format, frame size and
number of worker processes. Reports frames/s (delivered window frames) and
batches/s, and writes `data_speed_cpu.md` (`data_speed.md` on GPU hosts) into a new
folder under `benchmarks/results/runs/` (with `--update-reference`: into
`benchmarks/results/`, replacing the committed reference). The frames are smooth random textures, so compressed formats are
neither trivially small nor pure noise.

    python benchmarks/data_speed.py                       # 64 and 128 px, 0/1/2 workers (a few minutes)
    python benchmarks/data_speed.py --sizes 64 --workers 0 --formats npz array_record
    python benchmarks/data_speed.py --quick               # seconds: only checks that it runs
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import warnings

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import begin_run, markdown_table, publish

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.data import (
    ArrayRecordConfig,
    FrameFolderConfig,
    TecoConfig,
    TecoVideos,
    VideoFilesConfig,
    VideoFolderConfig,
    make_dataset,
    pack_array_record,
)

FORMATS = ("npz", "mp4", "png", "webm", "array_record")
TARGET_FPS = 5000  # frames/s at 64x64 from npz / ArrayRecord (issue 8)


@dataclasses.dataclass(frozen=True)
class DataBenchConfig:
    """Datasets, sizes and timing."""

    formats: tuple[str, ...] = FORMATS
    """Formats to time (npz, mp4, png, webm, array_record)."""
    sizes: tuple[int, ...] = (64, 128)
    """Frame sizes (height = width) of the synthetic datasets."""
    workers: tuple[int, ...] = (0, 1, 2)
    """Worker process counts (0: read in the calling thread)."""
    videos: int = 24
    """Videos per dataset."""
    frames: int = 64
    """Frames per video."""
    seq_len: int = 16
    """Frames per window."""
    batch: int = 8
    """Videos per batch."""
    seconds: float = 2.0
    """Time each measurement for about this long (after warm-up batches)."""
    quick: bool = False
    """Tiny datasets and one short measurement each: checks the script runs (numbers meaningless)."""
    data_dir: str = ""
    """Where to write the synthetic datasets (default: a temporary folder, removed after)."""
    name: str = ""
    """Result file name (default: data_speed on GPU hosts, data_speed_<backend> elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/,
    which git ignores)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def synthetic_video(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """Smooth random colour texture drifting one pixel per frame, plus mild noise."""
    cells = max(size // 8, 2)
    coarse = rng.integers(0, 256, (cells, cells + frames // 8 + 2, 3)).astype(np.float32)
    big = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize(
            (coarse.shape[1] * size // cells, size), Image.Resampling.BILINEAR
        ),
        np.float32,
    )
    video = np.stack([big[:, t : t + size] for t in range(frames)])
    video += rng.normal(0, 4, video.shape)
    return np.clip(video, 0, 255).astype(np.uint8)


def write_video_file(path: str, video: np.ndarray, codec: str) -> None:
    import av

    pix = "yuv420p"
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=30)
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"write_video_file: `codec` must be a video codec, got {codec!r}.")
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], pix
        if codec == "libvpx-vp9":
            stream.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_datasets(
    folder: str, formats: tuple[str, ...], videos: int, frames: int, size: int
) -> dict[str, VideoFilesConfig]:
    """Every requested format's config, over the same synthetic videos."""
    rng = np.random.default_rng(size)
    configs: dict[str, VideoFilesConfig] = {}
    npz_root = os.path.join(folder, "npz")
    need_npz = "npz" in formats or "array_record" in formats
    for sub in ("npz/train", "mp4/train", "png", "webm/train"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    lines = []
    for v in range(videos):
        video = synthetic_video(rng, frames, size)
        actions = rng.integers(0, 6, frames)
        if need_npz:
            np.savez(os.path.join(npz_root, "train", f"{v:04d}.npz"), video=video, actions=actions)
        if "mp4" in formats:
            write_video_file(os.path.join(folder, "mp4", "train", f"{v:04d}.mp4"), video, "libx264")
            np.savez(os.path.join(folder, "mp4", "train", f"{v:04d}.npz"), actions=actions)
        if "webm" in formats:
            write_video_file(
                os.path.join(folder, "webm", "train", f"{v:04d}.webm"), video, "libvpx-vp9"
            )
        if "png" in formats:
            for t, frame in enumerate(video):
                name = f"png/vid{v:04d}_{t + 1}.png"
                Image.fromarray(frame).save(os.path.join(folder, name), compress_level=1)
                lines.append(name[4:])
    if lines:
        with open(os.path.join(folder, "png", "train.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    common = {}
    for name in formats:
        if name == "npz":
            configs[name] = TecoConfig(root=npz_root, **common)
        elif name == "mp4":
            configs[name] = TecoConfig(root=os.path.join(folder, "mp4"), **common)
        elif name == "png":
            configs[name] = FrameFolderConfig(root=os.path.join(folder, "png"), **common)
        elif name == "webm":
            configs[name] = VideoFolderConfig(root=os.path.join(folder, "webm"), **common)
        elif name == "array_record":
            out = os.path.join(folder, "array_record")
            pack_array_record(
                TecoVideos(npz_root, "train"),
                os.path.join(out, "train"),
                progress=False,
                overwrite=True,
            )
            configs[name] = ArrayRecordConfig(root=out, **common)
    return configs


def disk_mib(config) -> float:
    total = 0
    for parent, _, names in os.walk(config.root):
        total += sum(os.path.getsize(os.path.join(parent, n)) for n in names)
    return total / 2**20


def time_pipeline(
    config, *, batch: int, workers: int, seconds: float, min_batches: int
) -> tuple[float, int]:
    """(seconds, batches) of reading batches for about `seconds`, after warm-up
    (worker start-up and the first batches are not timed)."""
    it = iter(make_dataset(config, batch_size=batch, seed=0, num_workers=workers))
    for _ in range(2 + 2 * workers):
        next(it)
    count, start = 0, time.perf_counter()
    while count < min_batches or time.perf_counter() - start < seconds:
        next(it)
        count += 1
    elapsed = time.perf_counter() - start
    del it
    return elapsed, count


def main(argv: list[str] | None = None) -> list[dict]:
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", DataBenchConfig)
    config = config_from_args(parser.parse_args(argv), "bench", DataBenchConfig())
    for name in config.formats:
        if name not in FORMATS:
            parser.error(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
    if config.quick:
        config = dataclasses.replace(
            config, sizes=(16,), workers=(0,), videos=4, frames=8, seq_len=4, batch=2, seconds=0.0
        )
    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    records, rows = [], []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base = config.data_dir or tmp
        for size in config.sizes:
            folder = os.path.join(base, f"{size}px")
            t0 = time.perf_counter()
            configs = write_datasets(folder, config.formats, config.videos, config.frames, size)
            print(f"wrote {size}x{size} datasets in {time.perf_counter() - t0:.1f} s", flush=True)
            for name, dataset in configs.items():
                dataset = dataclasses.replace(dataset, seq_len=config.seq_len)
                for workers in config.workers:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        seconds, batches = time_pipeline(
                            dataset,
                            batch=config.batch,
                            workers=workers,
                            seconds=config.seconds,
                            min_batches=3,
                        )
                    fps = batches * config.batch * config.seq_len / seconds
                    record = dict(
                        format=name,
                        size=size,
                        workers=workers,
                        batches=batches,
                        seconds=seconds,
                        frames_per_s=fps,
                        batches_per_s=batches / seconds,
                        disk_mib=disk_mib(dataset),
                    )
                    records.append(record)
                    rows.append(
                        [
                            name,
                            f"{size}×{size}",
                            str(workers),
                            f"{fps:,.0f}",
                            f"{batches / seconds:.1f}",
                            f"{1e3 * seconds / batches:.1f}",
                            f"{record['disk_mib']:.1f}",
                        ]
                    )
                    print(
                        f"{name:>12} {size:>4}px workers={workers}: {fps:>9,.0f} frames/s "
                        f"{batches / seconds:7.1f} batches/s",
                        flush=True,
                    )
    table = markdown_table(
        ["format", "frames", "workers", "frames/s", "batches/s", "ms/batch", "disk MiB"], rows
    )
    target_rows = [r for r in records if r["size"] == 64 and r["format"] in ("npz", "array_record")]
    targets = "\n".join(
        f"- {r['format']}, {r['workers']} worker(s): {r['frames_per_s']:,.0f} frames/s — "
        f"{'meets' if r['frames_per_s'] >= TARGET_FPS else 'MISSES'} the target"
        for r in target_rows
    )
    body = (
        f"`make_dataset(config, batch_size={config.batch}, num_workers=w)` on {config.videos} videos of "
        f"{config.frames} frames per format, random windows of seq_len={config.seq_len} (stride 1), "
        f"shuffled: reading + decoding + batching + float32 conversion, measured for ~{config.seconds:g} s "
        "after warm-up. frames/s counts delivered window frames. npz: uncompressed `np.savez` "
        "(windows read only their frames); mp4: H.264 yuv420p (decoded from the first frame to the "
        "window's last); png: MeBT frame folder; webm: VP9 (no frame count in the container: decoded "
        "whole); array_record: packed from the npz by `eqvid.data.pack_array_record` (zstd, one record "
        "per frame). Worker processes pay for sending each batch back to the main process; they "
        "pay off where decoding dominates and cores are free. Other jobs on the machine slow "
        f"every number (load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"{os.cpu_count()} cores).\n\n"
        f"{table}\n\n## Targets\n\nReading + decoding + batching ≥ {TARGET_FPS:,} frames/s at 64×64 from "
        f"npz / ArrayRecord:\n\n{targets or '- (not measured in this run)'}\n"
    )
    publish("data_speed", "data pipeline speed", body, custom_name=config.name, out_dir=str(out))
    return records


if __name__ == "__main__":
    main()
