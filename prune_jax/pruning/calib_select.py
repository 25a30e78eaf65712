"""Choosing the calibration windows by the distribution they must preserve.

Every statistic the pruning reads is a sum over calibration windows w of a per-window
second moment of some layer's input, e.g. for the MLP input x_t of block l

    M_l = Σ_w M_{l,w},     M_{l,w} = Σ_{t∈w} x_t x_tᵀ   (D × D),

so n windows calibrate well when their average M_{l,w} is close to the pool's at every
layer. The pool is a uniform subset of the calibration split's non-overlapping ``seq_len``
windows: ``default_pool_size(n)`` = max(16 n, 512) of them by default (every window of a
smaller split), ``pool`` of them when given, or every one (``pool="all"``); a window's
representation is one of

* ``"moments"``: the Kronecker sketch of (1/T) M_{l,w} at a few layers, i.e.
  (1/T) Σ_t (Γ_aᵀ x_t) ⊗ (Γ_bᵀ x_t) (``KroneckerSketch.apply_factors``), the layers'
  sketches concatenated: an unbiased sketch of exactly what the pruning accumulates;
* ``"hidden"``: the mean-pooled residual stream at the same layers (cheaper to read,
  a first-moment summary);

and n windows are chosen by any registered selection method of ``skmm_jax.select``
(SkMM by default). ``moment_error`` measures the result on the calibration side only:
the mean over ALL blocks of ‖M̄_{l,S} − M̄_l‖_F / ‖M̄_l‖_F (per-token averages), which is
how ``benchmarks/calib_select.py`` chooses the representation, never on evaluation text.

Cost: one forward pass over the pool (P · T tokens) plus the selection; memory: the
[P, m] representations and L D × D float32 sums. That pass is why the default pool is
bounded: every window of a 2.3 MB text is ~550 K tokens (over 17 minutes of SmolLM2-135M
on a 2-core CPU) to pick 16 windows, while 512 windows of 128 tokens take ~90 s there
(``benchmarks/calib_select.py``, whose measurements used a pool of 512).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.data.windows import eval_windows
from skmm_jax.common.checks import check_positive_int
from skmm_jax.common.gram import add_to, gram_of, sum_of
from skmm_jax.common.streaming import Progress, chunk_bounds, pad_leading
from skmm_jax.sketch import kronecker_sketch

REPRESENTATIONS = ("moments", "hidden")
CALIB_SELECTIONS = ("random", "skmm", "kcenter", "herding", "uniform", "leverage", "ridge-leverage", "adaptive")

POOL_PER_WINDOW = 16  # candidate windows per window kept, in the default pool
POOL_MIN = 512  # the default pool's floor: the pool benchmarks/calib_select.py measured

__all__ = ["CALIB_SELECTIONS", "POOL_MIN", "POOL_PER_WINDOW", "REPRESENTATIONS", "CalibrationChoice", "default_pool_size",
           "input_moments", "moment_error", "pool_size", "select_calibration", "window_pool", "window_representations"]


def default_pool_size(n: int) -> int:
    """Candidate windows of the default pool for n windows kept: max(16 n, 512).

    The pool's forward pass dominates the cost (P · T tokens), so it is bounded by n, not
    by the corpus: 16 candidates per kept window gives the selection as much choice per
    pick as it needs, and the floor of 512 is the pool ``benchmarks/calib_select.py``
    measured for n = 16, 32, 64. A split with fewer windows uses all of them."""
    return max(POOL_PER_WINDOW * check_positive_int(n, "n"), POOL_MIN)


def pool_size(pool: int | str | None, n: int, available: int) -> int:
    """Windows in the pool: ``default_pool_size(n)`` for None, ``available`` for "all",
    else ``pool``; never more than the ``available`` windows of the split.

    Raises:
      ValueError: ``pool`` is not None, "all" or a positive int.
    """
    if pool is None:
        return min(default_pool_size(n), available)
    if pool == "all":
        return available
    if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 1:
        raise ValueError(f"pool must be a number of windows, 'all' (every window) or None (the default: max({POOL_PER_WINDOW}·n, "
                         f"{POOL_MIN}) windows), got {pool!r}")
    return min(int(pool), available)


def window_pool(tokens: np.ndarray, seq_len: int, *, pool: int | None = None, seed: int = 0) -> np.ndarray:
    """Every non-overlapping ``seq_len`` window of the stream (``eval_windows``), [P, seq_len]:
    a uniform subset of ``pool`` of them when given, in stream order."""
    check_positive_int(pool, "pool", allow_none=True)
    windows = eval_windows(np.asarray(tokens).reshape(-1), seq_len)
    if pool is not None and pool < len(windows):  # the same rng draw as select_calibration's pool
        keep = np.sort(np.random.default_rng(seed).choice(len(windows), size=pool, replace=False))
        windows = windows[keep]
    return windows


def _default_layers(num_layers: int) -> tuple[int, ...]:
    return tuple(sorted({0, num_layers // 2, num_layers - 1}))


@functools.partial(jax.jit, static_argnums=0)
def _block_inputs(graphdef: Any, state: Any, tokens: jax.Array) -> list[jax.Array]:
    """The normed MLP input x [B, T, D] (float32) of every block, in order."""
    model = nnx.merge(graphdef, state)
    positions = model.default_positions(tokens)
    return [step.block.post_attn_norm(step.h).astype(jnp.float32) for step in model.walk(model.embed_tokens(tokens), positions)]


def _batches(windows: np.ndarray, batch: int):
    """(start, stop, tokens [b, T] padded to b = min(batch, P) rows, valid-row mask [b]): one compilation."""
    size = min(batch, len(windows))
    for start, stop in chunk_bounds(len(windows), size):
        rows = pad_leading(windows[start:stop], size)
        yield start, stop, jnp.asarray(rows), jnp.arange(size) < (stop - start)


@jax.jit
def _grams(inputs: list[jax.Array], valid: jax.Array) -> jax.Array:
    """Σ over valid rows and tokens of x xᵀ per block, [L, D, D] (``gram_of``: float32, HIGHEST)."""
    return jnp.stack([gram_of(x * valid.astype(x.dtype)[:, None, None]) for x in inputs])


def input_moments(model: Any, windows: np.ndarray, *, batch: int = 8) -> np.ndarray:
    """Per-token second moments of every block's MLP input, (1/(|W| T)) Σ x_t x_tᵀ, [L, D, D]."""
    graphdef, state = nnx.split(model)
    total = sum_of(_grams(_block_inputs(graphdef, state, chunk), valid) for _, _, chunk, valid in _batches(windows, batch))
    return np.asarray(total) / (windows.shape[0] * windows.shape[1])


def moment_error(subset: np.ndarray, pool: np.ndarray) -> float:
    """Mean over blocks of ‖M_S − M‖_F / ‖M‖_F for per-token moments [L, D, D]."""
    num = np.linalg.norm((subset - pool).reshape(len(pool), -1), axis=1)
    return float(np.mean(num / np.linalg.norm(pool.reshape(len(pool), -1), axis=1)))


def window_representations(
    model: Any,
    windows: np.ndarray,
    representation: str = "moments",
    *,
    layers: Sequence[int] | None = None,
    sketch_dim: int = 256,
    key: jax.Array | None = None,
    batch: int = 8,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(representations [P, d] float32, pool moments [L, D, D]) in one pass over the pool.

    ``moments``: per layer a Kronecker sketch (m = ``sketch_dim``) of (1/T) Σ_t x_t x_tᵀ;
    ``hidden``: per layer the mean of x_t. Layers default to the first, middle and last block.
    """
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown calibration representation {representation!r}; choose one of {REPRESENTATIONS}")
    num_layers = model.config.num_layers
    layers = _default_layers(num_layers) if layers is None else tuple(int(i) for i in layers)
    if not layers or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"layers {list(layers)} must be a non-empty subset of [0, {num_layers})")
    width = model.config.hidden_size
    key = jax.random.key(0) if key is None else key
    sketches = [kronecker_sketch(jax.random.fold_in(key, i), (width, width), sketch_dim) for i in layers]
    graphdef, state = nnx.split(model)
    features, total = [], None
    if progress is not None:
        progress(0, len(windows))  # the pool's size shows before the first (compiling) batch
    for start, stop, chunk, valid in _batches(windows, batch):
        inputs = _block_inputs(graphdef, state, chunk)
        total = add_to(total, _grams(inputs, valid))
        parts = []
        for i, sketch in zip(layers, sketches):
            x = inputs[i]
            parts.append(sketch.apply_factors(x, x) / x.shape[1] if representation == "moments" else jnp.mean(x, axis=1))
        features.append(np.asarray(jnp.concatenate(parts, axis=1))[: stop - start])  # padding rows dropped
        if progress is not None:
            progress(stop, len(windows))
    return np.concatenate(features).astype(np.float32), np.asarray(total) / (windows.shape[0] * windows.shape[1])


@dataclasses.dataclass(frozen=True)
class CalibrationChoice:
    """The chosen windows and what the choice was (recorded in ``pruning.json``)."""

    windows: np.ndarray  # [n, seq_len]
    indices: np.ndarray  # [n] into the pool
    record: dict


def select_calibration(
    model: Any,
    tokens: np.ndarray,
    n: int,
    *,
    method: str = "skmm",
    representation: str = "moments",
    seq_len: int = 128,
    pool: int | str | None = None,
    seed: int = 0,
    sketch_dim: int = 256,
    progress: Progress | None = None,
) -> CalibrationChoice:
    """n calibration windows of ``tokens`` chosen by ``method`` on window representations.

    Args:
      model: the dense model (its block inputs define the representations).
      tokens: the calibration token stream.
      n: windows to keep.
      method: "random" (n uniform windows of the pool, no forward pass) or any method of
        ``skmm_jax.select.METHODS`` that needs no labels.
      representation: see ``REPRESENTATIONS``.
      pool: windows in the candidate pool, a uniform subset of the split's windows: None
        (default) ``default_pool_size(n)`` = max(16 n, 512) (every window for "random",
        which runs no forward pass), "all" every window, or a count (every window when
        the split has fewer).
      seed: the pool subset, "random" and the selection key.

    Raises:
      ValueError: unknown method or representation, an empty corpus, a bad ``pool`` or one
        smaller than n.
    """
    from skmm_jax.select import METHODS, select

    if method != "random" and method not in METHODS:
        raise ValueError(f"unknown calibration selection {method!r}; choose random or one of {sorted(METHODS)}")
    if method != "random" and METHODS[method].needs_labels:
        raise ValueError(f"calibration selection {method!r} needs labels; windows have none")
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown calibration representation {representation!r}; choose one of {REPRESENTATIONS}")
    check_positive_int(n, "n")
    every = window_pool(tokens, seq_len)
    # "random" runs no forward pass, so its pool needs no bound: every window by default
    size = pool_size("all" if pool is None and method == "random" else pool, n, len(every))
    windows = window_pool(tokens, seq_len, pool=size, seed=seed)
    if len(windows) < n:
        raise ValueError(f"the calibration pool has {len(windows)} windows of {seq_len} tokens, fewer than the {n} asked for")
    start = time.perf_counter()
    record: dict = {"method": method, "pool": int(len(windows)), "pool_available": int(len(every)),
                    "pool_requested": "default" if pool is None else pool, "seq_len": seq_len, "n": int(n), "seed": seed}
    if method == "random":
        indices = np.sort(np.random.default_rng(seed).choice(len(windows), size=n, replace=False))
    else:
        features, pool_moments = window_representations(model, windows, representation, sketch_dim=sketch_dim,
                                                        key=jax.random.key(seed), progress=progress)
        choice = select(method, jax.random.key(seed), features, n)
        indices = np.sort(np.asarray(choice.indices))
        subset_moments = input_moments(model, windows[indices])
        diagnostics = {k: v for k, v in choice.diagnostics.items() if isinstance(v, (int, float, str, bool))}
        record.update(representation=representation, sketch_dim=sketch_dim, moment_error=moment_error(subset_moments, pool_moments),
                      diagnostics=diagnostics)
    record["seconds"] = time.perf_counter() - start
    # Shuffled, as calibration_batches' rows are: the pool is in document order, and the
    # recovery refit chooses its ridge on contiguous blocks of sequences (k folds; folds=1:
    # the LAST 10 % of the tokens); in pool order each block would be a run of documents
    # (a shift between fit and hold-out).
    indices = np.random.default_rng([seed, 1]).permutation(indices)
    record["indices"] = [int(i) for i in indices]
    return CalibrationChoice(windows[indices], indices, record)
