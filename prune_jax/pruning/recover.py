"""Layer-wise recovery: refit a pruned linear map to the dense model's output.

For a linear map whose (pruned-stream) inputs are X̂ [tokens, C] and whose dense
targets are Y [tokens, D], the ridge least-squares refit is

    W(λ) = (X̂ᵀX̂ + λ·mean(diag X̂ᵀX̂)·I)⁻¹ X̂ᵀY,

solved by Cholesky in float32 with highest matmul precision (a failed factorisation —
NaN — retries with 10λ). λ is picked on held-out calibration tokens from a grid, and
the unrefit weights compete too: the chosen W never has a larger held-out
reconstruction error than not refitting.

The glue below applies this to a module's maps: ``refit_map`` refits one kernel (and its
bias, as an intercept) and ``refit_shared_input`` several kernels that read the same
input (q, k, v; gate, up) as one concatenated map — one Gram matrix, one λ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from flax import nnx

from skmm_jax.precision import HIGHEST

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


def refit_map(x: jax.Array, y: jax.Array, kernel: jax.Array, bias: jax.Array | None, grid: tuple[float, ...]) -> tuple[jax.Array, jax.Array | None, dict]:
    """Ridge refit of a kernel [C, ...] (and its bias, if the map has one) mapping inputs
    x [S, T, C] to targets y [S, T, ...].

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


def refit_shared_input(module, kernels: tuple[str, ...], biases: tuple[str, ...], x: jax.Array, y: jax.Array, grid: tuple[float, ...]) -> dict:
    """Refits the maps ``kernels`` of ``module`` (each [C, ...], all reading the input
    x [S, T, C]) as one map onto y [S, T, Σ outputs] (their dense outputs, concatenated
    in the same order), in place; ``biases`` are refit with them when the module has
    them. Returns the refit info."""
    params = [getattr(module, name)[...] for name in kernels]
    widths = [int(np.prod(k.shape[1:])) for k in params]
    stacked = jnp.concatenate([k.reshape(k.shape[0], -1).astype(jnp.float32) for k in params], axis=1)
    has_bias = getattr(module, biases[0]) is not None
    old_biases = [getattr(module, name)[...] for name in biases] if has_bias else None
    bias = jnp.concatenate([b.reshape(-1) for b in old_biases]) if has_bias else None
    w, b, info = refit_map(x, y, stacked, bias, grid)
    cuts = np.cumsum(widths)[:-1]
    for name, part, k in zip(kernels, jnp.split(w, cuts, axis=1), params):
        setattr(module, name, nnx.Param(part.reshape(k.shape).astype(k.dtype)))
    if has_bias:
        for name, part, old in zip(biases, jnp.split(b, cuts), old_biases):
            setattr(module, name, nnx.Param(part.reshape(old.shape).astype(old.dtype)))
    return info


def refit_output_map(module, kernel: str, bias: str, x: jax.Array, y: jax.Array, grid: tuple[float, ...]) -> dict:
    """Refits the map ``kernel`` [C..., D] of ``module`` (viewed as [C, D]; input
    x [S, T, C...]) and its bias onto y [S, T, D], in place. Returns the refit info."""
    w_old = getattr(module, kernel)[...]
    b_old = getattr(module, bias)
    w, b, info = refit_map(x.reshape(x.shape[:2] + (-1,)), y, w_old.reshape(-1, w_old.shape[-1]), None if b_old is None else b_old[...], grid)
    setattr(module, kernel, nnx.Param(w.reshape(w_old.shape)))
    if b is not None:
        setattr(module, bias, nnx.Param(b))
    return info
