"""How fast do the models generate long videos? Rollout after a context, side by side.

Each model sees `--context` frames and generates `--horizons` more, the whole
rollout jitted (no Python loop per frame), for a batch of videos:

- `convs5`: the context through the parallel scan, then ConvS5's O(1) recurrent step;
- `convlstm`: the same with ConvLSTM's step;
- `transformer-cache`: the Transformer with a KV cache (one frame's tokens per step);
- `transformer-nocache`: the Transformer re-running the whole sequence for every
  generated frame, as the original ConvS5 code did (cost quadratic in length).

and, on VQ codes (TECO's DMLab protocol: `--teco-context` 36 frames, videos of
`--teco-lengths` 300 and 1000 frames, a temporal window of `--teco-window` 300 frames
that slides past its end as TECO's sampler does; codes only, the tokenizer's decode is
the same per frame for every mode and left out):

- `teco-nocache`: TECO's sampler: the temporal transformer re-runs its whole window for
  every frame, re-reading the last 299 frames once the video fills the window;
- `teco-cache`: the same frames with a key/value cache (one frame's tokens per step
  inside the window; past it, the same re-read of the window for every frame);
- `teco-cache-stride`: the key/value cache with the window re-read every
  `--slide-stride` frames (75 by default: each re-read serves 75 frames, which see 225
  to 299 frames of history instead of 299; not TECO's frames);
- `teco-convs5`: TECO-ConvS5, the context through the parallel scan, then the O(1)
  recurrent step, no window.

Reports the rollout time, generated frames/s (batch × horizon / time), the
compiled rollout's temporary memory and that memory per generated frame, and
ConvS5's speed relative to every other mode at each horizon, from the same run; for
the TECO modes, the time per generated frame and its ratio to the shortest video's.
A mode that fails (e.g. out of memory) is recorded and the run goes on. Prints a
markdown table and writes `generation_speed.md` on GPU (`generation_speed_<backend>.md`
elsewhere) into a new folder under `benchmarks/results/runs/` (with
`--update-reference`: into `benchmarks/results/`, replacing the committed reference).

    python benchmarks/generation_speed.py                   # small models, short rollouts
    python benchmarks/generation_speed.py --preset paper    # MNIST-300, 100 → 400/800/1200 (GPU)
    python benchmarks/generation_speed.py --modes convs5 transformer-cache --horizons 64 256
    python benchmarks/generation_speed.py --modes teco-cache teco-convs5 --teco-lengths 300 1000
"""

import argparse
import dataclasses
import functools
import os
import sys
from typing import Literal

import equinox as eqx
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timing, begin_run, markdown_table, measure, publish
from _models import MODEL_PRESETS, build

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.models import TECO, AbstractVideoTokenizer, make_model, model_spec

PIXEL_MODES = ("convs5", "convlstm", "transformer-cache", "transformer-nocache")
TECO_MODES = ("teco-nocache", "teco-cache", "teco-cache-stride", "teco-convs5")
MODES = PIXEL_MODES + TECO_MODES
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
    """What to run (convs5, convlstm, transformer-cache, transformer-nocache,
    teco-nocache, teco-cache, teco-cache-stride, teco-convs5)."""
    context: int = 0
    """Context frames; default: 8 (cpu) or 100 (paper)."""
    horizons: tuple[int, ...] = ()
    """Frames to generate; default: 32 128 256 (cpu) or 400 800 1200 (paper)."""
    batch: int = 0
    """Videos per rollout; default: 2 (cpu) or 8 (paper)."""
    model_preset: str = ""
    """Override the model preset (small, mnist-300, mnist-600)."""
    teco_context: int = 36
    """Context frames of the TECO modes (TECO's DMLab protocol: 36)."""
    teco_lengths: tuple[int, ...] = (300, 1000)
    """Video lengths (context + generated) of the TECO modes."""
    teco_window: int = 300
    """The TECO transformer's window (`max_frames`, DMLab's 300)."""
    slide_stride: int = 75
    """Frames per re-read of the window in `teco-cache-stride`."""
    teco_preset: str = ""
    """TECO's model preset; default: small (cpu) or dmlab (paper)."""
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


TECO_PRESETS = {"cpu": "small", "paper": "dmlab"}
# The tokenizer each TECO preset reads codes of (random weights: only shapes matter).
TOKENIZER_PRESETS = {"small": "small", "dmlab": "teco-dmlab"}


@functools.cache
def random_tokenizer(preset: str):
    """The tokenizer a TECO preset reads codes of, with random weights (built once)."""
    config = dataclasses.replace(
        model_spec("vqgan2d").preset(TOKENIZER_PRESETS.get(preset, "small")), perceptual_weight=0.0
    )
    model, state = eqx.filter_jit(lambda: make_model(config, key=jax.random.key(3)))()
    tokenizer = model.with_state(state)
    assert isinstance(tokenizer, AbstractVideoTokenizer)
    return tokenizer, config


@functools.cache
def random_teco(family: str, preset: str, window: int, stride: int | None):
    """A TECO (`family` teco or teco-convs5) with random weights (built once)."""
    tokenizer, tokenizer_config = random_tokenizer(preset)
    config = dataclasses.replace(
        model_spec(family).preset(preset),
        frame_size=tokenizer_config.frame_size,
        channels=tokenizer_config.channels,
        max_frames=window,
        slide_stride=stride or 1,
    )
    model = eqx.filter_jit(lambda tok: TECO(config, key=jax.random.key(0), tokenizer=tok))(
        tokenizer
    )
    return model, tokenizer, config


def teco_stride(mode: str, stride: int) -> int | None:
    """The window's stride in a TECO mode (None: TECO-ConvS5 has no window)."""
    return None if mode == "teco-convs5" else stride if mode == "teco-cache-stride" else 1


def teco_timing(mode, preset, window, stride, context_len, horizon, batch, repeats) -> Timing:
    """A TECO (or TECO-ConvS5) code rollout: `context_len` frames of random codes, then
    `horizon` generated frames."""
    family = "teco-convs5" if mode == "teco-convs5" else "teco"
    model, tokenizer, config = random_teco(family, preset, window, teco_stride(mode, stride))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    _, h, w = tokenizer.code_shape(1, config.frame_size, config.frame_size)
    codes = jax.random.randint(jax.random.key(1), (batch, context_len, h, w), 0, tokenizer.n_codes)
    actions = jax.random.randint(
        jax.random.key(4), (batch, context_len + horizon), 0, config.action_dim
    )
    cache = mode != "teco-nocache"

    def rollout(params, codes, actions):
        model = eqx.combine(params, static)
        keys = jax.random.split(jax.random.key(2), codes.shape[0])
        return jax.vmap(
            lambda c, a, k: model.generate_codes(c, horizon, key=k, actions=a, cache=cache)
        )(codes, actions, keys)

    return measure(rollout, (params, codes, actions), repeats)


def teco_section(config: GenerationBenchConfig, modes: list[str], batch: int):
    """Time the TECO modes at every video length: their records and a markdown section
    (empty without TECO modes)."""
    if not modes:
        return [], ""
    preset = config.teco_preset or TECO_PRESETS[config.preset]
    n_ctx, lengths = config.teco_context, sorted(config.teco_lengths)
    records, timings = [], {}
    for length in lengths:
        for mode in modes:
            horizon = length - n_ctx
            t = teco_timing(
                mode,
                preset,
                config.teco_window,
                config.slide_stride,
                n_ctx,
                horizon,
                batch,
                config.repeats,
            )
            timings[mode, length] = t
            per_frame = t.time / horizon if t.ok else None
            records.append(
                dict(
                    mode=mode,
                    context=n_ctx,
                    horizon=horizon,
                    batch=batch,
                    seconds=t.seconds,
                    seconds_per_frame=per_frame,
                    slide_stride=teco_stride(mode, config.slide_stride),
                    temp_bytes=t.temp,
                    error=t.error,
                )
            )
            print(
                f"{mode} {n_ctx}→{length}: "
                + (f"{t.time:.3f} s, {1e3 * t.time / horizon:.2f} ms/frame" if t.ok else t.error),
                flush=True,
            )
    rows = []
    for length in lengths:
        for mode in modes:
            t, first = timings[mode, length], timings[mode, lengths[0]]
            horizon = length - n_ctx
            if not t.ok:
                rows.append([f"{n_ctx}→{length}", mode, t.error, "–", "–", "–"])
                continue
            ratio = (
                f"{(t.time / horizon) / (first.time / (lengths[0] - n_ctx)):.2f}×"
                if first.ok
                else "–"
            )
            rows.append(
                [
                    f"{n_ctx}→{length}",
                    mode,
                    f"{t.time:.3f}",
                    f"{1e3 * t.time / horizon:.2f}",
                    ratio,
                    f"{t.memory / 2**20:.1f}" if t.memory >= 0 else "–",
                ]
            )
    table = markdown_table(
        [
            "context→video length",
            "mode",
            "seconds",
            "ms / generated frame",
            f"per frame vs {lengths[0]} frames",
            "temp MiB",
        ],
        rows,
    )
    text = (
        f"## TECO on VQ codes\n\nTECO preset `{preset}` (random weights; the tokenizer's "
        f"code grid, its decode left out), batch {batch}, float32, window (`max_frames`) "
        f"{config.teco_window}, median of {config.repeats} jitted rollouts of the codes "
        "after compilation. `per frame vs …`: time per generated frame over the same "
        "mode's at the shortest video (1.00×: the cost per frame does not grow with the "
        "horizon). Past the window, `teco-nocache` and `teco-cache` re-read the last "
        f"{config.teco_window - 1} frames for every frame (TECO's sampler); "
        f"`teco-cache-stride` re-reads the last {config.teco_window - config.slide_stride} "
        f"frames every {config.slide_stride} frames; `teco-convs5` has no window.\n\n"
        f"{table}\n"
    )
    return records, text


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

    teco_modes = [m for m in config.modes if m in TECO_MODES]
    pixel_modes = [m for m in config.modes if m in PIXEL_MODES]
    if teco_modes and not 1 <= config.teco_context < min(config.teco_lengths):
        parser.error("--teco-context must be ≥ 1 and shorter than every --teco-lengths")
    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    records, timings = [], {}
    for horizon in horizons if pixel_modes else ():
        for mode in pixel_modes:
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

    teco_records, teco_table = teco_section(config, teco_modes, batch)
    records += teco_records
    others = [m for m in PIXEL_MODES if m != "convs5" and m in pixel_modes]
    rows = []
    for horizon in horizons if pixel_modes else ():
        for mode in pixel_modes:
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
        f"Model preset `{model_preset}`, batch {batch}, float32; median of "
        f"{config.repeats} jitted rollouts after compilation. frames/s counts generated "
        "frames (batch × horizon / time). `temp`: the compiled rollout's temporary "
        "memory (parameters, context and output excluded); per frame: divided by batch "
        "× horizon. `ConvS5 vs X`: X's time over ConvS5's (> 1: ConvS5 is faster).\n\n"
        f"{table}\n"
        if pixel_modes
        else ""
    ) + teco_table
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
