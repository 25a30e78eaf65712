"""prune_jax: distribution-aware structured pruning of LLaMA-architecture models.

Pipeline (one module per step, landing issue by issue): load → calibrate → score →
slice → recover → export → evaluate. Today: locating the embedded default model.
"""

from prune_jax.embedded import EMBEDDED_MODELS, embedded_model_path

__version__ = "0.1.0"

__all__ = ["EMBEDDED_MODELS", "embedded_model_path"]
