"""``prune-jax``: a thin command line over the library."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distribution-aware structured pruning of LLaMA models in JAX.")
console = Console()


@app.command()
def env() -> None:
    """Show the JAX backend and devices, and which embedded models are installed."""
    import jax

    from prune_jax.embedded import EMBEDDED_MODELS, embedded_model_path

    console.print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): {jax.devices()}")
    for name in EMBEDDED_MODELS:
        try:
            console.print(f"{name}: {embedded_model_path(name)}")
        except FileNotFoundError as err:
            console.print(f"{name}: [yellow]not installed[/yellow] — {err}")


@app.callback()
def _root() -> None:
    """Keeps `prune-jax env` a subcommand while it is the only one."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
