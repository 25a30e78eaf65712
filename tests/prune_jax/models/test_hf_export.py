"""The export loads in stock transformers: per-layer widths through the exported modeling
file (``trust_remote_code=True``), uniform widths as a plain ``llama`` checkpoint; the
harness's ``hf`` model on it scores as our adapter does; older exports still load here.

The references are our JAX model (logits, and greedy decoding by full re-evaluation, no
cache) against transformers' forward and its cached ``generate``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prune_jax.models.llama import LlamaConfig, load_hf_dir, load_model, save_hf
from prune_jax.models.llama.checkpoint import OUR_CONFIG
from prune_jax.models.llama.export import MODELING_FILE, PRUNED_MODEL_TYPE, hf_config, load_command

pytestmark = pytest.mark.usefixtures("exact_matmuls")

VOCAB = 61
# Per-layer widths as pruning leaves them: GQA groups of different sizes, a layer pruned to
# one KV group, FFN widths that differ; the last layer keeps its dense widths.
PRUNED_WIDTHS = dict(num_layers=4, layer_heads=((4, 2), (2, 1), (6, 3), (6, 2)), layer_intermediate=(40, 24, 8, 56))
CASES = {
    "gqa-untied-f32": dict(),
    "tied-f32": dict(tie_word_embeddings=True),
    "biases-f32": dict(attention_bias=True, mlp_bias=True),  # bias compensation adds every bias
    "tied-biases-bf16": dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, dtype="bfloat16"),
    "untied-bf16": dict(dtype="bfloat16"),
}


def pruned_config(**options) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=48, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, **PRUNED_WIDTHS, **options)


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()


def our_greedy(model, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy continuation by re-running the whole sequence each step (no cache): causal
    attention makes the logits at t independent of the padding after t, so one fixed
    shape (one compile) serves every step."""
    batch, start = prompt.shape
    tokens = np.zeros((batch, start + new_tokens), np.int64)
    tokens[:, :start] = prompt
    forward = nnx.jit(lambda model, tokens: model(tokens))
    for t in range(start, start + new_tokens):
        logits = np.asarray(forward(model, jnp.asarray(tokens)))
        tokens[:, t] = logits[:, t - 1].argmax(-1)
    return tokens


def stock_model(directory: Path, **options):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(directory, **options).eval()


@pytest.mark.needs_torch
@pytest.mark.parametrize("case", sorted(CASES))
def test_per_layer_widths_load_in_stock_transformers_with_our_logits_and_greedy_tokens(case, tmp_path: Path, random_llama):
    import torch

    config = pruned_config(**CASES[case])
    ours = random_llama(config, seed=5, scale=0.3)
    note = save_hf(ours, None, tmp_path / "m")
    assert note is not None and load_command(tmp_path / "m", uniform=False) in note
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["model_type"] == PRUNED_MODEL_TYPE and (tmp_path / "m" / MODELING_FILE).is_file()
    assert not (tmp_path / "m" / OUR_CONFIG).exists()
    theirs = stock_model(tmp_path / "m", trust_remote_code=True)
    assert type(theirs).__name__ == "PrunedLlamaForCausalLM"
    assert theirs.dtype == (torch.bfloat16 if config.dtype == "bfloat16" else torch.float32)  # the checkpoint's dtype, kept
    # Layer 1 really is 2 query heads of one KV group and 24 channels (the shapes came from the config, not the tensors).
    layer = theirs.model.layers[1]
    assert layer.self_attn.q_proj.weight.shape == (16, 48) and layer.self_attn.num_key_value_groups == 2
    assert layer.mlp.down_proj.weight.shape == (48, 24) and (layer.self_attn.q_proj.bias is not None) == config.attention_bias

    tokens = np.random.default_rng(0).integers(3, VOCAB, (2, 23))
    if config.dtype == "bfloat16":
        # The exact check of a bf16 export: its weights upcast to f32 on both sides (the
        # runtimes round bf16 activations differently: ours keeps norms, softmax and
        # logits in f32, torch does not), then the bf16 model itself, loosely.
        want = np.asarray(ours(jnp.asarray(tokens)))
        assert np.abs(torch_logits(theirs, tokens) - want).max() < 0.15 * np.abs(want).max()
        ours = load_hf_dir(tmp_path / "m", dtype="float32")
        theirs = stock_model(tmp_path / "m", trust_remote_code=True, dtype=torch.float32)
    want, got = np.asarray(ours(jnp.asarray(tokens))), torch_logits(theirs, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    prompt = tokens[:, :6]
    greedy = theirs.generate(torch.as_tensor(prompt), max_new_tokens=10, do_sample=False, min_new_tokens=10, pad_token_id=0).numpy()
    np.testing.assert_array_equal(greedy, our_greedy(ours, prompt, 10))
    # Sampling goes through the same cached path: with top_k = 1 it is greedy decoding.
    torch.manual_seed(0)
    sampled = theirs.generate(torch.as_tensor(prompt), max_new_tokens=10, min_new_tokens=10, do_sample=True, top_k=1, pad_token_id=0)
    np.testing.assert_array_equal(sampled.numpy(), greedy)
    uncached = theirs.generate(torch.as_tensor(prompt), max_new_tokens=10, min_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    np.testing.assert_array_equal(uncached.numpy(), greedy)  # the KV cache holds per-layer head counts correctly
    # A backend chosen after loading reaches every layer (the layers read the model's config), and copies work.
    theirs.set_attn_implementation("eager")
    assert all(layer.self_attn.config._attn_implementation == "eager" for layer in theirs.model.layers)
    np.testing.assert_allclose(torch_logits(copy.deepcopy(theirs), tokens), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.needs_torch
def test_uniform_widths_stay_a_plain_llama_checkpoint(tmp_path: Path, random_llama, tiny_llama_config):
    import transformers

    config = tiny_llama_config(num_layers=2, heads=(4, 2), intermediate=24, vocab_size=VOCAB, tie_word_embeddings=True)
    ours = random_llama(config, seed=2, scale=0.3)
    assert save_hf(ours, None, tmp_path / "m") is None
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"
    assert not list((tmp_path / "m").glob("*.py"))  # no custom code
    theirs = stock_model(tmp_path / "m")  # no trust_remote_code
    assert type(theirs) is transformers.LlamaForCausalLM
    tokens = np.random.default_rng(1).integers(0, VOCAB, (1, 19))
    want = np.asarray(ours(jnp.asarray(tokens)))
    np.testing.assert_allclose(torch_logits(theirs, tokens), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.needs_torch
def test_without_trust_remote_code_transformers_refuses_with_its_own_message(tmp_path: Path, random_llama):
    save_hf(random_llama(pruned_config(), seed=0), None, tmp_path / "m")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        stock_model(tmp_path / "m")


def test_prune_jax_reads_the_new_export_and_an_older_one(tmp_path: Path, random_llama):
    """load_model reads config.json of either model type, and a directory an older version
    wrote (per-layer widths in prune_jax_config.json, no config.json, no modeling file)."""
    config = pruned_config(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)
    ours = random_llama(config, seed=1)
    save_hf(ours, None, tmp_path / "new")
    assert load_hf_dir(tmp_path / "new").config == config
    old = tmp_path / "old"
    save_hf(ours, None, old)
    legacy = config.to_hf_dict()  # what the older save_hf wrote: the llama dict with the per-layer lists
    (old / OUR_CONFIG).write_text(json.dumps(legacy))
    (old / "config.json").unlink()
    (old / MODELING_FILE).unlink()
    reloaded, _ = load_model(old)
    assert reloaded.config == config
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, (1, 9)))
    forward = nnx.jit(lambda model, tokens: model(tokens))
    np.testing.assert_array_equal(np.asarray(forward(reloaded, tokens)), np.asarray(forward(ours, tokens)))


def test_config_json_describes_every_layer(random_llama):
    config = pruned_config()
    hf = hf_config(config)
    assert hf["layer_heads"] == [list(p) for p in config.layer_heads] and hf["layer_intermediate"] == list(config.layer_intermediate)
    # Global widths: the widest layer's; head_dim explicit (48 // 6 would be wrong).
    assert (hf["num_attention_heads"], hf["num_key_value_heads"], hf["intermediate_size"], hf["head_dim"]) == (6, 3, 56, 8)
    assert hf["auto_map"]["AutoModelForCausalLM"] == "modeling_pruned_llama.PrunedLlamaForCausalLM"
    assert "auto_map" not in hf_config(LlamaConfig(vocab_size=9, hidden_size=8, num_layers=2, layer_heads=((2, 1),) * 2,
                                                   layer_intermediate=(4, 4), head_dim=4))


def test_model_card_says_how_to_load_and_what_the_widths_are(tmp_path: Path, random_llama):
    from prune_jax.models.llama import num_parameters

    model = random_llama(pruned_config(tie_word_embeddings=True))
    record = {"method": "dap-obs", "allocation": "global", "config": {"sparsity": 0.2}, "layer_range": [1, 3],
              "parameters_before": 2 * num_parameters(model), "model": "smollm2-135m",
              "calibration": {"source": "wiki-sample", "split": "calibration", "documents": ["a", "b"], "tokens": 2048,
                              "samples": 16, "seq_len": 128, "seed": 0}}
    save_hf(model, None, tmp_path / "m", extra_files={"pruning.json": record})
    plain = (tmp_path / "m" / "README.md").read_text()  # save_hf's own card when the caller gives none
    assert "trust_remote_code=True" in plain and "| 1 | 2 | 1 | 24 |" in plain
    from prune_jax.models.llama.export import model_card

    card = model_card(model.config, tmp_path / "m", parameters=num_parameters(model), record=record,
                      measured=[("perplexity", 20.0, 25.5)], command="prune-jax prune --out m")
    for text in ("`smollm2-135m`", "`dap-obs`, 20% of the prunable", "`global` allocation", "16 windows × 128 tokens = 2,048 tokens",
                 f"{2 * num_parameters(model):,} → {num_parameters(model):,} (50.0%", "| perplexity | 20 | 25.5 |",
                 "prune-jax prune --out m", "blocks 1 to 2", "| 3 | 6 | 2 | 56 |", "tied input/output embeddings",
                 f"AutoModelForCausalLM.from_pretrained('{tmp_path / 'm'}', trust_remote_code=True)"):
        assert text in card, text


# ------------------------------------------------------------------ the harness's hf model

TEXT = ("the cat sat on the mat and the dog sat on the log while the bird sang in the tree "
        "a small boy ran to the shop to buy some bread and milk for his mother")


@pytest.mark.needs_torch
def test_harness_hf_model_scores_the_per_layer_export_as_our_adapter_does(tmp_path: Path, random_llama, bpe_tokenizer):
    lm_eval = pytest.importorskip("lm_eval", reason="needs the harness extra: pip install -e '.[harness]'")
    from lm_eval.tasks import TaskManager

    import prune_jax.zero_shot.harness  # noqa: F401  (registers "prune-jax")

    words = TEXT.split()
    tokenizer = bpe_tokenizer([TEXT], 80, special_tokens=["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=96, hidden_size=32, num_layers=3, layer_heads=((4, 2), (2, 1), (4, 4)),
                         layer_intermediate=(40, 24, 8), head_dim=8, max_position_embeddings=128, tie_word_embeddings=True)
    save_hf(random_llama(config, seed=4, scale=0.3), tokenizer, tmp_path / "model")
    import transformers

    stock_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "model")  # no trust_remote_code needed
    assert stock_tokenizer(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    rng = np.random.default_rng(0)
    with (tmp_path / "items.jsonl").open("w") as f:
        for i in range(24):
            start = int(rng.integers(0, len(words) - 8))
            choices = [" ".join(rng.choice(words, int(rng.integers(1, 4)))) for _ in range(4)]
            f.write(json.dumps({"context": " ".join(words[start:start + 6]), "choices": choices, "gold": int(rng.integers(4))}) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pj_export_mc.yaml").write_text(
        "task: pj_export_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: choices\n"
        "doc_to_target: gold\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )

    def scores(model: str, model_args: str) -> dict:
        out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["pj_export_mc"], batch_size=1, device="cpu",
                                      task_manager=TaskManager(include_path=str(tmp_path / "tasks")), bootstrap_iters=0, log_samples=False)
        return out["results"]["pj_export_mc"]

    ours = scores("prune-jax", f"pretrained={tmp_path / 'model'},dtype=float32")
    theirs = scores("hf", f"pretrained={tmp_path / 'model'},dtype=float32,trust_remote_code=True")
    for key in ("acc,none", "acc_norm,none"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), (key, ours, theirs)
    assert 0 < ours["acc,none"] < 1 or 0 < ours["acc_norm,none"] < 1  # the items are not all trivially one way


# ------------------------------------------------------------------ the runs: card, command, load line


class Captured(Exception):
    """Stops a command once it has built its run (what the test compares)."""


def _captured_run(monkeypatch, module, name: str, args: list[str]):
    from typer.testing import CliRunner

    from prune_jax.cli import app

    seen = []

    def capture(*run_args, **kwargs):
        seen.append(run_args)
        raise Captured

    monkeypatch.setattr(module, name, capture)
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, Captured), result.output
    return seen[0]


def test_the_recorded_command_lines_rebuild_the_same_runs(monkeypatch, tmp_path: Path):
    """The command a card quotes, given back to the command line, makes the same run."""
    import shlex

    import prune_jax.runs.demo as demo
    import prune_jax.runs.prune as prune

    out = str(tmp_path / "p")
    args = ["prune", "--model", "some/dir", "--method", "dap", "--sparsity", "0.3", "--recover", "--allocation", "uniform",
            "--calib-samples", "8", "--calib-seq-len", "32", "--seed", "3", "--layer-start", "1", "--layer-stop", "3",
            "--no-bias-compensation", "--dtype", "bfloat16", "--calib-select", "skmm", "--calib-pool", "all", "--out", out]
    run, config = _captured_run(monkeypatch, prune, "run_prune", args)
    assert run.calib_pool == "all"
    line = prune.prune_command_line(run, config)
    assert line.startswith("prune-jax prune --model some/dir ") and "--recover" in line and "--layer-start 1 --layer-stop 3" in line
    assert "--calib-select skmm --calib-pool all" in line
    assert _captured_run(monkeypatch, prune, "run_prune", shlex.split(line)[1:]) == (run, config)

    (run,) = _captured_run(monkeypatch, demo, "run_demo", ["demo", "--sparsity", "0.4", "--calib-samples", "8", "--out", out])
    line = demo.demo_command_line(run)
    assert line == f"prune-jax demo --method dap-obs --sparsity 0.4 --calib-samples 8 --out {out}"
    assert _captured_run(monkeypatch, demo, "run_demo", shlex.split(line)[1:]) == (run,)


def test_prune_command_writes_the_card_and_prints_the_load_command(tiny_model_and_corpus, tmp_path: Path):
    from typer.testing import CliRunner

    from prune_jax.cli import app

    out = tmp_path / "pruned"
    args = ["prune", "--model", str(tiny_model_and_corpus.model_dir), "--calib", str(tiny_model_and_corpus.corpus), "--calib-samples", "4",
            "--calib-seq-len", "8", "--sparsity", "0.3", "--layer-start", "0", "--layer-stop", "3", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "60"})  # narrower than the command: it must still print as one line
    assert result.exit_code == 0, result.output
    model, _ = load_model(out)
    uniform = model.config.uniform
    assert load_command(out, uniform=uniform) in " ".join(result.output.split())
    card = (out / "README.md").read_text()
    record = json.loads((out / "pruning.json").read_text())
    assert f"{record['parameters_before']:,} → {record['parameters_after']:,}" in card
    assert "prune-jax prune --model " in card and f"--out {out}" in card and load_command(out, uniform=uniform) in card
    widths = "".join(f"| {i} | {n} | {k} | {f} |\n" for i, ((n, k), f) in enumerate(zip(model.config.layer_heads, model.config.layer_intermediate)))
    assert widths in card
