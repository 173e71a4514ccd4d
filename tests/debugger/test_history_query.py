"""``history write|read|access`` and ``goto`` (docs/debugger.md, "The past: history"):
every answer is checked against a brute-force oracle, a run with Unicorn memory hooks on ALL
of memory that records every access, filtered by its own page walk at each access."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from batch import DRIVERS, answer, emu, machine_argv
from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE

from emu.debugger.query import Query, QueryIndex
from emu.debugger.session import Session
from emu.hw import mmu
from emu.machine import Machine

_TABLE = 0x000F_FFFF_FFFF_F000   # bits 51:12 of CR3 or an entry: the next table (SDM 4.5)
PAGE_VA = 0x7F793950000          # slowread's and victim's page (guest/apps/slowread.c)


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
    position before its instruction, the CR3 and the physical address. With ``accesses``
    false it records only the executive's stores (and the end position): the hooks on every
    access are most of an oracle run's cost (a Python call, and a page walk for ``virtual``,
    at each one), paid for nothing by the tests that read only the stores."""

    def __init__(self, machine: Machine, accesses: bool = True) -> None:
        self.seen: list[tuple[int, str, int, int, int, int | None, int]] = []
        self.watches: list[Watch] = []
        self.accesses = accesses
        self._walks: dict[tuple, tuple[int | None]] = {}
        super().__init__(machine, self._stop)
        if accesses:
            self.executive.cpu.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._every)
        # The executive's own stores: every byte Python writes into RAM, whatever the
        # frame, at the session's position then (RAM's class methods, wrapped for all).
        mem = machine.mem
        self._stores: list[list] = []     # [position, pa, data, None] while nothing is watched

        ram = type(mem)

        def write(pa, data):
            self._store(pa, bytes(data))
            ram.write(mem, pa, data)

        def write_u64(pa, value):
            self._store(pa, (value & (1 << 64) - 1).to_bytes(8, "little"))
            ram.write_u64(mem, pa, value)
        mem.write, mem.write_u64 = write, write_u64

    # The first page watched (virtual), as a run that watches one page has it.
    va = property(lambda self: self.watches[0].va if self.watches else None)
    pid = property(lambda self: self.watches[0].pid if self.watches else None)
    at_va = property(lambda self: self.watches[0].at_va if self.watches else [])
    stores = property(lambda self: self.watches[0].stores if self.watches else self._stores)

    def _store(self, pa: int, data: bytes) -> None:
        position = self.position
        if not self.watches:
            self._stores.append([position, pa, data, None])
        for w in self.watches:
            store = [position, pa, data, None]
            w.stores.append(store)
            self._place(w, store)
            if store[3] is None:     # a page being made: placed when the CPU runs again
                w.unplaced.append(store)

    def _frame_of_va(self, w: Watch) -> int | None:
        """The page's frame in the pid's own tables now (a walk of them)."""
        ex = self.executive
        cr3 = ex.cpu.cr3
        if w.pid is not None:
            cr3 = next(p for p in ex.processes if p.pid == w.pid).space.cr3
        return self._walk(w.va & ~0xFFF, cr3)

    def _walk(self, page: int, cr3: int) -> int | None:
        """mmu.walk's physical address of ``page`` under ``cr3`` (a read at ring 0), or None
        where it faults. The walk depends on nothing but the entries on its way and CR0, CR4
        and EFER (SDM Vol. 3A 4.5): its answer is kept by their values, read here at each
        call (a run has about 400,000 accesses, through a few hundred different tables)."""
        cpu, read = self.executive.cpu, self.executive.mem.read_u64
        key, table = [cr3, cpu.cr0, cpu.cr4, cpu.efer], cr3 & _TABLE
        try:
            for shift in (39, 30, 21, 12):
                entry = read(table + (page >> shift & 0x1FF) * 8)
                key.append(entry)
                if not entry & 1 or (shift in (30, 21) and entry & 0x80):    # P=0, or PS=1
                    break
                table = entry & _TABLE
        except Exception:                 # noqa: BLE001 - a table outside RAM: walk it all
            key = None
        done = self._walks.get(tuple(key)) if key is not None else None
        if done is not None:
            return done[0]
        try:
            pa = mmu.walk(self.executive.mem, page, "read", cr3=cr3, cpl=0, cr0=cpu.cr0,
                          cr4=cpu.cr4, efer=cpu.efer).pa
        except (mmu.PageFault, mmu.GeneralProtection):
            pa = None
        if key is not None:
            self._walks[tuple(key)] = (pa,)
        return pa

    def _place(self, w: Watch, store: list) -> None:
        frame = self._frame_of_va(w)
        _, pa, data, _ = store
        if frame is not None and frame < pa + len(data) and pa < frame + 0x1000:
            store[3] = (w.va & ~0xFFF) + pa - frame

    def before_run(self) -> None:
        for w in self.watches:
            for store in w.unplaced:
                self._place(w, store)
            w.unplaced = []
        super().before_run()

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
        for w in self.watches:            # one hook for all: the same access, once
            self._virtual(w, address, size, position, rip)

    def virtual(self, va: int, pid: int | None) -> Watch:
        """From now on, note the VA each access of ``va``'s page made in ``pid``'s space
        (its own walk of the page tables at each access), and place the executive's stores
        in that page (a walk at each store); without ``accesses``, only the stores. Several
        pages may be watched in one run, each on its own (a Watch each)."""
        w = Watch(va, pid, [list(store) for store in self._stores])
        self.watches.append(w)
        return w

    def _virtual(self, w: Watch, address: int, size: int, position: int, rip: int) -> None:
        ex = self.executive
        cpu = ex.cpu
        if w.pid is not None:
            proc = next(p for p in ex.processes if p.pid == w.pid)
            if proc.space.cr3 != cpu.cr3:
                return
        page = w.va & ~0xFFF
        pa = self._walk(page, cpu.cr3)
        if pa is not None and pa <= address < pa + 0x1000:
            w.at_va.append((position, page + (address - pa), size, rip))


@dataclass
class Watch:
    """One page an Oracle watches: the VA of each access in it, and the executive's stores
    placed in it ([position, pa, data, va or None], the stores made before it was watched
    included, unplaced)."""

    va: int
    pid: int | None
    stores: list
    at_va: list = field(default_factory=list)
    unplaced: list = field(default_factory=list)


def oracle_run(build, va: int | None = None, pid: int | None = None,
               accesses: bool = True) -> Oracle:
    """A whole oracle run of ``build()`` (see Oracle), closed; ``accesses`` as Oracle's."""
    o = Oracle(build(), accesses)
    if va is not None:
        o.virtual(va, pid)
    o.run()
    o.close()
    return o


@dataclass(frozen=True)
class Recorded:
    """What an oracle run saw: its end position, every access, the VAs in ``va``'s page, and
    the executive's own stores."""

    position: int
    seen: list
    at_va: list
    stores: list


def recorded(scenario, apps: Path, va: int, pid: int | None) -> Recorded:
    """What the oracle run of ``scenario`` saw of ``va``'s page in ``pid``'s space."""
    return _recorded(scenario, apps)[(va, pid)]


@functools.cache
def _recorded(scenario, apps: Path) -> dict[tuple[int, int | None], Recorded]:
    """The oracle run of ``scenario`` watching every page its CASES watch, made once per
    test process: it costs seconds (a Python page walk at every access of the whole run) and
    is the same every time (the machine is deterministic; its ``seen`` does not depend on the
    pages watched, and each page is watched on its own), so the cases of one scenario share
    it. By (va, pid)."""
    build = factory(*scenario(apps))
    o = Oracle(build())
    for va, pid in sorted({(_address(build, address), pid)
                           for s, address, _, pid, _ in CASES if s is scenario}, key=repr):
        o.virtual(va, pid)
    o.run()
    o.close()
    return {(w.va, w.pid): Recorded(o.position, o.seen, w.at_va, w.stores)
            for w in o.watches}


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


# The first case of each scenario takes about 3 s on this 2-core machine (6 s before its
# walks were kept by their entries, Oracle._walk): the oracle hooks every memory access of
# the whole run and reads the page tables in Python at each, which is what makes it an
# oracle. The other cases share its run (recorded()).
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
    want += executive_stores(oracle, lo if phys else va, length, phys)
    found, truncated, cached = QueryIndex().answer(q, end, build)
    got = [(a.position, a.kind, a.pa if phys else a.va, a.size, a.new,
            None if a.executive else a.rip) for a in found]
    assert not truncated and not cached
    assert [g[0] for g in got] == sorted(g[0] for g in got)    # in order of position
    assert sorted(got, key=repr) == sorted(want, key=repr) and want


def executive_stores(oracle: Oracle, address: int, length: int, phys: bool) -> list:
    """The oracle's executive stores into [address, address + length), cut to it:
    (position, "write", address, size, new value, None)."""
    out = []
    for position, pa, data, va in oracle.stores:
        at = pa if phys else va
        if at is None:
            continue
        if not phys:                 # only the part of the store in the page's frame
            lo_page = address & ~0xFFF
            first = max(at, lo_page)
            data = data[first - at:lo_page + 0x1000 - at]
            at = first
        lo, hi = max(at, address), min(at + len(data), address + length)
        if lo < hi:
            out.append((position, "write", lo, hi - lo,
                        int.from_bytes(data[lo - at:hi - at], "little"), None))
    return out


def slow_buffered(apps) -> tuple[list, list]:
    return [DRIVERS / "slowbuffered.sys"], [(apps / "slowread", [r"\Device\SlowBuffered"]),
                                           (apps / "victim", [])]


@pytest.mark.parametrize("phys", [False, True])
def test_a_buffered_reads_copy_is_the_executives_write(apps, phys):
    """slowbuffered.sys's DPC fills the IRP's system buffer; the I/O manager copies it into
    slowread's page (pid 12) back in its context: a row of its own, ring 0, "by the
    executive", at the position the oracle saw the store, with the bytes before and after."""
    build = factory(*slow_buffered(apps))
    oracle = oracle_run(build, PAGE_VA, 12, accesses=False)  # only its stores are compared
    stores = executive_stores(oracle, PAGE_VA, 28, False)
    copy = [s for s in stores if s[3] == 28 and s[4]]      # the page zeroed is the other
    assert len(copy) == 1
    position, _, _, _, new, _ = copy[0]
    assert new.to_bytes(28, "little") == b"data from the slow device\0\0\0"
    if phys:
        pa = next(pa for p, pa, _d, va in oracle.stores if p == position and va == PAGE_VA)
        q = Query("write", pa, 28, None, True)
    else:
        q = Query("write", PAGE_VA, 28, 12, False)
    found, _, _ = QueryIndex().answer(q, oracle.position, build)
    mine = [a for a in found if a.executive]
    # The frame was zeroed for slowread's page first (a demand-zero fault), before its PTE
    # was made valid: a page being made for the range is the range's, virtual or physical.
    zeroed = mine.pop(0)
    assert zeroed.position < position and zeroed.new == 0 and \
        zeroed.instruction == "by the executive: memory manager: a new page zeroed"
    assert [(a.position, a.size, a.new, a.ring, a.pid) for a in mine] == \
        [(position, 28, new, 0, 12)]
    assert mine[0].instruction.startswith(
        "by the executive: I/O manager: buffered read completion copy (IRP 0xffff")
    assert mine[0].old.to_bytes(28, "little") == b"requester's own page\0" + bytes(7)
    assert (mine[0].va, mine[0].json("")["executive"]) == (None if phys else PAGE_VA, True)


def test_the_dpc_write_into_the_interrupted_process(apps):
    """pid 20 (victim) never asked for the read: slowneither.sys's DPC wrote its page."""
    build = factory(*slow_neither(apps))
    end = recorded(slow_neither, apps, PAGE_VA, 20).position
    found, _, _ = QueryIndex().answer(Query("write", PAGE_VA, 8, 20, False), end, build)
    dpc = [a for a in found if a.ring == 0 and not a.executive]
    assert [(a.pid, a.irql, a.va, a.size) for a in dpc] == \
        [(20, 2, PAGE_VA, 4), (20, 2, PAGE_VA + 4, 4)]
    assert dpc[0].old == int.from_bytes(b"vict", "little")
    assert dpc[0].instruction == "mov dword ptr [rdi + r8], eax"


def debug(apps, script: str, scenario=slow_neither) -> str:
    r = emu("debug", *machine_argv(*scenario(apps)), stdin=script)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


def test_the_shells_answer_then_the_index(apps):
    out = debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20\n"
                "history write 0x7F793950004 4 pid 20 --json\n")
    rows = answer(out, "history write 0x7F793950000 8 pid 20")
    assert rows[-1] == "11 writes to 0x7f793950000..0x7f793950007 in pid 20 from boot to " \
        "position 1204741 (re-executed from boot)"
    assert re.fullmatch(
        r"#10 +200302  pid  20 tid  24  ring 0  IRQL 2  CR3 0x61000  0xfffff80001001145 "
        r"<slowneither.sys!DpcForIsr\+0x55>  mov dword ptr \[rdi \+ r8\], eax  write 4 at "
        r"0x7f793950000 \(pa 0x[0-9a-f]+\): 0x74636976 -> 0x61746164", rows[9])
    # The first: the memory manager zeroed victim's new page (a demand-zero fault) for it.
    assert re.fullmatch(r"#1 +293  pid  20 tid  24  ring 0  IRQL 0  CR3 0x61000  0x401e65 "
                        r"<victim!memcpy\+0x15>  by the executive: memory manager: a new "
                        r"page zeroed  write 8 at 0x7f793950000 \(pa 0x[0-9a-f]+\): 0x0 -> 0x0",
                        rows[0]), rows[0]
    records = [json.loads(line) for line in
               answer(out, "history write 0x7F793950004 4 pid 20 --json")]
    assert [(r["position"], r["va"], r["new"], r["symbol"]) for r in records][-1] == \
        (200311, 0x7F793950004, 0x6F726620, "slowneither.sys!DpcForIsr+0x55")


def test_a_repeated_query_comes_from_the_index(apps):
    out = debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20\n"
                "history read 0x7F793950010 8 pid 20\n")
    assert answer(out, "history read 0x7F793950010 8 pid 20")[-1].endswith("(from the index)")


@pytest.mark.parametrize(("row", "where", "byte_at"), [
    (9, "<victim!memcpy+0x15>",                     # "victim'" : the 8th byte not stored
     "0x7f793950000:\t0x00276d6974636976\t0x0000000000000000"),
    (10, "<slowneither.sys!DpcForIsr+0x55>",        # "victim's own dat": the DPC's not yet
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
    assert answer(out, "goto #5") == ["error: goto #5: the last answer has rows 1 to 3"]


def test_emu_query_answers_as_the_shell_at_the_end(apps):
    drivers, commands = slow_neither(apps)
    argv = ["--driver", drivers[0], commands[0][0], *commands[0][1], "--", commands[1][0]]
    r = emu("query", "write", "0x7F793950000", "8", "--pid", "20", "--json", *argv)
    assert r.returncode == 0 and r.stderr == ""
    shell = debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20 --json\n")
    assert r.stdout.splitlines() == answer(shell, "history write 0x7F793950000 8 pid 20 --json")
    assert len(r.stdout.splitlines()) == 11
    text = emu("query", "write", "0x7F793950000", "8", "--pid", "20", *argv)
    assert text.stdout.splitlines()[-1] == "11 writes to 0x7f793950000..0x7f793950007 in " \
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
    # the machine options as emu run checks them (were: tracebacks, or taken as the default)
    (["query", "write", "0x1000", "--phys", "--mem", "zz", "APP"],
     "emu: error: argument --mem: bad size 'zz': expected a number with an optional K, M or "
     "G suffix"),
    (["query", "write", "0x1000", "--phys", "--mem", "0", "APP"],
     "emu: error: memory size must be a multiple of 4K between 1M and 64G, not 0"),
    (["query", "calls", "main", "--quantum", "0", "APP"],
     "emu: error: argument --quantum: must be positive"),
    (["query", "why", "--pagefile-size", "1X", "APP"],
     "emu: error: argument --pagefile-size: bad size '1X'"),
    (["query", "write", "0x1000", "--phys", "--fs", "/nonexistent", "APP"],
     "emu: error: --fs /nonexistent: not a directory"),
])
def test_emu_query_bad_input_is_one_line(apps, args, message):
    args = [str(apps / "hello") if a == "APP" else a for a in args]
    r = emu(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr


@pytest.mark.parametrize(("scenario", "address", "pid", "phys"), [
    (slow_buffered, PAGE_VA, 12, False),           # the I/O manager's copy among them
    (ticket_scribble, "next_ticket", None, True),
])
def test_a_query_run_on_from_its_paused_machine_is_the_one_from_boot(apps, scenario, address,
                                                                      pid, phys):
    """The index keeps the query's machine paused where the answer ended: asked again
    further on, it runs on from there, and every answer is the one re-executed from boot."""
    build = factory(*scenario(apps))
    va = _address(build, address)
    end = oracle_run(build, accesses=False).position
    if phys:
        first = oracle_run(build, va, pid)
        va = next(a for a in first.seen if a[0] == first.at_va[0][0])[2]
    q = Query("write", va, 64 if pid else 4, pid, phys)
    index = QueryIndex()
    starts = []
    for position in (end // 4, end // 2, end):
        found, truncated, cached = index.answer(q, position, build)
        starts.append(index.started_at)
        fresh = QueryIndex()
        assert (found, truncated, cached) == (fresh.answer(q, position, build)[0], False,
                                              False)
        fresh.close()
    index.close()
    assert starts == [0, end // 4, end // 2]
    assert found


def test_a_query_further_on_says_where_it_ran_on_from(apps):
    out = debug(apps, "goto 150000\nhistory write 0x7F793950000 8 pid 20\ncontinue\n"
                "history write 0x7F793950000 8 pid 20\n")
    lines = out.splitlines()
    at = [i for i, line in enumerate(lines) if line.endswith(") history write 0x7F793950000 "
                                                             "8 pid 20")]
    early = answer(out, "history write 0x7F793950000 8 pid 20")
    assert early[-1] == "9 writes to 0x7f793950000..0x7f793950007 in pid 20 from boot to " \
        "position 150000 (re-executed from boot)"
    late = lines[at[1] + 1:at[1] + 13]
    assert late[-1] == "11 writes to 0x7f793950000..0x7f793950007 in pid 20 from boot to " \
        "position 1204741 (the index to position 150000, re-executed from there)"
    boot = answer(debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20\n"),
                  "history write 0x7F793950000 8 pid 20")
    assert late[:-1] == boot[:-1] and late[:9] == early[:9]


def test_goto_a_row_of_an_answer_from_the_index(apps):
    """An answer from the index has the positions of the run it was learnt in: goto #ROW of
    it lands on the accessing instruction, as the forward run has it."""
    out = debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20\n"
                "history read 0x7F793950000 8 pid 20\ngoto #1\nposition\n")
    rows = answer(out, "history read 0x7F793950000 8 pid 20")
    assert rows[-1].endswith("(from the index)")
    position = int(rows[0].split()[1])
    assert answer(out, "position") == [f"{position} instructions and exceptions since boot"]
    rip = re.search(r"  CR3 0x[0-9a-f]+  (0x[0-9a-f]+) <", rows[0]).group(1)
    assert answer(out, "goto #1")[-1].startswith(f"=> {rip} ")


POOL_PAGE = 0xFFFF_A080_0000_0000    # NonPagedPoolNx's first page: IRPs, file objects


def test_goto_a_row_of_the_executives_store_shows_it_done(apps):
    out = debug(apps, "continue\nhistory write 0x7F793950000 28 pid 12\ngoto #23\nposition\n"
                "x/s 0x7F793950000\n", scenario=slow_buffered)
    row = answer(out, "history write 0x7F793950000 28 pid 12")[22]
    assert "  by the executive: I/O manager: buffered read completion copy (IRP 0x" in row
    position = int(row.split()[1])
    assert answer(out, "position") == [f"{position} instructions and exceptions since boot"]
    assert answer(out, "x/s 0x7F793950000") == ['0x7f793950000:\t"data from the slow device"']


def test_the_executives_stores_count_one_per_64_bytes(apps, monkeypatch):
    """A store of the executive (an IRP of 280 bytes) counts 5 against the query's bound."""
    from emu.debugger import query

    build = factory(*slow_buffered(apps))
    q = Query("write", POOL_PAGE, 4096, None, False)
    whole, truncated, _ = QueryIndex().answer(q, 200_000, build)
    assert not truncated
    assert any(a.executive and a.size == 280 and query.weight(a) == 5 for a in whole)
    # A bound of one more than the rows: counted one a row it would hold them all.
    monkeypatch.setattr(query, "MAX_ACCESSES", len(whole) + 1)
    cut, truncated, _ = QueryIndex().answer(q, 200_000, build)
    assert truncated and cut == whole[:len(cut)] and len(cut) < len(whole)
    assert sum(query.weight(a) for a in cut) < len(whole) + 1


def test_only_a_querys_machine_records_the_executives_stores(apps):
    """The user's machine keeps RAM's own write methods; the query's has them back when
    it is released."""
    from emu.debugger.query import Recorder

    build = factory(*slow_buffered(apps))
    user = build()
    recorder = Recorder(build(), Query("access", POOL_PAGE, 4096, None, False), 1000)
    recorder.record()
    assert "write" in vars(recorder.executive.mem) and "write" not in vars(user.mem)
    mem = recorder.executive.mem
    recorder.close()
    assert "write" not in vars(mem) and "write_u64" not in vars(mem)
    user.close()


def test_a_store_made_in_a_step_is_done_one_step_later(apps):
    """Row #1: the page zeroed while the CPU ran victim's first write (its page fault):
    goto there is before that step (the page not there yet), one step on it is done."""
    out = debug(apps, "continue\nhistory write 0x7F793950000 8 pid 20\ngoto #1\n"
                "x/gx 0x7F793950000\nstepi\nposition\nx/2bx 0x7F793950000\n")
    row = answer(out, "history write 0x7F793950000 8 pid 20")[0]
    assert "by the executive: memory manager: a new page zeroed" in row
    position = int(row.split()[1])
    assert answer(out, "x/gx 0x7F793950000")[0].startswith(
        "error: cannot access 0x7f793950000: not mapped")
    assert answer(out, "position") == [f"{position + 1} instructions and exceptions since boot"]
    assert answer(out, "x/2bx 0x7F793950000") == ["0x7f793950000:\t0x76\t0x00"]


def test_going_back_hands_the_index_on_without_its_paused_machine(apps):
    """Going back resumes a snapshot, another process: the index goes with it (the paused
    machine stays behind), so an earlier query is answered from it, and one further on
    re-executes from boot; in the process that made it, the paused machine runs on."""
    drivers, commands = slow_neither(apps)
    script = ("goto 150000\nhistory write 0x7F793950000 8 pid 20\n{back}"
              "history write 0x7F793950000 8 pid 20\ngoto 200000\n"
              "history write 0x7F793950000 8 pid 20\ninfo snapshots\n")
    outs = {}
    for back in ("goto 120000\n", "goto 100\n"):      # a snapshot at 100000; none before 100
        r = emu("debug", "--snapshot-interval", "50000", "--driver", drivers[0],
                commands[0][0], *commands[0][1], "--", commands[1][0],
                stdin=script.format(back=back))
        assert r.returncode in (0, 1), r.stderr
        lines = r.stdout.splitlines()
        at = [i for i, line in enumerate(lines)
              if line.endswith(") history write 0x7F793950000 8 pid 20")]
        assert len(at) == 3
        outs[back] = tuple(next(line for line in lines[i + 1:]
                                if re.match(r"\d+ writes? to ", line)) for i in at[1:])
    early = "boot to position {} (from the index)"
    late = "9 writes to 0x7f793950000..0x7f793950007 in pid 20 from boot to position 200000 ({})"
    assert outs["goto 120000\n"] == (
        "9 writes to 0x7f793950000..0x7f793950007 in pid 20 from " + early.format(120000),
        late.format("re-executed from boot"))
    assert outs["goto 100\n"] == (
        "0 writes to 0x7f793950000..0x7f793950007 in pid 20 from " + early.format(100),
        late.format("the index to position 150000, re-executed from there"))


# Its own oracle run records only the executive's stores (no hook on every access: it
# compares no access of the CPU's), so it takes about a second, not about 19.
def test_the_pagers_page_ins_are_the_executives_writes(apps):
    """reread 2 in 2 MiB of RAM: its page at 0x13000 is written, pushed out to the
    pagefile and read back twice; each page-in is a row (the frame's old bytes -> the
    page's), at the position the oracle saw the store."""
    def build() -> Machine:
        m = Machine(2 << 20)
        m.spawn(apps / "reread", ["2"])
        return m
    va = 0x13000                      # reread's region starts at 0x10000 (its first VAD)
    oracle = oracle_run(build, va, 12, accesses=False)     # only its stores are compared
    want = executive_stores(oracle, va, 16, False)
    found, truncated, _ = QueryIndex().answer(Query("write", va, 16, 12, False),
                                              oracle.position, build)
    mine = [a for a in found if a.executive]
    assert not truncated
    assert [(a.position, a.kind, a.va, a.size, a.new, None) for a in mine] == want
    page_ins = [a for a in mine if "page-in" in a.instruction]
    assert len(page_ins) == 2 and all(re.fullmatch(
        r"by the executive: memory manager: page-in from pagefile slot \d+", a.instruction)
        for a in page_ins)
    words = [a.new for a in found if not a.executive and a.kind == "write"]
    assert page_ins[0].new == words[0] | words[1] << 64     # the words it wrote come back
