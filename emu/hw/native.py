"""The machine's C fast paths (native.c), loaded with ctypes.

Two hooks on the Unicorn engine, both in C so that no Python runs in the common case:

* An STLB (second-level TLB) in front of the Python page walker. Unicorn calls the
  UC_HOOK_TLB_FILL hook on every miss of QEMU's own TLB; the STLB answers the pages it has
  seen, and only its misses cost a call into Python (about 1.2 us each).
* An instruction counter with a budget, installed only while a budget is set, so that a run
  without one pays nothing. It counts per translated block (a UC_HOOK_BLOCK hook charges a
  block's instruction count at its entry: about 0.1 ns a block over the 0.7-1.4 ns of a C
  block hook that does nothing but count, docs/performance.md), and per instruction (a
  UC_HOOK_CODE hook, 7-8 ns an instruction) only for a step-sized budget, or as the
  reference the block counter is tested against (``PER_INSTRUCTION``, or
  ``EMU_COUNT=instruction`` in the environment: :attr:`NativeHooks.per_instruction`).

The walker contract, ``fill(vpage, access, cpl, rflags) -> int``:

* ``vpage`` is the page-aligned virtual address, ``access`` an :class:`Access`, ``cpl`` is
  CS & 3 and ``rflags`` is RFLAGS at CPL < 3 (only its AC bit matters there) and 0 at CPL 3.
* It returns :data:`DENY` (no translation: ``emu_start`` ends with UC_ERR_EXCEPTION, RIP at
  the faulting instruction, and the run loop raises #PF), or ``paddr | perms`` where perms is
  a :class:`Fill` combination; ``Fill.NO_CACHE`` serves the answer once without keeping it.
* Like a hardware STLB, the cache is only correct if the walker sets A on every fill and
  grants WRITE only once D is set, and if the executive calls :meth:`NativeHooks.flush` or
  :meth:`NativeHooks.invalidate` after changing a paging structure (SDM Vol. 3A 4.10.4).

Instruction counting (measured on Unicorn 2.1.4; each case is a test in test_native.py):

* ``instructions`` counts completed instructions while a budget is set. An instruction that
  faults has not completed and is not counted: a data access the walker denies (or answers
  without the needed permission), an exception whose interrupt hook stops the run (#DE, #GP:
  RIP stays at the instruction), an invalid opcode (UC_ERR_INSN_INVALID). A trap has
  completed and is counted: ``int3`` and ``int n`` (RIP past them), ``syscall`` (its hook
  runs, then RIP moves past it), ``hlt``. A denied fetch counts the jump that led there.
  (emu.hw.cpu corrects the count with :meth:`NativeHooks.account` where the machine's CPU
  differs: an ``int n`` that is a #GP, a fault raised from a hook, ``int1``.)
* After ``set_budget(n)``, the run stops after exactly n more completed instructions, with
  RIP at the next one, not executed; resuming gives the same state as one uninterrupted run,
  and the same as Unicorn's ``emu_start(count=n)`` at every step.
* A ``rep`` string instruction with c > 0 iterations counts c + 1 (each iteration is a block
  of its own, and one more entry finds RCX = 0), exactly as Unicorn's ``count=`` does.
* A stop from a memory hook ends the run right after the hooked access with RIP still at the
  accessing instruction (Unicorn's behaviour): it is not counted and runs again on resume.
  A store has landed by then (the write hook runs before it, measured: `inc [m]` stopped
  there leaves m + 1 and runs again), so whoever resumes must undo it first (the debugger's
  watchpoints do). An access QEMU makes in a helper (`cmpxchg16b`, `fxsave`) does not stop
  the run until the next block.
* The count is exact only when the guest runs through :meth:`NativeHooks.start`: when a run
  ends, it takes back the last counted instruction if RIP still points at it. That cannot
  tell a fault from an instruction that completed with RIP at itself (``jmp $``, a ``rep``
  iteration with RCX still non-zero) when a ``timeout`` lands right after it: that case is
  counted one short. A fault whose interrupt hook resumes elsewhere instead of stopping the
  run stays counted. The budget's own stop is always exact.

Block counting gives the same counts (a test runs every guest app both ways):

* A block's instructions are learnt on its first entry, keyed by its address, its size in
  bytes (what Unicorn reports: the bytes QEMU translated, which end at the block's last
  instruction) and the address space (CR3): the caller's ``code(pc, size)`` decodes them.
  :meth:`NativeHooks.forget_blocks` forgets them all when translated code is dropped or a
  new image is loaded. A block on a page guest code may write keeps a copy of its bytes,
  compared at every entry: rewritten, it is learnt again, as QEMU translates it again.
* When a run leaves a block early (a fault, an exception, a stop from a hook), the
  instructions from RIP to the block's end are taken back: RIP names the first one that
  did not complete. A stop at a block boundary takes back nothing.
* A ``rep`` string instruction is a block of its own for each iteration: c + 1 as before.
* A budget smaller than the next block stops the run before that block (a stop asked for
  by the block hook ends the run with none of the block executed, measured), and the rest
  is run to the instruction where the budget ends, given to Unicorn as the run's end
  (``until``): QEMU translates the block cut there, the counter charges the cut block (its
  count known from the whole block's, without decoding it again), and the stop is exact.
  (When the caller passes an ``until`` of its own, or the block is not known, the rest is
  run with the per-instruction hook on that block's bytes alone, as a step-sized budget is.)
* :meth:`NativeHooks.stop_soon` stops at the next block boundary (the next instruction
  when counting per instruction).
* :meth:`NativeHooks.arm_renewal` lets the next run go on where its budget ends at a block
  boundary (a lone thread's quantum end): the budget is renewed there in C, KUSER_SHARED_DATA's
  times are written, and :attr:`NativeHooks.renewals` counts it; nothing else differs from a
  stop followed by ``set_budget`` of the same budget and a new run. A stop asked for, a limit
  reached, a budget left of a step's size, or the count where the caller cut the budget
  short (``stop_at``: a debugger's step or snapshot; the quantum ends at ``budget_end``)
  stops as ever; every Python hook calls :meth:`NativeHooks.disarm` at its entry (the
  walker, the page walk alone, leaves it armed).
* A budget that ends inside a block, after its first k instructions (0 < k < its count),
  is renewed the same way at that block's entry (native.c ``renew_early``,
  :attr:`NativeHooks.early_renewals`) when those k are inert (the third value ``code``
  gives: no memory access, no fault or trap, emu/hw/blocks.py ``inert``) and no range
  :meth:`NativeHooks.watch_code` keeps (a Python code or block hook's) meets them: the
  times are those of the count after the k-th, the next budget counts from there, and the
  block is charged as ever, so nothing differs from the renewal after the k-th. Never
  while a ring of two threads or more is armed (``arm_ring``: each switch is made at its
  exact instruction); a ring of one's is logged at the true end (the count and RIP after
  the k-th). Otherwise the run stops before the block and the tail (above) finishes the
  budget; the quantum end armed is then made right after the tail's run, before the next
  (native.c ``native_quantum_end``, :attr:`NativeHooks.between_runs`), when no Python hook
  ran since the arming, and :meth:`NativeHooks.start` goes on.
  :meth:`NativeHooks.arm_ring` makes the preempted switch between threads there instead
  (their contexts swapped, RIP written so that Unicorn leaves the block it was about to
  run, CR3, TSS.RSP0, the times; between two runs the contexts plainly saved and loaded),
  each switch logged (``SwitchLogged``) and given to ``on_switches`` before any Python code
  runs (``disarm``, the walker, the learner); a ring of one thread is the renewal, logged
  as its switch to itself.
* A guest store into the bytes of the block being executed makes QEMU leave the block at
  the store and run the store again as a block of one instruction (measured). The block
  counter sees a block that starts inside the last one and ends before it (no other block
  does: a jump back into a loop runs to the same end) and takes back the last block's
  instructions from there, so the store counts once. The per-instruction counter counts
  that store twice (a limit of the reference, not of the default counter).
"""

from __future__ import annotations

import array
import ctypes
import enum
import itertools
import os
import pathlib
import shlex
import shutil
import struct
import subprocess
import tempfile
import weakref
from collections.abc import Callable
from functools import cache
from typing import NamedTuple

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_OK,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_TLB_FILL,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn.unicorn_py3 import unicorn as _binding
from unicorn.unicorn_py3.unicorn import UcContext
from unicorn.x86_const import (
    UC_X86_REG_CR3,
    UC_X86_REG_CR8,
    UC_X86_REG_CS,
    UC_X86_REG_RFLAGS,
    UC_X86_REG_RIP,
)

_SOURCE = pathlib.Path(__file__).with_name("native.c")
_CFLAGS = ["-O2", "-shared", "-fPIC", "-Wall", "-Werror"]  # as the Makefile's rule


def _remove_cache(uc: Uc, start: int, end: int) -> None:
    """Drop the translations of [start, end): Unicorn takes the end as a uint64 and
    refuses an empty range (a step's span ends at 2^64 at most: RIP set near the top of
    the address space), so the range is cut at 2^64 - 1."""
    end = min(end, (1 << 64) - 1)
    if start < end:
        uc.ctl_remove_cache(start, end)


class Mode(enum.IntEnum):
    """The STLB's privilege modes (native.c `enum mode`)."""

    USER = 0           # CPL 3
    KERNEL_AC0 = 1     # CPL < 3, RFLAGS.AC clear (SMAP enforced when CR4.SMAP)
    KERNEL_AC1 = 2     # CPL < 3, RFLAGS.AC set


def mode_of(cpl: int, rflags: int) -> Mode:
    """The STLB mode of an access at `cpl` with `rflags`, as native_tlb_fill computes it."""
    if cpl == 3:
        return Mode.USER
    return Mode.KERNEL_AC1 if rflags & (1 << 18) else Mode.KERNEL_AC0


class Access(enum.IntEnum):
    """The access that missed QEMU's TLB (Unicorn's uc_mem_type)."""

    READ = 16
    WRITE = 17
    FETCH = 18


class Fill(enum.IntFlag):
    """Low bits of a walker's answer, OR-ed into the physical page address."""

    READ = 1  # UC_PROT_READ
    WRITE = 2  # UC_PROT_WRITE: grant only once the PTE's D bit is set
    EXEC = 4  # UC_PROT_EXEC
    NO_CACHE = 8  # serve this answer once; keep it out of the STLB
    GLOBAL = 16  # a global translation (PTE.G with CR4.PGE): cached for every PCID


DENY = -1  # the walker's answer when the access must fault (any negative number does)

STLB_ENTRIES = (1 << 14) * 4     # native.c: STLB_SETS * STLB_WAYS
PCIDS = 4096                     # native.c: PCIDS (CR3[11:0] names one)
_OWNER_SHIFT, _OWNER_GLOBAL = 48, PCIDS   # native.c: a tag's owner field, and global's
# native.c native_invalidate: which of a page's entries go.
_DROP_GLOBAL, _DROP_PCID, _DROP_EVERY = 1, 2, 4

_WALKER = ctypes.CFUNCTYPE(
    ctypes.c_int64, ctypes.c_uint64, ctypes.c_int32, ctypes.c_int32, ctypes.c_uint64
)
_LEARNER = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64)
_DONE = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_uint64)
_LEARN_WRITABLE = 1 << 32  # native.c LEARN_WRITABLE: keep a copy of the bytes, compare it
# native.c LEARN_INERT_SHIFT: the block's inert first instructions (renew_early), their
# ends in learn_ends (room for LEARN_INERT_MAX).
_LEARN_INERT_SHIFT, _INERT_MAX = 40, 1024
# uc_ctl(UC_CTL_TLB_FLUSH) called straight, without the binding's argument encoding and
# checks (every INVLPG and CR3 load flushes QEMU's TLB): libunicorn's own function, no
# argtypes, and the request code as uc.h's UC_CTL_WRITE(UC_CTL_TLB_FLUSH, 0) builds it.
_uc_ctl = ctypes.CDLL(_binding.uclib._name).uc_ctl
_MASK64 = (1 << 64) - 1
_TLB_FLUSH = UC_CTL_IO_WRITE << 30 | UC_CTL_TLB_FLUSH
# uc_reg_read(RIP) the same way, for the settling after every run (the binding's reg_read
# picks a register class and builds a value: about 2 us against 0.4 us raw).
_uc_reg_read = ctypes.CDLL(_binding.uclib._name).uc_reg_read
# uc_emu_start the same way, for every run (a context switch starts one): the binding's
# emu_start converts its four integers through argtypes each call; here they go as
# c_uint64 objects kept by the engine's NativeHooks, their values set in place.
_uc_emu_start = ctypes.CDLL(_binding.uclib._name).uc_emu_start
_NO_COUNT = ctypes.c_size_t(0)
# A budget this small (a debugger's step) runs per instruction from its start, over the
# next _TAIL_SPAN bytes (more than any block: QEMU ends one within a page of its start).
_SMALL_BUDGET = 16
_TAIL_SPAN = 0x2000

# SYSCALL's length (0F 05), which Unicorn adds to RIP after the hook.
_SYSCALL_LENGTH = 2
# Two RFLAGS values (IF alone; IF with every arithmetic flag, DF, AC and TF) that tell
# env->eflags apart from every other slot of a saved context.
_PROBE_RFLAGS = (0x202, 0x4_4fd7)

# The per-instruction counter for every run (the reference the block counter is tested
# against: tests set it to compare the two); new NativeHooks read it.
PER_INSTRUCTION = os.environ.get("EMU_COUNT") == "instruction"


class _Ctx(ctypes.Structure):
    """The head of native.c's struct native_ctx, field for field.

    The instructions completed are ``end - remaining`` (mod 2^64): the block counter's fast
    path moves ``remaining`` alone. Taking instructions back gives them back to the budget
    (``remaining += n``); setting the budget (NativeHooks.set_budget, account) or the count
    (:attr:`instructions`) moves ``end`` with it."""

    _fields_ = [
        ("remaining", ctypes.c_uint64),
        ("fast", ctypes.c_void_p),
        ("last", ctypes.c_void_p),
        ("blocks", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("in_block", ctypes.c_uint64),
        ("space", ctypes.c_uint64),
        ("table", ctypes.c_void_p),
        ("no_fast", ctypes.c_void_p),
        ("fills", ctypes.c_uint64),
        ("stlb_hits", ctypes.c_uint64),
        ("last_pc", ctypes.c_uint64),
        ("in_flight", ctypes.c_uint64),
        ("reg_read", ctypes.c_void_p),
        ("emu_stop", ctypes.c_void_p),
        ("walker", ctypes.c_void_p),
        ("reg_cs", ctypes.c_int32),
        ("reg_rflags", ctypes.c_int32),
        ("learn", ctypes.c_void_p),
        ("done_before", ctypes.c_void_p),
        ("learn_host", ctypes.c_uint64),
        ("stop_flag", ctypes.c_uint64),
        ("tail_pc", ctypes.c_uint64),
        ("tail_size", ctypes.c_uint64),
        ("tail_pending", ctypes.c_uint64),
        ("tail_mode", ctypes.c_uint64),
        ("tail_exit", ctypes.c_uint64),
        ("learned", ctypes.c_uint64),
    ]

    @property
    def instructions(self) -> int:
        """Instructions completed: ``end - remaining`` (mod 2^64)."""
        return (self.end - self.remaining) & _MASK64

    @instructions.setter
    def instructions(self, value: int) -> None:
        self.end = (value + self.remaining) & _MASK64

    def leave_block(self) -> None:
        """The run is no longer inside the block charged last (native.c: the next entry
        takes block_enter, its fast table switched off)."""
        self.in_block = 0
        self.fast = self.no_fast


class _Renewal(ctypes.Structure):
    """native.c's struct renewal (a lone thread's quantum renewed at a block entry), at
    native_renewal_at() in the context."""

    _fields_ = [
        ("armed", ctypes.c_uint64),
        ("quantum", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("clock_offset", ctypes.c_uint64),
        ("renewals", ctypes.c_uint64),
        ("kuser", ctypes.c_void_p),
        ("interrupt_time_at", ctypes.c_uint64),
        ("tick_count_at", ctypes.c_uint64),
        ("system_time_at_boot", ctypes.c_uint64),
        ("time_increment", ctypes.c_uint64),
        ("budget_end", ctypes.c_uint64),
        ("stop_at", ctypes.c_uint64),
        ("between_runs", ctypes.c_uint64),
    ]


class _Early(ctypes.Structure):
    """The last fields of native.c's struct native_ctx (a lone thread's quantum renewed at
    the entry of the block its budget ends in: native.c ``renew_early``), at
    native_early_at() in the context."""

    _fields_ = [
        ("early_renewals", ctypes.c_uint64),
        ("code_hooks", ctypes.c_uint64),
        ("code_hook_ranges", ctypes.c_void_p),
        ("learn_ends", ctypes.c_void_p),
    ]


RING_THREADS = 64      # native.c: the threads a ring of preempted switches may hold
_RING_LOG = 1024       # native.c RING_LOG


class _RingThread(ctypes.Structure):
    """native.c's struct ring_thread: one thread of a ring."""

    _fields_ = [
        ("context", ctypes.c_void_p),
        ("cr3", ctypes.c_uint64),
        ("cr3_value", ctypes.c_uint64),
        ("pcid", ctypes.c_uint32),
        ("flush", ctypes.c_uint32),
        ("rsp0", ctypes.c_uint64),
    ]


class SwitchLogged(NamedTuple):
    """A switch made in C (NativeHooks.arm_ring), as given to ``on_switches``: the
    instructions completed then, where the next thread resumes (RIP, CS), and CR8 as the
    leaving thread left it and as the next one has it (native.c struct ring_log, field for
    field: one uint64 each)."""

    count: int
    rip: int
    cs: int
    cr8_leaving: int
    cr8: int


_RING_LOG_ENTRY = struct.Struct(f"={len(SwitchLogged._fields)}Q")   # a ring_log's bytes


class _Ring(ctypes.Structure):
    """native.c's struct ring (the preempted switches made at a block entry), at
    native_ring_at() in the context."""

    _fields_ = [
        ("count", ctypes.c_uint64),
        ("current", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("tss_rsp0", ctypes.c_void_p),
        ("logged", ctypes.c_uint64),
        ("switches", ctypes.c_uint64),
        ("error", ctypes.c_int64),
        ("reg_cr8", ctypes.c_int32),
        ("threads", _RingThread * RING_THREADS),
        ("log", ctypes.c_uint8 * (_RING_LOG_ENTRY.size * _RING_LOG)),   # struct ring_log
    ]


@cache
def _context_eflags_offset() -> int:
    """Where a uc_context keeps QEMU's env->eflags (from the context's start), found on a
    scratch engine: the one 8-byte slot that holds RFLAGS | 2 for two different RFLAGS
    written before a save (cpu_load_eflags). 0 if this Unicorn keeps it elsewhere or
    twice: then no switch is made inside the SYSCALL hook."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    size = _binding.uclib.uc_context_size(uc._uch)
    images = []
    for rflags in _PROBE_RFLAGS:
        uc.reg_write(UC_X86_REG_RFLAGS, rflags)
        context = uc.context_save()
        images.append((rflags | 2, ctypes.string_at(context._context.value, size)))
    found = [offset for offset in range(0, size - 7, 8)
             if all(int.from_bytes(image[offset:offset + 8], "little") == value
                    for value, image in images)]
    return found[0] if len(found) == 1 else 0


class _BlockEntry(ctypes.Structure):
    """native.c's struct block_entry: a learnt block."""

    _fields_ = [
        ("pc", ctypes.c_uint64),
        ("space", ctypes.c_uint64),
        ("size", ctypes.c_uint32),
        ("count", ctypes.c_uint32),
        ("host", ctypes.c_void_p),
        ("copy", ctypes.c_void_p),
        ("always", ctypes.c_uint32),
        ("inert", ctypes.c_uint32),
        ("inert_ends", ctypes.c_void_p),
    ]


def library_path() -> pathlib.Path:
    """Where the compiled native.c lives: emu/hw/_native.so."""
    return pathlib.Path(__file__).with_name("_native.so")


def ensure_built() -> pathlib.Path:
    """Return the library, compiling native.c first if the .so is missing or older."""
    lib = library_path()
    if lib.exists() and (not _SOURCE.exists() or lib.stat().st_mtime >= _SOURCE.stat().st_mtime):
        return lib
    cc = shlex.split(os.environ.get("CC") or "cc")
    if shutil.which(cc[0]) is None:
        raise RuntimeError(f"cannot build {lib.name}: no C compiler {cc[0]!r} (set $CC)")
    # Build beside the target and rename, so that concurrent builders never see half a file.
    try:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    except OSError as err:
        raise RuntimeError(f"cannot build {lib.name}: {err}") from err
    os.close(fd)
    try:
        done = subprocess.run(
            [*cc, *_CFLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"cannot build {lib.name}: {done.stderr.strip()}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


@cache
def _library() -> ctypes.CDLL:
    """Load the library once and declare its functions."""
    lib = ctypes.CDLL(str(ensure_built()))
    lib.native_ctx_size.restype = ctypes.c_size_t
    lib.native_ctx_size.argtypes = []
    lib.native_open.restype = ctypes.c_void_p
    lib.native_open.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int32] * 2
    lib.native_close.argtypes = [ctypes.c_void_p]
    lib.native_flush.argtypes = [ctypes.c_void_p]
    lib.native_invalidate.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                                      ctypes.c_uint32]
    lib.native_flush_pcid.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.native_flush_nonglobal.argtypes = [ctypes.c_void_p]
    lib.native_set_pcid.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.native_set_cr3_writer.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int32]
    lib.native_set_switch_calls.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int32,
                                                                    ctypes.c_uint64]
    lib.native_stlb_entries.restype = ctypes.c_size_t
    lib.native_stlb_entries.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.native_forget_blocks.argtypes = [ctypes.c_void_p]
    lib.native_set_space.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.native_insert.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t,
                                  ctypes.POINTER(ctypes.c_uint64)]
    lib.native_renewal_at.restype = lib.native_renewal_size.restype = ctypes.c_size_t
    lib.native_renewal_at.argtypes = lib.native_renewal_size.argtypes = []
    if lib.native_ctx_size() != ctypes.sizeof(_Ctx):
        raise RuntimeError(f"{library_path().name}: struct native_ctx differs from _Ctx")
    if lib.native_renewal_size() != ctypes.sizeof(_Renewal):
        raise RuntimeError(f"{library_path().name}: struct renewal differs from _Renewal")
    lib.native_early_at.restype = lib.native_early_size.restype = ctypes.c_size_t
    lib.native_early_at.argtypes = lib.native_early_size.argtypes = []
    if lib.native_early_size() != ctypes.sizeof(_Early):
        raise RuntimeError(f"{library_path().name}: struct native_ctx's end differs from _Early")
    lib.native_ring_at.restype = lib.native_ring_size.restype = ctypes.c_size_t
    lib.native_ring_at.argtypes = lib.native_ring_size.argtypes = []
    if lib.native_ring_size() != ctypes.sizeof(_Ring):
        raise RuntimeError(f"{library_path().name}: struct ring differs from _Ring")
    return lib


def _address(function: ctypes._CFuncPtr) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value


def _release(lib: ctypes.CDLL, uc_ref: weakref.ref, hooks: list[int], ctx: int) -> None:
    """Remove the hooks (unless the engine is going away too), then free the context."""
    uc = uc_ref()
    if uc is not None:
        for handle in hooks:
            _binding.uclib.uc_hook_del(uc._uch, handle)
    hooks.clear()
    lib.native_close(ctx)


class NativeHooks:
    """The machine's C fast paths: an STLB in front of the Python page walker, and an
    instruction counter."""

    def __init__(self, uc: Uc, fill: Callable[[int, int, int, int], int],
                 code: Callable[[int, int], tuple] | None = None) -> None:
        """Register the TLB-fill hook on `uc` (already in UC_TLB_VIRTUAL mode). ``code(pc,
        size)`` gives the offsets of the instructions of the block of ``size`` bytes at
        ``pc`` (decoded as the CPU runs it), and, if the guest may write those bytes, the
        host address where they are (0 when not in one piece), else None; and, optionally
        third, how many of its first instructions are inert (no memory access, no fault or
        trap: a quantum may be renewed at the block's entry when its budget ends among
        them, native.c ``renew_early``; 0 when not given). Without it every instruction is
        counted."""
        lib = _library()
        self._uc = uc
        self._rip_value = ctypes.c_uint64()
        self._rip_ref = ctypes.byref(self._rip_value)
        # uc_emu_start's arguments (begin, until, timeout; count is always 0), reused.
        self._start_args = (ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64())
        self._lib = lib
        errors: list[BaseException] = []
        stop = _binding.uclib.uc_emu_stop
        uch = uc._uch

        ring_box: list[_Ring] = []
        # [armed]: arm_renewal armed the run since the last disarm. Only then can C have
        # logged switches (disarm takes them all), so the callbacks below read the log (a
        # ctypes field) only then: a plain list read on every walk otherwise.
        armed: list[bool] = [False]

        def catch_up() -> None:
            """Python's books brought up to the switches C made (before any Python reads
            them: the walker reads CR3, the learner the address space)."""
            hooks = hooks_ref()
            if hooks is not None:
                hooks._take_switches()

        def walker(vpage: int, access: int, cpl: int, rflags: int) -> int:
            try:
                if armed[0] and ring_box[0].logged:
                    catch_up()
                return fill(vpage, access, cpl, rflags)
            except BaseException as exc:  # noqa: B036 - re-raised by start()
                errors.append(exc)
                stop(uch)
                return DENY

        offsets: dict[tuple[int, int, int], list[int]] = {}
        hosts: dict[tuple[int, int, int], int | None] = {}
        inerts: dict[tuple[int, int, int], int] = {}
        ctx_box: list[_Ctx] = []
        # (key, offsets, host, inert) of a block cut by _cut, known ahead
        cut: list[tuple] = []
        # Where the learner gives C the ends of a block's inert first instructions.
        ends = (ctypes.c_uint16 * _INERT_MAX)()

        def learner(pc: int, size: int) -> int:
            ctx = ctx_box[0]
            key = (pc, size, ctx.space)
            try:
                if armed[0] and ring_box[0].logged:
                    catch_up()
                if cut and cut[0][0] == key:
                    _, found, host, inert = cut.pop()    # the first instructions of a block
                else:                                    # decoded a moment ago: no decoding
                    cut.clear()
                    found, host, *more = code(pc, size)
                    inert = min(more[0], len(found), _INERT_MAX) if more else 0
            except BaseException as exc:  # noqa: B036 - re-raised by start()
                errors.append(exc)
                stop(uch)
                return 1
            offsets[key] = found
            hosts[key] = host
            inerts[key] = inert
            answer = len(found)
            if inert:
                # The end of instruction i + 1 is where instruction i + 2 begins (the
                # block's end after its last).
                ends[:inert] = [*found[1:inert + 1], size][:inert]
                answer |= inert << _LEARN_INERT_SHIFT
            if host is None:
                return answer
            ctx.learn_host = host
            return answer | _LEARN_WRITABLE

        # The closures must not reference self, or the finalizer would keep self alive.
        self._errors = errors
        self._code = code
        self._offsets = offsets
        self._hosts = hosts
        self._cut_ahead = cut
        self._inerts = inerts
        self._ends = ends
        self._walker = _WALKER(walker)
        self._learner = _LEARNER(learner)
        ctx = lib.native_open(
            _address(_binding.uclib.uc_reg_read),
            _address(stop),
            _address(self._walker),
            UC_X86_REG_CS,
            UC_X86_REG_RFLAGS,
        )
        if not ctx:
            raise MemoryError("native_open: no memory for the STLB")
        self._ctx_ptr = ctx
        self._ctx = _Ctx.from_address(ctx)
        self._ctx.learn = _address(self._learner)
        self._renewal = _Renewal.from_address(ctx + lib.native_renewal_at())
        self._ring = _Ring.from_address(ctx + lib.native_ring_at())
        self._ring.reg_cr8 = UC_X86_REG_CR8
        self._early = _Early.from_address(ctx + lib.native_early_at())
        self._early.learn_ends = ctypes.addressof(ends)
        # The Python hooks that see instructions (watch_code): handle -> (begin, end), and
        # the array C reads them from (kept alive here), made anew by the next arm_renewal
        # after a change (only an armed run renews early).
        self._watched: dict[int, tuple[int, int]] = {}
        self._watched_array = (ctypes.c_uint64 * 0)()
        self._watched_changed = False
        ring_box.append(self._ring)
        # [whether arm_renewal armed the run since the last disarm]: a hook's disarm reads
        # only this when not (shared with the callbacks above).
        self._armed = armed
        # Called with each switch C made (SwitchLogged), in order, before any Python code
        # reads what they changed (the dispatcher's books: arm_ring).
        self.on_switches: Callable[[list[SwitchLogged]], None] | None = None
        hooks_ref = weakref.ref(self)

        def done_before(pc: int) -> int:
            hooks = hooks_ref()
            try:
                if armed[0] and hooks is not None and ring_box[0].logged:
                    hooks._take_switches()
                return -1 if hooks is None else hooks._done_in_block(pc)
            except BaseException as exc:  # noqa: B036 - re-raised by start()
                errors.append(exc)
                stop(uch)
                return -1

        self._done = _DONE(done_before)
        self._ctx.done_before = _address(self._done)
        ctx_box.append(self._ctx)
        self._handles: list[int] = []
        self._finalizer = weakref.finalize(self, _release, lib, weakref.ref(uc), self._handles, ctx)
        self._tlb_hook = self._hook_add(UC_HOOK_TLB_FILL, lib.native_tlb_fill)
        self._code_hook: int | None = None     # the per-instruction counter, when on
        self._block_hook: int | None = None    # the block counter, when on
        self._per_instruction = PER_INSTRUCTION or code is None
        self._pcid = 0                         # native_ctx.pcid, as set_pcid left it
        self._ctx_arg = ctypes.c_void_p(ctx)
        self._cr3_arg = ctypes.c_uint64()      # native_load_cr3's value, set in place
        self._switch_ready = _context_eflags_offset() != 0
        self._load_cr3 = ctypes.CDLL(lib._name).native_load_cr3   # without argtypes
        self._native_settle = ctypes.CDLL(lib._name).native_settle   # the same
        lib.native_set_cr3_writer(ctx, _address(_binding.uclib.uc_reg_write), uc._uch,
                                  UC_X86_REG_CR3)
        self._switch = ctypes.CDLL(lib._name).native_switch_at_syscall   # without argtypes
        self._quantum_end = ctypes.CDLL(lib._name).native_quantum_end     # the same
        lib.native_set_switch_calls(ctx, *(_address(getattr(_binding.uclib, name)) for name in (
            "uc_context_save", "uc_context_restore", "uc_context_reg_read",
            "uc_context_reg_write")), UC_X86_REG_RIP, _context_eflags_offset())

    def _hook_add(self, htype: int, callback: ctypes._CFuncPtr, begin: int = 1,
                  end: int = 0) -> int:
        handle = _binding.uc_hook_h()
        status = _binding.uclib.uc_hook_add(
            self._uc._uch, ctypes.byref(handle), htype, _address(callback), self._ctx_ptr,
            ctypes.c_uint64(begin), ctypes.c_uint64(end)
        )
        if status != UC_ERR_OK:
            raise UcError(status)
        self._handles.append(handle.value)
        return handle.value

    def _hook_del(self, handle: int) -> None:
        _binding.uclib.uc_hook_del(self._uc._uch, handle)
        self._handles.remove(handle)

    def start(self, begin: int, until: int = 0, timeout: int = 0) -> None:
        """Run the guest like ``uc.emu_start`` (never with its ``count``), then settle the
        instruction count and re-raise an exception the walker raised during the run.

        A budget that ends inside a block is finished there (the tail): the block is run
        again to the instruction where the budget ends, given to Unicorn as the run's end
        (``until``), or, when the caller gave one, with the per-instruction counter on that
        block alone; either way the stop is exact. A quantum end armed for the run
        (``arm_renewal``, ``arm_ring``) that falls there is made between the two runs, when
        no Python hook ran since the arming (native.c ``native_quantum_end``), and the run
        goes on."""
        self._check_open()
        ctx = self._ctx
        renewal = self._renewal
        pc, tail, end = begin, None, until
        if self._block_hook is not None and 0 < ctx.remaining <= _SMALL_BUDGET:
            # A step: per instruction from the start (the span ends at 2^64 at most).
            tail = (begin, min(_TAIL_SPAN, (1 << 64) - begin))
        while True:
            if tail is None:
                self._run(pc, end, timeout)
            else:
                self._run_tail(pc, tail, end, timeout)
            if self._errors:
                break
            if not ctx.remaining:
                # The tail's run ended at its cut: the quantum's end, if one is armed and
                # no Python code ran since (it may have changed what armed it).
                if not (end and not until and self._armed[0]):
                    break
                renewal.armed = 1
                if self._quantum_end(self._ctx_arg, ctypes.c_uint64(end)) != 1:
                    renewal.armed = 0
                    break
                pc, tail, end = self._rip(), None, until
                continue
            renewal.armed = 0                 # the tail and what follows: stop as ever
            if ctx.tail_pending:              # the budget ends inside the next block
                pc, tail, end = ctx.tail_pc, None, self._cut(ctx.tail_pc, ctx.tail_size)
                if until or end is None:
                    tail, end = (ctx.tail_pc, ctx.tail_size), until
            elif ctx.tail_exit:               # the tail ran out of its range first
                pc, tail, end = self._rip(), None, until
            else:
                break
        ctx.tail_pending = ctx.tail_exit = 0

    def _cut(self, pc: int, size: int) -> int | None:
        """Where the budget left ends inside the block of ``size`` bytes at ``pc``: the
        address of its first instruction not to run (None if the block is not known).

        Run with that as ``until``, QEMU translates the block anew, cut there (its
        translator ends a block at the run's end, and Unicorn drops that translation
        after the run, cpus.c resume_all_vcpus): the block counter charges the cut block,
        exactly the budget left, and the run stops at the cut with nothing more run."""
        space = self._ctx.space
        key = (pc, size, space)
        offsets = self._offsets.get(key)
        left = self._ctx.remaining
        if offsets is None or not 0 < left < len(offsets) or key not in self._hosts:
            return None
        end = pc + offsets[left]
        # Its count is known: the learner takes it from here instead of decoding it again.
        self._cut_ahead[:] = [((pc, end - pc, space), offsets[:left], self._hosts[key],
                               min(self._inerts.get(key, 0), left))]
        _remove_cache(self._uc, pc, pc + size)       # the whole block's translation
        return end

    def _run(self, begin: int, until: int, timeout: int) -> None:
        """``uc.emu_start(begin, until, timeout)`` in one raw call (what the binding's does:
        an exception a Python hook raised is re-raised after it), then the settling."""
        self._errors.clear()
        ctx = self._ctx
        ctx.tail_pending = ctx.tail_exit = 0
        uc = self._uc
        uc._hook_exception = None
        start_begin, start_until, start_timeout = self._start_args
        start_begin.value, start_until.value, start_timeout.value = begin, until, timeout
        status = _uc_emu_start(uc._uch, start_begin, start_until, start_timeout, _NO_COUNT)
        if status == UC_ERR_OK and uc._hook_exception is not None:
            raise uc._hook_exception         # as the binding raises it: nothing settled
        self._settle()
        if status != UC_ERR_OK:
            failure = UcError(status)
            if self._errors:
                raise self._errors[0] from failure
            raise failure
        if self._errors:
            raise self._errors[0]

    def _run_tail(self, begin: int, span: tuple[int, int], until: int, timeout: int) -> None:
        """Run from ``begin`` with the instructions of ``span`` (start, size) counted one by
        one (a code hook on those bytes alone; their translations are dropped before, and
        after by Unicorn itself: deleting a hook invalidates every block translated with
        it, uc.c uc_hook_del); a block outside it stops the run before it is entered."""
        ctx = self._ctx
        start, size = span
        hook = self._hook_add(UC_HOOK_CODE, self._lib.native_count, start, start + size - 1)
        _remove_cache(self._uc, start, start + size)
        ctx.tail_pc, ctx.tail_size, ctx.tail_mode = start, size, 1
        ctx.fast = ctx.no_fast                     # the tail's blocks take block_enter
        try:
            self._run(begin, until, timeout)
        finally:
            ctx.tail_mode = 0
            self._hook_del(hook)

    def _settle(self) -> None:
        """Take back what the run did not complete: the last counted instruction if RIP
        still points at it (per-instruction counting), or the instructions of the block
        from RIP on if the run left the block there (block counting). One C call
        (native.c ``native_settle``) reads RIP and settles every case but a block left at
        one of its own instructions, which needs the block's instruction offsets."""
        status = self._native_settle(self._ctx_arg, UC_X86_REG_RIP, self._rip_ref)
        if status <= 0:
            if status:
                raise UcError(-status)
            return                           # nothing to settle: RIP not even read
        ctx = self._ctx
        if ctx.in_block:
            rip = self._rip_value.value
            ctx.leave_block()
            block = self._block()
            # Taken back, to the budget: the count (end - remaining) goes down with it.
            ctx.remaining += block.count - self._done_in_block(rip, block)

    def rip(self) -> int:
        """RIP, in one raw uc_reg_read."""
        return self._rip()

    def _rip(self) -> int:
        """RIP, in one raw uc_reg_read."""
        status = _uc_reg_read(self._uc._uch, UC_X86_REG_RIP, self._rip_ref)
        if status != UC_ERR_OK:
            raise UcError(status)
        return self._rip_value.value

    def _done_in_block(self, pc: int, block: _BlockEntry | None = None) -> int:
        """Instructions of the block charged last (``block``, if already at hand) that
        come before ``pc`` (all of them when ``pc`` is not one of its instructions: the run
        left the block at its end)."""
        if block is None:
            block = self._block()
        start, size = block.pc, block.size
        if not start <= pc < start + size:
            return block.count
        key = (start, size, block.space)
        offsets = self._offsets.get(key)
        if offsets is None:
            offsets = self._offsets[key] = self._code(start, size)[0]
        try:
            return offsets.index(pc - start)
        except ValueError:
            return block.count

    def _block(self) -> _BlockEntry:
        """The block charged last (valid while ``in_block``)."""
        return _BlockEntry.from_address(self._ctx.last)

    def flush(self) -> None:
        """Empty the STLB (every PCID's entries and the global ones) and QEMU's TLB, as a
        MOV to CR4 that changes PGE or clears PCIDE does (SDM Vol. 3A 4.10.4.1)."""
        self._check_open()
        self._lib.native_flush(self._ctx_ptr)
        self._flush_qemu_tlb()

    def flush_pcid(self, pcid: int) -> None:
        """Drop the STLB's entries of ``pcid`` but the global ones (a MOV to CR3 without
        bit 63, INVPCID single-context). QEMU's TLB is left to the caller."""
        self._check_open()
        self._lib.native_flush_pcid(self._ctx_ptr, pcid & (PCIDS - 1))

    def flush_nonglobal(self) -> None:
        """Drop every PCID's entries but the global ones (INVPCID type 3). QEMU's TLB is
        left to the caller."""
        self._check_open()
        self._lib.native_flush_nonglobal(self._ctx_ptr)

    def set_pcid(self, pcid: int) -> None:
        """The PCID the walker's answers are cached for from now on (CR3[11:0])."""
        self._pcid = pcid & (PCIDS - 1)
        self._lib.native_set_pcid(self._ctx_ptr, self._pcid)

    def load_cr3(self, value: int, pcid: int, flush: bool) -> None:
        """A MOV to CR3 of ``value`` (bit 63 clear), in one call: ``set_space`` of its page
        tables (bits 12 and up), ``set_pcid(pcid)``, with ``flush`` ``flush_pcid(pcid)``,
        and Unicorn's CR3 register set to ``value`` (with CR0.PG set, QEMU flushes its own
        TLB on that write: measured, Unicorn 2.1.4)."""
        self._pcid = pcid = pcid & (PCIDS - 1)
        # No argtypes: the context and the value go as ready ctypes objects, the PCID and
        # the flag as small ints (a switch's call: argument conversion is most of its cost).
        self._cr3_arg.value = value
        status = self._load_cr3(self._ctx_arg, self._cr3_arg, pcid, 1 if flush else 0)
        if status != UC_ERR_OK:
            raise UcError(status)

    @property
    def can_switch_at_syscall(self) -> bool:
        """Whether ``switch_at_syscall`` works with this Unicorn (the layout of its saved
        contexts was found) and the run is one it can go on with: counted per block, no
        tail and no step under way, no stop asked for."""
        ctx = self._ctx
        return self._switch_ready and self._block_hook is not None and \
            not self._per_instruction and not ctx.tail_mode and not ctx.stop_flag

    @staticmethod
    def runs_budget(n: int) -> bool:
        """Whether a budget of ``n`` is counted per block from a run's start, as a run
        goes on (not a step's: ``start`` counts a budget of 16 or less per instruction)."""
        return n > _SMALL_BUDGET

    def switch_at_syscall(self, save: UcContext | None, load: UcContext) -> None:
        """From inside the SYSCALL hook: save the CPU's state into ``save`` (None: not kept)
        as the end of a run would leave it, RIP past the SYSCALL, and load ``load``, whose
        RIP the run goes on at, without ending the run (native.c
        ``native_switch_at_syscall``). The SYSCALL completed its block: nothing of it is
        taken back."""
        status = self._switch(self._ctx_arg, None if save is None else save._context,
                              load._context, _SYSCALL_LENGTH)
        if status:
            raise UcError(status)
        ctx = self._ctx
        ctx.in_flight = 0
        ctx.leave_block()

    def set_shared_times(self, host: int, interrupt_time_at: int, tick_count_at: int,
                         system_time_at_boot: int, time_increment: int) -> None:
        """Where a quantum renewed in C writes KUSER_SHARED_DATA's times (emu.nt.kuser
        ``renewal_layout``): the frame's host address, InterruptTime's offset (SystemTime
        follows it), TickCount's, SystemTime at clock 0 and the clock tick."""
        r = self._renewal
        r.kuser = host
        r.interrupt_time_at, r.tick_count_at = interrupt_time_at, tick_count_at
        r.system_time_at_boot, r.time_increment = system_time_at_boot, time_increment

    @property
    def can_renew(self) -> bool:
        """Whether a quantum can be renewed at a block entry (``arm_renewal``): counted per
        block, no tail and no step under way, no stop asked for, and KUSER_SHARED_DATA's
        place given (``set_shared_times``)."""
        ctx = self._ctx
        return self._block_hook is not None and not self._per_instruction and \
            not ctx.tail_mode and not ctx.stop_flag and bool(self._renewal.kuser)

    def arm_renewal(self, quantum: int, limit: int | None, clock_offset: int, *,
                    budget_end: int, stop_at: int | None = None, ring: bool = False) -> None:
        """For the next run: when the quantum ends at a block entry (the count reaches
        ``budget_end``) with no stop asked for, give a new budget of ``quantum`` (less if
        the count would pass ``limit``: None is no limit) and write KUSER_SHARED_DATA's
        times at clock ``instructions + clock_offset``, without ending the run (native.c
        ``renew_quantum``). A budget of ``limit`` reached, one left as small as a step's,
        or the count ``stop_at`` reached (a debugger's cut: a step's end, a snapshot; the
        budget may be spent there before the quantum's end) stops the run as ever. Every
        Python hook calls ``disarm`` at its entry. ``ring``: switch between the threads
        ``arm_ring`` set instead of renewing (its own call)."""
        r = self._renewal
        r.quantum = quantum
        r.limit = _MASK64 if limit is None else limit
        r.clock_offset = clock_offset
        r.budget_end = budget_end & _MASK64
        r.stop_at = _MASK64 if stop_at is None else stop_at & _MASK64
        if self._watched_changed:
            self._publish_watched()
        if not ring:
            self._ring.count = 0
        r.armed = 1
        self._armed[0] = True

    def disarm(self) -> None:
        """No renewal or switch in C from now on: Python code is running inside the run (a
        hook), and may change what armed it; the budget's end stops the run. The switches
        C made go to ``on_switches`` first."""
        if not self._armed[0]:
            return                  # the trap path's common case: one attribute read
        self._armed[0] = False
        self._renewal.armed = 0
        if self._ring.logged:
            self._take_switches()

    def _take_switches(self) -> None:
        """Give the switches C logged to ``on_switches`` (SwitchLogged, in order); UcError
        if one failed."""
        ring = self._ring
        n = ring.logged
        # The entries in one unpacking of their bytes (a ctypes structure per entry costs
        # a few microseconds a switch).
        switches = list(map(SwitchLogged._make, _RING_LOG_ENTRY.iter_unpack(
            memoryview(ring.log)[:n * _RING_LOG_ENTRY.size])))
        ring.logged = 0
        if switches and self.on_switches is not None:
            self.on_switches(switches)
        if ring.error:
            error, ring.error = ring.error, 0
            raise UcError(error)

    def arm_ring(self, threads: list[tuple[UcContext | None, int, int, int, int]], cr3: int,
                 tss_rsp0: int, quantum: int, limit: int | None, clock_offset: int, *,
                 budget_end: int, stop_at: int | None = None) -> None:
        """For the next run: where the budget ends at a block entry with no stop asked for,
        the thread on the CPU (``threads[0]``) goes to the back and the next one runs, round
        and round, without ending the run (native.c ``ring_switch``): each thread's context
        is saved and the next one's loaded, its address space (CR3 base, PCID, whether the
        load flushes that PCID) loaded when it differs from the one loaded (``cr3``: the
        current one at first), its kernel stack's top written to TSS.RSP0 (host address
        ``tss_rsp0``), KUSER_SHARED_DATA's times written and ``quantum`` instructions given
        (less if the count would pass ``limit``), as ``arm_renewal`` does. Each switch goes
        to ``on_switches``. A ring of one thread is a lone thread's renewal logged as its
        switch to itself (nothing saved or loaded: its context may be None), for whoever
        books each dispatch."""
        ring = self._ring
        for slot, (context, base, pcid, flush, rsp0) in zip(ring.threads, threads,
                                                              strict=False):
            slot.context = None if context is None else context._context.value
            slot.cr3, slot.cr3_value, slot.pcid = base, base | pcid, pcid
            slot.flush, slot.rsp0 = 1 if flush else 0, rsp0
        ring.count, ring.current, ring.cr3, ring.tss_rsp0 = len(threads), 0, cr3, tss_rsp0
        self.arm_renewal(quantum, limit, clock_offset, budget_end=budget_end,
                         stop_at=stop_at, ring=True)

    @property
    def can_switch_in_hook(self) -> bool:
        """Whether this Unicorn's saved contexts can be switched inside a hook (the layout of
        their EFLAGS was found: ``_context_eflags_offset``)."""
        return self._switch_ready

    @property
    def ring_switches(self) -> int:
        """Switches made in C (``arm_ring``) so far, at a block entry or between two runs
        (a ring of one's renewals among them)."""
        return self._ring.switches

    @property
    def renewals(self) -> int:
        """Quanta renewed at a block entry (``arm_renewal``) so far (a ring of one's are
        counted as its switches)."""
        return self._renewal.renewals

    @property
    def between_runs(self) -> int:
        """Of the quantum ends made in C (``renewals``, ``ring_switches``), those made
        between the tail's run and the next (native.c ``native_quantum_end``)."""
        return self._renewal.between_runs

    @property
    def budget_end(self) -> int:
        """The count at which the quantum armed last ends (moved on by each renewal or
        switch made in C)."""
        return self._renewal.budget_end

    @property
    def early_renewals(self) -> int:
        """Quantum ends made at the entry of the block the budget ended inside (native.c
        ``renew_early``): of ``renewals``, and of a ring of one's switches."""
        return self._early.early_renewals

    def watch_code(self, handle: int, begin: int, end: int) -> None:
        """A Python hook that sees instructions (a code hook on [begin, end], or a block
        hook on blocks starting there; ``begin > end``: every address, as Unicorn's bound
        check) was added as ``handle``: no quantum is renewed early ahead of an instruction
        in its range (native.c ``renew_early``)."""
        self._watched[handle] = (begin & _MASK64, end & _MASK64)
        self._watched_changed = True
        if self._armed[0]:
            self._publish_watched()

    def unwatch_code(self, handle: int) -> None:
        """The hook ``handle`` was deleted (nothing if it was not watched)."""
        if self._watched.pop(handle, None) is not None:
            self._watched_changed = True

    def _publish_watched(self) -> None:
        """Give C the watched ranges (before an armed run: a range added meanwhile is in
        force at once, one deleted until then). The count is 0 while the array changes."""
        self._watched_changed = False
        early = self._early
        early.code_hooks = 0
        ranges = list(itertools.chain.from_iterable(self._watched.values()))
        self._watched_array = (ctypes.c_uint64 * len(ranges))(*ranges)
        early.code_hook_ranges = ctypes.addressof(self._watched_array)
        early.code_hooks = len(self._watched)

    @property
    def pcid(self) -> int:
        """The PCID the walker's answers are cached for now."""
        return self._pcid

    def invalidate(self, vpage: int, pcid: int | None = None, *, global_too: bool = True,
                   every_pcid: bool = False) -> None:
        """Drop one page in every mode, and flush QEMU's TLB whole. The entries dropped:
        those of ``pcid`` (default: the current one), the global ones if ``global_too``
        (INVLPG drops both; INVPCID individual-address only the PCID's: SDM Vol. 2), or
        with ``every_pcid`` those of every PCID."""
        self._check_open()
        how = (_DROP_GLOBAL if global_too else 0) | (_DROP_EVERY if every_pcid else _DROP_PCID)
        self._lib.native_invalidate(self._ctx_ptr, vpage & _MASK64,
                                    (self.pcid if pcid is None else pcid) & (PCIDS - 1), how)
        self._flush_qemu_tlb()

    def drop_page(self, vpage: int) -> None:
        """Drop one page's entries of the current PCID and its global ones from the STLB,
        in every mode, and leave QEMU's TLB as it is: a guest INVLPG, which Unicorn has
        already made in QEMU's TLB (SDM Vol. 2A INVLPG)."""
        self._check_open()
        self._lib.native_invalidate(self._ctx_ptr, vpage & _MASK64, self._pcid,
                                    _DROP_GLOBAL | _DROP_PCID)

    def flush_qemu_tlb(self) -> None:
        """Flush QEMU's own TLB (it is not tagged by PCID: its misses then ask the STLB)."""
        self._flush_qemu_tlb()

    def _flush_qemu_tlb(self) -> None:
        """uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE), in one raw call."""
        status = _uc_ctl(self._uc._uch, _TLB_FLUSH)
        if status != UC_ERR_OK:
            raise UcError(status)

    def insert(self, mode: Mode, pairs: list[tuple[int, int]]) -> None:
        """Cache (vpage, paddr | perms) translations for `mode` ahead of use (speculative
        fills, SDM Vol. 3A 4.10.2.3); the walker decided them."""
        if not pairs:
            return
        flat = array.array("Q", itertools.chain.from_iterable(pairs))   # no ctypes per int
        values = (ctypes.c_uint64 * len(flat)).from_buffer(flat)
        self._lib.native_insert(self._ctx_ptr, int(mode), len(pairs), values)

    def set_budget(self, n: int | None) -> None:
        """Stop the next runs after n more completed instructions; None stops counting.

        Call between runs: adding or removing a counting hook flushes translated blocks,
        so that every block is translated with (or without) the counting call."""
        self._check_open()
        if n is None:
            self._counting(None)
            return
        if not 0 <= n < 1 << 64:
            raise ValueError(f"set_budget: negative budget {n}" if n < 0 else
                             f"set_budget: budget {n} is beyond 2^64 - 1")
        ctx = self._ctx
        ctx.end = (ctx.end - ctx.remaining + n) & _MASK64    # the count stays end - remaining
        ctx.remaining = n
        ctx.stop_flag = 0
        if self._block_hook is not None and not self._per_instruction:
            return                        # the block counter is on already (every turn)
        self._counting(UC_HOOK_CODE if self._per_instruction else UC_HOOK_BLOCK)

    def _counting(self, kind: int | None) -> None:
        """Install the counter of ``kind`` (UC_HOOK_BLOCK or UC_HOOK_CODE), or none."""
        want_code, want_block = kind == UC_HOOK_CODE, kind == UC_HOOK_BLOCK
        changed = False
        if (self._code_hook is not None) != want_code:
            if want_code:
                self._code_hook = self._hook_add(UC_HOOK_CODE, self._lib.native_count)
            else:
                self._hook_del(self._code_hook)
                self._code_hook = None
            changed = True
        if (self._block_hook is not None) != want_block:
            if want_block:
                self._block_hook = self._hook_add(UC_HOOK_BLOCK, self._lib.native_block)
            else:
                self._hook_del(self._block_hook)
                self._block_hook = None
            changed = True
        if changed:
            self._uc.ctl_flush_tb()

    @property
    def per_instruction(self) -> bool:
        """Whether every instruction is counted by a code hook (the reference counter)
        instead of per block."""
        return self._per_instruction

    @per_instruction.setter
    def per_instruction(self, value: bool) -> None:
        value = bool(value) or self._code is None
        if value == self._per_instruction:
            return
        self._per_instruction = value
        if self.counting:
            self._counting(UC_HOOK_CODE if value else UC_HOOK_BLOCK)

    @property
    def counting(self) -> bool:
        """Whether a budget is set (a counting hook is installed)."""
        return self._code_hook is not None or self._block_hook is not None

    def set_space(self, space: int) -> None:
        """The address space (CR3) the blocks that run next belong to."""
        self._lib.native_set_space(self._ctx_ptr, space)   # its own fast table made current

    def forget_blocks(self) -> None:
        """Forget every learnt block: translated code was dropped, or new code loaded."""
        self._check_open()
        self._lib.native_forget_blocks(self._ctx_ptr)
        self._offsets.clear()
        self._hosts.clear()
        self._inerts.clear()

    def entries(self) -> list[tuple[Mode, int, int, int | None]]:
        """The STLB's live entries: (mode, virtual page, physical page | Fill bits, PCID),
        the PCID None for a global translation (it serves every PCID)."""
        self._check_open()
        out = (ctypes.c_uint64 * (2 * STLB_ENTRIES))()
        n = self._lib.native_stlb_entries(self._ctx_ptr, out)
        raw = out[:2 * n]
        entries = []
        for tag, value in zip(raw[::2], raw[1::2], strict=True):
            owner = (tag >> _OWNER_SHIFT) & 0x1FFF
            vpage = tag & 0x0000_FFFF_FFFF_F000
            if vpage & (1 << 47):                 # canonical: bits 63-48 repeat bit 47
                vpage |= 0xFFFF_0000_0000_0000
            entries.append((Mode((tag >> 1) & 3), vpage, value,
                            None if owner == _OWNER_GLOBAL else owner))
        return entries

    def completed_before(self, pc: int) -> int:
        """From inside a code hook of the instruction at ``pc``: the instructions completed
        before it (the counting hook may or may not have counted it already, and the block
        counter charged its whole block at its entry)."""
        ctx = self._ctx
        if ctx.in_block:       # charged whole at its entry: what came before it, and in it
            return ctx.instructions - self._block().count + self._done_in_block(pc)
        return ctx.instructions - (1 if ctx.in_flight and ctx.last_pc == pc else 0)

    def account(self, completed: int) -> None:
        """After a run, the CPU layer put RIP at another instruction boundary than the one
        the run ended at (emu.hw.cpu: a fault raised from a hook undone, a trap Unicorn
        stopped before): ``completed`` instructions are done while counting, and the
        difference goes back to (or comes out of) the budget. A no-op when not counting."""
        ctx = self._ctx
        if not self.counting:
            return
        remaining = ctx.remaining
        remaining = max(0, remaining + ((ctx.end - remaining) & _MASK64) - completed)
        ctx.remaining = remaining
        ctx.end = (completed + remaining) & _MASK64
        ctx.in_flight = 0
        ctx.leave_block()

    def stop_soon(self) -> None:
        """End the budget now: the run stops at the next block boundary (per instruction:
        before the next instruction). Safe from another thread or a hook; a no-op when not
        counting."""
        if self.counting:
            ctx = self._ctx
            ctx.stop_flag = 1
            ctx.fast = ctx.no_fast              # after the flag: see native.c block_enter

    @property
    def budget(self) -> int | None:
        """Instructions left before the budget stops a run, or None when not counting."""
        return self._ctx.remaining if self.counting else None

    @property
    def instructions(self) -> int:
        """Instructions completed while a budget was set (see the module docstring)."""
        return self._ctx.instructions

    @instructions.setter
    def instructions(self, value: int) -> None:
        self._ctx.instructions = value           # the budget left unchanged
        self._ctx.in_flight = 0
        self._ctx.leave_block()

    @property
    def blocks(self) -> int:
        """Blocks the block counter charged (entries of translated blocks)."""
        return self._ctx.blocks

    @property
    def learned(self) -> int:
        """Blocks whose instructions were counted by decoding them (first entries)."""
        return self._ctx.learned

    @property
    def fills(self) -> int:
        """TLB-fill hook calls (QEMU TLB misses)."""
        return self._ctx.fills

    @property
    def stlb_hits(self) -> int:
        """TLB-fill hook calls the STLB answered without calling the walker."""
        return self._ctx.stlb_hits

    def close(self) -> None:
        """Remove the hooks and free the STLB; the counters stay readable."""
        if not self._finalizer.alive:
            return
        self._ctx = _Ctx.from_buffer_copy(self._ctx)
        self._renewal = _Renewal.from_buffer_copy(self._renewal)
        self._ring = _Ring.from_buffer_copy(self._ring)
        self._early = _Early.from_buffer_copy(self._early)
        self._finalizer()
        if self.counting:
            self._code_hook = self._block_hook = None
            self._uc.ctl_flush_tb()

    @property
    def closed(self) -> bool:
        """Whether close() has released the hooks and the STLB."""
        return not self._finalizer.alive

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise RuntimeError("NativeHooks: used after close()")
