"""The KV-cache forward of our LLaMA (``prefill`` / ``decode``) against the plain forward:
the same hidden states at every position, for pruned per-layer widths, GQA, biases, rows
whose prefixes differ in length, and token-by-token decoding under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prune_jax.models.llama.modeling import KVCache, LlamaConfig, cached_attention, extend_cache

pytestmark = pytest.mark.usefixtures("exact_matmuls")


@pytest.fixture(scope="module")
def pruned(random_llama):
    """Three blocks of different widths (heads / KV heads / FFN), as pruning leaves them."""
    config = LlamaConfig(vocab_size=53, hidden_size=24, num_layers=3, layer_heads=((4, 2), (2, 1), (6, 3)),
                         layer_intermediate=(24, 8, 16), head_dim=8, attention_bias=True, max_position_embeddings=64)
    return random_llama(config, seed=3, scale=0.3)


def test_prefill_is_the_forward_and_caches_each_block_at_its_width(pruned):
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 53, (3, 11)))
    hidden, caches = pruned.prefill(tokens)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(pruned.hidden_states(tokens)), atol=1e-6)
    assert [c.k.shape for c in caches] == [(3, 11, 2, 8), (3, 11, 1, 8), (3, 11, 3, 8)]
    # the cached keys are the RoPE'd projections of each block's normed input
    positions = pruned.default_positions(tokens)
    x = pruned.embed_tokens(tokens)
    block = pruned.layers[0]
    _, k, v = block.attn._grouped_qkv(block.input_norm(x), positions, pruned.rope_frequencies())
    np.testing.assert_array_equal(np.asarray(caches[0].k), np.asarray(k))
    np.testing.assert_array_equal(np.asarray(caches[0].v), np.asarray(v))


def test_decode_after_prefixes_of_different_lengths_equals_the_whole_forward(pruned):
    """Row b's prefix is its first P_b tokens (the prefill batch is right-padded with other
    tokens); its next R tokens, decoded at positions P_b + [0, R) against the padded
    caches, get the hidden states of the forward of the whole row."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 53, (4, 20))
    prefix = np.array([1, 5, 9, 12])
    steps = 6
    padded = rng.integers(0, 53, (4, 12))  # garbage beyond each prefix: overwritten or masked
    for row, p in enumerate(prefix):
        padded[row, :p] = tokens[row, :p]
    _, caches = pruned.prefill(jnp.asarray(padded))
    caches = extend_cache(caches, 20)
    positions = prefix[:, None] + np.arange(steps)[None, :]
    new = np.take_along_axis(tokens, positions, axis=1)
    hidden, updated = pruned.decode(jnp.asarray(new), jnp.asarray(positions), caches)
    want = np.take_along_axis(np.asarray(pruned.hidden_states(jnp.asarray(tokens))), positions[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(hidden), want, atol=2e-5)
    assert np.abs(want).max() > 0.1
    # the decoded tokens' keys sit at their positions' slots
    _, whole = pruned.prefill(jnp.asarray(tokens))
    for row, p in enumerate(prefix):
        np.testing.assert_allclose(np.asarray(updated[2].k[row, p:p + steps]), np.asarray(whole[2].k[row, p:p + steps]), atol=2e-5)


def test_token_by_token_decoding_under_jit_equals_the_forward(pruned):
    tokens = np.random.default_rng(2).integers(0, 53, (2, 16))
    _, caches = pruned.prefill(jnp.asarray(tokens[:, :1]))
    caches = extend_cache(caches, 16)
    step = jax.jit(lambda token, position, caches: pruned.decode(token, position, caches))
    got = []
    for t in range(1, 16):
        position = jnp.full((2, 1), t, jnp.int32)
        hidden, caches = step(jnp.asarray(tokens[:, t:t + 1]), position, caches)
        got.append(np.asarray(hidden[:, 0]))
    want = np.asarray(pruned.hidden_states(jnp.asarray(tokens)))[:, 1:]
    np.testing.assert_allclose(np.stack(got, axis=1), want, atol=2e-5)


def test_cached_attention_reads_only_the_slots_up_to_each_position():
    """Against a one-shot softmax over the slots ≤ position; what later slots hold
    (here NaN-free garbage of huge size) changes nothing."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 3, 2, 2, 4)).astype(np.float32)  # [B, R, K, G, H]
    k, v = (rng.standard_normal((2, 7, 2, 4)).astype(np.float32) for _ in range(2))
    positions = np.array([[0, 1, 2], [3, 4, 5]])
    got = np.asarray(cached_attention(jnp.asarray(q), KVCache(jnp.asarray(k), jnp.asarray(v)), jnp.asarray(positions)))
    for b in range(2):
        for r in range(3):
            p = positions[b, r]
            scores = np.einsum("kgh,skh->kgs", q[b, r], k[b, :p + 1]) / 2.0
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            np.testing.assert_allclose(got[b, r], np.einsum("kgs,skh->kgh", weights, v[b, :p + 1]), atol=1e-5)
    k[:, 6], v[:, 6] = 1e4, -1e4  # slot 6 is beyond every position
    again = cached_attention(jnp.asarray(q), KVCache(jnp.asarray(k), jnp.asarray(v)), jnp.asarray(positions))
    np.testing.assert_array_equal(np.asarray(again), got)
