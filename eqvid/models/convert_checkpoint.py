"""Convert released ConvSSM and TECO video-model checkpoints into eqvid model folders, once.

    python -m eqvid.models.convert_checkpoint convs5-mnist mnist_300/ --out models/convs5-mnist-300
    python -m eqvid.models.convert_checkpoint convs5-latent dmlab_convs5/ --tokenizer tokenizers/teco-dmlab --out models/convs5-latent-dmlab
    python -m eqvid.models.convert_checkpoint teco dmlab_teco/ --tokenizer tokenizers/teco-dmlab --out models/teco-dmlab
    python -m eqvid.models.convert_checkpoint teco-convs5 habitat_teco_convS5/ --tokenizer tokenizers/teco-habitat --out models/teco-convs5-habitat

SRC is a run's folder (with `checkpoints/checkpoint_<step>`, a Flax 0.6 msgpack file),
its `checkpoints/` folder, or the file; the latest step is read unless `--step`. The
folder then loads with `eqvid.models.load_model(folder)`. Neither Flax nor
TensorFlow is needed: the file is read with `msgpack`. Every array is checked by name
and shape; the first missing or mis-shaped one is named. The kinds on VQGAN codes
(convs5-latent and the TECO kinds) need the tokenizer folder of the model's VQGAN
(`python -m eqvid.models.convert_tokenizer teco ...`).
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eqvid.models._checkpoint_converters import (
    CHECKPOINT_KINDS,
    ConversionError,
    ConvertedModel,
    convert_convs5_latent,
    convert_convs5_mnist,
    convert_teco_convs5,
    convert_teco_model,
    convert_video_checkpoint,
)

__all__ = [
    "CHECKPOINT_KINDS",
    "ConversionError",
    "ConvertedModel",
    "convert_convs5_latent",
    "convert_convs5_mnist",
    "convert_teco_convs5",
    "convert_teco_model",
    "convert_video_checkpoint",
    "main",
]

_HELP = {
    "convs5-mnist": (
        "NVlabs/ConvSSM Moving-MNIST ConvS5 (convS5_noVQ) → ConvS5VideoModel",
        "Convert a released ConvSSM Moving-MNIST ConvS5 checkpoint (configs/Moving-MNIST/"
        "*_train_len/mnist_convS5_novq.yaml) into a ConvS5VideoModel folder (family convs5). "
        "Presets: mnist-300, mnist-600 (default: the one the file holds).",
    ),
    "convs5-latent": (
        "NVlabs/ConvSSM latent ConvS5 (convS5) → LatentVideoModel",
        "Convert a ConvSSM latent ConvS5 checkpoint (the released DMLab run, configs/"
        "3D_ENV_BENCHMARK/dmlab/dmlab_convs5.yaml) into a LatentVideoModel folder (family "
        "convs5-latent) on a tokenizer folder. Presets: dmlab, minecraft, habitat (default: "
        "the one the file holds); frame size and channels are the tokenizer's.",
    ),
    "teco": (
        "wilson1yan/teco TECO (or ConvSSM's teco_transformer) → TECO",
        "Convert a TECO checkpoint into a TECO model folder (family teco) on a tokenizer "
        "folder. Presets: dmlab, minecraft, habitat, kinetics600 (default: the one the file "
        "holds); frame size and channels are the tokenizer's.",
    ),
    "teco-convs5": (
        "NVlabs/ConvSSM TECO-ConvS5 (teco_convS5) → TECO with a ConvS5 core",
        "Convert a ConvSSM TECO-ConvS5 checkpoint (the released Habitat and Minecraft runs) "
        "into a TECO model folder (family teco-convs5) on a tokenizer folder. Presets: dmlab, "
        "habitat, minecraft (default: the one the file holds); frame size and channels are "
        "the tokenizer's.",
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eqvid.models.convert_checkpoint",
        description=(
            "Convert a released ConvSSM or TECO video-model checkpoint (Flax msgpack) into an "
            "eqvid model folder (model.json + model.eqx) that eqvid's load_model reads. No "
            "Flax or TensorFlow needed."
        ),
    )
    sub = parser.add_subparsers(
        dest="kind", required=True, metavar="{" + ",".join(CHECKPOINT_KINDS) + "}"
    )
    for kind in CHECKPOINT_KINDS:
        short, long = _HELP[kind]
        p = sub.add_parser(kind, help=short, description=long)
        p.add_argument(
            "src",
            type=Path,
            metavar="SRC",
            help="the run's folder (with checkpoints/), its checkpoints/ folder, or a "
            "checkpoint_<step> file",
        )
        p.add_argument(
            "--out",
            type=Path,
            required=True,
            metavar="DIR",
            help="model folder to write (created if needed; existing files are replaced)",
        )
        p.add_argument(
            "--preset",
            default=None,
            metavar="NAME",
            help="the eqvid preset of the architecture (default: the released one whose "
            "parameter tree the file holds)",
        )
        p.add_argument(
            "--step",
            type=int,
            default=None,
            metavar="N",
            help="convert checkpoint_N (default: the latest in the folder)",
        )
        if kind != "convs5-mnist":
            p.add_argument(
                "--tokenizer",
                type=Path,
                required=True,
                metavar="DIR",
                help="the tokenizer folder of the model's VQGAN (python -m "
                "eqvid.models.convert_tokenizer teco ...); recorded as an absolute path",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (errors are printed, status 1)."""
    args = _parser().parse_args(argv)
    try:
        result = convert_video_checkpoint(
            args.kind,
            args.src,
            args.out,
            preset=args.preset,
            tokenizer=getattr(args, "tokenizer", None),
            step=args.step,
        )
    except (OSError, ValueError) as error:
        print(f"convert_checkpoint: error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"  load it with: eqvid.models.load_model({str(result.folder)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
