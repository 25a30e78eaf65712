"""Calibration windows chosen by SkMM vs random windows, for structured pruning.

For each pruning method and calibration size n (windows of 128 tokens of the Wikipedia
sample's calibration split), the windows are chosen by

* random: ``calibration_batches`` (what ``prune-jax prune`` does by default), seeds 0, 1, 2;
* skmm / kcenter / herding: ``select_calibration`` on a pool of ``--pool`` windows (a
  uniform subset of every non-overlapping window of the split), on the representation
  chosen on the CALIBRATION side: for each representation SkMM picks n windows and the
  one whose windows' block-input second moments are closest to the pool's
  (``moment_error``, mean over the 30 blocks of ‖M̄_S − M̄‖_F/‖M̄‖_F) wins, per n;

then SmolLM2-135M is pruned at 20 % and evaluated by perplexity at 128 and 2048 tokens
on the evaluation split and on the Python docs (the non-Wikipedia corpus), as in
``benchmarks/prune_llama.py``. The calibration-side moment error of every choice (random
included) is reported next to the perplexities, with the selection time.

    python benchmarks/calib_select.py                       # ~1 h on 2 cores
    python benchmarks/calib_select.py --n 32 --methods flap  # more rows (resumes: done rows are kept)

Writes benchmarks/results/calib_select.{json,md} (atomically, after every row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prune_llama import VARIANTS  # noqa: E402

from prune_jax.data import calibration_batches, eval_windows, load_documents, split_documents, tokenize_corpus  # noqa: E402
from prune_jax.data.corpora import PYTHON_DOCS_SOURCE  # noqa: E402
from prune_jax.evaluate import perplexity  # noqa: E402
from prune_jax.models.llama import load_model  # noqa: E402
from prune_jax.pruning import PruneConfig, prune  # noqa: E402
from prune_jax.pruning.calib_select import REPRESENTATIONS, input_moments, moment_error, select_calibration, window_pool  # noqa: E402
from skmm_jax.common.io import save_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEQ_LEN = 128
RANDOM_SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="dap + recovery,flap,dap-obs global (≤ 50 % per block)")
    parser.add_argument("--n", default="16,64")
    parser.add_argument("--selections", default="random,skmm,kcenter")
    parser.add_argument("--pool", type=int, default=512)
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    args = parser.parse_args()
    out_json = RESULTS / "calib_select.json"
    payload = json.loads(out_json.read_text()) if out_json.exists() else {"rows": [], "choices": {}}
    rows, choices = payload["rows"], payload["choices"]

    dense, tokenizer = load_model("smollm2-135m", tokenizer=True)
    calibration_docs, evaluation_docs = split_documents(load_documents("wiki-sample"))
    calib_tokens = tokenize_corpus(calibration_docs, tokenizer)
    corpora = {"": tokenize_corpus(evaluation_docs, tokenizer), "python_docs_": tokenize_corpus(load_documents(PYTHON_DOCS_SOURCE), tokenizer)}
    windows = {f"ppl_{name}{T}": eval_windows(tokens, T, max(1, args.eval_tokens // T)) for name, tokens in corpora.items() for T in (128, 2048)}
    pool = window_pool(calib_tokens, SEQ_LEN, pool=args.pool, seed=0)
    pool_moments = input_moments(dense, pool)
    payload["pool"] = {"windows": int(len(pool)), "of": int(len(calib_tokens) // SEQ_LEN), "calibration_tokens": int(len(calib_tokens))}
    print(payload["pool"], flush=True)

    def choose(selection: str, n: int, seed: int) -> tuple[np.ndarray, dict]:
        """The n windows of a selection (cached in the JSON by their tokens' pool indices)."""
        key = f"{selection}/{n}/{seed}"
        if selection == "random":
            batch = calibration_batches(calib_tokens, num_samples=n, seq_len=SEQ_LEN, seed=seed)
            if key not in choices:
                choices[key] = {"method": "random", "seconds": 0.0, "moment_error": moment_error(input_moments(dense, batch), pool_moments)}
            return batch, choices[key]
        if key not in choices:
            candidates = {}
            for representation in REPRESENTATIONS if selection == "skmm" else [choices[f"skmm/{n}/0"]["representation"]]:
                chosen = select_calibration(dense, calib_tokens, n, method=selection, representation=representation, seq_len=SEQ_LEN,
                                            pool=args.pool, seed=seed)
                candidates[representation] = chosen.record
                print(f"  {selection} n={n} {representation}: moment error {chosen.record['moment_error']:.4f}, "
                      f"{chosen.record['seconds']:.0f} s", flush=True)
            best = min(candidates, key=lambda r: candidates[r]["moment_error"])
            choices[key] = {**candidates[best], "by_representation": {r: c["moment_error"] for r, c in candidates.items()}}
        record = choices[key]
        return pool[np.asarray(record["indices"])], record

    done = {(r["method"], r["n"], r["selection"], r["seed"]) for r in rows}
    selections = [s for s in args.selections.split(",") if s]
    for n in [int(x) for x in args.n.split(",")]:
        for selection in (["skmm"] if "skmm" not in selections else []) + selections:  # skmm first: it picks the representation
            for seed in RANDOM_SEEDS if selection == "random" else (0,):
                calib, record = choose(selection, n, seed)
                save_json_atomic(out_json, {**payload, "rows": rows, "choices": choices})
                if selection not in selections:
                    continue
                for method in [m for m in args.methods.split(",") if m]:
                    if (method, n, selection, seed) in done:
                        continue
                    model, _ = load_model("smollm2-135m", tokenizer=False)
                    start = time.perf_counter()
                    model, _ = prune(model, calib, PruneConfig.from_json({"sparsity": args.sparsity, **VARIANTS[method]}))
                    row = {"method": method, "n": n, "selection": selection, "seed": seed, "sparsity": args.sparsity,
                           "prune_seconds": time.perf_counter() - start, "selection_seconds": record["seconds"],
                           "moment_error": record["moment_error"], "representation": record.get("representation"),
                           **{key: perplexity(model, w).perplexity for key, w in windows.items()}}
                    rows.append(row)
                    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                    save_json_atomic(out_json, {**payload, "rows": rows, "choices": choices})
    command = " ".join(["python", "benchmarks/calib_select.py"] + sys.argv[1:])
    payload.update(rows=rows, choices=choices, eval_tokens=args.eval_tokens,
                   commands=[c for c in payload.get("commands", []) if c != command] + [command])
    save_json_atomic(out_json, payload)
    write_markdown(payload)


def write_markdown(payload: dict) -> None:
    rows = payload["rows"]
    metrics = ("ppl_128", "ppl_2048", "ppl_python_docs_128", "ppl_python_docs_2048")
    lines = ["# Calibration windows chosen by SkMM vs random (`benchmarks/calib_select.py`)", "",
             f"SmolLM2-135M at {rows[0]['sparsity']:.0%} sparsity; n windows of {SEQ_LEN} tokens from the Wikipedia sample's "
             f"calibration split; skmm / kcenter pick from a pool of {payload['pool']['windows']} of its "
             f"{payload['pool']['of']} non-overlapping windows; random = `calibration_batches`, seeds {list(RANDOM_SEEDS)} "
             "(mean ± std). PPL on the evaluation split (wiki) and the Python docs; moment error = the calibration-side "
             "criterion (mean over blocks of ‖M̄_S − M̄_pool‖_F / ‖M̄_pool‖_F of the MLP inputs' second moments).", "",
             "| method | n | selection | representation | moment error | wiki PPL@128 | wiki PPL@2048 | docs PPL@128 | docs PPL@2048 | selection s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["n"], r["selection"]), []).append(r)
    for (method, n, selection), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "random", kv[0][2])):
        def cell(key: str) -> str:
            values = [g[key] for g in group]
            if len(values) == 1:
                return f"{values[0]:.1f}" if key != "moment_error" else f"{values[0]:.3f}"
            fmt = ".3f" if key == "moment_error" else ".1f"
            return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"

        lines.append(f"| {method} | {n} | {selection} | {group[0].get('representation') or '—'} | {cell('moment_error')} | "
                     + " | ".join(cell(k) for k in metrics) + f" | {statistics.mean(g['selection_seconds'] for g in group):.0f} |")
    lines += ["", "Commands (rows accumulate; a run keeps the rows already measured): "
              + ", ".join(f"`{c}`" for c in payload.get("commands", ["python benchmarks/calib_select.py"])) + "."]
    if payload.get("superseded_rows"):
        lines += ["", "Superseded (windows were passed in pool = document order, so the recovery refit's held-out last 10 % "
                  "were the last documents; now shuffled): "
                  + "; ".join(f"{r['method']} n={r['n']} {r['selection']}: wiki PPL@128 {r['ppl_128']:.1f}" for r in payload["superseded_rows"]) + "."]
    (RESULTS / "calib_select.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
