"""One stage for both halves of a block: calibrate → score → keep set → slice → refit.

Each half of a decoder block is a depth-2 unit on the residual stream,

    attention:  h + W_O · heads(W_Q, W_K, W_V · RMSNorm(h))    units: query heads
    MLP:        h + W_D · silu(W_G x) ⊙ (W_U x), x = RMSNorm(h)   units: FFN channels

and is pruned by the same steps (``prune_half``), given the two calibration streams
(pruned stream h, dense stream h_dense — None before the first refit block):
  1. for ``refit="full"``, one pass over both streams: the Grams of the first maps
     (q,k,v | gate,up: one input) on h against the dense maps' outputs on h_dense → refit;
  2. if units go: statistics of the unit outputs on the pruned stream, score
     (``scores.SCORES``), rerank (attention: the similarity criterion), keep set (GQA
     aware for heads), bias compensation, slice; or, for a score that removes units
     itself (``Score.remove``; dap-obs: the OBS greedy, removal and optimal compensation
     of the kept rows in one), the second map's input Gram on the pruned stream → the
     score's hook → write back its weights → slice;
  3. one pass: Grams of the second map (o | down) on the kept units against the dense
     half's update, computed per chunk and added to h_dense in place → refit;
  4. advance the pruned stream in place (the model's ``half_residual`` hook).
The dense targets come from a clone of the block taken before any change (one block's
parameters). Every pass runs chunk by chunk of sequences through compiled per-chunk
functions (``nnx.jit``; blocks of equal widths share them), both streams are updated in
place (donated buffers), and the refits only keep Gram matrices (``recover``), so
memory is the two streams (2·S·T·D values), one chunk's activations and O(C²) per map.
``Half`` names what differs between the halves: modules, maps and statistics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.models.llama.sharding import replace_param
from prune_jax.pruning.calibrate import attention_stats, head_divergence, mlp_stats
from prune_jax.pruning.config import PruneConfig
from prune_jax.pruning.obs import UnitGram, add_gram, stacked_weights
from skmm_jax.common.gram import add_to
from prune_jax.pruning.recover import accumulate_grams, map_has_bias, refit_maps, refit_split, with_intercept
from prune_jax.pruning.report import HalfReport, LayerReport, Refit
from prune_jax.pruning.scores import Evidence, Score, UnitRemoval, prefer_marked, similar_heads
from prune_jax.pruning.slicing import head_keep_set, heads_of_groups, keep_top, slice_channels, slice_heads
from skmm_jax.common.streaming import chunk_bounds

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every stage shares: calibration positions, RoPE, chunking and the score.

    Attributes:
      config: the run's ``PruneConfig``.
      score: the method's registry entry.
      positions: [S, T] positions of the calibration sequences.
      inv_freq: RoPE inverse frequencies.
      chunk: sequences per forward step.
      key: the run's PRNG key (folded in per layer and half).
      given_scores: layer → (head scores, channel scores) computed up front from the
        dense model ("gradients" scores), else None.
      sensitivity: [L, 2, D] the dense model's loss sensitivity per residual direction
        after each half (``calibrate.residual_sensitivity``) when the score reads it
        (``Score.output_weight`` "sensitivity"), else None.
      allocation_sequences: how many of the first calibration sequences the allocation's
        dense pass and the sensitivity read (``Budget.allocation_samples``, rounded up to
        the devices of the data axis).
    """

    config: PruneConfig
    score: Score
    positions: Array
    inv_freq: Array
    chunk: int
    key: jax.Array
    given_scores: list[tuple[np.ndarray, np.ndarray]] | None = None
    sensitivity: np.ndarray | None = None
    allocation_sequences: int | None = None

    def bounds(self, num_sequences: int) -> list[tuple[int, int]]:
        return list(chunk_bounds(num_sequences, self.chunk))

    def inputs(self, half: "Half", block, h: Array):
        """(normalised input x [B, T, D], positions [B, T]) of the half, chunk by chunk of
        the stream h [S, T, D] (x is never materialised for the whole calibration set)."""
        return ((_normalised(half, block, h[s:e]), self.positions[s:e]) for s, e in self.bounds(h.shape[0]))


@dataclasses.dataclass(frozen=True)
class Half:
    """One half of a decoder block as a depth-2 unit (see module docstring).

    Attributes:
      index: 0 for attention, 1 for the MLP (position in a layer's cut and scores).
      module, norm: the block's module and the RMSNorm before it.
      first_kernels, first_biases: the maps reading the normalised input.
      first_outputs: (module, x) → their outputs (refit targets, concatenated).
      units: (module, x, positions, inv_freq) → [S, T, units, ...], the second map's input.
      output: (module, x, positions, inv_freq) → [S, T, D], the half's residual update.
      second_kernel, second_bias: the map whose input units are removed.
      calibrate: (module, chunks of (x, positions), ctx) → statistics of the units.
      unit_mean: statistics → E[unit output] [units, ...] (bias compensation).
      score: the registry entry's function for these units.
      keep_set: (module, scores, cut, head_mode) → (kept units, slice argument).
      slice: (module, kept, slice argument) → None, in place.
      rerank: (module, chunks of (x, positions), scores, ctx) → (scores, marked units or None).
      removal_units: (module, cut, head_mode) → (unit rows [U, g] of the flattened second
        map's input, unit groups [U], quota per group, removed [U] → (kept, slice
        argument)): the units a removing score decides over (``scores.UnitRemoval``).
    """

    index: int
    module: Callable[[Any], Any]
    norm: Callable[[Any], Any]
    first_kernels: tuple[str, ...]
    first_biases: tuple[str, ...]
    first_outputs: Callable[[Any, Array], tuple[Array, ...]]
    units: Callable[[Any, Array, Array, Array], Array]
    output: Callable[[Any, Array, Array, Array], Array]
    second_kernel: str
    second_bias: str
    calibrate: Callable[[Any, Iterable[tuple[Array, Array]], StageContext], Any]
    unit_mean: Callable[[Any], np.ndarray]
    score: Callable[[Score], Callable[[Any, Evidence], np.ndarray]]
    keep_set: Callable[[Any, np.ndarray, int, str], tuple[np.ndarray, Any]]
    slice: Callable[[Any, np.ndarray, Any], None]
    rerank: Callable[[Any, Iterable[tuple[Array, Array]], np.ndarray, StageContext], tuple[np.ndarray, tuple[int, ...] | None]]
    removal_units: Callable[[Any, int, str], tuple[np.ndarray, np.ndarray, np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, Any]]]]


# The per-chunk forwards, compiled once per (half, block widths, chunk shape): blocks of
# equal widths share the executables. ``half`` is static (its fields are module-level
# functions, so it hashes by identity of its steps).


@functools.partial(nnx.jit, static_argnums=(0,))
def _normalised(half: Half, block, h: Array) -> Array:
    return half.norm(block)(h)


@functools.partial(nnx.jit, static_argnums=(0,))
def _first_targets(half: Half, dense_block, h_dense: Array) -> Array:
    """The dense first maps' outputs [B, T, Σ] (q,k,v | gate,up, concatenated)."""
    module = half.module(dense_block)
    return jnp.concatenate([t.reshape(t.shape[:2] + (-1,)) for t in half.first_outputs(module, half.norm(dense_block)(h_dense))], -1)


@functools.partial(nnx.jit, static_argnums=(0,), donate_argnums=(2,))
def _dense_update_rows(half: Half, dense_block, h_dense: Array, start: Array, positions: Array, inv_freq: Array):
    """Rows [start, start + B) of the dense stream (B = len(positions)) advanced through the
    dense half, in place (h_dense is donated), and the half's update on them [B, T, D]
    (the second map's refit target)."""
    rows = jax.lax.dynamic_slice_in_dim(h_dense, start, positions.shape[0], axis=0)
    out = half.output(half.module(dense_block), half.norm(dense_block)(rows), positions, inv_freq)
    return jax.lax.dynamic_update_slice_in_dim(h_dense, rows + out, start, axis=0), out


@functools.partial(nnx.jit, static_argnums=(0,), donate_argnums=(2,))
def _advance_rows(half: Half, block, h: Array, start: Array, positions: Array, inv_freq: Array) -> Array:
    """Rows [start, start + B) of the stream h advanced through the half, in place (donated)."""
    rows = jax.lax.dynamic_slice_in_dim(h, start, positions.shape[0], axis=0)
    return jax.lax.dynamic_update_slice_in_dim(h, block.half_residual(half.index, rows, positions, inv_freq).astype(h.dtype), start, axis=0)


@functools.partial(nnx.jit, static_argnums=(0,))
def _flat_units(half: Half, block, h: Array, positions: Array, inv_freq: Array) -> Array:
    """[B, T, C]: the second map's input (heads flattened to N·H columns)."""
    units = half.units(half.module(block), half.norm(block)(h), positions, inv_freq)
    return units.reshape(units.shape[:2] + (-1,))


@functools.partial(nnx.jit, static_argnums=(0,))
def _heads(half: Half, attn, x: Array, positions: Array, inv_freq: Array) -> Array:
    return attn.heads(x, positions, inv_freq)


def advance(half: Half, block, h: Array, ctx: StageContext) -> Array:
    """The stream h [S, T, D] after the half (the model's ``half_residual`` hook), chunk by chunk,
    in place: ``h``'s buffer is donated and becomes the result (the caller must hold no
    other reference to it), so advancing never holds two streams."""
    for s, e in ctx.bounds(h.shape[0]):
        h = _advance_rows(half, block, h, jnp.asarray(s), ctx.positions[s:e], ctx.inv_freq)
    return h


def _similar_heads_first(attn, inputs, scores: np.ndarray, ctx: StageContext) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Head criterion "similarity" (paper §3.2): heads marked redundant go first."""
    if ctx.config.heads.criterion != "similarity":
        return scores, None
    probs = (attn.probabilities(x, positions, ctx.inv_freq) for x, positions in inputs)
    marked = similar_heads(head_divergence(probs), scores, ctx.config.heads.similarity_tau)
    return prefer_marked(scores, marked), tuple(np.flatnonzero(marked).tolist())


def _head_removal_units(attn, cut: int, head_mode: str):
    """Per-group: units = query heads (head_dim rows of o each), every KV group loses
    ``cut``; kv-groups: units = whole KV groups (their query heads' rows), ``cut`` go."""
    heads, head_dim = attn.o_kernel[...].shape[:2]
    kv_heads = attn.k_kernel[...].shape[1]
    group = heads // kv_heads
    rows = np.arange(heads * head_dim).reshape(heads, head_dim)  # head n = k·G + g reads KV group k
    if head_mode == "per-group":
        return rows, np.arange(heads) // group, np.full(kv_heads, cut), lambda removed: (np.flatnonzero(~removed), None)

    def kept_groups(removed):
        keep_groups = np.flatnonzero(~removed)
        return heads_of_groups(keep_groups, group), keep_groups

    return rows.reshape(kv_heads, group * head_dim), np.zeros(kv_heads, int), np.asarray([cut]), kept_groups


def _channel_removal_units(mlp, cut: int, head_mode: str):
    channels = mlp.down_kernel[...].shape[0]
    return np.arange(channels)[:, None], np.zeros(channels, int), np.asarray([cut]), lambda removed: (np.flatnonzero(~removed), None)


def _attention_calibrate(attn, inputs, ctx: StageContext):
    return attention_stats(_heads(ATTENTION, attn, x, positions, ctx.inv_freq) for x, positions in inputs)


ATTENTION = Half(
    index=0,
    module=lambda block: block.attn,
    norm=lambda block: block.input_norm,
    first_kernels=("q_kernel", "k_kernel", "v_kernel"),
    first_biases=("q_bias", "k_bias", "v_bias"),
    first_outputs=lambda attn, x: attn.projections(x),
    units=lambda attn, x, positions, inv_freq: attn.heads(x, positions, inv_freq),  # [S, T, N, H]
    output=lambda attn, x, positions, inv_freq: attn(x, positions, inv_freq),
    second_kernel="o_kernel",
    second_bias="o_bias",
    calibrate=_attention_calibrate,
    unit_mean=lambda stats: stats.z_mean,  # [N, H]
    score=lambda score: score.heads,
    keep_set=lambda attn, scores, cut, head_mode: head_keep_set(scores, attn.k_kernel[...].shape[1], cut, head_mode),
    slice=slice_heads,
    rerank=_similar_heads_first,
    removal_units=_head_removal_units,
)

MLP = Half(
    index=1,
    module=lambda block: block.mlp,
    norm=lambda block: block.post_attn_norm,
    first_kernels=("gate_kernel", "up_kernel"),
    first_biases=("gate_bias", "up_bias"),
    first_outputs=lambda mlp, x: mlp.pre_activations(x),
    units=lambda mlp, x, positions, inv_freq: mlp.intermediate(x),  # [S, T, F]
    output=lambda mlp, x, positions, inv_freq: mlp(x),
    second_kernel="down_kernel",
    second_bias="down_bias",
    calibrate=lambda mlp, inputs, ctx: mlp_stats(mlp, (x for x, _ in inputs)),
    unit_mean=lambda stats: stats.h_mean,  # [F]
    score=lambda score: score.channels,
    keep_set=lambda mlp, scores, cut, head_mode: (keep_top(scores, len(scores) - cut), None),
    slice=lambda mlp, keep, _: slice_channels(mlp, keep),
    rerank=lambda mlp, inputs, scores, ctx: (scores, None),
    removal_units=_channel_removal_units,
)

HALVES = (ATTENTION, MLP)


def unit_gram(half: Half, block, layer: int, h: Array, ctx: StageContext) -> UnitGram:
    """The mean of x̂x̂ᵀ over the calibration tokens of the second map's input x̂ (with the
    intercept column when the map has a bias) on the stream h, chunk by chunk; with the
    half's output sensitivity when the context has one."""
    intercept = map_has_bias(half.module(block), (half.second_bias,))
    by_stream = ctx.score.output_weight(ctx.config.options) == "stream"
    gram = energy = None
    for s, e in ctx.bounds(h.shape[0]):
        units = _flat_units(half, block, h[s:e], ctx.positions[s:e], ctx.inv_freq)
        units = with_intercept(units) if intercept else units
        gram = add_gram(gram, units)
        if by_stream:  # Σ h_d² chunk by chunk: no float32 copy of the whole stream
            energy = add_to(energy, jnp.sum(jnp.square(h[s:e].astype(jnp.float32)), axis=(0, 1)))
    tokens = h.shape[0] * h.shape[1]
    if by_stream:
        weight = stream_weight(energy / tokens)
    else:
        weight = None if ctx.sensitivity is None else jnp.asarray(ctx.sensitivity[layer, half.index])
    return UnitGram(gram / tokens, intercept, weight)


def stream_weight(energy: Array) -> jax.Array:
    """[D] 1 / E[h_d²] from the residual stream's mean energy per direction E[h_d²] [D]
    (dap-obs's "stream" metric): a map's output error δ weighted by it is
    Σ_d E[δ_d²] / E[h_d²], each direction's error relative to the signal the stream
    carries there — scale-free, so comparable across blocks, and a massive-activation
    direction (E[h_d²] thousands of times the others) counts for its share of the signal,
    not for its energy. Floored at 10⁻⁶ of the mean energy (a direction the stream never
    uses)."""
    return 1.0 / jnp.maximum(energy, 1e-6 * jnp.mean(energy))


def unit_scores(half: Half, block, layer: int, h: Array | None, ctx: StageContext) -> tuple[np.ndarray, Any]:
    """(scores of the half's units, their statistics or None) on the stream h [S, T, D]
    (the half's input; None when the score needs no statistics)."""
    module = half.module(block)
    if h is None:
        stats = None
    elif ctx.score.needs == "gram":
        stats = unit_gram(half, block, layer, h, ctx)
    else:
        stats = half.calibrate(module, ctx.inputs(half, block, h), ctx)
    if ctx.given_scores is not None:  # "gradients" scores: from the dense model, up front
        return ctx.given_scores[layer][half.index], stats
    return half.score(ctx.score)(module, _evidence(half, layer, stats, ctx)), stats


def _evidence(half: Half, layer: int, stats, ctx: StageContext) -> Evidence:
    """What the score reads at this layer and half: its PRNG key (folded in per layer
    and half), the method's options and the statistics."""
    return Evidence(key=jax.random.fold_in(ctx.key, 2 * layer + half.index), options=ctx.config.options, stats=stats)


def _needs_stats(ctx: StageContext) -> bool:
    return ctx.score.needs in ("statistics", "gram") or ctx.config.compensate


def _removed_by_score(half: Half, block, layer: int, h: Array, cut: int, ctx: StageContext) -> tuple[int, ...]:
    """Removes ``cut`` units (per KV group or whole groups for heads) by the score's own
    ``remove`` hook on the second map's input Gram: it returns the map's compensated
    weights (the bias as the intercept row, when there is one), which replace the kernel
    and bias before the removed units are sliced away; returns the kept units."""
    module = half.module(block)
    stats = unit_gram(half, block, layer, h, ctx)
    kernel = getattr(module, half.second_kernel)[...]
    bias = getattr(module, half.second_bias)[...] if stats.intercept else None
    rows, groups, quota, kept_of = half.removal_units(module, cut, ctx.config.budget.head_mode)
    weights, removed = ctx.score.remove(UnitRemoval(stacked_weights(kernel, bias), rows, groups, quota), _evidence(half, layer, stats, ctx))
    inputs = int(np.prod(kernel.shape[:-1]))
    replace_param(module, half.second_kernel, weights[:inputs].reshape(kernel.shape).astype(kernel.dtype))
    if bias is not None:
        replace_param(module, half.second_bias, weights[inputs].astype(bias.dtype))
    keep, slice_arg = kept_of(np.asarray(removed))
    half.slice(module, keep, slice_arg)
    return tuple(int(k) for k in keep)


def _remove_units(half: Half, block, layer: int, h: Array, cut: int, ctx: StageContext) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Scores the half's units on the pruned stream h, removes ``cut`` of them (per group or
    KV groups for heads), compensates biases if asked; returns (kept, marked)."""
    module = half.module(block)
    scores, stats = unit_scores(half, block, layer, h if _needs_stats(ctx) else None, ctx)
    scores, marked = half.rerank(module, ctx.inputs(half, block, h), scores, ctx)
    keep, slice_arg = half.keep_set(module, scores, cut, ctx.config.budget.head_mode)
    if ctx.config.compensate:  # b += Σ_{removed units c} E[u_c] W[c]
        dropped = np.setdiff1d(np.arange(len(scores)), keep)
        mean = jnp.asarray(half.unit_mean(stats)[dropped], jnp.float32)  # [r, ...]
        rows = getattr(module, half.second_kernel)[...][jnp.asarray(dropped)].astype(jnp.float32)  # [r, ..., D]
        bias = getattr(module, half.second_bias)[...]
        axes = "NH"[: mean.ndim]  # heads: [N, H] means, [N, H, D] rows; channels: [F], [F, D]
        shift = jnp.einsum(f"{axes},{axes}D->D", mean, rows)  # [D]
        replace_param(module, half.second_bias, bias.astype(jnp.float32) + shift)
    half.slice(module, keep, slice_arg)
    return tuple(int(k) for k in keep), marked


def _refit_first_maps(half: Half, block, dense_block, h: Array, h_dense: Array, ctx: StageContext) -> Refit:
    """One pass over both streams: the refit of the first maps (q,k,v | gate,up: one
    input, one Gram) on the pruned stream to the dense maps' outputs."""
    module, tokens_per_sequence = half.module(block), h.shape[1]
    split = refit_split(h.shape[0], tokens_per_sequence, ctx.config.recovery.folds)  # folds of whole sequences (or the last 10 %)
    intercept = map_has_bias(module, half.first_biases)
    grams = None
    for s, e in ctx.bounds(h.shape[0]):
        targets = _first_targets(half, dense_block, h_dense[s:e])
        x = _normalised(half, block, h[s:e])
        grams = accumulate_grams(grams, with_intercept(x) if intercept else x, targets, s * tokens_per_sequence, split)
    return Refit(**refit_maps(module, half.first_kernels, half.first_biases, grams, ctx.config.recovery.ridge_grid,
                              toward_current=ctx.config.recovery.toward_current))


def _refit_second_map(half: Half, block, dense_block, h: Array, h_dense: Array, ctx: StageContext) -> tuple[Array, Refit]:
    """One pass over both streams: the refit of the second map (o | down) on the kept
    units to the dense half's update, which is computed chunk by chunk from the dense
    block and added to the dense stream in place (never stored for the whole set);
    returns (the advanced dense stream, the refit)."""
    module, tokens_per_sequence = half.module(block), h.shape[1]
    split = refit_split(h.shape[0], tokens_per_sequence, ctx.config.recovery.folds)  # folds of whole sequences (or the last 10 %)
    intercept = map_has_bias(module, (half.second_bias,))
    grams = None
    for s, e in ctx.bounds(h.shape[0]):
        units = _flat_units(half, block, h[s:e], ctx.positions[s:e], ctx.inv_freq)
        h_dense, target = _dense_update_rows(half, dense_block, h_dense, jnp.asarray(s), ctx.positions[s:e], ctx.inv_freq)
        grams = accumulate_grams(grams, with_intercept(units) if intercept else units, target, s * tokens_per_sequence, split)
    return h_dense, Refit(**refit_maps(module, (half.second_kernel,), (half.second_bias,), grams, ctx.config.recovery.ridge_grid,
                              toward_current=ctx.config.recovery.toward_current))


def prune_half(half: Half, block, dense_block, layer: int, h: Array, h_dense: Array | None, cut: int,
               ctx: StageContext) -> tuple[Array, Array | None, HalfReport]:
    """Prunes ``cut`` units of one half of ``block`` (heads per group or KV groups; FFN
    channels) and refits it to ``dense_block`` (the block before any change) when
    ``h_dense`` is given; returns the advanced (pruned, dense) streams and what was done.
    Both streams are advanced in place (their buffers are donated) and the refits stream
    Gram matrices chunk by chunk (``recover``), so besides the two streams only per-chunk
    activations and O(C²) per map are held."""
    first = second = kept = marked = None
    if h_dense is not None and ctx.config.recovery.refit == "full":
        first = _refit_first_maps(half, block, dense_block, h, h_dense, ctx)
    if cut and ctx.score.remove is not None:
        kept = _removed_by_score(half, block, layer, h, cut, ctx)
    elif cut:
        kept, marked = _remove_units(half, block, layer, h, cut, ctx)
    if h_dense is not None:
        h_dense, second = _refit_second_map(half, block, dense_block, h, h_dense, ctx)
    h = advance(half, block, h, ctx)
    return h, h_dense, HalfReport(kept=kept, first_refit=first, second_refit=second, similar_marked=marked)


def prune_block(block, layer: int, h: Array, h_dense: Array | None, cuts: tuple[int, int], ctx: StageContext) -> tuple[Array, Array | None, LayerReport]:
    """Both halves of one block, attention first (``prune_half``). ``h`` and ``h_dense``
    are donated (advanced in place). With recovery, the refit targets come from a clone
    of the block taken before any change: its arrays are shared until the block's own
    are replaced, so it costs one block's parameters, not a stored dense update."""
    dense_block = nnx.clone(block) if h_dense is not None else None
    h, h_dense, attention = prune_half(ATTENTION, block, dense_block, layer, h, h_dense, cuts[0], ctx)
    h, h_dense, mlp = prune_half(MLP, block, dense_block, layer, h, h_dense, cuts[1], ctx)
    return h, h_dense, LayerReport(layer, attention, mlp)


def dense_unit_scores(model, h: Array, layers: range, ctx: StageContext) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Unit scores of every block in ``layers`` on the dense model's own stream, starting
    from the embedded calibration tokens ``h`` (first pass of the adaptive allocation)."""
    if ctx.given_scores is not None:
        return {layer: ctx.given_scores[layer] for layer in layers}
    needs_stream = ctx.score.needs in ("statistics", "gram")
    h = jnp.copy(h) if needs_stream else h  # advanced in place below: the caller keeps its own
    out = {}
    for layer, block in enumerate(model.layers[: layers.stop]):
        pair = []
        for half in HALVES:
            if layer in layers:
                pair.append(unit_scores(half, block, layer, h if needs_stream else None, ctx)[0])
            if needs_stream:
                h = advance(half, block, h, ctx)
        if pair:
            out[layer] = tuple(pair)
    return out
