"""Which passages to finetune SmolLM2 on: SkMM on sketched LoRA gradients vs the baselines.

Setup (sized for a 2-core CPU; every number is an argument):

* **pool**: ``--pool`` passages of 128 tokens mixing the two shipped corpora, a fraction
  ``--docs-fraction`` from the Python docs and the rest from the Wikipedia sample, each
  taken from its corpus' CALIBRATION documents (``split_documents``, seed 0);
* **held-out**: ``--held-out`` passages of the same mixture from the EVALUATION documents
  of both corpora (disjoint documents); PPL is reported on the mixture and per corpus;
* **representation**: for every pool passage, the gradient of its next-token loss w.r.t.
  the LoRA factors of the run (rank 8 on q, v, o, gate, up, down of the last
  ``--lora-blocks`` blocks, the trainable parameters of the finetuning), Kronecker-
  sketched per factor to m = ``--sketch-dim`` with ``factored=True`` (no per-sample
  [r] gradient is formed). LoRA starts at B = 0, so ∂ℓ/∂A = 0 and ∂ℓ/∂B = (xA)ᵀ g: the
  B-gradient is the weight gradient seen through the random A (as in LESS). No labels:
  the text is its own target.
* **selections** of n ∈ ``--n`` passages: ``skmm`` (``select("skmm", ...)`` with the
  library's defaults on the sketched gradients), ``uniform``, ``kcenter`` (greedy
  k-center on the same sketched gradients) and ``loss`` (EL2N-style: the n passages of
  highest base-model loss, "hardest first");
* **finetuning**: ``prune_jax.finetune`` with the same ``--steps`` updates of
  ``--batch`` passages for every subset (LoRA as above, AdamW lr ``--lr``), plus the
  whole pool (same steps) and no finetuning. Seeds ``--seeds`` change the selection
  (uniform, skmm, kcenter) and the LoRA init / passage order (all).

    python benchmarks/llm_finetune_select.py          # ~1 h on 2 cores
    python benchmarks/llm_finetune_select.py --seeds 3,4   # more seeds (resumes: done runs are kept)

Writes benchmarks/results/llm_finetune_select.{json,md,png} (the JSON atomically after
every run; a rerun with the same setup skips what is done).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
SEQ_LEN = 128
SELECTIONS = ("skmm", "uniform", "kcenter", "loss")


def passages(tokens: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` distinct non-overlapping 128-token windows of a stream, uniformly chosen."""
    from prune_jax.pruning.calib_select import window_pool

    windows = window_pool(tokens, SEQ_LEN)
    if len(windows) < count:
        raise SystemExit(f"the corpus has {len(windows)} windows of {SEQ_LEN} tokens, fewer than the {count} asked for")
    return windows[np.sort(np.random.default_rng(seed).choice(len(windows), size=count, replace=False))]


def mixture(wiki: np.ndarray, docs: np.ndarray, count: int, docs_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(passages [count, 128], source [count]: 1 = Python docs), a fixed mixture."""
    num_docs = int(round(docs_fraction * count))
    rows = np.concatenate([passages(wiki, count - num_docs, seed), passages(docs, num_docs, seed)])
    source = np.concatenate([np.zeros(count - num_docs, np.int8), np.ones(num_docs, np.int8)])
    return rows.astype(np.int32), source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=1024)
    parser.add_argument("--held-out", type=int, default=128)
    parser.add_argument("--docs-fraction", type=float, default=0.25)
    parser.add_argument("--n", default="64,256")
    parser.add_argument("--selections", default=",".join(SELECTIONS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lora-blocks", type=int, default=8)
    parser.add_argument("--sketch-dim", type=int, default=256)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--grad-chunk", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS / "llm_finetune_select.json"))
    args = parser.parse_args()

    import jax
    from tqdm import tqdm

    from prune_jax.data import load_documents, split_documents, tokenize_corpus
    from prune_jax.data.corpora import PYTHON_DOCS_SOURCE
    from prune_jax.evaluate import perplexity
    from prune_jax.finetune import FinetuneConfig, finetune, finetune_gradients
    from prune_jax.lora import init_lora, trainable_size
    from prune_jax.models.llama import load_model
    from skmm_jax.common.io import save_json_atomic
    from skmm_jax.select import select

    out_json = Path(args.out)
    model, tokenizer = load_model("smollm2-135m", tokenizer=True)
    streams = {}
    for name, source in (("wiki", "wiki-sample"), ("docs", PYTHON_DOCS_SOURCE)):
        calibration, evaluation = split_documents(load_documents(source))
        streams[name] = (tokenize_corpus(calibration, tokenizer), tokenize_corpus(evaluation, tokenizer))
    pool, pool_source = mixture(streams["wiki"][0], streams["docs"][0], args.pool, args.docs_fraction, seed=0)
    held, held_source = mixture(streams["wiki"][1], streams["docs"][1], args.held_out, args.docs_fraction, seed=1)
    layers = tuple(range(model.config.num_layers - args.lora_blocks, model.config.num_layers))
    base_config = FinetuneConfig(trainable="lora", rank=8, alpha=16.0, lora_layers=layers, learning_rate=args.lr,
                                 steps=args.steps, batch_size=args.batch, checkpoint_every=args.steps)
    setup = {"pool": args.pool, "held_out": args.held_out, "docs_fraction": args.docs_fraction, "seq_len": SEQ_LEN,
             "lora_blocks": args.lora_blocks, "sketch_dim": args.sketch_dim, "finetune": base_config.to_json(),
             "pool_tokens": {k: int(v[0].size) for k, v in streams.items()}, "held_out_tokens": {k: int(v[1].size) for k, v in streams.items()}}
    payload = json.loads(out_json.read_text()) if out_json.exists() else {}
    if payload.get("setup") != setup:
        if payload:
            print(f"{out_json} holds another setup: starting over", flush=True)
        payload = {"setup": setup, "runs": [], "selections": {}}
    runs, selections = payload["runs"], payload["selections"]
    print({k: v for k, v in setup.items() if k != "finetune"}, flush=True)

    def evaluate(tuned) -> dict:
        """Held-out PPL per corpus and of the mixture (token-weighted mean NLL of both parts)."""
        parts = {name: perplexity(tuned, held[held_source == code]) for name, code in (("wiki", 0), ("docs", 1))}
        nll = sum(p.nll * p.tokens for p in parts.values()) / sum(p.tokens for p in parts.values())
        return {"ppl": float(np.exp(nll)), **{f"ppl_{name}": p.perplexity for name, p in parts.items()}}

    def save() -> None:
        save_json_atomic(out_json, {**payload, "runs": runs, "selections": selections})

    # The label-free representations: per-passage base loss and sketched LoRA gradients.
    if "features" not in payload:
        start = time.perf_counter()
        losses = np.concatenate([np.asarray(model.token_nll(pool[i:i + 32])).mean(axis=1) for i in range(0, len(pool), 32)])
        loss_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with tqdm(total=len(pool), unit="passage", desc="sketched LoRA gradients") as bar:  # at seed 0's LoRA init
            features = finetune_gradients(model, pool, base_config, sketch_dim=args.sketch_dim, key=jax.random.key(7),
                                          chunk_size=args.grad_chunk, progress=lambda done, total: bar.update(done - bar.n))
        r = trainable_size(init_lora(model, jax.random.key(0), base_config.rank, layers=layers))
        payload["features"] = {"gradient_seconds": time.perf_counter() - start, "loss_seconds": loss_seconds,
                               "r": r, "m": args.sketch_dim}
        np.save(out_json.with_suffix(".features.npy"), features)
        np.save(out_json.with_suffix(".losses.npy"), losses)
        save()
    features = np.load(out_json.with_suffix(".features.npy"))
    losses = np.load(out_json.with_suffix(".losses.npy"))
    print(payload["features"], flush=True)

    def choose(selection: str, n: int, seed: int) -> np.ndarray:
        key = f"{selection}/{n}/{seed}"
        if key not in selections:
            start = time.perf_counter()
            if selection == "uniform":
                indices = np.random.default_rng([seed, n]).choice(len(pool), size=n, replace=False)
            elif selection == "loss":
                indices = np.argsort(-losses, kind="stable")[:n]
            else:
                indices = select(selection, jax.random.key(seed), features, n).indices
            selections[key] = {"seconds": time.perf_counter() - start, "indices": [int(i) for i in indices],
                                "docs_fraction": float(pool_source[np.asarray(indices)].mean()),
                                "base_loss": float(losses[np.asarray(indices)].mean())}
        return np.asarray(selections[key]["indices"])

    done = {(r["selection"], r["n"], r["seed"]) for r in runs}
    if ("none", 0, 0) not in done:
        runs.append({"selection": "none", "n": 0, "seed": 0, **evaluate(model)})
        save()
        print(runs[-1], flush=True)
    ns = [int(x) for x in args.n.split(",")]
    for seed in [int(s) for s in args.seeds.split(",")]:  # seed-major: an interrupted run leaves balanced results
        plan = [(s, n) for n in ns for s in args.selections.split(",") if s] + [("full", len(pool))]
        for selection, n in plan:
            if (selection, n, seed) in done:
                continue
            rows = pool if selection == "full" else pool[choose(selection, n, seed)]
            config = dataclasses.replace(base_config, seed=seed)
            start = time.perf_counter()
            with tqdm(total=config.steps, unit="update", desc=f"{selection} n={n} seed={seed}", leave=False) as bar:
                result = finetune(model, rows, config, progress=lambda done, total: bar.update(done - bar.n))
            row = {"selection": selection, "n": n, "seed": seed, "finetune_seconds": time.perf_counter() - start,
                   "train_loss_first": float(result.losses[0]), "train_loss_last": float(result.losses[-1]), **evaluate(result.model)}
            if selection != "full":
                row.update({k: selections[f"{selection}/{n}/{seed}"][k] for k in ("docs_fraction", "base_loss", "seconds")})
            runs.append(row)
            save()
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    payload["command"] = " ".join(["python", "benchmarks/llm_finetune_select.py"] + sys.argv[1:])
    payload["pool_docs_fraction"] = float(pool_source.mean())
    payload["pool_base_loss"] = float(losses.mean())
    save()
    write_report({**payload, "runs": runs, "selections": selections}, out_json)


def write_report(payload: dict, out_json: Path) -> None:
    runs = payload["runs"]
    setup = payload["setup"]
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["selection"], r["n"]), []).append(r)

    def cell(group: list, key: str, fmt: str = ".2f") -> str:
        values = [g[key] for g in group if key in g]
        if not values:
            return "—"
        if len(values) == 1:
            return f"{values[0]:{fmt}}"
        return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"

    ft = setup["finetune"]
    lines = ["# Finetuning data chosen by SkMM vs baselines (`benchmarks/llm_finetune_select.py`)", "",
             f"SmolLM2-135M, LoRA r = {ft['rank']} (α = {ft['alpha']:g}) on {', '.join(ft['targets'])} of the last "
             f"{setup['lora_blocks']} blocks, AdamW lr {ft['learning_rate']:g}, {ft['steps']} updates × {ft['batch_size']} passages "
             f"for every run. Pool: {setup['pool']} passages of {setup['seq_len']} tokens ({setup['docs_fraction']:.0%} Python docs, "
             f"the rest Wikipedia; calibration documents); held-out: {setup['held_out']} passages of the same mixture from the "
             "evaluation documents. skmm / kcenter select on the sketched LoRA gradients "
             f"(m = {setup['sketch_dim']}); loss = the n passages of highest base-model loss. Mean ± std over seeds.", "",
             "| selection | n | seeds | held-out PPL | wiki PPL | docs PPL | docs share of subset | subset base loss | last train loss | selection s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {"none": 0, "full": 9, **{s: i + 1 for i, s in enumerate(SELECTIONS)}}
    for (selection, n), group in sorted(groups.items(), key=lambda kv: (kv[0][1] if kv[0][0] not in ("none", "full") else (0 if kv[0][0] == "none" else 1e9), order.get(kv[0][0], 5))):
        lines.append(f"| {selection} | {n if selection != 'none' else '—'} | {len(group)} | {cell(group, 'ppl')} | {cell(group, 'ppl_wiki')} | "
                     f"{cell(group, 'ppl_docs')} | {cell(group, 'docs_fraction')} | {cell(group, 'base_loss')} | "
                     f"{cell(group, 'train_loss_last')} | {cell(group, 'seconds', '.1f')} |")
    features = payload.get("features", {})
    lines += ["", f"Pool: docs share {payload.get('pool_docs_fraction', float('nan')):.2f}, mean base loss "
              f"{payload.get('pool_base_loss', float('nan')):.2f}. Sketched LoRA gradients (r = {features.get('r', 0):,} → "
              f"m = {features.get('m', 0)}): {features.get('gradient_seconds', float('nan')):.0f} s for the pool (compile included).",
              "", f"Command: `{payload.get('command', 'python benchmarks/llm_finetune_select.py')}`."]
    out_json.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(groups, out_json.with_suffix(".png"))


def plot(groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({n for (s, n) in groups if s not in ("none", "full")})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(SELECTIONS)
    for i, selection in enumerate(SELECTIONS):
        means, stds, xs = [], [], []
        for j, n in enumerate(ns):
            values = [g["ppl"] for g in groups.get((selection, n), [])]
            if values:
                xs.append(j + (i - (len(SELECTIONS) - 1) / 2) * width)
                means.append(np.mean(values))
                stds.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=selection)
    for selection, style in (("none", ":"), ("full", "--")):
        values = [g["ppl"] for (s, _), group in groups.items() if s == selection for g in group]
        if values:
            ax.axhline(np.mean(values), color="k", linestyle=style, label=f"{selection} ({np.mean(values):.2f})")
    ax.set_xticks(range(len(ns)), [f"n = {n}" for n in ns])
    ax.set_ylabel("held-out PPL (mixture)")
    lows = [g["ppl"] for group in groups.values() for g in group]
    if lows:
        ax.set_ylim(min(lows) * 0.97, max(lows) * 1.02)
    ax.legend(fontsize=8)
    ax.set_title("SmolLM2-135M LoRA finetuning on selected passages")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
