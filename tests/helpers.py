"""What several test files need: stable seeds, child processes that never outlive
their test, and the command-line flags of a tiny training run."""

import contextlib
import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import zlib
from collections.abc import Sequence

import numpy as np

TINY_RUN_ARGS = (
    *("--seq-len", "3", "--frame-size", "32", "--train-sequences", "32"),
    *("--encoder-depths", "4", "8", "--d-model", "8", "--ssm-size", "8", "--n-layers", "1"),
    *("--sample-every", "0", "--log-every", "1"),
)
"""Flags of `examples/train_mmnist.py` / `python -m eqvid.train` for a ConvS5 run that
trains in seconds (32×32 frames, 3 per video, one 8-channel layer)."""


REPO = pathlib.Path(__file__).resolve().parents[1]


def load_example():
    """`examples/train_mmnist.py` as a module (its `DEFAULTS`, `main`)."""
    spec = importlib.util.spec_from_file_location(
        "train_mmnist", REPO / "examples" / "train_mmnist.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_of(*parts: object) -> int:
    """A seed that depends only on `parts` (their `repr`), the same in every process
    and run — unlike `hash()`, which Python salts per process for strings."""
    return zlib.crc32(repr(parts).encode())


def rng(*parts: object) -> np.random.Generator:
    """A NumPy generator seeded by `seed_of(*parts)`."""
    return np.random.default_rng(seed_of(*parts))


def run_python(
    args: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run `python *args` in its own process group and wait for it. On timeout (or if
    the test is interrupted) the whole group is killed and reaped before the error
    propagates, so no child keeps running into the next test."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        kill_group(proc)
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, None)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`python {' '.join(args)[:200]}` exited with {proc.returncode}:\n{out[-4000:]}"
        )
    return result


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`'s process group (it was started with `start_new_session=True`)
    and wait for it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
