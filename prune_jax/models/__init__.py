"""Model families prune_jax can load, prune and export."""
