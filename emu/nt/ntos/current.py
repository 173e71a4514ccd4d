"""The routines that read the KPCR (emu.nt.kpcr): the current thread and processor.

wdm.h inlines KeGetCurrentThread and PsGetCurrentThread on x64 as ``__readgsqword(0x188)``;
ntoskrnl.exe exports both too, and KeGetCurrentProcessorNumberEx. They are registered after
every export of the table before them (emu.nt.ntos), so those keep their trap addresses.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt import kpcr
from emu.nt.exports import ExportCall, export
from emu.nt.ntos import rtl

if TYPE_CHECKING:
    from emu.nt.interfaces import CurrentProcessor

NTOSKRNL = "ntoskrnl.exe"


@export("KeGetCurrentThread", dll=NTOSKRNL)
def ke_get_current_thread(ex: CurrentProcessor, call: ExportCall) -> int:
    """PKTHREAD KeGetCurrentThread(void): the KPRCB's CurrentThread, what wdm.h's x64 inline
    of the same name reads at ``gs:[0x188]`` (the System thread's in DriverEntry and
    DriverUnload; the interrupted thread's in an ISR or a DPC)."""
    return kpcr.current_thread(ex)


@export("KeGetCurrentProcessorNumberEx", dll=NTOSKRNL)
def ke_get_current_processor_number_ex(ex: CurrentProcessor, call: ExportCall) -> int:
    """ULONG KeGetCurrentProcessorNumberEx(PPROCESSOR_NUMBER ProcNumber): the KPRCB's Number,
    0 on this one processor; a non-NULL ProcNumber gets PROCESSOR_NUMBER {Group 0, Number,
    Reserved 0} (USHORT, UCHAR, UCHAR)."""
    number = kpcr.processor_number(ex)
    if call.arg(0):
        rtl.write(ex, call.arg(0), struct.pack("<HBB", 0, number, 0))
    return number


@export("PsGetCurrentThread", dll=NTOSKRNL)
def ps_get_current_thread(ex: CurrentProcessor, call: ExportCall) -> int:
    """PETHREAD PsGetCurrentThread(void): ntoskrnl's export of what wdm.h inlines as
    KeGetCurrentThread, ``gs:[0x188]``: the KPRCB's CurrentThread (emu.nt.kpcr), the same
    ETHREAD an IRP's Tail.Overlay.Thread holds in the dispatch routine of its request."""
    return kpcr.current_thread(ex)
