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
    rsi after continue    `rsi 1` at that breakpoint: going back a little after a long run
                          (re-executed from the newest snapshot before it)
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


class Debugger:
    """A running ``emu debug`` of the `loop` guest, fed commands on a pipe; ``timed`` says
    how long a command took, from sending it to the answer of the `position` after it."""

    def __init__(self, *options: str, iterations: str = "100000000") -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emu", "debug", *options, LOOP, iterations],
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
        return time.perf_counter() - t, "".join(out)

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


def continue_rows(repeat: int) -> list[tuple[str, float, str, str]]:
    """The debugger's continue against a counted run (side by side, alternately), and the
    step back after it."""
    conts, backs, counted = [], [], []
    for _ in range(repeat):
        cont, back = continue_and_back()
        conts.append(cont)
        backs.append(back)
        counted.append(counted_run_time())
    cont, back, count = (statistics.median(x) for x in (conts, backs, counted))
    return [
        ("debugger: continue 100 M in (time vs counted run)", cont / count, "x",
         f"continue {cont:.3f}s, Machine.run() with max_insns {count:.3f}s "
         f"({cont / count:.2f}x)"),
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
