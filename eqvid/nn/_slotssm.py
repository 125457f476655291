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
time (`step`, O(1) per frame). The number of slots may change between blocks (an
eqvid extension, after the paper's hierarchy of slot layers): where it does, a
`SlotRegroup` gives the next block its own learned slots, which read in the previous
block's slots.

With `time_mixer="attention"` the blocks are the **SlotTransformer** baseline: each
slot attends causally to its own past frames (`CausalTimeAttention`) instead of
running a selective SSM; everything else is the same.
"""

from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from eqvid.kernels.attention import AttentionImpl

from ._dense import Dense, torch_linear
from ._mamba import Mamba
from ._mamba2 import Mamba2
from ._norm import LayerNorm
from ._selective_ssm import SelectiveSSMState
from ._slot_attention import SlotReadIn, SlotSelfAttention
from ._time_attention import CausalTimeAttention, TimeAttentionState

TimeMixer = Literal["mamba2", "mamba1", "attention"]
"""A SlotSSM block's time mixer: Mamba2 (the official example's), Mamba (Mamba1), or
causal self-attention over time (the SlotTransformer baseline)."""

TimeMixerState = SelectiveSSMState | TimeAttentionState


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
    time_mixer: Mamba2 | Mamba | CausalTimeAttention
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
        time_mixer: TimeMixer = "mamba2",
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        time_heads: int = 4,
        max_frames: int = 1024,
        ffn: bool = False,
        attention_impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments** (SlotSSM's CLEVRER example in brackets):

        - `dim`: the slots' width [256]; `input_dim`: the input tokens' [256].
        - `read_in_heads` [1], `inverted` [True]: the read-in's heads and form.
        - `space_heads`: heads of the slot self-attention [dim / 64 = 4].
        - `time_mixer`: `"mamba2"` [default], `"mamba1"`, or `"attention"` (the
          SlotTransformer baseline); the SSMs' `d_state` [128], `d_conv` [4],
          `expand` [2], `headdim` (Mamba2's) [64]; the attention's `time_heads` and
          `max_frames` (the most frames it attends over, its cache's size).
        - `ffn`: add the FFN (LN → dim·4 → GELU → dim) [False].
        - `attention_impl`: the slot self-attention's `eqvid.kernels.attention` impl.
        """
        keys = jax.random.split(key, 6)
        self.cross_attn_input_norm = LayerNorm(dim, eps=1e-5)
        self.cross_attn_ref_norm = LayerNorm(dim, eps=1e-5)
        self.input_proj = torch_linear(input_dim, dim, key=keys[0])
        self.cross_attn = SlotReadIn(dim, read_in_heads, inverted=inverted, key=keys[1])
        self.time_mixer_norm = LayerNorm(dim, eps=1e-5)
        if time_mixer == "mamba2":
            self.time_mixer = Mamba2(
                dim, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim, key=keys[2]
            )
        elif time_mixer == "mamba1":
            self.time_mixer = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, key=keys[2])
        elif time_mixer == "attention":
            self.time_mixer = CausalTimeAttention(
                dim, time_heads, max_len=max_frames, impl=attention_impl, key=keys[2]
            )
        else:
            raise ValueError(
                "SlotSSMBlock: `time_mixer` must be 'mamba2', 'mamba1' or 'attention', got "
                f"{time_mixer!r}."
            )
        self.space_attn_norm = LayerNorm(dim, eps=1e-5)
        self.space_attn = SlotSelfAttention(dim, space_heads, impl=attention_impl, key=keys[3])
        self.ffn_norm = LayerNorm(dim, eps=1e-5) if ffn else None
        self.ffn_in = torch_linear(dim, 4 * dim, key=keys[4]) if ffn else None
        self.ffn_out = torch_linear(4 * dim, dim, key=keys[5]) if ffn else None

    def init_state(self, num_slots: int) -> TimeMixerState:
        """The zero (empty) state of every slot's time mixer (leading axis: slots)."""
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
        state: TimeMixerState | None = None,
    ) -> tuple[
        Float[Array, "time slots dim"], TimeMixerState, Float[Array, "time heads slots tokens"]
    ]:
        """A whole video: `(slots, last_state, read-in weights)`; `state` (one per
        slot) is the time mixer's before the first frame (zero / empty if `None`)."""
        slots, weights = jax.vmap(self._read_in)(slots, tokens)

        def per_slot(seq, s):  # (time, dim) of one slot
            return self.time_mixer(self.time_mixer_norm(seq), s)

        in_axes = (1, None if state is None else 0)
        mixed, state = jax.vmap(per_slot, in_axes=in_axes, out_axes=(1, 0))(slots, state)
        slots = jax.vmap(self._mix_space)(slots + mixed)
        return slots, state, weights

    def step(
        self,
        state: TimeMixerState,
        slots: Float[Array, "slots dim"],
        tokens: Float[Array, "tokens input_dim"],
    ) -> tuple[TimeMixerState, Float[Array, "slots dim"], Float[Array, "heads slots tokens"]]:
        """One frame: `(state, slots, read-in weights)`, O(1) in the video length with
        a selective SSM (linear in the frames seen with attention)."""
        slots, weights = self._read_in(slots, tokens)
        state, mixed = jax.vmap(lambda s, x: self.time_mixer.step(s, x))(
            state, jax.vmap(self.time_mixer_norm)(slots)
        )
        return state, self._mix_space(slots + mixed), weights


class SlotRegroup(eqx.Module):
    """Where the number of slots changes between two blocks: the next block's own
    learned slots `init_slots` `(slots, dim)` (N(0, 1)) read in the previous block's
    slots, per frame, `init + read_in(LN(init), LN(previous))` (`input_norm`,
    `ref_norm`, `read_in`: a `SlotReadIn`, inverted by default, so the new slots
    compete for the old ones). An eqvid extension: the original keeps one count."""

    init_slots: Float[Array, "slots dim"]
    input_norm: LayerNorm
    ref_norm: LayerNorm
    read_in: SlotReadIn

    def __init__(
        self,
        num_slots: int,
        dim: int,
        *,
        num_heads: int = 1,
        inverted: bool = True,
        key: PRNGKeyArray,
    ):
        k_init, k_read = jax.random.split(key)
        self.init_slots = jax.random.normal(k_init, (num_slots, dim), jnp.float32)
        self.input_norm = LayerNorm(dim, eps=1e-5)
        self.ref_norm = LayerNorm(dim, eps=1e-5)
        self.read_in = SlotReadIn(dim, num_heads, inverted=inverted, key=k_read)

    def __call__(self, previous: Float[Array, "previous dim"]) -> Float[Array, "slots dim"]:
        """One frame's new slots from the previous block's."""
        init = self.init_slots.astype(previous.dtype)
        out, _ = self.read_in(self.input_norm(init), self.ref_norm(previous))
        return init + out


def _slot_counts(num_slots: int | Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """One slot count per block, from one count for all or a count per block."""
    if isinstance(num_slots, (int, np.integer)):
        counts = (int(num_slots),) * num_blocks
    else:
        counts = tuple(int(n) for n in num_slots)
        if len(counts) != num_blocks:
            raise ValueError(
                f"SlotSSM: `num_slots` must be one count or one per block ({num_blocks}); got "
                f"{len(counts)} counts {counts}."
            )
    if any(n < 1 for n in counts):
        raise ValueError(f"SlotSSM: every slot count must be ≥ 1, got {counts}.")
    return counts


class SlotSSM(eqx.Module):
    """The SlotSSM stack: learned initial slots `init_slots` `(slots, dim)` (N(0, 1), the
    same at every frame) refined by `num_blocks` `SlotSSMBlock`s; no final norm.

    `model(tokens)` runs a video of input tokens `(time, tokens, input_dim)` (e.g. a
    ViT encoder's patch features per frame) in parallel and returns `(slots (time,
    slots, dim), state, weights)`; `model.step(state, tokens_t)` runs one frame.
    `weights` are the read-in's attention weights, one `(time, heads, slots, tokens)`
    array per block.

    `num_slots` is one count for every block (the original), or one per block: where
    the count changes, `regroup[i]` (a `SlotRegroup`) gives block `i` its own learned
    slots, which read in block `i - 1`'s; elsewhere `regroup[i]` is `None` and the
    slots flow on. The output has the last block's count.

    With the CLEVRER example's settings (`dim` 256, 6 slots, 4 blocks, inverted
    single-head read-in, 4-head slot attention, Mamba2 with `d_state` 128) it has
    4,238,944 parameters, as the original.
    """

    init_slots: Float[Array, "slots dim"]
    blocks: tuple[SlotSSMBlock, ...]
    regroup: tuple[SlotRegroup | None, ...]
    slot_counts: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        *,
        num_slots: int | Sequence[int] = 6,
        dim: int = 256,
        input_dim: int | None = None,
        num_blocks: int = 4,
        read_in_heads: int = 1,
        inverted: bool = True,
        space_heads: int | None = None,
        time_mixer: TimeMixer = "mamba2",
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        time_heads: int | None = None,
        max_frames: int = 1024,
        ffn: bool = False,
        attention_impl: AttentionImpl = "auto",
        key: PRNGKeyArray,
    ):
        """**Arguments:** `num_slots` (one count, or one per block), `dim`,
        `input_dim` (default `dim`), `num_blocks`, `space_heads` and `time_heads`
        (default `dim // 64`, at least 1) and the blocks' settings (see
        `SlotSSMBlock`); defaults are the CLEVRER example's."""
        for name, value in (("dim", dim), ("num_blocks", num_blocks)):
            if value < 1:
                raise ValueError(f"SlotSSM: `{name}` must be ≥ 1, got {value}.")
        counts = _slot_counts(num_slots, num_blocks)
        k_init, k_blocks, k_regroup = jax.random.split(key, 3)
        self.init_slots = jax.random.normal(k_init, (counts[0], dim), jnp.float32)
        heads = max(1, dim // 64)
        self.blocks = tuple(
            SlotSSMBlock(
                dim, input_dim=input_dim or dim, read_in_heads=read_in_heads, inverted=inverted,
                space_heads=space_heads or heads, time_mixer=time_mixer, d_state=d_state,
                d_conv=d_conv, expand=expand, headdim=headdim, time_heads=time_heads or heads,
                max_frames=max_frames, ffn=ffn, attention_impl=attention_impl, key=k,
            )
            for k in jax.random.split(k_blocks, num_blocks)
        )  # fmt: skip
        self.regroup = tuple(
            None
            if i == 0 or counts[i] == counts[i - 1]
            else SlotRegroup(counts[i], dim, num_heads=read_in_heads, inverted=inverted, key=k)
            for i, k in enumerate(jax.random.split(k_regroup, num_blocks))
        )
        self.slot_counts = counts

    @property
    def num_slots(self) -> int:
        """The slots of the output (the last block's)."""
        return self.slot_counts[-1]

    def init_state(self) -> tuple[TimeMixerState, ...]:
        """The zero (empty) state of every block's time mixers."""
        return tuple(block.init_state(n) for block, n in zip(self.blocks, self.slot_counts))

    def _check(self, owner, tokens, rank):
        want = self.blocks[0].input_proj.weight.shape[0]
        if tokens.ndim != rank or tokens.shape[-1] != want or tokens.shape[-2] < 1:
            lead = "(time, tokens, " if rank == 3 else "(tokens, "
            raise ValueError(
                f"{owner}: `tokens` must be {lead}input_dim = {want}) with at least one "
                f"token; got shape {tokens.shape}."
            )

    def _check_state(self, owner, state):
        if state is None:
            return
        want = eqx.filter_eval_shape(self.init_state)
        want_shapes = [x.shape for x in jax.tree.leaves(want)]
        got_shapes = [jnp.shape(x) for x in jax.tree.leaves(state)]
        if jax.tree.structure(state) != jax.tree.structure(want) or got_shapes != want_shapes:
            raise ValueError(
                f"{owner}: `state` does not belong to this stack (slots per block "
                f"{self.slot_counts}, time mixer {type(self.blocks[0].time_mixer).__name__}): "
                f"expected state arrays of shapes {want_shapes}, got {got_shapes}. Make it "
                "with `init_state()` or take it from this stack's outputs."
            )

    def __call__(
        self,
        tokens: Float[Array, "time tokens input_dim"],
        state: tuple[TimeMixerState, ...] | None = None,
    ) -> tuple[
        Float[Array, "time slots dim"],
        tuple[TimeMixerState, ...],
        tuple[Float[Array, "time heads _ tokens"], ...],
    ]:
        """A whole video: `(slots, last_state, weights)`; `state` as `init_state()`
        (zero / empty if `None`)."""
        self._check("SlotSSM", tokens, 3)
        self._check_state("SlotSSM", state)
        states = (None,) * len(self.blocks) if state is None else state
        slots = jnp.broadcast_to(self.init_slots, (tokens.shape[0], *self.init_slots.shape))
        slots = slots.astype(tokens.dtype)
        new_state, weights = [], []
        for block, regroup, s in zip(self.blocks, self.regroup, states):
            if regroup is not None:
                slots = jax.vmap(regroup)(slots)
            slots, s, w = block(slots, tokens, s)
            new_state.append(s)
            weights.append(w)
        return slots, tuple(new_state), tuple(weights)

    def step(
        self, state: tuple[TimeMixerState, ...], tokens: Float[Array, "tokens input_dim"]
    ) -> tuple[
        tuple[TimeMixerState, ...],
        Float[Array, "slots dim"],
        tuple[Float[Array, "heads _ tokens"], ...],
    ]:
        """One frame: `(state, slots, weights)`, O(1) in the video length with
        selective SSMs."""
        self._check("SlotSSM.step", tokens, 2)
        self._check_state("SlotSSM.step", state)
        slots = self.init_slots.astype(tokens.dtype)
        new_state, weights = [], []
        for block, regroup, s in zip(self.blocks, self.regroup, state):
            if regroup is not None:
                slots = regroup(slots)
            s, slots, w = block.step(s, slots, tokens)
            new_state.append(s)
            weights.append(w)
        return tuple(new_state), slots, tuple(weights)
