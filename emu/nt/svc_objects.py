"""System services for objects: handles, waits, processes, threads, events, files.

Each handler is ``(ex, proc, args) -> NTSTATUS``, or None when the calling thread
does not get a result now (it blocked: the result arrives when it wakes; or it
ended). Handle values are looked up in the CALLER's table only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from emu.nt import ps
from emu.nt.fs import GuestFileNotFound
from emu.nt.io import IRP_MJ_READ, IRP_MJ_WRITE, METHOD_IN_DIRECT, METHOD_NEITHER
from emu.nt.loader import LoaderError, parse_image
from emu.nt.mm import virtual
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.ob import (
    CONSOLE_DEVICE,
    NT_CURRENT_PROCESS,
    NT_CURRENT_THREAD,
    ConsoleObject,
    Event,
    FileObject,
    HandleError,
    ObjectType,
    handle_argument,
)
from emu.nt.process import Process
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import (
    MAX_WRITE,
    Service,
    UserStatus,
    check_user_range,
    probe,
    probe_and_read,
    probe_and_write,
    probe_for_read,
    probe_for_write,
    service,
)

if TYPE_CHECKING:
    from emu.nt.interfaces import ObjectServices

MAX_PATH = 1024                  # a path or argument string: at most 1023 bytes, then NUL
ARGUMENT_SEPARATORS = r"[ \t\n\v\f\r]+"   # NtCreateProcess splits its arguments at these
MAX_READ = 1 << 20
WAITABLE = (ObjectType.PROCESS, ObjectType.THREAD, ObjectType.EVENT)
IO_COUNT_SIZE = 8                # the I/O manager stores a byte count as 8 bytes


def read_string(ex: ObjectServices, address: int, too_long: int,
                limit: int = MAX_PATH) -> str:
    """A NUL-terminated UTF-8 string from user memory: at most ``limit`` - 1 bytes before its
    NUL, else the service returns ``too_long`` (raised as UserStatus)."""
    out = bytearray()
    while len(out) < limit:
        chunk = probe_and_read(ex, address + len(out), min(64, 4096 - (address + len(out)) % 4096))
        end = chunk.find(b"\0")
        if end >= 0:
            if len(out) + end >= limit:
                break
            return (out + chunk[:end]).decode("utf-8", "replace")
        out += chunk
    raise UserStatus(too_long)


def pointer_size(ex: ObjectServices) -> int:
    """The size of a HANDLE or pointer-sized count in the caller: 8, or 4 in a 32-bit
    process."""
    return 4 if ex.current_thread is not None and ex.current_thread.process.bits == 32 else 8


def write_pointer(ex: ObjectServices, address: int, value: int) -> None:
    """Store a pointer-sized value (a HANDLE, a count) in the caller's memory: 8 bytes, or 4
    in a 32-bit process."""
    size = pointer_size(ex)
    probe_and_write(ex, address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))


def reference(ex: ObjectServices, proc: Process, handle: int, *types: ObjectType):
    """ObReferenceObjectByHandle: a handle or pseudo-handle of the caller -> the object
    (HandleError if not valid). A pseudo-handle asked for another object type is
    STATUS_OBJECT_TYPE_MISMATCH, as Windows returns it; 0 is no handle."""
    handle = handle_argument(handle, proc.bits)
    for pseudo, kind, obj in ((NT_CURRENT_PROCESS, ObjectType.PROCESS, proc),
                              (NT_CURRENT_THREAD, ObjectType.THREAD, ex.current_thread)):
        if handle == pseudo:
            if types and kind not in types:
                raise HandleError(NTSTATUS.STATUS_OBJECT_TYPE_MISMATCH)
            return obj
    return proc.handles.lookup(handle, *types)


@service(Service.NtTerminateProcess)
def nt_terminate_process(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int | None:
    """NtTerminateProcess(ProcessHandle, ExitStatus): -1 is the caller itself; 0 is no
    handle (STATUS_INVALID_HANDLE), as every other value not open in the caller."""
    try:
        target = reference(ex, proc, args[0], ObjectType.PROCESS)
    except HandleError as err:
        return err.status
    ex.terminate(target, args[1] & 0xFFFF_FFFF)
    return None if target is proc else NTSTATUS.STATUS_SUCCESS


def create_handle(ex: ObjectServices, proc: Process, out: int, make: Callable[[], object]) -> int:
    """ObInsertObject, in the order that leaves nothing behind on failure: probe ``out``
    (ProbeForWriteHandle), reserve a slot in the caller's handle table (a full table fails
    here, before any object exists), make the object (``make`` returns it, or a failure
    NTSTATUS), and only then let the handle name it and store the handle at ``out``."""
    probe_for_write(ex, out, pointer_size(ex))
    value = proc.handles.reserve()
    try:
        obj = make()
    except BaseException:
        proc.handles.unreserve(value)
        raise
    if isinstance(obj, int):
        proc.handles.unreserve(value)
        return obj
    proc.handles.fill(value, obj)
    ex.objects.created(obj)
    write_pointer(ex, out, value)
    return NTSTATUS.STATUS_SUCCESS


def _probe_buffer(ex: ObjectServices, obj, buffer: int, length: int, access: str,
                  limit: int | None = None) -> int:
    """ProbeForRead/ProbeForWrite of a read or write buffer, in the order docs/abi.md gives:
    its whole range against MmUserProbeAddress, then the service's ``limit``
    (STATUS_INVALID_PARAMETER), then its first 1 MiB page by page. A device with neither
    I/O is handed the raw address instead, unprobed, as a METHOD_NEITHER control code is:
    the driver must probe it (docs/abi.md). STATUS_SUCCESS, or the status to return."""
    unprobed = obj.object_type is ObjectType.DEVICE and not ex.io.probes_user_buffer(obj)
    if not unprobed:
        check_user_range(buffer, length)
    if limit is not None and length > limit:
        return NTSTATUS.STATUS_INVALID_PARAMETER
    if not unprobed:
        probe(ex, buffer, min(length, MAX_READ), access)
    return NTSTATUS.STATUS_SUCCESS


def device_request(ex: ObjectServices, file, major: int, args: tuple[int, ...]) -> None:
    """Hand a device request to the I/O manager once the CPU has stopped (the driver's code
    must run at ring 0): the caller's result comes back then."""
    thread = ex.current_thread
    thread.kernel_work = lambda: ex.io.transfer(thread, file, major, args[1], args[2], args[3])
    ex.cpu.stop()


def with_handles(fn):
    """Turn a HandleError into its status."""
    def wrapper(ex, proc, args):
        try:
            return fn(ex, proc, args)
        except HandleError as err:
            return err.status
    wrapper.__doc__ = fn.__doc__
    return wrapper


@service(Service.NtClose)
@with_handles
def nt_close(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int | None:
    """NtClose(Handle). Closing the last handle to an open device sends its driver
    IRP_MJ_CLEANUP then IRP_MJ_CLOSE with the open's FILE_OBJECT, which then goes (at
    process exit, emu.nt.ps.terminate_process does the same for every handle left)."""
    obj = proc.handles.close(args[0])
    ex.object_closed(obj)
    if obj.object_type is ObjectType.DEVICE and obj.handle_count == 0:
        thread = ex.current_thread
        thread.kernel_work = lambda: (ex.io.close(thread, obj), 0)[1]
        ex.cpu.stop()
        return None
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtDuplicateObject)
@with_handles
def nt_duplicate_object(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtDuplicateObject(Handle, *NewHandle), within the calling process."""
    obj = reference(ex, proc, args[0])
    return create_handle(ex, proc, args[1], lambda: obj)


@service(Service.NtWaitForSingleObject)
@with_handles
def nt_wait_for_single_object(ex: ObjectServices, proc: Process,
                              args: tuple[int, ...]) -> int | None:
    """NtWaitForSingleObject(Handle, TimeoutInstructions): -1 waits forever, 0 polls."""
    obj = reference(ex, proc, args[0], *WAITABLE)
    timeout = args[1] - (1 << 64) if args[1] >> 63 else args[1]
    if obj.signalled:
        obj.acquire()
        return NTSTATUS.STATUS_SUCCESS
    if timeout == 0:
        return NTSTATUS.STATUS_TIMEOUT
    deadline = None if timeout < 0 else ex.clock + timeout
    ex.scheduler.block(ex.current_thread, obj, deadline)
    return None


@service(Service.NtYieldExecution)
def nt_yield_execution(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtYieldExecution(): to the back of the ready queue (STATUS_SUCCESS either way)."""
    if ex.scheduler.ready:
        ex.scheduler.make_ready(ex.current_thread)
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtDelayExecution)
def nt_delay_execution(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int | None:
    """NtDelayExecution(Instructions): sleep on the machine's instruction clock."""
    if args[0] == 0:
        return nt_yield_execution(ex, proc, args)
    ex.scheduler.block(ex.current_thread, None, ex.clock + args[0])
    return None


@service(Service.NtCreateProcess)
@with_handles
def nt_create_process(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtCreateProcess(Path, Arguments, *Handle): a child from the guest file system."""
    path = read_string(ex, args[0], NTSTATUS.STATUS_OBJECT_NAME_INVALID)
    text = read_string(ex, args[1], NTSTATUS.STATUS_INVALID_PARAMETER) if args[1] else ""
    arguments = [a for a in re.split(ARGUMENT_SEPARATORS, text) if a]

    def make() -> Process | int:
        try:
            image = parse_image(ex.fs.read(path), path)
            return ex.create_process(image, arguments, parent=proc)
        except GuestFileNotFound:
            return NTSTATUS.STATUS_OBJECT_NAME_NOT_FOUND
        except LoaderError:
            return NTSTATUS.STATUS_INVALID_IMAGE_FORMAT
        except virtual.CommitLimitExceeded:
            return NTSTATUS.STATUS_COMMITMENT_LIMIT
        except (OutOfFrames, ValueError):
            return NTSTATUS.STATUS_NO_MEMORY
        except ps.LimitError:
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
    return create_handle(ex, proc, args[2], make)


@service(Service.NtCreateThread)
@with_handles
def nt_create_thread(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtCreateThread(StartRoutine, Argument, *Handle): a thread running start(arg)."""
    def make() -> object:
        try:
            return ps.create_thread(ex, proc, args[0], arg=args[1])
        except ps.LimitError:
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
        except virtual.CommitLimitExceeded:
            return NTSTATUS.STATUS_COMMITMENT_LIMIT
        except OutOfFrames:
            return NTSTATUS.STATUS_NO_MEMORY
    return create_handle(ex, proc, args[2], make)


@service(Service.NtTerminateThread)
@with_handles
def nt_terminate_thread(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int | None:
    """NtTerminateThread(Handle, ExitStatus): a thread of the caller's process."""
    thread = reference(ex, proc, args[0], ObjectType.THREAD)
    if thread.process is not proc:
        return NTSTATUS.STATUS_ACCESS_DENIED
    ps.terminate_thread(ex, thread, args[1] & 0xFFFF_FFFF)
    return None if thread is ex.current_thread else NTSTATUS.STATUS_SUCCESS


@service(Service.NtCreateEvent)
@with_handles
def nt_create_event(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtCreateEvent(*Handle, ManualReset, InitialState): each flag 0 or 1, as Windows refuses
    an EventType other than NotificationEvent/SynchronizationEvent (STATUS_INVALID_PARAMETER).
    The handle pointer is probed first, as Windows' NtCreateEvent does (ProbeForWriteHandle
    before the type check)."""
    probe_for_write(ex, args[0], pointer_size(ex))
    manual_reset, state = args[1] & 0xFFFF_FFFF, args[2] & 0xFFFF_FFFF
    if manual_reset not in (0, 1) or state not in (0, 1):
        return NTSTATUS.STATUS_INVALID_PARAMETER
    return create_handle(ex, proc, args[0], lambda: Event(bool(manual_reset), bool(state)))


@service(Service.NtSetEvent)
@with_handles
def nt_set_event(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtSetEvent(Handle): signal; waiters wake (one, for an auto-reset event)."""
    event = reference(ex, proc, args[0], ObjectType.EVENT)
    event.state = True
    ex.scheduler.signal(event)
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtResetEvent)
@with_handles
def nt_reset_event(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtResetEvent(Handle)."""
    reference(ex, proc, args[0], ObjectType.EVENT).state = False
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtOpenFile)
@with_handles
def nt_open_file(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int | None:
    """NtOpenFile(Path, *Handle): a file of the guest file system (read-only), or the
    console device."""
    path = read_string(ex, args[0], NTSTATUS.STATUS_OBJECT_NAME_INVALID)
    out = args[1]
    path = ex.io.resolve(path)              # \??\NAME: a symbolic link a driver made
    if path.startswith("\\Device\\") and path != CONSOLE_DEVICE:
        # A device a driver created: IRP_MJ_CREATE first (the driver may refuse the open),
        # with the handle's slot already reserved, so that the driver never sees an open
        # that then fails.
        probe_for_write(ex, out, pointer_size(ex))
        found = ex.io.lookup(path)
        if found is None:
            return NTSTATUS.STATUS_OBJECT_NAME_NOT_FOUND
        device, remainder = found            # \Device\NAME\rest: FileName is \rest
        value = proc.handles.reserve()
        thread = ex.current_thread

        def create() -> int:
            status, obj = ex.io.open(thread, device, remainder)
            if obj is None:
                proc.handles.unreserve(value)
                return status
            try:
                proc.handles.fill(value, obj)
            except HandleError as err:        # the process ended meanwhile
                return err.status
            ex.objects.created(obj)
            write_pointer(ex, out, value)
            return NTSTATUS.STATUS_SUCCESS
        thread.kernel_work = create
        ex.cpu.stop()
        return None

    def make() -> object:
        if path == CONSOLE_DEVICE:
            return ConsoleObject()
        try:
            return FileObject(path, ex.fs.read(path))
        except GuestFileNotFound:
            return NTSTATUS.STATUS_OBJECT_NAME_NOT_FOUND
    return create_handle(ex, proc, out, make)


def _probe_count(ex: ObjectServices, obj, count: int) -> None:
    """ProbeForWrite of NtReadFile's/NtWriteFile's *BytesRead/*BytesWritten (0: none): 8
    bytes for a device (the I/O manager's count), else pointer-sized."""
    if count:
        probe_for_write(ex, count, IO_COUNT_SIZE if obj.object_type is ObjectType.DEVICE
                        else pointer_size(ex))


@service(Service.NtReadFile)
@with_handles
def nt_read_file(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int | None:
    """NtReadFile(Handle, Buffer, Length, *BytesRead): a guest file, or a device (an IRP
    to its driver, dispatched once the CPU has stopped: the result comes back then)."""
    f = reference(ex, proc, args[0], ObjectType.FILE, ObjectType.DEVICE)
    buffer, length, count = args[1], args[2], args[3]
    # NtReadFile probes the buffer for write and the count before it reads a byte (a
    # neither-I/O device gets the raw buffer: see _probe_buffer).
    _probe_buffer(ex, f, buffer, length, "write")
    _probe_count(ex, f, count)
    if f.object_type is ObjectType.DEVICE:
        return device_request(ex, f, IRP_MJ_READ, args)
    length = min(length, MAX_READ)
    if f.position >= len(f.data) and length:
        return NTSTATUS.STATUS_END_OF_FILE
    chunk = f.data[f.position:f.position + length]
    probe_and_write(ex, buffer, chunk)
    f.position += len(chunk)
    if count:
        write_pointer(ex, count, len(chunk))
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtQueryExitStatus)
@with_handles
def nt_query_exit_status(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtQueryExitStatus(Handle, *Status): STATUS_PENDING while it runs."""
    obj = reference(ex, proc, args[0], ObjectType.PROCESS, ObjectType.THREAD)
    status = NTSTATUS.STATUS_PENDING if obj.exit_status is None else obj.exit_status
    probe_and_write(ex, args[1], (status & 0xFFFF_FFFF).to_bytes(4, "little"))
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtGetCurrentThreadId)
def nt_get_current_thread_id(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int:
    """NtGetCurrentThreadId(): the caller's thread id (a value, not a status)."""
    return ex.current_thread.tid


@service(Service.NtWriteFile)
@with_handles
def nt_write_file(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> int | None:
    """NtWriteFile(Handle, Buffer, Length, *BytesWritten): only the console is writable;
    the files of the guest file system are read-only (STATUS_ACCESS_DENIED)."""
    obj = reference(ex, proc, args[0], ObjectType.CONSOLE, ObjectType.FILE, ObjectType.DEVICE)
    if obj.object_type is ObjectType.FILE:
        return NTSTATUS.STATUS_ACCESS_DENIED
    buffer, length, count = args[1], args[2], args[3]
    # NtWriteFile probes the buffer and the count before the console or a driver sees any.
    status = _probe_buffer(ex, obj, buffer, length, "read", MAX_WRITE)
    if status != NTSTATUS.STATUS_SUCCESS:
        return status
    _probe_count(ex, obj, count)
    if obj.object_type is ObjectType.DEVICE:
        return device_request(ex, obj, IRP_MJ_WRITE, args)
    ex.console_write(proc, probe_and_read(ex, buffer, length))
    if count:
        write_pointer(ex, count, length)
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtDeviceIoControlFile)
@with_handles
def nt_device_io_control_file(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> None:
    """NtDeviceIoControlFile(Handle, IoControlCode, InputBuffer, InputBufferLength,
    OutputBuffer, OutputBufferLength, *BytesReturned): the 7th argument is on the user
    stack at [rsp + 8] (where the System V call left it; docs/abi.md)."""
    device = reference(ex, proc, args[0], ObjectType.DEVICE)
    returned = int.from_bytes(probe_and_read(ex, ex.cpu.reg("rsp") + 8, 8), "little")
    # The I/O manager probes what it will touch before the driver runs (IopXxxControlFile):
    # the byte count, and for every method but METHOD_NEITHER (whose raw addresses are the
    # driver's to probe) the input buffer for read and the output buffer for its access.
    method = args[1] & 3
    in_buffer, in_length = args[2], args[3] & 0xFFFF_FFFF
    out_buffer, out_length = args[4], args[5] & 0xFFFF_FFFF
    if returned:
        probe_for_write(ex, returned, IO_COUNT_SIZE)
    if method != METHOD_NEITHER:
        check_user_range(in_buffer, in_length)
        check_user_range(out_buffer, out_length)
        probe_for_read(ex, in_buffer, min(in_length, MAX_READ))
        probe(ex, out_buffer, min(out_length, MAX_READ),
              "read" if method == METHOD_IN_DIRECT else "write")
    thread = ex.current_thread
    thread.kernel_work = lambda: ex.io.device_control(
        thread, device, args[1], args[2], args[3] & 0xFFFF_FFFF, args[4],
        args[5] & 0xFFFF_FFFF, returned)
    ex.cpu.stop()


@service(Service.NtReadFileEx)
@with_handles
def nt_read_file_ex(ex: ObjectServices, proc: Process, args: tuple[int, ...]) -> None:
    """NtReadFileEx(Handle, Event, Buffer, Length, *IoStatusBlock): an asynchronous read of
    a device: STATUS_PENDING if the driver pends it; at completion the IO_STATUS_BLOCK is
    filled in the caller's memory and the event (may be 0) is set."""
    device = reference(ex, proc, args[0], ObjectType.DEVICE)
    event = reference(ex, proc, args[1], ObjectType.EVENT) if args[1] else None
    _probe_buffer(ex, device, args[2], args[3], "write")   # NtReadFile's ProbeForWrite
    if args[4]:
        probe_for_write(ex, args[4], 16)                    # the block must be writable now
    thread = ex.current_thread
    thread.kernel_work = lambda: ex.io.transfer_async(thread, device, args[2], args[3],
                                                      args[4], event)
    ex.cpu.stop()
