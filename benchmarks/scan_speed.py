"""How fast is `eqvid.kernels.linear_scan`? Every implementation side by side.

Runs the diagonal complex recurrence of a ConvS5 layer (`x_t = Λ̄ ⊙ x_{t-1} +
b_t` with `Λ̄` per state channel) over `(time, batch, height, width, state)`
for several sequence lengths, forward and forward+backward, and reports the
median time of each implementation and its speed relative to the sequential
`lax.scan`. Prints a markdown table and writes
`benchmarks/results/scan_speed_<backend>.md`.

    python benchmarks/scan_speed.py
    python benchmarks/scan_speed.py --lengths 256 1024 4096 --batch 8 --state 128
"""

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _common import markdown_table, time_call, write_result  # noqa: E402

from eqvid._cli import add_config_arguments, config_from_args  # noqa: E402
from eqvid.kernels import linear_scan  # noqa: E402

IMPLS = ("sequential", "associative")


@dataclasses.dataclass(frozen=True)
class ScanBenchConfig:
    """Problem sizes and repetitions."""

    lengths: tuple[int, ...] = (64, 256, 1024)
    """Sequence lengths T to time."""
    batch: int = 2
    """Videos per batch."""
    latent: int = 8
    """Height and width of the latent grid."""
    state: int = 32
    """Complex state channels P."""
    repeats: int = 5
    """Timed calls per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: scan_speed_<backend>)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", ScanBenchConfig)
    config = config_from_args(parser.parse_args(argv), "bench", ScanBenchConfig())

    key = jax.random.key(0)
    rows = []
    for T in config.lengths:
        shape = (T, config.batch, config.latent, config.latent, config.state)
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, T), 3)
        mag = jax.random.uniform(k1, (config.state,), minval=0.9, maxval=0.999)
        a = mag * jnp.exp(1j * jax.random.uniform(k2, (config.state,), maxval=3.0))
        b = jax.lax.complex(*jax.random.normal(k3, (2,) + shape))
        results = {}
        for impl in IMPLS:
            fwd = jax.jit(lambda a, b, impl=impl: linear_scan(a, b, impl=impl))
            grad = jax.jit(jax.grad(
                lambda a, b, impl=impl: jnp.sum(jnp.abs(linear_scan(a, b, impl=impl)) ** 2),
                argnums=(0, 1)))
            results[impl] = (
                time_call(lambda: fwd(a, b), repeats=config.repeats),
                time_call(lambda: grad(a, b), repeats=config.repeats),
            )
        base_f, base_g = results["sequential"]
        for impl in IMPLS:
            f, g = results[impl]
            rows.append([
                str(T), impl, f"{f * 1e3:.2f}", f"{base_f / f:.2f}x",
                f"{g * 1e3:.2f}", f"{base_g / g:.2f}x",
            ])
        print(f"T={T}: " + ", ".join(f"{i} {results[i][0] * 1e3:.2f} ms" for i in IMPLS),
              flush=True)

    table = markdown_table(
        ["T", "impl", "forward ms", "vs sequential", "fwd+bwd ms", "vs sequential"], rows)
    elems = config.batch * config.latent**2 * config.state
    body = (
        f"Complex64 diagonal scan, time-invariant Λ̄, {elems:,} complex states per step "
        f"(batch {config.batch} × {config.latent}×{config.latent} × P={config.state}); "
        f"median of {config.repeats} calls after compilation.\n\n{table}\n"
    )
    name = config.name or f"scan_speed_{jax.default_backend()}"
    path = write_result(name, "linear_scan speed", body)
    print()
    print(body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
