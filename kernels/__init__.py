"""Fast primitives under eqvid's layers: plain functions on arrays.

Each kernel lives in its own file with its pure-JAX reference, gradient wiring
and dispatcher (`impl="auto"` picks the fastest on the current backend; any
implementation can be forced by name).
"""

from ._kernel_backends import pallas_backends as pallas_backends
from .attention import AttentionMask as AttentionMask
from .attention import attention as attention
from .linear_scan import linear_scan as linear_scan
from .linear_scan import linear_scan_split as linear_scan_split
from .selective_scan import selective_scan as selective_scan

__all__ = [
    "AttentionMask",
    "attention",
    "linear_scan",
    "linear_scan_split",
    "pallas_backends",
    "selective_scan",
]
