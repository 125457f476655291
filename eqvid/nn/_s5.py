"""The S5 layer (Smith, Warrington & Linderman, ICLR 2023), as ConvSSM's S5 and TECO-S5
use it (NVlabs/ConvSSM `src/models/S5/`): a diagonal complex state space model over a
sequence of vectors,

    x_t = Λ̄ ⊙ x_{t-1} + B̄ u_t,      y_t = 2·Re(C̃ x_t) + D ⊙ u_t,

then S5's gated output `g = GELU(y)`, `g ⊙ σ(W g + b)` and a post-LayerNorm residual:
`out_t = LayerNorm(u_t + g_t)`. Conjugate symmetry (one eigenvalue of each pair, `2·Re`),
zero-order-hold discretisation, HiPPO-LegS initialisation in `blocks` blocks.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from eqvid.kernels import linear_scan_split
from eqvid.kernels.linear_scan import ScanImpl

from ._dense import Dense
from ._hippo import discretize_zoh, hippo_block_init
from ._norm import LayerNorm
from ._roles import role

# Flax's lecun_normal draws a normal truncated to ±2 standard deviations, rescaled to
# unit variance by this constant (the truncated distribution's standard deviation).
_TRUNCATED_STD = 0.87962566103423978


def _at_least_float32(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """`x` in float32, or float64 if it already is (the recurrence's precision)."""
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


class S5(eqx.Module):
    """One S5 layer: diagonal SSM + S5's gated output + post-norm residual.

    Three ways to run it, which agree to float32 precision:

    - `layer(u, state)` over a whole sequence `(time, channels)` with the parallel
      scan (`impl` as `eqvid.kernels.linear_scan`); returns `(outputs, last_state)`.
      With a `key`, dropout (rate `dropout`) is applied to the gated output before the
      residual sum.
    - `layer.step(state, u_t)` one input at a time, O(1) per step; returns
      `(new_state, output)`, the shape of a `lax.scan` body.
    - `layer.init_state()` gives the zero state, complex `(ssm_size // 2,)`.

    **Parameters** (ConvSSM's names in brackets): `lambda_re`, `lambda_im` (`Lambda_re`,
    `Lambda_im`), `log_step` (`log_step`, one per state), `B` (`B̃ = V⁻¹B` as
    real/imag pairs `(state, channels, 2)`), `C` (`C̃ = CV`, `(channels, state, 2)`),
    `D` (`D`), `gate` (`out2`), `norm` (the layer's LayerNorm).

    **Initialisation** as ConvSSM's: HiPPO-LegS `Λ` (every layer the same); `B` a
    LeCun-normal `(ssm_size, channels)` matrix (fan-in `ssm_size`) projected by `V⁻¹`;
    `C` LeCun-normal `(channels, ssm_size)` complex entries (fan-in `ssm_size`) projected
    by `V`; `D` standard normal; `log Δ` uniform in `[log dt_min, log dt_max]`.

    **Roles:** `Λ`, `log Δ` and `B` form the `"ssm"` optimiser group and stay float32
    under mixed precision, as in `ConvS5`.
    """

    lambda_re: Float[Array, " state"] = eqx.field(
        metadata=role(group="ssm", weight_decay=False, keep_float32=True)
    )
    lambda_im: Float[Array, " state"] = eqx.field(
        metadata=role(group="ssm", weight_decay=False, keep_float32=True)
    )
    log_step: Float[Array, " state"] = eqx.field(
        metadata=role(group="ssm", weight_decay=False, keep_float32=True)
    )
    B: Float[Array, "state channels 2"] = eqx.field(
        metadata=role(group="ssm", weight_decay=False, keep_float32=True)
    )
    C: Float[Array, "channels state 2"]
    D: Float[Array, " channels"]
    gate: Dense
    norm: LayerNorm
    clip_eigs: bool = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    impl: ScanImpl = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        ssm_size: int,
        *,
        blocks: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        clip_eigs: bool = False,
        dropout: float = 0.0,
        impl: ScanImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `channels`: input and output channels `U` (`d_model`).
        - `ssm_size`: HiPPO size `N`; the complex state has `P = N // 2` channels.
        - `blocks`: `J`, the number of HiPPO blocks `Λ` and `V` are tiled from.
        - `dt_min`, `dt_max`: range of the log-uniform initial time steps `Δ`.
        - `clip_eigs`: clamp `Re Λ ≤ -1e-4` so that `|Λ̄| < 1` (stable).
        - `dropout`: rate of dropout on the gated output in training (calls with a key).
        - `impl`: the scan of `__call__` (`"pallas"`, `"xla"`, `"sequential"`, `"auto"`).
        - `key`: a `jax.random` key.
        """
        if channels < 1:
            raise ValueError(f"S5: `channels` must be positive, got {channels}.")
        if blocks < 1 or ssm_size < 2 or ssm_size % blocks or (ssm_size // blocks) % 2:
            raise ValueError(
                f"S5: `ssm_size` ({ssm_size}) must split into `blocks` ({blocks}) blocks "
                "of even size (conjugate pairs); choose ssm_size a multiple of 2 * blocks."
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(
                f"S5: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}; "
                "swap them or pick a positive dt_min."
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"S5: `dropout` must be in [0, 1), got {dropout}.")
        kb, kc, kd, ks, kg = jax.random.split(key, 5)
        p = ssm_size // 2
        lam, v, vinv = hippo_block_init(ssm_size, blocks)
        self.lambda_re = jnp.asarray(np.real(lam), jnp.float32)
        self.lambda_im = jnp.asarray(np.imag(lam), jnp.float32)
        self.log_step = jax.random.uniform(ks, (p,), jnp.float32, np.log(dt_min), np.log(dt_max))
        scale = np.sqrt(1.0 / ssm_size) / _TRUNCATED_STD
        b_real = scale * jax.random.truncated_normal(kb, -2.0, 2.0, (ssm_size, channels))
        b_tilde = jnp.asarray(vinv, jnp.complex64) @ b_real.astype(jnp.complex64)  # (P, U)
        self.B = jnp.stack([b_tilde.real, b_tilde.imag], axis=-1)
        c_pair = scale * jax.random.truncated_normal(kc, -2.0, 2.0, (channels, ssm_size, 2))
        c_tilde = jax.lax.complex(c_pair[..., 0], c_pair[..., 1]) @ jnp.asarray(
            v, jnp.complex64
        )  # (U, P)
        self.C = jnp.stack([c_tilde.real, c_tilde.imag], axis=-1)
        self.D = jax.random.normal(kd, (channels,), jnp.float32)
        self.gate = Dense(channels, channels, key=kg)
        self.norm = LayerNorm(channels)
        self.clip_eigs = clip_eigs
        self.dropout = dropout
        self.impl = impl

    @property
    def state_size(self) -> int:
        """`P`, the number of complex state channels."""
        return self.lambda_re.shape[0]

    @property
    def channels(self) -> int:
        """`U`, the layer's width."""
        return self.D.shape[0]

    def eigenvalues(self) -> Complex[Array, " state"]:
        """The continuous-time eigenvalues `Λ` (after clipping, if enabled)."""
        re = jnp.minimum(self.lambda_re, -1e-4) if self.clip_eigs else self.lambda_re
        return jax.lax.complex(re, self.lambda_im)

    def discretize(self) -> tuple[Complex[Array, " state"], Float[Array, "channels two_state"]]:
        """ZOH: `(Λ̄, B̄ᵀ as a real (channels, 2P) matrix [Re | Im])`, so `u @ B̄ᵀ` gives
        the input's states in split layout."""
        lam_bar, gain = discretize_zoh(self.eigenvalues(), jnp.exp(self.log_step))
        b_bar = gain[:, None] * jax.lax.complex(self.B[..., 0], self.B[..., 1])  # (P, U)
        return lam_bar, jnp.concatenate([b_bar.real.T, b_bar.imag.T], axis=-1)

    def output_matrix(self) -> Float[Array, "two_state channels"]:
        """`2·Re(C̃ x)` as one real `(2P, channels)` matrix over `[Re x, Im x]`."""
        return jnp.concatenate([2 * self.C[..., 0].T, -2 * self.C[..., 1].T], axis=0)

    def init_state(self) -> Complex[Array, " state"]:
        """The zero state."""
        return jnp.zeros((self.state_size,), jnp.complex64)

    def _output(self, u, xs_split, key=None):
        """`LayerNorm(u + Dropout(GLU(GELU(2·Re(C̃ x) + D ⊙ u))))` from split states."""
        y = xs_split.astype(u.dtype) @ self.output_matrix().astype(u.dtype)
        y = jax.nn.gelu(y + jnp.broadcast_to(self.D.astype(u.dtype), u.shape) * u, approximate=True)
        y = y * jax.nn.sigmoid(self.gate(y))
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, y.shape)
            y = jnp.where(keep, y / (1.0 - self.dropout), 0).astype(y.dtype)
        return self.norm(u + y)

    def _check(self, u, name, ndim):
        if u.ndim != ndim or u.shape[-1] != self.channels:
            expected = "(time, channels)" if ndim == 2 else "(channels,)"
            raise ValueError(
                f"S5: `{name}` must be {expected} with {self.channels} channels (the "
                f"layer's width); got shape {tuple(u.shape)}."
            )

    def __call__(
        self,
        u: Float[Array, "time channels"],
        state: Complex[Array, " state"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        impl: ScanImpl | None = None,
    ) -> tuple[Float[Array, "time channels"], Complex[Array, " state"]]:
        """Run over a whole sequence: `(outputs, last_state)`; `state` is the state
        before the first input (zero if absent), `key` turns on dropout, `impl`
        overrides the layer's scan."""
        self._check(u, "u", 2)
        lam_bar, b_matrix = self.discretize()
        bu = _at_least_float32(u) @ b_matrix
        xs = linear_scan_split(lam_bar, bu, state, impl=self.impl if impl is None else impl)
        p = self.state_size
        last = _at_least_float32(xs[-1])
        return self._output(u, xs, key), jax.lax.complex(last[:p], last[p:])

    def step(
        self, state: Complex[Array, " state"], u: Float[Array, " channels"]
    ) -> tuple[Complex[Array, " state"], Float[Array, " channels"]]:
        """Advance one input: `(state, u_t) → (new_state, output)`, O(1) in time."""
        self._check(u, "u", 1)
        lam_bar, b_matrix = self.discretize()
        bu = _at_least_float32(u) @ b_matrix
        p = self.state_size
        new_state = lam_bar * state + jax.lax.complex(bu[:p], bu[p:])
        split = jnp.concatenate([new_state.real, new_state.imag])
        return new_state, self._output(u, split)
