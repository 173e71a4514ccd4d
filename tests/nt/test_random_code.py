"""Random ring-3 code: whatever bytes a user program runs, the machine stays standing.

Each run ends as a normal exit, an exception with a defined NT status, or the
instruction limit; a sibling process finishes with its own output; the kernel half
is byte-for-byte what it was (user code cannot write it).
"""

from __future__ import annotations

import pytest
from fuzzscale import examples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emu.nt import layout
from emu.nt.loader import Image, Segment
from emu.nt.status import NTSTATUS

CODE_VA = 0x0040_0000
DEFINED = {int(s) for s in NTSTATUS}


def raw_image(code: bytes) -> Image:
    page = bytearray(4096)
    page[:len(code)] = code
    return Image("random", "random", 0, CODE_VA, [Segment(CODE_VA, 4096, 7)],
                 {CODE_VA: page}, {CODE_VA: 7})


def immutable_kernel(m) -> bytes:
    """Kernel pages nothing may change after boot: the GDT (and the TSS past RSP0) and the
    kernel text. Read physically, through the system page tables."""
    system = m.executive.mm.system
    gdt = system.lookup(layout.KERNEL_GDT).pfn * 4096
    text = system.lookup(layout.KERNEL_TEXT).pfn * 4096
    return m.mem.read(gdt, 0x50) + m.mem.read(gdt + 0x800 + 12, 0x68 - 12) + \
        m.mem.read(text, 4096)


# Random code, after registers aimed at interesting places: the kernel's own pages, the
# kernel stacks, the non-canonical hole, the sibling's image address, null.
TARGETS = st.sampled_from([layout.KERNEL_GDT, layout.KERNEL_TEXT, layout.KERNEL_STACK_BASE
                           + 0x2000, layout.KERNEL_EXPORTS, 0x0000_8000_0000_0000,
                           0x0040_1000, 0, 0x7FFF_FFFF_F000])


@pytest.mark.fuzz
@settings(max_examples=examples(80), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(code=st.binary(min_size=1, max_size=48), rbx=TARGETS, rsi=TARGETS)
# Found by this test: `add [rsi + riz], al` once crashed CR2's recomputation (riz).
@example(code=b"\x00\x04&", rbx=layout.KERNEL_GDT, rsi=layout.KERNEL_GDT)
def test_random_code_ends_defined_and_harms_nobody(machine_factory, apps, code, rbx, rsi):
    prefix = b"\x48\xbb" + rbx.to_bytes(8, "little") + b"\x48\xbe" + rsi.to_bytes(8, "little")
    m = machine_factory(mem="8M", max_insns=200_000, quantum=5_000)
    victim = m.spawn(apps / "counter", ["v", "2", "1000"])
    guest = m.executive.create_process(raw_image(prefix + code), [])
    before = immutable_kernel(m)
    result = m.run()
    assert result.bugcheck is None                       # user code never stops the system
    assert victim.output == b"v 1\nv 2\n" and victim.exit_status == 0
    if guest.exception is not None:
        assert guest.exception.code in DEFINED
    else:
        assert guest.exit_status is not None or result.stopped == "instruction limit"
    assert immutable_kernel(m) == before
