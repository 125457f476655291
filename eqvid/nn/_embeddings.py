"""Embeddings: fixed sinusoidal positions and diffusion timesteps, a learned lookup
table, and learned factorised (per-axis) positions."""

import math
import typing
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from ._roles import role


def sinusoidal_positions(positions: Int[Array, "*shape"], dim: int) -> Float[Array, "*shape {dim}"]:
    """`[sin(p·ω), cos(p·ω)]` with `ω_i = 10000^(-2i/dim)`, `i < dim/2`: all sines,
    then all cosines (not interleaved), as TECO's and the ConvS5 paper's
    `SinusoidalPositionBiases`. `dim` must be even. float32."""
    if dim < 2 or dim % 2:
        raise ValueError(f"sinusoidal_positions: `dim` must be even and ≥ 2, got {dim}.")
    freqs = 1.0 / 10000 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = positions.astype(jnp.float32)[..., None] * jnp.expand_dims(
        freqs, tuple(range(positions.ndim))
    )
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def timestep_embedding(
    t: Real[Array, "*batch"], dim: int, *, max_period: float = 10000.0
) -> Float[Array, "*batch {dim}"]:
    """The diffusion timestep embedding of DDPM (`get_timestep_embedding`) and NCSN++:
    `[sin(t·ω), cos(t·ω)]` with `ω_i = exp(-i · log(max_period) / (dim/2 - 1))` for
    `i < dim/2` (`⌊dim/2⌋` frequencies from 1 down to `1/max_period`), all sines then
    all cosines, and a zero column appended when `dim` is odd. `t` may be integer
    (step indices) or real (continuous times, noise levels). float32; `dim ≥ 4`."""
    if dim < 4:
        raise ValueError(f"timestep_embedding: `dim` must be ≥ 4, got {dim}.")
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * (-math.log(max_period) / (half - 1)))
    angles = t.astype(jnp.float32)[..., None] * jnp.expand_dims(freqs, tuple(range(t.ndim)))
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros(emb.shape[:-1] + (1,), emb.dtype)], axis=-1)
    return emb


def _is_concrete(x) -> bool:
    return not isinstance(x, Tracer)


class Embedding(eqx.Module):
    """A learned lookup table: `ids (*shape) → vectors (*shape, dim)`.

    Ids must lie in `[0, num)`. Ids whose values are known when the lookup is traced
    (Python ints, NumPy arrays, JAX arrays outside `jit`) are checked and an
    out-of-range id raises `ValueError`. Traced ids (under `jit`, `vmap`, `scan`)
    cannot be checked without a device-to-host synchronisation per lookup; an
    out-of-range (or negative) traced id gives a row of NaNs instead of silently
    wrapping around or clamping, so the mistake shows in the loss.

    `attend(x)` is the transposed lookup, `x @ weightᵀ`: the logits of a
    weight-tied output head (TECO's MaskGit, Flax's `nn.Embed.attend`).

    Roles: the table's axes are `("vocab", "embed")`.
    """

    weight: Float[Array, "num dim"] = eqx.field(metadata=role(axes=("vocab", "embed")))

    def __init__(self, num: int, dim: int, *, init_std: float = 1.0, key: PRNGKeyArray):
        """**Arguments:**

        - `num`: the number of ids (rows of the table).
        - `dim`: the width of each vector.
        - `init_std`: the standard deviation of the normal initialisation (1.0 as
          PyTorch's and Equinox's `Embedding`; 0.02 as GPT-style models).
        - `key`: a `jax.random` key.
        """
        for name, value in (("num", num), ("dim", dim)):
            if value < 1:
                raise ValueError(f"Embedding: `{name}` must be ≥ 1, got {value}.")
        self.weight = init_std * jax.random.normal(key, (num, dim), jnp.float32)

    def __call__(self, ids: Int[ArrayLike, "*shape"]) -> Float[Array, "*shape dim"]:
        """**Arguments:**

        - `ids`: integer ids `(*shape)` in `[0, num)`.

        **Returns:** `(*shape, dim)`, the rows of the table.
        """
        num = self.weight.shape[0]
        if _is_concrete(ids):
            values = np.asarray(ids)
            if values.size and (values.min() < 0 or values.max() >= num):
                raise ValueError(
                    f"Embedding: `ids` must lie in [0, {num}), got values from "
                    f"{values.min()} to {values.max()}."
                )
        ids = jnp.asarray(ids)
        # Negative ids would wrap around: move them out of range, where `fill` gives NaN.
        ids = jnp.where(ids < 0, num, ids)
        return self.weight.at[ids].get(mode="fill", fill_value=jnp.nan)

    def attend(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch num"]:
        """`x @ weightᵀ`: the similarity of `x` to every row (weight-tied logits), in
        the dtype of `x`."""
        if x.shape[-1:] != self.weight.shape[1:]:
            raise ValueError(
                f"Embedding.attend: `x` must have shape (*batch, {self.weight.shape[1]}), "
                f"got {x.shape}."
            )
        return x @ self.weight.T.astype(x.dtype)


Combine = typing.Literal["concat", "sum"]


class FactorisedPositionEmbedding(eqx.Module):
    """Learned positions on a grid `shape = (n_0, n_1, …)` with one small table per
    axis, broadcast over the other axes: TECO's MaskGit "broadcast" position
    embedding (`BroadcastPositionBiases`), `Σ n_i` rows instead of `Π n_i`.

    - `combine="concat"` (TECO's): axis `i` owns a slice of the channels, of width
      `dim // len(shape)` (the first `dim % len(shape)` axes one more), and the
      embedding at `(p_0, p_1, …)` is `concat(table_0[p_0], table_1[p_1], …)`.
    - `combine="sum"`: every table is `(n_i, dim)` and the embedding is
      `table_0[p_0] + table_1[p_1] + …`.

    `model()` returns the whole grid `(*shape, dim)`; flatten it with
    `.reshape(-1, dim)` for row-major token order. Tables start normal with standard
    deviation `init_std` (0.02, as TECO).

    Roles: each table's axes are `("position", "embed")`.
    """

    combine: Combine = eqx.field(static=True)
    tables: tuple[Float[Array, "n c"], ...] = eqx.field(metadata=role(axes=("position", "embed")))

    def __init__(
        self,
        shape: Sequence[int],
        dim: int,
        *,
        combine: Combine = "concat",
        init_std: float = 0.02,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `shape`: the grid, e.g. `(height, width)` of a frame's tokens.
        - `dim`: channels of the embedding.
        - `combine`: `"concat"` (channels split over the axes, TECO) or `"sum"`.
        - `init_std`: standard deviation of the normal initialisation.
        - `key`: a `jax.random` key.
        """
        shape = tuple(shape)
        if not shape or min(shape) < 1:
            raise ValueError(
                f"FactorisedPositionEmbedding: `shape` must be a non-empty sequence of "
                f"sizes ≥ 1, got {shape}."
            )
        if combine not in typing.get_args(Combine):
            raise ValueError(
                f"FactorisedPositionEmbedding: `combine` must be one of "
                f"{typing.get_args(Combine)}, got {combine!r}."
            )
        n = len(shape)
        if combine == "concat":
            if dim < n:
                raise ValueError(
                    f"FactorisedPositionEmbedding: `dim` must be ≥ len(shape) = {n} with "
                    f"combine='concat' (each axis owns ≥ 1 channel), got {dim}."
                )
            widths = [dim // n + (i < dim % n) for i in range(n)]
        else:
            if dim < 1:
                raise ValueError(f"FactorisedPositionEmbedding: `dim` must be ≥ 1, got {dim}.")
            widths = [dim] * n
        keys = jax.random.split(key, n)
        self.tables = tuple(
            init_std * jax.random.normal(k, (size, width), jnp.float32)
            for k, size, width in zip(keys, shape, widths)
        )
        self.combine = combine

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid's shape."""
        return tuple(t.shape[0] for t in self.tables)

    def __call__(self) -> Float[Array, "*shape dim"]:
        """**Returns:** the embedding of every grid position, `(*shape, dim)`."""
        shape, n = self.shape, len(self.tables)
        parts = []
        for i, table in enumerate(self.tables):
            e = table.reshape((1,) * i + (shape[i],) + (1,) * (n - i - 1) + table.shape[-1:])
            parts.append(jnp.broadcast_to(e, shape + table.shape[-1:]))
        if self.combine == "concat":
            return jnp.concatenate(parts, axis=-1)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
