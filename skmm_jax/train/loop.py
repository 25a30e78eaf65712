"""The one training loop: shuffled minibatches, ``lax.scan`` over epochs × steps.

Every trainer of the package (the linear softmax classifier of ``probe``, the MLP head of
``finetune``) is a jitted pure function that builds a ``batch_loss`` and calls `fit`.
Each epoch is a fresh permutation of the n samples cut into ⌈n/B⌉ batches of B rows;
the last one is padded with weight-0 rows (index 0), so every epoch sees each sample
exactly once and every step has one shape. Hyperparameters that are plain numbers
(learning rate, weight decay) are traced, so a grid search compiles once per
(optimizer, epochs, batch size, data shape).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from skmm_jax.common.checks import check_positive_int

Array = jax.Array
OPTIMIZERS = ("adam", "adamw")

__all__ = ["OPTIMIZERS", "check_training_config", "epoch_batches", "fit", "l2_penalty", "optimizer"]


def check_training_config(config: Any) -> None:
    """ValueError naming the field unless learning_rate, weight_decay ≥ 0 (finite), epochs and
    batch_size positive ints, optimizer one of ``OPTIMIZERS``."""
    for name in ("learning_rate", "weight_decay"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name}={value!r}; expected a finite number >= 0")
    check_positive_int(config.epochs, "epochs")
    check_positive_int(config.batch_size, "batch_size")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={config.optimizer!r}; expected one of {OPTIMIZERS}")


def optimizer(kind: str, learning_rate: Array, weight_decay: Array) -> optax.GradientTransformation:
    """adamw: decoupled decay on kernels only (not biases); adam: decay enters the loss (`l2_penalty`)."""
    if kind == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay, mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))
    return optax.adam(learning_rate)


def l2_penalty(kind: str, params: Any, weight_decay: Array) -> Array:
    """½ λ Σ ‖kernel‖² for "adam" (coupled L2); zero for "adamw" (decay is in the update)."""
    if kind != "adam":
        return jnp.float32(0.0)
    squares = [jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(params) if leaf.ndim > 1]
    return 0.5 * weight_decay * sum(squares, jnp.float32(0.0))


def epoch_batches(key: Array, n: int, batch_size: int) -> tuple[Array, Array]:
    """A shuffled epoch as [S, B] indices and [S, B] weights (1 real, 0 padding), S = ⌈n/B⌉."""
    steps = -(-n // batch_size)
    perm = jax.random.permutation(key, n)
    pad = steps * batch_size - n
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, batch_size)
    weight = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)]).reshape(steps, batch_size)
    return idx, weight


def fit(
    key: Array,
    params: Any,
    batch_loss: Callable[[Any, Array, Array], Array],
    n: int,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    epoch_end: Callable[[Any], Any] | None = None,
) -> tuple[Any, Array, Any]:
    """Shuffled minibatch training of ``params``; traceable (call it inside a jitted trainer).

    Args:
      key: PRNG key; epoch t shuffles with the t-th of ``split(key, epochs)``.
      params: pytree of the trained arrays.
      batch_loss: ``batch_loss(params, idx [B], weight [B])``, the weighted mean loss of
        rows ``idx`` (weights are 1 for real rows, 0 for the padding of the last batch).
      n: number of training samples.
      optimizer: an optax transformation (see `optimizer`).
      epochs, batch_size: static sizes (batch_size ≤ n).
      epoch_end: optional ``epoch_end(params)`` evaluated after every epoch (e.g. the
        predictions on the whole pool); its outputs are stacked over epochs.

    Returns:
      ``(params, losses [E], recorded)``: the final parameters, each epoch's mean
      training loss (before each step's update) and the stacked ``epoch_end`` outputs
      (None without ``epoch_end``).
    """
    # optax's Adam bias correction computes float ** int32, which strict dtype
    # promotion (used by the tests, and by careful callers) rejects: let optax's own
    # arithmetic promote as standard NumPy does; our loss stays under the caller's mode.
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    grad_fn = jax.value_and_grad(batch_loss)

    def step(carry, batch):
        params, opt_state = carry
        idx, weight = batch
        loss, grads = grad_fn(params, idx, weight)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return (params, opt_state), loss * jnp.sum(weight)

    def epoch(carry, epoch_key):
        idx, weight = epoch_batches(epoch_key, n, batch_size)
        carry, weighted = jax.lax.scan(step, carry, (idx, weight))
        recorded = None if epoch_end is None else epoch_end(carry[0])
        return carry, (jnp.sum(weighted) / n, recorded)

    (params, _), (losses, recorded) = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))
    return params, losses, recorded
