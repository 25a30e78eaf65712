"""The long-job options of ``prune-jax`` (checkpoints, resume, meshes, zero-shot task files,
the lm-eval adapter) on ordinary and awkward input: no user file and no finished output is
ever lost, every refusal is one line with exit code 2 before any model is loaded, and a
mesh run finishes and matches one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prune_jax import cli as prune_cli
from prune_jax.cli import app
from prune_jax.pruning.scores import METHODS
from skmm_jax.common.checkpoints import MARKER

runner = CliRunner()


@pytest.fixture
def tiny(tiny_model_and_corpus):
    return tiny_model_and_corpus.model_dir, tiny_model_and_corpus.corpus


def prune_args(tiny, *extra: str) -> list[str]:
    model_dir, corpus = tiny
    return ["prune", "--model", str(model_dir), "--calib", str(corpus), "--calib-samples", "4", "--calib-seq-len", "8",
            "--layer-start", "0", "--layer-stop", "3", "--allocation", "uniform", "--sparsity", "0.3", *extra]


def finetune_args(tiny, *extra: str) -> list[str]:
    model_dir, corpus = tiny
    return ["finetune", "--model", str(model_dir), "--data", str(corpus), "--seq-len", "8", "--steps", "2", "--batch-size", "2",
            "--lr", "1e-2", *extra]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name → bytes): what must survive a refused run."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def no_model_load(monkeypatch):
    """A refused command must stop before the model loads: loading fails the test."""
    import prune_jax.models.llama as llama

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(llama, "load_model", refuse)


def assert_refused(result, message: str) -> None:
    """Exit 2, one line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), (message, result.output)
    # one message and nothing else (rich wraps it at the terminal's width)
    assert result.output.lstrip().startswith("error:") and result.output.count("error:") == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def user_data(root: Path, name: str = "userdata") -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("x\n")
    return path


# ------------------------------------------------------------------ checkpoint directories


def test_finetune_checkpoint_never_deletes_a_user_directory(tiny, tmp_path: Path, no_model_load):
    data = user_data(tmp_path)
    result = runner.invoke(app, finetune_args(tiny, "--checkpoint", str(data), "--out", str(tmp_path / "ft_ud")))
    assert_refused(result, "holds files that are not a finetune checkpoint (notes.txt)")
    assert tree(data) == {"notes.txt": b"x\n"} and not (tmp_path / "ft_ud").exists()


@pytest.mark.parametrize("command", ["prune", "finetune"])
@pytest.mark.parametrize("layout", ["out-inside", "same", "same-overwrite", "checkpoint-inside"])
def test_the_checkpoint_may_not_be_the_output_or_hold_it(tiny, tmp_path: Path, no_model_load, command, layout):
    work = tmp_path / "work"
    checkpoint, out, extra = {
        "out-inside": (work, work / "model", ()),
        "same": (work, work, ()),
        "same-overwrite": (work, work, ("--overwrite",)),
        "checkpoint-inside": (work / "ckpt", work, ()),
    }[layout]
    args = prune_args if command == "prune" else finetune_args
    result = runner.invoke(app, args(tiny, "--checkpoint", str(checkpoint), "--out", str(out), *extra))
    relation = {"out-inside": "contains the output", "checkpoint-inside": "lies inside the output"}.get(layout, "is the output")
    assert_refused(result, f"--checkpoint {checkpoint} {relation}")
    assert not work.exists()


@pytest.mark.parametrize("command", ["prune", "finetune"])
def test_the_checkpoint_holds_only_our_files_and_goes_after_success(tiny, tmp_path: Path, command):
    checkpoint, out = tmp_path / "ckpt", tmp_path / "out"
    args = prune_args if command == "prune" else finetune_args
    result = runner.invoke(app, args(tiny, "--checkpoint", str(checkpoint), "--out", str(out)))
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and not checkpoint.exists()  # created by the run: removed whole
    # An empty directory the user made stays (only our files go), and so does a file put there mid-run.
    mine = tmp_path / "mine"
    mine.mkdir()
    result = runner.invoke(app, args(tiny, "--checkpoint", str(mine), "--out", str(out)))
    assert result.exit_code == 0, result.output
    assert mine.is_dir() and not any(mine.iterdir())


def test_the_store_deletes_only_its_own_files(tmp_path: Path):
    from prune_jax.finetune import checkpoint_store

    store = checkpoint_store(tmp_path / "ck")
    store.check(resume=None)
    store.open()
    (store.path / "meta.json").write_text("{}")
    (store.path / ".state.npz.abc123.tmp").write_text("partial")
    (store.path / "later.txt").write_text("the user's")  # appeared while the run went on
    store.remove()
    assert sorted(p.name for p in store.path.iterdir()) == ["later.txt"]
    with pytest.raises(ValueError, match="another job"):  # a prune checkpoint is not a finetune checkpoint
        from prune_jax.pruning.resume import checkpoint_store as prune_store

        (tmp_path / "p").mkdir()
        (tmp_path / "p" / MARKER).write_text(json.dumps({"kind": "prune", "created": True}))
        checkpoint_store(tmp_path / "p").check()
    prune_store(tmp_path / "p").check()  # the same directory is fine for prune


@pytest.mark.parametrize("command", ["prune", "finetune"])
def test_resume_needs_an_existing_checkpoint(tiny, tmp_path: Path, no_model_load, command):
    args = prune_args if command == "prune" else finetune_args
    result = runner.invoke(app, args(tiny, "--checkpoint", str(tmp_path / "nope"), "--resume", "--out", str(tmp_path / "o")))
    assert_refused(result, f"--resume: --checkpoint {tmp_path / 'nope'} does not exist")
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, args(tiny, "--checkpoint", str(tmp_path / "empty"), "--resume", "--out", str(tmp_path / "o")))
    assert_refused(result, "holds no checkpoint")
    assert not (tmp_path / "o").exists() and not (tmp_path / "nope").exists()


@pytest.mark.parametrize("command", ["prune", "finetune"])
def test_an_interrupt_with_a_checkpoint_says_how_to_resume(tiny, tmp_path: Path, monkeypatch, capsys, command):
    import importlib

    checkpoint, out = tmp_path / "ck", tmp_path / "out"
    if command == "prune":
        module = importlib.import_module("prune_jax.pruning.prune")
        real = module.prune_block

        def interrupt_at_block_2(block, layer, *rest):
            if layer == 2:
                raise KeyboardInterrupt
            return real(block, layer, *rest)

        monkeypatch.setattr(module, "prune_block", interrupt_at_block_2)
        args, done = prune_args, "2 blocks done"
    else:
        module = importlib.import_module("prune_jax.finetune")
        real_save = module._save

        def interrupt_after_first_save(directory, tree, meta):
            real_save(directory, tree, meta)
            raise KeyboardInterrupt

        monkeypatch.setattr(module, "_save", interrupt_after_first_save)
        args, done = finetune_args, "2 updates done"  # --steps 2: the first checkpoint is the last update's
    monkeypatch.setattr(sys, "argv", ["prune-jax", *args(tiny, "--checkpoint", str(checkpoint), "--out", str(out))])
    import skmm_jax.common.cli as common

    monkeypatch.setattr(common, "_interrupt_notes", [])
    with pytest.raises(SystemExit) as exit_:
        prune_cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 130
    assert "nothing was written" not in err and f"({done})" in err and "with --resume to continue" in err, err
    assert not out.exists() and (checkpoint / MARKER).is_file()


def test_a_resume_mismatch_names_the_setting_that_differs(tiny_llama_config, random_llama, tmp_path: Path):
    from prune_jax.finetune import FinetuneConfig, finetune

    model = random_llama(tiny_llama_config(num_layers=1, vocab_size=32))
    rows = np.random.default_rng(0).integers(0, 32, size=(6, 9)).astype(np.int32)
    finetune(model, rows, FinetuneConfig(rank=2, steps=2, batch_size=2, checkpoint_every=1), checkpoint=tmp_path / "ck")
    with pytest.raises(ValueError, match=r"steps: 2 in the checkpoint, 3 now") as err:
        finetune(model, rows, FinetuneConfig(rank=2, steps=3, batch_size=2, checkpoint_every=1), checkpoint=tmp_path / "ck")
    assert "{" not in str(err.value)  # no fingerprint dict dumped


# ------------------------------------------------------------------ meshes


@pytest.mark.parametrize("method", METHODS)
def test_cli_prune_on_2_and_4_devices_matches_one_device(tiny, tmp_path: Path, method):
    from prune_jax.models.llama import load_hf_dir
    from prune_jax.models.llama.params import state_dict_from_model

    allocation = [] if method in ("dap-obs", "flap") else ["--allocation", "uniform"]  # their defaults: global, adaptive
    args = [a for a in prune_args(tiny, "--method", method) if a not in ("--allocation", "uniform")] + allocation
    results = {}
    for mesh in (None, "data=2", "data=4"):
        out = tmp_path / f"out-{mesh}"
        result = runner.invoke(app, [*args, "--out", str(out), *(["--mesh", mesh] if mesh else [])])
        assert result.exit_code == 0, (mesh, result.output)
        results[mesh] = (json.loads((out / "pruning.json").read_text()), state_dict_from_model(load_hf_dir(out)))
    (one, want) = results[None]
    for mesh in ("data=2", "data=4"):
        record, got = results[mesh]
        for key in ("heads_kept", "channels_kept"):
            assert [layer.get(key) for layer in record["layers"]] == [layer.get(key) for layer in one["layers"]], (mesh, key)
        assert want.keys() == got.keys()
        for name in want:  # all-reduces sum in another order: f32 rounding, amplified by the solves
            np.testing.assert_allclose(got[name], want[name], atol=2e-3, err_msg=f"{mesh} {name}")


def test_grouped_obs_on_two_devices_does_not_deadlock(tmp_path: Path):
    """The OBS greedy with grouped units (heads: 9 units of 64 rows, 3 groups) on a 2-device
    mesh in a fresh process: jaxlib's batched LAPACK solve deadlocked here (every run)."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from prune_jax.pruning.obs import add_gram, greedy_remove
        mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
        rng = np.random.default_rng(0)
        x = jax.device_put(jnp.asarray(rng.normal(size=(2, 16, 576)), jnp.float32), NamedSharding(mesh, P("data")))
        gram = add_gram(jnp.zeros((576, 576), jnp.float32), x)
        w = jax.device_put(jnp.asarray(rng.normal(size=(576, 64)), jnp.float32), NamedSharding(mesh, P()))
        removal = greedy_remove(gram, w, np.arange(576).reshape(9, 64), np.array([1, 1, 1]), unit_group=np.repeat(np.arange(3), 3))
        print("removed", int(np.asarray(removal.removed).sum()))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "removed 3" in done.stdout, done.stderr[-2000:]


def test_unknown_mesh_axes_are_refused(tiny, tmp_path: Path, no_model_load):
    result = runner.invoke(app, prune_args(tiny, "--mesh", "modle=2", "--out", str(tmp_path / "o")))
    assert_refused(result, "unknown axis 'modle'; the axes are data, model")


# ------------------------------------------------------------------ eval --tasks


def write_task(path: Path, items: int = 3, choices: int = 4, prefix: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"context": f"the quick brown {i}", "choices": [f" fox {j}" for j in range(choices)], "gold": i % choices})
             for i in range(items)]
    path.write_bytes(prefix + "\n".join(lines).encode() + b"\n")
    return path


def test_two_task_files_with_one_stem_both_reported(tiny, tmp_path: Path):
    a, b = write_task(tmp_path / "a" / "task.jsonl", items=3), write_task(tmp_path / "b" / "task.jsonl", items=5)
    result = runner.invoke(app, ["eval", "--model", str(tiny[0]), "--tasks", f"{a},{b}", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    tasks = json.loads((tmp_path / "r.json").read_text())["tasks"]
    assert {name: r["n"] for name, r in tasks.items()} == {str(a): 3, str(b): 5}


def test_task_progress_ends_at_its_request_count(tiny, tmp_path: Path):
    task = write_task(tmp_path / "t.jsonl", items=4, choices=4)
    result = runner.invoke(app, ["eval", "--model", str(tiny[0]), "--tasks", str(task)])
    assert result.exit_code == 0, result.output
    assert "16/16" in result.output and "100%" in result.output, result.output


@pytest.mark.parametrize("extra", [["--seq-len", "99999"], ["--data", "missing.txt"], ["--max-windows", "3"], ["--split", "eval"]])
def test_tasks_refuse_perplexity_options(tiny, tmp_path: Path, no_model_load, extra):
    task = write_task(tmp_path / "t.jsonl")
    result = runner.invoke(app, ["eval", "--model", str(tiny[0]), "--tasks", str(task), *extra])
    assert_refused(result, f"{extra[0]}: perplexity options, not read with --tasks")


def test_task_files_with_a_bom_load_and_bad_bytes_name_their_line(tmp_path: Path):
    from prune_jax.zero_shot.tasks import load_jsonl_task

    assert len(load_jsonl_task(write_task(tmp_path / "bom.jsonl", items=2, prefix=b"\xef\xbb\xbf")).items) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"context": "a", "choices": ["x", "y"], "gold": 0}\n{"context": "caf\xe9", "choices": ["x", "y"], "gold": 0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not UTF-8 text \(byte 0xe9"):
        load_jsonl_task(bad)


# ------------------------------------------------------------------ help


def test_finetune_help_names_only_real_options():
    result = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0 and "--lora-targets" not in result.output and "--resume" in result.output


# ------------------------------------------------------------------ a probe of awkward combinations


def _probe_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(name, arguments after the model/data ones, expected message) — every one must be refused."""
    user, ck = tmp / "userdata", tmp / "ck"
    held = tmp / "held"
    return [
        ("pr-ckpt-user-dir", ["prune", "--checkpoint", str(user), "--out", str(tmp / "o")], "not a prune checkpoint"),
        ("ft-ckpt-user-dir", ["finetune", "--checkpoint", str(user), "--out", str(tmp / "o")], "not a finetune checkpoint"),
        ("pr-ckpt-is-file", ["prune", "--checkpoint", str(user / "notes.txt"), "--out", str(tmp / "o")], "is a file"),
        ("ft-ckpt-is-file", ["finetune", "--checkpoint", str(user / "notes.txt"), "--out", str(tmp / "o")], "is a file"),
        ("pr-ckpt-eq-out", ["prune", "--checkpoint", str(ck), "--out", str(ck)], "is the output"),
        ("pr-ckpt-eq-out-overwrite", ["prune", "--checkpoint", str(ck), "--out", str(ck), "--overwrite"], "is the output"),
        ("ft-ckpt-eq-out", ["finetune", "--checkpoint", str(ck), "--out", str(ck)], "is the output"),
        ("pr-ckpt-holds-out", ["prune", "--checkpoint", str(ck), "--out", str(ck / "model")], "contains the output"),
        ("ft-ckpt-holds-out", ["finetune", "--checkpoint", str(ck), "--out", str(ck / "m")], "contains the output"),
        ("pr-ckpt-in-out", ["prune", "--checkpoint", str(tmp / "o" / "ck"), "--out", str(tmp / "o")], "lies inside the output"),
        ("pr-ckpt-user-eq-out-overwrite", ["prune", "--checkpoint", str(user), "--out", str(user), "--overwrite"], "is the output"),
        ("pr-ckpt-cwd", ["prune", "--checkpoint", ".", "--out", str(tmp / "o")], "the current directory"),
        ("ft-ckpt-cwd-parent", ["finetune", "--checkpoint", "..", "--out", str(tmp / "o")], "the current directory"),
        ("pr-resume-no-ckpt", ["prune", "--resume", "--out", str(tmp / "o")], "--resume continues from --checkpoint"),
        ("ft-resume-no-ckpt", ["finetune", "--resume", "--out", str(tmp / "o")], "--resume continues from --checkpoint"),
        ("pr-resume-missing", ["prune", "--checkpoint", str(tmp / "nope"), "--resume", "--out", str(tmp / "o")], "does not exist"),
        ("ft-resume-missing", ["finetune", "--checkpoint", str(tmp / "nope"), "--resume", "--out", str(tmp / "o")], "does not exist"),
        ("pr-held-no-resume", ["prune", "--checkpoint", str(held), "--out", str(tmp / "o")], "pass --resume to continue it"),
        ("pr-out-user-dir", ["prune", "--out", str(user)], "non-empty directory that this program did not write"),
        ("ft-out-user-dir", ["finetune", "--out", str(user)], "non-empty directory that this program did not write"),
        ("pr-out-file", ["prune", "--out", str(user / "notes.txt")], "is an existing file"),
        ("pr-out-cwd", ["prune", "--out", "."], "the current directory"),
        ("pr-mesh-typo", ["prune", "--mesh", "modle=2", "--out", str(tmp / "o")], "unknown axis 'modle'"),
        ("pr-mesh-too-big", ["prune", "--mesh", "data=64", "--out", str(tmp / "o")], "needs 64 devices"),
        ("pr-mesh-indivisible", ["prune", "--mesh", "data=3", "--out", str(tmp / "o")], "must divide over the mesh's data axis"),
        ("pr-dtype", ["prune", "--dtype", "float16", "--out", str(tmp / "o")], "--dtype must be one of"),
        ("ft-dtype", ["finetune", "--dtype", "int8", "--out", str(tmp / "o")], "--dtype must be one of"),
        ("pr-calib-missing", ["prune", "--calib", str(tmp / "missing.txt"), "--out", str(tmp / "o")], "missing.txt"),
        ("ft-data-missing", ["finetune", "--data", str(tmp / "missing.jsonl"), "--out", str(tmp / "o")], "missing.jsonl"),
        ("ft-lr", ["finetune", "--lr", "-1", "--out", str(tmp / "o")], "--lr must be a positive finite number"),
        ("pr-calib-pool-random", ["prune", "--calib-pool", "10", "--out", str(tmp / "o")], "--calib-pool applies to"),
        ("eval-json-dir", ["eval", "--json", str(user)], "--json"),
        ("eval-tasks-seq-len", ["eval", "--tasks", "wiki-last-word", "--seq-len", "64"], "--seq-len: perplexity options"),
        ("eval-limit-no-tasks", ["eval", "--limit", "3"], "--limit applies to --tasks"),
        ("eval-data-missing", ["eval", "--data", str(tmp / "missing.txt")], "missing.txt"),
        ("eval-tokenizer-missing", ["eval", "--tokenizer", str(tmp / "no-tok")], "--tokenizer"),
    ]


def test_a_probe_of_awkward_long_job_options_loses_nothing(tiny, tmp_path: Path, no_model_load, monkeypatch):
    model_dir, corpus = tiny
    tmp = tmp_path / "probe"
    user_data(tmp)
    held = tmp / "held"
    held.mkdir()
    (held / "progress.json").write_text(json.dumps({"next_layer": 1}))
    (held / MARKER).write_text(json.dumps({"kind": "prune", "created": True}))
    finished = tmp / "finished"
    finished.mkdir()
    (finished / "model.safetensors").write_bytes(b"weights")
    cwd = tmp / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cases = _probe_cases(tmp)
    assert len(cases) >= 30
    before = tree(tmp)
    for name, args, message in cases:
        command, rest = args[0], args[1:]
        source = {"prune": ["--calib", str(corpus), "--calib-samples", "4", "--calib-seq-len", "8"],
                  "finetune": ["--data", str(corpus), "--seq-len", "8", "--steps", "1"], "eval": []}[command]
        if any(flag in rest for flag in ("--calib", "--data")):
            source = []
        result = runner.invoke(app, [command, "--model", str(model_dir), *source, *rest])
        try:
            assert_refused(result, message)
        except AssertionError as err:
            raise AssertionError(f"probe case {name}: {err}") from None
        assert tree(tmp) == before, f"probe case {name} changed files"
