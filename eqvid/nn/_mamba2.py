"""Mamba2 (Dao & Gu 2024): the selective state space layer of state-spaces/mamba
`mamba_ssm/modules/mamba2.py` (the class SlotSSM uses), over a sequence of vectors
`(time, d_model)`.

    z, xBC, δ = in_proj(u)                            # d_inner, d_inner + 2·G·N, heads
    x, B, C = silu(causal_depthwise_conv1d(xBC))      # x: (heads, head_dim); B, C: (G, N)
    Δ = clip(softplus(δ + dt_bias), dt_limit)         # one step size per head
    S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t ⊗ B_t          # S: (heads, head_dim, N), A scalar per head
    y_t = S_t C_t + D ⊙ x_t
    out = out_proj(gated_rms_norm(y, z))

Head `h` reads the B and C of group `h // (heads / G)`. The recurrence runs through
`eqvid.kernels.linear_scan` (a per-step decay broadcast over the head's state), or
in chunks (`mamba2_chunked_scan`: the SSD form, matrix products within a chunk and a
recurrence across chunks), in float32.
"""

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from eqvid.kernels import linear_scan
from eqvid.kernels.linear_scan import ScanImpl

from ._dense import Dense, torch_linear
from ._norm import GatedRMSNorm
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


def _decay_matrix(log_a: Float[Array, "... length"]) -> Float[Array, "... length length"]:
    """`out[..., i, j] = exp(Σ_{j < k ≤ i} log_a[k])` for `j ≤ i`, 0 above the diagonal
    (the decay from step `j` to step `i` within a chunk). The sums are differences of a
    cumulative sum; above the diagonal they are zeroed before the exponential (so
    nothing overflows) and the result after it, by a constant mask (so the backward
    pass keeps only the result)."""
    n = log_a.shape[-1]
    cum = jnp.cumsum(log_a, axis=-1)
    lower = jnp.tril(jnp.ones((n, n), log_a.dtype)).reshape((1,) * (log_a.ndim - 1) + (n, n))
    return jnp.exp((cum[..., :, None] - cum[..., None, :]) * lower) * lower


def mamba2_chunked_scan(
    x: Float[Array, "time heads head_dim"],
    dt: Float[Array, "time heads"],
    A: Float[Array, " heads"],
    B: Float[Array, "time groups d_state"],
    C: Float[Array, "time groups d_state"],
    state: Float[Array, "heads head_dim d_state"],
    *,
    chunk: int,
) -> tuple[Float[Array, "time heads head_dim"], Float[Array, "heads head_dim d_state"]]:
    """Mamba2's recurrence in the chunked SSD form (`ssd_minimal.py`): within each
    chunk of `chunk` steps the outputs are matrix products with the decay matrix
    `exp(segment sums of Δ·A)`; a recurrence over the chunks carries the state.

    `B` and `C` are per group of heads (`heads / groups` consecutive heads share
    one), as the layer computes them: products with them are formed once per group,
    not per head. Returns `(Σ_n S_t C_t` per step, the last state); no `D` term. The
    time axis is padded to a multiple of `chunk` with steps of `Δ = 0` (no decay, no
    input)."""
    t, heads, p = x.shape
    g = B.shape[1]
    if heads % g or C.shape[1] != g:
        raise ValueError(
            f"mamba2_chunked_scan: the groups of `B` ({g}) and `C` ({C.shape[1]}) must be "
            f"equal and divide the {heads} heads of `x`."
        )
    k = heads // g
    pad = -t % chunk
    if pad:
        x, dt, B, C = (jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for v in (x, dt, B, C))
    n = (t + pad) // chunk
    # Chunks and groups share one batch axis b = (chunk index, group): the products
    # below are batched over it (and over the heads of a group). A separate group axis
    # of size 1 (one group, as SlotSSM's) made jaxlib 0.10.2's CPU backend crash in
    # the backward pass under two `vmap`s (videos × slots).
    xs = (x * dt[..., None]).reshape(n, chunk, g, k, p).transpose(0, 2, 3, 1, 4)
    xs = xs.reshape(n * g, k, chunk, p)  # Δ·x
    la = (dt * A[None]).reshape(n, chunk, g, k).transpose(0, 2, 3, 1).reshape(n * g, k, chunk)

    def per_chunk(v):  # (time, g, N) → (n·g, chunk, N)
        return v.reshape(n, chunk, g, -1).transpose(0, 2, 1, 3).reshape(n * g, chunk, -1)

    Bs, Cs = per_chunk(B), per_chunk(C)
    cum = jnp.cumsum(la, axis=-1)  # (b, k, chunk)
    # Within chunks: y_i = Σ_{j ≤ i} (C_i·B_j) exp(Σ_{j<k≤i} la_k) Δ_j x_j.
    CB = jnp.einsum("bln,bsn->bls", Cs, Bs)
    y_diag = jnp.einsum("bkls,bksp->bklp", CB[:, None] * _decay_matrix(la), xs)
    # Each chunk's own contribution to the state at its end.
    decay_to_end = jnp.exp(cum[..., -1:] - cum)  # (b, k, chunk)
    chunk_states = jnp.einsum("bsn,bksp->bkpn", Bs, xs * decay_to_end[..., None])
    chunk_decay = jnp.exp(cum[..., -1])  # (b, k)

    def carry(s, inputs):
        decay, own = inputs
        new = decay[:, None, None] * s + own
        return new, s  # the state entering the chunk

    last, entering = jax.lax.scan(
        carry, state, (chunk_decay.reshape(n, heads), chunk_states.reshape(n, heads, p, -1))
    )
    # The state entering a chunk, decayed to each step, read by C.
    entering = entering.reshape(n * g, k, p, -1)
    y_off = jnp.einsum("bln,bkpn->bklp", Cs, entering) * jnp.exp(cum)[..., None]
    y = (y_diag + y_off).reshape(n, g, k, chunk, p).transpose(0, 3, 1, 2, 4)
    y = y.reshape(n * chunk, heads, p)
    return y[:t], last


class Mamba2(eqx.Module):
    """One Mamba2 layer: input projection to `[z, x, B, C, Δ]`, causal depthwise
    conv1d over `x, B, C`, a scalar decay per head with a head dimension, `D` skip,
    gated RMSNorm, output projection.

    Three ways to run it, which agree to float32 precision: `layer(u)` over a whole
    sequence (`scan="chunked"`, the default: the SSD form; `scan="linear"`:
    `eqvid.kernels.linear_scan`), and `layer.step(state, u_t)` one step at a time
    (O(1)).

    **Parameters and the original's names** (state-spaces/mamba `Mamba2.state_dict()`;
    PyTorch stores linear weights `(out, in)`, eqvid's `Dense` `(in, out)`):

    | eqvid | shape | Mamba2 |
    |---|---|---|
    | `in_proj.weight` | `(d_model, 2·d_inner + 2·G·N + heads)` | `in_proj.weight` transposed (z, x, B, C, Δ) |
    | `conv_weight` | `(d_inner + 2·G·N, d_conv)` | `conv1d.weight[:, 0, :]` |
    | `conv_bias` | `(d_inner + 2·G·N,)` | `conv1d.bias` |
    | `dt_bias` | `(heads,)` | `dt_bias` |
    | `A_log` | `(heads,)` | `A_log` |
    | `D` | `(heads,)` | `D` |
    | `norm.weight` | `(d_inner,)` | `norm.weight` |
    | `out_proj.weight` | `(d_inner, d_model)` | `out_proj.weight` transposed |

    Initialisation as the module's own: linear layers and the convolution as
    PyTorch's defaults, `dt_bias` the inverse softplus of a log-uniform Δ in
    `[dt_min, dt_max]`, `A_log = log U(A_init_range)` per head, `D = 1`, norm weight 1.
    `A_log`, `D` and `dt_bias` are exempt from weight decay and stay float32.

    Where eqvid differs: `step` clamps Δ to `dt_limit` as the whole-sequence pass
    does (the original's step does not; the same with the default `(0, ∞)`), and
    B/C groups work in `step` too (the original's PyTorch step requires one group).
    """

    in_proj: Dense
    conv_weight: Float[Array, "conv_channels d_conv"]
    conv_bias: Float[Array, " conv_channels"] | None
    dt_bias: Float[Array, " heads"] = eqx.field(metadata=_FLOAT32_NO_DECAY)
    A_log: Float[Array, " heads"] = eqx.field(metadata=_FLOAT32_NO_DECAY)
    D: Float[Array, " heads"] = eqx.field(metadata=_FLOAT32_NO_DECAY)
    norm: GatedRMSNorm
    out_proj: Dense
    d_model: int = eqx.field(static=True)
    d_inner: int = eqx.field(static=True)
    d_state: int = eqx.field(static=True)
    d_conv: int = eqx.field(static=True)
    headdim: int = eqx.field(static=True)
    ngroups: int = eqx.field(static=True)
    dt_limit: tuple[float, float] = eqx.field(static=True)
    scan: Literal["linear", "chunked"] = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)
    scan_impl: ScanImpl = eqx.field(static=True)
    use_mem_eff_path: bool = eqx.field(static=True)
    checkpoint_segment: int = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        conv_bias: bool = True,
        bias: bool = False,
        scan: Literal["linear", "chunked"] = "chunked",
        chunk_size: int = 32,
        scan_impl: ScanImpl = "auto",
        use_mem_eff_path: bool = True,
        checkpoint_segment: int = 256,
        key: PRNGKeyArray,
    ):
        """**Arguments** (the original's names and defaults, except the scan's):

        - `d_model`: channels in and out.
        - `d_state`: state size `N` per head dimension (128).
        - `d_conv`: width of the causal convolution (4).
        - `expand`: `d_inner = expand · d_model` (2).
        - `headdim`: channels per head; `heads = d_inner / headdim` (64).
        - `ngroups`: groups of heads sharing B and C (1).
        - `A_init_range`: `A` (its magnitude) drawn uniformly from this range.
        - `dt_min`, `dt_max`, `dt_init_floor`: Δ's initialisation; `dt_limit`: Δ is
          clamped to it.
        - `conv_bias`, `bias`: biases of the convolution (yes) and of the in/out
          projections (no).
        - `scan`: `"chunked"` (the SSD form, `chunk_size` steps per chunk; the
          original's default chunk is 256) or `"linear"` (`eqvid.kernels.linear_scan`
          over `(time, heads, head_dim, d_state)` decays and inputs). On CPU the
          chunked form with 32-step chunks was 3–7× faster than the linear scan,
          forward and backward (`benchmarks/results/selective_scan_speed_cpu.md`).
        - `scan_impl`: the `linear_scan` implementation.
        - `use_mem_eff_path`: as the original's fused training path
          (`mamba_split_conv1d_scan_combined`), keep only the input projection's output
          for the backward pass and recompute the convolution, the scan and the norm
          there (`jax.checkpoint`): a fraction of the memory for a second forward of
          that part. The values are the same either way.
        - `checkpoint_segment`: with `use_mem_eff_path`, that part runs over
          segments of this many steps, one after another with the state carried, and
          the backward pass recomputes one segment at a time: it holds one segment's
          intermediates, not the whole sequence's, as the original's fused kernel
          keeps its chunk's in on-chip memory (256; a multiple of `chunk_size`
          wastes no padding).
        - `key`: a `jax.random` key.
        """
        for name, value in (
            ("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv),
            ("expand", expand), ("headdim", headdim), ("ngroups", ngroups),
            ("chunk_size", chunk_size), ("checkpoint_segment", checkpoint_segment),
        ):  # fmt: skip
            if value < 1:
                raise ValueError(f"Mamba2: `{name}` must be ≥ 1, got {value}.")
        d_inner = int(expand * d_model)
        if d_inner % headdim:
            raise ValueError(
                f"Mamba2: `headdim` {headdim} must divide d_inner = expand · d_model = {d_inner}."
            )
        heads = d_inner // headdim
        if heads % ngroups:
            raise ValueError(f"Mamba2: `ngroups` {ngroups} must divide the {heads} heads.")
        if scan not in ("linear", "chunked"):
            raise ValueError(f"Mamba2: `scan` must be 'linear' or 'chunked', got {scan!r}.")
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"Mamba2: `A_init_range` must be 0 < low ≤ high, got {A_init_range}.")
        self.d_model, self.d_inner, self.d_state, self.d_conv = d_model, d_inner, d_state, d_conv
        self.headdim, self.ngroups = headdim, ngroups
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.scan, self.chunk_size, self.scan_impl = scan, chunk_size, scan_impl
        self.use_mem_eff_path = use_mem_eff_path
        self.checkpoint_segment = checkpoint_segment
        conv_dim = d_inner + 2 * ngroups * d_state
        k_in, k_conv, k_dt, k_a, k_out = jax.random.split(key, 5)
        self.in_proj = torch_linear(d_model, d_inner + conv_dim + heads, use_bias=bias, key=k_in)
        self.conv_weight, self.conv_bias = torch_depthwise_conv_init(
            k_conv, conv_dim, d_conv, bias=conv_bias
        )
        self.dt_bias = init_dt_bias(
            k_dt, (heads,), dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor
        )
        self.A_log = jnp.log(jax.random.uniform(k_a, (heads,), jnp.float32, lo, hi))
        self.D = jnp.ones((heads,), jnp.float32)
        self.norm = GatedRMSNorm(d_inner, eps=1e-5, group_size=d_inner // ngroups)
        self.out_proj = torch_linear(d_inner, d_model, use_bias=bias, key=k_out)

    @property
    def heads(self) -> int:
        return self.d_inner // self.headdim

    def init_state(self) -> SelectiveSSMState:
        """The zero state: no convolution history, a zero recurrence state."""
        conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        return SelectiveSSMState(
            conv=jnp.zeros((self.d_conv - 1, conv_dim), jnp.float32),
            ssm=jnp.zeros((self.heads, self.headdim, self.d_state), jnp.float32),
        )

    def _split(self, zxbcdt):
        conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        return jnp.split(zxbcdt, [self.d_inner, self.d_inner + conv_dim], axis=-1)

    def _per_head(self, v):
        """`(…, groups, N)` → `(…, heads, N)`: each head its group's."""
        return jnp.repeat(v, self.heads // self.ngroups, axis=-2)

    def _ssm_inputs(self, xbc, dt):
        """Per step: x `(…, heads, head_dim)`, B and C `(…, groups, N)`, Δ `(…, heads)`,
        float32."""
        g, n = self.ngroups, self.d_state
        x, B, C = jnp.split(xbc.astype(jnp.float32), [self.d_inner, self.d_inner + g * n], axis=-1)
        lead = x.shape[:-1]
        x = x.reshape(*lead, self.heads, self.headdim)
        B, C = B.reshape(*lead, g, n), C.reshape(*lead, g, n)
        dt = dt.astype(jnp.float32)
        dt = jax.nn.softplus(dt + jnp.broadcast_to(self.dt_bias, dt.shape))
        dt = jnp.clip(dt, *self.dt_limit)
        return x, B, C, dt

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
        check_sequence("Mamba2", u, self.d_model)
        state = self.init_state() if state is None else state
        if self.use_mem_eff_path:
            y, state = checkpointed_segments(
                self._inner, self.in_proj(u), state, self.checkpoint_segment
            )
        else:
            y, state = self._inner(self.in_proj(u), state)
        return self.out_proj(y.astype(u.dtype)), state

    def _inner(self, zxbcdt, state):
        """From the input projection's output to the gated norm's: `(y, state after)`
        (what `use_mem_eff_path` recomputes in the backward pass)."""
        z, xbc, dt = self._split(zxbcdt)
        history = conv_history(state.conv, xbc.astype(jnp.float32))
        xbc = jax.nn.silu(
            causal_depthwise_conv1d(xbc, self.conv_weight, self.conv_bias, state.conv)
        )
        x, B, C, dt = self._ssm_inputs(xbc, dt)
        A = -jnp.exp(self.A_log)
        if self.scan == "chunked":
            y, last = mamba2_chunked_scan(x, dt, A, B, C, state.ssm, chunk=self.chunk_size)
        else:
            B, C = self._per_head(B), self._per_head(C)
            a = jnp.exp(dt * A[None])[:, :, None, None]  # (time, heads, 1, 1)
            b = (dt[:, :, None] * x)[..., None] * B[:, :, None, :]  # (time, heads, P, N)
            s = linear_scan(a, b, state.ssm, impl=self.scan_impl)
            y, last = jnp.einsum("thpn,thn->thp", s, C), s[-1]
        y = y + self.D[None, :, None] * x
        y = self.norm(y.reshape(zxbcdt.shape[0], self.d_inner), z).astype(zxbcdt.dtype)
        return y, SelectiveSSMState(conv=history, ssm=last)

    def step(
        self, state: SelectiveSSMState, u: Float[Array, " d_model"]
    ) -> tuple[SelectiveSSMState, Float[Array, " d_model"]]:
        """One step: `(state, u_t) → (new_state, output)`, O(1) in the sequence length
        (the original's `Mamba2.step`)."""
        if u.shape != (self.d_model,):
            raise ValueError(f"Mamba2.step: `u` must be ({self.d_model},); got {u.shape}.")
        z, xbc, dt = self._split(self.in_proj(u))
        history = conv_history(state.conv, xbc[None].astype(jnp.float32))
        conv = causal_depthwise_conv1d(xbc[None], self.conv_weight, self.conv_bias, state.conv)[0]
        x, B, C, dt = self._ssm_inputs(jax.nn.silu(conv), dt)
        B, C = self._per_head(B), self._per_head(C)
        A = -jnp.exp(self.A_log)
        s = (
            jnp.exp(dt * A)[:, None, None] * state.ssm
            + (dt[:, None] * x)[..., None] * B[:, None, :]
        )
        y = jnp.einsum("hpn,hn->hp", s, C) + self.D[:, None] * x
        y = self.norm(y.reshape(self.d_inner), z).astype(u.dtype)
        return SelectiveSSMState(conv=history, ssm=s), self.out_proj(y)
