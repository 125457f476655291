"""Mamba's selective scan fused into Pallas **Mosaic GPU** kernels (forward and
backward), so that neither `(T, channels, d_state)` tensor (the decays
`exp(Δ·A)` or the inputs `Δ·B·x`) is ever written to memory. `selective_scan.py`
holds the reference, the gradient wiring and the dispatcher; this file the kernels.

Layout. Each program owns 128 channels (one warpgroup, one channel per thread) of
one sequence and walks its time steps in blocks of `block_t`, streamed into shared
memory by `plgpu.emit_pipeline` (TMA, two blocks in flight). The state `h`
(`d_state` rows of 128 channels) stays in registers; the state dimension is a
Python loop inside each step, so `exp(Δ_t A)`, `Δ_t B_t x_t` and the output
contraction `C_t · h_t` are formed in registers.

- **Forward** writes `y` (and the last state), plus the state entering each time
  block (`(blocks, d_state, channels)`: the checkpoints of the backward pass).
- **Backward** walks the blocks in reverse. For each block it recomputes the
  block's states forward from its checkpoint into shared memory, then runs the
  reverse recurrence `λ_t = du_t C_t + exp(Δ_{t+1} A) λ_{t+1}` step by step,
  forming every gradient in registers: `dx`, `dΔ`, `dz` per step and channel, `dA`,
  `dD` and `dh0` summed over time, and `dB`, `dC` summed over the program's 128
  channels (the caller sums over channel blocks).
"""

import jax
import jax.numpy as jnp

from ._linear_scan_mosaic import mosaic_modules

LANES = 128
"""Channels per program."""
_MAX_IN_FLIGHT = 2
_SMEM_BUDGET = 200 * 1024


def plan(d_state: int, gate: bool) -> int | None:
    """Time steps per block for `d_state` (padded to a multiple of 4), the largest
    power of two up to 16 whose backward pass fits the shared-memory budget; `None`
    when even one step does not fit."""
    n = -(-d_state // 4) * 4
    k = 3 if gate else 2
    for block_t in (16, 8, 4, 2, 1):
        # The backward pass's shared memory (the forward's is smaller): blocks in
        # flight of (x, Δ, z), dy, (B, C) and a checkpoint; A, dh and D; the block's
        # states; two output blocks of (dx, dΔ, dz) and of (dB, dC).
        tile = block_t * LANES * 4
        pipeline = _MAX_IN_FLIGHT * ((k + 1) * tile + 2 * block_t * n * 4 + n * LANES * 4)
        scratch = (2 * n + 1) * LANES * 4 + block_t * n * LANES * 4
        outputs = 2 * k * tile + 2 * 2 * block_t * n * 4
        if pipeline + scratch + outputs <= _SMEM_BUDGET:
            return block_t
    return None


def _silu_parts(z):
    """`(silu(z), silu'(z))` with `σ(z) = 1 / (1 + exp(-z))`."""
    sig = 1.0 / (1.0 + jnp.exp(-z))
    return z * sig, sig * (1.0 + z * (1.0 - sig))


def _load_lanes(pairs, lanes, barriers):
    """Copy the program's channels `lanes` of each `(global, shared)` pair (rows of
    per-channel values), one barrier each, and wait for all."""
    plgpu, _ = mosaic_modules()
    for i, (gmem, smem) in enumerate(pairs):
        plgpu.copy_gmem_to_smem(gmem.at[:, lanes], smem, barriers.at[i])
    for i in range(len(pairs)):
        plgpu.barrier_wait(barriers.at[i])


def _forward_body(*, n, block_t, blocks, gate):
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    k = 3 if gate else 2

    def body(u_gmem, bc_gmem, a_gmem, d_gmem, h0_gmem, y_gmem, hlast_gmem, ckpt_gmem, *scratch):
        a_smem, d_smem, h_smem, y_buf, ck_buf, barriers = scratch
        cb = jax.lax.axis_index("c")
        lanes = pl.ds(cb * LANES, LANES)
        _load_lanes([(a_gmem, a_smem), (d_gmem, d_smem), (h0_gmem, h_smem)], lanes, barriers)
        A = [a_smem[j] for j in range(n)]
        D = d_smem[0]
        h = tuple(h_smem[j] for j in range(n))

        def block(index, u_s, bc_s, h):
            (i,) = index
            slot = jax.lax.rem(i, 2)
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)  # two blocks ago: free
            for j in range(n):
                ck_buf[slot, j] = h[j]

            def step(s, h):
                x, dt = u_s[0, s], u_s[1, s]
                dtx = dt * x
                h = tuple(jnp.exp(dt * A[j]) * h[j] + dtx * bc_s[0, s, j] for j in range(n))
                y = x * D
                for j in range(n):
                    y = y + h[j] * bc_s[1, s, j]
                if gate:
                    y = y * _silu_parts(u_s[2, s])[0]
                y_buf[slot, s] = y
                return h

            h = jax.lax.fori_loop(0, block_t, step, h)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(y_buf.at[slot], y_gmem.at[pl.ds(i * block_t, block_t), lanes])
            plgpu.copy_smem_to_gmem(ck_buf.at[slot], ckpt_gmem.at[i, :, lanes])
            return h

        specs = [
            pl.BlockSpec((k, block_t, LANES), lambda i: (0, i, cb)),
            pl.BlockSpec((2, block_t, n), lambda i: (0, i, 0)),
        ]
        pipeline = plgpu.emit_pipeline(
            block, grid=(blocks,), in_specs=specs, max_concurrent_steps=_MAX_IN_FLIGHT,
            init_carry=h,
        )  # fmt: skip
        h = pipeline(u_gmem, bc_gmem)
        plgpu.wait_smem_to_gmem(0)
        for j in range(n):
            h_smem[j] = h[j]
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(h_smem, hlast_gmem.at[:, lanes])
        plgpu.wait_smem_to_gmem(0)

    return body


def _backward_body(*, n, block_t, blocks, gate):
    from jax.experimental import pallas as pl

    plgpu, _ = mosaic_modules()
    k = 3 if gate else 2

    def body(u_gmem, g_gmem, bc_gmem, ckpt_gmem, a_gmem, d_gmem, dh_gmem, *rest):
        du_gmem, dbc_gmem, da_gmem, dd_gmem, dh0_gmem = rest[:5]
        a_smem, d_smem, nl_smem, hbuf, du_buf, dbc_buf, barriers = rest[5:]
        cb = jax.lax.axis_index("c")
        lanes = pl.ds(cb * LANES, LANES)
        _load_lanes([(a_gmem, a_smem), (d_gmem, d_smem), (dh_gmem, nl_smem)], lanes, barriers)
        A = [a_smem[j] for j in range(n)]
        D = d_smem[0]
        mu = tuple(nl_smem[j] for j in range(n))  # exp(Δ_{t+1} A) λ_{t+1}; dh_last first
        zero = D * 0.0
        carry = (mu, tuple(zero for _ in range(n)), zero)  # μ, dA, dD

        def block(index, u_s, g_s, bc_s, ck_s, carry):
            (r,) = index
            slot = jax.lax.rem(r, 2)
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)

            def forward(s, h):  # the block's states again; h_{t-1} kept per step
                for j in range(n):
                    hbuf[s, j] = h[j]
                x, dt = u_s[0, s], u_s[1, s]
                dtx = dt * x
                return tuple(jnp.exp(dt * A[j]) * h[j] + dtx * bc_s[0, s, j] for j in range(n))

            jax.lax.fori_loop(0, block_t, forward, tuple(ck_s[0, j] for j in range(n)))

            def backward(i, carry):
                mu, da, dd = carry
                s = block_t - 1 - i
                x, dt, g = u_s[0, s], u_s[1, s], g_s[s]
                dtx = dt * x
                decay = [jnp.exp(dt * A[j]) for j in range(n)]
                h = [decay[j] * hbuf[s, j] + dtx * bc_s[0, s, j] for j in range(n)]
                if gate:
                    out = x * D
                    for j in range(n):
                        out = out + h[j] * bc_s[1, s, j]
                    silu, dsilu = _silu_parts(u_s[2, s])
                    du_buf[slot, 2, s] = g * out * dsilu
                    g = g * silu
                dx = g * D
                dd = dd + g * x
                ddt = zero
                dtx_grad = zero
                new_mu, new_da = [], []
                for j in range(n):
                    dbc_buf[slot, 1, s, j] = jnp.sum(g * h[j])
                    lam = g * bc_s[1, s, j] + mu[j]
                    dtx_grad = dtx_grad + lam * bc_s[0, s, j]
                    dbc_buf[slot, 0, s, j] = jnp.sum(lam * dtx)
                    d_decay = lam * hbuf[s, j] * decay[j]
                    ddt = ddt + d_decay * A[j]
                    new_da.append(da[j] + d_decay * dt)
                    new_mu.append(decay[j] * lam)
                du_buf[slot, 0, s] = dx + dt * dtx_grad
                du_buf[slot, 1, s] = ddt + x * dtx_grad
                return tuple(new_mu), tuple(new_da), dd

            carry = jax.lax.fori_loop(0, block_t, backward, carry)
            t0 = (blocks - 1 - r) * block_t
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(du_buf.at[slot], du_gmem.at[:, pl.ds(t0, block_t), lanes])
            plgpu.copy_smem_to_gmem(dbc_buf.at[slot], dbc_gmem.at[cb, :, pl.ds(t0, block_t)])
            return carry

        last = lambda r: blocks - 1 - r
        specs = [
            pl.BlockSpec((k, block_t, LANES), lambda r: (0, last(r), cb)),
            pl.BlockSpec((block_t, LANES), lambda r: (last(r), cb)),
            pl.BlockSpec((2, block_t, n), lambda r: (0, last(r), 0)),
            pl.BlockSpec((1, n, LANES), lambda r: (last(r), 0, cb)),
        ]
        pipeline = plgpu.emit_pipeline(
            block, grid=(blocks,), in_specs=specs, max_concurrent_steps=_MAX_IN_FLIGHT,
            init_carry=carry,
        )  # fmt: skip
        mu, da, dd = pipeline(u_gmem, g_gmem, bc_gmem, ckpt_gmem)
        plgpu.wait_smem_to_gmem(0)
        for target, rows in ((da_gmem, da), (dh0_gmem, mu)):
            for j in range(n):
                nl_smem[j] = rows[j]
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(nl_smem, target.at[:, lanes])
            plgpu.wait_smem_to_gmem(0)
        d_smem[0] = dd
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(d_smem, dd_gmem.at[:, lanes])
        plgpu.wait_smem_to_gmem(0)

    return body


def _padded(values, *, block_t):
    """Pad every operand for the kernels: time to a multiple of `block_t` (zero Δ:
    the state passes unchanged), channels to a multiple of 128, the state to a
    multiple of 4 (16-byte TMA rows); all float32, the per-channel ones stacked."""
    x, dt, A, B, C, D, z, h0 = values
    t, ch = x.shape
    n = A.shape[1]
    tp, cp, np_ = -(-t // block_t) * block_t, -(-ch // LANES) * LANES, -(-n // 4) * 4
    f32 = lambda v: v.astype(jnp.float32)
    per_channel = [x, dt] + ([z] if z is not None else [])
    u = jnp.stack([jnp.pad(f32(v), ((0, tp - t), (0, cp - ch))) for v in per_channel])
    bc = jnp.stack([jnp.pad(f32(v), ((0, tp - t), (0, np_ - n))) for v in (B, C)])
    state = lambda v: jnp.pad(f32(v).T, ((0, np_ - n), (0, cp - ch)))
    d = jnp.pad(f32(D), (0, cp - ch))[None]
    return u, bc, state(A), d, state(h0), (tp, cp, np_)


def _kernel(body, out_type, scratch, channels, interpret):
    plgpu, _ = mosaic_modules()
    return plgpu.kernel(
        body, out_type=out_type, scratch_types=scratch, grid=(channels // LANES,),
        grid_names=("c",), interpret=interpret,
    )  # fmt: skip


def forward(values, *, interpret):
    """`(y, h_last, checkpoints)` for `values = (x, dt, A, B, C, D, z, h0)` (`z`
    `None`: no gate), sizes unpadded except the checkpoints `(blocks, d_state',
    channels')`."""
    plgpu, _ = mosaic_modules()
    x, z = values[0], values[6]
    t, ch = x.shape
    n = values[2].shape[1]
    gate = z is not None
    block_t = plan(n, gate)
    assert block_t is not None, "checked by the dispatcher"
    u, bc, a, d, h0, (tp, cp, np_) = _padded(values, block_t=block_t)
    blocks = tp // block_t
    body = _forward_body(n=np_, block_t=block_t, blocks=blocks, gate=gate)
    f32 = jnp.float32
    out_type = (
        jax.ShapeDtypeStruct((tp, cp), f32),
        jax.ShapeDtypeStruct((np_, cp), f32),
        jax.ShapeDtypeStruct((blocks, np_, cp), f32),
    )
    scratch = [
        plgpu.SMEM((np_, LANES), f32),
        plgpu.SMEM((1, LANES), f32),
        plgpu.SMEM((np_, LANES), f32),
        plgpu.SMEM((2, block_t, LANES), f32),
        plgpu.SMEM((2, np_, LANES), f32),
        plgpu.Barrier(num_arrivals=1, num_barriers=3),
    ]
    y, h_last, ckpt = _kernel(body, out_type, scratch, cp, interpret)(u, bc, a, d, h0)
    return y[:t, :ch], h_last[:n, :ch].T, ckpt


def backward(values, checkpoints, dy, dh_last, *, interpret):
    """The cotangents of `values = (x, dt, A, B, C, D, z, h0)` (float32, unpadded; `None`
    for an absent `z`) given those of `y` and of the last state."""
    plgpu, _ = mosaic_modules()
    x, z = values[0], values[6]
    t, ch = x.shape
    n = values[2].shape[1]
    gate = z is not None
    k = 3 if gate else 2
    block_t = plan(n, gate)
    assert block_t is not None, "checked by the dispatcher"
    u, bc, a, d, _, (tp, cp, np_) = _padded(values, block_t=block_t)
    blocks = tp // block_t
    f32 = jnp.float32
    g = jnp.pad(dy.astype(f32), ((0, tp - t), (0, cp - ch)))
    dh = jnp.pad(dh_last.astype(f32).T, ((0, np_ - n), (0, cp - ch)))
    body = _backward_body(n=np_, block_t=block_t, blocks=blocks, gate=gate)
    out_type = (
        jax.ShapeDtypeStruct((k, tp, cp), f32),
        jax.ShapeDtypeStruct((cp // LANES, 2, tp, np_), f32),
        jax.ShapeDtypeStruct((np_, cp), f32),
        jax.ShapeDtypeStruct((1, cp), f32),
        jax.ShapeDtypeStruct((np_, cp), f32),
    )
    scratch = [
        plgpu.SMEM((np_, LANES), f32),
        plgpu.SMEM((1, LANES), f32),
        plgpu.SMEM((np_, LANES), f32),
        plgpu.SMEM((block_t, np_, LANES), f32),
        plgpu.SMEM((2, k, block_t, LANES), f32),
        plgpu.SMEM((2, 2, block_t, np_), f32),
        plgpu.Barrier(num_arrivals=1, num_barriers=3),
    ]
    call = _kernel(body, out_type, scratch, cp, interpret)
    du, dbc, da, dd, dh0 = call(u, g, bc, checkpoints, a, d, dh)
    dbc = jnp.sum(dbc, axis=0)[:, :t, :n]
    dx, ddt = du[0, :t, :ch], du[1, :t, :ch]
    dz = du[2, :t, :ch] if gate else None
    return dx, ddt, da[:n, :ch].T, dbc[0], dbc[1], dd[0, :ch], dz, dh0[:n, :ch].T
