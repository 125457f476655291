"""The tokenizer kind of model: videos to discrete codes and back (the VQGANs that
TECO, MeBT and ConvS5 on latents stand on), and its batched, jitted helpers."""

import abc
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._abstract import AbstractModel


class AbstractVideoTokenizer(AbstractModel):
    """A model that turns a video into a grid of discrete codes and back, trained by
    `eqvid.train` like any model (`AbstractModel`: loss with named terms, optional
    state such as an EMA codebook, a discriminator in its own optimiser group).

    - `encode(video)` maps one video `(time, height, width, channels)` in `[-1, 1]` to
      int32 codes `(code_time, code_height, code_width)` in `[0, n_codes)`
      (`code_shape` says which for a given video size; a per-frame tokenizer keeps
      the time axis);
    - `decode(codes)` maps codes back to a video;
    - `embed(codes)` gives the codebook vectors of codes (`embed_dim` long);
    - `reconstruct(video)` is `decode(encode(video))`.

    Training shows input | reconstruction samples, and its report scores the
    reconstructions of held-out videos (PSNR, SSIM) and the codebook's use. Models with
    state encode and decode from `model.with_state(state)`. Batched forms:
    `encode_videos`, `decode_codes`, `reconstruct_videos`.
    """

    @property
    @abc.abstractmethod
    def n_codes(self) -> int:
        """The codebook size: codes lie in `[0, n_codes)`."""

    @abc.abstractmethod
    def code_shape(self, time: int, height: int, width: int) -> tuple[int, int, int]:
        """The codes' shape `(code_time, code_height, code_width)` for a video of
        `time` frames of `height × width` (raises a `ValueError` naming the sizes it
        accepts for others)."""

    @abc.abstractmethod
    def encode(
        self, video: Float[Array, "time height width channels"]
    ) -> Int[Array, "code_time code_height code_width"]:
        """The codes of one video."""

    @abc.abstractmethod
    def decode(
        self, codes: Int[Array, "code_time code_height code_width"]
    ) -> Float[Array, "time height width channels"]:
        """The video of one grid of codes (not clipped to `[-1, 1]`)."""

    @property
    @abc.abstractmethod
    def embed_dim(self) -> int:
        """The length of a code's vector (`embed`)."""

    @abc.abstractmethod
    def embed(self, codes: Int[Array, "*shape"]) -> Float[Array, "*shape {self.embed_dim}"]:
        """The codebook vectors of `codes` (any shape), as the decoder reads them: what
        the latent models (TECO, ConvS5 on latents) take as their input."""

    def reconstruct(
        self, video: Float[Array, "time height width channels"]
    ) -> Float[Array, "time height width channels"]:
        """`decode(encode(video))`."""
        return self.decode(self.encode(video))

    @abc.abstractmethod
    def with_state(self, state: eqx.nn.State | None) -> "AbstractVideoTokenizer":
        """The tokenizer with its state (an EMA codebook) folded in, ready to encode
        and decode (a tokenizer without state returns itself)."""


def load_perceptual(owner: str, weight: float, path: str | None) -> Any:
    """eqvid's LPIPS (`eqvid.metrics.LPIPS`) for a tokenizer's perceptual term, or None:
    when `weight` is 0, or (said once, as a warning naming `owner`) when its weights
    are not on this machine, so that the model trains without the term."""
    if weight == 0:
        return None
    from ..metrics import LPIPS

    try:
        return LPIPS.load(path)
    except FileNotFoundError as error:
        first = str(error).splitlines()[0]
        warnings.warn(
            f"{owner}: no LPIPS weights ({first}); training without the perceptual term "
            "(perceptual_weight is ignored). Convert them once with `python -m "
            "eqvid.metrics.convert_weights lpips` to use it.",
            stacklevel=3,
        )
        return None


@eqx.filter_jit
def _encode(model, videos):
    return jax.vmap(model.encode)(videos)


@eqx.filter_jit
def _decode(model, codes):
    return jax.vmap(model.decode)(codes)


@eqx.filter_jit
def _reconstruct(model, videos):
    return jax.vmap(model.reconstruct)(videos)


def encode_videos(
    model: AbstractVideoTokenizer,
    videos: Float[Array, "batch time height width channels"]
    | Float[np.ndarray, "batch time height width channels"],
) -> Int[Array, "batch code_time code_height code_width"]:
    """`model.encode` over a batch of videos, jitted. For a model with state, pass
    `model.with_state(state)`."""
    return _encode(model, jnp.asarray(videos))


def decode_codes(
    model: AbstractVideoTokenizer,
    codes: Int[Array, "batch code_time code_height code_width"]
    | Int[np.ndarray, "batch code_time code_height code_width"],
) -> Float[Array, "batch time height width channels"]:
    """`model.decode` over a batch of code grids, jitted. Codes of known value outside
    `[0, n_codes)` raise a `ValueError` naming the value and the range."""
    try:
        known = np.asarray(codes)
    except jax.errors.TracerArrayConversionError:  # traced: checked by the caller
        known = None
    if known is not None:
        check_codes(known, model.n_codes, "codes")
    return _decode(model, jnp.asarray(codes, jnp.int32))


def reconstruct_videos(
    model: AbstractVideoTokenizer,
    videos: Float[Array, "batch time height width channels"]
    | Float[np.ndarray, "batch time height width channels"],
) -> Float[Array, "batch time height width channels"]:
    """`model.reconstruct` over a batch of videos, jitted."""
    return _reconstruct(model, jnp.asarray(videos))


def check_codes(codes: np.ndarray, n_codes: int, name: str) -> None:
    """Raise a `ValueError` if the integer array `codes` (known values) holds a code
    outside `[0, n_codes)` or is not integer."""
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer codes, got dtype {codes.dtype}.")
    if codes.size == 0:
        return
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= n_codes:
        bad = low if low < 0 else high
        raise ValueError(
            f"`{name}` holds code {bad}, outside [0, {n_codes}) (the tokenizer's codebook "
            f"size); codes must come from this tokenizer (one with n_codes={n_codes})."
        )
