"""Experiment code over our LLaMA that only the benchmarks and tests use.

  ``llama_features``  LLaMA feature functions for ``skmm_jax.experiments.features``

The library (everything outside ``experiments`` and the command lines) never imports it.
"""
