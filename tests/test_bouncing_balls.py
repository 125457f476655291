"""Bouncing balls, generated on the fly: deterministic per seed and index, balls
inside the frame and apart, speed kept through wall bounces and collisions (a head-on
collision of equal masses exchanges the velocities), a disjoint test split, and the
pipeline, evaluation and command line reading it like any generated dataset."""

import numpy as np
import pytest

from eqvid.data import (
    BouncingBalls,
    BouncingBallsConfig,
    GeneratedVideosConfig,
    evaluation_videos,
    frame_spec,
    make_dataset,
)
from eqvid.data._bouncing_balls import _PALETTE, advance


def test_videos_are_fixed_by_seed_and_index():
    a = BouncingBalls(num_sequences=3, seq_len=5, frame_size=32, seed=1)
    b = BouncingBalls(num_sequences=3, seq_len=5, frame_size=32, seed=1)
    np.testing.assert_array_equal(a[2]["video"], b[2]["video"])
    assert not np.array_equal(a[1]["video"], a[2]["video"])
    other = BouncingBalls(num_sequences=3, seq_len=5, frame_size=32, seed=2)
    assert not np.array_equal(a[2]["video"], other[2]["video"])
    v = a[0]["video"]
    assert v.shape == (5, 32, 32, 3) and v.dtype == np.uint8
    # Four balls, each its own palette colour, on black.
    colours = {tuple(c) for c in v[0].reshape(-1, 3)}
    assert (0, 0, 0) in colours
    assert all(tuple(int(x) for x in c) in colours for c in _PALETTE[:4])


def test_balls_stay_inside_apart_and_keep_their_speed():
    src = BouncingBalls(num_sequences=8, seq_len=200, frame_size=64, num_balls=4, speed=0.05)
    r = src.radius
    for i in range(8):
        path = src.trajectories(i)
        assert path.min() >= r - 1e-9 and path.max() <= 1 - r + 1e-9
        gaps = [
            np.linalg.norm(path[:, a] - path[:, b], axis=-1).min()
            for a in range(4)
            for b in range(a + 1, 4)
        ]
        assert min(gaps) > 2 * r - 0.02  # overlaps are resolved within a frame
        # Elastic: the total kinetic energy (Σ|v|², from the per-frame displacement far
        # from bounces) stays that of the start, n · speed².
        moves = np.diff(path, axis=0)
        energy = np.sum(moves**2, axis=(1, 2))
        assert np.median(energy) == pytest.approx(4 * 0.05**2, rel=0.05)


def test_a_head_on_collision_exchanges_the_velocities_and_walls_reflect():
    pos = np.array([[0.5, 0.3], [0.5, 0.7]])
    vel = np.array([[0.0, 0.05], [0.0, -0.01]])
    r = 0.08
    for _ in range(200):  # until they have met
        pos, vel = advance(pos, vel, r, 0.25)
        if vel[0, 1] < 0:
            break
    np.testing.assert_allclose(vel, [[0.0, -0.01], [0.0, 0.05]], atol=1e-12)
    # A glancing collision keeps the total momentum and energy.
    pos, vel = np.array([[0.4, 0.4], [0.5, 0.52]]), np.array([[0.03, 0.01], [-0.01, 0.0]])
    _, new_vel = advance(pos, vel, r, 0.25)
    np.testing.assert_allclose(new_vel.sum(0), vel.sum(0), atol=1e-12)
    np.testing.assert_allclose((new_vel**2).sum(), (vel**2).sum(), atol=1e-12)
    assert not np.allclose(new_vel, vel)  # they did collide
    # A wall: position mirrored, velocity reversed.
    p, v = advance(np.array([[0.5, 0.9]]), np.array([[0.0, 0.1]]), r, 1.0)
    np.testing.assert_allclose(p, [[0.5, 2 * (1 - r) - 1.0]])
    np.testing.assert_allclose(v, [[0.0, -0.1]])


def test_the_test_split_is_another_stream_and_the_pipeline_reads_it():
    config = BouncingBallsConfig(frame_size=32, seq_len=6, train_sequences=8, test_sequences=4)
    assert isinstance(config, GeneratedVideosConfig) and config.channels == 3
    train, test = config.splits(test_sequences=4, test_seq_len=9)
    assert len(test) == 4 and test[0]["video"].shape == (9, 32, 32, 3)
    assert not np.array_equal(train[0]["video"][:6], test[0]["video"][:6])
    spec = frame_spec(config)
    assert (spec.height, spec.channels, spec.seq_len, spec.has_actions) == (32, 3, 6, False)
    batch = next(iter(make_dataset(config, batch_size=4, split="test", shuffle=False)))
    assert batch["video"].shape == (4, 6, 32, 32, 3)
    assert float(batch["video"].min()) == -1.0 and float(batch["video"].max()) <= 1.0
    (videos, actions), *_ = list(evaluation_videos(config, num_videos=2, length=10, batch_size=2))
    assert videos.shape == (2, 10, 32, 32, 3) and actions is None
    np.testing.assert_array_equal(videos[0, :9], test[0]["video"])  # the same test stream
    (first, _), *_ = list(
        evaluation_videos(config, num_videos=2, length=6, batch_size=2, split="train")
    )
    np.testing.assert_array_equal(first[1], train[1]["video"])


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="at most 10 balls"):
        BouncingBallsConfig(num_balls=11)
    with pytest.raises(ValueError, match="do not fit"):
        BouncingBallsConfig(num_balls=10, radius=0.2)
    with pytest.raises(ValueError, match="`seq_len` must be ≥ 1"):
        BouncingBallsConfig(seq_len=0)
    with pytest.raises(IndexError, match="out of range"):
        BouncingBalls(num_sequences=2, seq_len=2)[2]


def test_the_command_line_trains_slotssm_on_it(tmp_path):
    from eqvid.train._cli import config_from_argv

    config = config_from_argv(
        ["--model", "slotssm", "--dataset", "bouncing_balls", "--frame-size", "32", "--steps", "1"]
    )
    assert isinstance(config.data, BouncingBallsConfig)
    assert (config.model.frame_size, config.model.channels) == (32, 3)
