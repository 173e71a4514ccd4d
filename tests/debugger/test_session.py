"""Run control: steps, breakpoints, watchpoints, catchpoints, Ctrl-C and going back, on real
guests, through emu.debugger.session with a scripted front end."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from emu import Machine
from emu.debugger.session import CatchKind, Session, SessionError, Stop, StopReason

APPS = Path(__file__).resolve().parents[2] / "guest" / "build" / "apps"
DRIVERS = APPS.parent / "drivers"


def recipe(*apps: tuple[str, list[str]], drivers: tuple[str, ...] = (), mem: str = "64M",
           **kwargs):
    """A machine factory: the same machine every call."""
    def build() -> Machine:
        m = Machine(mem, **kwargs)
        for d in drivers:
            m.add_driver(DRIVERS / d)
        for name, args in apps:
            m.spawn(APPS / name, args)
        return m
    return build


class Script:
    """A front end that runs one action per stop and records every stop."""

    def __init__(self, build, actions, **kwargs) -> None:
        self.actions = list(actions)
        self.stops: list[tuple[Stop, int, int, int | None]] = []   # stop, rip, cpl, pid
        self.snapshots: dict[str, tuple] = {}
        self.session = Session(build(), self.on_stop, factory=build, **kwargs)

    def on_stop(self, stop: Stop) -> bool:
        s = self.session
        cpu = s.executive.cpu
        proc = s.executive.current
        self.stops.append((stop, cpu.rip, cpu.cpl, proc.pid if proc else None))
        while self.actions:
            action = self.actions.pop(0)
            try:
                if action(s) is not False:    # an action returning False does not resume
                    return True
            except SessionError:
                if not stop.ended:            # more actions than the machine had stops
                    raise
                return False
        if stop.ended:
            return False
        s.cont()                          # out of actions: run to the end
        return True

    def run(self):
        try:
            return self.session.run()
        finally:
            self.session.close()

    @property
    def reasons(self) -> list[StopReason]:
        return [s.reason for s, *_ in self.stops]

    @property
    def positions(self) -> list[int]:
        return [s.position for s, *_ in self.stops]


def state(s: Session) -> tuple:
    """Every register and every byte of RAM: what must be identical after going back."""
    cpu = s.executive.cpu
    regs = tuple(cpu.reg(r) for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                                      "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                                      "rip", "rflags", "cs", "ss"))
    regs += (cpu.cr3, cpu.reg_named("xmm0"), cpu.reg_named("xmm1"))
    return regs, bytes(s.machine.mem.read(0, s.machine.mem.size))


def symbol(name: str, app: str = "hello") -> int:
    from emu.nt.loader import load_file
    return load_file(APPS / app).symbols[name]


def test_first_stop_is_the_entry_point_at_ring_3():
    sc = Script(recipe(("hello", [])), [])
    sc.run()
    stop, rip, cpl, pid = sc.stops[0]
    assert stop.reason is StopReason.START
    assert rip == symbol("_start") and cpl == 3 and pid == 12
    assert "entry point hello!_start" in stop.description
    assert sc.reasons[-1] is StopReason.EXITED and sc.stops[-1][0].exit_code == 0


def test_stop_at_driver_entry_on_request():
    sc = Script(recipe(("hello", []), drivers=("hello.sys",)), [], stop_at_driver=True)
    sc.run()
    stop, rip, cpl, pid = sc.stops[0]
    assert stop.reason is StopReason.START and cpl == 0 and pid is None
    assert "DriverEntry" in stop.description


def test_stepi_counts_instructions_exactly():
    sc = Script(recipe(("hello", [])), [lambda s: s.step(1), lambda s: s.step(3),
                                         lambda s: s.step(1)])
    sc.run()
    assert sc.positions[:4] == [1, 2, 5, 6]
    # _start: xor ebp,ebp; mov rdi,[rsp]; lea; lea; and rsp,-16; call main
    assert [rip for _, rip, *_ in sc.stops[:4]] == [0x401059, 0x40105B, 0x401069, 0x40106D]


def test_a_stepped_run_ends_like_an_unstepped_one():
    """Pauses do not change the schedule: the same thread is dispatched at the same
    instruction count, and two preempted counters interleave the same way."""
    from emu.nt.events import Event
    log: list[tuple] = []

    def build() -> Machine:
        m = recipe(("counter", ["a", "6", "3000"]), ("counter", ["b", "6", "3000"]),
                   quantum=5000, console=lambda p, data: log.append((p.pid, data)))()
        m.executive.events.subscribe(
            lambda e, d: e is Event.THREAD_DISPATCH and log.append((d["clock"], d["thread"].tid)))
        return m
    plain = build()
    plain.run()
    plain.close()
    expected, log[:] = list(log), []
    assert len([x for x in expected if isinstance(x[1], int)]) > 6   # preempted many times
    sc = Script(build, [lambda s: s.step(997)] * 60)
    sc.run()
    assert len(sc.stops) > 30 and StopReason.EXITED in sc.reasons
    assert log == expected


def test_breakpoint_stops_before_the_instruction_each_time():
    target = symbol("NtWriteConsole")
    sc = Script(recipe(("hello", ["x", "y"])),
                [lambda s: s.add_breakpoint(target) and False, lambda s: s.cont(),
                 lambda s: s.cont(), lambda s: s.cont()])
    sc.run()
    hits = [(stop, rip) for stop, rip, *_ in sc.stops if stop.reason is StopReason.BREAKPOINT]
    assert len(hits) == 3 and all(rip == target for _, rip in hits)
    assert hits[0][0].description == "Breakpoint 1, hello!NtWriteConsole"
    assert sc.session.breakpoints[1].hits == 3


def test_conditional_temporary_and_scoped_breakpoints():
    target = symbol("NtWriteConsole", "counter")
    build = recipe(("counter", ["a", "2", "10"]), ("counter", ["b", "2", "10"]))
    sc = Script(build, [lambda s: s.add_breakpoint(target, pid=8) and False,
                        lambda s: s.add_breakpoint(target, temporary=True) and False,
                        lambda s: s.cont(), lambda s: s.cont(), lambda s: s.cont()])
    sc.run()
    bp_stops = [(stop.number, pid) for stop, _, _, pid in sc.stops
                if stop.reason is StopReason.BREAKPOINT]
    assert bp_stops[0] == (1, 8) or bp_stops[0][0] == 2
    assert all(pid == 8 for n, pid in bp_stops if n == 1)
    assert sum(n == 2 for n, _ in bp_stops) == 1 and 2 not in sc.session.breakpoints


def test_condition_on_a_register():
    main = symbol("main")
    sc = Script(recipe(("hello", ["a"])),
                [lambda s: s.add_breakpoint(main, condition="rdi == 2") and False,
                 lambda s: s.cont()])
    sc.run()
    assert StopReason.BREAKPOINT in sc.reasons
    sc = Script(recipe(("hello", ["a"])),
                [lambda s: s.add_breakpoint(main, condition="rdi == 5") and False,
                 lambda s: s.cont()])
    sc.run()
    assert StopReason.BREAKPOINT not in sc.reasons


def test_physical_breakpoint_stops_wherever_the_frame_is_mapped():
    main = symbol("main")

    def set_physical(s: Session):
        s.add_breakpoint(s.target.translate(main), physical=True)
        return False
    sc = Script(recipe(("hello", [])), [set_physical, lambda s: s.cont()])
    sc.run()
    assert [rip for stop, rip, *_ in sc.stops if stop.reason is StopReason.BREAKPOINT] == [main]


def test_write_watchpoint_reports_the_value_after_the_instruction():
    def watch_return_slot(s: Session):
        s.add_watchpoint(s.executive.cpu.reg("rsp") - 8, 8, "write")
        return False
    sc = Script(recipe(("hello", [])), [watch_return_slot, lambda s: s.cont()])
    sc.run()
    stop, rip, *_ = sc.stops[1]
    assert stop.reason is StopReason.WATCHPOINT and stop.watch_kind == "write"
    # `call main` at 0x40106d pushed its return address 0x401072; the stop is after it.
    assert rip == symbol("main") and "value 0x401072" in stop.description
    assert "by the instruction at hello!_start+0x14" in stop.description


def test_read_watchpoint_and_kind_filter():
    def watch_argc(s: Session):
        s.add_watchpoint(s.executive.cpu.reg("rsp"), 8, "read")   # argc, read by _start
        return False
    sc = Script(recipe(("hello", [])), [watch_argc, lambda s: s.cont()])
    sc.run()
    stop, rip, *_ = sc.stops[1]
    assert stop.reason is StopReason.WATCHPOINT and stop.watch_kind == "read"
    assert rip == 0x40105F      # after mov rdi, [rsp]


@pytest.mark.parametrize("kind, flt, expect", [
    (CatchKind.SYSCALL, None, "system call NtWriteConsole("),
    (CatchKind.PROCESS_EXIT, None, 'process 12 "badread" exits with status 0xc0000005'),
    (CatchKind.EXCEPTION, "14", "exception #PF at badread!main"),
    (CatchKind.RING, "3->0", "ring 3->0: system call"),
    (CatchKind.CR3, None, "CR3 "),
])
def test_catchpoints(kind, flt, expect):
    sc = Script(recipe(("badread", [])),
                [lambda s: s.add_catchpoint(kind, flt) and False, lambda s: s.cont()])
    sc.run()
    catches = [stop for stop, *_ in sc.stops if stop.reason is StopReason.CATCH]
    assert catches and expect in catches[0].description


def test_catch_exception_stops_at_the_faulting_instruction():
    sc = Script(recipe(("badread", [])),
                [lambda s: s.add_catchpoint(CatchKind.EXCEPTION) and False,
                 lambda s: s.cont()])
    sc.run()
    stop, rip, cpl, _ = next(x for x in sc.stops if x[0].reason is StopReason.CATCH)
    assert cpl == 3 and stop.exception.address == 0xFFFF_8000_0000_1000 and \
        rip == stop.exception.rip


def test_catch_bugcheck_in_a_driver():
    sc = Script(recipe(("hello", []), drivers=("crash.sys",)),
                [lambda s: s.add_catchpoint(CatchKind.BUGCHECK) and False, lambda s: s.cont()],
                stop_at_driver=True)
    sc.run()
    assert StopReason.CATCH in sc.reasons and sc.reasons[-1] is StopReason.BUGCHECK
    catch = next(x for x in sc.stops if x[0].reason is StopReason.CATCH)
    assert "bug check 0x50" in catch[0].description and catch[2] == 0


def test_interrupt_from_another_thread_pauses_a_running_guest():
    build = recipe(("loop", []))
    sc = Script(build, [])

    def go(s: Session):
        threading.Timer(0.3, s.interrupt).start()
        s.cont()
    sc.actions = [go, lambda s: s.kill()]
    sc.run()
    assert StopReason.INTERRUPT in sc.reasons
    assert sc.session.result.stopped == "killed"


def test_ctrl_c_right_after_continue_is_not_lost():
    """A Ctrl-C typed after the shell has read `continue` but before the guest runs again
    stops the run it resumes, at once; one typed at the prompt before it stops nothing."""
    build = recipe(("hello", []))
    sc = Script(build, [])

    def ctrl_c_then_continue(s: Session):
        s.interrupt()                   # at the prompt: forgotten when `continue` is read
        s.cont()
        s.interrupt()                   # after `continue` was read: stops what it resumes
    sc.actions = [ctrl_c_then_continue, lambda s: s.kill()]
    sc.run()
    assert sc.reasons[:2] == [StopReason.START, StopReason.INTERRUPT]
    assert sc.positions[1] == sc.positions[0]


def test_ctrl_c_at_the_prompt_stops_nothing_later():
    build = recipe(("hello", []))
    sc = Script(build, [])

    def ctrl_c_then_continue(s: Session):
        s.interrupt()
        s.cont()
    sc.actions = [ctrl_c_then_continue]
    sc.run()
    assert sc.reasons == [StopReason.START, StopReason.EXITED]


def test_reverse_step_returns_to_byte_identical_state():
    sc = Script(recipe(("hello", ["a", "b"])), [])
    sc.actions = [lambda s: s.step(700), lambda s: sc.snapshots.setdefault("at", state(s)) and
                  s.step(500), lambda s: s.reverse_step(500),
                  lambda s: sc.snapshots.setdefault("back", state(s)) and s.cont()]
    sc.run()
    assert sc.positions[1:4] == [701, 1201, 701]
    assert sc.snapshots["at"] == sc.snapshots["back"]


def test_reverse_continue_goes_to_the_last_hit():
    target = symbol("NtWriteConsole")
    sc = Script(recipe(("hello", ["x", "y"])),
                [lambda s: s.add_breakpoint(target) and False, lambda s: s.cont(),
                 lambda s: s.cont(), lambda s: s.cont(), lambda s: s.reverse_cont(),
                 lambda s: s.reverse_cont(), lambda s: s.reverse_cont(),
                 lambda s: s.reverse_cont()])
    sc.run()
    bps = [p for (stop, *_), p in zip(sc.stops, sc.positions, strict=True)
           if stop.reason is StopReason.BREAKPOINT]
    forward, backward = bps[:3], bps[3:5]
    assert backward == [forward[1], forward[0]]
    assert StopReason.HISTORY_START in sc.reasons


def test_reverse_from_the_end_of_the_machine():
    sc = Script(recipe(("hello", [])), [lambda s: s.cont(), lambda s: s.reverse_step(3)])
    sc.run()
    end = sc.stops[1][0].position
    assert sc.reasons[1] is StopReason.EXITED and sc.positions[2] == end - 3


def test_next_steps_over_a_call_and_finish_returns():
    call_main = 0x40106D
    sc = Script(recipe(("hello", [])), [lambda s: s.until(call_main), lambda s: s.next()])
    sc.run()
    assert sc.stops[1][1] == call_main and sc.stops[2][1] == call_main + 5
    sc = Script(recipe(("hello", [])), [lambda s: s.until(symbol("main")),
                                         lambda s: s.finish()])
    sc.run()
    assert sc.stops[2][1] == call_main + 5


def test_resuming_an_ended_machine_is_refused():
    sc = Script(recipe(("hello", [])), [lambda s: s.cont()])
    errors = []

    def after_end(s: Session):
        try:
            s.step(1)
        except SessionError as err:
            errors.append(str(err))
        return False
    sc.actions.append(after_end)
    sc.run()
    assert errors and "the machine has ended" in errors[0]


@pytest.mark.parametrize("kind, expect", [
    (CatchKind.INTERRUPT, "interrupt vector 0x"),
    (CatchKind.DPC, "DPC slowbuffered.sys!"),
])
def test_interrupt_and_dpc_catchpoints_stop_at_the_routine(kind, expect):
    """The stop is before the ISR's (the DPC's) first instruction, at ring 0, in the address
    space of whichever process was interrupted."""
    build = recipe(("slowread", ["\\Device\\SlowBuffered"]), ("victim", []),
                   drivers=("slowbuffered.sys",))
    sc = Script(build, [lambda s: s.add_catchpoint(kind) and False, lambda s: s.cont()])
    sc.run()
    stop, rip, cpl, pid = next(x for x in sc.stops if x[0].reason is StopReason.CATCH)
    assert expect in stop.description and cpl == 0 and pid == 20     # victim (its thread: 24)
    routine = stop.description.split(" at " if kind is CatchKind.INTERRUPT else "DPC ")[-1]
    assert sc.session.target.symbolize(rip) == routine.split(" in ")[0].rstrip(")")


def test_catch_driver_load_and_process_create():
    build = recipe(("spawner", ["hello"]), drivers=("hello.sys", "echo.sys"))
    sc = Script(build, [lambda s: s.add_catchpoint(CatchKind.DRIVER_LOAD) and False,
                        lambda s: s.add_catchpoint(CatchKind.PROCESS_CREATE) and False,
                        lambda s: s.cont(), lambda s: s.cont()], stop_at_driver=True)
    sc.run()
    (load, rip, cpl, _), (create, *_) = [x for x in sc.stops if x[0].reason is StopReason.CATCH]
    assert "driver echo.sys loaded at" in load.description and cpl == 0
    assert sc.session.target.symbolize(rip) == "echo.sys!DriverEntry"
    assert 'process 20 "hello" created' in create.description   # (16: spawner's thread)
