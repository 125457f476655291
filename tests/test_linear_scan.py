"""The reference scan against a float64 NumPy loop, its gradients against autodiff of
a plain `lax.scan` and finite differences, and its errors."""

import functools
from typing import Any, cast

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

# `eqvid.kernels` is the kernels/ folder ([tool.setuptools.package-dir]); Python finds it
# through setuptools' editable-install finder, which pyright cannot follow.
from eqvid.kernels import linear_scan

IMPLS = ["xla", "sequential", "auto"]


def numpy_scan(a, b, x0, reverse):
    """x_t = a_t x_{t∓1} + b_t in float64/complex128, one step at a time."""
    a, b = np.asarray(a), np.asarray(b)
    per_step = a.ndim == b.ndim
    x = np.broadcast_to(np.asarray(x0), b.shape[1:]).astype(np.result_type(a, b, x0))
    out = np.zeros(b.shape, x.dtype)
    for t in range(b.shape[0] - 1, -1, -1) if reverse else range(b.shape[0]):
        x = (a[t] if per_step else a) * x + b[t]
        out[t] = x
    return out


def random_problem(rng, T, rest, *, complex_, per_step, a_shape=None):
    def draw(shape):
        z = rng.normal(size=shape)
        return z + 1j * rng.normal(size=shape) if complex_ else z

    shape = (T,) + rest
    a_shape = shape if per_step else (a_shape or rest)
    mag = rng.uniform(0.3, 0.99, size=a_shape)
    a = (
        mag * np.exp(1j * rng.uniform(-np.pi, np.pi, size=a_shape))
        if complex_
        else mag * rng.choice([-1, 1], size=a_shape)
    )
    return a, draw(shape), draw(rest)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
def test_matches_numpy_loop(impl, reverse, per_step, complex_):
    rng = helpers.rng("test_matches_numpy_loop", impl, reverse, per_step, complex_)
    for T, rest in [(1, (3,)), (7, (5,)), (13, (2, 3, 9)), (33, (1, 7))]:
        a, b, x0 = random_problem(rng, T, rest, complex_=complex_, per_step=per_step)
        want = numpy_scan(a, b, x0, reverse)
        dtype = jnp.complex64 if complex_ else jnp.float32
        got = linear_scan(
            jnp.asarray(a, dtype),
            jnp.asarray(b, dtype),
            jnp.asarray(x0, dtype),
            reverse=reverse,
            impl=impl,
        )
        assert got.shape == b.shape and got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_exact_and_zero_x0(impl):
    rng = np.random.default_rng(0)
    a, b, _ = random_problem(rng, 11, (3, 5), complex_=True, per_step=False, a_shape=(5,))
    with jax.enable_x64(True):
        got = linear_scan(jnp.asarray(a), jnp.asarray(b), impl=impl)
        assert got.dtype == jnp.complex128
        np.testing.assert_allclose(
            np.asarray(got), numpy_scan(a, b, np.zeros((3, 5)), False), rtol=1e-12
        )


def test_real_a_with_complex_b_promotes():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.1, 0.9, size=(4,)).astype(np.float32)
    b = (rng.normal(size=(6, 4)) + 1j * rng.normal(size=(6, 4))).astype(np.complex64)
    got = linear_scan(jnp.asarray(a), jnp.asarray(b))
    assert got.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(got), numpy_scan(a, b, np.zeros(4), False), rtol=1e-5)


def _autodiff_reference(a, b, x0, reverse):
    """The recurrence as a plain `lax.scan`, differentiated by JAX itself."""
    per_step = a.ndim == b.ndim

    def step(x, ab):
        a_t, b_t = ab
        x = a_t * x + b_t
        return x, x

    a_seq = a if per_step else jnp.broadcast_to(a, b.shape)
    x0 = jnp.broadcast_to(x0, b.shape[1:]).astype(jnp.result_type(a, b, x0))
    return jax.lax.scan(step, x0, (a_seq, b), reverse=reverse)[1]


@pytest.mark.parametrize("impl", ["xla", "sequential"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
def test_vjp_matches_autodiff(impl, reverse, per_step, complex_):
    rng = np.random.default_rng(7)
    a, b, x0 = random_problem(rng, 9, (2, 5), complex_=complex_, per_step=per_step, a_shape=(5,))
    with jax.enable_x64(True):
        a, b, x0 = map(jnp.asarray, (a, b, x0))
        ct = jnp.asarray(
            rng.normal(size=b.shape) + (1j * rng.normal(size=b.shape) if complex_ else 0)
        )
        out, vjp = jax.vjp(
            lambda a, b, x0: linear_scan(a, b, x0, reverse=reverse, impl=impl), a, b, x0
        )
        ref, vjp_ref = jax.vjp(lambda a, b, x0: _autodiff_reference(a, b, x0, reverse), a, b, x0)
        np.testing.assert_allclose(out, ref, rtol=1e-12)
        for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
            assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
            np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["xla", "sequential"])
def test_gradients_match_finite_differences(impl):
    rng = np.random.default_rng(3)
    a, b, x0 = random_problem(rng, 8, (3,), complex_=True, per_step=False)
    a_real = rng.uniform(0.2, 0.9, size=(3,))  # also a real `a` with complex `b`
    w = rng.normal(size=(8, 3)) + 1j * rng.normal(size=(8, 3))

    with jax.enable_x64(True):
        w = jnp.asarray(w)

        def f(a_re, a_im, b_re, b_im, x0_re, a2):
            a_c = jax.lax.complex(a_re, a_im) * a2.astype(jnp.complex128)
            xs = linear_scan(a_c, jax.lax.complex(b_re, b_im), x0_re, impl=impl)
            return jnp.sum(jnp.real(w * xs) ** 2)

        args = [jnp.asarray(v) for v in (a.real, a.imag, b.real, b.imag, x0.real, a_real)]
        grads = jax.grad(f, argnums=tuple(range(6)))(*args)
        eps = 1e-6
        for i, (arg, g) in enumerate(zip(args, grads)):
            flat = np.asarray(arg).ravel()
            for j in range(0, flat.size, max(1, flat.size // 4)):
                up, dn = flat.copy(), flat.copy()
                up[j] += eps
                dn[j] -= eps
                a_up, a_dn = list(args), list(args)
                a_up[i] = jnp.asarray(up.reshape(arg.shape))
                a_dn[i] = jnp.asarray(dn.reshape(arg.shape))
                fd = (f(*a_up) - f(*a_dn)) / (2 * eps)
                np.testing.assert_allclose(np.asarray(g).ravel()[j], fd, rtol=1e-6, atol=1e-6)


def test_works_under_jit_and_vmap():
    rng = np.random.default_rng(5)
    a, b, x0 = random_problem(rng, 6, (4,), complex_=True, per_step=True)
    a, b, x0 = (jnp.asarray(v, jnp.complex64) for v in (a, b, x0))
    batched = jax.jit(jax.vmap(linear_scan, in_axes=(None, 1, None), out_axes=1))
    stacked = jnp.stack([b, 2 * b], axis=1)  # (T, 2, 4)
    got = batched(a, stacked, x0)
    np.testing.assert_allclose(got[:, 0], linear_scan(a, b, x0), rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], linear_scan(a, 2 * b, x0), rtol=1e-6)


def test_bad_input_names_the_argument():
    b = jnp.zeros((5, 3))
    with pytest.raises(ValueError, match=r"`a`.*b.shape\[1:\]=\(3,\).*a.shape=\(4,\)"):
        linear_scan(jnp.ones(4), b)
    with pytest.raises(ValueError, match=r"`a`.*per time step.*a.shape=\(4, 3\)"):
        linear_scan(jnp.ones((4, 3)), b)
    with pytest.raises(ValueError, match=r"`x0`.*x0.shape=\(2,\)"):
        linear_scan(jnp.ones(3), b, jnp.ones(2))
    # Dtypes, the implementation's name and the rank of `b` are checked by the
    # annotations (eqvid's import hook), which name the parameter.
    with pytest.raises(TypeCheckError, match="parameter 'a'"):
        linear_scan(jnp.ones(3, jnp.int32), b)
    with pytest.raises(TypeCheckError, match="parameter 'impl'"):
        linear_scan(jnp.ones(3), b, impl=cast(Any, "cuda"))
    with pytest.raises(TypeCheckError, match="parameter 'b'"):
        linear_scan(jnp.ones(()), jnp.zeros(()))


# ----------------------------------------------------------------------------
# The Pallas kernel (interpret mode on CPU) against the references.
# ----------------------------------------------------------------------------

import importlib  # noqa: E402

scan_module = importlib.import_module("eqvid.kernels.linear_scan")


def kernel_scan(a, b, x0, reverse, dtype, **launch):
    """Run the kernel itself on split-layout copies of (a, b, x0)."""
    a, b, x0 = scan_module._check_inputs(*(jnp.asarray(v, dtype) for v in (a, b, x0)))
    cplx = jnp.iscomplexobj(b)
    rest = b.shape[1:]
    m, p = int(np.prod(rest[:-1])), rest[-1]

    def split(z):
        z = z.reshape(z.shape[0], m, p)
        return scan_module._to_split(z) if cplx else z

    xs = scan_module._kernel_scan(
        split(jnp.broadcast_to(a, a.shape[:1] + rest)),
        split(b),
        split(x0[None])[0],
        reverse,
        planes=2 if cplx else 1,
        interpret=True,
        **launch,
    )
    return (scan_module._to_complex(xs) if cplx else xs).reshape(b.shape)


@pytest.mark.parametrize("tile, chunks", [((2, 4), 1), ((2, 4), 3), ((4, 8), 4)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
def test_pallas_kernel_matches_numpy_loop(tile, chunks, reverse, per_step, complex_):
    """Several channel tiles with masked tails (3 × 5 channels in tiles of 2 × 4 or
    4 × 8) and time chunks that do not divide T=11."""
    rng = helpers.rng(
        "test_pallas_kernel_matches_numpy_loop", tile, chunks, reverse, per_step, complex_
    )
    a, b, x0 = random_problem(rng, 11, (3, 5), complex_=complex_, per_step=per_step, a_shape=(5,))
    dtype = jnp.complex64 if complex_ else jnp.float32
    got = kernel_scan(a, b, x0, reverse, dtype, tile=tile, chunks=chunks)
    assert got.shape == b.shape and got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got), numpy_scan(a, b, x0, reverse), rtol=2e-5, atol=2e-5)


def test_pallas_kernel_in_float64_is_exact():
    rng = np.random.default_rng(11)
    a, b, x0 = random_problem(rng, 9, (7,), complex_=True, per_step=True)
    with jax.enable_x64(True):
        got = linear_scan(*(jnp.asarray(v) for v in (a, b, x0)), impl="pallas")
        assert got.dtype == jnp.complex128
        np.testing.assert_allclose(np.asarray(got), numpy_scan(a, b, x0, False), rtol=1e-12)


def assert_within_one_bf16_ulp(got, want32):
    """`got` (bfloat16) is `want32` (float32) rounded once to bfloat16, give or take
    one bfloat16 ulp of that rounded value."""
    assert got.dtype == jnp.bfloat16 and want32.dtype == jnp.float32
    rounded = np.asarray(want32.astype(jnp.bfloat16))
    ulp = np.spacing(np.abs(rounded)).astype(np.float64)
    err = np.abs(np.asarray(got, np.float64) - rounded.astype(np.float64))
    worst = np.unravel_index(np.argmax(err / ulp), err.shape)
    assert np.all(err <= ulp), (
        f"{np.sum(err > ulp)} of {err.size} values differ by more than one bf16 ulp; worst at "
        f"{worst}: got {got[worst]}, float32 {want32[worst]} (bf16 {rounded[worst]}, ulp {ulp[worst]})"
    )


@pytest.mark.parametrize("per_step, reverse", [(False, False), (True, True)])
def test_pallas_accepts_bfloat16_and_accumulates_in_float32(per_step, reverse):
    """bf16 in and out, fp32 inside: the float32 scan of the same (bf16-valued) inputs
    rounded once, not 64 accumulated bf16 roundings."""
    rng = helpers.rng("bf16 scan", per_step, reverse)
    a, b, x0 = random_problem(rng, 64, (6,), complex_=False, per_step=per_step)
    args = [jnp.asarray(v, jnp.bfloat16) for v in (a, b, x0)]
    got = linear_scan(*args, reverse=reverse, impl="pallas")
    assert got.dtype == jnp.bfloat16
    want32 = linear_scan(*(v.astype(jnp.float32) for v in args), reverse=reverse, impl="sequential")
    assert_within_one_bf16_ulp(got, want32)


@pytest.mark.parametrize(
    "reverse, per_step, complex_",
    [(False, False, True), (True, True, True), (False, True, False), (True, False, False)],
)
def test_pallas_vjp_matches_autodiff(reverse, per_step, complex_):
    rng = np.random.default_rng(13)
    a, b, x0 = random_problem(rng, 10, (2, 3), complex_=complex_, per_step=per_step, a_shape=(3,))
    dtype = jnp.complex64 if complex_ else jnp.float32
    a, b, x0 = (jnp.asarray(v, dtype) for v in (a, b, x0))
    ct = jnp.asarray(
        rng.normal(size=b.shape) + (1j * rng.normal(size=b.shape) if complex_ else 0), dtype
    )
    out, vjp = jax.vjp(
        lambda a, b, x0: linear_scan(a, b, x0, reverse=reverse, impl="pallas"), a, b, x0
    )
    ref, vjp_ref = jax.vjp(lambda a, b, x0: _autodiff_reference(a, b, x0, reverse), a, b, x0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_pallas_propagates_nan_and_inf():
    a = jnp.full((4,), 0.5, jnp.float32)
    b = jnp.zeros((6, 4), jnp.float32).at[2, 1].set(jnp.nan).at[3, 2].set(jnp.inf)
    got = np.asarray(linear_scan(a, b, impl="pallas"))
    want = np.asarray(linear_scan(a, b, impl="sequential"))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert np.isnan(got[2:, 1]).all() and np.isinf(got[3:, 2]).all() and np.isfinite(got[:2]).all()


def test_auto_dispatch():
    backend = jax.default_backend()
    if backend == "gpu":
        assert scan_module._resolve("auto", jnp.float32) in ("mosaic", "triton", "xla")
    else:
        want = "sequential" if backend == "cpu" else "xla"
        assert scan_module._resolve("auto", jnp.float32) == want
    # Off GPUs "pallas" is the interpreted Triton kernel while jax has it.
    assert scan_module._resolve("pallas", jnp.float32) in ("triton", "mosaic")


def lower_for_cuda(fn, *args):
    """Lower `fn` for an H100 from a CPU-only machine (Triton shape errors surface here)."""
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType, use_abstract_mesh

    device = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    mesh = AbstractMesh((1,), ("x",), (AxisType.Auto,), abstract_device=device)
    with use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize(
    "T, rest, a_rest, dtype, reverse",
    [
        (300, (8, 16, 16, 128), (128,), jnp.complex64, False),  # the paper's MNIST layer
        (1200, (1, 8, 8, 64), (1, 8, 8, 64), jnp.complex64, True),  # few channels: time chunks
        (37, (1000,), None, jnp.float32, False),  # per-step real, odd sizes
        (64, (300,), (300,), jnp.bfloat16, True),
    ],
)
def test_pallas_lowers_for_cuda(T, rest, a_rest, dtype, reverse):
    b = jax.ShapeDtypeStruct((T,) + rest, dtype)
    a = jax.ShapeDtypeStruct((T,) + rest if a_rest is None else a_rest, dtype)
    x0 = jax.ShapeDtypeStruct(rest, dtype)

    def fwd_and_grad(a, b, x0):
        def f(a, b, x0):
            return jnp.sum(jnp.abs(linear_scan(a, b, x0, reverse=reverse, impl="pallas")))

        return jax.value_and_grad(f, argnums=(0, 1, 2))(a, b, x0)

    text = lower_for_cuda(fwd_and_grad, a, b, x0)
    assert text.count("xla.gpu.triton") >= 2  # forward and the reverse-time gradient


def test_pallas_gradients_through_time_chunks():
    """T=300 with two channels: the launch plan splits time into chunks, forward and
    backward."""
    rng = np.random.default_rng(14)
    a, b, x0 = random_problem(rng, 300, (2,), complex_=True, per_step=True)
    assert scan_module._launch_plan(1, 2, 300)[1] > 1
    a, b, x0 = (jnp.asarray(v, jnp.complex64) for v in (a, b, x0))
    ct = jnp.asarray(rng.normal(size=b.shape) + 1j * rng.normal(size=b.shape), jnp.complex64)
    out, vjp = jax.vjp(
        lambda a, b, x0: linear_scan(a, b, x0, reverse=True, impl="pallas"), a, b, x0
    )
    ref, vjp_ref = jax.vjp(lambda a, b, x0: _autodiff_reference(a, b, x0, True), a, b, x0)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------
# The split layout (what the ConvS5 layer uses).
# ----------------------------------------------------------------------------

from eqvid.kernels import linear_scan_split  # noqa: E402


def to_split(z):
    return jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1)


@pytest.mark.parametrize("impl", ["pallas", "xla", "sequential"])
@pytest.mark.parametrize("per_step, reverse", [(False, False), (True, True)])
def test_split_layout_matches_complex_scan(impl, per_step, reverse):
    rng = np.random.default_rng(15)
    a, b, x0 = random_problem(rng, 9, (2, 3, 5), complex_=True, per_step=per_step, a_shape=(5,))
    a, b, x0 = (jnp.asarray(v, jnp.complex64) for v in (a, b, x0))
    want = linear_scan(a, b, x0, reverse=reverse, impl="sequential")
    got = linear_scan_split(a, to_split(b), x0, reverse=reverse, impl=impl)
    assert got.shape == (9, 2, 3, 10) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, to_split(want), rtol=1e-5, atol=1e-5)

    def loss(f, a, b, x0):
        return jnp.sum(jnp.sin(f(a, b, x0)))

    split_fn = lambda a, b, x0: linear_scan_split(a, b, x0, reverse=reverse, impl=impl)
    ref_fn = lambda a, b, x0: to_split(
        _autodiff_reference(a, scan_module._to_complex(b), x0, reverse)
    )
    grads = jax.grad(functools.partial(loss, split_fn), argnums=(0, 1, 2))(a, to_split(b), x0)
    grads_ref = jax.grad(functools.partial(loss, ref_fn), argnums=(0, 1, 2))(a, to_split(b), x0)
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == g_ref.dtype
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_split_layout_bad_input():
    with pytest.raises(ValueError, match=r"last axis of `b`.*even"):
        linear_scan_split(jnp.ones(3, jnp.complex64), jnp.zeros((4, 7)))
    with pytest.raises(ValueError, match=r"`a`.*b.shape\[1:\]=\(2, 3\)"):
        linear_scan_split(jnp.ones(4, jnp.complex64), jnp.zeros((4, 2, 6)), impl="pallas")


def test_pallas_split_layout_bfloat16_accumulates_in_float32():
    """The layer's path: complex64 decay, bf16 split-layout inputs and outputs."""
    rng = helpers.rng("bf16 split scan")
    a, b, x0 = random_problem(rng, 64, (2, 5), complex_=True, per_step=False, a_shape=(5,))
    a, x0 = jnp.asarray(a, jnp.complex64), jnp.asarray(x0, jnp.complex64)
    b_split = to_split(jnp.asarray(b, jnp.complex64)).astype(jnp.bfloat16)
    got = linear_scan_split(a, b_split, x0, impl="pallas")
    assert got.dtype == jnp.bfloat16
    want32 = linear_scan_split(a, b_split.astype(jnp.float32), x0, impl="sequential")
    assert_within_one_bf16_ulp(got, want32)
