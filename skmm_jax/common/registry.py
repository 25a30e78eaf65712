"""The one contract of every extension point: a registry of named entries.

Sketch kinds, draw rules, selection methods, pruning scores and allocation modes are each
a ``Registry``: a dict from the name a user types (``--kind sjlt``, ``method="dap-obs"``)
to a frozen entry that says what the extension does and declares what it needs. A
contributor adds one entry — in their own module, at import or at run time — and every
entry point (the library's config checks, the command lines' choices and help, the
benchmarks' tables) sees it, because they all read the registry instead of a list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class Registry(dict[str, Entry], Generic[Entry]):
    """name → entry, in registration order (the order tables and help texts list them).

    Attributes:
      what: what an entry is, for messages ("sketch kind", "draw rule", ...).
    """

    def __init__(self, what: str, entries: Iterable[tuple[str, Entry]] = ()):
        super().__init__(entries)
        self.what = what

    def register(self, name: str, entry: Entry, *, replace: bool = False) -> Entry:
        """Adds ``entry`` under ``name`` and returns it; a taken name is a ValueError unless
        ``replace`` (an experiment overriding a built-in entry says so)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty string name, got {name!r}")
        if name in self and not replace:
            raise ValueError(f"{self.what} {name!r} is already registered (replace=True overrides it)")
        self[name] = entry
        return entry

    def lookup(self, name: object, *, setting: str) -> Entry:
        """The entry of ``name``; otherwise ValueError "<setting> must be one of a, b, got 'x'"
        (``setting`` is the config field or argument, which a command line maps to its flag)."""
        if not isinstance(name, str) or name not in self:
            raise ValueError(f"{setting} must be one of {', '.join(self)}, got {name!r}")
        return self[name]
