"""Moving-MNIST source, digit loaders and the Grain pipeline."""

import gzip
import struct
from typing import Any

import numpy as np
import pytest

from eqvid.data import MovingMNIST, load_digits, load_idx_images, make_dataset, sklearn_digits


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return sklearn_digits()


def _source(images, /, **kwargs: Any) -> MovingMNIST:
    args: dict[str, Any] = dict(digits=images, num_sequences=16, seq_len=10)
    args.update(kwargs)
    return MovingMNIST(**args)


# --- MovingMNIST -----------------------------------------------------------------


def test_shape_dtype_values(digits):
    src = _source(digits, frame_size=48, num_digits=3)
    assert len(src) == 16
    video = src[0]["video"]
    assert set(src[0]) == {"video"}
    assert video.shape == (10, 48, 48, 1)
    assert video.dtype == np.uint8
    # Black background, bright digit pixels in every frame.
    assert (video == 0).mean() > 0.3
    assert video.reshape(10, -1).max(axis=1).min() > 100
    assert "MovingMNIST(" in repr(src) and "seq_len=10" in repr(src)


def test_deterministic_and_order_independent(digits):
    a = _source(digits, seed=3)
    b = _source(digits, seed=3)
    forward = [a[i]["video"] for i in range(6)]
    backward = [b[i]["video"] for i in reversed(range(6))][::-1]
    for x, y in zip(forward, backward):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[2]["video"], a[2]["video"])
    assert not np.array_equal(a[0]["video"], a[1]["video"])


def test_different_seeds_differ(digits):
    a, b = _source(digits, seed=0), _source(digits, seed=1)
    assert not np.array_equal(a[0]["video"], b[0]["video"])


def test_index_errors(digits):
    src = _source(digits)
    with pytest.raises(IndexError):
        src[16]
    with pytest.raises(IndexError):
        src[-1]


def _centroids(video: np.ndarray) -> np.ndarray:
    frames = video[..., 0].astype(np.float64)
    rows, cols = np.indices(frames.shape[1:])
    mass = frames.sum(axis=(1, 2))
    return np.stack(
        [(frames * rows).sum(axis=(1, 2)) / mass, (frames * cols).sum(axis=(1, 2)) / mass], axis=1
    )


@pytest.mark.parametrize("index", [0, 1, 2])
def test_bounce_stays_in_frame_and_moves_at_step_length(digits, index):
    size, step = 64, 0.15
    src = _source(digits, seq_len=200, frame_size=size, num_digits=1, step_length=step)
    video = src[index]["video"]
    digit_mass = None
    for frame in video[..., 0]:
        mass = int(frame.astype(np.int64).sum())
        assert mass > 0
        digit_mass = mass if digit_mass is None else digit_mass
        assert mass == digit_mass  # the whole digit is always drawn: never clipped
    moves = np.linalg.norm(np.diff(_centroids(video), axis=0), axis=1)
    step_px = step * (size - 28)  # 5.4 px
    # Integer pixel positions: each move is within sqrt(2) px of the true step, and
    # only bounces (clamping at a border) shorten it.
    assert moves.max() <= step_px + np.sqrt(2) + 1e-6
    assert abs(np.median(moves) - step_px) <= 1.0
    assert moves.min() > 0


def test_no_bounce_digits_leave_the_frame(digits):
    src = _source(digits, seq_len=60, num_digits=1, bounce=False)
    video = src[0]["video"]
    assert video[0].max() > 0
    # 60 steps of 5.4 px carry any digit out of a 64-px frame.
    assert video[-1].max() == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(frame_size=20), "frame_size"),
        (dict(num_sequences=0), "num_sequences"),
        (dict(seq_len=0), "seq_len"),
        (dict(num_digits=0), "num_digits"),
        (dict(step_length=-0.1), "step_length"),
        (dict(step_length=float("nan")), "step_length"),
        (dict(seed=-1), "seed"),
        (dict(digits=np.zeros((4, 28, 28), np.float32)), "digits"),
        (dict(digits=np.zeros((4, 8, 8), np.uint8)), "digits"),
        (dict(digits=np.zeros((0, 28, 28), np.uint8)), "digits"),
    ],
)
def test_bad_args(digits, kwargs, name):
    with pytest.raises(ValueError, match=name):
        _source(digits, **kwargs)


# --- digit loaders ---------------------------------------------------------------


def _idx_bytes(images: np.ndarray, magic: int = 2051) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes()


@pytest.fixture()
def small_images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader(tmp_path, small_images, compress):
    data = _idx_bytes(small_images)
    # gzip is detected by magic bytes, not by name.
    path = tmp_path / "digits.bin"
    path.write_bytes(gzip.compress(data) if compress else data)
    images = load_idx_images(path)
    assert images.dtype == np.uint8 and images.shape == (5, 28, 28)
    np.testing.assert_array_equal(images, small_images)
    np.testing.assert_array_equal(load_digits(str(path)), small_images)


def test_idx_reader_finds_file_in_directory(tmp_path, small_images):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(small_images)))
    np.testing.assert_array_equal(load_idx_images(tmp_path), small_images)


def test_idx_reader_missing(tmp_path):
    path = tmp_path / "nope" / "train-images-idx3-ubyte.gz"
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as info:
        load_idx_images(path)
    assert str(path) in str(info.value)


def test_idx_reader_bad_magic(tmp_path, small_images):
    path = tmp_path / "labels"
    path.write_bytes(_idx_bytes(small_images, magic=2049))
    with pytest.raises(ValueError, match="magic") as info:
        load_idx_images(path)
    assert str(path) in str(info.value)


def test_idx_reader_bad_dims_and_trailing_bytes(tmp_path, small_images):
    path = tmp_path / "small"
    path.write_bytes(_idx_bytes(small_images[:, :20, :20]))
    with pytest.raises(ValueError, match="20x20"):
        load_idx_images(path)
    path.write_bytes(_idx_bytes(small_images) + b"extra")
    with pytest.raises(ValueError, match="trailing"):
        load_idx_images(path)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_truncated(tmp_path, small_images, compress):
    data = _idx_bytes(small_images)[:-100]
    path = tmp_path / "truncated"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match="truncated") as info:
        load_idx_images(path)
    message = str(info.value)
    assert str(path) in message
    assert str(16 + 5 * 28 * 28) in message and str(16 + 5 * 28 * 28 - 100) in message


def test_idx_reader_truncated_gzip_stream(tmp_path, small_images):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(_idx_bytes(small_images))[:-50])
    with pytest.raises(ValueError) as info:
        load_idx_images(path)
    assert str(path) in str(info.value)


def test_sklearn_fallback(digits):
    assert digits.shape == (1797, 28, 28) and digits.dtype == np.uint8
    assert digits.min() == 0 and digits.max() == 255
    # Digits sit in the central 20x20 box; the 4-px margin is empty.
    assert digits[:, :4].max() == 0 and digits[:, -4:].max() == 0
    assert digits[:, :, :4].max() == 0 and digits[:, :, -4:].max() == 0
    assert load_digits(None).shape == (1797, 28, 28)


# --- pipeline --------------------------------------------------------------------


def test_make_dataset_batches(digits):
    src = _source(digits, num_sequences=6, seq_len=4, frame_size=32)
    ds = make_dataset(src, batch_size=4, seed=1, num_epochs=1)
    batches = list(ds)
    assert len(batches) == 1  # 6 examples, drop_remainder
    video = batches[0]["video"]
    assert video.shape == (4, 4, 32, 32, 1) and video.dtype == np.float32
    assert video.min() == -1.0 and video.max() <= 1.0 and video.max() > 0.5
    # Without shuffling the batches are the source, in order, rescaled.
    first = next(iter(make_dataset(src, batch_size=3, shuffle=False)))["video"]
    expected = np.stack([src[i]["video"] for i in range(3)]).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(first, expected, rtol=0, atol=1e-6)
    assert len(list(make_dataset(src, batch_size=4, num_epochs=1, drop_remainder=False))) == 2


def test_make_dataset_resume(digits):
    src = _source(digits, num_sequences=8, seq_len=3, frame_size=28)
    ds = make_dataset(src, batch_size=3, seed=5)
    it = iter(ds)
    for _ in range(4):  # past the end of the first epoch
        next(it)
    state = it.get_state()
    expected = [next(it)["video"] for _ in range(2)]
    resumed = iter(make_dataset(src, batch_size=3, seed=5))
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["video"], want)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=9), "batch_size"),
        (dict(batch_size=2, num_epochs=0), "num_epochs"),
        (dict(batch_size=2, num_workers=-1), "num_workers"),
        (dict(batch_size=2, seed=-3), "seed"),
    ],
)
def test_make_dataset_bad_args(digits, kwargs, name):
    src = _source(digits, num_sequences=8, seq_len=2, frame_size=28)
    with pytest.raises(ValueError, match=name):
        make_dataset(src, **kwargs)


def test_make_dataset_worker_processes(digits):
    # mp_prefetch: same batches as in-process reading, and resumable.
    src = _source(digits, num_sequences=8, seq_len=3, frame_size=32)
    reference = iter(make_dataset(src, batch_size=2, seed=1))
    want = [next(reference)["video"] for _ in range(4)]
    it = iter(make_dataset(src, batch_size=2, seed=1, num_workers=1))
    try:
        got = [next(it)["video"] for _ in range(3)]
        state = it.get_state()
        got.append(next(it)["video"])
    finally:
        it.close()
    for x, y in zip(got, want):
        np.testing.assert_array_equal(x, y)
    resumed = iter(make_dataset(src, batch_size=2, seed=1, num_workers=1))
    try:
        resumed.set_state(state)
        np.testing.assert_array_equal(next(resumed)["video"], want[3])
    finally:
        resumed.close()


def test_stochastic_mode_turns_at_bounces_and_keeps_the_speed(digits):
    size, step = 64, 0.15
    kw = dict(seq_len=200, frame_size=size, num_digits=1, step_length=step)
    plain, stochastic = _source(digits, **kw), _source(digits, stochastic=True, **kw)
    # Same start (the same draws until the first bounce), then another path.
    a = plain._trajectory(np.random.default_rng(3))
    b = stochastic._trajectory(np.random.default_rng(3))
    differ = np.flatnonzero(np.any(a != b, axis=1))
    assert 0 < differ[0] < 200
    np.testing.assert_array_equal(a[: differ[0]], b[: differ[0]])
    # A mirror reflection keeps |v_x| and |v_y|; a new direction changes them: the
    # per-frame moves after the first bounce are not those of the plain video.
    video = stochastic[0]["video"]
    np.testing.assert_array_equal(video, stochastic[0]["video"])  # deterministic per index
    assert not np.array_equal(video, plain[0]["video"])
    moves = np.linalg.norm(np.diff(_centroids(video), axis=0), axis=1)
    step_px = step * (size - 28)
    assert moves.max() <= step_px + np.sqrt(2) + 1e-6  # still inside, still the speed
    assert abs(np.median(moves) - step_px) <= 1.0
    with pytest.raises(ValueError, match="stochastic.*needs `bounce=True`"):
        _source(digits, stochastic=True, bounce=False, **kw)
