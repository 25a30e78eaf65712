"""The registry of sketch kinds, and one constructor for every kind by name.

``SKETCH_KINDS`` maps a name to its ``SketchKind`` (base.py): constructor, options, how
it sketches a pytree leaf. ``make_sketch``, ``make_pytree_sketch``,
``select(sketch_kind=...)``, the command line's choices and the benchmarks read it, so a
new kind is one module (its sketch class, constructor and ``SketchKind``) plus one
``register_sketch_kind`` call (or one line below).
"""

from __future__ import annotations

from typing import Any

from skmm_jax.common.pytree import Array
from skmm_jax.common.registry import Registry
from skmm_jax.sketch.base import Sketch, SketchKind
from skmm_jax.sketch.dense import GAUSSIAN, RADEMACHER
from skmm_jax.sketch.kronecker import KRONECKER
from skmm_jax.sketch.sparse import COUNTSKETCH, SJLT
from skmm_jax.sketch.srht import SRHT

SKETCH_KINDS: Registry[SketchKind] = Registry(
    "sketch kind", ((entry.name, entry) for entry in (GAUSSIAN, RADEMACHER, SJLT, COUNTSKETCH, SRHT, KRONECKER)))
"""Every sketch kind by name, in the order tables and help texts list them."""

# The names, in registry order (a view: kinds registered later appear here too).
KINDS = SKETCH_KINDS.keys()


def register_sketch_kind(entry: SketchKind) -> SketchKind:
    """Adds ``entry`` to ``SKETCH_KINDS`` under its name (ValueError if taken); returns it."""
    return SKETCH_KINDS.register(entry.name, entry)


def sketch_kind(kind: str, *, name: str = "kind") -> SketchKind:
    """The registry entry of ``kind``; ValueError "<name> must be one of gaussian, ..., got 'x'"."""
    return SKETCH_KINDS.lookup(kind, setting=name)


def check_options(entry: SketchKind, options: dict[str, Any]) -> None:
    """ValueError naming the first option ``entry`` does not take, and the kinds that take it."""
    for option in sorted(set(options) - set(entry.options)):
        takers = [k.name for k in SKETCH_KINDS.values() if option in k.options]
        where = f"applies to kind {' or '.join(takers)} only" if takers else "is not an option of any sketch kind"
        raise ValueError(
            f"{option} {where}: the {entry.name} sketch does not take it (it takes {', '.join(entry.options) or 'no options'})"
        )


def make_sketch(kind: str, key: Array, in_dim: int, out_dim: int, **options: Any) -> Sketch:
    """Builds a sketch r → m of the given kind.

    Args:
      kind: a name from ``SKETCH_KINDS`` (``KINDS``).
      key: PRNG key (``jax.random.key(seed)``); same key, same Γ.
      in_dim: r.
      out_dim: m.
      **options: per kind (``SKETCH_KINDS[kind].options``) — gaussian/rademacher:
        ``block_size``; sjlt: ``nnz`` (default 4), ``hashing``; countsketch:
        ``hashing``; kronecker: ``shape`` (a, b) with a·b = r (default: the most
        square factorisation of r).

    Raises:
      ValueError: unknown kind, bad sizes, or options the kind does not take.
    """
    entry = sketch_kind(kind)
    check_options(entry, options)
    return entry.build(key, in_dim, out_dim, **options)
