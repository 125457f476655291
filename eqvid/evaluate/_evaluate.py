"""`evaluate(config)`: generate from a trained run under a protocol and report the
papers' metrics (JSON, markdown, per-frame plot, sample files)."""

import dataclasses
import json
import pathlib
import sys
from typing import Any, Literal

import equinox as eqx
import jax
import numpy as np
from tqdm.auto import tqdm

from ..metrics import (
    PAPER_CHUNK,
    MeanStd,
    chunked_fvd,
    frame_metrics,
    kvd,
    per_frame_curve,
    reduce_over_chunks,
    save_samples_npz,
    videos_to_uint8,
)
from ..metrics._protocol import _chunk_bounds
from ._protocols import EvalProtocol, protocol

METRICS = ("psnr", "ssim", "lpips", "fvd")
FRAME_METRICS = ("psnr", "ssim", "lpips")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate, under which protocol, and where the results go.

    Each field is the command line's `--field-name` option; errors use that spelling."""

    run_dir: str = ""
    """A training run (its config.json and checkpoints/) to load and generate from."""
    samples: str = ""
    """Instead of generating: a sample file or folder of data_<i>.npz files (`real` and
    `fake` uint8 videos, e.g. from an earlier evaluation or another code base) to score."""
    protocol: str | None = None
    """Named protocol: context, horizon, number of videos, chunk and metrics (see
    eqvid.evaluate.PROTOCOLS); none means quick. Named, it also lends its context to
    sample files that record none."""
    step: int | None = None
    """Checkpoint step to load (default: the latest)."""
    ema: bool = True
    """Generate with the moving average of the parameters when the run kept one
    (--ema-decay in training); --no-ema uses the raw parameters."""
    context: int | None = None
    """Override the protocol's number of context frames. Scoring files: their context
    when they record it (TECO's do not: give it here, or name a --protocol)."""
    horizon: int | None = None
    """Override the protocol's number of generated frames."""
    num_videos: int | None = None
    """Override the protocol's number of test videos."""
    chunk: int | None = None
    """Override the protocol's videos per chunk (metrics are mean ± std over chunks)."""
    metrics: tuple[str, ...] = ()
    """Override the protocol's metrics: any of psnr ssim lpips fvd (empty: the protocol's)."""
    remainder: Literal["error", "keep", "drop"] = "error"
    """When the chunk does not divide the videos: refuse, keep a smaller last chunk
    (as TECO's scripts), or drop the rest."""
    batch_size: int = 16
    """Videos generated (and scored) at a time."""
    seed: int = 0
    """Seed of the generation keys (stochastic models)."""
    out_dir: str = ""
    """Where results go (default: <run_dir>/eval/<protocol>, or <samples>/eval)."""
    save_samples: bool = True
    """Write the real and generated videos as samples/data_<i>.npz (uint8)."""
    lpips_weights: str = ""
    """Converted LPIPS file (default: lpips_alexnet.npz in the weights folder)."""
    i3d_weights: str = ""
    """Converted I3D file (default: i3d_kinetics400.npz in the weights folder)."""
    i3d_batch_size: int = 4
    """Videos per I3D forward pass."""
    progress: bool = True
    """Show a progress bar."""


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """The metrics of one evaluation."""

    protocol: str
    description: str
    context: int
    horizon: int
    num_videos: int
    chunk: int
    source: str
    """The run (and step) or sample folder evaluated."""
    scores: dict[str, MeanStd]
    """Each metric as mean ± std over chunks (frame metrics: mean over generated
    frames, then videos; FVD over whole videos)."""
    per_frame: dict[str, list[float]]
    """Each frame metric averaged over videos, per generated frame."""
    kvd: float | None = None
    """Kernel video distance over all videos (with FVD)."""

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["scores"] = {k: v.to_dict() for k, v in self.scores.items()}
        return out

    def markdown(self) -> str:
        lines = [
            f"# Evaluation: {self.protocol}",
            "",
            f"{self.description}. Source: {self.source}. {self.num_videos} videos, "
            f"{self.context} context → {self.horizon} generated frames; mean ± std over "
            f"chunks of {self.chunk} videos.",
            "",
            "| metric | mean ± std | chunks | on |",
            "|---|---:|---:|---|",
        ]
        on = {
            "psnr": "generated frames, [0, 1]",
            "ssim": "generated frames, [0, 1]",
            "lpips": "generated frames, AlexNet",
            "fvd": "whole videos, I3D logits",
        }
        for name, score in self.scores.items():
            lines.append(
                f"| {name.upper()} | {score.mean:.4f} ± {score.std:.4f} | "
                f"{len(score.per_chunk)} | {on[name]} |"
            )
        if self.kvd is not None:
            lines.append(f"| KVD | {self.kvd:.4f} | 1 | whole videos, I3D logits |")
        if self.chunk != PAPER_CHUNK:
            lines += [
                "",
                f"Chunks of {self.chunk} videos, not the papers' {PAPER_CHUNK}: FVD is "
                "not comparable with published numbers.",
            ]
        return "\n".join(lines)


def _protocol_name(config: EvalConfig) -> str:
    return config.protocol or "quick"


def _settings(config: EvalConfig) -> EvalProtocol:
    base = protocol(_protocol_name(config))
    changes = {
        k: getattr(config, k)
        for k in ("context", "horizon", "num_videos", "chunk")
        if getattr(config, k) is not None
    }
    if config.metrics:
        bad = sorted(set(config.metrics) - set(METRICS))
        if bad:
            raise ValueError(f"--metrics: unknown {bad}; choose from {list(METRICS)}.")
        changes["metrics"] = tuple(config.metrics)
    settings = dataclasses.replace(base, **changes)
    for name in ("horizon", "num_videos", "chunk"):
        if getattr(settings, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be ≥ 1, got {getattr(settings, name)}.")
    if settings.context < 1:
        raise ValueError(f"--context must be ≥ 1, got {settings.context}.")
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be ≥ 1, got {config.batch_size}.")
    if config.run_dir:  # before any generation: will the videos fill the chunks?
        _chunk_bounds(
            settings.num_videos,
            settings.chunk,
            config.remainder,
            "evaluate",
            min_chunk=2 if "fvd" in settings.metrics else 1,
            flags=True,
        )
    return settings


def _networks(config: EvalConfig, metrics, lpips, i3d):
    """The LPIPS function and the I3D feature function the metrics need (loaded up
    front, so a missing weight file is reported before any generation)."""
    from ..metrics import I3D, LPIPS, i3d_features

    lpips_fn = features_fn = None
    if "lpips" in metrics:
        net = lpips if lpips is not None else LPIPS.load(config.lpips_weights or None)
        lpips_fn = eqx.filter_jit(net)
    if "fvd" in metrics:
        if callable(i3d) and not isinstance(i3d, I3D):
            features_fn = i3d  # a custom video → features function
        else:
            i3d_net = i3d if i3d is not None else I3D.load(config.i3d_weights or None)

            def i3d_logits(videos):
                return np.asarray(i3d_features(i3d_net, videos, batch_size=config.i3d_batch_size))

            features_fn = i3d_logits

    return lpips_fn, features_fn


def _generate(config, settings, out_dir, on_batch) -> str:
    from ..data import evaluation_videos
    from ..models import rollout
    from ._trained_run import data_config_from_run, load_trained_run

    run = load_trained_run(config.run_dir, config.step, ema=config.ema)
    model = run.model
    ctx, horizon = settings.context, settings.horizon
    key = jax.random.key(config.seed)
    batches = evaluation_videos(
        data_config_from_run(run.config),
        num_videos=settings.num_videos,
        length=ctx + horizon,
        batch_size=config.batch_size,
    )
    if config.save_samples:  # files of an earlier evaluation would be mixed in when rescored
        for stale in (out_dir / "samples").glob("data_*.npz"):
            stale.unlink()
    bar = tqdm(
        total=settings.num_videos,
        disable=not config.progress,
        desc="generate",
        unit="video",
        dynamic_ncols=True,
    )
    with bar:
        for i, (real, actions) in enumerate(batches):
            context = real[:, :ctx].astype(np.float32) / 127.5 - 1.0
            pred = np.asarray(
                rollout(model, context, horizon, key=jax.random.fold_in(key, i), actions=actions)
            )
            # Predictions are clipped to the frame range before they become uint8 frames.
            pred = videos_to_uint8(
                np.clip(pred, -1.0, 1.0), value_range="[-1,1]", name="prediction"
            )
            fake = np.concatenate([real[:, :ctx], pred], axis=1)
            if config.save_samples:
                save_samples_npz(out_dir / "samples" / f"data_{i}.npz", real, fake, context=ctx)
            on_batch(real, fake)
            bar.update(len(real))
    return f"{run.run_dir} (step {run.step})"


def _load_files(config, settings):
    """The sample files and their context: `--context` if given (files that record one
    must agree), else the files' own, else the protocol's if one was named."""
    from ..metrics import load_samples_npz

    samples = load_samples_npz(config.samples, context=config.context)
    if samples.context is not None:
        return samples, samples.context
    if config.protocol is None:
        raise ValueError(
            f"the sample files in {config.samples} do not record their number of context "
            "frames (TECO's do not); pass --context N (or --protocol NAME to take its "
            "context), so that context frames are not scored as generated ones."
        )
    ctx = settings.context  # checked here, on the videos already read (no second read)
    if ctx > samples.real.shape[1] or not np.array_equal(
        samples.real[:, :ctx], samples.fake[:, :ctx]
    ):
        raise ValueError(
            f"the sample files in {config.samples} do not fit protocol {config.protocol!r}'s "
            f"context of {ctx} frames (videos of {samples.real.shape[1]} frames; the context "
            "frames of `fake` must be the real ones); pass --context N."
        )
    return samples, ctx


def _score_files(config, samples, on_batch) -> str:
    for start in range(0, len(samples.real), config.batch_size):
        on_batch(
            samples.real[start : start + config.batch_size],
            samples.fake[start : start + config.batch_size],
        )
    return config.samples


def evaluate(
    config: EvalConfig,
    *,
    lpips: Any = None,
    i3d: Any = None,
) -> EvalReport:
    """Evaluate a trained run (`config.run_dir`) or existing samples (`config.samples`)
    under `config.protocol` and write, to the output folder: `metrics.json`,
    `metrics.md`, `per_frame.csv`, `per_frame.png` (each frame metric against the
    horizon) and, when generating, `samples/data_<i>.npz`.

    Generation and scoring stream in batches of `config.batch_size` videos, so memory
    does not grow with the number of videos. Frame metrics cover generated frames only
    (mean over time, then over each chunk's videos, then mean ± std over chunks); FVD
    takes I3D logits of whole videos (context included) per chunk.

    **Arguments:** `config`; optionally preloaded networks: `lpips` (an
    `eqvid.metrics.LPIPS`) and `i3d` (an `eqvid.metrics.I3D`, or any function from
    videos `(b, T, H, W, C)` in [-1, 1] to features `(b, d)`); by default they are
    loaded from the weight files.

    **Raises:** `ValueError` for bad settings; `FileNotFoundError` for a missing run,
    checkpoint, sample folder or weight file (the message says which file to get).
    """
    if bool(config.run_dir) == bool(config.samples):
        raise ValueError(
            "give exactly one of --run-dir (a training run: generate, then score) and "
            f"--samples (score existing files); got --run-dir {config.run_dir!r}, "
            f"--samples {config.samples!r}."
        )
    settings = _settings(config)
    metrics = settings.metrics
    if config.out_dir:
        out_dir = pathlib.Path(config.out_dir)
    elif config.run_dir:
        out_dir = pathlib.Path(config.run_dir) / "eval" / _protocol_name(config)
    else:
        out_dir = pathlib.Path(config.samples).with_suffix("") / "eval"
    lpips_fn, features_fn = _networks(config, metrics, lpips, i3d)

    samples = None
    context = settings.context
    if config.samples:
        samples, context = _load_files(config, settings)
        _chunk_bounds(  # before any scoring: will the videos fill the chunks?
            len(samples.real),
            settings.chunk,
            config.remainder,
            "evaluate",
            min_chunk=2 if "fvd" in metrics else 1,
            flags=True,
        )
    frame_values: dict[str, list[np.ndarray]] = {m: [] for m in FRAME_METRICS if m in metrics}
    features: dict[str, list[np.ndarray]] = {"real": [], "fake": []}
    scored = [0]

    def on_batch(real: np.ndarray, fake: np.ndarray) -> None:
        scored[0] += len(real)
        if frame_values:
            values = frame_metrics(
                real,
                fake,
                context=context,
                value_range="uint8",
                ssim_form=settings.ssim_form,
                lpips_fn=lpips_fn,
            )
            for name in frame_values:
                frame_values[name].append(values[name])
        if features_fn is not None:
            for name, videos in (("real", real), ("fake", fake)):
                features[name].append(
                    np.asarray(features_fn(videos.astype(np.float32) / 127.5 - 1.0))
                )

    out_dir.mkdir(parents=True, exist_ok=True)
    if config.run_dir:
        source = _generate(config, settings, out_dir, on_batch)
    else:
        source = _score_files(config, samples, on_batch)
    values = {k: np.concatenate(v) for k, v in frame_values.items()}
    horizon = next(iter(values.values())).shape[1] if values else settings.horizon

    scores: dict[str, MeanStd] = {}
    for name, v in values.items():
        scores[name] = reduce_over_chunks(v, chunk=settings.chunk, remainder=config.remainder)
    kvd_value = None
    if features_fn is not None:
        real_f, fake_f = np.concatenate(features["real"]), np.concatenate(features["fake"])
        scores["fvd"] = chunked_fvd(
            real_f, fake_f, chunk=settings.chunk, remainder=config.remainder
        )
        kvd_value = kvd(real_f, fake_f)

    report = EvalReport(
        protocol=_protocol_name(config),
        description=settings.description,
        context=context,
        horizon=horizon,
        num_videos=scored[0],
        chunk=settings.chunk,
        source=source,
        scores=scores,
        per_frame={k: per_frame_curve(v).tolist() for k, v in values.items()},
        kvd=kvd_value,
    )
    _write(report, out_dir, command=" ".join(sys.argv))
    return report


def _json_safe(value: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (PSNR of identical frames
    is +inf; JSON has no such numbers)."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write(report: EvalReport, out_dir: pathlib.Path, command: str) -> None:
    (out_dir / "metrics.json").write_text(
        json.dumps(_json_safe(report.as_dict()), indent=2, allow_nan=False)
    )
    (out_dir / "metrics.md").write_text(report.markdown() + f"\n\nCommand: `{command}`\n")
    if not report.per_frame:
        return
    names = list(report.per_frame)
    frames = np.arange(report.context + 1, report.context + report.horizon + 1)
    rows = ["frame," + ",".join(names)]
    rows += [
        f"{f}," + ",".join(f"{report.per_frame[n][i]:.6f}" for n in names)
        for i, f in enumerate(frames)
    ]
    (out_dir / "per_frame.csv").write_text("\n".join(rows) + "\n")
    _plot(report, frames, out_dir / "per_frame.png")


def _plot(report: EvalReport, frames: np.ndarray, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.per_frame)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(frames, report.per_frame[name], lw=1.5)
        ax.set_xlabel("frame")
        ax.set_ylabel(name.upper())
        ax.set_title(f"{name.upper()} against the horizon")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{report.protocol}: {report.num_videos} videos, {report.context} context frames",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
