"""SkMM step 4: turning the relaxed weights p into a discrete coreset of n samples.

Rules:
  - "sample": n draws without replacement ∝ p (Gumbel top-k).
  - "top": the n largest p_i.
  - "balanced": per class, a share of n proportional to the class's p-mass (largest
    remainders), drawn ∝ p within the class.
  - "greedy" (default): discrete moment matching on the FULL sketched moment matrix.
    The theory's target is c_S(S) = λ_max(Σ̃ Σ̃_S⁻¹), the smallest c with
    Σ̃ ≼ c Σ̃_S; its smooth surrogate, the sum instead of the max of those generalised
    eigenvalues, is the sketched variance term tr(Σ̃ Σ̃_S⁻¹) of the risk bound.
    Greedy adds the sample that most reduces
        V(S) = tr(Λ (Z_SᵀZ_S + ρ I)⁻¹)          (V basis, Z = G̃V/√λ_max),
    where the ridge ρ (default 0.2 of one sample's top-direction moment) keeps V
    finite before S spans the sketch: an uncovered direction costs λ_j/ρ, so the
    first picks explore every direction with large λ_j (bias), later ones add
    moment where Σ̃_S is thinnest relative to Σ̃ (variance). With K⁻¹ kept by
    Sherman–Morrison and A = Z K⁻¹ downdated by rank one, a step is O(N m):
        gain_i = a_iᵀ Λ a_i / (1 + a_iᵀ z_i).
    Ties go to the larger p.
  - "greedy-quota": the same greedy with per-group counts (labels = groups, e.g. the
    k-means clusters of the pool or classes): one pick per group when n ≥ groups, the
    rest ∝ group size; a group's rows leave the candidates when its count is reached.
  - "greedy-diagonal": the same greedy on the relaxation's own objective,
    D(S) = Σ_j ω_j relu(κ λ_j − (1/n) Σ_{i∈S} B_ij)², which only sees the diagonal
    of Σ̃_S in the V basis (it cannot tell apart subsets whose moments are
    correlated across directions).
  - "swap": draw ∝ p, then local search on D: exchange the member whose removal
    costs least with the non-member that then helps most, while D(S) decreases.

``DRAW_RULES`` maps every rule name (``SkMMConfig.draw``) to a ``DrawRule``: the
function and what it needs (the relaxed p, labels); ``draw(rule, ...)`` runs an entry,
and a new rule is one function plus one ``register_draw_rule``. The moment-matching
rules score subsets with ``subset_loss``, the relaxation's own objective
(``moments.shortfall_loss``) at p = 1_S/n.

Why the discrete rules: solving the relaxation exactly and sampling ∝ p does not make
the sampled subset meet the moment constraints (a sample of n points misses small
clusters that p covers fractionally); greedy/swap optimise the quantity the theory
bounds, on the subset actually returned. Each greedy step or swap costs O(N m) and
runs inside one jitted ``lax`` loop (so a greedy draw is O(n N m) in total).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.common.precision import HIGHEST
from skmm_jax.common.registry import Registry
from skmm_jax.moments import Spectrum, direction_weights, shortfall_loss
from skmm_jax.sampling import class_quotas, sample_without_replacement

Array = jax.Array

def subset_loss(total: Array, target: Array, weights: Array, n: int) -> Array:
    """D(S) for coreset moment sums ``total`` [..., m] (members weigh 1/n): the
    relaxation's objective (``moments.shortfall_loss``) at p = 1_S/n."""
    return shortfall_loss(total / n, target, weights)


def draw_sample(key: Array, p: Array, n: int) -> Array:
    return sample_without_replacement(key, p, n)


def draw_top(p: Array, n: int) -> Array:
    return jax.lax.top_k(p, n)[1].astype(jnp.int32)


def draw_balanced(key: Array, p: Array, labels: Array, n: int, num_classes: int) -> Array:
    """Class shares n_c ∝ Σ_{i∈c} p_i (``sampling.class_quotas``: largest remainders,
    capped at the class size), then ∝ p inside each class, realised as one Gumbel top-k
    with per-class quotas. The quotas are computed on the host: not jittable."""
    labels = jnp.asarray(labels, jnp.int32)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [N, C]
    mass = jnp.matmul(p, one_hot, precision=HIGHEST)
    sizes = jnp.sum(one_hot, axis=0)
    quota = jnp.asarray(class_quotas(np.asarray(mass), n, sizes=np.asarray(sizes)), jnp.float32)
    # Rank every sample inside its class by log p + Gumbel; keep the first quota[c] of class c.
    gumbel = jax.random.gumbel(key, p.shape, jnp.float32)
    score = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -1e4) + gumbel
    order = jnp.lexsort((-score, labels))  # by class, then best first
    sorted_labels = labels[order]
    start = jnp.cumsum(sizes) - sizes
    position = jnp.arange(p.shape[0], dtype=jnp.float32) - start[sorted_labels]
    keep = position < quota[sorted_labels]
    # Kept samples first (stable), then take n: exactly n are kept when quotas sum to n.
    picked = order[jnp.argsort(~keep, stable=True)][:n]
    return picked.astype(jnp.int32)


def take_row(matrix: Array, index: Array) -> Array:
    """matrix[index] for an [N, m] matrix as a masked reduction over N: with N sharded each
    device sums its own rows, so it costs an O(m) all-reduce instead of gathering [N, m]
    (what a dynamic slice along a sharded axis compiles to)."""
    hit = jnp.arange(matrix.shape[0], dtype=jnp.int32) == jnp.asarray(index, jnp.int32)
    return jnp.sum(jnp.where(hit.reshape(hit.shape + (1,) * (matrix.ndim - 1)), matrix, 0), axis=0)


@functools.partial(jax.jit, static_argnames=("n",))
def draw_greedy(spectrum: Spectrum, p: Array, ridge: Array, n: int, groups: Array | None = None, quota: Array | None = None) -> Array:
    """Greedy full-matrix moment matching: minimise tr(Λ (Z_SᵀZ_S + ρI)⁻¹); [n] int32.

    With ``groups`` [N] int (e.g. k-means clusters) and ``quota`` [G] int (Σ quota = n),
    a group's rows stop being candidates once it holds ``quota[g]`` picks: the same
    objective under per-group counts (rule "greedy-quota")."""
    z = spectrum.projections  # [N, m]
    lam = jnp.where(spectrum.active, spectrum.eigenvalues, 0.0)
    tie = p / jnp.maximum(jnp.max(p), 1e-30) * 1e-12
    ridge = jnp.asarray(ridge, jnp.float32)
    rows = jnp.arange(z.shape[0], dtype=jnp.int32)
    if groups is None:  # one group that never fills
        groups, quota = jnp.zeros((z.shape[0],), jnp.int32), jnp.full((1,), n, jnp.int32)
    groups, quota = jnp.asarray(groups, jnp.int32), jnp.asarray(quota, jnp.int32)

    def pick(step, state):
        a, taken, counts, chosen = state  # a = Z K⁻¹, K = Z_SᵀZ_S + ρ I
        denominator = 1.0 + jnp.sum(a * z, axis=1)  # 1 + z_iᵀ K⁻¹ z_i  (≥ 1)
        gain = jnp.sum(a * a * lam[None, :], axis=1) / denominator  # V(S) − V(S ∪ {i})
        closed = taken | (counts[groups] >= quota[groups])
        best = jnp.argmax(jnp.where(closed, -jnp.inf, gain + tie)).astype(jnp.int32)
        u = take_row(a, best)  # K⁻¹ z_best (K symmetric); O(m) communication when N is sharded
        scale = take_row(denominator, best)
        # K⁻¹ ← K⁻¹ − u uᵀ / (1 + z_bestᵀ u)  ⇒  A ← A − (Z u) uᵀ / (…)
        a = a - jnp.matmul(z, u, precision=HIGHEST)[:, None] * (u / scale)[None, :]
        counts = counts.at[take_row(groups, best)].add(1)
        return a, taken | (rows == best), counts, chosen.at[step].set(best)

    state = (z / ridge, jnp.zeros((z.shape[0],), bool), jnp.zeros(quota.shape, jnp.int32), jnp.zeros((n,), jnp.int32))
    return jax.lax.fori_loop(0, n, pick, state)[3]


def group_quotas(groups: Array, n: int) -> np.ndarray:
    """[G] picks per group for "greedy-quota": one for every group when n ≥ G (so no
    cluster is left out), the rest ∝ group size by largest remainders
    (``sampling.class_quotas``), capped at the group's size. Host NumPy."""
    sizes = np.bincount(np.asarray(groups), minlength=int(np.max(np.asarray(groups))) + 1).astype(np.int64)
    base = np.minimum(sizes, 1) if n >= int(np.count_nonzero(sizes)) else np.zeros_like(sizes)
    return base + class_quotas(sizes, n - int(base.sum()), sizes=sizes - base)


@functools.partial(jax.jit, static_argnames=("n",))
def draw_greedy_diagonal(spectrum: Spectrum, p: Array, coverage: Array, weights: Array, n: int) -> Array:
    """Greedy on the relaxation's diagonal objective D(S) (see module docstring); [n] int32."""
    moments = spectrum.moments
    target = coverage * spectrum.eigenvalues
    num = moments.shape[0]
    # Tie-break by p, scaled far below any real decrease of D.
    tie = p / jnp.maximum(jnp.max(p), 1e-30) * 1e-12
    rows = jnp.arange(num, dtype=jnp.int32)

    def pick(step, state):
        total, taken, chosen = state
        loss = subset_loss(total[None, :] + moments, target[None, :], weights[None, :], n)  # [N]
        score = jnp.where(taken, jnp.inf, loss - tie)
        best = jnp.argmin(score).astype(jnp.int32)
        return total + take_row(moments, best), taken | (rows == best), chosen.at[step].set(best)

    state = (jnp.zeros_like(target), jnp.zeros((num,), bool), jnp.zeros((n,), jnp.int32))
    return jax.lax.fori_loop(0, n, pick, state)[2]


@functools.partial(jax.jit, static_argnames=("n", "max_swaps"))
def refine_swaps(spectrum: Spectrum, indices: Array, coverage: Array, weights: Array, n: int, max_swaps: int) -> tuple[Array, Array]:
    """Best-improvement exchange local search on D(S); returns (indices, swaps made)."""
    moments = spectrum.moments
    target = coverage * spectrum.eigenvalues
    num = moments.shape[0]
    member = jnp.zeros((num,), bool).at[indices].set(True)
    total = jnp.sum(moments[indices], axis=0)

    def loss_of(totals):
        return subset_loss(totals, target[None, :], weights[None, :], n)

    def cond(state):
        _, _, _, swaps, improved = state
        return improved & (swaps < max_swaps)

    def body(state):
        member, total, indices, swaps, _ = state
        current = subset_loss(total, target, weights, n)
        # Remove the member whose removal raises D least …
        drop_loss = jnp.where(member, loss_of(total[None, :] - moments), jnp.inf)
        out = jnp.argmin(drop_loss).astype(jnp.int32)
        reduced = total - take_row(moments, out)
        # … and add the non-member that lowers D most.
        add_loss = jnp.where(member, jnp.inf, loss_of(reduced[None, :] + moments))
        add_loss = add_loss.at[out].set(jnp.inf)
        inn = jnp.argmin(add_loss).astype(jnp.int32)
        better = take_row(add_loss, inn) < current * (1.0 - 1e-6)
        slot = jnp.argmax(indices == out)
        member = jnp.where(better, member.at[out].set(False).at[inn].set(True), member)
        total = jnp.where(better, reduced + take_row(moments, inn), total)
        indices = jnp.where(better, indices.at[slot].set(inn.astype(jnp.int32)), indices)
        return member, total, indices, swaps + better.astype(jnp.int32), better

    state = (member, total, jnp.asarray(indices, jnp.int32), jnp.int32(0), jnp.bool_(True))
    _, _, indices, swaps, _ = jax.lax.while_loop(cond, body, state)
    return indices, swaps


@dataclasses.dataclass(frozen=True)
class DrawRule:
    """One entry of ``DRAW_RULES``: how the relaxed weights p become n indices.

    Attributes:
      name: the name ``SkMMConfig.draw`` and ``--draw`` use.
      run: ``run(key, spectrum, p, coverage, n, *, ridge, weighting, max_swaps, labels)
        -> (indices [n] int32, swaps made)``; a rule takes what it uses and ignores the
        rest (``**_``).
      uses_relaxation: it draws from (or starts at) the relaxed p, so SkMM solves the
        relaxation for it. False: p only breaks exact ties (uniform p will do).
      needs_labels: it needs [N] int classes (then it is not jittable).
      summary: one line for help texts and docs.
    """

    name: str
    run: Callable[..., tuple[Array, Array]]
    uses_relaxation: bool = True
    needs_labels: bool = False
    summary: str = ""


_NO_SWAPS = np.int32(0)  # numpy, not jnp: importing the library must not start a JAX backend (jax.distributed)


def _greedy(key, spectrum, p, coverage, n, *, ridge, **_):
    return draw_greedy(spectrum, p, jnp.float32(ridge), n), _NO_SWAPS


def _greedy_diagonal(key, spectrum, p, coverage, n, *, weighting, **_):
    return draw_greedy_diagonal(spectrum, p, coverage, direction_weights(spectrum, weighting), n), _NO_SWAPS


def _swap(key, spectrum, p, coverage, n, *, weighting, max_swaps, **_):
    start = draw_sample(key, p, n)
    return refine_swaps(spectrum, start, coverage, direction_weights(spectrum, weighting), n, max_swaps or n)


def _sample(key, spectrum, p, coverage, n, **_):
    return draw_sample(key, p, n), _NO_SWAPS


def _top(key, spectrum, p, coverage, n, **_):
    return draw_top(p, n), _NO_SWAPS


def _greedy_quota(key, spectrum, p, coverage, n, *, ridge, labels, **_):
    groups = jnp.asarray(labels, jnp.int32)
    return draw_greedy(spectrum, p, jnp.float32(ridge), n, groups, jnp.asarray(group_quotas(groups, n), jnp.int32)), _NO_SWAPS


def _balanced(key, spectrum, p, coverage, n, *, labels, **_):
    labels = jnp.asarray(labels, jnp.int32)
    return draw_balanced(key, p, labels, n, int(jnp.max(labels)) + 1), _NO_SWAPS


DRAW_RULES: Registry[DrawRule] = Registry("draw rule", (
    (rule.name, rule)
    for rule in (
        DrawRule("greedy", _greedy, uses_relaxation=False, summary="full-matrix moment matching, min tr(Λ(Z_SᵀZ_S + ρI)⁻¹)"),
        DrawRule("greedy-diagonal", _greedy_diagonal, summary="greedy on the relaxation's diagonal objective D(S)"),
        DrawRule("swap", _swap, summary="a draw ∝ p, then exchanges while D(S) decreases"),
        DrawRule("sample", _sample, summary="n draws without replacement ∝ p"),
        DrawRule("top", _top, summary="the n largest p"),
        DrawRule("balanced", _balanced, needs_labels=True, summary="per-class shares ∝ class p-mass, drawn ∝ p"),
        DrawRule("greedy-quota", _greedy_quota, uses_relaxation=False, needs_labels=True,
                 summary="the greedy with per-group counts: ≥ 1 per group when n ≥ groups, the rest ∝ group size"),
    )
))
"""Every draw rule by name (see the module docstring)."""

# The names, in registry order (a view: rules registered later appear here too).
DRAWS = DRAW_RULES.keys()


def register_draw_rule(rule: DrawRule) -> DrawRule:
    """Adds ``rule`` to ``DRAW_RULES`` under its name (ValueError if taken); returns it."""
    return DRAW_RULES.register(rule.name, rule)


def draw_rule(name: str) -> DrawRule:
    """The registry entry of ``name``; ValueError "draw must be one of ..., got 'x'" otherwise."""
    return DRAW_RULES.lookup(name, setting="draw")


def draw(
    rule: str,
    key: Array,
    spectrum: Spectrum,
    p: Array,
    coverage: Array,
    n: int,
    *,
    ridge: float,
    weighting: str,
    max_swaps: int | None = None,
    labels: Array | None = None,
) -> tuple[Array, Array]:
    """p → n indices by ``rule`` (a name from ``DRAW_RULES``); returns (indices [n] int32, swaps made).

    Args:
      rule: see the module docstring.
      key: PRNG key of the random rules ("sample", "swap"'s start, "balanced").
      spectrum, p, coverage: the solved relaxation (κ = ``coverage`` = 1/c_S).
      n: coreset size (static).
      ridge: ρ of "greedy".
      weighting: the objective's direction weights ω ("greedy-diagonal", "swap").
      max_swaps: cap on exchanges of "swap" (None: n).
      labels: [N] int classes, for the rules with ``needs_labels`` ("balanced", which
        is then not jittable).
    """
    entry = draw_rule(rule)
    if entry.needs_labels and labels is None:
        raise ValueError(f"draw {rule!r} needs labels (one int class per sample)")
    return entry.run(key, spectrum, p, coverage, n, ridge=ridge, weighting=weighting, max_swaps=max_swaps, labels=labels)
