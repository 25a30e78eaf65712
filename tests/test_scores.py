"""The score registry: declarations, the example entry "depth2-l1", and the contract
that a registered entry is all the pipeline needs (no method names in prune/stage)."""

import json

import jax
import numpy as np
import pytest
from test_pruning import calib, tiny

from prune_jax.pruning import METHODS, SCORES, PruneConfig, Score, prune
from prune_jax.pruning.scores import Evidence, ffn_channel_scores, head_scores


@pytest.fixture(autouse=True)
def exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def test_registry_declarations():
    assert METHODS == tuple(SCORES)
    assert {m for m, s in SCORES.items() if s.compensates_biases} == {"flap"}
    assert {m for m, s in SCORES.items() if s.needs == "gradients"} == {"taylor"}
    assert {m for m, s in SCORES.items() if s.needs == "nothing"} == {"random", "magnitude", "depth2", "dap-data-free", "depth2-l1"}
    assert PruneConfig(method="flap").compensate and not PruneConfig(method="dap").compensate
    assert PruneConfig(method="dap", bias_compensation=True).compensate
    with pytest.raises(ValueError, match="needs must be one of"):
        Score(lambda m, e: None, lambda m, e: None, needs="labels")


@pytest.mark.parametrize("method", [m for m, s in SCORES.items() if s.needs == "nothing"])
def test_weight_only_scores_read_no_statistics(method):
    """needs="nothing" is honest: the score runs without statistics or gradients."""
    model = tiny()
    block, key = model.layers[1], jax.random.key(0)
    assert ffn_channel_scores(method, block.mlp, None, key=key).shape == (48,)
    assert head_scores(method, block.attn, None, key=key).shape == (6,)


def test_depth2_l1_is_the_product_of_l1_norms():
    model = tiny()
    mlp, attn = model.layers[2].mlp, model.layers[2].attn
    gate, up, down = (np.asarray(k[...], np.float64) for k in (mlp.gate_kernel, mlp.up_kernel, mlp.down_kernel))
    expected = (np.abs(gate).sum(0) + np.abs(up).sum(0)) * np.abs(down).sum(1)  # ‖(W_G; W_U)[:, j]‖₁ ‖W_D[j]‖₁
    np.testing.assert_allclose(ffn_channel_scores("depth2-l1", mlp, None, key=jax.random.key(0)), expected, rtol=1e-5)
    q, o = np.asarray(attn.q_kernel[...], np.float64), np.asarray(attn.o_kernel[...], np.float64)  # [D, N, H], [N, H, D]
    expected_heads = [np.abs(q[:, n]).sum() * np.abs(o[n]).sum() for n in range(6)]
    np.testing.assert_allclose(head_scores("depth2-l1", attn, None, key=jax.random.key(0)), expected_heads, rtol=1e-5)


def test_depth2_l1_prunes_the_channel_with_the_smallest_down_row():
    from flax import nnx

    model = tiny()
    mlp = model.layers[1].mlp
    mlp.down_kernel = nnx.Param(mlp.down_kernel[...].at[11].multiply(1e-3))  # channel 11's output norm ≈ 0
    _, report = prune(model, calib(), PruneConfig(method="depth2-l1", attention_ratio=0.0, ffn_ratio=0.02, layer_range=(1, 2)))
    assert report.layer_intermediate[1] == 47 and 11 not in report.layers[1].mlp.kept


def test_a_registered_score_is_all_prune_needs(monkeypatch):
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
    config = PruneConfig(method="first-units", attention_ratio=0.34, ffn_ratio=0.25, layer_range=(1, 3))
    _, report = prune(tiny(), calib(), config)
    assert report.layers[1].mlp.kept == tuple(range(36))
    assert report.layers[2].attention.kept == (0, 1, 3, 4)  # per group of 3 query heads, the last one goes
    assert set(seen) == {("channels", True, True), ("heads", True, True)}  # gradients given, statistics not


def test_report_json_has_the_pruning_json_keys():
    _, report = prune(tiny(), calib(), PruneConfig(method="dap", sparsity=0.2, recover=True, layer_range=(1, 3), head_criterion="similarity"))
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
    assert set(record["layers"][1]["down_proj_recovery"]) == {"ridge", "held_out_error", "errors"}
    assert list(record["layers"][3]) == ["layer", "qkv_proj_recovery", "o_proj_recovery", "gate_up_proj_recovery", "down_proj_recovery"]
