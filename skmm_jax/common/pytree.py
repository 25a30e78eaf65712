"""Frozen dataclasses as pytrees: the structured parameters and random maps of both libraries.

A sketch (its random tables or key as leaves, its sizes static) or a wrapped kernel
(``kernels.LoraKernel``) is an ordinary argument of ``jax.jit`` / ``vmap`` /
``shard_map`` this way, and the same object always means the same map.
"""

from __future__ import annotations

import dataclasses

import jax

Array = jax.Array


def pytree_dataclass(cls: type, *, meta_fields: tuple[str, ...]) -> type:
    """Freezes ``cls`` as a dataclass and registers it as a pytree node.

    ``meta_fields`` are static (hashed into jit's cache key: sizes, kind names);
    every other field is a leaf (arrays, PRNG keys, nested sketches).
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    data_fields = [n for n in names if n not in meta_fields]
    return jax.tree_util.register_dataclass(cls, data_fields=data_fields, meta_fields=list(meta_fields))
