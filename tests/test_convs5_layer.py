"""The ConvS5 layer: HiPPO init, the three ways to run it, stability, the real-conv
rewrite of the complex convolutions, and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

import eqvid
from eqvid.nn._conv import conv2d_nhwc


def rel_err(x, y):
    x, y = np.asarray(x), np.asarray(y)
    return np.abs(x - y).max() / max(np.abs(y).max(), 1e-12)


def test_hippo_eigenvalues_match_the_paper():
    lam, v, vinv = eqvid.hippo_block_init(256, 1)
    assert lam.shape == (128,) and v.shape == (256, 128) and vinv.shape == (128, 256)
    np.testing.assert_allclose(np.real(lam), -0.5, atol=1e-9)
    assert -2.1e4 < np.imag(lam).min() < -2.08e4 and -0.22 < np.imag(lam).max() < -0.20
    np.testing.assert_allclose(vinv @ v, np.eye(128), atol=1e-9)  # orthonormal columns
    lam, v, _ = eqvid.hippo_block_init(1024, 32)
    assert lam.shape == (512,)
    assert -330 < np.imag(lam).min() < -320 and -0.31 < np.imag(lam).max() < -0.29
    # J blocks: the same 16 eigenvalues tiled 32 times, V block-diagonal.
    np.testing.assert_allclose(lam.reshape(32, 16), np.tile(lam[:16], (32, 1)))
    assert np.count_nonzero(v) == 32 * 32 * 16


def small_layer(key, channels=6, ssm_size=10, **kw):
    return eqvid.ConvS5(channels, ssm_size, key=key, **kw)


def random_state(key, layer, h, w):
    kr, ki = jax.random.split(key)
    shape = (h, w, layer.state_size)
    return jax.lax.complex(jax.random.normal(kr, shape), jax.random.normal(ki, shape))


def test_parallel_sequential_and_step_agree(getkey):
    layer = small_layer(getkey())
    u = jax.random.normal(getkey(), (13, 5, 7, 6))
    x0 = random_state(getkey(), layer, 5, 7)
    y_par, x_par = jax.jit(lambda u, x: layer(u, x, impl="xla"))(u, x0)
    y_seq, x_seq = jax.jit(lambda u, x: layer(u, x, impl="sequential"))(u, x0)
    y_pl, x_pl = jax.jit(lambda u, x: layer(u, x, impl="pallas"))(u, x0)  # interpreted on CPU
    x_step, y_step = jax.jit(lambda x, u: jax.lax.scan(lambda s, f: layer.step(s, f), x, u))(x0, u)
    assert y_par.shape == u.shape and x_par.shape == (5, 7, 5)
    for y, x in ((y_seq, x_seq), (y_pl, x_pl), (y_step, x_step)):
        assert rel_err(y, y_par) < 1e-5
        assert rel_err(x, x_par) < 1e-5
    # The last state continues the video: two halves == one whole.
    y1, x1 = layer(u[:6], x0)
    y2, x2 = layer(u[6:], x1)
    assert rel_err(jnp.concatenate([y1, y2]), y_par) < 1e-5
    assert rel_err(x2, x_par) < 1e-5


def test_zero_state_is_the_default(getkey):
    layer = small_layer(getkey())
    u = jax.random.normal(getkey(), (4, 3, 3, 6))
    y0, _ = layer(u)
    y1, _ = layer(u, layer.init_state(3, 3))
    np.testing.assert_array_equal(y0, y1)


def test_real_convolutions_equal_the_complex_ones(getkey):
    """B̄*u as one real conv with 2P outputs and 2·Re(C̃*x) as one real conv over
    [Re x, Im x] equal the complex convolutions of the paper."""
    layer = small_layer(getkey(), kernel_size=3)
    u = jax.random.normal(getkey(), (2, 6, 6, 6))
    x = random_state(getkey(), layer, 6, 6)[None]
    lam_bar, gain = eqvid.discretize_zoh(layer.eigenvalues(), jnp.exp(layer.log_step))
    b_bar = gain[None, None, None] * jax.lax.complex(layer.B[..., 0], layer.B[..., 1])  # (k,k,U,P)
    c_tilde = jax.lax.complex(layer.C[..., 0], layer.C[..., 1])  # (k,k,P,U) complex

    def cconv(z, k):
        return jax.lax.conv_general_dilated(
            z, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    want_bu = cconv(u.astype(jnp.complex64), b_bar)
    got_bu = layer._input(u, layer.discretize()[1])
    assert rel_err(got_bu, want_bu) < 1e-5
    want_y = 2 * cconv(x, c_tilde).real
    got_y = conv2d_nhwc(jnp.concatenate([x.real, x.imag], -1), layer.output_kernel())
    assert rel_err(got_y, want_y) < 1e-5
    np.testing.assert_allclose(np.abs(lam_bar), np.abs(layer.discretize()[0]))


def test_discretisation_is_stable_and_bounded(getkey):
    layer = small_layer(getkey(), channels=4, ssm_size=8)
    lam_bar, _ = layer.discretize()
    assert np.all(np.abs(lam_bar) < 1)
    assert np.abs(lam_bar).min() > 0.95 and np.abs(lam_bar).max() < 0.9996
    # Even with eigenvalues pushed into the right half-plane, clipping keeps |Λ̄| < 1 ...
    unstable = eqx.tree_at(lambda m: m.lambda_re, layer, jnp.full_like(layer.lambda_re, 0.3))
    assert np.all(np.abs(unstable.discretize()[0]) < 1)
    # ... and without clipping it would not.
    unclipped = small_layer(getkey(), channels=4, ssm_size=8, clip_eigs=False)
    unclipped = eqx.tree_at(lambda m: m.lambda_re, unclipped, jnp.full_like(layer.lambda_re, 0.3))
    assert np.all(np.abs(unclipped.discretize()[0]) > 1)


def test_no_blow_up_over_10000_steps(getkey):
    layer = small_layer(getkey(), channels=4, ssm_size=8)
    u = jax.random.normal(getkey(), (10_000, 4, 4, 4))

    @jax.jit
    def run(u):
        def body(x, frame):
            x, y = layer.step(x, frame)
            return x, (jnp.max(jnp.abs(x)), jnp.max(jnp.abs(y)))

        return jax.lax.scan(body, layer.init_state(4, 4), u)

    x_last, (state_max, out_max) = run(u)
    assert np.all(np.isfinite(state_max)) and np.all(np.isfinite(out_max))
    # Bounded input → bounded state: the second half is no larger than the first.
    assert state_max[5000:].max() < 2 * state_max[:5000].max()
    assert np.isfinite(np.asarray(x_last)).all()


def test_construction_errors_say_how_to_fix(getkey):
    with pytest.raises(ValueError, match=r"ssm_size.*blocks"):
        eqvid.ConvS5(4, 10, blocks=3, key=getkey())
    with pytest.raises(ValueError, match=r"ssm_size.*even|multiple of 2"):
        eqvid.ConvS5(4, 7, key=getkey())
    with pytest.raises(ValueError, match=r"dt_min <= dt_max.*dt_min=0.1, dt_max=0.01"):
        eqvid.ConvS5(4, 8, dt_min=0.1, dt_max=0.01, key=getkey())


def test_bad_input_shape_names_the_argument(getkey):
    layer = small_layer(getkey())
    with pytest.raises(TypeCheckError, match="u"):
        layer(jnp.zeros((5, 3, 3)))  # missing channel axis
    with pytest.raises(TypeCheckError, match="state"):
        layer(jnp.zeros((5, 3, 3, 6)), jnp.zeros((4, 4, 5), jnp.complex64))  # wrong grid
    with pytest.raises(TypeCheckError, match="frame"):
        layer.step(layer.init_state(3, 3), jnp.zeros((3, 3, 6), jnp.int32))  # wrong dtype
