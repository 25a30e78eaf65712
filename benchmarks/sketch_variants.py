"""Every sketch kind against numpy and scikit-learn, with the read-once floor, in one run.

For each shape (N, r, m), G [N, r] is generated as low-rank gradients plus noise
(G = Z W / √k + 0.1 E, rank k = 32), like per-sample gradients with a low intrinsic
dimension. For every method we record:

* ``seconds``: median wall time of G ↦ GΓ after compilation / fitting;
* ``extra_bytes``: memory beyond the input — XLA's temp + output buffers for JAX
  (``compiled.memory_analysis()``), the tracemalloc peak for numpy / scikit-learn
  (which includes their materialised Γ);
* ``subspace_eps``: distortion ε of the rank-k row space of W (all singular values
  of QΓ in [√(1−ε), √(1+ε)]);
* ``inner_product_error``: ‖SSᵀ − GGᵀ‖_F / ‖GGᵀ‖_F on 256 rows of G.

The floor is the time to read G once (a row-sum reduction). Peers: numpy's dense
Gaussian matmul (Γ materialised), scikit-learn's GaussianRandomProjection and
SparseRandomProjection (default density 1/√r, and density s/m = the SJLT's non-zeros).

    python benchmarks/sketch_variants.py            # all four shapes (~20 min on 2 cores)
    python benchmarks/sketch_variants.py --quick    # small shapes, a smoke run
    python benchmarks/sketch_variants.py --resume   # keep completed shapes, run the rest

Writes benchmarks/results/sketch_variants.{json,md,png} (atomically, after every method).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.common.io import save_json_atomic
from skmm_jax.sketch import SKETCH_KINDS, make_sketch
from skmm_jax.sketch.quality import inner_product_error, subspace_distortion

RESULTS = Path(__file__).parent / "results"
SHAPES = [(4096, 10_000, 512), (4096, 100_000, 512), (1024, 1_000_000, 512), (1024, 1_000_000, 128)]
QUICK_SHAPES = [(512, 10_000, 128), (256, 100_000, 128)]
RANK = 32
SJLT_NNZ = 4


def _jax_methods() -> list[tuple[str, str, dict]]:
    """(row name, kind, options): every registered kind with its default options (sjlt
    with SJLT_NNZ), then the textbook-hash variant of each kind that takes ``hashing``."""
    base = [(name, name, {"nnz": SJLT_NNZ} if "nnz" in entry.options else {}) for name, entry in SKETCH_KINDS.items()]
    hashed = [(f"{name}-uniform", name, {**options, "hashing": "uniform"}) for name, _, options in base if "hashing" in SKETCH_KINDS[name].options]
    last_hashed = max((i for i, (name, _, _) in enumerate(base) if "hashing" in SKETCH_KINDS[name].options), default=len(base) - 1)
    return base[: last_hashed + 1] + hashed + base[last_hashed + 1 :]


JAX_METHODS = _jax_methods()


def timed(fn, repeats: int) -> tuple[float, int]:
    """Median seconds of fn() over repeats (one repeat if a call takes > 5 s)."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if times[-1] > 5.0:
            break
    return statistics.median(times), len(times)


def make_data(key: jax.Array, n: int, r: int) -> tuple[jax.Array, np.ndarray]:
    """G = Z W/√k + 0.1 E and Q, an orthonormal basis [k, r] of W's row space.

    Rows are generated 64 at a time (lax.map) so the only large buffer is G itself.
    """
    kz, kw, ke = jax.random.split(key, 3)
    w = jax.random.normal(kw, (RANK, r), jnp.float32)
    z = jax.random.normal(kz, (n, RANK), jnp.float32)

    def rows(i):
        z_i = jax.lax.dynamic_slice_in_dim(z, i * 64, 64)
        noise = jax.random.normal(jax.random.fold_in(ke, i), (64, r), jnp.float32)
        return z_i @ w * (1.0 / np.sqrt(RANK)) + 0.1 * noise

    g = jax.jit(lambda: jax.lax.map(rows, jnp.arange(n // 64)).reshape(n, r))()
    q = np.linalg.qr(np.asarray(w, np.float64).T)[0].T.astype(np.float32)  # [k, r]
    return g.block_until_ready(), q


DRAWS = 3  # independent transforms the quality numbers are averaged over


def quality(draws: list[tuple[np.ndarray, np.ndarray]], g_probe: np.ndarray) -> dict:
    """Mean ε and Gram error over draws of (sketched probe rows, sketched basis)."""
    eps = [subspace_distortion(basis) for _, basis in draws]
    ip = [inner_product_error(g_probe, probe) for probe, _ in draws]
    return {"subspace_eps": float(np.mean(eps)), "inner_product_error": float(np.mean(ip)), "draws": len(draws)}


def bench_jax(name, kind, options, key, g, q, m, repeats):
    r = g.shape[1]
    build = lambda k: make_sketch(kind, k, r, m, **options)  # noqa: E731
    sketch = build(key)
    apply = jax.jit(lambda s, x: s(x))
    compiled = apply.lower(sketch, g).compile()
    mem = compiled.memory_analysis()
    compiled(sketch, g).block_until_ready()
    seconds, done = timed(lambda: compiled(sketch, g).block_until_ready(), repeats)
    row = {
        "method": name,
        "family": "ours",
        "seconds": seconds,
        "repeats": done,
        "extra_bytes": int(mem.temp_size_in_bytes + mem.output_size_in_bytes),
    }
    probe, basis = g[:256], jnp.asarray(q)
    draws = []
    for i in range(DRAWS):
        draw = build(jax.random.fold_in(key, i))
        draws.append((np.asarray(apply(draw, probe)), np.asarray(apply(draw, basis))))
    row.update(quality(draws, np.asarray(probe)))
    return row


def bench_peer(name, make_transform, g_np, q, repeats):
    """make_transform(seed) -> callable X -> XΓ; its setup (drawing Γ) is not timed."""
    tracemalloc.start()
    transform = make_transform(0)
    transform(g_np[:2])
    tracemalloc.reset_peak()
    out = transform(g_np)
    extra = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    seconds, done = timed(lambda: transform(g_np), repeats)
    row = {"method": name, "family": "peer", "seconds": seconds, "repeats": done, "extra_bytes": int(extra)}
    del out, transform
    draws = []
    for seed in range(DRAWS):
        transform = make_transform(seed)
        draws.append((np.asarray(transform(g_np[:256])), np.asarray(transform(q))))
        del transform
    row.update(quality(draws, g_np[:256]))
    return row


def peers(g_np: np.ndarray, m: int):
    from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

    r = g_np.shape[1]
    fit_on = np.array(g_np[:2])  # a copy: a view would keep G alive after the shape is done

    def numpy_gaussian(seed):
        gamma = np.random.default_rng(seed).standard_normal((r, m), dtype=np.float32) * np.float32(1 / np.sqrt(m))
        return lambda x: x @ gamma

    def sklearn(cls, **kw):
        def make(seed):
            est = cls(n_components=m, random_state=seed, **kw).fit(fit_on)
            return est.transform

        return make

    return [
        ("numpy-gaussian", numpy_gaussian),
        ("sklearn-gaussian", sklearn(GaussianRandomProjection)),
        ("sklearn-sparse", sklearn(SparseRandomProjection, dense_output=True)),
        (f"sklearn-sparse-d{SJLT_NNZ}/m", sklearn(SparseRandomProjection, density=SJLT_NNZ / m, dense_output=True)),
    ]


def write_outputs(payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(RESULTS / "sketch_variants.json", payload)
    lines = [
        "# Sketch variants",
        "",
        f"Command: `{payload['command']}` · {payload['machine']} · jax {payload['jax']} · {payload['date']}",
        "",
        "Time is the median wall time of G ↦ GΓ; ×floor = time / (time to read G once). "
        "Extra memory is beyond the input G. ε: subspace-embedding distortion of a rank-32 "
        "row space; IP err: relative Frobenius error of the Gram matrix of 256 rows.",
        "",
    ]
    for shape in payload["shapes"]:
        n, r, m = shape["N"], shape["r"], shape["m"]
        lines += [
            f"## N = {n}, r = {r:,}, m = {m} (floor: {shape['floor_seconds']:.3f} s to read {n * r * 4 / 2**30:.2f} GiB)",
            "",
            "| method | seconds | ×floor | extra memory (MiB) | ε | IP err |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in shape["rows"]:
            lines.append(
                f"| {row['method']}{'' if row['family'] == 'ours' else ' (peer)'} | {row['seconds']:.3f} | "
                f"{row['seconds'] / shape['floor_seconds']:.1f} | {row['extra_bytes'] / 2**20:.0f} | "
                f"{row['subspace_eps']:.3f} | {row['inner_product_error']:.3f} |"
            )
        lines.append("")
    text = "\n".join(lines)
    tmp = RESULTS / ".sketch_variants.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, RESULTS / "sketch_variants.md")
    plot(payload)


def plot(payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    shapes = [s for s in payload["shapes"] if s["m"] == max(x["m"] for x in payload["shapes"])]
    if len(shapes) < 2:
        plt.close(fig)
        return
    methods = [row["method"] for row in shapes[0]["rows"]]
    for method in methods + ["floor"]:
        xs, ys = [], []
        for s in shapes:
            sec = s["floor_seconds"] if method == "floor" else next((r["seconds"] for r in s["rows"] if r["method"] == method), None)
            if sec is not None:
                xs.append(s["r"])
                ys.append(1000.0 * sec / s["N"] * 1000)  # ms per 1000 rows
        peer = method.startswith(("numpy", "sklearn"))
        style = dict(ls="--", marker="s") if peer else dict(ls="-", marker="o")
        if method == "floor":
            style = dict(ls=":", color="black", marker="")
        ax.plot(xs, ys, label=method, **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input dimension r")
    ax.set_ylabel("ms per 1000 rows (median)")
    ax.set_title(f"Sketching G [N, r] → [N, {shapes[0]['m']}] on {payload['machine']}")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    tmp = RESULTS / ".sketch_variants.png.tmp"
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, RESULTS / "sketch_variants.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="keep shapes already complete in the results file")
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    done_shapes = []
    if args.resume and (RESULTS / "sketch_variants.json").is_file():
        previous = json.loads((RESULTS / "sketch_variants.json").read_text())
        expected = len(JAX_METHODS) + 4
        done_shapes = [s for s in previous["shapes"] if len(s["rows"]) == expected]
    payload = {
        "command": "python benchmarks/sketch_variants.py" + (" --quick" if args.quick else ""),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, backend {jax.default_backend()}",
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "rank": RANK,
        "sjlt_nnz": SJLT_NNZ,
        "shapes": list(done_shapes),
    }
    key = jax.random.key(args.seed)
    for n, r, m in shapes:
        if any((s["N"], s["r"], s["m"]) == (n, r, m) for s in done_shapes):
            print(f"N={n} r={r} m={m}: kept from the previous run (--resume)")
            continue
        g, q = make_data(jax.random.fold_in(key, r), n, r)
        floor_fn = jax.jit(lambda x: jnp.sum(x, axis=1))
        floor_fn(g).block_until_ready()
        floor, _ = timed(lambda: floor_fn(g).block_until_ready(), max(args.repeats, 5))
        entry = {"N": n, "r": r, "m": m, "floor_seconds": floor, "rows": []}
        payload["shapes"].append(entry)
        print(f"\nN={n} r={r} m={m}: floor {floor:.3f} s", flush=True)
        for name, kind, options in JAX_METHODS:
            row = bench_jax(name, kind, options, jax.random.fold_in(key, 1), g, q, m, args.repeats)
            entry["rows"].append(row)
            print(f"  {name:24s} {row['seconds']:8.3f} s  ×{row['seconds'] / floor:6.1f}  eps {row['subspace_eps']:.3f}  ip {row['inner_product_error']:.3f}", flush=True)
            write_outputs(payload)
        g_np = np.asarray(g)
        for name, make in peers(g_np, m):
            row = bench_peer(name, make, g_np, q, args.repeats)
            entry["rows"].append(row)
            print(f"  {name:24s} {row['seconds']:8.3f} s  ×{row['seconds'] / floor:6.1f}  eps {row['subspace_eps']:.3f}  ip {row['inner_product_error']:.3f}", flush=True)
            write_outputs(payload)
        del g, g_np, make, row
    print(f"\nwrote {RESULTS / 'sketch_variants.json'}, .md, .png", file=sys.stderr)


if __name__ == "__main__":
    main()
