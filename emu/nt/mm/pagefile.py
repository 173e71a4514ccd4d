"""The pagefile: a real file on the host where evicted pages live, one 4 KiB slot each.

Windows keeps a bitmap of the slots of each paging file and never hands out the
first one (Windows Internals, 7th ed., ch. 5, "Page files"). So does this
file: slot 0 is reserved, which lets a software PTE whose slot field is 0 mean
"demand zero" instead of "slot 0" (emu.nt.mm.softpte). Slots are handed out
lowest first, so the same run puts the same page in the same slot.

The file is made at its full size up front (sparse on the host: blocks are
only used once written). A write that fails (a full disk) raises
PagefileWriteError; the caller keeps the page in RAM, so nothing is lost.
"""

from __future__ import annotations

import heapq
import itertools
import os
from pathlib import Path

PAGE_SIZE = 4096
MIN_PAGEFILE_SIZE = 2 * PAGE_SIZE       # slot 0 is reserved: two pages hold one page of data


class PagefileError(ValueError):
    """The pagefile cannot be made (a bad path or size): a one-line message for the user."""


class PagefileWriteError(Exception):
    """Writing a page to the pagefile failed (the host disk is full, say)."""


_names = itertools.count()


def _temporary_file() -> tuple[Path, object]:
    """A new file in $TMPDIR (or /tmp), already unlinked: it lives while it is open and
    disappears when closed, even if the emulator is killed."""
    folder = os.environ.get("TMPDIR") or "/tmp"
    path = Path(folder) / f"emu-pagefile-{os.getpid()}-{next(_names)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    return path, os.fdopen(fd, "r+b", buffering=0)


class Pagefile:
    """``size`` bytes of slots in a host file at ``path`` (None: a temporary file, gone
    from the file system as soon as it is made and deleted when closed)."""

    def __init__(self, size: int, path: str | Path | None = None) -> None:
        if size < MIN_PAGEFILE_SIZE or size % PAGE_SIZE:
            raise PagefileError(f"a pagefile must be a multiple of 4K and at least "
                                f"{MIN_PAGEFILE_SIZE // 1024}K (its first page is reserved), "
                                f"not {size}")
        self.size = size
        self.slots = size // PAGE_SIZE
        self.temporary = path is None
        try:
            if path is None:
                self.path, self._file = _temporary_file()
            else:
                self.path = Path(path)
                self._file = open(self.path, "w+b", buffering=0)   # noqa: SIM115 (kept open)
        except OSError as err:
            raise PagefileError(f"cannot create the pagefile {path}: "
                                f"{err.strerror or err}") from None
        try:
            if self.temporary or self.path.is_file():
                self._file.truncate(size)
        except OSError as err:
            self.close()
            raise PagefileError(f"cannot size the pagefile {self.path} to {size} bytes: "
                                f"{err.strerror or err}") from None
        self._free = list(range(1, self.slots))          # a heap: lowest slot first
        self._in_use = bytearray(self.slots)             # the allocation bitmap: 1 = a page
        self.writes = self.reads = self.write_failures = 0

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def used_slots(self) -> int:
        return self.slots - 1 - len(self._free)

    def allocate(self) -> int | None:
        """The lowest free slot, or None when the pagefile is full."""
        if not self._free:
            return None
        slot = heapq.heappop(self._free)
        self._in_use[slot] = 1
        return slot

    def holds_page(self, slot: int) -> bool:
        """Is ``slot`` a slot of this pagefile, allocated to a page? (The memory manager
        checks a slot a PTE names before it reads or frees it: emu.nt.mm.corruption.)"""
        return 0 < slot < self.slots and self._in_use[slot] == 1

    def release(self, slot: int) -> None:
        """Give ``slot`` back (its page was freed, or now lives in RAM only); the caller
        has made sure it holds a page (holds_page)."""
        if not self.holds_page(slot):
            raise AssertionError(f"Pagefile.release: slot {slot} is not allocated")
        self._in_use[slot] = 0
        heapq.heappush(self._free, slot)

    def write(self, slot: int, data: bytes) -> None:
        """Store one page in ``slot``; PagefileWriteError if the host refuses."""
        try:
            written = os.pwrite(self._file.fileno(), data, slot * PAGE_SIZE)
        except OSError as err:
            self.write_failures += 1
            raise PagefileWriteError(f"pagefile write failed: {err.strerror or err}") from None
        if written != len(data):
            self.write_failures += 1
            raise PagefileWriteError("pagefile write was short (disk full?)")
        self.writes += 1

    def read(self, slot: int) -> bytes:
        """The page stored in ``slot``."""
        data = os.pread(self._file.fileno(), PAGE_SIZE, slot * PAGE_SIZE)
        self.reads += 1
        return data.ljust(PAGE_SIZE, b"\0")

    def take_private_copy(self) -> None:
        """Go on in a new temporary file holding the same slots (a forked snapshot of the
        machine must not share its pagefile with the machine that runs on)."""
        used = [slot for slot in range(1, self.slots) if self._in_use[slot]]
        old = self._file
        self.path, self._file = _temporary_file()
        self.temporary = True
        self._file.truncate(self.size)
        for slot in used:
            data = os.pread(old.fileno(), PAGE_SIZE, slot * PAGE_SIZE)
            os.pwrite(self._file.fileno(), data, slot * PAGE_SIZE)
        old.close()

    def close(self) -> None:
        """Close the file; a temporary pagefile is deleted."""
        if self._file.closed:
            return
        self._file.close()
