"""`python -m eqvid.evaluate` (or `eqvid-evaluate`): the evaluation command line (see
`--help`)."""

import argparse
import pathlib
import sys

from .._cli import (
    ConfigFileError,
    add_config_arguments,
    config_from_args,
    config_from_mapping,
    read_config_file,
)
from . import __doc__ as package_doc
from ._evaluate import (
    EvalConfig,
    evaluate,
    evaluate_tokenizer,
    is_tokenizer_run,
    is_unconditional,
)
from ._protocols import PROTOCOLS

PROG = "python -m eqvid.evaluate"


def _prog() -> str:
    """`eqvid-evaluate` when run as that console script."""
    return "eqvid-evaluate" if pathlib.Path(sys.argv[0]).name == "eqvid-evaluate" else PROG


def build_parser(defaults: EvalConfig | None = None) -> argparse.ArgumentParser:
    """The evaluation parser; its options show `defaults` (a `--config` file's values)."""
    table = "\n".join(f"  {name:<20} {p.description}" for name, p in PROTOCOLS.items())
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description=(package_doc or "").partition("\n\n")[0],
        epilog=(package_doc or "").partition("\n\n")[2]
        + "    python -m eqvid.evaluate --config eval.yaml --seed 1   # options from a file\n"
        "\nprotocols:\n" + table + "\n\n"
        "LPIPS and FVD need the converted pretrained weights: see\n"
        "`python -m eqvid.metrics.convert_weights --help`; `--metrics psnr ssim` runs without "
        "them.\n`eqvid-evaluate` is the same command. A --config file (YAML, or JSON for a "
        ".json name)\nmaps option names (their field names: run_dir, protocol, …) to values.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML or JSON file of options (field names: run_dir, protocol, …); the "
        "options below override it, and show its values as their defaults",
    )
    add_config_arguments(parser, "evaluation", EvalConfig, defaults)
    return parser


def config_from_argv(argv: list[str] | None = None) -> EvalConfig:
    """The `EvalConfig` a command line describes: its `--config` file, then its flags."""
    pre = argparse.ArgumentParser(prog=_prog(), add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    base = EvalConfig()
    if known.config is not None:
        try:
            base = config_from_mapping(base, read_config_file(known.config), known.config)
        except ConfigFileError as error:
            pre.exit(2, f"{pre.prog}: error: {error}\n")
    return config_from_args(build_parser(base).parse_args(argv), "evaluation", base)


def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(argv)
    if config.run_dir and is_tokenizer_run(config.run_dir):
        report = evaluate_tokenizer(config)
    elif is_unconditional(config):
        from ._unconditional import evaluate_unconditional

        report = evaluate_unconditional(config)
    else:
        report = evaluate(config)
    print(report.markdown())
    print(report.wrote())
    return 0


if __name__ == "__main__":
    sys.exit(main())
