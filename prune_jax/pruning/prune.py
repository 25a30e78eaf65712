"""Structured pruning of a LLaMA block by block: calibrate → score → slice → recover.

Two calibration streams move through the model together, one block at a time (only
one block's activations for the calibration set are held):
  - dense stream: the original blocks on the original inputs — the targets Y;
  - pruned stream: the already pruned (and refit) blocks — the inputs X̂ the pruned
    model really sees, from which the unit statistics are taken.
Within a block: attention statistics → score and remove query heads (or whole KV
groups) → [recovery: refit o_proj to the dense attention output] → FFN statistics
on the pruned stream after the pruned attention → remove channels → [recovery: refit
down_proj to the dense MLP output] → run the pruned block.

Kernels are physically sliced: the result is a smaller model whose modules read their
new sizes from their kernels; ``model.config`` is updated with the per-layer widths
so the model exports (stock-transformers-loadable when widths are uniform).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.models.llama.modeling import Llama, rope_inverse_frequencies
from prune_jax.pruning.calibrate import attention_stats, mlp_stats
from prune_jax.pruning.recover import RIDGE_GRID, refit_linear
from prune_jax.pruning.scores import METHODS, ffn_channel_scores, head_scores, keep_heads_per_group, keep_top

HEAD_MODES = ("per-group", "kv-groups")
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    Attributes:
      method: unit score, one of ``scores.METHODS`` ("dap" = the paper's
        distribution-aware scores).
      sparsity: target fraction of the prunable parameters (attention + MLP weights
        of all blocks) to remove, in (0, 1); met by one per-layer ratio r over the
        layer range, the smallest r that reaches it (heads are coarse units, so the
        exact fraction is reported).
      attention_ratio, ffn_ratio: fixed per-layer ratios instead of the budget
        (0 disables that module).
      layer_range: blocks [start, stop) to prune; default the paper's [4, L − 2)
        (first and last blocks kept), clipped to the model.
      head_mode: "per-group" (the same number of query heads leaves every KV group;
        k/v untouched) or "kv-groups" (whole KV groups with their query heads).
      norm: "l2" or "l1" for the magnitude score.
      recover: refit o_proj and down_proj by ridge least squares to the dense outputs.
      bias_compensation: add W[:, pruned] · mean(x_pruned) to the output bias (FLAP);
        default on for "flap" only. Adds zero biases where the model has none.
      ridge_grid: λ candidates for recovery.
      batch_size: calibration sequences per forward step.
      seed: for "random" and nothing else.
    """

    method: str = "dap"
    sparsity: float = 0.2
    attention_ratio: float | None = None
    ffn_ratio: float | None = None
    layer_range: tuple[int, int] | None = None
    head_mode: str = "per-group"
    norm: str = "l2"
    recover: bool = False
    bias_compensation: bool | None = None
    ridge_grid: tuple[float, ...] = RIDGE_GRID
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (isinstance(self.sparsity, (int, float)) and 0.0 < self.sparsity < 1.0):
            raise ValueError(f"sparsity must lie in (0, 1), got {self.sparsity!r}")
        for name in ("attention_ratio", "ffn_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
        if self.head_mode not in HEAD_MODES:
            raise ValueError(f"head_mode must be one of {HEAD_MODES}, got {self.head_mode!r}")
        if self.norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {self.norm!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def compensate(self) -> bool:
        return self.method == "flap" if self.bias_compensation is None else self.bias_compensation


def default_layer_range(num_layers: int) -> tuple[int, int]:
    """The paper's [4, L − 2), shrunk for shallow models so it is never empty when L ≥ 3."""
    start, stop = min(4, max(1, num_layers // 4)), num_layers - min(2, max(1, num_layers // 8))
    return (start, stop) if start < stop else (0, num_layers)


def _layer_cuts(model: Llama, layer: int, attention_ratio: float, ffn_ratio: float, head_mode: str) -> tuple[int, int]:
    """(heads or KV groups to remove, FFN channels to remove) at one layer for given ratios."""
    block = model.layers[layer]
    heads, kv_heads = block.attn.q_kernel[...].shape[1], block.attn.k_kernel[...].shape[1]
    group = heads // kv_heads
    if head_mode == "per-group":
        head_cut = min(int(round(attention_ratio * group)), group - 1)
    else:
        head_cut = min(int(round(attention_ratio * kv_heads)), kv_heads - 1)
    channels = block.mlp.down_kernel[...].shape[0]
    return head_cut, min(int(round(ffn_ratio * channels)), channels - 1)


def _removed_parameters(model: Llama, layers: range, attention_ratio: float, ffn_ratio: float, head_mode: str) -> int:
    config = model.config
    dim, head_dim = config.hidden_size, config.head_dim
    removed = 0
    for layer in layers:
        head_cut, channel_cut = _layer_cuts(model, layer, attention_ratio, ffn_ratio, head_mode)
        heads, kv_heads = model.layers[layer].attn.q_kernel[...].shape[1], model.layers[layer].attn.k_kernel[...].shape[1]
        per_query_head = 2 * dim * head_dim + (head_dim if config.attention_bias else 0)
        if head_mode == "per-group":
            removed += head_cut * kv_heads * per_query_head
        else:
            removed += head_cut * ((heads // kv_heads) * per_query_head + 2 * dim * head_dim)
        removed += channel_cut * (3 * dim + (2 if config.mlp_bias else 0))
    return removed


def prunable_parameters(model: Llama) -> int:
    """Attention and MLP parameters of all blocks (what structured pruning can remove)."""
    total = 0
    for block in model.layers:
        for module in (block.attn, block.mlp):
            total += sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    return total


def _all_parameters(model: Llama) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def solve_ratio(model: Llama, layers: range, sparsity: float, head_mode: str) -> float:
    """Smallest common per-layer ratio r whose removal reaches ``sparsity`` of the
    prunable parameters (bisection; removal is a non-decreasing step function of r)."""
    target = sparsity * prunable_parameters(model)
    lo, hi = 0.0, 0.999
    if _removed_parameters(model, layers, hi, hi, head_mode) < target:
        raise ValueError(
            f"sparsity {sparsity} cannot be reached by pruning layers {layers.start}–{layers.stop - 1} only; "
            "widen the layer range or lower the sparsity"
        )
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if _removed_parameters(model, layers, mid, mid, head_mode) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def _ensure_biases(model: Llama, attention: bool, mlp: bool) -> None:
    """Adds zero biases (HF's attention_bias / mlp_bias cover all projections).

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


def _batched(fn: Callable, batch_size: int, *arrays: jax.Array) -> jax.Array:
    """fn over sequence chunks of the leading axis, concatenated."""
    outs = [fn(*(a[i : i + batch_size] for a in arrays)) for i in range(0, arrays[0].shape[0], batch_size)]
    return jnp.concatenate(outs, axis=0)


def slice_heads(attn, keep_heads: np.ndarray, keep_groups: np.ndarray | None = None) -> None:
    """Keeps query heads ``keep_heads`` (and KV groups ``keep_groups``) physically."""
    idx = jnp.asarray(keep_heads)
    attn.q_kernel = nnx.Param(attn.q_kernel[...][:, idx, :])
    attn.o_kernel = nnx.Param(attn.o_kernel[...][idx])
    if attn.q_bias is not None:
        attn.q_bias = nnx.Param(attn.q_bias[...][idx])
    if keep_groups is not None:
        gidx = jnp.asarray(keep_groups)
        attn.k_kernel = nnx.Param(attn.k_kernel[...][:, gidx, :])
        attn.v_kernel = nnx.Param(attn.v_kernel[...][:, gidx, :])
        if attn.k_bias is not None:
            attn.k_bias = nnx.Param(attn.k_bias[...][gidx])
            attn.v_bias = nnx.Param(attn.v_bias[...][gidx])


def slice_channels(mlp, keep: np.ndarray) -> None:
    """Keeps FFN channels ``keep``: columns of gate/up kernels, rows of down."""
    idx = jnp.asarray(keep)
    mlp.gate_kernel = nnx.Param(mlp.gate_kernel[...][:, idx])
    mlp.up_kernel = nnx.Param(mlp.up_kernel[...][:, idx])
    mlp.down_kernel = nnx.Param(mlp.down_kernel[...][idx])
    if mlp.gate_bias is not None:
        mlp.gate_bias = nnx.Param(mlp.gate_bias[...][idx])
        mlp.up_bias = nnx.Param(mlp.up_bias[...][idx])


def prune(
    model: Llama,
    calibration: np.ndarray,
    config: PruneConfig = PruneConfig(),
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
    progress: Progress | None = None,
) -> tuple[Llama, dict]:
    """Prunes ``model`` in place (its kernels are replaced by sliced ones) and returns it.

    Args:
      model: our LLaMA (float32 recommended for calibration).
      calibration: [S, T] int token sequences (e.g. ``prune_jax.data.calibration_batches``).
      config: see ``PruneConfig``.
      mesh: optional device mesh; calibration sequences are sharded over ``axis``
        (data parallel: statistics and Gram matrices are sums over tokens, which
        XLA all-reduces), the model is replicated. S must divide by the axis size.
      axis: mesh axis name for the sequences.
      progress: ``progress(blocks_done, num_blocks)``.

    Returns:
      (model, report) — the report records the method, options, per-layer widths,
      parameters before/after, fractions removed, recovery choices and timings.
    """
    calibration = np.asarray(calibration)
    if calibration.ndim != 2 or calibration.shape[0] < 1 or calibration.shape[1] < 2:
        raise ValueError(f"calibration must be [S >= 1, T >= 2] token sequences, got shape {calibration.shape}")
    if calibration.min() < 0 or calibration.max() >= model.config.vocab_size:
        raise ValueError(f"calibration token ids must lie in [0, {model.config.vocab_size})")
    start_time = time.perf_counter()
    num_layers = model.config.num_layers
    start, stop = config.layer_range or default_layer_range(num_layers)
    if not 0 <= start < stop <= num_layers:
        raise ValueError(f"layer_range must satisfy 0 <= start < stop <= {num_layers}, got ({start}, {stop})")
    layers = range(start, stop)
    if config.compensate:
        _ensure_biases(model, attention=True, mlp=True)
    params_before, prunable_before = _all_parameters(model), prunable_parameters(model)
    if config.attention_ratio is None and config.ffn_ratio is None:
        ratio = solve_ratio(model, layers, config.sparsity, config.head_mode)
        attention_ratio = ffn_ratio = ratio
    else:
        attention_ratio = config.attention_ratio or 0.0
        ffn_ratio = config.ffn_ratio or 0.0

    key = jax.random.key(config.seed)
    tokens = jnp.asarray(calibration, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :], tokens.shape)
    batch = config.batch_size
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        devices = mesh.shape[axis]
        if tokens.shape[0] % devices:
            raise ValueError(f"{tokens.shape[0]} calibration sequences do not divide over {devices} devices on mesh axis {axis!r}")
        sharding = NamedSharding(mesh, PartitionSpec(axis))
        tokens, positions = jax.device_put(tokens, sharding), jax.device_put(positions, sharding)
        batch = max(batch, tokens.shape[0])  # one step over all sequences: every device works on its shard
    inv_freq = jnp.asarray(rope_inverse_frequencies(model.config))
    h_dense = jnp.take(model.embed[...], tokens, axis=0).astype(jnp.float32)
    h_pruned = h_dense
    layer_reports = []
    for layer, block in enumerate(model.layers):
        attn, mlp = block.attn, block.mlp
        info: dict[str, Any] = {"layer": layer}
        attn_fn = lambda h, p: attn(block.input_norm(h), p, inv_freq)  # noqa: E731
        dense_attn = _batched(attn_fn, batch, h_dense, positions)
        head_cut, channel_cut = _layer_cuts(model, layer, attention_ratio, ffn_ratio, config.head_mode) if layer in layers else (0, 0)
        if head_cut:
            heads_out = _batched(lambda h, p: attn.heads(block.input_norm(h), p, inv_freq), batch, h_pruned, positions)
            stats = attention_stats([heads_out])
            scores = head_scores(config.method, attn, stats, key=jax.random.fold_in(key, 2 * layer), norm=config.norm)
            heads, kv_heads = attn.q_kernel[...].shape[1], attn.k_kernel[...].shape[1]
            group = heads // kv_heads
            if config.head_mode == "per-group":
                keep, keep_groups = keep_heads_per_group(scores, kv_heads, head_cut), None
            else:
                keep_groups = keep_top(scores.reshape(kv_heads, group).sum(axis=1), kv_heads - head_cut)
                keep = np.concatenate([g * group + np.arange(group) for g in keep_groups])
            dropped = np.setdiff1d(np.arange(heads), keep)
            if config.compensate:  # b_o += Σ_{pruned columns c} mean(z_c) W_O[c]
                shift = jnp.einsum("NH,NHD->D", jnp.asarray(stats.z_mean[dropped], jnp.float32), attn.o_kernel[...][jnp.asarray(dropped)].astype(jnp.float32))
                attn.o_bias = nnx.Param((attn.o_bias[...].astype(jnp.float32) + shift).astype(attn.o_bias[...].dtype))
            slice_heads(attn, keep, keep_groups)
            info["heads_kept"] = keep.tolist()
            if config.recover:
                kept_out = heads_out[:, :, jnp.asarray(keep)].reshape(heads_out.shape[0], heads_out.shape[1], -1)
                if keep_groups is not None:  # k/v changed too: recompute the heads with the sliced module
                    kept_out = _batched(lambda h, p: attn.heads(block.input_norm(h), p, inv_freq), batch, h_pruned, positions)
                    kept_out = kept_out.reshape(kept_out.shape[0], kept_out.shape[1], -1)
                bias = attn.o_bias[...].astype(jnp.float32)[None, None, :] if attn.o_bias is not None else 0.0
                o = attn.o_kernel[...]
                w, rec = refit_linear(kept_out, dense_attn - bias, o.reshape(-1, o.shape[-1]), grid=config.ridge_grid)
                attn.o_kernel = nnx.Param(w.reshape(o.shape).astype(o.dtype))
                info["o_proj_recovery"] = rec
        pruned_attn = _batched(attn_fn, batch, h_pruned, positions)
        h_dense = h_dense + dense_attn
        h_pruned = h_pruned + pruned_attn
        mlp_fn = lambda h: mlp(block.post_attn_norm(h))  # noqa: E731
        dense_mlp = _batched(mlp_fn, batch, h_dense)
        if channel_cut:
            x_pruned = _batched(lambda h: block.post_attn_norm(h), batch, h_pruned)
            stats = mlp_stats(mlp, [x_pruned[i : i + batch] for i in range(0, x_pruned.shape[0], batch)])
            scores = ffn_channel_scores(config.method, mlp, stats, key=jax.random.fold_in(key, 2 * layer + 1), norm=config.norm)
            channels = mlp.down_kernel[...].shape[0]
            keep = keep_top(scores, channels - channel_cut)
            dropped = np.setdiff1d(np.arange(channels), keep)
            if config.compensate:
                shift = jnp.asarray(stats.h_mean[dropped], jnp.float32) @ mlp.down_kernel[...][jnp.asarray(dropped)].astype(jnp.float32)
                mlp.down_bias = nnx.Param((mlp.down_bias[...].astype(jnp.float32) + shift).astype(mlp.down_bias[...].dtype))
            slice_channels(mlp, keep)
            info["channels_kept"] = int(len(keep))
            if config.recover:
                hidden = _batched(lambda x: mlp.intermediate(x), batch, x_pruned)
                bias = mlp.down_bias[...].astype(jnp.float32)[None, None, :] if mlp.down_bias is not None else 0.0
                w, rec = refit_linear(hidden, dense_mlp - bias, mlp.down_kernel[...], grid=config.ridge_grid)
                mlp.down_kernel = nnx.Param(w.astype(mlp.down_kernel[...].dtype))
                info["down_proj_recovery"] = rec
        h_pruned = h_pruned + _batched(mlp_fn, batch, h_pruned)
        h_dense = h_dense + dense_mlp
        layer_reports.append(info)
        if progress is not None:
            progress(layer + 1, num_layers)

    heads_per_layer = tuple((int(b.attn.q_kernel[...].shape[1]), int(b.attn.k_kernel[...].shape[1])) for b in model.layers)
    channels_per_layer = tuple(int(b.mlp.down_kernel[...].shape[0]) for b in model.layers)
    model.config = dataclasses.replace(model.config, layer_heads=heads_per_layer, layer_intermediate=channels_per_layer)
    params_after, prunable_after = _all_parameters(model), prunable_parameters(model)
    report = {
        "method": config.method,
        "config": dataclasses.asdict(config),
        "layer_range": [start, stop],
        "attention_ratio": attention_ratio,
        "ffn_ratio": ffn_ratio,
        "parameters_before": params_before,
        "parameters_after": params_after,
        "fraction_of_all_removed": 1 - params_after / params_before,
        "prunable_before": prunable_before,
        "prunable_after": prunable_after,
        "fraction_of_prunable_removed": (prunable_before - prunable_after) / prunable_before,
        "layer_heads": [list(p) for p in heads_per_layer],
        "layer_intermediate": list(channels_per_layer),
        "calibration_tokens": int(calibration.size),
        "calibration_shape": list(calibration.shape),
        "seconds": time.perf_counter() - start_time,
        "layers": layer_reports,
    }
    return model, report
