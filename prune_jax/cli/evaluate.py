"""``prune-jax eval``: flags → `PerplexityRun` or `TasksRun` → one library call → a line or a table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prune_jax.cli.shared import MODEL_HELP, REPORTER, RUN_ERRORS, SPLIT_HELP, console, default, fail_config, flags_for
from prune_jax.runs.evaluate import EvalModel, PerplexityRun, TasksRun
from prune_jax.zero_shot.tasks import BUILTIN_TASKS
from skmm_jax.common.cli import check_output_file, fail

EVAL_FLAGS = flags_for(EvalModel, PerplexityRun, TasksRun, json_out="--json")
PERPLEXITY_ONLY = ("data", "seq_len", "split", "seed", "max_windows", "batch_size")  # eval options that --tasks does not read


def eval_command(
    ctx: typer.Context,
    model: str = typer.Option(default(EvalModel, "model"), help=MODEL_HELP),
    data: str = typer.Option(default(PerplexityRun, "data"), help="wiki-sample | path.txt | path.jsonl | path.parquet | hf:dataset[:config]:split."),
    seq_len: int = typer.Option(default(PerplexityRun, "seq_len"), min=2, help="Tokens per window (non-overlapping windows), at most the model's context."),
    split: str = typer.Option(default(PerplexityRun, "split"), help=SPLIT_HELP),
    seed: int = typer.Option(default(PerplexityRun, "seed"), help="Seed of the document split."),
    max_windows: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first this many windows."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Windows per step (default ≈ 16K tokens per step)."),
    dtype: str = typer.Option(default(EvalModel, "dtype"), help="float32 | bfloat16."),
    attention: str = typer.Option(default(EvalModel, "attention"), help="chunked (XLA, no [T, T] scores) | dot_product (jax.nn.dot_product_attention: cuDNN flash on GPU)."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer directory (or .gguf), when the model has none of its own."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON (atomically)."),
    tasks: Optional[str] = typer.Option(None, help="Zero-shot tasks instead of perplexity: comma-separated built-in names (" + ", ".join(BUILTIN_TASKS) + ") or paths to .jsonl files (one {context, choices, gold[, id]} per line). Writes acc / acc_norm with standard errors."),
    limit: Optional[int] = typer.Option(None, min=1, help="--tasks: score only the first this many items of each task (built-in tasks: up to 500, in a fixed random order, so a prefix is a random sample)."),
) -> None:
    """Perplexity of a LLaMA model on a corpus (exp(mean NLL) over non-overlapping
    windows), or with --tasks its zero-shot accuracy (acc, acc_norm)."""
    # typed on the command line (not defaulted); by name: typer ships its own copy of click's enum
    given = [name for name in PERPLEXITY_ONLY if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if tasks is not None and given:
        fail(f"{', '.join('--' + name.replace('_', '-') for name in given)}: perplexity options, not read with --tasks "
             "(zero-shot tasks score their own items); drop them or run the perplexity evaluation separately")
    if tasks is None and limit is not None:
        fail("--limit applies to --tasks (items per task); for perplexity use --max-windows")
    check_output_file(json_out, "--json")
    try:
        evaluated = EvalModel(model=model, dtype=dtype, attention=attention, tokenizer=tokenizer)
        if tasks is not None:
            run = TasksRun(tasks=tuple(name.strip() for name in tasks.split(",") if name.strip()), evaluated=evaluated, limit=limit,
                           json_out=json_out)
        else:
            run = PerplexityRun(evaluated=evaluated, data=data, seq_len=seq_len, split=split, seed=seed, max_windows=max_windows,
                                batch_size=batch_size, json_out=json_out)
    except ValueError as err:
        fail_config(err, EVAL_FLAGS)
    if tasks is not None:
        _eval_tasks(run)
    else:
        _eval_perplexity(run)


def _eval_perplexity(run: PerplexityRun) -> None:
    from prune_jax.runs.evaluate import run_perplexity

    try:
        record = run_perplexity(run, reporter=REPORTER).record
    except RUN_ERRORS as err:
        fail_config(err, EVAL_FLAGS)
    console.print(
        f"{run.evaluated.model} on {run.data} ({record['split']}, {record['documents']} documents): perplexity "
        f"[bold]{record['perplexity']:.4f}[/bold] over {record['windows']} windows × {record['seq_len']} tokens "
        f"({record['tokens']} predicted) in {record['seconds']:.1f} s"
    )


def _eval_tasks(run: TasksRun) -> None:
    from rich.table import Table

    from prune_jax.runs.evaluate import run_tasks

    try:
        outcome = run_tasks(run, reporter=REPORTER)
    except RUN_ERRORS as err:
        fail_config(err, EVAL_FLAGS)
    table = Table(title=f"{run.evaluated.model}: zero-shot accuracy (± standard error)")
    for col in ("task", "items", "acc", "acc_norm", "chance"):
        table.add_column(col, justify="right")
    for name, r in outcome.results.items():
        norm = f"{r['acc_norm']:.3f} ± {r['acc_norm_stderr']:.3f}" if "acc_norm" in r else "—"
        table.add_row(name, str(r["n"]), f"{r['acc']:.3f} ± {r['acc_stderr']:.3f}", norm, f"{r['chance']:.3f}")
    console.print(table)
    console.print(f"scored in {outcome.seconds:.1f} s")
