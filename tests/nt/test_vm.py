"""Virtual memory through the machine: NtXxxVirtualMemory, demand-zero faults, guard pages,
stack growth and commit charge (emu.nt.mm.virtual, emu.nt.svc_memory, the vm guest apps)."""

from __future__ import annotations

import re

import pytest

from emu.hw.exceptions import CpuException, Vector
from emu.hw.mmu import PTE, PFErr
from emu.nt.mm import softpte, virtual
from emu.nt.mm.pfn import FrameUse, OutOfFrames
from emu.nt.mm.softpte import PteState
from emu.nt.mm.vad import MemState, MemType, PageProtect
from emu.nt.mm.virtual import AllocationType, FaultResolution
from emu.nt.status import NTSTATUS

AV = NTSTATUS.STATUS_ACCESS_VIOLATION
SEED_VA = 0x7F7_9395_0000                 # the address in the seed's picture
P = 4096
RESERVE_COMMIT = AllocationType.MEM_RESERVE | AllocationType.MEM_COMMIT
RW = PageProtect.PAGE_READWRITE


def lines(proc) -> list[str]:
    return proc.output.decode().splitlines()


def run_app(machine_factory, apps, name, *args, **kwargs):
    m = machine_factory(**kwargs)
    proc = m.spawn(apps / name, list(args))
    m.run()
    return m, proc


def private_frames(m, pid: int, low: int = 0, high: int = 1 << 64) -> int:
    """Frames the PFN database says back a private page of ``pid`` in [low, high)."""
    return sum(1 for e in m.executive.mm.pfn.entries
               if e.use is FrameUse.PRIVATE and e.owner == pid and low <= (e.va or 0) < high)


def assert_balanced(m, free_before: int) -> None:
    """Every process has ended: no commit is charged and every frame is back."""
    state = virtual.commit_state(m.executive)
    assert state.charged == 0 and state.processes == {}
    assert m.executive.mm.pfn.free_count == free_before


# -- the seed's picture ----------------------------------------------------------------------

def test_notepad_and_myapp_same_address_different_frames(machine_factory, apps):
    m = machine_factory()
    free_before = m.executive.mm.pfn.free_count
    seen = {}

    def last_look(proc):                 # the executive calls this before freeing the space
        pages = [proc.space.lookup(SEED_VA + i * P) for i in range(3)]
        seen[proc.name] = [(p.pfn, m.executive.mm.pfn.entries[p.pfn].owner,
                            m.executive.mm.pfn.entries[p.pfn].va) for p in pages]

    m.executive.exit_observers.append(last_look)
    notepad, myapp = m.spawn(apps / "notepad"), m.spawn(apps / "myapp")
    m.run()
    for proc, other in ((notepad, myapp), (myapp, notepad)):
        assert proc.exit_status == 0
        out = lines(proc)
        assert out[0] == f"{proc.name}: committed 12288 bytes at 0x7f793950000"
        assert out[1:4] == [f'{proc.name}: {SEED_VA + i * P:#x} holds "{proc.name} page {i}"'
                            for i in range(3)]
        assert out[4] == "ok" and other.name not in proc.output.decode()
        frames = [pfn for pfn, owner, va in seen[proc.name]]
        assert [(owner, va) for _, owner, va in seen[proc.name]] == \
            [(proc.pid, SEED_VA + i * P) for i in range(3)]
        # Three contiguous virtual pages, but not three contiguous frames.
        assert frames != list(range(frames[0], frames[0] + 3))
    assert not {pfn for pfn, _, _ in seen["notepad"]} & {pfn for pfn, _, _ in seen["myapp"]}
    assert_balanced(m, free_before)


# -- demand zero -----------------------------------------------------------------------------

def test_committed_pages_get_frames_only_when_first_touched(machine_factory, apps):
    counts = {}

    def console(proc, data):
        text = data.decode()
        if text.startswith("committed"):
            counts["base"] = int(re.search(r"at (0x[0-9a-f]+)", text)[1], 16)
            counts["charge"] = proc.vads.charge.pages
        base = counts["base"]
        counts[text.split()[0]] = private_frames(m, proc.pid, base, base + 16 * P)
        if text.startswith("wrote"):
            counts["ptes"] = [proc.space.lookup(base + i * P).pte for i in range(16)]

    m = machine_factory(console=console)
    proc = m.spawn(apps / "vmtest", ["demandzero"])
    before = proc.vads.charge.pages
    m.run()
    assert lines(proc) == ["committed 16 pages at 0x10000", "read 8 pages: sum 0",
                           "wrote 8 pages"]
    assert counts["charge"] == before + 16                  # charged at commit time ...
    assert (counts["committed"], counts["read"], counts["wrote"]) == (0, 8, 16)  # ... backed late
    ptes = counts["ptes"]
    assert all(pte & PTE.A and not pte & PTE.D for pte in ptes[:8])   # read: Accessed only
    assert all(pte & PTE.A and pte & PTE.D for pte in ptes[8:])       # written: Dirty too
    assert all(pte & PTE.US and pte & PTE.NX and pte & PTE.RW for pte in ptes)


# -- protections -----------------------------------------------------------------------------

def test_every_protection_value(machine_factory, apps):
    _, proc = run_app(machine_factory, apps, "vmtest", "protections")
    out = lines(proc)
    protects = ["0x1", "0x2", "0x4", "0x10", "0x20", "0x40", "0x104", "0x120"]
    for line, protect in zip(out[:8], protects, strict=True):
        assert line.endswith(f"state 0x1000 protect {protect} type 0x20000"), line
    assert out[8:15] == [f"refused {name}: 0xc0000045" for name in (
        "0", "READONLY|READWRITE", "PAGE_WRITECOPY", "PAGE_EXECUTE_WRITECOPY",
        "PAGE_NOACCESS|PAGE_GUARD", "PAGE_READWRITE|PAGE_NOCACHE", "0x800")]
    assert out[15:] == [
        "read PAGE_READONLY: 0, PAGE_EXECUTE: 0, PAGE_EXECUTE_READ: 0",
        "PAGE_READWRITE holds 7",
        "PAGE_EXECUTE_READWRITE code returned 42",
        "protected PAGE_EXECUTE_READ (old 0x4): code returned 7",
        "made PAGE_NOACCESS: base 0xf0000 allocation 0xf0000/0x4 size 0x1000 state 0x1000 "
        "protect 0x1 type 0x20000",
        "PAGE_NOACCESS (old 0x1) then PAGE_READONLY: still holds 55",
        "ok"]
    assert proc.exit_status == 0


FAULTS = [  # mode, access, what the app prints before the fault
    ("noaccess", "read", "reading PAGE_NOACCESS"),
    ("readonly", "write", "writing PAGE_READONLY"),
    ("execute", "write", "writing PAGE_EXECUTE_READ"),
    ("noexec", "execute", "calling PAGE_READWRITE"),
    ("reserved", "read", "reading reserved, not committed"),
    ("decommit", "read", "reading decommitted"),
    ("release", "read", "reading released"),
    ("protect", "write", "writing a page made read-only"),
]


@pytest.mark.parametrize(("mode", "access", "says"), FAULTS)
def test_access_the_page_does_not_allow_is_an_access_violation(machine_factory, apps, mode,
                                                               access, says):
    _, proc = run_app(machine_factory, apps, "vmtest", mode)
    last = lines(proc)[-1]
    assert last.startswith(says + " at 0x"), last
    exc = proc.exception
    assert exc is not None and exc.code == AV and exc.access == access
    assert exc.address == int(last.rsplit(" ", 1)[1], 16)
    assert exc.params == ({"read": 0, "write": 1, "execute": 8}[access], exc.address)


def test_decommit_keeps_the_other_pages_and_protect_keeps_the_data(machine_factory, apps):
    _, decommit = run_app(machine_factory, apps, "vmtest", "decommit")
    assert lines(decommit)[0] == "decommitted 0x11000: the page before still holds 9"
    _, protect = run_app(machine_factory, apps, "vmtest", "protect")
    assert lines(protect)[0] == "PAGE_READONLY now (old 0x4), still reads 'x'"
    _, release = run_app(machine_factory, apps, "vmtest", "release")
    assert lines(release)[0] == "released 4096 bytes"


# -- guard pages -----------------------------------------------------------------------------

def test_a_guard_page_touched_by_a_service_reports_once(machine_factory, apps):
    _, proc = run_app(machine_factory, apps, "vmtest", "guardonce")
    assert lines(proc) == [
        "guard page: base 0x10000 allocation 0x10000/0x104 size 0x1000 state 0x1000 "
        "protect 0x104 type 0x20000",
        "query into the guard page: 0x80000001",
        "query into it again: 0x00000000",
        "the page now says protect 0x4",
        "ok"]


def test_access_fault_on_a_guard_page_then_on_the_same_page(machine_factory, apps):
    m = machine_factory()
    proc = m.spawn(apps / "hello")
    ex = m.executive
    got = virtual.allocate(ex, proc, 0, P, RESERVE_COMMIT, RW | PageProtect.PAGE_GUARD)
    exc = CpuException(Vector.PF, 0x401000, 3, int(PFErr.U | PFErr.W), got.base, "write")
    assert virtual.access_fault(ex, proc, exc) is FaultResolution.GUARD_PAGE
    assert proc.vads.query(got.base).protect == RW and proc.space.lookup(got.base) is None
    assert virtual.access_fault(ex, proc, exc) is FaultResolution.RESOLVED
    assert proc.space.lookup(got.base).pte & PTE.D


def test_touching_a_guard_page_raises_guard_page_violation(machine_factory, apps):
    _, proc = run_app(machine_factory, apps, "vmtest", "guard")
    exc = proc.exception
    address = int(lines(proc)[-1].rsplit(" ", 1)[1], 16)
    assert exc.address == address and exc.access == "read"
    assert exc.code == NTSTATUS.STATUS_GUARD_PAGE_VIOLATION and exc.params == (0, address)


def test_the_guard_page_is_gone_after_its_first_touch(machine_factory, apps):
    m, proc = run_app(machine_factory, apps, "vmtest", "guard")
    assert proc.exception.address == 0x10000 and proc.exception.access == "read"
    # Whatever the kernel reported, MmAccessFault cleared the guard: the charge is returned
    # and the page was never backed.
    assert virtual.commit_state(m.executive).charged == 0


# -- stacks ----------------------------------------------------------------------------------

def test_the_main_stack_grows_past_its_initial_commit(machine_factory, apps):
    _, proc = run_app(machine_factory, apps, "vmtest", "stack")
    assert lines(proc) == ["recursing 640 KiB deep", "returned 12403; stack allocation "
                           "0x7fffffee0000", "ok"]
    top = proc.stack_high
    assert proc.stack_low <= top - 600 * 1024      # 256 KiB were committed at the start
    assert proc.threads[0].stack_low == proc.stack_low


def test_stack_overflow_only_when_the_reservation_is_used_up(machine_factory, apps):
    _, proc = run_app(machine_factory, apps, "stackoverflow")
    exc = proc.exception
    assert exc.code == NTSTATUS.STATUS_STACK_OVERFLOW
    reservation = proc.stack_high - virtual.USER_STACK_RESERVE
    # The last guard page sits just above the never-committed bottom page.
    assert proc.stack_low == reservation + 2 * P
    assert reservation + P <= exc.address < reservation + 2 * P


def test_new_process_vads_describe_what_the_kernel_mapped(machine_factory, apps):
    m = machine_factory()
    proc = m.spawn(apps / "hello")
    vads = list(proc.vads)
    image = vads[0]
    assert (image.base, image.type, image.allocation_protect) == \
        (0x400000, MemType.MEM_IMAGE, PageProtect.PAGE_EXECUTE_WRITECOPY)
    assert [r.protect for r in image.runs] == [PageProtect.PAGE_READONLY,
                                                 PageProtect.PAGE_EXECUTE_READ, RW]
    stack = proc.vads.find(proc.stack_low)
    assert stack.stack and stack.end == proc.stack_high
    guard = stack.run_at(proc.stack_low - P)
    assert (guard.state, guard.protect) == (MemState.MEM_COMMIT, RW | PageProtect.PAGE_GUARD)
    assert stack.run_at(stack.base).state == MemState.MEM_RESERVE
    # Every frame the process holds is paid for; the guard page is charged but not backed.
    owned = sum(1 for e in m.executive.mm.pfn.entries if e.owner == proc.pid)
    assert owned == proc.vads.charge.total - 1


def test_a_thread_stack_is_reserved_top_down_with_a_guard(machine_factory, apps):
    m = machine_factory()
    proc = m.spawn(apps / "hello")
    free = m.executive.mm.pfn.free_count
    got = virtual.create_thread_stack(m.executive, proc, commit=16 * 1024)
    assert got.status == NTSTATUS.STATUS_SUCCESS and got.size == 16 * 1024
    vad = proc.vads.find(got.base)
    assert vad.stack and vad.end == got.base + got.size and vad.end - vad.base == 1 << 20
    assert vad.run_at(got.base - P).protect == RW | PageProtect.PAGE_GUARD
    assert m.executive.mm.pfn.free_count == free                # demand zero: no frame yet
    assert virtual.fault_in_user_range(m.executive, proc, got.base + got.size - 8, 8,
                                       "write") == NTSTATUS.STATUS_SUCCESS
    assert proc.space.lookup(got.base + got.size - P) is not None
    charged = virtual.commit_state(m.executive).charged
    top = got.base + got.size
    assert virtual.release_thread_stack(m.executive, proc, top) == NTSTATUS.STATUS_SUCCESS
    assert proc.vads.find(got.base) is None and m.executive.mm.pfn.free_count == free
    assert virtual.commit_state(m.executive).charged == charged - got.size // P - 1


def test_the_kernel_can_charge_its_own_pages(machine_factory, apps):
    m = machine_factory(mem="4M", pagefile_size=0)
    m.spawn(apps / "hello")
    state = virtual.commit_state(m.executive)
    left = state.limit - state.charged
    assert not virtual.charge_system_commit(m.executive, left + 1)
    assert virtual.charge_system_commit(m.executive, left)
    assert state.charged == state.limit
    virtual.return_system_commit(m.executive, left)
    assert state.limit - state.charged == left


# -- limits ----------------------------------------------------------------------------------

def test_bad_requests_get_the_windows_statuses(machine_factory, apps):
    _, proc = run_app(machine_factory, apps, "vmtest", "limits")
    assert lines(proc) == [
        "below 64K: 0xc000000d",
        "below 64K, rounded: 0xc000000d",
        "commit below 64K: 0xc000000d",
        "above highest: 0xc000000d",
        "kernel half: 0xc000000d",
        "past highest: 0xc000000d",
        "size 0: 0xc000000d",
        "larger than user space: 0xc000000d",
        "no gap that large: 0xc0000017",
        "type 0: 0xc000000d",
        "type MEM_DECOMMIT: 0xc000000d",
        "protect 0: 0xc0000045",
        "reserved 0x10000, 65536 bytes",
        "overlapping reserve: 0xc0000018",
        "reserve over the image: 0xc0000018",
        "commit in free memory: 0xc0000018",
        "commit past the reservation: 0xc0000018",
        "commit in the image: 0xc0000018",
        "protect reserved: 0xc000002d",
        "protect free: 0xc00000a0",
        "protect size 0: 0xc000000d",
        "protect WRITECOPY: 0xc0000045",
        "protect across two allocations: 0xc0000018",
        "free nothing: 0xc00000a0",
        "release not at base: 0xc000009f",
        "release with a size: 0xc000000d",
        "decommit past the end: 0xc000001a",
        "free the image: 0xc000001b",
        "free type 0: 0xc000000d",
        "free type both: 0xc000000d",
        "decommit reserved: 0x00000000",
        "release: 0x00000000",
        "release again: 0xc00000a0",
        "query kernel half: 0xc000000d",
        "query above highest: 0xc000000d",
        "base pointer NULL: 0xc0000005",
        "size pointer in the kernel: 0xc0000005",
        "base pointer read-only: 0xc0000005",
        "query into NULL: 0xc0000005",
        "old-protect pointer NULL: 0xc0000005",
        "still alive"]
    assert proc.exit_status == 0


def test_query_describes_each_region(machine_factory, apps):
    _, proc = run_app(machine_factory, apps, "vmtest", "query")
    out = dict(line.split(": ", 1) for line in lines(proc))
    assert out["null"] == "base 0x0 allocation 0x0/0x0 size 0x400000 state 0x10000 " \
                          "protect 0x1 type 0x0"
    assert re.fullmatch(r"base 0x401000 allocation 0x400000/0x80 size 0x[0-9a-f]+ "
                        r"state 0x1000 protect 0x20 type 0x1000000", out["image"])
    assert out["stack"].startswith("base 0x7ffffffdf000 allocation 0x7fffffee0000/0x4 ")
    assert out["reserved"] == "base 0x10000 allocation 0x10000/0x4 size 0x4000 state 0x2000 " \
                              "protect 0x0 type 0x20000"
    assert out["committed"] == "base 0x15000 allocation 0x10000/0x4 size 0x1000 " \
                               "state 0x1000 protect 0x2 type 0x20000"
    assert out["after"] == "base 0x16000 allocation 0x10000/0x4 size 0xa000 state 0x2000 " \
                           "protect 0x0 type 0x20000"
    assert out["beyond"].startswith("base 0x20000 allocation 0x0/0x0 size 0x3e0000 "
                                    "state 0x10000")
    assert out["top-down"].startswith("base 0x7ffffffe0000 ")
    assert out["highest"].startswith("base 0x7ffffffef000 allocation 0x0/0x0 size 0x1000 ")
    assert out["kernel"] == "0xc000000d"


def test_python_api_rounds_like_virtualalloc(machine_factory, apps):
    m = machine_factory()
    proc = m.spawn(apps / "hello")
    ex = m.executive
    got = virtual.allocate(ex, proc, 0x123456, 0x10, AllocationType.MEM_RESERVE, RW)
    assert (got.base, got.size) == (0x120000, 0x4000)           # 64 KiB down, pages up
    got = virtual.allocate(ex, proc, 0x122FFF, 2, AllocationType.MEM_COMMIT, RW)
    assert (got.base, got.size) == (0x122000, 0x2000)           # two pages: it straddles
    got = virtual.protect(ex, proc, 0x122800, 0x1000, PageProtect.PAGE_READONLY)
    assert (got.base, got.size, got.old_protect) == (0x122000, 0x2000, RW)
    got = virtual.free(ex, proc, 0x120000, 0, AllocationType.MEM_RELEASE)
    assert (got.status, got.base, got.size) == (0, 0x120000, 0x4000)


def test_decommit_and_noaccess_give_back_or_keep_the_frame(machine_factory, apps):
    m = machine_factory()
    proc = m.spawn(apps / "hello")
    ex = m.executive
    base = virtual.allocate(ex, proc, 0, 2 * P, RESERVE_COMMIT, RW).base
    for va in (base, base + P):
        assert virtual.resolve_fault(ex, proc, va, "write") is FaultResolution.RESOLVED
    free = ex.mm.pfn.free_count
    frame = proc.space.lookup(base).pfn
    virtual.protect(ex, proc, base, P, PageProtect.PAGE_NOACCESS)
    assert proc.space.lookup(base) is None and proc.vads.parked == {base: frame}
    assert virtual.resolve_fault(ex, proc, base, "read") is FaultResolution.NOT_HANDLED
    virtual.protect(ex, proc, base, P, RW)
    assert virtual.resolve_fault(ex, proc, base, "read") is FaultResolution.RESOLVED
    assert proc.space.lookup(base).pfn == frame and ex.mm.pfn.free_count == free
    charge = proc.vads.charge.pages
    virtual.free(ex, proc, base, 2 * P, AllocationType.MEM_DECOMMIT)
    assert ex.mm.pfn.free_count == free + 2 and proc.vads.charge.pages == charge - 2
    assert virtual.resolve_fault(ex, proc, base, "read") is FaultResolution.NOT_HANDLED


# -- commit charge ---------------------------------------------------------------------------

@pytest.mark.parametrize(("pagefile", "low", "high"), [(0, 10, 16), ("8M", 18, 24)])
def test_vmhog_hits_the_commit_limit_and_hello_still_runs(machine_factory, apps, pagefile,
                                                          low, high):
    """Commit is limited by RAM alone without a pagefile, by RAM + pagefile with one."""
    m = machine_factory(mem="16M", pagefile_size=pagefile)
    free_before = m.executive.mm.pfn.free_count
    hog, hello = m.spawn(apps / "vmhog"), m.spawn(apps / "hello")
    result = m.run()
    out = lines(hog)
    mib = int(re.fullmatch(r"vmhog: committed and touched (\d+) MiB, then 0xc000012d", out[0])[1])
    assert low <= mib < high
    assert out[1:] == ["vmhog: 0 pages wrong",
                       "vmhog: released everything; 1 MiB again: 0x00000000"]
    assert hog.exit_status == 0 and hog.exception is None
    assert hello.output == b"Hello, world!\n" and hello.exit_status == 0
    state = virtual.commit_state(m.executive)
    assert state.peak <= state.limit and result.bugcheck is None
    assert_balanced(m, free_before)


def test_commit_beyond_the_limit_is_refused_and_changes_nothing(machine_factory, apps):
    m = machine_factory(mem="4M")
    proc = m.spawn(apps / "hello")
    ex = m.executive
    state = virtual.commit_state(ex)
    left = state.limit - state.charged
    got = virtual.allocate(ex, proc, 0, (left + 1) * P, RESERVE_COMMIT, RW)
    assert got.status == NTSTATUS.STATUS_COMMITMENT_LIMIT and len(proc.vads) == 3
    reserved = virtual.allocate(ex, proc, 0, (left + 1) * P, AllocationType.MEM_RESERVE, RW)
    assert reserved.status == NTSTATUS.STATUS_SUCCESS             # address space is free
    assert state.charged == state.limit - left


def test_a_process_that_does_not_fit_the_commit_limit_is_not_created(machine_factory, apps):
    m = machine_factory(mem="4M", pagefile_size=0)
    ex = m.executive
    first = m.spawn(apps / "hello")
    state = virtual.commit_state(ex)
    hog = virtual.allocate(ex, first, 0, (state.limit - state.charged - 10) * P,
                           RESERVE_COMMIT, RW)
    assert hog.status == NTSTATUS.STATUS_SUCCESS
    free = ex.mm.pfn.free_count
    with pytest.raises(OutOfFrames, match="commit limit"):
        m.spawn(apps / "hello")
    assert ex.mm.pfn.free_count == free and len(m.processes) == 1
    virtual.free(ex, first, hog.base, 0, AllocationType.MEM_RELEASE)
    second = m.spawn(apps / "hello")
    m.run()
    assert first.output == second.output == b"Hello, world!\n"


def test_frames_and_commit_balance_after_every_app(machine_factory, apps):
    m = machine_factory()
    free_before = m.executive.mm.pfn.free_count
    for mode in ("demandzero", "protections", "guardonce", "limits", "query", "stack",
                 "noaccess", "decommit", "protect", "guard"):
        m.spawn(apps / "vmtest", [mode])
    m.spawn(apps / "notepad")
    m.spawn(apps / "stackoverflow")
    m.run()
    assert_balanced(m, free_before)


@pytest.mark.parametrize("pagefile", [0, None])
def test_page_tables_are_charged_so_every_committed_page_can_be_touched(machine_factory, apps,
                                                                         pagefile):
    """Pages 2 MiB apart each need their own page table: the charge counts them, so
    committing until refused and then touching everything never runs out of RAM. With a
    pagefile the pages may leave RAM but their page tables may not: the resident charge
    stops the commits first."""
    m = machine_factory(mem="2M", pagefile_size=pagefile)
    ex = m.executive
    proc = m.spawn(apps / "hello")
    bases = []
    for i in range(1, 1000):
        got = virtual.allocate(ex, proc, (1 << 32) + (i << 21), P, RESERVE_COMMIT, RW)
        if got.status != NTSTATUS.STATUS_SUCCESS:
            assert got.status == NTSTATUS.STATUS_COMMITMENT_LIMIT
            break
        bases.append(got.base)
    assert len(bases) > 50
    for va in bases:
        assert virtual.resolve_fault(ex, proc, va, "write") is FaultResolution.RESOLVED
    state = virtual.commit_state(ex)
    if pagefile is None:
        assert state.resident_limit - state.resident < 2 < state.limit - state.charged
        assert ex.mm.pager.counters.pages_written > 0
        states = {softpte.decode(proc.space.pte(va)).state for va in bases}
        assert states <= {PteState.VALID, PteState.TRANSITION, PteState.PAGEFILE}
        assert PteState.PAGEFILE in states        # written pages went out, not lost
        return
    assert ex.mm.pfn.free_count >= virtual.kernel_headroom(len(ex.mm.pfn.entries)) - \
        (state.limit - state.charged) - 8      # at most the kernel stack of the one thread
