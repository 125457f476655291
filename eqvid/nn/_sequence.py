"""The interface of a sequence layer: a recurrence over time that runs in parallel over
a whole video or one step at a time (ConvS5, ConvLSTM, and later selective SSMs)."""

import abc
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


class AbstractSequenceLayer(eqx.Module):
    """A layer over time with a carried state.

    - `layer.init_state(height, width)` gives the state before the first frame;
    - `layer(u, state, key=...)` runs a whole video `(time, height, width, channels)`
      and returns
      `(outputs, last_state)` (in parallel where the layer can);
    - `layer.step(state, frame)` advances one frame and returns `(new_state, output)`,
      the shape of a `lax.scan` body.

    Running a video through `__call__` and stepping through it frame by frame give
    the same outputs and last state (to floating-point rounding), so a model can
    encode its context in parallel and then generate in O(1) per frame.
    """

    @abc.abstractmethod
    def init_state(self, height: int, width: int) -> PyTree[Array]:
        """The zero state for a `height × width` grid."""

    @abc.abstractmethod
    def __call__(
        self,
        u: Float[Array, "time height width channels"],
        state: Any = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "time height width channels"], Any]:
        """A whole video: `(outputs, last_state)`; `state` is the state before the
        first frame (zero if `None`); `key` drives training randomness (dropout), and
        `None` means deterministic."""

    @abc.abstractmethod
    def step(
        self, state: Any, frame: Float[Array, "height width channels"]
    ) -> tuple[Any, Float[Array, "height width channels"]]:
        """One frame: `(state, frame) → (new_state, output)` (deterministic)."""
