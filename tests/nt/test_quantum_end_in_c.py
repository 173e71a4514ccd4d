"""Quantum ends made inside the run, at the block entry where the budget ends: a lone
thread's renewed (emu/nt/ke_dispatcher.py ``_arm_renewal``, emu/hw/native.c
``renew_quantum``), and the preempted switch between threads that take turns
(``_arm_ring``, ``ring_switch``, taken into the books by ``_switches_made``). What a user of
the machine sees is what the quantum end through a stopped run gives
(``Executive.quantum_end_in_c = False``, the reference: ``_quantum_renewed``, ``_turn_over``):
the instructions, the ``--max-insns`` stops, the schedule, each thread's and process's
instructions, the output, the registers, and KUSER_SHARED_DATA's times, in memory and as a
guest reads them at every quantum end.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from schedrun import outcome, watched_machine

from emu.hw.mmu import PTE
from emu.machine import Machine
from emu.nt import layout, wdm
from emu.nt.loader import Image, Segment
from emu.scenarios.watch import read_user

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
CODE_VA, DATA_VA = 0x0040_0000, 0x0060_0000
# Where a test maps KUSER_SHARED_DATA's frame for ring 3, read-only, as Windows does
# (MM_SHARED_USER_DATA_VA): this machine maps it only at KI_USER_SHARED_DATA, ring 0.
USER_SHARED_DATA = 0x7FFE_0000
INTERRUPT_TIME = wdm.KUSER_SHARED_DATA["InterruptTime"]
TICK_COUNT = wdm.KUSER_SHARED_DATA["TickCount"]


def time_reader(iterations: int) -> bytes:
    """Ring-3 code that reads KUSER_SHARED_DATA's InterruptTime.LowPart ``iterations``
    times and keeps each new value it sees at DATA_VA (4 bytes each), then exits with the
    number of values kept."""
    return (b"\x49\xb8" + (USER_SHARED_DATA + INTERRUPT_TIME).to_bytes(8, "little")
            + b"\x48\xbf" + DATA_VA.to_bytes(8, "little")     # mov rdi, DATA_VA
            + b"\x31\xc9"                                      # xor ecx, ecx
            + b"\x41\x8b\x10"                                  # mov edx, [r8]
            + b"\x41\xb9" + iterations.to_bytes(4, "little")   # mov r9d, iterations
            + b"\x41\x8b\x00"                                  # loop: mov eax, [r8]
            + b"\x39\xd0"                                      # cmp eax, edx
            + b"\x74\x07"                                      # je same
            + b"\x89\x04\x8f"                                  # mov [rdi+rcx*4], eax
            + b"\xff\xc1"                                      # inc ecx
            + b"\x89\xc2"                                      # mov edx, eax
            + b"\x41\xff\xc9"                                  # same: dec r9d
            + b"\x75\xed"                                      # jnz loop
            + b"\x48\xc7\xc7\xff\xff\xff\xff"                  # mov rdi, -1
            + b"\x89\xce\x31\xc0\x0f\x05")                     # mov esi, ecx; NtTerminateProcess


def raw_image(name: str, code: bytes) -> Image:
    """``code`` at CODE_VA (read, execute) and 64 KiB of data at DATA_VA (read, write)."""
    page = bytearray(4096)
    page[:len(code)] = code
    data = {DATA_VA + i * 4096: bytearray(4096) for i in range(16)}
    return Image(name, name, 0, CODE_VA, [Segment(CODE_VA, 4096, 5), Segment(DATA_VA, 0x10000, 6)],
                 {CODE_VA: page, **data}, {CODE_VA: 5, **dict.fromkeys(data, 6)})


def map_shared_data_for_ring3(m: Machine, space) -> None:
    """KUSER_SHARED_DATA's frame at USER_SHARED_DATA in ``space``, read-only, user, NX."""
    ex = m.executive
    pte = space.pte_address(USER_SHARED_DATA, create=True)
    ex.mem.write_u64(pte, ex.shared_data_frame * layout.PAGE_SIZE | PTE.P | PTE.US | PTE.NX)
    ex.mm.page_changed(space, USER_SHARED_DATA)


def run(workload: list, *, in_c: bool, quantum: int = 100_000, max_insns: int = 1 << 40,
        watch_times: bool = False) -> dict:
    """Run the processes of ``workload`` ((app, args) or a raw Image) counted, their quantum
    ends renewed in C or not; what a user sees, and how many renewals C made."""
    m, output, schedule = watched_machine("256M", max_insns=max_insns, quantum=quantum)
    ex = m.executive
    ex.quantum_end_in_c = in_c
    seen: dict[int, list[int]] = {}
    terminate = ex.terminate
    tss = ex._gdt_frame * layout.PAGE_SIZE + (layout.KERNEL_TSS & 0xFFF)
    stacks: list[tuple[int, int]] = []
    service = ex.cpu.syscall_handler

    def checked(cpu, cs, number, args):
        # At every system call, TSS.RSP0 is the kernel stack of the thread making it.
        stacks.append((ex.mem.read_u64(tss + 4), ex.current_thread.kernel_stack_top))
        return service(cpu, cs, number, args)

    ex.cpu.syscall_handler = checked

    def terminated(proc, status, exception=None):
        # The times the program kept, read before its address space goes.
        if watch_times and proc.pid not in seen:
            raw = read_user(proc, DATA_VA, 4 * status)
            seen[proc.pid] = list(struct.unpack(f"<{status}I", raw))
            # The frame is the kernel's: out of the process before its teardown.
            ex.mem.write_u64(proc.space.pte_address(USER_SHARED_DATA, create=False), 0)
            ex.mm.page_changed(proc.space, USER_SHARED_DATA)
        return terminate(proc, status, exception)

    ex.terminate = terminated
    try:
        procs = []
        for item in workload:
            if isinstance(item, Image):
                procs.append(ex.create_process(item, []))
                if watch_times:
                    map_shared_data_for_ring3(m, procs[-1].space)
            else:
                procs.append(m.spawn(APPS / item[0], item[1]))
        result = m.run()
        return {
            **outcome(m, result, procs, output, schedule),
            "tss_rsp0_wrong": [pair for pair in stacks if pair[0] != pair[1]],
            "times_seen": seen,
            "renewals": ex.cpu.native.renewals,
            "ring_switches": ex.cpu.native.ring_switches,
            "between_runs": ex.cpu.native.between_runs,
        }
    finally:
        m.close()


def same_both_ways(workload: list, **kwargs) -> dict:
    got = run(workload, in_c=True, **kwargs)
    reference = run(workload, in_c=False, **kwargs)
    assert reference.pop("renewals") == reference.pop("ring_switches") == 0
    assert reference.pop("between_runs") == 0
    made = got.pop("renewals"), got.pop("ring_switches"), got.pop("between_runs")
    assert got == reference and got["tss_rsp0_wrong"] == []
    got["renewals"], got["ring_switches"], got["between_runs"] = made
    return got


# `loop`'s quantum ends fall on its 5-instruction block's boundaries (where C renews them)
# only for some lengths of its start-up: with " 300000" (the leading space costs one more
# step of strtoul) and "10000000" they do; with "300000" they fall inside the block, where
# the run stops and Python finishes the budget as ever (the tail).
ALIGNED = " 300000"

WORKLOADS = {
    "a compute-bound loop": ([("loop", [ALIGNED])], 100_000),
    "a loop whose quantum ends fall inside its block": ([("loop", ["300000"])], 10_000),
    "a loop, quantum 997 (ends inside blocks and on their boundaries)":
        ([("loop", ["300000"])], 997),
    "fib": ([("fib", [])], 10_000),
    "counter": ([("counter", [])], 10_000),
    "a sweep over memory (page faults, the walker)": ([("sweep", ["2048", "2"])], 10_000),
    "hotcold": ([("hotcold", [])], 10_000),
    "a spawner and its child loop (a process made ready mid-quantum)":
        ([("spawner", ["loop", "300000"])], 10_000),
    "two loops": ([("loop", [ALIGNED]), ("loop", [ALIGNED])], 10_000),
    "threads (threads made ready mid-quantum)": ([("threads", [])], 10_000),
    "race": ([("race", [])], 10_000),
    "waiter (an event set by another thread)": ([("waiter", [])], 10_000),
    "sleeper (timers)": ([("sleeper", [])], 10_000),
    "a yielder and a loop": ([("yielder", ["300"]), ("loop", [ALIGNED])], 10_000),
    "a system-call loop": ([("sysloop", [])], 10_000),
}


@pytest.mark.parametrize("name", WORKLOADS)
def test_a_quantum_renewed_in_c_is_the_renewal_through_a_stop(name: str) -> None:
    workload, quantum = WORKLOADS[name]
    got = same_both_ways(workload, quantum=quantum)
    assert got["stopped"] is None
    if name == "a compute-bound loop":
        assert got["renewals"] > 0                      # the C path was taken


def test_a_loop_renews_nearly_every_quantum_in_c() -> None:
    got = same_both_ways([("loop", [ALIGNED])], quantum=10_000)
    # 1.5 M instructions: about 150 quantum ends, every one on the loop's block boundary
    # but those of the start-up and the end.
    assert got["instructions"] // 10_000 - 3 <= got["renewals"] <= got["instructions"] // 10_000
    assert got["switches"] == 1 and len(got["schedule"]) == 1


@pytest.mark.parametrize("limit", [
    1_000_000,               # inside a quantum
    1_000_003,               # not on a block boundary
    1_000_016,               # the last budget left as small as a step's
    1_100_000,
])
def test_max_insns_stops_exactly_across_renewals(limit: int) -> None:
    got = same_both_ways([("loop", ["10000000"])], quantum=10_000, max_insns=limit)
    assert got["stopped"] == "instruction limit" and got["instructions"] == limit
    assert got["renewals"] > 50


def test_max_insns_exactly_at_a_quantum_end() -> None:
    # The quantum ends of `loop` under quantum 10,000 fall on its block boundaries: a limit
    # at one of them is reached with a renewal due there (none is made: the run stops).
    first = run([("loop", ["10000000"])], in_c=True, quantum=10_000, max_insns=2_000_000)
    limit = first["schedule"][0][1] + 150 * 10_000       # the 150th quantum end
    got = same_both_ways([("loop", ["10000000"])], quantum=10_000, max_insns=limit)
    assert got["stopped"] == "instruction limit" and got["instructions"] == limit
    assert got["renewals"] >= 140


def test_a_guest_reads_the_same_times_at_every_renewal() -> None:
    # A ring-3 program that keeps every new InterruptTime it reads: it sees the time move on
    # at each quantum end, by exactly the quantum, the same values either way.
    image = raw_image("timereader", time_reader(1_000_000))
    got = same_both_ways([image], quantum=10_000, watch_times=True)
    (seen,) = got["times_seen"].values()
    # Every quantum end is seen, and every one is renewed in C: at its loop's block
    # boundaries inside the run, inside its block (after the load of the time: not inert)
    # between the tail's run and the next (native_quantum_end). The clock starts at 0 with
    # the program, so each is the next multiple of the quantum.
    assert len(seen) == got["exits"][0] == got["renewals"] > 100
    assert seen == [10_000 * k for k in range(1, len(seen) + 1)]
    shared = got["kuser_shared_data"]
    tick = struct.unpack_from("<3I", shared, TICK_COUNT)
    now = struct.unpack_from("<3I", shared, INTERRUPT_TIME)
    assert now[1] == now[2] and tick[1] == tick[2]


@pytest.mark.parametrize("loops", [1, 2])
def test_no_quantum_end_in_c_while_someone_watches_each_dispatch(loops: int) -> None:
    # An event observer sees a thread-dispatch at every quantum end (a lone thread's too):
    # every one goes through a stop, as before.
    from emu.nt.events import Event

    m = Machine("64M", max_insns=1 << 40, quantum=10_000, console=lambda *_: None)
    ex = m.executive
    dispatches = []
    ex.events.subscribe(lambda event, details: event is Event.THREAD_DISPATCH and
                        dispatches.append(ex.clock))
    try:
        for _ in range(loops):
            m.spawn(APPS / "loop", [ALIGNED])
        m.run()
        assert ex.cpu.native.renewals == ex.cpu.native.ring_switches == 0
        assert len(dispatches) > 140 * loops
    finally:
        m.close()


def thread_maker(before: int, after: int) -> bytes:
    """Ring-3 code that counts ``before`` down with a one-instruction loop (`loop $`: every
    iteration a block, so every quantum end is on a block boundary), creates a thread that
    spins (`jmp $`: NtCreateThread makes it ready mid-quantum), counts ``after`` down the
    same way and ends the process with status 0."""
    return (b"\xb9" + before.to_bytes(4, "little")         # mov ecx, before
            + b"\xe2\xfe"                                  # loop $
            + b"\x48\x8d\x3d\x27\x00\x00\x00"              # lea rdi, [rip + child]
            + b"\x31\xf6"                                  # xor esi, esi
            + b"\x48\xba" + DATA_VA.to_bytes(8, "little")  # mov rdx, DATA_VA (the handle)
            + b"\xb8\x09\x00\x00\x00\x0f\x05"              # NtCreateThread
            + b"\xb9" + after.to_bytes(4, "little")        # mov ecx, after
            + b"\xe2\xfe"                                  # loop $
            + b"\x48\xc7\xc7\xff\xff\xff\xff"              # mov rdi, -1
            + b"\x31\xf6\x31\xc0\x0f\x05"                  # NtTerminateProcess(-1, 0)
            + b"\xeb\xfe")                                 # child: jmp $


def test_a_thread_made_ready_mid_quantum_is_dispatched_at_that_quantum_end() -> None:
    # The lone thread's quanta are renewed in C until its system call makes another thread
    # ready: the SYSCALL hook disarms the renewal, so the next quantum end preempts it
    # exactly where the renewal through a stop does.
    got = same_both_ways([raw_image("threadmaker", thread_maker(55_555, 100_000))],
                         quantum=10_000)
    assert got["renewals"] >= 4 and got["exits"] == [0]
    main, child = got["threads"][0][0], got["threads"][1][0]
    turns = [(tid, clock) for tid, clock in got["schedule"]]
    first_child = next(clock for tid, clock in turns if tid == child)
    # The thread is created after about 55,560 instructions: it gets the CPU at the next
    # quantum end, 60,000, and the two take turns from there.
    assert first_child == 60_000 and turns[0][0] == main and len(turns) > 10


def carrier(count: int) -> bytes:
    """Ring-3 code whose flags live across a block boundary: ``count`` times, `add rax, r8`
    (its carry) in one block and `adc rbx, 0` in the next; it ends with the carries
    counted (RBX) as its exit status. A quantum end between the two saves and loads CF."""
    return (b"\x49\xb8" + 0x9E37_79B9_7F4A_7C15.to_bytes(8, "little")   # mov r8, phi
            + b"\x31\xc0\x31\xdb"                                     # xor eax, eax; ebx
            + b"\xb9" + count.to_bytes(4, "little")                     # mov ecx, count
            + b"\x4c\x01\xc0"                                          # loop: add rax, r8
            + b"\xeb\x00"                                               # jmp next
            + b"\x48\x83\xd3\x00"                                      # next: adc rbx, 0
            + b"\xff\xc9"                                               # dec ecx (CF kept)
            + b"\x75\xf3"                                               # jnz loop
            + b"\x48\xc7\xc7\xff\xff\xff\xff"                          # mov rdi, -1
            + b"\x89\xde\x31\xc0\x0f\x05")                             # NtTerminateProcess


def carries(count: int) -> int:
    rax = carried = 0
    for _ in range(count):
        rax += 0x9E37_79B9_7F4A_7C15
        carried += rax >> 64
        rax &= (1 << 64) - 1
    return carried


SWITCH_WORKLOADS = {
    "two compute-bound processes": ([("loop", [ALIGNED])] * 2, 10_000),
    "three compute-bound processes": ([("loop", [ALIGNED])] * 3, 10_000),
    "two loops, quantum 997 (ends inside blocks and on their boundaries)":
        ([("loop", [ALIGNED]), ("loop", ["300000"])], 997),
    "two loops and a yielder": ([("loop", [ALIGNED]), ("yielder", ["200"]),
                                 ("loop", [ALIGNED])], 10_000),
    "two loops and a sleeper": ([("loop", [ALIGNED]), ("sleeper", []), ("loop", [ALIGNED])],
                                10_000),
    "threads of one process": ([("threads", [])], 1_000),
    "race": ([("race", [])], 997),
    "two spawners": ([("spawner", ["loop", ALIGNED])] * 2, 10_000),
    "a 32-bit process and two loops": ([("loop", [ALIGNED]), ("services32", []),
                                        ("loop", [ALIGNED])], 997),
}


@pytest.mark.parametrize("name", SWITCH_WORKLOADS)
def test_a_preempted_switch_in_c_is_the_switch_through_a_stop(name: str) -> None:
    workload, quantum = SWITCH_WORKLOADS[name]
    got = same_both_ways(workload, quantum=quantum, max_insns=None)
    assert got["stopped"] is None
    if "compute-bound" in name or "yielder" in name:
        assert got["ring_switches"] > 0                 # the C path was taken


def test_two_loops_take_turns_at_every_quantum_end_in_c() -> None:
    got = same_both_ways([("loop", [ALIGNED])] * 2, quantum=10_000, max_insns=None)
    # About 300 quantum ends; each thread's first turn ends through a stop (no saved
    # context yet), and so do the last ones (the process exit in the way): the rest in C.
    assert got["ring_switches"] >= got["switches"] - 10 > 250
    tids = [tid for tid, _ in got["schedule"]]
    assert tids[2:12] == tids[:2] * 5                  # round robin
    clocks = [clock for _, clock in got["schedule"]]
    assert all(b - a == 10_000 for a, b in itertools.pairwise(clocks[2:100]))


def test_flags_live_across_a_preempted_switch_in_c() -> None:
    # Quantum 997 ends both on block boundaries (switched inside the run) and between
    # `add` and the `jmp` after it (switched between the tail's run and the next, the
    # CPU's flags whole there): CF is kept either way.
    counts = (30_001, 45_017)
    got = same_both_ways([raw_image("carrierA", carrier(counts[0])),
                          raw_image("carrierB", carrier(counts[1]))], quantum=997,
                         max_insns=None)
    assert got["exits"] == [carries(n) for n in counts] and got["ring_switches"] > 50
    assert got["between_runs"] > 50


def test_a_switch_inside_a_block_is_made_between_the_tails_run_and_the_next() -> None:
    # One loop's quantum ends fall on its block boundaries, the other's inside its block:
    # each of those is finished by the tail's run, cut where the quantum ends, and the
    # switch made before the next run instead of through the dispatcher.
    got = same_both_ways([("loop", [ALIGNED]), ("loop", ["300000"])], quantum=10_000,
                         max_insns=None)
    assert got["between_runs"] > 100 and got["ring_switches"] >= got["switches"] - 10


@pytest.mark.parametrize("limit", [2_000_000, 2_000_001, 2_000_016, 2_010_000])
def test_max_insns_stops_exactly_across_preempted_switches(limit: int) -> None:
    got = same_both_ways([("loop", ["10000000"])] * 2, quantum=10_000, max_insns=limit)
    assert got["stopped"] == "instruction limit" and got["instructions"] == limit
    assert got["ring_switches"] > 50


def test_max_insns_exactly_at_a_preempted_switch() -> None:
    first = run([("loop", ["10000000"])] * 2, in_c=True, quantum=10_000, max_insns=3_000_000)
    limit = first["schedule"][150][1]                    # the 150th switch's moment
    got = same_both_ways([("loop", ["10000000"])] * 2, quantum=10_000, max_insns=limit)
    assert got["stopped"] == "instruction limit" and got["instructions"] == limit
    assert got["ring_switches"] > 100


def test_a_guest_reads_the_times_of_each_switch() -> None:
    images = [raw_image("timereaderA", time_reader(300_000)),
              raw_image("timereaderB", time_reader(300_000))]
    got = same_both_ways(images, quantum=10_000, watch_times=True, max_insns=None)
    assert got["ring_switches"] > 50
    for seen in got["times_seen"].values():
        # Each sees the time of every quantum end while it ran (its own turns' ends and,
        # across the other's turn, the switch back to it): all multiples of the quantum.
        assert seen and all(t % 10_000 == 0 for t in seen) and seen == sorted(seen)


STRIDE = 0x20_0000          # a page every 2 MiB: each in a page table of its own


def toucher(spin: int, pages: int = 16) -> bytes:
    """Ring-3 code that, for each of ``pages`` pages at DATA_VA + k * STRIDE (each in its
    own page table, so that no walk fills the next one ahead), spins ``spin`` iterations
    (`loop $`) and then adds k + 1 to the page's first word (its first touch: a TLB miss,
    the walker), then sums those words and ends with the sum as its exit status."""
    step = STRIDE.to_bytes(4, "little")
    return (b"\x48\xbf" + DATA_VA.to_bytes(8, "little")    # mov rdi, DATA_VA
            + b"\x31\xd2"                                   # xor edx, edx
            + b"\xb9" + spin.to_bytes(4, "little")          # top: mov ecx, spin
            + b"\xe2\xfe"                                   # loop $
            + b"\x8d\x42\x01"                               # lea eax, [rdx + 1]
            + b"\x01\x07"                                   # add [rdi], eax
            + b"\x48\x81\xc7" + step                        # add rdi, STRIDE
            + b"\xff\xc2"                                   # inc edx
            + b"\x81\xfa" + pages.to_bytes(4, "little")      # cmp edx, pages
            + b"\x75\xe3"                                   # jne top
            + b"\x48\xbf" + DATA_VA.to_bytes(8, "little")    # mov rdi, DATA_VA
            + b"\x31\xf6\x31\xd2"                           # xor esi, esi; xor edx, edx
            + b"\x03\x37"                                   # sum: add esi, [rdi]
            + b"\x48\x81\xc7" + step                        # add rdi, STRIDE
            + b"\xff\xc2"                                   # inc edx
            + b"\x81\xfa" + pages.to_bytes(4, "little")      # cmp edx, pages
            + b"\x75\xed"                                   # jne sum
            + b"\x48\xc7\xc7\xff\xff\xff\xff"               # mov rdi, -1
            + b"\x31\xc0\x0f\x05")                          # NtTerminateProcess(-1, sum)


def strided_image(name: str, code: bytes, pages: int = 16) -> Image:
    """``code`` at CODE_VA and ``pages`` data pages at DATA_VA + k * STRIDE."""
    page = bytearray(4096)
    page[:len(code)] = code
    data = {DATA_VA + k * STRIDE: bytearray(4096) for k in range(pages)}
    return Image(name, name, 0, CODE_VA,
                 [Segment(CODE_VA, 4096, 5), *(Segment(va, 4096, 6) for va in data)],
                 {CODE_VA: page, **data}, {CODE_VA: 5, **dict.fromkeys(data, 6)})


def test_each_process_touches_its_own_pages_after_a_switch_in_c() -> None:
    # After a switch made in C the next thread's first touches of new pages reach the
    # Python walker, which must walk that thread's page tables (the switches are taken
    # in before it runs), or one process would be handed the other's frames.
    # Spins of 2.5 and 3.5 quanta: a thread's turn after a switch made in C often ends
    # its spin and touches a page it never touched.
    got = same_both_ways([strided_image("toucherA", toucher(25_000)),
                          strided_image("toucherB", toucher(35_000))], quantum=10_000,
                         max_insns=None)
    assert got["exits"] == [sum(range(1, 17))] * 2 and got["ring_switches"] > 20


def test_more_switches_than_the_log_holds_go_on_through_a_stop() -> None:
    # native.c keeps 1,024 switches before Python takes them: a run that would make more
    # stops at the next quantum end, switches there as ever, and the next run goes on in C.
    got = same_both_ways([("loop", ["10000000"])] * 2, quantum=1_000, max_insns=3_000_000)
    assert got["stopped"] == "instruction limit" and got["ring_switches"] > 2_000


def test_a_python_hook_added_by_anyone_ends_the_quantum_ends_in_c() -> None:
    """Python code inside a run may change what armed a quantum end made in C (a thread made
    ready, a timer): so every Python hook on the engine disarms it first, whoever added it
    (here a block hook a debugger or a script could add, which does nothing else). Every
    quantum end then goes through a stop: none in C."""
    from unicorn import UC_HOOK_BLOCK

    m = Machine("64M", max_insns=1 << 40, quantum=10_000)
    try:
        proc = m.spawn(APPS / "loop", [ALIGNED])
        calls = []
        m.executive.cpu.uc.hook_add(UC_HOOK_BLOCK, lambda *_: calls.append(1))
        m.run()
        native = m.executive.cpu.native
        assert proc.exit_status == 0 and calls
        assert native.renewals == 0
    finally:
        m.close()
