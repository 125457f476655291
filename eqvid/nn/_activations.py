"""Activation functions the model families use, in one place and selectable by name."""

import typing
from collections.abc import Callable

import jax
from jaxtyping import Array, Float

ActivationName = typing.Literal["gelu", "gelu_tanh", "gelu_sigmoid", "relu", "silu"]
"""Names accepted by `activation` (and `TransformerBlock(activation=...)`)."""


def gelu(x: Float[Array, "*shape"], *, approximate: bool = False) -> Float[Array, "*shape"]:
    """GELU, `x · Φ(x)`: exact (erf; PyTorch's `nn.GELU()`, MeBT) by default, or the
    tanh approximation with `approximate=True` (Flax's `nn.gelu` default)."""
    return jax.nn.gelu(x, approximate=approximate)


def gelu_sigmoid(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """`x · σ(1.702 x)`: the sigmoid approximation of GELU (TECO's `gelu2`, the MLP of
    the ConvS5 paper's Transformer baseline)."""
    return x * jax.nn.sigmoid(1.702 * x)


def _gelu_exact(x):
    return gelu(x)


def _gelu_tanh(x):
    return gelu(x, approximate=True)


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": _gelu_exact,
    "gelu_tanh": _gelu_tanh,
    "gelu_sigmoid": gelu_sigmoid,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: ActivationName) -> Callable[[Array], Array]:
    """The activation function called `name`: `"gelu"` (exact), `"gelu_tanh"`,
    `"gelu_sigmoid"` (`x · σ(1.702 x)`), `"relu"` or `"silu"` (swish, `x · σ(x)`)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation: `name` must be one of {typing.get_args(ActivationName)}, got {name!r}."
        ) from None
