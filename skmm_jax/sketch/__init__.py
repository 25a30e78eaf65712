"""Johnson–Lindenstrauss sketches of per-sample gradients (SkMM step 1).

Every kind is an entry of ``SKETCH_KINDS`` (name → ``SketchKind``: constructor,
options, how it sketches a pytree leaf) and a pytree built from an explicit key,
applied as ``sketch(x)`` to a batch ``[B, r] → [B, m]``; ``make_pytree_sketch``
sketches a pytree of per-sample gradients leaf by leaf; ``sketch_rows`` streams a host
matrix through a sketch.
"""

from skmm_jax.sketch.base import Sketch, SketchKind, sketch_matrix
from skmm_jax.sketch.dense import DenseSketch, dense_sketch
from skmm_jax.sketch.kronecker import KroneckerSketch, kronecker_sketch
from skmm_jax.sketch.make import KINDS, SKETCH_KINDS, make_sketch, register_sketch_kind, sketch_kind
from skmm_jax.sketch.pytree import PytreeSketch, make_pytree_sketch
from skmm_jax.sketch.sparse import SparseSignSketch, count_sketch, sparse_sign_sketch
from skmm_jax.sketch.srht import SRHTSketch, fwht, srht_sketch
from skmm_jax.sketch.stream import sketch_rows

__all__ = [
    "KINDS",
    "SKETCH_KINDS",
    "DenseSketch",
    "KroneckerSketch",
    "PytreeSketch",
    "SRHTSketch",
    "Sketch",
    "SketchKind",
    "SparseSignSketch",
    "count_sketch",
    "dense_sketch",
    "fwht",
    "kronecker_sketch",
    "make_pytree_sketch",
    "make_sketch",
    "register_sketch_kind",
    "sketch_kind",
    "sketch_matrix",
    "sketch_rows",
    "sparse_sign_sketch",
    "srht_sketch",
]
