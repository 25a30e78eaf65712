"""The LLaMA finetuning loop (prune_jax.finetune): LoRA and last-k-blocks, resume, merge."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from prune_jax.finetune import FinetuneConfig, finetune, merge_lora
from prune_jax.lora import init_lora, lora_state


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    model = tiny_llama(num_layers=2, heads=(4, 2), intermediate=24, vocab_size=40, hidden_size=16, head_dim=4)
    rows = np.random.default_rng(0).integers(0, 40, (12, 9)).astype(np.int32)
    return model, rows


def _mean_nll(model, rows) -> float:
    return float(np.mean(np.asarray(model.token_nll(rows))))


@pytest.mark.parametrize("kind", ["lora", "blocks"])
def test_finetune_lowers_the_training_loss(tiny, kind):
    model, rows = tiny
    config = FinetuneConfig(trainable=kind, rank=4, last_blocks=1, learning_rate=1e-2, steps=30, batch_size=4, accumulation=2)
    result = finetune(model, rows, config)
    assert result.losses.shape == (30,) and np.all(np.isfinite(result.losses))
    before, after = _mean_nll(model, rows), _mean_nll(result.model, rows)
    assert after < before - 0.1, (before, after)
    if kind == "blocks":  # only the last block moved
        old, new = nnx.state(model), nnx.state(result.model)
        assert np.array_equal(np.asarray(old["layers"][0]["mlp"]["up_kernel"][...]), np.asarray(new["layers"][0]["mlp"]["up_kernel"][...]))
        assert not np.array_equal(np.asarray(old["layers"][1]["mlp"]["up_kernel"][...]), np.asarray(new["layers"][1]["mlp"]["up_kernel"][...]))


def test_lora_on_chosen_blocks_only_moves_them_and_reuses_the_compiled_step(tiny):
    from prune_jax.finetune import _train_step

    model, rows = tiny
    config = FinetuneConfig(rank=2, lora_layers=(1,), learning_rate=1e-2, steps=3, batch_size=4)
    result = finetune(model, rows, config)
    assert set(result.trainable) == {k for k in result.trainable if k.startswith("layers/1/")} and result.trainable
    old, new = nnx.state(model), nnx.state(result.model)
    assert np.array_equal(np.asarray(old["layers"][0]["mlp"]["up_kernel"][...]), np.asarray(new["layers"][0]["mlp"]["up_kernel"][...]))
    assert not np.array_equal(np.asarray(old["layers"][1]["mlp"]["up_kernel"][...]), np.asarray(new["layers"][1]["mlp"]["up_kernel"][...]))
    # another seed and length: the same cached step, no new trace
    hits = _train_step.cache_info().hits
    traces = _train_step(*_step_key(model, config))[1]._cache_size()
    finetune(model, rows, FinetuneConfig(rank=2, lora_layers=(1,), learning_rate=1e-2, steps=2, batch_size=4, seed=5))
    assert _train_step.cache_info().hits >= hits + 1
    assert _train_step(*_step_key(model, config))[1]._cache_size() == traces
    with pytest.raises(ValueError, match="non-empty subset"):
        finetune(model, rows, FinetuneConfig(rank=2, lora_layers=(7,), steps=1))


def _step_key(model, config):
    from prune_jax.lora import lm_loss

    return (lm_loss("lora", nnx.graphdef(model), scale=config.alpha / config.rank), float(config.learning_rate),
            float(config.weight_decay), config.accumulation)


def test_merged_lora_equals_the_wrapped_model(tiny):
    model, rows = tiny
    factors = jax.tree.map(lambda x: x + 0.05, init_lora(model, jax.random.key(1), 2))
    graphdef, state = nnx.split(model)
    wrapped = nnx.merge(graphdef, lora_state(state, factors, 1.5))
    merged = merge_lora(model, factors, 1.5)
    np.testing.assert_allclose(np.asarray(merged(rows)), np.asarray(wrapped(rows)), rtol=1e-4, atol=1e-4)


def test_resume_continues_exactly_and_refuses_another_run(tiny, tmp_path):
    model, rows = tiny
    config = FinetuneConfig(rank=2, learning_rate=5e-3, steps=6, batch_size=5, checkpoint_every=2)
    straight = finetune(model, rows, config)

    class Crash(Exception):
        pass

    def crash_after_4(done, total):
        if done == 4:
            raise Crash

    with pytest.raises(Crash):  # the checkpoint of update 4 is on disk when the run dies
        finetune(model, rows, config, checkpoint=tmp_path / "ck", progress=crash_after_4)
    seen = []
    resumed = finetune(model, rows, config, checkpoint=tmp_path / "ck", progress=lambda done, total: seen.append(done))
    assert seen == [5, 6]
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(resumed.model(rows)), np.asarray(straight.model(rows)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="another run"):
        finetune(model, rows, FinetuneConfig(rank=2, learning_rate=5e-3, steps=8, batch_size=5), checkpoint=tmp_path / "ck")
    with pytest.raises(ValueError, match="another run"):  # same shape, other rows (e.g. another selection)
        finetune(model, rows[::-1], config, checkpoint=tmp_path / "ck")


def test_finetune_bad_input(tiny):
    model, rows = tiny
    with pytest.raises(ValueError, match="trainable must be one of"):
        FinetuneConfig(trainable="all")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        FinetuneConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        FinetuneConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="non-empty int"):
        finetune(model, rows.astype(np.float32), FinetuneConfig(steps=1))
    with pytest.raises(ValueError, match="vocabulary"):
        finetune(model, rows + 100, FinetuneConfig(steps=1))


def test_lora_on_a_bfloat16_model_trains_float32_factors(tiny_llama):
    """Mixed precision: bf16 base kernels and activations, f32 LoRA factors (the low-rank
    term computed in f32, added in bf16), no implicit promotion (tests run strict)."""
    model = tiny_llama(num_layers=2, heads=(4, 2), intermediate=24, vocab_size=40, hidden_size=16, head_dim=4, dtype="bfloat16")
    rows = np.random.default_rng(0).integers(0, 40, (12, 9)).astype(np.int32)
    result = finetune(model, rows, FinetuneConfig(rank=4, learning_rate=1e-2, steps=20, batch_size=4))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(result.trainable))
    assert nnx.state(result.model)["layers"][0]["mlp"]["up_kernel"][...].dtype == jax.numpy.bfloat16
    assert _mean_nll(result.model, rows) < _mean_nll(model, rows) - 0.1


@pytest.mark.parametrize("kind", ["lora", "blocks"])
def test_finetune_gradients_are_the_sketched_gradients_of_what_finetune_trains(tiny, kind):
    """finetune_gradients == the same Kronecker sketch applied to explicit vmap(grad)
    gradients of the parameters finetune trains at its start (LoRA: A's part is 0, B = 0)."""
    from prune_jax.finetune import _trainable, finetune_gradients
    from prune_jax.lora import lm_loss
    from prune_jax.models.llama.modeling import kernel_inputs
    from skmm_jax.gradients import per_sample_grads
    from skmm_jax.sketch import make_pytree_sketch

    model, rows = tiny
    config = FinetuneConfig(trainable=kind, rank=2, lora_layers=(1,), last_blocks=1, seed=3)
    got = finetune_gradients(model, rows, config, sketch_dim=16, key=jax.random.key(5), chunk_size=5)
    trainable, frozen = _trainable(model, config)
    assert got.shape == (12, 16) and np.all(np.isfinite(got)) and np.linalg.norm(got) > 0
    sketch = make_pytree_sketch("kronecker", jax.random.key(5), trainable, 16, split=None if kind == "lora" else kernel_inputs)
    loss = lm_loss(kind, nnx.graphdef(model), scale=config.alpha / config.rank)
    grads = per_sample_grads(loss, trainable, rows, frozen=frozen)
    expected = np.asarray(sketch(grads))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    if kind == "lora":  # B = 0 at the start: only the B factors carry gradient
        assert all(float(np.abs(np.asarray(f["a"])).max()) == 0.0 for f in grads.values())
    with pytest.raises(ValueError, match="token ids must lie in"):
        finetune_gradients(model, rows + 100, config)
