"""A transformer block: masked self-attention, optional cross-attention, MLP; pre- or
post-LayerNorm; residual dropout; a key/value-cache path for decoding."""

import dataclasses
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..kernels.attention import AttentionImpl, AttentionMask
from . import _activations
from ._activations import ActivationName
from ._attention import MultiheadAttention
from ._dense import Dense
from ._norm import LayerNorm
from ._roles import role

KVCache = tuple[
    Float[Array, "*batch cache_len kv_heads head_dim"],
    Float[Array, "*batch cache_len kv_heads head_dim"],
]
"""A layer's key/value cache: keys and values `(*batch, cache_len, kv_heads, head_dim)`."""

NormPosition = typing.Literal["pre", "post"]


def _dropout(x, rate: float, key):
    if key is None or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0)


class TransformerBlock(eqx.Module):
    """Self-attention (any `AttentionMask`), optional cross-attention, then an MLP
    (`Dense → activation → Dense`), each a residual sublayer.

    - `norm="pre"` (GPT-2, TECO, MeBT): `x = x + f(LN(x))` for each sublayer `f`.
    - `norm="post"` (the original Transformer, PyTorch's default
      `nn.TransformerEncoderLayer`): `x = LN(x + f(x))`.

    With `cross_attention=True` a second attention sublayer sits between the two:
    queries from `x`, keys and values from a `context` `(*batch, ctx_length,
    context_dim)` (LayerNorm-ed by `context_norm` unless `norm_context=False`): the
    decoder layer of an encoder-decoder, a Perceiver/MeBT latent bottleneck, the
    SlotSSM read-in.

    Dropout (`dropout > 0`) drops each sublayer's output before the residual sum when
    a `key` is passed; without a key (evaluation) nothing is dropped.

    `cached(x, cache, offset, ...)` runs new tokens at positions `offset …` against a
    key/value cache (`init_cache`) and equals the full pass under a causal mask.

    Inputs have any leading batch axes `(*batch, length, dim)`; an `AttentionMask`'s
    lengths have shape `()` or `(batch,)` (one leading batch axis).

    Roles: `mlp_in`'s hidden units (`"out"`) and `mlp_out`'s (`"in"`) go over the
    `model` mesh axis, the attention layers' heads too.
    """

    # Static fields first and `role(...)` fields last: type checkers read `role(...)` as a
    # default value. Parameter order (and so checkpoint paths) is unaffected.
    norm: NormPosition = eqx.field(static=True)
    activation: ActivationName = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    norm1: LayerNorm
    attention: MultiheadAttention
    cross_norm: LayerNorm | None
    context_norm: LayerNorm | None
    cross_attention: MultiheadAttention | None
    norm2: LayerNorm
    mlp_in: Dense = eqx.field(metadata=role(model_axis="out"))
    mlp_out: Dense = eqx.field(metadata=role(model_axis="in"))

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        num_kv_heads: int | None = None,
        cross_attention: bool = False,
        context_dim: int | None = None,
        norm_context: bool = True,
        norm: NormPosition = "pre",
        activation: ActivationName = "gelu",
        dropout: float = 0.0,
        use_bias: bool = True,
        eps: float = 1e-6,
        impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `dim`: token channels.
        - `num_heads`: attention heads (`dim` divisible by it).
        - `mlp_dim`: hidden units of the MLP.
        - `num_kv_heads`: key/value heads (grouped-query attention; default `num_heads`).
        - `cross_attention`: add the cross-attention sublayer.
        - `context_dim`: channels of the context (default `dim`).
        - `norm_context`: LayerNorm the context before cross-attention.
        - `norm`: `"pre"` or `"post"` LayerNorm.
        - `activation`: the MLP's activation, by name (see `eqvid.nn.activation`):
          `"gelu"` (exact), `"gelu_tanh"`, `"gelu_sigmoid"` (`x · σ(1.702 x)`), ….
        - `dropout`: rate of the residual dropout, in `[0, 1]`.
        - `use_bias`: biases on the attention projections (the MLP always has them).
        - `eps`: the LayerNorms' epsilon.
        - `impl`: the `eqvid.kernels.attention` implementation.
        - `key`: a `jax.random` key.
        """
        if norm not in typing.get_args(NormPosition):
            raise ValueError(f"TransformerBlock: `norm` must be 'pre' or 'post', got {norm!r}.")
        _activations.activation(activation)  # validates the name
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"TransformerBlock: `dropout` must be in [0, 1], got {dropout}.")
        if context_dim is not None and not cross_attention:
            raise ValueError(
                f"TransformerBlock: `context_dim` ({context_dim}) needs `cross_attention=True`."
            )
        ka, k1, k2 = jax.random.split(key, 3)
        self.norm1 = LayerNorm(dim, eps=eps)
        if cross_attention:
            ka, kc = jax.random.split(ka)
            context_dim = dim if context_dim is None else context_dim
            self.cross_norm = LayerNorm(dim, eps=eps)
            self.context_norm = LayerNorm(context_dim, eps=eps) if norm_context else None
            self.cross_attention = MultiheadAttention(
                dim,
                num_heads,
                num_kv_heads=num_kv_heads,
                kv_dim=context_dim,
                use_bias=use_bias,
                impl=impl,
                key=kc,
            )
        else:
            self.cross_norm = self.context_norm = self.cross_attention = None
        self.attention = MultiheadAttention(
            dim, num_heads, num_kv_heads=num_kv_heads, use_bias=use_bias, impl=impl, key=ka
        )
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp_in = Dense(dim, mlp_dim, key=k1)
        self.mlp_out = Dense(mlp_dim, dim, key=k2)
        self.norm = norm
        self.activation = activation
        self.dropout = dropout

    # -- sublayers -------------------------------------------------------------------

    def _residual(self, x, f, norm, key):
        """One residual sublayer `f`, pre- or post-norm."""
        if self.norm == "pre":
            return x + _dropout(f(norm(x)), self.dropout, key)
        return norm(x + _dropout(f(x), self.dropout, key))

    def _check_context(self, context):
        if self.cross_attention is None and context is not None:
            raise ValueError(
                "TransformerBlock: got a `context` but the block has no cross-attention "
                "(build it with `cross_attention=True`)."
            )
        if self.cross_attention is not None and context is None:
            raise ValueError(
                "TransformerBlock: the block has cross-attention, so `context` "
                "(*batch, ctx_length, context_dim) is required, got None."
            )

    def _cross_and_mlp(self, x, context, context_mask, key):
        k_cross, k_mlp = (None, None) if key is None else jax.random.split(key)
        if self.cross_attention is not None:
            cross = self.cross_attention
            if self.context_norm is not None:
                context = self.context_norm(context)
            x = self._residual(
                x, lambda h: cross(h, context, mask=context_mask), self.cross_norm, k_cross
            )
        act = _activations.activation(self.activation)
        return self._residual(x, lambda h: self.mlp_out(act(self.mlp_in(h))), self.norm2, k_mlp)

    # -- public API -----------------------------------------------------------------

    def __call__(
        self,
        x: Float[Array, "*batch length dim"],
        context: Float[Array, "*batch ctx_length context_dim"] | None = None,
        *,
        mask: AttentionMask | None = None,
        context_mask: AttentionMask | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch length dim"]:
        """**Arguments:**

        - `x`: tokens `(*batch, length, dim)`.
        - `context`: keys' and values' input of the cross-attention, `(*batch,
          ctx_length, context_dim)`; required exactly when the block has one.
        - `mask`: the self-attention's `AttentionMask` (`None`: bidirectional).
        - `context_mask`: the cross-attention's (e.g. context padding lengths).
        - `key`: dropout randomness; `None` for evaluation (no dropout).

        **Returns:** `(*batch, length, dim)`.
        """
        self._check_context(context)
        k_self, k_rest = (None, None) if key is None else jax.random.split(key)
        x = self._residual(x, lambda h: self.attention(h, mask=mask), self.norm1, k_self)
        return self._cross_and_mlp(x, context, context_mask, k_rest)

    def init_cache(
        self, length: int, *, batch_shape: tuple[int, ...] = (), dtype=jnp.float32
    ) -> KVCache:
        """A zero key/value cache for `length` tokens: two arrays `(*batch_shape,
        length, kv_heads, head_dim)`."""
        shape = (*batch_shape, length, self.attention.num_kv_heads, self.attention.head_dim)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def cached(
        self,
        x: Float[Array, "*batch length dim"],
        cache: KVCache,
        offset: int | Int[Array, ""],
        *,
        mask: AttentionMask | None = None,
        context: Float[Array, "*batch ctx_length context_dim"] | None = None,
        context_mask: AttentionMask | None = None,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "*batch length dim"], KVCache]:
        """The tokens at positions `offset … offset + length - 1` of a longer sequence:
        write their keys and values into `cache` at `offset` and attend over the cache.

        The self-attention mask is `mask` (default: bidirectional) placed at `offset`
        (`q_offset = offset`) and limited to the `offset + length` entries written so
        far, so unwritten entries are never seen. Under a causal mask, feeding a
        sequence in pieces (`offset = 0, L_0, L_0 + L_1, …`) gives what `__call__`
        gives on the whole sequence. `offset` is one position for the whole batch
        (`vmap` for one per example).

        **Returns:** the block's output for `x` and the updated cache.
        """
        length = x.shape[-2]
        cache_len = cache[0].shape[-3]
        if isinstance(offset, (int, np.integer)) and not 0 <= offset <= cache_len - length:
            raise ValueError(
                f"TransformerBlock.cached: `offset` + length ({offset} + {length}) must fit "
                f"the cache of {cache_len} entries."
            )
        self._check_context(context)
        k_self, k_rest = (None, None) if key is None else jax.random.split(key)
        h = self.norm1(x) if self.norm == "pre" else x
        q = self.attention.queries(h)
        k, v = self.attention.keys_values(h)
        start = (0,) * (x.ndim - 2) + (offset, 0, 0)
        k_cache = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
        v_cache = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
        base: AttentionMask = AttentionMask() if mask is None else mask
        written = offset + length
        if base.kv_lengths is not None:
            written = jnp.minimum(base.kv_lengths, written)
        at_offset = dataclasses.replace(base, q_offset=offset, kv_lengths=written)
        y = self.attention.attend(q, k_cache, v_cache, mask=at_offset)
        y = _dropout(y, self.dropout, k_self)
        x = x + y if self.norm == "pre" else self.norm1(x + y)
        return self._cross_and_mlp(x, context, context_mask, k_rest), (k_cache, v_cache)
