"""Structured pruning of a LLaMA block by block: calibrate → score → slice → recover.

Two calibration streams move through the model together, one block at a time (only
one block's activations for the calibration set are held):
  - dense stream: the original blocks on the original inputs — the targets Y;
  - pruned stream: the already pruned (and refit) blocks — the inputs X̂ the pruned
    model really sees, from which the unit statistics are taken.
Within a block, with recovery (``refit="full"``, the paper's order):
  refit q,k,v (one shared Gram) → score and remove query heads (or whole KV groups)
  → refit o → refit gate,up → score and remove FFN channels → refit down
  → run the pruned block (its output is the next block's pruned-stream input).
Each refit is ridge least squares of the pruned-stream inputs onto the dense
outputs of the same map (``recover.refit_linear``), so the error a removal causes is
absorbed by the next map. The paper lists "refit o" before "prune heads"; we refit o
after the removal, on the kept heads — it then absorbs the removal itself (its
error is never larger, since the unrefit map competes). ``refit="second"`` refits o
and down only (cheaper). Recovery runs from the first pruned block to the last
block: every later block sees a changed input stream.

Allocation: one ratio for every block of the layer range (``allocation="uniform"``,
the smallest that meets the parameter budget), fixed per-module ratios, or FLAP's
adaptive structure (``allocation="adaptive"``): every unit's score standardised
within its layer and module, one global threshold over all units weighted by their
parameter cost (scores from a first pass over the dense model).

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
from prune_jax.pruning.calibrate import attention_stats, head_divergence, mlp_stats, taylor_importance
from prune_jax.pruning.recover import RIDGE_GRID, refit_linear
from prune_jax.pruning.scores import (
    METHODS,
    ffn_channel_scores,
    head_scores,
    keep_heads_per_group,
    keep_top,
    prefer_marked,
    similar_heads,
)

HEAD_MODES = ("per-group", "kv-groups")
HEAD_CRITERIA = ("score", "similarity")
ALLOCATIONS = ("uniform", "adaptive")
REFITS = ("full", "second")
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
      head_criterion: "score" (the method's head score) or "similarity" (paper §3.2:
        heads whose attention maps are within Jensen–Shannon divergence τ of another
        head go first, the score fills the rest of the budget).
      similarity_tau: τ for the similarity criterion (paper: 0.2, in nats).
      allocation: "uniform" (one ratio over the layer range) or "adaptive" (FLAP:
        per-layer standardised scores, one global threshold meeting the budget;
        non-uniform widths). Ignored when fixed module ratios are given.
      norm: "l2" or "l1" for the magnitude score.
      recover: layer-wise recovery by ridge least squares to the dense outputs.
      refit: "full" (q,k,v, o, gate,up, down — the paper's order) or "second" (o and
        down only).
      bias_compensation: add W[:, pruned] · mean(x_pruned) to the output bias (FLAP);
        default on for "flap" only. Adds zero biases where the model has none; with
        recovery, every bias is then refit jointly with its kernel (an intercept).
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
    head_criterion: str = "score"
    similarity_tau: float = 0.2
    allocation: str = "uniform"
    norm: str = "l2"
    recover: bool = False
    refit: str = "full"
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
        for name, allowed in (("head_criterion", HEAD_CRITERIA), ("allocation", ALLOCATIONS), ("refit", REFITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.similarity_tau > 0:
            raise ValueError(f"similarity_tau must be > 0, got {self.similarity_tau!r}")
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


def _per_query_head(model: Llama) -> int:
    config = model.config
    return 2 * config.hidden_size * config.head_dim + (config.head_dim if config.attention_bias else 0)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


def adaptive_cuts(model: Llama, layer_scores: dict[int, tuple[np.ndarray, np.ndarray]], sparsity: float, head_mode: str) -> dict[int, tuple[int, int]]:
    """FLAP's adaptive structure: per-layer cuts from one global threshold.

    Every unit's score is standardised within its layer and module ((s − mean)/std),
    units are removed in ascending standardised score until the removed parameters
    reach ``sparsity`` of the prunable ones. Head units respect GQA: in "per-group"
    mode a unit is "one more query head from every KV group" (its score: the mean
    over groups of their k-th lowest standardised head score), in "kv-groups" mode a
    whole group. At least one head per group (one group), and 10 % of the channels,
    stay in every layer. Within a layer the units are in ascending order, so the
    global prefix is a per-layer prefix.

    Args:
      layer_scores: layer → (head scores [N], channel scores [F]) (higher = keep).

    Returns:
      layer → (heads or KV groups to remove, channels to remove).
    """
    dim = model.config.hidden_size
    units = []  # (standardised score, layer, "head" | "channel", cost)
    for layer, (head_score, channel_score) in layer_scores.items():
        attn = model.layers[layer].attn
        heads, kv_heads = attn.q_kernel[...].shape[1], attn.k_kernel[...].shape[1]
        group = heads // kv_heads
        z_heads = _standardise(np.asarray(head_score, np.float64)).reshape(kv_heads, group)
        if head_mode == "per-group":
            slots = np.sort(z_heads, axis=1).mean(axis=0)[: group - 1]
            cost = kv_heads * _per_query_head(model)
        else:
            slots = np.sort(_standardise(np.asarray(head_score, np.float64).reshape(kv_heads, group).sum(axis=1)))[: kv_heads - 1]
            cost = group * _per_query_head(model) + 2 * dim * model.config.head_dim
        units += [(float(z), layer, "head", cost) for z in slots]
        z_channels = np.sort(_standardise(np.asarray(channel_score, np.float64)))
        channel_cost = 3 * dim + (2 if model.config.mlp_bias else 0)
        units += [(float(z), layer, "channel", channel_cost) for z in z_channels[: int(0.9 * len(z_channels))]]
    target = sparsity * prunable_parameters(model)
    cuts = {layer: [0, 0] for layer in layer_scores}
    removed = 0
    for _, layer, kind, cost in sorted(units, key=lambda u: u[0]):
        if removed >= target:
            break
        cuts[layer][0 if kind == "head" else 1] += 1
        removed += cost
    if removed < target:
        raise ValueError(f"sparsity {sparsity} cannot be reached within the layer range; widen it or lower the sparsity")
    return {layer: (h, c) for layer, (h, c) in cuts.items()}


def _refit(x: jax.Array, y: jax.Array, kernel: jax.Array, bias: jax.Array | None, grid: tuple[float, ...]) -> tuple[jax.Array, jax.Array | None, dict]:
    """Ridge refit of a kernel [C, ...] (and its bias, if the map has one) mapping inputs
    x [..., C] to targets y [..., ...].

    A bias is refit jointly as the weight of a constant input column (an intercept):
    it absorbs the mean shift that removed units leave behind, FLAP's bias
    compensation being the special case of refitting the bias alone. Returns
    (kernel, bias or None, info), each in its own shape and dtype.
    """
    out_shape = kernel.shape[1:]
    w_current = kernel.reshape(kernel.shape[0], -1).astype(jnp.float32)
    y = y.reshape(y.shape[:2] + (-1,)).astype(jnp.float32)
    if bias is not None:
        x = jnp.concatenate([x.astype(jnp.float32), jnp.ones(x.shape[:-1] + (1,), jnp.float32)], axis=-1)
        w_current = jnp.concatenate([w_current, bias.reshape(1, -1).astype(jnp.float32)], axis=0)
    w, info = refit_linear(x, y, w_current, grid=grid)
    new_bias = None if bias is None else w[-1].reshape(bias.shape).astype(bias.dtype)
    w = w[: kernel.shape[0]] if bias is not None else w
    return w.reshape((kernel.shape[0],) + out_shape).astype(kernel.dtype), new_bias, info


def _layer_scores_dense(model, tokens, positions, layers, config, batch, inv_freq, key, taylor) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """First pass of the adaptive allocation: unit scores of every block in ``layers``
    from the dense model's own statistics (or its Taylor importance)."""
    if taylor is not None:
        return {layer: taylor[layer] for layer in layers}
    h = jnp.take(model.embed[...], tokens, axis=0).astype(jnp.float32)
    out = {}
    for layer, block in enumerate(model.layers[: layers.stop]):
        attn, mlp = block.attn, block.mlp
        if layer in layers:
            heads_out = _batched(lambda x, p: attn.heads(block.input_norm(x), p, inv_freq), batch, h, positions)
            head_score = head_scores(config.method, attn, attention_stats([heads_out]), key=jax.random.fold_in(key, 2 * layer), norm=config.norm)
        h = h + _batched(lambda x, p: attn(block.input_norm(x), p, inv_freq), batch, h, positions)
        if layer in layers:
            x = _batched(lambda v: block.post_attn_norm(v), batch, h)
            stats = mlp_stats(mlp, [x[i : i + batch] for i in range(0, x.shape[0], batch)])
            out[layer] = (head_score, ffn_channel_scores(config.method, mlp, stats, key=jax.random.fold_in(key, 2 * layer + 1), norm=config.norm))
        h = h + _batched(lambda v: mlp(block.post_attn_norm(v)), batch, h)
    return out


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

    taylor = taylor_importance(model, tokens, batch_size=batch) if config.method == "taylor" else None
    fixed_ratios = config.attention_ratio is not None or config.ffn_ratio is not None
    attention_ratio = ffn_ratio = None
    if fixed_ratios:
        attention_ratio, ffn_ratio = config.attention_ratio or 0.0, config.ffn_ratio or 0.0
        cuts = {layer: _layer_cuts(model, layer, attention_ratio, ffn_ratio, config.head_mode) for layer in layers}
    elif config.allocation == "adaptive":
        scores = _layer_scores_dense(model, tokens, positions, layers, config, batch, inv_freq, key, taylor)
        cuts = adaptive_cuts(model, scores, config.sparsity, config.head_mode)
    else:
        attention_ratio = ffn_ratio = solve_ratio(model, layers, config.sparsity, config.head_mode)
        cuts = {layer: _layer_cuts(model, layer, attention_ratio, ffn_ratio, config.head_mode) for layer in layers}

    h_dense = jnp.take(model.embed[...], tokens, axis=0).astype(jnp.float32)
    h_pruned = h_dense
    layer_reports = []
    for layer, block in enumerate(model.layers):
        attn, mlp = block.attn, block.mlp
        info: dict[str, Any] = {"layer": layer}
        refit = config.recover and layer >= start  # from the first pruned block on, the streams differ
        full = refit and config.refit == "full"
        attn_fn = lambda h, p: attn(block.input_norm(h), p, inv_freq)  # noqa: E731
        dense_attn = _batched(attn_fn, batch, h_dense, positions)
        head_cut, channel_cut = cuts.get(layer, (0, 0))
        if full:  # q, k, v share their input: one Gram, one λ for the concatenated map
            x_hat = _batched(lambda h: block.input_norm(h), batch, h_pruned)
            targets = _batched(lambda h: jnp.concatenate([t.reshape(t.shape[:2] + (-1,)) for t in attn.projections(block.input_norm(h))], -1), batch, h_dense)
            kernels = [attn.q_kernel[...], attn.k_kernel[...], attn.v_kernel[...]]
            widths = [int(np.prod(k.shape[1:])) for k in kernels]
            stacked = jnp.concatenate([k.reshape(k.shape[0], -1).astype(jnp.float32) for k in kernels], axis=1)
            biases = None if attn.q_bias is None else jnp.concatenate([b[...].reshape(-1) for b in (attn.q_bias, attn.k_bias, attn.v_bias)])
            w, b, info["qkv_proj_recovery"] = _refit(x_hat, targets, stacked, biases, config.ridge_grid)
            cuts_at = np.cumsum(widths)[:-1]
            attn.q_kernel, attn.k_kernel, attn.v_kernel = (nnx.Param(part.reshape(k.shape).astype(k.dtype)) for part, k in zip(jnp.split(w, cuts_at, axis=1), kernels))
            if b is not None:
                old = (attn.q_bias, attn.k_bias, attn.v_bias)
                attn.q_bias, attn.k_bias, attn.v_bias = (nnx.Param(part.reshape(o[...].shape).astype(o[...].dtype)) for part, o in zip(jnp.split(b, cuts_at), old))
        if head_cut:
            heads_out = _batched(lambda h, p: attn.heads(block.input_norm(h), p, inv_freq), batch, h_pruned, positions)
            stats = attention_stats([heads_out])
            if taylor is not None:
                scores = taylor[layer][0]
            else:
                scores = head_scores(config.method, attn, stats, key=jax.random.fold_in(key, 2 * layer), norm=config.norm)
            if config.head_criterion == "similarity":
                probs = [attn.probabilities(block.input_norm(h_pruned[i : i + batch]), positions[i : i + batch], inv_freq)
                         for i in range(0, h_pruned.shape[0], batch)]
                marked = similar_heads(head_divergence(probs), scores, config.similarity_tau)
                scores = prefer_marked(scores, marked)
                info["similar_heads_marked"] = np.flatnonzero(marked).tolist()
            heads, kv_heads = attn.q_kernel[...].shape[1], attn.k_kernel[...].shape[1]
            group = heads // kv_heads
            if config.head_mode == "per-group":
                keep, keep_groups = keep_heads_per_group(scores, kv_heads, head_cut), None
            else:
                keep_groups = keep_top(np.asarray(scores).reshape(kv_heads, group).sum(axis=1), kv_heads - head_cut)
                keep = np.concatenate([g * group + np.arange(group) for g in keep_groups])
            dropped = np.setdiff1d(np.arange(heads), keep)
            if config.compensate:  # b_o += Σ_{pruned columns c} mean(z_c) W_O[c]
                shift = jnp.einsum("NH,NHD->D", jnp.asarray(stats.z_mean[dropped], jnp.float32), attn.o_kernel[...][jnp.asarray(dropped)].astype(jnp.float32))
                attn.o_bias = nnx.Param((attn.o_bias[...].astype(jnp.float32) + shift).astype(attn.o_bias[...].dtype))
            slice_heads(attn, keep, keep_groups)
            info["heads_kept"] = keep.tolist()
        if refit:
            kept_out = _batched(lambda h, p: attn.heads(block.input_norm(h), p, inv_freq), batch, h_pruned, positions)
            kept_out = kept_out.reshape(kept_out.shape[0], kept_out.shape[1], -1)
            o = attn.o_kernel[...]
            w, b, info["o_proj_recovery"] = _refit(kept_out, dense_attn, o.reshape(-1, o.shape[-1]), None if attn.o_bias is None else attn.o_bias[...], config.ridge_grid)
            attn.o_kernel = nnx.Param(w.reshape(o.shape))
            if b is not None:
                attn.o_bias = nnx.Param(b)
        h_dense = h_dense + dense_attn
        h_pruned = h_pruned + _batched(attn_fn, batch, h_pruned, positions)

        mlp_fn = lambda h: mlp(block.post_attn_norm(h))  # noqa: E731
        dense_mlp = _batched(mlp_fn, batch, h_dense)
        x_pruned = _batched(lambda h: block.post_attn_norm(h), batch, h_pruned) if (channel_cut or refit) else None
        if full:  # gate and up share their input
            targets = _batched(lambda h: jnp.concatenate(mlp.pre_activations(block.post_attn_norm(h)), -1), batch, h_dense)
            channels = mlp.gate_kernel[...].shape[1]
            stacked = jnp.concatenate([mlp.gate_kernel[...], mlp.up_kernel[...]], axis=1).astype(jnp.float32)
            biases = None if mlp.gate_bias is None else jnp.concatenate([mlp.gate_bias[...], mlp.up_bias[...]])
            w, b, info["gate_up_proj_recovery"] = _refit(x_pruned, targets, stacked, biases, config.ridge_grid)
            dtype = mlp.gate_kernel[...].dtype
            mlp.gate_kernel, mlp.up_kernel = nnx.Param(w[:, :channels].astype(dtype)), nnx.Param(w[:, channels:].astype(dtype))
            if b is not None:
                mlp.gate_bias, mlp.up_bias = nnx.Param(b[:channels]), nnx.Param(b[channels:])
        if channel_cut:
            stats = mlp_stats(mlp, [x_pruned[i : i + batch] for i in range(0, x_pruned.shape[0], batch)])
            if taylor is not None:
                scores = taylor[layer][1]
            else:
                scores = ffn_channel_scores(config.method, mlp, stats, key=jax.random.fold_in(key, 2 * layer + 1), norm=config.norm)
            channels = mlp.down_kernel[...].shape[0]
            keep = keep_top(scores, channels - channel_cut)
            dropped = np.setdiff1d(np.arange(channels), keep)
            if config.compensate:
                shift = jnp.asarray(stats.h_mean[dropped], jnp.float32) @ mlp.down_kernel[...][jnp.asarray(dropped)].astype(jnp.float32)
                mlp.down_bias = nnx.Param((mlp.down_bias[...].astype(jnp.float32) + shift).astype(mlp.down_bias[...].dtype))
            slice_channels(mlp, keep)
            info["channels_kept"] = int(len(keep))
        if refit:
            hidden = _batched(lambda x: mlp.intermediate(x), batch, x_pruned)
            w, b, info["down_proj_recovery"] = _refit(hidden, dense_mlp, mlp.down_kernel[...], None if mlp.down_bias is None else mlp.down_bias[...], config.ridge_grid)
            mlp.down_kernel = nnx.Param(w)
            if b is not None:
                mlp.down_bias = nnx.Param(b)
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
        "layer_cuts": {str(layer): list(cut) for layer, cut in cuts.items()},
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
