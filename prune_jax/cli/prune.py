"""``prune-jax prune``: flags → (`PruneRun`, `PruneConfig`) → `run_prune` → one line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prune_jax.cli.shared import (
    MODEL_HELP,
    OVERWRITE_HELP,
    REPORTER,
    RUN_ERRORS,
    check_checkpoint_flags,
    console,
    default,
    fail_config,
    flags_for,
    note,
    parse_mesh_flag,
)
from prune_jax.pruning import Budget, HeadCriterion, PruneConfig, Recovery
from prune_jax.pruning.calib_select import POOL_MIN, POOL_PER_WINDOW
from prune_jax.pruning.obs import DAMP
from prune_jax.pruning.scores import METHODS
from prune_jax.runs.prune import HEALING_FLAGS, Healing, PruneRun
from skmm_jax.common.cli import check_output_dir, fail, flags_of

# library fields → the flags that set them (for error messages)
PRUNE_FLAGS = {**flags_for(PruneRun),
               **flags_of(("method", "sparsity", "refit", "ridge_toward", "recover_folds", "damp", "metric", "head_criterion", "similarity_tau",
                           "allocation", "allocation_samples", "attention_ratio", "ffn_ratio", "head_mode", "seed", "bias_compensation"),
                          layer_range="--layer-start/--layer-stop"),
               **HEALING_FLAGS}


def prune_config(*, method, sparsity, recover, refit, ridge_toward, recover_folds, damp, metric, bias_compensation, head_criterion, similarity_tau,
                 allocation, allocation_samples, seed, head_mode, layer_start, layer_stop, attention_ratio, ffn_ratio) -> PruneConfig:
    """The one place the prune flags become a `PruneConfig`."""
    if (layer_start is None) != (layer_stop is None):
        fail("--layer-start and --layer-stop go together")
    layer_range = None if layer_start is None else (layer_start, layer_stop)
    try:
        # The flat record form: a method option (--damp, --metric) given for another method is refused by name.
        method_options = {key: value for key, value in (("damp", damp), ("metric", metric)) if value is not None}
        return PruneConfig.from_json(dict(method=method, sparsity=sparsity, recover=recover, refit=refit, head_mode=head_mode,
                                          head_criterion=head_criterion, similarity_tau=similarity_tau, allocation=allocation,
                                          allocation_samples=allocation_samples,
                                          layer_range=layer_range, attention_ratio=attention_ratio, ffn_ratio=ffn_ratio, seed=seed,
                                          ridge_toward=ridge_toward, recover_folds=recover_folds, bias_compensation=bias_compensation,
                                          **method_options))
    except ValueError as err:
        fail_config(err, PRUNE_FLAGS)


def prune_command(
    model: str = typer.Option(default(PruneRun, "model"), help=MODEL_HELP),
    method: str = typer.Option(default(PruneConfig, "method"), help=" | ".join(METHODS) + " (dap-obs = greedy output approximation with optimal compensation, the best in the benchmark; dap = the paper's score)."),
    sparsity: float = typer.Option(default(Budget, "sparsity"), help="Fraction of the prunable (attention + MLP) parameters to remove, in (0, 1)."),
    recover: bool = typer.Option(False, "--recover", help="Layer-wise recovery: ridge refit of the linear maps to the dense outputs."),
    refit: str = typer.Option(default(Recovery, "refit"), help="Maps refit by --recover: full (q,k,v, o, gate,up, down) | second (o and down only)."),
    ridge_toward: str = typer.Option(default(Recovery, "ridge_toward"), help="What the --recover ridge shrinks toward: current (the weights before the refit; default) | zero (classic ridge)."),
    recover_folds: int = typer.Option(default(Recovery, "folds"), help="How --recover chooses its ridge λ: k-fold cross-validation over the calibration sequences (k contiguous blocks of whole sequences; needs --calib-samples >= k); 1: one hold-out, the last 10 % of the tokens."),
    damp: Optional[float] = typer.Option(None, help=f"dap-obs only: relative dampening of the input Gram, H + damp·mean(diag H)·I, > 0 (default {DAMP})."),
    metric: Optional[str] = typer.Option(None, help="dap-obs only: energy (output error E‖δ‖², relative to each map's energy across blocks; default) | loss (output error weighted per residual direction by the dense model's loss sensitivity: a second-order estimate of the calibration-loss increase; one backward pass more) | stream (each residual direction's error relative to its energy in the stream: scale-free across blocks, no backward pass)."),
    bias_compensation: Optional[bool] = typer.Option(None, "--bias-compensation/--no-bias-compensation", help="Add zero biases and compensate into them (FLAP's mean; dap-obs: the intercept row). Default: on for flap only."),
    head_criterion: str = typer.Option(default(HeadCriterion, "criterion"), help="score (the method's head score) | similarity (Jensen–Shannon greedy, then score)."),
    similarity_tau: float = typer.Option(default(HeadCriterion, "similarity_tau"), help="τ of the head-similarity criterion (nats), > 0."),
    allocation: Optional[str] = typer.Option(None, help="Default: the method's (global for dap-obs, else uniform). uniform (one ratio over the layer range) | adaptive (FLAP: global threshold on standardised scores) | global (raw scores per parameter, one threshold: dap-obs)."),
    allocation_samples: Optional[int] = typer.Option(None, min=1, help="Calibration sequences the allocation's dense scoring pass (and --metric loss's backward pass) reads: the first n; default all."),
    calib: str = typer.Option(default(PruneRun, "calib"), help="Calibration corpus: wiki-sample | path.txt | path.jsonl | ..."),
    calib_split: str = typer.Option(default(PruneRun, "calib_split"), help="Part of --calib to calibrate on: auto (the calibration half of wiki-sample, all of a user's file) | calibration | eval | all."),
    calib_samples: int = typer.Option(default(PruneRun, "calib_samples"), min=1, help="Calibration sequences."),
    calib_seq_len: int = typer.Option(default(PruneRun, "calib_seq_len"), min=2, help="Tokens per calibration sequence (at most the model's context)."),
    calib_select: str = typer.Option(default(PruneRun, "calib_select"), help="How the --calib-samples windows are chosen: random (non-overlapping random windows) | skmm | kcenter | herding | ... (any label-free selection method, on the windows' sketched layer-input moments)."),
    calib_pool: Optional[str] = typer.Option(None, help=f"--calib-select other than random: candidate windows, a uniform subset of the split's non-overlapping windows that one forward pass reads before the selection (its cost): a count, or all (every window). Default: max({POOL_PER_WINDOW}·--calib-samples, {POOL_MIN}), at most every window."),
    calib_representation: str = typer.Option(default(PruneRun, "calib_representation"), help="--calib-select other than random: moments (sketched per-window x xᵀ of a few blocks' MLP inputs) | hidden (mean-pooled states)."),
    seed: int = typer.Option(default(PruneRun, "seed"), help="Seed of the document split, the calibration windows and random scores."),
    head_mode: str = typer.Option(default(Budget, "head_mode"), help="per-group (same query heads removed in every KV group) | kv-groups."),
    layer_start: Optional[int] = typer.Option(None, min=0, help="First block to prune (default: the paper's 4)."),
    layer_stop: Optional[int] = typer.Option(None, min=1, help="Block after the last one to prune (default L − 2)."),
    attention_ratio: Optional[float] = typer.Option(None, help="Fixed per-layer head ratio in [0, 1) (instead of --sparsity)."),
    ffn_ratio: Optional[float] = typer.Option(None, help="Fixed per-layer FFN channel ratio in [0, 1) (instead of --sparsity)."),
    out: Path = typer.Option(..., "--out", help="Output HF directory (written atomically) with pruning.json; an existing directory is replaced only if an earlier run wrote it."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    dtype: str = typer.Option(default(PruneRun, "dtype"), help="Parameter dtype: float32 | bfloat16 (statistics and Grams accumulate in float32 either way)."),
    mesh: Optional[str] = typer.Option(None, help='Device mesh, e.g. "data=4,model=2": parameters FSDP-sharded over data and tensor-parallel over model, calibration sequences over data.'),
    checkpoint: Optional[Path] = typer.Option(None, help="Directory for a checkpoint after every block (pruned blocks, both calibration streams); deleted once --out is written."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run whose checkpoint is in --checkpoint (same flags and model)."),
    heal_steps: int = typer.Option(default(Healing, "steps"), help="Heal after pruning: LoRA updates on the calibration split's windows, merged into the weights; held-out perplexity before and after goes to pruning.json (0: none, one-shot pruning)."),
    heal_lr: float = typer.Option(default(Healing, "learning_rate"), help="--heal-steps: AdamW learning rate."),
    heal_rank: int = typer.Option(default(Healing, "rank"), help="--heal-steps: LoRA rank."),
) -> None:
    """Prune a LLaMA model structurally and save it as an HF directory."""
    from prune_jax.pruning.resume import checkpoint_store
    from prune_jax.runs.prune import run_prune

    # Every cheap check first: a bad flag must not cost a model load.
    check_output_dir(out, overwrite=overwrite)
    if calib_pool is not None and calib_pool.strip().isdigit():
        calib_pool = int(calib_pool)  # a count; anything else goes to PruneRun, which names what is valid
    try:
        run = PruneRun(out=out, model=model, calib=calib, calib_split=calib_split, calib_samples=calib_samples,
                       calib_seq_len=calib_seq_len, calib_select=calib_select, calib_pool=calib_pool,
                       calib_representation=calib_representation, seed=seed, dtype=dtype, mesh=parse_mesh_flag(mesh),
                       checkpoint=checkpoint, overwrite=overwrite,
                       healing=Healing(steps=heal_steps, learning_rate=heal_lr, rank=heal_rank))
    except ValueError as err:
        fail_config(err, PRUNE_FLAGS)
    check_checkpoint_flags(checkpoint_store, checkpoint, resume=resume, out=out)
    config = prune_config(method=method, sparsity=sparsity, recover=recover, refit=refit, ridge_toward=ridge_toward,
                          recover_folds=recover_folds, damp=damp, metric=metric, allocation_samples=allocation_samples,
                          bias_compensation=bias_compensation, head_criterion=head_criterion, similarity_tau=similarity_tau,
                          allocation=allocation, seed=seed, head_mode=head_mode, layer_start=layer_start, layer_stop=layer_stop,
                          attention_ratio=attention_ratio, ffn_ratio=ffn_ratio)
    try:
        outcome = run_prune(run, config, reporter=REPORTER)
    except RUN_ERRORS as err:
        fail_config(err, PRUNE_FLAGS)
    if not outcome.written:
        return
    report = outcome.report
    console.print(
        f"{method}{' + recovery' if recover else ''}: removed {report.fraction_of_prunable_removed:.1%} of prunable "
        f"({report.fraction_of_all_removed:.1%} of all) parameters, {report.parameters_before:,} → "
        f"{report.parameters_after:,}; wrote {out} in {outcome.record['total_seconds']:.0f} s"
    )
    healing = outcome.record.get("healing")
    if healing is not None:
        held = healing["held_out_perplexity"]
        console.print(f"healed {healing['steps']} LoRA updates on {healing['data']['rows']} calibration windows: loss "
                      f"{healing['loss_first']:.3f} → {healing['loss_last']:.3f}; held-out PPL ({held['windows']}×{held['seq_len']}, "
                      f"{held['split']} split) {held['before']:.2f} → {held['after']:.2f}")
    note(outcome.note)
