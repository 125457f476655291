"""`make_dataset` over the file formats: windows, actions alignment, value ranges,
determinism, resume, sharding, workers, bad files, configs and `frame_spec`."""

import argparse
import dataclasses
import importlib.util
import json
import pathlib
from typing import Any, cast

import numpy as np
import pytest
from jaxtyping import TypeCheckError

from eqvid._cli import add_config_arguments, config_from_args
from eqvid.data import (
    DATASETS,
    ArrayRecordConfig,
    BadVideoError,
    BadVideoWarning,
    FrameFolderConfig,
    MovingMNISTConfig,
    TecoConfig,
    TecoVideos,
    VideoFolderConfig,
    dataset_config_class,
    evaluation_videos,
    frame_spec,
    make_dataset,
    pack_array_record,
)

H = W = 8
NUM_VIDEOS = 10


def tagged(video_id: int, num_frames: int) -> np.ndarray:
    """Frames whose pixel (0, 0) holds (video id, frame index, 7)."""
    video = np.random.default_rng(video_id).integers(0, 256, (num_frames, H, W, 3), dtype=np.uint8)
    video[:, 0, 0] = np.stack(
        [np.full(num_frames, video_id), np.arange(num_frames), np.full(num_frames, 7)], 1
    )
    return video


@pytest.fixture(scope="module")
def teco(tmp_path_factory):
    """10 npz trajectories of 12..21 frames; action of frame t of video v = (v + t) % 6."""
    root = tmp_path_factory.mktemp("teco_pipe")
    for split in ("train", "test"):
        (root / split).mkdir()
        for v in range(NUM_VIDEOS):
            n = 12 + v
            np.savez(
                root / split / f"{v:02d}.npz", video=tagged(v, n), actions=(v + np.arange(n)) % 6
            )
    return TecoConfig(root=str(root), seq_len=4, frame_stride=2)


def ids(batch):
    """(video id, frame indices) of every example of a batch."""
    tags = np.rint((batch["video"][:, :, 0, 0, :2] + 1.0) * 127.5).astype(int)
    return [(int(t[0, 0]), tuple(int(f) for f in t[:, 1])) for t in tags]


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_sources_check_public_calls_and_hot_helpers_skip_the_check(teco):
    """eqvid's runtime type check stays on a source's public methods; the private
    helpers a window goes through (`hot_path`) skip it, so a window costs one check."""
    from eqvid.data._windows import window_span

    source = TecoVideos(teco.root, "train")
    with pytest.raises(TypeCheckError, match="parameter 'frames'"):
        source.read_frames(0, cast(Any, [0, 1]))
    with pytest.raises(TypeCheckError, match="parameter 'rng'"):
        source.read_window(0, 4, 2, cast(Any, 3))
    assert source.read_window(0, 4, 2, np.random.default_rng(0))["video"].shape == (4, H, W, 3)
    assert window_span(cast(Any, 2.5), 2) == 4.0  # a float is not an int: not checked


def test_training_batches_windows_and_actions(teco):
    batches = take(make_dataset(teco, batch_size=3, seed=1), 8)
    seen = set()
    for batch in batches:
        assert batch["video"].dtype == np.float32 and batch["video"].shape == (3, 4, H, W, 3)
        assert batch["actions"].dtype == np.int32 and batch["actions"].shape == (3, 4)
        assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
        for (video, frames), actions in zip(ids(batch), batch["actions"]):
            start = frames[0]
            assert frames == (start, start + 2, start + 4, start + 6)  # stride 2
            assert 0 <= start <= (12 + video) - 7  # the window fits in the video
            np.testing.assert_array_equal(actions, (video + np.array(frames)) % 6)  # aligned
            seen.add((video, start))
    # The first epoch (10 videos) holds every video once; windows start at random frames.
    first_epoch = [v for b in batches[:4] for v, _ in ids(b)][:NUM_VIDEOS]
    assert sorted(first_epoch) == list(range(NUM_VIDEOS))
    assert len({start for _, start in seen}) > 3


def test_evaluation_is_every_video_once_in_order_from_frame_zero(teco):
    config = dataclasses.replace(teco, value_range="unit")
    ds = make_dataset(
        config,
        split="test",
        batch_size=4,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        window="start",
    )
    batches = list(ds)
    assert [len(b["video"]) for b in batches] == [4, 4, 2]
    examples = [x for b in batches for x in ids_unit(b)]
    assert examples == [(v, (0, 2, 4, 6)) for v in range(NUM_VIDEOS)]
    np.testing.assert_allclose(
        batches[0]["video"][0], tagged(0, 12)[[0, 2, 4, 6]] / 255.0, rtol=1e-6
    )


def test_evaluation_videos_are_centre_cropped_even_when_training_crops_at_random(tmp_path):
    (tmp_path / "test").mkdir()
    video = np.random.default_rng(0).integers(0, 256, (6, 8, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "test" / "0.npz", video=video)
    data = TecoConfig(root=str(tmp_path), seq_len=3, frame_size=8, crop="random", actions=False)
    ((got, actions),) = list(evaluation_videos(data, num_videos=1, length=4, batch_size=1))
    assert actions is None
    np.testing.assert_array_equal(got[0], video[:4, :, 2:10])  # columns 2..9: the centre


def ids_unit(batch):
    tags = np.rint(batch["video"][:, :, 0, 0, :2] * 255.0).astype(int)
    return [(int(t[0, 0]), tuple(int(f) for f in t[:, 1])) for t in tags]


def test_deterministic_given_seed(teco):
    a = take(make_dataset(teco, batch_size=3, seed=5), 4)
    b = take(make_dataset(teco, batch_size=3, seed=5), 4)
    c = take(make_dataset(teco, batch_size=3, seed=6), 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["video"], y["video"])
        np.testing.assert_array_equal(x["actions"], y["actions"])
    assert [ids(x) for x in a] != [ids(x) for x in c]


def test_resume_from_iterator_state(teco):
    ds = make_dataset(teco, batch_size=3, seed=2)
    it = iter(ds)
    for _ in range(5):  # past the first epoch boundary (10 videos)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    expected = [next(it) for _ in range(4)]
    resumed = iter(make_dataset(teco, batch_size=3, seed=2))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["video"], want["video"])
        np.testing.assert_array_equal(got["actions"], want["actions"])


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_processes_see_disjoint_videos_covering_the_set(teco, shuffle):
    shares = []
    for index in range(2):
        ds = make_dataset(
            teco,
            split="test",
            batch_size=2,
            seed=3,
            shuffle=shuffle,
            num_epochs=1,
            drop_remainder=False,
            window="start",
            process_index=index,
            process_count=2,
        )
        shares.append([v for b in ds for v, _ in ids(b)])
    assert (len(shares[0]), len(shares[1])) == (6, 4)  # batches 0, 2, 4 and 1, 3
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(NUM_VIDEOS))


@pytest.mark.parametrize("form", ["teco", "moving_mnist"])
def test_processes_side_by_side_are_the_single_process_batch(teco, tmp_path, form):
    """Training (shuffled, random windows and crops, endless): the batches of 2
    processes side by side, as the global array assembles them, are the batch one
    process with twice the batch size reads, past an epoch boundary."""
    if form == "teco":
        data = dataclasses.replace(teco, frame_size=6, crop="random")
    else:
        data = MovingMNISTConfig(frame_size=32, seq_len=3, train_sequences=8)
    one = take(make_dataset(data, batch_size=4, seed=5, process_index=0, process_count=1), 4)
    two = [
        take(make_dataset(data, batch_size=2, seed=5, process_index=i, process_count=2), 4)
        for i in range(2)
    ]
    for k, want in enumerate(one):
        for key in want:
            np.testing.assert_array_equal(
                np.concatenate([two[0][k][key], two[1][k][key]]), want[key]
            )


def test_workers_give_the_same_batches_and_resume(teco):
    """Two worker processes read and decode; the batches equal the in-process ones,
    and a worker pipeline resumes from its state."""
    plain = take(make_dataset(teco, batch_size=3, seed=4), 5)
    it = iter(make_dataset(teco, batch_size=3, seed=4, num_workers=2))
    with_workers = [next(it) for _ in range(3)]
    state = it.get_state()
    with_workers += [next(it) for _ in range(2)]
    for x, y in zip(plain, with_workers):
        np.testing.assert_array_equal(x["video"], y["video"])
        np.testing.assert_array_equal(x["actions"], y["actions"])
    resumed = iter(make_dataset(teco, batch_size=3, seed=4, num_workers=2))
    resumed.set_state(json.loads(json.dumps(state)))
    for want in plain[3:]:
        np.testing.assert_array_equal(next(resumed)["video"], want["video"])


@pytest.fixture(scope="module")
def with_bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "test").mkdir()
    for v in range(6):
        np.savez(root / "test" / f"{v}.npz", video=tagged(v, 8), actions=np.zeros(8, int))
    np.savez(root / "test" / "3.npz", video=tagged(3, 2), actions=np.zeros(2, int))  # too short
    np.savez(
        root / "test" / "4.npz", video=tagged(4, 8), actions=np.zeros(7, int)
    )  # actions mismatch
    (root / "test" / "5.npz").write_bytes(b"truncated")
    return TecoConfig(root=str(root), seq_len=4)


def test_bad_file_is_an_error_naming_it(with_bad_files):
    ds = make_dataset(
        with_bad_files,
        split="test",
        batch_size=2,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        window="start",
    )
    with pytest.raises(BadVideoError, match=r"3\.npz: has 2 frame\(s\).*on-bad-file skip"):
        list(ds)


def test_bad_files_skipped_with_counted_warnings(with_bad_files):
    config = dataclasses.replace(with_bad_files, on_bad_file="skip")
    ds = make_dataset(
        config,
        split="test",
        batch_size=2,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        window="start",
    )
    with pytest.warns(BadVideoWarning) as caught:
        batches = list(ds)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    assert "3.npz" in messages[0] and "(1 skipped so far)" in messages[0]
    assert (
        "4.npz" in messages[1]
        and "7 actions" in messages[1]
        and "(2 skipped so far)" in messages[1]
    )
    assert "5.npz" in messages[2] and "(3 skipped so far)" in messages[2]
    assert [len(b["video"]) for b in batches] == [2, 1]  # refilled to full batches where possible
    assert [v for b in batches for v, _ in ids(b)] == [0, 1, 2]


def test_every_file_bad_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    for v in range(2):
        np.savez(tmp_path / "train" / f"{v}.npz", video=tagged(v, 2), actions=np.zeros(2, int))
    config = TecoConfig(root=str(tmp_path), seq_len=4, on_bad_file="skip")
    with pytest.warns(BadVideoWarning), pytest.raises(ValueError, match="every video"):
        next(iter(make_dataset(config, batch_size=1)))


class ActionSource:
    """A random-access source of 2 videos of 3 frames with the given actions."""

    def __init__(self, actions):
        self.actions = [np.asarray(a) for a in actions]

    def __len__(self):
        return len(self.actions)

    def __getitem__(self, i):
        return {"video": tagged(int(i), 3), "actions": self.actions[i]}


def test_actions_of_a_source_are_checked_and_batched_as_int32():
    """A random-access source's actions used to pass through unchecked (floats, -7, int64
    as they came); now they are integers ≥ -1, one per frame, batched as int32 (the
    model checks the upper bound, its `action_dim`)."""

    def batches(actions):
        return list(make_dataset(ActionSource(actions), batch_size=2, shuffle=False, num_epochs=1))

    (good,) = batches([np.array([-1, 0, 5]), np.array([2**31 - 1, 1, 0])])
    assert good["actions"].dtype == np.int32
    np.testing.assert_array_equal(good["actions"], [[-1, 0, 5], [2**31 - 1, 1, 0]])
    with pytest.raises(
        ValueError, match=r"`actions` must be ≥ -1.*got -7 in video 1 of the batch, frame 2"
    ):
        batches([np.array([0, 1, 2]), np.array([0, 1, -7])])
    with pytest.raises(ValueError, match=r"fit int32; got 2147483648 in video 0"):
        batches([np.array([0, 2**31, 2]), np.array([0, 1, 2])])
    with pytest.raises(ValueError, match=r"`actions` must be integers.*\(2, 3\); got float64"):
        batches([np.array([0.0, 1, 2]), np.array([0.0, 1, 2])])
    with pytest.raises(ValueError, match=r"one per frame.*\(2, 3\); got int64 of shape \(2, 2\)"):
        batches([np.array([0, 1]), np.array([0, 1])])


def test_out_of_range_actions_in_a_file_are_a_bad_file(tmp_path):
    (tmp_path / "train").mkdir()
    np.savez(tmp_path / "train" / "0.npz", video=tagged(0, 4), actions=np.array([0, 1, -2, 0]))
    config = TecoConfig(root=str(tmp_path), seq_len=2)
    with pytest.raises(BadVideoError, match=r"0\.npz: actions must be ≥ -1.*\[-2, 1\]"):
        next(iter(make_dataset(config, batch_size=1)))


def test_resize_random_crop_and_other_formats(teco, tmp_path):
    config = dataclasses.replace(teco, frame_size=4, crop="random", interpolation="area")
    batch = take(make_dataset(config, batch_size=2, seed=0), 1)[0]
    assert batch["video"].shape == (2, 4, 4, 4, 3)
    packed = pack_array_record(
        TecoVideos(teco.root, "train"), str(tmp_path / "train"), progress=False
    )
    assert packed.videos == NUM_VIDEOS
    ar = ArrayRecordConfig(root=str(tmp_path), seq_len=4, frame_stride=2)
    a = take(make_dataset(teco, batch_size=3, seed=9), 3)
    b = take(make_dataset(ar, batch_size=3, seed=9), 3)
    for x, y in zip(a, b):  # same videos, same windows, same batches
        np.testing.assert_array_equal(x["video"], y["video"])
        np.testing.assert_array_equal(x["actions"], y["actions"])


def test_frame_spec_and_mixed_sizes(teco, tmp_path):
    spec = frame_spec(teco)
    assert (
        spec.height,
        spec.width,
        spec.channels,
        spec.seq_len,
        spec.has_actions,
        spec.num_videos,
    ) == (H, W, 3, 4, True, NUM_VIDEOS)
    assert frame_spec(dataclasses.replace(teco, frame_size=6, actions=False)).height == 6
    mm = frame_spec(MovingMNISTConfig(frame_size=32, seq_len=5, test_sequences=3), split="test")
    assert (mm.height, mm.channels, mm.num_videos) == (32, 1, 3)
    (tmp_path / "train").mkdir()
    np.savez(tmp_path / "train" / "a.npz", video=tagged(0, 4))
    np.savez(tmp_path / "train" / "b.npz", video=np.zeros((4, 6, 6, 3), np.uint8))
    mixed = TecoConfig(root=str(tmp_path), seq_len=2, actions=False)
    with pytest.raises(ValueError, match="different shapes.*frame-size"):
        take(make_dataset(mixed, batch_size=2, shuffle=False), 1)
    assert take(make_dataset(dataclasses.replace(mixed, frame_size=6), batch_size=2), 1)[0][
        "video"
    ].shape == (2, 2, 6, 6, 3)


def test_moving_mnist_config_and_source_still_work():
    config = MovingMNISTConfig(frame_size=32, seq_len=3, train_sequences=4, test_sequences=2)
    batch = take(make_dataset(config, batch_size=2, split="test", shuffle=False, num_epochs=1), 1)[
        0
    ]
    assert batch["video"].shape == (2, 3, 32, 32, 1) and set(batch) == {"video"}


def test_configs_and_their_command_line():
    assert set(DATASETS) == {
        "moving_mnist", "bouncing_balls", "teco", "frame_folder", "video_folder",
        "array_record", "codes",
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown dataset 'dmlab'.*teco"):
        dataset_config_class("dmlab")
    for name in DATASETS:
        cls = dataset_config_class(name)
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, "data", cls)
        assert "--seq-len" in parser.format_help()
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, "data", VideoFolderConfig)
    args = parser.parse_args(
        ["--root", "x", "--frame-size", "64", "--value-range", "unit", "--no-split-folders"]
    )
    config = config_from_args(args, "data", VideoFolderConfig())
    assert (config.frame_size, config.value_range, config.split_folders) == (64, "unit", False)
    with pytest.raises(ValueError, match="`seq_len` must be an int >= 1; got 0"):
        FrameFolderConfig(seq_len=0)
    with pytest.raises(ValueError, match="`frame_stride` must be an int >= 1; got 0"):
        FrameFolderConfig(frame_stride=0)
    with pytest.raises(ValueError, match="`frame_size` must be an int >= 1 or None; got 0"):
        FrameFolderConfig(frame_size=0)
    # Values outside a `Literal` are caught by the annotations (eqvid's import hook).
    with pytest.raises(TypeCheckError, match="parameter 'on_bad_file'"):
        FrameFolderConfig(on_bad_file=cast(Any, "ignore"))
    with pytest.raises(TypeCheckError, match="parameter 'window'"):
        make_dataset(TecoConfig(root="x"), batch_size=1, window=cast(Any, "middle"))


def test_data_speed_benchmark_quick(tmp_path):
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "data_speed.py"
    spec = importlib.util.spec_from_file_location("data_speed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    records = module.main(["--quick", "--out-dir", str(tmp_path), "--name", "data"])
    text = (tmp_path / "data.md").read_text()
    assert "command:" in text and "| npz |" in text and "| array_record |" in text
    assert all(r["frames_per_s"] > 0 for r in records)
