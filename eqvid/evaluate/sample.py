"""`python -m eqvid.evaluate.sample`: draw samples of a trained run for one task, on
held-out videos, as pictures a person can look at.

Tasks (what the samples are conditioned on):

- `predict`: the first `--context` frames of each video → the next `--horizon`
  (any video model);
- `generate`: nothing → `--horizon` frames (a model that draws clips from nothing,
  e.g. MCVD trained with `--prob-mask-cond` > 0);
- `interpolate`: frames before and after → the frames between (a model that infills:
  MCVD with `--num-frames-future` > 0);
- `past`: frames after → the frames before them (the same kind).

Writes `<out>/<task>.png` (per video: the given frames, each sample, the truth),
`<out>/<task>.npz` (`given_before`, `given_after`, `samples` (videos, k, frames, H, W,
C), `truth`, uint8) and prints where. The default `<out>` is
`<run-dir>/samples/<task>/`.

    python -m eqvid.evaluate.sample --run-dir runs/mcvd-mmnist --task predict
    python -m eqvid.evaluate.sample --run-dir runs/mcvd-interp --task interpolate --samples-per-video 4
"""

import dataclasses
import pathlib
import sys
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from .._cli import add_config_arguments, command_parser, config_from_args

SampleTask = Literal["predict", "generate", "interpolate", "past"]


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """What to sample, from which run, how many."""

    run_dir: str = ""
    """The training run (its config.json and checkpoints)."""
    task: SampleTask = "predict"
    """predict, generate, interpolate or past (see the description)."""
    num_videos: int = 4
    """Held-out videos (rows of the picture)."""
    samples_per_video: int = 2
    """Samples drawn per video (different keys)."""
    context: int = 5
    """predict: the frames given (at least the model's conditioning window)."""
    horizon: int = 10
    """predict and generate: the frames drawn."""
    step: int | None = None
    """Checkpoint step (default: the latest)."""
    ema: bool = True
    """Sample with the moving average of the parameters when the run kept one."""
    seed: int = 0
    """Seed of the sampling keys."""
    out_dir: str = ""
    """Where the files go (default: <run-dir>/samples/<task>/)."""


def _strip(path, bands, labels, gap=2):
    """A PNG: per video one row of bands (each `(frames, H, W, C)` uint8 or None),
    separated by grey bars, the labels above."""
    from ..train._samples import _rgb, _row, _tint

    colours = {"truth": (255, 170, 60)}
    rows = []
    for video in bands:
        parts = []
        for label, frames in zip(labels, video):
            if frames is None or len(frames) == 0:
                continue
            band = _rgb(frames)
            if label.startswith("sample"):
                band = _tint(band, (120, 255, 120))
            elif label in colours:
                band = _tint(band, colours[label])
            parts.append((label, _row(band, gap)))
        rows.append(parts)
    height = rows[0][0][1].shape[0]
    sep = np.full((height, 4 * gap + 2, 3), 255, np.uint8)
    sep[:, 2 * gap : 2 * gap + 2] = 128
    lines = [np.concatenate([p for _, part in r for p in (part, sep)][:-1], axis=1) for r in rows]
    header = 14
    width = max(line.shape[1] for line in lines)
    canvas = np.full((header + len(lines) * (height + gap), width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        canvas[
            header + i * (height + gap) : header + i * (height + gap) + height, : line.shape[1]
        ] = line
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    x = 0
    for label, part in rows[0]:
        draw.text((x + 2, 1), label, fill=(0, 0, 0))
        x += part.shape[1] + sep.shape[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def sample(config: SampleConfig) -> pathlib.Path:
    """Draw the samples `config` asks for and write the picture and the arrays; returns
    the output folder. Raises `ValueError` when the run's model cannot do the task
    (naming what it would need) or for bad numbers."""
    from ._trained_run import data_config_from_run, load_trained_run

    if not config.run_dir:
        raise ValueError("--run-dir is required: the training run to sample from.")
    run = load_trained_run(config.run_dir, config.step, ema=config.ema)
    out = pathlib.Path(config.out_dir) if config.out_dir else run.run_dir / "samples" / config.task
    return sample_model(run.model, data_config_from_run(run.config), config, out)


def sample_model(model: Any, data: Any, config: SampleConfig, out: pathlib.Path) -> pathlib.Path:
    """`sample` for a model in hand: draw `config.task`'s samples of `model` on the
    held-out videos of the dataset `data` (a data config) and write them to `out`."""
    from ..data import evaluation_videos
    from ..models import (
        AbstractInfillingVideoModel,
        AbstractUnconditionalVideoModel,
        AbstractVideoModel,
    )
    from ..train._samples import to_uint8

    for name in ("num_videos", "samples_per_video", "horizon"):
        if getattr(config, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(config, name)}."
            )
    task = config.task
    title = type(model).__name__

    def held_out(length):
        real, _ = next(
            evaluation_videos(
                data, num_videos=config.num_videos, length=length, batch_size=config.num_videos
            )
        )
        return jnp.asarray(real, jnp.float32) / 127.5 - 1.0

    if task in ("interpolate", "past"):
        if not isinstance(model, AbstractInfillingVideoModel):
            raise ValueError(f"--task {task}: {title} does not fill in frames between given ones.")
        infilling = model
        before, between, after = infilling.infill_frames()
        if after == 0:
            raise ValueError(
                f"--task {task}: this {title} was trained without frames after the ones it draws "
                "(MCVD: --num-frames-future 0); train it with --num-frames-future > 0."
            )
        video = held_out(before + between + after)
        truth, given_after = video[:, before : before + between], video[:, before + between :]
        given_before = video[:, :before] if task == "interpolate" else None

        def draw(v, k):
            given = v[:before] if task == "interpolate" else None
            return infilling.infill(given, v[before + between :], key=k)

    elif task == "generate":
        if not isinstance(model, AbstractUnconditionalVideoModel):
            raise ValueError(f"--task generate: {title} does not draw clips from nothing.")
        unconditional = model
        video = held_out(config.horizon)
        truth, given_before, given_after = video, None, None
        draw = lambda v, k: unconditional.generate_unconditional(config.horizon, key=k)
    elif task == "predict":
        if not isinstance(model, AbstractVideoModel):
            raise ValueError(f"--task predict: {title} is not a video model.")
        if config.context < 1:
            raise ValueError(f"--context must be ≥ 1 for --task predict, got {config.context}.")
        predicting = model
        video = held_out(config.context + config.horizon)
        given_before, truth, given_after = (
            video[:, : config.context],
            video[:, config.context :],
            None,
        )
        draw = lambda v, k: predicting.generate(v[: config.context], config.horizon, key=k)
    else:
        raise ValueError(f"--task must be predict, generate, interpolate or past; got {task!r}.")
    keys = jax.random.split(
        jax.random.key(config.seed), (config.num_videos, config.samples_per_video)
    )
    per_video = jax.jit(jax.vmap(jax.vmap(draw, in_axes=(None, 0)), in_axes=(0, 0)))
    samples = np.asarray(per_video(video, keys))
    out.mkdir(parents=True, exist_ok=True)
    u8 = lambda x: None if x is None else to_uint8(np.asarray(x))
    arrays = {"samples": to_uint8(samples), "truth": u8(truth)}
    arrays |= {
        name: u8(x)
        for name, x in (("given_before", given_before), ("given_after", given_after))
        if x is not None
    }
    np.savez_compressed(out / f"{task}.npz", **arrays)
    k = config.samples_per_video
    labels = ["given", *(f"sample {j + 1}" for j in range(k)), "given after", "truth"]
    bands = [
        [
            None if given_before is None else arrays["given_before"][i],
            *arrays["samples"][i],
            None if given_after is None else arrays["given_after"][i],
            arrays["truth"][i],
        ]
        for i in range(config.num_videos)
    ]
    _strip(out / f"{task}.png", bands, labels)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m eqvid.evaluate.sample", __doc__)
    add_config_arguments(parser, "sample", SampleConfig)
    config = config_from_args(parser.parse_args(argv), "sample", SampleConfig())
    try:
        out = sample(config)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(f"wrote {out / (config.task + '.png')} and {out / (config.task + '.npz')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
