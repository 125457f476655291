"""Moving-MNIST as a Grain random-access source, generated on the fly.

The motion model follows the generator of Srivastava et al. (2015) as used by
ConvSSM / ConvS5: each digit starts at a position drawn uniformly from
`[0, 1]^2`, moves in a direction `theta ~ U[0, 2 pi)` by `step_length` per frame
(in units of the free canvas, `frame_size - 28` pixels), and bounces off the
borders by clamping the position to `[0, 1]` and reflecting that velocity
component. The digit's top-left corner is the position scaled to the free canvas
and floored to whole pixels; overlapping digits are combined with `max`. As in
the original, the first frame is taken after one step.

With `stochastic=True` (Stochastic Moving MNIST, Denton & Fergus 2018, MCVD's
SMMNIST) a digit takes a new random direction at every bounce, its component across
the wall pointing away from it; the speed stays `step_length`.

Each sequence is a pure function of `(seed, index)`, so the source is
deterministic, order-independent and needs no storage.
"""

import math
import numbers

import numpy as np

from ._hot_path import hot_path

__all__ = ["MovingMNIST"]

_DIGIT_SIZE = 28


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"MovingMNIST: `{name}` must be an int >= {minimum}; got {value!r} ({type(value).__name__})."
        )
    if value < minimum:
        raise ValueError(f"MovingMNIST: `{name}` must be an int >= {minimum}; got {value}.")
    return int(value)


class MovingMNIST:
    """Moving-MNIST videos: a Grain random-access data source (`len`, `[index]`).

    **Arguments** (keyword only)

    - `digits`: `uint8` digit images of shape `(N, 28, 28)`, e.g. from
      `eqvid.data.load_digits`.
    - `num_sequences`: number of videos (the source's length).
    - `seq_len`: frames per video.
    - `frame_size`: height and width of each frame in pixels (at least 28).
    - `num_digits`: digits per video, each with its own trajectory.
    - `step_length`: distance moved per frame, as a fraction of the free canvas
      (`frame_size - 28` pixels); 0.15 on 64x64 frames is about 5.4 px per frame.
    - `bounce`: if `True`, digits bounce off the borders and never leave the frame;
      if `False`, they keep moving in a straight line and drift out of the frame
      (drawn clipped).
    - `stochastic`: a new random direction at each bounce (SMMNIST's motion; needs
      `bounce`).
    - `seed`: non-negative base seed; video `i` is drawn from
      `np.random.default_rng([seed, i])`.

    `source[i]` returns `{"video": uint8 array (seq_len, frame_size, frame_size, 1)}`,
    background 0, identical whenever it is asked for, whatever the call order.
    """

    def __init__(
        self,
        *,
        digits: np.ndarray,
        num_sequences: int,
        seq_len: int,
        frame_size: int = 64,
        num_digits: int = 2,
        step_length: float | int = 0.15,
        bounce: bool = True,
        stochastic: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(digits, np.ndarray):
            raise ValueError(
                f"MovingMNIST: `digits` must be a numpy uint8 array of shape (N, 28, 28); "
                f"got {type(digits).__name__}."
            )
        if (
            digits.dtype != np.uint8
            or digits.ndim != 3
            or digits.shape[1:] != (_DIGIT_SIZE, _DIGIT_SIZE)
        ):
            raise ValueError(
                f"MovingMNIST: `digits` must be a uint8 array of shape (N, 28, 28); "
                f"got dtype {digits.dtype} and shape {digits.shape}."
            )
        if digits.shape[0] == 0:
            raise ValueError(
                "MovingMNIST: `digits` must hold at least one image; got shape (0, 28, 28)."
            )
        self.num_sequences = _check_int("num_sequences", num_sequences, 1)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        if (
            isinstance(frame_size, numbers.Integral)
            and not isinstance(frame_size, bool)
            and frame_size < _DIGIT_SIZE
        ):
            raise ValueError(
                f"MovingMNIST: `frame_size` must be at least the digit size {_DIGIT_SIZE} so digits fit "
                f"in the frame; got {frame_size}."
            )
        self.frame_size = _check_int("frame_size", frame_size, _DIGIT_SIZE)
        self.num_digits = _check_int("num_digits", num_digits, 1)
        if (
            isinstance(step_length, bool)
            or not isinstance(step_length, numbers.Real)
            or not math.isfinite(step_length)
            or step_length < 0
        ):
            raise ValueError(
                f"MovingMNIST: `step_length` must be a finite float >= 0 (fraction of the free canvas "
                f"moved per frame); got {step_length!r}."
            )
        self.step_length = float(step_length)
        if not isinstance(bounce, (bool, np.bool_)):
            raise ValueError(
                f"MovingMNIST: `bounce` must be a bool; got {bounce!r} ({type(bounce).__name__})."
            )
        self.bounce = bool(bounce)
        if not isinstance(stochastic, (bool, np.bool_)):
            raise ValueError(
                f"MovingMNIST: `stochastic` must be a bool; got {stochastic!r} "
                f"({type(stochastic).__name__})."
            )
        if stochastic and not bounce:
            raise ValueError(
                "MovingMNIST: `stochastic` (a new direction at each bounce) needs `bounce=True`."
            )
        self.stochastic = bool(stochastic)
        self.seed = _check_int("seed", seed, 0)
        view = digits.view()
        view.flags.writeable = False
        self.digits = view

    def __len__(self) -> int:
        return self.num_sequences

    def __repr__(self) -> str:
        return (
            f"MovingMNIST(num_sequences={self.num_sequences}, seq_len={self.seq_len}, "
            f"frame_size={self.frame_size}, num_digits={self.num_digits}, "
            f"step_length={self.step_length}, bounce={self.bounce}, "
            f"stochastic={self.stochastic}, seed={self.seed}, "
            f"digits=<{self.digits.shape[0]} x 28x28 uint8>) -> "
            f"{{'video': uint8 ({self.seq_len}, {self.frame_size}, {self.frame_size}, 1)}}"
        )

    @hot_path
    def _trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """Top-left corners `(seq_len, 2)` as `(row, col)` integer pixels for one digit."""
        y, x = rng.random(2)
        theta = rng.random() * 2.0 * math.pi
        v_y, v_x = math.sin(theta), math.cos(theta)
        step = self.step_length
        positions = np.empty((self.seq_len, 2), np.float64)
        for t in range(self.seq_len):
            y += v_y * step
            x += v_x * step
            if self.bounce:
                # (hit, clamp to, sign of the velocity across the wall after the bounce)
                for axis, hit, wall, away in (
                    (1, x <= 0.0, 0.0, 1.0), (1, x >= 1.0, 1.0, -1.0),
                    (0, y <= 0.0, 0.0, 1.0), (0, y >= 1.0, 1.0, -1.0),
                ):  # fmt: skip
                    if not hit:
                        continue
                    if axis == 1:
                        x, v_x = wall, -v_x
                    else:
                        y, v_y = wall, -v_y
                    if self.stochastic:  # a new direction, away from this wall
                        theta = rng.random() * 2.0 * math.pi
                        across, along = abs(math.cos(theta)) * away, math.sin(theta)
                        v_x, v_y = (across, along) if axis == 1 else (along, across)
            positions[t] = (y, x)
        return np.floor(positions * (self.frame_size - _DIGIT_SIZE)).astype(np.int64)

    def __getitem__(self, index: int | np.integer) -> dict[str, np.ndarray]:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(
                f"MovingMNIST indices must be integers; got {index!r} ({type(index).__name__})."
            )
        if not 0 <= index < self.num_sequences:
            raise IndexError(
                f"MovingMNIST index {index} out of range: valid indices are 0..{self.num_sequences - 1} "
                "(negative indices are not supported)."
            )
        rng = np.random.default_rng([self.seed, int(index)])
        size, d = self.frame_size, _DIGIT_SIZE
        video = np.zeros((self.seq_len, size, size), np.uint8)
        for _ in range(self.num_digits):
            corners = self._trajectory(rng)
            digit = self.digits[rng.integers(self.digits.shape[0])]
            for t, (top, left) in enumerate(corners):
                r0, r1 = max(top, 0), min(top + d, size)
                c0, c1 = max(left, 0), min(left + d, size)
                if r0 >= r1 or c0 >= c1:
                    continue  # entirely outside the frame (only without bounce)
                patch = digit[r0 - top : r1 - top, c0 - left : c1 - left]
                np.maximum(video[t, r0:r1, c0:c1], patch, out=video[t, r0:r1, c0:c1])
        return {"video": video[..., None]}
