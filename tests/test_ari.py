"""The adjusted Rand index against scikit-learn, and FG-ARI of slot masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError
from sklearn.metrics import adjusted_rand_score

from eqvid.metrics import adjusted_rand_index, foreground_ari


def test_ari_matches_scikit_learn_on_random_segmentations():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (6, 200))
    predicted = np.where(rng.random((6, 200)) < 0.6, labels + 1, rng.integers(0, 5, (6, 200)))
    got = jax.jit(lambda a, b: adjusted_rand_index(a, b, num_labels=4, num_predicted=5))(
        jnp.asarray(labels), jnp.asarray(predicted)
    )
    want = [adjusted_rand_score(a, b) for a, b in zip(labels, predicted)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert min(want) > 0.2 and max(want) < 0.9  # neither trivial case


def test_ignored_label_is_left_out():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    predicted = rng.integers(0, 4, 300)
    got = adjusted_rand_index(
        jnp.asarray(labels), jnp.asarray(predicted), num_labels=3, num_predicted=4, ignore_label=0
    )
    fg = labels != 0
    np.testing.assert_allclose(
        float(got), adjusted_rand_score(labels[fg], predicted[fg]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "labels, predicted",
    [
        ([1, 1, 1, 1], [0, 0, 0, 0]),  # one group each side
        ([0, 1, 2, 3], [3, 2, 1, 0]),  # every point its own group
        ([2], [1]),  # one point
        ([0, 0, 1, 1], [1, 1, 0, 0]),  # a renaming
    ],
)
def test_edge_cases_as_scikit_learn(labels, predicted):
    got = adjusted_rand_index(
        jnp.asarray(labels), jnp.asarray(predicted), num_labels=4, num_predicted=4
    )
    assert float(got) == pytest.approx(adjusted_rand_score(labels, predicted))


def test_foreground_ari_of_slot_masks():
    # Two objects over two frames; slot 2 takes object 1, slot 0 object 2 and the
    # background, slot 1 nothing: a perfect foreground split whatever the background.
    seg = np.zeros((2, 4, 4), np.int32)
    seg[:, :2, :2], seg[:, 2:, 2:] = 1, 2
    masks = np.full((2, 3, 4, 4), 0.1, np.float32)
    masks[:, 2][seg == 1] = 0.8
    masks[:, 0][seg != 1] = 0.8
    got = foreground_ari(jnp.asarray(seg)[None], jnp.asarray(masks)[None], num_objects=2)
    assert got.shape == (1,) and float(got[0]) == pytest.approx(1.0)
    # Both objects in one slot: no better than chance.
    merged = np.where(seg[:, None] > 0, np.array([0.1, 0.8, 0.1])[None, :, None, None], 0.3)
    got = foreground_ari(jnp.asarray(seg), jnp.asarray(merged, jnp.float32), num_objects=2)
    assert float(got) == pytest.approx(0.0)


def test_errors_name_the_arguments():
    with pytest.raises((ValueError, TypeCheckError), match="labels"):
        adjusted_rand_index(jnp.zeros(4, int), jnp.zeros(5, int), num_labels=2, num_predicted=2)
    with pytest.raises(ValueError, match="ignore_label"):
        adjusted_rand_index(
            jnp.zeros(4, int), jnp.zeros(4, int), num_labels=2, num_predicted=2, ignore_label=2
        )
    with pytest.raises((ValueError, TypeCheckError), match="masks"):
        foreground_ari(jnp.zeros((2, 4, 4), int), jnp.zeros((2, 3, 4, 5)), num_objects=2)
