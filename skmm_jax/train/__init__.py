"""Training on a selected coreset, one concept per module:

  ``loop``      the one minibatch training loop (lax.scan over epochs × shuffled batches)
  ``probe``     the linear softmax classifier on standardised features: one trainer for
                linear probing (LP) and for the DeepCore proxy, hyperparameter search
  ``finetune``  the last decoder block's MLP + a linear head on cached MLP inputs (FT)
  ``metrics``   accuracy and macro-F1

Import from the submodules (``from skmm_jax.train.probe import train_linear_probe``):
this package imports nothing itself, so the label-aware selectors, which need only
``probe``, do not pull in Flax.
"""
