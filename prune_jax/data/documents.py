"""The unit every corpus loader produces and every later stage consumes."""

from __future__ import annotations

import dataclasses

__all__ = ["Document"]


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
