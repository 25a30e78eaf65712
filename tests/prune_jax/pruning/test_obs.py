"""The OBS greedy (``pruning.obs``): against a from-scratch least-squares greedy in numpy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from prune_jax.pruning import Budget, ObsOptions, PruneConfig, prune
from prune_jax.pruning.obs import greedy_remove, single_errors


def _problem(seed: int = 0, inputs: int = 12, outputs: int = 5, tokens: int = 300):
    """(H [C, C] mean second moment with an intercept column last, W [C, D])."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, inputs)) @ rng.normal(size=(inputs, inputs)) * 0.5 + rng.normal(size=inputs)
    x[:, -1] = 1.0
    return x.T @ x / tokens, rng.normal(size=(inputs, outputs))


def _refit_error(gram: np.ndarray, weights: np.ndarray, removed_rows) -> tuple[float, np.ndarray]:
    """min over W' with W'[removed] = 0 of tr((W' − W)ᵀ H (W' − W)), and the minimiser."""
    keep = np.setdiff1d(np.arange(len(gram)), np.asarray(list(removed_rows), int))
    best = np.zeros_like(weights)
    best[keep] = np.linalg.solve(gram[np.ix_(keep, keep)], gram[keep] @ weights)
    delta = best - weights
    return float(np.trace(delta.T @ gram @ delta)), best


def _scratch_greedy(gram, weights, unit_rows, count, groups=None, quota=None):
    """Each step refits every candidate from scratch and removes the cheapest."""
    removed = []
    for _ in range(count):
        candidates = [u for u in range(len(unit_rows)) if u not in removed]
        if groups is not None:
            candidates = [u for u in candidates if sum(groups[r] == groups[u] for r in removed) < quota[groups[u]]]
        errors = [_refit_error(gram, weights, np.concatenate([unit_rows[r] for r in removed + [u]]))[0] for u in candidates]
        removed.append(candidates[int(np.argmin(errors))])
    return removed


@pytest.mark.parametrize("rows_per_unit", [1, 2])
def test_greedy_picks_what_a_from_scratch_least_squares_greedy_picks(rows_per_unit):
    gram, weights = _problem()
    unit_rows = np.arange(10).reshape(-1, rows_per_unit)  # row 11 (the intercept) and row 10 are never units
    count = 4 if rows_per_unit == 1 else 2
    removal = greedy_remove(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, count, damp=1e-9)
    order = np.asarray(removal.order).ravel().tolist()
    assert order == _scratch_greedy(gram, weights, list(unit_rows), count)
    assert np.asarray(removal.removed).sum() == count


def test_obs_update_equals_refitting_the_kept_rows_by_least_squares():
    gram, weights = _problem(seed=1)
    unit_rows = np.arange(11)[:, None]
    removal = greedy_remove(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, 5, damp=1e-9)
    removed = np.flatnonzero(np.asarray(removal.removed))
    error, refit = _refit_error(gram, weights, removed)
    np.testing.assert_allclose(np.asarray(removal.weights), refit, atol=2e-4)
    np.testing.assert_allclose(float(np.sum(removal.errors)), error, rtol=1e-3)  # step errors add up to the total
    assert np.all(np.asarray(removal.weights)[removed] == 0.0)


def test_joint_steps_and_group_quotas():
    gram, weights = _problem(seed=2)
    unit_rows = np.arange(10).reshape(5, 2)
    groups = np.array([0, 0, 0, 1, 1])
    removal = greedy_remove(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, [1, 1], unit_group=groups, damp=1e-9)
    removed = np.asarray(removal.removed)
    assert removed[:3].sum() == 1 and removed[3:].sum() == 1
    assert np.asarray(removal.order).ravel().tolist() == _scratch_greedy(gram, weights, list(unit_rows), 2, groups, [1, 1])
    # 5 units in steps of 2: 3 steps, the last one removes one; the result is an exact refit of what was removed
    joint = greedy_remove(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), np.arange(11)[:, None], 5, per_step=2, damp=1e-9)
    assert np.asarray(joint.order).shape == (3, 2) and int(np.asarray(joint.order)[-1, 1]) == -1
    removed = np.flatnonzero(np.asarray(joint.removed))
    assert len(removed) == 5
    np.testing.assert_allclose(np.asarray(joint.weights), _refit_error(gram, weights, removed)[1], atol=2e-4)


def test_single_errors_are_the_first_greedy_step_and_removing_nothing_changes_nothing():
    gram, weights = _problem(seed=3)
    unit_rows = np.arange(11)[:, None]
    errors = single_errors(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, damp=1e-9)
    expected = np.asarray([_refit_error(gram, weights, [u])[0] for u in range(11)]) / np.trace(weights.T @ gram @ weights)
    np.testing.assert_allclose(errors, expected, rtol=1e-3)
    nothing = greedy_remove(jnp.asarray(gram), jnp.asarray(weights, jnp.float32), unit_rows, 0)
    np.testing.assert_array_equal(np.asarray(nothing.weights), weights.astype(np.float32))
    assert not np.asarray(nothing.removed).any()


def test_greedy_input_errors():
    gram, weights = _problem()
    with pytest.raises(ValueError, match="quota"):
        greedy_remove(jnp.asarray(gram), jnp.asarray(weights), np.arange(11)[:, None], 12)
    with pytest.raises(ValueError, match="per_step"):
        greedy_remove(jnp.asarray(gram), jnp.asarray(weights), np.arange(4)[:, None], [1, 1], unit_group=np.array([0, 0, 1, 1]), per_step=2)
    with pytest.raises(ValueError, match="damp"):
        PruneConfig(method="dap-obs", options=ObsOptions(damp=0.0))


@pytest.mark.parametrize("head_mode", ["per-group", "kv-groups"])
def test_dap_obs_prunes_a_block_to_the_least_squares_optimum_of_its_kept_units(tiny_llama_config, random_llama, head_mode):
    """End to end on one block: the pruned o/down kernels are the least-squares refit of the
    kept units to the block's own unpruned outputs (dampening aside), and no more accurate
    compensation of the kept set exists."""
    from prune_jax.pruning.scores import SCORES
    from prune_jax.pruning.stage import HALVES, StageContext, unit_gram

    config = tiny_llama_config(num_layers=1, heads=(4, 2), intermediate=16, hidden_size=16, head_dim=4)
    model = random_llama(config, seed=4, scale=0.3)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(6, 12))
    prune_config = PruneConfig(method="dap-obs", budget=Budget(attention_ratio=0.5, ffn_ratio=0.25, layer_range=(0, 1), head_mode=head_mode),
                                options=ObsOptions(damp=1e-7))
    block = model.layers[0]
    ctx = StageContext(config=prune_config, score=SCORES["dap-obs"], positions=model.default_positions(jnp.asarray(tokens)),
                       inv_freq=model.rope_frequencies(), chunk=4, key=None)  # fmt: skip
    h = model.embed_tokens(jnp.asarray(tokens))
    attention_gram = np.asarray(unit_gram(HALVES[0], block, 0, h, ctx).gram, np.float64)
    o_before = np.asarray(block.attn.o_kernel[...], np.float64).reshape(-1, config.hidden_size)
    pruned, report = prune(model, tokens, prune_config)
    kept_heads = report.layers[0].attention.kept
    head_dim = config.head_dim
    kept_rows = np.concatenate([np.arange(n * head_dim, (n + 1) * head_dim) for n in kept_heads])
    removed_rows = np.setdiff1d(np.arange(len(o_before)), kept_rows)
    _, expected = _refit_error(attention_gram, o_before, removed_rows)
    o_after = np.asarray(pruned.layers[0].attn.o_kernel[...]).reshape(-1, config.hidden_size)
    np.testing.assert_allclose(o_after, expected[kept_rows], atol=2e-3)
    assert pruned.layers[0].attn.q_kernel[...].shape[1] == 2
    assert pruned.layers[0].mlp.down_kernel[...].shape[0] == 12


def _weighted_refit_error(gram, weights, removed_rows, output_weight):
    """min over W' with W'[removed] = 0 of Σ_d w_d [(W' − W)ᵀ H (W' − W)]_dd (numpy)."""
    _, best = _refit_error(gram, weights, removed_rows)  # the unweighted optimum is optimal for every column weight
    delta = best - weights
    return float(np.sum(output_weight * np.diag(delta.T @ gram @ delta))), best


def test_output_metric_weights_the_errors_and_keeps_the_least_squares_compensation():
    """With an output weight per direction the greedy minimises the weighted error (against a
    from-scratch numpy greedy on the weighted error), its compensation is still the
    least-squares refit of the kept rows, and single errors are half the weighted errors."""
    gram, weights = _problem(seed=5)
    output_weight = np.array([10.0, 0.01, 1.0, 0.1, 3.0])
    unit_rows = np.arange(11)[:, None]
    removal = greedy_remove(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, 4, damp=1e-9,
                            output_weight=jnp.asarray(output_weight))
    removed = []
    for _ in range(4):
        candidates = [u for u in range(11) if u not in removed]
        errors = [_weighted_refit_error(gram, weights, removed + [u], output_weight)[0] for u in candidates]
        removed.append(candidates[int(np.argmin(errors))])
    assert np.asarray(removal.order).ravel().tolist() == removed
    unweighted = greedy_remove(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, 4, damp=1e-9)
    assert np.asarray(unweighted.order).ravel().tolist() != removed  # the metric changes the choice on this problem
    error, refit = _weighted_refit_error(gram, weights, removed, output_weight)
    np.testing.assert_allclose(np.asarray(removal.weights), refit, atol=5e-4)
    np.testing.assert_allclose(float(np.sum(removal.errors)), error, rtol=1e-3)
    singles = single_errors(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, damp=1e-9,
                            output_weight=jnp.asarray(output_weight))
    expected = [0.5 * _weighted_refit_error(gram, weights, [u], output_weight)[0] for u in range(11)]
    np.testing.assert_allclose(singles, expected, rtol=1e-3)


def test_a_constant_output_metric_changes_no_choice_and_no_weight():
    gram, weights = _problem(seed=6)
    unit_rows = np.arange(10).reshape(5, 2)
    plain = greedy_remove(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, 3)
    scaled = greedy_remove(jnp.asarray(gram, jnp.float32), jnp.asarray(weights, jnp.float32), unit_rows, 3,
                           output_weight=jnp.full(weights.shape[1], 7.0))
    np.testing.assert_array_equal(np.asarray(plain.order), np.asarray(scaled.order))
    np.testing.assert_allclose(np.asarray(scaled.weights), np.asarray(plain.weights), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scaled.errors), 7.0 * np.asarray(plain.errors), rtol=1e-4)


def test_diagonal_damping_is_jacobi_dampening():
    from prune_jax.pruning.obs import damped_inverse

    gram, _ = _problem(seed=7)
    gram[0] *= 1e3  # one massive unit
    gram[:, 0] *= 1e3
    for damping, shift in (("mean", np.mean(np.diag(gram)) * np.eye(12)), ("diagonal", np.diag(np.diag(gram)))):
        expected = np.linalg.inv(gram + 0.05 * shift)
        got = np.asarray(damped_inverse(jnp.asarray(gram, jnp.float32), 0.05, damping), np.float64)
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6 * np.abs(expected).max())
    with pytest.raises(ValueError, match="damping"):
        damped_inverse(jnp.asarray(gram, jnp.float32), 0.05, "median")
    with pytest.raises(ValueError, match="metric"):
        ObsOptions(metric="kl")
    with pytest.raises(ValueError, match="output_weight"):
        greedy_remove(jnp.asarray(gram), jnp.asarray(np.ones((12, 3))), np.arange(11)[:, None], 1, output_weight=jnp.ones(4))


def test_residual_sensitivity_is_the_mean_squared_loss_gradient_per_direction(tiny_llama_config, random_llama):
    """Against central finite differences of the summed token loss, one token and one
    direction at a time, after the attention half of block 0 and the MLP half of block 1."""
    from prune_jax.pruning.calibrate import residual_sensitivity

    config = tiny_llama_config(num_layers=2, heads=(4, 2), intermediate=16, hidden_size=16, head_dim=4)
    model = random_llama(config, seed=1, scale=0.3)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 5))
    sensitivity = residual_sensitivity(model, tokens, batch_size=1)
    assert sensitivity.shape == (2, 2, 16)

    def loss(layer, half, perturbation):  # summed next-token NLL with `perturbation` [S, T − 1, D] added after one half
        inputs = jnp.asarray(tokens[:, :-1])
        positions, inv_freq = model.default_positions(inputs), model.rope_frequencies()
        x = model.embed_tokens(inputs)
        for index, block in enumerate(model.layers):
            h = block.attention_residual(x, positions, inv_freq) + (perturbation if (index, half) == (layer, 0) else 0.0)
            x = block.mlp_residual(h) + (perturbation if (index, half) == (layer, 1) else 0.0)
        return float(jnp.sum(model.next_token_nll(model.norm(x), jnp.asarray(tokens[:, 1:]))))

    step = 1e-2
    for layer, half in ((0, 0), (1, 1)):
        for d in (0, 7):
            squares = []
            for s in range(2):
                for t in range(4):
                    e = np.zeros((2, 4, 16), np.float32)
                    e[s, t, d] = step
                    squares.append(((loss(layer, half, jnp.asarray(e)) - loss(layer, half, jnp.asarray(-e))) / (2 * step)) ** 2)
            np.testing.assert_allclose(sensitivity[layer, half, d], np.mean(squares), rtol=3e-2, atol=1e-6)


def test_loss_aware_dap_obs_end_to_end_and_the_allocation_subset(tiny_llama):
    """metric="loss" prunes to the budget with the sensitivity of the first
    ``allocation_samples`` sequences; reading all of them equals the default (None); the
    sensitivity changes which units go (against the energy metric); bad values are refused."""
    tokens = np.random.default_rng(1).integers(0, 64, size=(8, 10))

    def run(**budget_and_options):
        options = {k: budget_and_options.pop(k) for k in ("metric", "damping") if k in budget_and_options}
        config = PruneConfig(method="dap-obs", budget=Budget(sparsity=0.3, layer_range=(0, 3), allocation="global", max_block_removal=0.9,
                                                                   **budget_and_options),
                             options=ObsOptions(**options))
        model, report = prune(tiny_llama(seed=2, num_layers=3, vocab_size=64), tokens, config)
        return report

    loss_all = run(metric="loss")
    assert abs(loss_all.fraction_of_prunable_removed - 0.3) < 0.1
    assert run(metric="loss", allocation_samples=8).layer_cuts == loss_all.layer_cuts
    assert [layer.mlp.kept for layer in run(metric="loss", allocation_samples=8).layers] == [layer.mlp.kept for layer in loss_all.layers]
    energy = run(metric="energy")
    assert ([layer.mlp.kept for layer in energy.layers], energy.layer_cuts) != ([layer.mlp.kept for layer in loss_all.layers], loss_all.layer_cuts)
    subset = run(metric="loss", allocation_samples=2)
    assert abs(subset.fraction_of_prunable_removed - 0.3) < 0.1
    record = PruneConfig(method="dap-obs", budget=Budget(allocation_samples=4), options=ObsOptions(metric="loss", damping="diagonal")).to_json()
    assert record["allocation_samples"] == 4 and record["metric"] == "loss" and PruneConfig.from_json(record).to_json() == record
    default = PruneConfig(method="dap-obs")
    assert default.options.metric == "energy" and default.allocation_samples is None and default.allocation_mode == "global"
    assert PruneConfig(method="flap").allocation_samples is None  # every sequence for methods without their own
    with pytest.raises(ValueError, match="allocation_samples"):
        Budget(allocation_samples=0)


def test_stream_metric_weights_errors_by_the_inverse_stream_energy(tiny_llama_config, random_llama, tiny_llama):
    """metric="stream": a half's output weight is 1 / E[h_d²] of its input stream (numpy,
    whatever the chunking), its single errors are ½·Σ_d w_d err_d of that weight (numpy),
    and a prune with it meets the budget and removes other units than the energy metric."""
    from prune_jax.pruning.scores import SCORES, _obs_channels, Evidence
    from prune_jax.pruning.stage import HALVES, StageContext, unit_gram

    config = tiny_llama_config(num_layers=1, heads=(4, 2), intermediate=16, hidden_size=16, head_dim=4)
    model = random_llama(config, seed=4, scale=0.3)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(6, 12))
    prune_config = PruneConfig(method="dap-obs", options=ObsOptions(metric="stream"))
    h = model.embed_tokens(jnp.asarray(tokens))
    grams = []
    for chunk in (2, 6):
        ctx = StageContext(config=prune_config, score=SCORES["dap-obs"], positions=model.default_positions(jnp.asarray(tokens)),
                           inv_freq=model.rope_frequencies(), chunk=chunk, key=None)  # fmt: skip
        grams.append(unit_gram(HALVES[1], model.layers[0], 0, h, ctx))
    h64 = np.asarray(h, np.float64)
    expected = 1.0 / np.mean(h64**2, axis=(0, 1))
    for stats in grams:
        np.testing.assert_allclose(np.asarray(stats.output_weight), expected, rtol=1e-5)
    mlp = model.layers[0].mlp
    errors = _obs_channels(mlp, Evidence(key=None, stats=grams[0], options=prune_config.options))
    gram, down = np.asarray(grams[0].gram, np.float64), np.asarray(mlp.down_kernel[...], np.float64)
    inverse = np.linalg.inv(gram + prune_config.options.damp * np.mean(np.diag(gram)) * np.eye(len(gram)))
    reference = 0.5 * np.array([np.sum(expected * down[u] ** 2) / inverse[u, u] for u in range(len(down))])
    np.testing.assert_allclose(errors, reference, rtol=2e-3)

    tokens = np.random.default_rng(1).integers(0, 64, size=(8, 10))

    def run(metric):
        config = PruneConfig(method="dap-obs", budget=Budget(sparsity=0.3, layer_range=(0, 3), allocation="global", max_block_removal=0.9),
                             options=ObsOptions(metric=metric))
        return prune(tiny_llama(seed=2, num_layers=3, vocab_size=64), tokens, config)[1]

    stream, energy = run("stream"), run("energy")
    assert abs(stream.fraction_of_prunable_removed - 0.3) < 0.1
    assert ([layer.mlp.kept for layer in stream.layers], stream.layer_cuts) != ([layer.mlp.kept for layer in energy.layers], energy.layer_cuts)
