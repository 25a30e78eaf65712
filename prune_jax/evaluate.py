"""Perplexity of a causal LM over non-overlapping token windows, jitted and batched.

For windows w_1 … w_W of T tokens cut from one token stream,

    PPL = exp( Σ_w Σ_{t=1}^{T-1} −log p(w_t | w_<t) / (W (T − 1)) ),

i.e. each window is scored on its own (the first token of a window has no context and
is not predicted; ``Llama.token_nll``). The forward runs one jitted call per decoder
block (equal-width blocks share the executable) and the loss in vocabulary chunks, so
neither compile time nor memory grows with depth or vocabulary; the last batch is padded
with zero-weight windows, so evaluation never recompiles after the first batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skmm_jax.common.checks import check_positive_int
from skmm_jax.common.streaming import Progress, chunk_bounds, pad_leading

Array = jax.Array


# The forward runs block by block: one jitted call per decoder block, so equal-width
# blocks share one executable and compile time does not grow with depth (a 30-block
# SmolLM2 forward compiled as one program took ≈ 20 s; block by block ≈ 1/30 of the
# block work plus the head). Activations between blocks are [B, T, D], as inside any
# fused forward. The model is split once (``StagedModel``) and every call is a plain
# ``jax.jit`` on (graphdef, state): ``nnx.jit`` would re-walk the module graph on every
# call, and there are L + 2 calls per batch.


@functools.partial(jax.jit, static_argnums=0)
def _embedded(graphdef, state, tokens: Array) -> Array:
    return nnx.merge(graphdef, state).embed_tokens(tokens)


@functools.partial(jax.jit, static_argnums=0)
def _block_output(graphdef, state, x: Array, positions: Array, inv_freq: Array) -> Array:
    return nnx.merge(graphdef, state)(x, positions, inv_freq)


@functools.partial(jax.jit, static_argnums=0)
def _weighted_nll_sum(graphdef, state, x: Array, targets: Array, weights: Array) -> Array:
    """Σ over rows (weighted) of Σ_t −log p(targets | stream x), float32, in vocabulary
    chunks (``Llama.next_token_nll``: never the [B, T, V] logits)."""
    model = nnx.merge(graphdef, state)
    return jnp.sum(model.next_token_nll(model.norm(x), targets) * weights[:, None])


@functools.partial(jax.jit, static_argnums=0)
def _row_mean_nll(graphdef, state, x: Array, targets: Array) -> Array:
    """[B]: each row's mean over t of −log p(targets_t | stream x), float32, in vocabulary
    chunks (as ``_weighted_nll_sum``, reduced per row instead of over the batch)."""
    model = nnx.merge(graphdef, state)
    return jnp.mean(model.next_token_nll(model.norm(x), targets), axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, x: Array) -> Array:
    model = nnx.merge(graphdef, state)
    return model.logits(model.norm(x))


class StagedModel:
    """``model``'s current weights split once, for block-by-block jitted calls (the
    forward of perplexity, zero-shot scoring and generation)."""

    def __init__(self, model):
        self.model = nnx.split(model)  # (graphdef, state) of the whole model: embedding, norm, head
        self.blocks = [nnx.split(block) for block in model.layers]
        self.inv_freq, self.default_positions = model.rope_frequencies(), model.default_positions

    def stream(self, tokens: Array) -> Array:
        """The residual stream after the last block, [B, T, D]."""
        x = _embedded(*self.model, tokens)
        positions = self.default_positions(tokens)
        for graphdef, state in self.blocks:
            x = _block_output(graphdef, state, x, positions, self.inv_freq)
        return x

    def logits(self, tokens: Array) -> Array:
        return _logits(*self.model, self.stream(tokens))

    def nll_sum(self, tokens: Array, weights: Array) -> Array:
        """Σ_rows weight · Σ_t −log p(tokens[:, t + 1] | tokens[:, ≤ t])."""
        return _weighted_nll_sum(*self.model, self.stream(tokens[:, :-1]), tokens[:, 1:], weights)

    def row_mean_nll(self, tokens: Array) -> Array:
        """[B]: (1 / (T − 1)) Σ_t −log p(tokens[:, t + 1] | tokens[:, ≤ t]) of each row."""
        return _row_mean_nll(*self.model, self.stream(tokens[:, :-1]), tokens[:, 1:])


def compiled_forward(model) -> Callable[[Array], Array]:
    """``tokens [B, T] → logits [B, T, V]`` (float32) for ``model``'s current weights,
    block by block (see above); returns device arrays without waiting for them (timing
    code calls ``.block_until_ready()``)."""
    return StagedModel(model).logits


def bucket_length(length: int, *, minimum: int = 16) -> int:
    """Sequence lengths are padded to the next power of two (≥ ``minimum``), so a
    stream of arbitrary lengths compiles O(log T_max) forwards, not one per length."""
    return max(minimum, 1 << max(0, (length - 1).bit_length()))


def forward_logits(model, tokens: np.ndarray) -> np.ndarray:
    """Logits [B, T, V] for any [B, T] token batch (T within the model's context),
    with T padded to a bucket.

    Right padding is exact for a causal model: positions < T never attend to the pad
    (so the bucket may exceed the context; only T is checked).
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    batch, length = tokens.shape
    model.config.check_sequence_length(length, name="tokens.shape[1]")
    padded = np.zeros((batch, bucket_length(length)), np.int32)
    padded[:, :length] = tokens
    return np.asarray(compiled_forward(model)(jnp.asarray(padded)))[:, :length]


def forward_tokens_per_second(model, tokens: np.ndarray, *, repeats: int = 5) -> float:
    """Measured forward throughput (logits included) on one [B, T] batch: B·T divided by
    the median of ``repeats`` timed calls, after one untimed call that compiles."""
    import time

    tokens = jnp.asarray(np.asarray(tokens, np.int32))
    forward = compiled_forward(model)
    forward(tokens).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(tokens).block_until_ready()
        times.append(time.perf_counter() - start)
    return tokens.size / float(np.median(times))


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens, W · (T − 1)
    windows: int
    seq_len: int


def _check_windows(model, windows: np.ndarray, batch_size: int | None) -> tuple[np.ndarray, int]:
    """(windows as an array, the batch size to use) or a ValueError naming what is wrong
    (checked before anything is compiled); ``batch_size=None`` keeps a step near 16 K
    tokens."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise ValueError(f"windows must be [W >= 1, T >= 2] tokens, got shape {windows.shape}")
    if not np.issubdtype(windows.dtype, np.integer):
        raise ValueError(f"windows must hold integer token ids, got dtype {windows.dtype}")
    model.config.check_sequence_length(windows.shape[1], name="windows.shape[1]")
    vocab = model.config.vocab_size
    if windows.min() < 0 or windows.max() >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}) for this model, got range [{windows.min()}, {windows.max()}]")
    check_positive_int(batch_size, "batch_size", allow_none=True)
    return windows, min(batch_size or max(1, 16384 // windows.shape[1]), windows.shape[0])


def perplexity(
    model,
    windows: np.ndarray,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> PerplexityResult:
    """exp(mean NLL) of ``model`` over token windows [W, T] (see module docstring).

    Args:
      model: our LLaMA (a module with ``token_nll(tokens [B, T]) → [B, T − 1]`` whose
        ``config`` has ``vocab_size`` and ``check_sequence_length``).
      windows: [W, T] int token windows (e.g. ``prune_jax.data.eval_windows``);
        T must not exceed the model's context (``max_position_embeddings``).
      batch_size: windows per step; default keeps the [B, T, V] logits near 16 K tokens.
      progress: ``progress(windows_done, windows_total)`` after each batch.

    Raises:
      ValueError: windows of the wrong shape or dtype, token ids outside the vocabulary,
        or T above the model's context (checked before anything is compiled).
    """
    windows, batch_size = _check_windows(model, windows, batch_size)
    count, seq_len = windows.shape
    staged, total = StagedModel(model), jnp.zeros((), jnp.float32)
    # Not ``stream_chunks``: the sum stays on the device (one host sync at the end, no
    # per-batch transfer), and padded windows are weighted out inside the reduction.
    for start, stop in chunk_bounds(count, batch_size):
        chunk = pad_leading(windows[start:stop].astype(np.int32), batch_size)  # [batch_size, T]
        weights = (np.arange(batch_size) < stop - start).astype(np.float32)
        total = total + staged.nll_sum(jnp.asarray(chunk), jnp.asarray(weights))
        if progress is not None:
            # Only a progress display waits for each batch; without one, batches are
            # dispatched back to back and the host syncs once at the end.
            total.block_until_ready()
            progress(stop, count)
    predicted = count * (seq_len - 1)
    nll = float(total) / predicted
    return PerplexityResult(perplexity=math.exp(nll), nll=nll, tokens=predicted, windows=count, seq_len=seq_len)


def window_nll(
    model,
    windows: np.ndarray,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Each window's mean next-token NLL, [W] float32 (nats):

        ℓ_w = (1 / (T − 1)) Σ_{t=1}^{T-1} −log p(w_t | w_<t),

    the per-row counterpart of `perplexity` (whose NLL is the mean of these ℓ_w), with the
    same jitted block-by-block forward and padding (so one compilation for all batches):
    the per-example loss of loss-based data selection (EL2N-style "hardest first").
    Arguments and errors as `perplexity`'s.
    """
    windows, batch_size = _check_windows(model, windows, batch_size)
    count = windows.shape[0]
    staged, parts = StagedModel(model), []
    for start, stop in chunk_bounds(count, batch_size):
        chunk = pad_leading(windows[start:stop].astype(np.int32), batch_size)  # padded rows are dropped below
        parts.append(staged.row_mean_nll(jnp.asarray(chunk))[: stop - start])
        if progress is not None:
            parts[-1].block_until_ready()
            progress(stop, count)
    return np.asarray(jnp.concatenate(parts), np.float32)
