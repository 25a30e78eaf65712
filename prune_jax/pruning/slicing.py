"""Keep sets and physical slicing: scores → indices to keep → smaller kernels.

Units are the inner channels of a depth-2 unit, so removing unit j slices the first
maps' output axis and the second map's input axis:
  - query head n: q_kernel[:, n], o_kernel[n] (and q_bias[n]); a KV group g also takes
    k_kernel[:, g], v_kernel[:, g] (and their biases);
  - FFN channel j: gate_kernel[:, j], up_kernel[:, j], down_kernel[j] (and gate/up biases).
With grouped-query attention, query head n reads KV group n // G (G = N / K): a keep set
either removes the same number of query heads from every group ("per-group", k/v
untouched) or whole groups with their query heads ("kv-groups"), so N' stays a multiple
of K' and the result loads as a standard LlamaConfig.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.models.llama.sharding import replace_param


def keep_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Sorted indices of the ``keep`` largest scores (ties to the lower index)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return np.sort(order[:keep])


def keep_heads_per_group(scores: np.ndarray, kv_heads: int, remove_per_group: int) -> np.ndarray:
    """Query heads to keep when every KV group loses the same number of its query heads
    (GQA shapes stay valid: N' = K · (G − r)). Sorted global head indices."""
    groups = np.asarray(scores).reshape(kv_heads, -1)  # head n = k·G + g
    size = groups.shape[1]
    keep = []
    for k in range(kv_heads):
        keep.extend(k * size + keep_top(groups[k], size - remove_per_group))
    return np.asarray(sorted(keep))


def head_keep_set(scores: np.ndarray, kv_heads: int, cut: int, head_mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(query heads to keep, KV groups to keep or None) after removing ``cut`` query heads
    per group ("per-group") or ``cut`` whole KV groups, scored by the sum of their query
    heads' scores ("kv-groups")."""
    if head_mode == "per-group":
        return keep_heads_per_group(scores, kv_heads, cut), None
    group = len(scores) // kv_heads
    keep_groups = keep_top(np.asarray(scores).reshape(kv_heads, group).sum(axis=1), kv_heads - cut)
    return heads_of_groups(keep_groups, group), keep_groups


def heads_of_groups(groups: np.ndarray, group: int) -> np.ndarray:
    """Query heads of KV groups ``groups`` (head n = k·G + g reads group k), in order."""
    return np.concatenate([k * group + np.arange(group) for k in groups])


def slice_heads(attn, keep_heads: np.ndarray, keep_groups: np.ndarray | None = None) -> None:
    """Keeps query heads ``keep_heads`` (and KV groups ``keep_groups``) physically."""
    idx = jnp.asarray(keep_heads)
    replace_param(attn, "q_kernel", attn.q_kernel[...][:, idx, :])
    replace_param(attn, "o_kernel", attn.o_kernel[...][idx])
    if attn.q_bias is not None:
        replace_param(attn, "q_bias", attn.q_bias[...][idx])
    if keep_groups is not None:
        gidx = jnp.asarray(keep_groups)
        replace_param(attn, "k_kernel", attn.k_kernel[...][:, gidx, :])
        replace_param(attn, "v_kernel", attn.v_kernel[...][:, gidx, :])
        if attn.k_bias is not None:
            replace_param(attn, "k_bias", attn.k_bias[...][gidx])
            replace_param(attn, "v_bias", attn.v_bias[...][gidx])


def slice_channels(mlp, keep: np.ndarray) -> None:
    """Keeps FFN channels ``keep``: columns of gate/up kernels, rows of down."""
    idx = jnp.asarray(keep)
    replace_param(mlp, "gate_kernel", mlp.gate_kernel[...][:, idx])
    replace_param(mlp, "up_kernel", mlp.up_kernel[...][:, idx])
    replace_param(mlp, "down_kernel", mlp.down_kernel[...][idx])
    if mlp.gate_bias is not None:
        replace_param(mlp, "gate_bias", mlp.gate_bias[...][idx])
        replace_param(mlp, "up_bias", mlp.up_bias[...][idx])


def add_zero_biases(model, attention: bool, mlp: bool) -> None:
    """Adds zero biases where the model has none (HF's attention_bias / mlp_bias cover
    all projections), so bias compensation and intercept refits have a place to go.

    The attributes were None (static in NNX), hence ``nnx.data`` to make them parameters.
    """
    for block in model.layers:
        a, m = block.attn, block.mlp
        if attention and a.o_bias is None:
            dtype = a.o_kernel[...].dtype
            a.q_bias = nnx.data(nnx.Param(jnp.zeros(a.q_kernel[...].shape[1:], dtype)))
            a.k_bias = nnx.data(nnx.Param(jnp.zeros(a.k_kernel[...].shape[1:], dtype)))
            a.v_bias = nnx.data(nnx.Param(jnp.zeros(a.v_kernel[...].shape[1:], dtype)))
            a.o_bias = nnx.data(nnx.Param(jnp.zeros(a.o_kernel[...].shape[-1:], dtype)))
        if mlp and m.down_bias is None:
            dtype = m.down_kernel[...].dtype
            m.gate_bias = nnx.data(nnx.Param(jnp.zeros(m.gate_kernel[...].shape[1:], dtype)))
            m.up_bias = nnx.data(nnx.Param(jnp.zeros(m.up_kernel[...].shape[1:], dtype)))
            m.down_bias = nnx.data(nnx.Param(jnp.zeros(m.down_kernel[...].shape[1:], dtype)))
    model.config = dataclasses.replace(model.config, attention_bias=model.config.attention_bias or attention,
                                       mlp_bias=model.config.mlp_bias or mlp)


def record_widths(model) -> None:
    """Writes the per-layer widths read from the kernels into ``model.config`` (so the
    model exports; stock-transformers-loadable when they are uniform)."""
    heads = tuple((int(b.attn.q_kernel[...].shape[1]), int(b.attn.k_kernel[...].shape[1])) for b in model.layers)
    channels = tuple(int(b.mlp.down_kernel[...].shape[0]) for b in model.layers)
    model.config = dataclasses.replace(model.config, layer_heads=heads, layer_intermediate=channels)
