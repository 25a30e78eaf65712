"""Matmul precision for the linear algebra that must be exact in float32.

x64 is off by default in JAX and TPUs/GPUs compute float32 matmuls in bf16/tf32 passes
unless asked: Gram matrices, least squares, eigendecompositions and the moment-matching
objective use ``precision=HIGHEST`` so their results match NumPy to float32 rounding.
"""

import jax

HIGHEST = jax.lax.Precision.HIGHEST
