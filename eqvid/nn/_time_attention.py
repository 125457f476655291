"""Causal self-attention over time as a sequence layer: the time mixer of the
SlotTransformer baseline (SlotSSM's blocks with attention over each slot's past frames
instead of a selective SSM), with a key/value cache for streaming.

It has the selective SSMs' interface (`init_state`, `layer(u, state)` →
`(outputs, last_state)`, `layer.step(state, u_t)` → `(state, output)`), so a block
swaps one for the other. Unlike an SSM its state grows with the sequence: it holds
the keys and values of every frame so far, up to `max_len`, and a step attends over
all of them (cost per frame linear in the frames seen).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.core import Tracer
from jaxtyping import Array, Float, Int, PRNGKeyArray

from eqvid.kernels.attention import AttentionImpl, AttentionMask

from ._attention import MultiheadAttention
from ._embeddings import sinusoidal_positions
from ._selective_ssm import check_sequence


class TimeAttentionState(eqx.Module):
    """A `CausalTimeAttention`'s key/value cache: `keys`, `values` `(max_len, heads,
    head_dim)` (entries past `length` unused) and `length`, the frames seen (an int32
    scalar)."""

    keys: Float[Array, "max_len heads head_dim"]
    values: Float[Array, "max_len heads head_dim"]
    length: Int[Array, ""]


class CausalTimeAttention(eqx.Module):
    """Multi-head self-attention over time with a causal mask: step `t` attends to
    steps `0 … t`. Fixed sinusoidal positions of the absolute step (`sinusoidal_positions`)
    are added to the input first; `attention` is an `eqvid.nn.MultiheadAttention`
    (with biases) run through `eqvid.kernels.attention` (`impl`).

    `max_len` bounds the steps it can attend over: the parallel pass takes at most
    `max_len` steps, and a streamed sequence at most `max_len` in all (the cache's
    size). A sequence too long for the cache is refused when its length is known
    (`ValueError`); when it is traced (a `step` under `jit`) the output becomes NaN,
    as `eqvid.kernels.attention` does for a query offset past the keys.
    """

    attention: MultiheadAttention
    d_model: int = eqx.field(static=True)
    max_len: int = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        max_len: int = 1024,
        impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        if d_model < 2 or d_model % 2:
            raise ValueError(f"CausalTimeAttention: `d_model` must be even and ≥ 2, got {d_model}.")
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(
                f"CausalTimeAttention: `num_heads` must divide `d_model` = {d_model}; got "
                f"{num_heads}."
            )
        if max_len < 1:
            raise ValueError(f"CausalTimeAttention: `max_len` must be ≥ 1, got {max_len}.")
        self.attention = MultiheadAttention(d_model, num_heads, use_bias=True, impl=impl, key=key)
        self.d_model, self.max_len = d_model, max_len

    def init_state(self) -> TimeAttentionState:
        """The empty cache."""
        a = self.attention
        shape = (self.max_len, a.num_kv_heads, a.head_dim)
        return TimeAttentionState(
            jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros((), jnp.int32)
        )

    def __call__(
        self,
        u: Float[Array, "time d_model"],
        state: TimeAttentionState | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "time d_model"], TimeAttentionState]:
        """A whole sequence: `(outputs, last_state)`. `state` holds the steps before
        the first (none if `None`: then the pass is plain causal attention over `u`);
        `key` is unused (no dropout)."""
        del key
        check_sequence("CausalTimeAttention", u, self.d_model)
        length = u.shape[0]
        if length > self.max_len:
            raise ValueError(
                f"CausalTimeAttention: a sequence of {length} steps does not fit `max_len` = "
                f"{self.max_len}."
            )
        offset = jnp.zeros((), jnp.int32) if state is None else state.length
        if state is not None and not isinstance(offset, Tracer) and offset + length > self.max_len:
            raise ValueError(
                f"CausalTimeAttention: {int(offset)} cached steps and {length} new ones do not "
                f"fit `max_len` = {self.max_len}."
            )
        positions = offset + jnp.arange(length, dtype=jnp.int32)
        h = u + sinusoidal_positions(positions, self.d_model).astype(u.dtype)
        q = self.attention.queries(h)
        k, v = self.attention.keys_values(h)
        if state is None:
            y = self.attention.attend(q, k, v, mask=AttentionMask(causal=True))
            pad = ((0, self.max_len - length), (0, 0), (0, 0))
            keys = jnp.pad(k.astype(jnp.float32), pad)
            values = jnp.pad(v.astype(jnp.float32), pad)
        else:
            start = (offset, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
            keys = jax.lax.dynamic_update_slice(state.keys, k.astype(state.keys.dtype), start)
            values = jax.lax.dynamic_update_slice(state.values, v.astype(state.values.dtype), start)
            mask = AttentionMask(causal=True, q_offset=offset, kv_lengths=offset + length)
            y = self.attention.attend(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask)
        return y.astype(u.dtype), TimeAttentionState(keys, values, offset + length)

    def step(
        self, state: TimeAttentionState, u: Float[Array, " d_model"]
    ) -> tuple[TimeAttentionState, Float[Array, " d_model"]]:
        """One step: `(state, u_t) → (new_state, output)`, attending over the cached
        steps (cost linear in their number)."""
        if u.shape != (self.d_model,):
            raise ValueError(
                f"CausalTimeAttention.step: `u` must be ({self.d_model},); got {u.shape}."
            )
        y, state = self(u[None], state)
        return state, y[0]
