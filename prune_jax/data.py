"""Text corpora for calibration and perplexity evaluation.

Pipeline position: *load* text → split it by document into a calibration part and an
evaluation part → tokenise each part into one flat token stream → cut the stream into
``[num_samples, seq_len]`` calibration batches (random windows) or ``[W, seq_len]``
evaluation windows (consecutive windows).

The default corpus ("wiki-sample") is a 2016 English Wikipedia dump excerpt that ships
as test data inside the ``gensim`` wheel. Only that one file is taken out of the wheel
(see `fetch_wiki_sample`); gensim itself is never installed or imported, and the
MediaWiki markup is stripped by our own `strip_wiki_markup`.

Command line (used by the project's setup step)::

    python -m prune_jax.data fetch [--cache-dir DIR] [--wheel PATH]
    python -m prune_jax.data stats [SOURCE]
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import hashlib
import html
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from xml.etree import ElementTree

import numpy as np

from skmm_jax.io import atomic_write, iter_jsonl

__all__ = [
    "DOCUMENT_SEPARATOR",
    "WIKI_SAMPLE_GENSIM_VERSION",
    "WIKI_SAMPLE_SOURCE",
    "Document",
    "calibration_batches",
    "default_cache_dir",
    "eval_windows",
    "fetch_wiki_sample",
    "load_documents",
    "split_documents",
    "strip_wiki_markup",
    "tokenize_corpus",
    "wiki_documents",
]


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Attributes:
      id: stable identifier; `split_documents` hashes it, so it must not depend on the
        document's position in the corpus (Wikipedia page id, a user-given id, or a
        hash of the text).
      title: human-readable name (page title, ``file.txt [3]``, ...); informational.
      text: plain text, no markup.
    """

    id: str
    title: str
    text: str


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$PRUNE_JAX_CACHE`` if set and non-empty, else ``~/.cache/prune_jax``."""
    configured = os.environ.get("PRUNE_JAX_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "prune_jax"


# ------------------------------------------------------------ embedded wiki sample

# gensim 4.4.0: the newest release on PyPI, with a cp311 manylinux wheel. The sha256 is
# that of the sample member inside it; it guards against a changed file if the pin moves.
WIKI_SAMPLE_GENSIM_VERSION = "4.4.0"
_WIKI_SAMPLE_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_WIKI_SAMPLE_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
_WIKI_SAMPLE_FILENAME = "enwiki-2016-gensim-sample.xml.bz2"

# Download the x86-64 Linux / CPython 3.11 wheel whatever the host is: the data file is
# the same in every wheel, and a fixed target makes the download identical everywhere
# (pip requires --only-binary=:all: and --no-deps together with --platform).
_PIP_DOWNLOAD_TARGET = [
    "--platform", "manylinux_2_28_x86_64",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--abi", "cp311",
]  # fmt: skip
_PIP_TIMEOUT_S = 900


def _pip_download_command(dest: str) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *_PIP_DOWNLOAD_TARGET,
        f"gensim=={WIKI_SAMPLE_GENSIM_VERSION}", "-d", dest,
    ]  # fmt: skip


def _verified_wiki_sample(data: bytes, origin: str) -> bytes:
    """Returns ``data`` if it is the expected sample, else raises naming ``origin``."""
    try:
        head = bz2.BZ2Decompressor().decompress(data, max_length=4096)
    except (OSError, ValueError) as err:
        raise ValueError(f"{origin}: {_WIKI_SAMPLE_MEMBER} is not valid bz2 data: {err}") from err
    if b"<mediawiki" not in head:
        raise ValueError(f"{origin}: {_WIKI_SAMPLE_MEMBER} does not start with a <mediawiki> XML document")
    digest = hashlib.sha256(data).hexdigest()
    if digest != _WIKI_SAMPLE_SHA256:
        raise ValueError(f"{origin}: {_WIKI_SAMPLE_MEMBER} has sha256 {digest}, expected {_WIKI_SAMPLE_SHA256}")
    return data


def _wiki_sample_from_wheel(wheel_path: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            data = wheel.read(_WIKI_SAMPLE_MEMBER)
    except KeyError as err:
        raise ValueError(f"wheel {wheel_path} has no member {_WIKI_SAMPLE_MEMBER}") from err
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"wheel {wheel_path} cannot be read as a zip file: {err}") from err
    # bz2 fully decompresses in ~0.3 s; check the whole stream, not only its head.
    try:
        bz2.decompress(data)
    except (OSError, ValueError) as err:
        raise ValueError(f"wheel {wheel_path}: {_WIKI_SAMPLE_MEMBER} is truncated or corrupt: {err}") from err
    return _verified_wiki_sample(data, f"wheel {wheel_path}")


def _wiki_sample_from_installed_gensim() -> bytes | None:
    """The sample from an installed gensim, located without importing it; else None."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = package_dir.parent / _WIKI_SAMPLE_MEMBER
    if not path.is_file():
        return None
    try:
        return _verified_wiki_sample(path.read_bytes(), f"installed gensim at {package_dir}")
    except ValueError:
        return None  # another gensim version with a different file: download the pinned one


def _wiki_sample_from_pip() -> bytes:
    with tempfile.TemporaryDirectory(prefix="prune_jax_gensim_") as download_dir:
        command = _pip_download_command(download_dir)
        manual = (
            f"run by hand on a machine with PyPI access:\n  python {' '.join(_pip_download_command('DIR')[1:])}\n"
            "then copy the wheel here and run:\n  python -m prune_jax.data fetch --wheel DIR/gensim-*.whl"
        )
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"`pip download` of gensim timed out after {_PIP_TIMEOUT_S} s; {manual}") from err
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
            raise RuntimeError(
                f"could not download the gensim {WIKI_SAMPLE_GENSIM_VERSION} wheel that holds the Wikipedia "
                f"sample (pip exited {result.returncode}; is PyPI reachable?):\n{tail}\n{manual}"
            )
        wheels = sorted(Path(download_dir).glob("gensim-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"`pip download` succeeded but left {len(wheels)} gensim wheels, expected 1; {manual}")
        return _wiki_sample_from_wheel(wheels[0])


def fetch_wiki_sample(
    cache_dir: str | os.PathLike[str] | None = None, *, wheel: str | os.PathLike[str] | None = None
) -> Path:
    """Path of the embedded Wikipedia sample, fetching it into the cache if needed.

    The file is the bz2 MediaWiki XML dump excerpt that gensim ships as test data: 206
    pages of a May 2016 English dump (106 articles, 100 redirects; 1.7 MB). Sources, in
    order:

    1. ``cache_dir/corpora/`` if it already holds the file (no network, no checks;
       the file only ever appears there complete, by an atomic rename);
    2. ``wheel``, a gensim wheel downloaded by hand, when given;
    3. an installed gensim (located without importing it), if its copy matches;
    4. ``python -m pip download --no-deps --only-binary=:all: gensim==4.4.0`` into a
       temp folder (the x86-64 Linux cp311 wheel whatever the host; ~28 MB; pip's own
       cache makes repeats cheap), then only the sample member is read from the zip.

    The bytes are checked (bz2 decompresses, holds ``<mediawiki``, pinned sha256)
    before they are written atomically into the cache.

    Args:
      cache_dir: cache root; default `default_cache_dir()`.
      wheel: a local ``gensim-*.whl`` to take the file from instead of downloading.

    Returns:
      Path of the cached ``.xml.bz2`` file.

    Raises:
      RuntimeError: pip could not download the wheel (no registry access); the message
        says what to run by hand.
      ValueError: the wheel lacks the file or the file is not the expected one.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_root / "corpora" / _WIKI_SAMPLE_FILENAME
    if target.is_file() and wheel is None:
        return target
    if wheel is not None:
        data = _wiki_sample_from_wheel(Path(wheel))
    else:
        data = _wiki_sample_from_installed_gensim() or _wiki_sample_from_pip()
    atomic_write(target, lambda out: out.write(data))
    return target


# ------------------------------------------------------------ MediaWiki markup

# Elements whose *content* is not prose (citations, LaTeX, image lists, ...): dropped
# together with their tags. All other tags are dropped but their content is kept.
_DROPPED_ELEMENTS = (
    "ref", "math", "chem", "ce", "gallery", "imagemap", "timeline", "score", "graph",
    "syntaxhighlight", "source", "hiero", "mapframe", "templatedata", "references",
)  # fmt: skip
_DROPPED_ELEMENT_RE = re.compile(
    rf"<({'|'.join(_DROPPED_ELEMENTS)})\b[^<>]*?(?:/>|>.*?</\1\s*>)", re.IGNORECASE | re.DOTALL
)
_COMMENT_RE = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
# A tag: '<' + name (letters first) + attributes; '/>' or '>'. "a < b" is not a tag.
_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_TEMPLATE_TOKEN_RE = re.compile(r"\{\{|\}\}")
# Tables open with "{|" and close with "|}" at the start of a line (after spaces).
_TABLE_TOKEN_RE = re.compile(r"^[ \t]*(?:\{\||\|\})", re.MULTILINE)
# [[…]] holding no other [[…]]; lone brackets ("[sic]", "Bicyclo[1.1.0]") are allowed.
_INNERMOST_LINK_RE = re.compile(r"\[\[((?:[^\[\]]|\[(?!\[)|\](?!\]))*?)\]\]")
_DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "category", "media"})
# Interlanguage links: [[de:Anarchismus]], [[zh-min-nan:...]] (no label).
_INTERLANGUAGE_RE = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)*$")
_EXTERNAL_LINK_RE = re.compile(r"\[(?:https?:|ftp:)?//[^\s\[\]]*(?:\s+([^\[\]]*))?\]", re.IGNORECASE)
_BOLD_ITALIC_RE = re.compile(r"'{2,}")
_HEADING_RE = re.compile(r"^[ \t]*(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE)
_LIST_MARKER_RE = re.compile(r"^[ \t]*[*#:;]+[ \t]*", re.MULTILINE)
_HORIZONTAL_RULE_RE = re.compile(r"^-{4,}[ \t]*$", re.MULTILINE)
_BEHAVIOUR_SWITCH_RE = re.compile(r"__[A-Z]+__")
_SPACE_RUN_RE = re.compile(r"[ \t\xa0]+")
_BLANK_LINE_RUN_RE = re.compile(r"\n{3,}")


def _remove_balanced(text: str, token_re: re.Pattern[str], opener: str) -> str:
    """Removes every outermost ``opener … closer`` span, honouring nesting.

    ``token_re`` matches openers and closers; a match starting with ``opener`` opens.
    An unmatched closer is kept as text; an unmatched opener (unclosed template) is
    kept too rather than swallowing the rest of the article.
    """
    open_starts: list[int] = []
    removed: list[tuple[int, int]] = []  # outermost spans, in order
    for token in token_re.finditer(text):
        if token.group().lstrip().startswith(opener):
            open_starts.append(token.start())
        elif open_starts:
            start = open_starts.pop()
            if not open_starts:
                removed.append((start, token.end()))
    if not removed:
        return text
    pieces, cursor = [], 0
    for start, end in removed:
        pieces.append(text[cursor:start])
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def _render_wikilink(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, has_label, label = inner.partition("|")
    target = target.strip()
    if target.startswith(":"):  # [[:Category:X]] is a visible link to X, not a tag
        target = target[1:]
    else:
        namespace, has_colon, _ = target.partition(":")
        if has_colon and namespace.strip().lower() in _DROPPED_LINK_NAMESPACES:
            return ""
        if has_colon and not has_label and _INTERLANGUAGE_RE.match(namespace):
            return ""
    if has_label and label.strip():
        return label.strip()
    return target


def strip_wiki_markup(text: str) -> str:
    """Plain text of a MediaWiki article body.

    Rules, applied in this order (each step assumes the ones before it):

    1. ``<!-- comments -->`` are removed.
    2. Non-prose elements are removed with their content: ``<ref>…</ref>``,
       ``<ref name=x/>``, ``<math>``, ``<gallery>``, ``<timeline>``, ``<source>``, ...
       (see ``_DROPPED_ELEMENTS``). Every other tag (``<sub>``, ``<br/>``,
       ``<blockquote>``, ...) is removed but its content is kept.
    3. Templates ``{{…}}`` are removed, nested ones included (infoboxes, citations,
       navboxes; their parameters are rarely prose).
    4. Tables ``{| … |}`` (markers at line starts) are removed, nested ones included.
    5. Wiki links, innermost first so that captions of image links can hold links:
       ``[[File:…]]``, ``[[Image:…]]``, ``[[Media:…]]``, ``[[Category:…]]`` and
       interlanguage links ``[[de:…]]`` are removed; ``[[a|b]]`` → ``b``;
       ``[[a]]`` → ``a``; ``[[:Category:X|X]]`` → ``X``.
    6. External links: ``[http://x label]`` → ``label``; ``[http://x]`` → nothing
       (rendered as a footnote number). Bare URLs are kept.
    7. Bold/italic quotes ``'''``/``''`` are removed; headings ``== X ==`` → ``X``;
       list markers ``* # : ;`` at line starts and ``----`` rules are removed;
       behaviour switches (``__NOTOC__``) are removed.
    8. HTML entities are decoded (``&nbsp;``, ``&ndash;``); runs of spaces become
       one space, lines are stripped, and runs of blank lines become one blank line.

    Known limits: templates that produce prose (``{{convert|5|km}}``,
    ``{{lang|fr|…}}``) vanish; unbalanced markup is kept as literal text.

    Args:
      text: wikitext as stored in a dump's ``<text>`` element (XML already decoded).

    Returns:
      Plain text with paragraphs separated by one blank line, stripped.
    """
    text = _COMMENT_RE.sub("", text)
    text = _DROPPED_ELEMENT_RE.sub("", text)
    text = _TAG_RE.sub("", text)
    text = _remove_balanced(text, _TEMPLATE_TOKEN_RE, "{{")
    text = _remove_balanced(text, _TABLE_TOKEN_RE, "{|")
    while True:  # one pass per nesting level of [[…[[…]]…]]
        rendered = _INNERMOST_LINK_RE.sub(_render_wikilink, text)
        if rendered == text:
            break
        text = rendered
    text = _EXTERNAL_LINK_RE.sub(lambda m: m.group(1) or "", text)
    text = _BOLD_ITALIC_RE.sub("", text)
    text = _HEADING_RE.sub(r"\2", text)
    text = _LIST_MARKER_RE.sub("", text)
    text = _HORIZONTAL_RULE_RE.sub("", text)
    text = _BEHAVIOUR_SWITCH_RE.sub("", text)
    text = html.unescape(text)
    text = _SPACE_RUN_RE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINE_RUN_RE.sub("\n\n", text)
    return text.strip()


# ------------------------------------------------------------ MediaWiki XML dumps


def _local_name(tag: str) -> str:
    """``{http://www.mediawiki.org/xml/export-0.10/}page`` → ``page`` (any schema version)."""
    return tag.rsplit("}", 1)[-1]


def _iter_pages(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Yields ``{"id", "title", "ns", "redirect", "text"}`` per ``<page>``, streaming.

    Each page element is cleared once read, so memory stays flat on full dumps.
    """
    context = ElementTree.iterparse(stream, events=("start", "end"))
    root = None
    for event, elem in context:
        if root is None:
            root = elem
        if event != "end" or _local_name(elem.tag) != "page":
            continue
        page: dict[str, Any] = {"id": "", "title": "", "ns": "", "redirect": False, "text": ""}
        for child in elem:
            name = _local_name(child.tag)
            if name in ("id", "title", "ns"):
                page[name] = (child.text or "").strip()
            elif name == "redirect":
                page["redirect"] = True
            elif name == "revision":
                for field in child:
                    if _local_name(field.tag) == "text":
                        page["text"] = field.text or ""
        yield page
        root.clear()  # drops the finished page from the tree


def wiki_documents(path: str | os.PathLike[str] | None = None) -> list[Document]:
    """Articles of a MediaWiki XML dump as plain-text documents.

    Keeps pages of the main namespace (``<ns>0</ns>``) that are not redirects (neither
    a ``<redirect/>`` element nor text starting with ``#REDIRECT``), strips their markup
    with `strip_wiki_markup`, and drops pages left empty. ``Document.id`` is the page
    id, which makes `split_documents` stable across dump versions.

    Args:
      path: a ``.xml.bz2`` or ``.xml`` dump; default: `fetch_wiki_sample()` (106
        articles, 2.9 M characters).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is not a readable MediaWiki XML dump, or has no articles.
    """
    dump_path = Path(path) if path is not None else fetch_wiki_sample()
    if not dump_path.is_file():
        raise FileNotFoundError(f"MediaWiki dump {dump_path} does not exist")
    opener = bz2.open if dump_path.suffix == ".bz2" else open
    documents = []
    try:
        with opener(dump_path, "rb") as stream:
            for page in _iter_pages(stream):
                if page["ns"] != "0" or page["redirect"] or page["text"].lstrip()[:9].upper() == "#REDIRECT":
                    continue
                text = strip_wiki_markup(page["text"])
                if text:
                    documents.append(Document(id=page["id"] or page["title"], title=page["title"], text=text))
    except (ElementTree.ParseError, OSError, EOFError) as err:
        raise ValueError(f"MediaWiki dump {dump_path} cannot be parsed: {err}") from err
    if not documents:
        raise ValueError(f"MediaWiki dump {dump_path} has no main-namespace articles with text")
    return documents


# ------------------------------------------------------------ local files / hub


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


WIKI_SAMPLE_SOURCE = "wiki-sample"


def load_documents(source: str | os.PathLike[str]) -> list[Document]:
    """Documents of a corpus named by ``source``.

    Sources:

    - ``"wiki-sample"``: `wiki_documents()` of the embedded Wikipedia sample.
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
    if isinstance(source, str) and source.startswith("hf:"):
        return _hub_documents(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"corpus source {str(source)!r} does not exist (and is not {WIKI_SAMPLE_SOURCE!r} or hf:...)"
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


# ------------------------------------------------------------ splits


def _split_position(doc_id: str, seed: int) -> float:
    """Uniform in [0, 1), a pure function of (seed, id)."""
    digest = hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_documents(
    docs: Sequence[Document], *, eval_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Splits documents into disjoint (calibration, evaluation) lists.

    Rule: each document gets ``u = sha256(f"{seed}\\0{id}")[:8] / 2**64``, uniform in
    [0, 1); it goes to evaluation iff ``u < eval_fraction``. So the split of a document
    depends only on its id and the seed: adding or removing documents never moves
    other documents, documents with equal ids stay together, and the evaluation share
    is ``eval_fraction`` in expectation (not exactly). Input order is kept within each
    part.

    Small-corpus fix-up: if one part comes out empty, the document whose ``u`` is
    closest to the threshold moves over, so both parts are non-empty whenever there are
    two or more distinct ids. Only then can adding a document move another one.

    Args:
      docs: documents (at least 2 distinct ids).
      eval_fraction: expected share of documents in evaluation, strictly in (0, 1).
      seed: selects an independent split.

    Returns:
      ``(calibration, evaluation)``.

    Raises:
      ValueError: fewer than 2 distinct ids, or ``eval_fraction`` outside (0, 1).
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction!r}; expected a float strictly between 0 and 1")
    ids = {doc.id for doc in docs}
    if len(ids) < 2:
        raise ValueError(
            f"split_documents needs at least 2 documents with distinct ids, got {len(docs)} ({len(ids)} ids); "
            "a corpus this small cannot be split into calibration and evaluation parts: use all of it "
            "(--split all) or add text"
        )
    position = {doc_id: _split_position(doc_id, seed) for doc_id in ids}
    eval_ids = {doc_id for doc_id, u in position.items() if u < eval_fraction}
    if not eval_ids:
        eval_ids = {min(ids, key=position.__getitem__)}
    elif eval_ids == ids:
        eval_ids = ids - {max(ids, key=position.__getitem__)}
    calibration = [doc for doc in docs if doc.id not in eval_ids]
    evaluation = [doc for doc in docs if doc.id in eval_ids]
    return calibration, evaluation


# ------------------------------------------------------------ tokens

_TOKEN_CACHE_FORMAT = "prune_jax.data.tokens/v1"
DOCUMENT_SEPARATOR = "\n\n"


def _tokenizer_fingerprint(tokenizer: Any) -> bytes:
    """Identity of a tokenizer for the token cache.

    name_or_path + vocabulary size, plus the serialised fast-tokenizer pipeline when
    there is one: two tokenizers built in memory share an empty name_or_path and may
    share a vocabulary size, yet split text differently.
    """
    parts = [str(getattr(tokenizer, "name_or_path", "")), str(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts.append(backend.to_str())
    return "\0".join(parts).encode("utf-8")


def _encode(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: the whole corpus is longer than model_max_length by design; the
    # "sequence length is longer than the maximum" warning would be noise.
    return tokenizer.encode(text, add_special_tokens=False, verbose=False)


def tokenize_corpus(
    docs: Sequence[Document],
    tokenizer: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """One flat token stream of ``"\\n\\n".join(doc.text for doc in docs)``.

    The joined text is encoded in a single call with ``add_special_tokens=False``: no
    BOS/EOS is prepended or appended, to the corpus or between documents (the blank
    line is the only document separator). Callers that want a BOS per window add it
    themselves. One call (rather than one per document) keeps the result exactly equal
    to encoding the joined string: byte-level BPE merges ``"\\n\\n"`` differently at a
    string end than in the middle.

    Cache: ``cache_dir/tokens/<key>.npy`` with ``key = sha256(tokenizer name_or_path,
    vocab size, serialised fast-tokenizer pipeline, text)``, written atomically; a hit
    returns the stored array without tokenising.

    Args:
      docs: documents, in order (at least one).
      tokenizer: a transformers tokenizer (fast or slow).
      cache_dir: cache root; default `default_cache_dir()`.
      progress: called with a short status line ("cache hit: ...", "tokenising N
        characters", "tokenised into N tokens") so a CLI can show what is happening;
        the library itself never prints.

    Returns:
      ``int32`` array ``[N]`` of token ids.

    Raises:
      ValueError: no documents, or a token id does not fit in int32.
    """
    if not docs:
        raise ValueError("tokenize_corpus needs at least one document, got none")
    report = progress or (lambda message: None)
    text = DOCUMENT_SEPARATOR.join(doc.text for doc in docs)
    key = hashlib.sha256()
    key.update(_TOKEN_CACHE_FORMAT.encode())
    key.update(hashlib.sha256(_tokenizer_fingerprint(tokenizer)).digest())
    key.update(hashlib.sha256(text.encode("utf-8")).digest())
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_path = cache_root / "tokens" / f"{key.hexdigest()[:32]}.npy"
    if cache_path.is_file():
        try:
            cached = np.load(cache_path, allow_pickle=False)
        except (OSError, ValueError):
            cached = None  # unreadable (e.g. written by an incompatible numpy): recompute
        if cached is not None and cached.dtype == np.int32 and cached.ndim == 1:
            report(f"cache hit: {cached.size} tokens from {cache_path}")
            return cached
    report(f"tokenising {len(text)} characters of {len(docs)} documents")
    ids = np.asarray(_encode(tokenizer, text), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
        raise ValueError(f"token ids span [{ids.min()}, {ids.max()}], which does not fit in int32")
    tokens = ids.astype(np.int32)
    atomic_write(cache_path, lambda out: np.save(out, tokens, allow_pickle=False))
    report(f"tokenised into {tokens.size} tokens; cached at {cache_path}")
    return tokens


def _check_token_stream(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r}; expected a positive integer")
    return tokens


def calibration_batches(tokens: np.ndarray, *, num_samples: int, seq_len: int, seed: int) -> np.ndarray:
    """``num_samples`` random, pairwise non-overlapping windows of ``seq_len`` tokens.

    Placement is uniform over all non-overlapping placements (not only those on a
    ``seq_len`` grid): with ``slack = N - num_samples * seq_len`` spare tokens, the
    gaps before the (sorted) windows are a uniformly random non-decreasing sequence
    in ``[0, slack]`` (stars and bars). Rows are then shuffled, so row order carries
    no position information. Windows may cross document boundaries.

    Args:
      tokens: ``[N]`` token stream, e.g. from `tokenize_corpus`.
      num_samples: number of windows (>= 1).
      seq_len: tokens per window (>= 1).
      seed: the windows are a pure function of (tokens length, arguments, seed).

    Returns:
      ``[num_samples, seq_len]`` array, same dtype as ``tokens``.

    Raises:
      ValueError: ``num_samples * seq_len > N``, or a non-positive size.
    """
    tokens = _check_token_stream(tokens, seq_len)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}; expected a positive integer")
    slack = tokens.size - num_samples * seq_len
    if slack < 0:
        raise ValueError(
            f"num_samples={num_samples} windows of seq_len={seq_len} need {num_samples * seq_len} tokens, "
            f"but the stream has {tokens.size}; use at most {tokens.size // seq_len} samples or a larger corpus"
        )
    rng = np.random.default_rng(seed)
    # Choosing num_samples of slack + num_samples slots, the i-th chosen slot (sorted)
    # minus i is the gap before window i: a uniform non-decreasing sequence in [0, slack].
    slots = np.sort(rng.choice(slack + num_samples, size=num_samples, replace=False))
    ranks = np.arange(num_samples)
    starts = (slots - ranks) + ranks * seq_len
    starts = starts[rng.permutation(num_samples)]
    return tokens[starts[:, None] + np.arange(seq_len)[None, :]]  # [num_samples, seq_len]


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows ``tokens[i*seq_len:(i+1)*seq_len]``.

    The trailing remainder shorter than ``seq_len`` is dropped (never padded), so every
    window has full context length; at most ``seq_len - 1`` tokens are lost.

    Args:
      tokens: ``[N]`` token stream.
      seq_len: tokens per window (>= 1).
      max_windows: keep only the first this many windows; None keeps all.

    Returns:
      ``[W, seq_len]`` copy with ``W = min(N // seq_len, max_windows)``.

    Raises:
      ValueError: ``N < seq_len`` (no full window), or a non-positive size.
    """
    tokens = _check_token_stream(tokens, seq_len)
    if max_windows is not None and (
        isinstance(max_windows, bool) or not isinstance(max_windows, (int, np.integer)) or max_windows < 1
    ):
        raise ValueError(f"max_windows={max_windows!r}; expected a positive integer or None")
    num_windows = tokens.size // seq_len
    if num_windows == 0:
        raise ValueError(f"the stream has {tokens.size} tokens, fewer than one window of seq_len={seq_len}")
    if max_windows is not None:
        num_windows = min(num_windows, max_windows)
    return tokens[: num_windows * seq_len].reshape(num_windows, seq_len).copy()  # [W, seq_len]


# ------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m prune_jax.data {fetch,stats}``; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m prune_jax.data", description="Text corpora for prune_jax.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="fetch the embedded Wikipedia sample into the cache")
    fetch.add_argument("--cache-dir", type=Path, help="cache root (default: $PRUNE_JAX_CACHE or ~/.cache/prune_jax)")
    fetch.add_argument("--wheel", type=Path, help="take the file from this gensim wheel instead of downloading")
    stats = commands.add_parser("stats", help="document/character counts and the default split of a corpus")
    stats.add_argument("source", nargs="?", default=WIKI_SAMPLE_SOURCE, help="corpus source (default: wiki-sample)")
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            print(fetch_wiki_sample(args.cache_dir, wheel=args.wheel))
        else:
            docs = load_documents(args.source)
            calibration, evaluation = split_documents(docs) if len(docs) >= 2 else (docs, [])
            print(f"{args.source}: {len(docs)} documents, {sum(len(d.text) for d in docs)} characters")
            for name, part in (("calibration", calibration), ("evaluation", evaluation)):
                print(f"  {name}: {len(part)} documents, {sum(len(d.text) for d in part)} characters")
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
