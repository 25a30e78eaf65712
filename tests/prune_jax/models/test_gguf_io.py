"""GGUF ↔ HF state-dict interchange: round trips, the llama.cpp q/k permutation, the
real embedded SmolLM2 file, and error reporting."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import transformers

from prune_jax.models.llama.gguf import (
    hf_llama_shapes,
    hf_to_gguf_name,
    interleaved_to_rotate_half,
    load_gguf_tokenizer,
    read_gguf,
    rotate_half_to_interleaved,
    write_gguf,
)


def tiny_config(
    *,
    num_key_value_heads: int = 2,
    head_dim: int | None = None,
    tie_word_embeddings: bool = False,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    rope_parameters: dict | None = None,
    vocab_size: int = 64,
    num_hidden_layers: int = 2,
) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=1,
        eos_token_id=2,
    )


def random_state_dict(config: transformers.LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """numpy random weights in the HF layout (for tests that need no torch)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in hf_llama_shapes(config).items()}


def torch_state_dict(config: transformers.LlamaConfig, seed: int = 0):
    """(LlamaForCausalLM with random weights, its state_dict as numpy); for tests marked needs_torch."""
    import torch

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random biases / norm scales, so a wrong mapping cannot hide behind zeros and ones
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.normal_()
    return model, {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, transcribed independently."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_raw_gguf(
    path: Path,
    config: transformers.LlamaConfig,
    tensors: dict[str, np.ndarray],
    *,
    arch: str = "llama",
    extra=None,
    quantize=(),
) -> Path:
    """A GGUF written straight with gguf.GGUFWriter (no checks, no permutation)."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    if extra:
        extra(writer)
    for name, value in tensors.items():
        if name in quantize:
            packed = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_named(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {hf_to_gguf_name(name): value for name, value in state_dict.items() if hf_to_gguf_name(name)}


# ---------------------------------------------------------------------------
# The permutation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_heads,head_dim,cols", [(4, 8, 5), (3, 64, 2), (1, 16, None), (9, 4, 3)])
def test_permutation_is_llama_cpps_and_inverts(num_heads, head_dim, cols):
    rng = np.random.default_rng(1)
    shape = (num_heads * head_dim,) if cols is None else (num_heads * head_dim, cols)
    w = rng.standard_normal(shape).astype(np.float32)
    stored = rotate_half_to_interleaved(w, num_heads)
    np.testing.assert_array_equal(stored, llama_cpp_permute(w, num_heads))
    np.testing.assert_array_equal(interleaved_to_rotate_half(stored, num_heads), w)
    np.testing.assert_array_equal(rotate_half_to_interleaved(interleaved_to_rotate_half(w, num_heads), num_heads), w)
    # Element by element: HF row h·d + s·d/2 + j is stored at row h·d + 2j + s.
    half = head_dim // 2
    for h in range(num_heads):
        for s in range(2):
            for j in range(half):
                np.testing.assert_array_equal(stored[h * head_dim + 2 * j + s], w[h * head_dim + s * half + j])
    if head_dim > 4:  # for d ≤ 4 the permutation is its own inverse
        assert not np.array_equal(interleaved_to_rotate_half(w, num_heads), stored)


def test_permutation_maps_rotate_half_rope_onto_interleaved_rope():
    """qᵀk after HF's rotate-half RoPE equals qᵀk after ggml's adjacent-pair RoPE on permuted rows."""
    rng = np.random.default_rng(2)
    num_heads, head_dim, hidden, theta = 3, 16, 12, 10000.0
    wq = rng.standard_normal((num_heads * head_dim, hidden))
    wk = rng.standard_normal((num_heads * head_dim, hidden))
    x_m, x_n = rng.standard_normal(hidden), rng.standard_normal(hidden)
    m, n = 5, 11
    freqs = theta ** (-np.arange(0, head_dim, 2) / head_dim)  # [d/2]

    def rope_rotate_half(v, pos):  # v [d]: pairs (j, j + d/2)
        cos, sin = np.cos(pos * freqs), np.sin(pos * freqs)
        a, b = v[: head_dim // 2], v[head_dim // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin])

    def rope_interleaved(v, pos):  # v [d]: pairs (2j, 2j + 1)
        cos, sin = np.cos(pos * freqs), np.sin(pos * freqs)
        a, b = v[0::2], v[1::2]
        out = np.empty_like(v)
        out[0::2], out[1::2] = a * cos - b * sin, b * cos + a * sin
        return out

    def scores(wq, wk, rope):
        q, k = (wq @ x_m).reshape(num_heads, head_dim), (wk @ x_n).reshape(num_heads, head_dim)
        return np.array([rope(q[h], m) @ rope(k[h], n) for h in range(num_heads)])

    hf_scores = scores(wq, wk, rope_rotate_half)
    gguf_scores = scores(
        rotate_half_to_interleaved(wq, num_heads), rotate_half_to_interleaved(wk, num_heads), rope_interleaved
    )
    np.testing.assert_allclose(gguf_scores, hf_scores, rtol=1e-10, atol=1e-10)
    wrong = scores(  # the inverse applied by mistake
        interleaved_to_rotate_half(wq, num_heads), interleaved_to_rotate_half(wk, num_heads), rope_interleaved
    )
    assert not np.allclose(wrong, hf_scores)


def test_permutation_rejects_rows_not_splitting_into_heads():
    with pytest.raises(ValueError, match="num_heads=3"):
        rotate_half_to_interleaved(np.zeros((16, 2)), 3)


# ---------------------------------------------------------------------------
# Round trips.
# ---------------------------------------------------------------------------

ROUND_TRIP_CASES = {
    "gqa2-untied": dict(num_key_value_heads=2),
    "mqa-headdim16-tied-bias-linear": dict(
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
        attention_bias=True,
        rope_parameters={"rope_type": "linear", "factor": 2.5, "rope_theta": 5e5},
    ),
    "mha-headdim16-untied-mlpbias": dict(num_key_value_heads=4, head_dim=16, mlp_bias=True),
    "mha-tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
}


@pytest.mark.needs_torch
@pytest.mark.parametrize("case", list(ROUND_TRIP_CASES))
def test_write_then_read_is_exact(tmp_path, case):
    config = tiny_config(**ROUND_TRIP_CASES[case])
    _, state_dict = torch_state_dict(config)
    path = write_gguf(config, state_dict, tmp_path / "model.gguf")
    read_config, read_state = read_gguf(path)

    for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
        "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "hidden_act",
    ):  # fmt: skip
        assert getattr(read_config, key) == getattr(config, key), key
    assert read_config.rope_parameters == config.rope_parameters

    expected = {k: v for k, v in state_dict.items() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    assert list(read_state) == list(hf_llama_shapes(config))
    assert set(read_state) == set(expected)
    for name, value in expected.items():
        assert read_state[name].dtype == np.float32
        np.testing.assert_array_equal(read_state[name], value, err_msg=name)

    # On disk, q/k are in llama.cpp's convention and everything else is untouched.
    reader = gguf.GGUFReader(path)
    stored = {t.name: np.asarray(t.data).reshape(tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for name, value in expected.items():
        module = name.split(".")[-2]
        want = llama_cpp_permute(value, heads[module]) if module in heads else value
        np.testing.assert_array_equal(stored[hf_to_gguf_name(name)], want, err_msg=name)


@pytest.mark.needs_torch
def test_write_accepts_torch_tensors(tmp_path):
    import torch

    config = tiny_config(tie_word_embeddings=True)
    model, state_dict = torch_state_dict(config)
    _, from_torch = read_gguf(write_gguf(config, model.state_dict(), tmp_path / "fp32.gguf"))
    for name, value in from_torch.items():
        np.testing.assert_array_equal(value, state_dict[name], err_msg=name)
    bf16 = {name: value.to(torch.bfloat16) for name, value in model.state_dict().items()}
    _, from_bf16 = read_gguf(write_gguf(config, bf16, tmp_path / "bf16.gguf"))
    for name, value in from_bf16.items():
        np.testing.assert_array_equal(value, bf16[name].float().numpy(), err_msg=name)


def test_f16_write_rounds_matrices_only(tmp_path):
    config = tiny_config()
    state_dict = random_state_dict(config)
    path = write_gguf(config, state_dict, tmp_path / "model.f16.gguf", tensor_type="F16")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    _, read_state = read_gguf(path)
    for name, value in state_dict.items():
        assert read_state[name].dtype == np.float32
        if value.ndim == 1:
            np.testing.assert_array_equal(read_state[name], value)
        else:
            np.testing.assert_array_equal(read_state[name], value.astype(np.float16).astype(np.float32))


def test_quantized_tensors_come_back_in_out_in_layout(tmp_path):
    """Q8_0 blocks run along the input dimension; dequantised arrays must be [out, in]."""
    config = tiny_config(num_hidden_layers=1)
    state_dict = random_state_dict(config)
    tensors = gguf_named(state_dict)
    quantized = {"token_embd.weight", "blk.0.ffn_gate.weight", "blk.0.attn_v.weight"}  # [64, 32] [48, 32] [16, 32]
    _, read_state = read_gguf(write_raw_gguf(tmp_path / "q8.gguf", config, tensors, quantize=quantized))
    for gguf_name, hf_name in (
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight"),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
    ):
        value = state_dict[hf_name]
        assert read_state[hf_name].shape == value.shape
        # Q8_0: one scale per 32 inputs, 8-bit codes → error ≤ max|block| / 127 (plus f16 scale rounding).
        bound = np.abs(value).max() / 127 * 1.01
        assert np.abs(read_state[hf_name] - value).max() <= bound, gguf_name


@pytest.mark.needs_torch
def test_transformers_gguf_loader_agrees(tmp_path):
    """transformers' own GGUF loading (needs accelerate) sees the same weights and logits."""
    import torch

    pytest.importorskip("accelerate", reason="transformers' GGUF loading requires accelerate")
    for kv_heads, head_dim, tied in ((2, None, False), (1, 16, True), (4, 16, False)):
        # transformers' GGUF config mapping reads neither attention_bias nor rope scaling,
        # so the reference case sticks to what it can represent.
        config = tiny_config(num_key_value_heads=kv_heads, head_dim=head_dim, tie_word_embeddings=tied)
        model, state_dict = torch_state_dict(config, seed=kv_heads)
        folder = tmp_path / f"kv{kv_heads}"
        write_gguf(config, state_dict, folder / "model.gguf")
        reference = transformers.LlamaForCausalLM.from_pretrained(
            str(folder), gguf_file="model.gguf", dtype=torch.float32
        )
        assert reference.config.head_dim == config.head_dim
        assert reference.config.num_key_value_heads == kv_heads
        assert reference.config.tie_word_embeddings == tied
        reference_state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
        assert set(reference_state) == set(state_dict)
        for name, value in state_dict.items():
            np.testing.assert_array_equal(reference_state[name], value, err_msg=name)
        tokens = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            np.testing.assert_allclose(reference(tokens).logits.numpy(), model(tokens).logits.numpy(), atol=1e-5)


def test_tokenizer_metadata_round_trip(tmp_path, bpe_tokenizer):
    corpus = ["the quick brown fox jumps over the lazy dog"] * 20 + ["hello world, hello"]
    tokenizer = bpe_tokenizer(corpus, 300, byte_level=True, special_tokens=["<|endoftext|>"],
                              bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = tiny_config(vocab_size=320, num_hidden_layers=1)
    config.bos_token_id = config.eos_token_id = eot
    path = write_gguf(config, random_state_dict(config), tmp_path / "tok.gguf", tokenizer=tokenizer)

    loaded = load_gguf_tokenizer(path)
    text = "the lazy fox says hello, world!<|endoftext|> Ünïcode ✓"
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.decode(loaded(text).input_ids) == text
    assert loaded.eos_token == "<|endoftext|>" and len(loaded) == config.vocab_size  # padded like llama.cpp


# ---------------------------------------------------------------------------
# The real embedded model.
# ---------------------------------------------------------------------------


def test_reads_embedded_smollm2(smollm2_gguf: Path):
    config, state_dict = read_gguf(smollm2_gguf)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert config.vocab_size == 49152 and config.tie_word_embeddings
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1e5}
    assert config.rms_norm_eps == 1e-5 and (config.bos_token_id, config.eos_token_id) == (1, 2)
    assert not config.attention_bias and not config.mlp_bias
    expected = hf_llama_shapes(config)
    assert "lm_head.weight" not in expected and list(state_dict) == list(expected)
    assert {name: value.shape for name, value in state_dict.items()} == expected
    assert state_dict["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert state_dict["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert all(value.dtype == np.float32 and np.isfinite(value).all() for value in state_dict.values())


@pytest.mark.needs_torch  # transformers' GGUF reader needs torch
def test_embedded_tokenizer_equals_transformers_gguf_tokenizer(smollm2_gguf: Path):
    """Our torch-free tokenizer from GGUF metadata == transformers' own GGUF tokenizer."""
    from prune_jax.data import load_documents

    path = smollm2_gguf
    ours = load_gguf_tokenizer(path)
    reference = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = ["<|im_start|>user\nWhat is 12 345 + 6?<|im_end|>\n", "  two  spaces\t\ttabs\n\n\nend", "ünïcödé 日本語 🙂 naïve",
             "don't won't it's 1999-2016 (ca. 3.5 km²)"]
    texts += [doc.text[:3000] for doc in load_documents("wiki-sample")[:8]]  # `make test` fetches the sample first
    for text in texts:
        ids = ours(text).input_ids
        assert ids == reference(text).input_ids, text
        assert ours.decode(ids) == reference.decode(ids)
    assert len(ours) == len(reference) == 49152
    assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token, ours.pad_token) == (
        reference.bos_token_id, reference.eos_token_id, reference.unk_token, reference.pad_token)
    assert sorted(ours.all_special_tokens) == sorted(reference.all_special_tokens)


def test_tokenizer_builds_without_torch(tmp_path, bpe_tokenizer):
    """The default model's tokenizer must load on a machine without torch (make demo)."""
    import subprocess
    import sys

    config = tiny_config(vocab_size=320, num_hidden_layers=1)
    tokenizer = bpe_tokenizer(["a tiny corpus for a tiny tokenizer"] * 5, 300, byte_level=True,
                              special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    path = write_gguf(config, random_state_dict(config), tmp_path / "tok.gguf", tokenizer=tokenizer)
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from prune_jax.models.llama.gguf import load_gguf_tokenizer\n"
        f"tok = load_gguf_tokenizer({str(path)!r})\n"
        "print(tok('a tiny corpus').input_ids)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tokenizer("a tiny corpus").input_ids)


def test_non_bpe_gguf_tokenizer_is_a_clear_error(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    path = write_raw_gguf(tmp_path / "spm.gguf", config, gguf_named(random_state_dict(config)),
                          extra=lambda writer: (writer.add_tokenizer_model("llama"), writer.add_token_list(["<s>"] * 64)))
    with pytest.raises(ValueError, match=r"spm\.gguf: tokenizer\.ggml\.model = 'llama'"):
        load_gguf_tokenizer(path)


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf does not exist"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="not a file"):
        read_gguf(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_gguf_tokenizer(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"not a gguf file at all", b"GGUF\x03\x00\x00\x00\x05"])
def test_non_gguf_file(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.gguf is not a readable GGUF file"):
        read_gguf(path)


def test_truncated_tensor_data(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    path = write_gguf(config, random_state_dict(config), tmp_path / "model.gguf")
    path.write_bytes(path.read_bytes()[:-4000])
    with pytest.raises(ValueError, match=r"model\.gguf"):
        read_gguf(path)


def test_wrong_architecture(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    tensors = {"token_embd.weight": np.zeros((64, 32), np.float32)}
    path = write_raw_gguf(tmp_path / "gpt2.gguf", config, tensors, arch="gpt2")
    with pytest.raises(ValueError, match=r"gpt2\.gguf: unsupported architecture 'gpt2'.*only 'llama'"):
        read_gguf(path)


def test_every_tensor_problem_reported_at_once(tmp_path):
    config = tiny_config()
    tensors = gguf_named(random_state_dict(config))
    del tensors["blk.1.ffn_up.weight"]
    del tensors["blk.1.attn_norm.weight"]
    tensors["blk.0.attn_k.weight"] = np.zeros((8, 32), np.float32)  # [16, 32] expected
    tensors["blk.0.mystery.weight"] = np.zeros(3, np.float32)
    tensors["blk.2.attn_q.weight"] = np.zeros((32, 32), np.float32)  # layer beyond block_count
    path = write_raw_gguf(tmp_path / "broken.gguf", config, tensors)
    with pytest.raises(ValueError) as info:
        read_gguf(path)
    message = str(info.value)
    assert "broken.gguf" in message and "(4 problem(s))" in message, message  # the missing ones share a line
    assert "blk.0.mystery.weight" in message
    assert "blk.2.attn_q.weight" in message and "2-layer model" in message
    assert "missing 2 tensor(s)" in message and "blk.1.ffn_up.weight" in message and "blk.1.attn_norm.weight" in message
    assert "blk.0.attn_k.weight (model.layers.0.self_attn.k_proj.weight): shape (8, 32), expected (16, 32)" in message


def test_metadata_problems_reported(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    tensors = gguf_named(random_state_dict(config))

    def extra(writer):
        writer.add_string("llama.rope.scaling.type", "yarn")
        writer.add_uint32("llama.rope.dimension_count", 4)

    with pytest.raises(ValueError) as info:
        read_gguf(write_raw_gguf(tmp_path / "meta.gguf", config, tensors, extra=extra))
    message = str(info.value)
    assert "'yarn' is not supported" in message and "partial rotary" in message, message

    writer_missing_keys = gguf.GGUFWriter(tmp_path / "bare.gguf", "llama")
    writer_missing_keys.add_tensor("token_embd.weight", np.zeros((64, 32), np.float32))
    writer_missing_keys.write_header_to_file()
    writer_missing_keys.write_kv_data_to_file()
    writer_missing_keys.write_tensors_to_file()
    writer_missing_keys.close()
    with pytest.raises(ValueError, match="missing metadata: llama.block_count"):
        read_gguf(tmp_path / "bare.gguf")


def test_rope_freqs_is_skipped_with_a_warning(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    state_dict = random_state_dict(config)
    tensors = gguf_named(state_dict) | {"rope_freqs.weight": np.ones(4, np.float32)}
    with pytest.warns(UserWarning, match="rope_freqs.weight"):
        _, read_state = read_gguf(write_raw_gguf(tmp_path / "llama3.gguf", config, tensors))
    assert set(read_state) == set(state_dict)


def test_write_reports_every_state_dict_problem(tmp_path):
    config = tiny_config()
    state_dict = random_state_dict(config)
    del state_dict["model.norm.weight"]
    state_dict["model.layers.0.mlp.up_proj.weight"] = np.zeros((48, 31), np.float32)
    state_dict["model.extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(ValueError) as info:
        write_gguf(config, state_dict, tmp_path / "out.gguf")
    message = str(info.value)
    assert "(3 problem(s))" in message, message
    assert "'model.extra.weight'" in message and "'model.norm.weight'" in message and "(48, 31)" in message
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_write_rejects_unsupported_settings(tmp_path):
    config = tiny_config(tie_word_embeddings=True)
    state_dict = random_state_dict(config) | {"lm_head.weight": np.zeros((64, 32), np.float32)}
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
        write_gguf(config, state_dict, tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="tensor_type='Q4_0'; valid: 'F32', 'F16'"):
        write_gguf(config, random_state_dict(config), tmp_path / "a.gguf", tensor_type="Q4_0")
    llama3 = tiny_config(
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
        }
    )  # fmt: skip
    with pytest.raises(ValueError, match="rope_type='llama3' cannot be written"):
        write_gguf(llama3, random_state_dict(llama3), tmp_path / "a.gguf")


def test_tokenizer_error_without_metadata(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    path = write_gguf(config, random_state_dict(config), tmp_path / "model.gguf")
    with pytest.raises(ValueError, match=r"model\.gguf: no tokenizer metadata"):
        load_gguf_tokenizer(path)


def test_gguf_tensors_are_read_one_at_a_time_and_load_like_the_dict(tmp_path, monkeypatch):
    """``open_gguf`` dequantises nothing up front; the model loader reads each tensor once,
    in order, and builds the same model as the all-at-once dict."""
    import gguf.quants

    from prune_jax.models.llama import load_model
    from prune_jax.models.llama.gguf import open_gguf
    from prune_jax.models.llama.params import state_dict_from_model

    config = tiny_config()
    path = write_gguf(config, random_state_dict(config), tmp_path / "model.gguf", tensor_type="F16")
    _, eager = read_gguf(path)
    reads = []
    real = gguf.quants.dequantize
    monkeypatch.setattr(gguf.quants, "dequantize", lambda data, kind: reads.append(kind) or real(data, kind))
    _, lazy = open_gguf(path)
    assert reads == [] and list(lazy) == list(eager)
    model, _ = load_model(path, tokenizer=False)
    assert len(reads) == len(eager)  # each tensor dequantised once
    loaded = state_dict_from_model(model)
    for name, value in eager.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
