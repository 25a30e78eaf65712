"""Per-sample gradients + sketch: skmm_jax against torch.func, same model, same run.

The finetuned model is the FT setting of the real-task benchmark: the last decoder block's SwiGLU MLP of
SmolLM2-135M plus a linear classification head, applied to cached layer inputs
x [T, D] of one passage,

    x_n = RMSNorm(x),   y = x + (silu(x_n W_G) ⊙ (x_n W_U)) W_D,
    logits = mean_t RMSNorm(y)_t · W_head + b,   loss = cross-entropy(logits, label),

with D = 576, F = 1536, T = 64, C = 100 classes. Trainable: W_G, W_U [D, F],
W_D [F, D], W_head [D, C], b [C] (r = 2,711,908); the two RMSNorm scales are frozen.
Weights are random (their values do not change the cost), float32.

Compared, in ONE process, interleaved round by round (the machine is shared, so the
order rotates every round and ratios are taken within a round):

* ``torch.func + dense`` — the authors' approach: ``torch.func.vmap(torch.func.grad(loss))``
  over ``functional_call`` of an ``nn.Module`` (HF-style ``nn.Linear`` layers), the
  per-sample gradients flattened to [B, r] and multiplied by a dense Gaussian Γ [r, m]
  (``torch.matmul``), chunk by chunk;
* ``ours + dense`` — ``skmm_jax.gradients.sketch_per_sample_grads`` with the SAME Γ
  (its rows permuted to our parameter order and kernel layout, so both sides compute
  the same G̃ = GΓ up to rounding): apples to apples;
* ``ours + kronecker`` — ``make_pytree_sketch("kronecker")``: Γ_a ⊗ Γ_b per kernel,
  never materialising r × m;
* ``ours + kronecker, factored`` — the same Γ_a ⊗ Γ_b computed from each layer's
  inputs and output gradients (``sketch_per_sample_grads(..., factored=True)``):
  no per-sample kernel gradient is formed;
* ``ours + countsketch`` — ``make_pytree_sketch("countsketch")`` (shift hashing), one
  ±1 per gradient entry, no r × m either.

Throughput is samples/s of the whole call (host data in, [N, m] on the host out), the
median over ``--repeats`` rounds after warm-up; "× torch.func" is the median over rounds
of (ours / torch) measured in the same round. Each configuration first tries every
chunk size of ``--chunk-sizes`` (the same candidates for both sides: one warm-up chunk,
then one timed chunk) and keeps its fastest; the warm-up (compilation for JAX, the
first pass through functorch's transforms for torch) is reported separately. Before
timing, the unsketched per-sample gradients of both sides are compared on a few
samples (same weights); the sketched rows of the two dense configurations are compared
after the first round.

    python benchmarks/per_sample_grads.py                      # pool 256, m 128, 4 rounds (~6 min on 2 busy cores)
    python benchmarks/per_sample_grads.py --pool 2048 --repeats 5 --m 256   # a bigger machine

Writes benchmarks/results/per_sample_grads.{json,md,png} (atomically).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from skmm_jax.common.io import atomic_write, save_json_atomic  # noqa: E402
from skmm_jax.common.kernels import project  # noqa: E402
from skmm_jax.common.pytree import pytree_dataclass  # noqa: E402
from skmm_jax.gradients import labelled_loss, per_sample_grads, sketch_per_sample_grads  # noqa: E402
from skmm_jax.sketch import make_pytree_sketch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# SmolLM2-135M's hidden and MLP widths, its RMSNorm epsilon; one passage of T tokens.
D_MODEL, D_FF, NUM_CLASSES, TOKENS, RMS_EPS = 576, 1536, 100, 64, 1e-5

# Our leaf (jax.tree path) → the torch parameter holding the same numbers, and whether
# torch stores it transposed (nn.Linear keeps [out, in]; our kernels are [in, out]).
JAX_TO_TORCH = {
    "down": ("down_proj.weight", True),
    "gate": ("gate_proj.weight", True),
    "head/bias": ("head.bias", False),
    "head/kernel": ("head.weight", True),
    "up": ("up_proj.weight", True),
}

TORCH = "torch.func + dense"
OURS_DENSE = "ours + dense"
OURS_KRONECKER = "ours + kronecker"
OURS_COUNTSKETCH = "ours + countsketch"
OURS_FACTORED = "ours + kronecker, factored"


# ------------------------------------------------------------------------ JAX side


def rms_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
    """x / √(mean(x²) + ε) · scale over the last axis (LlamaRMSNorm)."""
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * scale


def mlp_head_logits(params: dict, x: jax.Array, frozen: dict) -> jax.Array:
    """One passage's logits [C] from its cached block input x [T, D]."""
    h = rms_norm(x, frozen["mlp_norm"])  # [T, D]
    gate = project("TD,DF->TF", h, params["gate"])
    up = project("TD,DF->TF", h, params["up"])
    y = x + project("TF,FD->TD", jax.nn.silu(gate) * up, params["down"])  # [T, D]
    pooled = jnp.mean(rms_norm(y, frozen["final_norm"]), axis=0)  # [D]
    return project("D,DC->C", pooled, params["head"]["kernel"]) + params["head"]["bias"]


LOSS = labelled_loss(mlp_head_logits)  # hashable: one compilation per (sketch, chunk size)


class MatrixSketch:
    """A materialised Γ [r, m] applied as one matmul: the baseline's projection, in JAX.

    Attributes:
      gamma: Γ [r, m] float32.
    """

    gamma: jax.Array

    @property
    def in_dim(self) -> int:
        return int(self.gamma.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.gamma.shape[1])

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("Br,rm->Bm", x, self.gamma)  # [B, m]


MatrixSketch = pytree_dataclass(MatrixSketch, meta_fields=())


def random_weights(seed: int) -> tuple[dict, dict]:
    """Trainable params and frozen norm scales, float32 NumPy, scaled 1/√fan_in."""
    rng = np.random.default_rng(seed)

    def kernel(fan_in: int, fan_out: int) -> np.ndarray:
        return (rng.standard_normal((fan_in, fan_out), np.float32) / np.float32(math.sqrt(fan_in))).astype(np.float32)

    params = {
        "gate": kernel(D_MODEL, D_FF),
        "up": kernel(D_MODEL, D_FF),
        "down": kernel(D_FF, D_MODEL),
        "head": {"kernel": kernel(D_MODEL, NUM_CLASSES), "bias": 0.1 * rng.standard_normal(NUM_CLASSES, np.float32)},
    }
    # Not all ones, so that a mismatch in where the scale is applied would show in parity.
    frozen = {
        "mlp_norm": (1.0 + 0.1 * rng.standard_normal(D_MODEL)).astype(np.float32),
        "final_norm": (1.0 + 0.1 * rng.standard_normal(D_MODEL)).astype(np.float32),
    }
    return params, frozen


def leaf_table(params: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(path, shape) of every trainable leaf in jax.tree order (the flattening order of G)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [(jax.tree_util.keystr(path, simple=True, separator="/"), tuple(leaf.shape)) for path, leaf in flat]


# ---------------------------------------------------------------------- torch side


def build_torch(params: dict, frozen: dict, device: str):
    """The same block + head as an ``nn.Module`` (HF LlamaMLP / LlamaRMSNorm layout), weights copied.

    Returns:
      ``(per_sample_grad_fn, trainable, names)``: ``per_sample_grad_fn(trainable, x [B, T, D],
      y [B])`` is ``vmap(grad(loss))``, giving a dict of [B, *shape] gradients; ``trainable``
      holds detached copies of the trainable parameters; ``names`` their order.
    """
    import torch
    from torch import nn
    from torch.func import functional_call, grad, vmap

    class RMSNorm(nn.Module):
        def __init__(self, scale: np.ndarray):
            super().__init__()
            self.weight = nn.Parameter(torch.from_numpy(scale.copy()), requires_grad=False)

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS))

    class MLPHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp_norm = RMSNorm(frozen["mlp_norm"])
            self.gate_proj = nn.Linear(D_MODEL, D_FF, bias=False)
            self.up_proj = nn.Linear(D_MODEL, D_FF, bias=False)
            self.down_proj = nn.Linear(D_FF, D_MODEL, bias=False)
            self.final_norm = RMSNorm(frozen["final_norm"])
            self.head = nn.Linear(D_MODEL, NUM_CLASSES)

        def forward(self, x):  # [B, T, D] → [B, C]
            h = self.mlp_norm(x)
            y = x + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))
            return self.head(self.final_norm(y).mean(dim=1))

    model = MLPHead()
    ours = dict(leaf_table(params))
    flat = {path: np.asarray(leaf) for path, leaf in zip(ours, jax.tree.leaves(params))}
    with torch.no_grad():
        for path, (name, transposed) in JAX_TO_TORCH.items():
            value = flat[path].T if transposed else flat[path]
            model.get_parameter(name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    model.to(device)
    trainable = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def loss(p, x, y):  # one sample: x [T, D], y []
        logits = functional_call(model, p, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, y.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0)), trainable, list(trainable)


def shared_gaussian(seed: int, params: dict, trainable: dict, m: int, device: str):
    """One dense Gaussian Γ, N(0, 1/m), in both sides' coordinates.

    Drawn once (torch's generator is the fastest here) in torch's flattening order
    (``named_parameters``, [out, in] kernels); our copy has the rows of each leaf
    permuted to jax.tree order and [in, out] layout, so g_torch Γ_torch = g_ours Γ_ours
    for the same sample.

    Returns:
      ``(gamma_torch [r, m] torch tensor on device, gamma_ours [r, m] jax array)``.
    """
    import torch

    r = sum(p.numel() for p in trainable.values())
    generator = torch.Generator().manual_seed(seed)
    gamma_torch = torch.randn(r, m, generator=generator).mul_(1.0 / math.sqrt(m))  # [r, m]
    offsets, start = {}, 0
    for name, p in trainable.items():
        offsets[name] = (start, tuple(p.shape))
        start += p.numel()
    source = gamma_torch.numpy()
    gamma_ours = np.empty((r, m), np.float32)
    row = 0
    for path, shape in leaf_table(params):
        name, transposed = JAX_TO_TORCH[path]
        begin, torch_shape = offsets[name]
        size = math.prod(shape)
        rows = source[begin : begin + size]
        if transposed:  # torch row (o, i) ↔ our row (i, o)
            rows = rows.reshape(*torch_shape, m).transpose(1, 0, 2).reshape(size, m)
        gamma_ours[row : row + size] = rows
        row += size
    gamma_ours = jax.device_put(gamma_ours)
    return gamma_torch.to(device), gamma_ours


# ------------------------------------------------------------------------- timing


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖_F / ‖b‖_F in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def gradient_parity(params, frozen, x, y, torch_grads, trainable, samples: int) -> dict:
    """Max over leaves and samples of ‖g_ours − g_torch‖ / ‖g_torch‖ (unsketched)."""
    import torch

    ours = per_sample_grads(LOSS, params, (jnp.asarray(x[:samples]), jnp.asarray(y[:samples])), frozen=frozen)
    ours = dict(zip([p for p, _ in leaf_table(params)], jax.tree.leaves(ours)))
    theirs = torch_grads(trainable, torch.from_numpy(x[:samples]), torch.from_numpy(y[:samples]).long())
    per_leaf = {}
    for path, (name, transposed) in JAX_TO_TORCH.items():
        reference = theirs[name].cpu().numpy()  # [S, *torch shape]
        if transposed:
            reference = np.swapaxes(reference, 1, 2)
        ours_leaf = np.asarray(ours[path])
        per_leaf[path] = max(relative_error(ours_leaf[s], reference[s]) for s in range(samples))
    return {"samples": samples, "max_relative_error": max(per_leaf.values()), "per_leaf": per_leaf}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=256, help="samples per timed call (N)")
    parser.add_argument("--m", type=int, default=128, help="sketch dimension")
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds (each runs every configuration once)")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[16, 32, 64, 128],
                        help="chunk-size candidates, the same for every configuration")
    parser.add_argument("--parity-samples", type=int, default=4, help="samples whose unsketched gradients are compared")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for flag in ("pool", "m", "repeats", "parity_samples"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if any(c <= 0 for c in args.chunk_sizes):
        parser.error(f"--chunk-sizes must all be positive, got {args.chunk_sizes}")
    if args.pool < max(args.chunk_sizes):
        parser.error(f"--pool {args.pool} is smaller than the largest chunk size {max(args.chunk_sizes)}")
    return args


def tune_chunk_sizes(runners: dict, candidates: list[int]) -> dict[str, dict]:
    """Tries every chunk size for every configuration; keeps each one's fastest.

    At each size, a first call on one chunk is the warm-up (JAX compiles for the new
    shape; torch's functorch transforms run for the first time), then a second call on
    one chunk is timed. Interleaved: every configuration at one size before the next.
    """
    rows = {name: {"configuration": name, "side": "torch" if name == TORCH else "ours", "tuning": []}
            for name in runners}
    for chunk in candidates:
        for name, run in runners.items():
            warmup = seconds(lambda: run(chunk, chunk))
            speed = chunk / seconds(lambda: run(chunk, chunk))
            rows[name]["tuning"].append({"chunk_size": chunk, "warmup_seconds": warmup, "samples_per_second": speed})
            print(f"  tune {name:20s} chunk {chunk:3d}: warm-up {warmup:6.2f} s, {speed:6.1f} samples/s", flush=True)
    for row in rows.values():
        best = max(row["tuning"], key=lambda t: t["samples_per_second"])
        row["chunk_size"] = best["chunk_size"]
        row["warmup_seconds"] = best["warmup_seconds"]
        # The first call at this size minus a steady call of the same size (one chunk each).
        row["compile_seconds"] = max(0.0, best["warmup_seconds"] - best["chunk_size"] / best["samples_per_second"])
    return rows


def main() -> None:
    args = parse_args()
    # Full float32 matmuls on both sides (torch's default; JAX would use TF32 on a GPU).
    jax.config.update("jax_default_matmul_precision", "float32")
    import torch

    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)  # XLA's CPU client also uses every core it may run on
    load_start = os.getloadavg()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    params_np, frozen_np = random_weights(args.seed)
    params, frozen = jax.device_put((params_np, frozen_np))
    rng = np.random.default_rng(args.seed + 1)
    x = rng.standard_normal((args.pool, TOKENS, D_MODEL), np.float32)  # cached block inputs [N, T, D]
    y = rng.integers(0, NUM_CLASSES, args.pool).astype(np.int32)  # labels [N]
    x_torch, y_torch = torch.from_numpy(x), torch.from_numpy(y).long()
    r = sum(math.prod(shape) for _, shape in leaf_table(params))
    print(f"r = {r:,}, pool {args.pool}, m = {args.m}, {threads} threads, torch on {device}", flush=True)

    torch_grads, trainable, names = build_torch(params_np, frozen_np, device)
    parity = gradient_parity(params, frozen, x, y, torch_grads, trainable, args.parity_samples)
    print(f"gradient parity ({parity['samples']} samples): max relative error {parity['max_relative_error']:.2e}")

    start = time.perf_counter()
    gamma_torch, gamma_ours = shared_gaussian(args.seed + 2, params, trainable, args.m, device)
    gamma_seconds = time.perf_counter() - start
    gib = r * args.m * 4 / 2**30
    print(f"dense Γ [{r:,} × {args.m}] ({gib:.2f} GiB per side) in {gamma_seconds:.1f} s", flush=True)

    key = jax.random.key(args.seed + 3)
    sketches = {
        OURS_DENSE: MatrixSketch(gamma_ours),
        OURS_KRONECKER: make_pytree_sketch("kronecker", jax.random.fold_in(key, 0), params, args.m),
        OURS_COUNTSKETCH: make_pytree_sketch("countsketch", jax.random.fold_in(key, 1), params, args.m),
    }

    # Seconds torch spends in vmap(grad) and in flatten + projection during its last
    # call (eager, so the split is exact on a CPU; synchronised on a GPU).
    torch_phases = {"gradients": 0.0, "projection": 0.0}

    def run_torch(n: int, chunk: int) -> np.ndarray:
        out = torch.empty(n, args.m)
        torch_phases.update(gradients=0.0, projection=0.0)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            start = time.perf_counter()
            grads = torch_grads(trainable, x_torch[lo:hi].to(device), y_torch[lo:hi].to(device))
            sync()
            middle = time.perf_counter()
            flat = torch.cat([grads[name].reshape(hi - lo, -1) for name in names], dim=1)  # [B, r]
            out[lo:hi] = torch.matmul(flat, gamma_torch).cpu()  # [B, m]
            sync()
            torch_phases["gradients"] += middle - start
            torch_phases["projection"] += time.perf_counter() - middle
        return out.numpy()

    def run_ours(sketch, factored: bool = False):
        def run(n: int, chunk: int) -> np.ndarray:
            return sketch_per_sample_grads(LOSS, params, (x[:n], y[:n]), sketch, frozen=frozen, chunk_size=chunk, factored=factored)

        return run

    runners = {TORCH: run_torch, **{name: run_ours(sketch) for name, sketch in sketches.items()}}
    # The same Γ_a ⊗ Γ_b as "ours + kronecker", computed from the layers' inputs and
    # output gradients (skmm_jax.common.kernels.ProbedKernel): no [B, r] gradient is formed.
    runners[OURS_FACTORED] = run_ours(sketches[OURS_KRONECKER], factored=True)
    rows = tune_chunk_sizes(runners, args.chunk_sizes)

    # Timed rounds: every configuration once per round, the order rotated each round.
    order, outputs = list(runners), {}
    for round_index in range(args.repeats):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            row = rows[name]
            start = time.perf_counter()
            out = runners[name](args.pool, row["chunk_size"])
            speed = args.pool / (time.perf_counter() - start)
            row.setdefault("samples_per_second_runs", []).append(speed)
            outputs.setdefault(name, out)
            if name == TORCH:
                row.setdefault("phase_seconds_runs", []).append(dict(torch_phases))
            print(f"  round {round_index + 1}/{args.repeats} {name:20s} {speed:7.1f} samples/s", flush=True)
    sketch_parity = relative_error(outputs[OURS_DENSE], outputs[TORCH])
    factored_parity = relative_error(outputs[OURS_FACTORED], outputs[OURS_KRONECKER])
    print(f"factored vs materialised kronecker (same Γ): relative error {factored_parity:.2e}")
    print(f"sketch parity (same Γ, {args.pool} samples): relative error {sketch_parity:.2e}")

    torch_runs = rows[TORCH]["samples_per_second_runs"]
    for row in rows.values():
        runs = row["samples_per_second_runs"]
        row["samples_per_second"] = statistics.median(runs)
        row["ratio_runs"] = [ours / theirs for ours, theirs in zip(runs, torch_runs)]
        row["ratio_vs_torch"] = statistics.median(row["ratio_runs"])
    phases = rows[TORCH]["phase_seconds_runs"]
    torch_gradients_only = {
        "samples_per_second": statistics.median(args.pool / p["gradients"] for p in phases),
        "projection_fraction": statistics.median(p["projection"] / (p["gradients"] + p["projection"]) for p in phases),
    }
    print(f"torch.func gradients alone: {torch_gradients_only['samples_per_second']:.1f} samples/s; flatten +"
          f" projection {100 * torch_gradients_only['projection_fraction']:.0f} % of the dense baseline's time")

    payload = {
        "command": " ".join(["python", "benchmarks/per_sample_grads.py"] + sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "platform": platform.platform(),
            "processor": platform.machine(),
            "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg()),
        },
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "torch_device": device,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "model": {
            "d_model": D_MODEL,
            "d_ff": D_FF,
            "num_classes": NUM_CLASSES,
            "tokens": TOKENS,
            "dtype": "float32",
            "trainable": {path: list(shape) for path, shape in leaf_table(params)},
            "frozen": ["mlp_norm", "final_norm"],
            "r": r,
        },
        "pool": args.pool,
        "m": args.m,
        "repeats": args.repeats,
        "chunk_size_candidates": args.chunk_sizes,
        "dense_gamma_seconds": gamma_seconds,
        "gradient_parity": parity,
        "sketch_parity_relative_error": sketch_parity,
        "factored_parity_relative_error": factored_parity,
        "target_ratio": 1.5,
        "torch_gradients_only": torch_gradients_only,
        "configurations": list(rows.values()),
    }
    write_outputs(payload)
    print(f"wrote {RESULTS / 'per_sample_grads.json'}, .md, .png", file=sys.stderr)


def write_outputs(payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json_atomic(RESULTS / "per_sample_grads.json", payload)
    machine, model, rows = payload["machine"], payload["model"], payload["configurations"]
    load = f"load average {machine['load_average_start'][0]:.1f} → {machine['load_average_end'][0]:.1f}"
    by_name = {row["configuration"]: row for row in rows}
    gradients_only = payload["torch_gradients_only"]
    parity = payload["gradient_parity"]
    countsketch_over_gradients = by_name[OURS_COUNTSKETCH]["samples_per_second"] / gradients_only["samples_per_second"]
    lines = [
        "# Per-sample gradients + sketch: skmm_jax vs torch.func",
        "",
        f"Command: `{payload['command']}` · {machine['threads']} threads ({machine['cpu_count']} CPUs, "
        f"{machine['processor']}, {load}) · jax {payload['jax']} ({payload['jax_backend']}) · "
        f"torch {payload['torch']} ({payload['torch_device']}) · {payload['date']}",
        "",
        f"SmolLM2-135M's last SwiGLU MLP (D = {model['d_model']}, F = {model['d_ff']}) + linear head "
        f"(C = {model['num_classes']}) on cached inputs of T = {model['tokens']} tokens, float32; "
        f"r = {model['r']:,} trainable parameters; N = {payload['pool']} samples per call, m = {payload['m']}. "
        f"samples/s: median over {payload['repeats']} interleaved rounds (min–max); × torch.func: median over "
        "rounds of ours / torch in the same round. Chunk: the fastest of "
        f"{payload['chunk_size_candidates']} per row; warm-up: the first call at that size (one chunk); "
        "compile ≈ warm-up − one steady chunk.",
        "",
        "| configuration | chunk | samples/s | × torch.func | warm-up s | compile s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        runs = row["samples_per_second_runs"]
        lines.append(
            f"| {row['configuration']} | {row['chunk_size']} | {row['samples_per_second']:.1f} "
            f"({min(runs):.1f}–{max(runs):.1f}) | {row['ratio_vs_torch']:.2f}× | {row['warmup_seconds']:.2f} | "
            f"{row['compile_seconds']:.2f} |"
        )
    lines += [
        "",
        f"Target: ours ≥ {payload['target_ratio']}× torch.func. Gradient parity (unsketched per-sample "
        f"gradients, same weights, {parity['samples']} samples): max relative error "
        f"{parity['max_relative_error']:.1e}. "
        f"Sketch parity (ours + dense vs torch.func + dense, same Γ, all {payload['pool']} rows): "
        f"{payload['sketch_parity_relative_error']:.1e}. Factored vs materialised Kronecker (same Γ_a ⊗ Γ_b): "
        f"{payload.get('factored_parity_relative_error', float('nan')):.1e}.",
        "",
        f"Where the baseline's time goes (same rounds): torch's vmap(grad) alone runs at "
        f"{gradients_only['samples_per_second']:.1f} samples/s, and flatten + dense projection take "
        f"{100 * gradients_only['projection_fraction']:.0f} % of torch.func + dense; ours + countsketch "
        f"(gradients + a one-pass sketch) is {countsketch_over_gradients:.2f}× "
        "torch's gradients alone.",
        "",
        "Chunk-size tuning (samples/s of one chunk, after a warm-up chunk of the same size):",
        "",
        "| configuration | " + " | ".join(f"chunk {t['chunk_size']}" for t in rows[0]["tuning"]) + " |",
        "|---|" + "---:|" * len(rows[0]["tuning"]),
    ]
    for row in rows:
        speeds = " | ".join(f"{t['samples_per_second']:.1f}" for t in row["tuning"])
        lines.append(f"| {row['configuration']} | {speeds} |")
    text = "\n".join(lines) + "\n"
    atomic_write(RESULTS / "per_sample_grads.md", lambda f: f.write(text.encode()))
    plot(payload)


def plot(payload: dict) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["configurations"]
    medians = [row["samples_per_second"] for row in rows]
    low = [m - min(row["samples_per_second_runs"]) for m, row in zip(medians, rows)]
    high = [max(row["samples_per_second_runs"]) - m for m, row in zip(medians, rows)]
    colors = ["tab:gray" if row["side"] == "torch" else "tab:blue" for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bars = ax.bar([row["configuration"] for row in rows], medians, yerr=[low, high], capsize=4, color=colors)
    for bar, row in zip(bars, rows):  # the ratio above each bar's error bar
        top = max(row["samples_per_second_runs"])
        ax.annotate(f"{row['ratio_vs_torch']:.2f}×", (bar.get_x() + bar.get_width() / 2, top),
                    xytext=(0, 5), textcoords="offset points", ha="center", fontsize=9)
    ax.set_ylabel("samples/s (median, min–max)")
    ax.set_title(f"Per-sample gradients + sketch, r = {payload['model']['r']:,} → m = {payload['m']}, "
                 f"{payload['machine']['threads']} threads ({payload['jax_backend']})", fontsize=10)
    ax.set_ylim(0, max(m + h for m, h in zip(medians, high)) * 1.18)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    atomic_write(RESULTS / "per_sample_grads.png", lambda f: f.write(buffer.getvalue()))


if __name__ == "__main__":
    main()
