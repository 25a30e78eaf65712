"""How much calibration data the default pruning needs: the knee of PPL against tokens.

The default method (``PruneConfig()``: dap-obs, global allocation ≤ 50 % per block) prunes
SmolLM2-135M by 20 % calibrated on n windows of T tokens from the Wikipedia sample's
calibration split, for n in --samples and T in --seq-lens (one draw, seed 0, the same
placement rule as every other benchmark). Each configuration runs in its own process so its
peak RSS is its own. Measured: prune wall time, peak RSS (process high-water mark, model
included), and held-out perplexity at 128-token windows on the Wikipedia evaluation split
and on Python's documentation topics (not Wikipedia).

Memory model: dap-obs streams the calibration through each block in chunks of
``batch_size`` sequences and keeps the block's inputs on the dense and the pruned stream
(2 · n · T · D floats, D = 576 here) plus per-map Grams (C² floats per map); so RSS grows
≈ 8 · n · T · D bytes above a fixed part (model, Grams, compiled programs), and time grows
linearly in n · T for the forward passes and Gram sums on top of a fixed part (single
errors and the greedy over channels, independent of n · T).

    python benchmarks/calib_budget.py                          # the default grid
    python benchmarks/calib_budget.py --samples 16,64 --seq-lens 128

Resumable (finished (n, T) rows are kept). Results: benchmarks/results/calib_budget.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skmm_jax.common.io import save_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT_JSON = RESULTS / "calib_budget.json"
SPARSITY = 0.2
EVAL_TOKENS = 16384
CORPORA = {"ppl_128": "Wikipedia (evaluation split)", "ppl_python_docs_128": "python-docs (not Wikipedia)"}


def measure(samples: int, seq_len: int) -> dict:
    """One configuration, in this process: prune with the default, evaluate, report."""
    from prune_jax.data import calibration_batches, eval_windows, load_documents, split_documents, tokenize_corpus
    from prune_jax.data.corpora import PYTHON_DOCS_SOURCE
    from prune_jax.evaluate import perplexity
    from prune_jax.models.llama import load_model
    from prune_jax.pruning import Budget, PruneConfig, prune

    model, tokenizer = load_model("smollm2-135m", tokenizer=True)
    calibration_docs, evaluation_docs = split_documents(load_documents("wiki-sample"))
    calib = calibration_batches(tokenize_corpus(calibration_docs, tokenizer), num_samples=samples, seq_len=seq_len, seed=0)
    start = time.perf_counter()
    model, report = prune(model, calib, PruneConfig(budget=Budget(sparsity=SPARSITY)))
    seconds = time.perf_counter() - start
    rss_after_prune = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    corpora = {"ppl_128": tokenize_corpus(evaluation_docs, tokenizer),
               "ppl_python_docs_128": tokenize_corpus(load_documents(PYTHON_DOCS_SOURCE), tokenizer)}
    row = {"samples": samples, "seq_len": seq_len, "tokens": samples * seq_len, "prune_seconds": seconds,
           "peak_rss_mb": rss_after_prune, "fraction_of_prunable_removed": report.fraction_of_prunable_removed}
    for key, tokens in corpora.items():
        row[key] = perplexity(model, eval_windows(tokens, 128, EVAL_TOKENS // 128)).perplexity
    return row


def write_report(rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["seq_len"], r["samples"]))
    lines = [
        "# Calibration budget of the default pruning (SmolLM2-135M, 20 %)",
        "",
        "`python benchmarks/calib_budget.py`: the default `PruneConfig()` (dap-obs, global ≤ 50 % per block) calibrated on "
        "n windows of T tokens of the Wikipedia sample's calibration split (seed 0, one draw); perplexity at 128-token "
        f"windows on the first {EVAL_TOKENS} tokens of the Wikipedia evaluation split and of python-docs; prune wall time "
        "and the process's peak RSS (model included) on this 2-core CPU, each configuration in its own process.",
        "",
        "| n × T | tokens | wiki PPL@128 | python-docs PPL@128 | prune s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['samples']} × {r['seq_len']} | {r['tokens']:,} | {r['ppl_128']:.2f} | {r['ppl_python_docs_128']:.2f} | "
              f"{r['prune_seconds']:.0f} | {r['peak_rss_mb']:,.0f} |" for r in rows]
    (RESULTS / "calib_budget.md").write_text("\n".join(lines) + "\n")
    plot(rows, RESULTS / "calib_budget.png")


def plot(rows: list[dict], path: Path) -> None:
    """PPL@128 against calibration tokens (log x), one line per window length, one panel per
    corpus; the prune time on a third panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {**CORPORA, "prune_seconds": "prune wall time (s)"}
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.6))
    for ax, (key, title) in zip(axes, panels.items(), strict=True):
        for seq_len, marker in zip(sorted({r["seq_len"] for r in rows}), "os^D", strict=False):
            line = sorted((r for r in rows if r["seq_len"] == seq_len), key=lambda r: r["tokens"])
            ax.plot([r["tokens"] for r in line], [r[key] for r in line], marker=marker, linewidth=2, markersize=7,
                    label=f"T = {seq_len}")
            for r in line:
                ax.annotate(str(r["samples"]), (r["tokens"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("calibration tokens (n × T; n annotated)", fontsize=11)
        ax.set_title(title, fontsize=12)
        ax.grid(alpha=0.3)
        ax.set_ylabel("seconds" if key == "prune_seconds" else "perplexity, 128-token windows", fontsize=11)
    axes[0].legend(fontsize=10)
    fig.suptitle("Default pruning at 20 %: held-out perplexity and time against calibration size", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", default="16,32,64,128,256,512")
    parser.add_argument("--seq-lens", default="128,2048")
    parser.add_argument("--max-tokens", type=int, default=65536, help="skip configurations with more calibration tokens")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "n,T": measure in this process, print JSON
    args = parser.parse_args()
    if args.one:
        samples, seq_len = (int(v) for v in args.one.split(","))
        print("ROW " + json.dumps(measure(samples, seq_len)), flush=True)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = json.loads(OUT_JSON.read_text())["rows"] if OUT_JSON.exists() else []
    done = {(r["samples"], r["seq_len"]) for r in rows}
    for seq_len in (int(v) for v in args.seq_lens.split(",")):
        for samples in (int(v) for v in args.samples.split(",")):
            if (samples, seq_len) in done or samples * seq_len > args.max_tokens:
                continue
            out = subprocess.run([sys.executable, __file__, "--one", f"{samples},{seq_len}"], check=True,
                                 capture_output=True, text=True).stdout
            row = json.loads(next(line for line in out.splitlines() if line.startswith("ROW "))[4:])
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            rows.append(row)
            save_json_atomic(OUT_JSON, {"rows": rows, "sparsity": SPARSITY, "method": "PruneConfig() default",
                                        "eval_tokens": EVAL_TOKENS})
            write_report(rows)
    if rows:
        write_report(rows)
        best = min(r["ppl_128"] for r in rows)
        print(f"{len(rows)} rows; best wiki PPL@128 {best:.2f}; rows: {np.round([r['ppl_128'] for r in rows], 2).tolist()}")


if __name__ == "__main__":
    main()
