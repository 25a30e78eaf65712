"""Structured pruning of LLaMA models: calibrate → score → slice → recover.

``prune(model, calibration_tokens, PruneConfig(...))`` returns the physically smaller
model and a typed report (``report.PruneReport``; ``to_json()`` is ``pruning.json``).
``config`` holds ``PruneConfig`` and its groups (``Budget``, ``HeadCriterion``,
``Recovery``; a method's own options are declared by its ``Score`` entry).
One module per step: ``allocation`` (budget → per-layer cuts, the registry of modes), ``stage`` (the block
stage both halves share), ``scores`` (the score registry: the paper's
distribution-aware scores and the baselines), ``calibrate`` (statistics, gradients),
``slicing`` (keep sets, kernels), ``recover`` (the ridge refits), ``obs`` (the greedy
removal with optimal compensation of "dap-obs"), ``prune`` (the pipeline).
"""

from prune_jax.pruning.allocation import ALLOCATIONS, HEAD_MODES, AllocationMode, prunable_parameters
from prune_jax.pruning.config import Budget, HeadCriterion, PruneConfig, Recovery
from prune_jax.pruning.prune import prune
from prune_jax.pruning.report import PruneReport
from prune_jax.pruning.scores import METHODS, SCORES, NormOptions, ObsOptions, Score
from prune_jax.pruning.slicing import slice_channels, slice_heads

__all__ = ["ALLOCATIONS", "HEAD_MODES", "METHODS", "SCORES", "AllocationMode", "Budget", "HeadCriterion", "NormOptions", "ObsOptions",
           "PruneConfig", "PruneReport", "Recovery", "Score", "prunable_parameters", "prune", "slice_channels", "slice_heads"]
