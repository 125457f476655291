"""Where eqvid keeps converted metric-network weights, how they are stored, and the error
that says how to make them when they are missing.

eqvid never downloads weights. The public PyTorch files are converted once with
`python -m eqvid.metrics.convert_weights` into one `.npz` per network:

| network | eqvid file | made from |
|---|---|---|
| I3D (FVD) | `i3d_kinetics400.npz` | `i3d_pretrained_400.pt` |
| LPIPS | `lpips_alexnet.npz` | `alexnet-owt-7be5be79.pth` + `alex.pth` (v0.1) |

Each `.npz` holds the network's tensors under their PyTorch state-dict names (float32,
PyTorch layout) plus a `__format__` entry naming the network and format version.

The default folder is `$EQVID_WEIGHTS` if set, else `$XDG_CACHE_HOME/eqvid`, else
`~/.cache/eqvid`.
"""

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "I3D_WEIGHTS",
    "LPIPS_WEIGHTS",
    "WEIGHTS_ENV",
    "NetworkWeights",
    "default_weights_dir",
]

WEIGHTS_ENV = "EQVID_WEIGHTS"
FORMAT_KEY = "__format__"


@dataclasses.dataclass(frozen=True)
class NetworkWeights:
    """How one network's weights are published, converted and stored.

    - `network`: the converter's sub-command (`i3d` / `lpips`).
    - `file_name`: the eqvid file's name in the default folder.
    - `format_tag`: the value of `__format__` inside the eqvid file.
    - `sources`: `(public file name, where it is published)` for each input file.
    """

    network: str
    file_name: str
    format_tag: str
    sources: tuple[tuple[str, str], ...]

    def default_path(self) -> Path:
        """The eqvid file in `default_weights_dir()`."""
        return default_weights_dir() / self.file_name

    def how_to_make(self, out: Path) -> str:
        """Instructions (text) for creating the eqvid file at `out`."""
        lines = [
            f"eqvid never downloads weights; make this file once from the public {self.network} weights:"
        ]
        for i, (name, where) in enumerate(self.sources, 1):
            lines.append(f"  {i}. get `{name}`: {where}")
        inputs = " ".join(name for name, _ in self.sources)
        lines.append(
            f"  {len(self.sources) + 1}. run `python -m eqvid.metrics.convert_weights "
            f"{self.network} {inputs} --out {out}`"
        )
        lines.append(
            f"Files in the default folder are found without `path=`; the default folder is "
            f"${WEIGHTS_ENV} if set, else $XDG_CACHE_HOME/eqvid, else ~/.cache/eqvid "
            f"(now {default_weights_dir()})."
        )
        return "\n".join(lines)

    def resolve(self, path: str | os.PathLike | None) -> Path:
        """The file to load: `path`, or the default file when `path` is None.

        **Raises:**

        - `FileNotFoundError` (with instructions) if that file does not exist.
        """
        target = self.default_path() if path is None else Path(path)
        if not target.is_file():
            where = "the default location" if path is None else "the given `path`"
            raise FileNotFoundError(
                f"no {self.network} weights at {target} ({where}).\n" + self.how_to_make(target)
            )
        return target

    def save(self, path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
        """Write `arrays` (float32) and the format tag to an uncompressed `.npz` at `path`."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(
                f"`out` must end in .npz (numpy.savez appends it otherwise), got {path}."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
        payload[FORMAT_KEY] = np.array(self.format_tag)
        np.savez(path, allow_pickle=False, **payload)  # plain arrays only
        return path

    def load(
        self, path: str | os.PathLike | None, expected_shapes: Mapping[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        """Read an eqvid weight file and check its format tag, keys and shapes.

        **Raises:**

        - `FileNotFoundError` with instructions if the file is missing.
        - `ValueError` naming the wrong format tag, or the missing / mis-shaped /
            unexpected tensors.
        """
        target = self.resolve(path)
        try:
            # Our own handle: np.load leaks its file when the archive is unreadable.
            with open(target, "rb") as f, np.load(f, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as e:  # truncated / not an npz / a pickle
            raise ValueError(
                f"{target} is not a readable eqvid {self.network} weight file "
                f"({type(e).__name__}: {e}); convert the public weights again with "
                f"`python -m eqvid.metrics.convert_weights` (see its --help)."
            ) from e
        tag = arrays.pop(FORMAT_KEY, None)
        if tag is None or str(tag[()]) != self.format_tag:
            found = "no format tag" if tag is None else f"format {str(tag[()])!r}"
            raise ValueError(
                f"{target} is not an eqvid {self.network} weight file (expected format "
                f"{self.format_tag!r}, found {found}). Convert the public weights with "
                f"`python -m eqvid.metrics.convert_weights {self.network} ...`."
            )
        check_tensors(arrays, expected_shapes, source=str(target))
        return arrays


def check_tensors(
    tensors: Mapping[str, np.ndarray],
    expected_shapes: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    ignore: Callable[[str], bool] = lambda name: False,
) -> None:
    """Check that `tensors` has exactly the `expected_shapes` (names and shapes).

    Names for which `ignore(name)` is true may be present in addition.

    **Raises:**

    - `ValueError` listing every missing, mis-shaped and unexpected tensor of `source`.
    """
    problems = []
    missing = [k for k in expected_shapes if k not in tensors]
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing)}")
    for name, shape in expected_shapes.items():
        if name in tensors and tuple(tensors[name].shape) != tuple(shape):
            problems.append(
                f"`{name}` has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
            )
    unexpected = [k for k in tensors if k not in expected_shapes and not ignore(k)]
    if unexpected:
        problems.append(f"unexpected tensor(s): {', '.join(unexpected)}")
    if problems:
        raise ValueError(
            f"{source} does not hold the expected weights:\n  " + "\n  ".join(problems)
        )


def default_weights_dir() -> Path:
    """The folder searched when no `path` is given: `$EQVID_WEIGHTS`, else
    `$XDG_CACHE_HOME/eqvid`, else `~/.cache/eqvid` (read at call time)."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "eqvid"
    return Path.home() / ".cache" / "eqvid"


I3D_WEIGHTS = NetworkWeights(
    network="i3d",
    file_name="i3d_kinetics400.npz",
    format_tag="eqvid-i3d-kinetics400-v1",
    sources=(
        (
            "i3d_pretrained_400.pt",
            "the TF-Hub Kinetics-400 I3D (deepmind/i3d-kinetics-400/1) converted to PyTorch for "
            "piergiaj/pytorch-i3d's InceptionI3d, published by VideoGPT "
            "(github.com/wilson1yan/VideoGPT, videogpt/download.py: Google Drive id "
            "1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT) and shipped with TATS and MeBT "
            "(github.com/Ugness/MeBT, mebt/fvd/i3d_pretrained_400.pt)",
        ),
    ),
)

LPIPS_WEIGHTS = NetworkWeights(
    network="lpips",
    file_name="lpips_alexnet.npz",
    format_tag="eqvid-lpips-alexnet-v0.1-v1",
    sources=(
        (
            "alexnet-owt-7be5be79.pth",
            "torchvision's ImageNet AlexNet, https://download.pytorch.org/models/alexnet-owt-7be5be79.pth "
            "(the older alexnet-owt-4df8aa71.pth has the same tensor names and shapes and converts too)",
        ),
        (
            "alex.pth",
            "the LPIPS v0.1 linear layers, github.com/richzhang/PerceptualSimilarity "
            "lpips/weights/v0.1/alex.pth (also inside the `lpips` pip package, "
            "lpips/weights/v0.1/alex.pth)",
        ),
    ),
)
