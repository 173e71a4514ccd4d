"""Trap-path figures for ``make bench`` (issue 13, items 3 and 4), each with its target:

    system call round trip   `sysloop` (NtGetCurrentProcessId in a loop) on the machine vs the
                             same image on flat Unicorn with a minimal Python syscall hook
                             (bench.plain: read RAX, write RAX)            target: <= 2x
    demand-zero faults/s     `pattern 16` in 64 MiB: 4,096 first touches      target: >= 20,000
    hard faults/s            `reread 4` in 2 MiB: each an eviction and a read back
                                                                           target: >= 10,000
    context switches/s       two `yielder`s handing the CPU to each other     target: >= 50,000

Rates are guest events per second of wall time in Machine.run() (set-up and load excluded),
the median of several runs. docs/performance.md explains what each one costs.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.plain import run_flat
from emu import Machine

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "guest" / "build" / "apps"
SYSCALLS = 20000


def _run(app: str, args: list[str], mem: str = "64M", apps: int = 1):
    """(the first process, the run's result, seconds in Machine.run()) for ``apps`` copies."""
    m = Machine(mem)
    try:
        procs = [m.spawn(APPS / app, args) for _ in range(apps)]
        t = time.perf_counter()
        result = m.run()
        elapsed = time.perf_counter() - t
        if any(p.exit_status != 0 for p in procs):
            raise SystemExit(f"bench: {app} failed: {procs[0].exception or procs[0].exit_status}")
        return procs[0], result, elapsed
    finally:
        m.close()


def syscall_round_trip(calls: int = SYSCALLS) -> tuple[float, float]:
    """Seconds per system call: (ours, flat Unicorn with a minimal Python hook)."""
    _, _, ours = _run("sysloop", [str(calls)])
    return ours / calls, run_flat(APPS / "sysloop", [str(calls)]) / calls


def demand_zero_rate() -> tuple[float, int, float]:
    """(faults per second, faults, seconds): pattern 16 MiB in 64 MiB, every page new."""
    proc, _, elapsed = _run("pattern", ["16", "1"])
    faults = proc.working_set.counters.demand_zero_faults
    return faults / elapsed, faults, elapsed


def hard_fault_rate() -> tuple[float, int, float]:
    """(faults per second, faults, seconds): reread 4 MiB in 2 MiB of RAM."""
    proc, _, elapsed = _run("reread", ["4"], "2M")
    faults = proc.working_set.counters.hard_faults
    return faults / elapsed, faults, elapsed


def context_switch_rate(yields: int = 2000) -> tuple[float, int, float]:
    """(switches per second, switches, seconds): two yielders."""
    _, result, elapsed = _run("yielder", [str(yields)], apps=2)
    switches = result.stats.context_switches
    return switches / elapsed, switches, elapsed


def _median_run(measure, repeat: int) -> tuple:
    """The run of ``measure()`` whose first figure is the median of ``repeat`` runs."""
    runs = sorted((measure() for _ in range(repeat)), key=lambda r: r[0])
    return runs[len(runs) // 2]


def rows(repeat: int) -> list[tuple]:
    """The trap-path rows of the bench table: (name, figure, target, ok, detail, unit)."""
    out = []
    pairs = [syscall_round_trip() for _ in range(repeat)]
    ours = statistics.median(p[0] for p in pairs)
    plain = statistics.median(p[1] for p in pairs)
    out.append(("system call round trip (vs Python hook on flat Unicorn)", ours / plain,
                "<= 2x", ours / plain <= 2,
                f"ours {ours * 1e6:.1f}us, flat Unicorn {plain * 1e6:.1f}us per call"))
    for name, measure, target in (
            ("demand-zero faults per second (pattern 16 MiB)", demand_zero_rate, 20000),
            ("hard faults per second (reread 4 MiB in 2 MiB)", hard_fault_rate, 10000),
            ("context switches per second (two yielders)", context_switch_rate, 50000)):
        rate, events, elapsed = _median_run(measure, repeat)
        out.append((name, rate, f">= {target}", rate >= target,
                    f"{events} in {elapsed:.3f}s ({elapsed / events * 1e6:.0f}us each)", "/s"))
    return out
