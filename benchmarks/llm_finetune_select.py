"""Which passages to finetune SmolLM2 on: SkMM on sketched LoRA gradients vs the baselines.

Setup (sized for one CPU core; every number is an argument):

* **sources**: ``--data a,b`` (corpus sources of ``prune_jax.data.load_documents``) mixed
  in fractions ``--mix p,q`` (positive, summing to 1); default Wikipedia sample 0.75,
  Python docs 0.25. Each corpus is split into CALIBRATION and EVALUATION documents
  (``split_documents``, seed 0), so the two sides share no document;
* **pool**: ``--pool`` passages of 128 tokens of the mixture from the calibration
  documents (each source's share rounded by largest remainder);
* **held-out** and **target**: ``--held-out`` and ``--target`` passages of the same
  mixture from the evaluation documents, drawn together (one permutation of each
  source's windows: the first ones held out, the next ones the target), so they are
  disjoint and the held-out set does not depend on ``--target``. PPL is reported per
  source and on the mixture; the target is seen only by ``less``;
* **representation**: for every pool (and target) passage, the gradient of its
  next-token loss w.r.t. the LoRA factors of the run (rank 8 on q, v, o, gate, up, down
  of the last ``--lora-blocks`` blocks, the trainable parameters of the finetuning),
  Kronecker-sketched per factor to m = ``--sketch-dim`` (``finetune_gradients``, one
  sketch key for pool and target). LoRA starts at B = 0, so ∂ℓ/∂A = 0 and
  ∂ℓ/∂B = (xA)ᵀ g: the weight gradient seen through the random A (as in LESS). No
  labels: the text is its own target;
* **selections** of n ∈ ``--n`` passages: ``skmm`` (``select("skmm", ...)`` with the
  library's defaults on the sketched gradients), ``uniform``, ``less`` (`less_scores`:
  the n pool passages whose sketched gradients are most aligned with the target's),
  ``kcenter`` (greedy k-center on the sketched gradients) and ``loss`` (EL2N-style: the
  n passages of highest base-model loss, "hardest first", from the jitted
  ``prune_jax.evaluate.window_nll``);
* **finetuning**: ``prune_jax.finetune`` with the same ``--steps`` updates of
  ``--batch`` passages for every run (LoRA as above, AdamW lr ``--lr``), so a subset of n
  passages is seen steps · batch / n times (default 32 · 4 = 128 passages: 16, 8 and 4
  passes at n = 8, 16, 32: every subset is trained for several passes, none is the
  pool by construction); plus ``full`` (the whole pool, same steps: 1/8 pass) and no
  finetuning. (On one CPU core an update of 4 passages takes ≈ 4 s and a held-out
  evaluation ≈ 1 min, so a run ≈ 3 min; the pool's gradients ≈ 15 min, its losses
  ≈ 10 min, once.) Seeds ``--seeds`` change the selection (uniform, skmm, kcenter) and the
  LoRA init / passage order (all).

    python benchmarks/llm_finetune_select.py --seeds 0 --selections skmm,uniform
    python benchmarks/llm_finetune_select.py --seeds 1,2   # more runs (resumes: done runs are kept)

Writes benchmarks/results/llm_finetune_select.{json,md,png} (the JSON atomically after
every run; a rerun with the same setup skips what is done). The base losses and the
sketched gradients of pool and target are cached next to the JSON (.losses.npy,
.features.npy, .target_features.npy) and kept while their own setup is unchanged (a
new step budget or learning rate does not recompute them).
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
SELECTIONS = ("skmm", "uniform", "less", "kcenter", "loss")


def parse_mixture(data: str, mix: str) -> tuple[list[str], list[float]]:
    """(sources, fractions) from ``--data a,b`` and ``--mix p,q``, or a ValueError that
    says what is wrong: as many fractions as sources, no source twice, every fraction
    a positive number, their sum 1 (within 1e-6)."""
    sources = [s.strip() for s in data.split(",")]
    if not sources or any(not s for s in sources):
        raise ValueError(f"--data must name one or more corpus sources separated by commas, got {data!r}")
    if len(set(sources)) != len(sources):
        raise ValueError(f"--data names a source twice: {data!r}")
    try:
        fractions = [float(p) for p in mix.split(",")]
    except ValueError:
        raise ValueError(f"--mix must be numbers separated by commas, got {mix!r}") from None
    if len(fractions) != len(sources):
        raise ValueError(f"--mix has {len(fractions)} fractions for the {len(sources)} sources of --data ({data!r} vs {mix!r})")
    if any(not np.isfinite(p) or p <= 0 for p in fractions):
        raise ValueError(f"--mix fractions must be positive, got {mix!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"--mix fractions must sum to 1, got {mix!r} (sum {sum(fractions):g})")
    return sources, fractions


def mixture_counts(count: int, fractions: list[float]) -> list[int]:
    """Integer counts c_i with Σ c_i = ``count`` and c_i ≈ p_i · count: floors, then the
    leftover rows to the largest remainders (ties: earlier source first)."""
    exact = np.asarray(fractions) * count
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: count - counts.sum()]:
        counts[i] += 1
    return [int(c) for c in counts]


def draw_windows(tokens: np.ndarray, counts: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint sets of ``counts[k]`` non-overlapping 128-token windows of a stream: one
    uniform permutation of its windows, cut into consecutive parts (each part in stream
    order). Part k does not depend on the sizes of later parts."""
    from prune_jax.pruning.calib_select import window_pool

    windows = window_pool(tokens, SEQ_LEN)
    if len(windows) < sum(counts):
        raise SystemExit(f"the corpus has {len(windows)} windows of {SEQ_LEN} tokens, fewer than the {sum(counts)} asked for")
    order = np.random.default_rng(seed).permutation(len(windows))
    bounds = np.cumsum([0, *counts])
    return [windows[np.sort(order[a:b])].astype(np.int32) for a, b in zip(bounds[:-1], bounds[1:])]


def less_scores(pool_gradients: np.ndarray, target_gradients: np.ndarray) -> np.ndarray:
    """LESS-style influence of each pool row on a target set (Xia et al. 2024), [N]:

        s_i = (1 / M) Σ_j ⟨g_i / ‖g_i‖, t_j / ‖t_j‖⟩ = ⟨ĝ_i, mean_j t̂_j⟩,

    the mean cosine similarity of row i's (sketched) gradient to the M target rows'
    gradients; the rows of highest s are chosen. The cosine, not the inner product,
    because gradient norms shrink with the loss, and the inner product would favour
    short, high-loss rows (LESS §3). The sketch preserves inner products and norms in
    expectation (Johnson-Lindenstrauss), so s on the sketched gradients estimates s on
    the full LoRA gradients, as LESS's random projection does.

    What we simplify: LESS sums s over the checkpoints of a short warmup training on
    5% of the pool (learning-rate weighted) and uses Adam-preconditioned training
    gradients (Γ(g) = m / (√v + ε) of the optimizer state); here one checkpoint, the
    LoRA initialisation, without warmup, and plain SGD gradients, with one target task
    (LESS takes the max over tasks). Rows with a zero gradient score 0.
    """
    def unit_rows(matrix: np.ndarray) -> np.ndarray:
        matrix = np.asarray(matrix, np.float64)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)

    if pool_gradients.ndim != 2 or target_gradients.ndim != 2 or pool_gradients.shape[1] != target_gradients.shape[1]:
        raise ValueError(f"gradients must be [N, m] and [M, m], got {pool_gradients.shape} and {target_gradients.shape}")
    return unit_rows(pool_gradients) @ unit_rows(target_gradients).mean(axis=0)


def top_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """The n rows of highest score (ties: lower index first)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="wiki-sample,python-docs", help="corpus sources, comma-separated")
    parser.add_argument("--mix", default="0.75,0.25", help="their fractions, comma-separated, summing to 1")
    parser.add_argument("--pool", type=int, default=1024)
    parser.add_argument("--held-out", type=int, default=128)
    parser.add_argument("--target", type=int, default=32, help="target passages of less (evaluation documents)")
    parser.add_argument("--n", default="8,16,32")
    parser.add_argument("--selections", default=",".join(SELECTIONS + ("full",)),
                        help=f"of {', '.join(SELECTIONS)} and full (the whole pool, same steps)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lora-blocks", type=int, default=8)
    parser.add_argument("--sketch-dim", type=int, default=256)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--grad-chunk", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS / "llm_finetune_select.json"))
    args = parser.parse_args()
    try:
        sources, fractions = parse_mixture(args.data, args.mix)
    except ValueError as error:
        parser.error(str(error))
    selection_names = [s for s in args.selections.split(",") if s]
    unknown = sorted(set(selection_names) - set(SELECTIONS) - {"full"})
    if unknown:
        parser.error(f"unknown selections {unknown}: choose among {', '.join(SELECTIONS)}, full")

    import jax
    from tqdm import tqdm

    from prune_jax.data import load_documents, split_documents, tokenize_corpus
    from prune_jax.evaluate import perplexity, window_nll
    from prune_jax.finetune import FinetuneConfig, finetune, finetune_gradients
    from prune_jax.lora import init_lora, trainable_size
    from prune_jax.models.llama import load_model
    from skmm_jax.common.io import save_json_atomic
    from skmm_jax.select import select

    out_json = Path(args.out)
    model, tokenizer = load_model("smollm2-135m", tokenizer=True)
    pool_parts, held_parts, target_parts, tokens = [], [], [], {}
    for source, pool_count, eval_count, target_count in zip(
            sources, mixture_counts(args.pool, fractions), mixture_counts(args.held_out, fractions),
            mixture_counts(args.target, fractions)):
        if eval_count < 1:
            parser.error(f"--held-out {args.held_out} leaves no held-out passage of {source} (fraction too small)")
        calibration, evaluation = split_documents(load_documents(source))
        calibration, evaluation = tokenize_corpus(calibration, tokenizer), tokenize_corpus(evaluation, tokenizer)
        tokens[source] = {"calibration": int(calibration.size), "evaluation": int(evaluation.size)}
        pool_parts.append(draw_windows(calibration, [pool_count], seed=0)[0])
        held, target = draw_windows(evaluation, [eval_count, target_count], seed=1)
        held_parts.append(held)
        target_parts.append(target)
    pool, held, target = (np.concatenate(parts) for parts in (pool_parts, held_parts, target_parts))
    pool_source, held_source = (np.repeat(np.arange(len(sources)), [len(p) for p in parts]) for parts in (pool_parts, held_parts))

    layers = tuple(range(model.config.num_layers - args.lora_blocks, model.config.num_layers))
    base_config = FinetuneConfig(trainable="lora", rank=8, alpha=16.0, lora_layers=layers, learning_rate=args.lr,
                                 steps=args.steps, batch_size=args.batch, checkpoint_every=args.steps)
    # What the cached features depend on (not the step budget, learning rate or seeds).
    feature_setup = {"data": sources, "mix": fractions, "pool": args.pool, "held_out": args.held_out, "target": args.target,
                     "seq_len": SEQ_LEN, "lora_blocks": args.lora_blocks, "sketch_dim": args.sketch_dim,
                     "rank": base_config.rank, "alpha": base_config.alpha, "targets": list(base_config.targets),
                     "sketch_key": 7, "tokens": tokens}
    setup = {**feature_setup, "finetune": base_config.to_json()}
    payload = json.loads(out_json.read_text()) if out_json.exists() else {}
    if payload.get("setup") != setup:
        if payload:
            print(f"{out_json} holds another setup: starting over", flush=True)
        features_info, old_runs = payload.get("features"), payload.get("runs", [])
        payload = {"setup": setup, "runs": [], "selections": {}, "commands": []}
        if features_info and features_info.get("setup") == feature_setup:
            # The cached features are still valid, and so is the base model's PPL.
            payload["features"] = features_info
            payload["runs"] = [r for r in old_runs if r["selection"] == "none"]
    runs, selections = payload["runs"], payload["selections"]
    payload.setdefault("commands", []).append(" ".join(["python", "benchmarks/llm_finetune_select.py"] + sys.argv[1:]))
    print({k: v for k, v in setup.items() if k != "finetune"}, flush=True)

    def evaluate(tuned) -> dict:
        """Held-out PPL per source and of the mixture (token-weighted mean NLL of all parts)."""
        parts = {source: perplexity(tuned, held[held_source == code]) for code, source in enumerate(sources)}
        nll = sum(p.nll * p.tokens for p in parts.values()) / sum(p.tokens for p in parts.values())
        return {"ppl": float(np.exp(nll)), "ppl_by_source": {source: p.perplexity for source, p in parts.items()}}

    def save() -> None:
        save_json_atomic(out_json, {**payload, "runs": runs, "selections": selections})

    # The label-free representations: per-passage base loss and sketched LoRA gradients
    # of pool and target, all at seed 0's LoRA init with one sketch key.
    cache = {name: out_json.with_suffix(f".{name}.npy") for name in ("losses", "features", "target_features")}
    if "features" not in payload or not all(path.exists() for path in cache.values()):
        start = time.perf_counter()
        losses = window_nll(model, pool, batch_size=32)
        loss_seconds = time.perf_counter() - start

        def gradients(rows: np.ndarray, desc: str) -> tuple[np.ndarray, float]:
            start = time.perf_counter()
            with tqdm(total=len(rows), unit="passage", desc=desc) as bar:
                result = finetune_gradients(model, rows, base_config, sketch_dim=args.sketch_dim, key=jax.random.key(7),
                                            chunk_size=args.grad_chunk, progress=lambda done, total: bar.update(done - bar.n))
            return result, time.perf_counter() - start

        target_features, target_seconds = gradients(target, "sketched LoRA gradients, target")
        features, gradient_seconds = gradients(pool, "sketched LoRA gradients, pool")
        r = trainable_size(init_lora(model, jax.random.key(0), base_config.rank, layers=layers))
        for name, array in (("losses", losses), ("features", features), ("target_features", target_features)):
            np.save(cache[name], array)
        payload["features"] = {"setup": feature_setup, "gradient_seconds": gradient_seconds, "target_seconds": target_seconds,
                               "loss_seconds": loss_seconds, "r": r, "m": args.sketch_dim}
        save()
    losses, features, target_features = (np.load(cache[name]) for name in ("losses", "features", "target_features"))
    print({k: v for k, v in payload["features"].items() if k != "setup"}, flush=True)

    def choose(selection: str, n: int, seed: int) -> np.ndarray:
        key = f"{selection}/{n}/{seed}"
        if key not in selections:
            start = time.perf_counter()
            if selection == "uniform":
                indices = np.random.default_rng([seed, n]).choice(len(pool), size=n, replace=False)
            elif selection == "loss":
                indices = top_rows(losses, n)
            elif selection == "less":
                indices = top_rows(less_scores(features, target_features), n)
            else:
                indices = select(selection, jax.random.key(seed), features, n).indices
            indices = np.asarray(indices)
            selections[key] = {"seconds": time.perf_counter() - start, "indices": [int(i) for i in indices],
                               "share_by_source": {s: float(np.mean(pool_source[indices] == c)) for c, s in enumerate(sources)},
                               "base_loss": float(losses[indices].mean())}
        return np.asarray(selections[key]["indices"])

    done = {(r["selection"], r["n"], r["seed"]) for r in runs}
    if ("none", 0, 0) not in done:
        runs.append({"selection": "none", "n": 0, "seed": 0, **evaluate(model)})
        save()
        print(runs[-1], flush=True)
    ns = [int(x) for x in args.n.split(",")]
    for seed in [int(s) for s in args.seeds.split(",")]:  # seed-major: an interrupted run leaves balanced results
        plan = [(s, n) for n in ns for s in selection_names if s != "full"]
        plan += [("full", len(pool))] if "full" in selection_names else []
        for selection, n in plan:
            if (selection, n, seed) in done:
                continue
            rows = pool if selection == "full" else pool[choose(selection, n, seed)]
            config = dataclasses.replace(base_config, seed=seed)
            start = time.perf_counter()
            with tqdm(total=config.steps, unit="update", desc=f"{selection} n={n} seed={seed}", leave=False) as bar:
                result = finetune(model, rows, config, progress=lambda done, total: bar.update(done - bar.n))
            row = {"selection": selection, "n": n, "seed": seed, "finetune_seconds": time.perf_counter() - start,
                   "passes": config.steps * config.batch_size / n,
                   "train_loss_first": float(result.losses[0]), "train_loss_last": float(result.losses[-1]), **evaluate(result.model)}
            if selection != "full":
                row.update({k: selections[f"{selection}/{n}/{seed}"][k] for k in ("share_by_source", "base_loss", "seconds")})
            runs.append(row)
            save()
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    payload["pool_share_by_source"] = {s: float(np.mean(pool_source == c)) for c, s in enumerate(sources)}
    payload["pool_base_loss"] = float(losses.mean())
    save()
    write_report({**payload, "runs": runs, "selections": selections}, out_json)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_report(payload: dict, out_json: Path) -> None:
    runs = payload["runs"]
    setup = payload["setup"]
    sources = setup["data"]
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["selection"], r["n"]), []).append(r)

    def value(run: dict, key: str):
        """``key``, or ``ppl/<source>`` / ``share/<source>`` inside the per-source dicts."""
        if key.startswith("ppl/"):
            return run.get("ppl_by_source", {}).get(key[4:])
        if key.startswith("share/"):
            return run.get("share_by_source", {}).get(key[6:])
        return run.get(key)

    def cell(group: list, key: str, fmt: str = ".2f") -> str:
        values = [v for v in (value(g, key) for g in group) if v is not None]
        if not values:
            return "—"
        if len(values) == 1:
            return f"{values[0]:{fmt}}"
        mean, std = _mean_std(values)
        return f"{mean:{fmt}} ± {std:{fmt}}"

    ft = setup["finetune"]
    passages_seen = ft["steps"] * ft["batch_size"]
    mixture = ", ".join(f"{s} {p:g}" for s, p in zip(sources, setup["mix"]))
    ns = sorted({n for (s, n) in groups if s not in ("none", "full")})
    lines = ["# Finetuning data chosen by SkMM vs baselines (`benchmarks/llm_finetune_select.py`)", "",
             f"SmolLM2-135M, LoRA r = {ft['rank']} (α = {ft['alpha']:g}) on {', '.join(ft['targets'])} of the last "
             f"{setup['lora_blocks']} blocks, AdamW lr {ft['learning_rate']:g}, {ft['steps']} updates × {ft['batch_size']} passages "
             f"= {passages_seen} passages for every run, so a subset of n passages is trained for {passages_seen} / n passes ("
             + ", ".join(f"n = {n}: {passages_seen / n:g}" for n in ns) + f"; the full pool: {passages_seen / setup['pool']:g}). "
             f"Mixture: {mixture}. Pool: {setup['pool']} passages of {setup['seq_len']} tokens from the calibration documents; "
             f"held-out: {setup['held_out']} passages and less's target: {setup['target']} passages (disjoint) of the same mixture "
             "from the evaluation documents. skmm / kcenter select on the sketched LoRA gradients "
             f"(m = {setup['sketch_dim']}); less = the n passages of highest mean cosine of their sketched gradient to the "
             "target's; loss = the n passages of highest base-model loss. Mean ± std over seeds (sample std).", "",
             "| selection | n | passes | seeds | held-out PPL | " + " | ".join(f"{s} PPL" for s in sources) + " | "
             + " | ".join(f"{s} share" for s in sources) + " | subset base loss | last train loss | selection s |",
             "|---|---:|---:|---:|---:|" + "---:|" * (2 * len(sources)) + "---:|---:|---:|"]
    order = {"none": 0, "full": 9, **{s: i + 1 for i, s in enumerate(SELECTIONS)}}

    def sort_key(item):
        (selection, n), _ = item
        return (-1 if selection == "none" else 1e9 if selection == "full" else n), order.get(selection, 5)

    for (selection, n), group in sorted(groups.items(), key=sort_key):
        passes = "—" if selection == "none" else f"{passages_seen / n:g}"
        lines.append(f"| {selection} | {n if selection != 'none' else '—'} | {passes} | {len(group)} | {cell(group, 'ppl')} | "
                     + " | ".join(cell(group, f"ppl/{s}") for s in sources) + " | "
                     + " | ".join(cell(group, f"share/{s}") for s in sources) + " | "
                     f"{cell(group, 'base_loss')} | {cell(group, 'train_loss_last')} | {cell(group, 'seconds', '.1f')} |")
    lines += ["", "SkMM vs uniform, held-out PPL (mixture); Δ = mean(skmm) − mean(uniform), |Δ| compared with "
              "each one's std:", ""]
    for n in ns:
        skmm, uniform = ([g["ppl"] for g in groups.get((s, n), [])] for s in ("skmm", "uniform"))
        if len(skmm) < 2 or len(uniform) < 2:
            lines.append(f"- n = {n}: fewer than two seeds of skmm or uniform ({len(skmm)}, {len(uniform)})")
            continue
        (ms, ss), (mu, su) = _mean_std(skmm), _mean_std(uniform)
        delta = ms - mu
        better = "skmm better" if delta < 0 else "skmm worse"
        if abs(delta) > max(ss, su):
            verdict = f"outside one std of both: {better}"
        elif abs(delta) > min(ss, su):
            verdict = f"{better}, outside {'uniform' if su < ss else 'skmm'}'s std only"
        else:
            verdict = "within one std of both"
        lines.append(f"- n = {n} ({passages_seen / n:g} passes): skmm {ms:.2f} ± {ss:.2f}, uniform {mu:.2f} ± {su:.2f}, "
                     f"Δ = {delta:+.2f} ({verdict})")
    features = payload.get("features", {})
    pool_shares = ", ".join(f"{s} {p:.2f}" for s, p in payload.get("pool_share_by_source", {}).items())
    lines += ["", f"Pool: shares {pool_shares}; mean base loss {payload.get('pool_base_loss', float('nan')):.2f}. Sketched LoRA "
              f"gradients (r = {features.get('r', 0):,} → m = {features.get('m', 0)}): {features.get('gradient_seconds', float('nan')):.0f} s "
              f"for the pool, {features.get('target_seconds', float('nan')):.0f} s for the target (compile included); base losses "
              f"(jitted `window_nll`): {features.get('loss_seconds', float('nan')):.0f} s. Finetuning: "
              f"{_mean_std([r['finetune_seconds'] for r in runs if 'finetune_seconds' in r] or [float('nan')])[0]:.0f} s a run "
              "(mean).", "", "Commands (the results resume across them):", ""]
    lines += [f"    {c}" for c in payload.get("commands", [])]
    out_json.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(groups, out_json.with_suffix(".png"), passages_seen)


def plot(groups: dict, path: Path, passages_seen: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({n for (s, n) in groups if s not in ("none", "full")})
    present = [s for s in SELECTIONS if any(sel == s for sel, _ in groups)]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(present))
    for i, selection in enumerate(present):
        means, stds, xs = [], [], []
        for j, n in enumerate(ns):
            values = [g["ppl"] for g in groups.get((selection, n), [])]
            if values:
                xs.append(j + (i - (len(present) - 1) / 2) * width)
                mean, std = _mean_std(values)
                means.append(mean)
                stds.append(std)
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=selection)
    for selection, style in (("none", ":"), ("full", "--")):
        values = [g["ppl"] for (s, _), group in groups.items() if s == selection for g in group]
        if values:
            ax.axhline(np.mean(values), color="k", linestyle=style, label=f"{selection} ({np.mean(values):.2f})")
    ax.set_xticks(range(len(ns)), [f"n = {n}\n({passages_seen / n:g} passes)" for n in ns])
    ax.set_ylabel("held-out PPL (mixture)")
    lows = [g["ppl"] for group in groups.values() for g in group]
    if lows:
        ax.set_ylim(min(lows) * 0.97, max(lows) * 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"SmolLM2-135M LoRA finetuning on selected passages ({passages_seen} passages each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
