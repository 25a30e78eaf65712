"""Frozen-model features of token passages: batched, jitted, cached on disk, resumable.

Model-agnostic: the model is a *feature function* (`FeatureFn`)

    apply_fn(tokens [B, T] int32) -> (pooled [B, D], layer_input [B, T, D'] | None)

that returns the linear-probe feature of each passage and, optionally, a per-token
tensor (for a LLaMA: the residual stream entering the last block's MLP, which is all
that finetuning that MLP needs, see ``skmm_jax.experiments.mlp_finetune``). Which model, which
layer and which dtype are the caller's business; ``prune_jax.experiments.llama_features`` builds the
function for its LLaMA. `extract_features` streams the passages through it in
fixed-shape batches (``skmm_jax.common.streaming.stream_chunks``: one compile, the last batch
padded, one batch in flight) and keeps every output row.

Cache (``cache=`` a directory): ``pooled.npy`` [N, D] and ``layer_inputs.npy`` are
preallocated with ``np.lib.format.open_memmap`` and filled batch by batch;
``progress.json`` records ``rows_done`` and a fingerprint: sha256 of the caller's
model ``fingerprint`` bytes (e.g. its config and every parameter), the token array and
the layer-input dtype. A run with the same fingerprint continues from ``rows_done`` (or
returns at once when complete); a different fingerprint recomputes from scratch,
never reusing rows. Changing the batch size between runs is fine (progress is
counted in rows).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from skmm_jax.common.io import save_json_atomic
from skmm_jax.common.streaming import Progress, check_chunk_size, pad_leading, stream_chunks

__all__ = ["LAYER_INPUT_DTYPES", "ExtractedFeatures", "FeatureFn", "extract_features"]

FeatureFn = Callable[[Any], tuple[Any, Any]]
"""``apply_fn(tokens [B, T]) -> (pooled [B, D], layer_input [B, T, D'] | None)``; usually
jitted over the model's split state, so every batch shares one compilation."""

LAYER_INPUT_DTYPES = {"float16": np.float16, "float32": np.float32}
"""Dtypes a feature function may store its per-token output in (float16 halves the cache)."""

# Unchanged since the cache lived in skmm_jax.experiments.tasks, so existing caches stay valid.
_FEATURE_CACHE_FORMAT = "skmm_jax.experiments.tasks.features/v1"
_CACHE_ARRAYS = ("pooled", "layer_inputs")


class ExtractedFeatures(NamedTuple):
    """Outputs of `extract_features`.

    pooled: float32 [N, D], the per-passage feature.
    layer_inputs: [N, T, D'] per-token output (float16 or float32; a read-only memmap
      when cached), or None when the feature function returns none.
    """

    pooled: np.ndarray
    layer_inputs: np.ndarray | None


def _fingerprint(model_bytes: Iterable[bytes], tokens: np.ndarray, layer_dtype: str | None) -> str:
    """sha256 of (format, the model's bytes, the token array, the layer-input dtype)."""
    digest = hashlib.sha256()
    digest.update(_FEATURE_CACHE_FORMAT.encode())
    for part in model_bytes:
        digest.update(part)
    digest.update(f"{tokens.shape}\0{tokens.dtype}\0".encode())
    digest.update(np.ascontiguousarray(tokens).tobytes())
    digest.update(f"layer_input={layer_dtype}".encode())
    return digest.hexdigest()


class _FeatureCache:
    """Preallocated .npy memmaps + ``progress.json`` (the source of truth for rows done).

    Rows are written, the memmaps flushed, and only then is ``rows_done`` advanced
    (atomically), so rows beyond it are never trusted: a crash at any point resumes
    correctly, redoing at most one batch.
    """

    def __init__(self, directory: Path, fingerprint: str, shapes: dict[str, tuple[tuple[int, ...], Any]]):
        self.directory = directory
        self.fingerprint = fingerprint
        self.shapes = shapes
        self.progress_path = directory / "progress.json"
        self.arrays: dict[str, np.ndarray] = {}
        self.rows_done = 0
        self.total = next(iter(shapes.values()))[0][0]

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.npy"

    def open(self) -> None:
        """Reuses matching files (resume) or allocates fresh ones."""
        state = None
        if self.progress_path.is_file():
            try:
                state = json.loads(self.progress_path.read_text())
            except (OSError, ValueError):
                state = None
        if state and state.get("format") == _FEATURE_CACHE_FORMAT and state.get("fingerprint") == self.fingerprint:
            try:
                arrays = {name: np.load(self._path(name), mmap_mode="r+") for name in self.shapes}
            except (OSError, ValueError):
                arrays = None
            if arrays is not None and all(
                arrays[name].shape == shape and arrays[name].dtype == np.dtype(dtype)
                for name, (shape, dtype) in self.shapes.items()
            ):
                self.arrays, self.rows_done = arrays, int(state.get("rows_done", 0))
                return
        # Stale or foreign cache: forget it first, so a crash while reallocating never
        # leaves the old progress file vouching for new, empty arrays.
        self.progress_path.unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in _CACHE_ARRAYS:  # also arrays the new run does not produce
            self._path(name).unlink(missing_ok=True)
        for name, (shape, dtype) in self.shapes.items():
            self.arrays[name] = np.lib.format.open_memmap(self._path(name), mode="w+", dtype=dtype, shape=shape)
        self.rows_done = 0
        self._save()

    def _save(self) -> None:
        save_json_atomic(
            self.progress_path,
            {
                "format": _FEATURE_CACHE_FORMAT,
                "fingerprint": self.fingerprint,
                "rows_done": self.rows_done,
                "num_rows": self.total,
                "complete": self.rows_done == self.total,
                "arrays": {name: {"shape": list(shape), "dtype": np.dtype(dtype).name} for name, (shape, dtype) in self.shapes.items()},
            },
        )

    def write(self, start: int, stop: int, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            self.arrays[name][start:stop] = value
            self.arrays[name].flush()
        self.rows_done = stop
        self._save()

    def result(self) -> dict[str, np.ndarray]:
        for array in self.arrays.values():
            array.flush()
        self.arrays = {}
        return {name: np.load(self._path(name), mmap_mode="r") for name in self.shapes}


def _output_shapes(apply_fn: FeatureFn, tokens: np.ndarray, batch: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Host array shapes and dtypes of the outputs, from one abstract evaluation of a batch."""
    pooled, layer = jax.eval_shape(apply_fn, jax.ShapeDtypeStruct((batch, tokens.shape[1]), tokens.dtype))
    n = tokens.shape[0]
    if len(pooled.shape) != 2 or pooled.shape[0] != batch:
        raise ValueError(f"the feature function must return pooled features [B, D] = [{batch}, D], got shape {pooled.shape}")
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {"pooled": ((n, pooled.shape[1]), np.float32)}
    if layer is not None:
        if layer.shape[0] != batch or np.dtype(layer.dtype).name not in LAYER_INPUT_DTYPES:
            raise ValueError(
                f"the feature function's layer input must be [B = {batch}, ...] in one of {sorted(LAYER_INPUT_DTYPES)}, "
                f"got {layer.dtype} {layer.shape}"
            )
        shapes["layer_inputs"] = ((n, *layer.shape[1:]), np.dtype(layer.dtype))
    return shapes


def extract_features(
    apply_fn: FeatureFn,
    tokens: np.ndarray,
    *,
    fingerprint: Iterable[bytes] | None = None,
    cache: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> ExtractedFeatures:
    """Runs ``apply_fn`` over ``tokens`` [N, T] in batches and keeps every output row.

    Every batch has ``min(batch_size, N)`` rows (the last one padded by repeating its
    last row, whose outputs are dropped), so a jitted ``apply_fn`` compiles once; the
    next batch is dispatched before the previous one is copied back.

    Args:
      apply_fn: the `FeatureFn`.
      tokens: int [N, T] token ids (N, T ≥ 1), passed as int32.
      fingerprint: the bytes that identify the model behind ``apply_fn`` (its config
        and parameters, streamed in order); required with ``cache`` (a cache must
        never serve another model's features).
      cache: directory for the resumable cache (see the module docstring); None
        computes in memory.
      batch_size: passages per call of ``apply_fn``.
      progress: ``progress(rows_done, N)`` after each batch is stored (an exception it
        raises stops the extraction, leaving a resumable cache). The library never
        prints; a caller that wants a bar draws it here.

    Returns:
      `ExtractedFeatures` (pooled float32 [N, D]; layer_inputs or None, a read-only
      memmap when cached).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty integer [N, T] array, got dtype {tokens.dtype} shape {tokens.shape}")
    tokens = tokens.astype(np.int32)
    batch_size = check_chunk_size(batch_size, "batch_size")
    if cache is not None and fingerprint is None:
        raise ValueError("cache= needs fingerprint=: the bytes identifying the model, so a cache never serves another model")
    n = tokens.shape[0]
    size = min(batch_size, n)
    shapes = _output_shapes(apply_fn, tokens, size)

    store: _FeatureCache | None = None
    if cache is not None:
        layer_dtype = np.dtype(shapes["layer_inputs"][1]).name if "layer_inputs" in shapes else None
        store = _FeatureCache(Path(cache), _fingerprint(fingerprint, tokens, layer_dtype), shapes)
        store.open()
        arrays, start_row = store.arrays, store.rows_done
    else:
        arrays = {name: np.empty(shape, dtype) for name, (shape, dtype) in shapes.items()}
        start_row = 0

    def finish(start: int, stop: int, result: tuple[Any, Any]) -> None:
        pooled, layer = result
        values = {"pooled": pooled}
        if layer is not None:
            values["layer_inputs"] = layer
        start, stop = start_row + start, start_row + stop
        if store is not None:
            store.write(start, stop, values)
        else:
            for name, value in values.items():
                arrays[name][start:stop] = value

    if start_row < n:
        # A resumed run keeps the first run's batch shape (padding its short chunks up to
        # it): one compilation, and bitwise the rows a fresh run would have produced.
        stream_chunks(
            lambda chunk: apply_fn(pad_leading(chunk, size)),
            lambda start, stop: tokens[start_row + start : start_row + stop],
            finish,
            n - start_row,
            size,
            progress=None if progress is None else lambda done, total: progress(start_row + done, n),
        )

    if store is not None:
        arrays = store.result()
        return ExtractedFeatures(np.array(arrays["pooled"]), arrays.get("layer_inputs"))
    return ExtractedFeatures(arrays["pooled"], arrays.get("layer_inputs"))
