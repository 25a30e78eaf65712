"""Calibration windows chosen by their layer-input moments (prune_jax.pruning.calib_select)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prune_jax.pruning.calib_select import (
    default_pool_size,
    input_moments,
    moment_error,
    pool_size,
    select_calibration,
    window_pool,
    window_representations,
)
from skmm_jax.sketch import kronecker_sketch


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    model = tiny_llama(num_layers=3, heads=(4, 2), intermediate=24, vocab_size=40, hidden_size=16, head_dim=4)
    tokens = np.random.default_rng(0).integers(0, 40, 40 * 8 + 5).astype(np.int32)
    return model, tokens


def _block_inputs_numpy(model, windows):
    """The normed MLP inputs of every block, by the model's own hooks (reference)."""
    x = model.embed_tokens(jnp.asarray(windows))
    positions = model.default_positions(jnp.asarray(windows))
    inv_freq = model.rope_frequencies()
    out = []
    for block in model.layers:
        h = block.attention_residual(x, positions, inv_freq)
        out.append(np.asarray(block.post_attn_norm(h), np.float64))
        x = block.mlp_residual(h)
    return out


def test_window_pool_is_every_non_overlapping_window_or_a_uniform_subset(tiny):
    _, tokens = tiny
    windows = window_pool(tokens, 8)
    assert windows.shape == (40, 8) and np.array_equal(windows.reshape(-1), tokens[:320])
    subset = window_pool(tokens, 8, pool=10, seed=1)
    rows = {tuple(r) for r in windows.tolist()}
    assert subset.shape == (10, 8) and all(tuple(r) in rows for r in subset.tolist())
    with pytest.raises(ValueError, match="fewer than one window"):
        window_pool(tokens[:5], 8)
    with pytest.raises(ValueError, match="pool must be a positive int or None, got 0"):
        window_pool(tokens, 8, pool=0)


def test_moments_and_representations_match_numpy(tiny):
    model, tokens = tiny
    windows = window_pool(tokens, 8)[:11]  # 11 rows with batch 4: a padded last batch
    inputs = _block_inputs_numpy(model, windows)
    expected = np.stack([np.einsum("btd,bte->de", x, x) / (11 * 8) for x in inputs])
    np.testing.assert_allclose(input_moments(model, windows, batch=4), expected, rtol=1e-4, atol=1e-5)

    features, pool = window_representations(model, windows, "moments", layers=(0, 2), sketch_dim=16, key=jax.random.key(3), batch=4)
    np.testing.assert_allclose(pool, expected, rtol=1e-4, atol=1e-5)
    sketch = kronecker_sketch(jax.random.fold_in(jax.random.key(3), 0), (16, 16), 16)
    per_window = np.einsum("btd,bte->bde", inputs[0], inputs[0]).reshape(11, -1) / 8  # vec((1/T) M_w) of block 0
    np.testing.assert_allclose(features[:, :16], np.asarray(sketch(jnp.asarray(per_window, jnp.float32))), rtol=1e-3, atol=1e-4)
    hidden, _ = window_representations(model, windows, "hidden", layers=(1,), batch=4)
    np.testing.assert_allclose(hidden, inputs[1].mean(axis=1), rtol=1e-4, atol=1e-5)

    assert moment_error(expected, expected) == 0.0
    assert moment_error(2 * expected, expected) == pytest.approx(1.0)


def test_select_calibration_records_the_choice_and_checks_input(tiny):
    model, tokens = tiny
    chosen = select_calibration(model, tokens, 6, method="skmm", seq_len=8, pool=30, seed=2)
    pool = window_pool(tokens, 8, pool=30, seed=2)
    assert chosen.windows.shape == (6, 8) and np.array_equal(chosen.windows, pool[chosen.indices])
    assert chosen.record["method"] == "skmm" and chosen.record["pool"] == 30 and 0 <= chosen.record["moment_error"] < 1
    # the error recorded is the subset's, recomputed here from the windows themselves
    full = input_moments(model, pool)
    assert chosen.record["moment_error"] == pytest.approx(moment_error(input_moments(model, chosen.windows), full), rel=1e-4)
    random = select_calibration(model, tokens, 6, method="random", seq_len=8, seed=2)
    assert random.windows.shape == (6, 8) and "moment_error" not in random.record
    # rows are shuffled (seeded), not in pool (document) order: recovery holds out contiguous blocks of rows
    assert np.any(np.diff(chosen.indices) < 0) and len(set(chosen.indices.tolist())) == 6
    again = select_calibration(model, tokens, 6, method="skmm", seq_len=8, pool=30, seed=2)
    assert np.array_equal(again.indices, chosen.indices)

    with pytest.raises(ValueError, match="fewer than the 6 asked for"):
        select_calibration(model, tokens, 6, seq_len=8, pool=4)
    with pytest.raises(ValueError, match="unknown calibration selection"):
        select_calibration(model, tokens, 6, method="best", seq_len=8)
    with pytest.raises(ValueError, match="needs labels"):
        select_calibration(model, tokens, 6, method="el2n", seq_len=8)
    with pytest.raises(ValueError, match="unknown calibration representation"):
        select_calibration(model, tokens, 6, representation="pixels", seq_len=8)
    with pytest.raises(ValueError, match="fewer than one window"):
        select_calibration(model, np.zeros(0, np.int32), 6, seq_len=8)


def test_the_default_pool_is_bounded_by_n_and_all_is_every_window(tiny, monkeypatch):
    assert (default_pool_size(1), default_pool_size(16), default_pool_size(32), default_pool_size(64)) == (512, 512, 512, 1024)
    assert pool_size(None, 16, 2828) == 512 and pool_size(None, 64, 20_000) == 1024 and pool_size(None, 64, 300) == 300
    assert pool_size("all", 16, 20_000) == 20_000 and pool_size(100, 16, 5_000) == 100 and pool_size(100, 16, 50) == 50
    for bad in ("most", 0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"pool must be a number of windows, 'all' \(every window\) or None"):
            pool_size(bad, 16, 100)
    # the rule scaled down to the tiny corpus (40 windows): 2 windows per kept window, no floor
    import prune_jax.pruning.calib_select as calib_select

    monkeypatch.setattr(calib_select, "POOL_PER_WINDOW", 2)
    monkeypatch.setattr(calib_select, "POOL_MIN", 0)
    model, tokens = tiny
    seen = []
    chosen = select_calibration(model, tokens, 6, seq_len=8, seed=2, progress=lambda done, total: seen.append((done, total)))
    assert (chosen.record["pool"], chosen.record["pool_available"], chosen.record["pool_requested"]) == (12, 40, "default")
    assert np.array_equal(chosen.windows, window_pool(tokens, 8, pool=12, seed=2)[chosen.indices])
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)  # the pool's forward pass, its size shown from the start
    every = select_calibration(model, tokens, 6, seq_len=8, seed=2, pool="all")
    assert (every.record["pool"], every.record["pool_requested"]) == (40, "all")
    assert np.array_equal(every.windows, window_pool(tokens, 8)[every.indices])
    # "random" runs no forward pass: its default pool is every window
    assert select_calibration(model, tokens, 6, method="random", seq_len=8, seed=2).record["pool"] == 40
    with pytest.raises(ValueError, match="pool must be a number of windows"):
        select_calibration(model, tokens, 6, seq_len=8, pool="most")
