"""MeBT (Yoo et al., ICCV 2023; Ugness/MeBT): a bidirectional transformer over a 3D
tokenizer's whole code volume, every layer routed through learned latent tokens, so
that its memory and time grow linearly with the tokens. Trained by MaskGen (random
context / target splits of each volume), it generates all frames of a clip in
parallel by MaskGit decoding, unconditionally or given observed frames."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..kernels.attention import AttentionImpl
from ..nn._mebt import MEBT_RELEASED_LAYERS, MeBTTransformer, mebt_layers
from ..nn._mebt_maskgen import (
    MEBT_LENGTH_PRIORS,
    MEBT_SCHEDULES,
    MeBTLengthPrior,
    MeBTSchedule,
    maskgen_split,
    target_cross_entropy,
)
from ..nn._mebt_sampling import mebt_revise, mebt_sample
from ..nn._roles import role
from ._abstract import (
    AbstractUnconditionalVideoModel,
    GroupSettings,
    KeyOrKeys,
    LossTerms,
    per_video_keys,
)
from ._frames import check_positive
from ._latent import (
    AbstractLatentVideoModel,
    _probe_length,
    check_latent_batch,
    check_latent_frames,
    tokenizer_argument,
)
from ._registry import ModelSpec, preset_of, register_model
from ._tokenizer import AbstractVideoTokenizer


@dataclasses.dataclass(frozen=True)
class MeBTConfig:
    """Architecture, training split and sampler of a `MeBTVideoModel` (the original's
    config keys in brackets). Presets: `MeBTConfig.preset(name)`: the six released
    configs (`ucf-16f`, `ucf-128f`, `sky-16f`, `sky-128f`, `taichi-16f`, `taichi-128f`)
    and `small` for a CPU."""

    frame_size: int = 128
    """Height and width of the frames (the tokenizer's; set from the data)."""
    channels: int = 3
    """Colour channels of the frames (the tokenizer's; set from the data)."""
    tokenizer: str = ""
    """The 3D tokenizer folder or training run the model stands on (with --dataset
    codes: the one the codes were encoded with)."""
    max_steps: int = 4
    """Latent time steps of the longest code volume (4 for 16 frames of TATS's 4×
    temporal downsampling, 32 for 128); with the code grid it sets the positions
    (`block_size` = steps × height × width)."""
    dim: int = 1024
    """Token width (`n_embd`)."""
    num_heads: int = 16
    """Attention heads (`n_head`)."""
    num_latents: int = 256
    """Learned latent tokens, the bottleneck every layer goes through (`sos_emb`)."""
    layers: tuple[str, ...] = MEBT_RELEASED_LAYERS
    """The kind of each layer in order (`mode`): latent_enc, latent_self, latent_dec,
    lt2l, maskgit; the released configs' 24 are `eqvid.nn.MEBT_RELEASED_LAYERS`."""
    dropout: float = 0.0
    """Embedding and residual dropout (`embd_pdrop`, `resid_pdrop`)."""
    schedule: MeBTSchedule = "linear"
    """Training mask-ratio schedule (`mask.schedule`): cosine, cosine_plus, linear,
    quadratic, square, cube, sqrt, convex."""
    budget: int = 0
    """Most targets per example (`max_token`); 0: every masked token."""
    length_prior: MeBTLengthPrior = "longest"
    """Length curriculum (`t_prior`): longest, uniform, gaussian2, gaussian100000_2."""
    sample_steps: int = 128
    """MaskGit decoding steps (`vid_n_steps`)."""
    temperature: float = 1.0
    """Sampling temperature of the tokens (`temp`)."""
    top_k: int = 0
    """Draw from the `top_k` most likely tokens only; 0: all."""
    context_temp: float = 6.0
    """Context temperature τ_c of the Gumbel top-k choice of the tokens to keep
    (`vid_c_temp`), annealed as `τ_c·(1 − t)`."""
    sample_schedule: MeBTSchedule = "cosine"
    """The mask-ratio schedule of the sampler (the sampling scripts' `cosine`)."""
    bootstrap: int = 0
    """Steps before decoding that each fix one random token (`bootstrap`; 64 in the
    128-frame scripts)."""
    revise_rounds: int = 4
    """Draft-and-revise: rounds of block-Gibbs revision after decoding (`M`); 0: none."""
    revise_chunks: int = 4
    """Chunks each revision round redraws in turn (`n_revise`)."""
    revise_temperature: float = 0.7
    """Sampling temperature of the revision (`revise_t`)."""
    attention_impl: AttentionImpl = "auto"
    """`eqvid.kernels.attention` implementation: "auto", "pallas", "xla" or "cudnn"."""

    def __post_init__(self):
        name = type(self).__name__
        check_positive(
            self, "frame_size", "channels", "max_steps", "dim", "num_heads", "num_latents",
            "sample_steps", "revise_chunks",
        )  # fmt: skip
        for field in ("budget", "top_k", "bootstrap", "revise_rounds"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: `{field}` must be an int ≥ 0, got {value!r}.")
        if self.dim % self.num_heads:
            raise ValueError(
                f"{name}: `dim` ({self.dim}) must be divisible by `num_heads` ({self.num_heads})."
            )
        for field, choices in (
            ("schedule", MEBT_SCHEDULES),
            ("sample_schedule", MEBT_SCHEDULES),
            ("length_prior", MEBT_LENGTH_PRIORS),
        ):
            if getattr(self, field) not in choices:
                raise ValueError(
                    f"{name}: `{field}` must be one of {choices}, got {getattr(self, field)!r}."
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: `dropout` must be in [0, 1), got {self.dropout!r}.")
        for field in ("temperature", "revise_temperature"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{name}: `{field}` must be > 0, got {getattr(self, field)!r}.")
        if self.context_temp < 0:
            raise ValueError(f"{name}: `context_temp` must be ≥ 0, got {self.context_temp!r}.")

    @classmethod
    def preset(cls, name: str) -> "MeBTConfig":
        """A named configuration (the released ones and `"small"` for a CPU)."""
        return preset_of(cls, name)


def _released(max_steps: int, **kwargs) -> MeBTConfig:
    return MeBTConfig(max_steps=max_steps, **kwargs)


MEBT_PRESETS: dict[str, MeBTConfig] = {
    # configs/{ucf,stl,taichi}/mebt_{16f,128f}.yaml (architecture, curriculum, dropout)
    # and scripts/valid_dnr_config_ckpt_exp_*.sh (the samplers). 128×128 frames on TATS's
    # 4×8×8 VQGAN (16384 codes): 16 frames are 4×16×16 codes, 128 frames 32×16×16.
    "ucf-16f": _released(
        4, sample_steps=128, context_temp=6.0, revise_chunks=4, revise_rounds=4,
        revise_temperature=0.7,
    ),
    "ucf-128f": _released(
        32, length_prior="gaussian100000_2", sample_steps=32, context_temp=2.0, top_k=32,
        bootstrap=64, revise_chunks=32, revise_rounds=2, revise_temperature=0.1,
    ),
    "sky-16f": _released(
        4, dropout=0.1, sample_steps=32, context_temp=8.0, revise_chunks=2, revise_rounds=2,
        revise_temperature=0.7,
    ),
    "sky-128f": _released(
        32, dropout=0.1, length_prior="gaussian2", sample_steps=32, context_temp=4.0,
        top_k=32, bootstrap=64, revise_chunks=2, revise_rounds=2, revise_temperature=0.7,
    ),
    "taichi-16f": _released(
        4, sample_steps=64, context_temp=2.0, revise_chunks=2, revise_rounds=8,
        revise_temperature=0.3,
    ),
    "taichi-128f": _released(
        32, length_prior="gaussian100000_2", sample_steps=32, context_temp=4.0, top_k=32,
        bootstrap=64, revise_chunks=2, revise_rounds=4, revise_temperature=0.1,
    ),
    # A CPU size on the small 3D tokenizer (64×64 frames, 2×4×4 downsampling: 16 frames
    # are 8×16×16 = 2048 codes).
    "small": MeBTConfig(
        frame_size=64, channels=1, max_steps=8, dim=64, num_heads=4, num_latents=32,
        layers=mebt_layers(2, 2), sample_steps=12, context_temp=2.0, revise_rounds=1,
        revise_chunks=2,
    ),
}  # fmt: skip


class MeBTVideoModel(AbstractLatentVideoModel, AbstractUnconditionalVideoModel):
    """MeBT on a frozen 3D tokenizer's codes (see the module docstring and
    `eqvid.nn.MeBTTransformer`).

    **Training** (`codes_loss`): each video's code volume `(steps, h, w)` flattened to
    `steps·h·w` tokens, split by MaskGen (`eqvid.nn.maskgen_split`: a random order, the
    mask ratio from `schedule` at `t ~ U[0, 1)`, contexts the first tokens of the order
    and targets the last, up to `budget`; under a length curriculum a random window of
    latent time); the loss is the cross-entropy of the targets summed over the batch
    and divided by the masked tokens (`avg_loss`), term `mask_loss`, with the top-1
    accuracy `acc1`. Evaluation (no key) draws the splits from a fixed key.

    **Generation** (`generate_codes`): the context steps are observed tokens, kept
    exactly; the following steps are decoded in parallel by MeBT's MaskGit sampler
    (`eqvid.nn.mebt_sample`), then revised (`eqvid.nn.mebt_revise`). The whole volume
    must fit `max_steps`: MeBT generates one clip, it does not slide.
    `generate_unconditional` draws clips from nothing.
    """

    tokenizer: AbstractVideoTokenizer = eqx.field(metadata=role(frozen=True))
    network: MeBTTransformer
    config: MeBTConfig = eqx.field(static=True)
    grid: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        config: MeBTConfig,
        *,
        key: PRNGKeyArray,
        tokenizer: AbstractVideoTokenizer | None = None,
    ):
        c = config
        owner = type(self).__name__
        tok = tokenizer_argument(owner, c, tokenizer)
        shortest = _probe_length(tok, c.frame_size, c.frame_size)
        _, h, w = tok.code_shape(shortest, c.frame_size, c.frame_size)
        if c.budget > c.max_steps * h * w:
            raise ValueError(
                f"{owner}: `budget` ({c.budget}) is more than the {c.max_steps * h * w} tokens "
                f"of a volume ({c.max_steps}×{h}×{w})."
            )
        self.tokenizer = tok
        self.network = MeBTTransformer(
            num_codes=tok.n_codes,
            max_tokens=c.max_steps * h * w,
            dim=c.dim,
            num_heads=c.num_heads,
            num_latents=c.num_latents,
            layers=c.layers,
            dropout=c.dropout,
            impl=c.attention_impl,
            key=key,
        )
        self.config = config
        self.grid = (h, w)

    # -- training ----------------------------------------------------------------------

    def codes_loss(
        self,
        codes: Int[Array, "batch steps code_height code_width"],
        actions: Int[Array, "batch frames"] | None,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """MaskGen's loss of a batch of code volumes: `(loss, terms, state)` (see the
        class). `step` drives the length curriculum."""
        c = self.config
        owner = type(self).__name__
        b, steps = codes.shape[:2]
        self._check_volume(owner, codes.shape[1:], actions)
        shape = (steps, *self.grid)
        flat = codes.reshape(b, -1).astype(jnp.int32)
        n = flat.shape[1]
        budget = min(c.budget, n) if c.budget else n
        keys = per_video_keys(key, b)
        split_keys = (
            jax.random.split(jax.random.key(0), b)
            if keys is None
            else jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        )

        def one(video, k_split, k_drop):
            split = maskgen_split(
                k_split, shape, schedule=c.schedule, budget=budget,
                length_prior=c.length_prior, step=step,
            )  # fmt: skip
            logits = self.network(
                video, split.context_index, split.n_contexts, split.target_index,
                split.n_targets, key=k_drop,
            )  # fmt: skip
            ce = target_cross_entropy(logits, video, split)
            real = jnp.arange(budget) < split.n_targets
            hits = jnp.sum(real & (jnp.argmax(logits, -1) == video[split.target_index]))
            return ce, split.n_masked, hits, split.n_targets

        if keys is None:
            ce, masked, hits, targets = jax.vmap(lambda v, k: one(v, k, None))(flat, split_keys)
        else:
            drop_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
            ce, masked, hits, targets = jax.vmap(one)(flat, split_keys, drop_keys)
        loss = jnp.sum(ce) / jnp.sum(masked).astype(jnp.float32)
        acc = jnp.sum(hits).astype(jnp.float32) / jnp.sum(targets).astype(jnp.float32)
        return loss, {"mask_loss": loss, "acc1": acc}, state

    # -- generation --------------------------------------------------------------------

    def _sample_volume(self, codes, known, key):
        c = self.config
        k_draft, k_revise = jax.random.split(key)
        codes, _ = mebt_sample(
            self.network, codes, known, key=k_draft, num_steps=c.sample_steps,
            temperature=c.temperature, top_k=c.top_k or None, context_temp=c.context_temp,
            schedule=c.sample_schedule, bootstrap=c.bootstrap,
        )  # fmt: skip
        if c.revise_rounds:
            codes = mebt_revise(
                self.network, codes, known, key=k_revise, num_chunks=c.revise_chunks,
                rounds=c.revise_rounds, temperature=c.revise_temperature,
            )  # fmt: skip
        return codes

    def generate_codes(
        self,
        context: Int[Array, "context_steps code_height code_width"],
        num_steps: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " frames"] | None = None,
    ) -> Int[Array, "{num_steps} code_height code_width"]:
        """The `num_steps` steps after `context` (observed, kept exactly; may be empty),
        decoded together in parallel and revised (see the class)."""
        owner = f"{type(self).__name__}.generate"
        if actions is not None:
            raise ValueError(f"{owner}: MeBT is unconditional on actions; got `actions`.")
        n_ctx = context.shape[0]
        total = n_ctx + num_steps
        if num_steps < 1 or total > self.config.max_steps:
            raise ValueError(
                f"{owner}: context ({n_ctx} steps) + generated ({num_steps}) must be ≤ "
                f"max_steps = {self.config.max_steps} and generate ≥ 1 step: MeBT decodes one "
                "volume of up to max_steps latent steps."
            )
        self._check_volume(owner, (n_ctx, *context.shape[1:]), None)
        h, w = self.grid
        codes = jnp.zeros(total * h * w, jnp.int32).at[: n_ctx * h * w].set(context.reshape(-1))
        known = jnp.arange(total * h * w) < n_ctx * h * w
        out = self._sample_volume(codes, known, key)
        return out.reshape(total, h, w)[n_ctx:]

    def generate_unconditional(
        self, num_frames: int, *, key: PRNGKeyArray
    ) -> Float[Array, "{num_frames} height width channels"]:
        """A clip of `num_frames` frames drawn from nothing (the released scripts'
        unconditional sampling), decoded by the tokenizer and clipped to `[-1, 1]`."""
        c = self.config
        k = self.frames_per_step(c.frame_size, c.frame_size)
        steps = math.ceil(num_frames / k)
        h, w = self.grid
        codes = self.generate_codes(jnp.zeros((0, h, w), jnp.int32), steps, key=key)
        return jnp.clip(self.tokenizer.decode(codes)[:num_frames], -1.0, 1.0)

    # -- checks --------------------------------------------------------------------------

    def _check_volume(self, owner, shape, actions):
        steps = shape[0]
        if tuple(shape[1:]) != self.grid:
            raise ValueError(
                f"{owner}: codes must be on the {self.grid[0]}×{self.grid[1]} grid the model "
                f"was built for; got {tuple(shape[1:])}."
            )
        if steps > self.config.max_steps:
            raise ValueError(
                f"{owner}: {steps} latent steps exceed max_steps = {self.config.max_steps} "
                "(the positions the model has); train on shorter clips (--seq-len) or raise "
                "max_steps."
            )
        # Known actions (a batch's, before training) are refused; the training step's
        # are traced ("no action", -1, where the data has none).
        if isinstance(actions, np.ndarray) and np.any(actions >= 0):
            raise ValueError(
                f"{owner}: MeBT is unconditional on actions; train it on a dataset without them."
            )

    def check_codes_batch(
        self,
        codes: Int[np.ndarray, "batch steps code_height code_width"],
        actions: Int[np.ndarray, "batch frames"] | None,
    ) -> None:
        """Codes of the tokenizer's grid and codebook, at most `max_steps` steps, and no
        actions."""
        owner = type(self).__name__
        check_latent_batch(
            owner, codes, None, n_codes=self.tokenizer.n_codes, grid=self.grid, num_actions=None
        )
        self._check_volume(owner, codes.shape[1:], actions)

    def check_batch(
        self,
        video: Float[np.ndarray, "batch time height width channels"],
        actions: Int[np.ndarray, "batch time"] | None,
    ) -> None:
        """Frames of the tokenizer's size making at most `max_steps` steps; no actions."""
        c = self.config
        owner = type(self).__name__
        check_latent_frames(
            owner, video, None, frame_size=c.frame_size, channels=c.channels, num_actions=None
        )
        k = self.frames_per_step(c.frame_size, c.frame_size)
        self._check_volume(owner, (math.ceil(video.shape[1] / k), *self.grid), actions)

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """One group (the original trains every parameter at one rate)."""
        return {}

    def with_state(self, state: eqx.nn.State | None) -> "MeBTVideoModel":
        """No model state: the model itself."""
        del state
        return self


register_model(ModelSpec("mebt", "MeBT", MeBTConfig, MeBTVideoModel, MEBT_PRESETS))

__all__ = ["MEBT_PRESETS", "MeBTConfig", "MeBTVideoModel"]
