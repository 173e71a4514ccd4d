"""The I/O manager: a read IRP to a driver, with buffered, direct and neither I/O."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emu.nt import layout

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"


def read_through(machine_factory, apps, driver: str, device: str, *extra):
    if not (DRIVERS / driver).exists():
        pytest.skip("drivers not built")
    m = machine_factory()
    m.add_driver(DRIVERS / driver)
    p = m.spawn(apps / "devread", [device, *extra])
    seen = {}

    def at_exit(proc):                       # the caller's buffer, while its tables exist
        va = proc.image.symbols["buffer"]
        seen["buffer"] = va
        seen["frame"] = proc.space.lookup(va).pfn

    m.executive.exit_observers.append(at_exit)
    r = m.run()
    return m, p, r, seen, bytes(m.executive.debug_output).decode()


def written_at(debug: str) -> int:
    return int(re.search(r"writing at ([0-9A-F]+)", debug).group(1), 16)


@pytest.mark.parametrize("driver, device", [("buffered.sys", "\\Device\\Buffered"),
                                            ("direct.sys", "\\Device\\Direct"),
                                            ("neither.sys", "\\Device\\Neither")])
def test_a_read_reaches_the_caller(machine_factory, apps, driver, device):
    _, p, r, _, debug = read_through(machine_factory, apps, driver, device)
    message = f"data from {driver}"
    assert p.output.decode().splitlines() == ["status 0x00000000",
                                              f"read {len(message) + 1} bytes",
                                              f"data: {message}"]
    assert f"in process {p.pid}" in debug      # dispatched in the requester's context
    assert r.bugcheck is None


def test_buffered_io_writes_a_system_buffer_in_pool(machine_factory, apps):
    _, _, _, seen, debug = read_through(machine_factory, apps, "buffered.sys",
                                        "\\Device\\Buffered")
    target = written_at(debug)
    assert layout.KERNEL_POOL_NX <= target < layout.KERNEL_POOL_NX + layout.KERNEL_POOL_SIZE


def test_direct_io_maps_the_callers_own_frame_at_a_kernel_address(machine_factory, apps):
    views = []

    def on_debug_print(proc, data):          # DbgPrint runs while the MDL is mapped
        if proc is None and b"writing at" in data:
            va = written_at(data.decode())
            views.append((va, m.executive.mm.system.lookup(va)))

    if not (DRIVERS / "direct.sys").exists():
        pytest.skip("drivers not built")
    m = machine_factory(console=on_debug_print)
    m.add_driver(DRIVERS / "direct.sys")
    p = m.spawn(apps / "devread", ["\\Device\\Direct"])
    frames = []
    m.executive.exit_observers.append(
        lambda proc: frames.append(proc.space.lookup(proc.image.symbols["buffer"]).pfn))
    m.run()
    ((target, view),) = views
    buffer = p.image.symbols["buffer"]
    assert target >= layout.KERNEL_SYSTEM_PTES and target & 0xFFF == buffer & 0xFFF
    # one frame, two virtual addresses: the user buffer's and the driver's...
    assert view.pfn == frames[0]
    # ...until the IRP completes: MmUnmapLockedPages takes the driver's view away
    assert m.executive.mm.system.lookup(target) is None


def test_neither_io_hands_the_driver_the_raw_user_address(machine_factory, apps):
    _, _, _, seen, debug = read_through(machine_factory, apps, "neither.sys",
                                        "\\Device\\Neither")
    assert written_at(debug) == seen["buffer"]


def test_an_unknown_device(machine_factory, apps):
    _, p, _, _, _ = read_through(machine_factory, apps, "buffered.sys", "\\Device\\Nobody")
    assert p.output == b"open failed 0xc0000034\n"


def test_a_direct_read_into_memory_the_caller_cannot_write_is_refused(machine_factory, apps):
    _, p, r, _, _ = read_through(machine_factory, apps, "direct.sys", "\\Device\\Direct",
                                 "0x100000")
    assert p.output.decode().splitlines()[0] == "status 0xc0000005" and r.bugcheck is None


def test_completing_an_irp_twice_is_bug_check_0x44(machine_factory, apps):
    _, p, r, _, _ = read_through(machine_factory, apps, "twice.sys", "\\Device\\Twice")
    assert r.bugcheck.code == 0x44 and r.bugcheck.driver == "twice.sys"
    assert r.bugcheck.params[0] >= layout.KERNEL_POOL_NX            # the IRP


def test_a_quantum_ending_inside_a_driver_does_not_stop_the_machine(machine_factory, apps):
    if not (DRIVERS / "buffered.sys").exists():
        pytest.skip("drivers not built")
    m = machine_factory(quantum=50)
    m.add_driver(DRIVERS / "buffered.sys")
    reader = m.spawn(apps / "devread", ["\\Device\\Buffered"])
    other = m.spawn(apps / "counter", ["x", "1", "1"])
    r = m.run()
    assert r.stopped is None and reader.exit_status == 0 and other.exit_status == 0
    assert reader.output.decode().splitlines()[-1] == "data: data from buffered.sys"


def test_the_instruction_limit_still_applies_inside_a_driver(machine_factory, apps):
    if not (DRIVERS / "buffered.sys").exists():
        pytest.skip("drivers not built")
    m = machine_factory(max_insns=20)
    m.add_driver(DRIVERS / "buffered.sys")
    m.spawn(apps / "devread", ["\\Device\\Buffered"])
    assert m.run().stopped == "instruction limit"


def test_a_careful_driver_probes_the_callers_address(machine_factory, apps):
    _, p, r, _, debug = read_through(machine_factory, apps, "probe.sys", "\\Device\\Probe")
    assert p.output.decode().splitlines() == ["status 0x00000000", "read 20 bytes",
                                              "data: data from probe.sys"]


def test_probing_a_kernel_address_from_user_mode_is_refused_not_a_crash(machine_factory,
                                                                       apps):
    m, p, r, _, debug = read_through(machine_factory, apps, "probe.sys", "\\Device\\Probe",
                                     "16", hex(layout.KERNEL_GDT))
    assert p.output.decode().splitlines() == ["status 0xc0000005", "read 0 bytes"]
    assert r.bugcheck is None and "status 0xc0000005" in debug


def test_a_careless_driver_writes_kernel_memory_for_the_app(machine_factory, apps):
    """neither.sys copies to whatever address it is given: an app makes it overwrite the
    GDT (the first 16 bytes: the null descriptor and an unused one, so nothing breaks,
    this time)."""
    m, p, r, _, _ = read_through(machine_factory, apps, "neither.sys", "\\Device\\Neither",
                                 "16", hex(layout.KERNEL_GDT))
    gdt = m.executive.mm.system.lookup(layout.KERNEL_GDT).pfn * 4096
    assert m.mem.read(gdt, 16) == b"data from neithe"
    assert p.output.decode().splitlines()[0] == "status 0x00000000"


def test_an_exception_in_a_system_service_is_bug_check_0x3b():
    from emu.hw.exceptions import CpuException, Vector
    from emu.nt.bugcheck import BugCheckCode
    from emu.nt.trap import kernel_bugcheck

    exc = CpuException(Vector.DE, 0xFFFF_F800_0100_1000, 0)
    assert kernel_bugcheck(exc, "div ecx").code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED
    bc = kernel_bugcheck(exc, "div ecx", in_system_service=True)
    assert bc.code == BugCheckCode.SYSTEM_SERVICE_EXCEPTION
    assert bc.params == (0xC0000094, 0xFFFF_F800_0100_1000, 0, 0)


def test_with_smap_a_driver_touching_user_memory_directly_stops_the_machine(machine_factory,
                                                                           apps):
    from emu.nt.bugcheck import BugCheckCode

    m = machine_factory(smap=True)
    m.add_driver(DRIVERS / "neither.sys")
    m.spawn(apps / "devread", ["\\Device\\Neither"])
    bc = m.run().bugcheck
    assert bc.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA and "SMAP" in bc.detail
    assert bc.params[:2] == (bc.params[0], 2) and bc.driver == "neither.sys"


@pytest.mark.parametrize("driver, device", [("buffered.sys", "Buffered"),
                                            ("direct.sys", "Direct")])
def test_with_smap_the_i_o_managers_copies_and_mdls_still_work(machine_factory, apps, driver,
                                                               device):
    m = machine_factory(smap=True)
    m.add_driver(DRIVERS / driver)
    p = m.spawn(apps / "devread", ["\\Device\\" + device])
    assert m.run().bugcheck is None
    assert p.output.decode().splitlines()[-1] == f"data: data from {driver}"


def test_with_smap_a_drivers_own_copy_to_a_user_buffer_is_refused(machine_factory, apps):
    # probe.sys copies into the caller's buffer with memcpy, inside __try: with SMAP that
    # ring-0 access to a user page is refused and its handler completes the request with
    # the exception's code. (Windows leaves SMAP off; probe.sys without --smap: above.)
    m = machine_factory(smap=True)
    m.add_driver(DRIVERS / "probe.sys")
    p = m.spawn(apps / "devread", ["\\Device\\Probe"])
    assert m.run().bugcheck is None
    assert p.output.decode().splitlines() == ["status 0xc0000005", "read 0 bytes", "data: "]


def test_create_write_and_read_through_a_driver(machine_factory, apps):
    if not (DRIVERS / "echo.sys").exists():
        pytest.skip("drivers not built")
    m = machine_factory()
    m.add_driver(DRIVERS / "echo.sys")
    p = m.spawn(apps / "echo", ["through the kernel and back"])
    m.run()
    assert p.output.decode().splitlines() == ["wrote 27 bytes",
                                              "read 27 bytes: through the kernel and back"]
    assert bytes(m.executive.debug_output).decode().splitlines() == [
        f"echo.sys: opened by process {p.pid}", f"echo.sys: closed by process {p.pid}"]


def test_the_irps_pool_blocks_are_freed_at_completion(machine_factory, apps):
    m, p, r, _, _ = read_through(machine_factory, apps, "buffered.sys", "\\Device\\Buffered")
    irps = [b for b in m.executive.pools.blocks.values() if b.tag in (0x20707249, 0x66754249)]
    assert irps and all(b.freed for b in irps) and m.executive.io.irps == {}


def test_device_control_in_each_transfer_method(machine_factory, apps):
    if not (DRIVERS / "ioctl.sys").exists():
        pytest.skip("drivers not built")
    m = machine_factory()
    m.add_driver(DRIVERS / "ioctl.sys")
    p = m.spawn(apps / "ioctl", ["stressed"])
    assert m.run().bugcheck is None
    assert p.output.decode().splitlines() == ["buffered: desserts (8 bytes)",
                                              "direct: desserts (8 bytes)",
                                              "neither: desserts (8 bytes)",
                                              "unknown: 0xc0000010"]


def test_a_kernel_pointer_through_buffered_io_is_refused_not_written(machine_factory, apps):
    m, p, r, _, _ = read_through(machine_factory, apps, "buffered.sys", "\\Device\\Buffered",
                                 "16", hex(layout.KERNEL_GDT))
    gdt = m.executive.mm.system.lookup(layout.KERNEL_GDT).pfn * 4096
    assert p.output.decode().splitlines()[0] == "status 0xc0000005"
    assert m.mem.read(gdt, 8) == bytes(8)          # the null descriptor is still null
