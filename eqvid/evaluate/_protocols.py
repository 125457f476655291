"""Named evaluation protocols: the papers' context/horizon/video counts and metrics."""

import dataclasses
from typing import Literal

Metric = Literal["psnr", "ssim", "lpips", "fvd"]


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How a model is evaluated: which frames it sees, how far it generates, on how
    many test videos, and which metrics are reported how.

    A protocol with `context=0` is *unconditional*: the model draws whole clips of
    `horizon` frames from nothing (`AbstractUnconditionalVideoModel`), and the clips
    are compared as sets with real ones (FVD / KVD; no frame metrics, there is no truth
    to pair a generated frame with)."""

    context: int
    """Ground-truth frames given to the model; 0: none (unconditional generation)."""
    horizon: int
    """Frames generated after the context (unconditional: the clip length)."""
    num_videos: int
    """Videos generated and compared (and real videos they are compared with)."""
    chunk: int = 256
    """Videos per chunk: metrics are reported as mean ± std over chunks (the papers use
    256)."""
    metrics: tuple[Metric, ...] = ("psnr", "ssim", "lpips", "fvd")
    """Metrics computed. PSNR / SSIM / LPIPS on generated frames only (mean over time,
    then videos); FVD on the whole video, context included."""
    ssim_form: Literal["tf", "skimage"] = "tf"
    """`tf` (TECO / ConvS5, `tf.image.ssim`) or `skimage` (MCVD)."""
    runs: int = 1
    """Unconditional protocols: independent generations of `num_videos` clips each
    (seeds `seed`, `seed + 1`, …), each scored against the same real videos; FVD and
    KVD are reported as mean ± std over runs (MeBT's 10 runs of 2048)."""
    samples_per_video: int = 1
    """Samples drawn per test video (k); with k > 1 each video is scored by its best
    sample, chosen per frame metric (highest PSNR and SSIM, lowest LPIPS: MCVD's and
    SRVP's best-of-k), and FVD takes each video's first sample."""
    real_split: Literal["test", "train"] = "test"
    """The split the real videos come from (MeBT compares with training videos)."""
    description: str = ""
    """Where the protocol comes from."""

    @property
    def unconditional(self) -> bool:
        """Whether clips are generated from nothing (`context == 0`)."""
        return self.context == 0


PROTOCOLS: dict[str, EvalProtocol] = {
    # ConvS5 (Smith et al. 2023) §5, following TECO: 1024 test videos, 100 context
    # frames, 400 / 800 / 1200 generated; FVD in chunks of 256 over whole videos.
    **{
        f"convs5-mmnist-{h}": EvalProtocol(
            context=100,
            horizon=h,
            num_videos=1024,
            description=f"ConvS5 Moving-MNIST: 100 context → {h} generated frames, 1024 videos",
        )
        for h in (400, 800, 1200)
    },
    # TECO (Yan et al. 2023) DMLab: 36 context frames, 264 generated, action-conditioned.
    "teco-dmlab": EvalProtocol(
        context=36,
        horizon=264,
        num_videos=256,
        description="TECO DMLab: 36 context → 264 generated frames, actions given",
    ),
    # ConvSSM (Smith et al. 2023) DMLab, its models trained with causal masking: 144
    # context frames, 156 generated from the actions (open_loop_ctx_1, eval_seq_len 300).
    "convssm-dmlab": EvalProtocol(
        context=144,
        horizon=156,
        num_videos=256,
        description="ConvSSM DMLab: 144 context → 156 generated frames, actions given",
    ),
    # MeBT (Yoo et al. 2023), scripts/valid_dnr_*_16f.sh and measure_fvd_with_numpy.py:
    # 2048 unconditional 16-frame clips per run, 10 runs, FVD and KVD (I3D logits, all
    # 2048 at once) against 2048 training videos.
    "mebt-16f": EvalProtocol(
        context=0,
        horizon=16,
        num_videos=2048,
        chunk=2048,
        metrics=("fvd",),
        runs=10,
        real_split="train",
        description="MeBT 16 frames: 2048 unconditional clips × 10 runs, FVD/KVD vs 2048 "
        "training videos",
    ),
    # scripts/valid_dnr_*_128f.sh: 512 clips of 128 frames per run, 5 runs.
    "mebt-128f": EvalProtocol(
        context=0,
        horizon=128,
        num_videos=512,
        chunk=512,
        metrics=("fvd",),
        runs=5,
        real_split="train",
        description="MeBT 128 frames: 512 unconditional clips × 5 runs, FVD/KVD vs 512 "
        "training videos",
    ),
    # MCVD (Voleti et al. 2022) SMMNIST: 5 past → 10 predicted frames on 256 test
    # videos, best of 10 samples per video (chosen per metric, as runners/ncsn_runner.py),
    # skimage's SSIM (Gaussian window, σ 1.5), FVD of the 15-frame clips.
    "mcvd-smmnist": EvalProtocol(
        context=5,
        horizon=10,
        num_videos=256,
        ssim_form="skimage",
        samples_per_video=10,
        description="MCVD SMMNIST: 5 context → 10 predicted frames, 256 videos, best of 10 "
        "samples per video",
    ),
    # A quick look on a CPU (no pretrained networks needed).
    "quick": EvalProtocol(
        context=10,
        horizon=10,
        num_videos=64,
        chunk=64,
        metrics=("psnr", "ssim"),
        description="a quick check: 10 context → 10 generated frames, 64 videos, PSNR/SSIM",
    ),
}


def protocol(name: str) -> EvalProtocol:
    """The protocol called `name` (a key of `PROTOCOLS`)."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}.") from None
