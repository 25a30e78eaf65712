"""Sketching a row matrix larger than device memory, chunk by chunk.

The rows of G [N, r] (a NumPy array or a memory-mapped .npy) are moved to the
device ``chunk_size`` at a time, sketched by one compiled function (the last chunk
is zero-padded so nothing recompiles), and copied back into a host [N, m] array.
The next chunk is dispatched before the previous result is pulled back, so host
reads, transfers and compute overlap. NaN/inf input rows make their sketched rows
non-finite (every kind has a non-zero weight on every coordinate), which is how
they are detected without a second pass over G.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.sketch.base import Sketch

Progress = Callable[[int, int], None]
"""Called as ``progress(rows_done, rows_total)`` after each chunk."""


# One jitted entry point for every call: a sketch is a pytree argument, so the cache
# key is (sketch type, static sizes, chunk shape) and repeated calls never recompile.
_apply = jax.jit(lambda sketch, x: sketch(x))


def _as_float_rows(rows: np.ndarray) -> np.ndarray:
    if rows.ndim != 2:
        raise ValueError(f"expected a 2-D [N, r] array of row vectors, got shape {rows.shape}")
    if rows.shape[0] == 0:
        raise ValueError("the input has no rows (N = 0)")
    if not np.issubdtype(rows.dtype, np.floating):
        raise TypeError(f"expected floating-point rows, got dtype {rows.dtype}")
    return rows


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
      progress: optional callback ``(rows_done, rows_total)``.

    Raises:
      ValueError: wrong rank or width, or rows containing NaN/inf (named by index).
    """
    rows = _as_float_rows(rows)
    n, r = rows.shape
    if r != sketch.in_dim:
        raise ValueError(f"the sketch was built for rows of length {sketch.in_dim}, the input has {r} columns")
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    chunk_size = min(chunk_size, n)
    dtype = np.float32 if rows.dtype == np.float64 else rows.dtype
    out = np.empty((n, sketch.out_dim), np.float32)

    def finish(start: int, stop: int, result: jax.Array) -> None:
        block = np.asarray(result)[: stop - start]
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            idx = (np.flatnonzero(bad) + start).tolist()
            raise ValueError(f"input rows {idx[:10]}{' …' if len(idx) > 10 else ''} contain NaN or inf")
        out[start:stop] = block
        if progress is not None:
            progress(stop, n)

    pending = None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        chunk = np.asarray(rows[start:stop], dtype=dtype)
        if stop - start < chunk_size:
            chunk = np.concatenate([chunk, np.zeros((chunk_size - (stop - start), r), dtype)])
        result = _apply(sketch, jnp.asarray(chunk))
        if pending is not None:
            finish(*pending)
        pending = (start, stop, result)
    finish(*pending)
    return out
