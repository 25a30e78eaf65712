"""Where the energy of the recovery refits comes from, on the dense
SmolLM2-135M with the benchmark's calibration (64 × 128 tokens, wiki-sample calibration
split, seed 0).

For every block, the share of the energy Σ x² contributed by the first position of each
calibration sequence (the attention sink; a uniform share would be 1/128 = 0.8 %) for:
the o_proj input (per-head outputs) and output, the down_proj input (SwiGLU
intermediate) and output — the Grams X̂ᵀX̂ and targets of the second-map refits — and
the residual stream after the attention half; plus the share of the stream's energy in
its 4 largest hidden dimensions ("massive activations").

Second table — why the classic ridge refit erases what calibration does not excite: the
spectrum of each refit Gram G = X̂ᵀX̂ (o_proj and down_proj inputs). The refit's ridge
is λ·s with s = mean diag G; a direction with eigenvalue μ keeps the fraction
μ / (μ + λs) of its least-squares weights when the ridge shrinks toward 0 (and all of
its current weights when it shrinks toward them, ``ridge_toward="current"``). Reported:
the top eigenvalue's share of tr G, the share of directions with μ < λs, and the mean
keep fraction at λ = 10⁻² and 1.

    python benchmarks/recovery_diagnosis.py

Results: benchmarks/results/recovery_diagnosis.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from prune_jax.data import calibration_batches, load_documents, split_documents, tokenize_corpus  # noqa: E402
from prune_jax.models.llama import load_model  # noqa: E402
from skmm_jax.common.io import save_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def first_position_share(x) -> float:
    """Share of Σ x² [S, T, ...] at position 0 of every sequence."""
    energy = jnp.sum(x.astype(jnp.float32) ** 2, axis=tuple(a for a in range(x.ndim) if a != 1))  # [T]
    return float(energy[0] / energy.sum())


def spectrum(x) -> dict:
    """Spectrum summary of the Gram of x [S, T, ..., C] (module docstring, second table)."""
    flat = np.asarray(x, np.float64).reshape(-1, int(np.prod(x.shape[2:])))
    eigenvalues = np.clip(np.linalg.eigvalsh(flat.T @ flat), 0.0, None)
    scale = eigenvalues.mean()  # = mean diag G
    out = {"top1_share": float(eigenvalues[-1] / eigenvalues.sum())}
    for ridge in (1e-2, 1.0):
        out[f"below_{ridge:g}"] = float(np.mean(eigenvalues < ridge * scale))
        out[f"keep_{ridge:g}"] = float(np.mean(eigenvalues / (eigenvalues + ridge * scale)))
    return out


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
                     "stream": first_position_share(h), "stream_top4_dims": float(per_dim[-4:].sum() / per_dim.sum()),
                     "o_input_spectrum": spectrum(heads), "down_input_spectrum": spectrum(intermediate)})
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
    lines += [
        "",
        "## Refit Gram spectra: what a ridge toward 0 keeps",
        "",
        "λs = λ · mean diag G. Share of directions with eigenvalue below λs, and the mean fraction μ/(μ + λs) of the least-squares",
        "weights a ridge toward 0 keeps (a ridge toward the current weights keeps the current weights in those directions instead).",
        "",
        "| block | o_proj: top-1 share | o_proj: below 0.01s | o_proj: keep at 0.01 / 1 | down_proj: top-1 share | down_proj: below 0.01s | down_proj: keep at 0.01 / 1 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o, d = r["o_input_spectrum"], r["down_input_spectrum"]
        lines.append(f"| {r['layer']} | {o['top1_share']:.1%} | {o['below_0.01']:.1%} | {o['keep_0.01']:.2f} / {o['keep_1']:.2f} | "
                     f"{d['top1_share']:.1%} | {d['below_0.01']:.1%} | {d['keep_0.01']:.2f} / {d['keep_1']:.2f} |")
    (RESULTS / "recovery_diagnosis.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
