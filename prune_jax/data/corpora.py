"""Corpora by name: `load_documents` dispatches a source (the Wikipedia sample, a
.txt/.jsonl/.parquet file, a MediaWiki dump, a Hugging Face dataset) to its loader."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from prune_jax.data.documents import Document
from prune_jax.data.wiki import wiki_documents
from skmm_jax.common.io import iter_jsonl

__all__ = ["PYTHON_DOCS_SOURCE", "TXT_CHUNK_CHARS", "WIKI_SAMPLE_SOURCE", "load_documents", "paragraph_chunks"]

# The name `load_documents` gives the embedded Wikipedia sample (`wiki_documents()`).
WIKI_SAMPLE_SOURCE = "wiki-sample"
# A second, non-Wikipedia corpus that needs no download: the help topics of Python's own
# documentation (``pydoc_data.topics``, part of the standard library; 79 topics, ~465 000
# characters of technical English with code), one document per topic.
PYTHON_DOCS_SOURCE = "python-docs"


def _python_docs_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(id=f"pydoc:{name}", text=text.strip(), title=name) for name, text in sorted(topics.items()) if text.strip()]


def _content_id(text: str) -> str:
    """Id from the text itself: stable when documents are added, moved or removed."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_TXT_DOCUMENT_BREAK_RE = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")  # two or more blank lines
_PARAGRAPH_BREAK_RE = re.compile(r"\n[ \t]*\n")
# A text with no document breaks is cut into groups of whole paragraphs of about this
# many characters (~1 000 tokens), so one long file can still be split into
# document-disjoint calibration and evaluation parts.
TXT_CHUNK_CHARS = 4000


def paragraph_chunks(text: str, target_chars: int = TXT_CHUNK_CHARS) -> list[str]:
    """Consecutive paragraphs grouped into chunks of at least ``target_chars`` characters
    (the last one may be shorter and is merged into its predecessor when under half the
    target). ``"\n\n".join(chunks)`` gives back the paragraphs, so the token stream
    of ``"\n\n"``-joined chunks is the stream of the whole text."""
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK_RE.split(text) if p.strip()]
    chunks: list[list[str]] = [[]]
    size = 0
    for paragraph in paragraphs:
        if size >= target_chars:
            chunks.append([])
            size = 0
        chunks[-1].append(paragraph)
        size += len(paragraph) + 2
    if len(chunks) > 1 and sum(len(p) + 2 for p in chunks[-1]) < target_chars // 2:
        chunks[-2].extend(chunks.pop())
    return ["\n\n".join(chunk) for chunk in chunks if chunk]


def _txt_documents(path: Path) -> list[Document]:
    try:
        text = path.read_text(encoding="utf-8")  # universal newlines: \r\n → \n
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err}") from err
    parts = text.split("\f") if "\f" in text else _TXT_DOCUMENT_BREAK_RE.split(text)
    parts = [part.strip() for part in parts]
    if sum(1 for part in parts if part) == 1:  # no document breaks: one long text
        parts = paragraph_chunks(next(part for part in parts if part))
    documents = [
        Document(id=_content_id(part), title=f"{path.name} [{index}]", text=part)
        for index, part in enumerate(parts)
        if part
    ]
    if not documents:
        raise ValueError(f"{path} is empty (no non-blank text)")
    return documents


def _record_document(record: dict[str, Any], where: str) -> Document | None:
    """Document from a jsonl/parquet record with ``text`` (+ optional ``id``/``title``)."""
    if "text" not in record:
        raise ValueError(f"{where}: no `text` field (fields: {sorted(record)})")
    text = record["text"]
    if not isinstance(text, str):
        raise ValueError(f"{where}: `text` is {type(text).__name__}, expected a string")
    if not text.strip():
        return None
    doc_id = record.get("id")
    title = record.get("title")
    return Document(
        id=str(doc_id) if doc_id is not None else _content_id(text),
        title=str(title) if title is not None else where,
        text=text,
    )


def _jsonl_documents(path: Path) -> list[Document]:
    documents = []
    for where, record in iter_jsonl(path):
        document = _record_document(record, where)
        if document is not None:
            documents.append(document)
    if not documents:
        raise ValueError(f"{path} has no records with non-blank `text`")
    return documents


def _parquet_documents(path: Path) -> list[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from err
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError family
        raise ValueError(f"{path} cannot be read as parquet: {err}") from err
    if "text" not in table.column_names:
        raise ValueError(f"{path}: no `text` column (columns: {table.column_names})")
    columns = [name for name in ("text", "id", "title") if name in table.column_names]
    rows = table.select(columns).to_pylist()
    documents = [doc for row, record in enumerate(rows) if (doc := _record_document(record, f"{path} row {row}"))]
    if not documents:
        raise ValueError(f"{path} has no rows with non-blank `text`")
    return documents


def _hub_documents(spec: str) -> list[Document]:
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"source {spec!r}: expected hf:<dataset>:<split> or hf:<dataset>:<config>:<split>")
    dataset_name, config_name, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"source {spec!r} needs the datasets package: pip install datasets") from err
    try:
        dataset = datasets.load_dataset(dataset_name, config_name, split=split)
    except Exception as err:  # offline hub, unknown dataset/config/split: all surface here
        raise RuntimeError(
            f"source {spec!r}: datasets.load_dataset({dataset_name!r}, {config_name!r}, split={split!r}) failed "
            f"(it needs Hugging Face hub access or a local datasets cache): {err}"
        ) from err
    if "text" not in dataset.column_names:
        raise ValueError(f"source {spec!r}: no `text` column (columns: {dataset.column_names})")
    documents = []
    for row, record in enumerate(dataset):
        document = _record_document(record, f"{spec} row {row}")
        if document is not None:
            documents.append(document)
    if not documents:
        raise ValueError(f"source {spec!r} has no rows with non-blank `text`")
    return documents


def load_documents(source: str | os.PathLike[str]) -> list[Document]:
    """Documents of a corpus named by ``source``.

    Sources:

    - ``"wiki-sample"``: `wiki_documents()` of the embedded Wikipedia sample.
    - ``"python-docs"``: the help topics of Python's documentation (standard library's
      ``pydoc_data``), one document per topic: a non-Wikipedia evaluation corpus.
    - ``*.txt`` (UTF-8): if the file contains form feeds (``\\f``), each form-feed
      separated part is a document; otherwise documents are separated by **two or more
      blank lines** (a single blank line is a paragraph break inside a document). A
      file without such separators is one text: it is cut into document-like chunks of
      whole paragraphs (`paragraph_chunks`, ~4 000 characters each), so a user's single
      file can still be split into calibration and evaluation parts. Parts are
      stripped; blank parts are dropped.
    - ``*.jsonl``: one JSON object per line with a string ``text`` field and optional
      ``id`` and ``title``; blank lines and records with blank text are skipped.
    - ``*.parquet``: a ``text`` column (+ optional ``id``, ``title``); needs pyarrow.
    - ``*.xml.bz2`` / ``*.xml``: a MediaWiki dump, via `wiki_documents`.
    - ``hf:<dataset>:<split>`` or ``hf:<dataset>:<config>:<split>``: a Hugging Face
      dataset with a ``text`` column; needs the datasets package and hub access.

    Documents without an ``id`` get one hashed from their text, so ids (and hence
    `split_documents`) do not change when other documents are added or reordered.

    Raises:
      FileNotFoundError: the path does not exist.
      ValueError: unknown suffix, empty corpus, or a malformed record (the message
        names the file and line/row).
      ImportError: pyarrow / datasets needed but missing (the message says what to
        install).
      RuntimeError: a hub dataset could not be loaded.
    """
    if isinstance(source, str) and source == WIKI_SAMPLE_SOURCE:
        return wiki_documents()
    if isinstance(source, str) and source == PYTHON_DOCS_SOURCE:
        return _python_docs_documents()
    if isinstance(source, str) and source.startswith("hf:"):
        return _hub_documents(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"corpus source {str(source)!r} does not exist (and is not {WIKI_SAMPLE_SOURCE!r}, {PYTHON_DOCS_SOURCE!r} or hf:...)"
        )
    if not path.is_file():
        raise ValueError(f"corpus source {path} is not a file")
    name = path.name.lower()
    if name.endswith(".txt"):
        return _txt_documents(path)
    if name.endswith(".jsonl"):
        return _jsonl_documents(path)
    if name.endswith(".parquet"):
        return _parquet_documents(path)
    if name.endswith((".xml.bz2", ".xml")):
        return wiki_documents(path)
    raise ValueError(
        f"corpus source {path}: unknown file type; expected .txt, .jsonl, .parquet, .xml.bz2 or .xml, "
        f"{WIKI_SAMPLE_SOURCE!r}, or hf:<dataset>[:<config>]:<split>"
    )
