"""What both command lines share: failing cleanly, checking outputs before the work, interrupts.

Library code never prints; the CLIs do, and every user error goes through `fail`
(one red line on stderr, exit code 2, no traceback). Output paths are checked
*before* any expensive work (`check_output_file`, `check_output_dir`), so a typo in
``--out`` costs a second, not a 40-minute run, and an existing directory the
program did not write itself is never replaced unless the user says ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from skmm_jax.common.io import is_our_output

_stderr = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with code 2 (usage/input error)."""
    from rich.markup import escape

    _stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # escape: a path may hold "[...]"; soft_wrap: one line, paths unbroken
    raise typer.Exit(2)


_LEADING_FIELD = re.compile(r"^([a-z][a-z_]*)(?=[ =]|$)")
_QUOTED_FIELD = re.compile(r"`([a-z][a-z_]*)`")


def fail_config(err: Exception, flags: Mapping[str, str]) -> NoReturn:
    """`fail` with a library message's config fields named by the flags that set them: the
    leading field ("learning_rate must be ..." → "--lr must be ...") and every field the
    library wrote in backquotes (`` `labels` `` → ``--labels``; unmapped ones lose the quotes)."""
    message = _QUOTED_FIELD.sub(lambda m: flags.get(m[1], m[1]), str(err))
    first = message.split(" ", 1)[0]
    if first in flags:  # a whole leading token with its own flag ("relax=False" → "--no-relax")
        fail(flags[first] + message[len(first):])
    fail(_LEADING_FIELD.sub(lambda m: flags.get(m[1], m[1]), message, count=1))


def flags_of(fields, **renames: str) -> dict[str, str]:
    """{field: "--field-name"} for config ``fields``, with ``renames`` for flags named otherwise."""
    return {**{f: "--" + f.replace("_", "-") for f in fields}, **renames}


def check_store(store, *, outputs=(), resume: bool | None = None, flag: str = "--checkpoint") -> bool:
    """A checkpoint store's rules (``skmm_jax.common.checkpoints``) as a CLI check: one line, exit 2."""
    try:
        return store.check(outputs=outputs, resume=resume, flag=flag)
    except ValueError as err:
        fail(str(err))


# What an interrupt should report instead of "nothing was written" (a checkpoint to resume).
_interrupt_notes: list[Callable[[], str | None]] = []


def note_on_interrupt(describe: Callable[[], str | None]) -> None:
    """Registers ``describe()``: called if the command is interrupted, its non-empty
    answer replaces the default "nothing was written" line."""
    _interrupt_notes.append(describe)


def resume_note(store, flag: str = "--checkpoint") -> None:
    """On interrupt: say what the checkpoint holds and how to continue."""
    def describe() -> str | None:
        if not store.holds_checkpoint():
            return None
        done = store.describe_progress()
        return (f"--out was not written; {flag} {store.path} holds the finished work{f' ({done})' if done else ''}: "
                "run the same command with --resume to continue")

    note_on_interrupt(describe)


def _check_parent_writable(path: Path, flag: str) -> None:
    """The nearest existing ancestor must be a writable directory (parents are created later)."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        fail(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        fail(f"{flag} {path}: the directory {parent} is not writable")


def check_output_file(path: Path | None, flag: str = "--out") -> None:
    """Fails unless ``path`` can be written as a file (an existing file is replaced atomically).

    Raises ``typer.Exit(2)`` with a message naming the flag when ``path`` is an existing
    directory, sits under a file, or its directory is not writable.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep) or path.name in ("", ".", ".."):
        fail(f"{flag} {path} is a directory; give a file name, e.g. {Path(path) / 'result.json'}")
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"{flag} {path} exists and is not writable")
    _check_parent_writable(path.absolute(), flag)


def check_output_dir(path: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Fails unless ``path`` may become an output directory.

    Allowed: a path that does not exist, an empty directory, a directory written by an
    earlier run (it holds `OUTPUT_MARKER`), or anything at all with ``overwrite``
    (except the current directory or one of its parents). Everything else -- a file,
    a directory of the user's own files -- is refused, so nothing is lost to a typo.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents or resolved == resolved.parent:
        fail(f"{flag} {path} is the current directory or one of its parents; name a new directory")
    if path.is_file() or path.is_symlink() and not path.is_dir():
        if not overwrite:
            fail(f"{flag} {path} is an existing file; choose another path or pass --overwrite to replace it")
    elif path.is_dir() and any(path.iterdir()) and not is_our_output(path) and not overwrite:
        fail(
            f"{flag} {path} is a non-empty directory that this program did not write; "
            "choose a new path or pass --overwrite to replace it"
        )
    if path.exists() and not os.access(path.parent.absolute(), os.W_OK | os.X_OK):
        fail(f"{flag} {path}: its directory {path.parent} is not writable")
    _check_parent_writable(resolved, flag)


@contextlib.contextmanager
def progress_bar(desc: str, *, unit: str = "it", total: int | None = None, disable: bool = False) -> Iterator[Callable[[int, int], None]]:
    """The one adapter from the libraries' ``progress(done, total)`` callbacks to a tqdm bar.

    Yields the callback; the bar takes its total from the first call when none is
    given (a library that learns its total while it works, e.g. a task's request
    count), follows later changes of it, and closes on exit, also on an error.
    """
    from tqdm import tqdm  # here: importing tqdm costs the CLIs' --help nothing

    bar = tqdm(total=total, unit=unit, desc=desc, disable=disable)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def run_app(app: typer.Typer) -> None:
    """Runs a Typer app; Ctrl-C prints one line and exits 130 (Typer alone exits silently).

    Outputs are written atomically, so an interrupted run leaves nothing partial behind;
    a command with a checkpoint registers a note (`resume_note`) that says how to resume.
    """
    _interrupt_notes.clear()  # one command per run: no note of an earlier in-process run
    try:
        app()
    except SystemExit as exit_:
        if exit_.code == 130:
            notes = [note for note in (describe() for describe in _interrupt_notes) if note]
            _stderr.print("interrupted: " + ("; ".join(notes) if notes else "nothing was written (outputs appear only when complete)"))
        raise
