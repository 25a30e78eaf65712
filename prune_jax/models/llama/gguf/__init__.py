"""LLaMA-architecture GGUF files ↔ the HF (transformers) state-dict interchange.

The interchange is ``(transformers.LlamaConfig, {HF parameter name: float32 array})``
in the PyTorch ``LlamaForCausalLM`` layout (Linear weights [out, in]). One module per
concern: ``names`` (GGUF ↔ HF names, expected shapes, the RoPE row permutation below),
``reader``, ``writer``, ``tokenizer``; the public names are re-exported here:

- ``open_gguf(path)``: metadata → ``LlamaConfig``, and the tensors as a lazy mapping
  (``GGUFTensors``): each dequantised to float32 with ``gguf.quants.dequantize``, renamed
  and q/k un-permuted (below) only when read, so the model loader holds one at a time.
  Every problem (unexpected names, missing tensors, shape mismatches, unsupported
  metadata) is reported together in one ``ValueError`` before any tensor is read.
- ``read_gguf(path)``: the same, every tensor read into a dict.
- ``write_gguf(config, state_dict, path)``: the inverse, F32 or F16, for tests and
  export (q/k permuted the way llama.cpp's converter does it).
- ``load_gguf_tokenizer(path)``: the transformers tokenizer a GGUF file describes.

Layouts. GGUF lists a tensor's dimensions fastest-moving first (ggml's ``ne``), so a
Linear weight of HF shape [out, in] is listed as ``[in, out]`` in ``tensor.shape``;
``dequantize`` returns the row-major array [out, in], i.e. ``reversed(tensor.shape)``.

RoPE permutation. transformers applies RoPE in the "rotate-half" convention: within a
head of size d, component j is rotated together with component j + d/2. ggml's LLaMA
RoPE rotates adjacent pairs (2j, 2j + 1). llama.cpp's ``convert_hf_to_gguf.py``
therefore reorders the rows of q_proj / k_proj (and their biases) head by head. With
the HF row index written as r = h·d + s·(d/2) + j (head h, half s ∈ {0, 1},
frequency j ∈ [0, d/2)), its ``permute(W, n_head)`` stores that row at
r' = h·d + 2j + s:

    permute(W, n)[h·d + 2j + s] = W[h·d + s·(d/2) + j]
    permute(W, n) = W.reshape(n, 2, d/2, C).swapaxes(1, 2).reshape(n·d, C)

The inverse reads it back:

    W[h·d + s·(d/2) + j] = W_gguf[h·d + 2j + s]
    W = W_gguf.reshape(n, d/2, 2, C).swapaxes(1, 2).reshape(n·d, C)

with n = num_attention_heads for q and n = num_key_value_heads for k (C = 1 for
biases). The same reordering of q and k within every head leaves each head's qᵀk
unchanged, so both files compute the same function; v and o are not permuted.
"""

from prune_jax.models.llama.gguf.names import (
    BLOCK_TENSOR_NAMES,
    GGUF_ARCHITECTURE,
    GLOBAL_TENSOR_NAMES,
    ROPE_FREQS_TENSOR,
    TensorType,
    gguf_to_hf_name,
    hf_llama_shapes,
    hf_to_gguf_name,
    interleaved_to_rotate_half,
    rotate_half_to_interleaved,
)
from prune_jax.models.llama.gguf.reader import GGUFTensors, open_gguf, read_gguf
from prune_jax.models.llama.gguf.tokenizer import load_gguf_tokenizer
from prune_jax.models.llama.gguf.writer import write_gguf

__all__ = [
    "BLOCK_TENSOR_NAMES",
    "GGUFTensors",
    "GGUF_ARCHITECTURE",
    "GLOBAL_TENSOR_NAMES",
    "ROPE_FREQS_TENSOR",
    "TensorType",
    "gguf_to_hf_name",
    "hf_llama_shapes",
    "hf_to_gguf_name",
    "interleaved_to_rotate_half",
    "load_gguf_tokenizer",
    "open_gguf",
    "read_gguf",
    "rotate_half_to_interleaved",
    "write_gguf",
]
