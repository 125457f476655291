"""`python -m eqvid.train`: train any registered model on any dataset (see `--help`;
`--model NAME --dataset NAME --help` lists every option of that pair)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
