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

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from skmm_jax.common.checks import check_rows
from skmm_jax.common.precision import HIGHEST

Array = jax.Array

WEIGHTINGS = ("absolute", "relative")
PREPROCESSING = ("none", "center", "standardize", "unit", "center-unit", "standardize-unit")


class Spectrum(NamedTuple):
    """Eigen-structure of Σ̃ in units of its largest eigenvalue.

    Attributes:
      eigenvalues: [m] λ_j / λ_max, descending, ≥ 0.
      eigenvectors: [m, m] V, column j is v_j.
      active: [m] bool, λ_j > rank_tol (directions that carry moment).
      scale: [] λ_max of Σ̃ (in the units of the input).
      projections: [N, m] Z_ij = g̃_iᵀ v_j / √λ_max: the sketched gradients in the
        eigenbasis, with their signs, for the full-matrix quantities (Σ̃_S in the V basis
        is Z_SᵀZ_S/|S|).
      moments: [N, m] B = Z² (B_ij = (g̃_iᵀ v_j)² / λ_max; its column means are the
        eigenvalues), computed where it is used rather than stored: the spectrum holds
        one [N, m] array, not two, and XLA fuses the square into its consumers.
    """

    eigenvalues: Array
    eigenvectors: Array
    active: Array
    scale: Array
    projections: Array

    @property
    def moments(self) -> Array:
        return self.projections * self.projections


def standardization(x: Array) -> tuple[Array, Array]:
    """(μ, σ) of the columns of x [N, D]; σ = 1 where std ≤ 1e-6 (1 + |μ|) (constant columns:
    their float32 rounding noise is not blown up to O(1))."""
    mean = jnp.mean(x, axis=0)
    std = jnp.std(x, axis=0)
    scale = jnp.where(std > 1e-6 * (1.0 + jnp.abs(mean)), std, 1.0)
    return mean, scale


@functools.partial(jax.jit, static_argnames=("kind",))
def preprocess_pool(features: Array, kind: str) -> Array:
    """The geometry SkMM matches moments in: [N, d] → [N, d] float32.

    - "none": as given (Σ̃ = GᵀG/N, the uncentred second moment of the theory);
    - "center": columns minus their pool mean (the covariance: the shared mean direction,
      which every sample carries, no longer claims the top eigenvector);
    - "standardize": centred columns over their pool standard deviation (constant
      columns keep scale 1): no feature dominates Σ̃ by its units;
    - "unit" / "center-unit" / "standardize-unit": the same, then every row scaled to unit
      length, so a sample's norm buys it no leverage: the greedy draw then picks samples
      for the directions they point in, not for being extreme (see
      ``benchmarks/selection_suite.py``: on raw features the greedy fills small coresets
      with the tail of one class).

    Column statistics are reductions over N, so N-sharded input stays sharded.
    """
    if kind not in PREPROCESSING:
        raise ValueError(f"preprocess must be one of {PREPROCESSING}, got {kind!r}")
    x = features.astype(jnp.float32)
    if kind.startswith("standardize"):
        mean, scale = standardization(x)
        x = (x - mean[None, :]) / scale[None, :]
    elif kind.startswith("center"):
        x = x - jnp.mean(x, axis=0, keepdims=True)
    if kind.endswith("unit"):
        x = x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True)), 1e-12)
    return x


@jax.jit
def _spectrum(sketched: Array, rank_tol: Array) -> Spectrum:
    g = sketched.astype(jnp.float32)
    num = jnp.float32(g.shape[0])
    cov = jnp.matmul(g.T, g, precision=HIGHEST) / num  # [m, m]; an all-reduce when N is sharded
    lam, vecs = jnp.linalg.eigh(cov)  # ascending
    lam, vecs = jnp.maximum(lam[::-1], 0.0), vecs[:, ::-1]
    scale = jnp.maximum(lam[0], jnp.finfo(jnp.float32).tiny)
    proj = jnp.matmul(g, vecs, precision=HIGHEST) / jnp.sqrt(scale)  # [N, m], rows stay where N is sharded
    return Spectrum(lam / scale, vecs, lam > rank_tol * scale, scale, proj)


def sketched_spectrum(sketched: Array, *, rank_tol: float = 1e-6) -> Spectrum:
    """Eigendecomposition of Σ̃ = G̃ᵀG̃/N and the projections Z (B = Z²), normalised by λ_max.

    Cost O(N m² + m³); memory: one [N, m] float32 array (Z) besides the input. Works on
    N-sharded input (the Gram matrix is all-reduced by XLA, Z stays sharded).

    Args:
      sketched: [N, m] sketched per-sample gradients G̃ (or features).
      rank_tol: directions with λ_j ≤ rank_tol · λ_max are inactive.
    """
    check_rows(sketched, name="sketched gradients", width="m")
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


def shortfall_loss(carried: Array, target: Array, weights: Array) -> Array:
    """Σ_j ω_j relu(t_j − c_j)² over the last axis: carried moments c [..., m] → [...].

    The one formula behind the relaxation's objective (c = Bᵀp, `moment_matching_loss`)
    and the discrete draws (c = the coreset's moment sum / n, for many candidate
    subsets at once in ``skmm_jax.draw``).
    """
    shortfall = jax.nn.relu(target - carried)
    return jnp.sum(weights * shortfall * shortfall, axis=-1)


def moment_matching_loss(p: Array, spectrum: Spectrum, coverage: Array, weights: Array) -> Array:
    """L(p) = Σ_j ω_j relu(κ λ_j − (Bᵀp)_j)² with κ = ``coverage`` = 1/c_S."""
    return shortfall_loss(weighted_moments(spectrum.moments, p), coverage * spectrum.eigenvalues, weights)


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


def subset_matrix_coverage(indices: Array, spectrum: Spectrum) -> Array:
    """1/c_S of the subset in the full-matrix sense: the largest κ with κ Σ̃ ≼ Σ̃_S on the
    active eigenspace, i.e. λ_min(Λ^{-1/2} V ᵀΣ̃_S V Λ^{-1/2}). Zero when |S| is smaller
    than the number of active directions (Σ̃_S is then singular there)."""
    z = spectrum.projections[jnp.asarray(indices)]  # [n, m]
    lam = jnp.where(spectrum.active, spectrum.eigenvalues, 1.0)
    white = z / jnp.sqrt(lam)[None, :]
    gram = jnp.matmul(white.T, white, precision=HIGHEST) / jnp.float32(z.shape[0])
    mask = spectrum.active[:, None] & spectrum.active[None, :]
    # Inactive directions get a huge diagonal so they never set the minimum.
    gram = jnp.where(mask, gram, 0.0) + jnp.diag(jnp.where(spectrum.active, 0.0, jnp.inf))
    return jnp.maximum(jnp.linalg.eigvalsh(jnp.where(jnp.isinf(gram), 1e30, gram))[0], 0.0)


def spectral_leverage(spectrum: Spectrum) -> Array:
    """[N] leverage of every row under the pool's own moments,

        ℓ_i = Σ_{j active} Z_ij² / λ_j   (= N · x_iᵀ(XᵀX)⁺x_i on the active directions),

    the Mahalanobis norm of a row against Σ̃ (its mean over the pool is the number of
    active directions). It is what the greedy draw's gain becomes late in a run: once
    Z_SᵀZ_S ≈ t·Λ for a large t, a_i = K⁻¹z_i ≈ Λ⁻¹z_i/t and the gain a_iᵀΛa_i/(1 + a_iᵀz_i)
    ≈ ℓ_i/t², so the rows of largest ℓ are the ones its later picks compete for. O(N m).
    """
    lam = jnp.where(spectrum.active, spectrum.eigenvalues, 1.0)
    return jnp.sum(jnp.where(spectrum.active[None, :], spectrum.projections * spectrum.projections / lam[None, :], 0.0), axis=1)


def subset_variance(indices: Array, spectrum: Spectrum, ridge: float) -> Array:
    """tr(Σ̃ (Z_SᵀZ_S + ridge·I)^{-1}) in the normalised V basis: the sketched variance
    term of the SkMM risk bound (up to σ²), regularised so it is finite for any S."""
    z = spectrum.projections[jnp.asarray(indices)]
    gram = jnp.matmul(z.T, z, precision=HIGHEST) + jnp.float32(ridge) * jnp.eye(z.shape[1], dtype=jnp.float32)
    inv = jnp.linalg.inv(gram)
    return jnp.sum(jnp.diag(inv) * jnp.where(spectrum.active, spectrum.eigenvalues, 0.0))


def effective_dimension(spectrum: Spectrum, threshold: Array) -> Array:
    """d(τ) = Σ_{j active} λ_j / (λ_j + τ) for the normalised eigenvalues (λ_1 = 1): the
    number of directions a ridge τ leaves "resolved" (λ_j ≫ τ counts 1, λ_j ≪ τ counts
    ≈ 0). Decreasing in τ from the number of active directions (τ → 0) to 0."""
    lam = jnp.where(spectrum.active, spectrum.eigenvalues, 0.0)
    return jnp.sum(lam / (lam + jnp.asarray(threshold, jnp.float32)))


AUTO_RIDGE_DIRECTIONS_PER_PICK = 1.0
AUTO_RIDGE_RANGE = (0.05, 1.0)


def auto_ridge(
    spectrum: Spectrum,
    n: int,
    *,
    directions_per_pick: float = AUTO_RIDGE_DIRECTIONS_PER_PICK,
    bounds: tuple[float, float] = AUTO_RIDGE_RANGE,
) -> Array:
    """ρ of the greedy draw for a coreset of n, from the pool's spectrum: the ρ at which
    the coreset is asked to resolve κ·n directions (κ = ``directions_per_pick``),

        ρ = clip(n·τ, ρ_min, ρ_max),    d(τ) = Σ_j λ_j/(λ_j + τ) = κ n,

    with ρ = ρ_min when even τ → 0 resolves fewer than κ n directions (n large against
    the pool's rank). A float32 scalar; jittable (n static), so ``skmm_indices`` can use it.

    Why: the greedy minimises V(S) = tr(Λ(Z_SᵀZ_S + ρI)⁻¹). A coreset that carries the
    pool's moments in proportion has Z_SᵀZ_S ≈ nΛ, so V ≈ (1/n)·Σ_j λ_j/(λ_j + ρ/n):
    directions with λ_j ≫ ρ/n are estimated from the data (term 1/n each), those with
    λ_j ≪ ρ/n are left to the ridge — d(ρ/n) is the number of directions the coreset
    is asked to cover. A fixed ρ asks a coreset of 11 and one of 1,000 to cover
    directions down to λ ≈ ρ/11 and ρ/1,000: the suite's small budgets preferred ρ ≈ 1
    (cover a few top directions well), its large ones ρ ≈ 0.05 (cover the tail too);
    tying d to n moves between the two with the budget and the pool's spectrum.
    κ = 1 had the best validation rank of κ ∈ {1, 2, 4} on the suite's image and
    tabular tasks and again on its text tasks; ρ_max = 1 is the fixed default's
    value, ρ_min = 0.05 the smallest measured (docs/selection.md,
    ``benchmarks/selection_suite.py``). The fixed ρ = 1 still ranks better on
    validation, so "auto" is an option, not the default.
    """
    low, high = (float(b) for b in bounds)
    if not 0 < low <= high:
        raise ValueError(f"bounds must be 0 < low <= high, got {bounds}")
    if not (math.isfinite(directions_per_pick) and directions_per_pick > 0):
        raise ValueError(f"directions_per_pick must be a positive number, got {directions_per_pick!r}")
    target = jnp.float32(directions_per_pick * n)
    # d(τ) is decreasing in τ: bisect log τ on [log(ρ_min/n), log(ρ_max/n)] (the only
    # range the clip keeps), 40 halvings ≈ float32 resolution of the bracket.
    lo, hi = jnp.float32(math.log(low / n)), jnp.float32(math.log(high / n))

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        too_many = effective_dimension(spectrum, jnp.exp(mid)) > target  # resolves more than asked: raise τ
        return jnp.where(too_many, mid, lo), jnp.where(too_many, hi, mid)

    solved = n * jnp.exp(0.5 * sum(jax.lax.fori_loop(0, 40, halve, (lo, hi))))
    # At the ends the rule is the bound itself, exactly (not the bisection's float32 approach to it).
    rho = jnp.where(effective_dimension(spectrum, high / n) >= target, high, jnp.where(effective_dimension(spectrum, low / n) <= target, low, solved))
    return rho.astype(jnp.float32)
