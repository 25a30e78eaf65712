"""The paper's synthetic experiment: data selection for high-dimensional ridge regression.

Pool: a Gaussian mixture, N = 2000 points in r = 2400 dimensions (r > N), K = 10
well-separated clusters of random, imbalanced sizes and random scales, each cluster
spread over its own d = 4 dimensional subspace (intrinsic dimension K(d + 1) = 50).
Targets y = xᵀθ* + σ ε. Each method picks n points; ridge regression is fitted on
them with α chosen by leave-one-out cross-validation on the coreset only; the metric
is the excess risk against the noiseless targets on the whole pool,
‖X(θ_S − θ*)‖²/N. The model is linear, so per-sample gradients are the rows of X.

Methods: every baseline (on the raw rows of X) and SkMM on sketched rows: the
default (full-matrix greedy draw) with several sketch kinds and dimensions, and at
m = 64 the other draw rules (diagonal greedy, swap, sampling ∝ p) with the default
c_S and, for sampling, fixed c_S = 1 and 0.5 (what the default c_S buys).

Part 2 (``--part speed``): seconds per solver iteration and total time of the
moment-matching solver for N up to 10⁶ at m = 256/512, next to a plain NumPy
implementation of the same update (centred Adam step + exact capped-simplex
projection) run in the same process.

    python benchmarks/synthetic_regression.py            # both parts (resumable)
    python benchmarks/synthetic_regression.py --part risk --seeds 8

Results: benchmarks/results/synthetic_regression.{json,md,png} and
benchmarks/results/solver_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skmm_jax.baselines import BASELINES  # noqa: E402
from skmm_jax.common.io import save_json_atomic  # noqa: E402
from skmm_jax.moments import sketched_spectrum  # noqa: E402
from skmm_jax.select import SkMMConfig, skmm  # noqa: E402
from skmm_jax.sketch import make_sketch, sketch_rows  # noqa: E402
from skmm_jax.solve import SolverConfig, solve_moment_matching  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NUM_SAMPLES, DIM, CLUSTERS, CLUSTER_RANK = 2000, 2400, 10, 4
SIZES = (20, 40, 80, 160, 320, 640, 1000)
ALPHAS = np.logspace(-6, 2, 17)
SKMM_VARIANTS = {  # name: (sketch kind, sketch dim, draw, c_S (None: default by bisection))
    "skmm (gaussian m=64)": ("gaussian", 64, "greedy", None),
    "skmm gaussian m=256": ("gaussian", 256, "greedy", None),
    "skmm sjlt m=64": ("sjlt", 64, "greedy", None),
    "skmm srht m=128": ("srht", 128, "greedy", None),
    "skmm m=64 greedy-diagonal": ("gaussian", 64, "greedy-diagonal", None),
    "skmm m=64 swap": ("gaussian", 64, "swap", None),
    "skmm m=64 sample": ("gaussian", 64, "sample", None),
    "skmm m=64 sample c_S=1": ("gaussian", 64, "sample", 1.0),
    "skmm m=64 sample c_S=0.5": ("gaussian", 64, "sample", 0.5),
}


def make_pool(seed: int, *, noise: float = 0.5, spread: float = 0.3, scales: tuple[float, float] = (0.3, 3.0)):
    """GMM pool: X [N, r] float32, targets y, noiseless f = Xθ*, cluster labels."""
    rng = np.random.default_rng(seed)
    weights = np.maximum(rng.dirichlet(np.full(CLUSTERS, 0.7)), 0.005)
    sizes = rng.multinomial(NUM_SAMPLES - CLUSTERS, weights / weights.sum()) + 1  # every cluster non-empty
    rows, labels = [], []
    for k, size in enumerate(sizes):
        scale = math.exp(rng.uniform(math.log(scales[0]), math.log(scales[1])))
        centre = rng.standard_normal(DIM)
        centre *= scale / np.linalg.norm(centre)  # random directions in R^2400: nearly orthogonal
        basis = rng.standard_normal((CLUSTER_RANK, DIM)) * (spread * scale / math.sqrt(DIM))
        rows.append(centre + rng.standard_normal((size, CLUSTER_RANK)) @ basis)
        labels += [k] * size
    order = rng.permutation(NUM_SAMPLES)
    x = np.concatenate(rows)[order]
    theta = rng.standard_normal(DIM)
    clean = x @ theta
    y = clean + noise * rng.standard_normal(NUM_SAMPLES)
    return x.astype(np.float32), y, clean, np.asarray(labels)[order]


def ridge_excess_risk(x: np.ndarray, y: np.ndarray, clean: np.ndarray, indices: np.ndarray) -> tuple[float, float]:
    """Ridge on the coreset (α by leave-one-out CV on the coreset, kernel form since n < r);
    returns (excess risk on the pool, α)."""
    xs = x[indices].astype(np.float64)
    ys = y[indices]
    evals, vecs = np.linalg.eigh(xs @ xs.T)
    evals = np.maximum(evals, 0.0)
    rotated = vecs.T @ ys
    best = (np.inf, ALPHAS[0])
    for alpha in ALPHAS:
        shrink = evals / (evals + alpha)
        fitted = vecs @ (shrink * rotated)
        leverage = (vecs**2) @ shrink
        loo = np.mean(((ys - fitted) / np.maximum(1.0 - leverage, 1e-12)) ** 2)
        best = min(best, (loo, alpha))
    alpha = best[1]
    theta = xs.T @ (vecs @ (rotated / (evals + alpha)))
    return float(np.mean((x.astype(np.float64) @ theta - clean) ** 2)), float(alpha)


def run_risk(seeds: int, out_json: Path, resume: bool) -> dict:
    done = json.loads(out_json.read_text()) if (resume and out_json.exists()) else {"rows": []}
    methods = list(BASELINES) + list(SKMM_VARIANTS)
    # Rows of methods no longer in the list (renamed or retired variants) are dropped.
    # SkMM rows are kept only if computed with the variant's current settings.
    rows = [
        r for r in done["rows"]
        if r["method"] in BASELINES or r["method"] == "full data"
        or (r["method"] in SKMM_VARIANTS and r.get("variant") == list(SKMM_VARIANTS[r["method"]]))
    ]
    finished = {(r["seed"], r["method"], r["n"]) for r in rows}
    for seed in range(seeds):
        x, y, clean, labels = make_pool(seed)
        sketched = {}
        for method in methods:
            for n in SIZES:
                if (seed, method, n) in finished:
                    continue
                key = jax.random.fold_in(jax.random.key(seed), n)
                start = time.perf_counter()
                diag = {}
                if method in BASELINES:
                    indices = np.asarray(BASELINES[method](key, jnp.asarray(x), n)[0])  # (indices, diagnostics)
                else:
                    kind, dim, draw, c_s = SKMM_VARIANTS[method]
                    if (kind, dim) not in sketched:
                        sketch = make_sketch(kind, jax.random.fold_in(jax.random.key(seed), 10_000), DIM, dim)
                        sketched[kind, dim] = sketch_rows(sketch, x)
                    indices, diag = skmm(key, sketched[kind, dim], n, config=SkMMConfig(draw=draw, c_s=c_s, preprocess="none", ridge=0.2, relax=True))
                    indices = np.asarray(indices)
                seconds = time.perf_counter() - start
                assert len(set(indices.tolist())) == n
                risk, alpha = ridge_excess_risk(x, y, clean, indices)
                clusters_hit = len(set(labels[indices].tolist()))
                rows.append({
                    "seed": seed, "method": method, "n": n, "excess_risk": risk, "alpha": alpha, "seconds": seconds,
                    "clusters_covered": clusters_hit,
                    **({"variant": list(SKMM_VARIANTS[method])} if method in SKMM_VARIANTS else {}),
                    **{k: diag[k] for k in ("c_s", "subset_coverage", "subset_matrix_coverage", "subset_variance",
                                            "relaxed_coverage", "solver_steps") if k in diag},
                })
                print(f"seed {seed} {method:28s} n={n:5d} risk {risk:9.4f} clusters {clusters_hit:2d} {seconds:6.2f}s", flush=True)
            save_json_atomic(out_json, {"rows": rows})
        full_risk, _ = ridge_excess_risk(x, y, clean, np.arange(NUM_SAMPLES)) if not any(
            r["seed"] == seed and r["method"] == "full data" for r in rows) else (None, None)
        if full_risk is not None:
            rows.append({"seed": seed, "method": "full data", "n": NUM_SAMPLES, "excess_risk": full_risk})
            save_json_atomic(out_json, {"rows": rows})
    return {"rows": rows}


def summarise_risk(rows: list[dict]) -> dict:
    table: dict[str, dict[int, dict]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        if method == "full data":
            continue
        for n in SIZES:
            risks = np.array([r["excess_risk"] for r in rows if r["method"] == method and r["n"] == n])
            if len(risks):
                table.setdefault(method, {})[n] = {
                    "mean": float(risks.mean()), "std": float(risks.std()), "median": float(np.median(risks)), "seeds": len(risks)}
    full = [r["excess_risk"] for r in rows if r["method"] == "full data"]
    return {"table": table, "full_data_mean": float(np.mean(full)) if full else None}


def write_risk_report(summary: dict, config: dict) -> None:
    table = summary["table"]
    lines = [
        "# Synthetic ridge regression: excess risk by method and coreset size",
        "",
        f"GMM pool N = {NUM_SAMPLES}, r = {DIM}, K = {CLUSTERS} clusters of rank {CLUSTER_RANK}; ridge with LOO-CV α on the coreset; "
        f"excess risk ‖X(θ_S − θ*)‖²/N, mean ± std (median) over {config['seeds']} seeds. Full-data ridge: "
        f"{summary['full_data_mean']:.4f}. Bold: lowest mean in the column.",
        "",
        "| method | " + " | ".join(f"n = {n}" for n in SIZES) + " |",
        "|---|" + "---:|" * len(SIZES),
    ]
    best = {n: min(table[m][n]["mean"] for m in table if n in table[m]) for n in SIZES}
    for method, cells in table.items():
        row = []
        for n in SIZES:
            c = cells.get(n)
            if c is None:
                row.append("")
                continue
            text = f"{c['mean']:.3f} ± {c['std']:.3f} ({c['median']:.3f})"
            row.append(f"**{text}**" if c["mean"] == best[n] else text)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    (RESULTS / "synthetic_regression.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Left: every baseline against SkMM's default draw with each sketch; right: SkMM's
    # draw rules and c_S against uniform. Distinct colours from tab20, dashed = baseline.
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colours = plt.get_cmap("tab20").colors
    drawn = [m for m in table if m.startswith("skmm m=64 ")]
    panels = ([m for m in table if m not in drawn], ["uniform", "skmm (gaussian m=64)", *drawn])
    titles = ("baselines vs SkMM (greedy draw) by sketch", "SkMM draw rules and c_S (m = 64)")
    for ax, methods, title in zip(axes, panels, titles):
        for index, method in enumerate(methods):
            cells = table.get(method, {})
            ns = [n for n in SIZES if n in cells]
            style = "-" if method.startswith("skmm") else "--"
            ax.plot(ns, [cells[n]["mean"] for n in ns], style, marker="o", ms=3, color=colours[index % 20], label=method)
        if summary["full_data_mean"]:
            ax.axhline(summary["full_data_mean"], color="k", lw=0.8, ls=":", label="full data")
        ax.set(xscale="log", yscale="log", xlabel="coreset size n", title=title)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"excess risk, mean over seeds (N={NUM_SAMPLES}, r={DIM})")
    fig.tight_layout()
    fig.savefig(RESULTS / "synthetic_regression.png", dpi=120)


# ---------------------------------------------------------------- solver speed


def numpy_projection(x: np.ndarray, total: float, iterations: int = 40) -> np.ndarray:
    lo, hi = x.min() - 1.0, x.max()
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if np.clip(x - mid, 0.0, 1.0).sum() > total:
            lo = mid
        else:
            hi = mid
    tau = 0.5 * (lo + hi)
    for _ in range(2):
        shifted = x - tau
        free = (shifted > 0) & (shifted < 1)
        if free.any():
            tau = (x[free].sum() + (shifted >= 1).sum() - total) / free.sum()
    return np.clip(x - tau, 0.0, 1.0)


def numpy_solver(moments: np.ndarray, eigenvalues: np.ndarray, n: int, coverage: float, steps: int, lr: float = 1e-2) -> np.ndarray:
    """The same centred-Adam + projection update in NumPy (relative weighting)."""
    num = moments.shape[0]
    weights = 1.0 / eigenvalues**2
    q = np.full(num, n / num, np.float32)
    mu = np.zeros_like(q)
    nu = np.zeros_like(q)
    for t in range(1, steps + 1):
        shortfall = np.maximum(coverage * eigenvalues - (q @ moments) / n, 0.0)
        grad = -(2.0 / n) * (moments @ (weights * shortfall))
        grad -= grad.mean()
        mu = 0.9 * mu + 0.1 * grad
        nu = 0.999 * nu + 0.001 * grad * grad
        step = lr * (mu / (1 - 0.9**t)) / (np.sqrt(nu / (1 - 0.999**t)) + 1e-8)
        q = numpy_projection(q - step, n)
    return q / n


def run_speed(out_json: Path, sizes: list[int], dims: list[int], steps: int) -> dict:
    rows = []
    rng = np.random.default_rng(0)
    for num in sizes:
        for dim in dims:
            g = rng.standard_normal((num, dim), dtype=np.float32) * np.linspace(2.0, 0.1, dim, dtype=np.float32)[None, :]
            spec = sketched_spectrum(g)
            del g
            n = max(num // 20, 1)
            cfg = SolverConfig(optimizer="adam", weighting="relative", max_steps=steps, tol=0.0)
            solve_moment_matching(spec, jnp.float32(1.05), n, cfg).p.block_until_ready()  # compile
            start = time.perf_counter()
            solve_moment_matching(spec, jnp.float32(1.05), n, cfg).p.block_until_ready()
            jax_total = time.perf_counter() - start
            moments = np.asarray(spec.moments)
            lam = np.asarray(spec.eigenvalues)
            np_steps = max(2, min(steps, int(2e9 // (num * dim))))  # keep NumPy under a few minutes
            start = time.perf_counter()
            numpy_solver(moments, lam, n, 1.05, np_steps)
            np_total = time.perf_counter() - start
            row = {
                "N": num, "m": dim, "n": n, "steps": steps,
                "jax_s_per_iter": jax_total / steps, "jax_total_s": jax_total,
                "numpy_s_per_iter": np_total / np_steps, "numpy_steps": np_steps,
                "numpy_over_jax": (np_total / np_steps) / (jax_total / steps),
                "moments_bytes": int(moments.nbytes),
            }
            rows.append(row)
            print(row, flush=True)
            del moments, spec
    result = {"rows": rows, "platform": platform.platform(), "jax": jax.__version__, "device": str(jax.devices()[0])}
    save_json_atomic(out_json, result)
    lines = [
        "# Moment-matching solver: seconds per iteration, JAX vs NumPy (same update, same process)",
        "",
        f"Centred Adam step + exact capped-simplex projection (40 bisection steps + exact refinement), "
        f"relative weighting, {jax.devices()[0].platform} ({platform.machine()}), jax {jax.__version__}.",
        "",
        "| N | m | JAX s/iter | JAX total (iters) | NumPy s/iter | NumPy / JAX |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['m']} | {r['jax_s_per_iter']:.4f} | {r['jax_total_s']:.2f} s ({r['steps']}) | "
                     f"{r['numpy_s_per_iter']:.4f} | {r['numpy_over_jax']:.1f}× |")
    (RESULTS / "solver_speed.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["risk", "speed", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--fresh", action="store_true", help="ignore partial results and start over")
    parser.add_argument("--speed-sizes", default="2000,16000,100000,1000000")
    parser.add_argument("--speed-dims", default="256,512")
    parser.add_argument("--speed-steps", type=int, default=50)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part in ("risk", "all"):
        out = RESULTS / "synthetic_regression.json"
        data = run_risk(args.seeds, out, resume=not args.fresh)
        summary = summarise_risk(data["rows"])
        config = {"seeds": args.seeds, "sizes": SIZES, "skmm_variants": SKMM_VARIANTS, "N": NUM_SAMPLES, "r": DIM,
                  "clusters": CLUSTERS, "cluster_rank": CLUSTER_RANK, "alphas": ALPHAS.tolist()}
        save_json_atomic(out, {"rows": data["rows"], "summary": summary, "config": config})
        write_risk_report(summary, config)
    if args.part in ("speed", "all"):
        run_speed(RESULTS / "solver_speed.json",
                  [int(s) for s in args.speed_sizes.split(",")], [int(s) for s in args.speed_dims.split(",")], args.speed_steps)


if __name__ == "__main__":
    main()
