"""Convert public VQGAN checkpoints into eqvid tokenizer folders, once.

    python -m eqvid.models.convert_tokenizer taming vqgan_imagenet_f16_1024/ckpts/last.ckpt --out tokenizers/taming-f16-1024
    python -m eqvid.models.convert_tokenizer teco dmlab_vqgan --out tokenizers/teco-dmlab
    python -m eqvid.models.convert_tokenizer tats vqgan_ucf_128_488.ckpt --out tokenizers/tats-ucf

The folder then loads with `eqvid.models.load_tokenizer(folder)` (a `VQGAN2D`; a
`VQGAN3D` for TATS). Neither
PyTorch nor Flax is needed: the Lightning `.ckpt` and the Flax msgpack file are read with
restricted unpicklers and `msgpack`, and nothing in them is executed. Every tensor is
checked by name and shape; the first missing or mis-shaped one is named.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eqvid.models._tokenizer_converters import (
    ConversionError,
    ConvertedTokenizer,
    convert_taming,
    convert_tats,
    convert_teco,
)

__all__ = [
    "ConversionError",
    "ConvertedTokenizer",
    "convert_taming",
    "convert_tats",
    "convert_teco",
    "main",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eqvid.models.convert_tokenizer",
        description=(
            "Convert a public VQGAN checkpoint into an eqvid tokenizer folder (tokenizer.json + "
            "tokenizer.eqx) that eqvid.models.load_tokenizer reads. No PyTorch or Flax needed."
        ),
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{taming,teco,tats}")
    taming = sub.add_parser(
        "taming",
        help="taming-transformers VQModel (PyTorch Lightning .ckpt)",
        description=(
            "Convert a taming-transformers VQModel checkpoint (a Lightning .ckpt such as "
            "vqgan_imagenet_f16_1024/ckpts/last.ckpt, or a plain state dict). The architecture "
            "(ch, ch_mult, num_res_blocks, attention levels, z_channels, embed_dim, n_embed, "
            "channels) is read off the tensor shapes; the frame size is not in the file "
            "(--resolution). The discriminator is converted when present; LPIPS weights, "
            "optimiser states and callbacks are ignored."
        ),
    )
    taming.add_argument("src", type=Path, metavar="CKPT", help="the .ckpt (or state dict) file")
    taming.add_argument(
        "--resolution",
        type=int,
        default=256,
        metavar="N",
        help="frame size (height = width) the model was trained for; decides which levels "
        "are attn_resolutions (default: 256, the released ImageNet VQGANs)",
    )
    teco = sub.add_parser(
        "teco",
        help="TECO's JAX/Flax VQGAN (a folder with args and checkpoints/)",
        description=(
            "Convert TECO's released VQGAN folder (e.g. dmlab_vqgan/: a pickled `args` with the "
            "hyperparameters and checkpoints/checkpoint_<step>, a Flax msgpack file). RGB "
            "frames of args.resolution; the codebook comes from model_state."
        ),
    )
    teco.add_argument("src", type=Path, metavar="FOLDER", help="the VQGAN folder")
    tats = sub.add_parser(
        "tats",
        help="TATS / MeBT 3D VQGAN (PyTorch Lightning .ckpt)",
        description=(
            "Convert a TATS 3D VQGAN checkpoint (a Lightning .ckpt such as "
            "vqgan_ucf_128_488_epoch=1-step=29999.ckpt, also MeBT's). The hyperparameters come "
            "from its hyper_parameters['args'] Namespace; the codebook and the BatchNorm running "
            "statistics are converted, the discriminators when they fit; the LPIPS weights and "
            "optimiser states are ignored."
        ),
    )
    tats.add_argument("src", type=Path, metavar="CKPT", help="the .ckpt file")
    tats.add_argument(
        "--resolution",
        type=int,
        default=None,
        metavar="N",
        help="frame size (height = width); default: the checkpoint's args.resolution",
    )
    for sub_parser in (taming, teco, tats):
        sub_parser.add_argument(
            "--out",
            type=Path,
            required=True,
            metavar="DIR",
            help="tokenizer folder to write (created if needed; existing files are replaced)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (errors are printed, status 1)."""
    args = _parser().parse_args(argv)
    try:
        if args.kind == "taming":
            result = convert_taming(args.src, args.out, resolution=args.resolution)
        elif args.kind == "tats":
            result = convert_tats(args.src, args.out, resolution=args.resolution)
        else:
            result = convert_teco(args.src, args.out)
    except (OSError, ValueError) as error:
        print(f"convert_tokenizer: error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"  load it with: eqvid.models.load_tokenizer({str(result.folder)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
