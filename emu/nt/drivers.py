"""Drivers: PE32+ .sys files (parsed and bound by emu.nt.pe) loaded into the kernel half
and run at ring 0.

The loader (MmLoadSystemImage, reduced) gives each driver a kernel slot; emu.nt.pe lays the
image out there, each page with its section's rights and without the U/S bit, applies the
base relocations and binds each import to a kernel export (emu.nt.exports); an import the
kernel does not export refuses the load, naming it. A file that is not a PE image is
refused. Then DriverEntry(DriverObject, RegistryPath) runs at ring 0 in the system
context. A fault there is not contained: it is a bug check, and every process stops with
the machine. When every process has ended normally, each loaded driver's DriverUnload
runs (``shutdown``).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

from emu.nt import layout, wdm
from emu.nt.bugcheck import BugCheckCode
from emu.nt.events import Event
from emu.nt.loaded_modules import (  # noqa: F401 (the names callers import from here)
    Driver,
    DriverImage,
    driver_at,
    symbolize,
)
from emu.nt.loader import PF_W, PF_X, LoaderError, read_image_file
from emu.nt.mm.address_space import Protection
from emu.nt.mm.pfn import FrameUse

if TYPE_CHECKING:
    from emu.nt.interfaces import DriverLoader, TrapPath

MAX_DRIVERS = 64
_PROTECT = {(False, False): Protection.PAGE_READONLY, (True, False): Protection.PAGE_READWRITE,
            (False, True): Protection.PAGE_EXECUTE_READ,
            (True, True): Protection.PAGE_EXECUTE_READWRITE}


def load(ex: DriverLoader, path: str | Path) -> DriverImage:
    """Read and parse a driver for the next free kernel slot (nothing mapped yet)."""
    p = Path(path)
    data = read_image_file(p)
    if len(ex.drivers) + len(ex.pending_drivers) >= MAX_DRIVERS:
        raise LoaderError(f"{p}: too many drivers (at most {MAX_DRIVERS})")
    slot = len(ex.drivers) + len(ex.pending_drivers)
    base = layout.KERNEL_DRIVERS + slot * layout.KERNEL_DRIVER_SLOT
    # The PE parser, and with it every export a driver may bind to (emu.nt.ntos, in its
    # fixed order): imported with the first driver, not at every start-up.
    from emu.nt import pe

    # One driver format, as on Windows: a PE32+ image (an ELF file, an app, anything else
    # is refused before a byte of it is mapped).
    if not pe.is_pe(data):
        raise LoaderError(f"{p}: not a PE image (drivers are PE32+ .sys files: "
                          "docs/drivers.md)")
    image = pe.parse_pe_driver(data, str(p), base)
    # An image name loads once (MmLoadSystemImage: STATUS_IMAGE_ALREADY_LOADED); its
    # service's registry key and its devices would be the first one's.
    loaded = [d.image.name for d in ex.drivers] + [d.name for d in ex.pending_drivers]
    if image.name.lower() in (name.lower() for name in loaded):
        raise LoaderError(f"{p}: a driver named {image.name} is loaded already (an image "
                          "loads once: STATUS_IMAGE_ALREADY_LOADED)")
    return image


def start(ex: DriverLoader, image: DriverImage) -> Driver:
    """Map the image into the shared kernel half and run DriverEntry at ring 0 (IopLoadDriver).
    A failing DriverEntry unloads the driver; a successful one has its discardable pages
    freed; a fault in it is a bug check (raised)."""
    frames = []
    for va, contents in sorted(image.pages.items()):
        flags = image.page_flags[va]
        protect = _PROTECT[(bool(flags & PF_W), bool(flags & PF_X))]
        frames.append(ex.mm.map_new(ex.mm.system, va, protect, use=FrameUse.KERNEL,
                                    data=bytes(contents)))
    _watch_sites(ex, image)
    driver_object = ex.io.new_driver_object(image.base, image.end - image.base)
    registry = _registry_path(ex, image.name)
    driver = Driver(image, driver_object)
    ex.drivers.append(driver)
    ex.events.emit(Event.DRIVER_LOAD, driver=driver)
    called_at = ex.irql
    result = ex.call_kernel(image.entry, driver_object, registry)
    _check_return_irql(ex, image.entry, called_at, result.irql, "DriverEntry")
    status = result.rax & 0xFFFF_FFFF
    driver.status = status
    if status & 0x8000_0000:
        _free_pages(ex, image.pages)
        driver.unloaded = True
    else:
        # MmFreeDriverInitialization: once DriverEntry has succeeded, the sections marked
        # IMAGE_SCN_MEM_DISCARDABLE (INIT, .reloc) are freed; a later call into INIT code
        # is a fetch from a not-present page (PE Format, "Section Flags").
        _free_pages(ex, image.discardable)
    return driver


def _executable_runs(image: DriverImage) -> list[tuple[int, bytes]]:
    """The image's executable pages, as runs of contiguous pages: (address, bytes)."""
    runs: list[tuple[int, bytearray]] = []
    for va in sorted(image.pages):
        if not image.page_flags[va] & PF_X:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == va:
            runs[-1][1].extend(image.pages[va])
        else:
            runs.append((va, bytearray(image.pages[va])))
    return [(va, bytes(code)) for va, code in runs]


def _watch_sites(ex: DriverLoader, image: DriverImage) -> None:
    """Let the CPU find every kind of site in each run of the image's executable pages,
    once, before any of its code runs, so that each does what the SDM says; code a driver
    writes at run time into executable pool (NonPagedPool) or an executable MDL view
    (system PTEs) is looked at as it runs."""
    runs = _executable_runs(image)
    for kind in ex.cpu.sites:
        for va, code in runs:
            kind.watch(va, code)
        kind.watch_range(layout.KERNEL_POOL, layout.KERNEL_POOL_NX)
        kind.watch_range(layout.KERNEL_SYSTEM_PTES,
                         layout.KERNEL_SYSTEM_PTES + layout.KERNEL_POOL_SIZE)


def _free_pages(ex: DriverLoader, pages) -> None:
    """Unmap the driver pages ``pages`` from the shared kernel half (each PTE zeroed and its
    translation invalidated, as INVLPG does) and give their frames back to the free list;
    the CR8 moves, INVLPGs and control-register MOVs of code there are hooked no more."""
    for va in sorted(pages):
        for kind in ex.cpu.sites:
            kind.unwatch(va, va + layout.PAGE_SIZE)
        pfn = ex.mm.system.unmap_page(va)
        if pfn is not None:
            ex.mm.pfn.release(pfn)


def unload_routine(ex: DriverLoader, driver: Driver) -> int:
    """The DriverUnload routine the driver stored in its DRIVER_OBJECT (0: none); wdm.h's
    x64 layout (emu.nt.wdm)."""
    return ex.kernel_read_u64(driver.driver_object + wdm.DRIVER_OBJECT["DriverUnload"])


def shutdown(ex: DriverLoader) -> None:
    """A clean shutdown: the I/O manager calls DriverUnload(DriverObject) of each loaded
    driver that set one, in reverse load order, at PASSIVE_LEVEL in the system context; a
    fault there is a bug check (raised). A driver without DriverUnload is left as it is
    (Windows cannot unload it either)."""
    for driver in reversed(ex.drivers):
        if driver.unloaded:
            continue
        routine = unload_routine(ex, driver)
        if routine:
            called_at = ex.irql
            result = ex.call_kernel(routine, driver.driver_object)
            _check_return_irql(ex, routine, called_at, result.irql, "DriverUnload")


def _check_return_irql(ex: TrapPath, routine: int, called_at: int, irql: int,
                       what: str) -> None:
    """DriverEntry and DriverUnload are called at PASSIVE_LEVEL and must return at the IRQL
    they were called at (a test may start one raised: the same rule holds).
    Windows calls them from IopLoadUnloadDriver, a work item of a system worker thread, and
    the worker checks the IRQL when its routine returns: bug check 0xE1
    WORKER_THREAD_RETURNED_AT_BAD_IRQL (the worker routine, the IRQL, the work item's
    parameter, the work item). Here the I/O manager calls the driver's routine itself, so
    parameter 1 is that routine, and there is no work item: 0, 0."""
    if irql != called_at:
        raise ex.returned_at_bad_irql(routine, irql,
                                      BugCheckCode.WORKER_THREAD_RETURNED_AT_BAD_IRQL,
                                      (routine, irql, 0, 0), what, called_at)


def _registry_path(ex: DriverLoader, name: str) -> int:
    """A UNICODE_STRING for \\Registry\\Machine\\System\\CurrentControlSet\\Services\\NAME."""
    text = ("\\Registry\\Machine\\System\\CurrentControlSet\\Services\\"
            + name.rsplit(".", 1)[0]).encode("utf-16-le")
    buffer = ex.pools.allocate(0, len(text) + 2, 0x20676552)               # 'Reg '
    ex.write_user(ex.mm.system, buffer, text + b"\0\0")
    string = ex.pools.allocate(0, 16, 0x20676552)
    ex.write_user(ex.mm.system, string, struct.pack("<HHIQ", len(text), len(text) + 2, 0,
                                                    buffer))
    return string
