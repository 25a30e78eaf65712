"""Structured pruning: invariants, recovery, GQA shapes, export to transformers."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prune_jax.models.llama import LlamaConfig, init_llama, load_hf_dir, save_hf
from prune_jax.models.llama.params import model_from_state_dict, state_dict_from_model
from prune_jax.pruning import METHODS, Budget, HeadCriterion, PruneConfig, Recovery, prune, slice_channels
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


pytestmark = pytest.mark.usefixtures("exact_matmuls")


def test_pruning_nothing_is_the_identity():
    model = tiny()
    tokens = jnp.asarray(calib(1, (2, 10)))
    before = np.asarray(model(tokens))
    pruned, report = prune(model, calib(), PruneConfig(budget=Budget(attention_ratio=0.0, ffn_ratio=0.0)))
    np.testing.assert_allclose(np.asarray(pruned(tokens)), before, atol=1e-6)
    assert report.parameters_before == report.parameters_after


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
    """GQA-valid widths, and values: the kept units' first-map weights (q columns, gate/up
    columns) are the dense ones; without a score's own compensation the second maps' kept
    rows are too, and without any compensation the pruned model computes exactly the dense
    model with the removed units' o / down rows zeroed (a removed unit contributes nothing)."""
    from flax import nnx

    from prune_jax.pruning import SCORES

    model, dense = tiny(), tiny()
    config = PruneConfig(method=method, budget=Budget(attention_ratio=0.34, ffn_ratio=0.25, head_mode=head_mode, layer_range=(1, 3)))
    pruned, report = prune(model, calib(), config)
    for layer, (heads, kv) in enumerate(report.layer_heads):
        assert heads % kv == 0
        if layer in (1, 2):
            assert (heads, kv) == ((4, 2) if head_mode == "per-group" else (3, 1))
            assert report.layer_intermediate[layer] == 36
        else:
            assert (heads, kv) == (6, 2) and report.layer_intermediate[layer] == 48
    score = SCORES[method]
    zeroed = tiny()  # the dense model with the removed units' second-map rows zeroed
    for layer in (1, 2):
        heads = np.asarray(report.layers[layer].attention.kept)
        channels = np.asarray(report.layers[layer].mlp.kept)
        attn, mlp, dense_attn, dense_mlp = pruned.layers[layer].attn, pruned.layers[layer].mlp, dense.layers[layer].attn, dense.layers[layer].mlp
        np.testing.assert_array_equal(np.asarray(attn.q_kernel[...]), np.asarray(dense_attn.q_kernel[...])[:, heads])
        for name in ("gate_kernel", "up_kernel"):
            np.testing.assert_array_equal(np.asarray(getattr(mlp, name)[...]), np.asarray(getattr(dense_mlp, name)[...])[:, channels])
        if not score.removes:
            np.testing.assert_array_equal(np.asarray(attn.o_kernel[...]), np.asarray(dense_attn.o_kernel[...])[heads])
            np.testing.assert_array_equal(np.asarray(mlp.down_kernel[...]), np.asarray(dense_mlp.down_kernel[...])[channels])
        block = zeroed.layers[layer]
        removed_heads, removed_channels = np.setdiff1d(np.arange(6), heads), np.setdiff1d(np.arange(48), channels)
        block.attn.o_kernel = nnx.Param(block.attn.o_kernel[...].at[removed_heads].set(0.0))
        block.mlp.down_kernel = nnx.Param(block.mlp.down_kernel[...].at[removed_channels].set(0.0))
    probe = jnp.asarray(calib(2, (1, 9)))
    logits = np.asarray(pruned(probe))
    assert np.isfinite(logits).all()
    if not (score.removes or config.compensate):
        np.testing.assert_allclose(logits, np.asarray(zeroed(probe)), atol=1e-5, rtol=1e-5)


def test_budget_reaches_the_requested_sparsity_of_prunable_parameters():
    for sparsity in (0.1, 0.3):
        _, report = prune(tiny(), calib(), PruneConfig(method="magnitude", budget=Budget(sparsity=sparsity, layer_range=(0, 4))))
        assert sparsity <= report.fraction_of_prunable_removed < sparsity + 0.12
        assert report.parameters_before - report.parameters_after == report.prunable_before - report.prunable_after


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
    assert info2["cv_error"] <= info2["errors"]["unrefit"] and info2["folds"] == 4


def test_streamed_grams_ridge_path_equals_numpy_ridge_and_direct_held_out_errors():
    from prune_jax.pruning.recover import accumulate_grams, held_out_split, refit_from_grams

    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 20, 9)) * np.linspace(0.1, 3.0, 9)  # [S, T, C], uneven scales
    y = x @ rng.standard_normal((9, 4)) + 0.3 * rng.standard_normal((5, 20, 4))
    w_current = rng.standard_normal((9, 4))
    grid = (1e-3, 1e-1, 10.0)
    split = held_out_split(100)  # 90 training tokens: sequence 4 is cut at token 10
    grams = None
    for s, e in [(0, 2), (2, 3), (3, 5)]:  # chunks of sequences, uneven
        grams = accumulate_grams(grams, jnp.asarray(x[s:e], jnp.float32), jnp.asarray(y[s:e], jnp.float32), s * 20, split)
    w, info = refit_from_grams(grams, jnp.asarray(w_current, jnp.float32), grid)
    xf, yf = x.reshape(100, 9), y.reshape(100, 4)
    xt, yt, xh, yh = xf[:split], yf[:split], xf[split:], yf[split:]
    gram = xt.T @ xt
    expected = {"unrefit": np.sum((xh @ w_current - yh) ** 2)}
    solutions = {}
    for ridge in grid:
        solutions[ridge] = np.linalg.solve(gram + ridge * np.mean(np.diag(gram)) * np.eye(9), xt.T @ yt)
        expected[f"{ridge:g}"] = np.sum((xh @ solutions[ridge] - yh) ** 2)
    for name, error in expected.items():
        np.testing.assert_allclose(info["errors"][name], error, rtol=1e-4)
    best = min(grid, key=lambda r: expected[f"{r:g}"])
    assert expected[f"{best:g}"] < expected["unrefit"] and info["ridge"] == best
    np.testing.assert_allclose(np.asarray(w), solutions[best], rtol=1e-4, atol=1e-5)


def test_ridge_toward_the_current_weights_equals_numpy_and_tends_to_them():
    from prune_jax.pruning.recover import accumulate_grams, held_out_split, refit_from_grams

    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 7)) * np.linspace(0.2, 2.0, 7)
    y = x @ rng.standard_normal((7, 3)) + 0.5 * rng.standard_normal((60, 3))
    w_current = rng.standard_normal((7, 3))
    split = held_out_split(60)
    grams = accumulate_grams(None, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 0, split)
    grid = (1e-2, 1.0, 1e4)
    _, info = refit_from_grams(grams, jnp.asarray(w_current, jnp.float32), grid, toward_current=True)
    xt, yt, xh, yh = x[:split], y[:split], x[split:], y[split:]
    gram = xt.T @ xt
    for ridge in grid:  # argmin ‖X W − Y‖² + λs‖W − W₀‖²
        w = np.linalg.solve(gram + ridge * np.mean(np.diag(gram)) * np.eye(7), xt.T @ yt + ridge * np.mean(np.diag(gram)) * w_current)
        np.testing.assert_allclose(info["errors"][f"{ridge:g}"], np.sum((xh @ w - yh) ** 2), rtol=1e-4)
    # a huge ridge returns (nearly) the current weights, unlike the classic ridge (→ 0)
    np.testing.assert_allclose(info["errors"]["10000"], info["errors"]["unrefit"], rtol=1e-3)
    _, classic = refit_from_grams(grams, jnp.asarray(w_current, jnp.float32), grid)
    np.testing.assert_allclose(classic["errors"]["10000"], np.sum(yh**2), rtol=1e-2)


@pytest.mark.parametrize("refit", ["full", "second"])
def test_recovery_lowers_the_block_reconstruction_error(refit):
    tokens = calib(3, (24, 16))
    dense = tiny(seed=1)
    probe = jnp.asarray(calib(4, (4, 16)))
    reference = np.asarray(dense(probe))
    errors = {}
    for recover in (False, True):
        config = PruneConfig(method="dap", budget=Budget(sparsity=0.3, layer_range=(1, 3)), recovery=Recovery(enabled=recover, refit=refit))
        pruned, report = prune(tiny(seed=1), tokens, config)
        errors[recover] = float(np.mean((np.asarray(pruned(probe)) - reference) ** 2))
    assert errors[True] < errors[False]
    # Every block from the first pruned one on is refit (block 3 sees a changed stream too).
    halves = [(layer.attention, layer.mlp) for layer in report.layers]
    assert all(half.second_refit is not None for pair in halves[1:] for half in pair)
    assert all(half.second_refit is None and half.first_refit is None for half in halves[0])
    assert all((half.first_refit is not None) == (refit == "full") for pair in halves[1:] for half in pair)
    for pair in halves[1:]:  # the chosen refit never loses to the unrefit map on held-out tokens
        for fit in [half.second_refit for half in pair] + ([half.first_refit for half in pair] if refit == "full" else []):
            assert fit.cv_error <= fit.errors["unrefit"] and fit.folds == 4


def test_attention_probabilities_are_causal_rows_that_reproduce_the_heads():
    from prune_jax.models.llama.modeling import rope_inverse_frequencies

    model = tiny()
    attn = model.layers[1].attn
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 10, 32)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(10)[None], (2, 10))
    inv_freq = jnp.asarray(rope_inverse_frequencies(model.config))
    probs = np.asarray(attn.probabilities(x, positions, inv_freq))  # [B, N, T, T]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(probs, k=1) == 0)
    _, _, v = attn.projections(x)
    group = 6 // 2
    v_per_head = np.repeat(np.asarray(v), group, axis=2)  # [B, T, N, H]: head n reads KV head n // G
    np.testing.assert_allclose(np.einsum("bnts,bsnh->btnh", probs, v_per_head), np.asarray(attn.heads(x, positions, inv_freq)), atol=1e-5)


def test_head_divergence_is_the_textbook_jensen_shannon_mean():
    from prune_jax.pruning.calibrate import head_divergence

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4, 5, 5))
    causal = np.tril(np.ones((5, 5), bool))
    probs = np.where(causal, np.exp(logits), 0.0)
    probs /= probs.sum(-1, keepdims=True)
    probs[:, 3] = probs[:, 1]  # heads 1 and 3 identical
    divergence = head_divergence([jnp.asarray(probs[:2], jnp.float32), jnp.asarray(probs[2:], jnp.float32)])

    def kl(p, q):
        mask = p > 0
        return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))

    expected = np.zeros((4, 4))
    for a in range(4):
        for b in range(4):
            rows = [(probs[s, a, t], probs[s, b, t]) for s in range(3) for t in range(5)]
            expected[a, b] = np.mean([0.5 * kl(p, (p + q) / 2) + 0.5 * kl(q, (p + q) / 2) for p, q in rows])
    np.testing.assert_allclose(divergence, expected, atol=1e-5)
    assert divergence[1, 3] < 1e-6 and np.all(divergence <= np.log(2) + 1e-6)


def test_similarity_greedy_marks_one_head_of_each_similar_pair():
    from prune_jax.pruning.scores import prefer_marked, similar_heads

    d = np.full((5, 5), 0.5)
    np.fill_diagonal(d, 0.0)
    d[0, 1] = d[1, 0] = 0.01  # pair (0, 1): head 0 scores lower, so it goes
    d[1, 2] = d[2, 1] = 0.05  # (1, 2): head 1 is kept as 0's representative; 2 is marked
    d[3, 4] = d[4, 3] = 0.3  # above τ: both survive
    scores = np.array([1.0, 5.0, 2.0, 0.1, 0.2])
    marked = similar_heads(d, scores, tau=0.2)
    assert marked.tolist() == [True, False, True, False, False]
    # With a budget of 3 removals: marked heads first (by score), then the lowest score.
    order = np.argsort(prefer_marked(scores, marked))
    assert order[:3].tolist() == [0, 2, 3]


def test_similarity_criterion_removes_a_duplicated_head():
    from flax import nnx

    model = tiny(seed=3)
    attn = model.layers[1].attn
    q, o = attn.q_kernel[...], attn.o_kernel[...]
    # Head 1 copies head 0 (same KV group, same queries): identical attention maps, D = 0.
    attn.q_kernel = nnx.Param(q.at[:, 1].set(q[:, 0]))
    attn.o_kernel = nnx.Param(o.at[1].set(o[0] * 3.0))  # a large output norm: the score alone would keep both
    config = PruneConfig(method="dap", budget=Budget(attention_ratio=0.34, ffn_ratio=0.0, layer_range=(1, 2)),
                         heads=HeadCriterion("similarity", similarity_tau=1e-4))
    _, report = prune(model, calib(), config)
    kept = report.layers[1].attention.kept
    assert len(kept) == 4 and (0 in kept) != (1 in kept)
    assert set(report.layers[1].attention.similar_marked) & {0, 1}


def test_adaptive_allocation_meets_the_budget_with_a_global_threshold():
    from prune_jax.pruning.allocation import adaptive_cuts, prunable_parameters

    model = tiny()
    rng = np.random.default_rng(0)
    # Layer 1's channel scores have a long low tail (a few units far below the rest), layer 2's are
    # symmetric: after per-layer standardisation the global threshold cuts more of layer 1.
    skewed = np.concatenate([rng.normal(0, 0.05, 40), np.full(8, -10.0)])
    scores = {1: (rng.standard_normal(6), skewed), 2: (rng.standard_normal(6), rng.standard_normal(48))}
    cuts = adaptive_cuts(model, scores, sparsity=0.05, head_mode="per-group")
    assert cuts[1][1] > cuts[2][1]
    removed = sum(h * 2 * (2 * 32 * 8) + c * 3 * 32 for h, c in cuts.values())
    assert removed >= 0.05 * prunable_parameters(model)
    for sparsity in (0.1, 0.25):  # end to end: the exact fraction is reached, widths may differ per layer
        pruned, report = prune(tiny(), calib(), PruneConfig(method="flap", budget=Budget(sparsity=sparsity, allocation="adaptive", layer_range=(0, 4))))
        assert sparsity <= report.fraction_of_prunable_removed < sparsity + 0.12
        assert all(h % kv == 0 for h, kv in report.layer_heads)
        assert np.isfinite(np.asarray(pruned(jnp.asarray(calib(2, (1, 9)))))).all()


def test_global_allocation_removes_the_cheapest_error_per_parameter_first():
    from prune_jax.pruning.allocation import adaptive_cuts, prunable_parameters

    model = tiny()
    # Raw scores on one scale: layer 2's units are all cheaper than layer 1's, so a small budget
    # comes from layer 2 only (standardising would split it between the layers).
    scores = {1: (np.full(6, 1.0), np.linspace(1.0, 2.0, 48)), 2: (np.full(6, 1.0), np.linspace(1e-3, 1e-2, 48))}
    cuts = adaptive_cuts(model, scores, sparsity=0.03, head_mode="per-group", standardise=False)
    assert cuts[1] == (0, 0) and cuts[2][1] > 0
    assert adaptive_cuts(model, scores, sparsity=0.03, head_mode="per-group")[1][1] > 0
    # at most half of a block's channels go (the default cap of the global rule); the rest comes from the next cheapest block
    capped = adaptive_cuts(model, scores, sparsity=0.12, head_mode="per-group", standardise=False)
    assert capped[2][1] == 24 and capped[1][0] + capped[2][0] + capped[1][1] > 0  # the rest: heads or layer 1
    assert adaptive_cuts(model, scores, sparsity=0.12, head_mode="per-group", standardise=False, max_removed=0.9)[2][1] > 24
    with pytest.raises(ValueError, match="max_block_removal"):
        Budget(max_block_removal=1.0)
    pruned, report = prune(tiny(), calib(), PruneConfig(method="dap-obs", budget=Budget(sparsity=0.2, allocation="global", layer_range=(0, 4))))
    assert 0.2 <= report.fraction_of_prunable_removed < 0.32
    assert all(h % kv == 0 for h, kv in report.layer_heads)
    assert np.isfinite(np.asarray(pruned(jnp.asarray(calib(2, (1, 9)))))).all()
    assert prunable_parameters(pruned) == report.prunable_after


@pytest.mark.parametrize("method, recover", [("flap", False), ("flap", True), ("dap-obs", False)])
def test_bias_compensation_exports_with_biases(tmp_path: Path, method, recover):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # With recovery, every bias is refit jointly with its kernel (intercept column); dap-obs moves
    # the biases as the intercept rows of its compensation.
    config = PruneConfig(method=method, budget=Budget(sparsity=0.25, layer_range=(0, 4), allocation="uniform"),
                         recovery=Recovery(enabled=recover, bias_compensation=True))
    pruned, report = prune(tiny(), calib(), config)
    if recover:
        assert all(layer.mlp.second_refit.cv_error <= layer.mlp.second_refit.errors["unrefit"] for layer in report.layers)
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
        Budget(sparsity=1.0)
    with pytest.raises(ValueError, match=r"sparsity must lie in \(0, 1\)"):
        Budget(sparsity=0.0)
    with pytest.raises(ValueError, match="method must be one of"):
        PruneConfig(method="sparsegpt")
    with pytest.raises(ValueError, match="allocation must be one of"):
        Budget(allocation="greedy")
    with pytest.raises(ValueError, match="head_criterion must be one of"):
        HeadCriterion("entropy")
    with pytest.raises(ValueError, match="calibration must be"):
        prune(model, np.zeros((0, 16), np.int64))
    with pytest.raises(ValueError, match="calibration must be"):
        prune(model, np.zeros((4, 1), np.int64))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        prune(model, np.full((2, 8), 99))


@pytest.mark.parametrize("method", ["dap", "dap-obs"])
def test_sharded_calibration_equals_single_device(method):
    from jax.sharding import Mesh

    tokens = calib(7, (8, 16))
    # two of four blocks carry 30 % of all prunable parameters: the global rule needs its cap raised
    config = PruneConfig(method=method, budget=Budget(sparsity=0.3, layer_range=(1, 3), max_block_removal=0.9 if method == "dap-obs" else None),
                         recovery=Recovery(enabled=True), batch_size=8)
    single, report_single = prune(tiny(seed=2), tokens, config)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded, report_sharded = prune(tiny(seed=2), tokens, config, mesh=mesh)
    assert report_sharded.layer_heads == report_single.layer_heads
    assert report_sharded.layer_intermediate == report_single.layer_intermediate
    probe = jnp.asarray(calib(8, (2, 12)))
    # dap-obs solves through (H + λI)⁻¹ and then refits: Grams summed in another order move the logits by ~1e-4
    tolerance = 5e-4 if method == "dap-obs" else 1e-4
    np.testing.assert_allclose(np.asarray(sharded(probe)), np.asarray(single(probe)), atol=tolerance, rtol=tolerance)


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


def test_taylor_scores_match_torch_autograd(tmp_path: Path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from prune_jax.pruning.scores import gradient_scores

    model = tiny(seed=4, hidden_size=48)  # transformers wants hidden = heads · head_dim
    tokens = calib(9, (4, 12))
    ours = gradient_scores(model, tokens, "taylor", batch_size=3, key=jax.random.key(0))  # batches of 3 and 1: accumulation is exact
    save_hf(model, None, tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", torch_dtype=torch.float32)
    batch = torch.as_tensor(tokens, dtype=torch.long)
    logits = hf(batch[:, :-1]).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).backward()
    for layer, (heads, channels) in enumerate(ours):
        attn, mlp = hf.model.layers[layer].self_attn, hf.model.layers[layer].mlp

        def saliency(linear):
            return (linear.weight * linear.weight.grad).abs().detach().numpy()  # [out, in]

        q = saliency(attn.q_proj).reshape(6, 8, 48).sum(axis=(1, 2))  # q_proj rows of head n
        o = saliency(attn.o_proj).reshape(48, 6, 8).sum(axis=(0, 2))  # o_proj columns of head n
        np.testing.assert_allclose(heads, q + o, rtol=2e-3, atol=1e-7)
        expected = saliency(mlp.gate_proj).sum(1) + saliency(mlp.up_proj).sum(1) + saliency(mlp.down_proj).sum(0)
        np.testing.assert_allclose(channels, expected, rtol=2e-3, atol=1e-7)


def test_data_free_scores_equal_dap_on_white_inputs():
    from prune_jax.pruning.calibrate import mlp_stats
    from prune_jax.pruning.scores import ffn_channel_scores

    model = tiny()
    mlp = model.layers[0].mlp
    # Tokens √D·e_i, i = 1..D: their second moment E[xxᵀ] is exactly I.
    x = jnp.asarray(np.sqrt(32.0) * np.eye(32)[None], jnp.float32)  # [1, 32 tokens, 32]
    stats = mlp_stats(mlp, [x])
    key = jax.random.key(0)
    np.testing.assert_allclose(ffn_channel_scores("dap", mlp, stats, key=key), ffn_channel_scores("dap-data-free", mlp, stats, key=key), rtol=1e-4)


@pytest.mark.parametrize("layout", ["fsdp+tp", "make_mesh"])
def test_sharded_parameters_prune_like_one_device(layout):
    """FSDP + tensor-parallel parameters (a 2 × 2 mesh) and a ``jax.make_mesh`` mesh
    (explicit axes) prune to the single-device result: same kept units, same model."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from prune_jax.models.llama.sharding import shard_model

    tokens = calib(7, (8, 16))
    config = PruneConfig(method="dap", budget=Budget(attention_ratio=0.34, ffn_ratio=0.25, layer_range=(2, 3)), recovery=Recovery(enabled=True), batch_size=8)
    single, report_single = prune(tiny(seed=2), tokens, config)
    if layout == "fsdp+tp":
        mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
        model = shard_model(tiny(seed=2), mesh)
        assert model.layers[2].mlp.down_kernel[...].sharding.spec == P("model", "data")
    else:
        mesh = jax.make_mesh((4,), ("data",))
        model = tiny(seed=2)
    sharded, report_sharded = prune(model, tokens, config, mesh=mesh)
    assert [layer.mlp.kept for layer in report_sharded.layers] == [layer.mlp.kept for layer in report_single.layers]
    assert [layer.attention.kept for layer in report_sharded.layers] == [layer.attention.kept for layer in report_single.layers]
    if layout == "fsdp+tp":  # sliced and refit kernels keep their placement (36 channels over 2, 32 rows over 2)
        assert sharded.layers[2].mlp.down_kernel[...].sharding.spec == P("model", "data")
    probe = jnp.asarray(calib(8, (2, 12)))
    # Tensor-parallel partial sums change float32 round-off in the Grams; the ridge solve
    # (condition number up to 1/λ = 10⁴) amplifies it to ~1e-4 relative in the refit weights.
    np.testing.assert_allclose(np.asarray(sharded(probe)), np.asarray(single(probe)), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("stop_after", [1, 3])
def test_an_interrupted_prune_resumes_from_its_checkpoint_with_the_same_result(tmp_path: Path, stop_after):
    """Interrupted after block 1 (before the pruned range: streams only) or block 3 (inside
    it, with the dense stream of the recovery), a resumed run on a freshly loaded dense
    model ends with the uninterrupted run's kept units, weights and reports."""
    tokens = calib(5, (8, 16))
    config = PruneConfig(method="dap", budget=Budget(sparsity=0.3, layer_range=(2, 4)), recovery=Recovery(enabled=True), batch_size=4)
    reference, report_ref = prune(tiny(seed=3), tokens, config)

    class Interrupt(Exception):
        pass

    def stop(done, total):
        if done == stop_after + 1:
            raise Interrupt

    checkpoint = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        prune(tiny(seed=3), tokens, config, checkpoint=checkpoint, progress=stop)
    assert (checkpoint / "progress.json").is_file()
    seen = []
    resumed, report = prune(tiny(seed=3), tokens, config, checkpoint=checkpoint, progress=lambda done, total: seen.append(done))
    assert seen[0] == stop_after + 1  # the finished blocks were restored, not recomputed
    assert report.layers == report_ref.layers and report.layer_intermediate == report_ref.layer_intermediate
    want, got = state_dict_from_model(reference), state_dict_from_model(resumed)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    # A checkpoint of another run (other calibration) is refused, and so is a directory of other files.
    with pytest.raises(ValueError, match="checkpoint of a different run"):
        prune(tiny(seed=3), calib(6, (8, 16)), config, checkpoint=checkpoint)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds files that are not a prune checkpoint"):
        prune(tiny(seed=3), tokens, config, checkpoint=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"


def test_compilations_do_not_grow_with_the_number_of_blocks():
    """The per-chunk stage functions are compiled once per block shape: pruning 2 or 4
    equal-width blocks compiles the same programs (fresh widths for each run, so neither
    finds the other's programs in the cache)."""

    def compilations(num_layers: int, hidden_size: int) -> int:
        seen = []

        def listen(name, secs, **_):
            if name == "/jax/core/compile/backend_compile_duration":
                seen.append(secs)

        model = tiny(seed=1, num_layers=num_layers, hidden_size=hidden_size, layer_heads=((6, 2),) * num_layers,
                     layer_intermediate=(48,) * num_layers)
        config = PruneConfig(method="dap", budget=Budget(sparsity=0.3, layer_range=(0, num_layers)), recovery=Recovery(enabled=True), batch_size=4)
        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            prune(model, calib(1, (8, 16)), config)
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
        return len(seen)

    compilations(1, hidden_size=24)  # what no width changes compiles once
    # D = 40 and 56 differ from every unit count (48 channels, 6·8 or fewer head columns), so
    # no two Gram shapes coincide in either run (a coincidence would save one compile).
    assert compilations(2, hidden_size=40) == compilations(4, hidden_size=56)
