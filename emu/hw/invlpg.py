"""INVLPG executed by guest code (a driver at ring 0), made to reach the STLB.

SDM Vol. 2A INVLPG and Vol. 3A 4.10.4.1: INVLPG m invalidates the TLB entries of the page
of linear address m for the current PCID, and the global entries of that page whatever
their PCID (with the paging-structure caches of the current PCID). Unicorn executes the
instruction itself and drops the page from QEMU's own TLB only; the machine's STLB
(emu/hw/native.c) would keep the translation, and serve it to the next miss of that page,
a translation the hardware has dropped. So the machine finds guest INVLPGs and makes the
same drop in the STLB when one completes (``Cpu.guest_invlpg``):

* **Code in driver images** (``watch``, at load time): the executable pages of each image
  are scanned once for INVLPG's bytes (0F 01 /7 with a memory operand), each hit confirmed
  by decoding it; a code hook goes on each INVLPG and on the instruction boundary after it
  (Unicorn emits a code hook's call only into the instructions of its range: code that has
  no INVLPG pays nothing, measured). The first hook notes that the INVLPG is executing, the
  second, before the next instruction, completes it: the STLB drops the page. A stop
  before the INVLPG (a breakpoint, the budget's end) drops nothing; a run that ends right
  after it completes it in ``settle``.
* **Code a driver writes at run time** (``watch_range``: executable NonPagedPool and the
  MDL views in system PTEs): one block hook over the range. QEMU ends a translated block
  after each INVLPG (translate.c, ``gen_eob`` after ``helper_invlpg``), so an INVLPG is
  always the last instruction of its block: each block run there is decoded (its bytes as
  they are now, read through the page tables; the decoding is kept per address and
  bytes), and a block that ends in an INVLPG is completed at the next block boundary, in
  the range or at the run's end, exactly as above. Code outside the ranges pays nothing;
  code in them one call per block (not per instruction).

The operand's linear address is computed as the CPU does (SDM Vol. 1 3.7.5, Vol. 3A
3.4.4): base + index * scale + displacement (RIP-relative from the next instruction),
truncated to 32 bits under an address-size prefix (0x67), plus the FS or GS base with
such a segment override. A non-canonical address is a NOP (SDM Vol. 2A INVLPG, "64-bit
mode": no fault, nothing invalidated). At CPL 3, INVLPG is #GP(0), which Unicorn raises
itself (STATUS_PRIVILEGED_INSTRUCTION for the process): nothing is hooked at ring 3.

Not covered: ring-0 code that is neither in a driver image nor in those ranges (the
executive maps none that runs INVLPG), and an INVLPG written over code after its image was
scanned (a driver patching its own image: the rewritten bytes are not scanned again).

The table of sites, their hooks, the ranges and ``settle`` are emu.hw.sites' (shared with
emu.hw.cr8 and emu.hw.crwrite); this module says what an INVLPG is and does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.hw import sites
from emu.hw.faultaddr import decode

if TYPE_CHECKING:
    from emu.hw.cpu import Cpu

_MASK64 = (1 << 64) - 1
# An optional REX byte, then 0F 01 and a ModRM whose reg field is 7 and whose mod field is
# not 11 (mod 11 with reg 7 is SWAPGS or RDTSCP: SDM Vol. 2A, Table A-6, group 7). The scan
# looks for these bytes; capstone confirms.
_INVLPG = re.compile(rb"(?=[\x40-\x4f]?\x0f\x01[\x38-\x3f\x78-\x7f\xb8-\xbf])")
# Legacy prefixes may come before it (SDM Vol. 2A 2.1.1): an instruction can start at any
# of them (emu.hw.sites.PREFIXES).


@dataclass(frozen=True)
class InvlpgSite:
    """One INVLPG in guest code: its address, its length and its memory operand."""

    address: int
    size: int
    base: str | None            # Capstone's register names (None: no such register)
    index: str | None
    scale: int
    displacement: int
    segment_base: str | None    # "fs_base" or "gs_base" with that segment override
    address_size: int           # 64, or 32 under an address-size prefix

    @property
    def end(self) -> int:
        """The address of the instruction after it."""
        return self.address + self.size

    def linear_address(self, reg) -> int:
        """The linear address of the operand, given ``reg(name)`` -> a register's value
        (SDM Vol. 1 3.7.5: base + index * scale + displacement, RIP-relative from the next
        instruction; 32 bits under 0x67; plus the FS/GS base, Vol. 3A 3.4.4)."""
        ea = self.displacement
        if self.base == "rip" or self.base == "eip":
            ea += self.end
        elif self.base is not None:
            ea += reg(self.base)
        if self.index is not None:
            ea += reg(self.index) * self.scale
        ea &= 0xFFFF_FFFF if self.address_size == 32 else _MASK64
        if self.segment_base is not None:
            ea += reg(self.segment_base)
        return ea & _MASK64


def decode_invlpg(va: int, code: bytes) -> InvlpgSite | None:
    """The INVLPG that starts ``code`` (at ``va``, 64-bit code), or None if it is not one."""
    from capstone import x86_const as cx  # imported by the first decode, not at start-up

    insn = decode(code, va)
    if insn is None or insn.mnemonic != "invlpg" or len(insn.operands) != 1:
        return None
    op = insn.operands[0]
    if op.type != cx.X86_OP_MEM:
        return None
    mem = op.mem
    base = insn.reg_name(mem.base) if mem.base else None
    index = insn.reg_name(mem.index) if mem.index else None
    if index in ("riz", "eiz"):       # Capstone's name for a SIB byte without an index
        index = None
    return InvlpgSite(va, insn.size, base, index, mem.scale, mem.disp & _MASK64,
                      {cx.X86_REG_FS: "fs_base", cx.X86_REG_GS: "gs_base"}.get(mem.segment),
                      32 if 0x67 in insn.prefix else 64)


def find_sites(va: int, code: bytes) -> list[InvlpgSite]:
    """Every instruction start in ``code`` (loaded at ``va``) that is an INVLPG, found by
    its bytes and confirmed by decoding it (any start, prefixes included)."""
    return sites.find_sites(va, code, _INVLPG, decode_invlpg, 3)


def block_invlpg(va: int, code: bytes) -> InvlpgSite | None:
    """The INVLPG that ends the translated block ``code`` at ``va``, or None (QEMU ends a
    block after each INVLPG, so it can only be the last instruction)."""
    return sites.block_site(va, code, "invlpg", decode_invlpg)


class Invlpg(sites.Sites[InvlpgSite]):
    """The guest INVLPGs of one CPU: the hooks (emu.hw.sites) that make each one drop its
    page from the STLB when it completes (``Cpu.guest_invlpg``)."""

    find = staticmethod(find_sites)
    block = staticmethod(block_invlpg)

    def __init__(self, cpu: Cpu) -> None:
        super().__init__(cpu)
        self.completed = 0                         # guest INVLPGs made to reach the STLB

    def complete(self, site: InvlpgSite, _state: None) -> bool:
        """The INVLPG completed: the STLB drops its page (registers are as the INVLPG saw
        them: it writes none); never a stop."""
        self.completed += 1
        self._cpu.guest_invlpg(site.linear_address(self._cpu.reg_named))
        return False
