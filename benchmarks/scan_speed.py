"""How fast is `eqvid.kernels.linear_scan`? Every implementation side by side.

Runs the diagonal complex recurrence of a ConvS5 layer (`x_t = Λ̄ ⊙ x_{t-1} +
b_t`, `Λ̄` one complex number per state channel, shared over time) on
`(time, batch, height, width, state)` inputs at sizes from the paper's layers,
forward and forward+backward, for the Pallas kernel (GPU only), the associative
scan (`"xla"`) and `lax.scan` (`"sequential"`). For each it reports the median
time, the effective bandwidth on the minimum bytes (read `b`, write `x`), that
bandwidth as a share of this device's measured copy bandwidth (same run), the
speed-up over both references, and the compiled program's temporary memory.
Prints a markdown table and writes `scan_speed.md` on GPU (`scan_speed_<backend>.md`
elsewhere) into a new folder under `benchmarks/results/runs/` (with
`--update-reference`: into `benchmarks/results/`, replacing the committed reference).

    python benchmarks/scan_speed.py                      # sizes for this device
    python benchmarks/scan_speed.py --sizes mnist-300 long --repeats 20
"""

import argparse
import dataclasses
import os
import sys
from typing import Literal

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import begin_run, markdown_table, publish, time_call

from eqvid._cli import add_config_arguments, config_from_args

# `eqvid.kernels` is the kernels/ folder ([tool.setuptools.package-dir]); Python finds it
# through setuptools' editable-install finder, which pyright cannot follow.
from eqvid.kernels import linear_scan, linear_scan_split, pallas_backends

# name: (T, batch, height=width, P) — the layers of the papers' models.
SIZES = {
    "cpu-small": (256, 2, 8, 32),
    "mnist-300": (300, 8, 16, 128),  # ConvS5 MNIST-300 layer, train length 300
    "teco": (300, 16, 8, 512),  # TECO-ConvS5 layer (DMLab)
    "long": (1200, 8, 16, 64),  # MNIST-600 layer at the 1200-frame evaluation length
    "few-channels": (4096, 1, 8, 32),  # 2k channels, long T: the chunked path
}
GPU_SIZES = ("mnist-300", "teco", "long", "few-channels", "cpu-small")
CPU_SIZES = ("cpu-small",)
# Benchmark name -> `linear_scan` implementation; "pallas-split" is `linear_scan_split`.
SCAN_IMPLS: dict[str, Literal["pallas", "mosaic", "triton", "xla", "sequential"]] = {
    "pallas": "pallas",
    "mosaic": "mosaic",
    "triton": "triton",
    "xla": "xla",
    "sequential": "sequential",
}
IMPLS = ("pallas-split", *SCAN_IMPLS)


@dataclasses.dataclass(frozen=True)
class ScanBenchConfig:
    """Problem sizes and repetitions."""

    sizes: tuple[str, ...] = ()
    """Named sizes to run (cpu-small, mnist-300, teco, long, few-channels); default:
    all on GPU, cpu-small elsewhere."""
    impls: tuple[str, ...] = ()
    """Implementations (pallas-split, pallas, mosaic, triton, xla, sequential);
    default on GPU: the split form, both kernels (Mosaic GPU and Triton, those this
    machine can run) side by side, and both references. `pallas-split` is the ConvS5
    layer's path (the kernel `impl="pallas"` picks): states in split layout [Re |
    Im], no complex arrays around the kernel."""
    repeats: int = 10
    """Timed calls per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: scan_speed on GPU, scan_speed_<backend> elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/,
    which git ignores)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def copy_bandwidth(nbytes: int, repeats: int) -> float:
    """Device-to-device bandwidth of an elementwise pass over `nbytes` (read + write)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda x: -x)
    return 2 * x.nbytes / time_call(lambda: f(x), repeats=repeats)


def temp_bytes(fn, *args) -> int:
    """Temporary (intermediate) memory of the compiled program, in bytes."""
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(getattr(analysis, "temp_size_in_bytes", 0)) if analysis is not None else -1


def scan_functions(impl: str):
    """`(forward, loss)` of one implementation: `forward(a, b)` is the scan, `loss(a, b)`
    a scalar of it to differentiate."""
    if impl == "pallas-split":

        def split_forward(a, b):
            return linear_scan_split(a, b, impl="pallas")

        def split_loss(a, b):
            return jnp.sum(linear_scan_split(a, b, impl="pallas"))

        return split_forward, split_loss
    scan_impl = SCAN_IMPLS[impl]

    def forward(a, b):
        return linear_scan(a, b, impl=scan_impl)

    def loss(a, b):
        return jnp.sum(jnp.real(linear_scan(a, b, impl=scan_impl)))

    return forward, loss


def main(argv: list[str] | None = None) -> list[dict]:
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", ScanBenchConfig)
    config = config_from_args(parser.parse_args(argv), "bench", ScanBenchConfig())
    gpu = jax.default_backend() == "gpu"
    sizes = config.sizes or (GPU_SIZES if gpu else CPU_SIZES)
    kernels = [k for k, why in pallas_backends().items() if why is None]
    impls = config.impls or (
        ("pallas-split", *kernels, "xla", "sequential") if gpu else ("xla", "sequential")
    )
    for name in sizes:
        if name not in SIZES:
            parser.error(f"unknown size {name!r}; choose from {sorted(SIZES)}")
    for impl in impls:
        if impl not in IMPLS:
            parser.error(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")

    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    rows, notes, records = [], [], []
    for name in sizes:
        T, batch, hw, P = SIZES[name]
        shape = (T, batch, hw, hw, P)
        k1, k2, k3 = jax.random.split(jax.random.key(T * P + batch), 3)
        magnitude = jax.random.uniform(k1, (P,), minval=0.9, maxval=0.999)
        phase = jax.random.uniform(k2, (P,), maxval=3.0)
        a = magnitude.astype(jnp.complex64) * jnp.exp(1j * phase.astype(jnp.complex64))
        b = jax.lax.complex(*jax.random.normal(k3, (2,) + shape))
        min_bytes = 2 * b.nbytes  # read b, write x
        bandwidth = copy_bandwidth(b.nbytes, config.repeats)
        notes.append(
            f"{name}: copy bandwidth {bandwidth / 1e9:.0f} GB/s on {b.nbytes / 2**20:.0f} MiB"
        )
        timings = {}
        b_split = jnp.concatenate([b.real, b.imag], axis=-1)
        for impl in impls:
            fwd, loss = scan_functions(impl)
            operand = b_split if impl == "pallas-split" else b
            grad = jax.grad(loss, argnums=(0, 1))
            fwd_j, grad_j = jax.jit(fwd), jax.jit(grad)
            timings[impl] = (
                time_call(lambda f=fwd_j, x=a, y=operand: f(x, y), repeats=config.repeats),
                time_call(lambda f=grad_j, x=a, y=operand: f(x, y), repeats=config.repeats),
                temp_bytes(fwd, a, operand),
            )
            print(
                f"{name} {impl}: forward {timings[impl][0] * 1e3:.3f} ms, "
                f"fwd+bwd {timings[impl][1] * 1e3:.3f} ms",
                flush=True,
            )
        for impl in impls:
            f, g, temp = timings[impl]
            gbs = min_bytes / f
            row = [
                name,
                f"{T}×{batch}×{hw}²×{P}",
                impl,
                f"{f * 1e3:.3f}",
                f"{gbs / 1e9:.0f}",
                f"{100 * gbs / bandwidth:.0f}%",
                f"{g * 1e3:.3f}",
            ]
            for ref in ("xla", "sequential"):
                row.append(f"{timings[ref][1] / g:.2f}×" if ref in timings else "–")
            row.append(f"{temp / b.nbytes:.2f}")
            rows.append(row)
            records.append(
                dict(size=name, length=T, impl=impl, forward_s=f, fwd_bwd_s=g, temp_bytes=temp)
            )

    table = markdown_table(
        [
            "size",
            "T×B×HW×P",
            "impl",
            "fwd ms",
            "fwd GB/s",
            "of copy BW",
            "fwd+bwd ms",
            "fwd+bwd speed-up vs xla",
            "vs sequential",
            "fwd temp / output",
        ],
        rows,
    )
    body = (
        "Complex64 scan, time-invariant Λ̄ (the ConvS5 case); median of "
        f"{config.repeats} calls after compilation. GB/s counts the minimum bytes "
        "(read b, write x). `fwd temp / output` is the compiled forward program's "
        "temporary memory relative to the output's size (0: no intermediates).\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + f"\n\n{table}\n"
    )
    if not gpu:
        body += (
            "\nThe Pallas kernel is GPU-only (on CPU it runs in interpret mode, "
            "for testing); run this script on a GPU for its numbers.\n"
        )
    publish("scan_speed", "linear_scan speed", body, custom_name=config.name, out_dir=str(out))
    return records


if __name__ == "__main__":
    main()
