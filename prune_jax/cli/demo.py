"""``prune-jax demo``: flags → `DemoRun` → `run_demo` → a table of the dense and the pruned model."""

from __future__ import annotations

from pathlib import Path

import typer

from prune_jax.cli.shared import OVERWRITE_HELP, REPORTER, RUN_ERRORS, console, default, fail_config, flags_for, note
from prune_jax.pruning import Budget, PruneConfig, Recovery
from prune_jax.pruning.scores import METHODS
from prune_jax.runs.demo import DEMO_TASK, DemoRun
from skmm_jax.common.cli import check_output_dir

DEMO_FLAGS = flags_for(DemoRun, PruneConfig, Budget)


def demo_command(
    method: str = typer.Option(default(PruneConfig, "method"), help="Pruning score: " + " | ".join(METHODS) + "."),
    recover: bool = typer.Option(False, "--recover/--no-recover", help="Layer-wise recovery (ridge refit of every linear map; dap-obs compensates by itself)."),
    sparsity: float = typer.Option(default(Budget, "sparsity"), help="Fraction of the prunable parameters to remove, in (0, 1)."),
    calib_samples: int = typer.Option(default(DemoRun, "calib_samples"), min=1, help="Calibration sequences of 128 tokens."),
    eval_windows_count: int = typer.Option(default(DemoRun, "eval_windows"), "--eval-windows", min=1, help="Evaluation windows of 128 tokens."),
    task_items: int = typer.Option(default(DemoRun, "task_items"), min=1, help=f"Items of the built-in zero-shot task {DEMO_TASK} scored on both models."),
    out: Path = typer.Option(default(DemoRun, "out"), "--out", help="Where the pruned model is saved."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """The main job: prune the embedded SmolLM2-135M on the Wikipedia sample and compare with the dense model.

    The paper's protocol keeps the first 4 and the last 2 blocks dense, so the layers
    end up with different widths: the export carries its modeling file, and stock
    transformers loads it with trust_remote_code=True (the command is printed at the end).
    """
    from rich.table import Table

    from prune_jax.runs.demo import run_demo

    check_output_dir(out, overwrite=overwrite)
    try:
        run = DemoRun(pruning=PruneConfig(method=method, budget=Budget(sparsity=sparsity), recovery=Recovery(enabled=recover)), out=out, calib_samples=calib_samples,
                      eval_windows=eval_windows_count, task_items=task_items, overwrite=overwrite)
    except ValueError as err:
        fail_config(err, DEMO_FLAGS)
    try:
        outcome = run_demo(run, reporter=REPORTER)
    except RUN_ERRORS as err:
        fail_config(err, DEMO_FLAGS)
    pruned_how = f"{method}{' + recovery' if recover else ''}"
    table = Table(title=f"SmolLM2-135M-Instruct (Q4_1, dequantised), {pruned_how}, {sparsity:.0%} of prunable parameters")
    for col in ("model", "parameters", f"perplexity ({outcome.windows}×128)", f"{DEMO_TASK} acc ({outcome.task_items} items)", "tokens/s (8×128)"):
        table.add_column(col, justify="right")
    for name, scores in (("dense", outcome.dense), ("pruned", outcome.pruned)):
        acc = scores.task
        table.add_row(name, f"{scores.parameters:,}", f"{scores.perplexity:.2f}", f"{acc['acc']:.1%} ± {acc['acc_stderr']:.1%}",
                      f"{scores.tokens_per_second:.0f}")
    console.print(table)
    report = outcome.report
    console.print(
        f"removed {report.fraction_of_prunable_removed:.1%} of prunable / {report.fraction_of_all_removed:.1%} of all parameters; "
        f"speed-up {outcome.pruned.tokens_per_second / outcome.dense.tokens_per_second:.2f}×; "
        f"pruning took {outcome.prune_seconds:.0f} s; saved to {out}"
    )
    note(outcome.note)
