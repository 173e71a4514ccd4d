"""Test helpers for emu.hw.mmu: a fake physical RAM and a page-table builder."""

from __future__ import annotations

import struct

from emu.hw.mmu import PTE

P, RW, US, A, D, PS, NX = PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS, PTE.NX
KIB4, MIB2, GIB1 = 1 << 12, 1 << 21, 1 << 30
UPPER = P | RW | US  # an upper-level entry that allows everything


class FakeMemory:
    """bytearray-backed physical RAM with the real RAM's open-bus edge.

    Reads beyond the end return 0xFF bytes, writes beyond it are dropped; `writes`
    counts every write call so tests can check that a walk wrote nothing.
    """

    def __init__(self, size: int = 1 << 20) -> None:
        self.buf = bytearray(size)
        self.size = size
        self.writes = 0

    def read(self, pa: int, n: int) -> bytes:
        """n bytes at pa; 0xFF for every byte beyond RAM."""
        if 0 <= pa and pa + n <= self.size:
            return bytes(self.buf[pa : pa + n])
        return bytes(self.buf[i] if 0 <= i < self.size else 0xFF for i in range(pa, pa + n))

    def write(self, pa: int, data: bytes) -> None:
        """Store data at pa; bytes beyond RAM vanish."""
        self.writes += 1
        for i, byte in enumerate(data):
            if 0 <= pa + i < self.size:
                self.buf[pa + i] = byte

    def q(self, pa: int) -> int:
        """The little-endian quadword at pa."""
        return int.from_bytes(self.read(pa, 8), "little")

    def set_q(self, pa: int, value: int) -> None:
        """Store a quadword without counting it as a walker write."""
        struct.pack_into("<Q", self.buf, pa, value)


class Tables:
    """Builds 4-level page tables in a FakeMemory, tables taken from a bump allocator.

    `map` returns the physical address of each entry it wrote, keyed by level, so a
    test can then poke any single bit of any level.
    """

    def __init__(self, mem: FakeMemory, cr3: int = 0x1000, next_table: int = 0x2000) -> None:
        self.mem = mem
        self.cr3 = cr3
        self.next_table = next_table

    def _alloc(self) -> int:
        pa = self.next_table
        self.next_table += KIB4
        return pa

    def map(
        self,
        va: int,
        frame: int,
        leaf: int = P | RW | US,
        *,
        size: int = KIB4,
        upper: int | dict[int, int] = UPPER,
    ) -> dict[int, int]:
        """Map va -> frame with `leaf` flags (PS added for large pages); returns {level: ea}.

        `upper` is the flag set of every non-leaf entry, or {level: flags} per level
        (missing levels get UPPER).  Existing upper entries are reused, flags rewritten.
        """
        leaf_level = {KIB4: 1, MIB2: 2, GIB1: 3}[size]
        table = self.cr3
        where = {}
        for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
            ea = table + ((va >> shift) & 0x1FF) * 8
            where[level] = ea
            if level == leaf_level:
                self.mem.set_q(ea, frame | int(leaf) | (int(PS) if size != KIB4 else 0))
                return where
            flags = upper.get(level, UPPER) if isinstance(upper, dict) else upper
            old = self.mem.q(ea)
            nxt = old & 0x000F_FFFF_FFFF_F000 if old & P else self._alloc()
            self.mem.set_q(ea, nxt | int(flags))
            table = nxt
        raise AssertionError("unreachable")
