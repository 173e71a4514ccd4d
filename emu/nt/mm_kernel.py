"""Mm's kernel-mode access: memory as ring-0 code reaches it.

The executive reads and writes guest memory the way kernel code would: through the
current page tables at CPL 0 (CR0.WP honoured, Accessed and Dirty set). A not-present
page below DISPATCH_LEVEL is first brought back (MmAccessFault for a ring-0 fault: the
current process's pageable user pages, PagedPool); an address still invalid is the bug
check PAGE_FAULT_IN_NONPAGED_AREA (0x50).

A part of emu.nt.kernel.Executive (a mixin): it reaches the other parts through ``self``
(emu.nt.interfaces.Kernel says what they offer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.hw import mmu
from emu.hw.mmu import PFErr
from emu.nt import layout
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.kedefs import DISPATCH_LEVEL
from emu.nt.mm import virtual
from emu.nt.mm.virtual import FaultResolution
from emu.nt.process import ProcessState

if TYPE_CHECKING:
    from emu.nt.interfaces import Kernel as _Executive  # the other parts, via self
    from emu.nt.mm.address_space import AddressSpace
else:
    _Executive = object



class MmKernelAccess(_Executive):
    """Mm's kernel-mode access part of the executive."""

    def write_user(self, space: AddressSpace, va: int, data: bytes) -> None:
        """Store bytes into present pages of ``space`` from the kernel (no probing: the
        kernel's own mappings, or pages it just made)."""
        done = 0
        while done < len(data):
            at = va + done
            n = min(len(data) - done, layout.PAGE_SIZE - (at & 0xFFF))
            mapping = space.lookup(at)
            if mapping is None or mapping.pfn >= len(self.mm.pfn.entries):
                # A page the kernel made is gone or names no frame of RAM: a driver has
                # garbled the page tables (PAGE_FAULT_IN_NONPAGED_AREA, a write).
                raise BugCheck(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA,
                               (at, 2, self.cpu.rip, 0), self.cpu.rip,
                               "the kernel wrote one of its own pages, and its PTE is not "
                               "valid any more (a corrupted page table)")
            pfn = mapping.pfn
            self.mem.write(pfn * layout.PAGE_SIZE + (at & 0xFFF), data[done:done + n])
            self.mm.pfn.entries[pfn].modified = True      # no PTE.D: the CPU did not write
            done += n

    def page_in_for_kernel(self, va: int | None, access: str) -> bool:
        """MmAccessFault for a not-present fault taken at ring 0: below DISPATCH_LEVEL a
        pageable page (the current process's user pages, PagedPool) is brought back and
        the access retried; at DISPATCH_LEVEL or above nothing may be paged in (the caller
        bug-checks: 0xD1 / 0x0A), even though the data is safe in the pagefile."""
        if va is None or self.irql >= DISPATCH_LEVEL:
            return False
        if va < layout.KERNEL_SPACE_START:
            # The process whose address space is current: a driver attached to another
            # (KeStackAttachProcess) touches that one's pages.
            proc = next((p for p in self.processes if p.space.cr3 == self.cpu.cr3
                         and p.state is not ProcessState.TERMINATED), self.current)
            return proc is not None and \
                virtual.resolve_fault(self, proc, va, access) is FaultResolution.RESOLVED
        return virtual.page_in_system(self, va, access)

    def kernel_walk(self, va: int, access: str) -> int:
        """The physical address ring-0 ``access`` to ``va`` reaches, paging it in first
        when that is allowed (see page_in_for_kernel)."""
        try:
            return self.cpu.walk(va, access, cpl=0, set_accessed_dirty=True).pa
        except mmu.PageFault as fault:
            if fault.error_code & (PFErr.P | PFErr.RSVD) or \
                    not self.page_in_for_kernel(va, access):
                raise
        return self.cpu.walk(va, access, cpl=0, set_accessed_dirty=True).pa

    def kernel_read(self, va: int, n: int) -> bytes:
        """Read kernel-visible memory as ring-0 code would (a fault here: BugCheck)."""
        out = bytearray()
        while len(out) < n:
            at = (va + len(out)) & 0xFFFF_FFFF_FFFF_FFFF    # wraps at 2^64, as on the CPU
            try:
                pa = self.kernel_walk(at, "read")
            except (mmu.PageFault, mmu.GeneralProtection):
                raise BugCheck(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA,
                               (at, 0, self.cpu.rip, 0), self.cpu.rip,
                               "a kernel routine read an invalid address") from None
            chunk = min(n - len(out), layout.PAGE_SIZE - (at & 0xFFF))
            out += self.mem.read(pa, chunk)
        return bytes(out)

    def kernel_write(self, va: int, data: bytes) -> None:
        """Write kernel-visible memory as ring-0 code would (CR0.WP honoured)."""
        done = 0
        while done < len(data):
            at = (va + done) & 0xFFFF_FFFF_FFFF_FFFF
            try:
                pa = self.kernel_walk(at, "write")
            except (mmu.PageFault, mmu.GeneralProtection):
                raise BugCheck(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA,
                               (at, 2, self.cpu.rip, 0), self.cpu.rip,
                               "a kernel routine wrote an invalid address") from None
            n = min(len(data) - done, layout.PAGE_SIZE - (at & 0xFFF))
            self.mem.write(pa, data[done:done + n])
            done += n

    def kernel_read_u64(self, va: int) -> int:
        return int.from_bytes(self.kernel_read(va, 8), "little")

    def kernel_read_string(self, va: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string in kernel-visible memory (at most ``limit`` bytes)."""
        out = bytearray()
        while len(out) < limit:
            chunk = self.kernel_read(va + len(out), min(64, layout.PAGE_SIZE
                                                        - ((va + len(out)) & 0xFFF)))
            end = chunk.find(b"\0")
            if end >= 0:
                return bytes(out + chunk[:end])
            out += chunk
        return bytes(out)
