"""MeBT's network: a bidirectional transformer over 3D VQ codes whose every layer goes
through `N_L` learned latent tokens, so that its cost is linear in the number of tokens
(Yoo et al. 2023, `mebt/modules/gpt.py` and `mebt/transformer.py` of Ugness/MeBT).

Three streams of tokens, each one example's (no batch axis; `vmap` for a batch):

- **latents** `(N_L, dim)`: the learned latent tokens;
- **contexts** `(C, dim)`: the known tokens, `token_embed[code] + position_embed[p]`;
  only the first `n_contexts` rows are real;
- **targets** `(T, dim)`: the tokens to predict, `mask_embed + position_embed[p]`; only
  the first `n_targets` rows are real.

The contexts and targets are *gathered* index sets (absolute positions in the
flattened `time × height × width` code volume), not a dense mask, and every attention
runs through `eqvid.kernels.attention` with the counts as key (and query) lengths:
no layer forms an `N × N` matrix except the optional full-attention `"maskgit"` kind.

Layer kinds (`MeBTBlock.kind`), as the original's `mode`:

| kind | queries | keys / values | updates |
|---|---|---|---|
| `latent_enc` | latents | contexts | latents |
| `latent_self` | latents | latents | latents |
| `latent_dec` | targets | latents | targets |
| `lt2l` | latents | [latents; targets] | latents |
| `maskgit` | [contexts; targets] | the same | contexts and targets |
"""

import typing

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..kernels.attention import AttentionImpl, AttentionMask
from ._attention import MultiheadAttention
from ._dense import Dense
from ._norm import LayerNorm
from ._roles import role
from ._transformer import _dropout

MeBTLayerKind = typing.Literal["latent_enc", "latent_self", "latent_dec", "lt2l", "maskgit"]
"""The kinds of MeBT layer (the original's `mode`)."""

MEBT_LAYER_KINDS: tuple[str, ...] = typing.get_args(MeBTLayerKind)

MEBT_RELEASED_LAYERS: tuple[str, ...] = (
    ("latent_enc", "latent_self") * 6
    + ("latent_enc",)
    + ("latent_dec", "lt2l") * 5
    + ("latent_dec",)
)
"""The layer order of all six released configs (`configs/{ucf,stl,taichi}/mebt_*.yaml`):
seven `latent_enc` interleaved with six `latent_self`, then six `latent_dec`
interleaved with five `lt2l`; 24 layers."""

_INIT_STD = 0.02  # every weight and embedding of the original: N(0, 0.02)


def mebt_layers(num_encoder: int, num_decoder: int) -> tuple[str, ...]:
    """The released pattern at another depth: `num_encoder` `latent_enc` layers with a
    `latent_self` between each two, then `num_decoder` `latent_dec` layers with an `lt2l`
    between each two (`mebt_layers(7, 6)` is `MEBT_RELEASED_LAYERS`)."""
    if num_encoder < 1 or num_decoder < 1:
        raise ValueError(
            f"mebt_layers: need ≥ 1 encoder and ≥ 1 decoder layer, got {num_encoder} and "
            f"{num_decoder}."
        )
    encoder = ("latent_enc", "latent_self") * (num_encoder - 1) + ("latent_enc",)
    decoder = ("latent_dec", "lt2l") * (num_decoder - 1) + ("latent_dec",)
    return encoder + decoder


def _normal(key, shape):
    return _INIT_STD * jax.random.normal(key, shape, jnp.float32)


def _reinit(module, key):
    """Every weight (ndim ≥ 2) of `module` drawn N(0, 0.02), every bias zero (the
    original's `GPT._init_weights` on its `nn.Linear` layers)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(module)
    keys = iter(jax.random.split(key, len(leaves)))
    new = [
        (
            jnp.zeros_like(x)
            if jax.tree_util.keystr(path).endswith("bias")
            else _normal(next(keys), x.shape)
        )
        if eqx.is_array(x)
        else x
        for path, x in leaves
    ]
    return jax.tree.unflatten(treedef, new)


def _select(a, n_a, b, n_b, rows=None):
    """`[a[:n_a]; b[:n_b]; padding]` in a buffer of `rows` rows (default `len(a) +
    len(b)`; fewer when the counts are known to fit) by a gather (the counts may be
    traced), and the count `n_a + n_b`."""
    size = a.shape[0] + b.shape[0]
    i = jnp.arange(size if rows is None else min(rows, size))
    src = jnp.where(i < n_a, i, a.shape[0] + i - n_a)
    return jnp.concatenate([a, b])[jnp.clip(src, 0, size - 1)], n_a + n_b


class MeBTBlock(eqx.Module):
    """One MeBT layer of kind `kind` (see the module's table).

    As the original block (`gpt.py:Block`): one LayerNorm `ln1` normalises both the
    query stream and the key/value stream, the residual adds the attention to the
    **normalised** queries, `x = ln1(q) + attn(ln1(q), ln1(kv))`, then `x = x +
    mlp(ln2(x))`; the updated stream becomes `x` and the others pass unchanged. The
    attention has separate query/key/value projections with biases and an output
    projection; the MLP is `Dense(dim → 4·dim) → GELU (exact) → Dense(4·dim → dim)`.
    Every weight starts N(0, 0.02), biases zero, LayerNorm ε = 1e-5 (PyTorch's).

    Residual dropout (`dropout`) drops the attention's and the MLP's outputs when a
    key is passed. The original's dropout on the attention probabilities (0.1 in the
    SkyTimelapse configs) is not available: the fused attention kernel never forms the
    probabilities.
    """

    kind: str = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    ln1: LayerNorm = eqx.field(metadata=role(weight_decay=False))
    ln2: LayerNorm = eqx.field(metadata=role(weight_decay=False))
    attention: MultiheadAttention
    mlp_in: Dense = eqx.field(metadata=role(model_axis="out"))
    mlp_out: Dense = eqx.field(metadata=role(model_axis="in"))

    def __init__(
        self,
        kind: MeBTLayerKind,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `kind`: the layer kind.
        - `dim`: token channels.
        - `num_heads`: attention heads (`dim` divisible by it).
        - `mlp_ratio`: the MLP's hidden units per channel (4 in the original).
        - `dropout`: residual dropout rate in `[0, 1)`.
        - `impl`: the `eqvid.kernels.attention` implementation.
        - `key`: a `jax.random` key.
        """
        if kind not in MEBT_LAYER_KINDS:
            raise ValueError(f"MeBTBlock: `kind` must be one of {MEBT_LAYER_KINDS}, got {kind!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MeBTBlock: `dropout` must be in [0, 1), got {dropout}.")
        ka, k1, k2 = jax.random.split(key, 3)
        self.kind, self.dropout = kind, dropout
        self.ln1 = LayerNorm(dim, eps=1e-5)
        self.ln2 = LayerNorm(dim, eps=1e-5)
        attention = MultiheadAttention(dim, num_heads, use_bias=True, impl=impl, key=ka)
        self.attention = _reinit(attention, ka)
        self.mlp_in = _reinit(Dense(dim, mlp_ratio * dim, key=k1), k1)
        self.mlp_out = _reinit(Dense(mlp_ratio * dim, dim, key=k2), k2)

    def _update(self, queries, n_queries, keys_values, n_keys, key):
        """`ln1(q) + attn(ln1(q), ln1(kv))`, then the MLP sublayer. `n_queries` /
        `n_keys`: the real rows (None: all)."""
        k_attn, k_mlp = (None, None) if key is None else jax.random.split(key)
        q = self.ln1(queries)
        kv = self.ln1(keys_values)
        mask = AttentionMask(q_lengths=n_queries, kv_lengths=n_keys)
        x = q + _dropout(self.attention(q, kv, mask=mask), self.dropout, k_attn)
        h = jax.nn.gelu(self.mlp_in(self.ln2(x)), approximate=False)
        return x + _dropout(self.mlp_out(h), self.dropout, k_mlp)

    def __call__(
        self,
        latents: Float[Array, "latents dim"],
        contexts: Float[Array, "contexts dim"],
        n_contexts: Int[Array, ""],
        targets: Float[Array, "targets dim"],
        n_targets: Int[Array, ""],
        *,
        tokens: int | None = None,
        key: PRNGKeyArray | None = None,
    ) -> tuple[
        Float[Array, "latents dim"], Float[Array, "contexts dim"], Float[Array, "targets dim"]
    ]:
        """`(latents, contexts, targets)` after this layer (the streams it does not
        update come back as they went in). Rows past `n_contexts` / `n_targets` are
        padding: never attended to, their outputs meaningless. `tokens`: the volume's
        size, a bound on `n_contexts + n_targets` (disjoint positions) that sizes the
        `maskgit` kind's joint sequence."""
        n_latents = latents.shape[0]
        if self.kind == "latent_self":
            latents = self._update(latents, None, latents, None, key)
        elif self.kind == "latent_enc":
            # No context (the first sampling step): the attention is 0, as the original's
            # softmax over an empty axis times an empty matrix.
            latents = self._update(latents, None, contexts, n_contexts, key)
        elif self.kind == "latent_dec":
            targets = self._update(targets, n_targets, latents, None, key)
        elif self.kind == "lt2l":
            both, n_both = _select(latents, n_latents, targets, n_targets)
            latents = self._update(latents, None, both, n_both, key)
        else:  # maskgit: full attention over the contexts and targets together
            both, n_both = _select(contexts, n_contexts, targets, n_targets, tokens)
            both = self._update(both, n_both, both, n_both, key)
            c, t, rows = contexts.shape[0], targets.shape[0], both.shape[0]
            # The updated rows back in their buffers (padding rows keep their values).
            i_c, i_t = jnp.arange(c), jnp.arange(t)
            c_src = jnp.clip(i_c, 0, rows - 1)
            contexts = jnp.where((i_c < n_contexts)[:, None], both[c_src], contexts)
            t_src = jnp.clip(n_contexts + i_t, 0, rows - 1)
            targets = jnp.where((i_t < n_targets)[:, None], both[t_src], targets)
        return latents, contexts, targets


class MeBTTransformer(eqx.Module):
    """MeBT's network (the original's `Net2NetTransformer` embeddings and its `GPT`): the
    logits of the target tokens given the context tokens, through `num_latents` learned
    latent tokens.

    `__call__(codes, context_index, n_contexts, target_index, n_targets)` takes one
    example's flattened code volume `(N,)` (the values at target positions are never
    read) and two index sets of positions in `[0, max_tokens)`: the first `n_contexts`
    entries of `context_index` are the known tokens, the first `n_targets` of
    `target_index` the ones to predict. It returns `(T, num_codes)` logits, one row per
    entry of `target_index` (rows past `n_targets` are meaningless).

    Parameters, as the original (every one N(0, 0.02) at initialisation): `token_embed`
    `(num_codes, dim)`, `mask_embed` `(dim,)` (every target's input before its
    position), `latents` `(num_latents, dim)` (no position), `position_embed`
    `(max_tokens, dim)` (learned, one per flattened position), the blocks, `final_norm`
    and the bias-free `head` `(dim → num_codes)`, not tied to `token_embed`; applied to
    the targets only.

    Dropout (`dropout`, the original's `embd_pdrop` and `resid_pdrop`) drops the three
    input streams and each block's residual branches when a key is passed.
    """

    layers: tuple[str, ...] = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    token_embed: Float[Array, "num_codes dim"] = eqx.field(metadata=role(weight_decay=False))
    mask_embed: Float[Array, " dim"] = eqx.field(metadata=role(weight_decay=False))
    latents: Float[Array, "num_latents dim"] = eqx.field(metadata=role(weight_decay=False))
    position_embed: Float[Array, "max_tokens dim"] = eqx.field(metadata=role(weight_decay=False))
    blocks: tuple[MeBTBlock, ...]
    final_norm: LayerNorm = eqx.field(metadata=role(weight_decay=False))
    head: Dense

    def __init__(
        self,
        *,
        num_codes: int,
        max_tokens: int,
        dim: int,
        num_heads: int,
        num_latents: int,
        layers: typing.Sequence[str] = MEBT_RELEASED_LAYERS,
        dropout: float = 0.0,
        impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_codes`: the tokenizer's codebook size (the vocabulary).
        - `max_tokens`: the number of positions (`time × height × width` of the longest
          code volume; the original's `block_size`).
        - `dim`: token channels (`n_embd`).
        - `num_heads`: attention heads.
        - `num_latents`: learned latent tokens (`N_L`; 256 in the released configs).
        - `layers`: the kind of each layer, in order (see `MEBT_RELEASED_LAYERS`,
          `mebt_layers`).
        - `dropout`: the embedding and residual dropout rate.
        - `impl`: the `eqvid.kernels.attention` implementation.
        - `key`: a `jax.random` key.
        """
        for name, value in (
            ("num_codes", num_codes),
            ("max_tokens", max_tokens),
            ("dim", dim),
            ("num_heads", num_heads),
            ("num_latents", num_latents),
        ):
            if value < 1:
                raise ValueError(f"MeBTTransformer: `{name}` must be ≥ 1, got {value}.")
        if dim % num_heads:
            raise ValueError(
                f"MeBTTransformer: `dim` ({dim}) must be divisible by `num_heads` ({num_heads})."
            )
        layers = tuple(layers)
        bad = [kind for kind in layers if kind not in MEBT_LAYER_KINDS]
        if not layers or bad:
            raise ValueError(
                f"MeBTTransformer: `layers` must be a non-empty sequence of {MEBT_LAYER_KINDS}; "
                f"got {layers!r}."
            )
        if not any(kind in ("latent_dec", "maskgit") for kind in layers):
            raise ValueError(
                "MeBTTransformer: `layers` must contain a 'latent_dec' or 'maskgit' layer: "
                f"without one the targets never see anything; got {layers!r}."
            )
        kt, km, kl, kp, kb, kh = jax.random.split(key, 6)
        self.token_embed = _normal(kt, (num_codes, dim))
        self.mask_embed = _normal(km, (dim,))
        self.latents = _normal(kl, (num_latents, dim))
        self.position_embed = _normal(kp, (max_tokens, dim))
        self.blocks = tuple(
            MeBTBlock(kind, dim, num_heads, dropout=dropout, impl=impl, key=k)  # type: ignore[arg-type]
            for kind, k in zip(layers, jax.random.split(kb, len(layers)))
        )
        self.final_norm = LayerNorm(dim, eps=1e-5)
        self.head = _reinit(Dense(dim, num_codes, use_bias=False, key=kh), kh)
        self.layers, self.dropout = layers, dropout

    @property
    def num_codes(self) -> int:
        return self.token_embed.shape[0]

    @property
    def max_tokens(self) -> int:
        return self.position_embed.shape[0]

    def __call__(
        self,
        codes: Int[Array, " tokens"],
        context_index: Int[Array, " contexts"],
        n_contexts: Int[Array, ""] | int,
        target_index: Int[Array, " targets"],
        n_targets: Int[Array, ""] | int,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "targets num_codes"]:
        """The logits of the targets (see the class). `key`: dropout (None: none)."""
        if codes.shape[0] > self.max_tokens:
            raise ValueError(
                f"MeBTTransformer: `codes` has {codes.shape[0]} tokens, more than the "
                f"{self.max_tokens} positions the model has (max_tokens)."
            )
        for name, n, index in (
            ("n_contexts", n_contexts, context_index),
            ("n_targets", n_targets, target_index),
        ):
            if isinstance(n, int) and not 0 <= n <= index.shape[0]:
                raise ValueError(
                    f"MeBTTransformer: `{name}` must be in [0, {index.shape[0]}] (its index "
                    f"set's length), got {n}."
                )
        n_contexts = jnp.asarray(n_contexts, jnp.int32)
        n_targets = jnp.asarray(n_targets, jnp.int32)
        keys = (
            [None] * (len(self.blocks) + 3)
            if key is None
            else jax.random.split(key, len(self.blocks) + 3)
        )
        context_codes = codes[context_index]
        contexts = self.token_embed[context_codes] + self.position_embed[context_index]
        targets = self.mask_embed[None, :] + self.position_embed[target_index]
        latents = self.latents
        latents = _dropout(latents, self.dropout, keys[0])
        contexts = _dropout(contexts, self.dropout, keys[1])
        targets = _dropout(targets, self.dropout, keys[2])
        for block, k in zip(self.blocks, keys[3:]):
            latents, contexts, targets = block(
                latents, contexts, n_contexts, targets, n_targets, tokens=codes.shape[0], key=k
            )
        return self.head(self.final_norm(targets))


def mebt_parameter_count(
    *, num_codes: int, max_tokens: int, dim: int, num_latents: int, num_layers: int
) -> int:
    """The original's trainable parameter count: `num_layers · (12·dim² + 13·dim)` for
    the blocks, plus `ln_f`, the bias-free head, the token embedding, `mask_emb`,
    `sos_emb` (the latents) and `pos_emb`. 337,177,600 for the released 16-frame
    configs, 344,517,632 for the 128-frame ones."""
    d = dim
    return (
        num_layers * (12 * d * d + 13 * d)
        + 2 * d
        + 2 * num_codes * d
        + d
        + num_latents * d
        + max_tokens * d
    )


__all__ = [
    "MEBT_LAYER_KINDS",
    "MEBT_RELEASED_LAYERS",
    "MeBTBlock",
    "MeBTLayerKind",
    "MeBTTransformer",
    "mebt_layers",
    "mebt_parameter_count",
]
