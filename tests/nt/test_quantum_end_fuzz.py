"""Random loops, their quantum ends made inside the run or through a stop: the same.

A ring-3 loop whose body is a random sequence of register-only instructions (inert:
emu/hw/blocks.py ``inert``) and of loads of KUSER_SHARED_DATA's InterruptTime that it adds
up, under a random quantum: its quantum ends fall on block boundaries (renewed in the run),
after inert instructions inside a block (renewed at the block's entry: native.c
``renew_early``) and after a load (made between the tail's run and the next:
``native_quantum_end``), one process alone or two sharing the CPU (the preempted switch).
Whatever the mix, what a user sees is what the reference gives (``quantum_end_in_c =
False``: every quantum end through a stop): the exit statuses (the sum of the times each
loop read), the counts, the schedule, the registers and KUSER_SHARED_DATA; and with an
event log attached (each quantum end a dispatch, told after the run when made in C), its
every record.
"""

from __future__ import annotations

import pytest
from fuzzscale import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_logged_dispatches import logged_run, same_in_the_debugger, steps
from test_quantum_end_in_c import INTERRUPT_TIME, USER_SHARED_DATA, raw_image

# Inert, register-only instructions (none touches RCX, the loop's count, R8, the time's
# address, or R11, the sum), and the load of the time added to the sum.
INERT = [
    b"\x48\x01\xd8",             # add rax, rbx
    b"\x48\x31\xc3",             # xor rbx, rax
    b"\x48\x6b\xc0\x07",         # imul rax, rax, 7
    b"\x48\xc1\xe3\x03",         # shl rbx, 3
    b"\x48\x8d\x04\x18",         # lea rax, [rax + rbx]
    b"\x48\xff\xc6",             # inc rsi
    b"\x49\xf7\xd1",             # not r9
    b"\x48\x0f\xaf\xd8",         # imul rbx, rax
]
LOAD_TIME = (b"\x41\x8b\x10"     # mov edx, [r8]
             b"\x49\x01\xd3")    # add r11, rdx


def looper(body: list[bytes], iterations: int) -> bytes:
    """Ring-3 code: ``iterations`` times ``body``, then exit with the sum of the times it
    read (its low 32 bits) as the status."""
    code = b"".join(body) + b"\xff\xc9"                          # ...; dec ecx
    back = -(len(code) + 2)
    return (b"\x49\xb8" + (USER_SHARED_DATA + INTERRUPT_TIME).to_bytes(8, "little")
            + b"\x4d\x31\xdb"                                     # xor r11, r11
            + b"\xb9" + iterations.to_bytes(4, "little")          # mov ecx, iterations
            + code + b"\x75" + (back & 0xFF).to_bytes(1, "little")  # jnz body
            + b"\x48\xc7\xc7\xff\xff\xff\xff"                     # mov rdi, -1
            + b"\x44\x89\xde\x31\xc0\x0f\x05")                    # mov esi, r11d; NtTerminate


def loopers(bodies: list[list[bytes]], iterations: int) -> list:
    """The loops as the apps of tests/nt/test_logged_dispatches.py's runs."""
    return [(raw_image(f"looper{n}", looper(body, iterations)), [])
            for n, body in enumerate(bodies)]


body = st.lists(st.sampled_from([*INERT, LOAD_TIME]), min_size=1, max_size=9)


@pytest.mark.fuzz
@settings(max_examples=examples(12), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(body, min_size=1, max_size=2), iterations=st.integers(3_000, 9_000),
       quantum=st.integers(997, 12_000), logged=st.booleans())
def test_random_loops_see_the_same_quantum_ends_either_way(
        bodies: list[list[bytes]], iterations: int, quantum: int, logged: bool) -> None:
    apps = loopers(bodies, iterations)
    got, reference = (logged_run(apps, in_c=in_c, quantum=quantum, logged=logged,
                                 max_insns=1 << 40) for in_c in (True, False))
    for counter in ("ring_switches", "renewals", "early", "between_runs",
                    "switches_at_syscall"):
        got.pop(counter)
        assert reference.pop(counter) == 0
    assert got == reference


@pytest.mark.fuzz
@settings(max_examples=examples(8), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(body, min_size=1, max_size=2), iterations=st.integers(2_000, 6_000),
       quantum=st.integers(997, 12_000),
       counts=st.lists(st.integers(1, 30_000), min_size=1, max_size=8))
def test_random_steps_over_random_loops_stop_where_they_stopped(
        bodies: list[list[bytes]], iterations: int, quantum: int, counts: list[int]) -> None:
    # Under a debugger each quantum end is a dispatch it books; its steps cut the runs.
    same_in_the_debugger([*steps(*counts), lambda s: s.cont()],
                         apps=loopers(bodies, iterations), quantum=quantum)
