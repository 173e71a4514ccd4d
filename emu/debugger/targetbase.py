"""The debugger's view of a machine: what a live machine and a crash dump share.

``Target`` holds what both share (the page walk through emu.hw.mmu, virtual memory,
registers by any name, symbols, disassembly); ``LiveTarget`` reads a running machine
(emu.debugger.live) and ``DumpTarget`` a crash dump (emu.debugger.dumptarget). Memory
is read as ring 0 sees the page tables, with RFLAGS.AC set so that SMAP does not hide
user pages, and without touching an Accessed or Dirty bit or the TLB: looking at the
machine never changes it.
"""

from __future__ import annotations

from typing import Any

import capstone

from emu.debugger import symbols
from emu.debugger.records import (
    HandleRecord,
    ImageInfo,
    IrpRef,
    PfnRecord,
    ProcessInfo,
    RegionRecord,
    TargetError,
    TlbEntry,
)
from emu.hw import mmu
from emu.hw.registers import GPRS
from emu.nt import layout
from emu.nt.mm import softpte
from emu.nt.process import ExceptionInfo

SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "efer")
FULL_REGISTERS = (*GPRS, "rip", "rflags", *SEGMENTS, "fs_base", "gs_base", *CONTROL)
MASK64 = (1 << 64) - 1


def _subregisters() -> dict[str, tuple[str, int, int]]:
    """name -> (full register, shift, width) for eax, ax, al, ah, r8d, r8w, r8b, eip..."""
    table: dict[str, tuple[str, int, int]] = {}
    for r in ("ax", "bx", "cx", "dx"):
        full = "r" + r
        table.update({"e" + r: (full, 0, 32), r: (full, 0, 16), r[0] + "l": (full, 0, 8),
                      r[0] + "h": (full, 8, 8)})
    for r in ("si", "di", "bp", "sp"):
        full = "r" + r
        table.update({"e" + r: (full, 0, 32), r: (full, 0, 16), r + "l": (full, 0, 8)})
    for n in range(8, 16):
        full = f"r{n}"
        table.update({full + "d": (full, 0, 32), full + "w": (full, 0, 16),
                      full + "b": (full, 0, 8)})
    table.update({"eip": ("rip", 0, 32), "eflags": ("rflags", 0, 32)})
    return table


SUBREGISTERS = _subregisters()
_CS: dict[int, capstone.Cs] = {}


def decoder(bits: int) -> capstone.Cs:
    """A shared Capstone decoder (no operand details) for 64- or 32-bit code."""
    if bits not in _CS:
        _CS[bits] = capstone.Cs(capstone.CS_ARCH_X86,
                                capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
    return _CS[bits]


def unmapped_reason(va: int, fault: Exception) -> str:
    """Why ``va`` has no translation, in words: which level is not present, or the bad bit."""
    if isinstance(fault, mmu.GeneralProtection):
        return (f"{va:#x}: not canonical (bits 63..47 must all equal bit 47): an access is a "
                "#GP, not a #PF")
    assert isinstance(fault, mmu.PageFault)
    step = fault.steps[-1]
    where = f"the {step.name} (level {step.level}) at physical {step.entry_address:#x}"
    if fault.error_code & mmu.PFErr.RSVD:
        return f"{va:#x}: bad page tables: {fault.reason} ({where})"
    if not fault.error_code & mmu.PFErr.P:
        text = f"{va:#x}: not mapped: {where} is not present"
        if step.level == 1 and step.value:
            text += f"; its software bits say: {softpte.decode(step.value).describe()}"
        return text
    return f"{va:#x}: {fault.reason}"


class Target:
    """What every command reads; subclasses supply the primitives marked below."""

    live = False

    # -- primitives ----------------------------------------------------------------------

    def registers(self, pid: int | None = None) -> dict[str, int]:
        """Every register of FULL_REGISTERS: the CPU's, or the saved ones of ``pid``'s first
        live thread when it is not on the CPU; TargetError if it has none."""
        raise NotImplementedError

    def current_pid(self) -> int | None:
        """The process whose thread is on the CPU (else whose address space CR3 holds)."""
        raise NotImplementedError

    def processes(self) -> list[ProcessInfo]:
        """Every process the executive knows, in creation order."""
        raise NotImplementedError

    def images(self) -> list[ImageInfo]:
        """Apps (one per process, ``unloaded`` once its address space is gone) and drivers."""
        raise NotImplementedError

    def bugcheck(self) -> Any:
        """The emu.nt.bugcheck.BugCheck that stopped the machine, or None."""
        raise NotImplementedError

    def memory(self) -> mmu.Memory:
        """Physical RAM as the walker reads it (open bus beyond the end)."""
        raise NotImplementedError

    @property
    def ram_size(self) -> int:
        """Bytes of physical RAM."""
        raise NotImplementedError

    def write_physical(self, pa: int, data: bytes) -> None:
        """Store bytes in physical RAM (live only)."""
        raise TargetError("a crash dump is read-only")

    def set_register(self, name: str, value: int) -> None:
        """Change a general register, RIP or RFLAGS of the CPU (live only)."""
        raise TargetError("a crash dump is read-only")

    def regions(self, pid: int) -> list[RegionRecord] | None:
        """The VADs of ``pid`` as runs of one state and protection; None if not recorded."""
        raise NotImplementedError

    def pfn(self, number: int) -> PfnRecord:
        """The PFN database's record of frame ``number``."""
        raise NotImplementedError

    def handles(self, pid: int) -> list[HandleRecord]:
        """The handle table of ``pid``, by value."""
        raise NotImplementedError

    def irql(self) -> int:
        """The current IRQL (at the bug check, for a dump)."""
        raise NotImplementedError

    def irps(self) -> list[IrpRef]:
        """The IRPs the I/O manager has not finished."""
        raise NotImplementedError

    def devices(self) -> list[tuple[str, int, str]]:
        """(name, DEVICE_OBJECT address, driver) of every device."""
        raise NotImplementedError

    def pcid(self, pid: int | None = None) -> int | None:
        """The PCID in CR3[11:0] now (or in ``pid``'s CR3 when its threads run); None where
        it is not known (a dump)."""
        return None

    def tlb(self) -> list[TlbEntry]:
        """The translations cached now (TargetError where there is no TLB to read)."""
        raise TargetError("a crash dump holds no TLB: the cache is not part of the saved state")

    def descriptor_tables(self) -> dict[str, tuple[int, ...]]:
        """{"gdtr": (base, limit), "tr": (selector, base, limit)}."""
        raise NotImplementedError

    def exception_of(self, pid: int) -> ExceptionInfo | None:
        """The exception that ended ``pid``, if one did."""
        raise NotImplementedError

    def check(self) -> list[str]:
        """The memory manager's and object manager's accounting checks (emu.nt.mm.check,
        emu.nt.ob_check): broken rules in words."""
        raise TargetError("check needs a live machine: a crash dump has no memory manager")

    # -- processes and address spaces ----------------------------------------------------

    def process(self, pid: int) -> ProcessInfo:
        """The process ``pid``; TargetError naming the ones there are."""
        procs = self.processes()
        for p in procs:
            if p.pid == pid:
                return p
        known = ", ".join(str(p.pid) for p in procs) or "none"
        raise TargetError(f"no process {pid} (processes: {known})")

    def cr3_of(self, pid: int | None) -> int:
        """The CR3 of ``pid`` (None: the one loaded now); TargetError if it has none left."""
        if pid is None:
            return self.registers()["cr3"]
        p = self.process(pid)
        if not p.has_space:
            raise TargetError(f'process {pid} "{p.name}" has ended: its address space is gone')
        return p.cr3

    def owner_of(self, cr3: int) -> int | None:
        """The process whose live address space ``cr3`` selects (None: the system's)."""
        return next((p.pid for p in self.processes() if p.has_space and p.cr3 == cr3), None)

    def cr3_for(self, va: int, pid: int | None) -> int:
        """The CR3 to walk ``va`` with: the kernel half is the same in every address space,
        so a kernel address of an ended process is walked in the loaded one."""
        if pid is not None and va >= layout.KERNEL_SPACE_START:
            p = self.process(pid)
            if not p.has_space:
                return self.cr3_of(None)
        return self.cr3_of(pid)

    def walk(self, va: int, pid: int | None = None, access: str = "read", cpl: int = 0, *,
             rflags: int | None = None, cr3: int | None = None) -> mmu.Translation:
        """emu.hw.mmu.walk of ``va`` in ``pid``'s tables (or those at ``cr3``) for this access
        and ring, never setting A/D; raises mmu.PageFault or mmu.GeneralProtection.
        ``rflags`` None: AC set (SMAP off), as a debugger reads."""
        regs = self.registers()
        return mmu.walk(self.memory(), va & MASK64, access,
                        cr3=self.cr3_for(va, pid) if cr3 is None else cr3,
                        cpl=cpl, cr0=regs["cr0"], cr4=regs["cr4"], efer=regs["efer"],
                        rflags=mmu.RFLAGS_AC if rflags is None else rflags)

    def translate(self, va: int, pid: int | None = None) -> int:
        """The physical address of ``va``; TargetError saying why there is none."""
        try:
            return self.walk(va, pid).pa
        except (mmu.PageFault, mmu.GeneralProtection) as fault:
            raise TargetError(unmapped_reason(va & MASK64, fault)) from None

    def read_physical(self, pa: int, n: int) -> bytes:
        """``n`` bytes of RAM at ``pa``; TargetError beyond its end."""
        if pa < 0 or n < 0 or pa + n > self.ram_size:
            raise TargetError(f"physical {pa:#x}: beyond the end of RAM "
                              f"({self.ram_size // (1 << 20)} MiB, up to {self.ram_size:#x})")
        return self.memory().read(pa, n)

    def read_virtual(self, va: int, n: int, pid: int | None = None) -> bytes:
        """``n`` bytes at ``va`` in ``pid``'s address space; TargetError naming why an address
        is not mapped."""
        out = bytearray()
        while len(out) < n:
            at = (va + len(out)) & MASK64
            chunk = min(n - len(out), layout.PAGE_SIZE - (at & 0xFFF))
            out += self.read_physical(self.translate(at, pid), chunk)
        return bytes(out)

    def read_prefix(self, va: int, n: int, pid: int | None = None) -> bytes:
        """As many of ``n`` bytes at ``va`` as are mapped, stopping at the first gap."""
        out = bytearray()
        while len(out) < n:
            at = (va + len(out)) & MASK64
            try:
                pa = self.translate(at, pid)
            except TargetError:
                break
            chunk = min(n - len(out), layout.PAGE_SIZE - (at & 0xFFF))
            out += self.read_physical(pa, chunk)
        return bytes(out)

    def read_u64(self, va: int, pid: int | None = None) -> int:
        """The little-endian quadword at ``va``."""
        return int.from_bytes(self.read_virtual(va, 8, pid), "little")

    def write_virtual(self, va: int, data: bytes, pid: int | None = None) -> None:
        """Store bytes at ``va`` whatever the page's rights (a debugger's write); live only."""
        if not self.live:
            raise TargetError("a crash dump is read-only")
        done = 0
        while done < len(data):
            at = (va + done) & MASK64
            n = min(len(data) - done, layout.PAGE_SIZE - (at & 0xFFF))
            self.write_physical(self.translate(at, pid), data[done:done + n])
            done += n

    # -- registers -----------------------------------------------------------------------

    def register(self, name: str, pid: int | None = None) -> int:
        """A register by name (``rax``, ``eax``, ``al``, ``r8d``, ``cr3``, ``fs_base``...)."""
        key = name.lower().lstrip("$")
        regs = self.registers(pid)
        if key in regs:
            return regs[key]
        if key in SUBREGISTERS:
            full, shift, width = SUBREGISTERS[key]
            return (regs[full] >> shift) & ((1 << width) - 1)
        raise TargetError(f"no register '{name}'")

    def register_names(self) -> list[str]:
        """Every register name ``register`` knows, for completion."""
        return [*FULL_REGISTERS, *SUBREGISTERS]

    def cpl(self, pid: int | None = None) -> int:
        """The privilege level in ``pid``'s registers (CS.RPL)."""
        return self.registers(pid)["cs"] & 3

    # -- symbols and code ----------------------------------------------------------------

    def _app_image(self, pid: int | None) -> ImageInfo | None:
        pid = self.current_pid() if pid is None else pid
        return next((i for i in self.images() if i.kind == "app" and i.pid == pid), None)

    def resolve_symbol(self, name: str, pid: int | None = None) -> int:
        """The address of ``main``, ``hello!main``, ``echo.sys!DispatchRead`` or
        ``echo!DispatchRead`` (the view's image first, then drivers, then other apps)."""
        images = self.images()
        own = self._app_image(pid)
        drivers = [i for i in images if i.kind == "driver"]
        preferred = ([own] if own else []) + drivers
        return symbols.lookup(name, [*preferred, *images, symbols.NTDLL], preferred)

    def symbolize(self, address: int, pid: int | None = None) -> str:
        """``hello!main+0x12``, ``echo.sys!DispatchRead``, ``nt!DbgPrint``, or ``0x...``."""
        image = self.image_at(address, pid)
        if image is not None:
            return symbols.label(image, address)
        return symbols.export_label(address) or f"{address:#x}"

    def image_at(self, address: int, pid: int | None = None) -> ImageInfo | None:
        """The image holding ``address`` for ``pid`` (a driver, its app, or ntdll)."""
        if address >= layout.KERNEL_SPACE_START:
            return symbols.containing((i for i in self.images() if i.kind == "driver"),
                                      address)
        own = self._app_image(pid)
        if own is not None and own.base <= address < own.end:
            return own
        if symbols.NTDLL.base <= address < symbols.NTDLL.end:
            return symbols.NTDLL
        return None

    def symbol_names(self) -> list[str]:
        """Every symbol, bare and module-qualified, sorted, for completion."""
        names = set()
        for image in self.images():
            names.update(image.symbols)
            names.update(f"{image.name}!{s}" for s in image.symbols)
        return sorted(names)

    def code_bits(self, va: int, pid: int | None = None) -> int:
        """32 for code of a 32-bit process below 4 GiB, else 64."""
        if va >= 1 << 32:
            return 64
        pid = self.current_pid() if pid is None else pid
        if pid is None:
            return 64
        return self.process(pid).bits

    def disassemble(self, va: int, count: int,
                    pid: int | None = None) -> list[tuple[int, bytes, str]]:
        """``count`` instructions from ``va``: (address, bytes, "mnemonic operands"); an
        undecodable byte is ``(bad)``. TargetError if nothing at ``va`` is mapped."""
        code = self.read_prefix(va, count * 15, pid)
        if not code:
            self.translate(va, pid)               # raises, saying why
        md, out, at = decoder(self.code_bits(va, pid)), [], 0
        while len(out) < count and at < len(code):
            insn = next(md.disasm(code[at:at + 15], va + at, 1), None)
            if insn is None:
                if len(code) - at < 15 and len(code) < count * 15:
                    break                         # cut short by an unmapped page
                out.append((va + at, code[at:at + 1], "(bad)"))
                at += 1
                continue
            out.append((insn.address, bytes(insn.bytes),
                        f"{insn.mnemonic} {insn.op_str}".strip()))
            at += insn.size
        return out
