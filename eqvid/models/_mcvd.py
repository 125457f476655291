"""MCVD (Voleti, Jolicoeur-Martineau & Pal, NeurIPS 2022) as an eqvid model family
(`--model mcvd`): one denoising diffusion model for video prediction, generation,
interpolation and past prediction, by masking its conditioning frames at random
(voletiv/mcvd-pytorch).

A training clip is `[past (num_frames_cond) | current (num_frames) | future
(num_frames_future)]`. The network (`eqvid.nn.NCSNppUNet`) sees the noisy current
frames and the past and future frames, all stacked on channels, and predicts the
noise:

    past ← 0 with probability prob_mask_cond (all past frames of a clip together)
    future ← 0 with probability prob_mask_future (or with the past's coin: prob_mask_sync)
    t ~ U{0 … T-1},  x_t = √ᾱ_t current + √(1 - ᾱ_t) ε
    loss = ½ Σ_pixels (ε - ε̂(x_t, t, [past, future]))²,  averaged over clips

or, with `prediction="v"` (the CPU preset's), v = √ᾱ_t ε - √(1 - ᾱ_t) current in
place of ε (Salimans & Ho 2022).

Masked frames are zeros in eqvid's `[-1, 1]` range (mid-grey), as the original's.
Sampling (`eqvid.nn.diffusion_sample`: DDPM or DDIM on a subsampled grid) draws one
block of `num_frames` frames; long videos come block by block, the conditioning
window sliding over the frames generated so far (MCVD's `video_gen`). Steps follow
eqvid's convention (`eqvid.nn.DiffusionSchedule`: `t = 0` the least noisy), not
MCVD's reversed labels.
"""

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..nn._diffusion_sampling import Prediction, Sampler, diffusion_sample
from ..nn._diffusion_schedule import DiffusionSchedule, ScheduleKind
from ..nn._ncsnpp import NCSNppUNet
from ._abstract import (
    AbstractInfillingVideoModel,
    AbstractUnconditionalVideoModel,
    GroupSettings,
    KeyOrKeys,
    LossTerms,
    VideoBatch,
    mean_over_videos,
)
from ._frames import check_context, check_frames, check_positive
from ._registry import ModelSpec, preset_of, register_model


@dataclasses.dataclass(frozen=True)
class MCVDConfig:
    """Frames, masking, noise schedule, U-Net and sampler of an `MCVDVideoModel`
    (MCVD's config names where it has them). Presets: `MCVDConfig.preset(name)`
    (`smmnist_big`, `smmnist_small`, `smmnist_spatin`, `kth`, `bair`, `small`)."""

    frame_size: int = 64
    """Height and width of the frames (`data.image_size`)."""
    channels: int = 1
    """Colour channels of the frames."""
    num_frames_cond: int = 5
    """Past frames the model conditions on (`data.num_frames_cond`)."""
    num_frames: int = 5
    """Frames generated per block (`data.num_frames`)."""
    num_frames_future: int = 0
    """Future frames (after the block) the model conditions on, for interpolation
    (`data.num_frames_future`)."""
    prob_mask_cond: float = 0.0
    """Probability that a training clip's past frames are all masked (0.5: one model
    that also generates from nothing)."""
    prob_mask_future: float = 0.0
    """Probability that a training clip's future frames are all masked."""
    prob_mask_sync: bool = False
    """Mask the future exactly when the past is masked (one coin)."""
    schedule: ScheduleKind = "linear"
    """Noise schedule: `linear` (β from `beta_start` to `beta_end`) or `cosine`."""
    diffusion_steps: int = 1000
    """Steps T of the forward process (`model.num_classes`)."""
    beta_start: float = 1e-4
    """β of the least noisy step (MCVD's `sigma_end`)."""
    beta_end: float = 0.02
    """β of the noisiest step (MCVD's `sigma_begin`)."""
    ngf: int = 64
    """U-Net base width."""
    ch_mult: tuple[int, ...] = (1, 2, 3, 4)
    """U-Net width multipliers per level."""
    num_res_blocks: int = 2
    """Residual blocks per U-Net level."""
    attn_resolutions: tuple[int, ...] = (8, 16, 32)
    """Feature widths with self-attention."""
    n_head_channels: int = 64
    """Channels per attention head (-1: one head)."""
    dropout: float = 0.1
    """Dropout inside the residual blocks."""
    spade_dim: int = 0
    """0: condition by stacking frames on channels (MCVD-concat); > 0: SPATIN, SPADE
    normalisation from the conditioning frames with this hidden width."""
    prediction: Prediction = "eps"
    """What the network predicts: `eps`, the noise ε (MCVD), or `v` = √ᾱ ε - √(1-ᾱ) x₀
    (Salimans & Ho 2022; the CPU preset's: see `docs/models/mcvd.md`)."""
    sampler: Sampler = "ddpm"
    """`ddpm` (ancestral) or `ddim`."""
    sampling_steps: int = 100
    """Network calls per block (a divisor of `diffusion_steps`)."""
    eta: float = 0.0
    """DDIM's η (0: deterministic given the initial noise)."""
    clip_x0: bool = True
    """Clip each step's estimate of the clean frames to [-1, 1] (`clip_before`)."""
    final_denoise: bool = True
    """One more ε̂ step after the last (`sampling.denoise`)."""

    def __post_init__(self):
        name = "MCVDConfig"
        check_positive(
            self, "frame_size", "channels", "num_frames", "diffusion_steps", "ngf",
            "num_res_blocks", "sampling_steps",
        )  # fmt: skip
        for field in ("num_frames_cond", "num_frames_future", "spade_dim"):
            if getattr(self, field) < 0:
                raise ValueError(f"{name}: `{field}` must be ≥ 0, got {getattr(self, field)}.")
        for field in ("prob_mask_cond", "prob_mask_future"):
            if not 0 <= getattr(self, field) <= 1:
                raise ValueError(
                    f"{name}: `{field}` must be in [0, 1], got {getattr(self, field)}."
                )
        if self.num_frames_cond + self.num_frames_future == 0 and self.spade_dim:
            raise ValueError(f"{name}: SPATIN (`spade_dim` > 0) needs conditioning frames.")
        if self.prob_mask_sync and self.num_frames_future == 0:
            raise ValueError(f"{name}: `prob_mask_sync` needs future frames (num_frames_future).")
        if self.schedule not in ("linear", "cosine") or self.sampler not in ("ddpm", "ddim"):
            raise ValueError(
                f"{name}: `schedule` must be 'linear' or 'cosine' and `sampler` 'ddpm' or "
                f"'ddim'; got {self.schedule!r}, {self.sampler!r}."
            )
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"{name}: `prediction` must be 'eps' or 'v', got {self.prediction!r}.")
        if not 0 <= self.dropout < 1 or self.eta < 0:
            raise ValueError(
                f"{name}: `dropout` must be in [0, 1) and `eta` ≥ 0; got {self.dropout}, {self.eta}."
            )
        levels = len(self.ch_mult)
        if levels < 1 or self.frame_size % 2 ** (levels - 1):
            raise ValueError(
                f"{name}: the U-Net halves `frame_size` ({self.frame_size}) {levels - 1} times "
                f"(len(ch_mult) = {levels}); use a frame size that is a multiple of "
                f"{2 ** max(levels - 1, 0)} or fewer levels."
            )
        self.diffusion_schedule.grid(self.sampling_steps)  # raises naming the divisors

    @property
    def clip_length(self) -> int:
        """Frames of a training clip: past + current + future."""
        return self.num_frames_cond + self.num_frames + self.num_frames_future

    @property
    def diffusion_schedule(self) -> DiffusionSchedule:
        """The noise schedule's tables."""
        return DiffusionSchedule(
            self.schedule, self.diffusion_steps, beta_start=self.beta_start, beta_end=self.beta_end
        )

    @classmethod
    def preset(cls, name: str) -> "MCVDConfig":
        """A named configuration."""
        return preset_of(cls, name)


_SMMNIST_BIG = MCVDConfig()
MCVD_PRESETS: dict[str, MCVDConfig] = {
    # configs/smmnist_DDPM_big5.yml as the paper's runs train it (arch unetmore, 2 blocks
    # per level): 5 past → 5 frames, 64², 27,941,765 parameters; sampled with DDPM-100.
    "smmnist_big": _SMMNIST_BIG,
    # smmnist_DDPM_small5.yml with the unetmore network its scripts select: 5 → 2 frames,
    # ngf 32, (1, 2, 2, 2), one block per level: 2,386,850 parameters.
    "smmnist_small": dataclasses.replace(
        _SMMNIST_BIG, num_frames=2, ngf=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1
    ),
    # smmnist_DDPM_big5_spade.yml (SPATIN, spade_dim 128): 53,953,989 parameters.
    "smmnist_spatin": dataclasses.replace(_SMMNIST_BIG, spade_dim=128),
    # kth64_big.yml: 10 past → 5, ngf 96, heads of 96 channels: 62,831,141 parameters.
    "kth": dataclasses.replace(_SMMNIST_BIG, num_frames_cond=10, ngf=96, n_head_channels=96),
    # bair_big.yml: colour, 2 past → 5, ngf 96: 62,844,975 parameters.
    "bair": dataclasses.replace(
        _SMMNIST_BIG, channels=3, num_frames_cond=2, ngf=96, n_head_channels=96
    ),
    # CPU-sized: 48² frames (two 28-pixel digits have room to move), 5 past → 5, a
    # three-level U-Net of width 32 with attention at 12², sampled with DDIM-25. It
    # predicts v, not ε: a short run's ε̂ is not precise enough at the noisiest steps,
    # where x̂₀ multiplies its error by 1/√ᾱ. Its x̂₀ is not clipped: clipping a noisy
    # estimate at the black of the background biases it upward, step after step, into
    # a grey haze (docs/models/mcvd.md).
    "small": dataclasses.replace(
        _SMMNIST_BIG,
        prediction="v",
        clip_x0=False,
        frame_size=48,
        ngf=32,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(12,),
        sampler="ddim",
        sampling_steps=25,
    ),
}


def _stack(frames: Float[Array, "frames height width channels"]) -> Array:
    """`(frames, H, W, C)` → `(H, W, frames · C)`, frame-major (MCVD's channel order)."""
    f, h, w, c = frames.shape
    return jnp.moveaxis(frames, 0, 2).reshape(h, w, f * c)


def _unstack(x: Array, channels: int) -> Array:
    h, w, fc = x.shape
    return jnp.moveaxis(x.reshape(h, w, fc // channels, channels), 2, 0)


def block_autoregressive(
    sample: Callable[[Array, PRNGKeyArray], Array],
    window: Float[Array, "cond height width channels"],
    num_frames: int,
    frames_per_block: int,
    *,
    key: PRNGKeyArray,
) -> Float[Array, "{num_frames} height width channels"]:
    """MCVD's long-video rollout (`video_gen`): `ceil(num_frames / frames_per_block)`
    blocks, each `sample(window, key)` → `frames_per_block` frames from fresh noise;
    after each block the window becomes the newest `len(window)` frames of [window,
    block] (MCVD's `cond = cat(cond[num_frames:], gen[max(0, num_frames - cond):])`).
    One `lax.scan` over the blocks; the first `num_frames` generated frames."""
    blocks = math.ceil(num_frames / frames_per_block)
    size = window.shape[0]

    def block(window, k):
        gen = sample(window, k)
        if size:
            window = jnp.concatenate([window, gen])[-size:]
        return window, gen

    _, gens = jax.lax.scan(block, window, jax.random.split(key, blocks))
    return gens.reshape(-1, *gens.shape[2:])[:num_frames]


class MCVDVideoModel(AbstractUnconditionalVideoModel, AbstractInfillingVideoModel):
    """MCVD on frames (see the module docstring): `network` is the NCSN++ denoiser.

    **Loss** (term `denoising`; `eps_mse` or `v_mse`: the mean square error of ε̂ or
    v̂ per pixel): on a random window of `clip_length` frames of each training video,
    MCVD's masked ε-prediction objective (or its v form), summed over the block's
    pixels as the original.

    **Sampling**: `sample_block(past, future, key=…)` draws one block (`None` for a
    masked side); `generate` continues a video block by block (prediction);
    `generate_unconditional` starts from masked conditioning; `interpolate` and
    `predict_past` fill in between or before given frames. Every call is one jitted
    program: a `lax.scan` over blocks around a `lax.scan` over sampler steps.
    Sample with the EMA weights (`--ema-decay 0.999`, as MCVD).
    """

    network: NCSNppUNet
    config: MCVDConfig = eqx.field(static=True)

    def __init__(self, config: MCVDConfig, *, key: PRNGKeyArray):
        c = config
        self.network = NCSNppUNet(
            image_size=c.frame_size, in_channels=c.channels * c.num_frames,
            out_channels=c.channels * c.num_frames,
            cond_channels=c.channels * (c.num_frames_cond + c.num_frames_future), ngf=c.ngf,
            ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks,
            attn_resolutions=c.attn_resolutions, n_head_channels=c.n_head_channels,
            dropout=c.dropout, spade_dim=c.spade_dim, key=key,
        )  # fmt: skip
        self.config = config

    # -- pieces --------------------------------------------------------------------------

    def _cond(self, past, future):
        """The conditioning frames stacked on channels (`None` when there are none)."""
        parts = [p for p in (past, future) if p.shape[0]]
        return _stack(jnp.concatenate(parts)) if parts else None

    def denoise(
        self,
        x_t: Float[Array, "frames height width channels"],
        t: Int[ArrayLike, ""],
        past: Float[Array, "past height width channels"],
        future: Float[Array, "future height width channels"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "frames height width channels"]:
        """The network's output for the noisy block `x_t` at step `t` (ε̂, or v̂ with
        `prediction="v"`), given `past` (`num_frames_cond`) and `future`
        (`num_frames_future`) frames, masked ones zero. `key`: dropout."""
        c = self.config
        eps = self.network(_stack(x_t), jnp.asarray(t), self._cond(past, future), key=key)
        return _unstack(eps, c.channels)

    def _masked(self, frames, count, name, owner):
        """`frames` (or zeros for `None`) checked to hold `count` frames."""
        c = self.config
        shape = (count, c.frame_size, c.frame_size, c.channels)
        if frames is None:
            return jnp.zeros(shape, jnp.float32)
        if tuple(frames.shape) != shape:
            raise ValueError(
                f"{owner}: `{name}` must be {shape} (`num_frames_{'cond' if name == 'past' else 'future'}`"
                f" = {count}), got {tuple(frames.shape)}."
            )
        return frames

    def sample_block(
        self,
        past: Float[Array, "past height width channels"] | None,
        future: Float[Array, "future height width channels"] | None = None,
        *,
        key: PRNGKeyArray,
    ) -> Float[Array, "frames height width channels"]:
        """One block of `num_frames` frames given `past` and `future` (`None`: masked,
        zeros), drawn by the config's sampler from fresh noise, clipped to [-1, 1]."""
        owner = f"{type(self).__name__}.sample_block"
        c = self.config
        past = self._masked(past, c.num_frames_cond, "past", owner)
        future = self._masked(future, c.num_frames_future, "future", owner)
        return self._sample(past, future, key)

    def _sample(self, past, future, key):
        c = self.config
        k_noise, k_steps = jax.random.split(key)
        shape = (c.num_frames, c.frame_size, c.frame_size, c.channels)
        noise = jax.random.normal(k_noise, shape, jnp.float32)
        model_fn = lambda x, t: self.denoise(x, t, past, future)
        x = diffusion_sample(
            model_fn, noise, c.diffusion_schedule, steps=c.sampling_steps, sampler=c.sampler,
            eta=c.eta, clip_x0=c.clip_x0, final_denoise=c.final_denoise,
            prediction=c.prediction, key=k_steps,
        )  # fmt: skip
        return jnp.clip(x, -1.0, 1.0)

    def _rollout(self, window, num_frames, key):
        """Blocks after the conditioning `window`, future frames masked."""
        c = self.config
        future = jnp.zeros((c.num_frames_future, c.frame_size, c.frame_size, c.channels))
        sample = lambda window, k: self._sample(window, future, k)
        return block_autoregressive(sample, window, num_frames, c.num_frames, key=key)

    # -- the contract ----------------------------------------------------------------------

    def check_batch(
        self,
        video: Float[np.ndarray, "batch time height width channels"],
        actions: Int[np.ndarray, "batch time"] | None,
    ) -> None:
        """At least one video of at least `clip_length` frames of the model's size; no
        actions."""
        owner = type(self).__name__
        if video.shape[0] < 1:
            raise ValueError(f"{owner}: `batch` needs at least 1 video, got 0.")
        check_frames(self, video[0], "batch.video")
        need = self.config.clip_length
        if video.shape[1] < need:
            raise ValueError(
                f"{owner}: training clips need {need} frames (num_frames_cond + num_frames + "
                f"num_frames_future), got videos of {video.shape[1]}; raise --seq-len."
            )
        if actions is not None and np.any(np.asarray(actions) >= 0):
            raise ValueError(f"{owner}: MCVD takes no actions; train it on a dataset without them.")

    def loss(
        self,
        batch: VideoBatch,
        state: eqx.nn.State | None = None,
        *,
        key: KeyOrKeys | None = None,
        step: Int[ArrayLike, ""] = 0,
    ) -> tuple[Scalar, LossTerms, eqx.nn.State | None]:
        """MCVD's masked ε- (or v-) prediction loss (see the class), averaged over the batch.
        `key` draws windows, masks, steps, noise and dropout; `None` (evaluation) uses
        fixed ones: the first window, no masks, no dropout."""
        del step
        c = self.config
        video = batch.frames(type(self).__name__)
        schedule = c.diffusion_schedule
        alpha_bars = jnp.asarray(schedule.alpha_bars, jnp.float32)

        def one(frames, actions, key):
            del actions
            fixed = key is None
            key = jax.random.key(0) if key is None else key
            k_start, k_past, k_fut, k_t, k_noise, k_drop = jax.random.split(key, 6)
            spare = frames.shape[0] - c.clip_length
            start = 0 if fixed else jax.random.randint(k_start, (), 0, spare + 1)
            clip = jax.lax.dynamic_slice_in_dim(frames, start, c.clip_length).astype(jnp.float32)
            past = clip[: c.num_frames_cond]
            current = clip[c.num_frames_cond : c.num_frames_cond + c.num_frames]
            future = clip[c.num_frames_cond + c.num_frames :]
            keep_past = jax.random.uniform(k_past) >= c.prob_mask_cond
            keep_future = (
                keep_past if c.prob_mask_sync else jax.random.uniform(k_fut) >= c.prob_mask_future
            )
            if not fixed:
                past = jnp.where(keep_past, past, 0.0)
                future = jnp.where(keep_future, future, 0.0)
            t = jax.random.randint(k_t, (), 0, c.diffusion_steps)
            noise = jax.random.normal(k_noise, current.shape, jnp.float32)
            a = alpha_bars[t]
            x_t = jnp.sqrt(a) * current + jnp.sqrt(1 - a) * noise
            out = self.denoise(x_t, t, past, future, key=None if fixed else k_drop)
            if c.prediction == "v":
                target = jnp.sqrt(a) * noise - jnp.sqrt(1 - a) * current
            else:
                target = noise
            err = jnp.square(out.astype(jnp.float32) - target)
            return 0.5 * jnp.sum(err), {f"{c.prediction}_mse": jnp.mean(err)}

        loss, terms = mean_over_videos(one, VideoBatch(video, None), key)
        return loss, {"denoising": loss, **terms}, state

    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray,
        actions: Int[Array, " total"] | None = None,
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Prediction: the `num_frames` frames after `context`, block by block from its
        last `num_frames_cond` frames (the window then slides over the generated
        frames; future frames masked). Different keys draw different futures."""
        owner = f"{type(self).__name__}.generate"
        c = self.config
        check_context(self, context)
        if num_frames < 1:
            raise ValueError(f"{owner}: `num_frames` must be ≥ 1, got {num_frames}.")
        if actions is not None:
            raise ValueError(f"{owner}: MCVD takes no actions; got `actions`.")
        if c.num_frames_cond == 0:
            raise ValueError(
                f"{owner}: this model conditions on no past frames (num_frames_cond = 0), so it "
                "cannot predict from a context; use generate_unconditional."
            )
        if context.shape[0] < c.num_frames_cond:
            raise ValueError(
                f"{owner}: the model conditions on num_frames_cond = {c.num_frames_cond} past "
                f"frames, but `context` has {context.shape[0]}; give at least "
                f"{c.num_frames_cond} frames."
            )
        window = context[-c.num_frames_cond :].astype(jnp.float32)
        return self._rollout(window, num_frames, key)

    def generate_unconditional(
        self, num_frames: int, *, key: PRNGKeyArray
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Generation: the first block from masked (zero) past and future, then block by
        block with the window sliding over the generated frames, as MCVD's `video_gen`.
        Meaningful for a model trained with `prob_mask_cond` > 0."""
        c = self.config
        if num_frames < 1:
            raise ValueError(
                f"{type(self).__name__}.generate_unconditional: `num_frames` must be ≥ 1, got "
                f"{num_frames}."
            )
        window = jnp.zeros((c.num_frames_cond, c.frame_size, c.frame_size, c.channels))
        return self._rollout(window, num_frames, key)

    def interpolate(
        self,
        past: Float[Array, "past height width channels"],
        future: Float[Array, "future height width channels"],
        *,
        key: PRNGKeyArray,
    ) -> Float[Array, "frames height width channels"]:
        """Interpolation: the `num_frames` frames between `past` (`num_frames_cond`) and
        `future` (`num_frames_future`; the model must have future frames)."""
        owner = f"{type(self).__name__}.interpolate"
        if self.config.num_frames_future == 0:
            raise ValueError(
                f"{owner}: this model has no future frames (num_frames_future = 0); train one "
                "with --num-frames-future to interpolate."
            )
        return self.sample_block(past, future, key=key)

    def predict_past(
        self, future: Float[Array, "future height width channels"], *, key: PRNGKeyArray
    ) -> Float[Array, "frames height width channels"]:
        """Past prediction: the `num_frames` frames before `future`, the past masked."""
        if self.config.num_frames_future == 0:
            raise ValueError(
                f"{type(self).__name__}.predict_past: this model has no future frames "
                "(num_frames_future = 0); train one with --num-frames-future."
            )
        return self.sample_block(None, future, key=key)

    def infill_frames(self) -> tuple[int, int, int]:
        """`(num_frames_cond, num_frames, num_frames_future)`."""
        c = self.config
        return c.num_frames_cond, c.num_frames, c.num_frames_future

    def infill(
        self,
        before: Float[Array, "before height width channels"] | None,
        after: Float[Array, "after height width channels"] | None,
        *,
        key: PRNGKeyArray,
    ) -> Float[Array, "between height width channels"]:
        """One block between `before` (past) and `after` (future), `None` masked:
        `sample_block`."""
        return self.sample_block(before, after, key=key)

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """One group (MCVD trains every parameter with one Adam)."""
        return {}

    def with_state(self, state: eqx.nn.State | None) -> "MCVDVideoModel":
        """No model state: the model itself."""
        del state
        return self


register_model(ModelSpec("mcvd", "MCVD", MCVDConfig, MCVDVideoModel, MCVD_PRESETS))

__all__ = ["MCVD_PRESETS", "MCVDConfig", "MCVDVideoModel", "block_autoregressive"]
