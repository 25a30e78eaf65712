"""Training a linear proxy on features, one concept per module:

  ``loop``      the one minibatch training loop (lax.scan over epochs × shuffled batches)
  ``probe``     the linear softmax classifier on standardised features: one trainer for
                linear probing (LP) and for the DeepCore proxy, hyperparameter search

Import from the submodules (``from skmm_jax.train.probe import train_linear_probe``):
this package imports nothing itself, so the label-aware selectors, which need only
``probe``, do not pull in Flax. The FT-setting MLP and the metrics of the benchmarks
live in ``skmm_jax.experiments``.
"""
