"""SkMM step 2: the spectrum of the sketched gradients and the moment-matching objective.

From sketched per-sample gradients G̃ ∈ R^{N×m}:

    Σ̃ = G̃ᵀG̃ / N = V Λ Vᵀ,      B_ij = (g̃_iᵀ v_j)²  (N × m, computed once).

For weights p on the pool, (Bᵀp)_j = v_jᵀ G̃ᵀ diag(p) G̃ v_j is the moment the weighted
data carries along eigenvector j; uniform p = 1/N gives exactly λ_j. The relaxation of
(1/c_S) Σ̃ ≼ Σ̃_S to its diagonal in the V basis, with the multipliers γ_j eliminated in
closed form (γ_j = max(1/c_S, (Bᵀp)_j/λ_j)), is

    L(p) = Σ_j ω_j relu(κ λ_j − (Bᵀp)_j)²,     κ = 1/c_S  (the required coverage).

Everything here is normalised by λ_max (B and λ divided by it) so that learning rates,
tolerances and losses do not depend on the scale of the gradients — the authors' code
needed learning rates from 1e-7 to 1e-2 depending on the data. Directions with
λ_j ≤ rank_tol·λ_max carry no moment (numerical rank deficiency, e.g. m > N) and are
masked out of the objective and of the coverage.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
HIGHEST = jax.lax.Precision.HIGHEST

WEIGHTINGS = ("absolute", "relative")


class Spectrum(NamedTuple):
    """Eigen-structure of Σ̃ in units of its largest eigenvalue.

    Attributes:
      eigenvalues: [m] λ_j / λ_max, descending, ≥ 0.
      eigenvectors: [m, m] V, column j is v_j.
      moments: [N, m] B_ij = (g̃_iᵀ v_j)² / λ_max; its column means are the eigenvalues.
      active: [m] bool, λ_j > rank_tol (directions that carry moment).
      scale: [] λ_max of Σ̃ (in the units of the input).
    """

    eigenvalues: Array
    eigenvectors: Array
    moments: Array
    active: Array
    scale: Array


def check_sketched(sketched: Array) -> None:
    """ValueError unless ``sketched`` is a 2-D floating [N, m] array with N, m ≥ 1."""
    shape = getattr(sketched, "shape", None)
    dtype = getattr(sketched, "dtype", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"sketched gradients must be a 2-D [N, m] array, got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"sketched gradients must have N >= 1 rows and m >= 1 columns, got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"sketched gradients must be floating point, got dtype {dtype}")


@jax.jit
def _spectrum(sketched: Array, rank_tol: Array) -> Spectrum:
    g = sketched.astype(jnp.float32)
    num = jnp.float32(g.shape[0])
    cov = jnp.matmul(g.T, g, precision=HIGHEST) / num  # [m, m]; an all-reduce when N is sharded
    lam, vecs = jnp.linalg.eigh(cov)  # ascending
    lam, vecs = jnp.maximum(lam[::-1], 0.0), vecs[:, ::-1]
    scale = jnp.maximum(lam[0], jnp.finfo(jnp.float32).tiny)
    proj = jnp.matmul(g, vecs, precision=HIGHEST)  # [N, m], rows stay where N is sharded
    return Spectrum(lam / scale, vecs, proj * proj / scale, lam > rank_tol * scale, scale)


def sketched_spectrum(sketched: Array, *, rank_tol: float = 1e-6) -> Spectrum:
    """Eigendecomposition of Σ̃ = G̃ᵀG̃/N and the moment matrix B, normalised by λ_max.

    Cost O(N m² + m³); memory O(N m). Works on N-sharded input (the Gram matrix is
    all-reduced by XLA, B stays sharded).

    Args:
      sketched: [N, m] sketched per-sample gradients G̃ (or features).
      rank_tol: directions with λ_j ≤ rank_tol · λ_max are inactive.
    """
    check_sketched(sketched)
    return _spectrum(jnp.asarray(sketched), jnp.float32(rank_tol))


def direction_weights(spectrum: Spectrum, weighting: str) -> Array:
    """ω_j of the objective: "absolute" (1, the paper's) or "relative" (1/λ_j²: every
    direction's shortfall counted as a fraction of its own eigenvalue). 0 if inactive."""
    if weighting == "absolute":
        weights = jnp.ones_like(spectrum.eigenvalues)
    elif weighting == "relative":
        safe = jnp.where(spectrum.active, spectrum.eigenvalues, 1.0)
        weights = 1.0 / (safe * safe)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return jnp.where(spectrum.active, weights, 0.0)


def weighted_moments(moments: Array, p: Array) -> Array:
    """(Bᵀp)_j for p [N] → [m]."""
    return jnp.matmul(p, moments, precision=HIGHEST)


def moment_matching_loss(p: Array, spectrum: Spectrum, coverage: Array, weights: Array) -> Array:
    """L(p) = Σ_j ω_j relu(κ λ_j − (Bᵀp)_j)² with κ = ``coverage`` = 1/c_S."""
    shortfall = jax.nn.relu(coverage * spectrum.eigenvalues - weighted_moments(spectrum.moments, p))
    return jnp.sum(weights * shortfall * shortfall)


def direction_coverage(p: Array, spectrum: Spectrum) -> Array:
    """(Bᵀp)_j / λ_j per direction ([m]; +inf for inactive ones). For the indicator
    p = 1_S/|S| this is v_jᵀ Σ̃_S v_j / λ_j, the coverage of a discrete subset."""
    lam = jnp.where(spectrum.active, spectrum.eigenvalues, 1.0)
    return jnp.where(spectrum.active, weighted_moments(spectrum.moments, p) / lam, jnp.inf)


def subset_weights(indices: Array, num_samples: int) -> Array:
    """The uniform weights 1_S/|S| of a subset as an [N] vector."""
    indices = jnp.asarray(indices)
    return jnp.zeros((num_samples,), jnp.float32).at[indices].add(1.0 / indices.shape[0])


def subset_coverage(indices: Array, spectrum: Spectrum) -> Array:
    """min_j (v_jᵀ Σ̃_S v_j)/λ_j over active directions for the subset S = ``indices``:
    the largest κ with κ Σ̃ ≼ Σ̃_S on the diagonal of the V basis (1/c_S achieved)."""
    return jnp.min(direction_coverage(subset_weights(indices, spectrum.moments.shape[0]), spectrum))
