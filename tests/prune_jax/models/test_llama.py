"""Our Flax NNX LLaMA against transformers' PyTorch LlamaForCausalLM; checkpoint I/O.

Only the tests marked ``needs_torch`` use PyTorch; the rest run without the test extra.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from prune_jax.models.llama import checkpoint
from prune_jax.models.llama.checkpoint import load_hf_dir, save_hf
from prune_jax.models.llama.modeling import LlamaConfig
from prune_jax.models.llama.params import model_from_state_dict, state_dict_from_model

CASES = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa2": dict(num_attention_heads=4, num_key_value_heads=2),
    "gqa3-tied": dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True),
    "headdim16": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16),
    "llama3-rope": dict(num_attention_heads=4, num_key_value_heads=2, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "linear-rope-bias": dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                             rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
}


def tiny_hf_model(case: str, seed: int = 0):
    import torch

    options = dict(CASES[case])
    options.setdefault("tie_word_embeddings", False)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, **options,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger random weights than the init so every term matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


pytestmark = pytest.mark.usefixtures("exact_matmuls")


@pytest.mark.needs_torch
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case: str, tmp_path: Path):
    hf = tiny_hf_model(case)
    hf.save_pretrained(tmp_path)
    ours = load_hf_dir(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 97, (2, 40))
    expected = torch_logits(hf, tokens)
    got = np.asarray(ours(jnp.asarray(tokens)))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.needs_torch
def test_export_round_trip_through_transformers(tmp_path: Path):
    hf = tiny_hf_model("gqa2")
    hf.save_pretrained(tmp_path / "src")
    ours = load_hf_dir(tmp_path / "src")
    assert save_hf(ours, None, tmp_path / "out") is None
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = np.random.default_rng(1).integers(0, 97, (1, 33))
    np.testing.assert_allclose(torch_logits(reloaded, tokens), np.asarray(ours(jnp.asarray(tokens))), atol=1e-4, rtol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_non_uniform_widths_round_trip(tmp_path: Path, random_llama):
    """Per-layer widths: config.json of the "pruned_llama" type (stock transformers' side is
    tests/prune_jax/models/test_hf_export.py) reads back to the same config and model."""
    config = LlamaConfig(vocab_size=50, hidden_size=32, num_layers=3, layer_heads=((4, 2), (2, 1), (4, 4)),
                         layer_intermediate=(40, 24, 8), head_dim=8, tie_word_embeddings=True)
    model = random_llama(config, seed=3)
    message = save_hf(model, None, tmp_path / "pruned")
    assert "trust_remote_code=True" in message
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["layer_intermediate"] == [40, 24, 8]
    reloaded = load_hf_dir(tmp_path / "pruned")
    assert reloaded.config == config
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 50, (2, 17)))
    forward = nnx.jit(lambda model, tokens: model(tokens))  # one compile for both (same structure)
    np.testing.assert_allclose(np.asarray(forward(reloaded, tokens)), np.asarray(forward(model, tokens)), atol=1e-5)
    # Sizes are read from the kernels: layer 1 really has 2 query heads and 24 channels.
    assert reloaded.layers[1].attn.q_kernel[...].shape == (32, 2, 8)
    assert reloaded.layers[2].mlp.down_kernel[...].shape == (8, 32)


def test_state_dict_round_trip_is_exact(tiny_llama_config, random_llama):
    config = tiny_llama_config(vocab_size=40, num_layers=2, heads=(4, 2), intermediate=24, head_dim=4,
                               attention_bias=True, mlp_bias=True)
    model = random_llama(config, seed=1)  # random biases too: a dropped or transposed bias cannot hide
    tensors = state_dict_from_model(model)
    again = state_dict_from_model(model_from_state_dict(config, tensors))
    assert tensors.keys() == again.keys()
    for key in tensors:
        np.testing.assert_array_equal(tensors[key], again[key])


@pytest.mark.needs_torch
def test_loader_reports_every_problem_at_once(tmp_path: Path):
    hf = tiny_hf_model("gqa2")
    tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:-8]
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    config = LlamaConfig.from_hf(hf.config)
    with pytest.raises(ValueError) as err:
        model_from_state_dict(config, tensors)
    text = str(err.value)
    assert "3 problems" in text and "q_proj" in text and "missing parameter layers/1/mlp/up_kernel" in text
    assert "unexpected tensor 'model.layers.0.extra.weight'" in text


def test_loader_errors_name_the_path(tmp_path: Path, tiny_llama_config, random_llama):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_dir(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported architecture"):
        load_hf_dir(bad)
    corrupt = tmp_path / "corrupt"
    save_hf(random_llama(tiny_llama_config()), None, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_hf_dir(corrupt)
    with pytest.raises(FileNotFoundError, match="embedded models"):
        checkpoint.load_model(tmp_path / "missing.gguf")


def test_bf16_model_runs_and_stays_close(tiny_llama_config, random_llama):
    config = tiny_llama_config(vocab_size=40, hidden_size=32, num_layers=2, heads=(4, 2), intermediate=48)
    f32 = random_llama(config, seed=0)
    bf16 = model_from_state_dict(config.with_dtype("bfloat16"), state_dict_from_model(f32))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (1, 12)))
    a, b = np.asarray(f32(tokens)), np.asarray(bf16(tokens))
    assert b.dtype == np.float32 and bf16.layers[0].attn.q_kernel[...].dtype == jnp.bfloat16
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max() + 1e-3


@pytest.mark.needs_torch
def test_perplexity_matches_torch_cross_entropy_and_is_batch_invariant(tmp_path: Path):
    import torch

    from prune_jax.evaluate import forward_logits, perplexity

    hf = tiny_hf_model("gqa3-tied")
    hf.save_pretrained(tmp_path)
    ours = load_hf_dir(tmp_path)
    windows = np.random.default_rng(5).integers(0, 97, (5, 24))
    with torch.no_grad():
        out = hf(torch.as_tensor(windows), labels=torch.as_tensor(windows))  # mean CE over the W·(T−1) shifted targets
    expected = float(np.exp(out.loss.item()))
    for batch_size in (1, 2, 5):
        result = perplexity(ours, windows, batch_size=batch_size)
        assert abs(result.perplexity / expected - 1) < 1e-5
        assert result.tokens == 5 * 23 and result.windows == 5
    # Bucketed forward: padding a length-13 batch to 16 changes nothing.
    np.testing.assert_allclose(forward_logits(ours, windows[:2, :13]), torch_logits(hf, windows[:2, :13]), atol=1e-4, rtol=1e-4)


def test_perplexity_rejects_bad_windows(tiny_llama_config, random_llama):
    from prune_jax.evaluate import perplexity

    model = random_llama(tiny_llama_config(vocab_size=20))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        perplexity(model, np.full((2, 5), 20))
    with pytest.raises(ValueError, match="W >= 1, T >= 2"):
        perplexity(model, np.zeros((2, 1), np.int32))
    with pytest.raises(ValueError, match="integer"):
        perplexity(model, np.zeros((2, 4), np.float32))


def test_window_nll_is_token_nll_row_means_at_every_batch_size_and_averages_to_perplexity(tiny_llama):
    from prune_jax.evaluate import perplexity, window_nll

    model = tiny_llama(vocab_size=64)
    windows = np.random.default_rng(3).integers(0, 64, (5, 12))
    expected = np.asarray(model.token_nll(jnp.asarray(windows))).mean(axis=1)  # eager reference, [5]
    for batch_size in (1, 2, 5):  # 2: the last batch is padded, its padded row dropped
        np.testing.assert_allclose(window_nll(model, windows, batch_size=batch_size), expected, rtol=1e-5, atol=1e-6)
    assert abs(np.log(perplexity(model, windows).perplexity) - expected.mean()) < 1e-5
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        window_nll(model, np.full((2, 5), 64))


@pytest.mark.needs_torch
@pytest.mark.parametrize("case", ["gqa2", "gqa3-tied"])
def test_gguf_written_by_llama_cpp_convention_loads_to_the_same_logits(case: str, tmp_path: Path):
    from prune_jax.models.llama.gguf import write_gguf

    hf = tiny_hf_model(case)
    path = write_gguf(hf.config, {k: v.numpy() for k, v in hf.state_dict().items()}, tmp_path / "tiny.gguf")
    ours = checkpoint.load_gguf(path)
    tokens = np.random.default_rng(3).integers(0, 97, (2, 21))
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(tokens))), torch_logits(hf, tokens), atol=1e-4, rtol=1e-4)


def test_tokenizer_model_mismatch_is_an_error(tiny_llama_config, random_llama):
    class FakeTokenizer:
        def __len__(self):
            return 98

    model = random_llama(tiny_llama_config(vocab_size=97))
    with pytest.raises(ValueError, match="tokenizer/model mismatch: the tokenizer has 98 tokens"):
        checkpoint.check_tokenizer(model, FakeTokenizer())


def test_blocked_causal_attention_equals_one_shot_softmax():
    from prune_jax.models.llama.modeling import causal_attention

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 37, 2, 3, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 37, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 37, 2, 8)), jnp.float32)
    scores = np.einsum("btkgh,bskh->bkgts", np.asarray(q), np.asarray(k)) / np.sqrt(8)
    scores = np.where(np.tril(np.ones((37, 37), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("bkgts,bskh->btkgh", probs, np.asarray(v))
    # 5: 8 unrolled blocks, the last one partial; 16: 3 blocks; 128 (the default) >= T: one block.
    # Jitted: one compile per block size (eagerly, every slice shape compiles its own ops).
    for block in (5, 16, 128):
        attention = jax.jit(lambda q, k, v, block=block: causal_attention(q, k, v, block=block))
        np.testing.assert_allclose(np.asarray(attention(q, k, v)), expected, atol=1e-5)


def _one_shot_attention(q, k, v):
    """The [B, K, G, T, T] reference: full scores, causal mask, softmax (float32)."""
    length = q.shape[1]
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores, -jnp.inf)
    return jnp.einsum("BKGTS,BSKH->BTKGH", jax.nn.softmax(scores, axis=-1), v)


def _random_qkv(seed: int, batch: int, length: int, kv_heads: int, group: int, head_dim: int):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((batch, length, kv_heads, group, head_dim)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((batch, length, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((batch, length, kv_heads, head_dim)), jnp.float32)
    return q, k, v


def test_scanned_causal_attention_matches_one_shot_values_and_gradients():
    from prune_jax.models.llama.modeling import ATTENTION_GROUPS, causal_attention

    q, k, v = _random_qkv(1, 2, 37, 2, 3, 8)
    # block=4: 10 blocks > ATTENTION_GROUPS, so the grouped-scan path, with T not a multiple
    # of the block (3 padded query rows) and groups of unequal size; block=5: 8 blocks, unrolled.
    assert -(-37 // 4) > ATTENTION_GROUPS >= -(-37 // 5)
    readout = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)

    def values_and_grads(attention):
        """attention(q, k, v) and the gradients of sum(attention(q, k, v) · readout), one compile."""

        def run(q, k, v):
            values, pullback = jax.vjp(attention, q, k, v)
            return values, pullback(readout)

        return jax.jit(run)(q, k, v)

    expected, expected_grads = values_and_grads(_one_shot_attention)
    for block in (4, 5):
        values, grads = values_and_grads(lambda q, k, v, block=block: causal_attention(q, k, v, block=block))
        np.testing.assert_allclose(np.asarray(values), np.asarray(expected), atol=1e-5)
        for got, want in zip(grads, expected_grads):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    # Per-sample gradients (vmap of grad over the batch) through the scanned path.
    scanned = lambda q, k, v: causal_attention(q, k, v, block=4)  # noqa: E731
    per_sample = jax.jit(jax.vmap(jax.grad(lambda q, k, v, r: jnp.sum(scanned(q[None], k[None], v[None]) * r[None])),
                                  in_axes=(0, 0, 0, 0)))(q, k, v, readout)
    np.testing.assert_allclose(np.asarray(per_sample), np.asarray(expected_grads[0]), atol=1e-5)


def test_scanned_attention_gradient_stores_no_square_score_tensor():
    from prune_jax.models.llama.modeling import causal_attention

    def residual_elements(length: int) -> int:
        q = jax.ShapeDtypeStruct((1, length, 1, 2, 4), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, length, 1, 4), jnp.float32)
        # The residuals the pullback keeps, traced as under jit but neither compiled nor run.
        pullback = jax.eval_shape(
            lambda q, k, v: jax.vjp(lambda *a: causal_attention(*a, block=2), q, k, v)[1], q, kv, kv
        )
        return sum(x.size for x in jax.tree.leaves(pullback))

    # Rematerialised scan body: reverse mode keeps O(T) inputs per block, not the stacked
    # [B, K, G, block, S] probabilities (≈ 0.56 of a [B, K, G, T, T] tensor).
    short, long = residual_elements(96), residual_elements(192)
    assert long < 2 * 192 * 192 / 4
    assert long < 2.5 * short


def test_attention_program_size_does_not_grow_with_length():
    from prune_jax.models.llama.modeling import causal_attention

    def lowered_text(length: int) -> str:
        q = jax.ShapeDtypeStruct((1, length, 1, 2, 8), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, length, 1, 8), jnp.float32)
        return jax.jit(causal_attention).lower(q, kv, kv).as_text()

    short, long = lowered_text(2048), lowered_text(8192)  # 16 and 64 query blocks of 128
    assert short.count("dot_general") == long.count("dot_general")
    assert abs(len(long) / len(short) - 1) < 0.05, (len(short), len(long))


def test_sequence_length_is_checked_against_the_context(tiny_llama_config, random_llama):
    from prune_jax.evaluate import forward_logits, perplexity

    config = tiny_llama_config(vocab_size=20, max_position_embeddings=16)
    config.check_sequence_length(16)
    config.check_sequence_length(1, name="--seq-len")
    with pytest.raises(ValueError, match=r"--seq-len=17 exceeds the model's context of 16 tokens"):
        config.check_sequence_length(17, name="--seq-len")
    with pytest.raises(ValueError, match=r"seq_len=0 must be a positive"):
        config.check_sequence_length(0)
    model = random_llama(config)
    with pytest.raises(ValueError, match=r"windows.shape\[1\]=17 exceeds the model's context of 16"):
        perplexity(model, np.zeros((2, 17), np.int32))
    with pytest.raises(ValueError, match=r"tokens.shape\[1\]=17 exceeds"):
        forward_logits(model, np.zeros((1, 17), np.int32))
    assert perplexity(model, np.zeros((2, 16), np.int32)).seq_len == 16
    for bad in (0, -1):  # -1 once ran no batch at all and reported perplexity 1.0
        with pytest.raises(ValueError, match=rf"batch_size must be a positive int or None, got {bad}"):
            perplexity(model, np.zeros((2, 16), np.int32), batch_size=bad)


def test_bf16_checkpoint_loads_tensor_by_tensor_onto_a_mesh(tmp_path: Path, tiny_llama_config, random_llama):
    """A bf16 safetensors directory loads as bf16 (no float32 round trip), each parameter
    placed by the FSDP / tensor-parallel rules, with the values of a one-device load."""
    import ml_dtypes
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P
    from safetensors.numpy import load_file, save_file

    config = tiny_llama_config(vocab_size=40, hidden_size=32, num_layers=2, heads=(4, 2), intermediate=48)
    save_hf(random_llama(config, seed=3), None, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(weights).items()}, weights)
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    sharded = load_hf_dir(tmp_path / "m", dtype="bfloat16", mesh=mesh)
    single = load_hf_dir(tmp_path / "m", dtype="bfloat16")
    layer = sharded.layers[1]
    assert layer.attn.q_kernel[...].dtype == jnp.bfloat16
    assert layer.attn.q_kernel[...].sharding.spec == P("data", "model", None)  # [D, N, H]
    assert layer.attn.o_kernel[...].sharding.spec == P("model", None, "data")  # [N, H, D]
    assert layer.mlp.gate_kernel[...].sharding.spec == P("data", "model")
    assert sharded.embed[...].sharding.spec == P("model", "data")  # 40 tokens over 2, 32 dims over 2
    assert layer.input_norm.weight[...].sharding.spec == P()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 9)))
    a, b = np.asarray(sharded(tokens)), np.asarray(single(tokens))  # bf16 partial sums differ by device split
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()
    for a, b in zip(jax.tree.leaves(nnx.state(sharded)), jax.tree.leaves(nnx.state(single))):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_parse_mesh():
    from prune_jax.models.llama.sharding import parse_mesh

    mesh = parse_mesh("data=2,model=2")
    assert dict(mesh.shape) == {"data": 2, "model": 2}
    assert dict(parse_mesh("data=-1").shape) == {"data": len(jax.devices())}
    for bad in ("data", "data=0", "data=2,data=2", "data=64", "data=-1,model=-1"):
        with pytest.raises(ValueError, match="mesh"):
            parse_mesh(bad)


def test_chunked_nll_equals_the_full_softmax_in_values_and_gradients():
    from prune_jax.models.llama.modeling import chunked_nll

    rng = np.random.default_rng(3)
    hidden = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    head = jnp.asarray(rng.standard_normal((16, 37)), jnp.float32)  # [D, V], V = 37 prime
    targets = jnp.asarray(rng.integers(0, 37, (2, 5)), jnp.int32)

    def full(hidden, head):
        logits = hidden @ head
        return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]

    want, want_grads = full(hidden, head), jax.grad(lambda h, w: full(h, w).sum(), argnums=(0, 1))(hidden, head)
    # 5 and 8: several chunks, the last one overlapping its predecessor (37 = 7·5 + 2 = 4·8 + 5);
    # 37: one chunk exactly; tied: the head passed as the [V, D] embedding.
    for chunk in (5, 8, 37):
        for tied in (False, True):
            weights = head.T if tied else head
            loss = lambda h, w: chunked_nll(h, w, targets, vocab_chunk=chunk, head_is_embedding=tied)  # noqa: E731
            np.testing.assert_allclose(np.asarray(loss(hidden, weights)), np.asarray(want), atol=1e-5)
            got_h, got_w = jax.grad(lambda h, w: loss(h, w).sum(), argnums=(0, 1))(hidden, weights)
            np.testing.assert_allclose(np.asarray(got_h), np.asarray(want_grads[0]), atol=1e-5)
            np.testing.assert_allclose(np.asarray(got_w.T if tied else got_w), np.asarray(want_grads[1]), atol=1e-5)
            nll, argmax = chunked_nll(hidden, weights, targets, vocab_chunk=chunk, head_is_embedding=tied, with_argmax=True)
            np.testing.assert_allclose(np.asarray(nll), np.asarray(want), atol=1e-5)
            np.testing.assert_array_equal(np.asarray(argmax), np.argmax(np.asarray(hidden @ head), axis=-1))


def test_dot_product_attention_gives_the_chunked_logits(tiny_llama_config, random_llama):
    from prune_jax.evaluate import forward_logits
    from prune_jax.models.llama import set_attention

    model = random_llama(tiny_llama_config(num_layers=2, heads=(4, 2), vocab_size=23, max_position_embeddings=64))
    tokens = np.random.default_rng(0).integers(0, 23, (2, 40))
    chunked = forward_logits(model, tokens)
    assert set_attention(model, "dot_product").config.attention == "dot_product"
    assert all(block.attn.implementation == "dot_product" for block in model.layers)
    np.testing.assert_allclose(forward_logits(model, tokens), chunked, atol=1e-5)
    with pytest.raises(ValueError, match="attention must be one of"):
        set_attention(model, "flash")


def test_evaluation_compiles_the_same_programs_whatever_the_depth(tiny_llama_config, random_llama):
    """Blocks run one jitted call each, so a model of 2 and one of 6 equal-width blocks
    compile the same number of programs (one whole-model program would grow with depth)."""
    from prune_jax.evaluate import perplexity

    def compilations(num_layers: int, hidden_size: int) -> int:
        seen = []

        def listen(name, secs, **_):
            if name == "/jax/core/compile/backend_compile_duration":
                seen.append(secs)

        config = tiny_llama_config(num_layers=num_layers, vocab_size=29, hidden_size=hidden_size, max_position_embeddings=32)
        model = random_llama(config)
        windows = np.random.default_rng(num_layers).integers(0, 29, (3, 31))
        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            value = perplexity(model, windows, batch_size=2).perplexity
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
        reference = np.exp(np.mean(np.asarray(jax.jit(lambda t: model.token_nll(t))(jnp.asarray(windows)))))
        np.testing.assert_allclose(value, reference, rtol=1e-5)
        return len(seen)

    compilations(1, hidden_size=16)  # compiles what no width changes (eager scalar ops) once
    # Different widths, so neither run finds the other's programs in the cache: embedding,
    # one block program, loss.
    assert compilations(2, hidden_size=24) == compilations(6, hidden_size=32) <= 4


def test_walk_is_the_forward_block_by_block(tiny_llama_config, random_llama):
    # Llama.walk yields, per block, the stream into its MLP half and its output: the
    # outputs chain into apply_blocks, and the halves compose into the block.
    config = tiny_llama_config(vocab_size=40, hidden_size=32, num_layers=3, heads=(4, 2), intermediate=48)
    model = random_llama(config, seed=0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 6)))
    positions = model.default_positions(tokens)
    x = model.embed_tokens(tokens)
    steps = list(model.walk(x, positions))
    assert [s.index for s in steps] == [0, 1, 2]
    np.testing.assert_array_equal(np.asarray(steps[-1].out), np.asarray(model.apply_blocks(x, positions)))
    inv_freq = model.rope_frequencies()
    block = steps[0].block
    np.testing.assert_array_equal(np.asarray(block.half_residual(0, x, positions, inv_freq)), np.asarray(steps[0].h))
    np.testing.assert_array_equal(np.asarray(block.half_residual(1, steps[0].h, positions, inv_freq)), np.asarray(steps[0].out))
    tail = list(model.walk(steps[0].out, positions, 1))
    assert [s.index for s in tail] == [1, 2]
    np.testing.assert_array_equal(np.asarray(tail[-1].out), np.asarray(steps[-1].out))
