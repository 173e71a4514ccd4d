"""The KPCR through GS (emu.nt.kpcr): wdm.h's x64 inlines KeGetCurrentThread /
PsGetCurrentThread (``gs:[0x188]``), ntddk.h's KeGetPcr (``gs:[0x18]``) and
KeGetCurrentProcessorNumber (``gs:[0x184]``) in a PE driver (guest/drivers-pe/pekpcr.c),
and SWAPGS's two bases on each side of the ring boundary."""

from __future__ import annotations

from pathlib import Path

from emu.hw import mmu
from emu.nt import exports, layout, ntos  # noqa: F401 (ntos registers the exports)

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"
SYSTEM = "thread 8 of process 4, system thread 1, KeGetCurrentThread same 1, exports same 1 1"


def run(machine_factory, apps, *commands, **options):
    m = machine_factory(**options)
    m.add_driver(DRIVERS / "pekpcr.sys")
    procs = [m.spawn(apps / app, list(args)) for app, *args in commands]
    r = m.run()
    out = bytes(m.executive.debug_output).decode()
    lines = [line[len("pekpcr.sys: "):] for line in out.splitlines()
             if line.startswith("pekpcr.sys: ")]
    return m, procs, r, lines


def test_ke_get_pcr_reads_the_kpcr_through_gs(machine_factory, apps):
    _, _, r, lines = run(machine_factory, apps, ("hello",))
    assert r.bugcheck is None
    # KeGetPcr() is gs:[0x18], the KPCR's Self; CurrentPrcb is the KPRCB at +0x180.
    assert lines[0] == ("KPCR FFFF800000002000, Self FFFF800000002000, "
                        "CurrentPrcb FFFF800000002180, version 1.1")
    # KeGetCurrentProcessorNumber (gs:[0x184]) and the export KeGetCurrentProcessorNumberEx.
    assert lines[1] == "processor 0, Ex 0 (group 0 number 0)"


def test_driver_entry_a_dpc_and_unload_run_in_the_system_thread(machine_factory, apps):
    _, _, r, lines = run(machine_factory, apps, ("hello",))
    assert r.bugcheck is None
    assert lines[2] == f"DriverEntry: {SYSTEM}"
    assert lines[3] == f"DPC: {SYSTEM}"          # queued at PASSIVE_LEVEL: runs at once
    assert lines[-1] == f"DriverUnload: {SYSTEM}"


def test_a_dispatch_routine_s_current_thread_is_the_irp_s_thread(machine_factory, apps):
    _, (devread,), r, lines = run(machine_factory, apps, ("devread", "\\Device\\PeKpcr", "0"))
    assert r.bugcheck is None
    tid, pid = devread.threads[0].tid, devread.pid
    i = lines.index(f"IRP_MJ_CREATE: thread {tid} of process {pid}, system thread 0, "
                    "KeGetCurrentThread same 1, exports same 1 1")
    assert lines[i + 1] == "IA32_GS_BASE FFFF800000002000, IA32_KERNEL_GS_BASE 0000000000000000"
    assert lines[i + 2] == "Irp->Tail.Overlay.Thread same 1"


def test_ring_3_keeps_its_own_gs_base(machine_factory, apps):
    # Stopped in the app: GS's base is the app's (0), IA32_KERNEL_GS_BASE the KPCR, as the
    # exit's SWAPGS leaves them.
    m, _, r, _ = run(machine_factory, apps, ("hello",), max_insns=300)
    cpu = m.executive.cpu
    assert r.stopped is not None and cpu.cpl == 3
    assert cpu.reg("gs_base") == 0 and cpu.kernel_gs_base == layout.KERNEL_PCR


def test_the_kpcr_is_a_supervisor_nx_page_of_the_kernel_half(machine_factory, apps):
    m, _, _, _ = run(machine_factory, apps, ("hello",))
    ex = m.executive
    walk = dict(cr3=ex.mm.system.cr3, cr0=ex.cpu.cr0, cr4=ex.cpu.cr4, efer=ex.cpu.efer)
    assert mmu.walk(ex.mem, layout.KERNEL_PCR, "write", cpl=0, **walk)
    for access, cpl in (("read", 3), ("fetch", 0)):
        try:
            mmu.walk(ex.mem, layout.KERNEL_PCR, access, cpl=cpl, **walk)
        except mmu.PageFault:
            continue
        raise AssertionError(f"{access} at CPL {cpl} allowed")
    # The kernel's own data (as Windows' KiInitialPcr), not pool.
    assert layout.KERNEL_PCR < layout.KERNEL_POOL
    assert ex.mm.system.lookup(layout.KERNEL_PCR).pfn == ex.pcr_frame


def test_the_exports_exist_where_the_import_library_has_them():
    for name in ("KeGetCurrentThread", "PsGetCurrentThread", "KeGetCurrentProcessorNumberEx"):
        assert exports.pe_address_of("ntoskrnl.exe", name) == exports.address_of(name)


def test_a_machine_with_no_driver_maps_no_kpcr(machine_factory, apps):
    # No ring-0 routine runs: the KPCR is never mapped, every frame stays where it was.
    m = machine_factory()
    m.spawn(apps / "hello", [])
    m.run()
    assert m.executive.pcr_frame == 0
    assert m.executive.mm.system.lookup(layout.KERNEL_PCR) is None
