"""Layer-wise recovery: refit a pruned linear map to the dense model's output.

For a linear map whose (pruned-stream) inputs are X̂ [tokens, C] and whose dense
targets are Y [tokens, D], the ridge least-squares refit is

    W(λ) = (X̂ᵀX̂ + λ·mean(diag X̂ᵀX̂)·I)⁻¹ X̂ᵀY.

Everything a refit needs is a sum over tokens, so it is *streamed*: ``accumulate_grams``
adds one chunk's X̂ᵀX̂ [C, C] and X̂ᵀY [C, D] to running sums (memory O(C² + C·D),
independent of the number of calibration tokens; summed over devices by XLA when the
chunk is sharded). The last ``held_out`` fraction of the tokens (in stream order: whole
sequences at the end) go into separate held-out sums G_h, C_h, ‖Y_h‖², so the held-out
error of any W is a quadratic form, no held-out activations kept:

    E_h(W) = ‖X̂_h W − Y_h‖² = ⟨W, G_h W⟩ − 2⟨W, C_h⟩ + ‖Y_h‖².

``ridge_path`` solves the whole λ grid from one eigendecomposition G = QΛQᵀ,
W(λ) = Q (Λ + λs)⁻¹ QᵀC (s = mean diag G; never fails to factorise) — or, shrunk toward
the current weights W₀ instead of 0, W(λ) = W₀ + Q (Λ + λs)⁻¹ Qᵀ(C − GW₀) — scores every W(λ)
in the eigenbasis (O(C²) per λ) and the unrefit weights on the held-out sums and keeps
the best, in one compiled program with one host transfer: the chosen W never has a
larger held-out error than not refitting. Grams and the solve are float32 at highest matmul precision (float64 when
``jax_enable_x64`` is on and the Grams are accumulated in float64).

The glue below applies this to a module's maps: ``refit_maps`` solves several kernels
that read the same input (q, k, v; gate, up; or one o / down) as one concatenated map,
with their biases refit jointly as intercepts (``with_intercept`` adds the constant
input column).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prune_jax.models.llama.sharding import replace_param
from skmm_jax.common.gram import gram_of, held_out_rows
from skmm_jax.common.precision import HIGHEST

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class Grams(NamedTuple):
    """Sufficient statistics of one refit, summed over calibration tokens.

    Attributes:
      xx, xy: training X̂ᵀX̂ [C, C] and X̂ᵀY [C, D].
      held_xx, held_xy, held_yy: the same over held-out tokens, and ‖Y_h‖² (scalar).
    """

    xx: jax.Array
    xy: jax.Array
    held_xx: jax.Array
    held_xy: jax.Array
    held_yy: jax.Array


def zero_grams(inputs: int, outputs: int, dtype=jnp.float32) -> Grams:
    return Grams(jnp.zeros((inputs, inputs), dtype), jnp.zeros((inputs, outputs), dtype),
                 jnp.zeros((inputs, inputs), dtype), jnp.zeros((inputs, outputs), dtype), jnp.zeros((), dtype))  # fmt: skip


def held_out_split(num_tokens: int, held_out: float = 0.1) -> int:
    """Index of the first held-out token: the last ``held_out`` fraction is held out."""
    split = max(1, int(round(num_tokens * (1.0 - held_out))))
    if split >= num_tokens:
        raise ValueError("recovery needs held-out tokens: the calibration set is too small")
    return split


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


def accumulate_grams(grams: Grams | None, x: jax.Array, y: jax.Array, start: int, split: int) -> Grams:
    """Adds one chunk to the running sums (``grams`` is consumed: its buffers are reused).

    Args:
      grams: the sums so far, or None for the first chunk.
      x: [..., C] inputs of the chunk's tokens, y: [..., D] their targets (same leading shape).
      start: index of the chunk's first token in the whole stream.
      split: first held-out token (``held_out_split``).
    """
    if grams is None:
        grams = zero_grams(x.shape[-1], y.shape[-1], jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    stop = start + int(np.prod(x.shape[:-1]))
    part = "train" if stop <= split else "held" if start >= split else "mixed"
    return _accumulate(grams, x, y, jnp.asarray(start), jnp.asarray(split), part)


def with_intercept(x: jax.Array) -> jax.Array:
    """x [..., C] → [..., C + 1] with a constant 1 column (a bias refit as a weight)."""
    return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def _held_out_error(grams: Grams, w: jax.Array) -> jax.Array:
    quadratic = jnp.sum(w * jnp.matmul(grams.held_xx, w, precision=HIGHEST))
    return quadratic - 2.0 * jnp.sum(w * grams.held_xy) + grams.held_yy


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
    dot = lambda a, b: jnp.matmul(a, b, precision=HIGHEST)  # noqa: E731
    w_current = w_current.astype(grams.xx.dtype)
    evals, evecs = jnp.linalg.eigh(grams.xx)
    evals = jnp.maximum(evals, 0.0)  # G is PSD; round-off may leave tiny negatives
    scale = jnp.mean(jnp.diag(grams.xx))
    if w_anchor is None:  # A = 0
        rotated = dot(evecs.T, grams.xy)  # R [C, O]
        held_products = jnp.sum(rotated * dot(evecs.T, grams.held_xy), axis=1)  # [C]
        anchor_error = grams.held_yy
    else:
        w_anchor = w_anchor.astype(grams.xx.dtype)
        rotated = dot(evecs.T, grams.xy - dot(grams.xx, w_anchor))
        held_products = jnp.sum(rotated * dot(evecs.T, grams.held_xy - dot(grams.held_xx, w_anchor)), axis=1)  # C_h − G_h A
        anchor_error = _held_out_error(grams, w_anchor)
    quadratic = dot(dot(evecs.T, grams.held_xx), evecs) * dot(rotated, rotated.T)  # M ∘ K [C, C]

    def held_out_error(ridge):
        d = 1.0 / (evals + ridge * scale)
        return anchor_error + d @ dot(quadratic, d) - 2.0 * jnp.dot(d, held_products)

    errors = jax.vmap(held_out_error)(ridges.astype(grams.xx.dtype))
    unrefit = _held_out_error(grams, w_current)
    candidates = jnp.where(jnp.isfinite(errors), errors, jnp.inf)
    best = jnp.argmin(candidates)
    d = 1.0 / (evals + ridges.astype(grams.xx.dtype)[best] * scale)
    w_best = dot(evecs, d[:, None] * rotated)
    w_best = w_best if w_anchor is None else w_anchor + w_best
    refit_wins = (candidates[best] < unrefit) & jnp.all(jnp.isfinite(w_best))
    return jnp.where(refit_wins, w_best, w_current), jnp.where(refit_wins, best, -1), jnp.concatenate([unrefit[None], errors])


def refit_from_grams(grams: Grams, w_current: jax.Array, grid: tuple[float, ...] = RIDGE_GRID, *, toward_current: bool = False) -> tuple[jax.Array, dict]:
    """(W [C, D], info): the chosen λ (None = unrefit), its held-out error and every
    candidate's held-out error ("unrefit" and f"{λ:g}"). ``toward_current``: the ridge
    shrinks toward ``w_current`` instead of 0 (``ridge_path``)."""
    w, winner, errors = ridge_path(grams, w_current, jnp.asarray(grid, grams.xx.dtype), w_current if toward_current else None)
    winner, errors = jax.device_get((winner, errors))  # the one host transfer of a refit
    errors = [float(e) for e in errors]
    info = {
        "ridge": None if winner < 0 else float(grid[winner]),
        "held_out_error": errors[0] if winner < 0 else errors[winner + 1],
        "errors": {"unrefit": errors[0], **{f"{ridge:g}": e for ridge, e in zip(grid, errors[1:])}},
    }
    return w, info


def refit_linear(
    x: jax.Array, y: jax.Array, w_current: jax.Array, *, held_out: float = 0.1, grid: tuple[float, ...] = RIDGE_GRID,
    toward_current: bool = False,
) -> tuple[jax.Array, dict]:
    """``refit_from_grams`` on in-memory x [tokens, C], y [tokens, D] (the last
    ``held_out`` fraction of the tokens held out)."""
    x = x.reshape(-1, x.shape[-1])
    grams = accumulate_grams(None, x, y.reshape(-1, y.shape[-1]), 0, held_out_split(x.shape[0], held_out))
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
    inputs = grams.xx.shape[0] - int(has_bias)
    params, old_biases, w_current = _stacked(module, kernels, biases, inputs)
    w, info = refit_from_grams(grams, w_current, grid, toward_current=toward_current)
    cuts = np.cumsum([int(np.prod(k.shape)) // inputs for k in params])[:-1]
    for name, part, k in zip(kernels, jnp.split(w[:inputs], cuts, axis=1), params):
        replace_param(module, name, part.reshape(k.shape))
    if has_bias:
        for name, part, old in zip(biases, jnp.split(w[inputs], cuts), old_biases):
            replace_param(module, name, part.reshape(old.shape))
    return info
