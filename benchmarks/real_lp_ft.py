"""SkMM vs DeepCore-family baselines on a real task: linear probing (LP) and finetuning (FT).

The paper's Tables 2–3 protocol (StanfordCars on CLIP / ResNet18) on what is reachable
offline: 64-token passages of the shipped Wikipedia sample labelled by article
(``prune_jax.experiments.llama_features.wiki_passage_task``: 96 classes, train pool 2759 / val 574 / test
574), features and layer inputs of the frozen SmolLM2-135M (``extract_llama_features``,
cached in ~/.cache/prune_jax/real_lp_ft/).

- LP: every method selects n ≈ 5, 10, 15, 20, 25 % of the pool from the pool's
  mean-pooled final hidden states (SkMM label-free; the DeepCore methods train a linear
  proxy on the pool's features AND labels). A softmax probe is trained with optax on the
  coreset only; its learning rate × weight decay is chosen per run on the validation
  split (``select_hyperparameters``); test accuracy and macro-F1 are reported. Seed s
  is both the selection key (folded with n) and the training key.
- FT: the last decoder block's MLP + a linear head are finetuned on the coreset from the
  cached layer inputs, starting from the LP probe trained on the same coreset (LP-FT).
  Two label-free SkMM rows: ``skmm`` (the input that won on FT validation accuracy) and
  ``skmm-grad`` (sketched per-sample gradients of (MLP, head) at the pretrained point
  with a random head: Jacobian sketch, Kronecker pytree sketch); the baselines select
  from the pooled features exactly as in LP. The FT learning rate and epochs are chosen
  ONCE on the validation split with a uniform coreset of the middle n (seed 0) and then
  fixed for every method.
- Tuning (``--part tune``, ``--part tune-ft``): SkMM's options (input representation,
  sketch, greedy ridge) compared on VALIDATION accuracy only (LP probe, then FT), seeds
  100–101, never test; the winners are the ``SKMM_LP`` / ``SKMM_FT_VARIANTS`` constants
  below, and what was tried is stored in the JSON (``tuning``, ``tuning_ft``).

    python benchmarks/real_lp_ft.py --part tune          # SkMM options, LP validation only
    python benchmarks/real_lp_ft.py --part tune-ft       # FT grid + SkMM inputs, FT validation only
    python benchmarks/real_lp_ft.py --part lp --seeds 5  # resumable
    python benchmarks/real_lp_ft.py --part ft --seeds 5  # resumable; after lp
    python benchmarks/real_lp_ft.py                      # lp then ft

Results: benchmarks/results/real_lp_ft.{json,md,png}; the JSON is rewritten
atomically after every run, and finished runs are skipped on restart (``--fresh``
starts over).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_jax.experiments.llama_features import mlp_head_from_llama  # noqa: E402
from skmm_jax.common.io import save_json_atomic, save_npy_atomic  # noqa: E402
from skmm_jax.experiments.metrics import metrics  # noqa: E402
from skmm_jax.experiments.mlp_finetune import FinetuneConfig, finetune, ft_gradient_loss, ft_predict  # noqa: E402
from skmm_jax.gradients import rademacher_weights, sketch_per_sample_grads  # noqa: E402
from skmm_jax.select import METHODS, select  # noqa: E402
from skmm_jax.sketch import make_pytree_sketch  # noqa: E402
from skmm_jax.train.probe import default_probe_grid, predict, select_hyperparameters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT_JSON = RESULTS / "real_lp_ft.json"
CACHE = Path.home() / ".cache" / "prune_jax" / "real_lp_ft"
MODEL = "smollm2-135m"

POOL_FRACTIONS = (0.05, 0.10, 0.15, 0.20, 0.25)
LP_METHODS = (
    "skmm", "uniform", "herding", "kcenter", "adaptive", "leverage", "ridge-leverage",
    "el2n", "grand", "forgetting", "entropy", "margin", "least-confidence", "contextual-diversity",
)  # fmt: skip
FULL_POOL = "full pool"
PROBE_GRID = default_probe_grid()  # lr (1e-3, 1e-2) × weight decay (1e-4, 1e-2, 1e-1), 100 epochs, AdamW

# SkMM for LP, fixed after --part tune (validation accuracy only). "input": what the
# selection sees — "standardized" pooled features (z-scored over the pool, as the probe
# sees them up to the coreset's own statistics), "raw", "l2" (unit rows), or the FT
# Jacobian sketch in several forms ("ft-grad*", see skmm_input); "sketch_dim": None =
# no further sketch (the 576 features, or the m = 1024 gradient sketch, as they are).
SKMM_LP: dict[str, Any] = {"input": "standardized", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2}
# The FT Jacobian sketch: per-sample gradients of (last MLP, head) at θ0, random head
# from key 0, Rademacher readout weights from key 1 (shared by all samples by default, see
# ft_gradient_sketch), Kronecker pytree sketch (key 2) to m = 1024.
GRAD_SKETCH = {"kind": "kronecker", "dim": 1024, "head_key": 0, "weights_key": 1, "sketch_key": 2, "chunk_size": 16}
# SkMM for FT, two rows in the FT table (both label-free): "skmm" = the input that won on
# FT validation accuracy (--part tune-ft), "skmm-grad" = the best input built from the FT
# Jacobian sketch alone (on LP validation: z-scored columns, then unit rows).
SKMM_FT_VARIANTS: dict[str, dict[str, Any]] = {
    "skmm": {"input": "standardized", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    "skmm-grad": {"input": "ft-grad-shared-standardized-l2", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
}

# FT: the grid searched once on validation (uniform coreset, middle n, seed 0) and the
# sizes of the FT table. Methods (unless --methods): both SkMM rows, uniform and the
# FT_TOP_BASELINES other LP methods with the best mean LP test accuracy.
FT_LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4)
FT_EPOCHS = (1, 2, 5, 10)
FT_BATCH = 32
FT_FRACTIONS = (0.05, 0.10, 0.15)
FT_TOP_BASELINES = 4


# ------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True, eq=False)
class Data:
    model: Any
    task: Any
    pooled: np.ndarray  # [N, D] float32, all passages
    layer_inputs: np.ndarray  # [N, T, D] float16 memmap
    labels: np.ndarray  # [N] int32

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    def split(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self.task, name))


def load_data() -> Data:
    from tqdm import tqdm

    from prune_jax.experiments.llama_features import extract_llama_features, wiki_passage_task
    from prune_jax.models.llama import load_model

    model, tokenizer = load_model(MODEL)
    task = wiki_passage_task(tokenizer)
    progress_file = CACHE / "features" / "progress.json"
    was_complete = progress_file.exists() and json.loads(progress_file.read_text()).get("complete", False)
    start = time.perf_counter()
    with tqdm(total=task.num_passages, unit="passage", desc=f"features T={task.passage_tokens}") as bar:
        features = extract_llama_features(
            model, task.tokens, cache=CACHE / "features", batch_size=16, layer_input="float16",
            progress=lambda done, total: bar.update(done - bar.n),
        )  # fmt: skip
    if not was_complete:  # the last (possibly resumed) extraction's time, for the runtime line
        seconds = time.perf_counter() - start
        save_json_atomic(CACHE / "features_timing.json", {"seconds": seconds, "passages": int(task.num_passages)})
        print(f"features extracted in {seconds:.0f}s", flush=True)
    return Data(model, task, np.asarray(features.pooled, np.float32), features.layer_inputs, np.asarray(task.labels))


def pool_sizes(data: Data, fractions: tuple[float, ...]) -> list[int]:
    pool = len(data.split("train"))
    return [int(round(f * pool)) for f in fractions]


def _grad_path(weights: str, suffix: str) -> Path:
    spec = GRAD_SKETCH
    tag = "" if weights == "per-sample" else f"_{weights}"
    return CACHE / f"ft_grads_{spec['kind']}{spec['dim']}_h{spec['head_key']}_w{spec['weights_key']}{tag}_s{spec['sketch_key']}{suffix}"


def ft_gradient_sketch(data: Data, weights: str = "shared") -> np.ndarray:
    """G̃ [pool, GRAD_DIM]: label-free Jacobian sketch of (last MLP, head) at θ0, cached.

    Row i is Γᵀ ∇_θ Σ_c w_c f_c(h_i; θ0) (random head from ``head_key``). ``weights``:
    "per-sample" draws an independent Rademacher w_i per sample (``rademacher_weights``
    as is: unbiased for Σ_i J_iᵀJ_i, but each row is a rank-one random view of J_i, and
    the head block z_i ⊗ w_i of two samples is orthogonal in expectation); "shared" uses
    the first sample's w for every sample (the gradient of one fixed random readout
    wᵀf, which keeps the cross-sample geometry, e.g. the head block z_i ⊗ w).
    """
    if weights not in ("shared", "per-sample"):
        raise ValueError(f"weights={weights!r}; expected 'shared' or 'per-sample'")
    spec = GRAD_SKETCH
    path = _grad_path(weights, ".npy")
    if path.exists():
        return np.load(path)
    pool = data.split("train")
    init = mlp_head_from_llama(data.model, data.num_classes, key=jax.random.key(spec["head_key"]))
    loss_fn, params, frozen = ft_gradient_loss(init)
    sketch = make_pytree_sketch(spec["kind"], jax.random.key(spec["sketch_key"]), params, spec["dim"])
    w = np.asarray(rademacher_weights(jax.random.key(spec["weights_key"]), len(pool), data.num_classes))
    if weights == "shared":
        w = np.ascontiguousarray(np.broadcast_to(w[:1], w.shape))
    start = time.perf_counter()
    inputs = np.asarray(data.layer_inputs[pool])

    def progress(done: int, total: int) -> None:
        if done % 512 < spec["chunk_size"] or done == total:
            print(f"  FT gradients ({weights} weights) {done}/{total} ({time.perf_counter() - start:.0f}s)", flush=True)

    grads = sketch_per_sample_grads(loss_fn, params, (inputs, w), sketch, frozen=frozen, chunk_size=spec["chunk_size"], progress=progress)
    save_npy_atomic(path, grads)
    save_json_atomic(_grad_path(weights, ".json"), {"seconds": time.perf_counter() - start, "weights": weights, **spec, "shape": list(grads.shape)})
    return grads


def grad_sketch_seconds(weights: str) -> float | None:
    path = _grad_path(weights, ".json")
    return json.loads(path.read_text())["seconds"] if path.exists() else None


# -------------------------------------------------------------------- selection


def skmm_input(data: Data, variant: dict) -> np.ndarray:
    """What SkMM sees for the pool (label-free): see SKMM_LP."""
    x = data.pooled[data.split("train")]
    kind = variant["input"]
    if kind == "raw":
        return x
    if kind == "standardized":
        return _zscore(x)
    if kind == "l2":
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    if kind == "ft-grad":  # per-sample Rademacher weights (as first tried)
        return ft_gradient_sketch(data, "per-sample")
    if kind == "ft-grad-standardized":
        return _zscore(ft_gradient_sketch(data, "per-sample"))
    if kind == "ft-grad-shared":  # one shared random readout
        return ft_gradient_sketch(data, "shared")
    if kind == "ft-grad-shared-standardized":
        return _zscore(ft_gradient_sketch(data, "shared"))
    if kind == "ft-grad-shared-standardized-l2":  # z-scored columns, then unit rows
        g = _zscore(ft_gradient_sketch(data, "shared"))
        return g / np.linalg.norm(g, axis=1, keepdims=True)
    if kind == "features+ft-grad":
        # The head block of the (MLP, head) Jacobian is exactly I_C ⊗ z_i: it needs no
        # sketch, z_i itself carries it; the MLP block comes from the Jacobian sketch.
        # Both z-scored; the gradient block scaled to weight² · (its share of columns).
        g = _zscore(ft_gradient_sketch(data, "shared"))
        weight = variant["grad_weight"] * np.sqrt(x.shape[1] / g.shape[1])
        return np.concatenate([_zscore(x), weight * g], axis=1).astype(np.float32)
    raise ValueError(f"unknown SkMM input {kind!r}")


def _zscore(x: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit variance over the pool (diagonal whitening)."""
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 1e-6, std, 1.0)


def run_selection(data: Data, method: str, seed: int, n: int, skmm_variant: dict) -> tuple[np.ndarray, float, dict]:
    """Pool-relative indices of the coreset, selection seconds, diagnostics."""
    key = jax.random.fold_in(jax.random.key(seed), n)
    pool = data.split("train")
    if method == "skmm":
        features = skmm_input(data, skmm_variant)  # cached: not counted in the selection time
        options = {k: skmm_variant[k] for k in ("ridge", "c_s", "draw") if skmm_variant.get(k) is not None}
        options = {"preprocess": "none", "relax": True, **options}  # this benchmark's protocol: its own inputs, p solved
        start = time.perf_counter()
        sel = select(
            "skmm", key, features, n,
            sketch_kind=skmm_variant.get("sketch_kind"), sketch_dim=skmm_variant.get("sketch_dim"), **options,
        )  # fmt: skip
    else:
        start = time.perf_counter()
        sel = select(method, key, data.pooled[pool], n, labels=data.labels[pool])
    indices = np.asarray(sel.indices)
    seconds = time.perf_counter() - start
    keep = ("c_s", "subset_coverage", "subset_matrix_coverage", "active_directions")
    return indices, seconds, {k: sel.diagnostics[k] for k in keep if k in sel.diagnostics}


def fit_probe(data: Data, seed: int, chosen: np.ndarray):
    """LP on the coreset (global indices), hyperparameters by validation accuracy."""
    val = data.split("val")
    search = select_hyperparameters(
        jax.random.key(seed), data.pooled[chosen], data.labels[chosen], data.pooled[val], data.labels[val],
        data.num_classes, PROBE_GRID,
    )  # fmt: skip
    val_acc = max(acc for _, acc in search.scores)
    hparams = {"learning_rate": search.best.learning_rate, "weight_decay": search.best.weight_decay}
    return search.best_probe, val_acc, hparams


def probe_metrics(data: Data, probe, split: str) -> dict[str, float]:
    idx = data.split(split)
    m = metrics(predict(probe, data.pooled[idx]), data.labels[idx], data.num_classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


# ----------------------------------------------------------------------- runs


class Store:
    """The results file: rows keyed by (part, method, n, seed), rewritten atomically per run."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.data = {"rows": [], "tuning": [], "ft_hparams": None, "config": {}}
        if path.exists() and not fresh:
            self.data.update(json.loads(path.read_text()))

    def find(self, part: str, method: str, n: int, seed: int, variant: dict | None = None) -> dict | None:
        for row in self.data["rows"]:
            if (row["part"], row["method"], row["n"], row["seed"]) == (part, method, n, seed):
                if variant is None or row.get("variant") == variant:
                    return row
        return None

    def add(self, row: dict) -> None:
        self.data["rows"] = [
            r for r in self.data["rows"] if (r["part"], r["method"], r["n"], r["seed"]) != (row["part"], row["method"], row["n"], row["seed"])
        ] + [row]
        self.save()

    def save(self) -> None:
        save_json_atomic(self.path, self.data)


def run_lp(data: Data, store: Store, seeds: int, methods: list[str]) -> None:
    pool = data.split("train")
    for seed in range(seeds):
        for method in methods:
            for n in pool_sizes(data, POOL_FRACTIONS):
                variant = dict(SKMM_LP) if method == "skmm" else None
                if store.find("lp", method, n, seed, variant):
                    continue
                indices, sel_seconds, diag = run_selection(data, method, seed, n, SKMM_LP)
                chosen = pool[indices]
                start = time.perf_counter()
                probe, val_acc, hparams = fit_probe(data, seed, chosen)
                test = probe_metrics(data, probe, "test")
                row = {
                    "part": "lp", "method": method, "n": n, "seed": seed, **test, "val_accuracy": val_acc,
                    "selection_seconds": sel_seconds, "train_seconds": time.perf_counter() - start,
                    "hyperparameters": hparams, "classes_covered": int(len(np.unique(data.labels[chosen]))),
                    "diagnostics": diag, **({"variant": variant} if variant else {}),
                }  # fmt: skip
                store.add(row)
                print(f"lp seed {seed} {method:22s} n={n:4d} acc {test['accuracy']:.4f} f1 {test['macro_f1']:.4f} "
                      f"classes {row['classes_covered']:2d} sel {sel_seconds:6.2f}s", flush=True)  # fmt: skip
        if not store.find("lp", FULL_POOL, len(pool), seed):
            start = time.perf_counter()
            probe, val_acc, hparams = fit_probe(data, seed, pool)
            test = probe_metrics(data, probe, "test")
            store.add({"part": "lp", "method": FULL_POOL, "n": len(pool), "seed": seed, **test, "val_accuracy": val_acc,
                       "selection_seconds": 0.0, "train_seconds": time.perf_counter() - start, "hyperparameters": hparams})  # fmt: skip
            print(f"lp seed {seed} {FULL_POOL:22s} n={len(pool)} acc {test['accuracy']:.4f}", flush=True)


def _ft_eval(data: Data, model, split: str) -> dict[str, float]:
    idx = data.split(split)
    m = metrics(ft_predict(model, np.asarray(data.layer_inputs[idx])), data.labels[idx], data.num_classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def _finetune_once(data: Data, seed: int, chosen: np.ndarray, config: FinetuneConfig):
    probe, _, hparams = fit_probe(data, seed, chosen)
    init = mlp_head_from_llama(data.model, data.num_classes, probe=probe)
    start = time.perf_counter()
    result = finetune(jax.random.key(seed), np.asarray(data.layer_inputs[chosen]), data.labels[chosen], init, config)
    jax.block_until_ready(jax.tree.leaves(result.model))
    return result, probe, hparams, time.perf_counter() - start


def choose_ft_hparams(data: Data, store: Store) -> dict:
    """lr × epochs on VALIDATION accuracy, uniform coreset of the middle FT size, seed 0; cached in the JSON."""
    saved = store.data.get("ft_hparams")
    grid = [{"learning_rate": lr, "epochs": ep} for lr in FT_LEARNING_RATES for ep in FT_EPOCHS]
    if saved and saved.get("grid") == grid and "chosen" in saved:
        return saved
    sizes = pool_sizes(data, FT_FRACTIONS)
    n = sizes[len(sizes) // 2]
    pool = data.split("train")
    indices, _, _ = run_selection(data, "uniform", 0, n, {})
    chosen = pool[indices]
    # Grid points already measured (same n, seed, coreset rule) are reused when the grid grows.
    scores = [s for s in (saved or {}).get("scores", []) if saved.get("n") == n and {"learning_rate": s["learning_rate"], "epochs": s["epochs"]} in grid]
    done = {(s["learning_rate"], s["epochs"]) for s in scores}
    for point in grid:
        if (point["learning_rate"], point["epochs"]) in done:
            continue
        config = FinetuneConfig(learning_rate=point["learning_rate"], epochs=point["epochs"], batch_size=FT_BATCH)
        result, probe, _, seconds = _finetune_once(data, 0, chosen, config)
        val = _ft_eval(data, result.model, "val")
        scores.append({**point, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"], "seconds": seconds,
                       "lp_init_val_accuracy": probe_metrics(data, probe, "val")["accuracy"],
                       "losses": [float(x) for x in result.losses]})  # fmt: skip
        store.data["ft_hparams"] = {"grid": grid, "n": n, "seed": 0, "method": "uniform", "scores": scores}
        store.save()
        print(f"ft grid lr {point['learning_rate']:.0e} epochs {point['epochs']} val acc {val['accuracy']:.4f} "
              f"(LP init {scores[-1]['lp_init_val_accuracy']:.4f}) {seconds:.0f}s", flush=True)  # fmt: skip
    best = max(scores, key=lambda s: (s["val_accuracy"], -s["epochs"], -s["learning_rate"]))
    store.data["ft_hparams"] = {"grid": grid, "n": n, "seed": 0, "method": "uniform", "scores": scores,
                                "chosen": {"learning_rate": best["learning_rate"], "epochs": best["epochs"], "batch_size": FT_BATCH}}  # fmt: skip
    store.save()
    return store.data["ft_hparams"]


def lp_ranking(store: Store) -> list[str]:
    """LP methods other than skmm/uniform by mean test accuracy over every LP run, best first."""
    rows = [r for r in store.data["rows"] if r["part"] == "lp" and r["method"] not in ("skmm", "uniform", FULL_POOL)]
    means = {m: np.mean([r["accuracy"] for r in rows if r["method"] == m]) for m in {r["method"] for r in rows}}
    return sorted(means, key=lambda m: -means[m])


def run_ft(data: Data, store: Store, seeds: int, methods: list[str] | None) -> None:
    if methods is None:
        methods = [*SKMM_FT_VARIANTS, "uniform", *lp_ranking(store)[:FT_TOP_BASELINES]]
    store.data["config"]["ft_methods"] = methods
    chosen_hparams = choose_ft_hparams(data, store)["chosen"]
    config = FinetuneConfig(
        learning_rate=chosen_hparams["learning_rate"], epochs=chosen_hparams["epochs"], batch_size=chosen_hparams["batch_size"]
    )
    pool = data.split("train")
    for seed in range(seeds):
        for n in pool_sizes(data, FT_FRACTIONS):
            for method in methods:
                variant = dict(SKMM_FT_VARIANTS[method]) if method in SKMM_FT_VARIANTS else None
                if store.find("ft", method, n, seed, variant):
                    continue
                indices, sel_seconds, diag = run_selection(data, "skmm" if variant else method, seed, n, variant or {})
                chosen = pool[indices]
                result, probe, hparams, seconds = _finetune_once(data, seed, chosen, config)
                test = _ft_eval(data, result.model, "test")
                row = {
                    "part": "ft", "method": method, "n": n, "seed": seed, **test,
                    "lp_init": probe_metrics(data, probe, "test"), "selection_seconds": sel_seconds,
                    "finetune_seconds": seconds, "hyperparameters": {**hparams, "ft": dataclasses.asdict(config)},
                    "final_train_loss": float(result.losses[-1]), "classes_covered": int(len(np.unique(data.labels[chosen]))),
                    "diagnostics": diag, **({"variant": variant} if variant else {}),
                }  # fmt: skip
                store.add(row)
                print(f"ft seed {seed} {method:22s} n={n:4d} acc {test['accuracy']:.4f} f1 {test['macro_f1']:.4f} "
                      f"(LP init {row['lp_init']['accuracy']:.4f}) ft {seconds:5.0f}s", flush=True)  # fmt: skip


# --------------------------------------------------------------------- tuning

TUNE_SEEDS = (100, 101)
TUNE_LP_VARIANTS = [
    {"input": "raw", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "standardized", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "l2", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "standardized", "sketch_kind": "gaussian", "sketch_dim": 128, "ridge": 0.2},
    {"input": "standardized", "sketch_kind": "gaussian", "sketch_dim": 256, "ridge": 0.2},
    {"input": "standardized", "sketch_kind": None, "sketch_dim": None, "ridge": 0.05},
    {"input": "standardized", "sketch_kind": None, "sketch_dim": None, "ridge": 1.0},
    {"input": "ft-grad", "sketch_kind": "gaussian", "sketch_dim": 256, "ridge": 0.2},
    {"input": "ft-grad", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "ft-grad-standardized", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "ft-grad-standardized", "sketch_kind": "gaussian", "sketch_dim": 256, "ridge": 0.2},
    {"input": "ft-grad-shared", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "ft-grad-shared-standardized", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "ft-grad-shared-standardized-l2", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "features+ft-grad", "grad_weight": 0.25, "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "features+ft-grad", "grad_weight": 0.5, "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "features+ft-grad", "grad_weight": 1.0, "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
]


def run_tune(data: Data, store: Store, variants: list[dict]) -> None:
    """Validation accuracy of LP on SkMM coresets (and uniform's), seeds TUNE_SEEDS; no test data."""
    pool = data.split("train")
    tuning = store.data.setdefault("tuning", [])
    todo = [{"input": "uniform"}] + variants
    for variant in todo:
        for seed in TUNE_SEEDS:
            for n in pool_sizes(data, POOL_FRACTIONS):
                if any(t["variant"] == variant and t["seed"] == seed and t["n"] == n and t.get("ft") is None for t in tuning):
                    continue
                method = "uniform" if variant["input"] == "uniform" else "skmm"
                indices, seconds, _ = run_selection(data, method, seed, n, variant)
                _, val_acc, _ = fit_probe(data, seed, pool[indices])
                tuning.append({"variant": variant, "seed": seed, "n": n, "val_accuracy": val_acc, "selection_seconds": seconds})
                store.save()
        accs = [t["val_accuracy"] for t in tuning if t["variant"] == variant]
        print(f"tune {json.dumps(variant)}: mean val acc {np.mean(accs):.4f}", flush=True)


TUNE_FT_VARIANTS = [  # compared on FT validation accuracy at the middle FT n (after the LP-validation pass)
    {"input": "uniform"},
    {"input": "standardized", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "ft-grad-shared-standardized-l2", "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
    {"input": "features+ft-grad", "grad_weight": 0.5, "sketch_kind": None, "sketch_dim": None, "ridge": 0.2},
]


def run_tune_ft(data: Data, store: Store, variants: list[dict]) -> None:
    """FT validation accuracy of SkMM input variants (and uniform) at the middle FT n, seeds TUNE_SEEDS; no test data."""
    hparams = choose_ft_hparams(data, store)["chosen"]
    config = FinetuneConfig(learning_rate=hparams["learning_rate"], epochs=hparams["epochs"], batch_size=hparams["batch_size"])
    sizes = pool_sizes(data, FT_FRACTIONS)
    n = sizes[len(sizes) // 2]
    pool = data.split("train")
    tuning = store.data.setdefault("tuning_ft", [])
    for variant in variants:
        for seed in TUNE_SEEDS:
            if any(t["variant"] == variant and t["seed"] == seed and t["n"] == n and t.get("ft") == hparams for t in tuning):
                continue
            method = "uniform" if variant["input"] == "uniform" else "skmm"
            indices, seconds, _ = run_selection(data, method, seed, n, variant)
            result, probe, _, ft_seconds = _finetune_once(data, seed, pool[indices], config)
            val = _ft_eval(data, result.model, "val")
            tuning.append({"variant": variant, "seed": seed, "n": n, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                           "lp_init_val_accuracy": probe_metrics(data, probe, "val")["accuracy"], "finetune_seconds": ft_seconds,
                           "ft": hparams})  # fmt: skip
            store.save()
        accs = [t["val_accuracy"] for t in tuning if t["variant"] == variant and t["n"] == n and t.get("ft") == hparams]
        print(f"tune-ft {json.dumps(variant)}: mean FT val acc {np.mean(accs):.4f}", flush=True)


# -------------------------------------------------------------------- report


def summarise(rows: list[dict], part: str, metric: str) -> dict[str, dict[int, tuple[float, float, int]]]:
    table: dict[str, dict[int, tuple[float, float, int]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows if r["part"] == part):
        for n in sorted({r["n"] for r in rows if r["part"] == part and r["method"] == method}):
            values = np.array([r[metric] for r in rows if r["part"] == part and r["method"] == method and r["n"] == n])
            table.setdefault(method, {})[n] = (float(values.mean()), float(values.std()), len(values))
    return table


def markdown_table(table: dict, sizes: list[int], pool: int, title_metric: str) -> list[str]:
    methods = [m for m in table if m != FULL_POOL]
    means_over_n = {m: float(np.mean([table[m][n][0] for n in sizes])) for m in methods if all(n in table[m] for n in sizes)}
    best = {n: max(table[m][n][0] for m in methods if n in table[m]) for n in sizes}
    best_avg = max(means_over_n.values()) if means_over_n else None
    lines = [
        "| method | " + " | ".join(f"n = {n} ({100 * n / pool:.0f} %)" for n in sizes) + " | mean over n |",
        "|---|" + "---:|" * (len(sizes) + 1),
    ]
    for method in methods:
        cells = []
        for n in sizes:
            if n not in table[method]:
                cells.append("")
                continue
            mean, std, _ = table[method][n]
            text = f"{100 * mean:.2f} ± {100 * std:.2f}"
            cells.append(f"**{text}**" if round(100 * mean, 2) == round(100 * best[n], 2) else text)
        avg = means_over_n.get(method)
        avg_text = "" if avg is None else f"{100 * avg:.2f}"
        if avg is not None and round(100 * avg, 2) == round(100 * best_avg, 2):
            avg_text = f"**{avg_text}**"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {avg_text} |")
    if FULL_POOL in table:
        (n_full, (mean, std, _)), = table[FULL_POOL].items()
        lines.append(f"| {FULL_POOL} (n = {n_full}) | " + " | ".join("" for _ in sizes) + f" | {100 * mean:.2f} ± {100 * std:.2f} |")
    return lines


def target_check(table: dict, sizes: list[int], method: str = "skmm") -> str:
    """``method`` − uniform per n, and its mean over n against the best non-SkMM method."""
    if method not in table or "uniform" not in table:
        return "not evaluated (method or uniform missing)"
    gaps = [table[method][n][0] - table["uniform"][n][0] for n in sizes if n in table[method] and n in table["uniform"]]
    methods = [m for m in table if m != FULL_POOL and all(n in table[m] for n in sizes)]
    avg = {m: np.mean([table[m][n][0] for n in sizes]) for m in methods}
    best_other = max((m for m in methods if not m.startswith("skmm")), key=lambda m: avg[m])
    return (
        f"{method} − uniform per n: {', '.join(f'{100 * g:+.2f}' for g in gaps)} points "
        f"({'≥ 0 at every n' if min(gaps) >= 0 else 'below uniform at some n'}); mean over n: {method} {100 * avg[method]:.2f} "
        f"vs best non-SkMM method ({best_other}) {100 * avg[best_other]:.2f} ({100 * (avg[method] - avg[best_other]):+.2f})."
    )


def write_report(store: Store, data: Data) -> None:
    rows = store.data["rows"]
    config = store.data["config"]
    pool = len(data.split("train"))
    lines = [
        "# SkMM vs DeepCore-family baselines on a real task: LP and FT",
        "",
        f"Task: {data.task.summary()}. Model: {MODEL} (frozen; float32 on CPU). "
        "Cells: test accuracy / macro-F1 in %, mean ± std over seeds (seed = selection key and training key); "
        "bold: best mean in the column (ties at 2 decimals all bold). Generated by `benchmarks/real_lp_ft.py`.",
        "",
    ]
    for part in ("lp", "ft"):
        part_rows = [r for r in rows if r["part"] == part]
        if not part_rows:
            continue
        sizes = sorted({r["n"] for r in part_rows if r["method"] != FULL_POOL})
        seeds = sorted({r["seed"] for r in part_rows})
        if part == "lp":
            lines += [
                f"## Linear probing ({len(seeds)} seeds)",
                "",
                "Selection on the pool's mean-pooled final hidden states [2759, 576]. SkMM is label-free "
                f"(settings {json.dumps(SKMM_LP)}, chosen on validation, see the JSON `tuning`); the DeepCore methods "
                "(el2n, grand, forgetting, entropy, margin, least-confidence, contextual-diversity) train a linear proxy on "
                "the pool's features and labels. Probe: softmax regression (AdamW, 100 epochs) on the coreset only, "
                "learning rate × weight decay in {1e-3, 1e-2} × {1e-4, 1e-2, 1e-1} chosen per run on validation accuracy. "
                "SkMM with no sketch and the greedy draw is deterministic given the pool, so its ± reflects only the "
                "probe's minibatch order (the baselines' also includes their random selection).",
                "",
            ]
        else:
            hp = store.data.get("ft_hparams") or {}
            chosen = hp.get("chosen", {})
            lines += [
                f"## Finetuning: last MLP + head, LP-FT ({len(seeds)} seeds)",
                "",
                "Finetuned: the last decoder block's MLP (gate/up/down, 2.65 M parameters) and the linear head (AdamW, "
                "cross-entropy) on the cached residual stream entering that MLP; the head starts from the LP probe trained "
                "on the same coreset (hyperparameters chosen on validation as in LP). Selection, all label-free for SkMM: "
                f"`skmm` = {json.dumps(SKMM_FT_VARIANTS['skmm'])} (the input with the best FT validation accuracy, see "
                "below); `skmm-grad` = the FT Jacobian sketch alone: per-sample gradients of Σ_c w_c f_c(h; θ0) w.r.t. "
                "(MLP, head) at the pretrained point with a random head and one shared Rademacher readout w, "
                f"{GRAD_SKETCH['kind']} pytree sketch to m = {GRAD_SKETCH['dim']}, columns z-scored and rows scaled to unit "
                "norm (the best gradient-only input on validation). Baselines select from the pooled features as in LP. "
                f"Methods: SkMM, uniform and the {FT_TOP_BASELINES} baselines with the best mean LP test accuracy.",
                "",
                f"FT hyperparameters were chosen ONCE on the validation split with a uniform coreset of n = {hp.get('n')} "
                f"(seed 0) over learning rate × epochs, then fixed for every method and n: AdamW, learning rate "
                f"{chosen.get('learning_rate')}, {chosen.get('epochs')} epoch(s), batch {chosen.get('batch_size')}, no weight "
                "decay. Validation accuracy of that grid (LP-init head alone: "
                f"{100 * hp['scores'][0]['lp_init_val_accuracy']:.2f} %):" if hp.get("scores") else "",
                "",
            ]
            if hp.get("scores"):
                lrs = sorted({s["learning_rate"] for s in hp["scores"]})
                eps = sorted({s["epochs"] for s in hp["scores"]})
                acc = {(s["learning_rate"], s["epochs"]): s["val_accuracy"] for s in hp["scores"]}
                lines += ["| learning rate | " + " | ".join(f"{e} epoch{'s' if e > 1 else ''}" for e in eps) + " |",
                          "|---|" + "---:|" * len(eps)]  # fmt: skip
                lines += [f"| {lr:g} | " + " | ".join(f"{100 * acc[lr, e]:.2f}" if (lr, e) in acc else "" for e in eps) + " |" for lr in lrs]
                losses = [s["losses"][0] for s in hp["scores"]]
                lines += [
                    "",
                    "No FT setting beats the LP-init head on validation: the probe chosen on validation already fits its "
                    f"coreset (first-epoch FT training loss {min(losses):.1e}–{max(losses):.1e}), so cross-entropy has almost "
                    "nothing left to fit, and more epochs or larger steps only drift. The validation rule therefore picks the "
                    "smallest step (ties: fewest epochs, smallest learning rate), and the FT table below is, to within a "
                    "few test samples, the LP accuracy of each method's coreset; the LP-init table after it shows that.",
                    "",
                ]  # fmt: skip
        for metric, title in (("accuracy", "Test accuracy (%)"), ("macro_f1", "Test macro-F1 (%)")):
            table = summarise(rows, part, metric)
            lines += [f"### {title}", "", *markdown_table(table, sizes, pool, metric), ""]
            lines += [f"Target check ({metric}): {target_check(table, sizes)}", ""]
            if "skmm-grad" in table:
                lines += [f"Gradient-only SkMM ({metric}): {target_check(table, sizes, 'skmm-grad')}", ""]
        if part == "ft":
            table = summarise([{**r, "accuracy": r["lp_init"]["accuracy"]} for r in part_rows], "ft", "accuracy")
            lines += ["### For reference: test accuracy (%) of the LP-init head on the same coresets (before FT)", "",
                      *markdown_table(table, sizes, pool, "accuracy"), ""]  # fmt: skip
        sel = {}
        for r in part_rows:
            sel.setdefault(r["method"], []).append(r["selection_seconds"])
        lines += ["Mean selection seconds per run (wall clock on the shared CPU, other jobs running: indicative only; "
                  "SkMM's input preparation, e.g. the gradient sketch, is cached and not included): " + ", ".join(f"{m} {np.mean(v):.2f}" for m, v in sel.items() if m != FULL_POOL), ""]
    if store.data.get("tuning"):
        lines += ["## SkMM options tried on validation (LP, seeds 100–101, mean validation accuracy over the 5 n)", "",
                  "| variant | val accuracy (%) |", "|---|---:|"]  # fmt: skip
        by_variant: dict[str, list[float]] = {}
        for t in store.data["tuning"]:
            by_variant.setdefault(json.dumps(t["variant"]), []).append(t["val_accuracy"])
        lines += [f"| `{v}` | {100 * np.mean(a):.2f} |" for v, a in by_variant.items()]
        lines.append("")
    if store.data.get("tuning_ft"):
        lines += ["## SkMM inputs compared on FT validation accuracy (uniform-chosen FT hyperparameters, seeds 100–101)", "",
                  "| variant | n | FT val accuracy (%) | LP-init val accuracy (%) |", "|---|---:|---:|---:|"]  # fmt: skip
        by_variant: dict[tuple, list[dict]] = {}
        chosen = (store.data.get("ft_hparams") or {}).get("chosen")
        for t in store.data["tuning_ft"]:
            if t.get("ft") != chosen:
                continue
            by_variant.setdefault((json.dumps(t["variant"]), t["n"]), []).append(t)
        lines += [
            f"| `{v}` | {n} | {100 * np.mean([t['val_accuracy'] for t in ts]):.2f} | {100 * np.mean([t['lp_init_val_accuracy'] for t in ts]):.2f} |"
            for (v, n), ts in by_variant.items()
        ]
        lines.append("")
    timing = config.get("timing", {})
    if timing:
        lines += ["Runtime (this 2-core CPU, shared): " + ", ".join(f"{k} {v:.0f}s" for k, v in timing.items() if v is not None), ""]
    (RESULTS / "real_lp_ft.md").write_text("\n".join(lines))
    write_plot(rows)


def write_plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("lp", "ft") if any(r["part"] == p for r in rows)]
    if not parts:
        return
    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 5), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    fixed = {  # SkMM solid black, uniform solid grey, every other baseline dashed in its own colour
        "skmm": dict(lw=2.4, color="k"),
        "skmm-grad": dict(lw=1.4, color="k", marker="s"),
        "uniform": dict(lw=1.6, color="tab:grey"),
    }
    others = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in fixed and m != FULL_POOL]  # same colour in both panels
    for ax, part in zip(axes[0], parts):
        table = summarise(rows, part, "accuracy")
        for method in (m for m in table if m != FULL_POOL):
            ns = sorted(table[method])
            means = np.array([table[method][n][0] for n in ns]) * 100
            stds = np.array([table[method][n][1] for n in ns]) * 100
            style = fixed.get(method) or dict(lw=1.0, ls="--", color=colours[(2 * others.index(method)) % 20 + (others.index(method) >= 10)])
            style = {"marker": "o", **style}
            ax.errorbar(ns, means, yerr=stds, ms=3, capsize=2, label=method, **style)
        if FULL_POOL in table:
            (mean, _, _), = table[FULL_POOL].values()
            ax.axhline(100 * mean, color="grey", lw=0.8, ls=":", label=FULL_POOL)
        ax.set(xlabel="coreset size n", ylabel="test accuracy (%)", title={"lp": "linear probing", "ft": "finetuning (last MLP + head, LP-FT)"}[part])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "real_lp_ft.png", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["lp", "ft", "all", "tune", "tune-ft", "report"], default="all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=None, help="comma-separated; default: every LP method / skmm + uniform + top LP baselines for FT")
    parser.add_argument("--fresh", action="store_true", help="ignore saved results and start over")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else None
    for m in methods or []:
        if m not in METHODS and m not in SKMM_FT_VARIANTS:
            parser.error(f"unknown method {m!r}; choose from {sorted(METHODS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = Store(OUT_JSON, args.fresh)
    start = time.perf_counter()
    data = load_data()
    timing = store.data["config"].get("timing", {})
    timing["load_s"] = time.perf_counter() - start
    timing.pop("load_and_features_s", None)
    if (CACHE / "features_timing.json").exists():
        timing["feature_extraction_s"] = json.loads((CACHE / "features_timing.json").read_text())["seconds"]
    store.data["config"].update({
        "model": MODEL, "task": data.task.summary(), "pool": int(len(data.split("train"))),
        "val": int(len(data.split("val"))), "test": int(len(data.split("test"))), "num_classes": data.num_classes,
        "pool_fractions": POOL_FRACTIONS, "lp_sizes": pool_sizes(data, POOL_FRACTIONS), "ft_sizes": pool_sizes(data, FT_FRACTIONS),
        "probe_grid": [dataclasses.asdict(c) for c in PROBE_GRID], "skmm_lp": SKMM_LP, "skmm_ft": SKMM_FT_VARIANTS,
        "grad_sketch": GRAD_SKETCH, "ft_grid": {"learning_rates": FT_LEARNING_RATES, "epochs": FT_EPOCHS, "batch_size": FT_BATCH},
        "tune_seeds": TUNE_SEEDS, "tune_lp_variants": TUNE_LP_VARIANTS, "tune_ft_variants": TUNE_FT_VARIANTS,
        "jax": jax.__version__, "platform": platform.platform(), "devices": [str(d) for d in jax.devices()],
    })  # fmt: skip
    if args.part == "tune":
        t0 = time.perf_counter()
        run_tune(data, store, TUNE_LP_VARIANTS)
        timing["tune_s"] = timing.get("tune_s", 0.0) + time.perf_counter() - t0
    if args.part == "tune-ft":
        t0 = time.perf_counter()
        run_tune_ft(data, store, TUNE_FT_VARIANTS)
        timing["tune_ft_s"] = timing.get("tune_ft_s", 0.0) + time.perf_counter() - t0
    if args.part in ("lp", "all"):
        t0 = time.perf_counter()
        run_lp(data, store, args.seeds, methods or list(LP_METHODS))
        timing["lp_s"] = timing.get("lp_s", 0.0) + time.perf_counter() - t0
    if args.part in ("ft", "all"):
        t0 = time.perf_counter()
        ft_gradient_sketch(data, "shared")
        timing["ft_gradients_s"] = grad_sketch_seconds("shared")
        run_ft(data, store, args.seeds, methods)
        timing["ft_s"] = timing.get("ft_s", 0.0) + time.perf_counter() - t0
    store.data["config"]["timing"] = timing
    store.save()
    write_report(store, data)


if __name__ == "__main__":
    main()
