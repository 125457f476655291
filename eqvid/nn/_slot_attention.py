"""SlotSSM's attention layers (JindongJiang/SlotSSMs `src/models/module.py` and the
flash-attn `MHA` it uses): the read-in from input tokens to slots, standard or
*inverted* (slots compete for each token), and self-attention among the slots."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from eqvid.kernels import attention
from eqvid.kernels.attention import AttentionImpl

from ._dense import Dense, torch_linear


class SlotReadIn(eqx.Module):
    """Cross-attention from slots (queries) to input tokens (keys and values), as the
    original's `MultiHeadAttention`: `proj_q`, `proj_k`, `proj_v`, `proj_o` with
    biases (PyTorch's default init), heads as contiguous blocks of channels, scores
    `q kᵀ / √head_dim`.

    - **standard**: a softmax over the tokens for each slot;
    - **inverted** (`inverted=True`, SlotSSM's OC read-in): a softmax over the joint
      heads × slots axis for each token, so the slots compete for it; then each
      slot's weights are renormalised over the tokens, `w / (Σ_tokens w + eps)` (a
      weighted mean of the tokens).

    The call returns the output and the attention weights `(heads, slots, tokens)`
    (for the inverted form: before the renormalisation, as the original's
    `output_attentions`), which show which tokens each slot took.
    """

    proj_q: Dense
    proj_k: Dense
    proj_v: Dense
    proj_o: Dense
    num_heads: int = eqx.field(static=True)
    inverted: bool = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        inverted: bool = False,
        eps: float = 1e-5,
        key: PRNGKeyArray,
    ):
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"SlotReadIn: `num_heads` must divide `dim` = {dim}; got {num_heads}.")
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.proj_q = torch_linear(dim, dim, key=kq)
        self.proj_k = torch_linear(dim, dim, key=kk)
        self.proj_v = torch_linear(dim, dim, key=kv)
        self.proj_o = torch_linear(dim, dim, key=ko)
        self.num_heads, self.inverted, self.eps = num_heads, inverted, eps

    def __call__(
        self, slots: Float[Array, "slots dim"], tokens: Float[Array, "tokens dim"]
    ) -> tuple[Float[Array, "slots dim"], Float[Array, "heads slots tokens"]]:
        """`(output, weights)` for `slots` reading `tokens`."""
        h = self.num_heads
        k_slots, n = slots.shape[0], tokens.shape[0]
        dh = slots.shape[-1] // h
        q = self.proj_q(slots).reshape(k_slots, h, dh).transpose(1, 0, 2)
        k = self.proj_k(tokens).reshape(n, h, dh).transpose(1, 0, 2)
        v = self.proj_v(tokens).reshape(n, h, dh).transpose(1, 0, 2)
        scores = jnp.einsum("hsd,htd->hst", q * dh**-0.5, k).astype(jnp.float32)
        if self.inverted:
            weights = jax.nn.softmax(scores.reshape(h * k_slots, n), axis=0).reshape(scores.shape)
            used = weights / (jnp.sum(weights, axis=-1, keepdims=True) + self.eps)
        else:
            weights = used = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("hst,htd->shd", used.astype(v.dtype), v).reshape(k_slots, h * dh)
        return self.proj_o(out), weights


class SlotSelfAttention(eqx.Module):
    """Self-attention among the slots (SlotSSM's space mixer: flash-attn's `MHA`):
    one fused projection `Wqkv` (rows q, k, v, heads contiguous within each), softmax
    over the slots, `out_proj`; PyTorch's default init, biases. Runs through
    `eqvid.kernels.attention` (`impl`)."""

    Wqkv: Dense
    out_proj: Dense
    num_heads: int = eqx.field(static=True)
    impl: AttentionImpl = eqx.field(static=True)

    def __init__(
        self, dim: int, num_heads: int, *, impl: AttentionImpl = "auto", key: PRNGKeyArray
    ):
        if num_heads < 1 or dim % num_heads:
            raise ValueError(
                f"SlotSelfAttention: `num_heads` must divide `dim` = {dim}; got {num_heads}."
            )
        k1, k2 = jax.random.split(key)
        self.Wqkv = torch_linear(dim, 3 * dim, key=k1)
        self.out_proj = torch_linear(dim, dim, key=k2)
        self.num_heads, self.impl = num_heads, impl

    def __call__(self, slots: Float[Array, "slots dim"]) -> Float[Array, "slots dim"]:
        k, d = slots.shape
        q, kk, v = jnp.split(self.Wqkv(slots).reshape(k, 3, self.num_heads, -1), 3, axis=1)
        out = attention(
            q.transpose(1, 0, 2, 3),
            kk.transpose(1, 0, 2, 3),
            v.transpose(1, 0, 2, 3),
            impl=self.impl,
        )
        return self.out_proj(out.reshape(k, d))
