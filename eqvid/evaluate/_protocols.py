"""Named evaluation protocols: the papers' context/horizon/video counts and metrics."""

import dataclasses
from typing import Literal

Metric = Literal["psnr", "ssim", "lpips", "fvd"]


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How a model is evaluated: which frames it sees, how far it generates, on how
    many test videos, and which metrics are reported how."""

    context: int
    """Ground-truth frames given to the model."""
    horizon: int
    """Frames generated after the context."""
    num_videos: int
    """Test videos generated and compared."""
    chunk: int = 256
    """Videos per chunk: metrics are reported as mean ± std over chunks (the papers use
    256)."""
    metrics: tuple[Metric, ...] = ("psnr", "ssim", "lpips", "fvd")
    """Metrics computed. PSNR / SSIM / LPIPS on generated frames only (mean over time,
    then videos); FVD on the whole video, context included."""
    ssim_form: Literal["tf", "skimage"] = "tf"
    """`tf` (TECO / ConvS5, `tf.image.ssim`) or `skimage` (MCVD)."""
    description: str = ""
    """Where the protocol comes from."""


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
