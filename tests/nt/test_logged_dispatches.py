"""Dispatches made inside the run while someone watches each one and told to them
(emu/nt/events.py, ``logged``): at quantum ends (emu/nt/ke_dispatcher.py ``_arm_ring``: a
lone thread's as a ring of one thread, the preempted switch between several), told after
that run, and at a yield or a wait (``_switch_at_syscall``), told in the SYSCALL hook. An
event log and a debugger see exactly what they see when every dispatch stops the CPU
(``Executive.quantum_end_in_c = False`` and ``switch_at_syscall = False``, the reference):
the same records (positions, clocks, RIP, ring, IRQL), the same stops, positions,
registers and KUSER_SHARED_DATA.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from schedrun import REGISTERS, outcome, watched_machine
from test_quantum_end_in_c import map_shared_data_for_ring3, raw_image

from emu import eventlog
from emu.debugger.session import Session
from emu.debugger.stops import CatchKind
from emu.machine import Machine
from emu.nt import layout
from emu.nt.loader import Image

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
# `loop`'s quantum ends fall on its block boundaries with this start-up (see
# test_quantum_end_in_c.py): there the dispatches can be made inside the run.
ALIGNED = " 300000"


def stack_counter(iterations: int) -> bytes:
    """Ring-3 code whose loop begins with a load (no quantum end inside its block is made
    early): ``iterations`` times `[rsp] += 1` through RAX; it exits with status 0."""
    return (b"\xb9" + iterations.to_bytes(4, "little")   # mov ecx, iterations
            + b"\x48\x8b\x04\x24"                         # loop: mov rax, [rsp]
            + b"\x48\x83\xc0\x01"                         # add rax, 1
            + b"\x48\x89\x04\x24"                         # mov [rsp], rax
            + b"\xff\xc9"                                 # dec ecx
            + b"\x75\xf0"                                 # jnz loop
            + b"\x48\xc7\xc7\xff\xff\xff\xff"             # mov rdi, -1
            + b"\x89\xce\x31\xc0\x0f\x05")                 # NtTerminateProcess(-1, 0)


App = tuple[str | Image, list[str]]


def spawned(m: Machine, app: str | Image, args: list[str]):
    """``app`` from the guest build by name, ``stack_counter`` (its iterations in
    ``args``), or a raw ring-3 image (test_quantum_end_in_c ``raw_image``), which may read
    the time: KUSER_SHARED_DATA is mapped for it."""
    if app == "stack_counter":
        app, args = raw_image("stackcounter", stack_counter(int(args[0]))), []
    if isinstance(app, Image):
        proc = m.executive.create_process(app, args)
        map_shared_data_for_ring3(m, proc.space)
        return proc
    return m.spawn(APPS / app, args)


def logged_run(workload: list[App], *, in_c: bool, quantum: int, logged: bool = True,
               max_insns: int | None = None) -> dict:
    """``workload`` run with an event log attached (as ``emu run --events`` attaches it;
    ``logged``: not without), its dispatches made in C or not: the records, what a user
    sees, the switches and renewals C made."""
    m, output, schedule = watched_machine("64M", quantum=quantum, max_insns=max_insns)
    ex = m.executive
    ex.quantum_end_in_c = ex.switch_at_syscall = in_c
    records: list[dict] = []
    if logged:
        eventlog.EventLog.attach(m, records.append)
    try:
        procs = [spawned(m, app, args) for app, args in workload]
        result = m.run()
        return {**outcome(m, result, procs, output, schedule), "records": records,
                "ring_switches": ex.cpu.native.ring_switches,
                "renewals": ex.cpu.native.renewals,
                "early": ex.cpu.native.early_renewals,
                "between_runs": ex.cpu.native.between_runs,
                "switches_at_syscall": ex.switches_at_syscall}
    finally:
        m.close()


LOGGED = {
    "a compute-bound loop (a ring of one)": [("loop", [ALIGNED])],
    "a loop whose quantum ends fall inside its block (renewed early, logged at the end)":
        [("loop", ["300000"])],
    "a loop whose block begins with a load (ends inside it made between two runs)":
        [("stack_counter", ["400000"])],
    "two loops, one's ends inside its block (switches between two runs)":
        [("loop", [ALIGNED]), ("loop", ["300000"])],
    "two loops (two address spaces: CR3 loads)": [("loop", [ALIGNED]), ("loop", [ALIGNED])],
    "a yielder and a loop": [("yielder", ["300"]), ("loop", [ALIGNED])],
    "threads": [("threads", [])],
    "sleeper (timers: every dispatch through a stop)": [("sleeper", [])],
    "two yielders (switches in the SYSCALL hook)": [("yielder", ["300"]), ("yielder", ["300"])],
    "waiter (a wait, an event set)": [("waiter", [])],
    "race": [("race", [])],
}


@pytest.mark.parametrize("name", LOGGED)
def test_an_event_log_reads_the_same_of_dispatches_made_in_c(name: str) -> None:
    got = logged_run(LOGGED[name], in_c=True, quantum=10_000)
    reference = logged_run(LOGGED[name], in_c=False, quantum=10_000)
    assert reference.pop("ring_switches") == reference.pop("switches_at_syscall") == 0
    assert reference.pop("early") == reference.pop("between_runs") == 0
    assert reference.pop("renewals") == got.pop("renewals") == 0    # a ring of one's
    made = got.pop("ring_switches")
    at_syscall = got.pop("switches_at_syscall")
    early, between = got.pop("early"), got.pop("between_runs")
    assert got == reference
    if "renewed early" in name:
        assert made > 100 and early == made
    if "between two runs" in name:
        assert made > 100 and between > 100
    if "yielder" in name:
        assert at_syscall > 100
    dispatches = [r for r in got["records"] if r["event"] == "thread-dispatch"]
    if name.startswith(("a compute-bound loop", "two loops (two", "a loop whose")):
        assert made > 100 and len(dispatches) > made     # most of them made in C
        assert all(r["ring"] == 3 and r["irql"] == 0 for r in dispatches)
    if name.startswith("two loops"):
        loads = [r for r in got["records"] if r["event"] == "cr3-load"]
        assert len(loads) > 100


Command = Callable[[Session], None]


def debugged(commands: list[Command], *, in_c: bool, apps: list[App],
             quantum: int = 10_000) -> dict:
    """A debugger session over ``apps``: at each stop what the user sees (the reason, the
    position, the registers, KUSER_SHARED_DATA's times), then the next command; the
    machine's end, and the most switches C made in one of its machines."""
    def build() -> Machine:          # going back re-executes the same machine from boot
        m = Machine("64M", quantum=quantum, console=lambda *_: None)
        m.executive.quantum_end_in_c = m.executive.switch_at_syscall = in_c
        for app, args in apps:
            spawned(m, app, args)
        return m

    stops: list[tuple] = []
    made: list[int] = []             # the switches C made so far (in this machine)
    at_syscall: list[int] = []       # ... and the SYSCALL hook
    script = iter(commands)

    def on_stop(stop) -> bool:
        ex = session.executive
        shared = ex.shared_data_frame * layout.PAGE_SIZE
        # The events seen since boot are part of a position in the history (what going
        # back counts to): a dispatch told after the run is counted all the same.
        stops.append((stop.reason.value, stop.description, session.position,
                      session._events, [ex.cpu.reg(r) for r in REGISTERS],
                      ex.mem.read(shared, 0x330)))
        made.append(ex.cpu.native.ring_switches)
        at_syscall.append(ex.switches_at_syscall)
        command = next(script, None)
        if command is None or stop.ended:
            return False
        command(session)
        return True

    session = Session(build(), on_stop, factory=build)
    try:
        result = session.run()
        ex = session.executive
        return {"stops": stops, "end": (result.stopped, result.stats.instructions),
                "ring_switches": max([ex.cpu.native.ring_switches, *made]),
                "switches_at_syscall": max([ex.switches_at_syscall, *at_syscall]),
                "scheduler_switches": ex.scheduler.switches}
    finally:
        session.close()


def same_in_the_debugger(commands: list[Command], **kwargs) -> dict:
    got = debugged(commands, in_c=True, **kwargs)
    reference = debugged(commands, in_c=False, **kwargs)
    assert reference.pop("ring_switches") == reference.pop("switches_at_syscall") == 0
    made = got.pop("ring_switches"), got.pop("switches_at_syscall")
    assert got == reference
    got["ring_switches"], got["switches_at_syscall"] = made
    return got


def steps(*counts: int) -> list[Command]:
    return [lambda s, n=n: s.step(n) for n in counts]


def test_steps_across_quantum_ends_made_in_c_stop_where_they_stopped() -> None:
    # Steps that end inside a quantum, one before its end, at it, one after it, and long
    # ones across many: the debugger's cut (Session.stop_count) stops the run exactly.
    first = debugged([], in_c=False, apps=[("loop", [ALIGNED])])
    start = first["stops"][0][2]
    to_end = 10_000 - start % 10_000
    got = same_in_the_debugger(
        steps(25_000, to_end - 1, 1, 1, 9_998, 1, 123_457, 3, 250_000) +
        [lambda s: s.cont()], apps=[("loop", [ALIGNED])])
    assert got["ring_switches"] > 30
    assert [stop[0] for stop in got["stops"][1:-1]] == ["step"] * 9


INSIDE_BLOCKS = {
    # Every quantum end falls inside the loop's block, after an inert prefix: each is made
    # at the block's entry and logged at its true end.
    "made early": [("loop", ["300000"])],
    # The block begins with a load: each end inside it is finished by the tail's run, then
    # made before the next run and logged there.
    "made between two runs": [("stack_counter", ["400000"])],
}


@pytest.mark.parametrize("name", INSIDE_BLOCKS)
def test_steps_across_quantum_ends_inside_blocks_stop_where_they_stopped(name: str) -> None:
    # Steps ending just before, at and after such ends (the debugger's cut stops the run
    # exactly, inside the block), and across many.
    apps = INSIDE_BLOCKS[name]
    start = debugged([], in_c=False, apps=apps)["stops"][0][2]
    to_end = 10_000 - start % 10_000
    got = same_in_the_debugger(
        steps(25_000, to_end - 1, 1, 1, 9_998, 1, 2, 123_457, 3, 250_000) +
        [lambda s: s.cont()], apps=apps)
    assert got["ring_switches"] > 30


def test_a_continue_to_a_breakpoint_through_dispatches_made_in_c() -> None:
    # `break printf`, `continue` over two loops sharing the CPU: the preempted switches and
    # their CR3 loads are made in C, and the breakpoint stops at the same position.
    def to_printf(s: Session) -> None:
        s.add_breakpoint(s.target.resolve_symbol("printf"))
        s.cont()

    got = same_in_the_debugger([to_printf, lambda s: s.cont(), lambda s: s.cont()],
                               apps=[("loop", [ALIGNED]), ("loop", [ALIGNED])])
    assert got["ring_switches"] > 100
    assert [stop[0] for stop in got["stops"]] == ["start", "breakpoint", "breakpoint",
                                                  "exited"]


def test_going_back_over_dispatches_made_in_c() -> None:
    # Back from the breakpoint re-executes from boot (every dispatch through a stop, as a
    # replay makes them) to positions reached with dispatches made in C: the same state.
    def to_printf(s: Session) -> None:
        s.add_breakpoint(s.target.resolve_symbol("printf"))
        s.cont()

    got = same_in_the_debugger([to_printf, lambda s: s.reverse_step(1),
                                lambda s: s.reverse_step(123_456), lambda s: s.step(200_000)],
                               apps=[("loop", [ALIGNED]), ("loop", [ALIGNED])])
    assert got["ring_switches"] > 100
    back, further = got["stops"][2:4]
    assert back[2] == got["stops"][1][2] - 1 and further[2] == back[2] - 123_456


@pytest.mark.parametrize("kind", [CatchKind.CR3, CatchKind.RING])
def test_a_catchpoint_on_dispatches_makes_each_one_a_stop(kind: CatchKind) -> None:
    # A catchpoint that stops at a dispatch (a CR3 load; a return to ring 3) needs the CPU
    # stopped at each: none is made in C while it is set, and its stops are the reference's.
    def catch(s: Session) -> None:
        s.add_catchpoint(kind, "0->3" if kind is CatchKind.RING else None)
        s.step(50_000)

    got = same_in_the_debugger([lambda s: s.step(300_000), catch,
                                *[lambda s: s.cont()] * 6],
                               apps=[("loop", [ALIGNED]), ("loop", [ALIGNED])])
    # C made switches in the first 300,000 instructions, none after the catchpoint.
    assert 0 < got["ring_switches"] <= 300_000 // 10_000
    assert [stop[0] for stop in got["stops"][3:8]] == ["catch"] * 5


def test_steps_across_switches_in_the_syscall_hook_stop_where_they_stopped() -> None:
    # Two yielders under the debugger: every yield hands the CPU over inside the SYSCALL
    # hook. A step ending right at a yield's completion (the next thread's turn cut to
    # nothing: the pause is before its first instruction, as through a stop), steps of a
    # few instructions from there, and steps across many yields.
    yielders = [("yielder", ["200"]), ("yielder", ["200"])]
    log = logged_run(yielders, in_c=False, quantum=10_000)["records"]
    yields = [r["position"] for r in log
              if r["event"] == "syscall" and r["service"] == "NtYieldExecution"]
    start = debugged([], in_c=False, apps=yielders)["stops"][0][2]
    got = same_in_the_debugger(
        steps(yields[3] - start, 1, 7, 1_000, 333, 5_000) + [lambda s: s.cont()],
        apps=yielders)
    assert got["switches_at_syscall"] > 100
    assert got["stops"][1][2] == yields[3]
