"""`rollout`: `generate` over a batch of videos, jitted."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._abstract import AbstractVideoModel


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
