"""Pseudo-label gradient features: per-sample gradients of a linear head, sketched.

The method's recipe for classification by linear probing (LP): the finetuned parameters
are a C-class linear head on frozen features, f(z) = Wᵀz + b, W ∈ R^{d×C}, and the
per-sample gradient of the cross-entropy at a head (W, b) with label ỹ_i is

    ∂ℓ_i/∂W = z_i (p_i − e_ỹi)ᵀ,    ∂ℓ_i/∂b = p_i − e_ỹi,    p_i = softmax(Wᵀz_i + b),

so, with the bias as a constant input 1 (``head_intercept``), ẑ_i = [z_i, 1] ∈ R^{d'} and the
gradient row is the Kronecker product

    g_i = vec((p_i − e_ỹi) ẑ_iᵀ) = (p_i − e_ỹi) ⊗ ẑ_i ∈ R^{C·d'}      (C-major, row-major vec).

Labels are not available to a label-free selector, so ỹ are **pseudo-labels**, from
(a) k-means on the pool (``skmm_jax.kmeans``; k = the number of classes when known, else
``kmeans.default_num_clusters``), (b) the predictions of a supplied head, or (c) a head
fitted on a few supplied labels, predicting the rest. The head the gradient is taken at:

- ``gradient_head="zero"``: W = 0, b = 0, so p = 1/C and g_i = (1/C − e_ỹi) ⊗ ẑ_i. The second
  moment is block-structured by pseudo-class, Σ = Σ_c a_c a_cᵀ ⊗ Σ_{ẑ,c} with
  a_c = 1/C − e_c, so matching it asks the coreset to carry each pseudo-class's own
  feature moments (⟨a_b, a_c⟩ = δ_bc − 1/C: the blocks are nearly orthogonal for
  large C). With C = 2, a_1 = −a_0: every row is s_i (½, −½) ⊗ ẑ_i, s_i = ±1 by
  pseudo-class, so the UNCENTRED moment (``preprocess="none"``) is that of ẑ itself and
  the pseudo-labels do nothing there. Centring (SkMM's default preprocessing) does see
  them: s_i ẑ_i − mean(s ẑ) is, up to sign, ẑ_i ∓ (π₊μ₊ − π₋μ₋) (μ_c the pseudo-class
  means of ẑ, π_c their shares): each pseudo-class is moved by its own offset, to its own
  mean exactly when the two are equally large (Σ_c π_c μ_c = 0 for standardised ẑ).
- ``gradient_head="fitted"``: the head that made the pseudo-labels (the supplied one, the one fitted
  on the supplied labels, or for k-means a softmax fitted to the clusters with
  ``skmm_jax.train.probe.fit_linear_softmax``, L2-regularised so separable clusters keep
  finite weights). Rows are scaled by the residual p_i − e_ỹi: confidently predicted
  samples shrink, samples near a boundary keep their length.

**Sketch without forming [N, C·d']**: with Γ = Γ_C ⊗ Γ_d (``sketch.KroneckerSketch``,
a = C, b = d'), vec((p − e)ẑᵀ)Γ = vec(Γ_Cᵀ(p − e)(Γ_dᵀẑ)ᵀ) = (Γ_Cᵀ(p − e)) ⊗ (Γ_dᵀẑ):
O(C m_C + d' m_d + m) per row (``KroneckerSketch.apply_factors`` with T = 1). When
C·d' ≤ m the rows are returned exactly (no sketch). The head's input z is, by default,
the features standardised over the pool (``moments.standardization``), the geometry the
LP probe of ``skmm_jax.train.probe`` trains in.

Everything is a pure function of (key, x) and arrays; ``pseudo_label_gradients`` is the
one entry point (``SkMMConfig(gradients="pseudo-label")`` runs it inside ``skmm``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.common.checks import as_key, check_labels, check_positive_int, check_rows
from skmm_jax.common.precision import HIGHEST
from skmm_jax.kmeans import default_num_clusters, kmeans
from skmm_jax.moments import standardization
from skmm_jax.sketch.kronecker import KroneckerSketch, kronecker_sketch
from skmm_jax.train.probe import LinearProbeConfig, fit_linear_softmax

Array = jax.Array

HEADS = ("zero", "fitted")
SOURCES = ("kmeans", "head", "labels")

__all__ = [
    "HEADS",
    "SOURCES",
    "PseudoLabelGradientConfig",
    "PseudoLabelGradients",
    "head_gradient_rows",
    "head_gradient_sketch",
    "pseudo_label_gradients",
    "sketch_head_gradients",
]


@functools.partial(dataclasses.dataclass, frozen=True)
class PseudoLabelGradientConfig:
    """How pseudo-label gradient features are made (hashable; see the module docstring).

    Attributes:
      num_pseudo_classes: k of the k-means pseudo-labels (and C of the head); None: the
        number of classes when the caller knows it (``num_classes=``), else
        ``kmeans.default_num_clusters(N)``. For a supplied head, C is its width; for
        supplied labels, this or max label + 1.
      gradient_head: the head the gradient is taken at, "zero" (W = 0: p = 1/C) or "fitted".
      gradient_dim: m, the most columns of the returned rows: rows wider than m (C·d' > m)
        are Kronecker-sketched to m_C·m_d ≤ m columns (``head_gradient_sketch``); narrower
        ones are returned exactly (width C·d').
      standardize_head_input: the head's input z is x standardised over the pool (the LP
        probe's geometry); False: x as given.
      head_intercept: append the constant 1 to z (the bias's gradient p − e joins the row).
      kmeans_steps: Lloyd updates at most.
      head_fit: training of a fitted head (k-means pseudo-labels or supplied labels):
        full-batch-ish Adam with a coupled L2 penalty (finite weights on separable clusters).
    """

    num_pseudo_classes: int | None = None
    gradient_head: str = "zero"
    gradient_dim: int = 512
    standardize_head_input: bool = True
    head_intercept: bool = True
    kmeans_steps: int = 100
    head_fit: LinearProbeConfig = LinearProbeConfig(learning_rate=1e-2, weight_decay=1e-2, epochs=30, batch_size=256, optimizer="adam")

    def __post_init__(self):
        if self.gradient_head not in HEADS:
            raise ValueError(f"gradient_head must be one of {HEADS}, got {self.gradient_head!r}")
        check_positive_int(self.num_pseudo_classes, "num_pseudo_classes", allow_none=True)
        if self.num_pseudo_classes is not None and self.num_pseudo_classes < 2:
            raise ValueError(f"num_pseudo_classes must be at least 2 (one class gives every sample the same label), got {self.num_pseudo_classes}")
        check_positive_int(self.gradient_dim, "gradient_dim")
        check_positive_int(self.kmeans_steps, "kmeans_steps")
        for name in ("standardize_head_input", "head_intercept"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


class PseudoLabelGradients(NamedTuple):
    """What `pseudo_label_gradients` returns."""

    features: Array  # [N, m] sketched gradient rows, or [N, C·d'] exact when C·d' ≤ m
    pseudo_labels: Array  # [N] int32 ỹ
    probabilities: Array  # [N, C] p at the head the gradient was taken at
    info: dict  # source, head, classes, dims, sketch shape, pseudo-class sizes


# ----------------------------------------------------------------- the rows


def head_gradient_rows(z: Array, labels: Array, probabilities: Array) -> Array:
    """Exact gradient rows (p_i − e_ỹi) ⊗ z_i: [N, C·d] float32 (formed; for C·d small).

    Args:
      z: [N, d] head inputs (with the intercept column if any).
      labels: [N] int pseudo-labels in [0, C).
      probabilities: [N, C] p_i.
    """
    residual = probabilities - jax.nn.one_hot(labels, probabilities.shape[1], dtype=jnp.float32)  # [N, C]
    return (residual[:, :, None] * z[:, None, :]).reshape(z.shape[0], -1)


def head_gradient_sketch(key: Array, num_classes: int, dim: int, gradient_dim: int) -> KroneckerSketch | None:
    """Γ_C ⊗ Γ_d for [C, d] gradients, or None when C·d ≤ m (the rows are then exact).

    Split: m_C = min(C, ⌊√m⌋), m_d = ⌊m / m_C⌋, so the class factor is kept whole while
    C ≤ √m, the feature factor gets the rest, and the width m_C·m_d ≤ m (= m when m_C
    divides m).
    """
    num_classes, dim, m = (check_positive_int(v, n) for v, n in ((num_classes, "num_classes"), (dim, "dim"), (gradient_dim, "gradient_dim")))
    if num_classes * dim <= m:
        return None
    m_c = min(num_classes, math.isqrt(m))
    return kronecker_sketch(key, (num_classes, dim), (m_c, m // m_c))


@jax.jit
def _sketched_rows(sketch: KroneckerSketch, z: Array, labels: Array, probabilities: Array) -> Array:
    residual = probabilities - jax.nn.one_hot(labels, probabilities.shape[1], dtype=jnp.float32)
    return sketch.apply_factors(residual[:, None, :], z[:, None, :])  # T = 1: one outer product per row


def sketch_head_gradients(sketch: KroneckerSketch | None, z: Array, labels: Array, probabilities: Array) -> Array:
    """``head_gradient_rows(z, labels, p) @ (Γ_C ⊗ Γ_d)`` without forming them: [N, m]
    (``sketch`` None: the exact rows)."""
    z = jnp.asarray(z, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    probabilities = jnp.asarray(probabilities, jnp.float32)
    if sketch is None:
        return head_gradient_rows(z, labels, probabilities)
    if sketch.shape != (probabilities.shape[1], z.shape[1]):
        raise ValueError(f"the sketch was built for [C, d] = {list(sketch.shape)} gradients, got C = {probabilities.shape[1]}, d = {z.shape[1]}")
    return _sketched_rows(sketch, z, labels, probabilities)


# ------------------------------------------------------------- the heads


def _softmax(z: Array, kernel: Array, bias: Array) -> Array:
    return jax.nn.softmax(jnp.matmul(z, kernel, precision=HIGHEST) + bias[None, :], axis=-1)


def _fit_head(key: Array, z: Array, labels: Array, num_classes: int, config: LinearProbeConfig) -> tuple[Array, Array]:
    """(kernel, bias) of a softmax head on the head inputs z, folded back from the
    probe's own standardisation so it acts on z directly."""
    fit = fit_linear_softmax(
        key, z, labels, jnp.float32(config.learning_rate), jnp.float32(config.weight_decay),
        num_classes=num_classes, epochs=config.epochs, batch_size=min(config.batch_size, z.shape[0]),
        optimizer_kind=config.optimizer,
    )  # fmt: skip
    probe = fit.probe  # f(z) = ((z − μ)/σ) W + b = z (W/σ) + (b − (μ/σ) W)
    kernel = probe.kernel / probe.scale[:, None]
    bias = probe.bias - jnp.matmul(probe.mean / probe.scale, probe.kernel, precision=HIGHEST)
    return kernel, bias


def _head_inputs(x: np.ndarray, config: PseudoLabelGradientConfig) -> Array:
    """z = standardised (or raw) x, without the intercept column."""
    x = jnp.asarray(x, jnp.float32)
    if config.standardize_head_input:
        mean, scale = standardization(x)
        x = (x - mean[None, :]) / scale[None, :]
    return x


def _with_intercept(z: Array, config: PseudoLabelGradientConfig) -> Array:
    return jnp.concatenate([z, jnp.ones((z.shape[0], 1), jnp.float32)], axis=1) if config.head_intercept else z


def pseudo_label_gradients(
    key: Array,
    x: Any,
    *,
    config: PseudoLabelGradientConfig = PseudoLabelGradientConfig(),
    num_classes: int | None = None,
    kernel: Any = None,
    bias: Any = None,
    labelled: tuple[Any, Any] | None = None,
) -> PseudoLabelGradients:
    """Pseudo-label gradient rows of a linear head for every sample of the pool.

    The source of the pseudo-labels is chosen by what is given: a head (``kernel``) →
    its predictions; ``labelled`` → a head fitted on those rows predicts the others (the
    labelled rows keep their labels); neither → k-means on the head inputs.

    Args:
      key: PRNG key: ``fold_in(key, 0)`` seeds k-means++, ``fold_in(key, 1)`` the sketch,
        ``fold_in(key, 2)`` a fitted head's minibatch order.
      x: [N, d] features (NumPy or jax).
      config: see ``PseudoLabelGradientConfig``.
      num_classes: C when known (the k of k-means when ``config.num_pseudo_classes`` is
        None; the number of classes of ``labelled``).
      kernel, bias: a supplied head, [d, C] and [C] (bias optional), acting on the head
        input z (standardised x unless ``config.standardize_head_input`` is False).
      labelled: (indices [L], labels [L]) of a few labelled rows.

    Returns:
      ``PseudoLabelGradients``; ``features`` is what ``select("skmm", key, features, n)``
      takes.

    Raises:
      ValueError: both a head and labels, k < 2 or k > N, a head whose shape does not
        match x, labels out of range or indices outside the pool.
    """
    x = check_rows(x, name="x")
    num, dim = int(x.shape[0]), int(x.shape[1])
    key = as_key(key)
    check_positive_int(num_classes, "num_classes", allow_none=True)
    if kernel is not None and labelled is not None:
        raise ValueError("give either a head (kernel=) or labelled rows (labelled=), not both: each is a source of pseudo-labels")
    if bias is not None and kernel is None:
        raise ValueError("bias= needs kernel= (the head's [d, C] weights)")
    z = _head_inputs(x, config)
    head_kernel = head_bias = None
    if kernel is not None:
        source = "head"
        head_kernel = jnp.asarray(kernel, jnp.float32)
        if head_kernel.ndim != 2 or head_kernel.shape[0] != dim or head_kernel.shape[1] < 2:
            raise ValueError(f"kernel must be [d, C] = [{dim}, C] with C ≥ 2 (one column per class, acting on x's {dim} features), got shape {tuple(head_kernel.shape)}")
        classes = int(head_kernel.shape[1])
        head_bias = jnp.zeros((classes,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)
        if head_bias.shape != (classes,):
            raise ValueError(f"bias must be [C] = [{classes}] (the kernel's width), got shape {tuple(head_bias.shape)}")
        labels = jnp.argmax(_softmax(z, head_kernel, head_bias), axis=1).astype(jnp.int32)
    elif labelled is not None:
        source = "labels"
        indices, targets = (np.asarray(a) for a in labelled)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or indices.size == 0:
            raise ValueError(f"labelled indices must be a non-empty 1-D integer array, got dtype {indices.dtype} shape {indices.shape}")
        if indices.min() < 0 or indices.max() >= num or len(np.unique(indices)) != indices.size:
            raise ValueError(f"labelled indices must be distinct rows of the pool, in [0, {num}), got range [{indices.min()}, {indices.max()}]")
        classes = num_classes or config.num_pseudo_classes
        targets = check_labels(targets, indices.size, num_classes=classes, min_classes=2, name="labelled labels")
        classes = classes or int(targets.max()) + 1
        head_kernel, head_bias = _fit_head(jax.random.fold_in(key, 2), z[indices], jnp.asarray(targets), classes, config.head_fit)
        predicted = jnp.argmax(_softmax(z, head_kernel, head_bias), axis=1).astype(jnp.int32)
        labels = predicted.at[jnp.asarray(indices)].set(jnp.asarray(targets))
    else:
        source = "kmeans"
        classes = config.num_pseudo_classes or default_num_clusters(num, num_classes)
        if classes < 2:
            raise ValueError(f"k-means pseudo-labels need k ≥ 2 clusters, got num_classes={classes}")
        labels = kmeans(jax.random.fold_in(key, 0), z, classes, max_steps=config.kmeans_steps).labels
        if config.gradient_head == "fitted":
            head_kernel, head_bias = _fit_head(jax.random.fold_in(key, 2), z, labels, classes, config.head_fit)
    if config.gradient_head == "zero":
        probabilities = jnp.full((num, classes), 1.0 / classes, jnp.float32)
    else:
        probabilities = _softmax(z, head_kernel, head_bias)
    rows_in = _with_intercept(z, config)
    sketch = head_gradient_sketch(jax.random.fold_in(key, 1), classes, int(rows_in.shape[1]), config.gradient_dim)
    features = sketch_head_gradients(sketch, rows_in, labels, probabilities)
    sizes = np.bincount(np.asarray(labels), minlength=classes)
    info = {
        "source": source,
        "head": config.gradient_head,
        "classes": classes,
        "head_input_dim": int(rows_in.shape[1]),
        "gradient_dim": classes * int(rows_in.shape[1]),
        "width": int(features.shape[1]),
        "sketch": None if sketch is None else [sketch.left.out_dim, sketch.right.out_dim],
        "pseudo_class_sizes": [int(s) for s in sizes],
    }
    return PseudoLabelGradients(features, labels, probabilities, info)
