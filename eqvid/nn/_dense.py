"""A dense (fully connected) layer on the last axis."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._roles import role


class Dense(eqx.Module):
    """`x @ W + b` on the last axis of inputs with any leading axes, `(*batch,
    in_features)`.

    The weight is stored `(in_features, out_features)` (Flax's layout, not
    `eqx.nn.Linear`'s) with LeCun-normal (truncated) initialisation and a zero bias,
    as Flax's `nn.Dense`. The parameters are cast to the input's dtype.

    Roles: the weight's axes are `("in", "out")` and the bias's `("out",)`; the field
    holding the layer picks which one goes over the `model` mesh axis, e.g.
    `mlp_in: Dense = eqx.field(metadata=role(model_axis="out"))`.
    """

    weight: Float[Array, "in_features out_features"] = eqx.field(metadata=role(axes=("in", "out")))
    bias: Float[Array, " out_features"] | None = eqx.field(metadata=role(axes=("out",)))

    def __init__(
        self, in_features: int, out_features: int, *, use_bias: bool = True, key: PRNGKeyArray
    ):
        """**Arguments:**

        - `in_features`: channels of the input's last axis.
        - `out_features`: channels of the output's last axis.
        - `use_bias`: add a learned bias (zero at initialisation).
        - `key`: a `jax.random` key for the weight.
        """
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value < 1:
                raise ValueError(f"Dense: `{name}` must be ≥ 1, got {value}.")
        self.weight = jax.nn.initializers.lecun_normal()(
            key, (in_features, out_features), jnp.float32
        )
        self.bias = jnp.zeros((out_features,), jnp.float32) if use_bias else None

    def __call__(
        self, x: Float[Array, "*batch in_features"]
    ) -> Float[Array, "*batch out_features"]:
        """**Arguments:**

        - `x`: `(*batch, in_features)`.

        **Returns:** `(*batch, out_features)` in the dtype of `x`.
        """
        if x.shape[-1:] != self.weight.shape[:1]:
            raise ValueError(
                f"Dense: `x` must have shape (*batch, {self.weight.shape[0]}), got {x.shape}."
            )
        y = x @ self.weight.astype(x.dtype)
        return y if self.bias is None else y + jnp.broadcast_to(self.bias.astype(y.dtype), y.shape)


def torch_linear(
    in_features: int, out_features: int, *, use_bias: bool = True, key: PRNGKeyArray
) -> Dense:
    """A `Dense` initialised as PyTorch's `nn.Linear`: weight and bias `U(±1/√in)`
    (kaiming-uniform with `a = √5`), for ports of PyTorch models that keep that init."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / in_features**0.5
    layer = Dense(in_features, out_features, use_bias=use_bias, key=kw)
    weight = jax.random.uniform(kw, (in_features, out_features), jnp.float32, -bound, bound)
    bias = jax.random.uniform(kb, (out_features,), jnp.float32, -bound, bound) if use_bias else None
    return eqx.tree_at(
        lambda d: (d.weight, d.bias), layer, (weight, bias), is_leaf=lambda x: x is None
    )
