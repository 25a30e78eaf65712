"""Writing a .safetensors file one tensor at a time, atomically.

The format: an 8-byte little-endian header length n, n bytes of JSON (``__metadata__``
first when there is any, then every tensor's ``{"dtype", "shape", "data_offsets"}``,
padded with spaces to a multiple of 8), then the tensors' raw little-endian bytes in
header order, each at its ``data_offsets`` relative to the end of the header.

The header only needs names, dtypes and shapes, so it is written first and the data
follows tensor by tensor: the host holds one tensor (or one chunk of it) at a time,
never the whole file as ``safetensors.numpy.save`` and ``safetensors.flax.save_file``
do. Tensors go in safetensors' own order (dtype from the widest, then name), so the
bytes equal ``safetensors.numpy.save`` of the same tensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from skmm_jax.common.io import atomic_write

# numpy dtype name → safetensors dtype, in safetensors' order (its Rust ``Dtype`` enum):
# a file lists its tensors from the last of these to the first, then by name.
SAFETENSORS_DTYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "float8_e5m2": "F8_E5M2", "float8_e4m3fn": "F8_E4M3", "int16": "I16",
    "uint16": "U16", "float16": "F16", "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32",
    "complex64": "C64", "float64": "F64", "int64": "I64", "uint64": "U64",
}
_RANK = {code: rank for rank, code in enumerate(SAFETENSORS_DTYPES.values())}

Layout = Mapping[str, tuple[Any, tuple[int, ...]]]  # name → (dtype, shape)


def safetensors_dtype(dtype) -> str:
    """The safetensors code of a numpy (or ml_dtypes / jax) dtype; ValueError for one it cannot store."""
    name = np.dtype(dtype).name
    if name not in SAFETENSORS_DTYPES:
        raise ValueError(f"dtype {name} cannot be stored in safetensors; use one of {', '.join(SAFETENSORS_DTYPES)}")
    return SAFETENSORS_DTYPES[name]


def safetensors_order(layout: Layout) -> list[str]:
    """The names of ``layout`` in the order a file stores them (widest dtype first, then by name)."""
    return sorted(layout, key=lambda name: (-_RANK[safetensors_dtype(layout[name][0])], name))


def safetensors_header(layout: Layout, metadata: Mapping[str, str] | None = None) -> bytes:
    """The first bytes of the file: the length, then the padded JSON header."""
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError(f"safetensors metadata must map strings to strings, got {dict(metadata)!r}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in safetensors_order(layout):
        dtype, shape = layout[name]
        shape = [int(s) for s in shape]
        if any(s < 0 for s in shape):
            raise ValueError(f"tensor {name!r}: shape {tuple(shape)} has a negative size")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": safetensors_dtype(dtype), "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _little_endian_bytes(chunk, dtype: np.dtype) -> memoryview:
    array = np.asarray(chunk)
    if array.dtype != dtype:
        raise ValueError(f"got dtype {array.dtype}, the header says {dtype}")
    array = np.ascontiguousarray(array, dtype.newbyteorder("<") if dtype.byteorder == ">" else None)
    return memoryview(array.reshape(-1).view(np.uint8))


def save_safetensors(
    path: str | os.PathLike,
    layout: Layout,
    fetch: Callable[[str], Any | Iterator[Any]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes a .safetensors file tensor by tensor, through a temporary file + rename.

    Args:
      path: the file.
      layout: name → (dtype, shape) of every tensor: the header is written from it first.
      fetch: ``fetch(name)`` → the tensor (anything ``np.asarray`` takes, in exactly
        the layout's dtype), or an iterator (e.g. a generator) of such chunks whose
        row-major bytes follow one another (e.g. the row blocks of a sharded array). Called once per tensor in
        ``safetensors_order(layout)``; each result is written and dropped before the next.
      metadata: the header's ``__metadata__`` (strings to strings).

    Raises:
      ValueError: a dtype safetensors cannot store, or a fetched tensor whose dtype or
        size differs from the layout (nothing is left under ``path`` then).
    """
    header = safetensors_header(layout, metadata)

    def write(f) -> None:
        f.write(header)
        for name in safetensors_order(layout):
            dtype, shape = np.dtype(layout[name][0]), tuple(layout[name][1])
            want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            value = fetch(name)
            chunks = value if isinstance(value, Iterator) else iter((value,))
            written = 0
            for chunk in chunks:
                try:
                    data = _little_endian_bytes(chunk, dtype)
                except ValueError as err:
                    raise ValueError(f"{path}: tensor {name!r}: {err}") from None
                written += data.nbytes
                if written > want:
                    break
                f.write(data)
                del data, chunk
            del value, chunks  # the tensor is released before the next is fetched
            if written != want:
                raise ValueError(f"{path}: tensor {name!r} has {written} bytes of data, its shape {shape} in {dtype} needs {want}")

    atomic_write(path, write)
