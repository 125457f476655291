"""SlotSSM's blocks (Jiang et al., NeurIPS 2024; JindongJiang/SlotSSMs
`src/models/slotssm.py`): slots that read input tokens every frame, each slot with its
own selective SSM state over time (the parameters shared), and slots that talk to each
other within a frame.

A block, on slots `(time, slots, dim)` and input tokens `(time, tokens, dim_in)`:

    slots += read_in(LN(slots), LN(input_proj(tokens)))     # per frame, standard or inverted
    slots += time_mixer(LN(slots))                          # per slot over time: Mamba2 / Mamba
    slots += space_attn(LN(slots))                          # per frame, among the slots
    slots += ffn(LN(slots))                                 # optional

`SlotSSM` stacks blocks on learned initial slots, given at every frame (time flows
only through the selective SSMs), and runs a whole video in parallel or one frame at a
time (`step`, O(1) per frame).
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from eqvid.kernels.attention import AttentionImpl

from ._dense import Dense, torch_linear
from ._mamba import Mamba
from ._mamba2 import Mamba2
from ._norm import LayerNorm
from ._selective_ssm import SelectiveSSMState
from ._slot_attention import SlotReadIn, SlotSelfAttention


class SlotSSMBlock(eqx.Module):
    """One SlotSSM block: read-in, per-slot selective SSM, slot self-attention and an
    optional FFN, each pre-LayerNorm (ε 1e-5) with a residual; the original's names
    (`cross_attn_input_norm`, `cross_attn_ref_norm`, `input_proj`, `cross_attn`,
    `time_mixer_norm`, `time_mixer`, `space_attn_norm`, `space_attn`, `ffn_norm`,
    `ffn_in`/`ffn_out` for its `ffn.0`/`ffn.2`)."""

    cross_attn_input_norm: LayerNorm
    cross_attn_ref_norm: LayerNorm
    input_proj: Dense
    cross_attn: SlotReadIn
    time_mixer_norm: LayerNorm
    time_mixer: Mamba2 | Mamba
    space_attn_norm: LayerNorm
    space_attn: SlotSelfAttention
    ffn_norm: LayerNorm | None
    ffn_in: Dense | None
    ffn_out: Dense | None

    def __init__(
        self,
        dim: int,
        *,
        input_dim: int,
        read_in_heads: int = 1,
        inverted: bool = True,
        space_heads: int = 4,
        mamba: Literal["mamba2", "mamba1"] = "mamba2",
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ffn: bool = False,
        attention_impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments** (SlotSSM's CLEVRER example in brackets):

        - `dim`: the slots' width [256]; `input_dim`: the input tokens' [256].
        - `read_in_heads` [1], `inverted` [True]: the read-in's heads and form.
        - `space_heads`: heads of the slot self-attention [dim / 64 = 4].
        - `mamba`: the time mixer, `"mamba2"` [default] or `"mamba1"`; `d_state`
          [128], `d_conv` [4], `expand` [2], `headdim` (Mamba2's) [64].
        - `ffn`: add the FFN (LN → dim·4 → GELU → dim) [False].
        - `attention_impl`: the slot self-attention's `eqvid.kernels.attention` impl.
        """
        keys = jax.random.split(key, 6)
        self.cross_attn_input_norm = LayerNorm(dim, eps=1e-5)
        self.cross_attn_ref_norm = LayerNorm(dim, eps=1e-5)
        self.input_proj = torch_linear(input_dim, dim, key=keys[0])
        self.cross_attn = SlotReadIn(dim, read_in_heads, inverted=inverted, key=keys[1])
        self.time_mixer_norm = LayerNorm(dim, eps=1e-5)
        if mamba == "mamba2":
            self.time_mixer = Mamba2(
                dim, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim, key=keys[2]
            )
        elif mamba == "mamba1":
            self.time_mixer = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, key=keys[2])
        else:
            raise ValueError(f"SlotSSMBlock: `mamba` must be 'mamba2' or 'mamba1', got {mamba!r}.")
        self.space_attn_norm = LayerNorm(dim, eps=1e-5)
        self.space_attn = SlotSelfAttention(dim, space_heads, impl=attention_impl, key=keys[3])
        self.ffn_norm = LayerNorm(dim, eps=1e-5) if ffn else None
        self.ffn_in = torch_linear(dim, 4 * dim, key=keys[4]) if ffn else None
        self.ffn_out = torch_linear(4 * dim, dim, key=keys[5]) if ffn else None

    def init_state(self, num_slots: int) -> SelectiveSSMState:
        """The zero state of every slot's time mixer (leading axis: slots)."""
        state = self.time_mixer.init_state()
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_slots, *x.shape)), state)

    def _read_in(self, slots, tokens):
        """One frame: `(slots + read-in, weights)`."""
        ref = self.cross_attn_ref_norm(self.input_proj(tokens))
        out, weights = self.cross_attn(self.cross_attn_input_norm(slots), ref)
        return slots + out, weights

    def _mix_space(self, slots):
        """One frame: the slot self-attention and the FFN, with their residuals."""
        slots = slots + self.space_attn(self.space_attn_norm(slots))
        if self.ffn_in is not None and self.ffn_out is not None and self.ffn_norm is not None:
            slots = slots + self.ffn_out(jax.nn.gelu(self.ffn_in(self.ffn_norm(slots)), False))
        return slots

    def __call__(
        self,
        slots: Float[Array, "time slots dim"],
        tokens: Float[Array, "time tokens input_dim"],
        state: SelectiveSSMState | None = None,
    ) -> tuple[
        Float[Array, "time slots dim"], SelectiveSSMState, Float[Array, "time heads slots tokens"]
    ]:
        """A whole video: `(slots, last_state, read-in weights)`; `state` (one per
        slot) is the time mixer's before the first frame (zero if `None`)."""
        state = self.init_state(slots.shape[1]) if state is None else state
        slots, weights = jax.vmap(self._read_in)(slots, tokens)

        def per_slot(seq, s):  # (time, dim) of one slot
            return self.time_mixer(self.time_mixer_norm(seq), s)

        mixed, state = jax.vmap(per_slot, in_axes=(1, 0), out_axes=(1, 0))(slots, state)
        slots = jax.vmap(self._mix_space)(slots + mixed)
        return slots, state, weights

    def step(
        self,
        state: SelectiveSSMState,
        slots: Float[Array, "slots dim"],
        tokens: Float[Array, "tokens input_dim"],
    ) -> tuple[SelectiveSSMState, Float[Array, "slots dim"], Float[Array, "heads slots tokens"]]:
        """One frame: `(state, slots, read-in weights)`, O(1) in the video length."""
        slots, weights = self._read_in(slots, tokens)
        state, mixed = jax.vmap(lambda s, x: self.time_mixer.step(s, x))(
            state, jax.vmap(self.time_mixer_norm)(slots)
        )
        return state, self._mix_space(slots + mixed), weights


class SlotSSM(eqx.Module):
    """The SlotSSM stack: learned initial slots `init_slots` `(slots, dim)` (N(0, 1), the
    same at every frame) refined by `num_blocks` `SlotSSMBlock`s; no final norm.

    `model(tokens)` runs a video of input tokens `(time, tokens, input_dim)` (e.g. a
    ViT encoder's patch features per frame) in parallel and returns `(slots (time,
    slots, dim), state, weights)`; `model.step(state, tokens_t)` runs one frame.
    `weights` are the read-in's attention weights of every block, `(blocks, time,
    heads, slots, tokens)`.

    With the CLEVRER example's settings (`dim` 256, 6 slots, 4 blocks, inverted
    single-head read-in, 4-head slot attention, Mamba2 with `d_state` 128) it has
    4,238,944 parameters, as the original.
    """

    init_slots: Float[Array, "slots dim"]
    blocks: tuple[SlotSSMBlock, ...]

    def __init__(
        self,
        *,
        num_slots: int = 6,
        dim: int = 256,
        input_dim: int | None = None,
        num_blocks: int = 4,
        read_in_heads: int = 1,
        inverted: bool = True,
        space_heads: int | None = None,
        mamba: Literal["mamba2", "mamba1"] = "mamba2",
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ffn: bool = False,
        attention_impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments:** `num_slots`, `dim`, `input_dim` (default `dim`),
        `num_blocks`, `space_heads` (default `dim // 64`, at least 1) and the blocks'
        settings (see `SlotSSMBlock`); defaults are the CLEVRER example's."""
        for name, value in (("num_slots", num_slots), ("dim", dim), ("num_blocks", num_blocks)):
            if value < 1:
                raise ValueError(f"SlotSSM: `{name}` must be ≥ 1, got {value}.")
        k_init, *k_blocks = jax.random.split(key, num_blocks + 1)
        self.init_slots = jax.random.normal(k_init, (num_slots, dim), jnp.float32)
        self.blocks = tuple(
            SlotSSMBlock(
                dim, input_dim=input_dim or dim, read_in_heads=read_in_heads, inverted=inverted,
                space_heads=space_heads or max(1, dim // 64), mamba=mamba, d_state=d_state,
                d_conv=d_conv, expand=expand, headdim=headdim, ffn=ffn,
                attention_impl=attention_impl, key=k,
            )
            for k in k_blocks
        )  # fmt: skip

    @property
    def num_slots(self) -> int:
        return self.init_slots.shape[0]

    def init_state(self) -> tuple[SelectiveSSMState, ...]:
        """The zero state of every block's time mixers."""
        return tuple(block.init_state(self.num_slots) for block in self.blocks)

    def _check(self, owner, tokens, rank):
        want = self.blocks[0].input_proj.weight.shape[0]
        if tokens.ndim != rank or tokens.shape[-1] != want or tokens.shape[-2] < 1:
            lead = "(time, tokens, " if rank == 3 else "(tokens, "
            raise ValueError(
                f"{owner}: `tokens` must be {lead}input_dim = {want}) with at least one "
                f"token; got shape {tokens.shape}."
            )

    def __call__(
        self,
        tokens: Float[Array, "time tokens input_dim"],
        state: tuple[SelectiveSSMState, ...] | None = None,
    ) -> tuple[
        Float[Array, "time slots dim"],
        tuple[SelectiveSSMState, ...],
        Float[Array, "blocks time heads slots tokens"],
    ]:
        """A whole video: `(slots, last_state, weights)`; `state` as `init_state()`
        (zero if `None`)."""
        self._check("SlotSSM", tokens, 3)
        state = self.init_state() if state is None else state
        slots = jnp.broadcast_to(self.init_slots, (tokens.shape[0], *self.init_slots.shape))
        slots = slots.astype(tokens.dtype)
        new_state, weights = [], []
        for block, s in zip(self.blocks, state):
            slots, s, w = block(slots, tokens, s)
            new_state.append(s)
            weights.append(w)
        return slots, tuple(new_state), jnp.stack(weights)

    def step(
        self, state: tuple[SelectiveSSMState, ...], tokens: Float[Array, "tokens input_dim"]
    ) -> tuple[
        tuple[SelectiveSSMState, ...],
        Float[Array, "slots dim"],
        Float[Array, "blocks heads slots tokens"],
    ]:
        """One frame: `(state, slots, weights)`, O(1) in the video length."""
        self._check("SlotSSM.step", tokens, 2)
        slots = self.init_slots.astype(tokens.dtype)
        new_state, weights = [], []
        for block, s in zip(self.blocks, state):
            s, slots, w = block.step(s, slots, tokens)
            new_state.append(s)
            weights.append(w)
        return tuple(new_state), slots, jnp.stack(weights)
