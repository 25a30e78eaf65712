"""Unit scores (higher = keep) for FFN channels and attention query heads: one registry.

Notation for one block: first maps W_G, W_U [D, F] (gate_kernel, up_kernel), second map
W_D [F, D] (down_kernel; its row j is HF's down_proj column j), SwiGLU intermediate
h = silu(W_Gᵀx) ⊙ W_Uᵀx; attention o_proj input z [N, H] per token (o_kernel [N, H, D]).
Statistics are over calibration tokens of the block's input (see ``calibrate``):

  FFN channel j                                   attention head n (sum over its H columns)
  random        U(0, 1)                           U(0, 1)
  magnitude     ‖(W_G, W_U)[:, j]‖_p              ‖W_Q[:, n]‖_p
  depth2        ‖(W_G, W_U)[:, j]‖₂ ‖W_D[j]‖₂     ‖W_Q[:, n]‖₂ ‖W_O[n]‖₂
  wanda-sp      mean_i |W_D[j, i]| ‖h_j‖₂         Σ_c mean_i |W_O[c, i]| ‖z_c‖₂
  flap          Var(h_j) ‖W_D[j]‖²                Σ_c Var(z_c) ‖W_O[c]‖²
  dap (paper)   ‖W_D[j]‖⁴ E[(u_jᵀx)²] E[(g_jᵀx)²]  Σ_c ‖W_O[c]‖² E[z_c²]   (second moment)
  dap-cov       Σ = covariance: Var(u_jᵀx) etc.   Σ_c ‖W_O[c]‖² Var(z_c)
  dap-empirical ‖W_D[j]‖² E[h_j²]                 same as dap
  dap-data-free Σ = I: ‖W_D[j]‖⁴ ‖u_j‖² ‖g_j‖²      Σ_c ‖W_O[c]‖² ‖W_V[:, c]‖²  (no calibration
                                                   statistics; a head's values ≈ its input)
  taylor        Σ |w ∂L/∂w| over the channel's     Σ |w ∂L/∂w| over the head's q columns
                gate/up columns and down row       and o rows (LLM-Pruner element-1; from
                                                   the dense model's gradients)
  depth2-l1     ‖(W_G, W_U)[:, j]‖₁ ‖W_D[j]‖₁     ‖W_Q[:, n]‖₁ ‖W_O[n]‖₁
  dap-obs       err({j}) = ‖W_D[j]‖² / (H⁻¹)_jj   err({n}) = tr(W_O[n]ᵀ [(H⁻¹)_nn]⁻¹ W_O[n])
                (H = E[x̂x̂ᵀ] of the second map's input on the pruned stream; ``obs``): the
                output error of removing the unit with optimal compensation. This entry
                *removes* units itself (``Score.remove``: the OBS greedy, with the
                compensation applied after each removal); the scores serve the allocation.

The paper's FFN score multiplies the depth-2 metrics of the (W_D, W_U) and (W_D, W_G)
pairs, E‖B_j σ(a_jᵀx)‖² ∝ ‖B_j‖² a_jᵀΣa_j, where a_jᵀΣa_j = E[(a_jᵀx)²] is the second
moment of the channel's pre-activation — accumulated per channel, no D×D Σ needed. The
head score treats (attention output, W_O) as the depth-2 unit: a query head's share of
the block output has energy Σ_c ‖W_O[c]‖² E[z_c²].

Every method is one ``Score`` entry of ``SCORES``: its channel and head functions
(one signature, ``fn(module, evidence) -> [units]``), what evidence it needs, whether
it compensates biases, its own options (a frozen dataclass with defaults, e.g.
``ObsOptions(damp)``: ``PruneConfig.options`` holds an instance) and, for a score that
chooses and compensates the removed units itself, its ``remove`` hook. The pipeline
reads those declarations; it never branches on a method's name. Adding a score = one
entry here plus a test.

Head similarity (paper §3.2, ``similar_heads``): with D_ab the mean Jensen–Shannon
divergence between the attention maps of heads a and b, pairs are visited in
ascending D; while D < τ and neither head is marked yet, the lower-scoring head of
the pair is marked as redundant (one representative of each similar pair survives).
A fixed budget is then met by removing marked heads first and filling (or
truncating) by the score (``prefer_marked``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from prune_jax.models.llama.sharding import to_host
from prune_jax.pruning.calibrate import AttentionStats, MLPStats, dense_gradients
from prune_jax.pruning.obs import DAMP, DAMPINGS, UnitGram, greedy_remove, single_errors, stacked_weights
from skmm_jax.common.registry import Registry

NEEDS = ("statistics", "gradients", "gram", "nothing")
MAX_GREEDY_STEPS = 256  # OBS greedy: at most this many downdates per map (wide FFNs remove several channels per step)


@dataclasses.dataclass(frozen=True)
class NormOptions:
    """Options of the magnitude score.

    Attributes:
      norm: "l2" or "l1", the norm of a unit's first-map weights.
    """

    norm: str = "l2"

    def __post_init__(self):
        if self.norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {self.norm!r}")


OBS_METRICS = ("energy", "loss", "stream")
OUTPUT_WEIGHTS = (None, "sensitivity", "stream")
"""What ``Score.output_weight`` may name: how the gram evidence weighs residual directions."""


@dataclasses.dataclass(frozen=True)
class ObsOptions:
    """Options of dap-obs (``obs``).

    Attributes:
      damp: relative dampening λ of the second map's input Gram: H + λ·mean(diag H)·I, so
        H⁻¹ exists when the calibration tokens do not span every direction; > 0.
      damping: "mean" (λ·mean(diag H)·I) or "diagonal" (λ·diag H: every direction damped
        by its own scale, so a massive-activation unit does not over-damp the others).
      metric: how output errors are measured, for the removal and the allocation:
        "energy" (the default: E‖δ‖², and relative to the map's output energy across maps) or "loss"
        (weighted per residual direction by the dense model's loss sensitivity
        E[g_d²], ``calibrate.residual_sensitivity``: a second-order estimate of the
        calibration-loss increase, on one scale across blocks; one backward pass over
        the calibration set up front) or "stream" (each residual direction's error
        relative to that direction's energy in the half's input stream, 1 / E[h_d²]: a
        massive-activation direction no longer dominates the error of the blocks that
        write it, and the errors of all maps are on one scale, with no backward pass).
    """

    damp: float = DAMP
    damping: str = "mean"
    metric: str = "energy"

    def __post_init__(self):
        if not self.damp > 0:
            raise ValueError(f"damp must be > 0, got {self.damp!r}")
        if self.damping not in DAMPINGS:
            raise ValueError(f"damping must be one of {DAMPINGS}, got {self.damping!r}")
        if self.metric not in OBS_METRICS:
            raise ValueError(f"metric must be one of {OBS_METRICS}, got {self.metric!r}")


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What a score function may read besides the module's own weights.

    Attributes:
      key: PRNG key of this layer and module (random scores).
      options: the method's options (``Score.options``; ``PruneConfig.options``), None
        for a method without options.
      stats: calibration statistics of the pruned stream (``MLPStats`` or
        ``AttentionStats``) when the score needs "statistics", ``UnitGram`` for "gram".
      gradients: the module's mean gradients on the dense model (same structure as the
        module), when the score needs "gradients".
    """

    key: jax.Array
    options: Any = None
    stats: MLPStats | AttentionStats | UnitGram | None = None
    gradients: Any = None


ScoreFn = Callable[[Any, Evidence], np.ndarray]


class UnitRemoval(NamedTuple):
    """What a score that removes units itself decides over: the second map of a half and
    its input units (query heads or whole KV groups; FFN channels).

    Attributes:
      weights: [C, D] the second map's kernel flattened over its inputs (o: N·H rows;
        down: F rows), with the bias as a last row when the map has one (the intercept).
      unit_rows: [U, g] the rows of each unit (rows not listed — the intercept — stay).
      unit_group: [U] the group of each unit (per-group heads: its KV group; else 0).
      quota: [G] units to remove per group.
    """

    weights: jax.Array
    unit_rows: np.ndarray
    unit_group: np.ndarray
    quota: np.ndarray


# (units to remove, evidence) → (the compensated weights [C, D], removed [U] booleans):
# the stage writes the weights back and slices the kept units.
RemoveFn = Callable[[UnitRemoval, Evidence], tuple[jax.Array, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Score:
    """One pruning score.

    Attributes:
      channels: ``channels(mlp, evidence)`` → [F] FFN channel scores.
      heads: ``heads(attn, evidence)`` → [N] query head scores.
      needs: "statistics" (activation statistics of the pruned stream, taken block by
        block), "gradients" (of the dense model's next-token loss on the calibration
        tokens: scored once, up front, on the dense weights), "gram" (the second map's
        input Gram on the pruned stream, ``obs.UnitGram``) or "nothing" (weights only).
      compensates_biases: bias compensation is on by default (FLAP):
        b += W[:, pruned] · mean(x_pruned); for a removing score, the bias is the
        intercept row of its compensation.
      remove: None, or the hook that chooses the removed units and compensates the kept
        ones itself (``RemoveFn``, given the "gram" evidence; dap-obs: the OBS greedy),
        which the stage calls instead of keeping the top scores (the score functions
        then only serve the allocation).
      allocation: the allocation mode ``Budget(allocation=None)`` uses for this score (a
        key of ``allocation.ALLOCATIONS``: "uniform" unless the scores are on one scale
        across layers: "global").
      options: None, or the frozen dataclass (every field with a default) of the
        method's own knobs; ``PruneConfig.options`` holds an instance, the score
        functions read it as ``Evidence.options``.
      allocation_samples: the calibration sequences the allocation's dense pass reads when
        ``Budget.allocation_samples`` is None (the first n; None: all).
      output_weight: ``output_weight(options)`` → what weighs each residual direction of
        the "gram" evidence's output error (``UnitGram.output_weight``), one of
        OUTPUT_WEIGHTS: None (unweighted), "sensitivity" (the dense model's loss
        sensitivity per direction; one backward pass up front) or "stream" (1 / E[h_d²]
        of the half's input stream, ``stage.unit_gram``).
    """

    channels: ScoreFn
    heads: ScoreFn
    needs: str = "statistics"
    compensates_biases: bool = False
    remove: RemoveFn | None = None
    allocation: str = "uniform"
    options: type | None = None
    allocation_samples: int | None = None
    output_weight: Callable[[Any], str | None] = lambda options: None

    def __post_init__(self):
        if self.needs not in NEEDS:
            raise ValueError(f"needs must be one of {NEEDS}, got {self.needs!r}")
        if self.remove is not None and self.needs != "gram":
            raise ValueError("a score that removes units needs the 'gram' evidence")
        if self.options is not None and not (dataclasses.is_dataclass(self.options) and isinstance(self.options, type)):
            raise ValueError(f"options must be a dataclass type (or None), got {self.options!r}")

    @property
    def removes(self) -> bool:
        """The score chooses and compensates the removed units itself (``remove``)."""
        return self.remove is not None

    def default_options(self):
        """The method's options with their defaults (None when it has none)."""
        return None if self.options is None else self.options()


def _norm(x: np.ndarray, axis, p: str) -> np.ndarray:
    return np.abs(x).sum(axis=axis) if p == "l1" else np.sqrt((x * x).sum(axis=axis))


def _ffn(mlp) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(W_G [D, F], W_U [D, F], W_D [F, D], ‖W_D[j]‖² [F]) in float32."""
    gate = to_host(mlp.gate_kernel[...], np.float32)
    up = to_host(mlp.up_kernel[...], np.float32)
    down = to_host(mlp.down_kernel[...], np.float32)
    return gate, up, down, (down * down).sum(axis=1)


def _first_maps(mlp) -> np.ndarray:
    """(W_G; W_U) [2D, F]: the channel's first-map columns."""
    gate, up, _, _ = _ffn(mlp)
    return np.concatenate([gate, up], axis=0)


def _query_rows(attn) -> np.ndarray:
    """[N, D·H]: head n's W_Q columns, one row per head."""
    q = to_host(attn.q_kernel[...], np.float32)  # [D, N, H]
    return q.transpose(1, 0, 2).reshape(q.shape[1], -1)


def _o_sq(attn) -> np.ndarray:
    """[N, H]: ‖W_O[c]‖² per o_proj input column c = (head n, dim h)."""
    o = to_host(attn.o_kernel[...], np.float32)  # [N, H, D]
    return (o * o).sum(axis=2)


def _random_channels(mlp, ev: Evidence) -> np.ndarray:
    return np.asarray(jax.random.uniform(ev.key, (mlp.down_kernel[...].shape[0],)))


def _random_heads(attn, ev: Evidence) -> np.ndarray:
    return np.asarray(jax.random.uniform(ev.key, (attn.q_kernel[...].shape[1],)))


def _dap_channels(mlp, ev: Evidence) -> np.ndarray:
    _, _, _, down_sq = _ffn(mlp)
    return down_sq * down_sq * ev.stats.up_sq_mean * ev.stats.gate_sq_mean


def _dap_cov_channels(mlp, ev: Evidence) -> np.ndarray:
    _, _, _, down_sq = _ffn(mlp)
    return down_sq * down_sq * ev.stats.up_var * ev.stats.gate_var


def _dap_empirical_channels(mlp, ev: Evidence) -> np.ndarray:
    return _ffn(mlp)[3] * ev.stats.h_sq_mean


def _dap_heads(attn, ev: Evidence) -> np.ndarray:
    return (ev.stats.z_sq_mean * _o_sq(attn)).sum(axis=1)


def _variance_heads(attn, ev: Evidence) -> np.ndarray:  # flap and dap-cov
    return (ev.stats.z_var * _o_sq(attn)).sum(axis=1)


def _data_free_channels(mlp, ev: Evidence) -> np.ndarray:
    gate, up, _, down_sq = _ffn(mlp)
    return down_sq * down_sq * (up * up).sum(axis=0) * (gate * gate).sum(axis=0)


def _data_free_heads(attn, ev: Evidence) -> np.ndarray:
    """Σ = I: E[z_c²] → ‖W_V[:, c]‖² of the head's KV group."""
    q = to_host(attn.q_kernel[...], np.float32)  # [D, N, H]
    v = to_host(attn.v_kernel[...], np.float32)  # [D, K, H]
    group = q.shape[1] // v.shape[1]
    v_sq = np.repeat((v * v).sum(axis=0), group, axis=0)  # [N, H]
    return (v_sq * _o_sq(attn)).sum(axis=1)


def _wanda_channels(mlp, ev: Evidence) -> np.ndarray:
    return np.abs(_ffn(mlp)[2]).mean(axis=1) * np.sqrt(ev.stats.h_sq_sum)


def _wanda_heads(attn, ev: Evidence) -> np.ndarray:
    o = to_host(attn.o_kernel[...], np.float32)
    return (np.abs(o).mean(axis=2) * np.sqrt(ev.stats.z_sq_sum)).sum(axis=1)


def _saliency(module, gradients, name: str) -> np.ndarray:
    """|w · ∂L/∂w| of one kernel."""
    return np.abs(to_host(getattr(module, name)[...], np.float32) * to_host(getattr(gradients, name)[...], np.float32))


def _taylor_channels(mlp, ev: Evidence) -> np.ndarray:
    g = ev.gradients
    return _saliency(mlp, g, "gate_kernel").sum(0) + _saliency(mlp, g, "up_kernel").sum(0) + _saliency(mlp, g, "down_kernel").sum(1)


def _taylor_heads(attn, ev: Evidence) -> np.ndarray:
    g = ev.gradients
    return _saliency(attn, g, "q_kernel").sum(axis=(0, 2)) + _saliency(attn, g, "o_kernel").sum(axis=(1, 2))


def _depth2_l1_channels(mlp, ev: Evidence) -> np.ndarray:
    return _norm(_first_maps(mlp), 0, "l1") * _norm(_ffn(mlp)[2], 1, "l1")


def _depth2_l1_heads(attn, ev: Evidence) -> np.ndarray:
    o = to_host(attn.o_kernel[...], np.float32)
    return _norm(_query_rows(attn), 1, "l1") * _norm(o.reshape(o.shape[0], -1), 1, "l1")


def _obs_channels(mlp, ev: Evidence) -> np.ndarray:
    bias = mlp.down_bias[...] if ev.stats.intercept else None
    weights = stacked_weights(mlp.down_kernel[...], bias)
    return single_errors(ev.stats.gram, weights, np.arange(mlp.down_kernel[...].shape[0])[:, None], ev.options.damp,
                         output_weight=ev.stats.output_weight, damping=ev.options.damping)


def _obs_heads(attn, ev: Evidence) -> np.ndarray:
    heads, head_dim = attn.o_kernel[...].shape[:2]
    bias = attn.o_bias[...] if ev.stats.intercept else None
    weights = stacked_weights(attn.o_kernel[...], bias)
    return single_errors(ev.stats.gram, weights, np.arange(heads * head_dim).reshape(heads, head_dim), ev.options.damp,
                         output_weight=ev.stats.output_weight, damping=ev.options.damping)


def _obs_remove(units: UnitRemoval, ev: Evidence) -> tuple[jax.Array, np.ndarray]:
    """dap-obs's removal: the OBS greedy on the second map's input Gram (``obs.greedy_remove``):
    each step removes the unit whose removal, with the optimal compensation of the kept rows
    (and of the bias, the intercept row), adds the least output error, and applies that
    compensation. One group (channels, KV groups): several units per step (a power of two),
    so at most ``MAX_GREEDY_STEPS`` downdates; per-group heads: one per step."""
    quota = units.quota
    # ⌈quota / MAX_GREEDY_STEPS⌉ rounded up to a power of two: blocks with different quotas share
    # a few executables (the greedy's step count is traced, its per-step width is not).
    per_step = 1 << max(0, -(-int(quota.sum()) // MAX_GREEDY_STEPS) - 1).bit_length() if len(quota) == 1 else 1
    removal = greedy_remove(ev.stats.gram, units.weights, units.unit_rows, quota, unit_group=units.unit_group, per_step=per_step,
                            damp=ev.options.damp, damping=ev.options.damping, output_weight=ev.stats.output_weight)
    return removal.weights, np.asarray(removal.removed)


# dap-obs's default allocation, chosen by benchmarks/prune_llama.py (docs/pruning.md: the rule).
DAP_OBS_ALLOCATION = "global"

SCORES: Registry[Score] = Registry("score method", {
    "random": Score(_random_channels, _random_heads, needs="nothing"),
    "magnitude": Score(lambda mlp, ev: _norm(_first_maps(mlp), 0, ev.options.norm),
                       lambda attn, ev: _norm(_query_rows(attn), 1, ev.options.norm), needs="nothing", options=NormOptions),
    "depth2": Score(lambda mlp, ev: _norm(_first_maps(mlp), 0, "l2") * np.sqrt(_ffn(mlp)[3]),
                    lambda attn, ev: _norm(_query_rows(attn), 1, "l2") * np.sqrt(_o_sq(attn).sum(axis=1)), needs="nothing"),
    "wanda-sp": Score(_wanda_channels, _wanda_heads),
    "flap": Score(lambda mlp, ev: ev.stats.h_var * _ffn(mlp)[3], _variance_heads, compensates_biases=True),
    "dap": Score(_dap_channels, _dap_heads),
    "dap-cov": Score(_dap_cov_channels, _variance_heads),
    "dap-empirical": Score(_dap_empirical_channels, _dap_heads),
    "dap-data-free": Score(_data_free_channels, _data_free_heads, needs="nothing"),
    "taylor": Score(_taylor_channels, _taylor_heads, needs="gradients"),
    "depth2-l1": Score(_depth2_l1_channels, _depth2_l1_heads, needs="nothing"),
    "dap-obs": Score(_obs_channels, _obs_heads, needs="gram", remove=_obs_remove, allocation=DAP_OBS_ALLOCATION, options=ObsOptions,
                     output_weight=lambda options: {"loss": "sensitivity", "stream": "stream"}.get(options.metric)),
}.items())
"""Every unit score by method name; ``SCORES.register(name, Score(...))`` adds one."""

# The names, in registry order (a view: methods registered later appear here too).
METHODS = SCORES.keys()


def get_score(method: str) -> Score:
    """The registry entry of ``method``; ValueError naming the valid methods."""
    return SCORES.lookup(method, setting="method")


def _options(score: Score, options):
    return score.default_options() if options is None else options


def ffn_channel_scores(method: str, mlp, stats: MLPStats | None, *, key: jax.Array, options: Any = None, gradients: Any = None) -> np.ndarray:
    """[F] scores of the FFN channels of one block (see module docstring); ``options``:
    the method's (None: its defaults)."""
    score = get_score(method)
    return score.channels(mlp, Evidence(key=key, options=_options(score, options), stats=stats, gradients=gradients))


def head_scores(method: str, attn, stats: AttentionStats | None, *, key: jax.Array, options: Any = None, gradients: Any = None) -> np.ndarray:
    """[N] scores of the query heads of one block (see module docstring); ``options``:
    the method's (None: its defaults)."""
    score = get_score(method)
    return score.heads(attn, Evidence(key=key, options=_options(score, options), stats=stats, gradients=gradients))


def gradient_scores(model, tokens, method: str, *, batch_size: int, key: jax.Array, options: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, (head scores [N], channel scores [F]) of a "gradients" score, from the
    dense model's weights and its mean gradients on ``tokens`` [S, T] (``dense_gradients``).

    Keys follow the pipeline's convention: ``fold_in(key, 2·layer)`` for heads,
    ``fold_in(key, 2·layer + 1)`` for channels.
    """
    score = get_score(method)
    options = _options(score, options)
    graded = dense_gradients(model, tokens, batch_size=batch_size)
    out = []
    for layer, (block, grads) in enumerate(zip(model.layers, graded.layers)):
        heads = score.heads(block.attn, Evidence(key=jax.random.fold_in(key, 2 * layer), options=options, gradients=grads.attn))
        channels = score.channels(block.mlp, Evidence(key=jax.random.fold_in(key, 2 * layer + 1), options=options, gradients=grads.mlp))
        out.append((heads, channels))
    return out


def similar_heads(divergence: np.ndarray, scores: np.ndarray, tau: float) -> np.ndarray:
    """Boolean [N]: heads marked redundant by the greedy over pairs with D_ab < τ."""
    divergence = np.asarray(divergence)
    heads = divergence.shape[0]
    a, b = np.triu_indices(heads, k=1)
    marked = np.zeros(heads, bool)
    for i in np.argsort(divergence[a, b], kind="stable"):
        if divergence[a[i], b[i]] >= tau:
            break
        if not (marked[a[i]] or marked[b[i]]):
            marked[a[i] if scores[a[i]] <= scores[b[i]] else b[i]] = True
    return marked


def prefer_marked(scores: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """Scores reordered so every marked head ranks below every unmarked one (within
    each set the score's order is kept): removal takes marked heads first."""
    ranks = np.argsort(np.argsort(np.asarray(scores), kind="stable"), kind="stable").astype(np.float64)
    return ranks - len(ranks) * np.asarray(marked, np.float64)
