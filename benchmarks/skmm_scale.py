"""``skmm()`` at scale: wall time and memory against N, m, n, with and without the relaxation.

Synthetic low-rank pools (G = U diag(s) Wᵀ + 0.1·noise, rank 32, decaying s, generated
on device) of N rows and m columns; for each shape ``skmm(relax=False)`` (the greedy draw
only: what ``select`` runs by default) and, where it finishes in reasonable time,
``skmm(relax=True)`` (the c_S bisection, 1 + 10 relaxation solves, then the same greedy),
whose subsets are compared. The first call of every shape is the compile and is timed
apart.

Memory model of the greedy draw (f32): Z [N, m] in the spectrum (B = Z² is computed where
used, not stored) and the running A = Z K⁻¹ [N, m] in the loop: ≈ 8 N m bytes (N = 10⁶,
m = 512: 4.1 GB); a step reads Z and A and writes A, so it is memory-bound: time ≈ n ×
(≈ 4 N m flops, ≈ 12 N m bytes of traffic).

    python benchmarks/skmm_scale.py                    # the default grid (~5 min on 2 cores)
    python benchmarks/skmm_scale.py --sizes 100000 --dims 512 --budgets 500

Results: benchmarks/results/skmm_scale.{json,md}; the per-step cost extrapolates to N = 10⁶,
n = 10⁴ in the table (an estimate, not a run).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skmm_jax.io import save_json_atomic  # noqa: E402
from skmm_jax.select import SkMMConfig, skmm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RANK = 32


def low_rank_pool(key: jax.Array, num: int, dim: int) -> jax.Array:
    """[num, dim] float32 of rank-RANK signal with decaying spectrum plus small noise."""
    k1, k2, k3 = jax.random.split(key, 3)
    u = jax.random.normal(k1, (num, RANK), jnp.float32)
    w = jax.random.normal(k2, (dim, RANK), jnp.float32) / jnp.sqrt(dim)
    s = 1.0 / jnp.arange(1, RANK + 1, dtype=jnp.float32)
    return (u * s[None, :]) @ w.T + 0.1 * jax.random.normal(k3, (num, dim), jnp.float32) / jnp.sqrt(dim)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,20000,100000")
    parser.add_argument("--dims", default="128,512")
    parser.add_argument("--budgets", default="500")
    parser.add_argument("--relax-up-to", type=int, default=20000, help="also run relax=True for N up to this")
    args = parser.parse_args()
    rows = []
    for num in [int(x) for x in args.sizes.split(",")]:
        for dim in [int(x) for x in args.dims.split(",")]:
            pool = low_rank_pool(jax.random.key(0), num, dim)
            for n in [int(x) for x in args.budgets.split(",")]:
                key = jax.random.key(1)
                greedy = SkMMConfig(relax=False)
                first, _ = timed(lambda: skmm(key, pool, n, config=greedy)[0])
                seconds, fast = timed(lambda: skmm(key, pool, n, config=greedy)[0])
                row = {"N": num, "m": dim, "n": n, "greedy_seconds": seconds, "greedy_first_call_seconds": first,
                       "seconds_per_step": seconds / n, "model_bytes": 8 * num * dim,
                       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                if num <= args.relax_up_to:
                    timed(lambda: skmm(key, pool, n)[0])  # compile
                    relaxed_seconds, relaxed = timed(lambda: skmm(key, pool, n)[0])
                    row.update(relaxed_seconds=relaxed_seconds, same_subset=bool(np.array_equal(np.asarray(fast), np.asarray(relaxed))),
                               speedup=relaxed_seconds / seconds)
                rows.append(row)
                print(row, flush=True)
    # Extrapolation of the greedy's per-step cost (∝ N m) to N = 10⁶, m = 512, n = 10⁴.
    biggest = max(rows, key=lambda r: r["N"] * r["m"])
    per_nm = biggest["seconds_per_step"] / (biggest["N"] * biggest["m"])
    estimate = per_nm * 1e6 * 512 * 1e4
    payload = {"machine": f"{platform.machine()} CPU, {jax.device_count()} device(s), jax {jax.__version__}", "rows": rows,
               "estimate_1e6_512_1e4_seconds": estimate, "estimate_from": {k: biggest[k] for k in ("N", "m", "n")}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(RESULTS / "skmm_scale.json", payload)
    lines = ["# `skmm()` wall time (`benchmarks/skmm_scale.py`)", "", payload["machine"] + "; synthetic rank-32 pools; "
             "greedy = `relax=False` (select's default); relaxed = the c_S bisection (11 solves) + the same greedy.", "",
             "| N | m | n | greedy s | s / step | relaxed s | relaxed / greedy | same subset | model 8·N·m | peak RSS MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['m']} | {r['n']} | {r['greedy_seconds']:.2f} | {r['seconds_per_step'] * 1e3:.2f} ms | "
                     + (f"{r['relaxed_seconds']:.1f} | {r['speedup']:.1f}× | {r['same_subset']} | " if "relaxed_seconds" in r else "— | — | — | ")
                     + f"{r['model_bytes'] / 2**30:.2f} GiB | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Extrapolated greedy time at N = 10⁶, m = 512, n = 10⁴ from the N = {biggest['N']:,}, m = {biggest['m']} row "
              f"(per-step cost ∝ N m): {estimate / 60:.0f} min on this machine (an estimate, not a run)."]
    (RESULTS / "skmm_scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
