"""``history write|read|access`` and ``goto`` (docs/debugger.md, "The past: history"):
every answer is checked against a brute-force oracle, a run with Unicorn memory hooks on ALL
of memory that records every access, filtered by its own page walk at each access."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE

from emu.debugger.query import Query, QueryIndex
from emu.debugger.session import Session
from emu.hw import mmu
from emu.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"
PAGE_VA = 0x7F793950000          # slowread's and victim's page (guest/apps/slowread.c)


def emu(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "emu", *map(str, args)], capture_output=True,
                          text=True, timeout=300, input=stdin, cwd=ROOT)


def slow_neither(apps) -> tuple[list, list]:
    return [DRIVERS / "slowneither.sys"], [(apps / "slowread", [r"\Device\SlowNeither"]),
                                          (apps / "victim", [])]


def ticket_scribble(apps) -> tuple[list, list]:
    return [DRIVERS / "ticket.sys", DRIVERS / "scribble.sys"], \
        [(apps / "devread", [r"\Device\Ticket"]), (apps / "devread", [r"\Device\Ticket"])]


def factory(drivers, commands):
    def build() -> Machine:
        m = Machine(64 << 20)
        for d in drivers:
            m.add_driver(d)
        for app, args in commands:
            m.spawn(app, args)
        return m
    return build


class Oracle(Session):
    """A whole run with memory hooks on every address: every read and write, with the
    position before its instruction, the CR3 and the physical address."""

    def __init__(self, machine: Machine) -> None:
        self.seen: list[tuple[int, str, int, int, int, int | None, int]] = []
        super().__init__(machine, self._stop)
        self.executive.cpu.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._every)

    def _stop(self, _stop) -> bool:
        if not self.ended:
            self.cont()
            return True
        return False

    def _every(self, uc, access, address, size, value, _data) -> None:
        cpu = self.executive.cpu
        rip = cpu.rip
        position = cpu.native.completed_before(rip) + self.position - cpu.instructions
        write = access == UC_MEM_WRITE
        new = value & ((1 << (8 * size)) - 1) if write else None
        self.seen.append((position, "write" if write else "read", address, size, cpu.cr3,
                          new, rip))

    def virtual(self, va: int, pid: int | None) -> None:
        """From now on, note the VA each access of ``va``'s page made in ``pid``'s space
        (its own walk of the page tables at each access)."""
        self.va, self.pid, self.at_va = va, pid, []
        uc = self.executive.cpu.uc
        uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._virtual)

    def _virtual(self, uc, access, address, size, value, _data) -> None:
        ex = self.executive
        cpu = ex.cpu
        if self.pid is not None:
            proc = next(p for p in ex.processes if p.pid == self.pid)
            if proc.space.cr3 != cpu.cr3:
                return
        page = self.va & ~0xFFF
        try:
            pa = mmu.walk(ex.mem, page, "read", cr3=cpu.cr3, cpl=0, cr0=cpu.cr0, cr4=cpu.cr4,
                          efer=cpu.efer).pa
        except (mmu.PageFault, mmu.GeneralProtection):
            return
        if pa <= address < pa + 0x1000:
            rip = cpu.rip
            position = cpu.native.completed_before(rip) + self.position - cpu.instructions
            self.at_va.append((position, page + (address - pa), size, rip))


def oracle_run(build, va: int | None = None, pid: int | None = None) -> Oracle:
    o = Oracle(build())
    if va is not None:
        o.virtual(va, pid)
    o.run()
    o.close()
    return o


@dataclass(frozen=True)
class Recorded:
    """What an oracle run saw: its end position, every access, and the VAs in ``va``'s page."""

    position: int
    seen: list
    at_va: list


@functools.cache
def recorded(scenario, apps: Path, va: int, pid: int | None) -> Recorded:
    """The oracle run of ``scenario`` watching ``va``'s page in ``pid``'s space, made once per
    test process: it costs seconds (a Python page walk at every access of the whole run) and
    is the same every time (the machine is deterministic; its ``seen`` does not depend on the
    page watched), so the cases of one scenario share it."""
    o = oracle_run(factory(*scenario(apps)), va, pid)
    return Recorded(o.position, o.seen, o.at_va)


CASES = [
    # the DPC's write into the process it interrupted (victim, pid 20), and the requester's
    (slow_neither, PAGE_VA, 64, 20, False),
    (slow_neither, PAGE_VA, 64, 12, False),
    # scribble.sys's store on ticket.sys's counter (a kernel address: every space)
    (ticket_scribble, "next_ticket", 4, None, False),
    (ticket_scribble, "next_ticket", 4, None, True),
    (slow_neither, PAGE_VA, 64, 20, True),
]


def _address(build, address) -> int:
    if address != "next_ticket":
        return address
    m = build()
    try:
        return next(d for d in m.executive.pending_drivers
                    if d.name == "ticket.sys").symbols["next_ticket"]
    finally:
        m.close()


# The first case of each scenario takes over 5 s on this 2-core machine (about 6 s of CPU):
# the oracle walks the page tables in Python at every memory access of the whole run, which
# is what makes it an oracle. The other cases share its run (recorded()).
@pytest.mark.parametrize("kind", ["write", "access"])
@pytest.mark.parametrize(("scenario", "address", "length", "pid", "phys"), CASES)
def test_the_answer_is_the_oracles(apps, scenario, address, length, pid, phys, kind):
    build = factory(*scenario(apps))
    va = _address(build, address)
    oracle = recorded(scenario, apps, va, pid)
    end = oracle.position
    if phys:                          # the frame the page maps to at the end, any space
        first = oracle
        pa = next(a for a in first.seen if a[0] == first.at_va[0][0])[2]
        lo = pa
        q = Query(kind, lo, length, None, True)
        want = [(p, k, a, s, n, r) for p, k, a, s, _c, n, r in oracle.seen
                if lo <= a < lo + length and (kind == "access" or k == kind)]
    else:
        q = Query(kind, va, length, pid, False)
        at_va = {(p, r): v for p, v, _s, r in oracle.at_va}
        want = [(p, k, at_va[(p, r)], s, n, r) for p, k, _a, s, _c, n, r in oracle.seen
                if (p, r) in at_va and va <= at_va[(p, r)] < va + length and
                (kind == "access" or k == kind)]
    found, truncated, cached = QueryIndex().answer(q, end, build)
    got = [(a.position, a.kind, a.pa if phys else a.va, a.size, a.new, a.rip) for a in found]
    assert not truncated and not cached
    assert got == want and want


def test_the_dpc_write_into_the_interrupted_process(apps):
    """pid 20 (victim) never asked for the read: slowneither.sys's DPC wrote its page."""
    build = factory(*slow_neither(apps))
    end = recorded(slow_neither, apps, PAGE_VA, 20).position
    found, _, _ = QueryIndex().answer(Query("write", PAGE_VA, 8, 20, False), end, build)
    dpc = [a for a in found if a.ring == 0]
    assert [(a.pid, a.irql, a.va, a.size) for a in dpc] == \
        [(20, 2, PAGE_VA, 4), (20, 2, PAGE_VA + 4, 4)]
    assert dpc[0].old == int.from_bytes(b"vict", "little")
    assert dpc[0].instruction == "mov dword ptr [rdi + r8], eax"


def debug(apps, script: str, scenario=slow_neither) -> str:
    drivers, commands = scenario(apps)
    argv = [a for d in drivers for a in ("--driver", d)]
    for n, (app, args) in enumerate(commands):
        argv += (["--"] if n else []) + [app, *args]
    r = emu("debug", *argv, stdin=script)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


def answer(out: str, command: str) -> list[str]:
    """The lines printed by the first ``command`` of a batch transcript."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith(") " + command))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("(emu")),
               len(lines))
    return lines[start + 1:end]


def test_the_shells_answer_then_the_index(apps):
    out = debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20\n"
                "history write 0x7F793950004 4 pid 20 --json\n")
    rows = answer(out, "history write 0x7F793950000 8 pid 20")
    assert rows[-1] == "10 writes to 0x7f793950000..0x7f793950007 in pid 20 from boot to " \
        "position 1204741 (re-executed from boot)"
    assert re.fullmatch(
        r"#9 +200302  pid  20 tid  24  ring 0  IRQL 2  CR3 0x61000  0xfffff80001001145 "
        r"<slowneither.sys!DpcForIsr\+0x55>  mov dword ptr \[rdi \+ r8\], eax  write 4 at "
        r"0x7f793950000 \(pa 0x[0-9a-f]+\): 0x74636976 -> 0x61746164", rows[8])
    records = [json.loads(line) for line in
               answer(out, "history write 0x7F793950004 4 pid 20 --json")]
    assert [(r["position"], r["va"], r["new"], r["symbol"]) for r in records][-1] == \
        (200311, 0x7F793950004, 0x6F726620, "slowneither.sys!DpcForIsr+0x55")


def test_a_repeated_query_comes_from_the_index(apps):
    out = debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20\n"
                "history read 0x7F793950010 8 pid 20\n")
    assert answer(out, "history read 0x7F793950010 8 pid 20")[-1].endswith("(from the index)")


@pytest.mark.parametrize(("row", "where", "byte_at"), [
    (8, "<victim!memcpy+0x15>",                     # "victim'" : the 8th byte not stored
     "0x7f793950000:\t0x00276d6974636976\t0x0000000000000000"),
    (9, "<slowneither.sys!DpcForIsr+0x55>",         # "victim's own dat": the DPC's not yet
     "0x7f793950000:\t0x73276d6974636976\t0x746164206e776f20"),
])
def test_goto_a_row_is_the_forward_runs_state(apps, row, where, byte_at):
    """goto #ROW of an answer, from the end (re-executing): RIP on the accessing
    instruction, before it runs, with the registers and memory a forward run from boot has
    there (goto POSITION from the first stop)."""
    show = "position\ninfo registers rip rax rcx rdi r8 rsp cr3\nx/2gx 0x7F793950000\n"
    back = debug(apps, f"continue\nhistory write 0x7F793950000 8 pid 20\ngoto #{row}\n" +
                 show)
    line = answer(back, "history write 0x7F793950000 8 pid 20")[row - 1]
    position = int(line.split()[1])
    assert where in line
    forward = debug(apps, f"goto {position}\n" + show)
    state = answer(back, "position") + \
        answer(back, "info registers rip rax rcx rdi r8 rsp cr3") + \
        answer(back, "x/2gx 0x7F793950000")
    assert state[0] == f"{position} instructions and exceptions since boot"
    assert state[-1] == byte_at
    assert state == answer(forward, "position") + \
        answer(forward, "info registers rip rax rcx rdi r8 rsp cr3") + \
        answer(forward, "x/2gx 0x7F793950000")
    assert answer(back, f"goto #{row}")[-1].startswith(
        f"=> {line.split(f' {where}')[0].split()[-1]} {where}: ")


def test_goto_a_position_forward_and_back(apps):
    out = debug(apps, "goto 5000\nposition\ngoto 100\nposition\n")
    assert answer(out, "position") == ["5000 instructions and exceptions since boot"]
    assert "100 instructions and exceptions since boot" in out.split("goto 100", 1)[1]


@pytest.mark.parametrize(("command", "message"), [
    ("history write", "error: history write needs an address"),
    ("history write 0x1000 0 pid 12", "error: length 0x0: a query covers 1 byte to 1 MiB"),
    ("history read 0x1000 8 pid 99", "error: pid 99: no such process in this machine's "
     "history (processes: 12, 20)"),
    ("history access 0x1000 8 pid", "error: pid needs a process id (see ps)"),
    ("history write 0x1000 8 bogus", "error: unexpected 'bogus'"),
    ("history write 0x800000000000", "error: 0x800000000000: not a canonical address"),
    ("goto", "error: goto where?"),
    ("goto #1", "error: goto #1: no history write/read/access answer to take a row from yet"),
    ("goto #x", "error: goto #x: no history write/read/access answer"),
])
def test_bad_input_is_one_line(apps, command, message):
    out = debug(apps, command + "\n")
    lines = answer(out, command)
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_goto_a_row_out_of_range(apps):
    out = debug(apps, "continue\nhistory write 0x7F793950000 1 pid 20\ngoto #5\n")
    assert answer(out, "goto #5") == ["error: goto #5: the last answer has rows 1 to 2"]


def test_emu_query_answers_as_the_shell_at_the_end(apps):
    drivers, commands = slow_neither(apps)
    argv = ["--driver", drivers[0], commands[0][0], *commands[0][1], "--", commands[1][0]]
    r = emu("query", "write", "0x7F793950000", "8", "--pid", "20", "--json", *argv)
    assert r.returncode == 0 and r.stderr == ""
    shell = debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20 --json\n")
    assert r.stdout.splitlines() == answer(shell, "history write 0x7F793950000 8 pid 20 --json")
    assert len(r.stdout.splitlines()) == 10
    text = emu("query", "write", "0x7F793950000", "8", "--pid", "20", *argv)
    assert text.stdout.splitlines()[-1] == "10 writes to 0x7f793950000..0x7f793950007 in " \
        "pid 20 from boot to position 1204741 (re-executed from boot)"


@pytest.mark.parametrize(("args", "message"), [
    (["query"], "emu: error: emu query needs write, read or access, then ADDR"),
    (["query", "write"], "emu: error: emu query write needs an address"),
    (["query", "write", "0x1000", "--pid", "99", "APP"], "emu: error: pid 99: no such process"),
    (["query", "write", "0x1000", "--bogus", "APP"], "emu: error: unknown option --bogus"),
    (["query", "write", "0x1000", "--pid", "4", "--phys", "APP"],
     "emu: error: --pid and --phys: one or the other"),
    (["query", "write", "0x1000"], "emu: error: missing APP"),
    (["query", "read", "0x4000000", "--phys", "APP"],
     "emu: error: physical 0x4000000..0x4000000 is beyond RAM (0x0..0x3ffffff)"),
])
def test_emu_query_bad_input_is_one_line(apps, args, message):
    args = [str(apps / "hello") if a == "APP" else a for a in args]
    r = emu(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr
