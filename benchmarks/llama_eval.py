"""SmolLM2-135M: our Flax NNX LLaMA against transformers' PyTorch LlamaForCausalLM.

Both models get the same weights (the embedded GGUF, dequantised once by
``read_gguf``), the same tokens (the Wikipedia sample's evaluation split, tokenised
once) and the same non-overlapping windows. Reported:
  - perplexity at 128- and 2048-token windows from each, and their relative difference;
  - forward throughput (tokens/s, logits included) at batch 8 × 128 and 1 × 2048, median
    of repeated runs after a warm-up, in the same process, and the ratio ours / torch;
  - long context: perplexity of one --long-context window (8192 tokens, SmolLM2's
    context) from each, its seconds and the peak resident memory above the memory before
    the call (sampled every 2 ms), with the memory model of ours next to it.

    python benchmarks/llama_eval.py                  # first 32,768 tokens per window size
    python benchmarks/llama_eval.py --max-tokens 0   # the whole evaluation split (slow on CPU)

Results: benchmarks/results/llama_eval.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from prune_jax.data import eval_windows, load_documents, split_documents, tokenize_corpus  # noqa: E402
from prune_jax.embedded import embedded_model_path  # noqa: E402
from prune_jax.evaluate import compiled_forward, perplexity  # noqa: E402
from prune_jax.models.llama import LlamaConfig, load_tokenizer, model_from_state_dict  # noqa: E402
from prune_jax.models.llama.gguf import read_gguf  # noqa: E402
from skmm_jax.common.io import save_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def torch_perplexity(model, windows: np.ndarray, batch_size: int) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = torch.as_tensor(windows[start : start + batch_size], dtype=torch.long)
            logits = model(batch[:, :-1]).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += batch[:, 1:].numel()
    return math.exp(total / count)


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=32768, help="tokens per window size (0: whole split)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-context", type=int, default=8192, help="tokens of the long-context window (0: skip)")
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    gguf_path = embedded_model_path("smollm2-135m")
    hf_config, tensors = read_gguf(gguf_path)
    ours = model_from_state_dict(LlamaConfig.from_hf(hf_config), tensors)
    reference = transformers.LlamaForCausalLM(hf_config).eval()
    missing, unexpected = reference.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    reference.tie_weights()
    tokenizer = load_tokenizer(gguf_path)
    _, evaluation = split_documents(load_documents("wiki-sample"))
    tokens = tokenize_corpus(evaluation, tokenizer)

    rows = []
    for seq_len in (128, 2048):
        limit = None if args.max_tokens <= 0 else max(1, args.max_tokens // seq_len)
        windows = eval_windows(tokens, seq_len, limit)
        batch = 8 if seq_len <= 128 else 1
        start = time.perf_counter()
        ours_ppl = perplexity(ours, windows, batch_size=batch).perplexity
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        torch_ppl = torch_perplexity(reference, windows, batch)
        torch_s = time.perf_counter() - start
        rows.append({"seq_len": seq_len, "windows": int(len(windows)), "tokens": int(windows.size),
                     "ours_perplexity": ours_ppl, "torch_perplexity": torch_ppl,
                     "relative_difference": abs(ours_ppl - torch_ppl) / torch_ppl,
                     "ours_eval_seconds": ours_s, "torch_eval_seconds": torch_s})
        print(rows[-1], flush=True)

    forward = compiled_forward(ours)
    throughput = []
    for batch, seq_len in ((8, 128), (1, 2048)):
        x = np.asarray(tokens[: batch * seq_len].reshape(batch, seq_len), np.int32)
        xj = jnp.asarray(x)
        xt = torch.as_tensor(x, dtype=torch.long)

        def run_ours():
            forward(xj).block_until_ready()

        def run_torch():
            with torch.no_grad():
                reference(xt).logits

        ours_t, torch_t = time_it(run_ours, args.repeats), time_it(run_torch, args.repeats)
        throughput.append({"batch": batch, "seq_len": seq_len, "ours_tokens_per_s": batch * seq_len / ours_t,
                           "torch_tokens_per_s": batch * seq_len / torch_t, "ours_over_torch": torch_t / ours_t,
                           "ours_seconds": ours_t, "torch_seconds": torch_t})
        print(throughput[-1], flush=True)

    long_rows = []
    if args.long_context:
        from prune_scale import PeakRSS  # benchmarks/prune_scale.py: the 2 ms RSS sampler

        window = np.asarray(tokens[: args.long_context], np.int64).reshape(1, -1)
        for attempt in ("cold", "warm"):  # cold includes the compilation
            with PeakRSS() as rss:
                start = time.perf_counter()
                ours_ppl = perplexity(ours, window, batch_size=1).perplexity
                seconds = time.perf_counter() - start
            long_rows.append({"implementation": f"ours ({attempt})", "perplexity": ours_ppl, "seconds": seconds,
                              "rss_before_mb": rss.before, "peak_rss_mb": rss.peak})
            print(long_rows[-1], flush=True)
        with PeakRSS() as rss:
            start = time.perf_counter()
            torch_ppl = torch_perplexity(reference, window, 1)
            seconds = time.perf_counter() - start
        long_rows.append({"implementation": "transformers", "perplexity": torch_ppl, "seconds": seconds,
                          "rss_before_mb": rss.before, "peak_rss_mb": rss.peak})
        print(long_rows[-1], flush=True)

    result = {
        "model": str(gguf_path), "max_tokens": args.max_tokens, "perplexity": rows, "throughput": throughput,
        "long_context": long_rows,
        "platform": platform.platform(), "cpu_count": __import__("os").cpu_count(), "jax": jax.__version__,
        "torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(RESULTS / "llama_eval.json", result)
    lines = [
        "# SmolLM2-135M: our Flax NNX LLaMA vs transformers (PyTorch), same weights, tokens and windows",
        "",
        f"Wikipedia sample, evaluation split, first {args.max_tokens or 'all'} tokens per window size; "
        f"CPU ({platform.machine()}, {result['cpu_count']} cores), jax {jax.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; weights dequantised from the Q4_1 GGUF.",
        "",
        "| windows | ours PPL | transformers PPL | relative difference |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['windows']} × {r['seq_len']} | {r['ours_perplexity']:.4f} | {r['torch_perplexity']:.4f} | {r['relative_difference']:.1e} |")
    lines += ["", "| forward (logits) | ours tokens/s | transformers tokens/s | ours / transformers |", "|---|---:|---:|---:|"]
    for t in throughput:
        lines.append(f"| {t['batch']} × {t['seq_len']} | {t['ours_tokens_per_s']:.0f} | {t['torch_tokens_per_s']:.0f} | {t['ours_over_torch']:.2f}× |")
    if long_rows:
        config = ours.config
        T, D, F, V = args.long_context, config.hidden_size, config.layer_intermediate[0], config.vocab_size
        N = config.layer_heads[0][0]
        # What one block holds at its peak, float32: the stream and its norm, q/k/v/attention
        # output (≈ 4·D with GQA, bounded by it), gate/up/h (3·F), one score block
        # N·128·T; the loss holds one vocabulary chunk [T, 8192] plus the stream.
        block_mb = 4 * T * (2 * D + 4 * D + 3 * F + N * 128) / 2**20
        loss_mb = 4 * T * (8192 + 2 * D) / 2**20
        full_logits_mb = 4 * T * V / 2**20
        lines += ["", f"| 1 × {T} perplexity | PPL | seconds | peak − before MiB |", "|---|---:|---:|---:|"]
        for r in long_rows:
            lines.append(f"| {r['implementation']} | {r['perplexity']:.4f} | {r['seconds']:.1f} | {r['peak_rss_mb'] - r['rss_before_mb']:,.0f} |")
        lines += ["", f"Memory model of ours at T = {T} (float32, beyond the weights): one block at its peak "
                  f"4·T·(6·D + 3·F + N·128) B = {block_mb:,.0f} MiB, the loss 4·T·(8192 + 2·D) B = {loss_mb:,.0f} MiB "
                  f"(vocabulary chunks of 8192; the full [T, V] logits alone would be {full_logits_mb:,.0f} MiB), "
                  "plus XLA's buffer reuse and the runtime's pools."]
    (RESULTS / "llama_eval.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
