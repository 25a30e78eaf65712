"""One prepared accelerator check of both libraries: parity, forward speed, SkMM at N = 10⁶, pruning at 8B widths.

Written to run ONCE on a borrowed GPU (one H200, ~10 minutes of device time), so every
part is isolated, bounded in time, and saved the moment it is measured:

    python benchmarks/device_check.py                          # full sizes, on the GPU: ≈ 6 min, ≤ 7.5 min
    python benchmarks/device_check.py --cpu-smoke              # tiny sizes on the CPU (CI): ≈ 1 min, results in a temp dir
    python benchmarks/device_check.py --sections parity,skmm --section-seconds prune=200
    python benchmarks/device_check.py --sections prune --calib-samples 32

Sections, cheapest and most telling first (``--sections`` picks a subset, in this order):

  parity   A random GQA LLaMA (D 512, 4 layers, 8 query / 2 KV heads, head_dim 64, F 1408,
           vocabulary 4096, untied, llama3 RoPE) built by transformers with a fixed torch
           seed, saved with ``save_pretrained`` and read back by ``load_hf_dir`` in f32 and
           bf16: logits and perplexity on random tokens against transformers on the same
           device, for both attention implementations ("chunked", "dot_product"); f32 at
           "highest" matmul precision (what the parity tests use) and at the default one
           (TF32 on NVIDIA GPUs).
  forward  bf16 forward at Llama-3-8B widths (D 4096, F 14 336, 32 / 8 heads, head_dim 128,
           vocabulary 128 256 = Llama-3's), 4 layers, random weights made on the device,
           for 1×2048, 1×8192 and 8×2048 tokens: ours ("chunked", "dot_product", full
           float32 logits) against transformers' ``LlamaForCausalLM`` with sdpa attention
           (bf16 logits, ``use_cache=False``) under ``torch.no_grad()``.
  skmm     ``select("skmm")`` (its defaults: greedy draw, no relaxation) at N = 10⁶,
           m = 512, n = 10⁴ on a device-generated low-rank pool (first call with the
           compile, second without); then per-sample gradients + sketch on
           benchmarks/per_sample_grads.py's model (SwiGLU MLP + head, r = 2.7 M) against
           ``torch.func.vmap(grad)`` + a dense Γ, the SAME Γ on both sides.
  prune    ``prune`` of a random 2-block model at Llama-3-8B widths in bf16 with 128 × 2048
           calibration tokens, for dap-obs and flap (20 % of the prunable parameters,
           both blocks): seconds per block, compile seconds, peak device memory, the
           extrapolation to 32 layers, next to the memory model.

Isolation. Every (section, framework) pair runs in its own process, so JAX and PyTorch
never share one: the JAX CUDA plugin and torch ship different builds of libraries with
the same soname (cuDNN, NCCL), and in one process whichever loads first serves both. One process
per run also makes ``memory_stats()["peak_bytes_in_use"]`` a per-run peak, lets a
crash (segfault, device OOM) cost one run, and lets a hang be killed. Results that both
sides need (the parity checkpoint and reference logits, the sketched rows) go through
files in a scratch directory. The parent process imports neither JAX nor the project.
On the device the runs go one at a time; the CPU smoke runs independent ones two at a
time (``--jobs``), as its timings mean nothing anyway.

Budgets. Each section has a soft budget (``--section-seconds``, shared by its runs): a
run stops starting new measurements or repeats once it is spent and marks itself
``truncated``. A run is killed at its soft budget + 30 s, and no run goes past the total
budget (``--total-seconds``, 450 s): the full run ends in under 8 minutes whatever happens.

Timing. Compilation is timed apart (``jit(...).lower(...).compile()``, and XLA's own
compile events during ``prune``), then one warm-up call and the median of a few timed
calls, each ended by the one host sync (``block_until_ready`` / ``cuda.synchronize``).

Outputs: ``<out-dir>/device_check.{json,md}`` (default benchmarks/results; a temporary
directory for ``--cpu-smoke``), both rewritten atomically after every run, so a timeout
still leaves every finished measurement. Each run's status is "ok", "partial" (some
measurement failed: its traceback is recorded), "error", "timeout", "crashed" or
"skipped"; a section's status is its worst run's. Exit status 0 when every section is
"ok". A full run stops before any section when JAX has no GPU (``--allow-cpu``
overrides), and a torch run fails at once when torch has none.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the working tree, not an installed copy
sys.path.insert(1, str(ROOT / "benchmarks"))  # per_sample_grads (its model), skmm_scale (its pool)

RESULTS = ROOT / "benchmarks" / "results"
NAME = "device_check"
SECTIONS = ("parity", "forward", "skmm", "prune")
PRUNE_METHODS = ("dap-obs", "flap")
SECTION_SECONDS = {"parity": 60.0, "forward": 90.0, "skmm": 120.0, "prune": 150.0}
TOTAL_SECONDS = 450.0
GRACE_SECONDS = 30.0  # a run is killed this long after its soft budget (process start, a compile past the budget)
MIN_START_SECONDS = 20.0  # no run starts with less of the total budget left
STATUS_ORDER = ("ok", "partial", "skipped", "timeout", "interrupted", "error", "crashed")  # best → worst
STARTED = time.perf_counter()

# ------------------------------------------------------------------------------ sizes

# transformers ``LlamaConfig`` fields; ours is ``LlamaConfig.from_hf`` of the same dict.
LLAMA3_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
    "tie_word_embeddings": False, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
}  # fmt: skip
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
}
PARITY_MODEL = {
    "vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
    "num_key_value_heads": 2, "head_dim": 64, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "rope_parameters": {**LLAMA3_ROPE, "original_max_position_embeddings": 1024},
}  # fmt: skip
TINY_MODEL = {
    "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "max_position_embeddings": 1024,
    "tie_word_embeddings": False, "rope_parameters": {**LLAMA3_ROPE, "original_max_position_embeddings": 128},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the check uses; ``FULL`` on the GPU, ``SMOKE`` for ``--cpu-smoke``.

    Attributes:
      parity: the parity model (transformers ``LlamaConfig`` fields).
      parity_tokens: [B, T] tokens whose logits are compared.
      parity_windows: [W, T] windows whose perplexity is compared.
      forward: the forward model's widths; forward_layers: its blocks.
      forward_shapes: (B, T) token batches timed.
      repeats: timed calls per measurement (fewer when the budget runs out).
      prune: the pruned model's widths; prune_layers: its blocks (all pruned).
      calibration: (S, T) calibration tokens; prune_batch: sequences per step.
      skmm: (N, m, n) of the selection.
      grads_pool, grads_m, grads_chunk: samples, sketch size and chunk of the gradients.
    """

    parity: dict
    parity_tokens: tuple[int, int]
    parity_windows: tuple[int, int]
    forward: dict
    forward_layers: int
    forward_shapes: tuple[tuple[int, int], ...]
    repeats: int
    prune: dict
    prune_layers: int
    calibration: tuple[int, int]
    prune_batch: int
    skmm: tuple[int, int, int]
    grads_pool: int
    grads_m: int
    grads_chunk: int


FULL = Sizes(
    parity=PARITY_MODEL, parity_tokens=(2, 512), parity_windows=(4, 512),  # 4 attention blocks: chunked compiles ~20 s at 2048
    forward=LLAMA3_8B, forward_layers=4, forward_shapes=((1, 2048), (1, 8192), (8, 2048)), repeats=5,
    prune=LLAMA3_8B, prune_layers=2, calibration=(128, 2048), prune_batch=16,
    skmm=(1_000_000, 512, 10_000), grads_pool=2048, grads_m=128, grads_chunk=256,
)  # fmt: skip
SMOKE = Sizes(
    parity=TINY_MODEL, parity_tokens=(2, 160), parity_windows=(2, 48),  # T = 160: two 128-row attention blocks
    forward=TINY_MODEL, forward_layers=2, forward_shapes=((1, 160), (2, 64)), repeats=2,
    prune={**TINY_MODEL, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "head_dim": 8}, prune_layers=2,
    calibration=(4, 32), prune_batch=2,
    skmm=(2000, 16, 40), grads_pool=8, grads_m=8, grads_chunk=4,
)  # fmt: skip

# Each section's runs (task, share of the section's seconds), in the order they run.
# parity/torch writes the checkpoint and reference logits parity/ours reads.
RUNS = {
    "parity": (("parity/torch", 0.35), ("parity/ours", 0.65)),
    "forward": (("forward/ours", 0.65), ("forward/torch", 0.35)),
    "skmm": (("skmm/select", 0.5), ("skmm/ours", 0.3), ("skmm/torch", 0.2)),
}
DEPENDENT = {"parity/ours"}  # reads what an earlier run of its section wrote
PRUNE_WEIGHTS = {"dap-obs": 3.0, "flap": 2.0}  # the prune section's seconds split by these (dap-obs compiles ~2× more)

# ----------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", flush=True)


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays → Python; non-finite floats → "nan"/"inf" strings (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def replace_atomically(path: Path, data: str | bytes) -> None:
    """Writes ``path`` through a temporary sibling and ``os.replace``: a reader (or a kill)
    never sees a half-written file. Local on purpose: the parent must not import the
    project (a broken import there would lose every section)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    replace_atomically(path, buffer.getvalue())


def save_npy_atomically(path: Path, array: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    replace_atomically(path, buffer.getvalue())


def logits_errors(got: np.ndarray, reference: np.ndarray) -> dict:
    """max |got − ref|, that over max |ref| (the relative error the parity tests bound),
    ‖got − ref‖_F / ‖ref‖_F, and the fraction of positions whose argmax agrees."""
    got, reference = np.asarray(got, np.float64), np.asarray(reference, np.float64)
    diff = np.abs(got - reference)
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / np.abs(reference).max()),
        "rel_fro": float(np.linalg.norm(diff) / np.linalg.norm(reference)),
        "argmax_agree": float(np.mean(got.argmax(-1) == reference.argmax(-1))),
    }


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def versions() -> dict:
    """Installed versions, read from package metadata (nothing is imported)."""
    names = ["jax", "jaxlib", "flax", "optax", "transformers", "torch", "numpy", "safetensors", "ml_dtypes", "gguf"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    for dist in importlib.metadata.distributions():  # the CUDA plugin: jax-cuda13-plugin, jax-cuda13-pjrt, ...
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(("jax-cuda", "jax_cuda")):
            out[name] = dist.version
    return out


def nvidia_smi() -> str | None:
    try:
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_revision() -> str | None:
    try:
        query = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------ one child run


class Run:
    """One child task: its sizes, its soft time budget, and its record, saved atomically
    after every measurement so that a killed process still leaves what it measured."""

    def __init__(self, task: str, sizes: Sizes, args: argparse.Namespace, work: Path, out: Path, seconds: float):
        self.task, self.sizes, self.args, self.work, self.out = task, sizes, args, work, out
        self.seconds = seconds
        self.start = time.perf_counter()
        self.record: dict = {
            "task": task,
            "status": "running",
            "budget_s": seconds,
            "truncated": False,
            "errors": [],
            "skipped": [],
        }

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def save(self) -> None:
        self.record["elapsed_s"] = time.perf_counter() - self.start
        replace_atomically(self.out, json.dumps(jsonable(self.record), indent=1))

    def skip(self, what: str) -> bool:
        """True, and recorded, when the budget is spent: the caller then skips ``what``."""
        if self.left() > 0:
            return False
        self.record["truncated"] = True
        self.record["skipped"].append(what)
        log(f"{what}: skipped (budget of {self.seconds:.0f} s spent)")
        self.save()
        return True

    @contextlib.contextmanager
    def attempt(self, what: str):
        """Runs the ``with`` body; an exception is recorded with its traceback and the
        run goes on with its next measurement."""
        try:
            yield
        except Exception:  # noqa: BLE001 - recorded; the run goes on with its next measurement
            text = traceback.format_exc()
            self.record["errors"].append({"what": what, "traceback": text})
            log(f"{what}: FAILED\n{text}")
        finally:
            self.save()

    def time_calls(
        self,
        call: Callable[[], Any],
        sync: Callable[[Any], Any],
        *,
        repeats: int,
        warmup: Callable[[], Any] | None = None,
    ) -> dict:
        """One warm-up call (``warmup``, default ``call``), then up to ``repeats`` timed calls,
        each ended by ``sync`` on its output, the only host sync; stops early (``truncated``)
        when the budget cannot fit another call. At least one call is timed."""
        start = time.perf_counter()
        sync((warmup or call)())
        warm = time.perf_counter() - start
        seconds: list[float] = []
        while len(seconds) < repeats:
            if seconds and self.left() < max(seconds):
                break
            start = time.perf_counter()
            sync(call())
            seconds.append(time.perf_counter() - start)
        truncated = len(seconds) < repeats
        self.record["truncated"] |= truncated
        return {"warmup_s": warm, "seconds": seconds, "median_s": statistics.median(seconds), "repeats": len(seconds),
                "truncated": truncated}  # fmt: skip


def jax_memory() -> dict:
    """The first device's allocator statistics (None where the backend keeps none, e.g. CPU)."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without statistics
        stats = {}
    return {key: stats.get(key) for key in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")}


def jax_environment() -> dict:
    import jax

    devices = jax.devices()
    info = {
        "jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"), "backend": jax.default_backend(),
        "devices": [str(d) for d in devices], "device_kind": devices[0].device_kind, "device_count": len(devices),
        "memory": jax_memory(),
    }  # fmt: skip
    log(f"jax {info['jax']} ({info['backend']}): {info['devices']} [{info['device_kind']}]")
    return info


def torch_environment(device: str) -> dict:
    import torch

    transformers = importlib.metadata.version("transformers")  # not imported: seconds, and skmm/torch never uses it
    info = {"torch": torch.__version__, "transformers": transformers, "device": device,
            "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}  # fmt: skip
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cudnn=torch.backends.cudnn.version())
    log(
        f"torch {info['torch']} on {device}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}, transformers {info['transformers']}"
    )
    return info


def torch_device(run: Run) -> str:
    """The torch device: "cuda", or "cpu" for the smoke. Without CUDA a full run fails here
    at once instead of spending its budget on 8B widths on the CPU (unless ``--allow-cpu``)."""
    import torch

    if run.args.cpu_smoke:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if run.args.allow_cpu:
        return "cpu"
    raise RuntimeError(f"torch {torch.__version__} sees no CUDA device; pass --allow-cpu to measure on the CPU anyway")


def torch_sync(device: str) -> Callable[[Any], None]:
    import torch

    return (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)


def torch_memory(device: str) -> dict:
    import torch

    if device != "cuda":
        return {"max_memory_allocated": None}
    return {
        "max_memory_allocated": torch.cuda.max_memory_allocated(),
        "memory_allocated": torch.cuda.memory_allocated(),
    }


def compile_jax(fn: Callable, *args) -> tuple[Callable, dict]:
    """``jit(fn)`` compiled ahead of time for ``args``: (executable, compile seconds and
    XLA's memory analysis of it where the backend gives one)."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    info: dict = {"compile_s": time.perf_counter() - start}
    with contextlib.suppress(Exception):
        analysis = compiled.memory_analysis()
        info.update(temp_bytes=int(analysis.temp_size_in_bytes), output_bytes=int(analysis.output_size_in_bytes),
                    argument_bytes=int(analysis.argument_size_in_bytes))  # fmt: skip
    return compiled, info


RANDOM_SEGMENT = 2**30  # values per random draw (XLA indexes a draw with int32)


def random_llama(config, seed: int = 0):
    """A model of ``config`` with weights N(0, 0.02²) and norm weights 1, made on the device
    by ONE compiled program: the leaves are cut from a few flat draws (RBG generator), so
    the compile does not grow with the number of parameter shapes (``init_llama`` compiles
    one threefry ``random.normal`` per shape, seconds even for a tiny model). Transient
    memory: the draws and the leaves, ≈ 2× the parameters."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from prune_jax.models.llama import abstract_llama

    graphdef, abstract = nnx.split(abstract_llama(config))
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    segments, current, count = [], [], 0  # leaf indices drawn together, ≤ RANDOM_SEGMENT values each
    for index, (path, leaf) in enumerate(flat):
        size = math.prod(leaf.shape)
        if "norm" in jax.tree_util.keystr(path):
            continue
        if current and count + size > RANDOM_SEGMENT:
            segments.append(current)
            current, count = [], 0
        current.append(index)
        count += size
    if current:
        segments.append(current)

    @jax.jit
    def fill(key):
        values = [jnp.ones(leaf.shape, leaf.dtype) for _, leaf in flat]
        for number, segment in enumerate(segments):
            sizes = [math.prod(flat[i][1].shape) for i in segment]
            draw = jax.random.normal(jax.random.fold_in(key, number), (sum(sizes),), flat[segment[0]][1].dtype)
            offset = 0
            for i, size in zip(segment, sizes):
                values[i] = (0.02 * draw[offset : offset + size]).reshape(flat[i][1].shape).astype(flat[i][1].dtype)
                offset += size
        return jax.tree.unflatten(treedef, values)

    return nnx.merge(graphdef, jax.block_until_ready(fill(jax.random.key(seed, impl="rbg"))))


def precision(name: str | None):
    """``jax.default_matmul_precision(name)``; None: the backend's default (TF32 on NVIDIA GPUs)."""
    import jax

    return jax.default_matmul_precision(name) if name else contextlib.nullcontext()


# -------------------------------------------------------------------------- parity


def parity_torch(run: Run) -> None:
    """The reference: a transformers model with random weights (fixed seed), saved with
    ``save_pretrained``; its f32 and bf16 logits and perplexities on the same device."""
    import torch
    import transformers

    device = torch_device(run)
    run.record["environment"] = torch_environment(device)
    torch.backends.cuda.matmul.allow_tf32 = False  # a full-f32 reference
    torch.backends.cudnn.allow_tf32 = False
    sizes = run.sizes
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes.parity)).eval()
    with torch.no_grad():  # activations of scale 1 through every block, so every term matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:  # nn.Linear [out, in]: N(0, 1/in)
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    directory = run.work / "parity" / "checkpoint"
    model.save_pretrained(directory)
    vocab = sizes.parity["vocab_size"]
    rng = np.random.default_rng(0)
    reference = {"tokens": rng.integers(0, vocab, sizes.parity_tokens).astype(np.int32),
                 "windows": rng.integers(0, vocab, sizes.parity_windows).astype(np.int32)}  # fmt: skip
    run.record.update(parameters=sum(p.numel() for p in model.parameters()), checkpoint=str(directory),
                      attn_implementation=model.config._attn_implementation)  # fmt: skip
    for label, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        with run.attempt(f"transformers {label}"):
            reference_model = copy.deepcopy(model).to(device=device, dtype=dtype)
            with torch.no_grad():
                tokens = torch.as_tensor(reference["tokens"], dtype=torch.long, device=device)
                logits = reference_model(tokens, use_cache=False).logits.float().cpu().numpy()
                windows = torch.as_tensor(reference["windows"], dtype=torch.long, device=device)
                scored = reference_model(windows, labels=windows, use_cache=False)
                loss = scored.loss.item()  # mean cross-entropy over the W·(T − 1) shifted targets
            reference[f"logits_{label}"] = logits
            reference[f"perplexity_{label}"] = np.float64(math.exp(loss))
            run.record[label] = {"perplexity": math.exp(loss)}
            log(f"transformers {label}: perplexity {math.exp(loss):.4g}")
            del reference_model
    save_npz_atomically(run.work / "parity" / "reference.npz", **reference)


def parity_ours(run: Run) -> None:
    """Our loader and forward against ``parity_torch``'s reference, for every dtype,
    attention implementation and (f32) matmul precision."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from prune_jax.evaluate import perplexity
    from prune_jax.models.llama import load_hf_dir, set_attention
    from prune_jax.models.llama.modeling import ATTENTION_IMPLEMENTATIONS

    path = run.work / "parity" / "reference.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no transformers reference (the parity/torch run failed or did not run)")
    reference = dict(np.load(path))
    tokens = jnp.asarray(reference["tokens"])
    windows = reference["windows"]
    rows = run.record.setdefault("rows", [])
    if "logits_bfloat16" in reference:
        run.record["torch_bfloat16_vs_float32"] = logits_errors(
            reference["logits_bfloat16"], reference["logits_float32"]
        )
    for dtype in ("float32", "bfloat16"):
        with run.attempt(f"load {dtype}"):
            start = time.perf_counter()
            model = load_hf_dir(run.work / "parity" / "checkpoint", dtype=dtype)
            run.record[f"load_{dtype}_s"] = time.perf_counter() - start
        if f"load_{dtype}_s" not in run.record:
            continue
        for attention in ATTENTION_IMPLEMENTATIONS:
            # f32 at the default precision differs from "highest" only where the default is
            # lower (TF32 on NVIDIA GPUs); on the CPU it would repeat the row.
            if dtype == "bfloat16":
                settings = (None,)
            else:
                settings = ("highest",) if jax.default_backend() == "cpu" else ("highest", None)
            for matmul in settings:
                what = f"ours {dtype} {attention} precision={matmul or 'default'}"
                with run.attempt(what):
                    if run.skip(what):
                        continue
                    set_attention(model, attention)
                    graphdef, state = nnx.split(model)
                    with precision(matmul):
                        forward, info = compile_jax(lambda s, t, g=graphdef: nnx.merge(g, s)(t), state, tokens)
                        logits = np.asarray(forward(state, tokens))
                        ppl = perplexity(model, windows, batch_size=len(windows)).perplexity
                    row = {"dtype": dtype, "attention": attention, "precision": matmul or "default", "compile_s": info["compile_s"],
                           "perplexity": ppl, "vs_torch_float32": logits_errors(logits, reference["logits_float32"]),
                           "perplexity_rel_diff_vs_torch_float32": abs(ppl / float(reference["perplexity_float32"]) - 1)}  # fmt: skip
                    if dtype == "bfloat16" and "logits_bfloat16" in reference:
                        row["vs_torch_bfloat16"] = logits_errors(logits, reference["logits_bfloat16"])
                        row["perplexity_rel_diff_vs_torch_bfloat16"] = abs(
                            ppl / float(reference["perplexity_bfloat16"]) - 1
                        )
                    rows.append(row)
                    log(
                        f"{what}: max rel {row['vs_torch_float32']['max_rel']:.2e} vs transformers f32, perplexity "
                        f"{ppl:.4g} (rel diff {row['perplexity_rel_diff_vs_torch_float32']:.1e})"
                    )


# ------------------------------------------------------------------------- forward


def forward_ours(run: Run) -> None:
    """Our bf16 forward (tokens → float32 logits), jitted as a pure function of the split
    state, per attention implementation and token shape."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from prune_jax.models.llama import set_attention
    from prune_jax.models.llama.modeling import ATTENTION_IMPLEMENTATIONS, LlamaConfig, num_parameters

    sizes = run.sizes
    config = LlamaConfig.from_hf({**sizes.forward, "num_hidden_layers": sizes.forward_layers}, dtype="bfloat16")
    start = time.perf_counter()
    model = random_llama(config, seed=0)  # made on the device, no host copy
    run.record.update(
        init_s=time.perf_counter() - start, parameters=num_parameters(model), memory_after_init=jax_memory()
    )
    graphdefs = {}
    for attention in ATTENTION_IMPLEMENTATIONS:
        set_attention(model, attention)
        graphdefs[attention], state = nnx.split(model)  # the same arrays; the implementation is static in the graphdef
    rows = run.record.setdefault("rows", [])
    vocab = config.vocab_size
    for batch, length in sizes.forward_shapes:
        tokens = jax.random.randint(jax.random.key(batch * 100003 + length), (batch, length), 0, vocab, jnp.int32)
        for attention in ATTENTION_IMPLEMENTATIONS:
            what = f"ours {attention} {batch}x{length}"
            with run.attempt(what):
                if run.skip(what):
                    continue
                forward, info = compile_jax(lambda s, t, g=graphdefs[attention]: nnx.merge(g, s)(t), state, tokens)
                timing = run.time_calls(
                    lambda f=forward, t=tokens: f(state, t), jax.block_until_ready, repeats=sizes.repeats
                )
                row = {"implementation": f"ours {attention}", "batch": batch, "seq_len": length, **info, **timing,
                       "tokens_per_s": batch * length / timing["median_s"], "memory": jax_memory()}  # fmt: skip
                rows.append(row)
                log(
                    f"{what}: {1e3 * timing['median_s']:.2f} ms, {row['tokens_per_s']:,.0f} tokens/s, compile {info['compile_s']:.1f} s"
                )


def forward_torch(run: Run) -> None:
    """transformers' LlamaForCausalLM, bf16, sdpa attention, made on the device."""
    import torch
    import transformers

    device = torch_device(run)
    run.record["environment"] = torch_environment(device)
    sizes = run.sizes
    config = transformers.LlamaConfig(**{**sizes.forward, "num_hidden_layers": sizes.forward_layers})
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
        except TypeError:  # an older transformers calls it torch_dtype
            model = transformers.LlamaForCausalLM._from_config(
                config, attn_implementation="sdpa", torch_dtype=torch.bfloat16
            )
    model = model.to(device).eval()  # a no-op when the device context took effect
    sync = torch_sync(device)
    sync(None)
    run.record.update(init_s=time.perf_counter() - start, parameters=sum(p.numel() for p in model.parameters()),
                      attn_implementation=model.config._attn_implementation, dtype=str(next(model.parameters()).dtype))  # fmt: skip
    rows = run.record.setdefault("rows", [])
    generator = torch.Generator().manual_seed(0)
    for batch, length in sizes.forward_shapes:
        what = f"torch sdpa {batch}x{length}"
        with run.attempt(what):
            if run.skip(what):
                continue
            tokens = torch.randint(0, config.vocab_size, (batch, length), generator=generator).to(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                timing = run.time_calls(lambda t=tokens: model(t, use_cache=False).logits, sync, repeats=sizes.repeats)
            row = {"implementation": "torch sdpa", "batch": batch, "seq_len": length, **timing,
                   "tokens_per_s": batch * length / timing["median_s"], "memory": torch_memory(device)}  # fmt: skip
            rows.append(row)
            log(
                f"{what}: {1e3 * timing['median_s']:.2f} ms, {row['tokens_per_s']:,.0f} tokens/s (warm-up {timing['warmup_s']:.1f} s)"
            )


# ---------------------------------------------------------------------------- skmm

# torch.nn's order of per_sample_grads.MLPHead's trainable parameters (named_parameters).
TORCH_TRAINABLE = ("gate_proj.weight", "up_proj.weight", "down_proj.weight", "head.weight", "head.bias")
GRADS_SEED = 0
SKETCH_ROWS = 64  # sketched rows both sides save for the parity of the sketch


def grads_problem(sizes: Sizes):
    """per_sample_grads.py's weights, cached inputs x [N, T, D], labels y [N] and a dense
    Gaussian Γ [r, m] ~ N(0, 1/m) in torch's flattening order (numpy: both sides, in
    their own processes, draw the very same Γ)."""
    import per_sample_grads as psg

    params, frozen = psg.random_weights(GRADS_SEED)
    rng = np.random.default_rng(GRADS_SEED + 1)
    x = rng.standard_normal((sizes.grads_pool, psg.TOKENS, psg.D_MODEL), np.float32)
    y = rng.integers(0, psg.NUM_CLASSES, sizes.grads_pool).astype(np.int32)
    r = sum(math.prod(shape) for _, shape in psg.leaf_table(params))
    gamma = np.random.default_rng(GRADS_SEED + 2).standard_normal((r, sizes.grads_m), np.float32)
    gamma *= np.float32(1.0 / math.sqrt(sizes.grads_m))
    return params, frozen, x, y, gamma


def gamma_in_our_order(gamma: np.ndarray, params: dict) -> np.ndarray:
    """Γ's rows permuted from torch's order ([out, in] kernels, ``TORCH_TRAINABLE``) to
    jax.tree order and our [in, out] layout, so g_torch Γ = g_ours Γ_ours per sample
    (per_sample_grads.shared_gaussian, without torch)."""
    import per_sample_grads as psg

    ours_shapes = dict(psg.leaf_table(params))
    torch_shapes = {}
    for path, (name, transposed) in psg.JAX_TO_TORCH.items():
        torch_shapes[name] = tuple(reversed(ours_shapes[path])) if transposed else ours_shapes[path]
    offsets, start = {}, 0
    for name in TORCH_TRAINABLE:
        offsets[name] = start
        start += math.prod(torch_shapes[name])
    out = np.empty_like(gamma)
    row = 0
    for path, shape in psg.leaf_table(params):
        name, transposed = psg.JAX_TO_TORCH[path]
        size = math.prod(shape)
        rows = gamma[offsets[name] : offsets[name] + size]
        if transposed:  # torch row (o, i) ↔ our row (i, o)
            rows = rows.reshape(*torch_shapes[name], -1).transpose(1, 0, 2).reshape(size, -1)
        out[row : row + size] = rows
        row += size
    return out


def skmm_select(run: Run) -> None:
    """``select("skmm")`` with its defaults at scale: the first call compiles, the second does not."""
    import jax
    from skmm_scale import low_rank_pool

    from skmm_jax.select import select

    num, dim, n = run.sizes.skmm
    start = time.perf_counter()
    pool = jax.block_until_ready(low_rank_pool(jax.random.key(0), num, dim))  # [N, m] float32, made on the device
    entry = {"N": num, "m": dim, "n": n, "pool_s": time.perf_counter() - start, "calls": []}
    run.record["select"] = entry
    for call in ("first call (with compile)", "second call"):
        if call == "second call" and run.skip(f"select {call}"):
            break
        row = {"call": call, "seconds": None, "started_after_s": time.perf_counter() - run.start}  # None: killed inside
        entry["calls"].append(row)
        run.save()
        start = time.perf_counter()
        selection = select("skmm", jax.random.key(1), pool, n)
        row.update(seconds=time.perf_counter() - start, unique=int(np.unique(selection.indices).size),
                   subset_coverage=selection.diagnostics.get("subset_coverage"), memory=jax_memory())  # fmt: skip
        run.save()
        log(f"select skmm N={num:,} m={dim} n={n:,}, {call}: {row['seconds']:.1f} s")
    entry["options"] = {k: v for k, v in selection.diagnostics.items() if isinstance(v, (str, bool))}


def skmm_ours(run: Run) -> None:
    """Our per-sample gradients + sketches (dense Γ, Kronecker, factored Kronecker)."""
    import jax
    import jax.numpy as jnp
    import per_sample_grads as psg

    from skmm_jax.gradients import sketch_per_sample_grads
    from skmm_jax.sketch import make_pytree_sketch

    sizes = run.sizes
    params_np, frozen_np, x, y, gamma = grads_problem(sizes)
    params, frozen = jax.device_put((params_np, frozen_np))
    dense = psg.MatrixSketch(jnp.asarray(gamma_in_our_order(gamma, params_np)))
    del gamma
    kronecker = make_pytree_sketch("kronecker", jax.random.key(3), params, sizes.grads_m)
    chunk = sizes.grads_chunk
    rows = run.record.setdefault("grads", [])
    run.record["grads_setup"] = {"r": int(dense.in_dim), "m": sizes.grads_m, "pool": sizes.grads_pool, "chunk": chunk,
                                 "tokens": psg.TOKENS, "d_model": psg.D_MODEL, "d_ff": psg.D_FF}  # fmt: skip
    configurations = (("ours + dense", dense, False), ("ours + kronecker", kronecker, False),
                      ("ours + kronecker, factored", kronecker, True))  # fmt: skip
    with precision("float32"):  # full f32 matmuls, as torch's (no TF32) on the other side
        for name, sketch, factored in configurations:
            with run.attempt(name):
                if run.skip(name):
                    continue

                def call(count: int, sketch=sketch, factored=factored) -> np.ndarray:
                    return sketch_per_sample_grads(psg.LOSS, params, (x[:count], y[:count]), sketch, frozen=frozen,
                                                   chunk_size=chunk, factored=factored)  # fmt: skip

                out = {}
                timing = run.time_calls(
                    lambda out=out, call=call: out.setdefault("rows", call(len(x))),
                    lambda _: None,
                    repeats=sizes.repeats,
                    warmup=lambda: call(min(chunk, len(x))),
                )  # warm-up: one chunk (the compile)
                rows.append(
                    {"configuration": name, "chunk": chunk, **timing, "samples_per_s": len(x) / timing["median_s"]}
                )
                if name == "ours + dense":
                    save_npy_atomically(run.work / "skmm_ours_dense_rows.npy", out["rows"][:SKETCH_ROWS])
                log(f"{name}: {rows[-1]['samples_per_s']:,.1f} samples/s (warm-up {timing['warmup_s']:.1f} s)")
    run.record["memory"] = jax_memory()


def skmm_torch(run: Run) -> None:
    """torch.func.vmap(grad) + flatten + the dense Γ, chunk by chunk (per_sample_grads.py's baseline)."""
    import per_sample_grads as psg
    import torch

    device = torch_device(run)
    run.record["environment"] = torch_environment(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    sizes = run.sizes
    params_np, frozen_np, x, y, gamma = grads_problem(sizes)
    torch_grads, trainable, names = psg.build_torch(params_np, frozen_np, device)
    if tuple(names) != TORCH_TRAINABLE:
        raise RuntimeError(f"per_sample_grads.MLPHead's trainable parameters are {names}, expected {TORCH_TRAINABLE}: "
                           "update TORCH_TRAINABLE (Γ's row order)")  # fmt: skip
    gamma_t = torch.from_numpy(gamma).to(device)
    del gamma
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y).long()
    sync = torch_sync(device)
    chunk = sizes.grads_chunk

    def call(count: int) -> np.ndarray:
        out = torch.empty(count, sizes.grads_m)
        for lo in range(0, count, chunk):
            hi = min(lo + chunk, count)
            grads = torch_grads(trainable, x_t[lo:hi].to(device), y_t[lo:hi].to(device))
            flat = torch.cat([grads[name].reshape(hi - lo, -1) for name in names], dim=1)  # [B, r]
            out[lo:hi] = torch.matmul(flat, gamma_t).cpu()  # [B, m]
        return out.numpy()

    with run.attempt("torch.func + dense"):
        out = {}
        timing = run.time_calls(
            lambda: out.setdefault("rows", call(len(x))),
            sync,
            repeats=sizes.repeats,
            warmup=lambda: call(min(chunk, len(x))),
        )
        run.record["grads"] = [{"configuration": "torch.func + dense", "chunk": chunk, **timing,
                                "samples_per_s": len(x) / timing["median_s"], "memory": torch_memory(device)}]  # fmt: skip
        save_npy_atomically(run.work / "skmm_torch_dense_rows.npy", out["rows"][:SKETCH_ROWS])
        log(
            f"torch.func + dense: {run.record['grads'][0]['samples_per_s']:,.1f} samples/s (warm-up {timing['warmup_s']:.1f} s)"
        )


# --------------------------------------------------------------------------- prune

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def prune_run(run: Run, method: str) -> None:
    """``prune`` of every block of a random bf16 model; the progress callback stamps each
    block (and saves), XLA's compile events are attributed to the block they fall in."""
    import jax
    from flax import nnx

    from prune_jax.models.llama.modeling import LlamaConfig, num_parameters
    from prune_jax.pruning import Budget, PruneConfig, prune

    sizes = run.sizes
    layers = sizes.prune_layers
    samples = run.args.calib_samples or sizes.calibration[0]
    seq_len = sizes.calibration[1]
    config = LlamaConfig.from_hf({**sizes.prune, "num_hidden_layers": layers}, dtype="bfloat16")
    config = dataclasses.replace(config, attention=run.args.prune_attention)
    start = time.perf_counter()
    model = random_llama(config, seed=0)
    run.record.update(method=method, layers=layers, calibration=[samples, seq_len], batch_size=sizes.prune_batch,
                      attention=config.attention,
                      init_s=time.perf_counter() - start, parameters=num_parameters(model), memory_after_init=jax_memory())  # fmt: skip
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (samples, seq_len)).astype(np.int32)
    compiles: list[tuple[float, float]] = []  # (when it finished, seconds)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiles.append((time.perf_counter(), seconds)) if event == COMPILE_EVENT else None
    )
    stamps: list[float] = []

    def blocks() -> list[dict]:
        out, previous = [], begin
        for index, stamp in enumerate(stamps):
            compile_s = sum(s for when, s in compiles if previous < when <= stamp)
            out.append({"block": index, "seconds": stamp - previous, "compile_s": compile_s})
            previous = stamp
        return out

    def progress(done: int, total: int) -> None:
        stamps.append(time.perf_counter())
        run.record["blocks"] = blocks()
        run.save()
        log(f"{method}: block {done}/{total} after {stamps[-1] - begin:.1f} s")

    prune_config = PruneConfig(method=method, budget=Budget(sparsity=0.2, layer_range=(0, layers)), batch_size=sizes.prune_batch)
    run.record["config"] = prune_config.to_json()
    begin = time.perf_counter()
    model, report = prune(model, tokens, prune_config, progress=progress)
    jax.block_until_ready(nnx.state(model))
    total = time.perf_counter() - begin
    compile_s = sum(s for _, s in compiles)
    run.record.update(
        blocks=blocks(), total_s=total, compile_s=compile_s, compilations=len(compiles), memory=jax_memory(),
        parameters_after=report.parameters_after, prunable_removed=1 - report.prunable_after / report.prunable_before,
        layer_heads=report.layer_heads, layer_intermediate=report.layer_intermediate,
        # Everything but the compiles scales with the number of blocks (the allocation pass too).
        estimate_32_layers_s=compile_s + (total - compile_s) * 32 / layers,
    )  # fmt: skip
    log(
        f"{method}: {total:.1f} s for {layers} blocks ({compile_s:.1f} s compiling, {len(compiles)} programs), "
        f"peak {gib(jax_memory()['peak_bytes_in_use'])} GiB"
    )


def prune_memory_model(sizes: Sizes, samples: int) -> dict:
    """What is resident while pruning (bytes), from the memory model in docs/scale.md and obs.py's
    3C² + 2CD floats per dap-obs map, for this run's blocks and for 32."""
    w = sizes.prune
    D, F, V = w["hidden_size"], w["intermediate_size"], w["vocab_size"]
    N, K, H = w["num_attention_heads"], w["num_key_value_heads"], w["head_dim"]
    S, T, B, b = samples, sizes.calibration[1], sizes.prune_batch, 2  # b: bf16 bytes
    block = D * N * H + 2 * D * K * H + N * H * D + 3 * D * F + 2 * D
    stream = S * T * D * b
    terms = {
        "parameters (bf16): 2·P": lambda layers: b * (2 * V * D + D + layers * block),
        "pruned calibration stream h [S, T, D] (bf16)": lambda layers: stream,
        "its copy for the allocation pass (scores that read statistics or Grams)": lambda layers: stream,
        "one chunk's activations ≈ 4·B·T·F·4": lambda layers: 4 * B * T * F * 4,
        "dap-obs, down_proj (C = F): H, H⁻¹, one downdate 3C² + W, δW 2·C·D floats": lambda layers: (
            4 * (3 * F * F + 2 * F * D)
        ),
    }
    rows = [
        {"term": name, "bytes_run": fn(sizes.prune_layers), "bytes_32_layers": fn(32)} for name, fn in terms.items()
    ]
    text = (
        f"Memory model (bytes; S × T = {S} × {T} calibration tokens, B = {B} sequences per step, D = {D}, F = {F}): "
        "parameters b·P; the pruned calibration stream S·T·D·b (advanced in place block by block); a copy of it while the "
        "allocation pass scores the dense model; one chunk's activations ≈ 4·B·T·F·4 (gate, up, h in f32); per map, "
        "for dap-obs, H, H⁻¹ and one downdate temporary 3C² floats plus 2·C·D for W and its update (down_proj: C = F, "
        "o_proj: C = N·H); flap keeps O(C) statistics per map. Not run here: --recover adds the dense stream S·T·D·b, "
        "the dense block b·P_block and ≈ 4·(2C² + 2C·O) + 4·C² per refit (docs/scale.md, Memory model)."
    )
    return {"rows": rows, "text": text, "total_run": sum(fn(sizes.prune_layers) for fn in terms.values()),
            "total_32_layers": sum(fn(32) for fn in terms.values())}  # fmt: skip


# ------------------------------------------------------------------------- child side


def child_main(args: argparse.Namespace) -> int:
    """Runs one task in this process and leaves its record in ``--child-out``."""
    with contextlib.suppress(Exception):  # die with the parent (Linux): never an orphan holding the GPU
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    sizes = SMOKE if args.cpu_smoke else FULL
    task = args.child
    run = Run(task, sizes, args, Path(args.work), Path(args.child_out), args.child_seconds)
    section, _, variant = task.partition("/")
    try:
        if variant != "torch":
            run.record["environment"] = environment = jax_environment()
            if environment["backend"] == "cpu" and not (args.cpu_smoke or args.allow_cpu):
                raise RuntimeError(
                    f"JAX runs on the CPU ({environment['devices']}): its CUDA plugin is missing or failed to load "
                    "(see the warnings above); pass --allow-cpu to measure on the CPU anyway"
                )
        run.save()
        if task == "env":
            import jax

            run.record["environment_info"] = jax.print_environment_info(return_string=True)
        elif section == "prune":
            prune_run(run, variant)
        else:
            {"parity/torch": parity_torch, "parity/ours": parity_ours, "forward/ours": forward_ours, "forward/torch": forward_torch,
             "skmm/select": skmm_select, "skmm/ours": skmm_ours, "skmm/torch": skmm_torch}[task](run)  # fmt: skip
        if variant != "torch" and "torch" in sys.modules:
            run.record["warning"] = "torch was imported in a JAX process (library import?): CUDA libraries may clash"
        if variant == "torch" and "jax" in sys.modules:  # per_sample_grads imports jax: it must never load a backend
            from jax._src import xla_bridge

            if xla_bridge.backends_are_initialized():
                run.record["warning"] = "a JAX backend was initialised in a torch process: CUDA libraries may clash"
        run.record["status"] = "partial" if run.record["errors"] else "ok"
    except Exception:  # noqa: BLE001 - any failure of the task is recorded, not raised
        run.record["status"] = "error"
        run.record["traceback"] = traceback.format_exc()
        log(f"{task}: FAILED\n{run.record['traceback']}")
    finally:
        run.save()
    return 0 if run.record["status"] in ("ok", "partial") else 1


# ------------------------------------------------------------------------ parent side


def child_env(task: str, cpu_smoke: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cpu_smoke:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    if task.endswith("/torch"):
        env["JAX_PLATFORMS"] = "cpu"  # a torch process may import jax (per_sample_grads): never its CUDA plugin
    return env


def run_child(task: str, soft: float, hard: float, work: Path, args: argparse.Namespace,
              publish: Callable[[str, dict], None]) -> dict:  # fmt: skip
    """Starts ``task`` in a new process, echoes its output, kills it after ``hard`` seconds;
    returns its record (what it saved, plus how it ended) after handing it to ``publish``
    (also when this process is interrupted: the record is published, then the interrupt
    goes on)."""
    out = work / f"{task.replace('/', '-')}.json"
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", task, "--work", str(work)]
    command += ["--child-out", str(out), "--child-seconds", f"{soft:.1f}"]
    command += ["--cpu-smoke"] * args.cpu_smoke + ["--allow-cpu"] * args.allow_cpu
    if args.calib_samples:
        command += ["--calib-samples", str(args.calib_samples)]
    command += ["--prune-attention", args.prune_attention]
    log(f"{task}: start (budget {soft:.0f} s, killed after {hard:.0f} s)")
    start = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=80)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                               env=child_env(task, args.cpu_smoke), cwd=ROOT)  # fmt: skip

    def pump() -> None:
        for line in process.stdout:
            tail.append(line.rstrip())
            print(f"    {task} | {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out, interrupted = False, None
    try:
        returncode = process.wait(timeout=hard)
    except subprocess.TimeoutExpired:
        timed_out = True
        process.kill()
        returncode = process.wait()
    except BaseException as err:  # noqa: BLE001 - SIGTERM / Ctrl-C of this parent: keep what the run saved
        interrupted = err
        process.kill()
        returncode = process.wait()
    reader.join(timeout=10)
    try:
        record = json.loads(out.read_text())
    except (OSError, ValueError):
        record = {"task": task, "errors": []}
    record.update(wall_s=time.perf_counter() - start, returncode=returncode)
    if timed_out or interrupted is not None:
        record.update(status="timeout" if timed_out else "interrupted", truncated=True)
    elif record.get("status") not in ("ok", "partial", "error"):
        record["status"] = "crashed"  # died without its final save (segfault, OOM kill, ...)
    if record["status"] != "ok":
        record["output_tail"] = list(tail)
    log(f"{task}: {record['status']} after {record['wall_s']:.1f} s")
    publish(task, record)
    if interrupted is not None:
        raise interrupted
    return record


def worst(statuses) -> str:
    statuses = list(statuses)
    return max(statuses, key=STATUS_ORDER.index) if statuses else "skipped"


def summarise(section: str, runs: dict, sizes: Sizes, args: argparse.Namespace, work: Path) -> dict:
    """Cross-run results the children cannot compute alone (ratios, the sketch parity)."""
    out: dict = {}
    if section == "forward":
        torch_rows = {(r["batch"], r["seq_len"]): r for r in runs.get("forward/torch", {}).get("rows", [])}
        for row in runs.get("forward/ours", {}).get("rows", []):
            ref = torch_rows.get((row["batch"], row["seq_len"]))
            if ref:
                row["ratio_vs_torch"] = row["tokens_per_s"] / ref["tokens_per_s"]  # > 1: ours faster
        out["ratio"] = "ours tokens/s ÷ torch sdpa tokens/s at the same shape (> 1: ours is faster)"
    if section == "skmm":
        torch_grads = runs.get("skmm/torch", {}).get("grads", [])
        if torch_grads:
            for row in runs.get("skmm/ours", {}).get("grads", []):
                row["ratio_vs_torch"] = row["samples_per_s"] / torch_grads[0]["samples_per_s"]
        ours, theirs = work / "skmm_ours_dense_rows.npy", work / "skmm_torch_dense_rows.npy"
        if ours.is_file() and theirs.is_file():
            out["sketch_parity_rel_error"] = relative_error(np.load(ours), np.load(theirs))
    if section == "prune":
        out["memory_model"] = prune_memory_model(sizes, args.calib_samples or sizes.calibration[0])
    return out


def run_section(section: str, args: argparse.Namespace, sizes: Sizes, work: Path, deadline: float,
                publish: Callable[[dict], None]) -> dict:  # fmt: skip
    """The section's runs in order, each in its own process (``--jobs`` > 1, smoke only: the
    runs that need no other's files two at a time; parity/ours waits for parity/torch)."""
    seconds = args.section_seconds[section]
    weights = sum(PRUNE_WEIGHTS[m] for m in args.prune_methods)
    plan = RUNS.get(section) or tuple((f"prune/{m}", PRUNE_WEIGHTS[m] / weights) for m in args.prune_methods)

    runs: dict[str, dict] = {}
    lock = threading.Lock()

    def done(task: str, record: dict) -> None:  # every finished run reaches the outputs at once
        with lock:
            runs[task] = record
            publish({"budget_s": seconds, "status": "running", "runs": {t: runs[t] for t, _ in plan if t in runs}})

    def start(task: str, share: float) -> dict:
        left = deadline - time.perf_counter()
        if left < MIN_START_SECONDS:
            log(f"{task}: skipped, {left:.0f} s of the total budget left")
            record = {"task": task, "status": "skipped", "reason": f"total budget spent ({left:.0f} s left)"}
            done(task, record)
            return record
        soft = min(seconds * share, left)
        return run_child(task, soft, min(soft + GRACE_SECONDS, left), work, args, done)

    if args.jobs == 1:
        for task, share in plan:
            runs[task] = start(task, share)
    else:
        first = [(t, s) for t, s in plan if t not in DEPENDENT]
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {t: pool.submit(start, t, s) for t, s in first}
            runs.update((t, f.result()) for t, f in futures.items())
        runs.update((t, start(t, s)) for t, s in plan if t in DEPENDENT)
    entry: dict = {"budget_s": seconds, "runs": {t: runs[t] for t, _ in plan}}
    entry["status"] = worst(r["status"] for r in entry["runs"].values())
    try:
        entry["summary"] = summarise(section, entry["runs"], sizes, args, work)
    except Exception:  # noqa: BLE001 - a bug here must not cost the runs' results
        entry["summary"] = {"traceback": traceback.format_exc()}
    return entry


def parse_seconds(text: str) -> dict[str, float]:
    """ "90" (every section) or "prune=200,forward=60" (those; the others keep their default)."""
    out = dict(SECTION_SECONDS)
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, value = part.rpartition("=")
        if name and name not in SECTIONS:
            raise argparse.ArgumentTypeError(
                f"--section-seconds: unknown section {name!r}; sections are {', '.join(SECTIONS)}"
            )
        try:
            seconds = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--section-seconds: {value!r} is not a number of seconds") from None
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"--section-seconds: {part!r} must be positive")
        out.update({name: seconds} if name else dict.fromkeys(SECTIONS, seconds))
    return out


def parse_list(valid: tuple[str, ...], flag: str):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(p.strip() for p in text.split(",") if p.strip())
        unknown = [n for n in names if n not in valid]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: choose from {', '.join(valid)} (comma-separated)")
        return names

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU (CI); results go to a temporary directory"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where device_check.{json,md} go (default: benchmarks/results; "
        "with --cpu-smoke a new temporary directory)",
    )
    parser.add_argument(
        "--sections",
        type=parse_list(SECTIONS, "--sections"),
        default=SECTIONS,
        help=f"comma-separated subset of {','.join(SECTIONS)} (run in that order)",
    )
    parser.add_argument(
        "--section-seconds",
        type=parse_seconds,
        default=dict(SECTION_SECONDS),
        help="soft budget per section: one number for all, or name=seconds pairs "
        f"(default {','.join(f'{k}={v:.0f}' for k, v in SECTION_SECONDS.items())})",
    )
    parser.add_argument("--total-seconds", type=float, default=TOTAL_SECONDS, help="hard budget of the whole check")
    parser.add_argument(
        "--calib-samples", type=int, default=None, help="pruning calibration sequences (default 128; smoke 4)"
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run the full sizes even where JAX or torch has no GPU"
    )
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (--cpu-smoke only; default 2 there, 1 on "
                        "the device, where concurrent runs would distort each other's timings and memory)")  # fmt: skip
    parser.add_argument("--prune-methods", type=parse_list(PRUNE_METHODS, "--prune-methods"), default=PRUNE_METHODS)
    parser.add_argument("--prune-attention", choices=("chunked", "dot_product"), default="chunked",
                        help="attention of the pruned model's calibration forwards (dot_product: cuDNN on GPU, "
                        "a fraction of the chunked path's compile time at T = 2048)")
    # Internal: one task in a child process.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calib_samples is not None and args.calib_samples < 1:
        parser.error(f"--calib-samples must be a positive number of sequences, got {args.calib_samples}")
    if args.total_seconds <= 0:
        parser.error(f"--total-seconds must be positive, got {args.total_seconds}")
    if args.jobs is None:
        args.jobs = 2 if args.cpu_smoke else 1
    if args.jobs < 1 or (args.jobs > 1 and not args.cpu_smoke):
        parser.error(f"--jobs {args.jobs}: 1, or more with --cpu-smoke only (one device, timed runs)")
    args.sections = tuple(s for s in SECTIONS if s in args.sections)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    sizes = SMOKE if args.cpu_smoke else FULL
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="device_check_smoke_")) if args.cpu_smoke else RESULTS)
    info = versions()
    gpu = nvidia_smi()
    log("versions: " + ", ".join(f"{k} {v}" for k, v in info.items() if v))
    log(f"GPU: {gpu or 'none found by nvidia-smi'}; output: {out_dir}")
    if info.get("gguf"):
        log("note: gguf is installed here; the GPU image has none, and nothing this check imports needs it")
    result: dict = {
        "command": " ".join(["python", "benchmarks/device_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_smoke": args.cpu_smoke, "revision": git_revision(), "platform": platform.platform(),
        "environment": {"versions": info, "nvidia_smi": gpu}, "sizes": dataclasses.asdict(sizes),
        "budgets": {"section_seconds": args.section_seconds, "total_seconds": args.total_seconds}, "sections": {},
    }  # fmt: skip
    write_outputs(out_dir, result)
    deadline = STARTED + args.total_seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill from outside still publishes the running run
    work = Path(tempfile.mkdtemp(prefix="device_check_work_"))
    try:
        env = run_child("env", 60.0, min(60.0 + GRACE_SECONDS, deadline - time.perf_counter()), work, args,
                        lambda task, record: None)  # fmt: skip
        result["environment"].update(jax=env.get("environment"), jax_environment_info=env.get("environment_info"),
                                     env_status=env["status"])  # fmt: skip
        if env["status"] != "ok":  # no usable JAX device: every section would fail or crawl; stop now, say why
            result["environment"]["error"] = env.get("traceback") or "\n".join(env.get("output_tail", []))
            log("JAX is not usable here (above); no section was run")
        write_outputs(out_dir, result)
        for section in args.sections if env["status"] == "ok" else ():
            log(f"=== {section}")

            def publish(entry: dict, section: str = section) -> None:
                result["sections"][section] = entry
                write_outputs(out_dir, result)

            try:
                result["sections"][section] = run_section(section, args, sizes, work, deadline, publish)
            except Exception:  # noqa: BLE001 - a bug of this parent: recorded, the next section still runs
                result["sections"][section] = {"status": "error", "traceback": traceback.format_exc(), "runs": {}}
            for run in result["sections"][section]["runs"].values():  # the torch side's versions, once
                if "environment" in run and "torch" in (run["environment"] or {}):
                    result["environment"].setdefault("torch", run["environment"])
            write_outputs(out_dir, result)
            log(f"=== {section}: {result['sections'][section]['status']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    statuses = {s: e["status"] for s, e in result["sections"].items()}
    log(f"done in {time.perf_counter() - STARTED:.0f} s: {statuses}; wrote {out_dir / (NAME + '.json')} and .md")
    complete = "error" not in result["environment"] and len(statuses) == len(args.sections)
    return 0 if complete and all(status == "ok" for status in statuses.values()) else 1


# ------------------------------------------------------------------------- the report


def write_outputs(out_dir: Path, result: dict) -> None:
    replace_atomically(out_dir / f"{NAME}.json", json.dumps(jsonable(result), indent=1) + "\n")
    try:
        text = markdown(result)
    except Exception:  # noqa: BLE001 - a report bug must not lose the JSON or stop the run
        text = f"# Device check\n\nThe markdown report failed:\n\n```\n{traceback.format_exc()}```\n"
    replace_atomically(out_dir / f"{NAME}.md", text)


def fmt(value, spec: str = ".3g", scale: float = 1.0) -> str:
    """``value`` formatted (× ``scale``); "—" for a missing value, a string as it is ("inf")."""
    if value is None or isinstance(value, str):
        return "—" if value is None else value
    return format(value * scale if scale != 1.0 else value, spec)


def gib(value) -> str:
    return fmt(value, ".2f", 2**-30)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def markdown(result: dict) -> str:
    env = result["environment"]
    jax_env, torch_env = env.get("jax") or {}, env.get("torch") or {}
    smoke = " · **CPU smoke (tiny sizes)**" if result["cpu_smoke"] else ""
    devices = ", ".join(jax_env.get("devices", [])) or "—"
    torch_device_name = torch_env.get("gpu") or torch_env.get("device") or "—"
    lines = [
        "# Device check (`benchmarks/device_check.py`)",
        "",
        *(  # one command, or several runs merged into one report (what each contributed)
            [f"`{result['command']}` · {result['date']} · revision {result.get('revision') or '—'}{smoke}", ""]
            if isinstance(result["command"], str) else
            [f"{result['date']} · revision {result.get('revision') or '—'}{smoke}; merged from these runs:", "",
             *[f"- {what}: `{command}`" for what, command in result["command"].items()], ""]
        ),
        (
            f"Device: {jax_env.get('device_kind', '—')} ({devices}); nvidia-smi: {env.get('nvidia_smi') or '—'}; "
            f"torch device: {torch_device_name}."
        ),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + ".",
        "",
        "Status per section: " + ", ".join(f"{s} **{e['status']}**" for s, e in result["sections"].items()) + ".",
        "",
    ]
    for section, entry in result["sections"].items():
        runs = entry.get("runs", {})
        done = ", ".join(f"`{t}` {r.get('status')} ({fmt(r.get('wall_s'), '.0f')} s)" for t, r in runs.items())
        lines += [f"## {section}", "", done + ".", ""]
        try:
            lines += SECTION_MARKDOWN[section](entry, result)
        except Exception as err:  # noqa: BLE001 - one table's bug must not cost the others
            lines += [f"(table failed: {type(err).__name__}: {err})", ""]
        for task, run in runs.items():
            problems = [(e["what"], e["traceback"]) for e in run.get("errors", [])]
            if run.get("traceback"):
                problems.append(("run", run["traceback"]))
            if run.get("status") in ("timeout", "crashed"):
                problems.append((run["status"], "\n".join(run.get("output_tail", [])[-15:])))
            if run.get("reason"):
                lines += [f"`{task}` {run['status']}: {run['reason']}.", ""]
            if run.get("skipped"):
                lines += [f"`{task}` skipped (budget): {', '.join(run['skipped'])}.", ""]
            for what, text in problems:
                lines += [f"`{task}` — {what}:", "", "```", *text.rstrip().splitlines()[-12:], "```", ""]
        if "traceback" in entry.get("summary", {}):
            lines += [
                "Summary failed:",
                "",
                "```",
                *entry["summary"]["traceback"].rstrip().splitlines()[-8:],
                "```",
                "",
            ]
    return "\n".join(lines) + "\n"


def describe_model(model: dict, layers: int) -> str:
    heads = f"{model['num_attention_heads']}/{model['num_key_value_heads']} heads × {model['head_dim']}"
    return (
        f"{layers} layers, D {model['hidden_size']}, F {model['intermediate_size']}, {heads}, "
        f"vocabulary {model['vocab_size']:,}"
    )


def parity_markdown(entry: dict, result: dict) -> list[str]:
    ours = entry["runs"].get("parity/ours", {})
    theirs = entry["runs"].get("parity/torch", {})
    sizes = result["sizes"]
    model = sizes["parity"]
    (batch, length), (windows, window) = sizes["parity_tokens"], sizes["parity_windows"]
    lines = [
        (
            f"Random LLaMA ({describe_model(model, model['num_hidden_layers'])}, untied, "
            f"{model['rope_parameters']['rope_type']} RoPE) built by transformers "
            f"({theirs.get('attn_implementation', '—')} attention), saved with `save_pretrained`, loaded by "
            f"`load_hf_dir`. Logits of {batch}×{length} random tokens, perplexity of {windows}×{window} windows; "
            "max rel = max |ours − ref| / max |ref| (the parity tests bound it by 1e-4 in f32)."
        ),
        "",
    ]
    rows = []
    for r in ours.get("rows", []):
        f32, b16 = r["vs_torch_float32"], r.get("vs_torch_bfloat16", {})
        rows.append([
            r["dtype"], r["attention"], r["precision"], fmt(f32["max_abs"], ".2e"), fmt(f32["max_rel"], ".2e"),
            fmt(f32["argmax_agree"], ".4f"), fmt(b16.get("max_rel"), ".2e"), fmt(r["perplexity"], ".6g"),
            fmt(r["perplexity_rel_diff_vs_torch_float32"], ".1e"), fmt(r["compile_s"], ".2f"),
        ])  # fmt: skip
    ref = ours.get("torch_bfloat16_vs_float32")
    if ref:
        rows.append([
            "bfloat16 (transformers)", "sdpa", "—", fmt(ref["max_abs"], ".2e"), fmt(ref["max_rel"], ".2e"),
            fmt(ref["argmax_agree"], ".4f"), "0", fmt(theirs.get("bfloat16", {}).get("perplexity"), ".6g"), "—", "—",
        ])  # fmt: skip
    header = ["dtype", "attention", "matmul precision", "max abs vs torch f32", "max rel vs torch f32", "argmax agree",
              "max rel vs torch bf16", "perplexity", "ppl rel diff vs torch f32", "compile s"]  # fmt: skip
    ppl = theirs.get("float32", {}).get("perplexity")
    return lines + table(header, rows) + [f"transformers f32 perplexity: {fmt(ppl, '.6g')}.", ""]


def forward_markdown(entry: dict, result: dict) -> list[str]:
    sizes = result["sizes"]
    ours = entry["runs"].get("forward/ours", {})
    theirs = entry["runs"].get("forward/torch", {})
    ratio = entry.get("summary", {}).get("ratio") or "ours ÷ torch tokens/s"
    lines = [
        (
            f"bf16 forward, {describe_model(sizes['forward'], sizes['forward_layers'])} "
            f"({fmt(ours.get('parameters'), ',')} parameters), random weights made on the device. Ours returns float32 "
            "logits, transformers bf16 logits (sdpa, `use_cache=False`, `torch.no_grad()`). ms: median of the timed "
            f"calls after a warm-up; compile: `jit(...).lower(...).compile()`. Ratio: {ratio}."
        ),
        "",
    ]
    rows = []
    measured = ours.get("rows", []) + theirs.get("rows", [])
    for r in sorted(measured, key=lambda r: (r["batch"] * r["seq_len"], r["seq_len"], r["implementation"])):
        memory = r.get("memory", {})
        peak = memory.get("peak_bytes_in_use") or memory.get("max_memory_allocated")
        rows.append([
            r["implementation"], f"{r['batch']}×{r['seq_len']}", fmt(r["median_s"], ".2f", 1e3),
            fmt(r["tokens_per_s"], ",.0f"), fmt(r.get("ratio_vs_torch"), ".2f"), fmt(r.get("compile_s"), ".1f"),
            fmt(r["warmup_s"], ".2f"), f"{r['repeats']}{' (truncated)' if r['truncated'] else ''}",
            gib(r.get("temp_bytes")), gib(peak),
        ])  # fmt: skip
    header = ["implementation", "B×T", "ms / call", "tokens/s", "ours ÷ torch", "compile s", "warm-up s", "repeats",
              "XLA temp GiB", "peak GiB (JAX: process so far; torch: this shape)"]  # fmt: skip
    return lines + table(header, rows)


def skmm_markdown(entry: dict, result: dict) -> list[str]:
    ours = entry["runs"].get("skmm/ours", {})
    theirs = entry["runs"].get("skmm/torch", {})
    lines = []
    select = entry["runs"].get("skmm/select", {}).get("select")
    if select:
        lines += [
            (
                f'`select("skmm")` with its defaults on a device-generated rank-32 pool, N = {select["N"]:,}, '
                f"m = {select['m']}, n = {select['n']:,} (pool made in {fmt(select.get('pool_s'), '.1f')} s). "
                "The first call includes the compile."
            ),
            "",
        ]
        rows = []
        for c in select["calls"]:
            seconds = fmt(c["seconds"], ".1f") if c["seconds"] is not None else "killed before it returned"
            peak = (c.get("memory") or {}).get("peak_bytes_in_use")
            rows.append(
                [c["call"], seconds, fmt(c.get("unique"), ","), fmt(c.get("subset_coverage"), ".3f"), gib(peak)]
            )
        lines += table(["call", "seconds", "distinct indices", "subset coverage", "peak GiB"], rows)
        calls = select["calls"]
        if len(calls) == 2 and calls[1]["seconds"] is not None:
            lines += [f"Compile ≈ first − second = {calls[0]['seconds'] - calls[1]['seconds']:.1f} s.", ""]
    grads = theirs.get("grads", []) + ours.get("grads", [])
    if grads:
        setup = ours.get("grads_setup") or {}
        lines += [
            (
                "Per-sample gradients + sketch (benchmarks/per_sample_grads.py's SwiGLU MLP + head, "
                f"r = {fmt(setup.get('r'), ',')}, T = {setup.get('tokens', '—')}, m = {setup.get('m', '—')}, "
                f"{setup.get('pool', '—')} samples per call, chunk {setup.get('chunk', '—')}; float32 on both sides, "
                "the same Γ for the two dense rows). Warm-up: one chunk (the compile)."
            ),
            "",
        ]
        rows = []
        for g in grads:
            ratio = g.get("ratio_vs_torch", 1.0 if g["configuration"].startswith("torch") else None)
            rows.append([g["configuration"], fmt(g["samples_per_s"], ",.1f"), fmt(ratio, ".2f"), fmt(g["warmup_s"], ".2f"),
                         f"{g['repeats']}{' (truncated)' if g['truncated'] else ''}"])  # fmt: skip
        lines += table(["configuration", "samples/s", "× torch.func", "warm-up s", "repeats"], rows)
    parity = entry.get("summary", {}).get("sketch_parity_rel_error")
    if parity is not None:
        lines += [(f"Sketch parity (ours + dense vs torch.func + dense, same Γ, first {SKETCH_ROWS} rows): "
                  f"relative error {parity:.1e}."), ""]  # fmt: skip
    return lines


def prune_markdown(entry: dict, result: dict) -> list[str]:
    sizes = result["sizes"]
    lines = [
        (
            "`prune` (20 % of the prunable parameters, every block, library defaults otherwise: no recovery) of a "
            f"random bf16 model, {describe_model(sizes['prune'], sizes['prune_layers'])}. Block 0's seconds include the "
            "allocation pass over every block; compile seconds are XLA's compile events inside each block's interval. "
            "32 layers ≈ compile + (total − compile) × 32 / blocks."
        ),
        "",
    ]
    rows = []
    for task, run in entry["runs"].items():
        if "blocks" not in run:
            continue
        blocks = run["blocks"]
        rows.append([
            run.get("method", task), run.get("attention", "chunked"), " × ".join(str(v) for v in run.get("calibration", [])),
            str(len(blocks)),
            ", ".join(f"{b['seconds']:.1f}" for b in blocks), ", ".join(f"{b['compile_s']:.1f}" for b in blocks),
            fmt(run.get("total_s"), ".1f"), fmt(run.get("compilations"), "d"), fmt(run.get("estimate_32_layers_s"), ".0f"),
            gib((run.get("memory_after_init") or {}).get("bytes_in_use")),
            gib((run.get("memory") or {}).get("peak_bytes_in_use")), fmt(run.get("prunable_removed"), ".1%"), run["status"],
        ])  # fmt: skip
    header = ["method", "attention", "calibration S × T", "blocks", "s per block", "compile s per block", "total s", "compiles",
              "32 layers ≈ s", "GiB after init", "peak GiB", "prunable removed", "status"]  # fmt: skip
    lines += table(header, rows)
    memory = entry.get("summary", {}).get("memory_model")
    if memory:
        rows = [[r["term"], gib(r["bytes_run"]), gib(r["bytes_32_layers"])] for r in memory["rows"]]
        rows.append(["total (dap-obs)", gib(memory["total_run"]), gib(memory["total_32_layers"])])
        lines += [memory["text"], ""]
        lines += table(["term", f"GiB ({sizes['prune_layers']} layers)", "GiB (32 layers)"], rows)
    return lines


SECTION_MARKDOWN = {
    "parity": parity_markdown,
    "forward": forward_markdown,
    "skmm": skmm_markdown,
    "prune": prune_markdown,
}


if __name__ == "__main__":
    sys.exit(main())
