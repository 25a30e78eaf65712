"""The selection contract: one entry type for every method ``select`` can run.

An entry (`SelectionMethod`) names a method, says whether it needs class labels, and
runs it with ONE signature and ONE return type::

    method(key, features, n, *, labels=None, progress=None, **options) -> (indices [n], diagnostics)

- ``key``: typed PRNG key; ``features``: [N, d] float32 (already checked and, when
  asked, sketched by ``select``); ``n``: static Python int, 0 < n ≤ N.
- ``labels``: [N] int classes or None. Always passed; methods that do not use labels
  ignore them, and ``select`` refuses to run a ``needs_labels`` method without them.
- ``progress``: ``progress(done, total)`` for long methods (SkMM reports its solves),
  ignored by the others.
- Returns n distinct indices (any int dtype) and a dict of diagnostics (may be empty).

The building blocks (``baselines.herding``, ``deepcore.el2n``, ...) stay plain jittable
functions returning indices; `SelectionMethod.from_indices` lifts one into the
contract. The registries ``baselines.BASELINES``, ``deepcore.DEEPCORE`` and
``select.METHODS`` hold entries only, so adding a method is one entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from skmm_jax.common.streaming import Progress

Array = jax.Array

__all__ = ["SelectionMethod", "Selector"]


class Selector(Protocol):
    """What a `SelectionMethod` runs: the contract's signature (see the module docstring)."""

    def __call__(
        self, key: Array, features: Array, n: int, *, labels: np.ndarray | None, progress: Progress | None, **options: Any
    ) -> tuple[Array, dict]: ...


@dataclasses.dataclass(frozen=True)
class SelectionMethod:
    """One registry entry.

    Attributes:
      name: the command-line name ("skmm", "herding", "el2n", ...).
      run: the `Selector`.
      needs_labels: ``select`` refuses to run it without labels.
      needs_moments: it matches second moments, so an all-zero pool (zero moment in
        every direction) is an error rather than a warning.
      check_options: optional ``check_options(options, labels)``, called by ``select``
        before any expensive work (e.g. before sketching) so bad options fail fast.
    """

    name: str
    run: Selector
    needs_labels: bool = False
    needs_moments: bool = False
    check_options: Callable[[dict, np.ndarray | None], None] | None = None

    def __call__(
        self, key: Array, features: Array, n: int, *, labels: Any = None, progress: Progress | None = None, **options: Any
    ) -> tuple[Array, dict]:
        return self.run(key, features, n, labels=labels, progress=progress, **options)

    @classmethod
    def from_indices(cls, name: str, fn: Callable[..., Array], *, needs_labels: bool = False) -> "SelectionMethod":
        """Lifts ``fn(key, features, n, **options) -> indices`` into the contract.

        With ``needs_labels`` the labels are passed on as ``fn(..., labels=labels)``;
        otherwise they (and ``progress``) are ignored. Diagnostics are empty.
        """
        return cls(name, _IndicesOnly(fn, needs_labels), needs_labels=needs_labels)


@dataclasses.dataclass(frozen=True)
class _IndicesOnly:
    """A plain selector returning indices, as a `Selector` returning (indices, {})."""

    fn: Callable[..., Array]
    pass_labels: bool

    def __call__(self, key: Array, features: Array, n: int, *, labels: Any = None, progress: Progress | None = None, **options: Any):
        del progress
        if self.pass_labels:
            options["labels"] = labels
        return self.fn(key, features, n, **options), {}
