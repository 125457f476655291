"""Adjusted Rand index (ARI) of a segmentation, and its foreground form (FG-ARI), the
object-centric models' measure of whether slots separate objects (Slot Attention,
SAVi, SlotSSM report FG-ARI: the ARI over the pixels of the objects only)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _pairs(n: Array) -> Array:
    """`n choose 2`, elementwise."""
    return n * (n - 1) / 2


def adjusted_rand_index(
    labels: Int[Array, "*batch points"],
    predicted: Int[Array, "*batch points"],
    *,
    num_labels: int,
    num_predicted: int,
    ignore_label: int | None = None,
) -> Float[Array, "*batch"]:
    """The adjusted Rand index of `predicted` against `labels`, per leading index
    (Hubert & Arabie 1985; equal to `sklearn.metrics.adjusted_rand_score`).

    `labels` take values in `[0, num_labels)`, `predicted` in `[0, num_predicted)`;
    points labelled `ignore_label` are left out (FG-ARI: `ignore_label` the
    background). 1 is a perfect match up to renaming, 0 what random assignment gives
    in expectation. Where the index is undefined (both sides one group, both sides
    every point its own group, fewer than two points) it is 1, as scikit-learn's. Pure
    JAX, jit-able; flatten the points first (a video: time × height × width).
    """
    if labels.shape != predicted.shape:
        raise ValueError(
            "adjusted_rand_index: `labels` and `predicted` must have the same shape "
            f"(*batch, points); got {labels.shape} and {predicted.shape}."
        )
    for name, value in (("num_labels", num_labels), ("num_predicted", num_predicted)):
        if value < 1:
            raise ValueError(f"adjusted_rand_index: `{name}` must be ≥ 1, got {value}.")
    if ignore_label is not None and not 0 <= ignore_label < num_labels:
        raise ValueError(
            f"adjusted_rand_index: `ignore_label` must be in [0, num_labels = {num_labels}), "
            f"got {ignore_label}."
        )
    keep = jnp.ones(labels.shape, jnp.float32)
    if ignore_label is not None:
        keep = (labels != ignore_label).astype(jnp.float32)
    true = jax.nn.one_hot(labels, num_labels, dtype=jnp.float32) * keep[..., None]
    pred = jax.nn.one_hot(predicted, num_predicted, dtype=jnp.float32)
    counts = jnp.einsum("...pi,...pj->...ij", true, pred)  # the contingency table
    n = jnp.sum(counts, axis=(-2, -1))
    index = jnp.sum(_pairs(counts), axis=(-2, -1))
    rows = jnp.sum(_pairs(jnp.sum(counts, axis=-1)), axis=-1)
    cols = jnp.sum(_pairs(jnp.sum(counts, axis=-2)), axis=-1)
    total = _pairs(n)
    expected = rows * cols / jnp.maximum(total, 1.0)
    best = (rows + cols) / 2
    denominator = best - expected
    undefined = denominator == 0
    return jnp.where(undefined, 1.0, (index - expected) / jnp.where(undefined, 1.0, denominator))


def foreground_ari(
    segmentation: Int[Array, "*batch time height width"],
    masks: Float[Array, "*batch time slots height width"],
    *,
    num_objects: int,
) -> Float[Array, "*batch"]:
    """FG-ARI of a video's slot masks: each pixel goes to its largest slot, compared
    with the true `segmentation` (0 the background, `1…num_objects` the objects) over
    the foreground pixels of all frames together (as SAVi scores videos)."""
    if segmentation.shape[:-2] != masks.shape[:-3] or (segmentation.shape[-2:] != masks.shape[-2:]):
        raise ValueError(
            "foreground_ari: `masks` must be `segmentation`'s shape (*batch, time, height, "
            f"width) with a slots axis before height; got segmentation {segmentation.shape} "
            f"and masks {masks.shape}."
        )
    lead = segmentation.shape[:-3]
    predicted = jnp.argmax(masks, axis=-3)
    return adjusted_rand_index(
        segmentation.reshape(*lead, -1),
        predicted.reshape(*lead, -1),
        num_labels=num_objects + 1,
        num_predicted=masks.shape[-3],
        ignore_label=0,
    )
