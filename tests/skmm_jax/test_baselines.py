"""Baseline selectors: the selection contract of their registry entries, each rule
against a brute-force reference, and the leverage-score identities."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skmm_jax.baselines import (
    BASELINES,
    adaptive_sampling,
    covering_radius,
    leverage_scores,
    ridge_leverage,
    ridge_leverage_scores,
    truncated_leverage,
    uniform,
)

NAMES = list(BASELINES)


def gaussian(seed, num_samples, dim, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((num_samples, dim)) * scale).astype(np.float32)


def low_rank(seed, num_samples, dim, rank):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((num_samples, rank)) @ rng.standard_normal((rank, dim))).astype(np.float32)


def select(name, seed, features, n, **options):
    indices, diagnostics = BASELINES[name](jax.random.key(seed), features, n, **options)
    assert diagnostics == {}
    return np.asarray(indices)


# ----------------------------------------------------------------------------- contract


def test_registry_names():
    assert set(BASELINES) == {"uniform", "herding", "kcenter", "adaptive", "leverage", "ridge-leverage"}
    for name, entry in BASELINES.items():
        assert entry.name == name and not entry.needs_labels


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [9, 40])
def test_returns_n_distinct_int32_indices_deterministically(name, n):
    features = gaussian(0, 40, 6)
    first, _ = BASELINES[name](jax.random.key(3), features, n, labels=np.zeros(40, np.int32))  # labels are ignored
    assert first.dtype == jnp.int32 and first.shape == (n,)
    first = np.asarray(first)
    assert len(set(first.tolist())) == n
    assert first.min() >= 0 and first.max() < 40
    np.testing.assert_array_equal(first, select(name, 3, features, n))


@pytest.mark.parametrize("name", ["uniform", "kcenter", "adaptive", "leverage", "ridge-leverage"])
def test_random_selectors_depend_on_key(name):
    """The same key gives the same indices, every one of four keys a different draw."""
    features = gaussian(0, 40, 6)
    draws = [tuple(select(name, seed, features, 9).tolist()) for seed in range(4)]
    again = [tuple(select(name, seed, features, 9).tolist()) for seed in range(4)]
    assert draws == again
    assert len(set(draws)) == 4, draws
    if name == "uniform":  # the n largest of N Gumbel draws from the key (Gumbel top-k with equal weights)
        for seed, drawn in enumerate(draws):
            gumbel = np.asarray(jax.random.gumbel(jax.random.key(seed), (40,), jnp.float32))
            assert drawn == tuple(np.argsort(-gumbel, kind="stable")[:9].tolist())


@pytest.mark.parametrize("name", ["herding", "kcenter", "adaptive", "ridge-leverage"])
def test_composes_under_outer_jit_with_static_n(name):
    features = gaussian(1, 40, 6)
    selector = BASELINES[name]
    jitted = jax.jit(lambda key, x: selector(key, x, 9)[0])
    np.testing.assert_array_equal(np.asarray(jitted(jax.random.key(5), features)), select(name, 5, features, 9))


@pytest.mark.parametrize("name", NAMES)
def test_validation(name):
    selector, key, features = BASELINES[name], jax.random.key(0), gaussian(0, 10, 3)
    for bad_n in (0, -1, 11):
        with pytest.raises(ValueError, match=f"n = {bad_n}"):
            selector(key, features, bad_n)
    with pytest.raises(TypeError, match="Python int"):
        selector(key, features, 2.0)
    with pytest.raises(ValueError, match=r"2-D.*\(10,\)"):
        selector(key, features[:, 0], 2)
    with pytest.raises(ValueError, match=r"2-D.*\(2, 5, 3\)"):
        selector(key, np.zeros((2, 5, 3), np.float32), 2)
    with pytest.raises(ValueError, match="floating point.*int32"):
        selector(key, np.ones((10, 3), np.int32), 2)
    with pytest.raises(ValueError, match="at least one row and one column"):
        selector(key, np.zeros((10, 0), np.float32), 2)


def test_option_validation():
    key, features = jax.random.key(0), gaussian(0, 10, 3)
    for bad_rank in (0, 4, 1.5):
        with pytest.raises(ValueError, match=rf"rank.*min\(N, d\) = 3.*{bad_rank}"):
            truncated_leverage(key, features, 2, rank=bad_rank)
        with pytest.raises(ValueError, match="rank"):
            leverage_scores(features, rank=bad_rank)
    for bad_alpha in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            ridge_leverage(key, features, 2, alpha=bad_alpha)
        with pytest.raises(ValueError, match="alpha"):
            ridge_leverage_scores(features, bad_alpha)
    with pytest.raises(ValueError, match="indices"):
        covering_radius(features, np.zeros((0,), np.int32))


def test_uniform_is_uniform():
    draws = jax.vmap(lambda k: uniform(k, jnp.zeros((5, 1), jnp.float32), 2))(jax.random.split(jax.random.key(0), 4000))
    counts = np.bincount(np.asarray(draws).ravel(), minlength=5) / 4000
    # Each index is in a 2-of-5 subset with probability 0.4; stderr ≈ 0.008.
    np.testing.assert_allclose(counts, 0.4, atol=0.035)


# ----------------------------------------------------------------------------- herding


def herding_reference(features, n):
    x = features.astype(np.float64)
    mean, total, chosen = x.mean(axis=0), np.zeros(x.shape[1]), []
    for t in range(n):
        cost = np.linalg.norm(mean[None, :] - (total[None, :] + x) / (t + 1), axis=1)
        cost[chosen] = np.inf
        chosen.append(int(np.argmin(cost)))
        total += x[chosen[-1]]
    return np.array(chosen)


def test_herding_first_pick_is_nearest_the_mean():
    features = gaussian(2, 200, 5) + np.float32(3.0)
    nearest = np.argmin(np.linalg.norm(features - features.mean(axis=0, keepdims=True), axis=1))
    assert select("herding", 0, features, 1)[0] == nearest


@pytest.mark.parametrize("seed", range(3))
def test_herding_matches_brute_force(seed):
    features = gaussian(seed, 12, 3)
    expected = herding_reference(features, 12)
    np.testing.assert_array_equal(select("herding", 0, features, 12), expected)
    # Deterministic: the key is ignored.
    np.testing.assert_array_equal(select("herding", 99, features, 12), expected)


def test_herding_tracks_the_mean_better_than_uniform():
    features = gaussian(3, 500, 8)
    mean = features.mean(axis=0)
    herded = np.linalg.norm(features[select("herding", 0, features, 20)].mean(axis=0) - mean)
    uniform_errors = [
        np.linalg.norm(features[select("uniform", s, features, 20)].mean(axis=0) - mean) for s in range(5)
    ]
    assert herded < 0.2 * min(uniform_errors)


# ----------------------------------------------------------------------------- k-center


def farthest_point_reference(features, first, n):
    x = features.astype(np.float64)
    chosen = [first]
    min_dist = np.linalg.norm(x - x[first], axis=1)
    for _ in range(n - 1):
        masked = min_dist.copy()
        masked[chosen] = -1
        chosen.append(int(np.argmax(masked)))
        min_dist = np.minimum(min_dist, np.linalg.norm(x - x[chosen[-1]], axis=1))
    return np.array(chosen)


def radius_reference(features, indices):
    x = features.astype(np.float64)
    return np.linalg.norm(x[:, None, :] - x[None, list(indices), :], axis=2).min(axis=1).max()


@pytest.mark.parametrize("seed", range(3))
def test_kcenter_matches_farthest_point_traversal(seed):
    features = gaussian(seed, 60, 4, scale=5.0) + np.float32(100.0)  # offset: float32 distances must stay exact
    chosen = select("kcenter", seed, features, 15)
    np.testing.assert_array_equal(chosen, farthest_point_reference(features, chosen[0], 15))


def test_kcenter_first_center_is_random():
    firsts = {int(select("kcenter", s, gaussian(0, 40, 6), 1)[0]) for s in range(12)}
    assert len(firsts) >= 6


@pytest.mark.parametrize("seed", range(3))
def test_kcenter_radius_is_within_twice_optimal(seed):
    features = gaussian(seed, 10, 2)
    optimal = min(radius_reference(features, subset) for subset in itertools.combinations(range(10), 3))
    for key_seed in range(4):
        greedy = float(covering_radius(features, select("kcenter", key_seed, features, 3)))
        assert optimal <= greedy + 1e-5
        assert greedy <= 2 * optimal + 1e-5


def test_kcenter_handles_duplicate_rows():
    features = np.repeat(gaussian(0, 3, 2), 4, axis=0)  # 3 distinct points, 12 rows
    chosen = select("kcenter", 0, features, 12)
    assert len(set(chosen.tolist())) == 12
    # The first 3 centers are the 3 distinct points (distance 0 covers the copies).
    assert len({tuple(row) for row in features[chosen[:3]]}) == 3


def test_covering_radius_matches_brute_force():
    features = gaussian(4, 300, 5) + np.float32(50.0)
    indices = np.array([3, 17, 42, 99, 250], np.int32)
    expected = radius_reference(features, indices)
    np.testing.assert_allclose(float(covering_radius(features, indices)), expected, rtol=1e-4)
    assert float(covering_radius(features, np.arange(300))) < 1e-2  # every row is a center


# ----------------------------------------------------------------------------- adaptive


@pytest.mark.parametrize("seed", range(3))
def test_adaptive_first_rank_picks_are_independent(seed):
    features = low_rank(seed, 80, 10, 4)
    # 60 large rows along one direction hold ~all of ‖X‖_F²: sampling ∝ ‖x_i‖² would
    # keep drawing them; after one, adaptive sampling gives them zero residual.
    features[:60] = np.float32(30.0) * np.linspace(0.5, 1.5, 60, dtype=np.float32)[:, None] * features[60][None, :]
    chosen = select("adaptive", seed, features, 12)  # n > rank: the rest are filled uniformly
    # rtol: float32 rounding makes the collinear rows independent at the 1e-7 level.
    assert np.linalg.matrix_rank(features[chosen[:4]].astype(np.float64), rtol=1e-4) == 4
    assert len(set(chosen.tolist())) == 12


def test_adaptive_skips_zero_rows_while_mass_remains():
    features = np.concatenate([gaussian(0, 20, 6), np.zeros((20, 6), np.float32)])
    for seed in range(5):
        chosen = select("adaptive", seed, features, 6)
        assert chosen.max() < 20
        assert len(set(select("adaptive", seed, features, 40).tolist())) == 40


def test_adaptive_first_pick_is_proportional_to_squared_norm():
    sq_norms = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    features = (np.sqrt(sq_norms)[:, None] * np.linalg.qr(gaussian(0, 5, 5))[0]).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), 4000)
    first = np.asarray(jax.vmap(lambda k: adaptive_sampling(k, features, 1))(keys))[:, 0]
    expected = sq_norms / sq_norms.sum()
    stderr = np.sqrt(expected * (1 - expected) / len(keys))
    np.testing.assert_array_less(np.abs(np.bincount(first, minlength=5) / len(keys) - expected), 4 * stderr)


# ----------------------------------------------------------------------------- leverage


def numpy_leverage(features, rank):
    u = np.linalg.svd(features.astype(np.float64), full_matrices=False)[0]
    return np.sum(u[:, :rank] ** 2, axis=1)


def test_leverage_matches_numpy_and_sums_to_rank():
    features = gaussian(5, 300, 12, scale=7.0)
    full = np.asarray(leverage_scores(features))
    np.testing.assert_allclose(full, numpy_leverage(features, 12), atol=2e-6)
    np.testing.assert_allclose(full.sum(), 12, rtol=1e-5)
    for rank in (1, 5):
        truncated = np.asarray(leverage_scores(features, rank=rank))
        np.testing.assert_allclose(truncated, numpy_leverage(features, rank), atol=2e-6)
        np.testing.assert_allclose(truncated.sum(), rank, rtol=1e-5)
    assert full.min() >= 0 and full.max() <= 1


def test_leverage_uses_numerical_rank():
    features = low_rank(6, 200, 16, 5)
    scores = np.asarray(leverage_scores(features))
    np.testing.assert_allclose(scores.sum(), 5, rtol=1e-4)
    np.testing.assert_allclose(scores, numpy_leverage(features, 5), atol=1e-5)
    # A cap above the numerical rank does not add noise directions.
    np.testing.assert_allclose(np.asarray(leverage_scores(features, rank=10)), scores, atol=1e-6)


def test_leverage_is_accurate_for_ill_conditioned_features():
    # Condition number 1e4 (above the numerical-rank cutoff 400·eps): XᵀX would have 1e8, beyond float32.
    rng = np.random.default_rng(7)
    q = np.linalg.qr(rng.standard_normal((400, 6)))[0]
    features = (q * np.logspace(0, -4, 6)[None, :] @ np.linalg.qr(rng.standard_normal((6, 6)))[0]).astype(np.float32)
    np.testing.assert_allclose(np.asarray(leverage_scores(features)), numpy_leverage(features, 6), atol=1e-4)


def test_ridge_leverage_identities():
    features = gaussian(8, 250, 10, scale=2.0)
    x = features.astype(np.float64)
    singular_values = np.linalg.svd(x, compute_uv=False)
    for alpha in (1.0, 100.0, 1e4):
        scores = np.asarray(ridge_leverage_scores(features, alpha))
        reference = np.einsum("ij,jk,ik->i", x, np.linalg.inv(x.T @ x + alpha * np.eye(10)), x)
        np.testing.assert_allclose(scores, reference, atol=2e-6)
        effective_dim = np.sum(singular_values**2 / (singular_values**2 + alpha))
        np.testing.assert_allclose(scores.sum(), effective_dim, rtol=1e-5)
        assert scores.sum() <= 10 and scores.min() >= 0 and scores.max() <= 1
    # α → 0 recovers the plain leverage scores.
    tiny_ridge = np.asarray(ridge_leverage_scores(features, 1e-6))
    np.testing.assert_allclose(tiny_ridge, np.asarray(leverage_scores(features)), atol=1e-6)


def test_ridge_default_alpha_is_frobenius_over_n():
    features = gaussian(0, 40, 6)  # the contract tests' shape and n: reuses their compilation
    alpha = float(np.sum(features.astype(np.float64) ** 2) / 9)
    explicit = select("ridge-leverage", 0, features, 9, alpha=alpha)
    np.testing.assert_array_equal(select("ridge-leverage", 0, features, 9), explicit)
    assert np.asarray(ridge_leverage_scores(features, alpha)).sum() <= 9  # effective dimension ≤ n


def outlier_features():
    """199 rows in the span of the first 3 axes, plus row 57 = 30·e₄ (leverage 1)."""
    features = np.zeros((200, 4), np.float32)
    features[:, :3] = gaussian(10, 200, 3)
    features[57] = [0.0, 0.0, 0.0, 30.0]
    return features


@pytest.mark.parametrize("name", ["leverage", "ridge-leverage"])
def test_samplers_always_draw_the_outlier(name):
    features = outlier_features()
    assert np.asarray(leverage_scores(features))[57] == pytest.approx(1.0, abs=1e-6)
    for seed in range(10):
        assert 57 in select(name, seed, features, 30)
    # Uniform draws 30 of 200 rows: it misses row 57 most of the time.
    assert sum(57 in select("uniform", seed, features, 30) for seed in range(10)) < 6


def test_truncated_leverage_draws_zero_leverage_rows_last():
    features = np.concatenate([gaussian(11, 30, 5), np.zeros((10, 5), np.float32)])
    for seed in range(5):
        chosen = select("leverage", seed, features, 40)
        assert chosen[:30].max() < 30 and chosen[30:].min() >= 30


def test_truncated_leverage_default_rank_is_min_n_and_rank():
    # With n = 2 and rank = None only the top-2 singular directions count: rows along
    # the weakest axis have zero rank-2 leverage and are never drawn first.
    features = np.zeros((30, 3), np.float32)
    features[:10, 0], features[10:20, 1], features[20:, 2] = 5.0, 3.0, 1.0
    for seed in range(5):
        assert select("leverage", seed, features, 2).max() < 20
    assert any(select("leverage", seed, features, 2, rank=3).max() >= 20 for seed in range(10))
