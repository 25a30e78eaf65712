"""Per-block checkpoints: this process's blocks of a sharded stream (``sharding.local_blocks``
and back), the single-process stream file, and a crash between the commit and the rename."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from prune_jax.models.llama.params import state_dict_from_model
from prune_jax.models.llama.sharding import from_local_blocks, local_blocks
from prune_jax.pruning import Budget, PruneConfig, Recovery, prune
from prune_jax.pruning import resume as resume_module

pytestmark = pytest.mark.usefixtures("exact_matmuls")


@pytest.fixture
def tiny(tiny_llama):
    """The 4-block model of the pruning tests' resume test (32 wide, 6 query / 2 KV heads, 48 channels)."""
    return lambda seed: tiny_llama(seed, scale=0.3, num_layers=4, heads=(6, 2), intermediate=48, vocab_size=64, hidden_size=32)


def calib(seed, shape):
    return np.random.default_rng(seed).integers(0, 64, shape)


def stream(shape=(8, 3, 4)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def readers(blocks: dict) -> dict:
    return {box: (lambda slices, value=value: value[slices]) for box, value in blocks.items()}


def test_local_blocks_merge_whole_row_shards_and_rebuild_any_sharding():
    x = stream()
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    rows = jax.device_put(x, NamedSharding(mesh, P("data")))  # 2 row blocks, each on 2 devices (replicas count once)
    [(box, parts)] = local_blocks(rows)  # one process holds all: the rows merge into the whole array
    assert box == ((0, 8), (0, 3), (0, 4)) and len(parts) == 2
    np.testing.assert_array_equal(np.concatenate([np.asarray(p) for p in parts]), x)
    columns = jax.device_put(x, NamedSharding(mesh, P("data", None, "model")))  # not whole rows: four blocks
    blocks = {box: np.concatenate([np.asarray(p) for p in parts]) for box, parts in local_blocks(columns)}
    assert sorted(blocks) == [((0, 4), (0, 3), (0, 2)), ((0, 4), (0, 3), (2, 4)), ((4, 8), (0, 3), (0, 2)), ((4, 8), (0, 3), (2, 4))]
    # Back onto another sharding: each device's shard assembled from the blocks that overlap it.
    again = from_local_blocks(x.shape, x.dtype, NamedSharding(mesh, P(None, None, "model")), readers(blocks))
    assert again.sharding.spec == P(None, None, "model")
    np.testing.assert_array_equal(np.asarray(again), x)
    del blocks[((4, 8), (0, 3), (2, 4))]
    with pytest.raises(ValueError, match=r"h: the saved blocks .* do not cover the shard \(\(4, 8\), \(0, 3\), \(2, 4\)\)"):
        from_local_blocks(x.shape, x.dtype, columns.sharding, readers(blocks), name="h")


def config() -> PruneConfig:
    return PruneConfig(method="dap", budget=Budget(sparsity=0.3, layer_range=(2, 4)), recovery=Recovery(enabled=True), batch_size=4)


def test_one_process_writes_the_whole_streams_in_safetensors_own_bytes(tmp_path: Path, monkeypatch, tiny):
    """A single process's stream file is the whole arrays (keys h, h_dense), streamed shard by
    shard from 4 devices, byte for byte what ``safetensors.numpy.save`` writes for them."""
    from safetensors.numpy import save

    saved, layers = {}, []
    real = resume_module._save_streams

    def keep(path, next_layer, streams):
        saved.update({name: np.asarray(x) for name, x in streams.items()})
        layers.append(next_layer)
        real(path, next_layer, streams)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 4:
            raise Stop

    monkeypatch.setattr(resume_module, "_save_streams", keep)
    with pytest.raises(Stop):
        prune(tiny(seed=3), calib(5, (8, 16)), config(), mesh=Mesh(np.array(jax.devices()[:4]), ("data",)),
              checkpoint=tmp_path / "ck", progress=stop)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        ".checkpoint-of-skmm-prune-jax.json", "block_002.safetensors", "block_003.safetensors", "progress.json", "streams.safetensors"]
    metadata = {"next_layer": "4", "processes": "1", "shapes": '{"h": [8, 16, 32], "h_dense": [8, 16, 32]}'}
    assert layers == [1, 2, 3, 4]
    # safetensors orders metadata keys by its hash map: compare the tensors' bytes, then the header as JSON.
    written, want = (tmp_path / "ck" / "streams.safetensors").read_bytes(), save(saved, metadata=metadata)
    length = int.from_bytes(want[:8], "little")
    assert written[:8] == want[:8] and written[8 + length:] == want[8 + length:]
    assert json.loads(written[8:8 + length]) == json.loads(want[8:8 + length])


def test_a_crash_between_the_commit_and_the_rename_resumes_from_the_staged_streams(tmp_path: Path, monkeypatch, tiny):
    """Killed after progress.json says "block 3 done" but before the streams into block 4
    replaced those into block 3: the resume takes the staged streams (they carry their
    block) and ends with the uninterrupted run's model."""
    tokens = calib(5, (8, 16))
    reference, _ = prune(tiny(seed=3), tokens, config())

    class Crash(Exception):
        pass

    real_replace = resume_module.os.replace

    def crash_on_the_last_rename(src, dst):
        if Path(dst).name == "streams.safetensors" and resume_module.json.loads((Path(dst).parent / "progress.json").read_text())["next_layer"] == 4:
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(resume_module.os, "replace", crash_on_the_last_rename)
    with pytest.raises(Crash):
        prune(tiny(seed=3), tokens, config(), checkpoint=tmp_path / "ck")
    monkeypatch.setattr(resume_module.os, "replace", real_replace)
    assert {"streams.next.safetensors", "streams.safetensors"} <= {p.name for p in (tmp_path / "ck").iterdir()}
    resumed, _ = prune(tiny(seed=3), tokens, config(), checkpoint=tmp_path / "ck")
    want, got = state_dict_from_model(reference), state_dict_from_model(resumed)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_the_checkpoint_rules_own_every_stream_file_and_nothing_else():
    kind = resume_module.PRUNE_CHECKPOINT
    ours = ["streams.safetensors", "streams.next.safetensors", "streams.p1-of-2.safetensors", "streams.next.p0-of-16.safetensors",
            ".streams.next.p1-of-2.safetensors.k3j2x9.tmp", "block_007.safetensors", "progress.json"]
    assert all(kind.owns(name) for name in ours)
    assert [resume_module.streams_file(1, 2), resume_module.streams_file(0, 1, staged=True)] == [ours[2], ours[1]]
    assert not any(kind.owns(name) for name in ["streams.txt", "model.safetensors", "streams.p1.npy", "notes.safetensors"])
