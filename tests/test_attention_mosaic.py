"""The Mosaic GPU attention kernels (`impl="mosaic"`: forward, dQ, dK/dV), run on
the CPU by Mosaic GPU's interpreter, against the reference for every mask kind,
gradients included; block skipping; empty rows; races; CUDA lowering; bad input."""

import importlib

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import draw, lower_for_cuda, numpy_attention, rel_err

from eqvid.kernels import AttentionMask, attention
from eqvid.kernels.attention import BlockSizes, _pallas

attention_module = importlib.import_module("eqvid.kernels.attention")
mosaic = importlib.import_module("eqvid.kernels._attention_mosaic")
backends = importlib.import_module("eqvid.kernels._kernel_backends")

pytestmark = pytest.mark.skipif(
    backends.missing("mosaic") is not None, reason=str(backends.missing("mosaic"))
)

# Blocks of 64 everywhere, so short sequences still span several blocks: programs of
# one compute warpgroup (ONE) or two sharing the streamed tiles (TWO), three slots.
ONE = BlockSizes(q=64, kv=64, dq_q=64, dq_kv=64, dkv_q=64, dkv_kv=64, num_stages=3)
TWO = BlockSizes(q=128, kv=64, dq_q=128, dq_kv=64, dkv_q=64, dkv_kv=128)

# (name, q_len, kv_len, heads, kv_heads, dim, dtype, mask): every mask kind and their
# combination, lengths that are not whole blocks, grouped-query heads, head dims that
# are padded (32, 96) or not (64), a decoder's query offset.
CASES = [
    ("bidirectional", 100, 130, 2, 2, 64, jnp.bfloat16, None),
    ("causal, GQA", 130, 130, 2, 1, 32, jnp.float16, AttentionMask(causal=True)),
    (
        "frame-causal-window",
        150,
        150,
        1,
        1,
        32,
        jnp.float16,
        AttentionMask.frame_causal(25, window=3),
    ),
    (
        "window-bidirectional",
        140,
        140,
        1,
        1,
        96,
        jnp.bfloat16,
        AttentionMask(tokens_per_frame=20, window=2),
    ),
    (
        "padding",
        130,
        150,
        1,
        1,
        32,
        jnp.float16,
        AttentionMask(q_lengths=np.array([130, 70]), kv_lengths=np.array([150, 40])),
    ),
    (
        "all-combined, GQA",
        120,
        120,
        2,
        1,
        32,
        jnp.bfloat16,
        AttentionMask(
            causal=True,
            tokens_per_frame=30,
            window=2,
            q_lengths=np.array([120, 70]),
            kv_lengths=np.array([110, 60]),
        ),
    ),
    (
        "decode-offset",
        40,
        200,
        1,
        1,
        32,
        jnp.float16,
        AttentionMask(causal=True, tokens_per_frame=20, q_offset=np.array([20, 160])),
    ),
]
# Batch 2 where the mask differs per batch element, else 1 (each program is costly to
# interpret).
BATCH = {
    name: 2 if name in ("padding", "all-combined, GQA", "decode-offset") else 1
    for name, *_ in CASES
}
IDS = [c[0] for c in CASES]

# bf16/fp16 operands, fp32 accumulation, probabilities rounded to the input dtype
# before P·V: the reference computes in float32 on the same rounded inputs.
TOLERANCE = {jnp.bfloat16: 2e-2, jnp.float16: 4e-3}


def _interpreted(**kwargs):
    return mosaic.mosaic_modules()[1](**kwargs)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mosaic_matches_reference_with_gradients(case):
    """Forward and gradients; the cases alternate between programs of one and of two
    compute warpgroups."""
    _, q_len, kv_len, heads, kv_heads, dim, dtype, mask = case
    blocks = (ONE, TWO)[IDS.index(case[0]) % 2]
    rng = helpers.rng("mosaic attention", case[0])
    q, k, v = draw(rng, BATCH[case[0]], q_len, kv_len, heads, kv_heads, dim, dtype)
    cot = jnp.asarray(rng.normal(size=q.shape), dtype)
    params = _interpreted()

    def run(fn):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cot)

    out, grads = run(lambda q, k, v: _pallas(q, k, v, mask, 0.2, blocks, params, "mosaic"))
    want, want_grads = run(lambda q, k, v: attention(q, k, v, mask=mask, scale=0.2, impl="xla"))
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert rel_err(out, want) < TOLERANCE[dtype]
    for name, g, w in zip("qkv", grads, want_grads):
        assert np.all(np.isfinite(np.asarray(g))), name
        assert rel_err(g, w) < TOLERANCE[dtype], name


def test_public_mosaic_path_default_blocks_against_numpy():
    """`impl="mosaic"` through the public function with its default (fitted) blocks:
    key blocks of 128 forward, 64 backward; against the float64 loop."""
    rng = np.random.default_rng(11)
    q, k, v = draw(rng, 1, 200, 200, 1, 1, 64, jnp.float16)
    mask = AttentionMask.frame_causal(50)
    got = attention(q, k, v, mask=mask, impl="mosaic")
    want = numpy_attention(q, k, v, mask, 1 / np.sqrt(64))
    assert rel_err(got, want) < 4e-3


def test_mosaic_has_no_races():
    """The interpreter's race detector (shared memory, barriers, TMA across the memory
    and compute warpgroups) over the three kernels with two compute warpgroups, and
    the grouped-query walk of the dK/dV kernel."""
    interp = importlib.import_module("jax._src.pallas.mosaic_gpu.interpret.interpret_pallas_call")
    rng = np.random.default_rng(12)
    q, k, v = draw(rng, 1, 160, 160, 2, 1, 64, jnp.bfloat16)
    mask = AttentionMask.frame_causal(40)
    params = _interpreted(detect_races=True)
    fn = lambda q, k, v: _pallas(q, k, v, mask, 0.125, TWO, params, "mosaic")
    out, vjp = jax.vjp(fn, q, k, v)
    jax.block_until_ready(vjp(out))
    assert not interp.get_races().races_found


def test_mosaic_skips_blocks_and_zeroes_empty_rows():
    """Keys beyond every row's range fill whole blocks the kernels must never load
    (NaN there cannot reach outputs or gradients); rows that see no key are zeros with
    zero gradients."""
    rng = np.random.default_rng(13)
    q, k, v = draw(rng, 2, 64, 256, 1, 1, 64, jnp.bfloat16)
    mask = AttentionMask(q_lengths=np.array([64, 40]), kv_lengths=np.array([64, 0]))
    poisoned_k = k.at[:, 64:].set(jnp.nan)
    poisoned_v = v.at[:, 64:].set(jnp.nan)
    fn = lambda q, k, v: _pallas(q, k, v, mask, 0.125, ONE, _interpreted(), "mosaic")
    out, vjp = jax.vjp(fn, q, poisoned_k, poisoned_v)
    dq, dk, dv = vjp(jnp.ones_like(out))
    want = attention(q, k, v, mask=mask, scale=0.125, impl="xla")
    assert rel_err(out, want) < 2e-2
    for x in (out, dq, dk, dv):
        assert np.all(np.isfinite(np.asarray(x, np.float32)))
    assert np.all(np.asarray(out[1], np.float32) == 0)  # batch 1 sees no key at all
    assert np.all(np.asarray(dq[1], np.float32) == 0)
    assert np.all(np.asarray(dk[:, 64:], np.float32) == 0)
    assert np.all(np.asarray(dv[:, 64:], np.float32) == 0)
    assert np.any(np.asarray(out[0], np.float32) != 0)


@pytest.mark.parametrize(
    "dtype, q_len, heads, kv_heads, dim, mask",
    [
        (jnp.bfloat16, 2048, 8, 2, 64, AttentionMask.frame_causal(256)),  # the target shape
        (jnp.float16, 1000, 4, 4, 128, AttentionMask(causal=True)),
        (jnp.bfloat16, 512, 2, 1, 128, AttentionMask(kv_lengths=np.array([300, 512]))),
        (jnp.bfloat16, 300, 4, 4, 32, AttentionMask.frame_causal(30, window=4)),
    ],
)
def test_mosaic_lowers_for_cuda(dtype, q_len, heads, kv_heads, dim, mask, monkeypatch):
    """Forward and gradient lower to Mosaic GPU custom calls for an H100 on this CPU
    machine, with operands from registers as compiled kernels take them (layouts, TMA
    boxes and MMA shapes are checked here, not by the interpreter)."""
    monkeypatch.setattr(attention_module, "_mosaic_interpret", lambda: None)  # compiled
    q = jax.ShapeDtypeStruct((2, q_len, heads, dim), dtype)
    kv = jax.ShapeDtypeStruct((2, q_len, kv_heads, dim), dtype)

    def fwd_and_grad(q, k, v):
        f = lambda q, k, v: jnp.sum(
            attention(q, k, v, mask=mask, impl="mosaic").astype(jnp.float32)
        )
        return jax.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)

    text = lower_for_cuda(fwd_and_grad, q, kv, kv)
    assert text.count("mosaic_gpu") >= 3


def test_mosaic_bad_input():
    q = jnp.ones((1, 64, 1, 64), jnp.bfloat16)
    for blocks, message in (
        (BlockSizes(q=256), r"BlockSizes.q must be 64 or 128 \(query rows per forward program"),
        (BlockSizes(dkv_q=32), r"BlockSizes.dkv_q must be 64 or 128 \(query rows per block"),
        (BlockSizes(num_stages=1), r"BlockSizes.num_stages must be ≥ 2"),
    ):
        with pytest.raises(ValueError, match=message):
            _pallas(q, q, q, None, 0.1, blocks, _interpreted(), "mosaic")
    wide = jnp.ones((1, 64, 1, 128), jnp.bfloat16)
    with pytest.raises(
        ValueError, match=r"BlockSizes.kv = 256 would spill registers at head_dim 128"
    ):
        _pallas(wide, wide, wide, None, 0.1, BlockSizes(kv=256), _interpreted(), "mosaic")
    bad_kv = BlockSizes(q=64, kv=96, dq_q=64, dq_kv=64, dkv_q=64, dkv_kv=64)
    with pytest.raises(ValueError, match=r"BlockSizes.kv must be 64, 128 or 256 \(keys .*got 96"):
        _pallas(q, q, q, None, 0.1, bad_kv, _interpreted(), "mosaic")
    with pytest.raises(
        ValueError, match=r"impl='mosaic' cannot run here: .*head_dim ≤ 128 .*got 320"
    ):
        wide = jnp.ones((1, 8, 1, 320), jnp.bfloat16)
        attention(wide, wide, wide, impl="mosaic")
    with pytest.raises(ValueError, match=r"impl='mosaic' cannot run here: .*TF32"):
        attention(
            q.astype(jnp.float32), q.astype(jnp.float32), q.astype(jnp.float32), impl="mosaic"
        )
