"""How fast do ConvS5, ConvLSTM and the Transformer train? One Adam step, side by side.

Times eqvid's own training step (`eqvid.train.make_train_step` on the one-device
mesh: teacher-forced loss on a batch of videos, gradients, Adam update; parameters
and optimiser state donated — what `train()` runs) for each model at the same
preset width over a range of sequence lengths, and reports the step time,
frames/s (batch × length per step), the compiled step's temporary memory, and
the ratios ConvS5/ConvLSTM and ConvS5/Transformer in frames/s from the same run.
ConvS5 runs its scan with `impl="auto"` (the Pallas kernel on GPU), the
Transformer its attention with `impl="auto"`, ConvLSTM its `lax.scan` over time.
A model that fails at a size (e.g. out of memory) is recorded and the run goes on.
Prints a markdown table and writes `train_throughput.md` on GPU
(`train_throughput_<backend>.md` elsewhere) into a new folder under
`benchmarks/results/runs/` (with `--update-reference`: into `benchmarks/results/`,
replacing the committed reference).

    python benchmarks/train_throughput.py                    # small models, CPU lengths
    python benchmarks/train_throughput.py --preset paper     # MNIST-300 sizes, T up to 600 (GPU)
    python benchmarks/train_throughput.py --lengths 16 64 --models convs5 convlstm
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Literal

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timing, begin_run, markdown_table, publish, short_reason, temp_bytes
from _models import MODEL_PRESETS, MODELS, config_for, library_step, parameter_count

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.models import VideoBatch

LENGTHS = {"cpu": (8, 16, 32), "paper": (16, 32, 64, 128, 300, 600)}
BATCH = {"cpu": 2, "paper": 8}


@dataclasses.dataclass(frozen=True)
class TrainBenchConfig:
    """Models, sizes and repetitions."""

    preset: Literal["cpu", "paper"] = "cpu"
    """`cpu`: the small presets at short lengths (minutes on a 2-core CPU); `paper`:
    the MNIST-300 presets (64×64 frames, batch 8) at T = 16 … 600, for a GPU."""
    models: tuple[str, ...] = MODELS
    """Models to run (convs5, convlstm, transformer)."""
    lengths: tuple[int, ...] = ()
    """Sequence lengths (frames per video); default: 8 16 32 (cpu) or 16 32 64 128
    300 600 (paper)."""
    batch: int = 0
    """Videos per step; default: 2 (cpu) or 8 (paper)."""
    model_preset: str = ""
    """Override the model preset (small, mnist-300, mnist-600)."""
    repeats: int = 5
    """Timed steps per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: train_throughput on GPU, train_throughput_<backend>
    elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/,
    which git ignores)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def time_steps(name, preset, length, batch, repeats) -> tuple[Timing, int]:
    """Compile eqvid's train step (`eqvid.train.make_train_step` on the one-device
    mesh, Adam, parameters and optimiser state donated: what `train()` runs), run
    `repeats` steps (after one warm-up), and return the median step time with the
    step's temporary memory."""
    config = config_for(name, preset, length)
    shape = (batch, length, config.frame_size, config.frame_size, config.channels)
    videos = jax.random.uniform(jax.random.key(1), shape, minval=-1.0, maxval=1.0)
    data = VideoBatch(videos)
    step, train_state, rest = library_step(name, preset, data, jax.random.key(length))
    count = parameter_count(train_state.params)
    try:
        temp = temp_bytes(step.lower(train_state, rest, data, None, 1).compile())
        train_state, metrics = step(train_state, rest, data, None, 1)  # warm-up
        jax.block_until_ready(metrics["loss"])
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            train_state, metrics = step(train_state, rest, data, None, i + 2)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - start)
    except Exception as error:
        return Timing(error=short_reason(error)), count
    return Timing(seconds=statistics.median(times), temp=temp), count


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").partition("\n\n")[0],
        epilog=(__doc__ or "").partition("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", TrainBenchConfig)
    config = config_from_args(parser.parse_args(argv), "bench", TrainBenchConfig())
    for name in config.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    lengths = config.lengths or LENGTHS[config.preset]
    if min(lengths) < 2:
        parser.error(f"--lengths must be ≥ 2 (teacher forcing), got {' '.join(map(str, lengths))}")
    batch = config.batch or BATCH[config.preset]
    model_preset = config.model_preset or MODEL_PRESETS[config.preset]

    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    records, timings, counts = [], {}, {}
    for length in lengths:
        for name in config.models:
            timing, count = time_steps(name, model_preset, length, batch, config.repeats)
            timings[name, length], counts[name] = timing, count
            fps = batch * length / timing.time if timing.ok else None
            records.append(
                dict(
                    model=name,
                    length=length,
                    batch=batch,
                    step_s=timing.seconds,
                    frames_per_s=fps,
                    temp_bytes=timing.temp,
                    error=timing.error,
                    params=count,
                )
            )
            print(
                f"{name} T={length}: "
                + (
                    f"{timing.time * 1e3:.1f} ms/step, {batch * length / timing.time:.0f} "
                    f"frames/s, temp {timing.memory / 2**20:.0f} MiB"
                    if timing.ok
                    else timing.error
                ),
                flush=True,
            )

    def speedup(other, length):
        mine, theirs = timings.get(("convs5", length)), timings.get((other, length))
        if mine is None or theirs is None or not (mine.ok and theirs.ok):
            return "–"
        return f"{theirs.seconds / mine.seconds:.2f}×"

    rows = []
    for length in lengths:
        for name in config.models:
            t = timings[name, length]
            row = [str(length), name, f"{counts[name] / 1e6:.2f}M"]
            if t.ok:
                row += [
                    f"{t.seconds * 1e3:.1f}",
                    f"{batch * length / t.seconds:.0f}",
                    f"{t.temp / 2**20:.0f}" if t.temp is not None and t.temp >= 0 else "–",
                ]
            else:
                row += [t.error, "–", "–"]
            if name == "convs5":
                row += [speedup("convlstm", length), speedup("transformer", length)]
            else:
                row += ["–", "–"]
            rows.append(row)
    table = markdown_table(
        [
            "T",
            "model",
            "params",
            "ms/step",
            "frames/s",
            "step temp MiB",
            "ConvS5 vs ConvLSTM",
            "ConvS5 vs Transformer",
        ],
        rows,
    )
    body = (
        f"Model preset `{model_preset}`, batch {batch}, float32, Adam; median of "
        f"{config.repeats} steps after compilation and one warm-up step. frames/s = "
        "batch × T / step time. `ConvS5 vs X`: X's step time over ConvS5's at the same T "
        "(> 1: ConvS5 trains faster). `step temp MiB`: the compiled step's temporary "
        f"memory (parameters, optimiser state and batch excluded).\n\n{table}\n"
    )
    publish(
        "train_throughput",
        "training throughput",
        body,
        custom_name=config.name,
        out_dir=str(out),
    )
    return records


if __name__ == "__main__":
    main()
