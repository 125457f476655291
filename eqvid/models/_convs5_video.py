"""ConvS5 video predictor: per-frame ResNet encoder → ConvS5 stack → ResNet decoder.

The Moving-MNIST ("novq") model of Smith et al. (NeurIPS 2023), reproduced
layer for layer (parameter counts of the released MNIST-300 / MNIST-600
configurations), with the batch size never baked in and a jitted O(1)-per-frame
rollout.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Complex, Float, Int, PRNGKeyArray, Scalar, jaxtyped

from .._conv import Conv2d
from .._convs5 import ConvS5, ScanImpl
from .._resnet import ResNetDecoder, ResNetEncoder
from ._abstract import AbstractVideoPredictor


# -- the frame codec shared by the "novq" video models ---------------------------------
# Encoder, action embedding, 1×1 projection to `d_model`, decoder, loss and input
# checks of the released models; `ConvLSTMVideoModel` reuses them around its own
# layer stack. Each model keeps these parts as its own fields (not a sub-module), so
# parameter paths (`.encoder…`, `.layers[i]…`) are the ones checkpoints know.


def check_codec_config(config) -> None:
    """Validate `encoder_depths` and `frame_size` of a model config (errors name the
    field and the config class)."""
    name = type(config).__name__
    down = 2 ** (len(config.encoder_depths) - 1)
    if not config.encoder_depths or min(config.encoder_depths) < 1:
        raise ValueError(
            f"{name}: `encoder_depths` must be positive channel counts, got "
            f"{config.encoder_depths}."
        )
    if config.frame_size % down:
        raise ValueError(
            f"{name}: `frame_size` ({config.frame_size}) must be divisible by the "
            f"encoder's downsampling 2**(len(encoder_depths)-1) = {down}; use a frame "
            f"size that is a multiple of {down} or fewer encoder stages."
        )


def check_loss_weight(config) -> None:
    """Validate `loss_weight ∈ [0, 1]`."""
    if not 0.0 <= config.loss_weight <= 1.0:
        raise ValueError(
            f"{type(config).__name__}: `loss_weight` must be in [0, 1], got "
            f"{config.loss_weight}."
        )


def make_codec(
    config,
    *,
    encoder_key: PRNGKeyArray,
    action_key: PRNGKeyArray,
    project_key: PRNGKeyArray,
    decoder_key: PRNGKeyArray,
) -> tuple[ResNetEncoder, Float[Array, "actions embed"], Conv2d, ResNetDecoder]:
    """`(encoder, action_embedding, project, decoder)` for `config` (frame_size, channels,
    encoder_depths, d_model, action_dim, action_embed_dim)."""
    c = config
    encoder = ResNetEncoder(c.channels, c.encoder_depths, key=encoder_key)
    action_embedding = jax.random.normal(
        action_key, (c.action_dim + 1, c.action_embed_dim), jnp.float32
    )
    project = Conv2d(c.encoder_depths[-1] + c.action_embed_dim, c.d_model, 1, key=project_key)
    decoder = ResNetDecoder(c.d_model, c.encoder_depths, c.channels, key=decoder_key)
    return encoder, action_embedding, project, decoder


def embed_frames(
    model,
    frames: Float[Array, "*time height width channels"],
    actions: Int[Array, "*time"],
) -> Float[Array, "*time h_latent w_latent d_model"]:
    """Encode frames and append the tiled action embedding (`-1` = no action), then
    project to `d_model` channels (`model` has `encoder`, `action_embedding`, `project`)."""
    z = model.encoder(frames)
    a = model.action_embedding[actions + 1]
    a = jnp.broadcast_to(a[..., None, None, :], z.shape[:-1] + a.shape[-1:])
    return model.project(jnp.concatenate([z, a], axis=-1))


def decode_latents(
    model, h: Float[Array, "*time h_latent w_latent d_model"]
) -> Float[Array, "*time height width channels"]:
    """Frames in `[-1, 1]` from latents: `tanh(model.decoder(h))`."""
    return jnp.tanh(model.decoder(h))


def no_actions(length: int) -> Int[Array, " time"]:
    """`length` "no action" entries (`-1`)."""
    return jnp.full((length,), -1, jnp.int32)


def released_loss(
    predictions: Float[Array, "time height width channels"],
    targets: Float[Array, "time height width channels"],
    weight: float,
) -> Scalar:
    """`w · mean Σ_{W,C}(ŷ-y)² + (1-w) · mean Σ_{W,C}|ŷ-y|` (the released objective)."""
    err = predictions - targets
    sq = jnp.mean(jnp.sum(jnp.square(err), axis=(-2, -1)))
    ab = jnp.mean(jnp.sum(jnp.abs(err), axis=(-2, -1)))
    return weight * sq + (1 - weight) * ab


def check_frames(model, frames, name: str) -> None:
    """Each frame (`frames.shape[1:]`) must be `(frame_size, frame_size, channels)` of
    `model.config`; the error names the argument `name`."""
    c = model.config
    want = (c.frame_size, c.frame_size, c.channels)
    if tuple(frames.shape[1:]) != want:
        raise ValueError(
            f"{type(model).__name__}: `{name}` frames must be (height, width, channels) = "
            f"{want} for this config, got {tuple(frames.shape[1:])}."
        )


def check_teacher_forcing(model, frames) -> None:
    """Teacher forcing needs at least two frames."""
    if frames.shape[0] < 2:
        raise ValueError(
            f"{type(model).__name__}: `frames` needs at least 2 frames for teacher "
            f"forcing, got {frames.shape[0]}."
        )


def rollout_actions(
    actions: Int[Array, " total"] | None, n_context: int, num_frames: int
) -> Int[Array, " total"]:
    """Check `num_frames ≥ 1` and that `actions` covers context and generated frames
    (all "no action" if absent)."""
    if num_frames < 1:
        raise ValueError(f"generate: `num_frames` must be ≥ 1, got {num_frames}.")
    if actions is None:
        return no_actions(n_context + num_frames)
    if actions.shape[0] != n_context + num_frames:
        raise ValueError(
            f"generate: `actions` must cover context and generated frames, shape "
            f"({n_context + num_frames},); got {actions.shape}."
        )
    return actions


def step_layers(model, states, frame, action):
    """One frame through the codec and `model.layers` (each `layer.step(state, h) →
    (state, h)`): `(new_states, prediction of the next frame)`."""
    if action is None:
        action = jnp.asarray(-1, jnp.int32)
    h = embed_frames(model, frame, action)
    new = []
    for layer, state in zip(model.layers, states):
        state, h = layer.step(state, h)
        new.append(state)
    return tuple(new), decode_latents(model, h)


def rollout(model, states, first, actions: Int[Array, " steps"]):
    """`[first, model.step(...), …]`: `len(actions) + 1` frames, each prediction fed
    back as the next input inside one `lax.scan` (`actions[i]` goes with the `i`-th
    fed-back frame)."""

    def body(carry, action):
        states, frame = carry
        states, frame = model.step(states, frame, action)
        return (states, frame), frame

    _, rest = jax.lax.scan(body, (states, first), actions)
    return jnp.concatenate([first[None], rest], axis=0)



@dataclasses.dataclass(frozen=True)
class ConvS5Config:
    """Architecture of a `ConvS5VideoModel`. Presets: `ConvS5Config.preset(name)`."""

    frame_size: int = 64
    """Height and width of the frames."""
    channels: int = 1
    """Colour channels of the frames (1 for Moving MNIST)."""
    encoder_depths: tuple[int, ...] = (64, 128, 256)
    """Channels per encoder stage; each stage after the first halves the resolution."""
    d_model: int = 256
    """Channels `U` of the ConvS5 stack."""
    n_layers: int = 8
    """Number of ConvS5 layers."""
    ssm_size: int = 256
    """HiPPO size `N` per layer; the complex state has `N // 2` channels."""
    blocks: int = 1
    """HiPPO blocks `J`."""
    kernel_size: int = 3
    """Kernel size of the B, C and output-map convolutions."""
    dt_min: float = 1e-3
    """Smallest initial time step."""
    dt_max: float = 1e-1
    """Largest initial time step."""
    clip_eigs: bool = True
    """Clamp Re Λ ≤ -1e-4 (stable recurrence)."""
    action_dim: int = 1
    """Number of distinct actions (embedding table has one more row: no action)."""
    action_embed_dim: int = 1
    """Width of the action embedding, tiled over the latent grid."""
    loss_weight: float = 0.5
    """Loss = w · Σ_{W,C}(ŷ-y)² + (1-w) · Σ_{W,C}|ŷ-y|, averaged over time and rows."""

    def __post_init__(self):
        check_codec_config(self)
        if self.ssm_size % (2 * self.blocks):
            raise ValueError(
                f"ConvS5Config: `ssm_size` ({self.ssm_size}) must be divisible by "
                f"2 * blocks = {2 * self.blocks} (blocks of conjugate pairs)."
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"ConvS5Config: need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, "
                f"dt_max={self.dt_max}."
            )
        check_loss_weight(self)

    @property
    def latent_size(self) -> int:
        return self.frame_size // 2 ** (len(self.encoder_depths) - 1)

    @staticmethod
    def preset(name: str) -> "ConvS5Config":
        """A named configuration: `"mnist-300"`, `"mnist-600"` (the paper's, 21.68M and
        7.41M parameters) or `"small"` (trains on a 2-core CPU in minutes)."""
        try:
            return CONVS5_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"Unknown ConvS5 preset {name!r}; choose one of {sorted(CONVS5_PRESETS)}."
            ) from None


CONVS5_PRESETS: dict[str, ConvS5Config] = {
    # Released configs/Moving-MNIST/300_train_len/mnist_convS5_novq.yaml.
    "mnist-300": ConvS5Config(d_model=256, ssm_size=256, n_layers=8),
    # Released configs/Moving-MNIST/600_train_len/mnist_convS5_novq.yaml.
    "mnist-600": ConvS5Config(d_model=128, ssm_size=128, n_layers=8),
    # Small enough to learn Moving MNIST on a laptop CPU in a few minutes.
    # (64x64 frames → 8x8 latents; 0.46M parameters.)
    "small": ConvS5Config(
        encoder_depths=(8, 16, 32, 64), d_model=64, ssm_size=64, n_layers=2
    ),
}

LayerStates = tuple[Complex[Array, "h w state"], ...]


class ConvS5VideoModel(AbstractVideoPredictor):
    """The ConvS5 video predictor (deterministic; trained with teacher forcing).

    `model(frames)` predicts frames `1…T-1` from `0…T-2` in one parallel pass;
    `model.generate(context, n, key=key)` runs the context through the parallel
    scan and rolls out `n` frames with each layer's O(1) `step` inside
    `lax.scan`, feeding each prediction back as the next input.
    """

    encoder: ResNetEncoder
    action_embedding: Float[Array, "actions embed"]
    project: Conv2d
    layers: tuple[ConvS5, ...]
    decoder: ResNetDecoder
    config: ConvS5Config = eqx.field(static=True)

    def __init__(self, config: ConvS5Config, *, key: PRNGKeyArray):
        ke, ka, kp, kl, kd = jax.random.split(key, 5)
        c = config
        self.encoder, self.action_embedding, self.project, self.decoder = make_codec(
            c, encoder_key=ke, action_key=ka, project_key=kp, decoder_key=kd
        )
        self.layers = tuple(
            ConvS5(
                c.d_model,
                c.ssm_size,
                blocks=c.blocks,
                kernel_size=c.kernel_size,
                output_kernel_size=c.kernel_size,
                dt_min=c.dt_min,
                dt_max=c.dt_max,
                clip_eigs=c.clip_eigs,
                key=k,
            )
            for k in jax.random.split(kl, c.n_layers)
        )
        self.config = config

    # -- pieces ------------------------------------------------------------------

    def init_state(self) -> LayerStates:
        """Zero states for every layer."""
        s = self.config.latent_size
        return tuple(layer.init_state(s, s) for layer in self.layers)

    def _sequence(self, h, states, impl):
        last = []
        for layer, state in zip(self.layers, states):
            h, x = layer(h, state, impl=impl)
            last.append(x)
        return h, tuple(last)

    # -- public API --------------------------------------------------------------

    @jaxtyped(typechecker=beartype)
    def __call__(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
        *,
        impl: ScanImpl = "auto",
    ) -> Float[Array, "time-1 height width channels"]:
        """Teacher-forced predictions of frames `1…T-1` given frames `0…T-2`.

        The input for step `t` pairs frame `t` with the action taken towards frame
        `t + 1` (`actions[t + 1]`), as in the released code.
        """
        check_frames(self, frames, "frames")
        check_teacher_forcing(self, frames)
        if actions is None:
            actions = no_actions(frames.shape[0])
        h = embed_frames(self, frames[:-1], actions[1:])
        h, _ = self._sequence(h, self.init_state(), impl)
        return decode_latents(self, h)

    @jaxtyped(typechecker=beartype)
    def loss(
        self,
        frames: Float[Array, "time height width channels"],
        actions: Int[Array, " time"] | None = None,
    ) -> Scalar:
        """`w · mean Σ_{W,C}(ŷ-y)² + (1-w) · mean Σ_{W,C}|ŷ-y|` over frames 1…T-1 (the
        released ConvS5 objective, `w = config.loss_weight`)."""
        return released_loss(self(frames, actions), frames[1:], self.config.loss_weight)

    @jaxtyped(typechecker=beartype)
    def step(
        self,
        states: LayerStates,
        frame: Float[Array, "height width channels"],
        action: Int[Array, ""] | None = None,
    ) -> tuple[LayerStates, Float[Array, "height width channels"]]:
        """One frame in, the next frame's prediction out, in O(1): `(states, frame,
        action) → (new_states, prediction)`."""
        return step_layers(self, states, frame, action)

    @jaxtyped(typechecker=beartype)
    def generate(
        self,
        context: Float[Array, "context height width channels"],
        num_frames: int,
        *,
        key: PRNGKeyArray | None = None,
        actions: Int[Array, " total"] | None = None,
        impl: ScanImpl = "auto",
    ) -> Float[Array, "{num_frames} height width channels"]:
        """Predict `num_frames` frames after `context` (deterministic: `key` is
        accepted for the common interface and unused).

        The context goes through the parallel scan; its last states seed the
        recurrent rollout, one `step` per frame inside `lax.scan`.
        """
        del key
        check_frames(self, context, "context")
        n_ctx = context.shape[0]
        actions = rollout_actions(actions, n_ctx, num_frames)
        h = embed_frames(self, context, actions[1 : n_ctx + 1])
        h, states = self._sequence(h, self.init_state(), impl)
        return rollout(self, states, decode_latents(self, h[-1]), actions[n_ctx + 1 :])
