"""A fault at ring 0 is a bug check with Microsoft's stop code and parameters."""

from __future__ import annotations

import pytest

from emu.hw.mmu import PTE
from emu.nt import layout
from emu.nt.bugcheck import BugCheck, BugCheckCode, blue_screen
from emu.nt.mm.address_space import Protection
from emu.nt.mm.pfn import FrameUse

ROUTINE = 0xFFFF_8000_0010_0000
UNMAPPED = 0xFFFF_9000_0000_0000


def kernel_routine(machine, code: bytes) -> int:
    ex = machine.executive
    ex.mm.map_new(ex.mm.system, ROUTINE, Protection.PAGE_EXECUTE_READ, use=FrameUse.KERNEL,
                  data=code)
    return ROUTINE


def test_a_kernel_routine_runs_at_ring_0_and_returns(machine_factory):
    m = machine_factory()
    routine = kernel_routine(m, bytes.fromhex("b82a000000") + b"\xc3")   # mov eax, 42; ret
    assert m.executive.call_kernel(routine).rax == 42


def test_kernel_read_of_unmapped_address_is_bugcheck_0x50(machine_factory):
    m = machine_factory()
    code = b"\x48\xa1" + UNMAPPED.to_bytes(8, "little") + b"\xc3"       # mov rax, [UNMAPPED]
    routine = kernel_routine(m, code)
    with pytest.raises(BugCheck) as info:
        m.executive.call_kernel(routine)
    bc = info.value
    assert bc.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA == 0x50
    assert bc.params == (UNMAPPED, 0, routine, 0)
    assert bc.rip == routine and "movabs rax" in bc.instruction
    text = blue_screen(bc)
    assert "PAGE_FAULT_IN_NONPAGED_AREA (0x00000050)" in text
    assert f"0x{UNMAPPED:016X}" in text and "rax=" in text
    assert m.executive.bugcheck is bc


def test_kernel_write_to_read_only_page_is_bugcheck_0xbe(machine_factory):
    m = machine_factory()
    code = b"\x48\xa3" + layout.KERNEL_TEXT.to_bytes(8, "little") + b"\xc3"  # mov [TEXT], rax
    routine = kernel_routine(m, code)
    with pytest.raises(BugCheck) as info:
        m.executive.call_kernel(routine)
    bc = info.value
    assert bc.code == BugCheckCode.ATTEMPTED_WRITE_TO_READONLY_MEMORY
    assert bc.params[0] == layout.KERNEL_TEXT
    assert bc.params[1] & PTE.P and not bc.params[1] & PTE.RW   # the PTE that refused it


def test_kernel_execute_of_nx_page_is_bugcheck_0xfc(machine_factory):
    m = machine_factory()
    # movabs rax, KERNEL_GDT; jmp rax   (the GDT page is data: NX)
    code = b"\x48\xb8" + layout.KERNEL_GDT.to_bytes(8, "little") + b"\xff\xe0"
    routine = kernel_routine(m, code)
    with pytest.raises(BugCheck) as info:
        m.executive.call_kernel(routine)
    bc = info.value
    assert bc.code == BugCheckCode.ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY
    assert bc.params[0] == layout.KERNEL_GDT and bc.params[1] & PTE.NX


def test_kernel_divide_error_is_kmode_exception_not_handled(machine_factory):
    m = machine_factory()
    code = bytes.fromhex("31c9f7f1c3")       # xor ecx, ecx; div ecx; ret
    routine = kernel_routine(m, code)
    with pytest.raises(BugCheck) as info:
        m.executive.call_kernel(routine)
    assert info.value.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED
    assert info.value.params[:2] == (0xC0000094, routine + 2)


def test_smep_stops_the_kernel_executing_a_user_page(machine_factory, apps):
    m = machine_factory()
    proc = m.spawn(apps / "hello")
    entry = proc.image.entry
    code = b"\x48\xb8" + entry.to_bytes(8, "little") + b"\xff\xe0"  # jmp to user code
    routine = kernel_routine(m, code)
    with pytest.raises(BugCheck) as info:
        m.executive.call_kernel(routine, space=proc.space)
    bc = info.value
    assert bc.params[0] == entry
    assert "SMEP" in bc.detail


def test_divide_overflow_is_integer_overflow_not_divide_by_zero(machine_factory):
    m = machine_factory()
    # mov eax, 0x80000000; cdq; mov ecx, -1; idiv ecx  -> quotient overflow, #DE
    code = bytes.fromhex("b800000080" "99" "b9ffffffff" "f7f9" "c3")
    routine = kernel_routine(m, code)
    with pytest.raises(BugCheck) as info:
        m.executive.call_kernel(routine)
    assert info.value.params[0] == 0xC0000095          # STATUS_INTEGER_OVERFLOW
