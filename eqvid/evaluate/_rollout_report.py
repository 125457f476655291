"""The rollout report: autoregressive rollout error on held-out videos, next to two
trivial baselines (what `train` writes as eval.md / eval.json at the end of a run)."""

import dataclasses

import jax
import numpy as np
from jaxtyping import Float, Int, PRNGKeyArray

from ..models import AbstractVideoModel, rollout


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

    return RolloutReport(
        context=context,
        horizon=horizon,
        num_videos=len(videos),
        model=mse(preds),
        copy_last=mse(np.broadcast_to(videos[:, context - 1 : context], truth.shape)),
        empty=mse(np.full_like(truth, -1.0)),
        model_name=model_name,
    )
