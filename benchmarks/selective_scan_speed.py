"""Which recurrence should a Mamba-style layer run? The selective SSM layers
(`eqvid.nn.Mamba`, `eqvid.nn.Mamba2`) side by side, one scan form against another.

For a batch of `--batch` sequences (SlotSSM folds its slots into this batch) of each
length in `--lengths`, it times the layer's forward pass and its forward + backward
(the gradient of a sum of the outputs with respect to every parameter and the input):

- `mamba2 linear/sequential`: Mamba2 through `eqvid.kernels.linear_scan`, `lax.scan`
  (what `impl="auto"` picks on CPU);
- `mamba2 linear/xla`: the same through the parallel associative scan;
- `mamba2 chunked/<c>`: the chunked SSD form (`eqvid.nn.mamba2_chunked_scan`, chunks
  of `c` steps from `--chunks`): matrix products within a chunk, a recurrence across;
- `mamba linear/sequential`: Mamba1 for reference (its state is `d_state` per channel,
  `expand · d_model · d_state` numbers per step);
- on GPUs, `mamba linear/auto` (Mamba1 unfused: the `(T, d_inner, d_state)` decays
  and inputs built by XLA, the recurrence by `linear_scan`'s kernel) against `mamba
  fused/mosaic` (`eqvid.kernels.selective_scan`'s fused Mosaic GPU kernel, which
  never writes them), with the fused form's speed-up and memory ratio (issue 22's
  target: ≥ 3× faster with ≤ 1/4 of the memory). Off GPUs the kernel would run in
  its interpreter, so these two are left out.

It reports the median time, the compiled program's temporary memory and each Mamba2
form's time relative to `linear/sequential`, and says which form is fastest at each
length. Prints a markdown table and writes `selective_scan_speed.md` on GPU
(`selective_scan_speed_<backend>.md` elsewhere) into a new folder under
`benchmarks/results/runs/` (with `--update-reference`: into `benchmarks/results/`).

    python benchmarks/selective_scan_speed.py
    python benchmarks/selective_scan_speed.py --lengths 256 1024 --d-model 256 --d-state 128
"""

import argparse
import dataclasses
import os
import sys
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timing, begin_run, fmt_mib, fmt_ms, markdown_table, measure, publish

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.kernels.linear_scan import ScanImpl
from eqvid.nn import Mamba, Mamba2


@dataclasses.dataclass(frozen=True)
class SelectiveScanConfig:
    """Sizes and repetitions."""

    lengths: tuple[int, ...] = (64, 256, 1024)
    """Sequence lengths (time steps)."""
    batch: int = 12
    """Sequences per call (e.g. 2 videos × 6 slots)."""
    d_model: int = 64
    """Channels in and out (SlotSSM's CLEVRER config: 256)."""
    d_state: int = 32
    """State size N (SlotSSM's Mamba2: 128)."""
    headdim: int = 16
    """Mamba2's channels per head (SlotSSM's: 64)."""
    chunks: tuple[int, ...] = (32, 64)
    """Chunk lengths of the chunked form."""
    repeats: int = 3
    """Timed calls per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: selective_scan_speed on GPU, with _<backend>
    elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def _forms(config: SelectiveScanConfig, gpu: bool) -> dict[str, eqx.Module]:
    key = jax.random.key(0)

    def mamba2(
        scan: Literal["linear", "chunked"], impl: ScanImpl = "auto", chunk: int = 32
    ) -> Mamba2:
        return Mamba2(
            config.d_model, d_state=config.d_state, headdim=config.headdim, scan=scan,
            chunk_size=chunk, scan_impl=impl, key=key,
        )  # fmt: skip

    forms: dict[str, eqx.Module] = {
        "mamba2 linear/sequential": mamba2("linear", "sequential"),
        "mamba2 linear/xla": mamba2("linear", "xla"),
    }
    for c in config.chunks:
        forms[f"mamba2 chunked/{c}"] = mamba2("chunked", chunk=c)
    mamba = lambda impl: Mamba(config.d_model, d_state=config.d_state, scan_impl=impl, key=key)
    forms["mamba linear/sequential"] = mamba("sequential")
    if gpu:
        forms["mamba linear/auto"] = mamba("auto")
        forms["mamba fused/mosaic"] = mamba("mosaic")
    return forms


def fused_summary(timings: dict, length: int) -> list[str]:
    """The fused kernel against the unfused layer at one length, per phase."""
    lines = []
    for phase in ("forward", "forward + backward"):
        fused, unfused = (
            timings[("mamba fused/mosaic", phase)],
            timings[("mamba linear/auto", phase)],
        )
        if fused.ok and unfused.ok:
            memory = fused.memory / unfused.memory if unfused.memory > 0 else float("nan")
            met = unfused.time / fused.time >= 3 and memory <= 0.25
            lines.append(
                f"- {length} steps, {phase}: fused {unfused.time / fused.time:.2f}× as fast "
                f"as unfused, {memory:.2f}× its memory (target ≥ 3× and ≤ 0.25×: "
                f"{'met' if met else 'not met'})"
            )
    return lines


def forward(layer, u):
    return jax.vmap(lambda x: layer(x)[0])(u)


def forward_backward(layer, u):
    def loss(layer, u):
        return jnp.sum(forward(layer, u))

    return eqx.filter_grad(loss)(layer, u)


def main(argv: list[str] | None = None) -> list[dict]:
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", SelectiveScanConfig)
    config = config_from_args(parser.parse_args(argv), "bench", SelectiveScanConfig())
    sizes = (*config.lengths, *config.chunks, config.batch, config.d_model, config.d_state)
    if min(sizes) < 1 or config.repeats < 1:
        parser.error("every size and --repeats must be ≥ 1")
    if (2 * config.d_model) % config.headdim:
        parser.error(f"--headdim ({config.headdim}) must divide 2 · --d-model")
    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    gpu = jax.default_backend() == "gpu"
    forms = _forms(config, gpu)
    base = "mamba2 linear/sequential"
    rows, records, fastest, fused = [], [], [], []
    for n in config.lengths:
        u = jax.random.normal(jax.random.key(n), (config.batch, n, config.d_model))
        timings: dict[tuple[str, str], Timing] = {}
        for name, layer in forms.items():
            for phase, fn in (("forward", forward), ("forward + backward", forward_backward)):
                params, static = eqx.partition(layer, eqx.is_array)

                def call(p, u, static=static, fn=fn):
                    return fn(eqx.combine(p, static), u)

                timings[(name, phase)] = t = measure(call, (params, u), config.repeats)
                records.append(
                    {"length": n, "form": name, "phase": phase, "seconds": t.seconds,
                     "temp_bytes": t.temp, "error": t.error}
                )  # fmt: skip
        for phase in ("forward", "forward + backward"):
            ref = timings[(base, phase)]
            best = None
            for name in forms:
                t = timings[(name, phase)]
                ratio = "–"
                if ref.ok and t.ok and name.startswith("mamba2"):
                    ratio = f"{t.time / ref.time:.2f}×"
                    if best is None or t.time < best[1]:
                        best = (name, t.time)
                rows.append([str(n), phase, name, fmt_ms(t), fmt_mib(t), ratio])
            if best is not None:
                fastest.append(f"- {n} steps, {phase}: **{best[0]}**")
        if gpu:
            fused += fused_summary(timings, n)
    table = markdown_table(
        ["steps", "phase", "form", "ms", "MiB", "time / mamba2 linear/sequential"], rows
    )
    body = (
        f"Batch of {config.batch} sequences, d_model {config.d_model} (d_inner "
        f"{2 * config.d_model}), d_state {config.d_state}, Mamba2 head dim {config.headdim} "
        f"({2 * config.d_model // config.headdim} heads); median of {config.repeats} calls "
        "after compilation. MiB: the compiled program's temporary memory.\n\n"
        f"{table}\n\nFastest Mamba2 form:\n\n" + "\n".join(fastest) + "\n"
    )
    if fused:
        body += (
            "\nMamba1, the fused kernel against the unfused layer:\n\n" + "\n".join(fused) + "\n"
        )
    publish(
        "selective_scan_speed",
        "Selective SSM scan forms",
        body,
        custom_name=config.name,
        out_dir=str(out),
    )
    return records


if __name__ == "__main__":
    main()
