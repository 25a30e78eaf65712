"""DeepCore-family selectors: the common contract, each score against a numpy or
autodiff reference, the scores' behaviour on mislabeled / ambiguous points, k-center
in KL space, and the labels plumbing through ``select`` and the CLI."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from typer.testing import CliRunner

from skmm_jax import deepcore
from skmm_jax.cli import app as skmm_app
from skmm_jax.deepcore import (
    DEEPCORE,
    el2n_scores,
    forgetting_scores,
    grand_scores,
    kcenter_symmetric_kl,
    symmetric_kl,
    train_proxy,
    uncertainty_scores,
)
from skmm_jax.methods import SelectionMethod
from skmm_jax.sampling import class_quotas
from skmm_jax.select import METHODS, select
from skmm_jax.train.probe import LinearProbeConfig, standardize

PROXY = LinearProbeConfig(epochs=8, batch_size=16, learning_rate=0.05)


def ambiguous_pool():
    """Two blobs at x = ±3 (labels 0 / 1), 3 + 3 points deep inside the other blob
    with the wrong label, and 6 points on the boundary x = 0 with alternating labels."""
    rng = np.random.default_rng(0)
    blob0 = rng.normal((-3.0, 0.0, 0.0), 0.7, (84, 3))
    blob1 = rng.normal((3.0, 0.0, 0.0), 0.7, (84, 3))
    mislabeled = np.concatenate([rng.normal((-3.0, 0.0, 0.0), 0.3, (3, 3)), rng.normal((3.0, 0.0, 0.0), 0.3, (3, 3))])
    boundary = np.stack([np.zeros(6), np.linspace(-1.5, 1.5, 6), np.zeros(6)], axis=1)
    x = np.concatenate([blob0, blob1, mislabeled, boundary]).astype(np.float32)
    y = np.array([0] * 84 + [1] * 84 + [1, 1, 1, 0, 0, 0] + [0, 1] * 3)
    return x, y, set(range(168, 174)), set(range(174, 180))


def sym_kl_np(p, q):
    p, q = np.maximum(p, 1e-7), np.maximum(q, 1e-7)
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    return np.sum((p - q) * (np.log(p) - np.log(q)), axis=-1)


def kl_covering_radius(probabilities, indices):
    return max(min(sym_kl_np(p, probabilities[j]) for j in indices) for p in probabilities)


# ----------------------------------------------------------------------------- contract


def test_every_method_returns_distinct_indices_deterministically():
    x, y, _, _ = ambiguous_pool()
    assert set(DEEPCORE) <= set(METHODS)
    for name, selector in DEEPCORE.items():
        assert selector.needs_labels and METHODS[name] is selector
        first, diagnostics = selector(jax.random.key(4), x, 12, labels=y, proxy=PROXY)
        again, _ = selector(jax.random.key(4), x, 12, labels=y, proxy=PROXY)
        assert diagnostics == {}
        assert first.dtype == jnp.int32 and first.shape == (12,), name
        indices = np.asarray(first)
        assert len(set(indices.tolist())) == 12 and indices.min() >= 0 and indices.max() < len(x), name
        np.testing.assert_array_equal(indices, np.asarray(again), err_msg=name)


def test_proxy_records_the_predictions_of_its_final_head_and_learns():
    x, y, _, _ = ambiguous_pool()
    result = train_proxy(jax.random.key(0), x, y, PROXY)
    assert result.probabilities.shape == (PROXY.epochs, len(x), 2) and result.losses.shape == (PROXY.epochs,)
    standardized = standardize(jnp.asarray(x), result.probe.mean, result.probe.scale)
    final = jax.nn.softmax(standardized @ result.probe.kernel + result.probe.bias[None, :], axis=-1)
    np.testing.assert_allclose(np.asarray(result.probabilities[-1]), np.asarray(final), atol=1e-5)
    assert float(result.losses[0]) < np.log(2) and float(result.losses[-1]) < 0.5 * np.log(2)  # from ln 2 at W = 0
    assert (np.asarray(final).argmax(axis=1)[:168] == y[:168]).all()  # the clean blobs are learned
    again = train_proxy(jax.random.key(0), x, y, PROXY)
    np.testing.assert_array_equal(np.asarray(result.probabilities), np.asarray(again.probabilities))


# ----------------------------------------------------------------------------- scores vs references


def test_grand_closed_form_equals_autodiff_gradient_norms():
    x, y, _, _ = ambiguous_pool()
    result = train_proxy(jax.random.key(1), x, y, PROXY)
    standardized = standardize(jnp.asarray(x), result.probe.mean, result.probe.scale)

    def loss(head, row, label):
        kernel, bias = head
        logits = row @ kernel + bias
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, label)

    head = (result.probe.kernel, result.probe.bias)
    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(head, standardized, jnp.asarray(y))
    norms = jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(len(x), -1)), axis=1) for g in jax.tree.leaves(grads)))
    closed_form = grand_scores(result.probabilities[-1:], jnp.asarray(y), standardized)
    np.testing.assert_allclose(np.asarray(closed_form), np.asarray(norms), rtol=1e-4, atol=1e-6)


def test_forgetting_counts_match_a_numpy_loop():
    rng = np.random.default_rng(2)
    epochs, num, classes = 7, 60, 3
    history = rng.dirichlet(np.ones(classes), size=(epochs, num)).astype(np.float32)
    labels = rng.integers(0, classes, num)
    history[:, :5] = np.eye(classes, dtype=np.float32)[(labels[:5] + 1) % classes]  # never learned
    expected = np.zeros(num)
    for i in range(num):
        correct = [history[t, i].argmax() == labels[i] for t in range(epochs)]
        events = sum(correct[t] and not correct[t + 1] for t in range(epochs - 1))
        expected[i] = events if any(correct) else epochs
    assert expected.max() >= 2 and (expected[:5] == epochs).all()
    np.testing.assert_array_equal(np.asarray(forgetting_scores(jnp.asarray(history), jnp.asarray(labels))), expected)


def test_el2n_and_uncertainty_scores_match_numpy_formulas():
    rng = np.random.default_rng(3)
    history = rng.dirichlet(np.ones(4) * 0.5, size=(3, 40)).astype(np.float32)
    labels = rng.integers(0, 4, 40)
    expected_el2n = np.mean(np.linalg.norm(history - np.eye(4)[labels][None], axis=-1), axis=0)
    el2n = el2n_scores(jnp.asarray(history), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(el2n), expected_el2n, rtol=1e-5)
    p = history[-1]
    top = np.sort(p, axis=1)[:, ::-1]
    expected = {
        "entropy": -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1),
        "margin": 1 - (top[:, 0] - top[:, 1]),
        "least-confidence": 1 - top[:, 0],
    }
    for score, values in expected.items():
        np.testing.assert_allclose(np.asarray(uncertainty_scores(jnp.asarray(p), score)), values, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- behaviour


def test_hard_scores_pick_mislabeled_and_uncertainty_picks_the_boundary():
    x, y, mislabeled, boundary = ambiguous_pool()
    key = jax.random.key(5)

    def picks(name, n):
        return set(np.asarray(DEEPCORE[name](key, x, n, labels=y, proxy=PROXY)[0]).tolist())

    # Mislabeled points are confidently wrong (error ≈ √2); boundary ones ≈ 0.7.
    assert picks("el2n", 6) == mislabeled
    assert picks("grand", 6) == mislabeled
    # Confidently wrong is certain; p ≈ ½ on the boundary is the most uncertain.
    for name in ("entropy", "margin", "least-confidence"):
        assert picks(name, 6) == boundary, name
    # Clean blob points are learned at once and never forgotten.
    assert picks("forgetting", 6) <= mislabeled | boundary


def test_class_balanced_keeps_the_top_of_each_class_in_proportion():
    x, y, _, _ = ambiguous_pool()
    indices = np.asarray(deepcore.el2n(jax.random.key(5), x, 9, labels=y, proxy=PROXY, class_balanced=True))
    # 90 + 90 samples: 4.5 + 4.5 slots, the tied remainder goes to the lower class.
    assert np.bincount(y[indices], minlength=2).tolist() == [5, 4]
    # The rule on given scores: per-class top quota, quotas by largest remainders.
    rng = np.random.default_rng(6)
    labels = np.array([0] * 7 + [1] * 2 + [2] * 1)
    assert class_quotas(np.bincount(labels), 5).tolist() == [4, 1, 0]
    n = 17  # static: one compilation
    for trial in range(5):
        labels = rng.integers(0, 4, 50)
        quotas = class_quotas(np.bincount(labels, minlength=4), n)
        assert quotas.sum() == n and (quotas <= np.bincount(labels, minlength=4)).all()
        scores = rng.permutation(50).astype(np.float32)
        kept = deepcore._top_scores_per_class(
            jax.random.key(trial), jnp.asarray(scores), jnp.asarray(labels, jnp.int32), jnp.asarray(quotas), n
        )
        kept = np.asarray(kept)
        expected = set()
        for c in range(4):
            members = np.flatnonzero(labels == c)
            expected |= set(members[np.argsort(-scores[members])][: quotas[c]].tolist())
        assert set(kept.tolist()) == expected and (np.diff(scores[kept]) < 0).all()


def test_kcenter_in_kl_space_matches_brute_force_greedy():
    probabilities = np.random.default_rng(7).dirichlet(np.ones(5), size=80).astype(np.float32)
    picked = np.asarray(kcenter_symmetric_kl(jax.random.key(0), jnp.asarray(probabilities), 10))
    nearest = sym_kl_np(probabilities, probabilities[picked[0]])
    for t in range(1, 10):
        masked = nearest.copy()
        masked[picked[:t]] = -1
        assert picked[t] == masked.argmax(), t
        nearest = np.minimum(nearest, sym_kl_np(probabilities, probabilities[picked[t]]))
    divergence = symmetric_kl(jnp.asarray(probabilities), jnp.asarray(probabilities[3]))
    np.testing.assert_allclose(np.asarray(divergence), sym_kl_np(probabilities, probabilities[3]), rtol=1e-4, atol=1e-6)


def test_kcenter_in_kl_space_covers_small_clusters_that_uniform_misses():
    rng = np.random.default_rng(8)
    sizes = (70, 20, 6, 2)
    # Predictions clustered around four confident class profiles, one tiny cluster.
    profiles = np.full((4, 4), 0.5) + np.eye(4) * 30
    probabilities = np.concatenate([rng.dirichlet(a, size=s) for a, s in zip(profiles, sizes)]).astype(np.float32)
    cluster = np.repeat(np.arange(4), sizes)
    picked = np.asarray(kcenter_symmetric_kl(jax.random.key(9), jnp.asarray(probabilities), 4))
    assert set(cluster[picked].tolist()) == {0, 1, 2, 3}
    uniform_radii = [kl_covering_radius(probabilities, rng.choice(len(cluster), 4, replace=False)) for _ in range(7)]
    assert kl_covering_radius(probabilities, picked) < 0.5 * np.median(uniform_radii)


# ----------------------------------------------------------------------------- errors and plumbing


def test_bad_inputs_raise_clear_errors():
    x, y, _, _ = ambiguous_pool()
    cases = [
        (dict(labels=y[:-1]), "shape"),
        (dict(labels=np.where(np.arange(len(y)) == 7, -1, y)), "non-negative"),
        (dict(labels=y.astype(np.float32)), "integer dtype"),
        (dict(labels=np.zeros_like(y)), "at least 2 classes"),
        (dict(labels=None), "labels are required"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            deepcore.el2n(jax.random.key(0), x, 5, **kwargs)
    with pytest.raises(ValueError, match="0 < n <= N"):
        deepcore.margin(jax.random.key(0), x, len(x) + 1, labels=y)
    with pytest.raises(ValueError, match="score must be one of"):
        deepcore.uncertainty(jax.random.key(0), x, 5, labels=y, score="variance")
    with pytest.raises(ValueError, match="learning_rate"):
        LinearProbeConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        LinearProbeConfig(epochs=0)


def test_select_passes_labels_and_requires_them():
    x, y, _, _ = ambiguous_pool()
    key = jax.random.key(10)
    with pytest.raises(ValueError, match="method 'el2n' needs labels"):
        select("el2n", key, x, 5)
    with pytest.raises(ValueError, match="needs labels"):
        select(SelectionMethod.from_indices("my-grand", deepcore.grand, needs_labels=True), key, x, 5)
    selection = select("el2n", key, x, 5, labels=y, proxy=PROXY)
    np.testing.assert_array_equal(selection.indices, np.asarray(deepcore.el2n(key, x, 5, labels=y, proxy=PROXY)))
    assert selection.method == "el2n" and "subset_coverage" in selection.diagnostics


runner = CliRunner()


def test_select_command_with_labels_end_to_end(tmp_path: Path):
    x, y, _, _ = ambiguous_pool()
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "yf.npy", y.astype(np.float32))
    out = tmp_path / "sel.json"
    base = ["select", "--features", str(tmp_path / "X.npy"), "--n", "7", "--method", "el2n", "--seed", "2"]
    base += ["--out", str(out)]
    result = runner.invoke(skmm_app, [*base, "--labels", str(tmp_path / "y.npy")])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["method"] == "el2n" and payload["n"] == 7 and len(set(payload["indices"])) == 7
    assert payload["indices"] == np.asarray(deepcore.el2n(jax.random.key(2), x, 7, labels=y)).tolist()
    out.unlink()
    for extra, message in (([], "--labels must be an"), (["--labels", str(tmp_path / "yf.npy")], "integer dtype")):
        result = runner.invoke(skmm_app, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
        assert not out.exists()
