"""Zero-shot evaluation: log-likelihood requests against transformers' PyTorch LLaMA and our
own perplexity, greedy generation against a step-by-step argmax, multiple-choice scoring
against numpy, the task file format's errors, the built-in tasks' provenance, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prune_jax.cli import app
from prune_jax.evaluate import forward_logits, perplexity
from prune_jax.zero_shot import requests as zs
from prune_jax.zero_shot.tasks import (
    BUILTIN_TASKS,
    CLOZE,
    MULTIPLE_CHOICE,
    Item,
    Task,
    builtin_task,
    evaluate_task,
    load_jsonl_task,
    resolve_task,
    task_requests,
)

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("exact_matmuls")


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    """2 blocks, GQA 4/2, vocabulary 97 (> one vocabulary chunk is tested in test_llama)."""
    return tiny_llama(1, scale=0.3, num_layers=2, heads=(4, 2), intermediate=24, vocab_size=97, max_position_embeddings=64)


def random_requests(rng, count: int, vocab: int) -> list[tuple[list[int], list[int]]]:
    return [(rng.integers(0, vocab, rng.integers(1, 90)).tolist(), rng.integers(0, vocab, rng.integers(1, 6)).tolist())
            for _ in range(count)]


def reference_scores(logits_of, requests, window: int) -> list[tuple[float, bool]]:
    """One request at a time, no padding: the harness's definition with full logits."""
    out = []
    for context, continuation in requests:
        whole = (context + continuation)[-(window + 1):]
        logits = logits_of(np.asarray([whole[:-1]]))[0]  # [T, V]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        rows = np.arange(len(whole) - 1 - len(continuation), len(whole) - 1)
        out.append((float(logp[rows, continuation].sum()), bool((logp[rows].argmax(-1) == continuation).all())))
    return out


@pytest.mark.needs_torch
def test_loglikelihood_matches_transformers(tmp_path: Path, tiny):
    """Batched, bucketed, left-truncated scores equal transformers' LlamaForCausalLM run
    one request at a time; some continuations are the model's own greedy ones."""
    import torch
    import transformers

    from prune_jax.models.llama import save_hf

    save_hf(tiny, None, tmp_path / "m")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", torch_dtype=torch.float32).eval()

    def torch_logits(tokens):
        with torch.no_grad():
            return hf(torch.as_tensor(tokens, dtype=torch.long)).logits.double().numpy()

    rng = np.random.default_rng(0)
    requests = random_requests(rng, 14, 97)
    for context, _ in requests[:4]:  # greedy continuations of 3 tokens (untruncated): is_greedy must be True
        whole = list(context[:40])
        for _ in range(3):
            whole.append(int(torch_logits(np.asarray([whole]))[0, -1].argmax()))
        requests.append((whole[:-3], whole[-3:]))
    want = reference_scores(torch_logits, requests, 64)
    got = zs.loglikelihood_tokens(tiny, requests, batch_tokens=256)
    np.testing.assert_allclose([g for g, _ in got], [w for w, _ in want], atol=1e-4, rtol=1e-5)
    assert [g for _, g in got] == [w for _, w in want]
    assert all(g for _, g in got[-4:])
    # a shorter window truncates the context from the left, as the harness does
    got = zs.loglikelihood_tokens(tiny, requests, max_length=20)
    np.testing.assert_allclose([g for g, _ in got], [w for w, _ in reference_scores(torch_logits, requests, 20)], atol=1e-4)


def test_rolling_loglikelihood_equals_perplexity_over_tiling_windows(tiny):
    """Disjoint rolling windows of L predicted tokens after a prefix token sum the same
    log-probabilities as ``perplexity`` over windows of L + 1 tokens overlapping by one."""
    rng = np.random.default_rng(1)
    window, count = 16, 5
    document = rng.integers(0, 97, window * count).tolist()
    prefix = 3
    total = zs.loglikelihood_rolling_tokens(tiny, [document, document[:37]], prefix_token=prefix, max_length=window)
    sequence = np.asarray([prefix] + document)
    windows = np.stack([sequence[i * window:i * window + window + 1] for i in range(count)])
    result = perplexity(tiny, windows)
    np.testing.assert_allclose(total[0], -result.nll * result.tokens, rtol=1e-5)
    # the windows tile the document exactly once, whatever its length
    pairs = zs.rolling_windows(document[:37], prefix, window)
    assert sum((c for _, c in pairs), []) == document[:37]
    assert all(len(c) + len(x) - 1 <= window for c, x in pairs)
    assert total[1] < 0


def test_greedy_generation_equals_a_step_by_step_argmax(tiny):
    rng = np.random.default_rng(2)
    contexts = [rng.integers(0, 97, n).tolist() for n in (5, 30, 12)]
    got = zs.generate_greedy_tokens(tiny, contexts, max_new_tokens=6, batch_tokens=128)
    for context, tokens in zip(contexts, got):
        sequence = list(context)
        for _ in range(6):
            sequence.append(int(forward_logits(tiny, np.asarray([sequence]))[0, -1].argmax()))
        assert tokens == sequence[len(context):]
    # a stop rule ends a row early; an EOS token ends it and is not returned
    stopped = zs.generate_greedy_tokens(tiny, contexts, max_new_tokens=6, stop=lambda i, new: len(new) == 2)
    assert [len(t) for t in stopped] == [2, 2, 2]
    first = got[0][0]
    assert zs.generate_greedy_tokens(tiny, contexts[:1], max_new_tokens=6, eos_token=first) == [[]]


def test_request_errors_name_the_request(tiny):
    with pytest.raises(ValueError, match="request 1: empty continuation"):
        zs.loglikelihood_tokens(tiny, [([1], [2]), ([1], [])])
    with pytest.raises(ValueError, match="request 0: empty context"):
        zs.loglikelihood_tokens(tiny, [([], [2])])
    with pytest.raises(ValueError, match="exceeds the window"):
        zs.loglikelihood_tokens(tiny, [([1], [2] * 30)], max_length=20)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 97\)"):
        zs.loglikelihood_tokens(tiny, [([1], [200])])


# ----------------------------------------------------------------------------- tasks


class CharTokenizer:
    """One token per character (ids 4 + ord % 90), BOS 1, EOS 2: enough for encode_pair."""

    bos_token_id, eos_token_id = 1, 2

    def encode(self, text: str) -> list[int]:
        return [4 + ord(ch) % 90 for ch in text]

    def decode(self, ids) -> str:
        return "".join(chr(i - 4) for i in ids)


def test_encode_pair_moves_trailing_space_and_handles_an_empty_context():
    tok = CharTokenizer()
    assert zs.encode_pair(tok, "ab ", "c") == (tok.encode("ab"), tok.encode(" c"))
    assert zs.encode_pair(tok, "", "xy") == ([1], tok.encode("xy"))


def test_multiple_choice_accuracy_equals_numpy(tiny):
    """acc = argmax of summed log-probabilities, acc_norm = argmax of them over the
    choice's length in characters, standard errors of 0/1 means."""
    tok = CharTokenizer()
    rng = np.random.default_rng(3)
    words = ["ab", "cdefgh", "i", "jklmnopq", "rs"]
    items = tuple(Item("".join(rng.choice(list("abcdef"), 9)), tuple(rng.choice(words, 3, replace=False)), int(rng.integers(3)), str(i))
                  for i in range(12))
    task = Task("t", MULTIPLE_CHOICE, items)
    result = evaluate_task(tiny, tok, task)
    pairs, owner = task_requests(task, tok)
    scores = np.array([lp for lp, _ in zs.loglikelihood_tokens(tiny, pairs)]).reshape(12, 3)
    lengths = np.array([[len(c) for c in item.choices] for item in items], float)
    gold = np.array([item.gold for item in items])
    acc, acc_norm = scores.argmax(1) == gold, (scores / lengths).argmax(1) == gold
    assert result["acc"] == pytest.approx(acc.mean()) and result["acc_norm"] == pytest.approx(acc_norm.mean())
    assert result["acc_stderr"] == pytest.approx(acc.std(ddof=1) / np.sqrt(12))
    assert result["chance"] == pytest.approx(1 / 3) and result["n"] == 12
    # a cloze item is right exactly when its answer is the greedy continuation
    greedy = zs.generate_greedy_tokens(tiny, [tok.encode("abcabc")], max_new_tokens=2)[0]
    answer = tok.decode(greedy)
    cloze = Task("c", CLOZE, (Item("abcabc", (answer[1:],), 0, "0"),))
    assert (answer[0] == " ") == (evaluate_task(tiny, tok, cloze)["acc"] == 1.0)


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


@pytest.mark.parametrize("lines, message", [
    ([{"context": "a", "gold": 0}], "line 1: missing choices"),
    ([{"context": "a", "choices": ["x", "y"], "gold": 0}, {"context": "b", "choices": ["x", "y"], "gold": 2}], "line 2: gold must be an index in [0, 2)"),
    ([{"context": "a", "choices": ["x"], "gold": 0}], "line 1: choices must be a list of at least 2"),
    (["{not json"], "line 1: invalid JSON"),
    ([""], "holds no items"),
])
def test_task_file_errors_name_the_line(tmp_path: Path, lines, message):
    with pytest.raises(ValueError) as err:
        load_jsonl_task(write_jsonl(tmp_path / "t.jsonl", lines))
    assert message in str(err.value)


def test_unknown_task_name_lists_the_built_in_ones():
    with pytest.raises(ValueError, match="built-in tasks are wiki-next-sentence"):
        resolve_task("hellaswag")


def test_built_in_tasks_use_only_evaluation_documents_and_are_deterministic():
    from prune_jax.data import load_documents, split_documents

    for name in BUILTIN_TASKS:
        task = builtin_task(name, max_items=40)
        corpus = BUILTIN_TASKS[name][0]
        calibration, evaluation = split_documents(load_documents(corpus), seed=0)
        doc_ids = {item.id.rsplit(":", 2)[0] for item in task.items}  # id = document:paragraph:sentence
        assert doc_ids <= {d.id for d in evaluation} and not doc_ids & {d.id for d in calibration}
        assert len(task.items) == 40 and task == builtin_task(name, max_items=40)
        # a prefix (prune-jax eval --limit) is the same random sample as a smaller max_items
        assert task.items[:10] == builtin_task(name, max_items=10).items
        if task.kind == MULTIPLE_CHOICE:
            assert all(len(set(item.choices)) == 4 for item in task.items)
            assert 5 <= sum(item.gold == 0 for item in task.items) <= 15  # gold positions are shuffled
        else:  # the answer word occurs earlier in the passage
            assert all(item.choices[0] in item.context for item in task.items)


# ----------------------------------------------------------------------------- CLI


def test_cli_eval_tasks_writes_acc_and_acc_norm(tmp_path: Path, tiny_model_and_corpus):
    model_dir = tiny_model_and_corpus.model_dir
    task = write_jsonl(tmp_path / "mine.jsonl", [{"context": "the quick brown", "choices": ["fox", "dog", "sun"], "gold": 0, "id": "q1"},
                                                {"context": "the lazy", "choices": ["dog", "fox"], "gold": 0}])
    out = tmp_path / "acc.json"
    result = runner.invoke(app, ["eval", "--model", str(model_dir), "--tasks", str(task), "--json", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())["tasks"]["mine"]
    for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        assert 0.0 <= scores[key] <= 1.0
    assert scores["n"] == 2 and scores["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)


@pytest.mark.parametrize("lines, message", [
    ([{"context": "the quick", "gold": 0}], "line 1: missing choices"),
    ([{"context": "the quick", "choices": ["fox", "dog"], "gold": 5}], "gold must be an index in [0, 2)"),
    ([], "holds no items"),
    ([{"context": "the quick brown fox " * 700, "choices": ["dog", "sun"], "gold": 0}], "longer than the model's window"),
])
def test_cli_eval_tasks_bad_input_is_a_clean_error_with_no_output(tmp_path: Path, tiny_model_and_corpus, lines, message):
    task = write_jsonl(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "acc.json"
    result = runner.invoke(app, ["eval", "--model", str(tiny_model_and_corpus.model_dir), "--tasks", str(task), "--json", str(out)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not out.exists()


def test_cli_eval_unknown_task_is_a_clean_error(tmp_path: Path, tiny_model_and_corpus):
    out = tmp_path / "acc.json"
    result = runner.invoke(app, ["eval", "--model", str(tiny_model_and_corpus.model_dir), "--tasks", "piqa", "--json", str(out)])
    assert result.exit_code == 2 and "unknown task 'piqa'" in result.output and not out.exists()


def test_cli_eval_built_in_tasks_on_a_tiny_model(tmp_path: Path, tiny_model_and_corpus):
    out = tmp_path / "acc.json"
    result = runner.invoke(app, ["eval", "--model", str(tiny_model_and_corpus.model_dir), "--tasks", "wiki-last-word,python-docs-next-sentence",
                                 "--limit", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())["tasks"]
    assert scores["wiki-last-word"]["n"] == 3 and "acc_norm" not in scores["wiki-last-word"]
    assert scores["python-docs-next-sentence"]["chance"] == 0.25 and "acc_norm_stderr" in scores["python-docs-next-sentence"]
