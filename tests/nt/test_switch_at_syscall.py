"""A yield or a wait that hands the CPU to the next thread inside the SYSCALL hook, without
stopping the run (emu/nt/ke_dispatcher.py ``_switch_at_syscall``, emu/hw/native.c
``native_switch_at_syscall``): what a user of the machine sees is what the switch through a
stopped run gives (``Executive.switch_at_syscall = False``, the reference): the schedule,
the output, every count, the registers, KUSER_SHARED_DATA, and each thread's flags across
its yields.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from schedrun import outcome, watched_machine

from emu.nt.loader import Image, Segment

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
CODE_VA = 0x0040_0000


def flags_keeper(count: int, direction: bytes) -> bytes:
    """Ring-3 code that yields ``count`` times and checks its flags across each yield:
    `cmp eax, r12d` (flags that change every time) and ``direction`` (std or cld) before
    the SYSCALL; after it, RFLAGS must be R11's (what SYSCALL saved) in CF PF AF ZF SF DF
    OF, and after `cld; or eax, 1` exactly those of the `or` (a stale flag would show).
    It ends with exit status 0, or with the flags that differed."""
    return (b"\x41\xbc" + count.to_bytes(4, "little")     # mov r12d, count
            + b"\xb8\x06\x00\x00\x00"                      # loop: mov eax, 6 (NtYield...)
            + b"\x44\x39\xe0"                              # cmp eax, r12d
            + direction                                    # std / cld
            + b"\x0f\x05"                                  # syscall
            + b"\x9c\x5b"                                  # pushfq; pop rbx
            + b"\x4c\x31\xdb"                              # xor rbx, r11
            + b"\x81\xe3\xd5\x0c\x00\x00"                  # and ebx, 0xcd5
            + b"\x75\x15"                                  # jnz bad
            + b"\xfc\x83\xc8\x01"                          # cld; or eax, 1
            + b"\x9c\x5b"                                  # pushfq; pop rbx
            + b"\x81\xe3\xd5\x0c\x00\x00"                  # and ebx, 0xcd5
            + b"\x75\x07"                                  # jnz bad
            + b"\x41\xff\xcc"                              # dec r12d
            + b"\x75\xd5"                                  # jnz loop
            + b"\x31\xdb"                                  # xor ebx, ebx
            + b"\x48\xc7\xc7\xff\xff\xff\xff"              # bad: mov rdi, -1
            + b"\x89\xde\x31\xc0\x0f\x05")                 # mov esi, ebx; NtTerminateProcess


def raw_image(name: str, code: bytes) -> Image:
    page = bytearray(4096)
    page[:len(code)] = code
    return Image(name, name, 0, CODE_VA, [Segment(CODE_VA, 4096, 7)], {CODE_VA: page},
                 {CODE_VA: 7})


def run(workload: list, *, at_syscall: bool, quantum: int = 100_000,
        max_insns: int = 20_000_000) -> dict:
    """Run the processes of ``workload`` ((app, args) or a raw Image) with or without the
    switch inside the SYSCALL hook; what a user sees, and how many switches were made so."""
    m, output, schedule = watched_machine("64M", max_insns=max_insns, quantum=quantum)
    ex = m.executive
    ex.switch_at_syscall = at_syscall
    try:
        procs = [ex.create_process(item, []) if isinstance(item, Image)
                 else m.spawn(APPS / item[0], item[1]) for item in workload]
        result = m.run()
        return {
            **outcome(m, result, procs, output, schedule),
            "at_syscall": ex.switches_at_syscall,
        }
    finally:
        m.close()


def same_both_ways(workload: list, **kwargs) -> dict:
    got = run(workload, at_syscall=True, **kwargs)
    reference = run(workload, at_syscall=False, **kwargs)
    assert reference.pop("at_syscall") == 0
    made = got.pop("at_syscall")
    assert got == reference
    got["at_syscall"] = made
    return got


WORKLOADS = {
    "two yielders": [("yielder", ["300"])] * 2,
    "three yielders": [("yielder", ["200"])] * 3,
    "a yielder and a compute-bound loop": [("yielder", ["300"]), ("loop", ["200000"])],
    "threads (waits on thread handles)": [("threads", [])],
    "race": [("race", [])],
    "waiter (an event set by another thread)": [("waiter", [])],
    "sleeper (timers)": [("sleeper", [])],
    "spawner (a child process)": [("spawner", [])],
    "handles": [("handles", [])],
    "threadcrash": [("threadcrash", [])],
    "deadlock": [("deadlock", [])],
}


@pytest.mark.parametrize("name", WORKLOADS)
def test_the_switch_at_a_syscall_is_the_switch_through_a_stop(name: str) -> None:
    got = same_both_ways(WORKLOADS[name])
    if name.endswith("yielders"):
        # Each yielder's first switch goes through a stop (it has no saved context yet);
        # nearly every other is made inside the hook.
        assert got["at_syscall"] > got["switches"] // 2


def test_a_small_quantum_mixes_budget_ends_and_yields_the_same_way() -> None:
    got = same_both_ways([("yielder", ["300"]), ("loop", ["20000"]), ("yielder", ["300"])],
                         quantum=997)
    assert got["at_syscall"] > 0 and got["exits"] == [0, 0, 0]


def test_max_insns_ends_at_the_same_instruction_with_switches_at_syscalls() -> None:
    got = same_both_ways([("yielder", ["3000"])] * 2, max_insns=12_345)
    assert got["stopped"] == "instruction limit" and got["instructions"] == 12_345
    assert got["at_syscall"] > 0


def test_each_thread_keeps_its_own_flags_across_the_switch() -> None:
    # Inside a run QEMU keeps CF PF AF ZF SF OF and DF apart from EFLAGS; a context saved
    # in the hook and one saved after a run must both come back with the flags they left
    # with, and none of them left behind for the next thread (exit status: the flags that
    # differed).
    workload = [raw_image("flags-std", flags_keeper(200, b"\xfd")),
                raw_image("flags-cld", flags_keeper(150, b"\xfc"))]
    got = same_both_ways(workload, quantum=50_000)
    assert got["exits"] == [0, 0]
    assert got["at_syscall"] > 290


def test_a_32_bit_process_yields_through_int_2e_the_same_way() -> None:
    # int 0x2e is an interrupt hook, not SYSCALL's: it hands the CPU over through a stop.
    # A small quantum switches services32 out before its yield, so it has a context then.
    got = same_both_ways([("services32", []), ("yielder", ["300"])], quantum=997)
    assert got["exits"] == [0, 0] and got["at_syscall"] > 0
