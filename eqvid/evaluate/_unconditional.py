"""`evaluate_unconditional(config)`: draw clips from nothing and compare them as a set
with real videos (FVD and KVD over all the clips of a run, mean ± std over runs), as
MeBT's `measure_fvd_with_numpy.py` does."""

import dataclasses
import json
import pathlib
import shlex
import sys
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from ..metrics import MeanStd, fvd_from_features, kvd, videos_to_uint8
from ._evaluate import (
    EvalConfig,
    _json_safe,
    _networks,
    _protocol_name,
    _settings,
    check_sources,
    is_tokenizer_run,
    is_unconditional,
    load_generator,
)
from ._protocols import protocol

_PICTURE_VIDEOS = 8
"""Clips shown in `generated.png` and `real.png`."""
_PICTURE_FRAMES = 16
"""At most this many frames per clip in the pictures (evenly spaced)."""


@dataclasses.dataclass(frozen=True)
class UnconditionalReport:
    """FVD and KVD of clips generated from nothing against real videos."""

    protocol: str
    description: str
    num_frames: int
    """Frames per clip."""
    num_videos: int
    """Clips per run (and real videos they are compared with)."""
    runs: int
    """Independent generations, each scored against the same real videos."""
    source: str
    """The run (and step) or model folder evaluated."""
    real: str
    """Where the real videos come from (split and dataset)."""
    scores: dict[str, MeanStd]
    """`fvd` and `kvd`, each mean ± std over runs (`per_chunk`: each run's value over
    all its clips; `chunk_size`: the clips per run)."""
    seeds: tuple[int, ...] = ()
    """The seed of each run."""
    out_dir: str = ""
    """The folder the files were written to."""
    files: tuple[str, ...] = ()
    """The files (and folders) written there."""

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["scores"] = {k: v.to_dict() for k, v in self.scores.items()}
        out["seeds"], out["files"] = list(self.seeds), list(self.files)
        return out

    def markdown(self) -> str:
        spread = self.runs > 1
        lines = [
            f"# Evaluation: {self.protocol}",
            "",
            f"{self.num_videos} clips of {self.num_frames} frames generated from nothing by "
            f"{self.source}, per run; {self.runs} run(s); real videos: {self.real}.",
            "",
            "| metric | model |",
            "|---|---:|",
        ]
        for name, label in (("fvd", "FVD (lower is better)"), ("kvd", "KVD (lower is better)")):
            score = self.scores[name]
            digits = 2 if name == "fvd" else 4
            value = f"{score.mean:.{digits}f}"
            if spread:
                value += f" ± {score.std:.{digits}f}"
            lines.append(f"| {label} | {value} |")
        lines.append("")
        if spread:
            lines.append(
                f"Mean ± std over {self.runs} runs (seeds {', '.join(map(str, self.seeds))}); "
                f"each run's FVD and KVD take all its {self.num_videos} clips at once against "
                "the same real videos, as MeBT's measure_fvd_with_numpy.py."
            )
        else:
            lines.append(
                f"One run (seed {self.seeds[0] if self.seeds else 0}): no spread, so values "
                "stand alone."
            )
        lines.append(
            "FVD and KVD: I3D logits of whole clips; KVD is the unbiased polynomial-kernel "
            "MMD (raw, not × 1e3). Both depend on the number of clips: compare only numbers "
            "with the same count."
        )
        return "\n".join(lines)

    def wrote(self) -> str:
        """One line: which files were written where."""
        return f"eqvid: wrote {', '.join(self.files)} to {self.out_dir}"


def _picture_frames(videos: np.ndarray) -> np.ndarray:
    """At most `_PICTURE_FRAMES` evenly spaced frames of each of the first clips, in
    `[-1, 1]` (as the strip writer takes them)."""
    t = videos.shape[1]
    index = np.unique(np.linspace(0, t - 1, min(t, _PICTURE_FRAMES)).round().astype(int))
    return videos[:_PICTURE_VIDEOS, index].astype(np.float32) / 127.5 - 1.0


def evaluate_unconditional(config: EvalConfig, *, i3d: Any = None) -> UnconditionalReport:
    """Evaluate a model that draws clips from nothing (`AbstractUnconditionalVideoModel`,
    e.g. MeBT) under an unconditional protocol (context 0: `mebt-16f`, `mebt-128f`, or
    any protocol with `--context 0 --metrics fvd`).

    The protocol's `num_videos` real videos (the first of its `real_split` split, the
    first `horizon` frames of each; `--data-config` names other data than the run's)
    are embedded once by I3D. Each of `runs` runs (seeds `seed`, `seed + 1`, …) then
    draws `num_videos` clips of `horizon` frames with
    `eqvid.models.sample_unconditional` and scores them all at once against the real
    ones: FVD (Fréchet distance of the logits) and KVD (polynomial-kernel MMD). The
    report gives each as mean ± std over runs, and the output folder (default
    `<run_dir or model_dir>/eval/<protocol>`) gets `metrics.json`, `metrics.md`,
    `generated.png` and `real.png` (the first clips of the first run and of the real
    set) and, with `--save-samples`, `samples/run<r>_<i>.npz` (`fake`: each batch's
    generated clips, uint8).

    **Arguments:** `config`; `i3d`: a preloaded `eqvid.metrics.I3D`, or any function
    from videos `(b, T, H, W, C)` in `[-1, 1]` to features `(b, d)` (default: loaded
    from the weight file).

    **Raises:** `ValueError` for bad settings, a conditional protocol, a model that
    only continues videos, or real videos of another frame size than the generated
    ones; `FileNotFoundError` for a missing run or weight file.
    """
    from ..data import evaluation_videos
    from ..models import AbstractUnconditionalVideoModel, sample_unconditional

    check_sources(config)
    if config.samples:
        raise ValueError(
            "evaluate_unconditional generates its clips: give --run-dir or --model-dir, not "
            f"--samples ({config.samples!r})."
        )
    if config.run_dir and is_tokenizer_run(config.run_dir):
        raise ValueError(
            f"{config.run_dir} is a tokenizer's run: it reconstructs videos, it does not "
            "draw them from nothing."
        )
    name = _protocol_name(config)
    if not is_unconditional(config):
        context = config.context if config.context is not None else protocol(name).context
        raise ValueError(
            f"protocol {name!r} gives the model {context} context frames: score it with "
            "evaluate(config); unconditional protocols have context 0."
        )
    settings = _settings(config)
    _, features_fn = _networks(config, ("fvd",), None, i3d)  # weights before any generation
    assert features_fn is not None
    model, data, source, notes = load_generator(config)
    if not isinstance(model, AbstractUnconditionalVideoModel):
        raise ValueError(
            f"{source} holds a {type(model).__name__}, which continues given frames and "
            f"does not draw clips from nothing; protocol {name!r} is unconditional. "
            "Evaluate it under a conditional protocol (e.g. quick)."
        )
    out_dir = pathlib.Path(
        config.out_dir or pathlib.Path(config.run_dir or config.model_dir) / "eval" / name
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.save_samples:  # files of an earlier evaluation would be mixed in
        for stale in (out_dir / "samples").glob("run*_*.npz"):
            stale.unlink()
    from ..train._samples import save_video_strip

    n, length = settings.num_videos, settings.horizon
    real_features, real_shape = [], None
    real_batches = evaluation_videos(
        data, num_videos=n, length=length, batch_size=config.batch_size, split=settings.real_split
    )
    with tqdm(total=n, disable=not config.progress, desc="real videos", unit="video") as bar:
        for i, (real, _) in enumerate(real_batches):
            if i == 0:
                real_shape = real.shape[2:]
                save_video_strip(out_dir / "real.png", _picture_frames(real), label="real")
            real_features.append(np.asarray(features_fn(real.astype(np.float32) / 127.5 - 1.0)))
            bar.update(len(real))
    real_f = np.concatenate(real_features)

    seeds = tuple(config.seed + r for r in range(settings.runs))
    fvds, kvds = [], []
    bar = tqdm(total=n * settings.runs, disable=not config.progress, desc="generate", unit="clip")
    with bar:
        for r, seed in enumerate(seeds):
            key = jax.random.key(seed)
            fake_features = []
            for i, start in enumerate(range(0, n, config.batch_size)):
                count = min(config.batch_size, n - start)
                clips = sample_unconditional(model, count, length, key=jax.random.fold_in(key, i))
                fake = videos_to_uint8(
                    np.clip(np.asarray(clips), -1.0, 1.0), value_range="[-1,1]", name="generated"
                )
                if fake.shape[2:] != real_shape:
                    raise ValueError(
                        f"the model draws frames of shape {fake.shape[2:]} (height, width, "
                        f"channels) but the real videos have {real_shape}: FVD would compare "
                        "different videos; pass --data-config naming the data the model was "
                        "trained on."
                    )
                if r == 0 and i == 0:
                    save_video_strip(
                        out_dir / "generated.png", _picture_frames(fake), label=f"seed {seed}"
                    )
                if config.save_samples:
                    path = out_dir / "samples" / f"run{r}_{i}.npz"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(path, fake=fake)
                fake_features.append(np.asarray(features_fn(fake.astype(np.float32) / 127.5 - 1.0)))
                bar.update(count)
            fake_f = np.concatenate(fake_features)
            fvds.append(float(fvd_from_features(real_f, fake_f)))
            kvds.append(kvd(real_f, fake_f))

    def over_runs(values: list[float]) -> MeanStd:
        return MeanStd(
            mean=float(np.mean(values)),
            std=float(np.std(values)),
            per_chunk=tuple(values),
            chunk_size=n,
        )

    from ..data import CodesConfig

    real = f"the first {n} of the {settings.real_split} split"
    if config.data_config:
        real += f" of {config.data_config}"
    if isinstance(data, CodesConfig):
        real += (
            " of the run's codes, decoded by their tokenizer (reconstructions: --data-config "
            "naming the frames they were encoded from compares with the originals, as MeBT)"
        )
    report = UnconditionalReport(
        protocol=name,
        description=settings.description,
        num_frames=length,
        num_videos=n,
        runs=settings.runs,
        source=source + (f" ({', '.join(notes)})" if notes else ""),
        real=real,
        scores={"fvd": over_runs(fvds), "kvd": over_runs(kvds)},
        seeds=seeds,
        out_dir=str(out_dir),
        files=(
            "metrics.json",
            "metrics.md",
            "generated.png",
            "real.png",
            *(("samples/",) if config.save_samples else ()),
        ),
    )
    command = " ".join(shlex.quote(a) for a in sys.argv)
    (out_dir / "metrics.json").write_text(
        json.dumps(_json_safe(report.as_dict()), indent=2, allow_nan=False)
    )
    (out_dir / "metrics.md").write_text(report.markdown() + f"\n\nCommand: `{command}`\n")
    return report
