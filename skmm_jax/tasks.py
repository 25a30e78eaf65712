"""Labelled text tasks for data selection, and the frozen-model features they need.

Pipeline position: *task* (token passages + labels + a stratified split) → *features*
(one forward pass of the frozen LLaMA per passage, cached on disk) → selection on the
training pool (``skmm_jax.select``) → linear probing / finetuning on the coreset
(``skmm_jax.train``) → metrics on the test split.

Two task builders:

- `wiki_passage_task`: the shipped Wikipedia sample cut into fixed-length passages,
  each labelled by its article (~100 imbalanced classes).
- `jsonl_task`: any ``{"text": ..., "label": ...}`` per line file.

`extract_features` runs the model once over ``[N, T]`` passages and keeps

    pooled_i = (1/T) Σ_t LN_final(x^{(L)}_{i,t})                      [N, D]

(the mean over positions of the final-norm hidden states, the linear-probe input) and,
optionally, the residual stream entering the last block's MLP

    h_i = x^{(L-1)}_i + Attn_L(RMSNorm(x^{(L-1)}_i))                      [N, T, D]

which is all that finetuning the last MLP (+ a head) needs: the frozen layers below
it never run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skmm_jax.io import iter_jsonl, save_json_atomic

__all__ = [
    "ExtractedFeatures",
    "TextTask",
    "extract_features",
    "jsonl_task",
    "stratified_split",
    "wiki_passage_task",
]

Report = Callable[[str], None]
"""Called with one short status line (the library never prints)."""


# --------------------------------------------------------------------------- task


@dataclasses.dataclass(frozen=True, eq=False)
class TextTask:
    """A labelled passage-classification task with a fixed split.

    Attributes:
      tokens: int32 [N, T] token ids, every passage exactly T tokens (no padding).
      labels: int32 [N] class ids in [0, C).
      class_names: C names; ``class_names[c]`` is what label c stands for.
      train: int64 indices of the training pool (the set a coreset is selected from).
      val: int64 indices of the validation split (hyperparameter choice only).
      test: int64 indices of the test split (final numbers only).
      source_ids: N strings naming where passage i came from (``"<article id>#<k>"``
        for the k-th passage of an article; ``"<file>:<line>"`` for jsonl records).
      info: provenance and counts (classes kept/dropped, passages, tokens, seed, ...).

    The three index arrays are sorted, pairwise disjoint and cover all N passages.
    """

    tokens: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    source_ids: tuple[str, ...]
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        tokens, labels = np.asarray(self.tokens), np.asarray(self.labels)
        if tokens.ndim != 2 or tokens.dtype != np.int32:
            raise ValueError(f"tokens must be int32 [N, T], got dtype {tokens.dtype} shape {tokens.shape}")
        n = tokens.shape[0]
        if labels.shape != (n,) or labels.dtype != np.int32:
            raise ValueError(f"labels must be int32 [{n}], got dtype {labels.dtype} shape {labels.shape}")
        if n and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"labels span [{labels.min()}, {labels.max()}] but there are {len(self.class_names)} class names")
        if len(self.source_ids) != n:
            raise ValueError(f"{len(self.source_ids)} source ids for {n} passages")
        parts = [np.asarray(getattr(self, name)) for name in ("train", "val", "test")]
        joined = np.concatenate(parts)
        if joined.size != n or not np.array_equal(np.sort(joined), np.arange(n)):
            raise ValueError("train/val/test indices must be disjoint and cover every passage exactly once")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_passages(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def passage_tokens(self) -> int:
        return int(self.tokens.shape[1])

    def summary(self) -> str:
        """One line: classes, passages per split, tokens, imbalance."""
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return (
            f"{self.num_classes} classes, {self.num_passages} passages of {self.passage_tokens} tokens "
            f"({self.tokens.size} tokens; train {self.train.size} / val {self.val.size} / test {self.test.size}); "
            f"passages per class {counts.min()}–{counts.max()}"
        )


def _position(seed: int, salt: str, source_id: str) -> float:
    """Uniform in [0, 1), a pure function of (seed, salt, id) (as `prune_jax.data.split_documents`)."""
    digest = hashlib.sha256(f"{seed}\0{salt}\0{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}={value!r}; expected a float strictly between 0 and 1")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction}; must be < 1 to leave a training pool"
        )


def stratified_split(
    labels: np.ndarray, source_ids: Sequence[str], *, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (train, val, test) split, deterministic under ``seed``.

    Within class c (n_c ≥ 3 passages) passages are ordered by
    ``u = sha256(seed, "split", source_id)``; the first ``n_val = max(1, round(n_c ·
    val_fraction))`` go to validation, the next ``n_test = max(1, round(n_c ·
    test_fraction))`` to test and the rest (at least one) to training. So every class
    appears in all three splits, the split of a passage depends only on its id, its
    class and the seed, and the shares are the requested fractions up to rounding.

    Returns:
      Sorted int64 index arrays ``(train, val, test)``.

    Raises:
      ValueError: a class has fewer than 3 passages, or bad fractions.
    """
    _check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = members.size
        if n < 3:
            raise ValueError(f"class {c} has {n} passages; a stratified train/val/test split needs at least 3")
        order = sorted(members.tolist(), key=lambda i: _position(seed, "split", source_ids[i]))
        n_val = max(1, int(math.floor(n * val_fraction + 0.5)))
        n_test = max(1, int(math.floor(n * test_fraction + 0.5)))
        while n_val + n_test > n - 1:  # keep one training passage; shrink the larger held-out part
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        parts[1].append(np.asarray(order[:n_val]))
        parts[2].append(np.asarray(order[n_val : n_val + n_test]))
        parts[0].append(np.asarray(order[n_val + n_test :]))
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts)  # type: ignore[return-value]


def _encode(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: long articles exceed model_max_length by design (they are cut later).
    return tokenizer.encode(text, add_special_tokens=False, verbose=False)


def _passage_rows(ids: Sequence[int], passage_tokens: int, bos_token_id: int | None) -> np.ndarray:
    """Non-overlapping [k, T] passages of a token list (remainder dropped), BOS first if given."""
    body = passage_tokens - (bos_token_id is not None)
    ids = np.asarray(ids, dtype=np.int64)
    k = ids.size // body
    rows = ids[: k * body].reshape(k, body)
    if bos_token_id is not None:
        rows = np.concatenate([np.full((k, 1), bos_token_id, np.int64), rows], axis=1)
    return rows


def _as_int32(rows: np.ndarray) -> np.ndarray:
    if rows.size and (rows.min() < 0 or rows.max() > np.iinfo(np.int32).max):
        raise ValueError(f"token ids span [{rows.min()}, {rows.max()}], which does not fit in int32")
    return rows.astype(np.int32)


def _check_passage_tokens(passage_tokens: int, bos_token_id: int | None) -> None:
    smallest = 2 if bos_token_id is not None else 1
    if isinstance(passage_tokens, bool) or not isinstance(passage_tokens, (int, np.integer)) or passage_tokens < smallest:
        raise ValueError(f"passage_tokens={passage_tokens!r}; expected an integer >= {smallest}")


def _build_task(
    rows: list[np.ndarray],
    row_ids: list[list[str]],
    names: list[str],
    *,
    min_per_class: int,
    max_per_class: int | None,
    passage_tokens: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    info: dict[str, Any],
    what: str,
) -> TextTask:
    """Drops small classes, caps large ones (hash order), relabels 0..C-1, splits."""
    kept_rows, kept_ids, kept_names, dropped = [], [], [], []
    for class_rows, ids, name in zip(rows, row_ids, names):
        if len(ids) < min_per_class:
            dropped.append((name, len(ids)))
            continue
        if max_per_class is not None and len(ids) > max_per_class:
            # A seeded, id-hashed choice: stable when other classes change.
            keep = sorted(range(len(ids)), key=lambda k: _position(seed, "cap", ids[k]))[:max_per_class]
            keep.sort()  # keep document order inside the class
            class_rows, ids = class_rows[keep], [ids[k] for k in keep]
        kept_rows.append(class_rows)
        kept_ids.append(ids)
        kept_names.append(name)
    if len(kept_names) < 2:
        raise ValueError(
            f"{what}: only {len(kept_names)} class(es) have at least min_passages_per_class={min_per_class} "
            f"passages of {passage_tokens} tokens ({len(dropped)} dropped); need 2 or more"
        )
    tokens = _as_int32(np.concatenate(kept_rows))
    labels = np.concatenate([np.full(len(ids), c, np.int32) for c, ids in enumerate(kept_ids)])
    source_ids = tuple(i for ids in kept_ids for i in ids)
    train, val, test = stratified_split(
        labels, source_ids, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    counts = np.bincount(labels)
    info = dict(info)
    info.update(
        passage_tokens=passage_tokens,
        min_passages_per_class=min_per_class,
        max_passages_per_class=max_per_class,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        classes=len(kept_names),
        classes_dropped=len(dropped),
        dropped_classes={name: count for name, count in dropped},
        passages=int(labels.size),
        tokens=int(tokens.size),
        passages_per_class_min=int(counts.min()),
        passages_per_class_max=int(counts.max()),
        split_sizes={"train": int(train.size), "val": int(val.size), "test": int(test.size)},
    )
    return TextTask(tokens, labels, tuple(kept_names), train, val, test, source_ids, info)


def wiki_passage_task(
    tokenizer: Any,
    *,
    documents: Sequence[Any] | None = None,
    passage_tokens: int = 64,
    min_passages_per_class: int = 8,
    max_passages_per_class: int | None = 48,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    bos_token_id: int | None = None,
    progress: Report | None = None,
) -> TextTask:
    """Article classification on Wikipedia passages (label = the article).

    Each article is tokenised on its own (``add_special_tokens=False``) and cut into
    non-overlapping passages of ``passage_tokens`` tokens from its start; the
    remainder (< T tokens) is dropped, so every passage has full length and no
    padding. Then:

    - articles with fewer than ``min_passages_per_class`` passages are dropped as
      classes (counted in ``info["classes_dropped"]``, named in
      ``info["dropped_classes"]``): a class needs passages in train, val and test;
    - articles with more than ``max_passages_per_class`` passages keep that many,
      chosen by a seeded hash of the passage id (not equalised: the imbalance of
      article lengths stays, up to the cap);
    - passages are split per class by `stratified_split`.

    Defaults on the shipped sample with the SmolLM2 tokenizer: 96 of 106 articles
    kept (10 dropped), 3907 passages, 250 K tokens, 8–48 passages per class. At
    ~1–2 ms per token of feature extraction on a 2-core CPU that is 4–8 minutes.

    Args:
      tokenizer: a transformers tokenizer (anything with
        ``encode(text, add_special_tokens=False, verbose=False) -> list[int]``).
      documents: `prune_jax.data.Document` list; default
        ``load_documents("wiki-sample")``. Classes are named by title (id if no title).
      passage_tokens: T, tokens per passage (BOS included when ``bos_token_id`` is set).
      min_passages_per_class: smaller articles are dropped (>= 3).
      max_passages_per_class: cap per article; None keeps all passages.
      val_fraction, test_fraction: per-class shares of validation and test.
      seed: selects the capped passages and the split.
      bos_token_id: if given, each passage is BOS followed by T − 1 text tokens.
      progress: receives status lines (classes and passages kept).

    Raises:
      ValueError: bad sizes or fractions, fewer than 2 classes left.
    """
    _check_passage_tokens(passage_tokens, bos_token_id)
    _check_fractions(val_fraction, test_fraction)
    if min_passages_per_class < 3:
        raise ValueError(f"min_passages_per_class={min_passages_per_class}; must be >= 3 (train, val and test each get one)")
    if max_passages_per_class is not None and max_passages_per_class < min_passages_per_class:
        raise ValueError(
            f"max_passages_per_class={max_passages_per_class} is below min_passages_per_class={min_passages_per_class}"
        )
    report = progress or (lambda message: None)
    source = "custom documents"
    if documents is None:
        from prune_jax.data import WIKI_SAMPLE_SOURCE, load_documents

        documents, source = load_documents(WIKI_SAMPLE_SOURCE), WIKI_SAMPLE_SOURCE
    if not documents:
        raise ValueError("wiki_passage_task: no documents")
    ids = [doc.id for doc in documents]
    if len(set(ids)) != len(ids):
        raise ValueError("wiki_passage_task: document ids must be unique (each document is one class)")
    report(f"tokenising {len(documents)} documents")
    rows, row_ids, names = [], [], []
    for doc in documents:
        doc_rows = _passage_rows(_encode(tokenizer, doc.text), passage_tokens, bos_token_id)
        rows.append(doc_rows)
        row_ids.append([f"{doc.id}#{k}" for k in range(doc_rows.shape[0])])
        names.append(doc.title or doc.id)
    info = {"source": source, "documents": len(documents), "passages_before_cap": int(sum(len(r) for r in row_ids))}
    task = _build_task(
        rows, row_ids, names,
        min_per_class=min_passages_per_class, max_per_class=max_passages_per_class,
        passage_tokens=passage_tokens, val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, info=info, what="wiki_passage_task",
    )  # fmt: skip
    report(f"{task.summary()}; {task.info['classes_dropped']} articles dropped (< {min_passages_per_class} passages)")
    return task


def _label_order(values: list[Any], path: Path) -> list[Any]:
    """Distinct labels in a fixed order: ints numerically, strings lexicographically."""
    kinds = {type(v) for v in values}
    if kinds <= {int}:
        return sorted(set(values))
    if kinds <= {str}:
        return sorted(set(values))
    names = sorted(k.__name__ for k in kinds)
    raise ValueError(f"{path}: labels mix types {names}; use all strings or all integers")


def jsonl_task(
    path: str | os.PathLike[str],
    tokenizer: Any,
    *,
    text_key: str = "text",
    label_key: str = "label",
    id_key: str = "id",
    passage_tokens: int = 64,
    min_examples_per_class: int = 3,
    max_examples_per_class: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    bos_token_id: int | None = None,
    progress: Report | None = None,
) -> TextTask:
    """A classification task from a .jsonl file, one ``{text, label}`` object per line.

    Each text is tokenised and **truncated** to its first ``passage_tokens`` tokens;
    texts shorter than that are **dropped** (no padding, so features never need an
    attention mask). The number dropped is in ``info["dropped_short"]`` and a
    ``UserWarning`` is issued when it is non-zero. Labels are strings or integers
    (not mixed); class c is the c-th distinct label in sorted order. Classes with
    fewer than ``min_examples_per_class`` examples left are dropped (counted, as in
    `wiki_passage_task`); the split is `stratified_split` over the source ids (the
    record's ``id_key`` field if present, else ``"<file name>:<line>"``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: invalid JSON or a non-object line, a missing key, a text that is
        not a string, a label that is not a string/int (all naming the line), mixed
        label types, duplicate ids, or fewer than 2 classes.
    """
    _check_passage_tokens(passage_tokens, bos_token_id)
    _check_fractions(val_fraction, test_fraction)
    if min_examples_per_class < 3:
        raise ValueError(f"min_examples_per_class={min_examples_per_class}; must be >= 3 (train, val and test each get one)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jsonl task file {path} does not exist")
    report = progress or (lambda message: None)
    records: list[tuple[str, Any, str]] = []  # (text, label, source id)
    for where, record in iter_jsonl(path):
        for key in (text_key, label_key):
            if key not in record:
                raise ValueError(f"{where}: no {key!r} field (fields: {sorted(record)})")
        text, label = record[text_key], record[label_key]
        if not isinstance(text, str):
            raise ValueError(f"{where}: {text_key!r} is {type(text).__name__}, expected a string")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ValueError(f"{where}: {label_key!r} is {type(label).__name__}, expected a string or an integer")
        line_number = where.rsplit(" ", 1)[-1]
        source_id = str(record[id_key]) if record.get(id_key) is not None else f"{path.name}:{line_number}"
        records.append((text, label, source_id))
    if not records:
        raise ValueError(f"{path} has no records")
    order = _label_order([label for _, label, _ in records], path)
    if len(order) < 2:
        raise ValueError(f"{path}: {label_key!r} takes {len(order)} distinct value(s) {order}; need at least 2 classes")
    if len({sid for _, _, sid in records}) != len(records):
        raise ValueError(f"{path}: the {id_key!r} values are not unique")
    index = {label: c for c, label in enumerate(order)}
    rows: list[list[np.ndarray]] = [[] for _ in order]
    row_ids: list[list[str]] = [[] for _ in order]
    short = 0
    for text, label, source_id in records:
        row = _passage_rows(_encode(tokenizer, text), passage_tokens, bos_token_id)[:1]
        if row.shape[0] == 0:
            short += 1
            continue
        rows[index[label]].append(row)
        row_ids[index[label]].append(source_id)
    if short:
        warnings.warn(
            f"{path}: {short} of {len(records)} texts have fewer than {passage_tokens} tokens and were dropped",
            stacklevel=2,
        )
    stacked = [np.concatenate(r) if r else np.zeros((0, passage_tokens), np.int64) for r in rows]
    info = {"source": str(path), "records": len(records), "dropped_short": short}
    task = _build_task(
        stacked, row_ids, [str(label) for label in order],
        min_per_class=min_examples_per_class, max_per_class=max_examples_per_class,
        passage_tokens=passage_tokens, val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, info=info, what=str(path),
    )  # fmt: skip
    report(f"{task.summary()}; {short} short texts and {task.info['classes_dropped']} small classes dropped")
    return task


# ----------------------------------------------------------------------- features


class ExtractedFeatures(NamedTuple):
    """Outputs of `extract_features`.

    pooled: float32 [N, D], mean over positions of the final-norm hidden states.
    layer_inputs: [N, T, D] residual stream entering the last block's MLP (float16 or
      float32; a read-only memmap when cached), or None when not requested.
    """

    pooled: np.ndarray
    layer_inputs: np.ndarray | None


_FEATURE_CACHE_FORMAT = "skmm_jax.tasks.features/v1"
_CACHE_ARRAYS = ("pooled", "layer_inputs")
_LAYER_INPUT_DTYPES = {"float16": np.float16, "float32": np.float32}


def _forward_impl(graphdef: Any, state: Any, tokens: jax.Array, layer_input: str | None) -> tuple[jax.Array, Any]:
    """pooled [B, D] float32 and (optionally) the last block's MLP input [B, T, D]."""
    from prune_jax.models.llama.modeling import rope_inverse_frequencies

    model = nnx.merge(graphdef, state)
    if layer_input is None:
        hidden = model.hidden_states(tokens)  # [B, T, D]
        return jnp.mean(hidden.astype(jnp.float32), axis=1), None
    # Llama.hidden_states, unrolled to expose h = x + Attn(RMSNorm(x)) of the last block.
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :], tokens.shape)
    inv_freq = jnp.asarray(rope_inverse_frequencies(model.config))
    x = jnp.take(model.embed[...], tokens, axis=0)
    blocks = list(model.layers)
    for block in blocks[:-1]:
        x = block(x, positions, inv_freq)
    last = blocks[-1]
    h = x + last.attn(last.input_norm(x), positions, inv_freq)  # [B, T, D]
    y = h + last.mlp(last.post_attn_norm(h))
    pooled = jnp.mean(model.norm(y).astype(jnp.float32), axis=1)
    return pooled, h.astype(_LAYER_INPUT_DTYPES[layer_input])


# graphdef and the layer-input dtype are static: one compilation per model structure
# and batch shape (the last batch is padded to that shape).
_forward = jax.jit(_forward_impl, static_argnums=(0, 3))


def _fingerprint(model: Any, tokens: np.ndarray, layer_input: str | None) -> str:
    """sha256 of (format, model config, every parameter's bytes, token array, layer-input dtype).

    The parameters are hashed, not only the config: two checkpoints of one
    architecture (or a model before/after pruning recovery) share a config.
    """
    digest = hashlib.sha256()
    digest.update(_FEATURE_CACHE_FORMAT.encode())
    digest.update(repr(getattr(model, "config", None)).encode())
    for path, leaf in sorted(
        jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0], key=lambda item: jax.tree_util.keystr(item[0])
    ):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}\0{array.dtype}\0{array.shape}\0".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(f"{tokens.shape}\0{tokens.dtype}\0".encode())
    digest.update(np.ascontiguousarray(tokens).tobytes())
    digest.update(f"layer_input={layer_input}".encode())
    return digest.hexdigest()


class _FeatureCache:
    """Preallocated .npy memmaps + ``progress.json`` (the source of truth for rows done).

    Rows are written, the memmaps flushed, and only then is ``rows_done`` advanced
    (atomically), so rows beyond it are never trusted: a crash at any point resumes
    correctly, redoing at most one batch.
    """

    def __init__(self, directory: Path, fingerprint: str, shapes: dict[str, tuple[tuple[int, ...], Any]]):
        self.directory = directory
        self.fingerprint = fingerprint
        self.shapes = shapes
        self.progress_path = directory / "progress.json"
        self.arrays: dict[str, np.ndarray] = {}
        self.rows_done = 0
        self.total = next(iter(shapes.values()))[0][0]

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.npy"

    def open(self) -> None:
        """Reuses matching files (resume) or allocates fresh ones."""
        state = None
        if self.progress_path.is_file():
            try:
                state = json.loads(self.progress_path.read_text())
            except (OSError, ValueError):
                state = None
        if state and state.get("format") == _FEATURE_CACHE_FORMAT and state.get("fingerprint") == self.fingerprint:
            try:
                arrays = {name: np.load(self._path(name), mmap_mode="r+") for name in self.shapes}
            except (OSError, ValueError):
                arrays = None
            if arrays is not None and all(
                arrays[name].shape == shape and arrays[name].dtype == np.dtype(dtype)
                for name, (shape, dtype) in self.shapes.items()
            ):
                self.arrays, self.rows_done = arrays, int(state.get("rows_done", 0))
                return
        # Stale or foreign cache: forget it first, so a crash while reallocating never
        # leaves the old progress file vouching for new, empty arrays.
        self.progress_path.unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in _CACHE_ARRAYS:  # also arrays the new run does not produce
            self._path(name).unlink(missing_ok=True)
        for name, (shape, dtype) in self.shapes.items():
            self.arrays[name] = np.lib.format.open_memmap(self._path(name), mode="w+", dtype=dtype, shape=shape)
        self.rows_done = 0
        self._save()

    def _save(self) -> None:
        save_json_atomic(
            self.progress_path,
            {
                "format": _FEATURE_CACHE_FORMAT,
                "fingerprint": self.fingerprint,
                "rows_done": self.rows_done,
                "num_rows": self.total,
                "complete": self.rows_done == self.total,
                "arrays": {name: {"shape": list(shape), "dtype": np.dtype(dtype).name} for name, (shape, dtype) in self.shapes.items()},
            },
        )

    def write(self, start: int, stop: int, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            self.arrays[name][start:stop] = value
            self.arrays[name].flush()
        self.rows_done = stop
        self._save()

    def result(self) -> dict[str, np.ndarray]:
        for array in self.arrays.values():
            array.flush()
        self.arrays = {}
        return {name: np.load(self._path(name), mmap_mode="r") for name in self.shapes}


def extract_features(
    model: Any,
    tokens: np.ndarray,
    *,
    cache: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    layer_input: str | None = None,
    progress: bool | Callable[[int, int], None] = True,
) -> ExtractedFeatures:
    """Frozen-model features of token passages, batched, jitted, resumable.

    For tokens x_i ∈ V^T (positions 0..T−1, no padding) returns

        pooled_i = (1/T) Σ_t h^{final}_{i,t}         (= ``model.hidden_states(x).mean(1)``)

    and, when ``layer_input`` is a dtype name, the last block's MLP input
    ``h_i = x^{(L-1)}_i + Attn_L(RMSNorm(x^{(L-1)}_i))`` [T, D] (see the module
    docstring), which lets `skmm_jax.train.finetune` train the last MLP without
    rerunning the frozen layers. float16 halves the disk/RAM cost (N·T·D·2 bytes:
    ~290 MB for the default wiki task) at ~1e-3 relative rounding.

    The model runs as one jitted pure function of its split state (one compilation:
    the last batch is padded by repeating its last row, whose outputs are dropped);
    the next batch is dispatched before the previous one is copied back.

    Cache (``cache`` = a directory): ``pooled.npy`` [N, D] and ``layer_inputs.npy``
    are preallocated with ``np.lib.format.open_memmap`` and filled batch by batch;
    ``progress.json`` records ``rows_done`` and a fingerprint (sha256 of the model
    config, all parameter bytes, the token array and the layer-input dtype). A run
    with the same fingerprint continues from ``rows_done`` (or returns at once when
    complete); a different fingerprint recomputes from scratch, never reusing rows.
    Changing ``batch_size`` between runs is fine (progress is counted in rows).

    Args:
      model: a `prune_jax.models.llama.Llama` (any NNX module with the same
        ``embed`` / ``layers`` / ``norm`` / ``hidden_states`` interface).
      tokens: int [N, T] token ids.
      cache: directory for the resumable cache; None computes in memory.
      batch_size: passages per forward pass.
      layer_input: None, "float16" or "float32": also return the MLP input.
      progress: True shows a tqdm bar over passages; a callable is called as
        ``progress(rows_done, N)`` after each batch is stored (an exception it raises
        stops the extraction, leaving a resumable cache); False shows nothing.

    Returns:
      `ExtractedFeatures` (pooled float32 [N, D]; layer_inputs [N, T, D] or None,
      a read-only memmap when cached).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty integer [N, T] array, got dtype {tokens.dtype} shape {tokens.shape}")
    tokens = tokens.astype(np.int32)
    if layer_input is not None and layer_input not in _LAYER_INPUT_DTYPES:
        raise ValueError(f"layer_input={layer_input!r}; expected None or one of {sorted(_LAYER_INPUT_DTYPES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"token ids span [{tokens.min()}, {tokens.max()}] but the model's vocabulary is {vocab}")

    n, length = tokens.shape
    hidden = int(model.embed[...].shape[1])
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {"pooled": ((n, hidden), np.float32)}
    if layer_input is not None:
        shapes["layer_inputs"] = ((n, length, hidden), _LAYER_INPUT_DTYPES[layer_input])

    store: _FeatureCache | None = None
    if cache is not None:
        store = _FeatureCache(Path(cache), _fingerprint(model, tokens, layer_input), shapes)
        store.open()
        arrays, start_row = store.arrays, store.rows_done
    else:
        arrays = {name: np.empty(shape, dtype) for name, (shape, dtype) in shapes.items()}
        start_row = 0

    bar = None
    if progress is True and start_row < n:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=start_row, unit="passage", desc=f"features T={length}")
    callback = progress if callable(progress) else None

    def finish(start: int, stop: int, result: tuple[Any, Any]) -> None:
        pooled, h = result
        values = {"pooled": np.asarray(pooled)[: stop - start]}
        if layer_input is not None:
            values["layer_inputs"] = np.asarray(h)[: stop - start]
        if store is not None:
            store.write(start, stop, values)
        else:
            for name, value in values.items():
                arrays[name][start:stop] = value
        if bar is not None:
            bar.update(stop - start)
        if callback is not None:
            callback(stop, n)

    try:
        if start_row < n:
            graphdef, state = nnx.split(model)
            state = jax.device_put(state)
            size = min(batch_size, n)
            pending = None
            for start in range(start_row, n, size):
                stop = min(start + size, n)
                chunk = tokens[start:stop]
                if stop - start < size:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - (stop - start), axis=0)])
                result = _forward(graphdef, state, chunk, layer_input)
                if pending is not None:
                    finish(*pending)
                pending = (start, stop, result)
            finish(*pending)
    finally:
        if bar is not None:
            bar.close()

    if store is not None:
        arrays = store.result()
        return ExtractedFeatures(np.array(arrays["pooled"]), arrays.get("layer_inputs"))
    return ExtractedFeatures(arrays["pooled"], arrays.get("layer_inputs"))
