"""One rule for the checkpoint directory of a long job (pruning, finetuning).

A checkpoint directory is the one path a job both writes into while it runs and deletes
when it is done, so it gets stricter rules than an output:

  - before any work it must be absent, empty, or a checkpoint of this tool of the same
    kind (it holds `MARKER`; a directory holding only the kind's own file names, as
    written before the marker existed, counts too). A file, or a directory holding
    anything else, is refused and never touched;
  - it may not equal, contain or lie inside any output path of the same run (an output
    written into it would be deleted with it, and replacing the output would delete it);
  - ``--resume`` needs a checkpoint to continue; a checkpoint without ``--resume`` is
    refused (the CLI's rule; the library resumes a checkpoint of the same run by itself);
  - when the job is done, only the files this tool wrote are deleted (`MARKER`, the
    kind's file names, their temporary files), and the directory itself only if this
    tool created it and nothing else is left in it.

Every check raises ``ValueError`` with one line naming the path and what would be valid;
the CLIs turn it into ``error: ...`` and exit code 2 before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from skmm_jax.common.io import save_json_atomic, temporary_target

MARKER = ".checkpoint-of-skmm-prune-jax.json"


@dataclasses.dataclass(frozen=True)
class CheckpointKind:
    """What one job keeps in its checkpoint directory.

    Attributes:
      name: the job ("prune", "finetune"), recorded in `MARKER`.
      commit: the file written last at every checkpoint; its presence means "holds a checkpoint".
      files: glob patterns of every file the job writes there (``commit`` included).
      progress: (key of ``commit``'s JSON, what it counts), e.g. ("next_layer", "blocks"),
        to say how far an interrupted run got.
    """

    name: str
    commit: str
    files: tuple[str, ...]
    progress: tuple[str, str] | None = None

    def owns(self, name: str) -> bool:
        """Whether a file name in the directory is one this kind writes (or its temporary file)."""
        if name == MARKER:
            return True
        name = temporary_target(name) or name  # a half-written file of ours is ours too
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.files)


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


@dataclasses.dataclass(frozen=True)
class CheckpointStore:
    """The checkpoint directory ``path`` of a job of ``kind`` (see the module docstring)."""

    path: Path
    kind: CheckpointKind

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------ state

    def _marker(self) -> dict | None:
        try:
            return json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return None

    def holds_checkpoint(self) -> bool:
        """Whether the directory holds a complete checkpoint (its commit file)."""
        return self.path.is_dir() and (self.path / self.kind.commit).is_file()

    def describe_progress(self) -> str:
        """"3 blocks done" (from the commit file) or "" when unknown."""
        if self.kind.progress is None or not self.holds_checkpoint():
            return ""
        key, what = self.kind.progress
        try:
            done = json.loads((self.path / self.kind.commit).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            return ""
        return "" if done is None else f"{done} {what} done"

    # ------------------------------------------------------------------ rules

    def check(self, *, outputs: Iterable[str | os.PathLike | None] = (), resume: bool | None = None,
              flag: str = "--checkpoint") -> bool:
        """Applies the rules of the module docstring; returns whether a checkpoint is held.

        Args:
          outputs: the run's output paths (None entries are skipped).
          resume: True: a checkpoint must be held; False: none may be; None: either.
          flag: how messages name the directory.

        Raises:
          ValueError: one line naming the path and what would be valid.
        """
        path = self.path
        where = f"{flag} {path}"
        if path.is_symlink() or path.exists() and not path.is_dir():
            raise ValueError(f"{where} is a file (or a link); name a new or empty directory for the checkpoint")
        resolved = path.resolve()
        cwd = Path.cwd().resolve()
        if _inside(cwd, resolved):
            raise ValueError(f"{where} is the current directory or one of its parents; name a new directory for the checkpoint")
        for output in outputs:
            if output is None:
                continue
            out = Path(output).resolve()
            if _inside(out, resolved) or _inside(resolved, out):
                relation = "is" if out == resolved else "contains" if _inside(out, resolved) else "lies inside"
                raise ValueError(f"{where} {relation} the output {output}; the checkpoint is deleted when the run ends, "
                                 "so it must be a separate directory")
        if path.is_dir():
            marker = self._marker()
            foreign = [p.name for p in path.iterdir() if not self.kind.owns(p.name)]
            if marker is not None and marker.get("kind") != self.kind.name:
                raise ValueError(f"{where} is a checkpoint of another job ({marker.get('kind')!r}, not {self.kind.name!r}); "
                                 "name another directory")
            if foreign:
                shown = ", ".join(sorted(foreign)[:3]) + (" …" if len(foreign) > 3 else "")
                raise ValueError(f"{where} holds files that are not a {self.kind.name} checkpoint ({shown}); "
                                 "name a new or empty directory (nothing in it was touched)")
        held = self.holds_checkpoint()
        if resume is True and not held:
            state = "does not exist" if not path.exists() else "holds no checkpoint"
            raise ValueError(f"--resume: {where} {state}; run without --resume to start, or name the interrupted run's directory")
        if resume is False and held:
            done = self.describe_progress()
            raise ValueError(f"{where} holds an interrupted run{f' ({done})' if done else ''}; pass --resume to continue it, "
                             "or name another directory")
        return held

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Creates the directory if needed and marks it (records whether this tool created it)."""
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self._marker()
        if marker is None:
            save_json_atomic(self.path / MARKER, {"written_by": "skmm-prune-jax", "kind": self.kind.name, "created": created})

    def remove(self) -> None:
        """Deletes this tool's files, then the directory if this tool created it and it is empty."""
        if not self.path.is_dir() or self.path.is_symlink():
            return
        created = bool((self._marker() or {}).get("created", False))
        for entry in self.path.iterdir():
            if entry.is_file() and not entry.is_symlink() and self.kind.owns(entry.name) and entry.name != MARKER:
                entry.unlink(missing_ok=True)
        (self.path / MARKER).unlink(missing_ok=True)
        if created and not any(self.path.iterdir()):
            self.path.rmdir()


def mismatch(saved: Mapping[str, Any], current: Mapping[str, Any], *, names: Mapping[str, str] | None = None) -> str:
    """"steps: 6 in the checkpoint, 8 now; rows_sha256 differs" for two flat-or-nested
    fingerprint dicts (keys joined by "."; long values are only said to differ);
    ``names`` maps keys to what a user knows them by (e.g. flags)."""
    def flat(d: Mapping, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, Mapping) else {key: v})
        return out

    a, b = flat(saved), flat(current)
    parts = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            shown = (names or {}).get(key.rsplit(".", 1)[-1], key)
            short = all(len(repr(x)) <= 40 for x in (a.get(key), b.get(key)))
            parts.append(f"{shown}: {a.get(key)!r} in the checkpoint, {b.get(key)!r} now" if short else f"{shown} differs")
    return "; ".join(parts) or "the saved fingerprint differs"
