"""The seam for the temporal model of a latent video model (TECO's transformer, its
ConvS5 / S5 stacks): a causal map over a sequence of latent grids, run whole for
training and step by step, with a state, for generation."""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..kernels.attention import AttentionImpl
from ._conv import Conv2d
from ._convs5 import ConvS5
from ._dense import Dense
from ._s5 import S5
from ._temporal_transformer import TemporalTransformer


class AbstractTemporalCore(eqx.Module):
    """A causal sequence model over latent grids: inputs `x_0 … x_{n-1}` `(n, latent,
    latent, in_channels)` → outputs `y_0 … y_{n-1}` `(n, latent, latent,
    out_channels)`, each `y_j` a function of `x_0 … x_j` only.

    - `model(x)`: the whole sequence in one pass (training);
    - `init_state(capacity)`, `prefill(state, x)`, `step(state, x_t, index)`: the
      same outputs one input at a time (generation), carrying a state whose cost per
      step does not grow with the steps taken (a key/value cache, a recurrent state).
    """

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, "n latent latent c_in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "n latent latent c_out"]:
        """All outputs of a sequence of inputs."""

    @abc.abstractmethod
    def init_state(self, capacity: int) -> Any:
        """The state before the first input, for up to `capacity` inputs."""

    @abc.abstractmethod
    def prefill(
        self, state: Any, x: Float[Array, "n latent latent c_in"]
    ) -> tuple[Any, Float[Array, "n latent latent c_out"]]:
        """Inputs `0 … n-1` from the initial state: the state after them and their
        outputs (equal to `model(x)`)."""

    @abc.abstractmethod
    def step(
        self, state: Any, x: Float[Array, "latent latent c_in"], index: Int[Array, ""]
    ) -> tuple[Any, Float[Array, "latent latent c_out"]]:
        """Input number `index` (the inputs before it already taken): the new state and
        its output."""


class TransformerCore(AbstractTemporalCore):
    """TECO's temporal transformer as a temporal core: a learned start slot, then the
    inputs; output `j` is the transformer's output at slot `j + 1` (it sees the start
    and inputs `0 … j`). Generation keeps a key/value cache (`init_state`), so each
    step computes one frame's tokens; `uncached_step` re-runs the whole sequence, as
    TECO's sampler does."""

    transformer: TemporalTransformer

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        latent: int,
        patch: int,
        width: int,
        n_layers: int,
        n_heads: int,
        mlp_dim: int,
        impl: AttentionImpl = "auto",
        remat: bool = False,
        key: PRNGKeyArray,
    ):
        self.transformer = TemporalTransformer(
            in_channels,
            out_channels,
            latent=latent,
            patch=patch,
            width=width,
            n_layers=n_layers,
            n_heads=n_heads,
            mlp_dim=mlp_dim,
            impl=impl,
            remat=remat,
            key=key,
        )

    def __call__(
        self, x: Float[Array, "n latent latent c_in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "n latent latent c_out"]:
        del key  # no dropout
        t = self.transformer
        slots = jnp.concatenate([t.start(), t.tokens(x)])
        return t.readout(t(slots)[1:])

    def init_state(self, capacity: int) -> Any:
        """Key/value caches for the start slot and `capacity` inputs, the start slot
        already in."""
        t = self.transformer
        _, caches = t.cached(t.start(), t.init_cache(capacity + 1), 0)
        return caches

    def prefill(self, state: Any, x: Float[Array, "n latent latent c_in"]):
        t = self.transformer
        h, state = t.cached(t.tokens(x), state, 1)
        return state, t.readout(h)

    def step(self, state: Any, x: Float[Array, "latent latent c_in"], index: Int[Array, ""]):
        t = self.transformer
        h, state = t.cached(t.tokens(x[None]), state, index + 1)
        return state, t.readout(h[0])

    def uncached_step(
        self, inputs: Float[Array, "capacity latent latent c_in"], index: Int[Array, ""]
    ) -> Float[Array, "latent latent c_out"]:
        """Output `index` by re-running the whole (padded) sequence `inputs`, whose
        entries after `index` do not matter (causal): TECO's sampler's way."""
        t = self.transformer
        slots = jnp.concatenate([t.start(), t.tokens(inputs)])
        h = jax.lax.dynamic_index_in_dim(t(slots), index + 1, keepdims=False)
        return t.readout(h)


class ConvS5Core(AbstractTemporalCore):
    """A ConvS5 stack as a temporal core (ConvSSM's TECO-ConvS5 and latent ConvS5): a
    `1 × 1` convolution (`action_conv`) to `d_model` channels, then `n_layers` ConvS5
    layers (`eqvid.nn.ConvS5`: diagonal convolutional SSM, GroupNorm/GELU output
    block, post-LayerNorm residual) over the full latent grid. Output `j` is the stack's
    output at input `j`; generation steps each layer's recurrence, O(1) per frame."""

    project: Conv2d
    layers: tuple[ConvS5, ...]
    latent: int = eqx.field(static=True)
    remat: bool = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        *,
        latent: int,
        d_model: int,
        ssm_size: int,
        n_layers: int,
        blocks: int = 1,
        clip_eigs: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        remat: bool = False,
        key: PRNGKeyArray,
    ):
        kp, kl = jax.random.split(key)
        self.project = Conv2d(in_channels, d_model, 1, key=kp)
        self.layers = tuple(
            ConvS5(
                d_model,
                ssm_size,
                blocks=blocks,
                clip_eigs=clip_eigs,
                dt_min=dt_min,
                dt_max=dt_max,
                key=k,
            )
            for k in jax.random.split(kl, n_layers)
        )
        self.latent = latent
        self.remat = remat

    def __call__(
        self, x: Float[Array, "n latent latent c_in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "n latent latent c_out"]:
        h = self.project(x)

        def run(layer, h, key):
            return layer(h, key=key)[0]

        if self.remat:
            run = eqx.filter_checkpoint(run)
        keys = [None] * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        for layer, k in zip(self.layers, keys):
            h = run(layer, h, k)
        return h

    def init_state(self, capacity: int) -> Any:
        """Every layer's zero state (a recurrence: `capacity` does not matter)."""
        del capacity
        return tuple(layer.init_state(self.latent, self.latent) for layer in self.layers)

    def prefill(self, state: Any, x: Float[Array, "n latent latent c_in"]):
        h = self.project(x)
        new = []
        for layer, s in zip(self.layers, state):
            h, s = layer(h, s)
            new.append(s)
        return tuple(new), h

    def step(self, state: Any, x: Float[Array, "latent latent c_in"], index: Int[Array, ""]):
        del index
        h = self.project(x)
        new = []
        for layer, s in zip(self.layers, state):
            s, h = layer.step(s, h)
            new.append(s)
        return tuple(new), h


class S5Core(AbstractTemporalCore):
    """An S5 stack as a temporal core (ConvSSM's TECO-S5 and latent S5): the whole
    latent grid of a frame flattened and projected to one `d_model` vector (`z_proj`, an
    `latent × latent` convolution with stride `latent` and no bias), `n_layers` S5
    layers (`eqvid.nn.S5`) over time, and a projection back to a `latent × latent ×
    out_channels` grid (`z_unproj`, a transposed convolution of the same size). Output
    `j` is the stack's output at input `j`; generation steps each layer's recurrence,
    O(1) per frame.

    `project` is a bias-free `Dense` over the flattened `(latent, latent, in_channels)`
    grid (row-major, so ConvSSM's kernel `(latent, latent, in, d_model)` reshapes into
    it); `unproject` maps `d_model` to the flattened output grid (Flax's transposed
    convolution reads its kernel flipped: output `(i, j)` is `K[latent-1-i,
    latent-1-j]`). Both start as ConvSSM's: LeCun-normal with the convolutions' fan-in
    (`latent² · in_channels` and `latent² · d_model`)."""

    project: Dense
    layers: tuple[S5, ...]
    unproject: Dense
    latent: int = eqx.field(static=True)
    remat: bool = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        latent: int,
        d_model: int,
        ssm_size: int,
        n_layers: int,
        blocks: int = 1,
        clip_eigs: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        remat: bool = False,
        key: PRNGKeyArray,
    ):
        kp, kl, ku = jax.random.split(key, 3)
        cells = latent * latent
        self.project = Dense(cells * in_channels, d_model, use_bias=False, key=kp)
        unproject = Dense(d_model, cells * out_channels, use_bias=False, key=ku)
        # Dense's fan-in is d_model; the transposed convolution's is latent² · d_model.
        self.unproject = eqx.tree_at(lambda d: d.weight, unproject, unproject.weight / latent)
        self.layers = tuple(
            S5(
                d_model,
                ssm_size,
                blocks=blocks,
                clip_eigs=clip_eigs,
                dt_min=dt_min,
                dt_max=dt_max,
                key=k,
            )
            for k in jax.random.split(kl, n_layers)
        )
        self.latent = latent
        self.remat = remat

    def _in(self, x):
        return self.project(x.reshape(x.shape[:-3] + (-1,)))

    def _out(self, h):
        return self.unproject(h).reshape(h.shape[:-1] + (self.latent, self.latent, -1))

    def __call__(
        self, x: Float[Array, "n latent latent c_in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "n latent latent c_out"]:
        h = self._in(x)

        def run(layer, h, key):
            return layer(h, key=key)[0]

        if self.remat:
            run = eqx.filter_checkpoint(run)
        keys = [None] * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        for layer, k in zip(self.layers, keys):
            h = run(layer, h, k)
        return self._out(h)

    def init_state(self, capacity: int) -> Any:
        """Every layer's zero state (a recurrence: `capacity` does not matter)."""
        del capacity
        return tuple(layer.init_state() for layer in self.layers)

    def prefill(self, state: Any, x: Float[Array, "n latent latent c_in"]):
        h = self._in(x)
        new = []
        for layer, s in zip(self.layers, state):
            h, s = layer(h, s)
            new.append(s)
        return tuple(new), self._out(h)

    def step(self, state: Any, x: Float[Array, "latent latent c_in"], index: Int[Array, ""]):
        del index
        h = self._in(x)
        new = []
        for layer, s in zip(self.layers, state):
            s, h = layer.step(s, h)
            new.append(s)
        return tuple(new), self._out(h)
