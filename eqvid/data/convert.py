"""Pack a video dataset into ArrayRecord shards: decoded frames, read without decoding.

    python -m eqvid.data.convert teco --root data/dmlab --out data/dmlab_ar
    python -m eqvid.data.convert frame_folder --root data/ucf_frames --out data/ucf_ar --frame-size 128
    python -m eqvid.data.convert video_folder --root data/clevrer --splits train --out data/clevrer_ar

Reads every video of each split (`--splits`, default train and test) of the
dataset in its own format, optionally resizes it (`--frame-size`, centre square
crop), and writes `<out>/<split>/frames-NNNNN.array_record` (one record per frame)
plus `<out>/<split>/index.npz`. Train on the result with `--dataset array_record
--root <out>` (`ArrayRecordConfig`). A bad file stops the run, naming it, or with
`--on-bad-file skip` is left out with a warning.
"""

import argparse
import dataclasses
import inspect
import os
import sys
import warnings

from .._cli import add_config_arguments, command_parser, config_from_args
from .._cli import description as group_description
from ._bad_video import BadVideoError, BadVideoWarning
from ._datasets import DATASETS, open_source
from ._pack import pack_array_record

# Fields that only matter when reading windows, not when packing whole videos.
_WINDOW_FIELDS = ("seq_len", "frame_stride", "crop", "value_range")
FORMATS = tuple(name for name in DATASETS if name != "moving_mnist")


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Where and how to write the shards."""

    out: str = ""
    """Output folder: each split goes to <out>/<split>/."""
    splits: tuple[str, ...] = ("train", "test")
    """Splits to pack."""
    shard_mb: float = 512.0
    """Start a new shard after this many MiB of raw frames."""
    compression: str = "zstd:3"
    """ArrayRecord compression: zstd:N, snappy, brotli:N or uncompressed."""
    overwrite: bool = False
    """Replace shards already in the output folder."""
    progress: bool = True
    """Show a progress bar."""


def main(argv: list[str] | None = None) -> list:
    parser = command_parser("python -m eqvid.data.convert", __doc__)
    formats = parser.add_subparsers(
        dest="format",
        required=True,
        metavar="FORMAT",
        help=f"the dataset's format: {', '.join(FORMATS)}",
    )
    for name in FORMATS:
        cls = DATASETS[name]
        sub = formats.add_parser(
            name,
            help=" ".join(group_description(cls).split()),
            description=inspect.cleandoc(cls.__doc__ or ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_arguments(sub, "dataset", cls, exclude=_WINDOW_FIELDS)
        add_config_arguments(sub, "convert", ConvertConfig)
    args = parser.parse_args(argv)
    config = config_from_args(args, "dataset", DATASETS[args.format]())
    convert = config_from_args(args, "convert", ConvertConfig())
    if not config.root:
        parser.error("--root is required")
    if not convert.out:
        parser.error("--out is required")
    if os.path.abspath(convert.out) == os.path.abspath(config.root):
        parser.error("--out must differ from --root")
    summaries = []
    for split in convert.splits:
        source = open_source(config, split)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BadVideoWarning)
            summary = pack_array_record(
                source,
                os.path.join(convert.out, split),
                frame_size=config.frame_size,
                interpolation=config.interpolation,
                on_bad_file=config.on_bad_file,
                shard_mb=convert.shard_mb,
                compression=convert.compression,
                overwrite=convert.overwrite,
                progress=convert.progress,
            )
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        print(
            f"{split}: {summary.videos} videos, {summary.frames} frames in {summary.shards} shard(s), "
            f"{summary.bytes / 2**20:.1f} MiB -> {summary.folder}"
            + (f"; skipped {len(summary.skipped)} bad file(s)" if summary.skipped else "")
        )
        summaries.append(summary)
    return summaries


if __name__ == "__main__":
    try:
        main()
    except (BadVideoError, OSError, ValueError) as error:  # bad data: a message, not a traceback
        sys.exit(f"error: {error}")
