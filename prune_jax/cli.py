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
