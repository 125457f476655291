"""SlotSSM as an eqvid model family: the official example's parameter count, generation
that matches decoding the generated video in one parallel pass (also with the
SlotTransformer's attention over time and slot counts per block), training through the
one entry (the loss falls), the options from the command line, and the errors bad
input gets."""

import csv
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvid.data import MovingMNISTConfig
from eqvid.models import SlotSSMConfig, SlotSSMVideoModel, VideoBatch, make_model

TINY = dataclasses.replace(
    SlotSSMConfig.preset("small"), channels=1, encoder_dim=16, num_slots=3, slot_dim=16,
    space_heads=2, d_state=4, headdim=8, broadcast_hidden=8, attention_impl="xla",
)  # fmt: skip


def _size(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree) if hasattr(x, "size"))


def test_the_clevrer_preset_has_the_originals_parameter_count():
    model = eqx.filter_eval_shape(
        lambda: SlotSSMVideoModel(SlotSSMConfig.preset("clevrer"), key=jax.random.key(0))
    )
    # SlotSSM 4,238,944 + ViT encoder 4,919,808 + MAE decoder 3,342,016 (JindongJiang/
    # SlotSSMs train.py; the decoder's 67,072 sin-cos positions frozen).
    assert _size(model) == 12_500_768


@pytest.mark.parametrize(
    "task, changes",
    [
        ("predict", {}),
        ("reconstruct", {}),
        # The SlotTransformer baseline, and slot counts that change between blocks.
        ("predict", {"time_mixer": "attention", "num_slots": (2, 3), "max_frames": 6}),
    ],
)
def test_generation_steps_as_the_parallel_pass_decodes(task, changes):
    config = dataclasses.replace(TINY, task=task, **changes)
    model = SlotSSMVideoModel(config, key=jax.random.key(1))
    context = jax.random.uniform(jax.random.key(2), (3, 32, 32, 1), minval=-1, maxval=1)
    generated = model.generate(context, 4, key=jax.random.key(3))
    assert generated.shape == (4, 32, 32, 1)
    # Decoding [context, generated frames but the last] in one parallel pass gives the
    # same frames at the positions that produced them.
    decoded, slots = model(jnp.concatenate([context, generated[:-1]]))
    np.testing.assert_allclose(decoded[2:], generated, rtol=1e-4, atol=1e-4)
    _, masks = model.decode_with_masks(slots[-1])
    assert masks is not None and masks.shape == (config.slot_counts[-1], 32, 32)
    np.testing.assert_allclose(masks.sum(0), 1.0, rtol=1e-5)


def test_trains_through_the_one_entry_and_the_loss_falls(tmp_path):
    from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig, train

    config = TrainConfig(
        model=dataclasses.replace(TINY, task="predict"),
        data=MovingMNISTConfig(frame_size=32, seq_len=6, num_digits=1),
        optimizer=OptimizerConfig(lr=2e-3, warmup_steps=2),
        run=RunConfig(
            run_dir=str(tmp_path / "run"),
            steps=40,
            batch_size=4,
            log_every=1,
            sample_every=40,
            checkpoint_every=40,
            eval_sequences=2,
            eval_context=3,
            eval_horizon=3,
            progress=False,
            tensorboard=False,
        ),
        mesh=MeshConfig(devices=1),
    )
    result = train(config)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        losses = [float(r["mse"]) for r in csv.DictReader(f)]
    assert len(losses) == 40 and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    assert result.step == 40 and result.report is not None
    # The sample pictures: the rollout strip and each slot's mask over the frames.
    from PIL import Image

    with Image.open(tmp_path / "run" / "samples" / "step_000040_slots.png") as slots:
        height = slots.size[1]
    rows = 2 * (2 + TINY.slot_counts[-1])  # two videos: frames, segmentation, one row per slot
    assert height == rows * (32 + 2)
    assert (tmp_path / "run" / "samples" / "step_000040.png").is_file()


@pytest.mark.parametrize("decoder", ["spatial_broadcast", "vit"])
def test_object_masks_split_every_pixel_between_the_slots(decoder):
    model = SlotSSMVideoModel(dataclasses.replace(TINY, decoder=decoder), key=jax.random.key(5))
    frames = jax.random.uniform(jax.random.key(6), (3, 32, 32, 1), minval=-1, maxval=1)
    masks = model.object_masks(frames)
    assert masks.shape == (3, TINY.slot_counts[-1], 32, 32)
    np.testing.assert_allclose(masks.sum(1), 1.0, rtol=1e-5)
    assert float(masks.min()) >= 0.0
    if decoder == "vit":  # one value per patch
        np.testing.assert_array_equal(
            masks[:, :, :4, :4], masks[:, :, :1, :1] * jnp.ones((1, 1, 4, 4))
        )


def test_bad_input_is_refused_by_name():
    model = make_model(TINY, key=jax.random.key(4))[0]
    assert isinstance(model, SlotSSMVideoModel)
    video = np.zeros((2, 4, 32, 32, 1), np.float32)
    with pytest.raises(ValueError, match="takes no actions"):
        model.check_batch(video, np.zeros((2, 4), np.int32))
    with pytest.raises(
        ValueError, match=r"frames must be \(height, width, channels\) = \(32, 32, 1\)"
    ):
        model.check_batch(np.zeros((2, 4, 28, 28, 1), np.float32), None)
    with pytest.raises(ValueError, match="takes no actions"):
        model.generate(
            jnp.zeros((2, 32, 32, 1)), 2, key=jax.random.key(0), actions=jnp.zeros(4, jnp.int32)
        )
    with pytest.raises(ValueError, match="patch"):
        dataclasses.replace(TINY, patch=5)
    with pytest.raises(ValueError, match="8 or 16"):
        dataclasses.replace(TINY, broadcast_size=3)
    with pytest.raises(ValueError, match="8 or 16"):
        dataclasses.replace(TINY, frame_size=36, patch=4)  # not a multiple of 8
    with pytest.raises(ValueError, match=r"one per block \(`num_blocks` = 2\); got \(3, 3, 3\)"):
        dataclasses.replace(TINY, num_slots=(3, 3, 3))
    with pytest.raises(ValueError, match=r"`time_heads` \(3\) must divide `slot_dim` \(16\)"):
        dataclasses.replace(TINY, time_mixer="attention", time_heads=3)
    short = make_model(
        dataclasses.replace(TINY, time_mixer="attention", max_frames=4), key=jax.random.key(0)
    )[0]
    assert isinstance(short, SlotSSMVideoModel)
    with pytest.raises(
        ValueError, match=r"`max_frames` = 4 frames; 3 context \+ 2 fed back need 5"
    ):
        short.generate(jnp.zeros((3, 32, 32, 1)), 3, key=jax.random.key(0))
    loss, terms, _ = model.loss(VideoBatch(video=jnp.asarray(video)))
    assert set(terms) == {"mse"} and np.isfinite(float(loss))


def test_slot_counts_per_block_and_the_time_mixer_from_the_command_line(tmp_path):
    from eqvid.train._cli import config_from_argv

    base = ["--model", "slotssm", "--dataset", "bouncing_balls", "--frame-size", "32"]
    config = config_from_argv([*base, "--num-slots", "6", "4", "--time-mixer", "attention"])
    assert isinstance(config.model, SlotSSMConfig)
    assert config.model.num_slots == (6, 4) and config.model.time_mixer == "attention"
    assert config_from_argv([*base, "--num-slots", "5"]).model.num_slots == 5
    # The same from a config file (a list, or one number).
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  num_slots: [5, 3]\n")
    assert config_from_argv([*base, "--config", str(path)]).model.num_slots == (5, 3)
    path.write_text("model:\n  num_slots: 2\n")
    assert config_from_argv([*base, "--config", str(path)]).model.num_slots == 2


def test_a_model_with_slot_counts_per_block_saves_and_loads(tmp_path):
    from eqvid.models import load_model, save_model

    config = dataclasses.replace(TINY, num_slots=(2, 3), time_mixer="attention", max_frames=4)
    model = SlotSSMVideoModel(config, key=jax.random.key(7))
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, SlotSSMVideoModel) and loaded.config == config
    frames = jnp.zeros((2, 32, 32, 1))
    np.testing.assert_array_equal(loaded(frames)[0], model(frames)[0])
