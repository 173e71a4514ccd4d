"""The KPCR: the processor's control region, which x64 kernel code finds through GS.

On x64 Windows, while the processor runs ring-0 code, IA32_GS_BASE is the address of its
KPCR, and IA32_KERNEL_GS_BASE holds the GS base of the thread's user mode (its TEB); the
kernel's entry from ring 3 (a system call, an interrupt) and its exit both execute SWAPGS,
which exchanges the two (SDM Vol. 2B, SWAPGS). The KPRCB follows the KPCR at 0x180. wdm.h
inlines ``KeGetCurrentThread`` (and so ``PsGetCurrentThread``) as ``__readgsqword(0x188)``,
the KPRCB's CurrentThread, and ntddk.h's ``KeGetCurrentProcessorNumber`` as
``__readgsword(0x184)``, the KPRCB's (Legacy)Number; ``KeGetPcr`` reads the KPCR's Self.

Here the KPCR is one page of the kernel's own data at KERNEL_PCR (read-write, NX,
supervisor: never in pool), mapped when the executive first runs a ring-0 routine (a
machine with no driver runs none, and its frames stay where they were). The clean ring-0
state every entry starts from is the one just before the exit's ``iretq``, after its
SWAPGS: GS base the user's (0: apps here never set one), IA32_KERNEL_GS_BASE the KPCR.
``enter`` plays the entry's SWAPGS for a kernel routine the executive runs (DriverEntry, a
dispatch routine, an ISR, a DPC, DriverUnload) and makes the KPRCB's CurrentThread the
thread it runs in.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt import layout, wdm
from emu.nt.mm.address_space import Protection
from emu.nt.mm.pfn import FrameUse, OutOfFrames

if TYPE_CHECKING:
    from emu.nt.interfaces import ProcessorControl
    from emu.nt.process import Thread

# ntddk.h's PCR_MAJOR_VERSION / PCR_MINOR_VERSION: the layout version the KPCR carries.
PCR_MAJOR_VERSION = 1
PCR_MINOR_VERSION = 1
# The KPRCB (opaque in the WDK's headers) at KPCR + 0x180, as Windows x64 lays out the
# fields used here: the offsets the headers' inlines hard-code (0x184, 0x188) and
# Windows 10's MxCsr and Number (KeGetCurrentProcessorNumberEx reads the latter).
KPCR_PRCB = 0x180
PRCB_MXCSR = 0x00
PRCB_LEGACY_NUMBER = 0x04           # UCHAR; read as a USHORT by the inline (+5 is zero)
PRCB_CURRENT_THREAD = 0x08          # gs:[0x188]: KeGetCurrentThread, PsGetCurrentThread
PRCB_NUMBER = 0x24                  # ULONG: the processor's index (0: there is one)
MXCSR_DEFAULT = 0x1F80              # all SSE exceptions masked (SDM Vol. 1 10.2.3.1)
CURRENT_THREAD = KPCR_PRCB + PRCB_CURRENT_THREAD


def map_pcr(ex: ProcessorControl) -> int:
    """Map the KPCR page at KERNEL_PCR with its constant fields (Self, CurrentPrcb, the GDT
    and TSS, the version); returns its frame."""
    page = bytearray(layout.PAGE_SIZE)
    pcr, base = wdm.KPCR, layout.KERNEL_PCR
    struct.pack_into("<Q", page, pcr["GdtBase"], layout.KERNEL_GDT)
    struct.pack_into("<Q", page, pcr["TssBase"], layout.KERNEL_TSS)
    struct.pack_into("<Q", page, pcr["Self"], base)
    struct.pack_into("<Q", page, pcr["CurrentPrcb"], base + KPCR_PRCB)
    struct.pack_into("<HH", page, pcr["MajorVersion"], PCR_MAJOR_VERSION, PCR_MINOR_VERSION)
    struct.pack_into("<I", page, KPCR_PRCB + PRCB_MXCSR, MXCSR_DEFAULT)
    return ex.mm.map_new(ex.mm.system, base, Protection.PAGE_READWRITE, use=FrameUse.KERNEL,
                         data=bytes(page))


def ethread_of(ex: ProcessorControl, thread: Thread | None) -> int:
    """The ETHREAD ``thread`` runs as (None: the System thread), as emu.nt.eprocess makes
    it; 0 when there is no RAM for it."""
    from emu.nt import eprocess

    try:
        return eprocess.thread_of(ex, thread)
    except OutOfFrames:
        return 0


def current_thread(ex: ProcessorControl) -> int:
    """The KPRCB's CurrentThread now (what ``gs:[0x188]`` reads at ring 0); 0 before any
    ring-0 routine has run (no KPCR yet)."""
    if not ex.pcr_frame:
        return 0
    address = ex.pcr_frame * layout.PAGE_SIZE + CURRENT_THREAD
    return struct.unpack("<Q", ex.mem.read(address, 8))[0]


def processor_number(ex: ProcessorControl) -> int:
    """The KPRCB's Number (KeGetCurrentProcessorNumberEx's; 0: there is one processor)."""
    address = ex.pcr_frame * layout.PAGE_SIZE + KPCR_PRCB + PRCB_NUMBER
    return struct.unpack("<I", ex.mem.read(address, 4))[0]


def set_current_thread(ex: ProcessorControl, ethread: int) -> None:
    """Store ``ethread`` as the KPRCB's CurrentThread (the dispatcher's SwapContext does)."""
    ex.mem.write(ex.pcr_frame * layout.PAGE_SIZE + CURRENT_THREAD, struct.pack("<Q", ethread))


def enter(ex: ProcessorControl, user_gs_base: int) -> None:
    """The kernel entry's SWAPGS for a routine the executive runs at ring 0: GS base the
    KPCR, IA32_KERNEL_GS_BASE the interrupted user mode's GS base; and the KPRCB's
    CurrentThread the thread the routine runs in (the System thread's where no process's
    thread is current: DriverEntry, DriverUnload, a DPC in the idle system)."""
    if not ex.pcr_frame:
        ex.pcr_frame = map_pcr(ex)
    ex.cpu.swap_gs_to(layout.KERNEL_PCR, user_gs_base)
    set_current_thread(ex, ethread_of(ex, ex.current_thread))
