"""``python -m prune_jax.cli``: the same command as ``prune-jax`` (no console script on PATH needed)."""

from prune_jax.cli import main

if __name__ == "__main__":
    main()
