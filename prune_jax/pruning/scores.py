"""Unit scores (higher = keep) for FFN channels and attention query heads.

Notation for one block: first maps W_G, W_U [D, F] (gate_kernel, up_kernel), second map
W_D [F, D] (down_kernel; its row j is HF's down_proj column j), SwiGLU intermediate
h = silu(W_Gᵀx) ⊙ W_Uᵀx; attention o_proj input z [N, H] per token (o_kernel [N, H, D]).
Statistics are over calibration tokens of the block's input (see ``calibrate``):

  FFN channel j                                   attention head n (sum over its H columns)
  random        U(0, 1)                           U(0, 1)
  magnitude     ‖(W_G, W_U)[:, j]‖_p              ‖W_Q[:, n]‖_p
  depth2        ‖(W_G, W_U)[:, j]‖₂ ‖W_D[j]‖₂     ‖W_Q[:, n]‖₂ ‖W_O[n]‖₂
  wanda-sp      mean_i |W_D[j, i]| ‖h_j‖₂         Σ_c mean_i |W_O[c, i]| ‖z_c‖₂
  flap          Var(h_j) ‖W_D[j]‖²                Σ_c Var(z_c) ‖W_O[c]‖²
  dap (paper)   ‖W_D[j]‖⁴ E[(u_jᵀx)²] E[(g_jᵀx)²]  Σ_c ‖W_O[c]‖² E[z_c²]   (second moment)
  dap-cov       Σ = covariance: Var(u_jᵀx) etc.   Σ_c ‖W_O[c]‖² Var(z_c)
  dap-empirical ‖W_D[j]‖² E[h_j²]                 same as dap
  dap-data-free Σ = I: ‖W_D[j]‖⁴ ‖u_j‖² ‖g_j‖²      Σ_c ‖W_O[c]‖² ‖W_V[:, c]‖²  (no calibration
                                                   statistics; a head's values ≈ its input)
  taylor        Σ |w ∂L/∂w| over the channel's     Σ |w ∂L/∂w| over the head's q columns
                gate/up columns and down row       and o rows (LLM-Pruner element-1; from
                                                   the dense model, ``taylor_importance``)

The paper's FFN score multiplies the depth-2 metrics of the (W_D, W_U) and (W_D, W_G)
pairs, E‖B_j σ(a_jᵀx)‖² ∝ ‖B_j‖² a_jᵀΣa_j, where a_jᵀΣa_j = E[(a_jᵀx)²] is the second
moment of the channel's pre-activation — accumulated per channel, no D×D Σ needed. The
head score treats (attention output, W_O) as the depth-2 unit: a query head's share of
the block output has energy Σ_c ‖W_O[c]‖² E[z_c²].

Head similarity (paper §3.2, ``similar_heads``): with D_ab the mean Jensen–Shannon
divergence between the attention maps of heads a and b, pairs are visited in
ascending D; while D < τ and neither head is marked yet, the lower-scoring head of
the pair is marked as redundant (one representative of each similar pair survives).
A fixed budget is then met by removing marked heads first and filling (or
truncating) by the score (``prefer_marked``).
"""

from __future__ import annotations

import jax
import numpy as np

from prune_jax.pruning.calibrate import AttentionStats, MLPStats

METHODS = ("random", "magnitude", "depth2", "wanda-sp", "flap", "dap", "dap-cov", "dap-empirical", "dap-data-free", "taylor")
GRADIENT_METHODS = ("taylor",)  # scored from gradients of the dense model, not from activation statistics


def _norm(x: np.ndarray, axis, p: str) -> np.ndarray:
    return np.abs(x).sum(axis=axis) if p == "l1" else np.sqrt((x * x).sum(axis=axis))


def ffn_channel_scores(method: str, mlp, stats: MLPStats, *, key: jax.Array, norm: str = "l2") -> np.ndarray:
    """[F] scores of the FFN channels of one block (see module docstring)."""
    gate = np.asarray(mlp.gate_kernel[...], np.float32)  # [D, F]
    up = np.asarray(mlp.up_kernel[...], np.float32)
    down = np.asarray(mlp.down_kernel[...], np.float32)  # [F, D]
    first = np.concatenate([gate, up], axis=0)  # [2D, F]
    down_sq = (down * down).sum(axis=1)  # ‖W_D[j]‖²
    if method == "random":
        return np.asarray(jax.random.uniform(key, (down.shape[0],)))
    if method == "magnitude":
        return _norm(first, 0, norm)
    if method == "depth2":
        return _norm(first, 0, "l2") * np.sqrt(down_sq)
    if method == "wanda-sp":
        return np.abs(down).mean(axis=1) * np.sqrt(stats.h_sq_sum)
    if method == "flap":
        return stats.h_var * down_sq
    if method == "dap":
        return down_sq * down_sq * stats.up_sq_mean * stats.gate_sq_mean
    if method == "dap-cov":
        return down_sq * down_sq * stats.up_var * stats.gate_var
    if method == "dap-empirical":
        return down_sq * stats.h_sq_mean
    if method == "dap-data-free":
        return down_sq * down_sq * (up * up).sum(axis=0) * (gate * gate).sum(axis=0)
    raise ValueError(f"unknown score method {method!r}; choose one of {METHODS}")


def head_scores(method: str, attn, stats: AttentionStats, *, key: jax.Array, norm: str = "l2") -> np.ndarray:
    """[N] scores of the query heads of one block (see module docstring)."""
    q = np.asarray(attn.q_kernel[...], np.float32)  # [D, N, H]
    o = np.asarray(attn.o_kernel[...], np.float32)  # [N, H, D]
    o_sq = (o * o).sum(axis=2)  # [N, H]: ‖W_O[c]‖² per o_proj input column
    if method == "random":
        return np.asarray(jax.random.uniform(key, (q.shape[1],)))
    if method == "magnitude":
        return _norm(q.transpose(1, 0, 2).reshape(q.shape[1], -1), 1, norm)
    if method == "depth2":
        return _norm(q.transpose(1, 0, 2).reshape(q.shape[1], -1), 1, "l2") * np.sqrt(o_sq.sum(axis=1))
    if method == "wanda-sp":
        return (np.abs(o).mean(axis=2) * np.sqrt(stats.z_sq_sum)).sum(axis=1)
    if method == "flap":
        return (stats.z_var * o_sq).sum(axis=1)
    if method in ("dap", "dap-empirical"):
        return (stats.z_sq_mean * o_sq).sum(axis=1)
    if method == "dap-cov":
        return (stats.z_var * o_sq).sum(axis=1)
    if method == "dap-data-free":  # Σ = I: E[z_c²] → ‖W_V[:, c]‖² of the head's KV group
        v = np.asarray(attn.v_kernel[...], np.float32)  # [D, K, H]
        group = q.shape[1] // v.shape[1]
        v_sq = np.repeat((v * v).sum(axis=0), group, axis=0)  # [N, H]
        return (v_sq * o_sq).sum(axis=1)
    raise ValueError(f"unknown score method {method!r}; choose one of {METHODS}")


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



def similar_heads(divergence: np.ndarray, scores: np.ndarray, tau: float) -> np.ndarray:
    """Boolean [N]: heads marked redundant by the greedy over pairs with D_ab < τ."""
    divergence = np.asarray(divergence)
    heads = divergence.shape[0]
    a, b = np.triu_indices(heads, k=1)
    marked = np.zeros(heads, bool)
    for i in np.argsort(divergence[a, b], kind="stable"):
        if divergence[a[i], b[i]] >= tau:
            break
        if not (marked[a[i]] or marked[b[i]]):
            marked[a[i] if scores[a[i]] <= scores[b[i]] else b[i]] = True
    return marked


def prefer_marked(scores: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """Scores reordered so every marked head ranks below every unmarked one (within
    each set the score's order is kept): removal takes marked heads first."""
    ranks = np.argsort(np.argsort(np.asarray(scores), kind="stable"), kind="stable").astype(np.float64)
    return ranks - len(ranks) * np.asarray(marked, np.float64)
