"""The training pipeline of a codes dataset (`CodesConfig`): windows of codes, shuffled,
repeated, sharded over processes and batched, as `make_dataset` builds for frames."""

from typing import Any

import grain
import numpy as np

from ._codes import CodesConfig, CodesVideos
from ._epochs import EpochOrder
from ._hot_path import hot_path

__all__ = ["codes_dataset"]


class _ReadCodesWindow:
    """`(entry index, rng) -> {"codes", ["actions"]}`: one window of an entry."""

    def __init__(self, source: CodesVideos, seq_len: int, random_start: bool) -> None:
        self.source = source
        self.seq_len = seq_len
        self.random_start = random_start

    @hot_path
    def __call__(self, index: int | np.integer, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.source.read_window(index, self.seq_len, rng if self.random_start else None)


def open_codes(config: CodesConfig, split: str) -> CodesVideos:
    """The `CodesVideos` of `split` that `config` describes."""
    if not config.root:
        raise ValueError("CodesConfig: `root` is empty; pass --root, the encoder's output folder.")
    return CodesVideos(config.root, split, actions=None if config.actions else False)


def codes_dataset(
    config: CodesConfig,
    *,
    split: str,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    num_workers: int,
    drop_remainder: bool,
    random_window: bool,
    process_index: int,
    process_count: int,
    mark_flags: Any,
) -> grain.IterDataset:
    """Batches `{"codes": int32 (batch, seq_len, code_height, code_width)}` (plus
    `"actions": int32 (batch, frames)` when the codes have them): one window per
    entry, entry order epoch by epoch (`EpochOrder`), this process's batches. The
    arguments are `make_dataset`'s, checked there."""
    source = open_codes(config, split)
    if drop_remainder and batch_size * process_count > len(source):
        raise ValueError(
            f"make_dataset: one global batch ({batch_size} × {process_count} process(es)) is "
            f"larger than the data ({len(source)} entries in {source.folder}); use a smaller "
            "batch_size or more data."
        )
    order = EpochOrder(len(source), seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    ds = grain.MapDataset.source(order).seed(seed)
    ds = ds.random_map(_ReadCodesWindow(source, config.seq_len, random_window))
    # An endless stream has no remainder (Grain's length arithmetic overflows otherwise).
    ds = ds.batch(batch_size, drop_remainder=drop_remainder or num_epochs is None)
    ds = ds[process_index::process_count]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))
    if num_workers > 0:
        mark_flags()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it
