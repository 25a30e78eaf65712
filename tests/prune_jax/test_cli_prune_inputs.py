"""`prune-jax` on bad or awkward input: exit code 2, a message naming the problem, no
traceback, nothing written, and whatever was at the output path left exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prune_jax.cli import app

runner = CliRunner()


@pytest.fixture
def tiny(tiny_model_and_corpus):
    """(model directory, corpus) of the session's 3-block model (see conftest)."""
    return tiny_model_and_corpus.model_dir, tiny_model_and_corpus.corpus


def snapshot(path: Path) -> dict[str, bytes] | bytes | None:
    """Everything at ``path``: a file's bytes, a directory's {relative name: bytes}, or None."""
    if path.is_file():
        return path.read_bytes()
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(path.rglob("*"))}
    return None


def assert_clean_failure(result, message: str) -> None:
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert message in output, (message, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def prune_args(tiny, out: Path, *extra: str) -> list[str]:
    model_dir, corpus = tiny
    return ["prune", "--model", str(model_dir), "--calib", str(corpus), "--calib-samples", "4", "--calib-seq-len", "8",
            "--layer-start", "0", "--layer-stop", "3", "--allocation", "uniform", "--out", str(out), *extra]  # uniform: a stock config.json


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A directory of the user's own files that no prune run may touch."""
    path = tmp_path / "my_results"
    path.mkdir()
    (path / "thesis.tex").write_text("three years of work\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("1,2,3\n")
    return path


PRUNE_CASES = [
    (["--sparsity", "1.5"], "sparsity must lie in (0, 1)"),
    (["--sparsity", "0"], "sparsity must lie in (0, 1)"),
    (["--sparsity", "-0.2"], "sparsity must lie in (0, 1)"),
    (["--calib-samples", "0"], "Invalid value for '--calib-samples'"),
    (["--calib-samples", "-1"], "Invalid value for '--calib-samples'"),
    (["--calib-seq-len", "1"], "Invalid value for '--calib-seq-len'"),
    (["--calib-seq-len", "100000"], "--calib-seq-len=100000 exceeds"),
    (["--method", "bogus"], "method must be one of"),
    (["--similarity-tau", "0"], "--similarity-tau must be > 0"),
    (["--attention-ratio", "1.5"], "--attention-ratio must lie in [0, 1)"),
    (["--refit", "everything"], "refit must be one of"),
    (["--ridge-toward", "one"], "--ridge-toward must be one of"),
    (["--damp", "0"], "damp must be > 0"),
    (["--metric", "kl"], "--metric must be one of"),
    (["--method", "flap", "--metric", "loss"], "--metric is an option of method 'dap-obs', not of 'flap'"),
    (["--allocation-samples", "0"], "Invalid value for '--allocation-samples'"),
    (["--recover", "--recover-folds", "0"], "--recover-folds must be a positive int"),
    (["--recover", "--recover-folds", "5"], "--recover-folds=5 needs at least 5 calibration sequences"),
    (["--calib-split", "train"], "--calib-split must be one of"),
    (["--layer-stop", "9"], "must satisfy 0 <= start < stop <= 3"),
    (["--layer-start", "-1"], "Invalid value for '--layer-start'"),
    (["--calib-select", "bogus"], "--calib-select 'bogus' is not random or a label-free selection method"),
    (["--calib-select", "el2n"], "--calib-select 'el2n' is not random or a label-free selection method"),
    (["--calib-select", "skmm", "--calib-representation", "pixels"], "--calib-representation 'pixels' is not one of"),
    (["--calib-select", "skmm", "--calib-pool", "2"], "--calib-pool 2 is smaller than --calib-samples 4"),
    (["--calib-pool", "10"], "--calib-pool applies to a --calib-select other than random"),
    (["--calib-select", "skmm", "--calib-pool", "most"], "--calib-pool must be a positive number of windows or 'all' (every window of the split), got 'most'"),
]


@pytest.mark.parametrize("extra, message", PRUNE_CASES, ids=[" ".join(c[0]) for c in PRUNE_CASES])
def test_prune_bad_flags(tiny, tmp_path: Path, extra, message):
    out = tmp_path / "pruned"
    result = runner.invoke(app, prune_args(tiny, out, *extra))
    assert_clean_failure(result, message)
    assert not out.exists() and not list(tmp_path.glob(".pruned*"))


def test_prune_bad_sources(tiny, tmp_path: Path):
    out = tmp_path / "pruned"
    args = prune_args(tiny, out)
    model_at, calib_at = args.index("--model") + 1, args.index("--calib") + 1
    for index, value, message in (
        (model_at, str(tmp_path / "missing_model"), "no such file or directory"),
        (calib_at, str(tmp_path / "missing.txt"), "does not exist"),
    ):
        bad = list(args)
        bad[index] = value
        assert_clean_failure(runner.invoke(app, bad), message)
        assert not out.exists()
    only_start = [a for a in args if a not in ("--layer-stop",)]
    only_start.remove("3")
    assert_clean_failure(runner.invoke(app, only_start), "--layer-start and --layer-stop go together")


def test_prune_never_destroys_what_it_did_not_write(tiny, tmp_path: Path, user_dir: Path):
    before = snapshot(user_dir)
    assert_clean_failure(runner.invoke(app, prune_args(tiny, user_dir)), "did not write")
    assert snapshot(user_dir) == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    assert_clean_failure(runner.invoke(app, prune_args(tiny, a_file)), "is an existing file")
    assert a_file.read_text() == "keep me\n" and not (tmp_path / ".notes.txt.old").exists()
    assert_clean_failure(runner.invoke(app, prune_args(tiny, a_file / "model")), "is a file, not a directory")
    assert_clean_failure(runner.invoke(app, prune_args(tiny, Path("."))), "current directory")


def test_prune_replaces_its_own_output_and_overwrites_only_when_asked(tiny, tmp_path: Path, user_dir: Path):
    out = tmp_path / "pruned"
    assert runner.invoke(app, prune_args(tiny, out)).exit_code == 0
    first = json.loads((out / "pruning.json").read_text())
    assert (out / "config.json").stat().st_mode & 0o777 == 0o644 and out.stat().st_mode & 0o777 == 0o755
    result = runner.invoke(app, prune_args(tiny, out, "--seed", "1"))  # our own output: replaced
    assert result.exit_code == 0, result.output
    assert json.loads((out / "pruning.json").read_text())["config"]["seed"] == 1 != first["config"]["seed"]
    result = runner.invoke(app, prune_args(tiny, user_dir, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert (user_dir / "pruning.json").is_file() and not (user_dir / "thesis.tex").exists()


@pytest.fixture
def existing_json(tmp_path: Path) -> Path:
    path = tmp_path / "old.json"
    path.write_text('{"perplexity": 12.5}\n')
    return path


EVAL_CASES = [
    (["--batch-size", "-1"], "Invalid value for '--batch-size'"),
    (["--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["--max-windows", "0"], "Invalid value for '--max-windows'"),
    (["--seq-len", "1"], "Invalid value for '--seq-len'"),
    (["--seq-len", "16384"], "--seq-len=16384 exceeds"),
    (["--dtype", "float16"], "--dtype must be one of float32, bfloat16"),
    (["--attention", "flash"], "--attention must be one of chunked, dot_product"),
    (["--split", "test"], "--split must be one of"),
]


@pytest.mark.parametrize("extra, message", EVAL_CASES, ids=[" ".join(c[0]) for c in EVAL_CASES])
def test_eval_bad_flags(tiny, existing_json: Path, extra, message):
    model_dir, corpus = tiny
    before = existing_json.read_bytes()
    result = runner.invoke(app, ["eval", "--model", str(model_dir), "--data", str(corpus), "--seq-len", "8",
                                 "--json", str(existing_json), *extra])
    assert_clean_failure(result, message)
    assert existing_json.read_bytes() == before
    assert sorted(p.name for p in existing_json.parent.iterdir()) == ["old.json"]


def test_eval_bad_paths(tiny, tmp_path: Path):
    model_dir, corpus = tiny
    base = ["eval", "--model", str(model_dir), "--data", str(corpus), "--seq-len", "8"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "no_tokenizer").mkdir()
    cases = [
        (["--json", str(tmp_path)], "is a directory"),
        (["--json", "."], "is a directory"),
        (["--json", str(a_file / "ppl.json")], "is a file, not a directory"),
        (["--tokenizer", str(tmp_path / "missing_dir")], "--tokenizer"),
        (["--tokenizer", str(tmp_path / "no_tokenizer")], "holds no tokenizer files"),
        (["--data", str(tmp_path / "missing.jsonl")], "does not exist"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert_clean_failure(result, message)
        if "missing_dir" in " ".join(extra):
            assert "does not exist" in " ".join(result.output.split())  # rich wraps long paths
    assert a_file.read_text() == "x"


def test_a_users_single_text_file_works_for_eval_and_prune(tiny, tmp_path: Path):
    """One .txt with no document breaks: evaluated whole by default; calibrates pruning."""
    model_dir, _ = tiny
    notes = tmp_path / "notes.txt"
    notes.write_text("\n\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(40)) + "\n")
    out = tmp_path / "ppl.json"
    result = runner.invoke(app, ["eval", "--model", str(model_dir), "--data", str(notes), "--seq-len", "8", "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["split"] == "all" and payload["windows"] > 0
    result = runner.invoke(app, ["prune", "--model", str(model_dir), "--calib", str(notes), "--calib-samples", "2",
                                 "--calib-seq-len", "8", "--layer-start", "0", "--layer-stop", "3", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p" / "pruning.json").read_text())["calibration"]["split"] == "all"


def test_prune_with_selected_calibration_windows(tiny, tmp_path: Path):
    """--calib-select skmm: the chosen windows and the selection record land in pruning.json;
    a pool with fewer windows than asked for, or an empty corpus, fails cleanly."""
    out = tmp_path / "pruned"
    result = runner.invoke(app, prune_args(tiny, out, "--calib-select", "skmm", "--calib-pool", "12"))
    assert result.exit_code == 0, result.output
    selection = json.loads((out / "pruning.json").read_text())["calibration"]["selection"]
    assert selection["method"] == "skmm" and selection["pool"] == 12 and len(set(selection["indices"])) == 4
    assert selection["representation"] == "moments" and 0 <= selection["moment_error"] < 1

    few = tmp_path / "few.txt"
    few.write_text("hello there, a short note\n")
    bad = prune_args(tiny, tmp_path / "p2", "--calib-select", "kcenter")
    bad[bad.index("--calib") + 1] = str(few)
    assert_clean_failure(runner.invoke(app, bad), "fewer than the 4 asked for")
    assert not (tmp_path / "p2").exists()
    tiny_text = tmp_path / "tiny.txt"
    tiny_text.write_text("hello there\n")
    bad[bad.index("--calib") + 1] = str(tiny_text)
    assert_clean_failure(runner.invoke(app, bad), "fewer than one window of seq_len=8")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad[bad.index("--calib") + 1] = str(empty)
    result = runner.invoke(app, bad)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "p2").exists()


DEMO_CASES = [
    (["--sparsity", "1.5"], "sparsity must lie in (0, 1)"),
    (["--method", "bogus"], "method must be one of"),
    (["--calib-samples", "0"], "Invalid value for '--calib-samples'"),
    (["--eval-windows", "0"], "Invalid value for '--eval-windows'"),
]


@pytest.mark.parametrize("extra, message", DEMO_CASES, ids=[" ".join(c[0]) for c in DEMO_CASES])
def test_demo_checks_flags_before_loading_the_model(monkeypatch, tmp_path: Path, extra, message):
    import prune_jax.models.llama as llama

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(llama, "load_model", no_load)
    out = tmp_path / "demo"
    assert_clean_failure(runner.invoke(app, ["demo", "--out", str(out), *extra]), message)
    assert not out.exists()


def test_demo_refuses_a_users_directory_before_loading(monkeypatch, user_dir: Path):
    import prune_jax.models.llama as llama

    monkeypatch.setattr(llama, "load_model", lambda *a, **k: pytest.fail("model loaded before --out was checked"))
    before = snapshot(user_dir)
    assert_clean_failure(runner.invoke(app, ["demo", "--out", str(user_dir)]), "did not write")
    assert snapshot(user_dir) == before


def test_prune_help_lists_every_method():
    from prune_jax.pruning import METHODS

    result = runner.invoke(app, ["prune", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert all(method in text for method in METHODS), text


def test_prune_dtype_and_mesh_flags(tiny, tmp_path: Path):
    cases = [
        (["--dtype", "float16"], "--dtype must be one of"),
        (["--mesh", "data"], "--mesh"),
        (["--mesh", "data=64"], "needs 64 devices"),
        (["--mesh", "data=3"], "must divide over the mesh's data axis"),  # 4 calibration samples over 3 devices
    ]
    for extra, message in cases:
        result = runner.invoke(app, prune_args(tiny, tmp_path / "out", *extra))
        assert_clean_failure(result, message)
        assert not (tmp_path / "out").exists()


def test_prune_on_a_mesh_in_bfloat16_writes_the_run(tiny, tmp_path: Path):
    result = runner.invoke(app, prune_args(tiny, tmp_path / "out", "--mesh", "data=2,model=2", "--dtype", "bfloat16", "--recover"))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert record["mesh"] == {"data": 2, "model": 2} and record["dtype"] == "bfloat16"


def finetune_args(tiny, out: Path, *extra: str) -> list[str]:
    model_dir, corpus = tiny
    return ["finetune", "--model", str(model_dir), "--data", str(corpus), "--seq-len", "8", "--steps", "2", "--batch-size", "2",
            "--lr", "1e-2", "--out", str(out), *extra]


FINETUNE_CASES = [
    (["--select", "bogus", "--n", "4"], "--select 'bogus' is not all or a label-free selection method"),
    (["--select", "el2n", "--n", "4"], "--select 'el2n' is not all or a label-free selection method"),
    (["--select", "skmm"], "--n goes with --select other than all"),
    (["--n", "4"], "--n needs --select"),
    (["--select", "skmm", "--n", "8", "--pool", "4"], "--pool 4 is smaller than --n 8"),
    (["--select", "skmm", "--n", "100000"], "--n 100000 exceeds the"),
    (["--trainable", "adapters"], "--trainable must be one of"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lora-alpha", "-1"], "--lora-alpha must be a positive finite number"),
    (["--lora-blocks", "9"], "--lora-blocks 9 exceeds the model's 3 blocks"),
    (["--eval-windows", "2"], "--eval-windows needs a held-out half"),
    (["--seq-len", "100000"], "--seq-len"),
    (["--dtype", "float16"], "--dtype must be one of"),
]


@pytest.mark.parametrize("extra, message", FINETUNE_CASES)
def test_finetune_bad_flags(tiny, tmp_path: Path, extra, message):
    out = tmp_path / "ft"
    assert_clean_failure(runner.invoke(app, finetune_args(tiny, out, *extra)), message)
    assert not out.exists()


def test_finetune_on_skmm_selected_passages_writes_a_loadable_model(tiny, tmp_path: Path):
    """--select skmm --n 4 on a pool of 12: the chosen passages, the losses and the held-out
    PPL before/after land in finetune.json; the saved model loads and differs from the base."""
    import numpy as np

    from prune_jax.models.llama import load_model

    out = tmp_path / "ft"
    result = runner.invoke(app, finetune_args(tiny, out, "--select", "skmm", "--n", "4", "--pool", "12", "--split", "calibration",
                                              "--eval-windows", "2", "--lora-blocks", "1", "--sketch-dim", "8"))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "finetune.json").read_text())
    assert record["selection"]["method"] == "skmm" and record["selection"]["pool"] == 12
    assert len(set(record["selection"]["indices"])) == 4 and all(0 <= i < 12 for i in record["selection"]["indices"])
    assert record["data"]["rows"] == 4 and len(record["losses"]) == 2 and record["config"]["lora_layers"] == [2]
    ppl = record["held_out_perplexity"]
    assert ppl["windows"] == 2 and np.isfinite(ppl["before"]) and np.isfinite(ppl["after"]) and ppl["before"] != ppl["after"]
    base, _ = load_model(str(tiny[0]), tokenizer=False)
    tuned, _ = load_model(str(out), tokenizer=False)
    tokens = np.arange(8, dtype=np.int32)[None] % 64
    assert not np.allclose(np.asarray(base(tokens)), np.asarray(tuned(tokens)))
