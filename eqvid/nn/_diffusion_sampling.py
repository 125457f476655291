"""DDPM ancestral and DDIM sampling on a subsampled step grid, as MCVD's
`ddpm_sampler` and `ddim_sampler` (voletiv/mcvd-pytorch `models/__init__.py`), in
eqvid's step convention (`DiffusionSchedule`: `t = 0` the least noisy), inside one
`lax.scan` (no Python loop per step).

On the grid `t_0 > t_1 > … > t_{S-1}` (ᾱ_k = ᾱ_{t_k}, ᾱ_{k+1} of the next grid step,
1 after the last), each step reads the network's output `out = model_fn(x, t_k)` as
`prediction` says:

    "eps" (MCVD):  ε̂ = out,                    x̂₀ = (x - √(1 - ᾱ_k) ε̂) / √ᾱ_k
    "v" (Salimans & Ho 2022, v = √ᾱ ε - √(1-ᾱ) x₀):
                   ε̂ = √(1 - ᾱ_k) x + √ᾱ_k out,  x̂₀ = √ᾱ_k x - √(1 - ᾱ_k) out

then clips x̂₀ to [-1, 1] (`clip_x0`) and moves on:

    DDPM: β = 1 - ᾱ_k/ᾱ_{k+1};  x ← √ᾱ_{k+1} β/(1-ᾱ_k) x̂₀ + √(1-β)(1-ᾱ_{k+1})/(1-ᾱ_k) x
          + √((1-ᾱ_{k+1})/(1-ᾱ_k) β) z      (no noise at the last step)
    DDIM: σ = η √((1-ᾱ_{k+1})/(1-ᾱ_k)) √(1 - ᾱ_k/ᾱ_{k+1});
          x ← √ᾱ_{k+1} x̂₀ + √(1 - ᾱ_{k+1} - σ²) ε̂ + σ z

then (`final_denoise`, MCVD's `denoise`) `x ← x - √(1 - ᾱ_{S-1}) ε̂(x, t_{S-1})`.
MCVD's final step calls its network with label `S - 1` (with 100 of 1000 steps a very
noisy level, ᾱ = 2.7e-4) while scaling by the last grid step's `√(1 - ᾱ)`; eqvid
evaluates the network at that same last grid step.
"""

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._diffusion_schedule import DiffusionSchedule

Sampler = Literal["ddpm", "ddim"]
Prediction = Literal["eps", "v"]


def eps_and_x0(
    out: Float[Array, "*shape"],
    x: Float[Array, "*shape"],
    alpha_bar: Float[ArrayLike, ""],
    prediction: Prediction,
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    """`(ε̂, x̂₀)` from the network output `out` for the noisy `x` at a step of
    cumulative `alpha_bar`: `out` is ε̂ (`prediction="eps"`) or v̂ (`"v"`)."""
    a = jnp.asarray(alpha_bar, jnp.float32)
    if prediction == "eps":
        return out, (x - jnp.sqrt(1 - a) * out) / jnp.sqrt(a)
    if prediction == "v":
        return jnp.sqrt(1 - a) * x + jnp.sqrt(a) * out, jnp.sqrt(a) * x - jnp.sqrt(1 - a) * out
    raise ValueError(f"`prediction` must be 'eps' or 'v', got {prediction!r}.")


def diffusion_sample(
    model_fn: Callable[[Array, Array], Array],
    noise: Float[Array, "*shape"],
    schedule: DiffusionSchedule,
    *,
    steps: int,
    sampler: Sampler = "ddpm",
    eta: float = 0.0,
    clip_x0: bool = True,
    final_denoise: bool = True,
    prediction: Prediction = "eps",
    key: PRNGKeyArray,
) -> Float[Array, "*shape"]:
    """Draw `x₀` from `x_T = noise` with `steps` calls of `model_fn(x, t)` (plus one
    for `final_denoise`), `t` an int32 scalar in eqvid's convention, which returns
    ε̂ (`prediction="eps"`) or v̂ (`"v"`). `sampler`:
    `"ddpm"` (ancestral) or `"ddim"` (`eta` 0: deterministic given the noise; 1:
    DDPM-like variance). `steps` must divide the schedule's steps. `key` draws the
    per-step noise."""
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"diffusion_sample: `sampler` must be 'ddpm' or 'ddim', got {sampler!r}.")
    if eta < 0:
        raise ValueError(f"diffusion_sample: `eta` must be ≥ 0, got {eta}.")
    grid = schedule.grid(steps)
    ab = schedule.alpha_bars[grid]
    ab_next = np.concatenate([ab[1:], [1.0]])
    last = np.arange(steps) == steps - 1
    dtype = noise.dtype

    def step(x, inputs):
        t, a, a_next, is_last, k = inputs
        eps, x0 = eps_and_x0(model_fn(x, t).astype(dtype), x, a, prediction)
        if clip_x0:
            x0 = jnp.clip(x0, -1, 1)
        if sampler == "ddpm":
            beta = 1 - a / a_next
            mean = (
                jnp.sqrt(a_next) * beta / (1 - a) * x0
                + jnp.sqrt(1 - beta) * (1 - a_next) / (1 - a) * x
            )
            std = jnp.sqrt((1 - a_next) / (1 - a) * beta)
            x = mean + jnp.where(is_last, 0.0, std) * jax.random.normal(k, x.shape, dtype)
        else:
            sigma = eta * jnp.sqrt((1 - a_next) / (1 - a)) * jnp.sqrt(1 - a / a_next)
            x = jnp.sqrt(a_next) * x0 + jnp.sqrt(jnp.maximum(1 - a_next - sigma**2, 0)) * eps
            if eta > 0:  # η = 0 (deterministic DDIM) draws no noise
                x = x + sigma * jax.random.normal(k, x.shape, dtype)
        return x.astype(dtype), None

    as_f = lambda v: jnp.asarray(v, jnp.float32)
    inputs = (
        jnp.asarray(grid, jnp.int32), as_f(ab), as_f(ab_next), jnp.asarray(last),
        jax.random.split(key, steps),
    )  # fmt: skip
    x, _ = jax.lax.scan(step, noise, inputs)
    if final_denoise:
        t_last = jnp.asarray(grid[-1], jnp.int32)
        eps, _ = eps_and_x0(model_fn(x, t_last).astype(dtype), x, as_f(ab[-1]), prediction)
        x = x - jnp.sqrt(as_f(1 - ab[-1])) * eps
    return x
