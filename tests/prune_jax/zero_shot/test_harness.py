"""The lm-evaluation-harness adapter against the harness's own ``hf`` model on one checkpoint.

Skipped (with the reason) when the ``harness`` extra is absent; ``make test`` installs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval", reason="needs the harness extra: pip install -e '.[harness]'")

TEXT = ("the cat sat on the mat and the dog sat on the log while the bird sang in the tree "
        "a small boy ran to the shop to buy some bread and milk for his mother")
WORDS = TEXT.split()


@pytest.fixture(scope="module")
def checkpoint_and_task(tmp_path_factory, tiny_llama_config, random_llama, bpe_tokenizer):
    """A tiny uniform LLaMA exported with a BPE tokenizer (BOS/EOS), and a local task:
    a jsonl of 24 four-way items and a harness YAML that reads it (``dataset_path: json``)."""
    from prune_jax.models.llama import save_hf

    root = tmp_path_factory.mktemp("harness")
    tokenizer = bpe_tokenizer([TEXT], 80, special_tokens=["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    config = tiny_llama_config(num_layers=2, heads=(4, 2), intermediate=24, vocab_size=96, max_position_embeddings=128)
    save_hf(random_llama(config, seed=4, scale=0.3), tokenizer, root / "model")
    rng = np.random.default_rng(0)
    with (root / "items.jsonl").open("w") as f:
        for i in range(24):
            start = int(rng.integers(0, len(WORDS) - 8))
            choices = [" ".join(rng.choice(WORDS, int(rng.integers(1, 4)))) for _ in range(4)]
            f.write(json.dumps({"context": " ".join(WORDS[start:start + 6]), "choices": choices, "gold": int(rng.integers(4)), "id": str(i)}) + "\n")
    (root / "tasks").mkdir()
    (root / "tasks" / "pj_tiny_mc.yaml").write_text(
        "task: pj_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / 'items.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return root


def harness_scores(model: str, model_args: str, root: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import prune_jax.zero_shot.harness  # noqa: F401  (registers "prune-jax")

    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["pj_tiny_mc"], task_manager=TaskManager(include_path=str(root / "tasks")),
                                  batch_size=1, device="cpu", bootstrap_iters=0, log_samples=False)
    return out["results"]["pj_tiny_mc"]


@pytest.mark.needs_torch
def test_adapter_accuracy_equals_the_harness_hf_model(checkpoint_and_task):
    root = checkpoint_and_task
    ours = harness_scores("prune-jax", f"pretrained={root / 'model'},dtype=float32", root)
    theirs = harness_scores("hf", f"pretrained={root / 'model'},dtype=float32", root)
    for key in ("acc,none", "acc_norm,none"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), (key, ours, theirs)
    assert 0 < ours["acc,none"] < 1 or 0 < ours["acc_norm,none"] < 1  # the items are not all trivially one way


def test_adapter_agrees_with_our_own_task_scoring(checkpoint_and_task):
    """prune-jax eval --tasks on the same jsonl gives the harness adapter's numbers."""
    from prune_jax.models.llama import load_model
    from prune_jax.zero_shot.tasks import evaluate_task, load_jsonl_task

    root = checkpoint_and_task
    ours = harness_scores("prune-jax", f"pretrained={root / 'model'}", root)
    model, tokenizer = load_model(root / "model")
    direct = evaluate_task(model, tokenizer, load_jsonl_task(root / "items.jsonl"))
    assert direct["acc"] == pytest.approx(ours["acc,none"]) and direct["acc_norm"] == pytest.approx(ours["acc_norm,none"])


def test_adapter_rolling_and_generation_agree_with_the_library(checkpoint_and_task):
    from lm_eval.api.instance import Instance

    from prune_jax.zero_shot import requests as zs
    from prune_jax.zero_shot.harness import PruneJaxLM

    root = checkpoint_and_task
    lm = PruneJaxLM(pretrained=str(root / "model"), max_length=16)
    text = " ".join(WORDS[:20])
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    want = zs.loglikelihood_rolling(lm.model, lm.tokenizer, [text], max_length=16)
    assert rolling == pytest.approx(want) and rolling[0] < 0
    generated = lm.generate_until([Instance("generate_until", {}, ("the cat sat", {"until": ["\n"], "max_gen_toks": 5}), 0)], disable_tqdm=True)
    assert generated == zs.generate_until(lm.model, lm.tokenizer, [("the cat sat", ["\n"])], max_new_tokens=5, max_length=16)
    # requests decode batched by budget, each with its own stop strings: the same text as
    # one uncached request at a time
    cases = [("the cat sat", {"until": ["\n"], "max_gen_toks": 5}), ("a small boy", {"until": ["the"], "max_gen_toks": 7}),
             ("the dog sat on", {"until": ["\n"], "max_gen_toks": 5}), ("", {"max_gen_toks": 3})]
    batched = lm.generate_until([Instance("generate_until", {}, args, i) for i, args in enumerate(cases)], disable_tqdm=True)
    assert batched == [zs.generate_until(lm.model, lm.tokenizer, [(context, options.get("until", []))], max_length=16, kv_cache=False,
                                         max_new_tokens=options["max_gen_toks"])[0] for context, options in cases]
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([Instance("generate_until", {}, ("the", {"do_sample": True}), 0)], disable_tqdm=True)


def test_prune_jax_lm_eval_command_runs_the_harness_with_our_model(checkpoint_and_task, tmp_path: Path):
    """The documented command line: the harness's CLI with "prune-jax" registered."""
    import subprocess
    import sys

    root = checkpoint_and_task
    run = subprocess.run([sys.executable, "-m", "prune_jax.zero_shot.harness", "run", "--model", "prune-jax",
                          "--model_args", f"pretrained={root / 'model'}", "--tasks", "pj_tiny_mc",
                          "--include_path", str(root / "tasks"), "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results*.json")]
    assert results and 0.0 <= results[0]["results"]["pj_tiny_mc"]["acc,none"] <= 1.0


def test_adapter_refuses_unknown_model_args_and_bad_values_in_one_line(checkpoint_and_task, tmp_path: Path):
    """A typo in --model_args is an error (never a silent default); a bad path or dtype is one
    line on stderr with exit code 2, no traceback."""
    import subprocess
    import sys

    from prune_jax.zero_shot.harness import ModelArgsError, PruneJaxLM

    root = checkpoint_and_task
    with pytest.raises(ModelArgsError, match="unknown argument.* dtpye"):
        PruneJaxLM(pretrained=str(root / "model"), dtpye="bfloat16")
    with pytest.raises(ModelArgsError, match="--model_args: .*float16"):
        PruneJaxLM(pretrained=str(root / "model"), dtype="float16")
    PruneJaxLM(pretrained=str(root / "model"), batch_size=1, max_batch_size=None, device="cpu")  # the harness's generic options
    run = subprocess.run([sys.executable, "-m", "prune_jax.zero_shot.harness", "run", "--model", "prune-jax",
                          "--model_args", f"pretrained={tmp_path / 'missing'}", "--tasks", "pj_tiny_mc",
                          "--include_path", str(root / "tasks"), "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "error: --model_args:" in run.stderr and "missing" in run.stderr, run.stderr[-3000:]
