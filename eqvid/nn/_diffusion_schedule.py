"""The DDPM noise schedule, in eqvid's step convention.

**eqvid's convention** (DDPM's, Ho et al. 2020): steps `t = 0 … T-1`, `t = 0` the
least noisy and `t = T-1` the noisiest; `ᾱ_t = Π_{s ≤ t} (1 - β_s)` decreases with
`t`, and the forward process is `x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε`.

MCVD indexes the other way: its label `i = T - 1 - t` (label 0 the noisiest), its
betas `linspace(0.02, 1e-4)` in decreasing order and `alphas[i] = Π_{j ≥ i} (1 - β_j)`.
The tables are the same, read backwards: `DiffusionSchedule.mcvd_label` converts.
"""

import math
from typing import Literal

import numpy as np
from jaxtyping import Float

ScheduleKind = Literal["linear", "cosine"]


def beta_schedule(
    kind: ScheduleKind,
    num_steps: int,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_offset: float = 0.008,
    max_beta: float = 0.999,
) -> Float[np.ndarray, " {num_steps}"]:
    """`β_t` for `t = 0 … num_steps - 1` (float64):

    - `linear`: `linspace(beta_start, beta_end, T)` (MCVD's `sigma_begin` 0.02 is
      `beta_end`, its `sigma_end` 1e-4 is `beta_start`);
    - `cosine` (Nichol & Dhariwal 2021): `ᾱ_t = f((t + 1) / T) / f(0)` with `f(u) =
      cos²((u + s) / (1 + s) · π / 2)`, `s = cosine_offset`, and `β_t = 1 - ᾱ_t /
      ᾱ_{t-1}` clipped to `max_beta`. MCVD leaves the last β unclipped (it is 1: ᾱ
      becomes 0 and its `x_0` estimate divides by zero); eqvid clips as Nichol & Dhariwal.
    """
    if num_steps < 2:
        raise ValueError(f"beta_schedule: `num_steps` must be ≥ 2, got {num_steps}.")
    if kind == "linear":
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                "beta_schedule: the linear schedule needs 0 < beta_start ≤ beta_end < 1; got "
                f"{beta_start}, {beta_end}."
            )
        return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    if kind == "cosine":
        u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        f = np.cos((u + cosine_offset) / (1 + cosine_offset) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)
    raise ValueError(f"beta_schedule: `kind` must be 'linear' or 'cosine', got {kind!r}.")


class DiffusionSchedule:
    """The tables of one schedule (NumPy float64; used as constants inside `jit`):
    `betas` `β_t`, `alpha_bars` `ᾱ_t = Π_{s≤t}(1 - β_s)`, for `t = 0 … T-1`."""

    def __init__(self, kind: ScheduleKind = "linear", num_steps: int = 1000, **kwargs):
        """`kind`, `num_steps` and the keyword arguments of `beta_schedule`."""
        self.kind, self.num_steps = kind, num_steps
        self.betas = beta_schedule(kind, num_steps, **kwargs)
        self.alpha_bars = np.cumprod(1 - self.betas)

    def mcvd_label(self, t):
        """MCVD's label for eqvid's step `t` (`T - 1 - t`; the reverse too)."""
        return self.num_steps - 1 - t

    def grid(self, steps: int) -> np.ndarray:
        """The steps a sampler visits with `steps` network calls, noisiest first: every
        `T / steps`-th step from `T - 1` down (MCVD's `range(0, T, T // steps)` grid, in
        eqvid's convention: 999, 989, …, 9 for 100 of 1000). `steps` must divide `T`."""
        if steps < 1 or self.num_steps % steps:
            divisors = [d for d in (10, 20, 25, 50, 100, 200, 250, 500) if self.num_steps % d == 0]
            raise ValueError(
                f"sampling steps must divide the schedule's {self.num_steps} steps, got {steps}; "
                f"e.g. one of {divisors or [self.num_steps]}."
            )
        skip = self.num_steps // steps
        return np.arange(self.num_steps - 1, -1, -skip)[:steps]
