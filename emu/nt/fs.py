"""The guest file system: a read-only view of one host folder (default: the built guest apps).

Guest paths are relative to the root; a leading "/" is allowed; ".." and links
may not leave the root, so a guest sees nothing of the host beyond that folder.
"""

from __future__ import annotations

from pathlib import Path

from emu import guests
from emu.nt.loader import LoaderError, read_image_file

# The built guest apps: a checkout's guest/build/apps, or a wheel's copy (emu.guests).
DEFAULT_ROOT = guests.apps_dir()
MAX_FILE = 64 << 20


class GuestFileNotFound(Exception):
    """No such file in the guest file system (STATUS_OBJECT_NAME_NOT_FOUND)."""


class GuestFileSystem:
    """Read-only files under ``root``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).resolve() if root is not None else DEFAULT_ROOT

    def resolve(self, path: str) -> Path:
        """The host path of guest ``path``; GuestFileNotFound if absent or outside the root."""
        relative = path.lstrip("/")
        if not relative or "\0" in relative:
            raise GuestFileNotFound(path)
        try:                 # a name the host refuses (ENAMETOOLONG, EACCES) is no file
            host = (self.root / relative).resolve()
            if self.root not in host.parents or not host.is_file():
                raise GuestFileNotFound(path)
        except OSError:
            raise GuestFileNotFound(path) from None
        return host

    def read(self, path: str) -> bytes:
        """The whole file; GuestFileNotFound for anything but a readable regular file of at
        most 64 MiB (at most 64 MiB + 1 byte is read, whatever size the file claims)."""
        host = self.resolve(path)
        try:
            return read_image_file(host, MAX_FILE)
        except LoaderError:
            raise GuestFileNotFound(path) from None
