"""Unconditional evaluation (MeBT's protocol): clips drawn from nothing, scored as a
set against real videos of the chosen split, FVD and KVD per run and mean ± std over
runs; the files it writes; the command line's dispatch; and the errors."""

import dataclasses
import json

import equinox as eqx
import jax
import numpy as np
import pytest

from eqvid.data import MovingMNISTConfig, evaluation_videos
from eqvid.evaluate import (
    PROTOCOLS,
    EvalConfig,
    evaluate,
    evaluate_unconditional,
    is_unconditional,
)
from eqvid.evaluate.__main__ import main as cli_main
from eqvid.metrics import fvd_from_features, kvd, videos_to_uint8
from eqvid.models import (
    VQGAN3D,
    ConvS5Config,
    ConvS5VideoModel,
    MeBTConfig,
    MeBTVideoModel,
    VQGAN3DConfig,
    make_model,
    sample_unconditional,
    save_model,
    save_tokenizer,
)

TOKENIZER = VQGAN3DConfig(
    frame_size=32, channels=1, n_hiddens=4, downsample=(2, 4, 4), embedding_dim=8, n_codes=16,
    norm_type="batch", perceptual_weight=0.0, disc_channels=4, disc_layers=1, train_frames=None,
)  # fmt: skip
MEBT = dataclasses.replace(
    MeBTConfig.preset("small"), frame_size=32, channels=1, max_steps=4, dim=32, num_heads=2,
    num_latents=8, sample_steps=4, revise_rounds=1, revise_chunks=2, attention_impl="xla",
)  # fmt: skip
DATA = MovingMNISTConfig(frame_size=32, seq_len=8, train_sequences=100)


def _features(videos):
    """A cheap stand-in for I3D: per-video statistics (the FVD plumbing under test)."""
    v = np.asarray(videos, np.float64)
    return np.stack(
        [v.mean(axis=(1, 2, 3, 4)), v.std(axis=(1, 2, 3, 4)), v[:, -1].mean(axis=(1, 2, 3))], 1
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("mebt")


@pytest.fixture(scope="module")
def model(root):
    tokenizer, state = eqx.filter_jit(lambda: make_model(TOKENIZER, key=jax.random.key(0)))()
    assert isinstance(tokenizer, VQGAN3D)
    save_tokenizer(tokenizer.with_state(state), root / "tokenizer")
    config = dataclasses.replace(MEBT, tokenizer=str(root / "tokenizer"))
    return eqx.filter_jit(lambda: MeBTVideoModel(config, key=jax.random.key(1)))()


@pytest.fixture(scope="module")
def folders(root, model):
    save_model(model, root / "model", source="test")
    data_file = root / "data.json"
    data_file.write_text(
        json.dumps({"dataset_name": "moving_mnist", "data": dataclasses.asdict(DATA)})
    )
    return root / "model", data_file


def _config(folders, **changes) -> EvalConfig:
    model_dir, data_file = folders
    base = EvalConfig(
        model_dir=str(model_dir), data_config=str(data_file), protocol="mebt-16f", horizon=8,
        num_videos=5, runs=2, batch_size=3, seed=4, progress=False,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_the_mebt_protocols_are_the_released_scripts():
    p16, p128 = PROTOCOLS["mebt-16f"], PROTOCOLS["mebt-128f"]
    assert (p16.context, p16.horizon, p16.num_videos, p16.runs) == (0, 16, 2048, 10)
    assert (p128.context, p128.horizon, p128.num_videos, p128.runs) == (0, 128, 512, 5)
    assert p16.real_split == p128.real_split == "train" and p16.metrics == ("fvd",)
    assert p16.unconditional and not PROTOCOLS["quick"].unconditional


def test_runs_are_scored_against_the_same_real_videos(folders, model, tmp_path):
    config = _config(folders, out_dir=str(tmp_path / "out"))
    report = evaluate_unconditional(config, i3d=_features)
    assert (report.runs, report.num_videos, report.num_frames) == (2, 5, 8)
    assert report.seeds == (4, 5) and "train split" in report.real

    # Restated: the first 5 training videos; each run's clips from its seed, batch by batch.
    real = np.concatenate(
        [v for v, _ in evaluation_videos(DATA, num_videos=5, length=8, batch_size=5, split="train")]
    )
    real_f = _features(real.astype(np.float32) / 127.5 - 1.0)
    for r, seed in enumerate((4, 5)):
        key = jax.random.key(seed)
        fake = np.concatenate(
            [
                videos_to_uint8(
                    np.asarray(sample_unconditional(model, n, 8, key=jax.random.fold_in(key, i))),
                    value_range="[-1,1]",
                )
                for i, n in enumerate((3, 2))
            ]
        )
        saved = np.concatenate(
            [np.load(tmp_path / "out" / "samples" / f"run{r}_{i}.npz")["fake"] for i in (0, 1)]
        )
        np.testing.assert_array_equal(saved, fake)
        fake_f = _features(fake.astype(np.float32) / 127.5 - 1.0)
        assert report.scores["fvd"].per_chunk[r] == pytest.approx(fvd_from_features(real_f, fake_f))
        assert report.scores["kvd"].per_chunk[r] == pytest.approx(kvd(real_f, fake_f))
    fvd = report.scores["fvd"]
    assert fvd.per_chunk[0] != fvd.per_chunk[1]  # the runs draw different clips
    assert fvd.mean == pytest.approx(np.mean(fvd.per_chunk))
    assert fvd.std == pytest.approx(np.std(fvd.per_chunk))

    for name in ("metrics.json", "metrics.md", "generated.png", "real.png"):
        assert (tmp_path / "out" / name).is_file(), name
    text = (tmp_path / "out" / "metrics.md").read_text()
    assert "± " in text and "2 runs (seeds 4, 5)" in text and "FVD (lower is better)" in text
    saved_json = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved_json["scores"]["kvd"]["per_chunk"] == list(report.scores["kvd"].per_chunk)


def test_the_command_line_picks_the_unconditional_evaluation(folders, tmp_path):
    assert is_unconditional(_config(folders)) and not is_unconditional(
        _config(folders, protocol="quick", context=None)
    )
    assert is_unconditional(_config(folders, protocol="quick", context=0))
    model_dir, data_file = folders
    args = ["--model-dir", str(model_dir), "--data-config", str(data_file)]
    args += ["--protocol", "mebt-16f", "--i3d-weights", str(tmp_path / "none.npz")]
    with pytest.raises(FileNotFoundError, match="none.npz"):  # before anything is generated
        cli_main(args)
    assert not (model_dir / "eval").exists()


def test_bad_settings_and_models_are_refused(folders, tmp_path):
    with pytest.raises(ValueError, match="FVD \\(with KVD\\) only; psnr"):
        evaluate_unconditional(_config(folders, metrics=("psnr", "fvd")), i3d=_features)
    with pytest.raises(ValueError, match="--chunk 2: an unconditional protocol"):
        evaluate_unconditional(_config(folders, chunk=2), i3d=_features)
    with pytest.raises(ValueError, match="--runs 2: runs are for unconditional"):
        evaluate(_config(folders, protocol="quick", horizon=None, num_videos=None))
    with pytest.raises(ValueError, match="evaluate_unconditional"):
        evaluate(_config(folders, runs=None), i3d=_features)
    with pytest.raises(ValueError, match="gives the model 10 context frames"):
        evaluate_unconditional(
            _config(folders, protocol="quick", runs=None, metrics=("fvd",)), i3d=_features
        )
    with pytest.raises(ValueError, match="frames of shape \\(32, 32, 1\\).*have \\(28, 28, 1\\)"):
        other = tmp_path / "other.json"
        small = dataclasses.replace(DATA, frame_size=28)
        other.write_text(
            json.dumps({"dataset_name": "moving_mnist", "data": dataclasses.asdict(small)})
        )
        evaluate_unconditional(
            _config(folders, data_config=str(other), out_dir=str(tmp_path / "o")), i3d=_features
        )

    pixel, _ = eqx.filter_jit(
        lambda: make_model(
            ConvS5Config(
                frame_size=32, channels=1, encoder_depths=(4,), d_model=4, ssm_size=4, n_layers=1
            ),
            key=jax.random.key(0),
        )
    )()
    assert isinstance(pixel, ConvS5VideoModel)
    with pytest.raises(TypeError, match="must generate from nothing.*ConvS5VideoModel"):
        sample_unconditional(pixel, 2, 4, key=jax.random.key(0))
    save_model(pixel, tmp_path / "convs5", source="test")
    with pytest.raises(ValueError, match="does not draw clips from nothing"):
        evaluate_unconditional(_config(folders, model_dir=str(tmp_path / "convs5")), i3d=_features)
