"""LLaMA-architecture GGUF files ↔ the HF (transformers) state-dict interchange.

The interchange is ``(transformers.LlamaConfig, {HF parameter name: float32 array})``
in the PyTorch ``LlamaForCausalLM`` layout (Linear weights [out, in]). This module:

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

from __future__ import annotations

import os
import re
import uuid
import warnings
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


# ---------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------


def _float32_decimal(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (GGUF stores float32).

    ``1e-5`` comes back from a float32 field as 9.999999747378752e-06; HF configs hold
    the decimal (1e-05), which is what the float32 was made from.
    """
    return float(str(np.float32(value)))


def _open_reader(path: Path) -> Any:
    import gguf

    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"GGUF path {path} is not a file (a directory?); pass the .gguf file itself")
    try:
        return gguf.GGUFReader(path)
    except Exception as err:  # the reader raises ValueError/IndexError/... on bad bytes
        raise ValueError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})") from err


def _metadata(reader: Any) -> dict[str, Any]:
    """{key: value} of every metadata field except the big tokenizer arrays."""
    values = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "token_type", "scores")):
            continue
        values[key] = field.contents()
    return values


def _scalar(meta: Mapping[str, Any], key: str, problems: list[str]) -> Any:
    """A per-model value; ggml allows per-layer arrays for some keys, we need them equal."""
    value = meta.get(key)
    if isinstance(value, list):
        if len(set(value)) != 1:
            problems.append(f"{key} differs across layers ({value}); transformers' LlamaConfig needs one value")
            return None
        value = value[0]
    return value


def _config_from_metadata(
    meta: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]], problems: list[str]
) -> "transformers.LlamaConfig | None":
    """LlamaConfig from the ``llama.*`` metadata and the tensor table; None on problems."""
    import transformers

    arch = GGUF_ARCHITECTURE
    required = {
        "num_hidden_layers": f"{arch}.block_count",
        "hidden_size": f"{arch}.embedding_length",
        "intermediate_size": f"{arch}.feed_forward_length",
        "num_attention_heads": f"{arch}.attention.head_count",
        "rms_norm_eps": f"{arch}.attention.layer_norm_rms_epsilon",
        "max_position_embeddings": f"{arch}.context_length",
    }
    n_problems = len(problems)
    values = {name: _scalar(meta, key, problems) for name, key in required.items()}
    absent = [key for name, key in required.items() if key not in meta]
    if absent:
        problems.append(f"missing metadata: {', '.join(absent)}")
    if len(problems) > n_problems:
        return None

    heads = int(values["num_attention_heads"])
    hidden = int(values["hidden_size"])
    kv_heads = _scalar(meta, f"{arch}.attention.head_count_kv", problems)
    kv_heads = heads if kv_heads is None else int(kv_heads)  # llama.cpp's default: no GQA
    key_length = meta.get(f"{arch}.attention.key_length")
    if key_length is None and hidden % heads:
        problems.append(
            f"{arch}.attention.key_length is absent and {arch}.embedding_length={hidden} is not a multiple of "
            f"{arch}.attention.head_count={heads}, so head_dim is unknown"
        )
        return None
    head_dim = int(key_length) if key_length is not None else hidden // heads
    value_length = meta.get(f"{arch}.attention.value_length")
    if value_length is not None and int(value_length) != head_dim:
        problems.append(
            f"{arch}.attention.value_length={value_length} differs from the key length {head_dim}; "
            "transformers' LLaMA has one head_dim"
        )
    rope_dims = meta.get(f"{arch}.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != head_dim:
        problems.append(
            f"{arch}.rope.dimension_count={rope_dims} differs from head_dim={head_dim} (partial rotary "
            "embedding); transformers' LLaMA rotates the whole head"
        )
    if heads % kv_heads:
        problems.append(f"{arch}.attention.head_count={heads} is not a multiple of head_count_kv={kv_heads}")

    rope: dict[str, Any] = {"rope_type": "default"}
    rope["rope_theta"] = _float32_decimal(meta.get(f"{arch}.rope.freq_base", 10000.0))
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if scaling_type is None and meta.get(f"{arch}.rope.scale_linear") is not None:  # older files
        scaling_type, factor = "linear", meta[f"{arch}.rope.scale_linear"]
    if scaling_type == "linear":
        if factor is None:
            problems.append(f"{arch}.rope.scaling.type is 'linear' but {arch}.rope.scaling.factor is missing")
        else:
            rope.update(rope_type="linear", factor=_float32_decimal(factor))
    elif scaling_type not in (None, "none"):
        problems.append(f"{arch}.rope.scaling.type={scaling_type!r} is not supported (valid: 'none', 'linear')")

    embedding_shape = tensor_shapes.get("model.embed_tokens.weight")
    meta_vocab = meta.get(f"{arch}.vocab_size")
    if embedding_shape is not None:
        vocab_size = int(embedding_shape[0])
        if meta_vocab is not None and int(meta_vocab) != vocab_size:
            problems.append(f"{arch}.vocab_size={meta_vocab} but token_embd.weight has {vocab_size} rows")
    elif meta_vocab is not None:
        vocab_size = int(meta_vocab)
    else:
        problems.append("vocabulary size unknown: no token_embd.weight and no llama.vocab_size")
        return None

    def has_bias(module: str) -> bool:
        return any(name.endswith(f"{module}.bias") for name in tensor_shapes)

    attention_biases = {m: has_bias(m) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
    mlp_biases = {m: has_bias(m) for m in ("gate_proj", "up_proj", "down_proj")}
    for group in (attention_biases, mlp_biases):
        if len(set(group.values())) > 1:
            problems.append(
                f"biases on {sorted(m for m, b in group.items() if b)} only; transformers' LlamaConfig "
                f"has biases on all of {sorted(group)} or none"
            )

    if len(problems) > n_problems:
        return None
    token_ids = {
        key: (int(meta[f"tokenizer.ggml.{field}"]) if f"tokenizer.ggml.{field}" in meta else None)
        for key, field in (
            ("bos_token_id", "bos_token_id"),
            ("eos_token_id", "eos_token_id"),
            ("pad_token_id", "padding_token_id"),
        )
    }
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(values["intermediate_size"]),
        num_hidden_layers=int(values["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=int(values["max_position_embeddings"]),
        rms_norm_eps=_float32_decimal(values["rms_norm_eps"]),
        rope_parameters=rope,
        tie_word_embeddings="lm_head.weight" not in tensor_shapes,
        attention_bias=all(attention_biases.values()),
        mlp_bias=all(mlp_biases.values()),
        **token_ids,
    )


class GGUFTensors(Mapping):
    """HF name → float32 array of a LLaMA GGUF file, dequantised (and q/k un-permuted) one
    tensor at a time on access, from the one memory-mapped reader: loading through it
    (``model_from_state_dict``) holds about one dequantised tensor on the host besides the
    model, never a dict of all of them."""

    def __init__(self, path: Path, reader: Any, config: "transformers.LlamaConfig", tensors: dict[str, Any],
                 shapes: dict[str, tuple[int, ...]]):  # fmt: skip
        self.path, self._reader, self._config, self._tensors, self._shapes = path, reader, config, tensors, shapes

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor as float32 in HF layout. ValueError naming it when its data cannot be dequantised."""
        from gguf.quants import dequantize

        tensor = self._tensors[name]
        try:
            values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(self._shapes[name])
        except Exception as err:  # truncated data, unknown quantisation, ...
            raise ValueError(f"{tensor.name} ({tensor.tensor_type.name}): cannot dequantise ({type(err).__name__}: {err})") from None
        heads = _rope_heads(name, self._config)
        return interleaved_to_rotate_half(values, heads) if heads else values

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def open_gguf(path: str | os.PathLike) -> tuple["transformers.LlamaConfig", GGUFTensors]:
    """A LLaMA-architecture GGUF file's config and its tensors, read lazily (``GGUFTensors``).

    The metadata and every tensor's name and shape are checked up front (all problems
    listed at once); tensor data is read and dequantised only on access. A
    ``rope_freqs.weight`` tensor (llama3 RoPE frequency factors) is skipped with a
    warning: the returned config then has default RoPE, which is not the file's model for
    positions where the factors ≠ 1.

    Raises:
      FileNotFoundError: ``path`` does not exist or is not a file.
      ValueError: not a readable GGUF file; architecture other than "llama"; or the
        list of every problem found in the metadata and tensor shapes.
    """
    path = Path(path)
    reader = _open_reader(path)
    try:
        architecture = reader.fields["general.architecture"].contents()
    except KeyError:
        raise ValueError(f"{path}: no general.architecture metadata; is this a model GGUF file?") from None
    if architecture != GGUF_ARCHITECTURE:
        raise ValueError(
            f"{path}: unsupported architecture {architecture!r} (general.architecture); only "
            f"{GGUF_ARCHITECTURE!r} is supported"
        )

    problems: list[str] = []
    hf_tensors: dict[str, Any] = {}  # HF name → GGUF ReaderTensor
    shapes: dict[str, tuple[int, ...]] = {}
    has_rope_freqs = False
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS_TENSOR:
            has_rope_freqs = True
            continue
        hf_name = gguf_to_hf_name(tensor.name)
        if hf_name is None:
            problems.append(f"unexpected tensor {tensor.name!r} (not a LLaMA tensor name)")
            continue
        hf_tensors[hf_name] = tensor
        shapes[hf_name] = tuple(int(n) for n in reversed(tensor.shape))  # ggml ne → row-major

    config = _config_from_metadata(_metadata(reader), shapes, problems)
    if config is not None:
        expected = hf_llama_shapes(config)

        def describe(name: str) -> str:
            return f"{hf_to_gguf_name(name)} ({name})"

        unexpected = [name for name in shapes if name not in expected]
        for name in unexpected:
            problems.append(f"unexpected tensor {describe(name)} for a {config.num_hidden_layers}-layer model")
        problems.extend(_shape_problems(shapes, expected, describe))
    _raise_problems(path, "not a LLaMA model transformers can represent", problems)
    assert config is not None

    if has_rope_freqs:
        warnings.warn(
            f"{path}: {ROPE_FREQS_TENSOR} (llama3 RoPE frequency factors) is ignored; the returned config has "
            f"rope_type={config.rope_parameters['rope_type']!r}, so long-context positions differ from llama.cpp",
            UserWarning,
            stacklevel=2,
        )
    ordered = {name: hf_tensors[name] for name in expected}  # model order
    return config, GGUFTensors(path, reader, config, ordered, shapes)


def read_gguf(path: str | os.PathLike) -> tuple["transformers.LlamaConfig", dict[str, np.ndarray]]:
    """Reads a LLaMA-architecture GGUF file into the HF state-dict interchange, every
    tensor at once (``open_gguf`` reads them one at a time, as the model loader does).

    Quantised tensors (Q4_1, Q8_0, ...) are dequantised to float32; q_proj / k_proj
    weights and biases are un-permuted from ggml's interleaved RoPE rows to HF's
    rotate-half rows (module docstring).

    Returns:
      ``(config, state_dict)``: a ``transformers.LlamaConfig`` and {HF name: float32
      array} in ``LlamaForCausalLM`` layout and model order; no ``lm_head.weight`` when
      the file has no ``output.weight`` (tied embeddings).

    Raises:
      FileNotFoundError / ValueError: as ``open_gguf``, and the list of every tensor whose
        data cannot be dequantised.
    """
    config, tensors = open_gguf(path)
    state_dict: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for name in tensors:
        try:
            state_dict[name] = tensors[name]
        except ValueError as err:
            problems.append(str(err))
    _raise_problems(tensors.path, "corrupt tensor data", problems)
    return config, state_dict


# ---------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------


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
    RoPE rows exactly as llama.cpp's converter does (module docstring). Matrices are
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


# ---------------------------------------------------------------------------
# Tokenizer.
# ---------------------------------------------------------------------------


_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4  # gguf.TokenType values


def load_gguf_tokenizer(path: str | os.PathLike) -> Any:
    """The transformers tokenizer described by a GGUF file's ``tokenizer.ggml.*`` metadata.

    Built here from the metadata with the ``tokenizers`` package, because transformers'
    own GGUF reader imports torch (a test-only extra of this project). Supported:
    ``tokenizer.ggml.model = "gpt2"``, byte-level BPE (LLaMA-3, SmolLM2, Qwen, GPT-2
    style): the file's tokens and merges, GPT-2's byte-level pre-tokenizer and decoder,
    tokens typed CONTROL as special tokens and USER_DEFINED ones as added tokens, and
    the bos/eos/unk/pad ids. This is the tokenizer transformers' GGUF loader builds for
    such files (tested equal on the embedded SmolLM2, including special tokens).

    Raises:
      FileNotFoundError: ``path`` does not exist or is not a file.
      ValueError: not a GGUF file, no tokenizer metadata in it, or a tokenizer model
        other than byte-level BPE (then save the tokenizer as an HF directory and pass
        it with ``--tokenizer``).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    fields = _open_reader(path).fields
    if "tokenizer.ggml.model" not in fields or "tokenizer.ggml.tokens" not in fields:
        raise ValueError(
            f"{path}: no tokenizer metadata (tokenizer.ggml.model / tokenizer.ggml.tokens); "
            "load the tokenizer from the model's HF directory instead"
        )
    kind = fields["tokenizer.ggml.model"].contents()
    if kind != "gpt2":
        raise ValueError(
            f"{path}: tokenizer.ggml.model = {kind!r}; only byte-level BPE ('gpt2') tokenizers are built from GGUF "
            "metadata; pass the model's tokenizer directory (tokenizer.json) instead"
        )
    tokens: list[str] = fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()] if "tokenizer.ggml.merges" in fields else []
    types = fields["tokenizer.ggml.token_type"].contents() if "tokenizer.ggml.token_type" in fields else [1] * len(tokens)

    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's split regex
    backend.decoder = decoders.ByteLevel()
    # A byte-level vocabulary spells every real token in the 256-symbol byte alphabet; a
    # "control" token outside it is a converter's mislabel and is left as a plain token.
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types)
                                if k == _TOKEN_CONTROL and set(t) <= alphabet])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types) if k == _TOKEN_USER_DEFINED])

    def token(key: str) -> str | None:
        field = fields.get(f"tokenizer.ggml.{key}")
        return tokens[int(field.contents())] if field is not None and int(field.contents()) < len(tokens) else None

    special = {name: token(key) for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                                                   ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"))}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{k: v for k, v in special.items() if v is not None})
