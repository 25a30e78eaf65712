"""The ground floor of both libraries: plumbing that knows neither algorithm.

  ``streaming``    fixed-shape chunks, one step in flight, the ``Progress`` convention
  ``io``           atomic writes (json, npy), row / array / jsonl readers, the output marker
  ``checks``       the one set of input rules (rows, labels, positive ints, PRNG keys)
  ``precision``    ``HIGHEST`` and the matmul-precision rule
  ``gram``         the one second-moment accumulator (masked, with a held-out split)
  ``checkpoints``  the fingerprinted checkpoint directory of long jobs (prune, finetune)
  ``pytree``       frozen dataclasses registered as pytrees
  ``kernels``      ``project``: the linear maps a model calls (plain, LoRA, probed kernels)
  ``cli``          what the command lines share: one failure path, one progress bar, output checks

Nothing here imports ``skmm_jax``'s selection code or ``prune_jax``; both build on it.
"""
