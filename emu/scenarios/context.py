"""The seed's scenario: a driver's DPC runs in an arbitrary thread's context.

    arbitrary-thread-context   slowread asks slow*.sys for data at 0x7F7'93950000; the
                               device interrupts while victim runs (same address, its own
                               page). Neither I/O writes the victim's page; buffered and
                               direct I/O give the data to the requester.
"""

from __future__ import annotations

from typing import Any

from emu.fmt import addr
from emu.nt.events import Event
from emu.nt.layout import KERNEL_SPACE_START, PAGE_SIZE
from emu.nt.process import Process
from emu.nt.syscalls import Service
from emu.scenarios.registry import scenario
from emu.scenarios.stage import Act, Stage
from emu.scenarios.watch import WriteRun, read_user, text_of

PAGE_VA = 0x7F7_93950000
DATA = "data from the slow device"
MINE = "requester's own page"
VICTIMS = "victim's own data, nobody else's"
STEPS = {
    Event.SYSCALL: "Step 1: a user-mode program asks to read data from a device into the "
                   "buffer at 0x7f7'93950000.",
    Event.SYSCALL_RETURN: "Step 2: the driver's dispatch routine starts the device and "
                          "returns STATUS_PENDING to its caller.",
    Event.INTERRUPT: "Step 3: later the device interrupts whatever thread is running, in "
                     "whatever process.",
    Event.DPC: "Step 4: the driver must not write the address the program gave in step 1: "
               "it means something else here.",
}


@scenario(
    "arbitrary-thread-context",
    "a DPC writes the requester's address in whatever process it interrupted",
    "Later, the device interrupts the currently running thread to indicate that the read "
    "operation is complete. Kernel-mode driver routines handle the interrupt on this "
    "arbitrary thread, which belongs to an arbitrary process. At this point, the driver "
    "must not write the data to the starting address that the user-mode program provided "
    "in Step 1.",
    ("guest/drivers-pe/slowneither.c", "guest/drivers-pe/slowbuffered.c",
     "guest/drivers-pe/slowdirect.c", "guest/apps/slowread.c", "guest/apps/victim.c"))
def arbitrary_thread_context(stage: Stage) -> None:
    """The same slow read three ways: neither, buffered and direct I/O."""
    neither = _slow_act(stage, "neither", "the seed's four steps, with neither I/O: the DPC "
                        "writes the raw user address", steps=True)
    buffered = _slow_act(stage, "buffered", "the same request with buffered I/O: the DPC "
                         "fills a system buffer")
    direct = _slow_act(stage, "direct", "the same request with direct I/O: the DPC writes "
                       "through the MDL's kernel mapping")
    stage.facts.update(neither=neither, buffered=buffered, direct=direct)
    n = neither
    stage.check("Step 3: the interrupt arrives while victim runs, and the DPC runs in "
                "victim's address space",
                n["interrupted"] == [n["victim"]] and n["dpc_cr3"] == n["victim_cr3"],
                f"interrupted: process {n['interrupted']}; DPC's CR3 {addr(n['dpc_cr3'])}, "
                f"victim's {addr(n['victim_cr3'])}, requester's {addr(n['requester_cr3'])}")
    stage.check("Step 4 broken (neither I/O): the requester's address, written in the wrong "
                "context, lands in the victim's page; the requester never gets its data",
                _landed(n, "victim") and n["requester_page"] == MINE and
                n["victim_page"].startswith(DATA),
                _story(n))
    b = buffered
    stage.check("Buffered I/O: the DPC writes kernel pool only; the I/O manager copies to "
                "the requester in its own context: right bytes, right process",
                bool(b["runs"]) and all(r.owner is None for r in b["runs"]) and
                b["requester_page"].startswith(DATA) and b["victim_page"] == VICTIMS,
                _story(b))
    d = direct
    stage.check("Direct I/O: with victim's address space current, the DPC writes the "
                "requester's own frame through a kernel address (one frame, two addresses)",
                _landed(d, "requester") and
                all(r.va >= KERNEL_SPACE_START for r in d["runs"]) and
                d["dpc_cr3"] == d["victim_cr3"] and d["requester_page"].startswith(DATA) and
                d["victim_page"] == VICTIMS,
                _story(d))


def _landed(facts: dict[str, Any], who: str) -> bool:
    """Some data store of the DPC hit a frame the PFN database gives to ``who``."""
    return any(r.owner == facts[who] and len(r.data) >= len(DATA) for r in facts["runs"])


def _story(facts: dict[str, Any]) -> str:
    runs = "; ".join(_run_words(r, facts) for r in facts["runs"]) or "no data store seen"
    return (f"DPC stores: {runs}. Requester's page: \"{facts['requester_page']}\"; "
            f"victim's page: \"{facts['victim_page']}\"")


def _run_words(run: WriteRun, facts: dict[str, Any]) -> str:
    whose = {facts["victim"]: "victim's", facts["requester"]: "the requester's"}
    owner = whose.get(run.owner, "no process's (kernel pool)") if run.owner is not None \
        else "no process's (kernel pool)"
    return f"{len(run.data)} bytes at {addr(run.va)} -> frame {addr(run.pfn)}, {owner} page"


def _slow_act(stage: Stage, method: str, title: str, *, steps: bool = False) -> dict[str, Any]:
    """One act: slowread reading from slow<method>.sys while victim runs; its facts."""
    device = f"\\Device\\Slow{method.capitalize()}"
    facts: dict[str, Any] = {}
    with stage.act(title, apps=[("slowread", device), ("victim",)],
                   drivers=[f"slow{method}.sys"], focus=[(PAGE_VA, PAGE_VA + PAGE_SIZE)],
                   syscalls=[Service.NtReadFile], watch_dpc_writes=True) as act:
        requester, victim = act.proc("slowread"), act.proc("victim")
        for proc in (requester, victim):
            act.witness.watch_page(proc, PAGE_VA)
        if steps:                # step 2 is told after the witness tells the call itself
            act.on_event(_step_teller(act, requester, {Event.SYSCALL_RETURN}))
            act.on_event(_step_teller(act, requester, {Event.SYSCALL, Event.INTERRUPT,
                                                       Event.DPC}), before_witness=True)
        pages: dict[int, str] = {}

        def at_exit(proc: Process) -> None:
            pages[proc.pid] = text_of(read_user(proc, PAGE_VA, 64))
        act.machine.executive.exit_observers.append(at_exit)
        act.run()
        dpc = act.witness.dpcs[0] if act.witness.dpcs else None
        facts.update(requester=requester.pid, victim=victim.pid,
                     requester_cr3=requester.space.cr3, victim_cr3=victim.space.cr3,
                     interrupted=list(act.witness.interrupted),
                     dpc_cr3=dpc.cr3 if dpc else None, runs=list(dpc.runs) if dpc else [],
                     requester_page=pages.get(requester.pid, ""),
                     victim_page=pages.get(victim.pid, ""))
    return facts


def _step_teller(act: Act, requester: Process, events: set[Event]):
    """An observer that announces the seed's steps tied to ``events`` as they happen."""
    told: set[Event] = set()

    def tell(event: Event, d: dict[str, Any]) -> None:
        if event not in events or event in told:
            return
        if event in (Event.SYSCALL, Event.SYSCALL_RETURN) and (
                d["thread"].process is not requester or d["number"] != Service.NtReadFile):
            return
        told.add(event)
        act.stage.say(f"  -- {STEPS[event]}")
    return tell
