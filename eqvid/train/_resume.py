"""What a resumed run may change: settings that change the run's trajectory (the
model, the data, the optimiser, the batch, the seed, the compute precision, the data
workers) are refused unless the user says so; the rest (the number of steps, mesh,
logging, checkpoint and sample cadence, evaluation) may change freely."""

from typing import Any

FREE = {
    "run.run_dir",
    "run.steps",  # a longer (or shorter) run: the schedule stretches from the resumed step
    "run.resume",
    "run.resume_with_changes",
    "run.log_every",
    "run.sample_every",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.progress",
    "run.tensorboard",
    "run.eval_sequences",
    "run.eval_context",
    "run.eval_horizon",
    "run.accumulate",  # the same update (micro-batches summed), other rounding only
    "data.root",  # the same files moved
}
FREE_SECTIONS = ("mesh.", "distributed.", "changes_on_resume")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flat(value, name + ".")
        else:
            out[name] = value
    return out


def trajectory_changes(before: dict[str, Any], now: dict[str, Any]) -> dict[str, list[Any]]:
    """`{setting: [before, now]}` for every setting that differs between two run
    configs (`config.json` form) and changes the run's trajectory. Settings only one
    side has (added to or removed from eqvid since the run was written) are not
    compared: the run had the behaviour of its time."""
    a, b = _flat(before), _flat(now)
    return {
        key: [a[key], b[key]]
        for key in sorted(set(a) & set(b))
        if key not in FREE and not key.startswith(FREE_SECTIONS) and a[key] != b[key]
    }


def describe(changes: dict[str, list[Any]], most: int = 6) -> str:
    """`--lr 0.001 → 0.002, …` for a message."""
    parts = [
        f"{key.split('.', 1)[-1].replace('_', '-')} {old!r} → {new!r}"
        for key, (old, new) in list(changes.items())[:most]
    ]
    more = len(changes) - len(parts)
    return ", ".join(parts) + (f" (and {more} more)" if more > 0 else "")
