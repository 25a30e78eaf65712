"""``skmm-jax``: a thin command line over the library.

Every command checks all of its arguments and its output path before loading or
computing anything, so a typo costs a second rather than a long run; every user error
is one line on stderr with exit code 2 (``cli_common.fail``), never a traceback.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from skmm_jax.common.cli import check_output_file, fail, run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sketchy Moment Matching data selection in JAX.")
console = Console(stderr=True)

SEED_MAX = 2**32 - 1  # jax.random.key(seed) keeps only the low 32 bits: 2**32 would be seed 0 again
INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError)


def _seed_option(help: str = "Seed of every random choice.") -> int:
    return typer.Option(0, min=0, max=SEED_MAX, help=f"{help} 0 <= seed < 2**32.")


def _write(out: Path, flag: str, write) -> None:
    """Runs ``write()`` (an atomic save); an OS error becomes one line naming the flag."""
    try:
        write()
    except OSError as err:
        fail(f"{flag} {out}: could not write it ({err.strerror or err})")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


@app.command()
def sketch(
    input: Path = typer.Option(..., "--input", help="[N, r] float .npy of row vectors (memory-mapped)."),
    kind: str = typer.Option("sjlt", help="gaussian | rademacher | sjlt | countsketch | srht | kronecker"),
    dim: int = typer.Option(512, min=1, help="Sketch dimension m, 0 < m < r."),
    seed: int = _seed_option("Seed of the transform; same seed, same Γ."),
    out: Path = typer.Option(..., "--out", help="Output [N, m] float32 .npy (written atomically)."),
    nnz: Optional[int] = typer.Option(None, min=1, help="sjlt: non-zeros per input coordinate (default 4; must divide --dim)."),
    hashing: Optional[str] = typer.Option(None, help="sjlt/countsketch: shift (default) | uniform."),
    chunk_size: int = typer.Option(256, min=1, help="Rows per device step."),
) -> None:
    """Sketch the rows of G: S = G Γ, streamed in chunks with a progress bar."""
    check_output_file(out, "--out")
    import jax
    from tqdm import tqdm

    from skmm_jax.common.io import load_rows, save_npy_atomic
    from skmm_jax.sketch import KINDS, make_sketch, sketch_rows
    from skmm_jax.sketch.sparse import HASHINGS

    if kind not in KINDS:
        fail(f"--kind {kind!r}: unknown sketch kind; choose one of {', '.join(KINDS)}")
    if nnz is not None and kind != "sjlt":
        fail(f"--nnz applies to --kind sjlt only (got --kind {kind})")
    if hashing is not None and hashing not in HASHINGS:
        fail(f"--hashing {hashing!r} is not one of {', '.join(HASHINGS)}")
    if hashing is not None and kind not in ("sjlt", "countsketch"):
        fail(f"--hashing applies to --kind sjlt or countsketch only (got --kind {kind})")
    options = {k: v for k, v in (("nnz", nnz), ("hashing", hashing)) if v is not None}
    try:
        rows = load_rows(input)
        if dim >= rows.shape[1]:
            fail(f"--dim {dim} must be smaller than the input dimension r = {rows.shape[1]} (a sketch reduces dimension)")
        transform = make_sketch(kind, jax.random.key(seed), rows.shape[1], dim, **options)
        start = time.perf_counter()
        with tqdm(total=rows.shape[0], unit="row", desc=f"{kind} r={rows.shape[1]}→m={dim}", file=None) as bar:
            sketched = sketch_rows(transform, rows, chunk_size=chunk_size, progress=lambda done, total: bar.update(done - bar.n))
    except INPUT_ERRORS as err:
        fail(str(err))
    _write(out, "--out", lambda: save_npy_atomic(out, sketched))
    console.print(
        f"wrote {out} [{sketched.shape[0]}, {sketched.shape[1]}] ({kind}, seed {seed}) in {time.perf_counter() - start:.2f} s"
    )


class _SelectProgress:
    """What ``select`` shows while it works: a tqdm bar over rows while sketching, then
    a spinner (on a terminal) or one line per SkMM solve (in a log) for the selection."""

    def __init__(self, method: str, n: int, num: int, sketching: bool):
        self.method, self.n, self.num = method, n, num
        self.start = time.perf_counter()
        self.bar = None
        self.status = None
        if sketching:
            from tqdm import tqdm

            self.bar = tqdm(total=num, unit="row", desc="sketching")
        else:
            self._selecting()

    def _selecting(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.status is None and console.is_terminal:
            self.status = console.status(f"{self.method}: selecting {self.n} of {self.num} ...")
            self.status.start()

    def sketched(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done >= total:
                self._selecting()

    def solved(self, done: int, total: int) -> None:
        """SkMM's ``progress(solves_done, solves_total)``, between jitted solves."""
        self._selecting()
        elapsed = time.perf_counter() - self.start
        what = "bisection on c_S" if total > 1 else "at the given c_S"
        if done < total:
            text = f"skmm: solving the relaxation, {done}/{total} solves done ({what}), {elapsed:.0f} s"
        else:
            text = f"skmm: {total} solves done in {elapsed:.0f} s; drawing {self.n} of {self.num}"
        if self.status is not None:
            self.status.update(text)
        elif done > 0:
            console.print(text, highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.status is not None:
            self.status.stop()

    def __enter__(self) -> "_SelectProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@app.command()
def select(
    features: Path = typer.Option(..., "--features", help="[N, d] per-sample (sketched) gradients or features: .npy / .safetensors (memory-mapped) or .npz."),
    n: int = typer.Option(..., "--n", help="Coreset size, 0 < n <= N."),
    method: str = typer.Option(
        "skmm",
        help="skmm | uniform | herding | kcenter | adaptive | leverage | ridge-leverage | with --labels: el2n | grand | "
        "forgetting | entropy | margin | least-confidence | contextual-diversity",
    ),
    seed: int = _seed_option("Seed of every random choice (sketch, draws)."),
    out: Path = typer.Option(..., "--out", help="Output JSON (indices, method, n, seed, diagnostics), written atomically."),
    array: Optional[str] = typer.Option(None, help="Array name inside a .npz / .safetensors file holding several."),
    sketch_kind: Optional[str] = typer.Option(None, help="Sketch the features first with this kind (e.g. sjlt)."),
    sketch_dim: Optional[int] = typer.Option(None, min=1, help="Sketch dimension m, 0 < m < d (default 256 when --sketch-kind is given)."),
    c_s: Optional[float] = typer.Option(None, "--c-s", help="SkMM: moment-matching constant c_S > 0 (default: smallest feasible, by bisection)."),
    draw: Optional[str] = typer.Option(None, help="SkMM: greedy (default) | greedy-diagonal | swap | sample | top | balanced."),
    preprocess: Optional[str] = typer.Option(
        None, help="SkMM: the geometry moments are matched in: none | center | standardize | unit | center-unit | "
        "standardize-unit (default: standardize-unit, chosen on 7 real tasks; see docs/selection.md)."),
    ridge: Optional[float] = typer.Option(None, help="SkMM: ρ of the greedy draw, in units of one sample's top-direction moment (default 1.0)."),
    relax: Optional[bool] = typer.Option(
        None, "--relax/--no-relax", help="SkMM: solve the relaxation and its c_S bisection (default: only for draws that use it; "
        "the greedy draw does not)."),
    candidates: Optional[int] = typer.Option(
        None, help="SkMM: pre-filter for very large pools: the greedy picks among this many uniformly drawn rows, "
        "scored against the moments of all rows (needs the greedy draw without the relaxation)."),
    labels: Optional[Path] = typer.Option(None, help="[N] int labels .npy (DeepCore methods; SkMM draw=balanced)."),
) -> None:
    """Select n samples of a pool with SkMM or a baseline; write the indices as JSON.

    SkMM's default: rows standardized then scaled to unit length, the greedy draw without
    the relaxation (no solves). With --relax and the default c_S it solves its relaxation
    1 + 10 times (a bisection on c_S); on a large pool each solve can take a minute, and
    progress is shown per solve.
    """
    check_output_file(out, "--out")
    import jax

    from skmm_jax.common.io import load_array, save_json_atomic
    from skmm_jax.draw import DRAWS
    from skmm_jax.moments import PREPROCESSING
    from skmm_jax.select import METHODS
    from skmm_jax.select import select as run_select
    from skmm_jax.sketch import KINDS

    if n < 1:
        fail(f"--n {n}: the coreset size must satisfy 0 < n <= N (the number of rows of --features)")
    if method not in METHODS:
        fail(f"--method {method!r} is not one of {sorted(METHODS)}")
    if METHODS[method].needs_labels and labels is None:
        fail(f"--method {method} needs --labels: an [N] .npy of integer classes 0..C-1")
    options = {}
    skmm_options = {"c_s": c_s, "draw": draw, "preprocess": preprocess, "ridge": ridge, "relax": relax, "candidates": candidates}
    if method == "skmm":
        options = {k: v for k, v in skmm_options.items() if v is not None}
    elif any(v is not None for v in skmm_options.values()):
        fail("--c-s, --draw, --preprocess, --ridge, --relax and --candidates apply to --method skmm only")
    if preprocess is not None and preprocess not in PREPROCESSING:
        fail(f"--preprocess {preprocess!r} is not one of {', '.join(PREPROCESSING)}")
    if ridge is not None and not (math.isfinite(ridge) and ridge > 0):
        fail(f"--ridge {ridge}: ρ must be a positive finite number")
    if relax is False and draw not in (None, "greedy"):
        fail(f"--no-relax needs the greedy draw: --draw {draw} uses the relaxation's weights")
    if candidates is not None:
        if candidates < n:
            fail(f"--candidates {candidates} is smaller than --n {n}: the greedy picks the coreset among the candidates")
        if relax:
            fail("--candidates needs the draw without the relaxation; drop --relax (the relaxation weighs every row)")
        if draw not in (None, "greedy"):
            fail(f"--candidates needs the greedy draw; --draw {draw} uses the relaxation's weights")
        if c_s is not None:
            fail("--candidates needs the draw without the relaxation; drop --c-s (c_S constrains the relaxation)")
    if c_s is not None and not (math.isfinite(c_s) and c_s > 0):
        fail(f"--c-s {c_s}: c_S must be a positive finite number (omit --c-s for the smallest feasible c_S)")
    if draw is not None and draw not in DRAWS:
        fail(f"--draw {draw!r} is not one of {', '.join(DRAWS)}")
    if draw == "balanced" and labels is None:
        fail("--draw balanced needs --labels: an [N] .npy of integer classes 0..C-1")
    if sketch_kind is not None and sketch_kind not in KINDS:
        fail(f"--sketch-kind {sketch_kind!r}: unknown sketch kind; choose one of {', '.join(KINDS)}")
    if sketch_dim is not None and sketch_kind is None:
        fail("--sketch-dim needs --sketch-kind (which sketch to apply), e.g. --sketch-kind sjlt")
    if array is not None and features.suffix == ".npy":
        fail(f"--array {array!r} applies to .npz / .safetensors files; {features} is a .npy holding one array")
    if sketch_kind is not None and sketch_dim is None:
        sketch_dim = 256
    try:
        rows = load_array(features, name=array)
        if rows.ndim == 2 and n > rows.shape[0]:
            fail(f"--n {n}: the coreset size must satisfy 0 < n <= N = {rows.shape[0]} (the rows of {features})")
        if sketch_kind is not None and rows.ndim == 2 and sketch_dim >= rows.shape[1]:
            fail(f"--sketch-dim {sketch_dim} must be smaller than the feature dimension {rows.shape[1]}")
        label_array = load_array(labels) if labels is not None else None
        num = int(rows.shape[0]) if rows.ndim else 0
        start = time.perf_counter()
        with warnings.catch_warnings(), _SelectProgress(method, n, num, sketch_kind is not None) as shown:
            warnings.simplefilter("default")
            warnings.showwarning = _print_warning
            result = run_select(
                method, jax.random.key(seed), rows, n, labels=label_array,
                sketch_kind=sketch_kind, sketch_dim=sketch_dim,
                progress=shown.sketched, solve_progress=shown.solved, **options,
            )
        seconds = time.perf_counter() - start
    except INPUT_ERRORS as err:
        fail(str(err))
    payload = result.to_json(seed=seed, features=str(features), num_samples=int(rows.shape[0]), seconds=seconds)
    _write(out, "--out", lambda: save_json_atomic(out, payload))
    diag = result.diagnostics
    console.print(
        f"wrote {out}: {method} selected {n} of {rows.shape[0]} in {seconds:.2f} s; "
        f"subset coverage {diag['subset_coverage']:.3f}" + (f", c_S {diag['c_s']:.3f}" if "c_s" in diag else "")
    )
    if "candidates_requested" in diag:
        console.print(f"[yellow]note:[/yellow] --candidates {candidates} >= N = {rows.shape[0]}: no pre-filter, every row was a candidate")


@app.command()
def demo(
    samples: int = typer.Option(2048, min=1, help="Number of generated samples N."),
    sketch_dim: int = typer.Option(256, min=1, help="Sketch dimension m (a multiple of 4, for sjlt's 4 non-zeros)."),
    seed: int = _seed_option("Seed of the data, the network and the sketches."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON (atomically)."),
) -> None:
    """Sketch per-sample gradients of a small MLP with every kind; report what each preserves."""
    check_output_file(json_out, "--json")
    from skmm_jax.common.io import save_json_atomic
    from skmm_jax.experiments.demo import DemoConfig, run_demo

    try:
        cfg = DemoConfig(samples=samples, sketch_dim=sketch_dim, seed=seed)
    except ValueError as err:
        fail(str(err))
    console.print(
        f"per-sample gradients of an MLP ({cfg.input_dim}→{cfg.hidden}→1) on {cfg.samples} mixture samples, "
        f"sketched to m={cfg.sketch_dim} by every kind ..."
    )
    table = Table(title="JL sketches of per-sample gradients")
    for col in ("kind", "seconds", "mean ‖SΓ‖²/‖g‖²", "max |ratio−1|", "Gram rel. error", f"ε (top-{cfg.subspace_rank} subspace)"):
        table.add_column(col, justify="right")
    try:
        with console.status("sketching") as status:
            rows = run_demo(cfg, on_kind=lambda r: status.update(f"done {r.kind}"))
    except ValueError as err:
        message = str(err)  # run_demo names its sketch_dim when a kind cannot use it
        fail("--sketch-dim" + message[len("sketch_dim"):] if message.startswith("sketch_dim") else message)
    for r in rows:
        table.add_row(
            r.kind, f"{r.seconds:.3f}", f"{r.norm_ratio_mean:.3f}", f"{r.norm_ratio_max_dev:.3f}",
            f"{r.inner_product_error:.3f}", f"{r.subspace_distortion:.3f}",
        )
    Console().print(table)
    if json_out is not None:
        import dataclasses

        payload = {"config": dataclasses.asdict(cfg), "rows": [dataclasses.asdict(r) for r in rows]}
        _write(json_out, "--json", lambda: save_json_atomic(json_out, payload))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
