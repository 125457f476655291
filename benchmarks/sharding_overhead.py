"""What does the sharding machinery cost on one device? Plain step vs sharded step.

Times the training step of `eqvid.train.make_train_step` (a plain `eqx.filter_jit`)
against `eqvid.train.make_sharded_train_step` on a one-device mesh (sharding
constraints, donation, the strided micro-batch layout when `--accumulate` > 1),
same model, batch and optimiser, alternating the two so drift hits both, and
reports the ratio (target: the sharded step costs ≤ 5% more). Prints a markdown
table and writes `benchmarks/results/sharding_overhead.md` on GPU
(`sharding_overhead_<backend>.md` elsewhere).

    python benchmarks/sharding_overhead.py
    python benchmarks/sharding_overhead.py --models convs5 transformer --length 32 --batch 8
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Literal

import equinox as eqx
import jax
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import markdown_table, publish
from _models import MODEL_PRESETS, MODELS, config_for

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.models import make_model
from eqvid.train import (
    MeshConfig,
    make_mesh,
    make_sharded_train_step,
    make_train_step,
    shard_state,
)


@dataclasses.dataclass(frozen=True)
class OverheadBenchConfig:
    """Models, sizes and repetitions."""

    preset: Literal["cpu", "paper"] = "cpu"
    """Model presets: `cpu` (small) or `paper` (MNIST-300)."""
    models: tuple[str, ...] = MODELS
    """Models to run (convs5, convlstm, transformer)."""
    length: int = 16
    """Frames per video."""
    batch: int = 2
    """Videos per step."""
    repeats: int = 10
    """Timed steps of each kind (the median is reported)."""
    name: str = ""
    """Result file name (default: sharding_overhead on GPU, sharding_overhead_<backend>
    elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: benchmarks/results)."""


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", OverheadBenchConfig)
    config = config_from_args(parser.parse_args(argv), "bench", OverheadBenchConfig())
    mesh = make_mesh(MeshConfig(devices=1))
    records, rows = [], []
    for name in config.models:
        model_config = config_for(name, MODEL_PRESETS[config.preset], config.length)
        model = make_model(model_config, key=jax.random.key(0))
        shape = (
            config.batch,
            config.length,
            model_config.frame_size,
            model_config.frame_size,
            model_config.channels,
        )
        videos = jax.random.uniform(jax.random.key(1), shape, minval=-1.0, maxval=1.0)
        optimizer = optax.adam(1e-4)
        init = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        plain = (make_train_step(optimizer), model, init)
        sharded = (make_sharded_train_step(optimizer, mesh), *shard_state(model, init, mesh))
        states = {"plain": plain, "sharded": sharded}
        times = {"plain": [], "sharded": []}
        for kind in states:  # compile and warm up
            step, m, o = states[kind]
            m, o, loss, _ = step(m, o, videos)
            jax.block_until_ready(loss)
            states[kind] = (step, m, o)
        for _ in range(config.repeats):
            for kind in states:
                step, m, o = states[kind]
                start = time.perf_counter()
                m, o, loss, _ = step(m, o, videos)
                jax.block_until_ready(loss)
                times[kind].append(time.perf_counter() - start)
                states[kind] = (step, m, o)
        plain_s, sharded_s = (statistics.median(times[k]) for k in ("plain", "sharded"))
        overhead = sharded_s / plain_s - 1
        print(
            f"{name}: plain {plain_s * 1e3:.1f} ms, sharded {sharded_s * 1e3:.1f} ms, "
            f"overhead {100 * overhead:+.1f}%",
            flush=True,
        )
        records.append(dict(model=name, plain_s=plain_s, sharded_s=sharded_s, overhead=overhead))
        rows.append(
            [
                name,
                f"{plain_s * 1e3:.1f}",
                f"{sharded_s * 1e3:.1f}",
                f"{100 * overhead:+.1f}%",
                "pass" if overhead <= 0.05 else "miss",
            ]
        )
    table = markdown_table(
        ["model", "plain ms/step", "sharded ms/step", "overhead", "≤ 5% target"], rows
    )
    body = (
        f"Model preset `{MODEL_PRESETS[config.preset]}`, batch {config.batch}, T = "
        f"{config.length}, float32, Adam, one device; median of {config.repeats} steps of "
        "each kind, interleaved.\n\n" + table + "\n"
    )
    publish(
        "sharding_overhead",
        "sharding overhead on one device",
        body,
        custom_name=config.name,
        out_dir=config.out_dir,
    )
    return records


if __name__ == "__main__":
    main()
