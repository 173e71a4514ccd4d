"""The I/O manager: devices, IRPs, and the three ways a driver reaches a caller's buffer.

A read request from an app becomes an IRP in kernel pool, and the device's
driver sees it in its IRP_MJ_READ dispatch routine, called at ring 0 in the
requesting thread's context (its process's address space is current). How the
driver reaches the caller's buffer depends on the device's flags (Windows'
"Methods for accessing data buffers"):
- buffered I/O: the driver fills a system buffer in kernel pool; the I/O manager
  copies it to the caller's buffer in the caller's context at completion;
- direct I/O: an MDL lists the caller's frames; MmGetSystemAddressForMdlSafe maps
  them at a kernel address, valid in any process (one frame, two addresses);
- neither I/O: the raw user address, meaningful only in the caller's address space.
A driver may instead pend the request (STATUS_PENDING), start its device, and complete
the IRP later from a DPC queued by its interrupt service routine: whatever thread
the interrupt arrived in. The requester waits; its buffer is then filled in its own
context (the completion's second half runs when it runs again).

Structure layouts are wdm.h's for x64 (emu.nt.wdm, the one table, checked against the
WDK's headers by a compiled probe).
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.nt import layout, wdm
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.loaded_modules import driver_at, symbolize
from emu.nt.mm.address_space import Protection, leaf_flags
from emu.nt.mm.pfn import OutOfFrames, PfnListCorrupt
from emu.nt.ob import Event, ObjectType
from emu.nt.pool import PoolType
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import IoSystem
    from emu.nt.loaded_modules import Driver
    from emu.nt.process import Thread

IRP_MJ_CREATE, IRP_MJ_CLOSE, IRP_MJ_READ, IRP_MJ_WRITE = 0x00, 0x02, 0x03, 0x04
IRP_MJ_DEVICE_CONTROL, IRP_MJ_CLEANUP = 0x0E, 0x12
METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT, METHOD_NEITHER = 0, 1, 2, 3
IRP_MJ_MAXIMUM_FUNCTION = wdm.IRP_MJ_MAXIMUM_FUNCTION
DO_BUFFERED_IO, DO_DIRECT_IO = 0x04, 0x10
IO_TYPE_DRIVER, IO_TYPE_DEVICE, IO_TYPE_IRP = wdm.IO_TYPE_DRIVER, wdm.IO_TYPE_DEVICE, \
    wdm.IO_TYPE_IRP
IO_TYPE_FILE = wdm.IO_TYPE_FILE
USER_MODE = 1
MULTIPLE_IRP_COMPLETE_REQUESTS = 0x44

# The offsets below are wdm.h's x64 layout, from the one table in emu.nt.wdm.
_DRV, _DEV, _IRP, _STK, _MDL, _FO = (wdm.DRIVER_OBJECT, wdm.DEVICE_OBJECT, wdm.IRP,
                                     wdm.IO_STACK_LOCATION, wdm.MDL, wdm.FILE_OBJECT)
# DRIVER_OBJECT
DRIVER_DEVICE_OBJECT, DRIVER_START, DRIVER_SIZE = (_DRV["DeviceObject"], _DRV["DriverStart"],
                                                   _DRV["DriverSize"])
DRIVER_UNLOAD, DRIVER_MAJOR_FUNCTION = _DRV["DriverUnload"], _DRV["MajorFunction"]
DRIVER_OBJECT_SIZE = _DRV.size
# DEVICE_OBJECT
DEVICE_DRIVER, DEVICE_NEXT, DEVICE_FLAGS = (_DEV["DriverObject"], _DEV["NextDevice"],
                                            _DEV["Flags"])
DEVICE_CHARACTERISTICS, DEVICE_TYPE, DEVICE_EXTENSION = (
    _DEV["Characteristics"], _DEV["DeviceType"], _DEV["DeviceExtension"])
DEVICE_STACK_SIZE, DEVICE_OBJECT_SIZE = _DEV["StackSize"], _DEV.size
PASSIVE_LEVEL = 0
# IRP, followed by its one IO_STACK_LOCATION (StackCount 1)
IRP_MDL, IRP_SYSTEM_BUFFER = _IRP["MdlAddress"], _IRP["AssociatedIrp.SystemBuffer"]
IRP_STATUS, IRP_INFORMATION = _IRP["IoStatus.Status"], _IRP["IoStatus.Information"]
IRP_REQUESTOR_MODE, IRP_USER_BUFFER = _IRP["RequestorMode"], _IRP["UserBuffer"]
IRP_STACK_COUNT, IRP_CURRENT_LOCATION = _IRP["StackCount"], _IRP["CurrentLocation"]
IRP_CURRENT_STACK = _IRP["Tail.Overlay.CurrentStackLocation"]
IRP_THREAD = _IRP["Tail.Overlay.Thread"]
IRP_ORIGINAL_FILE_OBJECT = _IRP["Tail.Overlay.OriginalFileObject"]
IRP_STACK = _IRP.size
STACK_MAJOR, STACK_LENGTH, STACK_DEVICE = (_STK["MajorFunction"], _STK["Parameters.Read.Length"],
                                           _STK["DeviceObject"])
STACK_OUTPUT_LENGTH = _STK["Parameters.DeviceIoControl.OutputBufferLength"]
STACK_INPUT_LENGTH = _STK["Parameters.DeviceIoControl.InputBufferLength"]
STACK_IO_CONTROL_CODE = _STK["Parameters.DeviceIoControl.IoControlCode"]
STACK_TYPE3_INPUT = _STK["Parameters.DeviceIoControl.Type3InputBuffer"]
STACK_FILE_OBJECT = _STK["FileObject"]
# FILE_OBJECT
FILE_DEVICE_OBJECT, FILE_FS_CONTEXT, FILE_FLAGS = (_FO["DeviceObject"], _FO["FsContext"],
                                                   _FO["Flags"])
FILE_FILE_NAME, FILE_OBJECT_SIZE = _FO["FileName"], _FO.size
FILE_LOCK, FILE_EVENT, FILE_IRP_LIST = _FO["Lock"], _FO["Event"], _FO["IrpList"]
STACK_SIZE = _STK.size
IRP_SIZE = IRP_STACK + STACK_SIZE
# MDL, followed by its frame numbers
MDL_SIZE, MDL_MAPPED_VA = _MDL["Size"], _MDL["MappedSystemVa"]
MDL_START_VA, MDL_BYTE_COUNT, MDL_BYTE_OFFSET = (_MDL["StartVa"], _MDL["ByteCount"],
                                                 _MDL["ByteOffset"])
MDL_FLAGS, MDL_PFN = _MDL["MdlFlags"], _MDL.size
# MdlFlags (wdm.h): the header's inline MmGetSystemAddressForMdlSafe returns MappedSystemVa
# as it is when MDL_MAPPED_TO_SYSTEM_VA is set, and calls MmMapLockedPagesSpecifyCache if not.
MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED = 0x0001, 0x0002
MDL_SOURCE_IS_NONPAGED_POOL, MDL_ALLOCATED_FIXED_SIZE = 0x0004, 0x0008
MDL_WRITE_OPERATION = 0x0080
# IoAllocateMdl takes an MDL of up to 17 pages from the I/O manager's fixed-size MDLs
# (IOP_FIXED_SIZE_MDL_PFNS) unless it charges quota, and marks it MDL_ALLOCATED_FIXED_SIZE.
IOP_FIXED_SIZE_MDL_PFNS = 17
# MM_PAGE_PRIORITY's flag bits (wdm.h, Windows 8): how MmMapLockedPagesSpecifyCache maps.
MDL_MAPPING_NO_WRITE, MDL_MAPPING_NO_EXECUTE = 0x8000_0000, 0x4000_0000
MAX_MDL_LENGTH = (4 << 30) - layout.PAGE_SIZE
DISPATCH_LEVEL = 2
PROCESS_HAS_LOCKED_PAGES = BugCheckCode.PROCESS_HAS_LOCKED_PAGES
SYSTEM_PTE_MISUSE = BugCheckCode.SYSTEM_PTE_MISUSE
MAX_TRANSFER = 1 << 20
TAG_IRP, TAG_BUFFER, TAG_MDL, TAG_DEVICE = 0x20707249, 0x66754249, 0x206C644D, 0x20766544
TAG_FILE, TAG_FILE_NAME = 0x656C6946, 0x6D4E6F49     # 'File' (the object), 'IoNm' (its name)
STATUS_INVALID_DEVICE_REQUEST = NTSTATUS.STATUS_INVALID_DEVICE_REQUEST


@dataclass(eq=False)
class Device:
    """A device object a driver created, by name (the \\Device directory)."""

    name: str
    address: int                 # its DEVICE_OBJECT in kernel pool
    driver: Driver


@dataclass(eq=False)
class DeviceFile:
    """An open device, reached through a handle: its FILE_OBJECT in kernel pool (``address``,
    what every IRP of this open carries) and the rest of the name after the device's."""

    device: Device
    address: int = 0
    file_name: str = ""
    name_buffer: int = 0                # FileName.Buffer as the I/O manager allocated it
    handle_count: int = 0
    object_type: ObjectType = ObjectType.DEVICE


@dataclass
class IrpRecord:
    address: int
    completed: bool = False
    done: Event | None = None          # what the requesting thread waits on, once pended
    on_complete: object = None         # asynchronous I/O: finish it when the IRP completes
    information: int = 0               # IoStatus.Information, once finished
    thread: Thread | None = None       # the requesting thread (IoGetRequestorProcess)


class IoManager:
    """Devices and IRPs of one machine."""

    def __init__(self, ex: IoSystem) -> None:
        self.ex = ex
        self.devices: dict[str, Device] = {}
        self.links: dict[str, str] = {}             # \??\NAME -> the name it stands for
        self.device_objects: dict[int, Driver] = {}  # every live DEVICE_OBJECT, named or not
        self.irps: dict[int, IrpRecord] = {}
        self._system_ptes = layout.KERNEL_SYSTEM_PTES
        self._views: dict[int, tuple[int, int]] = {}  # system view -> (its MDL, its pages)
        self._own_mdls: set[int] = set()             # direct-I/O MDLs of requests in flight
        ex.exit_observers.append(self._no_pages_locked)

    # -- driver objects and devices -------------------------------------------------------

    def new_driver_object(self, base: int, size: int) -> int:
        """A DRIVER_OBJECT for an image mapped at ``base``: every MajorFunction entry starts
        as nt!IopInvalidDeviceRequest, as IopLoadDriver leaves them before it calls
        DriverEntry, so a request the driver sets no routine for fails with
        STATUS_INVALID_DEVICE_REQUEST."""
        ex = self.ex
        obj = ex.pools.allocate(PoolType.NonPagedPoolNx, DRIVER_OBJECT_SIZE, 0x76697244)
        raw = bytearray(DRIVER_OBJECT_SIZE)
        struct.pack_into("<hh", raw, 0, IO_TYPE_DRIVER, DRIVER_OBJECT_SIZE)
        struct.pack_into("<Q", raw, DRIVER_START, base)
        struct.pack_into("<I", raw, DRIVER_SIZE, size)
        routine = invalid_device_request_address()
        struct.pack_into(f"<{IRP_MJ_MAXIMUM_FUNCTION + 1}Q", raw, DRIVER_MAJOR_FUNCTION,
                         *[routine] * (IRP_MJ_MAXIMUM_FUNCTION + 1))
        ex.kernel_write(obj, bytes(raw))
        return obj

    def create_device(self, driver: Driver, name: str | None, device_type: int,
                      extension_size: int, characteristics: int = 0) -> tuple[int, int]:
        """IoCreateDevice: (status, DEVICE_OBJECT address); a name of None makes an unnamed
        device (in the driver's list, but no path opens it)."""
        ex = self.ex
        if name in self.devices or name == "\\Device\\Console":
            return NTSTATUS.STATUS_OBJECT_NAME_COLLISION, 0
        device = ex.pools.allocate(PoolType.NonPagedPoolNx, DEVICE_OBJECT_SIZE, TAG_DEVICE)
        extension = ex.pools.allocate(PoolType.NonPagedPoolNx, extension_size, TAG_DEVICE) \
            if extension_size else 0
        if not device or (extension_size and not extension):
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, 0
        head = ex.kernel_read_u64(driver.driver_object + DRIVER_DEVICE_OBJECT)
        # ReferenceCount 1, StackSize 1: a request to it needs one stack location.
        raw = bytearray(DEVICE_OBJECT_SIZE)
        struct.pack_into("<hHiQQ", raw, 0, IO_TYPE_DEVICE, DEVICE_OBJECT_SIZE, 1,
                         driver.driver_object, head)
        struct.pack_into("<II", raw, DEVICE_FLAGS, 0, characteristics)
        struct.pack_into("<Q", raw, DEVICE_EXTENSION, extension)
        struct.pack_into("<I", raw, DEVICE_TYPE, device_type)
        struct.pack_into("<b", raw, DEVICE_STACK_SIZE, 1)
        ex.kernel_write(device, bytes(raw))
        ex.kernel_write(driver.driver_object + DRIVER_DEVICE_OBJECT, struct.pack("<Q", device))
        self.device_objects[device] = driver
        if name is not None:
            self.devices[name] = Device(name, device, driver)
        return NTSTATUS.STATUS_SUCCESS, device

    def delete_device(self, address: int) -> None:
        """IoDeleteDevice: the device leaves its driver's list (DriverObject->DeviceObject
        through NextDevice) and its name goes; the memory stays (handles may still point at
        it). Symbolic links to it stay, as on Windows: the driver deletes them."""
        for name, device in list(self.devices.items()):
            if device.address == address:
                del self.devices[name]
        ex, driver = self.ex, self.device_objects.pop(address, None)
        if driver is None:
            return
        link, seen = driver.driver_object + DRIVER_DEVICE_OBJECT, set()
        while (current := ex.kernel_read_u64(link)) and current not in seen:
            seen.add(current)
            if current == address:
                ex.kernel_write(link, struct.pack("<Q", ex.kernel_read_u64(
                    address + DEVICE_NEXT)))
                return
            link = current + DEVICE_NEXT

    # -- symbolic links (\?? and its other name, \DosDevices) ---------------------------------

    @staticmethod
    def link_name(name: str) -> str | None:
        """``name`` as a name in \\??, or None if it is not in that directory."""
        for prefix in ("\\??\\", "\\DosDevices\\"):
            if name.startswith(prefix) and len(name) > len(prefix):
                return "\\??\\" + name[len(prefix):]
        return None

    def create_link(self, link: str, target: str) -> int:
        """IoCreateSymbolicLink: ``link`` (in \\??) stands for ``target`` from now on."""
        name = self.link_name(link)
        if name is None or "\\" in name[4:]:
            return NTSTATUS.STATUS_OBJECT_NAME_INVALID
        if name in self.links:
            return NTSTATUS.STATUS_OBJECT_NAME_COLLISION
        self.links[name] = target
        return NTSTATUS.STATUS_SUCCESS

    def delete_link(self, link: str) -> int:
        """IoDeleteSymbolicLink."""
        name = self.link_name(link)
        if name is None or self.links.pop(name, None) is None:
            return NTSTATUS.STATUS_OBJECT_NAME_NOT_FOUND
        return NTSTATUS.STATUS_SUCCESS

    def resolve(self, path: str) -> str:
        """``path`` with a symbolic link in \\?? replaced by what it stands for (the object
        manager's reparse, once; the rest of the path after the link's name is kept, as
        ObpLookupObjectName reparses \\??\\NAME\\rest); any other path as it is."""
        name = self.link_name(path)
        if name is None:
            return path
        head, sep, rest = name[4:].partition("\\")
        target = self.links.get("\\??\\" + head)
        return path if target is None else target + sep + rest

    def lookup(self, path: str) -> tuple[Device, str] | None:
        """The device a (resolved) path opens and the rest of the path after the device's
        name (``\\Device\\Foo\\a\\b`` opens Foo with ``\\a\\b``; empty for the device
        itself: IopParseDevice hands the remaining name to the driver in
        FileObject->FileName), or None if no device has that name."""
        prefix = "\\Device\\"
        if not path.startswith(prefix):
            return None
        name, sep, rest = path[len(prefix):].partition("\\")
        device = self.devices.get(prefix + name)
        return None if device is None else (device, sep + rest)

    # -- requests ---------------------------------------------------------------------------

    def _requested_by(self, record: IrpRecord, thread: Thread) -> None:
        """Irp->Tail.Overlay.Thread: the requesting thread's ETHREAD, as the I/O manager
        sets it (IoGetRequestorProcess and IoIs32bitProcess go by it)."""
        from emu.nt.ntos.ps import ethread

        record.thread = thread
        self.ex.kernel_write(record.address + IRP_THREAD,
                             struct.pack("<Q", ethread(self.ex, thread)))

    def _dispatch_routine(self, device: Device, major: int) -> int:
        """DriverObject->MajorFunction[major]. A NULL entry (the driver cleared it) counts as
        nt!IopInvalidDeviceRequest: IopLoadDriver fills every NULL entry with it once
        DriverEntry returns, so Windows never calls NULL."""
        routine = self.ex.kernel_read_u64(device.driver.driver_object + DRIVER_MAJOR_FUNCTION
                                          + 8 * major)
        if not routine:
            return invalid_device_request_address()
        return routine

    def open(self, thread: Thread, device: Device, remainder: str = "") -> tuple[int,
                                                                               DeviceFile | None]:
        """Opening a device (IopParseDevice): a new FILE_OBJECT for this open (FileName the
        rest of the path after the device's name), then IRP_MJ_CREATE with it, synchronously.
        (status, the open); a failed create frees the FILE_OBJECT (no IRP_MJ_CLOSE follows,
        as on Windows) and gives (status, None)."""
        file = DeviceFile(device, file_name=remainder)
        file.address, file.name_buffer = self._new_file_object(device, remainder)
        if not file.address:
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None
        status = self._simple_request(thread, file, IRP_MJ_CREATE)
        if status != NTSTATUS.STATUS_SUCCESS:
            self._free_file_object(file)
            return status, None
        return status, file

    def close(self, thread: Thread, file: DeviceFile) -> int:
        """The last handle to an open device is closed: IRP_MJ_CLEANUP, then IRP_MJ_CLOSE
        (Windows sends CLEANUP when the handle count reaches zero, CLOSE when the last
        reference goes: here both at once, in that order), both with the open's
        FILE_OBJECT, which is then freed. What the driver returns is not the caller's
        business (NtClose succeeds), as on Windows."""
        self._simple_request(thread, file, IRP_MJ_CLEANUP)
        self._simple_request(thread, file, IRP_MJ_CLOSE)
        self._free_file_object(file)
        return NTSTATUS.STATUS_SUCCESS

    def _simple_request(self, thread: Thread, file: DeviceFile, major: int) -> int:
        device = file.device
        dispatch = self._dispatch_routine(device, major)
        if not dispatch:
            return NTSTATUS.STATUS_SUCCESS
        irp, record = self._new_irp(major, file, 0, 0, 0, 0)
        self._requested_by(record, thread)
        status = self._call(dispatch, thread, device, irp)
        return self._finish(record, major, 0, 0, 0, 0, 0, status)

    # -- file objects (wdm.h's FILE_OBJECT: one per open of a device) -----------------------

    def _new_file_object(self, device: Device, remainder: str) -> tuple[int, int]:
        """A FILE_OBJECT for one open of ``device``, as IopParseDevice initialises it: Type
        IO_TYPE_FILE, Size, DeviceObject, FileName (a copy of the remaining name in pool;
        Length 0 and Buffer NULL for the device itself), its Lock (a synchronization event)
        and Event (a notification event) not signalled, IrpList empty; FsContext and
        FsContext2 NULL for the driver to fill, Flags 0 (no FO_* flag: the caller's I/O is
        synchronous by the system service it uses, not by the open). (its address, its
        name's buffer or 0); (0, 0) if the pool is exhausted."""
        ex = self.ex
        obj = ex.pools.allocate(PoolType.NonPagedPoolNx, FILE_OBJECT_SIZE, TAG_FILE)
        if not obj:
            return 0, 0
        raw = bytearray(FILE_OBJECT_SIZE)
        buffer = 0
        struct.pack_into("<hh", raw, 0, IO_TYPE_FILE, FILE_OBJECT_SIZE)
        struct.pack_into("<Q", raw, FILE_DEVICE_OBJECT, device.address)
        if remainder:
            text = remainder.encode("utf-16-le")
            buffer = ex.pools.allocate(PoolType.NonPagedPoolNx, len(text), TAG_FILE_NAME)
            if not buffer:
                ex.pools.release(obj)
                return 0, 0
            ex.kernel_write(buffer, text)
            struct.pack_into("<HHIQ", raw, FILE_FILE_NAME, len(text), len(text), 0, buffer)
        # KeInitializeEvent: the DISPATCHER_HEADER's Type, Size in LONGs, the wait list
        # empty (pointing at itself); InitializeListHead(&IrpList) likewise.
        for offset, kind in ((FILE_LOCK, wdm.SYNCHRONIZATION_EVENT),
                             (FILE_EVENT, wdm.NOTIFICATION_EVENT)):
            head = obj + offset + wdm.KEVENT["Header.WaitListHead"]
            struct.pack_into("<BBBB", raw, offset, kind, 0, wdm.KEVENT.size // 4, 0)
            struct.pack_into("<QQ", raw, offset + wdm.KEVENT["Header.WaitListHead"], head, head)
        struct.pack_into("<QQ", raw, FILE_IRP_LIST, obj + FILE_IRP_LIST, obj + FILE_IRP_LIST)
        ex.kernel_write(obj, bytes(raw))
        return obj, buffer

    def _free_file_object(self, file: DeviceFile) -> None:
        """The FILE_OBJECT's last reference is gone: it and its name's buffer go back to the
        pool: the name's buffer the I/O manager allocated, whatever FileName says now
        (whatever the driver left in FsContext is the driver's to free, at CLOSE)."""
        ex = self.ex
        if not file.address:
            return
        if file.name_buffer:
            ex.pools.release(file.name_buffer)
        ex.pools.release(file.address)
        file.address = file.name_buffer = 0

    def transfer_async(self, thread: Thread, file: DeviceFile, buffer: int, length: int,
                       iosb: int, event) -> int:
        """NtReadFileEx: a read the caller does not wait for. If the driver pends it, the
        caller gets STATUS_PENDING now; at completion (from a DPC, in any context) the I/O
        manager attaches to the caller's address space, finishes the transfer there, fills
        the IO_STATUS_BLOCK and sets the event."""
        def finish(status: int) -> int:
            record = record_box[0]
            with self.attached(thread):
                final = self._finish(record, IRP_MJ_READ, box[0], box[1], buffer, length, 0,
                                     status)
                self._write_iosb(iosb, final, record.information)
            if event is not None:
                event.state = True
                self.ex.scheduler.signal(event)
            return final

        box, record_box = [0, 0], [None]
        status = self.transfer(thread, file, IRP_MJ_READ, buffer, length, 0,
                               async_done=(finish, box, record_box))
        return NTSTATUS.STATUS_PENDING if status is None else status

    @contextlib.contextmanager
    def attached(self, thread: Thread):
        """KeStackAttachProcess: the requester's address space (and thread) current for a
        while, wherever the CPU was."""
        ex = self.ex
        saved_cr3, saved_thread = ex.cpu.cr3, ex.current_thread
        ex.load_cr3(thread.process.space.cr3)
        ex.current_thread = thread
        try:
            yield
        finally:
            ex.load_cr3(saved_cr3)
            ex.current_thread = saved_thread

    def _write_iosb(self, iosb: int, final: int, information: int) -> None:
        """IO_STATUS_BLOCK {Status, Information} in the caller's memory."""
        from emu.nt.syscalls import UserAccessViolation, probe_and_write

        if not iosb:
            return
        try:
            probe_and_write(self.ex, iosb, struct.pack("<iIQ", final - (1 << 32)
                                                       if final >> 31 else final, 0,
                                                       information))
        except UserAccessViolation:
            pass                                 # the caller unmapped its own block

    def probes_user_buffer(self, file: DeviceFile) -> bool:
        """Whether the I/O manager reaches the caller's buffer itself for a read or write of
        this device (buffered or direct I/O: it copies or locks it, so NtReadFile/NtWriteFile
        probe it first); with neither I/O the raw address goes to the driver, whose job the
        probe then is."""
        flags = self.ex.kernel_read_u64(file.device.address + DEVICE_FLAGS) & 0xFFFF_FFFF
        return bool(flags & (DO_BUFFERED_IO | DO_DIRECT_IO))

    def transfer(self, thread: Thread, file: DeviceFile, major: int, buffer: int, length: int,
                 out: int, async_done=None) -> int | None:
        """NtReadFile/NtWriteFile on a device: an IRP_MJ_READ or IRP_MJ_WRITE, dispatched at
        ring 0 in ``thread``'s context; the NTSTATUS for the caller, or None when the driver
        pended it (the thread then waits, and gets its status when the IRP completes)."""
        from emu.nt.syscalls import UserAccessViolation, probe_and_read

        ex, device = self.ex, file.device
        length = min(length, MAX_TRANSFER)
        flags = ex.kernel_read_u64(device.address + DEVICE_FLAGS) & 0xFFFF_FFFF
        dispatch = self._dispatch_routine(device, major)
        if not dispatch:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        system_buffer = mdl = 0
        try:
            if flags & DO_BUFFERED_IO:
                system_buffer = ex.pools.allocate(PoolType.NonPagedPoolNx, max(length, 1),
                                                  TAG_BUFFER)
                if major == IRP_MJ_WRITE:       # the caller's data, copied in its context
                    ex.kernel_write(system_buffer, probe_and_read(ex, buffer, length))
            elif flags & DO_DIRECT_IO:
                mdl = self._probe_and_lock(buffer, length,
                                           "write" if major == IRP_MJ_READ else "read")
        except UserAccessViolation:
            return NTSTATUS.STATUS_ACCESS_VIOLATION
        irp, record = self._new_irp(major, file, length, mdl, system_buffer, buffer)
        self._requested_by(record, thread)
        status = self._call(dispatch, thread, device, irp)
        if async_done is not None:
            finish, box, record_box = async_done
            box[:], record_box[0] = [system_buffer, mdl], record
            if status == NTSTATUS.STATUS_PENDING and not record.completed:
                record.on_complete = lambda: finish(status)
                return None                      # the caller goes on; the event tells it
            return finish(status)
        if status == NTSTATUS.STATUS_PENDING and not record.completed:
            # The driver started the device and returned: the thread waits; the completion
            # (from a DPC, in whatever context) wakes it, and the rest of this request
            # runs in the requester's own context when it runs again.
            record.done = Event(manual_reset=True, state=False)
            ex.scheduler.block(thread, record.done, None)
            thread.apc = lambda: self._finish(record, major, system_buffer, mdl, buffer,
                                              length, out, status)
            return None
        return self._finish(record, major, system_buffer, mdl, buffer, length, out, status)

    def device_control(self, thread: Thread, file: DeviceFile, code: int, in_buffer: int,
                       in_length: int, out_buffer: int, out_length: int, out: int) -> int:
        """NtDeviceIoControlFile: an IRP_MJ_DEVICE_CONTROL; the code's low two bits say how
        the driver sees the buffers (devioctl.h METHOD_*). Completed synchronously."""
        from emu.nt.syscalls import UserAccessViolation, probe_and_read

        ex, device = self.ex, file.device
        in_length, out_length = min(in_length, MAX_TRANSFER), min(out_length, MAX_TRANSFER)
        dispatch = self._dispatch_routine(device, IRP_MJ_DEVICE_CONTROL)
        if not dispatch:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        method = code & 3
        system_buffer = mdl = 0
        try:
            if method != METHOD_NEITHER:         # the input always goes through the buffer
                system_buffer = ex.pools.allocate(
                    PoolType.NonPagedPoolNx, max(in_length, out_length, 1), TAG_BUFFER)
                ex.kernel_write(system_buffer, probe_and_read(ex, in_buffer, in_length))
            if method in (METHOD_IN_DIRECT, METHOD_OUT_DIRECT) and out_length:
                mdl = self._probe_and_lock(out_buffer, out_length,
                                           "write" if method == METHOD_OUT_DIRECT else "read")
        except UserAccessViolation:
            return NTSTATUS.STATUS_ACCESS_VIOLATION
        irp, record = self._new_irp(IRP_MJ_DEVICE_CONTROL, file, 0, mdl, system_buffer,
                                    out_buffer)
        self._requested_by(record, thread)
        stack = irp + IRP_STACK
        for offset, fmt, value in (
                (STACK_OUTPUT_LENGTH, "<I", out_length), (STACK_INPUT_LENGTH, "<I", in_length),
                (STACK_IO_CONTROL_CODE, "<I", code & 0xFFFF_FFFF),
                (STACK_TYPE3_INPUT, "<Q", in_buffer if method == METHOD_NEITHER else 0)):
            ex.kernel_write(stack + offset, struct.pack(fmt, value))
        status = self._call(dispatch, thread, device, irp)
        # METHOD_BUFFERED copies the output back like a read; the others wrote in place.
        major = IRP_MJ_READ if method == METHOD_BUFFERED else IRP_MJ_DEVICE_CONTROL
        return self._finish(record, major, system_buffer, mdl, out_buffer, out_length, out,
                            status)

    def _new_irp(self, major: int, file: DeviceFile, length: int, mdl: int,
                 system_buffer: int, user_buffer: int) -> tuple[int, IrpRecord]:
        """An IRP for a request on the open ``file``: its stack location's DeviceObject and
        FileObject, and Tail.Overlay.OriginalFileObject, as IoCallDriver sees them from
        NtReadFile & co. (the same FILE_OBJECT for every request of one open)."""
        ex, device = self.ex, file.device
        irp = ex.pools.allocate(PoolType.NonPagedPoolNx, IRP_SIZE, TAG_IRP)
        # IoAllocateIrp(StackSize 1) + IoCallDriver: one stack location, right after the
        # IRP, current (CurrentLocation 1 of StackCount 1).
        raw = bytearray(IRP_SIZE)
        struct.pack_into("<hH", raw, 0, IO_TYPE_IRP, IRP_SIZE)
        for offset, fmt, value in (
                (IRP_MDL, "<Q", mdl), (IRP_SYSTEM_BUFFER, "<Q", system_buffer),
                (IRP_REQUESTOR_MODE, "<B", USER_MODE), (IRP_STACK_COUNT, "<B", 1),
                (IRP_CURRENT_LOCATION, "<B", 1), (IRP_USER_BUFFER, "<Q", user_buffer),
                (IRP_CURRENT_STACK, "<Q", irp + IRP_STACK),
                (IRP_STACK + STACK_MAJOR, "<B", major),
                (IRP_STACK + STACK_LENGTH, "<I", length),
                (IRP_STACK + STACK_DEVICE, "<Q", device.address),
                (IRP_STACK + STACK_FILE_OBJECT, "<Q", file.address),
                (IRP_ORIGINAL_FILE_OBJECT, "<Q", file.address)):
            struct.pack_into(fmt, raw, offset, value)
        ex.kernel_write(irp, bytes(raw))
        record = self.irps[irp] = IrpRecord(irp)
        return irp, record

    def _call(self, dispatch: int, thread: Thread, device: Device, irp: int) -> int:
        """The driver's dispatch routine, at ring 0 on the thread's kernel stack, with the
        thread's process's address space current. It must return at PASSIVE_LEVEL, where it
        was called: the system call then returns to user mode, and above PASSIVE_LEVEL that
        is bug check 0x4A IRQL_GT_ZERO_AT_SYSTEM_SERVICE (the system call routine - here the
        dispatch routine the service ran -, the IRQL, 0, 0)."""
        result = self.ex.call_kernel(dispatch, device.address, irp,
                                     space=thread.process.space,
                                     stack_top=thread.kernel_stack_top)
        if result.irql != PASSIVE_LEVEL:
            self.ex.irql = result.irql        # the machine stops at the IRQL it was left at
            bc = BugCheck(BugCheckCode.IRQL_GT_ZERO_AT_SYSTEM_SERVICE,
                          (dispatch, result.irql, 0, 0), None,
                          f"the dispatch routine returned at IRQL {result.irql}: its system "
                          "call returns to user mode above PASSIVE_LEVEL")
            culprit = driver_at(self.ex, dispatch)
            if culprit is not None:
                bc.driver, bc.location = culprit.image.name, symbolize(self.ex, dispatch)
            raise bc
        return result.rax & 0xFFFF_FFFF

    def _finish(self, record: IrpRecord, major: int, system_buffer: int, mdl: int,
                buffer: int, length: int, out: int, status: int) -> int:
        """IopCompleteRequest's second half, in the requester's context: copy a read's system
        buffer to the caller, report the byte count, free the IRP's memory."""
        from emu.nt.syscalls import UserAccessViolation, probe_and_write

        ex, irp = self.ex, record.address
        final, information = struct.unpack("<iIQ", ex.kernel_read(irp + IRP_STATUS, 16))[::2]
        if not record.completed:
            final, information = status, 0
        information = min(information, length)
        record.information = information
        result = final & 0xFFFF_FFFF
        try:
            if system_buffer and final >= 0 and major == IRP_MJ_READ:
                # Back in the caller's context: the system buffer goes to the user's buffer.
                probe_and_write(ex, buffer, ex.kernel_read(system_buffer, information))
            if out:
                probe_and_write(ex, out, information.to_bytes(8, "little"))
        except UserAccessViolation:
            result = NTSTATUS.STATUS_ACCESS_VIOLATION
        del self.irps[irp]
        if mdl:
            self._unlock_mdl(mdl)
        for block in (irp, system_buffer, mdl):
            if block:
                ex.pools.release(block)
        return result

    def _probe_and_lock(self, buffer: int, length: int, access: str) -> int:
        """The I/O manager's MmProbeAndLockPages for direct I/O: a new MDL for the caller's
        buffer, its pages checked from user mode for ``access``, made present and locked
        (UserAccessViolation / UserStatus if they cannot be)."""
        from emu.nt.syscalls import UserAccessViolation

        # As NtReadFile/NtDeviceIoControlFile do: IoAllocateMdl(Buffer, Length, FALSE,
        # TRUE, Irp), quota charged.
        mdl = self.allocate_mdl(buffer, max(length, 1), charge_quota=True)
        if not mdl:
            raise UserAccessViolation(buffer)
        if length == 0:          # the MDL describes what it locked: at least the first byte
            self.ex.kernel_write(mdl + MDL_BYTE_COUNT, struct.pack("<I", 0))
        try:
            self.lock_pages(mdl, user_mode=True, write=access == "write")
        except BaseException:
            self.ex.pools.release(mdl)
            raise
        self._own_mdls.add(mdl)
        return mdl

    # -- MDLs (wdm.h's MDL: the header, then one frame number per page of the span) ----------

    def mdl_pages(self, mdl: int) -> int:
        """The pages the MDL's buffer spans."""
        return self._mdl_span(mdl)[2]

    def _mdl_span(self, mdl: int) -> tuple[int, int, int]:
        """(the buffer's address, its byte count, the pages it spans) of ``mdl``: StartVa +
        ByteOffset, ByteCount, ADDRESS_AND_SIZE_TO_SPAN_PAGES (at least one page)."""
        start = self.ex.kernel_read_u64(mdl + MDL_START_VA)
        count, offset = struct.unpack("<II", self.ex.kernel_read(mdl + MDL_BYTE_COUNT, 8))
        va = (start + offset) & 0xFFFF_FFFF_FFFF_FFFF
        return va, count, span_pages(va, max(count, 1))

    def allocate_mdl(self, va: int, length: int, irp: int = 0, secondary: bool = False,
                     charge_quota: bool = False) -> int:
        """IoAllocateMdl(VirtualAddress, Length, SecondaryBuffer, ChargeQuota, Irp): an MDL in
        NonPagedPoolNx, initialised as MmInitializeMdl does (StartVa the page of ``va``,
        ByteOffset, ByteCount, Size with room for a frame number per page); MdlFlags is
        MDL_ALLOCATED_FIXED_SIZE when the I/O manager's fixed-size MDLs hold it (at most
        IOP_FIXED_SIZE_MDL_PFNS pages, no quota charged), else 0. Its frame numbers are not
        filled in. With an Irp it becomes Irp->MdlAddress, or with
        SecondaryBuffer the last of that chain (through Next). 0 (NULL) for a Length above
        4 GiB - PAGE_SIZE (the IoAllocateMdl reference's limit since Windows 7) or no RAM."""
        if length > MAX_MDL_LENGTH:
            return 0
        # Size is MmInitializeMdl's: a zero-length buffer at a page boundary spans no page
        # (0x30); the block keeps room for the one frame _mdl_span gives such an MDL.
        pages = span_pages(va, length)
        size = MDL_PFN + 8 * pages
        try:
            mdl = self.ex.pools.carve(PoolType.NonPagedPoolNx, MDL_PFN + 8 * max(pages, 1),
                                      TAG_MDL)
        except OutOfFrames:
            return 0
        if not mdl:
            return 0
        raw = bytearray(MDL_PFN)
        # MDL.Size is a CSHORT: an MDL over 8184 pages keeps the low 16 bits of its size.
        fixed = MDL_ALLOCATED_FIXED_SIZE if pages <= IOP_FIXED_SIZE_MDL_PFNS and \
            not charge_quota else 0
        struct.pack_into("<HH", raw, MDL_SIZE, size & 0xFFFF, fixed)
        struct.pack_into("<Q", raw, MDL_START_VA, va & ~0xFFF)
        struct.pack_into("<II", raw, MDL_BYTE_COUNT, length & 0xFFFF_FFFF, va & 0xFFF)
        self.ex.kernel_write(mdl, bytes(raw))
        if irp:
            link = irp + IRP_MDL
            if secondary:
                seen: set[int] = set()
                while (current := self.ex.kernel_read_u64(link)) and current not in seen:
                    seen.add(current)
                    link = current + _MDL["Next"]
            self.ex.kernel_write(link, struct.pack("<Q", mdl))
        return mdl

    def free_mdl(self, mdl: int, irql: int) -> None:
        """IoFreeMdl: the MDL's memory goes back to the pool (a second free, or an address
        that is no MDL block, raises BadPoolCall: bug check 0xC2, as Windows)."""
        self.ex.pools.free(mdl, 0, irql)

    def build_for_nonpaged_pool(self, mdl: int) -> None:
        """MmBuildMdlForNonPagedPool: the frame of each page of the MDL's buffer, read from the
        page tables now (no lock: nonpaged memory stays); MDL_SOURCE_IS_NONPAGED_POOL set and
        MappedSystemVa the buffer's own address, so MmGetSystemAddressForMdlSafe's inline
        returns it. A page not mapped is bug check 0x50, as a ring-0 read of it."""
        ex = self.ex
        va, _, pages = self._mdl_span(mdl)
        frames = []
        for i in range(pages):
            page = (va & ~0xFFF) + i * layout.PAGE_SIZE
            ex.kernel_read(page, 1)                    # present, or 0x50 as Windows
            frames.append(ex.cpu.walk(page, "read", cpl=0).pa >> 12)
        ex.kernel_write(mdl + MDL_PFN, struct.pack(f"<{pages}Q", *frames))
        ex.kernel_write(mdl + MDL_MAPPED_VA, struct.pack("<Q", va))
        ex.kernel_write(mdl + _MDL["Process"], struct.pack("<Q", 0))
        self._set_mdl_flags(mdl, self._mdl_flags(mdl) | MDL_SOURCE_IS_NONPAGED_POOL)

    def lock_pages(self, mdl: int, *, user_mode: bool, write: bool, irql: int = 0,
                   process: int = 0) -> None:
        """MmProbeAndLockPages(Mdl, AccessMode, Operation): each page of the MDL's buffer made
        present and checked for the access (a user-mode caller's buffer must lie below
        MmUserProbeAddress; user pages are checked as ring 3 would use them), then locked:
        the pager leaves its frame where it is until MmUnlockPages. The frame numbers go
        into the MDL, MDL_PAGES_LOCKED (and MDL_WRITE_OPERATION for a write) into MdlFlags,
        ``process`` (the EPROCESS, for a user buffer) into Process. At DISPATCH_LEVEL or
        above nothing may be paged in: a page not present is bug check 0x0A, as the page
        fault inside MmProbeAndLockPages would be on Windows. UserAccessViolation or
        UserStatus if a page cannot be had; nothing stays locked then."""
        from emu.nt.syscalls import _user_pages, check_user_range

        ex = self.ex
        va, count, pages = self._mdl_span(mdl)
        access = "write" if write else "read"
        length = max(count, 1)
        user = va < layout.USER_SPACE_END
        if user_mode:
            check_user_range(va, length)
        frames: list[int] = []
        try:
            for i in range(pages):
                page = (va & ~0xFFF) + i * layout.PAGE_SIZE if i else va
                if irql >= DISPATCH_LEVEL:
                    pa = self._resident(page, access, user, irql)
                elif user:
                    (_, pa, _), = _user_pages(ex, page, 1, access)
                else:
                    pa = self._kernel_page(page, access)
                self._lock_frame(pa >> 12, access)
                frames.append(pa >> 12)
        except BaseException:
            self._unlock_frames(frames)
            raise
        ex.kernel_write(mdl + MDL_PFN, struct.pack(f"<{pages}Q", *frames))
        ex.kernel_write(mdl + _MDL["Process"], struct.pack("<Q", process if user else 0))
        flags = self._mdl_flags(mdl) | MDL_PAGES_LOCKED | (MDL_WRITE_OPERATION if write else 0)
        self._set_mdl_flags(mdl, flags)

    def _resident(self, page: int, access: str, user: bool, irql: int) -> int:
        """The frame of a page that must be present already (at DISPATCH_LEVEL or above)."""
        from emu.hw import mmu
        from emu.nt.syscalls import UserAccessViolation

        try:
            return self.ex.cpu.walk(page, access, cpl=3 if user else 0,
                                    set_accessed_dirty=True).pa
        except (mmu.PageFault, mmu.GeneralProtection) as fault:
            present = isinstance(fault, mmu.PageFault) and fault.error_code & 1
            if present:                          # there, but not for this access
                raise UserAccessViolation(page) from None
            raise BugCheck(BugCheckCode.IRQL_NOT_LESS_OR_EQUAL,
                           (page, irql, int(access == "write"),
                            self._export("MmProbeAndLockPages")),
                           detail=f"MmProbeAndLockPages at IRQL {irql}: {page:#x} is not "
                           "present and nothing may be paged in at DISPATCH_LEVEL") from None

    @staticmethod
    def _export(name: str) -> int:
        from emu.nt import exports
        return exports.pe_address_of("ntoskrnl.exe", name) or 0

    def _kernel_page(self, page: int, access: str) -> int:
        """The frame of a kernel-space page a ring-0 ``access`` reaches (paged in first if it
        may be), or UserAccessViolation: MmProbeAndLockPages raises for a bad kernel address
        too."""
        from emu.hw import mmu
        from emu.nt.syscalls import UserAccessViolation

        try:
            return self.ex.kernel_walk(page, access)
        except (mmu.PageFault, mmu.GeneralProtection):
            raise UserAccessViolation(page) from None

    def _no_pages_locked(self, proc) -> None:
        """A process ends: if a driver left some of its pages locked (MmProbeAndLockPages
        with no MmUnlockPages), Windows' MmDeleteProcessAddressSpace stops the machine with
        bug check 0x76 PROCESS_HAS_LOCKED_PAGES (0, the process object, the locked pages, 0)."""
        ex = self.ex
        own: dict[int, int] = {}         # the I/O manager's locks, for requests in flight
        for mdl in self._own_mdls:
            for pfn in self._mdl_frames(mdl):
                own[pfn] = own.get(pfn, 0) + 1
        # Only the frames that hold a lock are looked at (the PFN database keeps their set):
        # a process's end costs nothing here however much RAM it held.
        entries = ex.mm.pfn.entries
        locked = sum(1 for pfn in ex.mm.pfn.locked
                     if entries[pfn].owner == proc.pid and entries[pfn].locks > own.get(pfn, 0))
        if locked:
            from emu.nt.ntos.ps import eprocess_of  # only a driver locks pages (start-up)

            raise BugCheck(PROCESS_HAS_LOCKED_PAGES, (0, eprocess_of(ex, proc), locked, 0),
                           detail=f"process {proc.pid} ({proc.name}) ends with {locked} "
                           "page(s) a driver locked and never unlocked")

    def unlock_pages(self, mdl: int) -> None:
        """MmUnlockPages: the system-space view goes first (a stale view would reach frames
        that belong to someone else once the pages are trimmed), then the locks; the MDL
        loses MDL_PAGES_LOCKED, MDL_WRITE_OPERATION and MDL_MAPPED_TO_SYSTEM_VA. An MDL
        whose pages are not locked is bug check 0x76 PROCESS_HAS_LOCKED_PAGES (1, the MDL,
        the pages locked in the current process, 0); a frame unlocked more often than
        locked (the MDL's frame numbers changed) 0x4E PFN_LIST_CORRUPT (7, the frame, 0,
        0)."""
        ex = self.ex
        _, _, pages = self._mdl_span(mdl)
        flags = self._mdl_flags(mdl)
        if not flags & MDL_PAGES_LOCKED:
            owner = ex.current.pid if ex.current is not None else None
            entries = ex.mm.pfn.entries
            locked = sum(1 for pfn in ex.mm.pfn.locked if entries[pfn].owner == owner)
            raise BugCheck(PROCESS_HAS_LOCKED_PAGES, (1, mdl, locked, 0),
                           detail="MmUnlockPages of an MDL whose pages are not locked")
        if flags & MDL_MAPPED_TO_SYSTEM_VA:
            self.unmap_locked_pages(ex.kernel_read_u64(mdl + MDL_MAPPED_VA), mdl)
        frames = struct.unpack(f"<{pages}Q", ex.kernel_read(mdl + MDL_PFN, 8 * pages))
        for pfn in frames:
            if pfn >= len(ex.mm.pfn.entries) or not ex.mm.pfn.entries[pfn].locks:
                raise BugCheck(BugCheckCode.PFN_LIST_CORRUPT, (7, pfn, 0, 0),
                               detail=f"MmUnlockPages: frame {pfn:#x} is not locked (a page "
                               "unlocked more times than it was locked)")
        self._unlock_frames(frames)
        self._set_mdl_flags(mdl, self._mdl_flags(mdl) & ~(MDL_PAGES_LOCKED
                                                         | MDL_WRITE_OPERATION))

    def _lock_frame(self, pfn: int, access: str) -> None:
        """The page stays in RAM (its frame is the one the MDL names) until unlocked; a
        frame locked for write counts as modified, since a device may fill it."""
        if pfn >= len(self.ex.mm.pfn.entries):     # a driver garbled the user's PTE
            raise BugCheck(BugCheckCode.PFN_LIST_CORRUPT,
                           (int(PfnListCorrupt.PTE_OR_PFN_CORRUPT), pfn, 0, 0),
                           detail=f"MmProbeAndLockPages: a user PTE names frame {pfn:#x}, "
                           "beyond RAM (a corrupted page table)")
        entry = self.ex.mm.pfn.lock(pfn)
        entry.modified |= access == "write"

    def _unlock_frames(self, frames: list[int] | tuple[int, ...]) -> None:
        """The frames may be trimmed again."""
        pfn_db = self.ex.mm.pfn
        for pfn in frames:
            pfn_db.unlock(pfn)

    def _mdl_frames(self, mdl: int) -> tuple[int, ...]:
        pages = self.mdl_pages(mdl)
        return struct.unpack(f"<{pages}Q", self.ex.kernel_read(mdl + MDL_PFN, 8 * pages))

    def _unlock_mdl(self, mdl: int) -> None:
        """MmUnmapLockedPages + MmUnlockPages of the I/O manager's own MDL, at completion."""
        self._own_mdls.discard(mdl)
        if self._mdl_flags(mdl) & MDL_PAGES_LOCKED:
            self.unlock_pages(mdl)

    def complete(self, irp: int, caller: int) -> None:
        """IoCompleteRequest: the driver is done with the IRP; twice is bug check 0x44."""
        record = self.irps.get(irp)
        if record is None or record.completed:
            raise BugCheck(MULTIPLE_IRP_COMPLETE_REQUESTS, (irp, 0, 0, 0), caller,
                           "IoCompleteRequest on an IRP that is already complete")
        record.completed = True
        if record.done is not None:                  # a pended request: wake the requester
            record.done.state = True
            self.ex.scheduler.signal(record.done)
        if record.on_complete is not None:           # asynchronous: finish it right now
            record.on_complete()

    def _mdl_flags(self, mdl: int) -> int:
        return struct.unpack("<H", self.ex.kernel_read(mdl + MDL_FLAGS, 2))[0]

    def _set_mdl_flags(self, mdl: int, flags: int) -> None:
        self.ex.kernel_write(mdl + MDL_FLAGS, struct.pack("<H", flags & 0xFFFF))

    def map_mdl(self, mdl: int, priority: int = MDL_MAPPING_NO_EXECUTE) -> int:
        """MmMapLockedPagesSpecifyCache(Mdl, KernelMode, ...): the MDL's frames mapped at a
        new kernel address in system PTE space, a guard page after them; the buffer's
        address there (its ByteOffset included) becomes MappedSystemVa, and
        MDL_MAPPED_TO_SYSTEM_VA says so (what the header's inline MmGetSystemAddressForMdlSafe
        reads). ``priority``'s MdlMappingNoExecute makes the view NX (else it is executable,
        as on Windows), MdlMappingNoWrite read-only. An MDL mapped already gives its view.
        OutOfFrames if no page table can be had."""
        ex = self.ex
        mdl_flags = self._mdl_flags(mdl)
        if mdl_flags & MDL_MAPPED_TO_SYSTEM_VA:
            return ex.kernel_read_u64(mdl + MDL_MAPPED_VA)
        va0, _, pages = self._mdl_span(mdl)
        offset = va0 & 0xFFF
        frames = struct.unpack(f"<{pages}Q", ex.kernel_read(mdl + MDL_PFN, 8 * pages))
        va = self._system_ptes
        self._system_ptes += (pages + 1) * layout.PAGE_SIZE       # a guard page between
        no_write, no_execute = priority & MDL_MAPPING_NO_WRITE, priority & MDL_MAPPING_NO_EXECUTE
        protect = {(False, False): Protection.PAGE_EXECUTE_READWRITE,
                   (False, True): Protection.PAGE_READWRITE,
                   (True, False): Protection.PAGE_EXECUTE_READ,
                   (True, True): Protection.PAGE_READONLY}[bool(no_write), bool(no_execute)]
        flags = leaf_flags(protect, user=False, populated=True)
        for i, pfn in enumerate(frames):
            ex.mm.system.map_page(va + i * layout.PAGE_SIZE, pfn, flags)
        self._views[va] = (mdl, pages)
        ex.kernel_write(mdl + MDL_MAPPED_VA, struct.pack("<Q", va + offset))
        self._set_mdl_flags(mdl, mdl_flags | MDL_MAPPED_TO_SYSTEM_VA)
        return va + offset

    def unmap_locked_pages(self, base: int, mdl: int) -> None:
        """MmUnmapLockedPages(BaseAddress, Mdl) of a system-space view: its pages unmapped
        (their translations invalidated), MDL_MAPPED_TO_SYSTEM_VA cleared. An address that
        is no view this MDL has is bug check 0xDA SYSTEM_PTE_MISUSE (6, the MDL, the
        address, the pages): "the MDL being freed was never (or is currently not) mapped"."""
        ex = self.ex
        _, _, pages = self._mdl_span(mdl)
        view = base & ~0xFFF
        if self._views.get(view) != (mdl, pages) or not self._mdl_flags(mdl) \
                & MDL_MAPPED_TO_SYSTEM_VA:
            raise BugCheck(SYSTEM_PTE_MISUSE, (6, mdl, base, pages),
                           detail=f"MmUnmapLockedPages: {base:#x} is not a view of MDL "
                           f"{mdl:#x}")
        del self._views[view]
        for i in range(pages):
            ex.mm.system.unmap_page(view + i * layout.PAGE_SIZE)
        self._set_mdl_flags(mdl, self._mdl_flags(mdl) & ~MDL_MAPPED_TO_SYSTEM_VA)


def invalid_device_request_address() -> int:
    """The trap address of nt!IopInvalidDeviceRequest (emu.nt.ntos registers it)."""
    from emu.nt import exports
    return exports.address_of("IopInvalidDeviceRequest") or 0


def invalid_device_request(ex: IoSystem, call) -> int:
    """NTSTATUS IopInvalidDeviceRequest(DEVICE_OBJECT*, IRP*): the I/O manager's default
    dispatch routine. It sets Irp->IoStatus.Status to STATUS_INVALID_DEVICE_REQUEST and
    Information to 0, completes the IRP (IoCompleteRequest) and returns that status."""
    irp = call.arg(1)
    ex.kernel_write(irp + IRP_STATUS, struct.pack("<IIQ", STATUS_INVALID_DEVICE_REQUEST, 0, 0))
    ex.io.complete(irp, call.return_address)
    return STATUS_INVALID_DEVICE_REQUEST


def span_pages(va: int, length: int) -> int:
    """ADDRESS_AND_SIZE_TO_SPAN_PAGES(Va, Size) (wdm.h): the pages [va, va + length) touches."""
    return ((va & 0xFFF) + length + 0xFFF) >> 12
