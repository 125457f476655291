"""Multi-head (grouped-query) attention layer on `eqvid.kernels.attention`."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..kernels.attention import AttentionImpl, AttentionMask, attention
from ._roles import role

HeadsFn = Callable[[Array, Array, Array], tuple[Array, Array, Array]]


def _lecun(key, shape, fan_in, dtype):
    std = 1.0 / math.sqrt(fan_in) / 0.87962566103423978  # truncated at ±2 std
    return (std * jax.random.truncated_normal(key, -2.0, 2.0, shape)).astype(dtype)


class MultiheadAttention(eqx.Module):
    """Multi-head attention with grouped-query key/value heads, running the fused
    masked attention of `eqvid.kernels.attention`.

    Projections keep an explicit heads axis (`query_weight` is `(dim, heads,
    head_dim)`), so sharding rules can split heads over a model axis: every
    projection's role names its axes (`("in", "heads", "head_dim")`, the output's
    `("heads", "head_dim", "out")`) with `model_axis="heads"` (key/value heads
    included, so `num_kv_heads` must be divisible by the `model` axis size too).
    Positions (rotary, learned, ...) are the caller's: add them to the inputs, or
    transform the projected heads with `process_heads`.

    Inputs may carry any leading batch axes, `(*batch, length, dim)`; they are
    run as one batch through the kernel (`vmap` works too). The weights are cast
    to the input's dtype, so bfloat16 inputs compute in bfloat16 with float32
    softmax statistics inside the kernel.

    ```python
    mha = eqvid.MultiheadAttention(256, num_heads=8, num_kv_heads=2, key=key)
    y = mha(x, mask=eqvid.kernels.AttentionMask.frame_causal(tokens_per_frame=16))
    ```
    """

    # Static fields first and `role(...)` fields last: type checkers read `role(...)` as a
    # default value. Parameter order (and so checkpoint paths) is unaffected.
    num_heads: int = eqx.field(static=True)
    num_kv_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    impl: AttentionImpl = eqx.field(static=True)
    query_weight: Float[Array, "dim heads head_dim"] = eqx.field(
        metadata=role(axes=("in", "heads", "head_dim"), model_axis="heads")
    )
    key_weight: Float[Array, "kv_dim kv_heads head_dim"] = eqx.field(
        metadata=role(axes=("in", "heads", "head_dim"), model_axis="heads")
    )
    value_weight: Float[Array, "kv_dim kv_heads head_dim"] = eqx.field(
        metadata=role(axes=("in", "heads", "head_dim"), model_axis="heads")
    )
    output_weight: Float[Array, "heads head_dim out_dim"] = eqx.field(
        metadata=role(axes=("heads", "head_dim", "out"), model_axis="heads")
    )
    query_bias: Float[Array, "heads head_dim"] | None = eqx.field(
        metadata=role(axes=("heads", "head_dim"), model_axis="heads")
    )
    key_bias: Float[Array, "kv_heads head_dim"] | None = eqx.field(
        metadata=role(axes=("heads", "head_dim"), model_axis="heads")
    )
    value_bias: Float[Array, "kv_heads head_dim"] | None = eqx.field(
        metadata=role(axes=("heads", "head_dim"), model_axis="heads")
    )
    output_bias: Float[Array, " out_dim"] | None = eqx.field(metadata=role(axes=("out",)))

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        kv_dim: int | None = None,
        out_dim: int | None = None,
        use_bias: bool = False,
        impl: AttentionImpl = "auto",
        dtype=jnp.float32,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `dim`: the channels of the query input (and of the output unless `out_dim`).
        - `num_heads`: query heads.
        - `num_kv_heads`: key/value heads, a divisor of `num_heads` (default
          `num_heads`: ordinary multi-head attention; 1: multi-query).
        - `head_dim`: channels per head (default `dim // num_heads`).
        - `kv_dim`: channels of the key/value input for cross-attention (default `dim`).
        - `out_dim`: output channels (default `dim`).
        - `use_bias`: biases on the four projections.
        - `impl`: the `eqvid.kernels.attention` implementation.
        - `key`: a `jax.random` key.
        """
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"MultiheadAttention: num_heads ({num_heads}) must be a positive multiple of "
                f"num_kv_heads ({num_kv_heads})."
            )
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(
                    f"MultiheadAttention: dim ({dim}) is not divisible by num_heads "
                    f"({num_heads}); pass head_dim explicitly."
                )
            head_dim = dim // num_heads
        kv_dim = dim if kv_dim is None else kv_dim
        out_dim = dim if out_dim is None else out_dim
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.query_weight = _lecun(kq, (dim, num_heads, head_dim), dim, dtype)
        self.key_weight = _lecun(kk, (kv_dim, num_kv_heads, head_dim), kv_dim, dtype)
        self.value_weight = _lecun(kv, (kv_dim, num_kv_heads, head_dim), kv_dim, dtype)
        self.output_weight = _lecun(ko, (num_heads, head_dim, out_dim), num_heads * head_dim, dtype)
        zeros = (lambda *s: jnp.zeros(s, dtype)) if use_bias else (lambda *s: None)
        self.query_bias = zeros(num_heads, head_dim)
        self.key_bias = zeros(num_kv_heads, head_dim)
        self.value_bias = zeros(num_kv_heads, head_dim)
        self.output_bias = zeros(out_dim)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.impl = impl

    def _check(self, name, x, weight):
        if x.ndim < 2 or x.shape[-1] != weight.shape[0]:
            raise ValueError(
                f"MultiheadAttention: `{name}` must have shape (*batch, length, {weight.shape[0]}), "
                f"got {x.shape}."
            )

    @staticmethod
    def _project(x, weight, bias):
        y = jnp.einsum("...lc,chd->...lhd", x, weight.astype(x.dtype))
        return y if bias is None else y + jnp.broadcast_to(bias.astype(x.dtype), y.shape)

    def queries(
        self, x: Float[Array, "*batch q_len dim"]
    ) -> Float[Array, "*batch q_len heads head_dim"]:
        """Project inputs to query heads."""
        self._check("x", x, self.query_weight)
        return self._project(x, self.query_weight, self.query_bias)

    def keys_values(
        self, context: Float[Array, "*batch kv_len kv_dim"]
    ) -> tuple[
        Float[Array, "*batch kv_len kv_heads head_dim"],
        Float[Array, "*batch kv_len kv_heads head_dim"],
    ]:
        """Project inputs to key and value heads (what a KV cache stores)."""
        self._check("context", context, self.key_weight)
        return (
            self._project(context, self.key_weight, self.key_bias),
            self._project(context, self.value_weight, self.value_bias),
        )

    def attend(
        self,
        q: Float[Array, "*batch q_len heads head_dim"],
        k: Float[Array, "*batch kv_len kv_heads head_dim"],
        v: Float[Array, "*batch kv_len kv_heads head_dim"],
        *,
        mask: AttentionMask | None = None,
    ) -> Float[Array, "*batch q_len out_dim"]:
        """Attention over projected heads, then the output projection.

        `mask`'s lengths and query offset must fit the sequences (`q_offset` places
        the queries among the keys: a cache's keys start at position 0); see
        `eqvid.kernels.AttentionMask`. Known values raise a `ValueError`; traced ones
        (a decoding loop under `jit`) that do not fit make the output NaN.
        """
        lead = q.shape[:-3]
        flat = lambda a: a.reshape((-1,) + a.shape[-3:])
        o = attention(flat(q), flat(k), flat(v), mask=mask, impl=self.impl)
        o = o.reshape(lead + o.shape[1:])
        y = jnp.einsum("...lhd,hdc->...lc", o, self.output_weight.astype(o.dtype))
        if self.output_bias is None:
            return y
        return y + jnp.broadcast_to(self.output_bias.astype(y.dtype), y.shape)

    def __call__(
        self,
        x: Float[Array, "*batch q_len dim"],
        context: Float[Array, "*batch kv_len kv_dim"] | None = None,
        *,
        mask: AttentionMask | None = None,
        process_heads: HeadsFn | None = None,
    ) -> Float[Array, "*batch q_len out_dim"]:
        """**Arguments:**

        - `x`: queries' input `(*batch, q_len, dim)`.
        - `context`: keys' and values' input `(*batch, kv_len, kv_dim)`; `x` itself
          when `None` (self-attention).
        - `mask`: an `AttentionMask`; its lengths have shape `()` or `(batch,)`
          (one leading batch axis).
        - `process_heads`: optional `(q, k, v) -> (q, k, v)` on the projected
          heads, e.g. rotary embeddings.

        **Returns:** `(*batch, q_len, out_dim)`.
        """
        q = self.queries(x)
        k, v = self.keys_values(x if context is None else context)
        if process_heads is not None:
            q, k, v = process_heads(q, k, v)
        return self.attend(q, k, v, mask=mask)
