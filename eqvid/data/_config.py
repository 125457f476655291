"""Configuration of the Moving-MNIST data and its train / held-out splits."""

import dataclasses

import numpy as np

from ._generated import GeneratedVideosConfig
from ._mnist_digits import load_digits
from ._moving_mnist import MovingMNIST


@dataclasses.dataclass(frozen=True)
class MovingMNISTConfig(GeneratedVideosConfig):
    """Moving-MNIST data: digits, frame size, motion and split sizes."""

    mnist_path: str | None = None
    """Path to the standard MNIST `train-images-idx3-ubyte(.gz)` file; none uses
    scikit-learn's bundled handwritten digits (offline, 8x8 scans upsampled)."""
    frame_size: int = 64
    """Height and width of the frames in pixels."""
    num_digits: int = 2
    """Digits per video."""
    seq_len: int = 20
    """Frames per training video."""
    step_length: float = 0.15
    """Motion per frame as a fraction of the free canvas (0.15 ≈ 5.4 px at 64x64)."""
    bounce: bool = True
    """Digits bounce off the borders (otherwise they drift out of the frame)."""
    stochastic: bool = False
    """Stochastic Moving MNIST (SMMNIST, MCVD's data): a new random direction at each
    bounce, so the future is not a function of the past."""
    train_sequences: int = 1_000_000
    """Size of the (generated on the fly) training set."""
    held_out_digit_fraction: float = 0.1
    """Fraction of digit images kept for held-out videos only."""
    data_seed: int = 0
    """Seed of the video generator (held-out videos use a disjoint stream)."""
    test_sequences: int = 1024
    """Size of the held-out (test) split that `make_dataset(config, split="test")` reads."""

    def __post_init__(self):
        if not 0.0 < self.held_out_digit_fraction < 1.0:
            raise ValueError(
                "MovingMNISTConfig: `held_out_digit_fraction` must be in (0, 1), got "
                f"{self.held_out_digit_fraction}."
            )

    @property
    def channels(self) -> int:
        """Grey frames: one channel."""
        return 1

    def splits(
        self, *, test_sequences: int, test_seq_len: int | None = None
    ) -> tuple[MovingMNIST, MovingMNIST]:
        """`(train, held_out)` sources (`moving_mnist_splits`)."""
        return moving_mnist_splits(
            self, held_out_sequences=test_sequences, held_out_seq_len=test_seq_len
        )


_HELD_OUT_SEED_OFFSET = 1 << 40


def moving_mnist_splits(
    config: MovingMNISTConfig, *, held_out_sequences: int, held_out_seq_len: int | None = None
) -> tuple[MovingMNIST, MovingMNIST]:
    """`(train, held_out)` sources. Held-out videos use digit images the training
    videos never show and a disjoint random stream."""
    digits = load_digits(config.mnist_path)
    rng = np.random.default_rng(config.data_seed)
    order = rng.permutation(len(digits))
    n_held = max(1, round(len(digits) * config.held_out_digit_fraction))
    train = MovingMNIST(
        digits=digits[np.sort(order[n_held:])],
        num_sequences=config.train_sequences,
        seq_len=config.seq_len,
        seed=config.data_seed,
        frame_size=config.frame_size,
        num_digits=config.num_digits,
        step_length=config.step_length,
        bounce=config.bounce,
        stochastic=config.stochastic,
    )
    held_out = MovingMNIST(
        digits=digits[np.sort(order[:n_held])],
        num_sequences=held_out_sequences,
        seq_len=held_out_seq_len or config.seq_len,
        seed=config.data_seed + _HELD_OUT_SEED_OFFSET,
        frame_size=config.frame_size,
        num_digits=config.num_digits,
        step_length=config.step_length,
        bounce=config.bounce,
        stochastic=config.stochastic,
    )
    return train, held_out
