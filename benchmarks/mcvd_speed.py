"""How much faster is MCVD with fewer denoising steps? Sampling time per generated
frame for DDPM with 1,000 steps, DDIM with 100 and DDIM with 25 (by default), and
the training step time, side by side in one run.

The same `MCVDVideoModel` (the preset's weights, freshly initialised: the speed does
not depend on them) draws one block of `num_frames` frames for each of `--videos`
videos at once, given their past frames (`sample_block`, one jitted `lax.scan` over
the steps); a training step is the loss, the gradients of every parameter and an
Adam update on `--batch` clips. Median of `--repeats` calls after compilation.

It checks issue 21's target: DDIM-25 samples ≥ 30× faster per frame than 1000-step
DDPM. Prints markdown tables and writes `mcvd_speed.md` on GPU (`mcvd_speed_<backend>.md`
elsewhere) into a new folder under `benchmarks/results/runs/` (with
`--update-reference`: into `benchmarks/results/`).

    python benchmarks/mcvd_speed.py
    python benchmarks/mcvd_speed.py --preset smmnist_big --samplers ddpm:1000 ddim:100 ddim:25
"""

import argparse
import dataclasses
import os
import sys

import equinox as eqx
import jax
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timing, begin_run, fmt_ms, markdown_table, measure, publish

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.models import MCVD_PRESETS, MCVDConfig, MCVDVideoModel, VideoBatch


@dataclasses.dataclass(frozen=True)
class MCVDSpeedConfig:
    """Model, samplers, sizes and repetitions."""

    preset: str = "small"
    """The MCVD preset (`MCVD_PRESETS`)."""
    samplers: tuple[str, ...] = ("ddpm:1000", "ddim:100", "ddim:25")
    """Samplers to time, each `sampler:steps` (steps divide the schedule's)."""
    videos: int = 4
    """Videos sampled at once (one block each)."""
    batch: int = 8
    """Clips per training step."""
    repeats: int = 3
    """Timed calls per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: mcvd_speed on GPU, with _<backend> elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def _parse_sampler(text: str) -> tuple[str, int]:
    sampler, _, steps = text.partition(":")
    if sampler not in ("ddpm", "ddim") or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"--samplers: each must be ddpm:N or ddim:N, got {text!r}")
    return sampler, int(steps)


def _train_step(static, optimizer):
    def step(params, opt_state, video, key):
        def loss(params):
            return eqx.combine(params, static).loss(VideoBatch(video), key=key)[0]

        value, grads = jax.value_and_grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def _sampling(static):
    def sample(params, past, key):
        model = eqx.combine(params, static)
        keys = jax.random.split(key, past.shape[0])
        return jax.vmap(lambda p, k: model.sample_block(p, key=k))(past, keys)

    return sample


def main(argv: list[str] | None = None) -> list[dict]:
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", MCVDSpeedConfig)
    config = config_from_args(parser.parse_args(argv), "bench", MCVDSpeedConfig())
    if config.preset not in MCVD_PRESETS:
        parser.error(f"--preset must be one of {sorted(MCVD_PRESETS)}, got {config.preset!r}")
    if min(config.videos, config.batch, config.repeats) < 1:
        parser.error("--videos, --batch and --repeats must be ≥ 1")
    try:
        samplers = [_parse_sampler(s) for s in config.samplers]
        base = MCVD_PRESETS[config.preset]
        for sampler, steps in samplers:
            dataclasses.replace(base, sampler=sampler, sampling_steps=steps)
    except ValueError as error:
        parser.error(str(error))
    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    c = base
    frame = (c.frame_size, c.frame_size, c.channels)
    records: list[dict] = []
    timings: dict[str, Timing] = {}
    past = jax.random.uniform(jax.random.key(1), (config.videos, c.num_frames_cond, *frame))
    for sampler, steps in samplers:
        cfg: MCVDConfig = dataclasses.replace(base, sampler=sampler, sampling_steps=steps)
        params, static = eqx.partition(MCVDVideoModel(cfg, key=jax.random.key(0)), eqx.is_array)
        label = f"{sampler.upper()}-{steps}"
        t = measure(_sampling(static), (params, past, jax.random.key(2)), config.repeats)
        timings[label] = t
        per_frame = t.seconds / (config.videos * c.num_frames) if t.ok else None
        records.append(
            {"sampler": sampler, "steps": steps, "seconds": t.seconds,
             "seconds_per_frame": per_frame, "error": t.error}
        )  # fmt: skip
        print(f"{label:10s} {fmt_ms(t)} ms per block of {config.videos} videos")

    params, static = eqx.partition(MCVDVideoModel(base, key=jax.random.key(0)), eqx.is_array)
    optimizer = optax.adam(2e-4)
    clip = jax.random.uniform(jax.random.key(3), (config.batch, c.clip_length, *frame))
    train = measure(
        _train_step(static, optimizer),
        (params, optimizer.init(params), clip, jax.random.key(4)),
        config.repeats,
    )
    records.append({"train_seconds": train.seconds, "train_error": train.error})
    print(f"train step {fmt_ms(train)} ms ({config.batch} clips)")

    labels = list(timings)
    slowest = labels[0]
    rows = []
    for label in labels:
        t = timings[label]
        per = f"{t.time / (config.videos * c.num_frames) * 1e3:.2f}" if t.ok else t.error
        ref = timings[slowest]
        speedup = f"{ref.time / t.time:.1f}×" if t.ok and ref.ok else "–"
        rows.append([label, fmt_ms(t), per, speedup])
    sample_table = markdown_table(
        ["sampler", f"ms per block ({config.videos} videos)", "ms per frame",
         f"speed-up over {slowest}"], rows,
    )  # fmt: skip
    verdicts = []
    if "DDPM-1000" in timings and "DDIM-25" in timings:
        a, b = timings["DDPM-1000"], timings["DDIM-25"]
        if a.ok and b.ok:
            ratio = a.time / b.time
            verdicts.append(
                f"- DDIM-25 per frame {ratio:.1f}× as fast as DDPM-1000 (target ≥ 30×): "
                f"**{'met' if ratio >= 30 else 'not met'}**"
            )
    n_params = sum(x.size for x in jax.tree.leaves(params))
    body = (
        f"Preset `{config.preset}` ({n_params:,} parameters): {c.frame_size}² × "
        f"{c.channels} frames, {c.num_frames_cond} past → {c.num_frames} per block. "
        f"Sampling: one block for each of {config.videos} videos at once, from fresh "
        f"noise, final denoising step included. Training: {config.batch} clips of "
        f"{c.clip_length} frames per step (loss, gradients, Adam). Median of "
        f"{config.repeats} calls after compilation.\n\n"
        f"## Sampling\n\n{sample_table}\n\n"
        f"## Training step\n\n{markdown_table(['clips', 'ms'], [[str(config.batch), fmt_ms(train)]])}"
        "\n\n## Targets\n\n"
        + ("\n".join(verdicts) or "- (DDPM-1000 or DDIM-25 not measured)")
        + "\n"
    )
    publish("mcvd_speed", "MCVD sampling and training speed", body,
            custom_name=config.name, out_dir=str(out))  # fmt: skip
    return records


if __name__ == "__main__":
    main()
