"""MOV to CR0, CR3 and CR4 executed by guest code (a driver at ring 0), made to reach the CPU.

SDM Vol. 2B "MOV - Move to/from Control Registers" and Vol. 3A 4.10.4.1: a MOV to CR3
invalidates the current PCID's non-global translations (without CR4.PCIDE: all of them
but the global ones), and none with bit 63 set (PCIDE only; bit 63 is not stored); a MOV
to CR4 that changes PGE, or clears PCIDE, invalidates everything; CR0.WP, CR4.SMEP and
CR4.SMAP decide what the page walker grants. Unicorn executes the MOV itself and changes
QEMU's register only: the machine's copies (``Cpu.cr0``/``cr3``/``cr4``, which the Python
walker, the STLB's PCID tags and its cached rights use) would never see it, and QEMU keeps
bit 63 in CR3 and sets reserved CR4 bits without a fault (measured, Unicorn 2.1.4). So the
machine finds guest MOVs to CR0/CR3/CR4 and makes them with ``Cpu.check_control`` and
``Cpu.guest_control`` (the executive's own ``set_control`` rules), with the mechanism
emu.hw.invlpg uses for INVLPGs (emu.hw.sites: this module says what such a MOV is and does):

* **Code in driver images** (``watch``, at load time): the executable pages of each image
  are scanned once for the bytes of MOV CRn, r64 (0F 22 /r, n = 0, 3 or 4, no REX.R), each
  hit confirmed by decoding it; a code hook goes on each MOV and on the boundary after it.
  The first hook checks the value (the source register, as the MOV will see it): a value
  the SDM refuses is #GP(0) at the MOV, nothing changed; otherwise the MOV is noted as
  executing, and the second hook, before the next instruction, completes it.
* **Code a driver writes at run time** (``watch_range``: executable NonPagedPool and the
  MDL views): one block hook over the range. QEMU ends a translated block after each MOV
  to a control register (measured), so such a MOV is the last instruction of its block:
  each block run there is decoded (kept per address and bytes) and one that ends in a MOV
  to CR0/CR3/CR4 is completed at the next block boundary or at the run's end. A refused
  value found there is #GP(0) at the MOV too: QEMU's registers are put back first.

MOV from CR0/CR3/CR4 needs no hook: QEMU's register is kept equal to the machine's (a
completed MOV to CR3 leaves it without bit 63). At CPL 3 every MOV to or from a control
register is #GP(0), which Unicorn raises itself (STATUS_PRIVILEGED_INSTRUCTION).

Not covered (as for INVLPG): ring-0 code that is neither in a driver image nor in those
ranges, and a MOV written over an image's code after it was scanned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import x86_const as ux

from emu.hw.exceptions import ControlRegisterFault, CpuException, Vector
from emu.hw.faultaddr import decode
from emu.hw.sites import Sites, block_site, find_sites

if TYPE_CHECKING:
    from emu.hw.cpu import Cpu

CONTROL_REGISTERS = ("cr0", "cr3", "cr4")
# An optional REX byte without REX.R (0x40-0x43, 0x48-0x4B: REX.R would name CR8-CR15),
# 0F 22 (MOV CRn, r64), then a ModRM whose reg field is 0, 3 or 4 (the mod field is
# ignored: SDM Vol. 2B, MOV CR). The scan looks for these bytes; capstone confirms.
_MODRM = bytes(m for m in range(256) if (m >> 3) & 7 in (0, 3, 4))
_MOV_CR = re.compile(rb"(?=[\x40-\x43\x48-\x4b]?\x0f\x22[" + re.escape(_MODRM) + rb"])")


@dataclass(frozen=True)
class CrMove:
    """One MOV to CR0, CR3 or CR4 in guest code: its address, length, the control register
    and the general-purpose register it is loaded from."""

    address: int
    size: int
    control: str                # "cr0", "cr3" or "cr4"
    source: int                 # the UC_X86_REG_* of the 64-bit source register

    @property
    def end(self) -> int:
        """The address of the instruction after it."""
        return self.address + self.size


def decode_move(va: int, code: bytes) -> CrMove | None:
    """The MOV to CR0/CR3/CR4 that starts ``code`` (at ``va``, 64-bit code), or None."""
    from capstone import x86_const as cx  # imported by the first decode, not at start-up

    insn = decode(code, va)
    if insn is None or insn.mnemonic != "mov" or len(insn.operands) != 2:
        return None
    dst, src = insn.operands
    if dst.type != cx.X86_OP_REG or src.type != cx.X86_OP_REG:
        return None
    control, source = insn.reg_name(dst.reg), insn.reg_name(src.reg)
    if control not in CONTROL_REGISTERS or not source.startswith("r"):
        return None
    return CrMove(va, insn.size, control, getattr(ux, f"UC_X86_REG_{source.upper()}"))


def find_moves(va: int, code: bytes) -> list[CrMove]:
    """Every instruction start in ``code`` (loaded at ``va``) that is a MOV to CR0, CR3 or
    CR4, found by its bytes and confirmed by decoding it (any start, prefixes included)."""
    return find_sites(va, code, _MOV_CR, decode_move, 4)


def block_move(va: int, code: bytes) -> CrMove | None:
    """The MOV to CR0/CR3/CR4 that ends the translated block ``code`` at ``va``, or None
    (QEMU ends a block after each such MOV, so it can only be the last instruction)."""
    return block_site(va, code, "mov", decode_move)


class CrWrite(Sites[CrMove]):
    """The guest MOVs to CR0/CR3/CR4 of one CPU: the hooks (emu.hw.sites) that make each
    one reach the CPU's own control registers (``Cpu.guest_control``) when it completes."""

    moves = Sites.sites                        # the MOVs hooked now (loaded images), by address
    find = staticmethod(find_moves)
    block = staticmethod(block_move)

    def __init__(self, cpu: Cpu) -> None:
        super().__init__(cpu)
        self.completed = 0                         # guest MOVs made to reach the CPU

    def begin(self, site: CrMove, exact: bool) -> tuple[CrMove, int | None] | None:
        """``exact``: the hook is on the MOV itself, so its value (the source register, as
        the MOV will see it) is known and checked now (SDM Vol. 2B MOV CR: #GP(0), nothing
        changed, for a value refused); at a block's entry it is read and checked when the
        MOV completes."""
        if not exact:
            return (site, None)
        value = self._uc.reg_read(site.source)
        try:
            self._cpu.check_control(**{site.control: value})
        except ControlRegisterFault as fault:
            self._cpu.raise_fault(CpuException(Vector.GP, site.address, 0,
                                               reason=f"{fault} (mov {site.control})"))
            return None
        return (site, value)

    def complete(self, site: CrMove, value: int | None) -> bool:
        """The MOV completed: the CPU's register takes the value. ``value`` None: a MOV in
        run-time code, whose value is read now (a MOV to a control register writes no
        general-purpose register) and checked now; refused, it is #GP(0) at the MOV with
        QEMU's registers put back as they were. Never a stop."""
        cpu = self._cpu
        if value is None:
            value = self._uc.reg_read(site.source)
            try:
                cpu.check_control(**{site.control: value})
            except ControlRegisterFault as fault:
                cpu.resync_control()
                cpu.set_reg("rip", site.address)
                cpu.raise_fault(CpuException(Vector.GP, site.address, 0,
                                             reason=f"{fault} (mov {site.control})"))
                return False
        self.completed += 1
        cpu.guest_control(site.control, value)
        return False
