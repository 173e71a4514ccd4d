"""The loader refuses malformed images with one line, and maps good ones with their permissions."""

from __future__ import annotations

import struct

import pytest

from emu.hw.mmu import PTE
from emu.nt.loader import LoaderError, load_file, parse_image

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr
PHDR = struct.Struct("<IIQQQQQQ")           # Elf64_Phdr


def hello_bytes(apps) -> bytearray:
    return bytearray((apps / "hello").read_bytes())


def phdrs(data: bytes) -> list[tuple[int, list]]:
    e = EHDR.unpack_from(data)
    phoff, phentsize, phnum = e[5], e[9], e[10]
    return [(phoff + i * phentsize, list(PHDR.unpack_from(data, phoff + i * phentsize)))
            for i in range(phnum)]


def loads(data: bytes) -> list[tuple[int, list]]:
    return [(off, h) for off, h in phdrs(data) if h[0] == 1]


def refuse(data: bytes, *fragments: str) -> str:
    with pytest.raises(LoaderError) as info:
        parse_image(bytes(data), "app")
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_not_elf():
    refuse(b"#!/bin/sh\necho hi\n", "not an ELF file")


def test_truncated_header(apps):
    refuse(hello_bytes(apps)[:40], "truncated ELF header")


def test_32_bit(apps):
    data = hello_bytes(apps)
    data[4] = 1
    refuse(data, "32-bit")


def test_not_x86_64(apps):
    data = hello_bytes(apps)
    struct.pack_into("<H", data, 18, 183)      # EM_AARCH64
    refuse(data, "not an x86-64 executable")


def test_relocatable_object_is_not_an_executable(apps):
    data = hello_bytes(apps)
    struct.pack_into("<H", data, 16, 1)        # ET_REL
    refuse(data, "not an executable", "ET_REL")


def test_truncated_program_headers(apps):
    data = hello_bytes(apps)
    struct.pack_into("<Q", data, 32, len(data) - 8)   # e_phoff near the end of the file
    refuse(data, "program headers")


def test_segment_in_kernel_half(apps):
    data = hello_bytes(apps)
    off, h = loads(data)[0]
    h[3] = 0xFFFF_8000_0000_0000                # p_vaddr
    PHDR.pack_into(data, off, *h)
    refuse(data, "outside the user address space")


def test_overlapping_segments(apps):
    data = hello_bytes(apps)
    (off0, h0), (off1, h1) = loads(data)[:2]
    h1[3] = h0[3] + 0x10
    PHDR.pack_into(data, off1, *h1)
    refuse(data, "overlap")


def test_segment_past_end_of_file(apps):
    data = hello_bytes(apps)
    off, h = loads(data)[0]
    h[5] = len(data) + 0x1000                   # p_filesz
    h[6] = max(h[6], h[5])
    PHDR.pack_into(data, off, *h)
    refuse(data, "past the end of the file")


def test_file_size_larger_than_memory_size(apps):
    data = hello_bytes(apps)
    off, h = loads(data)[0]
    h[6] = h[5] - 1 if h[5] else 0
    h[5] = h[6] + 1
    PHDR.pack_into(data, off, *h)
    refuse(data, "exceeds memory size")


def test_entry_outside_executable_segment(apps):
    data = hello_bytes(apps)
    struct.pack_into("<Q", data, 24, 0x10)      # e_entry
    refuse(data, "entry point 0x10 is not in an executable segment")


def test_dynamically_linked(apps):
    data = hello_bytes(apps)
    off, h = phdrs(data)[-1]
    h[0] = 3                                    # PT_INTERP
    PHDR.pack_into(data, off, *h)
    refuse(data, "dynamically linked")


def test_no_loadable_segments(apps):
    data = hello_bytes(apps)
    for off, h in loads(data):
        h[0] = 4                                # PT_NOTE
        PHDR.pack_into(data, off, *h)
    refuse(data, "no loadable segments")


def test_missing_file(tmp_path):
    with pytest.raises(LoaderError, match="no such file"):
        load_file(tmp_path / "nope")


def test_directory(tmp_path):
    with pytest.raises(LoaderError, match="is a directory"):
        load_file(tmp_path)


def test_segments_get_the_permissions_of_their_flags(machine_factory, apps):
    m = machine_factory()
    proc = m.spawn(apps / "hello")
    image = proc.image
    for seg in image.segments:
        pte = proc.space.lookup(seg.va).pte
        assert bool(pte & PTE.US)
        assert bool(pte & PTE.RW) == bool(seg.flags & 2), hex(seg.va)
        assert bool(pte & PTE.NX) == (not seg.flags & 1), hex(seg.va)


def test_stack_has_an_unmapped_guard_page(machine_factory, apps):
    m = machine_factory()
    proc = m.spawn(apps / "hello")
    assert proc.space.lookup(proc.stack_low) is not None
    assert proc.space.lookup(proc.stack_low - 4096) is None


def test_pie_relocations_are_applied(apps):
    image = load_file(apps / "hello-pie")
    assert image.base and image.low >= 0x7FF6_0000_0000
    assert all(image.base <= v for v in image.symbols.values())


LINUX = ("Linux system calls are not served: only guests built for this machine's ABI run "
         "(docs/abi.md; building one: guest/README.md)")


def test_a_driver_is_not_an_app(apps):
    with pytest.raises(LoaderError) as info:
        load_file(apps.parent / "drivers" / "hello.sys")
    assert str(info.value) == (f"{apps.parent / 'drivers' / 'hello.sys'}: this is a driver "
                               "(a PE image of the native subsystem): use --driver")


def test_a_linux_osabi_is_refused_as_linux(apps):
    data = hello_bytes(apps)
    data[7] = 3                                   # EI_OSABI: ELFOSABI_GNU (Linux)
    assert refuse(data) == f"app: a Linux executable (ELF OS/ABI GNU/Linux): {LINUX}"


def test_a_gnu_abi_tag_note_is_refused_as_linux(apps):
    # The note glibc's crt1 carries: owner "GNU", NT_GNU_ABI_TAG (1), OS 0 = Linux 3.2.0.
    data = bytes(hello_bytes(apps))
    note = struct.pack("<III4sIIII", 4, 16, 1, b"GNU\0", 0, 3, 2, 0)
    e = list(EHDR.unpack_from(data))
    phoff, phentsize, phnum = e[5], e[9], e[10]
    table = data[phoff:phoff + phnum * phentsize]
    out = bytearray(data) + bytes(-len(data) % 8)
    note_at = len(out)
    out += note
    table += PHDR.pack(4, 4, note_at, 0, 0, len(note), len(note), 4)     # PT_NOTE
    e[5], e[10] = len(out), phnum + 1
    out += table
    EHDR.pack_into(out, 0, *e)
    assert refuse(out) == f"app: a Linux executable (a GNU ABI tag note): {LINUX}"


def test_a_dynamically_linked_program_is_refused_as_linux(apps):
    data = hello_bytes(apps)
    off, h = phdrs(data)[0]
    h[0] = 3                                      # PT_INTERP
    PHDR.pack_into(data, off, *h)
    assert refuse(data).startswith("app: a dynamically linked Linux executable (it asks for "
                                   "an interpreter): " + LINUX)


def test_a_real_static_glibc_program_is_refused_as_linux(tmp_path):
    import subprocess

    (tmp_path / "l.c").write_text('#include <stdio.h>\nint main(void) { puts("hi"); }\n')
    subprocess.run(["gcc", "-static", "-o", tmp_path / "l", tmp_path / "l.c"], check=True)
    with pytest.raises(LoaderError, match="a Linux executable .*Linux system calls are not "
                       "served"):
        load_file(tmp_path / "l")
