"""MeBT's training split, "MaskGen" (`mebt/mask_sampler.py`): per example, a random
order of the token positions, a mask ratio from a schedule, the first positions of the
order as the context and the last as the targets, as gathered index sets; the length
curriculum that trains long videos on random windows of latent time first; and the
loss, the mean cross-entropy over the masked tokens."""

import math
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

MeBTSchedule = typing.Literal[
    "cosine", "cosine_plus", "linear", "quadratic", "square", "cube", "sqrt", "convex"
]
"""The mask-ratio schedules of `MaskGen` (`mask_sampler.py`)."""

MEBT_SCHEDULES: tuple[str, ...] = typing.get_args(MeBTSchedule)

MeBTLengthPrior = typing.Literal["longest", "uniform", "gaussian2", "gaussian100000_2"]
"""The length curricula of the released configs (`t_prior`, `transformer.py`)."""

MEBT_LENGTH_PRIORS: tuple[str, ...] = typing.get_args(MeBTLengthPrior)


def mebt_mask_ratio(
    t: Float[ArrayLike, "*shape"], schedule: str = "linear"
) -> Float[Array, "*shape"]:
    """The fraction of tokens masked at time `t ∈ [0, 1]`, MaskGen's schedules:
    `cosine` `cos(πt/2)`, `cosine_plus` `(1 + cos πt)/2`, `linear` `1 − t` (training's),
    `quadratic` `(1 − t)²`, `square` `1 − t²`, `cube` `1 − t³`, `sqrt` `1 − √t`,
    `convex` `(1 − t)³`. float32 (so `cosine` at `t = 1` is −4.4e-8, as the original)."""
    t = jnp.asarray(t, jnp.float32)
    if schedule == "cosine":
        return jnp.cos(jnp.float32(math.pi) * t / 2)
    if schedule == "cosine_plus":
        return 0.5 * (1 + jnp.cos(jnp.float32(math.pi) * t))
    if schedule == "linear":
        return 1 - t
    if schedule == "quadratic":
        return (1 - t) ** 2
    if schedule == "square":
        return 1 - t**2
    if schedule == "cube":
        return 1 - t**3
    if schedule == "sqrt":
        return 1 - jnp.sqrt(t)
    if schedule == "convex":
        return (1 - t) ** 3
    raise ValueError(
        f"mebt_mask_ratio: `schedule` must be one of {MEBT_SCHEDULES}, got {schedule!r}."
    )


def mebt_num_masked(
    t: Float[ArrayLike, "*shape"], total: Int[ArrayLike, "*shape"] | int, schedule: str = "linear"
) -> Int[Array, "*shape"]:
    """`⌈mebt_mask_ratio(t) · total⌉`, clipped to `[0, total]` (MaskGen's count;
    int32)."""
    total = jnp.asarray(total, jnp.int32)
    n = jnp.ceil(mebt_mask_ratio(t, schedule) * total.astype(jnp.float32)).astype(jnp.int32)
    return jnp.clip(n, 0, total)


def mebt_length_prior(
    prior: str, num_steps: int, step: Int[ArrayLike, ""] | int = 0
) -> Float[Array, " {num_steps}"]:
    """The probabilities of training on a window of `L = 1 … num_steps` latent steps at
    training step `step` (`t_prior`):

    - `longest`: always the whole volume (`L = num_steps`);
    - `uniform`: every length alike;
    - `gaussianB_C` (`gaussian2` is `B = 30000`, `C = 2`; `gaussian100000_2`):
      `∝ exp(−(step − (L − 1)·B)² / (2·(B·C)²))`, a bump that moves one latent step
      longer every `B` training steps.
    """
    if num_steps < 1:
        raise ValueError(f"mebt_length_prior: `num_steps` must be ≥ 1, got {num_steps}.")
    lengths = jnp.arange(1, num_steps + 1, dtype=jnp.float32)
    if prior == "longest":
        log_w = jnp.where(lengths == num_steps, 0.0, -jnp.inf)
    elif prior == "uniform":
        log_w = jnp.zeros_like(lengths)
    elif prior in ("gaussian2", "gaussian100000_2"):
        b = 30000.0 if prior == "gaussian2" else 100000.0
        s = jnp.asarray(step, jnp.float32)
        # Normalised from the logarithms: far from the bump the weights underflow float32
        # (the original computes them in float64).
        log_w = -((s - (lengths - 1) * b) ** 2) / (2 * (b * 2.0) ** 2)
    else:
        raise ValueError(
            f"mebt_length_prior: `prior` must be one of {MEBT_LENGTH_PRIORS}, got {prior!r}."
        )
    return jax.nn.softmax(log_w)


class MaskGenSplit(eqx.Module):
    """One example's training split (`maskgen_split`). Index sets are positions in the
    flattened code volume; only the first `n_contexts` / `n_targets` entries are real."""

    context_index: Int[Array, " tokens"]
    n_contexts: Int[Array, ""]
    target_index: Int[Array, " budget"]
    n_targets: Int[Array, ""]
    n_masked: Int[Array, ""]
    """Masked tokens (the loss's divisor; more than `n_targets` when the budget cuts)."""
    window: Int[Array, "2"]
    """The trained window `[start, stop)` of positions (the whole volume unless the length
    curriculum cut it)."""


def maskgen_split(
    key: PRNGKeyArray,
    shape: tuple[int, int, int],
    *,
    schedule: str = "linear",
    budget: int | None = None,
    length_prior: str = "longest",
    step: Int[ArrayLike, ""] | int = 0,
) -> MaskGenSplit:
    """MaskGen's split of one code volume of `shape = (steps, height, width)`:

    1. a window length `L` from `mebt_length_prior(length_prior, steps, step)` and a
       start `s` uniform in `[0, steps − L]`: positions `[s·h·w, (s + L)·h·w)` (absolute:
       the window keeps its positions, as the original);
    2. a uniformly random order of the window's `n = L·h·w` positions;
    3. `t ~ U[0, 1)`, `n_masked = ⌈ratio(t)·n⌉` (at least 1);
    4. contexts: the first `n − n_masked` positions of the order; targets: the last
       `min(budget, n_masked)`.

    The original draws `t`, `L` and `s` once per batch and the order per example; here
    every example draws its own (one key per video, as every eqvid model), which is the
    same distribution for each example.
    """
    steps, h, w = shape
    total = steps * h * w
    budget = total if budget is None else budget
    if not 1 <= budget <= total:
        raise ValueError(
            f"maskgen_split: `budget` must be in [1, {total}] (the tokens), got {budget}."
        )
    k_len, k_start, k_perm, k_t = jax.random.split(key, 4)
    prior = mebt_length_prior(length_prior, steps, step)
    length = 1 + jax.random.categorical(k_len, jnp.log(prior))
    start = jax.random.randint(k_start, (), 0, steps - length + 1)
    lo, hi = start * h * w, (start + length) * h * w
    n = hi - lo
    perm = jax.random.permutation(k_perm, total)
    outside = (perm < lo) | (perm >= hi)
    order = perm[jnp.argsort(outside, stable=True)]  # the window's positions first, shuffled
    t = jax.random.uniform(k_t, (), jnp.float32)
    n_masked = jnp.maximum(1, mebt_num_masked(t, n, schedule))
    n_contexts = n - n_masked
    n_targets = jnp.minimum(budget, n_masked)
    i = jnp.arange(budget)
    target_index = order[jnp.clip(n - n_targets + i, 0, total - 1)]
    return MaskGenSplit(
        context_index=order,
        n_contexts=n_contexts.astype(jnp.int32),
        target_index=target_index,
        n_targets=n_targets.astype(jnp.int32),
        n_masked=n_masked.astype(jnp.int32),
        window=jnp.stack([lo, hi]).astype(jnp.int32),
    )


def target_cross_entropy(
    logits: Float[Array, "targets num_codes"],
    codes: Int[Array, " tokens"],
    split: MaskGenSplit,
) -> Float[Array, ""]:
    """The summed cross-entropy of the real targets of `split` (float32): divide the sum
    over a batch by the sum of `n_masked` for MaskGen's loss, the mean over masked
    tokens (`avg_loss: True`)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = codes[split.target_index]
    ce = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    real = jnp.arange(ce.shape[0]) < split.n_targets
    return jnp.sum(jnp.where(real, ce, 0.0))


def check_index_sets(
    n_tokens: int,
    context_index: np.ndarray,
    n_contexts: int,
    target_index: np.ndarray,
    n_targets: int,
    *,
    budget: int | None = None,
) -> None:
    """Check known index sets before they reach the network: counts within their
    buffers (and the targets within `budget`), positions in `[0, n_tokens)`, contexts and
    targets disjoint, no position twice. Raises a `ValueError` naming the counts."""
    context_index, target_index = np.asarray(context_index), np.asarray(target_index)
    if not 0 <= n_contexts <= context_index.shape[0]:
        raise ValueError(
            f"MeBT: n_contexts={n_contexts} is outside [0, {context_index.shape[0]}] (the "
            "context index set's length)."
        )
    if not 0 <= n_targets <= target_index.shape[0]:
        raise ValueError(
            f"MeBT: n_targets={n_targets} is outside [0, {target_index.shape[0]}] (the target "
            "index set's length)."
        )
    if budget is not None and n_targets > budget:
        raise ValueError(f"MeBT: {n_targets} targets are more than the budget of {budget}.")
    ctx, tgt = context_index[:n_contexts], target_index[:n_targets]
    if n_contexts + n_targets > n_tokens:
        raise ValueError(
            f"MeBT: {n_contexts} contexts + {n_targets} targets = {n_contexts + n_targets} "
            f"exceed the {n_tokens} tokens."
        )
    both = np.concatenate([ctx, tgt])
    if both.size and (both.min() < 0 or both.max() >= n_tokens):
        raise ValueError(
            f"MeBT: index sets must hold positions in [0, {n_tokens}); got values from "
            f"{both.min()} to {both.max()}."
        )
    overlap = np.intersect1d(ctx, tgt).size
    if overlap:
        raise ValueError(f"MeBT: {overlap} positions are both context and target.")
    if np.unique(both).size != both.size:
        raise ValueError("MeBT: an index set names a position twice.")


__all__ = [
    "MEBT_LENGTH_PRIORS",
    "MEBT_SCHEDULES",
    "MaskGenSplit",
    "check_index_sets",
    "maskgen_split",
    "mebt_length_prior",
    "mebt_mask_ratio",
    "mebt_num_masked",
    "target_cross_entropy",
]
