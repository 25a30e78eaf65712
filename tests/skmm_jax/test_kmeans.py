"""k-means: Lloyd against a float64 NumPy Lloyd from the same seeding, k-means++ invariants, bad k."""

import jax
import numpy as np
import pytest

from skmm_jax.kmeans import default_num_clusters, kmeans, kmeans_plus_plus, lloyd


def blobs(seed=0, per=(30, 20, 10), dim=5, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((len(per), dim))
    x = np.concatenate([c + spread * rng.standard_normal((p, dim)) for c, p in zip(centres, per)])
    truth = np.concatenate([np.full(p, i) for i, p in enumerate(per)])
    return x.astype(np.float32), truth


def numpy_lloyd(x, centroids, max_steps):
    """Textbook Lloyd in float64: assign, update (empty clusters keep their centroid), stop
    when no assignment changes."""
    x, c = x.astype(np.float64), centroids.astype(np.float64)
    labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    steps = 0
    while steps < max_steps:
        for j in range(len(c)):
            if np.any(labels == j):
                c[j] = x[labels == j].mean(axis=0)
        new = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        steps += 1
        if np.array_equal(new, labels):
            break
        labels = new
    return c, labels, steps


def test_lloyd_matches_numpy_from_the_same_seeding():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, 4)).astype(np.float32)  # no cluster structure: several updates needed
    init = np.asarray(kmeans_plus_plus(jax.random.key(0), x, 6))
    ours = lloyd(x, init, max_steps=50)
    ref_c, ref_labels, ref_steps = numpy_lloyd(x, init, 50)
    assert int(ours.steps) == ref_steps > 1
    np.testing.assert_array_equal(np.asarray(ours.labels), ref_labels)
    np.testing.assert_allclose(np.asarray(ours.centroids), ref_c, atol=1e-5)
    inertia = ((x - ref_c[ref_labels]) ** 2).sum()
    np.testing.assert_allclose(float(ours.inertia), inertia, rtol=1e-5)
    capped = lloyd(x, init, max_steps=1)  # one update, then stop
    c1, l1, _ = numpy_lloyd(x, init, 1)
    assert int(capped.steps) == 1
    np.testing.assert_allclose(np.asarray(capped.centroids), c1, atol=1e-5)


def test_seeding_picks_rows_and_kmeans_recovers_separated_blobs():
    x, truth = blobs()
    init = np.asarray(kmeans_plus_plus(jax.random.key(1), x, 3))
    assert all(np.any(np.all(x == row, axis=1)) for row in init)  # every centroid is a row
    # D² sampling puts the three seeds in three different blobs
    assert len({int(truth[np.argmax(np.all(x == row, axis=1))]) for row in init}) == 3
    result = kmeans(jax.random.key(1), x, 3)
    labels = np.asarray(result.labels)
    for blob in range(3):  # each blob is one cluster, and the clusters differ
        assert len(np.unique(labels[truth == blob])) == 1
    assert len(np.unique(labels)) == 3
    same = kmeans(jax.random.key(1), x, 3)
    np.testing.assert_array_equal(np.asarray(same.labels), labels)  # a pure function of the key


def test_bad_k_raises():
    x, _ = blobs()
    with pytest.raises(ValueError, match="k must be at least 2"):
        kmeans(jax.random.key(0), x, 1)
    with pytest.raises(ValueError, match="need at least k rows"):
        kmeans(jax.random.key(0), x[:3], 4)
    with pytest.raises(ValueError, match="k must be a positive int"):
        kmeans(jax.random.key(0), x, 2.0)
    with pytest.raises(ValueError, match="centroids have 4 columns"):
        lloyd(x, np.zeros((3, 4), np.float32))


def test_default_number_of_clusters():
    assert default_num_clusters(4000, 7) == 7  # the classes, when known
    assert [default_num_clusters(n) for n in (10, 340, 1000, 4000, 10**6)] == [2, 4, 7, 14, 32]
