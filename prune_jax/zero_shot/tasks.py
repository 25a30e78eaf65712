"""Zero-shot tasks: multiple choice (acc, acc_norm) and greedy cloze (acc), as the papers report.

Scoring follows lm-evaluation-harness 0.4's ``multiple_choice`` output type: each choice
c_k is the continuation ``" " + c_k`` (the target delimiter) of the context;
acc = [argmax_k log p(c_k) = gold], acc_norm = [argmax_k log p(c_k) / len(c_k) = gold]
with len in characters (of the choice, without the delimiter). A cloze item has one
answer and scores acc = [the answer is the greedy continuation, token for token] (the
harness's LAMBADA metric). Standard errors are those of a mean of 0/1 outcomes,
s / √n with the sample standard deviation s (the harness's ``mean_stderr``).

Tasks come from a .jsonl file (one item per line, format in ``load_jsonl_task``) or are
built in (``BUILTIN_TASKS``), made from the evaluation half of the shipped corpora, so
the main job and CI evaluate with no download. The built-in tasks never read the
calibration half: they split with the same seed (0) as every calibration default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from prune_jax.zero_shot.requests import encode_pair, loglikelihood_tokens
from skmm_jax.common.io import iter_jsonl
from skmm_jax.common.streaming import Progress

MULTIPLE_CHOICE, CLOZE = "multiple_choice", "cloze"
TARGET_DELIMITER = " "


@dataclasses.dataclass(frozen=True)
class Item:
    """One question: the continuation ``TARGET_DELIMITER + choices[k]`` of ``context``."""

    context: str
    choices: tuple[str, ...]
    gold: int
    id: str


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    kind: str  # MULTIPLE_CHOICE or CLOZE (one choice: the answer)
    items: tuple[Item, ...]
    description: str = ""

    @property
    def chance(self) -> float:
        """Expected acc of a uniform random guess (0 for a cloze: any word of the vocabulary)."""
        return 0.0 if self.kind == CLOZE else float(np.mean([1.0 / len(item.choices) for item in self.items]))


# ----------------------------------------------------------------------------- .jsonl tasks


def load_jsonl_task(path: str | os.PathLike, name: str | None = None) -> Task:
    """A multiple-choice task from a .jsonl file: one JSON object per line with
    ``context`` (string), ``choices`` (list of ≥ 2 strings), ``gold`` (index into
    choices) and an optional ``id`` (default: the line number). Blank lines are skipped.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a malformed line (the message names the file and the line), or no items.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    items = []
    for where, record in iter_jsonl(path):
        missing = [key for key in ("context", "choices", "gold") if key not in record]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)} (each line needs context, choices and gold)")
        context, choices, gold = record["context"], record["choices"], record["gold"]
        if not isinstance(context, str):
            raise ValueError(f"{where}: context must be a string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"{where}: choices must be a list of at least 2 non-empty strings")
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise ValueError(f"{where}: gold must be an index in [0, {len(choices)}), got {gold!r}")
        items.append(Item(context, tuple(choices), gold, str(record.get("id", where.rsplit(" ", 1)[1]))))  # default id: the line number))
    if not items:
        raise ValueError(f"task file {path} holds no items")
    return Task(name or path.stem, MULTIPLE_CHOICE, tuple(items), f"multiple choice from {path}")


# ----------------------------------------------------------------------------- built-in tasks

SENTENCE_END = re.compile(r"(?<=[a-z0-9)\"'][.!?])\s+(?=[A-Z\"'(])")
WORD = re.compile(r"[A-Za-z]{4,}")
CONTEXT_SENTENCES = 3
MIN_SENTENCE_CHARS, MAX_SENTENCE_CHARS = 40, 300
# Context + longest choice: ≈ 110 tokens of English, so nearly every request fits the
# 128-token bucket (``requests.MIN_BUCKET``) and scoring compiles two lengths, not five.
MAX_ITEM_CHARS = 480


def prose_sentences(text: str) -> list[list[str]]:
    """Sentences of each prose paragraph of ``text``: paragraphs are blank-line separated;
    hard-wrapped lines are joined; headings (one short line) and indented blocks (code,
    grammar) are dropped, so tasks ask about running prose only."""
    paragraphs = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or any(line[:1].isspace() for line in lines) or set(lines[-1].strip()) <= set("*=-"):
            continue
        prose = " ".join(line.strip() for line in lines)
        if len(prose) < 2 * MIN_SENTENCE_CHARS or not prose.endswith((".", "!", "?")):
            continue
        paragraphs.append([s for s in SENTENCE_END.split(prose) if s])
    return paragraphs


def _usable(sentence: str) -> bool:
    return MIN_SENTENCE_CHARS <= len(sentence) <= MAX_SENTENCE_CHARS and sentence[-1] in ".!?"


def _positions(count: int) -> list[int]:
    """Sentence positions to try in a paragraph of ``count``: those with ≥ 2 sentences
    of context first, then the second sentence."""
    return sorted(range(1, count), key=lambda q: (q < 2, q))


def next_sentence_items(documents, *, choices: int = 4, max_items: int, seed: int = 0) -> list[Item]:
    """"Which sentence comes next": the context is up to 3 sentences of a paragraph, the
    gold the sentence that follows them, the distractors sentences of the SAME document
    (same topic and vocabulary) taken from other paragraphs, the ones closest in length
    to the gold (so neither acc nor acc_norm can win by length alone). A model that
    follows the discourse is far above 1/choices; one that only knows the topic is not."""
    rng = np.random.default_rng(seed)
    items = []
    for doc in documents:
        paragraphs = prose_sentences(doc.text)
        pool = [(p, s) for p, sentences in enumerate(paragraphs) for s in sentences if _usable(s)]
        for p, sentences in enumerate(paragraphs):
            for position in _positions(len(sentences)):
                gold = sentences[position]
                if not _usable(gold):
                    continue
                others = sorted({s for q, s in pool if q != p and s != gold}, key=lambda s: (abs(len(s) - len(gold)), s))
                if len(others) < choices - 1:
                    continue
                options = [gold] + others[: choices - 1]
                context = " ".join(sentences[max(0, position - CONTEXT_SENTENCES):position])
                if len(context) + max(map(len, options)) > MAX_ITEM_CHARS:
                    continue
                order = rng.permutation(choices)
                items.append(Item(context, tuple(options[k] for k in order), int(np.argmin(order)), f"{doc.id}:{p}:{position}"))
                break  # one item per paragraph: items spread over the documents
    return [items[i] for i in rng.permutation(len(items))[:max_items]]  # random order: any prefix is a random sample


def last_word_items(documents, *, max_items: int, seed: int = 0) -> list[Item]:
    """Cloze "last word of the passage" (in the spirit of LAMBADA): the passage is up to
    3 sentences plus the next sentence without its last word; the answer is that word,
    chosen only when it already occurs earlier in the passage (≥ 4 letters), so a model
    that tracks the context can recover it and one that does not almost never does."""
    rng = np.random.default_rng(seed)
    items = []
    for doc in documents:
        for p, sentences in enumerate(prose_sentences(doc.text)):
            for position in _positions(len(sentences)):
                sentence = sentences[position]
                words = sentence[:-1].split(" ")
                answer = words[-1] if words else ""
                if not _usable(sentence) or len(words) < 4 or not WORD.fullmatch(answer):
                    continue
                passage = " ".join(sentences[max(0, position - CONTEXT_SENTENCES):position] + [" ".join(words[:-1])])
                if len(passage) > MAX_ITEM_CHARS or re.search(rf"\b{answer}\b", passage) is None:
                    continue
                items.append(Item(passage, (answer,), 0, f"{doc.id}:{p}:{position}"))
                break
    return [items[i] for i in rng.permutation(len(items))[:max_items]]  # random order: any prefix is a random sample


def _evaluation_documents(source: str):
    from prune_jax.data import load_documents, split_documents

    return split_documents(load_documents(source), seed=0)[1]


BUILTIN_TASKS = {
    # name: (corpus, kind, description)
    "wiki-next-sentence": ("wiki-sample", MULTIPLE_CHOICE, "4-way: which sentence comes next (Wikipedia evaluation articles)"),
    "wiki-last-word": ("wiki-sample", CLOZE, "cloze: the passage's last word, greedy exact match (Wikipedia evaluation articles)"),
    "python-docs-next-sentence": ("python-docs", MULTIPLE_CHOICE, "4-way: which sentence comes next (Python's reference documentation)"),
}
BUILTIN_MAX_ITEMS = 500


def builtin_task(name: str, *, max_items: int = BUILTIN_MAX_ITEMS) -> Task:
    """A built-in task (``BUILTIN_TASKS``), deterministic: the same items on every machine."""
    if name not in BUILTIN_TASKS:
        raise ValueError(f"unknown task {name!r}: built-in tasks are {', '.join(BUILTIN_TASKS)}, or pass a path to a .jsonl file")
    corpus, kind, description = BUILTIN_TASKS[name]
    documents = _evaluation_documents(corpus)
    build = next_sentence_items if kind == MULTIPLE_CHOICE else last_word_items
    items = build(documents, max_items=max_items)
    return Task(name, kind, tuple(items), description)


def resolve_task(spec: str, *, max_items: int = BUILTIN_MAX_ITEMS) -> Task:
    """A built-in name or a path to a .jsonl file."""
    if spec in BUILTIN_TASKS:
        return builtin_task(spec, max_items=max_items)
    if spec.endswith(".jsonl") or os.sep in spec or Path(spec).exists():
        return load_jsonl_task(spec)
    raise ValueError(f"unknown task {spec!r}: built-in tasks are {', '.join(BUILTIN_TASKS)}, or pass a path to a .jsonl file")


# ----------------------------------------------------------------------------- scoring


def mean_stderr(outcomes: np.ndarray) -> float:
    """Standard error of a mean: sample standard deviation / √n (0 for n < 2)."""
    n = len(outcomes)
    return float(np.std(outcomes, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def task_requests(task: Task, tokenizer) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """Token pairs of every (item, choice), flattened, and the item index of each."""
    pairs, owner = [], []
    for index, item in enumerate(task.items):
        for choice in item.choices:
            pairs.append(encode_pair(tokenizer, item.context, TARGET_DELIMITER + choice))
            owner.append(index)
    return pairs, owner


def check_fits(task: Task, pairs, owner, window: int) -> None:
    """ValueError naming the item whose context + continuation exceed the window: a
    task question must be scored whole, never silently truncated."""
    for (context, continuation), index in zip(pairs, owner):
        if len(context) + len(continuation) > window:
            raise ValueError(
                f"task {task.name}, item {task.items[index].id}: context + choice is {len(context) + len(continuation)} "
                f"tokens, longer than the model's window of {window} tokens"
            )


def evaluate_task(model, tokenizer, task: Task, *, progress: Progress | None = None, batch_tokens: int | None = None) -> dict:
    """{acc, acc_stderr, [acc_norm, acc_norm_stderr,] n, chance, kind} of ``model`` on ``task``.

    Raises:
      ValueError: an item longer than the model's window (before anything is scored).
    """
    return evaluate_tasks(model, tokenizer, [task], progress_factory=None if progress is None else (lambda _: progress),
                          batch_tokens=batch_tokens)[task.name]


def evaluate_tasks(model, tokenizer, tasks: Sequence[Task], *, progress_factory=None, batch_tokens: int | None = None) -> dict[str, dict]:
    """``evaluate_task`` for each task. Every task is encoded and checked against the
    window first, so a bad one fails before any scoring; ``progress_factory(task)`` may
    return a progress callback per task."""
    window = model.config.max_position_embeddings
    names = [task.name for task in tasks]
    if len(set(names)) < len(names):  # results are keyed by name: a repeat would silently replace a result
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"tasks must have distinct names (results are keyed by name), {', '.join(map(repr, repeated))} repeats")
    encoded = []
    for task in tasks:
        pairs, owner = task_requests(task, tokenizer)
        check_fits(task, pairs, owner, window)
        encoded.append((task, pairs, np.asarray(owner)))
    options = {} if batch_tokens is None else {"batch_tokens": batch_tokens}
    results = {}
    for task, pairs, owner in encoded:
        progress = None if progress_factory is None else progress_factory(task)
        scores = loglikelihood_tokens(model, pairs, progress=progress, **options)
        results[task.name] = task_metrics(task, scores, owner)
    return results


def task_metrics(task: Task, scores: list[tuple[float, bool]], owner: np.ndarray) -> dict:
    """{acc, acc_stderr, [acc_norm, acc_norm_stderr,] n, chance, kind} from the scores of
    ``task_requests``' pairs (``owner``: the item of each)."""
    result = {"kind": task.kind, "n": len(task.items), "chance": task.chance}
    if task.kind == CLOZE:
        acc = np.array([float(greedy) for _, greedy in scores])
        return {**result, "acc": float(acc.mean()), "acc_stderr": mean_stderr(acc)}
    logprob = np.array([lp for lp, _ in scores])
    acc, acc_norm = np.zeros(len(task.items)), np.zeros(len(task.items))
    for index, item in enumerate(task.items):
        lp = logprob[owner == index]
        lengths = np.array([float(len(c)) for c in item.choices])
        acc[index] = float(np.argmax(lp) == item.gold)
        acc_norm[index] = float(np.argmax(lp / lengths) == item.gold)
    return {**result, "acc": float(acc.mean()), "acc_stderr": mean_stderr(acc),
            "acc_norm": float(acc_norm.mean()), "acc_norm_stderr": mean_stderr(acc_norm)}
