"""How fast is `eqvid.kernels.attention`? The Pallas kernel against cuDNN and XLA.

Runs multi-head attention on `(batch, L, heads, head_dim)` inputs for three
masks, bidirectional, causal and frame-block-causal (every token sees its own and
all earlier frames of `--tokens-per-frame` tokens), forward and forward+backward,
for the eqvid Pallas kernel (`attention(..., impl="pallas")`, GPU only) and
`jax.nn.dot_product_attention` with `implementation="cudnn"` (GPU only) and
`implementation="xla"`. cuDNN and XLA get `is_causal=True` for the causal mask and,
for the frame-block-causal mask, which cuDNN has no native form of, the equivalent
dense boolean mask `(1, 1, L, L)` through `mask=`. For each it reports the median
time, TFLOP/s counting only the visited (unmasked) query-key pairs (the same count
for every implementation, so TFLOP/s ratios are speed ratios), the kernel's speed-up
over both references, the compiled program's temporary memory, and whether the
kernel's targets are met in this run. An implementation that fails (cuDNN missing,
out of memory) is recorded as such and the run goes on. Prints a markdown table and
writes `attention_speed.md` on GPU (`attention_speed_<backend>.md` elsewhere) into a
new folder under `benchmarks/results/runs/` (with `--update-reference`: into
`benchmarks/results/`, replacing the committed reference).

    python benchmarks/attention_speed.py                     # sizes for this device
    python benchmarks/attention_speed.py --lengths 4096 --head-dims 128 --masks causal
    python benchmarks/attention_speed.py --impls pallas xla --no-backward --repeats 20
"""

import argparse
import dataclasses
import os
import sys
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timing, begin_run, fmt_mib, fmt_ms, markdown_table, measure, publish

from eqvid._cli import add_config_arguments, config_from_args

# `eqvid.kernels` is the kernels/ folder ([tool.setuptools.package-dir]); Python finds it
# through setuptools' editable-install finder, which pyright cannot follow.
from eqvid.kernels import AttentionMask, attention
from eqvid.kernels.attention import row_ranges

MASKS = ("bidirectional", "causal", "frame-causal")
IMPLS = ("pallas", "cudnn", "xla")
GPU_LENGTHS, CPU_LENGTHS = (1024, 2048, 4096, 8192, 16384), (256, 512)
GPU_HEAD_DIMS, CPU_HEAD_DIMS = (64, 128), (64,)
GPU_TOKENS_PER_FRAME, CPU_TOKENS_PER_FRAME = 256, 64  # 256: a 16×16 latent per frame
GPU_TOKENS, CPU_TOKENS = 16384, 2048
WIDTH = 1024  # heads × head_dim when --heads is not given


@dataclasses.dataclass(frozen=True)
class AttentionBenchConfig:
    """Problem sizes, competitors and repetitions."""

    lengths: tuple[int, ...] = ()
    """Sequence lengths L (queries = keys); default: 1024 2048 4096 8192 16384 on GPU,
    256 512 elsewhere."""
    head_dims: tuple[int, ...] = ()
    """Head dimensions; default: 64 128 on GPU, 64 elsewhere."""
    masks: tuple[str, ...] = MASKS
    """Masks to run (bidirectional, causal, frame-causal)."""
    tokens_per_frame: int = 0
    """Tokens per frame of the frame-causal mask; default: 256 on GPU (a 16×16
    latent per frame), 64 elsewhere."""
    tokens: int = 0
    """Tokens per call, batch × L, when --batch is not given; default: 16384 on GPU,
    2048 elsewhere."""
    batch: int = 0
    """Batch size; default: tokens // L (at least 1), so every length does the same
    number of tokens."""
    heads: int = 0
    """Attention heads (as many key/value heads); default: 1024 // head_dim (16 at
    d=64, 8 at d=128: the same model width)."""
    impls: tuple[str, ...] = ()
    """Implementations (pallas, cudnn, xla); default: all three on GPU, xla elsewhere
    (pallas runs there only in interpret mode, very slowly: tiny sizes only; cudnn
    fails there)."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Dtype of q, k and v."""
    backward: bool = True
    """Also time forward+backward (gradients with respect to q, k and v)."""
    repeats: int = 10
    """Timed calls per measurement (the median is reported)."""
    name: str = ""
    """Result file name (default: attention_speed on GPU, attention_speed_<backend>
    elsewhere)."""
    out_dir: str = ""
    """Folder for the result file (default: a new folder under benchmarks/results/runs/,
    which git ignores)."""
    update_reference: bool = False
    """Write into benchmarks/results/ itself: replace the committed reference result."""


def attention_mask(name: str, tokens_per_frame: int) -> AttentionMask:
    if name == "causal":
        return AttentionMask(causal=True)
    if name == "frame-causal":
        return AttentionMask.frame_causal(tokens_per_frame)
    return AttentionMask()


def competitor(impl: str, mask_name: str, mask: AttentionMask):
    """`fn(q, k, v, dense)`: the attention output of `impl` (`dense`: the boolean mask
    for the references, `None` where they need none)."""
    if impl == "pallas":

        def kernel(q, k, v, dense):
            return attention(q, k, v, mask=mask, impl="pallas")

        return kernel
    if impl not in ("cudnn", "xla"):
        raise ValueError(f"competitor: `impl` must be one of {IMPLS}, got {impl!r}.")
    implementation: Literal["cudnn", "xla"] = "cudnn" if impl == "cudnn" else "xla"
    causal = mask_name == "causal"

    def reference(q, k, v, dense):
        return jax.nn.dot_product_attention(
            q, k, v, mask=dense, is_causal=causal, implementation=implementation
        )

    return reference


def ratio(other: Timing | None, ours: Timing | None) -> float | None:
    """Speed of `ours` relative to `other` (time_other / time_ours), if both ran."""
    if other is None or ours is None or other.seconds is None or ours.seconds is None:
        return None
    return other.seconds / ours.seconds


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def fmt_time(t: Timing | None) -> str:
    return fmt_ms(t, digits=3)


def fmt_tflops(t: Timing | None, flops: float) -> str:
    if t is None or t.seconds is None:
        return "–"
    return f"{flops / t.seconds / 1e12:.3g}"


def target_line(label: str, cases: list[tuple[str, float]], goal: float, above: bool = True):
    """A row of the targets table: worst and best case, pass or miss. `cases` holds
    (where, value); a case passes when value ≥ goal (`above`) or ≤ goal."""
    if not cases:
        return [label, "0", "–", "–", "not measured"]
    ordered = sorted(cases, key=lambda c: c[1], reverse=not above)
    worst, best = ordered[0], ordered[-1]
    misses = sum(1 for _, v in cases if (v < goal if above else v > goal))
    result = "pass" if misses == 0 else f"miss ({misses} of {len(cases)})"
    return [
        label,
        str(len(cases)),
        f"{worst[1]:.2f}× ({worst[0]})",
        f"{best[1]:.2f}× ({best[0]})",
        result,
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    description, _, epilog = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "bench", AttentionBenchConfig)
    config = config_from_args(parser.parse_args(argv), "bench", AttentionBenchConfig())
    gpu = jax.default_backend() == "gpu"
    lengths = config.lengths or (GPU_LENGTHS if gpu else CPU_LENGTHS)
    head_dims = config.head_dims or (GPU_HEAD_DIMS if gpu else CPU_HEAD_DIMS)
    tokens_per_frame = config.tokens_per_frame or (
        GPU_TOKENS_PER_FRAME if gpu else CPU_TOKENS_PER_FRAME
    )
    tokens = config.tokens or (GPU_TOKENS if gpu else CPU_TOKENS)
    impls = config.impls or (IMPLS if gpu else ("xla",))
    dtype = jnp.dtype(config.dtype)
    for name in config.masks:
        if name not in MASKS:
            parser.error(f"unknown mask {name!r}; choose from {', '.join(MASKS)}")
    for impl in impls:
        if impl not in IMPLS:
            parser.error(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    for label, values in (
        ("lengths", lengths),
        ("head-dims", head_dims),
        ("tokens-per-frame", (tokens_per_frame,)),
        ("tokens", (tokens,)),
        ("repeats", (config.repeats,)),
    ):
        if min(values) < 1:
            parser.error(f"--{label} must be ≥ 1, got {' '.join(map(str, values))}")
    if config.batch < 0 or config.heads < 0:
        parser.error("--batch and --heads must be ≥ 1 (0: the default)")

    out = begin_run(
        parser, __file__, argv, out_dir=config.out_dir, update_reference=config.update_reference
    )
    # results[(mask, L, d)][impl] = (forward, fwd+bwd or None)
    results: dict[tuple[str, int, int], dict[str, tuple[Timing, Timing | None]]] = {}
    sizes: dict[tuple[str, int, int], tuple[int, int, int]] = {}  # batch, heads, visited pairs
    rows, records = [], []
    for d in head_dims:
        heads = config.heads or max(1, WIDTH // d)
        for length in lengths:
            batch = config.batch or max(1, tokens // length)
            shape = (batch, length, heads, d)
            kq, kk, kv, kc = jax.random.split(jax.random.key(length * 1000 + d), 4)
            q = jax.random.normal(kq, shape, dtype)
            k = jax.random.normal(kk, shape, dtype)
            v = jax.random.normal(kv, shape, dtype)
            cotangent = jax.random.normal(kc, shape, jnp.float32)
            for mask_name in config.masks:
                mask = attention_mask(mask_name, tokens_per_frame)
                lo, hi = row_ranges(mask, 1, length, length)  # no padding: same for every batch row
                pairs = int(np.sum(np.asarray(hi) - np.asarray(lo), dtype=np.int64)) * batch * heads
                visited = pairs / (batch * heads * length * length)
                flops = 4.0 * pairs * d  # QKᵀ and PV: 2 FLOPs per multiply-add each
                dense = None
                if mask_name == "frame-causal" and any(i != "pallas" for i in impls):
                    cols = jnp.arange(length, dtype=jnp.int32)
                    visible = (cols[None, :] >= lo[0, :, None]) & (cols[None, :] < hi[0, :, None])
                    dense = visible[None, None]
                key = (mask_name, length, d)
                sizes[key] = (batch, heads, pairs)
                results[key] = {}
                for impl in impls:
                    fn = competitor(impl, mask_name, mask)
                    args = (q, k, v, None if impl == "pallas" else dense)
                    where = f"{mask_name} L={length} d={d} {impl}"
                    fwd = measure(fn, args, config.repeats)
                    print(
                        f"{where}: forward "
                        + (
                            f"{fwd.seconds * 1e3:.3f} ms, {flops / fwd.seconds / 1e12:.3g} TFLOP/s, "
                            f"temp {fmt_mib(fwd)} MiB"
                            if fwd.seconds is not None
                            else fwd.error
                        ),
                        flush=True,
                    )
                    bwd = None
                    if config.backward:
                        if fwd.ok:

                            def loss(q, k, v, dense, ct, fn=fn):
                                return jnp.sum(fn(q, k, v, dense).astype(jnp.float32) * ct)

                            bwd = measure(
                                jax.grad(loss, argnums=(0, 1, 2)),
                                args + (cotangent,),
                                config.repeats,
                            )
                        else:  # it would fail the same way; skip the compile
                            bwd = Timing(error=fwd.error)
                        print(
                            f"{where}: fwd+bwd "
                            + (
                                f"{bwd.seconds * 1e3:.3f} ms, "
                                f"{3.5 * flops / bwd.seconds / 1e12:.3g} TFLOP/s, "
                                f"temp {fmt_mib(bwd)} MiB"
                                if bwd.seconds is not None
                                else bwd.error
                            ),
                            flush=True,
                        )
                    results[key][impl] = (fwd, bwd)
                    records.append(
                        dict(
                            mask=mask_name,
                            length=length,
                            head_dim=d,
                            impl=impl,
                            batch=batch,
                            heads=heads,
                            forward_s=fwd.seconds,
                            fwd_bwd_s=bwd.seconds if bwd else None,
                            forward_temp_bytes=fwd.temp,
                            error=fwd.error or (bwd.error if bwd else ""),
                        )
                    )
                for impl in impls:
                    fwd, bwd = results[key][impl]
                    mine = impl == "pallas"
                    others = {o: results[key].get(o, (None, None)) for o in ("cudnn", "xla")}
                    row = [
                        mask_name,
                        str(length),
                        str(d),
                        f"{batch}×{heads}",
                        f"{100 * visited:.1f}%",
                        impl,
                        fmt_time(fwd),
                        fmt_tflops(fwd, flops),
                    ]
                    row += [fmt_ratio(ratio(others[o][0], fwd)) if mine else "–" for o in others]
                    if config.backward:
                        row += [fmt_time(bwd), fmt_tflops(bwd, 3.5 * flops)]
                        row += [
                            fmt_ratio(ratio(others[o][1], bwd)) if mine else "–" for o in others
                        ]
                    row.append(fmt_mib(fwd))
                    if config.backward:
                        row.append(fmt_mib(bwd))
                    rows.append(row)

    header = [
        "mask",
        "L",
        "d",
        "B×H",
        "visited",
        "impl",
        "fwd ms",
        "fwd TFLOP/s",
        "fwd vs cudnn",
        "fwd vs xla",
    ]
    if config.backward:
        header += ["fwd+bwd ms", "fwd+bwd TFLOP/s", "fwd+bwd vs cudnn", "fwd+bwd vs xla"]
    header.append("fwd temp MiB")
    if config.backward:
        header.append("fwd+bwd temp MiB")
    table = markdown_table(header, rows)

    # The targets, from the pallas rows and the references measured beside them.
    def speed_cases(masks, other, phase, min_length=0):
        cases = []
        for (mask_name, length, d), by_impl in results.items():
            if (
                mask_name in masks
                and length >= min_length
                and "pallas" in by_impl
                and other in by_impl
            ):
                r = ratio(by_impl[other][phase], by_impl["pallas"][phase])
                if r is not None:
                    cases.append((f"{mask_name} L={length} d={d}", r))
        return cases

    phases = [(0, "forward")] + ([(1, "fwd+bwd")] if config.backward else [])
    targets = [
        target_line(
            "causal forward ≥ 0.6× cuDNN's speed", speed_cases(("causal",), "cudnn", 0), 0.6
        ),
        target_line(
            "bidirectional forward ≥ 0.6× cuDNN's speed",
            speed_cases(("bidirectional",), "cudnn", 0),
            0.6,
        ),
    ]
    for phase, label in phases:
        targets.append(
            target_line(
                f"frame-causal {label} ≥ 1.5× cuDNN with the dense mask",
                speed_cases(("frame-causal",), "cudnn", phase),
                1.5,
            )
        )
    for phase, label in phases:
        targets.append(
            target_line(
                f"{label} ≥ 3× XLA at L ≥ 4096 (every mask)",
                speed_cases(MASKS, "xla", phase, 4096),
                3.0,
            )
        )
    # Memory linear in L: batch × L is (about) the same at every length, so linear
    # memory means temporary bytes per token stay flat while a dense L × L score
    # matrix grows them ×L. Growth below q's own bytes per token counts as flat.
    mem_phase, mem_label = phases[-1]
    growth = []
    for mask_name in config.masks:
        for d in head_dims:
            per_token = []
            for length in sorted(lengths):
                key = (mask_name, length, d)
                timing = results.get(key, {}).get("pallas", (None, None))[mem_phase]
                if (
                    timing is not None
                    and timing.ok
                    and timing.temp is not None
                    and timing.temp >= 0
                ):
                    batch, heads, _ = sizes[key]
                    floor = heads * d * dtype.itemsize
                    per_token.append((length, max(timing.temp / (batch * length), floor)))
            if len(per_token) >= 2:
                (l0, t0), (l1, t1) = per_token[0], per_token[-1]
                growth.append(
                    (f"{mask_name} d={d}, L {l0}→{l1}: dense would be ×{l1 / l0:.0f}", t1 / t0)
                )
    targets.append(
        target_line(
            f"{mem_label} temp memory linear in L (per-token growth ≤ 1.5×)",
            growth,
            1.5,
            above=False,
        )
    )
    target_table = markdown_table(["target", "cases", "worst", "best", "result"], targets)

    references = (
        "cuDNN and XLA are `jax.nn.dot_product_attention(implementation=...)`: no mask for "
        "bidirectional, `is_causal=True` for causal, the dense boolean mask `(1, 1, L, L)` "
        f"for frame-causal ({tokens_per_frame} tokens per frame; cuDNN has no native form "
        'of it). The kernel is `attention(..., mask=AttentionMask, impl="pallas")`.'
    )
    body = (
        f"{dtype.name} q, k, v of shape (B, L, H, d); median of {config.repeats} calls after "
        "compilation. `visited`: the share of (query, key) pairs the mask allows. TFLOP/s "
        "count only visited pairs, 4·d FLOPs each forward (two matmuls) and 3.5× that "
        "forward+backward (backward = 2.5× forward with recomputation, the FlashAttention "
        "convention), for every implementation alike, so their ratios are speed ratios. "
        "`vs cudnn` / `vs xla` (kernel rows): the reference's time over the kernel's "
        "(> 1: the kernel is faster). `temp MiB`: the compiled program's temporary "
        f"memory (inputs and outputs excluded).\n\n{references}\n\n{table}\n\n"
        f"## Targets\n\nSpeed ratios as above, from this run; a target counts only cases "
        f"where both implementations ran.\n\n{target_table}\n"
    )
    if not gpu:
        body += (
            "\nThe Pallas kernel and cuDNN are GPU-only (on CPU the kernel runs in "
            "interpret mode, for testing, and cuDNN fails): these numbers are a smoke "
            "run; run this script on a GPU for the comparison.\n"
        )
    publish("attention_speed", "attention speed", body, custom_name=config.name, out_dir=str(out))
    return records


if __name__ == "__main__":
    main()
