"""Issue 14, part 1: where the energy of the recovery refits comes from, on the dense
SmolLM2-135M with the benchmark's calibration (64 × 128 tokens, wiki-sample calibration
split, seed 0).

For every block, the share of the energy Σ x² contributed by the first position of each
calibration sequence (the attention sink; a uniform share would be 1/128 = 0.8 %) for:
the o_proj input (per-head outputs) and output, the down_proj input (SwiGLU
intermediate) and output — the Grams X̂ᵀX̂ and targets of the second-map refits — and
the residual stream after the attention half; plus the share of the stream's energy in
its 4 largest hidden dimensions ("massive activations").

    python benchmarks/recovery_diagnosis.py

Results: benchmarks/results/recovery_diagnosis.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402

from prune_jax.data import calibration_batches, load_documents, split_documents, tokenize_corpus  # noqa: E402
from prune_jax.models.llama import load_model  # noqa: E402
from skmm_jax.io import save_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def first_position_share(x) -> float:
    """Share of Σ x² [S, T, ...] at position 0 of every sequence."""
    energy = jnp.sum(x.astype(jnp.float32) ** 2, axis=tuple(a for a in range(x.ndim) if a != 1))  # [T]
    return float(energy[0] / energy.sum())


def main() -> None:
    model, tokenizer = load_model("smollm2-135m")
    calibration, _ = split_documents(load_documents("wiki-sample"))
    tokens = jnp.asarray(calibration_batches(tokenize_corpus(calibration, tokenizer), num_samples=64, seq_len=128, seed=0), jnp.int32)
    positions, inv_freq = model.default_positions(tokens), model.rope_frequencies()
    h, rows = model.embed_tokens(tokens), []
    for layer, block in enumerate(model.layers):
        heads = block.attn.heads(block.input_norm(h), positions, inv_freq)  # [S, T, N, H]
        o_out = block.attn.project_out(heads)
        h = h + o_out
        intermediate = block.mlp.intermediate(block.post_attn_norm(h))
        down_out = block.mlp.project_out(intermediate)
        per_dim = jnp.sort(jnp.sum(h.astype(jnp.float32) ** 2, axis=(0, 1)))
        rows.append({"layer": layer, "o_input": first_position_share(heads), "o_output": first_position_share(o_out),
                     "down_input": first_position_share(intermediate), "down_output": first_position_share(down_out),
                     "stream": first_position_share(h), "stream_top4_dims": float(per_dim[-4:].sum() / per_dim.sum())})
        h = h + down_out
        print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(RESULTS / "recovery_diagnosis.json", {"calibration": "64 x 128, wiki-sample calibration split, seed 0", "layers": rows})
    lines = [
        "# Where the refit energy comes from: share at the first position of each sequence (SmolLM2-135M, dense)",
        "",
        "`python benchmarks/recovery_diagnosis.py`; calibration 64 × 128 tokens; a uniform position share is 1/128 = 0.8 %.",
        "Pruned blocks in the benchmark: [4, 28).",
        "",
        "| block | o_proj input | o_proj output | down_proj input | down_proj output | stream after attention | stream: top-4 dims |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['o_input']:.1%} | {r['o_output']:.1%} | {r['down_input']:.1%} | {r['down_output']:.1%} | "
                     f"{r['stream']:.1%} | {r['stream_top4_dims']:.1%} |")
    (RESULTS / "recovery_diagnosis.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
