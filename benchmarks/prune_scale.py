"""prune_jax at Llama-3-8B widths on this machine: loading memory, pruning time, memory
and compilations per block.

A random-weight LLaMA with Llama-3-8B's block widths (D 4096, F 14 336, 32 query heads,
8 KV heads, head_dim 128; vocabulary cut to 32 000) and a few layers is written once as
a bf16 safetensors directory. Every measurement runs in its own process (peak RSS is per
process):
  - ``baseline``: the runtime's fixed RSS (python + jax + prune_jax, one tiny array);
  - ``load``: ``load_model(dir, dtype="bfloat16")`` (tensor by tensor, stored dtype), and
    with ``--old-tree DIR`` the loader of an older checkout (float32 host dict) for the ratio;
  - ``prune``: each run ``METHOD[+recover]:DTYPE`` of ``--runs`` (dap + full recovery,
    dap-obs, FLAP; float32 or bfloat16 parameters and streams) on every block, for each
    calibration size: seconds and peak RSS per block, XLA compilations, and with
    ``--stage-peaks`` the peak RSS inside each stage of a block (what holds the peak).

    python benchmarks/prune_scale.py                         # 2 layers, the default runs, calibration 16 × 128
    python benchmarks/prune_scale.py --runs dap+recover:float32 --calib 16x128,64x128 --stage-peaks
    python benchmarks/prune_scale.py --old-tree /tmp/base    # plus the old loader's memory

Results: benchmarks/results/prune_scale.{json,md}. Memory model in the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32000)


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM of its address space: unlike ``ru_maxrss``, it does
    not inherit the parent's peak through fork + exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak resident memory (MiB) inside a ``with`` block, sampled every 2 ms by a thread
    (``ru_maxrss`` cannot be reset, and imports leave a transient peak of their own).
    ``split(clock)`` reads the peak of one clock's current interval and starts its next;
    clocks are independent (``CLOCKS``: per block, per stage)."""

    CLOCKS = ("block", "stage")

    def __enter__(self):
        import threading

        self.before = self.peak = rss_mb()
        self._clocks = dict.fromkeys(self.CLOCKS, self.before)
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                now = rss_mb()
                self.peak = max(self.peak, now)
                for clock, peak in list(self._clocks.items()):
                    self._clocks[clock] = max(peak, now)
                self._stop.wait(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    def split(self, clock: str) -> float:
        """The peak of ``clock``'s interval since its last split (or the start); a new interval starts now."""
        now = rss_mb()
        peak = max(self._clocks[clock], now)
        self._clocks[clock] = now
        return peak


STAGES = ("dense_unit_scores", "_refit_first_maps", "_removed_by_score", "_remove_units", "_refit_second_map", "advance")


def label_stage_peaks(rss: PeakRSS, peaks: dict) -> None:
    """Wraps the stage functions of ``prune_jax.pruning.stage`` (looked up as module
    globals by ``prune_half``) so ``peaks[name]`` is the highest RSS seen while one runs."""
    import importlib

    prune_module, stage = (importlib.import_module(f"prune_jax.pruning.{name}") for name in ("prune", "stage"))

    def wrap(module, name):
        inner = getattr(module, name)

        def wrapped(*args, **kwargs):
            peaks["other"] = max(peaks.get("other", 0.0), rss.split("stage"))  # the interval before this stage
            try:
                return inner(*args, **kwargs)
            finally:
                peaks[name] = max(peaks.get(name, 0.0), rss.split("stage"))

        setattr(module, name, wrapped)

    for name in STAGES:
        wrap(prune_module if name == "dense_unit_scores" else stage, name)


def write_checkpoint(directory: Path, layers: int) -> dict:
    """Random N(0, 0.02²) bf16 weights, norms 1, as config.json + model.safetensors."""
    import ml_dtypes
    from safetensors.numpy import save_file

    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers, "rms_norm_eps": 1e-5,
              "rope_theta": 500000.0, "max_position_embeddings": 8192, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
              "hidden_act": "silu", **WIDTHS}  # fmt: skip
    if (directory / "config.json").is_file() and json.loads((directory / "config.json").read_text()) == config:
        return config
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    D, F, N, K, H, V = (WIDTHS[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size"))

    def normal(*shape):
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(ml_dtypes.bfloat16)

    tensors = {"model.embed_tokens.weight": normal(V, D), "lm_head.weight": normal(V, D), "model.norm.weight": np.ones(D, ml_dtypes.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": normal(N * H, D), p + "self_attn.k_proj.weight": normal(K * H, D),
            p + "self_attn.v_proj.weight": normal(K * H, D), p + "self_attn.o_proj.weight": normal(D, N * H),
            p + "mlp.gate_proj.weight": normal(F, D), p + "mlp.up_proj.weight": normal(F, D), p + "mlp.down_proj.weight": normal(D, F),
            p + "input_layernorm.weight": np.ones(D, ml_dtypes.bfloat16), p + "post_attention_layernorm.weight": np.ones(D, ml_dtypes.bfloat16),
        })  # fmt: skip
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return config


def child(args) -> dict:
    """One measurement in this process; returns its JSON row."""
    if args.child == "baseline":
        import jax.numpy as jnp

        import prune_jax.pruning  # noqa: F401

        jnp.ones(4).block_until_ready()
        return {"peak_rss_mb": peak_rss_mb()}
    if args.child == "load":
        if args.tree:
            sys.path.insert(0, args.tree)
        import jax.numpy as jnp

        from prune_jax.models.llama import load_model
        from prune_jax.models.llama.modeling import num_parameters

        jnp.ones(4).block_until_ready()  # the runtime is up before the measurement starts
        with PeakRSS() as rss:
            start = time.perf_counter()
            model, _ = load_model(args.dir, dtype="bfloat16", tokenizer=False)
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "rss_before_mb": rss.before, "peak_rss_mb": rss.peak, "rss_after_mb": rss_mb(),
                "parameters": num_parameters(model)}
    # prune
    import jax

    from prune_jax.models.llama import load_model
    from prune_jax.pruning import Budget, PruneConfig, Recovery, prune

    method, recover = args.method.removesuffix("+recover"), args.method.endswith("+recover")

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append(secs) if name == "/jax/core/compile/backend_compile_duration" else None)
    model, _ = load_model(args.dir, dtype=args.dtype, tokenizer=False)
    layers = model.config.num_layers
    tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, (args.samples, args.seq_len))
    stamps, block_peaks, stage_peaks = [], [], {}

    def block_done(done, total):
        stamps.append(time.perf_counter())
        block_peaks.append(rss.split("block"))

    with PeakRSS() as rss:
        if args.stage_peaks:
            label_stage_peaks(rss, stage_peaks)
        start = time.perf_counter()
        config = PruneConfig(method=method, budget=Budget(sparsity=0.2, layer_range=(0, layers)), recovery=Recovery(enabled=recover),
                             batch_size=args.batch)
        model, report = prune(model, tokens, config, progress=block_done)
        seconds = time.perf_counter() - start
    blocks = np.diff([start] + stamps).tolist()
    return {"method": args.method, "samples": args.samples, "seq_len": args.seq_len, "dtype": args.dtype, "seconds": seconds,
            "block_seconds": blocks, "block_peak_rss_mb": block_peaks, "stage_peak_rss_mb": stage_peaks,
            "compilations": len(compiles), "compile_seconds": float(sum(compiles)), "peak_rss_mb": rss.peak,
            "rss_after_load_mb": rss.before, "layer_intermediate": list(report.layer_intermediate),
            "layer_heads": [list(h) for h in report.layer_heads]}  # fmt: skip


def run_child(*extra: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"child {extra} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--runs", default="dap+recover:float32,dap-obs:float32,dap-obs:bfloat16,flap:float32",
                        help="METHOD[+recover]:DTYPE pruning runs, comma-separated")
    parser.add_argument("--calib", default="16x128", help="S×T calibration sizes, comma-separated")
    parser.add_argument("--stage-peaks", action="store_true", help="record the peak RSS inside each stage of a block")
    parser.add_argument("--batch", type=int, default=8, help="sequences per forward chunk")
    parser.add_argument("--dir", default=str(Path.home() / ".cache" / "prune_jax" / "llama3-8b-widths"))
    parser.add_argument("--old-tree", default=None, help="a checkout whose loader to compare (e.g. a worktree of an older commit)")
    parser.add_argument("--child", choices=["baseline", "load", "prune"])
    parser.add_argument("--tree", default=None)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--method", default="dap+recover")
    parser.add_argument("--label", default="", help="a name for this run's prune rows (e.g. the code version)")
    parser.add_argument("--append", action="store_true", help="keep the prune rows (and loading rows) of the results file, add these")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    directory = Path(args.dir) / f"layers{args.layers}"
    config = write_checkpoint(directory, args.layers)
    D, F, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    largest = max(V * D, F * D)
    out_json = RESULTS / "prune_scale.json"
    previous = json.loads(out_json.read_text()) if args.append and out_json.is_file() else {}
    result = {"config": config, "checkpoint_bytes": (directory / "model.safetensors").stat().st_size, "largest_tensor_params": largest}
    result["baseline"] = run_child("--child", "baseline")
    print("baseline", result["baseline"], flush=True)
    result["load"] = run_child("--child", "load", "--dir", str(directory))
    print("load", result["load"], flush=True)
    if "load_old" in previous:
        result["load_old"] = previous["load_old"]
    if args.old_tree:
        result["load_old"] = run_child("--child", "load", "--dir", str(directory), "--tree", args.old_tree)
        print("load (old loader)", result["load_old"], flush=True)
    result["prune"] = previous.get("prune", [])
    for run in [r for r in args.runs.split(",") if r]:
        method, _, dtype = run.partition(":")
        for size in [c for c in args.calib.split(",") if c]:
            s, t = (int(v) for v in size.lower().split("x"))
            row = {"label": args.label, **run_child("--child", "prune", "--dir", str(directory), "--samples", str(s), "--seq-len", str(t),
                                                    "--batch", str(args.batch), "--method", method, "--dtype", dtype or "float32",
                                                    *(["--stage-peaks"] if args.stage_peaks else []))}
            result["prune"].append(row)
            print("prune", {k: v for k, v in row.items() if k not in ("layer_heads",)}, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from skmm_jax.common.io import save_json_atomic

    save_json_atomic(out_json, result)
    write_report(result)


def write_report(result: dict) -> None:
    config, base = result["config"], result["baseline"]["peak_rss_mb"]
    params = result["load"]["parameters"]
    bf16_mb = 2 * params / 2**20
    largest_mb = 2 * result["largest_tensor_params"] / 2**20
    lines = [
        f"# prune_jax at Llama-3-8B widths ({config['num_hidden_layers']} layers, random bf16 weights)", "",
        "`python benchmarks/prune_scale.py` on this 2-core CPU; each row in its own process.", "",
        f"Parameters {params:,} (bf16 {bf16_mb:,.0f} MiB; largest tensor {largest_mb:,.0f} MiB); runtime baseline RSS {base:,.0f} MiB.", "",
        "| loading | seconds | RSS before MiB | peak MiB | peak − before MiB | bytes / parameter | after MiB |", "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, key in (("ours: tensor by tensor, stored dtype", "load"), ("before (float32 host dict)", "load_old")):
        if key in result:
            row = result[key]
            extra = row["peak_rss_mb"] - row["rss_before_mb"]
            lines.append(f"| {name} | {row['seconds']:.1f} | {row['rss_before_mb']:,.0f} | {row['peak_rss_mb']:,.0f} | {extra:,.0f} | "
                         f"{extra * 2**20 / params:.2f} | {row['rss_after_mb']:,.0f} |")
    limit = bf16_mb + 1.3 * largest_mb
    ours = result["load"]["peak_rss_mb"] - result["load"]["rss_before_mb"]
    lines += ["", f"Target: peak − before ≤ bf16 bytes + 1.3 × largest tensor = {bf16_mb:,.0f} + 1.3 × {largest_mb:,.0f} = {limit:,.0f} MiB: "
              f"{ours:,.0f} MiB, {'met' if ours <= limit else 'missed'}.", "",
              "| run | method | calibration | dtype | prune s | s / block | peak MiB / block | compilations | compile s | "
              "RSS after load MiB | peak MiB | peak − after load MiB |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in result["prune"]:
        block_peaks = ", ".join(f"{b:,.0f}" for b in row.get("block_peak_rss_mb", [])) or "–"
        lines.append(f"| {row.get('label', '')} | {row.get('method', 'dap+recover')} | {row['samples']} × {row['seq_len']} | {row['dtype']} | "
                     f"{row['seconds']:.0f} | {', '.join(f'{b:.0f}' for b in row['block_seconds'])} | {block_peaks} | {row['compilations']} | "
                     f"{row['compile_seconds']:.1f} | {row['rss_after_load_mb']:,.0f} | {row['peak_rss_mb']:,.0f} | "
                     f"{row['peak_rss_mb'] - row['rss_after_load_mb']:,.0f} |")  # fmt: skip
    staged = [row for row in result["prune"] if row.get("stage_peak_rss_mb")]
    if staged:
        names = list(dict.fromkeys(name for row in staged for name in row["stage_peak_rss_mb"]))
        lines += ["", "Peak RSS − RSS after load (MiB) inside each stage (the innermost stage running; ``--stage-peaks``):", "",
                  "| run | method | calibration | dtype | " + " | ".join(names) + " |", "|---|---|---|---|" + "---:|" * len(names)]
        for row in staged:
            cells = [f"{row['stage_peak_rss_mb'][n] - row['rss_after_load_mb']:,.0f}" if n in row["stage_peak_rss_mb"] else "–" for n in names]
            lines.append(f"| {row.get('label', '')} | {row.get('method', 'dap+recover')} | {row['samples']} × {row['seq_len']} | {row['dtype']} | "
                         + " | ".join(cells) + " |")
    D = config["hidden_size"]
    lines += ["", "Memory per calibration token (slope of peak − after load between a run's smallest and largest calibration):", ""]
    for label, method, dtype in dict.fromkeys((r.get("label", ""), r.get("method", "dap+recover"), r["dtype"]) for r in result["prune"]):
        rows = sorted((r for r in result["prune"] if (r.get("label", ""), r.get("method", "dap+recover"), r["dtype"]) == (label, method, dtype)),
                      key=lambda r: r["samples"] * r["seq_len"])
        if len(rows) > 1 and rows[-1]["samples"] * rows[-1]["seq_len"] > rows[0]["samples"] * rows[0]["seq_len"]:
            grow = [(r["peak_rss_mb"] - r["rss_after_load_mb"]) * 2**20 for r in (rows[0], rows[-1])]
            per_token = (grow[1] - grow[0]) / (rows[-1]["samples"] * rows[-1]["seq_len"] - rows[0]["samples"] * rows[0]["seq_len"])
            lines.append(f"- {label or 'unlabelled'} ({method}, {dtype}): {per_token / 1e3:.1f} KB per token = "
                         f"{per_token / (4 * D):.2f}·D float32 values")
    lines += ["", ("Memory model (bytes; b the stream dtype's bytes): parameters b·P + two calibration streams 2·S·T·D·b (advanced "
                   "in place) + the dense block b·P_block (refit targets) + one chunk's activations ≈ 4·B·T·F·4 + one refit "
                   "≈ 4·((k + 6)·C·O + (k + 5)·C²) with λ by k-fold CV (the default k = 4; 4·(6·C·O + 4·C²) for one "
                   "hold-out, --recover-folds 1; C inputs, O outputs; XLA's memory analysis of the solve, ridge toward current).")]
    F = config["intermediate_size"]
    obs_mb = {name: 4 * (3 * c * c + 3 * c * D) / 2**20 for name, c in (("down_proj", F), ("o_proj", config["num_attention_heads"] * config["head_dim"]))}
    lines += ["", ("dap-obs instead holds, per map with C inputs and D outputs (float32): the input Gram H, its damped Cholesky "
                   "factor or P = H⁻¹ and one downdate product (3·C²) and the weights, their compensated copy and the result "
                   "(3·C·D), one map at a time: " + ", ".join(f"{name} {mb:,.0f} MiB" for name, mb in obs_mb.items())
                   + ". It holds one calibration stream (two while the \"global\" allocation scores the dense stream first).")]
    (RESULTS / "prune_scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
