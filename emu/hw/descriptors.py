"""Segment descriptors and the 64-bit TSS (Intel SDM Vol. 3A §3.4.5, §7.2.3, §7.7).

In 64-bit mode segmentation is mostly gone, but privilege is not: the CPL is
the RPL of the CS selector the CPU loaded, and ``iretq`` to ring 3 checks the
user code and stack descriptors' DPL in the GDT. So the GDT is real and lives
in guest memory.

The selector layout follows Windows x64 (``KGDT64_*`` in ntddk headers), so a
student sees the selectors WinDbg shows: kernel CS 0x10, kernel SS 0x18, user
32-bit CS 0x23, user SS 0x2B, user 64-bit CS 0x33, TSS 0x40.
"""

from __future__ import annotations

import enum
import struct


class Selector(enum.IntEnum):
    """GDT selectors, with the RPL a ring-3 user sees in its own registers."""

    NULL = 0x00
    KERNEL_CODE = 0x10   # KGDT64_R0_CODE: 64-bit code, DPL 0
    KERNEL_DATA = 0x18   # KGDT64_R0_DATA: data/stack, DPL 0
    USER_CODE32 = 0x23   # KGDT64_R3_CMCODE | 3: 32-bit compatibility-mode code, DPL 3
    USER_DATA = 0x2B     # KGDT64_R3_DATA | 3: data/stack, DPL 3
    USER_CODE = 0x33     # KGDT64_R3_CODE | 3: 64-bit code, DPL 3
    TSS = 0x40           # KGDT64_SYS_TSS: 16-byte 64-bit TSS descriptor


GDT_ENTRIES = 0x50 // 8   # through the two 8-byte halves of the TSS descriptor
GDT_LIMIT = GDT_ENTRIES * 8 - 1
TSS_SIZE = 0x68           # a 64-bit TSS without an I/O permission bitmap (SDM Figure 7-11)

# Descriptor type field values (SDM Table 3-1 and 3-2).
TYPE_DATA_RW = 0x3        # read/write, accessed
TYPE_CODE_XR = 0xB        # execute/read, accessed
TYPE_TSS64_AVAILABLE = 0x9


def segment_descriptor(*, type_: int, dpl: int, long_mode: bool = False,
                       default_32: bool = False, system: bool = False) -> int:
    """An 8-byte code or data descriptor with base 0 and a 4 GiB limit (SDM Figure 3-8)."""
    limit = 0xFFFFF
    d = limit & 0xFFFF
    d |= type_ << 40
    d |= (0 if system else 1) << 44       # S: 1 = code/data, 0 = system
    d |= dpl << 45                         # DPL: the privilege level of the segment
    d |= 1 << 47                           # P: present
    d |= ((limit >> 16) & 0xF) << 48
    d |= int(long_mode) << 53              # L: 64-bit code segment
    d |= int(default_32) << 54             # D/B: 32-bit default operand size
    d |= 1 << 55                           # G: limit in 4 KiB units
    return d


def tss_descriptor(base: int, limit: int = TSS_SIZE - 1) -> tuple[int, int]:
    """The two quadwords of a 64-bit TSS descriptor (SDM Figure 7-4)."""
    low = limit & 0xFFFF
    low |= (base & 0xFFFFFF) << 16
    low |= TYPE_TSS64_AVAILABLE << 40
    low |= 1 << 47                         # P
    low |= ((limit >> 16) & 0xF) << 48
    low |= ((base >> 24) & 0xFF) << 56
    high = (base >> 32) & 0xFFFF_FFFF
    return low, high


def build_gdt(tss_base: int) -> bytes:
    """The GDT image: null, kernel code/data, user code32/data/code64, TSS."""
    entries = [0] * GDT_ENTRIES
    entries[Selector.KERNEL_CODE >> 3] = segment_descriptor(type_=TYPE_CODE_XR, dpl=0,
                                                            long_mode=True)
    entries[Selector.KERNEL_DATA >> 3] = segment_descriptor(type_=TYPE_DATA_RW, dpl=0,
                                                            default_32=True)
    entries[Selector.USER_CODE32 >> 3] = segment_descriptor(type_=TYPE_CODE_XR, dpl=3,
                                                            default_32=True)
    entries[Selector.USER_DATA >> 3] = segment_descriptor(type_=TYPE_DATA_RW, dpl=3,
                                                          default_32=True)
    entries[Selector.USER_CODE >> 3] = segment_descriptor(type_=TYPE_CODE_XR, dpl=3,
                                                          long_mode=True)
    low, high = tss_descriptor(tss_base)
    entries[Selector.TSS >> 3] = low
    entries[(Selector.TSS >> 3) + 1] = high
    return struct.pack(f"<{GDT_ENTRIES}Q", *entries)


def build_tss(rsp0: int, ist1: int = 0) -> bytes:
    """A 64-bit TSS: RSP0 is the stack the CPU switches to on entering ring 0 (SDM §7.7)."""
    tss = bytearray(TSS_SIZE)
    struct.pack_into("<Q", tss, 0x04, rsp0)
    struct.pack_into("<Q", tss, 0x24, ist1)
    struct.pack_into("<H", tss, 0x66, TSS_SIZE)  # I/O map base beyond the limit: no bitmap
    return bytes(tss)
