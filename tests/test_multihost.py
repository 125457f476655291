"""Two `jax.distributed` processes on localhost (2 CPU devices each) train the same
run as one process with 4 devices: the same losses and parameters, dropout included."""

import csv
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
from helpers import TINY_RUN_ARGS, kill_group

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    *TINY_RUN_ARGS,
    *("--steps", "3", "--batch-size", "4", "--checkpoint-every", "0", "--eval-sequences", "0"),
    *("--dropout", "0.2"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir, devices, extra=()):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    command = [
        sys.executable,
        str(REPO / "examples" / "train_mmnist.py"),
        "--run-dir",
        str(run_dir),
        *TINY,
        *extra,
    ]
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group: killed whole if the test fails
    )


def _losses(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_two_processes_match_one(tmp_path):
    single = _launch(tmp_path / "single", 4)
    port = _free_port()
    multi = [
        _launch(
            tmp_path / "multi",
            2,
            [
                "--coordinator-address",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for process in [single, *multi]:
            out, _ = process.communicate(timeout=300)
            outputs.append(out)
            assert process.returncode == 0, out
    finally:  # on a timeout or a failure, no process outlives the test
        for process in [single, *multi]:
            if process.returncode is None:
                kill_group(process)
    assert "1 process(es), 4 device(s) in the mesh {'data': 4, 'fsdp': 1, 'model': 1}" in outputs[0]
    assert "2 process(es), 4 device(s) in the mesh {'data': 4, 'fsdp': 1, 'model': 1}" in outputs[1]
    want, got = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert len(want) == len(got) == 3
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Every process read its own half of each batch, yet the global batches (videos and
    # the per-video dropout keys) were the single process's: the same parameters.
    import jax

    from eqvid.evaluate import load_trained_run

    one, two = (load_trained_run(tmp_path / name) for name in ("single", "multi"))
    assert one.step == two.step == 3
    # The biases of the convolutions right before a per-channel GroupNorm (`conv1.bias`
    # in every ResNet block; the norm removes them exactly, so their gradients are
    # round-off of either sign, 1e-17 in float64, which Adam turns into steps of ±lr)
    # may differ by up to the sum of the learning rates; every other parameter agrees
    # within 1e-5.
    with open(tmp_path / "single" / "metrics.csv", newline="") as f:
        drift = 2 * sum(float(row["lr"]) for row in csv.DictReader(f))
    want = dict(jax.tree_util.tree_flatten_with_path(_params(one.model))[0])
    got = dict(jax.tree_util.tree_flatten_with_path(_params(two.model))[0])
    assert want.keys() == got.keys()
    exempt = [p for p in want if jax.tree_util.keystr(p).endswith("conv1.bias")]
    assert len(exempt) == 5  # encoder 2, decoder 2, the ConvS5 output map 1
    for path, x in want.items():
        atol = drift if path in exempt else 1e-5
        np.testing.assert_allclose(
            np.asarray(got[path]), np.asarray(x), rtol=1e-5, atol=atol, err_msg=str(path)
        )
    # One writer: only process 0 exports samples and the metrics.
    assert sorted(p.name for p in (tmp_path / "multi" / "samples").iterdir()) == [
        "step_000003.gif",
        "step_000003.png",
    ]


def _params(model):
    import equinox as eqx

    return eqx.filter(model, eqx.is_inexact_array)
