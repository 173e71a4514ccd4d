"""The debugger's target over a machine that is still there (paused, or done running)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn.x86_const import UC_X86_REG_RIP

from emu.debugger.records import (
    HandleRecord,
    ImageInfo,
    IrpRef,
    PfnRecord,
    ProcessInfo,
    RegionRecord,
    TargetError,
    ThreadInfo,
    TlbEntry,
)
from emu.debugger.targetbase import FULL_REGISTERS, SUBREGISTERS, Target
from emu.hw import mmu
from emu.hw.native import Mode
from emu.hw.registers import GPRS
from emu.nt import dump
from emu.nt.layout import PAGE_SIZE
from emu.nt.mm.check import check_memory
from emu.nt.mm.vad import VadSet
from emu.nt.ob_check import check_objects
from emu.nt.process import ExceptionInfo, Process, Thread, ThreadState

if TYPE_CHECKING:
    from emu.machine import Machine

MODE_NAMES = {Mode.USER: "user", Mode.KERNEL_AC0: "kernel", Mode.KERNEL_AC1: "kernel AC=1"}
_SETTABLE = frozenset({*GPRS, "rip", "rflags"})


class LiveTarget(Target):
    """A machine: registers from its CPU, memory from its RAM, the rest from its executive."""

    live = True

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.ex = machine.executive
        self.cpu = self.ex.cpu

    # -- registers -----------------------------------------------------------------------

    def _cpu_registers(self) -> dict[str, int]:
        cpu = self.cpu
        regs = {name: cpu.reg(name) for name in FULL_REGISTERS[:-5]}
        regs.update(cr0=cpu.cr0, cr2=cpu.reg("cr2"), cr3=cpu.cr3, cr4=cpu.cr4, efer=cpu.efer,
                    cr8=cpu.cr8.value)
        return regs

    def registers(self, pid: int | None = None) -> dict[str, int]:
        """The CPU's registers, or the saved context of ``pid``'s first live thread."""
        if pid is None or pid == self.current_pid():
            return self._cpu_registers()
        proc = self._proc(pid)
        thread = next((t for t in proc.live_threads if t.context is not None), None)
        if thread is None:
            why = "has ended" if not proc.live_threads else "has not run yet"
            raise TargetError(f'process {pid} "{proc.name}" has no saved registers: its '
                              f"thread {why}")
        regs = self._cpu_registers()
        regs.update(dump.context_registers(thread.context))
        regs["cr3"] = proc.space.cr3
        return regs

    def set_register(self, name: str, value: int) -> None:
        """Write a general register (or part of one), RIP or RFLAGS of the CPU."""
        key = name.lower().lstrip("$")
        full, shift, width = SUBREGISTERS.get(key, (key, 0, 64))
        if full not in _SETTABLE:
            raise TargetError(f"cannot set '{name}': only general registers, rip and rflags "
                              "can be set (the executive owns the others)"
                              if full in FULL_REGISTERS else f"no register '{name}'")
        mask = ((1 << width) - 1) << shift
        old = self.cpu.reg(full)
        self.cpu.set_reg(full, (old & ~mask) | ((value << shift) & mask))

    # -- processes -------------------------------------------------------------------------

    def current_pid(self) -> int | None:
        """The process whose thread is on the CPU, else the one whose tables CR3 holds."""
        if self.ex.current is not None:
            return self.ex.current.pid
        return next((p.pid for p in self.ex.processes
                     if p.space.cr3 == self.cpu.cr3 and self._has_space(p)), None)

    def _has_space(self, p: Process) -> bool:
        return p.space in self.ex.mm.spaces

    def _proc(self, pid: int) -> Process:
        for p in self.ex.processes:
            if p.pid == pid:
                return p
        return self.process(pid)            # raises, naming the processes there are

    def _thread_info(self, t: Thread) -> ThreadInfo:
        if t is self.ex.current_thread:
            return ThreadInfo(t.tid, t.state.value, self.cpu.rip)
        if t.state is ThreadState.TERMINATED:
            return ThreadInfo(t.tid, t.state.value)
        if t.context is None:
            return ThreadInfo(t.tid, t.state.value, t.start_rip, started=False)
        # Its RIP alone: naming a frame's owner (pfn) lists the processes, for thousands of
        # frames in a session, and all 26 registers of each context were read each time.
        return ThreadInfo(t.tid, t.state.value, t.context.reg_read(UC_X86_REG_RIP))

    def processes(self) -> list[ProcessInfo]:
        """Every process, with its threads."""
        return [ProcessInfo(p.pid, p.name, p.space.cr3, p.bits, p.state.value,
                            [self._thread_info(t) for t in p.threads], self._has_space(p),
                            p.exit_status, p.parent_pid, p.image.path)
                for p in self.ex.processes]

    def images(self) -> list[ImageInfo]:
        """Each process's app image, then the drivers in load order."""
        out = [ImageInfo(p.image.name, "app", p.pid, min(p.image.pages),
                         max(p.image.pages) + PAGE_SIZE, p.image.path, p.image.symbols,
                         p.image.bits, unloaded=not self._has_space(p))
               for p in self.ex.processes]
        out += [ImageInfo(d.image.name, "driver", None, d.image.base, d.image.end,
                          d.image.path, d.image.symbols, 64, d.unloaded,
                          tuple(d.image.functions), tuple(d.image.sections))
                for d in self.ex.drivers]
        return out

    def exception_of(self, pid: int) -> ExceptionInfo | None:
        """The exception record that ended ``pid``."""
        return self._proc(pid).exception

    def bugcheck(self) -> Any:
        """The bug check, if the machine stopped with one."""
        return self.ex.bugcheck

    # -- memory ----------------------------------------------------------------------------

    def memory(self) -> mmu.Memory:
        """The machine's RAM."""
        return self.ex.mem

    @property
    def ram_size(self) -> int:
        return self.ex.mem.size

    def write_physical(self, pa: int, data: bytes) -> None:
        """Store ``data`` in RAM, then make the CPU forget what it may have cached of it
        (translated code, translations: the bytes may be code or a page table)."""
        self.read_physical(pa, len(data))         # the range check
        self.ex.mem.write(pa, data)
        self.cpu.flush_translated_code()
        self.cpu.flush_tlb()

    def regions(self, pid: int) -> list[RegionRecord] | None:
        """The VADs of ``pid``, one record per run of pages."""
        vads = self._proc(pid).vads
        if not isinstance(vads, VadSet):
            return None
        return [RegionRecord(r.start, r.end, r.state.name[4:].lower(), int(r.protect),
                             v.type.name[4:].lower(), v.base, v.stack)
                for v in vads for r in v.runs]

    def pfn(self, number: int) -> PfnRecord:
        """The PFN record of frame ``number``."""
        if not 0 <= number < self.ex.mem.frames:
            raise TargetError(f"frame {number:#x} is beyond the end of RAM "
                              f"({self.ex.mem.frames:#x} frames)")
        e = self.ex.mm.pfn.entries[number]
        return PfnRecord(number, e.use.value, e.owner, e.va, e.pte_pa, e.slot, e.modified,
                         e.locks, e.had_code)

    def handles(self, pid: int) -> list[HandleRecord]:
        """The handle table of ``pid``."""
        return [HandleRecord(v, obj.object_type.value, dump.handle_detail(obj))
                for v, obj in self._proc(pid).handles.items()]

    def irql(self) -> int:
        return self.ex.irql

    def irps(self) -> list[IrpRef]:
        return [IrpRef(a, r.completed) for a, r in sorted(self.ex.io.irps.items())]

    def devices(self) -> list[tuple[str, int, str]]:
        return [(d.name, d.address, d.driver.image.name)
                for d in sorted(self.ex.io.devices.values(), key=lambda d: d.name)]

    def descriptor_tables(self) -> dict[str, tuple[int, ...]]:
        tables = dump.descriptor_tables(self.cpu)
        return {name: tuple(value) for name, value in tables.items()}

    def check(self) -> list[str]:
        """emu.nt.mm.check.check_memory on this machine's memory manager, then
        emu.nt.ob_check.check_objects on its handle tables and objects."""
        return check_memory(self.ex.mm) + check_objects(self.ex)

    def tlb(self) -> list[TlbEntry]:
        """The STLB's valid entries, sorted by mode and page (QEMU's own TLB cannot be read
        through Unicorn's API)."""
        native = self.cpu.native
        if native.closed:
            raise TargetError("the machine is closed: its TLB is gone")
        spaces = {space.pcid: space.cr3 for space in self.ex.mm.spaces if space.pcid}
        spaces[self.cpu.pcid] = self.cpu.cr3     # PCID 0 names whatever is loaded as 0
        out = [TlbEntry(MODE_NAMES[mode], vpage, value & ~0xFFF, value & 7, pcid,
                        spaces.get(pcid) if pcid is not None else None,
                        pcid is None or pcid in spaces)
               for mode, vpage, value, pcid in native.entries()]
        return sorted(out, key=lambda e: (e.mode, -1 if e.pcid is None else e.pcid, e.vpage))

    def pcid(self, pid: int | None = None) -> int | None:
        """The PCID the CPU caches translations for now (CR3[11:0] with CR4.PCIDE), or the
        one ``pid``'s threads load."""
        if pid is None or pid == self.current_pid():
            return self.cpu.pcid
        return self._proc(pid).space.pcid
