"""The rollout report: autoregressive rollout error on held-out videos, next to two
trivial baselines (what `train` writes as eval.md / eval.json at the end of a run)."""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jaxtyping import Float, Int, PRNGKeyArray, Shaped

from ..models import AbstractVideoModel, rollout

BASELINES: dict[str, str] = {
    "copy_last": "copy last frame",
    "mean_context": "mean context frame",
    "empty": "empty frame",
}
"""Trivial predictors a model must beat, by key, with their names in tables: the last
context frame repeated, the mean of the context frames repeated, and an empty (black)
frame."""


def baseline_predictions(
    videos: Shaped[np.ndarray, "batch time height width channels"],
    *,
    context: int,
    horizon: int,
    empty: float,
    names: Sequence[str] = tuple(BASELINES),
) -> dict[str, np.ndarray]:
    """The `horizon` frames each baseline predicts after the first `context` frames of
    `videos` `(batch, time, height, width, channels)`, by key of `BASELINES`, in the
    videos' dtype (integer videos: the mean frame rounded): `copy_last` repeats frame
    `context - 1`, `mean_context` repeats the mean of the context frames, `empty` is
    `empty` everywhere (the value of black: -1 in [-1, 1], 0 in uint8)."""
    videos = np.asarray(videos)
    shape = (videos.shape[0], horizon, *videos.shape[2:])
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "copy_last":
            frame = videos[:, context - 1 : context]
        elif name == "mean_context":
            frame = videos[:, :context].mean(axis=1, keepdims=True)
            if np.issubdtype(videos.dtype, np.integer):
                frame = np.round(frame)
            frame = frame.astype(videos.dtype)
        elif name == "empty":
            frame = np.full((1,) * videos.ndim, empty, videos.dtype)
        else:
            raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)}.")
        out[name] = np.broadcast_to(frame, shape)
    return out


@dataclasses.dataclass(frozen=True)
class RolloutReport:
    """Per-frame MSE (pixels in [0, 1]) of a rollout and of the two baselines."""

    context: int
    horizon: int
    num_videos: int
    model: np.ndarray
    """Model MSE per generated frame, shape (horizon,)."""
    copy_last: np.ndarray
    """MSE of repeating the last context frame."""
    empty: np.ndarray
    """MSE of predicting an empty (background) frame."""
    model_name: str = "model"
    """The model's name in the table."""

    def beats_baselines(self) -> bool:
        """Whether the model's mean MSE is below both baselines' means."""
        m = float(self.model.mean())
        return m < float(self.copy_last.mean()) and m < float(self.empty.mean())

    def as_dict(self) -> dict:
        return {
            "context": self.context,
            "horizon": self.horizon,
            "num_videos": self.num_videos,
            "model_name": self.model_name,
            "mse_per_frame": {
                "model": self.model.tolist(),
                "copy_last": self.copy_last.tolist(),
                "empty": self.empty.tolist(),
            },
            "mse_mean": {
                "model": float(self.model.mean()),
                "copy_last": float(self.copy_last.mean()),
                "empty": float(self.empty.mean()),
            },
            "beats_baselines": self.beats_baselines(),
        }

    def markdown(self) -> str:
        """A table: one row per generated frame, one column per predictor, and the mean."""
        lines = [
            f"Per-frame MSE (pixels in [0, 1]) of a {self.horizon}-frame autoregressive rollout "
            f"from {self.context} context frames, {self.num_videos} held-out videos.",
            "",
            f"| frame | {self.model_name} | copy last frame | empty frame |",
            "|---:|---:|---:|---:|",
        ]
        for i in range(self.horizon):
            lines.append(
                f"| {self.context + i + 1} | {self.model[i]:.5f} | {self.copy_last[i]:.5f} "
                f"| {self.empty[i]:.5f} |"
            )
        lines.append(
            f"| **mean** | **{self.model.mean():.5f}** | {self.copy_last.mean():.5f} "
            f"| {self.empty.mean():.5f} |"
        )
        verdict = "beats" if self.beats_baselines() else "does NOT beat"
        lines += ["", f"The model {verdict} both baselines on average."]
        return "\n".join(lines)


def rollout_mse(
    model: AbstractVideoModel,
    videos: Float[np.ndarray, "batch time height width channels"],
    *,
    context: int,
    horizon: int,
    chunk: int = 32,
    model_name: str = "model",
    actions: Int[np.ndarray, "batch time"] | None = None,
    key: PRNGKeyArray,
) -> RolloutReport:
    """Roll `model` out from the first `context` frames of each video for `horizon`
    frames and compare with the truth, against copying the last context frame and
    predicting an empty frame (all -1). Videos need `context + horizon` frames;
    `actions` `(batch, time)`, if given, condition the rollout; chunk `i` of videos
    is generated with `jax.random.fold_in(key, i)`."""
    videos = np.asarray(videos, np.float32)
    if videos.shape[1] < context + horizon:
        raise ValueError(
            f"rollout_mse: `videos` need context + horizon = {context + horizon} frames, "
            f"got {videos.shape[1]}."
        )
    truth = videos[:, context : context + horizon]
    preds = np.concatenate(
        [
            np.asarray(
                rollout(
                    model,
                    videos[i : i + chunk, :context],
                    horizon,
                    key=jax.random.fold_in(key, i // chunk),
                    actions=None
                    if actions is None
                    else actions[i : i + chunk, : context + horizon],
                )
            )
            for i in range(0, len(videos), chunk)
        ]
    )

    def mse(pred):
        return np.mean(np.square((pred - truth) / 2.0), axis=(0, 2, 3, 4))

    baselines = baseline_predictions(
        videos, context=context, horizon=horizon, empty=-1.0, names=("copy_last", "empty")
    )
    return RolloutReport(
        context=context,
        horizon=horizon,
        num_videos=len(videos),
        model=mse(preds),
        copy_last=mse(baselines["copy_last"]),
        empty=mse(baselines["empty"]),
        model_name=model_name,
    )
