"""The convolutional LSTM (Shi et al., NeurIPS 2015) as the ConvS5 paper's baseline layer.

As in the released ConvSSM code (`src/models/convLSTM/`): one bias-free `k × k`
convolution of the concatenation `[u_t, h_{t-1}]` gives the four gates, in the
order **i, f, o, g** along the output channels; there are no peephole terms:

    i, f, o, g = split(W * [u_t, h_{t-1}], 4)
    c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)
    h_t = σ(o) ⊙ tanh(c_t)

`ConvLSTM` wraps the cell as a sequence layer with a post-LayerNorm residual,
`out_t = LayerNorm(u_t + h_t)` (LayerNorm over channels), which needs the hidden
size to equal the input channels.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._conv import conv2d_nhwc
from ._norm import LayerNorm
from ._sequence import AbstractSequenceLayer

LSTMState = tuple[Float[Array, "height width hidden"], Float[Array, "height width hidden"]]
"""`(h, c)`: the hidden state (the cell's output) and the cell memory."""


class ConvLSTMCell(eqx.Module):
    """A convolutional LSTM cell: state `(h, c)`, each `(height, width, hidden)`.

    **Parameters:** `weight`, one HWIO kernel `(k, k, input + hidden, 4·hidden)`
    without bias; input channels first, then hidden ones; output channels are the
    gates `i, f, o, g` in that order. Initialised He-normal (truncated normal,
    variance `2 / fan_in`, `fan_in = k²·(input + hidden)`), as the released code.

    - `cell.init_state(height, width)` gives zeros.
    - `cell.step(state, u)` advances one frame `(height, width, input)`;
      returns `(new_state, h)`.
    - `cell(us, state)` runs a whole video with `lax.scan`; returns
      `(hs, last_state)`. The input half of the convolution is computed for all
      frames at once, so only `W_h * h_{t-1}` is sequential (equal to stepping
      up to float rounding).
    """

    weight: Float[Array, "k k in_plus_hidden four_hidden"]
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        kernel_size: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:** `input_size` the channels `U` of each input frame;
        `hidden_size` the channels `P` of `h` and `c`; `kernel_size` the odd size `k`
        of the convolution; `key` a `jax.random` key."""
        if input_size < 1:
            raise ValueError(f"ConvLSTMCell: `input_size` must be positive, got {input_size}.")
        if hidden_size < 1:
            raise ValueError(f"ConvLSTMCell: `hidden_size` must be positive, got {hidden_size}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"ConvLSTMCell: `kernel_size` must be a positive odd integer (SAME "
                f"padding), got {kernel_size}."
            )
        k = kernel_size
        fan_in = k * k * (input_size + hidden_size)
        # As the released `initialize_kernel`: he_normal on (fan_in, out), reshaped to HWIO.
        w = jax.nn.initializers.he_normal()(key, (fan_in, 4 * hidden_size), jnp.float32)
        self.weight = w.reshape(k, k, input_size + hidden_size, 4 * hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size

    def init_state(self, height: int, width: int) -> LSTMState:
        """Zero `(h, c)` for a `height × width` grid."""
        z = jnp.zeros((height, width, self.hidden_size), jnp.float32)
        return z, z

    def _update(self, gates, c):
        """`(h, c)` from the pre-activation gates `[i | f | o | g]` and the old memory."""
        i, f, o, g = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def _check_input(self, u, name):
        if u.shape[-1] != self.input_size:
            raise ValueError(
                f"{type(self).__name__}: `{name}` must have {self.input_size} channels "
                f"(the cell's input_size), got shape {tuple(u.shape)}."
            )

    def step(
        self, state: LSTMState, u: Float[Array, "height width input"]
    ) -> tuple[LSTMState, Float[Array, "height width hidden"]]:
        """One frame: `(state, u) → (new_state, h)`, with one convolution of `[u, h]`."""
        self._check_input(u, "u")
        h, c = state
        gates = conv2d_nhwc(jnp.concatenate([u, h.astype(u.dtype)], axis=-1), self.weight)
        h, c = self._update(gates, c)
        return (h, c), h

    def __call__(
        self,
        us: Float[Array, "time height width input"],
        state: LSTMState | None = None,
    ) -> tuple[Float[Array, "time height width hidden"], LSTMState]:
        """A whole video: `(us, state) → (hs, last_state)` (zero `state` if absent)."""
        self._check_input(us, "us")
        if state is None:
            state = self.init_state(us.shape[1], us.shape[2])
        u_gates = conv2d_nhwc(us, self.weight[:, :, : self.input_size])
        w_h = self.weight[:, :, self.input_size :]

        def body(carry, g_u):
            h, c = carry
            h, c = self._update(g_u + conv2d_nhwc(h.astype(g_u.dtype), w_h), c)
            return (h, c), h

        last, hs = jax.lax.scan(body, state, u_gates)
        return hs, last


class ConvLSTM(AbstractSequenceLayer):
    """The ConvS5 paper's ConvLSTM sequence layer: `out_t = LayerNorm(u_t + h_t)`.

    A `ConvLSTMCell` with hidden size = `channels` and a post-LayerNorm residual
    (LayerNorm over channels), the released `SequenceLayer` with
    `use_norm=True, prenorm=False, per_layer_skip=True`.

    - `layer(u, state)` runs a whole video `(time, height, width, channels)`
      sequentially (`lax.scan`); returns `(outputs, last_state)`.
    - `layer.step(state, frame)` one frame; returns `(new_state, output)`, the shape
      of a `lax.scan` body.
    - `layer.init_state(height, width)` gives zero `(h, c)`.
    """

    cell: ConvLSTMCell
    norm: LayerNorm

    def __init__(self, channels: int, kernel_size: int = 3, *, key: PRNGKeyArray):
        """**Arguments:** `channels` the input, hidden and output channels; `kernel_size`
        the odd size of the gate convolution; `key` a `jax.random` key."""
        if channels < 1:
            raise ValueError(f"ConvLSTM: `channels` must be positive, got {channels}.")
        self.cell = ConvLSTMCell(channels, channels, kernel_size, key=key)
        self.norm = LayerNorm(channels)

    def init_state(self, height: int, width: int) -> LSTMState:
        """Zero `(h, c)` for a `height × width` grid."""
        return self.cell.init_state(height, width)

    def __call__(
        self,
        u: Float[Array, "time height width channels"],
        state: LSTMState | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "time height width channels"], LSTMState]:
        """Run over a whole video; `state` is the state before the first frame (zero if
        absent). Returns `(outputs, last_state)`; `last_state` continues the video
        through `step` or another call. Deterministic: `key` is accepted for the
        sequence-layer interface and unused."""
        del key
        hs, last = self.cell(u, state)
        return self.norm(u + hs.astype(u.dtype)), last

    def step(
        self, state: LSTMState, frame: Float[Array, "height width channels"]
    ) -> tuple[LSTMState, Float[Array, "height width channels"]]:
        """Advance one frame: `(state, frame) → (new_state, output)`."""
        state, h = self.cell.step(state, frame)
        return state, self.norm(frame + h.astype(frame.dtype))
