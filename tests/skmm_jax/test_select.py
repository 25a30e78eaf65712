"""SkMM steps 2–4: spectrum, exact capped-simplex projection, the optax solver, draw rules, select()."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from skmm_jax.deepcore import DEEPCORE
from skmm_jax.draw import DRAW_RULES, DRAWS, draw, draw_balanced, draw_greedy, draw_greedy_diagonal, group_quotas, refine_swaps, subset_loss
from skmm_jax.methods import SelectionMethod
from skmm_jax.moments import (
    PREPROCESSING,
    auto_ridge,
    direction_weights,
    effective_dimension,
    moment_matching_loss,
    preprocess_pool,
    sketched_spectrum,
    spectral_leverage,
    subset_coverage,
    subset_matrix_coverage,
    subset_variance,
    subset_weights,
)
from skmm_jax.sampling import class_quotas
from skmm_jax.select import METHODS, SkMMConfig, auto_candidates, candidate_rows, select, skmm, skmm_indices
from skmm_jax.solve import SolverConfig, max_feasible_coverage, project_capped_simplex, solve_moment_matching


# The theory's inputs (the sketched gradients as given, ρ = 0.2): what these tests check
# skmm() on; SkMMConfig()'s defaults are select's (standardize-unit, ρ = 1.0, no relaxation).
THEORY = {"preprocess": "none", "ridge": 0.2}


def clusters(seed=0, sizes=(120, 60, 30, 8, 3), dim=16, spread=0.3):
    """Orthogonal, well-separated clusters of very different sizes, with in-cluster spread."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    rows, labels = [], []
    for k, size in enumerate(sizes):
        centre = 3.0 * basis[k]
        local = basis[len(sizes) + 2 * k : len(sizes) + 2 * k + 2]
        rows.append(centre + spread * rng.standard_normal((size, 2)) @ local)
        labels += [k] * size
    return np.concatenate(rows).astype(np.float32), np.array(labels)


def reference_projection(x, total, cap):
    """Exact projection in float64: Σ clip(x − τ, 0, cap) is piecewise linear in τ with
    breakpoints at x_i and x_i − cap; find the segment where it equals total."""
    x = np.asarray(x, np.float64)
    mass = lambda t: np.clip(x - t, 0, cap).sum()
    points = np.sort(np.concatenate([x, x - cap]))
    values = np.array([mass(t) for t in points])  # non-increasing
    i = np.searchsorted(-values, -total)  # first breakpoint with mass <= total
    t0, t1 = points[i - 1], points[i]
    m0, m1 = values[i - 1], values[i]
    tau = t0 + (m0 - total) * (t1 - t0) / (m0 - m1)
    return np.clip(x - tau, 0, cap)


@pytest.mark.parametrize("num,total,cap,scale", [(50, 1.0, 0.1, 1.0), (200, 20.0, 1.0, 5.0), (1000, 7.5, 0.01 * 1000, 1e-3), (31, 30.0, 1.0, 2.0)])
def test_projection_is_exact_and_feasible(num, total, cap, scale):
    x = np.random.default_rng(num).standard_normal(num).astype(np.float32) * scale
    y = np.asarray(project_capped_simplex(jnp.asarray(x), total, cap=cap))
    assert y.min() >= 0 and y.max() <= cap * (1 + 1e-6)
    np.testing.assert_allclose(y.sum(), total, rtol=1e-5)
    np.testing.assert_allclose(y, reference_projection(x, total, cap), atol=1e-5 * max(cap, 1.0))
    # A feasible point is its own projection.
    np.testing.assert_allclose(np.asarray(project_capped_simplex(jnp.asarray(y), total, cap=cap)), y, atol=1e-5 * cap)


def test_projection_is_not_clip_and_renormalise():
    x = jnp.array([0.9, 0.5, 0.1, -0.3], jnp.float32)
    y = np.asarray(project_capped_simplex(x, 1.0, cap=0.5))
    clipped = np.clip(np.asarray(x), 0, 0.5)
    assert not np.allclose(y, clipped / clipped.sum(), atol=1e-3)
    np.testing.assert_allclose(y, reference_projection(np.asarray(x), 1.0, 0.5), atol=1e-6)


def test_spectrum_columns_average_to_eigenvalues():
    g = np.random.default_rng(0).standard_normal((300, 12)).astype(np.float32) * np.linspace(3, 0.1, 12, dtype=np.float32)
    spec = sketched_spectrum(g)
    lam = np.linalg.eigvalsh(g.astype(np.float64).T @ g / 300)[::-1]
    np.testing.assert_allclose(np.asarray(spec.eigenvalues), lam / lam[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(spec.moments).mean(axis=0), np.asarray(spec.eigenvalues), rtol=1e-4, atol=1e-6)
    # Uniform weights carry exactly λ_j in every direction: zero loss at coverage 1.
    uniform = jnp.full((300,), 1 / 300, jnp.float32)
    w = direction_weights(spec, "relative")
    assert float(moment_matching_loss(uniform, spec, jnp.float32(1.0), w)) < 1e-8


def test_rank_deficient_directions_are_inactive():
    g = np.random.default_rng(1).standard_normal((40, 3)) @ np.random.default_rng(2).standard_normal((3, 10))
    spec = sketched_spectrum(g.astype(np.float32))
    assert int(spec.active.sum()) == 3


@pytest.mark.parametrize("optimizer", ["adam", "nesterov", "pgd"])
def test_solver_moves_off_uniform_and_does_not_collapse(optimizer):
    x, _ = clusters()
    spec = sketched_spectrum(x)
    n = 20
    res = solve_moment_matching(spec, jnp.float32(1.3), n, SolverConfig(optimizer=optimizer, max_steps=400))
    p = np.asarray(res.p)
    assert p.min() >= 0 and p.max() <= 1 / n * (1 + 1e-5)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
    assert np.abs(p - 1 / len(p)).max() > 1e-3, "p never left the uniform start"
    losses = np.asarray(res.losses)[: int(res.steps)]
    assert losses[-1] < losses[0]
    assert 1 / np.sum(p**2) >= n  # support can never fall below n on the capped simplex
    assert np.sum(p > 1e-6) >= n


def test_adam_reaches_a_feasible_coverage_from_a_bad_start():
    x, _ = clusters()
    spec = sketched_spectrum(x)
    start = jnp.zeros((len(x),), jnp.float32).at[:20].set(1 / 20)  # all in the largest cluster: coverage 0
    assert float(subset_coverage(jnp.arange(20), spec)) < 0.01
    res = solve_moment_matching(spec, jnp.float32(1.0), 20, SolverConfig(optimizer="adam", weighting="relative", max_steps=1000), start)
    assert float(res.coverage) >= 0.98


def test_max_feasible_coverage_brackets_the_limit():
    x, _ = clusters()
    spec = sketched_spectrum(x)
    n = 20
    cfg = SolverConfig(optimizer="adam", weighting="relative", max_steps=600)
    kappa, solved = max_feasible_coverage(spec, n, cfg, bisection_steps=8)
    assert 1.0 <= kappa <= len(x) / n
    assert float(solved.coverage) >= 0.97 * kappa
    # Asking for clearly more than κ* is not reached.
    beyond = solve_moment_matching(spec, jnp.float32(kappa * 1.5), n, cfg, solved.p)
    assert float(beyond.coverage) < kappa * 1.5 * 0.98


def test_diagonal_greedy_draw_covers_every_cluster():
    x, labels = clusters()
    spec = sketched_spectrum(x)
    w = direction_weights(spec, "relative")
    p = jnp.full((len(x),), 1 / len(x), jnp.float32)
    idx = np.asarray(draw_greedy_diagonal(spec, p, jnp.float32(1.0), w, 10))
    assert len(set(idx.tolist())) == 10
    assert set(labels[idx].tolist()) == set(range(5)), "greedy moment matching missed a cluster"
    assert float(subset_coverage(jnp.asarray(idx), spec)) > 0.05


def variance_term(spec, ridge):
    """numpy float64 V(S) = tr(Λ (Z_SᵀZ_S + ρI)⁻¹) of a spectrum, as a function of the chosen rows."""
    z = np.asarray(spec.projections, np.float64)
    lam = np.where(np.asarray(spec.active), np.asarray(spec.eigenvalues, np.float64), 0.0)

    def variance(chosen):
        k = z[chosen].T @ z[chosen] + ridge * np.eye(z.shape[1])
        return float(np.sum(lam * np.diag(np.linalg.inv(k))))

    return variance


def test_full_matrix_greedy_equals_brute_force_and_covers_clusters():
    x, labels = clusters(sizes=(40, 20, 10, 4, 2))
    spec = sketched_spectrum(x)
    z = np.asarray(spec.projections, np.float64)
    ridge, n = 0.2, 8
    variance = variance_term(spec, ridge)

    chosen, values = [], [variance([])]
    for _ in range(n):
        rest = [i for i in range(len(z)) if i not in chosen]
        best = min(rest, key=lambda i: variance(chosen + [i]))
        chosen.append(best)
        values.append(variance(chosen))
    p = jnp.full((len(x),), 1 / len(x), jnp.float32)
    idx = np.asarray(draw_greedy(spec, p, jnp.float32(ridge), n))
    assert idx.tolist() == chosen
    assert all(b < a for a, b in zip(values, values[1:])), "each greedy pick must lower the variance term"
    np.testing.assert_allclose(float(subset_variance(jnp.asarray(idx), spec, ridge)), values[-1], rtol=1e-4)
    assert set(labels[idx].tolist()) == set(range(5)), "full-matrix greedy missed a cluster"


def test_greedy_quota_is_the_brute_force_greedy_under_group_counts():
    x, labels = clusters(sizes=(40, 20, 10, 4, 2))
    spec = sketched_spectrum(x)
    ridge, n = 0.2, 9
    quota = group_quotas(labels, n)
    # one per group (n ≥ 5 groups), then the other 4 ∝ sizes 39, 19, 9, 3, 1 (largest remainders)
    assert quota.tolist() == [3, 2, 2, 1, 1] and quota.sum() == n
    variance = variance_term(spec, ridge)

    chosen = []
    for _ in range(n):
        counts = np.bincount(labels[chosen], minlength=5) if chosen else np.zeros(5, int)
        rest = [i for i in range(len(x)) if i not in chosen and counts[labels[i]] < quota[labels[i]]]
        chosen.append(min(rest, key=lambda i: variance(chosen + [i])))
    idx = select("skmm", 0, x, n, preprocess="none", ridge=ridge, draw="greedy-quota", labels=labels).indices
    assert np.asarray(idx).tolist() == chosen
    np.testing.assert_array_equal(np.bincount(labels[np.asarray(idx)], minlength=5), quota)
    # One group that never fills is the plain greedy.
    p = jnp.full((len(x),), 1 / len(x), jnp.float32)
    np.testing.assert_array_equal(
        draw_greedy(spec, p, jnp.float32(ridge), n, jnp.zeros(len(x), jnp.int32), jnp.array([n], jnp.int32)),
        draw_greedy(spec, p, jnp.float32(ridge), n),
    )


def test_matrix_coverage_of_the_whole_pool_is_one():
    x, _ = clusters()
    spec = sketched_spectrum(x)
    assert abs(float(subset_matrix_coverage(jnp.arange(len(x)), spec)) - 1.0) < 1e-3
    assert float(subset_matrix_coverage(jnp.arange(3), spec)) < 1e-3  # 3 rows cannot span 15 directions


def test_swaps_never_increase_thesubset_loss():
    x, _ = clusters()
    spec = sketched_spectrum(x)
    w = direction_weights(spec, "relative")
    n = 12
    start = jnp.arange(n, dtype=jnp.int32)  # all from the largest cluster
    target = jnp.float32(1.0) * spec.eigenvalues
    before = float(subset_loss(jnp.sum(spec.moments[start], axis=0), target, w, n))
    idx, swaps = refine_swaps(spec, start, jnp.float32(1.0), w, n, 50)
    after = float(subset_loss(jnp.sum(spec.moments[idx], axis=0), target, w, n))
    assert int(swaps) > 0 and after < before
    assert len(set(np.asarray(idx).tolist())) == n


def test_candidate_prefilter_picks_among_leverage_and_uniform_candidates_scored_on_the_full_spectrum():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((600, 6)) @ rng.standard_normal((6, 24)) + 0.05 * rng.standard_normal((600, 24))).astype(np.float32)
    key, n = jax.random.key(4), 20
    full, _ = skmm(key, x, n, config=SkMMConfig(**THEORY, relax=False))
    same, _ = skmm(key, x, n, config=SkMMConfig(**THEORY, relax=False, candidates=600))  # c ≥ N: no pre-filter
    np.testing.assert_array_equal(np.asarray(same), np.asarray(full))
    idx, diag = skmm(key, x, n, config=SkMMConfig(**THEORY, relax=False, candidates=150))
    idx = np.asarray(idx)
    # the candidates: the 75 rows of largest leverage Σ_j Z_ij²/λ_j, then the first 75 others of a uniform permutation
    spectrum = sketched_spectrum(x)
    lam = np.where(np.asarray(spectrum.active), np.asarray(spectrum.eigenvalues), np.inf)
    top = np.argsort(-(np.asarray(spectrum.projections, np.float64) ** 2 / lam).sum(axis=1))[:75]
    permutation = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), 600))
    rows = np.sort(np.concatenate([top, [i for i in permutation if i not in set(top.tolist())][:75]]))
    np.testing.assert_array_equal(np.asarray(candidate_rows(jax.random.fold_in(key, 1), spectrum, 150)), rows)
    np.testing.assert_array_equal(np.asarray(candidate_rows(jax.random.fold_in(key, 1), spectrum, 150, leverage_share=0.0)),
                                  np.sort(permutation[:150]))  # share 0: the uniform filter
    assert diag["candidates"] == 150 and len(set(idx.tolist())) == n and set(idx.tolist()) <= set(rows.tolist())
    # the greedy on the candidate rows with the FULL pool's spectrum, by hand
    local = draw_greedy(spectrum._replace(projections=spectrum.projections[rows]), jnp.full((150,), 1 / 150), jnp.float32(0.2), n)
    np.testing.assert_array_equal(idx, rows[np.asarray(local)])
    # far better than a uniform subset on the greedy's own objective, close to the full greedy
    uniform = [float(subset_variance(jax.random.permutation(jax.random.key(s), 600)[:n], spectrum, 0.2)) for s in range(5)]
    variance, best = float(subset_variance(idx, spectrum, 0.2)), float(subset_variance(full, spectrum, 0.2))
    assert variance < min(uniform) and variance <= 1.1 * best
    with pytest.raises(ValueError, match="smaller than the coreset size"):
        skmm(key, x, n, config=SkMMConfig(**THEORY, relax=False, candidates=10))
    for relaxed in ({"relax": True}, {"c_s": 0.5}, {"draw": "sample"}):  # each solves the relaxation
        with pytest.raises(ValueError, match="needs relax=False"):
            SkMMConfig(candidates=100, **relaxed)
    with pytest.raises(ValueError, match="positive int"):
        SkMMConfig(relax=False, candidates=0)


def test_auto_ridge_asks_for_kappa_n_directions():
    # A decaying spectrum (λ_j ∝ 0.8^j over 24 directions): solve d(τ) = κ n by numpy
    # bisection in float64 and compare ρ = clip(n τ, 0.05, 1) with the jitted rule.
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((24, 24)))[0]
    x = (rng.standard_normal((3000, 24)) * 0.8 ** (np.arange(24) / 2)) @ basis.T
    spectrum = sketched_spectrum(x.astype(np.float32))
    lam = np.asarray(spectrum.eigenvalues, np.float64)

    def reference(n, kappa):
        lo, hi = np.log(0.05 / n), np.log(1.0 / n)
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.sum(lam / (lam + np.exp(mid))) > kappa * n else (lo, mid)
        return float(np.clip(n * np.exp(lo), 0.05, 1.0))

    values = []
    for n, kappa in ((2, 2.0), (4, 2.0), (6, 1.0), (8, 1.0), (3, 4.0), (40, 2.0)):
        got = float(auto_ridge(spectrum, n, directions_per_pick=kappa))
        assert got == pytest.approx(reference(n, kappa), rel=1e-4)
        values.append(got)
        if got not in (np.float32(0.05), np.float32(1.0)):  # inside the range the coreset is asked for exactly κ n directions
            assert float(effective_dimension(spectrum, got / n)) == pytest.approx(kappa * n, rel=1e-3)
    assert values[0] == np.float32(1.0) and values[-1] == np.float32(0.05)  # clipped: 2·2 < d(1/2); 2·40 > 24 directions
    assert 0.051 < values[1] < 0.99
    # ρ = "auto" in select uses it, and reports it.
    sel = select("skmm", 0, x.astype(np.float32), 4, ridge="auto", preprocess="none")
    library = float(auto_ridge(spectrum, 4))  # the library's κ
    assert library == pytest.approx(reference(4, 1.0), rel=1e-4)
    assert sel.diagnostics["ridge_auto"] and sel.diagnostics["ridge"] == pytest.approx(library, rel=1e-5)
    fixed = select("skmm", 0, x.astype(np.float32), 4, ridge=library, preprocess="none")
    np.testing.assert_array_equal(sel.indices, fixed.indices)
    for bad in ("big", 0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="ridge must be 'auto'"):
            SkMMConfig(ridge=bad)


def test_spectral_leverage_is_n_times_the_hat_diagonal():
    x = _low_rank_rows()
    spectrum = sketched_spectrum(x)
    assert bool(jnp.all(spectrum.active))
    x64 = x.astype(np.float64)
    hat = np.einsum("ij,jk,ik->i", x64, np.linalg.inv(x64.T @ x64), x64)  # x_iᵀ(XᵀX)⁻¹x_i
    leverage = np.asarray(spectral_leverage(spectrum))
    np.testing.assert_allclose(leverage, 600 * hat, rtol=2e-3)
    assert leverage.mean() == pytest.approx(24, rel=1e-3)  # Σ_i ℓ_i = N · rank


def _low_rank_rows(seed=3, num=600):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((num, 6)) @ rng.standard_normal((6, 24)) + 0.05 * rng.standard_normal((num, 24))).astype(np.float32)


def test_auto_candidate_count_follows_its_rule():
    # c = min(N, max(16 n, ⌊2³³ / (n m)⌋))
    assert auto_candidates(200_000, 2_000, 512) == 32_000  # 16 n: past the work budget
    assert auto_candidates(10**6, 10**4, 512) == 160_000
    assert auto_candidates(100_000, 500, 512) == 33_554  # ⌊2³³ / (n m)⌋ > 16 n
    assert auto_candidates(20_000, 500, 512) == 20_000  # N n m ≤ 2³³: every row, the exact greedy
    assert auto_candidates(600, 20, 24) == 600
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        auto_candidates(100, 0, 8)
    # the config applies the rule only where the pre-filter is valid (no relaxation)
    assert SkMMConfig().candidate_count(200_000, 2_000, 512) == 32_000
    assert SkMMConfig(candidates="all").candidate_count(200_000, 2_000, 512) == 200_000
    for relaxed in ({"relax": True}, {"c_s": 0.5}, {"draw": "sample"}):
        assert SkMMConfig(**relaxed).candidate_count(200_000, 2_000, 512) == 200_000
    assert SkMMConfig(candidates=5_000).candidate_count(200_000, 2_000, 512) == 5_000
    assert SkMMConfig(candidates=5_000).candidate_count(3_000, 2_000, 512) == 3_000


def test_auto_candidates_on_a_small_pool_is_the_exact_greedy_bit_for_bit():
    x, key, n = _low_rank_rows(), jax.random.key(4), 20
    auto, auto_diag = skmm(key, x, n)  # SkMMConfig(): N n m ≤ 2³³, so every row is a candidate
    exact, exact_diag = skmm(key, x, n, config=SkMMConfig(candidates="all"))
    spectrum = sketched_spectrum(preprocess_pool(jnp.asarray(x), "standardize-unit"))
    by_hand = draw_greedy(spectrum, jnp.full((600,), 1 / 600, jnp.float32), jnp.float32(1.0), n)  # the greedy over all rows
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(by_hand))
    np.testing.assert_array_equal(np.asarray(exact), np.asarray(by_hand))
    assert auto_diag["subset_variance"] == exact_diag["subset_variance"]
    assert (auto_diag["candidates"], auto_diag["candidates_auto"]) == (600, True)
    assert (exact_diag["candidates"], exact_diag["candidates_auto"]) == (600, False)


def test_auto_candidates_prefilter_past_the_budget_and_all_stays_exact(monkeypatch):
    select_module = importlib.import_module("skmm_jax.select")  # the package exports a function named select

    monkeypatch.setattr(select_module, "GREEDY_WORK", 0)  # every pool past the work budget: c = K n
    monkeypatch.setattr(select_module, "CANDIDATES_PER_PICK", 8)
    x, key, n = _low_rank_rows(), jax.random.key(4), 20
    auto, diag = skmm(key, x, n, config=SkMMConfig(**THEORY))
    given, given_diag = skmm(key, x, n, config=SkMMConfig(**THEORY, candidates=160))
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(given))
    assert (diag["candidates"], diag["candidates_auto"]) == (160, True) and (given_diag["candidates"], given_diag["candidates_auto"]) == (160, False)
    exact, exact_diag = skmm(key, x, n, config=SkMMConfig(**THEORY, candidates="all"))
    by_hand = draw_greedy(sketched_spectrum(jnp.asarray(x)), jnp.full((600,), 1 / 600, jnp.float32), jnp.float32(0.2), n)
    np.testing.assert_array_equal(np.asarray(exact), np.asarray(by_hand))
    assert (exact_diag["candidates"], exact_diag["candidates_auto"]) == (600, False)
    # with the relaxation "auto" keeps every row (the pre-filter is not valid there): same subset as "all"
    relaxed, relaxed_diag = skmm(key, x, n, config=SkMMConfig(**THEORY, c_s=2.0))
    relaxed_all, _ = skmm(key, x, n, config=SkMMConfig(**THEORY, c_s=2.0, candidates="all"))
    np.testing.assert_array_equal(np.asarray(relaxed), np.asarray(relaxed_all))
    assert (relaxed_diag["candidates"], relaxed_diag["candidates_auto"]) == (600, False)


@pytest.mark.parametrize("value", ["most", "ALL", None, 0, -3, 2.5, True])
def test_candidates_rejects_what_is_not_auto_all_or_a_count(value):
    with pytest.raises(ValueError, match=r"candidates must be 'auto' \(the count chosen from N, n and m\), 'all' \(every row: the exact greedy\) or a positive int, got"):
        SkMMConfig(candidates=value)


def test_subset_loss_is_the_relaxation_objective_at_the_indicator():
    x, _ = clusters()
    spec = sketched_spectrum(x)
    w = direction_weights(spec, "relative")
    idx = jnp.asarray([0, 5, 130, 200, 215, 219], jnp.int32)
    discrete = subset_loss(jnp.sum(spec.moments[idx], axis=0), jnp.float32(0.8) * spec.eigenvalues, w, 6)
    relaxed = moment_matching_loss(subset_weights(idx, len(x)), spec, jnp.float32(0.8), w)
    np.testing.assert_allclose(float(discrete), float(relaxed), rtol=1e-5)


def test_draw_dispatch_names_the_rule_and_needs_labels_for_balanced():
    x, _ = clusters()
    spec = sketched_spectrum(x)
    p = jnp.full((len(x),), 1 / len(x), jnp.float32)
    for rule in [r for r in DRAWS if not DRAW_RULES[r].needs_labels]:
        indices, _ = draw(rule, jax.random.key(0), spec, p, jnp.float32(1.0), 8, ridge=0.2, weighting="relative")
        assert len(set(np.asarray(indices).tolist())) == 8, rule
    for rule in ("balanced", "greedy-quota"):
        with pytest.raises(ValueError, match="needs labels"):
            draw(rule, jax.random.key(0), spec, p, jnp.float32(1.0), 8, ridge=0.2, weighting="relative")
    with pytest.raises(ValueError, match="draw must be one of"):
        draw("best", jax.random.key(0), spec, p, jnp.float32(1.0), 8, ridge=0.2, weighting="relative")


def test_class_quotas_exact_for_sizes_and_capped_for_weights():
    assert class_quotas(np.array([7, 2, 1]), 5).tolist() == [4, 1, 0]  # 3.5, 1, 0.5: the tie goes to class 0
    assert class_quotas(np.array([90, 90]), 9).tolist() == [5, 4]
    # float weights: n_c ∝ weight, never above the class size
    quotas = class_quotas(np.array([0.7, 0.2, 0.1], np.float32), 10, sizes=np.array([5, 10, 10]))
    assert quotas.tolist()[0] == 5 and quotas.sum() == 10
    rng = np.random.default_rng(0)
    for _ in range(20):
        sizes = rng.integers(1, 30, 6)
        n = int(rng.integers(1, sizes.sum() + 1))
        quotas = class_quotas(sizes, n)
        assert quotas.sum() == n and (quotas <= sizes).all()
        assert (np.abs(quotas - n * sizes / sizes.sum()) < 1).all()


def test_balanced_draw_meets_class_quotas():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    p = jnp.asarray(np.full(100, 0.01, np.float32))
    idx = np.asarray(draw_balanced(jax.random.key(0), p, jnp.asarray(labels), 10, 3))
    assert len(set(idx.tolist())) == 10
    assert np.bincount(labels[idx], minlength=3).tolist() == [5, 3, 2]


def test_sharded_solver_equals_single_device():
    x, _ = clusters(sizes=(64, 32, 20, 8, 4))  # N = 128, divisible by 4
    spec = sketched_spectrum(x)
    cfg = SolverConfig(optimizer="adam", max_steps=100)
    single = solve_moment_matching(spec, jnp.float32(1.2), 16, cfg)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded_x = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data", None)))
    sharded_spec = sketched_spectrum(sharded_x)
    assert len(sharded_spec.moments.sharding.device_set) == 4
    sharded = solve_moment_matching(sharded_spec, jnp.float32(1.2), 16, cfg)
    np.testing.assert_allclose(np.asarray(sharded.p), np.asarray(single.p), atol=1e-6)
    assert int(sharded.steps) == int(single.steps)


def test_skmm_diagnostics_and_subset():
    x, labels = clusters()
    idx, diag = skmm(jax.random.key(0), x, 15, config=SkMMConfig(**THEORY, relax=True, bisection_steps=6))
    idx = np.asarray(idx)
    assert len(set(idx.tolist())) == 15
    assert set(labels[idx].tolist()) == set(range(5))
    assert diag["c_s"] <= 1.0 and diag["subset_coverage"] > 0
    assert diag["effective_support"] >= 15 and len(diag["loss_curve"]) == diag["solver_steps"]


def test_skmm_without_the_relaxation_draws_the_same_greedy_subset():
    """The greedy draw uses p only for exact ties, so skipping the solves changes nothing."""
    x = np.asarray(jax.random.normal(jax.random.key(3), (120, 6)) * jnp.arange(1, 7, dtype=jnp.float32)[None, :])
    relaxed, _ = skmm(jax.random.key(0), x, 12, config=SkMMConfig(**THEORY, relax=True, bisection_steps=3))
    direct, diag = skmm(jax.random.key(0), x, 12, config=SkMMConfig(**THEORY, relax=False))
    np.testing.assert_array_equal(np.asarray(direct), np.asarray(relaxed))
    assert diag["relax"] is False and "c_s" not in diag and diag["subset_coverage"] > 0
    with pytest.raises(ValueError, match='relax=False needs draw="greedy"'):
        SkMMConfig(relax=False, draw="sample")


def test_skmm_core_composes_under_jit_and_vmap():
    """vmap over keys of the jitted core gives, key by key, what skmm() draws at the same
    c_S (κ = 1/c_S = 2 exactly), and different keys give different subsets."""
    x, _ = clusters()
    keys = jax.random.split(jax.random.key(0), 3)
    cfg = SkMMConfig(**THEORY, draw="sample", c_s=0.5)
    out = np.asarray(jax.vmap(lambda k: skmm_indices(k, jnp.asarray(x), 10, jnp.float32(2.0), cfg))(keys))
    assert out.shape == (3, 10)
    for key, row in zip(keys, out):
        alone, diag = skmm(key, x, 10, config=cfg)
        assert diag["coverage_required"] == 2.0
        np.testing.assert_array_equal(row, np.asarray(alone))
    assert len({tuple(row) for row in out.tolist()}) == 3


@pytest.mark.parametrize("method", sorted(METHODS))
def test_select_every_method(method):
    x, labels = clusters()
    options = {"bisection_steps": 4} if method == "skmm" else {}
    entry = METHODS[method]
    assert entry.name == method and entry.needs_labels == (method in DEEPCORE)
    if entry.needs_labels:
        options["labels"] = labels
    # The contract: (indices, diagnostics) from every entry, labels always accepted.
    indices, diagnostics = entry(jax.random.key(1), jnp.asarray(x), 12, **{"labels": labels, **options})
    assert isinstance(diagnostics, dict) and len(set(np.asarray(indices).tolist())) == 12
    result = select(method, jax.random.key(1), x, 12, **options)
    np.testing.assert_array_equal(result.indices, np.asarray(indices))
    assert result.indices.shape == (12,) and len(set(result.indices.tolist())) == 12
    assert 0 <= result.indices.min() and result.indices.max() < len(x)
    assert "subset_coverage" in result.diagnostics


@pytest.mark.parametrize("kind", PREPROCESSING)
def test_preprocess_pool_matches_numpy(kind):
    x = np.random.default_rng(4).standard_normal((50, 5)).astype(np.float32) * np.array([1, 10, 100, 0, 3], np.float32) + 7
    expected = x.astype(np.float64)
    if kind != "none" and kind != "unit":
        expected = expected - expected.mean(axis=0)
        if kind.startswith("standardize"):
            std = expected.std(axis=0)
            expected = expected / np.where(std > 1e-6 * (1 + np.abs(x.mean(axis=0))), std, 1.0)  # the constant column keeps scale 1
    if kind.endswith("unit"):
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(preprocess_pool(jnp.asarray(x), kind)), expected, rtol=1e-4, atol=1e-5)


def test_select_skmm_defaults_preprocess_then_greedy_without_the_relaxation():
    x = np.random.default_rng(5).standard_normal((80, 6)).astype(np.float32) * np.arange(1, 7, dtype=np.float32) + 3
    chosen = select("skmm", jax.random.key(0), x, 10)
    direct, diag = skmm(jax.random.key(0), x, 10)  # one set of defaults: SkMMConfig()
    by_hand, _ = skmm(jax.random.key(0), preprocess_pool(jnp.asarray(x), "standardize-unit"), 10, config=SkMMConfig(preprocess="none", relax=False, ridge=1.0))
    np.testing.assert_array_equal(chosen.indices, np.asarray(direct))
    np.testing.assert_array_equal(chosen.indices, np.asarray(by_hand))
    assert chosen.diagnostics["preprocess"] == SkMMConfig().preprocess == "standardize-unit" and "c_s" not in chosen.diagnostics
    assert {k: v for k, v in chosen.diagnostics.items() if k != "preprocess"} == diag
    assert not SkMMConfig().solves_relaxation
    # a draw that needs p, or a given c_S, brings the relaxation back
    assert "c_s" in select("skmm", jax.random.key(0), x, 10, draw="sample", bisection_steps=2).diagnostics
    assert select("skmm", jax.random.key(0), x, 10, c_s=2.0).diagnostics["c_s"] == 2.0
    with pytest.raises(ValueError, match="preprocess must be one of"):
        select("skmm", jax.random.key(0), x, 10, preprocess="whiten")


def test_select_sketches_wide_features():
    x = np.random.default_rng(0).standard_normal((60, 500)).astype(np.float32)
    result = select("uniform", jax.random.key(0), x, 5, sketch_kind="gaussian", sketch_dim=32)
    assert result.diagnostics["sketch"] == {"kind": "gaussian", "dim": 32}
    # The selector saw the sketch with fold_in(key, 0) and chose with fold_in(key, 1).
    from skmm_jax.sketch import make_sketch, sketch_rows

    sketched = sketch_rows(make_sketch("gaussian", jax.random.fold_in(jax.random.key(0), 0), 500, 32), x)
    direct = select("uniform", jax.random.fold_in(jax.random.key(0), 1), sketched, 5)
    np.testing.assert_array_equal(result.indices, direct.indices)
    assert result.diagnostics["subset_coverage"] == pytest.approx(direct.diagnostics["subset_coverage"], rel=1e-6)


def test_select_takes_your_own_selection_method():
    x = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)

    def first_rows(key, features, n):
        return jnp.arange(n)

    mine = SelectionMethod.from_indices("first-rows", first_rows)
    selection = select(mine, jax.random.key(0), x, 4)
    assert selection.indices.tolist() == [0, 1, 2, 3] and selection.method == "first-rows"
    with pytest.raises(TypeError, match="SelectionMethod.from_indices"):
        select(first_rows, jax.random.key(0), x, 4)

    def with_labels(key, features, n, *, labels, progress, **options):
        return jnp.argsort(-jnp.asarray(labels))[:n], {"saw_labels": True}

    labelled = SelectionMethod("by-label", with_labels, needs_labels=True)
    with pytest.raises(ValueError, match="'by-label' needs labels"):
        select(labelled, jax.random.key(0), x, 4)
    labels = np.arange(60) % 7
    selection = select(labelled, jax.random.key(0), x, 3, labels=labels)
    assert selection.diagnostics["saw_labels"] and (labels[selection.indices] == 6).all()


@pytest.mark.parametrize(
    "features,n,message",
    [
        (np.ones((10, 3), np.float32), 11, "0 < n <= N"),
        (np.ones((10, 3), np.float32), 0, "0 < n <= N"),
        (np.ones(10, np.float32), 2, "2-D"),
        (np.ones((10, 3), np.int32), 2, "floating"),
        (np.where(np.arange(30).reshape(10, 3) == 7, np.nan, 1.0).astype(np.float32), 2, "rows [2]"),
    ],
)
def test_select_errors(features, n, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        select("uniform", jax.random.key(0), features, n)


def test_select_rejects_unknown_method_and_bad_config():
    x = np.ones((10, 3), np.float32)
    with pytest.raises(ValueError, match="unknown method"):
        select("nope", jax.random.key(0), x, 2)
    with pytest.raises(ValueError, match="draw must be one of"):
        SkMMConfig(draw="best")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        SolverConfig(optimizer="lbfgs")


def test_sharded_greedy_draw_equals_single_device():
    x, _ = clusters(sizes=(64, 32, 20, 8, 4))
    p = jnp.full((128,), 1 / 128, jnp.float32)
    single = draw_greedy(sketched_spectrum(x), p, jnp.float32(0.2), 12)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded_x = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data", None)))
    sharded_p = jax.device_put(p, NamedSharding(mesh, P("data")))
    spectrum = sketched_spectrum(sharded_x)
    sharded = draw_greedy(spectrum, sharded_p, jnp.float32(0.2), 12)
    assert np.asarray(sharded).tolist() == np.asarray(single).tolist()
    # Each step communicates O(m): the compiled loop gathers no [N, ·] operand (row `best` is
    # a masked reduction, not a dynamic slice of the sharded matrix).
    hlo = draw_greedy.lower(spectrum, sharded_p, jnp.float32(0.2), 12).compile().as_text()
    gathers = [line for line in hlo.splitlines() if "all-gather" in line and "=" in line]
    assert not [g for g in gathers if "[128," in g or "[128]" in g], gathers


def test_a_registered_draw_rule_runs_through_skmm_and_select():
    """A new draw rule is one DrawRule and one registration; what it declares (uses the
    relaxed p, needs labels) decides the relax default and the label check."""
    from skmm_jax.draw import DRAW_RULES, DrawRule, register_draw_rule

    def first_rows(key, spectrum, p, coverage, n, **_):
        return jnp.arange(n, dtype=jnp.int32), jnp.int32(0)

    def heaviest(key, spectrum, p, coverage, n, *, labels, **_):
        return jax.lax.top_k(p + 1e-3 * jnp.asarray(labels, jnp.float32), n)[1].astype(jnp.int32), jnp.int32(0)

    register_draw_rule(DrawRule("first-rows", first_rows, uses_relaxation=False))
    register_draw_rule(DrawRule("heaviest", heaviest, needs_labels=True))
    try:
        x, labels = clusters()
        chosen = select("skmm", jax.random.key(0), x, 6, draw="first-rows")
        assert chosen.indices.tolist() == list(range(6)) and "c_s" not in chosen.diagnostics
        assert chosen.diagnostics["draw"] == "first-rows"
        assert not SkMMConfig(draw="first-rows").solves_relaxation and SkMMConfig(draw="heaviest").solves_relaxation
        with pytest.raises(ValueError, match="needs labels"):
            select("skmm", jax.random.key(0), x, 6, draw="heaviest", bisection_steps=1)
        relaxed = select("skmm", jax.random.key(0), x, 6, draw="heaviest", labels=labels, bisection_steps=1)
        assert "c_s" in relaxed.diagnostics and len(set(relaxed.indices.tolist())) == 6
        with pytest.raises(ValueError, match="already registered"):
            register_draw_rule(DrawRule("first-rows", first_rows))
    finally:
        DRAW_RULES.pop("first-rows", None)
        DRAW_RULES.pop("heaviest", None)
    with pytest.raises(ValueError, match="draw must be one of"):
        SkMMConfig(draw="first-rows")
