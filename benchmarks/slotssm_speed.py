"""Does a slot's own SSM beat attention over its past? SlotSSM against the
SlotTransformer baseline, side by side in one run.

Both are `eqvid.nn.SlotSSM` stacks with the same slots, blocks, read-in and slot
self-attention; the SlotTransformer's blocks run causal self-attention over each
slot's past frames (`time_mixer="attention"`, `eqvid.nn.CausalTimeAttention`) where
SlotSSM runs Mamba2 (`time_mixer="mamba2"`, its chunked form). For each video length
`T` in `--lengths` it measures, on `--batch` videos of `--tokens` input tokens per
frame:

- **training step**: loss (mean square of the output slots), gradients of every
  parameter, an Adam update; the median time and the compiled step's temporary
  memory (what XLA allocates beyond the inputs and outputs: activations kept for the
  backward pass, attention scores);
- **streaming**: a `T`-frame video fed frame by frame through `step` (one `lax.scan`),
  the mean time per frame. SlotSSM's state is the same size at every frame; the
  SlotTransformer's is a key/value cache of `T` frames (`max_frames = T`), and each
  step attends over it.

It checks issue 20's targets at the longest length: SlotSSM trains ≥ 2× faster with
≤ ½ the memory, and its per-frame streaming cost grows ≤ 1.1× from the shortest
length ≥ 64 to the longest. Prints markdown tables and writes `slotssm_speed.md` on
GPU (`slotssm_speed_<backend>.md` elsewhere) into a new folder under
`benchmarks/results/runs/` (with `--update-reference`: into `benchmarks/results/`).

    python benchmarks/slotssm_speed.py
    python benchmarks/slotssm_speed.py --lengths 64 1024 --dim 256 --d-state 128 --headdim 64
"""

import argparse
import dataclasses
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timing, begin_run, fmt_mib, fmt_ms, markdown_table, measure, publish

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.nn import SlotSSM, TimeMixer

MODELS: dict[str, TimeMixer] = {"SlotSSM": "mamba2", "SlotTransformer": "attention"}


@dataclasses.dataclass(frozen=True)
class SlotSpeedConfig:
    """Sizes and repetitions."""

    lengths: tuple[int, ...] = (16, 64, 256, 1024)
    """Video lengths T (frames)."""
    batch: int = 2
    """Videos per training step (each has `slots` sequences over time)."""
    tokens: int = 16
    """Input tokens per frame (an encoder's patches)."""
    slots: int = 6
    """Slots per frame (the CLEVRER example's 6)."""
    dim: int = 64
    """Width of the slots and of the input tokens (the CLEVRER example's: 256)."""
    blocks: int = 4
    """Blocks (the CLEVRER example's 4)."""
    d_state: int = 32
    """SlotSSM's Mamba2 state size (the CLEVRER example's: 128)."""
    headdim: int = 16
    """SlotSSM's Mamba2 channels per head (the CLEVRER example's: 64)."""
    time_heads: int = 4
    """The SlotTransformer's attention heads over time."""
    repeats: int = 3
    """Timed calls per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: slotssm_speed on GPU, with _<backend> elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def _stack(config: SlotSpeedConfig, time_mixer: TimeMixer, max_frames: int) -> SlotSSM:
    return SlotSSM(
        num_slots=config.slots, dim=config.dim, num_blocks=config.blocks,
        time_mixer=time_mixer, d_state=config.d_state, headdim=config.headdim,
        time_heads=config.time_heads, max_frames=max_frames, key=jax.random.key(0),
    )  # fmt: skip


def _train_step(static, optimizer):
    def loss(params, tokens):
        model = eqx.combine(params, static)
        slots = jax.vmap(lambda t: model(t)[0])(tokens)
        return jnp.mean(jnp.square(slots))

    def step(params, opt_state, tokens):
        value, grads = jax.value_and_grad(loss)(params, tokens)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def _streaming(static):
    def stream(params, tokens):  # one video, frame by frame
        model = eqx.combine(params, static)
        _, slots = jax.lax.scan(lambda s, x: model.step(s, x)[:2], model.init_state(), tokens)
        return slots

    return stream


def _reference_length(lengths: tuple[int, ...]) -> int:
    """The shortest length ≥ 64 (issue 20's streaming target starts at 64), else the shortest."""
    at_least = [n for n in lengths if n >= 64]
    return min(at_least) if at_least else min(lengths)


def main(argv: list[str] | None = None) -> list[dict]:
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", SlotSpeedConfig)
    config = config_from_args(parser.parse_args(argv), "bench", SlotSpeedConfig())
    sizes = (*config.lengths, config.batch, config.tokens, config.slots, config.dim)
    if min(sizes) < 1 or min(config.blocks, config.d_state, config.repeats) < 1:
        parser.error("every size and --repeats must be ≥ 1")
    if (2 * config.dim) % config.headdim:
        parser.error(f"--headdim ({config.headdim}) must divide 2 · --dim = {2 * config.dim}")
    if config.dim % 2 or config.dim % config.time_heads:
        parser.error(f"--time-heads ({config.time_heads}) must divide --dim ({config.dim}), even")
    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    optimizer = optax.adam(1e-4)
    records: list[dict] = []
    train: dict[tuple[str, int], Timing] = {}
    stream: dict[tuple[str, int], Timing] = {}
    for n in config.lengths:
        tokens = jax.random.normal(jax.random.key(n), (config.batch, n, config.tokens, config.dim))
        for name, mixer in MODELS.items():
            params, static = eqx.partition(_stack(config, mixer, max_frames=n), eqx.is_array)
            opt_state = optimizer.init(params)
            train[name, n] = t = measure(
                _train_step(static, optimizer), (params, opt_state, tokens), config.repeats
            )
            stream[name, n] = s = measure(_streaming(static), (params, tokens[0]), config.repeats)
            records.append(
                {"length": n, "model": name, "train_seconds": t.seconds, "train_temp_bytes": t.temp,
                 "train_error": t.error, "stream_seconds_per_frame": s.seconds / n if s.ok else None,
                 "stream_error": s.error}
            )  # fmt: skip
            print(
                f"T={n:5d} {name:16s} train {fmt_ms(t)} ms, {fmt_mib(t)} MiB; stream {fmt_ms(s)} ms"
            )

    rows = []
    for n in config.lengths:
        ssm, tf = train["SlotSSM", n], train["SlotTransformer", n]
        for name in MODELS:
            t = train[name, n]
            time_ratio = mem_ratio = "–"
            if name == "SlotSSM" and ssm.ok and tf.ok:
                time_ratio = f"{ssm.time / tf.time:.2f}×"
                if ssm.memory > 0 and tf.memory > 0:
                    mem_ratio = f"{ssm.memory / tf.memory:.2f}×"
            rows.append([str(n), name, fmt_ms(t), fmt_mib(t), time_ratio, mem_ratio])
    train_table = markdown_table(
        [
            "T",
            "model",
            "train step ms",
            "MiB",
            "time / SlotTransformer",
            "memory / SlotTransformer",
        ],
        rows,
    )

    ref = _reference_length(config.lengths)
    per_frame = {
        k: Timing(seconds=v.time / k[1], temp=v.temp) if v.ok else v for k, v in stream.items()
    }
    rows = []
    for n in config.lengths:
        for name in MODELS:
            t, base = per_frame[name, n], per_frame[name, ref]
            growth = f"{t.time / base.time:.2f}×" if t.ok and base.ok else "–"
            rows.append([str(n), name, fmt_ms(t, 3), growth])
    stream_table = markdown_table(["T", "model", "ms per frame", f"per frame / T = {ref}"], rows)

    longest = max(config.lengths)
    ssm, tf = train["SlotSSM", longest], train["SlotTransformer", longest]
    verdicts = []
    if ssm.ok and tf.ok:
        speed = tf.time / ssm.time
        verdicts.append(
            f"- training at T = {longest}: SlotSSM {speed:.2f}× as fast as the "
            f"SlotTransformer (target ≥ 2×): **{'met' if speed >= 2 else 'not met'}**"
        )
        if ssm.memory > 0 and tf.memory > 0:
            mem = ssm.memory / tf.memory
            verdicts.append(
                f"- memory at T = {longest}: SlotSSM {mem:.2f}× the SlotTransformer's "
                f"(target ≤ 0.5×): **{'met' if mem <= 0.5 else 'not met'}**"
            )
    a, b = per_frame["SlotSSM", ref], per_frame["SlotSSM", longest]
    if a.ok and b.ok and longest != ref:
        growth = b.time / a.time
        verdicts.append(
            f"- SlotSSM streaming per frame from T = {ref} to {longest}: {growth:.2f}× "
            f"(target ≤ 1.1×): **{'met' if growth <= 1.1 else 'not met'}**"
        )
    body = (
        f"{config.batch} videos × {config.slots} slots × {config.blocks} blocks, width "
        f"{config.dim}, {config.tokens} input tokens per frame. SlotSSM: Mamba2 (chunked "
        f"form), d_state {config.d_state}, head dim {config.headdim}. SlotTransformer: "
        f"causal attention over time, {config.time_heads} heads, cache of T frames. "
        f"Median of {config.repeats} calls after compilation; `eqvid.kernels.attention` "
        f'`impl="auto"` ({jax.default_backend()}). MiB: the compiled training step\'s '
        "temporary memory.\n\n"
        f"## Training step\n\n{train_table}\n\n"
        f"## Streaming (frame by frame through `step`)\n\n{stream_table}\n\n"
        "## Targets\n\n" + ("\n".join(verdicts) or "- (no comparable measurements)") + "\n"
    )
    publish("slotssm_speed", "SlotSSM against the SlotTransformer", body,
            custom_name=config.name, out_dir=str(out))  # fmt: skip
    return records


if __name__ == "__main__":
    main()
