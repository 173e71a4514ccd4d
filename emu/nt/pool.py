"""Kernel pools: ExAllocatePoolWithTag's and ExAllocatePool2's memory, in the shared kernel half.

Three pools, as on Windows: NonPagedPool (executable: the reason NonPagedPoolNx
was added in Windows 8), NonPagedPoolNx, and PagedPool (its pages may go to the
pagefile, emu.nt.mm.paging). Each allocation comes from a bump pointer over pages
mapped on demand, placed as the ExAllocatePoolWithTag reference says: a block of
PAGE_SIZE bytes or more starts on a page boundary, a smaller one is 16-byte aligned
(64 when cache-aligned) and does not cross a page boundary. Freeing records the block
but does not reuse it, so a use-after-free reads the old bytes instead of someone
else's (and every block starts zeroed). There are no pool headers in memory: a block's
size, tag and pool are kept here.

A bad call is a BadPoolCall, which the export turns into bug check 0xC2 BAD_POOL_CALLER
with the parameters of Microsoft's "Bug Check 0xC2" page for that violation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from emu.nt import layout
from emu.nt.mm.address_space import MemoryManager, Protection
from emu.nt.mm.pfn import FrameUse

MAX_ALLOCATION = 16 << 20
APC_LEVEL, DISPATCH_LEVEL = 1, 2
CACHE_ALIGNMENT = 64              # SYSTEM_CACHE_ALIGNMENT_SIZE on x64 (wdm.h)
TAG_NONE = 0x656E6F4E             # 'None': the tag ExAllocatePool gives (it takes none)


class PoolType(enum.IntEnum):
    """POOL_TYPE (wdm.h): the base types this machine has."""

    NonPagedPool = 0
    PagedPool = 1
    NonPagedPoolNx = 512


# POOL_TYPE values ExAllocatePoolWithTag takes (wdm.h): the base type each allocates from,
# and whether the block is cache-aligned.
POOL_TYPES: dict[int, tuple[PoolType, bool]] = {
    0: (PoolType.NonPagedPool, False), 1: (PoolType.PagedPool, False),
    4: (PoolType.NonPagedPool, True),               # NonPagedPoolCacheAligned
    5: (PoolType.PagedPool, True),                  # PagedPoolCacheAligned
    512: (PoolType.NonPagedPoolNx, False), 516: (PoolType.NonPagedPoolNx, True),
}
MUST_SUCCEED = {2, 6}             # NonPagedPoolMustSucceed, NonPagedPoolCacheAlignedMustS
POOL_RAISE_IF_ALLOCATION_FAILURE = 16


# BAD_POOL_CALLER's parameter 1 (Microsoft's "Bug Check 0xC2: BAD_POOL_CALLER").
class BadPool(enum.IntEnum):
    FREED_TWICE = 0x07            # (reserved, pool header contents, the block's address)
    ALLOCATE_AT_BAD_IRQL = 0x08   # (current IRQL, pool type, size of the allocation)
    FREE_AT_BAD_IRQL = 0x09       # (current IRQL, pool type, the address)
    WRONG_TAG = 0x0A              # (the address, the allocator's tag, the tag freed with)
    FREE_USER_ADDRESS = 0x40      # (the address, start of system address space, 0)
    NEVER_IN_A_POOL = 0x42        # (the address, 0, 0)
    INVALID_POOL_ADDRESS = 0x46   # (the address, 0, 0): in nonpaged pool, not a block
    NOT_ALLOCATED_PAGED = 0x50    # (the address, its page offset in PagedPool, PagedPool's size)
    MUST_SUCCEED = 0x9A           # (pool type, bytes requested, tag)


class BadPoolCall(Exception):
    """A pool request Windows answers with bug check 0xC2: ``params`` are its four
    parameters, the message says what was wrong."""

    def __init__(self, params: tuple[int, int, int, int], message: str) -> None:
        super().__init__(message)
        self.params = tuple(int(p) & 0xFFFF_FFFF_FFFF_FFFF for p in params)


@dataclass
class PoolBlock:
    address: int
    size: int
    tag: int
    pool: PoolType
    freed: bool = False
    pool_type: int = -1           # the POOL_TYPE value the caller asked for (its base if -1)

    @property
    def requested_type(self) -> int:
        return int(self.pool) if self.pool_type < 0 else self.pool_type


class Pools:
    """The three kernel pools of one machine."""

    _BASES = {PoolType.NonPagedPool: layout.KERNEL_POOL,
              PoolType.NonPagedPoolNx: layout.KERNEL_POOL_NX,
              PoolType.PagedPool: layout.KERNEL_POOL_PAGED}

    def __init__(self, mm: MemoryManager) -> None:
        self.mm = mm
        self._next = dict(self._BASES)
        self._mapped_to = dict(self._BASES)
        self.blocks: dict[int, PoolBlock] = {}

    def allocate(self, pool: int, size: int, tag: int, irql: int = 0) -> int:
        """ExAllocatePoolWithTag(PoolType, NumberOfBytes, Tag) at ``irql``: a zeroed block, or
        0 (NULL) when it cannot be had (an unknown or session pool type, more than
        MAX_ALLOCATION bytes, no RAM: OutOfFrames). A MustSucceed type or a bad IRQL raise
        BadPoolCall."""
        if pool in MUST_SUCCEED:        # "This pool type is no longer supported" (0xC2)
            raise BadPoolCall((BadPool.MUST_SUCCEED, pool, size, tag),
                              f"pool type {pool} (MustSucceed) is no longer supported")
        kind, aligned = POOL_TYPES.get(pool, (None, False))
        if kind is None:
            return 0
        self.check_irql(kind, irql, (BadPool.ALLOCATE_AT_BAD_IRQL, irql, pool, size),
                        "allocating")
        return self.carve(kind, size, tag, CACHE_ALIGNMENT if aligned else 16, pool)

    @staticmethod
    def check_irql(kind: PoolType, irql: int, params: tuple[int, int, int, int],
                   what: str) -> None:
        """ExAllocatePoolWithTag/ExFreePoolWithTag: "Callers ... must be executing at IRQL <=
        DISPATCH_LEVEL"; for paged pool "at IRQL <= APC_LEVEL". Else BadPoolCall."""
        limit = APC_LEVEL if kind is PoolType.PagedPool else DISPATCH_LEVEL
        if irql > limit:
            raise BadPoolCall(params, f"{what} {kind.name} at IRQL {irql} (above "
                              f"{'APC_LEVEL' if limit == APC_LEVEL else 'DISPATCH_LEVEL'})")

    def carve(self, kind: PoolType, size: int, tag: int, alignment: int = 16,
              pool_type: int = -1) -> int:
        """A new zeroed block of ``kind``: page-aligned when ``size`` is PAGE_SIZE or more,
        else ``alignment``-aligned within one page (the ExAllocatePoolWithTag reference:
        "Memory requests of PAGE_SIZE or less are allocated within a page and do not cross
        page boundaries"); a size of 0 gets the smallest block, as Windows gives without
        Driver Verifier. 0 if more than MAX_ALLOCATION or past the pool's range."""
        if size < 0 or size > MAX_ALLOCATION:
            return 0
        page = layout.PAGE_SIZE
        address = -(-self._next[kind] // alignment) * alignment
        if size >= page:
            address = -(-address // page) * page
        elif (address % page) + size > page:
            address = -(-address // page) * page
        end = address + max(-(-size // 16) * 16, 16)
        if end - self._BASES[kind] > layout.KERNEL_POOL_SIZE:
            return 0
        protect = Protection.PAGE_EXECUTE_READWRITE if kind is PoolType.NonPagedPool \
            else Protection.PAGE_READWRITE
        while self._mapped_to[kind] < end:
            self.mm.map_new(self.mm.system, self._mapped_to[kind], protect, use=FrameUse.KERNEL)
            self._mapped_to[kind] += page
        self._next[kind] = end
        self.blocks[address] = PoolBlock(address, size, tag, kind, pool_type=pool_type)
        return address

    def pool_at(self, address: int) -> PoolType | None:
        """The pool whose virtual range holds ``address``, or None."""
        for kind, base in self._BASES.items():
            if base <= address < base + layout.KERNEL_POOL_SIZE:
                return kind
        return None

    def free(self, address: int, tag: int, irql: int = 0) -> None:
        """ExFreePoolWithTag(P, Tag) at ``irql``: the block is freed, or BadPoolCall says
        why not. A Tag of 0 (ExFreePool) matches any block, else it must be the block's."""
        block = self.blocks.get(address)
        if block is None:
            raise self._not_a_block(address)
        self.check_irql(block.pool, irql, (BadPool.FREE_AT_BAD_IRQL, irql,
                                           block.requested_type, address), "freeing")
        if block.freed:
            raise BadPoolCall((BadPool.FREED_TWICE, 0, 0, address),
                              f"{address:#x} was freed already")
        if tag and tag != block.tag:
            raise BadPoolCall((BadPool.WRONG_TAG, address, block.tag, tag),
                              f"tag {tag:#x} does not match the block's {block.tag:#x}")
        block.freed = True

    def release(self, address: int) -> None:
        """The executive frees a block of its own (an IRP, a system buffer): no checks."""
        block = self.blocks.get(address)
        if block is not None:
            block.freed = True

    def _not_a_block(self, address: int) -> BadPoolCall:
        kind = self.pool_at(address)
        if address < layout.KERNEL_SPACE_START:
            return BadPoolCall((BadPool.FREE_USER_ADDRESS, address, layout.KERNEL_SPACE_START,
                                0), f"{address:#x} is a user-mode address")
        if kind is None:
            return BadPoolCall((BadPool.NEVER_IN_A_POOL, address, 0, 0),
                               f"{address:#x} was never in any pool")
        if kind is PoolType.PagedPool:
            base = self._BASES[kind]
            return BadPoolCall((BadPool.NOT_ALLOCATED_PAGED, address, (address - base) >> 12,
                                layout.KERNEL_POOL_SIZE),
                               f"{address:#x} is not an allocated PagedPool block")
        return BadPoolCall((BadPool.INVALID_POOL_ADDRESS, address, 0, 0),
                           f"{address:#x} is not the start of a {kind.name} block")
