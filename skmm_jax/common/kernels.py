"""Linear-map parameters with structure: a frozen base kernel plus a low-rank term.

A model that computes its linear maps with ``project(spec, x, kernel)`` instead of
``jnp.einsum(spec, x, kernel)`` accepts, in place of any kernel array, one of

* ``LoraKernel(base, a, b, scale)``: y = x W + s · (x A) B, the LoRA adapter
  (Hu et al., 2021). A [a_in, r] and B [r, b_out] are the trainable factors.
* ``ProbedKernel(base, left, core, right)``: y = x W + ((x Γ_a) E) Γ_bᵀ with fixed
  Gaussian Γ_a [a, m_a], Γ_b [b, m_b] and a zero core E [m_a, m_b]. The output is
  x W (E = 0), but the gradient with respect to E is

      ∂ℓ/∂E = Γ_aᵀ (∂ℓ/∂W) Γ_b = Σ_t (Γ_aᵀ x_t)(Γ_bᵀ δ_t)ᵀ,     δ_t = ∂ℓ/∂y_t,

  the Kronecker sketch (Γ_a ⊗ Γ_b) of the weight gradient, which reverse mode
  computes from the layer's inputs and output gradients without ever forming the
  [a, b] gradient: per sample O(T (a m_a + b m_b) + T m_a m_b) work and O(m_a m_b)
  memory instead of O(T a b) and O(a b). ``skmm_jax.gradients`` builds these for
  ``sketch_per_sample_grads(..., factored=True)``.

Both wrappers nest (a LoRA factor can itself be probed). Kernels are read as
matrices by contracting their leading ``n_in`` axes: a [D, N, H] query kernel has
n_in = 1 (a = D, b = N·H); a [N, H, D] output kernel has n_in = 2 (a = N·H, b = D).
Plain arrays go through the einsum unchanged, so a model that adopts ``project``
computes exactly what it did before.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from skmm_jax.common.checks import check_positive_int
from skmm_jax.common.pytree import Array, pytree_dataclass


def _matrix(x: Array, n_in: int, a: int) -> tuple[Array, tuple[int, ...]]:
    """x [..., *in_shape] → ([..., a], leading shape)."""
    lead = x.shape[: x.ndim - n_in]
    if math.prod(x.shape[x.ndim - n_in :]) != a:
        raise ValueError(f"input trailing shape {tuple(x.shape[x.ndim - n_in:])} does not match a kernel with {a} inputs")
    return x.reshape(*lead, a), lead


def contract(x: Array, kernel: Any, n_in: int = 1) -> Array:
    """x's trailing ``n_in`` axes against ``kernel``'s leading ``n_in`` axes (any wrapper)."""
    if isinstance(kernel, (ProbedKernel, LoraKernel)):
        return contract(x, kernel.base, n_in) + kernel.delta(x)
    out_shape = kernel.shape[n_in:]
    flat, lead = _matrix(x, n_in, math.prod(kernel.shape[:n_in]))
    # Mixed precision (bf16 activations, f32 LoRA factors): the wider of the two, explicitly
    # (no implicit promotion); equal dtypes are untouched.
    dtype = max(jnp.dtype(flat.dtype), jnp.dtype(kernel.dtype), key=lambda d: d.itemsize)
    y = jnp.dot(flat.astype(dtype), kernel.reshape(flat.shape[-1], -1).astype(dtype))
    return y.reshape(*lead, *out_shape)


def project(spec: str, x: Array, kernel: Any) -> Array:
    """``jnp.einsum(spec, x, kernel)`` for a kernel array, plus the wrapper's term otherwise.

    ``spec`` must contract x's trailing axes with the kernel's leading axes and put the
    kernel's remaining axes last (as every projection of a dense layer does).
    """
    if isinstance(kernel, (ProbedKernel, LoraKernel)):
        base = project(spec, x, kernel.base)
        delta = kernel.delta(x)
        if delta.shape != base.shape:
            raise ValueError(f"project({spec!r}): the kernel's low-rank term has shape {delta.shape}, the einsum {base.shape}")
        return base + delta.astype(base.dtype)
    return jnp.einsum(spec, x, kernel)


class _Wrapped:
    """Array-like surface of a wrapped kernel (what modules read from their kernels)."""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.base.shape

    @property
    def dtype(self) -> Any:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return len(self.base.shape)

    def __getitem__(self, index: Any) -> Any:
        # ``nnx.Variable[...]`` indexes its value with Ellipsis: the wrapper is the value.
        if index is Ellipsis:
            return self
        raise TypeError(f"{type(self).__name__} supports only [...] indexing, got {index!r}")

    def _in_out(self) -> tuple[int, int]:
        return math.prod(self.base.shape[: self.n_in]), math.prod(self.base.shape[self.n_in :])


class ProbedKernel(_Wrapped):
    """W plus a zero-valued sketch probe ((x Γ_a) E) Γ_bᵀ; ∂ℓ/∂E is the Kronecker sketch of ∂ℓ/∂W.

    Attributes:
      base: the kernel W (its gradient is not taken through this wrapper).
      left: Γ_a [a, m_a].
      core: E [m_a, m_b], zero; differentiate with respect to it.
      right: Γ_b [b, m_b].
      n_in: leading kernel axes contracted with the input (a = their product).
    """

    base: Any
    left: Array
    core: Array
    right: Array
    n_in: int

    def delta(self, x: Array) -> Array:
        a, _ = self._in_out()
        flat, lead = _matrix(x, self.n_in, a)
        u = jnp.dot(flat, self.left.astype(flat.dtype), preferred_element_type=jnp.float32)  # [.., m_a]
        z = jnp.dot(u, self.core.astype(jnp.float32))  # [.., m_b], zero in value
        y = jnp.dot(z, self.right.T.astype(jnp.float32))  # [.., b]
        return y.reshape(*lead, *self.base.shape[self.n_in :])


ProbedKernel = pytree_dataclass(ProbedKernel, meta_fields=("n_in",))


class LoraKernel(_Wrapped):
    """W + scale · A B (LoRA); A [a, r], B [r, b] for the kernel read as an [a, b] matrix.

    Attributes:
      base: the frozen kernel W.
      a: A [a, r] (array or ``ProbedKernel``).
      b: B [r, b] (array or ``ProbedKernel``); zero at initialisation, so the adapted
        model starts equal to the base model.
      scale: s = α / r.
      n_in: leading kernel axes contracted with the input.
    """

    base: Any
    a: Any
    b: Any
    scale: float
    n_in: int

    def delta(self, x: Array) -> Array:
        a, _ = self._in_out()
        flat, lead = _matrix(x, self.n_in, a)
        low = contract(contract(flat, self.a), self.b)  # [.., b]
        return (self.scale * low).reshape(*lead, *self.base.shape[self.n_in :])


LoraKernel = pytree_dataclass(LoraKernel, meta_fields=("scale", "n_in"))


def lora_factors(key: Array, kernel_shape: tuple[int, ...], rank: int, *, n_in: int = 1, dtype: Any = jnp.float32) -> tuple[Array, Array]:
    """LoRA's initial (A, B): A ~ N(0, 1/a) [a, r], B = 0 [r, b]."""
    rank = check_positive_int(rank, "LoRA rank")
    a, b = math.prod(kernel_shape[:n_in]), math.prod(kernel_shape[n_in:])
    if rank > min(a, b):
        raise ValueError(f"LoRA rank {rank} exceeds the kernel's smaller side min({a}, {b})")
    factor_a = jax.random.normal(key, (a, rank), jnp.float32) / math.sqrt(a)
    return factor_a.astype(dtype), jnp.zeros((rank, b), dtype)


__all__ = ["LoraKernel", "ProbedKernel", "contract", "lora_factors", "project"]
