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

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp

from skmm_jax.common.checks import check_positive_int
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


@dataclasses.dataclass(frozen=True)
class SketchKind:
    """One sketch kind of the registry (``skmm_jax.sketch.make.SKETCH_KINDS``).

    Adding a kind is a module with its sketch class and one ``SketchKind`` entry, then
    ``register_sketch_kind(entry)`` (or one line in ``SKETCH_KINDS``): ``make_sketch``,
    ``make_pytree_sketch``, ``select(sketch_kind=...)`` and the CLI read the registry.

    Attributes:
      name: the name configs and the command line use ("sjlt").
      build: ``build(key, in_dim, out_dim, **options) -> Sketch``, r → m.
      options: the keyword options ``build`` takes (``make_sketch`` refuses others).
      leaf: how the kind sketches one leaf of a per-sample gradient pytree,
        ``leaf(key, shape, out_dim, n_in=..., **options) -> Sketch`` on the leaf
        flattened to prod(shape); None: ``build`` on the flattened leaf.
      factored: it reads a leaf as a matrix [prod(shape[:n_in]), prod(shape[n_in:])]
        (a Kronecker sketch), so ``make_pytree_sketch``'s ``split=`` applies to it.
      summary: one line for help texts and docs.
    """

    name: str
    build: Callable[..., Any]
    options: tuple[str, ...] = ()
    leaf: Callable[..., Any] | None = None
    factored: bool = False
    summary: str = ""


def check_dims(in_dim: int, out_dim: int, *, kind: str) -> tuple[int, int]:
    """(r, m) as ints; a ValueError naming the argument when either is not a positive int."""
    return (check_positive_int(in_dim, f"{kind} sketch: in_dim"), check_positive_int(out_dim, f"{kind} sketch: out_dim"))


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
