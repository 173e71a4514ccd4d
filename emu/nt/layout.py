"""Where things live in the virtual address space (the x64 Windows layout, simplified).

    0x00000000'00000000  first 64 KiB: never mapped, so NULL and small offsets fault
    0x00000000'00400000  ELF executables (ET_EXEC) link here
    0x00007FF6'00000000  position-independent images (static-pie) are loaded here
    0x00007FFF'FFFE0000  top of the main thread's user stack (grows down)
    0x00007FFF'FFFEFFFF  MmHighestUserAddress
    0x00007FFF'FFFF0000  MmUserProbeAddress: a 64 KiB no-access gap
    0x00008000'00000000  non-canonical hole: #GP, not #PF
    0xFFFF8000'00000000  the kernel half (PML4 slots 256-511, shared by every process):
                         GDT/TSS, kernel text, the KPCR, kernel stacks, export traps
    0xFFFFA000'00000000  kernel pools (NonPagedPool, NonPagedPoolNx, PagedPool)
    0xFFFFF780'00000000  KUSER_SHARED_DATA (read-only, NX: the times wdm.h's macros read)
    0xFFFFF800'01000000  driver images
"""

from __future__ import annotations

PAGE_SIZE = 4096

MM_LOWEST_USER_ADDRESS = 0x0000_0000_0001_0000
MM_HIGHEST_USER_ADDRESS = 0x0000_7FFF_FFFE_FFFF
MM_HIGHEST_USER_ADDRESS_32 = 0x7FFE_FFFF        # a 32-bit process: the low 2 GB, less 64 KiB
MM_USER_PROBE_ADDRESS = 0x0000_7FFF_FFFF_0000
USER_SPACE_END = 0x0000_8000_0000_0000         # 128 TiB: the user half of the PML4
KERNEL_SPACE_START = 0xFFFF_8000_0000_0000     # PML4 slot 256
KERNEL_PML4_FIRST = 256                        # PML4 slots 256-511 are the kernel half

PIE_IMAGE_BASE = 0x0000_7FF6_0000_0000
USER_STACK_TOP = 0x0000_7FFF_FFFE_0000
USER_STACK_TOP_32 = 0x7FF0_0000                # a 32-bit process's main stack, below 2 GB
USER_STACK_SIZE = 256 * 1024                   # committed; the page below is the guard

# The kernel's own pages, at the start of the kernel half.
KERNEL_GDT = 0xFFFF_8000_0000_0000             # GDT at +0, TSS at +0x800
KERNEL_TSS = KERNEL_GDT + 0x800
KERNEL_TEXT = 0xFFFF_8000_0000_1000            # kernel code: the return-to-user trampoline
KERNEL_PCR = 0xFFFF_8000_0000_2000             # the KPCR (GS base at ring 0; KPRCB at +0x180)
KERNEL_STACK_BASE = 0xFFFF_8000_0001_0000      # kernel stacks, each with a guard page below
KERNEL_STACK_PAGES = 4
KERNEL_EXPORTS = 0xFFFF_8000_0000_4000         # never mapped: each kernel export's address
KERNEL_EXPORTS_SIZE = 0x1000                   #   traps on fetch (16 bytes per export)
KERNEL_POOL = 0xFFFF_A000_0000_0000            # NonPagedPool (executable, as before Windows 8)
KERNEL_POOL_NX = 0xFFFF_A080_0000_0000         # NonPagedPoolNx
KERNEL_POOL_PAGED = 0xFFFF_A100_0000_0000      # PagedPool
KERNEL_POOL_SIZE = 0x0000_0080_0000_0000       # each pool's virtual range
KERNEL_SYSTEM_PTES = 0xFFFF_A180_0000_0000     # MDL mappings (MmGetSystemAddressForMdlSafe)
KI_USER_SHARED_DATA = 0xFFFF_F780_0000_0000    # KUSER_SHARED_DATA (wdm.h's x64 address)
KERNEL_DRIVERS = 0xFFFF_F800_0100_0000         # driver images, one 16 MiB slot each
KERNEL_DRIVER_SLOT = 16 << 20

# Kernel text: an iretq at its start (the way into ring 3), an int3 at +0x10 (where a kernel
# routine run by the executive returns to). The boot stack is kernel stack slot 0.
TRAMPOLINE = KERNEL_TEXT
KERNEL_RETURN = KERNEL_TEXT + 0x10
KERNEL_STACK_TOP = KERNEL_STACK_BASE + (KERNEL_STACK_PAGES + 1) * PAGE_SIZE


def is_user_address(va: int) -> bool:
    """True for addresses in the user half (0 .. 0x00007FFF'FFFFFFFF)."""
    return 0 <= va < USER_SPACE_END
