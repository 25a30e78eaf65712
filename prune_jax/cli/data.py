"""``prune-jax data fetch | stats`` and ``prune-jax env``: the corpora and the machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prune_jax.cli.shared import console
from skmm_jax.common.cli import fail

data_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Text corpora: fetch the Wikipedia sample, show a corpus and its split.",
)
DATA_ERRORS = (OSError, ValueError, RuntimeError, ImportError)  # what prune_jax.data raises on bad input or no network


@data_app.command("fetch")
def data_fetch_command(
    cache_dir: Optional[Path] = typer.Option(
        None, help="Cache root (default: $PRUNE_JAX_CACHE or ~/.cache/prune_jax)."
    ),
    wheel: Optional[Path] = typer.Option(None, help="Take the file from this gensim wheel instead of downloading it."),
) -> None:
    """Fetch the embedded Wikipedia sample into the cache and print its path."""
    from prune_jax.data import fetch_wiki_sample

    try:
        path = fetch_wiki_sample(cache_dir, wheel=wheel)
    except DATA_ERRORS as err:
        fail(str(err))
    typer.echo(path)  # plain, unwrapped: scripts read the path


@data_app.command("stats")
def data_stats_command(
    source: str = typer.Argument(
        "wiki-sample",
        help="wiki-sample | path.txt | path.jsonl | path.parquet | dump.xml.bz2 | hf:dataset[:config]:split.",
    ),
) -> None:
    """Document and character counts of a corpus and of its default calibration / evaluation split."""
    from prune_jax.data import load_documents, split_documents

    try:
        docs = load_documents(source)
        calibration, evaluation = split_documents(docs) if len(docs) >= 2 else (docs, [])
    except DATA_ERRORS as err:
        fail(str(err))
    typer.echo(f"{source}: {len(docs)} documents, {sum(len(d.text) for d in docs)} characters")
    for name, part in (("calibration", calibration), ("evaluation", evaluation)):
        typer.echo(f"  {name}: {len(part)} documents, {sum(len(d.text) for d in part)} characters")


def env_command() -> None:
    """Show the JAX backend and devices, and which embedded models are installed."""
    import jax

    from prune_jax.embedded import EMBEDDED_MODELS, embedded_model_path

    console.print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): {jax.devices()}")
    for name in EMBEDDED_MODELS:
        try:
            console.print(f"{name}: {embedded_model_path(name)}")
        except FileNotFoundError as err:
            console.print(f"{name}: [yellow]not installed[/yellow] — {err}")
