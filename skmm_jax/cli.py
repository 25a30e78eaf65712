"""``skmm-jax``: a thin command line over the library.

A flag maps to a library argument or config field; the library owns the defaults
(``SkMMConfig``) and the validation, and its ValueError comes back as one line naming
the flag (``fail_config``). What is checked here is only what the library cannot
know: the output path (before any work), the files to read, and which flags apply to
which command. Every user error is one line on stderr with exit code 2, never a
traceback.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from skmm_jax.common.cli import check_output_file, fail, fail_config, flags_of, progress_bar, run_app
from skmm_jax.draw import DRAW_RULES
from skmm_jax.moments import AUTO_RIDGE_DIRECTIONS_PER_PICK, AUTO_RIDGE_RANGE, PREPROCESSING
from skmm_jax.select import AUTO_CANDIDATES_RULE, SkMMConfig
from skmm_jax.sketch.make import SKETCH_KINDS

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sketchy Moment Matching data selection in JAX.")
console = Console(stderr=True)

SEED_MAX = 2**32 - 1  # jax.random.key(seed) keeps only the low 32 bits: 2**32 would be seed 0 again
INPUT_ERRORS = (TypeError, FileNotFoundError)  # ValueErrors go through fail_config
SKETCH_FLAGS = flags_of(("kind", "nnz", "hashing", "chunk_size"))
DEFAULT = SkMMConfig()  # the library's SkMM defaults, quoted in the help
SKMM_FLAGS = ("c_s", "draw", "preprocess", "ridge", "relax", "candidates", "gradients", "num_pseudo_classes", "gradient_head")
DEMO_FLAGS = flags_of(("samples", "sketch_dim", "seed"))
SELECT_FLAGS = flags_of((*SKMM_FLAGS, "n", "method", "labels", "sketch_kind", "sketch_dim"), **{"relax=False": "--no-relax"})


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
    kind: str = typer.Option("sjlt", help=" | ".join(SKETCH_KINDS)),
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

    from skmm_jax.common.io import load_rows, save_npy_atomic
    from skmm_jax.sketch import make_sketch, sketch_rows
    from skmm_jax.sketch.make import check_options, sketch_kind

    options = {k: v for k, v in (("nnz", nnz), ("hashing", hashing)) if v is not None}
    try:
        check_options(sketch_kind(kind), options)  # before reading the input
        rows = load_rows(input)
        if dim >= rows.shape[1]:
            fail(f"--dim {dim} must be smaller than the input dimension r = {rows.shape[1]} (a sketch reduces dimension)")
        transform = make_sketch(kind, jax.random.key(seed), rows.shape[1], dim, **options)
        start = time.perf_counter()
        with progress_bar(f"{kind} r={rows.shape[1]}→m={dim}", unit="row", total=rows.shape[0]) as progress:
            sketched = sketch_rows(transform, rows, chunk_size=chunk_size, progress=progress)
    except ValueError as err:
        fail_config(err, SKETCH_FLAGS)
    except INPUT_ERRORS as err:
        fail(str(err))
    _write(out, "--out", lambda: save_npy_atomic(out, sketched))
    console.print(
        f"wrote {out} [{sketched.shape[0]}, {sketched.shape[1]}] ({kind}, seed {seed}) in {time.perf_counter() - start:.2f} s"
    )


class _SelectProgress:
    """What ``select`` shows while it works: a progress bar over rows while sketching,
    then a spinner (on a terminal) or one line per SkMM solve (in a log) for the selection."""

    def __init__(self, method: str, n: int, num: int, sketching: bool):
        self.method, self.n, self.num = method, n, num
        self.start = time.perf_counter()
        self.bar = contextlib.ExitStack()
        self.rows_done = self.bar.enter_context(progress_bar("sketching", unit="row", total=num)) if sketching else None
        self.status = None
        if not sketching:
            self._selecting()

    def _selecting(self) -> None:
        self.bar.close()
        self.rows_done = None
        if self.status is None and console.is_terminal:
            self.status = console.status(f"{self.method}: selecting {self.n} of {self.num} ...")
            self.status.start()

    def sketched(self, done: int, total: int) -> None:
        if self.rows_done is not None:
            self.rows_done(done, total)
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

    def __enter__(self) -> "_SelectProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.status is not None:
            self.status.stop()


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
    sketch_kind: Optional[str] = typer.Option(None, help=f"Sketch the features first with this kind: {' | '.join(SKETCH_KINDS)}."),
    sketch_dim: Optional[int] = typer.Option(None, min=1, help="Sketch dimension m, 0 < m < d (default 256 when --sketch-kind is given)."),
    c_s: Optional[float] = typer.Option(None, "--c-s", help="SkMM: moment-matching constant c_S > 0 (default: smallest feasible, by bisection)."),
    draw: Optional[str] = typer.Option(None, help=f"SkMM: {' | '.join(DRAW_RULES)} (default {DEFAULT.draw}; balanced needs --labels)."),
    preprocess: Optional[str] = typer.Option(
        None, help=f"SkMM: the geometry moments are matched in: {' | '.join(PREPROCESSING)} "
        f"(default: {DEFAULT.preprocess}, chosen on 7 real tasks; see docs/selection.md)."),
    ridge: Optional[str] = typer.Option(
        None, help="SkMM: ρ of the greedy draw, in units of one sample's top-direction moment, or auto: from the pool's "
        f"spectrum and n (the ρ at which the coreset covers {AUTO_RIDGE_DIRECTIONS_PER_PICK:g}·n directions, clipped to "
        f"{list(AUTO_RIDGE_RANGE)}) (default {DEFAULT.ridge})."),
    relax: Optional[bool] = typer.Option(
        None, "--relax/--no-relax", help="SkMM: solve the relaxation and its c_S bisection (default: only for draws that use it; "
        "the greedy draw does not)."),
    candidates: Optional[str] = typer.Option(
        None, help="SkMM: the greedy picks the coreset among this many candidate rows (half of largest leverage, half drawn "
        f"uniformly), scored against the moments of all rows. auto (default): {AUTO_CANDIDATES_RULE}, every row "
        "for pools whose exact greedy is cheap; all: every row (the exact greedy); or a count >= n. The pre-filter needs the "
        "greedy draw without the relaxation (with it every row is a candidate)."),
    gradients: Optional[str] = typer.Option(
        None, help="SkMM: given (default: the rows as they are) | pseudo-label: the rows are a linear probe's features; "
        "match the per-sample gradients of a linear head with k-means pseudo-labels instead (label-free)."),
    num_pseudo_classes: Optional[int] = typer.Option(
        None, help="SkMM --gradients pseudo-label: k of the k-means pseudo-labels (default: round(sqrt(N/20)) in [2, 32]; "
        "pass the number of classes when known)."),
    gradient_head: Optional[str] = typer.Option(
        None, help="SkMM --gradients pseudo-label: the head the gradient is taken at: zero (default) | fitted (to the clusters)."),
    labels: Optional[Path] = typer.Option(None, help="[N] int labels .npy (DeepCore methods; SkMM draw=balanced, or draw=greedy-quota: groups, e.g. clusters)."),
) -> None:
    """Select n samples of a pool with SkMM or a baseline; write the indices as JSON.

    SkMM's default: rows standardized then scaled to unit length, the greedy draw without
    the relaxation (no solves), on large pools among an automatic number of candidate
    rows (--candidates all: every row). With --relax and the default c_S it solves its relaxation
    1 + 10 times (a bisection on c_S); on a large pool each solve can take a minute, and
    progress is shown per solve.
    """
    check_output_file(out, "--out")
    import jax

    from skmm_jax.common.io import load_array, save_json_atomic
    from skmm_jax.select import METHODS, skmm_config
    from skmm_jax.select import select as run_select
    from skmm_jax.sketch.make import sketch_kind as registered_kind

    if method not in METHODS:
        fail(f"--method {method!r} is not one of {sorted(METHODS)}")
    if candidates is not None and candidates.strip().isdigit():
        candidates = int(candidates)  # a count; anything else goes to SkMMConfig, which names what is valid
    if ridge is not None and ridge.strip() != "auto":
        try:
            ridge = float(ridge)
        except ValueError:
            fail(f"--ridge {ridge!r}: give auto or a positive number")
    values = (c_s, draw, preprocess, ridge, relax, candidates, gradients, num_pseudo_classes, gradient_head)
    given = {k: v for k, v in zip(SKMM_FLAGS, values) if v is not None}
    if given and method != "skmm":
        fail(f"{', '.join(SELECT_FLAGS[k] for k in given)}: apply to --method skmm only")
    if array is not None and features.suffix == ".npy":
        fail(f"--array {array!r} applies to .npz / .safetensors files; {features} is a .npy holding one array")
    if sketch_kind is not None and sketch_dim is None:
        sketch_dim = 256
    try:
        if method == "skmm":
            skmm_config(given)  # the library's checks of the SkMM flags, before reading anything
        if sketch_kind is not None:
            registered_kind(sketch_kind, name="sketch_kind")
        rows = load_array(features, name=array)
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
                progress=shown.sketched, solve_progress=shown.solved, **given,
            )
        seconds = time.perf_counter() - start
    except ValueError as err:
        fail_config(err, SELECT_FLAGS)
    except INPUT_ERRORS as err:
        fail(str(err))
    payload = result.to_json(seed=seed, features=str(features), num_samples=int(rows.shape[0]), seconds=seconds)
    _write(out, "--out", lambda: save_json_atomic(out, payload))
    diag = result.diagnostics
    console.print(
        f"wrote {out}: {method} selected {n} of {rows.shape[0]} in {seconds:.2f} s; "
        f"subset coverage {diag['subset_coverage']:.3f}" + (f", c_S {diag['c_s']:.3f}" if "c_s" in diag else "")
    )
    if diag.get("candidates", rows.shape[0]) < rows.shape[0]:
        rule = f"auto: {AUTO_CANDIDATES_RULE}" if diag.get("candidates_auto") else "--candidates"
        console.print(f"the greedy picked among {diag['candidates']:,} candidate rows of {rows.shape[0]:,} ({rule}); "
                      "--candidates all for the exact greedy over every row", highlight=False)
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
        fail_config(err, DEMO_FLAGS)
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
    except ValueError as err:  # run_demo names its sketch_dim when a kind cannot use it
        fail_config(err, DEMO_FLAGS)
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
