"""The Mosaic GPU scan kernel (`impl="mosaic"`), run on the CPU by Mosaic GPU's
interpreter, against the float64 NumPy loop and autodiff of a plain `lax.scan`,
gradients included; its CUDA lowering; and the dispatcher that picks a Pallas
backend and falls back with one warning."""

import importlib
import warnings

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_linear_scan import (
    _autodiff_reference,
    assert_within_one_bf16_ulp,
    lower_for_cuda,
    numpy_scan,
    random_problem,
    to_split,
)

from eqvid.kernels import linear_scan, linear_scan_split

scan_module = importlib.import_module("eqvid.kernels.linear_scan")
mosaic = importlib.import_module("eqvid.kernels._linear_scan_mosaic")
backends = importlib.import_module("eqvid.kernels._kernel_backends")

pytestmark = pytest.mark.skipif(
    backends.missing("mosaic") is not None, reason=str(backends.missing("mosaic"))
)


def planar(z):
    """`(T, C)` real or complex → `(planes, T, C)` float32."""
    z = jnp.asarray(z)
    if jnp.iscomplexobj(z):
        return jnp.stack([z.real, z.imag]).astype(jnp.float32)
    return z[None].astype(jnp.float32)


@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
def test_mosaic_kernel_matches_numpy_loop(chunks, reverse, per_step, complex_):
    """T = 70 (not a multiple of the 32-step blocks, nor of 3 chunks) and 130 channels
    (two 128-channel blocks, the second mostly padding)."""
    rng = helpers.rng("mosaic kernel", chunks, reverse, per_step, complex_)
    a, b, x0 = random_problem(rng, 70, (130,), complex_=complex_, per_step=per_step)
    a_planar = planar(a if per_step else a[None])
    got = mosaic.mosaic_scan(
        a_planar, planar(b), planar(x0[None])[:, 0], reverse, chunks=chunks,
        interpret=mosaic.mosaic_modules()[1](),
    )  # fmt: skip
    got = np.asarray(got)
    got = got[0] + 1j * got[1] if complex_ else got[0]
    np.testing.assert_allclose(got, numpy_scan(a, b, x0, reverse), rtol=2e-5, atol=2e-5)


def test_mosaic_kernel_has_no_races():
    """The interpreter's race detector over a chunked, double-buffered launch."""
    interp = importlib.import_module("jax._src.pallas.mosaic_gpu.interpret.interpret_pallas_call")
    rng = helpers.rng("mosaic races")
    a, b, x0 = random_problem(rng, 100, (128,), complex_=True, per_step=True)
    params = mosaic.mosaic_modules()[1](detect_races=True)
    out = mosaic.mosaic_scan(planar(a), planar(b), planar(x0[None])[:, 0], False, chunks=2, interpret=params)  # fmt: skip
    jax.block_until_ready(out)
    assert not interp.get_races().races_found


@pytest.mark.parametrize(
    "reverse, per_step, complex_",
    [(False, False, True), (True, True, True), (False, True, False), (True, False, False)],
)
def test_mosaic_through_linear_scan_with_gradients(reverse, per_step, complex_):
    rng = helpers.rng("mosaic vjp", reverse, per_step, complex_)
    a, b, x0 = random_problem(rng, 40, (2, 3), complex_=complex_, per_step=per_step, a_shape=(3,))
    dtype = jnp.complex64 if complex_ else jnp.float32
    a, b, x0 = (jnp.asarray(v, dtype) for v in (a, b, x0))
    ct = jnp.asarray(
        rng.normal(size=b.shape) + (1j * rng.normal(size=b.shape) if complex_ else 0), dtype
    )
    out, vjp = jax.vjp(
        lambda a, b, x0: linear_scan(a, b, x0, reverse=reverse, impl="mosaic"), a, b, x0
    )
    ref, vjp_ref = jax.vjp(lambda a, b, x0: _autodiff_reference(a, b, x0, reverse), a, b, x0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_mosaic_gradients_through_time_chunks():
    """T = 300 with two channels: the plan splits time into chunks, both ways."""
    rng = helpers.rng("mosaic chunked vjp")
    a, b, x0 = random_problem(rng, 300, (2,), complex_=True, per_step=True)
    assert mosaic._plan(300, 128, planes=2, per_step=True, itemsize=4)[2] > 1
    a, b, x0 = (jnp.asarray(v, jnp.complex64) for v in (a, b, x0))
    ct = jnp.asarray(rng.normal(size=b.shape) + 1j * rng.normal(size=b.shape), jnp.complex64)
    out, vjp = jax.vjp(
        lambda a, b, x0: linear_scan(a, b, x0, reverse=True, impl="mosaic"), a, b, x0
    )
    ref, vjp_ref = jax.vjp(lambda a, b, x0: _autodiff_reference(a, b, x0, True), a, b, x0)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-3)


def test_mosaic_split_layout_and_bfloat16():
    """The ConvS5 layer's path: complex64 decay, bf16 split-layout inputs and outputs,
    float32 inside."""
    rng = helpers.rng("mosaic bf16 split")
    a, b, x0 = random_problem(rng, 64, (2, 5), complex_=True, per_step=False, a_shape=(5,))
    a, x0 = jnp.asarray(a, jnp.complex64), jnp.asarray(x0, jnp.complex64)
    b_split = to_split(jnp.asarray(b, jnp.complex64)).astype(jnp.bfloat16)
    got = linear_scan_split(a, b_split, x0, impl="mosaic")
    assert got.dtype == jnp.bfloat16
    want32 = linear_scan_split(a, b_split.astype(jnp.float32), x0, impl="sequential")
    assert_within_one_bf16_ulp(got, want32)


@pytest.mark.parametrize(
    "T, rest, a_rest, dtype",
    [
        (1200, (1, 8, 8, 64), (64,), jnp.complex64),  # few channels: time chunks
        (37, (1000,), None, jnp.float32),  # per-step real, odd sizes
        (64, (300,), (300,), jnp.bfloat16),
    ],
)
def test_mosaic_lowers_for_cuda(T, rest, a_rest, dtype, monkeypatch):
    """Forward and gradient lower to Mosaic GPU custom calls for an H100 on this CPU
    machine (layouts, TMA boxes and the shared-memory budget are checked here, not by
    the interpreter)."""
    monkeypatch.setattr(scan_module, "_mosaic_interpret", lambda: None)  # compiled
    b = jax.ShapeDtypeStruct((T,) + rest, dtype)
    a = jax.ShapeDtypeStruct((T,) + rest if a_rest is None else a_rest, dtype)

    def fwd_and_grad(a, b):
        f = lambda a, b: jnp.sum(jnp.abs(linear_scan(a, b, impl="mosaic")))
        return jax.value_and_grad(f, argnums=(0, 1))(a, b)

    text = lower_for_cuda(fwd_and_grad, a, b)
    assert text.count("mosaic_gpu") >= 2


def test_forced_mosaic_refuses_float64():
    with jax.enable_x64(True):
        b = jnp.zeros((4, 3), jnp.float64)
        with pytest.raises(
            ValueError, match="impl='mosaic' cannot run here: Mosaic GPU has no float64"
        ):
            linear_scan(jnp.ones(3), b, impl="mosaic")


# -- the dispatcher ---------------------------------------------------------------------


def _simulate(monkeypatch, **reasons):
    """Pretend the installed jax lacks some backends: `backend=reason`."""
    real = backends.missing
    monkeypatch.setattr(backends, "missing", lambda b: reasons.get(b) or real(b))


def _choose(name, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = backends.choose(name, **kwargs)
    return chosen, [str(w.message) for w in caught]


def test_dispatch_prefers_mosaic_on_hopper_and_triton_below():
    assert _choose("t1", capability=(9, 0)) == ("mosaic", [])
    assert _choose("t1", capability=(10, 0)) == ("mosaic", [])
    assert _choose("t1", capability=(8, 0)) == ("triton", [])
    assert _choose("t1", capability=None) == ("triton", [])  # interpreted: Triton first
    assert backends.pallas_backends() == {"mosaic": None, "triton": None}  # this CPU


def test_dispatch_falls_back_with_one_warning(monkeypatch):
    _simulate(monkeypatch, mosaic="jax 9.9 has no Mosaic GPU Pallas backend")
    chosen, said = _choose("t2", capability=(9, 0))
    assert chosen == "triton" and len(said) == 1
    assert "running on 'triton' because mosaic: jax 9.9 has no Mosaic GPU" in said[0]
    assert _choose("t2", capability=(9, 0)) == ("triton", [])  # once per process
    _simulate(monkeypatch, triton="no Pallas Triton backend")
    chosen, said = _choose("t3", capability=(9, 0))
    assert chosen == "xla" and "triton: no Pallas Triton backend" in said[0]
    with pytest.raises(ValueError, match="no Pallas backend can run here"):
        backends.choose("t3", capability=(9, 0), fallback=None)


def test_dispatch_skips_float64_and_backends_that_fail_to_lower():
    chosen, said = _choose("t4", capability=(9, 0), float64=True)
    assert chosen == "triton" and "Mosaic GPU has no float64" in said[0]

    def probe(backend):
        if backend == "mosaic":
            raise RuntimeError("ptxas: unsupported instruction\nmore lines")

    chosen, said = _choose("t5", capability=(9, 0), probe=probe)
    assert chosen == "triton"
    assert "mosaic: lowering failed: RuntimeError: ptxas: unsupported instruction" in said[0]


def test_forced_backend_that_is_missing_names_what_the_machine_has(monkeypatch):
    _simulate(monkeypatch, triton="jax 0.13 has no Pallas Triton backend")
    with pytest.raises(
        ValueError,
        match=r"impl='triton' cannot run here: jax 0.13 .*has 'mosaic', 'xla', 'sequential'",
    ):
        linear_scan(jnp.ones(3), jnp.zeros((4, 3)), impl="triton")
    # "pallas" (any kernel) takes the one that is left.
    with pytest.warns(RuntimeWarning, match="running on 'mosaic' because triton: jax 0.13"):
        assert scan_module._resolve("pallas", jnp.float32, "t6") == "mosaic"


def test_convs5_layer_on_the_mosaic_kernel():
    """The ConvS5 layer's split-layout path through the Mosaic GPU kernel: outputs,
    last state and parameter gradients as with the sequential scan."""
    import equinox as eqx

    from eqvid.nn import ConvS5

    layer = ConvS5(4, 8, impl="sequential", key=jax.random.key(0))
    u = jax.random.normal(jax.random.key(1), (6, 5, 5, 4))

    def run(layer, impl):
        y, state = layer(u, impl=impl)
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.abs(state)), (y, state)

    (_, (y, state)), grads = eqx.filter_value_and_grad(run, has_aux=True)(layer, "mosaic")
    (_, (y_ref, state_ref)), grads_ref = eqx.filter_value_and_grad(run, has_aux=True)(
        layer, "sequential"
    )
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, state_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
