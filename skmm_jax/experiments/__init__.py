"""Experiment code: what the benchmarks and the demo run, kept out of the library.

  ``tasks``         labelled passages from offline corpora, splits
  ``features``      frozen-model features through a feature function, cached on disk
  ``mlp_finetune``  the last decoder MLP + a linear head on cached inputs (the FT setting)
  ``metrics``       accuracy and macro-F1
  ``demo``          ``skmm-jax demo``: every sketch kind on per-sample gradients of a small MLP

The library (everything outside ``experiments`` and the command lines) never imports it.
"""
