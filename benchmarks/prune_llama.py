"""Structured pruning of SmolLM2-135M: every method, same calibration, same budget.

Calibration: 64 × 128 tokens from the Wikipedia sample's calibration split (identical
for every method). Budget: a fraction of the prunable (attention + MLP) parameters,
blocks [4, 28) as in the paper. Evaluation: perplexity on the evaluation split
(document-disjoint) at 128- and 2048-token windows, on the first --eval-tokens tokens;
also parameters removed, pruning wall time, peak RSS, and the pruned model's forward
throughput (8 × 128) against the dense model in the same process.

    python benchmarks/prune_llama.py                        # 20 % and 40 %
    python benchmarks/prune_llama.py --sparsity 0.2 --methods dap,flap

Resumable: finished (method, sparsity) rows are kept in the JSON and skipped.
Results: benchmarks/results/prune_llama.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from prune_jax.data import calibration_batches, eval_windows, load_documents, split_documents, tokenize_corpus  # noqa: E402
from prune_jax.evaluate import forward_tokens_per_second, perplexity  # noqa: E402
from prune_jax.models.llama import load_model, num_parameters  # noqa: E402
from prune_jax.pruning import PruneConfig, prune  # noqa: E402
from skmm_jax.io import save_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {  # name: PruneConfig options ("recovery" = the paper's full refit order)
    "random": dict(method="random"),
    "magnitude": dict(method="magnitude"),
    "depth2": dict(method="depth2"),
    "wanda-sp": dict(method="wanda-sp"),
    "flap": dict(method="flap"),
    "flap adaptive": dict(method="flap", allocation="adaptive"),
    "dap": dict(method="dap"),
    "dap + o/down refit": dict(method="dap", recover=True, refit="second"),
    "dap + recovery": dict(method="dap", recover=True),
    "dap + similarity + recovery": dict(method="dap", head_criterion="similarity", recover=True),
    "dap adaptive + recovery": dict(method="dap", allocation="adaptive", recover=True),
    "dap-cov + recovery": dict(method="dap-cov", recover=True),
    "dap-empirical + recovery": dict(method="dap-empirical", recover=True),
    "dap-empirical adaptive + recovery": dict(method="dap-empirical", allocation="adaptive", recover=True),
    "dap + recovery + bias": dict(method="dap", recover=True, bias_compensation=True),
    "dap-empirical + recovery + bias": dict(method="dap-empirical", recover=True, bias_compensation=True),
    "taylor": dict(method="taylor"),
    "flap + recovery": dict(method="flap", recover=True),
}


def throughput(model, tokens: np.ndarray) -> float:
    return forward_tokens_per_second(model, np.asarray(tokens[: 8 * 128]).reshape(8, 128))


def check_export(calib: np.ndarray, windows: np.ndarray) -> dict:
    """Prune every block (uniform widths), export, reload with stock transformers and
    compare perplexities on the same windows."""
    import tempfile

    import torch
    import transformers

    from prune_jax.models.llama import save_hf

    model, tokenizer = load_model("smollm2-135m")
    model, report = prune(model, calib, PruneConfig(method="dap", sparsity=0.2, recover=True, layer_range=(0, model.config.num_layers)))
    ours = perplexity(model, windows).perplexity
    with tempfile.TemporaryDirectory() as tmp:
        assert save_hf(model, tokenizer, tmp) is None, "uniform widths must export to a stock checkpoint"
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp).eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(windows), 8):
                batch = torch.as_tensor(windows[start : start + 8], dtype=torch.long)
                logits = hf(batch[:, :-1]).logits.float()
                total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))
                count += batch[:, 1:].numel()
    theirs = float(np.exp(total / count))
    return {"method": "dap + recovery, all 30 blocks, 20 %", "ours_perplexity": ours, "transformers_perplexity": theirs,
            "relative_difference": abs(ours - theirs) / theirs, "windows": int(len(windows)), "parameters_after": report["parameters_after"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsity", default="0.2,0.4")
    parser.add_argument("--methods", default=",".join(VARIANTS))
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--export-check", action="store_true", help="also prune all blocks uniformly, export, reload in transformers")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / "prune_llama.json"
    rows = [] if args.fresh or not out_json.exists() else json.loads(out_json.read_text())["rows"]
    done = {(r["method"], r["sparsity"], r.get("calib_samples", 64)) for r in rows}

    _, tokenizer = load_model("smollm2-135m", tokenizer=True)
    calibration_docs, evaluation_docs = split_documents(load_documents("wiki-sample"))
    calib = calibration_batches(tokenize_corpus(calibration_docs, tokenizer), num_samples=args.calib_samples, seq_len=128, seed=0)
    eval_tokens = tokenize_corpus(evaluation_docs, tokenizer)
    windows = {T: eval_windows(eval_tokens, T, max(1, args.eval_tokens // T)) for T in (128, 2048)}

    def evaluate(model) -> dict:
        return {f"ppl_{T}": perplexity(model, w).perplexity for T, w in windows.items()}

    if ("dense", 0.0, 64) not in done:
        dense, _ = load_model("smollm2-135m", tokenizer=False)
        row = {"method": "dense", "sparsity": 0.0, **evaluate(dense), "tokens_per_s": throughput(dense, eval_tokens),
               "parameters": num_parameters(dense)}
        rows.append(row)
        print(row, flush=True)
        save_json_atomic(out_json, {"rows": rows})
    dense_row = next(r for r in rows if r["method"] == "dense")

    for sparsity in [float(s) for s in args.sparsity.split(",")]:
        for name in [m for m in args.methods.split(",") if m]:
            if (name, sparsity, args.calib_samples) in done:
                continue
            model, _ = load_model("smollm2-135m", tokenizer=False)
            start = time.perf_counter()
            model, report = prune(model, calib, PruneConfig(sparsity=sparsity, **VARIANTS[name]))
            seconds = time.perf_counter() - start
            row = {
                "method": name, "sparsity": sparsity, "calib_samples": args.calib_samples, **evaluate(model), "prune_seconds": seconds,
                "fraction_of_prunable_removed": report["fraction_of_prunable_removed"],
                "fraction_of_all_removed": report["fraction_of_all_removed"], "parameters": report["parameters_after"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "tokens_per_s": throughput(model, eval_tokens),
            }
            row["speedup_vs_dense"] = row["tokens_per_s"] / dense_row["tokens_per_s"]
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            save_json_atomic(out_json, {"rows": rows})
    export_check = json.loads(out_json.read_text()).get("export_check") if out_json.exists() else None
    if args.export_check:
        export_check = check_export(calib, windows[128])
        print(export_check, flush=True)
    config = {"calibration": f"{args.calib_samples} x 128 tokens, wiki-sample calibration split, seed 0",
              "eval_tokens_per_window_size": args.eval_tokens, "layer_range": "[4, 28)"}
    save_json_atomic(out_json, {"rows": rows, "config": config, "export_check": export_check})
    lines = [
        "# SmolLM2-135M structured pruning: perplexity by method and sparsity",
        "",
        f"Calibration {config['calibration']}; evaluation: first {args.eval_tokens} tokens of the evaluation split per window size; "
        "sparsity = fraction of the prunable (attention + MLP) parameters removed, blocks [4, 28). Throughput: forward 8 × 128 on this CPU.",
        "",
        "| method | sparsity | removed (prunable / all) | PPL@128 | PPL@2048 | prune s | tokens/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["sparsity"], r.get("ppl_128", 0))):
        removed = f"{r['fraction_of_prunable_removed']:.1%} / {r['fraction_of_all_removed']:.1%}" if r["method"] != "dense" else "—"
        lines.append(f"| {r['method']} | {r['sparsity']:.0%} | {removed} | {r['ppl_128']:.2f} | {r['ppl_2048']:.2f} | "
                     f"{r.get('prune_seconds', 0):.0f} | {r['tokens_per_s']:.0f} | {r.get('speedup_vs_dense', 1.0):.2f}× |")
    (RESULTS / "prune_llama.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        pts = sorted((r["sparsity"], r["ppl_128"]) for r in rows if r["method"] == name)
        ax.plot([0.0] + [p[0] for p in pts], [dense_row["ppl_128"]] + [p[1] for p in pts], marker="o", label=name)
    ax.set(yscale="log", xlabel="fraction of prunable parameters removed", ylabel="perplexity (128-token windows)",
           title="SmolLM2-135M structured pruning")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "prune_llama.png", dpi=120)


if __name__ == "__main__":
    main()
