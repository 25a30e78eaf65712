"""Runs: what each ``prune-jax`` command performs, as library calls.

A run is the whole sequence of a job: read the documents → load the model → the work
(prune, finetune, evaluate) → write the output with its provenance record. Each takes
a frozen config saying where it reads and writes (``PruneRun``, ``FinetuneRun``,
``PerplexityRun``, ``TasksRun``, ``DemoRun``) beside the algorithm's own config
(``PruneConfig``, ``FinetuneConfig``), validates its inputs when the config is built (so a
bad input costs no model load), reports progress through a `Reporter` and never
prints. The records (``pruning.json``, ``finetune.json``, the evaluation JSON) are built
here and only here.

    from prune_jax.pruning import Budget, PruneConfig
    from prune_jax.runs import PruneRun, run_prune

    outcome = run_prune(PruneRun(out=Path("pruned"), calib_samples=32), PruneConfig(budget=Budget(sparsity=0.3)))
"""

from prune_jax.runs.demo import DEMO_MODEL, DEMO_TASK, DemoOutcome, DemoRun, run_demo
from prune_jax.runs.evaluate import EvalModel, PerplexityRun, TasksRun, run_perplexity, run_tasks
from prune_jax.runs.finetune import FinetuneRun, run_finetune
from prune_jax.runs.inputs import DTYPES, SPLITS
from prune_jax.runs.prune import Healing, PruneRun, run_prune
from prune_jax.runs.reporting import QUIET, Reporter

__all__ = ["DEMO_MODEL", "DEMO_TASK", "DTYPES", "DemoOutcome", "DemoRun", "EvalModel", "FinetuneRun", "Healing", "PerplexityRun",
           "PruneRun", "QUIET", "Reporter", "SPLITS", "TasksRun", "run_demo", "run_finetune", "run_perplexity", "run_prune",
           "run_tasks"]
