/*
 * vmtest MODE: the virtual-memory services (docs/abi.md, "Virtual memory")
 * and the page faults behind them, one mode per run.
 *
 * Modes that end in a fault print what they are about to do, then do it; if
 * the fault does not happen they print a line ending in "?!" and exit 1.
 * The other modes print their results and exit 0.
 */
#include <stdint.h>

#include <emu/lib.h>

#define PAGE 4096UL
#define MEM_TOP_DOWN 0x100000
#define HIGHEST_USER_ADDRESS 0x00007FFFFFFEFFFFULL
#define KERNEL_HALF 0xFFFF800000000000ULL

typedef int (*code_fn)(void);

/* mov eax, imm32; ret */
static void put_return(unsigned char *p, uint32_t value)
{
    p[0] = 0xB8;
    memcpy(p + 1, &value, sizeof value);
    p[5] = 0xC3;
}

/* Reserves and commits `size` bytes anywhere with `protect`; exits on failure. */
static unsigned char *commit(size_t size, uint32_t protect)
{
    void *base = NULL;
    NTSTATUS status = NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT, protect);

    if (!NT_SUCCESS(status)) {
        printf("NtAllocateVirtualMemory(protect 0x%x) failed: 0x%08x?!\n", (unsigned)protect,
               (unsigned)status);
        exit(1);
    }
    return base;
}

/* NtAllocateVirtualMemory at `base` (0: anywhere); returns the status only. */
static NTSTATUS try_alloc(uintptr_t base, size_t size, uint32_t type, uint32_t protect)
{
    void *at = (void *)base;

    return NtAllocateVirtualMemory(&at, &size, type, protect);
}

static NTSTATUS try_free(uintptr_t base, size_t size, uint32_t type)
{
    void *at = (void *)base;

    return NtFreeVirtualMemory(&at, &size, type);
}

static NTSTATUS try_protect(uintptr_t base, size_t size, uint32_t protect, uint32_t *old)
{
    void *at = (void *)base;

    return NtProtectVirtualMemory(&at, &size, protect, old);
}

static void show(const char *label, NTSTATUS status)
{
    printf("%s: 0x%08x\n", label, (unsigned)status);
}

/* Prints the MEMORY_BASIC_INFORMATION of `address`. */
static void region(const char *label, const void *address)
{
    MEMORY_BASIC_INFORMATION mbi;
    NTSTATUS status = NtQueryVirtualMemory(address, &mbi);

    if (!NT_SUCCESS(status)) {
        show(label, status);
        return;
    }
    printf("%s: base %p allocation %p/0x%x size 0x%llx state 0x%x protect 0x%x type 0x%x\n",
           label, mbi.BaseAddress, mbi.AllocationBase, (unsigned)mbi.AllocationProtect,
           (unsigned long long)mbi.RegionSize, (unsigned)mbi.State, (unsigned)mbi.Protect,
           (unsigned)mbi.Type);
}

static void must(const char *what, NTSTATUS status)
{
    if (!NT_SUCCESS(status)) {
        printf("%s: 0x%08x?!\n", what, (unsigned)status);
        exit(1);
    }
}

/* ---- modes that end normally ---- */

/* Commits 16 pages, reads 8, writes 8: frames appear only at the touches. */
static int demand_zero(void)
{
    enum { PAGES = 16 };
    volatile unsigned char *p = commit(PAGES * PAGE, PAGE_READWRITE);
    unsigned long sum = 0;

    printf("committed %d pages at %p\n", PAGES, (void *)p);
    for (int i = 0; i < PAGES / 2; i++)
        sum += p[i * PAGE] + p[i * PAGE + PAGE - 1];
    printf("read %d pages: sum %lu\n", PAGES / 2, sum);
    for (int i = PAGES / 2; i < PAGES; i++)
        p[i * PAGE + 8] = (unsigned char)i;
    printf("wrote %d pages\n", PAGES / 2);
    return 0;
}

static const struct {
    const char *name;
    uint32_t value;
} protections[] = {
    {"PAGE_NOACCESS", PAGE_NOACCESS},
    {"PAGE_READONLY", PAGE_READONLY},
    {"PAGE_READWRITE", PAGE_READWRITE},
    {"PAGE_EXECUTE", PAGE_EXECUTE},
    {"PAGE_EXECUTE_READ", PAGE_EXECUTE_READ},
    {"PAGE_EXECUTE_READWRITE", PAGE_EXECUTE_READWRITE},
    {"PAGE_READWRITE|PAGE_GUARD", PAGE_READWRITE | PAGE_GUARD},
    {"PAGE_EXECUTE_READ|PAGE_GUARD", PAGE_EXECUTE_READ | PAGE_GUARD},
};

static const struct {
    const char *name;
    uint32_t value;
} bad_protections[] = {
    {"0", 0},
    {"READONLY|READWRITE", PAGE_READONLY | PAGE_READWRITE},
    {"PAGE_WRITECOPY", 0x08},
    {"PAGE_EXECUTE_WRITECOPY", 0x80},
    {"PAGE_NOACCESS|PAGE_GUARD", PAGE_NOACCESS | PAGE_GUARD},
    {"PAGE_READWRITE|PAGE_NOCACHE", PAGE_READWRITE | 0x200},
    {"0x800", 0x800},
};

/* Every protection: commit a page with it, query it, and use it as far as it allows. */
static int protections_mode(void)
{
    for (size_t i = 0; i < sizeof protections / sizeof protections[0]; i++) {
        unsigned char *p = commit(PAGE, protections[i].value);

        region(protections[i].name, p);
    }
    for (size_t i = 0; i < sizeof bad_protections / sizeof bad_protections[0]; i++) {
        char label[64];

        snprintf(label, sizeof label, "refused %s", bad_protections[i].name);
        show(label, try_alloc(0, PAGE, MEM_RESERVE | MEM_COMMIT, bad_protections[i].value));
    }
    volatile unsigned char *ro = commit(PAGE, PAGE_READONLY);
    volatile unsigned char *x = commit(PAGE, PAGE_EXECUTE);
    volatile unsigned char *rx = commit(PAGE, PAGE_EXECUTE_READ);
    printf("read PAGE_READONLY: %u, PAGE_EXECUTE: %u, PAGE_EXECUTE_READ: %u\n", ro[0], x[0],
           rx[0]);
    volatile unsigned char *rw = commit(PAGE, PAGE_READWRITE);
    rw[100] = 7;
    printf("PAGE_READWRITE holds %u\n", rw[100]);
    unsigned char *rwx = commit(PAGE, PAGE_EXECUTE_READWRITE);
    put_return(rwx, 42);
    printf("PAGE_EXECUTE_READWRITE code returned %d\n", ((code_fn)rwx)());
    /* Write code into a read-write page, then make it execute-read: the JIT pattern. */
    unsigned char *jit = commit(PAGE, PAGE_READWRITE);
    uint32_t old = 0;
    put_return(jit, 7);
    must("NtProtectVirtualMemory", try_protect((uintptr_t)jit, PAGE, PAGE_EXECUTE_READ, &old));
    printf("protected PAGE_EXECUTE_READ (old 0x%x): code returned %d\n", (unsigned)old,
           ((code_fn)jit)());
    /* PAGE_NOACCESS after a touch keeps the data: readable again once accessible. */
    volatile unsigned char *keep = commit(PAGE, PAGE_READWRITE);
    keep[5] = 55;
    must("NtProtectVirtualMemory", try_protect((uintptr_t)keep, PAGE, PAGE_NOACCESS, &old));
    region("made PAGE_NOACCESS", (const void *)keep);
    must("NtProtectVirtualMemory", try_protect((uintptr_t)keep, PAGE, PAGE_READONLY, &old));
    printf("PAGE_NOACCESS (old 0x%x) then PAGE_READONLY: still holds %u\n", (unsigned)old,
           keep[5]);
    /* And one left PAGE_NOACCESS after a touch: its frame must still be freed at exit. */
    volatile unsigned char *left = commit(PAGE, PAGE_READWRITE);
    left[0] = 1;
    must("NtProtectVirtualMemory", try_protect((uintptr_t)left, PAGE, PAGE_NOACCESS, &old));
    puts("ok");
    return 0;
}

/* A reservation with pages committed inside it, queried region by region. */
static int query_mode(void)
{
    int local = 0;
    region("null", NULL);
    region("image", (const void *)query_mode);
    region("stack", &local);
    unsigned char *base = NULL;
    size_t size = 16 * PAGE;
    must("reserve", NtAllocateVirtualMemory((void **)&base, &size, MEM_RESERVE, PAGE_READWRITE));
    void *middle = base + 4 * PAGE;
    size = 2 * PAGE;
    must("commit", NtAllocateVirtualMemory(&middle, &size, MEM_COMMIT, PAGE_READONLY));
    region("reserved", base);
    region("committed", base + 5 * PAGE);
    region("after", base + 6 * PAGE);
    region("beyond", base + 16 * PAGE);
    void *top = NULL;
    size = PAGE;
    must("top-down", NtAllocateVirtualMemory(&top, &size, MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN,
                                             PAGE_READWRITE));
    region("top-down", top);
    region("highest", (const void *)HIGHEST_USER_ADDRESS);
    MEMORY_BASIC_INFORMATION mbi;          /* a good buffer: the address is what is refused */
    show("kernel", NtQueryVirtualMemory((const void *)KERNEL_HALF, &mbi));
    return 0;
}

/* The first touch of a guard page through a system service: the status comes back once. */
static int guard_once(void)
{
    unsigned char *p = commit(PAGE, PAGE_READWRITE | PAGE_GUARD);
    MEMORY_BASIC_INFORMATION *in_guard = (MEMORY_BASIC_INFORMATION *)p;

    region("guard page", p);
    show("query into the guard page", NtQueryVirtualMemory(p, in_guard));
    show("query into it again", NtQueryVirtualMemory(p, in_guard));
    printf("the page now says protect 0x%x\n", (unsigned)in_guard->Protect);
    p[PAGE - 1] = 1;
    puts("ok");
    return 0;
}

/* Bad inputs: each status is printed; nothing faults. */
static int limits(void)
{
    static const char read_only_pointer[8];
    void *base = NULL;
    size_t size = 16 * PAGE;
    uintptr_t r;

    show("below 64K", try_alloc(0x1000, PAGE, MEM_RESERVE, PAGE_READWRITE));
    show("below 64K, rounded", try_alloc(0xFFFF, PAGE, MEM_RESERVE, PAGE_READWRITE));
    show("commit below 64K", try_alloc(0x8000, PAGE, MEM_COMMIT, PAGE_READWRITE));
    show("above highest", try_alloc(0x7FFFFFFF0000ULL, PAGE, MEM_RESERVE, PAGE_READWRITE));
    show("kernel half", try_alloc(KERNEL_HALF, PAGE, MEM_RESERVE, PAGE_READWRITE));
    show("past highest", try_alloc(0x7FFFFFFE0000ULL, 0x20000, MEM_RESERVE, PAGE_READWRITE));
    show("size 0", try_alloc(0, 0, MEM_RESERVE, PAGE_READWRITE));
    show("larger than user space", try_alloc(0, 1ULL << 47, MEM_RESERVE, PAGE_READWRITE));
    show("no gap that large", try_alloc(0, 0x7FFFC0000000ULL, MEM_RESERVE, PAGE_READWRITE));
    show("type 0", try_alloc(0, PAGE, 0, PAGE_READWRITE));
    show("type MEM_DECOMMIT", try_alloc(0, PAGE, MEM_DECOMMIT, PAGE_READWRITE));
    show("protect 0", try_alloc(0, PAGE, MEM_RESERVE, 0));

    must("reserve", NtAllocateVirtualMemory(&base, &size, MEM_RESERVE, PAGE_READWRITE));
    r = (uintptr_t)base;
    printf("reserved %p, %zu bytes\n", base, size);
    show("overlapping reserve", try_alloc(r + PAGE, PAGE, MEM_RESERVE, PAGE_READWRITE));
    show("reserve over the image", try_alloc(0x400000, PAGE, MEM_RESERVE, PAGE_READWRITE));
    show("commit in free memory", try_alloc(r + 0x100000, PAGE, MEM_COMMIT, PAGE_READWRITE));
    show("commit past the reservation", try_alloc(r + 15 * PAGE, 2 * PAGE, MEM_COMMIT,
                                                  PAGE_READWRITE));
    show("commit in the image", try_alloc(0x400000, PAGE, MEM_COMMIT, PAGE_READWRITE));
    show("protect reserved", try_protect(r, PAGE, PAGE_READONLY, &(uint32_t){0}));
    show("protect free", try_protect(r + 0x100000, PAGE, PAGE_READONLY, &(uint32_t){0}));
    show("protect size 0", try_protect(r, 0, PAGE_READONLY, &(uint32_t){0}));
    show("protect WRITECOPY", try_protect(0x400000, PAGE, 0x08, &(uint32_t){0}));
    show("protect across two allocations", try_protect(0x400000, 0x400000, PAGE_READONLY,
                                                       &(uint32_t){0}));
    show("free nothing", try_free(r + 0x100000, 0, MEM_RELEASE));
    show("release not at base", try_free(r + PAGE, 0, MEM_RELEASE));
    show("release with a size", try_free(r, PAGE, MEM_RELEASE));
    show("decommit past the end", try_free(r, 17 * PAGE, MEM_DECOMMIT));
    show("free the image", try_free(0x400000, 0, MEM_RELEASE));
    show("free type 0", try_free(r, 0, 0));
    show("free type both", try_free(r, 0, MEM_DECOMMIT | MEM_RELEASE));
    show("decommit reserved", try_free(r, PAGE, MEM_DECOMMIT));
    show("release", try_free(r, 0, MEM_RELEASE));
    show("release again", try_free(r, 0, MEM_RELEASE));
    MEMORY_BASIC_INFORMATION mbi;          /* a good buffer: the address is what is refused */
    show("query kernel half", NtQueryVirtualMemory((const void *)KERNEL_HALF, &mbi));
    show("query above highest", NtQueryVirtualMemory((const void *)0x7FFFFFFF0000ULL, &mbi));
    show("base pointer NULL", NtAllocateVirtualMemory(NULL, &size, MEM_RESERVE, PAGE_READWRITE));
    show("size pointer in the kernel",
         NtAllocateVirtualMemory(&base, (size_t *)KERNEL_HALF, MEM_RESERVE, PAGE_READWRITE));
    show("base pointer read-only",
         NtAllocateVirtualMemory((void **)read_only_pointer, &size, MEM_RESERVE, PAGE_READWRITE));
    show("query into NULL", NtQueryVirtualMemory(base, NULL));
    show("old-protect pointer NULL", try_protect(0x400000, PAGE, PAGE_READONLY, NULL));
    puts("still alive");
    return 0;
}

#define STACK_FRAME 4096

/* Recursion that touches each 4 KiB frame (not a tail call: the result is used after). */
__attribute__((noinline)) static unsigned long deep(unsigned long depth)
{
    volatile unsigned char frame[STACK_FRAME];

    frame[0] = (unsigned char)depth;
    frame[STACK_FRAME - 1] = (unsigned char)depth;
    if (depth == 0)
        return 0;
    return deep(depth - 1) + frame[0];
}

/* The main stack grows past its initially committed 256 KiB, page by page, and returns. */
static int stack_growth(void)
{
    enum { KIB = 640 };
    MEMORY_BASIC_INFORMATION mbi;

    printf("recursing %d KiB deep\n", KIB);
    unsigned long sum = deep(KIB * 1024 / (STACK_FRAME + 64));
    must("query", NtQueryVirtualMemory(&mbi, &mbi));
    printf("returned %lu; stack allocation %p\n", sum, mbi.AllocationBase);
    puts("ok");
    return 0;
}

/* ---- modes that end in a fault ---- */

static int read_at(const char *what, volatile unsigned char *p)
{
    printf("reading %s at %p\n", what, (void *)p);
    unsigned value = *p;
    printf("read %u?!\n", value);
    return 1;
}

static int write_at(const char *what, volatile unsigned char *p)
{
    printf("writing %s at %p\n", what, (void *)p);
    *p = 1;
    printf("write succeeded?!\n");
    return 1;
}

static int call_at(const char *what, unsigned char *p)
{
    printf("calling %s at %p\n", what, (void *)p);
    printf("returned %d?!\n", ((code_fn)p)());
    return 1;
}

static int fault_noaccess(void)
{
    return read_at("PAGE_NOACCESS", commit(PAGE, PAGE_NOACCESS));
}

static int fault_readonly(void)
{
    return write_at("PAGE_READONLY", commit(PAGE, PAGE_READONLY));
}

static int fault_execute(void)
{
    return write_at("PAGE_EXECUTE_READ", commit(PAGE, PAGE_EXECUTE_READ));
}

static int fault_noexec(void)
{
    unsigned char *p = commit(PAGE, PAGE_READWRITE);

    put_return(p, 1);
    return call_at("PAGE_READWRITE", p);
}

static int fault_reserved(void)
{
    void *base = NULL;
    size_t size = 16 * PAGE;

    must("reserve", NtAllocateVirtualMemory(&base, &size, MEM_RESERVE, PAGE_READWRITE));
    return read_at("reserved, not committed", (unsigned char *)base + PAGE);
}

static int fault_decommit(void)
{
    volatile unsigned char *p = commit(2 * PAGE, PAGE_READWRITE);
    void *second = (void *)(p + PAGE);
    size_t size = PAGE;

    p[0] = p[PAGE] = 9;
    must("decommit", NtFreeVirtualMemory(&second, &size, MEM_DECOMMIT));
    printf("decommitted %p: the page before still holds %u\n", second, p[0]);
    return read_at("decommitted", p + PAGE);
}

static int fault_release(void)
{
    volatile unsigned char *p = commit(PAGE, PAGE_READWRITE);
    void *base = (void *)p;
    size_t size = 0;

    p[0] = 9;
    must("release", NtFreeVirtualMemory(&base, &size, MEM_RELEASE));
    printf("released %llu bytes\n", (unsigned long long)size);
    return read_at("released", p);
}

static int fault_protect(void)
{
    volatile unsigned char *p = commit(PAGE, PAGE_READWRITE);
    uint32_t old = 0;

    p[0] = 'x';
    must("protect", try_protect((uintptr_t)p, PAGE, PAGE_READONLY, &old));
    printf("PAGE_READONLY now (old 0x%x), still reads '%c'\n", (unsigned)old, p[0]);
    return write_at("a page made read-only", p);
}

static int fault_guard(void)
{
    return read_at("a guard page", commit(PAGE, PAGE_READWRITE | PAGE_GUARD));
}

static const struct {
    const char *name;
    int (*run)(void);
} modes[] = {
    {"demandzero", demand_zero},
    {"protections", protections_mode},
    {"guardonce", guard_once},
    {"limits", limits},
    {"query", query_mode},
    {"stack", stack_growth},
    {"noaccess", fault_noaccess},
    {"readonly", fault_readonly},
    {"execute", fault_execute},
    {"noexec", fault_noexec},
    {"reserved", fault_reserved},
    {"decommit", fault_decommit},
    {"release", fault_release},
    {"protect", fault_protect},
    {"guard", fault_guard},
};

int main(int argc, char **argv)
{
    for (size_t i = 0; argc == 2 && i < sizeof modes / sizeof modes[0]; i++)
        if (strcmp(argv[1], modes[i].name) == 0)
            return modes[i].run();
    printf("usage: vmtest ");
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        printf("%s%s", i ? "|" : "", modes[i].name);
    printf("\n");
    return 2;
}
