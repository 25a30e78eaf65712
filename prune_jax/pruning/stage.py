"""One stage for both halves of a block: calibrate → score → keep set → slice → refit.

Each half of a decoder block is a depth-2 unit on the residual stream,

    attention:  h + W_O · heads(W_Q, W_K, W_V · RMSNorm(h))    units: query heads
    MLP:        h + W_D · silu(W_G x) ⊙ (W_U x), x = RMSNorm(h)   units: FFN channels

and is pruned by the same steps (``prune_half``), given the two calibration streams
(pruned stream h, dense stream h_dense — None before the first refit block):
  1. dense targets, before anything changes: the half's output on h_dense (the second
     map's target) and, for ``refit="full"``, its first maps' outputs;
  2. refit the first maps (q,k,v | gate,up: one input, one Gram) to their dense outputs;
  3. if units go: calibrate statistics of the unit outputs on the pruned stream, score
     (``scores.SCORES``), rerank (attention: the similarity criterion), keep set (GQA
     aware for heads), bias compensation, slice;
  4. refit the second map (o | down) on the kept units to the dense output;
  5. advance both streams (the pruned one through the model's residual hook).
``Half`` names what differs between the halves: modules, maps and statistics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.pruning.calibrate import attention_stats, head_divergence, mlp_stats
from prune_jax.pruning.recover import refit_output_map, refit_shared_input
from prune_jax.pruning.report import HalfReport, LayerReport, Refit
from prune_jax.pruning.scores import Evidence, Score, prefer_marked, similar_heads
from prune_jax.pruning.slicing import head_keep_set, keep_top, slice_channels, slice_heads
from skmm_jax.streaming import chunk_bounds

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every stage shares: calibration positions, RoPE, chunking and the score.

    Attributes:
      config: the ``PruneConfig``.
      score: the method's registry entry.
      positions: [S, T] positions of the calibration sequences.
      inv_freq: RoPE inverse frequencies.
      chunk: sequences per forward step.
      key: the run's PRNG key (folded in per layer and half).
      given_scores: layer → (head scores, channel scores) computed up front from the
        dense model ("gradients" scores), else None.
    """

    config: Any
    score: Score
    positions: Array
    inv_freq: Array
    chunk: int
    key: jax.Array
    given_scores: list[tuple[np.ndarray, np.ndarray]] | None = None

    def map(self, fn: Callable[[Array, Array], Array], x: Array) -> Array:
        """fn(x chunk, positions chunk) over chunks of sequences, concatenated."""
        return jnp.concatenate([fn(x[s:e], self.positions[s:e]) for s, e in chunk_bounds(x.shape[0], self.chunk)], axis=0)

    def chunks(self, x: Array):
        return (x[s:e] for s, e in chunk_bounds(x.shape[0], self.chunk))


@dataclasses.dataclass(frozen=True)
class Half:
    """One half of a decoder block as a depth-2 unit (see module docstring).

    Attributes:
      index: 0 for attention, 1 for the MLP (position in a layer's cut and scores).
      module, norm: the block's module and the RMSNorm before it.
      residual: the model's hook (block, h, positions, inv_freq) → stream after the half.
      first_kernels, first_biases: the maps reading the normalised input.
      first_outputs: (module, x) → their outputs (refit targets, concatenated).
      units: (module, x, positions, inv_freq) → [S, T, units, ...], the second map's input.
      output: (module, x, positions, inv_freq) → [S, T, D], the half's residual update.
      second_kernel, second_bias: the map whose input units are removed.
      calibrate: (module, x, ctx) → statistics of the units on the stream x.
      unit_mean: statistics → E[unit output] [units, ...] (bias compensation).
      score: the registry entry's function for these units.
      keep_set: (module, scores, cut, head_mode) → (kept units, slice argument).
      slice: (module, kept, slice argument) → None, in place.
      rerank: (module, x, scores, ctx) → (scores, marked units or None).
    """

    index: int
    module: Callable[[Any], Any]
    norm: Callable[[Any], Any]
    residual: Callable[[Any, Array, Array, Array], Array]
    first_kernels: tuple[str, ...]
    first_biases: tuple[str, ...]
    first_outputs: Callable[[Any, Array], tuple[Array, ...]]
    units: Callable[[Any, Array, Array, Array], Array]
    output: Callable[[Any, Array, Array, Array], Array]
    second_kernel: str
    second_bias: str
    calibrate: Callable[[Any, Array, StageContext], Any]
    unit_mean: Callable[[Any], np.ndarray]
    score: Callable[[Score], Callable[[Any, Evidence], np.ndarray]]
    keep_set: Callable[[Any, np.ndarray, int, str], tuple[np.ndarray, Any]]
    slice: Callable[[Any, np.ndarray, Any], None]
    rerank: Callable[[Any, Array, np.ndarray, StageContext], tuple[np.ndarray, tuple[int, ...] | None]]


def _similar_heads_first(attn, x: Array, scores: np.ndarray, ctx: StageContext) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Head criterion "similarity" (paper §3.2): heads marked redundant go first."""
    if ctx.config.head_criterion != "similarity":
        return scores, None
    probs = (attn.probabilities(x[s:e], ctx.positions[s:e], ctx.inv_freq) for s, e in chunk_bounds(x.shape[0], ctx.chunk))
    marked = similar_heads(head_divergence(probs), scores, ctx.config.similarity_tau)
    return prefer_marked(scores, marked), tuple(np.flatnonzero(marked).tolist())


ATTENTION = Half(
    index=0,
    module=lambda block: block.attn,
    norm=lambda block: block.input_norm,
    residual=lambda block, h, positions, inv_freq: block.attention_residual(h, positions, inv_freq),
    first_kernels=("q_kernel", "k_kernel", "v_kernel"),
    first_biases=("q_bias", "k_bias", "v_bias"),
    first_outputs=lambda attn, x: attn.projections(x),
    units=lambda attn, x, positions, inv_freq: attn.heads(x, positions, inv_freq),  # [S, T, N, H]
    output=lambda attn, x, positions, inv_freq: attn(x, positions, inv_freq),
    second_kernel="o_kernel",
    second_bias="o_bias",
    # all of o_proj's inputs in one sum (a [S, T, N, H] array: heads are few)
    calibrate=lambda attn, x, ctx: attention_stats([ctx.map(functools.partial(attn.heads, inv_freq=ctx.inv_freq), x)]),
    unit_mean=lambda stats: stats.z_mean,  # [N, H]
    score=lambda score: score.heads,
    keep_set=lambda attn, scores, cut, head_mode: head_keep_set(scores, attn.k_kernel[...].shape[1], cut, head_mode),
    slice=slice_heads,
    rerank=_similar_heads_first,
)

MLP = Half(
    index=1,
    module=lambda block: block.mlp,
    norm=lambda block: block.post_attn_norm,
    residual=lambda block, h, positions, inv_freq: block.mlp_residual(h),
    first_kernels=("gate_kernel", "up_kernel"),
    first_biases=("gate_bias", "up_bias"),
    first_outputs=lambda mlp, x: mlp.pre_activations(x),
    units=lambda mlp, x, positions, inv_freq: mlp.intermediate(x),  # [S, T, F]
    output=lambda mlp, x, positions, inv_freq: mlp(x),
    second_kernel="down_kernel",
    second_bias="down_bias",
    calibrate=lambda mlp, x, ctx: mlp_stats(mlp, ctx.chunks(x)),  # per chunk: [S, T, F] may be large
    unit_mean=lambda stats: stats.h_mean,  # [F]
    score=lambda score: score.channels,
    keep_set=lambda mlp, scores, cut, head_mode: (keep_top(scores, len(scores) - cut), None),
    slice=lambda mlp, keep, _: slice_channels(mlp, keep),
    rerank=lambda mlp, x, scores, ctx: (scores, None),
)

HALVES = (ATTENTION, MLP)


def unit_scores(half: Half, module, layer: int, x: Array | None, ctx: StageContext) -> tuple[np.ndarray, Any]:
    """(scores of the half's units, their statistics or None) on the stream x = the
    normalised input (None when the score needs no statistics)."""
    stats = None if x is None else half.calibrate(module, x, ctx)
    if ctx.given_scores is not None:  # "gradients" scores: from the dense model, up front
        return ctx.given_scores[layer][half.index], stats
    evidence = Evidence(key=jax.random.fold_in(ctx.key, 2 * layer + half.index), norm=ctx.config.norm, stats=stats)
    return half.score(ctx.score)(module, evidence), stats


def _needs_stats(ctx: StageContext) -> bool:
    return ctx.score.needs == "statistics" or ctx.config.compensate


def _remove_units(half: Half, module, layer: int, x: Array, cut: int, ctx: StageContext) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Scores the half's units on the pruned stream, removes ``cut`` of them (per group or
    KV groups for heads), compensates biases if asked; returns (kept, marked)."""
    scores, stats = unit_scores(half, module, layer, x if _needs_stats(ctx) else None, ctx)
    scores, marked = half.rerank(module, x, scores, ctx)
    keep, slice_arg = half.keep_set(module, scores, cut, ctx.config.head_mode)
    if ctx.config.compensate:  # b += Σ_{removed units c} E[u_c] W[c]
        dropped = np.setdiff1d(np.arange(len(scores)), keep)
        mean = jnp.asarray(half.unit_mean(stats)[dropped], jnp.float32)  # [r, ...]
        rows = getattr(module, half.second_kernel)[...][jnp.asarray(dropped)].astype(jnp.float32)  # [r, ..., D]
        bias = getattr(module, half.second_bias)[...]
        axes = "NH"[: mean.ndim]  # heads: [N, H] means, [N, H, D] rows; channels: [F], [F, D]
        shift = jnp.einsum(f"{axes},{axes}D->D", mean, rows)  # [D]
        setattr(module, half.second_bias, nnx.Param((bias.astype(jnp.float32) + shift).astype(bias.dtype)))
    half.slice(module, keep, slice_arg)
    return tuple(int(k) for k in keep), marked


def prune_half(half: Half, block, layer: int, h: Array, h_dense: Array | None, cut: int, ctx: StageContext) -> tuple[Array, Array | None, HalfReport]:
    """Prunes ``cut`` units of one half of ``block`` (heads per group or KV groups; FFN
    channels) and refits it when ``h_dense`` is given; returns the advanced (pruned,
    dense) streams and what was done."""
    module, grid = half.module(block), ctx.config.ridge_grid
    normalise = lambda v, positions: half.norm(block)(v)  # noqa: E731
    first = second = kept = marked = None
    x = ctx.map(normalise, h) if (cut or h_dense is not None) else None  # the pruned stream's input [S, T, D]
    if h_dense is not None:
        x_dense = ctx.map(normalise, h_dense)
        dense_out = ctx.map(functools.partial(half.output, module, inv_freq=ctx.inv_freq), x_dense)  # before any change
        if ctx.config.refit == "full":
            targets = ctx.map(lambda v, p: jnp.concatenate([t.reshape(t.shape[:2] + (-1,)) for t in half.first_outputs(module, v)], -1), x_dense)
            first = Refit(**refit_shared_input(module, half.first_kernels, half.first_biases, x, targets, grid))
    if cut:
        kept, marked = _remove_units(half, module, layer, x, cut, ctx)
    if h_dense is not None:
        units = ctx.map(functools.partial(half.units, module, inv_freq=ctx.inv_freq), x)
        second = Refit(**refit_output_map(module, half.second_kernel, half.second_bias, units, dense_out, grid))
        h_dense = h_dense + dense_out  # the dense half's output, computed before the weights changed
    h = ctx.map(lambda v, positions: half.residual(block, v, positions, ctx.inv_freq), h)
    return h, h_dense, HalfReport(kept=kept, first_refit=first, second_refit=second, similar_marked=marked)


def prune_block(block, layer: int, h: Array, h_dense: Array | None, cuts: tuple[int, int], ctx: StageContext) -> tuple[Array, Array | None, LayerReport]:
    """Both halves of one block, attention first (``prune_half``)."""
    h, h_dense, attention = prune_half(ATTENTION, block, layer, h, h_dense, cuts[0], ctx)
    h, h_dense, mlp = prune_half(MLP, block, layer, h, h_dense, cuts[1], ctx)
    return h, h_dense, LayerReport(layer, attention, mlp)


def dense_unit_scores(model, h: Array, layers: range, ctx: StageContext) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Unit scores of every block in ``layers`` on the dense model's own stream, starting
    from the embedded calibration tokens ``h`` (first pass of the adaptive allocation)."""
    if ctx.given_scores is not None:
        return {layer: ctx.given_scores[layer] for layer in layers}
    needs_stream = ctx.score.needs == "statistics"
    out = {}
    for layer, block in enumerate(model.layers[: layers.stop]):
        pair = []
        for half in HALVES:
            if layer in layers:
                x = ctx.map(lambda v, positions: half.norm(block)(v), h) if needs_stream else None
                pair.append(unit_scores(half, half.module(block), layer, x, ctx)[0])
            if needs_stream:
                h = ctx.map(lambda v, positions: half.residual(block, v, positions, ctx.inv_freq), h)
        if pair:
            out[layer] = tuple(pair)
    return out
