"""Reading a LLaMA GGUF file: metadata → ``LlamaConfig``, tensors as a lazy mapping or a dict."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from prune_jax.models.llama.gguf.names import (
    GGUF_ARCHITECTURE,
    ROPE_FREQS_TENSOR,
    _raise_problems,
    _rope_heads,
    _shape_problems,
    gguf_to_hf_name,
    hf_llama_shapes,
    hf_to_gguf_name,
    interleaved_to_rotate_half,
)

if TYPE_CHECKING:
    import transformers


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
    rotate-half rows (package docstring).

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
