"""GGUF ↔ HF naming, shapes and the q/k RoPE row permutation (see the package docstring)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np

if TYPE_CHECKING:
    import transformers

GGUF_ARCHITECTURE = "llama"

# GGUF per-block tensor stem → HF module path inside ``model.layers.{i}``.
BLOCK_TENSOR_NAMES: dict[str, str] = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# GGUF model-level tensor stem → HF module path.
GLOBAL_TENSOR_NAMES: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# llama3-style RoPE frequency factors; HF expresses them as rope_parameters, which
# cannot be recovered uniquely from the factors, so the tensor is skipped (warned).
ROPE_FREQS_TENSOR = "rope_freqs.weight"

_BLOCK_GGUF_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_BLOCK_HF_NAME = re.compile(r"model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)")
_GGUF_STEM_OF_HF = {hf: stem for stem, hf in BLOCK_TENSOR_NAMES.items()}
_GGUF_GLOBAL_OF_HF = {hf: stem for stem, hf in GLOBAL_TENSOR_NAMES.items()}

TensorType = Literal["F32", "F16"]


# ---------------------------------------------------------------------------
# The RoPE row permutation.
# ---------------------------------------------------------------------------


def _check_rope_rows(weight: np.ndarray, num_heads: int) -> None:
    rows = weight.shape[0]
    if num_heads < 1 or rows % (2 * num_heads):
        raise ValueError(
            f"cannot split {rows} rows into num_heads={num_heads} heads of even size; "
            "rows must be a multiple of 2·num_heads"
        )


def rotate_half_to_interleaved(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's ``permute``: HF rotate-half rows → ggml interleaved-RoPE rows.

    ``out[h·d + 2j + s] = weight[h·d + s·(d/2) + j]`` for head h, half s ∈ {0, 1} and
    frequency j < d/2, i.e. ``weight.reshape(n, 2, d/2, ...).swapaxes(1, 2)``.

    Args:
      weight: [num_heads·d, ...] rows of a q/k projection weight or bias.
      num_heads: heads the rows split into (query heads for q, KV heads for k).

    Returns:
      An array of the same shape with the rows reordered.
    """
    _check_rope_rows(weight, num_heads)
    rows, rest = weight.shape[0], weight.shape[1:]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def interleaved_to_rotate_half(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of ``rotate_half_to_interleaved``: GGUF q/k rows → HF rotate-half rows.

    ``out[h·d + s·(d/2) + j] = weight[h·d + 2j + s]``, i.e.
    ``weight.reshape(n, d/2, 2, ...).swapaxes(1, 2)``.

    Args:
      weight: [num_heads·d, ...] rows as stored in a GGUF file.
      num_heads: heads the rows split into (query heads for q, KV heads for k).

    Returns:
      An array of the same shape with the rows reordered.
    """
    _check_rope_rows(weight, num_heads)
    rows, rest = weight.shape[0], weight.shape[1:]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


# ---------------------------------------------------------------------------
# Names and shapes.
# ---------------------------------------------------------------------------


def gguf_to_hf_name(gguf_name: str) -> str | None:
    """HF parameter name of a GGUF tensor name, or None when it is not a LLaMA tensor.

    ``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight``;
    ``token_embd.weight`` → ``model.embed_tokens.weight``; ``output.weight`` →
    ``lm_head.weight``.
    """
    match = _BLOCK_GGUF_NAME.fullmatch(gguf_name)
    if match:
        layer, stem, kind = match.groups()
        module = BLOCK_TENSOR_NAMES.get(stem)
        return None if module is None else f"model.layers.{int(layer)}.{module}.{kind}"
    stem, _, kind = gguf_name.rpartition(".")
    if kind in ("weight", "bias") and stem in GLOBAL_TENSOR_NAMES:
        return f"{GLOBAL_TENSOR_NAMES[stem]}.{kind}"
    return None


def hf_to_gguf_name(hf_name: str) -> str | None:
    """GGUF tensor name of an HF parameter name (inverse of ``gguf_to_hf_name``)."""
    match = _BLOCK_HF_NAME.fullmatch(hf_name)
    if match:
        layer, module, kind = match.groups()
        stem = _GGUF_STEM_OF_HF.get(module)
        return None if stem is None else f"blk.{int(layer)}.{stem}.{kind}"
    module, _, kind = hf_name.rpartition(".")
    if kind in ("weight", "bias") and module in _GGUF_GLOBAL_OF_HF:
        return f"{_GGUF_GLOBAL_OF_HF[module]}.{kind}"
    return None


def hf_llama_shapes(config: "transformers.LlamaConfig") -> dict[str, tuple[int, ...]]:
    """{HF parameter name: shape} of ``LlamaForCausalLM(config)``, in model order.

    ``lm_head.weight`` is absent when ``config.tie_word_embeddings`` (the interchange
    keeps one copy of a tied matrix).
    """
    hidden, ffn = config.hidden_size, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    q_rows, kv_rows = heads * head_dim, kv_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, hidden)}
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}"
        shapes[f"{prefix}.self_attn.q_proj.weight"] = (q_rows, hidden)
        shapes[f"{prefix}.self_attn.k_proj.weight"] = (kv_rows, hidden)
        shapes[f"{prefix}.self_attn.v_proj.weight"] = (kv_rows, hidden)
        shapes[f"{prefix}.self_attn.o_proj.weight"] = (hidden, q_rows)
        if getattr(config, "attention_bias", False):
            shapes[f"{prefix}.self_attn.q_proj.bias"] = (q_rows,)
            shapes[f"{prefix}.self_attn.k_proj.bias"] = (kv_rows,)
            shapes[f"{prefix}.self_attn.v_proj.bias"] = (kv_rows,)
            shapes[f"{prefix}.self_attn.o_proj.bias"] = (hidden,)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (ffn, hidden)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (ffn, hidden)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (hidden, ffn)
        if getattr(config, "mlp_bias", False):
            shapes[f"{prefix}.mlp.gate_proj.bias"] = (ffn,)
            shapes[f"{prefix}.mlp.up_proj.bias"] = (ffn,)
            shapes[f"{prefix}.mlp.down_proj.bias"] = (hidden,)
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, hidden)
    return shapes


def _rope_heads(hf_name: str, config: "transformers.LlamaConfig") -> int | None:
    """Heads to (un)permute a q/k tensor by, or None for every other tensor."""
    if ".self_attn.q_proj." in hf_name:
        return config.num_attention_heads
    if ".self_attn.k_proj." in hf_name:
        return config.num_key_value_heads or config.num_attention_heads
    return None


def _shape_problems(
    shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], describe: Any
) -> list[str]:
    """Missing names and shape mismatches of ``shapes`` against ``expected``."""
    problems = []
    missing = [name for name in expected if name not in shapes]
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(describe(n) for n in missing)}")
    for name, shape in shapes.items():
        if name in expected and tuple(shape) != tuple(expected[name]):
            problems.append(f"{describe(name)}: shape {tuple(shape)}, expected {tuple(expected[name])}")
    return problems


def _raise_problems(path: Path, what: str, problems: list[str]) -> None:
    if problems:
        listing = "\n  - ".join(problems)
        raise ValueError(f"{path}: {what} ({len(problems)} problem(s)):\n  - {listing}")
