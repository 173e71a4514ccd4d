"""Scenarios about kernel mode: one address space for every driver, no isolation.

    driver-crash-is-fatal   the same write to address 0: an app dies alone, a driver stops all
    shared-kernel-space     scribble.sys's bad index lands on ticket.sys's counter
"""

from __future__ import annotations

from typing import Any

from emu.fmt import addr
from emu.hw import mmu
from emu.nt.bugcheck import PF_WRITE, BugCheckCode
from emu.nt.events import Event
from emu.nt.process import ProcessState
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import Service
from emu.scenarios.registry import scenario
from emu.scenarios.stage import Stage, output

COUNTERS = (("counter", "a", "8", "8000"), ("counter", "b", "8", "8000"))
IMAGE = (0x400000, 0x404000)
ALL_LINES = {"a": "".join(f"a {i}\n" for i in range(1, 9)),
             "b": "".join(f"b {i}\n" for i in range(1, 9))}


@scenario(
    "driver-crash-is-fatal",
    "the same write to address 0: an app dies alone, a driver stops the machine",
    "If a kernel-mode driver crashes, it causes the entire operating system to crash.",
    ("guest/apps/nullwrite.c", "guest/apps/counter.c", "guest/apps/devread.c",
     "guest/drivers-pe/neither.c"))
def driver_crash_is_fatal(stage: Stage) -> None:
    """Act 1: nullwrite writes address 0 at ring 3. Act 2: neither.sys, asked to read into
    address 0, writes it at ring 0. Two counters run beside each."""
    with stage.act("at ring 3: nullwrite writes address 0 between two counters",
                   apps=[COUNTERS[0], ("nullwrite",), COUNTERS[1]], focus=[IMAGE],
                   dispatches=False, explain_walks=True) as act:
        first = act.run()
        app = act.proc("nullwrite").exception
        app_counters = [(p.exit_status, output(p)) for p in act.procs if p.name == "counter"]
    with stage.act("at ring 0: neither.sys writes address 0 for devread, between two counters",
                   apps=[COUNTERS[0], ("devread", "\\Device\\Neither", "16", "0"), COUNTERS[1]],
                   drivers=["neither.sys"], focus=[IMAGE], dispatches=False,
                   syscalls=[Service.NtReadFile]) as act:
        second = act.run()
        bc = second.bugcheck
        stuck = [(p.name, " ".join(p.args), p.state.value, output(p)) for p in act.procs]
    stage.facts.update(app_exception=app, app_counters=app_counters, bugcheck=bc,
                       stopped=second.stopped, processes_at_stop=stuck,
                       first_stopped=first.stopped)
    stage.check("In an app, the write to address 0 ends that app alone: the counters finish",
                app is not None and app.code == NTSTATUS.STATUS_ACCESS_VIOLATION and
                app.access == "write" and app.address == 0 and first.bugcheck is None and
                app_counters == [(0, ALL_LINES["a"]), (0, ALL_LINES["b"])],
                f"nullwrite: {app.name if app else 'no exception'}; counters "
                f"{[(s, len(o.split(chr(10))) - 1) for s, o in app_counters]} "
                "(exit status, lines)")
    stage.check("In a driver, the same write to address 0 is a bug check: 0x50 "
                "PAGE_FAULT_IN_NONPAGED_AREA, a write, in neither.sys",
                bc is not None and bc.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA and
                bc.params[0] == 0 and bc.params[1] == PF_WRITE and bc.driver == "neither.sys",
                f"bug check {bc.code:#x} {bc.name}, parameters "
                f"{[addr(p) for p in bc.params]}, driver {bc.driver or '?'}" if bc else
                "no bug check")
    unfinished = [s for s in stuck if s[2] != ProcessState.TERMINATED.value]
    stage.check("Everything stops with it: no process finishes, the counters stop mid-count",
                second.stopped == "bug check" and len(unfinished) == 3 and
                all(o != ALL_LINES[a[0]] for n, a, _, o in stuck if n == "counter"),
                "; ".join(f"{n} {a}: {st}, {len(o.splitlines())} lines" for n, a, st, o
                          in stuck) + f"; the machine: {second.stopped}")


@scenario(
    "shared-kernel-space",
    "scribble.sys's bad index overwrites ticket.sys's counter: no fault, wrong answers",
    "All code running in kernel mode shares a single virtual address space. As a result, "
    "a kernel-mode driver isn't isolated from other drivers or the operating system. If a "
    "kernel-mode driver mistakenly writes to the wrong virtual address, it could compromise "
    "data belonging to the operating system or another driver.",
    ("guest/drivers-pe/ticket.c", "guest/drivers-pe/scribble.c", "guest/apps/devread.c"))
def shared_kernel_space(stage: Stage) -> None:
    """Act 1: ticket.sys alone. Act 2: ticket.sys, then scribble.sys."""
    apps = [("devread", "\\Device\\Ticket"), ("devread", "\\Device\\Ticket")]
    alone = _ticket_act(stage, "ticket.sys alone hands out tickets to two processes",
                        ["ticket.sys"], apps)
    both = _ticket_act(stage, "ticket.sys, then scribble.sys with its bad index",
                       ["ticket.sys", "scribble.sys"], apps)
    stage.facts.update(alone=alone, both=both)
    target = both["counter_pa"]
    hits = [r for r in both["writes"] if r.pa <= target < r.pa + len(r.data)]
    stage.check("scribble.sys's store lands on ticket.sys's counter, in another driver's "
                "image: the page is mapped and writable, so nothing faults",
                bool(hits) and both["bugcheck"] is None and both["counter_at_start"] == 0,
                f"scribble.sys stored at {', '.join(addr(r.va) for r in both['writes'])}; "
                f"ticket.sys!next_ticket is {addr(both['counter_va'])} (physical "
                f"{addr(target)}), holding {both['counter_at_start']} when the apps start")
    stage.check("ticket.sys now misbehaves: ticket 0 and 1 instead of 1000 and 1001",
                alone["outputs"] == [_ticket(1000), _ticket(1001)] and
                both["outputs"] == [_ticket(0), _ticket(1)],
                f"alone: {[o.split(chr(10))[-2] for o in alone['outputs']]}; with "
                f"scribble.sys: {[o.split(chr(10))[-2] for o in both['outputs']]}")
    by_process = both["counter_pa_by_process"]
    stage.check("One kernel space: ticket.sys's counter is the same physical byte in every "
                "process's page tables",
                len(by_process) == 2 and set(by_process.values()) == {target},
                "next_ticket -> " + ", ".join(f"{addr(pa)} in process {pid}"
                                              for pid, pa in by_process.items()))


def _ticket(n: int) -> str:
    text = f"ticket {n}"
    return f"status 0x00000000\nread {len(text) + 1} bytes\ndata: {text}\n"


def _ticket_act(stage: Stage, title: str, drivers: list[str],
                apps: list[tuple[str, ...]]) -> dict[str, Any]:
    """Run one act; the facts about ticket.sys's counter it shows."""
    facts: dict[str, Any] = {"counter_pa_by_process": {}}
    with stage.act(title, apps=apps, drivers=drivers, dispatches=False,
                   watch_driver="scribble.sys", kernel_focus=True) as act:
        ex = act.machine.executive

        def counter_pa(cr3: int) -> int:
            cpu = ex.cpu
            return mmu.walk(ex.mem, facts["counter_va"], "read", cr3=cr3, cpl=0, cr0=cpu.cr0,
                            cr4=cpu.cr4, efer=cpu.efer).pa

        def observe(event: Event, d: dict[str, Any]) -> None:
            if event is Event.DRIVER_LOAD and d["driver"].image.name == "ticket.sys":
                facts["counter_va"] = d["driver"].image.symbols["next_ticket"]
            elif event is Event.THREAD_DISPATCH and "counter_at_start" not in facts:
                facts["counter_pa"] = counter_pa(ex.mm.system.cr3)
                value = ex.mem.read(facts["counter_pa"], 4)
                facts["counter_at_start"] = int.from_bytes(value, "little")

        def at_exit(proc) -> None:
            facts["counter_pa_by_process"][proc.pid] = counter_pa(proc.space.cr3)
        act.on_event(observe)
        ex.exit_observers.append(at_exit)
        result = act.run()
        facts["writes"] = act.witness.driver_writes.get("scribble.sys", ())
        facts["outputs"] = [output(p) for p in act.procs]
        facts["bugcheck"] = result.bugcheck
    return facts
