"""The contract every eqvid model family implements, and what training reads from it:
`AbstractModel` (trainable), and its kinds `AbstractVideoModel` (generates) and, in
`_tokenizer.py`, `AbstractVideoTokenizer` (encodes to codes and decodes)."""

import abc
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Key, PRNGKeyArray, Scalar


class VideoBatch(eqx.Module):
    """A batch of videos as training sees it: `video` `(batch, time, height, width,
    channels)` in `[-1, 1]`, or (for the latent models, from `--dataset codes`) their
    tokenizer's `codes` `(batch, steps, code_height, code_width)`, and optional
    `actions` `(batch, time)` int32 (`-1`: no action), one per frame."""

    video: Float[Array, "batch time height width channels"] | None = None
    actions: Int[Array, "batch time"] | None = None
    codes: Int[Array, "batch steps code_height code_width"] | None = None

    def __check_init__(self):
        if self.video is None and self.codes is None:
            raise ValueError("VideoBatch: give `video` or `codes`; got neither.")
        if self.actions is None:
            return
        if self.video is not None and self.actions.shape != self.video.shape[:2]:
            raise ValueError(
                f"VideoBatch: `actions` must be (batch, time) = {self.video.shape[:2]} to "
                f"match `video`, got {self.actions.shape}."
            )
        if self.codes is not None and self.actions.shape[0] != self.codes.shape[0]:
            raise ValueError(
                f"VideoBatch: `actions` must have the codes' batch size {self.codes.shape[0]}, "
                f"got {self.actions.shape}."
            )

    def frames(self, owner: str) -> Float[Array, "batch time height width channels"]:
        """`video`; a `ValueError` naming `owner` (a model that trains on frames) if the
        batch holds codes instead."""
        if self.video is None:
            raise ValueError(
                f"{owner} trains on frames, but this batch holds a tokenizer's codes: "
                "--dataset codes is for the latent models (TECO, ConvS5 on latents); train "
                f"{owner} on the frames (--dataset teco / moving_mnist / ...)."
            )
        return self.video

    @property
    def size(self) -> int:
        """The number of videos."""
        held = self.video if self.video is not None else self.codes
        assert held is not None
        return held.shape[0]


@dataclasses.dataclass(frozen=True)
class GroupSettings:
    """How the optimiser treats one parameter group (a name given by `eqvid.nn.role`)."""

    lr_scale: float = 1.0
    """Learning rate relative to the run's schedule."""
    b1: float | None = None
    """Adam β1 for this group (None: the run's)."""
    b2: float | None = None
    """Adam β2 for this group (None: the run's)."""
    start_step: int = 1
    """The first training step (1-based) that updates this group; before it the group
    is left as initialised and its optimiser state does not advance (a GAN's
    discriminator that starts late)."""

    def __post_init__(self):
        if self.lr_scale < 0:
            raise ValueError(f"GroupSettings: `lr_scale` must be ≥ 0, got {self.lr_scale}.")
        for name in ("b1", "b2"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"GroupSettings: `{name}` must be in [0, 1), got {value}.")
        if self.start_step < 1:
            raise ValueError(f"GroupSettings: `start_step` must be ≥ 1, got {self.start_step}.")


KeyOrKeys = PRNGKeyArray | Key[Array, " videos"]
"""One key, or one (typed) key per video."""

LossTerms = dict[str, Scalar]
"""Named scalar terms of a loss (reconstruction, commitment, …); training logs each."""


class AbstractModel(eqx.Module):
    """What `eqvid.train` trains: any model with a batch loss. Two kinds build on it,
    and training and evaluation pick what to show from the kind:
    `AbstractVideoModel` (it continues videos: samples are rollouts, the report scores
    them against baselines) and `AbstractVideoTokenizer` (it turns videos into discrete
    codes and back: samples are input | reconstruction, the report scores the
    reconstructions and the codebook's use).

    **Training.** `loss(batch, state, key=..., step=...)` takes a whole `VideoBatch`
    and returns `(loss, terms, state)`: the scalar the parameters descend, the named
    terms to log (and, for parameters whose role names another objective, e.g. a
    discriminator, the scalar they descend), and the updated model state.

    **Model state** (`eqx.nn.State`, optional): buffers the loss updates outside the
    gradient (EMA codebooks, running statistics). A model without any gets and
    returns `None`. Build a model with its state through `eqvid.models.make_model`;
    `with_state(state)` folds it in for sampling and evaluation.

    **Roles** of the parameters (optimiser group, frozen parts, discriminator
    objective, …) are declared on the layers' fields with `eqvid.nn.role`;
    `optimizer_groups()` gives the settings of each group the model uses.
    """

    config: eqx.AbstractVar[Any]

    @abc.abstractmethod
    def loss(
        self,
        batch: VideoBatch,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """The training loss of a batch: `(loss, terms, state)`.

        `key` drives the training randomness (dropout, noise levels, masks); `None`
        means evaluation mode. It may be one key or one key per video (shape
        `(batch,)`, as training passes them, so that a video's randomness does not
        depend on the batch it is in); see `per_video_keys`. `step` is the training
        step (1-based) for schedules inside the loss (a discriminator that starts
        late)."""

    @abc.abstractmethod
    def check_batch(
        self,
        video: Float[np.ndarray, "batch time height width channels"],
        actions: Int[np.ndarray, "batch time"] | None,
    ) -> None:
        """Check a batch of known values (NumPy, as `VideoBatch` holds them on the
        devices) before training on it; raise a
        `ValueError` naming what is wrong (an action id outside the table, an empty
        batch). Training calls it on each process's share of every batch before the
        batch goes to the devices: inside the compiled step, traced values cannot
        raise without a host callback (a device sync every step, and an abort rather
        than an error on a multi-device mesh). A family with nothing to check
        returns `None`."""

    @abc.abstractmethod
    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """Settings of the optimiser groups this model's roles name (groups left out
        get the defaults)."""

    @abc.abstractmethod
    def with_state(self, state: eqx.nn.State | None) -> "AbstractModel":
        """The model with its state folded in, ready to sample or evaluate (a model
        without state returns itself)."""


class AbstractVideoModel(AbstractModel):
    """A video model that `eqvid.train` can train and `eqvid.evaluate` can sample: the
    training contract of `AbstractModel` (loss with named terms, optional state,
    parameter roles), and generation.

    **Generation.** `generate(context, num_frames, key=...)` continues one video
    `(context, height, width, channels)` by `num_frames` frames inside `jit` with no
    Python loop per frame; `key` is required, so a stochastic model draws different
    samples for different keys and the same samples for the same key. Use
    `eqvid.models.rollout` for a batch. Models with state generate from
    `model.with_state(state)`.
    """

    @abc.abstractmethod
    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " total"] | None = None,
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Continue `context` by `num_frames` frames. `actions`, if given, covers
        context and generated frames (`len(context) + num_frames`)."""

    @abc.abstractmethod
    def with_state(self, state: eqx.nn.State | None) -> "AbstractVideoModel":
        """The model with its state folded in, ready to generate (a model without
        state returns itself)."""


class AbstractUnconditionalVideoModel(AbstractVideoModel):
    """A video model that also draws whole clips from nothing (no context frames): MeBT
    and the diffusion models. `eqvid.evaluate` scores it under the unconditional
    protocols (FVD / KVD of generated clips against real ones, e.g. `mebt-16f`).

    **Generation from nothing.** `generate_unconditional(num_frames, key=...)` returns
    one clip `(num_frames, height, width, channels)` in `[-1, 1]` inside `jit`; the
    same key gives the same clip. Use `eqvid.models.sample_unconditional` for a batch.
    A family that is also a latent model lists both kinds as bases.
    """

    @abc.abstractmethod
    def generate_unconditional(
        self, num_frames: int, *, key: PRNGKeyArray
    ) -> Float[Array, "{num_frames} height width channels"]:
        """One clip of `num_frames` frames drawn from nothing, in `[-1, 1]`."""


class AbstractInfillingVideoModel(AbstractVideoModel):
    """A video model that fills in frames between given ones: MCVD's interpolation and
    past prediction. `infill_frames()` says how many frames it takes before and after
    and how many it draws between; `infill(before, after, key=...)` draws them, either
    side `None` when not given (its frames masked). `python -m eqvid.evaluate.sample
    --task interpolate|past` runs it on held-out videos."""

    @abc.abstractmethod
    def infill_frames(self) -> tuple[int, int, int]:
        """`(before, between, after)`: the frames given before, drawn, given after."""

    @abc.abstractmethod
    def infill(
        self,
        before: Float[Array, "before height width channels"] | None,
        after: Float[Array, "after height width channels"] | None,
        *,
        key: PRNGKeyArray,
    ) -> Float[Array, "between height width channels"]:
        """The frames between `before` and `after` (`None`: not given), in `[-1, 1]`."""


class AbstractObjectCentricVideoModel(AbstractVideoModel):
    """A video model that splits each frame into slots (objects): SlotSSM. Training's
    sample pictures then also show, per slot, its mask over the frames
    (`samples/step_XXXXXX_slots.png`), so a person sees whether slots separate
    objects."""

    @abc.abstractmethod
    def object_masks(
        self, frames: Float[Array, "time height width channels"]
    ) -> Float[Array, "time slots height width"]:
        """Each slot's share of each pixel of `frames` (in `[0, 1]`, summing to one
        over the slots)."""


def per_video_keys(key: KeyOrKeys | None, batch_size: int) -> Key[Array, " {batch_size}"] | None:
    """One key per video: `key` itself if it already has shape `(batch_size,)`, else
    `jax.random.split(key, batch_size)`; `None` stays `None`."""
    if key is None:
        return None
    if key.shape == (batch_size,):
        return key
    if key.shape != ():
        raise ValueError(
            f"`key` must be one key or one per video, shape () or ({batch_size},); got {key.shape}."
        )
    return jax.random.split(key, batch_size)


def mean_over_videos(
    per_video_loss, batch: VideoBatch, key: KeyOrKeys | None
) -> tuple[Scalar, LossTerms]:
    """`(loss, terms)` averaged over the batch, from `per_video_loss(video, actions,
    key) -> (loss, terms)` applied to each video with its own key (`vmap`)."""
    keys = per_video_keys(key, batch.size)
    video = batch.frames("mean_over_videos")
    loss, terms = jax.vmap(per_video_loss)(video, batch.actions, keys)
    return jnp.mean(loss), {name: jnp.mean(value) for name, value in terms.items()}
