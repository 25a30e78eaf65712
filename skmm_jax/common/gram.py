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
        x = rows.reshape(-1, rows.shape[-1]).astype(self.gram.dtype)
        if mask is not None:
            x = x * mask.reshape(-1, 1).astype(x.dtype)
            count = jnp.sum(mask.astype(self.count.dtype))
        else:
            count = jnp.asarray(x.shape[0], self.count.dtype)
        return Gram(self.gram + gram_of(x, dtype=x.dtype), self.total + jnp.sum(x, axis=0), self.count + count)

    def mean(self) -> tuple[jax.Array, jax.Array]:
        """(E[x xᵀ], E[x]) over the rows added (count ≥ 1 assumed)."""
        return self.gram / self.count, self.total / self.count


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
