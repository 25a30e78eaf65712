"""`skmm-jax` on bad input: one clear line, exit 2, nothing written, nothing replaced.

Every case runs in a scratch directory whose files (with their bytes) are compared
before and after: a failing command must neither create its output, nor leave a
temporary file, nor touch an existing output. Plus the library pieces behind the
messages (empty .npy files, all-zero features) and the SkMM solve progress callback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from skmm_jax.cli import app

runner = CliRunner()

EXISTING = b"an earlier result, not to be touched\n"
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with good and bad inputs; commands get short relative paths."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "zeros.npy", np.zeros((40, 16), np.float32))
    np.save(tmp_path / "labels.npy", np.arange(40) % 3)
    np.save(tmp_path / "short_labels.npy", np.arange(39) % 3)
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "truncated.npy").write_bytes(b"\x93NUMPY\x01\x00")
    np.savez(tmp_path / "two.npz", a=x, b=x)
    save_file({"a": x, "b": x}, str(tmp_path / "two.safetensors"))
    (tmp_path / "afile").write_bytes(b"a plain file")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "keep.txt").write_bytes(b"the user's own file")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    readonly.chmod(0o755)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _check_clean_failure(root: Path, args: list[str], message: str, out: str | None, existing: bool) -> None:
    if existing:
        if out is None:
            pytest.skip("no output file to pre-create")
        (root / out).write_bytes(EXISTING)
    before = _snapshot(root)
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, (args, result.output)
    assert message in text, (args, message, result.output)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert _snapshot(root) == before, "a failing command changed the files"  # nothing created, nothing replaced
    if existing:
        assert (root / out).read_bytes() == EXISTING


# (id, arguments after the command, text the message must contain, the output file the
# command would write or None when --out itself is the bad argument).
SKETCH_BASE = ["--input", "X.npy", "--dim", "8"]
SKETCH_CASES = [
    ("dim-0", ["--input", "X.npy", "--dim", "0"], "'--dim'"),
    ("dim--1", ["--input", "X.npy", "--dim", "-1"], "'--dim'"),
    ("dim-too-big", ["--input", "X.npy", "--dim", "16"], "--dim 16 must be smaller than the input dimension r = 16"),
    ("chunk-size-0", [*SKETCH_BASE, "--chunk-size", "0"], "'--chunk-size'"),
    ("chunk-size--1", [*SKETCH_BASE, "--chunk-size", "-1"], "'--chunk-size'"),
    ("nnz-0", [*SKETCH_BASE, "--nnz", "0"], "'--nnz'"),
    ("nnz--1", [*SKETCH_BASE, "--nnz", "-1"], "'--nnz'"),
    ("nnz-not-dividing-dim", [*SKETCH_BASE, "--nnz", "3"], "multiple of nnz"),
    ("nnz-wrong-kind", [*SKETCH_BASE, "--kind", "gaussian", "--nnz", "2"], "--nnz applies to kind sjlt only: the gaussian sketch does not take it"),
    ("seed--1", [*SKETCH_BASE, "--seed", "-1"], "'--seed'"),
    ("seed-2**32", [*SKETCH_BASE, "--seed", str(2**32)], "'--seed'"),
    ("kind-bogus", [*SKETCH_BASE, "--kind", "bogus"], "--kind must be one of gaussian, rademacher, sjlt, countsketch, srht, kronecker, got 'bogus'"),
    ("hashing-bogus", [*SKETCH_BASE, "--hashing", "bogus"], "--hashing 'bogus' is not one of shift, uniform"),
    ("empty-npy", ["--input", "empty.npy", "--dim", "8"], "empty.npy: empty file (0 bytes)"),
    ("truncated-npy", ["--input", "truncated.npy", "--dim", "8"], "truncated.npy: not a readable .npy"),
    ("input-missing", ["--input", "missing.npy", "--dim", "8"], "missing.npy does not exist"),
    ("input-directory", ["--input", "adir", "--dim", "8"], "adir is a directory"),
]

SELECT_BASE = ["--features", "X.npy", "--n", "5"]
SELECT_CASES = [
    ("n-0", ["--features", "X.npy", "--n", "0"], "--n must satisfy 0 < n <= N = 40, got n = 0"),
    ("n--1", ["--features", "X.npy", "--n", "-1"], "--n must satisfy 0 < n <= N = 40, got n = -1"),
    ("n-above-N", ["--features", "X.npy", "--n", "41"], "--n must satisfy 0 < n <= N = 40, got n = 41"),
    ("seed--1", [*SELECT_BASE, "--seed", "-1"], "'--seed'"),
    ("sketch-dim-0", [*SELECT_BASE, "--sketch-kind", "sjlt", "--sketch-dim", "0"], "'--sketch-dim'"),
    ("sketch-dim--1", [*SELECT_BASE, "--sketch-kind", "sjlt", "--sketch-dim", "-1"], "'--sketch-dim'"),
    ("sketch-dim-too-big", [*SELECT_BASE, "--sketch-kind", "sjlt", "--sketch-dim", "16"], "--sketch-dim 16 must be smaller"),
    ("sketch-dim-without-kind", [*SELECT_BASE, "--sketch-dim", "8"], "--sketch-dim needs sketch_kind"),
    ("sketch-kind-bogus", [*SELECT_BASE, "--sketch-kind", "bogus"], "--sketch-kind must be one of gaussian, rademacher, sjlt, countsketch, srht, kronecker, got 'bogus'"),
    ("c-s-0", [*SELECT_BASE, "--c-s", "0"], "--c-s must be a positive finite number or None (the smallest feasible c_S), got 0.0"),
    ("c-s--1", [*SELECT_BASE, "--c-s", "-1"], "--c-s must be a positive finite number or None (the smallest feasible c_S), got -1.0"),
    ("c-s-nan", [*SELECT_BASE, "--c-s", "nan"], "--c-s must be a positive finite number or None (the smallest feasible c_S), got nan"),
    ("c-s-inf", [*SELECT_BASE, "--c-s", "inf"], "--c-s must be a positive finite number or None (the smallest feasible c_S), got inf"),
    ("draw-bogus", [*SELECT_BASE, "--draw", "bogus"], "--draw must be one of greedy, greedy-diagonal, swap, sample, top, balanced, greedy-quota, got 'bogus'"),
    ("draw-balanced-without-labels", [*SELECT_BASE, "--draw", "balanced"], "--draw 'balanced' needs labels"),
    ("preprocess-bogus", [*SELECT_BASE, "--preprocess", "whiten"], "--preprocess must be one of ('none', 'center'"),
    ("ridge-0", [*SELECT_BASE, "--ridge", "0"], "--ridge must be 'auto' (ρ from the spectrum and n) or a positive finite number, got 0.0"),
    ("ridge-bogus", [*SELECT_BASE, "--ridge", "big"], "--ridge 'big': give auto or a positive number"),
    ("no-relax-with-sample", [*SELECT_BASE, "--no-relax", "--draw", "sample"], '--no-relax needs draw="greedy" or draw="greedy-quota" (draw=\'sample\' uses the relaxed weights p)'),
    ("candidates-below-n", [*SELECT_BASE, "--candidates", "3"], "--candidates 3 is smaller than the coreset size n = 5"),
    ("candidates-with-relax", [*SELECT_BASE, "--candidates", "20", "--relax"], "--candidates (the pre-filter) needs relax=False, the greedy draw and no c_s"),
    ("candidates-on-baseline", [*SELECT_BASE, "--method", "uniform", "--candidates", "20"], "apply to --method skmm only"),
    ("candidates-bogus", [*SELECT_BASE, "--candidates", "most"], "--candidates must be 'auto' (the count chosen from N, n and m), 'all' (every row: the exact greedy) or a positive int, got 'most'"),
    ("candidates-0", [*SELECT_BASE, "--candidates", "0"], "--candidates must be 'auto' (the count chosen from N, n and m), 'all' (every row: the exact greedy) or a positive int, got 0"),
    ("candidates--5", [*SELECT_BASE, "--candidates", "-5"], "got '-5'"),
    ("gradients-bogus", [*SELECT_BASE, "--gradients", "labels"], "--gradients must be one of ('given', 'pseudo-label'), got 'labels'"),
    ("pseudo-classes-1", [*SELECT_BASE, "--gradients", "pseudo-label", "--num-pseudo-classes", "1"], "--num-pseudo-classes must be at least 2"),
    ("gradient-head-without-gradients", [*SELECT_BASE, "--gradient-head", "fitted"], '--gradient-head: the pseudo-label settings need --gradients = "pseudo-label"'),
    ("method-bogus", [*SELECT_BASE, "--method", "bogus"], "--method 'bogus' is not one of"),
    ("deepcore-without-labels", [*SELECT_BASE, "--method", "el2n"], "--method 'el2n' needs labels"),
    ("labels-wrong-length", [*SELECT_BASE, "--method", "el2n", "--labels", "short_labels.npy"], "labels must have shape (40,)"),
    ("labels-empty", [*SELECT_BASE, "--method", "el2n", "--labels", "empty.npy"], "empty.npy: empty file (0 bytes)"),
    ("empty-npy", ["--features", "empty.npy", "--n", "5"], "empty.npy: empty file (0 bytes)"),
    ("truncated-npy", ["--features", "truncated.npy", "--n", "5"], "truncated.npy: not a readable .npy"),
    ("npz-without-array", ["--features", "two.npz", "--n", "5"], "two.npz holds ['a', 'b']: name the array to use"),
    ("safetensors-without-array", ["--features", "two.safetensors", "--n", "5"], "--array NAME"),
    ("npz-unknown-array", ["--features", "two.npz", "--n", "5", "--array", "c"], "two.npz: no array 'c'; it holds ['a', 'b']"),
    ("array-on-npy", [*SELECT_BASE, "--array", "a"], "--array 'a' applies to .npz / .safetensors files"),
    ("all-zero-features", ["--features", "zeros.npy", "--n", "5"], "features are all zero"),
]

DEMO_CASES = [
    ("samples-0", ["--samples", "0"], "'--samples'"),
    ("samples--1", ["--samples", "-1"], "'--samples'"),
    ("sketch-dim-0", ["--sketch-dim", "0"], "'--sketch-dim'"),
    ("sketch-dim--1", ["--sketch-dim", "-1"], "'--sketch-dim'"),
    ("sketch-dim-not-for-sjlt", ["--samples", "8", "--sketch-dim", "6"], "--sketch-dim 6 does not suit the sjlt sketch"),
    ("seed--1", ["--seed", "-1"], "'--seed'"),
]


def _output_cases(flag: str) -> list:
    """Bad output paths for ``flag``: what fails before any work is done."""
    cases = [
        ("out-directory", [flag, "adir"], f"{flag} adir is a directory"),
        ("out-dot", [flag, "."], f"{flag} . is a directory"),
        ("out-under-a-file", [flag, "afile/result"], "afile is a file, not a directory"),
    ]
    if ROOT:  # root ignores permissions: the read-only case cannot fail there
        cases.append(pytest.param("out-read-only", [flag, "readonly/result"], "", marks=pytest.mark.skip("running as root")))
    else:
        cases.append(("out-read-only", [flag, "readonly/result"], "readonly is not writable"))
    return cases


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing-out"])
@pytest.mark.parametrize(("case", "args", "message"), SKETCH_CASES, ids=[c[0] for c in SKETCH_CASES])
def test_sketch_rejects_bad_input(scratch: Path, case: str, args: list[str], message: str, existing: bool):
    _check_clean_failure(scratch, ["sketch", *args, "--out", "S.npy"], message, "S.npy", existing)


@pytest.mark.parametrize(("case", "args", "message"), _output_cases("--out"))
def test_sketch_rejects_bad_output_path_before_work(scratch: Path, case: str, args: list[str], message: str):
    _check_clean_failure(scratch, ["sketch", *SKETCH_BASE, *args], message, None, False)


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing-out"])
@pytest.mark.parametrize(("case", "args", "message"), SELECT_CASES, ids=[c[0] for c in SELECT_CASES])
def test_select_rejects_bad_input(scratch: Path, case: str, args: list[str], message: str, existing: bool):
    _check_clean_failure(scratch, ["select", *args, "--out", "sel.json"], message, "sel.json", existing)


@pytest.mark.parametrize(("case", "args", "message"), _output_cases("--out"))
def test_select_rejects_bad_output_path_before_work(scratch: Path, case: str, args: list[str], message: str):
    # Even with features that would fail later: the output is checked first.
    _check_clean_failure(scratch, ["select", "--features", "empty.npy", "--n", "5", *args], message, None, False)


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing-json"])
@pytest.mark.parametrize(("case", "args", "message"), DEMO_CASES, ids=[c[0] for c in DEMO_CASES])
def test_demo_rejects_bad_input(scratch: Path, case: str, args: list[str], message: str, existing: bool):
    _check_clean_failure(scratch, ["demo", *args, "--json", "demo.json"], message, "demo.json", existing)


@pytest.mark.parametrize(("case", "args", "message"), _output_cases("--json"))
def test_demo_rejects_bad_json_path_before_work(scratch: Path, case: str, args: list[str], message: str):
    _check_clean_failure(scratch, ["demo", "--samples", "8", *args], message, None, False)


def test_select_warns_on_all_zero_features_for_methods_that_still_run(scratch: Path):
    result = runner.invoke(app, ["select", "--features", "zeros.npy", "--n", "5", "--method", "uniform", "--out", "sel.json"])
    assert result.exit_code == 0, result.output
    assert "warning: features are all zero" in " ".join(result.output.split())
    assert len(json.loads((scratch / "sel.json").read_text())["indices"]) == 5


def test_interrupt_prints_one_line_and_exits_130(scratch: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    import skmm_jax.common.io
    from skmm_jax import cli

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(skmm_jax.common.io, "load_rows", interrupted)
    monkeypatch.setattr(sys, "argv", ["skmm-jax", "sketch", *SKETCH_BASE, "--out", "S.npy"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (scratch / "S.npy").exists()


# ---------------------------------------------------------------------------- library


def test_loaders_name_empty_and_truncated_files(tmp_path: Path):
    from skmm_jax.common.io import load_array, load_rows

    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    for load in (load_rows, load_array):
        with pytest.raises(ValueError, match=r"empty\.npy: empty file \(0 bytes\)"):
            load(empty)
    for suffix in (".npz", ".safetensors"):
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        with pytest.raises(ValueError, match="empty file"):
            load_array(tmp_path / f"empty{suffix}")
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(b"\x93NUMPY")
    for load in (load_rows, load_array):
        with pytest.raises(ValueError, match=r"truncated\.npy: not a readable \.npy"):
            load(truncated)


def test_skmm_refuses_all_zero_features_and_baselines_warn():
    from skmm_jax.select import select, skmm

    zeros = np.zeros((30, 4), np.float32)
    with pytest.raises(ValueError, match="all zero"):
        select("skmm", jax.random.key(0), zeros, 5)
    with pytest.raises(ValueError, match="all zero"):
        skmm(jax.random.key(0), zeros, 5)
    with pytest.warns(UserWarning, match="all zero"):
        result = select("uniform", jax.random.key(0), zeros, 5)
    assert len(set(result.indices.tolist())) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a non-zero pool does not warn
        select("uniform", jax.random.key(0), np.ones((30, 4), np.float32), 5)


@pytest.mark.parametrize("c_s", [None, 0.9])
def test_select_reports_each_skmm_solve_and_results_are_unchanged(c_s):
    from skmm_jax.select import select

    x = np.random.default_rng(1).standard_normal((60, 6)).astype(np.float32)
    options = {"bisection_steps": 3, "relax": True} if c_s is None else {"c_s": c_s}
    calls: list[tuple[int, int]] = []
    with_progress = select("skmm", jax.random.key(2), x, 10, solve_progress=lambda done, total: calls.append((done, total)), **options)
    without = select("skmm", jax.random.key(2), x, 10, **options)
    total = 1 + 3 if c_s is None else 1
    assert calls == [(k, total) for k in range(total + 1)]
    np.testing.assert_array_equal(with_progress.indices, without.indices)
    assert with_progress.diagnostics == without.diagnostics


def test_demo_config_rejects_non_positive_sizes():
    from skmm_jax.experiments.demo import DemoConfig

    for field in ("samples", "sketch_dim", "chunk_size"):
        with pytest.raises(ValueError, match=f"{field} must be a positive int, got 0"):
            DemoConfig(**{field: 0})
    with pytest.raises(ValueError, match="seed"):
        DemoConfig(seed=-1)
