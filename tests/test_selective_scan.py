"""The fused selective scan (`eqvid.kernels.selective_scan`, Mosaic GPU kernel run
by Mosaic GPU's interpreter on the CPU) against its pure-JAX reference and a float64
NumPy loop, gradients of every input included; its CUDA lowering at Mamba's sizes;
the dispatcher; and the Mamba layer on it."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_linear_scan import lower_for_cuda

from eqvid.kernels import selective_scan
from eqvid.nn import Mamba

sel = importlib.import_module("eqvid.kernels.selective_scan")
fused = importlib.import_module("eqvid.kernels._selective_scan_mosaic")
backends = importlib.import_module("eqvid.kernels._kernel_backends")

pytestmark = pytest.mark.skipif(
    backends.missing("mosaic") is not None, reason=str(backends.missing("mosaic"))
)
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "h0")


def problem(seed, t, channels, d_state, *, gate=True):
    """Mamba-like inputs: positive Δ, negative A."""
    k = jax.random.split(jax.random.key(seed), 8)
    x = jax.random.normal(k[0], (t, channels))
    dt = jax.nn.softplus(jax.random.normal(k[1], (t, channels)) - 1)
    A = -jnp.exp(0.5 * jax.random.normal(k[2], (channels, d_state)))
    B, C = (jax.random.normal(key, (t, d_state)) for key in k[3:5])
    D = jax.random.normal(k[5], (channels,))
    z = jax.random.normal(k[6], (t, channels)) if gate else None
    h0 = jax.random.normal(k[7], (channels, d_state))
    return x, dt, A, B, C, D, z, h0


def numpy_selective_scan(x, dt, A, B, C, D, z, h0):
    """The recurrence one step at a time in float64."""
    x, dt, A, B, C, D, h = (np.asarray(v, np.float64) for v in (x, dt, A, B, C, D, h0))
    ys = []
    for t in range(x.shape[0]):
        h = np.exp(dt[t][:, None] * A) * h + (dt[t] * x[t])[:, None] * B[t][None]
        ys.append(h @ C[t] + D * x[t])
    y = np.stack(ys)
    if z is not None:
        zz = np.asarray(z, np.float64)
        y = y * zz / (1 + np.exp(-zz))
    return y, h


@pytest.mark.parametrize(
    "t, channels, d_state, gate",
    [(20, 130, 6, True), (37, 128, 16, False)],  # padded channels and state; several blocks
)
def test_fused_kernel_matches_the_loop_and_the_reference_gradients(t, channels, d_state, gate):
    args = problem(1, t, channels, d_state, gate=gate)
    y, h = selective_scan(*args, impl="mosaic")
    want_y, want_h = numpy_selective_scan(*args)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h, want_h, rtol=1e-4, atol=1e-4)

    def loss(impl, *args):
        y, h = selective_scan(*args, impl=impl)
        return jnp.sum(jnp.sin(y)) + jnp.sum(0.3 * h)  # cotangents for y and the last state

    wrt = [i for i, v in enumerate(args) if v is not None]
    grads = jax.grad(lambda *a: loss("mosaic", *a), argnums=wrt)(*args)
    want = jax.grad(lambda *a: loss("sequential", *a), argnums=wrt)(*args)
    for i, g, w in zip(wrt, grads, want, strict=True):
        assert g.shape == w.shape, NAMES[i]
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(scale, 1), err_msg=NAMES[i])


def test_fused_kernel_under_vmap_and_without_races():
    """A batch of sequences (the layer's use), with the race detector on."""
    interp = importlib.import_module("jax._src.pallas.mosaic_gpu.interpret.interpret_pallas_call")
    batch = [problem(seed, 9, 128, 4) for seed in (2, 3)]
    stacked = [jnp.stack(v) for v in zip(*batch)]
    params = fused.mosaic_modules()[1](detect_races=True)
    run = lambda *a: fused.forward(a, interpret=params)[:2]
    y, h = jax.vmap(run)(*stacked)
    for i, args in enumerate(batch):
        want_y, want_h = numpy_selective_scan(*args)
        np.testing.assert_allclose(y[i], want_y, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(h[i], want_h, rtol=1e-4, atol=1e-4)
    assert not interp.get_races().races_found


@pytest.mark.parametrize("t, channels, d_state", [(1000, 1536, 16), (64, 256, 64)])
def test_fused_kernel_lowers_for_cuda(t, channels, d_state, monkeypatch):
    """Mamba's sizes (d_inner 1536, d_state 16) and a large state, forward and backward,
    lower to Mosaic GPU calls for an H100 (shared memory and layouts checked)."""
    monkeypatch.setattr(sel, "_interpret", lambda: None)  # compiled
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    per_step, state = f32(t, channels), f32(t, d_state)
    args = (per_step, per_step, f32(channels, d_state), state, state, f32(channels), per_step)

    def grads(*args):
        loss = lambda *a: jnp.sum(selective_scan(*a, impl="mosaic")[0])
        return jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5, 6))(*args)

    assert lower_for_cuda(grads, *args).count("@mosaic_gpu") == 2  # forward, backward


def test_dispatch_and_bad_input():
    args = problem(4, 5, 8, 4)
    if jax.default_backend() != "gpu":  # off GPUs: the reference, linear_scan's choice
        assert sel._resolve("auto", 16, True) == "auto"
    with pytest.raises(ValueError, match="d_state 512 leaves no room in shared memory"):
        selective_scan(
            *args[:2], jnp.zeros((8, 512)), jnp.zeros((5, 512)), jnp.zeros((5, 512)), impl="mosaic"
        )
    with pytest.raises(TypeError, match="parameter 'B'"):  # the run-time type check
        selective_scan(*args[:3], args[3][:, :3], *args[4:])
    x, dt, A, B, C, D, z, h0 = args
    assert z is not None
    with pytest.raises(TypeError, match="parameter 'z'"):
        selective_scan(x, dt, A, B, C, D, z[:4], h0)


def test_forced_kernel_without_mosaic_gpu_names_what_the_machine_has(monkeypatch):
    monkeypatch.setattr(backends, "missing", lambda b: "jax 0.9 has no Mosaic GPU Pallas backend")
    with pytest.raises(
        ValueError, match=r"impl='mosaic' cannot run here: jax 0.9 .* has 'xla', 'sequential'"
    ):
        selective_scan(*problem(5, 4, 8, 4), impl="mosaic")


def test_mamba_on_the_fused_kernel():
    """The layer with `scan_impl="mosaic"` gives the unfused layer's outputs and
    parameter gradients."""
    # The interpreter's ordered callbacks cannot sit under `jax.checkpoint` (the
    # memory-efficient path); compiled on a GPU the kernel has no such effects.
    make = lambda impl: Mamba(
        16, d_state=4, expand=8, scan_impl=impl, use_mem_eff_path=False, key=jax.random.key(6)
    )
    layer, fused_layer = make("sequential"), make("mosaic")
    u = jax.random.normal(jax.random.key(7), (12, 16))
    loss = lambda m: jnp.sum(jnp.sin(m(u)[0]))
    np.testing.assert_allclose(fused_layer(u)[0], layer(u)[0], rtol=1e-4, atol=1e-5)
    grads = jax.grad(loss)(fused_layer)
    want = jax.grad(loss)(layer)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(
            g, w, rtol=1e-3, atol=1e-5 * max(1.0, float(jnp.max(jnp.abs(w))))
        )
