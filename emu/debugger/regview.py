"""Registers, control registers bit by bit, the GDT and the TSS (Intel SDM Vol. 3A §2.5,
§3.4.5, §7.7), as text."""

from __future__ import annotations

import enum
import struct

from emu.debugger.records import TargetError
from emu.debugger.targetbase import Target
from emu.hw.descriptors import Selector
from emu.hw.exceptions import CpuException, Vector
from emu.hw.mmu import CR0, CR4, EFER
from emu.hw.registers import GPRS
from emu.nt import trap


class RFLAGS(enum.IntFlag):
    """RFLAGS (SDM Vol. 1 §3.4.3); IOPL is the two-bit field 12-13."""

    CF = 1 << 0    # carry
    PF = 1 << 2    # parity
    AF = 1 << 4    # auxiliary carry
    ZF = 1 << 6    # zero
    SF = 1 << 7    # sign
    TF = 1 << 8    # trap: single-step
    IF = 1 << 9    # interrupts enabled
    DF = 1 << 10   # direction: string instructions count down
    OF = 1 << 11   # overflow
    NT = 1 << 14   # nested task
    RF = 1 << 16   # resume: suppress instruction breakpoints once
    VM = 1 << 17   # virtual-8086 mode
    AC = 1 << 18   # alignment check / SMAP override at ring 0
    VIF = 1 << 19  # virtual interrupt flag
    VIP = 1 << 20  # virtual interrupt pending
    ID = 1 << 21   # CPUID available


IOPL_SHIFT = 12

# What each control-register bit does (SDM Vol. 3A §2.5, §2.2.1), by register: members of
# different IntFlags with equal values are equal keys, so each register has its own table.
MEANINGS: dict[str, dict[str, str]] = {
    "cr0": {"PE": "protection enable: protected mode",
            "MP": "monitor coprocessor (WAIT and TS)",
            "EM": "x87 emulation: x87/SSE instructions fault",
            "TS": "task switched: lazy FPU", "ET": "extension type (always 1)",
            "NE": "numeric errors reported natively (#MF)",
            "WP": "write protect: R/W=0 binds ring 0 too",
            "AM": "alignment mask (with RFLAGS.AC)", "PG": "paging"},
    "cr4": {"PSE": "page size extensions (32-bit paging only)",
            "PAE": "physical address extension: needed for 4-level paging",
            "PGE": "global pages survive a CR3 load", "OSFXSR": "OS saves SSE state (FXSAVE)",
            "OSXMMEXCPT": "OS handles SIMD exceptions (#XM)",
            "PCIDE": "PCIDs: CR3[11:0] tags what the TLB caches; a switch keeps it",
            "SMEP": "SMEP: ring 0 may not execute user pages",
            "SMAP": "SMAP: ring 0 may not touch user pages unless RFLAGS.AC=1"},
    "efer": {"SCE": "syscall/sysret enabled", "LME": "long mode enable",
             "LMA": "long mode active", "NXE": "no-execute enable: PTE bit 63 is NX"},
}
_CONTROL = (("cr0", CR0), ("cr4", CR4), ("efer", EFER))


def flags_text(rflags: int) -> str:
    """``ZF PF IF  IOPL=0`` (set flags, highest first)."""
    names = [f.name for f in sorted(RFLAGS, key=lambda f: -f.value) if rflags & f]
    return " ".join(names) + f"  IOPL={rflags >> IOPL_SHIFT & 3}"


def named_bits(name: str, value: int) -> str:
    """The names of the set bits of a flags or control register (rflags, eflags, cr0, cr4,
    efer), else ''."""
    key = name.lower().lstrip("$")
    if key in ("rflags", "eflags"):
        return flags_text(value)
    flags = dict(_CONTROL).get(key)
    return bits_text(value, flags) if flags is not None else ""


def bits_text(value: int, flags: type[enum.IntFlag]) -> str:
    """The set bits of a control register by name, highest first."""
    return " ".join(f.name for f in sorted(flags, key=lambda f: -f.value) if value & f)


def _selector_name(selector: int) -> str:
    """``USER_CODE, used as 0x33`` for the GDT slot of ``selector`` (RPL ignored)."""
    for s in Selector:
        if s.value and s.value & ~3 == selector & ~3:
            return s.name + (f", used as {s.value:#x}" if s.value & 3 else "")
    return ""


def gdt_entries(target: Target) -> list[tuple[int, int, int]]:
    """(selector, low quadword, high quadword or 0) of every GDT slot (a 64-bit system
    descriptor takes two)."""
    tables = target.descriptor_tables()
    base, limit = tables["gdtr"]
    raw = target.read_virtual(base, limit + 1)
    words = struct.unpack(f"<{len(raw) // 8}Q", raw[:len(raw) // 8 * 8])
    out, i = [], 0
    while i < len(words):
        low = words[i]
        system = low and not low >> 44 & 1
        high = words[i + 1] if system and i + 1 < len(words) else 0
        out.append((i * 8, low, high))
        i += 2 if system else 1
    return out


def describe_descriptor(low: int, high: int = 0) -> str:
    """A descriptor in words: kind, DPL, present, base and limit (SDM Figure 3-8, 7-4)."""
    if not low:
        return "null"
    dpl, present = low >> 45 & 3, low >> 47 & 1
    kind = low >> 40 & 0xF
    limit = (low & 0xFFFF) | (low >> 48 & 0xF) << 16
    base = (low >> 16 & 0xFFFFFF) | (low >> 56 & 0xFF) << 24
    granular = low >> 55 & 1
    if not low >> 44 & 1:
        base |= (high & 0xFFFF_FFFF) << 32
        name = {0x9: "TSS (64-bit, available)", 0xB: "TSS (64-bit, busy)"}.get(
            kind, f"system type {kind:#x}")
        return f"{name}, DPL {dpl}, {'present' if present else 'NOT present'}, " \
               f"base {base:#x}, limit {limit:#x}"
    if kind & 0x8:
        width = "64-bit" if low >> 53 & 1 else ("32-bit" if low >> 54 & 1 else "16-bit")
        what = f"{width} code ({'execute/read' if kind & 2 else 'execute-only'})"
    else:
        what = f"data ({'read/write' if kind & 2 else 'read-only'})"
    unit = " (4 KiB units)" if granular else ""
    return f"{what}, DPL {dpl}, {'present' if present else 'NOT present'}, " \
           f"base {base:#x}, limit {limit:#x}{unit}"


def segment_line(target: Target, name: str, selector: int) -> str:
    """``cs 0x33  GDT[6] RPL 3: 64-bit code ..., DPL 3`` (the descriptor if readable)."""
    text = f"{name} {selector:#06x}"
    if not selector & ~3:
        return text + "  null selector"
    try:
        table = {sel: (low, high) for sel, low, high in gdt_entries(target)}
    except TargetError:
        return text + f"  GDT[{selector >> 3}] RPL {selector & 3}"
    low, high = table.get(selector & ~7, (0, 0))
    return text + f"  GDT[{selector >> 3}] RPL {selector & 3}: {describe_descriptor(low, high)}"


def registers_text(target: Target, pid: int | None = None) -> str:
    """General registers, RIP with its symbol, RFLAGS decoded, segments with the CPL,
    and the control registers by their set bits."""
    regs = target.registers(pid)
    lines = []
    for i in range(0, len(GPRS), 4):
        lines.append("  ".join(f"{r:<3} {regs[r]:#018x}" for r in GPRS[i:i + 4]))
    lines.append(f"rip {regs['rip']:#018x}  {target.symbolize(regs['rip'], pid)}")
    lines.append(f"rflags {regs['rflags']:#010x}  {flags_text(regs['rflags'])}")
    cpl = regs["cs"] & 3
    lines.append(segment_line(target, "cs", regs["cs"]) +
                 f"  -> CPL {cpl} ({'user' if cpl == 3 else 'kernel'} mode)")
    for seg in ("ss", "ds", "es", "fs", "gs"):
        lines.append(segment_line(target, seg, regs[seg]))
    lines.append(f"fs_base {regs['fs_base']:#x}  gs_base {regs['gs_base']:#x}")
    for name, flags in _CONTROL:
        lines.append(f"{name:<4} {regs[name]:#018x}  {bits_text(regs[name], flags)}")
    lines.append(f"cr2  {regs['cr2']:#018x}  the last page-fault address")
    lines.append(_cr3_text(regs, target.pcid(pid), "cr3  ",
                           f"PML4 at physical {regs['cr3'] & ~0xFFF:#x}"))
    if "cr8" in regs:
        lines.append(f"cr8  {regs['cr8']:#018x}  the IRQL")
    return "\n".join(lines)


def _cr3_text(regs: dict[str, int], pcid: int | None, head: str, base: str) -> str:
    """CR3's line: its value with the PCID in bits 11:0 when CR4.PCIDE (SDM Vol. 3A 4.10.1)."""
    if not regs["cr4"] & CR4.PCIDE:
        return f"{head}{regs['cr3']:#018x}  {base}; PCID not used (CR4.PCIDE = 0)"
    if pcid is None:
        return f"{head}{regs['cr3']:#018x}  {base}; PCID not recorded"
    return f"{head}{regs['cr3'] | pcid:#018x}  {base}, PCID {pcid} (bits 11:0)"


def control_text(target: Target) -> str:
    """CR0, CR4 and EFER bit by bit, then CR2, CR3 and CR8 (``info cr``)."""
    regs = target.registers()
    lines = []
    for name, flags in _CONTROL:
        lines.append(f"{name} = {regs[name]:#018x}")
        for f in sorted(flags, key=lambda f: f.value):
            bit = f.value.bit_length() - 1
            lines.append(f"  bit {bit:>2}  {f.name:<10} {int(bool(regs[name] & f))}  "
                         f"{MEANINGS[name].get(f.name, '')}")
    lines.append(f"cr2 = {regs['cr2']:#018x}  the linear address of the last #PF")
    lines.append(_cr3_text(regs, target.pcid(), "cr3 = ", "the PML4's physical address "
                           f"(bits 12-51: {regs['cr3'] & ~0xFFF:#x})"))
    if "cr8" in regs:
        lines.append(f"cr8 = {regs['cr8']:#018x}  the task priority (TPR bits 7:4): "
                     "the IRQL on x64 Windows")
    return "\n".join(lines)


def gdt_text(target: Target) -> str:
    """Every GDT descriptor decoded, with the selector names Windows x64 uses."""
    base, limit = target.descriptor_tables()["gdtr"]
    lines = [f"GDTR base {base:#x} limit {limit:#x} ({(limit + 1) // 8} slots)"]
    for selector, low, high in gdt_entries(target):
        name = _selector_name(selector) if low else ""
        lines.append(f"  {selector:#06x}  {describe_descriptor(low, high)}"
                     + (f"  [{name}]" if name else ""))
    return "\n".join(lines)


def tss_text(target: Target) -> str:
    """The TSS that TR names: RSP0-2, IST1-7 and the I/O map base (SDM Figure 7-11)."""
    selector, base, limit = target.descriptor_tables()["tr"]
    raw = target.read_virtual(base, 0x68)
    rsp = struct.unpack_from("<3Q", raw, 0x04)
    ist = struct.unpack_from("<7Q", raw, 0x24)
    (iomap,) = struct.unpack_from("<H", raw, 0x66)
    lines = [f"TR {selector:#06x}: TSS at {base:#x}, limit {limit:#x}",
             f"  RSP0 {rsp[0]:#018x}  the stack the CPU loads on entering ring 0 "
             "(the running thread's kernel stack)",
             f"  RSP1 {rsp[1]:#018x}  RSP2 {rsp[2]:#018x}  (rings 1 and 2: unused)"]
    lines += [f"  IST{i + 1} {value:#018x}" for i, value in enumerate(ist) if value]
    if not any(ist):
        lines.append("  IST1-7 all 0: no interrupt uses a separate stack")
    bitmap = "beyond the limit: no I/O permission bitmap, so IN/OUT at CPL > IOPL fault" \
        if iomap > limit else "an I/O permission bitmap follows"
    lines.append(f"  I/O map base {iomap:#x}: {bitmap}")
    return "\n".join(lines)


# SDM Vol. 3A Table 6-1: each vector's class (fault, trap, abort, interrupt) and error code.
_VECTOR_KINDS = {
    Vector.DE: ("fault", False, "divide error (DIV, IDIV)"),
    Vector.DB: ("fault/trap", False, "debug (single step, data breakpoint)"),
    Vector.NMI: ("interrupt", False, "non-maskable interrupt"),
    Vector.BP: ("trap", False, "breakpoint (INT3)"),
    Vector.OF: ("trap", False, "overflow (INTO)"),
    Vector.BR: ("fault", False, "BOUND range exceeded"),
    Vector.UD: ("fault", False, "invalid opcode (UD2, an undefined encoding)"),
    Vector.NM: ("fault", False, "device not available (x87/SSE with CR0.TS or EM)"),
    Vector.DF: ("abort", True, "double fault"),
    Vector.TS: ("fault", True, "invalid TSS"),
    Vector.NP: ("fault", True, "segment not present"),
    Vector.SS: ("fault", True, "stack-segment fault"),
    Vector.GP: ("fault", True, "general protection"),
    Vector.PF: ("fault", True, "page fault (CR2 = the address)"),
    Vector.MF: ("fault", False, "x87 floating-point error"),
    Vector.AC: ("fault", True, "alignment check"),
    Vector.MC: ("abort", False, "machine check"),
    Vector.XM: ("fault", False, "SIMD floating-point exception"),
}


def idt_text() -> str:
    """The exception vectors (SDM Table 6-1) and what the executive makes of each at ring 3
    and at ring 0 (emu.nt.trap): the machine loads no IDT of its own."""
    lines = ["No IDT in guest memory: the machine never executes LIDT. Unicorn hands every "
             "exception vector to the machine (UC_HOOK_INTR) and the executive's trap "
             "handler (emu/nt/trap.py) plays KiTrap*: at ring 3 an exception record for the "
             "process, at ring 0 a bug check. Device interrupts are raised by the executive "
             "itself (irql).",
             f"  {'vec':>3} {'name':<5} {'class':<10} {'err':<4} {'at ring 3':<31} "
             f"{'at ring 0':<28} what"]
    for vector, (kind, has_code, what) in _VECTOR_KINDS.items():
        user = trap.user_exception(CpuException(vector, 0, 3), "", stack_guard=None).name
        kernel = trap.kernel_bugcheck(CpuException(vector, 0, 0), "").name
        lines.append(f"  {int(vector):>3} #{vector.name:<4} {kind:<10} "
                     f"{'yes' if has_code else 'no':<4} {user:<31} {kernel:<28} {what}")
    lines.append("  (#GP at ring 3 from a privileged instruction is "
                 "STATUS_PRIVILEGED_INSTRUCTION; #PF at ring 0 on a read-only page is "
                 "ATTEMPTED_WRITE_TO_READONLY_MEMORY, on NX memory "
                 "ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY)")
    return "\n".join(lines)
