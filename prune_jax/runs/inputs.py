"""What every run reads before its work: a part of a corpus, its tokens, the model.

Errors name the run config's field (``dtype must be one of ...``); a field named in
the middle of a message is written in backquotes (`` `n` ``), so a command line can
replace both by the flags that set them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prune_jax.runs.reporting import QUIET, Reporter

__all__ = ["DTYPES", "SPLITS", "check_choice", "check_label_free", "gather_to_writer", "held_out_split", "load_model_for_eval",
           "load_model_for_run", "read_documents", "resolve_split", "tokenize"]

DTYPES = ("float32", "bfloat16")
SPLITS = ("auto", "eval", "calibration", "all")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def check_label_free(name: str, method: str, *, also: str) -> None:
    """``method`` must be ``also`` or a selection method that needs no labels (the text is its own target)."""
    from skmm_jax.select import METHODS

    if method != also and (method not in METHODS or METHODS[method].needs_labels):
        label_free = sorted(key for key, entry in METHODS.items() if not entry.needs_labels)
        raise ValueError(f"{name} {method!r} is not {also} or a label-free selection method: {', '.join(label_free)}")


def resolve_split(split: str, source: str, *, auto: str, name: str = "split") -> str:
    """``split`` with "auto" resolved: ``auto`` for the shipped wiki-sample (its other half
    stays for the other use), "all" of a user's own corpus."""
    check_choice(name, split, SPLITS)
    return (auto if source == "wiki-sample" else "all") if split == "auto" else split


def held_out_split(split: str) -> str | None:
    """The other half of the document split (None for "all": nothing is held out)."""
    return {"calibration": "eval", "eval": "calibration"}.get(split)


def read_documents(source: str, split: str, seed: int) -> list:
    """The ``split`` part ("eval" | "calibration" | "all", resolved) of the corpus ``source``."""
    from prune_jax.data import load_documents, split_documents

    docs = load_documents(source)
    if split == "all":
        return docs
    calibration, evaluation = split_documents(docs, seed=seed)
    return evaluation if split == "eval" else calibration


def tokenize(docs: list, tokenizer: Any, reporter: Reporter = QUIET):
    """One flat token stream of ``docs`` (``prune_jax.data.tokenize_corpus``: cached on disk)."""
    from prune_jax.data import tokenize_corpus

    with reporter.stage(f"tokenising {len(docs)} documents (cached after the first time) ..."):
        return tokenize_corpus(docs, tokenizer)


def load_model_for_run(model: str, dtype: str = "float32", mesh=None, reporter: Reporter = QUIET):
    """(model, tokenizer); a model without tokenizer files is an error (a run reads text)."""
    from prune_jax.models.llama import load_model

    where = "" if mesh is None else f" onto mesh {dict(mesh.shape)}"
    with reporter.stage(f"loading {model} ({dtype}){where} ..."):  # a GGUF file is dequantised: a while
        net, tok = load_model(model, dtype=dtype, mesh=mesh)
    if tok is None:
        raise ValueError(f"{model} has no tokenizer files")
    return net, tok


def load_model_for_eval(model: str, dtype: str, attention: str, tokenizer: Path | None, reporter: Reporter = QUIET):
    """(model, tokenizer) for evaluation: ``attention`` set, ``tokenizer`` (when given)
    checked against the model's vocabulary."""
    from prune_jax.models.llama import load_model, load_tokenizer, set_attention
    from prune_jax.models.llama.checkpoint import check_tokenizer

    with reporter.stage(f"loading {model} ({dtype}) ..."):
        net, tok = load_model(model, dtype=dtype)
    set_attention(net, attention)
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        if tok is None:
            raise ValueError(f"tokenizer {tokenizer} holds no tokenizer files (tokenizer.json, tokenizer_config.json or tokenizer.model)")
        check_tokenizer(net, tok)
    if tok is None:
        raise ValueError(f"{model} has no tokenizer files; pass `tokenizer` DIR")
    return net, tok


def gather_to_writer(net) -> bool:
    """In a multi-process run, gathers the parameters to every process (collective: all
    call it) and says whether this one is process 0, the only one that writes."""
    import jax

    if jax.process_count() == 1:
        return True
    from flax import nnx
    from jax.experimental import multihost_utils

    state = nnx.state(net)
    nnx.update(net, jax.tree.map(lambda a: multihost_utils.process_allgather(a, tiled=True), state))
    return jax.process_index() == 0
