"""Structured pruning of LLaMA models: calibrate → score → slice → recover.

``prune(model, calibration_tokens, PruneConfig(...))`` returns the physically smaller
model and a report; see ``prune_jax.pruning.prune`` for the block-by-block procedure,
``scores`` for every unit score (the paper's distribution-aware ones and the
baselines), ``recover`` for the ridge refits.
"""

from prune_jax.pruning.prune import HEAD_MODES, PruneConfig, prunable_parameters, prune, slice_channels, slice_heads
from prune_jax.pruning.scores import METHODS

__all__ = ["HEAD_MODES", "METHODS", "PruneConfig", "prunable_parameters", "prune", "slice_channels", "slice_heads"]
