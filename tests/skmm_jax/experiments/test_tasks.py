"""Tasks (document passages, jsonl) and resumable frozen-model feature extraction, on tiny inputs:
model-agnostic (``skmm_jax.experiments.features`` with a toy feature function) and the LLaMA glue
(``prune_jax.experiments.llama_features``)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prune_jax.data import Document
from prune_jax.experiments.llama_features import extract_llama_features, wiki_passage_task
from prune_jax.models.llama.modeling import rope_inverse_frequencies
from skmm_jax.experiments.features import extract_features
from skmm_jax.experiments.tasks import TextTask, document_passage_task, jsonl_task, stratified_split


class WordTokenizer:
    """One id per whitespace word (a deterministic hash), like a tokenizer's encode()."""

    def encode(self, text, add_special_tokens=False, verbose=True):
        assert add_special_tokens is False
        return [3 + sum(map(ord, word)) % 50 for word in text.split()]


def synthetic_docs(lengths=(40, 3, 25, 100, 17, 64)):
    rng = np.random.default_rng(0)
    return [
        Document(id=f"p{i}", title=f"Article {i}", text=" ".join(f"w{rng.integers(1000)}" for _ in range(n)))
        for i, n in enumerate(lengths)
    ]


pytestmark = pytest.mark.usefixtures("exact_matmuls")


# --------------------------------------------------------------------- wiki task


def test_wiki_passage_task_split_is_stratified_disjoint_and_deterministic():
    docs = synthetic_docs()  # 10, 0, 6, 25, 4, 16 passages of 4 tokens
    kwargs = dict(documents=docs, passage_tokens=4, min_passages_per_class=5, max_passages_per_class=12,
                  val_fraction=0.2, test_fraction=0.2, seed=3)  # fmt: skip
    calls = []
    task = wiki_passage_task(WordTokenizer(), progress=lambda done, total: calls.append((done, total)), **kwargs)
    assert task.info["source"] == "custom documents"

    assert task.class_names == ("Article 0", "Article 2", "Article 3", "Article 5")
    assert task.info["classes_dropped"] == 2 and task.info["dropped_classes"] == {"Article 1": 0, "Article 4": 4}
    assert task.tokens.shape == (10 + 6 + 12 + 12, 4) and task.tokens.dtype == np.int32
    assert np.bincount(task.labels).tolist() == [10, 6, 12, 12]  # capped, not equalised
    assert task.info["passages"] == 40 and task.info["tokens"] == 40 * 4 and task.info["passages_before_cap"] == 61
    assert calls == [(k, 6) for k in range(1, 7)] and task.summary().startswith("4 classes")

    splits = [task.train, task.val, task.test]
    assert sum(s.size for s in splits) == task.num_passages
    assert np.unique(np.concatenate(splits)).size == task.num_passages  # disjoint, covering
    for c in range(task.num_classes):
        for s in splits:
            assert np.any(task.labels[s] == c)  # every kept class in every split

    # Passages are consecutive, non-overlapping T-token pieces of the article's tokens.
    tok = WordTokenizer()
    doc3 = np.asarray(tok.encode(docs[3].text))
    for row, sid in zip(task.tokens, task.source_ids):
        doc, k = sid.split("#")
        if doc == "p3":
            np.testing.assert_array_equal(row, doc3[int(k) * 4 : int(k) * 4 + 4])

    again = document_passage_task(WordTokenizer(), kwargs.pop("documents"), **kwargs)
    for name in ("tokens", "labels", "train", "val", "test"):
        np.testing.assert_array_equal(getattr(task, name), getattr(again, name))
    other = document_passage_task(WordTokenizer(), docs, **{**kwargs, "seed": 4})
    assert not all(np.array_equal(a, b) for a, b in zip(splits, [other.train, other.val, other.test]))


def test_wiki_passage_task_bos_and_bad_arguments():
    task = wiki_passage_task(WordTokenizer(), documents=synthetic_docs(), passage_tokens=5, bos_token_id=1,
                             min_passages_per_class=3, max_passages_per_class=None)  # fmt: skip
    assert np.all(task.tokens[:, 0] == 1) and task.passage_tokens == 5
    with pytest.raises(ValueError, match="min_passages_per_class"):
        wiki_passage_task(WordTokenizer(), documents=synthetic_docs(), min_passages_per_class=2)
    with pytest.raises(ValueError, match="val_fraction"):
        wiki_passage_task(WordTokenizer(), documents=synthetic_docs(), val_fraction=0.0)
    with pytest.raises(ValueError, match="need 2 or more"):
        wiki_passage_task(WordTokenizer(), documents=synthetic_docs(), passage_tokens=30, min_passages_per_class=3)


def test_stratified_split_small_classes_keep_one_of_each():
    labels = np.repeat([0, 1, 2], [3, 4, 10])
    ids = [str(i) for i in range(labels.size)]
    train, val, test = stratified_split(labels, ids, val_fraction=0.45, test_fraction=0.45, seed=0)
    for c in range(3):
        assert all(np.sum(labels[s] == c) >= 1 for s in (train, val, test))
    with pytest.raises(ValueError, match="at least 3"):
        stratified_split(np.array([0, 0, 1]), ["a", "b", "c"], val_fraction=0.1, test_fraction=0.1, seed=0)


@pytest.mark.slow
def test_real_default_wiki_task_sizes():
    from prune_jax.models.llama.checkpoint import load_tokenizer, resolve_model_source

    task = wiki_passage_task(load_tokenizer(resolve_model_source("smollm2-135m")))
    assert task.tokens.shape == (3907, 64)
    assert task.num_classes == 96 and task.info["classes_dropped"] == 10


# --------------------------------------------------------------------- jsonl task


def write_jsonl(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_task_maps_labels_and_drops_short_texts(tmp_path):
    words = lambda n: " ".join(f"x{i}" for i in range(n))  # noqa: E731
    records = [{"text": words(6), "label": lab} for lab in ["spam", "ham", "eggs"] * 4]
    records.append({"text": words(2), "label": "spam"})  # too short: dropped
    records.append("")  # blank lines are skipped
    path = write_jsonl(tmp_path / "t.jsonl", records)
    calls = []
    with pytest.warns(UserWarning, match="1 of 13 texts"):
        task = jsonl_task(path, WordTokenizer(), passage_tokens=5, progress=lambda done, total: calls.append(done))
    assert calls == list(range(1, 14))
    assert task.class_names == ("eggs", "ham", "spam")
    assert task.tokens.shape == (12, 5) and task.info["dropped_short"] == 1
    assert np.bincount(task.labels).tolist() == [4, 4, 4]
    assert isinstance(task, TextTask) and task.source_ids[0] == "t.jsonl:3"  # first "eggs" record
    np.testing.assert_array_equal(task.tokens[0], WordTokenizer().encode(words(6))[:5])

    ints = write_jsonl(tmp_path / "i.jsonl", [{"text": words(5), "label": lab} for lab in [10, 2] * 3])
    assert jsonl_task(ints, WordTokenizer(), passage_tokens=5).class_names == ("2", "10")  # numeric order


def test_jsonl_task_errors(tmp_path):
    tok, good = WordTokenizer(), {"text": "a b c d e", "label": "x"}
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        jsonl_task(tmp_path / "missing.jsonl", tok)
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        jsonl_task(write_jsonl(tmp_path / "a.jsonl", [good, "{not json"]), tok, passage_tokens=3)
    with pytest.raises(ValueError, match=r"line 2: no 'label' field"):
        jsonl_task(write_jsonl(tmp_path / "b.jsonl", [good, {"text": "a b c"}]), tok, passage_tokens=3)
    with pytest.raises(ValueError, match="line 1: .*expected a string or an integer"):
        jsonl_task(write_jsonl(tmp_path / "c.jsonl", [{"text": "a b c", "label": [1]}]), tok, passage_tokens=3)
    with pytest.raises(ValueError, match="need at least 2 classes"):
        jsonl_task(write_jsonl(tmp_path / "d.jsonl", [good] * 5), tok, passage_tokens=3)
    with pytest.raises(ValueError, match="mix types"):
        jsonl_task(write_jsonl(tmp_path / "e.jsonl", [good, {"text": "a b c", "label": 1}]), tok, passage_tokens=3)


# ------------------------------------------------------------------------ features


@jax.jit
def toy_features(tokens):
    """A jitted feature function: pooled = mean token id and its square [B, 2]; per-token ids [B, T, 1]."""
    ids = tokens.astype(jnp.float32)
    pooled = jnp.stack([ids.mean(axis=1), (ids * ids).mean(axis=1)], axis=1)
    return pooled, ids[:, :, None].astype(jnp.float16)


def test_extract_features_with_any_feature_function(tmp_path):
    tokens = np.arange(7 * 3, dtype=np.int64).reshape(7, 3) % 11
    seen = []
    out = extract_features(toy_features, tokens, batch_size=3, progress=lambda done, total: seen.append((done, total)))
    ids = tokens.astype(np.float32)
    np.testing.assert_allclose(out.pooled, np.stack([ids.mean(1), (ids**2).mean(1)], 1), rtol=1e-6)
    assert out.layer_inputs.dtype == np.float16 and out.layer_inputs.shape == (7, 3, 1)
    assert seen == [(3, 7), (6, 7), (7, 7)]  # the padded last batch reports only its real rows
    no_layer = extract_features(jax.jit(lambda t: (toy_features(t)[0], None)), tokens, batch_size=4)
    assert no_layer.layer_inputs is None
    np.testing.assert_array_equal(no_layer.pooled, out.pooled)

    cached = extract_features(toy_features, tokens, batch_size=3, cache=tmp_path / "c", fingerprint=[b"toy"])
    np.testing.assert_array_equal(cached.pooled, out.pooled)
    with pytest.raises(ValueError, match="needs fingerprint"):
        extract_features(toy_features, tokens, cache=tmp_path / "d")
    with pytest.raises(ValueError, match="pooled features"):
        extract_features(jax.jit(lambda t: (t.astype(jnp.float32).mean(axis=1), None)), tokens)
    with pytest.raises(ValueError, match="layer input"):
        extract_features(jax.jit(lambda t: (toy_features(t)[0], t)), tokens)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(toy_features, tokens, batch_size=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_llama):
    """Factory: ``tiny_model(seed=0)``, the 2-block model of the feature tests."""
    return lambda seed=0: tiny_llama(seed, vocab_size=64, hidden_size=32, num_layers=2, heads=(4, 2), intermediate=48, head_dim=8)


def tokens_for_test(n=10, length=8):
    return np.random.default_rng(0).integers(0, 64, (n, length)).astype(np.int32)


def manual_layer_input(model, tokens):
    """h = x + Attn(RMSNorm(x)) of the last block, by running the blocks by hand (a reference
    independent of the model's hooks)."""
    tokens = jnp.asarray(tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :], tokens.shape)
    inv_freq = jnp.asarray(rope_inverse_frequencies(model.config))
    x = jnp.take(model.embed[...], tokens, axis=0)
    x = model.layers[0](x, positions, inv_freq)
    last = model.layers[1]
    return np.asarray(x + last.attn(last.input_norm(x), positions, inv_freq))


def test_llama_features_match_the_model(tiny_model):
    model, tokens = tiny_model(), tokens_for_test()
    expected = np.asarray(jax.jit(lambda t: model.hidden_states(t).mean(1))(jnp.asarray(tokens)))
    plain = extract_llama_features(model, tokens, batch_size=4)  # 3 batches, the last padded
    assert plain.layer_inputs is None and plain.pooled.dtype == np.float32
    np.testing.assert_allclose(plain.pooled, expected, atol=1e-5, rtol=1e-5)

    full = extract_llama_features(model, tokens, batch_size=4, layer_input="float32")
    np.testing.assert_allclose(full.pooled, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(full.layer_inputs, manual_layer_input(model, tokens), atol=1e-5, rtol=1e-5)
    # batch 4 float16: the same compilation as the cache test below
    half = extract_llama_features(model, tokens, batch_size=4, layer_input="float16")
    assert half.layer_inputs.dtype == np.float16
    np.testing.assert_allclose(half.layer_inputs.astype(np.float32), full.layer_inputs, atol=2e-3, rtol=2e-3)

    with pytest.raises(ValueError, match="layer_input"):
        extract_llama_features(model, tokens, layer_input="bfloat16")
    with pytest.raises(ValueError, match="vocabulary is 64"):
        extract_llama_features(model, tokens + 60)


class Interrupt(Exception):
    pass


def test_feature_cache_resumes_reuses_and_recomputes_on_mismatch(tmp_path, tiny_model):
    model, tokens = tiny_model(), tokens_for_test()
    reference = extract_llama_features(model, tokens, batch_size=4, layer_input="float16")

    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise Interrupt

    cache = tmp_path / "feats"
    with pytest.raises(Interrupt):
        extract_llama_features(model, tokens, cache=cache, batch_size=4, layer_input="float16", progress=stop_after_two)
    state = json.loads((cache / "progress.json").read_text())
    assert state["rows_done"] == 8 and not state["complete"]

    resumed_calls = []
    resumed = extract_llama_features(model, tokens, cache=cache, batch_size=4, layer_input="float16",
                                     progress=lambda done, total: resumed_calls.append(done))  # fmt: skip
    assert resumed_calls == [10]  # only the last batch ran
    np.testing.assert_array_equal(resumed.pooled, reference.pooled)
    np.testing.assert_array_equal(np.asarray(resumed.layer_inputs), reference.layer_inputs)
    assert json.loads((cache / "progress.json").read_text())["complete"]

    reused_calls = []
    reused = extract_llama_features(model, tokens, cache=cache, batch_size=3, layer_input="float16",
                                    progress=lambda done, total: reused_calls.append(done))  # fmt: skip
    assert reused_calls == []
    np.testing.assert_array_equal(reused.pooled, reference.pooled)

    # Same config, different weights: the fingerprint differs, so everything is recomputed.
    other = tiny_model(seed=1)
    recomputed = extract_llama_features(other, tokens, cache=cache, batch_size=4)
    np.testing.assert_allclose(recomputed.pooled, extract_llama_features(other, tokens, batch_size=4).pooled, atol=1e-6)
    assert not np.allclose(recomputed.pooled, reference.pooled)
    assert not (cache / "layer_inputs.npy").exists()  # the stale array was removed
