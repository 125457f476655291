"""What a training run writes while it goes: the metrics log (CSV and TensorBoard) and
the sample pictures. Each is a small object the loop calls; only the main process
writes files."""

import csv
import io
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from ._files import write_atomic
from ._samples import (
    save_prediction_gif,
    save_prediction_strip,
    save_reconstruction_strip,
    save_slot_strip,
)

FIXED_COLUMNS = ("lr", "grad_norm", "frames_per_s", "elapsed_s")


class MetricsLog:
    """`metrics.csv` (one row per logged step: step, loss, every loss term, learning
    rate, gradient norm, frames/s, elapsed seconds) and TensorBoard event files under
    `tensorboard/` with the same scalars and the sample strips as images.

    On resume from step `start`, rows logged after `start` (about to be redone) are
    dropped and TensorBoard is told to purge events after `start`. A value the file
    has no column for yet (a run resumed by a newer eqvid that logs more terms) adds
    the column: the file is rewritten with it, earlier rows left blank there.
    """

    def __init__(self, run_dir: pathlib.Path, *, start: int, main: bool, tensorboard: bool):
        self.path = run_dir / "metrics.csv"
        self.main = main
        self.header: list[str] | None = None
        self.rows: list[dict[str, str]] = []
        self.file = None
        if main and start > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.header = list(reader.fieldnames or []) or None
                # (a row cut short by a kill has no step, or not a number)
                numbered = [(_step(row), row) for row in reader]
                self.rows = [row for n, row in numbered if n is not None and n <= start]
        if main:
            self._rewrite()
        self.tensorboard = None
        if main and tensorboard:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(
                str(run_dir / "tensorboard"), purge_step=start + 1 if start > 0 else None
            )

    def _rewrite(self) -> None:
        """The whole file again (header and every row), atomically: a kill leaves the
        old file or the new one, never a truncated one. Later rows are appended."""
        if self.file is not None:
            self.file.close()
        text = io.StringIO()
        if self.header is not None:
            writer = csv.DictWriter(text, self.header, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        write_atomic(self.path, text.getvalue())
        self.file = open(self.path, "a", newline="")  # noqa: SIM115

    def write(self, step: int, metrics: dict[str, float], **extra: float) -> None:
        """Log `metrics` (loss, terms, gradient norms) and `extra` (lr, frames/s,
        elapsed seconds) at `step`."""
        values = {**metrics, **extra}
        row = {"step": str(step)} | {name: _format(name, v) for name, v in values.items()}
        self.rows.append(row)
        new = [k for k in values if self.header is None or k not in self.header]
        if self.main and (self.header is None or new):
            known = [] if self.header is None else [c for c in self.header if c != "step"]
            names = set(known) | set(values)
            terms = sorted(k for k in names if k != "loss" and k not in FIXED_COLUMNS)
            fixed = [c for c in FIXED_COLUMNS if c in names]
            self.header = ["step", *(["loss"] if "loss" in names else []), *terms, *fixed]
            self._rewrite()
        elif self.file is not None and self.header is not None:
            csv.DictWriter(self.file, self.header, restval="").writerow(row)
            self.file.flush()
        if self.tensorboard is not None:
            for name, value in values.items():
                group = "train" if name in metrics else "run"
                self.tensorboard.add_scalar(f"{group}/{name}", value, step)
            self.tensorboard.flush()

    def image(self, tag: str, path: pathlib.Path, step: int) -> None:
        """Put the picture at `path` into TensorBoard under `tag`."""
        if self.tensorboard is not None:
            picture = np.asarray(Image.open(path).convert("RGB"))
            self.tensorboard.add_image(tag, picture, step, dataformats="HWC")
            self.tensorboard.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _step(row: dict) -> int | None:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return None


def _format(name: str, value: float) -> str:
    if name == "lr":
        return f"{value:.3e}"
    if name in ("frames_per_s", "elapsed_s"):
        return f"{value:.1f}"
    if name.startswith("grad_norm"):
        return f"{value:.4f}"
    return f"{value:.6f}"


class SampleWriter:
    """Sample pictures of held-out videos: `samples/step_XXXXXX.png` (context |
    prediction | ground truth strips) and `.gif` (model next to truth), and the strip
    in TensorBoard; for an object-centric model also `step_XXXXXX_slots.png` (each
    slot's mask over the frames, `slots` in TensorBoard)."""

    def __init__(
        self,
        run_dir: pathlib.Path,
        videos: np.ndarray,
        actions: np.ndarray | None,
        context: int,
        *,
        main: bool,
        log: MetricsLog,
    ):
        self.folder = run_dir / "samples"
        self.videos = videos
        self.actions = actions
        self.context = context
        self.main = main
        self.log = log

    def __call__(self, generate: Any, step: int, masks: Any = None) -> None:
        """`generate(context, horizon, actions)` gives the model's frames; `masks(videos)`
        (object-centric models) each slot's share of each pixel `(batch, time, slots,
        height, width)`."""
        horizon = self.videos.shape[1] - self.context
        pred = np.asarray(generate(self.videos[:, : self.context], horizon, self.actions))
        if not self.main:  # every process computes (the model spans them all); one writes
            return
        args = (self.videos[:, : self.context], pred, self.videos[:, self.context :])
        strip = save_prediction_strip(self.folder / f"step_{step:06d}.png", *args)
        save_prediction_gif(self.folder / f"step_{step:06d}.gif", *args)
        self.log.image("samples", strip, step)
        if masks is not None:
            shown = self.videos[:2]
            slots = save_slot_strip(
                self.folder / f"step_{step:06d}_slots.png", shown, np.asarray(masks(shown))
            )
            self.log.image("slots", slots, step)


class ReconstructionWriter:
    """Sample pictures of a tokenizer on held-out videos: `samples/step_XXXXXX.png`
    (input frames above their reconstructions), and the strip in TensorBoard."""

    def __init__(self, run_dir: pathlib.Path, videos: np.ndarray, *, main: bool, log: MetricsLog):
        self.folder = run_dir / "samples"
        self.videos = videos
        self.main = main
        self.log = log

    def __call__(self, reconstruct: Any, step: int) -> None:
        """`reconstruct(videos)` gives the tokenizer's reconstructions."""
        recon = np.clip(np.asarray(reconstruct(self.videos)), -1.0, 1.0)
        if not self.main:
            return
        strip = save_reconstruction_strip(self.folder / f"step_{step:06d}.png", self.videos, recon)
        self.log.image("samples", strip, step)
