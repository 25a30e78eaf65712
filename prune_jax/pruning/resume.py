"""Per-block checkpoints of a pruning run, and resuming from the last finished block.

After block i, ``prune(..., checkpoint=DIR)`` writes into DIR:

  - ``block_{i:03d}.safetensors``: block i's parameters as pruned and refit (sliced
    shapes; keys ``layers.{i}.attn.q_kernel`` …);
  - ``streams.safetensors``: the two calibration streams entering block i + 1 (the
    pruned stream h and the dense stream h_dense, in the model's dtype; replaced
    every block);
  - ``progress.json`` last, the commit point: the next block, the finished blocks'
    reports, and a fingerprint of what must not change between the run and its resume
    (the prune config, the calibration tokens, the dense model's config and widths).

Every file is written atomically (temporary file + rename), so a crash leaves the
previous block's complete checkpoint. Resuming reloads the dense model, recomputes what
``prune`` computes before the first block (deterministic: allocation, gradient scores),
then restores the finished blocks' parameters and the streams and continues, so the
result equals an uninterrupted run's. Disk: the pruned blocks (≤ the model) plus two
streams of S·T·D values (8B, 128 × 2048 tokens in bf16: 2 × 2 GiB).

The directory follows the rules of ``skmm_jax.common.checkpoints`` (absent, empty or a prune
checkpoint; never the output; only its own files are deleted): ``checkpoint_store``.

Single-process runs only (the streams are gathered to the host); a multi-host run
would write them per process (e.g. with orbax) — not done yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from prune_jax.models.llama.sharding import replace_param, to_host
from prune_jax.pruning.config import PruneConfig
from prune_jax.pruning.report import HalfReport, LayerReport, Refit
from skmm_jax.common.checkpoints import CheckpointKind, CheckpointStore, mismatch
from skmm_jax.common.io import atomic_write, save_json_atomic

PROGRESS = "progress.json"
STREAMS = "streams.safetensors"
PRUNE_CHECKPOINT = CheckpointKind("prune", commit=PROGRESS, files=(PROGRESS, STREAMS, "block_*.safetensors"),
                                  progress=("next_layer", "blocks"))


def checkpoint_store(path: str | os.PathLike) -> CheckpointStore:
    """The checkpoint directory of a pruning run (``skmm_jax.common.checkpoints`` rules)."""
    return CheckpointStore(Path(path), PRUNE_CHECKPOINT)


def settings(config: PruneConfig, calibration: np.ndarray, model_config) -> dict:
    """What a resume must share with the run it continues, readable (for mismatch messages):
    every setting of the config (``PruneConfig.to_json``, the method's options included),
    the calibration tokens' shape and hash, the dense model's config."""
    calibration = np.ascontiguousarray(calibration, np.int64)
    return {"config": json.loads(json.dumps(config.to_json(), default=str)),
            "calibration": {"shape": list(calibration.shape), "sha256": hashlib.sha256(calibration.tobytes()).hexdigest()[:16]},
            "model": json.loads(json.dumps(dataclasses.asdict(model_config), default=str))}


def fingerprint(config: PruneConfig, calibration: np.ndarray, model_config) -> str:
    """SHA-256 of what a resume must share with the run it continues (``settings``)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config.to_json(), sort_keys=True, default=str).encode())
    digest.update(str(calibration.shape).encode() + np.ascontiguousarray(calibration, np.int64).tobytes())
    digest.update(json.dumps(dataclasses.asdict(model_config), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _save_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    atomic_write(path, lambda f: f.write(save(tensors)))


def save_block(directory: Path, stamp: str, layer: int, block, h, h_dense, reports: list[LayerReport],
               run_settings: dict | None = None) -> None:
    """Checkpoint after ``layer``: its parameters, the streams into ``layer + 1``, then
    progress.json (written last: a crash before it leaves the previous checkpoint valid)."""
    if block is not None:  # None: the block is unchanged (before the pruned range)
        params = {f"layers.{layer}." + ".".join(map(str, path)): to_host(var[...])
                  for path, var in nnx.to_flat_state(nnx.state(block, nnx.Param))}
        _save_tensors(directory / f"block_{layer:03d}.safetensors", params)
    streams = {"h": to_host(h)} if h_dense is None else {"h": to_host(h), "h_dense": to_host(h_dense)}
    _save_tensors(directory / STREAMS, streams)
    save_json_atomic(directory / PROGRESS, {"fingerprint": stamp, "settings": run_settings, "next_layer": layer + 1,
                                            "layers": [dataclasses.asdict(r) for r in reports]})


@dataclasses.dataclass(frozen=True)
class Resumed:
    """A checkpoint's state: blocks [0, next_layer) are done."""

    next_layer: int
    reports: list[LayerReport]
    h: np.ndarray
    h_dense: np.ndarray | None
    tensors: Mapping[str, np.ndarray]  # the checkpoint's tensors, read on access (restore_block)


def load_progress(directory: Path, stamp: str, run_settings: dict | None = None) -> Resumed | None:
    """The checkpoint in ``directory``, None when there is none yet.

    Raises:
      ValueError: the checkpoint belongs to a different run (config, calibration or model)
        or its files are unreadable.
    """
    from prune_jax.models.llama.checkpoint import SafetensorsTensors

    path = directory / PROGRESS
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete the checkpoint directory to start over") from None
    if progress.get("fingerprint") != stamp:
        differs = (mismatch(progress["settings"], run_settings) if progress.get("settings") and run_settings
                   else "prune config, calibration tokens or model differ")
        raise ValueError(f"{directory} holds the checkpoint of a different run ({differs}); use another checkpoint "
                         "directory or delete this one to start over")
    tensors = SafetensorsTensors(directory)
    return Resumed(next_layer=int(progress["next_layer"]), reports=[_layer_report(r) for r in progress["layers"]],
                   h=tensors["h"], h_dense=tensors["h_dense"] if "h_dense" in tensors else None, tensors=tensors)


def restore_block(resumed: Resumed, layer: int, block) -> None:
    """Block ``layer``'s checkpointed parameters into ``block`` (placed like the dense ones)."""
    tensors = resumed.tensors
    prefix = f"layers.{layer}."
    for path, _ in nnx.to_flat_state(nnx.state(block, nnx.Param)):
        key = prefix + ".".join(map(str, path))
        if key not in tensors:
            raise ValueError(f"checkpoint of block {layer} lacks {key}; delete the checkpoint directory to start over")
        module = block
        for name in path[:-1]:
            module = getattr(module, name)
        replace_param(module, path[-1], jax.numpy.asarray(tensors[key]))


def _refit(d: dict | None) -> Refit | None:
    return None if d is None else Refit(ridge=d["ridge"], held_out_error=d["held_out_error"], errors=dict(d["errors"]))


def _half(d: dict) -> HalfReport:
    tuple_or_none = lambda v: None if v is None else tuple(v)  # noqa: E731
    return HalfReport(kept=tuple_or_none(d["kept"]), first_refit=_refit(d["first_refit"]), second_refit=_refit(d["second_refit"]),
                      similar_marked=tuple_or_none(d["similar_marked"]))


def _layer_report(d: dict) -> LayerReport:
    return LayerReport(layer=d["layer"], attention=_half(d["attention"]), mlp=_half(d["mlp"]))
