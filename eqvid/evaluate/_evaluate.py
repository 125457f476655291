"""`evaluate(config)`: generate from a trained run under a protocol and report the
papers' metrics (JSON, markdown, per-frame plot, sample files)."""

import dataclasses
import json
import pathlib
import shlex
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
    psnr_ceiling,
    reduce_over_chunks,
    save_samples_npz,
    videos_to_uint8,
)
from ..metrics._protocol import _chunk_bounds
from ._protocols import PROTOCOLS, EvalProtocol, protocol
from ._reconstruction_report import ReconstructionReport, reconstruction_report
from ._rollout_report import BASELINES, baseline_predictions, frame_ranges

METRICS = ("psnr", "ssim", "lpips", "fvd")
FRAME_METRICS = ("psnr", "ssim", "lpips")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate, under which protocol, and where the results go.

    Each field is the command line's `--field-name` option; errors use that spelling."""

    run_dir: str = ""
    """A training run (its config.json and checkpoints/) to load and generate from."""
    model_dir: str = ""
    """Instead of a run: a model folder (from `python -m eqvid.models.convert_checkpoint`
    or `eqvid.models.save_model`, e.g. a released checkpoint) to generate from; its test
    videos come from --data-config."""
    data_config: str = ""
    """A YAML or JSON file naming the real videos' data, `dataset_name` (teco, codes,
    video_folder, …) and `data` (that dataset's options, as a run's config.json holds
    them), e.g. {"dataset_name": "teco", "data": {"root": "data/dmlab", "seq_len":
    300}}. Needed with --model-dir; with --run-dir it replaces the run's data (e.g. the
    frame folder a codes dataset was encoded from, so that a latent model is scored
    against the original frames rather than the tokenizer's reconstructions)."""
    samples: str = ""
    """Instead of generating: a sample file or folder of data_<i>.npz files (`real` and
    `fake` uint8 videos, e.g. from an earlier evaluation or another code base) to score."""
    protocol: str | None = None
    """Named protocol: context, horizon, number of videos, chunk and metrics (see
    eqvid.evaluate.PROTOCOLS); none means quick. Named, it also lends its context to
    sample files that record none."""
    step: int | None = None
    """Checkpoint step to load (default: the latest)."""
    actions: bool = True
    """Give the model the test videos' actions (action-conditioned generation, as TECO's
    and ConvSSM's DMLab protocols); --no-actions generates without them (their
    unconditioned variant; results then go to <run_dir>/eval/<protocol>-no-actions)."""
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
    samples_per_video: int | None = None
    """Override the protocol's samples per test video (k): each video is scored by its
    best sample per frame metric (best-of-k, as MCVD reports stochastic models); FVD
    takes each video's first sample."""
    runs: int | None = None
    """Override an unconditional protocol's number of runs (generations of --num-videos
    clips each, scored against the same real videos)."""
    real_split: Literal["test", "train"] | None = None
    """Override the protocol's split of the real videos."""
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
    """Where results go (default: <run_dir or model_dir>/eval/<protocol>, or
    <samples>/eval)."""
    save_samples: bool = True
    """Write the real and generated videos as samples/data_<i>.npz (uint8); an
    unconditional protocol writes each run's clips as samples/run<r>_<i>.npz (`fake`)."""
    lpips_weights: str = ""
    """Converted LPIPS file (default: lpips_alexnet.npz in the weights folder)."""
    i3d_weights: str = ""
    """Converted I3D file (default: i3d_kinetics400.npz in the weights folder)."""
    i3d_batch_size: int = 4
    """Videos per I3D forward pass."""
    progress: bool = True
    """Show a progress bar."""


LABELS = {
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "lpips": "LPIPS (lower is better)",
    "fvd": "FVD (lower is better)",
}
"""Each metric's name with its unit or direction, in tables and on plot axes."""
_DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "fvd": 2}
_LOWER_IS_BETTER = ("lpips", "fvd")


def _value(name: str, score: MeanStd, spread: bool) -> str:
    digits = _DIGITS[name]
    text = f"{score.mean:.{digits}f}"
    return f"{text} ± {score.std:.{digits}f}" if spread else text


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """The metrics of one evaluation, the model's beside the baselines'."""

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
    baselines: dict[str, dict[str, MeanStd]] = dataclasses.field(default_factory=dict)
    """Each baseline (a key of `BASELINES`: copy last frame, mean context frame, empty
    frame) → each frame metric, scored as the model is, from the same real videos."""
    baseline_per_frame: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    """Each baseline → each frame metric averaged over videos, per generated frame."""
    identical: dict[str, int] = dataclasses.field(default_factory=dict)
    """The model (`"model"`) and each baseline → how many of its generated frames equal
    the truth exactly (PSNR +inf); their PSNR counts as `psnr_ceiling` (`psnr_cap`)."""
    psnr_cap: float | None = None
    """The PSNR (dB) given to frames identical to the truth: `psnr_ceiling` of the frame
    size, the PSNR of one value off by one level."""
    samples_per_video: int = 1
    """Samples per video (k); > 1: frame metrics of the best sample per metric, FVD of
    the first."""
    out_dir: str = ""
    """The folder the files were written to."""
    files: tuple[str, ...] = ()
    """The files (and folders) written there."""

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["scores"] = {k: v.to_dict() for k, v in self.scores.items()}
        out["baselines"] = {
            b: {k: v.to_dict() for k, v in scores.items()} for b, scores in self.baselines.items()
        }
        out["files"] = list(self.files)
        return out

    def chunks(self) -> int:
        """The number of chunks the means (and stds) are taken over."""
        return max((len(s.per_chunk) for s in self.scores.values()), default=0)

    def losses(self) -> dict[str, dict[str, list[int]]]:
        """Frame metric → baseline → the predicted frames (1 = the first after the
        context) at which the model's curve is worse than the baseline's."""
        out: dict[str, dict[str, list[int]]] = {}
        for name, curve in self.per_frame.items():
            model = np.asarray(curve, np.float64)
            for b in BASELINES:
                if name not in self.baseline_per_frame.get(b, {}):
                    continue
                base = np.asarray(self.baseline_per_frame[b][name], np.float64)
                with np.errstate(invalid="ignore"):  # inf - inf: equal, not worse
                    worse = model > base if name in _LOWER_IS_BETTER else model < base
                frames = [int(i) + 1 for i in np.flatnonzero(worse)]
                if frames:
                    out.setdefault(name, {})[b] = frames
        return out

    def _settings_sentence(self) -> str:
        base = PROTOCOLS.get(self.protocol)
        if base is None:
            changed = ["its settings"]
        else:
            changed = [
                text
                for same, text in (
                    (self.context == base.context, f"context {base.context}"),
                    (self.horizon == base.horizon, f"horizon {base.horizon}"),
                    (self.num_videos == base.num_videos, f"{base.num_videos} videos"),
                    (self.chunk == base.chunk, f"chunks of {base.chunk}"),
                    (
                        self.samples_per_video == base.samples_per_video,
                        f"best of {base.samples_per_video} samples",
                    ),
                    (
                        set(self.scores) == set(base.metrics),
                        "metrics " + "/".join(m.upper() for m in base.metrics),
                    ),
                )
                if not same
            ]
        k = self.samples_per_video
        best = (
            f" Each video is scored by the best of its {k} samples, chosen per frame metric"
            f"{'; FVD takes its first sample' if 'fvd' in self.scores else ''}."
            if k > 1
            else ""
        )
        if not changed:
            return f"Protocol {self.protocol}: {self.description}. Source: {self.source}.{best}"
        return (
            f"{self.num_videos} videos from {self.source}: {self.context} context frames → "
            f"{self.horizon} predicted frames. Settings differ from protocol "
            f"{self.protocol}'s: {', '.join(changed)}.{best}"
        )

    def markdown(self) -> str:
        chunks = self.chunks()
        spread = chunks > 1
        baselines = [b for b in BASELINES if b in self.baselines]
        header = ["metric", "model", *(BASELINES[b] for b in baselines)]
        lines = [
            f"# Evaluation: {self.protocol}",
            "",
            self._settings_sentence(),
            "",
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
        ]
        for name, score in self.scores.items():
            cells = [LABELS[name], _value(name, score, spread)]
            cells += [
                _value(name, self.baselines[b][name], spread) if name in self.baselines[b] else "—"
                for b in baselines
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if self.kvd is not None:
            cells = ["KVD (lower is better)", f"{self.kvd:.4f}", *("—" for _ in baselines)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if spread:
            lines.append(
                f"Mean ± std over {chunks} chunks of {self.chunk} videos (std of the chunk "
                "means, as TECO)."
            )
        else:
            lines.append(f"One chunk ({self.num_videos} videos): no spread, so values stand alone.")
        frame_names = [m for m in self.scores if m in FRAME_METRICS]
        if frame_names:
            lines.append(
                f"{'/'.join(m.upper() for m in frame_names)}: the predicted frames only, mean "
                "over frames, then videos."
            )
        if baselines:
            lines.append(
                "Baselines, from the same real videos and scored the same way: copy last "
                "frame repeats the last context frame, mean context frame repeats the mean "
                "of the context frames, empty frame is black (0)."
            )
        exact = {who: n for who, n in self.identical.items() if n}
        if exact and self.psnr_cap is not None:
            total = self.num_videos * self.horizon
            who = "; ".join(
                f"{'the model' if k == 'model' else BASELINES[k]}: {n} of {total}"
                for k, n in exact.items()
            )
            lines.append(
                f"Frames identical to the truth (PSNR +inf) count as {self.psnr_cap:.2f} dB, the "
                f"PSNR of one value off by one level, so means stay finite ({who})."
            )
        if "fvd" in self.scores:
            lines.append(
                "FVD and KVD: whole videos (context included), I3D logits; computed for the "
                "model only, not for the baselines."
            )
            if self.chunk != PAPER_CHUNK:
                lines.append(
                    f"Chunks of {self.chunk} videos, not the papers' {PAPER_CHUNK}: FVD is "
                    "not comparable with published numbers."
                )
        if baselines and self.per_frame:
            losses = self.losses()
            lines.append("")
            if not losses:
                lines.append(
                    "No baseline is better than the model at any predicted frame "
                    f"({', '.join(n.upper() for n in self.per_frame)}; mean over videos)."
                )
            else:
                lines.append(
                    "Where a baseline is better than the model (mean over videos; predicted "
                    f"frame 1 is the first after the context, {self.horizon} the last):"
                )
                for name, worse in losses.items():
                    word = "above (worse than)" if name in _LOWER_IS_BETTER else "below"
                    parts = []
                    for b, frames in worse.items():
                        where = frame_ranges(frames)
                        if len(frames) == self.horizon:
                            where = "every predicted frame"
                        elif len(frames) == 1:
                            where = f"predicted frame {where}"
                        elif where.count(",") >= 6:  # scattered: count them
                            where = (
                                f"{len(frames)} of {self.horizon} predicted frames (the first: "
                                f"{frames[0]}; per_frame.csv has them all)"
                            )
                        else:
                            where = f"predicted frames {where}"
                        parts.append(f"{word} {BASELINES[b]} at {where}")
                    lines.append(f"- {name.upper()}: the model is " + "; ".join(parts) + ".")
        return "\n".join(lines)

    def wrote(self) -> str:
        """One line: which files were written where."""
        return f"eqvid: wrote {', '.join(self.files)} to {self.out_dir}"


def _protocol_name(config: EvalConfig) -> str:
    return config.protocol or "quick"


_OVERRIDABLE = (
    "context", "horizon", "num_videos", "chunk", "runs", "real_split", "samples_per_video",
)  # fmt: skip
"""The protocol settings an `EvalConfig` field of the same name overrides."""


def _settings(config: EvalConfig) -> EvalProtocol:
    base = protocol(_protocol_name(config))
    changes = {k: getattr(config, k) for k in _OVERRIDABLE if getattr(config, k) is not None}
    if config.metrics:
        bad = sorted(set(config.metrics) - set(METRICS))
        if bad:
            raise ValueError(f"--metrics: unknown {bad}; choose from {list(METRICS)}.")
        changes["metrics"] = tuple(config.metrics)
    if config.real_split not in (None, "test", "train"):
        raise ValueError(f"--real-split must be test or train, got {config.real_split!r}.")
    settings = dataclasses.replace(base, **changes)
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be ≥ 1, got {config.batch_size}.")
    for name in ("horizon", "num_videos", "chunk", "runs", "samples_per_video"):
        if getattr(settings, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be ≥ 1, got {getattr(settings, name)}.")
    if settings.context < 0:
        raise ValueError(f"--context must be ≥ 0 (0: unconditional), got {settings.context}.")
    if settings.unconditional:
        paired = [m for m in settings.metrics if m != "fvd"]
        if paired or not settings.metrics:
            raise ValueError(
                f"--metrics {' '.join(settings.metrics)}: an unconditional protocol (context 0) "
                "scores generated clips as a set against real ones, FVD (with KVD) only; "
                f"{', '.join(paired) or 'no metric'} needs a true frame for each generated one."
            )
        if config.chunk is not None:
            raise ValueError(
                f"--chunk {config.chunk}: an unconditional protocol scores all the clips of a "
                "run at once and reports its spread over runs; set --num-videos and --runs."
            )
        if settings.num_videos < 2:
            raise ValueError(
                f"--num-videos must be ≥ 2 for FVD/KVD (a covariance), got {settings.num_videos}."
            )
        if settings.samples_per_video != 1:
            raise ValueError(
                f"--samples-per-video {settings.samples_per_video}: best-of-k needs a true "
                "video to pick the best sample against; an unconditional protocol has none."
            )
        return dataclasses.replace(settings, chunk=settings.num_videos)
    if settings.samples_per_video > 1 and config.samples:
        raise ValueError(
            f"--samples-per-video {settings.samples_per_video}: sample files hold one generated "
            "video per real one; best-of-k needs a run or model to sample from."
        )
    if settings.runs != 1:
        raise ValueError(
            f"--runs {settings.runs}: runs are for unconditional protocols (context 0); a "
            "conditional protocol reports its spread over chunks of videos (--chunk)."
        )
    if config.run_dir or config.model_dir:  # before generating: will videos fill the chunks?
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


def load_generator(config: EvalConfig) -> tuple[Any, Any, str, list[str]]:
    """`(model, data, source, notes)`: the model of `--run-dir` (at `--step`, with its
    EMA parameters unless `--no-ema`) or `--model-dir`, the data config of the real
    videos (`--data-config` if given, else the run's), the source's path and notes on
    it (the step) for reports.

    **Raises:** `ValueError` if the run holds a model that does not generate videos."""
    from ..models import AbstractVideoModel, load_model
    from ._trained_run import data_config_from_file, data_config_from_run, load_trained_run

    # A data file's errors come before the weights load.
    data = data_config_from_file(config.data_config) if config.data_config else None
    if config.model_dir:
        return load_model(config.model_dir), data, str(config.model_dir), []
    run = load_trained_run(config.run_dir, config.step, ema=config.ema)
    if not isinstance(run.model, AbstractVideoModel):
        raise ValueError(
            f"{config.run_dir} holds a {type(run.model).__name__}, which does not generate "
            "videos; evaluation protocols score generated frames."
        )
    notes = [f"step {run.step}"]
    if data is None:
        data = data_config_from_run(run.config)
    else:
        notes.append(f"real videos from {config.data_config}")
    return run.model, data, str(run.run_dir), notes


def _generate(config, settings, out_dir, on_batch) -> str:
    from ..data import evaluation_videos
    from ..models import rollout

    model, data, source, notes = load_generator(config)
    if not config.actions:
        notes.append("without actions")
    ctx, horizon = settings.context, settings.horizon
    key = jax.random.key(config.seed)
    batches = evaluation_videos(
        data,
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
    k = settings.samples_per_video
    with bar:
        for i, (real, actions) in enumerate(batches):
            context = real[:, :ctx].astype(np.float32) / 127.5 - 1.0
            fakes = []
            batch_key = jax.random.fold_in(key, i)
            for j in range(k):  # sample j of every video (k = 1: the key as before)
                pred = np.asarray(
                    rollout(
                        model,
                        context,
                        horizon,
                        key=batch_key if k == 1 else jax.random.fold_in(batch_key, j),
                        actions=actions if config.actions else None,
                    )
                )
                # Predictions are clipped to the frame range before they become uint8 frames.
                pred = videos_to_uint8(
                    np.clip(pred, -1.0, 1.0), value_range="[-1,1]", name="prediction"
                )
                fakes.append(np.concatenate([real[:, :ctx], pred], axis=1))
            if config.save_samples:  # the first sample of each video
                save_samples_npz(out_dir / "samples" / f"data_{i}.npz", real, fakes[0], context=ctx)
            on_batch(real, np.stack(fakes))
            bar.update(len(real))
    return source + (f" ({', '.join(notes)})" if notes else "")


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
            samples.fake[None, start : start + config.batch_size],
        )
    return config.samples


def is_tokenizer_run(run_dir: str) -> bool:
    """Whether `run_dir/config.json` records a tokenizer family (False when it cannot
    tell: loading the run then says what is wrong)."""
    from ..models import AbstractVideoTokenizer, model_spec

    try:
        name = json.loads((pathlib.Path(run_dir) / "config.json").read_text())["model_name"]
        return issubclass(model_spec(name).module, AbstractVideoTokenizer)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def evaluate_tokenizer(config: EvalConfig, *, lpips: Any = None) -> ReconstructionReport:
    """Evaluate a tokenizer's training run (`config.run_dir`): reconstruct the
    protocol's number of test videos (`--num-videos`) at the run's training length and
    score them (PSNR, SSIM, and LPIPS when the protocol or `--metrics` include it) with
    the codebook's use; write `metrics.json` and `metrics.md` to the output folder
    (default `<run_dir>/eval/<protocol>`). `lpips`: a preloaded `eqvid.metrics.LPIPS`."""
    from ..data import evaluation_videos
    from ._trained_run import data_config_from_run, load_trained_run

    if not config.run_dir or config.samples:
        raise ValueError(
            "evaluate_tokenizer needs --run-dir (a tokenizer's training run) and no --samples."
        )
    named = protocol(_protocol_name(config))  # its video count and metrics (no chunks here)
    settings = dataclasses.replace(
        named,
        num_videos=config.num_videos or named.num_videos,
        metrics=tuple(config.metrics) or named.metrics,  # type: ignore[arg-type]
    )
    out_dir = pathlib.Path(
        config.out_dir or pathlib.Path(config.run_dir) / "eval" / _protocol_name(config)
    )

    run = load_trained_run(config.run_dir, config.step, ema=config.ema)
    data = data_config_from_run(run.config)
    lpips_fn, _ = _networks(config, tuple(m for m in settings.metrics if m == "lpips"), lpips, None)
    batches = evaluation_videos(
        data, num_videos=settings.num_videos, length=data.seq_len, batch_size=config.batch_size
    )
    videos = np.concatenate([v for v, _ in batches]).astype(np.float32) / 127.5 - 1.0
    from ..models import AbstractVideoTokenizer, model_spec

    assert isinstance(run.model, AbstractVideoTokenizer)
    report = reconstruction_report(
        run.model,
        videos,
        chunk=config.batch_size,
        model_name=model_spec(run.config["model_name"]).title,
        lpips_fn=lpips_fn,
    )
    report = dataclasses.replace(report, written_to=str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in sys.argv)
    (out_dir / "metrics.json").write_text(
        json.dumps(_json_safe(report.as_dict()), indent=2, allow_nan=False)
    )
    skipped = [m for m in settings.metrics if m == "fvd"]
    note = "\nFVD is not computed for a tokenizer's reconstructions.\n" if skipped else ""
    (out_dir / "metrics.md").write_text(
        report.markdown() + note + f"\nRun: {run.run_dir} (step {run.step}). Command: `{command}`\n"
    )
    return report


def check_sources(config: EvalConfig) -> None:
    """Exactly one of --run-dir, --model-dir and --samples; --data-config with a model
    to generate from (required with --model-dir)."""
    if sum(map(bool, (config.run_dir, config.model_dir, config.samples))) != 1:
        raise ValueError(
            "give exactly one of --run-dir (a training run: generate, then score), "
            "--model-dir (a model folder, with --data-config) and --samples (score existing "
            f"files); got --run-dir {config.run_dir!r}, --model-dir {config.model_dir!r}, "
            f"--samples {config.samples!r}."
        )
    if config.model_dir and not config.data_config:
        raise ValueError(
            "--model-dir needs --data-config (a model folder holds no data settings); got "
            f"--model-dir {config.model_dir!r} and no --data-config."
        )
    if config.samples and config.data_config:
        raise ValueError(
            "--data-config names the real videos of a model's generations; sample files "
            f"hold their own (got --samples {config.samples!r}, --data-config "
            f"{config.data_config!r})."
        )


def is_unconditional(config: EvalConfig) -> bool:
    """Whether `config` asks for an unconditional protocol (context 0, after its
    overrides): scored by `eqvid.evaluate.evaluate_unconditional`."""
    context = (
        config.context if config.context is not None else protocol(_protocol_name(config)).context
    )
    return context == 0


def evaluate(
    config: EvalConfig,
    *,
    lpips: Any = None,
    i3d: Any = None,
) -> EvalReport:
    """Evaluate a trained run (`config.run_dir`) or existing samples (`config.samples`)
    under `config.protocol` and write, to the output folder: `metrics.json`,
    `metrics.md`, `per_frame.csv`, `per_frame.png` (each frame metric per predicted
    frame) and, when generating, `samples/data_<i>.npz`.

    A tokenizer's run (`AbstractVideoTokenizer`) is scored by `evaluate_tokenizer`
    instead (`python -m eqvid.evaluate` picks it by itself).

    The baselines of `BASELINES` (the last context frame copied, the mean context
    frame, an empty black frame) are scored beside the model on the frame metrics,
    from the same real videos, in the same batches and chunks; FVD is the model's only.

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
    check_sources(config)
    check_sources(config)
    if config.run_dir and is_tokenizer_run(config.run_dir):
        raise ValueError(
            f"{config.run_dir} is a tokenizer's run: score its reconstructions with "
            "evaluate_tokenizer(config) (python -m eqvid.evaluate does it by itself)."
        )
    if is_unconditional(config):
        raise ValueError(
            f"protocol {_protocol_name(config)!r} with context 0 is unconditional: score it "
            "with evaluate_unconditional(config) (python -m eqvid.evaluate picks it by itself)."
        )
    settings = _settings(config)
    metrics = settings.metrics
    if config.out_dir:
        out_dir = pathlib.Path(config.out_dir)
    elif config.run_dir or config.model_dir:
        name = _protocol_name(config) + ("" if config.actions else "-no-actions")
        out_dir = pathlib.Path(config.run_dir or config.model_dir) / "eval" / name
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
    names = [m for m in FRAME_METRICS if m in metrics]
    # The model ("model") and each baseline → frame metric → per-batch (videos, horizon).
    frame_values: dict[str, dict[str, list[np.ndarray]]] = {
        who: {m: [] for m in names} for who in ("model", *BASELINES)
    }
    features: dict[str, list[np.ndarray]] = {"real": [], "fake": []}
    scored = [0]
    identical = dict.fromkeys(frame_values, 0)
    cap: list[float] = []

    def scored_frames(
        real: np.ndarray, videos: np.ndarray, who: str, count: bool = True
    ) -> dict[str, np.ndarray]:
        values = frame_metrics(
            real,
            videos,
            context=context,
            value_range="uint8",
            ssim_form=settings.ssim_form,
            lpips_fn=lpips_fn,
        )
        if "psnr" in values:  # identical frames: +inf → the finite ceiling
            exact = np.isposinf(values["psnr"])
            if not cap:
                cap.append(psnr_ceiling(*(int(d) for d in real.shape[2:])))
            identical[who] += int(exact.sum()) if count else 0
            values["psnr"] = np.where(exact, np.float32(cap[0]), values["psnr"])
        return values

    def on_batch(real: np.ndarray, fakes: np.ndarray) -> None:
        """`fakes`: `(k, videos, time, …)`, k samples of each video (k = 1 mostly)."""
        scored[0] += len(real)
        fake = fakes[0]
        if names:
            ctx = real[:, :context]
            baselines = {
                b: np.concatenate([ctx, frames], axis=1)
                for b, frames in baseline_predictions(
                    real, context=context, horizon=real.shape[1] - context, empty=0.0
                ).items()
            }
            for who, videos in baselines.items():
                values = scored_frames(real, videos, who)
                for name in names:
                    frame_values[who][name].append(values[name])
            per_sample = [  # frames equal to the truth counted in the first sample
                scored_frames(real, videos, "model", count=j == 0) for j, videos in enumerate(fakes)
            ]
            for name in names:  # best of k per video, for each metric on its own
                stacked = np.stack([v[name] for v in per_sample])  # (k, videos, horizon)
                video_mean = stacked.mean(axis=2)
                best = (np.argmin if name in _LOWER_IS_BETTER else np.argmax)(video_mean, axis=0)
                frame_values["model"][name].append(stacked[best, np.arange(len(real))])
        if features_fn is not None:
            for name, videos in (("real", real), ("fake", fake)):
                features[name].append(
                    np.asarray(features_fn(videos.astype(np.float32) / 127.5 - 1.0))
                )

    out_dir.mkdir(parents=True, exist_ok=True)
    if config.run_dir or config.model_dir:
        source = _generate(config, settings, out_dir, on_batch)
    else:
        source = _score_files(config, samples, on_batch)
    values = {
        who: {k: np.concatenate(v) for k, v in per_metric.items()}
        for who, per_metric in frame_values.items()
    }
    horizon = values["model"][names[0]].shape[1] if names else settings.horizon

    def reduced(per_metric: dict[str, np.ndarray]) -> dict[str, MeanStd]:
        return {
            k: reduce_over_chunks(v, chunk=settings.chunk, remainder=config.remainder)
            for k, v in per_metric.items()
        }

    def curves(per_metric: dict[str, np.ndarray]) -> dict[str, list[float]]:
        return {k: per_frame_curve(v).tolist() for k, v in per_metric.items()}

    scores = reduced(values["model"])
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
        per_frame=curves(values["model"]),
        kvd=kvd_value,
        baselines={b: reduced(values[b]) for b in BASELINES if names},
        baseline_per_frame={b: curves(values[b]) for b in BASELINES if names},
        identical=identical if "psnr" in names else {},
        psnr_cap=cap[0] if cap else None,
        samples_per_video=settings.samples_per_video,
        out_dir=str(out_dir),
        files=(
            "metrics.json",
            "metrics.md",
            *(("per_frame.csv", "per_frame.png") if names else ()),
            *(("samples/",) if not config.samples and config.save_samples else ()),
        ),
    )
    _write(report, out_dir, command=" ".join(sys.argv))
    return report


def _json_safe(value: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (JSON has no such numbers;
    a metric of values outside the frame range is NaN)."""
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
    # Columns: the model's metrics, then each baseline's as <metric>_<baseline>.
    columns = {n: report.per_frame[n] for n in report.per_frame}
    for b, curves in report.baseline_per_frame.items():
        columns |= {f"{n}_{b}": curve for n, curve in curves.items()}
    rows = ["frame,predicted_frame," + ",".join(columns)]
    rows += [
        f"{report.context + i + 1},{i + 1}," + ",".join(f"{c[i]:.6f}" for c in columns.values())
        for i in range(report.horizon)
    ]
    (out_dir / "per_frame.csv").write_text("\n".join(rows) + "\n")
    _plot(report, out_dir / "per_frame.png")


def _plot(report: EvalReport, path: pathlib.Path) -> None:
    """Each frame metric against the predicted frame: the model and the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(report.per_frame)
    frames = np.arange(1, report.horizon + 1)
    marker = "o" if report.horizon <= 30 else None
    fig, axes = plt.subplots(1, len(names), figsize=(4.8 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(
            frames,
            report.per_frame[name],
            lw=2,
            color="C0",
            marker=marker,
            ms=3,
            label="model",
            zorder=3,
        )
        for i, b in enumerate(BASELINES):
            if name in report.baseline_per_frame.get(b, {}):
                ax.plot(
                    frames,
                    report.baseline_per_frame[b][name],
                    lw=1.2,
                    ls="--",
                    color=f"C{i + 1}",
                    label=BASELINES[b],
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"predicted frame (after {report.context} context frames)")
        ax.set_ylabel(LABELS[name])
        ax.set_title(f"{name.upper()} per predicted frame")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{report.protocol}: mean over {report.num_videos} videos",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
