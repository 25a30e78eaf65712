"""``prune-jax``: a thin command line over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from prune_jax.pruning.scores import METHODS
from prune_jax.zero_shot.tasks import BUILTIN_TASKS
from skmm_jax.common.cli import (
    check_output_dir,
    check_output_file,
    check_store,
    fail,
    fail_config,
    flags_of,
    resume_note,
    run_app,
)

BUILTIN_TASK_NAMES = tuple(BUILTIN_TASKS)
DEMO_TASK = "wiki-last-word"  # the cheapest built-in task (one request per item), chance 0

# library config fields → the flags that set them (for error messages)
PRUNE_FLAGS = flags_of(("method", "sparsity", "refit", "ridge_toward", "damp", "head_criterion", "similarity_tau", "allocation",
                        "attention_ratio", "ffn_ratio", "head_mode", "seed", "bias_compensation"),
                       layer_range="--layer-start/--layer-stop")
FINETUNE_FLAGS = flags_of(("trainable", "steps", "batch_size", "accumulation", "weight_decay", "seed"), rank="--lora-rank",
                          alpha="--lora-alpha", last_blocks="--last-blocks", learning_rate="--lr")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distribution-aware structured pruning of LLaMA models in JAX.")
console = Console()
DTYPES = ("float32", "bfloat16")
SPLITS = ("auto", "eval", "calibration", "all")
SPLIT_HELP = (
    "auto | eval | calibration | all: which document-disjoint part of the corpus. auto = the evaluation half for the "
    "shipped wiki-sample (the other half calibrates the demo) and ALL of a user's own file (a single long .txt is "
    "cut into paragraph groups, so eval/calibration work on it too)."
)


@app.command()
def env() -> None:
    """Show the JAX backend and devices, and which embedded models are installed."""
    import jax

    from prune_jax.embedded import EMBEDDED_MODELS, embedded_model_path

    console.print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): {jax.devices()}")
    for name in EMBEDDED_MODELS:
        try:
            console.print(f"{name}: {embedded_model_path(name)}")
        except FileNotFoundError as err:
            console.print(f"{name}: [yellow]not installed[/yellow] — {err}")


def _resolve_split(split: str, source: str, *, auto: str, flag: str = "--split") -> str:
    if split not in SPLITS:
        fail(f"{flag} must be one of {', '.join(SPLITS)}, got {split!r}")
    return (auto if source == "wiki-sample" else "all") if split == "auto" else split


def _load_model_with_status(model: str, dtype: str = "float32", mesh=None):
    """Loads (model, tokenizer) behind a spinner: a GGUF file is dequantised, which takes a while."""
    from prune_jax.models.llama import load_model

    where = "" if mesh is None else f" onto mesh {dict(mesh.shape)}"
    with console.status(f"loading {model} ({dtype}){where} ..."):
        return load_model(model, dtype=dtype, mesh=mesh)


def _is_writer(net) -> bool:
    """In a multi-process run, gathers the parameters to every process (collective: all
    call it) and says whether this one is process 0, the only one that writes."""
    import jax

    if jax.process_count() == 1:
        return True
    from flax import nnx
    from jax.experimental import multihost_utils

    state = nnx.state(net)
    nnx.update(net, jax.tree.map(lambda a: multihost_utils.process_allgather(a, tiled=True), state))
    return jax.process_index() == 0


def _mesh(spec: str | None):
    """--mesh "data=4,model=2" → a Mesh over all devices; joins a multi-process run first
    when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set
    (``jax.distributed``)."""
    import os

    import jax

    from prune_jax.models.llama.sharding import parse_mesh

    if os.environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
        try:
            jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
        except (KeyError, ValueError) as err:
            fail(f"JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers too ({err})")
    if spec is None:
        return None
    try:
        return parse_mesh(spec)
    except ValueError as err:
        fail(f"--mesh: {err}")


def _checkpoint(make_store, checkpoint: Path | None, *, resume: bool, out: Path):
    """The run's checkpoint store (None without --checkpoint), its rules checked before any work."""
    if resume and checkpoint is None:
        fail("--resume continues from --checkpoint DIR; pass the directory of the interrupted run")
    if checkpoint is None:
        return None
    store = make_store(checkpoint)
    check_store(store, outputs=[out], resume=resume)
    resume_note(store)  # an interrupt then says how far the checkpoint got and how to continue
    return store


def _documents(source: str, split: str, seed: int):
    """The chosen part of a corpus (`split` already resolved)."""
    from prune_jax.data import load_documents, split_documents

    docs = load_documents(source)
    if split == "all":
        return docs
    calibration, evaluation = split_documents(docs, seed=seed)
    return evaluation if split == "eval" else calibration


def _tokens(docs, tok):
    from prune_jax.data import tokenize_corpus

    with console.status(f"tokenising {len(docs)} documents (cached after the first time) ..."):
        return tokenize_corpus(docs, tok)


@app.command("prune")
def prune_command(
    model: str = typer.Option("smollm2-135m", help="smollm2-135m | an HF model directory | a .gguf file."),
    method: str = typer.Option("dap-obs", help=" | ".join(METHODS) + " (dap-obs = greedy output approximation with optimal compensation, the best in the benchmark; dap = the paper's score)."),
    sparsity: float = typer.Option(0.2, help="Fraction of the prunable (attention + MLP) parameters to remove, in (0, 1)."),
    recover: bool = typer.Option(False, "--recover", help="Layer-wise recovery: ridge refit of the linear maps to the dense outputs."),
    refit: str = typer.Option("full", help="Maps refit by --recover: full (q,k,v, o, gate,up, down) | second (o and down only)."),
    ridge_toward: str = typer.Option("current", help="What the --recover ridge shrinks toward: current (the weights before the refit; default) | zero (classic ridge)."),
    damp: float = typer.Option(0.01, help="dap-obs: relative dampening of the input Gram, H + damp·mean(diag H)·I, > 0."),
    bias_compensation: Optional[bool] = typer.Option(None, "--bias-compensation/--no-bias-compensation", help="Add zero biases and compensate into them (FLAP's mean; dap-obs: the intercept row). Default: on for flap only."),
    head_criterion: str = typer.Option("score", help="score (the method's head score) | similarity (Jensen–Shannon greedy, then score)."),
    similarity_tau: float = typer.Option(0.2, help="τ of the head-similarity criterion (nats), > 0."),
    allocation: Optional[str] = typer.Option(None, help="Default: the method's (global for dap-obs, else uniform). uniform (one ratio over the layer range) | adaptive (FLAP: global threshold on standardised scores) | global (raw scores per parameter, one threshold: dap-obs)."),
    calib: str = typer.Option("wiki-sample", help="Calibration corpus: wiki-sample | path.txt | path.jsonl | ..."),
    calib_split: str = typer.Option("auto", help="Part of --calib to calibrate on: auto (the calibration half of wiki-sample, all of a user's file) | calibration | eval | all."),
    calib_samples: int = typer.Option(64, min=1, help="Calibration sequences."),
    calib_seq_len: int = typer.Option(128, min=2, help="Tokens per calibration sequence (at most the model's context)."),
    calib_select: str = typer.Option("random", help="How the --calib-samples windows are chosen: random (non-overlapping random windows) | skmm | kcenter | herding | ... (any label-free selection method, on the windows' sketched layer-input moments)."),
    calib_pool: Optional[int] = typer.Option(None, help="--calib-select other than random: candidate windows (a uniform subset of every non-overlapping window of the split; default all)."),
    calib_representation: str = typer.Option("moments", help="--calib-select other than random: moments (sketched per-window x xᵀ of a few blocks' MLP inputs) | hidden (mean-pooled states)."),
    seed: int = typer.Option(0, help="Seed of the document split, the calibration windows and random scores."),
    head_mode: str = typer.Option("per-group", help="per-group (same query heads removed in every KV group) | kv-groups."),
    layer_start: Optional[int] = typer.Option(None, min=0, help="First block to prune (default: the paper's 4)."),
    layer_stop: Optional[int] = typer.Option(None, min=1, help="Block after the last one to prune (default L − 2)."),
    attention_ratio: Optional[float] = typer.Option(None, help="Fixed per-layer head ratio in [0, 1) (instead of --sparsity)."),
    ffn_ratio: Optional[float] = typer.Option(None, help="Fixed per-layer FFN channel ratio in [0, 1) (instead of --sparsity)."),
    out: Path = typer.Option(..., "--out", help="Output HF directory (written atomically) with pruning.json; an existing directory is replaced only if an earlier run wrote it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it holds files this program did not write."),
    dtype: str = typer.Option("float32", help="Parameter dtype: float32 | bfloat16 (statistics and Grams accumulate in float32 either way)."),
    mesh: Optional[str] = typer.Option(None, help='Device mesh, e.g. "data=4,model=2": parameters FSDP-sharded over data and tensor-parallel over model, calibration sequences over data.'),
    checkpoint: Optional[Path] = typer.Option(None, help="Directory for a checkpoint after every block (pruned blocks, both calibration streams); deleted once --out is written."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run whose checkpoint is in --checkpoint (same flags and model)."),
) -> None:
    """Prune a LLaMA model structurally and save it as an HF directory."""
    import time

    import numpy as np
    from tqdm import tqdm

    from prune_jax.data import calibration_batches
    from prune_jax.models.llama import save_hf
    from prune_jax.pruning import PruneConfig, prune

    # Every cheap check first: a bad flag must not cost a model load.
    check_output_dir(out, overwrite=overwrite)
    if dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    device_mesh = _mesh(mesh)
    if device_mesh is not None and "data" in device_mesh.shape and calib_samples % device_mesh.shape["data"]:
        fail(f"--calib-samples {calib_samples} must divide over the mesh's data axis ({device_mesh.shape['data']} devices)")
    calib_split = _resolve_split(calib_split, calib, auto="calibration", flag="--calib-split")
    from prune_jax.pruning.calib_select import REPRESENTATIONS
    from skmm_jax.select import METHODS as SELECTION_METHODS

    if calib_select != "random" and (calib_select not in SELECTION_METHODS or SELECTION_METHODS[calib_select].needs_labels):
        fail(f"--calib-select {calib_select!r} is not random or a label-free selection method: "
             + ", ".join(sorted(k for k, v in SELECTION_METHODS.items() if not v.needs_labels)))
    if calib_representation not in REPRESENTATIONS:
        fail(f"--calib-representation {calib_representation!r} is not one of {', '.join(REPRESENTATIONS)}")
    if calib_pool is not None and calib_pool < calib_samples:
        fail(f"--calib-pool {calib_pool} is smaller than --calib-samples {calib_samples}")
    if calib_pool is not None and calib_select == "random":
        fail("--calib-pool applies to a --calib-select other than random")
    from prune_jax.pruning.resume import checkpoint_store

    store = _checkpoint(checkpoint_store, checkpoint, resume=resume, out=out)
    layer_range = None
    if layer_start is not None or layer_stop is not None:
        if layer_start is None or layer_stop is None:
            fail("--layer-start and --layer-stop go together")
        layer_range = (layer_start, layer_stop)
    try:
        config = PruneConfig(method=method, sparsity=sparsity, recover=recover, refit=refit, head_mode=head_mode,
                             head_criterion=head_criterion, similarity_tau=similarity_tau, allocation=allocation,
                             layer_range=layer_range, attention_ratio=attention_ratio, ffn_ratio=ffn_ratio, seed=seed,
                             ridge_toward=ridge_toward, damp=damp, bias_compensation=bias_compensation)
    except ValueError as err:
        fail_config(err, PRUNE_FLAGS)
    try:
        start = time.perf_counter()
        calibration_docs = _documents(calib, calib_split, seed)  # before the model: a bad --calib costs no load
        net, tok = _load_model_with_status(model, dtype, device_mesh)
        if tok is None:
            fail(f"{model} has no tokenizer files")
        net.config.check_sequence_length(calib_seq_len, name="--calib-seq-len")
        if layer_range is not None and not 0 <= layer_range[0] < layer_range[1] <= net.config.num_layers:
            fail(f"--layer-start/--layer-stop must satisfy 0 <= start < stop <= {net.config.num_layers} (the model's layers), got {layer_range}")
        calibration_tokens = _tokens(calibration_docs, tok)
        chosen = None
        if calib_select == "random":
            batches = calibration_batches(calibration_tokens, num_samples=calib_samples, seq_len=calib_seq_len, seed=seed)
        else:
            from prune_jax.pruning.calib_select import select_calibration

            with tqdm(unit="window", desc=f"calibration windows ({calib_representation})") as bar:
                def show(done, total):
                    bar.total = total
                    bar.update(done - bar.n)

                chosen = select_calibration(net, calibration_tokens, calib_samples, method=calib_select, representation=calib_representation,
                                            seq_len=calib_seq_len, pool=calib_pool, seed=seed, progress=show)
            batches = chosen.windows
        with tqdm(total=net.config.num_layers, unit="block", desc=f"prune {method}") as bar:
            net, report = prune(net, batches, config, mesh=device_mesh, progress=lambda done, total: bar.update(done - bar.n),
                                checkpoint=checkpoint)
        record = report.to_json()
        record["dtype"], record["mesh"] = dtype, None if device_mesh is None else dict(device_mesh.shape)
        record["calibration"] = {
            "source": calib, "split": calib_split, "documents": [d.id for d in calibration_docs],
            "tokens": int(np.asarray(batches).size), "samples": calib_samples, "seq_len": calib_seq_len, "seed": seed,
            "selection": {"method": "random"} if chosen is None else chosen.record,
        }
        record["model"] = str(model)
        record["total_seconds"] = time.perf_counter() - start
        if not _is_writer(net):
            return
        message = save_hf(net, tok, out, extra_files={"pruning.json": record}, overwrite=overwrite)
        if store is not None:  # the output is complete: the checkpoint has served (only its own files go)
            store.remove()
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        fail(str(err))
    console.print(
        f"{method}{' + recovery' if recover else ''}: removed {report.fraction_of_prunable_removed:.1%} of prunable "
        f"({report.fraction_of_all_removed:.1%} of all) parameters, {report.parameters_before:,} → "
        f"{report.parameters_after:,}; wrote {out} in {record['total_seconds']:.0f} s"
    )
    if message:
        console.print(f"[yellow]note:[/yellow] {message}")


@app.command("finetune")
def finetune_command(
    model: str = typer.Option("smollm2-135m", help="smollm2-135m | an HF model directory | a .gguf file."),
    data: str = typer.Option("wiki-sample", help="Finetuning corpus: wiki-sample | python-docs | path.txt | path.jsonl | ..."),
    split: str = typer.Option("auto", help="Part of --data to train on: auto (the calibration half of wiki-sample, so its evaluation half stays held out; all of a user's file) | calibration | eval | all."),
    seq_len: int = typer.Option(128, min=2, help="Tokens per training passage (non-overlapping windows of the corpus)."),
    pool: Optional[int] = typer.Option(None, min=1, help="Candidate passages: a uniform subset of every window (default all)."),
    select_method: str = typer.Option("all", "--select", help="all (train on the whole pool) | uniform | skmm | kcenter | herding | ... (any label-free selection method, on sketched per-passage gradients of the trained parameters)."),
    n: Optional[int] = typer.Option(None, min=1, help="Passages to keep (with --select other than all)."),
    sketch_dim: int = typer.Option(256, min=1, help="m of the per-passage gradient sketch (Kronecker per kernel)."),
    trainable: str = typer.Option("lora", help="lora (rank --lora-rank adapters on the q, v, o, gate, up and down kernels) | blocks (all of the last --last-blocks blocks)."),
    lora_rank: int = typer.Option(8, min=1, help="LoRA rank r."),
    lora_alpha: float = typer.Option(16.0, help="LoRA α (scale α / r)."),
    lora_blocks: Optional[int] = typer.Option(None, min=1, help="LoRA on the last k blocks only (default every block): the backward pass stops there."),
    last_blocks_count: int = typer.Option(2, "--last-blocks", min=1, help="k for --trainable blocks."),
    steps: int = typer.Option(100, min=1, help="Optimizer updates."),
    batch_size: int = typer.Option(8, min=1, help="Passages per micro-batch."),
    accumulation: int = typer.Option(1, min=1, help="Micro-batches per update (gradient accumulation)."),
    lr: float = typer.Option(2e-4, help="AdamW learning rate."),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay (matrices only)."),
    eval_windows_count: int = typer.Option(0, "--eval-windows", min=0, help="Held-out windows (the evaluation half of wiki-sample, or of --data) scored before and after (0: skip)."),
    seed: int = typer.Option(0, help="Seed of the split, the pool, the selection, the LoRA init and the passage order."),
    dtype: str = typer.Option("float32", help="Model dtype: float32 | bfloat16 (LoRA factors and Adam stay float32)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Directory for checkpoints (every 25 updates): new, empty or a finetune checkpoint, never --out or around it; its files are deleted once --out is written."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run whose checkpoint is in --checkpoint (same flags, model and data)."),
    out: Path = typer.Option(..., "--out", help="Output HF directory (written atomically) with finetune.json; an existing directory is replaced only if an earlier run wrote it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it holds files this program did not write."),
) -> None:
    """Finetune a LLaMA model (LoRA or its last blocks) on passages of a corpus, optionally
    chosen by SkMM on their sketched gradients, and save it as an HF directory."""
    import dataclasses
    import time

    import jax
    import numpy as np
    from tqdm import tqdm

    from prune_jax.data import eval_windows
    from prune_jax.evaluate import perplexity
    from prune_jax.finetune import FinetuneConfig, finetune, finetune_gradients
    from prune_jax.models.llama import save_hf
    from prune_jax.pruning.calib_select import window_pool
    from skmm_jax.select import METHODS as SELECTION_METHODS
    from skmm_jax.select import select

    check_output_dir(out, overwrite=overwrite)
    if dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    label_free = sorted(k for k, v in SELECTION_METHODS.items() if not v.needs_labels)
    if select_method != "all" and select_method not in label_free:
        fail(f"--select {select_method!r} is not all or a label-free selection method: {', '.join(label_free)}")
    if (select_method == "all") != (n is None):
        fail("--n goes with --select other than all (how many passages to keep)" if n is None else "--n needs --select (e.g. --select skmm)")
    if pool is not None and n is not None and pool < n:
        fail(f"--pool {pool} is smaller than --n {n}")
    split = _resolve_split(split, data, auto="calibration")
    try:
        config = FinetuneConfig(trainable=trainable, rank=lora_rank, alpha=lora_alpha, last_blocks=last_blocks_count,
                                learning_rate=lr, weight_decay=weight_decay, steps=steps, batch_size=batch_size,
                                accumulation=accumulation, seed=seed)
    except ValueError as err:
        fail_config(err, FINETUNE_FLAGS)
    from prune_jax.finetune import checkpoint_store

    store = _checkpoint(checkpoint_store, checkpoint, resume=resume, out=out)
    try:
        start = time.perf_counter()
        docs = _documents(data, split, seed)  # before the model: a bad --data costs no load
        net, tok = _load_model_with_status(model, dtype)
        if tok is None:
            fail(f"{model} has no tokenizer files")
        net.config.check_sequence_length(seq_len, name="--seq-len")
        layers = net.config.num_layers
        if lora_blocks is not None:
            if lora_blocks > layers:
                fail(f"--lora-blocks {lora_blocks} exceeds the model's {layers} blocks")
            config = dataclasses.replace(config, lora_layers=tuple(range(layers - lora_blocks, layers)))
        if trainable == "blocks" and last_blocks_count > layers:
            fail(f"--last-blocks {last_blocks_count} exceeds the model's {layers} blocks")
        rows = window_pool(_tokens(docs, tok), seq_len, pool=pool, seed=seed).astype(np.int32)
        if n is not None and n > len(rows):
            fail(f"--n {n} exceeds the {len(rows)} passages of {seq_len} tokens in --data {data} ({split})")
        selection = {"method": "all", "pool": int(len(rows))}
        if select_method != "all":
            features = np.ones((len(rows), 1), np.float32)  # uniform needs no representation
            if select_method != "uniform":
                with tqdm(total=len(rows), unit="passage", desc="sketched per-passage gradients") as bar:
                    features = finetune_gradients(net, rows, config, sketch_dim=sketch_dim,
                                                  progress=lambda done, total: bar.update(done - bar.n))
            chosen = select(select_method, jax.random.key(seed), features, n)
            selection.update(method=select_method, n=n, sketch_dim=sketch_dim, indices=[int(i) for i in chosen.indices],
                             diagnostics={k: v for k, v in chosen.diagnostics.items() if isinstance(v, (int, float, str, bool))})
            rows = rows[np.asarray(chosen.indices)]
        held = None
        if eval_windows_count:  # the other half of the document split is held out
            held_split = {"calibration": "eval", "eval": "calibration"}.get(split)
            if held_split is None:
                fail("--eval-windows needs a held-out half: pass --split calibration (or eval)")
            held = eval_windows(_tokens(_documents(data, held_split, seed), tok), seq_len, eval_windows_count)
        before = None if held is None else perplexity(net, held).perplexity
        with tqdm(total=config.steps, unit="update", desc=f"finetune {trainable} on {len(rows)} passages") as bar:
            result = finetune(net, rows, config, checkpoint=checkpoint, progress=lambda done, total: bar.update(done - bar.n))
        after = None if held is None else perplexity(result.model, held).perplexity
        record = {"config": config.to_json(), "data": {"source": data, "split": split, "documents": [d.id for d in docs],
                                                     "seq_len": seq_len, "rows": int(len(rows))},
                  "selection": selection, "losses": [float(x) for x in result.losses], "model": str(model), "dtype": dtype,
                  "held_out_perplexity": None if held is None else {"before": before, "after": after, "windows": int(len(held))},
                  "total_seconds": time.perf_counter() - start}
        message = save_hf(result.model, tok, out, extra_files={"finetune.json": record}, overwrite=overwrite)
        if store is not None:  # the output is complete: the checkpoint has served (only its own files go)
            store.remove()
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        fail(str(err))
    summary = f"loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}"
    if held is not None:
        summary += f"; held-out PPL ({len(held)}×{seq_len}) {before:.2f} → {after:.2f}"
    console.print(f"finetuned {trainable} on {len(rows)} passages ({selection['method']}), {summary}; wrote {out} in {record['total_seconds']:.0f} s")
    if message:
        console.print(f"[yellow]note:[/yellow] {message}")


@app.command("demo")
def demo_command(
    method: str = typer.Option("dap-obs", help="Pruning score: " + " | ".join(METHODS) + "."),
    recover: bool = typer.Option(False, "--recover/--no-recover", help="Layer-wise recovery (ridge refit of every linear map; dap-obs compensates by itself)."),
    sparsity: float = typer.Option(0.2, help="Fraction of the prunable parameters to remove, in (0, 1)."),
    calib_samples: int = typer.Option(64, min=1, help="Calibration sequences of 128 tokens."),
    eval_windows_count: int = typer.Option(64, "--eval-windows", min=1, help="Evaluation windows of 128 tokens."),
    task_items: int = typer.Option(100, min=1, help=f"Items of the built-in zero-shot task {DEMO_TASK} scored on both models."),
    out: Path = typer.Option(Path("pruned/smollm2-135m-demo"), "--out", help="Where the pruned model is saved."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it holds files this program did not write."),
) -> None:
    """The main job: prune the embedded SmolLM2-135M on the Wikipedia sample and compare with the dense model.

    The paper's protocol keeps the first 4 and the last 2 blocks dense, so the layers
    end up with different widths: the export carries our prune_jax_config.json
    (loadable by prune-jax eval / load_model), which stock transformers cannot read.
    """
    import time

    import numpy as np
    from rich.table import Table
    from tqdm import tqdm

    from prune_jax.data import calibration_batches, eval_windows, load_documents, split_documents
    from prune_jax.evaluate import forward_tokens_per_second, perplexity
    from prune_jax.models.llama import save_hf
    from prune_jax.pruning import PruneConfig, prune
    from prune_jax.zero_shot.tasks import builtin_task, evaluate_task

    def tokens_per_second(net, tokens) -> float:
        return forward_tokens_per_second(net, np.asarray(tokens[: 8 * 128]).reshape(8, 128), repeats=3)

    check_output_dir(out, overwrite=overwrite)
    try:
        config = PruneConfig(method=method, sparsity=sparsity, recover=recover)
    except ValueError as err:
        fail(str(err))
    try:
        net, tok = _load_model_with_status("smollm2-135m")
        calibration_docs, evaluation_docs = split_documents(load_documents("wiki-sample"), seed=0)
        calib = calibration_batches(_tokens(calibration_docs, tok), num_samples=calib_samples, seq_len=128, seed=0)
        eval_tokens = _tokens(evaluation_docs, tok)
        windows = eval_windows(eval_tokens, 128, eval_windows_count)
        with tqdm(total=len(windows), unit="window", desc="dense perplexity") as bar:
            dense_ppl = perplexity(net, windows, progress=lambda done, total: bar.update(done - bar.n)).perplexity
        dense_speed = tokens_per_second(net, eval_tokens)
        task = builtin_task(DEMO_TASK, max_items=task_items)

        def accuracy(net, which: str) -> dict:
            with tqdm(total=len(task.items), unit="item", desc=f"{which} {DEMO_TASK}") as bar:
                return evaluate_task(net, tok, task, progress=lambda done, total: bar.update(done - bar.n))

        dense_task = accuracy(net, "dense")
        start = time.perf_counter()
        desc = f"prune {sparsity:.0%} {method}{' + recovery' if recover else ''}, {calib.shape[0]}×128 calibration tokens"
        with tqdm(total=net.config.num_layers, unit="block", desc=desc) as bar:
            net, report = prune(net, calib, config, progress=lambda done, total: bar.update(done - bar.n))
        prune_seconds = time.perf_counter() - start
        with tqdm(total=len(windows), unit="window", desc="pruned perplexity") as bar:
            pruned_ppl = perplexity(net, windows, progress=lambda done, total: bar.update(done - bar.n)).perplexity
        pruned_speed = tokens_per_second(net, eval_tokens)
        pruned_task = accuracy(net, "pruned")
        record = report.to_json()
        record["calibration"] = {"source": "wiki-sample", "split": "calibration", "documents": [d.id for d in calibration_docs],
                                 "tokens": int(calib.size), "samples": calib_samples, "seq_len": 128, "seed": 0}
        message = save_hf(net, tok, out, extra_files={"pruning.json": record}, overwrite=overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        fail(str(err))
    table = Table(title=f"SmolLM2-135M-Instruct (Q4_1, dequantised), {method}{' + recovery' if recover else ''}, {sparsity:.0%} of prunable parameters")
    for col in ("model", "parameters", f"perplexity ({len(windows)}×128)", f"{DEMO_TASK} acc ({len(task.items)} items)", "tokens/s (8×128)"):
        table.add_column(col, justify="right")
    for name, params, ppl, acc, speed in (("dense", report.parameters_before, dense_ppl, dense_task, dense_speed),
                                          ("pruned", report.parameters_after, pruned_ppl, pruned_task, pruned_speed)):
        table.add_row(name, f"{params:,}", f"{ppl:.2f}", f"{acc['acc']:.1%} ± {acc['acc_stderr']:.1%}", f"{speed:.0f}")
    Console().print(table)
    console.print(
        f"removed {report.fraction_of_prunable_removed:.1%} of prunable / {report.fraction_of_all_removed:.1%} of all parameters; "
        f"speed-up {pruned_speed / dense_speed:.2f}×; pruning took {prune_seconds:.0f} s; saved to {out}"
    )
    if message:
        console.print(f"[yellow]note:[/yellow] {message}")


PERPLEXITY_ONLY = ("data", "seq_len", "split", "seed", "max_windows", "batch_size")  # eval options that --tasks does not read


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    model: str = typer.Option("smollm2-135m", help="smollm2-135m | an HF model directory | a .gguf file."),
    data: str = typer.Option("wiki-sample", help="wiki-sample | path.txt | path.jsonl | path.parquet | hf:dataset[:config]:split."),
    seq_len: int = typer.Option(128, min=2, help="Tokens per window (non-overlapping windows), at most the model's context."),
    split: str = typer.Option("auto", help=SPLIT_HELP),
    seed: int = typer.Option(0, help="Seed of the document split."),
    max_windows: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first this many windows."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Windows per step (default ≈ 16K tokens per step)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16."),
    attention: str = typer.Option("chunked", help="chunked (XLA, no [T, T] scores) | dot_product (jax.nn.dot_product_attention: cuDNN flash on GPU)."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer directory (or .gguf), when the model has none of its own."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON (atomically)."),
    tasks: Optional[str] = typer.Option(None, help="Zero-shot tasks instead of perplexity: comma-separated built-in names (" + ", ".join(BUILTIN_TASK_NAMES) + ") or paths to .jsonl files (one {context, choices, gold[, id]} per line). Writes acc / acc_norm with standard errors."),
    limit: Optional[int] = typer.Option(None, min=1, help="--tasks: score only the first this many items of each task (built-in tasks: up to 500, in a fixed random order, so a prefix is a random sample)."),
) -> None:
    """Perplexity of a LLaMA model on a corpus (exp(mean NLL) over non-overlapping
    windows), or with --tasks its zero-shot accuracy (acc, acc_norm)."""
    import time

    # typed on the command line (not defaulted); by name: typer ships its own copy of click's enum
    given = [name for name in PERPLEXITY_ONLY if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if tasks is not None:
        if given:
            fail(f"{', '.join('--' + name.replace('_', '-') for name in given)}: perplexity options, not read with --tasks "
                 "(zero-shot tasks score their own items); drop them or run the perplexity evaluation separately")
        return _eval_tasks(model, tasks, limit=limit, dtype=dtype, attention=attention, tokenizer=tokenizer, json_out=json_out)
    if limit is not None:
        fail("--limit applies to --tasks (items per task); for perplexity use --max-windows")

    from tqdm import tqdm

    from prune_jax.data import eval_windows
    from prune_jax.evaluate import perplexity
    from prune_jax.models.llama.modeling import ATTENTION_IMPLEMENTATIONS
    from skmm_jax.common.io import save_json_atomic

    split = _resolve_split(split, data, auto="eval")
    if dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if attention not in ATTENTION_IMPLEMENTATIONS:
        fail(f"--attention must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, got {attention!r}")
    check_output_file(json_out, "--json")
    if tokenizer is not None and not tokenizer.exists():
        fail(f"--tokenizer {tokenizer} does not exist (expected a tokenizer/model directory or a .gguf file)")
    try:
        start = time.perf_counter()
        docs = _documents(data, split, seed)  # before the model: a bad --data costs no load
        net, tok = _load_for_eval(model, dtype, attention, tokenizer)
        net.config.check_sequence_length(seq_len, name="--seq-len")
        windows = eval_windows(_tokens(docs, tok), seq_len, max_windows)
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with tqdm(total=len(windows), unit="window", desc=f"perplexity T={seq_len}") as bar:
            result = perplexity(net, windows, batch_size=batch_size, progress=lambda done, total: bar.update(done - bar.n))
        seconds = time.perf_counter() - start
    except (ValueError, FileNotFoundError, TypeError) as err:
        fail(str(err))
    payload = {
        "model": str(model), "data": str(data), "split": split, "seed": seed, "dtype": dtype, "attention": attention,
        "perplexity": result.perplexity, "nll": result.nll, "tokens": result.tokens, "windows": result.windows,
        "seq_len": result.seq_len, "documents": len(docs), "seconds": seconds, "load_seconds": load_seconds,
        "tokens_per_second": result.windows * result.seq_len / seconds,
    }
    console.print(
        f"{model} on {data} ({split}, {len(docs)} documents): perplexity [bold]{result.perplexity:.4f}[/bold] "
        f"over {result.windows} windows × {seq_len} tokens ({result.tokens} predicted) in {seconds:.1f} s"
    )
    if json_out is not None:
        save_json_atomic(json_out, payload)


def _load_for_eval(model: str, dtype: str, attention: str, tokenizer: Optional[Path]):
    """(model, tokenizer) for evaluation, with --tokenizer checked against the model."""
    from prune_jax.models.llama import load_tokenizer, set_attention
    from prune_jax.models.llama.checkpoint import check_tokenizer

    net, tok = _load_model_with_status(model, dtype)
    set_attention(net, attention)
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        if tok is None:
            fail(f"--tokenizer {tokenizer} holds no tokenizer files (tokenizer.json, tokenizer_config.json or tokenizer.model)")
        check_tokenizer(net, tok)
    if tok is None:
        fail(f"{model} has no tokenizer files; pass --tokenizer DIR")
    return net, tok


def _eval_tasks(model: str, tasks: str, *, limit: int | None, dtype: str, attention: str, tokenizer: Optional[Path],
                json_out: Optional[Path]) -> None:
    """prune-jax eval --tasks: every task is read and checked against the model's window
    before any scoring, and the JSON is written (atomically) only when all have run."""
    import dataclasses
    import time

    from rich.table import Table
    from tqdm import tqdm

    from prune_jax.models.llama.modeling import ATTENTION_IMPLEMENTATIONS
    from prune_jax.zero_shot.tasks import evaluate_tasks, resolve_task
    from skmm_jax.common.io import save_json_atomic

    if dtype not in DTYPES:
        fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if attention not in ATTENTION_IMPLEMENTATIONS:
        fail(f"--attention must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, got {attention!r}")
    check_output_file(json_out, "--json")
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        fail("--tasks is empty; give built-in task names or .jsonl paths, comma-separated")
    try:
        loaded = [resolve_task(name) for name in names]
        stems = [task.name for task in loaded]
        # two files with one stem (a/task.jsonl, b/task.jsonl): name each by the path given, so no result is dropped
        loaded = [dataclasses.replace(task, name=spec) if stems.count(task.name) > 1 else task for task, spec in zip(loaded, names)]
        if len({task.name for task in loaded}) < len(loaded):
            fail(f"--tasks names a task twice: {tasks}")
        if limit is not None:
            loaded = [dataclasses.replace(task, items=task.items[:limit]) for task in loaded]
        net, tok = _load_for_eval(model, dtype, attention, tokenizer)
        start = time.perf_counter()
        bars = []

        def progress_for(task):
            bar = tqdm(unit="request", desc=task.name)
            bars.append(bar)

            def show(done, total):  # total: the task's requests, as the scorer counts them
                bar.total = total
                bar.update(done - bar.n)

            return show

        results = evaluate_tasks(net, tok, loaded, progress_factory=progress_for)
        for bar in bars:
            bar.close()
        seconds = time.perf_counter() - start
    except (ValueError, FileNotFoundError, TypeError) as err:
        fail(str(err))
    table = Table(title=f"{model}: zero-shot accuracy (± standard error)")
    for col in ("task", "items", "acc", "acc_norm", "chance"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        norm = f"{r['acc_norm']:.3f} ± {r['acc_norm_stderr']:.3f}" if "acc_norm" in r else "—"
        table.add_row(name, str(r["n"]), f"{r['acc']:.3f} ± {r['acc_stderr']:.3f}", norm, f"{r['chance']:.3f}")
    Console().print(table)
    console.print(f"scored in {seconds:.1f} s")
    if json_out is not None:
        save_json_atomic(json_out, {"model": str(model), "dtype": dtype, "limit": limit, "seconds": seconds, "tasks": results})


# ------------------------------------------------------------ prune-jax data (also: python -m prune_jax.data)

data_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Text corpora: fetch the Wikipedia sample, show a corpus and its split.",
)
app.add_typer(data_app, name="data")
DATA_ERRORS = (OSError, ValueError, RuntimeError, ImportError)  # what prune_jax.data raises on bad input or no network


@data_app.command("fetch")
def data_fetch_command(
    cache_dir: Optional[Path] = typer.Option(
        None, help="Cache root (default: $PRUNE_JAX_CACHE or ~/.cache/prune_jax)."
    ),
    wheel: Optional[Path] = typer.Option(None, help="Take the file from this gensim wheel instead of downloading it."),
) -> None:
    """Fetch the embedded Wikipedia sample into the cache and print its path."""
    from prune_jax.data import fetch_wiki_sample

    try:
        path = fetch_wiki_sample(cache_dir, wheel=wheel)
    except DATA_ERRORS as err:
        fail(str(err))
    typer.echo(path)  # plain, unwrapped: scripts read the path


@data_app.command("stats")
def data_stats_command(
    source: str = typer.Argument(
        "wiki-sample",
        help="wiki-sample | path.txt | path.jsonl | path.parquet | dump.xml.bz2 | hf:dataset[:config]:split.",
    ),
) -> None:
    """Document and character counts of a corpus and of its default calibration / evaluation split."""
    from prune_jax.data import load_documents, split_documents

    try:
        docs = load_documents(source)
        calibration, evaluation = split_documents(docs) if len(docs) >= 2 else (docs, [])
    except DATA_ERRORS as err:
        fail(str(err))
    typer.echo(f"{source}: {len(docs)} documents, {sum(len(d.text) for d in docs)} characters")
    for name, part in (("calibration", calibration), ("evaluation", evaluation)):
        typer.echo(f"  {name}: {len(part)} documents, {sum(len(d.text) for d in part)} characters")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
