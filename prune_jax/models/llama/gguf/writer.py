"""Writing a LLaMA GGUF file (F32 or F16) from the HF interchange, with tokenizer metadata."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from prune_jax.models.llama.gguf.names import (
    GGUF_ARCHITECTURE,
    TensorType,
    _raise_problems,
    _rope_heads,
    _shape_problems,
    hf_llama_shapes,
    hf_to_gguf_name,
    rotate_half_to_interleaved,
)

if TYPE_CHECKING:
    import transformers


def _rope_parameters(config: "transformers.LlamaConfig") -> dict[str, Any]:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if not rope:  # transformers < 5: rope_theta + rope_scaling
        rope = dict(getattr(config, "rope_scaling", None) or {})
        rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
        if "type" in rope:
            rope.setdefault("rope_type", rope.pop("type"))
    rope.setdefault("rope_type", "default")
    return rope


def _add_tokenizer_metadata(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """gpt2-style (byte-level BPE) tokenizer metadata from a transformers tokenizer."""
    import json

    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise ValueError(
            f"tokenizer={type(tokenizer).__name__}: only byte-level BPE tokenizers (a transformers fast tokenizer "
            f"whose backend model is BPE) can be written as gpt2-style GGUF metadata; got model type "
            f"{model.get('type')!r}"
        )
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ValueError(
            f"tokenizer has {len(vocab)} tokens (largest id {max(vocab.values())}) but config.vocab_size={vocab_size}"
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # llama.cpp's filler for unused embedding rows
    types = [gguf.TokenType.UNUSED] * vocab_size
    special_ids = set(tokenizer.all_special_ids)
    added = {token.content for token in tokenizer.added_tokens_decoder.values()}
    for token, index in vocab.items():
        tokens[index] = token
        if index in special_ids:
            types[index] = gguf.TokenType.CONTROL
        elif token in added:
            types[index] = gguf.TokenType.USER_DEFINED
        else:
            types[index] = gguf.TokenType.NORMAL
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attribute, add in (
        ("unk_token_id", writer.add_unk_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        if getattr(tokenizer, attribute, None) is not None:
            add(int(getattr(tokenizer, attribute)))


def write_gguf(
    config: "transformers.LlamaConfig",
    state_dict: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    tensor_type: TensorType = "F32",
) -> Path:
    """Writes an HF LLaMA state dict as a llama.cpp-style GGUF file, atomically.

    Metadata: the ``llama.*`` hyperparameters (``key_length``/``value_length`` and
    ``rope.dimension_count`` = head_dim; linear RoPE scaling when the config has it),
    bos/eos ids. q_proj / k_proj weights and biases are permuted to ggml's interleaved
    RoPE rows exactly as llama.cpp's converter does (package docstring). Matrices are
    stored as ``tensor_type``; 1-D tensors (norms, biases) as F32, as llama.cpp does.

    Args:
      config: a ``transformers.LlamaConfig`` (silu MLP; RoPE "default" or "linear").
      state_dict: {HF name: array or CPU tensor} in ``LlamaForCausalLM`` layout. With
        tied embeddings, ``lm_head.weight`` may be present (``LlamaForCausalLM.state_dict()``
        lists it) but must equal ``model.embed_tokens.weight``; it is not written.
      path: destination ``.gguf`` file, replaced if it exists.
      tokenizer: optional transformers fast tokenizer with a byte-level BPE model
        (e.g. GPT-2 style); written as ``tokenizer.ggml.model = "gpt2"`` metadata so
        ``load_gguf_tokenizer`` / llama.cpp can rebuild it. The pre-tokenizer is
        recorded as "gpt-2" (GPT-2's split regex), whatever the tokenizer used.
      tensor_type: "F32" (exact) or "F16".

    Returns:
      The written path.

    Raises:
      ValueError: unsupported config, bad ``tensor_type`` or tokenizer, or the list of
        every missing / unexpected / wrongly shaped tensor.
    """
    import gguf

    path = Path(path)
    if tensor_type not in ("F32", "F16"):
        raise ValueError(f"tensor_type={tensor_type!r}; valid: 'F32', 'F16'")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"config.hidden_act={config.hidden_act!r}; llama.cpp's LLaMA uses 'silu'")
    rope = _rope_parameters(config)
    if rope["rope_type"] not in ("default", "linear"):
        raise ValueError(f"config rope_type={rope['rope_type']!r} cannot be written; valid: 'default', 'linear'")

    expected = hf_llama_shapes(config)
    arrays: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for name, value in state_dict.items():
        if name not in expected and not (name == "lm_head.weight" and config.tie_word_embeddings):
            problems.append(f"unexpected tensor {name!r}")
            continue
        if hasattr(value, "detach"):  # a torch tensor, possibly bf16 (which NumPy lacks)
            value = value.detach().cpu().float().numpy()
        arrays[name] = np.asarray(value, dtype=np.float32)
    problems.extend(_shape_problems({n: a.shape for n, a in arrays.items()}, expected, repr))
    tied_head = arrays.pop("lm_head.weight", None) if config.tie_word_embeddings else None
    embedding = arrays.get("model.embed_tokens.weight")
    if tied_head is not None and embedding is not None and not np.array_equal(tied_head, embedding):
        problems.append("config.tie_word_embeddings=True but lm_head.weight differs from model.embed_tokens.weight")
    _raise_problems(path, "cannot write this state dict as a LLaMA GGUF", problems)

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    path.parent.mkdir(parents=True, exist_ok=True)
    # A sibling temporary name (not mkstemp, whose 0600 mode would stick to the result).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        writer = gguf.GGUFWriter(tmp, GGUF_ARCHITECTURE)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if tensor_type == "F32" else gguf.LlamaFileType.MOSTLY_F16)
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        if tokenizer is not None:
            _add_tokenizer_metadata(writer, tokenizer, config.vocab_size)
        for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id)):
            token_id = getattr(config, key, None)
            if isinstance(token_id, (list, tuple)):  # HF allows several eos ids; GGUF has one
                token_id = token_id[0] if token_id else None
            if token_id is not None:
                add(int(token_id))
        if tokenizer is None and getattr(config, "pad_token_id", None) is not None:
            writer.add_pad_token_id(int(config.pad_token_id))

        for name in expected:
            values = arrays[name]
            heads = _rope_heads(name, config)
            if heads:
                values = rotate_half_to_interleaved(values, heads)
            if values.ndim > 1 and tensor_type == "F16":
                values = values.astype(np.float16)
            writer.add_tensor(hf_to_gguf_name(name), np.ascontiguousarray(values))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
