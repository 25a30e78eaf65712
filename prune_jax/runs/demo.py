"""The demo run: prune the embedded SmolLM2-135M on the Wikipedia sample and compare
the dense and the pruned model (perplexity, zero-shot accuracy, forward speed).

Both halves of the sample's document split are used: the calibration half calibrates,
the evaluation half is scored. The pruned model is written with ``pruning.json``
(`prune_jax.runs.prune.calibration_record`, without a selection entry: the windows are random)
and a model card that quotes what the demo measured and the command that reproduces it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from prune_jax.runs.inputs import load_model_for_run, tokenize
from prune_jax.runs.prune import CALIB_SAMPLES, calibration_record
from prune_jax.runs.reporting import QUIET, Reporter

__all__ = ["DEMO_MODEL", "DEMO_TASK", "DemoModelScores", "DemoOutcome", "DemoRun", "demo_command_line", "run_demo"]

DEMO_MODEL = "smollm2-135m"
DEMO_TASK = "wiki-last-word"  # the cheapest built-in task (one request per item), chance 0
SEQ_LEN = 128  # of the calibration and the evaluation windows
SPEED_BATCH = (8, 128)  # the forward pass timed for tokens/s


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """``pruning`` (a ``PruneConfig``) on ``calib_samples`` random windows; ``eval_windows``
    windows and ``task_items`` items of `DEMO_TASK` scored on both models; ``out``: the
    pruned model (``overwrite``: replace one this program did not write)."""

    pruning: Any
    out: Path = Path("pruned/smollm2-135m-demo")
    calib_samples: int = CALIB_SAMPLES
    eval_windows: int = 64
    task_items: int = 100
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class DemoModelScores:
    parameters: int
    perplexity: float
    task: dict  # evaluate_task's {acc, acc_stderr, ...}
    tokens_per_second: float


@dataclasses.dataclass(frozen=True)
class DemoOutcome:
    dense: DemoModelScores
    pruned: DemoModelScores
    report: Any  # PruneReport
    windows: int  # evaluation windows scored
    task_items: int
    calibration_shape: tuple[int, int]
    prune_seconds: float
    note: str  # how stock transformers loads the pruned model


def demo_command_line(run: DemoRun) -> str:
    """The ``prune-jax demo`` command that reproduces ``run``."""
    import shlex

    config = run.pruning
    words = ["prune-jax", "demo", "--method", config.method, "--sparsity", str(config.budget.sparsity)]
    if config.recovery.enabled:
        words.append("--recover")
    for field in ("calib_samples", "eval_windows", "task_items"):
        if getattr(run, field) != getattr(DemoRun, field):
            words += ["--" + field.replace("_", "-"), str(getattr(run, field))]
    return shlex.join([*words, "--out", str(run.out)])


def run_demo(run: DemoRun, *, reporter: Reporter = QUIET) -> DemoOutcome:
    import numpy as np

    from prune_jax.data import calibration_batches, eval_windows, load_documents, split_documents
    from prune_jax.evaluate import forward_tokens_per_second, perplexity
    from prune_jax.models.llama import save_hf
    from prune_jax.models.llama.export import load_note, model_card
    from prune_jax.pruning import prune
    from prune_jax.pruning.recover import check_folds
    from prune_jax.zero_shot.tasks import builtin_task, evaluate_task

    def scores(net, which: str) -> tuple[float, dict, float]:
        """(perplexity, task accuracy, tokens/s) of ``net``."""
        with reporter.bar(f"{which} perplexity", unit="window", total=len(windows)) as progress:
            ppl = perplexity(net, windows, progress=progress).perplexity
        speed_tokens = np.asarray(eval_tokens[: SPEED_BATCH[0] * SPEED_BATCH[1]]).reshape(SPEED_BATCH)
        speed = forward_tokens_per_second(net, speed_tokens, repeats=3)
        with reporter.bar(f"{which} {DEMO_TASK}", unit="item", total=len(task.items)) as progress:
            accuracy = evaluate_task(net, tok, task, progress=progress)
        return ppl, accuracy, speed

    config = run.pruning
    if config.recovery.enabled:  # before the model: every fold of the refits holds whole calibration sequences
        check_folds(run.calib_samples, config.recovery.folds)
    net, tok = load_model_for_run(DEMO_MODEL, reporter=reporter)
    calibration_docs, evaluation_docs = split_documents(load_documents("wiki-sample"), seed=0)
    calib = calibration_batches(tokenize(calibration_docs, tok, reporter), num_samples=run.calib_samples, seq_len=SEQ_LEN, seed=0)
    eval_tokens = tokenize(evaluation_docs, tok, reporter)
    windows = eval_windows(eval_tokens, SEQ_LEN, run.eval_windows)
    task = builtin_task(DEMO_TASK, max_items=run.task_items)
    dense = scores(net, "dense")
    start = time.perf_counter()
    desc = (f"prune {config.budget.sparsity:.0%} {config.method}{' + recovery' if config.recovery.enabled else ''}, "
            f"{calib.shape[0]}×{SEQ_LEN} calibration tokens")
    with reporter.bar(desc, unit="block", total=net.config.num_layers) as progress:
        net, report = prune(net, calib, config, progress=progress)
    prune_seconds = time.perf_counter() - start
    pruned = scores(net, "pruned")
    record = report.to_json()
    record["calibration"] = calibration_record("wiki-sample", "calibration", calibration_docs, calib, samples=run.calib_samples,
                                               seq_len=SEQ_LEN, seed=0)
    measured = [(f"perplexity, wiki-sample evaluation half ({len(windows)}×{SEQ_LEN} tokens)", dense[0], pruned[0]),
                (f"{DEMO_TASK} accuracy ({len(task.items)} items)", dense[1]["acc"], pruned[1]["acc"]),
                (f"prune-jax forward tokens/s ({SPEED_BATCH[0]}×{SPEED_BATCH[1]}, the demo's machine)", dense[2], pruned[2])]
    card = model_card(net.config, run.out, parameters=report.parameters_after, record=record, measured=measured,
                      base_model=f"{DEMO_MODEL} (SmolLM2-135M-Instruct, the embedded Q4_1 GGUF, dequantised)",
                      command=demo_command_line(run))
    save_hf(net, tok, run.out, extra_files={"pruning.json": record, "README.md": card}, overwrite=run.overwrite)
    return DemoOutcome(DemoModelScores(report.parameters_before, *dense), DemoModelScores(report.parameters_after, *pruned), report,
                       len(windows), len(task.items), tuple(calib.shape), prune_seconds, load_note(run.out, uniform=net.config.uniform))
