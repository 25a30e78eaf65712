"""A finetune run: documents → model → passages (all, or chosen on their sketched
gradients) → `finetune` → an HF directory with its ``finetune.json`` record.

``FinetuneRun`` says where the run reads and writes and which passages it trains on;
*what* is trained and how is the library's ``FinetuneConfig``. `finetune_record` is the
provenance written next to the weights: the training config, the data (corpus, split,
document ids, passage length and count), the selection, the losses, the model, its
dtype, the held-out perplexity before and after, and the wall time.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from prune_jax.runs.inputs import (
    DTYPES,
    check_choice,
    check_label_free,
    held_out_split,
    load_model_for_run,
    read_documents,
    resolve_split,
    tokenize,
)
from prune_jax.runs.reporting import QUIET, Reporter

__all__ = ["FinetuneOutcome", "FinetuneRun", "finetune_record", "run_finetune"]


@dataclasses.dataclass(frozen=True)
class FinetuneRun:
    """Where a finetune run reads and writes, and which passages it trains on.

    Attributes:
      out: the output HF directory (written atomically); ``overwrite`` replaces one this
        program did not write.
      model: "smollm2-135m", an HF directory or a .gguf file; ``dtype`` its parameters'.
      data: the corpus; ``split`` its part (auto: the calibration half of wiki-sample, so
        its evaluation half stays held out; all of a user's file).
      seq_len: tokens per passage (non-overlapping windows of the corpus).
      pool: candidate passages, a uniform subset of every window (None: all).
      selection: "all" (the whole pool) or a label-free selection method keeping ``n``
        passages, on per-passage gradients sketched to ``sketch_dim``.
      lora_blocks: LoRA on the last k blocks only (None: every block).
      eval_windows: held-out windows (the other half of the split) scored before and after (0: none).
      seed: the split, the pool and the selection (the training's is ``FinetuneConfig.seed``).
      checkpoint: a directory for checkpoints, removed once ``out`` is written.
    """

    out: Path
    model: str = "smollm2-135m"
    data: str = "wiki-sample"
    split: str = "auto"
    seq_len: int = 128
    pool: int | None = None
    selection: str = "all"
    n: int | None = None
    sketch_dim: int = 256
    lora_blocks: int | None = None
    eval_windows: int = 0
    seed: int = 0
    dtype: str = "float32"
    checkpoint: Path | None = None
    overwrite: bool = False

    def __post_init__(self):
        check_choice("dtype", self.dtype, DTYPES)
        check_label_free("selection", self.selection, also="all")
        if (self.selection == "all") != (self.n is None):
            raise ValueError("n goes with `selection` other than all (how many passages to keep)" if self.n is None
                             else "n needs `selection` (e.g. `selection` skmm)")
        if self.pool is not None and self.n is not None and self.pool < self.n:
            raise ValueError(f"pool {self.pool} is smaller than `n` {self.n}")
        if self.eval_windows and held_out_split(self.resolved_split) is None:
            raise ValueError("eval_windows needs a held-out half: pass `split` calibration (or eval)")

    @property
    def resolved_split(self) -> str:
        """``split`` with auto resolved."""
        return resolve_split(self.split, self.data, auto="calibration")


@dataclasses.dataclass(frozen=True)
class FinetuneOutcome:
    result: Any  # prune_jax.finetune.FinetuneResult
    record: dict  # what finetune.json holds
    note: str | None  # save_hf's note on the export, if any


def finetune_record(config, run: FinetuneRun, docs: list, rows, selection: dict, losses, held_out: dict | None, *,
                    seconds: float) -> dict:
    """``finetune.json``: config, data, selection, losses, model, dtype, held_out_perplexity, total_seconds."""
    return {"config": config.to_json(),
            "data": {"source": run.data, "split": run.resolved_split, "documents": [d.id for d in docs],
                     "seq_len": run.seq_len, "rows": int(len(rows))},
            "selection": selection, "losses": [float(x) for x in losses], "model": str(run.model), "dtype": run.dtype,
            "held_out_perplexity": held_out, "total_seconds": seconds}


def _lora_on_last_blocks(config, run: FinetuneRun, num_layers: int):
    """``config`` with LoRA on the last ``run.lora_blocks`` blocks (checked against the model)."""
    if run.lora_blocks is not None:
        if run.lora_blocks > num_layers:
            raise ValueError(f"lora_blocks {run.lora_blocks} exceeds the model's {num_layers} blocks")
        config = dataclasses.replace(config, lora_layers=tuple(range(num_layers - run.lora_blocks, num_layers)))
    if config.trainable == "blocks" and config.last_blocks > num_layers:
        raise ValueError(f"last_blocks {config.last_blocks} exceeds the model's {num_layers} blocks")
    return config


def _select_rows(net, rows, config, run: FinetuneRun, reporter: Reporter):
    """(the passages trained on, the selection's record)."""
    import jax
    import numpy as np

    from prune_jax.finetune import finetune_gradients
    from skmm_jax.select import select

    selection = {"method": "all", "pool": int(len(rows))}
    if run.selection == "all":
        return rows, selection
    if run.n > len(rows):
        raise ValueError(f"n {run.n} exceeds the {len(rows)} passages of {run.seq_len} tokens in `data` {run.data} ({run.resolved_split})")
    features = np.ones((len(rows), 1), np.float32)  # uniform needs no representation
    if run.selection != "uniform":
        with reporter.bar("sketched per-passage gradients", unit="passage", total=len(rows)) as progress:
            features = finetune_gradients(net, rows, config, sketch_dim=run.sketch_dim, progress=progress)
    chosen = select(run.selection, jax.random.key(run.seed), features, run.n)
    selection.update(method=run.selection, n=run.n, sketch_dim=run.sketch_dim, indices=[int(i) for i in chosen.indices],
                     diagnostics={k: v for k, v in chosen.diagnostics.items() if isinstance(v, (int, float, str, bool))})
    return rows[np.asarray(chosen.indices)], selection


def run_finetune(run: FinetuneRun, config, *, reporter: Reporter = QUIET) -> FinetuneOutcome:
    """Finetunes ``run.model`` by ``config`` (a ``FinetuneConfig``) on ``run``'s passages and
    writes ``run.out`` with ``finetune.json``; the checkpoint (if any) goes once it is written.

    Raises:
      ValueError, FileNotFoundError, FileExistsError, TypeError: bad input (named).
    """
    import numpy as np

    from prune_jax.data import eval_windows
    from prune_jax.evaluate import perplexity
    from prune_jax.finetune import checkpoint_store, finetune
    from prune_jax.models.llama import save_hf
    from prune_jax.pruning.calib_select import window_pool

    start = time.perf_counter()
    split = run.resolved_split
    docs = read_documents(run.data, split, run.seed)  # before the model: a bad corpus costs no load
    net, tok = load_model_for_run(run.model, run.dtype, reporter=reporter)
    net.config.check_sequence_length(run.seq_len, name="seq_len")
    config = _lora_on_last_blocks(config, run, net.config.num_layers)
    rows = window_pool(tokenize(docs, tok, reporter), run.seq_len, pool=run.pool, seed=run.seed).astype(np.int32)
    rows, selection = _select_rows(net, rows, config, run, reporter)
    held = None
    if run.eval_windows:  # the other half of the document split is held out
        held_docs = read_documents(run.data, held_out_split(split), run.seed)
        held = eval_windows(tokenize(held_docs, tok, reporter), run.seq_len, run.eval_windows)
    before = None if held is None else perplexity(net, held).perplexity
    with reporter.bar(f"finetune {config.trainable} on {len(rows)} passages", unit="update", total=config.steps) as progress:
        result = finetune(net, rows, config, checkpoint=run.checkpoint, progress=progress)
    held_out = None
    if held is not None:
        held_out = {"before": before, "after": perplexity(result.model, held).perplexity, "windows": int(len(held))}
    record = finetune_record(config, run, docs, rows, selection, result.losses, held_out, seconds=time.perf_counter() - start)
    note = save_hf(result.model, tok, run.out, extra_files={"finetune.json": record}, overwrite=run.overwrite)
    if run.checkpoint is not None:  # the output is complete: the checkpoint has served (only its own files go)
        checkpoint_store(run.checkpoint).remove()
    return FinetuneOutcome(result, record, note)
