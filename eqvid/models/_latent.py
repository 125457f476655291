"""The latent kind of video model: it models a tokenizer's discrete codes (TECO, ConvS5
and S5 on VQ latents) and keeps the tokenizer, frozen, to go from frames to codes and
back. Training takes codes encoded once (`--dataset codes`) or frames, which it encodes
on the fly; generation takes and returns frames, like every `AbstractVideoModel`."""

import abc
import math
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Key, PRNGKeyArray, Scalar

from ._abstract import AbstractVideoModel, KeyOrKeys, LossTerms, VideoBatch
from ._tokenizer import AbstractVideoTokenizer, check_codes


class AbstractLatentVideoModel(AbstractVideoModel):
    """A video model over the codes of a frozen tokenizer (`tokenizer`, declared
    `role(frozen=True)` by the family: never trained, saved once per run).

    A family implements the code-level parts:

    - `codes_loss(codes, actions, state, key=..., step=...)`: the training loss of a
      batch of codes `(batch, steps, code_height, code_width)` with the actions of
      their frames `(batch, frames)` or None;
    - `generate_codes(context, num_steps, key=..., actions=...)`: continue one video's
      codes `(context_steps, code_height, code_width)` by `num_steps` steps, inside
      `jit` with no Python loop per step;
    - `check_codes_batch(codes, actions)`: the known-value checks of a codes batch
      (`check_latent_batch` does the usual ones);

    and this class gives the frame-level contract: `loss` takes a `VideoBatch` of codes
    (from `--dataset codes`) or of frames (encoded by the tokenizer, no gradient), and
    `generate` encodes the context frames, continues the codes and decodes them.
    """

    tokenizer: eqx.AbstractVar[AbstractVideoTokenizer]

    @abc.abstractmethod
    def codes_loss(
        self,
        codes: Int[Array, "batch steps code_height code_width"],
        actions: Int[Array, "batch frames"] | None,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """The training loss of a batch of codes: `(loss, terms, state)` (see
        `AbstractModel.loss`)."""

    @abc.abstractmethod
    def generate_codes(
        self,
        context: Int[Array, "context_steps code_height code_width"],
        num_steps: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " frames"] | None = None,
    ) -> Int[Array, "{num_steps} code_height code_width"]:
        """Continue `context` by `num_steps` steps of codes. `actions`, if given, covers
        the frames of context and generated steps."""

    @abc.abstractmethod
    def check_codes_batch(
        self,
        codes: Int[np.ndarray, "batch steps code_height code_width"],
        actions: Int[np.ndarray, "batch frames"] | None,
    ) -> None:
        """Check a batch of codes of known value before training on it (as
        `AbstractModel.check_batch` does for frames); raise a `ValueError` naming what
        is wrong."""

    def codes_of(self, video: Float[Array, "batch time height width channels"]) -> Array:
        """The tokenizer's codes of a batch of frames, outside the gradient."""
        tokenizer = jax.lax.stop_gradient(self.tokenizer)
        return jax.lax.stop_gradient(jax.vmap(tokenizer.encode)(video))

    def loss(
        self,
        batch: VideoBatch,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """`codes_loss` of the batch's codes, or of its frames' codes."""
        if batch.codes is not None:
            codes = batch.codes
        else:
            assert batch.video is not None
            codes = self.codes_of(batch.video)
        return self.codes_loss(codes, batch.actions, state, key=key, step=step)

    def frames_per_step(self, height: int, width: int) -> int:
        """Frames one step of codes covers (1 for a per-frame tokenizer)."""
        shortest = _probe_length(self.tokenizer, height, width)
        return shortest // self.tokenizer.code_shape(shortest, height, width)[0]

    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " total"] | None = None,
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Encode `context`, continue its codes by enough steps for `num_frames`
        frames (`generate_codes`), decode them (clipped to `[-1, 1]`)."""
        t, h, w, _ = context.shape
        k = self.frames_per_step(h, w)
        if t % k:
            raise ValueError(
                f"{type(self).__name__}.generate: the context must be a whole number of the "
                f"tokenizer's steps ({k} frames each); got {t} frames."
            )
        steps = math.ceil(num_frames / k)
        codes = self.tokenizer.encode(context)
        new = self.generate_codes(codes, steps, key=key, actions=actions)
        return jnp.clip(self.tokenizer.decode(new)[:num_frames], -1.0, 1.0)


def _probe_length(tokenizer: AbstractVideoTokenizer, height: int, width: int) -> int:
    """The shortest video length the tokenizer takes (1, or its time downsampling)."""
    for length in (1, 2, 4, 8, 16):
        try:
            tokenizer.code_shape(length, height, width)
        except ValueError:
            continue
        return length
    raise ValueError(
        f"{type(tokenizer).__name__} takes no video of up to 16 frames of {height}×{width}."
    )


def drop_loss_frames(
    key: PRNGKeyArray | None, length: int, n_cond: int, rate: float
) -> Int[Array, " kept"]:
    """The frames DropLoss keeps for the losses of a `length`-frame window: with a
    `key` and `rate > 0`, `max(1, int((1 - rate) · (length - n_cond)))` frames drawn with
    replacement as TECO draws them (`randint(0, length)`, an index past the last target
    clamped to it, offset by `n_cond`); otherwise every target frame `n_cond …
    length - 1`."""
    count = length - n_cond
    if key is None or rate <= 0:
        return n_cond + jnp.arange(count, dtype=jnp.int32)
    kept = max(1, int((1 - rate) * count))
    return n_cond + jnp.clip(jax.random.randint(key, (kept,), 0, length), 0, count - 1)


def action_drop_flags(keys: Key[Array, " batch"], rate: float) -> Bool[Array, " batch"]:
    """Which sequences lose their actions under action dropout: one Bernoulli(`rate`)
    draw per sequence from its own key."""
    return jax.vmap(lambda k: jax.random.bernoulli(k, rate))(keys)


def drop_actions(
    keys: Key[Array, " batch"], actions: Int[Array, "batch time"], rate: float
) -> Int[Array, "batch time"]:
    """TECO's action dropout: each sequence's actions all become -1 (no action) with
    probability `rate` (`action_drop_flags`), so one model learns action-conditioned
    and unconditional prediction."""
    return jnp.where(action_drop_flags(keys, rate)[:, None], -1, actions)


def latent_actions(
    owner: str, actions: Array | None, shape: tuple[int, ...], use_actions: bool
) -> Array:
    """The actions a latent model conditions on: `actions` (checked to have `shape`),
    or, when none are given, -1 ("no action") everywhere; every action 0 for a model
    built without actions (`use_actions=False`, as TECO's Kinetics)."""
    if not use_actions:
        return jnp.zeros(shape, jnp.int32)
    if actions is None:
        return jnp.full(shape, -1, jnp.int32)
    if tuple(actions.shape) != tuple(shape):
        raise ValueError(
            f"{owner}: `actions` must cover context and generated frames, shape "
            f"{tuple(shape)}; got {tuple(actions.shape)}."
        )
    return actions


def check_latent_frames(
    owner: str,
    video: np.ndarray,
    actions: np.ndarray | None,
    *,
    frame_size: int,
    channels: int,
    num_actions: int | None,
) -> None:
    """The checks of a batch of frames for a latent model: frames of the tokenizer's
    size, actions (if any) in `[-1, num_actions)` (`None`: any)."""
    s = frame_size
    if video.ndim != 5 or video.shape[2:] != (s, s, channels) or video.shape[0] < 1:
        raise ValueError(
            f"{owner}: `video` must be (batch ≥ 1, time, {s}, {s}, {channels}) (the "
            f"tokenizer's frames); got {video.shape}."
        )
    _check_actions(owner, actions, num_actions)


def _check_actions(owner: str, actions: np.ndarray | None, num_actions: int | None) -> None:
    if actions is None or num_actions is None or actions.size == 0:
        return
    low, high = int(actions.min()), int(actions.max())
    if low < -1 or high >= num_actions:
        bad = low if low < -1 else high
        raise ValueError(
            f"{owner}: action {bad} is outside [-1, {num_actions}) (the model's action table: "
            f"num_actions={num_actions}, -1 = no action); set num_actions to the data's."
        )


def smoothed_code_loss(
    logits: Float[Array, "*shape n_codes"], codes: Int[Array, "*shape"], smoothing: float
) -> Float[Array, ""]:
    """The cross-entropy of `logits` against the tokenizer's `codes` with label
    smoothing (`(1 - s) · onehot + s / n_codes`), summed over every position (the
    latent models' reconstruction term, as TECO and ConvSSM: summed over the code
    grid, then averaged over frames by the caller)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    v = logp.shape[-1]
    labels = jax.nn.one_hot(codes, v, dtype=logp.dtype) * (1 - smoothing) + smoothing / v
    return -jnp.sum(labels * logp)


def check_latent_batch(
    owner: str,
    codes: np.ndarray,
    actions: np.ndarray | None,
    *,
    n_codes: int,
    grid: tuple[int, int],
    num_actions: int | None,
) -> None:
    """The usual checks of a codes batch: integer codes in `[0, n_codes)` on the
    `grid` the model was built for, and actions (if any) in `[-1, num_actions)`, or
    none when the model takes none (`num_actions=None` allows any)."""
    if codes.ndim != 4 or tuple(codes.shape[2:]) != tuple(grid):
        raise ValueError(
            f"{owner}: codes must be (batch, steps, {grid[0]}, {grid[1]}) (the latent grid the "
            f"model was built for); got {codes.shape}. Were they encoded by another tokenizer?"
        )
    check_codes(codes, n_codes, "codes")
    _check_actions(owner, actions, num_actions)


def load_frozen_tokenizer(owner: str, path: str) -> AbstractVideoTokenizer:
    """The tokenizer a latent model is built on, from a tokenizer folder or training run
    (`path`), its state folded in."""
    from ._tokenizer_files import load_tokenizer

    if not path:
        raise ValueError(
            f"{owner}: no tokenizer: set `tokenizer` (--tokenizer) to a tokenizer folder or "
            "training run, or train on --dataset codes, which records the one it was encoded "
            "with."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{owner}: the tokenizer {path!r} is not there (a tokenizer folder or a training "
            "run of one)."
        )
    return load_tokenizer(path)


def tokenizer_argument(owner: str, config: Any, tokenizer: AbstractVideoTokenizer | None):
    """The tokenizer to build a latent model on: `tokenizer` if given (tests, parameter
    counts), else the one `config.tokenizer` names."""
    if tokenizer is not None:
        if not isinstance(tokenizer, AbstractVideoTokenizer):
            raise TypeError(
                f"{owner}: `tokenizer` must be an AbstractVideoTokenizer, got "
                f"{type(tokenizer).__name__}."
            )
        return tokenizer
    return load_frozen_tokenizer(owner, config.tokenizer)


__all__ = [
    "AbstractLatentVideoModel",
    "check_latent_batch",
    "check_latent_frames",
    "drop_actions",
    "drop_loss_frames",
    "load_frozen_tokenizer",
    "smoothed_code_loss",
    "tokenizer_argument",
]
