"""emu.nt.unwind against hand-built UNWIND_INFO (Microsoft's "x64 exception handling"):
each unwind code, a chained entry, a leaf, RIP in a prolog and in an epilog."""

from __future__ import annotations

import struct

import pytest

from emu.nt import unwind

BASE = 0x1_0000_0000
STACK = 0x8000


class Memory:
    """Bytes at addresses (code and unwind data) and 8-byte stack words."""

    def __init__(self) -> None:
        self.bytes: dict[int, bytes] = {}
        self.words: dict[int, int] = {}

    def read(self, va: int, n: int) -> bytes:
        for start, data in self.bytes.items():
            if start <= va < start + len(data):
                return data[va - start:va - start + n].ljust(n, b"\xcc")
        if va % 8 or n % 8:
            raise ValueError(f"unreadable {va:#x}")
        return b"".join(self.words.get(va + i, 0).to_bytes(8, "little") for i in range(0, n, 8))


def info(prolog: int, codes: list[tuple[int, int, int]], frame: int = 0, flags: int = 0,
         extra: bytes = b"", operands: dict[int, bytes] | None = None) -> bytes:
    """UNWIND_INFO version 1 with ``codes`` (CodeOffset, UnwindOp, OpInfo), each code's
    operand slots from ``operands`` (by index), then ``extra``."""
    raw = b""
    count = 0
    for i, (offset, op, op_info) in enumerate(codes):
        raw += bytes([offset, op | op_info << 4]) + (operands or {}).get(i, b"")
    count = len(raw) // 2
    if count % 2:
        raw += b"\0\0"
    return bytes([1 | flags << 3, prolog, count, frame]) + raw + extra


def context(**regs: int) -> dict[str, int]:
    ctx = {name: 0 for name in unwind.GPR_BY_NUMBER}
    ctx.update(regs)
    return ctx


def test_save_nonvol_and_alloc_large_are_read_from_the_fixed_frame():
    # sub rsp, 0x1000 (ALLOC_LARGE, 16-bit slot x 8); mov [rsp + 0x20], rbx (SAVE_NONVOL
    # slot 4 x 8); push rdi.
    m = Memory()
    m.bytes[BASE + 0x3000] = info(0x10, [(0x10, unwind.UnwindOp.SAVE_NONVOL, 3),
                                         (0x0B, unwind.UnwindOp.ALLOC_LARGE, 0),
                                         (0x01, unwind.UnwindOp.PUSH_NONVOL, 7)],
                                  operands={0: struct.pack("<H", 4),
                                            1: struct.pack("<H", 0x1000 // 8)})
    m.words.update({STACK + 0x20: 0xB0B0, STACK + 0x1000: 0xD1D1, STACK + 0x1008: 0xCA11})
    fn = unwind.RuntimeFunction(BASE + 0x1000, BASE + 0x1100, BASE + 0x3000)
    ctx = context(rip=BASE + 0x1050, rsp=STACK)
    frame, handler = unwind.virtual_unwind(m.read, BASE, fn, ctx)
    assert frame == STACK and handler is None
    assert (ctx["rbx"], ctx["rdi"], ctx["rip"], ctx["rsp"]) == (0xB0B0, 0xD1D1, 0xCA11,
                                                                 STACK + 0x1010)


def test_alloc_large_with_a_32_bit_size_and_save_nonvol_far():
    m = Memory()
    m.bytes[BASE + 0x3000] = info(0x20, [(0x20, unwind.UnwindOp.SAVE_NONVOL_FAR, 6),
                                         (0x10, unwind.UnwindOp.ALLOC_LARGE, 1)],
                                  operands={0: struct.pack("<I", 0x28),
                                            1: struct.pack("<I", 0x2_0000)})
    m.words.update({STACK + 0x28: 0x5151, STACK + 0x2_0000: 0xCA11})
    fn = unwind.RuntimeFunction(BASE + 0x1000, BASE + 0x1100, BASE + 0x3000)
    ctx = context(rip=BASE + 0x1080, rsp=STACK)
    unwind.virtual_unwind(m.read, BASE, fn, ctx)
    assert (ctx["rsi"], ctx["rip"], ctx["rsp"]) == (0x5151, 0xCA11, STACK + 0x2_0008)


def test_in_the_prolog_only_the_codes_already_run_are_undone():
    # push rbp (1); sub rsp, 0x28 (5): RIP at offset 1 has only pushed rbp.
    m = Memory()
    m.bytes[BASE + 0x3000] = info(5, [(5, unwind.UnwindOp.ALLOC_SMALL, 4),
                                      (1, unwind.UnwindOp.PUSH_NONVOL, 5)], flags=1,
                                  extra=struct.pack("<I", 0x4000))
    m.words.update({STACK: 0xBBBB, STACK + 8: 0xCA11})
    fn = unwind.RuntimeFunction(BASE + 0x1000, BASE + 0x1100, BASE + 0x3000)
    ctx = context(rip=BASE + 0x1001, rsp=STACK)
    frame, handler = unwind.virtual_unwind(m.read, BASE, fn, ctx, unwind.UNW_FLAG_EHANDLER)
    assert (ctx["rbp"], ctx["rip"], ctx["rsp"]) == (0xBBBB, 0xCA11, STACK + 16)
    assert handler is None                     # no handler is called for a prolog


def test_the_handler_is_named_outside_the_prolog():
    m = Memory()
    m.bytes[BASE + 0x3000] = info(5, [(5, unwind.UnwindOp.ALLOC_SMALL, 4),
                                      (1, unwind.UnwindOp.PUSH_NONVOL, 5)], flags=3,
                                  extra=struct.pack("<I", 0x4000) + b"DATA")
    fn = unwind.RuntimeFunction(BASE + 0x1000, BASE + 0x1100, BASE + 0x3000)
    m.bytes[BASE + 0x1020] = b"\x90" * 16          # not an epilog
    ctx = context(rip=BASE + 0x1020, rsp=STACK)
    _, handler = unwind.virtual_unwind(m.read, BASE, fn, ctx, unwind.UNW_FLAG_UHANDLER)
    assert handler == unwind.FrameHandler(BASE + 0x4000, BASE + 0x3000 + 4 + 4 + 4)
    ctx = context(rip=BASE + 0x1020, rsp=STACK)
    assert unwind.virtual_unwind(m.read, BASE, fn, ctx)[1] is None    # none asked for


def test_in_an_epilog_the_rest_of_it_is_simulated():
    # add rsp, 0x28; pop rsi; pop rbp; ret   (RIP at the add: nothing popped yet).
    m = Memory()
    m.bytes[BASE + 0x3000] = info(6, [(6, unwind.UnwindOp.ALLOC_SMALL, 4),
                                      (2, unwind.UnwindOp.PUSH_NONVOL, 6),
                                      (1, unwind.UnwindOp.PUSH_NONVOL, 5)])
    m.bytes[BASE + 0x1040] = bytes.fromhex("4883c428" "5e" "5d" "c3")
    m.words.update({STACK + 0x28: 0x5151, STACK + 0x30: 0xBBBB, STACK + 0x38: 0xCA11})
    fn = unwind.RuntimeFunction(BASE + 0x1000, BASE + 0x1100, BASE + 0x3000)
    ctx = context(rip=BASE + 0x1040, rsp=STACK)
    unwind.virtual_unwind(m.read, BASE, fn, ctx)
    assert (ctx["rsi"], ctx["rbp"], ctx["rip"], ctx["rsp"]) == (0x5151, 0xBBBB, 0xCA11,
                                                                  STACK + 0x40)
    # At the second pop, RSP already points at the saved rbp.
    ctx = context(rip=BASE + 0x1045, rsp=STACK + 0x30, rsi=0x5151)
    unwind.virtual_unwind(m.read, BASE, fn, ctx)
    assert (ctx["rbp"], ctx["rip"], ctx["rsp"]) == (0xBBBB, 0xCA11, STACK + 0x40)


def test_a_chained_entry_continues_with_the_parent_s_codes():
    m = Memory()
    parent = info(1, [(1, unwind.UnwindOp.PUSH_NONVOL, 3)])
    m.bytes[BASE + 0x3100] = parent
    m.bytes[BASE + 0x3000] = info(0, [(0, unwind.UnwindOp.ALLOC_SMALL, 1)], flags=4,
                                  extra=struct.pack("<III", 0x1000, 0x1100, 0x3100))
    m.words.update({STACK + 16: 0xB0B0, STACK + 24: 0xCA11})
    fn = unwind.RuntimeFunction(BASE + 0x1200, BASE + 0x1300, BASE + 0x3000)
    m.bytes[BASE + 0x1210] = b"\x90" * 16
    ctx = context(rip=BASE + 0x1210, rsp=STACK)
    unwind.virtual_unwind(m.read, BASE, fn, ctx)
    assert (ctx["rbx"], ctx["rip"], ctx["rsp"]) == (0xB0B0, 0xCA11, STACK + 32)


def test_a_leaf_returns_through_rsp_and_a_machine_frame_through_its_rip_and_rsp():
    m = Memory()
    m.words.update({STACK: 0xCA11})
    ctx = context(rip=BASE + 0x1000, rsp=STACK)
    unwind.virtual_unwind(m.read, BASE, None, ctx)
    assert (ctx["rip"], ctx["rsp"]) == (0xCA11, STACK + 8)
    # PUSH_MACHFRAME with an error code: [rsp] code, then RIP, CS, RFLAGS, RSP, SS.
    m.bytes[BASE + 0x3000] = info(0, [(0, unwind.UnwindOp.PUSH_MACHFRAME, 1)])
    m.words.update({STACK + 8: 0x1234, STACK + 32: 0x7777_0000})
    fn = unwind.RuntimeFunction(BASE + 0x1000, BASE + 0x1100, BASE + 0x3000)
    m.bytes[BASE + 0x1010] = b"\x90" * 16
    ctx = context(rip=BASE + 0x1010, rsp=STACK)
    unwind.virtual_unwind(m.read, BASE, fn, ctx)
    assert (ctx["rip"], ctx["rsp"]) == (0x1234, 0x7777_0000)


def test_a_bad_version_is_an_unwind_error():
    m = Memory()
    m.bytes[BASE + 0x3000] = bytes([5, 0, 0, 0])
    fn = unwind.RuntimeFunction(BASE + 0x1000, BASE + 0x1100, BASE + 0x3000)
    with pytest.raises(unwind.UnwindError, match="version 5"):
        unwind.virtual_unwind(m.read, BASE, fn, context(rip=BASE + 0x1000, rsp=STACK))


def test_lookup_finds_the_entry_holding_rip():
    table = unwind.read_function_table(struct.pack("<6I", 0x2000, 0x2010, 0x3000,
                                                   0x1000, 0x1010, 0x3010), BASE)
    assert [f.begin for f in table] == [BASE + 0x1000, BASE + 0x2000]
    assert unwind.lookup(table, BASE + 0x100F).begin == BASE + 0x1000
    assert unwind.lookup(table, BASE + 0x1010) is None
    assert unwind.lookup(table, BASE + 0xFFF) is None
