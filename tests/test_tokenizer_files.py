"""Tokenizer folders: `save_tokenizer` / `load_tokenizer` round trips (a converted or
saved tokenizer, and a training run), and what they refuse."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rng

from eqvid.models import (
    VQGAN2D,
    VQGAN2DConfig,
    encode_videos,
    load_tokenizer,
    make_model,
    save_tokenizer,
)

SMALL = dataclasses.replace(VQGAN2DConfig.preset("small"), frame_size=32)


def built(seed: int) -> VQGAN2D:
    model, state = make_model(SMALL, key=jax.random.key(seed))
    assert isinstance(model, VQGAN2D)
    return model.with_state(state)


def test_a_saved_tokenizer_loads_with_its_own_weights(tmp_path):
    model = built(7)  # not the loader's template key: the arrays must come from the file
    save_tokenizer(model, tmp_path / "tok", source="a test")
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["model_name"] == "vqgan2d" and meta["source"] == "a test"
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, VQGAN2D)
    x = rng("tokfiles").uniform(-1, 1, (2, 3, 32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(encode_videos(loaded, x), encode_videos(model, x))
    np.testing.assert_array_equal(loaded.quantize.codebook(), model.quantize.codebook())
    other = built(8)
    assert not np.array_equal(encode_videos(other, x), encode_videos(model, x))


def test_what_load_tokenizer_refuses(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a tokenizer folder"):
        load_tokenizer(tmp_path)
    save_tokenizer(built(0), tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.eqx").write_bytes(b"not arrays")
    with pytest.raises(ValueError, match="does not fit the model"):
        load_tokenizer(tmp_path / "tok")
    meta = tmp_path / "tok" / "tokenizer.json"
    meta.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not an eqvid tokenizer file"):
        load_tokenizer(tmp_path / "tok")
    with pytest.raises(TypeError, match="AbstractVideoTokenizer"):  # the run-time type check
        save_tokenizer(object(), tmp_path / "x")  # type: ignore[arg-type]


def test_batchnorm_running_statistics_are_saved(tmp_path):
    """Arrays that are not trained by gradient (BatchNorm's running statistics, marked
    frozen) are the model's own and come back; only metric networks are left out."""
    import equinox as eqx

    from eqvid.models import VQGAN3D, VQGAN3DConfig

    config = VQGAN3DConfig(
        frame_size=16,
        n_hiddens=8,
        downsample=(2, 4, 4),
        embedding_dim=8,
        n_codes=16,
        norm_type="batch",
        perceptual_weight=0.0,
    )
    model, state = make_model(config, key=jax.random.key(3))
    assert isinstance(model, VQGAN3D)
    model = model.with_state(state)
    where = lambda m: m.encoder.conv_blocks[0].res.norm1.running_mean
    model = eqx.tree_at(where, model, jnp.full(where(model).shape, 0.25, jnp.float32))
    save_tokenizer(model, tmp_path / "tok3d")
    loaded = load_tokenizer(tmp_path / "tok3d")
    assert isinstance(loaded, VQGAN3D)
    np.testing.assert_array_equal(np.asarray(where(loaded)), 0.25)
