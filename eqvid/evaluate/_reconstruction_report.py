"""The reconstruction report of a tokenizer: how well held-out videos come back through
its codes (PSNR, SSIM, MSE) and how much of its codebook it uses (what `train` writes
as eval.md / eval.json at the end of a tokenizer's run)."""

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from jaxtyping import Array, Float

from ..metrics import frame_metrics, psnr_ceiling
from ..models import AbstractVideoTokenizer, encode_videos
from ..models._tokenizer import decode_codes

SSIM_MIN_SIZE = 11
"""The smallest frame side SSIM is computed on (its Gaussian window)."""


@dataclasses.dataclass(frozen=True)
class ReconstructionReport:
    """Reconstructions of held-out videos, scored frame by frame, and the codes used.

    Frame scores are means over every frame of every video (the frames are the
    tokenizer's input, so all of them count); PSNR of a frame reconstructed exactly
    is the finite `psnr_ceiling` (counted in `identical`)."""

    model_name: str
    num_videos: int
    frames: int
    """Frames per video."""
    frame_size: tuple[int, int]
    psnr: float
    """dB, pixels in [0, 1]."""
    ssim: float | None
    """`tf.image.ssim` form; None for frames smaller than the 11×11 window."""
    mse: float
    """Pixels in [0, 1]."""
    psnr_per_frame: list[float]
    """Mean PSNR at each frame position of the videos (a video tokenizer codes frames in
    groups: the positions show whether some come back worse)."""
    identical: int
    """Frames reconstructed exactly (their PSNR is the ceiling)."""
    n_codes: int
    """The codebook size."""
    codes_used: int
    """Distinct codes in the codes of all held-out videos."""
    perplexity: float
    """`exp(entropy)` of the code frequencies over all held-out videos (n_codes if all
    codes are used equally, 1 if one code is used)."""
    code_shape: tuple[int, int, int]
    """Codes per video: `(code_time, code_height, code_width)`."""
    lpips: float | None = None
    """Mean LPIPS (AlexNet; lower is better) when it was computed."""
    written_to: str = ""
    """The folder the report's files went to (evaluation), or empty."""

    @property
    def usage(self) -> float:
        """The fraction of the codebook in use."""
        return self.codes_used / self.n_codes

    def as_dict(self) -> dict:
        """For eval.json."""
        out = dataclasses.asdict(self)
        out["usage"] = self.usage
        return out

    def markdown(self) -> str:
        """For eval.md: the scores and the codebook's use, in words and one table."""
        h, w = self.frame_size
        t, ch, cw = self.code_shape
        ssim = "–" if self.ssim is None else f"{self.ssim:.4f}"
        lines = [
            f"# {self.model_name}: reconstruction of held-out videos",
            "",
            f"{self.num_videos} held-out videos of {self.frames} frames of {h}×{w}, encoded to "
            f"{t}×{ch}×{cw} codes each and decoded back; every frame scored against its "
            "input. PSNR and MSE on pixels in [0, 1]; SSIM as `tf.image.ssim` (11×11 Gaussian "
            "window), reconstructions clipped to the frame range. Means over frames and videos.",
            "",
            "| metric | value |",
            "|---|---:|",
            f"| PSNR (dB, higher is better) | {self.psnr:.2f} |",
            f"| SSIM (higher is better) | {ssim} |",
            f"| MSE (lower is better) | {self.mse:.5f} |",
            *([] if self.lpips is None else [f"| LPIPS (lower is better) | {self.lpips:.4f} |"]),
            f"| codes used | {self.codes_used} of {self.n_codes} ({100 * self.usage:.1f}%) |",
            f"| code perplexity | {self.perplexity:.1f} (of at most {self.n_codes}) |",
            "",
        ]
        if self.ssim is None:
            lines.append(f"SSIM is not computed: frames are smaller than {SSIM_MIN_SIZE}×11.")
        if self.identical:
            ceiling = psnr_ceiling(h, w, 1)
            lines.append(
                f"{self.identical} frames came back exactly; their PSNR counts as "
                f"{ceiling:.2f} dB (the finite ceiling, `eqvid.metrics.psnr_ceiling`)."
            )
        if len(self.psnr_per_frame) > 1:
            cells = ", ".join(f"{v:.2f}" for v in self.psnr_per_frame)
            lines.append(f"PSNR by frame position (dB): {cells}.")
        dead = self.n_codes - self.codes_used
        if dead:
            lines.append(
                f"{dead} codes are never used on these videos (dead codes waste codebook "
                "capacity; restarting them, `restart_threshold`, puts them back to use)."
            )
        return "\n".join(lines).rstrip() + "\n"

    def wrote(self) -> str:
        """One line: where the report's files went."""
        return f"eqvid: wrote metrics.json, metrics.md to {self.written_to}"


def reconstruction_report(
    model: AbstractVideoTokenizer,
    videos: Float[np.ndarray, "batch time height width channels"],
    *,
    chunk: int = 16,
    model_name: str = "tokenizer",
    lpips_fn: Callable[[Array, Array], Array | np.ndarray] | None = None,
) -> ReconstructionReport:
    """Encode and decode `videos` (in `[-1, 1]`) with `model` (its state folded in), in
    chunks of `chunk` videos, and score the reconstructions (PSNR, SSIM, MSE, and LPIPS
    with `lpips_fn(x, y) -> (n,)` on frames) and the codes (distinct codes used,
    perplexity)."""
    videos = np.asarray(videos, np.float32)
    if videos.ndim != 5 or len(videos) == 0:
        raise ValueError(
            "reconstruction_report: `videos` must be a non-empty batch (batch, time, height, "
            f"width, channels), got shape {videos.shape}."
        )
    codes, recon = [], []
    for i in range(0, len(videos), chunk):
        c = encode_videos(model, videos[i : i + chunk])
        codes.append(np.asarray(c))
        recon.append(np.clip(np.asarray(decode_codes(model, c)), -1.0, 1.0))
    codes_all = np.concatenate(codes)
    fake = np.concatenate(recon)
    if fake.shape != videos.shape:
        raise ValueError(
            f"reconstruction_report: the tokenizer's reconstructions have shape {fake.shape}, "
            f"not the videos' {videos.shape}."
        )
    n, t, h, w, c = videos.shape
    mse = float(np.mean(np.square((fake - videos) / 2.0)))
    ssim = lpips = None
    if min(h, w) >= SSIM_MIN_SIZE:
        scores = frame_metrics(videos, fake, context=0, value_range="[-1,1]", lpips_fn=lpips_fn)
        if "lpips" in scores:
            lpips = float(scores["lpips"].astype(np.float64).mean())
        psnr_frames = np.minimum(scores["psnr"].astype(np.float64), psnr_ceiling(h, w, c))
        ssim = float(scores["ssim"].astype(np.float64).mean())
    else:
        per = np.mean(np.square((fake - videos) / 2.0), axis=(2, 3, 4)).astype(np.float64)
        with np.errstate(divide="ignore"):
            psnr_frames = np.where(per > 0, -10.0 * np.log10(np.maximum(per, 1e-30)), np.inf)
        psnr_frames = np.minimum(psnr_frames, psnr_ceiling(h, w, c))
    identical = int(np.sum(np.all(fake == videos, axis=(2, 3, 4))))
    counts = np.bincount(codes_all.reshape(-1), minlength=model.n_codes)
    p = counts[counts > 0] / counts.sum()
    return ReconstructionReport(
        model_name=model_name,
        num_videos=n,
        frames=t,
        frame_size=(h, w),
        psnr=float(psnr_frames.mean()),
        ssim=ssim,
        mse=mse,
        psnr_per_frame=[float(v) for v in psnr_frames.mean(axis=0)],
        identical=identical,
        n_codes=model.n_codes,
        codes_used=int(np.count_nonzero(counts)),
        perplexity=float(math.exp(-np.sum(p * np.log(p)))),
        code_shape=tuple(int(s) for s in codes_all.shape[1:]),  # type: ignore[arg-type]
        lpips=lpips,
    )
