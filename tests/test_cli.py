"""The command lines: `--help` of every model × dataset says what the command does,
the console scripts are the `python -m` commands, and `--config FILE` (YAML or JSON,
a run's own config.json included) sets what the flags set, the flags winning."""

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import io
import json
import pathlib
import re
import sys
from typing import Any

import pytest
import yaml
from helpers import load_example

import eqvid
import eqvid.train._cli as train_cli
from eqvid._cli import shown_default
from eqvid.data import DATASETS, MovingMNISTConfig, TecoConfig
from eqvid.data._datasets import FrameSpec
from eqvid.evaluate import EvalConfig
from eqvid.models import MODELS, model_spec
from eqvid.train import MeshConfig, OptimizerConfig, RunConfig, TrainConfig
from eqvid.train._cli import CommandDefaults, build_parser, config_from_argv
from eqvid.train._distributed import DistributedConfig
from eqvid.train._setup import config_dict

REPO = pathlib.Path(__file__).resolve().parents[1]
SHOWN = re.compile(r"\(default: (.*)\)$", re.S)
SENTENCE_END = (".", ")", "!", "?")


COMMANDS = {"python -m eqvid.train": CommandDefaults(), "train_mmnist.py": load_example().DEFAULTS}


@pytest.fixture
def stored_frames(monkeypatch):
    """File datasets without files: their frames are 64×64 RGB (the command line reads
    the model's frame size and channels from the data)."""
    spec = FrameSpec(64, 64, 3, 16, True, 10)
    monkeypatch.setattr(train_cli, "frame_spec", lambda config, split="train": spec)


def help_of(parser: argparse.ArgumentParser) -> str:
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(io.StringIO()) as out:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    return out.getvalue()


def check_descriptions(parser: argparse.ArgumentParser, where: str) -> None:
    """Every option group's description is whole sentences."""
    for group in parser._action_groups:
        text = " ".join((group.description or "").split())
        if not text:
            continue
        assert text.endswith(SENTENCE_END), f"{where}, {group.title}: cut off: {text!r}"
        assert text.count("(") == text.count(")"), f"{where}, {group.title}: {text!r}"
        assert text.count("`") % 2 == 0, f"{where}, {group.title}: {text!r}"


def shown_defaults(parser: argparse.ArgumentParser) -> dict[str, str]:
    """`{dest: what --help shows as its default}`."""
    shown = {}
    for action in parser._actions:
        match = SHOWN.search((action.help or "").replace("%%", "%"))
        if match is not None:
            shown[action.dest] = " ".join(match.group(1).split())
    return shown


def check_example_lines(text: str, where: str) -> None:
    """The example commands of an epilog keep their line breaks."""
    for line in text.splitlines():
        if line.lstrip().startswith(("python ", "srun ", "eqvid-")):
            assert len(line) <= 120, f"{where}: an example line ran on: {line!r}"
            # A lost line break leaves a run of spaces inside the command.
            assert not re.search(r"\S {4,}(?!#| )", line), f"{where}: {line!r}"


def test_help_defaults_are_what_the_command_does(stored_frames):
    """For every model × dataset, of `python -m eqvid.train` and of the example: each
    `(default: X)` in `--help` is the value the command uses without that flag, and no
    group description stops mid-sentence."""
    for prog, defaults in COMMANDS.items():
        config = config_from_argv([], defaults)
        plain = {"model": model_spec(config.model).name}
        plain["dataset"] = next(k for k, v in DATASETS.items() if type(config.data) is v)
        for model in MODELS:
            for dataset in DATASETS:
                where = f"{prog} --model {model} --dataset {dataset} --help"
                parser = build_parser(model, dataset, defaults)
                help_text = help_of(parser)
                check_descriptions(parser, where)
                check_example_lines(help_text, where)
                config = config_from_argv(["--model", model, "--dataset", dataset], defaults)
                spec = model_spec(config.model)
                assert spec.name == model and type(config.data) is DATASETS[dataset]
                sections = {
                    "optimizer": config.optimizer,
                    "run": config.run,
                    "mesh": config.mesh,
                    "distributed": config.distributed,
                }
                shown = shown_defaults(parser)
                assert "run.run_dir" in shown and "run.steps" in shown, where
                for dest, text in shown.items():
                    if dest in ("model", "dataset"):  # what the command takes without it
                        assert text == getattr(defaults, dest) == plain[dest], where
                    elif dest == "preset":
                        want = dataclasses.replace(
                            spec.preset(text),
                            frame_size=config.model.frame_size,
                            channels=config.model.channels,
                        )
                        assert config.model == want, f"{where}: --preset {text}"
                    else:
                        title, _, field = dest.rpartition(".")
                        if title.startswith("model ("):
                            value = getattr(config.model, field)
                        elif title.startswith("data ("):
                            value = getattr(config.data, field)
                        else:
                            value = getattr(sections[title], field)
                        assert text == shown_default(value), f"{where}: {dest}"
                short = dict(defaults.dataset_abbreviations).get(dataset, dataset.replace("_", "-"))
                assert config.run.run_dir == f"runs/{model}-{short}", where
                assert shown["run.run_dir"] == config.run.run_dir, where


def test_example_help_names_the_model_run_dir(capsys):
    """`train_mmnist.py --model convlstm --help` shows the folder the command writes."""
    example = load_example()
    with pytest.raises(SystemExit):
        example.main(["--model", "convlstm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: runs/convlstm-mmnist)" in text
    assert "convs5-mmnist)" not in text


def test_other_commands_help():
    """`python -m eqvid.evaluate --help` and `python -m eqvid.data.convert FORMAT --help`:
    whole group descriptions, example lines intact, defaults those of the configs."""
    from eqvid.data import convert
    from eqvid.evaluate.__main__ import build_parser as eval_parser

    parser = eval_parser()
    check_descriptions(parser, "eqvid.evaluate")
    check_example_lines(help_of(parser), "eqvid.evaluate")
    for dest, text in shown_defaults(parser).items():
        assert text == shown_default(getattr(EvalConfig(), dest.rpartition(".")[2])), dest
    for argv in [["--help"]] + [[name, "--help"] for name in convert.FORMATS]:
        with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
            convert.main(argv)
        text = out.getvalue()
        check_example_lines(text, f"eqvid.data.convert {' '.join(argv)}")
        groups = re.findall(r"^(?:dataset|convert):\n((?:  \S.*\n)+)\n", text, re.M)
        assert len(groups) == (0 if argv == ["--help"] else 2), text
        for group in groups:
            assert " ".join(group.split()).endswith(SENTENCE_END), (argv, group)


def test_console_scripts_are_the_python_m_commands():
    """`eqvid-train` and `eqvid-evaluate` (installed by `pip install -e .`) run the same
    functions as `python -m eqvid.train` and `python -m eqvid.evaluate`."""
    import eqvid.evaluate.__main__ as evaluate_main
    import eqvid.train.__main__ as train_main

    scripts = {
        ep.name: ep
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name.startswith("eqvid-")
    }
    assert set(scripts) >= {"eqvid-train", "eqvid-evaluate"}, (
        "eqvid's console scripts are not installed: run `pip install -e .` again"
    )
    assert scripts["eqvid-train"].load() is train_main.main is train_cli.main
    assert scripts["eqvid-evaluate"].load() is evaluate_main.main
    bin_dir = pathlib.Path(sys.executable).parent
    for name in scripts:
        assert (bin_dir / name).exists() or (bin_dir / f"{name}.exe").exists(), name


def write(path: pathlib.Path, data: Any) -> str:
    if path.suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data))
    return str(path)


def test_config_file_json_and_yaml(tmp_path):
    file = {
        "model_name": "convlstm",
        "preset": "mnist-600",
        "model": {"n_layers": 3, "encoder_depths": [8, 16]},
        "data": {"seq_len": 12, "mnist_path": None},
        "optimizer": {"lr": 1e-3},
        "run": {"steps": 5, "compute_dtype": "bfloat16", "tensorboard": False},
        "mesh": {"fsdp": 2},
        "distributed": {"num_processes": 1},
    }
    want = TrainConfig(
        model=dataclasses.replace(
            eqvid.ConvLSTMConfig.preset("mnist-600"), n_layers=3, encoder_depths=(8, 16)
        ),
        data=MovingMNISTConfig(seq_len=12),
        optimizer=OptimizerConfig(lr=1e-3),
        run=RunConfig(
            run_dir="runs/convlstm-moving-mnist",
            steps=5,
            compute_dtype="bfloat16",
            tensorboard=False,
        ),
        mesh=MeshConfig(fsdp=2),
        distributed=DistributedConfig(num_processes=1),
    )
    assert config_from_argv(["--config", write(tmp_path / "a.json", file)]) == want
    assert config_from_argv(["--config", write(tmp_path / "a.yaml", file)]) == want
    # Hand-written YAML: PyYAML reads `5e-4` as a string, `[8, 16]` as a list.
    text = "model_name: convlstm\npreset: mnist-600\nmodel:\n  n_layers: 3\n"
    text += "  encoder_depths: [8, 16]\noptimizer:\n  lr: 5e-4\nrun: {steps: 5}\n"
    (tmp_path / "b.yml").write_text(text)
    example = load_example().DEFAULTS
    got = config_from_argv(["--config", str(tmp_path / "b.yml")], example)
    assert got.optimizer == dataclasses.replace(example.optimizer, lr=5e-4)
    frames = example.moving_mnist.frame_size  # the example's 48 (the library's: 64)
    assert got.model == dataclasses.replace(want.model, frame_size=frames)
    assert got.run.steps == 5
    assert got.run.run_dir == "runs/convlstm-mmnist"  # the example's folder for the model
    assert got.data == example.moving_mnist


def test_flags_override_the_config_file(tmp_path, capsys):
    path = write(
        tmp_path / "c.yaml",
        {"model": {"d_model": 32}, "optimizer": {"lr": 0.01}, "run": {"steps": 5}},
    )
    config = config_from_argv(["--config", path, "--steps", "9", "--d-model", "16"])
    assert (config.run.steps, config.model.d_model, config.optimizer.lr) == (9, 16, 0.01)
    config = config_from_argv(["--steps", "9", "--config", path])  # the order does not matter
    assert (config.run.steps, config.model.d_model) == (9, 32)
    # --help shows the file's values as the defaults.
    with pytest.raises(SystemExit):
        config_from_argv(["--config", path, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "in total. (default: 5)" in text and "(default: 0.01)" in text


def test_run_config_json_reproduces_the_run(tmp_path, stored_frames):
    """A run's own config.json (`config_dict`, plus `changes_on_resume`) as --config
    gives the run's TrainConfig, also with another command's defaults."""
    runs = [
        TrainConfig(
            model=dataclasses.replace(
                eqvid.TransformerConfig.preset("small"), frame_size=32, n_layers=1, remat=True
            ),
            data=MovingMNISTConfig(frame_size=32, seq_len=7, mnist_path="digits.gz"),
            optimizer=OptimizerConfig(lr=3e-4, ema_decay=0.99),
            run=RunConfig(run_dir=str(tmp_path / "run"), steps=11, batch_size=4, accumulate=2),
            mesh=MeshConfig(data=1, fsdp=-1, backend="cpu"),
            distributed=DistributedConfig(coordinator_address="auto"),
        ),
        TrainConfig(
            model=dataclasses.replace(
                eqvid.ConvS5Config.preset("mnist-300"), channels=3, action_dim=6
            ),
            data=TecoConfig(root="data/dmlab", seq_len=30, frame_size=64, crop="random"),
            run=RunConfig(run_dir="runs/dmlab", compute_dtype="bfloat16"),
        ),
    ]
    for i, run in enumerate(runs):
        record = config_dict(run) | {"changes_on_resume": [{"step": 4, "changes": {}}]}
        for suffix in (".json", ".yaml"):
            path = write(tmp_path / f"config{i}{suffix}", record)
            for defaults in COMMANDS.values():
                assert config_from_argv(["--config", path], defaults) == run, (i, suffix)
        resumed = config_from_argv(["--config", path, "--resume"])
        assert resumed == dataclasses.replace(run, run=dataclasses.replace(run.run, resume=True))


@pytest.mark.parametrize(
    "file, names",
    [
        ({"optimiser": {"lr": 1e-3}}, ["optimiser"]),
        ({"run": {"stepz": 3, "seed": 1, "lrr": 2}}, ["run.stepz", "run.lrr"]),
        (
            {"model_name": "convs5", "model": {"ssm_size": 8}},
            ["model.ssm_size", "--model convlstm"],
        ),
        ({"run": {"steps": "many"}}, ["run.steps", "'many'"]),
        ({"model_name": "nope"}, ["model_name", "'nope'"]),
        ({"run": {"steps": 0}}, ["`steps` must be ≥ 1"]),
        ([1, 2], ["mapping"]),
    ],
)
def test_config_file_errors_name_the_key_and_file(tmp_path, capsys, file, names):
    path = write(tmp_path / "bad.yaml", file)
    with pytest.raises(SystemExit) as exit_:
        config_from_argv(["--config", path, "--model", "convlstm"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert path in err, err
    for name in names:
        assert name in err, err


def test_evaluate_config_file(tmp_path, capsys):
    from eqvid.evaluate.__main__ import config_from_argv as eval_config

    path = write(
        tmp_path / "eval.yaml",
        {"run_dir": "runs/x", "protocol": "quick", "metrics": ["psnr", "ssim"], "step": 20},
    )
    want = EvalConfig(run_dir="runs/x", protocol="quick", metrics=("psnr", "ssim"), step=20)
    assert eval_config(["--config", path]) == want
    assert eval_config(["--config", path, "--seed", "3", "--step", "none"]) == dataclasses.replace(
        want, seed=3, step=None
    )
    json_path = write(tmp_path / "eval.json", dataclasses.asdict(want))
    assert eval_config(["--config", json_path]) == want
    bad = write(tmp_path / "bad.json", {"run_dir": "runs/x", "horizn": 10})
    with pytest.raises(SystemExit) as exit_:
        eval_config(["--config", bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "horizn" in err and bad in err
