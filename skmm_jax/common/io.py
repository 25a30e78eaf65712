"""Reading row matrices and writing results atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _check_input_file(path: Path) -> None:
    """FileNotFoundError / ValueError naming ``path`` unless it is a non-empty file."""
    if path.is_dir():
        raise ValueError(f"input {path} is a directory; give a file")
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes); nothing to read")


def _load_npy(path: Path) -> np.ndarray:
    """Memory-maps a .npy file; ValueError naming the path when it cannot be read.

    On a file with no data ``np.load`` raises EOFError, which command-line frameworks
    take for end of input (Click prints only "Aborted.", exit 1): it becomes a
    ValueError here like every other unreadable file (empty files are caught earlier,
    by ``_check_input_file``, with a clearer message).
    """
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({err or type(err).__name__})") from None


def load_rows(path: str | os.PathLike) -> np.ndarray:
    """Memory-maps a 2-D .npy file of row vectors (nothing is read until used).

    Raises:
      FileNotFoundError / ValueError with the path when it is missing, a directory,
      empty, not a .npy file, corrupt, or not 2-D floating point with N, r >= 1.
    """
    path = Path(path)
    _check_input_file(path)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: expected a .npy file, got suffix {path.suffix!r}")
    from skmm_jax.common.checks import check_rows  # here: the checks import jax, which the CLIs load late

    return check_rows(_load_npy(path), name=str(path), width="r")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """(where, record) for every non-blank line of a .jsonl file; ``where`` = "path line k"
    for error messages. UTF-8, with or without a byte-order mark. ValueError naming the
    line on bytes that are not UTF-8, invalid JSON or a non-object."""
    path = Path(path)
    with path.open("rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            where = f"{path} line {line_number}"
            if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark (editors on Windows write one)
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{where}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1}); "
                                 "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON: {err}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


# Written into every output directory these tools produce (next to the result), so a
# later run may replace what an earlier run wrote and nothing else.
OUTPUT_MARKER = ".written-by-skmm-prune-jax.json"


def is_our_output(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory an earlier run of these tools wrote (it holds `OUTPUT_MARKER`)."""
    return (Path(path) / OUTPUT_MARKER).is_file()


def marker_payload(command: str) -> dict:
    """Contents of `OUTPUT_MARKER`: which command wrote the directory."""
    return {"written_by": "skmm-prune-jax", "command": command}


TEMPORARY_SUFFIX = ".tmp"  # atomic_write's temporary files: ".{name}.{random}.tmp" next to the target


def temporary_target(name: str) -> str | None:
    """The file name an `atomic_write` temporary file ``name`` was going to become, else None."""
    if not (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)) or name.count(".") < 3:
        return None
    return name[1:].rsplit(".", 2)[0]


def atomic_write(path: str | os.PathLike, write) -> None:
    """Writes ``path`` through a temporary file in the same folder + ``os.replace``.

    ``write(f)`` gets a binary file. A crash never leaves a half-written file under the
    final name: readers see the old file, no file, or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` via a temporary file and rename: never half-written."""
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def save_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


_NAME_THE_ARRAY = "name the array to use (name=... in Python, --array NAME on the command line)"

_SAFETENSORS_DTYPES = {"F16": np.float16, "BF16": None, "F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def _memmap_safetensors(path: Path, name: str | None) -> np.ndarray:
    """Memory-maps one tensor of a .safetensors file (8-byte header length, JSON header, raw data)."""
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len < 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(header_len))
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable .safetensors file ({err})") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if name is None:
        if len(tensors) != 1:
            raise ValueError(f"{path} holds {sorted(tensors)}: {_NAME_THE_ARRAY}")
        name = next(iter(tensors))
    if name not in tensors:
        raise ValueError(f"{path}: no tensor {name!r}; it holds {sorted(tensors)}")
    info = tensors[name]
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}; store float16/32/64")
    start, stop = info["data_offsets"]
    shape = tuple(info["shape"])
    if stop - start != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise ValueError(f"{path}: tensor {name!r} size does not match its shape {shape} (corrupt file?)")
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start, shape=shape)


def load_array(path: str | os.PathLike, *, name: str | None = None) -> np.ndarray:
    """Opens an array from .npy (memory-mapped), .safetensors (memory-mapped) or .npz (read).

    Args:
      path: the file.
      name: the array inside a .npz/.safetensors file; may be omitted when it holds one.

    Raises:
      FileNotFoundError / ValueError naming the path on a missing, empty, corrupt or
      ambiguous file.
    """
    path = Path(path)
    _check_input_file(path)
    if path.suffix == ".npy":
        return _load_npy(path)
    if path.suffix == ".safetensors":
        return _memmap_safetensors(path, name)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if name is None:
                    if len(names) != 1:
                        raise ValueError(f"{path} holds {names}: {_NAME_THE_ARRAY}")
                    name = names[0]
                if name not in names:
                    raise ValueError(f"{path}: no array {name!r}; it holds {names}")
                return archive[name]
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable .npz archive ({err})") from None
        except Exception as err:  # zipfile.BadZipFile and friends
            if isinstance(err, ValueError):
                raise
            raise ValueError(f"{path}: not a readable .npz archive ({err})") from None
    raise ValueError(f"{path}: expected .npy, .npz or .safetensors, got suffix {path.suffix!r}")
