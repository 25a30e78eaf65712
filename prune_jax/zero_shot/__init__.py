"""Zero-shot evaluation: log-likelihood requests on our JAX LLaMA, multiple-choice and
cloze tasks (built-in offline ones and .jsonl files), and an lm-evaluation-harness
adapter (``prune_jax.zero_shot.harness``, needs the ``harness`` extra)."""

from prune_jax.zero_shot.requests import (
    encode_pair,
    generate_until,
    loglikelihood,
    loglikelihood_rolling,
    loglikelihood_rolling_tokens,
    loglikelihood_tokens,
)
from prune_jax.zero_shot.tasks import (
    BUILTIN_TASKS,
    Item,
    Task,
    builtin_task,
    evaluate_task,
    evaluate_tasks,
    load_jsonl_task,
    resolve_task,
)

__all__ = [
    "BUILTIN_TASKS",
    "Item",
    "Task",
    "builtin_task",
    "encode_pair",
    "evaluate_task",
    "evaluate_tasks",
    "generate_until",
    "load_jsonl_task",
    "loglikelihood",
    "loglikelihood_rolling",
    "loglikelihood_rolling_tokens",
    "loglikelihood_tokens",
    "resolve_task",
]
