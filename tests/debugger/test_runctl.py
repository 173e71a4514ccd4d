"""Run control as a user sees it in ``emu debug``: where a stop is, what it prints, and that
one position names one machine state however it is reached (issue 16)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import emurun
import pytest
from test_session import recipe, state

from emu.debugger.session import CatchKind, Session, StopReason

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
DRIVERS = APPS.parent / "drivers"
BADREAD_LINE = ('process 12 "badread" terminated: STATUS_ACCESS_VIOLATION (0xC0000005) '
                "reading 0xffff800000001000 at rip 0x401022: mov rax, qword ptr [rbx]")


def debug(script: str, *args: str) -> subprocess.CompletedProcess:
    """``emu debug ARGS`` with ``script`` on standard input, in a fork (tests/emurun.py)."""
    return emurun.emu("debug", *args, input=script, cwd=ROOT, timeout=180)


def after(out: str, command: str) -> str:
    """What the transcript printed for the first echoed ``command``."""
    tail = out.split(f") {command}\n", 1)[1]
    return tail.split("\n(emu", 1)[0]


# -- an unhandled exception stops in the faulting process (item 6) -------------------------

def test_unhandled_exception_stops_in_the_process_with_emu_runs_line():
    r = debug("continue\nregisters rip\ncontinue\n", str(APPS / "badread"))
    assert r.returncode == 0, r.stdout + r.stderr
    stop = after(r.stdout, "continue")
    assert stop.splitlines()[-2:] == [
        BADREAD_LINE,
        '=> 0x401022 <badread!main+0x22>: mov rax, qword ptr [rbx]   [pid 12 "badread", ring 3]']
    assert after(r.stdout, "registers rip") == "rip = 0x401022 (4198434)"
    assert r.stdout.rstrip().endswith("the machine has stopped: every process has ended")


def test_emu_run_prints_the_same_line():
    r = emurun.emu("run", str(APPS / "badread"), cwd=ROOT, timeout=120)
    assert r.returncode == 125 and BADREAD_LINE in r.stderr


# -- kill in a script, and the bound on --snapshots (item 27) ------------------------------

def test_kill_ends_the_machine_and_the_script_goes_on():
    r = debug("stepi\nkill\nstepi\ncontinue\nreverse-stepi\nregisters rip\nposition\n",
              str(APPS / "hello"))
    out = r.stdout
    assert "(emu ended) stepi\nerror: no machine is running (it was killed)\n" in out
    assert "(emu ended) continue\nerror: no machine is running (it was killed)\n" in out
    assert "(emu ended) reverse-stepi\nerror: no machine is running (it was killed)\n" in out
    assert "the machine has stopped: killed" in out
    # its state stays readable
    assert "(emu ended) position\n2 instructions and exceptions since boot" in out
    assert r.returncode == 1                          # commands of the script failed


def test_snapshots_have_an_upper_bound():
    r = debug("", "--snapshots", "5000", str(APPS / "hello"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "emu: error: --snapshots must be between 0 and 64 (each snapshot is a sleeping "
        "process)"]
    ok = debug("continue\n", "--snapshots", "64", str(APPS / "hello"))
    assert ok.returncode == 0


# -- one position, one state (item 5): a fault is a stop of its own ------------------------

def pte_line(out: str) -> str:
    """The PTE line of a `walk` printout (or the level that stopped it)."""
    walk = [line for line in out.splitlines()
            if line.strip().startswith(("PML4E", "PDPTE", "PDE", "PTE"))]
    return walk[-1]


LOOK = "position\nregisters cr2 rip\nwalk cr2\n"


def test_catch_page_fault_stops_before_the_handler_and_going_back_returns_there():
    script = ("catch page-fault\ncontinue\n" + LOOK + "echo-1\nstepi\nreverse-stepi\n" + LOOK
              + "echo-2\ncontinue\nreverse-continue\n" + LOOK + "echo-3\n")
    r = debug(script, str(APPS / "notepad"))
    out = r.stdout
    first = after(out, "continue").splitlines()
    assert first[-2] == ("Catchpoint 1 (page fault: write of 0x7f793950000 at "
                         "notepad!put+0x30, ring 3, error code 0x6 = P=0 (not present) "
                         "W/R=1 (write) U/S=1 (user mode))")
    at_catch = out.split(") echo-1")[0].rsplit(") continue\n", 1)[1]
    back = out.split(") echo-2")[0].split(") echo-1")[1]
    rc = out.split(") echo-3")[0].split(") echo-2")[1]

    def state(part: str) -> tuple[str, str, str]:
        return (after(part, "position"), after(part, "registers cr2 rip"),
                pte_line(after(part, "walk cr2")))
    fault = state(at_catch)
    assert "cr2 = 0x7f793950000" in fault[1]                     # as the CPU set it
    assert "not present (P=0)" in fault[2]                        # the handler has not run
    assert state(back) == fault                                   # stepi, reverse-stepi
    assert state(rc) == fault                                     # reverse-continue
    assert "Catchpoint 1 (page fault: write of 0x7f793950000" in rc


def test_stepi_onto_a_faulting_instruction_stops_at_the_fault_then_completes_it():
    script = ("catch page-fault\ncontinue\nreverse-stepi\n" + LOOK + "echo-1\nstepi\n" + LOOK
              + "echo-2\nstepi\n" + LOOK)
    r = debug(script, str(APPS / "notepad"))
    out = r.stdout
    before = out.split(") echo-1")[0].rsplit(") reverse-stepi\n", 1)[1]
    fault = out.split(") echo-2")[0].split(") echo-1")[1]
    done = out.split(") echo-2")[1]
    n = int(after(before, "position").split()[0])
    assert after(before, "registers cr2 rip").startswith("cr2 = 0x0 ")   # not yet tried
    assert after(fault, "position") == f"{n + 1} instructions and exceptions since boot"
    assert "cr2 = 0x7f793950000" in after(fault, "registers cr2 rip")
    assert "not present (P=0)" in pte_line(after(fault, "walk cr2"))
    assert after(done, "position") == f"{n + 2} instructions and exceptions since boot"
    assert "P RW US A D NX" in pte_line(after(done, "walk cr2"))          # now valid


def test_catch_page_fault_fires_on_a_ring_0_fault():
    r = debug("catch page-fault\ncontinue\nregisters cr2\n", "--stop-at-driver", "--driver",
              str(DRIVERS / "crash.sys"), str(APPS / "hello"))
    out = after(r.stdout, "continue")
    assert "Catchpoint 1 (page fault: write of 0xffff" in out and "ring 0" in out
    assert "crash.sys!DriverEntry" in out


def test_a_breakpoint_on_a_faulting_instruction_is_not_hit_again_by_its_retry():
    r = debug("catch page-fault\ncontinue\nreverse-stepi\ndelete\nbreak *0x4011c0\ncontinue\n"
              "position\nregisters cr2\n", str(APPS / "notepad"))
    out = r.stdout.split(") break *0x4011c0\n", 1)[1]
    assert "Breakpoint 2, notepad!put+0x30" in after(out, "continue")
    assert int(after(out, "position").split()[0]) > 2417   # the next call of put, not the retry


# -- reverse-continue stops at catchpoints, in the state the forward stop showed (item 9) --

def _catch_then_back(build, kind, flt=None, **kwargs):
    """Every forward stop of catchpoint ``kind`` with its full state, then the stop and state
    reverse-continue reaches from the end."""
    forward: list[tuple] = []
    back: list[tuple] = []
    phase = ["start"]

    def on_stop(stop) -> bool:
        s = session
        seen = (stop.reason, stop.description, stop.position, state(s),
                s.executive.cpu.reg("cr2"))
        if phase[0] == "start":
            s.add_catchpoint(kind, flt)
            phase[0] = "forward"
        elif phase[0] == "forward" and stop.ended:
            phase[0] = "back"
            s.reverse_cont()
            return True
        elif phase[0] == "forward":
            forward.append(seen)
        else:
            back.append(seen)
            return False                  # seen: let it run to its end
        s.cont()
        return True

    session = Session(build(), on_stop, factory=build, **kwargs)
    try:
        session.run()
    finally:
        session.close()
    return [x for x in forward if x[0] in (StopReason.CATCH, StopReason.EXCEPTION)], back[0]


@pytest.mark.parametrize("app, kind, flt, expect", [
    ("notepad", CatchKind.PAGE_FAULT, None, "page fault: write of 0x7f793952000"),
    ("badread", CatchKind.EXCEPTION, None, "exception #PF at badread!main"),
    ("hello", CatchKind.SYSCALL, None, "system call NtTerminateProcess("),
    ("hello", CatchKind.CR3, None, "CR3 "),
    ("badread", CatchKind.PROCESS_EXIT, None, 'process 12 "badread" exits'),
])
def test_reverse_continue_stops_at_the_last_catchpoint_hit(app, kind, flt, expect):
    forward, back = _catch_then_back(recipe((app, [])), kind, flt)
    assert forward, "the catchpoint never stopped going forward"
    last = forward[-1]
    assert back[0] is last[0] and expect in back[1] + forward[-2:][0][1]
    assert back[1:] == last[1:]          # description, position, registers and RAM, CR2


SLOW = (("slowread", ["\\Device\\SlowBuffered"]), ("victim", []))
TWO = (("hello", []), ("hello", []))


@pytest.mark.parametrize("apps, drivers, kind, expect", [
    ((("notepad", []),), (), CatchKind.PAGE_FAULT, "page fault: write of 0x7f793950000"),
    ((("seh", []),), (), CatchKind.EXCEPTION, "exception #"),
    ((("hello", []),), (), CatchKind.SYSCALL, "system call NtWriteConsole("),
    ((("hello", []),), (), CatchKind.RING, "ring 3->0: system call"),
    (TWO, (), CatchKind.CR3, "CR3 "),
    (SLOW, ("slowbuffered.sys",), CatchKind.INTERRUPT, "interrupt vector 0x31"),
    (SLOW, ("slowbuffered.sys",), CatchKind.DPC, "DPC slowbuffered.sys!"),
    (TWO, (), CatchKind.PROCESS_EXIT, 'process 12 "hello" exits'),
])
def test_stepi_then_reverse_stepi_returns_to_the_catchpoints_state(apps, drivers, kind, expect):
    seen: list[tuple] = []

    def on_stop(stop) -> bool:
        s = session
        seen.append((stop.reason, stop.description, stop.position, state(s),
                     s.executive.cpu.reg("cr2")))
        if len(seen) == 1:
            s.add_catchpoint(kind)
            s.cont()
        elif len(seen) == 2:
            s.step(1)
        elif len(seen) == 3:
            s.reverse_step(1)
        else:
            return False
        return True

    build = recipe(*apps, drivers=drivers)
    session = Session(build(), on_stop, factory=build)
    try:
        session.run()
    finally:
        session.close()
    caught, back = seen[1], seen[3]
    assert caught[0] is StopReason.CATCH and expect in caught[1]
    assert back[2:] == caught[2:]        # position, registers and RAM, CR2


# -- reverse-finish and reverse-nexti (item 9) ---------------------------------------------

CALL = '=> 0x401167 <hello!put+0xc7>: call 0x40208d   [pid 12 "hello", ring 3]'


def test_reverse_finish_goes_back_to_before_the_call():
    r = debug("break NtWriteConsole\ncontinue\nposition\nregisters rsp\nreverse-finish\n"
              "position\nregisters rsp\n", str(APPS / "hello"))
    out = r.stdout
    assert after(out, "position") == "518 instructions and exceptions since boot"
    inside = int(after(out, "registers rsp").split()[2], 16)
    tail = out.split(") reverse-finish\n", 1)[1]
    assert tail.splitlines()[0] == CALL
    assert after(tail, "position") == "517 instructions and exceptions since boot"
    assert int(after(tail, "registers rsp").split()[2], 16) == inside + 8   # before the push


def test_reverse_nexti_goes_back_over_a_call():
    r = debug("tbreak *0x40116c\ncontinue\nposition\nreverse-nexti\nposition\nreverse-next\n"
              "position\n", str(APPS / "hello"))
    out = r.stdout
    assert after(out, "position") == "522 instructions and exceptions since boot"
    tail = out.split(") reverse-nexti\n", 1)[1]
    assert tail.splitlines()[0] == CALL                   # not the callee's ret
    assert after(tail, "position") == "517 instructions and exceptions since boot"
    assert after(tail, "reverse-next").startswith("=> 0x401160 ")      # one more step back
    assert r.returncode == 0


def test_reverse_finish_and_nexti_are_the_same_through_snapshots():
    script = ("break NtWriteConsole\ncontinue\nreverse-finish\nposition\nreverse-finish\n"
              "position\ncatch page-fault\ncontinue\nreverse-nexti\nposition\n")
    plain = debug(script, "--snapshots", "0", str(APPS / "notepad"))
    snaps = debug(script, "--snapshot-interval", "100", "--snapshots", "3",
                  str(APPS / "notepad"))
    assert plain.stdout == snaps.stdout and plain.returncode == snaps.returncode == 0
    assert plain.stdout.count(": call ") >= 2
