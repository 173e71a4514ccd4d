"""Mm: the memory manager's exports (MDLs, probes, mappings), as PE drivers import them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.nt.exports import PE_DLLS, ExportCall, export, pe_address_of, read_unicode_string

if TYPE_CHECKING:
    from emu.nt.kernel import Executive


@export("MmGetSystemRoutineAddress", dll="ntoskrnl.exe", elf=False)
def mm_get_system_routine_address(ex: Executive, call: ExportCall) -> int:
    """PVOID MmGetSystemRoutineAddress(PUNICODE_STRING SystemRoutineName): the address of the
    routine of that name that ntoskrnl.exe or hal.dll exports to PE drivers, or NULL (how a
    driver finds a routine newer than the Windows it may run on, such as ExAllocatePool2).
    Names are case-sensitive, as export names are."""
    name = read_unicode_string(ex, call.arg(0))
    for dll in PE_DLLS:
        address = pe_address_of(dll, name)
        if address is not None:
            return address
    return 0
