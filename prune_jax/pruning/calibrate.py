"""Per-unit statistics of a block's inputs over the calibration tokens.

Everything is accumulated in float32 over batches of sequences (so memory is one
batch's activations, not the calibration set's):

  MLPStats (channel j of h = silu(W_Gᵀx) ⊙ W_Uᵀx, x = RMSNorm(block input)):
    E[h_j²], Var(h_j), Σ h_j² (= ‖h_j‖₂²), E[(W_Uᵀx)_j²], E[(W_Gᵀx)_j²], E[h_j]
  AttentionStats (o_proj input column c = (head n, dim d)):
    E[z_c²], Var(z_c), Σ z_c², E[z_c]
  head_divergence (attention maps P_n [T, T] of query head n):
    D_ab = mean over sequences and query positions t of JS(P_a[t], P_b[t])
  dense_gradients: ∂L/∂w for every parameter, L the mean next-token cross-entropy
    of the dense model on the calibration tokens (for "gradients" scores such as
    LLM-Pruner's element-wise Taylor importance, see ``scores``)
  residual_sensitivity: E_t[g_t,d²] per residual direction d after each half of each
    block, g_t = ∂L/∂(stream at token t) of the dense model (the diagonal of the
    Fisher of the stream: how much the calibration loss reacts to an output error
    along d; loss-aware dap-obs, ``scores.ObsOptions.metric``)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.models.llama.sharding import to_host
from skmm_jax.common.gram import add_to
from skmm_jax.common.streaming import chunk_bounds


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


@jax.jit
def _sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    flat = x.astype(jnp.float32).reshape((-1,) + x.shape[2:])
    return jnp.sum(flat, axis=0), jnp.sum(flat * flat, axis=0)


def _moments(batches: Iterable[jax.Array]) -> tuple[np.ndarray, np.ndarray, int]:
    """(Σ x, Σ x², count) over the leading token axes of each batch [..., C...]."""
    sums, count = None, 0
    for x in batches:
        sums = add_to(sums, _sums(x))
        count += x.shape[0] * x.shape[1]
    total, total_sq = (None, None) if sums is None else sums
    return np.asarray(total, np.float64), np.asarray(total_sq, np.float64), count


@nnx.jit
def _mlp_sums(mlp, x: jax.Array) -> list[jax.Array]:
    """Σ over the batch's tokens of h, h², up, up², gate, gate² (each [F])."""
    gate, up = mlp.pre_activations(x)
    gate, up = gate.astype(jnp.float32), up.astype(jnp.float32)
    h = jax.nn.silu(gate) * up
    return [jnp.sum(v, axis=(0, 1)) for v in (h, h * h, up, up * up, gate, gate * gate)]


def mlp_stats(mlp, inputs: Iterable[jax.Array]) -> MLPStats:
    """Statistics of one MLP over normalised inputs (iterable of [B, T, D] batches)."""
    sums = None
    count = 0
    for x in inputs:
        sums = add_to(sums, _mlp_sums(mlp, x))
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


def _js_row(p: jax.Array, probs: jax.Array) -> jax.Array:
    """Σ over batch and query positions of JS(p[t], probs[n, t]) for every head n.

    p [B, T, T] (one head), probs [B, N, T, T] → [N]. JS(p, q) = ½KL(p‖m) + ½KL(q‖m),
    m = (p + q)/2, in nats (at most ln 2); masked (zero) entries contribute 0.
    """
    p = p[:, None]
    m = 0.5 * (p + probs)
    kl_p = jnp.sum(jax.scipy.special.xlogy(p, p) - jax.scipy.special.xlogy(p, m), axis=-1)
    kl_q = jnp.sum(jax.scipy.special.xlogy(probs, probs) - jax.scipy.special.xlogy(probs, m), axis=-1)
    return jnp.sum(0.5 * (kl_p + kl_q), axis=(0, 2))


_js_row_jit = jax.jit(_js_row)


def head_divergence(prob_batches: Iterable[jax.Array]) -> np.ndarray:
    """[N, N] mean Jensen–Shannon divergence between the heads' attention rows.

    Args:
      prob_batches: iterable of [B, N, T, T] attention maps (``Attention.probabilities``).
    """
    total, count = None, 0
    for probs in prob_batches:
        probs = probs.astype(jnp.float32)
        rows = jnp.stack([_js_row_jit(probs[:, a], probs) for a in range(probs.shape[1])])
        total = add_to(total, rows)
        count += probs.shape[0] * probs.shape[2]
    if count == 0:
        raise ValueError("calibration set is empty: no attention maps to compare")
    divergence = np.asarray(total, np.float64) / count
    return 0.5 * (divergence + divergence.T)


def dense_gradients(model, tokens: np.ndarray, *, batch_size: int = 8):
    """Mean gradient of the next-token loss over ``tokens`` [S, T], as a model.

    L = Σ_{sequences, t} −log p(x_{t+1} | x_≤t) / (S (T − 1)) (``Llama.token_nll``);
    ∂L/∂w is summed over batches of ``batch_size`` sequences (memory: one batch's
    activations and one gradient) and divided by the token count at the end.

    Returns:
      a copy of ``model`` whose parameters are the gradients (same structure, so a
      score reads ``grads.layers[i].mlp.down_kernel`` next to the weight).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jnp.asarray(tokens, jnp.int32)

    @jax.jit
    def loss_sum(p, batch):
        return jnp.sum(nnx.merge(graphdef, p, rest).token_nll(batch))

    grad_fn = jax.jit(jax.grad(loss_sum))
    grads = None
    for start, stop in chunk_bounds(tokens.shape[0], batch_size):
        grads = add_to(grads, grad_fn(params, tokens[start:stop]))
    count = tokens.shape[0] * (tokens.shape[1] - 1)
    grads = jax.tree.map(lambda g: g / count, grads)
    return nnx.merge(graphdef, grads, rest)


@functools.partial(jax.jit, static_argnums=0)
def _squared_residual_gradients(graphdef, params, rest, batch: jax.Array) -> jax.Array:
    """[2L, D]: Σ over the batch's predicted tokens of g², g = ∂(summed next-token NLL)/∂ε
    for zero perturbations ε added to the residual stream after every half (module level:
    one compiled program per model structure and batch shape, across calls)."""

    def loss_sum(eps, p):
        m = nnx.merge(graphdef, p, rest)
        inputs = batch[:, :-1]
        positions, inv_freq = m.default_positions(inputs), m.rope_frequencies()
        x = m.embed_tokens(inputs)
        for layer, block in enumerate(m.layers):
            h = block.attention_residual(x, positions, inv_freq) + eps[2 * layer].astype(x.dtype)
            x = block.mlp_residual(h) + eps[2 * layer + 1].astype(x.dtype)
        return jnp.sum(m.next_token_nll(m.norm(x), batch[:, 1:]))

    m = nnx.merge(graphdef, params, rest)
    eps = jnp.zeros((2 * len(m.layers), batch.shape[0], batch.shape[1] - 1, m.config.hidden_size), jnp.float32)
    return jnp.sum(jnp.square(jax.grad(loss_sum)(eps, params)), axis=(1, 2))


def residual_sensitivity(model, tokens: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """[L, 2, D]: E_t[g_t,d²], the mean over predicted tokens of the squared gradient of
    the dense model's summed next-token loss with respect to the residual stream right
    after half h of block l (0: attention, 1: MLP), per direction d.

    Why: a half's output error δ_t changes the loss by ≈ g_tᵀδ_t + ½δ_tᵀF δ_t; with the
    Fisher F ≈ E[ggᵀ] and δ independent of g (K-FAC's assumption), the expected increase is
    ½ E[(gᵀδ)²] ≈ ½ Σ_d E[g_d²] E[δ_d²] (diagonal F): output errors weighted per direction
    by this array are second-order estimates of the calibration-loss increase, on one
    scale across blocks and halves, and a direction that the next norms divide away (a
    massive-activation "sink" direction) weighs what it does to the loss, not its energy.

    The gradient is taken with respect to zero perturbations ε [2L, B, T − 1, D] added
    after every half, one batch of ``batch_size`` sequences at a time. Memory: the
    backward pass of one batch (as ``dense_gradients``) plus 2·L·B·T·D floats for ε's
    gradient (B = 8, T = 128, SmolLM2: 0.14 GB; an 8 B model at T = 2048: 2 GiB per
    sequence — lower ``batch_size`` there).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jnp.asarray(tokens, jnp.int32)
    num_layers, hidden = len(model.layers), model.config.hidden_size

    total = None
    for start, stop in chunk_bounds(tokens.shape[0], batch_size):
        total = add_to(total, _squared_residual_gradients(graphdef, params, rest, tokens[start:stop]))
    count = tokens.shape[0] * (tokens.shape[1] - 1)
    return to_host(total / count, np.float32).reshape(num_layers, 2, hidden)  # a collective on a multi-host mesh
