"""The I/O structures as wdm.h lays them out for x64: the one table of their offsets.

The executive reads and writes DRIVER_OBJECT, DEVICE_OBJECT, IRP and its
IO_STACK_LOCATION, IO_STATUS_BLOCK, MDL, UNICODE_STRING, KDPC and FILE_OBJECT in
guest memory, where a driver built from the WDK's headers reads and writes them too.
Each offset here is ``offsetof`` of the field in mingw-w64's ``ddk/wdm.h`` for
x86_64 (LLP64: ULONG 4 bytes, pointers 8; POINTER_ALIGNMENT is 8-byte alignment on
Win64), and ``sizeof`` is the structure's size; tests/nt/test_wdm_layout.py compiles
a probe with the drivers' own toolchain and checks every entry against it.

A field inside a union or nested structure is named by its C member designator
(``Tail.Overlay.CurrentStackLocation``), as offsetof takes it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Struct:
    """One structure: its size and the offset of each field the executive touches."""

    name: str
    size: int
    fields: dict[str, int]

    def __getitem__(self, field: str) -> int:
        """offsetof(name, field)."""
        return self.fields[field]


IRP_MJ_MAXIMUM_FUNCTION = 0x1B

DRIVER_OBJECT = Struct("DRIVER_OBJECT", 0x150, {
    "Type": 0x00, "Size": 0x02,
    "DeviceObject": 0x08,           # the driver's devices, a list through NextDevice
    "Flags": 0x10,
    "DriverStart": 0x18, "DriverSize": 0x20,
    "DriverInit": 0x58,             # DriverEntry
    "DriverUnload": 0x68,
    "MajorFunction": 0x70,          # PDRIVER_DISPATCH[IRP_MJ_MAXIMUM_FUNCTION + 1]
})

DEVICE_OBJECT = Struct("DEVICE_OBJECT", 0x148, {
    "Type": 0x00, "Size": 0x02, "ReferenceCount": 0x04,
    "DriverObject": 0x08, "NextDevice": 0x10,
    "Flags": 0x30,                  # DO_BUFFERED_IO, DO_DIRECT_IO
    "Characteristics": 0x34,
    "DeviceExtension": 0x40,
    "DeviceType": 0x48,
    "StackSize": 0x4C,              # IRP stack locations a request to it needs
    "Dpc": 0xC8,                    # the KDPC of IoInitializeDpcRequest (DpcForIsr)
})

IO_STATUS_BLOCK = Struct("IO_STATUS_BLOCK", 0x10, {
    "Status": 0x00, "Information": 0x08,
})

IRP = Struct("IRP", 0xD0, {
    "Type": 0x00, "Size": 0x02,
    "MdlAddress": 0x08,             # direct I/O
    "Flags": 0x10,
    "AssociatedIrp.SystemBuffer": 0x18,     # buffered I/O
    "IoStatus": 0x30, "IoStatus.Status": 0x30, "IoStatus.Information": 0x38,
    "RequestorMode": 0x40, "PendingReturned": 0x41,
    "StackCount": 0x42, "CurrentLocation": 0x43,
    "Cancel": 0x44, "CancelIrql": 0x45,
    "UserIosb": 0x48, "UserEvent": 0x50,
    "UserBuffer": 0x70,             # neither I/O: the caller's own address
    "Tail.Overlay.Thread": 0x98,
    "Tail.Overlay.CurrentStackLocation": 0xB8,   # what IoGetCurrentIrpStackLocation reads
    "Tail.Overlay.OriginalFileObject": 0xC0,
})

IO_STACK_LOCATION = Struct("IO_STACK_LOCATION", 0x48, {
    "MajorFunction": 0x00, "MinorFunction": 0x01, "Flags": 0x02, "Control": 0x03,
    "Parameters": 0x08,
    "Parameters.Read.Length": 0x08, "Parameters.Read.Key": 0x10,
    "Parameters.Read.ByteOffset": 0x18,
    "Parameters.Write.Length": 0x08, "Parameters.Write.Key": 0x10,
    "Parameters.Write.ByteOffset": 0x18,
    "Parameters.DeviceIoControl.OutputBufferLength": 0x08,
    "Parameters.DeviceIoControl.InputBufferLength": 0x10,
    "Parameters.DeviceIoControl.IoControlCode": 0x18,
    "Parameters.DeviceIoControl.Type3InputBuffer": 0x20,
    "DeviceObject": 0x28, "FileObject": 0x30,
    "CompletionRoutine": 0x38, "Context": 0x40,
})

# The MDL header; the frame numbers follow it (MmGetMdlPfnArray is (PPFN_NUMBER)(Mdl + 1)).
MDL = Struct("MDL", 0x30, {
    "Next": 0x00, "Size": 0x08, "MdlFlags": 0x0A, "Process": 0x10,
    "MappedSystemVa": 0x18, "StartVa": 0x20, "ByteCount": 0x28, "ByteOffset": 0x2C,
})

UNICODE_STRING = Struct("UNICODE_STRING", 0x10, {
    "Length": 0x00, "MaximumLength": 0x02, "Buffer": 0x08,
})

KDPC = Struct("KDPC", 0x40, {
    "Type": 0x00, "Importance": 0x01, "Number": 0x02, "DpcListEntry": 0x08,
    "DeferredRoutine": 0x18, "DeferredContext": 0x20,
    "SystemArgument1": 0x28, "SystemArgument2": 0x30, "DpcData": 0x38,
})

# One per open of a device (IopParseDevice makes it); every IRP of that open carries it in
# its stack location's FileObject. FsContext/FsContext2 are the driver's per-open state.
FILE_OBJECT = Struct("FILE_OBJECT", 0xD8, {
    "Type": 0x00, "Size": 0x02, "DeviceObject": 0x08, "Vpb": 0x10,
    "FsContext": 0x18, "FsContext2": 0x20,
    "SectionObjectPointer": 0x28, "PrivateCacheMap": 0x30,
    "FinalStatus": 0x38, "RelatedFileObject": 0x40,
    "LockOperation": 0x48, "DeletePending": 0x49, "ReadAccess": 0x4A, "WriteAccess": 0x4B,
    "DeleteAccess": 0x4C, "SharedRead": 0x4D, "SharedWrite": 0x4E, "SharedDelete": 0x4F,
    "Flags": 0x50, "FileName": 0x58, "FileName.Length": 0x58,
    "FileName.MaximumLength": 0x5A, "FileName.Buffer": 0x60,
    "CurrentByteOffset": 0x68, "Waiters": 0x70, "Busy": 0x74, "LastLock": 0x78,
    "Lock": 0x80, "Event": 0x98, "CompletionContext": 0xB0, "IrpListLock": 0xB8,
    "IrpList": 0xC0, "FileObjectExtension": 0xD0,
})

STRUCTS: tuple[Struct, ...] = (DRIVER_OBJECT, DEVICE_OBJECT, IRP, IO_STACK_LOCATION,
                               IO_STATUS_BLOCK, MDL, UNICODE_STRING, KDPC, FILE_OBJECT)

# Object types (the Type field of each I/O object: wdm.h's IO_TYPE_*, KOBJECTS' DpcObject).
IO_TYPE_DEVICE, IO_TYPE_DRIVER, IO_TYPE_FILE, IO_TYPE_IRP = 3, 4, 5, 6
DPC_OBJECT = 0x13

# -- the kernel's structures (events, attaching, time, strings) ---------------------------
# Checked against the WDK's <ntifs.h> only (it includes <ntddk.h>; KAPC_STATE and
# KeStackAttachProcess are declared there): the private ELF header does not declare them.

# Every dispatcher object (event, mutex, semaphore, timer, process, thread) begins with one.
DISPATCHER_HEADER = Struct("DISPATCHER_HEADER", 0x18, {
    "Type": 0x00,                   # KOBJECTS: EventNotificationObject 0, Synchronization 1
    "Signalling": 0x01, "Size": 0x02,   # Size: of the whole object, in LONGs
    "SignalState": 0x04,            # LONG: > 0 while the object is signalled
    "WaitListHead": 0x08,           # LIST_ENTRY of the wait blocks waiting on it
})

KEVENT = Struct("KEVENT", 0x18, {
    "Header": 0x00, "Header.Type": 0x00, "Header.Size": 0x02, "Header.SignalState": 0x04,
    "Header.WaitListHead": 0x08,
})

# The caller's storage for the APC state KeStackAttachProcess saves (opaque to drivers).
KAPC_STATE = Struct("KAPC_STATE", 0x30, {
    "ApcListHead": 0x00, "Process": 0x20, "KernelApcInProgress": 0x28,
    "KernelApcPending": 0x29, "UserApcPending": 0x2A,
})

LARGE_INTEGER = Struct("LARGE_INTEGER", 0x8, {"LowPart": 0x0, "HighPart": 0x4, "QuadPart": 0x0})

# A time the kernel updates while user code reads it: LowPart and High1Time are what an x64
# reader loads as one ULONG64; High2Time is written first, so a 32-bit reader can retry.
KSYSTEM_TIME = Struct("KSYSTEM_TIME", 0xC, {"LowPart": 0x0, "High1Time": 0x4, "High2Time": 0x8})

# The page the kernel shares with everyone (ntddk.h): wdm.h's x64 KeQuerySystemTime,
# KeQueryTickCount and KeQueryInterruptTime are macros reading it at 0xFFFFF780'00000000.
KUSER_SHARED_DATA = Struct("KUSER_SHARED_DATA", 0x5F0, {
    "TickCountMultiplier": 0x004, "InterruptTime": 0x008, "SystemTime": 0x014,
    "TimeZoneBias": 0x020, "ImageNumberLow": 0x02C, "ImageNumberHigh": 0x02E,
    "NtSystemRoot": 0x030, "NtProductType": 0x264, "ProductTypeIsValid": 0x268,
    "NtMajorVersion": 0x26C, "NtMinorVersion": 0x270, "TickCount": 0x320,
})

# The processor's control region (ntddk.h, x64), at GS's base while ring-0 code runs
# (emu.nt.kpcr). NtTib's union: the x64 kernel's own names for its first words.
KPCR = Struct("KPCR", 0x178, {
    "GdtBase": 0x00, "TssBase": 0x08, "UserRsp": 0x10, "Self": 0x18, "CurrentPrcb": 0x20,
    "LockArray": 0x28, "Used_Self": 0x30, "IdtBase": 0x38, "Irql": 0x50,
    "MajorVersion": 0x60, "MinorVersion": 0x62,
})

# The counted 8-bit string (ANSI_STRING and STRING are one type in ntdef.h).
STRING = Struct("STRING", 0x10, {"Length": 0x00, "MaximumLength": 0x02, "Buffer": 0x08})

KE_STRUCTS: tuple[Struct, ...] = (DISPATCHER_HEADER, KEVENT, KAPC_STATE, LARGE_INTEGER,
                                  KSYSTEM_TIME, KUSER_SHARED_DATA, STRING, KPCR)

# Dispatcher object types (KOBJECTS): the Type of an event's DISPATCHER_HEADER is its
# EVENT_TYPE (NotificationEvent 0, SynchronizationEvent 1).
NOTIFICATION_EVENT, SYNCHRONIZATION_EVENT = 0, 1
