"""The input check layers share: an input's trailing axes must fit the layer's width."""

from typing import Any


def check_channels(owner: str, x: Any, channels: int, *, image: bool = False) -> None:
    """Raise a `ValueError` naming `owner` unless `x` has `channels` on its last axis
    (and, with `image`, at least `(height, width, channels)` axes)."""
    axes = "(*batch, height, width, {})" if image else "(*batch, {})"
    if x.ndim < (3 if image else 1) or x.shape[-1] != channels:
        raise ValueError(
            f"{owner}: `x` must have shape {axes.format(channels)} (the layer's "
            f"{channels} channels), got {tuple(x.shape)}."
        )
