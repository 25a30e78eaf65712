"""benchmarks/device_check.py: the one-shot GPU check, run end to end at tiny sizes on the CPU.

The GPU run happens once, so CI runs the very same code paths (every section, every
child process, the JSON and markdown writers) with ``--cpu-smoke`` and checks the
numbers it records, not only that it exits 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())  # wherever tests/ nests this file
SCRIPT = ROOT / "benchmarks" / "device_check.py"


def load_script():
    if "device_check" not in sys.modules:  # registered before it runs: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["device_check"] = module
        spec.loader.exec_module(module)  # top level: the standard library and numpy only
    return sys.modules["device_check"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str, Path]:
    out_dir = tmp_path_factory.mktemp("device_check")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, whatever the suite forces
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    # Budgets far above the GPU run's: the smoke checks code paths and records, and a loaded CI
    # machine must not truncate a run (the budget logic has its own tests).
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out-dir", str(out_dir), "--section-seconds", "900",
                           "--total-seconds", "3000"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=3000, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return json.loads((out_dir / "device_check.json").read_text()), (out_dir / "device_check.md").read_text(), out_dir


@pytest.mark.needs_torch
def test_smoke_runs_every_section_and_writes_both_reports(smoke):
    result, markdown, out_dir = smoke
    assert result["cpu_smoke"] is True
    assert result["environment"]["jax"]["backend"] == "cpu" and result["environment"]["versions"]["jax"]
    assert result["environment"]["torch"]["device"] == "cpu"
    assert list(result["sections"]) == ["parity", "forward", "skmm", "prune"]
    for name, section in result["sections"].items():
        assert section["status"] == "ok", (name, json.dumps(section, indent=1)[-4000:])
        for run in section["runs"].values():
            assert run["status"] == "ok" and not run["errors"] and not run["truncated"], run["task"]
            assert run.get("warning") is None, run["warning"]  # no torch inside a JAX process
    assert sorted(p.name for p in out_dir.iterdir()) == ["device_check.json", "device_check.md"]  # no temporaries left
    for name in ("## parity", "## forward", "## skmm", "## prune", "Memory model"):
        assert name in markdown
    assert "failed" not in markdown


@pytest.mark.needs_torch
def test_smoke_parity_numbers(smoke):
    ours = smoke[0]["sections"]["parity"]["runs"]["parity/ours"]
    rows = {(r["dtype"], r["attention"], r["precision"]): r for r in ours["rows"]}
    assert set(rows) == {("float32", "chunked", "highest"), ("float32", "dot_product", "highest"),
                         ("bfloat16", "chunked", "default"), ("bfloat16", "dot_product", "default")}  # fmt: skip
    torch_bf16 = ours["torch_bfloat16_vs_float32"]["max_rel"]
    for (dtype, _, _), row in rows.items():
        error = row["vs_torch_float32"]
        if dtype == "float32":  # the tolerance of tests/test_llama.py's parity tests
            assert error["max_rel"] < 1e-4 and error["max_abs"] < 1e-3 and error["argmax_agree"] == 1.0
            assert row["perplexity_rel_diff_vs_torch_float32"] < 1e-5
        else:  # bf16 rounding: about transformers' own bf16 error against its f32 logits
            assert 1e-4 < error["max_rel"] < 0.05 and error["max_rel"] < 3 * torch_bf16
            assert error["argmax_agree"] > 0.9 and row["perplexity_rel_diff_vs_torch_float32"] < 1e-2
        assert row["compile_s"] > 0


@pytest.mark.needs_torch
def test_smoke_forward_skmm_and_prune_numbers(smoke):
    result = smoke[0]
    sizes, sections = result["sizes"], result["sections"]
    shapes = {tuple(s) for s in sizes["forward_shapes"]}
    ours = sections["forward"]["runs"]["forward/ours"]["rows"]
    assert {(r["implementation"], r["batch"], r["seq_len"]) for r in ours} == {
        (f"ours {a}", b, t) for a in ("chunked", "dot_product") for b, t in shapes
    }
    assert all(r["tokens_per_s"] > 0 and r["compile_s"] > 0 and r["ratio_vs_torch"] > 0 for r in ours)
    theirs = sections["forward"]["runs"]["forward/torch"]["rows"]
    assert {(r["batch"], r["seq_len"]) for r in theirs} == shapes and all(r["tokens_per_s"] > 0 for r in theirs)

    skmm = sections["skmm"]
    select = skmm["runs"]["skmm/select"]["select"]
    num, _, n = sizes["skmm"]
    assert select["N"] == num and [c["unique"] for c in select["calls"]] == [n, n]
    assert select["calls"][0]["seconds"] > select["calls"][1]["seconds"]  # the first call compiles
    grads = skmm["runs"]["skmm/ours"]["grads"] + skmm["runs"]["skmm/torch"]["grads"]
    assert [g["configuration"] for g in grads] == [
        "ours + dense",
        "ours + kronecker",
        "ours + kronecker, factored",
        "torch.func + dense",
    ]
    assert all(g["samples_per_s"] > 0 for g in grads) and all(g["ratio_vs_torch"] > 0 for g in grads[:3])
    assert skmm["summary"]["sketch_parity_rel_error"] < 1e-4  # same Γ, same gradients, both sides in float32

    prune = sections["prune"]
    for method in ("dap-obs", "flap"):
        run = prune["runs"][f"prune/{method}"]
        assert len(run["blocks"]) == sizes["prune_layers"] == 2 and all(b["seconds"] > 0 for b in run["blocks"])
        assert 0 < run["compile_s"] < run["total_s"] < run["estimate_32_layers_s"] and run["compilations"] > 0
        assert run["parameters_after"] < run["parameters"] and 0.1 < run["prunable_removed"] < 0.5
        assert run["calibration"] == list(sizes["calibration"])
    memory = prune["summary"]["memory_model"]
    assert memory["total_32_layers"] > memory["total_run"] > 0


def test_flags_are_checked_and_name_the_valid_values(capsys):
    script = load_script()
    args = script.parse_args(
        ["--sections", "skmm,parity", "--section-seconds", "prune=200,forward=30", "--calib-samples", "8"]
    )
    assert args.sections == ("parity", "skmm")  # always in the script's order
    assert args.section_seconds == {**script.SECTION_SECONDS, "prune": 200.0, "forward": 30.0}
    assert script.parse_args(["--section-seconds", "45"]).section_seconds == dict.fromkeys(script.SECTIONS, 45.0)
    assert (args.jobs, script.parse_args(["--cpu-smoke"]).jobs) == (1, 2)  # runs one at a time on the device
    for bad, message in ((["--sections", "parity,nope"], "choose from parity, forward, skmm, prune"),
                         (["--section-seconds", "bogus=3"], "unknown section 'bogus'"),
                         (["--section-seconds", "prune=-1"], "must be positive"),
                         (["--calib-samples", "0"], "--calib-samples must be a positive"),
                         (["--jobs", "2"], "more with --cpu-smoke only")):  # fmt: skip
        with pytest.raises(SystemExit):
            script.parse_args(bad)
        assert message in capsys.readouterr().err


def test_memory_model_at_llama3_8b_widths():
    script = load_script()
    memory = script.prune_memory_model(script.FULL, 128)
    terms = {row["term"].split(" (")[0].split(":")[0]: row for row in memory["rows"]}
    # 128 × 2048 tokens × 4096 × 2 bytes = 2 GiB of stream; down_proj's OBS state 4·(3F² + 2FD) = 3.2 GB.
    assert terms["pruned calibration stream h [S, T, D]"]["bytes_run"] == 128 * 2048 * 4096 * 2
    obs = next(row for row in memory["rows"] if row["term"].startswith("dap-obs"))
    assert obs["bytes_run"] == 4 * (3 * 14336**2 + 2 * 14336 * 4096)
    parameters = next(row for row in memory["rows"] if row["term"].startswith("parameters"))
    assert 7.9e9 < parameters["bytes_32_layers"] / 2 < 8.1e9  # Llama-3-8B has 8.03 B parameters


def test_full_sizes_refuse_a_cpu_only_jax_before_any_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu")  # a GPU machine whose CUDA plugin did not load looks like this
    done = subprocess.run([sys.executable, str(SCRIPT), "--sections", "skmm", "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:]
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["sections"] == {} and "--allow-cpu" in result["environment"]["error"]
    assert "JAX is not usable here" in done.stdout
