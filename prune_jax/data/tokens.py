"""A corpus as one flat token stream, cached on disk by (tokenizer, text)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prune_jax.data.cache import default_cache_dir
from prune_jax.data.documents import Document
from skmm_jax.common.io import atomic_write

__all__ = ["DOCUMENT_SEPARATOR", "tokenize_corpus"]

# Part of every cache key: bump it when the stored format or the tokenisation rule changes.
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
