"""Two hand-assembled ring-3 programs for the kernel-address scenario.

guest/apps/badread reads a kernel address; no guest app writes one or jumps to one. These
two images do, in three instructions each, so that all three kinds of access meet the
same U/S bit. They are built as loader Images (emu.nt.loader), one R X page at 0x401000
as the guest apps' .text, and run like any app; the bytes are listed with their assembly
(Intel SDM Vol. 2 encodings) so a reader can check them.
"""

from __future__ import annotations

import struct

from emu.nt.layout import KERNEL_GDT, KERNEL_TEXT, PAGE_SIZE
from emu.nt.loader import PF_R, PF_X, Image, Segment

TEXT = 0x401000
KERNEL_CODE_DESCRIPTOR = KERNEL_GDT + 0x10      # the GDT entry of selector 0x10 (kernel CS)


def _mov_rbx(value: int) -> bytes:
    return b"\x48\xbb" + struct.pack("<Q", value)            # mov rbx, imm64


def _mov_rax(value: int) -> bytes:
    return b"\x48\xb8" + struct.pack("<Q", value)            # mov rax, imm64


UD2 = b"\x0f\x0b"                                            # ud2: never reached

# kwrite: overwrite the kernel's code-segment descriptor in the GDT from ring 3.
KWRITE = (_mov_rbx(KERNEL_GDT)                               # mov rbx, 0xffff800000000000
          + b"\x48\xc7\x43\x10\x41\x41\x41\x41"              # mov qword ptr [rbx+0x10], 0x41414141
          + UD2)

# kexec: call the kernel's own code (the iretq trampoline) from ring 3.
KEXEC = (_mov_rax(KERNEL_TEXT)                               # mov rax, 0xffff800000001000
         + b"\xff\xd0"                                       # call rax
         + UD2)


def image(name: str, code: bytes) -> Image:
    """An Image whose only page, at TEXT (read + execute), starts with ``code``."""
    page = bytearray(code.ljust(PAGE_SIZE, b"\xcc"))
    return Image(path=f"<{name}: hand-assembled, emu/scenarios/tiny.py>", name=name, base=0,
                 entry=TEXT, segments=[Segment(TEXT, PAGE_SIZE, PF_R | PF_X)],
                 pages={TEXT: page}, page_flags={TEXT: PF_R | PF_X})


def kwrite() -> Image:
    """Ring-3 code that writes 0x41414141 over the kernel CS descriptor in the GDT."""
    return image("kwrite", KWRITE)


def kexec() -> Image:
    """Ring-3 code that calls the kernel's iretq trampoline."""
    return image("kexec", KEXEC)
