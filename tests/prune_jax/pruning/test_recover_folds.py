"""Recovery's choice of the ridge λ by k-fold cross-validation over calibration sequences
(``recover.cv_ridge_path``) against an explicit numpy k-fold, its streamed per-fold sums,
the single hold-out (folds=1) and the validation of ``folds``."""

import jax.numpy as jnp
import numpy as np
import pytest

from prune_jax.pruning import Budget, PruneConfig, Recovery, prune
from prune_jax.pruning.recover import (
    FoldGrams,
    Folds,
    Grams,
    accumulate_grams,
    held_out_split,
    refit_from_grams,
    refit_linear,
    refit_split,
    sequence_folds,
)

pytestmark = pytest.mark.usefixtures("exact_matmuls")


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    """Factory: ``tiny(seed=0)``, the pruning tests' shape: 4 blocks of 6/2 heads and 48 channels."""
    return lambda seed=0: tiny_llama(seed, scale=0.1, vocab_size=64, hidden_size=32, num_layers=4, heads=(6, 2), intermediate=48, head_dim=8)


def calib(seed: int, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 64, shape)


def _data(seed: int, noise: float, shape=(10, 6, 7), outputs: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.linspace(0.2, 2.0, shape[-1])  # [S, T, C], uneven scales
    w_true = rng.standard_normal((shape[-1], outputs))
    y = x @ w_true + noise * rng.standard_normal(shape[:-1] + (outputs,))
    w_current = w_true + 0.5 * rng.standard_normal(w_true.shape)  # a pruned map: near, not at, the truth
    return x, y, w_current


def _ridge(x, y, ridge, anchor):
    """argmin ‖xW − y‖² + λs‖W − A‖², s = mean diag xᵀx (A = 0: the classic ridge)."""
    gram = x.T @ x
    shift = ridge * np.mean(np.diag(gram))
    return np.linalg.solve(gram + shift * np.eye(x.shape[1]), x.T @ y + shift * anchor)


def numpy_kfold(x, y, w_current, grid, folds, toward_current):
    """The k-fold choice done explicitly: fold f = sequences [f·S//k, (f+1)·S//k); fit on
    the other k − 1 folds (np.linalg.solve), score on fold f, sum over folds, argmin; the
    final W is the ridge on all sequences with the chosen λ. Returns (errors, λ, W)."""
    S, C, D = x.shape[0], x.shape[-1], y.shape[-1]
    edges = [f * S // folds for f in range(folds + 1)]
    parts = [(x[a:b].reshape(-1, C), y[a:b].reshape(-1, D)) for a, b in zip(edges, edges[1:])]
    anchor = w_current if toward_current else np.zeros_like(w_current)
    errors = {"unrefit": sum(np.sum((xf @ w_current - yf) ** 2) for xf, yf in parts)}
    for ridge in grid:
        total = 0.0
        for f, (xf, yf) in enumerate(parts):
            x_train = np.concatenate([p[0] for g, p in enumerate(parts) if g != f])
            y_train = np.concatenate([p[1] for g, p in enumerate(parts) if g != f])
            total += np.sum((xf @ _ridge(x_train, y_train, ridge, anchor) - yf) ** 2)
        errors[f"{ridge:g}"] = total
    best = min(grid, key=lambda r: errors[f"{r:g}"])
    return errors, best, _ridge(x.reshape(-1, C), y.reshape(-1, D), best, anchor)


def _accumulate(x, y, folds, chunks):
    """Fold sums of x [S, T, C], y [S, T, D] streamed in chunks of whole sequences."""
    split = refit_split(x.shape[0], x.shape[1], folds)
    grams = None
    for s, e in chunks:
        grams = accumulate_grams(grams, jnp.asarray(x[s:e], jnp.float32), jnp.asarray(y[s:e], jnp.float32), s * x.shape[1], split)
    return grams


# chunks of sequences that straddle the fold boundaries (sequences 0, 2, 5, 7, 10 for k = 4 of 10;
# [4, 8) spans three folds) and aligned ones
STRADDLING = [(0, 3), (3, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("folds", [2, 4, 5])
@pytest.mark.parametrize("toward_current", [False, True])
@pytest.mark.parametrize("seed, noise", [(0, 0.5), (1, 3.0), (2, 6.0)])
def test_kfold_choice_and_refit_equal_an_explicit_numpy_kfold(folds, toward_current, seed, noise):
    """λ = 1e-3, 0.3 and 30 each win somewhere, and with much noise and the classic ridge no
    λ beats the current weights' CV error (the unrefit weights are kept)."""
    x, y, w_current = _data(seed, noise)
    grid = (1e-3, 0.3, 3.0, 30.0)
    grams = _accumulate(x, y, folds, STRADDLING)
    assert isinstance(grams, FoldGrams) and grams.xx.shape == (folds, 7, 7)
    w, info = refit_from_grams(grams, jnp.asarray(w_current, jnp.float32), grid, toward_current=toward_current)
    errors, best, w_expected = numpy_kfold(x, y, w_current, grid, folds, toward_current)
    for name, error in errors.items():
        np.testing.assert_allclose(info["errors"][name], error, rtol=1e-4)
    ranked = sorted(errors.values())
    assert ranked[1] > ranked[0] * (1 + 5e-4)  # a winner clear of the 1e-4 agreement: the comparison means something
    assert info["folds"] == folds
    if errors[f"{best:g}"] < errors["unrefit"]:
        assert info["ridge"] == best and info["cv_error"] == info["errors"][f"{best:g}"]
        np.testing.assert_allclose(np.asarray(w), w_expected, rtol=1e-4, atol=1e-5)
    else:  # only the classic ridge under heavy noise
        assert (seed, toward_current) == (2, False)
        assert info["ridge"] is None and info["cv_error"] == info["errors"]["unrefit"]
        np.testing.assert_array_equal(np.asarray(w), np.asarray(jnp.asarray(w_current, jnp.float32)))


def test_the_unrefit_weights_win_when_no_ridge_beats_their_cv_error():
    x, _, _ = _data(2, 0.0)
    y = np.random.default_rng(3).standard_normal(x.shape[:-1] + (3,))  # nothing linear in x to learn
    flat_x, flat_y = x.reshape(-1, 7), y.reshape(-1, 3)
    w_current = np.linalg.lstsq(flat_x, flat_y, rcond=None)[0]  # the least-squares fit of all tokens
    grams = _accumulate(x, y, 4, STRADDLING)
    w, info = refit_from_grams(grams, jnp.asarray(w_current, jnp.float32), (1e-3, 1e-1, 10.0), toward_current=False)
    errors, _, _ = numpy_kfold(x, y, w_current, (1e-3, 1e-1, 10.0), 4, False)
    assert min(errors[k] for k in errors if k != "unrefit") > errors["unrefit"]
    assert info["ridge"] is None and info["cv_error"] == info["errors"]["unrefit"]
    np.testing.assert_array_equal(np.asarray(w), np.asarray(jnp.asarray(w_current, jnp.float32)))


def test_streamed_fold_sums_equal_one_shot_sums_and_numpy_per_fold_sums():
    x, y, w_current = _data(4, 1.0)
    S, T, C = x.shape
    one_shot = _accumulate(x, y, 4, [(0, S)])  # one chunk over all four folds: masked
    aligned = _accumulate(x, y, 4, [(0, 2), (2, 5), (5, 7), (7, 10)])  # one fold per chunk: no mask
    straddling = _accumulate(x, y, 4, STRADDLING)
    folds = sequence_folds(S, T, 4)
    assert folds == Folds((0, 2 * T, 5 * T, 7 * T, 10 * T))
    tokens = refit_split(S, T, 4)  # chunks of tokens, cut inside sequences too
    flat_x, flat_y = x.reshape(-1, C), y.reshape(-1, 3)
    by_tokens = None
    for s, e in [(0, 5), (5, 13), (13, 47), (47, 60)]:
        by_tokens = accumulate_grams(by_tokens, jnp.asarray(flat_x[s:e], jnp.float32), jnp.asarray(flat_y[s:e], jnp.float32), s, tokens)
    for f, (a, b) in enumerate(zip(folds.bounds, folds.bounds[1:])):
        expected = (flat_x[a:b].T @ flat_x[a:b], flat_x[a:b].T @ flat_y[a:b], np.sum(flat_y[a:b] ** 2))
        for grams in (one_shot, aligned, straddling, by_tokens):
            for got, want in zip((grams.xx[f], grams.xy[f], grams.yy[f]), expected):
                np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
    grid = (1e-2, 1.0)
    infos = [refit_from_grams(g, jnp.asarray(w_current, jnp.float32), grid, toward_current=True)[1] for g in (one_shot, straddling)]
    assert infos[0]["ridge"] == infos[1]["ridge"]
    for name in infos[0]["errors"]:
        np.testing.assert_allclose(infos[0]["errors"][name], infos[1]["errors"][name], rtol=1e-5)


def test_one_fold_is_the_single_hold_out_of_the_last_tenth_of_the_tokens():
    x, y, w_current = _data(5, 1.0, shape=(5, 20, 9), outputs=4)
    split = refit_split(5, 20, 1)
    assert split == held_out_split(100) == 90  # an int: the first held-out token, as before
    grid = (1e-3, 1e-1, 10.0)
    grams = None
    for s, e in [(0, 2), (2, 3), (3, 5)]:  # sequence 4 is cut at token 10
        grams = accumulate_grams(grams, jnp.asarray(x[s:e], jnp.float32), jnp.asarray(y[s:e], jnp.float32), s * 20, split)
    assert isinstance(grams, Grams)
    for toward_current in (False, True):
        w, info = refit_from_grams(grams, jnp.asarray(w_current, jnp.float32), grid, toward_current=toward_current)
        xf, yf = x.reshape(100, 9), y.reshape(100, 4)
        anchor = w_current if toward_current else np.zeros_like(w_current)
        solutions = {r: _ridge(xf[:split], yf[:split], r, anchor) for r in grid}
        expected = {"unrefit": np.sum((xf[split:] @ w_current - yf[split:]) ** 2),
                    **{f"{r:g}": np.sum((xf[split:] @ solutions[r] - yf[split:]) ** 2) for r in grid}}
        for name, error in expected.items():
            np.testing.assert_allclose(info["errors"][name], error, rtol=1e-4)
        best = min(grid, key=lambda r: expected[f"{r:g}"])
        assert info["ridge"] == best and info["folds"] == 1
        np.testing.assert_allclose(np.asarray(w), solutions[best], rtol=1e-4, atol=1e-5)  # fit on the training 90 % only
        # refit_linear with folds=1 is the same path (one chunk: the sums differ by float32 round-off)
        w_linear, info_linear = refit_linear(jnp.asarray(xf, jnp.float32), jnp.asarray(yf, jnp.float32), jnp.asarray(w_current, jnp.float32),
                                             folds=1, grid=grid, toward_current=toward_current)
        np.testing.assert_allclose(np.asarray(w_linear), solutions[best], rtol=1e-4, atol=1e-5)
        assert info_linear["ridge"] == best and info_linear["folds"] == 1


def test_bad_folds_are_refused(tiny):
    for folds in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match="recover_folds must be a positive int"):
            Recovery(folds=folds)
    with pytest.raises(ValueError, match="recover_folds must be a positive int"):
        PruneConfig.from_json({"recover": True, "recover_folds": 0})
    with pytest.raises(ValueError, match="recover_folds=4 needs at least 4 calibration sequences"):
        sequence_folds(3, 16, 4)
    with pytest.raises(ValueError, match="recover_folds=4 needs at least 4 calibration sequences"):
        refit_split(3, 16, 4)
    x, y, w_current = _data(6, 1.0, shape=(3, 5, 4))
    with pytest.raises(ValueError, match="needs at least 4"):
        refit_linear(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w_current), folds=4)
    with pytest.raises(ValueError, match="outside the folds' tokens"):
        accumulate_grams(None, jnp.asarray(x), jnp.asarray(y), 5, refit_split(3, 5, 3))
    # prune refuses before any block is touched, only when recovery runs
    with pytest.raises(ValueError, match="recover_folds=4 needs at least 4 calibration sequences"):
        prune(tiny(), calib(0, (3, 16)), PruneConfig(method="magnitude", recovery=Recovery(enabled=True)))
    prune(tiny(), calib(0, (3, 16)), PruneConfig(method="magnitude", budget=Budget(sparsity=0.2, layer_range=(0, 4))))


def test_stage_folds_do_not_depend_on_the_chunking(tiny):
    """In ``prune``, chunks of sequences that straddle fold boundaries (batch 5 of 12
    sequences, folds of 3) and chunks aligned with the folds (batch 3) give the same choices
    and the same pruned model (to float32 sums): the stage hands the folds whole sequences."""
    tokens, probe = calib(3, (12, 16)), jnp.asarray(calib(4, (2, 16)))
    outputs, choices = [], []
    for batch in (5, 3):
        config = PruneConfig(method="dap", budget=Budget(attention_ratio=0.34, ffn_ratio=0.3, layer_range=(3, 4)), recovery=Recovery(enabled=True),
                             batch_size=batch)
        pruned, report = prune(tiny(seed=1), tokens, config)
        outputs.append(np.asarray(pruned(probe)))
        fits = [fit for layer in report.layers for half in (layer.attention, layer.mlp) for fit in (half.first_refit, half.second_refit)
                if fit is not None]
        assert fits and all(fit.folds == 4 and fit.cv_error <= fit.errors["unrefit"] for fit in fits)
        choices.append([(fit.ridge, fit.cv_error) for fit in fits])
    assert [r for r, _ in choices[0]] == [r for r, _ in choices[1]]
    np.testing.assert_allclose([e for _, e in choices[0]], [e for _, e in choices[1]], rtol=1e-3, atol=1e-2)  # block 3 qkv: 0 ± round-off
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-3, atol=1e-3)
