"""Document-disjoint calibration / evaluation parts of a corpus, stable under growth."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from prune_jax.data.documents import Document

__all__ = ["split_documents"]


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
