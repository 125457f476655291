"""Optimiser and run configuration for `eqvid.train.train`."""

import dataclasses
from typing import Any, Literal

from ..data._bouncing_balls import BouncingBallsConfig
from ..data._codes import CodesConfig
from ..data._config import MovingMNISTConfig
from ..data._file_config import ArrayRecordConfig, FrameFolderConfig, TecoConfig, VideoFolderConfig
from ..models import ConvS5Config, model_spec
from ._distributed import DistributedConfig
from ._mesh import MeshConfig

DatasetConfig = (
    MovingMNISTConfig
    | BouncingBallsConfig
    | TecoConfig
    | FrameFolderConfig
    | VideoFolderConfig
    | ArrayRecordConfig
    | CodesConfig
)
"""The config of any dataset `train` reads."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up, cosine decay and global-norm clipping."""

    lr: float = 2e-3
    """Peak learning rate (parameter groups scale it: see the model's options, e.g.
    --ssm-lr-scale)."""
    warmup_steps: int = 100
    """Linear warm-up steps from 0 to `lr`."""
    end_lr_scale: float = 0.05
    """Final learning rate of the cosine decay, relative to `lr`."""
    weight_decay: float = 1e-5
    """Decoupled weight decay (not applied to the SSM parameters)."""
    b1: float = 0.9
    """Adam β1."""
    b2: float = 0.95
    """Adam β2."""
    grad_clip: float = 1.0
    """Clip gradients to this global norm (0 disables)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the parameters with this decay per step
    (e.g. 0.999, as diffusion models sample from it; 0 disables). Saved in checkpoints;
    samples and evaluation use it when present."""

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"OptimizerConfig: `lr` must be > 0, got {self.lr}.")
        for name in ("b1", "b2", "ema_decay"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"OptimizerConfig: `{name}` must be in [0, 1), got {value}.")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "end_lr_scale"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"OptimizerConfig: `{name}` must be ≥ 0, got {getattr(self, name)}."
                )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The training run: length, batch, logging, checkpoints, samples and evaluation."""

    run_dir: str = "runs/convs5-mmnist"
    """Directory for checkpoints, metrics, samples and the final report."""
    steps: int = 1000
    """Optimiser steps in total."""
    batch_size: int = 8
    """Videos per step."""
    seed: int = 0
    """Seed of the model initialisation and data order."""
    log_every: int = 10
    """Write a metrics row (CSV) every this many steps."""
    sample_every: int = 500
    """Export sample videos (PNG strip and GIF) every this many steps (0: only at the end)."""
    checkpoint_every: int = 500
    """Save an Orbax checkpoint every this many steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Number of most recent checkpoints kept on disk (older ones are deleted)."""
    resume: bool = False
    """Continue from the latest intact checkpoint in `run_dir` (same data order and
    state). Settings that change the run's trajectory (model, data, optimiser, batch
    size, seed, steps, compute dtype, workers) must be the run's own."""
    resume_with_changes: bool = False
    """Resume even though such settings differ from the run's (they are listed, and
    recorded in config.json under `changes_on_resume`); implies --resume."""
    num_workers: int = 0
    """Grain worker processes for data generation (0: in the training process)."""
    eval_sequences: int = 128
    """Held-out videos for the final rollout evaluation (0 skips it)."""
    eval_context: int = 10
    """Context frames given to the model in the evaluation."""
    eval_horizon: int = 10
    """Frames rolled out autoregressively in the evaluation."""
    progress: bool = True
    """Show a progress bar."""
    accumulate: int = 1
    """Split each batch into this many micro-batches and accumulate their gradients
    (same update, less activation memory)."""
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the model computes in; parameters, gradients and optimiser state stay
    float32 (parameters whose role says keep-float32, such as the state-space ones,
    are never cast)."""
    tensorboard: bool = True
    """Write TensorBoard event files (every loss term, learning rate, gradient norm,
    throughput and the sample strips) under run_dir/tensorboard."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs."""

    model: Any = dataclasses.field(default_factory=lambda: ConvS5Config.preset("small"))
    """The model to train: the config of a registered family; its type picks the model
    (`eqvid.models.MODELS`)."""
    data: DatasetConfig = dataclasses.field(default_factory=MovingMNISTConfig)
    """The data; its config type picks the dataset (`eqvid.data.DATASETS`)."""
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)

    def __post_init__(self):
        model_spec(self.model)  # a registered family's config, or a clear error
        r = self.run
        for name in ("steps", "batch_size", "log_every", "accumulate", "keep_checkpoints"):
            if getattr(r, name) < 1:
                raise ValueError(f"RunConfig: `{name}` must be ≥ 1, got {getattr(r, name)}.")
        # File datasets may keep their stored size (frame_size None): `train` then
        # checks the model against the frames it reads.
        frame_size = getattr(self.data, "frame_size", None)  # codes: the tokenizer's frames
        if frame_size is not None and self.model.frame_size != frame_size:
            raise ValueError(
                f"TrainConfig: the model's frame_size ({self.model.frame_size}) must equal the "
                f"data's frame_size ({frame_size})."
            )
        if isinstance(self.data, MovingMNISTConfig) and self.model.channels != 1:
            raise ValueError(
                f"TrainConfig: the model's channels ({self.model.channels}) must equal the "
                "data's channels (1)."
            )
        value_range = getattr(self.data, "value_range", "signed")
        if value_range != "signed":
            raise ValueError(
                "TrainConfig: the models take frames in [-1, 1]: the data's value_range must be "
                f"'signed', got {value_range!r}."
            )
        if r.batch_size % r.accumulate:
            raise ValueError(
                f"RunConfig: `batch_size` ({r.batch_size}) must be divisible by `accumulate` "
                f"({r.accumulate}) (micro-batches of equal size)."
            )
        for name in ("checkpoint_every", "sample_every", "num_workers", "eval_sequences"):
            if getattr(r, name) < 0:
                raise ValueError(f"RunConfig: `{name}` must be ≥ 0, got {getattr(r, name)}.")
        if r.eval_sequences and r.eval_context < 1:
            raise ValueError(f"RunConfig: `eval_context` must be ≥ 1, got {r.eval_context}.")
        if r.eval_sequences and r.eval_horizon < 1:
            raise ValueError(f"RunConfig: `eval_horizon` must be ≥ 1, got {r.eval_horizon}.")
        if self.data.seq_len < 2:
            raise ValueError(
                f"{type(self.data).__name__}: `seq_len` must be ≥ 2 (teacher forcing), got "
                f"{self.data.seq_len}."
            )
