"""Labelled text tasks for data selection: token passages, labels, a stratified split.

Pipeline position: *task* (this module) → *features* (``skmm_jax.experiments.features``: one
forward pass of a frozen model per passage, cached on disk) → selection on the training
pool (``skmm_jax.select``) → linear probing / finetuning on the coreset
(``skmm_jax.train``) → metrics on the test split.

Two task builders, both model- and corpus-agnostic (a tokenizer is anything with
``encode(text, add_special_tokens=False, verbose=False) -> list[int]``):

- `document_passage_task`: documents cut into fixed-length passages, each labelled by
  its document (``prune_jax.experiments.llama_features.wiki_passage_task`` applies it to the shipped
  Wikipedia sample: ~100 imbalanced classes).
- `jsonl_task`: any ``{"text": ..., "label": ...}`` per line file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skmm_jax.common.io import iter_jsonl
from skmm_jax.common.streaming import Progress

__all__ = [
    "TextTask",
    "document_passage_task",
    "jsonl_task",
    "stratified_split",
]



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
    """Uniform in [0, 1), a pure function of (seed, salt, id)."""
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


def document_passage_task(
    tokenizer: Any,
    documents: Sequence[Any],
    *,
    source: str = "custom documents",
    passage_tokens: int = 64,
    min_passages_per_class: int = 8,
    max_passages_per_class: int | None = 48,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    bos_token_id: int | None = None,
    progress: Progress | None = None,
) -> TextTask:
    """Document classification on passages (label = the document, e.g. a Wikipedia article).

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

    Defaults on the shipped Wikipedia sample with the SmolLM2 tokenizer: 96 of 106
    articles kept (10 dropped), 3907 passages, 250 K tokens, 8–48 passages per class.
    At ~1–2 ms per token of feature extraction on a 2-core CPU that is 4–8 minutes.

    Args:
      tokenizer: a transformers tokenizer (anything with
        ``encode(text, add_special_tokens=False, verbose=False) -> list[int]``).
      documents: objects with ``id``, ``title`` and ``text`` (e.g.
        ``prune_jax.data.Document``); each is one class, named by its title (id if
        no title).
      source: where the documents came from, recorded in ``info["source"]``.
      passage_tokens: T, tokens per passage (BOS included when ``bos_token_id`` is set).
      min_passages_per_class: smaller articles are dropped (>= 3).
      max_passages_per_class: cap per article; None keeps all passages.
      val_fraction, test_fraction: per-class shares of validation and test.
      seed: selects the capped passages and the split.
      bos_token_id: if given, each passage is BOS followed by T − 1 text tokens.
      progress: ``progress(documents_done, documents_total)`` while tokenising (the
        library never prints; ``task.summary()`` says what was kept).

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
    if not documents:
        raise ValueError("document_passage_task: no documents")
    ids = [doc.id for doc in documents]
    if len(set(ids)) != len(ids):
        raise ValueError("document_passage_task: document ids must be unique (each document is one class)")
    rows, row_ids, names = [], [], []
    for done, doc in enumerate(documents, 1):
        doc_rows = _passage_rows(_encode(tokenizer, doc.text), passage_tokens, bos_token_id)
        rows.append(doc_rows)
        row_ids.append([f"{doc.id}#{k}" for k in range(doc_rows.shape[0])])
        names.append(doc.title or doc.id)
        if progress is not None:
            progress(done, len(documents))
    info = {"source": source, "documents": len(documents), "passages_before_cap": int(sum(len(r) for r in row_ids))}
    task = _build_task(
        rows, row_ids, names,
        min_per_class=min_passages_per_class, max_per_class=max_passages_per_class,
        passage_tokens=passage_tokens, val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, info=info, what="document_passage_task",
    )  # fmt: skip
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
    progress: Progress | None = None,
) -> TextTask:
    """A classification task from a .jsonl file, one ``{text, label}`` object per line.

    Each text is tokenised and **truncated** to its first ``passage_tokens`` tokens;
    texts shorter than that are **dropped** (no padding, so features never need an
    attention mask). The number dropped is in ``info["dropped_short"]`` and a
    ``UserWarning`` is issued when it is non-zero. Labels are strings or integers
    (not mixed); class c is the c-th distinct label in sorted order. Classes with
    fewer than ``min_examples_per_class`` examples left are dropped (counted, as in
    `document_passage_task`); the split is `stratified_split` over the source ids (the
    record's ``id_key`` field if present, else ``"<file name>:<line>"``).

    ``progress(texts_done, texts_total)`` is called while tokenising (the library never
    prints; ``task.summary()`` says what was kept).

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
    for done, (text, label, source_id) in enumerate(records, 1):
        row = _passage_rows(_encode(tokenizer, text), passage_tokens, bos_token_id)[:1]
        if progress is not None:
            progress(done, len(records))
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
    return task
