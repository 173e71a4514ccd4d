"""Outputs: files named on a command line, checked before any long work starts, and
standard output once its reader has gone.

A report, a crash dump or a picture is written after the run; a path that cannot be written
must be found before the machine starts (one line, exit status 2), not after the run, where
the error would hide the run's own result. Standard output piped into a reader that stops
early (`emu ... | head`) is no error of the run: what follows is discarded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


def output_problem(option: str, path: str | os.PathLike) -> str | None:
    """None if a file can be created or replaced at ``path``, else one line naming
    ``option`` and what is wrong (a missing or non-folder parent, a folder in its place,
    no write permission)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        return f"{option} {path}: is a directory"
    if not parent.exists():
        # The nearest ancestor that exists tells a missing folder from a file in the way.
        for up in parent.parents:
            if up.exists() and not up.is_dir():
                return f"{option} {path}: {up} is not a directory"
        return f"{option} {path}: no such directory {parent}"
    if not parent.is_dir():
        return f"{option} {path}: {parent} is not a directory"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{option} {path}: cannot write there: permission denied"
    if not p.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"{option} {path}: cannot write there: permission denied"
    return None


def same_file_problem(outputs: list[tuple[str, str | os.PathLike | None]]) -> str | None:
    """One line if two options name the same output file (the second would overwrite the
    first), else None; ``outputs`` pairs each option with its path (or None: not given)."""
    seen: dict[str, str] = {}
    for option, path in outputs:
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen and not key.startswith("/dev/"):
            return f"{option} {path}: the same file as {seen[key]}"
        seen.setdefault(key, option)
    return None


def discard_stdout(stream: TextIO | None = None) -> None:
    """The reader of standard output has gone (`emu ... | head`): from now on what is
    written there goes to /dev/null, so the work goes on and ends with its own exit status,
    and nothing is reported about output nobody reads (nor by Python's flush at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, (stream or sys.stdout).fileno())
    finally:
        os.close(devnull)


class ReaderSafeOutput:
    """Standard output (a text stream) that goes on quietly once its reader has gone: the
    first BrokenPipeError of a write or a flush sends the rest to /dev/null
    (``discard_stdout``). Everything else is the stream's own."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            discard_stdout(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            discard_stdout(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def reader_safe_stdout() -> Iterator[None]:
    """Inside: ``sys.stdout`` is a ``ReaderSafeOutput`` of itself, so a command whose reader
    leaves early (`emu debug ... | head`) finishes its work unheard instead of ending in a
    traceback."""
    saved = sys.stdout
    sys.stdout = ReaderSafeOutput(saved)    # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = saved
