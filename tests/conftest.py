"""Test-wide JAX settings; must run before the first JAX operation.

4 forced CPU devices let sharded code be checked against single-device results;
strict dtype promotion and rank promotion errors catch silent upcasts/broadcasts.
"""

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
