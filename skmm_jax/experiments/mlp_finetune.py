"""Finetuning the last decoder block's MLP and a linear head on a coreset (FT).

The model sees the cached residual stream h ∈ R^{T×D} entering the last block's MLP
(``skmm_jax.experiments.features.extract_features``, whose ``layer_input`` output it is):

    y = h + MLP(Norm_post(h)),   z = (1/T) Σ_t Norm_final(y)_t,   f = Wᵀ z + b,

with the two norms frozen and (MLP, W, b) trained. The block is any module with the
hook ``block.mlp_residual(h) = h + MLP(Norm_post(h))`` (e.g. a LLaMA ``DecoderBlock``);
the final norm any module mapping [B, T, D] → [B, T, D]. At the pretrained point z is
the linear-probe feature, so an LP solution can be folded into the head (``μ, σ``
absorbed into W and b) and FT starts from LP ("LP-FT"). Training is one jitted pure
function (``skmm_jax.train.loop.fit``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from skmm_jax.common.checks import as_key, check_labels, check_positive_int
from skmm_jax.common.streaming import check_chunk_size, stream_chunks
from skmm_jax.gradients import jacobian_sketch_loss, nnx_apply
from skmm_jax.train.loop import check_training_config, fit, l2_penalty, optimizer
from skmm_jax.train.probe import LinearProbe

Array = jax.Array

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "LinearHead",
    "MLPHead",
    "TRAINABLE",
    "finetune",
    "ft_gradient_loss",
    "ft_logits",
    "ft_predict",
    "mlp_head",
]


class LinearHead(nnx.Module):
    """logits = z W + b (float32) for z [B, D]; W [D, C], b [C]."""

    def __init__(self, kernel: Array, bias: Array):
        self.kernel = nnx.Param(kernel)  # [D, C]
        self.bias = nnx.Param(bias)  # [C]

    def __call__(self, z: Array) -> Array:
        kernel, bias = self.kernel[...].astype(jnp.float32), self.bias[...].astype(jnp.float32)
        return jnp.einsum("BD,DC->BC", z.astype(jnp.float32), kernel) + bias[None, :]


def _param_dtype(module: nnx.Module) -> Any:
    return jax.tree.leaves(nnx.state(module, nnx.Param))[0].dtype


class MLPHead(nnx.Module):
    """The last block's MLP half (+ residual), the final norm, mean-pool, a linear head.

    ``h [B, T, D] → y = block.mlp_residual(h) → z = mean_t norm(y) [B, D] → logits = z W + b
    [B, C]``. The block's attention half is held but never run. The attribute is named
    ``last_block`` so the trainable leaves keep the order (head, then MLP) in which the
    FT gradient sketches were drawn.
    """

    def __init__(self, block: nnx.Module, norm: nnx.Module, kernel: Array, bias: Array):
        self.last_block = block
        self.norm = norm
        self.head = LinearHead(kernel, bias)

    def pooled(self, h: Array) -> Array:
        """Mean-pooled final-norm hidden states [B, D] (float32) from the MLP input h [B, T, D]."""
        h = h.astype(_param_dtype(self.norm))  # cached inputs may be float16
        y = self.last_block.mlp_residual(h)
        return jnp.mean(self.norm(y).astype(jnp.float32), axis=1)

    def __call__(self, h: Array) -> Array:
        """Logits float32 [B, C]."""
        return self.head(self.pooled(h))


TRAINABLE = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("mlp"), nnx.PathContains("head")))
"""NNX filter of the finetuned parameters: the MLP kernels (and biases) and the head."""


def mlp_head(
    block: nnx.Module, norm: nnx.Module, num_classes: int, *, probe: LinearProbe | None = None, key: Array | None = None
) -> MLPHead:
    """An `MLPHead` holding COPIES of ``block`` (its MLP half is trained) and the final ``norm``.

    D is the width of the norm's weight; the head is stored in the norm's dtype.
    Head initialisation:

    - ``probe`` given (an LP solution on the pooled features of the TRAINING data or
      the coreset, never test labels): folded in, W = K / σ (row-wise), b = b_LP − (μ/σ)ᵀ K,
      so at init the head's logits equal ``probe_logits(probe, pooled)`` exactly ("LP-FT");
    - else random: W ~ N(0, 1/D), b = 0, drawn from ``key`` (label-free; use this for
      a selection that must not see any labels).

    A zero head is never used: it would make every MLP gradient vanish at θ0.
    """
    check_positive_int(num_classes, "num_classes")
    block, norm = nnx.clone(block), nnx.clone(norm)
    weight = jax.tree.leaves(nnx.state(norm, nnx.Param))[0]
    dim, dtype = int(weight.shape[-1]), weight.dtype
    if probe is not None:
        probe_kernel = jnp.asarray(probe.kernel, jnp.float32)
        if probe_kernel.shape != (dim, num_classes):
            raise ValueError(f"probe kernel has shape {probe_kernel.shape}, expected ({dim}, {num_classes})")
        kernel = probe_kernel / probe.scale[:, None]
        bias = probe.bias - (probe.mean / probe.scale) @ probe_kernel
    else:
        if key is None:
            raise ValueError("mlp_head: pass probe= (LP-initialised head) or key= (random head)")
        kernel = jax.random.normal(as_key(key), (dim, num_classes), jnp.float32) / jnp.sqrt(jnp.float32(dim))
        bias = jnp.zeros((num_classes,), jnp.float32)
    return MLPHead(block, norm, kernel.astype(dtype), bias.astype(dtype))


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """FT of (last MLP, head) in the kernel regime: small steps, few epochs.

    Attributes:
      learning_rate, weight_decay, epochs, batch_size, optimizer: as in
        ``LinearProbeConfig`` (decay on kernels only).
    """

    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"

    def __post_init__(self):
        check_training_config(self)


class FinetuneResult(NamedTuple):
    model: MLPHead  # the finetuned copy (the init module is untouched)
    losses: np.ndarray  # [epochs] mean training loss of each epoch (before each step's update)


@functools.partial(jax.jit, static_argnames=("graphdef", "epochs", "batch_size", "optimizer_kind"))
def _train_head(
    key: Array, params: Any, frozen: Any, h: Array, y: Array, learning_rate: Array, weight_decay: Array, *,
    graphdef: Any, epochs: int, batch_size: int, optimizer_kind: str,
) -> tuple[Any, Array]:  # fmt: skip
    def batch_loss(p, idx, weight):
        logits = nnx.merge(graphdef, p, frozen)(h[idx])  # [B, C]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx])
        return jnp.sum(weight * ce) / jnp.sum(weight) + l2_penalty(optimizer_kind, p, weight_decay)

    params, losses, _ = fit(
        key, params, batch_loss, h.shape[0],
        optimizer=optimizer(optimizer_kind, learning_rate, weight_decay), epochs=epochs,
        batch_size=min(batch_size, h.shape[0]),
    )  # fmt: skip
    return params, losses


def finetune(
    key: Array, layer_inputs: Any, labels: Any, init: MLPHead, config: FinetuneConfig = FinetuneConfig()
) -> FinetuneResult:
    """Trains the MLP and head of ``init`` (a copy) on (layer_inputs, labels) with cross-entropy.

    The norms stay frozen. All of ``layer_inputs`` is put on the device (a coreset:
    n·T·D values), cast to the model dtype inside the step.

    Args:
      key: PRNG key for the minibatch order.
      layer_inputs: [n, T, D] MLP inputs of the coreset (from ``extract_features``).
      labels: int [n] in [0, C), C = the head's width.
      init: the starting point, e.g. `mlp_head`.
      config: hyperparameters.
    """
    h = np.asarray(layer_inputs)
    if h.ndim != 3 or h.shape[0] == 0:
        raise ValueError(f"layer_inputs must be a non-empty [n, T, D] array, got shape {h.shape}")
    num_classes = int(init.head.bias[...].shape[0])
    y = check_labels(labels, h.shape[0], num_classes=num_classes)
    graphdef, params, frozen = nnx.split(init, TRAINABLE, ...)
    params, losses = _train_head(
        as_key(key), params, frozen, jnp.asarray(h), jnp.asarray(y),
        jnp.float32(config.learning_rate), jnp.float32(config.weight_decay),
        graphdef=graphdef, epochs=config.epochs, batch_size=config.batch_size, optimizer_kind=config.optimizer,
    )  # fmt: skip
    return FinetuneResult(nnx.merge(graphdef, params, frozen), np.asarray(losses))


@functools.partial(jax.jit, static_argnums=0)
def _head_logits(graphdef: Any, state: Any, h: Array) -> Array:
    return nnx.merge(graphdef, state)(h)


def ft_logits(model: MLPHead, layer_inputs: Any, *, batch_size: int = 64) -> np.ndarray:
    """Logits float32 [N, C], batched over host rows (``layer_inputs`` may be a memmap)."""
    batch_size = check_chunk_size(batch_size, "batch_size")
    h = layer_inputs if hasattr(layer_inputs, "ndim") else np.asarray(layer_inputs)  # keep memmaps lazy
    if h.ndim != 3 or h.shape[0] == 0:
        raise ValueError(f"layer_inputs must be a non-empty [N, T, D] array, got shape {h.shape}")
    graphdef, state = nnx.split(model)
    out: list[np.ndarray] = []
    stream_chunks(
        lambda chunk: _head_logits(graphdef, state, chunk),
        lambda start, stop: np.asarray(h[start:stop]),
        lambda start, stop, logits: out.append(logits),
        h.shape[0],
        batch_size,
    )
    return np.concatenate(out)


def ft_predict(model: MLPHead, layer_inputs: Any, *, batch_size: int = 64) -> np.ndarray:
    """argmax class int32 [N] of the finetuned model."""
    return ft_logits(model, layer_inputs, batch_size=batch_size).argmax(axis=1).astype(np.int32)


def ft_gradient_loss(model: MLPHead) -> tuple[Callable, Any, Any]:
    """``(loss_fn, params, frozen)`` for label-free FT gradients at θ0 = ``model``.

    ``loss_fn(params, (h, w), frozen) = Σ_c w_c f_c(h; θ)`` (`jacobian_sketch_loss`) for
    one sample h [T, D] and Rademacher weights w ∈ {±1}^C, so its gradient is the
    random projection J(h)ᵀ w of the per-sample Jacobian over the trainable
    parameters (MLP + head; norms and the unused attention half in ``frozen``). Use with
    ``sketch_per_sample_grads(loss_fn, params, (layer_inputs, w), sketch, frozen=frozen)``.
    For selection, prefer ONE readout shared by all samples,
    ``w = np.repeat(rademacher_weights(key, 1, C), N, axis=0)``: independent
    per-sample weights make each row a noisy rank-one view (the head blocks of two
    samples are orthogonal in expectation) and selected worse on the real-task
    benchmark's validation split (57.5–58.4 % vs 62.7 % with a shared readout,
    z-scored columns and unit rows; ``benchmarks/results/real_lp_ft.md``). No labels
    are read; the head is whatever ``model`` holds (random or LP-initialised, see
    `mlp_head`).
    """
    apply_fn, params, frozen = nnx_apply(model, TRAINABLE)
    return jacobian_sketch_loss(apply_fn), params, frozen
