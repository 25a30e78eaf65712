"""Per-unit statistics of a block's inputs over the calibration tokens.

Everything is accumulated in float32 over batches of sequences (so memory is one
batch's activations, not the calibration set's), with the Gram-type products at
highest matmul precision:

  MLPStats (channel j of h = silu(W_Gᵀx) ⊙ W_Uᵀx, x = RMSNorm(block input)):
    E[h_j²], Var(h_j), Σ h_j² (= ‖h_j‖₂²), E[(W_Uᵀx)_j²], E[(W_Gᵀx)_j²], E[h_j]
  AttentionStats (o_proj input column c = (head n, dim d)):
    E[z_c²], Var(z_c), Σ z_c², E[z_c]
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class MLPStats:
    h_sq_mean: np.ndarray  # [F]
    h_mean: np.ndarray  # [F]
    h_var: np.ndarray  # [F]
    h_sq_sum: np.ndarray  # [F]
    up_sq_mean: np.ndarray  # [F]
    gate_sq_mean: np.ndarray  # [F]
    up_var: np.ndarray  # [F] covariance variant: u_jᵀ Cov(x) u_j
    gate_var: np.ndarray  # [F]
    tokens: int


@dataclasses.dataclass(frozen=True)
class AttentionStats:
    z_sq_mean: np.ndarray  # [N, H]
    z_mean: np.ndarray  # [N, H]
    z_var: np.ndarray  # [N, H]
    z_sq_sum: np.ndarray  # [N, H]
    tokens: int


def _moments(batches: Iterable[jax.Array]) -> tuple[np.ndarray, np.ndarray, int]:
    """(Σ x, Σ x², count) over the leading token axes of each batch [..., C...]."""
    total = total_sq = None
    count = 0
    for x in batches:
        x = x.astype(jnp.float32)
        flat = x.reshape((-1,) + x.shape[2:])
        s, sq = jnp.sum(flat, axis=0), jnp.sum(flat * flat, axis=0)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += flat.shape[0]
    return np.asarray(total, np.float64), np.asarray(total_sq, np.float64), count


def mlp_stats(mlp, inputs: Iterable[jax.Array]) -> MLPStats:
    """Statistics of one MLP over normalised inputs (iterable of [B, T, D] batches)."""
    sums = None
    count = 0
    for x in inputs:
        gate, up = mlp.pre_activations(x)
        gate, up = gate.astype(jnp.float32), up.astype(jnp.float32)
        h = jax.nn.silu(gate) * up
        parts = [jnp.sum(v, axis=(0, 1)) for v in (h, h * h, up, up * up, gate, gate * gate)]
        sums = parts if sums is None else [a + b for a, b in zip(sums, parts)]
        count += x.shape[0] * x.shape[1]
    if count == 0:
        raise ValueError("calibration set is empty: no tokens to compute statistics from")
    h_mean, h_sq_mean, up_mean, up_sq_mean, gate_mean, gate_sq_mean = (np.asarray(v, np.float64) / count for v in sums)
    return MLPStats(
        h_sq_mean=h_sq_mean, h_mean=h_mean, h_var=np.maximum(h_sq_mean - h_mean**2, 0.0), h_sq_sum=h_sq_mean * count,
        up_sq_mean=up_sq_mean, gate_sq_mean=gate_sq_mean, up_var=np.maximum(up_sq_mean - up_mean**2, 0.0),
        gate_var=np.maximum(gate_sq_mean - gate_mean**2, 0.0), tokens=count,
    )


def attention_stats(head_outputs: Iterable[jax.Array]) -> AttentionStats:
    """Statistics of o_proj's input from per-head outputs ([B, T, N, H] batches)."""
    total, total_sq, count = _moments(head_outputs)
    if count == 0:
        raise ValueError("calibration set is empty: no tokens to compute statistics from")
    mean, sq_mean = total / count, total_sq / count
    return AttentionStats(sq_mean, mean, np.maximum(sq_mean - mean * mean, 0.0), total_sq, count)


def gram(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(X̂ᵀX̂, X̂ᵀY) for token rows x [..., C], y [..., D], float32 at highest precision."""
    xf = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    yf = y.reshape(-1, y.shape[-1]).astype(jnp.float32)
    return jnp.matmul(xf.T, xf, precision=HIGHEST), jnp.matmul(xf.T, yf, precision=HIGHEST)
