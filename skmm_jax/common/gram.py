"""Second moments, accumulated over a stream: the one Gram accumulator of both libraries.

For rows x_t ∈ R^C arriving in chunks (calibration tokens, layer inputs, sketched
gradients), with an optional mask m_t ∈ {0, 1} (padding, held-out tokens):

    G = Σ_t m_t x_t x_tᵀ,      s = Σ_t m_t x_t,      n = Σ_t m_t.

The products run in float32 at ``HIGHEST`` precision whatever the input dtype (bf16
activations would otherwise lose the small eigen-directions a least-squares refit or
an OBS step divides by). ``add`` is a pure function of pytrees, so it jits, scans and
shards (a mesh-sharded row axis reduces with the collective XLA inserts); ``sum_of``
is the host-side "first value or running sum" of any pytree stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from skmm_jax.common.precision import HIGHEST


class Gram(NamedTuple):
    """Running second moments of rows of width C: ``gram`` [C, C], ``total`` [C], ``count`` []."""

    gram: jax.Array
    total: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls, width: int) -> Gram:
        return cls(jnp.zeros((width, width), jnp.float32), jnp.zeros((width,), jnp.float32), jnp.zeros((), jnp.float32))

    def add(self, rows: jax.Array, mask: jax.Array | None = None) -> Gram:
        """The moments with ``rows`` [..., C] added (rows where ``mask`` [...] is 0 skipped)."""
        x = rows.reshape(-1, rows.shape[-1]).astype(jnp.float32)
        if mask is not None:
            x = x * mask.reshape(-1, 1).astype(jnp.float32)
            count = jnp.sum(mask.astype(jnp.float32))
        else:
            count = jnp.asarray(x.shape[0], jnp.float32)
        return Gram(self.gram + gram_of(x), self.total + jnp.sum(x, axis=0), self.count + count)

    def mean(self) -> tuple[jax.Array, jax.Array]:
        """(E[x xᵀ], E[x]) over the rows added (count ≥ 1 assumed)."""
        return self.gram / self.count, self.total / self.count


def gram_of(x: jax.Array) -> jax.Array:
    """xᵀx [C, C] of rows x [n, C], in float32 at HIGHEST precision."""
    x = x.astype(jnp.float32)
    return jnp.matmul(x.T, x, precision=HIGHEST)


def sum_of(parts: Iterable[Any]) -> Any:
    """Σ of a stream of pytrees (arrays, tuples of arrays, Grams): None for an empty stream."""
    total = None
    for part in parts:
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    return total


def add_to(total: Any, part: Any) -> Any:
    """``part`` when ``total`` is None, else the leafwise sum: one step of `sum_of` for loops
    that do other work between the parts."""
    return part if total is None else jax.tree.map(lambda a, b: a + b, total, part)
