"""Does the recovery's λ still depend on which windows are held out? One hold-out vs k-fold.

The recovery refit chooses its ridge λ on held-out calibration tokens. With one hold-out
(the last 10 % of the rows, ``recover_folds=1``) the same calibration windows in another
row order gave perplexities tens of points apart; k-fold cross-validation over sequences
(``recover_folds=4``, the default) scores every λ on every sequence once. Here: the SAME
64 × 128 calibration windows (Wikipedia sample, seed 0) in --orders row permutations,
pruned by dap + recovery (ridge toward current) at --sparsity with 1 and 4 folds; the
spread of held-out perplexity over the orders is what the fold count should shrink.

    python benchmarks/recovery_folds.py                  # 40 %, 3 orders, folds 1 and 4

Results: benchmarks/results/recovery_folds.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_jax.data import calibration_batches, eval_windows, load_documents, split_documents, tokenize_corpus  # noqa: E402
from prune_jax.data.corpora import PYTHON_DOCS_SOURCE  # noqa: E402
from prune_jax.evaluate import perplexity  # noqa: E402
from prune_jax.models.llama import load_model  # noqa: E402
from prune_jax.pruning import PruneConfig, prune  # noqa: E402
from skmm_jax.common.io import save_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_TOKENS = 8192
CORPORA = ("ppl_128", "ppl_python_docs_128")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--folds", default="1,4")
    args = parser.parse_args()
    _, tokenizer = load_model("smollm2-135m", tokenizer=True)
    calibration_docs, evaluation_docs = split_documents(load_documents("wiki-sample"))
    calib = calibration_batches(tokenize_corpus(calibration_docs, tokenizer), num_samples=64, seq_len=128, seed=0)
    windows = {"ppl_128": eval_windows(tokenize_corpus(evaluation_docs, tokenizer), 128, EVAL_TOKENS // 128),
               "ppl_python_docs_128": eval_windows(tokenize_corpus(load_documents(PYTHON_DOCS_SOURCE), tokenizer), 128, EVAL_TOKENS // 128)}
    rows = []
    for folds in (int(f) for f in args.folds.split(",")):
        for order in range(args.orders):
            rows_order = np.random.default_rng(order).permutation(len(calib))
            model, _ = load_model("smollm2-135m", tokenizer=False)
            config = PruneConfig.from_json({"sparsity": args.sparsity, "method": "dap", "recover": True, "ridge_toward": "current",
                                            "recover_folds": folds})
            start = time.perf_counter()
            model, report = prune(model, calib[rows_order], config)
            row = {"folds": folds, "order": order, "prune_seconds": time.perf_counter() - start,
                   **{key: perplexity(model, w).perplexity for key, w in windows.items()}}
            rows.append(row)
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(RESULTS / "recovery_folds.json", {"sparsity": args.sparsity, "method": "dap + recovery (ridge toward current)",
                                                       "calibration": "64 x 128, seed 0, rows permuted", "eval_tokens": EVAL_TOKENS,
                                                       "rows": rows})
    lines = [
        f"# Recovery λ: one hold-out vs k-fold, same windows in {args.orders} row orders (SmolLM2-135M, {args.sparsity:.0%})",
        "",
        "`python benchmarks/recovery_folds.py`: dap + recovery (ridge toward current), the same 64 × 128 calibration windows "
        f"permuted; perplexity at 128-token windows on the first {EVAL_TOKENS} tokens of the Wikipedia evaluation split and "
        "of python-docs.",
        "",
        "| folds | " + " | ".join(f"order {o}" for o in range(args.orders)) + " | mean ± std | max − min |",
        "|---:|" + "---:|" * (args.orders + 2),
    ]
    for key in CORPORA:
        lines.append(f"| **{key}** |" + " |" * (args.orders + 2))
        for folds in sorted({r["folds"] for r in rows}):
            values = np.array([r[key] for r in rows if r["folds"] == folds])
            lines.append(f"| {folds} | " + " | ".join(f"{v:.2f}" for v in values)
                         + f" | {values.mean():.2f} ± {values.std(ddof=1):.2f} | {values.max() - values.min():.2f} |")
    (RESULTS / "recovery_folds.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
