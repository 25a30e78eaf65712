"""How a run shows its progress: through the caller's reporter (library code never prints).

A `Reporter` is two context managers: ``stage(message)`` around a step that has no
count (loading a model, tokenising a corpus) and ``bar(desc, unit=..., total=...)``
around a counted one, which yields the ``progress(done, total)`` callback the library
functions take. The command line passes a spinner and ``skmm_jax.common.cli.progress_bar``;
the default, `QUIET`, shows nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ContextManager

from skmm_jax.common.streaming import Progress

__all__ = ["QUIET", "Reporter"]


@contextlib.contextmanager
def _no_bar(desc: str, *, unit: str = "it", total: int | None = None) -> Iterator[Progress]:
    yield lambda done, total: None


def _no_stage(message: str) -> ContextManager[Any]:
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class Reporter:
    """Where a run's progress goes.

    Attributes:
      stage: ``stage(message)``: a context manager around an uncounted step.
      bar: ``bar(desc, unit=..., total=None)``: a context manager yielding ``progress(done, total)``.
    """

    stage: Callable[[str], ContextManager[Any]] = _no_stage
    bar: Callable[..., ContextManager[Progress]] = _no_bar


QUIET = Reporter()
