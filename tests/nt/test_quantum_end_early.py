"""A lone thread's quantum whose budget ends inside a block, renewed in C at that block's
entry (emu/hw/native.c ``renew_early``) when the block's instructions before the budget's
end are inert (no memory access, no fault or trap: emu/hw/blocks.py ``inert``) and no Python
hook sees them. What a user sees is what the renewal through a stop after the budget's last
instruction gives (``Executive.quantum_end_in_c = False``, the reference): the
instructions, the ``--max-insns`` stops, the output, the registers, KUSER_SHARED_DATA's
times in memory and the times a guest reads, at the instruction it reads them.
"""

from __future__ import annotations

import struct

import pytest
from schedrun import outcome, watched_machine
from test_quantum_end_in_c import (
    APPS,
    CODE_VA,
    DATA_VA,
    INTERRUPT_TIME,
    USER_SHARED_DATA,
    map_shared_data_for_ring3,
    raw_image,
    time_reader,
)
from unicorn import UC_HOOK_CODE

from emu.nt import layout
from emu.nt.loader import Image
from emu.nt.status import NTSTATUS
from emu.scenarios.watch import read_user


def run(workload: list, *, in_c: bool, quantum: int, max_insns: int | None = 1 << 40,
        watch: int | None = None, records: int = 0, hooked: int | None = None,
        unhooked: int | None = None) -> dict:
    """Run the processes of ``workload`` ((app, args) or a raw Image) counted, their quantum
    ends made in C or not. ``watch``: the first process's ``records`` 8-byte records at
    DATA_VA are read before it ends (KUSER_SHARED_DATA mapped for it, ring 3). ``hooked``: a
    Python code hook on that address reads InterruptTime from memory at each call;
    ``unhooked``: one added there and deleted before the run. What a user sees, and how
    many renewals C made, early ones apart."""
    m, output, schedule = watched_machine("256M", max_insns=max_insns, quantum=quantum)
    ex = m.executive
    ex.quantum_end_in_c = in_c
    kept: list[bytes] = []
    terminate = ex.terminate

    def terminated(proc, status, exception=None):
        if watch is not None and not kept:
            kept.append(read_user(proc, DATA_VA, 8 * min(status, records)))
            ex.mem.write_u64(proc.space.pte_address(USER_SHARED_DATA, create=False), 0)
            ex.mm.page_changed(proc.space, USER_SHARED_DATA)
        return terminate(proc, status, exception)

    ex.terminate = terminated
    shared = ex.shared_data_frame * layout.PAGE_SIZE + INTERRUPT_TIME
    times_at_hook: list[int] = []
    uc = ex.cpu.uc
    if hooked is not None:
        uc.hook_add(UC_HOOK_CODE, lambda *_: times_at_hook.append(ex.mem.read_u64(shared)),
                    None, hooked, hooked)
    if unhooked is not None:
        uc.hook_del(uc.hook_add(UC_HOOK_CODE, lambda *_: None, None, unhooked, unhooked))
    try:
        procs = []
        for item in workload:
            if isinstance(item, Image):
                procs.append(ex.create_process(item, []))
                if watch is not None:
                    map_shared_data_for_ring3(m, procs[-1].space)
            else:
                procs.append(m.spawn(APPS / item[0], item[1]))
        result = m.run()
        native = ex.cpu.native
        return {
            **outcome(m, result, procs, output, schedule),
            "kept": kept,
            "times_at_hook": times_at_hook,
            "renewals": native.renewals,
            "early": native.early_renewals,
            "runs": ex.cpu.runs,
        }
    finally:
        m.close()


def same_both_ways(workload: list, **kwargs) -> dict:
    """Run ``workload`` both ways: everything a user sees is equal; C's renewals and runs
    are returned beside it."""
    got = run(workload, in_c=True, **kwargs)
    reference = run(workload, in_c=False, **kwargs)
    assert reference.pop("renewals") == reference.pop("early") == 0
    made = {key: got.pop(key) for key in ("renewals", "early", "runs")}
    reference.pop("runs")
    assert got == reference
    return {**got, **made}


# `loop` (a 5-instruction block: imul, add, add, cmp, jb; the first four inert) under these
# quanta and starts: its quantum ends fall inside the block after 1, 2, 3 and 4 of them, or
# on its boundary (the argument's length moves the loop's start by strtoul's steps).
PHASES = [("300000", 10_000), ("300000", 10_001), ("300000", 10_002), ("300000", 10_003),
          ("300000", 10_004), (" 300000", 10_001), ("  300000", 10_003), ("300000", 997)]


@pytest.mark.parametrize(("arg", "quantum"), PHASES)
def test_a_quantum_ending_inside_an_inert_prefix_is_renewed_early(arg: str,
                                                                 quantum: int) -> None:
    got = same_both_ways([("loop", [arg])], quantum=quantum)
    assert got["stopped"] is None and got["exits"] == [0]
    # 1.5 M instructions: every quantum end but those of the start-up and the end renewed
    # in C, nearly all of those inside the block; one run from start to end but a few.
    ends = got["instructions"] // quantum
    assert ends - 4 <= got["renewals"] <= ends and got["early"] >= got["renewals"] // 2
    assert got["runs"] <= 8


def test_the_loop_of_the_issue_makes_one_run() -> None:
    # The brief's measurement in small: `loop 100000000`'s phase (the 9-digit argument),
    # 10 M instructions of it under --max-insns: every quantum end inside the block.
    got = same_both_ways([("loop", ["100000000"])], quantum=100_000, max_insns=10_000_000)
    assert got["stopped"] == "instruction limit" and got["instructions"] == 10_000_000
    assert got["renewals"] == got["early"] >= 98 and got["runs"] <= 4


@pytest.mark.parametrize("offset", range(6))
def test_max_insns_stops_exactly_across_early_renewals(offset: int) -> None:
    # Limits at the 60th quantum end and the next five instructions (quantum 10,002: the
    # ends fall after each of the block's instructions in turn, four in five inside it).
    first = run([("loop", ["10000000"])], in_c=False, quantum=10_002, max_insns=200_000)
    limit = first["schedule"][0][1] + 60 * 10_002 + offset
    got = same_both_ways([("loop", ["10000000"])], quantum=10_002, max_insns=limit)
    assert got["stopped"] == "instruction limit" and got["instructions"] == limit
    assert got["early"] >= 40


@pytest.mark.parametrize("limit", [1_000_000, 1_000_001, 1_000_016, 1_000_017])
def test_a_limit_inside_the_budget_a_renewal_would_give_is_kept(limit: int) -> None:
    # The budget left under --max-insns cut as renew_quantum cuts it (and refused when as
    # small as a step's): the run stops at the limit exactly.
    got = same_both_ways([("loop", ["10000000"])], quantum=10_003, max_insns=limit)
    assert got["stopped"] == "instruction limit" and got["instructions"] == limit
    assert got["early"] > 50


# -- a guest that reads the times -----------------------------------------------------------

def stamped_reader(iterations: int, prefix: bytes = b"") -> bytes:
    """Ring-3 code that, ``iterations`` times, runs ``prefix`` (inert register work), reads
    KUSER_SHARED_DATA's InterruptTime.LowPart and, when it changed, keeps it with the
    iteration it was read in (8 bytes at DATA_VA each); it exits with the number kept. A
    time written early is read one iteration early: a different record."""
    return (b"\x49\xb8" + (USER_SHARED_DATA + INTERRUPT_TIME).to_bytes(8, "little")
            + b"\x48\xbf" + DATA_VA.to_bytes(8, "little")     # mov rdi, DATA_VA
            + b"\x31\xc9"                                      # xor ecx, ecx
            + b"\x41\x8b\x10"                                  # mov edx, [r8]
            + b"\x41\xb9" + iterations.to_bytes(4, "little")   # mov r9d, iterations
            + prefix                                           # loop: prefix
            + b"\x41\x8b\x00"                                  # mov eax, [r8]
            + b"\x39\xd0"                                      # cmp eax, edx
            + b"\x74\x0c"                                      # je same
            + b"\x89\x04\xcf"                                  # mov [rdi+rcx*8], eax
            + b"\x44\x89\x4c\xcf\x04"                          # mov [rdi+rcx*8+4], r9d
            + b"\xff\xc1"                                      # inc ecx
            + b"\x89\xc2"                                      # mov edx, eax
            + b"\x41\xff\xc9"                                  # same: dec r9d
            + bytes([0x75, (-(len(prefix) + 24)) & 0xFF])       # jnz loop
            + b"\x48\xc7\xc7\xff\xff\xff\xff"                  # mov rdi, -1
            + b"\x89\xce\x31\xc0\x0f\x05")                     # mov esi, ecx; NtTerminateProcess


def kept_records(got: dict) -> list[tuple[int, int]]:
    (raw,) = got["kept"]
    return list(struct.iter_unpack("<II", raw))


# The loop's block: [prefix], the load, cmp, je. The quanta put its ends after each of the
# block's instructions in turn (the block is 3 + len(prefix) long; `same`, 2, lies between).
READER_QUANTA = [10_000, 10_001, 10_002, 10_003, 10_004, 10_005, 10_006]


@pytest.mark.parametrize("quantum", READER_QUANTA)
def test_a_block_that_reads_the_times_first_is_not_renewed_early(quantum: int) -> None:
    # The existing time reader's loop block begins with its load: inert prefix 0, so a
    # budget that ends after the load is never renewed early (the load must read the old
    # times). The values it keeps are the reference's; no renewal inside that block.
    image = raw_image("timereader", time_reader(100_000))
    got = same_both_ways([image], quantum=quantum, watch=0, records=0)
    assert got["exits"][0] >= 40


@pytest.mark.parametrize("quantum", READER_QUANTA)
def test_a_load_of_the_times_first_in_its_block_reads_them_in_the_same_iteration(
        quantum: int) -> None:
    # The loop's block begins with the load: a budget that ends after it (or after the cmp)
    # is never renewed early, else the guest would read the new time an iteration early.
    image = raw_image("stamped", stamped_reader(60_000))
    got = same_both_ways([image], quantum=quantum, watch=0, records=4096)
    records = kept_records(got)
    assert len(records) > 20 and all(t % quantum == 0 for t, _ in records)


# (Under 10,000 every end of this reader falls after its load, by the phase.)
@pytest.mark.parametrize("quantum", READER_QUANTA[1:])
def test_the_times_read_after_an_inert_prefix_are_read_in_the_same_iteration(
        quantum: int) -> None:
    # Two inert instructions before the load: a budget that ends after one or two of them
    # is renewed early (the load comes after the renewal either way), one that ends after
    # the load is not (else the guest would read the new time an iteration early).
    prefix = b"\xff\xc3" + b"\x48\x83\xc6\x03"               # inc ebx; add rsi, 3
    image = raw_image("stamped", stamped_reader(60_000, prefix))
    got = same_both_ways([image], quantum=quantum, watch=0, records=4096)
    records = kept_records(got)
    assert len(records) > 20 and all(t % quantum == 0 for t, _ in records)
    assert 10 < got["early"] <= got["renewals"]


# -- prefixes that are not inert ------------------------------------------------------------

def looper(body: bytes, iterations: int) -> bytes:
    """Ring-3 code: ``iterations`` times ``body`` then `dec r9d; jnz`; exits with status 0
    (R12 points at DATA_VA, RSP at the stack, RCX and R10 hold 7, EDX 0)."""
    return (b"\x49\xbc" + DATA_VA.to_bytes(8, "little")      # mov r12, DATA_VA
            + b"\xb9\x07\x00\x00\x00"                          # mov ecx, 7
            + b"\x41\xba\x07\x00\x00\x00"                      # mov r10d, 7
            + b"\x41\xb9" + iterations.to_bytes(4, "little")   # mov r9d, iterations
            + b"\x31\xd2"                                      # xor edx, edx
            + body
            + b"\x41\xff\xc9"                                  # dec r9d
            + bytes([0x75, (-(len(body) + 5)) & 0xFF])         # jnz body
            + b"\x48\xc7\xc7\xff\xff\xff\xff"                  # mov rdi, -1
            + b"\x31\xf6\x31\xc0\x0f\x05")                     # NtTerminateProcess(-1, 0)


NOT_INERT_FIRST = {
    # Each body's first instruction is not inert: no budget that ends inside its block is
    # renewed early (the rest are inert, so only that instruction decides).
    "a stack access": b"\x50" + b"\x58" + b"\xff\xc3" * 3,         # push rax; pop rax
    "a call": b"\xe8\x00\x00\x00\x00" + b"\x58" + b"\xff\xc3" * 3,  # call $+5; pop rax
    "a memory read": b"\x41\x8b\x04\x24" + b"\xff\xc3" * 3,        # mov eax, [r12]
    "a memory write": b"\x41\x89\x04\x24" + b"\xff\xc3" * 3,       # mov [r12], eax
    "a div that does not fault": b"\xf7\xf1" + b"\xff\xc3" * 3,   # div ecx (EDX < 7)
}


@pytest.mark.parametrize("name", NOT_INERT_FIRST)
@pytest.mark.parametrize("quantum", [10_000, 10_001, 10_002, 10_003])
def test_a_block_that_begins_with_what_is_not_inert_is_never_renewed_early(
        name: str, quantum: int) -> None:
    image = raw_image("looper", looper(NOT_INERT_FIRST[name], 30_000))
    got = same_both_ways([image], quantum=quantum)
    assert got["exits"] == [0] and got["early"] == 0


def divider(iterations: int) -> bytes:
    """Ring-3 code whose loop block is `mov eax, r9d; xor edx, edx; div r10d; dec r10d;
    inc ebx; dec r9d; jnz`: R10 reaches 0 after ``iterations`` divisions, and the next one
    raises #DE (the process ends with STATUS_INTEGER_DIVIDE_BY_ZERO)."""
    return (b"\x41\xba" + iterations.to_bytes(4, "little")   # mov r10d, iterations
            + b"\x41\xb9\xff\xff\xff\x7f"                      # mov r9d, 0x7fffffff
            + b"\x44\x89\xc8"                                  # loop: mov eax, r9d
            + b"\x31\xd2"                                      # xor edx, edx
            + b"\x41\xf7\xf2"                                  # div r10d
            + b"\x41\xff\xca"                                  # dec r10d
            + b"\xff\xc3"                                      # inc ebx
            + b"\x41\xff\xc9"                                  # dec r9d
            + b"\x75\xee"                                      # jnz loop
            + b"\x48\xc7\xc7\xff\xff\xff\xff"                  # mov rdi, -1
            + b"\x31\xf6\x31\xc0\x0f\x05")                     # NtTerminateProcess(-1, 0)


# The divider's #DE comes after 280,019 completed instructions (the trampoline's iretq, two
# MOVs, 40,002 iterations of 7 and the last one's first two): under the first three quanta
# a quantum end is due right after that div (280,020 = 30 x 9,334 = 26 x 10,770 = 20 x
# 14,001), where a renewal made at the block's entry would leave its times; under the
# others the budget ends inside the inert prefix (renewed early) or after the div.
@pytest.mark.parametrize("quantum", [9_334, 10_770, 14_001, 10_000, 10_001, 10_002])
def test_a_div_that_faults_after_an_inert_prefix_sees_the_reference_times(
        quantum: int) -> None:
    # The loop's block: two inert instructions, then the div. At the last iteration the
    # div faults: a quantum end due after it never comes (no renewal is made), so the
    # times the machine leaves are the last quantum end's before the fault, either way.
    got = same_both_ways([raw_image("divider", divider(40_002))], quantum=quantum)
    assert got["exits"] == [NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO]
    assert got["instructions"] == 280_019 and got["early"] > 5


def port_reader(spin: int) -> bytes:
    """Ring-3 code: ``spin`` iterations of `dec ecx; jnz`, then `inc ebx; inc esi; in al,
    dx; inc edi; jmp $`. IN at CPL 3 with IOPL 0 is #GP unless the TSS's I/O permission
    bitmap allows the port (SDM Vol. 1 19.5), which QEMU checks as it runs, so the IN is
    not its block's last instruction: the process ends with STATUS_PRIVILEGED_INSTRUCTION."""
    return (b"\xb9" + spin.to_bytes(4, "little")              # mov ecx, spin
            + b"\xff\xc9\x75\xfc"                               # dec ecx; jnz
            + b"\xff\xc3\xff\xc6"                               # inc ebx; inc esi
            + b"\xec"                                          # in al, dx
            + b"\xff\xc7"                                      # inc edi
            + b"\xeb\xfe")                                     # jmp $


@pytest.mark.parametrize("quantum", range(8_002, 8_008))
def test_a_privileged_instruction_in_ring_3_after_an_inert_prefix_is_the_reference(
        quantum: int) -> None:
    # The block `inc ebx; inc esi; in al, dx; ...` begins after 8,002 instructions (the
    # iretq, the MOV, 4,000 iterations): the first quantum end falls at its entry, inside
    # its inert prefix (renewed early), or after the IN (8,005 and on: never reached, the
    # IN faults first, and no renewal is made).
    got = same_both_ways([raw_image("porter", port_reader(4_000))], quantum=quantum)
    assert got["exits"] == [NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION]
    assert got["instructions"] == 8_004
    assert got["early"] == (1 if quantum in (8_003, 8_004) else 0)


# -- Python hooks ---------------------------------------------------------------------------

def three_then_spin(spin: int) -> bytes:
    """Ring-3 code: `spin` iterations of `dec ecx; jnz`, then a block of five inert
    instructions at CODE_VA + 9 (`inc ebx; inc esi; inc edi; inc ebp; inc r11d`), then it
    exits with status 0: the first quantum end falls where ``spin`` puts it."""
    return (b"\xb9" + spin.to_bytes(4, "little")              # mov ecx, spin
            + b"\xff\xc9\x75\xfc"                               # dec ecx; jnz
            + b"\xff\xc3\xff\xc6\xff\xc7\xff\xc5\x41\xff\xc3"   # the block
            + b"\x48\xc7\xc7\xff\xff\xff\xff"                  # mov rdi, -1
            + b"\x31\xf6\x31\xc0\x0f\x05")                     # NtTerminateProcess(-1, 0)


BLOCK_VA = CODE_VA + 9
SPIN = 4_000
# The thread's first instruction is the trampoline's iretq into ring 3: the block begins
# after 1 + 1 + 2 * SPIN = 8,002 instructions, and this quantum ends after its third.
QUANTUM = 8_005


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_a_python_code_hook_in_the_prefix_sees_the_reference_times(nth: int) -> None:
    # The budget ends after the block's third instruction (QUANTUM). A code hook on
    # its first, second or third instruction (which all run before the quantum's end)
    # reads InterruptTime from memory: 0, the time before the quantum end, as through a
    # stop; nothing renewed early.
    at = BLOCK_VA + 2 * (nth - 1)
    got = same_both_ways([raw_image("spin", three_then_spin(SPIN))], quantum=QUANTUM,
                         hooked=at)
    assert got["exits"] == [0] and got["times_at_hook"] == [0] and got["early"] == 0


def test_a_python_code_hook_after_the_budgets_end_sees_the_new_times() -> None:
    # On the block's fourth instruction: it runs after the quantum's end either way (the
    # renewal is made early, the hook lies beyond the three instructions before the end).
    got = same_both_ways([raw_image("spin", three_then_spin(SPIN))], quantum=QUANTUM,
                         hooked=BLOCK_VA + 6)
    assert got["times_at_hook"] == [QUANTUM]


def test_a_deleted_python_code_hook_no_longer_keeps_the_renewal_late() -> None:
    got = same_both_ways([raw_image("spin", three_then_spin(SPIN))], quantum=QUANTUM,
                         unhooked=BLOCK_VA)
    assert got["exits"] == [0] and got["early"] == 1
    assert run([raw_image("spin", three_then_spin(SPIN))], in_c=True, quantum=QUANTUM,
               hooked=BLOCK_VA)["early"] == 0
