"""The README's and the docs site's Python snippets run as written: each ```python block
of README.md and docs/**/*.md (not the ```py outlines), pasted alone into a fresh
interpreter, in a folder that holds the files the README tells the user to
make (a small TECO dataset under `data/dmlab`, converted LPIPS / I3D weights with
random values in `$EQVID_WEIGHTS`)."""

import dataclasses
import os
import pathlib
import re

import numpy as np
import pytest
from helpers import rng, run_python

from eqvid.metrics._i3d import i3d_weight_shapes
from eqvid.metrics._lpips import lpips_weight_shapes
from eqvid.metrics._weights import I3D_WEIGHTS, LPIPS_WEIGHTS

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
"""The Markdown files whose Python blocks must run."""

FENCE = re.compile(r"^```python\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

MIN_BLOCKS = 7
"""The README's Python blocks when this test was written (datasets, metrics as functions,
the papers' protocol, LPIPS / I3D, the library, attention, a model family)."""

TIMEOUT = 120
"""Seconds a block may take (each runs in a few seconds; most of it importing JAX)."""


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # the Markdown file, relative to the repository
    index: int  # 1-based, in the page's order
    line: int  # the line of the opening fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}-block{self.index}-line{self.line}"


def python_blocks(text: str, page: str = "README.md") -> list[Block]:
    """Every ```python block of a Markdown text, with the line of its opening fence."""
    return [
        Block(page, i, text.count("\n", 0, m.start()) + 1, m.group(1))
        for i, m in enumerate(FENCE.finditer(text), 1)
    ]


BLOCKS = [
    block
    for page in PAGES
    for block in python_blocks(page.read_text(encoding="utf-8"), str(page.relative_to(REPO)))
]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_blocks_are_found(page):
    text = page.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    if page == README:
        assert len(blocks) >= MIN_BLOCKS, [b.id for b in blocks]
    # The extraction takes whole blocks: no fence inside one, none left unmatched.
    assert all("```" not in b.code for b in blocks)
    fences = re.findall(r"^```python[ \t]*$", text, re.MULTILINE)
    assert len(fences) == len(blocks)


def teco_video(seed: int, frames: int = 300, size: int = 16):
    """A TECO file's contents: `video` uint8 (T, H, W, 3) and `actions` (T,)."""
    g = rng("readme teco", seed)
    video = g.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    return {"video": video, "actions": g.integers(0, 6, frames).astype(np.int32)}


def random_weights(shapes: dict[str, tuple[int, ...]], seed: str) -> dict[str, np.ndarray]:
    """Weights in the converted layout with random values of sensible scale: batch-norm
    variances positive, convolution kernels He-scaled (`(out, in, *kernel)`)."""
    g = rng("readme weights", seed)
    arrays = {}
    for name, shape in shapes.items():
        if name.endswith("running_var"):
            arrays[name] = g.uniform(0.5, 2.0, shape)
        elif name.endswith("bn.weight"):
            arrays[name] = np.ones(shape)
        elif len(shape) > 1:
            arrays[name] = g.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        else:
            arrays[name] = 0.1 * g.standard_normal(shape)
        if name.startswith("lin"):  # LPIPS's per-channel weights are non-negative
            arrays[name] = np.abs(arrays[name])
    return arrays


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> pathlib.Path:
    """`$EQVID_WEIGHTS` with both converted files, as `convert_weights` writes them."""
    folder = tmp_path_factory.mktemp("weights")
    LPIPS_WEIGHTS.save(folder / LPIPS_WEIGHTS.file_name, random_weights(lpips_weight_shapes(), "l"))
    I3D_WEIGHTS.save(folder / I3D_WEIGHTS.file_name, random_weights(i3d_weight_shapes(), "i"))
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    """`data/dmlab` in TECO's layout: 300-frame videos with actions, 16×16 (enough of
    them for the README's batch of 16)."""
    root = tmp_path_factory.mktemp("data") / "dmlab"
    for split, count in (("train", 16), ("test", 4)):
        (root / split).mkdir(parents=True)
        for v in range(count):
            np.savez(root / split / f"{v}.npz", **teco_video(v + 100 * (split == "test")))
    return root


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_the_block_runs_on_its_own(block, dataset, weights, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dmlab").symlink_to(dataset, target_is_directory=True)
    script = tmp_path / (re.sub(r"\W", "_", block.id) + ".py")
    script.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "EQVID_WEIGHTS": str(weights)}
    done = run_python([str(script)], timeout=TIMEOUT, env=env, cwd=str(tmp_path), check=False)
    if done.returncode != 0:
        pytest.fail(
            f"{block.page} line {block.line}: the block exited with {done.returncode}:\n"
            f"{block.code}--- output ---\n{done.stdout[-4000:]}",
            pytrace=False,
        )
