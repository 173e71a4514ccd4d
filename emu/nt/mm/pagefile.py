"""The pagefile: a real file on the host where evicted pages live, one 4 KiB slot each.

Windows keeps a bitmap of the slots of each paging file and never hands out the
first one (Windows Internals, 7th ed., ch. 5, "Page files"). So does this
file: slot 0 is reserved, which lets a software PTE whose slot field is 0 mean
"demand zero" instead of "slot 0" (emu.nt.mm.softpte). Slots are handed out
lowest first, so the same run puts the same page in the same slot.

The file is made at its full size up front (sparse on the host: blocks are
only used once written). A write that fails (a full disk) raises
PagefileWriteError; the caller keeps the page in RAM, so nothing is lost. A read
that fails or comes back short raises PagefileReadError (an OSError): the page is
lost, and the access that needed it fails (STATUS_IN_PAGE_ERROR, or bug check 0x7A
for kernel data); it is never handed back as zeros.

A pagefile is one machine's, and only ever a pagefile. Slot 0 (never handed out)
starts with HEADER, which is how a file is recognised as ours: an existing regular
file is reused (emptied) only if it is empty or starts with HEADER; anything else is
refused, never overwritten. The machine holds an exclusive advisory lock (flock) on
the file for its life, so a second machine given the same file is refused instead of
handing out the same slots. A character device (/dev/full: a full disk; /dev/null: a
disk that loses every page) stores nothing and is used as is; any other kind of path
(a directory, a FIFO, a block device) is refused.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import itertools
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from emu.nt.status import NTSTATUS

PAGE_SIZE = 4096
MIN_PAGEFILE_SIZE = 2 * PAGE_SIZE       # slot 0 is reserved: two pages hold one page of data
# A software PTE names its slot in bits 63:32 (PageFileHigh): 2^32 slots, 16 TiB, as Windows.
MAX_PAGEFILE_SIZE = (1 << 32) * PAGE_SIZE
HEADER = b"EMU PAGEFILE 1\n\0"          # the start of slot 0: "this file is a pagefile"


class PagefileError(ValueError):
    """The pagefile cannot be made (a bad path or size): a one-line message for the user."""


class PagefileWriteError(Exception):
    """Writing a page to the pagefile failed (the host disk is full, say)."""


class PagefileReadError(OSError):
    """Reading a page back failed or came back short: ``status`` is the I/O status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_names = itertools.count()


def refuse_images(path: str | Path, images: Iterable[str | Path]) -> None:
    """PagefileError if the pagefile ``path`` is one of the ``images`` being run (an app or
    a driver): paging into it would destroy it."""
    for image in images:
        try:
            if os.path.samefile(path, image):
                raise PagefileError(f"--pagefile {path}: is also an image being run")
        except OSError:
            continue                # one of them does not exist (yet): not the same file


def _is_regular(file: object) -> bool:
    return stat.S_ISREG(os.fstat(file.fileno()).st_mode)


def _open_ours(path: Path) -> object:
    """Open ``path`` as this machine's pagefile, locked: PagefileError (one line) if it is
    not a file we may use, or another machine has it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise PagefileError(f"cannot create the pagefile {path}: {err.strerror or err}") \
            from None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        raise PagefileError(f"--pagefile {path}: not a regular file or a character device")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError as err:
        raise PagefileError(f"cannot create the pagefile {path}: {err.strerror or err}") \
            from None
    file = os.fdopen(fd, "r+b", buffering=0)
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode):
            return file             # stores nothing: no slots to share, no header to keep
        if not stat.S_ISREG(st.st_mode):
            raise PagefileError(f"--pagefile {path}: not a regular file or a character device")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # held until the file closes
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise PagefileError(f"--pagefile {path}: in use by another machine") from None
        if st.st_size and os.pread(fd, len(HEADER), 0) != HEADER:
            raise PagefileError(f"--pagefile {path}: exists and is not a pagefile (it does "
                                "not start with the pagefile header); not overwritten")
    except BaseException:
        file.close()
        raise
    return file


def _temporary_file() -> tuple[Path, object]:
    """A new file in $TMPDIR (or /tmp), already unlinked: it lives while it is open and
    disappears when closed, even if the emulator is killed."""
    folder = os.environ.get("TMPDIR") or "/tmp"
    path = Path(folder) / f"emu-pagefile-{os.getpid()}-{next(_names)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    return path, os.fdopen(fd, "r+b", buffering=0)


TOO_LARGE = ("a pagefile holds at most 2^32 pages (16384G: a software PTE names its slot in "
             "32 bits)")


class Pagefile:
    """``size`` bytes of slots in a host file at ``path`` (None: a temporary file, gone
    from the file system as soon as it is made and deleted when closed)."""

    def __init__(self, size: int, path: str | Path | None = None) -> None:
        if size < MIN_PAGEFILE_SIZE or size % PAGE_SIZE:
            raise PagefileError(f"a pagefile must be a multiple of 4K and at least "
                                f"{MIN_PAGEFILE_SIZE // 1024}K (its first page is reserved), "
                                f"not {size}")
        if size > MAX_PAGEFILE_SIZE:
            raise PagefileError(f"{TOO_LARGE}, not {size} bytes")
        self.size = size
        self.slots = size // PAGE_SIZE
        self.temporary = path is None
        if path is None:
            try:
                self.path, self._file = _temporary_file()
            except OSError as err:
                raise PagefileError(f"cannot create the pagefile {path}: "
                                    f"{err.strerror or err}") from None
        else:
            self.path = Path(path)
            self._file = _open_ours(self.path)
        try:
            if self.temporary or _is_regular(self._file):
                # Nothing of a past run is kept. A temporary file is new (O_EXCL): already
                # empty, and not truncated to 0, which costs its close about 3 ms on ext4
                # (auto_da_alloc flushes a file truncated to 0 when it is closed).
                if not self.temporary:
                    self._file.truncate(0)
                self._file.truncate(size)
                os.pwrite(self._file.fileno(), HEADER, 0)
        except OSError as err:
            self.close()
            raise PagefileError(f"cannot size the pagefile {self.path} to {size} bytes: "
                                f"{err.strerror or err}") from None
        # Lowest slot first, at a cost that grows with the slots used, not the size: every
        # slot from _next on is free, and _free is a heap of the slots below it given back.
        self._next = 1
        self._free: list[int] = []
        self._in_use: set[int] = set()
        self.writes = self.reads = self.write_failures = 0
        self._lost: set[int] = set()                      # slots a private copy could not read

    @property
    def free_slots(self) -> int:
        return len(self._free) + self.slots - self._next

    @property
    def used_slots(self) -> int:
        return len(self._in_use)

    def allocate(self) -> int | None:
        """The lowest free slot, or None when the pagefile is full."""
        if self._free:
            slot = heapq.heappop(self._free)
        elif self._next < self.slots:
            slot, self._next = self._next, self._next + 1
        else:
            return None
        self._in_use.add(slot)
        return slot

    def holds_page(self, slot: int) -> bool:
        """Is ``slot`` a slot of this pagefile, allocated to a page? (The memory manager
        checks a slot a PTE names before it reads or frees it: emu.nt.mm.corruption.)"""
        return slot in self._in_use

    def release(self, slot: int) -> None:
        """Give ``slot`` back (its page was freed, or now lives in RAM only); the caller
        has made sure it holds a page (holds_page)."""
        if not self.holds_page(slot):
            raise AssertionError(f"Pagefile.release: slot {slot} is not allocated")
        self._in_use.discard(slot)
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
        self._lost.discard(slot)
        self.writes += 1

    def read(self, slot: int) -> bytes:
        """The page stored in ``slot``; PagefileReadError if the host refuses or the read
        comes back short (the file was cut under us, or it is /dev/null): never padding."""
        try:
            data = os.pread(self._file.fileno(), PAGE_SIZE, slot * PAGE_SIZE)
        except OSError as err:
            raise PagefileReadError(f"pagefile read failed: {err.strerror or err}",
                                    NTSTATUS.STATUS_DEVICE_DATA_ERROR) from None
        if len(data) != PAGE_SIZE or slot in self._lost:
            raise PagefileReadError(f"pagefile read of slot {slot} came back short "
                                    f"({len(data)} of {PAGE_SIZE} bytes)",
                                    NTSTATUS.STATUS_END_OF_FILE)    # ended before the page
        self.reads += 1
        return data

    def take_private_copy(self) -> None:
        """Go on in a new temporary file holding the same slots (a forked snapshot of the
        machine must not share its pagefile with the machine that runs on)."""
        used = sorted(self._in_use)
        old = self._file
        self.path, self._file = _temporary_file()
        self.temporary = True
        self._file.truncate(self.size)
        for slot in used:
            data = os.pread(old.fileno(), PAGE_SIZE, slot * PAGE_SIZE)
            if len(data) == PAGE_SIZE:
                os.pwrite(self._file.fileno(), data, slot * PAGE_SIZE)
            else:
                self._lost.add(slot)        # unreadable there: unreadable here too
        old.close()

    def close(self) -> None:
        """Close the file; a temporary pagefile is deleted."""
        if self._file.closed:
            return
        self._file.close()
