"""ConvS5 video predictor: per-frame ResNet encoder → ConvS5 stack → ResNet decoder.

The Moving-MNIST ("novq") model of Smith et al. (NeurIPS 2023), reproduced layer for
layer (parameter counts of the released MNIST-300 / MNIST-600 configurations), with
the batch size never baked in and a jitted O(1)-per-frame rollout.
"""

import dataclasses

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from ..kernels.linear_scan import ScanImpl
from ..nn._conv import Conv2d
from ..nn._convs5 import ConvS5
from ..nn._resnet import ResNetDecoder, ResNetEncoder
from ._abstract import GroupSettings
from ._recurrent import AbstractRecurrentVideoModel, RecurrentConfig, make_codec
from ._registry import ModelSpec, register_model


@dataclasses.dataclass(frozen=True)
class ConvS5Config(RecurrentConfig):
    """Architecture of a `ConvS5VideoModel` (the shared fields of `RecurrentConfig`
    plus the ConvS5 layer's). Presets: `ConvS5Config.preset(name)`."""

    ssm_size: int = 256
    """HiPPO size `N` per layer; the complex state has `N // 2` channels."""
    blocks: int = 1
    """HiPPO blocks `J`."""
    dt_min: float = 1e-3
    """Smallest initial time step."""
    dt_max: float = 1e-1
    """Largest initial time step."""
    clip_eigs: bool = True
    """Clamp Re Λ ≤ -1e-4 (stable recurrence)."""
    dropout: float = 0.0
    """Dropout rate on each layer's output map during training (0 in the released
    configs); generation never drops."""
    scan_impl: ScanImpl = "auto"
    """The layers' scan: "pallas" (GPU kernel), "xla" (parallel), "sequential" or
    "auto" (the faster for the backend)."""
    ssm_lr_scale: float = 1.0
    """Learning rate of the SSM parameters (Λ, log Δ, B: the "ssm" group, which gets no
    weight decay, as S5) relative to the run's."""

    def __post_init__(self):
        super().__post_init__()
        if self.ssm_size < 2 or self.ssm_size % (2 * self.blocks):
            raise ValueError(
                f"ConvS5Config: `ssm_size` ({self.ssm_size}) must be divisible by "
                f"2 * blocks = {2 * self.blocks} (blocks of conjugate pairs)."
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"ConvS5Config: need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, "
                f"dt_max={self.dt_max}."
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ConvS5Config: `dropout` must be in [0, 1), got {self.dropout}.")
        if self.ssm_lr_scale < 0:
            raise ValueError(f"ConvS5Config: `ssm_lr_scale` must be ≥ 0, got {self.ssm_lr_scale}.")


CONVS5_PRESETS: dict[str, ConvS5Config] = {
    # Released configs/Moving-MNIST/300_train_len/mnist_convS5_novq.yaml.
    "mnist-300": ConvS5Config(d_model=256, ssm_size=256, n_layers=8),
    # Released configs/Moving-MNIST/600_train_len/mnist_convS5_novq.yaml.
    "mnist-600": ConvS5Config(d_model=128, ssm_size=128, n_layers=8),
    # Small enough to learn Moving MNIST on a 2-core CPU in minutes: 4×4 pixel patches
    # folded into channels, then one downsampling (64x64 frames → 16x16 → 8x8 latents,
    # 48x48 → 6x6).
    "small": ConvS5Config(
        pixel_patch=4, encoder_depths=(16, 64), d_model=64, ssm_size=64, n_layers=2
    ),
    # The demo's (examples/train_mmnist.py): as cheap per step as `small` within 1.5×,
    # but the layers run at 1/4 of the frame (48x48 → 12x12 latents, where a digit
    # moves about one latent cell per frame) with 32 channels, and the decoder sees
    # the input frame's features (`decoder_skip`). On 48x48 Moving MNIST in the same
    # wall time it predicts sharper first frames than `small` (SSIM 0.87 against 0.83
    # at the first predicted frame: benchmarks/results/demo_mmnist_cpu.md).
    "demo": ConvS5Config(
        pixel_patch=4, encoder_depths=(32,), d_model=32, ssm_size=32, n_layers=2, decoder_skip=True
    ),
}


class ConvS5VideoModel(AbstractRecurrentVideoModel):
    """The ConvS5 video predictor (deterministic; trained with teacher forcing): the
    recurrent frame predictor of `AbstractRecurrentVideoModel` over `ConvS5` layers,
    which run the context with a parallel scan and generate in O(1) per frame."""

    encoder: ResNetEncoder
    action_embedding: Float[Array, "actions embed"]
    project: Conv2d
    layers: tuple[ConvS5, ...]
    decoder: ResNetDecoder
    config: ConvS5Config = eqx.field(static=True)

    def __init__(self, config: ConvS5Config, *, key: PRNGKeyArray):
        c = config
        self.encoder, self.action_embedding, self.project, self.decoder, layer_key = make_codec(
            c, key
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
                dropout=c.dropout,
                impl=c.scan_impl,
                key=k,
            )
            for k in jax.random.split(layer_key, c.n_layers)
        )
        self.config = config

    def optimizer_groups(self) -> dict[str, GroupSettings]:
        """The SSM parameters learn at `config.ssm_lr_scale` times the run's rate."""
        return {"ssm": GroupSettings(lr_scale=self.config.ssm_lr_scale)}


register_model(ModelSpec("convs5", "ConvS5", ConvS5Config, ConvS5VideoModel, CONVS5_PRESETS))
