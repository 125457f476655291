"""Orbax checkpoints of parameters, optimiser state, the data iterator and the RNG.

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
    """Save and restore `(params, opt_state, data iterator)` under `directory/<step>/`.

    Saves are asynchronous (`save` returns while the step is written in the
    background; `wait()` / `close()` finish it) and atomic per step (Orbax commits a
    step directory only once it is complete), so an interrupted run resumes from its
    last finished checkpoint. Only the last `keep` steps stay on disk.
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

    def save(
        self,
        step: int,
        params: PyTree,
        opt_state: PyTree,
        data_iterator: Any = None,
        metadata: dict[str, Any] | None = None,
        *,
        rng: Any = None,
    ) -> None:
        """Write checkpoint `step` (asynchronously; `wait()` or `close()` to finish).
        `rng` is the run's JAX key (its key data is stored)."""
        metadata = dict(metadata or {})
        metadata["parameter_shapes"] = {k: list(v.shape) for k, v in _flatten(params).items()}
        items = dict(
            params=ocp.args.StandardSave(_flatten(params)),
            opt_state=ocp.args.StandardSave(_flatten(opt_state)),
            metadata=ocp.args.JsonSave(json.loads(json.dumps(metadata or {}, default=str))),
        )
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
        params_like: PyTree,
        opt_state_like: PyTree,
        data_iterator: Any = None,
        *,
        rng_like: Any = None,
    ) -> tuple[PyTree, ...]:
        """Read checkpoint `step` into trees shaped like the given templates; the data
        iterator (if given) is moved to its saved position in place. A checkpoint of
        a model with other parameter shapes is refused with the differences named.

        Returns `(params, opt_state)`, or `(params, opt_state, rng)` when `rng_like`
        (a key of the run's key type) is given: the key saved with the step."""
        self._check_shapes(step, params_like)
        items = dict(
            params=ocp.args.StandardRestore(_abstract(params_like)),
            opt_state=ocp.args.StandardRestore(_abstract(opt_state_like)),
        )
        if rng_like is not None:
            items["rng"] = ocp.args.StandardRestore(
                {"key_data": np.asarray(jax.random.key_data(rng_like))}
            )
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        trees = (
            _unflatten(out["params"], params_like),
            _unflatten(out["opt_state"], opt_state_like),
        )
        if rng_like is None:
            return trees
        impl = jax.random.key_impl(rng_like)
        data = jax.numpy.asarray(out["rng"]["key_data"])
        return trees + (jax.random.wrap_key_data(data, impl=impl),)

    def restore_params(self, step: int, params_like: PyTree) -> PyTree:
        """Read only the parameters of checkpoint `step` (for evaluation), into a tree
        shaped like `params_like`; refused, with the differences named, if they do not
        match."""
        self._check_shapes(step, params_like)
        out = self.manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(params_like)))
        )
        return _unflatten(out["params"], params_like)

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
