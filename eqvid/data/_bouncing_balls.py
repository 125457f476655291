"""Bouncing balls: coloured balls that move at constant speed and bounce elastically
off the walls and off each other, rendered on a black canvas, generated on the fly
(each video fixed by the seed and its index, as Moving MNIST). The multi-object
video-prediction data of the SlotSSM paper's experiments (and of R-NEM, OP3 before
it): every ball an object a slot can take."""

import dataclasses
import numbers

import numpy as np

from ._generated import GeneratedVideosConfig

_PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    ],
    np.float32,
)  # fmt: skip
"""Ball colours (RGB), one per ball in order: distinct, so a ball is its colour."""

_TEST_SEED_OFFSET = 1 << 40


def advance(
    pos: np.ndarray, vel: np.ndarray, radius: float, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """One physics step of balls `(n, 2)` in the unit square: move by `vel · dt`,
    reflect off the walls, and let each pair that overlaps while approaching collide
    elastically (equal masses: the velocity components along the line between the
    centres are exchanged), then push overlapping balls apart. Returns new arrays."""
    pos, vel = pos + vel * dt, vel.copy()
    r, n = radius, len(pos)
    for axis in range(2):  # walls
        low, high = pos[:, axis] < r, pos[:, axis] > 1 - r
        pos[low, axis] = 2 * r - pos[low, axis]
        pos[high, axis] = 2 * (1 - r) - pos[high, axis]
        vel[low | high, axis] *= -1
    for a in range(n):
        for b in range(a + 1, n):
            d = pos[b] - pos[a]
            dist = np.linalg.norm(d)
            if 0 < dist < 2 * r:
                u = d / dist
                closing = np.dot(vel[a] - vel[b], u)
                if closing > 0:  # approaching: exchange the normal components
                    vel[a] -= closing * u
                    vel[b] += closing * u
                overlap = 2 * r - dist
                pos[a] -= u * overlap / 2
                pos[b] += u * overlap / 2
    return pos, vel


class BouncingBalls:
    """Bouncing-balls videos: a Grain random-access data source (`len`, `[index]`).

    Item `i` is `{"video": uint8 (seq_len, frame_size, frame_size, 3)}`, the same for
    the same `seed` and `i`. Each video has `num_balls` balls of radius `radius ·
    frame_size`, ball `k` in colour `k` of a fixed palette, starting at random
    non-overlapping positions with random directions at `speed · frame_size` pixels
    per frame. Balls reflect off the walls and collide elastically (equal masses: the
    velocity components along the line between the centres are exchanged), computed
    in `substeps` steps per frame; discs are drawn antialiased, a later ball over an
    earlier one.
    """

    def __init__(
        self,
        *,
        num_sequences: int,
        seq_len: int,
        seed: int = 0,
        frame_size: int = 64,
        num_balls: int = 4,
        radius: float = 0.08,
        speed: float = 0.04,
        substeps: int = 4,
    ):
        for name, value in (
            ("num_sequences", num_sequences), ("seq_len", seq_len), ("frame_size", frame_size),
            ("num_balls", num_balls), ("substeps", substeps),
        ):  # fmt: skip
            if value < 1:
                raise ValueError(f"BouncingBalls: `{name}` must be ≥ 1, got {value}.")
        if num_balls > len(_PALETTE):
            raise ValueError(
                f"BouncingBalls: at most {len(_PALETTE)} balls (one colour each), got {num_balls}."
            )
        if not 0 < radius < 0.25:
            raise ValueError(f"BouncingBalls: `radius` must be in (0, 0.25), got {radius}.")
        if num_balls * (2 * radius) ** 2 > 0.5:
            raise ValueError(
                f"BouncingBalls: {num_balls} balls of radius {radius} do not fit the frame "
                "(their squares would cover over half of it); use fewer or smaller balls."
            )
        if speed < 0:
            raise ValueError(f"BouncingBalls: `speed` must be ≥ 0, got {speed}.")
        self.num_sequences, self.seq_len, self.seed = num_sequences, seq_len, seed
        self.frame_size, self.num_balls, self.radius = frame_size, num_balls, radius
        self.speed, self.substeps = speed, substeps

    def __len__(self) -> int:
        return self.num_sequences

    def __repr__(self) -> str:
        return (
            f"BouncingBalls(num_sequences={self.num_sequences}, seq_len={self.seq_len}, "
            f"frame_size={self.frame_size}, num_balls={self.num_balls}, seed={self.seed})"
        )

    def trajectories(self, index: int) -> np.ndarray:
        """The balls' centres `(seq_len, num_balls, 2)` (row, column) in units of the
        frame size, of video `index`."""
        rng = np.random.default_rng([self.seed, int(index)])
        n, r = self.num_balls, self.radius
        pos = np.zeros((n, 2))
        for k in range(n):  # random positions, no overlap (rejection sampling)
            p = rng.uniform(r, 1 - r, 2)
            for _ in range(1000):
                if k == 0 or np.min(np.linalg.norm(pos[:k] - p, axis=1)) > 2 * r:
                    break
                p = rng.uniform(r, 1 - r, 2)
            pos[k] = p
        angle = rng.uniform(0, 2 * np.pi, n)
        vel = self.speed * np.stack([np.sin(angle), np.cos(angle)], axis=1)
        out = np.zeros((self.seq_len, n, 2))
        for t in range(self.seq_len):
            out[t] = pos
            for _ in range(self.substeps):
                pos, vel = advance(pos, vel, r, 1.0 / self.substeps)
        return out

    def __getitem__(self, index: int | np.integer) -> dict[str, np.ndarray]:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(
                f"BouncingBalls indices must be integers; got {index!r} ({type(index).__name__})."
            )
        if not 0 <= index < self.num_sequences:
            raise IndexError(
                f"BouncingBalls index {index} out of range: valid indices are 0.."
                f"{self.num_sequences - 1} (negative indices are not supported)."
            )
        size = self.frame_size
        centres = self.trajectories(int(index)) * size
        radius = self.radius * size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
        video = np.zeros((self.seq_len, size, size, 3), np.float32)
        for t in range(self.seq_len):
            for k in range(self.num_balls):
                dist = np.hypot(yy - centres[t, k, 0], xx - centres[t, k, 1])
                alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)[..., None]  # antialiased edge
                video[t] = video[t] * (1 - alpha) + _PALETTE[k] * alpha
        return {"video": np.round(video).astype(np.uint8)}


@dataclasses.dataclass(frozen=True)
class BouncingBallsConfig(GeneratedVideosConfig):
    """Bouncing-balls data (`--dataset bouncing_balls`): frame size, balls, motion and
    split sizes. The test split is a disjoint stream of videos (another seed)."""

    frame_size: int = 64
    """Height and width of the frames in pixels."""
    num_balls: int = 4
    """Balls per video (each its own colour; at most 10)."""
    radius: float = 0.08
    """Ball radius as a fraction of the frame size."""
    speed: float = 0.04
    """Distance per frame as a fraction of the frame size."""
    seq_len: int = 20
    """Frames per training video."""
    train_sequences: int = 1_000_000
    """Size of the (generated on the fly) training set."""
    test_sequences: int = 1024
    """Size of the test split."""
    data_seed: int = 0
    """Seed of the video generator (the test split uses a disjoint stream)."""

    def __post_init__(self):
        self.splits(test_sequences=1)  # the generator's checks, now

    @property
    def channels(self) -> int:
        """RGB."""
        return 3

    def splits(
        self, *, test_sequences: int, test_seq_len: int | None = None
    ) -> tuple[BouncingBalls, BouncingBalls]:
        """`(train, test)` sources; the test videos `test_seq_len` frames long (default
        `seq_len`)."""

        def source(count: int, length: int, seed: int) -> BouncingBalls:
            return BouncingBalls(
                num_sequences=count, seq_len=length, seed=seed, frame_size=self.frame_size,
                num_balls=self.num_balls, radius=self.radius, speed=self.speed,
            )  # fmt: skip

        train = source(self.train_sequences, self.seq_len, self.data_seed)
        test = source(
            test_sequences, test_seq_len or self.seq_len, self.data_seed + _TEST_SEED_OFFSET
        )
        return train, test
