"""Drawing n distinct indices, shared by SkMM's draw rules and the baselines, and
splitting n into per-class quotas (class-balanced draws)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def check_subset_size(n: int, num_samples: int) -> None:
    """Raises a ValueError naming n and N unless 0 < n <= N (n a Python int)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be a Python int (it is a static size), got {n!r}")
    if not 0 < n <= num_samples:
        raise ValueError(f"n must satisfy 0 < n <= N = {num_samples}, got n = {n}")


def sample_without_replacement(key: Array, weights: Array, n: int) -> Array:
    """n distinct indices drawn successively with probability ∝ ``weights`` (Gumbel top-k).

    Taking the top n of log w_i + Gumbel_i is exactly sequential sampling without
    replacement ∝ w (each draw ∝ w among those not yet drawn). Zero weights are never
    drawn before every positive one; ties among them are broken at random.

    Args:
      key: PRNG key.
      weights: [N] non-negative weights (need not sum to one).
      n: number of indices, static, 0 < n <= N.

    Returns:
      [n] int32 indices in draw order.
    """
    weights = jnp.asarray(weights, jnp.float32)
    gumbel = jax.random.gumbel(key, weights.shape, jnp.float32)
    positive = weights > 0
    # Positive weights rank by log w + G (log w >= -104 in f32, |G| < 20); zero weights
    # get -1e4 + G: after every positive one, in random order among themselves.
    score = jnp.where(positive, jnp.log(jnp.where(positive, weights, 1.0)) + gumbel, -1e4 + gumbel)
    return jax.lax.top_k(score, n)[1].astype(jnp.int32)


def class_quotas(weights: Any, n: int, *, sizes: Any = None) -> np.ndarray:
    """Shares of n slots per class, n_c ∝ weights_c, by largest remainders (host NumPy).

    n_c = ⌊n w_c / Σw⌋, capped at ``sizes_c``; the n − Σ n_c slots left go, one each,
    to the classes with the largest remainders among those below their size (equal
    remainders: the lower class index first). Integer weights (class sizes) are
    divided exactly in int64; float weights (e.g. the p-mass of each class) in float64.

    Args:
      weights: [C] non-negative class weights with a positive sum.
      n: slots to hand out.
      sizes: [C] class sizes, the caps; default ``weights`` (integer weights = sizes).

    Returns:
      int64 [C] quotas, Σ n_c = n whenever Σ sizes ≥ n.
    """
    weights = np.asarray(weights)
    sizes = np.asarray(weights if sizes is None else sizes).astype(np.int64)
    if np.issubdtype(weights.dtype, np.integer):
        quotas, remainders = np.divmod(weights.astype(np.int64) * n, int(weights.sum()))
    else:
        ideal = weights.astype(np.float64) / weights.astype(np.float64).sum() * n
        quotas = np.floor(ideal)
        remainders = ideal - quotas
    room = quotas < sizes
    quotas = np.minimum(quotas, sizes).astype(np.int64)
    missing = n - int(quotas.sum())
    order = np.argsort(-np.where(room, remainders, -1), kind="stable")
    quotas[order[:missing][room[order[:missing]]]] += 1
    return quotas
