"""The temporal transformer over latent grids: TECO's `z_tfm` and the ConvS5 paper's
Transformer baseline (one trunk, written once)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..kernels.attention import AttentionImpl, AttentionMask
from ._activations import gelu
from ._dense import Dense
from ._embeddings import sinusoidal_positions
from ._norm import LayerNorm
from ._transformer import KVCache, TransformerBlock


class TemporalTransformer(eqx.Module):
    """A frame-block-causal transformer over a video's latent grids.

    **Layers** (TECO's `z_proj → z_tfm → z_unproj`): a patchifying convolution
    (kernel = stride = `patch`, no bias) cuts each `latent × latent × in_channels` grid
    into `(latent / patch)²` tokens of `width`; an input dense; `n_layers` pre-LN
    blocks (`TransformerBlock`, MLP activation `x · σ(1.702 x)`, LayerNorm ε 1e-6)
    under a frame-block-causal mask (a token sees every token of its own and earlier
    slots); an output dense → GELU (tanh approximation) → LayerNorm; a transposed
    convolution (kernel = stride = `patch`, no bias) back to `latent × latent ×
    out_channels` grids. Positions are sinusoidal in the token index `slot · tokens +
    token` (row-major within a frame), added after the input dense. A learned start
    token (`start`, one `width` vector per token of a frame, N(0, 0.02)) fills the
    first slot.

    The transposed convolution here computes `out[i·p + r, j·p + c] = x[i, j] @
    unpatch_weight[r, c]`; Flax's `ConvTranspose` (TECO's) reads the kernel flipped
    (`W[p-1-r, p-1-c]`): converters flip it.

    - `tokens(latents)`: grids `(slots, latent, latent, in_channels)` → embedded
      tokens `(slots, tokens, width)`;
    - `model(slots)`: all slots in one pass (positions from 0);
    - `model.cached(slots, caches, first_slot)`: new slots against a key/value cache
      (`init_cache`), equal to the full pass;
    - `readout(h)`: outputs `(..., tokens, width)` → grids `(..., latent, latent,
      out_channels)`.
    """

    patch_weight: Float[Array, "patch patch c_in width"]
    start_token: Float[Array, "tokens width"]
    embed: Dense
    blocks: tuple[TransformerBlock, ...]
    head: Dense
    head_norm: LayerNorm
    unpatch_weight: Float[Array, "patch patch width c_out"]
    latent: int = eqx.field(static=True)
    patch: int = eqx.field(static=True)
    remat: bool = eqx.field(static=True)

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
        """**Arguments:**

        - `in_channels`, `out_channels`: channels of the input and output grids.
        - `latent`: the grids' height and width; `patch` (the kernel and stride of the
          patchifying convolutions) must divide it.
        - `width`, `n_layers`, `n_heads`, `mlp_dim`: the transformer's (even `width`,
          divisible by `n_heads`).
        - `impl`: the `eqvid.kernels.attention` implementation.
        - `remat`: recompute each block's activations in the backward pass.
        - `key`: a `jax.random` key.
        """
        if latent % patch:
            raise ValueError(
                f"TemporalTransformer: `patch` ({patch}) must divide `latent` ({latent})."
            )
        if width % 2 or width % n_heads:
            raise ValueError(
                f"TemporalTransformer: `width` ({width}) must be even and divisible by "
                f"`n_heads` ({n_heads})."
            )
        kp, ks, ki, kb, kh, ku = jax.random.split(key, 6)
        lecun = jax.nn.initializers.lecun_normal()
        tokens = (latent // patch) ** 2
        self.patch_weight = lecun(kp, (patch, patch, in_channels, width), jnp.float32)
        self.start_token = 0.02 * jax.random.normal(ks, (tokens, width), jnp.float32)
        self.embed = Dense(width, width, key=ki)
        self.blocks = tuple(
            TransformerBlock(width, n_heads, mlp_dim, activation="gelu_sigmoid", impl=impl, key=k)
            for k in jax.random.split(kb, n_layers)
        )
        self.head = Dense(width, width, key=kh)
        self.head_norm = LayerNorm(width)
        self.unpatch_weight = lecun(ku, (patch, patch, width, out_channels), jnp.float32)
        self.latent = latent
        self.patch = patch
        self.remat = remat

    @property
    def grid(self) -> int:
        """Tokens along each side of a frame."""
        return self.latent // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @property
    def width(self) -> int:
        return self.start_token.shape[-1]

    def tokens(
        self, latents: Float[Array, "slots latent latent c_in"]
    ) -> Float[Array, "slots tokens width"]:
        """Patchify each grid and apply the input dense."""
        g, p = self.grid, self.patch
        t, c = latents.shape[0], latents.shape[-1]
        z = latents.reshape(t, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(t, g * g, p, p, c)
        tokens = jnp.einsum("tnijc,ijcw->tnw", z, self.patch_weight.astype(z.dtype))
        return self.embed(tokens)

    def start(self) -> Float[Array, "1 tokens width"]:
        """The start slot (embedded)."""
        return self.embed(self.start_token)[None]

    def _positions(self, first_slot, n_slots):
        f = self.tokens_per_frame
        pos = first_slot * f + jnp.arange(n_slots * f, dtype=jnp.int32)
        return sinusoidal_positions(pos, self.width)

    def __call__(
        self, slots: Float[Array, "slots tokens width"]
    ) -> Float[Array, "slots tokens width"]:
        """All slots in one pass under the frame-block-causal mask."""
        s, f, w = slots.shape
        x = slots.reshape(s * f, w) + self._positions(0, s)
        mask = AttentionMask.frame_causal(f)

        def run(block, x):
            return block(x, mask=mask)

        if self.remat:
            run = eqx.filter_checkpoint(run)
        for block in self.blocks:
            x = run(block, x)
        return x.reshape(s, f, w)

    def cached(
        self, slots: Float[Array, "new tokens width"], caches: tuple[KVCache, ...], first_slot
    ) -> tuple[Float[Array, "new tokens width"], tuple[KVCache, ...]]:
        """Slots at `first_slot …` against the key/value caches; the updated caches."""
        s, f, w = slots.shape
        x = slots.reshape(s * f, w) + self._positions(first_slot, s)
        mask = AttentionMask.frame_causal(f)
        new = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block.cached(x, cache, first_slot * f, mask=mask)
            new.append(cache)
        return x.reshape(s, f, w), tuple(new)

    def init_cache(self, n_slots: int) -> tuple[KVCache, ...]:
        """Zero key/value caches for `n_slots` slots: per block two arrays
        `(n_slots · tokens_per_frame, heads, head_dim)`."""
        return tuple(block.init_cache(n_slots * self.tokens_per_frame) for block in self.blocks)

    def readout(
        self, h: Float[Array, "*lead tokens width"]
    ) -> Float[Array, "*lead latent latent c_out"]:
        """Output dense → GELU (tanh) → LayerNorm → transposed convolution."""
        h = self.head_norm(gelu(self.head(h), approximate=True))
        g, p = self.grid, self.patch
        d = self.unpatch_weight.shape[-1]
        lead = h.shape[:-2]
        z = jnp.einsum("...nw,ijwd->...nijd", h, self.unpatch_weight.astype(h.dtype))
        z = z.reshape(lead + (g, g, p, p, d))
        return jnp.moveaxis(z, -3, -4).reshape(lead + (g * p, g * p, d))
