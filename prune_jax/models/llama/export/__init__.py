"""What an exported directory says about the model beyond its tensors: config.json, the
modeling file for per-layer widths, the load command, the model card.

- Uniform widths: a plain ``llama`` config.json; stock ``LlamaForCausalLM`` loads it.
- Per-layer widths: config.json of `PRUNED_MODEL_TYPE` ("pruned_llama": a LlamaConfig plus
  ``layer_heads`` / ``layer_intermediate`` and an ``auto_map``) and `MODELING_FILE`, which
  builds every decoder layer from transformers' own LLaMA pieces at that layer's widths, so
  ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads it with no
  prune_jax installed. The modeling file is `modeling_pruned_llama` of this package,
  copied verbatim (it imports only torch and transformers; nothing here imports it).
"""

from __future__ import annotations

import os
from pathlib import Path

from prune_jax.models.llama.export.card import model_card
from prune_jax.models.llama.modeling import LlamaConfig

__all__ = ["MODELING_FILE", "PRUNED_MODEL_TYPE", "hf_config", "load_command", "load_note", "model_card", "remote_code_files", "to_llama_dict"]

PRUNED_MODEL_TYPE = "pruned_llama"
MODELING_FILE = "modeling_pruned_llama.py"
_MODULE = MODELING_FILE.removesuffix(".py")
AUTO_MAP = {"AutoConfig": f"{_MODULE}.PrunedLlamaConfig", "AutoModel": f"{_MODULE}.PrunedLlamaModel",
            "AutoModelForCausalLM": f"{_MODULE}.PrunedLlamaForCausalLM"}


def hf_config(config: LlamaConfig) -> dict:
    """config.json of a model of ``config``: plain "llama" for uniform widths, else
    `PRUNED_MODEL_TYPE` with the per-layer widths, the widest layer's as the global ones,
    and the ``auto_map`` that points transformers at `MODELING_FILE`."""
    hf = config.to_hf_dict()
    if config.uniform:
        hf.pop("layer_heads", None)
        hf.pop("layer_intermediate", None)
        return hf
    hf.update(
        model_type=PRUNED_MODEL_TYPE,
        architectures=["PrunedLlamaForCausalLM"],
        auto_map=dict(AUTO_MAP),
        num_attention_heads=max(n for n, _ in config.layer_heads),
        num_key_value_heads=max(k for _, k in config.layer_heads),
        intermediate_size=max(config.layer_intermediate),
        layer_heads=[list(p) for p in config.layer_heads],
        layer_intermediate=list(config.layer_intermediate),
    )
    return hf


def to_llama_dict(hf: dict) -> dict:
    """A config.json of ours (either model type) as the "llama" dict `LlamaConfig.from_hf`
    reads (the per-layer lists are read from it either way)."""
    if hf.get("model_type") == PRUNED_MODEL_TYPE:
        return {**hf, "model_type": "llama"}
    return hf


def remote_code_files(config: LlamaConfig) -> dict[str, str]:
    """{file name: text} to write next to the weights: `MODELING_FILE` for per-layer
    widths, nothing for uniform ones."""
    if config.uniform:
        return {}
    return {MODELING_FILE: (Path(__file__).parent / MODELING_FILE).read_text()}


def load_command(out_dir: str | os.PathLike, *, uniform: bool) -> str:
    """The one line that loads ``out_dir`` in stock transformers."""
    remote = "" if uniform else ", trust_remote_code=True"
    return f"AutoModelForCausalLM.from_pretrained({str(out_dir)!r}{remote})"


def load_note(out_dir: str | os.PathLike, *, uniform: bool) -> str:
    """The line a command prints after writing ``out_dir``: how stock transformers loads it."""
    if uniform:
        return f"stock transformers loads it: {load_command(out_dir, uniform=True)}"
    return (f"the layers have different widths, so the export carries its modeling file ({MODELING_FILE}); "
            f"stock transformers loads it: {load_command(out_dir, uniform=False)}")
