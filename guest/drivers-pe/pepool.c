/*
 * pepool.sys: the pool routines, as a Windows driver calls them. It includes only the WDK's
 * <ntddk.h>. ExAllocatePool2 (Windows 10 2004) is newer than the import library, so the
 * driver finds it the way drivers that also run on older Windows do: through
 * MmGetSystemRoutineAddress, with its prototype and POOL_FLAGS from the current WDK.
 *
 * Each line it prints says what a call returned:
 *   pepool.sys: NonPagedPoolNx 0x<address> ... (ExAllocatePoolWithTag, each pool type)
 *   pepool.sys: zeroed yes ...
 * then every block is freed with its own tag. tests/nt/test_pe_exports_io.py reads them.
 */
#include <ntddk.h>

typedef ULONG64 POOL_FLAGS;
#define POOL_FLAG_UNINITIALIZED     0x0000000000000002ULL
#define POOL_FLAG_CACHE_ALIGNED     0x0000000000000008ULL
#define POOL_FLAG_RAISE_ON_FAILURE  0x0000000000000020ULL
#define POOL_FLAG_NON_PAGED         0x0000000000000040ULL
#define POOL_FLAG_NON_PAGED_EXECUTE 0x0000000000000080ULL
#define POOL_FLAG_PAGED             0x0000000000000100ULL
#define POOL_FLAG_SESSION           0x0000000000000004ULL
#define POOL_FLAG_OPTIONAL_UNKNOWN  0x0000000800000000ULL   /* high half: optional */
typedef PVOID (NTAPI *EX_ALLOCATE_POOL2)(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);

#define TAG 'looP'                 /* "Pool" in a pool dump */

static int Zeroed(const volatile UCHAR *p, SIZE_T n)
{
    for (SIZE_T i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static void Fill(volatile UCHAR *p, SIZE_T n)
{
    for (SIZE_T i = 0; i < n; i++)
        p[i] = 0xA5;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    EX_ALLOCATE_POOL2 allocate2;
    PVOID nx, np, paged, big, small, legacy, p2[8];

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    /* The nonpaged ones first: a test runs this at DISPATCH_LEVEL, where PagedPool is
       refused (bug check 0xC2, 8). */
    nx = ExAllocatePoolWithTag(NonPagedPoolNx, 24, TAG);
    np = ExAllocatePoolWithTag(NonPagedPool, 24, TAG);
    DbgPrint("pepool.sys: NonPagedPoolNx %p NonPagedPool %p\n", nx, np);
    paged = ExAllocatePoolWithTag(PagedPool, 100, TAG);
    DbgPrint("pepool.sys: PagedPool %p\n", paged);
    Fill(nx, 24);
    big = ExAllocatePoolWithTag(NonPagedPoolNx, 0x1800, TAG);
    small = ExAllocatePoolWithTag(NonPagedPoolNx, 0x100, TAG);
    DbgPrint("pepool.sys: 0x1800 bytes at page offset %x, zeroed %d; 0x100 bytes in one page %d\n",
             (ULONG)((ULONG_PTR)big & 0xFFF), Zeroed(big, 0x1800),
             ((ULONG_PTR)small & 0xFFF) + 0x100 <= 0x1000);
    DbgPrint("pepool.sys: bad pool type %p, too big %p\n",
             ExAllocatePoolWithTag((POOL_TYPE)3, 16, TAG),
             ExAllocatePoolWithTag(NonPagedPoolNx, (SIZE_T)1 << 30, TAG));
    legacy = ExAllocatePool(NonPagedPoolNx, 16);
    DbgPrint("pepool.sys: ExAllocatePool %s\n", legacy ? "ok" : "NULL");

    RtlInitUnicodeString(&name, L"ExAllocatePool2");
    allocate2 = (EX_ALLOCATE_POOL2)MmGetSystemRoutineAddress(&name);
    p2[0] = allocate2(POOL_FLAG_NON_PAGED, 64, TAG);
    p2[1] = allocate2(POOL_FLAG_PAGED | POOL_FLAG_UNINITIALIZED, 64, TAG);
    p2[2] = allocate2(POOL_FLAG_NON_PAGED_EXECUTE, 64, TAG);
    p2[3] = allocate2(POOL_FLAG_NON_PAGED | POOL_FLAG_CACHE_ALIGNED, 8, TAG);
    p2[4] = allocate2(POOL_FLAG_NON_PAGED | POOL_FLAG_OPTIONAL_UNKNOWN, 8, TAG);
    DbgPrint("pepool.sys: ExAllocatePool2 %p %p %p zeroed %d, cache-aligned %d, optional %s\n",
             p2[0], p2[1], p2[2], Zeroed(p2[0], 64), ((ULONG_PTR)p2[3] & 63) == 0,
             p2[4] ? "ok" : "NULL");
    DbgPrint("pepool.sys: ExAllocatePool2 tag 0 %p, two pools %p, no pool %p, session %p, "
             "too big %p\n",
             allocate2(POOL_FLAG_NON_PAGED, 8, 0),
             allocate2(POOL_FLAG_NON_PAGED | POOL_FLAG_PAGED, 8, TAG),
             allocate2(POOL_FLAG_CACHE_ALIGNED, 8, TAG),
             allocate2(POOL_FLAG_NON_PAGED | POOL_FLAG_SESSION, 8, TAG),
             allocate2(POOL_FLAG_NON_PAGED, (SIZE_T)1 << 30, TAG));
    RtlInitUnicodeString(&name, L"NoSuchRoutine");
    DbgPrint("pepool.sys: MmGetSystemRoutineAddress(NoSuchRoutine) %p\n",
             MmGetSystemRoutineAddress(&name));

    ExFreePoolWithTag(nx, TAG);
    ExFreePoolWithTag(np, TAG);
    ExFreePoolWithTag(paged, TAG);
    ExFreePoolWithTag(big, 0);          /* a tag of 0 matches any block */
    ExFreePool(small);
    ExFreePool(legacy);
    for (int i = 0; i < 5; i++)
        ExFreePoolWithTag(p2[i], TAG);
    DbgPrint("pepool.sys: freed\n");
    return STATUS_SUCCESS;
}
