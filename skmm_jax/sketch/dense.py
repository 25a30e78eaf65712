"""Dense JL sketches: Gaussian N(0, 1/m) and Rademacher ±1/√m entries.

For large r the r×m matrix Γ is never held at once. Γ is cut into row blocks of
``block_size`` rows, and block b is regenerated from ``fold_in(key, b)`` each time it
is needed, so memory is O(block_size · m) while x Γ = Σ_b x[:, block b] Γ_b is
accumulated in float32. The transform is a function of (key, r, m, block_size) only:
the batch size and any chunking of the rows do not change it.

Cost: O(B · r · m) multiply-adds plus r · m random draws per call. Use these when r
is moderate or the accelerator is matmul-bound; the sparse kinds are O(B · r · s).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from skmm_jax.common.checks import as_key, check_positive_int
from skmm_jax.common.pytree import Array, pytree_dataclass
from skmm_jax.sketch.base import SketchKind, check_batch, check_dims

DISTRIBUTIONS = ("gaussian", "rademacher")

# About 8 MiB of float32 per regenerated block: large enough for an efficient matmul,
# small enough to stay in cache-sized working sets.
_BLOCK_ELEMENTS = 1 << 21


class DenseSketch:
    """Γ with i.i.d. entries, N(0, 1/m) or uniform ±1/√m, regenerated block by block.

    Attributes:
      key: the PRNG key Γ is a function of.
      in_dim: r.
      out_dim: m.
      distribution: "gaussian" or "rademacher".
      block_size: rows of Γ generated at once (part of the transform's identity).
    """

    key: Array
    in_dim: int
    out_dim: int
    distribution: str
    block_size: int

    @property
    def kind(self) -> str:
        return self.distribution

    def block(self, index: Array | int, rows: int) -> Array:
        """Rows [index·block_size, index·block_size + rows) of Γ, as float32 [rows, m]."""
        k = jax.random.fold_in(self.key, index)
        shape = (rows, self.out_dim)
        if self.distribution == "gaussian":
            entries = jax.random.normal(k, shape, jnp.float32)
        else:
            entries = jax.random.rademacher(k, shape, jnp.float32)
        return entries * jnp.float32(1.0 / math.sqrt(self.out_dim))

    def matrix(self) -> Array:
        """The whole Γ, float32 [r, m] (for small r·m: e.g. the factors of a Kronecker sketch)."""
        n_full, tail = divmod(self.in_dim, self.block_size)
        blocks = [self.block(b, self.block_size) for b in range(n_full)]
        if tail:
            blocks.append(self.block(n_full, tail))
        return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=0)

    def __call__(self, x: Array) -> Array:
        x = check_batch(x, self.in_dim, kind=self.distribution)
        batch, bs = x.shape[0], self.block_size
        n_full, tail = divmod(self.in_dim, bs)

        def add_block(acc: Array, x_block: Array, gamma_block: Array) -> Array:
            return acc + jnp.dot(x_block, gamma_block.astype(x.dtype), preferred_element_type=jnp.float32)

        def body(b: Array, acc: Array) -> Array:
            x_block = lax.dynamic_slice_in_dim(x, b * bs, bs, axis=1)  # [B, bs]
            return add_block(acc, x_block, self.block(b, bs))

        acc = jnp.zeros((batch, self.out_dim), jnp.float32)  # [B, m]
        if n_full == 1:
            acc = body(0, acc)
        elif n_full > 1:
            acc = lax.fori_loop(0, n_full, body, acc)
        if tail:
            acc = add_block(acc, x[:, n_full * bs :], self.block(n_full, tail))
        return acc


DenseSketch = pytree_dataclass(DenseSketch, meta_fields=("in_dim", "out_dim", "distribution", "block_size"))


def dense_sketch(
    key: Array,
    in_dim: int,
    out_dim: int,
    *,
    distribution: str = "gaussian",
    block_size: int | None = None,
) -> DenseSketch:
    """Builds a dense Gaussian or Rademacher sketch.

    Args:
      key: PRNG key; the same key gives the same Γ.
      in_dim: r, length of the input rows.
      out_dim: m, sketch dimension.
      distribution: "gaussian" (N(0, 1/m)) or "rademacher" (±1/√m).
      block_size: rows of Γ regenerated at once; default keeps a block near 8 MiB.
        Changing it changes Γ (blocks are keyed by their index).
    """
    in_dim, out_dim = check_dims(in_dim, out_dim, kind=distribution)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if block_size is None:
        block_size = max(1, min(in_dim, _BLOCK_ELEMENTS // out_dim))
    block_size = check_positive_int(block_size, "block_size")
    return DenseSketch(as_key(key), in_dim, out_dim, distribution, block_size)


GAUSSIAN = SketchKind(
    "gaussian",
    lambda key, in_dim, out_dim, **options: dense_sketch(key, in_dim, out_dim, distribution="gaussian", **options),
    options=("block_size",),
    summary="dense N(0, 1/m) entries, regenerated block by block; O(B r m)",
)
RADEMACHER = SketchKind(
    "rademacher",
    lambda key, in_dim, out_dim, **options: dense_sketch(key, in_dim, out_dim, distribution="rademacher", **options),
    options=("block_size",),
    summary="dense ±1/√m entries, regenerated block by block; O(B r m)",
)
