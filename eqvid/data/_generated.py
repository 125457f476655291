"""What the datasets generated on the fly (Moving MNIST, bouncing balls) give the
pipeline: fixed-length videos from random-access sources, a training split and a
disjoint test split, and the frames' channel count."""

import abc
from typing import Any


class GeneratedVideosConfig(abc.ABC):
    """The config of a dataset generated on the fly (a frozen dataclass with at least
    `frame_size`, `seq_len`, `train_sequences` and `test_sequences`). `make_dataset`,
    `open_source`, `frame_spec` and `evaluation_videos` read any such config through
    `splits` and `channels`."""

    frame_size: int
    seq_len: int
    train_sequences: int
    test_sequences: int

    @property
    @abc.abstractmethod
    def channels(self) -> int:
        """Colour channels of the frames."""

    @abc.abstractmethod
    def splits(self, *, test_sequences: int, test_seq_len: int | None = None) -> tuple[Any, Any]:
        """`(train, test)` random-access sources (`len`, `[i] → {"video": uint8 (T, H,
        W, C)}`): the training videos `seq_len` frames long, `test_sequences` test
        videos `test_seq_len` frames long (default `seq_len`)."""
