"""``stepi N`` and ``reverse-stepi N`` land exactly N positions on (docs/debugger.md,
"Going back": a position counts instructions, exceptions and kernel export calls), with the
machine a fresh run stepped there one at a time has: across blocks, faults, system calls,
export calls and a DPC (the seed's neither-I/O scenario, slowneither.sys)."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import emurun
from test_session import recipe

from emu.debugger.session import CatchKind, Session, StopReason

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
DRIVERS = APPS.parent / "drivers"
SLOW_NEITHER = recipe(("slowread", [r"\Device\SlowNeither"]), ("victim", []),
                      drivers=("slowneither.sys",))
REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
        "r12", "r13", "r14", "r15", "rip", "rflags", "cs", "ss", "cr2", "cr3")


def registers(s: Session) -> tuple:
    cpu = s.executive.cpu
    return tuple(cpu.reg(r) for r in REGS)


def ram(s: Session) -> str:
    # Hashed where it stands (a view of RAM): a 64 MiB copy at each position was 40% of
    # the test's time.
    return hashlib.sha256(s.machine.mem.view(0, s.machine.mem.size)).hexdigest()


class Driver:
    """A front end that runs ``plan`` (one action per stop) and notes each stop's position,
    registers and RAM."""

    def __init__(self, plan, **kwargs) -> None:
        self.plan = list(plan)
        self.seen: list[tuple[int, tuple, str]] = []
        self.session = Session(SLOW_NEITHER(), self.on_stop, factory=SLOW_NEITHER,
                               stop_at_driver=True, **kwargs)

    def on_stop(self, stop) -> bool:
        s = self.session
        if stop.reason is not StopReason.START and not s.ended:
            self.seen.append((s.position, registers(s), ram(s)))
        if s.ended or not self.plan:
            return False
        self.plan.pop(0)(s)
        return True

    def run(self) -> None:
        try:
            self.session.run()
        finally:
            self.session.close()


class OneByOne:
    """A fresh run stepped one position at a time: the registers at every position of
    ``windows`` ([first, last] ranges), RAM at the positions of ``ram_at``. A window that
    starts at ``None`` starts at the first DPC (``catch dpc``)."""

    def __init__(self, windows: list[tuple[int, int]], ram_at: set[int]) -> None:
        self.windows, self.ram_at = windows, ram_at
        self.regs: dict[int, tuple] = {}
        self.rams: dict[int, str] = {}
        self.session = Session(SLOW_NEITHER(), self.on_stop, stop_at_driver=True)

    def on_stop(self, stop) -> bool:
        s = self.session
        if s.ended:
            return False
        p = s.position
        if any(a <= p <= b for a, b in self.windows):
            self.regs[p] = registers(s)
            if p in self.ram_at:
                self.rams[p] = ram(s)
        ahead = [a for a, b in self.windows if b > p]
        if not ahead:
            return False
        if min(ahead) > p + 1:
            s.step(min(ahead) - p)       # to the next window (exact: checked by the windows)
        else:
            s.step(1)
        return True

    def run(self) -> None:
        try:
            self.session.run()
        finally:
            self.session.close()


def dpc_position() -> int:
    """The position of the first DPC's first instruction (catch dpc)."""
    found = []

    def on_stop(stop) -> bool:
        if stop.reason is StopReason.CATCH:
            found.append(s.position)
            return False
        if s.ended:
            return False
        s.cont()
        return True
    s = Session(SLOW_NEITHER(), on_stop)
    s.add_catchpoint(CatchKind.DPC)
    try:
        s.run()
    finally:
        s.close()
    return found[0]


# About 3 s on this 2-core machine: the reference steps one instruction at a time through
# both windows and keeps every register and the whole RAM at each position it is asked for.
def test_random_stepi_and_reverse_stepi_land_exactly_with_the_one_by_one_state():
    """Random N: stepi N from P lands at P + N, reverse-stepi N at P - N, in the state a
    fresh run stepped one at a time has there: DriverEntry (export calls), the app's start
    (page faults, system calls), and the neither-I/O DPC (an interrupt, a DPC writing the
    victim's page) reached by one long step and gone back to from past it."""
    dpc = dpc_position()
    rng = random.Random(14)
    # The early window crosses slowneither.sys's Read starting the device (`out dx, eax` at
    # position 252): a stop right after that OUT must not move the device's interrupt (the
    # device's start time is the instruction's, however instructions are counted).
    early, late = (0, 300), (dpc - 40, dpc + 260)
    plan, expect, p = [], [], 0

    def go(to: int) -> None:
        nonlocal p
        n = to - p
        plan.append((lambda s, n=n: s.step(n)) if n > 0 else (lambda s, n=n: s.reverse_step(-n)))
        expect.append(to)
        p = to
    for lo, hi in (early, late):
        for _ in range(12):
            go(rng.randint(lo, hi))
    go(rng.randint(*early))                       # back from past the DPC, to boot's start
    drv = Driver(plan)
    drv.run()
    assert [pos for pos, _, _ in drv.seen] == expect
    ref = OneByOne([early, late], {pos for pos, _, _ in drv.seen})
    ref.run()
    for pos, regs, mem in drv.seen:
        want = dict(zip(REGS, ref.regs[pos], strict=True))
        assert dict(zip(REGS, regs, strict=True)) == want, f"position {pos}"
        assert mem == ref.rams[pos], f"RAM at position {pos}"


def debug(script: str, *argv: str) -> str:
    r = emurun.emu("debug", *argv, input=script, cwd=ROOT, timeout=300)     # in a fork
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def slow_neither(script: str) -> str:
    return debug(script, "--driver", str(DRIVERS / "slowneither.sys"), str(APPS / "slowread"),
                 r"\Device\SlowNeither", "--", str(APPS / "victim"))


def positions(out: str) -> list[int]:
    return [int(n) for n in re.findall(r"^(\d+) instructions? (?:and|or) exceptions?",
                                       out, re.M)]


def test_stepi_262_from_the_entry_point_lands_at_319():
    out = slow_neither("position\nstepi 262\nposition\n")
    assert positions(out) == [57, 319]


def test_stepi_into_the_dpc_then_reverse_stepi_land_exactly():
    """stepi 200243 and stepi 7 from 57 land at 200300 and 200307 (in the DPC, after its
    interrupt), reverse-stepi 3 from 200310 at 200307, with the registers of single steps
    from the DPC's catchpoint stop."""
    dpc = dpc_position()
    assert dpc < 200300 < 200310 < dpc + 260
    out = slow_neither("stepi 200243\nposition\nstepi 7\nposition\nregisters\n"
                       "stepi 3\nposition\nreverse-stepi 3\nposition\nregisters\n")
    assert positions(out) == [200300, 200307, 200310, 200307]
    regs = out.split(") registers\n")
    single = slow_neither("catch dpc\ncontinue\n" + "stepi\n" * (200307 - dpc) +
                          "position\nregisters\n")
    assert positions(single) == [200307]
    want = single.split(") registers\n")[1].split("\n(emu")[0].rstrip("\n")
    assert regs[1].split("\n(emu")[0].rstrip("\n") == want
    assert regs[2].split("\n(emu")[0].rstrip("\n") == want


def test_reverse_stepi_from_the_kebugcheckex_call_goes_to_the_call():
    """At a bug check made through KeBugCheckEx (its export call a step of its own):
    reverse-stepi from the export's stop (17) goes to the `call` (16), in the state stepping
    there from boot gives."""
    argv = ("--driver", str(DRIVERS / "bugcheck.sys"), str(APPS / "hello"))
    out = debug("position\nreverse-stepi\nposition\nreverse-stepi\nposition\nregisters\n",
                *argv)
    assert positions(out) == [18, 17, 16]
    assert "=> 0xfffff8000100104c <bugcheck.sys!DriverEntry+0x4c>: call" in out
    forward = debug("stepi 16\nposition\nregisters\n", "--stop-at-driver", *argv)
    assert positions(forward) == [16]
    assert out.split(") registers\n")[1] == forward.split(") registers\n")[1]


def test_goto_lands_in_one_move():
    """goto runs or goes back by the gap (a stepi or reverse-stepi that lands exactly), into
    the DPC and back to before it."""
    out = slow_neither("goto 200307\nposition\ngoto 1000\nposition\ngoto 1001\nposition\n")
    assert positions(out) == [200307, 1000, 1001]
