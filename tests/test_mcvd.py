"""MCVD (issue 21): the noise schedule against its formulas and MCVD's reversed tables,
the samplers against a float64 restatement of MCVD's update formulas, the NCSN++
U-Net's parts and parameter counts against the original's construction, the masked
conditioning and the block-autoregressive window."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.data import MovingMNISTConfig
from eqvid.evaluate.sample import SampleConfig, sample, sample_model
from eqvid.evaluate.sample import main as sample_main
from eqvid.models import MCVD_PRESETS, MCVDConfig, MCVDVideoModel, VideoBatch, block_autoregressive
from eqvid.nn import (
    DiffusionSchedule,
    NCSNppAttention,
    beta_schedule,
    diffusion_sample,
    eps_and_x0,
    fir_downsample,
    fir_upsample,
    mcvd_groups,
)
from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train

# -- schedule ----------------------------------------------------------------------------


def test_linear_schedule_is_mcvds_tables_read_backwards():
    s = DiffusionSchedule("linear", 1000)
    # MCVD (models/__init__.py get_sigmas, ncsnpp_more.py buffers): betas decreasing,
    # alphas[i] = prod_{j >= i} (1 - betas[j]), label 0 the noisiest.
    mcvd_betas = np.linspace(0.02, 1e-4, 1000)
    mcvd_alphas = np.cumprod(1 - mcvd_betas[::-1])[::-1]
    np.testing.assert_allclose(s.betas, mcvd_betas[::-1], rtol=1e-12)
    t = np.arange(1000)
    np.testing.assert_allclose(s.alpha_bars[t], mcvd_alphas[s.mcvd_label(t)], rtol=1e-12)
    # The values quoted from the original (alphas[0], [99], [990], [999]).
    for label, value in ((0, 4.036e-5), (99, 2.70e-4), (990, 0.998105), (999, 0.9999)):
        np.testing.assert_allclose(s.alpha_bars[s.mcvd_label(label)], value, rtol=2e-3)


def test_cosine_schedule_follows_its_closed_form_and_clips_the_last_beta():
    T, off = 1000, 0.008
    s = DiffusionSchedule("cosine", T)
    f = lambda u: math.cos((u + off) / (1 + off) * math.pi / 2) ** 2
    for t in (0, 1, 10, 500, 900, 990):
        np.testing.assert_allclose(s.alpha_bars[t], f((t + 1) / T) / f(0), rtol=1e-9)
    assert s.betas.max() == pytest.approx(0.999)  # ᾱ's last ratio is 0; clipped
    assert np.all(np.diff(s.alpha_bars) < 0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_forward_process_marginal_is_the_product_of_its_steps(kind):
    # q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t): composing the steps gives the closed
    # form q(x_t | x_0) = N(√ᾱ_t x_0, 1 - ᾱ_t).
    s = DiffusionSchedule(kind, 200)
    mean_scale, var = 1.0, 0.0
    for t, beta in enumerate(s.betas):
        mean_scale *= math.sqrt(1 - beta)
        var = (1 - beta) * var + beta
        np.testing.assert_allclose(mean_scale, math.sqrt(s.alpha_bars[t]), rtol=1e-9)
        np.testing.assert_allclose(var, 1 - s.alpha_bars[t], rtol=1e-9, atol=1e-12)


def test_sampling_grid_and_bad_step_counts():
    s = DiffusionSchedule("linear", 1000)
    grid = s.grid(100)
    assert grid[0] == 999 and grid[-1] == 9 and len(grid) == 100
    # MCVD's range(0, 1000, 10) in eqvid's convention.
    np.testing.assert_array_equal(s.mcvd_label(grid), np.arange(0, 1000, 10))
    np.testing.assert_array_equal(s.grid(1000), np.arange(999, -1, -1))
    with pytest.raises(ValueError, match=r"divide the schedule's 1000 steps, got 30.*25"):
        s.grid(30)
    with pytest.raises(ValueError, match="beta_start ≤ beta_end"):
        beta_schedule("linear", 10, beta_start=0.02, beta_end=1e-4)
    with pytest.raises(ValueError, match="sampling_steps|divide"):
        MCVDConfig(sampling_steps=30)


# -- samplers ----------------------------------------------------------------------------


def _eps_fn(x, t):  # a fixed, non-trivial stand-in for the network
    return 0.7 * jnp.tanh(x) + 0.001 * t.astype(x.dtype)


def _reference(noise, schedule, steps, sampler, eta, keys, final_denoise):
    """MCVD's ddpm_sampler / ddim_sampler (with η) in float64 NumPy, on eqvid's grid."""
    grid = schedule.grid(steps)
    ab = schedule.alpha_bars[grid]
    ab_next = np.concatenate([ab[1:], [1.0]])
    x = np.asarray(noise, np.float64)
    for i, t in enumerate(grid):
        eps = 0.7 * np.tanh(x) + 0.001 * t
        x0 = np.clip((x - math.sqrt(1 - ab[i]) * eps) / math.sqrt(ab[i]), -1, 1)
        z = np.asarray(jax.random.normal(keys[i], x.shape), np.float64)
        if sampler == "ddpm":
            beta = 1 - ab[i] / ab_next[i]
            x = (math.sqrt(ab_next[i]) * beta / (1 - ab[i])) * x0 + (
                math.sqrt(1 - beta) * (1 - ab_next[i]) / (1 - ab[i])
            ) * x
            if i < steps - 1:
                x = x + math.sqrt((1 - ab_next[i]) / (1 - ab[i]) * beta) * z
        else:
            sigma = eta * math.sqrt((1 - ab_next[i]) / (1 - ab[i]) * (1 - ab[i] / ab_next[i]))
            x = math.sqrt(ab_next[i]) * x0 + math.sqrt(1 - ab_next[i] - sigma**2) * eps + sigma * z
    if final_denoise:
        x = x - math.sqrt(1 - ab[-1]) * (0.7 * np.tanh(x) + 0.001 * grid[-1])
    return x


@pytest.mark.parametrize(
    "sampler, eta, final", [("ddpm", 0.0, True), ("ddim", 0.0, True), ("ddim", 0.5, False)]
)
def test_samplers_match_mcvds_formulas(sampler, eta, final):
    schedule = DiffusionSchedule("linear", 100)
    noise = jax.random.normal(jax.random.key(0), (3, 4))
    key = jax.random.key(1)
    got = jax.jit(
        lambda n, k: diffusion_sample(
            _eps_fn, n, schedule, steps=20, sampler=sampler, eta=eta, final_denoise=final, key=k
        )
    )(noise, key)
    want = _reference(noise, schedule, 20, sampler, eta, jax.random.split(key, 20), final)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_ddim_with_eta_zero_is_deterministic_and_an_oracle_recovers_x0():
    schedule = DiffusionSchedule("linear", 1000)
    x0 = jax.random.uniform(jax.random.key(2), (5, 5), minval=-0.9, maxval=0.9)
    ab = jnp.asarray(schedule.alpha_bars, jnp.float32)
    oracle = lambda x, t: (x - jnp.sqrt(ab[t]) * x0) / jnp.sqrt(1 - ab[t])
    noise = jax.random.normal(jax.random.key(3), x0.shape)
    run = lambda fn, sampler, key, final=False: diffusion_sample(
        fn, noise, schedule, steps=25, sampler=sampler, final_denoise=final, key=key
    )
    a = run(_eps_fn, "ddim", jax.random.key(4))
    b = run(_eps_fn, "ddim", jax.random.key(5))  # η = 0: the step keys do not matter
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(run(_eps_fn, "ddpm", jax.random.key(4)), a)
    for sampler in ("ddim", "ddpm"):
        np.testing.assert_allclose(run(oracle, sampler, jax.random.key(6)), x0, atol=1e-4)
    # MCVD's final denoising step scales even a perfect sample by √ᾱ of the last step.
    final = run(oracle, "ddim", jax.random.key(6), final=True)
    np.testing.assert_allclose(final, x0 * math.sqrt(schedule.alpha_bars[39]), atol=1e-4)


def test_v_prediction_converts_exactly_and_an_oracle_recovers_x0():
    schedule = DiffusionSchedule("linear", 1000)
    x0 = jax.random.uniform(jax.random.key(2), (5, 5), minval=-0.9, maxval=0.9)
    ab = jnp.asarray(schedule.alpha_bars, jnp.float32)
    eps_of = lambda x, t: (x - jnp.sqrt(ab[t]) * x0) / jnp.sqrt(1 - ab[t])
    v_oracle = lambda x, t: jnp.sqrt(ab[t]) * eps_of(x, t) - jnp.sqrt(1 - ab[t]) * x0
    x = jax.random.normal(jax.random.key(3), x0.shape)
    for t in (999, 500, 39):
        eps, got_x0 = eps_and_x0(v_oracle(x, t), x, ab[t], "v")
        np.testing.assert_allclose(eps, eps_of(x, t), atol=2e-5)
        np.testing.assert_allclose(got_x0, x0, atol=2e-5)
    run = lambda fn, prediction, sampler: diffusion_sample(
        fn, x, schedule, steps=25, sampler=sampler, final_denoise=False,
        prediction=prediction, key=jax.random.key(6),
    )  # fmt: skip
    for sampler in ("ddim", "ddpm"):
        np.testing.assert_allclose(run(v_oracle, "v", sampler), x0, atol=1e-4)
        # The same oracle read as ε̂ is wrong: the parameterisation is honoured.
        assert not np.allclose(run(v_oracle, "eps", sampler), x0, atol=1e-2)
    with pytest.raises(TypeError, match="parameter 'prediction'"):  # the run-time check
        diffusion_sample(v_oracle, x, schedule, steps=25, prediction="x0", key=jax.random.key(0))  # type: ignore[arg-type]


def test_v_prediction_loss_regresses_v():
    config = dataclasses.replace(_TINY, prob_mask_cond=0.0, prob_mask_future=0.0, prediction="v")
    model = _visible(MCVDVideoModel(config, key=jax.random.key(10)))
    video = jax.random.uniform(jax.random.key(11), (1, 5, 8, 8, 1), minval=-1, maxval=1)
    loss, terms, _ = model.loss(VideoBatch(video), key=None)  # the fixed draws: t, noise
    # Restated: key(0) split as the loss does; first window, no masks, no dropout.
    _, _, _, k_t, k_noise, _ = jax.random.split(jax.random.key(0), 6)
    t = jax.random.randint(k_t, (), 0, config.diffusion_steps)
    a = jnp.asarray(config.diffusion_schedule.alpha_bars, jnp.float32)[t]
    current = video[0, 2:4]
    noise = jax.random.normal(k_noise, current.shape, jnp.float32)
    x_t = jnp.sqrt(a) * current + jnp.sqrt(1 - a) * noise
    out = model.denoise(x_t, t, video[0, :2], video[0, 4:])
    v = jnp.sqrt(a) * noise - jnp.sqrt(1 - a) * current
    np.testing.assert_allclose(loss, 0.5 * jnp.sum((out - v) ** 2), rtol=1e-5)
    assert set(terms) == {"denoising", "v_mse"}


# -- the U-Net's parts -----------------------------------------------------------------


def _upfirdn_1d(x, up, down, pad0, pad1, kernel):
    """upfirdn along axis 0 (score_sde's upfirdn2d_native, one axis): zero-insert,
    pad, correlate with the (symmetric) kernel, keep every `down`-th."""
    n = x.shape[0]
    z = np.zeros((n * up,) + x.shape[1:])
    z[::up] = x
    z = np.concatenate([np.zeros((pad0,) + x.shape[1:]), z, np.zeros((pad1,) + x.shape[1:])])
    k = len(kernel)
    out = np.stack([np.tensordot(kernel, z[i : i + k], axes=(0, 0)) for i in range(len(z) - k + 1)])
    return out[::down]


def test_fir_resampling_matches_upfirdn():
    x = np.random.default_rng(0).normal(size=(2, 6, 8, 3))
    k = np.array([1.0, 3, 3, 1])
    down, up = np.asarray(fir_downsample(jnp.asarray(x))), np.asarray(fir_upsample(jnp.asarray(x)))
    for b in range(2):
        want = _upfirdn_1d(x[b], 1, 2, 1, 1, k / 8)
        want = np.moveaxis(_upfirdn_1d(np.moveaxis(want, 1, 0), 1, 2, 1, 1, k / 8), 0, 1)
        np.testing.assert_allclose(down[b], want, atol=1e-5)
        want = _upfirdn_1d(x[b], 2, 1, 2, 1, k / 4)
        want = np.moveaxis(_upfirdn_1d(np.moveaxis(want, 1, 0), 2, 1, 2, 1, k / 4), 0, 1)
        np.testing.assert_allclose(up[b], want, atol=1e-5)


def test_group_counts_follow_ncsnpp():
    assert [mcvd_groups(c) for c in (32, 64, 96, 128, 192, 256, 6)] == [8, 16, 24, 32, 32, 32, 1]


def test_attention_block_matches_its_formula():
    layer = NCSNppAttention(8, 2, key=jax.random.key(7))
    layer = eqx.tree_at(  # a visible output projection (it starts near zero)
        lambda m: m.NIN_3.weight, layer, jax.random.normal(jax.random.key(8), (8, 8))
    )
    x = np.random.default_rng(1).normal(size=(4, 4, 8))
    g = x.reshape(16, 8, 8 // 8 * 1)  # GroupNorm: mcvd_groups(8) = 2 groups of 4
    g = x.reshape(16, 2, 4)
    g = (g - g.mean(axis=(0, 2), keepdims=True)) / np.sqrt(g.var(axis=(0, 2), keepdims=True) + 1e-6)
    h = g.reshape(16, 8)
    w = lambda d: (np.asarray(d.weight), np.asarray(d.bias))
    q, k, v = (
        (h @ w(d)[0] + w(d)[1]).reshape(16, 2, 4) for d in (layer.NIN_0, layer.NIN_1, layer.NIN_2)
    )
    logits = np.einsum("qhc,khc->hqk", q, k) / 2.0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("hqk,khc->qhc", p, v).reshape(16, 8) @ w(layer.NIN_3)[0] + w(layer.NIN_3)[1]
    want = (x + out.reshape(4, 4, 8)) / math.sqrt(2)
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "preset, count",
    [
        # Counted from the original's construction code (ncsnpp_more.py NCSNpp and
        # SPADE_NCSNpp with layerspp.py's blocks) for each config.
        ("smmnist_big", 27_941_765),
        ("smmnist_spatin", 53_953_989),
        ("smmnist_small", 2_386_850),
        ("kth", 62_831_141),
        ("bair", 62_844_975),
    ],
)
def test_parameter_counts_match_the_originals(preset, count):
    model = eqx.filter_eval_shape(MCVDVideoModel, MCVD_PRESETS[preset], key=jax.random.key(0))
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(model)) == count


# -- the model ---------------------------------------------------------------------------

_TINY = MCVDConfig(
    frame_size=8, num_frames_cond=2, num_frames=2, num_frames_future=1, ngf=8,
    ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), n_head_channels=-1,
    dropout=0.0, diffusion_steps=20, sampling_steps=5, prob_mask_cond=1.0,
    prob_mask_future=1.0,
)  # fmt: skip


def _visible(model):
    """The output conv and every block's last conv start near zero (ε̂ ≈ 0 whatever
    the input): give them weights so the conditioning shows in the output."""
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    keys = jax.random.split(jax.random.key(9), len(leaves))
    fresh = [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return eqx.combine(jax.tree.unflatten(jax.tree.structure(params), fresh), static)


def test_masked_conditioning_does_not_influence_the_loss_or_the_sample():
    model = _visible(MCVDVideoModel(_TINY, key=jax.random.key(10)))
    video = jax.random.uniform(jax.random.key(11), (2, 5, 8, 8, 1), minval=-1, maxval=1)
    other = video.at[:, :2].set(0.5).at[:, 4:].set(-0.3)  # new past and future frames
    key = jax.random.key(12)
    loss = lambda m, v: m.loss(VideoBatch(v), key=key)[0]
    # prob_mask_cond = prob_mask_future = 1: every past and future frame is masked.
    assert float(loss(model, video)) == float(loss(model, other))
    # Unmasked, the same change moves the loss (so the check above can fail).
    config = dataclasses.replace(_TINY, prob_mask_cond=0.0, prob_mask_future=0.0)
    unmasked = _visible(MCVDVideoModel(config, key=jax.random.key(10)))  # the same weights
    assert float(loss(unmasked, video)) != float(loss(unmasked, other))
    # Sampling: a masked side is zeros, whatever the caller had.
    a = model.sample_block(None, None, key=key)
    b = model.sample_block(jnp.zeros((2, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)), key=key)
    c = model.sample_block(video[0, :2], None, key=key)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_block_autoregressive_window_slides_as_mcvd():
    def reference(window, num_frames, per_block):  # video_gen's list arithmetic
        cond, out = list(window), []
        while len(out) < num_frames:
            gen = [sum(cond) * 0.5 + j + 1 for j in range(per_block)]
            out += gen
            n = len(cond)
            cond = cond[per_block:] + gen[max(0, per_block - n) :]
        return out[:num_frames]

    for cond, per_block, num in ((5, 2, 9), (2, 3, 7), (3, 3, 6)):
        window = jnp.arange(1.0, cond + 1).reshape(cond, 1, 1, 1)
        sample = lambda w, k, n=per_block: (jnp.sum(w) * 0.5 + jnp.arange(1.0, n + 1)).reshape(
            n, 1, 1, 1
        )
        got = block_autoregressive(sample, window, num, per_block, key=jax.random.key(0))
        np.testing.assert_allclose(got.ravel(), reference(range(1, cond + 1), num, per_block))


def test_generate_draws_different_futures_and_checks_its_context():
    config = dataclasses.replace(_TINY, num_frames_future=0, prob_mask_future=0.0)
    model = _visible(MCVDVideoModel(config, key=jax.random.key(13)))
    context = jax.random.uniform(jax.random.key(14), (3, 8, 8, 1), minval=-1, maxval=1)
    a = model.generate(context, 5, key=jax.random.key(15))
    b = model.generate(context, 5, key=jax.random.key(16))
    assert a.shape == (5, 8, 8, 1) and float(jnp.abs(a).max()) <= 1.0
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, model.generate(context, 5, key=jax.random.key(15)))
    with pytest.raises(ValueError, match="num_frames_cond = 2.*has 1"):
        model.generate(context[:1], 5, key=jax.random.key(15))
    with pytest.raises(ValueError, match="no future frames"):
        model.interpolate(context[:2], context[:1], key=jax.random.key(15))
    assert model.generate_unconditional(3, key=jax.random.key(17)).shape == (3, 8, 8, 1)


def test_bad_configs_name_the_values():
    with pytest.raises(ValueError, match="halves `frame_size` \\(36\\) 3 times"):
        MCVDConfig(frame_size=36)
    with pytest.raises(ValueError, match="prob_mask_cond"):
        MCVDConfig(prob_mask_cond=1.5)
    model = MCVDVideoModel(_TINY, key=jax.random.key(18))
    with pytest.raises(ValueError, match="need 5 frames.*got videos of 4"):
        model.check_batch(np.zeros((1, 4, 8, 8, 1), np.float32), None)
    with pytest.raises(ValueError, match=r"`past` must be \(2, 8, 8, 1\)"):
        model.sample_block(jnp.zeros((3, 8, 8, 1)), key=jax.random.key(0))


# -- sampling for each task ------------------------------------------------------------


def _interp_model():
    """A tiny MCVD with past and future frames (untrained: the plumbing under test)."""
    config = MCVDConfig(
        frame_size=32, num_frames_cond=2, num_frames=2, num_frames_future=1, ngf=8,
        ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), n_head_channels=-1,
        prob_mask_cond=0.5, prob_mask_future=0.5, sampler="ddim", sampling_steps=2,
    )  # fmt: skip
    return _visible(MCVDVideoModel(config, key=jax.random.key(19)))


_DATA = MovingMNISTConfig(frame_size=32, seq_len=5, train_sequences=8, test_sequences=4)


@pytest.mark.parametrize(
    "task, given, drawn",
    [
        ("predict", ("given_before",), 4),
        ("generate", (), 4),
        ("interpolate", ("given_before", "given_after"), 2),
        ("past", ("given_after",), 2),
    ],
)
def test_sampling_draws_every_task(tmp_path, task, given, drawn):
    config = SampleConfig(task=task, num_videos=2, samples_per_video=3, context=2, horizon=4)
    out = sample_model(_interp_model(), _DATA, config, tmp_path)
    arrays = np.load(out / f"{task}.npz")
    assert sorted(arrays) == sorted(["samples", "truth", *given])
    assert arrays["samples"].shape == (2, 3, drawn, 32, 32, 1)
    assert arrays["samples"].dtype == np.uint8 and arrays["truth"].shape[:2] == (2, drawn)
    assert not np.array_equal(arrays["samples"][:, 0], arrays["samples"][:, 1])  # other keys
    if "given_after" in given:
        assert arrays["given_after"].shape == (2, 1, 32, 32, 1)
    assert (out / f"{task}.png").stat().st_size > 0


def test_sampling_refuses_a_task_the_model_cannot_do(tmp_path):
    plain = MCVDVideoModel(
        dataclasses.replace(_TINY, frame_size=32, num_frames_future=0, prob_mask_future=0.0,
                            attn_resolutions=(16,)),
        key=jax.random.key(20),
    )  # fmt: skip
    with pytest.raises(ValueError, match="--task past: .*--num-frames-future > 0"):
        sample_model(plain, _DATA, SampleConfig(task="past"), tmp_path)
    with pytest.raises(ValueError, match="--num-videos must be ≥ 1, got 0"):
        sample_model(plain, _DATA, SampleConfig(num_videos=0), tmp_path)
    with pytest.raises(ValueError, match="--run-dir is required"):
        sample(SampleConfig())


def test_sample_command_on_a_trained_run(tmp_path, capsys):
    """`python -m eqvid.evaluate.sample` end to end: a one-step run, its checkpoint,
    the picture and arrays in `<run-dir>/samples/<task>/`."""
    run_dir = tmp_path / "run"
    train(
        TrainConfig(
            model=dataclasses.replace(_TINY, frame_size=32, attn_resolutions=(16,)),
            data=_DATA,
            optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1),
            run=RunConfig(
                run_dir=str(run_dir),
                steps=1,
                batch_size=1,
                checkpoint_every=0,
                sample_every=0,
                eval_sequences=0,
                progress=False,
                tensorboard=False,
            ),
            mesh=MeshConfig(devices=1),
        )
    )
    args = ["--run-dir", str(run_dir), "--task", "interpolate", "--num-videos", "1"]
    assert sample_main(args) == 0
    assert (run_dir / "samples" / "interpolate" / "interpolate.png").is_file()
    assert "wrote" in capsys.readouterr().out
