"""k-means on the pool: k-means++ seeding and Lloyd iterations, one jitted program each.

Used for label-free pseudo-labels (``skmm_jax.head_gradients``): the clusters stand in
for the classes of a linear head whose per-sample gradients SkMM then matches.

Objective, for rows x_i ∈ R^d and centroids c_1..c_k:

    J(c, a) = Σ_i ‖x_i − c_{a_i}‖²,    a_i ∈ [0, k).

- **Seeding** (k-means++, Arthur & Vassilvitskii 2007): c_1 is a uniformly drawn row;
  c_j is row i drawn with probability D(x_i)² / Σ D², D(x) the distance to the nearest
  centroid chosen so far. Expected J within O(log k) of the optimum.
- **Lloyd**: alternately a_i = argmin_c ‖x_i − c‖² (ties to the lower index) and
  c_j = mean of its rows; an empty cluster keeps its centroid. J never increases; the loop
  stops when no assignment changes or after ``max_steps`` updates.

Both are pure functions of (key, x) with static k and step count, jitted once per shape.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from skmm_jax.common.checks import as_key, check_positive_int, check_rows
from skmm_jax.common.precision import HIGHEST

Array = jax.Array

__all__ = ["KMeans", "default_num_clusters", "kmeans", "kmeans_plus_plus", "lloyd"]


class KMeans(NamedTuple):
    """What `kmeans` / `lloyd` return (a pytree)."""

    centroids: Array  # [k, d] float32
    labels: Array  # [N] int32, the nearest centroid of each row
    inertia: Array  # [] J = Σ_i ‖x_i − c_{a_i}‖² at the returned centroids and labels
    steps: Array  # [] int32, centroid updates done


def default_num_clusters(num_samples: int, num_classes: int | None = None) -> int:
    """The k of label-free pseudo-labels: the number of classes when known, else
    round(√(N/20)) clipped to [2, 32] (N = 340 → 4, 1,000 → 7, 4,000 → 14, 20,480+ → 32):
    clusters of ~20 rows on average and about as many pseudo-classes as a small coreset
    can cover."""
    if num_classes is not None:
        return check_positive_int(num_classes, "num_classes")
    return int(min(32, max(2, round((num_samples / 20) ** 0.5))))


def _check(x: Array, k: int) -> Array:
    x = check_rows(x, name="x")
    check_positive_int(k, "k")
    if k < 2:
        raise ValueError(f"k must be at least 2 (one cluster labels every row alike), got {k}")
    if k > x.shape[0]:
        raise ValueError(f"k = {k} clusters need at least k rows, x has {x.shape[0]}")
    return x


def _sq_distances(x: Array, centroids: Array) -> Array:
    """[N, k] ‖x_i − c_j‖² (clamped at 0: the expanded form can round below it)."""
    cross = jnp.matmul(x, centroids.T, precision=HIGHEST)  # [N, k]
    sq = jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * cross + jnp.sum(centroids * centroids, axis=1)[None, :]
    return jnp.maximum(sq, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _plus_plus(key: Array, x: Array, k: int) -> Array:
    num = x.shape[0]
    keys = jax.random.split(key, k)
    first = jax.random.randint(keys[0], (), 0, num)
    centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(x[first])
    nearest = _sq_distances(x, x[first][None, :])[:, 0]  # [N] D(x)² to the chosen centroids

    def add(j: Array, state: tuple[Array, Array]) -> tuple[Array, Array]:
        centroids, nearest = state
        # P(i) ∝ D(x_i)²; all rows already at a centroid (duplicates): uniform.
        logits = jnp.where(jnp.sum(nearest) > 0, jnp.log(nearest), jnp.zeros_like(nearest))
        pick = jax.random.categorical(keys[j], logits)
        centroids = centroids.at[j].set(x[pick])
        return centroids, jnp.minimum(nearest, _sq_distances(x, x[pick][None, :])[:, 0])

    centroids, _ = jax.lax.fori_loop(1, k, add, (centroids, nearest))
    return centroids


def kmeans_plus_plus(key: Array, x: Array, k: int) -> Array:
    """k-means++ seeding: [k, d] float32 centroids, each a row of ``x``.

    Args:
      key: PRNG key (the first row and every later draw come from ``split(key, k)``).
      x: [N, d] floating rows.
      k: clusters, 2 ≤ k ≤ N.
    """
    x = _check(x, k)
    return _plus_plus(as_key(key), jnp.asarray(x, jnp.float32), k)


@functools.partial(jax.jit, static_argnames=("max_steps",))
def _lloyd(x: Array, centroids: Array, max_steps: int) -> KMeans:
    k = centroids.shape[0]

    def update(labels: Array, old: Array) -> Array:
        sums = jax.ops.segment_sum(x, labels, num_segments=k)  # [k, d]
        counts = jax.ops.segment_sum(jnp.ones_like(labels, jnp.float32), labels, num_segments=k)  # [k]
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], old)

    def cond(state: tuple[Array, Array, Array, Array]) -> Array:
        _, _, step, changed = state
        return (step < max_steps) & changed

    def body(state: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        centroids, labels, step, _ = state
        centroids = update(labels, centroids)
        new = jnp.argmin(_sq_distances(x, centroids), axis=1).astype(jnp.int32)
        return centroids, new, step + 1, jnp.any(new != labels)

    labels = jnp.argmin(_sq_distances(x, centroids), axis=1).astype(jnp.int32)
    centroids, labels, steps, _ = jax.lax.while_loop(cond, body, (centroids, labels, jnp.int32(0), jnp.bool_(True)))
    inertia = jnp.sum(jnp.take_along_axis(_sq_distances(x, centroids), labels[:, None], axis=1))
    return KMeans(centroids, labels, inertia, steps)


def lloyd(x: Array, centroids: Array, *, max_steps: int = 100) -> KMeans:
    """Lloyd's iterations from given centroids (see the module docstring).

    Args:
      x: [N, d] floating rows.
      centroids: [k, d] starting centroids (e.g. `kmeans_plus_plus`).
      max_steps: at most this many centroid updates (≥ 1).

    Returns:
      ``KMeans``: the labels are the nearest centroid of each row under the returned
      centroids (converged: a further update changes nothing; else after ``max_steps``).
    """
    centroids = check_rows(centroids, name="centroids")
    x = _check(x, centroids.shape[0])
    if centroids.shape[1] != x.shape[1]:
        raise ValueError(f"centroids have {centroids.shape[1]} columns, x has {x.shape[1]}")
    check_positive_int(max_steps, "max_steps")
    return _lloyd(jnp.asarray(x, jnp.float32), jnp.asarray(centroids, jnp.float32), max_steps)


def kmeans(key: Array, x: Array, k: int, *, max_steps: int = 100) -> KMeans:
    """k-means++ seeding from ``key``, then `lloyd`: k clusters of the rows of ``x``."""
    return lloyd(x, kmeans_plus_plus(key, x, k), max_steps=max_steps)
