"""One constructor for every sketch kind, by name (what configs and the CLI use)."""

from __future__ import annotations

from typing import Any

from skmm_jax.common.pytree import Array
from skmm_jax.sketch.base import Sketch
from skmm_jax.sketch.dense import dense_sketch
from skmm_jax.sketch.kronecker import kronecker_sketch, split_dim
from skmm_jax.sketch.sparse import sparse_sign_sketch
from skmm_jax.sketch.srht import srht_sketch

KINDS = ("gaussian", "rademacher", "sjlt", "countsketch", "srht", "kronecker")


def make_sketch(kind: str, key: Array, in_dim: int, out_dim: int, **options: Any) -> Sketch:
    """Builds a sketch r → m of the given kind.

    Args:
      kind: one of ``KINDS``.
      key: PRNG key (``jax.random.key(seed)``); same key, same Γ.
      in_dim: r.
      out_dim: m.
      **options: per kind — gaussian/rademacher: ``block_size``; sjlt: ``nnz``
        (default 4), ``hashing``; countsketch: ``hashing``; kronecker: ``shape``
        (a, b) with a·b = r (default: the most square factorisation of r).

    Raises:
      ValueError: unknown kind, bad sizes, or options the kind does not take.
    """

    def take(*allowed: str) -> dict[str, Any]:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"{kind} sketch does not take option(s) {unknown}; it takes {sorted(allowed) or 'none'}")
        return options

    if kind in ("gaussian", "rademacher"):
        return dense_sketch(key, in_dim, out_dim, distribution=kind, **take("block_size"))
    if kind == "sjlt":
        return sparse_sign_sketch(key, in_dim, out_dim, **take("nnz", "hashing"))
    if kind == "countsketch":
        return sparse_sign_sketch(key, in_dim, out_dim, nnz=1, **take("hashing"))
    if kind == "srht":
        take()
        return srht_sketch(key, in_dim, out_dim)
    if kind == "kronecker":
        shape = take("shape").get("shape") or split_dim(in_dim)
        if shape[0] * shape[1] != in_dim:
            raise ValueError(f"kronecker sketch: shape {tuple(shape)} has {shape[0] * shape[1]} entries, in_dim is {in_dim}")
        return kronecker_sketch(key, tuple(shape), out_dim)
    raise ValueError(f"unknown sketch kind {kind!r}; choose one of {KINDS}")
