"""A frame reused for new code must not run the code Unicorn translated from its old bytes."""

from __future__ import annotations

from emu.hw.cpu import Cpu
from emu.nt.mm.address_space import Protection
from emu.nt.mm.pfn import FrameUse

ROUTINE = 0xFFFF_8000_0020_0000
RETURN_1 = bytes.fromhex("b801000000c3")     # mov eax, 1; ret
RETURN_2 = bytes.fromhex("b802000000c3")     # mov eax, 2; ret


def reuse_code_frame(machine) -> tuple[int, int]:
    """Run RETURN_1 from a frame, free the frame, put RETURN_2 in the same frame at the
    same address, run again: returns both results."""
    ex = machine.executive
    mm = ex.mm
    frame = mm.map_new(mm.system, ROUTINE, Protection.PAGE_EXECUTE_READ, use=FrameUse.KERNEL,
                       data=RETURN_1)
    first = ex.call_kernel(ROUTINE).rax
    mm.pfn.release(mm.system.unmap_page(ROUTINE))
    while mm.pfn.free_count > 1:                 # FIFO: drain until the old frame is next
        mm.pfn.allocate(FrameUse.KERNEL)
    again = mm.map_new(mm.system, ROUTINE, Protection.PAGE_EXECUTE_READ, use=FrameUse.KERNEL,
                       data=RETURN_2)
    assert again == frame
    return first, ex.call_kernel(ROUTINE).rax


def test_a_reused_code_frame_runs_its_new_code(machine_factory):
    m = machine_factory(mem="1M")
    assert reuse_code_frame(m) == (1, 2)
    assert m.executive.cpu.code_flushes == 1


def test_without_the_flush_the_old_translation_runs(machine_factory, monkeypatch):
    """The control: this is the Unicorn behaviour the flush exists for (platform-facts.md)."""
    monkeypatch.setattr(Cpu, "flush_translated_code", lambda self: None)
    m = machine_factory(mem="1M")
    assert reuse_code_frame(m) == (1, 1)
