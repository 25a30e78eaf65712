"""The Wikipedia corpus: the embedded dump sample (fetched from the gensim wheel) and
MediaWiki XML dumps read into plain-text `Document`s.

The default corpus ("wiki-sample") is a 2016 English Wikipedia dump excerpt that ships
as test data inside the ``gensim`` wheel. Only that one file is taken out of the wheel
(see `fetch_wiki_sample`); gensim itself is never installed or imported, and the
MediaWiki markup is stripped by our own `strip_wiki_markup` (``markup.py``).
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from xml.etree import ElementTree

from prune_jax.data.cache import default_cache_dir
from prune_jax.data.documents import Document
from prune_jax.data.markup import strip_wiki_markup
from skmm_jax.common.io import atomic_write

__all__ = ["WIKI_SAMPLE_GENSIM_VERSION", "fetch_wiki_sample", "wiki_documents"]

# ------------------------------------------------------------ the embedded sample

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
            "then copy the wheel here and run:\n  python -m prune_jax.cli data fetch --wheel DIR/gensim-*.whl"
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
