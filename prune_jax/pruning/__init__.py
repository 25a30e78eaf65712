"""Structured pruning of LLaMA models: calibrate → score → slice → recover.

``prune(model, calibration_tokens, PruneConfig(...))`` returns the physically smaller
model and a typed report (``report.PruneReport``; ``to_json()`` is ``pruning.json``).
One module per step: ``allocation`` (budget → per-layer cuts), ``stage`` (the block
stage both halves share), ``scores`` (the score registry: the paper's
distribution-aware scores and the baselines), ``calibrate`` (statistics, gradients),
``slicing`` (keep sets, kernels), ``recover`` (the ridge refits), ``obs`` (the greedy
removal with optimal compensation of "dap-obs"), ``prune`` (the pipeline).
"""

from prune_jax.pruning.allocation import HEAD_MODES, prunable_parameters
from prune_jax.pruning.prune import PruneConfig, prune
from prune_jax.pruning.report import PruneReport
from prune_jax.pruning.scores import METHODS, SCORES, Score
from prune_jax.pruning.slicing import slice_channels, slice_heads

__all__ = ["HEAD_MODES", "METHODS", "SCORES", "PruneConfig", "PruneReport", "Score", "prunable_parameters", "prune", "slice_channels", "slice_heads"]
