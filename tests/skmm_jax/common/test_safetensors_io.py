"""``skmm_jax.common.safetensors_io.save_safetensors``: the streamed writer equals safetensors' own."""

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save

from skmm_jax.common.safetensors_io import safetensors_order, save_safetensors


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((3, 5)).astype(np.float32),
        "b16": rng.standard_normal((4, 2)).astype(ml_dtypes.bfloat16),
        "f16": rng.standard_normal(3).astype(np.float16),
        "ids": np.arange(-3, 4, dtype=np.int64),
        "count": np.array(7, np.int32),  # 0-d
        "empty": np.zeros((0, 4), np.float32),
        "mask": np.array([True, False, True]),
        "bytes": np.arange(5, dtype=np.uint8),
        "wide": rng.standard_normal((2, 2)),  # float64
        "z.last": np.array([1.5], np.float32),
    }


def layout_of(arrays):
    return {name: (a.dtype, a.shape) for name, a in arrays.items()}


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"note": "héllo"}])  # one key: safetensors orders several by hash
def test_the_bytes_equal_safetensors_own_writer(tmp_path: Path, metadata):
    arrays, fetched = tensors(), []

    def fetch(name):
        fetched.append(name)
        return arrays[name]

    save_safetensors(tmp_path / "t.safetensors", layout_of(arrays), fetch, metadata=metadata)
    assert (tmp_path / "t.safetensors").read_bytes() == save(arrays, metadata=metadata)
    assert fetched == safetensors_order(layout_of(arrays)) and sorted(fetched) == sorted(arrays)  # each once, in file order
    with safe_open(str(tmp_path / "t.safetensors"), framework="np") as f:
        assert (f.metadata() or None) == metadata
        for name, array in arrays.items():
            got = f.get_tensor(name)
            assert got.dtype == array.dtype and got.shape == array.shape
            np.testing.assert_array_equal(got, array)


def test_a_tensor_may_come_in_row_chunks(tmp_path: Path):
    """Row blocks of one tensor (e.g. the shards of a sharded array), one at a time, give the whole tensor's bytes."""
    arrays = tensors()
    big = np.arange(24, dtype=np.float32).reshape(6, 4)
    arrays["w"] = big

    def fetch(name):
        return (big[i:i + 2] for i in range(0, 6, 2)) if name == "w" else arrays[name]

    save_safetensors(tmp_path / "t.safetensors", layout_of(arrays), fetch)
    assert (tmp_path / "t.safetensors").read_bytes() == save(arrays)


def test_a_tensor_unlike_its_layout_is_refused_and_nothing_is_left(tmp_path: Path):
    arrays = tensors()
    path = tmp_path / "t.safetensors"
    with pytest.raises(ValueError, match=r"tensor 'w': got dtype float64, the header says float32"):
        save_safetensors(path, layout_of(arrays), lambda name: arrays[name].astype(np.float64) if name == "w" else arrays[name])
    with pytest.raises(ValueError, match=r"tensor 'w' has 48 bytes of data, its shape \(3, 5\) in float32 needs 60"):
        save_safetensors(path, layout_of(arrays), lambda name: arrays[name][:3, :4] if name == "w" else arrays[name])
    with pytest.raises(ValueError, match="cannot be stored in safetensors"):
        save_safetensors(path, {"s": (np.dtype("U3"), (1,))}, lambda name: np.array(["abc"]))
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file
