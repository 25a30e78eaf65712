"""Per-block checkpoints of a pruning run, and resuming from the last finished block.

After block i, ``prune(..., checkpoint=DIR)`` writes into DIR:

  - ``block_{i:03d}.safetensors``: block i's parameters as pruned and refit (sliced
    shapes; keys ``layers.{i}.attn.q_kernel`` …), written once, by process 0 (every
    process takes part in gathering a parameter sharded across processes);
  - the calibration streams entering block i + 1 (the pruned stream h and the dense
    stream h_dense, [S, T, D] in the model's dtype), one file per process with the part
    its devices hold: ``streams.safetensors`` in a single-process run (the whole
    arrays, keys ``h`` and ``h_dense``), ``streams.p{k}-of-{n}.safetensors`` for process
    k of n (its rows, keys ``h[r0:r1,0:T,0:D]`` with their global offsets, the streams
    placed by rows first, as the tokens are; see ``sharding.local_blocks``). Each process writes its file as
    ``streams.next….safetensors`` first and renames it over the previous one only after
    the commit, so the streams of the committed block always exist;
  - ``progress.json`` last, the commit point, by process 0 once every process has
    written (a barrier, ``multihost_utils.sync_global_devices``): the next block, the
    finished blocks' reports, the number of processes, and a fingerprint of what must
    not change between the run and its resume (the prune config, the calibration tokens,
    the dense model's config and widths).

Every file is written atomically (temporary file + rename) and streamed tensor by tensor
(``skmm_jax.common.safetensors_io``: the host holds one shard at a time), so a crash
leaves the previous block's complete checkpoint. Resuming reloads the dense model,
recomputes what ``prune`` computes before the first block (deterministic: allocation,
gradient scores), then restores the finished blocks' parameters and, in every process,
its own stream file onto its devices with the stream's sharding, and continues: the
result equals an uninterrupted run's. A checkpoint resumes with as many processes as
wrote it (else ValueError). Disk: the pruned blocks (≤ the model) plus two streams of
S·T·D values (8B, 128 × 2048 tokens in bf16: 2 × 2 GiB; up to twice that while a block's
streams replace the previous ones). In a multi-process run DIR must be one directory
every process sees (a shared file system).

The directory follows the rules of ``skmm_jax.common.checkpoints`` (absent, empty or a prune
checkpoint; never the output; only its own files are deleted): ``checkpoint_store``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from prune_jax.models.llama.sharding import from_local_blocks, local_blocks, replace_param, to_host
from prune_jax.pruning.config import PruneConfig
from prune_jax.pruning.report import HalfReport, LayerReport, Refit
from skmm_jax.common.checkpoints import CheckpointKind, CheckpointStore, mismatch
from skmm_jax.common.io import save_json_atomic
from skmm_jax.common.safetensors_io import safetensors_order, save_safetensors

PROGRESS = "progress.json"
STREAMS = "streams.safetensors"
PRUNE_CHECKPOINT = CheckpointKind("prune", commit=PROGRESS,
                                  files=(PROGRESS, STREAMS, "streams.next.safetensors", "streams.p*-of-*.safetensors",
                                         "streams.next.p*-of-*.safetensors", "block_*.safetensors"),
                                  progress=("next_layer", "blocks"))
_STREAM_KEY = re.compile(r"(h|h_dense)(?:\[([0-9:,]*)\])?")


def streams_file(process: int, processes: int, *, staged: bool = False) -> str:
    """The stream file of ``process`` of ``processes`` (``staged``: before the commit)."""
    stem = "streams.next" if staged else "streams"
    return f"{stem}.safetensors" if processes == 1 else f"{stem}.p{process}-of-{processes}.safetensors"


def checkpoint_store(path: str | os.PathLike) -> CheckpointStore:
    """The checkpoint directory of a pruning run (``skmm_jax.common.checkpoints`` rules)."""
    return CheckpointStore(Path(path), PRUNE_CHECKPOINT)


def open_store(path: str | os.PathLike) -> Path:
    """Checks and opens the checkpoint directory (process 0 marks it; every process waits
    for that before writing into it); returns its path."""
    store = checkpoint_store(path)
    store.check(flag="checkpoint")
    if jax.process_index() == 0:
        store.open()
    _barrier("prune checkpoint: directory open")
    return store.path


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


def _barrier(name: str) -> None:
    """Every process waits here until all have arrived (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _save_block_params(path: Path, layer: int, block) -> None:
    """Block ``layer``'s parameters, gathered and written one at a time by process 0; the
    other processes take part in the same gathers in the same (file) order."""
    params = {f"layers.{layer}." + ".".join(map(str, path)): var[...]
              for path, var in nnx.to_flat_state(nnx.state(block, nnx.Param))}
    layout = {name: (value.dtype, value.shape) for name, value in params.items()}
    if jax.process_index() == 0:
        save_safetensors(path, layout, lambda name: to_host(params[name]))
    else:
        for name in safetensors_order(layout):
            to_host(params[name])  # a collective when the parameter spans processes


def _block_key(name: str, box, shape) -> str:
    """"h" for the whole array, "h[0:2,0:16,0:64]" for a block of it."""
    if box == tuple((0, n) for n in shape):
        return name
    return f"{name}[{','.join(f'{a}:{b}' for a, b in box)}]"


def _save_streams(path: Path, next_layer: int, streams: dict[str, jax.Array]) -> None:
    """This process's part of every stream, one block (its rows) per tensor, streamed shard by shard."""
    layout, parts = {}, {}
    for name, x in streams.items():
        for box, arrays in local_blocks(x):
            key = _block_key(name, box, x.shape)
            layout[key], parts[key] = (x.dtype, tuple(b - a for a, b in box)), arrays
    shapes = {name: list(x.shape) for name, x in streams.items()}
    save_safetensors(path, layout, lambda key: (np.asarray(part) for part in parts[key]),
                     metadata={"next_layer": str(next_layer), "processes": str(jax.process_count()), "shapes": json.dumps(shapes)})


def save_block(directory: Path, stamp: str, layer: int, block, h, h_dense, reports: list[LayerReport],
               run_settings: dict | None = None, rows=None) -> None:
    """Checkpoint after ``layer``: its parameters and every process's streams into
    ``layer + 1`` (staged), a barrier, then progress.json by process 0 (the commit: a
    crash before it leaves the previous checkpoint valid), a barrier, and each process
    renames its staged streams into place. Every process calls it. ``rows``: the sharding
    the streams are saved in (sequences over the data axis; XLA may have left them split
    over D, which another run's embedding need not reproduce); None: as they are."""
    process, processes = jax.process_index(), jax.process_count()
    if block is not None:  # None: the block is unchanged (before the pruned range)
        _save_block_params(directory / f"block_{layer:03d}.safetensors", layer, block)
    staged = directory / streams_file(process, processes, staged=True)
    streams = {"h": h} if h_dense is None else {"h": h, "h_dense": h_dense}
    if rows is not None:
        streams = {name: jax.device_put(x, rows) for name, x in streams.items()}
    _save_streams(staged, layer + 1, streams)
    del streams
    _barrier(f"prune checkpoint {layer}: written")
    if process == 0:
        save_json_atomic(directory / PROGRESS, {"fingerprint": stamp, "settings": run_settings, "next_layer": layer + 1,
                                                "processes": processes, "layers": [dataclasses.asdict(r) for r in reports]})
    _barrier(f"prune checkpoint {layer}: committed")
    os.replace(staged, directory / streams_file(process, processes))


@dataclasses.dataclass(frozen=True)
class Resumed:
    """A checkpoint's state: blocks [0, next_layer) are done."""

    next_layer: int
    reports: list[LayerReport]
    directory: Path
    streams: Path  # this process's stream file holding the streams into next_layer


def _stream_metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return f.metadata() or {}
    except Exception as err:  # OSError, ValueError and safetensors' own SafetensorError
        raise ValueError(f"{path}: not a readable safetensors file ({err}); delete the checkpoint directory to start over") from None


def load_progress(directory: Path, stamp: str, run_settings: dict | None = None) -> Resumed | None:
    """The checkpoint in ``directory``, None when there is none yet.

    Raises:
      ValueError: the checkpoint belongs to a different run (config, calibration or model),
        was written by another number of processes, or its files are unreadable.
    """
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
    written_by, processes = int(progress.get("processes", 1)), jax.process_count()
    if written_by != processes:
        raise ValueError(f"{directory} holds the checkpoint of a run of {written_by} process(es) and this run has {processes}; "
                         f"resume it with {written_by} (each process saved the calibration streams its devices held)")
    next_layer = int(progress["next_layer"])
    # The staged file when the crash came between the commit and the rename, else the final one.
    for name in (streams_file(jax.process_index(), processes, staged=True), streams_file(jax.process_index(), processes)):
        candidate = directory / name
        if candidate.is_file() and _stream_metadata(candidate).get("next_layer", str(next_layer)) == str(next_layer):
            streams = candidate
            break
    else:
        raise ValueError(f"{directory}: no {streams_file(jax.process_index(), processes)} with the streams into block {next_layer}; "
                         "delete the checkpoint directory to start over")
    return Resumed(next_layer=next_layer, reports=[_layer_report(r) for r in progress["layers"]], directory=directory,
                   streams=streams)


def restore_streams(resumed: Resumed, like: jax.Array, rows=None) -> tuple[jax.Array, jax.Array | None]:
    """(h, h_dense or None) into ``resumed.next_layer``, each placed like ``like`` (the
    stream's sharding): every process reads its own file onto its own devices (in
    ``rows``, the sharding ``save_block`` saved them in, when given)."""
    from safetensors import safe_open

    blocks: dict[str, dict] = {}
    with safe_open(str(resumed.streams), framework="np") as f:
        shapes = json.loads((f.metadata() or {}).get("shapes", "{}"))
        for key in f.keys():  # noqa: SIM118 (safe_open is no mapping)
            match = _STREAM_KEY.fullmatch(key)
            if match is None:
                raise ValueError(f"{resumed.streams}: unexpected tensor {key!r}; delete the checkpoint directory to start over")
            name, where = match.groups()
            shape = f.get_slice(key).get_shape()
            box = (tuple((0, n) for n in shape) if where is None
                   else tuple(tuple(int(v) for v in part.split(":")) for part in where.split(",")))
            blocks.setdefault(name, {})[box] = lambda slices, key=key: f.get_slice(key)[slices]
            if where is None:
                shapes.setdefault(name, list(shape))
        if "h" not in blocks:
            raise ValueError(f"{resumed.streams}: no stream h; delete the checkpoint directory to start over")
        for name, shape in shapes.items():
            if tuple(shape) != tuple(like.shape):
                raise ValueError(f"{resumed.streams}: stream {name} has shape {tuple(shape)}, this run's is {tuple(like.shape)}")
        restored = {name: from_local_blocks(like.shape, like.dtype, like.sharding if rows is None else rows, parts,
                                            name=f"{resumed.streams} {name}")
                    for name, parts in blocks.items()}
    if rows is not None:
        restored = {name: jax.device_put(x, like.sharding) for name, x in restored.items()}
    return restored["h"], restored.get("h_dense")


def restore_block(resumed: Resumed, layer: int, block) -> None:
    """Block ``layer``'s checkpointed parameters into ``block`` (placed like the dense ones)."""
    from safetensors import safe_open

    path = resumed.directory / f"block_{layer:03d}.safetensors"
    if not path.is_file():
        raise ValueError(f"checkpoint lacks {path.name} (block {layer}); delete the checkpoint directory to start over")
    prefix = f"layers.{layer}."
    with safe_open(str(path), framework="np") as f:
        keys = set(f.keys())
        for param_path, _ in nnx.to_flat_state(nnx.state(block, nnx.Param)):
            key = prefix + ".".join(map(str, param_path))
            if key not in keys:
                raise ValueError(f"checkpoint of block {layer} lacks {key}; delete the checkpoint directory to start over")
            module = block
            for name in param_path[:-1]:
                module = getattr(module, name)
            replace_param(module, param_path[-1], f.get_tensor(key))  # numpy: placed by ``like`` on every process


def _refit(d: dict | None) -> Refit | None:
    return None if d is None else Refit(ridge=d["ridge"], cv_error=d["cv_error"], errors=dict(d["errors"]), folds=d["folds"])


def _half(d: dict) -> HalfReport:
    tuple_or_none = lambda v: None if v is None else tuple(v)  # noqa: E731
    return HalfReport(kept=tuple_or_none(d["kept"]), first_refit=_refit(d["first_refit"]), second_refit=_refit(d["second_refit"]),
                      similar_marked=tuple_or_none(d["similar_marked"]))


def _layer_report(d: dict) -> LayerReport:
    return LayerReport(layer=d["layer"], attention=_half(d["attention"]), mlp=_half(d["mlp"]))
