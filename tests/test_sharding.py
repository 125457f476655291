"""Sharded training on 8 simulated CPU devices: mesh construction and errors, the
sharding rules, and the sharded step against the single-device step (data, fsdp
and data×model meshes), gradient accumulation and mixed precision."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from eqvid import ConvS5Config, ConvS5VideoModel, TransformerConfig, TransformerVideoModel
from eqvid.train import make_train_step
from eqvid.train._mesh import MeshConfig, leaf_spec, make_mesh, tree_shardings
from eqvid.train._sharded_step import make_sharded_train_step, shard_state

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

TINY_CONVS5 = ConvS5Config(frame_size=16, encoder_depths=(4, 8), d_model=8, ssm_size=8, n_layers=1)
TINY_TRANSFORMER = dataclasses.replace(
    TransformerConfig.preset("small"),
    frame_size=16,
    encoder_depths=(4, 8),
    d_model=8,
    patch_size=4,
    width=16,
    n_heads=4,
    mlp_dim=32,
    n_layers=1,
    max_frames=8,
)


def test_mesh_sizes_and_errors():
    assert make_mesh().shape == {"data": 8, "fsdp": 1, "model": 1}
    assert make_mesh(MeshConfig(fsdp=4)).shape == {"data": 2, "fsdp": 4, "model": 1}
    assert make_mesh(MeshConfig(data=2, fsdp=2, model=2)).shape == {
        "data": 2,
        "fsdp": 2,
        "model": 2,
    }
    with pytest.raises(
        ValueError, match=r"data=-1, fsdp=3, model=1 needs a multiple of 3 devices, but there are 8"
    ):
        make_mesh(MeshConfig(fsdp=3))
    with pytest.raises(ValueError, match=r"mesh of 6 devices, but there are 8"):
        make_mesh(MeshConfig(data=3, fsdp=2))
    with pytest.raises(ValueError, match="at most one -1"):
        make_mesh(MeshConfig(data=-1, fsdp=-1))


def test_sharding_rules():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, model=2))
    model = TransformerVideoModel(TINY_TRANSFORMER, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    specs = {
        jax.tree_util.keystr(p): leaf_spec(p, x.shape, mesh, 64)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    block = ".blocks[0]"
    assert specs[block + ".attention.query_weight"] == P("fsdp", "model", None)
    assert specs[block + ".attention.output_weight"] == P("model", None, "fsdp")
    assert specs[block + ".mlp_in.weight"] == P("fsdp", "model")
    assert specs[block + ".mlp_out.weight"] == P("model", "fsdp")
    assert specs[block + ".norm1.weight"] == P(None)  # small: replicated
    # Optimiser state follows its parameter (same rule on the same names and shapes).
    opt_state = optax.adam(1e-3).init(params)
    shardings = tree_shardings(opt_state, mesh, 64)
    mu = shardings[0].mu.blocks[0].attention.query_weight
    assert mu.spec == P("fsdp", "model", None)


def _videos(batch, length=4, size=16):
    rng = np.random.default_rng(batch)
    return jnp.asarray(rng.uniform(-1, 1, size=(batch, length, size, size, 1)), jnp.float32)


def _run(step, model, opt_state, videos, *extra, steps=2):
    losses = []
    for _ in range(steps):
        model, opt_state, loss, _ = step(model, opt_state, videos, *extra)
        losses.append(float(loss))
    return model, losses


def _reference(model, optimizer, videos):
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return _run(make_train_step(optimizer), model, opt_state, videos)


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
def test_sharded_step_equals_single_device(config, mesh_config):
    model_cls = ConvS5VideoModel if isinstance(config, ConvS5Config) else TransformerVideoModel
    model = model_cls(config, key=jax.random.key(1))
    # SGD with momentum, not Adam: some parameters here have (mathematically) zero
    # gradient (biases right before a per-channel GroupNorm), and Adam would blow their
    # round-off up to ±lr steps whose sign depends on the reduction order.
    optimizer = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.05, momentum=0.9))
    videos = _videos(8)
    want_model, want_losses = _reference(model, optimizer, videos)

    mesh = make_mesh(mesh_config)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    sharded, opt_state = shard_state(model, opt_state, mesh, min_fsdp_size=64)
    if mesh_config.fsdp > 1:  # the rule really splits something
        specs = [
            x.sharding.spec for x in jax.tree.leaves(eqx.filter(sharded, eqx.is_inexact_array))
        ]
        assert any("fsdp" in s for s in specs)
    before = [x.sharding for x in jax.tree.leaves(eqx.filter(sharded, eqx.is_inexact_array))]
    step = make_sharded_train_step(optimizer, mesh, min_fsdp_size=64)
    got_model, got_losses = _run(step, sharded, opt_state, videos)  # donates `sharded`
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
    videos = _videos(16)
    actions = jnp.asarray(np.random.default_rng(0).integers(-1, 3, size=(16, 4)), jnp.int32)
    mesh = make_mesh()
    results = []
    for k in (1, 2):
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        m, o = shard_state(model, opt_state, mesh)
        results.append(
            _run(
                make_sharded_train_step(optimizer, mesh, accumulate=k),
                m,
                o,
                videos,
                actions,
                jax.random.key(5),
            )
        )
    (m1, l1), (m2, l2) = results
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    _assert_same(m2, m1)
    with pytest.raises(
        ValueError,
        match=r"micro-batch size \(batch 16 / accumulate 4\) \(4\) must be divisible by data × fsdp = 8 × 1 = 8",
    ):
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        make_sharded_train_step(optimizer, mesh, accumulate=4)(
            *shard_state(model, opt_state, mesh), videos
        )


def test_bfloat16_compute_keeps_float32_master_weights():
    model = ConvS5VideoModel(TINY_CONVS5, key=jax.random.key(3))
    optimizer = optax.adam(1e-3)
    videos = _videos(8)
    mesh = make_mesh()
    losses = {}
    for dtype in ("float32", "bfloat16"):
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        m, o = shard_state(model, opt_state, mesh)
        step = make_sharded_train_step(optimizer, mesh, compute_dtype=dtype)
        m, losses[dtype] = _run(step, m, o, videos, steps=1)
        for leaf in jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array)):
            assert leaf.dtype in (jnp.float32, jnp.complex64)
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=3e-2)


def test_batch_not_divisible_by_data_axes():
    model = ConvS5VideoModel(TINY_CONVS5, key=jax.random.key(4))
    optimizer = optax.adam(1e-3)
    mesh = make_mesh(MeshConfig(data=4, fsdp=2))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    m, o = shard_state(model, opt_state, mesh)
    with pytest.raises(
        ValueError, match=r"the batch size \(6\) must be divisible by data × fsdp = 4 × 2 = 8"
    ):
        make_sharded_train_step(optimizer, mesh)(m, o, _videos(6))


@pytest.mark.parametrize(
    "model_cls,config", [(ConvS5VideoModel, TINY_CONVS5), (TransformerVideoModel, TINY_TRANSFORMER)]
)
def test_remat_gives_the_same_loss_and_gradients(model_cls, config):
    videos = _videos(2)
    grads = {}
    for remat in (False, True):
        model = model_cls(dataclasses.replace(config, remat=remat), key=jax.random.key(5))

        def loss(m):
            return jnp.mean(jax.vmap(m.loss)(videos))

        jaxpr = str(jax.make_jaxpr(eqx.filter_grad(loss))(model))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == remat
        grads[remat] = eqx.filter_jit(eqx.filter_value_and_grad(loss))(model)
    np.testing.assert_allclose(float(grads[True][0]), float(grads[False][0]), rtol=1e-6)
    _assert_same(grads[True][1], grads[False][1], rtol=1e-5)
