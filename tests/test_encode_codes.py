"""Encode once (`python -m eqvid.data.encode`) and the codes dataset (`CodesVideos`):
the codes are the tokenizer's, with their actions, resumable output, decoding back to
frames, and the errors for codes or tokenizers that do not fit."""

import dataclasses
import json
import os
import pickle

import grain
import jax
import numpy as np
import pytest

from eqvid.data import MovingMNISTConfig, open_source
from eqvid.data._codes import CodesVideos, codes_to_frames
from eqvid.data.encode import main
from eqvid.models import (
    VQGAN2D,
    VQGAN2DConfig,
    decode_codes,
    encode_videos,
    make_model,
    reconstruct_videos,
)
from eqvid.models._tokenizer_files import load_tokenizer, save_tokenizer
from eqvid.train._samples import to_uint8

SMALL = dataclasses.replace(VQGAN2DConfig.preset("small"), frame_size=32)
MMNIST = MovingMNISTConfig(frame_size=32, seq_len=4, train_sequences=5, test_sequences=3)
MMNIST_ARGS = (
    *("--dataset", "moving_mnist", "--frame-size", "32", "--seq-len", "4"),
    *("--train-sequences", "5", "--test-sequences", "3"),
)


def built(config: VQGAN2DConfig = SMALL, seed: int = 3) -> VQGAN2D:
    model, state = make_model(config, key=jax.random.key(seed))
    assert isinstance(model, VQGAN2D)
    return model.with_state(state)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A saved tiny VQGAN2D (32×32 grey frames → 8×8 codes of 256), loaded back."""
    folder = tmp_path_factory.mktemp("tok") / "vqgan"
    save_tokenizer(built(), folder)
    return str(folder), load_tokenizer(folder)


def run(tokenizer_path, out, *args):
    return main(
        ["--tokenizer", str(tokenizer_path), "--out", str(out), "--no-progress", *map(str, args)]
    )


def signed(videos: np.ndarray) -> np.ndarray:
    return videos.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def teco_root(tmp_path_factory):
    """TECO-style npz trajectories of 32×32 grey frames with actions, of 4 to 6 frames."""
    root = tmp_path_factory.mktemp("teco")
    rng = np.random.default_rng(0)
    videos = {}
    for split, count in (("train", 3), ("test", 2)):
        (root / split).mkdir()
        for v in range(count):
            video = rng.integers(0, 256, (4 + v, 32, 32, 1), dtype=np.uint8)
            actions = rng.integers(-1, 5, len(video))
            np.savez(root / split / f"traj{v}.npz", video=video, actions=actions)
            videos[(split, f"traj{v}.npz")] = (video, actions)
    return root, videos


def test_encode_writes_the_tokenizers_codes_and_records_the_tokenizer(tokenizer, tmp_path):
    path, tok = tokenizer
    out = tmp_path / "codes"
    summaries = run(path, out, *MMNIST_ARGS, "--batch-size", 2, "--shard-videos", 2)
    assert [s.complete for s in summaries] == [True, True]
    train = out / "train"
    for name in ("encode.json", "index.npz", "codes-00000.array_record", "codes-00000.npz"):
        assert (train / name).is_file()
    assert (train / "codes-00002.array_record").is_file()  # 5 videos, 2 per shard
    meta = json.loads((train / "encode.json").read_text())
    assert meta["tokenizer"]["path"] == os.path.abspath(path)
    assert meta["tokenizer"]["model_name"] == "vqgan2d"
    assert meta["tokenizer"]["n_codes"] == 256
    assert meta["complete"] and meta["videos"] == 5
    assert meta["code_shape"] == dict(frames=4, height=32, width=32, channels=1, codes=[4, 8, 8])
    for split, count in (("train", 5), ("test", 3)):
        source = open_source(MMNIST, split)
        videos = np.stack([source[i]["video"] for i in range(count)])
        expected = np.asarray(encode_videos(tok, signed(videos)))
        codes = CodesVideos(str(out), split, actions=False, tokenizer=tok)
        assert len(codes) == count
        got = np.stack([codes[i]["codes"] for i in range(count)])
        assert got.dtype == np.int32 and got.shape == (count, 4, 8, 8)
        np.testing.assert_array_equal(got, expected)
    # A Grain source: pickled into workers, shuffled and batched as it is.
    codes = pickle.loads(pickle.dumps(CodesVideos(str(out), "train")))
    batches = list(grain.MapDataset.source(codes).seed(0).shuffle().batch(2, drop_remainder=True))
    assert [b["codes"].shape for b in batches] == [(2, 4, 8, 8)] * 2
    with pytest.raises(ValueError, match="holds no actions"):
        CodesVideos(str(out), "train", actions=True)


@pytest.mark.parametrize("clip_len", [None, 2])
def test_codes_keep_their_actions_whole_videos_or_clips(tokenizer, teco_root, tmp_path, clip_len):
    path, tok = tokenizer
    root, videos = teco_root
    args = ["--dataset", "teco", "--root", root, "--batch-size", 2]
    if clip_len:
        args += ["--clip-len", clip_len]
    run(path, tmp_path / "out", *args)
    for split in ("train", "test"):
        codes = CodesVideos(str(tmp_path / "out"), split, tokenizer=tok)
        expected = []
        for name in sorted(n for s, n in videos if s == split):
            video, actions = videos[(split, name)]
            step = clip_len or len(video)
            for start in range(0, len(video) - step + 1, step):
                clip = video[start : start + step]
                expected.append(
                    (
                        name,
                        np.asarray(encode_videos(tok, signed(clip[None])))[0],
                        actions[start : start + step],
                    )
                )
        assert len(codes) == len(expected)
        for i, (name, want, actions) in enumerate(expected):
            item = codes[i]
            assert codes.names[i].endswith(name)
            np.testing.assert_array_equal(item["codes"], want)
            np.testing.assert_array_equal(item["actions"], actions)
            assert item["actions"].dtype == np.int32


def read_all(folder):
    codes = CodesVideos(str(folder), "train", actions=False)
    return [codes[i]["codes"] for i in range(len(codes))], codes.names, codes.sources


def test_a_stopped_or_killed_run_continues_to_the_same_codes(tokenizer, tmp_path):
    path, _ = tokenizer
    common = (*MMNIST_ARGS, "--splits", "train", "--batch-size", 2, "--shard-videos", 2)
    run(path, tmp_path / "once", *common)
    out = tmp_path / "resumed"
    (first,) = run(path, out, *common, "--limit", 3)
    assert not first.complete and first.done == 3
    assert not (out / "train" / "index.npz").exists()
    with pytest.raises(FileNotFoundError, match="not finished.*again to continue"):
        CodesVideos(str(out), "train")
    # A killed run: a shard without its index part, and a half-written temporary file.
    shards = sorted(p.name for p in (out / "train").glob("codes-*.array_record"))
    assert shards == ["codes-00000.array_record", "codes-00001.array_record"]
    (out / "train" / "codes-00002.array_record").write_bytes(b"cut short")
    (out / "train" / "codes-00002.npz.tmp").write_bytes(b"cut")
    (second,) = run(path, out, *common)
    assert second.complete and second.encoded_now == 2 and second.skipped == ()
    once, resumed = read_all(tmp_path / "once"), read_all(out)
    assert once[1] == resumed[1]
    np.testing.assert_array_equal(once[2], resumed[2])  # each video once, in order
    assert len(resumed[0]) == 5
    for a, b in zip(once[0], resumed[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list((out / "train").glob("*.tmp"))
    # A finished output is left as it is.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()}
    (third,) = run(path, out, *common)
    assert third.complete and third.encoded_now == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()} == before
    # Other settings against it: an error, unless --overwrite.
    other = [a if a != "4" else "5" for a in map(str, common)]  # --seq-len 5
    with pytest.raises(FileExistsError, match=r"other settings \(dataset seq_len \(4 -> 5\)"):
        run(path, out, *other)
    (fourth,) = run(path, out, *other, "--overwrite")
    assert (
        fourth.complete and CodesVideos(str(out), "train", actions=False)[0]["codes"].shape[0] == 5
    )


def test_decoded_codes_are_the_tokenizers_reconstructions(tokenizer, tmp_path):
    path, tok = tokenizer
    run(path, tmp_path, *MMNIST_ARGS, "--splits", "test")
    codes = CodesVideos(str(tmp_path), "test", actions=False)
    batch = np.stack([codes[i]["codes"] for i in range(len(codes))])
    source = open_source(MMNIST, "test")
    videos = signed(np.stack([source[i]["video"] for i in range(len(codes))]))
    reconstructions = np.asarray(reconstruct_videos(tok, videos))
    np.testing.assert_allclose(np.asarray(decode_codes(tok, batch)), reconstructions, atol=1e-5)
    frames = codes_to_frames(tok, batch)
    assert frames.dtype == np.uint8 and frames.shape == videos.shape
    # The frames samples and metrics take: `to_uint8` of the decoded videos.
    np.testing.assert_array_equal(frames, to_uint8(np.asarray(decode_codes(tok, batch))))


def test_codes_outside_the_codebook_are_a_clear_error(tokenizer, tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    path, tok = tokenizer
    run(path, tmp_path, *MMNIST_ARGS, "--splits", "test")
    shard = str(tmp_path / "test" / "codes-00000.array_record")
    good = CodesVideos(str(tmp_path), "test", actions=False)
    records = [good[i]["codes"] for i in range(len(good))]
    records[1] = records[1].copy()
    records[1][2, 3, 4] = 999
    writer = ArrayRecordWriter(shard, "group_size:1")
    for r in records:
        writer.write(r.astype("<i4").tobytes())
    writer.close()
    bad = CodesVideos(str(tmp_path), "test", actions=False)
    bad[0]
    with pytest.raises(
        ValueError, match=r"holds code 999, outside \[0, 256\).*python -m eqvid.data.encode"
    ):
        bad[1]
    with pytest.raises(ValueError, match=r"code 999, outside \[0, 256\)"):
        codes_to_frames(tok, records[1][None])


def test_a_tokenizer_that_does_not_fit_the_codes_is_a_clear_error(tokenizer, tmp_path):
    path, _ = tokenizer
    run(path, tmp_path, *MMNIST_ARGS, "--splits", "test")
    hint = "python -m eqvid.data.encode --tokenizer"
    with pytest.raises(ValueError, match=rf"n_codes=256.*has n_codes=128: .*{hint}"):
        CodesVideos(str(tmp_path), "test", tokenizer=built(dataclasses.replace(SMALL, n_embed=128)))
    bigger = built(dataclasses.replace(SMALL, frame_size=64))
    with pytest.raises(
        ValueError, match=r"codes \(4, 8, 8\) for 4 frames of 32×32.*frames must be 64×64"
    ):
        CodesVideos(str(tmp_path), "test", tokenizer=bigger)
    with pytest.raises(ValueError, match=rf"other weights.*{hint}"):
        CodesVideos(str(tmp_path), "test", tokenizer=built(seed=4))
    # Encoding with a tokenizer that cannot take the frames says which flag fits them.
    folder = tmp_path / "tok64"
    save_tokenizer(bigger, folder)
    with pytest.raises(ValueError, match=r"cannot encode 4 frames of 32×32.*--frame-size"):
        run(folder, tmp_path / "other", *MMNIST_ARGS, "--splits", "test")


def test_the_command_takes_the_training_commands_dataset_options(capsys):
    with pytest.raises(SystemExit):
        main(["--dataset", "teco", "--help"])
    text = capsys.readouterr().out
    for flag in ("--root", "--frame-size", "--frame-stride", "--actions", "--clip-len", "--limit"):
        assert flag in text
    assert "--seq-len" not in text
    with pytest.raises(SystemExit):
        main(["--dataset", "moving_mnist", "--help"])
    assert "--train-sequences" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--dataset", "teco", "--out", "x"])
    assert "--tokenizer is required" in capsys.readouterr().err


def decode(*args):
    from eqvid.data.decode import main as decode_main

    return decode_main(["--no-progress", *map(str, args)])


def test_decode_writes_the_frames_of_the_codes_readable_as_a_dataset(
    tokenizer, teco_root, tmp_path
):
    from eqvid.data import TecoConfig, TecoVideos
    from eqvid.metrics import psnr, ssim

    path, tok = tokenizer
    root, _ = teco_root
    run(path, tmp_path / "codes", "--dataset", "teco", "--root", root, "--clip-len", 2)
    out = tmp_path / "decoded"
    summaries = decode("--codes", tmp_path / "codes", "--out", out, "--batch-size", 2, "--compare")
    assert [os.path.basename(s.folder) for s in summaries] == ["test", "train"]
    source = open_source(TecoConfig(root=str(root)), "test")
    for summary, split in zip(summaries, ("test", "train")):
        codes = CodesVideos(str(tmp_path / "codes"), split)
        assert summary.entries == summary.decoded_now == len(codes)
        expected = codes_to_frames(tok, np.stack([codes[i]["codes"] for i in range(len(codes))]))
        decoded = TecoVideos(str(out), split)  # the TECO format: the decoded data is a dataset
        assert len(decoded) == len(codes)
        for i in range(len(codes)):
            item = decoded[i]
            np.testing.assert_array_equal(item["video"], expected[i])
            np.testing.assert_array_equal(item["actions"], codes[i]["actions"])
        assert (out / split / "preview.png").is_file()
    # The report compares the decoded frames with the source frames they came from.
    codes = CodesVideos(str(tmp_path / "codes"), "test")
    starts, sources = codes.starts, codes.sources
    real = np.stack(
        [source[int(sources[i])]["video"][starts[i] : starts[i] + 2] for i in range(len(codes))]
    )
    fake = np.stack([np.load(out / "test" / f"{i:06d}.npz")["video"] for i in range(len(codes))])
    report = json.loads((out / "test" / "decode.json").read_text())
    assert report["entries"] == len(codes) and report["frames"] == 2 * len(codes)
    np.testing.assert_allclose(report["psnr"], np.mean(psnr(real, fake, data_range=255)), rtol=1e-6)
    np.testing.assert_allclose(report["ssim"], np.mean(ssim(real, fake, data_range=255)), rtol=1e-6)
    assert summaries[0].psnr == report["psnr"]
    assert (
        f"| all | {len(codes)} | {report['psnr']:.2f} |" in (out / "test" / "decode.md").read_text()
    )
    # Run again: everything is there, nothing decoded; --limit decodes the first entries.
    again = decode("--codes", tmp_path / "codes", "--out", out, "--splits", "test")
    assert [s.decoded_now for s in again] == [0]
    few = decode("--codes", tmp_path / "codes", "--out", tmp_path / "few", "--limit", 1)
    assert [s.entries for s in few] == [1, 1]
    assert sorted(os.listdir(tmp_path / "few" / "train")) == ["000000.npz", "preview.png"]


def test_decode_refuses_codes_it_cannot_decode_faithfully(tokenizer, tmp_path, capsys):
    path, _ = tokenizer
    run(path, tmp_path / "codes", *MMNIST_ARGS, "--splits", "test")
    with pytest.raises(FileNotFoundError, match=r"holds no encoded splits.*one split's folder"):
        decode("--codes", tmp_path / "codes" / "test", "--out", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"no encoded 'train' split"):
        decode("--codes", tmp_path / "codes", "--splits", "train", "--out", tmp_path / "out")
    other = tmp_path / "other"
    save_tokenizer(built(seed=4), other)
    with pytest.raises(ValueError, match=r"other weights"):
        decode("--codes", tmp_path / "codes", "--tokenizer", other, "--out", tmp_path / "out")
    # The recorded tokenizer moved away: say so and how to point to it.
    meta_path = tmp_path / "codes" / "test" / "encode.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"]["path"] = str(tmp_path / "gone")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match=r"gone.*is not there; pass --tokenizer"):
        decode("--codes", tmp_path / "codes", "--out", tmp_path / "out")
    decode("--codes", tmp_path / "codes", "--tokenizer", path, "--out", tmp_path / "out")
    assert len(os.listdir(tmp_path / "out" / "test")) == 3 + 1  # 3 videos and the preview
    with pytest.raises(SystemExit):
        decode("--out", tmp_path / "out")
    assert "--codes is required" in capsys.readouterr().err


def test_the_codes_dataset_yields_windows_of_codes_with_their_actions(
    tokenizer, teco_root, tmp_path
):
    from eqvid.data import (
        CodesConfig,
        dataset_config_class,
        evaluation_videos,
        frame_spec,
        make_dataset,
    )

    path, tok = tokenizer
    root, _ = teco_root
    run(path, tmp_path, "--dataset", "teco", "--root", root)
    assert dataset_config_class("codes") is CodesConfig
    config = CodesConfig(root=str(tmp_path), seq_len=3)
    spec = frame_spec(config)
    assert (spec.height, spec.width, spec.channels, spec.seq_len) == (32, 32, 1, 3)
    assert spec.has_actions and spec.num_videos == 3
    source = CodesVideos(str(tmp_path), "train")
    batches = make_dataset(config, batch_size=2, seed=1)
    it = iter(batches)
    for _ in range(4):  # every window is a run of 3 steps of one entry's codes, with its actions
        batch = next(it)
        assert batch["codes"].shape == (2, 3, 8, 8) and batch["codes"].dtype == np.int32
        assert batch["actions"].shape == (2, 3)
        for codes, actions in zip(batch["codes"], batch["actions"]):
            hits = [
                (i, s)
                for i in range(len(source))
                for s in range(len(source[i]["codes"]) - 2)
                if np.array_equal(source[i]["codes"][s : s + 3], codes)
            ]
            assert hits, "a window that is no entry's codes"
            i, s = hits[0]
            np.testing.assert_array_equal(source[i]["actions"][s : s + 3], actions)
    # Resumable as any Grain iterator: the same batches after set_state.
    state = it.get_state()
    expected = next(it)
    again = iter(batches)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["codes"], expected["codes"])
    # Without actions when asked.
    plain = next(iter(make_dataset(dataclasses.replace(config, actions=False), batch_size=2)))
    assert sorted(plain) == ["codes"]
    # Evaluation decodes the test entries' codes with the tokenizer they record.
    ((frames, actions),) = list(evaluation_videos(config, num_videos=2, length=4, batch_size=2))
    test = CodesVideos(str(tmp_path), "test")
    expected = codes_to_frames(tok, np.stack([test[i]["codes"][:4] for i in range(2)]))
    np.testing.assert_array_equal(frames, expected)
    np.testing.assert_array_equal(actions, np.stack([test[i]["actions"][:4] for i in range(2)]))
    with pytest.raises(ValueError, match=r"has 1 entries with at least 5 frames.*fewer than the 2"):
        list(evaluation_videos(config, num_videos=2, length=5, batch_size=2))
    # A window longer than an entry names it and the fix.
    with pytest.raises(ValueError, match=r"traj0.npz.*too few.*shorter --seq-len"):
        list(
            make_dataset(
                dataclasses.replace(config, seq_len=5), batch_size=1, shuffle=False, num_epochs=1
            )
        )
