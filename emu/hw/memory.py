"""Physical RAM: one host buffer that Unicorn sees at guest physical address 0.

The buffer is an anonymous mmap; Unicorn maps it with ``mem_map_ptr`` so guest
stores land in it directly, and Python reads it with ``struct`` without a call
into Unicorn (platform-facts.md: four times faster than ``uc.mem_read``).

Addresses beyond the end of RAM behave like an open bus on a PC: reads return
all ones and writes are dropped. That is what makes the page walker safe on
garbage tables: an entry read from nowhere is 0xFFFF_FFFF_FFFF_FFFF, which has
reserved bits set, so the walk ends in a #PF(RSVD) and never in a Python error.
"""

from __future__ import annotations

import ctypes
import mmap
import re
import struct

PAGE_SIZE = 4096
PAGE_SHIFT = 12

_U64 = struct.Struct("<Q")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)(i?B)?\s*$", re.IGNORECASE)
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class HostMemoryError(Exception):
    """The host would not give the buffer for guest RAM (mmap failed: ENOMEM, an rlimit)."""


def format_size(size: int) -> str:
    """``16 GiB``, ``512 MiB``, ``4 KiB`` or ``123 bytes``: the largest unit that is exact."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def parse_size(text: str) -> int:
    """Parse a memory size such as ``64M``, ``2m``, ``512K``, ``1G`` or ``65536`` (bytes)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"bad size {text!r}: expected a number with an optional K, M or G suffix")
    return int(match.group(1)) * _SUFFIX[match.group(2).upper()]


class PhysicalMemory:
    """Guest RAM of ``size`` bytes (a whole number of 4 KiB frames)."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"RAM size must be a positive multiple of 4 KiB, not {size}")
        self.size = size
        self.frames = size // PAGE_SIZE
        # Private, not shared: a forked copy of the emulator (a debugger's snapshot) must
        # keep the RAM it had, copy-on-write.
        try:
            self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as err:          # ENOMEM: more than the host will commit or map
            raise HostMemoryError(f"cannot allocate {format_size(size)} of host memory for "
                                  "guest RAM") from err
        self._view = memoryview(self.buffer)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))

    def read(self, pa: int, n: int) -> bytes:
        """Read ``n`` bytes at physical ``pa``; bytes beyond RAM read as 0xFF (open bus)."""
        if 0 <= pa and pa + n <= self.size:
            return bytes(self._view[pa : pa + n])
        return bytes(self._byte(a) for a in range(pa, pa + n))

    def view(self, pa: int, n: int) -> bytes | memoryview:
        """The ``n`` bytes at physical ``pa`` without a copy (a memoryview of RAM, for one
        write to a file at once); beyond RAM, a copy as ``read`` makes it."""
        if 0 <= pa and pa + n <= self.size:
            return self._view[pa : pa + n]
        return self.read(pa, n)

    def _byte(self, pa: int) -> int:
        return self._view[pa] if 0 <= pa < self.size else 0xFF

    def write(self, pa: int, data: bytes) -> None:
        """Write ``data`` at physical ``pa``; bytes beyond RAM are dropped."""
        n = len(data)
        if 0 <= pa and pa + n <= self.size:
            self._view[pa : pa + n] = data
            return
        for i, b in enumerate(data):
            if 0 <= pa + i < self.size:
                self._view[pa + i] = b

    def read_u64(self, pa: int) -> int:
        """Read one little-endian quadword (a page-table entry, say)."""
        if 0 <= pa and pa + 8 <= self.size:
            return _U64.unpack_from(self.buffer, pa)[0]
        return int.from_bytes(self.read(pa, 8), "little")

    def write_u64(self, pa: int, value: int) -> None:
        """Write one little-endian quadword."""
        if 0 <= pa and pa + 8 <= self.size:
            _U64.pack_into(self.buffer, pa, value & 0xFFFF_FFFF_FFFF_FFFF)
        else:
            self.write(pa, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    def zero(self, pa: int, n: int = PAGE_SIZE) -> None:
        """Fill ``n`` bytes at ``pa`` with zeros (a whole frame by default)."""
        self.write(pa, bytes(n))

    def close(self) -> None:
        """Release the host buffer (after Unicorn has unmapped it)."""
        self._view.release()
        try:
            self.buffer.close()
        except BufferError:
            pass  # a ctypes view still points into it; the mmap goes with the process
