"""What gdb sees of the executive: its threads (each a gdb thread, named by process and thread
id) and its loaded images (gdb's shared library list).

Thread ids. The executive's client ids are Windows's: process and thread ids are multiples of
4 drawn from one table, so a thread id alone names a thread. When gdb offers the
multiprocess extensions (``multiprocess+`` in qSupported) a thread travels as ``pPID.TID``
(GDB manual, E.1 "Overview": thread-id syntax), so that gdb knows its process; else as
``TID``. While no process is on the CPU (a DriverEntry at boot) the kernel runs as thread 1
of process 1: no client id is odd, so it names nobody else.

Libraries. ``qXfer:libraries:read`` answers gdb's Windows-style library list (GDB manual,
"Library List Format"): one ``<library name=PATH><segment address=A/></library>`` per loaded
driver, where A is where the image's first section was mapped
(for a PE driver: its base plus the RVA of .text, the first section), which is what gdb
relocates an object file's first segment to (solib-target.c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from emu.debugger.rsp import ProtocolError, parse_hex
from emu.hw.descriptors import Selector
from emu.nt import dump
from emu.nt.kernel import USER_RFLAGS
from emu.nt.process import ProcessState, Thread, ThreadState

if TYPE_CHECKING:
    from emu.nt.kernel import Executive

KERNEL = 1                 # the pid and tid of "no process on the CPU" (client ids are even)
ANY, ALL = 0, -1           # thread-id wildcards: any thread, all threads


@dataclass(frozen=True)
class ThreadId:
    """One gdb thread: process ``pid``, thread ``tid`` (KERNEL, KERNEL: the kernel)."""

    pid: int
    tid: int

    def wire(self, multiprocess: bool) -> str:
        """``p4.8`` with the multiprocess extensions, else ``8``."""
        return f"p{self.pid:x}.{self.tid:x}" if multiprocess else f"{self.tid:x}"


KERNEL_THREAD = ThreadId(KERNEL, KERNEL)


def parse_thread_id(text: bytes) -> tuple[int | None, int]:
    """A packet's thread id: ``TID`` -> (None, TID); ``pPID`` -> (PID, ALL); ``pPID.TID``
    -> (PID, TID). -1 is all and 0 any (either part). ProtocolError if malformed."""
    if text[:1] == b"p":
        pid_text, dot, tid_text = text[1:].partition(b".")
        pid = parse_hex(pid_text, "process id")
        tid = parse_hex(tid_text, "thread id") if dot else ALL
        if pid < ALL or tid < ALL:
            raise ProtocolError(f"bad thread id {text!r}")
        return pid, tid
    tid = parse_hex(text, "thread id")
    if tid < ALL:
        raise ProtocolError(f"bad thread id {text!r}")
    return None, tid


def current(ex: Executive, cr3_pid: int | None) -> ThreadId:
    """The thread on the CPU: the executive's current thread, else a thread of the process
    whose address space is loaded (``cr3_pid``), else the kernel."""
    thread = ex.current_thread
    if thread is not None:
        return ThreadId(thread.process.pid, thread.tid)
    proc = next((p for p in ex.processes if p.pid == cr3_pid), None)
    if proc is None or not proc.threads:
        return KERNEL_THREAD
    thread = next((t for t in proc.threads if t.state is not ThreadState.TERMINATED),
                  proc.threads[0])
    return ThreadId(proc.pid, thread.tid)


def listed(ex: Executive, on_cpu: ThreadId) -> list[ThreadId]:
    """gdb's thread list: the one on the CPU first, then every thread that has not ended of
    every process that has not ended, in creation order."""
    out = [on_cpu]
    for proc in ex.processes:
        if proc.state is ProcessState.TERMINATED:
            continue
        for thread in proc.threads:
            tid = ThreadId(proc.pid, thread.tid)
            if thread.state is not ThreadState.TERMINATED and tid != on_cpu:
                out.append(tid)
    return out


def thread_object(ex: Executive, tid: ThreadId) -> Thread | None:
    """The executive's thread behind ``tid`` (None for the kernel, or one that is gone)."""
    proc = next((p for p in ex.processes if p.pid == tid.pid), None)
    if proc is None:
        return None
    return next((t for t in proc.threads if t.tid == tid.tid), None)


def saved_registers(thread: Thread, cpu_registers: dict[str, int]) -> dict[str, int]:
    """A thread off the CPU: the CPU's shared registers, with its saved context over them
    (the context a context switch saved: emu.nt.dump.THREAD_REGISTERS) and its process's
    CR3; one that has never run shows the state it will start in (KiStartUserThread,
    emu.nt.kernel: its start routine, its stack, its argument in RDI, IF set, ring 3
    selectors; every other general register 0)."""
    proc = thread.process
    if thread.context is None:
        code = Selector.USER_CODE if proc.bits == 64 else Selector.USER_CODE32
        # The control registers other than CR3 are the processor's, whichever thread runs.
        shared = {name: cpu_registers[name] for name in ("cr0", "cr4", "efer")
                  if name in cpu_registers}
        return {**shared, "rip": thread.start_rip, "rsp": thread.start_rsp,
                "rdi": thread.start_arg, "rflags": USER_RFLAGS, "cs": code,
                "ss": Selector.USER_DATA, "cr3": proc.space.cr3}
    regs = dict(cpu_registers)
    regs.update(dump.context_registers(thread.context))
    regs["cr3"] = proc.space.cr3
    return regs


def describe(ex: Executive, tid: ThreadId, ring: int | None) -> str:
    """What ``info threads`` shows beside a thread (qThreadExtraInfo, and the body of its
    entry in qXfer:threads): ``pid 12 threads, tid 16, running, ring 3``."""
    if tid == KERNEL_THREAD:
        return "kernel (no process on the CPU), ring 0"
    thread = thread_object(ex, tid)
    name = thread.process.name if thread is not None else "?"
    state = thread.state.value if thread is not None else "gone"
    where = f", ring {ring}" if ring is not None else ", not started"
    return f"pid {tid.pid} {name}, tid {tid.tid}, {state}{where}"


def threads_xml(entries: list[tuple[ThreadId, str, str]], multiprocess: bool) -> bytes:
    """qXfer:threads:read's document (GDB manual, "Thread List Format"): (id, name, extra)."""
    rows = "".join(f"<thread id={quoteattr(t.wire(multiprocess))} core=\"0\" "
                   f"name={quoteattr(name)}>{_text(extra)}</thread>"
                   for t, name, extra in entries)
    return f'<?xml version="1.0"?>\n<threads>{rows}</threads>\n'.encode()


def libraries_xml(ex: Executive) -> bytes:
    """qXfer:libraries:read's document: every driver still loaded, each at the address of
    its first mapped section. Apps are not listed: an app is the program gdb was given (as
    windows-nat lists a process's DLLs, not its .exe); listed too, gdb holds it twice at
    one address and its breakpoints there stop nowhere."""
    rows = []
    for driver in ex.drivers:
        if driver.unloaded:
            continue
        image = driver.image
        first = min((s.va for s in image.sections), default=image.base)
        rows.append((image.path, first))
    body = "".join(f"<library name={quoteattr(str(path))}><segment address=\"{address:#x}\"/>"
                   "</library>" for path, address in rows)
    return f'<?xml version="1.0"?>\n<library-list>{body}</library-list>\n'.encode()


def _text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
