"""Healing after pruning (``prune-jax prune --heal-steps N``, `prune_jax.runs.Healing`): off
by default and then exactly the one-shot run; on, a LoRA finetune on the calibration split's
windows, merged before export, whose record agrees with the saved model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prune_jax.cli import app
from prune_jax.runs import Healing, PruneRun

runner = CliRunner()
HEAL = ["--heal-steps", "12", "--heal-lr", "1e-2", "--heal-rank", "4"]


def prune_args(tiny, out: Path, *extra: str) -> list[str]:
    return ["prune", "--model", str(tiny.model_dir), "--calib", str(tiny.corpus), "--calib-split", "calibration",
            "--calib-samples", "4", "--calib-seq-len", "8", "--layer-start", "0", "--layer-stop", "3", "--allocation", "uniform",
            "--sparsity", "0.3", "--out", str(out), *extra]


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def without_seconds(record):
    """The record without its wall times (every "...seconds" entry, at any depth)."""
    if isinstance(record, dict):
        return {k: without_seconds(v) for k, v in record.items() if not k.endswith("seconds")}
    if isinstance(record, list):
        return [without_seconds(v) for v in record]
    return record


@pytest.fixture(scope="module")
def runs(tiny_model_and_corpus, tmp_path_factory):
    """The same prune run three times: without the flag, with --heal-steps 0, healed."""
    root = tmp_path_factory.mktemp("runs")
    outputs = {}
    for name, extra in (("default", []), ("zero", ["--heal-steps", "0"]), ("healed", HEAL)):
        result = runner.invoke(app, prune_args(tiny_model_and_corpus, root / name, *extra))
        assert result.exit_code == 0, result.output
        outputs[name] = (root / name, result.output)
    return outputs


def test_heal_steps_0_is_exactly_the_one_shot_run(runs):
    (default, _), (zero, output) = runs["default"], runs["zero"]
    a, b = files(default), files(zero)
    assert a.keys() == b.keys() and "pruning.json" in a
    for name in a:
        if name == "pruning.json":
            assert without_seconds(json.loads(a[name])) == without_seconds(json.loads(b[name]))
        elif name == "README.md":  # the card quotes the output path only
            assert a[name].decode().replace(str(default), "OUT") == b[name].decode().replace(str(zero), "OUT")
        else:
            assert a[name] == b[name], name  # the weights, config and tokenizer, byte for byte
    record = json.loads(b["pruning.json"])
    assert "healing" not in record and "LoRA updates" not in output and "--heal" not in b["README.md"].decode()


def test_healing_lowers_the_training_loss_and_its_record_matches_the_saved_model(runs, tiny_model_and_corpus):
    from prune_jax.data import eval_windows
    from prune_jax.evaluate import perplexity
    from prune_jax.models.llama import load_model
    from prune_jax.runs.inputs import read_documents, tokenize

    (one_shot, _), (healed, output) = runs["default"], runs["healed"]
    record = json.loads((healed / "pruning.json").read_text())
    healing = record["healing"]
    assert healing["steps"] == 12 and len(healing["losses"]) == 12
    assert healing["config"]["rank"] == 4 and healing["config"]["learning_rate"] == 1e-2 and healing["config"]["trainable"] == "lora"
    assert healing["loss_first"] == healing["losses"][0] and healing["loss_last"] == healing["losses"][-1]
    assert healing["loss_last"] < healing["loss_first"]  # the calibration (training) loss went down
    assert healing["data"]["split"] == "calibration" and healing["data"]["seq_len"] == 8
    held = healing["held_out_perplexity"]
    assert held["split"] == "eval" and held["seq_len"] == 8 and held["windows"] >= 1
    assert "healed 12 LoRA updates" in " ".join(output.split())
    assert "Healing" in (healed / "README.md").read_text() and "--heal-steps 12" in (healed / "README.md").read_text()

    # the pruning is the same; the healing changed the weights, not the widths
    one_shot_record = json.loads((one_shot / "pruning.json").read_text())
    assert without_seconds({k: v for k, v in record.items() if k != "healing"}) == without_seconds(one_shot_record)
    assert json.loads((healed / "config.json").read_text()) == json.loads((one_shot / "config.json").read_text())

    # an independent perplexity of both saved models on the held-out (document-disjoint) windows
    pruned, tokenizer = load_model(str(one_shot))
    tuned, _ = load_model(str(healed))
    docs = read_documents(str(tiny_model_and_corpus.corpus), "eval", 0)
    calibration_ids = set(record["calibration"]["documents"])
    assert docs and not calibration_ids & {d.id for d in docs}
    windows = eval_windows(tokenize(docs, tokenizer), 8, held["windows"])
    assert len(windows) == held["windows"]
    assert perplexity(pruned, windows).perplexity == pytest.approx(held["before"], rel=1e-4)
    assert perplexity(tuned, windows).perplexity == pytest.approx(held["after"], rel=1e-4)
    assert held["after"] != held["before"]


def test_healing_on_the_library_api_refuses_bad_values():
    assert not Healing().enabled and Healing().steps == 0  # one-shot is the default
    for kwargs, message in (({"steps": -1}, "steps must be an int >= 0"), ({"steps": 1.5}, "steps must be an int >= 0"),
                            ({"steps": 2, "learning_rate": 0.0}, "learning_rate must be a positive finite number"),
                            ({"steps": 2, "rank": 0}, "rank must be a positive int"),
                            ({"eval_windows": 0}, "eval_windows must be a positive int")):
        with pytest.raises(ValueError, match=message):
            Healing(**kwargs)
    with pytest.raises(ValueError, match="a healed run is scored on the held-out half"):
        PruneRun(out=Path("o"), calib="my.txt", healing=Healing(steps=2))  # a user's file: all of it calibrates
    PruneRun(out=Path("o"), calib="my.txt", calib_split="calibration", healing=Healing(steps=2))
    PruneRun(out=Path("o"), calib="my.txt")  # no healing: nothing to hold out


def test_healing_refuses_a_multi_process_run(monkeypatch):
    import jax

    from prune_jax.models.llama.sharding import parse_mesh

    mesh = parse_mesh("data=2,model=2")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="healing runs in one process"):
        PruneRun(out=Path("o"), calib_split="calibration", mesh=mesh, healing=Healing(steps=2))
    PruneRun(out=Path("o"), mesh=mesh)  # one-shot pruning runs on several processes as before


@pytest.mark.parametrize("extra, message", [
    (["--heal-steps", "-1"], "--heal-steps must be an int >= 0 (0: no healing), got -1"),
    (["--heal-steps", "2", "--heal-lr", "0"], "--heal-lr must be a positive finite number"),
    (["--heal-steps", "2", "--heal-rank", "0"], "--heal-rank must be a positive int"),
])
def test_bad_healing_flags_fail_cleanly_before_any_work(tiny_model_and_corpus, tmp_path: Path, extra, message):
    out = tmp_path / "pruned"
    result = runner.invoke(app, prune_args(tiny_model_and_corpus, out, *extra))
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not out.exists()


def test_healing_needs_a_held_out_half(tiny_model_and_corpus, tmp_path: Path):
    args = prune_args(tiny_model_and_corpus, tmp_path / "pruned", "--heal-steps", "2")
    args[args.index("--calib-split") + 1] = "auto"  # a user's file: all of it
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--calib-split auto of --calib" in " ".join(result.output.split()), result.output
    assert "pass --calib-split calibration" in " ".join(result.output.split())
