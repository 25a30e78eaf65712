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
def select(
    features: Path = typer.Option(..., "--features", help="[N, d] per-sample (sketched) gradients or features: .npy / .safetensors (memory-mapped) or .npz."),
    n: int = typer.Option(..., "--n", help="Coreset size, 0 < n <= N."),
    method: str = typer.Option(
        "skmm",
        help="skmm | uniform | herding | kcenter | adaptive | leverage | ridge-leverage | with --labels: el2n | grand | "
        "forgetting | entropy | margin | least-confidence | contextual-diversity",
    ),
    seed: int = typer.Option(0, help="Seed of every random choice (sketch, draws)."),
    out: Path = typer.Option(..., "--out", help="Output JSON (indices, method, n, seed, diagnostics), written atomically."),
    array: Optional[str] = typer.Option(None, help="Array name inside a .npz / .safetensors file holding several."),
    sketch_kind: Optional[str] = typer.Option(None, help="Sketch the features first with this kind (e.g. sjlt)."),
    sketch_dim: Optional[int] = typer.Option(None, help="Sketch dimension m (default 256 when --sketch-kind is given)."),
    c_s: Optional[float] = typer.Option(None, "--c-s", help="SkMM: moment-matching constant c_S (default: smallest feasible, by bisection)."),
    draw: Optional[str] = typer.Option(None, help="SkMM: greedy (default) | greedy-diagonal | swap | sample | top | balanced."),
    labels: Optional[Path] = typer.Option(None, help="[N] int labels .npy (DeepCore methods; SkMM draw=balanced)."),
) -> None:
    """Select n samples of a pool with SkMM or a baseline; write the indices as JSON."""
    import jax

    from skmm_jax.deepcore import DEEPCORE
    from skmm_jax.io import load_array, save_json_atomic
    from skmm_jax.select import METHODS
    from skmm_jax.select import select as run_select

    if method not in METHODS:
        _fail(f"--method {method!r} is not one of {sorted(METHODS)}")
    if method in DEEPCORE and labels is None:
        _fail(f"--method {method} needs --labels: an [N] .npy of integer classes 0..C-1")
    options = {}
    if method == "skmm":
        options = {k: v for k, v in (("c_s", c_s), ("draw", draw)) if v is not None}
    elif c_s is not None or draw is not None:
        _fail("--c-s and --draw apply to --method skmm only")
    if sketch_kind is not None and sketch_dim is None:
        sketch_dim = 256
    try:
        rows = load_array(features, name=array)
        label_array = load_array(labels) if labels is not None else None
        if sketch_kind is not None and rows.ndim == 2 and sketch_dim >= rows.shape[1]:
            _fail(f"--sketch-dim {sketch_dim} must be smaller than the feature dimension {rows.shape[1]}")
        from tqdm import tqdm

        start = time.perf_counter()
        with tqdm(total=rows.shape[0], unit="row", desc=f"sketch {sketch_kind} m={sketch_dim}", disable=sketch_kind is None) as bar:
            result = run_select(
                method, jax.random.key(seed), rows, n, labels=label_array,
                sketch_kind=sketch_kind, sketch_dim=sketch_dim,
                progress=lambda done, total: bar.update(done - bar.n), **options,
            )
        seconds = time.perf_counter() - start
        payload = result.to_json(seed=seed, features=str(features), num_samples=int(rows.shape[0]), seconds=seconds)
        save_json_atomic(out, payload)
    except (ValueError, TypeError, FileNotFoundError) as err:
        _fail(str(err))
    diag = result.diagnostics
    console.print(
        f"wrote {out}: {method} selected {n} of {rows.shape[0]} in {seconds:.2f} s; "
        f"subset coverage {diag['subset_coverage']:.3f}" + (f", c_S {diag['c_s']:.3f}" if "c_s" in diag else "")
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
