"""benchmarks/llm_finetune_select.py: its pure parts (the LESS score, the mixture's
parsing and counts, the disjoint window draws) against references, without a model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
SCRIPT = ROOT / "benchmarks" / "llm_finetune_select.py"


def load_script():
    if "llm_finetune_select" not in sys.modules:
        spec = importlib.util.spec_from_file_location("llm_finetune_select", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["llm_finetune_select"] = module
        spec.loader.exec_module(module)  # top level: the standard library and numpy only
    return sys.modules["llm_finetune_select"]


def test_less_scores_are_the_mean_cosine_to_the_target_rows():
    script = load_script()
    rng = np.random.default_rng(0)
    pool, target = rng.standard_normal((7, 5)), rng.standard_normal((3, 5))
    pool[2] = 0.0  # a zero gradient scores 0
    expected = np.zeros(7)
    for i in range(7):
        for j in range(3):
            norms = np.linalg.norm(pool[i]) * np.linalg.norm(target[j])
            expected[i] += (pool[i] @ target[j] / norms if norms > 0 else 0.0) / 3
    scores = script.less_scores(pool, target)
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-12)
    # Scale-invariant per row (the cosine): rescaling rows changes nothing.
    np.testing.assert_allclose(script.less_scores(pool * rng.uniform(0.1, 10, (7, 1)), target * 5.0), expected, atol=1e-12)
    # A pool row equal to the target's only row scores 1, the highest possible: it is chosen first.
    assert script.less_scores(np.vstack([pool, target[:1]]), target[:1])[-1] == pytest.approx(1.0)
    assert script.top_rows(script.less_scores(np.vstack([pool, target[:1]]), target[:1]), 1).tolist() == [7]
    with pytest.raises(ValueError, match=r"\[N, m\] and \[M, m\]"):
        script.less_scores(pool, target[:, :4])


def test_top_rows_breaks_ties_by_index():
    assert load_script().top_rows(np.array([0.5, 2.0, 2.0, -1.0, 0.5]), 4).tolist() == [1, 2, 0, 4]


def test_parse_mixture_defaults_and_errors():
    script = load_script()
    assert script.parse_mixture("wiki-sample,python-docs", "0.75,0.25") == (["wiki-sample", "python-docs"], [0.75, 0.25])
    assert script.parse_mixture("a.txt", "1") == (["a.txt"], [1.0])
    for data, mix, message in [("a,b", "1", "1 fractions for the 2 sources"), ("a,b", "0.5,0.4", "sum to 1"),
                               ("a,b", "1.5,-0.5", "positive"), ("a,b", "0,1", "positive"), ("a,a", "0.5,0.5", "twice"),
                               ("a,", "0.5,0.5", "one or more"), ("a,b", "x,y", "numbers")]:
        with pytest.raises(ValueError, match=message):
            script.parse_mixture(data, mix)


def test_mixture_counts_sum_to_the_count_by_largest_remainder():
    counts = load_script().mixture_counts
    assert counts(1024, [0.75, 0.25]) == [768, 256]
    assert counts(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]  # one leftover: the first of the tied remainders
    assert counts(7, [0.5, 0.3, 0.2]) == [4, 2, 1]  # exact 3.5, 2.1, 1.4: floors 3, 2, 1, the leftover to 0.5
    assert sum(counts(333, [0.1, 0.2, 0.7])) == 333


def test_draw_windows_parts_are_disjoint_windows_and_stable_in_later_sizes():
    script = load_script()
    tokens = np.arange(40 * script.SEQ_LEN)  # 40 windows, window k holds k·128 … k·128 + 127
    held, target = script.draw_windows(tokens, [10, 5], seed=1)
    starts = lambda part: (part[:, 0] // script.SEQ_LEN).tolist()  # noqa: E731
    assert len(set(starts(held)) | set(starts(target))) == 15  # disjoint
    assert starts(held) == sorted(starts(held))  # stream order within a part
    np.testing.assert_array_equal(held[:, 1:] - held[:, :-1], 1)  # whole windows
    # The held-out part does not depend on the target's size.
    np.testing.assert_array_equal(script.draw_windows(tokens, [10, 20], seed=1)[0], held)
    with pytest.raises(SystemExit, match="fewer than the 41"):
        script.draw_windows(tokens, [41], seed=1)
