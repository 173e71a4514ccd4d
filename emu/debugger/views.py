"""The executive's views: ``ps``, ``threads``, ``handles``, ``lm``, ``irp``, ``irql`` and
``check``, as text from a Target. The other views live beside this one: registers and
descriptors (regview), memory, code and stack (memview), the page walk (walkview), the
memory manager's views (mapview) and ``analyze`` (analyze)."""

from __future__ import annotations

import struct

from emu import fmt
from emu.debugger.records import TargetError
from emu.debugger.targetbase import Target
from emu.nt import io
from emu.nt.status import status_name

IRQL_NAMES = {0: "PASSIVE_LEVEL", 1: "APC_LEVEL", 2: "DISPATCH_LEVEL"}
IRQL_MEANING = {
    0: "threads run normally; a page fault on pageable memory is resolved",
    1: "APCs are held off; page faults are still resolved",
    2: "the dispatcher and DPCs run: no thread switch, and no page fault may be taken "
       "(a fault here is bug check 0xD1 or 0x0A)",
}
MAJOR_NAMES = {io.IRP_MJ_CREATE: "IRP_MJ_CREATE", io.IRP_MJ_CLOSE: "IRP_MJ_CLOSE",
               io.IRP_MJ_READ: "IRP_MJ_READ", io.IRP_MJ_WRITE: "IRP_MJ_WRITE",
               io.IRP_MJ_DEVICE_CONTROL: "IRP_MJ_DEVICE_CONTROL"}
_METHODS = ("METHOD_BUFFERED", "METHOD_IN_DIRECT", "METHOD_OUT_DIRECT", "METHOD_NEITHER")


def _marks(target: Target, pid: int, view: int | None) -> str:
    return ("*" if pid == target.current_pid() else " ") + (">" if pid == view else " ")


def ps_text(target: Target, view: int | None = None) -> str:
    """Every process: pid, name, state, bits, CR3, threads, how it ended (``*`` current,
    ``>`` the view)."""
    lines = [f"    {'pid':>4}  {'name':<14} {'state':<11} bits {'CR3':<10} threads  status"]
    for p in target.processes():
        cr3 = f"{p.cr3:#x}" if p.has_space else "(freed)"
        status = "" if p.exit_status is None else fmt.status(p.exit_status)
        live = sum(t.state != "terminated" for t in p.threads)
        lines.append(f"{_marks(target, p.pid, view)}  {p.pid:>4}  {p.name:<14} {p.state:<11} "
                     f"{p.bits:>4} {cr3:<10} {live:>7}  {status}".rstrip())
    if len(lines) == 1:
        lines.append("    (no processes)")
    lines.append("    (* on the CPU, > the view of `process`)")
    return "\n".join(lines)


def threads_text(target: Target, pid: int | None = None) -> str:
    """Threads of every process (or of ``pid``): tid, process, state, where it is."""
    lines = [f"   {'tid':>4} {'pid':>4}  {'process':<14} {'state':<11} rip"]
    current = target.current_pid()
    for p in target.processes():
        if pid is not None and p.pid != pid:
            continue
        for t in p.threads:
            mark = "*" if t.state == "running" and p.pid == current else " "
            where = ""
            if t.rip is not None:
                where = f"{t.rip:#x} {target.symbolize(t.rip, p.pid)}"
                if not t.started:
                    where += " (not started yet)"
            lines.append(f" {mark} {t.tid:>4} {p.pid:>4}  {p.name:<14} {t.state:<11} "
                         f"{where}".rstrip())
    if len(lines) == 1:
        lines.append("   (no threads)")
    return "\n".join(lines)


def handles_text(target: Target, pid: int) -> str:
    """The handle table of ``pid``: value, object type, what it names."""
    proc = target.process(pid)
    records = target.handles(pid)
    lines = [f'handle table of process {pid} "{proc.name}": {len(records)} handle(s)']
    lines += [f"  {h.value:#06x}  {h.type:<8} {h.detail}" for h in records]
    return "\n".join(lines)


def lm_text(target: Target) -> str:
    """Loaded images: apps (per process) and drivers, with their ranges; under a PE driver,
    its sections."""
    lines = [f"  {'start':<18} {'end':<18} {'kind':<6} {'pid':>4}  name"]
    for i in target.images():
        pid = "-" if i.pid is None else str(i.pid)
        note = " (unloaded)" if i.unloaded and i.kind == "driver" else \
            " (process ended)" if i.unloaded else ""
        bits = " 32-bit" if i.bits == 32 else ""
        lines.append(f"  {i.base:#018x} {i.end:#018x} {i.kind:<6} {pid:>4}  {i.name}{bits}"
                     f"{note}" + (f"  [{i.path}]" if i.path else ""))
        # A PE driver's sections as mapped: name, address, virtual size, page rights, and
        # INIT-like sections freed after DriverEntry (IMAGE_SCN_MEM_DISCARDABLE).
        for sec in i.sections:
            lines.append(f"      {sec.name:<8} {sec.va:#018x} {sec.size:#8x} {sec.rights}"
                         + ("  discardable (freed after DriverEntry)" if sec.discardable
                            else ""))
    return "\n".join(lines)


def irql_text(target: Target) -> str:
    """The IRQL and what it allows."""
    level = target.irql()
    name = IRQL_NAMES.get(level, "DIRQL (a device's interrupt level)")
    meaning = IRQL_MEANING.get(level, "a device's interrupt service routine runs; only "
                                      "higher interrupts preempt it")
    when = "at the bug check" if not target.live else "now"
    text = f"IRQL {level} ({name}) {when}: {meaning}"
    bc = target.bugcheck()
    if target.live and bc is not None and bc.irql != level:
        text += f"\n(at the bug check it was {bc.irql}: {IRQL_NAMES.get(bc.irql, 'DIRQL')})"
    return text


def irps_text(target: Target) -> str:
    """The IRPs the I/O manager has not finished (``irp`` without an address)."""
    irps = target.irps()
    if not irps:
        return "no IRP in flight"
    lines = [f"{len(irps)} IRP(s) in flight:"]
    lines += [f"  {r.address:#x}  {'completed, not yet finished' if r.completed else 'pending'}"
              for r in irps]
    return "\n".join(lines)


def irp_text(target: Target, address: int, pid: int | None = None) -> str:
    """An IRP decoded from memory (wdm.h's x64 layout, emu.nt.wdm)."""
    raw = target.read_virtual(address, io.IRP_SIZE, pid)
    kind, size = struct.unpack_from("<hH", raw)
    if kind != io.IO_TYPE_IRP:
        raise TargetError(f"{address:#x}: not an IRP (its Type is {kind}, an IRP's is "
                          f"{io.IO_TYPE_IRP})")
    mdl, system_buffer = struct.unpack_from("<QQ", raw, io.IRP_MDL)
    status, information = struct.unpack_from("<i4xQ", raw, io.IRP_STATUS)
    mode, user_buffer, stack = raw[io.IRP_REQUESTOR_MODE], *struct.unpack_from(
        "<QQ", raw, io.IRP_USER_BUFFER)
    known = {r.address: r for r in target.irps()}
    state = "not known to the I/O manager (finished, or not an IRP it made)"
    if address in known:
        state = "completed, not yet finished" if known[address].completed else "pending"
    lines = [f"IRP at {address:#x}: {state}",
             f"  Type {kind} (IO_TYPE_IRP), Size {size:#x}",
             f"  MdlAddress        {mdl:#x}" + ("  (direct I/O)" if mdl else ""),
             f"  SystemBuffer      {system_buffer:#x}" + ("  (buffered I/O)" if system_buffer
                                                         else ""),
             f"  IoStatus          Status {status & 0xFFFF_FFFF:#010x} "
             f"({status_name(status & 0xFFFF_FFFF)}), Information {information:#x}",
             f"  RequestorMode     {'UserMode' if mode == io.USER_MODE else 'KernelMode'}",
             f"  UserBuffer        {user_buffer:#x}",
             f"  current stack location at {stack:#x}:"]
    lines += _stack_location(target, raw[io.IRP_STACK:], pid)
    if mdl:
        lines += _mdl_lines(target, mdl, pid)
    return "\n".join(lines)


def _mdl_lines(target: Target, mdl: int, pid: int | None) -> list[str]:
    """The MDL of a direct-I/O request: the buffer it describes, its frames, and the
    system address they are mapped at (one frame, two addresses)."""
    head = target.read_virtual(mdl, io.MDL_PFN, pid)
    mapped, start = struct.unpack_from("<QQ", head, io.MDL_MAPPED_VA)
    count, offset = struct.unpack_from("<II", head, io.MDL_BYTE_COUNT)
    pages = (offset + max(count, 1) + 0xFFF) >> 12
    frames = struct.unpack(f"<{pages}Q", target.read_virtual(mdl + io.MDL_PFN, 8 * pages,
                                                             pid))
    lines = [f"  MDL at {mdl:#x}: StartVa {start:#x} + ByteOffset {offset:#x}, ByteCount "
             f"{count}, frames " + " ".join(f"{f:#x}" for f in frames)]
    lines.append(f"    MappedSystemVa  {mapped:#x}  (the same frames at a kernel address, "
                 "valid in every process)" if mapped else
                 "    MappedSystemVa  0  (not mapped in system space yet)")
    return lines


def _stack_location(target: Target, raw: bytes, pid: int | None) -> list[str]:
    major = raw[io.STACK_MAJOR]
    (device,) = struct.unpack_from("<Q", raw, io.STACK_DEVICE)
    names = {address: f"{name} ({driver})" for name, address, driver in target.devices()}
    lines = [f"    MajorFunction   {MAJOR_NAMES.get(major, 'IRP_MJ_?')} ({major:#x})"]
    if major == io.IRP_MJ_DEVICE_CONTROL:
        out_len, in_len, code = struct.unpack_from("<III", raw, io.STACK_LENGTH)
        (type3,) = struct.unpack_from("<Q", raw, io.STACK_LENGTH + 16)
        lines += [f"    IoControlCode   {code:#x} ({_METHODS[code & 3]})",
                  f"    InputBufferLength {in_len}, OutputBufferLength {out_len}"]
        if code & 3 == io.METHOD_NEITHER:
            lines.append(f"    Type3InputBuffer {type3:#x}")
    else:
        (length,) = struct.unpack_from("<I", raw, io.STACK_LENGTH)
        lines.append(f"    Length          {length}")
    lines.append(f"    DeviceObject    {device:#x}" +
                 (f"  {names[device]}" if device in names else ""))
    return lines


def check_text(target: Target) -> str:
    """The memory manager's and the object manager's accounting checks (emu.nt.mm.check,
    emu.nt.ob_check), live only."""
    problems = target.check()
    if not problems:
        return ("the books balance: every frame is on the right list, every PTE agrees with "
                "its PFN record, the working sets hold exactly the valid pageable pages, "
                "the kernel half is the same in every PML4, every handle names a live "
                "object whose handle count agrees with the handle tables, and no object is "
                "alive that nothing keeps")
    return "\n".join([f"{len(problems)} broken rule(s):", *(f"  {p}" for p in problems)])
