"""Where each allocation removes: per-block widths of SmolLM2-135M pruned by 20 %.

The global allocations decide per block how many query groups (heads) and FFN channels go.
On SmolLM2 the massive-activation ("sink") direction dominates the residual energy of
blocks 9–11, so an allocation by output-energy ratio finds those blocks' other channels
cheap; the default caps every block at 50 % removed, and the loss-aware metric weights
each residual direction by what it does to the loss instead. This benchmark records the
widths each variant keeps (same calibration: 64 × 128 tokens, seed 0, as prune_llama.py;
its table has the perplexities of the same variants).

    python benchmarks/block_widths.py                          # every variant of SHOWN not measured yet
    python benchmarks/block_widths.py --redo "dap-obs stream"  # measure that one again

Results: benchmarks/results/block_widths.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prune_llama import DEFAULT, LOSS_AWARE, VARIANTS  # noqa: E402

from prune_jax.data import calibration_batches, load_documents, split_documents, tokenize_corpus  # noqa: E402
from prune_jax.models.llama import load_model  # noqa: E402
from prune_jax.pruning import PruneConfig, prune  # noqa: E402
from skmm_jax.common.io import save_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SPARSITY = 0.2
# Before (energy ratio, no cap beyond the 10 % floor), the default (the hand-set 50 % cap),
# and the direction-aware variants.
SHOWN = ("dap-obs global", DEFAULT, "dap-obs diagonal damping (≤ 50 % per block)", LOSS_AWARE, "dap-obs loss", "dap-obs stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redo", default="", help="comma-separated variants to measure again")
    args = parser.parse_args()
    out_json = RESULTS / "block_widths.json"
    rows = json.loads(out_json.read_text())["rows"] if out_json.exists() else []
    rows = [r for r in rows if r["method"] in SHOWN and r["method"] not in args.redo.split(",")]
    dense, tokenizer = load_model("smollm2-135m", tokenizer=True)
    config = dense.config
    calibration_docs, _ = split_documents(load_documents("wiki-sample"))
    calib = calibration_batches(tokenize_corpus(calibration_docs, tokenizer), num_samples=64, seq_len=128, seed=0)
    for name in SHOWN:
        if any(r["method"] == name for r in rows):
            continue
        model, _ = load_model("smollm2-135m", tokenizer=False)
        _, report = prune(model, calib, PruneConfig.from_json({"sparsity": SPARSITY, **VARIANTS[name]}))
        rows.append({"method": name, "heads": [h for h, _ in report.layer_heads], "channels": list(report.layer_intermediate),
                     "fraction_of_prunable_removed": report.fraction_of_prunable_removed})
        print(name, rows[-1]["heads"], rows[-1]["channels"], flush=True)
    rows.sort(key=lambda r: SHOWN.index(r["method"]))
    dense_widths = {"heads": [h for h, _ in config.layer_heads], "channels": list(config.layer_intermediate)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(out_json, {"sparsity": SPARSITY, "calibration": "64 x 128, seed 0", "dense": dense_widths,
                                                     "rows": rows})
    layers = range(len(config.layer_heads))
    lines = [
        "# Per-block widths kept at 20 % (SmolLM2-135M, 64 × 128 calibration, seed 0)",
        "",
        f"`python benchmarks/block_widths.py`. Dense: {dense_widths['heads'][0]} heads and {dense_widths['channels'][0]} FFN "
        "channels per block; blocks outside [4, 28) are not pruned. Cells: heads kept / channels kept.",
        "",
        "| block | " + " | ".join(r["method"] for r in rows) + " |",
        "|---:|" + "---:|" * len(rows),
    ]
    lines += [f"| {i} | " + " | ".join(f"{r['heads'][i]} / {r['channels'][i]}" for r in rows) + " |" for i in layers]
    (RESULTS / "block_widths.md").write_text("\n".join(lines) + "\n")
    plot(rows, dense_widths, RESULTS / "block_widths.png")


def plot(rows: list[dict], dense: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharex=True)
    for ax, key, title in zip(axes, ("heads", "channels"), ("attention heads kept", "FFN channels kept"), strict=True):
        ax.step(range(len(dense[key])), dense[key], where="mid", color="black", linestyle="--", label="dense")
        for r, marker in zip(rows, "osD^vP", strict=False):
            ax.plot(range(len(r[key])), r[key], marker=marker, linewidth=1.6, markersize=5, label=r["method"])
        ax.axvspan(8.5, 11.5, color="grey", alpha=0.15)
        ax.set_title(title + " (blocks 9–11 shaded: the sink blocks)", fontsize=12)
        ax.set_xlabel("block", fontsize=11)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
