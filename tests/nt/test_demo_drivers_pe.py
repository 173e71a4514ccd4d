"""The demo drivers are PE images (guest/drivers-pe/) and each sets IRP_MJ_CREATE and
IRP_MJ_CLOSE routines in its DRIVER_OBJECT, as a real driver must: Windows fills the
MajorFunction table with IopInvalidDeviceRequest, so a device whose driver has no create
routine cannot be opened (STATUS_INVALID_DEVICE_REQUEST)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.nt import io, wdm

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "guest" / "build" / "drivers"

# Driver -> how its run ends (each lesson's own stop; the table is set before it).
ENDS = {
    "hello": None, "echo": None, "buffered": None, "direct": None, "neither": None,
    "twice": None, "ticket": None, "scribble": None, "probe": None, "ioctl": None,
    "pagedpool": None, "slowbuffered": None, "slowdirect": None, "slowneither": None,
    "crash": "bug check",
    "rowrite": "bug check",
    "nxpool": "bug check",
    "bugcheck": "bug check",
    "smep": None,
}


@pytest.mark.parametrize("name", sorted(ENDS))
def test_the_driver_is_a_pe_image_with_create_and_close(machine_factory, apps, name):
    assert (BUILT / f"{name}.sys").read_bytes()[:2] == b"MZ"
    assert not (ROOT / "guest" / "drivers" / f"{name}.c").exists()
    m = machine_factory()
    m.add_driver(BUILT / f"{name}.sys")
    m.spawn(apps / "hello")
    r = m.run()
    if ENDS[name]:
        assert r.stopped == ENDS[name]
    driver = r.drivers[0]
    ex = m.executive
    table = struct.unpack("<28Q", ex.kernel_read(
        driver.driver_object + wdm.DRIVER_OBJECT["MajorFunction"], 8 * 28))
    create, close = table[io.IRP_MJ_CREATE], table[io.IRP_MJ_CLOSE]
    assert driver.image.base <= create < driver.image.end
    if name == "echo":           # its own routines, that say who opened and closed it
        assert (driver.image.symbols["Create"], driver.image.symbols["Close"]) == (create, close)
        return
    assert create == close
    assert driver.image.symbols["CreateClose"] == create


def test_neither_writing_address_0_is_one_bug_check_in_memcpy(machine_factory, apps):
    """neither.sys's RtlCopyMemory is the import memcpy: the write to user address 0 faults
    in nt!memcpy, bug check 0x50 blaming neither.sys, announced once (the timeline's one
    mark)."""
    from emu.nt.bugcheck import BugCheckCode
    from emu.nt.events import Event

    m = machine_factory()
    m.add_driver(BUILT / "neither.sys")
    m.spawn(apps / "devread", ["\\Device\\Neither", "16", "0"])
    seen = []
    m.executive.events.subscribe(lambda event, d: seen.append(event))
    r = m.run()
    bc = r.bugcheck
    assert bc.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
    assert bc.params[:2] == (0, 2) and bc.params[3] == 0
    assert bc.driver == "neither.sys" and bc.location.startswith("neither.sys!Read+0x")
    assert seen.count(Event.BUGCHECK) == 1
