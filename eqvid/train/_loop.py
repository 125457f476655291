"""`train(config)`: the one training entry point (model → optimiser → jitted step →
progress bar, metrics, samples, checkpoints → held-out rollout report)."""

import csv
import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ..models import AbstractVideoPredictor, make_model, model_spec
from ._checkpoint import Checkpointer
from ._config import TrainConfig
from ._distributed import initialize_distributed
from ._mesh import batch_sharding, check_batch, make_mesh
from ._optimizer import learning_rate_schedule, make_optimizer
from ._rollout_eval import RolloutReport, rollout, rollout_mse
from ._samples import save_prediction_gif, save_prediction_strip
from ._sharded_step import make_sharded_train_step, shard_state
from ._signals import GracefulStop


def make_train_step(optimizer: optax.GradientTransformation):
    """A jitted `(model, opt_state, videos) → (model, opt_state, loss, grad_norm)`;
    the loss is the model's per-video loss averaged over the batch."""

    @eqx.filter_jit
    def train_step(model, opt_state, videos):
        def batch_loss(m):
            return jnp.mean(jax.vmap(m.loss)(videos))

        loss, grads = eqx.filter_value_and_grad(batch_loss)(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss, optax.global_norm(grads)

    return train_step


@dataclasses.dataclass
class TrainResult:
    """What a run leaves behind."""

    model: AbstractVideoPredictor
    run_dir: pathlib.Path
    step: int
    """The last completed step."""
    losses: list[float]
    """Training losses of the steps run in this call."""
    report: RolloutReport | None
    """The held-out rollout evaluation (None if `eval_sequences` is 0 or the run was
    stopped early)."""
    stopped_by: str | None = None
    """The signal (`"SIGTERM"`, `"SIGINT"`) that stopped the run before its last step,
    after saving a checkpoint at `step`; None if it ran to the end."""


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    """The run's config as JSON, with the names of its model and dataset (so that
    `eqvid.evaluate` can rebuild both)."""
    from ..data import DATASETS

    names = {
        "model_name": model_spec(config.model).name,
        "dataset_name": next(k for k, v in DATASETS.items() if type(config.data) is v),
    }
    return names | json.loads(json.dumps(dataclasses.asdict(config), default=str))


def train(config: TrainConfig) -> TrainResult:
    """Train the video model that `config.model` describes (ConvS5, ConvLSTM or
    Transformer; the config's type picks the model) as `config` says.

    Writes to `config.run.run_dir`: `config.json`, `metrics.csv` (step, loss,
    learning rate, gradient norm, frames/s), `samples/step_XXXXXX.{png,gif}`
    (context | prediction | ground truth on held-out videos), Orbax checkpoints
    under `checkpoints/`, and at the end `eval.json` / `eval.md` with the rollout
    report. With `run.resume`, continues from the latest checkpoint with the
    same parameters, optimiser state, data order and random stream, so the
    losses match an uninterrupted run.
    """
    from ..data import evaluation_videos, frame_spec, make_dataset

    rc = config.run
    initialize_distributed(config.distributed)  # before any JAX computation
    processes = jax.process_count()
    main = jax.process_index() == 0  # the process that writes logs, samples and reports
    if rc.batch_size % processes:
        raise ValueError(
            f"--batch-size ({rc.batch_size}) is the global batch and must be divisible by the "
            f"number of processes ({processes})."
        )
    run_dir = pathlib.Path(rc.run_dir)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=rc.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is not None and not rc.resume:
        ckpt.close()
        raise FileExistsError(
            f"{run_dir} already holds checkpoints (latest step {latest}); pass --resume to "
            "continue that run or choose another --run-dir."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        (run_dir / "config.json").write_text(json.dumps(_config_dict(config), indent=2))

    spec = frame_spec(config.data)  # the frames the data yields; the model must take them
    m = config.model
    if (spec.height, spec.width, spec.channels) != (m.frame_size, m.frame_size, m.channels):
        ckpt.close()
        raise ValueError(
            f"the data yields {spec.height}×{spec.width} frames with {spec.channels} channel(s), but "
            f"the model takes {m.frame_size}×{m.frame_size} with {m.channels}: set the model's "
            "frame_size / channels to match, or resize the data (--frame-size)."
        )
    dataset = make_dataset(
        # Each process reads its own share of every global batch.
        config.data,
        batch_size=rc.batch_size // processes,
        seed=rc.seed,
        num_workers=rc.num_workers,
    )
    data_iter = iter(dataset)
    eval_len = rc.eval_context + rc.eval_horizon

    mesh = make_mesh(config.mesh)
    if main and rc.progress:
        print(
            f"eqvid: {processes} process(es), {len(mesh.devices.flat)} device(s) in the mesh "
            f"{dict(mesh.shape)}",
            flush=True,
        )
    check_batch(rc.batch_size, mesh, "--batch-size")
    check_batch(
        rc.batch_size // rc.accumulate,
        mesh,
        f"the micro-batch size (--batch-size {rc.batch_size} / --accumulate {rc.accumulate})",
    )
    init_key, train_key = jax.random.split(jax.random.key(rc.seed))
    model = make_model(config.model, key=init_key)
    optimizer = make_optimizer(config.optimizer, model, rc.steps)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    # Parameters and optimiser state live on the mesh (replicated, or split over the
    # fsdp / model axes); a checkpoint restores into these shardings, whatever mesh wrote it.
    model, opt_state = shard_state(model, opt_state, mesh, config.mesh.min_fsdp_size)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    start = 0
    if latest is not None:
        params, opt_state, train_key = ckpt.restore(
            latest, params, opt_state, data_iter, rng_like=train_key
        )
        model = eqx.combine(params, static)
        start = latest
    train_step = make_sharded_train_step(
        optimizer,
        mesh,
        accumulate=rc.accumulate,
        compute_dtype=rc.compute_dtype,
        min_fsdp_size=config.mesh.min_fsdp_size,
    )
    videos_sharding = batch_sharding(mesh)
    schedule = learning_rate_schedule(config.optimizer, rc.steps)

    # Up to 4 test videos, shown as context | prediction | truth in the sample pictures.
    sample_len = max(eval_len, 2) if rc.eval_sequences else config.data.seq_len
    sample_u8, sample_actions = next(
        evaluation_videos(
            config.data, num_videos=4, length=sample_len, batch_size=4, require_all=False
        )
    )
    sample_videos = sample_u8.astype(np.float32) / 127.5 - 1.0
    n_ctx = min(rc.eval_context, sample_videos.shape[1] - 1)

    def export_samples(step: int) -> None:
        pred = np.asarray(
            rollout(
                model,
                sample_videos[:, :n_ctx],
                sample_videos.shape[1] - n_ctx,
                actions=sample_actions,
            )
        )
        if not main:  # every process computes (the model spans them all); one writes
            return
        args = (sample_videos[:, :n_ctx], pred, sample_videos[:, n_ctx:])
        save_prediction_strip(run_dir / "samples" / f"step_{step:06d}.png", *args)
        save_prediction_gif(run_dir / "samples" / f"step_{step:06d}.gif", *args)

    saved = [start]  # the last step with a checkpoint

    def save(step: int) -> None:
        if saved[0] == step:
            return
        ckpt.save(
            step,
            eqx.filter(model, eqx.is_inexact_array),
            opt_state,
            data_iter,
            {"config": _config_dict(config)},
            rng=train_key,
        )
        saved[0] = step

    metrics_path = run_dir / "metrics.csv"
    header = ["step", "loss", "lr", "grad_norm", "frames_per_s", "elapsed_s"]
    kept: list[list[str]] = []
    if main and start > 0 and metrics_path.exists():
        # Rows logged after the checkpoint we resume from are about to be redone.
        with open(metrics_path, newline="") as f:
            kept = [row for row in list(csv.reader(f))[1:] if row and int(row[0]) <= start]
    metrics_file = open(metrics_path if main else os.devnull, "w", newline="")  # noqa: SIM115
    writer = csv.writer(metrics_file)
    writer.writerows([header] + kept)

    frames_per_step = rc.batch_size * config.data.seq_len
    losses: list[float] = []
    t_start = time.perf_counter()
    t_last, steps_since = t_start, 0
    bar = tqdm(
        total=rc.steps,
        initial=start,
        disable=not (rc.progress and main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    stop = GracefulStop()
    last = start
    try:
        stop.__enter__()
        for step in range(start + 1, rc.steps + 1):
            batch = next(data_iter)
            videos = jax.make_array_from_process_local_data(videos_sharding, batch["video"])
            actions = batch.get("actions")
            if actions is not None:
                actions = jax.make_array_from_process_local_data(videos_sharding, actions)
            model, opt_state, loss, gnorm = train_step(
                model, opt_state, videos, actions, jax.random.fold_in(train_key, step)
            )
            steps_since += 1
            bar.update(1)
            if step % rc.log_every == 0 or step == rc.steps or step == start + 1:
                loss_f = float(loss)  # waits for the step
                now = time.perf_counter()
                fps = frames_per_step * steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                losses.append(loss_f)
                writer.writerow(
                    [
                        step,
                        f"{loss_f:.6f}",
                        f"{float(schedule(step - 1)):.3e}",
                        f"{float(gnorm):.4f}",
                        f"{fps:.1f}",
                        f"{now - t_start:.1f}",
                    ]
                )
                metrics_file.flush()
                bar.set_postfix(loss=f"{loss_f:.4f}", fps=f"{fps:.0f}")
                if not np.isfinite(loss_f):
                    raise FloatingPointError(
                        f"training loss became {loss_f} at step {step}; lower --lr or raise "
                        "--warmup-steps."
                    )
            paused = False
            if rc.checkpoint_every and step % rc.checkpoint_every == 0 and step != rc.steps:
                save(step)
                paused = True
            if rc.sample_every and step % rc.sample_every == 0 and step != rc.steps:
                export_samples(step)
                paused = True
            if paused:  # keep checkpoints and exports out of frames/s
                t_last, steps_since = time.perf_counter(), 0
            last = step
            if stop.requested and step < rc.steps:
                # Pre-empted: the step in flight is done; commit it and leave.
                bar.write(f"eqvid: {stop.signal_name} received; saving step {step} and stopping")
                save(step)  # (no-op when this step's checkpoint was just written)
                break
        if start < rc.steps and last == rc.steps:
            save(rc.steps)
            export_samples(rc.steps)
    finally:
        stop.__exit__()
        bar.close()
        metrics_file.close()
        ckpt.close()  # waits for asynchronous saves to commit
        close = getattr(data_iter, "close", None)
        if close is not None:
            close()

    if stop.requested and last < rc.steps:
        return TrainResult(
            model=model,
            run_dir=run_dir,
            step=last,
            losses=losses,
            report=None,
            stopped_by=stop.signal_name,
        )
    report = None
    if rc.eval_sequences:
        batches = list(
            evaluation_videos(
                config.data, num_videos=rc.eval_sequences, length=eval_len, batch_size=32
            )
        )
        actions = None if batches[0][1] is None else np.concatenate([a for _, a in batches])
        report = rollout_mse(
            model,
            np.concatenate([v for v, _ in batches]).astype(np.float32) / 127.5 - 1.0,
            context=rc.eval_context,
            horizon=rc.eval_horizon,
            model_name=model_spec(config.model).title,
            actions=actions,
        )
        if main:
            (run_dir / "eval.json").write_text(json.dumps(report.as_dict(), indent=2))
            (run_dir / "eval.md").write_text(report.markdown() + "\n")
    return TrainResult(model=model, run_dir=run_dir, step=rc.steps, losses=losses, report=report)
