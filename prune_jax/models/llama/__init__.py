"""LLaMA-architecture models in Flax NNX: modeling, HF/GGUF checkpoint I/O, export."""

from prune_jax.models.llama.checkpoint import load_gguf, load_hf_dir, load_model, load_tokenizer, save_hf
from prune_jax.models.llama.modeling import (
    Llama,
    LlamaConfig,
    abstract_llama,
    init_llama,
    num_parameters,
    set_attention,
)
from prune_jax.models.llama.params import model_from_state_dict, state_dict_from_model

__all__ = [
    "Llama",
    "LlamaConfig",
    "abstract_llama",
    "init_llama",
    "load_gguf",
    "load_hf_dir",
    "load_model",
    "load_tokenizer",
    "model_from_state_dict",
    "num_parameters",
    "save_hf",
    "set_attention",
    "state_dict_from_model",
]
