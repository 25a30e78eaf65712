"""The model card (README.md) of an exported directory.

What a user needs to decide whether and how to use the model: the base model, how it was
pruned (method, sparsity, allocation), the calibration data and its size, the widths of
every layer, the parameters before and after, what the run measured, the command that
produced it and how to load it. Every entry comes from the run's record (``pruning.json``),
so the card never says more than the run knows; absent entries are left out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from prune_jax.models.llama.modeling import LlamaConfig

__all__ = ["Measurement", "model_card"]

# (metric, value on the base model or None, value on this model)
Measurement = tuple[str, float | None, float]


def _widths_table(config: LlamaConfig) -> list[str]:
    rows = ["| layer | query heads | KV heads | FFN channels |", "|---:|---:|---:|---:|"]
    rows += [f"| {i} | {n} | {k} | {f} |" for i, ((n, k), f) in enumerate(zip(config.layer_heads, config.layer_intermediate, strict=True))]
    return rows


def _pruning_lines(record: Mapping[str, Any]) -> list[str]:
    settings = record.get("config", {})
    lines = []
    if "method" in record:
        sparsity = settings.get("sparsity")
        how = f"`{record['method']}`"
        if record.get("attention_ratio") is not None or record.get("ffn_ratio") is not None:
            how += f", fixed per-layer ratios (heads {record.get('attention_ratio')}, FFN channels {record.get('ffn_ratio')})"
        elif sparsity is not None:
            how += f", {sparsity:.0%} of the prunable (attention + MLP) parameters"
        if record.get("allocation"):
            how += f", `{record['allocation']}` allocation across layers"
        if settings.get("recover"):
            how += ", layer-wise recovery (ridge refit)"
        lines.append(f"- **Pruning**: {how}.")
    if record.get("layer_range"):
        start, stop = record["layer_range"]
        lines.append(f"- **Layers pruned**: blocks {start} to {stop - 1} (the others keep their dense widths).")
    calibration = record.get("calibration")
    if calibration:
        selection = (calibration.get("selection") or {}).get("method", "random")
        lines.append(
            f"- **Calibration data**: `{calibration.get('source')}` ({calibration.get('split')} split), "
            f"{calibration.get('samples')} windows × {calibration.get('seq_len')} tokens = {calibration.get('tokens'):,} tokens "
            f"from {len(calibration.get('documents', []))} documents, windows chosen by `{selection}`, seed {calibration.get('seed')}."
        )
    healing = record.get("healing")
    if healing:
        settings, data, held = healing.get("config", {}), healing.get("data", {}), healing.get("held_out_perplexity", {})
        lines.append(
            f"- **Healing** (after pruning): LoRA rank {settings.get('rank')} (α {settings.get('alpha')}), {healing.get('steps')} updates "
            f"of {settings.get('batch_size')} windows at learning rate {settings.get('learning_rate')} on the {data.get('rows')} "
            f"windows × {data.get('seq_len')} tokens of the calibration split, merged into the weights; training loss "
            f"{healing.get('loss_first'):.3f} → {healing.get('loss_last'):.3f}, held-out perplexity ({held.get('split')} split) "
            f"{held.get('before'):.4g} → {held.get('after'):.4g}."
        )
    return lines


def _measured_lines(measured: Sequence[Measurement]) -> list[str]:
    rows = ["| metric | base model | this model |", "|---|---:|---:|"]
    for name, base, pruned in measured:
        rows.append(f"| {name} | {'' if base is None else f'{base:.4g}'} | {pruned:.4g} |")
    return rows


def model_card(
    config: LlamaConfig,
    out_dir: str | os.PathLike,
    *,
    parameters: int,
    record: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    measured: Sequence[Measurement] = (),
    command: str | None = None,
) -> str:
    """README.md of a directory ``save_hf`` writes.

    Args:
      config: the exported model's config (its widths, dtype, tying, biases).
      out_dir: where it is written (the path shown in the load snippet).
      parameters: the exported model's parameter count.
      record: the run's record (``pruning.json``: method, config, allocation, layer_range,
        calibration, parameters_before/after); None for a model that was not pruned here.
      base_model: the model the run started from (default: ``record["model"]``).
      measured: (metric, base model's value or None, this model's value) rows the run measured.
      command: the command line that produced the directory.
    """
    from prune_jax.models.llama.export import MODELING_FILE, load_command

    record = dict(record or {})
    base_model = base_model or record.get("model")
    uniform = config.uniform
    after = parameters
    before = record.get("parameters_before")
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- llama", "- pruned", "- prune-jax", "---", ""]
    title = f"Pruned {base_model}" if record.get("method") and base_model else (base_model or "LLaMA model")
    lines += [f"# {title}", ""]
    summary = f"A LLaMA-architecture model ({config.num_layers} layers, hidden size {config.hidden_size}, {config.dtype})"
    summary += ", structurally pruned with prune-jax" if record.get("method") else ", exported by prune-jax"
    summary += ": whole attention heads and FFN channels removed, so it is smaller and faster with any runtime, no sparse kernels needed." if record.get("method") else "."
    lines += [summary, ""]
    lines += ["## Load it", ""]
    if uniform:
        lines += ["Every layer has the same widths: this is a plain `llama` checkpoint for stock transformers.", ""]
    else:
        lines += [(f"The layers have different widths, so config.json has `model_type: pruned_llama` and the directory carries "
                   f"`{MODELING_FILE}` (transformers' own LLaMA layers, each built at its widths; it imports only torch and "
                   "transformers): pass `trust_remote_code=True`."), ""]
    lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"model = {load_command(out_dir, uniform=uniform)}", f"tokenizer = AutoTokenizer.from_pretrained({str(out_dir)!r})",
              'inputs = tokenizer("The capital of France is", return_tensors="pt")',
              "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))", "```", ""]
    model_args = f"pretrained={out_dir}" + ("" if uniform else ",trust_remote_code=True")
    lines += [(f"lm-evaluation-harness: `lm_eval --model hf --model_args {model_args} --tasks ...`; "
               f"prune-jax: `prune-jax eval --model {out_dir}`."), ""]
    lines += ["## How it was made", ""]
    if base_model:
        lines.append(f"- **Base model**: `{base_model}`.")
    lines += _pruning_lines(record)
    if before:
        lines.append(f"- **Parameters**: {before:,} → {after:,} ({after / before:.1%} of the base model).")
    else:
        lines.append(f"- **Parameters**: {after:,}.")
    extras = [name for name, on in (("tied input/output embeddings", config.tie_word_embeddings), ("attention biases", config.attention_bias),
                                    ("MLP biases", config.mlp_bias)) if on]
    if extras:
        lines.append(f"- **Also**: {', '.join(extras)}.")
    if command:
        lines += ["", "Command:", "", "```bash", command, "```"]
    lines.append("")
    if measured:
        lines += ["## What the run measured", ""] + _measured_lines(measured) + [""]
    elif record.get("method"):
        lines += ["## Quality", "", (f"This run measured no quality; score it with `prune-jax eval --model {out_dir}` "
                                     "(perplexity, zero-shot tasks)."), ""]
    lines += ["## Widths per layer", ""] + _widths_table(config) + [""]
    if record.get("method"):
        lines += ["The run's full record (every setting, per-layer decisions, timing) is `pruning.json`.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
