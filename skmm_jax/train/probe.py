"""The linear softmax classifier on standardised features: one trainer, two uses.

Model: features z ∈ R^D are standardised with the TRAINING set's statistics (μ, σ),

    f(z) = Wᵀ (z − μ) / σ + b,    W ∈ R^{D×C},
    L(W, b) = (1/n) Σ_i CE(f(z_i), y_i)   (+ ½ λ ‖W‖² for "adam"; decoupled λ for "adamw"),

trained from W = 0, b = 0 (the problem is convex; zero is the max-entropy start; the key
only orders the minibatches) by `fit_linear_softmax`, one jitted ``lax.scan``
(``skmm_jax.train.loop``). Its two users:

- linear probing on a coreset (`train_linear_probe`, `select_hyperparameters`): the
  probe on frozen features that the real-task benchmark reports;
- the DeepCore selectors' proxy (``skmm_jax.deepcore.train_proxy``): trained briefly
  on the whole pool, recording every sample's probabilities after each epoch.

σ is the column's standard deviation, or 1 for a (numerically) constant column: the
float32 rounding noise of a constant column, ~1e-7 of its mean, is not blown up to O(1).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from skmm_jax.common.checks import as_key, check_labels, check_rows
from skmm_jax.common.precision import HIGHEST
from skmm_jax.moments import standardization  # the one column-scaling rule, shared with SkMM's preprocessing
from skmm_jax.train.loop import check_training_config, fit, l2_penalty, optimizer

Array = jax.Array

__all__ = [
    "LinearFit",
    "LinearProbe",
    "LinearProbeConfig",
    "ProbeSearch",
    "default_probe_grid",
    "fit_linear_softmax",
    "predict",
    "probe_logits",
    "select_hyperparameters",
    "standardization",
    "standardize",
    "train_linear_probe",
]


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
    """Training of the linear softmax classifier (hashable).

    Attributes:
      learning_rate: Adam step size (≥ 0).
      weight_decay: λ on the kernel (not the bias): decoupled (AdamW) or an L2 term
        ½λ‖W‖² in the loss (Adam).
      epochs: passes over the training set.
      batch_size: minibatch size (capped at the training-set size).
      optimizer: "adamw" or "adam".
    """

    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    epochs: int = 100
    batch_size: int = 64
    optimizer: str = "adamw"

    def __post_init__(self):
        check_training_config(self)


class LinearProbe(NamedTuple):
    """f(z) = ((z − mean) / scale) @ kernel + bias."""

    mean: Array  # [D]
    scale: Array  # [D]
    kernel: Array  # [D, C]
    bias: Array  # [C]


class LinearFit(NamedTuple):
    """What `fit_linear_softmax` returns (a pytree)."""

    probe: LinearProbe  # after the last epoch
    losses: Array  # [E] mean minibatch cross-entropy of each epoch (before each step's update)
    probabilities: Array | None  # [E, N, C] softmax of every sample after each epoch (record=True)
    pool_losses: Array | None  # [E] mean cross-entropy over all samples after each epoch (record=True)


def standardize(x: Array, mean: Array, scale: Array) -> Array:
    """x̂ = (x − μ)/σ row-wise: [N, D] → [N, D] float32."""
    return (x.astype(jnp.float32) - mean[None, :]) / scale[None, :]


def _linear(kernel: Array, bias: Array, standardized: Array) -> Array:
    return jnp.matmul(standardized, kernel, precision=HIGHEST) + bias[None, :]  # [N, C]


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "optimizer_kind", "record"))
def fit_linear_softmax(
    key: Array, x: Array, y: Array, learning_rate: Array, weight_decay: Array, *,
    num_classes: int, epochs: int, batch_size: int, optimizer_kind: str, record: bool = False,
) -> LinearFit:  # fmt: skip
    """Trains the classifier on (x [N, D], y [N]) from zeros; see the module docstring.

    Args:
      key: PRNG key; epoch t shuffles with the t-th of ``split(key, epochs)``.
      x, y: training features (any float dtype) and int labels in [0, num_classes).
      learning_rate, weight_decay: traced scalars.
      num_classes, epochs, batch_size (≤ N), optimizer_kind: static.
      record: also return the probabilities of every sample and the mean loss over
        all samples after each epoch (memory [E, N, C]).
    """
    x = x.astype(jnp.float32)
    mean, scale = standardization(x)
    z = standardize(x, mean, scale)  # [N, D]
    n, dim = z.shape
    params = {"kernel": jnp.zeros((dim, num_classes), jnp.float32), "bias": jnp.zeros((num_classes,), jnp.float32)}

    def batch_loss(p, idx, weight):
        ce = optax.softmax_cross_entropy_with_integer_labels(_linear(p["kernel"], p["bias"], z[idx]), y[idx])
        return jnp.sum(weight * ce) / jnp.sum(weight) + l2_penalty(optimizer_kind, p, weight_decay)

    def pool_predictions(p):
        log_p = jax.nn.log_softmax(_linear(p["kernel"], p["bias"], z), axis=-1)  # [N, C]
        return jnp.exp(log_p), -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))

    params, losses, recorded = fit(
        key, params, batch_loss, n,
        optimizer=optimizer(optimizer_kind, learning_rate, weight_decay), epochs=epochs, batch_size=batch_size,
        epoch_end=pool_predictions if record else None,
    )  # fmt: skip
    probabilities, pool_losses = recorded if record else (None, None)
    return LinearFit(LinearProbe(mean, scale, params["kernel"], params["bias"]), losses, probabilities, pool_losses)


def train_linear_probe(
    key: Array, features: Any, labels: Any, num_classes: int, config: LinearProbeConfig = LinearProbeConfig()
) -> LinearProbe:
    """Fits the LP head on (features, labels) with the training subset's standardisation.

    Args:
      key: PRNG key (``jax.random.key(seed)``); it only shuffles the minibatches.
      features: float [n, D] training features (e.g. ``pooled[coreset]``).
      labels: int [n] in [0, num_classes).
      num_classes: C, given explicitly: a coreset may miss classes, and the head must
        still score all of them.
      config: hyperparameters.

    Returns:
      `LinearProbe` (standardisation folded in; use `predict` / `probe_logits`).
    """
    x = np.asarray(check_rows(features), dtype=np.float32)
    y = check_labels(labels, x.shape[0], num_classes=num_classes)
    fitted = fit_linear_softmax(
        as_key(key), jnp.asarray(x), jnp.asarray(y), jnp.float32(config.learning_rate), jnp.float32(config.weight_decay),
        num_classes=int(num_classes), epochs=config.epochs, batch_size=min(config.batch_size, x.shape[0]),
        optimizer_kind=config.optimizer,
    )  # fmt: skip
    return fitted.probe


@jax.jit
def _probe_logits(probe: LinearProbe, x: Array) -> Array:
    return _linear(probe.kernel, probe.bias, standardize(x, probe.mean, probe.scale))


def probe_logits(probe: LinearProbe, features: Any) -> np.ndarray:
    """Logits float32 [N, C] of the LP head."""
    return np.asarray(_probe_logits(probe, jnp.asarray(np.asarray(features, dtype=np.float32))))


def predict(probe: LinearProbe, features: Any) -> np.ndarray:
    """argmax class int32 [N] of the LP head."""
    return probe_logits(probe, features).argmax(axis=1).astype(np.int32)


class ProbeSearch(NamedTuple):
    """Result of `select_hyperparameters`: the winner and every (config, val accuracy)."""

    best: LinearProbeConfig
    best_probe: LinearProbe
    scores: tuple[tuple[LinearProbeConfig, float], ...]


def default_probe_grid(
    learning_rates: Sequence[float] = (1e-3, 1e-2), weight_decays: Sequence[float] = (1e-4, 1e-2, 1e-1), **fixed: Any
) -> tuple[LinearProbeConfig, ...]:
    """The product grid of learning rates × weight decays (other fields from ``fixed``)."""
    return tuple(
        LinearProbeConfig(learning_rate=lr, weight_decay=wd, **fixed) for lr in learning_rates for wd in weight_decays
    )


def select_hyperparameters(
    key: Array,
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    num_classes: int,
    grid: Sequence[LinearProbeConfig],
) -> ProbeSearch:
    """The grid point with the best validation accuracy (ties: the earliest in ``grid``).

    Every configuration is trained with the same ``key`` (same minibatch order), so
    they differ only in their hyperparameters. Test data is not an argument: the
    choice cannot depend on it.
    """
    if not grid:
        raise ValueError("select_hyperparameters: the grid is empty")
    val_y = np.asarray(val_y)
    key = as_key(key)
    scores, best, best_probe, best_acc = [], None, None, -1.0
    for config in grid:
        probe = train_linear_probe(key, train_x, train_y, num_classes, config)
        acc = float(np.mean(predict(probe, val_x) == val_y))
        scores.append((config, acc))
        if acc > best_acc:
            best, best_probe, best_acc = config, probe, acc
    return ProbeSearch(best, best_probe, tuple(scores))
