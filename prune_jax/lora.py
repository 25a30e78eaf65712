"""Trainable subsets of our LLaMA for finetuning and for SkMM's per-sample gradients.

Two choices of trainable parameters θ, both as pure pytrees next to the frozen state:

* **LoRA** (``init_lora``): every target kernel W [a, b] (read as a matrix by
  ``kernel_inputs``) gets factors A [a, r] ~ N(0, 1/a), B [r, b] = 0 and the layer
  computes x W + (α/r) · x A B (``skmm_jax.common.kernels.LoraKernel``). Targets default to
  q, v, o, gate, up, down in every block (k is left out: it shares q's role in the
  scores and is the smallest gain per parameter); ``LORA_TARGETS`` names them.
* **the last k blocks** (``last_blocks``): every parameter of blocks L−k … L−1.

``lm_loss(kind, graphdef)`` is the one-sample next-token loss
``loss(trainable, tokens [T], frozen_state)``, hashable (jit-cache friendly), for
``skmm_jax.gradients.sketch_per_sample_grads`` and for the finetuning step. With a
``make_pytree_sketch("kronecker", ..., split=kernel_inputs)`` sketch and
``factored=True`` every kernel-shaped leaf (the LoRA factors, the blocks' kernels) is
sketched from its layer's inputs and output gradients (no [B, r] gradient), the norm
scales by the flat path: device memory per sample is O(T · widths), independent of r.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from prune_jax.models.llama.modeling import Llama, kernel_inputs
from skmm_jax.common.checks import as_key
from skmm_jax.common.kernels import LoraKernel, lora_factors
from skmm_jax.common.pytree import Array
from skmm_jax.gradients import merge_params, partition_params

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
DEFAULT_LORA_TARGETS = ("q", "v", "o", "gate", "up", "down")
TRAINABLE_KINDS = ("lora", "blocks")

__all__ = ["DEFAULT_LORA_TARGETS", "LORA_TARGETS", "TRAINABLE_KINDS", "init_lora", "last_blocks", "lm_loss", "lora_state", "trainable_size"]


def _path(path: Any) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _kernel_name(path: str) -> str | None:
    """"layers/3/attn/q_kernel/value" → "q"; None for anything that is not a block kernel."""
    parts = path.removesuffix("/value").split("/")
    if len(parts) < 3 or parts[0] != "layers" or not parts[-1].endswith("_kernel"):
        return None
    return parts[-1].removesuffix("_kernel")


def _check_layers(model: Llama, layers: Sequence[int] | None) -> tuple[int, ...]:
    total = model.config.num_layers
    if layers is None:
        return tuple(range(total))
    layers = tuple(int(i) for i in layers)
    bad = [i for i in layers if not 0 <= i < total]
    if bad or not layers:
        raise ValueError(f"layers {list(layers)} must be a non-empty subset of [0, {total})")
    return layers


def init_lora(
    model: Llama,
    key: Array,
    rank: int = 8,
    *,
    targets: Sequence[str] = DEFAULT_LORA_TARGETS,
    layers: Sequence[int] | None = None,
) -> dict[str, dict[str, Array]]:
    """LoRA factors {kernel path: {"a": A [a, r], "b": B [r, b]}}, B = 0 (float32).

    Args:
      model: the base model (its kernels give a, b).
      key: PRNG key; kernel i (in path order) uses ``fold_in(key, i)``.
      rank: r, at most the smaller side of every target kernel.
      targets: kernel names among ``LORA_TARGETS``.
      layers: block indices (default: all).
    """
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ValueError(f"LoRA targets {list(targets)}: choose a non-empty subset of {LORA_TARGETS}")
    layers = set(_check_layers(model, layers))
    key = as_key(key)
    factors: dict[str, dict[str, Array]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
        name = _path(path)
        kind = _kernel_name(name)
        if kind not in targets or int(name.split("/")[1]) not in layers:
            continue
        kernel = name.removesuffix("/value")
        a, b = lora_factors(jax.random.fold_in(key, len(factors)), tuple(leaf.shape), rank, n_in=kernel_inputs(kernel, leaf.shape))
        factors[kernel] = {"a": a, "b": b}
    return factors


def lora_state(state: Any, factors: dict[str, dict[str, Any]], scale: float) -> Any:
    """``state`` with every kernel named in ``factors`` wrapped as a ``LoraKernel``."""
    seen = set()

    def wrap(path: Any, leaf: Any) -> Any:
        kernel = _path(path).removesuffix("/value")
        if kernel not in factors:
            return leaf
        seen.add(kernel)
        f = factors[kernel]
        return LoraKernel(leaf, f["a"], f["b"], scale, kernel_inputs(kernel, leaf.shape))

    wrapped = jax.tree_util.tree_map_with_path(wrap, state)
    missing = sorted(set(factors) - seen)
    if missing:
        raise ValueError(f"LoRA factors name kernels the model does not have: {missing[:5]}")
    return wrapped


def last_blocks(model: Llama, k: int) -> tuple[Any, Any]:
    """(trainable, frozen) partition of ``nnx.state(model)``: all of blocks L−k … L−1."""
    total = model.config.num_layers
    if not isinstance(k, int) or not 1 <= k <= total:
        raise ValueError(f"last_blocks: k must be an int in [1, {total}], got {k!r}")
    first = total - k

    def trainable(path: str, _leaf: Any) -> bool:
        parts = path.split("/")
        return parts[0] == "layers" and int(parts[1]) >= first

    return partition_params(nnx.state(model), trainable)


def trainable_size(trainable: Any) -> int:
    """r: the number of trainable scalars."""
    return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(trainable))


@dataclasses.dataclass(frozen=True)
class _LMLoss:
    """Mean next-token NLL of ONE token row; hashable by (kind, graphdef, LoRA scale)."""

    kind: str
    graphdef: Any
    scale: float

    def __call__(self, trainable: Any, tokens: Array, frozen: Any) -> Array:
        if self.kind == "lora":
            state = lora_state(frozen, trainable, self.scale)
        else:
            state = merge_params(trainable, frozen)
        model: Llama = nnx.merge(self.graphdef, state)
        return jnp.mean(model.token_nll(tokens[None])[0])


def lm_loss(kind: str, graphdef: Any, *, scale: float = 2.0) -> _LMLoss:
    """``loss(trainable, tokens [T], frozen_state) -> scalar``, the mean next-token NLL.

    Args:
      kind: "lora" (trainable = ``init_lora`` factors, frozen = ``nnx.state(model)``)
        or "blocks" (trainable, frozen = ``last_blocks(model, k)``).
      graphdef: ``nnx.graphdef(model)``.
      scale: LoRA's α / r (LoRA only).
    """
    if kind not in TRAINABLE_KINDS:
        raise ValueError(f"unknown trainable kind {kind!r}; choose one of {TRAINABLE_KINDS}")
    return _LMLoss(kind, graphdef, float(scale))
