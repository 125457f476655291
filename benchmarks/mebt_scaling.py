"""Does MeBT's cost grow linearly with the tokens? MeBT against the same-size
full-attention MaskGit transformer, side by side.

Both are `eqvid.nn.MeBTTransformer`s of one width, head count and depth: MeBT with the
released layer pattern (`latent_enc`/`latent_self` encoder, `latent_dec`/`lt2l`
decoder, `--latents` latent tokens), the baseline with every layer of kind `maskgit`
(full bidirectional attention over all tokens: the MaskGit transformer MeBT replaces).
For each volume of `--tokens` tokens it measures, for a batch of `--batch` volumes:

- `train step`: the loss and its gradient with respect to every parameter, with half
  the tokens as context and half as targets (MaskGen at `t = 0.5`; index sets exactly
  that long, so no padding is computed);
- `sampling`: MeBT's MaskGit decoding of whole volumes from nothing
  (`eqvid.nn.mebt_sample`, `--sample-steps` steps; every step runs the network on the
  fixed tokens as context and the rest as targets).

It reports the median time and the compiled program's temporary memory, MeBT's and
the baseline's, their ratios, and how each grows from one token count to the next:
linear cost grows 2× when the tokens double, a dense `N × N` attention 4×. Prints a
markdown table and writes `mebt_scaling.md` on GPU (`mebt_scaling_<backend>.md`
elsewhere) into a new folder under `benchmarks/results/runs/` (with
`--update-reference`: into `benchmarks/results/`, replacing the committed reference).

    python benchmarks/mebt_scaling.py                       # sizes for this device
    python benchmarks/mebt_scaling.py --tokens 1024 2048 4096 8192 --dim 1024 --heads 16
"""

import argparse
import dataclasses
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timing, begin_run, fmt_mib, fmt_ms, markdown_table, measure, publish

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.nn import MeBTTransformer, mebt_layers, mebt_sample

GPU_TOKENS, CPU_TOKENS = (1024, 2048, 4096, 8192), (1024, 2048, 4096, 8192)
GPU_DIM, CPU_DIM = 1024, 64
GPU_HEADS, CPU_HEADS = 16, 4
GPU_LATENTS, CPU_LATENTS = 256, 64


@dataclasses.dataclass(frozen=True)
class MeBTScalingConfig:
    """Token counts, model size and repetitions."""

    tokens: tuple[int, ...] = ()
    """Tokens per volume (time × height × width of the codes); default 1024 2048 4096
    8192 (a 16×16 code grid: 4 to 32 latent steps, MeBT's 16 to 128 frames)."""
    dim: int = 0
    """Token width; default 1024 on GPU (the released configs'), 64 elsewhere."""
    heads: int = 0
    """Attention heads; default 16 on GPU, 4 elsewhere."""
    latents: int = 0
    """MeBT's latent tokens; default 256 on GPU (the released configs'), 64 elsewhere."""
    encoder_layers: int = 2
    """MeBT's `latent_enc` layers (a `latent_self` between each two; the released: 7)."""
    decoder_layers: int = 2
    """MeBT's `latent_dec` layers (an `lt2l` between each two; the released: 6). The
    baseline has as many layers as MeBT in all."""
    num_codes: int = 1024
    """Codebook size (the head's width)."""
    batch: int = 1
    """Volumes per call."""
    sample_steps: int = 4
    """Decoding steps of the sampling measurement."""
    sampling: bool = True
    """Also measure sampling."""
    repeats: int = 3
    """Timed calls per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: mebt_scaling on GPU, mebt_scaling_<backend>
    elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/,
    which git ignores)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def build(kind: str, config: MeBTScalingConfig, tokens: int, dim: int, heads: int, latents: int):
    layers = mebt_layers(config.encoder_layers, config.decoder_layers)
    if kind == "full":
        layers = ("maskgit",) * len(layers)
    return eqx.filter_jit(
        lambda: MeBTTransformer(
            num_codes=config.num_codes, max_tokens=tokens, dim=dim, num_heads=heads,
            num_latents=latents, layers=layers, key=jax.random.key(0),
        )
    )()  # fmt: skip


def train_step(network, codes, contexts, targets):
    """Loss and gradient of a batch: contexts and targets given as index sets."""
    n_c, n_t = contexts.shape[1], targets.shape[1]

    def loss(net):
        logits = jax.vmap(lambda c, x, y: net(c, x, n_c, y, n_t))(codes, contexts, targets)
        labels = jnp.take_along_axis(codes, targets, axis=1)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1))

    return eqx.filter_value_and_grad(loss)(network)


def sampling(network, keys, steps):
    n = network.max_tokens

    def one(key):
        codes = jnp.zeros(n, jnp.int32)
        known = jnp.zeros(n, bool)
        return mebt_sample(network, codes, known, key=key, num_steps=steps, context_temp=4.0)[0]

    return jax.vmap(one)(keys)


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def _value(t: Timing | None, what: str) -> float | None:
    if t is None or not t.ok:
        return None
    if what == "time":
        return t.seconds
    return None if t.temp is None or t.temp < 0 else float(t.temp)


def main(argv: list[str] | None = None) -> list[dict]:
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", MeBTScalingConfig)
    config = config_from_args(parser.parse_args(argv), "bench", MeBTScalingConfig())
    gpu = jax.default_backend() == "gpu"
    tokens = sorted(config.tokens or (GPU_TOKENS if gpu else CPU_TOKENS))
    dim = config.dim or (GPU_DIM if gpu else CPU_DIM)
    heads = config.heads or (GPU_HEADS if gpu else CPU_HEADS)
    latents = config.latents or (GPU_LATENTS if gpu else CPU_LATENTS)
    if min(tokens) < 2 or min(dim, heads, latents, config.batch, config.repeats) < 1:
        parser.error("--tokens must be ≥ 2 and every size and --repeats ≥ 1")
    if dim % heads:
        parser.error(f"--dim ({dim}) must be divisible by --heads ({heads})")
    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    phases = ["train step"] + (["sampling"] if config.sampling else [])
    results: dict[tuple[str, str, int], Timing] = {}
    for n in tokens:
        k_codes, k_perm, k_sample = jax.random.split(jax.random.key(n), 3)
        codes = jax.random.randint(k_codes, (config.batch, n), 0, config.num_codes)
        perms = jnp.stack(
            [jax.random.permutation(k, n) for k in jax.random.split(k_perm, config.batch)]
        ).astype(jnp.int32)
        contexts, targets = perms[:, : n // 2], perms[:, n // 2 :]
        sample_keys = jax.random.split(k_sample, config.batch)
        for kind in ("mebt", "full"):
            network = build(kind, config, n, dim, heads, latents)
            timing = measure(train_step, (network, codes, contexts, targets), config.repeats)
            results[("train step", kind, n)] = timing
            print(
                f"{kind} N={n} train step: {fmt_ms(timing)} ms, {fmt_mib(timing)} MiB", flush=True
            )
            if config.sampling:
                fn = lambda net, keys: sampling(net, keys, config.sample_steps)
                timing = measure(fn, (network, sample_keys), config.repeats)
                results[("sampling", kind, n)] = timing
                print(
                    f"{kind} N={n} sampling: {fmt_ms(timing)} ms, {fmt_mib(timing)} MiB", flush=True
                )

    rows, records = [], []
    for phase in phases:
        for i, n in enumerate(tokens):
            m, f = results[(phase, "mebt", n)], results[(phase, "full", n)]
            prev = tokens[i - 1] if i else None
            growth = {}
            for kind, t in (("mebt", m), ("full", f)):
                for what in ("time", "memory"):
                    now = _value(t, what)
                    before = _value(results[(phase, kind, prev)], what) if prev else None
                    growth[(kind, what)] = fmt_ratio(now, before) if prev else "–"
            rows.append(
                [
                    phase, str(n), fmt_ms(m), fmt_ms(f),
                    fmt_ratio(_value(f, "time"), _value(m, "time")),
                    fmt_mib(m), fmt_mib(f),
                    fmt_ratio(_value(m, "memory"), _value(f, "memory")),
                    growth[("mebt", "time")], growth[("full", "time")],
                    growth[("mebt", "memory")], growth[("full", "memory")],
                ]
            )  # fmt: skip
            records.append(
                {
                    "phase": phase, "tokens": n,
                    "mebt_seconds": m.seconds, "full_seconds": f.seconds,
                    "mebt_temp_bytes": m.temp, "full_temp_bytes": f.temp,
                    "mebt_error": m.error, "full_error": f.error,
                }
            )  # fmt: skip
    table = markdown_table(
        [
            "phase", "tokens", "MeBT ms", "full ms", "full / MeBT time", "MeBT MiB",
            "full MiB", "MeBT / full memory", "MeBT time ×", "full time ×", "MeBT memory ×",
            "full memory ×",
        ],
        rows,
    )  # fmt: skip

    # The targets, at the largest two token counts measured.
    targets = []
    if len(tokens) >= 2:
        a, b = tokens[-2], tokens[-1]
        for phase in phases:
            for what in ("time", "memory"):
                m0, m1 = (_value(results[(phase, "mebt", x)], what) for x in (a, b))
                f0, f1 = (_value(results[(phase, "full", x)], what) for x in (a, b))
                if None in (m0, m1, f0, f1):
                    targets.append([f"{phase} {what}", "not measured", "–", "–"])
                    continue
                assert m0 and m1 and f0 and f1
                grow_m, grow_f = m1 / m0, f1 / f0
                ok = grow_m <= 2.3 and grow_f > grow_m
                targets.append(
                    [
                        f"{phase} {what}: MeBT grows ≤ 2.3× from {a} to {b} tokens, full faster",
                        f"{grow_m:.2f}×", f"{grow_f:.2f}×", "pass" if ok else "miss",
                    ]
                )  # fmt: skip
            mb, fb = (
                _value(results[(phase, "mebt", b)], "memory"),
                _value(results[(phase, "full", b)], "memory"),
            )
            if mb is not None and fb:
                targets.append(
                    [
                        f"{phase} memory at {b} tokens: MeBT ≤ 1/4 of full",
                        f"{mb / 2**20:.1f} MiB", f"{fb / 2**20:.1f} MiB",
                        "pass" if mb <= fb / 4 else "miss",
                    ]
                )  # fmt: skip
    target_table = markdown_table(["target", "MeBT", "full", "result"], targets)
    layers = mebt_layers(config.encoder_layers, config.decoder_layers)
    body = (
        f"Width {dim}, {heads} heads, {len(layers)} layers ({' '.join(layers)}; the baseline "
        f"{len(layers)} × maskgit), {latents} latents, {config.num_codes} codes, batch "
        f"{config.batch}; median of {config.repeats} calls after compilation. `train step`: "
        "loss and gradient, half the tokens context and half targets. `sampling`: "
        f"{config.sample_steps} MaskGit decoding steps of whole volumes from nothing. MiB: "
        "the compiled program's temporary memory (parameters, inputs and outputs excluded). "
        "`×` columns: growth from the previous token count (linear: 2×, a dense N × N "
        f"term: 4×).\n\n{table}\n\n## Targets\n\n{target_table}\n"
    )
    if not gpu:
        body += (
            "\nOn CPU the attention runs as XLA's reference (`eqvid.kernels.attention`, "
            "impl xla): sizes are scaled down (width, heads, latents); the Pallas kernel "
            "and the released width need a GPU.\n"
        )
    publish("mebt_scaling", "MeBT scaling", body, custom_name=config.name, out_dir=str(out))
    return records


if __name__ == "__main__":
    main()
