"""32-bit processes: compatibility mode, int 0x2e, and a user space that ends below 2 GB."""

from __future__ import annotations

import struct

import pytest

from emu.nt.loader import LoaderError, load_file, parse_image
from emu.nt.status import NTSTATUS


def test_a_32_bit_process_runs_in_compatibility_mode(machine_factory, apps):
    m = machine_factory()
    p = m.spawn(apps / "hello32", ["a"])
    m.run()
    out = p.output.decode().splitlines()
    assert out[0] == "Hello from a 32-bit process!"
    assert out[1].startswith("pointers are 4 bytes, the stack is at 0x7fef")
    assert out[2:] == ["argv[1] = a", f"pid {p.pid}"]
    assert p.exit_status == 0 and p.bits == 32 and p.highest_address == 0x7FFE_FFFF


def test_its_code_segment_is_the_32_bit_one(machine_factory, apps, tmp_path):
    trace = (tmp_path / "t").open("w")
    m = machine_factory(trace=trace)
    m.spawn(apps / "hello32")
    m.run()
    trace.close()
    lines = (tmp_path / "t").read_text().splitlines()
    assert "iretq" in lines[0]
    assert "mov eax, dword ptr [esp]" in lines[2]           # decoded as 32-bit code
    assert any("int 0x2e" in line for line in lines)


def test_nothing_above_2_gb_is_reachable(machine_factory, apps):
    m = machine_factory()
    p = m.spawn(apps / "limits32", ["touch"])
    m.run()
    exc = p.exception
    assert exc.code == NTSTATUS.STATUS_ACCESS_VIOLATION and exc.address == 0x8000_0000
    assert exc.instruction == "mov eax, dword ptr [0x80000000]"


def test_allocations_above_2_gb_are_refused(machine_factory, apps):
    m = machine_factory()
    p = m.spawn(apps / "limits32")
    m.run()
    status = int(p.output.decode().splitlines()[0].split()[-1], 16)
    assert status in (NTSTATUS.STATUS_INVALID_PARAMETER, NTSTATUS.STATUS_INVALID_ADDRESS,
                      NTSTATUS.STATUS_CONFLICTING_ADDRESSES)
    assert p.output.decode().splitlines()[1] == "still alive" and p.exit_status == 0


def test_int_2e_from_a_64_bit_process_is_not_a_system_call(machine_factory):
    from emu.nt.loader import Image, Segment

    code = bytes.fromhex("b802000000" "cd2e" "0f0b")    # mov eax, 2; int 0x2e; ud2
    page = bytearray(4096)
    page[:len(code)] = code
    image = Image("raw", "raw", 0, 0x400000, [Segment(0x400000, 4096, 5)],
                  {0x400000: page}, {0x400000: 5})
    m = machine_factory()
    p = m.executive.create_process(image, [])
    m.run()
    assert p.exception.code == NTSTATUS.STATUS_ACCESS_VIOLATION
    assert p.exception.instruction == "int 0x2e"


def _segment_header(data: bytes, index: int) -> int:
    phoff = struct.unpack_from("<I", data, 28)[0]
    return phoff + index * 32


def test_a_32_bit_segment_above_2_gb_is_refused(apps):
    data = bytearray((apps / "hello32").read_bytes())
    off = _segment_header(data, 0)
    struct.pack_into("<I", data, off + 8, 0x8000_0000)            # p_vaddr
    with pytest.raises(LoaderError, match="outside the user address space"):
        parse_image(bytes(data), "x")


def test_the_32_bit_image_keeps_its_symbols(apps):
    image = load_file(apps / "hello32")
    assert image.bits == 32 and image.symbols["main"] == image.segments[1].va
