"""What a user sees of a machine's run, for the tests that run one workload two ways (a
switch or a quantum end made inside the run, or through a stop) and compare: the
schedule, recorded at the scheduler, and the outcome."""

from __future__ import annotations

from typing import Any

from emu.machine import Machine
from emu.nt import layout

REGISTERS = ("rip", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9",
             "r10", "r11", "r12", "r13", "r14", "r15", "rflags", "cs", "cr3")


def watched_machine(mem: str, **options: Any) -> tuple[Machine, list, list]:
    """A machine made with ``options``, its console output (pid, bytes) and its schedule
    (``record_schedule``) recorded from the start."""
    output: list[tuple[int | None, bytes]] = []
    m = Machine(mem, console=lambda proc, data: output.append((proc and proc.pid, bytes(data))),
                **options)
    return m, output, record_schedule(m)


def record_schedule(m: Machine) -> list[tuple[int, int]]:
    """The (thread id, clock) of every dispatch from now on, recorded at the scheduler
    rather than by an event observer (one would turn the switches and renewals made inside
    the run off); the clock read at a switch made in C is that switch's."""
    ex = m.executive
    schedule: list[tuple[int, int]] = []
    next_thread = ex.scheduler.next_thread

    def recorded(now: int):
        thread = next_thread(now)
        if thread is not None:
            schedule.append((thread.tid, ex.clock))
        return thread

    ex.scheduler.next_thread = recorded
    return schedule


def outcome(m: Machine, result, procs: list, output: list,
            schedule: list[tuple[int, int]]) -> dict[str, Any]:
    """What a user sees after ``m.run()`` gave ``result``: how it stopped, the exit
    statuses, the counts, the console ``output``, the ``schedule``, each thread's and
    process's instructions, the registers and KUSER_SHARED_DATA."""
    ex = m.executive
    return {
        "stopped": result.stopped,
        "exits": [p.exit_status for p in procs],
        "instructions": result.stats.instructions,
        "switches": result.stats.context_switches,
        "page_faults": result.stats.page_faults,
        "output": output,
        "schedule": schedule,
        "threads": [(t.tid, t.instructions) for p in ex.processes for t in p.threads],
        "processes": [(p.pid, p.instructions) for p in ex.processes],
        "registers": [ex.cpu.reg(r) for r in REGISTERS],
        "kuser_shared_data": m.mem.read(ex.shared_data_frame * layout.PAGE_SIZE,
                                        layout.PAGE_SIZE),
    }
