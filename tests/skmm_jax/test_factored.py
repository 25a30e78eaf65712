"""Factored per-sample gradient sketches (``ProbedKernel``) and LoRA kernels.

The factored path must equal sketching the explicit ``vmap(grad)`` gradients with the
same Γ: for 2-D kernels, 3-D kernels read with one or two input axes, LoRA factors,
and the flat path for the other leaves; on a hand-written model and on our LLaMA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skmm_jax.common.kernels import LoraKernel, ProbedKernel, contract, lora_factors, project
from skmm_jax.gradients import per_sample_grads, sketch_per_sample_grads
from skmm_jax.sketch import make_pytree_sketch

D, N, H, F, T = 12, 3, 4, 20, 5


def _params(seed: int = 0) -> dict:
    k = jax.random.split(jax.random.key(seed), 5)
    return {
        "q": jax.random.normal(k[0], (D, N, H)) / 3,
        "o": jax.random.normal(k[1], (N, H, D)) / 3,
        "up": jax.random.normal(k[2], (D, F)) / 3,
        "down": jax.random.normal(k[3], (F, D)) / 3,
        "scale": 1 + 0.1 * jax.random.normal(k[4], (D,)),
    }


def _split(path: str, shape) -> int:
    return 2 if path == "o" else 1


def _loss(p, sample):
    x, y = sample
    h = x * p["scale"][None, :]
    q = project("TD,DNH->TNH", h, p["q"])
    h = h + project("TNH,NHD->TD", jnp.tanh(q), p["o"])
    u = project("TD,DF->TF", h, p["up"])
    h = h + project("TF,FD->TD", jax.nn.silu(u), p["down"])
    return jnp.mean((h - y) ** 2)


def _data(batch: int = 7):
    k = jax.random.split(jax.random.key(9), 2)
    return jax.random.normal(k[0], (batch, T, D)), jax.random.normal(k[1], (batch, T, D))


def _lora(params: dict) -> dict:
    lora = {}
    for i, name in enumerate(["q", "o", "up", "down"]):
        a, b = lora_factors(jax.random.key(10 + i), params[name].shape, 2, n_in=_split(name, params[name].shape))
        lora[name] = {"a": a, "b": b + 0.1 * jax.random.normal(jax.random.key(20 + i), b.shape)}  # B ≠ 0: A's gradient too
    return lora


def _lora_loss(lora, sample, frozen):
    p = dict(frozen)
    for name, f in lora.items():
        p[name] = LoraKernel(frozen[name], f["a"], f["b"], 2.0, _split(name, frozen[name].shape))
    return _loss(p, sample)


def test_factored_equals_explicit_sketch_for_2d_3d_kernels_and_flat_leaves():
    params, data = _params(), _data()
    sketch = make_pytree_sketch("kronecker", jax.random.key(3), params, 64, split=_split)
    expected = np.asarray(sketch(per_sample_grads(_loss, params, data)))
    got = sketch_per_sample_grads(_loss, params, data, sketch, chunk_size=4, factored=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # The o kernel is read as [N·H, D]: a Kronecker sketch, not the dense fallback.
    assert type(sketch.leaves[1]).__name__ == "KroneckerSketch" and sketch.leaves[1].shape == (N * H, D)


def test_factored_lora_factors_equal_explicit_sketch():
    params, data = _params(), _data()
    lora = _lora(params)
    sketch = make_pytree_sketch("kronecker", jax.random.key(4), lora, 32)
    expected = np.asarray(sketch(per_sample_grads(_lora_loss, lora, data, frozen=params)))
    got = sketch_per_sample_grads(_lora_loss, lora, data, sketch, frozen=params, chunk_size=3, factored=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_probe_core_gradient_is_the_kronecker_sketch_of_the_weight_gradient():
    # ∂ℓ/∂E = Γ_aᵀ (∂ℓ/∂W) Γ_b, checked against numpy on one kernel.
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)
    left, right = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32)
    target = rng.standard_normal((4, 5)).astype(np.float32)

    def loss_w(w_):
        return 0.5 * jnp.sum((project("TD,DF->TF", x, w_) - target) ** 2)

    def loss_e(core):
        return loss_w(ProbedKernel(jnp.asarray(w), jnp.asarray(left), core, jnp.asarray(right), 1))

    grad_w = np.asarray(jax.grad(loss_w)(jnp.asarray(w)))
    grad_e = np.asarray(jax.grad(loss_e)(jnp.zeros((3, 2))))
    np.testing.assert_allclose(grad_e, left.T @ grad_w @ right, rtol=1e-5, atol=1e-5)
    # and the probe changes nothing in value
    assert float(loss_e(jnp.zeros((3, 2)))) == pytest.approx(float(loss_w(jnp.asarray(w))), rel=1e-6)


def test_project_is_the_plain_einsum_for_arrays_and_lora_starts_at_the_base():
    params, (x, _) = _params(), _data(2)
    expected = jnp.einsum("BTD,DNH->BTNH", x, params["q"])
    assert np.array_equal(np.asarray(project("BTD,DNH->BTNH", x, params["q"])), np.asarray(expected))
    a, b = lora_factors(jax.random.key(0), params["o"].shape, 3, n_in=2)
    assert not np.any(np.asarray(b)) and a.shape == (N * H, 3) and b.shape == (3, D)
    heads = jax.random.normal(jax.random.key(1), (2, T, N, H))
    wrapped = LoraKernel(params["o"], a, b, 2.0, 2)
    np.testing.assert_array_equal(np.asarray(project("BTNH,NHD->BTD", heads, wrapped)), np.asarray(project("BTNH,NHD->BTD", heads, params["o"])))
    # a non-zero B adds exactly s · (x A) B
    b2 = jax.random.normal(jax.random.key(2), b.shape)
    got = project("BTNH,NHD->BTD", heads, LoraKernel(params["o"], a, b2, 0.5, 2))
    flat = np.asarray(heads).reshape(2, T, N * H)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected_o := jnp.einsum("BTNH,NHD->BTD", heads, params["o"])) + 0.5 * flat @ np.asarray(a) @ np.asarray(b2), rtol=1e-5, atol=1e-5)
    assert expected_o.shape == got.shape
    np.testing.assert_allclose(np.asarray(contract(flat, np.asarray(a))), flat @ np.asarray(a), rtol=1e-5, atol=1e-5)


def test_factored_bad_input_errors():
    params, data = _params(), _data()
    gaussian = make_pytree_sketch("gaussian", jax.random.key(0), params, 16)
    with pytest.raises(ValueError, match="factored=True needs a pytree sketch with Kronecker leaves"):
        sketch_per_sample_grads(_loss, params, data, gaussian, factored=True)
    with pytest.raises(ValueError, match="split gave n_in = 3"):
        make_pytree_sketch("kronecker", jax.random.key(0), params, 16, split=lambda path, shape: 3)
    with pytest.raises(ValueError, match="applies to the kronecker kind only"):
        make_pytree_sketch("gaussian", jax.random.key(0), params, 16, split=_split)
    with pytest.raises(ValueError, match="LoRA rank"):
        lora_factors(jax.random.key(0), (4, 3), 4)
    with pytest.raises(TypeError, match="only \\[...\\] indexing"):
        LoraKernel(params["up"], *lora_factors(jax.random.key(0), (D, F), 2), 1.0, 1)[0]


# ----------------------------------------------------------------------------- LLaMA


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama):
    model = tiny_llama(num_layers=2, heads=(4, 2), intermediate=24, vocab_size=40, hidden_size=16, head_dim=4)
    tokens = np.random.default_rng(0).integers(0, 40, (6, 9)).astype(np.int32)
    return model, tokens


def test_llama_last_block_factored_equals_explicit(tiny_lm):
    from flax import nnx

    from prune_jax.lora import last_blocks, lm_loss
    from prune_jax.models.llama.modeling import kernel_inputs

    model, tokens = tiny_lm
    trainable, frozen = last_blocks(model, 1)
    loss = lm_loss("blocks", nnx.graphdef(model))
    sketch = make_pytree_sketch("kronecker", jax.random.key(1), trainable, 36, split=kernel_inputs)
    kinds = [type(s).__name__ for s in sketch.leaves]
    assert kinds.count("KroneckerSketch") == 7  # q, k, v, o, gate, up, down: no dense fallback
    expected = np.asarray(sketch(per_sample_grads(loss, trainable, tokens, frozen=frozen)))
    got = sketch_per_sample_grads(loss, trainable, tokens, sketch, frozen=frozen, chunk_size=4, factored=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_llama_lora_factored_equals_explicit_and_zero_b_keeps_the_model(tiny_lm):
    from flax import nnx

    from prune_jax.lora import init_lora, lm_loss, lora_state, trainable_size

    model, tokens = tiny_lm
    graphdef, state = nnx.split(model)
    lora = init_lora(model, jax.random.key(2), 2)
    assert len(lora) == 2 * 6 and trainable_size(lora) == sum(a.size + b.size for f in lora.values() for a, b in [(f["a"], f["b"])])
    wrapped = nnx.merge(graphdef, lora_state(state, lora, 2.0))
    np.testing.assert_array_equal(np.asarray(wrapped(jnp.asarray(tokens))), np.asarray(model(jnp.asarray(tokens))))

    lora = jax.tree.map(lambda x: x + 0.05, lora)  # B ≠ 0 so that A's gradients are non-zero too
    loss = lm_loss("lora", graphdef)
    sketch = make_pytree_sketch("kronecker", jax.random.key(1), lora, 36)
    expected = np.asarray(sketch(per_sample_grads(loss, lora, tokens, frozen=state)))
    got = sketch_per_sample_grads(loss, lora, tokens, sketch, frozen=state, chunk_size=4, factored=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_lora_bad_input(tiny_lm):
    from flax import nnx

    from prune_jax.lora import init_lora, last_blocks, lm_loss, lora_state

    model, _ = tiny_lm
    with pytest.raises(ValueError, match="LoRA targets"):
        init_lora(model, jax.random.key(0), 2, targets=("qq",))
    with pytest.raises(ValueError, match="layers"):
        init_lora(model, jax.random.key(0), 2, layers=(5,))
    with pytest.raises(ValueError, match="LoRA rank"):
        init_lora(model, jax.random.key(0), 64)
    with pytest.raises(ValueError, match="does not have"):
        lora_state(nnx.state(model), {"layers/9/attn/q_kernel": {"a": 0, "b": 0}}, 1.0)
    with pytest.raises(ValueError, match="k must be"):
        last_blocks(model, 3)
    with pytest.raises(ValueError, match="trainable kind"):
        lm_loss("all", nnx.graphdef(model))
