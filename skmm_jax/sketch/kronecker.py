"""Kronecker-factored sketch for the gradient of a linear map.

A linear layer's per-sample weight gradient is a sum of outer products over the
T positions (tokens) of the sample,

    G = Σ_t u_t v_tᵀ ∈ R^{a×b}     (e.g. u = layer input x_t, v = output gradient δ_t
                                    for a flax kernel [d_in, d_out]),

so its r = a·b entries need never be formed. With Γ = Γ_a ⊗ Γ_b (Γ_a ∈ R^{a×m_a},
Γ_b ∈ R^{b×m_b}, both N(0, 1/m_·)), and vec the row-major flattening,

    vec(G) Γ = vec(Γ_aᵀ G Γ_b) = vec(Σ_t (Γ_aᵀ u_t)(Γ_bᵀ v_t)ᵀ),

which costs O(T (a m_a + b m_b) + T m_a m_b) per sample instead of O(T a b + a b m).
E‖vec(G)Γ‖² = ‖G‖²_F because the two factors are independent and each preserves
norms in expectation; the distortion is larger than a dense Gaussian of the same m
(a product of two JL maps), which the benchmark quantifies.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from skmm_jax.common.checks import as_key
from skmm_jax.common.pytree import Array, pytree_dataclass
from skmm_jax.sketch.base import SketchKind, check_batch, check_dims
from skmm_jax.sketch.dense import DenseSketch, dense_sketch


class KroneckerSketch:
    """Γ = Γ_a ⊗ Γ_b acting on row-major flattened [a, b] matrices.

    Attributes:
      left: dense sketch a → m_a (Γ_a).
      right: dense sketch b → m_b (Γ_b).
    """

    left: DenseSketch
    right: DenseSketch

    kind = "kronecker"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.in_dim, self.right.in_dim)

    @property
    def in_dim(self) -> int:
        return self.left.in_dim * self.right.in_dim

    @property
    def out_dim(self) -> int:
        return self.left.out_dim * self.right.out_dim

    def __call__(self, x: Array) -> Array:
        """Sketches materialised gradients: ``[B, a·b] → [B, m_a·m_b]``."""
        x = check_batch(x, self.in_dim, kind="kronecker")
        batch, (a, b) = x.shape[0], self.shape
        ma, mb = self.left.out_dim, self.right.out_dim
        g_right = self.right(x.reshape(batch * a, b)).reshape(batch, a, mb)  # G Γ_b  [B, a, mb]
        g_right_t = jnp.swapaxes(g_right, 1, 2).reshape(batch * mb, a)  # [B·mb, a]
        both = self.left(g_right_t).reshape(batch, mb, ma)  # (Γ_aᵀ G Γ_b)ᵀ  [B, mb, ma]
        return jnp.swapaxes(both, 1, 2).reshape(batch, ma * mb)

    def apply_factors(self, left: Array, right: Array) -> Array:
        """Sketches G_i = Σ_t left[i, t] right[i, t]ᵀ without forming G_i.

        Args:
          left: [B, T, a] (e.g. layer inputs per position).
          right: [B, T, b] (e.g. output gradients per position).

        Returns:
          [B, m_a·m_b], equal to ``self(vec(G))``.
        """
        a, b = self.shape
        if left.ndim != 3 or right.ndim != 3 or left.shape[:2] != right.shape[:2]:
            raise ValueError(
                f"kronecker apply_factors expects left [B, T, {a}] and right [B, T, {b}] with the same B, T; "
                f"got {tuple(left.shape)} and {tuple(right.shape)}"
            )
        if left.shape[2] != a or right.shape[2] != b:
            raise ValueError(f"kronecker sketch was built for [{a}, {b}] gradients, got factors of width {left.shape[2]}, {right.shape[2]}")
        batch, steps = left.shape[:2]
        u = self.left(left.reshape(batch * steps, a)).reshape(batch, steps, -1)  # [B, T, ma]
        v = self.right(right.reshape(batch * steps, b)).reshape(batch, steps, -1)  # [B, T, mb]
        return jnp.einsum("bti,btj->bij", u, v).reshape(batch, -1)


KroneckerSketch = pytree_dataclass(KroneckerSketch, meta_fields=())


def split_dim(total: int) -> tuple[int, int]:
    """Factor total = p · q with p ≤ q as close to √total as divisors allow."""
    p = int(math.isqrt(total))
    while total % p:
        p -= 1
    return p, total // p


def kronecker_sketch(
    key: Array,
    shape: tuple[int, int],
    out_dim: int | tuple[int, int],
) -> KroneckerSketch:
    """Builds Γ_a ⊗ Γ_b for gradients of shape (a, b).

    Args:
      key: PRNG key; factors use ``fold_in(key, 0)`` and ``fold_in(key, 1)``.
      shape: (a, b), the gradient matrix shape (a flax kernel's (d_in, d_out)).
      out_dim: m = m_a · m_b, split as evenly as its divisors allow, or an explicit
        (m_a, m_b).
    """
    if len(shape) != 2:
        raise ValueError(f"kronecker sketch needs a 2-D gradient shape (a, b), got {shape!r}")
    a, b = (int(s) for s in shape)
    if isinstance(out_dim, tuple):
        ma, mb = out_dim
    else:
        check_dims(a * b, out_dim, kind="kronecker")
        ma, mb = split_dim(out_dim)
        if a < b:  # give the larger factor to the larger side
            ma, mb = min(ma, mb), max(ma, mb)
        else:
            ma, mb = max(ma, mb), min(ma, mb)
    check_dims(a, ma, kind="kronecker (left factor)")
    check_dims(b, mb, kind="kronecker (right factor)")
    key = as_key(key)
    return KroneckerSketch(
        dense_sketch(jax.random.fold_in(key, 0), a, ma),
        dense_sketch(jax.random.fold_in(key, 1), b, mb),
    )


def kronecker_flat(key: Array, in_dim: int, out_dim: int, *, shape: tuple[int, int] | None = None) -> KroneckerSketch:
    """A Kronecker sketch of flattened [a, b] rows, r = a·b (default: the most square a, b)."""
    shape = shape or split_dim(in_dim)
    if shape[0] * shape[1] != in_dim:
        raise ValueError(f"kronecker sketch: shape {tuple(shape)} has {shape[0] * shape[1]} entries, in_dim is {in_dim}")
    return kronecker_sketch(key, tuple(shape), out_dim)


def kronecker_leaf(key: Array, shape: tuple[int, ...], out_dim: int, *, n_in: int = 1, **options) -> KroneckerSketch | DenseSketch:
    """A pytree leaf's sketch: a kernel [*in, *out] (n_in leading axes contracted with the
    layer input) gets Γ_a ⊗ Γ_b on [prod(in), prod(out)]; a 1-D leaf (bias, norm scale) a
    dense Gaussian one."""
    if options:
        raise ValueError(f"kronecker sketch of a pytree takes no options (each leaf's matrix shape comes from the leaf and split=), got {sorted(options)}")
    if len(shape) < 2:
        return dense_sketch(key, math.prod(shape), out_dim)
    return kronecker_flat(key, math.prod(shape), out_dim, shape=(math.prod(shape[:n_in]), math.prod(shape[n_in:])))


KRONECKER = SketchKind(
    "kronecker",
    kronecker_flat,
    options=("shape",),
    leaf=kronecker_leaf,
    factored=True,
    summary="Γ_a ⊗ Γ_b of two dense Gaussians on [a, b] matrices (a linear layer's gradient, never formed)",
)
