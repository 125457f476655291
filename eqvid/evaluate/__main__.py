"""`python -m eqvid.evaluate`: the evaluation command line (see `--help`)."""

import argparse
import sys

from .._cli import add_config_arguments, config_from_args
from . import __doc__ as package_doc
from ._evaluate import EvalConfig, evaluate
from ._protocols import PROTOCOLS


def build_parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {name:<20} {p.description}" for name, p in PROTOCOLS.items())
    parser = argparse.ArgumentParser(
        prog="python -m eqvid.evaluate",
        description=(package_doc or "").partition("\n\n")[0],
        epilog=(package_doc or "").partition("\n\n")[2] + "\nprotocols:\n" + table + "\n\n"
        "LPIPS and FVD need the converted pretrained weights: see "
        "`python -m eqvid.metrics.convert_weights --help`;\n`--metrics psnr ssim` runs without them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "evaluation", EvalConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(argv), "evaluation", EvalConfig())
    report = evaluate(config)
    print(report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
