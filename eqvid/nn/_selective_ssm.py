"""What Mamba (`_mamba.py`) and Mamba2 (`_mamba2.py`) share: the causal depthwise
convolution with its streaming state, the state they carry between calls, and the
initialisation of the step size Δ (state-spaces/mamba `mamba_simple.py`,
`mamba2.py`)."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._vqgan3d_codec import _torch_uniform


class SelectiveSSMState(eqx.Module):
    """The state a Mamba-style layer carries from one call (or step) to the next.

    - `conv`: the last `d_conv - 1` inputs of the causal convolution, before it
      (Mamba's `conv_state` holds `d_conv` columns, the newest one included; here
      the newest is the step's own input), `(d_conv - 1, conv_channels)`.
    - `ssm`: the recurrence's state, `(d_inner, d_state)` for Mamba,
      `(heads, head_dim, d_state)` for Mamba2, float32.
    """

    conv: Float[Array, "history conv_channels"]
    ssm: Float[Array, "..."]


def causal_depthwise_conv1d(
    x: Float[Array, "time channels"],
    weight: Float[Array, "channels kernel"],
    bias: Float[Array, " channels"] | None,
    history: Float[Array, "kernel_minus_1 channels"],
) -> Float[Array, "time channels"]:
    """`y_t[c] = Σ_k weight[c, k] · x_{t - K + 1 + k}[c] + bias[c]`: PyTorch's depthwise
    `nn.Conv1d(padding=K - 1)` with only the first `T` outputs kept, as Mamba runs it,
    the inputs before `x` taken from `history` (zeros at the start of a sequence).
    `weight[:, -1]` multiplies the current input. Computed as `K` shifted products
    (the kernel is 4 wide: cheaper than a convolution call on CPU)."""
    k = weight.shape[1]
    padded = jnp.concatenate([history.astype(x.dtype), x], axis=0)
    t = x.shape[0]
    w = weight.astype(x.dtype)
    y = padded[:t] * w[None, :, 0]
    for i in range(1, k):
        y = y + padded[i : i + t] * w[None, :, i]
    return y if bias is None else y + bias.astype(x.dtype)[None]


def conv_history(
    history: Float[Array, "kernel_minus_1 channels"], x: Float[Array, "time channels"]
) -> Float[Array, "kernel_minus_1 channels"]:
    """The last `K - 1` inputs after `x` (what the next call's convolution needs)."""
    k1 = history.shape[0]
    if k1 == 0:
        return history
    return jnp.concatenate([history.astype(x.dtype), x], axis=0)[-k1:]


def init_dt_bias(
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    *,
    dt_min: float,
    dt_max: float,
    dt_init_floor: float,
) -> Float[Array, "..."]:
    """Mamba's Δ bias: `Δ = exp(U(log dt_min, log dt_max))`, at least `dt_init_floor`,
    stored as its inverse softplus `Δ + log(-expm1(-Δ))`, so that `softplus(bias)` is
    `Δ` at initialisation."""
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_init_floor)
    return dt + jnp.log(-jnp.expm1(-dt))


def torch_depthwise_conv_init(
    key: PRNGKeyArray, channels: int, kernel: int, *, bias: bool
) -> tuple[Float[Array, "channels kernel"], Float[Array, " channels"] | None]:
    """PyTorch's default init of a depthwise `nn.Conv1d` (`fan_in = kernel`): weight
    and bias `U(±1/√kernel)`."""
    kw, kb = jax.random.split(key)
    weight = _torch_uniform(kw, (channels, kernel), kernel)
    return weight, _torch_uniform(kb, (channels,), kernel) if bias else None


def checkpointed_segments(
    inner: Callable[[Array, SelectiveSSMState], tuple[Array, SelectiveSSMState]],
    inputs: Float[Array, "time features"],
    state: SelectiveSSMState,
    segment: int,
) -> tuple[Array, SelectiveSSMState]:
    """`inner(inputs, state) → (outputs, last state)` run over consecutive segments of
    `segment` steps, one after another (a `lax.scan`, the state carried; a shorter
    last segment on its own), each segment under `jax.checkpoint`: the backward pass
    keeps only the inputs and the state entering each segment, and recomputes one
    segment's intermediates at a time, so its memory holds one segment's, not the
    whole sequence's. `inner` must be causal with its whole history in the state (as
    a selective SSM's convolution and recurrence are): the result is then the same as
    `inner(inputs, state)`."""
    fn = inner
    inner = jax.checkpoint(lambda xs, s: fn(xs, s))  # `fn` may be a (bound) Module method
    t = inputs.shape[0]
    n = t // segment
    outputs = []
    if n:

        def body(carry, xs):
            y, carry = inner(xs, carry)
            return carry, y

        state, y = jax.lax.scan(body, state, inputs[: n * segment].reshape(n, segment, -1))
        outputs.append(y.reshape(n * segment, *y.shape[2:]))
    if t > n * segment:
        y, state = inner(inputs[n * segment :], state)
        outputs.append(y)
    return (outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs)), state


def check_sequence(owner: str, u, d_model: int) -> None:
    """A `(time, d_model)` input with at least one step."""
    if u.ndim != 2 or u.shape[1] != d_model or u.shape[0] < 1:
        raise ValueError(
            f"{owner}: `u` must be (time ≥ 1, d_model = {d_model}); got shape {u.shape}."
        )
