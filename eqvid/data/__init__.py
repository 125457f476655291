"""Datasets and the input pipeline.

- `make_dataset(config_or_source, batch_size=..., split=...)`: the one entry for
  training and evaluation: windows, resize/crop, shuffle, repeat, shard over JAX
  processes, batch, scale to float, multi-process prefetch; checkpointable Grain
  iterators. Batches are `{"video": float32 (batch, time, height, width, channels),
  "actions": int32 (batch, time)}` (actions when the data has them).
- Dataset configs, by `--dataset` name (`DATASETS`, `dataset_config_class`):
  `MovingMNISTConfig` and `BouncingBallsConfig` (generated on the fly; both a
  `GeneratedVideosConfig`), `TecoConfig` (TECO's `.npz` / `.mp4` + actions),
  `FrameFolderConfig` (MeBT's `[VIDEO_ID]_[FRAME].png` folders),
  `VideoFolderConfig` (mp4 / webm / gif files, decoded with PyAV) and
  `ArrayRecordConfig` (shards packed by `python -m eqvid.data.convert`).
  `frame_spec(config)` tells the frame size, channels and actions they yield.
- Sources (Grain random-access, `source[i]` = one whole video as uint8):
  `MovingMNIST`, `BouncingBalls`, `TecoVideos`, `FrameFolderVideos`, `VideoFolderVideos`,
  `ArrayRecordVideos`; `pack_array_record(source, folder)` packs any of them.
- Bad files raise `BadVideoError` naming the file, or with `on_bad_file="skip"` are
  skipped with a counted `BadVideoWarning`.
- Codes of a tokenizer, encoded once with `python -m eqvid.data.encode --tokenizer
  RUN_OR_FOLDER --dataset NAME ... --out DIR`: `CodesVideos(DIR, split)` yields
  `{"codes": int32 (code_time, h, w)[, "actions"]}`; `check_tokenizer` checks that
  codes fit a tokenizer, `codes_to_frames` decodes them to uint8 frames. `CodesConfig`
  (`--dataset codes`) trains the latent models on windows of them:
  `make_dataset` yields `{"codes": int32 (batch, seq_len, h, w)[, "actions"]}`.
- `load_digits(mnist_path)`: digit images for Moving MNIST, from the MNIST
  `train-images-idx3-ubyte(.gz)` file (`load_idx_images`) or, offline, from
  scikit-learn's bundled handwritten digits (`sklearn_digits`).
"""

from ._array_record import ArrayRecordVideos
from ._bad_video import BadVideoError, BadVideoWarning
from ._bouncing_balls import BouncingBalls, BouncingBallsConfig
from ._codes import CodesConfig, CodesVideos, check_tokenizer, codes_to_frames
from ._config import MovingMNISTConfig, moving_mnist_splits
from ._datasets import DATASETS, FrameSpec, dataset_config_class, frame_spec, open_source
from ._evaluation_videos import evaluation_videos
from ._file_config import (
    ArrayRecordConfig,
    FrameFolderConfig,
    TecoConfig,
    VideoFilesConfig,
    VideoFolderConfig,
)
from ._frame_folder import FrameFolderVideos
from ._generated import GeneratedVideosConfig
from ._mnist_digits import load_digits, load_idx_images, sklearn_digits
from ._moving_mnist import MovingMNIST
from ._pack import PackSummary, pack_array_record
from ._pipeline import make_dataset
from ._teco import TecoVideos
from ._video_files import VideoFiles
from ._video_folder import VideoFolderVideos

__all__ = [
    "DATASETS",
    "ArrayRecordConfig",
    "ArrayRecordVideos",
    "BadVideoError",
    "BadVideoWarning",
    "BouncingBalls",
    "BouncingBallsConfig",
    "CodesConfig",
    "CodesVideos",
    "FrameFolderConfig",
    "FrameFolderVideos",
    "FrameSpec",
    "GeneratedVideosConfig",
    "MovingMNIST",
    "MovingMNISTConfig",
    "PackSummary",
    "TecoConfig",
    "TecoVideos",
    "VideoFiles",
    "VideoFilesConfig",
    "VideoFolderConfig",
    "VideoFolderVideos",
    "check_tokenizer",
    "codes_to_frames",
    "dataset_config_class",
    "evaluation_videos",
    "frame_spec",
    "load_digits",
    "load_idx_images",
    "make_dataset",
    "moving_mnist_splits",
    "open_source",
    "pack_array_record",
    "sklearn_digits",
]
