"""Structured pruning of a LLaMA block by block: calibrate → score → slice → recover.

Two calibration streams move through the model together, one block at a time (only
one block's activations for the calibration set are held):
  - dense stream: the original blocks on the original inputs — the targets Y;
  - pruned stream: the already pruned (and refit) blocks — the inputs X̂ the pruned
    model really sees, from which the unit statistics are taken.
Within a block, with recovery (``Recovery(refit="full")``, the paper's order):
  refit q,k,v (one shared Gram) → score and remove query heads (or whole KV groups)
  → refit o → refit gate,up → score and remove FFN channels → refit down
  → run the pruned block (its output is the next block's pruned-stream input).
Each refit is ridge least squares of the pruned-stream inputs onto the dense
outputs of the same map (``recover``: streamed Grams, one ridge path), so the error a removal causes is
absorbed by the next map. The paper lists "refit o" before "prune heads"; we refit o
after the removal, on the kept heads — it then absorbs the removal itself (its
error is never larger, since the unrefit map competes). ``refit="second"`` refits o
and down only (cheaper). Recovery runs from the first pruned block to the last
block: every later block sees a changed input stream.

Allocation (``config.Budget``; the modes are the registry ``allocation.ALLOCATIONS``):
one ratio for every block of the layer range ("uniform", the smallest that meets the
parameter budget), fixed per-module ratios, or FLAP's adaptive structure ("adaptive"):
every unit's score standardised within its layer and module, one global threshold over
all units weighted by their parameter cost (scores from a first pass over the dense
model); "global" thresholds raw scores on one scale across layers (dap-obs).

Kernels are physically sliced: the result is a smaller model whose modules read their
new sizes from their kernels; ``model.config`` is updated with the per-layer widths
so the model exports (stock-transformers-loadable when widths are uniform).

Where each step lives: ``config`` (the ``PruneConfig`` groups), ``allocation`` (budget → per-layer cuts), ``stage`` (the one
calibrate → score → keep → slice → refit step both halves of a block share),
``scores`` (the score registry), ``calibrate`` (statistics, gradients), ``slicing``
(keep sets, kernels), ``recover`` (ridge refits), ``report`` (the typed report).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from prune_jax.models.llama.modeling import Llama, num_parameters
from prune_jax.models.llama.sharding import auto_mesh
from prune_jax.pruning import resume
from prune_jax.pruning.allocation import allocate, default_layer_range, prunable_parameters
from prune_jax.pruning.calibrate import residual_sensitivity
from prune_jax.pruning.config import PruneConfig
from prune_jax.pruning.recover import check_folds
from prune_jax.pruning.report import LayerReport, PruneReport
from prune_jax.pruning.scores import OUTPUT_WEIGHTS, SCORES, gradient_scores
from prune_jax.pruning.slicing import add_zero_biases, record_widths
from prune_jax.pruning.stage import StageContext, dense_unit_scores, prune_block
from skmm_jax.common.streaming import Progress


def _check_calibration(model: Llama, calibration) -> np.ndarray:
    calibration = np.asarray(calibration)
    if calibration.ndim != 2 or calibration.shape[0] < 1 or calibration.shape[1] < 2:
        raise ValueError(f"calibration must be [S >= 1, T >= 2] token sequences, got shape {calibration.shape}")
    if calibration.min() < 0 or calibration.max() >= model.config.vocab_size:
        raise ValueError(f"calibration token ids must lie in [0, {model.config.vocab_size})")
    return calibration


def _layer_range(model: Llama, config: PruneConfig) -> range:
    num_layers = model.config.num_layers
    start, stop = config.budget.layer_range or default_layer_range(num_layers)
    if not 0 <= start < stop <= num_layers:
        raise ValueError(f"layer_range must satisfy 0 <= start < stop <= {num_layers}, got ({start}, {stop})")
    return range(start, stop)


def _allocation_sequences(config: PruneConfig, num_sequences: int, mesh, axis: str) -> int:
    """How many of the first calibration sequences the allocation's dense pass reads
    (``Budget.allocation_samples``, rounded up to a multiple of the devices on ``axis``)."""
    wanted = config.allocation_samples
    devices = mesh.shape[axis] if mesh is not None and axis in mesh.shape else 1
    return num_sequences if wanted is None else min(num_sequences, -(-wanted // devices) * devices)


def _context(model: Llama, calibration: np.ndarray, config: PruneConfig, mesh, axis: str) -> tuple[jax.Array, StageContext]:
    """(tokens [S, T] on the device(s), the stages' shared context)."""
    tokens = jnp.asarray(calibration, jnp.int32)
    positions = model.default_positions(tokens)
    chunk = config.batch_size
    if mesh is not None and axis in mesh.shape:
        from jax.sharding import NamedSharding, PartitionSpec

        mesh = auto_mesh(mesh)  # jax.make_mesh's explicit axes would need a sharding stated at every op
        devices = mesh.shape[axis]
        if tokens.shape[0] % devices:
            raise ValueError(f"{tokens.shape[0]} calibration sequences do not divide over {devices} devices on mesh axis {axis!r}")
        sharding = NamedSharding(mesh, PartitionSpec(axis))
        tokens, positions = jax.device_put(tokens, sharding), jax.device_put(positions, sharding)
        chunk = max(chunk, tokens.shape[0])  # one step over all sequences: every device works on its shard
    key, score = jax.random.key(config.seed), SCORES[config.method]
    given = gradient_scores(model, tokens, config.method, batch_size=chunk, key=key, options=config.options) if score.needs == "gradients" else None
    scored = _allocation_sequences(config, tokens.shape[0], mesh, axis)
    weighting = score.output_weight(config.options)
    if weighting not in OUTPUT_WEIGHTS:
        raise ValueError(f"method {config.method!r}: its output_weight must give one of {OUTPUT_WEIGHTS}, got {weighting!r}")
    sensitivity = residual_sensitivity(model, tokens[:scored], batch_size=chunk) if weighting == "sensitivity" else None
    return tokens, StageContext(config=config, score=score, positions=positions, inv_freq=model.rope_frequencies(), chunk=chunk,
                                key=key, given_scores=given, sensitivity=sensitivity, allocation_sequences=scored)


def prune(
    model: Llama,
    calibration: np.ndarray,
    config: PruneConfig = PruneConfig(),
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
    progress: Progress | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> tuple[Llama, PruneReport]:
    """Prunes ``model`` in place (its kernels are replaced by sliced ones) and returns it.

    Args:
      model: our LLaMA (float32 recommended for calibration).
      calibration: [S, T] int token sequences (e.g. ``prune_jax.data.calibration_batches``).
      config: see ``PruneConfig``.
      mesh: optional device mesh (``jax.sharding.Mesh`` or ``jax.make_mesh``);
        calibration sequences are sharded over ``axis`` when the mesh has it (data
        parallel: statistics and Gram matrices are sums over tokens, which XLA
        all-reduces; S must divide by the axis size). The parameters stay where they
        are: load or ``sharding.shard_model`` them onto the mesh for FSDP / tensor
        parallelism (sliced and refit parameters keep their placement).
      axis: mesh axis name for the sequences.
      progress: ``progress(blocks_done, num_blocks)``.
      checkpoint: a directory for per-block checkpoints (``resume``): after each pruned
        block its parameters, both streams and the reports so far; when it already holds
        a checkpoint of this run (same config, calibration and dense model), the
        finished blocks are restored and pruning continues after them, with the result
        of an uninterrupted run. Empty or absent: a fresh run. In a multi-process run
        every process writes the stream rows its devices hold, process 0 the block and
        the commit; resume with as many processes (``resume``).

    Returns:
      (model, report); ``report.to_json()`` is the ``pruning.json`` record.
    """
    calibration = _check_calibration(model, calibration)
    if config.recovery.enabled:  # before any block: the refits fold whole calibration sequences
        check_folds(calibration.shape[0], config.recovery.folds)
    start_time = time.perf_counter()
    layers = _layer_range(model, config)
    resumed, stamp, run_settings = None, None, None
    if checkpoint is not None:
        checkpoint = resume.open_store(checkpoint)
        stamp, run_settings = resume.fingerprint(config, calibration, model.config), resume.settings(config, calibration, model.config)
        resumed = resume.load_progress(checkpoint, stamp, run_settings)
    if config.compensate:
        add_zero_biases(model, attention=True, mlp=True)
    params_before, prunable_before = num_parameters(model), prunable_parameters(model)
    tokens, ctx = _context(model, calibration, config, mesh, axis)
    # Several processes save and restore their own rows of the streams: sequences over the data axis, as the tokens.
    rows = tokens.sharding if jax.process_count() > 1 else None
    h = model.embed_tokens(tokens)  # [S, T, D] the pruned stream, in the model's dtype (Grams and statistics accumulate in float32)
    scored = ctx.allocation_sequences  # the allocation's pass reads the first `scored` sequences
    allocation = allocate(model, layers, config.budget, config.allocation_mode,
                          lambda: dense_unit_scores(model, h[:scored], layers, dataclasses.replace(ctx, positions=ctx.positions[:scored])))

    h_dense, layer_reports, first = None, [], 0  # the dense stream, from the first refit block on
    if resumed is not None:  # blocks [0, first) are done: their parameters, the streams into `first`
        first, layer_reports = resumed.next_layer, list(resumed.reports)
        for layer in range(layers.start, first):
            resume.restore_block(resumed, layer, model.layers[layer])
        h, h_dense = resume.restore_streams(resumed, h, rows)  # each process its own rows, placed like h
        if progress is not None:
            progress(first, len(model.layers))
    for layer, block in enumerate(model.layers):
        if layer < first:
            continue
        if config.recovery.enabled and layer == layers.start:
            h_dense = jnp.copy(h)  # until here both streams ran the same unchanged blocks (a copy: each is advanced in place)
        if layer < layers.stop or h_dense is not None:  # else no later block reads the streams
            h, h_dense, record = prune_block(block, layer, h, h_dense, allocation.cuts.get(layer, (0, 0)), ctx)
            layer_reports.append(record)
            if checkpoint is not None:
                # Blocks before the range are unchanged (the dense model restores them).
                resume.save_block(checkpoint, stamp, layer, block if layer >= layers.start else None, h, h_dense, layer_reports,
                                  run_settings, rows)
        else:
            layer_reports.append(LayerReport(layer))
        if progress is not None:
            progress(layer + 1, len(model.layers))

    record_widths(model)
    return model, PruneReport(
        config=config, layer_range=(layers.start, layers.stop), attention_ratio=allocation.attention_ratio,
        ffn_ratio=allocation.ffn_ratio, layer_cuts=allocation.cuts, parameters_before=params_before,
        parameters_after=num_parameters(model), prunable_before=prunable_before, prunable_after=prunable_parameters(model),
        layer_heads=model.config.layer_heads, layer_intermediate=model.config.layer_intermediate,
        calibration_shape=tuple(calibration.shape), seconds=time.perf_counter() - start_time, layers=tuple(layer_reports))
