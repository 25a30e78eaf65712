"""SkMM step 1: per-sample gradients at θ0, sketched as they are produced.

In the kernel (linearised) regime a finetuned model is its first-order expansion
around the pretrained parameters θ0 ∈ R^r,

    f(x; θ) ≈ f(x; θ0) + ∇_θ f(x; θ0)ᵀ (θ − θ0),

so what a training sample contributes is its gradient at θ0. Stacking one
per-sample gradient g_i = ∇_θ ℓ(x_i; θ0) ∈ R^r per row gives G ∈ R^{N×r}, and the
selection steps only ever need it through a Johnson–Lindenstrauss sketch

    G̃ = G Γ ∈ R^{N×m},    Γ ∈ R^{r×m},  m ≪ r,

which preserves the norms and inner products of the rows (and, for m = O(k/ε²),
of a whole k-dimensional subspace) up to 1 ± ε. With r in the millions G is far
too large to hold (N·r floats), so it is never formed: the samples are processed
``chunk_size`` at a time, each chunk's per-sample gradients are computed by
``jax.vmap(jax.grad(loss))`` and immediately multiplied by the SAME Γ (one sketch
object for every chunk), and only the [chunk, m] result leaves the device. Row i
of G̃ depends only on sample i and Γ, so the chunking does not change the result,

    G̃[rows of chunk c] = G[rows of chunk c] Γ,

and memory is O(chunk_size · r) on the device for the gradient chunk plus
O(N · m) on the host for G̃.

Which gradient: for a classification head, the label-free choices here are
``labelled_loss`` with ``pseudo_labels`` (uniform random ỹ; for a linear head the
gradient is (softmax(f) − e_ỹ) ⊗ x, the LP/FT choice) and
``jacobian_sketch_loss`` with ``rademacher_weights`` (Σ_c w_c f_c(x), whose
gradient Σ_c w_c ∇f_c(x) is a random projection of the per-sample Jacobian).

Conventions (as in ``skmm_jax.sketch.stream``): one module-level jitted per-chunk
function, taking the sketch, the parameters and the chunk as arguments (never
closed over), so repeated calls hit the compile cache; the chunks are streamed by
``skmm_jax.common.streaming.stream_chunks`` (the last chunk padded to the common size, so
there is exactly one compilation; the next chunk dispatched before the previous
result is pulled back); non-finite samples are reported by index and nothing
partial is returned.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from skmm_jax.common.checks import as_key
from skmm_jax.common.gram import add_to
from skmm_jax.common.kernels import LoraKernel, ProbedKernel
from skmm_jax.common.pytree import Array
from skmm_jax.common.streaming import Progress, check_chunk_size, pad_leading, stream_chunks
from skmm_jax.sketch.base import Sketch
from skmm_jax.sketch.kronecker import KroneckerSketch
from skmm_jax.sketch.pytree import PytreeSketch

LOSS_KINDS = ("cross_entropy", "squared")


# --------------------------------------------------------------------------- core


def _call_loss(loss_fn: Callable, params: Any, sample: Any, frozen: Any) -> Array:
    # ``frozen is None`` is decided at trace time (None is an empty pytree, not a
    # tracer), so a 2-argument loss never sees a third argument.
    if frozen is None:
        return loss_fn(params, sample)
    return loss_fn(params, sample, frozen)


def per_sample_grads(loss_fn: Callable, params: Any, batch: Any, *, frozen: Any = None) -> Any:
    """Gradient of ``loss_fn`` w.r.t. ``params`` for every sample of ``batch``.

    Args:
      loss_fn: ``loss_fn(params, sample) -> scalar`` (or
        ``loss_fn(params, sample, frozen)`` when ``frozen`` is given), where
        ``sample`` is ONE example: a pytree of arrays without the batch axis.
      params: pytree of floating arrays, the differentiated parameters θ0.
      batch: pytree of arrays with a leading batch axis B.
      frozen: optional pytree passed unchanged (not differentiated) to the loss.

    Returns:
      A pytree shaped like ``params`` whose leaves are [B, *leaf_shape].
    """
    if frozen is None:
        return jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, batch)
    return jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, None))(params, batch, frozen)


def _flatten_rows(tree: Any) -> Array:
    """[B, *leaf] leaves → [B, r] in ``jax.tree`` leaf order (``ravel_pytree``'s order).

    Leaves are cast to float32 before concatenating: every sketch computes in
    float32 anyway, and mixed dtypes (e.g. bf16 and f32 leaves) cannot be
    concatenated under strict dtype promotion.
    """
    leaves = jax.tree.leaves(tree)
    batch = leaves[0].shape[0]
    return jnp.concatenate([leaf.reshape(batch, -1).astype(jnp.float32) for leaf in leaves], axis=1)


def _rows_finite(tree: Any) -> Array:
    """[B] bool: every entry of sample b's leaves is finite."""
    ok = None
    for leaf in jax.tree.leaves(tree):
        leaf_ok = jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
        ok = leaf_ok if ok is None else ok & leaf_ok
    return ok


def _kernel_inputs(shape: tuple[int, ...], rows: int) -> int:
    """n_in such that the leading n_in axes of ``shape`` hold ``rows`` entries."""
    for n_in in range(1, len(shape)):
        if math.prod(shape[:n_in]) == rows:
            return n_in
    raise ValueError(f"a Kronecker sketch with {rows} rows does not split a kernel of shape {shape}")


def _probe_leaves(sketch: PytreeSketch, params: Any) -> tuple[list, Any, list]:
    """Leaves of ``params``, its treedef, and per leaf its Kronecker sketch (or None)."""
    leaves = sketch.treedef.flatten_up_to(params)
    kron = [s if isinstance(s, KroneckerSketch) and len(shape) >= 2 else None for s, shape in zip(sketch.leaves, sketch.leaf_shapes)]
    return leaves, sketch.treedef, kron


def _factored_value_and_grads(loss_fn: Callable, sketch: PytreeSketch, params: Any, frozen: Any, chunk: Any) -> tuple[Array, Array, list]:
    """Per-sample losses [B] and G̃ [B, m] with every Kronecker-sketched kernel probed.

    Kernel leaf W_l is replaced by ``ProbedKernel(W_l, Γ_a, E_l = 0, Γ_b)``; the loss is
    differentiated with respect to the cores E_l (whose gradient is the leaf's Kronecker
    sketch, see ``skmm_jax.common.kernels``) and the remaining leaves (sketched flat).
    """
    leaves, treedef, kron = _probe_leaves(sketch, params)
    factors = [None if s is None else (s.left.matrix(), s.right.matrix()) for s in kron]
    diff = [leaf if f is None else jnp.zeros((f[0].shape[1], f[1].shape[1]), jnp.float32) for leaf, f in zip(leaves, factors)]

    def rebuild(diff_leaves: list) -> Any:
        out = []
        for leaf, d, f in zip(leaves, diff_leaves, factors):
            if f is None:
                out.append(d)
            else:
                n_in = _kernel_inputs(tuple(leaf.shape), f[0].shape[0])
                out.append(ProbedKernel(jax.lax.stop_gradient(leaf), f[0], d, f[1], n_in))
        return jax.tree.unflatten(treedef, out)

    def one(sample: Any) -> tuple[Array, list]:
        return jax.value_and_grad(lambda d: _call_loss(loss_fn, rebuild(d), sample, frozen))(diff)

    losses, grads = jax.vmap(one)(chunk)
    batch = losses.shape[0]
    sketched = None
    for g, s, f in zip(grads, sketch.leaves, factors):
        part = g.reshape(batch, -1).astype(jnp.float32) if f is not None else s(g.reshape(batch, -1))
        sketched = add_to(sketched, part)
    return losses, sketched, grads


def _sketch_chunk_impl(loss_fn: Callable, factored: bool, sketch: Any, params: Any, frozen: Any, chunk: Any) -> tuple[Array, Array]:
    """One chunk: per-sample (loss, gradient) → sketched rows [B, m] and a [B] finiteness mask."""
    if factored:
        losses, sketched, grads = _factored_value_and_grads(loss_fn, sketch, params, frozen, chunk)
    else:

        def one(sample: Any) -> tuple[Array, Any]:
            return jax.value_and_grad(lambda p: _call_loss(loss_fn, p, sample, frozen))(params)

        losses, grads = jax.vmap(one)(chunk)  # [B], tree of [B, *leaf]
        if isinstance(sketch, PytreeSketch):
            sketched = sketch(grads)  # leaf by leaf, no [B, r] concatenation
        else:
            sketched = sketch(_flatten_rows(grads))
    sketched = sketched.astype(jnp.float32)
    # Checked on the gradients themselves, not only on the sketched rows: a sparse
    # sketch can in principle cancel inf − inf into NaN but a NaN loss with a finite
    # gradient would pass through unnoticed; this mask costs one pass over the chunk.
    ok = jnp.isfinite(losses) & _rows_finite(grads) & jnp.all(jnp.isfinite(sketched), axis=1)
    return sketched, ok


# One jitted entry point for every call. ``loss_fn`` is static (hashed into the cache
# key: the loss helpers below return value-hashable objects, so rebuilding the same
# loss does not recompile); sketch, params, frozen and the chunk are pytree arguments.
_sketch_chunk = jax.jit(_sketch_chunk_impl, static_argnums=(0, 1))

# Rows of a device-resident leaf, gathered on the device (no host round trip): the
# chunk's row indices are padded like any host leaf, by repeating the last one.
_take_rows = jax.jit(lambda leaf, idx: jnp.take(leaf, idx, axis=0, mode="clip"))


def _data_leaves(data: Any) -> tuple[list, Any, int]:
    leaves, treedef = jax.tree.flatten(data)
    if not leaves:
        raise ValueError("data has no arrays")
    leaves = [leaf if hasattr(leaf, "shape") and hasattr(leaf, "dtype") else np.asarray(leaf) for leaf in leaves]
    for index, leaf in enumerate(leaves):
        if leaf.ndim == 0:
            raise ValueError(f"data leaf {index} is a scalar; every leaf needs a leading sample axis N")
    sizes = {int(leaf.shape[0]) for leaf in leaves}
    if len(sizes) != 1:
        shapes = [tuple(leaf.shape) for leaf in leaves]
        raise ValueError(f"data leaves disagree on the number of samples (leading axis): shapes {shapes}")
    n = sizes.pop()
    if n == 0:
        raise ValueError("data has no samples (N = 0)")
    return leaves, treedef, n


def sketch_per_sample_grads(
    loss_fn: Callable,
    params: Any,
    data: Any,
    sketch: Sketch | PytreeSketch,
    *,
    frozen: Any = None,
    chunk_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
    progress: Progress | None = None,
    out: np.ndarray | None = None,
    start_row: int = 0,
    factored: bool = False,
) -> np.ndarray:
    """Returns G̃ = G Γ [N, m] (float32, host) without ever holding G [N, r].

    Args:
      loss_fn: ``loss_fn(params, sample) -> scalar`` for one sample, or
        ``loss_fn(params, sample, frozen)`` when ``frozen`` is given. Static under
        jit: it must be hashable, and the same object (or an equal one) on
        repeated calls to reuse the compilation.
      params: pytree of floating arrays θ0, the r differentiated parameters.
      data: pytree of arrays with leading axis N (NumPy arrays, memmaps or jax
        arrays), e.g. ``(x [N, d], y [N])``; row i of every leaf is sample i.
      sketch: a ``PytreeSketch`` built for the gradient tree (e.g.
        ``make_pytree_sketch(kind, key, params, m)``), applied leaf by leaf; or any
        flat ``Sketch`` with ``in_dim == r``, applied to each gradient ravelled in
        ``jax.tree`` leaf order (as ``jax.flatten_util.ravel_pytree`` does).
        The same Γ is used for every chunk.
      frozen: optional pytree of non-differentiated parameters/state, passed as the
        loss's third argument (see ``partition_params``, ``nnx_apply``).
      chunk_size: samples per device step; device memory is O(chunk_size · r).
        With a mesh it is rounded up to a multiple of the axis size.
      mesh: optional ``jax.sharding.Mesh``; each chunk is sharded over its ``axis``
        (``NamedSharding(mesh, P(axis))``), params/frozen/sketch are replicated,
        and jit's SPMD partitioning splits the per-sample work. Same result as
        one device.
      axis: the mesh axis the samples are sharded over.
      progress: optional callback ``(samples_done, samples_total)`` after each chunk.
      out: optional preallocated float32 [N, m] array to write the rows into — e.g.
        ``np.lib.format.open_memmap(path, "w+", np.float32, (N, m))`` for pools whose
        sketches do not fit in memory; each chunk's rows are written as it finishes.
      start_row: resume an interrupted run: rows [0, start_row) of ``out`` are taken
        as done and only samples from ``start_row`` on are evaluated (needs ``out``).
      factored: compute the Kronecker-sketched leaves of a ``make_pytree_sketch(
        "kronecker", ...)`` sketch from the layers' inputs and output gradients
        (``skmm_jax.common.kernels.ProbedKernel``), never forming a per-sample kernel
        gradient: device memory per sample no longer grows with the kernels' size r,
        only with the activations. The loss must apply every such kernel with
        ``skmm_jax.common.kernels.project`` (or ``contract``); the result equals the
        unfactored call with the same sketch up to float rounding.

    Returns:
      float32 NumPy array [N, m] (``out`` when given); row i is g_i Γ with
      g_i = ∇_θ loss(θ0; sample i).

    Raises:
      ValueError: inconsistent data, a sketch of the wrong size, a bad mesh axis,
        or a loss/gradient that is NaN/inf at θ0 for some sample (named by index;
        nothing partial is returned).
    """
    if not isinstance(sketch, (Sketch, PytreeSketch)):
        raise TypeError(f"sketch must be a Sketch or PytreeSketch, got {type(sketch).__name__}")
    if factored and not (isinstance(sketch, PytreeSketch) and any(isinstance(s, KroneckerSketch) for s in sketch.leaves)):
        raise ValueError('factored=True needs a pytree sketch with Kronecker leaves: make_pytree_sketch("kronecker", key, params, m)')
    chunk_size = check_chunk_size(chunk_size)
    param_leaves = jax.tree.leaves(params)
    if not param_leaves:
        raise ValueError("params has no arrays to differentiate")
    r = sum(int(np.prod(np.shape(leaf))) for leaf in param_leaves)
    if sketch.in_dim != r:
        raise ValueError(f"the sketch was built for r = {sketch.in_dim} gradient entries, params have r = {r}")
    leaves, treedef, n = _data_leaves(data)

    size = min(chunk_size, n)
    if mesh is None:
        chunk_sharding = None
        params, frozen, sketch = jax.device_put((params, frozen, sketch))  # once, not per chunk
    else:
        if axis not in mesh.axis_names:
            raise ValueError(f"mesh has axes {mesh.axis_names}; no axis named {axis!r} to shard samples over")
        shards = int(mesh.shape[axis])
        size = -(-size // shards) * shards  # every device gets the same number of samples
        chunk_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        params, frozen, sketch = jax.device_put((params, frozen, sketch), replicated)

    if out is None:
        if start_row:
            raise ValueError("start_row needs out=: the rows before it must already be there")
        out = np.empty((n, sketch.out_dim), np.float32)
    elif out.shape != (n, sketch.out_dim) or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 [{n}, {sketch.out_dim}] array, got {out.dtype} {out.shape}")
    if not 0 <= start_row <= n:
        raise ValueError(f"start_row must lie in [0, {n}], got {start_row}")

    on_device = [isinstance(leaf, jax.Array) for leaf in leaves]

    def load(start: int, stop: int) -> list:
        # Host leaves: their rows (only these rows of a memmap are read); device-resident
        # leaves: the row indices, gathered on the device in `apply`.
        start, stop = start_row + start, start_row + stop
        return [np.arange(start, stop, dtype=np.int32) if dev else np.asarray(leaf[start:stop]) for leaf, dev in zip(leaves, on_device)]

    def apply(chunk: list) -> tuple[Array, Array]:
        # Every chunk gets the shape `size` of a fresh run (with a mesh, a multiple of the
        # shard count; a resumed run's chunks too): one compilation. Padding repeats the
        # last sample, a valid input whose results are dropped.
        chunk = pad_leading(chunk, size)
        chunk = [_take_rows(leaf, piece) if dev else piece for leaf, dev, piece in zip(leaves, on_device, chunk)]
        chunk = jax.device_put(chunk, chunk_sharding) if chunk_sharding is not None else jax.device_put(chunk)
        return _sketch_chunk(loss_fn, factored, sketch, params, frozen, jax.tree.unflatten(treedef, chunk))

    def finish(start: int, stop: int, result: tuple[np.ndarray, np.ndarray]) -> None:
        sketched, ok = result
        start, stop = start_row + start, start_row + stop
        if not ok.all():
            idx = (np.flatnonzero(~ok) + start).tolist()
            more = " …" if len(idx) > 10 else ""
            raise ValueError(
                f"the loss or its gradient is NaN/inf at θ0 for samples {idx[:10]}{more}"
                f" (checked up to sample {stop - 1}; later samples were not evaluated)"
            )
        out[start:stop] = sketched

    if start_row < n:
        stream_chunks(
            apply, load, finish, n - start_row, size,
            progress=None if progress is None else lambda done, total: progress(start_row + done, n),
        )  # fmt: skip
    return out


# --------------------------------------------------------------- parameter subsets


def _path_str(path: Any) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def partition_params(params: Any, trainable: Callable[[str, Any], bool]) -> tuple[Any, Any]:
    """Splits ``params`` into the differentiated subset and the rest.

    Scheme: both outputs have the structure of ``params``; a leaf that is not in a
    tree is ``None`` there (an empty pytree node, so ``jax.grad``, the sketches and
    ``jax.tree.leaves`` skip it). Build a ``PytreeSketch`` from the trainable tree,
    and write the loss as ``loss(trainable, sample, frozen)`` calling the model with
    ``merge_params(trainable, frozen)``.

    Args:
      params: pytree of arrays.
      trainable: ``trainable(path, leaf) -> bool`` where ``path`` is the leaf's key
        path joined by "/" (``jax.tree_util.keystr(path, simple=True,
        separator="/")``), e.g. ``"layers/1/w"`` for ``{"layers": [.., {"w": ..}]}``
        (an NNX ``State`` leaf reads ``"head/kernel/value"``).

    Returns:
      ``(trainable_tree, frozen_tree)``.
    """
    picked = jax.tree_util.tree_map_with_path(lambda p, x: bool(trainable(_path_str(p), x)), params)
    train = jax.tree.map(lambda keep, x: x if keep else None, picked, params)
    rest = jax.tree.map(lambda keep, x: None if keep else x, picked, params)
    return train, rest


def merge_params(trainable: Any, frozen: Any) -> Any:
    """Inverse of ``partition_params``: each leaf from whichever tree holds it."""
    # A trainable kernel may arrive wrapped (``ProbedKernel``/``LoraKernel``): one leaf here.
    wrapped = lambda x: x is None or isinstance(x, (ProbedKernel, LoraKernel))  # noqa: E731
    return jax.tree.map(lambda a, b: b if a is None else a, trainable, frozen, is_leaf=wrapped)


# ------------------------------------------------------------------- loss helpers


def _apply(apply_fn: Callable, params: Any, x: Any, frozen: Any) -> Array:
    return apply_fn(params, x) if frozen is None else apply_fn(params, x, frozen)


@dataclasses.dataclass(frozen=True)
class _LabelledLoss:
    """Value-hashable loss (so rebuilding it with the same apply_fn hits jit's cache)."""

    apply_fn: Callable
    kind: str

    def __call__(self, params: Any, sample: Any, frozen: Any = None) -> Array:
        x, y = sample
        logits = _apply(self.apply_fn, params, x, frozen)
        if self.kind == "cross_entropy":
            if not jnp.issubdtype(y.dtype, jnp.integer) or y.ndim != 0:
                raise TypeError(
                    f"cross_entropy loss expects one int label per sample, got dtype {y.dtype} shape {y.shape}"
                    " (for target vectors use kind='squared')"
                )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y)
        if y.shape != logits.shape:
            raise ValueError(f"squared loss: target shape {y.shape} differs from the output shape {logits.shape}")
        diff = logits - y.astype(logits.dtype)
        return 0.5 * jnp.sum(diff * diff)


def labelled_loss(apply_fn: Callable, kind: str = "cross_entropy") -> Callable:
    """Per-sample supervised loss of a head, ``loss_fn(params, (x, y), frozen=None)``.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits [C]`` for ONE sample, or
        ``apply_fn(params, x, frozen)`` (as returned by ``nnx_apply``); ``frozen``
        is forwarded only when the loss receives one.
      kind: "cross_entropy" (y an int label; softmax cross-entropy) or "squared"
        (y a target vector [C]; 0.5‖f(x) − y‖²).

    Returns:
      A hashable ``loss_fn(params, sample, frozen=None) -> scalar``.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; choose one of {LOSS_KINDS}")
    return _LabelledLoss(apply_fn, kind)


def pseudo_labels(key: Array, num_samples: int, num_classes: int) -> Array:
    """Uniform random labels ỹ_i ∈ [0, C), int32 [N], for ``labelled_loss``.

    With cross-entropy, ∇_f ℓ = softmax(f) − e_ỹ, so a linear head's gradient is
    (softmax(f(x)) − e_ỹ) ⊗ x: label-free, and random ỹ keeps the class directions
    represented in expectation.
    """
    return jax.random.randint(as_key(key), (num_samples,), 0, num_classes, dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class _JacobianSketchLoss:
    apply_fn: Callable

    def __call__(self, params: Any, sample: Any, frozen: Any = None) -> Array:
        x, w = sample
        out = _apply(self.apply_fn, params, x, frozen)
        if w.shape != out.shape:
            raise ValueError(f"jacobian sketch loss: weights shape {w.shape} differs from the output shape {out.shape}")
        return jnp.sum(w.astype(out.dtype) * out)


def jacobian_sketch_loss(apply_fn: Callable) -> Callable:
    """``loss_fn(params, (x, w), frozen=None) = Σ_c w_c f_c(x)`` for w ∈ {±1}^C.

    Its gradient Σ_c w_c ∇_θ f_c(x) = J(x)ᵀ w is a Rademacher projection of the
    per-sample Jacobian J(x) ∈ R^{C×r}: one gradient per sample carries, in
    expectation, the Gram information of all C output gradients
    (E[(Jᵀw)(Jᵀw)ᵀ] = JᵀJ). Draw w with ``rademacher_weights``.

    Args:
      apply_fn: as for ``labelled_loss``.
    """
    return _JacobianSketchLoss(apply_fn)


def rademacher_weights(key: Array, num_samples: int, num_classes: int) -> Array:
    """i.i.d. ±1 weights, float32 [N, C], for ``jacobian_sketch_loss``."""
    return jax.random.rademacher(as_key(key), (num_samples, num_classes), jnp.float32)


# ----------------------------------------------------------------------- flax NNX


@dataclasses.dataclass(frozen=True)
class _NNXApply:
    """``apply_fn(params, x, frozen)`` for a split NNX model; hashable by its graphdef."""

    graphdef: Any

    def __call__(self, params: Any, x: Any, frozen: Any) -> Any:
        from flax import nnx

        model = nnx.merge(self.graphdef, params, frozen)
        # NNX layers expect a batch: run one sample as a batch of one and drop it.
        out = model(jax.tree.map(lambda a: jnp.expand_dims(a, 0), x))
        return jax.tree.map(lambda a: a[0], out)


def nnx_apply(model: Any, wrt: Any = None) -> tuple[Callable, Any, Any]:
    """Splits a Flax NNX model into a pure one-sample apply function and its state.

    ``graphdef, params, frozen = nnx.split(model, wrt, ...)``: ``params`` holds the
    variables matching the filter ``wrt`` (differentiated), ``frozen`` everything
    else (other parameters, batch statistics, RNG state), held fixed. To finetune a
    subset, pass a narrower filter, e.g.
    ``nnx.All(nnx.Param, nnx.PathContains("head"))``.

    ``apply_fn(params, x, frozen)`` merges the state into a fresh model and calls it
    on ONE sample x (without batch axis): a batch axis of 1 is added to every leaf
    of x and removed from every leaf of the output. Put the model in eval mode
    (``model.eval()``) first if it has dropout or batch norm, since under ``vmap``
    each sample is its own batch of one. Any state the call mutates (e.g. batch
    statistics) is discarded.

    Args:
      model: an ``nnx.Module``.
      wrt: an NNX filter; default ``nnx.Param``.

    Returns:
      ``(apply_fn, params, frozen)``, for ``labelled_loss(apply_fn)`` and
      ``sketch_per_sample_grads(loss, params, data, sketch, frozen=frozen)``.
    """
    from flax import nnx  # imported here so the rest of the module does not need flax

    if wrt is None:
        wrt = nnx.Param
    graphdef, params, frozen = nnx.split(model, wrt, ...)
    return _NNXApply(graphdef), params, frozen


__all__ = [
    "LOSS_KINDS",
    "jacobian_sketch_loss",
    "labelled_loss",
    "merge_params",
    "nnx_apply",
    "partition_params",
    "per_sample_grads",
    "pseudo_labels",
    "rademacher_weights",
    "sketch_per_sample_grads",
]
