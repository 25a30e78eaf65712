"""``prune-jax finetune``: flags → (`FinetuneRun`, `FinetuneConfig`) → `run_finetune` → one line."""

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
)
from prune_jax.finetune import FinetuneConfig
from prune_jax.runs.finetune import FinetuneRun
from skmm_jax.common.cli import check_output_dir, flags_of

# library fields → the flags that set them (for error messages)
FINETUNE_FLAGS = {**flags_for(FinetuneRun, selection="--select"),
                  **flags_of(("trainable", "steps", "batch_size", "accumulation", "weight_decay", "seed"), rank="--lora-rank",
                             alpha="--lora-alpha", last_blocks="--last-blocks", learning_rate="--lr")}
CHECKPOINT_EVERY = default(FinetuneConfig, "checkpoint_every")


def finetune_command(
    model: str = typer.Option(default(FinetuneRun, "model"), help=MODEL_HELP),
    data: str = typer.Option(default(FinetuneRun, "data"), help="Finetuning corpus: wiki-sample | python-docs | path.txt | path.jsonl | ..."),
    split: str = typer.Option(default(FinetuneRun, "split"), help="Part of --data to train on: auto (the calibration half of wiki-sample, so its evaluation half stays held out; all of a user's file) | calibration | eval | all."),
    seq_len: int = typer.Option(default(FinetuneRun, "seq_len"), min=2, help="Tokens per training passage (non-overlapping windows of the corpus)."),
    pool: Optional[int] = typer.Option(None, min=1, help="Candidate passages: a uniform subset of every window (default all)."),
    select_method: str = typer.Option(default(FinetuneRun, "selection"), "--select", help="all (train on the whole pool) | uniform | skmm | kcenter | herding | ... (any label-free selection method, on sketched per-passage gradients of the trained parameters)."),
    n: Optional[int] = typer.Option(None, min=1, help="Passages to keep (with --select other than all)."),
    sketch_dim: int = typer.Option(default(FinetuneRun, "sketch_dim"), min=1, help="m of the per-passage gradient sketch (Kronecker per kernel)."),
    trainable: str = typer.Option(default(FinetuneConfig, "trainable"), help="lora (rank --lora-rank adapters on the q, v, o, gate, up and down kernels) | blocks (all of the last --last-blocks blocks)."),
    lora_rank: int = typer.Option(default(FinetuneConfig, "rank"), min=1, help="LoRA rank r."),
    lora_alpha: float = typer.Option(default(FinetuneConfig, "alpha"), help="LoRA α (scale α / r)."),
    lora_blocks: Optional[int] = typer.Option(None, min=1, help="LoRA on the last k blocks only (default every block): the backward pass stops there."),
    last_blocks_count: int = typer.Option(default(FinetuneConfig, "last_blocks"), "--last-blocks", min=1, help="k for --trainable blocks."),
    steps: int = typer.Option(default(FinetuneConfig, "steps"), min=1, help="Optimizer updates."),
    batch_size: int = typer.Option(default(FinetuneConfig, "batch_size"), min=1, help="Passages per micro-batch."),
    accumulation: int = typer.Option(default(FinetuneConfig, "accumulation"), min=1, help="Micro-batches per update (gradient accumulation)."),
    lr: float = typer.Option(default(FinetuneConfig, "learning_rate"), help="AdamW learning rate."),
    weight_decay: float = typer.Option(default(FinetuneConfig, "weight_decay"), help="AdamW weight decay (matrices only)."),
    eval_windows_count: int = typer.Option(default(FinetuneRun, "eval_windows"), "--eval-windows", min=0, help="Held-out windows (the evaluation half of wiki-sample, or of --data) scored before and after (0: skip)."),
    seed: int = typer.Option(default(FinetuneRun, "seed"), help="Seed of the split, the pool, the selection, the LoRA init and the passage order."),
    dtype: str = typer.Option(default(FinetuneRun, "dtype"), help="Model dtype: float32 | bfloat16 (LoRA factors and Adam stay float32)."),
    checkpoint: Optional[Path] = typer.Option(None, help=f"Directory for checkpoints (every {CHECKPOINT_EVERY} updates): new, empty or a finetune checkpoint, never --out or around it; its files are deleted once --out is written."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run whose checkpoint is in --checkpoint (same flags, model and data)."),
    out: Path = typer.Option(..., "--out", help="Output HF directory (written atomically) with finetune.json; an existing directory is replaced only if an earlier run wrote it."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Finetune a LLaMA model (LoRA or its last blocks) on passages of a corpus, optionally
    chosen by SkMM on their sketched gradients, and save it as an HF directory."""
    from prune_jax.finetune import checkpoint_store
    from prune_jax.runs.finetune import run_finetune

    check_output_dir(out, overwrite=overwrite)
    try:
        run = FinetuneRun(out=out, model=model, data=data, split=split, seq_len=seq_len, pool=pool, selection=select_method, n=n,
                          sketch_dim=sketch_dim, lora_blocks=lora_blocks, eval_windows=eval_windows_count, seed=seed, dtype=dtype,
                          checkpoint=checkpoint, overwrite=overwrite)
        config = FinetuneConfig(trainable=trainable, rank=lora_rank, alpha=lora_alpha, last_blocks=last_blocks_count,
                                learning_rate=lr, weight_decay=weight_decay, steps=steps, batch_size=batch_size,
                                accumulation=accumulation, seed=seed)
    except ValueError as err:
        fail_config(err, FINETUNE_FLAGS)
    check_checkpoint_flags(checkpoint_store, checkpoint, resume=resume, out=out)
    try:
        outcome = run_finetune(run, config, reporter=REPORTER)
    except RUN_ERRORS as err:
        fail_config(err, FINETUNE_FLAGS)
    losses, record, held = outcome.result.losses, outcome.record, outcome.record["held_out_perplexity"]
    summary = f"loss {losses[0]:.3f} → {losses[-1]:.3f}"
    if held is not None:
        summary += f"; held-out PPL ({held['windows']}×{seq_len}) {held['before']:.2f} → {held['after']:.2f}"
    console.print(f"finetuned {trainable} on {record['data']['rows']} passages ({record['selection']['method']}), {summary}; "
                  f"wrote {out} in {record['total_seconds']:.0f} s")
    note(outcome.note)
