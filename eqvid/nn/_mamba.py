"""Mamba (Gu & Dao 2023): the selective state space layer of state-spaces/mamba
`mamba_ssm/modules/mamba_simple.py`, over a sequence of vectors `(time, d_model)`.

    x, z = in_proj(u)                          # d_inner = expand · d_model each
    x = silu(causal_depthwise_conv1d(x))       # kernel d_conv, with its streaming state
    δ, B, C = x_proj(x)                        # dt_rank, d_state, d_state
    Δ = softplus(dt_proj(δ))                   # (d_inner,) per step, the bias inside
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t   # h: (d_inner, d_state), A = -exp(A_log)
    y_t = h_t C_t + D ⊙ x_t
    out = out_proj(y ⊙ silu(z))

The recurrence runs through `eqvid.kernels.selective_scan`, in float32 whatever
the input's dtype, as the original's reference scan: on a Hopper GPU the fused
Mosaic GPU kernel (the state dimension in registers, as Mamba's CUDA kernel), else
`linear_scan` with a per-step decay (`scan_impl`).
"""

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from eqvid.kernels.linear_scan import ScanImpl
from eqvid.kernels.selective_scan import selective_scan

from ._dense import Dense, torch_linear
from ._roles import role
from ._selective_ssm import (
    SelectiveSSMState,
    causal_depthwise_conv1d,
    check_sequence,
    checkpointed_segments,
    conv_history,
    init_dt_bias,
    torch_depthwise_conv_init,
)

_FLOAT32_NO_DECAY = role(weight_decay=False, keep_float32=True)


class Mamba(eqx.Module):
    """One Mamba (Mamba1) layer: input projection with gate, causal depthwise conv1d,
    data-dependent Δ, B, C, diagonal `A` per channel × state, `D` skip, SiLU gate.

    Three ways to run it, which agree to float32 precision: `layer(u)` over a whole
    sequence (the scan in parallel, `scan_impl="xla"`, or sequentially), and
    `layer.step(state, u_t)` one step at a time (O(1), for streaming generation).

    **Parameters and the original's names** (state-spaces/mamba `Mamba.state_dict()`;
    PyTorch stores linear weights `(out, in)`, eqvid's `Dense` `(in, out)`):

    | eqvid | shape | Mamba |
    |---|---|---|
    | `in_proj.weight` | `(d_model, 2·d_inner)` | `in_proj.weight` transposed (x first, then z) |
    | `conv_weight` | `(d_inner, d_conv)` | `conv1d.weight[:, 0, :]` |
    | `conv_bias` | `(d_inner,)` | `conv1d.bias` |
    | `x_proj.weight` | `(d_inner, dt_rank + 2·d_state)` | `x_proj.weight` transposed (Δ, B, C) |
    | `dt_proj.weight`, `dt_proj.bias` | `(dt_rank, d_inner)`, `(d_inner,)` | `dt_proj.weight` transposed, `dt_proj.bias` |
    | `A_log` | `(d_inner, d_state)` | `A_log` |
    | `D` | `(d_inner,)` | `D` |
    | `out_proj.weight` | `(d_inner, d_model)` | `out_proj.weight` transposed |

    Initialisation as the module's own (`Mamba.__init__`; not the language model's
    re-initialisation, which SlotSSM does not apply): linear layers and the
    convolution as PyTorch's defaults, `dt_proj.weight ~ U(±dt_rank^-½ · dt_scale)`,
    `dt_proj.bias` the inverse softplus of a log-uniform Δ in `[dt_min, dt_max]`,
    `A_log = log(1 … d_state)` for every channel (S4D-real), `D = 1`. `A_log` and `D`
    are exempt from weight decay and stay float32.
    """

    in_proj: Dense
    conv_weight: Float[Array, "d_inner d_conv"]
    conv_bias: Float[Array, " d_inner"] | None
    x_proj: Dense
    dt_proj: Dense
    A_log: Float[Array, "d_inner d_state"] = eqx.field(metadata=_FLOAT32_NO_DECAY)
    D: Float[Array, " d_inner"] = eqx.field(metadata=_FLOAT32_NO_DECAY)
    out_proj: Dense
    d_model: int = eqx.field(static=True)
    d_inner: int = eqx.field(static=True)
    d_state: int = eqx.field(static=True)
    d_conv: int = eqx.field(static=True)
    dt_rank: int = eqx.field(static=True)
    scan_impl: ScanImpl = eqx.field(static=True)
    use_mem_eff_path: bool = eqx.field(static=True)
    checkpoint_segment: int = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_impl: ScanImpl = "auto",
        use_mem_eff_path: bool = True,
        checkpoint_segment: int = 256,
        key: PRNGKeyArray,
    ):
        """**Arguments** (the original's names and defaults):

        - `d_model`: channels in and out.
        - `d_state`: state size per channel `N` (16).
        - `d_conv`: width of the causal convolution (4).
        - `expand`: `d_inner = expand · d_model` (2).
        - `dt_rank`: rank of Δ's projection; `"auto"`: `⌈d_model / 16⌉`.
        - `dt_min`, `dt_max`, `dt_scale`, `dt_init_floor`: Δ's initialisation.
        - `conv_bias`, `bias`: biases of the convolution (yes) and of the in/out
          projections (no).
        - `scan_impl`: the `eqvid.kernels.selective_scan` implementation: `"auto"`
          (the fused Mosaic GPU kernel on Hopper GPUs, else `linear_scan`'s
          choice), `"mosaic"` (the fused kernel), or a `linear_scan`
          implementation for the unfused form.
        - `use_mem_eff_path`: as the original's fused path (`use_fast_path`,
          `mamba_inner_fn`), keep only the input projection's output for the backward
          pass and recompute the convolution and the scan there, over segments of
          `checkpoint_segment` steps one after another (the state carried), so the
          backward pass holds one segment's `(time, d_inner, d_state)` scan, not the
          whole sequence's. The values are the same either way.
        - `key`: a `jax.random` key.
        """
        for name, value in (
            ("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv),
            ("checkpoint_segment", checkpoint_segment),
        ):  # fmt: skip
            if value < 1:
                raise ValueError(f"Mamba: `{name}` must be ≥ 1, got {value}.")
        if expand < 1:
            raise ValueError(f"Mamba: `expand` must be ≥ 1, got {expand}.")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        if self.dt_rank < 1:
            raise ValueError(f"Mamba: `dt_rank` must be ≥ 1 or 'auto', got {dt_rank!r}.")
        self.scan_impl = scan_impl
        self.use_mem_eff_path, self.checkpoint_segment = use_mem_eff_path, checkpoint_segment
        k_in, k_conv, k_x, k_dtw, k_dtb, k_out = jax.random.split(key, 6)
        self.in_proj = torch_linear(d_model, 2 * d_inner, use_bias=bias, key=k_in)
        self.conv_weight, self.conv_bias = torch_depthwise_conv_init(
            k_conv, d_inner, d_conv, bias=conv_bias
        )
        self.x_proj = torch_linear(d_inner, self.dt_rank + 2 * d_state, use_bias=False, key=k_x)
        std = self.dt_rank**-0.5 * dt_scale
        dt_proj = Dense(self.dt_rank, d_inner, key=k_dtw)
        dt_weight = jax.random.uniform(k_dtw, (self.dt_rank, d_inner), jnp.float32, -std, std)
        dt_bias = init_dt_bias(
            k_dtb, (d_inner,), dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor
        )
        self.dt_proj = eqx.tree_at(lambda d: (d.weight, d.bias), dt_proj, (dt_weight, dt_bias))
        self.A_log = jnp.log(
            jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=jnp.float32), (d_inner, d_state))
        )
        self.D = jnp.ones((d_inner,), jnp.float32)
        self.out_proj = torch_linear(d_inner, d_model, use_bias=bias, key=k_out)

    def init_state(self) -> SelectiveSSMState:
        """The zero state: no convolution history, a zero recurrence state."""
        return SelectiveSSMState(
            conv=jnp.zeros((self.d_conv - 1, self.d_inner), jnp.float32),
            ssm=jnp.zeros((self.d_inner, self.d_state), jnp.float32),
        )

    def _selective_inputs(self, x):
        """Δ, B, C of the convolved `x` `(time, d_inner)`, float32."""
        dbc = self.x_proj(x).astype(jnp.float32)
        delta, B, C = jnp.split(dbc, [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        dt = jax.nn.softplus(self.dt_proj(delta))
        return dt, B, C

    def __call__(
        self,
        u: Float[Array, "time d_model"],
        state: SelectiveSSMState | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "time d_model"], SelectiveSSMState]:
        """A whole sequence: `(outputs, last_state)`. `state` is the state before the
        first step (zero if `None`); `key` is unused (no dropout)."""
        del key
        check_sequence("Mamba", u, self.d_model)
        state = self.init_state() if state is None else state
        if self.use_mem_eff_path:
            y, state = checkpointed_segments(
                self._inner, self.in_proj(u), state, self.checkpoint_segment
            )
        else:
            y, state = self._inner(self.in_proj(u), state)
        return self.out_proj(y.astype(u.dtype)), state

    def _inner(self, xz, state):
        """From the input projection's output to the gated output, before `out_proj`:
        `(y, state after)` (what `use_mem_eff_path` recomputes in the backward pass)."""
        x, z = jnp.split(xz, 2, axis=-1)
        history = conv_history(state.conv, x.astype(jnp.float32))
        x = jax.nn.silu(causal_depthwise_conv1d(x, self.conv_weight, self.conv_bias, state.conv))
        dt, B, C = self._selective_inputs(x)
        A = -jnp.exp(self.A_log)
        y, h_last = selective_scan(
            x.astype(jnp.float32), dt, A, B, C, self.D, z.astype(jnp.float32), state.ssm,
            impl=self.scan_impl,
        )  # fmt: skip
        return y.astype(xz.dtype), SelectiveSSMState(conv=history, ssm=h_last)

    def step(
        self, state: SelectiveSSMState, u: Float[Array, " d_model"]
    ) -> tuple[SelectiveSSMState, Float[Array, " d_model"]]:
        """One step: `(state, u_t) → (new_state, output)`, O(1) in the sequence length
        (the original's `Mamba.step`)."""
        if u.shape != (self.d_model,):
            raise ValueError(f"Mamba.step: `u` must be ({self.d_model},); got {u.shape}.")
        x, z = jnp.split(self.in_proj(u), 2, axis=-1)
        history = conv_history(state.conv, x[None].astype(jnp.float32))
        xc = jax.nn.silu(
            causal_depthwise_conv1d(x[None], self.conv_weight, self.conv_bias, state.conv)[0]
        )
        dt, B, C = (v[0] for v in self._selective_inputs(xc[None]))
        xf = xc.astype(jnp.float32)
        A = -jnp.exp(self.A_log)
        h = jnp.exp(dt[:, None] * A) * state.ssm + (dt * xf)[:, None] * B[None, :]
        y = h @ C + self.D * xf
        y = (y * jax.nn.silu(z.astype(jnp.float32))).astype(u.dtype)
        return SelectiveSSMState(conv=history, ssm=h), self.out_proj(y)
