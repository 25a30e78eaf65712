"""The GGUF interchange under its former module name: everything lives in
``prune_jax.models.llama.gguf`` (``names``, ``reader``, ``writer``, ``tokenizer``)."""

from prune_jax.models.llama.gguf import *  # noqa: F403
from prune_jax.models.llama.gguf import __all__  # noqa: F401
