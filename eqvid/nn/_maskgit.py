"""TECO's MaskGit prior over one frame's grid of discrete tokens: the bidirectional
transformer with its weight-tied MLM head, the mask schedules, training masks and the
masked-token loss, and two jit-able samplers (TECO's draft-and-revise, and MaskGIT's
confidence-based decoding)."""

import math
import typing
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ..kernels.attention import AttentionImpl
from . import _activations
from ._dense import Dense
from ._embeddings import Embedding, FactorisedPositionEmbedding, _is_concrete
from ._norm import LayerNorm
from ._transformer import TransformerBlock, _dropout

MASK_ID = -1
"""The token id of a masked position ([MASK]); it looks up the last row (row `K`) of
`MaskGitPrior.token_embed`."""

TECO_MASKGIT_PRESETS: dict[str, dict[str, typing.Any]] = {
    "dmlab": dict(
        shape=(8, 8), num_codes=1024, cond_dim=64, vocab_dim=256, dim=512, mlp_dim=2048,
        num_heads=8, num_layers=8,
    ),
    "minecraft": dict(
        shape=(8, 8), num_codes=1024, cond_dim=128, vocab_dim=256, dim=768, mlp_dim=3072,
        num_heads=12, num_layers=6,
    ),
    "habitat": dict(
        shape=(8, 8), num_codes=2048, cond_dim=256, vocab_dim=256, dim=1024, mlp_dim=4096,
        num_heads=16, num_layers=16,
    ),
    "kinetics": dict(
        shape=(8, 8), num_codes=1024, cond_dim=256, vocab_dim=256, dim=1024, mlp_dim=4096,
        num_heads=16, num_layers=24,
    ),
}  # fmt: skip
"""`MaskGitPrior` keyword arguments of TECO's four configs (`configs/*.yaml`: `z_git`,
TECO's codebook size `K`, its latent width `D` as `cond_dim`, an 8 × 8 latent grid).
DMLab's has 26,046,464 parameters, as the original."""


# ----------------------------------------------------------------------------
# Mask schedules.
# ----------------------------------------------------------------------------

_SCHEDULES = ("cosine", "linear", "uniform", "square", "powE", "log", "exp")


def _schedule_name(schedule: str) -> str:
    """The canonical name of `schedule` (`"uniform"` → `"linear"`, `"square"` →
    `"pow2"`), or a `ValueError`."""
    if schedule in ("cosine", "log", "exp"):
        return schedule
    if schedule in ("linear", "uniform"):
        return "linear"
    if schedule == "square":
        return "pow2"
    if schedule.startswith("pow"):
        try:
            exponent = float(schedule[3:])
        except ValueError:
            exponent = math.nan
        if exponent > 0:
            return schedule
    raise ValueError(
        f"mask_ratio: `schedule` must be one of {_SCHEDULES} (`powE` for an exponent E > 0, "
        f"e.g. 'pow2', 'pow0.5'), got {schedule!r}."
    )


def mask_ratio(
    r: Float[ArrayLike, "*shape"],
    schedule: str = "cosine",
    *,
    total: int | Int[ArrayLike, ""] | None = None,
) -> Float[Array, "*shape"]:
    """The fraction of tokens masked at "time" `r ∈ [0, 1]` (1 at `r = 0`, falling to
    0 at `r = 1`), clipped to `[1e-6, 1]`: MaskGIT's and TECO's `schedule` function.

    - `"cosine"` (TECO's, MaskGIT's): `cos(π/2 · r)`.
    - `"linear"` (the original's `"uniform"`, accepted too): `1 - r`.
    - `"powE"` for an exponent `E > 0`: `1 - r^E` (`"square"` is `"pow2"`).
    - `"log"`: `-log2(r) / log2(total)`; `"exp"`: `1 - 2^(-log2(total) · (1 - r))`.
      Both need `total`, the number of tokens.

    **Arguments:**

    - `r`: times in `[0, 1]`, any shape.
    - `schedule`: the schedule's name.
    - `total`: the number of tokens (only `"log"` and `"exp"` use it).

    **Returns:** float32 ratios of the shape of `r`.
    """
    name = _schedule_name(schedule)
    r = jnp.asarray(r, jnp.float32)
    if name == "cosine":
        ratio = jnp.cos(math.pi / 2.0 * r)
    elif name == "linear":
        ratio = 1.0 - r
    elif name.startswith("pow"):
        ratio = 1.0 - r ** float(name[3:])
    else:
        if total is None:
            raise ValueError(f"mask_ratio: schedule {name!r} needs `total` (the token count).")
        log_total = jnp.log2(jnp.asarray(total, jnp.float32))
        if name == "log":
            ratio = -jnp.log2(r) / log_total
        else:
            ratio = 1.0 - jnp.exp2(-log_total * (1.0 - r))
    return jnp.clip(ratio, 1e-6, 1.0)


def num_masked(
    r: Float[ArrayLike, "*shape"], total: int, schedule: str = "cosine"
) -> Int[Array, "*shape"]:
    """How many of `total` tokens a training example masks at time `r`:
    `max(1, ⌊mask_ratio(r, schedule) · total⌋)` (TECO's `MaskGit.__call__`), from 1 to
    `total`. int32."""
    if total < 1:
        raise ValueError(f"num_masked: `total` must be ≥ 1, got {total}.")
    ratio = mask_ratio(r, schedule, total=total)
    return jnp.maximum(1, jnp.floor(ratio * total)).astype(jnp.int32)


def training_mask(
    key: PRNGKeyArray, shape: Sequence[int], schedule: str = "cosine"
) -> Bool[Array, "*shape"]:
    """TECO's training mask for one frame: draw `r ~ U(0, 1)`, then mask exactly
    `n = num_masked(r, L, schedule)` of the `L = prod(shape)` positions, a subset
    chosen uniformly at random (the positions whose rank in a random permutation is
    below `n`). Draw one per frame (`vmap` over split keys): TECO draws an
    independent mask for every batch element and time step.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `shape`: the token grid, e.g. `(h, w)`.
    - `schedule`: the mask schedule (see `mask_ratio`).

    **Returns:** a boolean mask of `shape`, True where the token is masked.
    """
    shape = tuple(shape)
    total = math.prod(shape)
    if not shape or total < 1:
        raise ValueError(f"training_mask: `shape` must be non-empty sizes ≥ 1, got {shape}.")
    k_ratio, k_perm = jax.random.split(key)
    n = num_masked(jax.random.uniform(k_ratio, (), jnp.float32), total, schedule)
    ranks = jax.random.permutation(k_perm, total)
    return (ranks < n).reshape(shape)


def masked_token_loss(
    logits: Float[Array, "*shape num_codes"],
    targets: Int[Array, "*shape"],
    mask: Bool[Array, "*shape"],
) -> Float[Array, ""]:
    """The cross-entropy of `logits` against the integer `targets`, averaged over the
    masked positions only: `Σ CE · mask / Σ mask` over every axis (batch and time
    included; 0 when nothing is masked). float32.

    TECO's logged `trans_loss` is this **times the tokens per frame** (`h·w`, 64 for
    its 8 × 8 grid; `teco.py:177-179`): multiply outside to reproduce its scale."""
    if logits.shape[:-1] != targets.shape or targets.shape != mask.shape:
        raise ValueError(
            f"masked_token_loss: `logits` must be `targets.shape + (num_codes,)` and `mask` "
            f"`targets.shape`, got logits {logits.shape}, targets {targets.shape}, mask "
            f"{mask.shape}."
        )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weight = mask.astype(jnp.float32)
    return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


# ----------------------------------------------------------------------------
# The prior.
# ----------------------------------------------------------------------------


class MlmHead(eqx.Module):
    """TECO's (and BERT's) weight-tied masked-token head, `MlmLayer`: `Dense(dim →
    vocab_dim)` → GELU (tanh approximation) → LayerNorm (ε = 1e-6) → `x @ Eᵀ + b`, with
    `E` the first `num_codes` rows of the token embedding (passed in) and `b` a
    learned `(num_codes,)` bias.

    The Dense weight starts normal with standard deviation 0.02 (the original's
    `kernel_init`), its bias and `b` zero."""

    dense: Dense
    norm: LayerNorm
    bias: Float[Array, " num_codes"]

    def __init__(
        self, dim: int, vocab_dim: int, num_codes: int, *, eps: float = 1e-6, key: PRNGKeyArray
    ):
        """**Arguments:**

        - `dim`: channels of the transformer's output.
        - `vocab_dim`: channels of the token embedding.
        - `num_codes`: the vocabulary size `K` (logits per position).
        - `eps`: the LayerNorm's epsilon.
        - `key`: a `jax.random` key.
        """
        dense = Dense(dim, vocab_dim, key=key)
        self.dense = eqx.tree_at(
            lambda d: d.weight, dense, 0.02 * jax.random.normal(key, (dim, vocab_dim), jnp.float32)
        )
        self.norm = LayerNorm(vocab_dim, eps=eps)
        self.bias = jnp.zeros((num_codes,), jnp.float32)

    def __call__(
        self,
        x: Float[Array, "*batch dim"],
        embeddings: Float[Array, "num_codes vocab_dim"],
    ) -> Float[Array, "*batch num_codes"]:
        """**Arguments:**

        - `x`: transformer outputs `(*batch, dim)`.
        - `embeddings`: the tied output embeddings, `(num_codes, vocab_dim)`.

        **Returns:** logits `(*batch, num_codes)`.
        """
        if embeddings.shape[0] != self.bias.shape[0]:
            raise ValueError(
                f"MlmHead: `embeddings` must have {self.bias.shape[0]} rows, got shape "
                f"{embeddings.shape}."
            )
        h = self.norm(_activations.gelu(self.dense(x), approximate=True))
        logits = h @ embeddings.T.astype(h.dtype)
        return logits + jnp.broadcast_to(self.bias.astype(logits.dtype), logits.shape)


class MaskGitPrior(eqx.Module):
    """TECO's MaskGit prior (`MaskGit`, `teco/models/maskgit.py`): logits over the `K`
    codes at every position of one frame's `h × w` token grid, given the tokens with
    some masked (`MASK_ID = -1`) and a per-position conditioning `cond`.

    ```
    x = concat[token_embed[tokens], cond]          # (h, w, vocab_dim + cond_dim); -1 → row K
    x = fc_in(x) + position()                      # Dense → (h, w, dim); row half ⊕ column half
    x = dropout(x), flattened row-major to h·w tokens
    x = blocks(x)                                  # pre-LN, full bidirectional attention,
                                                   # MLP x·σ(1.702x), LayerNorm ε 1e-6
    x = dropout(norm(gelu_tanh(fc_out(x))))        # Dense(dim → dim) → GELU → LayerNorm
    logits = mlm(x, token_embed[:K])               # weight-tied head (`MlmHead`)
    ```

    `token_embed` has `K + 1` rows; row `K` is [MASK] and is left out of the tied
    head. In TECO `cond` is the temporal transformer's output for the frame (`deter`,
    `D` channels), concatenated per position (no cross-attention). With `cond_dim=0`
    the prior is unconditional and `cond` must be `None`.

    One frame per call: `vmap` over batch and time (TECO shares the parameters over
    time). Dropout (all rates 0 in TECO's configs) drops the embedded input, each
    block's residual branches and the head's input when a `key` is passed.

    Parameters, as TECO's (`params/z_git/...`): `token_embed` (`token_embed`),
    `fc_in` (`net/Dense_0`), `position.tables` (`net/BroadcastPositionBiases_0/d_0,
    d_1`), `blocks[i]` (`net/TransformerLayer_i`: q/k/v/out biases, the out bias
    being the original's `out_bias`), `fc_out` (`net/Dense_1`), `norm`
    (`net/LayerNorm_0`), `mlm` (`mlm/Dense_0`, `LayerNorm_0`, `AddBias_0`). With
    TECO's DMLab preset (`TECO_MASKGIT_PRESETS["dmlab"]`) that is 26,046,464
    parameters, as the original.

    Differences from the original that leave the function and the parameter tree
    alone: the attention projections start truncated LeCun-normal (the original:
    untruncated fan-in normal); dropout is residual only (the original also drops
    attention probabilities and MLP hidden units; every rate is 0 in TECO's
    configs); LayerNorms compute in the input's dtype (the original's in float32).
    """

    shape: tuple[int, int] = eqx.field(static=True)
    num_codes: int = eqx.field(static=True)
    cond_dim: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    token_embed: Embedding
    fc_in: Dense
    position: FactorisedPositionEmbedding
    blocks: tuple[TransformerBlock, ...]
    fc_out: Dense
    norm: LayerNorm
    mlm: MlmHead

    def __init__(
        self,
        shape: tuple[int, int],
        num_codes: int,
        cond_dim: int,
        *,
        dim: int,
        num_heads: int,
        num_layers: int,
        mlp_dim: int | None = None,
        vocab_dim: int = 256,
        dropout: float = 0.0,
        eps: float = 1e-6,
        impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `shape`: the token grid `(h, w)` (8 × 8 in every TECO config).
        - `num_codes`: the vocabulary size `K` (TECO's codebook size).
        - `cond_dim`: channels of the per-position conditioning (TECO's `D`); 0 for
          none.
        - `dim`: the transformer's width `W`.
        - `num_heads`: attention heads (`dim` divisible by it).
        - `num_layers`: transformer blocks.
        - `mlp_dim`: the blocks' MLP hidden units (default `4 · dim`, as every TECO
          config).
        - `vocab_dim`: channels of the token embedding (256 in every TECO config).
        - `dropout`: dropout rate, in `[0, 1]` (0 in TECO's configs).
        - `eps`: the LayerNorms' epsilon.
        - `impl`: the `eqvid.kernels.attention` implementation.
        - `key`: a `jax.random` key.
        """
        grid = tuple(int(n) for n in shape)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"MaskGitPrior: `shape` must be (h, w) with sizes ≥ 1, got {shape}.")
        for name, value, low in (
            ("num_codes", num_codes, 1),
            ("cond_dim", cond_dim, 0),
            ("dim", dim, 2),
            ("num_heads", num_heads, 1),
            ("num_layers", num_layers, 0),
            ("vocab_dim", vocab_dim, 1),
        ):
            if value < low:
                raise ValueError(f"MaskGitPrior: `{name}` must be ≥ {low}, got {value}.")
        if dim % num_heads:
            raise ValueError(
                f"MaskGitPrior: `dim` ({dim}) must be divisible by `num_heads` ({num_heads})."
            )
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"MaskGitPrior: `dropout` must be in [0, 1], got {dropout}.")
        mlp_dim = 4 * dim if mlp_dim is None else mlp_dim
        k_embed, k_in, k_pos, k_blocks, k_out, k_mlm = jax.random.split(key, 6)
        self.token_embed = Embedding(num_codes + 1, vocab_dim, init_std=0.02, key=k_embed)
        self.fc_in = Dense(vocab_dim + cond_dim, dim, key=k_in)
        self.position = FactorisedPositionEmbedding(grid, dim, combine="concat", key=k_pos)
        self.blocks = tuple(
            TransformerBlock(
                dim,
                num_heads,
                mlp_dim,
                norm="pre",
                activation="gelu_sigmoid",
                dropout=dropout,
                use_bias=True,
                eps=eps,
                impl=impl,
                key=k,
            )
            for k in jax.random.split(k_blocks, num_layers)
        )
        self.fc_out = Dense(dim, dim, key=k_out)
        self.norm = LayerNorm(dim, eps=eps)
        self.mlm = MlmHead(dim, vocab_dim, num_codes, eps=eps, key=k_mlm)
        self.shape = (grid[0], grid[1])
        self.num_codes = num_codes
        self.cond_dim = cond_dim
        self.dropout = dropout

    def _check(self, tokens, cond):
        h, w = self.shape
        if tokens.shape != (h, w):
            raise ValueError(
                f"MaskGitPrior: `tokens` must have shape {(h, w)} (one frame; vmap over "
                f"batch and time), got {tuple(tokens.shape)}."
            )
        if self.cond_dim == 0:
            if cond is not None:
                raise ValueError("MaskGitPrior: built with cond_dim=0, so `cond` must be None.")
        elif cond is None or cond.shape != (h, w, self.cond_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(
                f"MaskGitPrior: `cond` must have shape {(h, w, self.cond_dim)}, got {got}."
            )
        if _is_concrete(tokens):
            values = np.asarray(tokens)
            if values.min() < MASK_ID or values.max() >= self.num_codes:
                raise ValueError(
                    f"MaskGitPrior: `tokens` must lie in [0, {self.num_codes}) or be "
                    f"{MASK_ID} ([MASK]), got values from {values.min()} to {values.max()}."
                )

    def embed_tokens(self, tokens: Int[ArrayLike, "h w"]) -> Float[Array, "h w vocab_dim"]:
        """Rows of `token_embed`: id `k ∈ [0, K)` → row `k`, `MASK_ID` (-1) → row `K`.
        Other ids (traced, unchecked) give NaN rows, as `Embedding`."""
        tokens = jnp.asarray(tokens)
        k = self.num_codes
        valid = (tokens >= 0) & (tokens < k)
        ids = jnp.where(tokens == MASK_ID, k, jnp.where(valid, tokens, k + 1))
        return self.token_embed.weight.at[ids].get(mode="fill", fill_value=jnp.nan)

    def __call__(
        self,
        tokens: Int[ArrayLike, "h w"],
        cond: Float[Array, "h w cond_dim"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "h w num_codes"]:
        """**Arguments:**

        - `tokens`: one frame's token ids `(h, w)` in `[0, K)`, `MASK_ID` (-1) where
          masked. Concrete ids out of range raise `ValueError`; traced ones give NaN.
        - `cond`: the per-position conditioning `(h, w, cond_dim)` (`None` when
          `cond_dim=0`). Its dtype is the compute dtype.
        - `key`: dropout randomness; `None` for evaluation (no dropout).

        **Returns:** logits `(h, w, K)` over the codes at every position.
        """
        tokens = jnp.asarray(tokens)
        self._check(tokens, cond)
        h, w = self.shape
        dtype = jnp.float32 if cond is None else cond.dtype
        x = self.embed_tokens(tokens).astype(dtype)
        if cond is not None:
            x = jnp.concatenate([x, cond], axis=-1)
        x = self.fc_in(x)
        x = x + self.position().astype(x.dtype)
        x = x.reshape(h * w, x.shape[-1])
        k_in, k_blocks, k_out = (None, None, None) if key is None else jax.random.split(key, 3)
        x = _dropout(x, self.dropout, k_in)
        block_keys = (
            [None] * len(self.blocks)
            if k_blocks is None
            else jax.random.split(k_blocks, len(self.blocks))
        )
        for block, k in zip(self.blocks, block_keys):
            x = block(x, key=k)
        x = self.norm(_activations.gelu(self.fc_out(x), approximate=True))
        x = _dropout(x, self.dropout, k_out)
        logits = self.mlm(x, self.token_embed.weight[: self.num_codes])
        return logits.reshape(h, w, self.num_codes)


# ----------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------


@typing.runtime_checkable
class TokenPrior(typing.Protocol):
    """What the samplers need of a prior: its grid `shape` `(h, w)` and a call
    `prior(tokens (h, w), cond) → logits (h, w, K)` (`MaskGitPrior` is one)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def __call__(self, tokens: Array, cond: Array | None, /) -> Array: ...


def sample_logits(
    key: PRNGKeyArray,
    logits: Float[Array, "*shape num_codes"],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Int[Array, "*shape"]:
    """A categorical sample of `logits / temperature` at every position, restricted to
    the `top_k` largest logits when given (ties with the k-th kept, as TECO's
    `topk_sample`). `temperature=0` (or `top_k=1`) takes the argmax. int32."""
    if temperature < 0:
        raise ValueError(f"sample_logits: `temperature` must be ≥ 0, got {temperature}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"sample_logits: `top_k` must be ≥ 1 or None, got {top_k}.")
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _check_start(name, prior, tokens):
    if not isinstance(prior, TokenPrior):
        raise TypeError(
            f"{name}: `prior` must be a MaskGitPrior or have a `shape` and be callable as "
            f"prior(tokens, cond), got {type(prior).__name__}."
        )
    shape = tuple(prior.shape)
    if tokens is None:
        return jnp.full(shape, MASK_ID, jnp.int32)
    if tuple(tokens.shape) != shape:
        raise ValueError(
            f"{name}: `tokens` must have the prior's shape {shape}, got {tuple(tokens.shape)}."
        )
    return jnp.asarray(tokens, jnp.int32)


def random_chunks(key: PRNGKeyArray, shape: Sequence[int], num_chunks: int) -> Int[Array, "*shape"]:
    """A uniformly random partition of the positions of `shape` into `num_chunks`
    chunks of near-equal size, as TECO's `sample_mask`: a random permutation of the
    `L = prod(shape)` positions split like `jnp.array_split` (the first `L mod n`
    chunks have `⌈L/n⌉` positions, the rest `⌊L/n⌋`; empty when `n > L`).

    **Returns:** every position's chunk index in `[0, num_chunks)`, int32; chunk `c`
    is the mask `ids == c`."""
    shape = tuple(shape)
    total = math.prod(shape)
    if num_chunks < 1:
        raise ValueError(f"random_chunks: `num_chunks` must be ≥ 1, got {num_chunks}.")
    sizes = [total // num_chunks + (i < total % num_chunks) for i in range(num_chunks)]
    chunk_of_rank = jnp.asarray(np.repeat(np.arange(num_chunks, dtype=np.int32), sizes))
    order = jax.random.permutation(key, total)  # order[j]: the position of rank j
    ids = jnp.zeros((total,), jnp.int32).at[order].set(chunk_of_rank)
    return ids.reshape(shape)


def draft_and_revise_masks(
    key: PRNGKeyArray,
    shape: Sequence[int],
    *,
    t_draft: int = 8,
    t_revise: int = 8,
    m: int = 2,
) -> Bool[Array, "passes *grid"]:  # noqa: F821
    """The masks of TECO's draft-and-revise passes, in order: the draft's `t_draft`
    chunks of one `random_chunks` partition, then for each of the `m` revise rounds the
    `t_revise` chunks of a fresh partition. `passes = t_draft + m · t_revise`. The key
    is split into `1 + m`, one per partition."""
    for name, value, low in (("t_draft", t_draft, 1), ("t_revise", t_revise, 1), ("m", m, 0)):
        if value < low:
            raise ValueError(f"draft_and_revise_masks: `{name}` must be ≥ {low}, got {value}.")
    keys = jax.random.split(key, 1 + m)
    rounds = [(keys[0], t_draft)] + [(k, t_revise) for k in keys[1:]]
    masks = []
    for k, n in rounds:
        ids = random_chunks(k, shape, n)
        masks.append(ids[None] == jnp.arange(n, dtype=jnp.int32).reshape((n,) + (1,) * ids.ndim))
    return jnp.concatenate(masks, axis=0)


def sample_chunks(
    prior: TokenPrior,
    cond: Float[Array, "h w cond_dim"] | None,
    masks: Bool[Array, "passes h w"],
    key: PRNGKeyArray,
    *,
    tokens: Int[Array, "h w"] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    return_history: bool = False,
) -> Int[Array, "h w"] | tuple[Int[Array, "h w"], Int[Array, "passes h w"]]:
    """One pass of the prior per mask, in order (a `lax.scan`): re-mask the mask's
    positions, run `prior(tokens, cond)`, sample every position (`sample_logits`) and
    write the sample **only** at the mask's positions. TECO's `MaskGit.sample`
    `_update`, for any sequence of masks.

    **Arguments:**

    - `prior`: a `MaskGitPrior` (or any `TokenPrior`).
    - `cond`: the frame's conditioning `(h, w, cond_dim)`, or `None`.
    - `masks`: `(passes, h, w)`, True at the positions each pass writes.
    - `key`: a `jax.random` key (split into one per pass).
    - `tokens`: the starting tokens (default: all `MASK_ID`).
    - `temperature`, `top_k`: as `sample_logits`.
    - `return_history`: also return the tokens after every pass.

    **Returns:** the tokens `(h, w)` (int32), and with `return_history` the tokens
    after each pass `(passes, h, w)`.
    """
    start = _check_start("sample_chunks", prior, tokens)
    if masks.shape[1:] != start.shape:
        raise ValueError(
            f"sample_chunks: `masks` must have shape (passes, *{start.shape}), got {masks.shape}."
        )

    def one_pass(current, inputs):
        mask, k = inputs
        current = jnp.where(mask, MASK_ID, current)
        drawn = sample_logits(k, prior(current, cond), temperature=temperature, top_k=top_k)
        current = jnp.where(mask, drawn, current)
        return current, current

    keys = jax.random.split(key, masks.shape[0])
    final, history = jax.lax.scan(one_pass, start, (masks, keys))
    return (final, history) if return_history else final


def sample_draft_and_revise(
    prior: TokenPrior,
    cond: Float[Array, "h w cond_dim"] | None,
    key: PRNGKeyArray,
    *,
    t_draft: int = 8,
    t_revise: int = 8,
    m: int = 2,
    temperature: float = 1.0,
    top_k: int | None = None,
    return_history: bool = False,
) -> Int[Array, "h w"] | tuple[Int[Array, "h w"], Int[Array, "passes h w"]]:
    """TECO's draft-and-revise sampling of one frame (`MaskGit.sample`): starting all
    masked, the **draft** splits the `h·w` positions into `t_draft` random chunks
    (`random_chunks`) and draws them one after the other, each given everything drawn
    before; then `m` **revise** rounds each split the positions into `t_revise` fresh
    random chunks and re-draw each chunk given all the other tokens. `t_draft + m ·
    t_revise` forward passes (24 in TECO), one `lax.scan`; jit-able (the counts,
    `temperature` and `top_k` are static). TECO samples at temperature 1 without
    top-k.

    `key` is split into a key for the masks (`draft_and_revise_masks`) and one for the
    samples (`sample_chunks`). `vmap` over a batch with one key per frame.

    **Returns:** the sampled tokens `(h, w)` in `[0, K)`, and with `return_history`
    the tokens after each pass `(passes, h, w)`.
    """
    start = _check_start("sample_draft_and_revise", prior, None)
    k_masks, k_sample = jax.random.split(key)
    masks = draft_and_revise_masks(k_masks, start.shape, t_draft=t_draft, t_revise=t_revise, m=m)
    return sample_chunks(
        prior,
        cond,
        masks,
        k_sample,
        tokens=start,
        temperature=temperature,
        top_k=top_k,
        return_history=return_history,
    )


def mask_by_random_topk(
    key: PRNGKeyArray,
    mask_len: Int[ArrayLike, ""],
    log_probs: Float[Array, "*shape"],
    temperature: float | Float[ArrayLike, ""] = 1.0,
) -> Bool[Array, "*shape"]:
    """MaskGIT's `mask_by_random_topk`: mask the `mask_len` positions of lowest
    Gumbel-perturbed confidence `log_probs + temperature · g`, `g ~ Gumbel(0, 1)`.

    Positions with `log_probs = +inf` (tokens already known) are never masked. Unlike
    the original's `confidence < cut_off`, ties are broken by position, so exactly
    `min(mask_len, #finite)` positions are masked."""
    flat = log_probs.reshape(-1).astype(jnp.float32)
    confidence = flat + temperature * jax.random.gumbel(key, flat.shape, jnp.float32)
    ranks = jnp.argsort(jnp.argsort(confidence, stable=True), stable=True)
    masking = (ranks < mask_len) & (flat < jnp.inf)
    return masking.reshape(log_probs.shape)


def sample_confidence(
    prior: TokenPrior,
    cond: Float[Array, "h w cond_dim"] | None,
    key: PRNGKeyArray,
    *,
    steps: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    choice_temperature: float = 4.5,
    schedule: str = "cosine",
    tokens: Int[Array, "h w"] | None = None,
    return_history: bool = False,
) -> Int[Array, "h w"] | tuple[Int[Array, "h w"], Int[Array, "steps h w"]]:
    """MaskGIT's confidence-based decoding (Chang et al. 2022, `parallel_decode.decode`)
    of one frame, an alternative to TECO's draft-and-revise. Starting from `tokens`
    (default all masked; `N` of them masked), step `i = 0 … steps-1`:

    1. sample every masked position (`sample_logits`; known tokens are kept);
    2. with `r = (i+1)/steps`, keep masked `n_i = max(1, min(u_i - 1, ⌊N ·
       mask_ratio(r, schedule, total=N)⌋))` of them (`u_i` masked before the step):
       those of lowest confidence (log-probability of the drawn token under the raw
       logits) perturbed by Gumbel noise of scale `choice_temperature · (1 - r)`
       (`mask_by_random_topk`; the noise anneals to 0);
    3. the last step keeps nothing masked (MaskGIT returns that step's samples).

    Each step reveals at least one token while any is masked; revealed tokens never
    change. `steps` forward passes in one `lax.scan`, jit-able. MaskGIT's defaults:
    cosine schedule, choice temperature 4.5, sampling temperature 1.

    **Returns:** the tokens `(h, w)` (int32, none masked), and with `return_history`
    the tokens after each step `(steps, h, w)`, `MASK_ID` where still masked.
    """
    if steps < 1:
        raise ValueError(f"sample_confidence: `steps` must be ≥ 1, got {steps}.")
    if choice_temperature < 0:
        raise ValueError(
            f"sample_confidence: `choice_temperature` must be ≥ 0, got {choice_temperature}."
        )
    _schedule_name(schedule)
    start = _check_start("sample_confidence", prior, tokens)
    n_start = jnp.sum(start == MASK_ID).astype(jnp.int32)

    def one_step(current, inputs):
        i, k = inputs
        k_sample, k_choice = jax.random.split(k)
        unknown = current == MASK_ID
        logits = prior(current, cond)
        drawn = sample_logits(k_sample, logits, temperature=temperature, top_k=top_k)
        drawn = jnp.where(unknown, drawn, current)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        chosen = jnp.take_along_axis(logp, drawn[..., None], axis=-1)[..., 0]
        confidence = jnp.where(unknown, chosen, jnp.inf)
        r = (i + 1).astype(jnp.float32) / steps
        ratio = mask_ratio(r, schedule, total=n_start)
        target = jnp.floor(n_start.astype(jnp.float32) * ratio).astype(jnp.int32)
        n_mask = jnp.maximum(1, jnp.minimum(jnp.sum(unknown) - 1, target))
        n_mask = jnp.where(i == steps - 1, 0, n_mask)
        masking = mask_by_random_topk(k_choice, n_mask, confidence, choice_temperature * (1 - r))
        current = jnp.where(masking, MASK_ID, drawn)
        return current, current

    keys = jax.random.split(key, steps)
    final, history = jax.lax.scan(one_step, start, (jnp.arange(steps, dtype=jnp.int32), keys))
    return (final, history) if return_history else final
