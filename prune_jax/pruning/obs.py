"""Greedy output approximation with optimal compensation (structured OBS).

For a linear map y = xW (kernel W [C, D]: row c = input unit c's output weights) whose
inputs x̂ have the second moment H = E[x̂x̂ᵀ] [C, C] on calibration tokens, removing a
set S of input rows and moving the kept rows to the least-squares optimum raises the
output error E‖x̂W' − x̂W‖² by (Optimal Brain Surgeon, structured form)

    err(S) = tr(W_Sᵀ [(H⁻¹)_SS]⁻¹ W_S),        δW = −(H⁻¹)_{:,S} [(H⁻¹)_SS]⁻¹ W_S,

and the inverse of the kept block of H is a rank-|S| downdate of H⁻¹:

    P ← P − P_{:,S} [P_SS]⁻¹ P_{S,:}      (P = H⁻¹; rows and columns S become 0).

``greedy_remove`` removes, step by step, the unit (a block of rows: one FFN channel, one
head's head_dim rows of o_proj, or a KV group's) with the smallest err among the units
still allowed (a quota per group: GQA keeps the same number of query heads per KV group),
applies δW and the downdate, and repeats to the budget; ``per_step`` > 1 removes that many
units (the smallest errors) jointly per step — exact for the chosen set, greedy across
sets — to cut the number of O(C²) downdates for wide FFNs. A constant-1 input row (the
intercept: the map's bias) is never a unit, so δW moves the bias too (FLAP's mean
compensation is the special case of an uncorrelated unit).

Prior art: OBS (Hassibi & Stork 1993) for single weights; ZipLM (Kurtic et al. 2023) and
SlimGPT (Ling et al. 2024, arXiv 2412.18110) for structured units of LLMs with this
compensation, SlimGPT's "grouped Cholesky" for heads. What differs here: H is taken on the
pruned stream of the distribution the model is calibrated on and the greedy also drives the
layer allocation (``single_errors`` as unit scores), the intercept row carries a bias, and
the whole greedy is one compiled program with fixed shapes (removed units stay in place
with P's rows zeroed and are masked), so it runs on any backend and never syncs with the
host per step.

Dampening: P = (H + λ·mean(diag H)·I)⁻¹ (λ = ``damp``, SparseGPT's 1 % by default), which
keeps P well conditioned when the calibration tokens are few next to C. ``damping="diagonal"``
damps every direction by its own scale, P = (H + λ·diag(H))⁻¹ (Jacobi dampening): where one
massive activation dominates mean(diag H), the mean form damps every other unit by far
more than its own energy and makes it look cheap to remove.

Output metric: the error above weighs every output direction alike (E‖δ‖²). Given a
weight per output direction w [D] (``output_weight``: the loss sensitivity of the residual
stream, ``calibrate.residual_sensitivity``), err_w(S) = Σ_d w_d [W_Sᵀ [(H⁻¹)_SS]⁻¹ W_S]_dd —
a second-order estimate of the calibration-loss increase (×½). The optimal compensation
does not change (the least-squares problem is separable over output columns, and a
column's weight does not move its optimum), so the greedy runs on W·diag(√w) and its
compensated weights are scaled back.

Small solves: the per-unit blocks P_uu and the step's P_SS are symmetric positive definite
(principal blocks of the inverse of a damped Gram), so they are solved by Gauss–Jordan
elimination without pivoting in plain array ops (``spd_solve``), not by LAPACK custom calls:
on CPU with several devices in one process, jaxlib's batched LU kernel (it splits the batch
over the intra-op thread pool) deadlocked inside the greedy's while loop, and plain ops
vectorise on every backend.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.common.checks import check_positive_int
from skmm_jax.common.gram import gram_of
from skmm_jax.common.precision import HIGHEST

DAMP = 0.01


class UnitGram(NamedTuple):
    """Second moment of a map's inputs on the pruned stream (a score's ``Evidence.stats``).

    Attributes:
      gram: [C, C] (C + 1 with the intercept row last) mean of x̂x̂ᵀ over calibration tokens.
      intercept: whether the last row is the constant-1 input (the map has a bias).
      output_weight: None, or [D] the loss sensitivity of each output direction (module
        docstring, "Output metric"): errors are then weighted by it.

    The dampening is the method's option (``scores.ObsOptions.damp``), not the statistics'.
    """

    gram: jax.Array
    intercept: bool
    output_weight: jax.Array | None = None


@functools.partial(jax.jit, donate_argnums=(0,))
def _add_gram(gram: jax.Array, x: jax.Array) -> jax.Array:
    return gram + gram_of(x, dtype=gram.dtype)


def add_gram(gram: jax.Array | None, x: jax.Array) -> jax.Array:
    """gram + x̂ᵀx̂ over the tokens of x [..., C] (``gram_of``: float32, highest precision;
    ``gram`` donated); None: the first chunk, x̂ᵀx̂ added to a float32 zero [C, C]."""
    return _add_gram(jnp.zeros((x.shape[-1],) * 2, jnp.float32) if gram is None else gram, x)


def stacked_weights(kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """[C (+ 1), D]: the kernel with its input axes flattened (o [N, H, D] → [N·H, D]) and
    the bias as the last row (the intercept input's weights)."""
    w = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
    return w if bias is None else jnp.concatenate([w, bias.reshape(1, -1).astype(jnp.float32)], axis=0)


class Removal(NamedTuple):
    """Result of ``greedy_remove``.

    Attributes:
      weights: [C, D] compensated kernel (rows of removed units are 0).
      removed: [U] bool, units removed.
      order: [steps, per_step] units removed at each step (−1: none).
      errors: [steps] output-error increase of each step (per calibration token).
    """

    weights: jax.Array
    removed: jax.Array
    order: jax.Array
    errors: jax.Array


DAMPINGS = ("mean", "diagonal")


def _damped(gram: jax.Array, damp: float, damping: str = "mean") -> jax.Array:
    """H + λ·mean(diag H)·I ("mean") or H + λ·diag(H) ("diagonal"; directions with a zero
    diagonal — dead units — get λ·10⁻⁶·mean(diag H) so the sum stays positive definite)."""
    diag = jnp.diag(gram)
    mean = jnp.mean(diag)
    shift = mean if damping == "mean" else jnp.maximum(diag, 1e-6 * mean)
    return gram + jnp.diag(damp * shift * jnp.ones_like(diag))


@functools.partial(jax.jit, static_argnames=("damp", "damping"))
def _cholesky_inverse(gram: jax.Array, damp: float, damping: str = "mean") -> jax.Array:
    """(H + λ·mean(diag H)·I)⁻¹ by Cholesky (C³/3 flops), symmetrised; NaN where round-off
    leaves the damped H not positive definite. Holds H, one factor and the result: 3·C²."""
    gram = gram.astype(jnp.float32)
    factor = jnp.linalg.cholesky(_damped(gram, damp, damping))
    inverse = jax.scipy.linalg.cho_solve((factor, True), jnp.eye(gram.shape[0], dtype=gram.dtype))
    return 0.5 * (inverse + inverse.T)


@functools.partial(jax.jit, static_argnames=("damp", "damping"))
def _eigh_inverse(gram: jax.Array, damp: float, damping: str = "mean") -> jax.Array:
    """The same inverse by eigendecomposition with eigenvalues clipped at 10⁻¹²·max."""
    evals, evecs = jnp.linalg.eigh(_damped(gram.astype(jnp.float32), damp, damping))
    evals = jnp.maximum(evals, 1e-12 * jnp.max(evals))
    return jnp.matmul(evecs / evals[None, :], evecs.T, precision=HIGHEST)


def damped_inverse(gram: jax.Array, damp: float = DAMP, damping: str = "mean") -> jax.Array:
    """(H + λ·mean(diag H)·I)⁻¹ (``damping="diagonal"``: (H + λ·diag H)⁻¹): by Cholesky, or
    by eigendecomposition with clipped eigenvalues when round-off leaves the damped H not
    positive definite.

    The fallback is chosen on the host (one scalar read per map), not by ``lax.cond``
    inside one program: a conditional keeps both branches' operands and workspaces live,
    6·C² floats at its peak against 3·C² for the Cholesky path alone (11.5 → 5.7 GiB for
    a 14 336-channel down_proj; ``benchmarks/prune_scale.py``)."""
    if damping not in DAMPINGS:
        raise ValueError(f"damping must be one of {DAMPINGS}, got {damping!r}")
    inverse = _cholesky_inverse(gram, damp, damping)
    return inverse if bool(jnp.all(jnp.isfinite(inverse))) else _eigh_inverse(gram, damp, damping)


def output_scale(output_weight: jax.Array | None, columns: int) -> jax.Array | None:
    """√w [D] for the output metric w (module docstring), floored at 10⁻⁶·mean(w) so the
    scaling can be undone; None: the plain metric."""
    if output_weight is None:
        return None
    w = jnp.asarray(output_weight, jnp.float32).reshape(-1)
    if w.shape[0] != columns:
        raise ValueError(f"output_weight has {w.shape[0]} directions, the map has {columns} outputs")
    return jnp.sqrt(jnp.maximum(w, 1e-6 * jnp.mean(w)))


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """a⁻¹b for symmetric positive-definite a [..., g, g] and b [..., g, R], by Gauss–Jordan
    elimination without pivoting (backward stable for SPD matrices: every pivot is the
    diagonal of a Schur complement, > 0), in g steps of O(g·(g + R)) array ops per matrix.

    Used instead of LAPACK (module docstring: jaxlib's batched CPU kernels deadlocked
    inside a while loop when several devices share the process)."""
    size = a.shape[-1]

    def eliminate(k, carry):
        left, right = carry  # [left | right] ~ [a | b] → [I | a⁻¹b]
        pivot = left[..., k, k][..., None]
        row_left, row_right = left[..., k, :] / pivot, right[..., k, :] / pivot  # [..., g], [..., R]
        factor = left[..., :, k].at[..., k].set(0.0)[..., None]  # [..., g, 1] multiples of row k to subtract
        left = (left - factor * row_left[..., None, :]).at[..., k, :].set(row_left)
        right = (right - factor * row_right[..., None, :]).at[..., k, :].set(row_right)
        return left, right

    return jax.lax.fori_loop(0, size, eliminate, (a, b))[1]


def spd_inverse(a: jax.Array) -> jax.Array:
    """a⁻¹ for symmetric positive-definite a [..., g, g] (``spd_solve`` with b = I)."""
    return spd_solve(a, jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape))


def _unit_errors(inverse: jax.Array, weights: jax.Array, unit_rows: jax.Array, alive: jax.Array) -> jax.Array:
    """[U] err of removing each unit alone (inf where not ``alive``)."""
    block = inverse[unit_rows[:, :, None], unit_rows[:, None, :]]  # [U, g, g]
    size = unit_rows.shape[1]
    block = jnp.where(alive[:, None, None], block, jnp.eye(size, dtype=block.dtype)[None])
    rows = weights[unit_rows]  # [U, g, D]
    if size == 1:
        errors = jnp.sum(rows[:, 0] ** 2, axis=-1) / block[:, 0, 0]
    else:
        solved = jnp.einsum("uij,ujd->uid", spd_inverse(block), rows, precision=HIGHEST)  # [P_uu]⁻¹ W_u  [U, g, D]
        errors = jnp.sum(rows * solved, axis=(1, 2))
    return jnp.where(alive & jnp.isfinite(errors), errors, jnp.inf)


def single_errors(gram: jax.Array, weights: jax.Array, unit_rows: np.ndarray, damp: float = DAMP, *,
                  output_weight: jax.Array | None = None, damping: str = "mean") -> np.ndarray:
    """[U] the OBS score of removing each unit alone from the map with Gram H: without an
    output metric err({u}) / E‖y‖², relative to the map's output energy E‖y‖² = tr(WᵀHW);
    with one (``output_weight`` w [D]) ½·err_w({u}), the second-order estimate of the
    calibration-loss increase (module docstring). Either is comparable across maps and
    layers (the "global" allocation)."""
    weights = weights.astype(jnp.float32)
    scale = output_scale(output_weight, weights.shape[1])
    inverse = damped_inverse(gram, damp, damping)
    return np.asarray(_scored_errors(inverse, gram, weights, jnp.asarray(unit_rows), scale))


@jax.jit
def _scored_errors(inverse, gram, weights, unit_rows, scale):
    """``single_errors``'s arithmetic as one program (eagerly, its per-unit solves dispatched
    op by op and dominated the scoring pass)."""
    alive = jnp.ones(unit_rows.shape[0], bool)
    if scale is not None:
        return 0.5 * _unit_errors(inverse, weights * scale[None, :], unit_rows, alive)
    errors = _unit_errors(inverse, weights, unit_rows, alive)
    energy = jnp.sum(weights * jnp.matmul(gram.astype(jnp.float32), weights, precision=HIGHEST))
    return errors / energy


@functools.partial(jax.jit, static_argnames=("per_step",), donate_argnums=(0,))
def _greedy(inverse, weights, unit_rows, unit_group, quota, steps, *, per_step: int):
    """The greedy of ``greedy_remove``; ``inverse`` (P, [C, C]) is donated and returned last
    (its downdated value, unused), so the loop updates it in place: one P, not two.

    ``steps`` is traced (a while loop) and ``order`` / ``errors`` have ⌈U / per_step⌉ rows
    (rows past ``steps`` stay −1 / 0): maps of equal shapes share one executable whatever
    their quotas (the global allocation gives every block its own)."""
    num_units, size = unit_rows.shape
    max_steps = -(-num_units // per_step)

    def step(i, carry):
        inverse, weights, removed, taken, order, errors = carry
        room = quota - taken  # [G] units each group may still lose
        alive = ~removed & (room[unit_group] > 0)
        unit_err = _unit_errors(inverse, weights, unit_rows, alive)
        neg, chosen = jax.lax.top_k(-unit_err, per_step)  # the per_step smallest errors
        budget = jnp.sum(room)  # per_step > 1 only with one group (``greedy_remove``)
        valid = jnp.isfinite(neg) & (jnp.arange(per_step) < budget)  # [k]
        rows = unit_rows[chosen].reshape(-1)  # [k·g] the set S
        row_valid = jnp.repeat(valid, size)
        p_s = jnp.where(row_valid[None, :], inverse[:, rows], 0.0)  # P_{:,S} [C, k·g]
        p_ss = p_s[rows]
        p_ss = jnp.where(row_valid[:, None] & row_valid[None, :], p_ss, jnp.eye(rows.shape[0], dtype=p_ss.dtype))
        w_s = jnp.where(row_valid[:, None], weights[rows], 0.0)  # [k·g, D]
        solved = spd_solve(p_ss, jnp.concatenate([w_s, p_s.T], axis=1))  # [P_SS]⁻¹ [W_S | P_{S,:}]  [k·g, D + C]
        solved_w, downdate = solved[:, : w_s.shape[1]], solved[:, w_s.shape[1]:]
        step_err = jnp.sum(w_s * solved_w)
        weights = weights - jnp.matmul(p_s, solved_w, precision=HIGHEST)
        inverse = inverse - jnp.matmul(p_s, downdate, precision=HIGHEST)  # one pass over P per step
        removed = removed.at[chosen].set(removed[chosen] | valid)
        taken = taken.at[unit_group[chosen]].add(valid.astype(taken.dtype))
        order = order.at[i].set(jnp.where(valid, chosen, -1))
        return inverse, weights, removed, taken, order, errors.at[i].set(step_err)

    carry = (inverse, weights, jnp.zeros(num_units, bool), jnp.zeros_like(quota), jnp.full((max_steps, per_step), -1, jnp.int32),
             jnp.zeros(max_steps, weights.dtype))  # fmt: skip
    inverse, weights, removed, _, order, errors = jax.lax.fori_loop(0, steps, step, carry)
    removed_rows = jnp.zeros(weights.shape[0], bool).at[unit_rows.reshape(-1)].set(jnp.repeat(removed, size))
    return jnp.where(removed_rows[:, None], 0.0, weights), removed, order, errors, inverse  # 0: round-off of later downdates


def greedy_remove(
    gram: jax.Array,
    weights: jax.Array,
    unit_rows: np.ndarray,
    quota: np.ndarray | int,
    *,
    unit_group: np.ndarray | None = None,
    per_step: int = 1,
    damp: float = DAMP,
    damping: str = "mean",
    output_weight: jax.Array | None = None,
) -> Removal:
    """Removes units of the map y = xW greedily by their OBS error (module docstring).

    Args:
      gram: [C, C] H = second moment of the map's inputs (the intercept row included
        when ``weights`` has a bias row; any positive scale: a sum or a mean).
      weights: [C, D] the kernel (and the bias as its last row when there is one).
      unit_rows: [U, g] the rows of each unit (rows not listed — the intercept — stay).
      quota: units to remove per group ([G] ints, or one int with one group).
      unit_group: [U] the group of each unit (default: all in group 0).
      per_step: units removed jointly per step (one group only).
      damp: relative dampening λ of H; ``damping`` its form ("mean" | "diagonal").
      output_weight: None, or [D] weights of the output directions (module docstring,
        "Output metric"): the greedy minimises the weighted error; the compensation is
        the same least-squares optimum.

    Returns:
      ``Removal``; errors are in the units of ``gram`` (per token when it is a mean),
      weighted by ``output_weight`` when given.
    """
    unit_rows = np.asarray(unit_rows, np.int32)
    if unit_rows.ndim != 2:
        raise ValueError(f"unit_rows must be [units, rows per unit], got shape {unit_rows.shape}")
    unit_group = np.zeros(len(unit_rows), np.int32) if unit_group is None else np.asarray(unit_group, np.int32)
    quota = np.atleast_1d(np.asarray(quota, np.int32))
    counts = np.bincount(unit_group, minlength=len(quota))
    if np.any(quota < 0) or np.any(quota > counts):
        raise ValueError(f"quota {quota.tolist()} outside [0, units per group {counts.tolist()}]")
    check_positive_int(per_step, "per_step")
    if per_step > 1 and len(quota) > 1:
        raise ValueError(f"per_step must be 1 when units are removed per group, got {per_step!r}")
    total = int(quota.sum())
    if total == 0:
        return Removal(jnp.asarray(weights), jnp.zeros(len(unit_rows), bool), jnp.zeros((0, per_step), jnp.int32), jnp.zeros((0,)))
    steps = -(-total // per_step)
    weights = jnp.asarray(weights, jnp.float32)
    scale = output_scale(output_weight, weights.shape[1])
    weights = weights if scale is None else weights * scale[None, :]
    compensated, removed, order, errors, _ = _greedy(damped_inverse(gram, damp, damping), weights, jnp.asarray(unit_rows),
                                                     jnp.asarray(unit_group), jnp.asarray(quota), jnp.asarray(steps, jnp.int32),
                                                     per_step=per_step)  # fmt: skip
    compensated = compensated if scale is None else compensated / scale[None, :]
    return Removal(compensated, removed, order[:steps], errors[:steps])
