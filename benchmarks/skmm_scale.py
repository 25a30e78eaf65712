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

Three parts, each rewriting its own section of the results (the others are kept):

    python benchmarks/skmm_scale.py                    # select: the default grid (~5 min on 2 cores)
    python benchmarks/skmm_scale.py --sizes 100000 --dims 512 --budgets 500
    python benchmarks/skmm_scale.py --part prefilter   # the candidate pre-filter: quality vs |C|, and N = 10⁶
    python benchmarks/skmm_scale.py --part grads       # LM per-sample gradients, factored vs materialised
    python benchmarks/skmm_scale.py --part auto        # the automatic candidate count: rule, objective vs exact (~8 min)
    python benchmarks/skmm_scale.py --part auto-scale  # `skmm-jax select` defaults on 200,000 × 512, n = 2,000 (~3 min)
    python benchmarks/skmm_scale.py --part auto-exact  # the same with --candidates all, the reference (~13 min; once)
    python benchmarks/skmm_scale.py --part auto-filter # the pre-filter's rows there: uniform vs half by leverage (~5 min)

Pre-filter (``SkMMConfig(candidates=c)``): the greedy picks among c uniformly drawn rows,
scored against the full pool's spectrum; quality is the greedy's own objective, the
sketched variance tr(Λ(Z_SᵀZ_S + ρI)⁻¹) of the returned subset on the FULL spectrum,
relative to the all-candidates greedy, and the full-matrix coverage 1/c_S(S). Memory
model with the pre-filter: Z [N, m] plus A [c, m] (f32): 4 N m + 4 c m bytes.

Automatic candidate count (``SkMMConfig()``'s ``candidates="auto"``, ``select.auto_candidates``:
c = min(N, max(16 n, ⌊2³³/(n m)⌋))): its values on a grid of (N, n, m); on a 50,000 × 512
pool with the select defaults, the greedy's objective V(S) = tr(Λ(Z_SᵀZ_S + ρI)⁻¹) of the
auto subset (and of 8 n and 32 n candidates, the neighbours of the rule's 16 n) relative
to the exact greedy (``candidates="all"``), per n; and ``skmm-jax select --features
pool.npy --n 2000`` with no options on a 200,000 × 512 pool, wall time and peak RSS of the
process (``/usr/bin/time``), next to the same command with ``--candidates all``; on that
pool, the objective with c uniform candidates (the filter before the leverage half) and
with ``select.candidate_rows``' half by leverage, against the exact run's.

Per-sample gradients: SmolLM2-135M (the shipped model, float32) on rows of T + 1 random
token ids (the cost does not depend on the ids), trainable = the last 2 blocks (r ≈ 7.1 M)
or LoRA rank 8 on q, v, o, gate, up, down of all 30 blocks (r ≈ 2.2 M), a
``make_pytree_sketch("kronecker", split=kernel_inputs)`` sketch of m = 256; samples/s
and the compiled per-chunk temporary memory (``memory_analysis().temp_size_in_bytes``
of the jitted chunk step), factored (``factored=True``) vs materialised (vmap(grad),
then the same sketch). Memory model per chunk of B: materialised ≈ B · (4 r + the
activations); factored ≈ B · the activations (T · widths), independent of r.

Results: benchmarks/results/skmm_scale.{json,md}; the per-step cost extrapolates to N = 10⁶,
n = 10⁴ in the table (an estimate, not a run) next to the pre-filter's measured run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skmm_jax.common.io import save_json_atomic  # noqa: E402
from skmm_jax.select import SkMMConfig, skmm  # noqa: E402

# The pools are sketched gradients as given, with the greedy's ρ of the theory's setting
# (what these numbers were measured with): not SkMMConfig()'s select defaults.
RAW = {"preprocess": "none", "ridge": 0.2}

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


SECTION_KEYS = {"select": ("rows", "estimate_1e6_512_1e4_seconds", "estimate_from"), "prefilter": ("prefilter",), "grads": ("grads",),
                "grads-wide": ("grads_wide",), "auto": ("auto",), "auto-scale": ("auto_scale",), "auto-exact": ("auto_exact",),
                "auto-filter": ("auto_filter",)}


def machine() -> str:
    return f"{platform.machine()} CPU, {jax.device_count()} device(s), jax {jax.__version__}"


def select_part(args) -> dict:
    rows = []
    for num in [int(x) for x in args.sizes.split(",")]:
        for dim in [int(x) for x in args.dims.split(",")]:
            pool = low_rank_pool(jax.random.key(0), num, dim)
            for n in [int(x) for x in args.budgets.split(",")]:
                key = jax.random.key(1)
                greedy = SkMMConfig(**RAW, relax=False, candidates="all")  # the greedy over every row
                first, _ = timed(lambda: skmm(key, pool, n, config=greedy)[0])
                seconds, fast = timed(lambda: skmm(key, pool, n, config=greedy)[0])
                row = {"N": num, "m": dim, "n": n, "greedy_seconds": seconds, "greedy_first_call_seconds": first,
                       "seconds_per_step": seconds / n, "model_bytes": 8 * num * dim,
                       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                if num <= args.relax_up_to:
                    relax = SkMMConfig(**RAW, relax=True)
                    timed(lambda: skmm(key, pool, n, config=relax)[0])  # compile
                    relaxed_seconds, relaxed = timed(lambda: skmm(key, pool, n, config=relax)[0])
                    row.update(relaxed_seconds=relaxed_seconds, same_subset=bool(np.array_equal(np.asarray(fast), np.asarray(relaxed))),
                               speedup=relaxed_seconds / seconds)
                rows.append(row)
                print(row, flush=True)
    # Extrapolation of the greedy's per-step cost (∝ N m) to N = 10⁶, m = 512, n = 10⁴.
    biggest = max(rows, key=lambda r: r["N"] * r["m"])
    per_nm = biggest["seconds_per_step"] / (biggest["N"] * biggest["m"])
    return {"rows": rows, "estimate_1e6_512_1e4_seconds": per_nm * 1e6 * 512 * 1e4,
            "estimate_from": {k: biggest[k] for k in ("N", "m", "n")}}


def prefilter_part(args) -> dict:
    """Quality and time of ``candidates=c`` against the all-candidates greedy, then the big run."""
    from skmm_jax.moments import sketched_spectrum, subset_matrix_coverage, subset_variance

    rows = []
    num, dim, n = args.prefilter_size, 128, args.prefilter_budget
    pool = low_rank_pool(jax.random.key(0), num, dim)
    spectrum = sketched_spectrum(pool)
    reference = None
    for fraction in (1.0, 0.5, 0.2, 0.1, 0.05):
        for seed in range(1 if fraction == 1.0 else args.prefilter_seeds):
            config = SkMMConfig(**RAW, relax=False, candidates="all" if fraction == 1.0 else int(fraction * num))
            key = jax.random.key(100 + seed)
            timed(lambda: skmm(key, pool, n, config=config)[0])  # compile (first seed) / warm
            seconds, idx = timed(lambda: skmm(key, pool, n, config=config)[0])
            variance = float(subset_variance(idx, spectrum, config.ridge))
            reference = variance if reference is None else reference
            row = {"N": num, "m": dim, "n": n, "candidates": config.candidate_count(num, n, dim), "leverage_share": 0.5, "seed": seed, "seconds": seconds,
                   "subset_variance": variance, "variance_ratio": variance / reference,
                   "matrix_coverage": float(subset_matrix_coverage(idx, spectrum))}
            rows.append(row)
            print(row, flush=True)
    # Uniform random subsets of n: the floor the pre-filter must stay far from.
    for seed in range(args.prefilter_seeds):
        idx = jax.random.permutation(jax.random.key(200 + seed), num)[:n]
        rows.append({"N": num, "m": dim, "n": n, "candidates": 0, "seed": seed, "seconds": 0.0, "uniform": True,
                     "subset_variance": float(subset_variance(idx, spectrum, 0.2)),
                     "variance_ratio": float(subset_variance(idx, spectrum, 0.2)) / reference,
                     "matrix_coverage": float(subset_matrix_coverage(idx, spectrum))})
    big = None
    if args.big_size:
        num, dim, n, cands = args.big_size, 512, args.big_budget, args.big_candidates
        pool = low_rank_pool(jax.random.key(0), num, dim)
        jax.block_until_ready(pool)
        config = SkMMConfig(**RAW, relax=False, candidates=cands)
        seconds, idx = timed(lambda: skmm(jax.random.key(1), pool, n, config=config)[0])
        big = {"N": num, "m": dim, "n": n, "candidates": cands, "seconds_including_compile": seconds,
               "unique": int(np.unique(np.asarray(idx)).size), "model_bytes": 4 * num * dim + 4 * cands * dim,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        print(big, flush=True)
    return {"prefilter": {"rows": rows, "big": big}}


AUTO_GRID = ((10_000, 500, 512), (20_000, 500, 512), (50_000, 250, 512), (50_000, 2_000, 512), (100_000, 500, 128),
             (100_000, 500, 512), (200_000, 2_000, 512), (1_000_000, 10_000, 512), (1_000_000, 1_000, 256))


def auto_part(args) -> dict:
    """The automatic candidate count with the select defaults: the rule's values, and the
    greedy's objective against the exact greedy on one pool, per n."""
    from skmm_jax.moments import preprocess_pool, sketched_spectrum, subset_matrix_coverage, subset_variance
    from skmm_jax.select import auto_candidates

    rule = [{"N": num, "n": n, "m": dim, "candidates": auto_candidates(num, n, dim)} for num, n, dim in AUTO_GRID]
    num, dim = args.auto_size, 512
    pool = low_rank_pool(jax.random.key(0), num, dim)
    default = SkMMConfig()
    spectrum = sketched_spectrum(preprocess_pool(pool, default.preprocess), rank_tol=default.rank_tol)
    rows = []
    for n in [int(x) for x in args.auto_budgets.split(",")]:
        seconds, exact = timed(lambda: skmm(jax.random.key(1), pool, n, config=SkMMConfig(candidates="all"))[0])
        reference = float(subset_variance(exact, spectrum, default.ridge))
        rows.append({"N": num, "m": dim, "n": n, "candidates": num, "rule": "all", "seed": 0, "seconds": seconds,
                     "subset_variance": reference, "variance_ratio": 1.0, "matrix_coverage": float(subset_matrix_coverage(exact, spectrum))})
        print(rows[-1], flush=True)
        auto = auto_candidates(num, n, dim)
        counts = {"auto": auto, **{f"{k} n": k * n for k in (4, 8, 32) if k * n < num and k * n != auto}}
        for rule_name, count in counts.items():
            if count >= num:
                continue
            config = SkMMConfig() if rule_name == "auto" else SkMMConfig(candidates=count)
            for seed in range(args.auto_seeds):
                seconds, idx = timed(lambda: skmm(jax.random.key(100 + seed), pool, n, config=config)[0])
                variance = float(subset_variance(idx, spectrum, default.ridge))
                rows.append({"N": num, "m": dim, "n": n, "candidates": count, "rule": rule_name, "seed": seed, "seconds": seconds,
                             "subset_variance": variance, "variance_ratio": variance / reference,
                             "matrix_coverage": float(subset_matrix_coverage(idx, spectrum))})
                print(rows[-1], flush=True)
    return {"auto": {"rule": rule, "rows": rows}}


def _select_process(features: Path, n: int, out: Path, *extra: str) -> dict:
    """``skmm-jax select`` in a fresh process: its diagnostics, wall time and peak RSS."""
    stats = out.with_suffix(".time")
    command = [sys.executable, "-m", "skmm_jax.cli", "select", "--features", str(features), "--n", str(n), "--out", str(out), *extra]
    subprocess.run(["/usr/bin/time", "-o", str(stats), "-f", "%e %M", *command], check=True, cwd=Path(__file__).resolve().parents[1])
    wall, max_kb = stats.read_text().split()[-2:]
    result = json.loads(out.read_text())
    return {"command": "skmm-jax select --features pool.npy --n " + " ".join([str(n), *extra]), "wall_seconds": float(wall),
            "select_seconds": result["seconds"], "peak_rss_mb": int(max_kb) / 1024, "diagnostics": result["diagnostics"]}


def auto_scale_part(args, *extra: str) -> dict:
    """``skmm-jax select`` on an N × 512 low-rank pool (written to a temporary .npy), n = args.scale_budget."""
    from skmm_jax.common.io import save_npy_atomic

    num, dim, n = args.scale_size, 512, args.scale_budget
    with tempfile.TemporaryDirectory() as tmp:
        features = Path(tmp) / "pool.npy"
        save_npy_atomic(features, np.asarray(low_rank_pool(jax.random.key(0), num, dim)))
        run = _select_process(features, n, Path(tmp) / "selection.json", *extra)
    run.update(N=num, m=dim, n=n)
    print({k: v for k, v in run.items() if k != "diagnostics"}, run["diagnostics"], flush=True)
    return run


def auto_filter_part(args, payload: dict) -> dict:
    """The greedy over c candidate rows, uniform (leverage_share 0) vs half by leverage, on
    the auto-exact pool; V relative to the exact run's (``--part auto-exact`` first)."""
    from skmm_jax.moments import preprocess_pool, sketched_spectrum, subset_variance
    from skmm_jax.select import candidate_rows

    exact = payload.get("auto_exact")
    num, dim, n = args.scale_size, 512, args.scale_budget
    if not exact or (exact["N"], exact["m"], exact["n"]) != (num, dim, n):
        raise SystemExit(f"--part auto-filter needs --part auto-exact at N = {num}, n = {n} first (the reference objective)")
    config = SkMMConfig()
    pool = low_rank_pool(jax.random.key(0), num, dim)
    spectrum = sketched_spectrum(preprocess_pool(pool, config.preprocess), rank_tol=config.rank_tol)
    del pool
    key = jax.random.fold_in(jax.random.key(0), 1)  # what skmm uses with seed 0
    rows = []
    for count in [int(c) for c in args.filter_counts.split(",")]:
        for share in (0.0, 0.5):
            seconds, idx = timed(lambda: _greedy_among(spectrum, candidate_rows(key, spectrum, count, share), n, config.ridge))
            variance = float(subset_variance(idx, spectrum, config.ridge))
            rows.append({"N": num, "m": dim, "n": n, "candidates": count, "leverage_share": share, "seconds": seconds,
                         "subset_variance": variance, "variance_ratio": variance / exact["diagnostics"]["subset_variance"]})
            print(rows[-1], flush=True)
    return {"auto_filter": rows}


def _greedy_among(spectrum, rows: jax.Array, n: int, ridge: float) -> jax.Array:
    """The greedy draw over ``rows`` with the full pool's spectrum, as ``skmm`` runs it."""
    from skmm_jax.draw import draw_greedy

    count = rows.shape[0]
    local = draw_greedy(spectrum._replace(projections=spectrum.projections[rows]), jnp.full((count,), 1.0 / count), jnp.float32(ridge), n)
    return rows[local]


def grads_part(args) -> dict:
    from flax import nnx

    from prune_jax.lora import init_lora, last_blocks, lm_loss, trainable_size
    from prune_jax.models.llama import load_model
    from prune_jax.models.llama.modeling import kernel_inputs
    from skmm_jax.gradients import _sketch_chunk, sketch_per_sample_grads
    from skmm_jax.sketch import make_pytree_sketch

    model, _ = load_model("smollm2-135m", tokenizer=False)
    graphdef, state = nnx.split(model)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (args.grad_pool, args.tokens + 1)).astype(np.int32)
    settings = {"last 2 blocks": ("blocks", last_blocks(model, 2)),
                "LoRA r=8, all blocks": ("lora", (init_lora(model, jax.random.key(0), 8), state))}
    rows = []
    for name, (kind, (trainable, frozen)) in settings.items():
        loss = lm_loss(kind, graphdef)
        sketch = make_pytree_sketch("kronecker", jax.random.key(1), trainable, args.grad_m, split=kernel_inputs)
        outputs = {}
        for factored in (False, True):
            for chunk in [int(c) for c in (args.lora_chunks if kind == "lora" else args.grad_chunks).split(",")]:
                start = time.perf_counter()
                shape_only = jnp.zeros((chunk, tokens.shape[1]), jnp.int32)  # the chunk step's shape (the pool may be smaller)
                compiled = _sketch_chunk.lower(loss, factored, sketch, trainable, frozen, shape_only).compile()
                compile_seconds = time.perf_counter() - start
                temp = compiled.memory_analysis().temp_size_in_bytes
                row = {"setting": name, "r": trainable_size(trainable), "factored": factored, "chunk": chunk,
                       "compile_seconds": compile_seconds, "temp_bytes": int(temp), "temp_bytes_per_sample": temp / chunk}
                if chunk <= args.grad_time_up_to:
                    run = lambda: sketch_per_sample_grads(loss, trainable, tokens, sketch, frozen=frozen, chunk_size=chunk, factored=factored)  # noqa: E731
                    run()  # warm (compile at this chunk size)
                    seconds, out = timed(run)
                    row.update(samples_per_second=len(tokens) / seconds)
                    outputs.setdefault(factored, out)
                rows.append(row)
                print(row, flush=True)
        if len(outputs) == 2:
            diff = np.linalg.norm(outputs[True] - outputs[False]) / np.linalg.norm(outputs[False])
            for row in rows:
                if row["setting"] == name:
                    row["factored_vs_materialised_relative_error"] = float(diff)
    return {"grads": {"rows": rows, "tokens": args.tokens, "m": args.grad_m, "pool": args.grad_pool}}


def grads_wide_part(args) -> dict:
    """Compiled memory of one chunk step at Llama-2-7B widths (D 4096, F 11008, 32 heads),
    2 blocks, last block trainable (r ≈ 202 M), vocabulary 32000, abstract weights (nothing
    is allocated or run): materialised vs factored, chunk 1 and 8."""
    from flax import nnx

    from prune_jax.lora import lm_loss
    from prune_jax.models.llama.modeling import LlamaConfig, abstract_llama, kernel_inputs
    from skmm_jax.gradients import _sketch_chunk, partition_params
    from skmm_jax.sketch import make_pytree_sketch

    config = LlamaConfig(vocab_size=32000, hidden_size=4096, num_layers=2, layer_heads=((32, 32),) * 2,
                         layer_intermediate=(11008,) * 2, head_dim=128)
    graphdef, state = nnx.split(abstract_llama(config))
    trainable, frozen = partition_params(state, lambda path, _: path.startswith("layers/1/"))
    r = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(trainable))
    sketch = make_pytree_sketch("kronecker", jax.random.key(1), trainable, args.grad_m, split=kernel_inputs)
    loss = lm_loss("blocks", graphdef)
    rows = []
    for factored in (False, True):
        for chunk in (1, 8):
            tokens = jax.ShapeDtypeStruct((chunk, args.tokens + 1), jnp.int32)
            start = time.perf_counter()
            compiled = _sketch_chunk.lower(loss, factored, sketch, trainable, frozen, tokens).compile()
            temp = compiled.memory_analysis().temp_size_in_bytes
            rows.append({"setting": "Llama-2-7B widths, last of 2 blocks", "r": r, "factored": factored, "chunk": chunk,
                         "compile_seconds": time.perf_counter() - start, "temp_bytes": int(temp), "temp_bytes_per_sample": temp / chunk})
            print(rows[-1], flush=True)
    return {"grads_wide": {"rows": rows, "tokens": args.tokens, "m": args.grad_m}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=tuple(SECTION_KEYS), default="select")
    parser.add_argument("--sizes", default="10000,20000,100000")
    parser.add_argument("--dims", default="128,512")
    parser.add_argument("--budgets", default="500")
    parser.add_argument("--relax-up-to", type=int, default=20000, help="also run relax=True for N up to this")
    parser.add_argument("--prefilter-size", type=int, default=100000)
    parser.add_argument("--prefilter-budget", type=int, default=1000)
    parser.add_argument("--prefilter-seeds", type=int, default=3)
    parser.add_argument("--big-size", type=int, default=1000000, help="the N of the big pre-filtered run (0: skip)")
    parser.add_argument("--big-budget", type=int, default=10000)
    parser.add_argument("--big-candidates", type=int, default=50000)
    parser.add_argument("--auto-size", type=int, default=50000, help="--part auto: N of the pool the objective is compared on")
    parser.add_argument("--auto-budgets", default="250,1000,2000")
    parser.add_argument("--auto-seeds", type=int, default=2, help="--part auto: seeds of the candidate draw")
    parser.add_argument("--scale-size", type=int, default=200000, help="--part auto-scale / auto-exact: N of the CLI run")
    parser.add_argument("--scale-budget", type=int, default=2000)
    parser.add_argument("--filter-counts", default="8000,16000,32000", help="--part auto-filter: candidate counts")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--grad-m", type=int, default=256)
    parser.add_argument("--grad-pool", type=int, default=32)
    parser.add_argument("--grad-chunks", default="8,32,128")
    parser.add_argument("--lora-chunks", default="8", help="chunk sizes of the LoRA setting (each compile of its 30-block "
                        "backward takes minutes on this CPU)")
    parser.add_argument("--grad-time-up-to", type=int, default=32, help="time chunk sizes up to this (larger: memory only)")
    args = parser.parse_args()
    # The memory analysis compiles ahead of time and the timed call compiles again: share one
    # persistent cache so each shape compiles once.
    jax.config.update("jax_compilation_cache_dir", "/tmp/skmm_scale_jax_cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    path = RESULTS / "skmm_scale.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    section = {"select": select_part, "prefilter": prefilter_part, "grads": grads_part, "grads-wide": grads_wide_part,
               "auto": auto_part, "auto-scale": lambda a: {"auto_scale": auto_scale_part(a)},
               "auto-exact": lambda a: {"auto_exact": auto_scale_part(a, "--candidates", "all")},
               "auto-filter": lambda a: auto_filter_part(a, payload)}[args.part](args)
    payload.update(section)
    payload.setdefault("commands", {})[args.part] = " ".join(["python", "benchmarks/skmm_scale.py"] + sys.argv[1:])
    payload["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(path, payload)
    write_markdown(payload)


def write_markdown(payload: dict) -> None:
    lines = ["# SkMM at scale (`benchmarks/skmm_scale.py`)", "", payload["machine"] + ".", ""]
    if "rows" in payload:
        lines += ["## `skmm()` wall time", "", "Synthetic rank-32 pools; greedy = `relax=False` (select's default); relaxed = "
                  "the c_S bisection (11 solves) + the same greedy.", "",
                  "| N | m | n | greedy s | s / step | relaxed s | relaxed / greedy | same subset | model 8·N·m | peak RSS MB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for r in payload["rows"]:
            lines.append(f"| {r['N']:,} | {r['m']} | {r['n']} | {r['greedy_seconds']:.2f} | {r['seconds_per_step'] * 1e3:.2f} ms | "
                         + (f"{r['relaxed_seconds']:.1f} | {r['speedup']:.1f}× | {r['same_subset']} | " if "relaxed_seconds" in r else "— | — | — | ")
                         + f"{r['model_bytes'] / 2**30:.2f} GiB | {r['peak_rss_mb']:.0f} |")
        biggest, estimate = payload["estimate_from"], payload["estimate_1e6_512_1e4_seconds"]
        lines += ["", f"Extrapolated greedy time over all candidates at N = 10⁶, m = 512, n = 10⁴ from the N = {biggest['N']:,}, "
                  f"m = {biggest['m']} row (per-step cost ∝ N m): {estimate / 60:.0f} min on this machine (an estimate, not a run).", ""]
    if payload.get("prefilter"):
        pre = payload["prefilter"]
        rows = pre["rows"]
        first = rows[0]
        lines += ["## Candidate pre-filter (`SkMMConfig(candidates=c)`)", "",
                  f"N = {first['N']:,}, m = {first['m']}, n = {first['n']}; variance = the greedy's objective tr(Λ(Z_SᵀZ_S + ρI)⁻¹) of "
                  "the returned subset on the full spectrum, relative to the all-candidates greedy (lower is better); coverage = "
                  "1/c_S(S) (higher is better); mean ± std over seeds of the candidate draw."
                  + ("" if "leverage_share" in first else " Measured with uniform candidates, the pre-filter before its "
                     "leverage half (`select.candidate_rows`); the current filter is measured in the next section."), "",
                  "| candidates | seconds | variance / all-candidates | coverage 1/c_S(S) |", "|---|---:|---:|---:|"]
        groups: dict = {}
        for r in rows:
            groups.setdefault("uniform subset (no SkMM)" if r.get("uniform") else f"{r['candidates']:,}", []).append(r)
        for label, group in groups.items():
            ratio = np.array([r["variance_ratio"] for r in group])
            cov = np.array([r["matrix_coverage"] for r in group])
            secs = np.array([r["seconds"] for r in group])
            lines.append(f"| {label} | {secs.mean():.2f} | {ratio.mean():.3f} ± {ratio.std():.3f} | {cov.mean():.3f} ± {cov.std():.3f} |")
        if pre.get("big"):
            b = pre["big"]
            lines += ["", f"Measured run: N = {b['N']:,}, m = {b['m']}, n = {b['n']:,}, candidates = {b['candidates']:,}: "
                      f"**{b['seconds_including_compile'] / 60:.1f} min** including compile and the spectrum of all N rows "
                      f"({b['unique']:,} distinct indices); memory model 4·N·m + 4·c·m = {b['model_bytes'] / 2**30:.2f} GiB, "
                      f"peak RSS {b['peak_rss_mb'] / 1024:.1f} GiB (the pool itself included)."]
        lines.append("")
    if payload.get("auto"):
        lines += auto_markdown(payload)
    if payload.get("grads"):
        g = payload["grads"]
        lines += ["## Per-sample LM gradients + sketch: factored vs materialised", "",
                  f"SmolLM2-135M, float32, T = {g['tokens']} predicted tokens per row, m = {g['m']}, pool {g['pool']} rows per timed call. "
                  "temp = the compiled chunk step's temporary memory (XLA's memory analysis).", "",
                  "| trainable | r | path | chunk | samples/s | temp MiB | temp MiB / sample | compile s |", "|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in g["rows"]:
            speed = f"{r['samples_per_second']:.2f}" if "samples_per_second" in r else "—"
            lines.append(f"| {r['setting']} | {r['r']:,} | {'factored' if r['factored'] else 'materialised'} | {r['chunk']} | {speed} | "
                         f"{r['temp_bytes'] / 2**20:.0f} | {r['temp_bytes_per_sample'] / 2**20:.1f} | {r['compile_seconds']:.1f} |")
        errors = {r["setting"]: r.get("factored_vs_materialised_relative_error") for r in g["rows"]}
        lines += ["", "Factored vs materialised sketches (same Γ): relative error " + ", ".join(
            f"{k}: {v:.1e}" for k, v in errors.items() if v is not None) + "."]
        lines.append("")
    if payload.get("grads_wide"):
        g = payload["grads_wide"]
        lines += ["## The same at Llama-2-7B widths (compiled memory only)", "",
                  f"D = 4096, F = 11008, 32 heads, vocabulary 32000, 2 blocks with the last trainable; T = {g['tokens']}, m = {g['m']}; "
                  "abstract weights: the chunk step is compiled, not run.", "",
                  "| r | path | chunk | temp MiB | temp MiB / sample |", "|---:|---|---:|---:|---:|"]
        for r in g["rows"]:
            lines.append(f"| {r['r']:,} | {'factored' if r['factored'] else 'materialised'} | {r['chunk']} | "
                         f"{r['temp_bytes'] / 2**20:.0f} | {r['temp_bytes_per_sample'] / 2**20:.1f} |")
        lines.append("")
    lines += ["Commands: " + "; ".join(f"`{c}`" for c in payload.get("commands", {}).values())]
    (RESULTS / "skmm_scale.md").write_text("\n".join(lines) + "\n")


def auto_markdown(payload: dict) -> list[str]:
    from skmm_jax.select import auto_candidates

    auto = payload["auto"]
    lines = ["## Automatic candidate count (`SkMMConfig()`: `candidates=\"auto\"`)", "",
             "c = min(N, max(16 n, ⌊2³³/(n m)⌋)) (`skmm_jax.select.auto_candidates`): every row while the exact greedy costs "
             "at most 2³³ multiply-adds (N n m ≤ 2³³), else the larger of 16 candidates per coreset member and what that "
             "budget affords.", "", "| N | n | m | c | c / N |", "|---:|---:|---:|---:|---:|"]
    for r in auto["rule"]:
        lines.append(f"| {r['N']:,} | {r['n']:,} | {r['m']} | {r['candidates']:,} | {r['candidates'] / r['N']:.2f} |")
    first = auto["rows"][0]
    lines += ["", f"Objective against the exact greedy: rank-32 + noise pool, N = {first['N']:,}, m = {first['m']}, the select defaults "
              "(standardize-unit, ρ = 1); V = tr(Λ(Z_SᵀZ_S + ρI)⁻¹) of the subset on the full pool's spectrum over the exact "
              "greedy's (lower is better; mean ± std over seeds of the candidate draw); seconds include the compile.", "",
              "| n | candidates | c / n | seconds | V / exact | coverage 1/c_S(S) |", "|---:|---|---:|---:|---:|---:|"]
    groups: dict = {}
    for r in auto["rows"]:
        groups.setdefault((r["n"], r["rule"]), []).append(r)
    for (n, rule), group in groups.items():
        ratio = np.array([r["variance_ratio"] for r in group])
        cov = np.array([r["matrix_coverage"] for r in group])
        label = {"all": "all (exact)", "auto": "auto"}.get(rule, rule)
        if rule == "all" and auto_candidates(group[0]["N"], n, group[0]["m"]) >= group[0]["N"]:
            label = "all (exact) = auto"
        lines.append(f"| {n:,} | {label}: {group[0]['candidates']:,} | {group[0]['candidates'] / n:.0f} | "
                     f"{np.mean([r['seconds'] for r in group]):.1f} | {ratio.mean():.3f} ± {ratio.std():.3f} | {cov.mean():.3f} ± {cov.std():.3f} |")
    runs = [payload[k] for k in ("auto_scale", "auto_exact") if payload.get(k)]
    if runs:
        lines += ["", f"`skmm-jax select` in a fresh process on a rank-32 + noise pool of N = {runs[0]['N']:,} × {runs[0]['m']} "
                  f"(float32 .npy, {runs[0]['N'] * runs[0]['m'] * 4 / 2**20:.0f} MiB), n = {runs[0]['n']:,}; wall = the whole "
                  "process (`/usr/bin/time`: start-up, load, spectrum, compile, greedy); V = the subset's `subset_variance`.", "",
                  "| command | candidates | wall | selection s | peak RSS | V | V / exact |", "|---|---:|---:|---:|---:|---:|---:|"]
        exact = payload.get("auto_exact")
        for r in runs:
            d = r["diagnostics"]
            same = exact and (exact["N"], exact["m"], exact["n"]) == (r["N"], r["m"], r["n"])
            ratio = f"{d['subset_variance'] / exact['diagnostics']['subset_variance']:.3f}" if same else "—"
            lines.append(f"| `{r['command']}` | {d['candidates']:,}{' (auto)' if d.get('candidates_auto') else ''} | "
                         f"{r['wall_seconds'] / 60:.1f} min | {r['select_seconds']:.0f} | {r['peak_rss_mb'] / 1024:.2f} GiB | "
                         f"{d['subset_variance']:.5f} | {ratio} |")
    if payload.get("auto_filter"):
        rows = payload["auto_filter"]
        lines += ["", f"The pre-filter's rows on that pool (seed 0, the greedy over c candidates with the full pool's spectrum; "
                  "V over the exact run's): uniform (the filter before the leverage half) vs `candidate_rows` (half the rows of "
                  "largest leverage Σ_j Z_ij²/λ_j, half uniform among the others).", "",
                  "| c | c / n | uniform: V / exact | s | half by leverage: V / exact | s |", "|---:|---:|---:|---:|---:|---:|"]
        for count in sorted({r["candidates"] for r in rows}):
            by = {r["leverage_share"]: r for r in rows if r["candidates"] == count}
            cells = " | ".join(f"{by[k]['variance_ratio']:.3f} | {by[k]['seconds']:.0f}" if k in by else "— | —" for k in (0.0, 0.5))
            lines.append(f"| {count:,} | {count / rows[0]['n']:.0f} | {cells} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
