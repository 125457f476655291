"""`rollout`: `generate` over a batch of videos, jitted; `sample_unconditional`:
`generate_unconditional` for a batch of clips drawn from nothing."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._abstract import AbstractUnconditionalVideoModel, AbstractVideoModel


@eqx.filter_jit
def _rollout(model, context, horizon: int, key, actions):
    keys = jax.random.split(key, context.shape[0])
    if actions is None:
        return jax.vmap(lambda c, k: model.generate(c, horizon, key=k))(context, keys)
    return jax.vmap(lambda c, k, a: model.generate(c, horizon, key=k, actions=a))(
        context, keys, actions
    )


def rollout(
    model: AbstractVideoModel,
    context: Float[Array, "batch context height width channels"]
    | Float[np.ndarray, "batch context height width channels"],
    horizon: int,
    *,
    key: PRNGKeyArray,
    actions: Int[Array, "batch total"] | Int[np.ndarray, "batch total"] | None = None,
) -> Float[Array, "batch {horizon} height width channels"]:
    """`model.generate` over a batch, jitted (the horizon is static): video `i` is
    generated with `jax.random.split(key, batch)[i]`. `actions`, if given, cover
    context and generated frames (`context + horizon` per video). For a model with
    state, pass `model.with_state(state)`."""
    actions = None if actions is None else jnp.asarray(actions, jnp.int32)
    return _rollout(model, jnp.asarray(context), horizon, key, actions)


@eqx.filter_jit
def _sample_unconditional(model, num_videos: int, num_frames: int, key):
    keys = jax.random.split(key, num_videos)
    return jax.vmap(lambda k: model.generate_unconditional(num_frames, key=k))(keys)


def sample_unconditional(
    model: AbstractVideoModel,  # checked below, with a clearer message than the annotation's
    num_videos: int,
    num_frames: int,
    *,
    key: PRNGKeyArray,
) -> Float[Array, "{num_videos} {num_frames} height width channels"]:
    """`num_videos` clips of `num_frames` frames drawn from nothing, jitted (the counts
    are static): clip `i` is `model.generate_unconditional(num_frames,
    key=jax.random.split(key, num_videos)[i])`. For a model with state, pass
    `model.with_state(state)`.

    **Raises:** `TypeError` if `model` does not generate from nothing (it is not an
    `AbstractUnconditionalVideoModel`); `ValueError` for counts below 1."""
    if not isinstance(model, AbstractUnconditionalVideoModel):
        raise TypeError(
            f"sample_unconditional: `model` must generate from nothing (an "
            f"AbstractUnconditionalVideoModel, e.g. MeBT); got a {type(model).__name__}, "
            "which continues given frames: use `rollout`."
        )
    for name, value in (("num_videos", num_videos), ("num_frames", num_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"sample_unconditional: `{name}` must be an int ≥ 1; got {value!r}.")
    return _sample_unconditional(model, num_videos, num_frames, key)
