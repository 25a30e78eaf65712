"""Sketching a row matrix larger than device memory, chunk by chunk.

The rows of G [N, r] (a NumPy array or a memory-mapped .npy) are moved to the
device ``chunk_size`` at a time, sketched by one compiled function, and copied back
into a host [N, m] array (``skmm_jax.common.streaming.stream_chunks``: the last chunk is
padded so nothing recompiles, and the next chunk is dispatched before the previous
result is pulled back, so host reads, transfers and compute overlap). NaN/inf input
rows make their sketched rows non-finite (every kind has a non-zero weight on every
coordinate), which is how they are detected without a second pass over G.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.common.checks import check_rows
from skmm_jax.common.streaming import Progress, check_chunk_size, stream_chunks
from skmm_jax.sketch.base import Sketch

# One jitted entry point for every call: a sketch is a pytree argument, so the cache
# key is (sketch type, static sizes, chunk shape) and repeated calls never recompile.
_apply = jax.jit(lambda sketch, x: sketch(x))


def sketch_rows(
    sketch: Sketch,
    rows: np.ndarray,
    *,
    chunk_size: int = 256,
    progress: Progress | None = None,
) -> np.ndarray:
    """Returns ``rows @ Γ`` as a float32 NumPy array [N, m], streaming over rows.

    Args:
      sketch: any sketch with ``in_dim == rows.shape[1]``.
      rows: [N, r] float array (float64 is computed in float32); may be a memmap.
      chunk_size: rows per device step; memory is O(chunk_size · r).
      progress: optional callback ``(rows_done, rows_total)`` after each chunk.

    Raises:
      ValueError: wrong rank or width, or rows containing NaN/inf (named by index).
    """
    rows = check_rows(rows, name="rows", width="r")
    n, r = rows.shape
    if r != sketch.in_dim:
        raise ValueError(f"the sketch was built for rows of length {sketch.in_dim}, the input has {r} columns")
    chunk_size = check_chunk_size(chunk_size)
    dtype = np.float32 if rows.dtype == np.float64 else rows.dtype
    out = np.empty((n, sketch.out_dim), np.float32)

    def finish(start: int, stop: int, block: np.ndarray) -> None:
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            idx = (np.flatnonzero(bad) + start).tolist()
            raise ValueError(f"input rows {idx[:10]}{' …' if len(idx) > 10 else ''} contain NaN or inf")
        out[start:stop] = block

    stream_chunks(
        lambda chunk: _apply(sketch, jnp.asarray(chunk)),
        lambda start, stop: np.asarray(rows[start:stop], dtype=dtype),
        finish,
        n,
        chunk_size,
        progress=progress,
    )
    return out
