"""One helper for every streaming loop: fixed-shape chunks, one step in flight, progress.

Loops over samples/rows/windows (sketching rows, per-sample gradients, feature
extraction, logits, perplexity, calibration) all share one shape:

    for each chunk [start, stop) of ``total`` items:
        host = load(start, stop)            # numpy pytree, leading axis stop − start
        host = pad to chunk_size rows       # one shape → one compilation
        result = apply(host)                # jitted device work, dispatched asynchronously
        finish(previous chunk)              # host sync of the PREVIOUS chunk only
        progress(done, total)

Keeping one chunk in flight overlaps host work (reading a memmap, writing results)
with device work, and no host sync happens between dispatch and the next load.
Padding repeats the last real row (``np.pad(mode="edge")``), not zeros: a zero row can
produce NaN in functions that normalise (a zero feature vector, an all-masked
sequence), and padded rows are dropped before ``finish`` sees the result anyway.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np

from skmm_jax.common.checks import check_positive_int

# progress(done, total): the one progress convention of both libraries. The library never
# prints; a CLI passes a callback that draws a bar.
Progress = Callable[[int, int], None]


def check_chunk_size(chunk_size: Any, name: str = "chunk_size") -> int:
    """`check_positive_int` for a chunk (batch) size: the int, or ValueError naming the argument."""
    return check_positive_int(chunk_size, name)


def chunk_bounds(total: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive chunks covering [0, total); the last may be short."""
    chunk_size = check_chunk_size(chunk_size)
    for start in range(0, total, chunk_size):
        yield start, min(start + chunk_size, total)


def pad_leading(tree: Any, size: int) -> Any:
    """Pads every array leaf of ``tree`` along axis 0 to ``size`` rows by repeating its last row."""

    def pad(leaf):
        leaf = np.asarray(leaf)
        missing = size - leaf.shape[0]
        if missing <= 0:
            return leaf
        return np.pad(leaf, [(0, missing)] + [(0, 0)] * (leaf.ndim - 1), mode="edge")

    return jax.tree.map(pad, tree)


def stream_chunks(
    apply: Callable[[Any], Any],
    load: Callable[[int, int], Any],
    finish: Callable[[int, int, Any], None],
    total: int,
    chunk_size: int,
    *,
    progress: Progress | None = None,
) -> None:
    """Runs ``apply`` over fixed-size chunks of ``total`` items, one chunk in flight.

    Args:
      apply: device function of one padded chunk (a pytree of arrays with leading axis
        ``min(chunk_size, total)``); usually jitted, so every chunk shares one compile.
      load: ``load(start, stop)`` → the host pytree for items [start, stop).
      finish: ``finish(start, stop, result)`` with ``result`` = ``apply``'s output as
        NumPy, cut to the stop − start real rows; called in order, one chunk behind.
      total: number of items (≥ 1).
      chunk_size: items per device step (the last chunk is padded up to it).
      progress: ``progress(items_done, total)`` after each finished chunk.
    """
    check_positive_int(total, "total")
    size = min(check_chunk_size(chunk_size), total)

    def complete(start: int, stop: int, result: Any) -> None:
        finish(start, stop, jax.tree.map(lambda leaf: np.asarray(leaf)[: stop - start], result))
        if progress is not None:
            progress(stop, total)

    pending = None
    for start, stop in chunk_bounds(total, size):
        result = apply(pad_leading(load(start, stop), size))
        if pending is not None:
            complete(*pending)
        pending = (start, stop, result)
    complete(*pending)
