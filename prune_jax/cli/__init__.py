"""``prune-jax``: a thin command line over the library.

Each command maps its flags to a library config (``prune_jax.runs``' run configs beside
``PruneConfig`` / ``FinetuneConfig``), makes one library call and prints; the library owns
the defaults, the validation and the records written. One module per command
(``prune``, ``finetune``, ``evaluate``, ``demo``, ``data`` with ``env``); ``shared``
holds what they share (the console reporter, flag-named errors, --mesh, --checkpoint).
"""

from __future__ import annotations

import typer

from prune_jax.cli.data import data_app, env_command
from prune_jax.cli.demo import demo_command
from prune_jax.cli.evaluate import eval_command
from prune_jax.cli.finetune import finetune_command
from prune_jax.cli.prune import prune_command
from skmm_jax.common.cli import run_app

__all__ = ["app", "data_app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distribution-aware structured pruning of LLaMA models in JAX.")
app.command("env")(env_command)
app.command("prune")(prune_command)
app.command("finetune")(finetune_command)
app.command("demo")(demo_command)
app.command("eval")(eval_command)
app.add_typer(data_app, name="data")


def main() -> None:
    run_app(app)
