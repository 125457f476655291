"""The diagonal linear recurrence `x_t = a_t ⊙ x_{t-1} + b_t` as a Pallas **Mosaic
GPU** kernel (`plgpu.kernel`), the backend JAX keeps on NVIDIA GPUs once its Triton
backend is gone. `linear_scan.py` dispatches to it (`impl="mosaic"`) and wires its
gradient; this file holds the kernel and its launch.

Work layout. The arrays are *planar*: `(planes, time, channels)`, one plane for real
recurrences, two (real, imaginary) for complex ones. Each program owns a block of
`block_c` channels (128 or 256: one warpgroup's register vector, one or two values
per thread) over one chunk of time. Inside it, `plgpu.emit_pipeline` streams the
chunk's time blocks of `b` (and of a per-step `a`) from global to shared memory by
TMA, `max_concurrent_steps` blocks in flight; the state stays in registers, a
`fori_loop` walks the block's steps, and each block of states goes back to global
memory by TMA from a double buffer in shared memory (the pipeline's own predicated
output copies cannot be interpreted on CPU). `x0`, and a time-invariant `a`, are
read once.

With few channel blocks and a long sequence the GPU would idle, so time is split
into chunks, as the Triton kernel does: a `summary` launch gives each chunk's end
state from zero and its total decay, a short scan over chunks gives every chunk its
incoming state, and a second launch computes the states from those.

Constraints of Mosaic GPU that the launch meets for its callers: register vectors of
a multiple of 128 elements and TMA boxes of at most 256 per dimension (channels are
padded to a multiple of 128, time to a multiple of the block), and no float64 (the
dispatcher routes it elsewhere).
"""

import functools

import jax
import jax.numpy as jnp

_BLOCK_T = 32
"""Time steps per pipelined block at most (a TMA box is at most 256 long)."""
_MAX_IN_FLIGHT = 2
"""Blocks of input in flight per program (double buffering)."""
_SMEM_BUDGET = 200 * 1024
"""Shared memory a program may use (Hopper has 227 KiB per block)."""


def mosaic_modules():
    """`(plgpu, InterpretGPUParams)` of the installed jax, or `(None, None)` without
    Mosaic GPU Pallas. `InterpretGPUParams` is public from jax 0.12, private before."""
    try:
        from jax.experimental.pallas import mosaic_gpu as plgpu
    except ImportError:
        return None, None
    if not hasattr(plgpu, "kernel"):
        return None, None
    params = getattr(plgpu, "InterpretGPUParams", None)
    if params is None:
        try:
            from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

            params = InterpretGPUParams
        except ImportError:
            params = None
    return plgpu, params


def _kernel_body(*, planes, per_step, reverse, summary, blocks_per_chunk, block_t, block_c):
    """The program body: one channel block over one chunk of time."""
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    f32 = jnp.float32

    def madd(a, x, b):
        if planes == 1:
            return (a[0] * x[0] + b[0],)
        (ar, ai), (xr, xi), (br, bi) = a, x, b
        return (ar * xr - ai * xi + br, ar * xi + ai * xr + bi)

    def body(a_gmem, b_gmem, x0_gmem, *rest):
        if summary:
            end_gmem, decay_gmem, a_smem, x0_smem, out_smem, barriers = rest
        else:
            out_gmem, a_smem, x0_smem, out_smem, barriers = rest
        chunk, block = jax.lax.axis_index("t"), jax.lax.axis_index("c")
        channels = pl.ds(block * block_c, block_c)
        plgpu.copy_gmem_to_smem(x0_gmem.at[:, pl.ds(chunk, 1), channels], x0_smem, barriers.at[0])
        if not per_step:
            plgpu.copy_gmem_to_smem(a_gmem.at[:, :, channels], a_smem, barriers.at[1])
        plgpu.barrier_wait(barriers.at[0])
        x = tuple(x0_smem[q, 0] for q in range(planes))
        if not per_step:
            plgpu.barrier_wait(barriers.at[1])
            a_const = tuple(a_smem[q, 0].astype(f32) for q in range(planes))
        carry = (x,)
        if summary:
            # The product of the decays starts at 1. A summary starts from x0 = 0, so
            # 1 is `x0 + 1`: an array of the loaded rows' register layout, as a loop
            # carry must keep its layout (a constant would be a splat).
            carry = (x, (x[0] + 1.0,) + x[1:])

        # Block `i` of the pipeline is time block `time_block(i)` of the whole array.
        if reverse:
            time_block = lambda i: (chunk + 1) * blocks_per_chunk - 1 - i
        else:
            time_block = lambda i: chunk * blocks_per_chunk + i
        spec = pl.BlockSpec((planes, block_t, block_c), lambda i: (0, time_block(i), block))
        in_specs = [spec, spec] if per_step else [spec]

        def pipeline_step(index, *refs):
            *inputs, carry = refs
            b_smem = inputs[-1]
            (i,) = index
            if not summary:
                out_block = out_smem.at[jax.lax.rem(i, 2)]
                # The store issued two blocks ago read this buffer: wait for it.
                plgpu.wait_smem_to_gmem(1, wait_read_only=True)

            def step(s, carry):
                t = block_t - 1 - s if reverse else s
                a = (
                    tuple(inputs[0][q, t].astype(f32) for q in range(planes))
                    if per_step
                    else a_const
                )
                x = madd(a, carry[0], tuple(b_smem[q, t].astype(f32) for q in range(planes)))
                if summary:
                    return x, madd(a, carry[1], (0.0,) * planes)
                for q in range(planes):
                    out_block[q, t] = x[q].astype(out_block.dtype)
                return (x,)

            carry = jax.lax.fori_loop(0, block_t, step, carry)
            if not summary:
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(
                    out_block, out_gmem.at[:, pl.ds(time_block(i) * block_t, block_t), channels]
                )
            return carry

        pipeline = plgpu.emit_pipeline(
            pipeline_step,
            grid=(blocks_per_chunk,),
            in_specs=in_specs,
            max_concurrent_steps=_MAX_IN_FLIGHT,
            init_carry=carry,
        )
        carry = pipeline(a_gmem, b_gmem) if per_step else pipeline(b_gmem)
        if summary:
            x, decay = carry
            for target, values in ((end_gmem, x), (decay_gmem, decay)):
                for q in range(planes):
                    out_smem[0, q, 0] = values[q]
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(
                    out_smem.at[0, :, pl.ds(0, 1)], target.at[:, pl.ds(chunk, 1), channels]
                )
                plgpu.wait_smem_to_gmem(0)
        else:
            plgpu.wait_smem_to_gmem(0)

    return body


def _launch(a, b, x0, *, reverse, summary, chunks, block_t, block_c, interpret):
    """One launch on planar, padded arrays: `a` `(k, 1 or T, C)`, `b` `(k, T, C)`,
    `x0` `(k, chunks, C)` float32 (zero for a `summary`); `T` a multiple of `chunks ·
    block_t`, `C` of `block_c`.
    Returns the states `(k, T, C)` in `b`'s dtype, or with `summary` each chunk's end
    state and decay `(k, chunks, C)` in float32."""
    plgpu, _ = mosaic_modules()
    planes, length, width = b.shape
    per_step = a.shape[1] != 1
    blocks_per_chunk = length // (chunks * block_t)
    body = _kernel_body(
        planes=planes, per_step=per_step, reverse=reverse, summary=summary,
        blocks_per_chunk=blocks_per_chunk, block_t=block_t, block_c=block_c,
    )  # fmt: skip
    if summary:
        out_type = (jax.ShapeDtypeStruct((planes, chunks, width), jnp.float32),) * 2
        out_smem = plgpu.SMEM((1, planes, 1, block_c), jnp.float32)
    else:
        out_type = jax.ShapeDtypeStruct(b.shape, b.dtype)
        out_smem = plgpu.SMEM((2, planes, block_t, block_c), b.dtype)
    call = plgpu.kernel(
        body,
        out_type=out_type,
        scratch_types=[
            plgpu.SMEM((planes, 1, block_c), a.dtype),
            plgpu.SMEM((planes, 1, block_c), jnp.float32),
            out_smem,
            plgpu.Barrier(num_arrivals=1, num_barriers=2),
        ],
        grid=(chunks, width // block_c),
        grid_names=("t", "c"),
        interpret=interpret,
    )
    return call(a, b, x0)


def _plan(length: int, width: int, *, planes: int, per_step: bool, itemsize: int):
    """`(block_t, block_c, chunks)` for `width` channels (a multiple of 128): blocks
    of 256 channels when they divide the width and of 32 steps, smaller until the
    shared memory (inputs in flight, two output blocks) fits the budget; and time
    chunks when there are fewer than ~512 channel blocks."""
    block_t, block_c = _BLOCK_T, 256 if width % 256 == 0 else 128

    def smem(block_t, block_c):
        tile = planes * block_t * block_c * itemsize
        return _MAX_IN_FLIGHT * (1 + per_step) * tile + 2 * tile

    while smem(block_t, block_c) > _SMEM_BUDGET:
        if block_c > 128:
            block_c = 128
        else:
            block_t //= 2
    blocks = width // block_c
    chunks = 1
    if blocks < 512 and length >= 8 * block_t:
        chunks = max(1, min(1024 // blocks, length // (4 * block_t)))
    return block_t, block_c, chunks


def mosaic_scan(a, b, x0, reverse, *, chunks=None, interpret=None):
    """The recurrence on planar arrays, any sizes: `a` `(k, 1 or T, C)`, `b` `(k, T,
    C)`, `x0` `(k, C)`, `k` 1 (real) or 2 (real and imaginary planes). Returns `(k, T,
    C)` in `b`'s dtype, accumulated in float32. `chunks`: time chunks (default: by
    the plan); `interpret`: an `InterpretGPUParams` to run on CPU (None: compiled)."""
    planes, length, width = b.shape
    per_step = a.shape[1] != 1
    block_t, block_c, plan_chunks = _plan(
        length, -(-width // 128) * 128, planes=planes, per_step=per_step,
        itemsize=max(a.dtype.itemsize, b.dtype.itemsize),
    )  # fmt: skip
    chunks = plan_chunks if chunks is None else max(1, min(chunks, -(-length // block_t)))
    chunk_len = -(-length // (chunks * block_t)) * block_t
    chunks = -(-length // chunk_len)
    padded_t, padded_c = chunks * chunk_len, -(-width // block_c) * block_c
    # Padding: channels at the end (sliced off); time on the side visited last, so
    # the padded steps (zero decay and input) come after every kept state.
    time_pad = (padded_t - length, 0) if reverse else (0, padded_t - length)
    pad = lambda z, t: jnp.pad(z, ((0, 0), t, (0, padded_c - width)))
    a_p = pad(a, time_pad if per_step else (0, 0))
    b_p = pad(b, time_pad)
    x0_p = pad(x0[:, None].astype(jnp.float32), (0, 0))
    launch = functools.partial(
        _launch,
        reverse=reverse,
        chunks=chunks,
        block_t=block_t,
        block_c=block_c,
        interpret=interpret,
    )
    if chunks == 1:
        xs = launch(a_p, b_p, x0_p, summary=False)
    else:
        zeros = jnp.zeros((planes, chunks, padded_c), jnp.float32)
        ends, decays = launch(a_p, b_p, zeros, summary=True)
        xs = launch(a_p, b_p, _incoming_states(ends, decays, x0_p[:, 0], reverse), summary=False)
    kept = slice(padded_t - length, None) if reverse else slice(0, length)
    return xs[:, kept, :width]


def _incoming_states(ends, decays, x0, reverse):
    """Each chunk's incoming state, `(k, chunks, C)`, from the chunks' end states and
    decays (from zero) and the state before the first visited chunk."""
    order = slice(None, None, -1) if reverse else slice(None)
    ends, decays = ends[:, order], decays[:, order]
    if ends.shape[0] == 2:
        to_c = lambda z: jax.lax.complex(z[0], z[1])
        ends, decays, state = to_c(ends), to_c(decays), to_c(x0)
    else:
        ends, decays, state = ends[0], decays[0], x0[0]

    def step(state, inputs):
        decay, end = inputs
        return decay * state + end, state

    _, incoming = jax.lax.scan(step, state, (decays, ends))
    incoming = (
        jnp.stack([incoming.real, incoming.imag]) if ends.dtype.kind == "c" else incoming[None]
    )
    return incoming[:, order]
