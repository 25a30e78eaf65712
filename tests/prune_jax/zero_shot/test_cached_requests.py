"""The KV-cache paths of zero-shot requests against the uncached reference (``kv_cache=False``):
multiple-choice scoring that runs a shared context once, and cached greedy decoding, on
random tiny models with GQA and pruned per-layer widths."""

from __future__ import annotations

import numpy as np
import pytest

from prune_jax.evaluate import forward_logits
from prune_jax.models.llama import LlamaConfig
from prune_jax.zero_shot import requests as zs
from prune_jax.zero_shot.tasks import MULTIPLE_CHOICE, Item, Task, task_metrics, task_requests

pytestmark = pytest.mark.usefixtures("exact_matmuls")

VOCAB = 61


@pytest.fixture(scope="module", params=["gqa", "pruned"])
def model(request, tiny_llama, random_llama):
    if request.param == "gqa":
        return tiny_llama(4, scale=0.3, num_layers=2, heads=(4, 2), intermediate=24, vocab_size=VOCAB, max_position_embeddings=64)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=24, num_layers=3, layer_heads=((4, 2), (2, 1), (6, 3)),
                         layer_intermediate=(24, 8, 16), head_dim=8, max_position_embeddings=64)
    return random_llama(config, seed=5, scale=0.3)


def greedy_continuation(model, context: list[int], count: int) -> list[int]:
    whole = list(context)
    for _ in range(count):
        whole.append(int(forward_logits(model, np.asarray([whole]))[0, -1].argmax()))
    return whole[len(context):]


def multiple_choice_requests(model, rng) -> list[tuple[list[int], list[int]]]:
    """Questions of 1 to 5 choices with contexts of 1 to 70 tokens (some beyond the
    window of 64, so truncation differs per choice length), one choice of some the model's
    greedy continuation (is_greedy True), a repeated choice, and single requests."""
    requests = []
    for question in range(14):
        context = rng.integers(0, VOCAB, int(rng.choice([1, 2, rng.integers(3, 71)]))).tolist()
        choices = [rng.integers(0, VOCAB, rng.integers(1, 7)).tolist() for _ in range(rng.integers(1, 6))]
        if question % 3 == 0:
            choices.append(greedy_continuation(model, context[-40:], 3))
            context = context[-40:]
        if question % 5 == 0:
            choices.append(choices[0])
        requests += [(context, choice) for choice in choices]
    return requests


def test_shared_context_scores_equal_the_uncached_ones(model):
    rng = np.random.default_rng(0)
    requests = multiple_choice_requests(model, rng)
    windows = {}
    for window in (64, 24):  # 24: most contexts are truncated from the left
        inputs = [(c + x)[-(window + 1):][:-1] for c, x in requests]
        groups = zs._shared_prefix_groups(inputs, [len(x) for _, x in requests])
        assert len(groups) >= 5 and max(map(len, groups)) >= 4  # the cached path is exercised
        cached = zs.loglikelihood_tokens(model, requests, max_length=window, batch_tokens=512)
        reference = zs.loglikelihood_tokens(model, requests, max_length=window, batch_tokens=512, kv_cache=False)
        np.testing.assert_allclose([s for s, _ in cached], [s for s, _ in reference], rtol=1e-5, atol=2e-5)
        assert [g for _, g in cached] == [g for _, g in reference]
        windows[window] = reference
    assert sum(g for _, g in windows[64]) >= 4  # the greedy continuations are recognised
    assert [s for s, _ in windows[64]] != [s for s, _ in windows[24]]  # truncation matters


def test_progress_counts_every_request_once(model):
    requests = multiple_choice_requests(model, np.random.default_rng(1))
    seen = []
    zs.loglikelihood_tokens(model, requests, batch_tokens=256, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(requests), len(requests))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


class CharTokenizer:
    bos_token_id, eos_token_id = 1, 2

    def encode(self, text: str) -> list[int]:
        return [4 + ord(ch) % (VOCAB - 4) for ch in text]


def test_multiple_choice_accuracy_is_identical(model):
    rng = np.random.default_rng(2)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]

    def text(n):
        return " ".join(rng.choice(words, n))

    items = tuple(Item(text(rng.integers(2, 8)), tuple(text(rng.integers(1, 3)) for _ in range(4)), int(rng.integers(4)), str(i))
                  for i in range(40))
    task = Task("t", MULTIPLE_CHOICE, items)
    pairs, owner = task_requests(task, CharTokenizer())
    cached = zs.loglikelihood_tokens(model, pairs)
    reference = zs.loglikelihood_tokens(model, pairs, kv_cache=False)
    np.testing.assert_allclose([s for s, _ in cached], [s for s, _ in reference], rtol=1e-5, atol=2e-5)
    assert task_metrics(task, cached, np.asarray(owner)) == task_metrics(task, reference, np.asarray(owner))


@pytest.mark.parametrize("check_every", [1, 3, 8])
def test_cached_greedy_generation_equals_the_uncached_one(model, check_every):
    rng = np.random.default_rng(3)
    contexts = [rng.integers(0, VOCAB, n).tolist() for n in (1, 5, 30, 12, 70)]  # 70: truncated to the window
    options = {"max_new_tokens": 10, "batch_tokens": 128, "check_every": check_every}
    reference = zs.generate_greedy_tokens(model, contexts, kv_cache=False, **options)
    assert zs.generate_greedy_tokens(model, contexts, **options) == reference
    assert all(len(tokens) == 10 for tokens in reference)
    # stop rules and EOS end rows at the same token on both paths
    eos = reference[2][4]

    def stop(i, new):
        return len(new) == 2 + i

    stopped = zs.generate_greedy_tokens(model, contexts, kv_cache=False, stop=stop, eos_token=eos, **options)
    assert zs.generate_greedy_tokens(model, contexts, stop=stop, eos_token=eos, **options) == stopped
    assert stopped != reference and len(stopped[2]) <= 4
    assert zs.generate_greedy_tokens(model, contexts, max_length=20, **options) == \
        zs.generate_greedy_tokens(model, contexts, max_length=20, kv_cache=False, **options)


def test_check_every_must_be_positive(model):
    with pytest.raises(ValueError, match="check_every"):
        zs.generate_greedy_tokens(model, [[1, 2]], max_new_tokens=3, check_every=0)
