"""How fast do the models generate long videos? Rollout after a context, side by side.

Each model sees `--context` frames and generates `--horizons` more, the whole
rollout jitted (no Python loop per frame), for a batch of videos:

- `convs5`: the context through the parallel scan, then ConvS5's O(1) recurrent step;
- `convlstm`: the same with ConvLSTM's step;
- `transformer-cache`: the Transformer with a KV cache (one frame's tokens per step);
- `transformer-nocache`: the Transformer re-running the whole sequence for every
  generated frame, as the original ConvS5 code did (cost quadratic in length).

Reports the rollout time, generated frames/s (batch × horizon / time), the
compiled rollout's temporary memory and that memory per generated frame, and
ConvS5's speed relative to every other mode at each horizon, from the same run.
A mode that fails (e.g. out of memory) is recorded and the run goes on. Prints a
markdown table and writes `generation_speed.md` on GPU (`generation_speed_<backend>.md`
elsewhere) into a new folder under `benchmarks/results/runs/` (with
`--update-reference`: into `benchmarks/results/`, replacing the committed reference).

    python benchmarks/generation_speed.py                   # small models, short rollouts
    python benchmarks/generation_speed.py --preset paper    # MNIST-300, 100 → 400/800/1200 (GPU)
    python benchmarks/generation_speed.py --modes convs5 transformer-cache --horizons 64 256
"""

import argparse
import dataclasses
import os
import sys
from typing import Literal

import equinox as eqx
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timing, begin_run, markdown_table, measure, publish
from _models import MODEL_PRESETS, build

from eqvid._cli import add_config_arguments, config_from_args

MODES = ("convs5", "convlstm", "transformer-cache", "transformer-nocache")
CONTEXT = {"cpu": 8, "paper": 100}
HORIZONS = {"cpu": (32, 128, 256), "paper": (400, 800, 1200)}
BATCH = {"cpu": 2, "paper": 8}


@dataclasses.dataclass(frozen=True)
class GenerationBenchConfig:
    """Models, rollout lengths and repetitions."""

    preset: Literal["cpu", "paper"] = "cpu"
    """`cpu`: the small presets, 8 context frames → 32/128/256 (minutes on a 2-core
    CPU); `paper`: the MNIST-300 presets, batch 8, 100 context frames → 400/800/1200
    (the ConvS5 paper's protocol), for a GPU."""
    modes: tuple[str, ...] = MODES
    """What to run (convs5, convlstm, transformer-cache, transformer-nocache)."""
    context: int = 0
    """Context frames; default: 8 (cpu) or 100 (paper)."""
    horizons: tuple[int, ...] = ()
    """Frames to generate; default: 32 128 256 (cpu) or 400 800 1200 (paper)."""
    batch: int = 0
    """Videos per rollout; default: 2 (cpu) or 8 (paper)."""
    model_preset: str = ""
    """Override the model preset (small, mnist-300, mnist-600)."""
    repeats: int = 3
    """Timed rollouts per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: generation_speed on GPU, generation_speed_<backend>
    elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/,
    which git ignores)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def rollout_timing(mode, preset, context_len, horizon, batch, repeats) -> Timing:
    model_name = mode.split("-")[0]
    params, static, config = build(model_name, preset, context_len + horizon, jax.random.key(0))
    kwargs = {"cache": mode == "transformer-cache"} if model_name == "transformer" else {}
    shape = (batch, context_len, config.frame_size, config.frame_size, config.channels)
    context = jax.random.uniform(jax.random.key(1), shape, minval=-1.0, maxval=1.0)

    def rollout(params, context):
        model = eqx.combine(params, static)
        keys = jax.random.split(jax.random.key(2), context.shape[0])
        return jax.vmap(lambda c, k: model.generate(c, horizon, key=k, **kwargs))(context, keys)

    return measure(rollout, (params, context), repeats)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").partition("\n\n")[0],
        epilog=(__doc__ or "").partition("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", GenerationBenchConfig)
    config = config_from_args(parser.parse_args(argv), "bench", GenerationBenchConfig())
    for mode in config.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    context_len = config.context or CONTEXT[config.preset]
    horizons = config.horizons or HORIZONS[config.preset]
    if context_len < 1 or min(horizons) < 1:
        parser.error("--context and --horizons must be ≥ 1")
    batch = config.batch or BATCH[config.preset]
    model_preset = config.model_preset or MODEL_PRESETS[config.preset]

    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    records, timings = [], {}
    for horizon in horizons:
        for mode in config.modes:
            t = rollout_timing(mode, model_preset, context_len, horizon, batch, config.repeats)
            timings[mode, horizon] = t
            fps = batch * horizon / t.time if t.ok else None
            records.append(
                dict(
                    mode=mode,
                    context=context_len,
                    horizon=horizon,
                    batch=batch,
                    seconds=t.seconds,
                    frames_per_s=fps,
                    temp_bytes=t.temp,
                    error=t.error,
                )
            )
            print(
                f"{mode} {context_len}→{horizon}: "
                + (
                    f"{t.time:.3f} s, {batch * horizon / t.time:.1f} frames/s, "
                    f"temp {t.memory / 2**20:.1f} MiB"
                    if t.ok
                    else t.error
                ),
                flush=True,
            )

    others = [m for m in MODES if m != "convs5" and m in config.modes]
    rows = []
    for horizon in horizons:
        for mode in config.modes:
            t = timings[mode, horizon]
            row = [f"{context_len}→{horizon}", mode]
            if t.ok:
                known = t.memory >= 0
                row += [
                    f"{t.time:.3f}",
                    f"{batch * horizon / t.time:.1f}",
                    f"{t.memory / 2**20:.1f}" if known else "–",
                    f"{t.memory / (batch * horizon) / 2**10:.0f}" if known else "–",
                ]
            else:
                row += [t.error, "–", "–", "–"]
            for other in others:
                mine, theirs = timings.get(("convs5", horizon)), timings[other, horizon]
                ok = mode == "convs5" and mine is not None and mine.ok and theirs.ok
                row.append(f"{theirs.time / mine.time:.1f}×" if ok and mine is not None else "–")
            rows.append(row)
    table = markdown_table(
        ["context→generated", "mode", "seconds", "frames/s", "temp MiB", "temp KiB / frame"]
        + [f"ConvS5 vs {o}" for o in others],
        rows,
    )
    body = (
        f"Model preset `{model_preset}`, batch {batch}, float32; median of {config.repeats} "
        "jitted rollouts after compilation. frames/s counts generated frames (batch × "
        "horizon / time). `temp`: the compiled rollout's temporary memory (parameters, "
        "context and output excluded); per frame: divided by batch × horizon. `ConvS5 vs "
        "X`: X's time over ConvS5's (> 1: ConvS5 is faster).\n\n"
        f"{table}\n"
    )
    publish(
        "generation_speed",
        "generation speed",
        body,
        custom_name=config.name,
        out_dir=str(out),
    )
    return records


if __name__ == "__main__":
    main()
