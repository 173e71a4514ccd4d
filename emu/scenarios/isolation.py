"""Scenarios about what keeps user mode in its place.

    private-handles                 a handle value means nothing in another process
    app-crash-is-contained          an access violation ends one process; the rest go on
    kernel-addresses-are-protected  ring-3 reads, writes and calls of kernel addresses
    privileged-instructions         cli, hlt and mov cr3 at ring 3
"""

from __future__ import annotations

from typing import Any

from emu.fmt import addr
from emu.hw.cpu import RFLAGS_IF
from emu.hw.exceptions import Vector
from emu.hw.mmu import PTE, PFErr
from emu.nt.events import Event
from emu.nt.layout import KERNEL_GDT, KERNEL_SPACE_START
from emu.nt.mm.pfn import FrameUse
from emu.nt.ob import HandleError
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import Service
from emu.scenarios import describe
from emu.scenarios.registry import scenario
from emu.scenarios.stage import Stage, output

IMAGE = (0x400000, 0x404000)          # the guest apps' three image pages and .text

KERNEL_CODE_DESCRIPTOR = KERNEL_GDT + 0x10      # GDT[2], selector 0x10: kwrite's target


@scenario(
    "private-handles",
    "a handle value from one process means nothing in another",
    "Windows creates a process for it. This process provides the application with a "
    "private virtual address space and a private handle table.",
    ("guest/apps/waiter.c", "guest/apps/handles.c"))
def private_handles(stage: Stage) -> None:
    """waiter holds an event as handle 4; handles, in another process, tries NtSetEvent(4)."""
    seen: dict[str, Any] = {}
    with stage.act("waiter holds an event as handle 4; handles calls NtSetEvent(4)",
                   apps=[("waiter",), ("handles", "4")],
                   syscalls=[Service.NtCreateEvent, Service.NtSetEvent]) as act:
        waiter, other = act.proc("waiter"), act.proc("handles")

        def observe(event: Event, d: dict[str, Any]) -> None:
            if event not in (Event.SYSCALL, Event.SYSCALL_RETURN) or \
                    d["thread"].process is not other or d["number"] != Service.NtSetEvent:
                return
            if event is Event.SYSCALL:
                value = d["args"][0]
                seen["value"] = value
                seen["there"] = _named(waiter, value)
                seen["here"] = _named(other, value)
                obj = _object(waiter, value)
                seen["before"] = getattr(obj, "state", None)
                seen["object"] = obj
                act.witness.say(describe.who(other), "ring 0", f"the executive looks up "
                                f"handle {value} in the caller's table: {seen['here']} "
                                f"(in {describe.who(waiter)}'s table it names "
                                f"{seen['there']})")
            else:
                seen["result"] = d["result"]
                seen["after"] = getattr(seen.get("object"), "state", None)
        act.on_event(observe)
        act.run()
        outputs = {p.name: output(p) for p in act.procs}
    stage.facts.update(handle=seen.get("value"), named_in_owner=seen.get("there"),
                       named_in_other=seen.get("here"), result=seen.get("result"),
                       event_state=(seen.get("before"), seen.get("after")), outputs=outputs)
    stage.check("While one process holds an event as handle 4, the same value in another "
                "process names nothing: STATUS_INVALID_HANDLE",
                seen.get("there") == "an Event" and seen.get("here") == "nothing" and
                seen.get("result") == NTSTATUS.STATUS_INVALID_HANDLE,
                f"handle {seen.get('value')}: {seen.get('there')} in waiter, "
                f"{seen.get('here')} in handles; NtSetEvent returned "
                f"{_status(seen.get('result'))}")
    stage.check("The owner's event is untouched by the other process's call",
                seen.get("before") is False and seen.get("after") is False and
                "thread exit 7" in outputs.get("waiter", ""),
                f"waiter's event signalled before/after the call: {seen.get('before')}/"
                f"{seen.get('after')}; waiter's output ends "
                f"{outputs.get('waiter', '').splitlines()[-1:]}")


def _object(proc, value: int):
    try:
        return proc.handles.lookup(value)
    except HandleError:
        return None


def _named(proc, value: int) -> str:
    obj = _object(proc, value)
    return "nothing" if obj is None else f"an {obj.object_type.value}"


def _status(value: int | None) -> str:
    return "nothing (no call seen)" if value is None else f"{value & 0xFFFF_FFFF:#010x}"


@scenario(
    "app-crash-is-contained",
    "an app dies of an access violation; the others finish; the system stays up",
    "Each application runs in isolation, ensuring that if one crashes, it doesn't affect "
    "other applications or the operating system.",
    ("guest/apps/counter.c", "guest/apps/crasher.c"))
def app_crash_is_contained(stage: Stage) -> None:
    """Two counters share the CPU with a process that writes to address 0."""
    crash: dict[str, int] = {}
    later: dict[str, int] = {}
    with stage.act("two counters and a crasher share the CPU",
                   apps=[("counter", "a", "3"), ("crasher", "write0"), ("counter", "b", "3")],
                   focus=[IMAGE], dispatches=False) as act:
        crasher = act.proc("crasher")

        def observe(event: Event, d: dict[str, Any]) -> None:
            if event is Event.PROCESS_EXIT and d["process"] is crasher:
                crash["clock"] = d["clock"]
            elif event is Event.SYSCALL and d["number"] == Service.NtWriteConsole and \
                    "clock" in crash and d["thread"].process is not crasher:
                who = " ".join(d["thread"].process.args[:1])
                later[who] = later.get(who, 0) + 1
        act.on_event(observe)
        result = act.run()
        pfn = act.machine.executive.mm.pfn
        kept = sum(1 for e in pfn.entries if e.owner == crasher.pid and e.use is not
                   FrameUse.FREE)
        counters = [p for p in act.procs if p.name == "counter"]
        info = crasher.exception
        outs = [output(p) for p in counters]
    stage.facts.update(crasher_status=crasher.exit_status, access=info and info.access,
                       address=info and info.address, counter_exits=[p.exit_status
                                                                     for p in counters],
                       counter_outputs=outs, lines_after_crash=later, frames_kept=kept,
                       bugcheck=result.bugcheck, stopped=result.stopped)
    stage.check("The crasher dies of an access violation writing address 0",
                info is not None and info.code == NTSTATUS.STATUS_ACCESS_VIOLATION and
                info.access == "write" and info.address == 0,
                f"crasher's exit status {crasher.exit_status:#010x}: "
                f"{describe.exception(info) if info else 'no exception'}")
    stage.check("The other applications finish their work, after the crash too",
                [p.exit_status for p in counters] == [0, 0] and
                outs == ["a 1\na 2\na 3\n", "b 1\nb 2\nb 3\n"] and sum(later.values()) > 0,
                f"counters exit {[p.exit_status for p in counters]}, lines printed after the "
                f"crash: {later}")
    stage.check("The operating system is unaffected: no bug check, and every frame of the "
                "dead process is back on the free list",
                result.bugcheck is None and result.stopped is None and kept == 0,
                f"bug check: {result.bugcheck and result.bugcheck.name}; frames still owned "
                f"by the crasher: {kept}")


@scenario(
    "kernel-addresses-are-protected",
    "ring-3 code reading, writing and calling kernel addresses: the U/S bit stops it",
    "A process running in user mode can't access virtual addresses that are reserved for "
    "the operating system. Limiting the virtual address space of a user-mode application "
    "prevents the application from modifying or damaging critical operating system data.",
    ("guest/apps/badread.c", "guest/apps/kwrite.c", "guest/apps/kexec.c"))
def kernel_addresses_are_protected(stage: Stage) -> None:
    """badread reads the kernel's code page, kwrite writes the GDT, kexec calls the kernel."""
    faults: dict[str, Any] = {}
    with stage.act("badread, kwrite and kexec touch the kernel half from ring 3",
                   apps=[("badread",), ("kwrite",), ("kexec",)], focus=[IMAGE],
                   dispatches=False, explain_walks=True) as act:
        gdt = act.machine.executive.mm.system.lookup(KERNEL_CODE_DESCRIPTOR)
        mem = act.machine.mem
        before = mem.read(gdt.pfn * 4096 + (KERNEL_CODE_DESCRIPTOR & 0xFFF), 8)

        def observe(event: Event, d: dict[str, Any]) -> None:
            if event is Event.EXCEPTION and d["exc"].cpl == 3:
                faults[d["thread"].process.name] = d["exc"]
        act.on_event(observe)
        act.run()
        after = mem.read(gdt.pfn * 4096 + (KERNEL_CODE_DESCRIPTOR & 0xFFF), 8)
        infos = {p.name: p.exception for p in act.procs}
    kinds = {"badread": ("read", 0), "kwrite": ("write", 1), "kexec": ("call", 8)}
    stage.facts.update(params={n: i.params if i else None for n, i in infos.items()},
                       faults=faults, gdt=(before, after))
    for name, (verb, kind) in kinds.items():
        info, exc = infos.get(name), faults.get(name)
        stage.check(f"{name}: the {verb} of a kernel address ends in "
                    "STATUS_ACCESS_VIOLATION, and nothing else",
                    info is not None and info.code == NTSTATUS.STATUS_ACCESS_VIOLATION and
                    info.params[:1] == (kind,) and (info.address or 0) >= KERNEL_SPACE_START,
                    f"{info.name if info else 'no exception'}, parameters "
                    f"{[addr(p) for p in info.params] if info else []}")
        stage.check(f"{name}: the page is there (P=1 at every level); the U/S bit alone "
                    "refuses ring 3",
                    _us_blocks(exc),
                    _walk_summary(exc))
    stage.check("The kernel's data is unchanged: the GDT's kernel code descriptor",
                before == after, f"before {before.hex()}, after {after.hex()}")


def _us_blocks(exc) -> bool:
    """A protection #PF from user mode whose walk is present everywhere, with U/S=0."""
    if exc is None or exc.vector != Vector.PF or not exc.walk:
        return False
    code = exc.error_code
    present = all(step.value & PTE.P for step in exc.walk)
    return present and bool(code & PFErr.P) and bool(code & PFErr.U) and \
        any(not step.value & PTE.US for step in exc.walk) and "U/S=0" in exc.reason


def _walk_summary(exc) -> str:
    if exc is None:
        return "no ring-3 fault was seen"
    levels = ", ".join(f"{s.name} P={s.value & 1} US={int(bool(s.value & PTE.US))}"
                       for s in exc.walk)
    return f"{levels}; error code {exc.error_code:#x}; {exc.reason}"


@scenario(
    "privileged-instructions",
    "cli, hlt and mov cr3 at ring 3: #GP, and only the offender ends",
    "Each application runs in isolation, ensuring that if one crashes, it doesn't affect "
    "other applications or the operating system.",
    ("guest/apps/privileged.c", "guest/apps/counter.c"))
def privileged_instructions(stage: Stage) -> None:
    """Three processes try cli, hlt and mov cr3, 0; a counter runs beside them."""
    seen: dict[str, Any] = {}
    with stage.act("privileged cli, hlt, mov-cr3 and a counter",
                   apps=[("privileged", "cli"), ("privileged", "hlt"),
                         ("privileged", "mov-cr3"), ("counter", "c", "3")],
                   focus=[IMAGE], dispatches=False, explain_walks=True) as act:
        def observe(event: Event, d: dict[str, Any]) -> None:
            if event is Event.EXCEPTION and d["exc"].cpl == 3:
                proc = d["thread"].process
                seen[proc.args[0]] = (d["exc"], act.machine.executive.cpu.reg("rflags"))
        act.on_event(observe)
        act.run()
        procs = {p.args[0]: p for p in act.procs}
        cr3s = set(act.witness.cr3_loads)
        legal = {p.space.cr3 for p in act.procs} | {act.machine.executive.mm.system.cr3}
    stage.facts.update(exceptions=seen, cr3_loads=cr3s, legal_cr3=legal,
                       statuses={k: p.exit_status for k, p in procs.items()})
    for insn, mnemonic in (("cli", "cli"), ("hlt", "hlt"), ("mov-cr3", "mov cr3")):
        proc, (exc, _) = procs[insn], seen.get(insn, (None, 0))
        info = proc.exception
        stage.check(f"`{mnemonic}` at ring 3 raises #GP and ends that process with "
                    "STATUS_PRIVILEGED_INSTRUCTION",
                    exc is not None and exc.vector == Vector.GP and exc.cpl == 3 and
                    info is not None and info.code == NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION
                    and info.instruction.startswith(mnemonic),
                    f"{'#GP' if exc and exc.vector == Vector.GP else exc} at CPL "
                    f"{exc.cpl if exc else '?'} on `{info.instruction if info else '?'}`, "
                    f"status {proc.exit_status:#010x}")
    _, cli_flags = seen.get("cli", (None, 0))
    stage.check("Nothing changed: interrupts stayed enabled (RFLAGS.IF=1 after the `cli`), "
                "CR3 only ever held the executive's own page tables, the counter finished",
                bool(cli_flags & RFLAGS_IF) and cr3s <= legal and
                output(procs["c"]) == "c 1\nc 2\nc 3\n",
                f"RFLAGS {cli_flags:#x}; CR3 values loaded: "
                f"{', '.join(addr(v) for v in sorted(cr3s))}; counter: "
                f"{output(procs['c']).split()}")
