"""The evaluation plumbing: value ranges, per-frame metrics on generated frames only,
TECO's chunked reduction, chunked FVD and the sample files."""

from typing import Any, cast

import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

from eqvid.metrics._frechet import fvd_from_features
from eqvid.metrics._protocol import (
    MeanStd,
    check_value_range,
    chunked_fvd,
    frame_metrics,
    load_samples_npz,
    per_frame_curve,
    reduce_over_chunks,
    save_samples_npz,
    videos_to_uint8,
    videos_to_unit,
)
from eqvid.metrics._psnr import psnr
from eqvid.metrics._ssim import ssim


@pytest.fixture(scope="module")
def videos():
    """uint8 (5, 6, 12, 13, 1) real videos and a noisy copy as fake."""
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (5, 6, 12, 13, 1), dtype=np.uint8)
    noise = rng.integers(-40, 41, real.shape)
    fake = np.clip(real.astype(int) + noise, 0, 255).astype(np.uint8)
    return real, fake


def test_value_ranges_are_checked_never_guessed():
    u8 = np.zeros((1, 2, 3, 3, 1), np.uint8)
    unit = np.full((1, 2, 3, 3, 1), 0.5, np.float32)
    check_value_range(u8, value_range="uint8")
    check_value_range(unit, value_range="[0,1]")
    check_value_range(unit, value_range="[-1,1]")
    with pytest.raises(
        ValueError, match=r"`fake`: value_range='uint8' needs dtype uint8, got float32"
    ):
        check_value_range(unit, value_range="uint8", name="fake")
    with pytest.raises(ValueError, match=r"needs floating-point values, got dtype uint8.*'uint8'"):
        check_value_range(u8, value_range="[0,1]")
    with pytest.raises(ValueError, match=r"range from 0.5 to 255.*uint8"):
        check_value_range(
            np.where(unit > 0, unit, 0) * np.array([1, 510], np.float32)[:, None, None, None],
            value_range="[0,1]",
        )
    with pytest.raises(ValueError, match=r"from -0.3 to 0.5.*'\[-1,1\]'"):
        check_value_range(
            unit - np.float32(0.8) * (unit > 0.4) * np.arange(2)[None, :, None, None, None],
            value_range="[0,1]",
        )
    with pytest.raises(ValueError, match=r"from -1.5"):
        check_value_range(unit - 2.0, value_range="[-1,1]")
    with pytest.raises(ValueError, match="NaN"):
        check_value_range(np.full((2,), np.nan, np.float32), value_range="[0,1]")
    with pytest.raises(TypeCheckError, match="parameter 'value_range'"):
        check_value_range(unit, value_range=cast(Any, "0..1"))

    # Conversions: exact for uint8, round-off overshoot clipped.
    np.testing.assert_array_equal(
        videos_to_unit(np.array([0, 51, 255], np.uint8), value_range="uint8"),
        np.array([0, 0.2, 1], np.float32),
    )
    np.testing.assert_allclose(
        videos_to_unit(np.array([-1, 0, 1 + 1e-7], np.float32), value_range="[-1,1]"), [0, 0.5, 1]
    )
    np.testing.assert_array_equal(
        videos_to_uint8(np.array([-1, 0, 1], np.float32), value_range="[-1,1]"), [0, 128, 255]
    )
    np.testing.assert_array_equal(
        videos_to_uint8(np.array([0, 0.5, 1], np.float32), value_range="[0,1]"), [0, 128, 255]
    )


def test_frame_metrics_generated_frames_only(videos):
    real, fake = videos
    context = 2
    calls = []

    def lpips_fn(x, y):  # a stand-in: records its inputs' range, mean |x - y| per frame
        calls.append((float(x.min()), float(x.max()), x.shape))
        return np.abs(np.asarray(x) - np.asarray(y)).mean(axis=(1, 2, 3))

    out = frame_metrics(
        real, fake, context=context, value_range="uint8", lpips_fn=lpips_fn, frames_per_batch=7
    )
    assert set(out) == {"psnr", "ssim", "lpips"}
    for v in out.values():
        assert v.shape == (5, 4) and v.dtype == np.float32

    r, f = real[:, context:] / 255.0, fake[:, context:] / 255.0
    np.testing.assert_allclose(out["psnr"], psnr(r, f, data_range=1.0), rtol=1e-5)
    np.testing.assert_allclose(out["ssim"], ssim(r, f, data_range=1.0), atol=1e-6)
    np.testing.assert_allclose(
        out["lpips"], np.abs((2 * r - 1) - (2 * f - 1)).mean(axis=(2, 3, 4)), atol=1e-6
    )
    # 20 frames in batches of 7 (the last padded), LPIPS inputs in [-1, 1].
    assert len(calls) == 3 and all(
        s == (7, 12, 13, 1) and lo >= -1 and hi <= 1 for lo, hi, s in calls
    )

    # Context frames do not count: changing them changes nothing.
    other = fake.copy()
    other[:, :context] = 255 - other[:, :context]
    again = frame_metrics(real, other, context=context, value_range="uint8", frames_per_batch=7)
    np.testing.assert_array_equal(again["psnr"], out["psnr"])
    np.testing.assert_array_equal(again["ssim"], out["ssim"])

    # The same videos in [-1, 1] floats give the same numbers.
    signed = frame_metrics(
        real / np.float32(127.5) - 1,
        fake / np.float32(127.5) - 1,
        context=context,
        value_range="[-1,1]",
        frames_per_batch=7,
    )
    np.testing.assert_allclose(signed["psnr"], out["psnr"], rtol=1e-4)
    np.testing.assert_allclose(signed["ssim"], out["ssim"], atol=1e-5)


def test_frame_metrics_errors(videos):
    real, fake = videos
    with pytest.raises(ValueError, match="context"):
        frame_metrics(real, fake, context=6, value_range="uint8")
    with pytest.raises(ValueError, match="`fake`.*uint8"):
        frame_metrics(real, fake.astype(np.float32), context=1, value_range="uint8")
    with pytest.raises(ValueError, match="`real`.*range from 0 to 255"):
        frame_metrics(
            real.astype(np.float32), fake / np.float32(255), context=1, value_range="[0,1]"
        )
    with pytest.raises(TypeCheckError, match="parameter 'fake'"):  # its shape differs from real's
        frame_metrics(real, fake[:, :5], context=1, value_range="uint8")
    with pytest.raises(ValueError, match="lpips_fn"):
        frame_metrics(
            real, fake, context=5, value_range="uint8", lpips_fn=lambda x, y: jnp.zeros((2,))
        )


def test_reduce_over_chunks_is_tecos_reduction():
    rng = np.random.default_rng(1)
    values = rng.random((8, 3))
    # TECO's compute_metrics.py: files of 2 videos, chunks of 4 videos (2 files):
    # per file mean of per-video time means, mean over the chunk's files, then
    # np.mean / np.std over chunks.
    chunk_values = []
    for c in range(2):
        files = [values[c * 4 + 2 * i : c * 4 + 2 * i + 2] for i in range(2)]
        chunk_values.append(np.mean([f.mean(axis=1).mean() for f in files]))
    got = reduce_over_chunks(values, chunk=4)
    assert isinstance(got, MeanStd)
    np.testing.assert_allclose(got.per_chunk, chunk_values, rtol=1e-12)
    np.testing.assert_allclose(
        [got.mean, got.std], [np.mean(chunk_values), np.std(chunk_values)], rtol=1e-12
    )
    assert got.chunk_size == 4 and got.to_dict()["per_chunk"] == list(got.per_chunk)
    np.testing.assert_allclose(per_frame_curve(values), values.mean(axis=0))

    with pytest.raises(
        ValueError,
        match=r"8 videos do not split into chunks of 3.*remainder='drop'.*remainder='keep'",
    ):
        reduce_over_chunks(values, chunk=3)
    assert len(reduce_over_chunks(values, chunk=3, remainder="drop").per_chunk) == 2
    kept = reduce_over_chunks(values, chunk=3, remainder="keep")
    np.testing.assert_allclose(kept.per_chunk[-1], values[6:].mean())
    with pytest.raises(ValueError, match="one chunk needs 256 videos, got 8. Pass chunk=8"):
        reduce_over_chunks(values)


def test_chunked_fvd():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((12, 5))
    fake = rng.standard_normal((12, 5)) + 0.5
    with pytest.warns(UserWarning, match="comparable only with FVDs on 6-video chunks"):
        got = chunked_fvd(real, fake, chunk=6)
    expected = [fvd_from_features(real[:6], fake[:6]), fvd_from_features(real[6:], fake[6:])]
    np.testing.assert_allclose(got.per_chunk, expected, rtol=1e-12)
    np.testing.assert_allclose(
        [got.mean, got.std], [np.mean(expected), np.std(expected)], rtol=1e-12
    )
    with pytest.raises(ValueError, match="one chunk needs 256 videos, got 12. Pass chunk=12"):
        chunked_fvd(real, fake)
    with pytest.raises(TypeCheckError, match="parameter 'fake_features'"):  # 11 rows, not 12
        chunked_fvd(real, fake[:11], chunk=6)


def test_samples_npz_round_trip(tmp_path, videos):
    real, fake = videos
    folder = tmp_path / "samples_2"
    # Eleven files of one video each, written out of order, read in index order
    # (data_2 before data_10).
    order = np.arange(11) % len(real)
    for i in reversed(range(11)):
        j = order[i : i + 1]
        save_samples_npz(folder / f"data_{i}.npz", real[j], fake[j], context=2)
    names = [f"data_{i}.npz" for i in range(11)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temp files left
    loaded = load_samples_npz(folder)
    assert loaded.context == 2 and [p.name for p in loaded.files] == names
    np.testing.assert_array_equal(loaded.real, real[order])
    np.testing.assert_array_equal(loaded.fake[:, 2:], fake[order, 2:])
    np.testing.assert_array_equal(
        loaded.fake[:, :2], real[order, :2]
    )  # context replaced by real frames

    # Float videos with an explicit range are rounded to uint8.
    one = save_samples_npz(
        tmp_path / "f.npz",
        real / np.float32(255),
        fake / np.float32(255),
        context=0,
        value_range="[0,1]",
    )
    np.testing.assert_array_equal(load_samples_npz(one).fake, fake)

    # TECO's files (no `context` key): the context is passed, and checked.
    np.savez(tmp_path / "teco.npz", real=real, fake=fake)
    assert load_samples_npz(tmp_path / "teco.npz").context is None
    with pytest.raises(
        ValueError, match=r"teco.npz: the first 2 \(context\) frames of `fake` differ"
    ):
        load_samples_npz(tmp_path / "teco.npz", context=2)


def test_samples_npz_errors_name_the_file(tmp_path, videos):
    real, fake = videos
    good = save_samples_npz(tmp_path / "good.npz", real, fake, context=1)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz: cannot read"):
        load_samples_npz(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(ValueError, match="garbage.npz: cannot read"):
        load_samples_npz(garbage)
    np.savez(tmp_path / "nofake.npz", real=real)
    with pytest.raises(ValueError, match=r"nofake.npz: cannot read.*missing key\(s\) \['fake'\]"):
        load_samples_npz(tmp_path / "nofake.npz")
    np.savez(tmp_path / "float.npz", real=real / 255.0, fake=fake / 255.0)
    with pytest.raises(ValueError, match="float.npz: `real` must be uint8"):
        load_samples_npz(tmp_path / "float.npz")

    folder = tmp_path / "run"
    save_samples_npz(folder / "data_0.npz", real, fake, context=1)
    save_samples_npz(folder / "data_1.npz", real, fake, context=2)
    with pytest.raises(ValueError, match="data_1.npz: context=2 differs from context=1"):
        load_samples_npz(folder)
    with pytest.raises(ValueError, match="holds no data_<i>.npz"):
        load_samples_npz(tmp_path / "run" / "..")
    with pytest.raises(FileNotFoundError):
        load_samples_npz(tmp_path / "missing")
    with pytest.raises(ValueError, match="must end in .npz"):
        save_samples_npz(tmp_path / "x.np", real, fake, context=1)
    with pytest.raises(ValueError, match="value_range='uint8' needs dtype uint8"):
        save_samples_npz(tmp_path / "y.npz", real / 255.0, fake / 255.0, context=1)


def test_samples_folder_with_missing_files_is_refused(tmp_path, videos):
    """A hole in the data_<i>.npz numbering used to be read silently (fewer videos
    evaluated); now the error names the missing files."""
    real, fake = videos
    folder = tmp_path / "gap"
    for i in (0, 1, 3, 6):
        save_samples_npz(folder / f"data_{i}.npz", real[:1], fake[:1], context=1)
    with pytest.raises(
        ValueError,
        match=r"up to data_6.npz but 3 file\(s\) are missing: data_2.npz, data_4.npz, "
        r"data_5.npz\.",
    ):
        load_samples_npz(folder)
    (folder / "data_0.npz").unlink()  # the numbering starts at 0
    with pytest.raises(ValueError, match=r"missing: data_0.npz, data_2.npz"):
        load_samples_npz(folder)
    many = tmp_path / "many"
    save_samples_npz(many / "data_30.npz", real[:1], fake[:1], context=1)
    with pytest.raises(
        ValueError,
        match=r"30 file\(s\) are missing: data_0.npz, .*data_9.npz "
        r"\(and 20 more\)",
    ):
        load_samples_npz(many)
    twice = tmp_path / "twice"
    save_samples_npz(twice / "data_0.npz", real[:1], fake[:1], context=1)
    save_samples_npz(twice / "data_00.npz", real[:1], fake[:1], context=1)
    with pytest.raises(ValueError, match=r"data_0.npz and data_00.npz .* both claim index 0"):
        load_samples_npz(twice)
