"""Per-sample gradient sketching: G̃ = G Γ against explicit gradients, chunking, sharding, losses, NNX."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from skmm_jax.gradients import (
    jacobian_sketch_loss,
    labelled_loss,
    merge_params,
    nnx_apply,
    partition_params,
    per_sample_grads,
    pseudo_labels,
    rademacher_weights,
    sketch_per_sample_grads,
)
from skmm_jax.sketch import make_pytree_sketch, make_sketch, sketch_matrix

N, D, H, C, M = 37, 16, 24, 5, 32  # N is not a multiple of any chunk size used
# r = 16·24 + 24 + 24·5 + 5 = 533


def init_mlp(key, d=D, h=H, c=C):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "dense1": {
            "w": jax.random.normal(k1, (d, h), jnp.float32) / np.sqrt(d),
            "b": 0.1 * jax.random.normal(k3, (h,), jnp.float32),
        },
        "head": {"w": jax.random.normal(k2, (h, c), jnp.float32) / np.sqrt(h), "b": jnp.zeros((c,), jnp.float32)},
    }


def mlp_apply(params, x):
    hidden = jnp.tanh(x @ params["dense1"]["w"] + params["dense1"]["b"])
    return hidden @ params["head"]["w"] + params["head"]["b"]


LOSS = labelled_loss(mlp_apply)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    params = init_mlp(jax.random.key(0))
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = np.asarray(pseudo_labels(jax.random.key(1), N, C))
    return params, (x, y)


# Tests reuse chunk_size=CHUNK and the same sketch kinds where they can: the per-chunk
# function is cached on (loss, sketch type/sizes, shapes), not on keys or values.
CHUNK = 16
_grad_cache = {}
_apply = jax.jit(lambda sketch, x: sketch(x))  # one compilation per sketch type and shapes
_per_sample_grads = jax.jit(per_sample_grads, static_argnums=0)


def explicit_grads(loss, params, data):
    """Per-sample gradient trees by a Python loop of jax.grad (no vmap, no chunking)."""
    grad = _grad_cache.setdefault(loss, jax.jit(jax.grad(loss)))
    x, y = data
    return [grad(params, (jnp.asarray(x[i]), jnp.asarray(y[i]))) for i in range(len(x))]


def explicit_rows(trees):
    return np.stack([np.asarray(ravel_pytree(t)[0], np.float64) for t in trees])  # [N, r]


def gamma_of(sketch, example):
    """Materialised Γ [r, m] of a flat sketch, or of a pytree sketch via unravelled identity rows."""
    if example is None:
        return np.asarray(jax.jit(sketch_matrix)(sketch), np.float64)
    flat, unravel = ravel_pytree(example)
    basis = jax.jit(jax.vmap(unravel))(jnp.eye(flat.size, dtype=jnp.float32))  # leaves [r, *leaf]
    return np.asarray(_apply(sketch, basis), np.float64)


@pytest.fixture(scope="module")
def full_rows(problem):
    """Explicit per-sample gradients G [N, r] of the MLP (ravelled, leaf order)."""
    params, data = problem
    return explicit_rows(explicit_grads(LOSS, params, data))


def close(a, b, rtol=1e-4):
    """Relative error in the Frobenius norm (per-entry rtol is meaningless near 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert err < rtol, err


# sjlt at m = 256: with the default shift hashing a small bucket width m/s unrolls
# many slices per loop step, and m = 32 takes ~10 s to compile on CPU.
@pytest.mark.parametrize("kind,m", [("gaussian", M), ("sjlt", 256)])
def test_flat_sketch_equals_explicit_gradients_times_gamma(problem, full_rows, kind, m):
    params, data = problem
    r = ravel_pytree(params)[0].size
    assert r == full_rows.shape[1] == 533
    sketch = make_sketch(kind, jax.random.key(2), r, m)
    got = sketch_per_sample_grads(LOSS, params, data, sketch, chunk_size=CHUNK)
    assert got.dtype == np.float32 and got.shape == (N, m)
    close(got, full_rows @ gamma_of(sketch, None))


@pytest.mark.parametrize("kind", ["kronecker", "gaussian"])
def test_pytree_sketch_equals_sketch_of_explicit_gradient_tree(problem, kind):
    params, data = problem
    sketch = make_pytree_sketch(kind, jax.random.key(3), params, M)
    got = sketch_per_sample_grads(LOSS, params, data, sketch, chunk_size=CHUNK)
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *explicit_grads(LOSS, params, data))  # leaves [N, *leaf]
    close(got, _apply(sketch, stacked))


def test_per_sample_grads_matches_loop(problem, full_rows):
    params, (x, y) = problem
    tree = _per_sample_grads(LOSS, params, (jnp.asarray(x[:7]), jnp.asarray(y[:7])))
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    assert tree["dense1"]["w"].shape == (7, D, H)
    rows = np.stack([np.asarray(ravel_pytree(jax.tree.map(lambda g: g[i], tree))[0]) for i in range(7)])
    close(rows, full_rows[:7])


def test_chunk_size_invariance_and_progress(problem):
    from skmm_jax import gradients

    params, data = problem
    sketch = make_pytree_sketch("gaussian", jax.random.key(4), params, M)
    calls = []
    results = {}
    for chunk in (5, 16, 64):
        seen = []
        before = gradients._sketch_chunk._cache_size()
        results[chunk] = sketch_per_sample_grads(
            LOSS, params, data, sketch, chunk_size=chunk, progress=lambda d, t: seen.append((d, t))
        )
        if chunk == 5:  # used by no other test: 7 full chunks + 1 padded one compile once
            assert gradients._sketch_chunk._cache_size() == before + 1
        calls.append(seen)
    # A rebuilt (equal) loss and a sketch with another key reuse that compilation.
    other = make_pytree_sketch("gaussian", jax.random.key(15), params, M)
    before = gradients._sketch_chunk._cache_size()
    again = sketch_per_sample_grads(labelled_loss(mlp_apply), params, data, other, chunk_size=5)
    assert gradients._sketch_chunk._cache_size() == before
    assert not np.allclose(again, results[5])  # a different Γ really was applied
    close(results[5], results[64], rtol=1e-5)
    close(results[16], results[64], rtol=1e-5)
    assert calls[0] == [(min(s, N), N) for s in range(5, N + 5, 5)]  # after every chunk, in order
    assert all(seen[-1] == (N, N) for seen in calls)
    assert calls[2] == [(N, N)]  # chunk_size > N: one chunk of N


def test_jax_array_data_equals_numpy_data(problem):
    params, (x, y) = problem
    sketch = make_pytree_sketch("gaussian", jax.random.key(5), params, M)
    host = sketch_per_sample_grads(LOSS, params, (x, y), sketch, chunk_size=CHUNK)
    device = sketch_per_sample_grads(LOSS, params, (jnp.asarray(x), jnp.asarray(y)), sketch, chunk_size=CHUNK)
    close(device, host, rtol=1e-6)


def test_mesh_equals_single_device(problem):
    params, data = problem
    assert len(jax.devices()) == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sketch = make_pytree_sketch("kronecker", jax.random.key(6), params, M)
    single = sketch_per_sample_grads(LOSS, params, data, sketch, chunk_size=CHUNK)
    seen = []
    # chunk_size 14 is rounded up to 16 (4 samples per device): chunks end at 16, 32, 37.
    sharded = sketch_per_sample_grads(
        LOSS, params, data, sketch, chunk_size=14, mesh=mesh, progress=lambda d, t: seen.append(d)
    )
    assert seen == [16, 32, 37]
    close(sharded, single, rtol=1e-5)
    # Device-resident data on a mesh (rows gathered on the device), and fewer samples than one chunk.
    x, y = data
    small = sketch_per_sample_grads(LOSS, params, (jnp.asarray(x[:6]), jnp.asarray(y[:6])), sketch, chunk_size=14, mesh=mesh)
    close(small, single[:6], rtol=1e-5)
    with pytest.raises(ValueError, match="model"):
        sketch_per_sample_grads(LOSS, params, data, sketch, mesh=mesh, axis="model")


def test_frozen_subset_is_the_slice_of_the_full_gradient(problem, full_rows):
    params, data = problem
    train, frozen = partition_params(params, lambda path, leaf: path.startswith("head/"))
    assert train["dense1"]["w"] is None and frozen["head"]["w"] is None
    assert train["head"]["w"] is params["head"]["w"] and frozen["dense1"]["b"] is params["dense1"]["b"]
    merged = merge_params(train, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    assert all(a is b for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)))

    def head_loss(trainable, sample, rest):
        return LOSS(merge_params(trainable, rest), sample)

    head_r = H * C + C
    sketch = make_sketch("gaussian", jax.random.key(7), head_r, M)
    got = sketch_per_sample_grads(head_loss, train, data, sketch, frozen=frozen, chunk_size=CHUNK)
    # Full gradients, ravelled in leaf order dense1/b, dense1/w, head/b, head/w: the head is the tail.
    close(got, full_rows[:, -head_r:] @ gamma_of(sketch, None))
    # A sketch sized for all parameters is rejected for the subset.
    with pytest.raises(ValueError, match="r = 533"):
        full_sketch = make_sketch("gaussian", jax.random.key(7), 533, M)
        sketch_per_sample_grads(head_loss, train, data, full_sketch, frozen=frozen)


def linear_head(params, x):
    return x @ params["w"] + params["b"]


@pytest.mark.parametrize("zero_init", [True, False])
def test_pseudo_label_gradient_of_linear_head_is_softmax_minus_onehot_outer_x(zero_init):
    rng = np.random.default_rng(1)
    n, d = 9, 6
    if zero_init:
        params = {"w": jnp.zeros((d, C), jnp.float32), "b": jnp.zeros((C,), jnp.float32)}
    else:
        params = {
            "w": jnp.asarray(rng.standard_normal((d, C)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(C), jnp.float32),
        }
    x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
    y = pseudo_labels(jax.random.key(8), n, C)
    assert y.dtype == jnp.int32 and y.shape == (n,) and int(y.min()) >= 0 and int(y.max()) < C
    grads = _per_sample_grads(labelled_loss(linear_head), params, (x, y))
    p = np.asarray(jax.nn.softmax(jax.vmap(linear_head, in_axes=(None, 0))(params, x), axis=-1), np.float64)
    if zero_init:
        np.testing.assert_allclose(p, 1.0 / C, rtol=1e-6)
    delta = p - np.eye(C)[np.asarray(y)]  # [n, C]
    outer = np.asarray(x, np.float64)[:, :, None] * delta[:, None, :]  # [n, d, C]
    np.testing.assert_allclose(grads["w"], outer, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["b"], delta, rtol=1e-5, atol=1e-6)


def test_squared_loss_gradient():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.standard_normal((4, C)), jnp.float32), "b": jnp.zeros((C,), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    t = jnp.asarray(rng.standard_normal((3, C)), jnp.float32)
    grads = _per_sample_grads(labelled_loss(linear_head, "squared"), params, (x, t))
    resid = np.asarray(jax.vmap(linear_head, in_axes=(None, 0))(params, x) - t, np.float64)
    np.testing.assert_allclose(grads["w"], np.asarray(x)[:, :, None] * resid[:, None, :], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown loss kind"):
        labelled_loss(linear_head, "hinge")


def test_jacobian_sketch_loss_gradient_is_weighted_sum_of_output_gradients(problem):
    params, (x, _) = problem
    w = rademacher_weights(jax.random.key(9), N, C)
    assert w.dtype == jnp.float32 and w.shape == (N, C)
    assert set(np.unique(np.asarray(w)).tolist()) == {-1.0, 1.0}
    loss = jacobian_sketch_loss(mlp_apply)
    tree = _per_sample_grads(loss, params, (jnp.asarray(x[:6]), w[:6]))
    got = np.stack([np.asarray(ravel_pytree(jax.tree.map(lambda g: g[i], tree))[0]) for i in range(6)])
    jacobian = jax.jit(jax.jacobian(mlp_apply))
    for i in range(6):
        jac = jacobian(params, jnp.asarray(x[i]))  # leaves [C, *leaf]
        jac_rows = np.stack([np.asarray(ravel_pytree(jax.tree.map(lambda j: j[c], jac))[0]) for c in range(C)])
        close(got[i], np.asarray(w[i], np.float64) @ jac_rows, rtol=1e-5)


def test_loss_helpers_are_value_hashable():
    # jit's cache keys on loss_fn: rebuilding the same loss must not recompile.
    assert labelled_loss(mlp_apply) == labelled_loss(mlp_apply)
    assert hash(labelled_loss(mlp_apply)) == hash(labelled_loss(mlp_apply))
    assert labelled_loss(mlp_apply) != labelled_loss(mlp_apply, "squared")
    assert jacobian_sketch_loss(mlp_apply) == jacobian_sketch_loss(mlp_apply)


class TinyMLP(nnx.Module):
    def __init__(self, rngs):
        self.dense1 = nnx.Linear(D, H, rngs=rngs)
        self.head = nnx.Linear(H, C, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.dense1(x)))


def test_nnx_model_equals_pure_jax(problem):
    _, data = problem
    model = TinyMLP(nnx.Rngs(0))
    # Non-zero biases, so a bias mix-up would show.
    model.dense1.bias[...] = 0.1 * jnp.arange(H, dtype=jnp.float32)
    apply_fn, params, frozen = nnx_apply(model)
    pure = {
        "dense1": {"w": model.dense1.kernel[...], "b": model.dense1.bias[...]},
        "head": {"w": model.head.kernel[...], "b": model.head.bias[...]},
    }
    r = ravel_pytree(pure)[0].size
    assert r == sum(leaf.size for leaf in jax.tree.leaves(params))
    # Both trees ravel in sorted-key order (dense1/b, dense1/w, head/b, head/w; NNX's
    # "bias" < "kernel" too), so one flat Γ must give the same G̃.
    sketch = make_sketch("gaussian", jax.random.key(10), r, M)
    loss = labelled_loss(apply_fn)
    got = sketch_per_sample_grads(loss, params, data, sketch, frozen=frozen, chunk_size=CHUNK)
    want = sketch_per_sample_grads(LOSS, pure, data, sketch, chunk_size=CHUNK)
    close(got, want, rtol=1e-5)
    # The one-sample apply really is the batched model on that row.
    one = apply_fn(params, jnp.asarray(data[0][3]), frozen)
    np.testing.assert_allclose(one, model(jnp.asarray(data[0][3:4]))[0], rtol=1e-6)

    # A parameter subset through an NNX filter: only the head is differentiated.
    head_apply, head_params, head_frozen = nnx_apply(model, nnx.All(nnx.Param, nnx.PathContains("head")))
    head_r = H * C + C
    head_sketch = make_pytree_sketch("kronecker", jax.random.key(11), head_params, M)
    got_head = sketch_per_sample_grads(
        labelled_loss(head_apply), head_params, data, head_sketch, frozen=head_frozen, chunk_size=CHUNK
    )
    full = explicit_rows(explicit_grads(LOSS, pure, data))
    close(got_head, full[:, -head_r:] @ gamma_of(head_sketch, head_params))


def test_nan_sample_raises_with_its_index(problem):
    params, (x, y) = problem
    x = x.copy()
    x[22, 3] = np.nan
    sketch = make_pytree_sketch("gaussian", jax.random.key(12), params, M)
    seen = []
    with pytest.raises(ValueError, match=r"NaN/inf at θ0 for samples \[22\]"):
        sketch_per_sample_grads(LOSS, params, (x, y), sketch, chunk_size=CHUNK, progress=lambda d, t: seen.append(d))
    assert seen == [CHUNK]  # stopped at the chunk holding sample 22, before any later one
    # NaN in the last (padded) chunk: padded rows repeat sample 36 but only it is named.
    x[22, 3] = 0.0
    x[36, 0] = np.inf
    with pytest.raises(ValueError, match=r"samples \[36\]"):
        sketch_per_sample_grads(LOSS, params, (x, y), sketch, chunk_size=CHUNK)


def test_bad_inputs_are_rejected(problem):
    params, (x, y) = problem
    sketch = make_pytree_sketch("gaussian", jax.random.key(13), params, M)
    with pytest.raises(ValueError, match="number of samples"):
        sketch_per_sample_grads(LOSS, params, (x, y[:-1]), sketch)
    with pytest.raises(ValueError, match="chunk_size"):
        sketch_per_sample_grads(LOSS, params, (x, y), sketch, chunk_size=0)
    with pytest.raises(ValueError, match="r = 100"):
        sketch_per_sample_grads(LOSS, params, (x, y), make_sketch("gaussian", jax.random.key(0), 100, M))
    with pytest.raises(TypeError, match="int label"):
        sketch_per_sample_grads(LOSS, params, (x, x[:, :C]), sketch)


def test_optax_reference_value():
    # The cross-entropy helper is optax's: same value for one sample.
    params = {"w": jnp.ones((3, C), jnp.float32), "b": jnp.arange(C, dtype=jnp.float32)}
    x, y = jnp.array([1.0, -2.0, 0.5], jnp.float32), jnp.array(2, jnp.int32)
    want = optax.softmax_cross_entropy_with_integer_labels(linear_head(params, x), y)
    np.testing.assert_allclose(labelled_loss(linear_head)(params, (x, y)), want, rtol=1e-6)



def test_sketches_stream_into_a_memmap_and_an_interrupted_run_resumes(problem, tmp_path):
    params, data = problem
    sketch = make_pytree_sketch("kronecker", jax.random.key(5), params, M)
    expected = sketch_per_sample_grads(LOSS, params, data, sketch, chunk_size=CHUNK)
    path = tmp_path / "sketch.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=expected.shape)

    class Interrupted(Exception):
        pass

    def stop_after_first_chunk(done, total):
        if done >= CHUNK:
            raise Interrupted

    with pytest.raises(Interrupted):
        sketch_per_sample_grads(LOSS, params, data, sketch, chunk_size=CHUNK, out=out, progress=stop_after_first_chunk)
    out.flush()
    del out
    resumed = np.load(path, mmap_mode="r+")
    from skmm_jax import gradients

    compiled = gradients._sketch_chunk._cache_size()
    seen = []
    got = sketch_per_sample_grads(
        LOSS, params, data, sketch, chunk_size=CHUNK, out=resumed, start_row=CHUNK, progress=lambda d, t: seen.append((d, t))
    )
    assert gradients._sketch_chunk._cache_size() == compiled  # the resumed chunks keep the first run's shape
    assert seen[0] == (2 * CHUNK, N) and seen[-1] == (N, N)  # absolute sample counts
    assert got is resumed
    np.testing.assert_array_equal(np.asarray(got), expected)
    with pytest.raises(ValueError, match="start_row needs out="):
        sketch_per_sample_grads(LOSS, params, data, sketch, start_row=3)
    with pytest.raises(ValueError, match="out must be a float32"):
        sketch_per_sample_grads(LOSS, params, data, sketch, out=np.zeros((N, M + 1), np.float32))
