"""Fixed-length windows of a token stream: random disjoint ones to calibrate on,
consecutive ones to evaluate on."""

from __future__ import annotations

import numpy as np

from skmm_jax.common.checks import check_positive_int

__all__ = ["calibration_batches", "eval_windows"]


def _check_token_stream(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
    check_positive_int(seq_len, "seq_len")
    return tokens


def calibration_batches(tokens: np.ndarray, *, num_samples: int, seq_len: int, seed: int) -> np.ndarray:
    """``num_samples`` random, pairwise non-overlapping windows of ``seq_len`` tokens.

    Placement is uniform over all non-overlapping placements (not only those on a
    ``seq_len`` grid): with ``slack = N - num_samples * seq_len`` spare tokens, the
    gaps before the (sorted) windows are a uniformly random non-decreasing sequence
    in ``[0, slack]`` (stars and bars). Rows are then shuffled, so row order carries
    no position information. Windows may cross document boundaries.

    Args:
      tokens: ``[N]`` token stream, e.g. from `tokenize_corpus`.
      num_samples: number of windows (>= 1).
      seq_len: tokens per window (>= 1).
      seed: the windows are a pure function of (tokens length, arguments, seed).

    Returns:
      ``[num_samples, seq_len]`` array, same dtype as ``tokens``.

    Raises:
      ValueError: ``num_samples * seq_len > N``, or a non-positive size.
    """
    tokens = _check_token_stream(tokens, seq_len)
    check_positive_int(num_samples, "num_samples")
    slack = tokens.size - num_samples * seq_len
    if slack < 0:
        raise ValueError(
            f"num_samples={num_samples} windows of seq_len={seq_len} need {num_samples * seq_len} tokens, "
            f"but the stream has {tokens.size}; use at most {tokens.size // seq_len} samples or a larger corpus"
        )
    rng = np.random.default_rng(seed)
    # Choosing num_samples of slack + num_samples slots, the i-th chosen slot (sorted)
    # minus i is the gap before window i: a uniform non-decreasing sequence in [0, slack].
    slots = np.sort(rng.choice(slack + num_samples, size=num_samples, replace=False))
    ranks = np.arange(num_samples)
    starts = (slots - ranks) + ranks * seq_len
    starts = starts[rng.permutation(num_samples)]
    return tokens[starts[:, None] + np.arange(seq_len)[None, :]]  # [num_samples, seq_len]


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows ``tokens[i*seq_len:(i+1)*seq_len]``.

    The trailing remainder shorter than ``seq_len`` is dropped (never padded), so every
    window has full context length; at most ``seq_len - 1`` tokens are lost.

    Args:
      tokens: ``[N]`` token stream.
      seq_len: tokens per window (>= 1).
      max_windows: keep only the first this many windows; None keeps all.

    Returns:
      ``[W, seq_len]`` copy with ``W = min(N // seq_len, max_windows)``.

    Raises:
      ValueError: ``N < seq_len`` (no full window), or a non-positive size.
    """
    tokens = _check_token_stream(tokens, seq_len)
    check_positive_int(max_windows, "max_windows", allow_none=True)
    num_windows = tokens.size // seq_len
    if num_windows == 0:
        raise ValueError(f"the stream has {tokens.size} tokens, fewer than one window of seq_len={seq_len}")
    if max_windows is not None:
        num_windows = min(num_windows, max_windows)
    return tokens[: num_windows * seq_len].reshape(num_windows, seq_len).copy()  # [W, seq_len]
