"""A prune run: calibration documents → model → calibration windows → `prune` → (optional
healing) → an HF directory with its ``pruning.json`` record.

``PruneRun`` says where the run reads and writes and how it calibrates; *what* is
pruned and how is the library's ``PruneConfig``. `run_prune` performs the sequence;
`pruning_record` is the provenance written next to the weights: the pruning report,
the dtype and mesh, the calibration (corpus, split, document ids, token count,
windows and how they were chosen), the healing if any, the model and the wall time; the model card
(README.md) says the same for a reader, with `prune_command_line` that reproduces the run.
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
    gather_to_writer,
    held_out_split,
    load_model_for_run,
    read_documents,
    resolve_split,
    tokenize,
)
from prune_jax.finetune import FinetuneConfig
from prune_jax.runs.reporting import QUIET, Reporter

__all__ = ["Healing", "PruneOutcome", "PruneRun", "calibration_record", "heal", "held_out_windows", "prune_command_line",
           "pruning_record", "run_prune"]


# Default calibration windows (of 128 tokens): the knee of held-out perplexity against
# calibration size for the default method (benchmarks/calib_budget.md, SmolLM2, 20 %): the
# smallest n within 5 % of the best measured (256) on both corpora — 64 is 7–11 % above it,
# 128 is 2.5–4 % above at 1.8× the prune time of 64. The method comparisons keep 64 × 128.
CALIB_SAMPLES = 128


@dataclasses.dataclass(frozen=True)
class Healing:
    """Optional healing after pruning (LLM-Pruner's "with tune" setting): a short LoRA
    finetune of the pruned model (`prune_jax.finetune.finetune`) on every non-overlapping
    ``calib_seq_len`` window of the calibration split (the documents the pruning calibrated
    on), the adapters merged into the kernels (the per-layer widths stay) before export.
    Perplexity is scored before and after on the held-out split (document-disjoint).

    Attributes:
      steps: optimizer updates; 0 (the default) = no healing, the one-shot run.
      learning_rate: AdamW's (``FinetuneConfig.learning_rate``).
      rank, alpha: LoRA's r and α on ``FinetuneConfig``'s default targets of every block.
      batch_size: windows per update.
      eval_windows: held-out windows (the first ones of the other half of the document
        split, ``calib_seq_len`` tokens each) scored before and after healing.
    """

    steps: int = 0
    learning_rate: float = FinetuneConfig.learning_rate  # the finetune's defaults, not a second copy
    rank: int = FinetuneConfig.rank
    alpha: float = FinetuneConfig.alpha
    batch_size: int = FinetuneConfig.batch_size
    eval_windows: int = 64

    def __post_init__(self):
        import numpy as np

        from skmm_jax.common.checks import check_positive_int

        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0 (0: no healing), got {self.steps!r}")
        check_positive_int(self.eval_windows, "eval_windows")
        self.finetune_config(seed=0)  # FinetuneConfig's own checks of the rest (rank, learning_rate, ...)

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    def finetune_config(self, *, seed: int):
        """The ``FinetuneConfig`` of the healing (LoRA on every block; ``seed``: its init and row order)."""
        return FinetuneConfig(trainable="lora", rank=self.rank, alpha=self.alpha, learning_rate=self.learning_rate,
                              steps=max(self.steps, 1), batch_size=self.batch_size, seed=seed)


@dataclasses.dataclass(frozen=True)
class PruneRun:
    """Where a prune run reads and writes, and its calibration.

    Attributes:
      out: the output HF directory (written atomically); ``overwrite`` replaces one this
        program did not write.
      model: "smollm2-135m", an HF directory or a .gguf file; ``dtype`` its parameters'.
      calib: the calibration corpus (``prune_jax.data.load_documents``); ``calib_split``
        its part: auto (the calibration half of wiki-sample, all of a user's file) |
        calibration | eval | all.
      calib_samples, calib_seq_len: calibration windows and their length.
      calib_select: "random" (non-overlapping random windows) or a label-free selection
        method on ``calib_representation`` of ``calib_pool`` candidate windows: None
        (default) max(16·calib_samples, 512) of them (``calib_select.default_pool_size``;
        the pool's forward pass is the selection's cost), "all" every window of the
        split, or a count; a uniform subset of the split's windows either way.
      seed: the document split, the windows (and ``PruneConfig.seed``).
      mesh: a device mesh (calibration windows over its "data" axis), or None.
      checkpoint: a directory for per-block checkpoints, removed once ``out`` is written.
      healing: LoRA healing after pruning (`Healing`; default none: one-shot pruning).
    """

    out: Path
    model: str = "smollm2-135m"
    calib: str = "wiki-sample"
    calib_split: str = "auto"
    calib_samples: int = CALIB_SAMPLES
    calib_seq_len: int = 128
    calib_select: str = "random"
    calib_pool: int | str | None = None
    calib_representation: str = "moments"
    seed: int = 0
    dtype: str = "float32"
    mesh: Any = None
    checkpoint: Path | None = None
    overwrite: bool = False
    healing: Healing = Healing()

    def __post_init__(self):
        from prune_jax.pruning.calib_select import REPRESENTATIONS

        check_choice("dtype", self.dtype, DTYPES)
        data_devices = None if self.mesh is None else self.mesh.shape.get("data")
        if data_devices and self.calib_samples % data_devices:
            raise ValueError(f"calib_samples {self.calib_samples} must divide over the mesh's data axis ({data_devices} devices)")
        resolve_split(self.calib_split, self.calib, auto="calibration", name="calib_split")
        check_label_free("calib_select", self.calib_select, also="random")
        if self.calib_representation not in REPRESENTATIONS:
            raise ValueError(f"calib_representation {self.calib_representation!r} is not one of {', '.join(REPRESENTATIONS)}")
        counted = isinstance(self.calib_pool, int) and not isinstance(self.calib_pool, bool)
        if self.calib_pool not in (None, "all") and not (counted and self.calib_pool > 0):
            raise ValueError(f"calib_pool must be a positive number of windows or 'all' (every window of the split), got {self.calib_pool!r}")
        if counted and self.calib_pool < self.calib_samples:
            raise ValueError(f"calib_pool {self.calib_pool} is smaller than `calib_samples` {self.calib_samples}")
        if self.calib_pool is not None and self.calib_select == "random":
            raise ValueError("calib_pool applies to a `calib_select` other than random")
        if not isinstance(self.healing, Healing):
            raise TypeError(f"healing must be a Healing, got {type(self.healing).__name__}")
        if self.healing.enabled and self.mesh is not None:
            import jax

            if jax.process_count() > 1:
                raise ValueError(f"healing runs in one process (this run has {jax.process_count()}): prune without it, "
                                 "then heal the pruned model with `prune-jax finetune`")
        if self.healing.enabled and held_out_split(self.resolved_split) is None:
            raise ValueError(f"a healed run is scored on the held-out half of the document split, and `calib_split` "
                             f"{self.calib_split} of `calib` {self.calib} holds none: pass `calib_split` calibration")

    @property
    def resolved_split(self) -> str:
        """``calib_split`` with auto resolved."""
        return resolve_split(self.calib_split, self.calib, auto="calibration", name="calib_split")


@dataclasses.dataclass(frozen=True)
class PruneOutcome:
    report: Any  # prune_jax.pruning.PruneReport
    record: dict  # what pruning.json holds
    note: str | None  # how stock transformers loads the export (None where this process wrote nothing)
    written: bool  # False on the processes of a multi-process run that do not write


def calibration_record(source: str, split: str, docs: list, windows, *, samples: int, seq_len: int, seed: int,
                       selection: dict | None = None) -> dict:
    """The "calibration" entry of ``pruning.json``: which text calibrated the pruning."""
    import numpy as np

    record = {"source": source, "split": split, "documents": [d.id for d in docs], "tokens": int(np.asarray(windows).size),
              "samples": samples, "seq_len": seq_len, "seed": seed}
    if selection is not None:
        record["selection"] = selection
    return record


def pruning_record(report, run: PruneRun, docs: list, windows, selection: dict, *, seconds: float,
                   healing: dict | None = None) -> dict:
    """``pruning.json``: the pruning report, then dtype, mesh, calibration, healing (only
    where the run healed: `heal`'s record), model and total_seconds."""
    record = report.to_json()
    record["dtype"], record["mesh"] = run.dtype, None if run.mesh is None else dict(run.mesh.shape)
    record["calibration"] = calibration_record(run.calib, run.resolved_split, docs, windows, samples=run.calib_samples,
                                               seq_len=run.calib_seq_len, seed=run.seed, selection=selection)
    if healing is not None:
        record["healing"] = healing
    record["model"] = str(run.model)
    record["total_seconds"] = seconds
    return record


def prune_command_line(run: PruneRun, config) -> str:
    """The ``prune-jax prune`` command that reproduces ``run`` with ``config``: the method,
    the sparsity, and every other setting that differs from its default (settings without
    a flag, e.g. ``ridge_grid``, are in pruning.json only)."""
    import shlex

    from prune_jax.pruning import PruneConfig

    words = ["prune-jax", "prune", "--model", str(run.model)]
    defaults = PruneRun(out=run.out)
    for field in ("calib", "calib_split", "calib_samples", "calib_seq_len", "calib_select", "calib_pool", "calib_representation", "seed", "dtype"):
        value = getattr(run, field)
        if value != getattr(defaults, field):
            words += [_flag(field), str(value)]
    if run.mesh is not None:
        words += ["--mesh", ",".join(f"{axis}={size}" for axis, size in dict(run.mesh.shape).items())]
    if run.healing.enabled:
        default_healing = Healing()
        for field, flag in HEALING_FLAGS.items():
            value = getattr(run.healing, field)
            if field == "steps" or value != getattr(default_healing, field):
                words += [flag, str(value)]
    settings, default_settings = config.to_json(), PruneConfig(method=config.method).to_json()
    for key, value in settings.items():
        if key not in ("method", "sparsity") and (value == default_settings.get(key) or key in _NO_FLAG):
            continue
        if key == "recover":
            words.append("--recover")
        elif key == "bias_compensation":
            words.append("--bias-compensation" if value else "--no-bias-compensation")
        elif key == "layer_range":
            words += ["--layer-start", str(value[0]), "--layer-stop", str(value[1])]
        elif key != "seed":  # the run's --seed sets both
            words += [_flag(key), str(value)]
    return shlex.join([*words, "--out", str(run.out)])


_NO_FLAG = ("ridge_grid", "max_block_removal", "batch_size")  # PruneConfig settings the command line does not set
HEALING_FLAGS = {"steps": "--heal-steps", "learning_rate": "--heal-lr", "rank": "--heal-rank"}  # `Healing` fields with a flag


def _flag(field: str) -> str:
    """A setting's flag (the command lines name every flag after its field)."""
    return "--" + field.replace("_", "-")


def _calibration_windows(net, tokens, run: PruneRun, reporter: Reporter):
    """([S, T] windows, the selection's record): random windows, or chosen by ``calib_select``."""
    if run.calib_select == "random":
        from prune_jax.data import calibration_batches

        windows = calibration_batches(tokens, num_samples=run.calib_samples, seq_len=run.calib_seq_len, seed=run.seed)
        return windows, {"method": "random"}
    from prune_jax.pruning.calib_select import select_calibration

    with reporter.bar(f"calibration pool: forward pass ({run.calib_representation})", unit="window") as progress:
        chosen = select_calibration(net, tokens, run.calib_samples, method=run.calib_select, representation=run.calib_representation,
                                    seq_len=run.calib_seq_len, pool=run.calib_pool, seed=run.seed, progress=progress)
    return chosen.windows, chosen.record


def held_out_windows(run: PruneRun, tokenizer, reporter: Reporter = QUIET):
    """The windows a healed run is scored on: the first ``healing.eval_windows`` windows of
    ``calib_seq_len`` tokens of the other half of the document split."""
    from prune_jax.data import eval_windows

    docs = read_documents(run.calib, held_out_split(run.resolved_split), run.seed)
    return eval_windows(tokenize(docs, tokenizer, reporter), run.calib_seq_len, run.healing.eval_windows)


def heal(net, tokens, held, run: PruneRun, reporter: Reporter = QUIET):
    """(the healed model, the "healing" entry of ``pruning.json``): ``run.healing`` of the
    pruned ``net`` on every non-overlapping ``calib_seq_len`` window of ``tokens`` (the
    stream of the calibration documents, the ones the pruning calibrated on), the LoRA
    adapters merged into the kernels; perplexity on the held-out windows ``held``
    (`held_out_windows`) before and after."""
    import numpy as np

    from prune_jax.evaluate import perplexity
    from prune_jax.finetune import finetune
    from prune_jax.pruning.calib_select import window_pool

    start = time.perf_counter()
    config = run.healing.finetune_config(seed=run.seed)
    rows = window_pool(tokens, run.calib_seq_len).astype(np.int32)
    with reporter.bar("held-out perplexity before healing", unit="window", total=len(held)) as progress:
        before = perplexity(net, held, progress=progress).perplexity
    with reporter.bar(f"heal: LoRA r={config.rank} on {len(rows)} calibration windows", unit="update", total=config.steps) as progress:
        result = finetune(net, rows, config, progress=progress)  # the adapters come back merged into the kernels
    with reporter.bar("held-out perplexity after healing", unit="window", total=len(held)) as progress:
        after = perplexity(result.model, held, progress=progress).perplexity
    losses = [float(x) for x in result.losses]
    record = {"steps": config.steps, "config": config.to_json(),
              "data": {"source": run.calib, "split": run.resolved_split, "seq_len": run.calib_seq_len, "rows": int(len(rows))},
              "loss_first": losses[0], "loss_last": losses[-1], "losses": losses,
              "held_out_perplexity": {"split": held_out_split(run.resolved_split), "windows": int(len(held)),
                                      "seq_len": run.calib_seq_len, "before": before, "after": after},
              "seconds": time.perf_counter() - start}
    return result.model, record


def run_prune(run: PruneRun, config, *, reporter: Reporter = QUIET) -> PruneOutcome:
    """Prunes ``run.model`` by ``config`` (a ``PruneConfig``) on ``run``'s calibration and
    writes ``run.out`` with ``pruning.json``; the checkpoint (if any) goes once it is written.

    Raises:
      ValueError, FileNotFoundError, FileExistsError, TypeError: bad input (named).
    """
    from prune_jax.models.llama import save_hf
    from prune_jax.models.llama.export import load_note, model_card
    from prune_jax.pruning import prune
    from prune_jax.pruning.recover import check_folds

    start = time.perf_counter()
    if config.recovery.enabled:  # before the model: every fold of the refits holds whole calibration sequences
        check_folds(run.calib_samples, config.recovery.folds)
    docs = read_documents(run.calib, run.resolved_split, run.seed)  # before the model: a bad corpus costs no load
    net, tok = load_model_for_run(run.model, run.dtype, run.mesh, reporter)
    net.config.check_sequence_length(run.calib_seq_len, name="calib_seq_len")
    tokens = tokenize(docs, tok, reporter)
    held = held_out_windows(run, tok, reporter) if run.healing.enabled else None  # before the pruning: a bad held-out half costs none
    windows, selection = _calibration_windows(net, tokens, run, reporter)
    with reporter.bar(f"prune {config.method}", unit="block", total=net.config.num_layers) as progress:
        net, report = prune(net, windows, config, mesh=run.mesh, progress=progress, checkpoint=run.checkpoint)
    healing = None
    if run.healing.enabled:
        net, healing = heal(net, tokens, held, run, reporter)
    record = pruning_record(report, run, docs, windows, selection, seconds=time.perf_counter() - start, healing=healing)
    if not gather_to_writer(net):
        return PruneOutcome(report, record, None, written=False)
    measured = ()
    if healing is not None:
        held = healing["held_out_perplexity"]
        measured = [(f"perplexity, `{run.calib}` {held['split']} split ({held['windows']}×{held['seq_len']} tokens), after healing",
                     None, held["after"])]
    card = model_card(net.config, run.out, parameters=report.parameters_after, record=record, measured=measured,
                      command=prune_command_line(run, config))
    save_hf(net, tok, run.out, extra_files={"pruning.json": record, "README.md": card}, overwrite=run.overwrite)
    note = load_note(run.out, uniform=net.config.uniform)
    if run.checkpoint is not None:  # the output is complete: the checkpoint has served (only its own files go)
        from prune_jax.pruning.resume import checkpoint_store

        checkpoint_store(run.checkpoint).remove()
    return PruneOutcome(report, record, note, written=True)
