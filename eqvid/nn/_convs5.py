"""The ConvS5 layer: a convolutional diagonal state space model (Smith et al., NeurIPS 2023).

State `x_t ∈ ℂ^{H×W×P}` with a diagonal (pointwise) complex transition and
convolutional input and output maps:

    x_t = Λ̄ ⊙ x_{t-1} + B̄ * u_t,      y_t = 2·Re(C̃ * x_t)

followed by the paper's ResNet-style output nonlinearity (in place of a `D`
term) and a post-LayerNorm residual: `out_t = LayerNorm(u_t + f(y_t))`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from eqvid.kernels import linear_scan_split
from eqvid.kernels.linear_scan import ScanImpl

from ._conv import Conv2d, conv2d_nhwc
from ._hippo import discretize_zoh, hippo_block_init
from ._norm import GroupNorm, LayerNorm
from ._roles import role
from ._sequence import AbstractSequenceLayer


def _at_least_float32(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """`x` in float32, or float64 if it already is (bfloat16 / float16 states would
    lose the recurrence's precision)."""
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


class ResNetOutput(eqx.Module):
    """ConvS5's output map (the released "resnet" `C_D_config`):
    `y ← GELU(y + Conv3(GELU(GN(Conv3(GELU(GN(y)))))))`."""

    norm1: GroupNorm
    conv1: Conv2d
    norm2: GroupNorm
    conv2: Conv2d

    def __init__(self, channels: int, kernel_size: int = 3, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.norm1 = GroupNorm(channels)
        self.conv1 = Conv2d(channels, channels, kernel_size, key=k1)
        self.norm2 = GroupNorm(channels)
        self.conv2 = Conv2d(channels, channels, kernel_size, key=k2)

    def __call__(
        self, y: Float[Array, "*batch height width channels"]
    ) -> Float[Array, "*batch height width channels"]:
        h = self.conv1(jax.nn.gelu(self.norm1(y)))
        h = self.conv2(jax.nn.gelu(self.norm2(h)))
        return jax.nn.gelu(y + h)


class ConvS5(AbstractSequenceLayer):
    """One ConvS5 layer: convolutional diagonal SSM + ResNet output map + post-norm residual.

    Three ways to run it, which agree to float32 precision:

    - `layer(u, state)` over a whole video with the parallel scan
      (`impl="xla"` or, fused on GPU, `impl="pallas"`) or a sequential one (`impl="sequential"`);
      `impl="auto"` picks the faster for the backend. Returns
      `(outputs, last_state)`. With a `key`, dropout (rate `dropout`) is applied to
      the output map before the residual sum, as in the released layer.
    - `layer.step(state, frame)` one frame at a time, O(1) per frame; returns
      `(new_state, output)`, the shape of a `lax.scan` body:
      `lax.scan(lambda s, f: layer.step(s, f), state, frames)`.
    - `layer.init_state(height, width)` gives the zero state.

    Inputs are one video, `(time, height, width, channels)`; `jax.vmap` for a
    batch. The state is complex, `(height, width, ssm_size // 2)` (conjugate
    symmetry: only one of each eigenvalue pair is kept; outputs use `2·Re`).

    **Parameters** (S5's parametrisation): `lambda_re`, `lambda_im` (continuous
    eigenvalues `Λ`, HiPPO-LegS init), `log_step` (per-state `log Δ`), `B`
    (`B̃ = V⁻¹B` as real/imag pairs, HWIO), `C` (`C̃ = CV` likewise), then the
    output map and the LayerNorm.

    **Roles:** `Λ`, `log Δ` and `B` form the `"ssm"` optimiser group (own learning-rate
    scale, no weight decay, as S5) and stay float32 under mixed precision: `|Λ̄|` is
    within 1e-3 of 1, and bfloat16 would round it (and the steps) enough to change
    long-range behaviour.
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
    B: Float[Array, "kb kb channels state 2"] = eqx.field(
        metadata=role(group="ssm", weight_decay=False, keep_float32=True)
    )
    C: Float[Array, "kc kc state channels 2"]
    output_map: ResNetOutput
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
        kernel_size: int = 3,
        output_kernel_size: int = 3,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        clip_eigs: bool = True,
        dropout: float = 0.0,
        impl: ScanImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `channels`: input and output channels `U` (the model width).
        - `ssm_size`: HiPPO size `N`; the complex state has `P = N // 2` channels.
        - `blocks`: `J`, the number of HiPPO blocks `Λ` and `V` are tiled from.
        - `kernel_size`: size `k` of the `B` and `C` convolutions (3 in the paper).
        - `output_kernel_size`: kernel size of the output map's convolutions.
        - `dt_min`, `dt_max`: range of the log-uniform initial time steps `Δ`.
        - `clip_eigs`: clamp `Re Λ ≤ -1e-4` so that `|Λ̄| < 1` (stable).
        - `dropout`: rate of dropout on the output map in training (calls with a `key`).
        - `impl`: the default scan of `__call__`: `"pallas"` (GPU kernel), `"xla"`
          (parallel), `"sequential"` or `"auto"` (the faster for the backend).
        - `key`: a `jax.random` key.
        """
        if channels < 1:
            raise ValueError(f"ConvS5: `channels` must be positive, got {channels}.")
        if blocks < 1 or ssm_size < 2 or ssm_size % blocks or (ssm_size // blocks) % 2:
            raise ValueError(
                f"ConvS5: `ssm_size` ({ssm_size}) must split into `blocks` ({blocks}) "
                "blocks of even size (conjugate pairs); choose ssm_size a multiple of "
                "2 * blocks."
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(
                f"ConvS5: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}; "
                "swap them or pick a positive dt_min."
            )
        for name, size in (
            ("kernel_size", kernel_size),
            ("output_kernel_size", output_kernel_size),
        ):
            if size < 1 or size % 2 == 0:
                raise ValueError(f"ConvS5: `{name}` must be a positive odd integer, got {size}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"ConvS5: `dropout` must be in [0, 1), got {dropout}.")
        kb, kc, ks, ko = jax.random.split(key, 4)
        p = ssm_size // 2
        k = kernel_size
        lam, v, vinv = hippo_block_init(ssm_size, blocks)
        self.lambda_re = jnp.asarray(np.real(lam), jnp.float32)
        self.lambda_im = jnp.asarray(np.imag(lam), jnp.float32)
        self.log_step = jax.random.uniform(ks, (p,), jnp.float32, np.log(dt_min), np.log(dt_max))
        he = jax.nn.initializers.he_normal(in_axis=0, out_axis=1)
        # B: real (k·k·U → N) with fan_in U·k², projected to B̃ = V⁻¹ B (complex P).
        b_real = he(kb, (k * k * channels, ssm_size), jnp.float32)
        b_tilde = (b_real.astype(jnp.complex64) @ jnp.asarray(vinv.T, jnp.complex64)).reshape(
            k, k, channels, p
        )
        self.B = jnp.stack([b_tilde.real, b_tilde.imag], axis=-1)
        # C: real (N·k² → U) with fan_in N·k², projected to C̃ = C V (complex P).
        c_real = he(kc, (k * k * ssm_size, channels), jnp.float32)
        c_real = c_real.reshape(k, k, ssm_size, channels)
        c_tilde = jnp.einsum(
            "hwnu,np->hwpu", c_real.astype(jnp.complex64), jnp.asarray(v, jnp.complex64)
        )
        self.C = jnp.stack([c_tilde.real, c_tilde.imag], axis=-1)
        self.output_map = ResNetOutput(channels, output_kernel_size, key=ko)
        self.norm = LayerNorm(channels)
        self.clip_eigs = clip_eigs
        self.dropout = dropout
        self.impl = impl

    # -- discretised parameters --------------------------------------------------

    @property
    def state_size(self) -> int:
        """`P`, the number of complex state channels."""
        return self.lambda_re.shape[0]

    def eigenvalues(self) -> Complex[Array, " state"]:
        """The continuous-time eigenvalues `Λ` (after clipping, if enabled)."""
        re = jnp.minimum(self.lambda_re, -1e-4) if self.clip_eigs else self.lambda_re
        return jax.lax.complex(re, self.lambda_im)

    def discretize(
        self,
    ) -> tuple[Complex[Array, " state"], Float[Array, "kb kb channels two_state"]]:
        """ZOH discretisation: `(Λ̄, B̄ as a real HWIO kernel with 2P outputs)`.

        With real inputs, `B̄ * u = (Re B̄) * u + i (Im B̄) * u`: one real
        convolution whose first `P` outputs are the real part and last `P` the
        imaginary part.
        """
        lam_bar, gain = discretize_zoh(self.eigenvalues(), jnp.exp(self.log_step))
        b_bar = gain[None, None, None, :] * jax.lax.complex(self.B[..., 0], self.B[..., 1])
        return lam_bar, jnp.concatenate([b_bar.real, b_bar.imag], axis=-1)

    def output_kernel(self) -> Float[Array, "kc kc two_state channels"]:
        """`2·Re(C̃ * x)` as one real HWIO kernel over `[Re x, Im x]`."""
        return jnp.concatenate([2 * self.C[..., 0], -2 * self.C[..., 1]], axis=2)

    # -- the three ways to run ---------------------------------------------------

    def init_state(self, height: int, width: int) -> Complex[Array, "height width state"]:
        """The zero state for a `height × width` latent grid."""
        return jnp.zeros((height, width, self.state_size), jnp.complex64)

    def _input(self, u, b_kernel):
        """`B̄ * u` as complex states (used by `step`)."""
        bu = conv2d_nhwc(u, b_kernel)
        bu = _at_least_float32(bu)  # states are ≥ float32
        p = self.state_size
        return jax.lax.complex(bu[..., :p], bu[..., p:])

    def _output(self, u, xs_split, key=None):
        """`LayerNorm(u + Dropout(f(2·Re(C̃ * x))))` from states in split layout
        `[Re x, Im x]` (dropout only with a `key` and a positive rate)."""
        y = self.output_map(conv2d_nhwc(xs_split, self.output_kernel()))
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, y.shape)
            y = jnp.where(keep, y / (1.0 - self.dropout), 0).astype(y.dtype)
        return self.norm(u + y)

    def _check_channels(self, u, name):
        channels = self.B.shape[2]
        if u.shape[-1] != channels:
            raise ValueError(
                f"ConvS5: `{name}` must have {channels} channels (the layer's width), got "
                f"shape {tuple(u.shape)}."
            )

    def __call__(
        self,
        u: Float[Array, "time height width channels"],
        state: Complex[Array, "height width state"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        impl: ScanImpl | None = None,
    ) -> tuple[Float[Array, "time height width channels"], Complex[Array, "height width state"]]:
        """Run over a whole video.

        **Arguments:** `u` the inputs; `state` the state before the first frame
        (zero if absent); `key` turns on dropout (training; without a key the layer
        is deterministic); `impl` overrides the layer's scan (`"pallas"` GPU kernel,
        `"xla"` parallel, `"sequential"`, `"auto"`).

        **Returns:** `(outputs, last_state)`; feed `last_state` to `step` or to
        another call to continue the video.
        """
        self._check_channels(u, "u")
        impl = self.impl if impl is None else impl
        lam_bar, b_kernel = self.discretize()
        # States stay in split layout [Re x | Im x] from the B convolution through the
        # scan to the C convolution: no complex tensor is materialised.
        xs = linear_scan_split(lam_bar, conv2d_nhwc(u, b_kernel), state, impl=impl)
        p = self.state_size
        last = _at_least_float32(xs[-1])  # states are ≥ float32
        out = self._output(u, xs, key)
        return out, jax.lax.complex(last[..., :p], last[..., p:])

    def step(
        self,
        state: Complex[Array, "height width state"],
        frame: Float[Array, "height width channels"],
    ) -> tuple[Complex[Array, "height width state"], Float[Array, "height width channels"]]:
        """Advance one frame: `(state, frame) → (new_state, output)`, O(1) in time."""
        self._check_channels(frame, "frame")
        lam_bar, b_kernel = self.discretize()
        new_state = lam_bar[None, None, :] * state + self._input(frame, b_kernel)
        split = jnp.concatenate([new_state.real, new_state.imag], axis=-1)
        return new_state, self._output(frame, split)
