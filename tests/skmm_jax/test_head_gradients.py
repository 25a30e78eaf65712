"""Pseudo-label gradient features of a linear head: NumPy references, the Kronecker sketch
against the dense Γ_C ⊗ Γ_d, the three pseudo-label sources, SkMM's option, bad input."""

import jax
import numpy as np
import pytest

from skmm_jax.head_gradients import (
    PseudoLabelGradientConfig,
    head_gradient_rows,
    head_gradient_sketch,
    pseudo_label_gradients,
    sketch_head_gradients,
)
from skmm_jax.select import SkMMConfig, select, skmm_config

pytestmark = pytest.mark.usefixtures("exact_matmuls")


def blobs(seed=0, per=(25, 15, 10), dim=6):
    rng = np.random.default_rng(seed)
    centres = 5.0 * rng.standard_normal((len(per), dim))
    x = np.concatenate([c + 0.4 * rng.standard_normal((p, dim)) for c, p in zip(centres, per)])
    return (3.0 * x + 1.0).astype(np.float32), np.concatenate([np.full(p, i) for i, p in enumerate(per)])


def standardized(x):
    x = x.astype(np.float64)
    return (x - x.mean(0)) / x.std(0)


def kron_rows(residual, z):
    return np.stack([np.kron(r, row) for r, row in zip(residual, z)])


def test_kronecker_sketched_rows_equal_dense_sketch():
    rng = np.random.default_rng(0)
    n, c, d, m = 9, 5, 17, 32
    z = rng.standard_normal((n, d)).astype(np.float32)
    logits = rng.standard_normal((n, c))
    p = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, c, n)
    sketch = head_gradient_sketch(jax.random.key(4), c, d, m)
    assert (sketch.left.out_dim, sketch.right.out_dim) == (5, 6)  # m_C = min(C, ⌊√32⌋) = 5, m_d = ⌊32/5⌋
    gamma = np.kron(np.asarray(sketch.left.matrix(), np.float64), np.asarray(sketch.right.matrix(), np.float64))  # [C·d, m]
    dense = kron_rows(p - np.eye(c)[y], z.astype(np.float64))  # (p − e) ⊗ z, formed
    ours = np.asarray(sketch_head_gradients(sketch, z, y, p))
    np.testing.assert_allclose(ours, dense @ gamma, atol=1e-5 * np.abs(dense @ gamma).max())
    np.testing.assert_allclose(np.asarray(head_gradient_rows(z, y, p)), dense, atol=1e-6)
    assert head_gradient_sketch(jax.random.key(4), c, d, c * d) is None  # C·d ≤ m: exact rows


def test_zero_head_rows_equal_numpy_and_binary_rows_are_signed_inputs():
    x, _ = blobs()
    config = PseudoLabelGradientConfig(num_pseudo_classes=3, gradient_dim=64)  # 3 · 7 = 21 ≤ 64: exact
    made = pseudo_label_gradients(jax.random.key(0), x, config=config)
    y = np.asarray(made.pseudo_labels)
    z = np.concatenate([standardized(x), np.ones((len(x), 1))], axis=1)
    expected = kron_rows(1.0 / 3 - np.eye(3)[y], z)
    np.testing.assert_allclose(np.asarray(made.features), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(made.probabilities), 1.0 / 3)
    assert made.info["source"] == "kmeans" and made.info["sketch"] is None and sum(made.info["pseudo_class_sizes"]) == len(x)
    # C = 2 at W = 0: row i is s_i · (½, −½) ⊗ ẑ_i, the input up to a sign (see the module docstring)
    binary = pseudo_label_gradients(jax.random.key(0), x, config=PseudoLabelGradientConfig(num_pseudo_classes=2))
    sign = np.where(np.asarray(binary.pseudo_labels) == 0, -1.0, 1.0)
    np.testing.assert_allclose(np.asarray(binary.features), sign[:, None] * kron_rows(np.tile([0.5, -0.5], (len(x), 1)), z), atol=1e-5)


def test_supplied_head_gives_its_predictions_and_its_gradient():
    x, _ = blobs()
    rng = np.random.default_rng(1)
    kernel, bias = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    config = PseudoLabelGradientConfig(gradient_head="fitted", gradient_dim=4 * 7, standardize_head_input=False)
    made = pseudo_label_gradients(jax.random.key(0), x, config=config, kernel=kernel, bias=bias)
    logits = x.astype(np.float64) @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(made.pseudo_labels), logits.argmax(1))
    z = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
    expected = kron_rows(p - np.eye(4)[logits.argmax(1)], z)
    np.testing.assert_allclose(np.asarray(made.features), expected, atol=1e-4 * np.abs(expected).max())
    assert made.info["source"] == "head"


def test_few_labels_fit_a_head_that_labels_the_rest():
    x, truth = blobs()
    labelled = np.array([0, 1, 25, 26, 40, 41])  # two rows per blob
    made = pseudo_label_gradients(
        jax.random.key(0), x, labelled=(labelled, truth[labelled]), config=PseudoLabelGradientConfig(gradient_head="fitted")
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(made.pseudo_labels), truth)  # separated blobs: every prediction right
    p = np.asarray(made.probabilities)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert made.info["source"] == "labels" and made.info["classes"] == 3


def test_kmeans_fitted_head_agrees_with_its_clusters():
    x, _ = blobs()
    made = pseudo_label_gradients(jax.random.key(2), x, config=PseudoLabelGradientConfig(num_pseudo_classes=3, gradient_head="fitted"))
    p = np.asarray(made.probabilities)
    assert np.mean(p.argmax(1) == np.asarray(made.pseudo_labels)) == 1.0
    norms = np.linalg.norm(np.asarray(made.features), axis=1)
    zero = pseudo_label_gradients(jax.random.key(2), x, config=PseudoLabelGradientConfig(num_pseudo_classes=3))
    assert np.all(norms < np.linalg.norm(np.asarray(zero.features), axis=1))  # residuals shrink once the head fits


def test_bad_inputs_raise_naming_the_argument():
    x, truth = blobs()
    with pytest.raises(ValueError, match="num_pseudo_classes must be at least 2"):
        PseudoLabelGradientConfig(num_pseudo_classes=1)
    with pytest.raises(ValueError, match="gradient_head must be one of"):
        PseudoLabelGradientConfig(gradient_head="random")
    with pytest.raises(ValueError, match=r"kernel must be \[d, C\] = \[6, C\]"):
        pseudo_label_gradients(jax.random.key(0), x, kernel=np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"bias must be \[C\] = \[3\]"):
        pseudo_label_gradients(jax.random.key(0), x, kernel=np.zeros((6, 3), np.float32), bias=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="labelled labels span"):
        pseudo_label_gradients(jax.random.key(0), x, labelled=(np.array([0, 1, 2]), np.array([0, 1, 3])), num_classes=3)
    with pytest.raises(ValueError, match="distinct rows of the pool"):
        pseudo_label_gradients(jax.random.key(0), x, labelled=(np.array([0, 50]), np.array([0, 1])))
    with pytest.raises(ValueError, match="not both"):
        pseudo_label_gradients(jax.random.key(0), x, kernel=np.zeros((6, 3), np.float32), labelled=(np.array([0]), np.array([0])))
    with pytest.raises(ValueError, match="gradients must be one of"):
        SkMMConfig(gradients="pseudo-labels")
    with pytest.raises(ValueError, match='`gradient_head`: the pseudo-label settings need `gradients` = "pseudo-label"'):
        skmm_config({"gradient_head": "fitted"})


def test_skmm_option_equals_selecting_on_the_made_rows():
    x, _ = blobs()
    key = jax.random.key(7)
    config = skmm_config({"gradients": "pseudo-label", "num_pseudo_classes": 3, "gradient_head": "fitted"})
    assert config.pseudo_labels == PseudoLabelGradientConfig(num_pseudo_classes=3, gradient_head="fitted")
    sel = select("skmm", key, x, 6, gradients="pseudo-label", num_pseudo_classes=3, gradient_head="fitted")
    made = pseudo_label_gradients(jax.random.fold_in(key, 2), x, config=config.pseudo_labels)
    direct = select("skmm", key, np.asarray(made.features), 6)
    np.testing.assert_array_equal(sel.indices, direct.indices)
    assert sel.diagnostics["gradients"]["classes"] == 3
