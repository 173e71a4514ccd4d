"""Random system calls from ring 3: every one ends as a status (or a defined end of the
process), and after the process exits the executive's books balance: frames, commit
charge, objects."""

from __future__ import annotations

import struct

import pytest
from fuzzscale import examples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emu.nt.loader import Image, Segment
from emu.nt.mm import virtual
from emu.nt.mm.check import check_memory
from emu.nt.ob_check import check_objects
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import Service

CODE_VA = 0x0040_0000
# mov r64, imm64 opcodes, in the ABI's argument order: rax, rdi, rsi, rdx, r10, r8, r9
MOVABS = [b"\x48\xb8", b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8",
          b"\x49\xb9"]
SYSCALL = b"\x0f\x05"
EXIT = b"".join(op + struct.pack("<Q", v) for op, v in
                zip(MOVABS, [0, 0xFFFF_FFFF_FFFF_FFFF, 0, 0, 0, 0, 0], strict=True)) + SYSCALL

ARGS = st.sampled_from([0, 1, 4, 8, 12, 0x10, 0x1000, 0xFFFF_FFFF_FFFF_FFFF,
                        0xFFFF_FFFF_FFFF_FFFE, 0x7FFF_FFFF, 0x40_0000, 0x40_0800,
                        0x7FFF_FFFD_F000,          # the main stack
                        0x7F7_93950000, 0x0000_1000_0000_0000,
                        0xFFFF_8000_0000_0000, 0xFFFF_F800_0100_0000,
                        0x8000_0000_0000, 1 << 40, 0x2000, 0x3000, 0x104,
                        0x100, 0x40])
NUMBERS = st.one_of(st.sampled_from([int(s) for s in Service
                                     if s not in (Service.NtTerminateProcess,)]),
                    st.integers(0, 0x40))
CALLS = st.lists(st.tuples(NUMBERS, st.lists(ARGS, min_size=6, max_size=6)),
                 min_size=1, max_size=6)


def program(calls) -> bytes:
    code = b""
    for number, args in calls:
        for op, value in zip(MOVABS, [number, *args], strict=True):
            code += op + struct.pack("<Q", value)
        code += SYSCALL
    return code + EXIT


OUT = 0x40_0F00          # a writable slot in the code page (RWX here) for out-parameters
CONSOLE, HELLO = 0x40_0E00, 0x40_0E40   # strings planted by the test in the same page


@pytest.mark.fuzz
@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(calls=CALLS)
# Every kind of object, made for sure (random arguments rarely manage it), left open:
# process exit must close the handles and delete the objects.
@example(calls=[(0x0B, [OUT, 1, 0, 0, 0, 0])])                       # an event
@example(calls=[(0x0E, [CONSOLE, OUT, 0, 0, 0, 0])])                 # the console
@example(calls=[(0x0E, [HELLO, OUT, 0, 0, 0, 0])])                   # a file
@example(calls=[(0x0B, [OUT, 0, 1, 0, 0, 0]), (0x04, [4, OUT + 8, 0, 0, 0, 0])])  # + a dup
@example(calls=[(0x09, [CODE_VA + 0x800, 0, OUT, 0, 0, 0])])         # a thread
@example(calls=[(0x08, [HELLO, 0, OUT, 0, 0, 0])])                   # a child process
def test_random_system_calls_end_defined_and_leave_the_books_balanced(machine_factory, calls):
    code = program(calls)
    assert len(code) <= 4096
    page = bytearray(4096)
    page[:len(code)] = code
    page[CONSOLE - CODE_VA:CONSOLE - CODE_VA + 16] = b"\\Device\\Console\0"
    page[HELLO - CODE_VA:HELLO - CODE_VA + 6] = b"hello\0"
    page[0x800:0x802] = b"\xeb\xfe"            # a thread start routine: jmp $ (never ends)
    m = machine_factory(mem="16M", max_insns=5_000_000)
    ex = m.executive
    free_before = ex.mm.pfn.free_count
    image = Image("fuzz", "fuzz", 0, CODE_VA, [Segment(CODE_VA, 4096, 7)], {CODE_VA: page},
                  {CODE_VA: 7})
    proc = ex.create_process(image, [])
    result = m.run()
    assert result.bugcheck is None
    assert check_memory(ex.mm) == []            # PFN records, PTEs, slots, working sets
    assert check_objects(ex) == []              # handles, handle counts, live objects
    statuses = {int(s) for s in NTSTATUS}
    for p in result.processes:
        if p.exception is not None:
            assert p.exception.code in statuses
    if result.stopped is None:                  # every process ended: the books balance
        assert ex.mm.pfn.free_count == free_before
        assert virtual.commit_state(ex).charged == 0
        assert ex.objects.live() == []
        assert all(len(p.handles) == 0 for p in result.processes)
    assert proc.exit_status is not None or result.stopped in ("deadlock", "instruction limit")
