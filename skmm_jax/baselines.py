"""Data-selection baselines that SkMM is compared against.

Every selector function has one signature::

    selector(key, features, n, **keyword_only_options) -> int32 [n]

- ``key``: a typed PRNG key (``jax.random.key(seed)``). Deterministic selectors
  ignore it (their docstrings say so); the others draw every random choice from it,
  so the same key always gives the same subset.
- ``features``: ``[N, d]`` floating array, one row per sample (features or sketched
  per-sample gradients). Computation is in float32. No selector forms an N×N
  matrix; greedy steps cost O(N·d).
- ``n``: static Python int, ``0 < n <= N``.
- Returns ``n`` distinct indices into the rows of ``features``, in selection order.

Each selector is a thin Python wrapper that validates its arguments and calls a
jitted core (``n`` static), so repeated calls hit the compile cache and a selector
can be called inside an outer ``jax.jit`` as long as ``n`` is static there too.
Greedy selectors loop over picks with ``lax.fori_loop`` on a fixed-shape state (a
boolean ``taken [N]`` mask), so tracing cost does not grow with ``n``.

``BASELINES`` maps the CLI's names to registry entries (``skmm_jax.methods``: the
selection contract, returning ``(indices, diagnostics)``) built from these functions.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.common.checks import check_rows
from skmm_jax.common.precision import HIGHEST
from skmm_jax.methods import SelectionMethod
from skmm_jax.sampling import check_subset_size, sample_without_replacement

Array = jax.Array

_EPS = float(jnp.finfo(jnp.float32).eps)

__all__ = [
    "BASELINES",
    "adaptive_sampling",
    "covering_radius",
    "herding",
    "kcenter_greedy",
    "leverage_scores",
    "ridge_leverage",
    "ridge_leverage_scores",
    "truncated_leverage",
    "uniform",
]


# ----------------------------------------------------------------------------- checks


def _check_rank(rank, features: Array) -> None:
    """Raises unless ``rank`` is None or a Python int in [1, min(N, d)]."""
    if rank is None:
        return
    max_rank = min(features.shape)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= max_rank:
        raise ValueError(f"rank must be None or an int in [1, min(N, d) = {max_rank}], got {rank!r}")


def _check_alpha(alpha) -> None:
    """Raises unless ``alpha`` is a positive finite scalar (traced values are not checked)."""
    if jnp.ndim(alpha) != 0:
        raise ValueError(f"alpha must be a scalar, got shape {jnp.shape(alpha)}")
    try:
        value = float(alpha)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return  # traced under an outer jit: cannot be inspected here
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"alpha must be a positive finite ridge parameter, got {alpha!r}")


def _as_float32(features: Array) -> Array:
    return features.astype(jnp.float32)


def _row_sq_dist(features: Array, point: Array) -> Array:
    """‖x_i − p‖² for every row, as a difference rather than ‖x‖² + ‖p‖² − 2x·p.

    The expanded form cancels catastrophically for nearby points in float32; the
    difference form fuses into one O(N·d) reduction and is exact up to rounding.
    """
    return jnp.sum(jnp.square(features - point[None, :]), axis=1)


# ----------------------------------------------------------------------------- uniform


@partial(jax.jit, static_argnames=("num_samples", "n"))
def _uniform(key: Array, num_samples: int, n: int) -> Array:
    return sample_without_replacement(key, jnp.ones((num_samples,), jnp.float32), n)


def uniform(key: Array, features: Array, n: int) -> Array:
    """n rows uniformly at random without replacement.

    Args:
      key: PRNG key.
      features: [N, d] floating array; only N is used.
      n: static subset size, 0 < n <= N.

    Returns:
      [n] int32 distinct indices, in draw order.
    """
    features = jnp.asarray(check_rows(features))
    check_subset_size(n, features.shape[0])
    return _uniform(key, features.shape[0], n)


# ----------------------------------------------------------------------------- herding


@partial(jax.jit, static_argnames=("n",))
def _herding(features: Array, n: int) -> Array:
    # Centring (c_i = x_i − μ) turns the rule into "keep the running sum of selected
    # c's small": ‖μ − (s + x_i)/(t+1)‖ = ‖Σ_{j ∈ S ∪ {i}} c_j‖ / (t+1). It also keeps
    # float32 sums accurate when the features have a large common offset.
    centered = _as_float32(features)
    centered = centered - jnp.mean(centered, axis=0)[None, :]
    num_samples = centered.shape[0]

    def pick(t, state):
        taken, centered_sum, indices = state
        score = _row_sq_dist(centered, -centered_sum)  # ‖s + c_i‖²
        i = jnp.argmin(jnp.where(taken, jnp.inf, score)).astype(jnp.int32)
        return taken.at[i].set(True), centered_sum + centered[i], indices.at[t].set(i)

    state = (jnp.zeros((num_samples,), bool), jnp.zeros(centered.shape[1:], jnp.float32), jnp.zeros((n,), jnp.int32))
    return jax.lax.fori_loop(0, n, pick, state)[2]


def herding(key: Array, features: Array, n: int) -> Array:
    """Greedy feature-mean matching (kernel herding; Welling 2009, DeepCore "Herding").

    With μ the mean of all rows and s the sum of the t rows selected so far, step t
    picks the unselected i minimising ‖μ − (s + x_i)/(t+1)‖, so the mean of the
    selected rows tracks μ. The first pick is the row nearest μ.

    Args:
      key: ignored (the rule is deterministic; ties go to the lowest index). Kept for
        the common signature.
      features: [N, d] floating array.
      n: static subset size, 0 < n <= N.

    Returns:
      [n] int32 distinct indices, in selection order.
    """
    del key
    features = jnp.asarray(check_rows(features))
    check_subset_size(n, features.shape[0])
    return _herding(features, n)


# ----------------------------------------------------------------------------- k-center


@partial(jax.jit, static_argnames=("n",))
def _kcenter_greedy(key: Array, features: Array, n: int) -> Array:
    features = _as_float32(features)
    num_samples = features.shape[0]
    first = jax.random.randint(key, (), 0, num_samples, jnp.int32)

    def pick(t, state):
        taken, min_sq_dist, indices = state
        # -1 < every real squared distance, so duplicates of a center (distance 0)
        # still win over rows already taken.
        i = jnp.argmax(jnp.where(taken, -1.0, min_sq_dist)).astype(jnp.int32)
        min_sq_dist = jnp.minimum(min_sq_dist, _row_sq_dist(features, features[i]))
        return taken.at[i].set(True), min_sq_dist, indices.at[t].set(i)

    state = (
        jnp.zeros((num_samples,), bool).at[first].set(True),
        _row_sq_dist(features, features[first]),
        jnp.zeros((n,), jnp.int32).at[0].set(first),
    )
    return jax.lax.fori_loop(1, n, pick, state)[2]


def kcenter_greedy(key: Array, features: Array, n: int) -> Array:
    """Greedy k-center / farthest-point traversal (Gonzalez 1985; Sener & Savarese 2018).

    The first center is uniform at random; each next one is the row farthest from
    its nearest center so far, argmax_i min_{j ∈ S} ‖x_i − x_j‖. Its covering radius
    is at most twice the optimal k-center radius. Keeps the [N] nearest-center
    squared distances, so each step is O(N·d).

    Args:
      key: PRNG key for the first center.
      features: [N, d] floating array.
      n: static subset size, 0 < n <= N.

    Returns:
      [n] int32 distinct indices, in selection order.
    """
    features = jnp.asarray(check_rows(features))
    check_subset_size(n, features.shape[0])
    return _kcenter_greedy(key, features, n)


@partial(jax.jit, static_argnames=("rows_per_block",))
def _covering_radius(features: Array, indices: Array, rows_per_block: int) -> Array:
    features = _as_float32(features)
    # Distances are shift-invariant; centring shrinks the norms the expanded form
    # ‖a‖² + ‖b‖² − 2a·b has to cancel.
    features = features - jnp.mean(features, axis=0)[None, :]
    centers = features[indices]
    center_sq_norm = jnp.sum(jnp.square(centers), axis=1)

    def nearest_sq_dist(row):
        # Under lax.map's batching this is one [B, d] × [d, n] matmul per block of rows.
        cross = jnp.matmul(centers, row, precision=HIGHEST)
        return jnp.min(jnp.sum(jnp.square(row)) + center_sq_norm - 2.0 * cross)

    sq_dist = jax.lax.map(nearest_sq_dist, features, batch_size=rows_per_block)
    return jnp.sqrt(jnp.maximum(jnp.max(sq_dist), 0.0))


def covering_radius(features: Array, indices: Array) -> Array:
    """Covering radius max_i min_{j ∈ S} ‖x_i − x_j‖ of the selected rows S.

    Computed over blocks of rows so at most a [block, |S|] distance matrix exists at
    once (block ≈ 2²² / |S| rows).

    Args:
      features: [N, d] floating array.
      indices: [k] integer indices of the selected rows, k >= 1.

    Returns:
      float32 scalar array (0-d, so it also works under ``jax.jit``).
    """
    features = jnp.asarray(check_rows(features))
    indices = jnp.asarray(indices)
    if indices.ndim != 1 or indices.shape[0] < 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices must be a non-empty 1-D integer array, got shape {indices.shape} {indices.dtype}")
    rows_per_block = max(1, min(features.shape[0], (1 << 22) // indices.shape[0]))
    return _covering_radius(features, indices, rows_per_block)


# ----------------------------------------------------------------------------- adaptive


@partial(jax.jit, static_argnames=("n",))
def _adaptive_sampling(key: Array, features: Array, n: int) -> Array:
    features = _as_float32(features)
    num_samples, dim = features.shape
    max_rank = min(n, dim)
    residual_sq = jnp.sum(jnp.square(features), axis=1)
    # Downdating d_i -= (x_i·q)² leaves rounding noise of order eps·‖x_i‖² per row
    # once the span is exhausted (measured: 1e-4 to 1e-2 of this tolerance on rank-deficient
    # Gaussian data). Only directions holding < 4·d·eps of the total mass are lost.
    mass_tol = 4.0 * dim * _EPS * jnp.sum(residual_sq)

    def project_out(basis, x):
        return x - jnp.matmul(basis, jnp.matmul(x, basis, precision=HIGHEST), precision=HIGHEST)

    def pick(t, state):
        taken, residual_sq, basis, rank, indices = state
        untaken = ~taken
        residual_weights = jnp.where(untaken, jnp.maximum(residual_sq, 0.0), 0.0)
        use_residual = (jnp.sum(residual_weights) > mass_tol) & (rank < max_rank)
        weights = jnp.where(use_residual, residual_weights, untaken.astype(jnp.float32))
        i = sample_without_replacement(jax.random.fold_in(key, t), weights, 1)[0]

        # Two Gram–Schmidt passes ("twice is enough") keep the basis orthonormal to
        # working precision even when x_i is nearly in its span.
        x = features[i]
        residual = project_out(basis, project_out(basis, x))
        residual_norm = jnp.linalg.norm(residual)
        # A residual at rounding level relative to ‖x_i‖ has no reliable direction:
        # still select the row, but don't extend the basis with noise.
        extend = use_residual & (residual_norm > 64.0 * _EPS * jnp.linalg.norm(x))
        direction = jnp.where(extend, residual / jnp.where(extend, residual_norm, 1.0), 0.0)
        basis = jnp.where(extend, basis.at[:, jnp.minimum(rank, max_rank - 1)].set(direction), basis)
        residual_sq = residual_sq - jnp.square(jnp.matmul(features, direction, precision=HIGHEST))
        return taken.at[i].set(True), residual_sq, basis, rank + extend.astype(jnp.int32), indices.at[t].set(i)

    state = (
        jnp.zeros((num_samples,), bool),
        residual_sq,
        jnp.zeros((dim, max_rank), jnp.float32),
        jnp.zeros((), jnp.int32),
        jnp.zeros((n,), jnp.int32),
    )
    return jax.lax.fori_loop(0, n, pick, state)[4]


def adaptive_sampling(key: Array, features: Array, n: int) -> Array:
    """Adaptive sampling / randomly pivoted QR (Deshpande & Vempala 2006; Chen, Epperly,
    Tropp & Webber 2022, "randomly pivoted Cholesky").

    Keeps an orthonormal basis Q of the selected rows' span and the squared residuals
    d_i = ‖(I − QQᵀ) x_i‖². Each step draws an unselected i with probability ∝ d_i,
    appends the normalised residual q = (I − QQᵀ)x_i / ‖·‖ to Q and downdates
    d ← d − (Xq)², O(N·d) per step. The first pick is thus ∝ ‖x_i‖². Once the
    residual mass of the unselected rows is exhausted (at rounding level: n exceeds
    the rank) the remaining picks are uniform among the unselected rows.

    Args:
      key: PRNG key; step t uses ``fold_in(key, t)``.
      features: [N, d] floating array.
      n: static subset size, 0 < n <= N.

    Returns:
      [n] int32 distinct indices, in selection order.
    """
    features = jnp.asarray(check_rows(features))
    check_subset_size(n, features.shape[0])
    return _adaptive_sampling(key, features, n)


# ----------------------------------------------------------------------------- leverage


def _left_singular(features: Array) -> tuple[Array, Array]:
    """Thin SVD's U [N, m] and σ [m] (m = min(N, d)) via QR, then the SVD of R.

    X = QR, R = U_R Σ Vᵀ gives U = Q U_R. Unlike the eigendecomposition of XᵀX this
    does not square the condition number, so small singular values stay accurate.
    """
    q, r = jnp.linalg.qr(_as_float32(features), mode="reduced")
    u_r, singular_values, _ = jnp.linalg.svd(r, full_matrices=False)
    return jnp.matmul(q, u_r, precision=HIGHEST), singular_values


def _numerical_rank(singular_values: Array, shape: tuple[int, int]) -> Array:
    """Count of σ_j > max(N, d)·eps·σ_max (numpy's ``matrix_rank`` default)."""
    tol = max(shape) * _EPS * singular_values[0]
    return jnp.sum(singular_values > tol).astype(jnp.int32)


@partial(jax.jit, static_argnames=("rank_cap",))
def _leverage_scores(features: Array, rank_cap: int) -> Array:
    u, singular_values = _left_singular(features)
    rank = jnp.minimum(rank_cap, _numerical_rank(singular_values, features.shape))
    keep = jnp.arange(singular_values.shape[0]) < rank
    # Rounding can push a row orthogonal to all others a hair above 1.
    return jnp.clip(jnp.sum(jnp.where(keep[None, :], jnp.square(u), 0.0), axis=1), 0.0, 1.0)


def leverage_scores(features: Array, rank: int | None = None) -> Array:
    """Rank-k leverage scores ℓ_i = ‖U_{i,:k}‖², U from the thin SVD X = UΣVᵀ.

    k = min(``rank``, numerical rank), the numerical rank counting σ_j >
    max(N, d)·eps·σ_max; with ``rank=None``, k is the numerical rank. Each ℓ_i lies in
    [0, 1] and Σ ℓ_i = k: ℓ_i is how much of the top-k row space row i alone spans.

    Args:
      features: [N, d] floating array.
      rank: None or int in [1, min(N, d)].

    Returns:
      [N] float32 scores.
    """
    features = jnp.asarray(check_rows(features))
    _check_rank(rank, features)
    return _leverage_scores(features, min(features.shape) if rank is None else rank)


@partial(jax.jit, static_argnames=("n", "rank_cap"))
def _truncated_leverage(key: Array, features: Array, n: int, rank_cap: int) -> Array:
    return sample_without_replacement(key, _leverage_scores(features, rank_cap), n)


def truncated_leverage(key: Array, features: Array, n: int, *, rank: int | None = None) -> Array:
    """n rows drawn without replacement with probability ∝ rank-k leverage scores.

    See ``leverage_scores``. The default k = min(n, numerical rank): n samples can
    resolve at most n directions, so leverage outside the top n is not rewarded.
    Rows with zero leverage come only after every positive one, in random order.

    Args:
      key: PRNG key.
      features: [N, d] floating array.
      n: static subset size, 0 < n <= N.
      rank: None or int in [1, min(N, d)], the truncation k (capped at the numerical
        rank).

    Returns:
      [n] int32 distinct indices, in draw order.
    """
    features = jnp.asarray(check_rows(features))
    check_subset_size(n, features.shape[0])
    _check_rank(rank, features)
    rank_cap = min(n, *features.shape) if rank is None else rank
    return _truncated_leverage(key, features, n, rank_cap)


@jax.jit
def _ridge_leverage_scores(features: Array, alpha: Array) -> Array:
    u, singular_values = _left_singular(features)
    sq = jnp.square(singular_values)
    shrink = sq / (sq + jnp.asarray(alpha, jnp.float32))
    return jnp.clip(jnp.sum(jnp.square(u) * shrink[None, :], axis=1), 0.0, 1.0)


def ridge_leverage_scores(features: Array, alpha) -> Array:
    """Ridge leverage scores ℓ_i(α) = x_iᵀ(XᵀX + αI)⁻¹x_i = Σ_j U_ij² σ_j²/(σ_j² + α).

    Each lies in [0, 1]; their sum is the effective dimension d_α = Σ σ_j²/(σ_j² + α)
    ≤ rank, and ℓ_i(α) → the full-rank leverage as α → 0.

    Args:
      features: [N, d] floating array.
      alpha: ridge parameter α > 0 (Python float or float32 scalar).

    Returns:
      [N] float32 scores.
    """
    features = jnp.asarray(check_rows(features))
    _check_alpha(alpha)
    return _ridge_leverage_scores(features, jnp.asarray(alpha, jnp.float32))


@partial(jax.jit, static_argnames=("n",))
def _ridge_leverage(key: Array, features: Array, n: int, alpha: Array | None) -> Array:
    if alpha is None:
        alpha = jnp.sum(jnp.square(_as_float32(features))) / n
    return sample_without_replacement(key, _ridge_leverage_scores(features, alpha), n)


def ridge_leverage(key: Array, features: Array, n: int, *, alpha=None) -> Array:
    """n rows drawn without replacement with probability ∝ ridge leverage scores.

    Default α = ‖X‖_F² / n. Since σ²/(σ² + α) ≤ σ²/α, the effective dimension then
    obeys d_α ≤ Σ σ_j² / α = n (and d_α ≤ rank): the scores spread their mass over
    at most about n directions, the number a budget of n samples can capture
    (ridge-leverage sampling needs O(d_α log d_α) rows; Alaoui & Mahoney 2015).

    Args:
      key: PRNG key.
      features: [N, d] floating array.
      n: static subset size, 0 < n <= N.
      alpha: None (the default above) or ridge parameter α > 0.

    Returns:
      [n] int32 distinct indices, in draw order.
    """
    features = jnp.asarray(check_rows(features))
    check_subset_size(n, features.shape[0])
    if alpha is not None:
        _check_alpha(alpha)
        alpha = jnp.asarray(alpha, jnp.float32)
    return _ridge_leverage(key, features, n, alpha)


# ----------------------------------------------------------------------------- registry

BASELINES: dict[str, SelectionMethod] = {
    name: SelectionMethod.from_indices(name, fn)
    for name, fn in (
        ("uniform", uniform),
        ("herding", herding),
        ("kcenter", kcenter_greedy),
        ("adaptive", adaptive_sampling),
        ("leverage", truncated_leverage),
        ("ridge-leverage", ridge_leverage),
    )
}
"""The label-free baselines by command-line name, as selection-contract entries."""
