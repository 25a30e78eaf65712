"""A prune run: calibration documents → model → calibration windows → `prune` → an HF
directory with its ``pruning.json`` record.

``PruneRun`` says where the run reads and writes and how it calibrates; *what* is
pruned and how is the library's ``PruneConfig``. `run_prune` performs the sequence;
`pruning_record` is the provenance written next to the weights: the pruning report,
the dtype and mesh, the calibration (corpus, split, document ids, token count,
windows and how they were chosen), the model and the wall time; the model card
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
    load_model_for_run,
    read_documents,
    resolve_split,
    tokenize,
)
from prune_jax.runs.reporting import QUIET, Reporter

__all__ = ["PruneOutcome", "PruneRun", "calibration_record", "prune_command_line", "pruning_record", "run_prune"]


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
        method on ``calib_representation`` of ``calib_pool`` candidate windows.
      seed: the document split, the windows (and ``PruneConfig.seed``).
      mesh: a device mesh (calibration windows over its "data" axis), or None.
      checkpoint: a directory for per-block checkpoints, removed once ``out`` is written.
    """

    out: Path
    model: str = "smollm2-135m"
    calib: str = "wiki-sample"
    calib_split: str = "auto"
    calib_samples: int = 64
    calib_seq_len: int = 128
    calib_select: str = "random"
    calib_pool: int | None = None
    calib_representation: str = "moments"
    seed: int = 0
    dtype: str = "float32"
    mesh: Any = None
    checkpoint: Path | None = None
    overwrite: bool = False

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
        if self.calib_pool is not None and self.calib_pool < self.calib_samples:
            raise ValueError(f"calib_pool {self.calib_pool} is smaller than `calib_samples` {self.calib_samples}")
        if self.calib_pool is not None and self.calib_select == "random":
            raise ValueError("calib_pool applies to a `calib_select` other than random")

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


def pruning_record(report, run: PruneRun, docs: list, windows, selection: dict, *, seconds: float) -> dict:
    """``pruning.json``: the pruning report, then dtype, mesh, calibration, model and total_seconds."""
    record = report.to_json()
    record["dtype"], record["mesh"] = run.dtype, None if run.mesh is None else dict(run.mesh.shape)
    record["calibration"] = calibration_record(run.calib, run.resolved_split, docs, windows, samples=run.calib_samples,
                                               seq_len=run.calib_seq_len, seed=run.seed, selection=selection)
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

    with reporter.bar(f"calibration windows ({run.calib_representation})", unit="window") as progress:
        chosen = select_calibration(net, tokens, run.calib_samples, method=run.calib_select, representation=run.calib_representation,
                                    seq_len=run.calib_seq_len, pool=run.calib_pool, seed=run.seed, progress=progress)
    return chosen.windows, chosen.record


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
    windows, selection = _calibration_windows(net, tokenize(docs, tok, reporter), run, reporter)
    with reporter.bar(f"prune {config.method}", unit="block", total=net.config.num_layers) as progress:
        net, report = prune(net, windows, config, mesh=run.mesh, progress=progress, checkpoint=run.checkpoint)
    record = pruning_record(report, run, docs, windows, selection, seconds=time.perf_counter() - start)
    if not gather_to_writer(net):
        return PruneOutcome(report, record, None, written=False)
    card = model_card(net.config, run.out, parameters=report.parameters_after, record=record, command=prune_command_line(run, config))
    save_hf(net, tok, run.out, extra_files={"pruning.json": record, "README.md": card}, overwrite=run.overwrite)
    note = load_note(run.out, uniform=net.config.uniform)
    if run.checkpoint is not None:  # the output is complete: the checkpoint has served (only its own files go)
        from prune_jax.pruning.resume import checkpoint_store

        checkpoint_store(run.checkpoint).remove()
    return PruneOutcome(report, record, note, written=True)
