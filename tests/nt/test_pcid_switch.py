"""PCIDs in the executive: each address space caches its translations under its own PCID,
a context switch keeps them (CR3 loaded with bit 63 set), and every change to a page
table still reaches every PCID that may hold the page (SDM Vol. 3A 4.10.1, 4.10.4.1).

The security tests run two raw ring-3 processes: A touches a page and yields; while B runs
(B's CR3 loaded, A's translations kept under A's PCID) the test changes A's page the way
the memory manager would; then A reads the page again. A stale translation of A's PCID
would let A read a frame it no longer owns.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.hw.cpu import CR3_NOFLUSH
from emu.hw.mmu import CR4
from emu.hw.native import Mode
from emu.nt.events import Event
from emu.nt.loader import Image, Segment
from emu.nt.mm import virtual
from emu.nt.syscalls import Service

APPS = Path(__file__).resolve().parents[2] / "guest" / "build" / "apps"
CODE, DATA = 0x40_0000, 0x40_1000
REGION = 0x50_0000                       # A's private page, committed before the run
FIRST, SECOND = 0x1111_2222_3333_4444, 0x5555_6666_7777_8888
NT_CURRENT_PROCESS = (1 << 64) - 1


def _syscall(number: int, *args: int) -> bytes:
    """movabs rdi/rsi, args; movabs rax, number; syscall (the ABI's first arguments)."""
    code = b""
    for op, value in zip((b"\x48\xbf", b"\x48\xbe"), args, strict=False):
        code += op + struct.pack("<Q", value & (1 << 64) - 1)
    return code + b"\x48\xb8" + struct.pack("<Q", number) + b"\x0f\x05"


def _load(va: int) -> bytes:
    return b"\x48\xa1" + struct.pack("<Q", va)           # movabs rax, [va]


def _store(va: int) -> bytes:
    return b"\x48\xa3" + struct.pack("<Q", va)           # movabs [va], rax


def _image(name: str, code: bytes) -> Image:
    return Image(name, name, 0, CODE, [Segment(CODE, 4096, 5), Segment(DATA, 4096, 6)],
                 {CODE: code.ljust(4096, b"\xcc"), DATA: bytes(4096)}, {CODE: 5, DATA: 6})


def victim_code() -> bytes:
    """A: write FIRST to REGION, read it back (its translation cached under A's PCID),
    yield, then read REGION again into DATA, and end."""
    return (b"\x48\xb8" + struct.pack("<Q", FIRST) + _store(REGION) + _load(REGION)
            + _store(DATA) + _syscall(Service.NtYieldExecution) + _load(REGION)
            + _store(DATA + 8) + _syscall(Service.NtTerminateProcess, NT_CURRENT_PROCESS, 0))


def other_code(yields: int = 3) -> bytes:
    """B: yield a few times, then end."""
    return _syscall(Service.NtYieldExecution) * yields + \
        _syscall(Service.NtTerminateProcess, NT_CURRENT_PROCESS, 0)


def run_pair(machine_factory, change) -> tuple:
    """Run A and B; at B's first system call (B current, A not) call ``change(ex, a)``
    once. Returns (A's first read, A's read after the switch back, A, the executive)."""
    m = machine_factory(mem="16M", max_insns=1_000_000)
    ex = m.executive
    a = ex.create_process(_image("a", victim_code()), [])
    b = ex.create_process(_image("b", other_code()), [])
    result = virtual.allocate(ex, a, REGION, 0x1000, virtual.AllocationType.MEM_COMMIT
                              | virtual.AllocationType.MEM_RESERVE, 4)
    assert result.status == 0
    done = []

    def observer(event: Event, details: dict) -> None:
        if event is Event.SYSCALL and details["thread"].process is b and not done:
            assert ex.cpu.cr3 == b.space.cr3 and ex.cpu.pcid == b.space.pcid
            cached = [e for e in ex.cpu.native.entries() if e[1] == REGION]
            assert cached and {e[3] for e in cached} == {a.space.pcid}   # A's, kept
            change(ex, a)
            done.append(True)
    ex.events.subscribe(observer)
    m.run()
    assert done and a.exit_status == 0 and b.exit_status == 0
    first, second = struct.unpack("<QQ", ex.mem.read(a.space.lookup(DATA).pfn * 4096, 16))
    return first, second, a, ex


@pytest.fixture
def keep_space(monkeypatch):
    """A's user half outlives A, so the test can read what A stored."""
    from emu.nt.kernel import Executive

    monkeypatch.setattr(Executive, "release_address_space", lambda self, proc: None)


def test_a_page_freed_while_another_process_runs_is_not_reached_through_a_stale_pcid(
        machine_factory, keep_space):
    """A's page is decommitted and committed again (a new, zeroed frame) while B runs;
    back in A, the read must fault and see the new page (0), never the old frame."""
    def replace(ex, a) -> None:
        mem_decommit = virtual.AllocationType.MEM_DECOMMIT
        assert virtual.free(ex, a, REGION, 0x1000, mem_decommit).status == 0
        assert virtual.allocate(ex, a, REGION, 0x1000,
                                virtual.AllocationType.MEM_COMMIT, 4).status == 0
    first, second, a, _ = run_pair(machine_factory, replace)
    assert first == FIRST
    assert second == 0
    assert a.working_set.counters.demand_zero_faults >= 2     # the first touch, and again


def test_a_page_remapped_while_another_process_runs_shows_its_new_frame(
        machine_factory, keep_space):
    """A's PTE is pointed at another frame holding SECOND while B runs: back in A, the
    read sees SECOND."""
    def remap(ex, a) -> None:
        mapping = a.space.lookup(REGION)
        new = ex.mm.new_frame(mapping_use(ex, mapping.pfn), a.pid, REGION)
        ex.mem.write(new * 4096, struct.pack("<Q", SECOND))
        pte_pa = a.space.pte_address(REGION, create=False)
        ex.mem.write_u64(pte_pa, mapping.pte & ~0x000F_FFFF_FFFF_F000 | new * 4096)
        ex.mm.page_changed(a.space, REGION)          # what every PTE edit of Mm does
    first, second, _, _ = run_pair(machine_factory, remap)
    assert (first, second) == (FIRST, SECOND)


def mapping_use(ex, pfn: int):
    return ex.mm.pfn.entries[pfn].use


def test_a_page_trimmed_while_another_process_runs_faults_back_in(machine_factory,
                                                                   keep_space):
    """Every working set emptied while B runs: A's next read is a soft fault (the TLB
    kept nothing of A's page), and sees its data."""
    def trim(ex, a) -> None:
        assert ex.mm.pager.empty_working_sets() > 0
    faults = []

    def change(ex, a) -> None:
        faults.append(a.working_set.counters.soft_faults)
        trim(ex, a)
    first, second, a, _ = run_pair(machine_factory, change)
    assert (first, second) == (FIRST, FIRST)
    assert a.working_set.counters.soft_faults > faults[0]


# -- the executive's PCIDs ------------------------------------------------------------------

def test_the_executive_runs_with_cr4_pcide_and_each_space_has_its_own_pcid(machine_factory):
    m = machine_factory(mem="16M")
    ex = m.executive
    a = ex.create_process(_image("a", other_code()), [])
    b = ex.create_process(_image("b", other_code()), [])
    assert ex.cpu.cr4 & CR4.PCIDE
    pcids = [ex.mm.system.pcid, a.space.pcid, b.space.pcid]
    assert pcids == [1, 2, 3]
    ex.load_cr3(a.space.cr3)
    assert ex.cpu.cr3_value == a.space.cr3 | 2 and ex.cpu.reg("cr3") == a.space.cr3 | 2


def test_a_pcid_is_released_with_its_space_and_flushed_before_it_is_handed_out_again(
        machine_factory):
    m = machine_factory(mem="16M")
    ex = m.executive
    a = ex.create_process(_image("a", other_code(1)), [])
    pcid = a.space.pcid
    m.run()
    assert ex.mm.pcid_of(a.space.cr3) == 0 and ex.mm.pcids.in_use == 1     # System's only
    # A translation left under the PCID (as a dead process's could be)...
    ex.cpu.native.set_pcid(pcid)
    ex.cpu.native.insert(Mode.USER, [(REGION, 0x123000 | 7)])
    ex.cpu.native.set_pcid(ex.cpu.pcid)
    assert any(e[3] == pcid for e in ex.cpu.native.entries())
    c = ex.create_process(_image("c", other_code(1)), [])
    assert c.space.pcid == pcid                                # the lowest free: reused
    assert not any(e[3] == pcid for e in ex.cpu.native.entries())   # ... flushed first


def test_a_space_beyond_4095_pcids_gets_pcid_0_and_is_flushed_at_each_load(machine_factory):
    m = machine_factory(mem="16M")
    ex = m.executive
    while ex.mm.pcids.in_use < 4095:
        ex.mm.pcids.allocate()
    a = ex.create_process(_image("a", other_code(1)), [])
    assert a.space.pcid == 0
    ex.load_cr3(a.space.cr3)
    assert ex.cpu.cr3_value == a.space.cr3 and ex.cpu.pcid == 0


def test_a_switch_keeps_the_translations_it_cached(machine_factory):
    """Two yielders: the page walks do not grow with the number of switches (each switch
    flushed PCID 0's translations before PCIDs: three walks a switch)."""
    def walks(yields: int) -> tuple[int, int, int]:
        m = machine_factory(mem="16M")
        for _ in range(2):
            m.spawn(APPS / "yielder", [str(yields)])
        result = m.run()
        native = m.executive.cpu.native
        return (native.fills - native.stlb_hits, native.stlb_hits,
                result.stats.context_switches)

    few, hits_few, switches_few = walks(20)
    many, hits_many, switches_many = walks(400)
    switches = switches_many - switches_few
    assert switches >= 700
    assert many - few < 20
    # QEMU's own TLB is not tagged: every switch empties it, and the STLB refills it.
    assert hits_many - hits_few >= 2 * switches


def test_a_switch_loads_cr3_with_bit_63_set(machine_factory):
    m = machine_factory(mem="16M")
    ex = m.executive
    loads = []
    real = ex.cpu.load_cr3

    def spy(value: int) -> None:
        loads.append(value)
        return real(value)
    ex.cpu.load_cr3 = spy
    a = m.spawn(APPS / "yielder", ["3"])
    b = m.spawn(APPS / "yielder", ["3"])
    m.run()
    for proc in (a, b):
        assert proc.space.cr3 | proc.space.pcid | CR3_NOFLUSH in loads
    assert all(value & CR3_NOFLUSH for value in loads)


# -- INVPCID from guest code (Unicorn 2.1.4 stops at it as at an invalid opcode) --------------

ROUTINE = 0xFFFF_8000_0020_0000
DESCRIPTOR = ROUTINE + 0x40


def invpcid_routine(kind: int) -> bytes:
    """mov eax, kind; lea rbx, [rip + DESCRIPTOR]; invpcid rax, [rbx]; invpcid rax, [rbx];
    mov eax, 7; ret -- twice in a row: each completes and the next runs."""
    code = b"\xb8" + struct.pack("<I", kind) + b"\x48\x8d\x1d" + struct.pack("<i", 0x40 - 12)
    return code + b"\x66\x0f\x38\x82\x03" * 2 + b"\xb8\x07\x00\x00\x00\xc3"


def ring0(machine_factory, kind: int, pcid: int, va: int = 0):
    from emu.nt.mm.address_space import Protection
    from emu.nt.mm.pfn import FrameUse

    m = machine_factory(mem="16M")
    ex = m.executive
    page = invpcid_routine(kind).ljust(0x40, b"\xcc") + struct.pack("<QQ", pcid, va)
    ex.mm.map_new(ex.mm.system, ROUTINE, Protection.PAGE_EXECUTE_READ, use=FrameUse.KERNEL,
                  data=page)
    native = ex.cpu.native
    for owner in (5, 6):
        native.set_pcid(owner)
        native.insert(Mode.USER, [(REGION, 0x123000 | 7), (REGION + 0x1000, 0x124000 | 7)])
    native.set_pcid(ex.cpu.pcid)
    return m, ex


def user_entries(ex) -> list[tuple[int, int]]:
    return sorted((vpage, pcid) for mode, vpage, _, pcid in ex.cpu.native.entries()
                  if mode is Mode.USER and vpage in (REGION, REGION + 0x1000))


def test_invpcid_at_ring_0_is_played_and_completes(machine_factory):
    m, ex = ring0(machine_factory, 0, 5, REGION)            # type 0: one page of PCID 5
    assert ex.call_kernel(ROUTINE).rax == 7
    assert user_entries(ex) == [(REGION, 6), (REGION + 0x1000, 5), (REGION + 0x1000, 6)]
    m2, ex2 = ring0(machine_factory, 1, 6)                  # type 1: all of PCID 6
    assert ex2.call_kernel(ROUTINE).rax == 7
    assert user_entries(ex2) == [(REGION, 5), (REGION + 0x1000, 5)]
    m3, ex3 = ring0(machine_factory, 3, 0)                  # type 3: every PCID
    assert ex3.call_kernel(ROUTINE).rax == 7 and user_entries(ex3) == []


def test_invpcid_counts_as_one_instruction(machine_factory):
    """The routine counts as many instructions as the same one with each INVPCID made a
    5-byte NOP (0F 1F 44 00 00), under a budget, as a debugger's run counts them."""
    def counted(patch: bool) -> int:
        m, ex = ring0(machine_factory, 1, 6)
        if patch:
            pa = ex.mm.system.lookup(ROUTINE).pfn * 4096
            ex.mem.write(pa + 12, b"\x0f\x1f\x44\x00\x00" * 2)
        ex.set_budget(1000)
        start = ex.cpu.instructions
        assert ex.call_kernel(ROUTINE).rax == 7
        return ex.cpu.instructions - start
    assert counted(False) == counted(True) >= 6


@pytest.mark.parametrize(("kind", "pcid", "va", "why"), [
    (4, 0, 0, "INVPCID type 4"),
    (1, 0x1005, 0, "bits 63:12"),
    (0, 5, 0x0000_8000_0000_0000, "non-canonical"),
])
def test_invpcid_refused_at_ring_0_is_gp_kmode_exception(machine_factory, kind, pcid, va, why):
    from emu.nt.bugcheck import BugCheck

    m, ex = ring0(machine_factory, kind, pcid, va)
    with pytest.raises(BugCheck) as crash:
        ex.call_kernel(ROUTINE)
    assert crash.value.code == 0x1E
    assert crash.value.params[:2] == (0xC000_0005, ROUTINE + 12)
    assert why in crash.value.detail
    assert len(user_entries(ex)) == 4                      # nothing invalidated


def test_invpcid_at_ring_3_is_a_privileged_instruction(machine_factory):
    """SDM: #GP(0) at CPL > 0 (Unicorn alone would make it #UD, an illegal instruction)."""
    m = machine_factory(mem="16M", max_insns=100_000)
    ex = m.executive
    code = b"\x31\xc0\x48\xbb" + struct.pack("<Q", DATA) + b"\x66\x0f\x38\x82\x03"
    a = ex.create_process(_image("a", code + b"\xeb\xfe"), [])
    m.run()
    assert a.exception is not None
    assert a.exception.code == 0xC000_0096                 # STATUS_PRIVILEGED_INSTRUCTION
    assert a.exception.rip == CODE + 12
