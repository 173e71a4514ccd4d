"""Output files named on a command line, checked before any long work starts.

A report, a crash dump or a picture is written after the run; a path that cannot be written
must be found before the machine starts (one line, exit status 2), not after the run, where
the error would hide the run's own result.
"""

from __future__ import annotations

import os
from pathlib import Path


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
