"""The rollout report: per-frame MSE and SSIM of an autoregressive rollout on held-out
videos, next to three trivial baselines (what `train` writes as eval.md / eval.json at
the end of a run)."""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jaxtyping import Float, Int, PRNGKeyArray, Shaped

from ..metrics import frame_metrics
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


PREDICTORS = ("model", *BASELINES)
"""The columns of a `RolloutReport`: the model, then each baseline."""
METRICS = {"mse": "MSE", "ssim": "SSIM"}
"""The report's metrics by key, with their names in tables: per-frame MSE (pixels in
[0, 1], lower is better) and SSIM (higher is better)."""
SSIM_MIN_SIZE = 11
"""The smallest frame side SSIM is computed on (its Gaussian window)."""
COMPARED = ("copy_last", "empty")
"""The baselines `RolloutReport.beats_baselines` requires the model to beat."""


def frame_ranges(frames: Sequence[int]) -> str:
    """[11, 12, 13, 15] -> "11–13, 15" (frame numbers as runs, in reports)."""
    parts: list[str] = []
    start = None
    for i, f in enumerate(frames):
        start = f if start is None else start
        if i + 1 == len(frames) or frames[i + 1] != f + 1:
            parts.append(str(f) if f == start else f"{start}–{f}")
            start = None
    return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class RolloutReport:
    """Per-frame MSE and SSIM of a rollout on held-out videos, beside the baselines'."""

    context: int
    horizon: int
    num_videos: int
    mse: dict[str, np.ndarray]
    """Predictor (`"model"` or a key of `BASELINES`) → MSE per generated frame (pixels
    in [0, 1]; mean over videos), shape `(horizon,)`."""
    ssim: dict[str, np.ndarray]
    """Predictor → SSIM per generated frame (`tf.image.ssim`, frames in [0, 1]; mean
    over videos), shape `(horizon,)`; empty for frames under 11 × 11 pixels (the SSIM
    window), where it is not computed."""
    model_name: str = "model"
    """The model's name in the tables."""

    def metrics(self) -> list[str]:
        """The keys of `METRICS` this report holds (SSIM needs frames of 11 × 11 or more)."""
        return [m for m in METRICS if self.curve(m)]

    def curve(self, metric: str) -> dict[str, np.ndarray]:
        """`self.mse` or `self.ssim` by key of `METRICS`."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {list(METRICS)}.")
        return self.mse if metric == "mse" else self.ssim

    def frames(self) -> list[int]:
        """The generated frames' numbers in the video (1-based): `context + 1, …`."""
        return [self.context + i + 1 for i in range(self.horizon)]

    def losses(self) -> dict[str, dict[str, list[int]]]:
        """Metric → baseline → the frames (numbered in the video) at which the baseline
        is better than the model (MSE lower, SSIM higher); empty where it never is."""
        out: dict[str, dict[str, list[int]]] = {}
        for metric in self.metrics():
            values = self.curve(metric)
            for b in BASELINES:
                worse = (
                    values["model"] > values[b] if metric == "mse" else values["model"] < values[b]
                )
                frames = [self.frames()[i] for i in np.flatnonzero(worse)]
                if frames:
                    out.setdefault(metric, {})[b] = frames
        return out

    def beats_baselines(self) -> bool:
        """Whether the model beats copy-last-frame and empty-frame on MSE and on SSIM
        (where computed) at every generated frame (ties count as losses)."""
        losses = self.losses()
        metrics = self.metrics()
        ties = any(
            np.any(self.curve(m)["model"] == self.curve(m)[b]) for m in metrics for b in COMPARED
        )
        return not ties and not any(b in losses.get(m, {}) for m in metrics for b in COMPARED)

    def as_dict(self) -> dict:
        return {
            "context": self.context,
            "horizon": self.horizon,
            "num_videos": self.num_videos,
            "model_name": self.model_name,
            "frames": self.frames(),
            **{
                f"{m}_per_frame": {k: v.tolist() for k, v in self.curve(m).items()}
                for m in self.metrics()
            },
            **{
                f"{m}_mean": {k: float(v.mean()) for k, v in self.curve(m).items()}
                for m in self.metrics()
            },
            "losses": self.losses(),
            "beats_baselines": self.beats_baselines(),
        }

    def _table(self, metric: str) -> list[str]:
        values = self.curve(metric)
        best = np.argmin if metric == "mse" else np.argmax
        names = [self.model_name, *BASELINES.values()]
        digits = 5 if metric == "mse" else 4

        def row(label: str, cells: list[float]) -> str:
            top = int(best(np.asarray(cells)))
            text = [
                f"**{c:.{digits}f}**" if i == top else f"{c:.{digits}f}"
                for i, c in enumerate(cells)
            ]
            return f"| {label} | " + " | ".join(text) + " |"

        direction = "lower is better" if metric == "mse" else "higher is better"
        lines = [
            f"{METRICS[metric]} ({direction}; best of each row in bold):",
            "",
            "| frame | " + " | ".join(names) + " |",
            "|---:|" + "---:|" * len(names),
        ]
        for i, frame in enumerate(self.frames()):
            lines.append(row(str(frame), [float(values[k][i]) for k in PREDICTORS]))
        lines.append(row("mean", [float(values[k].mean()) for k in PREDICTORS]))
        return lines

    def verdict(self) -> list[str]:
        """Sentences: whether the model beats the baselines, and where it loses."""
        losses = self.losses()
        on = " and on ".join(METRICS[m] for m in self.metrics())
        if self.beats_baselines():
            head = (
                f"The model beats copying the last frame and the empty frame on {on} at "
                f"every generated frame ({frame_ranges(self.frames())})."
            )
        else:
            head = (
                f"The model does NOT beat copying the last frame and the empty frame on {on} "
                "at every generated frame."
            )
        lines = [head]
        if "ssim" not in self.metrics():
            lines.append("SSIM is not computed: the frames are smaller than its 11×11 window.")
        if not losses:
            lines.append("No baseline is better than it at any frame.")
            return lines
        lines.append("Where a baseline is better than the model:")
        for metric, by_baseline in losses.items():
            for b, frames in by_baseline.items():
                where = (
                    "every generated frame"
                    if len(frames) == self.horizon
                    else ("frame " if len(frames) == 1 else "frames ") + frame_ranges(frames)
                )
                lines.append(f"- {METRICS[metric]}: {BASELINES[b]} at {where}.")
        return lines

    def markdown(self) -> str:
        """Two tables (MSE and SSIM: one row per generated frame, one column per
        predictor, and the means) and the verdict, saying where the model loses."""
        lines = [
            f"Rollout on {self.num_videos} held-out videos: {self.context} context frames, then "
            f"{self.horizon} frames generated autoregressively (each prediction fed back), "
            "compared with the true frames. Baselines: copy last frame repeats the last "
            "context frame, mean context frame repeats the mean of the context frames, "
            "empty frame is black. MSE on pixels in [0, 1]; SSIM as `tf.image.ssim` "
            "(11×11 Gaussian window), predictions clipped to the frame range. Means over "
            "videos.",
            "",
            *(line for m in self.metrics() for line in [*self._table(m), ""]),
            *self.verdict(),
        ]
        return "\n".join(lines)


def rollout_report(
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
    """Roll `model` out from the first `context` frames of each video (in `[-1, 1]`)
    for `horizon` frames and score every generated frame against the truth (MSE and
    SSIM), beside the baselines of `BASELINES`. Videos need `context + horizon`
    frames; `actions` `(batch, time)`, if given, condition the rollout; chunk `i` of
    videos is generated with `jax.random.fold_in(key, i)`."""
    videos = np.asarray(videos, np.float32)
    if videos.shape[1] < context + horizon:
        raise ValueError(
            f"rollout_report: `videos` need context + horizon = {context + horizon} frames, "
            f"got {videos.shape[1]}."
        )
    videos = videos[:, : context + horizon]
    truth = videos[:, context:]
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
    predicted = {"model": preds} | baseline_predictions(
        videos, context=context, horizon=horizon, empty=-1.0
    )
    mse: dict[str, np.ndarray] = {}
    ssim: dict[str, np.ndarray] = {}
    for who, frames in predicted.items():
        mse[who] = np.mean(np.square((frames - truth) / 2.0), axis=(0, 2, 3, 4))
        if min(videos.shape[2:4]) < SSIM_MIN_SIZE:
            continue
        scored = np.concatenate([videos[:, :context], np.clip(frames, -1.0, 1.0)], axis=1)
        values = frame_metrics(videos, scored, context=context, value_range="[-1,1]")
        ssim[who] = values["ssim"].astype(np.float64).mean(axis=0)
    return RolloutReport(
        context=context,
        horizon=horizon,
        num_videos=len(videos),
        mse=mse,
        ssim=ssim,
        model_name=model_name,
    )
