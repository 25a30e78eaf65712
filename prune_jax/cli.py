"""``prune-jax``: a thin command line over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distribution-aware structured pruning of LLaMA models in JAX.")
console = Console()


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


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command("prune")
def prune_command(
    model: str = typer.Option("smollm2-135m", help="smollm2-135m | an HF model directory | a .gguf file."),
    method: str = typer.Option("dap", help="random | magnitude | depth2 | wanda-sp | flap | dap | dap-cov | dap-empirical"),
    sparsity: float = typer.Option(0.2, help="Fraction of the prunable (attention + MLP) parameters to remove, in (0, 1)."),
    recover: bool = typer.Option(False, "--recover", help="Layer-wise recovery: ridge refit of the linear maps to the dense outputs."),
    refit: str = typer.Option("full", help="Maps refit by --recover: full (q,k,v, o, gate,up, down) | second (o and down only)."),
    head_criterion: str = typer.Option("score", help="score (the method's head score) | similarity (Jensen–Shannon greedy, then score)."),
    similarity_tau: float = typer.Option(0.2, help="τ of the head-similarity criterion (nats)."),
    allocation: str = typer.Option("uniform", help="uniform (one ratio over the layer range) | adaptive (FLAP: global threshold on standardised scores)."),
    calib: str = typer.Option("wiki-sample", help="Calibration corpus: wiki-sample | path.txt | path.jsonl | ..."),
    calib_samples: int = typer.Option(64, help="Calibration sequences."),
    calib_seq_len: int = typer.Option(128, help="Tokens per calibration sequence."),
    seed: int = typer.Option(0, help="Seed of the document split, the calibration windows and random scores."),
    head_mode: str = typer.Option("per-group", help="per-group (same query heads removed in every KV group) | kv-groups."),
    layer_start: Optional[int] = typer.Option(None, help="First block to prune (default: the paper's 4)."),
    layer_stop: Optional[int] = typer.Option(None, help="Block after the last one to prune (default L − 2)."),
    attention_ratio: Optional[float] = typer.Option(None, help="Fixed per-layer head ratio (instead of --sparsity)."),
    ffn_ratio: Optional[float] = typer.Option(None, help="Fixed per-layer FFN channel ratio (instead of --sparsity)."),
    out: Path = typer.Option(..., "--out", help="Output HF directory (written atomically) with pruning.json."),
) -> None:
    """Prune a LLaMA model structurally and save it as an HF directory."""
    import time

    import numpy as np
    from tqdm import tqdm

    from prune_jax.data import calibration_batches, load_documents, split_documents, tokenize_corpus
    from prune_jax.models.llama import load_model, save_hf
    from prune_jax.pruning import PruneConfig, prune

    try:
        layer_range = None
        if layer_start is not None or layer_stop is not None:
            if layer_start is None or layer_stop is None:
                _fail("--layer-start and --layer-stop go together")
            layer_range = (layer_start, layer_stop)
        config = PruneConfig(method=method, sparsity=sparsity, recover=recover, refit=refit, head_mode=head_mode,
                             head_criterion=head_criterion, similarity_tau=similarity_tau, allocation=allocation,
                             layer_range=layer_range, attention_ratio=attention_ratio, ffn_ratio=ffn_ratio, seed=seed)
        start = time.perf_counter()
        net, tok = load_model(model)
        if tok is None:
            _fail(f"{model} has no tokenizer files")
        calibration_docs, _ = split_documents(load_documents(calib), seed=seed)
        tokens = tokenize_corpus(calibration_docs, tok)
        batches = calibration_batches(tokens, num_samples=calib_samples, seq_len=calib_seq_len, seed=seed)
        with tqdm(total=net.config.num_layers, unit="block", desc=f"prune {method}") as bar:
            net, report = prune(net, batches, config, progress=lambda done, total: bar.update(done - bar.n))
        report["calibration"] = {
            "source": calib, "documents": [d.id for d in calibration_docs], "tokens": int(np.asarray(batches).size),
            "samples": calib_samples, "seq_len": calib_seq_len, "seed": seed,
        }
        report["model"] = str(model)
        report["total_seconds"] = time.perf_counter() - start
        message = save_hf(net, tok, out, extra_files={"pruning.json": report})
    except (ValueError, FileNotFoundError, TypeError) as err:
        _fail(str(err))
    console.print(
        f"{method}{' + recovery' if recover else ''}: removed {report['fraction_of_prunable_removed']:.1%} of prunable "
        f"({report['fraction_of_all_removed']:.1%} of all) parameters, {report['parameters_before']:,} → "
        f"{report['parameters_after']:,}; wrote {out} in {report['total_seconds']:.0f} s"
    )
    if message:
        console.print(f"[yellow]note:[/yellow] {message}")


@app.command("demo")
def demo_command(
    method: str = typer.Option("dap", help="Pruning score (see prune --help)."),
    recover: bool = typer.Option(True, "--recover/--no-recover", help="Layer-wise recovery (ridge refit of every linear map)."),
    sparsity: float = typer.Option(0.2, help="Fraction of the prunable parameters to remove."),
    calib_samples: int = typer.Option(64, help="Calibration sequences of 128 tokens."),
    eval_windows_count: int = typer.Option(64, "--eval-windows", help="Evaluation windows of 128 tokens."),
    out: Path = typer.Option(Path("pruned/smollm2-135m-demo"), "--out", help="Where the pruned model is saved."),
) -> None:
    """The main job: prune the embedded SmolLM2-135M on the Wikipedia sample and compare with the dense model."""
    import time

    import numpy as np
    from rich.table import Table

    from prune_jax.data import calibration_batches, eval_windows, load_documents, split_documents, tokenize_corpus
    from prune_jax.evaluate import forward_tokens_per_second, perplexity
    from prune_jax.models.llama import load_model, save_hf
    from prune_jax.pruning import PruneConfig, prune

    def tokens_per_second(net, tokens) -> float:
        return forward_tokens_per_second(net, np.asarray(tokens[: 8 * 128]).reshape(8, 128), repeats=3)

    try:
        net, tok = load_model("smollm2-135m")
        calibration_docs, evaluation_docs = split_documents(load_documents("wiki-sample"))
        calib = calibration_batches(tokenize_corpus(calibration_docs, tok), num_samples=calib_samples, seq_len=128, seed=0)
        eval_tokens = tokenize_corpus(evaluation_docs, tok)
        windows = eval_windows(eval_tokens, 128, eval_windows_count)
        console.print(f"SmolLM2-135M: evaluating the dense model on {len(windows)} × 128 held-out tokens ...")
        dense_ppl = perplexity(net, windows).perplexity
        dense_speed = tokens_per_second(net, eval_tokens)
        console.print(f"pruning {sparsity:.0%} with {method}{' + recovery' if recover else ''} on {calib.shape[0]} × 128 calibration tokens ...")
        start = time.perf_counter()
        net, report = prune(net, calib, PruneConfig(method=method, sparsity=sparsity, recover=recover))
        prune_seconds = time.perf_counter() - start
        pruned_ppl = perplexity(net, windows).perplexity
        pruned_speed = tokens_per_second(net, eval_tokens)
        report["calibration"] = {"source": "wiki-sample", "documents": [d.id for d in calibration_docs],
                                 "tokens": int(calib.size), "samples": calib_samples, "seq_len": 128, "seed": 0}
        save_hf(net, tok, out, extra_files={"pruning.json": report})
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    table = Table(title=f"SmolLM2-135M, {method}{' + recovery' if recover else ''}, {sparsity:.0%} of prunable parameters")
    for col in ("model", "parameters", f"perplexity ({len(windows)}×128)", "tokens/s (8×128)"):
        table.add_column(col, justify="right")
    table.add_row("dense", f"{report['parameters_before']:,}", f"{dense_ppl:.2f}", f"{dense_speed:.0f}")
    table.add_row("pruned", f"{report['parameters_after']:,}", f"{pruned_ppl:.2f}", f"{pruned_speed:.0f}")
    Console().print(table)
    console.print(
        f"removed {report['fraction_of_prunable_removed']:.1%} of prunable / {report['fraction_of_all_removed']:.1%} of all parameters; "
        f"speed-up {pruned_speed / dense_speed:.2f}×; pruning took {prune_seconds:.0f} s; saved to {out}"
    )


@app.command("eval")
def eval_command(
    model: str = typer.Option("smollm2-135m", help="smollm2-135m | an HF model directory | a .gguf file."),
    data: str = typer.Option("wiki-sample", help="wiki-sample | path.txt | path.jsonl | path.parquet | hf:dataset[:config]:split."),
    seq_len: int = typer.Option(128, help="Tokens per window (non-overlapping windows)."),
    split: str = typer.Option("eval", help="eval | calibration | all: which document-disjoint part of the corpus."),
    seed: int = typer.Option(0, help="Seed of the document split."),
    max_windows: Optional[int] = typer.Option(None, help="Evaluate only the first this many windows."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step (default ≈ 16K tokens per step)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer directory, when the model has none of its own."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON (atomically)."),
) -> None:
    """Perplexity of a LLaMA model on a corpus: exp(mean NLL) over non-overlapping windows."""
    import time

    from tqdm import tqdm

    from prune_jax.data import eval_windows, load_documents, split_documents, tokenize_corpus
    from prune_jax.evaluate import perplexity
    from prune_jax.models.llama import load_model, load_tokenizer
    from prune_jax.models.llama.checkpoint import check_tokenizer
    from skmm_jax.io import save_json_atomic

    if split not in ("eval", "calibration", "all"):
        _fail(f"--split must be eval, calibration or all, got {split!r}")
    if seq_len < 2:
        _fail(f"--seq-len must be at least 2, got {seq_len}")
    try:
        start = time.perf_counter()
        net, tok = load_model(model, dtype=dtype)
        if tokenizer is not None:
            tok = load_tokenizer(tokenizer)
            check_tokenizer(net, tok)
        if tok is None:
            _fail(f"{model} has no tokenizer files; pass --tokenizer DIR")
        docs = load_documents(data)
        if split != "all":
            calibration, evaluation = split_documents(docs, seed=seed)
            docs = evaluation if split == "eval" else calibration
        tokens = tokenize_corpus(docs, tok)
        windows = eval_windows(tokens, seq_len, max_windows)
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with tqdm(total=len(windows), unit="window", desc=f"perplexity T={seq_len}") as bar:
            result = perplexity(net, windows, batch_size=batch_size, progress=lambda done, total: bar.update(done - bar.n))
        seconds = time.perf_counter() - start
    except (ValueError, FileNotFoundError, TypeError) as err:
        _fail(str(err))
    payload = {
        "model": str(model), "data": str(data), "split": split, "seed": seed, "dtype": dtype,
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
