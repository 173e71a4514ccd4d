"""emu.hw.cr8: finding the CR8 moves in loaded code, and forgetting them with that code."""

from __future__ import annotations

from emu.hw.cr8 import find_moves


def test_find_moves_decodes_each_form():
    # mov cr8, rax; mov rbx, cr8; mov cr8, r9 (REX.B too); a prefixed one; and bytes that
    # only look like one inside another instruction (mov eax, imm32 holding 44 0f 22 c0).
    code = (b"\x44\x0f\x22\xc0" b"\x44\x0f\x20\xc3" b"\x45\x0f\x22\xc1"
            b"\x66\x44\x0f\x20\xc0" b"\xb8\x44\x0f\x22\xc0")
    found = {(mv.address - 0x1000, mv.size, mv.write) for mv in find_moves(0x1000, code)}
    # Every start that decodes as a CR8 move is hooked: the prefixed one at 12 (and at 13,
    # without its prefix), and the look-alike at 18 (its hook never fires: no instruction
    # starts there).
    assert found == {(0, 4, True), (4, 4, False), (8, 4, True), (12, 5, False),
                     (13, 4, False), (18, 4, True)}


def test_freed_code_has_its_cr8_hooks_removed(machine_factory):
    # Unwatching the pages of a driver's code (its image unloaded, INIT freed) drops the
    # hooks: the moves are no longer listed.
    cr8 = machine_factory().executive.cpu.cr8
    code = b"\x90" * 0x10 + b"\x44\x0f\x22\xc0" + b"\x90" * (0x1000 - 0x14) + \
        b"\x44\x0f\x20\xc3"
    va = 0xFFFF_F800_7000_0000
    assert [(m.address - va, m.write) for m in cr8.watch(va, code)] == [(0x10, True),
                                                                         (0x1000, False)]
    cr8.unwatch(va, va + 0x1000)
    assert [(m.address - va) for m in cr8.moves] == [0x1000]
    cr8.unwatch(va + 0x1000, va + 0x2000)
    assert cr8.moves == [] and cr8._hooks == {}      # every Unicorn hook deleted too
