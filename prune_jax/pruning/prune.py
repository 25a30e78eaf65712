"""Structured pruning of a LLaMA block by block: calibrate → score → slice → recover.

Two calibration streams move through the model together, one block at a time (only
one block's activations for the calibration set are held):
  - dense stream: the original blocks on the original inputs — the targets Y;
  - pruned stream: the already pruned (and refit) blocks — the inputs X̂ the pruned
    model really sees, from which the unit statistics are taken.
Within a block, with recovery (``refit="full"``, the paper's order):
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

Allocation: one ratio for every block of the layer range (``allocation="uniform"``,
the smallest that meets the parameter budget), fixed per-module ratios, or FLAP's
adaptive structure (``allocation="adaptive"``): every unit's score standardised
within its layer and module, one global threshold over all units weighted by their
parameter cost (scores from a first pass over the dense model).

Kernels are physically sliced: the result is a smaller model whose modules read their
new sizes from their kernels; ``model.config`` is updated with the per-layer widths
so the model exports (stock-transformers-loadable when widths are uniform).

Where each step lives: ``allocation`` (budget → per-layer cuts), ``stage`` (the one
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
from prune_jax.pruning.allocation import HEAD_MODES, allocate, default_layer_range, prunable_parameters
from prune_jax.pruning.obs import DAMP
from prune_jax.pruning.recover import RIDGE_GRID
from prune_jax.pruning.report import LayerReport, PruneReport
from prune_jax.pruning.scores import SCORES, gradient_scores
from prune_jax.pruning.slicing import add_zero_biases, record_widths
from prune_jax.pruning.stage import StageContext, dense_unit_scores, prune_block
from skmm_jax.common.streaming import Progress

HEAD_CRITERIA = ("score", "similarity")
ALLOCATIONS = ("uniform", "adaptive", "global")
REFITS = ("full", "second")
RIDGE_TOWARD = ("zero", "current")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    Attributes:
      method: unit score, a key of ``scores.SCORES``: "dap-obs" (default; the greedy
        output approximation with optimal compensation, best in ``benchmarks/prune_llama``),
        "dap" (the paper's distribution-aware scores), the baselines.
      sparsity: target fraction of the prunable parameters (attention + MLP weights
        of all blocks) to remove, in (0, 1); met by one per-layer ratio r over the
        layer range, the smallest r that reaches it (heads are coarse units, so the
        exact fraction is reported).
      attention_ratio, ffn_ratio: fixed per-layer ratios instead of the budget
        (0 disables that module).
      layer_range: blocks [start, stop) to prune; default the paper's [4, L − 2)
        (first and last blocks kept), clipped to the model.
      head_mode: "per-group" (the same number of query heads leaves every KV group;
        k/v untouched) or "kv-groups" (whole KV groups with their query heads).
      head_criterion: "score" (the method's head score) or "similarity" (paper §3.2:
        heads whose attention maps are within Jensen–Shannon divergence τ of another
        head go first, the score fills the rest of the budget).
      similarity_tau: τ for the similarity criterion (paper: 0.2, in nats).
      allocation: None (the method's own: ``Score.allocation``, "global" for dap-obs,
        "uniform" otherwise), "uniform" (one ratio over the layer range), "adaptive" (FLAP:
        per-layer standardised scores, one global threshold meeting the budget;
        non-uniform widths) or "global" (raw scores per parameter freed, one threshold: for
        scores on one scale across layers, dap-obs's relative output errors). Ignored when
        fixed module ratios are given.
      norm: "l2" or "l1" for the magnitude score.
      recover: layer-wise recovery by ridge least squares to the dense outputs.
      refit: "full" (q,k,v, o, gate,up, down — the paper's order) or "second" (o and
        down only).
      bias_compensation: add W[:, pruned] · mean(x_pruned) to the output bias (FLAP);
        default: the score's ``compensates_biases`` (on for "flap" only). Adds zero biases where the model has none; with
        recovery, every bias is then refit jointly with its kernel (an intercept).
      ridge_grid: λ candidates for recovery.
      ridge_toward: what the ridge shrinks the refit toward: "current" (default: the
        weights before the refit, so directions the calibration set does not excite keep
        them; ``recover.ridge_path``) or "zero" (classic ridge: erases those directions,
        which made recovery hurt end to end — docs/pruning.md, "Why recovery used to hurt").
      max_block_removal: for "adaptive" / "global": the largest fraction of a block's FFN
        channels removed (None: 0.9 adaptive, 0.5 global — ``allocation.GLOBAL_MAX_REMOVED``).
      damp: relative dampening of the Gram for "dap-obs" (``obs``): H + damp·mean(diag H)·I.
      batch_size: calibration sequences per forward step.
      seed: for "random" and nothing else.
    """

    method: str = "dap-obs"
    sparsity: float = 0.2
    attention_ratio: float | None = None
    ffn_ratio: float | None = None
    layer_range: tuple[int, int] | None = None
    head_mode: str = "per-group"
    head_criterion: str = "score"
    similarity_tau: float = 0.2
    allocation: str | None = None
    norm: str = "l2"
    recover: bool = False
    refit: str = "full"
    bias_compensation: bool | None = None
    ridge_grid: tuple[float, ...] = RIDGE_GRID
    ridge_toward: str = "current"
    max_block_removal: float | None = None
    damp: float = DAMP
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.method not in SCORES:  # the registry, so an entry registered at run time is valid too
            raise ValueError(f"method must be one of {tuple(SCORES)}, got {self.method!r}")
        if not (isinstance(self.sparsity, (int, float)) and 0.0 < self.sparsity < 1.0):
            raise ValueError(f"sparsity must lie in (0, 1), got {self.sparsity!r}")
        for name in ("attention_ratio", "ffn_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
        if self.head_mode not in HEAD_MODES:
            raise ValueError(f"head_mode must be one of {HEAD_MODES}, got {self.head_mode!r}")
        for name, allowed in (("head_criterion", HEAD_CRITERIA), ("allocation", ALLOCATIONS + (None,)), ("refit", REFITS),
                              ("ridge_toward", RIDGE_TOWARD)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.similarity_tau > 0:
            raise ValueError(f"similarity_tau must be > 0, got {self.similarity_tau!r}")
        if self.norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {self.norm!r}")
        if self.max_block_removal is not None and not 0.0 < self.max_block_removal < 1.0:
            raise ValueError(f"max_block_removal must lie in (0, 1), got {self.max_block_removal!r}")
        if not self.damp > 0:
            raise ValueError(f"damp must be > 0, got {self.damp!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def allocation_mode(self) -> str:
        """The allocation used: ``allocation``, or the method's own when it is None."""
        return SCORES[self.method].allocation if self.allocation is None else self.allocation

    @property
    def compensate(self) -> bool:
        return SCORES[self.method].compensates_biases if self.bias_compensation is None else self.bias_compensation


def _check_calibration(model: Llama, calibration) -> np.ndarray:
    calibration = np.asarray(calibration)
    if calibration.ndim != 2 or calibration.shape[0] < 1 or calibration.shape[1] < 2:
        raise ValueError(f"calibration must be [S >= 1, T >= 2] token sequences, got shape {calibration.shape}")
    if calibration.min() < 0 or calibration.max() >= model.config.vocab_size:
        raise ValueError(f"calibration token ids must lie in [0, {model.config.vocab_size})")
    return calibration


def _layer_range(model: Llama, config: PruneConfig) -> range:
    num_layers = model.config.num_layers
    start, stop = config.layer_range or default_layer_range(num_layers)
    if not 0 <= start < stop <= num_layers:
        raise ValueError(f"layer_range must satisfy 0 <= start < stop <= {num_layers}, got ({start}, {stop})")
    return range(start, stop)


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
    given = gradient_scores(model, tokens, config.method, batch_size=chunk, key=key, norm=config.norm) if score.needs == "gradients" else None
    return tokens, StageContext(config=config, score=score, positions=positions, inv_freq=model.rope_frequencies(), chunk=chunk,
                                key=key, given_scores=given)


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
        of an uninterrupted run. Empty or absent: a fresh run. Single-process only.

    Returns:
      (model, report); ``report.to_json()`` is the ``pruning.json`` record.
    """
    calibration = _check_calibration(model, calibration)
    start_time = time.perf_counter()
    layers = _layer_range(model, config)
    resumed, stamp, run_settings = None, None, None
    if checkpoint is not None:
        if jax.process_count() > 1:
            raise ValueError("per-block checkpoints are single-process for now (the streams are gathered to one host)")
        store = resume.checkpoint_store(checkpoint)
        store.check(flag="checkpoint")
        store.open()
        checkpoint = store.path
        stamp, run_settings = resume.fingerprint(config, calibration, model.config), resume.settings(config, calibration, model.config)
        resumed = resume.load_progress(checkpoint, stamp, run_settings)
    if config.compensate:
        add_zero_biases(model, attention=True, mlp=True)
    params_before, prunable_before = num_parameters(model), prunable_parameters(model)
    tokens, ctx = _context(model, calibration, config, mesh, axis)
    h = model.embed_tokens(tokens)  # [S, T, D] the pruned stream, in the model's dtype (Grams and statistics accumulate in float32)
    allocation = allocate(model, layers, config, lambda: dense_unit_scores(model, h, layers, ctx))

    h_dense, layer_reports, first = None, [], 0  # the dense stream, from the first refit block on
    if resumed is not None:  # blocks [0, first) are done: their parameters, the streams into `first`
        first, layer_reports = resumed.next_layer, list(resumed.reports)
        for layer in range(layers.start, first):
            resume.restore_block(resumed, layer, model.layers[layer])
        h = jax.device_put(resumed.h, h.sharding)
        h_dense = None if resumed.h_dense is None else jax.device_put(resumed.h_dense, h.sharding)
        if progress is not None:
            progress(first, len(model.layers))
    for layer, block in enumerate(model.layers):
        if layer < first:
            continue
        if config.recover and layer == layers.start:
            h_dense = jnp.copy(h)  # until here both streams ran the same unchanged blocks (a copy: each is advanced in place)
        if layer < layers.stop or h_dense is not None:  # else no later block reads the streams
            h, h_dense, record = prune_block(block, layer, h, h_dense, allocation.cuts.get(layer, (0, 0)), ctx)
            layer_reports.append(record)
            if checkpoint is not None:
                # Blocks before the range are unchanged (the dense model restores them).
                resume.save_block(checkpoint, stamp, layer, block if layer >= layers.start else None, h, h_dense, layer_reports,
                                  run_settings)
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
