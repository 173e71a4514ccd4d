/*
 * The driver side of the kernel boundary: types, status values and the
 * kernel exports a guest driver may import (guest/drivers/, see the
 * "Drivers" section of guest/README.md).
 *
 * A driver is a freestanding ELF64 shared object loaded by the emulator's
 * executive into the kernel half of the address space and run at ring 0.
 * Its imports stay undefined symbols until the loader binds each one to the
 * address of a kernel export (emu/nt/exports.py); an import the kernel does
 * not export refuses the load.
 *
 * Calling convention: the kernel speaks the Microsoft x64 convention
 * (arguments in RCX, RDX, R8, R9, then on the stack above a 32-byte shadow
 * space the caller reserves; RSI, RDI and XMM6-XMM15 preserved by the
 * callee). Everything that crosses the boundary - each export below and the
 * driver's DriverEntry - is declared NTAPI, which is gcc's ms_abi attribute;
 * the rest of a driver uses gcc's default (System V) convention, and gcc
 * converts at the boundary.
 *
 * Kernel code must not touch SSE state (the executive does not save it for
 * ring 0): drivers are built with -mgeneral-regs-only.
 *
 * This is a minimal, independently written subset: names and numbers follow
 * Microsoft's documentation so that a driver reads like a Windows one, but
 * only what the emulator implements is declared.
 */
#ifndef DDK_NTDDK_H
#define DDK_NTDDK_H

#if !defined(__x86_64__)
#error "guest drivers are x86-64 only"
#endif

/* -- calling convention and linkage ------------------------------------------------- */

/* The Microsoft x64 calling convention: every kernel export and DriverEntry. */
#define NTAPI __attribute__((ms_abi))

/*
 * The Makefile builds drivers with -fvisibility=hidden, so a driver exports
 * nothing by accident (and reaches its own globals without the GOT). The
 * loader finds the entry point by name: DriverEntry must stay visible.
 */
#define DDK_EXPORT __attribute__((visibility("default")))

#define DDK_NORETURN __attribute__((noreturn))
/* Lets -Wformat check DbgPrint calls; its conversions are printf's. */
#define DDK_PRINTF_LIKE(fmt, args) __attribute__((format(printf, fmt, args)))

#define IN
#define OUT
#define OPTIONAL
#define UNREFERENCED_PARAMETER(p) ((void)(p))

/* -- basic types (LLP64: LONG and ULONG stay 32 bits) ------------------------------- */

typedef void VOID;
typedef void *PVOID;
typedef char CHAR;
typedef unsigned char UCHAR;
typedef short SHORT;
typedef unsigned short USHORT;
typedef int LONG;
typedef unsigned int ULONG;
typedef long long LONGLONG;
typedef unsigned long long ULONGLONG;
typedef unsigned long long ULONG64;
typedef long long LONG_PTR;
typedef unsigned long long ULONG_PTR;
typedef ULONG_PTR SIZE_T;
typedef UCHAR BOOLEAN;
typedef PVOID HANDLE;
typedef unsigned short WCHAR;
typedef WCHAR *PWSTR;
typedef const WCHAR *PCWSTR;
typedef CHAR *PSTR;
typedef CHAR *PCHAR;
typedef const CHAR *PCSTR;
typedef UCHAR *PUCHAR;
typedef ULONG *PULONG;

_Static_assert(sizeof(ULONG) == 4, "ULONG is 32 bits");
_Static_assert(sizeof(ULONG_PTR) == sizeof(void *), "ULONG_PTR holds a pointer");
_Static_assert(sizeof(WCHAR) == 2, "WCHAR is UTF-16");

#define TRUE  ((BOOLEAN)1)
#define FALSE ((BOOLEAN)0)
#ifndef NULL
#define NULL ((void *)0)
#endif

/* -- NTSTATUS ----------------------------------------------------------------------- */

/* Bits 31-30: severity. Errors and warnings are negative, so success is a sign test. */
typedef LONG NTSTATUS;
#define NT_SUCCESS(status) ((NTSTATUS)(status) >= 0)

#define STATUS_SUCCESS             ((NTSTATUS)0x00000000L)
#define STATUS_UNSUCCESSFUL        ((NTSTATUS)0xC0000001L)
#define STATUS_NOT_IMPLEMENTED     ((NTSTATUS)0xC0000002L)
#define STATUS_INVALID_PARAMETER   ((NTSTATUS)0xC000000DL)
#define STATUS_NO_MEMORY           ((NTSTATUS)0xC0000017L)
#define STATUS_INSUFFICIENT_RESOURCES ((NTSTATUS)0xC000009AL)

/* -- IRQL --------------------------------------------------------------------------- */

typedef UCHAR KIRQL;
typedef KIRQL *PKIRQL;

#define PASSIVE_LEVEL  0
#define APC_LEVEL      1
#define DISPATCH_LEVEL 2
#define HIGH_LEVEL     15

/* -- strings and objects -------------------------------------------------------------- */

/* A counted UTF-16 string: Length and MaximumLength are in bytes, no terminator needed. */
typedef struct _UNICODE_STRING {
    USHORT Length;
    USHORT MaximumLength;
    PWSTR Buffer;
} UNICODE_STRING, *PUNICODE_STRING;
typedef const UNICODE_STRING *PCUNICODE_STRING;

/* -- I/O objects (wdm.h's x64 layouts; the executive reads and writes them) ----------
 *
 * Byte for byte as the WDK's wdm.h lays them out for x64 (emu/nt/wdm.py holds the one
 * table of offsets; tests/nt/test_wdm_layout.py compiles this header and the WDK's and
 * checks both against it). Members this machine does not use are kept as reserved bytes
 * so that every member it does use sits where wdm.h puts it.
 */
typedef short CSHORT;
typedef CHAR CCHAR;
typedef CCHAR KPROCESSOR_MODE;

typedef struct _LIST_ENTRY {
    struct _LIST_ENTRY *Flink;
    struct _LIST_ENTRY *Blink;
} LIST_ENTRY, *PLIST_ENTRY;

typedef struct _DRIVER_OBJECT DRIVER_OBJECT, *PDRIVER_OBJECT;
typedef struct _DEVICE_OBJECT DEVICE_OBJECT, *PDEVICE_OBJECT;
typedef struct _IRP IRP, *PIRP;
typedef struct _KDPC KDPC, *PKDPC;

typedef NTSTATUS NTAPI DRIVER_DISPATCH(PDEVICE_OBJECT DeviceObject, PIRP Irp);
typedef DRIVER_DISPATCH *PDRIVER_DISPATCH;
typedef VOID NTAPI DRIVER_UNLOAD(PDRIVER_OBJECT DriverObject);
typedef VOID NTAPI KDEFERRED_ROUTINE(PKDPC Dpc, PVOID DeferredContext, PVOID SystemArgument1,
                                     PVOID SystemArgument2);

#define IRP_MJ_CREATE          0x00
#define IRP_MJ_CLOSE           0x02
#define IRP_MJ_READ            0x03
#define IRP_MJ_WRITE           0x04
#define IRP_MJ_DEVICE_CONTROL  0x0e
#define IRP_MJ_MAXIMUM_FUNCTION 0x1b

/* A deferred procedure call: DeferredRoutine(Dpc, DeferredContext, SystemArgument1, 2). */
struct _KDPC {
    UCHAR Type;                     /* 0x00: 0x13 (DpcObject) */
    UCHAR Importance;
    volatile USHORT Number;
    LIST_ENTRY DpcListEntry;        /* 0x08 */
    KDEFERRED_ROUTINE *DeferredRoutine;     /* 0x18 */
    PVOID DeferredContext;          /* 0x20 */
    PVOID SystemArgument1;          /* 0x28 */
    PVOID SystemArgument2;          /* 0x30 */
    volatile PVOID DpcData;         /* 0x38 */
};

struct _DRIVER_OBJECT {
    CSHORT Type;                    /* 0x00: 4 (IO_TYPE_DRIVER) */
    CSHORT Size;                    /* 0x02: 0x150 */
    PDEVICE_OBJECT DeviceObject;    /* 0x08: the driver's devices, a list through NextDevice */
    ULONG Flags;                    /* 0x10 */
    PVOID DriverStart;              /* 0x18: where the image is mapped */
    ULONG DriverSize;               /* 0x20 */
    PVOID DriverSection;            /* 0x28 */
    PVOID DriverExtension;          /* 0x30 */
    UNICODE_STRING DriverName;      /* 0x38 */
    PUNICODE_STRING HardwareDatabase;   /* 0x48 */
    PVOID FastIoDispatch;           /* 0x50 */
    PVOID DriverInit;               /* 0x58: DriverEntry */
    PVOID DriverStartIo;            /* 0x60 */
    DRIVER_UNLOAD *DriverUnload;    /* 0x68 */
    PDRIVER_DISPATCH MajorFunction[IRP_MJ_MAXIMUM_FUNCTION + 1];   /* 0x70: the driver fills it */
};

#define DO_BUFFERED_IO 0x00000004   /* reads and writes go through a system buffer */
#define DO_DIRECT_IO   0x00000010   /* ... through an MDL of the caller's pages */
                                    /* neither flag: "neither I/O", the raw user pointer */
#define FILE_DEVICE_UNKNOWN 0x00000022

struct _DEVICE_OBJECT {
    CSHORT Type;                    /* 0x00: 3 (IO_TYPE_DEVICE) */
    USHORT Size;                    /* 0x02: 0x148 */
    LONG ReferenceCount;
    PDRIVER_OBJECT DriverObject;    /* 0x08 */
    PDEVICE_OBJECT NextDevice;      /* 0x10 */
    PDEVICE_OBJECT AttachedDevice;  /* 0x18 */
    PIRP CurrentIrp;                /* 0x20 */
    PVOID Timer;                    /* 0x28 */
    ULONG Flags;                    /* 0x30: DO_BUFFERED_IO, DO_DIRECT_IO: set them in DriverEntry */
    ULONG Characteristics;          /* 0x34 */
    PVOID Vpb;                      /* 0x38 */
    PVOID DeviceExtension;          /* 0x40: the driver's own per-device memory */
    ULONG DeviceType;               /* 0x48 */
    CCHAR StackSize;                /* 0x4c: 1 */
    UCHAR Reserved0[0xc8 - 0x4d];   /* Queue, AlignmentRequirement, DeviceQueue */
    KDPC Dpc;                       /* 0xc8: IoInitializeDpcRequest's */
    UCHAR Reserved1[0x148 - 0x108]; /* ActiveThreadCount ... Reserved */
};

/* A memory descriptor list: the frames of a buffer. The frame numbers follow the header
 * (MmGetMdlPfnArray(Mdl) is (PULONG64)(Mdl + 1)). */
typedef struct _MDL {
    struct _MDL *Next;              /* 0x00 */
    CSHORT Size;                    /* 0x08: the header and its frame numbers */
    CSHORT MdlFlags;                /* 0x0a */
    PVOID Process;                  /* 0x10 */
    PVOID MappedSystemVa;           /* 0x18: set by MmGetSystemAddressForMdlSafe */
    PVOID StartVa;                  /* 0x20: the user page the buffer starts in */
    ULONG ByteCount;                /* 0x28 */
    ULONG ByteOffset;               /* 0x2c: offset in that first page */
} MDL, *PMDL;

typedef struct _IO_STATUS_BLOCK {
    union {
        NTSTATUS Status;            /* 0x00 */
        PVOID Pointer;
    };
    ULONG_PTR Information;          /* 0x08: for a read, the bytes transferred */
} IO_STATUS_BLOCK, *PIO_STATUS_BLOCK;

/* An open file or device: the handle's object. */
typedef struct _FILE_OBJECT {
    CSHORT Type;                    /* 0x00: 5 (IO_TYPE_FILE) */
    CSHORT Size;                    /* 0x02: 0xd8 */
    ULONG Pad0;
    PDEVICE_OBJECT DeviceObject;    /* 0x08 */
    PVOID Vpb;                      /* 0x10 */
    PVOID FsContext;                /* 0x18 */
    PVOID FsContext2;               /* 0x20 */
    PVOID SectionObjectPointer;     /* 0x28 */
    PVOID PrivateCacheMap;          /* 0x30 */
    NTSTATUS FinalStatus;           /* 0x38 */
    ULONG Pad1;
    PVOID RelatedFileObject;        /* 0x40 */
    BOOLEAN LockOperation;          /* 0x48 */
    BOOLEAN DeletePending, ReadAccess, WriteAccess, DeleteAccess;
    BOOLEAN SharedRead, SharedWrite, SharedDelete;
    ULONG Flags;                    /* 0x50 */
    ULONG Pad2;
    UNICODE_STRING FileName;        /* 0x58 */
    LONGLONG CurrentByteOffset;     /* 0x68: a LARGE_INTEGER in wdm.h */
    ULONG Waiters, Busy;            /* 0x70 */
    PVOID LastLock;                 /* 0x78 */
    UCHAR Lock[0x18];               /* 0x80: a KEVENT */
    UCHAR Event[0x18];              /* 0x98: a KEVENT */
    PVOID CompletionContext;        /* 0xb0 */
    ULONG_PTR IrpListLock;          /* 0xb8: a KSPIN_LOCK */
    LIST_ENTRY IrpList;             /* 0xc0 */
    PVOID FileObjectExtension;      /* 0xd0 */
} FILE_OBJECT, *PFILE_OBJECT;

typedef struct _IO_STACK_LOCATION {
    UCHAR MajorFunction;            /* 0x00 */
    UCHAR MinorFunction;
    UCHAR Flags;
    UCHAR Control;
    union {                         /* 0x08; POINTER_ALIGNMENT members start 8-aligned */
        struct {
            ULONG Length;
            ULONG __attribute__((aligned(8))) Key;
            LONGLONG ByteOffset;
        } Read, Write;
        struct {
            ULONG OutputBufferLength;
            ULONG __attribute__((aligned(8))) InputBufferLength;
            ULONG __attribute__((aligned(8))) IoControlCode;
            PVOID Type3InputBuffer;   /* METHOD_NEITHER: the caller's raw input address */
        } DeviceIoControl;
        struct { PVOID Argument1, Argument2, Argument3, Argument4; } Others;
    } Parameters;
    PDEVICE_OBJECT DeviceObject;    /* 0x28 */
    PFILE_OBJECT FileObject;        /* 0x30 */
    PVOID CompletionRoutine;        /* 0x38 */
    PVOID Context;                  /* 0x40 */
} IO_STACK_LOCATION, *PIO_STACK_LOCATION;

struct _IRP {
    CSHORT Type;                    /* 0x00: 6 (IO_TYPE_IRP) */
    USHORT Size;                    /* 0x02: the IRP and its stack locations */
    ULONG Pad0;
    PMDL MdlAddress;                /* 0x08: direct I/O */
    ULONG Flags;                    /* 0x10 */
    ULONG Pad1;
    union {
        PIRP MasterIrp;
        LONG IrpCount;
        PVOID SystemBuffer;         /* 0x18: buffered I/O */
    } AssociatedIrp;
    LIST_ENTRY ThreadListEntry;     /* 0x20 */
    IO_STATUS_BLOCK IoStatus;       /* 0x30 */
    KPROCESSOR_MODE RequestorMode;  /* 0x40: 1 = UserMode */
    BOOLEAN PendingReturned;        /* 0x41 */
    CHAR StackCount;                /* 0x42 */
    CHAR CurrentLocation;           /* 0x43 */
    BOOLEAN Cancel;                 /* 0x44 */
    KIRQL CancelIrql;               /* 0x45 */
    CCHAR ApcEnvironment;
    UCHAR AllocationFlags;
    PIO_STATUS_BLOCK UserIosb;      /* 0x48 */
    PVOID UserEvent;                /* 0x50 */
    UCHAR Overlay[0x10];            /* 0x58 */
    PVOID CancelRoutine;            /* 0x68 */
    PVOID UserBuffer;               /* 0x70: neither I/O: the caller's own address */
    union {
        struct {
            PVOID DriverContext[4]; /* 0x78 */
            PVOID Thread;           /* 0x98 */
            PCHAR AuxiliaryBuffer;  /* 0xa0 */
            LIST_ENTRY ListEntry;   /* 0xa8 */
            PIO_STACK_LOCATION CurrentStackLocation;   /* 0xb8 */
            PFILE_OBJECT OriginalFileObject;           /* 0xc0 */
        } Overlay;
        UCHAR Reserved[0x58];
    } Tail;                         /* 0x78; the stack locations follow at 0xd0 */
};

_Static_assert(sizeof(KDPC) == 0x40, "KDPC");
_Static_assert(__builtin_offsetof(DRIVER_OBJECT, MajorFunction) == 0x70, "DRIVER_OBJECT");
_Static_assert(sizeof(DRIVER_OBJECT) == 0x150, "DRIVER_OBJECT");
_Static_assert(__builtin_offsetof(DEVICE_OBJECT, Flags) == 0x30, "DEVICE_OBJECT");
_Static_assert(__builtin_offsetof(DEVICE_OBJECT, Dpc) == 0xc8, "DEVICE_OBJECT");
_Static_assert(sizeof(DEVICE_OBJECT) == 0x148, "DEVICE_OBJECT");
_Static_assert(sizeof(MDL) == 0x30, "MDL");
_Static_assert(sizeof(FILE_OBJECT) == 0xd8, "FILE_OBJECT");
_Static_assert(__builtin_offsetof(IRP, UserBuffer) == 0x70, "IRP");
_Static_assert(__builtin_offsetof(IRP, Tail.Overlay.CurrentStackLocation) == 0xb8, "IRP");
_Static_assert(sizeof(IRP) == 0xd0, "IRP");
_Static_assert(sizeof(IO_STACK_LOCATION) == 0x48, "IO_STACK_LOCATION");
_Static_assert(__builtin_offsetof(IO_STACK_LOCATION, DeviceObject) == 0x28, "IO_STACK_LOCATION");

/* I/O control codes (devioctl.h): device type, function, transfer method, access. */
#define CTL_CODE(DeviceType, Function, Method, Access) \
    (((DeviceType) << 16) | ((Access) << 14) | ((Function) << 2) | (Method))
#define METHOD_BUFFERED   0     /* one system buffer: input copied in, output copied back */
#define METHOD_IN_DIRECT  1     /* input buffered; the output buffer through an MDL */
#define METHOD_OUT_DIRECT 2
#define METHOD_NEITHER    3     /* raw user addresses: Type3InputBuffer and Irp->UserBuffer */
#define FILE_ANY_ACCESS   0

static inline PIO_STACK_LOCATION IoGetCurrentIrpStackLocation(PIRP Irp)
{
    return Irp->Tail.Overlay.CurrentStackLocation;
}

/* -- pool --------------------------------------------------------------------------- */

typedef enum _POOL_TYPE {
    NonPagedPool = 0,       /* resident, executable (as before Windows 8) */
    PagedPool = 1,          /* may be paged out: not for use at DISPATCH_LEVEL or above */
    NonPagedPoolNx = 512,   /* resident, no-execute */
} POOL_TYPE;

/* A pool tag is four characters, stored little-endian: DDK_TAG('H','e','l','o'). */
#define DDK_TAG(a, b, c, d) \
    ((ULONG)(UCHAR)(a) | (ULONG)(UCHAR)(b) << 8 | (ULONG)(UCHAR)(c) << 16 | (ULONG)(UCHAR)(d) << 24)

/* -- bug check codes (the ones the guest drivers provoke or raise) ------------------ */

#define PAGE_FAULT_IN_NONPAGED_AREA        0x00000050
#define ATTEMPTED_WRITE_TO_READONLY_MEMORY 0x000000BE
#define MANUALLY_INITIATED_CRASH           0x000000E2

/* -- kernel exports ------------------------------------------------------------------ */

/*
 * Prints to the console (the kernel debugger's output on Windows). The
 * executive formats %s %d %u %x %X %p %c %% with the l/ll/z sizes, a width
 * and '0' padding; %p prints 16 upper-case hex digits. Returns 0.
 */
ULONG NTAPI DbgPrint(PCSTR Format, ...) DDK_PRINTF_LIKE(1, 2);

/* Stops the whole machine with a bug check (blue screen); never returns. */
DDK_NORETURN VOID NTAPI KeBugCheckEx(ULONG BugCheckCode, ULONG_PTR BugCheckParameter1,
                                     ULONG_PTR BugCheckParameter2,
                                     ULONG_PTR BugCheckParameter3,
                                     ULONG_PTR BugCheckParameter4);

/* NumberOfBytes from the given pool, or NULL. Free with the same tag. */
PVOID NTAPI ExAllocatePoolWithTag(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag);
/* A pointer that is not a live allocation (or a wrong tag) bug-checks 0xC2 BAD_POOL_CALLER. */
VOID NTAPI ExFreePoolWithTag(PVOID P, ULONG Tag);

/* The process whose address space is current; 0 in the system context (DriverEntry). */
HANDLE NTAPI PsGetCurrentProcessId(VOID);

KIRQL NTAPI KeGetCurrentIrql(VOID);

/* -- the I/O manager ------------------------------------------------------------------ */

#define IO_NO_INCREMENT 0
#define STATUS_PENDING ((NTSTATUS)0x00000103L)

/* A device named DeviceName (e.g. L"\\Device\\Buffered"), in the driver's device list. */
NTSTATUS NTAPI IoCreateDevice(PDRIVER_OBJECT DriverObject, ULONG DeviceExtensionSize,
                              PUNICODE_STRING DeviceName, ULONG DeviceType,
                              ULONG DeviceCharacteristics, BOOLEAN Exclusive,
                              PDEVICE_OBJECT *DeviceObject);
VOID NTAPI IoDeleteDevice(PDEVICE_OBJECT DeviceObject);
/* The request is done: Irp->IoStatus says how. Completing an IRP twice is bug check 0x44. */
VOID NTAPI IoCompleteRequest(PIRP Irp, CHAR PriorityBoost);
/* The same routine under the name wdm.h's IoCompleteRequest macro calls. */
VOID NTAPI IofCompleteRequest(PIRP Irp, CHAR PriorityBoost);
/* \DosDevices\NAME (which an app opens as \??\NAME) stands for DeviceName from now on. */
NTSTATUS NTAPI IoCreateSymbolicLink(PUNICODE_STRING SymbolicLinkName,
                                    PUNICODE_STRING DeviceName);
NTSTATUS NTAPI IoDeleteSymbolicLink(PUNICODE_STRING SymbolicLinkName);
/* The MDL's frames mapped at a kernel address (the same frames the caller's pages use). */
PVOID NTAPI MmGetSystemAddressForMdlSafe(PMDL Mdl, ULONG Priority);
VOID NTAPI RtlInitUnicodeString(PUNICODE_STRING DestinationString, PCWSTR SourceString);

/* -- IRQL and user buffers ----------------------------------------------------------- */

KIRQL NTAPI KfRaiseIrql(KIRQL NewIrql);
VOID NTAPI KeLowerIrql(KIRQL NewIrql);
#define KeRaiseIrql(NewIrql, OldIrql) (*(OldIrql) = KfRaiseIrql(NewIrql))
#define STATUS_ACCESS_VIOLATION ((NTSTATUS)0xC0000005L)

/*
 * Windows' probes raise an exception for __try/__except, which freestanding C does
 * not have: these return STATUS_ACCESS_VIOLATION instead (or
 * STATUS_DATATYPE_MISALIGNMENT). ProbeForWrite also checks the pages are writable.
 */
NTSTATUS NTAPI ProbeForRead(const VOID *Address, SIZE_T Length, ULONG Alignment);
NTSTATUS NTAPI ProbeForWrite(VOID *Address, SIZE_T Length, ULONG Alignment);
/* Guarded copies to and from the CURRENT process's user memory (a try/except in C). */
NTSTATUS NTAPI MmCopyToUser(VOID *UserDestination, const VOID *Source, SIZE_T Length);
NTSTATUS NTAPI MmCopyFromUser(VOID *Destination, const VOID *UserSource, SIZE_T Length);

/* -- interrupts and DPCs ------------------------------------------------------------- */

typedef struct _KINTERRUPT *PKINTERRUPT;
typedef BOOLEAN NTAPI KSERVICE_ROUTINE(PKINTERRUPT Interrupt, PVOID ServiceContext);
typedef VOID NTAPI IO_DPC_ROUTINE(PKDPC Dpc, PDEVICE_OBJECT DeviceObject, PIRP Irp,
                                  PVOID Context);
#define DISPATCH_LEVEL 2

/* The ISR runs at the device's IRQL, in whatever thread the interrupt arrives in. */
NTSTATUS NTAPI IoConnectInterrupt(PKINTERRUPT *InterruptObject,
                                  KSERVICE_ROUTINE *ServiceRoutine, PVOID ServiceContext,
                                  PVOID SpinLock, ULONG Vector, KIRQL Irql,
                                  KIRQL SynchronizeIrql, ULONG InterruptMode,
                                  BOOLEAN ShareVector, ULONG_PTR ProcessorEnableMask,
                                  BOOLEAN FloatingSave);
VOID NTAPI IoInitializeDpcRequest(PDEVICE_OBJECT DeviceObject, IO_DPC_ROUTINE *DpcRoutine);
/* Queue the device's DPC (DeviceObject->Dpc): it runs at DISPATCH_LEVEL once the ISR
 * returns, as DpcRoutine(&DeviceObject->Dpc, DeviceObject, Irp, Context). */
VOID NTAPI IoRequestDpc(PDEVICE_OBJECT DeviceObject, PIRP Irp, PVOID Context);

/* The request will complete later (the dispatch routine then returns STATUS_PENDING). */
static inline VOID IoMarkIrpPending(PIRP Irp)
{
    Irp->Tail.Overlay.CurrentStackLocation->Control |= 0x01;       /* SL_PENDING_RETURNED */
}

/* Port I/O (ring 0): the slow device answers at ports 0x300-0x30F, interrupt vector 0x31. */
static inline VOID WRITE_PORT_ULONG(USHORT Port, ULONG Value)
{
    __asm__ volatile("outl %0, %w1" : : "a"(Value), "Nd"(Port));
}

static inline ULONG READ_PORT_ULONG(USHORT Port)
{
    ULONG value;

    __asm__ volatile("inl %w1, %0" : "=a"(value) : "Nd"(Port));
    return value;
}

/* -- the driver's side --------------------------------------------------------------- */

/*
 * The entry point the loader calls (by name) once the image is mapped and
 * relocated, at ring 0 and PASSIVE_LEVEL. A failure status unloads the
 * driver. Each driver defines it as
 *     NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
 * (the declaration here makes a definition without NTAPI a compile error).
 */
typedef NTSTATUS NTAPI DRIVER_INITIALIZE(PDRIVER_OBJECT DriverObject,
                                         PUNICODE_STRING RegistryPath);
typedef DRIVER_INITIALIZE *PDRIVER_INITIALIZE;
DDK_EXPORT DRIVER_INITIALIZE DriverEntry;

/* -- memory helpers (no C library in the kernel) -------------------------------------- */

/*
 * Byte copies and fills with `rep movsb` / `rep stosb`: general registers
 * only, and nothing gcc could turn back into a call to an external memcpy
 * (which would become an import the kernel does not have). gcc may still
 * emit calls to memcpy/memset for large structure copies; the driver build
 * test would then see an unexpected import.
 */
static inline void *memcpy(void *dst, const void *src, SIZE_T n)
{
    void *d = dst;

    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
    return dst;
}

static inline void *memset(void *dst, int c, SIZE_T n)
{
    void *d = dst;

    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return dst;
}

#define RtlCopyMemory(Destination, Source, Length) memcpy((Destination), (Source), (Length))
#define RtlFillMemory(Destination, Length, Fill)   memset((Destination), (Fill), (Length))
#define RtlZeroMemory(Destination, Length)         memset((Destination), 0, (Length))

#endif /* DDK_NTDDK_H */
