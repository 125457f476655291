"""Evaluation under the papers' protocols: load a trained run, take context frames
from its test split, generate to the horizon, and report PSNR / SSIM / LPIPS / FVD
(mean ± std over chunks of videos) with sample files and a per-frame plot. A
tokenizer's run is scored on reconstructions of test videos (PSNR, SSIM, LPIPS if
asked, codebook use) as a `ReconstructionReport`. An unconditional protocol (context 0,
e.g. mebt-16f) draws clips from nothing and compares them as a set with real videos
(FVD and KVD, mean ± std over runs) as an `UnconditionalReport`.

    python -m eqvid.evaluate --run-dir runs/convs5-mmnist --protocol quick
    python -m eqvid.evaluate --run-dir runs/mnist-600 --protocol convs5-mmnist-800
    python -m eqvid.evaluate --samples runs/x/eval/quick/samples   # score existing files
    python -m eqvid.evaluate --run-dir runs/vqgan2d-moving-mnist   # a tokenizer: its reconstructions
    python -m eqvid.evaluate --run-dir runs/mebt --protocol mebt-16f   # clips from nothing: FVD/KVD
"""

from ._evaluate import EvalConfig as EvalConfig
from ._evaluate import EvalReport as EvalReport
from ._evaluate import evaluate as evaluate
from ._evaluate import evaluate_tokenizer as evaluate_tokenizer
from ._evaluate import is_tokenizer_run as is_tokenizer_run
from ._evaluate import is_unconditional as is_unconditional
from ._evaluate import load_generator as load_generator
from ._protocols import PROTOCOLS as PROTOCOLS
from ._protocols import EvalProtocol as EvalProtocol
from ._reconstruction_report import ReconstructionReport as ReconstructionReport
from ._reconstruction_report import reconstruction_report as reconstruction_report
from ._trained_run import TrainedRun as TrainedRun
from ._trained_run import load_trained_run as load_trained_run
from ._unconditional import UnconditionalReport as UnconditionalReport
from ._unconditional import evaluate_unconditional as evaluate_unconditional
