"""Sketching a pytree of per-sample gradients leaf by leaf.

For per-sample gradients g_i = (g_i^{(1)}, …, g_i^{(L)}) (one leaf per parameter
array), the sketch is the concatenated transform Γ = [Γ_1; …; Γ_L] applied to the
flattened concatenation, computed without concatenating:

    g_i Γ = Σ_l vec(g_i^{(l)}) Γ_l ,    Γ_l drawn from fold_in(key, l).

Each Γ_l is a JL map of its own leaf, so E‖gΓ‖² = Σ_l ‖g^{(l)}‖² = ‖g‖², and for the
dense kinds the stacked Γ has exactly the distribution of one r×m draw. How a kind
sketches one leaf is its registry entry's ``leaf`` (``SketchKind``): with
kind="kronecker", 2-D leaves (linear kernels) get a Kronecker-factored sketch and
the other leaves (biases, norms) a dense Gaussian one; with kind="srht", leaves
shorter than m (whose Hadamard transform has fewer than m rows) get a dense
Gaussian one too.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from skmm_jax.common.checks import as_key
from skmm_jax.common.gram import add_to
from skmm_jax.common.pytree import Array, pytree_dataclass
from skmm_jax.sketch.base import Sketch, check_dims
from skmm_jax.sketch.make import SKETCH_KINDS, check_options, sketch_kind


class PytreeSketch:
    """A sketch of every leaf of a pytree of per-sample arrays, summed into one [B, m].

    Attributes:
      leaves: one sketch per leaf, Γ_l : prod(leaf shape) → m.
      treedef: structure of one sample's gradient tree.
      leaf_shapes: per-sample shape of each leaf.
      out_dim: m.
    """

    leaves: tuple
    treedef: Any
    leaf_shapes: tuple
    out_dim: int

    kind = "pytree"

    @property
    def in_dim(self) -> int:
        return sum(math.prod(s) for s in self.leaf_shapes)

    def __call__(self, tree: Any) -> Array:
        """``tree`` has leaves [B, *leaf_shape]; returns [B, m] float32."""
        try:
            leaves = self.treedef.flatten_up_to(tree)
        except (ValueError, TypeError) as err:
            raise ValueError(f"pytree sketch was built for structure {self.treedef}; got a different tree: {err}") from None
        batch = None
        out = None
        for index, (leaf, shape, sketch) in enumerate(zip(leaves, self.leaf_shapes, self.leaves)):
            if tuple(leaf.shape[1:]) != shape:
                raise ValueError(f"leaf {index}: expected per-sample shape {shape}, got {tuple(leaf.shape[1:])} (leaf shape {tuple(leaf.shape)})")
            if batch is None:
                batch = leaf.shape[0]
            elif leaf.shape[0] != batch:
                raise ValueError(f"leaf {index}: batch size {leaf.shape[0]} differs from the first leaf's {batch}")
            part = sketch(leaf.reshape(batch, -1))
            out = add_to(out, part)
        return out


PytreeSketch = pytree_dataclass(PytreeSketch, meta_fields=("treedef", "leaf_shapes", "out_dim"))


def make_pytree_sketch(
    kind: str,
    key: Array,
    example: Any,
    out_dim: int,
    *,
    split: Callable[[str, tuple[int, ...]], int] | None = None,
    **options: Any,
) -> PytreeSketch:
    """Builds a leaf-by-leaf sketch for pytrees shaped like ``example`` (one sample).

    Args:
      kind: a kind from ``SKETCH_KINDS``.
      key: PRNG key; leaf l uses ``fold_in(key, l)`` (leaves in ``jax.tree`` order).
      example: a pytree of arrays or ``jax.ShapeDtypeStruct`` giving ONE sample's
        gradient shapes (e.g. the parameters themselves).
      out_dim: m, shared by all leaves.
      split: factored kinds (kronecker) only: ``split(path, shape) -> n_in``, the number of leading
        axes of a kernel leaf contracted with the layer input (path as in
        ``gradients.partition_params``). Default 1: [a, *rest] is read as
        [a, prod(rest)]. An output projection [N, H, D] needs 2.
      **options: the kind's options (``SKETCH_KINDS[kind].options``), for every leaf.
    """
    entry = sketch_kind(kind)
    out_dim = check_dims(1, out_dim, kind=kind)[1]
    key = as_key(key)
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(example)
    leaves = [leaf for _, leaf in path_leaves]
    paths = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in path_leaves]
    if split is not None and not entry.factored:
        factored = " or ".join(name for name, other in SKETCH_KINDS.items() if other.factored)
        raise ValueError(f"split= applies to the {factored} kind only (a factored sketch), not {kind!r}")
    if not leaves:
        raise ValueError("pytree sketch: the example tree has no leaves")
    if not entry.factored:  # a factored kind's leaf takes the shape from the leaf itself
        check_options(entry, options)
    shapes = tuple(tuple(int(d) for d in jnp.shape(leaf)) for leaf in leaves)
    sketches: list[Sketch] = []
    for index, shape in enumerate(shapes):
        leaf_key = jax.random.fold_in(key, index)
        if entry.factored and len(shape) >= 2:
            n_in = 1 if split is None else int(split(paths[index], shape))
            if not 1 <= n_in < len(shape):
                raise ValueError(f"split gave n_in = {n_in} for leaf {paths[index]!r} of shape {shape}; it must lie in [1, {len(shape) - 1}]")
            options_of_leaf = {**options, "n_in": n_in}
        else:
            options_of_leaf = options
        try:
            if entry.leaf is None:
                sketches.append(entry.build(leaf_key, math.prod(shape), out_dim, **options_of_leaf))
            else:
                sketches.append(entry.leaf(leaf_key, shape, out_dim, **options_of_leaf))
        except ValueError as err:
            raise ValueError(f"leaf {index} of shape {shape}: {err}") from None
    return PytreeSketch(tuple(sketches), treedef, shapes, out_dim)
