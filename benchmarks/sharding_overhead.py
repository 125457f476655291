"""What does the library's train step cost on one device? A minimal step vs eqvid's.

Times a minimal training step (`jax.value_and_grad` of the model's loss, an Adam
update, one `jax.jit` with donation: the least any trainer does) against eqvid's
own step (`eqvid.train.make_train_step` on the one-device mesh: sharding
constraints, parameter roles, the model-state and objective plumbing, donation),
same model, batch and optimiser, alternating the two so drift hits both, and
reports the ratio (target: eqvid's step costs ≤ 5% more). Prints a markdown
table and writes `sharding_overhead.md` on GPU (`sharding_overhead_<backend>.md`
elsewhere) into a new folder under `benchmarks/results/runs/` (with
`--update-reference`: into `benchmarks/results/`, replacing the committed reference).

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
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import begin_run, markdown_table, publish
from _models import MODEL_PRESETS, MODELS, config_for, library_step

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.models import VideoBatch


def minimal_step(model, optimizer):
    """The least a trainer does: `(params, opt_state, batch) → (params, opt_state,
    metrics)` in one donated `jax.jit`."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def step(params, opt_state, batch):
        def loss(p):
            return eqx.combine(p, static).loss(batch)[0]

        value, grads = jax.value_and_grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):  # optax promotes implicitly
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": value}

    params = jax.tree.map(jnp.copy, params)  # its own buffers: the step donates them
    return jax.jit(step, donate_argnums=(0, 1)), params, optimizer.init(params)


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
    """Folder for the result file (default: a new folder under benchmarks/results/runs/,
    which git ignores)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").partition("\n\n")[0],
        epilog=(__doc__ or "").partition("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", OverheadBenchConfig)
    config = config_from_args(parser.parse_args(argv), "bench", OverheadBenchConfig())
    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    records, rows = [], []
    for name in config.models:
        model_config = config_for(name, MODEL_PRESETS[config.preset], config.length)
        shape = (
            config.batch,
            config.length,
            model_config.frame_size,
            model_config.frame_size,
            model_config.channels,
        )
        batch = VideoBatch(jax.random.uniform(jax.random.key(1), shape, minval=-1.0, maxval=1.0))
        optimizer = optax.adam(1e-4)
        step, train_state, rest = library_step(
            name, MODEL_PRESETS[config.preset], batch, jax.random.key(0), optimizer
        )
        model = eqx.combine(train_state.params, rest)
        plain_step, params, opt_state = minimal_step(model, optimizer)

        def run_plain(state, plain_step=plain_step, batch=batch):
            params, opt_state, metrics = plain_step(*state, batch)
            return (params, opt_state), metrics

        def run_library(state, step=step, rest=rest, batch=batch):
            return step(state, rest, batch, None, 1)

        runners = {"plain": run_plain, "eqvid": run_library}
        states = {"plain": (params, opt_state), "eqvid": train_state}
        times = {"plain": [], "eqvid": []}
        for kind, run in runners.items():  # compile and warm up
            states[kind], metrics = run(states[kind])
            jax.block_until_ready(metrics["loss"])
        for _ in range(config.repeats):
            for kind, run in runners.items():
                start = time.perf_counter()
                states[kind], metrics = run(states[kind])
                jax.block_until_ready(metrics["loss"])
                times[kind].append(time.perf_counter() - start)
        plain_s, sharded_s = (statistics.median(times[k]) for k in ("plain", "eqvid"))
        overhead = sharded_s / plain_s - 1
        print(
            f"{name}: minimal {plain_s * 1e3:.1f} ms, eqvid {sharded_s * 1e3:.1f} ms, "
            f"overhead {100 * overhead:+.1f}%",
            flush=True,
        )
        records.append(dict(model=name, minimal_s=plain_s, eqvid_s=sharded_s, overhead=overhead))
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
        ["model", "minimal step ms", "eqvid step ms", "overhead", "≤ 5% target"], rows
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
        out_dir=str(out),
    )
    return records


if __name__ == "__main__":
    main()
