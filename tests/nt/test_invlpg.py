"""INVLPG executed by guest code reaches the STLB (emu/hw/invlpg.py; SDM Vol. 2A INVLPG, Vol.
3A 4.10.4.1): the page's translation of the current PCID goes, and a global one, while other
PCIDs keep theirs; a non-canonical address is a NOP; at ring 3 it is #GP(0). Unicorn alone
drops the page from QEMU's own TLB only: without the machine's hooks the STLB (the `tlb`
view) would keep a translation the hardware dropped.

The driver tests use peinvlpg.sys (guest/drivers-pe/peinvlpg.c): DriverEntry reads its
Probe page (cached for the System's PCID); each I/O control request reads it again in the
requester's address space (cached for its PCID), then executes INVLPG on it from the
image's code (0x222000), on its non-canonical twin (0x222004), or from a routine copied
into NonPagedPoolExecute (0x222008). The routine tests run a few instructions mapped at a
kernel address, their INVLPGs watched as the loader watches a driver's.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from driverboot import boot, tlb_around

from emu.hw.invlpg import block_invlpg, find_sites
from emu.hw.native import Fill, Mode

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"
DEVICE = "\\Device\\PeInvlpg"
PROBE, TWIN, POOL = 0x222000, 0x222004, 0x222008

ROUTINE = 0xFFFF_8000_0020_0000          # a kernel page of code, mapped by the tests
DATA = ROUTINE + 0x1000                  # the page it reads and invalidates
OTHER = ROUTINE + 0x2000                 # a page it reads and does not invalidate


# -- finding INVLPG in code ---------------------------------------------------------------

REGS = {"rax": 0x1000, "rbx": 0x2000, "rcx": 3, "r8": 0x8000, "eax": 0x1000,
        "gs_base": 0xFFFF_8000_0000_2000, "fs_base": 0x7000_0000}


@pytest.mark.parametrize(("code", "address"), [
    (b"\x0f\x01\x38", 0x1000),                                 # invlpg [rax]
    (b"\x41\x0f\x01\x38", 0x8000),                             # invlpg [r8]
    (b"\x0f\x01\x3d\x10\x00\x00\x00", 0x40_0000 + 7 + 0x10),    # invlpg [rip + 0x10]
    (b"\x65\x0f\x01\x7c\xcb\x20", 0xFFFF_8000_0000_2000 + 0x2000 + 24 + 0x20),
    (b"\x64\x0f\x01\x38", 0x7000_0000 + 0x1000),                 # invlpg fs:[rax]
    (b"\x67\x0f\x01\x78\xff", 0xFFF),                            # invlpg [eax - 1] (addr32)
])
def test_each_encoding_of_invlpg_is_found_and_its_address_computed(code, address) -> None:
    """Found at its first byte, prefixes included (a match inside it is a candidate too:
    a hook there is never reached unless code jumps there, and then it is one)."""
    site = find_sites(0x40_0000, code)[0]
    assert (site.address, site.size) == (0x40_0000, len(code))
    assert site.linear_address(REGS.__getitem__) == address


@pytest.mark.parametrize("code", [b"\x0f\x01\xf8", b"\x0f\x01\xf9", b"\x0f\x01\x30",
                                  b"\x0f\x01\x3f"[:2]])
def test_the_other_group_7_instructions_are_not_invlpg(code) -> None:
    """SWAPGS and RDTSCP (mod 11, reg 7), LMSW (reg 6), a truncated one."""
    assert find_sites(0x40_0000, code) == []


def test_an_address_size_prefix_wraps_the_address_at_32_bits() -> None:
    site = find_sites(0, b"\x67\x0f\x01\x78\x10")[0]        # invlpg [eax + 0x10]
    assert site.linear_address({"eax": 0xFFFF_FFF8}.__getitem__) == 0x8


def test_a_block_is_decoded_for_the_invlpg_that_ends_it() -> None:
    block = b"\x48\x89\xc8" + b"\x0f\x01\x39"                 # mov rax, rcx; invlpg [rcx]
    site = block_invlpg(0x5000, block)
    assert (site.address, site.end, site.base) == (0x5003, 0x5006, "rcx")
    assert block_invlpg(0x5000, b"\x0f\x01\x39\x90") is None  # INVLPG not last: not a block
    assert block_invlpg(0x5000, b"\xb8\x0f\x01\x39\x00") is None   # its bytes in an immediate


def test_unicorn_ends_a_block_after_invlpg_and_calls_bounded_hooks_only_inside_their_range():
    """The platform facts the design rests on (Unicorn 2.1.4): QEMU ends a translated block
    after an INVLPG (so in run-time code it is a block's last instruction), a code hook
    bounded to one address is called for that instruction alone, and a block hook bounded
    to a range only for the blocks that start there."""
    from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_HOOK_CODE, UC_MODE_64, Uc
    from unicorn.x86_const import UC_X86_REG_RAX

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    code = b"\x90\x90" + b"\x0f\x01\x38" + b"\x90\x90\xf4"     # nop; nop; invlpg [rax]; ...
    uc.mem_write(0x1000, code)
    uc.reg_write(UC_X86_REG_RAX, 0x3000)
    blocks, bounded_blocks, codes = [], [], []
    uc.hook_add(UC_HOOK_BLOCK, lambda u, a, size, d: blocks.append((a, size)))
    uc.hook_add(UC_HOOK_BLOCK, lambda u, a, size, d: bounded_blocks.append(a), None,
                0x1005, 0x1005)
    uc.hook_add(UC_HOOK_CODE, lambda u, a, size, d: codes.append(a), None, 0x1002, 0x1002)
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    assert blocks[0] == (0x1000, 5) and blocks[1][0] == 0x1005
    assert bounded_blocks == [0x1005] and codes == [0x1002]


# -- a routine at ring 0 ------------------------------------------------------------------

def routine(invalidate: bytes) -> bytes:
    """movabs rbx, DATA; mov rax, [rbx]; movabs rdx, OTHER; mov rax, [rdx]; INVALIDATE;
    mov eax, 7; ret: reads two pages (each cached for the current PCID), then the
    instruction under test (an INVLPG of [rbx], or anything else)."""
    return (b"\x48\xbb" + struct.pack("<Q", DATA) + b"\x48\x8b\x03"
            + b"\x48\xba" + struct.pack("<Q", OTHER) + b"\x48\x8b\x02"
            + invalidate + b"\xb8\x07\x00\x00\x00\xc3")


def ring0(machine_factory, code: bytes, *, watch: bool = True):
    """A machine with ``code`` mapped at ROUTINE (its INVLPGs watched, as a driver image's
    are), DATA and OTHER mapped, and DATA cached for PCIDs 5 and 6 (another process's)."""
    from emu.nt.mm.address_space import Protection
    from emu.nt.mm.pfn import FrameUse

    m = machine_factory(mem="16M")
    ex = m.executive
    ex.mm.map_new(ex.mm.system, ROUTINE, Protection.PAGE_EXECUTE_READ, use=FrameUse.KERNEL,
                  data=code.ljust(0x1000, b"\xcc"))
    for page in (DATA, OTHER):
        ex.mm.map_new(ex.mm.system, page, Protection.PAGE_READWRITE, use=FrameUse.KERNEL,
                      data=bytes(0x1000))
    if watch:
        ex.cpu.invlpg.watch(ROUTINE, code)
    native = ex.cpu.native
    for owner in (5, 6):
        native.set_pcid(owner)
        native.insert(Mode.KERNEL_AC0, [(DATA, 0x123000 | 3)])
    native.set_pcid(ex.cpu.pcid)
    return m, ex


def cached(ex, page: int) -> list:
    """The PCIDs (None: global) the STLB holds ``page`` for, sorted (global last)."""
    return sorted((pcid for _, vpage, _, pcid in ex.cpu.native.entries() if vpage == page),
                  key=lambda p: (p is None, p))


INVLPG_RBX = b"\x0f\x01\x3b"                     # invlpg [rbx]
NOP3 = b"\x0f\x1f\x00"                           # nop dword ptr [rax]: the same length


def test_invlpg_at_ring_0_drops_the_current_pcid_s_translation_and_keeps_the_others(
        machine_factory):
    m, ex = ring0(machine_factory, routine(INVLPG_RBX))
    system = ex.mm.system.pcid
    assert ex.call_kernel(ROUTINE).rax == 7
    assert cached(ex, DATA) == [5, 6]                      # the System's (current) went
    assert cached(ex, OTHER) == [system]                   # another page stays
    assert ex.cpu.invlpg.completed == 1


def test_without_the_invlpg_the_translation_stays(machine_factory):
    """The routine with a 3-byte NOP where the INVLPG was: the read is cached (what the
    INVLPG must drop)."""
    m, ex = ring0(machine_factory, routine(NOP3))
    assert ex.call_kernel(ROUTINE).rax == 7
    assert cached(ex, DATA) == sorted([5, 6, ex.mm.system.pcid])


def test_invlpg_drops_a_global_translation_of_the_page(machine_factory):
    m, ex = ring0(machine_factory, routine(INVLPG_RBX))
    ex.cpu.native.insert(Mode.KERNEL_AC0, [(DATA, 0x123000 | Fill.READ | Fill.GLOBAL)])
    assert ex.call_kernel(ROUTINE).rax == 7
    assert cached(ex, DATA) == [5, 6]                      # the global one went too


def test_invlpg_of_a_non_canonical_address_is_a_nop(machine_factory):
    """SDM Vol. 2A INVLPG: in 64-bit mode a non-canonical operand makes it a NOP: no fault,
    nothing dropped (not the canonical page with the same bits 47:0 either)."""
    twin = DATA & 0x0000_FFFF_FFFF_FFFF
    code = b"\x48\xbe" + struct.pack("<Q", twin) + b"\x0f\x01\x3e"    # invlpg [rsi]
    m, ex = ring0(machine_factory, routine(code))
    assert ex.call_kernel(ROUTINE).rax == 7
    assert cached(ex, DATA) == sorted([5, 6, ex.mm.system.pcid])
    assert ex.cpu.invlpg.completed == 1


@pytest.mark.parametrize("per_instruction", [False, True])
def test_invlpg_counts_as_one_instruction(machine_factory, per_instruction):
    """Under a budget (as a debugger's run counts), the routine counts as many instructions
    as the same one with a NOP of the same length in the INVLPG's place."""
    def counted(code: bytes) -> int:
        m, ex = ring0(machine_factory, routine(code))
        ex.cpu.native.per_instruction = per_instruction
        ex.set_budget(1000)
        start = ex.cpu.instructions
        assert ex.call_kernel(ROUTINE).rax == 7
        return ex.cpu.instructions - start
    assert counted(INVLPG_RBX) == counted(NOP3) >= 7


@pytest.mark.parametrize(("budgets", "dropped"), [
    ((24,), False),          # the block cut before the INVLPG: it has not run
    ((25,), True),           # the run ends at the block boundary right after it
    ((24, 1), True),         # then one step (counted per instruction): over it
])
def test_a_run_that_ends_right_after_the_invlpg_completes_it_one_before_does_not(
        machine_factory, budgets, dropped):
    """20 NOPs, the reads, the INVLPG: one translated block (QEMU ends a block after an
    INVLPG). A budget that stops the run before the INVLPG drops nothing; one that stops it
    right after (at the next block's entry, or after a step) has the page dropped."""
    from emu.hw.cpu import StopReason

    m, ex = ring0(machine_factory, b"\x90" * 20 + routine(INVLPG_RBX))
    cpu = ex.cpu
    cpu.load_cr3(ex.mm.system.cr3 | ex.mm.system.pcid)
    invlpg_at = ROUTINE + 20 + 26
    start = ROUTINE
    for budget in budgets:
        cpu.set_budget(budget)
        assert cpu.run(start).reason is StopReason.BUDGET
        start = None
    assert cpu.rip == (invlpg_at + 3 if dropped else invlpg_at)
    assert cpu.instructions == sum(budgets)
    system = ex.mm.system.pcid
    assert cached(ex, DATA) == ([5, 6] if dropped else sorted([5, 6, system]))
    assert cpu.invlpg.completed == int(dropped)


# -- a driver: peinvlpg.sys ---------------------------------------------------------------

def run_request(machine_factory, apps, code: int):
    """peinvlpg.sys loaded, then `devioctl \\Device\\PeInvlpg CODE` run to its end: the
    machine, the Probe page, the requester's PCID."""
    m = machine_factory(mem="64M")
    m.add_driver(DRIVERS / "peinvlpg.sys")
    process = m.spawn(apps / "devioctl", [DEVICE, hex(code)])
    pcid = process.space.pcid
    m.run()
    assert process.exit_status == 0
    probe = m.executive.drivers[0].image.symbols["Probe"]
    return m, probe, pcid


def debug_output(m) -> str:
    return bytes(m.executive.debug_output).decode()


def test_a_driver_image_s_invlpg_is_found_at_load_and_forgotten_with_its_page(
        machine_factory, apps):
    m, probe, pcid = run_request(machine_factory, apps, PROBE)
    ex = m.executive
    invalidate = ex.drivers[0].image.symbols["Invalidate"]
    # push rbp; mov rbp, rsp; invlpg [rcx]
    assert invalidate + 4 in {s.address for s in ex.cpu.invlpg.sites}
    from emu.nt import drivers
    drivers._free_pages(ex, [invalidate & ~0xFFF])
    assert not [s for s in ex.cpu.invlpg.sites if s.address & ~0xFFF == invalidate & ~0xFFF]


def test_a_driver_s_invlpg_drops_the_requester_s_translation_not_the_system_s(
        machine_factory, apps):
    m, probe, pcid = run_request(machine_factory, apps, PROBE)
    system = m.executive.mm.system.pcid
    assert pcid != system
    assert cached(m.executive, probe) == [system]
    assert f"peinvlpg.sys: read 42 at {probe:016X}, then invlpg on it, in process 12\n" in \
        debug_output(m)


def test_a_driver_s_invlpg_of_the_non_canonical_twin_is_a_nop(machine_factory, apps):
    m, probe, pcid = run_request(machine_factory, apps, TWIN)
    system = m.executive.mm.system.pcid
    assert cached(m.executive, probe) == sorted([system, pcid])
    assert f"then invlpg on {probe & 0xFFFF_FFFF_FFFF:016X} (non-canonical: a NOP)\n" in \
        debug_output(m)


def test_an_invlpg_in_code_a_driver_wrote_into_pool_drops_it_too(machine_factory, apps):
    m, probe, pcid = run_request(machine_factory, apps, POOL)
    assert cached(m.executive, probe) == [m.executive.mm.system.pcid]
    assert "then invlpg on it from pool at FFFFA000" in debug_output(m)


def test_invlpg_at_ring_3_stays_a_privileged_instruction_with_a_driver_loaded(
        machine_factory, apps):
    _, (process,), _ = boot(machine_factory, apps, [DRIVERS / "peinvlpg.sys"],
                            ("privileged", "invlpg"), mem="64M")
    assert process.exception is not None
    assert process.exception.code == 0xC000_0096          # STATUS_PRIVILEGED_INSTRUCTION


def test_the_tlb_view_under_emu_debug_loses_the_page_at_the_invlpg():
    """What a user tries: break in the routine that runs INVLPG, `tlb` of the page (the
    System's and the requester's translations), step over the INVLPG, `tlb` again: the
    requester's (current) PCID's is gone, the System's stays; stepping back shows both."""
    out, (before, after, back) = tlb_around("peinvlpg", ["devioctl", DEVICE, hex(PROBE)],
                                            "peinvlpg.sys!Invalidate", "tlb $rcx")
    system = "  kernel       1 (system)     0xfffff80001004000 0x"
    requester = "  kernel       2 (pid 12)     0xfffff80001004000 0x"
    assert "<peinvlpg.sys!Invalidate+0x4>: invlpg byte ptr [rcx]" in out
    assert "2 translation(s) of page 0xfffff80001004000" in before
    assert system in before and requester in before
    assert "1 translation(s) of page 0xfffff80001004000" in after
    assert system in after and requester not in after
    assert system in back and requester in back
    assert "peinvlpg.sys: read 42 at FFFFF80001004000, then invlpg on it, in process 12" in out
