/*
 * native.c: the machine's two C fast paths, loaded with ctypes by native.py.
 *
 *  1. An STLB (second-level TLB) in front of the Python page walker.
 *     Unicorn, in UC_TLB_VIRTUAL mode, calls native_tlb_fill on every miss
 *     of QEMU's TLB. A hit in the STLB answers in C; a miss calls the walker
 *     (Python, through a ctypes callback) and keeps its answer.
 *
 *     Why this is correct: like a CPU's STLB it holds only translations the
 *     walker produced, and the walker sets A on every fill and grants WRITE
 *     only once D is set (Intel SDM Vol. 3A 4.8), so serving an entry again
 *     skips no architectural side effect. Like a CPU's, it goes stale when
 *     the paging structures change: the executive must flush (MOV CR3, CR4)
 *     or invalidate the page (INVLPG) after changing them (SDM Vol. 3A 4.10.4).
 *
 *  2. An instruction counter with a budget, in two forms: a UC_HOOK_BLOCK
 *     hook that charges each translated block's instruction count at its
 *     entry (learnt once per block), and a UC_HOOK_CODE hook, called before
 *     every instruction, for a step-sized budget (and as the reference the
 *     block counter is tested against). Both stop the run when the budget is
 *     spent; a budget that ends inside a block is finished by native.py (the
 *     block run again, cut there), unless a lone thread's quantum is renewed
 *     at that block's entry (renew_early). native.py documents the exact
 *     semantics.
 *
 * Nothing here includes Unicorn's headers, so the Makefile's one-line cc
 * command builds it; the few Unicorn 2.1.4 definitions used are below.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* From unicorn/unicorn.h (2.1.4). */
typedef struct uc_struct uc_engine;
typedef struct {
    uint64_t paddr;
    uint32_t perms;                     /* uc_prot, an enum */
} uc_tlb_entry;
enum { UC_MEM_READ = 16, UC_MEM_WRITE = 17, UC_MEM_FETCH = 18 };
enum { UC_PROT_READ = 1, UC_PROT_WRITE = 2, UC_PROT_EXEC = 4 };

typedef int (*reg_read_fn)(uc_engine *uc, int regid, void *value);
typedef int (*reg_write_fn)(uc_engine *uc, int regid, const void *value);
typedef int (*emu_stop_fn)(uc_engine *uc);
/* uc_context_save / uc_context_restore, and uc_context_reg_read / _write. */
typedef int (*context_move_fn)(uc_engine *uc, void *context);
typedef int (*context_reg_fn)(void *context, int regid, void *value);
/* The walker: returns paddr | perms | FILL_NO_CACHE, or a negative number to deny. */
typedef int64_t (*walker_fn)(uint64_t vpage, int32_t access, int32_t cpl,
                             uint64_t rflags);
/* The block learner: the number of instructions in the block of `size` bytes at `pc`. */
typedef int64_t (*learn_fn)(uint64_t pc, uint64_t size);
/* The instructions of the block charged last that come before `pc` (Python). */
typedef int64_t (*done_fn)(uint64_t pc);

#define FILL_PERMS     0x7              /* UC_PROT_READ | WRITE | EXEC */
#define FILL_NO_CACHE  0x8              /* serve once, keep out of the STLB */
#define FILL_GLOBAL    0x10             /* a global translation: shared by every PCID */
#define PAGE_MASK      (~(uint64_t)0xfff)
#define VA48_MASK      0x0000fffffffff000ull    /* a canonical vpage's bits 12-47 */
#define RFLAGS_AC      (1ull << 18)     /* Alignment Check: SMAP override at CPL < 3 */

/*
 * The privilege "mode" of an access. QEMU keeps one TLB per mmu_idx (user,
 * supervisor with SMAP enforced, supervisor without), but does not tell
 * the hook which one missed, so the hook reads CS and RFLAGS itself.
 */
enum mode { MODE_USER, MODE_KERNEL_AC0, MODE_KERNEL_AC1, MODE_COUNT };

/*
 * The STLB: 16K sets x 4 ways = 64K entries (1 MiB); a set is one 64-byte
 * cache line.
 *
 *   tag   = vpage[47:12] | owner << 48 | generation << 3 | mode << 1 | TAG_VALID
 *   value = paddr | perms                     (UC_PROT_* in bits 0-2)
 *
 * The owner is the PCID the translation was cached for (CR3[11:0] when
 * CR4.PCIDE = 1, else 0: SDM Vol. 3A 4.10.1), or OWNER_GLOBAL for a global
 * translation (PTE.G with CR4.PGE), which serves every PCID (4.10.2.4). A
 * canonical vpage is its bits 12-47 (bits 48-63 repeat bit 47), so the owner
 * takes bits 48-60; a non-canonical vpage is never looked up (the walker
 * answers it: #GP).
 *
 * Each owner has its own generation: flushing a PCID (a CR3 load without bit
 * 63, INVPCID single-context) gives it a fresh one, which makes its entries
 * miss without touching the megabyte. Generations come from one 9-bit clock,
 * so no owner ever gets back a value it held since the table was last
 * cleared; when the clock wraps, the table is cleared.
 *
 *   set   = (vpn + hash(vpn >> 14) + salt[mode]) mod 16K     vpn = vpage >> 12
 *
 * The set does not depend on the PCID, so every PCID's entries for a page
 * sit in one set per mode: dropping a page from every PCID costs what
 * dropping it from one does. Within an aligned 64 MiB region (16K pages)
 * consecutive pages take consecutive sets, so a sweep of 16,384 pages puts
 * one entry in every set: three modes use three ways and leave the fourth
 * for other pages (code, stack, tables). The hash of the region number
 * scatters regions, and the salt places a small working set apart in each
 * mode. Way 0 holds the most recently used entry of a set, the last way the
 * least.
 */
#define STLB_SETS  (1u << 14)
#define STLB_WAYS  4
#define TAG_VALID  1u
#define GENERATIONS 512u                /* tag bits 3-11 */
#define PCIDS      4096u                /* CR3[11:0] */
#define OWNER_GLOBAL PCIDS              /* the owner of global translations */
#define OWNER_SHIFT 48
#define STLB_BYTES (STLB_SETS * STLB_WAYS * sizeof(struct stlb_entry))

/*
 * Learnt blocks: (pc, size, space) -> instruction count. A translated block's
 * count never changes while its bytes do not; the executive forgets them all
 * (native_forget_blocks) whenever translated code is dropped or a new image
 * is loaded, as QEMU drops its translations.
 */
#define BCACHE_BITS 16
#define BCACHE_SIZE (1u << BCACHE_BITS)
#define BCACHE_LIMIT (BCACHE_SIZE / 2)  /* forget all once half full */

struct block_entry {
    uint64_t pc;
    uint64_t space;
    uint32_t size;
    uint32_t count;             /* 0: empty slot */
    const uint8_t *host;        /* the bytes in RAM, when the guest may rewrite them */
    uint8_t *copy;              /* ... and what they were when learnt */
    uint32_t always;            /* writable and hard to watch: learn at every entry */
    uint32_t inert;             /* its first instructions that no one can tell apart from
                                 * before or after a quantum end (renew_early) ... */
    uint16_t *inert_ends;       /* ... and where each ends: [i] is the offset of
                                 * instruction i + 2 (NULL when inert is 0) */
};

/* What the learner returns: the count, whether the guest may rewrite the block, and the
 * number of its inert first instructions (their ends in learn_ends: renew_early). */
#define LEARN_COUNT    0xffffffffull
#define LEARN_WRITABLE (1ull << 32)
#define LEARN_INERT_SHIFT 40
#define LEARN_INERT_MAX 1024            /* native.py _INERT_MAX: learn_ends' room */

struct stlb_entry {
    uint64_t tag;
    uint64_t value;
};

static const uint64_t mode_salt[MODE_COUNT] = { STLB_SETS / 2, 0, STLB_SETS / 4 };
#define GOLDEN  0x9e3779b97f4a7c15ull   /* Fibonacci hashing: 2^64 / phi */
#define SMALL_BUDGET 16                 /* native.py _SMALL_BUDGET: a step's budget */

/*
 * The fast table: learnt blocks whose next entry needs nothing but their count
 * charged (their bytes cannot change under them), direct-mapped by address, so
 * that native_block finds a block it has seen without the hash table's probe.
 */
#define FAST_BITS 10
#define FAST_SIZE (1u << FAST_BITS)
#define FAST_TABLES 4                   /* one per recent address space, LRU */
#define NO_FAST     FAST_TABLES         /* then one more, never written: all empty */

struct fast_slot {
    uint32_t size;
    uint32_t count;
    uint64_t pc;                /* FAST_EMPTY: an empty slot */
    struct block_entry *e;      /* its learnt block */
    uint64_t unused;            /* 32 bytes: a slot's address is one shift */
};

/* An empty slot's pc: not canonical, so no block starts there (a fetch from a
 * non-canonical address is a #GP, SDM Vol. 1 3.3.7.1, and the walker denies it),
 * and its size, 0, is no block's either. */
#define FAST_EMPTY (1ull << 63)

/* Empties `n` slots from `table`. */
static void fast_clear(struct fast_slot *table, size_t n)
{
    for (size_t i = 0; i < n; i++)
        table[i] = (struct fast_slot){ .pc = FAST_EMPTY };
}

/*
 * KiQuantumEnd with nothing else to run, made at a block entry without stopping the run:
 * the budget ends there (remaining 0, no stop asked for) and the dispatcher has armed it
 * (native.py NativeHooks.arm_renewal: every condition of ke_dispatcher._quantum_renewed
 * held when the run began, and every Python hook disarms it at its entry, since Python is
 * what can change them). The new budget is the one the dispatcher would give: the quantum,
 * or less when `limit` (--max-insns) comes first; KUSER_SHARED_DATA's three times are
 * written as kuser._write_times writes them at a dispatch.
 */
struct renewal {
    uint64_t armed;             /* non-zero: renew at the budget's end (Python sets 0: off) */
    uint64_t quantum;           /* the budget a renewal gives ... */
    uint64_t limit;             /* ... unless the instruction count reaches this first */
    uint64_t clock_offset;      /* the machine's clock = instructions + this (idle time) */
    uint64_t renewals;          /* renewals made (native.py reads it after a run) */
    uint8_t *kuser;             /* KUSER_SHARED_DATA's frame in host memory (NULL: none) */
    uint64_t interrupt_time_at; /* InterruptTime's offset (SystemTime follows at + 12) */
    uint64_t tick_count_at;     /* TickCount's offset */
    uint64_t system_time_at_boot;   /* SystemTime at clock 0 (100 ns units since 1601) */
    uint64_t time_increment;    /* 100 ns units per clock tick (KeQueryTimeIncrement) */
    uint64_t budget_end;        /* the count at which the current quantum truly ends ... */
    uint64_t stop_at;           /* ... and where a run must stop before that (a debugger's
                                 * step or snapshot: its cut; ~0: none). The budget spent
                                 * at a cut is no quantum's end: the run stops there. */
    uint64_t between_runs;      /* quantum ends made between two runs (native_quantum_end) */
};

/*
 * The preempted switch made at a block entry without stopping the run: the threads that
 * take turns at quantum ends (the one on the CPU, then the ready queue in its order), all
 * with saved contexts and nothing to do between their turns (ke_dispatcher._arm_ring).
 * At a budget's end the thread on the CPU goes to the back and the next one runs, as
 * ke_dispatcher._turn_over, run and _switch_to make it: its context saved, the next one
 * loaded, CR3 loaded if the process differs, TSS.RSP0, KUSER_SHARED_DATA's times, a new
 * quantum. Each switch is logged (struct ring_log) and native.py
 * gives the log to Python, which brings its books up to it before any Python code reads
 * them (NativeHooks.disarm and every Python callback).
 */
#define RING_THREADS 64
#define RING_LOG     1024               /* switches logged before Python takes them */

struct ring_thread {
    void *context;              /* its saved context (a uc_context, the thread's own) */
    uint64_t cr3;               /* its address space (CR3 bits 12 and up) */
    uint64_t cr3_value;         /* the MOV to CR3 that loads it: base | PCID (no bit 63) */
    uint32_t pcid;              /* ... its PCID ... */
    uint32_t flush;             /* ... and whether that load flushes it (no PCID of its own) */
    uint64_t rsp0;              /* its kernel stack's top: TSS.RSP0 while it runs */
};

/* A switch logged: when, and what the observers of a dispatch read then (the events of a
 * switch are told after the run: ke_dispatcher._switches_made, eventlog). */
struct ring_log {
    uint64_t count;             /* the instructions completed at the switch */
    uint64_t rip;               /* where the next thread resumes ... */
    uint64_t cs;                /* ... at this CS ... */
    uint64_t cr8_leaving;       /* CR8 as the leaving thread left it */
    uint64_t cr8;               /* CR8 of the next thread */
};

struct ring {
    uint64_t count;             /* threads in the ring: 0: renewals only; 1: renewals
                                 * logged as switches (renew_quantum); 2 or more: switches */
    uint64_t current;           /* the index of the thread on the CPU */
    uint64_t cr3;               /* the address space loaded now */
    uint8_t *tss_rsp0;          /* TSS.RSP0 in host memory */
    uint64_t logged;            /* switches in `log` Python has not taken yet */
    uint64_t switches;          /* switches made so (native.py reads it) */
    int64_t error;              /* Unicorn's error if a switch failed (the run stopped) */
    int32_t reg_cr8;            /* UC_X86_REG_CR8 */
    struct ring_thread threads[RING_THREADS];
    struct ring_log log[RING_LOG];
};

/*
 * One machine's state. native.py mirrors every field up to and including
 * learned with ctypes, in this order: keep the two in step (native_ctx_size
 * checks the size at load time); renewal, ring and the fields after them each
 * have a mirror of their own (_Renewal, _Ring, _Early: sizes checked too). The
 * first cache line holds what a block entry of the fast path touches (the
 * context is 64-byte aligned).
 *
 * The instructions completed are not a field: they are end - remaining (mod
 * 2^64). A block charged moves only `remaining` (the fast path's one store of
 * the count); whatever takes instructions back gives them back to the budget
 * (remaining += n: end unchanged); whatever ends or sets the budget, or sets
 * the count, moves `end` with it (budget_spent, native.py _Ctx).
 */
struct native_ctx {
    uint64_t remaining;         /* budget: instructions left before the stop */
    struct fast_slot *fast;     /* what native_block looks blocks up in: `table`, or,
                                 * while every entry must take block_enter (a stop asked
                                 * for, the tail, the last block may be rewritten, or the
                                 * run is not inside a block: in_block is 0), `no_fast`,
                                 * whose slots are all empty (none matches) */
    struct block_entry *last;   /* the block charged last ... */
    uint64_t blocks;            /* block entries charged */
    uint64_t end;               /* instructions completed + remaining (mod 2^64) */
    uint64_t in_block;          /* the run may still be inside *last */
    uint64_t space;             /* the address space learnt blocks belong to (CR3) */
    struct fast_slot *table;    /* the current space's fast table (FAST_SIZE slots) */
    struct fast_slot *no_fast;  /* FAST_SIZE empty slots */
    uint64_t fills;             /* TLB-fill hook calls */
    uint64_t stlb_hits;         /* ... of which the STLB answered */
    uint64_t last_pc;           /* address of the last instruction counted */
    uint64_t in_flight;         /* it may not have completed yet */
    reg_read_fn reg_read;       /* Unicorn's uc_reg_read */
    emu_stop_fn emu_stop;       /* Unicorn's uc_emu_stop */
    walker_fn walker;           /* the Python page walker */
    int32_t reg_cs;             /* UC_X86_REG_CS */
    int32_t reg_rflags;         /* UC_X86_REG_RFLAGS */
    /* The block counter (native_block). */
    learn_fn learn;             /* counts a block's instructions (Python, on a miss) */
    done_fn done_before;        /* where a block was left (Python, rare) */
    uint64_t learn_host;        /* set by it: where a writable block's bytes are (or 0) */
    uint64_t stop_flag;         /* stop_soon(): stop at the next block */
    uint64_t tail_pc;           /* a block bigger than the budget left stopped here */
    uint64_t tail_size;
    uint64_t tail_pending;      /* ... and the budget must end inside it */
    uint64_t tail_mode;         /* the counting hook counts in [tail_pc, + tail_size) */
    uint64_t tail_exit;         /* the tail's run stopped at a block outside that range */
    uint64_t learned;           /* blocks learnt (calls of `learn`) */
    struct stlb_entry *stlb;    /* STLB_SETS * STLB_WAYS entries */
    uint64_t generation;        /* the clock the owners' generations are taken from */
    struct block_entry *bcache; /* BCACHE_SIZE learnt blocks, open addressing */
    uint64_t bcache_used;
    uint64_t pcid;              /* the current PCID: what fills are cached for */
    uint16_t owner_generation[PCIDS + 1];  /* each PCID's, then the global entries' */
    reg_write_fn reg_write;     /* Unicorn's uc_reg_write, for native_load_cr3 ... */
    uc_engine *uc;              /* ... on this engine ... */
    int32_t reg_cr3;            /* ... to UC_X86_REG_CR3 */
    /* The fast tables of the last FAST_TABLES address spaces (`fast` is the current
     * space's), so that switching between a few processes empties none of them. */
    struct fast_slot *fast_all; /* FAST_TABLES * FAST_SIZE slots */
    uint64_t fast_space[FAST_TABLES];
    uint64_t fast_used[FAST_TABLES];    /* when each was last current (LRU) */
    uint64_t fast_clock;
    /* native_switch_at_syscall's calls into Unicorn, and where a saved context
     * keeps QEMU's EFLAGS (native_set_switch_calls). */
    context_move_fn context_save;
    context_move_fn context_restore;
    context_reg_fn context_reg_read;
    context_reg_fn context_reg_write;
    int32_t reg_rip;
    uint64_t eflags_at;         /* 0: unknown, no switch at a SYSCALL */
    /* A lone thread's quantum renewed at a block entry (block_enter, renew_quantum):
     * native.py mirrors this part alone (its _Renewal), at native_renewal_at(). */
    struct renewal renewal;
    struct ring ring;           /* native.py's _Ring, at native_ring_at() */
    /* A lone thread's quantum renewed early, at the entry of the block its budget ends in
     * (renew_early): native.py's _Early mirrors these, at native_early_at(). */
    uint64_t early_renewals;    /* renewals made so (of renewal.renewals) */
    uint64_t code_hooks;        /* Python code and block hooks on the engine ... */
    const uint64_t *code_hook_ranges;   /* ... each [begin, end], inclusive (begin > end:
                                 * every address, as Unicorn's HOOK_BOUND_CHECK) */
    uint16_t *learn_ends;       /* set by the learner: the ends of a block's inert ones */
};

void native_forget_blocks(struct native_ctx *ctx);

size_t native_ctx_size(void)
{
    return offsetof(struct native_ctx, stlb);
}

/* Where the context keeps its struct renewal (native.py's _Renewal maps it there). */
size_t native_renewal_at(void)
{
    return offsetof(struct native_ctx, renewal);
}

size_t native_renewal_size(void)
{
    return sizeof(struct renewal);
}

size_t native_ring_at(void)
{
    return offsetof(struct native_ctx, ring);
}

size_t native_ring_size(void)
{
    return sizeof(struct ring);
}

size_t native_early_at(void)
{
    return offsetof(struct native_ctx, early_renewals);
}

size_t native_early_size(void)
{
    return sizeof(struct native_ctx) - offsetof(struct native_ctx, early_renewals);
}

/* Allocates a context with an empty STLB; NULL if out of memory. */
struct native_ctx *native_open(reg_read_fn reg_read, emu_stop_fn emu_stop,
                               walker_fn walker, int32_t reg_cs,
                               int32_t reg_rflags)
{
    /* 64-byte aligned: the fast path's fields share one cache line. */
    size_t bytes = (sizeof(struct native_ctx) + 63) & ~(size_t)63;
    struct native_ctx *ctx = aligned_alloc(64, bytes);

    if (ctx == NULL)
        return NULL;
    memset(ctx, 0, bytes);
    ctx->fast_all = malloc((size_t)(FAST_TABLES + 1) * FAST_SIZE * sizeof(struct fast_slot));
    if (ctx->fast_all == NULL) {
        free(ctx);
        return NULL;
    }
    fast_clear(ctx->fast_all, (size_t)(FAST_TABLES + 1) * FAST_SIZE);
    ctx->table = ctx->fast_all;
    ctx->fast = ctx->no_fast = ctx->fast_all + (size_t)NO_FAST * FAST_SIZE;
    ctx->stlb = aligned_alloc(64, STLB_BYTES);   /* a set per cache line */
    if (ctx->stlb == NULL) {
        free(ctx->fast_all);
        free(ctx);
        return NULL;
    }
    memset(ctx->stlb, 0, STLB_BYTES);
    ctx->bcache = calloc(BCACHE_SIZE, sizeof(struct block_entry));
    if (ctx->bcache == NULL) {
        free(ctx->stlb);
        free(ctx->fast_all);
        free(ctx);
        return NULL;
    }
    ctx->last = ctx->bcache;
    ctx->reg_read = reg_read;
    ctx->emu_stop = emu_stop;
    ctx->walker = walker;
    ctx->reg_cs = reg_cs;
    ctx->reg_rflags = reg_rflags;
    return ctx;
}

/* Frees a context. Its hooks must already be removed. */
void native_close(struct native_ctx *ctx)
{
    if (ctx != NULL) {
        free(ctx->stlb);
        if (ctx->bcache != NULL)
            native_forget_blocks(ctx);
        free(ctx->bcache);
        free(ctx->fast_all);
    }
    free(ctx);
}

static struct stlb_entry *stlb_set(struct native_ctx *ctx, uint64_t vpage,
                                   enum mode mode)
{
    uint64_t vpn = vpage >> 12;
    uint64_t region = ((vpn >> 14) * GOLDEN) >> 50;     /* 14 bits */

    return &ctx->stlb[((vpn + region + mode_salt[mode]) & (STLB_SETS - 1))
                      * STLB_WAYS];
}

/* The tag of (vpage, mode) cached for `owner` (a PCID, or OWNER_GLOBAL). */
static uint64_t stlb_tag(struct native_ctx *ctx, uint64_t vpage, enum mode mode,
                         uint32_t owner)
{
    return (vpage & VA48_MASK) | (uint64_t)owner << OWNER_SHIFT
           | (uint64_t)ctx->owner_generation[owner] << 3 | (uint64_t)mode << 1
           | TAG_VALID;
}

/* Whether bits 63-47 of `vpage` are all equal (SDM Vol. 1 3.3.7.1). */
static bool canonical(uint64_t vpage)
{
    uint64_t top = vpage >> 47;

    return top == 0 || top == 0x1ffff;
}

/* Returns the way holding (vpage, mode) for the current PCID, or a global
 * translation of it, or NULL. */
static struct stlb_entry *stlb_find(struct native_ctx *ctx, uint64_t vpage,
                                    enum mode mode)
{
    struct stlb_entry *set = stlb_set(ctx, vpage, mode);
    uint64_t tag = stlb_tag(ctx, vpage, mode, (uint32_t)ctx->pcid);
    uint64_t global = stlb_tag(ctx, vpage, mode, OWNER_GLOBAL);

    for (int way = 0; way < STLB_WAYS; way++) {
        if (set[way].tag == tag || set[way].tag == global)
            return &set[way];
    }
    return NULL;
}

/* Makes `e` way 0 of its set, shifting the ways above it down. */
static void stlb_touch(struct stlb_entry *set, struct stlb_entry *e,
                       struct stlb_entry value)
{
    memmove(&set[1], &set[0], (size_t)(e - set) * sizeof(*set));
    set[0] = value;
}

/* Keeps the walker's answer for (vpage, mode), for the current PCID or, with
 * FILL_GLOBAL, for all of them, evicting the set's LRU way. */
static void stlb_insert(struct native_ctx *ctx, uint64_t vpage, enum mode mode,
                        uint64_t value)
{
    struct stlb_entry *set = stlb_set(ctx, vpage, mode);
    struct stlb_entry *e = stlb_find(ctx, vpage, mode);
    uint32_t owner = (value & FILL_GLOBAL) ? OWNER_GLOBAL : (uint32_t)ctx->pcid;
    struct stlb_entry fresh = {
        stlb_tag(ctx, vpage, mode, owner), value & (PAGE_MASK | FILL_PERMS)
    };

    stlb_touch(set, e != NULL ? e : &set[STLB_WAYS - 1], fresh);
}

/* Drops (vpage, mode) if present for the current PCID (or global). */
static void stlb_drop(struct native_ctx *ctx, uint64_t vpage, enum mode mode)
{
    struct stlb_entry *e = stlb_find(ctx, vpage, mode);

    if (e != NULL)
        e->tag = 0;
}

/* A generation no owner has held since the table was last cleared. */
static uint16_t fresh_generation(struct native_ctx *ctx)
{
    ctx->generation = (ctx->generation + 1) % GENERATIONS;
    if (ctx->generation == 0) {
        /* The clock wrapped: old tags could match again. Clear the table; every
         * owner's generation is then 0, which no entry holds. */
        memset(ctx->stlb, 0, STLB_BYTES);
        memset(ctx->owner_generation, 0, sizeof(ctx->owner_generation));
    }
    return (uint16_t)ctx->generation;
}

/* Empties the STLB: every PCID's entries and the global ones (a MOV to CR4
 * that changes PGE or clears PCIDE, INVPCID all-context: SDM Vol. 3A 4.10.4.1). */
void native_flush(struct native_ctx *ctx)
{
    uint16_t g = fresh_generation(ctx);

    for (uint32_t i = 0; i <= PCIDS; i++)
        ctx->owner_generation[i] = g;
}

/* Drops every entry of `pcid` but the global ones (a MOV to CR3 without bit
 * 63, INVPCID single-context). */
void native_flush_pcid(struct native_ctx *ctx, uint32_t pcid)
{
    uint16_t g = fresh_generation(ctx);

    ctx->owner_generation[pcid & (PCIDS - 1)] = g;
}

/* Drops every PCID's entries but the global ones (INVPCID type 3). */
void native_flush_nonglobal(struct native_ctx *ctx)
{
    uint16_t g = fresh_generation(ctx);

    for (uint32_t i = 0; i < PCIDS; i++)
        ctx->owner_generation[i] = g;
}

/*
 * A MOV to CR3 of `value` (checked, bit 63 clear): the blocks counted next
 * are its page tables' (bits 12 and up), fills are cached for `pcid`, with
 * `flush` that PCID's non-global entries go (SDM Vol. 3A 4.10.4.1), and
 * Unicorn's CR3 becomes `value`. One call for the context switch.
 */
void native_set_space(struct native_ctx *ctx, uint64_t space);

int native_load_cr3(struct native_ctx *ctx, uint64_t value, uint32_t pcid,
                    uint32_t flush)
{
    native_set_space(ctx, value & PAGE_MASK);
    ctx->pcid = pcid & (PCIDS - 1);
    if (flush)
        ctx->owner_generation[ctx->pcid] = fresh_generation(ctx);
    /* CR3 in Unicorn: what a MOV from CR3 reads; with CR0.PG QEMU flushes its own
     * TLB on this write (measured), so its misses refill from the STLB. */
    return ctx->reg_write != NULL ? ctx->reg_write(ctx->uc, ctx->reg_cr3, &value) : 0;
}

/* Where native_load_cr3 writes CR3: Unicorn's uc_reg_write, the engine, the register. */
void native_set_cr3_writer(struct native_ctx *ctx, reg_write_fn reg_write,
                           uc_engine *uc, int32_t reg_cr3)
{
    ctx->reg_write = reg_write;
    ctx->uc = uc;
    ctx->reg_cr3 = reg_cr3;
}

/* The PCID fills are cached for from now on (CR3[11:0]). */
void native_set_pcid(struct native_ctx *ctx, uint32_t pcid)
{
    ctx->pcid = pcid & (PCIDS - 1);
}

/*
 * Caches translations the walker computed ahead of use (speculative fills,
 * SDM Vol. 3A 4.10.2.3): `pairs` holds n (vpage, paddr | perms) pairs for
 * `mode`. The rules that made them live in the Python walker; this only
 * stores them.
 */
void native_insert(struct native_ctx *ctx, int32_t mode, size_t n,
                   const uint64_t *pairs)
{
    if (mode < 0 || mode >= MODE_COUNT)
        return;
    for (size_t i = 0; i < n; i++) {
        if (canonical(pairs[2 * i]))
            stlb_insert(ctx, pairs[2 * i] & PAGE_MASK, (enum mode)mode,
                        pairs[2 * i + 1] & (PAGE_MASK | FILL_PERMS | FILL_GLOBAL));
    }
}

/* Which entries of a page native_invalidate drops. */
#define DROP_GLOBAL  0x1                /* the global ones */
#define DROP_PCID    0x2                /* those of `pcid` */
#define DROP_EVERY   0x4                /* those of every PCID */

/*
 * Drops one page from the STLB in every mode: with DROP_PCID the entries
 * of `pcid`, with DROP_EVERY those of every PCID, with DROP_GLOBAL the
 * global ones. INVLPG is DROP_PCID (the current PCID) | DROP_GLOBAL; INVPCID
 * individual-address is DROP_PCID alone (SDM Vol. 2, INVLPG and INVPCID).
 * Every PCID's entries for a page share a set, so no drop scans more.
 */
void native_invalidate(struct native_ctx *ctx, uint64_t vpage, uint32_t pcid,
                       uint32_t how)
{
    if (!canonical(vpage))
        return;                         /* never cached */
    for (int mode = 0; mode < MODE_COUNT; mode++) {
        struct stlb_entry *set = stlb_set(ctx, vpage, (enum mode)mode);

        for (int way = 0; way < STLB_WAYS; way++) {
            uint64_t tag = set[way].tag;
            uint32_t owner = (uint32_t)(tag >> OWNER_SHIFT) & 0x1fff;

            if (!(tag & TAG_VALID) || (tag & VA48_MASK) != (vpage & VA48_MASK)
                || (uint32_t)(tag >> 1 & 3) != (uint32_t)mode)
                continue;
            if (owner == OWNER_GLOBAL ? (how & DROP_GLOBAL) != 0
                : (how & DROP_EVERY) || ((how & DROP_PCID) && owner == (pcid & (PCIDS - 1))))
                set[way].tag = 0;
        }
    }
}

/*
 * Copies the STLB's live entries (those of their owner's generation) as
 * (tag, value) pairs into `out` (room for STLB_SETS * STLB_WAYS pairs);
 * returns how many. The tag's owner field names the PCID (or OWNER_GLOBAL).
 */
size_t native_stlb_entries(struct native_ctx *ctx, uint64_t *out)
{
    size_t n = 0;

    for (size_t i = 0; i < (size_t)STLB_SETS * STLB_WAYS; i++) {
        uint64_t tag = ctx->stlb[i].tag;
        uint32_t owner = (uint32_t)(tag >> OWNER_SHIFT) & 0x1fff;

        if (!(tag & TAG_VALID) || owner > OWNER_GLOBAL
            || (tag >> 3 & (GENERATIONS - 1)) != ctx->owner_generation[owner])
            continue;
        out[2 * n] = tag;
        out[2 * n + 1] = ctx->stlb[i].value;
        n++;
    }
    return n;
}

/* The UC_PROT_* bit an access of Unicorn type `type` needs. */
static uint32_t needed_perm(int type)
{
    switch (type) {
    case UC_MEM_WRITE:
        return UC_PROT_WRITE;
    case UC_MEM_FETCH:
        return UC_PROT_EXEC;
    default:
        return UC_PROT_READ;
    }
}

/* Ends the budget now: nothing left, the instructions completed unchanged. */
static void budget_spent(struct native_ctx *ctx)
{
    ctx->end -= ctx->remaining;
    ctx->remaining = 0;
}

/*
 * The instruction the counter last counted will not complete: take it back.
 * Called when a data access of it faults (a fetch fault happens while
 * translating the next block, after the previous instruction completed).
 */
static void retract(struct native_ctx *ctx)
{
    if (ctx->in_flight) {
        ctx->remaining++;               /* one instruction less: end - remaining */
        ctx->in_flight = 0;
    }
}

static void note_fault(struct native_ctx *ctx, int type)
{
    if (type == UC_MEM_FETCH) {         /* the block before completed */
        ctx->in_flight = 0;
        ctx->in_block = 0;
        ctx->fast = ctx->no_fast;
    } else
        retract(ctx);
}

/*
 * UC_HOOK_TLB_FILL callback: fills `entry` for the page `vpage` and returns
 * true, or returns false to make Unicorn stop with UC_ERR_EXCEPTION (RIP at
 * the faulting instruction). An STLB hit must grant the access asked for;
 * otherwise the walker decides (a READ-only entry cached by a read does not
 * answer a later write: the walker must see the write to set D).
 */
bool native_tlb_fill(uc_engine *uc, uint64_t vpage, int type,
                     uc_tlb_entry *entry, void *user_data)
{
    struct native_ctx *ctx = user_data;
    uint64_t cs = 0, rflags = 0;
    uint32_t need = needed_perm(type);
    enum mode mode = MODE_USER;
    struct stlb_entry *e;
    int64_t answer;

    ctx->fills++;
    ctx->reg_read(uc, ctx->reg_cs, &cs);
    if ((cs & 3) != 3) {
        ctx->reg_read(uc, ctx->reg_rflags, &rflags);
        mode = (rflags & RFLAGS_AC) ? MODE_KERNEL_AC1 : MODE_KERNEL_AC0;
    }

    e = canonical(vpage) ? stlb_find(ctx, vpage, mode) : NULL;
    if (e != NULL && (e->value & need)) {
        ctx->stlb_hits++;
        entry->paddr = e->value & PAGE_MASK;
        entry->perms = e->value & FILL_PERMS;
        if (e != stlb_set(ctx, vpage, mode))
            stlb_touch(stlb_set(ctx, vpage, mode), e, *e);
        return true;
    }

    /* The walker is Python, but it is the page walk alone (the A and D bits it sets, the
     * STLB's fills, a fault kept for the stop: emu/hw/cpu.py Cpu._fill): nothing a
     * renewal or a switch armed on changes, so it leaves them armed. (A switch C made is
     * taken into the books first: native.py's walker callback.) */
    answer = ctx->walker(vpage, type, (int32_t)(cs & 3), rflags);
    if (answer < 0) {                   /* denied: the run loop raises #PF */
        note_fault(ctx, type);
        return false;
    }
    if (!canonical(vpage))
        ;                               /* never cached (the walker answers #GP) */
    else if (answer & FILL_NO_CACHE)
        stlb_drop(ctx, vpage, mode);
    else
        stlb_insert(ctx, vpage, mode, (uint64_t)answer);
    if (!(answer & need))
        note_fault(ctx, type);  /* Unicorn faults on perms without the access */
    entry->paddr = (uint64_t)answer & PAGE_MASK;
    entry->perms = (uint32_t)answer & FILL_PERMS;
    return true;
}

/*
 * UC_HOOK_CODE callback, called before each instruction at `pc`: counts it,
 * or, once the budget is spent, stops the run before it executes (Unicorn
 * checks for a stop right after this hook).
 */
void native_count(uc_engine *uc, uint64_t pc, uint32_t size, void *user_data)
{
    struct native_ctx *ctx = user_data;

    if (ctx->remaining == 0 || ctx->stop_flag) {
        ctx->stop_flag = 0;
        budget_spent(ctx);
        ctx->in_flight = 0;
        ctx->emu_stop(uc);
        return;
    }
    ctx->remaining--;                   /* one instruction more: end - remaining */
    ctx->last_pc = pc;
    ctx->in_flight = 1;
}

/*
 * UC_HOOK_BLOCK callback that only counts block entries in the uint64_t its
 * user data points to: the floor any block counter pays, Unicorn's call of
 * a C block hook (make bench measures it on plain Unicorn; nothing else uses it).
 */
void native_tally(uc_engine *uc, uint64_t pc, uint32_t size, void *user_data)
{
    (void)uc;
    (void)pc;
    (void)size;
    ++*(uint64_t *)user_data;
}

/* Forgets every learnt block (translated code was dropped, or new code loaded). With
 * none learnt since the last time (a machine's first image), the cache is still all
 * zero and the fast tables empty (block_count fills a fast slot only for a block it
 * counted in bcache_used): touching the cache again would only fault in its 3 MB of
 * fresh pages. */
void native_forget_blocks(struct native_ctx *ctx)
{
    if (ctx->bcache_used == 0) {
        ctx->last = ctx->bcache;
        ctx->in_block = 0;
        ctx->fast = ctx->no_fast;
        return;
    }
    for (uint32_t i = 0; i < BCACHE_SIZE; i++) {
        free(ctx->bcache[i].copy);
        free(ctx->bcache[i].inert_ends);
    }
    memset(ctx->bcache, 0, BCACHE_SIZE * sizeof(struct block_entry));
    ctx->bcache_used = 0;
    ctx->last = ctx->bcache;
    ctx->in_block = 0;
    ctx->fast = ctx->no_fast;
    fast_clear(ctx->fast_all, (size_t)FAST_TABLES * FAST_SIZE);    /* no_fast stays empty */
}

/*
 * The address space (CR3) the blocks that run next belong to. A fast table
 * holds one space's blocks: each of the last FAST_TABLES spaces keeps its own,
 * so a switch between a few processes empties none; a space beyond them takes
 * the least recently used table, emptied (the learnt blocks, keyed by space,
 * stay either way).
 */
void native_set_space(struct native_ctx *ctx, uint64_t space)
{
    uint32_t victim = 0;

    if (space == ctx->space)
        return;
    ctx->space = space;
    ctx->fast = ctx->no_fast;           /* the next entry takes block_enter */
    ctx->fast_used[(size_t)(ctx->table - ctx->fast_all) / FAST_SIZE] = ++ctx->fast_clock;
    for (uint32_t i = 0; i < FAST_TABLES; i++) {
        if (ctx->fast_space[i] == space && ctx->fast_used[i] != 0) {
            ctx->table = ctx->fast_all + (size_t)i * FAST_SIZE;
            return;
        }
        if (ctx->fast_used[i] < ctx->fast_used[victim])
            victim = i;
    }
    ctx->table = ctx->fast_all + (size_t)victim * FAST_SIZE;
    fast_clear(ctx->table, FAST_SIZE);
    ctx->fast_space[victim] = space;
    ctx->fast_used[victim] = ++ctx->fast_clock;
}

static struct block_entry *bcache_slot(struct native_ctx *ctx, uint64_t pc,
                                       uint32_t size)
{
    uint64_t h = ((pc ^ ctx->space * 31 ^ (uint64_t)size << 48) * GOLDEN)
                 >> (64 - BCACHE_BITS);
    struct block_entry *e;

    for (;;) {
        e = &ctx->bcache[h];
        if (e->count == 0 || (e->pc == pc && e->size == size
                              && e->space == ctx->space))
            return e;
        h = (h + 1) & (BCACHE_SIZE - 1);
    }
}

/* Whether a learnt block must be learnt again: the guest rewrote its bytes. */
static bool block_changed(const struct block_entry *e)
{
    return e->always || (e->host != NULL && memcmp(e->host, e->copy, e->size) != 0);
}

/*
 * Keeps the learner's inert count of a block of `n` instructions, and where each of those
 * instructions ends (from learn_ends). None when they cannot be kept: early renewals are
 * an optimisation, and a block without them stops at its budget's end as ever.
 */
static void learn_inert(struct native_ctx *ctx, struct block_entry *e, uint64_t inert,
                        uint64_t n)
{
    inert &= 0xffff;
    if (inert > n)
        inert = n;
    if (inert > LEARN_INERT_MAX)
        inert = LEARN_INERT_MAX;
    if (inert == 0 || ctx->learn_ends == NULL)
        return;
    e->inert_ends = malloc(inert * sizeof(uint16_t));
    if (e->inert_ends == NULL)
        return;
    memcpy(e->inert_ends, ctx->learn_ends, inert * sizeof(uint16_t));
    e->inert = (uint32_t)inert;
}

/*
 * The instruction count of the block at `pc`, learnt on its first entry. A
 * block the guest may write (a writable page: self-modifying code, a JIT)
 * keeps a copy of its bytes, compared at every entry: QEMU translates the
 * new bytes again, and the count is learnt again with them.
 */
static uint64_t block_count(struct native_ctx *ctx, uint64_t pc, uint32_t size)
{
    struct block_entry *e = bcache_slot(ctx, pc, size);
    int64_t answer;
    uint64_t n;

    if (e->count != 0 && !block_changed(e)) {
        ctx->last = e;
        return e->count;
    }
    if (e->count == 0 && ctx->bcache_used >= BCACHE_LIMIT) {
        native_forget_blocks(ctx);
        e = bcache_slot(ctx, pc, size);
    }
    if (e->count == 0)
        ctx->bcache_used++;
    free(e->copy);
    free(e->inert_ends);
    e->copy = NULL;
    e->host = NULL;
    e->always = 0;
    e->inert = 0;
    e->inert_ends = NULL;
    ctx->learned++;
    ctx->learn_host = 0;
    answer = ctx->learn(pc, size);
    n = answer > 0 ? (uint64_t)answer & LEARN_COUNT : 0;
    if (n == 0)
        n = 1;                  /* the learner failed: it reports why */
    if (answer > 0 && ((uint64_t)answer & LEARN_WRITABLE)) {
        e->copy = ctx->learn_host ? malloc(size) : NULL;
        if (e->copy != NULL) {
            e->host = (const uint8_t *)(uintptr_t)ctx->learn_host;
            memcpy(e->copy, e->host, size);
        } else {
            e->always = 1;
        }
    }
    if (answer > 0)
        learn_inert(ctx, e, (uint64_t)answer >> LEARN_INERT_SHIFT, n);
    e->pc = pc;
    e->space = ctx->space;
    e->size = size;
    e->count = (uint32_t)n;
    ctx->last = e;
    return n;
}

/*
 * Whether entering the block [pc, pc + size) shows that the block charged last, `e`,
 * was left at pc without a stop: QEMU leaves a block whose own bytes a store of it
 * rewrote, at that store, and runs the store again as a block of one instruction
 * (measured). Any other block that starts inside the last one runs to the same end
 * (a jump back into a loop, a `rep` iteration), so a shorter one is this case.
 */
static bool left_early(const struct block_entry *e, uint64_t pc, uint32_t size)
{
    uint64_t into = pc - e->pc;

    return pc >= e->pc && into < e->size && size < e->size - into;
}

/* The block charged last was left at pc: its instructions from pc on did not run. */
static void take_back(struct native_ctx *ctx, uint64_t pc)
{
    int64_t done = ctx->done_before(pc);
    uint64_t undone;

    if (done < 0 || (uint64_t)done >= ctx->last->count)
        return;
    undone = ctx->last->count - (uint64_t)done;
    ctx->remaining += undone;           /* end - remaining: `undone` fewer completed */
}

/* The slot of the block at `pc` in `table`: the cheapest index, no hashing. */
static struct fast_slot *fast_slot(struct fast_slot *table, uint64_t pc)
{
    return &table[pc & (FAST_SIZE - 1)];
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "KUSER_SHARED_DATA's times are stored as the guest's little-endian words"
#endif

/*
 * KUSER_SHARED_DATA's InterruptTime, SystemTime and TickCount at clock `now`, byte for
 * byte and in the order kuser._write_times stores them: the two KSYSTEM_TIMEs side by
 * side (LowPart, High1Time, High2Time each: both highs equal, a settled value), then
 * TickCount (ntddk.h KUSER_SHARED_DATA; one clock unit is 100 ns of interrupt time).
 */
static void write_times(const struct renewal *r, uint64_t now)
{
    uint64_t system = r->system_time_at_boot + now;
    uint64_t tick = now / r->time_increment;
    uint32_t two[6] = {
        (uint32_t)now, (uint32_t)(now >> 32), (uint32_t)(now >> 32),
        (uint32_t)system, (uint32_t)(system >> 32), (uint32_t)(system >> 32),
    };
    uint32_t one[3] = {(uint32_t)tick, (uint32_t)(tick >> 32), (uint32_t)(tick >> 32)};

    memcpy(r->kuser + r->interrupt_time_at, two, sizeof(two));
    memcpy(r->kuser + r->tick_count_at, one, sizeof(one));
}

/*
 * A quantum ended at a block entry, `done` instructions completed: the budget the next
 * quantum gets (the quantum, or less when --max-insns comes first: `limit`) and what of it
 * this run may spend (up to a debugger's cut, `stop_at`). False when the run must stop
 * as it would have: the budget spent was a cut, not the quantum's end; --max-insns
 * reached; a cut reached; or what is left to run so small that native.py runs it as a
 * step (counted per instruction from the run's start).
 */
static bool next_quantum(const struct renewal *r, uint64_t done, uint64_t *budget,
                         uint64_t *run)
{
    uint64_t left, to_cut;

    if (done != r->budget_end || r->limit <= done || r->stop_at <= done)
        return false;
    left = r->limit - done;
    *budget = r->quantum < left ? r->quantum : left;
    to_cut = r->stop_at - done;
    *run = *budget < to_cut ? *budget : to_cut;
    return *run > SMALL_BUDGET;
}

/*
 * A lone thread's quantum end, with a renewal armed: the thread keeps the CPU with a new
 * quantum in place (ke_dispatcher._quantum_renewed, KiQuantumEnd with nothing else ready:
 * Windows Internals, 7th ed., ch. 4). The quantum ends at the count `end`, once the
 * instructions still in `remaining` have run: none when the budget ended at this block
 * entry (block_enter), the block's first inert ones when it ends inside it (renew_early).
 * KUSER_SHARED_DATA's times of that end are written, the next budget counts from it (end
 * and remaining move together: the count unchanged), and for a ring of one thread (a
 * debugger or an event log watches each dispatch: ke_dispatcher._arm_ring) the turn is
 * logged there as a switch of the thread to itself, resuming at `rip`, with CS and CR8
 * as they are (nothing until that end changes them), so that Python books it and tells
 * its dispatch after the run (_switches_made). False, with nothing changed, when the run
 * must stop as it would have (next_quantum, a full log).
 */
static bool renew_quantum(struct native_ctx *ctx, uint64_t rip)
{
    struct renewal *r = &ctx->renewal;
    struct ring *g = &ctx->ring;
    uint64_t ended = ctx->end;
    uint64_t budget, run, cs = 0, cr8 = 0;
    int err;

    if (!next_quantum(r, ended, &budget, &run) || (g->count == 1 && g->logged >= RING_LOG))
        return false;
    if (g->count == 1) {
        err = ctx->reg_read(ctx->uc, ctx->reg_cs, &cs);
        if (!err)
            err = ctx->reg_read(ctx->uc, g->reg_cr8, &cr8);
        if (err) {
            g->error = err;
            r->armed = 0;
            return false;
        }
    }
    if (r->kuser != NULL)
        write_times(r, ended + r->clock_offset);
    ctx->end += run;                    /* the count stays: end - remaining */
    ctx->remaining += run;
    r->budget_end = ended + budget;
    if (g->count == 1) {
        g->log[g->logged++] = (struct ring_log){ ended, rip, cs, cr8, cr8 };
        g->switches++;
    } else {
        r->renewals++;
    }
    return true;
}

int native_switch_at_syscall(struct native_ctx *ctx, void *save, void *load, uint64_t len);
int native_load_cr3(struct native_ctx *ctx, uint64_t value, uint32_t pcid, uint32_t flush);

/*
 * The budget of the thread on the CPU ended at this block entry (`pc`, the block not run)
 * and a ring is armed: the preempted switch (KiQuantumEnd with another thread ready: the
 * thread goes to the back of the queue, Windows Internals, 7th ed., ch. 4; SwapContext).
 * False, with nothing changed, when the run must stop as it would have (the same limits as
 * renew_quantum, or a full log); otherwise true, the run going on in the next thread.
 *
 * Inside a run (`in_run`, from block_enter) the context is saved as the end of a run at
 * `pc` would leave it (native_switch_at_syscall with no instruction to step over: RIP is
 * the block's, which Unicorn stored before calling the hook, RFLAGS computed from QEMU's
 * lazy flags), the next loaded; then RIP is written through uc_reg_write, which makes
 * Unicorn leave the translated block it was about to run (the old thread's) and go on at
 * the new RIP without ending the run (uc.c: quit_request and break_translation_loop;
 * tests/hw/test_rip_write_in_hook.py measures it). Between two runs
 * (native_quantum_end), the two contexts are plainly saved and loaded.
 */
static bool ring_switch(struct native_ctx *ctx, uint64_t pc, bool in_run)
{
    struct renewal *r = &ctx->renewal;
    struct ring *g = &ctx->ring;
    struct ring_thread *leaving, *next;
    uint64_t done = ctx->end - ctx->remaining;  /* instructions completed (mod 2^64) */
    uint64_t budget, run, rip, cs = 0, cr8_leaving = 0, cr8 = 0;
    int err;

    if (g->logged >= RING_LOG || !next_quantum(r, done, &budget, &run))
        return false;
    leaving = &g->threads[g->current];
    next = &g->threads[(g->current + 1) % g->count];
    err = ctx->reg_read(ctx->uc, g->reg_cr8, &cr8_leaving);
    if (!err && in_run)
        err = native_switch_at_syscall(ctx, leaving->context, next->context, 0);
    else if (!err) {
        /* Between two runs EFLAGS is whole in the CPU as in a context (QEMU folds the
         * lazy flags back when a run ends, x86_cpu_exec_exit): a plain save and load. */
        err = ctx->context_save(ctx->uc, leaving->context);
        if (!err)
            err = ctx->context_restore(ctx->uc, next->context);
    }
    if (!err)                           /* the block's first instruction, not run */
        err = ctx->context_reg_write(leaving->context, ctx->reg_rip, &pc);
    if (!err)
        err = ctx->reg_read(ctx->uc, ctx->reg_rip, &rip);
    if (!err)
        err = ctx->reg_write(ctx->uc, ctx->reg_rip, &rip);
    if (!err)
        err = ctx->reg_read(ctx->uc, ctx->reg_cs, &cs);
    if (!err)
        err = ctx->reg_read(ctx->uc, g->reg_cr8, &cr8);
    if (!err && next->cr3 != g->cr3)    /* SwapContext: CR3 only when the process differs */
        err = native_load_cr3(ctx, next->cr3_value, next->pcid, next->flush);
    if (err) {
        g->error = err;
        r->armed = 0;
        return false;
    }
    g->cr3 = next->cr3;
    g->current = (g->current + 1) % g->count;
    memcpy(g->tss_rsp0, &next->rsp0, sizeof(next->rsp0));  /* SDM Vol. 3A 8.7: RSP0 */
    if (r->kuser != NULL)
        write_times(r, done + r->clock_offset);
    ctx->end += run - ctx->remaining;           /* the count stays: end - remaining */
    ctx->remaining = run;
    r->budget_end = done + budget;
    ctx->in_flight = 0;
    g->log[g->logged++] = (struct ring_log){ done, rip, cs, cr8_leaving, cr8 };
    g->switches++;
    return true;
}

/*
 * The budget ends inside the block at `pc` (`e`, learnt), after its first k = remaining
 * instructions, and a lone thread's renewal is armed: renew the quantum at the block's
 * entry instead of after its k-th instruction (where a stop, then
 * ke_dispatcher._quantum_renewed, makes it otherwise), when no one can tell the two apart.
 * A renewal's only effects on a lone thread are KUSER_SHARED_DATA's three times and the
 * next budget (_arm_renewal checked everything else before the run), so it is made early
 * only when those k instructions
 *   - are inert (the learner's allow-list, emu/hw/cpu.py `_inert`): no memory access,
 *     explicit or implicit, so none of them reads the times; no fault or trap, so no
 *     Python runs in their midst and the run cannot end before the k-th completes; and no
 *     control transfer (a block's last instruction, never among the k);
 *   - are seen by no Python hook: no code hook's range (nor a block hook's, which would run
 *     at this entry after this hook) meets [pc, the k-th's end), native.py keeping those
 *     ranges here.
 * The times written are the quantum's true end's (the count after the k-th, plus
 * clock_offset), the new budget counts from there (remaining = k + budget, the count
 * unchanged), and the block is then charged as ever: every later budget end falls on the
 * same instruction as with the renewal made after the k-th. Refused, with nothing changed,
 * where renew_quantum refuses (next_quantum: the budget's end no quantum's, --max-insns
 * reached at the true end, a budget left of a step's size), for a ring of two threads or
 * more (a switch saves the leaving thread's registers, so it is made at the exact
 * instruction), and when a stop was asked for. A ring of one (a lone thread a debugger or
 * an event log watches: renew_quantum) is logged at the true end: the count after the
 * k-th, RIP after it, CS and CR8 (which inert instructions leave as they are).
 */
static bool renew_early(struct native_ctx *ctx, uint64_t pc, const struct block_entry *e)
{
    uint64_t k = ctx->remaining;
    uint64_t last;

    if (!ctx->renewal.armed || ctx->stop_flag || ctx->ring.count > 1 || k == 0 || k > e->inert)
        return false;
    last = pc + e->inert_ends[k - 1] - 1;       /* the k-th instruction's last byte */
    for (uint64_t i = 0; i < ctx->code_hooks; i++) {
        uint64_t begin = ctx->code_hook_ranges[2 * i];
        uint64_t end = ctx->code_hook_ranges[2 * i + 1];

        if (begin > end || (begin <= last && end >= pc))
            return false;
    }
    if (!renew_quantum(ctx, last + 1))  /* the quantum ends after the k-th: end (mod 2^64) */
        return false;
    ctx->early_renewals++;
    return true;
}

/*
 * The block entry native_block's fast path does not take: a block not in the
 * fast table (new, or one to check for rewritten bytes), a stop asked for, the
 * tail, an entry after a block the guest may rewrite. Charges it, or stops the
 * run before it; puts it in the fast table when its next entry can take the
 * fast path.
 */
static __attribute__((noinline)) void block_enter(struct native_ctx *ctx, uint64_t pc,
                                                  uint32_t size)
{
    uc_engine *uc = ctx->uc;    /* the engine the hooks are on (native_set_cr3_writer) */

    struct block_entry *e;
    uint64_t n;

    ctx->fast = ctx->no_fast;
    if (ctx->in_block && left_early(ctx->last, pc, size))
        take_back(ctx, pc);
    ctx->in_block = 0;
    if (ctx->tail_mode) {
        /* The tail: blocks in its range count per instruction; a block outside it
         * is not entered, and native.py goes on counting per block from there. */
        uint64_t into = pc - ctx->tail_pc;         /* no overflow at 2^64 */

        if (pc < ctx->tail_pc || into >= ctx->tail_size
            || size > ctx->tail_size - into) {
            ctx->tail_exit = 1;
            ctx->emu_stop(uc);
        }
        return;
    }
    if (ctx->remaining == 0 && ctx->renewal.armed && !ctx->stop_flag) {
        /* The quantum ends here: made in C when it can be (else the run stops below). */
        if (ctx->ring.count < 2)
            renew_quantum(ctx, pc);     /* a lone thread (logged for a debugger: count 1) */
        else if (ring_switch(ctx, pc, true))
            return;             /* this block is not run: the next thread's is entered */
    }
    if (ctx->stop_flag || ctx->remaining == 0) {
        ctx->stop_flag = 0;
        budget_spent(ctx);
        ctx->emu_stop(uc);
        return;
    }
    n = block_count(ctx, pc, size);
    if (n > ctx->remaining && !(renew_early(ctx, pc, ctx->last) && n <= ctx->remaining)) {
        ctx->tail_pc = pc;
        ctx->tail_size = size;
        ctx->tail_pending = 1;
        ctx->emu_stop(uc);
        return;
    }
    ctx->remaining -= n;        /* n more completed: end - remaining */
    ctx->blocks++;
    ctx->in_block = 1;          /* the block is *ctx->last */
    e = ctx->last;
    if (e->host == NULL && !e->always) {
        /* Its bytes cannot change under it: its next entry needs only its count. */
        struct fast_slot *f = fast_slot(ctx->table, pc);

        f->pc = pc;
        f->size = size;
        f->count = (uint32_t)n;
        f->e = e;
        /* The next entry may take the fast path, unless a stop was asked for meanwhile.
         * (stop_soon() from another thread sets `fast` to no_fast after stop_flag; in
         * the rare race with this store the stop comes at the next entry that takes
         * block_enter, at the latest the budget's end.) A block the guest may rewrite
         * leaves the fast path off: the next entry checks whether it was left early
         * (left_early), which no block of the fast table can be. */
        ctx->fast = ctx->stop_flag ? ctx->no_fast : ctx->table;
    }
}

/*
 * The budget ended exactly between two runs: the tail's run stopped at its cut, the
 * instruction where the quantum ends (native.py NativeHooks.start), `pc` the next one.
 * The quantum end armed before the run is made here, outside any hook, as block_enter
 * makes it at a block entry (renew_quantum; ring_switch, whose context switch and RIP
 * write need no run), so that start() goes on with a new run instead of stopping. 1 when
 * made (the next run begins at RIP: the next thread's after a switch), 0 when the run must
 * stop as ever (nothing armed, a stop asked for, no quantum's end: renew_quantum and
 * ring_switch refuse); a failed switch is left in ring.error.
 */
int native_quantum_end(struct native_ctx *ctx, uint64_t pc)
{
    if (!ctx->renewal.armed || ctx->stop_flag || ctx->remaining != 0 || ctx->tail_mode)
        return 0;
    if (ctx->ring.count < 2 ? !renew_quantum(ctx, pc) : !ring_switch(ctx, pc, false))
        return 0;
    ctx->renewal.between_runs++;
    return 1;
}

/*
 * UC_HOOK_BLOCK callback, called at the entry of each translated block, before
 * any of its instructions (measured: a stop requested here ends the run with
 * the block not executed, RIP at its first instruction). Charges the block's
 * instructions to the budget; a block bigger than the budget left is not
 * entered: the run stops before it and native.py finishes the budget inside it
 * (the tail).
 *
 * The fast path is a block of the fast table (seen before, bytes that cannot
 * change), if the budget holds it: one slot and the context's first cache line,
 * and no register saved (the rest is block_enter's), since Unicorn calls it
 * between every two blocks. What it does, each for one reason:
 *   - the slot of pc in ctx->fast: the current space's table, or, while the
 *     fast path is off, no_fast, all empty: so no flag of its own is read;
 *   - pc and size compared with the slot's: the block seen before (the size
 *     too: a block cut by the tail starts at the same pc); an empty slot's pc,
 *     FAST_EMPTY, is no block's;
 *   - count <= remaining: the budget holds the whole block (else block_enter
 *     stops before it: the tail);
 *   - remaining -= count: the budget, and the count (end - remaining) with it:
 *     no counter of instructions of its own;
 *   - blocks++: the statistic (NativeHooks.blocks);
 *   - last = its learnt block: what native_settle and native.py (_settle,
 *     completed_before) take back from when the run leaves it early.
 * Measured on `loop`, 10 M entries (docs/performance.md, "The cost model of
 * counting"): a counter of instructions beside the budget, a flag checked, and
 * code that spans two 64-byte lines each cost 2-3 ms more; as it is (61 bytes
 * from cc -O2 here, in one line: hence the alignment) it is within about 1 ms
 * of a hook that only counts (native_tally).
 */
__attribute__((aligned(64)))
void native_block(uc_engine *uc, uint64_t pc, uint32_t size, void *user_data)
{
    struct native_ctx *ctx = user_data;
    const struct fast_slot *f = fast_slot(ctx->fast, pc);
    uint64_t n = f->count;

    (void)uc;                   /* block_enter takes it from ctx: no register kept for it */
    if (__builtin_expect(f->pc == pc && f->size == size && n <= ctx->remaining, 1)) {
        ctx->remaining -= n;
        ctx->blocks++;
        ctx->last = f->e;
        return;
    }
    block_enter(ctx, pc, size);
}

/*
 * After a run (native.py _settle), the common cases without Python: RIP read
 * once (into *rip) if anything may need taking back; the last instruction
 * counted one by one taken back if RIP is still at it; the block charged last
 * left behind when RIP is outside it or at its end (a stop at a block
 * boundary, a SYSCALL that ended its block: all of it completed). in_block
 * stays set only when the run left that block at one of its own instructions
 * (a fault, a stop from a hook): native.py takes back the rest from its
 * instruction offsets. Returns 0 with *rip unread if there was nothing to
 * settle, 1 with *rip read, or Unicorn's error (negated) if RIP could not be read.
 */
int native_settle(struct native_ctx *ctx, int32_t reg_rip, uint64_t *rip)
{
    const struct block_entry *e;
    int err;

    if (!ctx->in_flight && !ctx->in_block)
        return 0;
    err = ctx->reg_read(ctx->uc, reg_rip, rip);
    if (err)
        return -err;
    if (ctx->in_flight && *rip == ctx->last_pc)
        ctx->remaining++;               /* one fewer completed: end - remaining */
    ctx->in_flight = 0;
    e = ctx->last;
    if (ctx->in_block && *rip - e->pc >= e->size) {   /* no overflow at 2^64 */
        ctx->in_block = 0;
        ctx->fast = ctx->no_fast;
    }
    return 1;
}

/* What native_switch_at_syscall calls, and the offset of QEMU's env->eflags in a
 * uc_context (found by native.py on a scratch engine; 0 disables the switch). */
void native_set_switch_calls(struct native_ctx *ctx, context_move_fn save,
                             context_move_fn restore, context_reg_fn reg_read,
                             context_reg_fn reg_write, int32_t reg_rip,
                             uint64_t eflags_at)
{
    ctx->context_save = save;
    ctx->context_restore = restore;
    ctx->context_reg_read = reg_read;
    ctx->context_reg_write = reg_write;
    ctx->reg_rip = reg_rip;
    ctx->eflags_at = eflags_at;
}

/* EFLAGS' arithmetic flags and DF: while QEMU runs guest code it keeps them out
 * of env->eflags (in CC_SRC with CC_OP_EFLAGS, and env->df), x86_cpu_exec_enter. */
#define EFLAGS_LAZY 0xcd5ull            /* CF PF AF ZF SF OF */
#define EFLAGS_DF   0x400ull

/*
 * A context switch from inside the SYSCALL hook (Unicorn's helper_syscall,
 * which adds the instruction's length, `len`, to RIP after the hook), without
 * ending the run: the CPU's state saved into `save` (NULL: not kept) as a run's
 * end would leave it, RIP past the SYSCALL; the state in `load` made the CPU's,
 * RIP at its own (minus `len`, which the helper adds back). A context keeps
 * EFLAGS whole (as after a run); inside a run QEMU keeps the lazy flags apart:
 * `load` is put in that form for the copy and given back as it was. Returns 0,
 * or Unicorn's error.
 */
int native_switch_at_syscall(struct native_ctx *ctx, void *save, void *load,
                             uint64_t len)
{
    uint64_t rip, rflags, load_rip, load_rflags, value;
    uint64_t *eflags = (uint64_t *)((char *)load + ctx->eflags_at);
    int err;

    if (ctx->eflags_at == 0)
        return -1;
    if (save != NULL) {
        if ((err = ctx->reg_read(ctx->uc, ctx->reg_rip, &rip)) != 0
            || (err = ctx->reg_read(ctx->uc, ctx->reg_rflags, &rflags)) != 0
            || (err = ctx->context_save(ctx->uc, save)) != 0)
            return err;
        value = rip + len;
        if ((err = ctx->context_reg_write(save, ctx->reg_rip, &value)) != 0
            || (err = ctx->context_reg_write(save, ctx->reg_rflags, &rflags)) != 0)
            return err;
    }
    if ((err = ctx->context_reg_read(load, ctx->reg_rip, &load_rip)) != 0
        || (err = ctx->context_reg_read(load, ctx->reg_rflags, &load_rflags)) != 0)
        return err;
    /* CC_SRC, CC_OP and DF from the flags (cpu_load_eflags), then EFLAGS as a run
     * keeps it, and RIP less what the helper adds. */
    value = load_rip - len;
    if ((err = ctx->context_reg_write(load, ctx->reg_rflags, &load_rflags)) != 0
        || (err = ctx->context_reg_write(load, ctx->reg_rip, &value)) != 0)
        return err;
    *eflags &= ~(EFLAGS_LAZY | EFLAGS_DF);
    err = ctx->context_restore(ctx->uc, load);
    ctx->context_reg_write(load, ctx->reg_rip, &load_rip);
    ctx->context_reg_write(load, ctx->reg_rflags, &load_rflags);
    return err;
}
