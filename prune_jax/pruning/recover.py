"""Layer-wise recovery: refit a pruned linear map to the dense model's output.

For a linear map whose (pruned-stream) inputs are X̂ [tokens, C] and whose dense
targets are Y [tokens, D], the ridge least-squares refit is

    W(λ) = (X̂ᵀX̂ + λ·mean(diag X̂ᵀX̂)·I)⁻¹ X̂ᵀY.

Everything a refit needs is a sum over tokens, so it is *streamed*: ``accumulate_grams``
adds one chunk's X̂ᵀX̂ [C, C] and X̂ᵀY [C, D] to running sums (memory independent of the
number of calibration tokens; summed over devices by XLA when the chunk is sharded). λ is
chosen on tokens the fit did not see, from sums alone: for any W and any part h of the
tokens with sums G_h, C_h, ‖Y_h‖², the error on that part is a quadratic form, no
activations kept:

    E_h(W) = ‖X̂_h W − Y_h‖² = ⟨W, G_h W⟩ − 2⟨W, C_h⟩ + ‖Y_h‖².

**k-fold cross-validation over sequences** (``folds`` = k ≥ 2, ``Recovery.folds``; the
default 4): fold f is a contiguous block of whole calibration sequences,
[f·S//k, (f+1)·S//k) (``sequence_folds``), and the sums are kept per fold (``FoldGrams``;
a chunk inside one fold costs one matmul per sum, a chunk that straddles m folds is masked:
m matmuls). ``cv_ridge_path`` fits every λ on the other folds' sums (total − fold f),
scores it on fold f, and sums the errors over the folds; the unrefit weights' CV error is
their error over all folds. The λ with the smallest summed error wins, and W is then the
ridge solution of ALL the sums with that λ — unless no λ beats the unrefit weights (they
are kept; a non-finite error never wins). Every token is held out once, so which
sequences a single hold-out happens to hold out no longer decides λ.

**Single hold-out** (``folds=1``, the earlier rule): the last ``held_out`` fraction of the
tokens (in stream order: whole sequences at the end, ``held_out_split``) go into
separate held-out sums G_h, C_h, ‖Y_h‖² (``Grams``), ``ridge_path`` fits on the rest and
scores on them.

``ridge_path`` solves the whole λ grid from one eigendecomposition G = QΛQᵀ,
W(λ) = Q (Λ + λs)⁻¹ QᵀC (s = mean diag G; never fails to factorise) — or, shrunk toward
the current weights W₀ instead of 0, W(λ) = W₀ + Q (Λ + λs)⁻¹ Qᵀ(C − GW₀) — scores every W(λ)
in the eigenbasis (O(C²) per λ) and the unrefit weights on the held-out sums and keeps
the best, in one compiled program with one host transfer: the chosen W never has a
larger held-out error than not refitting. ``cv_ridge_path`` runs the same scoring once per
fold (k eigendecompositions of the training sums, one fold at a time: ``lax.map``) and one
more eigendecomposition of the total for the winner, also one compiled program and one
host transfer; so a k-fold refit costs k + 1 eigendecompositions instead of one. Grams and
the solve are float32 at highest matmul precision (float64 when ``jax_enable_x64`` is on
and the Grams are accumulated in float64).

Memory (float32 values; C inputs, O outputs): the running sums are k·(C² + C·O) + k for
k folds instead of 2·(C² + C·O) + 1 for the single hold-out (train and held out). The
solve holds, besides them, the current weights, the total sums, one fold's training Gram,
eigenvectors, rotated targets and C × C products at a time (the folds run sequentially),
then the winner's eigendecomposition and W. XLA's memory analysis (CPU; arguments with the
current weights once, temporaries, result), ridge toward the current weights (the default):
``cv_ridge_path`` ≈ (k + 6)·C·O + (k + 5)·C², ``ridge_path`` ≈ 6·C·O + 4·C²; toward 0:
≈ (k + 4.6)·C·O + (k + 4.7)·C² and 5·C·O + 4·C². E.g. k = 4, Llama-3-8B's down map at 20 %
(C ≈ 11 469, O = 4096): 6.6 GB instead of 3.2 GB.

The glue below applies this to a module's maps: ``refit_maps`` solves several kernels
that read the same input (q, k, v; gate, up; or one o / down) as one concatenated map,
with their biases refit jointly as intercepts (``with_intercept`` adds the constant
input column).
"""

from __future__ import annotations

import bisect
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prune_jax.models.llama.sharding import replace_param
from skmm_jax.common.checks import check_positive_int
from skmm_jax.common.gram import gram_of, held_out_rows
from skmm_jax.common.precision import HIGHEST

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 4  # k of the k-fold choice of λ (``Recovery.folds``); 1: the single hold-out


class Grams(NamedTuple):
    """Sufficient statistics of one single-hold-out refit, summed over calibration tokens.

    Attributes:
      xx, xy: training X̂ᵀX̂ [C, C] and X̂ᵀY [C, D].
      held_xx, held_xy, held_yy: the same over held-out tokens, and ‖Y_h‖² (scalar).
    """

    xx: jax.Array
    xy: jax.Array
    held_xx: jax.Array
    held_xy: jax.Array
    held_yy: jax.Array


class FoldGrams(NamedTuple):
    """Sufficient statistics of one k-fold refit: the sums of every fold (their total is
    the sums over all calibration tokens).

    Attributes:
      xx: [k, C, C] X̂_fᵀX̂_f; xy: [k, C, D] X̂_fᵀY_f; yy: [k] ‖Y_f‖².
    """

    xx: jax.Array
    xy: jax.Array
    yy: jax.Array


class Folds(NamedTuple):
    """k folds of whole calibration sequences as token boundaries of the stream: fold f is
    the tokens [bounds[f], bounds[f + 1]) (``sequence_folds``)."""

    bounds: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.bounds) - 1


def zero_grams(inputs: int, outputs: int, dtype=jnp.float32) -> Grams:
    return Grams(jnp.zeros((inputs, inputs), dtype), jnp.zeros((inputs, outputs), dtype),
                 jnp.zeros((inputs, inputs), dtype), jnp.zeros((inputs, outputs), dtype), jnp.zeros((), dtype))  # fmt: skip


def zero_fold_grams(inputs: int, outputs: int, folds: int, dtype=jnp.float32) -> FoldGrams:
    return FoldGrams(jnp.zeros((folds, inputs, inputs), dtype), jnp.zeros((folds, inputs, outputs), dtype), jnp.zeros((folds,), dtype))


def held_out_split(num_tokens: int, held_out: float = 0.1) -> int:
    """Index of the first held-out token: the last ``held_out`` fraction is held out."""
    split = max(1, int(round(num_tokens * (1.0 - held_out))))
    if split >= num_tokens:
        raise ValueError("recovery needs held-out tokens: the calibration set is too small")
    return split


def check_folds(num_sequences: int, folds: int) -> None:
    """ValueError unless ``folds`` is a positive int and there are at least that many
    calibration sequences (every fold holds whole sequences)."""
    check_positive_int(folds, "recover_folds")
    if num_sequences < folds:
        raise ValueError(f"recover_folds={folds} needs at least {folds} calibration sequences (every fold holds whole sequences), "
                         f"got {num_sequences}")


def sequence_folds(num_sequences: int, tokens_per_sequence: int, folds: int) -> Folds:
    """k = ``folds`` contiguous folds of whole sequences: fold f is sequences
    [f·S//k, (f+1)·S//k), as token boundaries (every fold non-empty: S ≥ k, else ValueError)."""
    check_folds(num_sequences, folds)
    return Folds(tuple((f * num_sequences // folds) * tokens_per_sequence for f in range(folds + 1)))


def refit_split(num_sequences: int, tokens_per_sequence: int, folds: int = FOLDS, held_out: float = 0.1) -> int | Folds:
    """How a refit's calibration tokens are split for choosing λ: ``sequence_folds`` for
    ``folds`` ≥ 2, the first held-out token (``held_out_split``: the last ``held_out``
    fraction) for ``folds=1``. The ``split`` argument of ``accumulate_grams``."""
    check_folds(num_sequences, folds)
    if folds == 1:
        return held_out_split(num_sequences * tokens_per_sequence, held_out)
    return sequence_folds(num_sequences, tokens_per_sequence, folds)


@functools.partial(jax.jit, static_argnums=(5,), donate_argnums=(0,))
def _accumulate(grams: Grams, x: jax.Array, y: jax.Array, start: jax.Array, split: jax.Array, part: str) -> Grams:
    """``part``: "train" / "held" when the whole chunk is on one side of the split (one
    matmul per sum), "mixed" for the one chunk that straddles it (masked, two)."""
    dtype = grams.xx.dtype
    x = x.reshape(-1, x.shape[-1]).astype(dtype)
    y = y.reshape(-1, y.shape[-1]).astype(dtype)
    if part == "train":
        return grams._replace(xx=grams.xx + gram_of(x, dtype=dtype), xy=grams.xy + gram_of(x, y, dtype=dtype))
    if part == "held":
        return grams._replace(held_xx=grams.held_xx + gram_of(x, dtype=dtype), held_xy=grams.held_xy + gram_of(x, y, dtype=dtype),
                              held_yy=grams.held_yy + jnp.sum(y * y))  # fmt: skip
    held = held_out_rows(start, x.shape[0], split)  # [B] token is held out
    x_train = jnp.where(held[:, None], 0.0, x)
    x_held = x - x_train
    y_held = jnp.where(held[:, None], y, 0.0)
    return Grams(grams.xx + gram_of(x_train, x, dtype=dtype), grams.xy + gram_of(x_train, y, dtype=dtype),
                 grams.held_xx + gram_of(x_held, x, dtype=dtype), grams.held_xy + gram_of(x_held, y, dtype=dtype),
                 grams.held_yy + jnp.sum(y_held * y_held))  # fmt: skip


def _add_at(stack: jax.Array, index: jax.Array, value: jax.Array) -> jax.Array:
    """stack[index] += value for a traced index: one unique index, which XLA turns into a fused
    dynamic-update-slice, in place when ``stack`` is donated (no copy of the k fold sums;
    temporaries as a single Gram sum's, XLA's memory analysis)."""
    return stack.at[index].add(value, indices_are_sorted=True, unique_indices=True)


@functools.partial(jax.jit, static_argnums=(7,), donate_argnums=(0,))
def _accumulate_folds(grams: FoldGrams, x: jax.Array, y: jax.Array, start: jax.Array, bounds: jax.Array, first: jax.Array, last: jax.Array,
                      masked: bool) -> FoldGrams:
    """Adds a chunk whose tokens lie in folds first, …, last: one matmul per sum when they
    are one fold (``masked`` False), else each fold's rows masked in turn (a loop over the
    folds: last − first + 1 matmuls per sum). Fold indices are traced, so chunks of one
    shape share one program (two: whole and masked) whatever their folds."""
    dtype = grams.xx.dtype
    x = x.reshape(-1, x.shape[-1]).astype(dtype)
    y = y.reshape(-1, y.shape[-1]).astype(dtype)

    def add_fold(fold, sums):
        xx, xy, yy = sums
        if masked:  # rows with bounds[fold] <= token < bounds[fold + 1]
            rows = held_out_rows(start, x.shape[0], bounds[fold]) & ~held_out_rows(start, x.shape[0], bounds[fold + 1])
            x_fold, y_fold = jnp.where(rows[:, None], x, 0.0), jnp.where(rows[:, None], y, 0.0)
        else:
            x_fold, y_fold = x, y
        return (_add_at(xx, fold, gram_of(x_fold, x, dtype=dtype)), _add_at(xy, fold, gram_of(x_fold, y, dtype=dtype)),
                _add_at(yy, fold, jnp.sum(y_fold * y_fold)))

    if not masked:
        return FoldGrams(*add_fold(first, tuple(grams)))
    return FoldGrams(*jax.lax.fori_loop(first, last + 1, add_fold, tuple(grams)))


def accumulate_grams(grams: Grams | FoldGrams | None, x: jax.Array, y: jax.Array, start: int, split: int | Folds) -> Grams | FoldGrams:
    """Adds one chunk to the running sums (``grams`` is consumed: its buffers are reused).

    Args:
      grams: the sums so far, or None for the first chunk.
      x: [..., C] inputs of the chunk's tokens, y: [..., D] their targets (same leading shape).
      start: index of the chunk's first token in the whole stream.
      split: ``refit_split``: the first held-out token (``held_out_split``; sums are
        ``Grams``) or the folds (``sequence_folds``; sums are ``FoldGrams``).
    """
    folded = isinstance(split, Folds)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    if grams is None:
        grams = zero_fold_grams(x.shape[-1], y.shape[-1], split.count, dtype) if folded else zero_grams(x.shape[-1], y.shape[-1], dtype)
    if folded != isinstance(grams, FoldGrams):
        raise TypeError(f"sums {type(grams).__name__} do not match split {split!r}")
    stop = start + int(np.prod(x.shape[:-1]))
    if not folded:
        part = "train" if stop <= split else "held" if start >= split else "mixed"
        return _accumulate(grams, x, y, jnp.asarray(start), jnp.asarray(split), part)
    if not 0 <= start < stop <= split.bounds[-1]:
        raise ValueError(f"chunk of tokens [{start}, {stop}) outside the folds' tokens [0, {split.bounds[-1]})")
    first, last = bisect.bisect_right(split.bounds, start) - 1, bisect.bisect_right(split.bounds, stop - 1) - 1
    return _accumulate_folds(grams, x, y, jnp.asarray(start), jnp.asarray(split.bounds), jnp.asarray(first), jnp.asarray(last), last > first)


def with_intercept(x: jax.Array) -> jax.Array:
    """x [..., C] → [..., C + 1] with a constant 1 column (a bias refit as a weight)."""
    return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=HIGHEST)


def _quadratic_error(xx: jax.Array, xy: jax.Array, yy: jax.Array, w: jax.Array) -> jax.Array:
    """‖X̂W − Y‖² over the tokens whose sums are xx, xy, yy (module docstring)."""
    quadratic = jnp.sum(w * _dot(xx, w))
    return quadratic - 2.0 * jnp.sum(w * xy) + yy


def _rotated(evecs: jax.Array, xx: jax.Array, xy: jax.Array, w_anchor: jax.Array | None) -> jax.Array:
    """R = Qᵀ(C − G A) [C, O] (Qᵀ C for A = 0)."""
    return _dot(evecs.T, xy) if w_anchor is None else _dot(evecs.T, xy - _dot(xx, w_anchor))


def _eigen(xx: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(Λ, Q, s) of G = QΛQᵀ, s = mean diag G."""
    evals, evecs = jnp.linalg.eigh(xx)
    evals = jnp.maximum(evals, 0.0)  # G is PSD; round-off may leave tiny negatives
    return evals, evecs, jnp.mean(jnp.diag(xx))


def _grid_errors(xx, xy, held_xx, held_xy, held_yy, ridges: jax.Array, w_anchor: jax.Array | None):
    """Held-out errors [K] of W(λ) fit on (xx, xy), scored on (held_xx, held_xy, held_yy), for
    every λ of ``ridges`` (``ridge_path``), and (Λ, Q, s, R) to form one W(λ) (``_solution``)."""
    evals, evecs, scale = _eigen(xx)
    rotated = _rotated(evecs, xx, xy, w_anchor)  # R [C, O]
    if w_anchor is None:  # A = 0
        held_products = jnp.sum(rotated * _dot(evecs.T, held_xy), axis=1)  # [C]
        anchor_error = held_yy
    else:
        held_products = jnp.sum(rotated * _dot(evecs.T, held_xy - _dot(held_xx, w_anchor)), axis=1)  # C_h − G_h A
        anchor_error = _quadratic_error(held_xx, held_xy, held_yy, w_anchor)
    quadratic = _dot(_dot(evecs.T, held_xx), evecs) * _dot(rotated, rotated.T)  # M ∘ K [C, C]

    def held_out_error(ridge):
        d = 1.0 / (evals + ridge * scale)
        return anchor_error + d @ _dot(quadratic, d) - 2.0 * jnp.dot(d, held_products)

    return jax.vmap(held_out_error)(ridges), (evals, evecs, scale, rotated)


def _solution(eigen, ridge: jax.Array, w_anchor: jax.Array | None) -> jax.Array:
    """W(λ) = A + Q diag(1/(Λ + λs)) R from ``_grid_errors``'s (Λ, Q, s, R)."""
    evals, evecs, scale, rotated = eigen
    d = 1.0 / (evals + ridge * scale)
    w = _dot(evecs, d[:, None] * rotated)
    return w if w_anchor is None else w_anchor + w


def _choose(errors: jax.Array, unrefit: jax.Array, w_current: jax.Array, solve):
    """(W, winner index (−1: unrefit), errors [1 + K] unrefit first): the λ of the smallest
    finite error, ``solve(index)`` its W, kept when it beats ``unrefit`` and is finite."""
    candidates = jnp.where(jnp.isfinite(errors), errors, jnp.inf)
    best = jnp.argmin(candidates)
    w_best = solve(best)
    refit_wins = (candidates[best] < unrefit) & jnp.all(jnp.isfinite(w_best))
    return jnp.where(refit_wins, w_best, w_current), jnp.where(refit_wins, best, -1), jnp.concatenate([unrefit[None], errors])


@jax.jit
def ridge_path(grams: Grams, w_current: jax.Array, ridges: jax.Array, w_anchor: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Best of {unrefit, W(λ) for λ in ``ridges``} by held-out error (module docstring).

    W(λ) is the ridge solution shrunk toward the anchor A (None, A = 0: classic ridge, and
    no [C, O] zeros or G·A products are formed; A = the current weights: a refit that stays
    near them when the calibration data is scarce),

        W(λ) = A + (G + λsI)⁻¹ (C − G A) = A + Q diag(d) R,   R = Qᵀ(C − G A), d = 1/(Λ + λs),

    and its held-out error costs O(C²) per λ, not a C × O solve:

        E_h(A + Δ) = E_h(A) + dᵀ (M ∘ K) d − 2 Σ_i d_i ⟨R_i, (Qᵀ(C_h − G_h A))_i⟩,
        M = QᵀG_hQ, K = RRᵀ,

    so the grid costs 4 C²·O + 2 C³ flops once (plus the eigendecomposition) and only the
    winner is formed (one more C²·O). Returns (W [C, D], index of the winner (−1:
    unrefit), held-out errors [1 + K]: unrefit first). A non-finite error never wins.
    """
    dtype = grams.xx.dtype
    w_current, ridges = w_current.astype(dtype), ridges.astype(dtype)
    w_anchor = None if w_anchor is None else w_anchor.astype(dtype)
    errors, eigen = _grid_errors(grams.xx, grams.xy, grams.held_xx, grams.held_xy, grams.held_yy, ridges, w_anchor)
    unrefit = _quadratic_error(grams.held_xx, grams.held_xy, grams.held_yy, w_current)
    return _choose(errors, unrefit, w_current, lambda best: _solution(eigen, ridges[best], w_anchor))


@jax.jit
def cv_ridge_path(grams: FoldGrams, w_current: jax.Array, ridges: jax.Array, w_anchor: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Best of {unrefit, W(λ) for λ in ``ridges``} by k-fold cross-validation (module docstring).

    For each fold f (one at a time, ``lax.map``): W_{−f}(λ) is ``ridge_path``'s W(λ) on the
    training sums total − fold f (its own eigendecomposition and s = mean diag G_{−f}),
    scored on fold f's sums for the whole grid at O(C²) per λ; the errors are summed over
    the folds. The unrefit weights' CV error is their error on all folds (the total sums).
    The winner's W is the ridge solution on the total sums (one more eigendecomposition),
    with the anchor A as in ``ridge_path``. Returns (W [C, D], index of the winner (−1:
    unrefit), CV errors [1 + K]: unrefit first). A non-finite error never wins.
    """
    dtype = grams.xx.dtype
    w_current, ridges = w_current.astype(dtype), ridges.astype(dtype)
    w_anchor = None if w_anchor is None else w_anchor.astype(dtype)
    xx, xy, yy = jnp.sum(grams.xx, axis=0), jnp.sum(grams.xy, axis=0), jnp.sum(grams.yy)

    def fold_errors(fold):
        held_xx, held_xy, held_yy = grams.xx[fold], grams.xy[fold], grams.yy[fold]
        return _grid_errors(xx - held_xx, xy - held_xy, held_xx, held_xy, held_yy, ridges, w_anchor)[0]

    errors = jnp.sum(jax.lax.map(fold_errors, jnp.arange(grams.yy.shape[0])), axis=0)
    unrefit = _quadratic_error(xx, xy, yy, w_current)

    def solve(best):
        evals, evecs, scale = _eigen(xx)
        return _solution((evals, evecs, scale, _rotated(evecs, xx, xy, w_anchor)), ridges[best], w_anchor)

    return _choose(errors, unrefit, w_current, solve)


def refit_from_grams(grams: Grams | FoldGrams, w_current: jax.Array, grid: tuple[float, ...] = RIDGE_GRID, *,
                     toward_current: bool = False) -> tuple[jax.Array, dict]:
    """(W [C, D], info). ``FoldGrams``: λ by k-fold CV (``cv_ridge_path``); ``Grams``: by the
    single hold-out (``ridge_path``). info: "ridge" the chosen λ (None = unrefit),
    "cv_error" its validation error (summed over the k folds' held-out parts; folds = 1:
    on the held-out tokens), "folds" k, and "errors" every candidate's ("unrefit" and
    f"{λ:g}"). ``toward_current``: the ridge shrinks toward ``w_current`` instead of 0."""
    folded = isinstance(grams, FoldGrams)
    path = cv_ridge_path if folded else ridge_path
    w, winner, errors = path(grams, w_current, jnp.asarray(grid, grams.xx.dtype), w_current if toward_current else None)
    winner, errors = jax.device_get((winner, errors))  # the one host transfer of a refit
    errors = [float(e) for e in errors]
    info = {
        "ridge": None if winner < 0 else float(grid[winner]),
        "cv_error": errors[0] if winner < 0 else errors[winner + 1],
        "folds": int(grams.xx.shape[0]) if folded else 1,
        "errors": {"unrefit": errors[0], **{f"{ridge:g}": e for ridge, e in zip(grid, errors[1:])}},
    }
    return w, info


def refit_linear(
    x: jax.Array, y: jax.Array, w_current: jax.Array, *, folds: int = FOLDS, held_out: float = 0.1, grid: tuple[float, ...] = RIDGE_GRID,
    toward_current: bool = False,
) -> tuple[jax.Array, dict]:
    """``refit_from_grams`` on in-memory x [S, ..., C], y [S, ..., D]: the leading axis is
    the sequences the ``folds`` are made of (x [tokens, C]: every token its own sequence);
    ``folds=1``: the last ``held_out`` fraction of the tokens held out."""
    split = refit_split(x.shape[0], int(np.prod(x.shape[1:-1])), folds, held_out)
    grams = accumulate_grams(None, x, y, 0, split)
    return refit_from_grams(grams, w_current, grid, toward_current=toward_current)


def _stacked(module, kernels: tuple[str, ...], biases: tuple[str, ...], inputs: int):
    params = [getattr(module, name)[...] for name in kernels]
    stacked = jnp.concatenate([k.reshape(inputs, -1).astype(jnp.float32) for k in params], axis=1)  # [C, Σ outputs]
    has_bias = getattr(module, biases[0]) is not None
    old_biases = [getattr(module, name)[...] for name in biases] if has_bias else None
    if has_bias:
        stacked = jnp.concatenate([stacked, jnp.concatenate([b.reshape(1, -1).astype(jnp.float32) for b in old_biases], axis=1)], axis=0)
    return params, old_biases, stacked


def map_has_bias(module, biases: tuple[str, ...]) -> bool:
    """Whether the maps' biases exist (then their inputs need ``with_intercept``)."""
    return getattr(module, biases[0]) is not None


def refit_maps(module, kernels: tuple[str, ...], biases: tuple[str, ...], grams: Grams, grid: tuple[float, ...], *,
               toward_current: bool = False) -> dict:
    """Refits the maps ``kernels`` of ``module`` in place from ``grams`` of their shared
    input x [..., C] (with the intercept column when they have biases) against their
    concatenated targets [..., Σ outputs] (kernel k viewed as [C, outputs_k]: q [D, N, H],
    gate [D, F], o [N, H, D] with C = N·H, down [F, D]). Returns the refit info."""
    has_bias = map_has_bias(module, biases)
    inputs = grams.xx.shape[-1] - int(has_bias)
    params, old_biases, w_current = _stacked(module, kernels, biases, inputs)
    w, info = refit_from_grams(grams, w_current, grid, toward_current=toward_current)
    cuts = np.cumsum([int(np.prod(k.shape)) // inputs for k in params])[:-1]
    for name, part, k in zip(kernels, jnp.split(w[:inputs], cuts, axis=1), params):
        replace_param(module, name, part.reshape(k.shape))
    if has_bias:
        for name, part, old in zip(biases, jnp.split(w[inputs], cuts), old_biases):
            replace_param(module, name, part.reshape(old.shape))
    return info
