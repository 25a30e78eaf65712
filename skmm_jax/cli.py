"""``skmm-jax``: a thin command line over the library."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sketchy Moment Matching data selection in JAX.")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command()
def sketch(
    input: Path = typer.Option(..., "--input", help="[N, r] float .npy of row vectors (memory-mapped)."),
    kind: str = typer.Option("sjlt", help="gaussian | rademacher | sjlt | countsketch | srht | kronecker"),
    dim: int = typer.Option(512, help="Sketch dimension m."),
    seed: int = typer.Option(0, help="Seed of the transform; same seed, same Γ."),
    out: Path = typer.Option(..., "--out", help="Output [N, m] float32 .npy (written atomically)."),
    nnz: Optional[int] = typer.Option(None, help="sjlt: non-zeros per input coordinate (default 4)."),
    hashing: Optional[str] = typer.Option(None, help="sjlt/countsketch: shift (default) | uniform."),
    chunk_size: int = typer.Option(256, help="Rows per device step."),
) -> None:
    """Sketch the rows of G: S = G Γ, streamed in chunks with a progress bar."""
    import jax
    from tqdm import tqdm

    from skmm_jax.io import load_rows, save_npy_atomic
    from skmm_jax.sketch import make_sketch, sketch_rows

    options = {k: v for k, v in (("nnz", nnz), ("hashing", hashing)) if v is not None}
    try:
        rows = load_rows(input)
        if dim >= rows.shape[1]:
            _fail(f"--dim {dim} must be smaller than the input dimension r = {rows.shape[1]} (a sketch reduces dimension)")
        transform = make_sketch(kind, jax.random.key(seed), rows.shape[1], dim, **options)
        start = time.perf_counter()
        with tqdm(total=rows.shape[0], unit="row", desc=f"{kind} r={rows.shape[1]}→m={dim}", file=None) as bar:
            sketched = sketch_rows(transform, rows, chunk_size=chunk_size, progress=lambda done, total: bar.update(done - bar.n))
        save_npy_atomic(out, sketched)
    except (ValueError, TypeError, FileNotFoundError) as err:
        _fail(str(err))
    console.print(
        f"wrote {out} [{sketched.shape[0]}, {sketched.shape[1]}] ({kind}, seed {seed}) in {time.perf_counter() - start:.2f} s"
    )


@app.command()
def demo(
    samples: int = typer.Option(2048, help="Number of generated samples N."),
    sketch_dim: int = typer.Option(256, help="Sketch dimension m."),
    seed: int = typer.Option(0),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON."),
) -> None:
    """Sketch per-sample gradients of a small MLP with every kind; report what each preserves."""
    from skmm_jax.demo import DemoConfig, run_demo
    from skmm_jax.io import save_json_atomic

    cfg = DemoConfig(samples=samples, sketch_dim=sketch_dim, seed=seed)
    console.print(
        f"per-sample gradients of an MLP ({cfg.input_dim}→{cfg.hidden}→1) on {cfg.samples} mixture samples, "
        f"sketched to m={cfg.sketch_dim} by every kind ..."
    )
    table = Table(title="JL sketches of per-sample gradients")
    for col in ("kind", "seconds", "mean ‖SΓ‖²/‖g‖²", "max |ratio−1|", "Gram rel. error", f"ε (top-{cfg.subspace_rank} subspace)"):
        table.add_column(col, justify="right")
    with console.status("sketching") as status:
        rows = run_demo(cfg, on_kind=lambda r: status.update(f"done {r.kind}"))
    for r in rows:
        table.add_row(
            r.kind, f"{r.seconds:.3f}", f"{r.norm_ratio_mean:.3f}", f"{r.norm_ratio_max_dev:.3f}",
            f"{r.inner_product_error:.3f}", f"{r.subspace_distortion:.3f}",
        )
    Console().print(table)
    if json_out is not None:
        import dataclasses

        save_json_atomic(json_out, {"config": dataclasses.asdict(cfg), "rows": [dataclasses.asdict(r) for r in rows]})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
