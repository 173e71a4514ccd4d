"""KUSER_SHARED_DATA and the system's time: Ke's clock as drivers and apps read it.

The machine's clock counts instructions (emu.nt.scheduler); one instruction is 100 ns of
interrupt time. KUSER_SHARED_DATA is the page at KI_USER_SHARED_DATA that holds the
interrupt time, the system time and the tick count, which wdm.h's KeQueryInterruptTime,
KeQuerySystemTime and KeQueryTickCount macros read without a call.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt import layout, wdm
from emu.nt.mm.address_space import Protection
from emu.nt.mm.pfn import FrameUse

if TYPE_CHECKING:
    from emu.nt.interfaces import SharedData

# The system time at clock 0: 2026-01-01 00:00:00 UTC in 100 ns units since 1601-01-01
# (FILETIME's epoch). Every run starts there, so the same run reads the same times.
SYSTEM_TIME_AT_BOOT = 134_116_992_000_000_000
# KeQueryTimeIncrement: 100 ns units per clock tick, Windows' default 15.625 ms.
TIME_INCREMENT = 156_250
PERFORMANCE_FREQUENCY = 10_000_000       # KeQueryPerformanceCounter: one count per instruction


def interrupt_time(ex: SharedData) -> int:
    """KeQueryInterruptTime: 100 ns units since boot, the machine's clock itself."""
    return ex.clock


def system_time(ex: SharedData) -> int:
    """KeQuerySystemTime: 100 ns units since 1601 (UTC)."""
    return SYSTEM_TIME_AT_BOOT + interrupt_time(ex)

# KUSER_SHARED_DATA (ntddk.h): one frame the kernel writes and everyone reads, mapped
# read-only and NX at KI_USER_SHARED_DATA. The executive writes its times from the clock
# (update_shared_data) when it starts a driver routine, returns from an export and
# dispatches a thread: points of the schedule, never of a debugger's stops, so a replay
# to any position finds the same bytes there.
IMAGE_FILE_MACHINE_AMD64 = 0x8664
NT_PRODUCT_WIN_NT = 1
NT_MAJOR_VERSION, NT_MINOR_VERSION = 10, 0
SYSTEM_ROOT = "C:\\Windows"
# GetTickCount's scale: (TickCount * TickCountMultiplier) >> 24 is milliseconds.
TICK_COUNT_MULTIPLIER = (TIME_INCREMENT << 24) // 10_000


def map_shared_data(ex: SharedData) -> int:
    """Map KUSER_SHARED_DATA at 0xFFFFF780'00000000 (read-only, NX, supervisor) with its
    constant fields; returns its frame, which update_shared_data writes."""
    page = bytearray(layout.PAGE_SIZE)
    fields = wdm.KUSER_SHARED_DATA
    struct.pack_into("<I", page, fields["TickCountMultiplier"], TICK_COUNT_MULTIPLIER)
    struct.pack_into("<HH", page, fields["ImageNumberLow"], IMAGE_FILE_MACHINE_AMD64,
                     IMAGE_FILE_MACHINE_AMD64)
    root = SYSTEM_ROOT.encode("utf-16-le")
    page[fields["NtSystemRoot"]:fields["NtSystemRoot"] + len(root)] = root
    struct.pack_into("<IB", page, fields["NtProductType"], NT_PRODUCT_WIN_NT, 1)
    struct.pack_into("<II", page, fields["NtMajorVersion"], NT_MAJOR_VERSION, NT_MINOR_VERSION)
    frame = ex.mm.map_new(ex.mm.system, layout.KI_USER_SHARED_DATA, Protection.PAGE_READONLY,
                          use=FrameUse.KERNEL, data=bytes(page))
    _write_times(ex, frame, 0)
    return frame


def _ksystem_time(value: int) -> bytes:
    """A KSYSTEM_TIME: LowPart, High1Time, High2Time (both highs equal: a settled value;
    KeUpdateSystemTime stores High2Time, then LowPart, then High1Time)."""
    high = (value >> 32) & 0xFFFF_FFFF
    return struct.pack("<III", value & 0xFFFF_FFFF, high, high)


_INTERRUPT_TIME = wdm.KUSER_SHARED_DATA["InterruptTime"]
_TICK_COUNT = wdm.KUSER_SHARED_DATA["TickCount"]
# InterruptTime and SystemTime sit side by side (0x08, 0x14): one write of both.
assert wdm.KUSER_SHARED_DATA["SystemTime"] == _INTERRUPT_TIME + 12
_TWO_TIMES = struct.Struct("<6I")
_ONE_TIME = struct.Struct("<3I")


def _write_times(ex: SharedData, frame: int, now: int) -> None:
    """The three KSYSTEM_TIMEs at ``now`` (each dispatch: two writes, not three)."""
    base = frame * layout.PAGE_SIZE      # a frame of RAM: packed into it in place
    system = SYSTEM_TIME_AT_BOOT + now
    high, system_high = now >> 32 & 0xFFFF_FFFF, system >> 32 & 0xFFFF_FFFF
    _TWO_TIMES.pack_into(ex.mem.buffer, base + _INTERRUPT_TIME, now & 0xFFFF_FFFF, high,
                         high, system & 0xFFFF_FFFF, system_high, system_high)
    tick = now // TIME_INCREMENT
    _ONE_TIME.pack_into(ex.mem.buffer, base + _TICK_COUNT, tick & 0xFFFF_FFFF,
                        tick >> 32 & 0xFFFF_FFFF, tick >> 32 & 0xFFFF_FFFF)


def renewal_layout(ex: SharedData, frame: int) -> tuple[int, int, int, int, int]:
    """What a quantum renewed in C needs to write the times exactly as ``_write_times``
    does (emu/hw/native.c ``write_times``): the frame's host address (guest RAM is host
    memory: the same bytes), InterruptTime's and TickCount's offsets in it, the system
    time at clock 0 and the clock tick (NativeHooks.set_shared_times' arguments)."""
    return (ex.mem.address + frame * layout.PAGE_SIZE, _INTERRUPT_TIME, _TICK_COUNT,
            SYSTEM_TIME_AT_BOOT, TIME_INCREMENT)


def update_shared_data(ex: SharedData, frame: int) -> None:
    """Bring KUSER_SHARED_DATA's InterruptTime, SystemTime and TickCount up to the clock."""
    _write_times(ex, frame, ex.clock)
