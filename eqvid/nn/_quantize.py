"""Vector quantisation: the codebook of eqvid's VQGANs (taming-transformers' 2-D VQGAN,
TATS's 3-D VQGAN, TECO's cosine codebook), trained by gradient or by exponential
moving averages (EMA) with dead-code restarts."""

import math
import typing
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._roles import role

BetaOn = typing.Literal["commitment", "codebook"]
"""Which loss term `beta` weighs (see `VectorQuantizer`)."""

_NORM_EPS = 1e-6
"""Smallest norm `cosine` normalisation divides by (TECO's `normalize` clips at 1e-6)."""

_HIGHEST = jax.lax.Precision.HIGHEST
"""Full float32 matrix products (no TF32 / bfloat16 passes on accelerators): nearest
codes and EMA sums as PyTorch computes them by default."""


class Quantized(eqx.Module):
    """What `VectorQuantizer` returns for a batch of vectors `z` `(*batch, dim)`."""

    quantized: Float[Array, "*batch dim"]
    """The straight-through code vectors `z + stop_gradient(e - z)`: forward value the
    nearest code vector `e`, gradient the identity onto `z` (with `cosine`, onto the
    normalised `z`). In the dtype of `z`."""
    codes: Int[Array, "*batch"]
    """The index of each vector's nearest code, int32 in `[0, n_embed)`."""
    loss: Float[Array, ""]
    """The term the model adds to its loss (see `VectorQuantizer` for the weighting)."""
    commitment_loss: Float[Array, ""]
    """`mean((z - sg[e])²)` over all elements: pulls the encoder towards its codes."""
    codebook_loss: Float[Array, ""]
    """`mean((sg[z] - e)²)`: pulls the codes towards the encoder's outputs (0 with EMA
    updates, where the codebook does not learn by gradient)."""
    perplexity: Float[Array, ""]
    """`exp(-Σ p log p)`, `p` the codes' frequencies in this batch: the effective number
    of codes used (1 … n_embed)."""
    usage: Float[Array, ""]
    """The fraction of the `n_embed` codes used at least once in this batch."""


class CodebookEMA(NamedTuple):
    """The model state of an EMA codebook (`VectorQuantizer(ema_decay=...)`)."""

    codebook: Float[Array, "n_embed dim"]
    """The code vectors (not normalised, also with `cosine`)."""
    cluster_size: Float[Array, " n_embed"]
    """`N`: the moving average of how many vectors each code was assigned."""
    embed_sum: Float[Array, "n_embed dim"]
    """`S`: the moving average of the sum of the vectors assigned to each code."""


def _compute_dtype(dtype) -> jnp.dtype:
    """float32, or float64 for float64 input (no implicit promotion: bfloat16 and
    float32 do not promote under `jax_numpy_dtype_promotion="strict"`)."""
    return jnp.dtype(jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32)


def _l2_normalise(x: Array) -> Array:
    # rsqrt of the clipped squared norm: finite gradient at x = 0 (the norm's is NaN).
    return x * jax.lax.rsqrt(
        jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), _NORM_EPS**2)
    )


class VectorQuantizer(eqx.Module):
    """Maps each vector of `z` `(*batch, embed_dim)` to its nearest code vector among
    `n_embed`, with a straight-through gradient (VQ-VAE, van den Oord et al. 2017).

    **Distance.** Squared Euclidean, `|z|² - 2 z·e + |e|²` (ties go to the lowest
    index). With `cosine=True` (TECO's `Codebook`), `z` and the code vectors are
    l2-normalised first and the distance is `2 - 2 z·e`; the returned code vectors are
    unit vectors and the losses and the straight-through path use the normalised `z`.
    Distances and EMA sums are computed in (at least) float32 at full precision.

    **Loss.** With `c = commitment_loss = mean((z - sg[e])²)` and
    `q = codebook_loss = mean((sg[z] - e)²)` (means over all elements):

    - `beta_on="commitment"`: `loss = q + beta · c`, the VQ-VAE paper's weighting
      (TATS's `0.25 · mse(z, sg[e])`, TECO's codebook).
    - `beta_on="codebook"`: `loss = c + beta · q`, taming-transformers'
      `VectorQuantizer2` with `legacy=True` (the default that its `VQModel` trains
      with: "due to a bug the beta term was applied to the wrong term").
    - With EMA updates (`ema_decay`): `loss = beta · c` and `codebook_loss` is 0
      (TATS's `Codebook`); `beta_on` does not apply.

    TECO writes both terms with `optax.l2_loss` (half the squared error): its total
    is half of `loss` with `beta=0.25, beta_on="commitment", cosine=True`.

    **Trained codebook** (no `ema_decay`): the parameter `embedding` `(n_embed,
    embed_dim)`, learning only from `codebook_loss`. Initialised uniform in
    `[-1/n_embed, 1/n_embed]` as taming-transformers (`cosine=False`), or normal with
    standard deviation 0.02 as TECO (`cosine=True`). Roles: axes `("vocab", "embed")`,
    kept float32 under mixed precision.

    **EMA codebook** (`ema_decay=d`, TATS's `Codebook`, VQ-VAE-2): the codebook lives
    in the model state (build with `eqx.nn.make_with_state`), a `CodebookEMA`
    `(codebook, cluster_size N, embed_sum S)` under the `StateIndex` field `ema`;
    `embedding` is None. The codebook starts standard normal (TATS's
    `torch.randn`) with `N = 1` and `S = codebook`, as TATS's state after its
    first-batch initialisation (`N ← 1`, `z_avg ← embeddings`; eqvid does not
    initialise from data). A call with `update=True` moves it, from the counts `n_k`
    and sums `s_k` of the vectors assigned to each code in the whole batch:

        N ← d·N + (1 - d)·n_k,   S ← d·S + (1 - d)·s_k,
        N̂_k = (N_k + eps) / (ΣN + n_embed·eps) · ΣN    (Laplace smoothing),
        codebook = S / N̂.

    The codes of that call come from the codebook before the update. TATS uses
    `d = 0.99`, `eps = 1e-7`.

    **Dead-code restart** (`restart_threshold=t`, EMA only, TATS's default
    `restart_thres=1.0`): after an update, every code whose `N_k < t` is replaced by a
    vector of the current batch (normalised with `cosine`) drawn at random with `key`,
    distinct vectors while the batch has at least `n_embed` of them; a smaller batch is
    tiled with noise of standard deviation `0.01 / √dim`, as TATS's `_tile`. TATS
    replaces only the code vector; here the code's `N` is also reset to 1 and its `S`
    to the vector (TATS's initialisation), so that the next update keeps it rather
    than falling back to the stale `S / N̂`.

    All updates are whole-batch `jax.numpy` reductions: they work under `jit` and on a
    batch sharded across devices (the sums span the global batch, as TATS's
    `all_reduce`). Call with `update=True` on the whole batch, not under `vmap`.
    """

    n_embed: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    beta: float = eqx.field(static=True)
    beta_on: BetaOn = eqx.field(static=True)
    cosine: bool = eqx.field(static=True)
    ema_decay: float | None = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    restart_threshold: float | None = eqx.field(static=True)
    ema: eqx.nn.StateIndex | None
    # `role(...)` fields last: type checkers read `role(...)` as a default value.
    embedding: Float[Array, "n_embed dim"] | None = eqx.field(
        metadata=role(axes=("vocab", "embed"), keep_float32=True)
    )

    def __init__(
        self,
        n_embed: int,
        embed_dim: int,
        *,
        beta: float = 0.25,
        beta_on: BetaOn = "commitment",
        cosine: bool = False,
        ema_decay: float | None = None,
        eps: float = 1e-5,
        restart_threshold: float | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `n_embed`: the number of codes.
        - `embed_dim`: the width of each code vector (the last axis of `z`).
        - `beta`: the weight of one loss term, ≥ 0 (0.25 in VQ-VAE, taming, TATS, TECO).
        - `beta_on`: the term `beta` weighs: `"commitment"` (VQ-VAE, TATS, TECO) or
          `"codebook"` (taming-transformers' VQGAN); ignored with EMA updates.
        - `cosine`: l2-normalise `z` and the codes (TECO's codebook).
        - `ema_decay`: in `(0, 1)` for a codebook updated by moving averages kept in
          the model state (TATS: 0.99); None for a codebook trained by gradient.
        - `eps`: the Laplace smoothing of the EMA cluster sizes, > 0 (TATS: 1e-7).
        - `restart_threshold`: restart codes whose EMA count falls below it (needs
          `ema_decay`; TATS: 1.0); None: never.
        - `key`: a `jax.random` key for the initial codebook.
        """
        for name, value in (("n_embed", n_embed), ("embed_dim", embed_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VectorQuantizer: `{name}` must be an int ≥ 1, got {value!r}.")
        if not beta >= 0:
            raise ValueError(f"VectorQuantizer: `beta` must be ≥ 0, got {beta}.")
        if beta_on not in ("commitment", "codebook"):
            raise ValueError(
                f"VectorQuantizer: `beta_on` must be 'commitment' or 'codebook', got {beta_on!r}."
            )
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"VectorQuantizer: `ema_decay` must be in (0, 1), got {ema_decay}.")
        if not eps > 0:
            raise ValueError(f"VectorQuantizer: `eps` must be > 0, got {eps}.")
        if restart_threshold is not None:
            if ema_decay is None:
                raise ValueError(
                    "VectorQuantizer: `restart_threshold` needs an EMA codebook (`ema_decay`), "
                    f"got restart_threshold={restart_threshold} with ema_decay=None."
                )
            if not restart_threshold > 0:
                raise ValueError(
                    f"VectorQuantizer: `restart_threshold` must be > 0, got {restart_threshold}."
                )
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.beta = float(beta)
        self.beta_on = beta_on
        self.cosine = bool(cosine)
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.eps = float(eps)
        self.restart_threshold = None if restart_threshold is None else float(restart_threshold)
        shape = (n_embed, embed_dim)
        if ema_decay is not None:
            codebook = jax.random.normal(key, shape, jnp.float32)
            self.ema = eqx.nn.StateIndex(
                CodebookEMA(codebook, jnp.ones((n_embed,), jnp.float32), codebook)
            )
            self.embedding = None
        else:
            self.ema = None
            if cosine:
                self.embedding = 0.02 * jax.random.normal(key, shape, jnp.float32)
            else:
                self.embedding = jax.random.uniform(
                    key, shape, jnp.float32, -1.0 / n_embed, 1.0 / n_embed
                )

    # ------------------------------------------------------------------------------
    # The codebook.
    # ------------------------------------------------------------------------------

    def _stored(self, state: eqx.nn.State | None, caller: str) -> Array:
        """The raw codebook: the parameter, or (EMA) the state's."""
        if self.embedding is not None:
            return self.embedding
        if state is None or self.ema is None:
            raise ValueError(
                f"VectorQuantizer.{caller}: `state` is required: the EMA codebook lives in the "
                "model state (build with `eqx.nn.make_with_state`, or fold it in with "
                "`with_state(state)`), got state=None."
            )
        return state.get(self.ema).codebook

    def _table(self, state: eqx.nn.State | None, caller: str, dtype) -> Array:
        """The code vectors as quantisation uses them (normalised with `cosine`; no
        gradient with EMA), in `dtype`."""
        table = self._stored(state, caller).astype(dtype)
        if self.ema_decay is not None:
            table = jax.lax.stop_gradient(table)
        return _l2_normalise(table) if self.cosine else table

    def codebook(self, state: eqx.nn.State | None = None) -> Float[Array, "n_embed dim"]:
        """The code vectors as `lookup` returns them (unit vectors with `cosine`),
        float32.

        **Arguments:**

        - `state`: the model state (required for an EMA codebook not folded in with
          `with_state`).
        """
        stored = self._stored(state, "codebook")
        return self._table(state, "codebook", _compute_dtype(stored.dtype))

    def lookup(
        self, codes: Int[ArrayLike, "*batch"], state: eqx.nn.State | None = None
    ) -> Float[Array, "*batch dim"]:
        """The code vectors of `codes` (unit vectors with `cosine`), float32.

        Codes of known value (not traced) outside `[0, n_embed)` raise a `ValueError`;
        a traced out-of-range code gives a row of NaNs.

        **Arguments:**

        - `codes`: integer codes `(*batch)` in `[0, n_embed)`.
        - `state`: the model state (required for an EMA codebook not folded in with
          `with_state`).

        **Returns:** `(*batch, embed_dim)`.
        """
        if not isinstance(codes, Tracer):
            values = np.asarray(codes)
            if values.size:
                low, high = int(values.min()), int(values.max())
                if low < 0 or high >= self.n_embed:
                    bad = low if low < 0 else high
                    raise ValueError(
                        f"VectorQuantizer.lookup: `codes` must lie in [0, {self.n_embed}), "
                        f"got code {bad}."
                    )
        table = self.codebook(state)
        ids = jnp.asarray(codes)
        ids = jnp.where(ids < 0, self.n_embed, ids)  # negatives out of range: NaN, not wrap
        return table.at[ids].get(mode="fill", fill_value=jnp.nan)

    def with_state(self, state: eqx.nn.State | None) -> "VectorQuantizer":
        """This quantiser with the EMA codebook of `state` folded in as a fixed
        `embedding`, so that `lookup`, `codebook` and `__call__` work without a state
        (sampling, evaluation). It no longer updates (`update=True` raises) and its
        codebook gets no gradient. A quantiser without EMA state returns itself.

        **Arguments:**

        - `state`: the model state holding the EMA codebook.
        """
        if self.ema is None:
            return self
        if state is None:
            raise ValueError(
                "VectorQuantizer.with_state: `state` must hold the EMA codebook, got None."
            )
        codebook = state.get(self.ema).codebook
        return eqx.tree_at(
            lambda m: (m.embedding, m.ema), self, (codebook, None), is_leaf=lambda x: x is None
        )

    # ------------------------------------------------------------------------------
    # Quantisation.
    # ------------------------------------------------------------------------------

    def __call__(
        self,
        z: Float[Array, "*batch dim"],
        state: eqx.nn.State | None = None,
        *,
        key: PRNGKeyArray | None = None,
        update: bool = False,
    ) -> tuple[Quantized, eqx.nn.State | None]:
        """**Arguments:**

        - `z`: vectors `(*batch, embed_dim)` (any leading axes, at least one vector).
        - `state`: the model state: required for an EMA codebook (unless folded in with
          `with_state`); passed through unchanged otherwise.
        - `key`: a `jax.random` key for dead-code restarts (required with
          `restart_threshold` and `update=True`; unused otherwise).
        - `update`: (a Python bool) update the EMA codebook from this batch and return
          the new state (as `eqx.nn.State.set`, the state passed in is then used up).
          No effect on a codebook trained by gradient.

        **Returns:** `(Quantized, state)`: the codes, straight-through code vectors,
        losses and statistics, and the state (updated if `update`).
        """
        if z.ndim < 1 or z.shape[-1] != self.embed_dim:
            raise ValueError(
                f"VectorQuantizer: `z` must have shape (*batch, {self.embed_dim}), got {z.shape}."
            )
        count = math.prod(z.shape[:-1])
        if count == 0:
            raise ValueError(f"VectorQuantizer: `z` must hold at least one vector, got {z.shape}.")
        ema_update = update and self.ema_decay is not None
        if ema_update:
            if self.ema is None:
                raise ValueError(
                    "VectorQuantizer: `update=True` needs the EMA state, but this quantiser's "
                    "codebook was folded in by `with_state` (a fixed codebook)."
                )
            if state is None:
                raise ValueError(
                    "VectorQuantizer: `update=True` needs `state` (the EMA codebook), got None."
                )
            if self.restart_threshold is not None and key is None:
                raise ValueError(
                    "VectorQuantizer: `key` is required for dead-code restarts "
                    f"(restart_threshold={self.restart_threshold}) with update=True, got None."
                )

        dtype = _compute_dtype(z.dtype)
        flat = z.reshape(count, self.embed_dim).astype(dtype)
        if self.cosine:
            flat = _l2_normalise(flat)
        table = self._table(state, "__call__", dtype)

        products = jnp.matmul(jax.lax.stop_gradient(flat), table.T, precision=_HIGHEST)
        if self.cosine:
            distances = 2 - 2 * products
        else:
            distances = (
                jnp.sum(jnp.square(jax.lax.stop_gradient(flat)), axis=1, keepdims=True)
                - 2 * products
                + jnp.sum(jnp.square(table), axis=1)[None, :]
            )
        codes = jnp.argmin(distances, axis=1).astype(jnp.int32)
        vectors = jnp.take(table, codes, axis=0)

        commitment = jnp.mean(jnp.square(flat - jax.lax.stop_gradient(vectors)))
        if self.ema_decay is not None:
            codebook_loss = jnp.zeros((), dtype)
            loss = self.beta * commitment
        else:
            codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(flat) - vectors))
            if self.beta_on == "commitment":
                loss = codebook_loss + self.beta * commitment
            else:
                loss = commitment + self.beta * codebook_loss
        quantized = flat + jax.lax.stop_gradient(vectors - flat)

        onehot = jax.nn.one_hot(codes, self.n_embed, dtype=dtype)
        counts = jnp.sum(onehot, axis=0)
        p = counts / count
        plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0)
        perplexity = jnp.exp(-jnp.sum(plogp))
        usage = jnp.mean((counts > 0).astype(dtype))

        if ema_update:
            assert state is not None and self.ema is not None
            state = state.set(
                self.ema,
                self._ema_step(
                    state.get(self.ema), jax.lax.stop_gradient(flat), onehot, counts, key
                ),
            )
        result = Quantized(
            quantized=quantized.reshape(z.shape).astype(z.dtype),
            codes=codes.reshape(z.shape[:-1]),
            loss=loss.astype(jnp.float32),
            commitment_loss=commitment.astype(jnp.float32),
            codebook_loss=codebook_loss.astype(jnp.float32),
            perplexity=perplexity.astype(jnp.float32),
            usage=usage.astype(jnp.float32),
        )
        return result, state

    def _ema_step(
        self,
        old: CodebookEMA,
        flat: Array,
        onehot: Array,
        counts: Array,
        key: PRNGKeyArray | None,
    ) -> CodebookEMA:
        """The EMA update of one batch (`flat` `(M, dim)`, its codes' one-hot `(M,
        n_embed)` and counts `(n_embed,)`), then the dead-code restart."""
        assert self.ema_decay is not None
        d = self.ema_decay
        store = old.codebook.dtype
        sums = jnp.matmul(onehot.T, flat, precision=_HIGHEST)
        size = d * old.cluster_size.astype(flat.dtype) + (1 - d) * counts
        embed_sum = d * old.embed_sum.astype(flat.dtype) + (1 - d) * sums
        total = jnp.sum(size)
        smoothed = (size + self.eps) / (total + self.n_embed * self.eps) * total
        codebook = embed_sum / smoothed[:, None]
        if self.restart_threshold is not None:
            assert key is not None
            dead = size < self.restart_threshold
            m = flat.shape[0]
            repeats = -(-self.n_embed // m)  # TATS's `_tile`: enough copies for every code
            perm_key, noise_key = jax.random.split(key)
            pool = jnp.tile(jnp.arange(m), repeats)
            picks = jax.random.permutation(perm_key, pool)[: self.n_embed]
            fresh = jnp.take(flat, picks, axis=0)
            if repeats > 1:
                std = 0.01 / math.sqrt(self.embed_dim)
                fresh = fresh + std * jax.random.normal(noise_key, fresh.shape, fresh.dtype)
            codebook = jnp.where(dead[:, None], fresh, codebook)
            embed_sum = jnp.where(dead[:, None], fresh, embed_sum)
            size = jnp.where(dead, jnp.ones_like(size), size)
        return CodebookEMA(
            codebook.astype(store),
            size.astype(old.cluster_size.dtype),
            embed_sum.astype(old.embed_sum.dtype),
        )
