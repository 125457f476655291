"""Sharded training on 8 simulated CPU devices: mesh construction and errors, the
sharding rules (from the parameters' declared roles), and the train step on data,
fsdp and data×model meshes against the same step on the one-device mesh, gradient
accumulation and mixed precision."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import eqvid
from eqvid import ConvS5Config, ConvS5VideoModel, TransformerConfig, TransformerVideoModel
from eqvid.models import VideoBatch
from eqvid.train import ParameterPlan, init_train_state, make_train_step
from eqvid.train._mesh import MeshConfig, make_mesh, tree_shardings

# The 8 simulated CPU devices of conftest, also on a host with fewer accelerators.
CPU = jax.devices("cpu")

TINY_CONVS5 = ConvS5Config(frame_size=16, encoder_depths=(4, 8), d_model=8, ssm_size=8, n_layers=1)
TINY_TRANSFORMER = dataclasses.replace(
    TransformerConfig.preset("small"),
    frame_size=16,
    pixel_patch=1,
    encoder_depths=(4, 8),
    d_model=8,
    patch_size=4,
    width=16,
    n_heads=4,
    mlp_dim=32,
    n_layers=1,
    max_frames=8,
)


def cpu_mesh(config: MeshConfig | None = None, devices: int = 8):
    return make_mesh(config or MeshConfig(), devices=CPU[:devices])


def test_mesh_sizes_and_errors():
    assert cpu_mesh().shape == {"data": 8, "fsdp": 1, "model": 1}
    assert cpu_mesh(MeshConfig(fsdp=4)).shape == {"data": 2, "fsdp": 4, "model": 1}
    assert cpu_mesh(MeshConfig(data=2, fsdp=2, model=2)).shape == {
        "data": 2,
        "fsdp": 2,
        "model": 2,
    }
    with pytest.raises(
        ValueError, match=r"data=-1, fsdp=3, model=1 needs a multiple of 3 devices, but there are 8"
    ):
        cpu_mesh(MeshConfig(fsdp=3))
    with pytest.raises(ValueError, match=r"mesh of 6 devices, but there are 8"):
        cpu_mesh(MeshConfig(data=3, fsdp=2))
    with pytest.raises(ValueError, match="at most one -1"):
        cpu_mesh(MeshConfig(data=-1, fsdp=-1))


def test_sharding_rules_follow_the_declared_roles():
    mesh = cpu_mesh(MeshConfig(data=2, fsdp=2, model=2))
    model = TransformerVideoModel(TINY_TRANSFORMER, key=jax.random.key(0))
    plan = ParameterPlan(model)
    params, _ = plan.partition(model)
    shardings = tree_shardings(params, mesh, 64, plan.model_dims())
    specs = {
        jax.tree_util.keystr(p): s.spec
        for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]
    }
    block = ".temporal.blocks[0]"
    assert specs[block + ".attention.query_weight"] == P("fsdp", "model", None)
    assert specs[block + ".attention.output_weight"] == P("model", None, "fsdp")
    assert specs[block + ".mlp_in.weight"] == P("fsdp", "model")
    assert specs[block + ".mlp_in.bias"] == P("model")
    assert specs[block + ".mlp_out.weight"] == P("model", "fsdp")
    assert specs[block + ".norm1.weight"] == P(None)  # small: replicated
    # Optimiser state follows its parameter (the same role at the same path suffix).
    opt_state = optax.adam(1e-3).init(params)
    mu = tree_shardings(opt_state, mesh, 64, plan.model_dims())[0].mu
    assert mu.temporal.blocks[0].attention.query_weight.spec == P("fsdp", "model", None)


def _videos(batch, length=4, size=16):
    rng = np.random.default_rng(batch)
    return jnp.asarray(rng.uniform(-1, 1, size=(batch, length, size, size, 1)), jnp.float32)


def _train(model, optimizer, mesh, batch, *, key=None, steps=2, **options):
    """`steps` train steps of `model` on `mesh`: `(final model, losses)`."""
    plan = ParameterPlan(model)
    state, rest = init_train_state(model, None, optimizer, plan, mesh, min_fsdp_size=64)
    step = make_train_step(optimizer, plan, mesh, min_fsdp_size=64, **options)
    losses = []
    for i in range(1, steps + 1):
        state, metrics = step(state, rest, batch, key, i)
        losses.append(float(metrics["loss"]))
    return eqx.combine(state.params, rest), losses


def _assert_same(model_a, model_b, rtol=1e-5):
    """Parameters equal within `rtol` of the largest parameter."""
    a = [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model_a, eqx.is_inexact_array))]
    b = [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model_b, eqx.is_inexact_array))]
    assert len(a) == len(b)
    scale = max(np.max(np.abs(x)) for x in b)
    worst = max(np.max(np.abs(x - y)) for x, y in zip(a, b))
    assert worst <= rtol * scale, (worst, scale)


@pytest.mark.parametrize(
    "config,mesh_config",
    [
        (TINY_CONVS5, MeshConfig()),
        (TINY_CONVS5, MeshConfig(fsdp=8)),
        (TINY_TRANSFORMER, MeshConfig(data=4, model=2)),
    ],
    ids=["convs5-data8", "convs5-fsdp8", "transformer-data4-model2"],
)
def test_sharded_step_equals_the_one_device_step(config, mesh_config):
    model = eqvid.make_model(config, key=jax.random.key(1))[0]
    # SGD with momentum, not Adam: some parameters here have (mathematically) zero
    # gradient (biases right before a per-channel GroupNorm), and Adam would blow their
    # round-off up to ±lr steps whose sign depends on the reduction order.
    optimizer = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.05, momentum=0.9))
    batch = VideoBatch(_videos(8))
    want_model, want_losses = _train(model, optimizer, cpu_mesh(devices=1), batch)

    mesh = cpu_mesh(mesh_config)
    plan = ParameterPlan(model)
    state, _ = init_train_state(model, None, optimizer, plan, mesh, min_fsdp_size=64)
    specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
    if mesh_config.fsdp > 1:  # the rule really splits something
        assert any("fsdp" in s for s in specs)
    if mesh_config.model > 1:
        assert any("model" in s for s in specs)
    before = [x.sharding for x in jax.tree.leaves(state.params)]
    got_model, got_losses = _train(model, optimizer, mesh, batch)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    _assert_same(got_model, want_model)
    # Outputs keep the parameters' shardings.
    after = jax.tree.leaves(eqx.filter(got_model, eqx.is_inexact_array))
    assert all(x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(after, before))


def test_gradient_accumulation_equals_one_big_batch():
    """Also with actions and dropout: each video's key is split from the step's key
    before the batch is cut, so micro-batching changes no random draw."""
    config = dataclasses.replace(TINY_CONVS5, dropout=0.2, action_dim=3)
    model = ConvS5VideoModel(config, key=jax.random.key(2))
    optimizer = optax.sgd(0.05, momentum=0.9)
    actions = jnp.asarray(np.random.default_rng(0).integers(-1, 3, size=(16, 4)), jnp.int32)
    batch = VideoBatch(_videos(16), actions)
    mesh = cpu_mesh()
    m1, l1 = _train(model, optimizer, mesh, batch, key=jax.random.key(5))
    m2, l2 = _train(model, optimizer, mesh, batch, key=jax.random.key(5), accumulate=2)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    _assert_same(m2, m1)
    with pytest.raises(
        ValueError,
        match=r"micro-batch size \(batch 16 / accumulate 4\) \(4\) must be divisible by data × fsdp = 8 × 1 = 8",
    ):
        _train(model, optimizer, mesh, batch, accumulate=4)


def test_bfloat16_compute_keeps_float32_master_weights():
    model = ConvS5VideoModel(TINY_CONVS5, key=jax.random.key(3))
    optimizer = optax.adam(1e-3)
    batch = VideoBatch(_videos(8))
    losses = {}
    for dtype in ("float32", "bfloat16"):
        m, losses[dtype] = _train(model, optimizer, cpu_mesh(), batch, steps=1, compute_dtype=dtype)
        for leaf in jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array)):
            assert leaf.dtype in (jnp.float32, jnp.complex64)
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=3e-2)


def test_batch_not_divisible_by_data_axes():
    model = ConvS5VideoModel(TINY_CONVS5, key=jax.random.key(4))
    with pytest.raises(
        ValueError, match=r"the batch size \(6\) must be divisible by data × fsdp = 4 × 2 = 8"
    ):
        _train(
            model, optax.adam(1e-3), cpu_mesh(MeshConfig(data=4, fsdp=2)), VideoBatch(_videos(6))
        )


@pytest.mark.parametrize(
    "model_cls,config", [(ConvS5VideoModel, TINY_CONVS5), (TransformerVideoModel, TINY_TRANSFORMER)]
)
def test_remat_gives_the_same_loss_and_gradients(model_cls, config):
    batch = VideoBatch(_videos(2))
    grads = {}
    for remat in (False, True):
        model = model_cls(dataclasses.replace(config, remat=remat), key=jax.random.key(5))

        def loss(m):
            return m.loss(batch)[0]

        jaxpr = str(jax.make_jaxpr(eqx.filter_grad(loss))(model))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == remat
        grads[remat] = eqx.filter_jit(eqx.filter_value_and_grad(loss))(model)
    np.testing.assert_allclose(float(grads[True][0]), float(grads[False][0]), rtol=1e-6)
    _assert_same(grads[True][1], grads[False][1], rtol=1e-5)
