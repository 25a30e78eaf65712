"""The default job: sketch the per-sample gradients of a small network with every kind.

A self-contained check of the sketches on generated data (the real-task pipeline is
``benchmarks/real_lp_ft.py``): a regression MLP f(x; θ) = w₂ᵀ tanh(W₁ᵀx + b₁) + b₂ on
inputs from a Gaussian mixture (so the per-sample gradients have a low intrinsic
dimension, as finetuning gradients do).
Per-sample gradients ∇_θ f(x_i; θ₀) come from ``vmap(grad)`` as a pytree and are
sketched leaf by leaf; the exact gradient matrix G is also formed (it is small
here) to measure what each sketch preserves.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from skmm_jax.common.checks import check_positive_fields
from skmm_jax.common.streaming import stream_chunks
from skmm_jax.sketch import KINDS, make_pytree_sketch
from skmm_jax.sketch.quality import inner_product_error, norm_ratios, subspace_distortion


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo problem."""

    samples: int = 2048
    input_dim: int = 32
    hidden: int = 256
    clusters: int = 8
    sketch_dim: int = 256
    subspace_rank: int = 32
    chunk_size: int = 256
    seed: int = 0

    def __post_init__(self):
        check_positive_fields(self, ("samples", "input_dim", "hidden", "clusters", "sketch_dim", "subspace_rank", "chunk_size"))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed!r}")


@dataclasses.dataclass(frozen=True)
class DemoRow:
    kind: str
    seconds: float
    norm_ratio_mean: float
    norm_ratio_max_dev: float
    inner_product_error: float
    subspace_distortion: float


def _mlp(params: dict, x: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"][0]


def _init(key: jax.Array, cfg: DemoConfig) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (cfg.input_dim, cfg.hidden)) / np.sqrt(cfg.input_dim),
        "b1": jnp.zeros((cfg.hidden,)),
        "w2": jax.random.normal(k2, (cfg.hidden,)) / np.sqrt(cfg.hidden),
        "b2": jnp.zeros((1,)),
    }


def _mixture(key: jax.Array, cfg: DemoConfig) -> jax.Array:
    k_means, k_assign, k_noise = jax.random.split(key, 3)
    means = 2.0 * jax.random.normal(k_means, (cfg.clusters, cfg.input_dim))
    assign = jax.random.randint(k_assign, (cfg.samples,), 0, cfg.clusters)
    return means[assign] + 0.3 * jax.random.normal(k_noise, (cfg.samples, cfg.input_dim))


def _stream(apply: Callable[[jax.Array], jax.Array], x: jax.Array, chunk_size: int) -> np.ndarray:
    """``apply`` over fixed-shape chunks of the rows of x (``stream_chunks``), rows concatenated."""
    out: list[np.ndarray] = []
    stream_chunks(apply, lambda start, stop: x[start:stop], lambda start, stop, rows: out.append(rows), x.shape[0], chunk_size)
    return np.concatenate(out)


def run_demo(cfg: DemoConfig = DemoConfig(), *, on_kind: Callable[[DemoRow], None] | None = None) -> list[DemoRow]:
    """Sketches per-sample gradients with every kind; returns one row of metrics per kind.

    Raises:
      ValueError: a sketch dimension some kind cannot build (e.g. sjlt needs a multiple
        of its nnz = 4), before any gradient is computed.
    """
    key = jax.random.key(cfg.seed)
    k_data, k_init, k_sketch = jax.random.split(key, 3)
    params = _init(k_init, cfg)
    # Every sketch is built first, so a sketch_dim some kind rejects fails in a second.
    sketches = {}
    for kind in KINDS:
        try:
            sketches[kind] = make_pytree_sketch(kind, k_sketch, params, cfg.sketch_dim)
        except ValueError as err:
            raise ValueError(f"sketch_dim {cfg.sketch_dim} does not suit the {kind} sketch: {err}") from None
    x = _mixture(k_data, cfg)
    per_sample_grads = jax.jit(jax.vmap(jax.grad(_mlp), in_axes=(None, 0)))

    # Exact G for reference (small here; the sketches never need it).
    flat = jax.jit(jax.vmap(lambda g: ravel_pytree(g)[0]))
    g_full = _stream(lambda xs: flat(per_sample_grads(params, xs)), x, cfg.chunk_size)
    _, unravel = ravel_pytree(params)
    basis = np.linalg.svd(g_full, full_matrices=False)[2][: cfg.subspace_rank]  # [k, r] top right singular vectors
    basis_tree = jax.vmap(unravel)(jnp.asarray(basis, jnp.float32))
    probe = slice(0, 512)

    rows = []
    for kind in KINDS:
        sketch = sketches[kind]

        @jax.jit
        def sketch_chunk(sk, p, xs):
            return sk(per_sample_grads(p, xs))

        sketch_chunk(sketch, params, x[: cfg.chunk_size]).block_until_ready()  # compile
        start = time.perf_counter()
        sketched = _stream(lambda xs: sketch_chunk(sketch, params, xs), x, cfg.chunk_size)
        seconds = time.perf_counter() - start
        ratios = norm_ratios(g_full, sketched)
        row = DemoRow(
            kind=kind,
            seconds=seconds,
            norm_ratio_mean=float(ratios.mean()),
            norm_ratio_max_dev=float(np.max(np.abs(ratios - 1.0))),
            inner_product_error=inner_product_error(g_full[probe], sketched[probe]),
            subspace_distortion=subspace_distortion(np.asarray(jax.jit(lambda sk, t: sk(t))(sketch, basis_tree))),
        )
        if on_kind is not None:
            on_kind(row)
        rows.append(row)
    return rows
