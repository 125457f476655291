"""`train(config)`: the one training entry point for every model and dataset: set up
(`_setup`), run the steps, and call the hooks (metrics log, checkpoints, samples,
the final held-out report)."""

import dataclasses
import functools
import json
import pathlib
import time

import equinox as eqx
import jax
import numpy as np
from tqdm.auto import tqdm

from ..evaluate._reconstruction_report import ReconstructionReport, reconstruction_report
from ..evaluate._rollout_report import RolloutReport, rollout_report
from ..models import (
    AbstractLatentVideoModel,
    AbstractModel,
    AbstractObjectCentricVideoModel,
    AbstractVideoModel,
    AbstractVideoTokenizer,
    model_spec,
    reconstruct_videos,
    rollout,
)
from ._config import TrainConfig
from ._distributed import wait_for_all_processes
from ._files import write_atomic
from ._hooks import MetricsLog, ReconstructionWriter, SampleWriter
from ._setup import TrainingRun, setup
from ._signals import GracefulStop


@dataclasses.dataclass
class TrainResult:
    """What a run leaves behind."""

    model: AbstractModel
    """The trained model (its moving-average parameters when the run kept them, its
    state folded in): the model to sample from."""
    run_dir: pathlib.Path
    step: int
    """The last completed step."""
    losses: list[float]
    """Training losses of the steps logged in this call."""
    report: RolloutReport | ReconstructionReport | None
    """The held-out evaluation: the rollout report of a video model, the reconstruction
    report of a tokenizer (None if `eval_sequences` is 0 or the run was stopped
    early)."""
    stopped_by: str | None = None
    """The signal (`"SIGTERM"`, `"SIGINT"`) that stopped the run before its last step,
    after saving a checkpoint at `step`; None if it ran to the end."""
    metrics: list[dict[str, float]] = dataclasses.field(default_factory=list)
    """Every logged step's metrics (loss, terms, gradient norm), in order."""


def _side_keys(run: TrainingRun) -> jax.Array:
    """Keys of the sample pictures and of the final report (step `s` trains with
    `fold_in(key, s)`, `s ≥ 1`; these come from `fold_in(key, 0)`)."""
    return jax.random.split(jax.random.fold_in(run.train_key, 0))


@eqx.filter_jit
def _object_masks(model: AbstractObjectCentricVideoModel, videos):
    """Each slot's share of each pixel of a batch of videos."""
    return jax.vmap(model.object_masks)(videos)


def _is_tokenizer(run: TrainingRun) -> bool:
    return issubclass(model_spec(run.config.model).module, AbstractVideoTokenizer)


def _sample_writer(run: TrainingRun, log: MetricsLog) -> SampleWriter | ReconstructionWriter:
    """Up to 4 test videos, shown as context | prediction | truth (a tokenizer's: input
    above reconstruction, at the training length)."""
    from ..data import evaluation_videos

    rc = run.config.run
    if _is_tokenizer(run):
        videos, _ = next(
            evaluation_videos(
                run.config.data,
                num_videos=4,
                length=run.config.data.seq_len,
                batch_size=4,
                require_all=False,
            )
        )
        videos = videos.astype(np.float32) / 127.5 - 1.0
        return ReconstructionWriter(run.run_dir, videos, main=run.main, log=log)
    eval_len = rc.eval_context + rc.eval_horizon
    length = max(eval_len, 2) if rc.eval_sequences else run.config.data.seq_len
    videos, actions = next(
        evaluation_videos(
            run.config.data, num_videos=4, length=length, batch_size=4, require_all=False
        )
    )
    videos = videos.astype(np.float32) / 127.5 - 1.0
    context = min(rc.eval_context, videos.shape[1] - 1)
    model = run.model()
    if isinstance(model, AbstractLatentVideoModel):  # whole steps of its tokenizer
        k = model.frames_per_step(videos.shape[2], videos.shape[3])
        context = max(k, context // k * k)
    return SampleWriter(run.run_dir, videos, actions, context, main=run.main, log=log)


def _final_report(run: TrainingRun, model: AbstractModel):
    """The held-out report, written as eval.json / eval.md: a video model's rollout
    report, a tokenizer's reconstruction report."""
    from ..data import evaluation_videos

    rc = run.config.run
    if isinstance(model, AbstractVideoTokenizer):
        videos = np.concatenate(
            [
                v
                for v, _ in evaluation_videos(
                    run.config.data,
                    num_videos=rc.eval_sequences,
                    length=run.config.data.seq_len,
                    batch_size=32,
                )
            ]
        )
        report = reconstruction_report(
            model,
            videos.astype(np.float32) / 127.5 - 1.0,
            model_name=model_spec(run.config.model).title,
        )
        if run.main:
            write_atomic(run.run_dir / "eval.json", json.dumps(report.as_dict(), indent=2))
            write_atomic(run.run_dir / "eval.md", report.markdown())
        return report
    if not isinstance(model, AbstractVideoModel):
        raise TypeError(
            f"{type(model).__name__} is neither an AbstractVideoModel nor an "
            "AbstractVideoTokenizer: training does not know what to report for it."
        )
    batches = list(
        evaluation_videos(
            run.config.data,
            num_videos=rc.eval_sequences,
            length=rc.eval_context + rc.eval_horizon,
            batch_size=32,
        )
    )
    action_batches = [a for _, a in batches if a is not None]
    actions = np.concatenate(action_batches) if action_batches else None
    report = rollout_report(
        model,
        np.concatenate([v for v, _ in batches]).astype(np.float32) / 127.5 - 1.0,
        context=rc.eval_context,
        horizon=rc.eval_horizon,
        model_name=model_spec(run.config.model).title,
        actions=actions,
        key=_side_keys(run)[1],
    )
    if run.main:
        write_atomic(run.run_dir / "eval.json", json.dumps(report.as_dict(), indent=2))
        write_atomic(run.run_dir / "eval.md", report.markdown() + "\n")
    return report


def train(config: TrainConfig) -> TrainResult:
    """Train the model `config.model` describes (any registered family; the config's
    type picks it) on `config.data` as `config` says.

    Writes to `config.run.run_dir`: `config.json`, `metrics.csv` (step, loss, every
    loss term, learning rate, gradient norm, frames/s), TensorBoard events under
    `tensorboard/`, `samples/step_XXXXXX.{png,gif}` (context | prediction | ground
    truth on held-out videos), Orbax checkpoints under `checkpoints/`, and at the end
    `eval.json` / `eval.md` with the rollout report. With `run.resume`, continues
    from the latest checkpoint with the same parameters, optimiser and model state,
    moving average, data order and random stream, so the losses match an
    uninterrupted run.
    """
    run = setup(config)
    rc = config.run
    log = None
    stop = GracefulStop()
    bar = tqdm(
        total=rc.steps,
        initial=run.start,
        disable=not (rc.progress and run.main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    saved = [run.start]  # the last step with a checkpoint
    logged: list[dict[str, float]] = []
    last = run.start
    try:
        log = MetricsLog(run.run_dir, start=run.start, main=run.main, tensorboard=rc.tensorboard)
        samples = _sample_writer(run, log)
        sample_key = _side_keys(run)[0]

        def export_samples(step: int) -> None:
            model = run.model()
            if isinstance(samples, ReconstructionWriter):
                assert isinstance(model, AbstractVideoTokenizer)
                samples(lambda v: reconstruct_videos(model, v), step)
                return
            assert isinstance(model, AbstractVideoModel)
            masks = None
            if isinstance(model, AbstractObjectCentricVideoModel):
                masks = functools.partial(_object_masks, model)
            samples(
                lambda c, n, a: rollout(model, c, n, key=sample_key, actions=a),
                step,
                masks,
            )

        def diverged(step: int, what: str) -> FloatingPointError:
            good = (
                f"the last good checkpoint is step {saved[0]} in {run.run_dir / 'checkpoints'}"
                if saved[0] > 0
                else "no checkpoint was saved"
            )
            return FloatingPointError(
                f"training diverged: {what} at step {step}; nothing was saved from it, and "
                f"{good}. Lower --lr or raise --warmup-steps, then --resume (or start anew)."
            )

        def save(step: int, loss) -> None:
            """Checkpoint `step`, unless its loss or state is not finite (then stop: a
            non-finite state must never replace a good checkpoint)."""
            if saved[0] == step:
                return
            if not run.finite(loss):
                raise diverged(step, "the loss or the parameters became non-finite")
            run.save(step)
            saved[0] = step

        frames_per_step = rc.batch_size * config.data.seq_len
        t_start = time.perf_counter()
        t_last, steps_since = t_start, 0
        metrics: dict[str, jax.Array] = {}
        stop.__enter__()
        for step in range(run.start + 1, rc.steps + 1):
            batch = run.put_batch(next(run.data_iter))
            step_key = jax.random.fold_in(run.train_key, step)
            if step == run.start + 1 and jax.process_count() > 1:
                # Every process compiles, then all start the first step together.
                run.step_fn.compile(run.train_state, run.rest, batch, step_key, step)
                wait_for_all_processes(f"eqvid: train step compiled (from step {step})")
            run.train_state, metrics = run.step_fn(run.train_state, run.rest, batch, step_key, step)
            steps_since += 1
            bar.update(1)
            if step % rc.log_every == 0 or step == rc.steps or step == run.start + 1:
                values = {k: float(v) for k, v in metrics.items()}  # waits for the step
                now = time.perf_counter()
                fps = frames_per_step * steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                logged.append(values)
                log.write(
                    step,
                    values,
                    lr=float(np.asarray(run.schedule(step - 1))),
                    frames_per_s=fps,
                    elapsed_s=now - t_start,
                )
                bar.set_postfix(loss=f"{values['loss']:.4f}", fps=f"{fps:.0f}")
                if not np.isfinite(values["loss"]):
                    raise diverged(step, f"the loss became {values['loss']}")
            paused = False
            if rc.checkpoint_every and step % rc.checkpoint_every == 0 and step != rc.steps:
                save(step, metrics["loss"])
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
                save(step, metrics["loss"])  # (no-op when this step's was just written)
                break
        if run.start < rc.steps and last == rc.steps:
            save(rc.steps, metrics["loss"])
            export_samples(rc.steps)
    finally:
        stop.__exit__()
        bar.close()
        if log is not None:
            log.close()
        run.close()

    losses = [m["loss"] for m in logged]
    model = run.model()
    if stop.requested and last < rc.steps:
        return TrainResult(
            model=model,
            run_dir=run.run_dir,
            step=last,
            losses=losses,
            report=None,
            stopped_by=stop.signal_name,
            metrics=logged,
        )
    report = _final_report(run, model) if rc.eval_sequences else None
    return TrainResult(
        model=model,
        run_dir=run.run_dir,
        step=rc.steps,
        losses=losses,
        report=report,
        metrics=logged,
    )
