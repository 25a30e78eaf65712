"""Sketch kinds: JL property, subspace embedding, determinism, pytree and Kronecker identities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from skmm_jax.sketch import (
    KINDS,
    fwht,
    kronecker_sketch,
    make_pytree_sketch,
    make_sketch,
    sketch_matrix,
    sketch_rows,
)
from skmm_jax.sketch.quality import subspace_distortion
from skmm_jax.sketch.srht import _hadamard

# Every kind, plus the textbook hash for the sparse ones.
VARIANTS = [(k, {}) for k in KINDS] + [("sjlt", {"hashing": "uniform"}), ("countsketch", {"hashing": "uniform"})]
IDS = [k + ("-" + o["hashing"] if o else "") for k, o in VARIANTS]
R = 4096  # = 64 × 64 for the Kronecker kind


def build(kind, options, key, r=R, m=256):
    if kind == "kronecker":
        return make_sketch(kind, key, r, m, shape=(64, r // 64))
    return make_sketch(kind, key, r, m, **options)


_apply = jax.jit(lambda s, v: s(v))  # one compilation per sketch type and shapes


def apply(sketch, x):
    return np.asarray(_apply(sketch, jnp.asarray(x, jnp.float32)), np.float64)


def probe_vectors(rng, r):
    """Dense Gaussian rows, one-hot rows and spiky rows: the sparse kinds' hard cases."""
    dense = rng.standard_normal((8, r))
    one_hot = np.eye(r)[rng.choice(r, 4, replace=False)]
    spiky = rng.standard_normal((4, r)) * (rng.random((4, r)) < 0.01)
    return np.concatenate([dense, one_hot, spiky]).astype(np.float32)


@pytest.mark.parametrize("kind,options", VARIANTS, ids=IDS)
def test_norm_is_preserved_in_expectation(kind, options):
    """E_Γ ‖xΓ‖² = ‖x‖² for every fixed x, averaged over independent transforms."""
    rng = np.random.default_rng(0)
    x = probe_vectors(rng, R)
    norms = np.sum(x.astype(np.float64) ** 2, axis=1)
    ratios = np.stack([np.sum(apply(build(kind, options, jax.random.key(s), m=128), x) ** 2, axis=1) / norms for s in range(48)])
    per_key = ratios.mean(axis=1)  # [keys]
    stderr = per_key.std(ddof=1) / math.sqrt(len(per_key))
    assert abs(per_key.mean() - 1.0) < max(4 * stderr, 0.02), (per_key.mean(), stderr)
    # Concentration: one draw is within O(1/√m) of the norm for dense rows.
    assert np.median(np.abs(ratios[:, :8] - 1.0)) < (1.0 if kind == "kronecker" else 0.3)


@pytest.mark.parametrize("kind,options", VARIANTS, ids=IDS)
def test_subspace_embedding_of_low_rank_matrix(kind, options):
    """A rank-k row space is embedded with small ε once m = O(k)."""
    rng = np.random.default_rng(1)
    k = 8
    basis = np.linalg.qr(rng.standard_normal((R, k)))[0].T  # [k, r] orthonormal rows
    basis[0] = 0.0
    basis[0, 17] = 1.0  # a coordinate-aligned direction too (orthogonal enough for the test)
    basis = np.linalg.qr(basis.T)[0].T.astype(np.float32)
    bound = 0.75 if kind == "kronecker" else 0.5
    for seed in range(3):
        eps = subspace_distortion(apply(build(kind, options, jax.random.key(seed), m=512), basis))
        assert eps < bound, (seed, eps)


def test_wrong_scale_would_be_caught():
    """The distortion metric itself flags a sketch that is off by a factor."""
    basis = np.eye(8, 64)
    assert subspace_distortion(2.0 * basis) > 2.0
    assert subspace_distortion(basis) < 1e-12


@pytest.mark.parametrize("kind,options", VARIANTS, ids=IDS)
def test_deterministic_and_chunk_invariant(kind, options):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((37, R)).astype(np.float32)
    a = build(kind, options, jax.random.key(5))
    b = build(kind, options, jax.random.key(5))
    c = build(kind, options, jax.random.key(6))
    full = apply(a, x)
    np.testing.assert_array_equal(full, apply(b, x))
    assert not np.allclose(full, apply(c, x))
    pieces = np.concatenate([apply(a, x[i : i + 5]) for i in range(0, 37, 5)])
    np.testing.assert_allclose(pieces, full, rtol=1e-4, atol=1e-4)
    for chunk in (1, 8, 64):
        np.testing.assert_allclose(sketch_rows(a, x, chunk_size=chunk), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,options", VARIANTS, ids=IDS)
def test_jit_equals_eager_equals_matrix(kind, options):
    sketch = build(kind, options, jax.random.key(3), r=256 if kind != "kronecker" else 256, m=32) if kind != "kronecker" else make_sketch(
        "kronecker", jax.random.key(3), 256, 32, shape=(16, 16)
    )
    x = jnp.asarray(np.random.default_rng(3).standard_normal((6, 256)), jnp.float32)
    eager = np.asarray(sketch(x))
    jitted = np.asarray(_apply(sketch, x))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    gamma = np.asarray(sketch_matrix(sketch), np.float64)
    np.testing.assert_allclose(np.asarray(x, np.float64) @ gamma, eager, rtol=1e-4, atol=1e-4)


def test_dense_blocks_match_one_materialised_matrix():
    """Regenerating Γ in blocks (with a tail block) gives x @ Γ for the stacked blocks."""
    sketch = make_sketch("gaussian", jax.random.key(0), 1000, 16, block_size=300)  # 3 blocks + tail of 100
    gamma = np.concatenate([np.asarray(sketch.block(b, 300)) for b in range(3)] + [np.asarray(sketch.block(3, 100))])
    x = np.random.default_rng(0).standard_normal((4, 1000)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(sketch(jnp.asarray(x))), x @ gamma, rtol=1e-4, atol=1e-4)
    entries = gamma * math.sqrt(16)
    assert abs(entries.mean()) < 0.02 and abs(entries.std() - 1.0) < 0.02


def test_sparse_structure():
    """SJLT columns of Γ have exactly s non-zeros of magnitude 1/√s, one per block."""
    s, m, r = 4, 64, 300
    for hashing in ("shift", "uniform"):
        gamma = np.asarray(sketch_matrix(make_sketch("sjlt", jax.random.key(0), r, m, nnz=s, hashing=hashing)))
        nz = np.abs(gamma) > 0
        assert (nz.sum(axis=1) == s).all()
        np.testing.assert_allclose(np.abs(gamma[nz]), 1 / math.sqrt(s), rtol=1e-6)
        assert (nz.reshape(r, s, m // s).sum(axis=2) == 1).all()
    # shift hashing: coordinates of one chunk (w = m/s wide) never share a bucket.
    gamma = np.asarray(sketch_matrix(make_sketch("countsketch", jax.random.key(1), r, 32)))
    buckets = np.argmax(np.abs(gamma), axis=1)
    for start in range(0, r - 32, 32):
        assert len(set(buckets[start : start + 32])) == 32


def test_fwht_matches_hadamard_matrix():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(fwht(jnp.asarray(x))), x @ _hadamard(64), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_pytree_equals_flat_stacked_transform(kind):
    """Leaf-by-leaf sketching equals the concatenated vector times the stacked Γ_l."""
    example = {"w": jnp.zeros((16, 32)), "b": jnp.zeros((32,)), "scale": jnp.zeros((7,))}
    sketch = make_pytree_sketch(kind, jax.random.key(0), example, 64)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.standard_normal((5, *v.shape)), jnp.float32) for k, v in example.items()}
    leaves, _ = jax.tree.flatten(batch)
    flat = np.concatenate([np.asarray(leaf).reshape(5, -1) for leaf in leaves], axis=1)
    stacked = np.concatenate([np.asarray(sketch_matrix(s)) for s in sketch.leaves])
    assert stacked.shape == (sketch.in_dim, 64)
    np.testing.assert_allclose(np.asarray(_apply(sketch, batch)), flat @ stacked, rtol=1e-4, atol=1e-4)
    if kind == "kronecker":
        assert type(sketch.leaves[sorted(example).index("w")]).__name__ == "KroneckerSketch"


def test_kronecker_equals_explicit_outer_product():
    a, b, steps, batch = 12, 20, 5, 3
    sketch = kronecker_sketch(jax.random.key(0), (a, b), (4, 6))
    gamma = np.kron(np.asarray(sketch_matrix(sketch.left)), np.asarray(sketch_matrix(sketch.right)))  # Γ_a ⊗ Γ_b
    rng = np.random.default_rng(0)
    u = rng.standard_normal((batch, steps, a)).astype(np.float32)
    v = rng.standard_normal((batch, steps, b)).astype(np.float32)
    grads = np.einsum("bta,btc->bac", u, v).reshape(batch, a * b)  # Σ_t u_t v_tᵀ, never needed by the sketch
    expected = grads @ gamma
    np.testing.assert_allclose(np.asarray(sketch.apply_factors(jnp.asarray(u), jnp.asarray(v))), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sketch(jnp.asarray(grads))), expected, rtol=1e-4, atol=1e-4)


def test_sharded_batch_equals_single_device():
    """Sketching is row-parallel: a batch sharded over 4 devices gives the same rows."""
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 1000)), jnp.float32)
    sharded = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    for kind in ("gaussian", "sjlt", "srht"):
        sketch = make_sketch(kind, jax.random.key(0), 1000, 64)
        out = _apply(sketch, sharded)
        assert len(out.sharding.device_set) == 4
        np.testing.assert_allclose(np.asarray(out), np.asarray(sketch(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: make_sketch("gaussian", jax.random.key(0), 100, 0), "out_dim must be a positive int"),
        (lambda: make_sketch("gaussian", jax.random.key(0), -3, 8), "in_dim must be a positive int"),
        (lambda: make_sketch("sjlt", jax.random.key(0), 100, 10, nnz=4), "multiple of nnz"),
        (lambda: make_sketch("srht", jax.random.key(0), 100, 200), "impossible"),
        (lambda: make_sketch("hadamard", jax.random.key(0), 100, 8), "kind must be one of"),
        (lambda: make_sketch("srht", jax.random.key(0), 100, 8, nnz=2), "does not take"),
        (lambda: make_sketch("gaussian", 0, 100, 8), "PRNG key"),
        (lambda: make_sketch("kronecker", jax.random.key(0), 100, 8, shape=(3, 3)), "has 9 entries"),
        (lambda: make_sketch("gaussian", jax.random.key(0), 100, 8)(jnp.zeros((100,))), r"x\[None, :\]"),
        (lambda: make_sketch("gaussian", jax.random.key(0), 100, 8)(jnp.zeros((2, 99))), "in_dim=100"),
        (lambda: make_sketch("sjlt", jax.random.key(0), 100, 8)(jnp.zeros((2, 100), jnp.int32)), "floating-point"),
    ],
)
def test_bad_arguments_get_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("kind", KINDS)
def test_nan_rows_are_named(kind):
    x = np.random.default_rng(0).standard_normal((20, 256)).astype(np.float32)
    x[14, 7] = np.nan
    x[9, 0] = np.inf
    sketch = make_sketch(kind, jax.random.key(0), 256, 16)
    with pytest.raises(ValueError, match=r"rows \[9, 14\] contain NaN or inf"):
        sketch_rows(sketch, x, chunk_size=8)


def test_a_registered_kind_reaches_every_entry_point():
    """A new kind is one SketchKind and one registration: make_sketch, make_pytree_sketch,
    select(sketch_kind=...) and KINDS take it, with its options checked."""
    from skmm_jax.select import select
    from skmm_jax.sketch import SKETCH_KINDS, SketchKind, dense_sketch, register_sketch_kind

    def build(key, in_dim, out_dim, *, block_size=None):  # the gaussian kind under another name
        return dense_sketch(key, in_dim, out_dim, block_size=block_size)

    register_sketch_kind(SketchKind("test-dense", build, options=("block_size",)))
    try:
        assert "test-dense" in KINDS
        key = jax.random.key(3)
        np.testing.assert_array_equal(
            np.asarray(sketch_matrix(make_sketch("test-dense", key, 100, 8, block_size=16))),
            np.asarray(sketch_matrix(make_sketch("gaussian", key, 100, 8, block_size=16))),
        )
        with pytest.raises(ValueError, match="nnz applies to kind sjlt only"):
            make_sketch("test-dense", key, 100, 8, nnz=2)
        with pytest.raises(ValueError, match="already registered"):
            register_sketch_kind(SketchKind("test-dense", build))
        example = {"w": jnp.zeros((6, 5)), "b": jnp.zeros((5,))}
        tree = make_pytree_sketch("test-dense", key, example, 8)
        for index, (leaf, size) in enumerate(zip(tree.leaves, (5, 30))):  # leaves in jax.tree order: b, w
            np.testing.assert_array_equal(np.asarray(sketch_matrix(leaf)), np.asarray(sketch_matrix(dense_sketch(jax.random.fold_in(key, index), size, 8))))
        x = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
        mine = select("herding", key, x, 5, sketch_kind="test-dense", sketch_dim=8)
        gaussian = select("herding", key, x, 5, sketch_kind="gaussian", sketch_dim=8)
        np.testing.assert_array_equal(mine.indices, gaussian.indices)
        assert mine.diagnostics["sketch"] == {"kind": "test-dense", "dim": 8}
    finally:
        SKETCH_KINDS.pop("test-dense", None)
    assert "test-dense" not in KINDS
    with pytest.raises(ValueError, match="kind must be one of"):
        make_sketch("test-dense", jax.random.key(0), 100, 8)
