"""SkMM end to end, the registry of every selection method, and the one ``select`` entry point.

``skmm(key, sketched, n)`` runs steps 2–4 on sketched gradients G̃ [N, m]:
preprocessing → spectrum → [c_S (default: the most demanding feasible one, by
bisection) → relaxed weights p (optax, exact capped-simplex projections), when the
draw uses them] → discrete coreset (a ``draw.DRAW_RULES`` entry, greedy moment matching
by default) → diagnostics of the subset actually returned. ``SkMMConfig`` holds the one
set of defaults, which ``select("skmm", ...)`` and the command line use too.

``METHODS`` maps every method name to a ``SelectionMethod`` (``skmm_jax.methods``: one
signature, ``(indices, diagnostics)`` out, ``needs_labels`` declared): SkMM, the
``baselines`` and the label-aware ``deepcore`` selectors.

``select(method, key, features, n)`` validates the input once, optionally sketches
wide features first, runs a registry entry (or your own ``SelectionMethod``) and
reports, for every method alike, the coverage of the chosen subset so methods can be
compared on the quantity the theory bounds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.baselines import BASELINES
from skmm_jax.common.checks import check_labels, check_positive_int, scan_rows
from skmm_jax.common.registry import Registry
from skmm_jax.common.streaming import Progress
from skmm_jax.deepcore import DEEPCORE
from skmm_jax.draw import DRAW_RULES, draw, draw_rule, subset_loss
from skmm_jax.head_gradients import PseudoLabelGradientConfig, pseudo_label_gradients
from skmm_jax.methods import SelectionMethod
from skmm_jax.moments import (
    PREPROCESSING,
    Spectrum,
    auto_ridge,
    direction_weights,
    preprocess_pool,
    sketched_spectrum,
    spectral_leverage,
    subset_coverage,
    subset_matrix_coverage,
    subset_variance,
)
from skmm_jax.sampling import check_subset_size
from skmm_jax.solve import SolverConfig, max_feasible_coverage, solve_moment_matching

Array = jax.Array

GRADIENTS = ("given", "pseudo-label")
"""What ``skmm`` matches moments of: the rows as given, or the pseudo-label gradients of a
linear head made from them (``skmm_jax.head_gradients``)."""

ZERO_FEATURES = (
    "are all zero: their second moment Σ = GᵀG/N has zero trace, so SkMM has no moments "
    "to match (c_S is undefined and any subset 'covers' nothing); check how they were made, "
    "or use a method that does not need them, e.g. uniform"
)


CANDIDATE_RULES = ("auto", "all")
CANDIDATES_PER_PICK = 16
GREEDY_WORK = 2**33
AUTO_CANDIDATES_RULE = f"min(N, max({CANDIDATES_PER_PICK}·n, 2^{GREEDY_WORK.bit_length() - 1}/(n·m)))"  # as text, for help and messages


def auto_candidates(num: int, n: int, dim: int) -> int:
    """The candidate count ``SkMMConfig(candidates="auto")`` uses for N = ``num`` rows of
    width m = ``dim`` and a coreset of n:

        c = min(N, max(K n, ⌊W / (n m)⌋)),    K = CANDIDATES_PER_PICK, W = GREEDY_WORK.

    Cost model of the greedy (``draw.draw_greedy``) over c candidates: each of its n
    picks reads Z_C and A = Z_C K⁻¹ and writes A, [c, m] float32 each, and forms Z_C u:
    ≈ 4 c m flops and 16 c m bytes, so it is memory-bound and costs ∝ n c m in all, with
    8 c m bytes of running state next to the pool's Z [N, m]. Z, Σ̃ and its eigenbasis
    come from all N rows whatever c is (O(N m²), once).

    - ⌊W / (n m)⌋: as many candidates as W multiply-adds of greedy work afford, so the
      pre-filter only engages when the exact greedy would cost more than W (N n m > W);
      below that c = N and the subset is the exact greedy's, bit for bit. W = 2³³ ≈ 8.6·10⁹
      is 10–20 s of greedy on a 2-core CPU.
    - K n: at least K candidates per coreset member, the quality floor: each pick needs
      rows still extreme in the directions left uncovered, and c ≥ n always. With
      ``candidate_rows`` (half of the candidates by leverage) 4 n–8 n already kept the
      greedy's objective within 2.5 % of the exact greedy's on rank-32 + noise pools
      (50,000 and 200,000 × 512, n = 250–2,000); K = 16 leaves a margin for pools
      whose leverage is less skewed (docs/selection.md, ``benchmarks/skmm_scale.py
      --part auto``): 200,000 × 512, n = 2,000 runs in 1.6 min instead of 16.6, at
      0.997 × the exact greedy's objective.

    Past the budget the greedy costs ∝ K n² m, independent of N: for large pools only
    the spectrum (and the leverage pass) grows with N.

    Raises:
      ValueError: a size that is not a positive int.
    """
    num, n, dim = (check_positive_int(v, name) for v, name in ((num, "num"), (n, "n"), (dim, "dim")))
    return min(num, max(CANDIDATES_PER_PICK * n, GREEDY_WORK // (n * dim)))


@functools.partial(jax.jit, static_argnames=("count", "leverage_share"))
def candidate_rows(key: Array, spectrum: Spectrum, count: int, leverage_share: float = 0.5) -> Array:
    """The candidate pre-filter's rows, [count] int32, sorted: the ⌊share·c⌋ rows of
    largest leverage ℓ_i (``moments.spectral_leverage``) and the rest drawn uniformly
    (a permutation from ``key``) among the other rows; c = ``count``, share =
    ``leverage_share``.

    Why both: the greedy's early picks explore the top directions (their gain is
    z_iᵀΛz_i/(ρ² + ρ‖z_i‖²), which typical rows of each region offer), its later ones
    compete for the rows of largest leverage (their gain is ≈ ℓ_i/t², see ``spectral_leverage``). A
    uniform C of c ≪ N rows keeps every region in proportion but only c/N of those
    high-leverage rows; the leverage half keeps them all up to the ⌊c/2⌋-th. Measured on a
    200,000 × 512 rank-32 + noise pool, n = 2,000, with the select defaults: the greedy's
    objective over the exact greedy's is 1.148 / 1.098 / 1.056 with c = 16,000 / 32,000 /
    64,000 uniform rows, and 0.995 / 0.997 at 16,000 / 32,000 with half of them by
    leverage (below 1: the exact greedy is myopic); docs/selection.md.
    ``leverage_share=0`` is the uniform filter (kept for that comparison).
    """
    num = spectrum.projections.shape[0]
    top = jax.lax.top_k(spectral_leverage(spectrum), int(leverage_share * count))[1]
    taken = jnp.zeros((num,), bool).at[top].set(True)
    order = jax.random.permutation(key, num)
    others = order[jnp.argsort(taken[order], stable=True)][: count - top.shape[0]]  # not taken, in permutation order
    return jnp.sort(jnp.concatenate([top, others])).astype(jnp.int32)


@functools.partial(dataclasses.dataclass, frozen=True)
class SkMMConfig:
    """Settings of SkMM steps 2–4 (hashable, so it can be a static jit argument).

    The one set of SkMM defaults: ``skmm()``, ``select("skmm", ...)`` and ``skmm-jax
    select`` all start from ``SkMMConfig()``. They were chosen by
    ``benchmarks/selection_suite.py`` (best mean validation rank against the label-free
    baselines over 7 real tasks × 5 budgets; docs/selection.md states the rule and the
    numbers): rows standardized then scaled to unit length, the greedy draw with
    ρ = 1.0, no relaxation, and on large pools the greedy among an automatic number of
    candidate rows (``candidates="auto"``; "all" for every row). The
    theory's own inputs (as in the paper and ``benchmarks/synthetic_regression.py``) are
    ``SkMMConfig(preprocess="none", ridge=0.2, relax=True)``.

    Attributes:
      gradients: "given" (default: the rows are the sketched gradients or features) or
        "pseudo-label": the rows are features x of a linear probe, and SkMM matches the
        per-sample gradients (p − e_ỹ) ⊗ [x̂, 1] of a C-class linear head with label-free
        k-means pseudo-labels ỹ instead (``head_gradients.pseudo_label_gradients``, made
        with ``fold_in(key, 2)``; Kronecker-sketched to ``pseudo_labels.gradient_dim``
        columns when wider). ``preprocess`` then applies to those rows.
      pseudo_labels: the settings of "pseudo-label" (``PseudoLabelGradientConfig``: k,
        the head at 0 or fitted, the sketch width, ...).
      preprocess: the geometry moments are matched in (``moments.PREPROCESSING``,
        applied by ``moments.preprocess_pool``): "standardize-unit" (default), "none"
        (the sketched gradients as given), "center", "standardize", "unit", "center-unit".
      c_s: the moment-matching constant (1/c_S of every eigenvalue is required of the
        coreset). None: c_S = 1/κ*, the smallest value the pool can satisfy with n
        samples, found by bisection (see ``solve.max_feasible_coverage``).
      draw: how p becomes n indices, a name from ``draw.DRAW_RULES``: "greedy"
        (default, full-matrix discrete moment matching), "greedy-diagonal", "swap",
        "sample", "top", "balanced" (needs labels). See ``skmm_jax.draw``.
      ridge: ρ of the greedy draw, in units of one sample's moment along the top
        eigenvector (Z_SᵀZ_S + ρI). 1.0 was chosen with the default preprocessing on
        real tasks (above); on raw sketched gradients 0.2 was chosen on synthetic seeds
        0–3 and held on seeds 4–7 (benchmarks/synthetic_regression.py). Smaller values
        weigh unexplored low-variance directions more. "auto": ρ from the pool's
        spectrum and n (``moments.auto_ridge``: the ρ at which the coreset is asked to
        cover n directions, clipped to [0.05, 1]); ``skmm`` reports the ρ used
        (``ridge``, ``ridge_auto``). Measured against 1.0 in docs/selection.md.
      solver: optimiser settings; the default Adam on centred gradients with the
        "relative" weighting reached the requested coverage in every direction in
        our measurements where projected gradient stalled on small eigenvalues.
      rank_tol: eigenvalues below rank_tol·λ_max are ignored.
      max_swaps: cap on exchanges for draw="swap" (None: n).
      bisection_steps: solves used to find the default c_S.
      relax: solve the relaxation (and, with c_s None, its c_S bisection). None
        (default): only when it is used, i.e. for a draw rule with
        ``uses_relaxation`` (every rule but "greedy") or a given c_s; see
        ``solves_relaxation``. The greedy draw minimises the sketched variance on the
        subset itself and uses p only to break exact ties, so without the relaxation
        it skips every solve — most of SkMM's time on large pools — and draws with
        uniform p; the relaxation's diagnostics (c_s, relaxed_coverage, loss curve,
        ...) are then absent. False needs a rule without ``uses_relaxation``.
      candidates: the candidate pre-filter for large pools (without the relaxation
        only): the greedy picks among a subset C of c rows while Σ̃, its eigenbasis and
        Λ still come from all N rows, so every pick is scored against the full pool's
        moments. A step then costs O(c m) instead of O(N m) and the greedy's running
        matrix is [c, m]. C (``candidate_rows``) is the ⌊c/2⌋ rows of largest leverage
        against Σ̃, which the greedy's later picks compete for, and c − ⌊c/2⌋ rows drawn
        uniformly (from the key) among the others: a sample of the pool's distribution
        that keeps every region in proportion (a top-k alone would not). One of
          - "auto" (default): c = ``auto_candidates(N, n, m)``, the rule and its reasons
            are there: min(N, max(CANDIDATES_PER_PICK·n, ⌊GREEDY_WORK / (n m)⌋)). Pools
            whose exact greedy costs at most GREEDY_WORK multiply-adds get c = N, the
            exact greedy, bit for bit. Applied only where the pre-filter is valid, i.e.
            without the relaxation (``solves_relaxation`` False: the relaxation weighs
            every row, so with it, or with a c_s or a draw that uses p, every row stays
            a candidate and "auto" is not an error).
          - "all": every row is a candidate (the exact greedy, whatever N).
          - a positive int c ≥ n: this many candidates (every row when c ≥ N); needs
            the greedy without the relaxation.
        ``skmm`` reports the count used (``candidates``) and whether the rule chose it
        (``candidates_auto``).
    """

    preprocess: str = "standardize-unit"
    gradients: str = "given"
    pseudo_labels: PseudoLabelGradientConfig = PseudoLabelGradientConfig()
    c_s: float | None = None
    draw: str = "greedy"
    ridge: float | str = 1.0
    solver: SolverConfig = SolverConfig(optimizer="adam", weighting="relative", max_steps=1000)
    rank_tol: float = 1e-6
    max_swaps: int | None = None
    bisection_steps: int = 10
    relax: bool | None = None
    candidates: int | str = "auto"

    def __post_init__(self):
        if self.preprocess not in PREPROCESSING:
            raise ValueError(f"preprocess must be one of {PREPROCESSING}, got {self.preprocess!r}")
        if self.gradients not in GRADIENTS:
            raise ValueError(f"gradients must be one of {GRADIENTS}, got {self.gradients!r}")
        if not isinstance(self.pseudo_labels, PseudoLabelGradientConfig):
            raise ValueError(f"pseudo_labels must be a PseudoLabelGradientConfig, got {type(self.pseudo_labels).__name__}")
        if self.gradients == "given" and self.pseudo_labels != PseudoLabelGradientConfig():
            default = PseudoLabelGradientConfig()
            changed = [f.name for f in dataclasses.fields(default) if getattr(self.pseudo_labels, f.name) != getattr(default, f.name)]
            raise ValueError(
                f"{', '.join(f'`{name}`' for name in changed)}: the pseudo-label settings need `gradients` = \"pseudo-label\" (with gradients=\"given\" they would be ignored)"
            )
        rule = draw_rule(self.draw)
        if self.relax is False and rule.uses_relaxation:
            without = " or ".join(f'draw="{r.name}"' for r in DRAW_RULES.values() if not r.uses_relaxation)
            raise ValueError(f"relax=False needs {without} (draw={self.draw!r} uses the relaxed weights p)")
        if self.c_s is not None and not (isinstance(self.c_s, (int, float)) and math.isfinite(self.c_s) and self.c_s > 0):
            raise ValueError(f"c_s must be a positive finite number or None (the smallest feasible c_S), got {self.c_s!r}")
        if self.ridge != "auto" and not (
            isinstance(self.ridge, (int, float)) and not isinstance(self.ridge, bool) and math.isfinite(self.ridge) and self.ridge > 0
        ):
            raise ValueError(f"ridge must be 'auto' (ρ from the spectrum and n) or a positive finite number, got {self.ridge!r}")
        counted = isinstance(self.candidates, (int, np.integer)) and not isinstance(self.candidates, bool)
        if not (self.candidates in CANDIDATE_RULES if isinstance(self.candidates, str) else counted and self.candidates >= 1):
            raise ValueError(
                f"candidates must be 'auto' (the count chosen from N, n and m), 'all' (every row: the exact greedy) "
                f"or a positive int, got {self.candidates!r}"
            )
        if counted and self.solves_relaxation:
            raise ValueError(
                "candidates (the pre-filter) needs relax=False, the greedy draw and no c_s: the relaxation weighs every row"
            )

    @property
    def solves_relaxation(self) -> bool:
        """Whether SkMM solves the relaxation: ``relax``, or when None, whether the draw
        rule uses p or a c_S is given."""
        if self.relax is not None:
            return bool(self.relax)
        return draw_rule(self.draw).uses_relaxation or self.c_s is not None

    def candidate_count(self, num: int, n: int, dim: int) -> int:
        """Rows the greedy picks among for a pool of ``num`` rows of width ``dim`` and a
        coreset of n: ``num`` with the relaxation or "all", ``auto_candidates`` for
        "auto", else the given count (at most ``num``)."""
        if self.solves_relaxation or self.candidates == "all":
            return num
        if self.candidates == "auto":
            return auto_candidates(num, n, dim)
        return min(int(self.candidates), num)


def greedy_ridge(config: SkMMConfig, spectrum: Spectrum, n: int) -> Array:
    """ρ of the greedy draw: ``config.ridge``, or for "auto" ``moments.auto_ridge`` of
    the pool's spectrum and n (a float32 scalar; jittable)."""
    return auto_ridge(spectrum, n) if config.ridge == "auto" else jnp.float32(config.ridge)


def _draw(
    key: Array, spectrum: Spectrum, p: Array, coverage: Array, n: int, config: SkMMConfig, labels: Array | None, ridge: Array
) -> tuple[Array, Array]:
    return draw(
        config.draw, key, spectrum, p, coverage, n,
        ridge=ridge, weighting=config.solver.weighting, max_swaps=config.max_swaps, labels=labels,
    )  # fmt: skip


def skmm(
    key: Array,
    sketched: Array,
    n: int,
    *,
    config: SkMMConfig = SkMMConfig(),
    labels: Array | None = None,
    progress: Progress | None = None,
) -> tuple[Array, dict]:
    """Sketchy Moment Matching on sketched gradients: n indices and diagnostics.

    Args:
      key: PRNG key (used by the random draw rules).
      sketched: [N, m] sketched per-sample gradients G̃ (or features); may be sharded over N.
        ``config.preprocess`` is applied first (default "standardize-unit"; "none" takes
        them as given).
      n: coreset size, 0 < n ≤ N.
      config: see ``SkMMConfig``.
      labels: [N] int classes, only for draw="balanced".
      progress: optional ``progress(solves_done, solves_total)`` between the solves of
        the relaxation (1 + bisection_steps of them for the default c_S, else 1); see
        ``solve.max_feasible_coverage``. It does not change the result.

    Returns:
      (indices [n] int32, diagnostics) with: c_s used, the coverage κ required, the
      relaxed p's coverage, the loss curve, solver steps, the effective support
      1/Σp_i² and exp(entropy) of p, and for the FINAL subset S: its diagonal
      coverage min_j (v_jᵀ Σ̃_S v_j)/λ_j, its full-matrix coverage 1/c_S(S) =
      λ_min(Σ̃^{-½} Σ̃_S Σ̃^{-½}), its sketched variance tr(Λ(Z_SᵀZ_S + ρI)⁻¹) and its
      moment-matching loss; ``candidates``, the rows the draw picked among (N unless
      the pre-filter ran), and ``candidates_auto``, whether ``auto_candidates`` chose
      that count (``candidates_requested`` too when a given count was ≥ N).

    Raises:
      ValueError: n out of range, or ``sketched`` all zero (no direction carries
        moment, so there is nothing to match).
    """
    num = sketched.shape[0]
    check_subset_size(n, num)
    if not isinstance(config.candidates, str) and config.candidates < n:  # "auto" is ≥ n (or N) by its rule
        raise ValueError(f"candidates {config.candidates} is smaller than the coreset size n = {n}: the greedy picks the coreset among the candidates")
    made: dict = {}
    if config.gradients == "pseudo-label":
        made_rows = pseudo_label_gradients(jax.random.fold_in(key, 2), sketched, config=config.pseudo_labels)
        sketched, made = made_rows.features, {"gradients": made_rows.info}
    spectrum = sketched_spectrum(preprocess_pool(sketched, config.preprocess), rank_tol=config.rank_tol)
    if not bool(jnp.any(spectrum.active)):
        raise ValueError(f"sketched gradients {ZERO_FEATURES}")
    solver = config.solver
    ridge = greedy_ridge(config, spectrum, n)
    chosen_by = {"ridge": float(ridge), "ridge_auto": config.ridge == "auto"}
    count = config.candidate_count(num, n, int(sketched.shape[1]))
    chosen_by |= {"candidates": count, "candidates_auto": config.candidates == "auto" and not config.solves_relaxation}
    if not isinstance(config.candidates, str) and config.candidates >= num:
        chosen_by["candidates_requested"] = int(config.candidates)
    if not config.solves_relaxation:
        if count >= num:
            indices, _ = _draw(key, spectrum, jnp.full((num,), 1.0 / num, jnp.float32), jnp.float32(1.0), n, config, labels, ridge)
            return indices, {**_subset_diagnostics(indices, spectrum, config, ridge), "relax": False, **chosen_by, **made}
        # Half by leverage, half uniform (sorted: the draw's ties then still go to the lower
        # index); the spectrum's eigenbasis and Λ stay the full pool's.
        rows = candidate_rows(jax.random.fold_in(key, 1), spectrum, count)
        candidates = spectrum._replace(projections=spectrum.projections[rows])
        uniform = jnp.full((count,), 1.0 / count, jnp.float32)
        local, _ = _draw(key, candidates, uniform, jnp.float32(1.0), n, config, None if labels is None else jnp.asarray(labels)[rows], ridge)
        indices = rows[local]
        return indices, {**_subset_diagnostics(indices, spectrum, config, ridge), "relax": False, **chosen_by, **made}
    if config.c_s is None:
        coverage, solved = max_feasible_coverage(spectrum, n, solver, bisection_steps=config.bisection_steps, progress=progress)
    else:
        coverage = 1.0 / config.c_s
        if progress is not None:
            progress(0, 1)
        solved = solve_moment_matching(spectrum, jnp.float32(coverage), n, solver)
        if progress is not None:
            solved.coverage.block_until_ready()
            progress(1, 1)
    p = solved.p
    indices, swaps = _draw(key, spectrum, p, jnp.float32(coverage), n, config, labels, ridge)
    weights = direction_weights(spectrum, solver.weighting)
    subset_total = jnp.sum(spectrum.moments[indices], axis=0)
    losses = np.asarray(solved.losses)[: int(solved.steps)]
    entropy = -float(jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))
    diagnostics = {
        "c_s": 1.0 / coverage,
        "coverage_required": coverage,
        "relaxed_coverage": float(solved.coverage),
        **_subset_diagnostics(indices, spectrum, config, ridge),
        "subset_loss": float(subset_loss(subset_total, jnp.float32(coverage) * spectrum.eigenvalues, weights, n)),
        "solver_steps": int(solved.steps),
        "loss_curve": [float(x) for x in losses],
        "effective_support": float(1.0 / jnp.sum(p * p)),
        "perplexity_of_p": math.exp(entropy),
        "swaps": int(swaps),
        **chosen_by,
        **made,
    }
    return indices, diagnostics


def _subset_diagnostics(indices: Array, spectrum: Spectrum, config: SkMMConfig, ridge: Array) -> dict:
    """What SkMM reports of the returned subset itself, with or without the relaxation."""
    return {
        "subset_coverage": float(subset_coverage(indices, spectrum)),
        "subset_matrix_coverage": float(subset_matrix_coverage(indices, spectrum)),
        "subset_variance": float(subset_variance(indices, spectrum, ridge)),
        "active_directions": int(jnp.sum(spectrum.active)),
        "draw": config.draw,
    }


@functools.partial(jax.jit, static_argnames=("n", "config"))
def skmm_indices(key: Array, sketched: Array, n: int, coverage: Array, config: SkMMConfig = SkMMConfig()) -> Array:
    """The jittable core of SkMM for a given coverage κ = 1/c_S: G̃ → n indices.

    Composes under ``jit``/``vmap`` over keys (n and config static); ``skmm`` adds
    the default-c_S bisection and the diagnostics around the same steps (it always
    solves the relaxation, at the given κ). Not for the draw rules that need labels, nor
    for ``gradients="pseudo-label"`` (make the rows with
    ``head_gradients.pseudo_label_gradients`` first).
    """
    if config.gradients != "given":
        raise ValueError('skmm_indices takes the gradients as given: make pseudo-label rows with head_gradients.pseudo_label_gradients first')
    spectrum = sketched_spectrum(preprocess_pool(sketched, config.preprocess), rank_tol=config.rank_tol)
    solved = solve_moment_matching(spectrum, coverage, n, config.solver)
    return _draw(key, spectrum, solved.p, jnp.asarray(coverage, jnp.float32), n, config, None, greedy_ridge(config, spectrum, n))[0]


def skmm_config(options: dict[str, Any]) -> SkMMConfig:
    """``SkMMConfig`` from flat ``SkMMConfig``, ``SolverConfig`` and ``PseudoLabelGradientConfig``
    fields (what ``select``'s ``**options`` and the command line give); unset fields keep
    ``SkMMConfig``'s defaults.

    Raises:
      ValueError: a field's value is bad (the message starts with the field's name).
      TypeError: an unknown field.
    """
    options = dict(options)
    solver_fields = {f.name for f in dataclasses.fields(SolverConfig)}
    solver_options = {k: options.pop(k) for k in list(options) if k in solver_fields}
    label_fields = {f.name for f in dataclasses.fields(PseudoLabelGradientConfig)}
    label_options = {k: options.pop(k) for k in list(options) if k in label_fields}
    if not (options or solver_options or label_options):
        return SkMMConfig()
    solver = dataclasses.replace(SkMMConfig.__dataclass_fields__["solver"].default, **solver_options)
    if label_options:
        options["pseudo_labels"] = dataclasses.replace(options.get("pseudo_labels", PseudoLabelGradientConfig()), **label_options)
    return SkMMConfig(**options, solver=solver)


def _skmm_run(
    key: Array, features: Array, n: int, *, labels: Any = None, progress: Progress | None = None, **options: Any
) -> tuple[Array, dict]:
    """SkMM as a registry entry: flat ``SkMMConfig`` / ``SolverConfig`` fields over its defaults."""
    config = skmm_config(options)
    indices, diagnostics = skmm(key, features, n, config=config, labels=labels, progress=progress)
    return indices, {**diagnostics, "preprocess": config.preprocess}


def _skmm_check(options: dict, labels: Any) -> None:
    config = skmm_config(options)
    if draw_rule(config.draw).needs_labels and labels is None:
        raise ValueError(f"draw {config.draw!r} needs labels (one int class per sample)")


METHODS: Registry[SelectionMethod] = Registry("selection method", {
    "skmm": SelectionMethod("skmm", _skmm_run, needs_moments=True, check_options=_skmm_check),
    **BASELINES,
    **DEEPCORE,
}.items())
"""Every selection method by its command-line name (see ``skmm_jax.methods``);
``METHODS.register(name, SelectionMethod(...))`` adds one."""


@dataclasses.dataclass(frozen=True)
class Selection:
    """Result of ``select``: indices into the pool plus what was done and measured."""

    indices: np.ndarray
    method: str
    n: int
    diagnostics: dict

    def to_json(self, **extra: Any) -> dict:
        return {"method": self.method, "n": self.n, **extra, "indices": [int(i) for i in self.indices], "diagnostics": self.diagnostics}


def select(
    method: str | SelectionMethod,
    key: Array,
    features: Any,
    n: int,
    *,
    labels: Any = None,
    sketch_kind: str | None = None,
    sketch_dim: int | None = None,
    progress: Progress | None = None,
    solve_progress: Progress | None = None,
    **options: Any,
) -> Selection:
    """Selects n of the N rows of ``features`` with SkMM, a baseline or your own selector.

    Args:
      method: a name from ``METHODS`` ("skmm", "uniform", "herding", "kcenter",
        "adaptive", "leverage", "ridge-leverage", or one of the label-aware
        ``DEEPCORE`` selectors "el2n", "grand", "forgetting", "entropy", "margin",
        "least-confidence", "contextual-diversity") or your own ``SelectionMethod``
        (e.g. ``SelectionMethod.from_indices("mine", fn)``).
      key: PRNG key. When sketching, the sketch uses ``fold_in(key, 0)`` and the
        selector ``fold_in(key, 1)``.
      features: [N, d] floats (NumPy, memmap or jax): per-sample (sketched) gradients
        or features.
      n: coreset size, 0 < n ≤ N.
      labels: [N] int classes: required by the methods with ``needs_labels`` (the
        ``DEEPCORE`` ones), used by SkMM's draw="balanced", passed to every method.
      sketch_kind, sketch_dim: sketch d → sketch_dim with this kind first (streamed
        from the host in chunks) — for wide features such as raw gradients.
      progress: ``progress(rows_done, rows_total)`` during the sketching pass.
      solve_progress: the method's own progress (the entry's ``progress``); "skmm"
        reports ``(solves_done, solves_total)`` between the solves of the relaxation
        (the default c_S takes 1 + bisection_steps solves; each can take minutes on a
        large pool). Ignored by the other built-in methods.
      **options: passed to the selector (for "skmm": ``SkMMConfig`` / ``SolverConfig``
        fields over ``SkMMConfig``'s defaults, e.g. ``preprocess="none",
        c_s=0.8, draw="swap", optimizer="nesterov"``).

    Returns:
      ``Selection`` with int64 indices (distinct, in selection order), the method
      name, n, and diagnostics; every method gets ``subset_coverage`` on the
      spectrum of the (sketched) features.

    Raises:
      ValueError: bad features (NaN/inf rows, wrong shape), n out of range, missing
        labels, an unknown method or sketch kind, or all-zero features for a method
        with ``needs_moments`` ("skmm": nothing to match). All-zero features only warn
        for the other methods: they still return a subset (chosen arbitrarily), with
        ``subset_coverage`` inf.
    """
    from skmm_jax.sketch import make_sketch, sketch_rows
    from skmm_jax.sketch.make import sketch_kind as registered_kind

    if isinstance(method, SelectionMethod):
        entry = method
    elif isinstance(method, str) and method in METHODS:
        entry = METHODS[method]
    elif isinstance(method, str):
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)} or pass a SelectionMethod")
    else:
        raise TypeError(
            f"method must be a name from METHODS or a SelectionMethod, got {type(method).__name__}; "
            "wrap a function returning indices with SelectionMethod.from_indices(name, fn)"
        )
    all_zero = scan_rows(features, name="features")
    num = features.shape[0]
    check_subset_size(n, num)
    if entry.needs_labels and labels is None:
        raise ValueError(f"method {entry.name!r} needs labels: `labels` must be an [N] = [{num}] integer array of classes 0..C-1")
    if sketch_kind is None and sketch_dim is not None:
        raise ValueError("sketch_dim needs sketch_kind (which sketch to apply), e.g. sketch_kind='sjlt'")
    if sketch_kind is not None:
        registered_kind(sketch_kind, name="sketch_kind")  # an unknown kind fails before any work
        check_positive_int(sketch_dim, "sketch_dim")
    if labels is not None:
        labels = check_labels(labels, num)
    if entry.check_options is not None:  # bad options fail here, before the sketching pass
        entry.check_options(options, labels)
    if all_zero:
        if entry.needs_moments:
            raise ValueError(f"features {ZERO_FEATURES}")
        warnings.warn(
            f"features are all zero: every row is the same, so {entry.name} chooses "
            "arbitrarily and subset_coverage is undefined (reported as inf)",
            stacklevel=2,
        )
    select_key = jax.random.fold_in(key, 1) if sketch_kind is not None else key
    diagnostics: dict = {}
    if sketch_kind is not None:
        sketch = make_sketch(sketch_kind, jax.random.fold_in(key, 0), int(features.shape[1]), int(sketch_dim))
        features = sketch_rows(sketch, np.asarray(features) if not isinstance(features, np.ndarray) else features, progress=progress)
        diagnostics["sketch"] = {"kind": sketch_kind, "dim": int(sketch_dim)}
    features = jnp.asarray(features, jnp.float32)
    indices, extra = entry(select_key, features, n, labels=labels, progress=solve_progress, **options)
    indices = np.asarray(indices).astype(np.int64)
    if indices.shape != (n,) or len(np.unique(indices)) != n or indices.min() < 0 or indices.max() >= num:
        raise ValueError(f"method {entry.name!r} returned invalid indices (need {n} distinct values in [0, {num})), got shape {indices.shape}")
    diagnostics.update(extra)
    if "subset_coverage" not in diagnostics:
        diagnostics["subset_coverage"] = float(subset_coverage(jnp.asarray(indices), sketched_spectrum(features)))
    return Selection(indices, entry.name, n, diagnostics)
