"""skmm_jax: Sketchy Moment Matching data selection for finetuning, in JAX.

Pipeline (one subpackage per step): ``sketch`` (JL transforms of per-sample
gradients) → gradients → moments → solve → select.
"""

from skmm_jax import sketch
from skmm_jax.sketch import KINDS, make_pytree_sketch, make_sketch, sketch_rows

__version__ = "0.1.0"

__all__ = ["KINDS", "make_pytree_sketch", "make_sketch", "sketch", "sketch_rows"]
