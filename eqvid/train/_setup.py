"""Everything a run needs before its first step: processes and mesh, the model and its
parameter plan, the optimiser and train state (restored on resume), the data and the
checkpointer."""

import dataclasses
import json
import pathlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..models import AbstractModel, make_model, model_spec
from ._checkpoint import Checkpointer, CorruptCheckpointError, restore_frozen, save_frozen
from ._config import TrainConfig
from ._distributed import initialize_distributed
from ._files import write_atomic
from ._mesh import batch_sharding, check_batch, make_mesh
from ._optimizer import learning_rate_schedule, make_optimizer
from ._resume import describe, trajectory_changes
from ._step import ParameterPlan, TrainState, init_train_state, make_train_step


@jax.jit
def _all_finite(arrays: list) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in arrays]))


def _stored_config(run_dir: pathlib.Path, checkpointer: Checkpointer, step: int) -> dict | None:
    """The run's own config: its config.json, else the one saved with the checkpoint."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        pass
    try:
        return checkpointer.metadata(step).get("config")
    except CorruptCheckpointError:
        return None


def _changes_since(
    run_dir: pathlib.Path, checkpointer: Checkpointer, step: int, config: TrainConfig
) -> dict[str, list[Any]]:
    stored = _stored_config(run_dir, checkpointer, step)
    if stored is None:  # nothing to compare with (a run from before configs were kept)
        return {}
    return trajectory_changes(stored, config_dict(config))


def _previous_changes(run_dir: pathlib.Path) -> list:
    try:
        return list(json.loads((run_dir / "config.json").read_text()).get("changes_on_resume", []))
    except (OSError, ValueError, AttributeError):
        return []


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The run's config as JSON, with the names of its model and dataset (so that
    `eqvid.evaluate` can rebuild both)."""
    from ..data import DATASETS

    names = {
        "model_name": model_spec(config.model).name,
        "dataset_name": next(k for k, v in DATASETS.items() if type(config.data) is v),
    }
    return names | json.loads(json.dumps(dataclasses.asdict(config), default=str))


@dataclasses.dataclass
class TrainingRun:
    """A run, set up: what the loop and its hooks work with."""

    config: TrainConfig
    run_dir: pathlib.Path
    main: bool
    """Whether this process writes logs, samples and reports (process 0)."""
    mesh: jax.sharding.Mesh
    plan: ParameterPlan
    train_state: TrainState
    rest: Any
    """The model without its trained parameters (frozen arrays and everything static)."""
    step_fn: Any
    """The jitted train step (`make_train_step`)."""
    schedule: optax.Schedule
    data_iter: Any
    checkpointer: Checkpointer
    start: int
    """The last step done before this call (0 for a new run)."""
    train_key: jax.Array

    def model(self, *, ema: bool = True) -> AbstractModel:
        """The current model (with its moving-average parameters when kept and `ema`),
        its state folded in: the model to sample from."""
        ts = self.train_state
        params = ts.ema if ema and ts.ema is not None else ts.params
        return eqx.combine(params, self.rest).with_state(ts.model_state)

    def finite(self, loss: Any) -> bool:
        """Whether `loss` and every floating-point array of the train state (parameters,
        moving average, model state, optimiser state) are finite."""
        arrays = [
            x
            for x in jax.tree.leaves((loss, self.train_state))
            if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)
        ]
        return bool(_all_finite(arrays))

    def save(self, step: int) -> None:
        """Write checkpoint `step` (asynchronously)."""
        ts = self.train_state
        self.checkpointer.save(
            step,
            {
                "params": ts.params,
                "opt_state": ts.opt_state,
                "model_state": ts.model_state,
                "ema": ts.ema,
            },
            self.data_iter,
            {"config": config_dict(self.config)},
            rng=self.train_key,
        )

    def put_batch(self, batch: dict[str, np.ndarray]):
        """This process's share of a global batch → global arrays on the mesh, once the
        model has checked its known values (`AbstractModel.check_batch`: inside
        the compiled step they could not raise)."""
        from ..models import AbstractLatentVideoModel, VideoBatch

        actions = batch.get("actions")
        if "codes" in batch:  # a codes dataset: only the latent models take it
            assert isinstance(self.rest, AbstractLatentVideoModel)
            self.rest.check_codes_batch(batch["codes"], actions)
        else:
            self.rest.check_batch(batch["video"], actions)
        sharding = batch_sharding(self.mesh)

        def put(x):
            return None if x is None else jax.make_array_from_process_local_data(sharding, x)

        return VideoBatch(put(batch.get("video")), put(actions), put(batch.get("codes")))

    def close(self) -> None:
        self.checkpointer.close()  # waits for asynchronous saves to commit
        close = getattr(self.data_iter, "close", None)
        if close is not None:
            close()


def setup(config: TrainConfig) -> TrainingRun:
    """Join the processes, check the run against its folder and data, build the model,
    optimiser and train state on the mesh, and restore the latest checkpoint when
    resuming."""
    from ..data import frame_spec, make_dataset

    rc = config.run
    initialize_distributed(config.distributed)  # before any JAX computation
    processes = jax.process_count()
    main = jax.process_index() == 0
    if rc.batch_size % processes:
        raise ValueError(
            f"--batch-size ({rc.batch_size}) is the global batch and must be divisible by the "
            f"number of processes ({processes})."
        )
    run_dir = pathlib.Path(rc.run_dir)
    resume = rc.resume or rc.resume_with_changes
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(
                f"{folder} is a file, not a folder: --run-dir must name a folder of its own "
                "(move the file away or choose another --run-dir)."
            )
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=rc.keep_checkpoints)
    data_iter = None
    try:
        latest = checkpointer.latest_step()
        changes: dict[str, list[Any]] = {}
        if latest is not None and not resume:
            raise FileExistsError(
                f"{run_dir} already holds checkpoints (latest step {latest}); pass --resume "
                "to continue that run or choose another --run-dir."
            )
        if latest is not None:
            changes = _changes_since(run_dir, checkpointer, latest, config)
            if changes and not rc.resume_with_changes:
                raise ValueError(
                    f"--resume: these settings differ from the run in {run_dir} and would "
                    f"change its course: {describe(changes)}. Resume with the run's settings "
                    "(its config.json), or pass --resume-with-changes to continue with the "
                    "new ones (they are recorded in config.json)."
                )
        elif resume and main:
            print(f"eqvid: --resume: {run_dir} holds no checkpoint; starting a new run.")
        spec = frame_spec(config.data)  # the frames the data yields; the model must take them
        m = config.model
        if (spec.height, spec.width, spec.channels) != (m.frame_size, m.frame_size, m.channels):
            raise ValueError(
                f"the data yields {spec.height}×{spec.width} frames with {spec.channels} "
                f"channel(s), but the model takes {m.frame_size}×{m.frame_size} with "
                f"{m.channels}: set the model's frame_size / channels to match, or resize the "
                "data (--frame-size)."
            )
        mesh = make_mesh(config.mesh)
        check_batch(rc.batch_size, mesh, "--batch-size")
        check_batch(
            rc.batch_size // rc.accumulate,
            mesh,
            f"the micro-batch size (--batch-size {rc.batch_size} / --accumulate {rc.accumulate})",
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        if main and rc.progress:
            print(
                f"eqvid: {processes} process(es), {len(mesh.devices.flat)} device(s) in the mesh "
                f"{dict(mesh.shape)}",
                flush=True,
            )
        dataset = make_dataset(
            # Each process reads its own share of every global batch.
            config.data,
            batch_size=rc.batch_size // processes,
            seed=rc.seed,
            num_workers=rc.num_workers,
        )
        data_iter = iter(dataset)

        init_key, train_key = jax.random.split(jax.random.key(rc.seed))
        model, model_state = make_model(config.model, key=init_key)
        check_model_takes_data(model, config.data)
        plan = ParameterPlan(model)
        params, _ = plan.partition(model)
        optimizer = make_optimizer(config.optimizer, model, plan.trainable_roles(params), rc.steps)
        ema = config.optimizer.ema_decay > 0
        mfs = config.mesh.min_fsdp_size
        train_state, rest = init_train_state(
            model, model_state, optimizer, plan, mesh, ema=ema, min_fsdp_size=mfs
        )
        frozen_dir = run_dir / "frozen"
        frozen = eqx.filter(rest, eqx.is_array)
        start = 0
        if latest is not None:
            latest, restored = checkpointer.restore_latest(
                {
                    "params": train_state.params,
                    "opt_state": train_state.opt_state,
                    "model_state": train_state.model_state,
                    "ema": train_state.ema,
                },
                data_iter,
                rng_like=train_key,
                report=print if main else (lambda _: None),
                set_aside=True,
            )
            train_state = TrainState(
                params=restored["params"],
                opt_state=restored["opt_state"],
                model_state=restored.get("model_state"),
                ema=restored.get("ema"),
            )
            train_key = restored["rng"]
            if jax.tree_util.tree_leaves(frozen):
                rest = eqx.combine(restore_frozen(frozen_dir, frozen), rest)
            start = latest
        elif jax.tree_util.tree_leaves(frozen):
            save_frozen(frozen_dir, frozen)
        # Only now that the run is known to be valid (a refused resume leaves the
        # run's config.json as it was).
        if main:
            record = config_dict(config)
            if latest is not None:
                record["changes_on_resume"] = _previous_changes(run_dir)
                if changes:
                    record["changes_on_resume"].append({"step": latest, "changes": changes})
            write_atomic(run_dir / "config.json", json.dumps(record, indent=2))
        step_fn = make_train_step(
            optimizer,
            plan,
            mesh,
            accumulate=rc.accumulate,
            compute_dtype=rc.compute_dtype,
            ema_decay=config.optimizer.ema_decay,
            min_fsdp_size=mfs,
        )
    except BaseException:  # nothing of a refused or failed start keeps running
        checkpointer.close()
        close = getattr(data_iter, "close", None)
        if close is not None:
            close()
        raise
    return TrainingRun(
        config=config,
        run_dir=run_dir,
        main=main,
        mesh=mesh,
        plan=plan,
        train_state=train_state,
        rest=rest,
        step_fn=step_fn,
        schedule=learning_rate_schedule(config.optimizer, rc.steps),
        data_iter=data_iter,
        checkpointer=checkpointer,
        start=start,
        train_key=train_key,
    )


def check_model_takes_data(model: Any, data: Any) -> None:
    """A `ValueError` unless `model` can train on what `data` yields: codes only for a
    latent model, and then the codes of its own tokenizer."""
    from ..data import CodesConfig, open_source
    from ..data._codes import check_tokenizer
    from ..models import AbstractLatentVideoModel

    if not isinstance(data, CodesConfig):
        return
    if not isinstance(model, AbstractLatentVideoModel):
        raise ValueError(
            f"--dataset codes yields a tokenizer's codes, but {type(model).__name__} trains on "
            "frames: train it on the frames, or choose a latent model (teco, convs5-latent, ...)."
        )
    source = open_source(data, "train")
    check_tokenizer(source.meta, model.tokenizer, source.folder)
