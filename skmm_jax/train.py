"""Training on a selected coreset: linear probing (LP) and finetuning the last MLP (FT).

LP: a softmax-regression head on frozen features z ∈ R^D, standardised with the
TRAINING subset's statistics (μ, σ),

    f(z) = Wᵀ (z − μ) / σ + b,    W ∈ R^{D×C},
    L(W, b) = (1/n) Σ_i CE(f(z_i), y_i)   (+ ½ λ ‖W‖² for "adam"; decoupled λ for "adamw").

FT: the last decoder block's MLP and a linear head on the cached residual stream
h ∈ R^{T×D} entering that MLP (``skmm_jax.tasks.extract_features(layer_input=...)``),

    y = h + MLP(RMSNorm_post(h)),   z = (1/T) Σ_t RMSNorm_final(y)_t,   f = Wᵀ z + b,

with the two RMSNorm weights frozen and (MLP, W, b) trained. At the pretrained point
z equals the LP feature exactly, so an LP solution can be folded into the head
(``μ, σ`` absorbed into W and b) and FT starts from LP ("LP-FT").

Both trainers are one jitted pure function each: ``lax.scan`` over epochs, and inside
an epoch ``lax.scan`` over shuffled minibatches (the last one padded with weight-0
rows, so every epoch sees each sample exactly once). Hyperparameters that are plain
numbers (learning rate, weight decay) are traced, so a grid search compiles once per
(optimizer, epochs, batch size, data shape).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from skmm_jax.gradients import jacobian_sketch_loss, nnx_apply
from skmm_jax.sketch.base import as_key

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "LinearProbe",
    "LinearProbeConfig",
    "LinearHead",
    "MLPHead",
    "ProbeSearch",
    "TRAINABLE",
    "default_probe_grid",
    "finetune",
    "ft_gradient_loss",
    "ft_logits",
    "ft_predict",
    "metrics",
    "mlp_head_from_llama",
    "predict",
    "probe_logits",
    "select_hyperparameters",
    "train_linear_probe",
]

Array = jax.Array
OPTIMIZERS = ("adam", "adamw")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive integer")


def _check_common(config: Any) -> None:
    if not config.learning_rate >= 0.0:
        raise ValueError(f"learning_rate={config.learning_rate!r}; expected >= 0")
    if not config.weight_decay >= 0.0:
        raise ValueError(f"weight_decay={config.weight_decay!r}; expected >= 0")
    _check_positive_int("epochs", config.epochs)
    _check_positive_int("batch_size", config.batch_size)
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={config.optimizer!r}; expected one of {OPTIMIZERS}")


def _optimizer(kind: str, learning_rate: Array, weight_decay: Array) -> optax.GradientTransformation:
    """adamw: decoupled decay on kernels only (not biases); adam: decay enters the loss (see callers)."""
    if kind == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay, mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))
    return optax.adam(learning_rate)


def _l2_penalty(kind: str, params: Any, weight_decay: Array) -> Array:
    """½ λ Σ ‖kernel‖² for "adam" (coupled L2); zero for "adamw" (decay is in the update)."""
    if kind != "adam":
        return jnp.float32(0.0)
    squares = [jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(params) if leaf.ndim > 1]
    return 0.5 * weight_decay * sum(squares, jnp.float32(0.0))


def _epoch_batches(key: Array, n: int, batch_size: int) -> tuple[Array, Array]:
    """A shuffled epoch as [S, B] indices and [S, B] weights (1 real, 0 padding), S = ⌈n/B⌉."""
    steps = -(-n // batch_size)
    perm = jax.random.permutation(key, n)
    pad = steps * batch_size - n
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, batch_size)
    weight = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)]).reshape(steps, batch_size)
    return idx, weight


def _fit(
    key: Array,
    params: Any,
    batch_loss: Callable[[Any, Array, Array], Array],
    n: int,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
) -> tuple[Any, Array]:
    """Shuffled minibatch training, lax.scan over epochs × steps; returns (params, epoch mean losses [E]).

    ``batch_loss(params, idx [B], weight [B])`` is the weighted mean loss of rows idx.
    """
    # optax's Adam bias correction computes float ** int32, which strict dtype
    # promotion (used by the tests, and by careful callers) rejects: let optax's own
    # arithmetic promote as standard NumPy does; our loss stays under the caller's mode.
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    grad_fn = jax.value_and_grad(batch_loss)

    def step(carry, batch):
        params, opt_state = carry
        idx, weight = batch
        loss, grads = grad_fn(params, idx, weight)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return (params, opt_state), loss * jnp.sum(weight)

    def epoch(carry, epoch_key):
        idx, weight = _epoch_batches(epoch_key, n, batch_size)
        carry, weighted = jax.lax.scan(step, carry, (idx, weight))
        return carry, jnp.sum(weighted) / n

    (params, _), losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))
    return params, losses


def _check_labels(labels: Any, n: int, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be an integer array of shape ({n},), got {labels.dtype} {labels.shape}")
    _check_positive_int("num_classes", num_classes)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what}: labels span [{labels.min()}, {labels.max()}], outside [0, num_classes={num_classes})")
    return labels.astype(np.int32)


# ------------------------------------------------------------------- linear probe


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
    """Softmax regression on standardised features.

    Attributes:
      learning_rate: Adam step size.
      weight_decay: λ on the kernel (not the bias): decoupled (AdamW) or an L2 term
        ½λ‖W‖² in the loss (Adam).
      epochs: passes over the training subset.
      batch_size: minibatch size (capped at the subset size).
      optimizer: "adamw" or "adam".
    """

    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    epochs: int = 100
    batch_size: int = 64
    optimizer: str = "adamw"

    def __post_init__(self):
        _check_common(self)


class LinearProbe(NamedTuple):
    """f(z) = ((z − mean) / scale) @ kernel + bias."""

    mean: Array  # [D]
    scale: Array  # [D]
    kernel: Array  # [D, C]
    bias: Array  # [C]


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "optimizer"))
def _train_probe(
    key: Array, x: Array, y: Array, learning_rate: Array, weight_decay: Array, *,
    num_classes: int, epochs: int, batch_size: int, optimizer: str,
) -> tuple[LinearProbe, Array]:  # fmt: skip
    n, dim = x.shape
    mean = jnp.mean(x, axis=0)
    std = jnp.std(x, axis=0)
    scale = jnp.where(std > 1e-6, std, jnp.float32(1.0))  # constant features: leave them centred at 0
    z = (x - mean[None, :]) / scale[None, :]  # [n, D]
    params = {"kernel": jnp.zeros((dim, num_classes), jnp.float32), "bias": jnp.zeros((num_classes,), jnp.float32)}

    def batch_loss(p, idx, weight):
        logits = z[idx] @ p["kernel"] + p["bias"][None, :]  # [B, C]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx])
        return jnp.sum(weight * ce) / jnp.sum(weight) + _l2_penalty(optimizer, p, weight_decay)

    params, losses = _fit(
        key, params, batch_loss, n,
        optimizer=_optimizer(optimizer, learning_rate, weight_decay), epochs=epochs, batch_size=min(batch_size, n),
    )  # fmt: skip
    return LinearProbe(mean, scale, params["kernel"], params["bias"]), losses


def train_linear_probe(
    key: Array, features: Any, labels: Any, num_classes: int, config: LinearProbeConfig = LinearProbeConfig()
) -> LinearProbe:
    """Fits the LP head on (features, labels) with the training subset's standardisation.

    Zero-initialised kernel and bias (the problem is convex; zero is the
    max-entropy start); ``key`` only shuffles the minibatches.

    Args:
      key: PRNG key (``jax.random.key(seed)``).
      features: float [n, D] training features (e.g. ``pooled[coreset]``).
      labels: int [n] in [0, num_classes).
      num_classes: C, given explicitly: a coreset may miss classes, and the head must
        still score all of them.
      config: hyperparameters.

    Returns:
      `LinearProbe` (standardisation folded in; use `predict` / `probe_logits`).
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [n, D] array, got shape {x.shape}")
    y = _check_labels(labels, x.shape[0], num_classes, "train_linear_probe")
    probe, _ = _train_probe(
        as_key(key), jnp.asarray(x), jnp.asarray(y),
        jnp.float32(config.learning_rate), jnp.float32(config.weight_decay),
        num_classes=int(num_classes), epochs=config.epochs, batch_size=config.batch_size, optimizer=config.optimizer,
    )  # fmt: skip
    return probe


@jax.jit
def _probe_logits(probe: LinearProbe, x: Array) -> Array:
    z = (x - probe.mean[None, :]) / probe.scale[None, :]
    return z @ probe.kernel + probe.bias[None, :]


def probe_logits(probe: LinearProbe, features: Any) -> np.ndarray:
    """Logits float32 [N, C] of the LP head."""
    return np.asarray(_probe_logits(probe, jnp.asarray(np.asarray(features, dtype=np.float32))))


def predict(probe: LinearProbe, features: Any) -> np.ndarray:
    """argmax class int32 [N] of the LP head."""
    return probe_logits(probe, features).argmax(axis=1).astype(np.int32)


class ProbeSearch(NamedTuple):
    """Result of `select_hyperparameters`: the winner and every (config, val accuracy)."""

    best: LinearProbeConfig
    best_probe: LinearProbe
    scores: tuple[tuple[LinearProbeConfig, float], ...]


def default_probe_grid(
    learning_rates: Sequence[float] = (1e-3, 1e-2), weight_decays: Sequence[float] = (1e-4, 1e-2, 1e-1), **fixed: Any
) -> tuple[LinearProbeConfig, ...]:
    """The product grid of learning rates × weight decays (other fields from ``fixed``)."""
    return tuple(
        LinearProbeConfig(learning_rate=lr, weight_decay=wd, **fixed) for lr in learning_rates for wd in weight_decays
    )


def select_hyperparameters(
    key: Array,
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    num_classes: int,
    grid: Sequence[LinearProbeConfig],
) -> ProbeSearch:
    """The grid point with the best validation accuracy (ties: the earliest in ``grid``).

    Every configuration is trained with the same ``key`` (same minibatch order), so
    they differ only in their hyperparameters. Test data is not an argument: the
    choice cannot depend on it.
    """
    if not grid:
        raise ValueError("select_hyperparameters: the grid is empty")
    val_y = np.asarray(val_y)
    key = as_key(key)
    scores, best, best_probe, best_acc = [], None, None, -1.0
    for config in grid:
        probe = train_linear_probe(key, train_x, train_y, num_classes, config)
        acc = float(np.mean(predict(probe, val_x) == val_y))
        scores.append((config, acc))
        if acc > best_acc:
            best, best_probe, best_acc = config, probe, acc
    return ProbeSearch(best, best_probe, tuple(scores))


def metrics(pred: Any, labels: Any, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1.

    F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c); macro-F1 averages it over the classes
    present in ``labels`` (a prediction of an absent class still counts as a false
    negative of the true class). Equals ``sklearn.metrics.f1_score(labels, pred,
    labels=np.unique(labels), average="macro")``.

    Returns:
      ``{"accuracy", "macro_f1", "classes_evaluated"}``.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 1 or labels.size == 0:
        raise ValueError(f"pred and labels must be equal-length non-empty 1-D arrays, got {pred.shape} and {labels.shape}")
    for name, values in (("pred", pred), ("labels", labels)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class ids, got dtype {values.dtype}")
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} span [{values.min()}, {values.max()}], outside [0, num_classes={num_classes})")
    hit = pred == labels
    tp = np.bincount(labels[hit], minlength=num_classes)
    fn = np.bincount(labels, minlength=num_classes) - tp
    fp = np.bincount(pred, minlength=num_classes) - tp
    present = np.bincount(labels, minlength=num_classes) > 0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return {"accuracy": float(hit.mean()), "macro_f1": float(f1.mean()), "classes_evaluated": int(present.sum())}


# --------------------------------------------------------------------- finetuning


class LinearHead(nnx.Module):
    """logits = z W + b (float32) for z [B, D]; W [D, C], b [C]."""

    def __init__(self, kernel: Array, bias: Array):
        self.kernel = nnx.Param(kernel)  # [D, C]
        self.bias = nnx.Param(bias)  # [C]

    def __call__(self, z: Array) -> Array:
        kernel, bias = self.kernel[...].astype(jnp.float32), self.bias[...].astype(jnp.float32)
        return jnp.einsum("BD,DC->BC", z.astype(jnp.float32), kernel) + bias[None, :]


class MLPHead(nnx.Module):
    """Last decoder block's MLP (+ residual), final norm, mean-pool, linear head.

    ``h [B, T, D] → y = h + MLP(RMSNorm_post(h)) → z = mean_t RMSNorm_final(y) [B, D]
    → logits = z W + b [B, C]``. Sizes are read from the kernels.
    """

    def __init__(self, post_attn_norm: nnx.Module, mlp: nnx.Module, norm: nnx.Module, kernel: Array, bias: Array):
        self.post_attn_norm = post_attn_norm
        self.mlp = mlp
        self.norm = norm
        self.head = LinearHead(kernel, bias)

    def pooled(self, h: Array) -> Array:
        """Mean-pooled final-norm hidden states [B, D] (float32) from the MLP input h [B, T, D]."""
        h = h.astype(self.norm.weight[...].dtype)  # cached inputs may be float16
        y = h + self.mlp(self.post_attn_norm(h))
        return jnp.mean(self.norm(y).astype(jnp.float32), axis=1)

    def __call__(self, h: Array) -> Array:
        """Logits float32 [B, C]."""
        z = self.pooled(h)
        return self.head(z)


TRAINABLE = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("mlp"), nnx.PathContains("head")))
"""NNX filter of the finetuned parameters: the MLP kernels (and biases) and the head."""


def mlp_head_from_llama(
    model: Any, num_classes: int, *, probe: LinearProbe | None = None, key: Array | None = None
) -> MLPHead:
    """An `MLPHead` holding COPIES of the last block's post-attention norm + MLP and the final norm.

    Head initialisation:

    - ``probe`` given (an LP solution on the pooled features of the TRAINING data or
      the coreset, never test labels): folded in, W = K / σ (row-wise), b = b_LP − (μ/σ)ᵀ K,
      so at init the head's logits equal ``probe_logits(probe, pooled)`` exactly ("LP-FT");
    - else random: W ~ N(0, 1/D), b = 0, drawn from ``key`` (label-free; use this for
      a selection that must not see any labels).

    A zero head is never used: it would make every MLP gradient vanish at θ0.
    """
    _check_positive_int("num_classes", num_classes)
    last = list(model.layers)[-1]
    post_attn_norm, mlp, norm = (nnx.clone(m) for m in (last.post_attn_norm, last.mlp, model.norm))
    dim = int(norm.weight[...].shape[0])
    dtype = norm.weight[...].dtype
    if probe is not None:
        probe_kernel = jnp.asarray(probe.kernel, jnp.float32)
        if probe_kernel.shape != (dim, num_classes):
            raise ValueError(f"probe kernel has shape {probe_kernel.shape}, expected ({dim}, {num_classes})")
        kernel = probe_kernel / probe.scale[:, None]
        bias = probe.bias - (probe.mean / probe.scale) @ probe_kernel
    else:
        if key is None:
            raise ValueError("mlp_head_from_llama: pass probe= (LP-initialised head) or key= (random head)")
        kernel = jax.random.normal(as_key(key), (dim, num_classes), jnp.float32) / jnp.sqrt(jnp.float32(dim))
        bias = jnp.zeros((num_classes,), jnp.float32)
    return MLPHead(post_attn_norm, mlp, norm, kernel.astype(dtype), bias.astype(dtype))


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """FT of (last MLP, head) in the kernel regime: small steps, few epochs.

    Attributes:
      learning_rate, weight_decay, epochs, batch_size, optimizer: as in
        `LinearProbeConfig` (decay on kernels only).
    """

    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"

    def __post_init__(self):
        _check_common(self)


class FinetuneResult(NamedTuple):
    model: MLPHead  # the finetuned copy (the init module is untouched)
    losses: np.ndarray  # [epochs] mean training loss of each epoch (before each step's update)


@functools.partial(jax.jit, static_argnames=("graphdef", "epochs", "batch_size", "optimizer"))
def _train_head(
    key: Array, params: Any, frozen: Any, h: Array, y: Array, learning_rate: Array, weight_decay: Array, *,
    graphdef: Any, epochs: int, batch_size: int, optimizer: str,
) -> tuple[Any, Array]:  # fmt: skip
    def batch_loss(p, idx, weight):
        logits = nnx.merge(graphdef, p, frozen)(h[idx])  # [B, C]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx])
        return jnp.sum(weight * ce) / jnp.sum(weight) + _l2_penalty(optimizer, p, weight_decay)

    return _fit(
        key, params, batch_loss, h.shape[0],
        optimizer=_optimizer(optimizer, learning_rate, weight_decay), epochs=epochs,
        batch_size=min(batch_size, h.shape[0]),
    )  # fmt: skip


def finetune(
    key: Array, layer_inputs: Any, labels: Any, init: MLPHead, config: FinetuneConfig = FinetuneConfig()
) -> FinetuneResult:
    """Trains the MLP and head of ``init`` (a copy) on (layer_inputs, labels) with cross-entropy.

    The norms stay frozen. All of ``layer_inputs`` is put on the device (a coreset:
    n·T·D values), cast to the model dtype inside the step.

    Args:
      key: PRNG key for the minibatch order.
      layer_inputs: [n, T, D] MLP inputs of the coreset (from `extract_features`).
      labels: int [n] in [0, C), C = the head's width.
      init: the starting point, e.g. `mlp_head_from_llama`.
      config: hyperparameters.
    """
    h = np.asarray(layer_inputs)
    if h.ndim != 3 or h.shape[0] == 0:
        raise ValueError(f"layer_inputs must be a non-empty [n, T, D] array, got shape {h.shape}")
    num_classes = int(init.head.bias[...].shape[0])
    y = _check_labels(labels, h.shape[0], num_classes, "finetune")
    graphdef, params, frozen = nnx.split(init, TRAINABLE, ...)
    params, losses = _train_head(
        as_key(key), params, frozen, jnp.asarray(h), jnp.asarray(y),
        jnp.float32(config.learning_rate), jnp.float32(config.weight_decay),
        graphdef=graphdef, epochs=config.epochs, batch_size=config.batch_size, optimizer=config.optimizer,
    )  # fmt: skip
    return FinetuneResult(nnx.merge(graphdef, params, frozen), np.asarray(losses))


@functools.partial(jax.jit, static_argnums=0)
def _head_logits(graphdef: Any, state: Any, h: Array) -> Array:
    return nnx.merge(graphdef, state)(h)


def ft_logits(model: MLPHead, layer_inputs: Any, *, batch_size: int = 64) -> np.ndarray:
    """Logits float32 [N, C], batched over host rows (``layer_inputs`` may be a memmap)."""
    _check_positive_int("batch_size", batch_size)
    h = layer_inputs if hasattr(layer_inputs, "ndim") else np.asarray(layer_inputs)  # keep memmaps lazy
    if h.ndim != 3 or h.shape[0] == 0:
        raise ValueError(f"layer_inputs must be a non-empty [N, T, D] array, got shape {h.shape}")
    graphdef, state = nnx.split(model)
    n, size = h.shape[0], min(batch_size, h.shape[0])
    out = []
    for start in range(0, n, size):
        chunk = np.asarray(h[start : start + size])
        rows = chunk.shape[0]
        if rows < size:  # pad to one shape: one compilation
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - rows, axis=0)])
        out.append(np.asarray(_head_logits(graphdef, state, chunk))[:rows])
    return np.concatenate(out)


def ft_predict(model: MLPHead, layer_inputs: Any, *, batch_size: int = 64) -> np.ndarray:
    """argmax class int32 [N] of the finetuned model."""
    return ft_logits(model, layer_inputs, batch_size=batch_size).argmax(axis=1).astype(np.int32)


def ft_gradient_loss(model: MLPHead) -> tuple[Callable, Any, Any]:
    """``(loss_fn, params, frozen)`` for label-free FT gradients at θ0 = ``model``.

    ``loss_fn(params, (h, w), frozen) = Σ_c w_c f_c(h; θ)`` (`jacobian_sketch_loss`) for
    one sample h [T, D] and Rademacher weights w ∈ {±1}^C, so its gradient is the
    random projection J(h)ᵀ w of the per-sample Jacobian over the trainable
    parameters (MLP + head; norms in ``frozen``). Use with
    ``sketch_per_sample_grads(loss_fn, params, (layer_inputs, w), sketch, frozen=frozen)``.
    For selection, prefer ONE readout shared by all samples,
    ``w = np.repeat(rademacher_weights(key, 1, C), N, axis=0)``: independent
    per-sample weights make each row a noisy rank-one view (the head blocks of two
    samples are orthogonal in expectation) and selected worse on the real-task
    benchmark's validation split (57.5–58.4 % vs 62.7 % with a shared readout,
    z-scored columns and unit rows; ``benchmarks/results/real_lp_ft.md``). No labels
    are read; the head is whatever ``model`` holds (random or LP-initialised, see
    `mlp_head_from_llama`).
    """
    apply_fn, params, frozen = nnx_apply(model, TRAINABLE)
    return jacobian_sketch_loss(apply_fn), params, frozen
