"""A PE driver's device: IoCreateDevice, a symbolic link, and buffered reads completed with
IofCompleteRequest, all through the WDK's <ntddk.h> (guest/drivers-pe/peread.c), with the
structures laid out as wdm.h's (emu.nt.wdm)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.nt import drivers, exports, io, ntos, wdm  # noqa: F401 (ntos: the exports)
from emu.nt.status import NTSTATUS

ROOT = Path(__file__).resolve().parents[2]
PEREAD = ROOT / "guest" / "build" / "drivers" / "peread.sys"
MESSAGE = b"data from peread.sys"


def run(machine_factory, apps, *reads):
    """peread.sys, then one ``devread`` per argument list, each its own process."""
    m = machine_factory()
    m.add_driver(PEREAD)
    procs = [m.spawn(apps / "devread", list(args)) for args in reads]
    return m, procs, m.run()


def devread_output(data: bytes) -> bytes:
    return b"status 0x00000000\nread %d bytes\ndata: %s\n" % (len(data), data)


def test_an_app_reads_the_bytes_the_driver_completes_through_its_link(machine_factory, apps):
    m, (p,), r = run(machine_factory, apps, ["\\??\\PeRead"])
    assert [d.status for d in r.drivers] == [0]
    assert bytes(m.executive.debug_output) == (
        b"peread.sys: \\Device\\PeRead (buffered I/O), link \\DosDevices\\PeRead\n")
    assert p.output == devread_output(MESSAGE)


def test_the_read_length_reaches_the_driver_in_its_stack_location(machine_factory, apps):
    # The driver reads IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length from the
    # WDK's header: Tail.Overlay.CurrentStackLocation at 0xB8, Length at 0x08 of it.
    _, procs, _ = run(machine_factory, apps, ["\\Device\\PeRead", "4"],
                      ["\\DosDevices\\PeRead", "9"])
    assert [p.output for p in procs] == [devread_output(b"data"),
                                         devread_output(b"data from")]


def test_a_name_that_is_no_link_is_not_found(machine_factory, apps):
    _, (p,), _ = run(machine_factory, apps, ["\\??\\PeReed"])
    assert p.output == b"open failed 0x%08x\n" % NTSTATUS.STATUS_OBJECT_NAME_NOT_FOUND


def test_the_device_object_is_wdm_h_s(machine_factory, apps, monkeypatch):
    # Read before the clean shutdown, whose DriverUnload deletes the device.
    seen = {}
    real = drivers.shutdown

    def shutdown(ex_):
        drv_ = ex_.drivers[0].driver_object
        device_ = ex_.kernel_read_u64(drv_ + wdm.DRIVER_OBJECT["DeviceObject"])
        seen.update(device=device_, raw=ex_.kernel_read(device_, wdm.DEVICE_OBJECT.size),
                    devices={k: v.address for k, v in ex_.io.devices.items()},
                    links=dict(ex_.io.links),
                    table=ex_.kernel_read(drv_ + wdm.DRIVER_OBJECT["MajorFunction"], 8 * 28))
        real(ex_)

    monkeypatch.setattr(drivers, "shutdown", shutdown)
    m, _, r = run(machine_factory, apps)
    driver = r.drivers[0]
    drv, device, raw = driver.driver_object, seen["device"], seen["raw"]
    d = wdm.DEVICE_OBJECT
    assert struct.unpack_from("<hH", raw) == (wdm.IO_TYPE_DEVICE, d.size)
    assert struct.unpack_from("<Q", raw, d["DriverObject"])[0] == drv
    assert struct.unpack_from("<Q", raw, d["NextDevice"])[0] == 0
    # The driver's `Flags |= DO_BUFFERED_IO` landed where the I/O manager reads it.
    assert struct.unpack_from("<I", raw, d["Flags"])[0] == io.DO_BUFFERED_IO
    assert struct.unpack_from("<I", raw, d["DeviceType"])[0] == 0x22      # FILE_DEVICE_UNKNOWN
    assert raw[d["StackSize"]] == 1
    assert seen["devices"] == {"\\Device\\PeRead": device}
    assert seen["links"] == {"\\??\\PeRead": "\\Device\\PeRead"}
    # MajorFunction[IRP_MJ_CREATE], [CLOSE] and [READ] set by the driver, in its image.
    table = struct.unpack("<28Q", seen["table"])
    image = driver.image
    assert table[io.IRP_MJ_CREATE] == table[io.IRP_MJ_CLOSE]
    assert all(image.base <= table[i] < image.end
               for i in (io.IRP_MJ_CREATE, io.IRP_MJ_READ))
    # The others are still the I/O manager's default, nt!IopInvalidDeviceRequest.
    default = exports.address_of("IopInvalidDeviceRequest")
    assert [i for i, routine in enumerate(table) if routine != default] == [0, 2, 3]


def test_driver_unload_deletes_the_link_and_the_device(machine_factory, apps):
    # At the clean shutdown the I/O manager calls its DriverUnload: IoDeleteSymbolicLink,
    # then IoDeleteDevice.
    m, _, r = run(machine_factory, apps)
    ex, drv = m.executive, r.drivers[0].driver_object
    unload = ex.kernel_read_u64(drv + wdm.DRIVER_OBJECT["DriverUnload"])
    assert r.drivers[0].image.base <= unload < r.drivers[0].image.end
    assert ex.io.links == {} and ex.io.devices == {}
    assert ex.kernel_read_u64(drv + wdm.DRIVER_OBJECT["DeviceObject"]) == 0


@pytest.mark.parametrize("link, target, status", [
    ("\\DosDevices\\X", "\\Device\\X", NTSTATUS.STATUS_SUCCESS),
    ("\\??\\X", "\\Device\\Y", NTSTATUS.STATUS_OBJECT_NAME_COLLISION),   # the same name
    ("\\Device\\X", "\\Device\\X", NTSTATUS.STATUS_OBJECT_NAME_INVALID),
    ("\\??\\a\\b", "\\Device\\X", NTSTATUS.STATUS_OBJECT_NAME_INVALID),
    ("\\??\\", "\\Device\\X", NTSTATUS.STATUS_OBJECT_NAME_INVALID),
])
def test_symbolic_links_live_in_dos_devices(machine_factory, link, target, status):
    manager = machine_factory().executive.io
    assert manager.create_link("\\DosDevices\\X", "\\Device\\X") == NTSTATUS.STATUS_SUCCESS
    if status != NTSTATUS.STATUS_SUCCESS:
        assert manager.create_link(link, target) == status
    assert manager.resolve("\\??\\X") == "\\Device\\X"
    assert manager.delete_link("\\??\\X") == NTSTATUS.STATUS_SUCCESS
    assert manager.delete_link("\\DosDevices\\X") == NTSTATUS.STATUS_OBJECT_NAME_NOT_FOUND
    assert manager.resolve("\\??\\X") == "\\??\\X"
