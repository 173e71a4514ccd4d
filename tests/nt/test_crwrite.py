"""MOV to CR0, CR3 and CR4 executed by guest code reaches the CPU (emu/hw/crwrite.py; SDM Vol.
2B "MOV - Move to/from Control Registers", Vol. 3A 2.5 and 4.10.4.1). Unicorn alone changes
QEMU's register only: without the machine's hooks the walker would still enforce the old
CR0.WP and CR4.SMEP, a CR3 reload would leave the STLB's entries (the `tlb` view), a reserved
CR4 bit would be set without a fault, and CR3 would read back with bit 63.

The driver tests use pecrwrite.sys (guest/drivers-pe/pecrwrite.c): DriverEntry reads its
Probe page (cached for the System's PCID); each I/O control request reads it again in the
requester's address space (cached for its PCID), then clears CR0.WP and writes its
read-only page (0x222000), writes that page with WP set (0x222004), reloads CR3 (0x222008),
reloads it with bit 63 (0x22200C), sets reserved CR4 bit 15 (0x222010), or makes the WP
write from a routine copied into NonPagedPoolExecute (0x222014). The routine tests run a
few instructions mapped at a kernel address, their MOVs watched as the loader watches a
driver's.
"""

from __future__ import annotations

import struct
from pathlib import Path

import emurun
import pytest
from driverboot import boot, tlb_around

from emu.hw.crwrite import block_move, find_moves
from emu.hw.exceptions import ControlRegisterFault
from emu.hw.native import Fill, Mode
from emu.nt.bugcheck import BugCheck, BugCheckCode

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"
DEVICE = "\\Device\\PeCrWrite"
WP, RO, CR3, NOFLUSH, CR4, POOL = 0x222000, 0x222004, 0x222008, 0x22200C, 0x222010, 0x222014

ROUTINE = 0xFFFF_8000_0020_0000          # a kernel page of code, mapped by the tests
DATA = ROUTINE + 0x1000                  # a kernel page it reads
USER_CODE = 0x0000_0000_7000_0000        # a user page of code (SMEP)
CR0_WP, CR4_SMEP = 1 << 16, 1 << 20


# -- finding the MOVs in code -------------------------------------------------------------

@pytest.mark.parametrize(("code", "control", "source"), [
    (b"\x0f\x22\xc0", "cr0", "RAX"),                 # mov cr0, rax
    (b"\x0f\x22\xd9", "cr3", "RCX"),                 # mov cr3, rcx
    (b"\x41\x0f\x22\xe0", "cr4", "R8"),              # mov cr4, r8 (REX.B)
    (b"\x0f\x22\x18", "cr3", "RAX"),                 # mod 00: ignored, still mov cr3, rax
    (b"\x66\x0f\x22\xe2", "cr4", "RDX"),             # a prefix before it: found at its start
])
def test_each_encoding_of_a_mov_to_cr0_cr3_cr4_is_found(code, control, source) -> None:
    """Found at its first byte, prefixes included (a match inside it is a candidate too: a
    hook there is never reached unless code jumps there, and then it is one)."""
    from unicorn import x86_const as ux

    move = find_moves(0x40_0000, code)[0]
    assert (move.address, move.size, move.control) == (0x40_0000, len(code), control)
    assert move.source == getattr(ux, f"UC_X86_REG_{source}")


@pytest.mark.parametrize("code", [
    b"\x0f\x20\xd8",                                 # mov rax, cr3: a read
    b"\x44\x0f\x22\xc0",                             # mov cr8, rax (REX.R: emu.hw.cr8's)
    b"\x0f\x22\xd0",                                 # mov cr2, rax
    b"\xb8\x0f\x22\xc0\x00",                         # its bytes in an immediate
])
def test_reads_cr8_cr2_and_lookalikes_are_not_hooked(code) -> None:
    assert [m for m in find_moves(0x40_0000, code) if m.address == 0x40_0000] == []
    assert block_move(0x40_0000, code) is None


def test_a_block_is_decoded_for_the_mov_that_ends_it() -> None:
    block = b"\x48\x89\xc8" + b"\x0f\x22\xd8"                 # mov rax, rcx; mov cr3, rax
    move = block_move(0x5000, block)
    assert (move.address, move.end, move.control) == (0x5003, 0x5006, "cr3")
    assert block_move(0x5000, b"\x0f\x22\xd8\x90") is None    # not last: not a block


def test_unicorn_ends_a_block_after_a_mov_to_cr3_or_cr4_and_keeps_what_the_sdm_refuses():
    """The platform facts the design rests on (Unicorn 2.1.4): QEMU ends a translated block
    after a MOV to CR3 or CR4, keeps bit 63 in CR3 (it reads back), and sets a reserved CR4
    bit without a fault: the machine must check and fix both itself."""
    from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_MODE_64, Uc
    from unicorn import x86_const as ux

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    # mov cr3, rax; mov rbx, cr3; mov cr4, rcx; mov rdx, cr4; nop
    code = b"\x0f\x22\xd8\x0f\x20\xdb\x0f\x22\xe1\x0f\x20\xe2\x90"
    uc.mem_write(0x1000, code)
    uc.reg_write(ux.UC_X86_REG_RAX, 1 << 63 | 0x5000)
    uc.reg_write(ux.UC_X86_REG_RCX, 1 << 15 | 0x20)
    blocks = []
    uc.hook_add(UC_HOOK_BLOCK, lambda u, a, size, d: blocks.append((a, size)))
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    assert blocks == [(0x1000, 3), (0x1003, 6), (0x1009, 3)]   # `until`: the NOP
    assert uc.reg_read(ux.UC_X86_REG_RBX) == 1 << 63 | 0x5000
    assert uc.reg_read(ux.UC_X86_REG_RDX) == 1 << 15 | 0x20


# -- the checks (the executive's loads and the guest's alike) ------------------------------

@pytest.mark.parametrize(("values", "reason"), [
    ({"cr4": "boot | 1 << 15"}, "reserved bit set in CR4 value"),
    ({"cr4": "boot | 1 << 12"}, "reserved bit set in CR4 value"),        # LA57: not here
    ({"cr4": "boot & ~0x20"}, "CR4.PAE cleared in IA-32e mode"),
    ({"cr0": "boot | 1 << 32"}, "reserved bit set in CR0 value"),
    ({"cr0": "boot & ~1"}, "CR0.PG set with CR0.PE = 0"),
    ({"cr0": "boot | 1 << 29"}, "CR0.NW set with CR0.CD = 0"),
    ({"cr0": "boot & ~(1 << 31)"}, "CR0.PG cleared with CR4.PCIDE = 1"),
    ({"cr3": "boot | 1 << 62"}, "reserved bit set in CR3 value"),
])
def test_a_value_the_sdm_refuses_is_gp_and_changes_nothing(machine_factory, values, reason):
    m = machine_factory()
    cpu = m.executive.cpu
    boot = {"cr0": cpu.cr0, "cr3": cpu.cr3_value, "cr4": cpu.cr4}
    (name, expression), = values.items()
    value = eval(expression, {"boot": boot[name]})           # noqa: S307 - the table above
    with pytest.raises(ControlRegisterFault, match=reason.replace(".", r"\.")):
        cpu.check_control(**{name: value})
    with pytest.raises(ControlRegisterFault):
        cpu.set_control(**{name: value})
    assert (cpu.cr0, cpu.cr3_value, cpu.cr4) == tuple(boot.values())


# -- a routine at ring 0 ------------------------------------------------------------------

def ring0(machine_factory, code: bytes, *, run_time: bool = False):
    """A machine with ``code`` mapped at ROUTINE (its MOVs watched, as a driver image's
    are; with ``run_time``, its page decoded block by block as executable pool is) and DATA
    mapped."""
    from emu.nt.mm.address_space import Protection
    from emu.nt.mm.pfn import FrameUse

    m = machine_factory(mem="16M")
    ex = m.executive
    ex.mm.map_new(ex.mm.system, ROUTINE, Protection.PAGE_EXECUTE_READ, use=FrameUse.KERNEL,
                  data=code.ljust(0x1000, b"\xcc"))
    ex.mm.map_new(ex.mm.system, DATA, Protection.PAGE_READONLY, use=FrameUse.KERNEL,
                  data=bytes(0x1000))
    if run_time:
        ex.cpu.crwrite.watch_range(ROUTINE, ROUTINE + 0x1000)
    else:
        ex.cpu.crwrite.watch(ROUTINE, code)
    return m, ex


def cached(ex, page: int) -> list:
    """The PCIDs (None: global) the STLB holds ``page`` for, sorted (global last)."""
    return sorted((pcid for _, vpage, _, pcid in ex.cpu.native.entries() if vpage == page),
                  key=lambda p: (p is None, p))


MOV_RAX_CR3, MOV_CR3_RAX = b"\x0f\x20\xd8", b"\x0f\x22\xd8"
NOP3 = b"\x0f\x1f\x00"                                # nop dword ptr [rax]: the same length


def cr3_routine(reload: bytes, *, noflush: bool = False) -> bytes:
    """movabs rbx, DATA; mov rdx, [rbx] (cached for the current PCID); mov rax, cr3 (with
    ``noflush``: bts rax, 63); RELOAD; mov rax, cr3; ret (rax: CR3 as read after)."""
    return (b"\x48\xbb" + struct.pack("<Q", DATA) + b"\x48\x8b\x13" + MOV_RAX_CR3
            + (b"\x48\x0f\xba\xe8\x3f" if noflush else b"") + reload + MOV_RAX_CR3 + b"\xc3")


@pytest.mark.parametrize("run_time", [False, True])
def test_a_cr3_reload_drops_the_current_pcid_s_entries_and_keeps_the_others(machine_factory,
                                                                            run_time):
    """SDM Vol. 3A 4.10.4.1: MOV to CR3 (bit 63 clear, PCIDE = 1) drops the non-global
    translations of the PCID it loads; other PCIDs' and global ones stay. From code found
    at load time and from code decoded as it runs alike."""
    m, ex = ring0(machine_factory, cr3_routine(MOV_CR3_RAX), run_time=run_time)
    native = ex.cpu.native
    native.set_pcid(5)
    native.insert(Mode.KERNEL_AC0, [(DATA, 0x123000 | Fill.READ)])
    native.set_pcid(ex.cpu.pcid)
    other = DATA + 0x10_0000
    native.insert(Mode.KERNEL_AC0, [(other, 0x124000 | Fill.READ | Fill.GLOBAL)])
    cr3 = ex.mm.system.cr3 | ex.mm.system.pcid             # the System's, as call_kernel loads it
    assert ex.call_kernel(ROUTINE).rax == cr3
    assert cached(ex, DATA) == [5]                         # the System's (current) went
    assert cached(ex, other) == [None]                     # a global one stays
    assert ex.cpu.crwrite.completed == 1


def test_without_the_mov_the_translation_stays(machine_factory):
    m, ex = ring0(machine_factory, cr3_routine(NOP3))
    assert ex.call_kernel(ROUTINE).rax == ex.mm.system.cr3 | ex.mm.system.pcid
    assert cached(ex, DATA) == [ex.mm.system.pcid]


def test_bit_63_keeps_the_translations_and_is_not_stored(machine_factory):
    """SDM Vol. 2B MOV CR3 with CR4.PCIDE = 1: bit 63 set invalidates nothing, and is not
    written to CR3 (MOV from CR3 reads it 0)."""
    m, ex = ring0(machine_factory, cr3_routine(MOV_CR3_RAX, noflush=True))
    cr3 = ex.mm.system.cr3 | ex.mm.system.pcid
    assert ex.call_kernel(ROUTINE).rax == cr3 < 1 << 63
    assert cached(ex, DATA) == [ex.mm.system.pcid]
    assert ex.cpu.crwrite.completed == 1


@pytest.mark.parametrize("run_time", [False, True])
@pytest.mark.parametrize("per_instruction", [False, True])
def test_a_mov_to_cr3_counts_as_one_instruction(machine_factory, per_instruction, run_time):
    """Under a budget (as a debugger's run counts), the routine counts as many instructions
    as the same one with a NOP of the same length in the MOV's place."""
    def counted(code: bytes) -> int:
        m, ex = ring0(machine_factory, code, run_time=run_time)
        ex.cpu.native.per_instruction = per_instruction
        ex.set_budget(1000)
        start = ex.cpu.instructions
        ex.call_kernel(ROUTINE)
        return ex.cpu.instructions - start
    assert counted(cr3_routine(MOV_CR3_RAX)) == counted(cr3_routine(NOP3)) >= 5


@pytest.mark.parametrize("run_time", [False, True])
@pytest.mark.parametrize("per_instruction", [False, True])
def test_a_refused_mov_faults_at_itself_with_the_instructions_before_it_counted(
        machine_factory, per_instruction, run_time):
    """mov rcx, cr4; bts rcx, 15; nop; mov cr4, rcx: #GP(0) at the MOV (a kernel #GP: the
    bug check the machine gives for one), three instructions completed, CR4 unchanged (in
    run-time code Unicorn made the MOV before it is decoded: it is undone)."""
    from emu.hw.cpu import StopReason
    from emu.hw.exceptions import Vector

    code = b"\x0f\x20\xe1" + b"\x48\x0f\xba\xe9\x0f" + b"\x90" + b"\x0f\x22\xe1" + b"\xc3"
    m, ex = ring0(machine_factory, code, run_time=run_time)
    cpu = ex.cpu
    cpu.native.per_instruction = per_instruction
    cr4 = cpu.cr4
    cpu.set_budget(100)
    result = cpu.run(ROUTINE)
    assert result.reason is StopReason.EXCEPTION
    assert result.exception.vector is Vector.GP and result.exception.rip == ROUTINE + 9
    assert "reserved bit set in CR4 value" in result.exception.reason
    assert cpu.instructions == 3 and cpu.rip == ROUTINE + 9
    assert cpu.cr4 == cr4 == cpu.reg("cr4")
    with pytest.raises(BugCheck) as info:
        ex.call_kernel(ROUTINE)
    bc = info.value
    assert bc.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED == 0x1E
    assert bc.params == (0xC000_0005, ROUTINE + 9, 0, 0xFFFF_FFFF_FFFF_FFFF)
    assert bc.instruction == "mov cr4, rcx"


# CR4.SMEP (SDM Vol. 3A 4.6.1): with it set, ring 0 may not fetch from a user page.
SMEP_ROUTINE = (b"\x0f\x20\xe1"                        # mov rcx, cr4
                + b"\x48\x0f\xba\xf1\x14"              # btr rcx, 20 (SMEP)
                + b"\x0f\x22\xe1"                      # mov cr4, rcx
                + b"\x48\xbb" + struct.pack("<Q", USER_CODE)   # movabs rbx, USER_CODE
                + b"\xff\xd3"                          # call rbx
                + b"\x48\x0f\xba\xe9\x14"              # bts rcx, 20
                + b"\x0f\x22\xe1"                      # mov cr4, rcx
                + b"\xc3")
USER_ROUTINE = b"\xb8\x39\x05\x00\x00\xc3"               # mov eax, 0x539; ret


def smep_machine(machine_factory, apps, code: bytes):
    from emu.nt.mm.address_space import Protection

    m, ex = ring0(machine_factory, code)
    process = m.spawn(apps / "hello")
    ex.mm.map_new(process.space, USER_CODE, Protection.PAGE_EXECUTE_READ,
                  data=USER_ROUTINE.ljust(0x1000, b"\xcc"))
    return m, ex, process


def test_with_smep_cleared_ring_0_runs_a_user_page(machine_factory, apps):
    m, ex, process = smep_machine(machine_factory, apps, SMEP_ROUTINE)
    smep_on = ex.cpu.cr4
    assert smep_on & CR4_SMEP
    assert ex.call_kernel(ROUTINE, space=process.space).rax == 0x539
    assert ex.cpu.cr4 == smep_on == ex.cpu.reg("cr4")         # set again by the routine
    assert ex.cpu.crwrite.completed == 2


def test_with_smep_set_ring_0_fetching_a_user_page_is_the_bug_check_it_was(
        machine_factory, apps):
    """The same routine with the MOVs made NOPs: SMEP stays set and the call faults."""
    code = SMEP_ROUTINE.replace(b"\x0f\x22\xe1", NOP3)
    m, ex, process = smep_machine(machine_factory, apps, code)
    with pytest.raises(BugCheck) as info:
        ex.call_kernel(ROUTINE, space=process.space)
    assert info.value.code == BugCheckCode.ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY
    assert info.value.params[0] == USER_CODE


# -- a driver: pecrwrite.sys --------------------------------------------------------------

def run_request(machine_factory, apps, code: int):
    """pecrwrite.sys loaded, then `devioctl \\Device\\PeCrWrite CODE` run: the machine, its
    result, the requester."""
    m = machine_factory(mem="64M")
    m.add_driver(DRIVERS / "pecrwrite.sys")
    process = m.spawn(apps / "devioctl", [DEVICE, hex(code)])
    result = m.run()
    return m, result, process


def debug_output(m) -> str:
    return bytes(m.executive.debug_output).decode()


def symbol(m, name: str) -> int:
    return m.executive.drivers[0].image.symbols[name]


def read_u64(m, va: int) -> int:
    ex = m.executive
    return struct.unpack("<Q", ex.cpu.mem.read(ex.cpu.walk(va, "read", cpl=0).pa, 8))[0]


@pytest.mark.parametrize("code", [WP, POOL])
def test_a_driver_clears_cr0_wp_and_writes_its_read_only_page(machine_factory, apps, code):
    """SDM Vol. 3A 4.6.1: with CR0.WP clear, ring 0 may write a read-only page. From the
    image's code and from code it copied into pool alike; CR0 is WP again after."""
    m, result, process = run_request(machine_factory, apps, code)
    assert result.bugcheck is None and process.exit_status == 0
    locked = symbol(m, "Locked")
    assert read_u64(m, locked) == 0x5EC0DE
    out = debug_output(m)
    if code == WP:
        assert (f"pecrwrite.sys: CR0 80010033, WP clear 80000033: wrote 5ec0de to the "
                f"read-only page at {locked:016X}\n") in out
        assert "pecrwrite.sys: CR0 back to 80010033\n" in out
    else:
        assert (f"wrote 5ec0de to the read-only page at {locked:016X}, CR0 80010033\n") in out
    assert m.executive.cpu.cr0 == 0x80010033


def test_with_cr0_wp_set_a_driver_s_write_to_its_read_only_page_is_bug_check_0xbe(
        machine_factory, apps):
    m, result, process = run_request(machine_factory, apps, RO)
    bc = result.bugcheck
    locked = symbol(m, "Locked")
    assert bc.code == BugCheckCode.ATTEMPTED_WRITE_TO_READONLY_MEMORY == 0xBE
    assert bc.params[0] == locked
    assert read_u64(m, locked) == 7
    assert "pecrwrite.sys: wrote it" not in debug_output(m)


def reload_request(machine_factory, apps, code: int):
    """pecrwrite.sys's CR3 reload (CODE 0x222008 or 0x22200C), and the PCIDs the STLB held
    its Probe page for right after the MOV completed (later accesses may cache it again:
    the walker fills a page table's other entries speculatively, SDM Vol. 3A 4.10.2.3)."""
    m = machine_factory(mem="64M")
    image = m.add_driver(DRIVERS / "pecrwrite.sys")
    ex = m.executive
    probe, after = image.symbols["Probe"], []
    complete = ex.cpu.guest_control

    def spy(control: str, value: int) -> None:
        complete(control, value)
        after.append((control, cached(ex, probe)))
    ex.cpu.guest_control = spy
    process = m.spawn(apps / "devioctl", [DEVICE, hex(code)])
    pcid = process.space.pcid
    m.run()
    assert process.exit_status == 0
    return m, probe, pcid, after


def test_a_driver_s_cr3_reload_drops_the_requester_s_translations(machine_factory, apps):
    m, probe, pcid, after = reload_request(machine_factory, apps, CR3)
    system = m.executive.mm.system.pcid
    assert pcid != system
    assert after == [("cr3", [system])]
    cr3 = m.executive.processes[-1].space.cr3 | pcid
    assert (f"pecrwrite.sys: read 42 at {probe:016X}, then CR3 {cr3:x} reloaded: {cr3:x}\n"
            in debug_output(m))


def test_a_driver_s_cr3_reload_with_bit_63_keeps_them_and_reads_back_without_it(
        machine_factory, apps):
    m, probe, pcid, after = reload_request(machine_factory, apps, NOFLUSH)
    assert after == [("cr3", sorted([m.executive.mm.system.pcid, pcid]))]
    cr3 = m.executive.processes[-1].space.cr3 | pcid
    assert f"then CR3 {cr3:x} reloaded with bit 63: {cr3:x}\n" in debug_output(m)


def test_a_driver_setting_a_reserved_cr4_bit_is_the_kernel_gp_bug_check(machine_factory, apps):
    m, result, process = run_request(machine_factory, apps, CR4)
    bc = result.bugcheck
    assert bc.code == BugCheckCode.SYSTEM_SERVICE_EXCEPTION == 0x3B
    assert bc.params[0] == 0xC000_0005 and bc.instruction == "mov cr4, rcx"
    assert "pecrwrite.sys: CR4 120620: setting bit 15\n" in debug_output(m)
    assert "CR4 now" not in debug_output(m)
    assert m.executive.cpu.cr4 == 0x120620


def test_mov_cr3_at_ring_3_stays_a_privileged_instruction_with_the_driver_loaded(
        machine_factory, apps):
    _, (process,), _ = boot(machine_factory, apps, [DRIVERS / "pecrwrite.sys"],
                            ("privileged", "mov-cr3"), mem="64M")
    assert process.exception is not None
    assert process.exception.code == 0xC000_0096          # STATUS_PRIVILEGED_INSTRUCTION


def test_the_tlb_view_under_emu_debug_loses_the_page_at_the_cr3_reload():
    """What a user tries: break in WriteCr3, step to its MOV, `tlb` of the Probe page (the
    System's and the requester's translations), step over the MOV, `tlb` again: the
    requester's (current) PCID's is gone, the System's stays; stepping back shows both."""
    out, (before, after, back) = tlb_around("pecrwrite", ["devioctl", DEVICE, hex(CR3)],
                                            "pecrwrite.sys!WriteCr3", "tlb pecrwrite.sys!Probe")
    system = "  kernel       1 (system)     0xfffff80001006000 0x"
    requester = "  kernel       2 (pid 12)     0xfffff80001006000 0x"
    assert "<pecrwrite.sys!WriteCr3+0x4>: mov cr3, rcx" in out
    assert "2 translation(s) of page 0xfffff80001006000" in before
    assert "1 translation(s) of page 0xfffff80001006000" in after
    assert system in before and requester in before
    assert system in after and requester not in after
    assert system in back and requester in back


# -- CR0 and CR4 are the processor's: they stay as a driver left them ---------------------

CLEAR_WP = (b"\x0f\x20\xc0"                             # mov rax, cr0
            + b"\x48\x0f\xba\xf0\x10"                   # btr rax, 16 (WP)
            + b"\x0f\x22\xc0"                           # mov cr0, rax
            + b"\xc3")
READ_CR0 = b"\x0f\x20\xc0\xc3"                          # mov rax, cr0; ret


def test_cr0_wp_cleared_by_one_routine_stays_clear_for_the_next(machine_factory):
    """CR0 is not part of a thread's or a call's state: after a routine cleared WP, the next
    kernel call (which starts from the executive's clean ring-0 state) reads it clear, and
    the walker lets ring 0 write a read-only page."""
    m, ex = ring0(machine_factory, CLEAR_WP.ljust(0x80, b"\xcc") + READ_CR0)
    ex.cpu.crwrite.watch(ROUTINE + 0x80, READ_CR0)
    wp_set = ex.cpu.cr0
    assert ex.call_kernel(ROUTINE).rax == wp_set & ~CR0_WP
    assert ex.call_kernel(ROUTINE + 0x80).rax == wp_set & ~CR0_WP == ex.cpu.cr0
    assert ex.cpu.walk(DATA, "write", cpl=0).pa           # DATA is PAGE_READONLY


def test_a_mov_of_the_value_cr0_holds_drops_nothing_and_a_change_drops_everything(
        machine_factory):
    """SDM Vol. 3A 4.10.4.1: MOV to CR0 invalidates when it changes PG; here any change
    does (the STLB's rights were decided with the old WP), the same value nothing."""
    same = b"\x48\xbb" + struct.pack("<Q", DATA) + b"\x48\x8b\x13" + b"\x0f\x20\xc0\x0f\x22\xc0\xc3"
    m, ex = ring0(machine_factory, same)
    ex.call_kernel(ROUTINE)
    assert cached(ex, DATA) == [ex.mm.system.pcid]
    m, ex = ring0(machine_factory, b"\x48\xbb" + struct.pack("<Q", DATA) + b"\x48\x8b\x13"
                  + CLEAR_WP)
    ex.call_kernel(ROUTINE)
    assert cached(ex, DATA) == []


def test_registers_under_emu_debug_show_cr0_wp_clear_after_the_mov_and_set_before_it():
    """Break in WriteCr0, step onto its MOV, `registers cr0` (WP set), step over it (WP
    clear), step back (set), step again (clear): the driver's write then lands."""
    commands = ["break pecrwrite.sys!WriteCr0", "continue", "stepi 2", "registers cr0",
                "stepi", "registers cr0", "reverse-stepi", "registers cr0", "stepi",
                "registers cr0", "delete 1", "continue"]
    done = emurun.emu("debug", "--driver", "pecrwrite", "devioctl", DEVICE, hex(WP),
                      input="\n".join(commands) + "\n", cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    wp_set = "cr0 = 0x80010033 (2147549235)  PG WP NE ET MP PE\n"
    wp_clear = "cr0 = 0x80000033 (2147483699)  PG NE ET MP PE\n"
    shown = [line + "\n" for line in out.splitlines() if line.startswith("cr0 = ")]
    assert shown == [wp_set, wp_clear, wp_set, wp_clear]
    assert "<pecrwrite.sys!WriteCr0+0x4>: mov cr0, rcx" in out
    assert "WP clear 80000033: wrote 5ec0de to the read-only page at FFFFF80001003000" in out
