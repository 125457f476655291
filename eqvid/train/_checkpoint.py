"""Orbax checkpoints of a run's trees (parameters, optimiser state, model state,
moving average), the data iterator and the RNG; frozen parameters saved once.

Equinox modules hold functions and static fields that Orbax cannot store, so
only array leaves are saved, as a flat dict keyed by their pytree path
(`.layers[0].B`, …): readable, and restorable against a freshly built model.
"""

import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jaxtyping import PyTree


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
        iterator's position, `metadata` (JSON) and `rng`, the run's JAX key."""
        metadata = dict(metadata or {})
        if "params" in trees:
            metadata["parameter_shapes"] = {
                k: list(v.shape) for k, v in _flatten(trees["params"]).items()
            }
        items: dict[str, Any] = {
            name: ocp.args.StandardSave(_flatten(tree))
            for name, tree in trees.items()
            if tree is not None
        }
        items["metadata"] = ocp.args.JsonSave(json.loads(json.dumps(metadata, default=str)))
        if rng is not None:
            # A host NumPy array: the same on every process, written once.
            items["rng"] = ocp.args.StandardSave({"key_data": np.asarray(jax.random.key_data(rng))})
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

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
        type), the saved key as `"rng"`. A checkpoint of a model with other parameter
        shapes is refused with the differences named; a missing item is named."""
        for name in ("params", "ema"):  # both have the parameters' shapes
            if templates.get(name) is not None:
                self._check_shapes(step, templates[name])
        stored = self.items(step)
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
        items: dict[str, Any] = {
            name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in wanted.items()
        }
        if rng_like is not None:
            items["rng"] = ocp.args.StandardRestore(
                {"key_data": np.asarray(jax.random.key_data(rng_like))}
            )
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        result: dict[str, Any] = {
            name: _unflatten(out[name], tree) for name, tree in wanted.items()
        }
        if rng_like is not None:
            impl = jax.random.key_impl(rng_like)
            data = jax.numpy.asarray(out["rng"]["key_data"])
            result["rng"] = jax.random.wrap_key_data(data, impl=impl)
        return result

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

    def _check_shapes(self, step: int, params_like: PyTree) -> None:
        saved = self.manager.restore(
            step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
        )["metadata"]
        shapes = (saved or {}).get("parameter_shapes")
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
