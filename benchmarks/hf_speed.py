"""Pruned SmolLM2 where users run it: stock transformers (PyTorch, CPU), speed and memory.

The dense SmolLM2-135M and four pruned exports — dap-obs at 20 % and 40 % of the prunable
parameters, with its default (global) allocation, whose layers end up with different
widths (loaded through the exported modeling file, ``trust_remote_code=True``), and with
one uniform ratio over all 30 layers (a plain ``llama`` checkpoint) — are each loaded by a
fresh child process that imports only torch and transformers, and measured:

  - prefill tokens/s at 1 × 2048 and 8 × 128 (one forward with the KV cache filled and the
    last position's logits, as ``generate`` does it), median of ``--repeats`` after a warm-up;
  - decode tokens/s with the KV cache: greedy ``generate`` of ``--new-tokens`` tokens after
    a 128-token prompt at batch 1 and 8, minus the same call generating one token;
  - peak resident memory of the child above its memory after the imports (weights, cache,
    activations; the kernel's high-water mark of its address space, VmHWM);

next to the parameter ratio. The pruned exports are written once by ``run_prune``
(``--calib-samples`` random 128-token windows of the Wikipedia sample's calibration half;
the widths, not the quality, matter here) into the cache and reused.

    python benchmarks/hf_speed.py               # ~10 min on 2 cores (the pruning ~3 of them, once)
    python benchmarks/hf_speed.py --repeats 5

Results: benchmarks/results/hf_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
PREFILL = ((1, 2048), (8, 128))  # (batch, tokens)
DECODE_BATCHES = (1, 8)
PROMPT = 128
# name → (sparsity, allocation, layer range); None: dense
VARIANTS = {
    "dense": None,
    "dap-obs 20 % global": (0.2, None, None),
    "dap-obs 20 % uniform": (0.2, "uniform", (0, 30)),
    "dap-obs 40 % global": (0.4, None, None),
    "dap-obs 40 % uniform": (0.4, "uniform", (0, 30)),
}
# The control: the 20 % uniform model's own weights and widths, declared per layer, so it
# loads through the exported modeling file: the custom code path's cost, if any.
CONTROL = ("dap-obs 20 % uniform, via the modeling file", "dap-obs 20 % uniform")


def cache_dir() -> Path:
    root = Path(os.environ.get("PRUNE_JAX_CACHE", Path.home() / ".cache" / "prune_jax"))
    return root / "hf_speed"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def prepare(calib_samples: int) -> dict[str, Path]:
    """{variant: export directory}, pruning (and exporting the dense model) where the cache lacks it."""
    from prune_jax.pruning import Budget, PruneConfig
    from prune_jax.runs.prune import PruneRun, run_prune

    dirs = {}
    for name, variant in VARIANTS.items():
        out = cache_dir() / slug(name)
        dirs[name] = out
        stamp = json.loads(json.dumps({"variant": variant, "calib_samples": calib_samples}))  # as it reads back (tuples → lists)
        if (out / "bench-variant.json").is_file() and json.loads((out / "bench-variant.json").read_text()) == stamp:
            continue
        start = time.perf_counter()
        if variant is None:
            from prune_jax.models.llama import load_model, save_hf

            model, tokenizer = load_model("smollm2-135m")
            save_hf(model, tokenizer, out, extra_files={"bench-variant.json": stamp}, overwrite=True)
        else:
            sparsity, allocation, layers = variant
            run_prune(PruneRun(out=out, calib_samples=calib_samples, overwrite=True),
                      PruneConfig(budget=Budget(sparsity=sparsity, allocation=allocation, layer_range=layers)))
            (out / "bench-variant.json").write_text(json.dumps(stamp))
        print(f"{name}: written to {out} in {time.perf_counter() - start:.0f} s", flush=True)
    name, source = CONTROL
    dirs[name] = declared_per_layer(dirs[source], cache_dir() / slug(name))
    return dirs


def declared_per_layer(source: Path, out: Path) -> Path:
    """``source`` (uniform widths) with a "pruned_llama" config.json and the modeling file:
    the same tensors (linked), loaded through `PrunedLlamaForCausalLM`."""
    import shutil

    from prune_jax.models.llama.export import AUTO_MAP, MODELING_FILE, PRUNED_MODEL_TYPE

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name != "config.json":
            (out / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text())
    layers = config["num_hidden_layers"]
    config.update(model_type=PRUNED_MODEL_TYPE, architectures=["PrunedLlamaForCausalLM"], auto_map=AUTO_MAP,
                  layer_heads=[[config["num_attention_heads"], config["num_key_value_heads"]]] * layers,
                  layer_intermediate=[config["intermediate_size"]] * layers)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(Path(__file__).resolve().parents[1] / "prune_jax" / "models" / "llama" / "export" / MODELING_FILE, out / MODELING_FILE)
    return out


def prompt_tokens(path: Path) -> None:
    """The Wikipedia sample's evaluation half, tokenised: the text every child reads."""
    import numpy as np

    from prune_jax.data import load_documents, split_documents, tokenize_corpus
    from prune_jax.models.llama import load_tokenizer
    from prune_jax.embedded import embedded_model_path

    _, evaluation = split_documents(load_documents("wiki-sample"))
    tokens = np.asarray(tokenize_corpus(evaluation, load_tokenizer(embedded_model_path("smollm2-135m"))), np.int64)
    np.save(path, tokens[: 8 * 2048])


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB): VmHWM, the peak of its own address space.
    (``ru_maxrss`` would not do: Linux carries the parent's peak into a child across
    fork + exec, so a child of a large parent never seems to grow.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this measurement needs Linux)")


def child(directory: str, tokens_path: str, repeats: int, new_tokens: int) -> dict:
    """Measures one export in stock transformers; imports nothing of this project."""
    import statistics

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    base_mb = peak_rss_mb()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32).eval()
    load_s = time.perf_counter() - start
    tokens = np.load(tokens_path)

    def median_seconds(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
        return statistics.median(times)

    out = {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()), "load_seconds": load_s,
           "prefill": [], "decode": []}
    with torch.inference_mode():
        for batch, length in PREFILL:
            x = torch.as_tensor(tokens[: batch * length].reshape(batch, length))
            seconds = median_seconds(lambda x=x: model(input_ids=x, use_cache=True, logits_to_keep=1))
            out["prefill"].append({"batch": batch, "tokens": length, "seconds": seconds, "tokens_per_s": batch * length / seconds})
        for batch in DECODE_BATCHES:
            x = torch.as_tensor(tokens[: batch * PROMPT].reshape(batch, PROMPT))
            attention = torch.ones_like(x)

            def generate(count: int, x=x, attention=attention):
                return model.generate(input_ids=x, attention_mask=attention, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                                      pad_token_id=0)

            full, one = median_seconds(lambda: generate(1 + new_tokens)), median_seconds(lambda: generate(1))
            out["decode"].append({"batch": batch, "prompt": PROMPT, "new_tokens": new_tokens, "seconds": full - one,
                                  "tokens_per_s": batch * new_tokens / (full - one)})
    out["peak_mb_above_imports"] = peak_rss_mb() - base_mb
    return out


def measure(directory: Path, tokens_path: Path, repeats: int, new_tokens: int) -> dict:
    """`child` in a fresh process (its own peak memory; no prune_jax module loaded)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import hf_speed; "
            f"print('RESULT ' + json.dumps(hf_speed.child({str(directory)!r}, {str(tokens_path)!r}, {repeats}, {new_tokens})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": ""}, cwd="/")
    if run.returncode:
        raise RuntimeError(f"measuring {directory} failed:\n{run.stderr[-3000:]}")
    return json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def table(rows: dict[str, dict]) -> list[str]:
    dense = rows["dense"]
    head = ["model", "parameters (ratio)", "query heads", "FFN channels", *(f"prefill {b}×{t} tok/s (×)" for b, t in PREFILL),
            *(f"decode b={b} tok/s (×)" for b in DECODE_BATCHES), "peak MiB (×)", "transformers class"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for name, r in rows.items():
        cells = [name, f"{r['parameters'] / 1e6:.1f} M ({r['parameters'] / dense['parameters']:.2f})", f"{r['query_heads']}",
                 f"{r['ffn_channels']:,}"]
        for kind in ("prefill", "decode"):
            for mine, base in zip(r[kind], dense[kind], strict=True):
                speed = mine["tokens_per_s"]
                cells.append(f"{speed:,.{0 if speed >= 100 else 1}f} ({speed / base['tokens_per_s']:.2f})")
        peak, dense_peak = r["peak_mb_above_imports"], dense["peak_mb_above_imports"]
        cells += [f"{peak:,.0f} ({peak / dense_peak:.2f})" if dense_peak > 0 else "n/a", f"`{r['class']}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median), after one warm-up")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per generate call")
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration windows of the pruning (128 tokens each)")
    parser.add_argument("--render", action="store_true", help="only rewrite hf_speed.md from hf_speed.json")
    args = parser.parse_args()
    if args.render:
        write_markdown(json.loads((RESULTS / "hf_speed.json").read_text()))
        return

    import torch
    import transformers

    dirs = prepare(args.calib_samples)
    tokens_path = cache_dir() / "eval-tokens.npy"
    if not tokens_path.is_file():
        prompt_tokens(tokens_path)
    rows = {}
    for name, directory in dirs.items():
        start = time.perf_counter()
        rows[name] = measure(directory, tokens_path, args.repeats, args.new_tokens)
        config = json.loads((directory / "config.json").read_text())
        layers = config["num_hidden_layers"]
        heads = config.get("layer_heads") or [[config["num_attention_heads"], config["num_key_value_heads"]]] * layers
        ffn = config.get("layer_intermediate") or [config["intermediate_size"]] * layers
        rows[name].update(layer_heads=heads, layer_intermediate=ffn, query_heads=sum(n for n, _ in heads), ffn_channels=sum(ffn))
        print(f"{name}: {json.dumps({k: v for k, v in rows[name].items() if not k.startswith('layer_')})} ({time.perf_counter() - start:.0f} s)", flush=True)

    from skmm_jax.common.io import save_json_atomic

    result = {"command": " ".join(["python", "benchmarks/hf_speed.py", *sys.argv[1:]]), "args": vars(args), "variants": {k: list(v) if v else None for k, v in VARIANTS.items()},
              "rows": rows, "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(RESULTS / "hf_speed.json", result)
    write_markdown(result)


def write_markdown(result: dict) -> None:
    """hf_speed.md from the result JSON (``--render`` redoes it without measuring)."""
    args = result["args"]
    lines = [
        "# Pruned SmolLM2-135M in stock transformers (PyTorch, CPU): speed and memory",
        "",
        f"`{result['command']}` — CPU ({result.get('machine', '')}, {result['cpu_count']} cores, {result['torch_threads']} torch threads), "
        f"torch {result['torch']}, transformers {result['transformers']}, float32. Each model is loaded with "
        "`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` in a fresh process that imports only torch and "
        "transformers. Prefill: one forward filling the KV cache (logits of the last position, as `generate` does); decode: "
        f"greedy `generate` of {args['new_tokens']} tokens after a {PROMPT}-token prompt, minus the call generating one; "
        f"median of {args['repeats']} runs after a warm-up. (×): ratio to the dense model. Peak: resident memory above the "
        "process's after its imports (weights, cache, activations).",
        "",
        *table(result["rows"]),
        "",
        "global = dap-obs's default allocation (one threshold on its scores over blocks 4–27, so every layer has its own "
        "widths: `PrunedLlamaForCausalLM` from the exported modeling file); uniform = one ratio over all 30 blocks (a plain "
        "`LlamaForCausalLM`); the control loads the 20 % uniform model's own tensors through the modeling file. Query heads "
        "and FFN channels: totals over the 30 layers (each layer's are in hf_speed.json); attention's cost at 2048 tokens "
        "grows with the query heads kept, which equal parameter counts do not fix.",
    ]
    (RESULTS / "hf_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
