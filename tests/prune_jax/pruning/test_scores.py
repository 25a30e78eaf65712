"""The score registry: declarations, the example entry "depth2-l1", and the contract
that a registered entry is all the pipeline needs (no method names in prune/stage)."""

import json

import jax
import numpy as np
import pytest

from prune_jax.pruning import METHODS, SCORES, Budget, HeadCriterion, NormOptions, ObsOptions, PruneConfig, Recovery, Score, prune
from prune_jax.pruning.scores import Evidence, ffn_channel_scores, head_scores


pytestmark = pytest.mark.usefixtures("exact_matmuls")


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    """Factory: ``tiny(seed=0)``, the pruning tests' shape: 4 blocks of 6/2 heads and 48 channels."""
    return lambda seed=0: tiny_llama(seed, scale=0.1, vocab_size=64, hidden_size=32, num_layers=4, heads=(6, 2), intermediate=48, head_dim=8)


@pytest.fixture(scope="module")
def calib(calib_tokens):
    return calib_tokens


def test_registry_declarations():
    assert tuple(METHODS) == tuple(SCORES)
    assert {m for m, s in SCORES.items() if s.compensates_biases} == {"flap"}
    assert {m for m, s in SCORES.items() if s.needs == "gradients"} == {"taylor"}
    assert {m for m, s in SCORES.items() if s.needs == "nothing"} == {"random", "magnitude", "depth2", "dap-data-free", "depth2-l1"}
    assert PruneConfig(method="flap").compensate and not PruneConfig(method="dap").compensate
    assert PruneConfig(method="dap", recovery=Recovery(bias_compensation=True)).compensate
    with pytest.raises(ValueError, match="needs must be one of"):
        Score(lambda m, e: None, lambda m, e: None, needs="labels")


def _weight_only_references(mlp, attn, key) -> dict:
    """method → (channel scores [F], head scores [N]) in numpy float64 from the kernels alone
    (the module docstring's table with Σ = I where a score has statistics)."""
    gate, up, down = (np.asarray(k[...], np.float64) for k in (mlp.gate_kernel, mlp.up_kernel, mlp.down_kernel))  # [D, F], [D, F], [F, D]
    q, v, o = (np.asarray(k[...], np.float64) for k in (attn.q_kernel, attn.v_kernel, attn.o_kernel))  # [D, N, H], [D, K, H], [N, H, D]
    first_l2 = np.sqrt((gate**2).sum(0) + (up**2).sum(0))  # ‖(W_G; W_U)[:, j]‖₂
    q_l2 = np.sqrt((q**2).sum(axis=(0, 2)))  # ‖W_Q[:, n]‖₂
    down_sq, o_sq = (down**2).sum(1), (o**2).sum(2)  # ‖W_D[j]‖², ‖W_O[c]‖² [N, H]
    group = q.shape[1] // v.shape[1]
    v_sq = np.repeat((v**2).sum(0), group, axis=0)  # ‖W_V[:, c]‖² of head n's KV group, [N, H]
    return {
        "random": (np.asarray(jax.random.uniform(key, (down.shape[0],))), np.asarray(jax.random.uniform(key, (q.shape[1],)))),
        "magnitude": (first_l2, q_l2),
        "depth2": (first_l2 * np.sqrt(down_sq), q_l2 * np.sqrt(o_sq.sum(1))),
        "dap-data-free": (down_sq**2 * (up**2).sum(0) * (gate**2).sum(0), (v_sq * o_sq).sum(1)),
        "depth2-l1": ((np.abs(gate).sum(0) + np.abs(up).sum(0)) * np.abs(down).sum(1), np.abs(q).sum(axis=(0, 2)) * np.abs(o).sum(axis=(1, 2))),
    }


@pytest.mark.parametrize("method", [m for m, s in SCORES.items() if s.needs == "nothing"])
def test_weight_only_scores_read_no_statistics(method, tiny):
    """needs="nothing" is honest: without statistics or gradients the scores equal a numpy
    reference computed from the kernels alone."""
    model = tiny()
    block, key = model.layers[1], jax.random.key(0)
    channels, heads = _weight_only_references(block.mlp, block.attn, key)[method]
    np.testing.assert_allclose(ffn_channel_scores(method, block.mlp, None, key=key), channels, rtol=1e-5)
    np.testing.assert_allclose(head_scores(method, block.attn, None, key=key), heads, rtol=1e-5)


def test_magnitude_norm_is_a_method_option(tiny):
    """magnitude's norm lives in its registry entry's options type; another method's
    options, or options given to a method without any, are rejected by name."""
    block, key = tiny().layers[1], jax.random.key(0)
    gate, up = (np.asarray(k[...], np.float64) for k in (block.mlp.gate_kernel, block.mlp.up_kernel))
    l1 = ffn_channel_scores("magnitude", block.mlp, None, key=key, options=NormOptions(norm="l1"))
    np.testing.assert_allclose(l1, np.abs(gate).sum(0) + np.abs(up).sum(0), rtol=1e-5)
    assert PruneConfig(method="magnitude").options == NormOptions() and PruneConfig(method="dap").options is None
    assert PruneConfig(method="dap-obs").options == ObsOptions(damp=0.01)
    with pytest.raises(ValueError, match="norm must be 'l1' or 'l2'"):
        NormOptions(norm="l3")
    with pytest.raises(ValueError, match="options for method 'dap-obs' must be a ObsOptions"):
        PruneConfig(method="dap-obs", options=NormOptions())
    with pytest.raises(ValueError, match="method 'dap' takes no options"):
        PruneConfig(method="dap", options=ObsOptions())
    with pytest.raises(ValueError, match="^damp is an option of method 'dap-obs', not of 'dap'"):
        PruneConfig.from_json({"method": "dap", "damp": 0.1})


def test_the_flat_record_round_trips_and_names_every_setting():
    """to_json keeps pruning.json's flat keys (one per setting, the options among them) and
    from_json inverts it, so a CLI flag or a benchmark variant is one key."""
    config = PruneConfig(method="dap-obs", budget=Budget(sparsity=0.3, layer_range=(1, 3), allocation="uniform", max_block_removal=0.7),
                         heads=HeadCriterion("similarity", similarity_tau=0.1), options=ObsOptions(damp=0.05),
                         recovery=Recovery(enabled=True, refit="second", ridge_toward="zero", folds=3, bias_compensation=True), batch_size=4, seed=3)
    record = config.to_json()
    assert set(record) == {"method", "sparsity", "attention_ratio", "ffn_ratio", "layer_range", "head_mode", "allocation", "max_block_removal",
                           "allocation_samples", "head_criterion", "similarity_tau", "recover", "refit", "ridge_grid", "ridge_toward",
                           "recover_folds", "bias_compensation", "batch_size", "seed", "damp", "damping", "metric"}
    assert record["damp"] == 0.05 and record["recover"] is True and record["head_criterion"] == "similarity" and record["recover_folds"] == 3
    assert PruneConfig.from_json(json.loads(json.dumps(record))) == config


def test_a_registered_allocation_mode_is_all_prune_needs(monkeypatch, tiny, calib):
    """The allocation extension contract: one registry entry, valid in Budget, called with
    the budget by prune."""
    from prune_jax.pruning import ALLOCATIONS, AllocationMode
    from prune_jax.pruning.allocation import Allocation

    with pytest.raises(ValueError, match="allocation must be one of"):
        Budget(allocation="last-layer")
    seen = []

    def last_layer(model, layers, budget, dense_scores):
        seen.append(budget.sparsity)
        return Allocation({layers[-1]: (1, 12)}, None, None)

    monkeypatch.setitem(ALLOCATIONS, "last-layer", AllocationMode("every cut in the range's last block", last_layer))
    _, report = prune(tiny(), calib(), PruneConfig(method="dap", budget=Budget(sparsity=0.1, layer_range=(1, 3), allocation="last-layer")))
    assert seen == [0.1] and report.layer_intermediate == (48, 48, 36, 48) and report.layer_heads[2] == (4, 2)
    assert report.to_json()["allocation"] == "last-layer"


def test_depth2_l1_is_the_product_of_l1_norms(tiny):
    model = tiny()
    mlp, attn = model.layers[2].mlp, model.layers[2].attn
    gate, up, down = (np.asarray(k[...], np.float64) for k in (mlp.gate_kernel, mlp.up_kernel, mlp.down_kernel))
    expected = (np.abs(gate).sum(0) + np.abs(up).sum(0)) * np.abs(down).sum(1)  # ‖(W_G; W_U)[:, j]‖₁ ‖W_D[j]‖₁
    np.testing.assert_allclose(ffn_channel_scores("depth2-l1", mlp, None, key=jax.random.key(0)), expected, rtol=1e-5)
    q, o = np.asarray(attn.q_kernel[...], np.float64), np.asarray(attn.o_kernel[...], np.float64)  # [D, N, H], [N, H, D]
    expected_heads = [np.abs(q[:, n]).sum() * np.abs(o[n]).sum() for n in range(6)]
    np.testing.assert_allclose(head_scores("depth2-l1", attn, None, key=jax.random.key(0)), expected_heads, rtol=1e-5)


def test_depth2_l1_prunes_the_channel_with_the_smallest_down_row(tiny, calib):
    from flax import nnx

    model = tiny()
    mlp = model.layers[1].mlp
    mlp.down_kernel = nnx.Param(mlp.down_kernel[...].at[11].multiply(1e-3))  # channel 11's output norm ≈ 0
    _, report = prune(model, calib(), PruneConfig(method="depth2-l1", budget=Budget(attention_ratio=0.0, ffn_ratio=0.02, layer_range=(1, 2))))
    assert report.layer_intermediate[1] == 47 and 11 not in report.layers[1].mlp.kept


def test_a_registered_score_is_all_prune_needs(monkeypatch, tiny, calib):
    """The extension contract: one registry entry, no change to prune or the stages.
    The entry keeps the lowest-index units and checks it is given what it declared."""
    seen = []

    def channels(mlp, ev: Evidence):
        seen.append(("channels", ev.stats is None, ev.gradients is not None))
        return -np.arange(mlp.down_kernel[...].shape[0], dtype=np.float64)

    def heads(attn, ev: Evidence):
        seen.append(("heads", ev.stats is None, ev.gradients is not None))
        return -np.arange(attn.q_kernel[...].shape[1], dtype=np.float64)

    monkeypatch.setitem(SCORES, "first-units", Score(channels, heads, needs="gradients"))
    config = PruneConfig(method="first-units", budget=Budget(attention_ratio=0.34, ffn_ratio=0.25, layer_range=(1, 3)))
    _, report = prune(tiny(), calib(), config)
    assert report.layers[1].mlp.kept == tuple(range(36))
    assert report.layers[2].attention.kept == (0, 1, 3, 4)  # per group of 3 query heads, the last one goes
    assert set(seen) == {("channels", True, True), ("heads", True, True)}  # gradients given, statistics not


def test_report_json_has_the_pruning_json_keys(tiny, calib):
    _, report = prune(tiny(), calib(), PruneConfig(method="dap", budget=Budget(sparsity=0.2, layer_range=(1, 3)), recovery=Recovery(enabled=True),
                                                 heads=HeadCriterion("similarity")))
    record = json.loads(json.dumps(report.to_json()))
    assert list(record) == ["method", "config", "allocation", "layer_range", "attention_ratio", "ffn_ratio", "layer_cuts", "parameters_before",
                            "parameters_after", "fraction_of_all_removed", "prunable_before", "prunable_after",
                            "fraction_of_prunable_removed", "layer_heads", "layer_intermediate", "calibration_tokens",
                            "calibration_shape", "seconds", "layers"]
    assert record["method"] == "dap" and record["config"]["recover"] is True and record["layer_range"] == [1, 3]
    assert record["calibration_tokens"] == 12 * 16 and record["calibration_shape"] == [12, 16]
    assert record["fraction_of_prunable_removed"] == report.fraction_of_prunable_removed >= 0.2
    assert list(record["layers"][0]) == ["layer"]  # nothing pruned or refit before the range
    assert list(record["layers"][1]) == ["layer", "qkv_proj_recovery", "similar_heads_marked", "heads_kept", "o_proj_recovery",
                                         "gate_up_proj_recovery", "channels_kept", "down_proj_recovery"]
    assert record["layers"][1]["channels_kept"] == report.layer_intermediate[1]
    assert set(record["layers"][1]["down_proj_recovery"]) == {"ridge", "cv_error", "folds", "errors"}
    assert list(record["layers"][3]) == ["layer", "qkv_proj_recovery", "o_proj_recovery", "gate_up_proj_recovery", "down_proj_recovery"]


def test_a_score_that_removes_units_itself_is_called_by_the_stage(monkeypatch, tiny, calib):
    """A ``Score.remove`` hook replaces the keep-top step: the stage hands it the second map
    (o | down) and its units, writes back the weights it returns and slices its removed units."""
    calls = []

    def drop_first(units, ev: Evidence):
        calls.append((tuple(units.weights.shape), units.quota.tolist(), ev.options))
        removed = np.zeros(len(units.unit_rows), bool)
        for group, quota in enumerate(units.quota):
            removed[np.flatnonzero(units.unit_group == group)[:quota]] = True
        return units.weights * 2.0, removed

    obs = SCORES["dap-obs"]
    monkeypatch.setitem(SCORES, "drop-first", Score(obs.channels, obs.heads, needs="gram", remove=drop_first, options=ObsOptions))
    model, dense = tiny(), tiny()
    config = PruneConfig(method="drop-first", budget=Budget(attention_ratio=0.34, ffn_ratio=0.25, layer_range=(1, 2)), options=ObsOptions(0.2))
    pruned, report = prune(model, calib(), config)
    assert calls == [((48, 32), [1, 1], ObsOptions(0.2)), ((48, 32), [12], ObsOptions(0.2))]  # o: 6 heads · 8 rows; down: 48 channels
    assert report.layers[1].attention.kept == (1, 2, 4, 5) and report.layers[1].mlp.kept == tuple(range(12, 48))
    np.testing.assert_allclose(np.asarray(pruned.layers[1].mlp.down_kernel[...]), 2.0 * np.asarray(dense.layers[1].mlp.down_kernel[...])[12:])
    np.testing.assert_allclose(np.asarray(pruned.layers[1].attn.o_kernel[...]), 2.0 * np.asarray(dense.layers[1].attn.o_kernel[...])[[1, 2, 4, 5]])
