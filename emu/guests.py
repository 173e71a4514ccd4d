"""Where the guests are: the built apps and drivers, the headers and library to build more.

Two places can hold them, and one function (``root``) decides which for everything that
names a guest: ``emu run``'s default --fs folder, the scenarios, ``emu build``, and a bare
APP or --driver name of ``emu run``, ``emu debug`` and ``emu query`` (``emu run hello``,
``--driver pehello``: ``app_path``, ``driver_path``):

- a checkout: the repository's ``guest/`` folder beside ``emu/``, built by ``make -C guest``
  into ``guest/build/``. When it has a ``build/`` it wins, so a rebuilt guest is seen at once.
- an installed wheel: ``emu/_guest/``, the same tree copied in when the wheel was built
  (setup.py): ``build/apps/*``, ``build/drivers/*.sys`` (and their .pdb), ``include/``,
  ``lib/``, ``lib32/``, ``link/``, and the guests' sources (``apps/``, ``apps32/``,
  ``drivers-pe/``).
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1] / "guest"
PACKAGED = Path(__file__).resolve().parent / "_guest"


class GuestNotFound(Exception):
    """No built guest of that name: one line saying where it was looked for."""


def root() -> Path:
    """The guest tree in use: the checkout's guest/ when it has been built (or when there is
    no packaged copy), else the copy a wheel installed."""
    if (CHECKOUT / "build").is_dir() or not (PACKAGED / "build").is_dir():
        return CHECKOUT
    return PACKAGED


def packaged() -> bool:
    """True when the guests in use are a wheel's copy (nothing to rebuild with make)."""
    return root() == PACKAGED


def build_dir() -> Path:
    """The folder of the built guests: ``build/apps/NAME`` and ``build/drivers/NAME.sys``."""
    return root() / "build"


def apps_dir() -> Path:
    """The built apps (also the guests' default read-only file system)."""
    return build_dir() / "apps"


def drivers_dir() -> Path:
    """The built PE drivers."""
    return build_dir() / "drivers"


def missing_hint() -> str:
    """What to do about a missing guest, for the tree in use."""
    if packaged():
        return "not among the guests this installation carries"
    return "build the guests: make -C guest"


def find(kind: str, name: str) -> Path:
    """The built guest ``name`` of ``kind`` ("apps": NAME; "drivers": NAME.sys, the suffix
    optional); GuestNotFound if there is none."""
    if kind not in ("apps", "drivers"):
        raise ValueError(f"unknown guest kind {kind!r}")
    if kind == "drivers" and not name.lower().endswith(".sys"):
        name += ".sys"
    folder = build_dir() / kind
    path = folder / name
    # A name, not a path: "../x" or "a/b" would leave the folder.
    if "/" in name or name in (".", "..") or not path.is_file():
        raise GuestNotFound(f"{path}: no such file ({missing_hint()})")
    return path


def app_path(word: str) -> str:
    """An APP of the command line: a path as given, unless it is a bare name (no "/") that
    is no file here and names a built guest app: then that app's path."""
    return _named("apps", word)


def driver_path(word: str) -> str:
    """A --driver of the command line: a path as given, unless it is a bare name (no "/")
    that is no file here and names a built driver (NAME or NAME.sys): then its path."""
    return _named("drivers", word)


def _named(kind: str, word: str) -> str:
    if not word or "/" in word or os.path.lexists(word):
        return word
    try:
        return str(find(kind, word))
    except GuestNotFound:
        return word            # the loader says "no such file", as for any other path
