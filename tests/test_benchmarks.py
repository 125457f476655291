"""The benchmark scripts run end to end (tiny sizes; their numbers are not checked)."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scan_speed_writes_a_table(tmp_path, capsys):
    scan_speed = load("scan_speed")
    scan_speed.SIZES["test-tiny"] = (9, 1, 2, 3)
    scan_speed.main(["--sizes", "test-tiny", "--repeats", "1", "--out-dir", str(tmp_path),
                     "--name", "scan", "--impls", "pallas-split", "pallas", "xla", "sequential"])
    text = (tmp_path / "scan.md").read_text()
    assert "jax " in text and "command:" in text and "device:" in text
    for impl in ("pallas-split", "pallas", "xla", "sequential"):
        assert f"| test-tiny | 9×1×2²×3 | {impl} |" in text
    assert "wrote" in capsys.readouterr().out
