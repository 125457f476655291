"""The interface every eqvid video predictor implements."""

import abc

import equinox as eqx
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar


class AbstractVideoPredictor(eqx.Module):
    """A model of `p(frame_{t+1} | frames_{≤t}, actions)`.

    Methods take **one** video `(time, height, width, channels)` in `[-1, 1]`
    (Equinox's convention); use `jax.vmap` / `eqx.filter_vmap` for a batch.
    Actions are `(time,)` int32 with `-1` for "no action".
    """

    @abc.abstractmethod
    def __call__(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
    ) -> Float[Array, "time-1 height width channels"]:
        """Teacher-forced predictions of frames `1 … T-1` from frames `0 … T-2`."""

    @abc.abstractmethod
    def loss(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Scalar:
        """The training loss of one video (teacher forcing). `key` carries the
        training randomness (dropout, noise levels, masks); deterministic models
        ignore it, and `None` means evaluation mode."""

    @abc.abstractmethod
    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " total"] | None = None,
    ) -> Float[Array, "generated height width channels"]:
        """Predict `num_frames` frames that follow `context`, autoregressively.

        Runs inside `jit` with no Python loop per frame. `actions`, if given,
        covers context and generated frames (`len(context) + num_frames`).
        """
