"""The file-backed video sources (TECO npz / mp4, MeBT frame folders, video files,
ArrayRecord shards): exact frames and actions, windows, bad files, the converter."""

import os
import warnings

import av
import numpy as np
import pytest
from PIL import Image

from eqvid.data import (
    ArrayRecordVideos,
    BadVideoError,
    BadVideoWarning,
    FrameFolderVideos,
    TecoVideos,
    VideoFolderVideos,
    convert,
    pack_array_record,
)

H, W = 8, 12


def tagged_video(video_id: int, num_frames: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Random frames whose pixel (0, 0) holds (video id, frame index, 0)."""
    rng = np.random.default_rng([seed, video_id])
    video = rng.integers(0, 256, (num_frames, H, W, channels), dtype=np.uint8)
    video[:, 0, 0, 0] = video_id
    if channels > 1:
        video[:, 0, 0, 1] = np.arange(num_frames)
    return video


def write_mp4(path, video: np.ndarray) -> None:
    """Lossless RGB H.264, so decoding gives the exact frames back."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=10)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "rgb24"
        stream.options = {"crf": "0"}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_webm(path, video: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=10)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv444p"
        stream.options = {"lossless": "1"}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def teco_root(tmp_path_factory):
    """train: 3 npz (one compressed, one with 3-D video... all with actions) + 1 mp4
    with sidecar actions; test: 2 npz."""
    root = tmp_path_factory.mktemp("teco")
    videos = {}
    for split, count in (("train", 3), ("test", 2)):
        for v in range(count):
            folder = root / split / f"part{v % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            video = tagged_video(v + (10 if split == "test" else 0), 9 + v)
            actions = (np.arange(len(video)) + 100 * v) % 7
            save = np.savez_compressed if v == 1 else np.savez
            save(folder / f"traj{v}.npz", video=video, actions=actions)
            videos[(split, v)] = (video, actions)
    mp4 = tagged_video(3, 10)
    write_mp4(root / "train" / "part1" / "traj3.mp4", mp4)
    np.savez(root / "train" / "part1" / "traj3.npz", actions=np.arange(10) % 5)
    videos[("train", 3)] = (mp4, np.arange(10) % 5)
    return root, videos


def test_teco_whole_videos_and_actions(teco_root):
    root, videos = teco_root
    src = TecoVideos(str(root), "train")
    assert len(src) == 4  # the mp4's sidecar is not a video
    assert [os.path.basename(p) for p in src.files] == [
        "traj0.npz",
        "traj2.npz",
        "traj1.npz",
        "traj3.mp4",
    ]
    by_name = {os.path.basename(p): i for i, p in enumerate(src.files)}
    for v in range(4):
        item = src[by_name[f"traj{v}.npz" if v < 3 else "traj3.mp4"]]
        video, actions = videos[("train", v)]
        np.testing.assert_array_equal(item["video"], video)
        assert item["actions"].dtype == np.int32
        np.testing.assert_array_equal(item["actions"], actions)
    assert len(TecoVideos(str(root), "test")) == 2


@pytest.mark.parametrize("name", ["traj0.npz", "traj1.npz", "traj3.mp4"])  # stored, compressed, mp4
def test_teco_windows_read_exact_frames(teco_root, name):
    root, videos = teco_root
    src = TecoVideos(str(root), "train")
    i = [os.path.basename(p) for p in src.files].index(name)
    video, actions = videos[("train", int(name[4]))]
    first = src.read_window(i, 3, 2, None)
    np.testing.assert_array_equal(first["video"], video[[0, 2, 4]])
    np.testing.assert_array_equal(first["actions"], actions[[0, 2, 4]])
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(30):
        window = src.read_window(i, 3, 2, rng)
        start = int(window["video"][0, 0, 0, 1])
        starts.add(start)
        np.testing.assert_array_equal(window["video"], video[start : start + 5 : 2])
        np.testing.assert_array_equal(window["actions"], actions[start : start + 5 : 2])
    assert starts == set(range(len(video) - 4))  # every start that fits, none that does not


def test_teco_without_actions_and_missing_actions(tmp_path):
    (tmp_path / "train").mkdir()
    np.savez(
        tmp_path / "train" / "a.npz", video=tagged_video(0, 4, channels=1)[..., 0]
    )  # (T, H, W)
    write_mp4(tmp_path / "train" / "b.mp4", tagged_video(1, 4))
    src = TecoVideos(str(tmp_path), "train", actions=False)
    assert set(src[0]) == {"video"} and src[0]["video"].shape == (4, H, W, 1)
    with_actions = TecoVideos(str(tmp_path), "train")
    with pytest.raises(BadVideoError, match=r"a\.npz.*no `actions` array.*--no-actions"):
        with_actions.read_window(0, 2, 1, None)
    with pytest.raises(BadVideoError, match=r"b\.mp4.*no sidecar actions file 'b\.npz'"):
        with_actions.read_window(1, 2, 1, None)


def test_teco_bad_files_name_the_file(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    np.savez(train / "short.npz", video=tagged_video(0, 3), actions=np.zeros(3, int))
    np.savez(train / "mismatch.npz", video=tagged_video(1, 6), actions=np.zeros(5, int))
    np.savez(train / "truncated.npz", video=tagged_video(2, 6), actions=np.zeros(6, int))
    data = (train / "truncated.npz").read_bytes()
    (train / "truncated.npz").write_bytes(data[: len(data) // 2])
    (train / "garbage.mp4").write_bytes(b"not a video" * 20)
    (train / "garbage.npz").write_bytes(b"")  # sidecar of garbage.mp4: not a video itself
    src = TecoVideos(str(tmp_path), "train")
    names = [os.path.basename(p) for p in src.files]
    assert names == ["garbage.mp4", "mismatch.npz", "short.npz", "truncated.npz"]
    expected = {
        "short.npz": r"short\.npz: has 3 frame\(s\), too few for a window of seq_len=4",
        "mismatch.npz": r"mismatch\.npz: has 6 frames but 5 actions",
        "truncated.npz": r"truncated\.npz: .*(not a readable|truncated)",
        "garbage.mp4": r"garbage\.mp4: could not be read",
    }
    for name, pattern in expected.items():
        with pytest.raises(BadVideoError, match=pattern):
            src.read_window(names.index(name), 4, 1, None)


def test_teco_actions_outside_the_ids_are_bad_files_and_never_packed(tmp_path):
    """Actions read from a file are integers ≥ -1 that fit int32 (-1: no action; the
    data does not know the model's `action_dim`: the model checks the upper bound)."""
    train = tmp_path / "train"
    train.mkdir()
    np.savez(train / "below.npz", video=tagged_video(0, 3), actions=np.array([0, -5, 1]))
    np.savez(train / "float.npz", video=tagged_video(1, 3), actions=np.array([0.0, 1.5, 1.0]))
    np.savez(train / "huge.npz", video=tagged_video(2, 3), actions=np.array([0, 2**40, 1]))
    src = TecoVideos(str(tmp_path), "train")
    expected = {
        "below.npz": r"below\.npz: actions must be ≥ -1 .*\[-5, 1\]",
        "float.npz": r"float\.npz: actions must be a 1-D integer array.*float64",
        "huge.npz": r"huge\.npz: actions must be ≥ -1 \(-1: no action\) and fit int32",
    }
    names = [os.path.basename(p) for p in src.files]
    for name, pattern in expected.items():
        with pytest.raises(BadVideoError, match=pattern):
            src[names.index(name)]
        with pytest.raises(BadVideoError, match=pattern):
            src.read_window(names.index(name), 2, 1, None)
    with pytest.raises(BadVideoError, match=r"below\.npz: actions must be ≥ -1"):
        pack_array_record(src, str(tmp_path / "packed"), progress=False)


def test_empty_or_missing_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        TecoVideos(str(tmp_path), "train")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "notes.txt").write_text("no videos")
    with pytest.raises(ValueError, match="empty split"):
        TecoVideos(str(tmp_path), "test")
    with pytest.raises(ValueError, match="root"):
        TecoVideos("", "test")


@pytest.fixture(scope="module")
def frame_root(tmp_path_factory):
    """Two videos of PNG / JPG frames in MeBT's layout; frame numbers not zero-padded."""
    root = tmp_path_factory.mktemp("frames")
    videos = {"v_a": tagged_video(0, 12), "v_b": tagged_video(1, 5)}
    lines = []
    for name, video in videos.items():
        (root / "class1").mkdir(exist_ok=True)
        for t, frame in enumerate(video):
            rel = f"class1/{name}_{t + 1}.png"
            Image.fromarray(frame).save(root / rel)
            lines.append(rel)
    (root / "train.txt").write_text(
        "\n".join(sorted(lines)) + "\n"
    )  # lexicographic: 1, 10, 11, 12, 2, ...
    (root / "test.txt").write_text(
        "class1/v_b_1.png\nclass1/v_b_2.png\nclass1/v_b_4.png\nclass1/v_b_5.png\n"
    )
    return root, videos


def test_frame_folder_exact_frames_in_numeric_order(frame_root):
    root, videos = frame_root
    src = FrameFolderVideos(str(root), "train")
    assert len(src) == 2 and "v_a_*" in src.path(0)
    np.testing.assert_array_equal(src[0]["video"], videos["v_a"])
    np.testing.assert_array_equal(src[1]["video"], videos["v_b"])
    np.testing.assert_array_equal(
        src.read_window(0, 4, 3, None)["video"], videos["v_a"][[0, 3, 6, 9]]
    )
    gray = FrameFolderVideos(str(root), "train", grayscale=True)[1]["video"]
    assert gray.shape == (5, H, W, 1)
    expected = np.asarray(Image.fromarray(videos["v_b"][0]).convert("L"))
    np.testing.assert_array_equal(gray[0, ..., 0], expected)


def test_frame_folder_gaps_split_videos(frame_root):
    root, videos = frame_root
    with pytest.warns(BadVideoWarning, match="jump in 1 video"):
        src = FrameFolderVideos(str(root), "test")
    assert len(src) == 2
    np.testing.assert_array_equal(src[0]["video"], videos["v_b"][:2])
    np.testing.assert_array_equal(src[1]["video"], videos["v_b"][3:])


def test_frame_folder_bad_lists(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.txt"):
        FrameFolderVideos(str(tmp_path), "train")
    (tmp_path / "train.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty split"):
        FrameFolderVideos(str(tmp_path), "train")
    (tmp_path / "train.txt").write_text("a/clip_1.png\na/clip.png\n")
    with pytest.raises(ValueError, match=r"line 2 .*'a/clip\.png'.*\[VIDEO_ID\]_\[FRAME\]"):
        FrameFolderVideos(str(tmp_path), "train")
    (tmp_path / "train.txt").write_text("a/clip_1.png\na/clip_01.png\n")
    with pytest.raises(ValueError, match="twice"):
        FrameFolderVideos(str(tmp_path), "train")
    (tmp_path / "train.txt").write_text("clip_1.png\nclip_2.png\n")
    Image.fromarray(tagged_video(0, 1)[0]).save(tmp_path / "clip_1.png")
    (tmp_path / "clip_2.png").write_bytes(b"broken")
    with pytest.raises(BadVideoError, match=r"clip_\*: could not be read"):
        FrameFolderVideos(str(tmp_path), "train")[0]


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "train" / "sub").mkdir(parents=True)
    videos = {"a.mp4": tagged_video(0, 7), "sub/c.webm": tagged_video(2, 6)}
    write_mp4(root / "train" / "a.mp4", videos["a.mp4"])
    write_webm(root / "train" / "sub" / "c.webm", videos["sub/c.webm"])
    palette = np.random.default_rng(5).integers(0, 256, (16, 3), dtype=np.uint8)
    gif = palette[np.random.default_rng(6).integers(0, 16, (5, H, W))]
    frames = [Image.fromarray(f) for f in gif]
    frames[0].save(
        root / "train" / "b.gif", save_all=True, append_images=frames[1:], duration=100, loop=0
    )
    videos["b.gif"] = gif
    return root, videos


def test_video_folder_decodes_mp4_gif_webm(video_root):
    root, videos = video_root
    src = VideoFolderVideos(str(root), "train")
    assert [os.path.relpath(p, root / "train") for p in src.files] == [
        "a.mp4",
        "b.gif",
        "sub/c.webm",
    ]
    np.testing.assert_array_equal(src[0]["video"], videos["a.mp4"])  # lossless H.264
    np.testing.assert_array_equal(src[1]["video"], videos["b.gif"])  # <= 256 colours: exact
    webm = src[2]["video"]  # lossless VP9 in YUV 4:4:4: off by rounding only
    assert webm.shape == videos["sub/c.webm"].shape
    assert np.abs(webm.astype(int) - videos["sub/c.webm"]).max() <= 3
    np.testing.assert_array_equal(src.read_window(0, 2, 3, None)["video"], videos["a.mp4"][[0, 3]])
    window = src.read_window(2, 3, 1, np.random.default_rng(1))[
        "video"
    ]  # webm: length from decoding
    assert window.shape == (3, H, W, 3)
    assert VideoFolderVideos(str(root), "ignored", split_folders=False, grayscale=True)[0][
        "video"
    ].shape == (7, H, W, 1)


def test_array_record_roundtrip_and_converter(teco_root, tmp_path):
    root, _videos = teco_root
    teco = TecoVideos(str(root), "train")
    summary = pack_array_record(
        teco, str(tmp_path / "direct" / "train"), shard_mb=0.001, progress=False
    )
    assert summary.videos == 4 and summary.frames == 9 + 10 + 11 + 10 and summary.shards == 4
    packed = ArrayRecordVideos(str(tmp_path / "direct"), "train")
    assert len(packed) == len(teco)
    for i in range(len(teco)):
        np.testing.assert_array_equal(packed[i]["video"], teco[i]["video"])
        np.testing.assert_array_equal(packed[i]["actions"], teco[i]["actions"])
        np.testing.assert_array_equal(
            packed.read_window(i, 3, 2, None)["video"], teco[i]["video"][[0, 2, 4]]
        )
    with pytest.raises(FileExistsError, match="overwrite"):
        pack_array_record(teco, str(tmp_path / "direct" / "train"), progress=False)

    out = tmp_path / "cli"
    summaries = convert.main(
        ["teco", "--root", str(root), "--out", str(out), "--frame-size", "4", "--no-progress"]
    )
    assert [s.videos for s in summaries] == [4, 2]
    small = ArrayRecordVideos(str(out), "test")
    assert small[0]["video"].shape == (9, 4, 4, 3)
    assert ArrayRecordVideos(str(out), "test", actions=False)[0].keys() == {"video"}
    with pytest.raises(FileNotFoundError, match="convert"):
        ArrayRecordVideos(str(out), "validation")


def test_converter_skips_bad_files(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    np.savez(tmp_path / "train" / "good.npz", video=tagged_video(0, 4))
    (tmp_path / "train" / "bad.npz").write_bytes(b"oops")
    with pytest.raises(BadVideoError, match=r"bad\.npz"):
        convert.main(
            [
                "teco",
                "--root",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--splits",
                "train",
                "--no-actions",
                "--no-progress",
            ]
        )
    summaries = convert.main(
        [
            "teco",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--splits",
            "train",
            "--no-actions",
            "--no-progress",
            "--on-bad-file",
            "skip",
            "--overwrite",
        ]
    )
    assert summaries[0].videos == 1 and len(summaries[0].skipped) == 1
    assert "skipped 1 bad file" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="without actions"):
            ArrayRecordVideos(str(tmp_path / "o"), "train")
