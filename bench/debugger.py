"""The debugger's figures for ``make bench``, each measured through ``emu debug`` in batch
mode as a user would run it (a script on standard input):

    steps per second      N lines of `stepi` on the `loop` guest, less the same run with none
    reverse-stepi latency `rsi 1` after 1,000,000 instructions, less the run without it:
                          through a snapshot (the default ring) and from boot (--snapshots 0)
    snapshot memory       the private memory of each snapshot kept (`info snapshots`, from
                          /proc/PID/smaps_rollup), after eight `si 1000000` (one each)
    continue              `break printf` then `continue` on `loop 20000000`: the breakpoint is
                          100,000,168 instructions in (seconds from `continue` to the stop)
    continue / counted    the same continue against a counted run of the same program in
                          `Machine.run()` (`max_insns`, every instruction counted as the
                          debugger counts them): what the debugger adds to counting
    uncounted bound       the same program at full speed (nothing counted) with a code hook on
                          printf, to its first arrival, against the same run with no hook:
                          what a continue that counted nothing could cost (it would not be
                          exact: docs/performance.md)
    rsi after continue    `rsi 1` at that breakpoint: going back a little after a long run
                          (re-executed from the newest snapshot before it)
    history write         the query scenario below (10 M instructions): the first
                          `history write` of a pool page / `emu run` of the same machine, and
                          the same query again (answered from the index) / `emu run`
    goto                  `goto` to positions spread over that run, in a shuffled order
                          (forward and back), from its end: the worst

The query scenario (``QUERY_SCENARIO``): slowbuffered.sys and three `slowread
\\Device\\SlowBuffered` with `loop 2000000` (10,010,953 instructions and exceptions in
all). The watched page is the first page of NonPagedPoolNx (0xffffa08000000000), where the
I/O manager puts the IRPs and the file objects: each slowread's dispatch routine writes its
IRP there (pids 12 and 20 in ring 0, pid 28's file object), the executive builds them, and
the device's DPC, interrupting `loop` (pid 36) at IRQL 2, fills and completes the pended
IRP; `loop` then runs 10 M instructions that never touch it.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP = str(ROOT / "guest" / "build" / "apps" / "loop")


APPS = ROOT / "guest" / "build" / "apps"
DRIVERS = ROOT / "guest" / "build" / "drivers"
QUERY_PAGE = 0xFFFF_A080_0000_0000        # NonPagedPoolNx's first page: IRPs, file objects
QUERY_ARGV = ["--driver", str(DRIVERS / "slowbuffered.sys"),
              *[w for _ in range(3) for w in (str(APPS / "slowread"), r"\Device\SlowBuffered",
                                               "--")],
              str(APPS / "loop"), "2000000"]
GOTO_POSITIONS = [9_000_000, 1_000_000, 5_000_000, 10_000_000, 2_500_000, 7_500_000,
                  100_000, 6_000_000, 3_000_000, 8_200_000]


def query_machine():
    """The query scenario's machine, built as `emu debug` builds it (not yet run)."""
    from emu.machine import Machine

    m = Machine("64M")
    m.add_driver(DRIVERS / "slowbuffered.sys")
    for _ in range(3):
        m.spawn(APPS / "slowread", [r"\Device\SlowBuffered"])
    m.spawn(APPS / "loop", ["2000000"])
    return m


def query_rows(repeat: int) -> list[tuple[str, float, str, bool, str]]:
    """The first `history write` over the query scenario and a repeated one, each against
    `emu run` of the same machine (built and run: what a query's own machine does), taken
    alternately; (name, ratio, target, met, detail)."""
    from emu.debugger.query import Query, QueryIndex
    from emu.debugger.session import Session

    m = query_machine()                      # the end's position, as `emu query` finds it
    session = Session(m, lambda _stop: session.ended is False and (session.cont() or True))
    session.run()
    end = session.position
    session.close()
    runs, firsts, agains = [], [], []
    rows_found = 0
    for _ in range(repeat):
        t = time.perf_counter()
        m = query_machine()
        m.run()
        runs.append(time.perf_counter() - t)
        m.close()
        index = QueryIndex()
        q = Query("write", QUERY_PAGE, 4096, None, False)
        t = time.perf_counter()
        found, _, cached = index.answer(q, end, query_machine)
        firsts.append(time.perf_counter() - t)
        t = time.perf_counter()
        again, _, cached_again = index.answer(q, end, query_machine)
        agains.append(time.perf_counter() - t)
        index.close()                    # its paused machine
        if cached or not cached_again or again != found:
            raise SystemExit("bench: the repeated query was not answered from the index")
        rows_found = len(found)
    run, first, again_t = (statistics.median(x) for x in (runs, firsts, agains))
    return [
        ("history write, first query (time vs emu run, 10 M insns)", first / run, "<= 3x",
         first / run <= 3, f"query {first:.3f}s ({rows_found} writes), emu run {run:.3f}s"),
        ("history write, repeated query (time vs emu run)", again_t / run, "<= 0.1x",
         again_t / run <= 0.1, f"query {again_t * 1000:.2f}ms, emu run {run:.3f}s"),
    ]


def goto_worst(repeat: int) -> tuple[float, int]:
    """The slowest `goto` to GOTO_POSITIONS (from the scenario's end), and where."""
    worst, where = 0.0, 0
    for _ in range(repeat):
        d = Debugger(argv=QUERY_ARGV)
        try:
            _, out = d.timed("continue\n")
            for position in GOTO_POSITIONS:
                elapsed, out = d.timed(f"goto {position}\n")
                if f"{position} instructions and exceptions since boot" not in out:
                    raise SystemExit(f"bench: goto {position} did not land there:\n{out}")
                if elapsed > worst:
                    worst, where = elapsed, position
        finally:
            d.close()
    return worst, where


class Debugger:
    """A running ``emu debug`` of the `loop` guest, fed commands on a pipe; ``timed`` says
    how long a command took, from sending it to the answer of the `position` after it."""

    def __init__(self, *options: str, iterations: str = "100000000",
                 argv: list[str] | None = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emu", "debug", *options,
             *(argv if argv is not None else [LOOP, iterations])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)

    def timed(self, commands: str) -> tuple[float, str]:
        t = time.perf_counter()
        self.proc.stdin.write(commands + "position\n")
        self.proc.stdin.flush()
        out = []
        while not (line := self.proc.stdout.readline()).endswith(" since boot\n"):
            if not line:
                raise SystemExit("bench: emu debug ended early:\n" + "".join(out[-20:]))
            out.append(line)
        elapsed = time.perf_counter() - t
        return elapsed, "".join(out) + line

    def close(self) -> None:
        self.proc.stdin.write("kill\n")
        self.proc.stdin.close()
        self.proc.stdout.read()
        self.proc.wait(timeout=120)


def steps_per_second(repeat: int, steps: int = 2000) -> tuple[float, float]:
    d = Debugger()
    try:
        d.timed("")
        elapsed = statistics.median(d.timed("si\n" * steps)[0] for _ in range(repeat))
    finally:
        d.close()
    return steps / elapsed, elapsed


def reverse_latency(repeat: int, *options: str) -> float:
    """Seconds of ``rsi 1`` at 1,000,001 instructions (and the `position` after it)."""
    times = []
    for _ in range(repeat):
        d = Debugger(*options)
        try:
            d.timed("si 1000000\n")
            times.append(d.timed("rsi 1\n")[0])
        finally:
            d.close()
    return statistics.median(times)


CONTINUE_ITERATIONS = "20000000"     # loop's 5-instruction body: printf 100 M in


def continue_time(repeat: int, *options: str) -> float:
    """Seconds of ``continue`` from the entry point to ``break printf``, 100 M in."""
    return statistics.median(continue_and_back(*options)[0] for _ in range(repeat))


def continue_and_back(*options: str) -> tuple[float, float]:
    """Seconds of ``continue`` to ``break printf`` (100 M in), then of ``rsi 1`` there."""
    d = Debugger(*options, iterations=CONTINUE_ITERATIONS)
    try:
        d.timed("break printf\n")
        elapsed, out = d.timed("continue\n")
        if "Breakpoint 1, loop!printf" not in out:
            raise SystemExit("bench: continue did not stop at printf:\n" + out)
        back, out = d.timed("rsi 1\n")
        if "<loop!main+0x37>: call" not in out:      # the call of printf
            raise SystemExit("bench: rsi 1 did not go back one step:\n" + out)
        return elapsed, back
    finally:
        d.close()


def counted_run_time() -> float:
    """Seconds in Machine.run() of ``loop 20000000`` with every instruction counted (a
    budget of 2^40: the counting the debugger does, without the debugger)."""
    from emu import Machine

    m = Machine("64M", max_insns=1 << 40)
    try:
        proc = m.spawn(LOOP, [CONTINUE_ITERATIONS])
        t = time.perf_counter()
        m.run()
        elapsed = time.perf_counter() - t
        if proc.exit_status != 0:
            raise SystemExit(f"bench: loop failed: {proc.exception or proc.exit_status}")
        return elapsed
    finally:
        m.close()


def uncounted_breakpoint_time() -> tuple[float, float]:
    """(seconds to the first arrival at printf, 100 M in, with nothing counted and a Unicorn
    code hook on printf's first instruction: what a `continue` that counted nothing would
    cost at least; seconds of the same run to its end without the hook: `emu run`), in
    Machine.run() of ``loop 20000000``. The hook only notes the time: the run goes on."""
    from unicorn import UC_HOOK_CODE

    from emu import Machine
    from emu.debugger.live import LiveTarget

    times = []
    for hooked in (True, False):
        m = Machine("64M")
        try:
            m.spawn(LOOP, [CONTINUE_ITERATIONS])
            hit: list[float] = []
            if hooked:
                printf = LiveTarget(m).resolve_symbol("printf")
                m.executive.cpu.uc.hook_add(
                    UC_HOOK_CODE, lambda *_, hit=hit: hit or hit.append(time.perf_counter()),
                    None, printf, printf)
            t = time.perf_counter()
            m.run()
            end = time.perf_counter()
            if hooked and not hit:
                raise SystemExit("bench: the hook on printf never ran")
            times.append((hit[0] if hooked else end) - t)
        finally:
            m.close()
    return times[0], times[1]


def continue_rows(repeat: int) -> list[tuple[str, float, str, str]]:
    """The debugger's continue against a counted run (side by side, alternately), and the
    step back after it."""
    conts, backs, counted, bounds, frees = [], [], [], [], []
    for _ in range(repeat):
        cont, back = continue_and_back()
        conts.append(cont)
        backs.append(back)
        counted.append(counted_run_time())
        bound, free = uncounted_breakpoint_time()
        bounds.append(bound)
        frees.append(free)
    cont, back, count, bound, free = (statistics.median(x) for x in
                                      (conts, backs, counted, bounds, frees))
    return [
        ("debugger: continue 100 M in (time vs counted run)", cont / count, "x",
         f"continue {cont:.3f}s, Machine.run() with max_insns {count:.3f}s "
         f"({cont / count:.2f}x)"),
        ("debugger: a continue counting nothing, its bound (time vs emu run)", bound / free,
         "x", f"to printf at full speed with its code hook {bound:.3f}s, the run without "
         f"{free:.3f}s: not exact (docs/performance.md)"),
        ("debugger: rsi 1 after that continue", back * 1000, "ms",
         "re-executes from the newest snapshot before the breakpoint (at 96 M)"),
    ]


def snapshot_memory() -> list[int]:
    """KiB of its own for each snapshot after eight steps of 1,000,000 instructions (a stop
    each: one snapshot per 1,000,000)."""
    d = Debugger("--snapshot-interval", "1000000")
    try:
        _, out = d.timed("si 1000000\n" * 8 + "info snapshots\n")
    finally:
        d.close()
    return [int(k) for k in re.findall(r"(\d+) KiB of its own", out)]


def rows(repeat: int) -> list[tuple[str, float, str, str]]:
    """(name, figure, unit, detail) rows for the bench table."""
    rate, extra = steps_per_second(repeat)
    through_snapshot = reverse_latency(repeat, "--snapshot-interval", "500000")
    from_boot = reverse_latency(repeat, "--snapshots", "0")
    kib = snapshot_memory()
    total = sum(kib)
    return [*continue_rows(repeat),
        ("debugger: single steps (batch)", rate, "/s", f"2000 steps in {extra:.3f}s"),
        ("debugger: reverse-stepi after 1M insns, snapshot", through_snapshot * 1000, "ms",
         "resumes the newest snapshot (one every 500,000) and re-executes from it"),
        ("debugger: reverse-stepi after 1M insns, from boot", from_boot * 1000, "ms",
         "--snapshots 0: a new machine re-executes 1M instructions"),
        ("debugger: snapshot ring memory", total / 1024, "MiB",
         f"{len(kib)} snapshots, {statistics.mean(kib) if kib else 0:.0f} KiB each on average"),
    ]
