"""Kernel pools: ExAllocatePoolWithTag's memory, in the shared kernel half.

Three pools, as on Windows: NonPagedPool (executable: the reason NonPagedPoolNx
was added in Windows 8), NonPagedPoolNx, and PagedPool (no pagefile yet, so it
stays resident). Each allocation is 16-byte aligned from a bump pointer over
pages mapped on demand; freeing records the block (tag checked) but does not
reuse it, so a use-after-free reads the old bytes instead of someone else's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from emu.nt import layout
from emu.nt.mm.address_space import MemoryManager, Protection
from emu.nt.mm.pfn import FrameUse

MAX_ALLOCATION = 16 << 20


class PoolType(enum.IntEnum):
    """POOL_TYPE (wdm.h)."""

    NonPagedPool = 0
    PagedPool = 1
    NonPagedPoolNx = 512


@dataclass
class PoolBlock:
    address: int
    size: int
    tag: int
    pool: PoolType
    freed: bool = False


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

    def allocate(self, pool: int, size: int, tag: int) -> int:
        """ExAllocatePoolWithTag: a zeroed block, or 0 (NULL) when it cannot be had."""
        try:
            kind = PoolType(pool)
        except ValueError:
            return 0
        if size <= 0 or size > MAX_ALLOCATION:
            return 0
        address = self._next[kind]
        end = address + ((size + 15) & ~15)
        if end - self._BASES[kind] > layout.KERNEL_POOL_SIZE:
            return 0
        protect = Protection.PAGE_EXECUTE_READWRITE if kind is PoolType.NonPagedPool \
            else Protection.PAGE_READWRITE
        while self._mapped_to[kind] < end:
            self.mm.map_new(self.mm.system, self._mapped_to[kind], protect, use=FrameUse.KERNEL)
            self._mapped_to[kind] += layout.PAGE_SIZE
        self._next[kind] = end
        self.blocks[address] = PoolBlock(address, size, tag, kind)
        return address

    def free(self, address: int, tag: int) -> str | None:
        """ExFreePoolWithTag: None if fine, else what is wrong (a bug check follows)."""
        block = self.blocks.get(address)
        if block is None:
            return "not the start of a pool block"
        if block.freed:
            return "freed twice"
        if tag and tag != block.tag:
            return f"tag {tag:#x} does not match the block's {block.tag:#x}"
        block.freed = True
        return None
