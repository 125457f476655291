"""Convert the public PyTorch weights of eqvid's metric networks into eqvid files, once.

    python -m eqvid.metrics.convert_weights i3d i3d_pretrained_400.pt --out ~/.cache/eqvid/i3d_kinetics400.npz
    python -m eqvid.metrics.convert_weights lpips alexnet-owt-7be5be79.pth alex.pth --out ~/.cache/eqvid/lpips_alexnet.npz

`--out` defaults to the file `I3D.load()` / `LPIPS.load()` look for
(`$EQVID_WEIGHTS`, else `$XDG_CACHE_HOME/eqvid`, else `~/.cache/eqvid`). PyTorch is not
needed: the `.pt` / `.pth` files are read by `eqvid.metrics._torch_checkpoint`, which
unpickles nothing but tensors and containers. Every expected tensor is checked by name
and shape; missing, mis-shaped and unexpected tensors are listed.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eqvid.metrics._i3d import i3d_weight_shapes
from eqvid.metrics._lpips import lpips_weight_shapes
from eqvid.metrics._torch_checkpoint import read_torch_state_dict
from eqvid.metrics._weights import I3D_WEIGHTS, LPIPS_WEIGHTS, check_tensors

__all__ = ["convert_i3d", "convert_lpips", "main"]


def convert_i3d(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Convert `i3d_pretrained_400.pt` (pytorch-i3d `InceptionI3d(400)` state dict).

    **Arguments:**

    - `checkpoint`: the PyTorch file.
    - `out`: the `.npz` to write; None writes the default file.

    **Returns:**

    The path written.

    **Raises:**

    - `ValueError` listing missing / mis-shaped / unexpected tensors (`bn.num_batches_tracked`
        counters are allowed and dropped), and the errors of `read_torch_state_dict`.
    """
    tensors = read_torch_state_dict(checkpoint)
    expected = i3d_weight_shapes()
    check_tensors(
        tensors,
        expected,
        source=str(checkpoint),
        ignore=lambda k: k.endswith(".bn.num_batches_tracked"),
    )
    return I3D_WEIGHTS.save(
        out if out is not None else I3D_WEIGHTS.default_path(), {k: tensors[k] for k in expected}
    )


def _lin_weight(tensors: dict[str, np.ndarray], k: int) -> np.ndarray | None:
    # lpips saves NetLinLayer as Sequential(Dropout, Conv2d): `lin{k}.model.1.weight`;
    # a copy saved without the dropout (use_dropout=False) names it `lin{k}.model.0.weight`.
    for name in (f"lin{k}.model.1.weight", f"lin{k}.model.0.weight"):
        if name in tensors:
            return tensors[name]
    return None


def convert_lpips(checkpoints: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Convert torchvision's AlexNet (`alexnet-owt-7be5be79.pth`) and LPIPS v0.1's linear
    layers (`alex.pth`), given in any order.

    The AlexNet classifier (`classifier.*`) is not needed and dropped.

    **Arguments:**

    - `checkpoints`: the two PyTorch files.
    - `out`: the `.npz` to write; None writes the default file.

    **Returns:**

    The path written.

    **Raises:**

    - `ValueError` if a tensor appears in both files, or listing missing / mis-shaped /
        unexpected tensors; and the errors of `read_torch_state_dict`.
    """
    merged: dict[str, np.ndarray] = {}
    for path in checkpoints:
        for name, value in read_torch_state_dict(path).items():
            if name in merged:
                raise ValueError(
                    f"`{name}` is in more than one of the inputs {list(map(str, checkpoints))}."
                )
            merged[name] = value
    for k in range(5):
        lin = _lin_weight(merged, k)
        merged.pop(f"lin{k}.model.0.weight", None)
        if lin is not None:
            merged[f"lin{k}.model.1.weight"] = lin
    expected = lpips_weight_shapes()
    check_tensors(
        merged,
        expected,
        source=" + ".join(map(str, checkpoints)),
        ignore=lambda k: k.startswith("classifier."),
    )
    return LPIPS_WEIGHTS.save(
        out if out is not None else LPIPS_WEIGHTS.default_path(), {k: merged[k] for k in expected}
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eqvid.metrics.convert_weights",
        description=(
            "Convert public PyTorch weights into eqvid .npz files (once; no PyTorch needed). "
            "I3D.load() / LPIPS.load() then find them in the default folder: $EQVID_WEIGHTS, "
            "else $XDG_CACHE_HOME/eqvid, else ~/.cache/eqvid."
        ),
    )
    sub = parser.add_subparsers(dest="network", required=True, metavar="{i3d,lpips}")
    i3d = sub.add_parser(
        "i3d",
        help="Kinetics-400 I3D for FVD, from i3d_pretrained_400.pt",
        description=(
            "Convert i3d_pretrained_400.pt ("
            + I3D_WEIGHTS.sources[0][1]
            + ") into "
            + I3D_WEIGHTS.file_name
            + "."
        ),
    )
    i3d.add_argument("checkpoint", type=Path, help="path of i3d_pretrained_400.pt")
    i3d.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output .npz (default: <default folder>/{I3D_WEIGHTS.file_name})",
    )
    lpips = sub.add_parser(
        "lpips",
        help="LPIPS v0.1 (AlexNet), from alexnet-owt-7be5be79.pth and alex.pth",
        description=(
            "Convert alexnet-owt-7be5be79.pth ("
            + LPIPS_WEIGHTS.sources[0][1]
            + ") and alex.pth ("
            + LPIPS_WEIGHTS.sources[1][1]
            + "), in any order, into "
            + LPIPS_WEIGHTS.file_name
            + "."
        ),
    )
    lpips.add_argument(
        "checkpoints",
        type=Path,
        nargs=2,
        metavar="FILE",
        help="alexnet-owt-7be5be79.pth and alex.pth (any order)",
    )
    lpips.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output .npz (default: <default folder>/{LPIPS_WEIGHTS.file_name})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (errors are printed, status 1)."""
    args = _parser().parse_args(argv)
    try:
        if args.network == "i3d":
            written = convert_i3d(args.checkpoint, args.out)
        else:
            written = convert_lpips(args.checkpoints, args.out)
    except (OSError, ValueError) as error:
        print(f"convert_weights: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
