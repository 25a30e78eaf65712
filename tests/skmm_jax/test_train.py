"""Linear probing, metrics, hyperparameter choice, and finetuning the last MLP, on tiny problems."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prune_jax.experiments.llama_features import extract_llama_features, mlp_head_from_llama
from skmm_jax.deepcore import train_proxy
from skmm_jax.experiments.metrics import metrics
from skmm_jax.experiments.mlp_finetune import FinetuneConfig, finetune, ft_gradient_loss, ft_logits, ft_predict
from skmm_jax.gradients import rademacher_weights, sketch_per_sample_grads
from skmm_jax.sketch import make_pytree_sketch
from skmm_jax.train.probe import (
    LinearProbeConfig,
    predict,
    probe_logits,
    select_hyperparameters,
    standardization,
    train_linear_probe,
)


pytestmark = pytest.mark.usefixtures("exact_matmuls")


def blobs(seed, n, num_classes=5, dim=16, spread=0.3):
    """Separable Gaussian blobs on a large offset and scale (standardisation must handle it)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(123).normal(size=(num_classes, dim)) * 2.0
    y = rng.integers(0, num_classes, n).astype(np.int32)
    x = means[y] + spread * rng.normal(size=(n, dim))
    return (1000.0 + 50.0 * x).astype(np.float32), y


# -------------------------------------------------------------------- linear probe


def test_linear_probe_separates_blobs_and_keeps_missing_classes():
    x, y = blobs(0, 200)
    keep = y != 4  # the training subset misses class 4: the head must still have 5 outputs
    config = LinearProbeConfig(learning_rate=0.05, epochs=30, batch_size=32)
    probe = train_linear_probe(jax.random.key(0), x[keep], y[keep], 5, config)
    assert probe.kernel.shape == (16, 5) and probe.bias.shape == (5,)
    np.testing.assert_allclose(probe.mean, x[keep].mean(0), rtol=1e-5)  # training-subset statistics

    x_test, y_test = blobs(1, 300)
    seen = y_test != 4
    assert np.mean(predict(probe, x_test[seen]) == y_test[seen]) > 0.97
    assert probe_logits(probe, x_test).shape == (300, 5)

    full = train_linear_probe(jax.random.key(0), x, y, 5, dataclasses.replace(config, optimizer="adam"))
    assert metrics(predict(full, x_test), y_test, 5)["accuracy"] > 0.97
    again = train_linear_probe(jax.random.key(0), x, y, 5, dataclasses.replace(config, optimizer="adam"))
    np.testing.assert_array_equal(np.asarray(full.kernel), np.asarray(again.kernel))  # deterministic under the key


def test_probe_and_deepcore_proxy_are_one_trainer():
    x, y = blobs(2, 90, num_classes=3)
    config = LinearProbeConfig(learning_rate=0.05, epochs=4, batch_size=16)
    probe = train_linear_probe(jax.random.key(7), x, y, 3, config)
    proxy = train_proxy(jax.random.key(7), x, y, config)
    for field in ("mean", "scale", "kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(getattr(probe, field)), np.asarray(getattr(proxy.probe, field)))
    np.testing.assert_allclose(np.asarray(proxy.probabilities[-1]), np.asarray(jax.nn.softmax(probe_logits(probe, x))), atol=1e-6)
    # One standardisation: a constant column (large offset, rounding-level std) keeps σ = 1.
    constant = np.concatenate([x, np.full((90, 1), 1000.0, np.float32)], axis=1)
    _, scale = standardization(jnp.asarray(constant))
    assert float(scale[-1]) == 1.0


def test_probe_config_and_input_errors():
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        LinearProbeConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        LinearProbeConfig(epochs=0)
    x, y = blobs(0, 20)
    with pytest.raises(ValueError, match="outside"):
        train_linear_probe(jax.random.key(0), x, y, 3, LinearProbeConfig(epochs=1))
    with pytest.raises(TypeError, match="PRNG key"):
        train_linear_probe(0, x, y, 5, LinearProbeConfig(epochs=1))


def test_metrics_match_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 200)  # classes 0..5 present
    pred = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 8, 200))  # also predicts absent 6, 7
    got = metrics(pred, labels, 8)
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, pred))
    expected = sklearn_metrics.f1_score(labels, pred, labels=np.unique(labels), average="macro")
    assert got["macro_f1"] == pytest.approx(expected, abs=1e-12) and got["classes_evaluated"] == 6
    within = np.where(pred < 6, pred, 0)  # only present classes predicted: sklearn's default agrees
    assert metrics(within, labels, 8)["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(labels, within, average="macro"))
    with pytest.raises(ValueError, match="outside"):
        metrics(pred, labels, 7)


def test_hyperparameter_selection_uses_validation_only():
    x, y = blobs(0, 100, num_classes=2)
    val_x, val_y = blobs(1, 60, num_classes=2)
    # "Test" data on which the ranking flips: labels inverted, so the untrained probe
    # (lr = 0 → zero logits → always class 0) scores better there than the good one.
    test_x, test_y = val_x, 1 - val_y
    grid = [LinearProbeConfig(learning_rate=0.0, epochs=5), LinearProbeConfig(learning_rate=0.05, epochs=5)]
    search = select_hyperparameters(jax.random.key(0), x, y, val_x, val_y, 2, grid)
    assert search.best == grid[1]
    assert [acc for _, acc in search.scores][1] == 1.0 and search.scores[0][1] < 0.8
    test_acc = [np.mean(predict(train_linear_probe(jax.random.key(0), x, y, 2, c), test_x) == test_y) for c in grid]
    assert test_acc[0] > test_acc[1]  # test would have picked the other one
    np.testing.assert_array_equal(predict(search.best_probe, val_x), val_y)


# ---------------------------------------------------------------------- finetuning


@pytest.fixture(scope="module")
def ft_setup(tiny_llama):
    model = tiny_llama(vocab_size=64, hidden_size=32, num_layers=2, heads=(4, 2), intermediate=48, head_dim=8)
    tokens = np.random.default_rng(0).integers(0, 64, (24, 8)).astype(np.int32)
    labels = (tokens[:, 0] % 3).astype(np.int32)  # learnable from the first token
    features = extract_llama_features(model, tokens, batch_size=8, layer_input="float32")
    return model, tokens, labels, features


def test_mlp_head_reproduces_the_frozen_model(ft_setup):
    model, _, labels, features = ft_setup
    head = mlp_head_from_llama(model, 3, key=jax.random.key(0))
    # extract_features' pooled output is checked against model.hidden_states in test_tasks.
    pooled = np.asarray(head.pooled(jnp.asarray(features.layer_inputs)))
    np.testing.assert_allclose(pooled, features.pooled, atol=1e-5, rtol=1e-5)
    # the head holds copies: training it never touches the model
    assert head.last_block.mlp.gate_kernel is not model.layers[-1].mlp.gate_kernel

    probe = train_linear_probe(jax.random.key(1), features.pooled, labels, 3, LinearProbeConfig(epochs=5))
    lp_head = mlp_head_from_llama(model, 3, probe=probe)
    np.testing.assert_allclose(
        ft_logits(lp_head, features.layer_inputs, batch_size=10), probe_logits(probe, features.pooled), atol=1e-4, rtol=1e-4
    )
    with pytest.raises(ValueError, match="probe= .* or key="):
        mlp_head_from_llama(model, 3)


def test_finetune_lowers_the_training_loss(ft_setup):
    model, _, labels, features = ft_setup
    init = mlp_head_from_llama(model, 3, key=jax.random.key(0))
    before = np.asarray(init.last_block.mlp.down_kernel[...]).copy()
    result = finetune(jax.random.key(2), features.layer_inputs, labels, init,
                      FinetuneConfig(learning_rate=1e-2, epochs=20, batch_size=8))  # fmt: skip
    assert result.losses.shape == (20,) and np.all(np.isfinite(result.losses))
    assert result.losses[-1] < 0.5 * result.losses[0]
    np.testing.assert_array_equal(np.asarray(init.last_block.mlp.down_kernel[...]), before)  # init untouched
    assert not np.allclose(np.asarray(result.model.last_block.mlp.down_kernel[...]), before)  # the MLP trained
    for frozen in (lambda m: m.norm.weight, lambda m: m.last_block.post_attn_norm.weight, lambda m: m.last_block.attn.q_kernel):
        np.testing.assert_array_equal(np.asarray(frozen(result.model)[...]), np.asarray(frozen(init)[...]))  # norms, attention frozen
    assert np.mean(ft_predict(result.model, features.layer_inputs) == labels) > 0.9


def test_ft_gradient_loss_feeds_the_gradient_sketch(ft_setup):
    model, _, _, features = ft_setup
    head = mlp_head_from_llama(model, 3, key=jax.random.key(0))
    loss_fn, params, frozen = ft_gradient_loss(head)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    assert n_params == 3 * 32 * 48 + 32 * 3 + 3  # gate, up, down + head; norms are frozen
    weights = rademacher_weights(jax.random.key(3), 24, 3)
    sketch = make_pytree_sketch("gaussian", jax.random.key(4), params, 16)
    data = (features.layer_inputs.astype(np.float16), weights)  # float16 cache works too
    sketched = sketch_per_sample_grads(loss_fn, params, data, sketch, frozen=frozen, chunk_size=10)
    assert sketched.shape == (24, 16) and np.all(np.isfinite(sketched))
    assert np.all(np.linalg.norm(sketched, axis=1) > 0)
