"""What every Johnson–Lindenstrauss sketch shares: the interface and its checks.

A sketch is a fixed random linear map Γ ∈ R^{r×m}. It is applied to a batch of
row vectors, ``x [B, r] → x Γ [B, m]``, so that for every x,

    E ‖x Γ‖² = ‖x‖²      and      ‖x Γ‖² = (1 ± ε) ‖x‖²  with high probability,

for all x of a k-dimensional subspace at once when m = O(k/ε²) (a subspace
embedding). Every kind here is a frozen dataclass registered as a pytree: its random
tables (or just its PRNG key) are the leaves, its sizes are static. So a sketch can
be passed into ``jax.jit`` / ``vmap`` / ``shard_map`` as an ordinary argument, and
the same object always applies the same Γ, whatever the batch size or chunking.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import jax.numpy as jnp

from skmm_jax.common.pytree import Array


@runtime_checkable
class Sketch(Protocol):
    """A random linear map Γ ∈ R^{in_dim × out_dim}, applied to rows.

    Attributes:
      in_dim: r, the length of the vectors it takes.
      out_dim: m, the length of the sketched vectors.
    """

    in_dim: int
    out_dim: int

    def __call__(self, x: Array) -> Array:
        """``x [B, in_dim] → x Γ [B, out_dim]`` in float32. NaN/inf rows stay non-finite."""
        ...


def check_dims(in_dim: int, out_dim: int, *, kind: str) -> None:
    """Raises a ValueError naming the argument when r or m is not a positive int."""
    for arg, value in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{kind} sketch: {arg} must be a positive int, got {value!r}")


def check_batch(x: Array, in_dim: int, *, kind: str) -> Array:
    """Validates a ``[B, in_dim]`` floating batch (shape and dtype are static, so this is free under jit)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if x.ndim != 2:
        hint = " (for a single vector use x[None, :])" if x.ndim == 1 else ""
        raise ValueError(f"{kind} sketch expects a batch of shape [B, {in_dim}], got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != in_dim:
        raise ValueError(f"{kind} sketch was built for in_dim={in_dim}, got rows of length {x.shape[1]}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{kind} sketch expects a floating-point batch, got dtype {x.dtype}")
    return jnp.asarray(x)


def sketch_matrix(sketch: Sketch) -> Array:
    """Materialises Γ [in_dim, out_dim] by sketching the identity (tests, small r only)."""
    return sketch(jnp.eye(sketch.in_dim, dtype=jnp.float32))


def next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))
