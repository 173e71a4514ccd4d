"""``make soak``: many machines, many processes (crashing ones among them), drivers and
memory pressure, for a set time; then the books must balance.

Each round boots a machine with little RAM (2-8 MiB, so pages go to the pagefile),
perhaps a driver, and a random mix of apps: pattern and reread (their data must come
back right), hotcold, threads and counters, crashers (each must die of its own
exception and nothing else), device readers and the memory-list commands. While it
runs, check_memory is called at every console line; at the end of the round:

- every app ended as its kind must: exit 0 and its checksum right, or its exception;
- no bug check;
- check_memory: PFN records, lists, PTEs, pagefile slots and working sets agree;
- check_objects: handles and objects agree (also at every console line);
- no frame belongs to a process that has exited, no commit is charged, no object is
  alive, no handle is open.

Rounds are seeded (seed + round number), so a failing round replays with
``python -m fuzz.soak --seed S --rounds 1 --first N``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from emu import Machine
from emu.nt.mm import virtual
from emu.nt.mm.check import check_memory
from emu.nt.ob_check import check_objects
from emu.nt.status import NTSTATUS

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "guest" / "build" / "apps"
DRIVERS = ROOT / "guest" / "build" / "drivers"
M64 = (1 << 64) - 1

CRASHERS = {"nullwrite": NTSTATUS.STATUS_ACCESS_VIOLATION,
            "badread": NTSTATUS.STATUS_ACCESS_VIOLATION,
            "divzero": NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO,
            "stackoverflow": NTSTATUS.STATUS_STACK_OVERFLOW,
            "privileged": NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION,
            "illegal": NTSTATUS.STATUS_ILLEGAL_INSTRUCTION}


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


_CHECKSUMS: dict[tuple[int, int], int] = {}


def pattern_checksum(mib: int, seed: int) -> int:
    """What `pattern MiB seed` must print (its formula; cached, it takes a while)."""
    key = (mib, seed)
    if key not in _CHECKSUMS:
        _CHECKSUMS[key] = sum(_mix(((seed << 32) | i) & M64)
                              for i in range(mib * 131072)) & M64
    return _CHECKSUMS[key]


@dataclass
class Tally:
    rounds: int = 0
    processes: int = 0
    crashed: int = 0
    checks: int = 0
    violations: list[str] = field(default_factory=list)


def plan(rng: random.Random) -> tuple[str, str | None, list[tuple[str, list[str]]]]:
    """One round: RAM, a driver (or none), and the apps."""
    mem = rng.choice(["2M", "3M", "4M", "8M"])
    driver = rng.choice([None, "buffered.sys", "pagedpool.sys"])
    apps: list[tuple[str, list[str]]] = []
    for _ in range(rng.randrange(3, 9)):
        kind = rng.choice(["pattern", "pattern", "reread", "hotcold", "threads", "counter",
                           "crash", "listcmd", "hello"])
        if kind == "pattern":
            apps.append(("pattern", [str(rng.randrange(1, 5)), str(rng.randrange(1, 5))]))
        elif kind == "reread":
            apps.append(("reread", [str(rng.randrange(1, 3))]))
        elif kind == "hotcold":
            apps.append(("hotcold", ["32", str(rng.randrange(64, 512)), "16"]))
        elif kind == "counter":
            apps.append(("counter", [rng.choice("abc"), str(rng.randrange(1, 4))]))
        elif kind == "crash":
            apps.append((rng.choice(sorted(CRASHERS)), []))
        elif kind == "listcmd":
            apps.append(("listcmd", ["all"]))
        else:
            apps.append((kind, []))
    if driver == "buffered.sys":
        apps.append(("devread", ["\\Device\\Buffered"]))
    elif driver == "pagedpool.sys":
        apps.append(("pagedrv", [rng.choice(["passive", "user-passive"])]))
    return mem, driver, apps


def run_round(seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    mem, driver, apps = plan(rng)
    where = f"round seed {seed} ({mem}, driver {driver}, {len(apps)} apps)"
    problems: list[str] = []

    def console(_proc, _data) -> None:
        tally.checks += 1
        problems.extend(f"mid-run: {p}" for p in check_memory(m.executive.mm))
        problems.extend(f"mid-run: {p}" for p in check_objects(m.executive))

    m = Machine(mem, console=console)
    try:
        if driver:
            m.add_driver(DRIVERS / driver)
        procs = [(name, args, m.spawn(APPS / name, args)) for name, args in apps]
        result = m.run()
        if result.bugcheck is not None:
            problems.append(f"bug check {result.bugcheck.code:#x}: {result.bugcheck.detail}")
        for name, args, proc in procs:
            tally.processes += 1
            problems.extend(_judge(name, args, proc))
            tally.crashed += proc.exception is not None
        problems.extend(_books(m))
    finally:
        m.close()
    tally.rounds += 1
    tally.violations.extend(f"{where}: {p}" for p in problems)


def _judge(name: str, args: list[str], proc) -> list[str]:
    """How this app must have ended."""
    who = f'{name} {" ".join(args)} (pid {proc.pid})'
    if name in CRASHERS:
        if proc.exception is None or proc.exception.code != CRASHERS[name]:
            return [f"{who} should die of {CRASHERS[name].name}, ended "
                    f"{proc.exception or proc.exit_status}"]
        return []
    if proc.exception is not None or proc.exit_status != 0:
        return [f"{who} ended {proc.exception or proc.exit_status}: {proc.output[-200:]!r}"]
    if name == "pattern":
        mib, seed = int(args[0]), int(args[1])
        want = f"pattern: checksum {pattern_checksum(mib, seed):#018x}, 0 bad words"
        if proc.output.decode().splitlines()[-1:] != [want]:
            return [f"{who} printed {proc.output!r}, not {want!r}"]
    return []


def _books(m: Machine) -> list[str]:
    ex = m.executive
    problems = check_memory(ex.mm) + check_objects(ex)
    live = {p.pid for p in ex.processes if p.state.value != "terminated"}
    owned = [n for n in range(1, len(ex.mm.pfn.entries))
             if (owner := ex.mm.pfn.entries[n].owner) is not None and owner not in live]
    if owned:
        problems.append(f"{len(owned)} frames still owned by exited processes")
    if virtual.commit_state(ex).charged:
        problems.append(f"{virtual.commit_state(ex).charged} pages of commit still charged")
    if ex.objects.live():
        problems.append(f"objects still alive: {ex.objects.live()}")
    if any(len(p.handles) for p in ex.processes):
        problems.append("handles still open in an exited process")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="the first round's seed is SEED*1000")
    parser.add_argument("--rounds", type=int, help="stop after this many rounds")
    parser.add_argument("--first", type=int, default=0, help="start at this round number")
    args = parser.parse_args(argv)
    if not (APPS / "pattern").exists():
        print("soak: build the guests first (make guests)", file=sys.stderr)
        return 2
    tally = Tally()
    start = time.monotonic()
    n = args.first
    while time.monotonic() - start < args.seconds and (args.rounds is None or
                                                        tally.rounds < args.rounds):
        run_round(args.seed * 1000 + n, tally)
        n += 1
    elapsed = time.monotonic() - start
    print(f"soak: {elapsed:.0f} s, {tally.rounds} machines, {tally.processes} processes "
          f"({tally.crashed} crashed as planned), {tally.checks} mid-run checks, "
          f"{len(tally.violations)} invariant violations")
    for line in tally.violations[:20]:
        print(f"  {line}")
    return 1 if tally.violations else 0


if __name__ == "__main__":
    sys.exit(main())
