"""Input checks shared by every entry point: row matrices [N, d] and class labels [N].

Every function that takes "one row per sample" (features, sketched gradients, raw
gradient rows to sketch) validates it with `check_rows`; the ones that must also read
the values (``select``: NaN/inf rows, an all-zero pool) use `scan_rows`, which reads a
host array (or memmap) block by block. Label vectors go through `check_labels`. Errors
name the argument, the value and what would be valid.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key", "check_labels", "check_positive_fields", "check_positive_int", "check_rows", "scan_rows"]


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """The one positive-integer rule of both libraries: ``value`` as an int, or ValueError.

    Python ints and numpy integers are accepted (a size read from an array's shape or a
    numpy computation is an ``np.int64``); bools, floats (even 3.0) and strings are not.
    The message names the argument: "{name} must be a positive int, got {value!r}".
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        suffix = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive int{suffix}, got {value!r}")
    return int(value)


def check_positive_fields(config: Any, names: tuple[str, ...]) -> None:
    """`check_positive_int` on each of a config's ``names`` (for frozen dataclass configs'
    ``__post_init__``); the error names the first field that fails."""
    for name in names:
        check_positive_int(getattr(config, name), name)


def check_rows(rows: Any, *, name: str = "features", width: str = "d") -> Any:
    """ValueError unless ``rows`` is a 2-D floating [N, d] array with N ≥ 1 and d ≥ 1.

    Only the shape and dtype are read, so this is free for memmaps and works on
    tracers under ``jit``. Returns ``rows`` unchanged (a sequence becomes a NumPy array).

    Args:
      rows: NumPy array, memmap or jax array.
      name: what to call it in the message ("features", "sketched gradients", ...).
      width: the symbol of its second axis in the message (d, m, r).
    """
    if not (hasattr(rows, "shape") and hasattr(rows, "dtype")):
        rows = np.asarray(rows)
    shape = tuple(rows.shape)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D [N, {width}] array (one row per sample), got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {shape}")
    if not jnp.issubdtype(rows.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {rows.dtype}")
    return rows


def scan_rows(rows: Any, *, name: str = "features") -> bool:
    """`check_rows`, then one pass over the values: ValueError naming the rows with NaN/inf.

    A host array is read in blocks of ~16M entries, so a memory-mapped pool of wide raw
    gradients (the case that gets sketched) is never loaded at once.

    Returns:
      True when every entry is zero (callers decide whether that is an error).
    """
    rows = check_rows(rows, name=name)
    if isinstance(rows, jax.Array):
        finite = np.asarray(jnp.all(jnp.isfinite(rows), axis=1))
        all_zero = not bool(jnp.any(rows != 0))
    else:
        rows_per_block = max(1, min(65536, 2**24 // rows.shape[1]))
        finite_blocks, all_zero = [], True
        for start in range(0, rows.shape[0], rows_per_block):
            block = np.asarray(rows[start : start + rows_per_block])
            finite_blocks.append(np.isfinite(block).all(axis=1))
            all_zero = all_zero and not block.any()
        finite = np.concatenate(finite_blocks)
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        raise ValueError(f"{name} rows {bad[:10]}{' …' if len(bad) > 10 else ''} contain NaN or inf")
    return all_zero


def check_labels(
    labels: Any, num_samples: int, *, num_classes: int | None = None, min_classes: int = 1, name: str = "labels"
) -> np.ndarray:
    """int32 NumPy labels after checking an [N] integer array of classes in [0, C).

    Args:
      labels: [N] class ids (concrete: class counts become static sizes).
      num_samples: N, the rows they must match.
      num_classes: C when known (e.g. a head's width); None: C = max label + 1.
      min_classes: the smallest allowed max label + 1 (2 for a proxy classifier).
      name: what to call them in the message.
    """
    if labels is None:
        raise ValueError(f"{name} are required: an [N] = [{num_samples}] integer array of classes 0..C-1")
    labels = np.asarray(labels)
    if labels.shape != (num_samples,):
        raise ValueError(f"{name} must have shape ({num_samples},), one class per sample, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype (classes 0..C-1), got {labels.dtype}")
    check_positive_int(num_classes, "num_classes", allow_none=True)
    if num_samples == 0:
        return labels.astype(np.int32)
    if labels.min() < 0:
        bad = np.flatnonzero(labels < 0).tolist()
        raise ValueError(f"{name} must be non-negative classes 0..C-1, got {labels.min()} at rows {bad[:10]}")
    limit = np.iinfo(np.int32).max if num_classes is None else int(num_classes)
    if labels.max() >= limit:
        what = "2**31 - 1" if num_classes is None else f"num_classes={num_classes}"
        raise ValueError(f"{name} span [{labels.min()}, {labels.max()}], outside [0, {what})")
    if labels.max() + 1 < min_classes:
        raise ValueError(f"{name} must name at least {min_classes} classes (max label + 1 >= {min_classes}), got max label {labels.max()}")
    return labels.astype(np.int32)


def as_key(key: Any, *, name: str = "key") -> jax.Array:
    """Accepts a typed PRNG key (``jax.random.key``) or a raw uint32[2] key."""
    if isinstance(key, int):
        raise TypeError(f"{name} must be a PRNG key such as jax.random.key({key}), got the int {key}")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a PRNG key (jax.random.key(seed)), got dtype {key.dtype} shape {key.shape}")
