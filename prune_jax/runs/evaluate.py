"""Evaluation runs: perplexity on a corpus, or zero-shot accuracy on tasks, with their JSON records.

`EvalModel` is what both read (the model, its dtype, attention implementation and an
optional separate tokenizer). `run_perplexity` reads the documents, loads the model,
scores non-overlapping windows (``prune_jax.evaluate.perplexity``) and writes
`perplexity_record`; `run_tasks` reads and checks every task before the model loads,
scores them (``prune_jax.zero_shot.tasks.evaluate_tasks``) and writes `tasks_record`.
A JSON output is written atomically, and only when all the work has run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

from prune_jax.runs.inputs import DTYPES, check_choice, load_model_for_eval, read_documents, resolve_split, tokenize
from prune_jax.runs.reporting import QUIET, Reporter

__all__ = ["EvalModel", "PerplexityOutcome", "PerplexityRun", "TasksOutcome", "TasksRun", "perplexity_record",
           "run_perplexity", "run_tasks", "tasks_record"]


@dataclasses.dataclass(frozen=True)
class EvalModel:
    """The model evaluated.

    Attributes:
      model: "smollm2-135m", an HF directory or a .gguf file; ``dtype`` its parameters'.
      attention: "chunked" (XLA, no [T, T] scores) | "dot_product" (cuDNN flash on GPU).
      tokenizer: a tokenizer directory or .gguf, for a model that has none of its own.
    """

    model: str = "smollm2-135m"
    dtype: str = "float32"
    attention: str = "chunked"
    tokenizer: Path | None = None

    def __post_init__(self):
        from prune_jax.models.llama.modeling import ATTENTION_IMPLEMENTATIONS

        check_choice("dtype", self.dtype, DTYPES)
        check_choice("attention", self.attention, ATTENTION_IMPLEMENTATIONS)
        if self.tokenizer is not None and not Path(self.tokenizer).exists():
            raise ValueError(f"tokenizer {self.tokenizer} does not exist (expected a tokenizer/model directory or a .gguf file)")

    def load(self, reporter: Reporter = QUIET):
        return load_model_for_eval(self.model, self.dtype, self.attention, self.tokenizer, reporter)


@dataclasses.dataclass(frozen=True)
class PerplexityRun:
    """Perplexity of ``evaluated`` on the ``split`` part of ``data``, over non-overlapping
    ``seq_len`` windows (the first ``max_windows``), ``batch_size`` windows per step
    (None: ≈ 16K tokens); ``json_out``: where the record goes (None: nowhere)."""

    evaluated: EvalModel = EvalModel()
    data: str = "wiki-sample"
    seq_len: int = 128
    split: str = "auto"
    seed: int = 0
    max_windows: int | None = None
    batch_size: int | None = None
    json_out: Path | None = None

    def __post_init__(self):
        resolve_split(self.split, self.data, auto="eval")  # a bad split fails here, before any work

    @property
    def resolved_split(self) -> str:
        """``split`` with auto resolved: the evaluation half of wiki-sample, all of a user's file."""
        return resolve_split(self.split, self.data, auto="eval")


@dataclasses.dataclass(frozen=True)
class PerplexityOutcome:
    result: object  # prune_jax.evaluate.PerplexityResult
    record: dict


def perplexity_record(run: PerplexityRun, result, documents: int, *, seconds: float, load_seconds: float) -> dict:
    return {
        "model": str(run.evaluated.model), "data": str(run.data), "split": run.resolved_split, "seed": run.seed,
        "dtype": run.evaluated.dtype, "attention": run.evaluated.attention,
        "perplexity": result.perplexity, "nll": result.nll, "tokens": result.tokens, "windows": result.windows,
        "seq_len": result.seq_len, "documents": documents, "seconds": seconds, "load_seconds": load_seconds,
        "tokens_per_second": result.windows * result.seq_len / seconds,
    }


def run_perplexity(run: PerplexityRun, *, reporter: Reporter = QUIET) -> PerplexityOutcome:
    from prune_jax.data import eval_windows
    from prune_jax.evaluate import perplexity
    from skmm_jax.common.io import save_json_atomic

    start = time.perf_counter()
    docs = read_documents(run.data, run.resolved_split, run.seed)  # before the model: a bad corpus costs no load
    net, tok = run.evaluated.load(reporter)
    net.config.check_sequence_length(run.seq_len, name="seq_len")
    windows = eval_windows(tokenize(docs, tok, reporter), run.seq_len, run.max_windows)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with reporter.bar(f"perplexity T={run.seq_len}", unit="window", total=len(windows)) as progress:
        result = perplexity(net, windows, batch_size=run.batch_size, progress=progress)
    record = perplexity_record(run, result, len(docs), seconds=time.perf_counter() - start, load_seconds=load_seconds)
    if run.json_out is not None:
        save_json_atomic(run.json_out, record)
    return PerplexityOutcome(result, record)


@dataclasses.dataclass(frozen=True)
class TasksRun:
    """Zero-shot accuracy of ``evaluated`` on ``tasks`` (built-in names or .jsonl paths),
    the first ``limit`` items of each (None: all); ``json_out``: where the record goes."""

    tasks: tuple[str, ...]
    evaluated: EvalModel = EvalModel()
    limit: int | None = None
    json_out: Path | None = None

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("tasks is empty; give built-in task names or .jsonl paths, comma-separated")


@dataclasses.dataclass(frozen=True)
class TasksOutcome:
    results: dict  # task name → {acc, acc_stderr, [acc_norm, acc_norm_stderr,] n, chance, kind}
    record: dict
    seconds: float


def tasks_record(run: TasksRun, results: dict, *, seconds: float) -> dict:
    return {"model": str(run.evaluated.model), "dtype": run.evaluated.dtype, "limit": run.limit, "seconds": seconds, "tasks": results}


def _read_tasks(run: TasksRun) -> list:
    """The tasks, each named uniquely, cut to ``limit`` items."""
    from prune_jax.zero_shot.tasks import resolve_task

    loaded = [resolve_task(spec) for spec in run.tasks]
    stems = [task.name for task in loaded]
    # two files with one stem (a/task.jsonl, b/task.jsonl): name each by the path given, so no result is dropped
    loaded = [dataclasses.replace(task, name=spec) if stems.count(task.name) > 1 else task for task, spec in zip(loaded, run.tasks)]
    if len({task.name for task in loaded}) < len(loaded):
        raise ValueError(f"tasks names a task twice: {','.join(run.tasks)}")
    if run.limit is not None:
        loaded = [dataclasses.replace(task, items=task.items[: run.limit]) for task in loaded]
    return loaded


def run_tasks(run: TasksRun, *, reporter: Reporter = QUIET) -> TasksOutcome:
    """Every task is read and checked against the model's window before any scoring."""
    from prune_jax.zero_shot.tasks import evaluate_tasks
    from skmm_jax.common.io import save_json_atomic

    tasks = _read_tasks(run)  # before the model: a bad task costs no load
    net, tok = run.evaluated.load(reporter)
    start = time.perf_counter()
    with contextlib.ExitStack() as bars:  # one bar per task; its total is the task's requests, as the scorer counts them
        results = evaluate_tasks(net, tok, tasks, progress_factory=lambda task: bars.enter_context(reporter.bar(task.name, unit="request")))
    seconds = time.perf_counter() - start
    record = tasks_record(run, results, seconds=seconds)
    if run.json_out is not None:
        save_json_atomic(run.json_out, record)
    return TasksOutcome(results, record, seconds)
