"""``skmm_jax.common.streaming.stream_chunks``: the one chunked-streaming loop of both libraries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skmm_jax.common.streaming import chunk_bounds, pad_leading, stream_chunks


def run(total, chunk_size, apply=None, rows=None):
    """Streams rows [total, 2] through ``apply``; returns (results in order, events, progress calls)."""
    rows = np.arange(2 * total, dtype=np.float32).reshape(total, 2) if rows is None else rows
    events, results, progress = [], [], []

    def load(start, stop):
        events.append(("load", start, stop))
        return {"x": rows[start:stop], "i": np.arange(start, stop)}

    def default_apply(chunk):
        events.append(("apply", chunk["x"].shape[0]))
        return {"y": chunk["x"] * 2.0, "i": chunk["i"]}

    def finish(start, stop, result):
        events.append(("finish", start, stop))
        results.append((start, stop, result))

    stream_chunks(apply or default_apply, load, finish, total, chunk_size, progress=lambda d, t: progress.append((d, t)))
    return results, events, progress


def test_order_padding_dropped_and_progress():
    results, events, progress = run(10, 4)
    assert [(a, b) for a, b, _ in results] == [(0, 4), (4, 8), (8, 10)]
    for start, stop, result in results:
        assert isinstance(result["y"], np.ndarray) and result["y"].shape == (stop - start, 2)  # padding dropped
        np.testing.assert_array_equal(result["i"], np.arange(start, stop))
    np.testing.assert_array_equal(np.concatenate([r["y"] for _, _, r in results]), 2 * np.arange(20).reshape(10, 2))
    assert progress == [(4, 10), (8, 10), (10, 10)]
    # every apply sees the full chunk shape, the short last chunk included
    assert [e[1] for e in events if e[0] == "apply"] == [4, 4, 4]
    # one chunk in flight: chunk k is finished only after chunk k + 1 was loaded and dispatched
    kinds = [e[0] for e in events]
    assert kinds == ["load", "apply", "load", "apply", "finish", "load", "apply", "finish", "finish"]


def test_padding_repeats_the_last_real_row():
    seen = []

    def apply(chunk):
        seen.append(np.array(chunk["x"]))
        return {"y": chunk["x"], "i": chunk["i"]}

    run(5, 3, apply=apply)
    np.testing.assert_array_equal(seen[-1], [[6, 7], [8, 9], [8, 9]])  # rows 3, 4, then 4 again (edge)
    tree = pad_leading({"a": np.arange(2), "b": np.ones((2, 3))}, 4)
    assert tree["a"].tolist() == [0, 1, 1, 1] and tree["b"].shape == (4, 3)


def test_chunk_larger_than_total_is_one_unpadded_chunk():
    results, events, progress = run(3, 100)
    assert [(a, b) for a, b, _ in results] == [(0, 3)]
    assert [e[1] for e in events if e[0] == "apply"] == [3]  # min(chunk_size, total): no wasted rows
    assert progress == [(3, 3)]
    assert list(chunk_bounds(7, 3)) == [(0, 3), (3, 6), (6, 7)]


def test_one_compilation_for_a_jitted_apply_over_chunks_with_a_short_last_one():
    traces = []

    @jax.jit
    def apply(chunk):
        traces.append(chunk["x"].shape)  # runs once per compilation (trace)
        return {"y": jnp.tanh(chunk["x"]), "i": chunk["i"]}

    rows = np.random.default_rng(0).standard_normal((11, 2)).astype(np.float32)
    results, _, _ = run(11, 4, apply=apply, rows=rows)
    assert traces == [(4, 2)] and len(results) == 3
    np.testing.assert_allclose(np.concatenate([r["y"] for _, _, r in results]), np.tanh(rows), rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="total must be a positive int, got 0"):
        run(0, 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            run(5, bad)

    class Stop(Exception):
        pass

    finished = []

    def finish(start, stop, result):
        finished.append(stop)
        raise Stop

    with pytest.raises(Stop):
        stream_chunks(lambda c: c, lambda a, b: np.zeros((b - a, 1)), finish, 10, 3)
    assert finished == [3]  # an error in finish stops the stream at that chunk
