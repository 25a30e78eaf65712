"""Two processes joined by ``jax.distributed`` on this machine (CPU, localhost) prune a
tiny model exactly as one process does.

Each child runs ``prune-jax prune --mesh data=4`` with the standard variables
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) and 2 CPU devices of its
own, so the mesh spans both processes (4 devices): parameters FSDP-sharded and
calibration sequences data-parallel across the process boundary. Process 0 alone
writes --out. The reference is the same command in this process on its 4 forced CPU
devices. The same two processes, interrupted after two blocks with --checkpoint and
resumed with --resume, write that model too (each process saved and restored its own
rows of the calibration streams).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prune_jax.cli import app as prune_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ARGS = ["prune", "--method", "dap", "--recover", "--sparsity", "0.3", "--calib-samples", "4", "--calib-seq-len", "8",
        "--layer-start", "0", "--layer-stop", "3", "--mesh", "data=4"]
# Stops both processes as Ctrl-C would when block 2 starts (after blocks 0 and 1 were checkpointed).
INTERRUPT_AT_BLOCK_2 = """
import importlib
module = importlib.import_module("prune_jax.pruning.prune")
real = module.prune_block
def interrupt_at_block_2(block, layer, *rest):
    if layer == 2:
        raise KeyboardInterrupt
    return real(block, layer, *rest)
module.prune_block = interrupt_at_block_2
"""


def _args(tiny_model_and_corpus, *extra) -> list[str]:
    return [*ARGS, "--model", str(tiny_model_and_corpus.model_dir), "--calib", str(tiny_model_and_corpus.corpus), *extra]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, tiny_model_and_corpus) -> Path:
    """The reference: the command in this process on its 4 forced CPU devices."""
    out = tmp_path_factory.mktemp("single") / "out"
    result = CliRunner().invoke(prune_app, _args(tiny_model_and_corpus, "--out", str(out)))
    assert result.exit_code == 0, result.output
    return out


def _two_processes(args: list[str], *, before: str = "") -> list[tuple[int, str]]:
    """(exit code, output) of ``prune-jax *args`` in two processes joined by jax.distributed."""
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2",
           "JAX_NUM_CPU_DEVICES": "2", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo", "JAX_PLATFORMS": "cpu"}
    code = before + "\nfrom prune_jax.cli import main; main()"
    children = [subprocess.Popen([sys.executable, "-c", code, *args], env={**env, "JAX_PROCESS_ID": str(i)},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    return [(child.returncode, output) for child, output in ((c, c.communicate(timeout=600)[0]) for c in children)]


def _assert_same_model(one: Path, two: Path) -> None:
    from prune_jax.models.llama import load_hf_dir
    from prune_jax.models.llama.params import state_dict_from_model

    a, b = json.loads((one / "pruning.json").read_text()), json.loads((two / "pruning.json").read_text())
    assert b["mesh"] == {"data": 4}
    assert [layer.get("heads_kept") for layer in b["layers"]] == [layer.get("heads_kept") for layer in a["layers"]]
    assert [layer.get("channels_kept") for layer in b["layers"]] == [layer.get("channels_kept") for layer in a["layers"]]
    # Weights within 1e-3, as the in-process sharded tests (test_pruning): the all-reduces
    # sum in another order across processes (gloo) and the ridge solves on 32 calibration
    # tokens amplify those f32 differences (≈ 2e-4 here); unpruned tensors are identical.
    want, got = state_dict_from_model(load_hf_dir(one)), state_dict_from_model(load_hf_dir(two))
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-3, err_msg=name)
    np.testing.assert_array_equal(got["model.embed_tokens.weight"], want["model.embed_tokens.weight"])


def test_two_processes_prune_like_one(tmp_path: Path, tiny_model_and_corpus, single_process):
    out = tmp_path / "two"
    for code, output in _two_processes(_args(tiny_model_and_corpus, "--out", str(out))):
        assert code == 0, output[-3000:]
    _assert_same_model(single_process, out)


def test_two_processes_resume_an_interrupted_checkpoint_like_one(tmp_path: Path, tiny_model_and_corpus, single_process):
    import shutil

    checkpoint, out = tmp_path / "ckpt", tmp_path / "resumed"
    interrupted = _two_processes(_args(tiny_model_and_corpus, "--out", str(out), "--checkpoint", str(checkpoint)),
                                 before=INTERRUPT_AT_BLOCK_2)
    for code, output in interrupted:  # 130, or an abort when the other process took the coordination service down first
        assert code != 0, output[-3000:]
    # Process 0 wrote the blocks and the commit, each process its own rows of the streams.
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        ".checkpoint-of-skmm-prune-jax.json", "block_000.safetensors", "block_001.safetensors", "progress.json",
        "streams.p0-of-2.safetensors", "streams.p1-of-2.safetensors"]
    progress = json.loads((checkpoint / "progress.json").read_text())
    assert progress["next_layer"] == 2 and progress["processes"] == 2
    from safetensors import safe_open

    for process, rows in ((0, "0:2"), (1, "2:4")):  # saved by rows (data=4 over 2 processes: sequences 0-1 on process 0)
        with safe_open(str(checkpoint / f"streams.p{process}-of-2.safetensors"), framework="np") as f:
            assert sorted(f.keys()) == [f"h[{rows},0:8,0:16]", f"h_dense[{rows},0:8,0:16]"]

    # One process cannot resume what two wrote (on a copy: the refusal touches nothing).
    shutil.copytree(checkpoint, tmp_path / "copy")
    refused = CliRunner().invoke(prune_app, _args(tiny_model_and_corpus, "--out", str(tmp_path / "o"), "--checkpoint",
                                                  str(tmp_path / "copy"), "--resume"))
    assert refused.exit_code != 0 and "run of 2 process(es) and this run has 1" in " ".join(refused.output.split())

    for code, output in _two_processes(_args(tiny_model_and_corpus, "--out", str(out), "--checkpoint", str(checkpoint), "--resume")):
        assert code == 0, output[-3000:]
    assert not checkpoint.exists()  # deleted once the output was written
    _assert_same_model(single_process, out)
