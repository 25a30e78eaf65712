"""Structured pruning: invariants, recovery, GQA shapes, export to transformers."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prune_jax.models.llama import LlamaConfig, init_llama, load_hf_dir, save_hf
from prune_jax.models.llama.params import model_from_state_dict, state_dict_from_model
from prune_jax.pruning import METHODS, PruneConfig, prune, slice_channels
from prune_jax.pruning.recover import refit_linear


def tiny(seed=0, **kw):
    options = dict(vocab_size=64, hidden_size=32, num_layers=4, layer_heads=((6, 2),) * 4, layer_intermediate=(48,) * 4, head_dim=8)
    options.update(kw)
    config = LlamaConfig(**options)
    model = init_llama(config, seed=seed)
    # Larger weights than the 0.02 init so units differ and pruning matters.
    tensors = {k: v * (5.0 if v.ndim > 1 else 1.0) for k, v in state_dict_from_model(model).items()}
    return model_from_state_dict(config, tensors)


def calib(seed=0, shape=(12, 16)):
    return np.random.default_rng(seed).integers(0, 64, shape)


@pytest.fixture(autouse=True)
def exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def test_pruning_nothing_is_the_identity():
    model = tiny()
    tokens = jnp.asarray(calib(1, (2, 10)))
    before = np.asarray(model(tokens))
    pruned, report = prune(model, calib(), PruneConfig(attention_ratio=0.0, ffn_ratio=0.0))
    np.testing.assert_allclose(np.asarray(pruned(tokens)), before, atol=1e-6)
    assert report["parameters_before"] == report["parameters_after"]


def test_removing_a_channel_equals_zeroing_its_down_projection_row():
    model = tiny()
    tokens = jnp.asarray(calib(1, (2, 10)))
    zeroed = tiny()
    mlp = zeroed.layers[1].mlp
    from flax import nnx

    mlp.down_kernel = nnx.Param(mlp.down_kernel[...].at[7].set(0.0))
    slice_channels(model.layers[1].mlp, np.setdiff1d(np.arange(48), [7]))
    assert model.layers[1].mlp.down_kernel[...].shape == (47, 32)
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(zeroed(tokens)), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head_mode", ["per-group", "kv-groups"])
def test_every_method_gives_valid_gqa_shapes_and_a_runnable_model(method, head_mode):
    model = tiny()
    config = PruneConfig(method=method, attention_ratio=0.34, ffn_ratio=0.25, head_mode=head_mode, layer_range=(1, 3))
    pruned, report = prune(model, calib(), config)
    for layer, (heads, kv) in enumerate(report["layer_heads"]):
        assert heads % kv == 0
        if layer in (1, 2):
            assert (heads, kv) == ((4, 2) if head_mode == "per-group" else (3, 1))
            assert report["layer_intermediate"][layer] == 36
        else:
            assert (heads, kv) == (6, 2) and report["layer_intermediate"][layer] == 48
    logits = np.asarray(pruned(jnp.asarray(calib(2, (1, 9)))))
    assert np.isfinite(logits).all()


def test_budget_reaches_the_requested_sparsity_of_prunable_parameters():
    for sparsity in (0.1, 0.3):
        _, report = prune(tiny(), calib(), PruneConfig(method="magnitude", sparsity=sparsity, layer_range=(0, 4)))
        assert sparsity <= report["fraction_of_prunable_removed"] < sparsity + 0.12
        assert report["parameters_before"] - report["parameters_after"] == report["prunable_before"] - report["prunable_after"]


def test_recovery_is_exact_with_full_rank_gram_and_never_hurts():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((400, 12)), jnp.float32)
    w_true = jnp.asarray(rng.standard_normal((12, 5)), jnp.float32)
    w_bad = jnp.zeros((12, 5), jnp.float32)
    w, info = refit_linear(x, x @ w_true, w_bad, grid=(1e-6,))
    np.testing.assert_allclose(np.asarray(w), np.asarray(w_true), atol=1e-3)
    # Targets that no linear map of x explains: refitting cannot beat the current weights on
    # held-out tokens, so the current weights are kept.
    y = jnp.asarray(rng.standard_normal((400, 5)), jnp.float32)
    w2, info2 = refit_linear(x, y, w_bad + 0.0, grid=(1e-4, 1.0))
    assert info2["held_out_error"] <= info2["errors"]["unrefit"]


def test_recovery_lowers_the_block_reconstruction_error():
    tokens = calib(3, (24, 16))
    dense = tiny(seed=1)
    probe = jnp.asarray(calib(4, (4, 16)))
    reference = np.asarray(dense(probe))
    errors = {}
    for recover in (False, True):
        pruned, report = prune(tiny(seed=1), tokens, PruneConfig(method="dap", sparsity=0.3, recover=recover, layer_range=(1, 3)))
        errors[recover] = float(np.mean((np.asarray(pruned(probe)) - reference) ** 2))
    assert errors[True] < errors[False]
    assert all("down_proj_recovery" in layer for layer in report["layers"][1:3])


def test_flap_bias_compensation_exports_with_biases(tmp_path: Path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pruned, report = prune(tiny(), calib(), PruneConfig(method="flap", sparsity=0.25, layer_range=(0, 4)))
    assert pruned.config.attention_bias and pruned.config.mlp_bias
    assert save_hf(pruned, None, tmp_path / "flap") is None  # uniform widths: stock-loadable
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "flap").eval()
    tokens = calib(5, (2, 11))
    with torch.no_grad():
        expected = hf(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(pruned(jnp.asarray(tokens))), expected, atol=1e-4, rtol=1e-4)
    again = load_hf_dir(tmp_path / "flap")
    np.testing.assert_allclose(np.asarray(again(jnp.asarray(tokens))), expected, atol=1e-4, rtol=1e-4)


def test_prune_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"sparsity must lie in \(0, 1\)"):
        PruneConfig(sparsity=1.0)
    with pytest.raises(ValueError, match=r"sparsity must lie in \(0, 1\)"):
        PruneConfig(sparsity=0.0)
    with pytest.raises(ValueError, match="method must be one of"):
        PruneConfig(method="sparsegpt")
    with pytest.raises(ValueError, match="calibration must be"):
        prune(model, np.zeros((0, 16), np.int64))
    with pytest.raises(ValueError, match="calibration must be"):
        prune(model, np.zeros((4, 1), np.int64))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        prune(model, np.full((2, 8), 99))


def test_sharded_calibration_equals_single_device():
    from jax.sharding import Mesh

    tokens = calib(7, (8, 16))
    config = PruneConfig(method="dap", sparsity=0.3, recover=True, layer_range=(1, 3), batch_size=8)
    single, report_single = prune(tiny(seed=2), tokens, config)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded, report_sharded = prune(tiny(seed=2), tokens, config, mesh=mesh)
    assert report_sharded["layer_heads"] == report_single["layer_heads"]
    assert [r.get("channels_kept") for r in report_sharded["layers"]] == [r.get("channels_kept") for r in report_single["layers"]]
    probe = jnp.asarray(calib(8, (2, 12)))
    np.testing.assert_allclose(np.asarray(sharded(probe)), np.asarray(single(probe)), atol=1e-4, rtol=1e-4)


def test_calibration_statistics_match_numpy():
    from prune_jax.pruning.calibrate import mlp_stats

    model = tiny()
    mlp = model.layers[0].mlp
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7, 32)), jnp.float32)
    stats = mlp_stats(mlp, [x[:2], x[2:]])
    gate = np.einsum("btd,df->btf", np.asarray(x), np.asarray(mlp.gate_kernel[...])).reshape(-1, 48)
    up = np.einsum("btd,df->btf", np.asarray(x), np.asarray(mlp.up_kernel[...])).reshape(-1, 48)
    h = gate / (1 + np.exp(-gate)) * up
    np.testing.assert_allclose(stats.h_sq_mean, (h**2).mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.h_var, h.var(0), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(stats.up_var, up.var(0), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(stats.gate_sq_mean, (gate**2).mean(0), rtol=1e-4)
    assert stats.tokens == 21
