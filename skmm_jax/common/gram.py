"""Second moments, accumulated over a stream: the one Gram accumulator of both libraries.

For rows x_t ∈ R^C arriving in chunks (calibration tokens, layer inputs, sketched
gradients), a stream's second moments are sums of per-chunk products,

    G = Σ_chunks X_cᵀ X_c      (and cross moments Σ X_cᵀ Y_c for a least-squares refit),

with held-out rows (a refit's validation tokens, ``held_out_rows``) masked out of one sum
and into another. ``gram_of`` is the one product: float32 (float64 for x64 refits) at
``HIGHEST`` precision whatever the input dtype, since bf16 activations would otherwise
lose the small eigen-directions a least-squares refit or an OBS step divides by. It is
a pure function, so it jits, scans and shards (a mesh-sharded row axis reduces with the
collective XLA inserts). ``add_to`` / ``sum_of`` are the "first value or running sum" of
any pytree stream (Grams, moment tuples, sketched gradients).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

from skmm_jax.common.precision import HIGHEST


def gram_of(x: jax.Array, y: jax.Array | None = None, *, dtype: Any = jnp.float32) -> jax.Array:
    """xᵀx [C, C] of rows x [..., C] (or the cross moment xᵀy [C, D] with rows y [..., D]),
    in ``dtype`` (float32; float64 for x64 refits) at HIGHEST precision: the one place a
    Gram's matmul precision is chosen."""
    x = x.reshape(-1, x.shape[-1]).astype(dtype)
    y = x if y is None else y.reshape(-1, y.shape[-1]).astype(dtype)
    return jnp.matmul(x.T, y, precision=HIGHEST)


def held_out_rows(start: jax.Array | int, count: int, split: jax.Array | int) -> jax.Array:
    """[count] bool: which of the rows start, …, start + count − 1 of a stream are held out
    (index ≥ ``split``: the last rows of the stream, e.g. a refit's last 10 % of tokens)."""
    return (start + jnp.arange(count)) >= split


def sum_of(parts: Iterable[Any]) -> Any:
    """Σ of a stream of pytrees (arrays, tuples of arrays, Grams): None for an empty stream."""
    total = None
    for part in parts:
        total = add_to(total, part)
    return total


def add_to(total: Any, part: Any) -> Any:
    """``part`` when ``total`` is None, else the leafwise sum: one step of `sum_of` for loops
    that do other work between the parts."""
    return part if total is None else jax.tree.map(lambda a, b: a + b, total, part)
