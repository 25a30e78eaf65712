"""``prune_jax.runs``: a run's config refuses bad input before any work, naming the field;
a run reports through the caller's reporter and writes its record; the CLI names fields by flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prune_jax.runs import QUIET, EvalModel, FinetuneRun, PerplexityRun, PruneRun, Reporter, TasksRun, run_perplexity


@pytest.mark.parametrize("make, message", [
    (lambda: PruneRun(out=Path("o"), dtype="float16"), "dtype must be one of float32, bfloat16"),
    (lambda: PruneRun(out=Path("o"), calib_split="train"), "calib_split must be one of"),
    (lambda: PruneRun(out=Path("o"), calib_select="el2n"), "calib_select 'el2n' is not random or a label-free"),
    (lambda: PruneRun(out=Path("o"), calib_select="skmm", calib_pool=2, calib_samples=4), "calib_pool 2 is smaller than `calib_samples` 4"),
    (lambda: PruneRun(out=Path("o"), calib_pool=1000), "calib_pool applies to a `calib_select` other than random"),
    (lambda: PruneRun(out=Path("o"), calib_select="skmm", calib_pool="most"), "calib_pool must be a positive number of windows or 'all'"),
    (lambda: PruneRun(out=Path("o"), calib_select="skmm", calib_pool=0), "calib_pool must be a positive number of windows or 'all'"),
    (lambda: PruneRun(out=Path("o"), calib_pool="all"), "calib_pool applies to a `calib_select` other than random"),
    (lambda: FinetuneRun(out=Path("o"), selection="skmm"), "n goes with `selection` other than all"),
    (lambda: FinetuneRun(out=Path("o"), n=4), "n needs `selection`"),
    (lambda: FinetuneRun(out=Path("o"), data="my.txt", eval_windows=2), "eval_windows needs a held-out half"),
    (lambda: EvalModel(attention="flash"), "attention must be one of chunked, dot_product"),
    (lambda: EvalModel(tokenizer=Path("/no/such/tokenizer")), "tokenizer /no/such/tokenizer does not exist"),
    (lambda: PerplexityRun(split="test"), "split must be one of"),
    (lambda: TasksRun(tasks=()), "tasks is empty"),
])
def test_a_run_config_refuses_bad_input_naming_the_field(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)


def test_the_cli_names_fields_by_their_flags():
    import typer
    from typer.testing import CliRunner

    from prune_jax.cli.shared import fail_config

    app = typer.Typer()

    @app.command()
    def go(message: str) -> None:
        fail_config(ValueError(message), {"calib_pool": "--calib-pool", "calib_samples": "--calib-samples", "n": "--n"})

    @app.command()
    def other() -> None:  # two commands: the message is an argument of "go"
        pass

    for message, shown in (("calib_pool 2 is smaller than `calib_samples` 4", "--calib-pool 2 is smaller than --calib-samples 4"),
                           ("n=5 exceeds", "--n=5 exceeds"), ("no field here: `other` stays", "no field here: other stays"),
                           ("nothing to map", "nothing to map")):
        result = CliRunner().invoke(app, ["go", message])
        assert result.exit_code == 2 and shown in " ".join(result.output.split()), result.output


def test_run_perplexity_reports_through_the_reporter_and_writes_its_record(tmp_path: Path, tiny_model_and_corpus):
    import contextlib

    seen = []

    @contextlib.contextmanager
    def bar(desc, *, unit="it", total=None):
        yield lambda done, total: seen.append((desc, done, total))

    stages = []

    def stage(message):
        stages.append(message)
        return contextlib.nullcontext()

    run = PerplexityRun(evaluated=EvalModel(model=str(tiny_model_and_corpus.model_dir)), data=str(tiny_model_and_corpus.corpus),
                        seq_len=8, json_out=tmp_path / "ppl.json")
    outcome = run_perplexity(run, reporter=Reporter(stage=stage, bar=bar))
    record = json.loads((tmp_path / "ppl.json").read_text())
    assert record == json.loads(json.dumps(outcome.record)) and record["split"] == "all" and record["seq_len"] == 8
    assert list(record) == ["model", "data", "split", "seed", "dtype", "attention", "perplexity", "nll", "tokens", "windows",
                            "seq_len", "documents", "seconds", "load_seconds", "tokens_per_second"]
    assert seen and seen[-1] == ("perplexity T=8", record["windows"], record["windows"])
    assert any(s.startswith("loading") for s in stages) and any(s.startswith("tokenising") for s in stages)
    again = run_perplexity(run, reporter=QUIET)  # the quiet default: the same number
    assert again.record["perplexity"] == record["perplexity"]
