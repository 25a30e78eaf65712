"""Johnson–Lindenstrauss sketches of per-sample gradients (SkMM step 1).

Every kind is a pytree built from an explicit key, applied as ``sketch(x)`` to a
batch ``[B, r] → [B, m]``; ``make_pytree_sketch`` sketches a pytree of per-sample
gradients leaf by leaf; ``sketch_rows`` streams a host matrix through a sketch.
"""

from skmm_jax.sketch.base import Sketch, sketch_matrix
from skmm_jax.sketch.dense import DenseSketch, dense_sketch
from skmm_jax.sketch.kronecker import KroneckerSketch, kronecker_sketch
from skmm_jax.sketch.make import KINDS, make_sketch
from skmm_jax.sketch.pytree import PytreeSketch, make_pytree_sketch
from skmm_jax.sketch.sparse import SparseSignSketch, count_sketch, sparse_sign_sketch
from skmm_jax.sketch.srht import SRHTSketch, fwht, srht_sketch
from skmm_jax.sketch.stream import sketch_rows

__all__ = [
    "KINDS",
    "DenseSketch",
    "KroneckerSketch",
    "PytreeSketch",
    "SRHTSketch",
    "Sketch",
    "SparseSignSketch",
    "count_sketch",
    "dense_sketch",
    "fwht",
    "kronecker_sketch",
    "make_pytree_sketch",
    "make_sketch",
    "sketch_matrix",
    "sketch_rows",
    "sparse_sign_sketch",
    "srht_sketch",
]
