"""Orbax checkpoints of a run's trees (parameters, optimiser state, model state,
moving average), the data iterator and the RNG; frozen parameters saved once.

Equinox modules hold functions and static fields that Orbax cannot store, so
only array leaves are saved, as a flat dict keyed by their pytree path
(`.layers[0].B`, …): readable, and restorable against a freshly built model.
"""

import gc
import json
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jaxtyping import PyTree

from ._checksums import checksums, mismatches


def _flatten(tree: PyTree) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


def _unflatten(flat: dict[str, Any], template: PyTree) -> PyTree:
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(p) for p, _ in paths]
    missing = [k for k in keys if k not in flat]
    if missing:
        raise ValueError(
            f"checkpoint does not match the model: missing {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}; was it written with another configuration?"
        )
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


def _abstract(tree: PyTree) -> dict[str, Any]:
    return {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))
        for k, v in _flatten(tree).items()
    }


def _root_cause(reason: object) -> str:
    """The first line of the innermost error behind `reason` (Orbax wraps TensorStore's
    "OUT_OF_RANGE: …" in a generic "Encountered error while reading …")."""
    seen = []
    error = reason
    while isinstance(error, BaseException) and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    for candidate in reversed(seen or [reason]):
        text = str(candidate).strip()
        if text:
            return text.splitlines()[0]
    return repr(reason)


def _silence_abandoned_reads() -> None:
    """When one array of an item fails to read, Orbax abandons the reads of the others
    (its event loop closes with them in flight); each then reports the same failure,
    or "Event loop is closed", as an "Exception ignored" traceback when it finishes or
    is collected: hundreds of lines for one damaged file. The error raised names the
    problem once, so drop those echoes (only these; any other unraisable goes to the
    usual hook), waiting, on this failure path only, until they have stopped. Call it
    once the failed read is garbage (outside the `except` block that caught it)."""
    previous = sys.unraisablehook
    dropped = [0]

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        echo = code is not None and "orbax" in code.co_filename
        closed = isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
            unraisable.exc_value
        )
        if echo or closed:
            dropped[0] += 1
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        quiet, deadline = 0, time.monotonic() + 5.0
        while quiet < 3 and time.monotonic() < deadline:
            before = dropped[0]
            gc.collect()
            time.sleep(0.05)
            quiet = quiet + 1 if dropped[0] == before else 0
    finally:
        sys.unraisablehook = previous


class CorruptCheckpointError(RuntimeError):
    """A checkpoint step that cannot be trusted: an item it recorded is missing,
    unreadable, or reads back other values than were written."""

    def __init__(self, directory: pathlib.Path, step: int, item: str, reason: object):
        text = _root_cause(reason)
        if len(text) > 200:
            text = text[:200] + " …"
        self.step, self.item = step, item
        super().__init__(f"checkpoint step {step} in {directory}: {item} is unusable ({text})")


class Checkpointer:
    """Save and restore a run's trees (parameters, optimiser state, model state, moving
    average, …), the data iterator and the RNG under `directory/<step>/`.

    Saves are asynchronous (`save` returns while the step is written in the
    background; `wait()` / `close()` finish it) and atomic per step (Orbax commits a
    step directory only once it is complete), so an interrupted run resumes from its
    last finished checkpoint. Only the last `keep` steps stay on disk. Each tree is
    stored as a flat dict of its arrays keyed by pytree path, restorable against a
    freshly built template of any sharding.
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2):
        if keep < 1:
            raise ValueError(f"Checkpointer: `keep` must be ≥ 1, got {keep}.")
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            # Saves run in a background thread: training goes on while a step is written.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True
            ),
        )

    def latest_step(self) -> int | None:
        """The last completed step, or `None` if there is no checkpoint."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every completed step, ascending."""
        return sorted(self.manager.all_steps())

    def items(self, step: int) -> set[str]:
        """The names of the items stored at `step` (`params`, `opt_state`, `ema`, …)."""
        folder = self.directory / str(step)
        return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()

    def save(
        self,
        step: int,
        trees: dict[str, PyTree],
        data_iterator: Any = None,
        metadata: dict[str, Any] | None = None,
        *,
        rng: Any = None,
    ) -> None:
        """Write checkpoint `step` (asynchronously; `wait()` or `close()` to finish):
        each of `trees` (`None` entries skipped) as an item of that name, the data
        iterator's position, `metadata` (JSON) and `rng`, the run's JAX key. The
        metadata also records the items written and a checksum of every array, which
        `restore` verifies."""
        metadata = dict(metadata or {})
        trees = {name: tree for name, tree in trees.items() if tree is not None}
        if "params" in trees:
            metadata["parameter_shapes"] = {
                k: list(v.shape) for k, v in _flatten(trees["params"]).items()
            }
        items: dict[str, Any] = {
            name: ocp.args.StandardSave(_flatten(tree)) for name, tree in trees.items()
        }
        sums = {name: checksums(tree) for name, tree in trees.items()}
        if rng is not None:
            # A host NumPy array: the same on every process, written once.
            key_data = {"key_data": np.asarray(jax.random.key_data(rng))}
            items["rng"] = ocp.args.StandardSave(key_data)
            sums["rng"] = checksums(key_data)
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        metadata["items"] = sorted(items)
        metadata["checksums"] = sums
        items["metadata"] = ocp.args.JsonSave(json.loads(json.dumps(metadata, default=str)))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def metadata(self, step: int) -> dict[str, Any]:
        """The metadata saved with `step` ({} for none); `CorruptCheckpointError` if it
        cannot be read."""
        if not (self.directory / str(step) / "metadata").exists():
            if (self.directory / str(step)).is_dir():
                raise CorruptCheckpointError(self.directory, step, "metadata", "it is missing")
            return {}
        try:
            saved = self.manager.restore(
                step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
            )["metadata"]
        except Exception as error:
            raise CorruptCheckpointError(self.directory, step, "metadata", error) from None
        if saved is not None and not isinstance(saved, dict):
            raise CorruptCheckpointError(self.directory, step, "metadata", "not a JSON object")
        return saved or {}

    def restore(
        self,
        step: int,
        templates: dict[str, PyTree],
        data_iterator: Any = None,
        *,
        rng_like: Any = None,
    ) -> dict[str, Any]:
        """Read checkpoint `step`: each of `templates` (`None` entries skipped) into a
        tree shaped and sharded like its template, the data iterator (if given) moved
        to its saved position in place, and, with `rng_like` (a key of the run's key
        type), the saved key as `"rng"`.

        **Raises** `CorruptCheckpointError` (naming the step and the item) when an item
        the step recorded is missing, cannot be read, or reads back other values than
        were written (checksums); `ValueError` when the checkpoint is intact but does
        not fit the templates (another model, other settings), naming the differences.
        """
        meta = self.metadata(step)
        stored = self.items(step)
        recorded = set(meta.get("items", []))
        lost = sorted(recorded - stored)
        if lost:
            raise CorruptCheckpointError(self.directory, step, lost[0], "its folder is missing")
        for name in ("params", "ema"):  # both have the parameters' shapes
            if templates.get(name) is not None:
                self._check_shapes(step, templates[name], meta)
        wanted = {name: tree for name, tree in templates.items() if tree is not None}
        missing = sorted(set(wanted) - stored)
        if missing:
            raise ValueError(
                f"checkpoint step {step} in {self.directory} has no {', '.join(missing)} "
                f"(it holds {', '.join(sorted(stored))}); it was written by a run with other "
                "settings (e.g. without --ema-decay)."
            )
        for name, tree in wanted.items():
            self._check_keys(step, name, tree)
        sums = meta.get("checksums", {})
        result: dict[str, Any] = {}
        for name, tree in wanted.items():
            flat = self._restore_item(step, name, ocp.args.StandardRestore(_abstract(tree)))
            result[name] = _unflatten(flat, tree)
            self._verify(step, name, sums, result[name])
        if rng_like is not None:
            template = {"key_data": np.asarray(jax.random.key_data(rng_like))}
            key_data = self._restore_item(step, "rng", ocp.args.StandardRestore(template))
            self._verify(step, "rng", sums, key_data)
            impl = jax.random.key_impl(rng_like)
            result["rng"] = jax.random.wrap_key_data(
                jax.numpy.asarray(key_data["key_data"]), impl=impl
            )
        if data_iterator is not None:
            import grain

            self._restore_item(step, "data", grain.checkpoint.CheckpointRestore(data_iterator))
        return result

    def restore_latest(
        self,
        templates: dict[str, PyTree],
        data_iterator: Any = None,
        *,
        rng_like: Any = None,
        report=print,
        set_aside: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        """`restore` the newest intact step: a step that is corrupt is reported in one
        line (through `report`) and the next older one tried. With `set_aside` (a run
        that goes on from the older step) the corrupt steps are moved out of the way,
        to `<run>/corrupt_checkpoints/<step>`, never deleted. **Raises**
        `CorruptCheckpointError` if no step is intact (naming each), `ValueError` if
        an intact step does not fit the templates, `FileNotFoundError` if there is no
        checkpoint."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory} holds no finished checkpoint.")
        problems, corrupt = [], []
        for step in reversed(steps):
            try:
                result = self.restore(step, templates, data_iterator, rng_like=rng_like)
            except CorruptCheckpointError as error:
                problems.append(str(error))
                corrupt.append(step)
                older = [s for s in steps if s < step]
                then = f"using step {older[-1]}" if older else "no older step is left"
                report(f"eqvid: {error}; {then}.")
                continue
            if set_aside and corrupt:
                self._set_aside(corrupt, report)
            return step, result
        raise CorruptCheckpointError(self.directory, steps[-1], "every step", "; ".join(problems))

    def _set_aside(self, steps: list[int], report) -> None:
        """Move corrupt steps to `<run>/corrupt_checkpoints/` (the run will write
        those step numbers again)."""
        if jax.process_index() == 0:
            aside = self.directory.parent / "corrupt_checkpoints"
            aside.mkdir(exist_ok=True)
            for step in steps:
                target = aside / str(step)
                n = 1
                while target.exists():
                    target, n = aside / f"{step}.{n}", n + 1
                shutil.move(str(self.directory / str(step)), str(target))
                report(f"eqvid: moved the corrupt step {step} to {target}.")
        self.manager.reload()

    def _restore_item(self, step: int, name: str, args: Any) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
        except Exception as error:
            corrupt = CorruptCheckpointError(self.directory, step, name, error)
        # Out of the `except` block, so the failed read (and the abandoned ones its
        # traceback holds) can be collected while their echoes are dropped.
        _silence_abandoned_reads()
        raise corrupt

    def _verify(self, step: int, name: str, sums: dict[str, Any], tree: PyTree) -> None:
        if name not in sums:  # written before checksums were recorded
            return
        differ = mismatches(sums[name], tree)
        if differ:
            raise CorruptCheckpointError(
                self.directory,
                step,
                name,
                f"{len(differ)} array(s) read back other values than were written "
                f"(checksums differ: {', '.join(differ[:3])}{' …' if len(differ) > 3 else ''})",
            )

    def _stored_keys(self, step: int, item: str) -> set[str] | None:
        """The array paths stored in item `item` of step `step` (None if unreadable)."""
        from absl import logging as absl_logging

        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)  # "metadata file does not exist"
        try:
            with ocp.StandardCheckpointer() as reader:
                tree = reader.metadata(self.directory / str(step) / item).item_metadata
            return set(tree.keys()) if tree is not None else None
        except Exception:
            return None
        finally:
            absl_logging.set_verbosity(verbosity)

    def _check_keys(self, step: int, item: str, template: PyTree) -> None:
        """Refuse, in one message, an item whose stored entries differ from the ones
        this run has (another optimiser layout, model state, or eqvid version)."""
        stored = self._stored_keys(step, item)
        if stored is None:
            return
        here = set(_flatten(template))
        only_there, only_here = sorted(stored - here), sorted(here - stored)
        if only_there or only_here:
            examples = [f"{k} (only in the checkpoint)" for k in only_there[:2]]
            examples += [f"{k} (only in this run)" for k in only_here[:2]]
            raise ValueError(
                f"checkpoint step {step} in {self.directory}: its {item} does not match this "
                f"run's ({len(only_there)} entries only there, {len(only_here)} only here; e.g. "
                f"{'; '.join(examples)}). It was written with other settings (optimiser groups, "
                "--ema-decay, the model) or by an older eqvid; resume with the settings of that "
                "run (its config.json) or start a new --run-dir."
            )

    def _check_shapes(self, step: int, params_like: PyTree, meta: dict[str, Any]) -> None:
        shapes = meta.get("parameter_shapes")
        if not shapes:  # written before shapes were recorded
            return
        here = {k: list(v.shape) for k, v in _flatten(params_like).items()}
        diffs = [
            f"{k} has shape {tuple(shapes[k])} there but {tuple(v)} here"
            for k, v in here.items()
            if k in shapes and shapes[k] != v
        ]
        missing = sorted(set(here) ^ set(shapes))
        if diffs or missing:
            what = diffs[:3] + [
                f"{k} exists in only one of them" for k in missing[: 3 - len(diffs[:3])]
            ]
            more = len(diffs) + len(missing) - len(what)
            raise ValueError(
                f"checkpoint step {step} in {self.directory} was written by a model with other "
                f"parameters: {'; '.join(what)}{f' (and {more} more)' if more > 0 else ''}. "
                "Resume with the model options of that run (its config.json) or start a new "
                "--run-dir."
            )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_frozen(directory: str | pathlib.Path, frozen: PyTree) -> None:
    """Write a model's frozen arrays once per run (they never change, so checkpoints
    leave them out)."""
    directory = pathlib.Path(directory).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, _flatten(frozen), force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()


def restore_frozen(directory: str | pathlib.Path, template: PyTree) -> PyTree:
    """Read the frozen arrays `save_frozen` wrote, into a tree like `template`."""
    directory = pathlib.Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} does not exist: the run's frozen parameters (saved once when it "
            "started) are missing."
        )
    checkpointer = ocp.StandardCheckpointer()
    try:
        flat = checkpointer.restore(directory, _abstract(template))
    finally:
        checkpointer.close()
    return _unflatten(flat, template)
