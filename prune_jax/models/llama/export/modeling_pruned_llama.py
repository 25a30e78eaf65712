"""A LLaMA whose layers have their own widths, for stock transformers (``trust_remote_code=True``).

Structured pruning removes query heads (whole KV groups or the same heads of every group)
and FFN channels, a different number in each layer, so one ``num_attention_heads`` /
``num_key_value_heads`` / ``intermediate_size`` cannot describe the model. This file is
copied into every such export by prune_jax and imports only torch and transformers:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(DIR)

Everything is transformers' own LLaMA (attention with its KV cache and every attention
backend, RoPE with its scaling types, RMSNorm, the MLP, generation): layer ``i`` is a
stock ``LlamaDecoderLayer`` built from `PrunedLlamaConfig.layer_config` ``(i)``, the
config seen through that layer's widths. The weight names are LlamaForCausalLM's, so
the safetensors file is an ordinary LLaMA state dict whose shapes vary by layer.
"""

from __future__ import annotations

from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel

WIDTHS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


class PrunedLlamaConfig(LlamaConfig):
    """``LlamaConfig`` plus per-layer widths.

    Attributes:
      layer_heads: per layer ``[num_attention_heads, num_key_value_heads]``.
      layer_intermediate: per layer FFN width (``intermediate_size``).

    The global ``num_attention_heads`` / ``num_key_value_heads`` / ``intermediate_size``
    hold the widest layer's (an upper bound, e.g. for a preallocated cache); ``head_dim``
    is given explicitly, since ``hidden_size // num_attention_heads`` no longer is it.
    """

    model_type = "pruned_llama"
    layer_heads: list | None = None
    layer_intermediate: list | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        layers = self.num_hidden_layers
        if self.layer_heads is None:
            self.layer_heads = [[self.num_attention_heads, self.num_key_value_heads]] * layers
        if self.layer_intermediate is None:
            self.layer_intermediate = [self.intermediate_size] * layers
        self.layer_heads = [[int(n), int(k)] for n, k in self.layer_heads]
        self.layer_intermediate = [int(f) for f in self.layer_intermediate]
        if len(self.layer_heads) != layers or len(self.layer_intermediate) != layers:
            raise ValueError(f"layer_heads ({len(self.layer_heads)}) and layer_intermediate ({len(self.layer_intermediate)}) "
                             f"must have num_hidden_layers = {layers} entries")
        for index, (heads, kv_heads) in enumerate(self.layer_heads):
            if heads < 1 or kv_heads < 1 or heads % kv_heads:
                raise ValueError(f"layer {index}: num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv_heads}")

    def validate_architecture(self):
        """``hidden_size`` need not be a multiple of a pruned head count: ``head_dim`` is explicit."""

    def layer_config(self, index: int) -> LayerConfig:
        """This config seen through layer ``index``'s widths."""
        heads, kv_heads = self.layer_heads[index]
        return LayerConfig(self, num_attention_heads=heads, num_key_value_heads=kv_heads,
                           intermediate_size=self.layer_intermediate[index])


class LayerConfig:
    """A config seen through one layer's widths: the three widths are the layer's own,
    every other attribute is read from the model's config when it is used, so settings
    changed after loading (``model.set_attn_implementation(...)``, ``config._attn_implementation``)
    reach every layer (a copy of the config would keep the old ones)."""

    def __init__(self, config: PrunedLlamaConfig, **widths: int):
        self.__dict__["_config"] = config
        self.__dict__.update(widths)

    def __getattr__(self, name: str):
        config = self.__dict__.get("_config")
        if config is None:  # mid-copy (copy / deepcopy / pickle build the object before its state)
            raise AttributeError(name)
        return getattr(config, name)

    def __setattr__(self, name: str, value) -> None:
        if name in WIDTHS:
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["_config"], name, value)


class PrunedLlamaModel(LlamaModel):
    """``LlamaModel`` whose decoder layer ``i`` has layer ``i``'s widths."""

    config_class = PrunedLlamaConfig

    def __init__(self, config: PrunedLlamaConfig):
        super().__init__(config)
        # LlamaModel built every layer at the global (widest) widths; rebuild each at its own.
        # Under from_pretrained the model is built on the meta device, so nothing is allocated twice.
        self.layers = nn.ModuleList(LlamaDecoderLayer(config.layer_config(index), index) for index in range(config.num_hidden_layers))
        self.post_init()


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` over `PrunedLlamaModel` (same weight names, same generation)."""

    config_class = PrunedLlamaConfig

    def __init__(self, config: PrunedLlamaConfig):
        super().__init__(config)
        self.model = PrunedLlamaModel(config)
        self.post_init()


__all__ = ["PrunedLlamaConfig", "PrunedLlamaForCausalLM", "PrunedLlamaModel"]
