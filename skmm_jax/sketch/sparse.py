"""Sparse sign sketches: SJLT with s non-zeros per input coordinate, and CountSketch (s = 1).

Block construction (Kane & Nelson): the m outputs are split into s blocks of
w = m/s buckets. Input coordinate i is sent, in every block k, to one bucket
h_k(i) with a random sign σ_k(i), scaled by 1/√s:

    (x Γ)[k·w + j] = (1/√s) Σ_{i : h_k(i) = j} σ_k(i) x_i .

Then E‖xΓ‖² = ‖x‖² and Var‖xΓ‖² ≤ (2/m)‖x‖⁴ whenever signs are independent and any
two coordinates collide with probability ≤ 1/w in each block; that second-moment
bound is all the JL and subspace-embedding proofs for CountSketch/SJLT use.

Two hash families satisfy it:

* ``hashing="shift"`` (default). Coordinates are cut into contiguous chunks of w;
  chunk c is cyclically shifted by an independent uniform offset ρ_k(c):
  h_k(i) = (i mod w + ρ_k(⌊i/w⌋)) mod w. Two coordinates of the same chunk never
  collide; two of different chunks collide with probability exactly 1/w, and
  their buckets are independent and uniform (pairwise independence). Applying it
  streams over x in contiguous [B, w] slices added into a [B, 2w] buffer at a
  dynamic offset: no gather, no scatter, one pass over x — close to the cost of
  reading x once on CPU.
* ``hashing="uniform"``: textbook fully random buckets h_k(i) ~ U[0, w), applied by
  a scatter-add over column tiles (XLA's scatter is fast on GPU, slow on CPU).

Cost O(B · r · s) either way. Tables (signs, offsets or buckets) are drawn once at
construction and are the pytree's leaves.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from skmm_jax.common.checks import as_key, check_positive_int
from skmm_jax.common.pytree import Array, pytree_dataclass
from skmm_jax.sketch.base import SketchKind, check_batch, check_dims

HASHINGS = ("shift", "uniform")

# Columns of x read per loop step with hashing="shift".
_SLAB = 512
# Columns scattered per step with hashing="uniform": bounds the transposed tile in memory.
_SCATTER_TILE = 16384


class SparseSignSketch:
    """SJLT / CountSketch with s non-zeros ±1/√s per input coordinate.

    Attributes:
      signs: [s, r] float32 ±1, σ_k(i).
      table: hashing="shift": [s, ⌈r/w⌉] int32 chunk offsets ρ_k(c) in [0, w);
        hashing="uniform": [s, r] int32 buckets h_k(i) in [0, w).
      in_dim: r.
      out_dim: m = s · w.
      nnz: s, non-zeros per input coordinate (1 = CountSketch).
      hashing: "shift" or "uniform".
    """

    signs: Array
    table: Array
    in_dim: int
    out_dim: int
    nnz: int
    hashing: str

    @property
    def kind(self) -> str:
        return "countsketch" if self.nnz == 1 else "sjlt"

    @property
    def width(self) -> int:
        """w = m / s, buckets per block."""
        return self.out_dim // self.nnz

    def __call__(self, x: Array) -> Array:
        x = check_batch(x, self.in_dim, kind=self.kind)
        if self.hashing == "shift":
            blocks = self._apply_shift(x)
        else:
            blocks = self._apply_uniform(x)
        out = jnp.concatenate(blocks, axis=1) if self.nnz > 1 else blocks[0]  # [B, m]
        return out * jnp.float32(1.0 / math.sqrt(self.nnz))

    def _apply_shift(self, x: Array) -> list[Array]:
        batch, w, s = x.shape[0], self.width, self.nnz
        n_chunks, tail = divmod(self.in_dim, w)
        # Read x in slabs of several chunks (≥ _SLAB columns) per loop step: narrow
        # [B, w] slices of a wide row-major x are strided, short reads, so small w
        # (e.g. m = 128, s = 4 → w = 32) would otherwise be dominated by memory latency.
        per_slab = max(1, _SLAB // w)
        n_slabs, rest = divmod(n_chunks, per_slab)

        def add_slab(bufs, first_chunk, widths):
            # bufs[k] is [B, 2w]: a chunk shifted by ρ lands in columns [ρ, ρ + width),
            # and columns ≥ w are folded back onto [0, w) at the end (the "mod w").
            start = first_chunk * w
            x_slab = lax.dynamic_slice_in_dim(x, start, sum(widths), axis=1)  # [B, L]
            sign_slab = lax.dynamic_slice_in_dim(self.signs, start, sum(widths), axis=1)  # [s, L]
            bufs = list(bufs)
            for k in range(s):
                signed = (x_slab * sign_slab[k][None, :].astype(x.dtype)).astype(jnp.float32)
                for j, width in enumerate(widths):
                    rho = self.table[k, first_chunk + j]
                    current = lax.dynamic_slice_in_dim(bufs[k], rho, width, axis=1)
                    chunk = signed[:, j * w : j * w + width]
                    bufs[k] = lax.dynamic_update_slice_in_dim(bufs[k], current + chunk, rho, axis=1)
            return tuple(bufs)

        bufs = tuple(jnp.zeros((batch, 2 * w), jnp.float32) for _ in range(s))
        if n_slabs:
            bufs = lax.fori_loop(0, n_slabs, lambda i, b: add_slab(b, i * per_slab, (w,) * per_slab), bufs)
        last = (w,) * rest + ((tail,) if tail else ())
        if last:
            bufs = add_slab(bufs, n_slabs * per_slab, last)
        return [b[:, :w] + b[:, w:] for b in bufs]

    def _apply_uniform(self, x: Array) -> list[Array]:
        batch, w, s = x.shape[0], self.width, self.nnz
        tile = min(_SCATTER_TILE, self.in_dim)
        n_full, tail = divmod(self.in_dim, tile)

        # Scatter rows of the transposed tile: each update is a contiguous length-B
        # vector, which XLA vectorises; scattering columns of [B, m] does not.
        def add_tile(bufs, start, width):
            x_tile = lax.dynamic_slice_in_dim(x, start, width, axis=1).astype(jnp.float32)  # [B, t]
            sign_tile = lax.dynamic_slice_in_dim(self.signs, start, width, axis=1)  # [s, t]
            bucket_tile = lax.dynamic_slice_in_dim(self.table, start, width, axis=1)  # [s, t]
            return tuple(
                bufs[k].at[bucket_tile[k]].add((x_tile * sign_tile[k][None, :]).T) for k in range(s)
            )

        bufs = tuple(jnp.zeros((w, batch), jnp.float32) for _ in range(s))  # [w, B] each
        if n_full:
            bufs = lax.fori_loop(0, n_full, lambda t, b: add_tile(b, t * tile, tile), bufs)
        if tail:
            bufs = add_tile(bufs, n_full * tile, tail)
        return [b.T for b in bufs]


SparseSignSketch = pytree_dataclass(SparseSignSketch, meta_fields=("in_dim", "out_dim", "nnz", "hashing"))


def sparse_sign_sketch(
    key: Array,
    in_dim: int,
    out_dim: int,
    *,
    nnz: int = 4,
    hashing: str = "shift",
) -> SparseSignSketch:
    """Builds an SJLT with ``nnz`` non-zeros per input coordinate (``nnz=1``: CountSketch).

    Args:
      key: PRNG key; the same key gives the same Γ.
      in_dim: r.
      out_dim: m; must be a multiple of ``nnz`` (block construction).
      nnz: s ≥ 1, non-zeros per input coordinate. s = 2–8 gives near-Gaussian
        distortion at O(s) cost per input entry.
      hashing: "shift" (fast streaming, pairwise-independent buckets) or "uniform".
    """
    kind = "countsketch" if nnz == 1 else "sjlt"
    in_dim, out_dim = check_dims(in_dim, out_dim, kind=kind)
    nnz = check_positive_int(nnz, f"{kind} sketch: nnz")
    if out_dim % nnz:
        raise ValueError(f"{kind} sketch: out_dim={out_dim} must be a multiple of nnz={nnz} (s blocks of m/s buckets)")
    if hashing not in HASHINGS:
        raise ValueError(f"hashing {hashing!r} is not one of {', '.join(HASHINGS)} ({kind} sketch)")
    width = out_dim // nnz
    sign_key, table_key = jax.random.split(as_key(key))
    signs = jax.random.rademacher(sign_key, (nnz, in_dim), jnp.float32)
    n_cols = -(-in_dim // width) if hashing == "shift" else in_dim
    table = jax.random.randint(table_key, (nnz, n_cols), 0, width, jnp.int32)
    return SparseSignSketch(signs, table, in_dim, out_dim, nnz, hashing)


def count_sketch(key: Array, in_dim: int, out_dim: int, *, hashing: str = "shift") -> SparseSignSketch:
    """CountSketch: one ±1 per input coordinate (an SJLT with nnz = 1)."""
    return sparse_sign_sketch(key, in_dim, out_dim, nnz=1, hashing=hashing)


SJLT = SketchKind(
    "sjlt",
    sparse_sign_sketch,
    options=("nnz", "hashing"),
    summary="sparse JL transform, nnz (default 4) entries ±1/√nnz per input coordinate; O(B r nnz)",
)
COUNTSKETCH = SketchKind(
    "countsketch",
    count_sketch,
    options=("hashing",),
    summary="CountSketch, one ±1 per input coordinate; O(B r)",
)
