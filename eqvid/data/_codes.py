"""Videos encoded once by a tokenizer: the codes dataset, a Grain random-access source.

`python -m eqvid.data.encode` writes one folder per split, `<out>/<split>/`:

- `encode.json`: what was encoded and with what (`{"format": "eqvid-codes/1",
  "tokenizer": {"path", "model_name", "n_codes", "weights_sha256", "config", "ema"},
  "dataset": {"name", "config"}, "split", "clip_len", "source_videos", "complete"}`;
  once complete also `"videos"` (entries) and `"code_shape"` (`{"frames", "height",
  "width", "channels", "codes"}`: the codes' shape of the first entry's frames);
- `codes-00000.array_record`, ...: one record per entry (a whole video, or one clip
  of `clip_len` frames), its raw int32 codes `(code_time, code_height, code_width)`
  in C order, written with `group_size:1` and zstd;
- `codes-00000.npz`, ...: each shard's part of the index, written once the shard is
  closed (a shard without it was cut short by a killed run, and is encoded again);
  a shard covers the source videos `source_start ..< source_stop`;
- `index.npz`: the merged index, written last (its presence means the split is
  complete): `shards`, `shard_records`, `sources` (the source video of every entry),
  `starts` (its first frame, after the stride), `frames` (its frame count), `shapes`
  (`(N, 3)` codes' shape), `names`, `frame_shape` (H, W, C), `skipped`, and with
  actions `actions` (int32, concatenated) and `action_offsets` (`N + 1`).

`CodesVideos(root, split)[i]` is `{"codes": int32 (code_time, h, w)}` plus `"actions":
int32 (frames,)` when the data had actions. `codes_to_frames` decodes codes to uint8
frames for samples and metrics.
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import numpy as np

from ._array_record import ShardReaders
from ._windows import window_frames

__all__ = [
    "CODES_FORMAT",
    "CodesConfig",
    "CodesVideos",
    "check_tokenizer",
    "codes_to_frames",
    "tokenizer_digest",
    "tokenizer_record",
]

CODES_FORMAT = "eqvid-codes/1"
META_FILE = "encode.json"
INDEX_FILE = "index.npz"


@dataclasses.dataclass(frozen=True)
class CodesConfig:
    """Videos encoded once to a tokenizer's codes by `python -m eqvid.data.encode` (`<root>/{train,test}/`).

    Training windows are `seq_len` consecutive steps of codes (frames for a per-frame
    tokenizer; for a video tokenizer each step covers its time downsampling), read
    from a random start in each entry; samples and reports decode them to frames with
    the tokenizer the codes record."""

    root: str = ""
    """The encoder's output folder (`--out` of `python -m eqvid.data.encode`)."""
    seq_len: int = 16
    """Steps of codes per training window."""
    actions: bool = True
    """Return the actions when the codes have them (false: never)."""

    def __post_init__(self):
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"CodesConfig: `seq_len` must be an int >= 1; got {self.seq_len!r}.")


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of every array of `tokenizer` (its state folded in): codes from two
    tokenizers with the same digest are interchangeable."""
    import equinox as eqx
    import jax

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(eqx.filter(tokenizer, eqx.is_array)):
        array = np.asarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _config_dict(config: Any) -> dict[str, Any]:
    import dataclasses

    if not dataclasses.is_dataclass(config):
        return {}
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def tokenizer_record(tokenizer: Any, path: str = "") -> dict[str, Any]:
    """What `encode.json` records of the tokenizer: its folder, model name, codebook
    size, config and weights digest."""
    from ..models import model_spec

    config = getattr(tokenizer, "config", None)
    try:
        name = model_spec(config).name
    except (KeyError, ValueError, TypeError):
        name = type(tokenizer).__name__
    return {
        "path": os.path.abspath(path) if path else "",
        "model_name": name,
        "n_codes": int(tokenizer.n_codes),
        "weights_sha256": tokenizer_digest(tokenizer),
        "config": _config_dict(config),
    }


def _encode_hint(folder: str, meta: dict[str, Any]) -> str:
    return (
        f"encode the videos again with the tokenizer you mean to use: python -m "
        f"eqvid.data.encode --tokenizer TOKENIZER --dataset {meta['dataset']['name']} "
        f"--root ... --out {os.path.dirname(os.path.normpath(folder)) or '.'} --overwrite"
    )


def check_tokenizer(meta: dict[str, Any], tokenizer: Any, folder: str = "") -> None:
    """Raise a `ValueError` unless `tokenizer` is the one the codes of `meta` (an
    `encode.json`) were encoded with: the same codebook size, the same codes' shape
    for the encoded frames, the same weights."""
    recorded = meta["tokenizer"]
    where = folder or "the codes"
    said = (
        f"{where} holds codes of {recorded['model_name']} (n_codes={recorded['n_codes']}) "
        f"from {recorded['path'] or 'an unnamed tokenizer'}"
    )
    if int(tokenizer.n_codes) != int(recorded["n_codes"]):
        raise ValueError(
            f"{said}; the tokenizer given has n_codes={tokenizer.n_codes}: "
            + _encode_hint(folder, meta)
        )
    shape = meta.get("code_shape")
    if shape:
        try:
            expected = tuple(
                int(s)
                for s in tokenizer.code_shape(shape["frames"], shape["height"], shape["width"])
            )
        except ValueError as error:
            expected = None
            reason = str(error)
        else:
            reason = f"makes codes {expected}"
        if expected != tuple(shape["codes"]):
            raise ValueError(
                f"{said}, codes {tuple(shape['codes'])} for {shape['frames']} frames of "
                f"{shape['height']}×{shape['width']}; for those frames the tokenizer given "
                f"{reason}: " + _encode_hint(folder, meta)
            )
    digest = tokenizer_digest(tokenizer)
    if digest != recorded["weights_sha256"]:
        raise ValueError(
            f"{said}, weights sha256 {recorded['weights_sha256'][:12]}…; the tokenizer given "
            f"has other weights ({digest[:12]}…), so its codes mean other things: "
            + _encode_hint(folder, meta)
        )


def read_meta(folder: str) -> dict[str, Any] | None:
    """The `encode.json` of `folder`, or None if it has none."""
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != CODES_FORMAT:
        raise ValueError(
            f"{path} is not an eqvid codes file (format {meta.get('format')!r}, expected "
            f"{CODES_FORMAT!r})."
        )
    return meta


class CodesVideos:
    """Videos encoded by `python -m eqvid.data.encode`, as a Grain random-access source.

    **Arguments**

    - `root`: the encoder's output folder (holding `<split>/index.npz`).
    - `split`: `"train"` or `"test"`.
    - `actions`: return the actions: `None` when the videos had them, `True` always
      (an error if they had none), `False` never.
    - `tokenizer`: if given, checked against the one the codes were encoded with
      (`check_tokenizer`): codebook size, codes' shape, weights.

    `source[i]` is `{"codes": int32 (code_time, code_height, code_width)}` (plus
    `"actions": int32 (frames,)`, one per encoded frame).

    **Raises** `FileNotFoundError` if the split was not encoded or is not finished, or
    a shard is missing; `ValueError` for a tokenizer that does not match and, when an
    entry is read, for codes outside `[0, n_codes)` (naming the value, the range and
    the fix).
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        actions: bool | None = None,
        tokenizer: Any = None,
    ) -> None:
        if not root:
            raise ValueError("CodesVideos: `root` is empty; pass the encoder's output folder.")
        self.folder = os.path.join(root, split)
        meta = read_meta(self.folder)
        index_path = os.path.join(self.folder, INDEX_FILE)
        if meta is None:
            raise FileNotFoundError(
                f"CodesVideos: {self.folder!r} holds no encoded videos ({META_FILE}); encode "
                "them first with `python -m eqvid.data.encode`."
            )
        if not os.path.isfile(index_path):
            raise FileNotFoundError(
                f"CodesVideos: the encoding of {self.folder!r} is not finished (no {INDEX_FILE}); "
                "run the same `python -m eqvid.data.encode` command again to continue it."
            )
        self.meta = meta
        self.n_codes = int(meta["tokenizer"]["n_codes"])
        with np.load(index_path) as index:
            self.shards = [os.path.join(self.folder, str(s)) for s in index["shards"]]
            self.shard_records = index["shard_records"].astype(np.int64)
            self.sources = index["sources"].astype(np.int64)
            self.starts = index["starts"].astype(np.int64)
            self.frames = index["frames"].astype(np.int64)
            self.shapes = index["shapes"].astype(np.int64).reshape(-1, 3)
            self.names = [str(n) for n in index["names"]]
            self.frame_shape = tuple(int(s) for s in index["frame_shape"])
            has = "actions" in index.files
            stored = index["actions"].astype(np.int32) if has else None
            offsets = index["action_offsets"].astype(np.int64) if has else None
        if len(self.sources) == 0:
            raise ValueError(f"CodesVideos: {index_path!r} lists no videos (empty split).")
        if actions and stored is None:
            raise ValueError(
                f"CodesVideos: {self.folder!r} holds no actions (the videos had none); pass "
                "actions=False."
            )
        self.has_actions = stored is not None if actions is None else bool(actions)
        self._actions = stored if self.has_actions else None
        self._action_offsets = offsets
        for shard in self.shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(
                    f"CodesVideos: shard {shard!r} listed in {index_path!r} is missing."
                )
        self._shard_starts = np.concatenate([[0], np.cumsum(self.shard_records)])
        self._readers = ShardReaders(self.shards)
        if tokenizer is not None:
            check_tokenizer(meta, tokenizer, self.folder)

    def __len__(self) -> int:
        return len(self.sources)

    def __repr__(self) -> str:
        t = self.meta["tokenizer"]
        return (
            f"CodesVideos({self.folder!r}, {len(self)} videos, {t['model_name']} "
            f"n_codes={self.n_codes}, actions={self.has_actions})"
        )

    def path(self, index: int | np.integer) -> str:
        """Where entry `index` came from, for messages."""
        return f"{self.names[index]} (encoded in {self.folder})"

    @property
    def frames_per_step(self) -> int:
        """Frames one step of codes covers (1 for a per-frame tokenizer, its time
        downsampling for a video tokenizer)."""
        return max(1, int(self.frames[0]) // max(1, int(self.shapes[0][0])))

    def read_window(
        self, index: int | np.integer, seq_len: int, rng: np.random.Generator | None
    ) -> dict[str, np.ndarray]:
        """`seq_len` consecutive steps of the codes of entry `index`, from step 0
        (`rng=None`) or a random start drawn from `rng`, with the actions of the frames
        they cover.

        **Raises** `ValueError` naming the entry if it has fewer than `seq_len` steps."""
        from ._bad_video import BadVideoError

        item = self[index]
        codes = item["codes"]
        try:
            steps = window_frames(len(codes), seq_len, 1, rng)
        except BadVideoError as e:
            raise ValueError(
                f"CodesVideos: {self.path(int(index))} {e} of codes; use a shorter --seq-len "
                "(in steps of codes) or encode longer clips."
            ) from None
        out = {"codes": codes[steps[0] : steps[-1] + 1]}
        if "actions" in item:
            k = self.frames_per_step
            out["actions"] = item["actions"][k * int(steps[0]) : k * (int(steps[-1]) + 1)]
        return out

    def tokenizer(self) -> Any:
        """The tokenizer the codes were encoded with, loaded from the folder
        `encode.json` records (checked against the codes)."""
        recorded = self.meta["tokenizer"]
        tokenizer = _recorded_tokenizer(recorded["path"], recorded.get("ema", True), self.folder)
        check_tokenizer(self.meta, tokenizer, self.folder)
        return tokenizer

    def __getitem__(self, index: int | np.integer) -> dict[str, np.ndarray]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"CodesVideos indices must be integers; got {index!r}.")
        if not 0 <= index < len(self):
            raise IndexError(f"CodesVideos index {index} out of range 0..{len(self) - 1}.")
        i = int(index)
        shard = int(np.searchsorted(self._shard_starts, i, side="right")) - 1
        (record,) = self._readers[shard].read([i - int(self._shard_starts[shard])])
        shape = tuple(int(s) for s in self.shapes[i])
        if len(record) != 4 * int(np.prod(shape)):
            raise ValueError(
                f"CodesVideos: the record of {self.path(i)} holds {len(record)} bytes, not the "
                f"{4 * int(np.prod(shape))} of int32 codes {shape}: the shard is corrupt; "
                + _encode_hint(self.folder, self.meta)
            )
        codes = np.frombuffer(record, "<i4").reshape(shape).astype(np.int32)
        if codes.size:
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= self.n_codes:
                bad = low if low < 0 else high
                raise ValueError(
                    f"CodesVideos: {self.path(i)} holds code {bad}, outside [0, {self.n_codes}) "
                    f"(the codebook of {self.meta['tokenizer']['model_name']} it was encoded "
                    "with): the file is corrupt or was not written by this encoder; "
                    + _encode_hint(self.folder, self.meta)
                )
        out = {"codes": codes}
        if self._actions is not None and self._action_offsets is not None:
            a, b = self._action_offsets[i], self._action_offsets[i + 1]
            out["actions"] = self._actions[a:b]
        return out


@functools.lru_cache(maxsize=2)
def _load_recorded(path: str, ema: bool) -> Any:
    from ..models._tokenizer_files import load_tokenizer

    return load_tokenizer(path, ema=ema)


def _recorded_tokenizer(path: str, ema: bool, folder: str) -> Any:
    if not path:
        raise ValueError(
            f"{folder}: encode.json records no tokenizer folder to decode the codes with."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"the tokenizer the codes in {folder} were encoded with, {path!r} (recorded in "
            "encode.json), is not there; put it back, or encode the videos again."
        )
    return _load_recorded(os.path.abspath(path), bool(ema))


def codes_to_frames(tokenizer: Any, codes: Any) -> np.ndarray:
    """uint8 frames `(batch, time, height, width, channels)` of a batch of codes
    `(batch, code_time, code_height, code_width)`: the tokenizer's decode
    (`eqvid.models.decode_codes`, which refuses codes outside `[0, n_codes)`),
    clipped to `[-1, 1]` and mapped to `0 … 255` as samples and metrics take frames."""
    from ..models import decode_codes

    video = np.asarray(decode_codes(tokenizer, np.asarray(codes)), np.float32)
    return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)
