"""The transformers tokenizer a GGUF file's ``tokenizer.ggml.*`` metadata describes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prune_jax.models.llama.gguf.reader import _open_reader

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
