"""Evaluation under the papers' protocols: load a trained run, take context frames
from its test split, generate to the horizon, and report PSNR / SSIM / LPIPS / FVD
(mean ± std over chunks of videos) with sample files and a per-frame plot.

    python -m eqvid.evaluate --run-dir runs/convs5-mmnist --protocol quick
    python -m eqvid.evaluate --run-dir runs/mnist-600 --protocol convs5-mmnist-800
    python -m eqvid.evaluate --samples runs/x/eval/quick/samples   # score existing files
"""

from ._evaluate import EvalConfig as EvalConfig
from ._evaluate import EvalReport as EvalReport
from ._evaluate import evaluate as evaluate
from ._protocols import PROTOCOLS as PROTOCOLS
from ._protocols import EvalProtocol as EvalProtocol
from ._trained_run import TrainedRun as TrainedRun
from ._trained_run import load_trained_run as load_trained_run
