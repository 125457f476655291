"""MeBT's samplers (`Net2NetTransformer.sample` and `draft_and_revise` of Ugness/MeBT):
MaskGit decoding of a whole code volume in parallel, with Gumbel top-k choice of the
tokens to keep under an annealed context temperature, optional bootstrap steps, and
block-Gibbs revision rounds. One example at a time (`vmap` for a batch), jit-able: one
`lax.scan` per phase."""

import typing

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._mebt import MeBTTransformer
from ._mebt_maskgen import mebt_num_masked

ContextTemperatureSchedule = typing.Literal["linear", "constant", "cosine"]
"""How the context temperature anneals over sampling time `t`: `linear` `1 − t` (the
released scripts'), `constant` 1, `cosine` `cos(πt/2)`."""


def context_temperature(
    t: Float[Array, ""], temperature: float, schedule: str = "linear"
) -> Float[Array, ""]:
    """`temperature · schedule(t)` (the original's `ctemp_schedule`)."""
    t = jnp.asarray(t, jnp.float32)
    if schedule == "linear":
        return temperature * (1 - t)
    if schedule == "constant":
        return jnp.asarray(temperature, jnp.float32)
    if schedule == "cosine":
        return temperature * jnp.cos(jnp.float32(jnp.pi) * t / 2)
    raise ValueError(
        f"context_temperature: `schedule` must be one of "
        f"{typing.get_args(ContextTemperatureSchedule)}, got {schedule!r}."
    )


def sample_tokens(
    key: PRNGKeyArray,
    logits: Float[Array, "targets num_codes"],
    temperature: float,
    top_k: int | None = None,
) -> tuple[Int[Array, " targets"], Float[Array, " targets"]]:
    """One token per row from `softmax(logits / (temperature + 1e-8))`, restricted to the
    `top_k` largest logits (ties kept) when given, and the probability of the token
    drawn under that distribution (the original's confidence score)."""
    logits = logits.astype(jnp.float32) / (temperature + 1e-8)
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
    tokens = jax.random.categorical(key, logits, axis=-1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return tokens, jnp.exp(jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0])


def _index_sets(fixed: Bool[Array, " tokens"]):
    """Contexts (the fixed positions) and targets (the rest), each first in a buffer of
    every position."""
    n_fixed = jnp.sum(fixed).astype(jnp.int32)
    contexts = jnp.argsort(~fixed, stable=True).astype(jnp.int32)
    targets = jnp.argsort(fixed, stable=True).astype(jnp.int32)
    return contexts, n_fixed, targets, fixed.shape[0] - n_fixed


def _promote(score, n_targets, n_new):
    """Which of the (first `n_targets` real) targets are among the `n_new` best scores."""
    real = jnp.arange(score.shape[0]) < n_targets
    score = jnp.where(real, score, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-score, stable=True), stable=True)
    return real & (rank < n_new)


class MeBTSamplerState(eqx.Module):
    codes: Int[Array, " tokens"]
    fixed: Bool[Array, " tokens"]


def _step(network, state, key, *, n_new_fn, temperature, top_k, tau, random_scores):
    """Run the network on the current split, write every target's sample, and promote
    the `n_new_fn(n_targets)` best-scored targets to contexts."""
    contexts, n_contexts, targets, n_targets = _index_sets(state.fixed)
    k_tok, k_score = jax.random.split(key)
    logits = network(state.codes, contexts, n_contexts, targets, n_targets)
    tokens, prob = sample_tokens(k_tok, logits, temperature, top_k)
    real = jnp.arange(targets.shape[0]) < n_targets
    codes = state.codes.at[targets].set(jnp.where(real, tokens, state.codes[targets]))
    if random_scores:
        score = jax.random.uniform(k_score, prob.shape)
    else:
        # log p + τ·Gumbel: the order of the original's (p / Σp) / q^τ, q ~ Exp(1).
        score = jnp.log(prob) + tau * jax.random.gumbel(k_score, prob.shape)
    promote = _promote(score, n_targets, n_new_fn(n_targets))
    fixed = state.fixed.at[targets].set(state.fixed[targets] | promote)
    return MeBTSamplerState(codes, fixed)


def mebt_sample(
    network: MeBTTransformer,
    codes: Int[Array, " tokens"],
    known: Bool[Array, " tokens"],
    *,
    key: PRNGKeyArray,
    num_steps: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context_temp: float = 1.0,
    context_schedule: str = "linear",
    schedule: str = "cosine",
    bootstrap: int = 0,
) -> tuple[Int[Array, " tokens"], Int[Array, ""]]:
    """MeBT's MaskGit decoding (`sample`, strategy `maskgit`) of one code volume.

    `codes` `(N,)` holds the observed tokens where `known` is True (kept exactly; the
    other values are never read). With `m` the number of unknown tokens, step `k = 1 …
    num_steps` at `t = k / num_steps`:

    1. `n = ⌈schedule(t)·m⌉` tokens are to stay masked; if more than the current
       targets are, the step is skipped (no network call), as the original;
    2. the network predicts every target; each is drawn at `temperature` (within the
       `top_k` logits) and written into the volume;
    3. the targets beyond `n` with the best `log p + τ·Gumbel` become contexts, never
       drawn again, with `τ = context_temp · context_schedule(t)`.

    At `t = 1` every token is fixed. With `bootstrap > 0` that many steps come first, each
    fixing one uniformly random target drawn at temperature 1 without top-k (the
    128-frame scripts' first phase); `m` still counts them.

    **Returns:** the codes, and the number of network calls made (for the step counts).
    """
    if num_steps < 1:
        raise ValueError(f"mebt_sample: `num_steps` must be ≥ 1, got {num_steps}.")
    if codes.shape != known.shape:
        raise ValueError(
            f"mebt_sample: `codes` and `known` must have one shape, got {codes.shape} and "
            f"{known.shape}."
        )
    n_free = codes.shape[0] - jnp.sum(known).astype(jnp.int32)
    if bootstrap < 0:
        raise ValueError(f"mebt_sample: `bootstrap` must be ≥ 0, got {bootstrap}.")
    state = MeBTSamplerState(codes, known)
    k_boot, k_main = jax.random.split(key)

    def boot(state, k):
        state = _step(
            network, state, k, n_new_fn=lambda n: jnp.minimum(n, 1), temperature=1.0,
            top_k=None, tau=0.0, random_scores=True,
        )  # fmt: skip
        return state, None

    if bootstrap:
        state, _ = jax.lax.scan(boot, state, jax.random.split(k_boot, bootstrap))

    def main(carry, inputs):
        state, calls = carry
        k, step = inputs
        t = step.astype(jnp.float32) / num_steps
        n_masked = mebt_num_masked(t, n_free, schedule)
        n_targets = state.fixed.shape[0] - jnp.sum(state.fixed)
        run = n_masked <= n_targets

        def call(state):
            return _step(
                network, state, k, n_new_fn=lambda n: n - n_masked, temperature=temperature,
                top_k=top_k, tau=context_temperature(t, context_temp, context_schedule),
                random_scores=False,
            )  # fmt: skip

        state = jax.lax.cond(run, call, lambda s: s, state)
        return (state, calls + run.astype(jnp.int32)), None

    steps = jnp.arange(1, num_steps + 1)
    (state, calls), _ = jax.lax.scan(
        main, (state, jnp.int32(bootstrap)), (jax.random.split(k_main, num_steps), steps)
    )
    return state.codes, calls


def mebt_revise(
    network: MeBTTransformer,
    codes: Int[Array, " tokens"],
    known: Bool[Array, " tokens"],
    *,
    key: PRNGKeyArray,
    num_chunks: int,
    rounds: int,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Int[Array, " tokens"]:
    """MeBT's revision (`draft_and_revise` with the draft given): `rounds` times, split
    the unknown positions (`~known`) at random into `num_chunks` chunks and redraw each
    chunk in turn given every other token (block Gibbs), at `temperature`. The original
    asserts the chunks are equal; here chunk `i` is the positions ranked
    `[⌊i·m/c⌋, ⌊(i+1)·m/c⌋)` (equal when `c` divides `m`)."""
    if num_chunks < 1 or rounds < 0:
        raise ValueError(
            f"mebt_revise: need `num_chunks` ≥ 1 and `rounds` ≥ 0, got {num_chunks} and {rounds}."
        )
    n = codes.shape[0]
    n_free = n - jnp.sum(known).astype(jnp.int32)

    def chunk(codes, inputs):
        k, rank, i = inputs
        lo = (i * n_free) // num_chunks
        hi = ((i + 1) * n_free) // num_chunks
        redraw = (rank >= lo) & (rank < hi) & ~known
        contexts, n_contexts, targets, n_targets = _index_sets(~redraw)
        logits = network(codes, contexts, n_contexts, targets, n_targets)
        tokens, _ = sample_tokens(k, logits, temperature, top_k)
        real = jnp.arange(n) < n_targets
        return codes.at[targets].set(jnp.where(real, tokens, codes[targets])), None

    def one_round(codes, k):
        k_perm, k_draw = jax.random.split(k)
        # Unknown positions ranked 0 … m − 1 in a random order (known ones after them).
        order = jnp.argsort(
            jnp.where(known, jnp.inf, jax.random.uniform(k_perm, (n,))), stable=True
        )
        rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        inputs = (
            jax.random.split(k_draw, num_chunks),
            jnp.broadcast_to(rank, (num_chunks, n)),
            jnp.arange(num_chunks),
        )
        codes, _ = jax.lax.scan(chunk, codes, inputs)
        return codes, None

    codes, _ = jax.lax.scan(one_round, codes, jax.random.split(key, rounds))
    return codes


__all__ = [
    "ContextTemperatureSchedule",
    "context_temperature",
    "mebt_revise",
    "mebt_sample",
    "sample_tokens",
]
