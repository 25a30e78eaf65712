"""Reading row matrices and writing results atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def load_rows(path: str | os.PathLike) -> np.ndarray:
    """Memory-maps a 2-D .npy file of row vectors (nothing is read until used).

    Raises:
      FileNotFoundError / ValueError with the path when it is missing, not a .npy
      file, corrupt, or not 2-D floating point.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.suffix != ".npy":
        raise ValueError(f"{path}: expected a .npy file, got suffix {path.suffix!r}")
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    if rows.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D [N, r] array, got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.floating):
        raise ValueError(f"{path}: expected floating-point rows, got dtype {rows.dtype}")
    return rows


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` via a temporary file and rename: never half-written."""
    _atomic_write(Path(path), lambda f: np.save(f, array, allow_pickle=False))


def save_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))
