"""Layer-wise recovery: refit a pruned linear map to the dense model's output.

For a linear map whose (pruned-stream) inputs are X̂ [tokens, C] and whose dense
targets are Y [tokens, D], the ridge least-squares refit is

    W(λ) = (X̂ᵀX̂ + λ·mean(diag X̂ᵀX̂)·I)⁻¹ X̂ᵀY,

solved by Cholesky in float32 with highest matmul precision (a failed factorisation —
NaN — retries with 10λ). λ is picked on held-out calibration tokens from a grid, and
the unrefit weights compete too: the chosen W never has a larger held-out
reconstruction error than not refitting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _error(x: jax.Array, y: jax.Array, w: jax.Array) -> float:
    residual = jnp.matmul(x, w, precision=HIGHEST) - y
    return float(jnp.sum(residual * residual))


def ridge_solve(gram: jax.Array, cross: jax.Array, ridge: float) -> jax.Array:
    """(G + λ·mean(diag G)·I)⁻¹ C by Cholesky; retries with 10λ while it fails."""
    scale = jnp.mean(jnp.diag(gram))
    eye = jnp.eye(gram.shape[0], dtype=jnp.float32)
    for _ in range(6):
        factor = jsl.cho_factor(gram + ridge * scale * eye, lower=True)
        w = jsl.cho_solve(factor, cross)
        if bool(jnp.all(jnp.isfinite(w))):
            return w
        ridge *= 10.0
    raise FloatingPointError("ridge refit failed: the Gram matrix could not be factorised even with a large ridge")


def refit_linear(
    x: jax.Array, y: jax.Array, w_current: jax.Array, *, held_out: float = 0.1, grid: tuple[float, ...] = RIDGE_GRID
) -> tuple[jax.Array, dict]:
    """Best of {unrefit, ridge refits over ``grid``} by held-out reconstruction error.

    Args:
      x: [tokens, C] pruned-stream inputs of the map.
      y: [tokens, D] dense targets (the map's bias, if any, already subtracted).
      w_current: [C, D] the pruned map before refitting.
      held_out: fraction of tokens (the last ones) used only to choose λ.

    Returns:
      (W [C, D], info with the chosen λ (None = unrefit) and the held-out errors).
    """
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    y = y.reshape(-1, y.shape[-1]).astype(jnp.float32)
    split = max(1, int(round(x.shape[0] * (1.0 - held_out))))
    if split >= x.shape[0]:
        raise ValueError("recovery needs held-out tokens: the calibration set is too small")
    xt, yt, xh, yh = x[:split], y[:split], x[split:], y[split:]
    gram = jnp.matmul(xt.T, xt, precision=HIGHEST)
    cross = jnp.matmul(xt.T, yt, precision=HIGHEST)
    w_current = jnp.asarray(w_current, jnp.float32)
    best_w, best_err, best_ridge = w_current, _error(xh, yh, w_current), None
    errors = {"unrefit": best_err}
    for ridge in grid:
        w = ridge_solve(gram, cross, ridge)
        err = _error(xh, yh, w)
        errors[f"{ridge:g}"] = err
        if err < best_err:
            best_w, best_err, best_ridge = w, err, ridge
    return best_w, {"ridge": best_ridge, "held_out_error": best_err, "errors": errors}
