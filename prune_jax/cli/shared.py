"""What the ``prune-jax`` commands share: the console reporter, flag-named errors, --mesh, --checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console

from prune_jax.runs.reporting import Reporter
from skmm_jax.common.cli import check_store, fail, fail_config, flags_of, progress_bar, resume_note  # noqa: F401  (fail_config: for the commands)

console = Console()
REPORTER = Reporter(stage=lambda message: console.status(message), bar=progress_bar)  # spinners and tqdm bars on the terminal

MODEL_HELP = "smollm2-135m | an HF model directory | a .gguf file."
OVERWRITE_HELP = "Replace --out even if it holds files this program did not write."
SPLIT_HELP = (
    "auto | eval | calibration | all: which document-disjoint part of the corpus. auto = the evaluation half for the "
    "shipped wiki-sample (the other half calibrates the demo) and ALL of a user's own file (a single long .txt is "
    "cut into paragraph groups, so eval/calibration work on it too)."
)
RUN_ERRORS = (ValueError, FileNotFoundError, FileExistsError, TypeError)  # what a run raises on bad input


def default(config: type, field: str):
    """The library's default of a config ``field``: a flag's default is never a second copy."""
    return config.__dataclass_fields__[field].default


def flags_for(*configs: type, **renames: str) -> dict[str, str]:
    """{field: "--field-name"} for every field of the config classes, ``renames`` for flags named otherwise."""
    return flags_of([f.name for config in configs for f in dataclasses.fields(config)], **renames)


def note(message: str | None) -> None:
    if message:
        console.print(f"[yellow]note:[/yellow] {message}", soft_wrap=True)  # no hard line breaks: a printed command stays one line to copy


def parse_mesh_flag(spec: str | None):
    """--mesh "data=4,model=2" → a Mesh over all devices; joins a multi-process run first
    when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set
    (``jax.distributed``)."""
    import os

    import jax

    from prune_jax.models.llama.sharding import parse_mesh

    if os.environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
        try:
            jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
        except (KeyError, ValueError) as err:
            fail(f"JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers too ({err})")
    if spec is None:
        return None
    try:
        return parse_mesh(spec)
    except ValueError as err:
        fail(f"--mesh: {err}")


def check_checkpoint_flags(make_store, checkpoint: Path | None, *, resume: bool, out: Path) -> None:
    """--checkpoint / --resume: the store's rules checked before any work, and an interrupt
    then says how far the checkpoint got and how to continue."""
    if resume and checkpoint is None:
        fail("--resume continues from --checkpoint DIR; pass the directory of the interrupted run")
    if checkpoint is None:
        return
    store = make_store(checkpoint)
    check_store(store, outputs=[out], resume=resume)
    resume_note(store)
