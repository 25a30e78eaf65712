"""Sparsity allocation: a parameter budget → how many units each layer loses.

A layer's cut is (heads or KV groups to remove, FFN channels to remove). Fixed ratios,
or one of the allocation modes of the registry ``ALLOCATIONS`` (name → ``AllocationMode``:
a budget and the dense scores → per-layer cuts; a mode registered there is valid in
``config.Budget``):
  - fixed per-module ratios r_attn, r_ffn: every layer of the range loses
    round(r · units) (``layer_cuts``);
  - uniform: one ratio r for both modules and every layer, the smallest whose removal
    reaches ``sparsity`` of the prunable parameters (``solve_ratio``, bisection: the
    removal is a non-decreasing step function of r);
  - adaptive (FLAP): unit scores standardised within their layer and module, one global
    threshold over all units weighted by their parameter cost (``adaptive_cuts``);
  - global: raw scores per parameter freed, one threshold (scores on one scale across
    layers: dap-obs's output error relative to the map's output energy).
Every layer keeps at least one query head per KV group (one KV group) and one channel
(adaptive: 10 % of the channels).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from skmm_jax.common.registry import Registry

HEAD_MODES = ("per-group", "kv-groups")


def default_layer_range(num_layers: int) -> tuple[int, int]:
    """The paper's [4, L − 2), shrunk for shallow models so it is never empty when L ≥ 3."""
    start, stop = min(4, max(1, num_layers // 4)), num_layers - min(2, max(1, num_layers // 8))
    return (start, stop) if start < stop else (0, num_layers)


def prunable_parameters(model) -> int:
    """Attention and MLP parameters of all blocks (what structured pruning can remove)."""
    total = 0
    for block in model.layers:
        for module in (block.attn, block.mlp):
            total += sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    return total


def _per_query_head(model) -> int:
    """Parameters of one query head: its q columns, o rows and q bias."""
    config = model.config
    return 2 * config.hidden_size * config.head_dim + (config.head_dim if config.attention_bias else 0)


def _per_kv_group(model, group: int) -> int:
    """Parameters of one KV group with its ``group`` query heads (k/v biases are not counted)."""
    return group * _per_query_head(model) + 2 * model.config.hidden_size * model.config.head_dim


def _per_channel(model) -> int:
    return 3 * model.config.hidden_size + (2 if model.config.mlp_bias else 0)


def _head_shape(model, layer: int) -> tuple[int, int]:
    """(N, K) read from the kernels."""
    attn = model.layers[layer].attn
    return attn.q_kernel[...].shape[1], attn.k_kernel[...].shape[1]


def layer_cuts(model, layer: int, attention_ratio: float, ffn_ratio: float, head_mode: str) -> tuple[int, int]:
    """(heads per group or KV groups to remove, FFN channels to remove) at one layer for given ratios."""
    heads, kv_heads = _head_shape(model, layer)
    group = heads // kv_heads
    if head_mode == "per-group":
        head_cut = min(int(round(attention_ratio * group)), group - 1)
    else:
        head_cut = min(int(round(attention_ratio * kv_heads)), kv_heads - 1)
    channels = model.layers[layer].mlp.down_kernel[...].shape[0]
    return head_cut, min(int(round(ffn_ratio * channels)), channels - 1)


def removed_parameters(model, cuts: dict[int, tuple[int, int]], head_mode: str) -> int:
    """Parameters that ``cuts`` (layer → (head cut, channel cut)) remove."""
    removed = 0
    for layer, (head_cut, channel_cut) in cuts.items():
        heads, kv_heads = _head_shape(model, layer)
        if head_mode == "per-group":
            removed += head_cut * kv_heads * _per_query_head(model)
        else:
            removed += head_cut * _per_kv_group(model, heads // kv_heads)
        removed += channel_cut * _per_channel(model)
    return removed


def _ratio_cuts(model, layers: range, attention_ratio: float, ffn_ratio: float, head_mode: str) -> dict[int, tuple[int, int]]:
    return {layer: layer_cuts(model, layer, attention_ratio, ffn_ratio, head_mode) for layer in layers}


def solve_ratio(model, layers: range, sparsity: float, head_mode: str) -> float:
    """Smallest common per-layer ratio r whose removal reaches ``sparsity`` of the
    prunable parameters (bisection; removal is a non-decreasing step function of r)."""
    target = sparsity * prunable_parameters(model)
    lo, hi = 0.0, 0.999
    if removed_parameters(model, _ratio_cuts(model, layers, hi, hi, head_mode), head_mode) < target:
        raise ValueError(
            f"sparsity {sparsity} cannot be reached by pruning layers {layers.start}–{layers.stop - 1} only; "
            "widen the layer range or lower the sparsity"
        )
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if removed_parameters(model, _ratio_cuts(model, layers, mid, mid, head_mode), head_mode) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


# Most FFN channels one block may lose under a global threshold: blocks whose output energy
# is one massive-activation direction (SmolLM2's 9–11) make every other channel look free,
# and removing 90 % of them costs 5 % PPL on Wikipedia (benchmarks/prune_llama.md). dap-obs's
# loss metric (``ObsOptions.metric="loss"``) weighs that direction by what it does to the loss
# and needs no cap: pass ``Budget(max_block_removal=0.9)`` with it (44.57 at 50 % vs 43.86).
GLOBAL_MAX_REMOVED = 0.5


def adaptive_cuts(model, layer_scores: dict[int, tuple[np.ndarray, np.ndarray]], sparsity: float, head_mode: str,
                  *, standardise: bool = True, max_removed: float | None = None) -> dict[int, tuple[int, int]]:
    """FLAP's adaptive structure: per-layer cuts from one global threshold.

    Every unit's score is standardised within its layer and module ((s − mean)/std),
    units are removed in ascending standardised score until the removed parameters
    reach ``sparsity`` of the prunable ones. ``standardise=False`` ("global"
    allocation): the raw scores are compared across layers per parameter they free
    (score / parameters of the unit: the cheapest error per parameter goes first),
    which needs scores on one scale in every layer (dap-obs: relative output errors).
    ``max_removed``: most of a block's FFN channels removable (default 0.9 standardised,
    ``GLOBAL_MAX_REMOVED`` global). Head units respect GQA: in "per-group"
    mode a unit is "one more query head from every KV group" (its score: the mean
    over groups of their k-th lowest standardised head score), in "kv-groups" mode a
    whole group. At least one head per group (one group), and 10 % of the channels,
    stay in every layer. Within a layer the units are in ascending order, so the
    global prefix is a per-layer prefix.

    Args:
      layer_scores: layer → (head scores [N], channel scores [F]) (higher = keep).

    Returns:
      layer → (heads or KV groups to remove, channels to remove).
    """
    normalise = _standardise if standardise else (lambda x: x)
    if max_removed is None:
        max_removed = 0.9 if standardise else GLOBAL_MAX_REMOVED
    units = []  # (score to threshold, layer, "head" | "channel", cost)
    for layer, (head_score, channel_score) in layer_scores.items():
        heads, kv_heads = _head_shape(model, layer)
        group = heads // kv_heads
        z_heads = normalise(np.asarray(head_score, np.float64)).reshape(kv_heads, group)
        if head_mode == "per-group":
            # one slot = one more query head from every group: mean (standardised) or sum (global) of their k-th lowest
            slots = np.sort(z_heads, axis=1).sum(axis=0)[: group - 1] / (kv_heads if standardise else 1)
            cost = kv_heads * _per_query_head(model)
        else:
            slots = np.sort(normalise(np.asarray(head_score, np.float64).reshape(kv_heads, group).sum(axis=1)))[: kv_heads - 1]
            cost = _per_kv_group(model, group)
        per = 1.0 if standardise else 1.0 / cost
        units += [(float(z) * per, layer, "head", cost) for z in slots]
        z_channels = np.sort(normalise(np.asarray(channel_score, np.float64)))
        per = 1.0 if standardise else 1.0 / _per_channel(model)
        units += [(float(z) * per, layer, "channel", _per_channel(model)) for z in z_channels[: int(max_removed * len(z_channels))]]
    target = sparsity * prunable_parameters(model)
    cuts = {layer: [0, 0] for layer in layer_scores}
    removed = 0
    for _, layer, kind, cost in sorted(units, key=lambda u: u[0]):
        if removed >= target:
            break
        cuts[layer][0 if kind == "head" else 1] += 1
        removed += cost
    if removed < target:
        raise ValueError(f"sparsity {sparsity} cannot be reached within the layer range with at most {max_removed:.0%} of a block's "
                         "channels removed; widen the range, lower the sparsity or raise max_block_removal")
    return {layer: (h, c) for layer, (h, c) in cuts.items()}


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Per-layer cuts and the common ratios that produced them (None for adaptive ones)."""

    cuts: dict[int, tuple[int, int]]  # layer → (heads per group or KV groups, FFN channels) to remove
    attention_ratio: float | None
    ffn_ratio: float | None


# layer → (head scores [N], channel scores [F]) of the dense model; computed on demand
# (a first pass over the model), only by the modes that read scores.
DenseScores = Callable[[], dict[int, tuple[np.ndarray, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class AllocationMode:
    """One way to turn a parameter budget into per-layer cuts (an ``ALLOCATIONS`` entry).

    Attributes:
      description: what the mode does, in a sentence (for docs and ``--help``).
      allocate: ``allocate(model, layers, budget, dense_scores)`` → ``Allocation``: the
        cuts over ``layers`` (a range) that remove ``budget.sparsity`` of the prunable
        parameters (``budget``: a ``config.Budget``); ``dense_scores()`` only when the
        mode reads scores.
    """

    description: str
    allocate: Callable[[Any, range, Any, DenseScores], Allocation]


def _uniform(model, layers: range, budget, dense_scores: DenseScores) -> Allocation:
    ratio = solve_ratio(model, layers, budget.sparsity, budget.head_mode)
    return Allocation(_ratio_cuts(model, layers, ratio, ratio, budget.head_mode), ratio, ratio)


def _thresholded(standardise: bool):
    def allocate_by_threshold(model, layers: range, budget, dense_scores: DenseScores) -> Allocation:
        cuts = adaptive_cuts(model, dense_scores(), budget.sparsity, budget.head_mode, standardise=standardise,
                             max_removed=budget.max_block_removal)
        return Allocation(cuts, None, None)

    return allocate_by_threshold


ALLOCATIONS: Registry[AllocationMode] = Registry("allocation mode", {
    "uniform": AllocationMode("one ratio for both modules and every layer of the range, the smallest that meets the budget "
                              "(solve_ratio)", _uniform),
    "adaptive": AllocationMode("FLAP: unit scores standardised within their layer and module, one global threshold over all "
                               "units weighted by their parameter cost (adaptive_cuts); non-uniform widths",
                               _thresholded(standardise=True)),
    "global": AllocationMode("raw scores per parameter freed, one global threshold: for scores on one scale across layers "
                             "(dap-obs's relative output errors); at most max_block_removal of a block's channels",
                             _thresholded(standardise=False)),
}.items())
"""Every allocation mode by name; ``ALLOCATIONS.register(name, AllocationMode(...))`` adds one."""


def allocate(model, layers: range, budget, mode: str, dense_scores: DenseScores) -> Allocation:
    """The cuts ``budget`` (a ``config.Budget``) asks for over ``layers``: its fixed module
    ratios when given, else those of the allocation ``mode`` (a key of ``ALLOCATIONS``).

    Args:
      dense_scores: called only by modes that read scores: layer → (head scores,
        channel scores) of the dense model.
    """
    if budget.fixed_ratios:
        attention_ratio, ffn_ratio = budget.attention_ratio or 0.0, budget.ffn_ratio or 0.0
        return Allocation(_ratio_cuts(model, layers, attention_ratio, ffn_ratio, budget.head_mode), attention_ratio, ffn_ratio)
    return ALLOCATIONS.lookup(mode, setting="allocation").allocate(model, layers, budget, dense_scores)
