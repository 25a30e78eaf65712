"""Finetuning our LLaMA on token rows: LoRA adapters or the last k blocks, optax, jitted steps.

One optimizer update averages ``accumulation`` micro-batches of ``batch_size`` rows
(``optax.MultiSteps``), each the mean next-token NLL of its rows. Rows are visited in
epochs: epoch e is the permutation ``permutation(fold_in(key, e), N)`` cut into
micro-batches, so the batch of every micro-step is a pure function of (seed, step) and a
resumed run sees exactly the batches an uninterrupted one would.

Checkpoints (``checkpoint=DIR``): every ``checkpoint_every`` updates the trainable
parameters, the optimizer state and the loss history are written atomically
(``state.npz`` + ``meta.json``); ``finetune(..., checkpoint=DIR)`` on a directory that
holds a run with the same configuration continues it. A configuration mismatch is an
error, never a silent restart. The directory follows the rules of ``skmm_jax.common.checkpoints``
(absent, empty or a finetune checkpoint; only its own files are ever deleted).

Precision: the model's dtype (``load_model(..., dtype="bfloat16")`` for bf16 kernels and
activations); LoRA factors and their Adam moments stay float32, the low-rank term is
computed in float32 and added in the model's dtype; "blocks" trains in the model's dtype.

Memory: the frozen model once, the trainable parameters and Adam's two moments
(3 · 4 · r bytes), and one micro-batch's activations (B · T · widths, per block).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from prune_jax.lora import DEFAULT_LORA_TARGETS, TRAINABLE_KINDS, init_lora, last_blocks, lm_loss, lora_state
from skmm_jax.common.checkpoints import CheckpointKind, CheckpointStore, mismatch
from skmm_jax.common.checks import check_positive_fields
from skmm_jax.common.io import atomic_write, save_json_atomic
from skmm_jax.common.kernels import LoraKernel
from skmm_jax.common.streaming import Progress
from skmm_jax.gradients import merge_params

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "finetune_gradients", "merge_lora"]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """What is trained and how.

    Attributes:
      trainable: "lora" (adapters of rank ``rank`` on ``targets`` of every block) or
        "blocks" (every parameter of the last ``last_blocks`` blocks).
      rank, alpha: LoRA's r and α (scale α / r).
      targets: LoRA target kernels (``prune_jax.lora.LORA_TARGETS``).
      lora_layers: LoRA's block indices (default: every block). Adapting only the last
        blocks makes the backward pass (and SkMM's per-sample gradients) stop there.
      last_blocks: k for trainable="blocks".
      learning_rate, weight_decay: AdamW's (decay on matrices only).
      steps: optimizer updates.
      batch_size: rows per micro-batch; ``accumulation`` micro-batches per update.
      seed: LoRA initialisation and the row order.
      checkpoint_every: updates between checkpoints (with ``checkpoint=``).
    """

    trainable: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    lora_layers: tuple[int, ...] | None = None
    last_blocks: int = 2
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    steps: int = 100
    batch_size: int = 8
    accumulation: int = 1
    seed: int = 0
    checkpoint_every: int = 25

    def __post_init__(self):
        if self.trainable not in TRAINABLE_KINDS:
            raise ValueError(f"trainable must be one of {TRAINABLE_KINDS}, got {self.trainable!r}")
        check_positive_fields(self, ("rank", "last_blocks", "steps", "batch_size", "accumulation", "checkpoint_every"))
        for name in ("learning_rate", "alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "targets": list(self.targets),
                "lora_layers": None if self.lora_layers is None else list(self.lora_layers)}


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    model: Any  # the finetuned model (LoRA merged into its kernels: a plain Llama)
    losses: np.ndarray  # [steps] mean training loss of each update's micro-batches
    trainable: Any  # the trained parameters (LoRA factors or the blocks' partition)


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, num_rows: int) -> np.ndarray:
    """Row order of one epoch, computed once per epoch (not once per micro-step)."""
    return np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), num_rows))


def _micro_batch(seed: int, step: int, num_rows: int, batch_size: int) -> np.ndarray:
    """Row indices of micro-step ``step``: consecutive slices of per-epoch permutations."""
    per_epoch = max(1, num_rows // batch_size)
    epoch, offset = divmod(step, per_epoch)
    order = _epoch_order(seed, epoch, num_rows)
    if num_rows < batch_size:  # fewer rows than a batch: every row, repeated in order
        return np.resize(order, batch_size)
    return order[offset * batch_size : (offset + 1) * batch_size]


def merge_lora(model: Any, factors: dict, scale: float) -> Any:
    """A plain model with W ← W + scale · (A B) reshaped (summed in f32, stored in W's dtype)."""
    graphdef, state = nnx.split(model)
    wrapped = lora_state(state, factors, scale)
    merged = jax.tree.map(
        lambda leaf: (leaf.base.astype(jnp.float32) + leaf.scale * (leaf.a @ leaf.b).astype(jnp.float32).reshape(leaf.base.shape))
        .astype(leaf.base.dtype)
        if isinstance(leaf, LoraKernel) else leaf,
        wrapped, is_leaf=lambda x: isinstance(x, LoraKernel),
    )
    return nnx.merge(graphdef, merged)


FINETUNE_CHECKPOINT = CheckpointKind("finetune", commit="meta.json", files=("state.npz", "meta.json"), progress=("step", "updates"))


def checkpoint_store(path: str | Path) -> CheckpointStore:
    """The checkpoint directory of a finetuning run (``skmm_jax.common.checkpoints`` rules)."""
    return CheckpointStore(Path(path), FINETUNE_CHECKPOINT)


def _save(directory: Path, tree: Any, meta: dict) -> None:
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]

    def write(f):
        buffer = io.BytesIO()
        np.savez(buffer, *leaves)
        f.write(buffer.getvalue())

    atomic_write(directory / "state.npz", write)
    save_json_atomic(directory / "meta.json", meta)  # written last: a meta.json names a complete state


def _load(directory: Path, like: Any) -> tuple[Any, dict] | None:
    if not (directory / "meta.json").exists():
        return None
    meta = json.loads((directory / "meta.json").read_text())
    with np.load(directory / "state.npz") as data:
        leaves = [data[f"arr_{i}"] for i in range(len(data.files))]
    treedef = jax.tree.structure(like)
    if treedef.num_leaves != len(leaves):
        raise ValueError(f"checkpoint {directory} holds {len(leaves)} arrays; this run has {treedef.num_leaves}")
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in leaves]), meta


def _trainable(model: Any, config: FinetuneConfig) -> tuple[Any, Any]:
    """(trainable, frozen) at the start of ``finetune(model, rows, config)``."""
    if config.trainable == "lora":
        key = jax.random.fold_in(jax.random.key(config.seed), 1)
        return init_lora(model, key, config.rank, targets=config.targets, layers=config.lora_layers), nnx.state(model)
    return last_blocks(model, config.last_blocks)


def finetune_gradients(
    model: Any,
    rows: np.ndarray,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    sketch_dim: int = 256,
    key: Any = None,
    chunk_size: int = 8,
    progress: Progress | None = None,
) -> np.ndarray:
    """G̃ [N, m]: each row's next-token-loss gradient w.r.t. exactly the parameters
    ``finetune(model, rows, config)`` trains, at its start, Kronecker-sketched per kernel.

    The input of SkMM (or k-center, ...) for choosing finetuning rows, label-free (the
    text is its own target). Computed by ``sketch_per_sample_grads(..., factored=True)``:
    each kernel's sketch comes from its layer's inputs and output gradients, so neither a
    per-row [r] gradient nor a per-row [a, b] kernel gradient is formed; memory per row
    is the activations, O(T · widths). LoRA starts at B = 0, so ∂ℓ/∂A = 0 and
    ∂ℓ/∂B = (x A)ᵀ g: the weight gradient seen through the random A (as in LESS).

    Args:
      key: the sketch's PRNG key (default ``fold_in(key(config.seed), 2)``).
      chunk_size: rows per vmapped step (B · T · widths of activations).
      progress: ``progress(rows_done, rows_total)``.
    """
    from prune_jax.models.llama.modeling import kernel_inputs
    from skmm_jax.gradients import sketch_per_sample_grads
    from skmm_jax.sketch import make_pytree_sketch

    rows = _check_rows(model, rows)
    trainable, frozen = _trainable(model, config)
    key = jax.random.fold_in(jax.random.key(config.seed), 2) if key is None else key
    # LoRA factors are matrices already; the blocks' 3-D attention kernels need their input axes
    split = None if config.trainable == "lora" else kernel_inputs
    sketch = make_pytree_sketch("kronecker", key, trainable, sketch_dim, split=split)
    loss = lm_loss(config.trainable, nnx.graphdef(model), scale=config.alpha / config.rank)
    return sketch_per_sample_grads(loss, trainable, rows, sketch, frozen=frozen, chunk_size=chunk_size, factored=True,
                                   progress=progress)


def _check_rows(model: Any, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] < 2 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"rows must be a non-empty int [N, T] array of token ids with T >= 2, got {rows.dtype} {rows.shape}")
    if rows.min() < 0 or rows.max() >= model.config.vocab_size:
        raise ValueError(f"token ids must lie in [0, {model.config.vocab_size}) (the model's vocabulary), got [{rows.min()}, {rows.max()}]")
    model.config.check_sequence_length(rows.shape[1], name="rows' length")
    return rows


@functools.lru_cache(maxsize=8)
def _train_step(loss: Any, learning_rate: float, weight_decay: float, accumulation: int) -> tuple[Any, Any]:
    """(optimizer, jitted step) for one (loss, optimizer settings): cached, so runs that
    differ only in seed, steps or rows (a benchmark's grid) reuse one compilation."""
    decay_mask = lambda tree: jax.tree.map(lambda a: a.ndim > 1, tree)  # noqa: E731
    optimizer = optax.MultiSteps(optax.adamw(learning_rate, weight_decay=weight_decay, mask=decay_mask),
                                 every_k_schedule=accumulation)

    def batch_loss(params: Any, frozen: Any, batch: jax.Array) -> jax.Array:
        return jnp.mean(jax.vmap(lambda row: loss(params, row, frozen))(batch))

    @jax.jit  # the frozen model is an argument, not a constant baked into the program
    def step(params: Any, opt_state: Any, frozen: Any, batch: jax.Array) -> tuple[Any, Any, jax.Array]:
        value, grads = jax.value_and_grad(batch_loss)(params, frozen, batch)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, value

    return optimizer, step


def finetune(
    model: Any,
    rows: np.ndarray,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    checkpoint: str | Path | None = None,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Trains ``config.trainable`` of ``model`` on token ``rows`` [N, T+1] for ``config.steps`` updates.

    Raises:
      ValueError: rows not a non-empty int [N, T] array, a checkpoint of another run.
    """
    rows = _check_rows(model, rows)
    graphdef = nnx.graphdef(model)
    scale = config.alpha / config.rank
    trainable, frozen = _trainable(model, config)
    optimizer, step = _train_step(lm_loss(config.trainable, graphdef, scale=scale), float(config.learning_rate),
                                  float(config.weight_decay), config.accumulation)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(trainable)

    # the rows' content too: a resume on other rows of the same shape (another selection) is another run
    fingerprint = {"config": config.to_json(), "rows": list(rows.shape),
                   "rows_sha256": hashlib.sha256(np.ascontiguousarray(rows, np.int64).tobytes()).hexdigest()[:16]}
    start, losses = 0, []
    directory = None
    if checkpoint is not None:
        store = checkpoint_store(checkpoint)
        store.check(flag="checkpoint")
        store.open()
        directory = store.path
        loaded = _load(directory, (trainable, opt_state))
        if loaded is not None:
            (trainable, opt_state), meta = loaded
            if meta["fingerprint"] != fingerprint:
                raise ValueError(f"checkpoint {directory} is of another run ({mismatch(meta['fingerprint'], fingerprint)}); "
                                 "delete it or pass another directory")
            start, losses = int(meta["step"]), list(meta["losses"])
    micro = []
    for update in range(start, config.steps):
        for inner in range(config.accumulation):
            index = _micro_batch(config.seed, update * config.accumulation + inner, len(rows), config.batch_size)
            trainable, opt_state, value = step(trainable, opt_state, frozen, jnp.asarray(rows[index]))
            micro.append(value)
        losses.append(float(jnp.mean(jnp.stack(micro))))  # one host sync per update
        micro = []
        if not np.isfinite(losses[-1]):
            raise ValueError(f"the training loss is {losses[-1]} at update {update}; lower learning_rate")
        if directory is not None and ((update + 1) % config.checkpoint_every == 0 or update + 1 == config.steps):
            _save(directory, (trainable, opt_state), {"fingerprint": fingerprint, "step": update + 1, "losses": losses})
        if progress is not None:
            progress(update + 1, config.steps)
    if config.trainable == "lora":
        tuned = merge_lora(model, trainable, scale)
    else:
        tuned = nnx.merge(graphdef, merge_params(trainable, frozen))
    return FinetuneResult(tuned, np.asarray(losses, np.float32), trainable)
