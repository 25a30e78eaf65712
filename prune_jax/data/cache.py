"""Where prune_jax keeps what it downloads or derives (the Wikipedia sample, token streams)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$PRUNE_JAX_CACHE`` if set and non-empty, else ``~/.cache/prune_jax``."""
    configured = os.environ.get("PRUNE_JAX_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "prune_jax"
