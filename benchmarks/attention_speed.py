"""How fast is `eqvid.kernels.attention`? Its Pallas kernels against cuDNN, tokamax and XLA.

Runs multi-head attention on `(batch, L, heads, head_dim)` inputs for three
masks, bidirectional, causal and frame-block-causal (every token sees its own and
all earlier frames of `--tokens-per-frame` tokens), forward and forward+backward,
for eqvid's kernels side by side (`attention(..., impl="mosaic")`, the Mosaic GPU
kernels, and `impl="triton"`, the Triton kernels; `impl="pallas"` is whichever suits
the machine), openxla's `tokamax.dot_product_attention` (an optional peer: `pip
install tokamax`; its Mosaic GPU kernel on Hopper) and `jax.nn.dot_product_attention`
with `implementation="cudnn"` (GPU only) and `implementation="xla"`. cuDNN and XLA
get `is_causal=True` for the causal mask and, for the frame-block-causal mask, which
cuDNN has no native form of, the equivalent dense boolean mask `(1, 1, L, L)`
through `mask=`; tokamax gets `is_causal=True`, and the frame-block-causal mask as
per-row key ranges (its `Mask(k_start, k_end)`, the same ranges eqvid's kernels
skip blocks by), or the dense mask where its version has no ranges. For each it
reports the median time, TFLOP/s counting only the visited (unmasked) query-key
pairs (the same count for every implementation, so TFLOP/s ratios are speed
ratios), each kernel's speed-up over the references and tokamax, the compiled
program's temporary memory, and whether the kernels' targets are met in this run.
An implementation that fails (cuDNN or tokamax missing, a dtype a kernel does not
take, out of memory) is recorded as such and the run goes on. Prints a markdown table and
writes `attention_speed.md` on GPU (`attention_speed_<backend>.md` elsewhere) into a
new folder under `benchmarks/results/runs/` (with `--update-reference`: into
`benchmarks/results/`, replacing the committed reference).

    python benchmarks/attention_speed.py                     # sizes for this device
    python benchmarks/attention_speed.py --lengths 4096 --head-dims 128 --masks causal
    python benchmarks/attention_speed.py --impls mosaic triton xla --no-backward --repeats 20
    python benchmarks/attention_speed.py --impls mosaic "mosaic[q=64]" "mosaic[kv=64,num_stages=3]" cudnn

A kernel variant `mosaic[field=value,...]` (or `triton[...]`) replaces fields of the
kernel's default `BlockSizes` for the shape (rows per program, streamed block sizes,
blocks in flight; see `eqvid.kernels.attention.BlockSizes`): rows side by side for
tuning. Targets are checked on the plain kernels.
"""

import argparse
import dataclasses
import importlib
import importlib.util
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
from eqvid.kernels import AttentionMask, attention, pallas_backends
from eqvid.kernels.attention import row_ranges

MASKS = ("bidirectional", "causal", "frame-causal")
KERNELS = ("mosaic", "triton", "pallas")
"""eqvid's kernels (`pallas`: whichever of the two suits the machine)."""
PEERS = ("tokamax", "cudnn", "xla")
"""What the kernels are compared with: speed-up columns and targets."""
IMPLS = KERNELS + PEERS
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
    """Implementations (mosaic, triton, pallas, tokamax, cudnn, xla, or a kernel
    variant such as mosaic[q=64,kv=128,num_stages=3]); default on GPU: the Pallas
    backends this machine runs, tokamax where it is installed, cudnn and xla;
    elsewhere xla (the kernels run there only in interpret mode, very slowly: tiny
    sizes only; cudnn fails there)."""
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


def competitor(impl: str, mask_name: str, mask: AttentionMask, lo=None, hi=None):
    """`fn(q, k, v, dense)`: the attention output of `impl` (`dense`: the boolean mask
    for the references, `None` where they need none; `lo`, `hi`: the rows' key ranges
    `(1, L)`, for tokamax)."""
    if is_kernel(impl) and "[" in impl:
        backend, overrides = parse_variant(impl)

        def variant(q, k, v, dense):
            return kernel_variant(q, k, v, mask, backend, overrides)

        return variant
    if impl in KERNELS:

        def kernel(q, k, v, dense):
            return attention(q, k, v, mask=mask, impl=impl)  # type: ignore[arg-type]

        return kernel
    if impl == "tokamax":
        return tokamax_attention(mask_name, lo, hi)
    if impl not in ("cudnn", "xla"):
        raise ValueError(f"competitor: `impl` must be one of {IMPLS}, got {impl!r}.")
    implementation: Literal["cudnn", "xla"] = "cudnn" if impl == "cudnn" else "xla"
    causal = mask_name == "causal"

    def reference(q, k, v, dense):
        return jax.nn.dot_product_attention(
            q, k, v, mask=dense, is_causal=causal, implementation=implementation
        )

    return reference


def is_kernel(impl: str) -> bool:
    """An eqvid kernel: `mosaic`, `triton`, `pallas`, or a block-size variant such as
    `mosaic[q=64,kv=128,num_stages=3]`."""
    return impl.split("[")[0] in KERNELS


def parse_variant(impl: str) -> tuple[str, dict[str, int]]:
    """`"mosaic[q=64,kv=128]"` → `("mosaic", {"q": 64, "kv": 128})`: a kernel with some
    `BlockSizes` fields replaced (the rest are the kernel's defaults for the shape)."""
    attention_module = importlib.import_module("eqvid.kernels.attention")
    backend, _, rest = impl.partition("[")
    if backend not in ("mosaic", "triton") or not rest.endswith("]"):
        raise ValueError(
            f"a kernel variant is mosaic[field=value,...] or triton[field=value,...], got {impl!r}"
        )
    fields = {f.name for f in dataclasses.fields(attention_module.BlockSizes)}
    overrides = {}
    for item in filter(None, rest[:-1].split(",")):
        name, _, value = item.partition("=")
        if name not in fields or not value.isdigit():
            raise ValueError(
                f"{impl!r}: {item!r} is not field=integer with a field of BlockSizes "
                f"({', '.join(sorted(fields))})"
            )
        overrides[name] = int(value)
    return backend, overrides


def kernel_variant(q, k, v, mask, backend: str, overrides: dict[str, int]):
    """`attention` on `backend` with the `overrides` of its default block sizes."""
    attention_module = importlib.import_module("eqvid.kernels.attention")
    _, q_len, _, dim = q.shape
    if backend == "mosaic":
        base = attention_module._mosaic_blocks(None, -(-dim // 64) * 64, q_len, k.shape[1])
    else:
        base = attention_module.BlockSizes()
    blocks = dataclasses.replace(base, **overrides)
    scale = 1.0 / float(np.sqrt(dim))
    return attention_module._pallas(q, k, v, mask, scale, blocks, backend=backend)


def tokamax_attention(mask_name: str, lo, hi):
    """tokamax's attention (its Mosaic GPU kernel on NVIDIA GPUs, its XLA path
    elsewhere) with the mask in its best form: none, `is_causal`, or the per-row key
    ranges `[lo, hi)` (tokamax's `Mask(k_start, k_end)`, from its internal module, as
    its public function takes only dense masks; the dense mask where that is gone).
    Raises `ImportError` (a failed row) when tokamax is not installed."""
    implementation = "mosaic" if jax.default_backend() == "gpu" else "xla"

    def range_masked():
        """tokamax's own kernel and range mask, `None` where its version lacks them."""
        try:
            from tokamax._src.ops.attention import api as tokamax_api  # type: ignore[import-not-found]
            from tokamax._src.ops.attention import base as tokamax_base  # type: ignore[import-not-found]

            kernel = "mosaic_gpu" if implementation == "mosaic" else "xla"
            return tokamax_api.IMPLEMENTATIONS[kernel], tokamax_base.Mask
        except (ImportError, AttributeError, KeyError):
            return None

    def run(q, k, v, dense):
        import tokamax  # type: ignore[import-not-found]  # optional: a failed row without it

        ranges = range_masked() if mask_name == "frame-causal" else None
        if ranges is not None:
            op, range_mask = ranges
            # (batch, heads, q_len) ranges, broadcast over batch and heads.
            mask = range_mask(k_start=lo[:, None, :], k_end=hi[:, None, :])
            return op(q, k, v, mask=mask)
        return tokamax.dot_product_attention(
            q, k, v, mask=dense, is_causal=mask_name == "causal", implementation=implementation
        )

    return run


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


def default_impls() -> tuple[str, ...]:
    """On GPUs: every Pallas backend this machine runs, tokamax where installed,
    cuDNN and XLA."""
    kernels = tuple(k for k, why in pallas_backends().items() if why is None)
    peers = PEERS if importlib.util.find_spec("tokamax") is not None else PEERS[1:]
    return kernels + peers


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
    impls = config.impls or (default_impls() if gpu else ("xla",))
    dtype = jnp.dtype(config.dtype)
    for name in config.masks:
        if name not in MASKS:
            parser.error(f"unknown mask {name!r}; choose from {', '.join(MASKS)}")
    for impl in impls:
        if impl not in IMPLS and not is_kernel(impl):
            parser.error(
                f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}, or a "
                "kernel variant such as mosaic[q=64,kv=128,num_stages=3]"
            )
        if "[" in impl:
            try:
                parse_variant(impl)
            except ValueError as error:
                parser.error(str(error))
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
                if mask_name == "frame-causal" and not all(is_kernel(i) for i in impls):
                    cols = jnp.arange(length, dtype=jnp.int32)
                    visible = (cols[None, :] >= lo[0, :, None]) & (cols[None, :] < hi[0, :, None])
                    dense = visible[None, None]
                key = (mask_name, length, d)
                sizes[key] = (batch, heads, pairs)
                results[key] = {}
                for impl in impls:
                    fn = competitor(impl, mask_name, mask, lo, hi)
                    args = (q, k, v, None if is_kernel(impl) else dense)
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
                    mine = is_kernel(impl)
                    others = {o: results[key].get(o, (None, None)) for o in PEERS}
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
        *(f"fwd vs {o}" for o in PEERS),
    ]
    if config.backward:
        header += ["fwd+bwd ms", "fwd+bwd TFLOP/s", *(f"fwd+bwd vs {o}" for o in PEERS)]
    header.append("fwd temp MiB")
    if config.backward:
        header.append("fwd+bwd temp MiB")
    table = markdown_table(header, rows)

    # The targets, from each kernel's rows and the peers measured beside them.
    def speed_cases(kernel, masks, other, phase, min_length=0, length=None):
        cases = []
        for (mask_name, n, d), by_impl in results.items():
            if (
                mask_name in masks
                and n >= min_length
                and (length is None or n == length)
                and kernel in by_impl
                and other in by_impl
            ):
                r = ratio(by_impl[other][phase], by_impl[kernel][phase])
                if r is not None:
                    cases.append((f"{mask_name} L={n} d={d}", r))
        return cases

    phases = [(0, "forward")] + ([(1, "fwd+bwd")] if config.backward else [])
    eight_frames = 8 * tokens_per_frame
    targets = []
    for kernel in [i for i in impls if i in KERNELS]:
        dense_goal = 0.8 if kernel == "mosaic" else 0.6
        targets.append(
            target_line(
                f"{kernel}: bidirectional forward ≥ {dense_goal}× cuDNN's speed",
                speed_cases(kernel, ("bidirectional",), "cudnn", 0),
                dense_goal,
            )
        )
        targets.append(
            target_line(
                f"{kernel}: causal forward ≥ 0.6× cuDNN's speed",
                speed_cases(kernel, ("causal",), "cudnn", 0),
                0.6,
            )
        )
        for phase, label in phases:
            targets.append(
                target_line(
                    f"{kernel}: frame-causal {label} ≥ 1.5× cuDNN with the dense mask",
                    speed_cases(kernel, ("frame-causal",), "cudnn", phase),
                    1.5,
                )
            )
            if kernel == "mosaic":
                targets.append(
                    target_line(
                        f"{kernel}: frame-causal {label}, 8 frames × {tokens_per_frame} "
                        "tokens, ≥ 1.7× cuDNN",
                        speed_cases(kernel, ("frame-causal",), "cudnn", phase, length=eight_frames),
                        1.7,
                    )
                )
            targets.append(
                target_line(
                    f"{kernel}: {label} ≥ 1.0× tokamax (every mask)",
                    speed_cases(kernel, MASKS, "tokamax", phase),
                    1.0,
                )
            )
            targets.append(
                target_line(
                    f"{kernel}: {label} ≥ 3× XLA at L ≥ 4096 (every mask)",
                    speed_cases(kernel, MASKS, "xla", phase, 4096),
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
                    timing = results.get(key, {}).get(kernel, (None, None))[mem_phase]
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
                f"{kernel}: {mem_label} temp memory linear in L (per-token growth ≤ 1.5×)",
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
        "of it). tokamax is `tokamax.dot_product_attention` (its Mosaic GPU kernel), with "
        "the frame-causal mask as per-row key ranges. The kernels are `attention(..., "
        'mask=AttentionMask, impl="mosaic" | "triton")`.'
    )
    body = (
        f"{dtype.name} q, k, v of shape (B, L, H, d); median of {config.repeats} calls after "
        "compilation. `visited`: the share of (query, key) pairs the mask allows. TFLOP/s "
        "count only visited pairs, 4·d FLOPs each forward (two matmuls) and 3.5× that "
        "forward+backward (backward = 2.5× forward with recomputation, the FlashAttention "
        "convention), for every implementation alike, so their ratios are speed ratios. "
        "`vs tokamax` / `vs cudnn` / `vs xla` (kernel rows): the peer's time over the "
        "kernel's (> 1: the kernel is faster). `temp MiB`: the compiled program's temporary "
        f"memory (inputs and outputs excluded).\n\n{references}\n\n{table}\n\n"
        f"## Targets\n\nSpeed ratios as above, from this run; a target counts only cases "
        f"where both implementations ran.\n\n{target_table}\n"
    )
    if not gpu:
        body += (
            "\nThe Pallas kernels and cuDNN are GPU-only (on CPU the kernels run in "
            "interpret mode, for testing, and cuDNN fails): these numbers are a smoke "
            "run; run this script on a GPU for the comparison.\n"
        )
    publish("attention_speed", "attention speed", body, custom_name=config.name, out_dir=str(out))
    return records


if __name__ == "__main__":
    main()
