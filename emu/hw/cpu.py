"""The processor: Unicorn executes instructions; this module makes it behave like one x86-64 CPU.

What Unicorn does: decode and execute, segment/privilege checks on iretq, #GP
for privileged instructions at CPL 3, #DE, int3, syscall (via a hook).
What we do (platform-facts.md): the page walk (Unicorn asks on every TLB miss;
``emu.hw.mmu`` answers from the real tables in RAM), CR2 and the #PF error
code, and a clean CPU after every exception (Unicorn never clears QEMU's
``old_exception``, so the executive resumes from a context saved before any
fault: see ``save_clean_context`` and ``restore_clean_context``). The checks
Unicorn skips: IOPL for `in`/`out`, SYSENTER with IA32_SYSENTER_CS = 0 (#GP),
SYSCALL outside 64-bit mode (#UD); their hooks fault precisely through
``raise_fault``. And the DPL of interrupt gates: `int n` is told from an
exception by QEMU's own record (``software_interrupt``), and is #GP unless
its gate has DPL 3.

Exceptions are never delivered through a guest IDT. Each one stops the run and
comes back to the executive as a ``CpuException``, the way a trap frame would.
The CPL is always read from the CPU (``cs & 3``), never kept in Python.
"""

from __future__ import annotations

import enum
import mmap
import resource
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_EXCEPTION,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_TCG_OPCODE,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn import x86_const as ux
from unicorn.unicorn_py3 import unicorn as _binding
from unicorn.unicorn_py3.unicorn import UcContext

from emu.hw import mmu
from emu.hw.blocks import instruction_offsets
from emu.hw.cr8 import Cr8
from emu.hw.crwrite import CrWrite
from emu.hw.exceptions import (
    FAULT_VECTORS,
    USER_GATES,
    ControlRegisterFault,
    CpuException,
    Deferred,
    Vector,
    fault_exception,
)
from emu.hw.faultaddr import decode, fault_address, memory_accesses
from emu.hw.invlpg import Invlpg
from emu.hw.memory import PhysicalMemory
from emu.hw.native import NativeHooks, mode_of
from emu.hw.registers import GPRS, MASK64, REGISTER_IDS, UNICORN, RegisterBatch, subregister

MSR_EFER = 0xC000_0080
MSR_FS_BASE = 0xC000_0100
MSR_GS_BASE = 0xC000_0101
MSR_KERNEL_GS_BASE = 0xC000_0102
RFLAGS_IF = 1 << 9
RFLAGS_RESERVED1 = 1 << 1     # bit 1 of RFLAGS always reads as 1
INT_SYSTEM_SERVICE = 0x2E     # int 0x2e: how 32-bit code enters the executive
FIRST_SOFTWARE_VECTOR = 32    # vectors 0-31 are the CPU's exceptions (SDM Vol. 3A 6.2)
INT_OPCODE = 0xCD             # int imm8 (SDM Vol. 2A, INT n)
IDT_ERROR_CODE = 0b10         # error code bit 1 (IDT): the selector index names an IDT gate
CODE32_SELECTORS = {0x23}     # user CS values that name a 32-bit code segment in our GDT

_ACCESS = {16: "read", 17: "write", 18: "fetch"}   # UC_MEM_READ / WRITE / FETCH in the TLB hook

# What the exact address of a data access may depend on (emu.hw.faultaddr): kept at the fault.
_FAULT_REGISTERS = (*GPRS, "rip", "fs_base", "gs_base", "cs")
_FAULT_RIP = _FAULT_REGISTERS.index("rip")
# SYSCALL (SDM Vol. 2B): CS (64-bit mode or not), RIP and RFLAGS, which RCX and R11 take;
# then the service number and its six arguments (docs/abi.md), read in the same call.
_SYSCALL_ENTRY = ("cs", "rip", "rflags", "rax", "rdi", "rsi", "rdx", "r10", "r8", "r9")
_SYSCALL_LINK = ("rcx", "r11")


# CR3 (SDM Vol. 3A 4.5, Table 4-12; 4.10.1): bits 12..MAXPHYADDR-1 the PML4's frame; with
# CR4.PCIDE=1 bits 11:0 are the PCID, else bits 3 and 4 are PWT/PCD and the rest ignored;
# bit 63 of a MOV's source (PCIDE=1) asks that nothing be invalidated and is not stored.
CR3_NOFLUSH = 1 << 63
CR3_PCID = 0xFFF
CR3_BASE = ((1 << mmu.MAXPHYADDR) - 1) & ~0xFFF
CR3_PWT_PCD = 0x18
_CR3_RESERVED = ((1 << 63) - 1) & ~((1 << mmu.MAXPHYADDR) - 1)   # bits MAXPHYADDR..62
_CODE_PAGES = 1024     # walks _code_page keeps (then it starts again)
_PCIDE, _PGE, _LMA, _PG = (int(mmu.CR4.PCIDE), int(mmu.CR4.PGE), int(mmu.EFER.LMA),
                           int(mmu.CR0.PG))
_PAE, _PE = int(mmu.CR4.PAE), int(mmu.CR0.PE)
_NW, _CD = 1 << 29, 1 << 30                   # CR0.NW, CR0.CD (SDM Vol. 3A 2.5)
# CR4 bits of features this CPU has (SDM Vol. 3A 2.5; Unicorn's Broadwell model): VME, PVI,
# TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT (0-10), FSGSBASE (16), PCIDE (17),
# OSXSAVE (18), SMEP (20), SMAP (21). Every other bit is reserved: UMIP, LA57, VMXE, SMXE,
# bit 15, KL, PKE, CET, PKS and bits 25-63; setting one is #GP(0).
CR4_RESERVED = ((1 << 64) - 1) & ~(0x7FF | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 20 | 1 << 21)


class StopReason(enum.Enum):
    """Why ``Cpu.run`` returned."""

    EXCEPTION = "exception"   # see RunResult.exception
    BUDGET = "budget"         # the instruction budget ran out
    REQUESTED = "requested"   # the executive called stop() (e.g. from a system call)


@dataclass(frozen=True)
class RunResult:
    reason: StopReason
    exception: CpuException | None = None



# Where QEMU's translated code runs fast (measured on this host, Unicorn 2.1.4, plain Unicorn
# alike: docs/performance.md, "Where an engine's translated code lies"): an engine whose
# code buffer (1 GiB, QEMU's default, placed by the kernel below the lowest mapping) begins
# within 2 GiB of libunicorn runs its translated code about 2.8x slower than one whose
# buffer begins farther away, so a process's first engine, right below the library, was
# slow (`loop 20000000`: 143 ms against 50 ms) and every later one fast.
_FAR_CODE_RESERVE = 1 << 30


@cache
def _translated_code_kept_far() -> mmap.mmap | None:
    """One GiB of address space reserved below the libraries before the process's first
    engine, for the life of the process, so that every engine's code buffer lies beyond it:
    no access and no memory (PROT_NONE: nothing committed, nothing resident). Not when the
    address space is limited (RLIMIT_AS), which it would take from what runs; None then, or
    if the kernel refuses it (the engines run as they would have)."""
    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        return None
    try:
        return mmap.mmap(-1, _FAR_CODE_RESERVE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                         prot=0)                      # PROT_NONE
    except OSError:
        return None


def _disarm_in_every_python_hook(uc: Uc, cpu: Cpu) -> None:
    """Make every Python hook added to ``uc`` from now on (the CPU's own, the sites', the
    debugger's, a scenario's) call ``cpu.native.disarm()`` before its callback: Python code
    running inside a run may change what armed a quantum end made in C (a thread made
    ready, a timer, a device, a stop: NativeHooks.arm_renewal), so none is made after it,
    and the switches C made are taken into the books before that code reads them. One
    place for the rule, so that no hook can forget it. (The C hooks, the TLB fill's and the
    counter's, are added by NativeHooks through uc_hook_add directly; the TLB fill's Python
    walker, ``_fill``, is the page walk alone and changes nothing the arming rests on.)"""
    add, delete = uc.hook_add, uc.hook_del

    def hook_add(htype: int, callback: Callable, user_data: object = None, begin: int = 1,
                 end: int = 0, *args: int) -> int:
        def disarmed(*hook_args: object) -> object:
            cpu.native.disarm()
            return callback(*hook_args)

        handle = add(htype, disarmed, user_data, begin, end, *args)
        if htype & _SEES_INSTRUCTIONS:
            cpu.native.watch_code(handle, begin, end)
        return handle

    def hook_del(handle: int) -> None:
        delete(handle)
        cpu.native.unwatch_code(handle)

    uc.hook_add, uc.hook_del = hook_add, hook_del


# The Python hooks that could run amid inert instructions (native.c renew_early: none may
# see a quantum renewed early), kept as ranges by NativeHooks.watch_code: code hooks, block
# hooks (one on the block runs at its entry) and TCG opcode hooks (on `sub` and `cmp`). No
# other kind can run there: an inert instruction accesses no memory (memory hooks), raises
# nothing (interrupt and invalid-instruction hooks) and is none of the instructions an
# instruction hook can name (SYSCALL, SYSENTER, IN, OUT, CPUID, RDTSC, RDTSCP).
_SEES_INSTRUCTIONS = UC_HOOK_CODE | UC_HOOK_BLOCK | UC_HOOK_TCG_OPCODE


class Cpu:
    """One x86-64 processor in long mode over ``mem``, paging done by ``emu.hw.mmu``."""

    def __init__(self, mem: PhysicalMemory) -> None:
        self.mem = mem
        _translated_code_kept_far()
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(ux.UC_CPU_X86_BROADWELL)   # a model with SMEP and SMAP
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.mem_map_ptr(0, mem.size, UC_PROT_ALL, mem.address)
        self.uc = uc
        self._uch = uc._uch
        # CR3 is kept as its page-table base (``cr3``, what the executive compares with an
        # address space's) and its PCID (``pcid``: CR3[11:0] with CR4.PCIDE, else 0);
        # ``cr3_value`` is the register as a MOV from CR3 reads it.
        self.cr0 = self.cr3 = self.cr4 = self.efer = 0
        self.pcid = 0
        self._cr3_low = 0                        # CR3[11:0] as loaded (PWT/PCD or the PCID)
        # What the TLB hook refused: a CpuException, or (the walker's fault, page, access,
        # CPL) made into one when the run stops (_complete_fault).
        self._fault: CpuException | tuple | None = None
        self._event: CpuException | None = None
        self._held: tuple | None = None          # a fault raised from a hook: see raise_fault
        self._stop_requested = False
        self._clean_context = None
        self.page_faults = 0
        self.code_flushes = 0
        self._last_table: int | None = None      # page table of the last walk (prefetch)
        self._prefetched: tuple | None = None    # page table already prefetched since a flush
        self._code_pages: dict[tuple, mmu.Translation] = {}   # learning's walks (_code_page)
        # The service a SYSCALL asks for: (cpu, CS, RAX, (RDI, RSI, RDX, R10, R8, R9)),
        # called with RCX and R11 already loaded and RIP at the SYSCALL.
        self.syscall_handler: Callable[[Cpu, int, int, tuple[int, ...]], None] | None = None
        self.int2e_handler: Callable[[Cpu], bool] | None = None   # True: handled
        self.devices: list = []                  # on the I/O port bus (emu.hw.devices)
        self.clock: Callable[[], int] = lambda: 0   # the machine's time, for devices
        self.on_cr3_load: Callable[[int, int], None] | None = None   # (old, new), if changed
        self.on_device_started: Callable[[], None] | None = None     # an OUT armed a device
        self.native = NativeHooks(uc, self._fill, self._block_offsets)
        _disarm_in_every_python_hook(uc, self)
        self.cr8 = Cr8(self)                     # the IRQL: guest CR8 moves made to work
        self.invlpg = Invlpg(self)               # guest INVLPGs made to reach the STLB
        self.crwrite = CrWrite(self)             # guest MOVs to CR0/CR3/CR4 made to reach it
        # The instructions the machine must see Unicorn run (emu.hw.sites), in hook order:
        # the loader watches each kind in driver code, and every run settles them.
        self.sites = (self.cr8, self.invlpg, self.crwrite)
        self._guest_controls = False             # one of those completed (see run)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, ux.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, ux.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, ux.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, ux.UC_X86_INS_SYSENTER)
        self._trace_hook: int | None = None
        self._batches: dict[tuple[str, ...], RegisterBatch] = {}
        self.runs = 0                            # calls of run(): a fault's moment
        # The last #PF's address, not worked out yet, and the page CR2 holds meanwhile.
        self._pending_cr2: tuple[Deferred, int] | None = None

    # -- registers -------------------------------------------------------------------------

    def reg(self, name: str) -> int:
        """Read a register by its lower-case name (``rax``, ``rip``, ``cs``, ``fs_base``...)."""
        if name == "cr2" and self._pending_cr2 is not None:
            self._settle_cr2()
        return self._batch((name,)).read()[0]

    def set_reg(self, name: str, value: int) -> None:
        """Write a register by name."""
        self._batch((name,)).write((value,))

    def regs(self, names: tuple[str, ...]) -> tuple[int, ...]:
        """Read several registers (names as for ``reg``) in one call: the trap paths' way."""
        if self._pending_cr2 is not None and "cr2" in names:
            self._settle_cr2()
        return self._batch(names).read()

    def context_regs(self, context: _binding.UcContext,
                     names: tuple[str, ...]) -> tuple[int, ...]:
        """Read several registers (names as for ``reg``) of a saved context in one call."""
        return self._batch(names).read_context(context)

    def _settle_cr2(self) -> None:
        """CR2 is about to be read and holds the page of the last #PF, whose exact byte was
        not worked out yet: work it out (and write it) now."""
        self._pending_cr2[0].value()
        self._pending_cr2 = None

    def set_regs(self, names: tuple[str, ...], values: tuple[int, ...] | list[int]) -> None:
        """Write several registers (names as for ``reg``) in one call."""
        self._batch(names).write(values)

    def _batch(self, names: tuple[str, ...]) -> RegisterBatch:
        batch = self._batches.get(names)
        if batch is None:
            batch = self._batches[names] = RegisterBatch(self.uc, names)
        return batch

    @property
    def cpl(self) -> int:
        """The current privilege level: the RPL of CS, as the CPU defines it (SDM §5.5)."""
        return self._batch(("cs",)).read()[0] & 3

    @property
    def rip(self) -> int:
        """RIP, in one raw ``uc_reg_read`` (every run starts by reading it)."""
        return self.native.rip()

    def set_control(self, *, cr0: int | None = None, cr3: int | None = None,
                    cr4: int | None = None, efer: int | None = None) -> None:
        """Load control registers (in the order EFER, CR4, CR0, CR3), with the TLB
        invalidations the MOVs make (SDM Vol. 3A 4.10.4.1); ControlRegisterFault (#GP(0))
        and nothing loaded if a value is refused. A CR3 load keeps the cached translations
        of other PCIDs: without CR4.PCIDE it drops PCID 0's, with it the new PCID's, and
        with bit 63 set (PCIDE only) none. QEMU's own TLB is not tagged by PCID: it is
        flushed on every load, and refills from the STLB without a walk."""
        self.check_control(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer)
        if efer is not None:
            self.efer = efer
            self.uc.reg_write(ux.UC_X86_REG_MSR, (MSR_EFER, efer))
        # A change of CR0 (PG, WP: the rights the STLB keeps were decided with them) drops
        # every translation; a MOV that writes the value CR0 holds changes nothing.
        flush_all = efer is not None or (cr0 is not None and cr0 != self.cr0)
        if cr4 is not None:
            old4, self.cr4 = self.cr4, cr4
            self.set_reg("cr4", cr4)
            # A change of PGE, or PCIDE 1 -> 0, drops every translation (4.10.4.1); so does
            # any other change here (SMEP, SMAP, ... decide the rights the STLB keeps).
            # Setting PCIDE alone keeps them: they were PCID 0's, and CR3 names PCID 0.
            flush_all |= (old4 ^ cr4) & ~_PCIDE != 0 or (old4 & _PCIDE and not cr4 & _PCIDE)
            if not cr4 & _PCIDE and self.pcid:
                self.pcid = 0
                self.native.set_pcid(0)
        if cr0 is not None:
            self.cr0 = cr0
            self.set_reg("cr0", cr0)
        if flush_all:
            self.flush_tlb()
        if cr3 is not None:
            self._load_cr3(cr3)

    def check_control(self, *, cr0: int | None = None, cr3: int | None = None,
                      cr4: int | None = None, efer: int | None = None) -> None:
        """ControlRegisterFault (#GP(0)) if loading these values (EFER, CR4, CR0, CR3, the
        others as they are) is one the SDM refuses (Vol. 2B, MOV - Move to/from Control
        Registers, 64-bit mode exceptions); nothing is loaded either way."""
        new_efer = self.efer if efer is None else efer
        new_cr4 = self.cr4 if cr4 is None else cr4
        new_cr0 = self.cr0 if cr0 is None else cr0
        long_mode = new_efer & _LMA
        if cr4 is not None:
            # Reserved bits: those of no feature this CPU (a Broadwell) has (SDM Vol. 3A
            # 2.5: setting one is #GP(0)); in IA-32e mode PAE may not be cleared.
            if cr4 & CR4_RESERVED:
                raise ControlRegisterFault(f"reserved bit set in CR4 value {cr4:#x} "
                                           f"(bits {cr4 & CR4_RESERVED:#x})")
            if long_mode and self.efer & _LMA and not cr4 & _PAE:
                raise ControlRegisterFault("CR4.PAE cleared in IA-32e mode")
        if cr4 is not None and new_cr4 & _PCIDE and not self.cr4 & _PCIDE:
            # SDM Vol. 2B MOV CR4: #GP(0) setting PCIDE outside IA-32e mode, or while
            # CR3[11:0] != 0 (the CR3 loaded so far: PCID 0 is the one CR3 then names).
            if not long_mode:
                raise ControlRegisterFault("CR4.PCIDE set with IA32_EFER.LMA = 0")
            if self._cr3_low:
                raise ControlRegisterFault(f"CR4.PCIDE set with CR3[11:0] = "
                                           f"{self._cr3_low:#x} (must be 0)")
        if cr0 is not None:
            # SDM Vol. 2B MOV CR0: bits 63:32 are reserved; PG without PE and NW without CD
            # are invalid combinations; PG may not be cleared with PCIDE set, nor (SDM Vol.
            # 3A 9.8.5.4) while in IA-32e mode, which only compatibility mode may leave.
            if cr0 >> 32:
                raise ControlRegisterFault(f"reserved bit set in CR0 value {cr0:#x} "
                                           "(bits 63:32)")
            if cr0 & _PG and not cr0 & _PE:
                raise ControlRegisterFault("CR0.PG set with CR0.PE = 0")
            if cr0 & _NW and not cr0 & _CD:
                raise ControlRegisterFault("CR0.NW set with CR0.CD = 0")
            if not new_cr0 & _PG and new_cr4 & _PCIDE:
                raise ControlRegisterFault("CR0.PG cleared with CR4.PCIDE = 1")
            if not new_cr0 & _PG and self.cr0 & _PG and self.efer & _LMA and efer is None:
                raise ControlRegisterFault("CR0.PG cleared in IA-32e mode")
        if cr3 is not None:
            if cr3 & _CR3_RESERVED or (cr3 & CR3_NOFLUSH and not new_cr4 & _PCIDE):
                raise ControlRegisterFault(f"reserved bit set in CR3 value {cr3:#x}")

    def guest_control(self, control: str, value: int) -> None:
        """A MOV to ``control`` ("cr0", "cr3" or "cr4") of ``value``, executed by guest code,
        completed (emu.hw.crwrite found it and ``check_control`` accepted it): Unicorn set
        its own register; the CPU's copy takes it with the invalidations the executive's
        own load makes (``set_control``), and Unicorn's register reads as the SDM says (CR3
        without bit 63)."""
        self._guest_controls = True
        self.set_control(**{control: value})

    def resync_control(self) -> None:
        """Put Unicorn's CR0, CR3 and CR4 back to the CPU's own (a saved context restored
        holds the values of its moment; a refused guest MOV that Unicorn made anyway)."""
        names = ("cr0", "cr3", "cr4")
        wanted = (self.cr0, self.cr3_value, self.cr4)
        if self.regs(names) != wanted:
            self.set_regs(names, wanted)
            self.native.flush_qemu_tlb()

    def load_cr3(self, value: int) -> None:
        """MOV to CR3 alone: ``set_control(cr3=value)`` without the other registers' checks
        (the context switch's path)."""
        if value & _CR3_RESERVED or (value & CR3_NOFLUSH and not self.cr4 & _PCIDE):
            raise ControlRegisterFault(f"reserved bit set in CR3 value {value:#x}")
        self._load_cr3(value)

    def _load_cr3(self, value: int) -> None:
        """MOV to CR3 of ``value`` (checked): the base, the PCID, and what is invalidated."""
        old, base = self.cr3, value & CR3_BASE
        pcids = self.cr4 & _PCIDE
        pcid = value & CR3_PCID if pcids else 0
        self.cr3, self.pcid = base, pcid
        self._cr3_low = low = value & (CR3_PCID if pcids else CR3_PWT_PCD)
        # The blocks counted next are this space's; fills are cached for this PCID; without
        # bit 63 its non-global entries go (without PCIDs: PCID 0's).
        # Bit 63 is never stored (it reads 0). QEMU flushes its own TLB when CR3 is
        # written with CR0.PG set (measured: tests/hw/test_pcid.py): its misses then
        # refill from the STLB, without a walk.
        self.native.load_cr3(base | low, pcid, not value & CR3_NOFLUSH)
        if not self.cr0 & _PG:
            self.native.flush_qemu_tlb()
        self._last_table = self._prefetched = None
        if old != base and self.on_cr3_load is not None:
            self.on_cr3_load(old, base)

    @property
    def cr3_value(self) -> int:
        """CR3 as a MOV from CR3 reads it: the base and CR3[11:0] (the PCID with
        CR4.PCIDE), never bit 63."""
        return self.cr3 | self._cr3_low

    @property
    def pcid_enabled(self) -> bool:
        """CR4.PCIDE: cached translations are tagged with CR3[11:0]."""
        return bool(self.cr4 & _PCIDE)

    # -- GS: the KPCR at ring 0, the thread's own base at ring 3 ----------------------------

    @property
    def kernel_gs_base(self) -> int:
        """IA32_KERNEL_GS_BASE (MSR 0xC0000102): the GS base SWAPGS exchanges with GS's."""
        return self.uc.reg_read(ux.UC_X86_REG_MSR, MSR_KERNEL_GS_BASE)

    def swap_gs_to(self, gs_base: int, kernel_gs_base: int) -> None:
        """Load GS.base and IA32_KERNEL_GS_BASE together, as a SWAPGS leaves them (SDM Vol.
        2B, SWAPGS: each takes the other's value; the caller says which is which)."""
        self.set_reg("gs_base", gs_base)
        self.uc.reg_write(ux.UC_X86_REG_MSR, (MSR_KERNEL_GS_BASE, kernel_gs_base))

    def load_gdt(self, base: int, limit: int) -> None:
        """LGDT: point GDTR at a table in guest (linear) memory."""
        self.uc.reg_write(ux.UC_X86_REG_GDTR, (0, base, limit, 0))

    def load_tr(self, selector: int, base: int, limit: int) -> None:
        """LTR: the task register names the TSS (its RSP0 is the ring-0 stack)."""
        self.uc.reg_write(ux.UC_X86_REG_TR, (selector, base, limit, 0x8B))

    def flush_tlb(self) -> None:
        """Invalidate every cached translation, global ones and every PCID's (QEMU's TLB and
        our STLB): what the executive does after changing many PTEs at once."""
        self.native.flush()
        self._last_table = self._prefetched = None

    def invalidate_page(self, va: int, *, every_pcid: bool = False) -> None:
        """INVLPG: drop the translations of one page for the current PCID, and the global
        ones (SDM Vol. 2A INVLPG); with ``every_pcid``, every PCID's too (the executive's
        path when a PTE of an address space changed, current or not: each process keeps its
        translations under its own PCID across switches).

        The speculative-fill state stays current: the page table prefetched last still has
        its other entries cached (the STLB dropped only this page, which the next access
        walks again), so it is not rescanned after every fault it serves. Only the "two
        walks in a row" streak starts over."""
        self.native.invalidate(va & ~0xFFF, every_pcid=every_pcid)
        self._last_table = None

    def guest_invlpg(self, va: int) -> None:
        """An INVLPG of ``va`` executed by guest code completed (emu.hw.invlpg found it):
        Unicorn dropped the page from QEMU's own TLB; the STLB drops it too, the current
        PCID's translation and a global one, other PCIDs' staying (SDM Vol. 2A INVLPG, Vol.
        3A 4.10.4.1). A non-canonical ``va`` invalidates nothing (INVLPG is a NOP then)."""
        if not mmu.is_canonical(va):
            return
        self.native.drop_page(va & ~0xFFF)
        self._last_table = None

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> None:
        """INVPCID (SDM Vol. 2A): type 0 drops ``va``'s translations of ``pcid`` (not the
        global ones), type 1 every translation of ``pcid`` but the global ones, type 2
        everything, global ones included, type 3 everything but the global ones.
        ControlRegisterFault (#GP(0)) for another type, a PCID beyond 4095, or a
        non-canonical ``va`` (type 0); what it does not need to, it does not flush."""
        if kind not in (0, 1, 2, 3):
            raise ControlRegisterFault(f"INVPCID type {kind} (0-3 only)")
        if kind in (0, 1) and not 0 <= pcid <= CR3_PCID:
            raise ControlRegisterFault(f"INVPCID descriptor PCID {pcid:#x} beyond 0xfff")
        if kind == 0:
            if not mmu.is_canonical(va):
                raise ControlRegisterFault(f"INVPCID type 0: non-canonical address {va:#x}")
            self.native.invalidate(va & ~0xFFF, pcid, global_too=False)
            self._last_table = None
        elif kind == 1:
            self.native.flush_pcid(pcid)
            if pcid == self.pcid:            # QEMU's TLB holds the current PCID's alone
                self.native.flush_qemu_tlb()
            self._last_table = self._prefetched = None
        elif kind == 2:
            self.flush_tlb()
        else:
            self.native.flush_nonglobal()
            self.native.flush_qemu_tlb()
            self._last_table = self._prefetched = None

    def flush_translated_code(self) -> None:
        """Forget all translated code: needed when Python rewrote a frame that held code,
        because Unicorn does not see stores made from the host (platform-facts.md)."""
        self.code_flushes += 1
        self.uc.ctl_flush_tb()
        self.native.forget_blocks()          # their instruction counts go with them

    def forget_code(self) -> None:
        """New code is loaded (a process image): forget the instruction counts of the
        blocks learnt so far, since its pages may sit at the addresses of older code."""
        self.native.forget_blocks()

    # -- a thread's context ----------------------------------------------------------------

    def save_context(self, context: UcContext) -> None:
        """Copy the CPU's state into ``context`` (``uc.context_update``, one raw call into
        libunicorn: the switch's save, into the thread's own buffer)."""
        status = UNICORN.uc_context_save(self._uch, context._context)
        if status:
            raise UcError(status)

    def restore_context(self, context: UcContext) -> None:
        """Load the CPU's state from ``context`` (``uc.context_restore``, one raw call)."""
        status = UNICORN.uc_context_restore(self._uch, context._context)
        if status:
            raise UcError(status)

    @property
    def can_renew_quantum(self) -> bool:
        """Whether the next run may renew a quantum at a block entry (NativeHooks
        .arm_renewal): NativeHooks.can_renew, and no trace hook (which runs Python at every
        instruction)."""
        return self.native.can_renew and self._trace_hook is None

    @property
    def can_switch_in_c(self) -> bool:
        """Whether the next run may also switch threads at a block entry (NativeHooks
        .arm_ring): ``can_renew_quantum``, contexts that can be switched inside a hook,
        paging on, and no guest MOV to a control register ever (``run`` resyncs those)."""
        return self.can_renew_quantum and self.native.can_switch_in_hook and \
            bool(self.cr0 & _PG) and not self._guest_controls

    def cr3_loaded_in_c(self, base: int, pcid: int) -> None:
        """A switch made in C (NativeHooks.arm_ring) loaded the address space ``base`` with
        ``pcid`` as ``load_cr3(base | pcid | CR3_NOFLUSH)`` (or ``load_cr3(base)`` with no
        PCID) would: the CPU's books of CR3 follow."""
        old = self.cr3
        self.cr3, self.pcid = base, pcid
        self._cr3_low = pcid
        self._last_table = self._prefetched = None
        if old != base and self.on_cr3_load is not None:
            self.on_cr3_load(old, base)

    @property
    def can_switch_at_syscall(self) -> bool:
        """Whether, inside the SYSCALL hook, ``switch_at_syscall`` may hand the CPU to
        another context (see NativeHooks.can_switch_at_syscall; no trace hook, no
        exception or stop recorded in this run)."""
        return self.native.can_switch_at_syscall and self._trace_hook is None and \
            self._event is None and self._fault is None and not self._stop_requested

    def switch_at_syscall(self, save: UcContext, load: UcContext) -> None:
        """From inside the SYSCALL hook: the state after the SYSCALL saved into ``save``
        and ``load``'s made the CPU's, the run going on there (NativeHooks
        .switch_at_syscall); for the rest a new run, as ``run`` would start it."""
        self.native.switch_at_syscall(save, load)
        self.runs += 1                   # a fault kept from before is not "at the CPU"

    # -- clean state after exceptions -----------------------------------------------------

    def save_clean_context(self) -> None:
        """Remember this CPU state (ring 0, no exception pending): every entry starts from it."""
        self._clean_context = self.uc.context_save()

    def restore_clean_context(self) -> None:
        """Return to the clean ring-0 state: clears QEMU's sticky exception state (no false #DF).
        CR8 stays as it is: the task priority is not part of an exception's state."""
        cr8 = self.cr8.value
        self.uc.context_restore(self._clean_context)
        self.cr8.value = cr8
        if self._guest_controls:
            self.resync_control()
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    # -- running ---------------------------------------------------------------------------

    def set_budget(self, instructions: int | None) -> None:
        """Stop runs after this many more instructions (None: full speed, nothing counted)."""
        self.native.set_budget(instructions)

    @property
    def instructions(self) -> int:
        """Instructions completed while counting was on."""
        return self.native.instructions

    def stop(self) -> None:
        """Ask the running guest to stop after the current instruction (from a hook)."""
        self._stop_requested = True
        status = UNICORN.uc_emu_stop(self.uc._uch)     # a yield or a wait: no binding call
        if status:
            raise UcError(status)

    @property
    def stop_requested(self) -> bool:
        """Whether the last run ended because ``stop()`` was called."""
        return self._stop_requested

    def _settle_sites(self) -> None:
        """After a run: each kind completes a site the run ended right after (Sites.settle);
        one whose completion asks for the executive (a CR8 write lowering the IRQL) stops."""
        for kind in self.sites:
            self._stop_requested |= kind.settle()

    def run(self, begin: int | None = None) -> RunResult:
        """Run from ``begin`` (default RIP) until an exception, the budget, or ``stop()``."""
        self._fault = self._event = None
        self._stop_requested = False
        self.runs += 1
        if self._guest_controls:
            # A guest MOV changed CR0/CR3/CR4: a context the executive restored since (a
            # thread's, the clean one) holds the registers of its moment in Unicorn.
            self.resync_control()
        start = self.rip if begin is None else begin
        while True:
            try:
                # until=0: Unicorn re-translates `until - 1` after a run unless until is 0
                # (platform-facts.md); nothing is ever mapped at 0, so it is never reached.
                self.native.start(start, 0)
            except UcError as err:
                self._settle_sites()
                if self._held is not None:
                    return RunResult(StopReason.EXCEPTION, self._take_held_fault())
                exc = self._exception_from_error(err)
                if exc is not None:
                    return RunResult(StopReason.EXCEPTION, exc)
                # An instruction played here completed (INVPCID): on after it, unless the
                # budget or a stop ends the run there.
                if self._stop_requested:
                    return RunResult(StopReason.REQUESTED)
                if self.native.budget == 0:
                    return RunResult(StopReason.BUDGET)
                start = self.rip
                continue
            break
        self._settle_sites()
        if self._held is not None:
            return RunResult(StopReason.EXCEPTION, self._take_held_fault())
        if self._event is not None:
            return RunResult(StopReason.EXCEPTION, self._event)
        if self._stop_requested:
            return RunResult(StopReason.REQUESTED)
        if self.native.budget == 0:
            return RunResult(StopReason.BUDGET)
        if self.rip == 0:
            # Stopped at the `until` address 0: the next instruction is a fetch at 0.
            return RunResult(StopReason.EXCEPTION, self._fetch_fault_at_zero())
        return RunResult(StopReason.REQUESTED)

    def _exception_from_error(self, err: UcError) -> CpuException | None:
        """The exception a run ended with, or None when the instruction it stopped at was
        played here and completed (INVPCID)."""
        fault = self._fault
        if err.errno == UC_ERR_EXCEPTION and fault is not None:
            if fault.__class__ is tuple:
                return self._complete_fault(None, *fault)
            return self._complete_fault(fault)
        if err.errno == UC_ERR_INSN_INVALID:
            insn = self.decode_at(self.rip, self.cpl)
            if insn is not None and insn.mnemonic == "invpcid":
                return self._invpcid_instruction()
            if insn is not None and insn.mnemonic == "int1":
                # INT1 (ICEBP, F1) is a #DB trap: it completes, RIP past it, and no gate DPL
                # is checked (SDM Vol. 3A, "Protection of Exception- and Interrupt-Handler
                # Procedures"). Unicorn stops at it as at an invalid opcode.
                self.native.account(self.native.instructions + 1)
                return CpuException(Vector.DB, self.rip + insn.size, self.cpl,
                                    reason="int1 (ICEBP)")
            return CpuException(Vector.UD, self.rip, self.cpl)
        if err.errno in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED):
            return CpuException(Vector.MC, self.rip, self.cpl, reason="physical address beyond RAM")
        raise RuntimeError(f"Unicorn stopped unexpectedly: {err} at rip {self.rip:#x}") from err

    def _invpcid_instruction(self) -> CpuException | None:
        """INVPCID at RIP, which Unicorn 2.1.4 does not execute (it stops as at an invalid
        opcode): played here after SDM Vol. 2A INVPCID. #GP(0) at CPL > 0, for a type
        beyond 3, reserved bits 63:12 in the descriptor's first quadword, a non-canonical
        address to invalidate (type 0), a PCID other than 0 with CR4.PCIDE = 0 (types 0
        and 1); a #PF if the 16-byte descriptor cannot be read. Otherwise the invalidation
        is made (``invpcid``), the instruction completes (counted) and None is returned."""
        rip, cpl = self.rip, self.cpl
        insn = decode(self.read_code(rip, cpl=cpl), rip, self.code_bits)
        if cpl != 0:
            return CpuException(Vector.GP, rip, cpl,
                                reason="#GP(0): INVPCID at CPL 3 (it needs CPL 0)")
        register = self.reg_named(insn.reg_name(insn.operands[0].reg))
        (descriptor,) = memory_accesses(insn, self.reg_named)
        values = []
        for part in (descriptor.address, descriptor.address + 8):
            try:
                pa = self.walk(part & MASK64, "read", cpl=0, set_accessed_dirty=True).pa
            except (mmu.PageFault, mmu.GeneralProtection) as fault:
                return self._complete_fault(None, fault, part & MASK64 & ~0xFFF, "read", 0)
            # A quadword that crosses a page: its bytes from each page's frame.
            first = min(8, 0x1000 - (pa & 0xFFF))
            raw = self.mem.read(pa, first)
            if first < 8:
                raw += self.mem.read(self.walk((part + first) & MASK64, "read", cpl=0).pa,
                                     8 - first)
            values.append(int.from_bytes(raw, "little"))
        low, address = values
        try:
            if low >> 12:
                raise ControlRegisterFault(f"INVPCID descriptor bits 63:12 = {low >> 12:#x} "
                                           "(reserved: must be 0)")
            if register in (0, 1) and low & CR3_PCID and not self.cr4 & _PCIDE:
                raise ControlRegisterFault(f"INVPCID type {register} of PCID "
                                           f"{low & CR3_PCID:#x} with CR4.PCIDE = 0")
            self.invpcid(register, low & CR3_PCID, address)
        except ControlRegisterFault as refused:
            return CpuException(Vector.GP, rip, 0, reason=str(refused))
        self.native.account(self.native.instructions + 1)      # it completed
        self.set_reg("rip", rip + insn.size)
        return None

    def _fetch_fault_at_zero(self) -> CpuException:
        try:
            self.walk(0, "fetch")
        except (mmu.PageFault, mmu.GeneralProtection) as fault:
            return self._complete_fault(None, fault, 0, "fetch", self.cpl)
        raise RuntimeError("guest jumped to virtual address 0, which this machine cannot run")

    def _block_offsets(self, pc: int, size: int) -> tuple[list[int], int | None, int]:
        """The offsets of the instructions of the translated block of ``size`` bytes at
        ``pc``, decoded as the CPU runs them (its CPL and mode), where its bytes are in
        host memory if guest code may write them (0 if the block spans two pages), else
        None, and how many of its first instructions are inert (no memory access, no fault
        or trap: emu.hw.blocks ``inert``). An undecodable instruction ends a block (QEMU
        translates it as the #UD it raises), so the rest is one."""
        pages = [self._code_page(page) for page in range(pc & ~0xFFF, pc + size, 0x1000)]
        if len(pages) == 1:
            code = self.mem.read(pages[0].pa + (pc & 0xFFF), size)
        else:
            code = self.read_code(pc, size, cpl=self.cpl)
        host = None
        if any(page.writable for page in pages):
            host = self.mem.address + pages[0].pa + (pc & 0xFFF) if len(pages) == 1 else 0
        offsets, inert = instruction_offsets(self.code_bits, code)
        return list(offsets), host, inert

    def _code_page(self, va: int) -> mmu.Translation:
        """The page at ``va`` as ring 0 sees it (ring 3 if SMAP keeps ring 0 out): its
        frame, and whether code may write it (with CR0.WP, ring 0 writes only what the
        tables allow).

        Learning walks the page of every new block, mostly the same few pages: the last
        walks are kept with the entries they read, and one is answered again when the mode
        is the same and every one of those entries still holds what the walk read (a walk
        is a function of them, CR3, CR0, CR4, EFER and RFLAGS.AC, SDM Vol. 3A 4.5-4.6), so
        a changed entry is always seen, invalidated or not."""
        rflags = self.reg("rflags")
        key = (va & ~0xFFF, self.cr3, self.cr0, self.cr4, self.efer, rflags & mmu.RFLAGS_AC)
        known = self._code_pages.get(key)
        if known is not None:
            read_u64 = self.mem.read_u64
            if all(read_u64(step.entry_address) == step.value for step in known.steps):
                return known
        try:
            found = self.walk(va & ~0xFFF, "read", cpl=0)
        except (mmu.PageFault, mmu.GeneralProtection):
            found = self.walk(va & ~0xFFF, "read", cpl=3)
        if len(self._code_pages) >= _CODE_PAGES:
            self._code_pages.clear()
        self._code_pages[key] = found
        return found

    # -- faults raised from instruction hooks ---------------------------------------------

    def raise_fault(self, event: CpuException) -> None:
        """From an instruction hook (``in``, ``out``, ``sysenter``): fault precisely at the
        hooked instruction, as the CPU would (SDM Vol. 3A §6.5: a fault reports the state
        before the faulting instruction, and nothing after it runs).

        Unicorn only honours a stop at the end of the translated block, so the rest of the
        block would still run. Instead: remember the CPU state at the hook (Unicorn has
        synced RIP to the hooked instruction), flush every translation so that the next
        memory access of the block reaches the walker, which refuses it (no store lands),
        ignore the hooks of the instructions that still run (a ``syscall``, an ``int n``,
        more I/O), and when the run ends put the remembered state back and count the
        faulting instruction as not completed, at full speed or counted alike."""
        if self._held is not None:
            return
        self._held = (event, self.uc.context_save(), self.native.completed_before(event.rip))
        self.native.flush()
        self.uc.emu_stop()

    @property
    def held_fault(self) -> bool:
        """Whether a fault raised from a hook is pending (nothing more of the run counts)."""
        return self._held is not None

    def _take_held_fault(self) -> CpuException:
        event, context, completed = self._held
        self._held = None
        self.uc.context_restore(context)
        self.native.account(completed)
        self.flush_tlb()
        return event

    # -- the MMU ---------------------------------------------------------------------------

    def walk(self, va: int, access: str, *, cpl: int | None = None,
             set_accessed_dirty: bool = False, cr3: int | None = None) -> mmu.Translation:
        """Walk the current page tables (or those of ``cr3``) for ``va`` as the CPU would
        (default: current CPL)."""
        return mmu.walk(self.mem, va, access, cr3=self.cr3 if cr3 is None else cr3,
                        cpl=self.cpl if cpl is None else cpl, cr0=self.cr0, cr4=self.cr4,
                        efer=self.efer, rflags=self.reg("rflags"),
                        set_accessed_dirty=set_accessed_dirty)

    def _fill(self, vpage: int, access_type: int, cpl: int, rflags: int) -> int:
        """UC_HOOK_TLB_FILL through the STLB: translate one page or record the fault."""
        if self._held is not None:
            return -1                    # a fault from a hook is pending: nothing more runs
        access = _ACCESS.get(access_type, "read")
        seen: list = []
        try:
            packed = mmu.fill_packed(self.mem, vpage, access, self.cr3, cpl, self.cr0,
                                     self.cr4, self.efer, rflags, seen)
        except (mmu.PageFault, mmu.GeneralProtection) as fault:
            self._fault = (fault, vpage, access, cpl)     # made a CpuException at the stop
            self._last_table = None       # a fault between two walks: not "in a row"
            return -1
        if packed >= self.mem.size:     # the frame (Prot bits are below 4 KiB) is not RAM
            pa = packed & ~0xFFF
            self._fault = CpuException(Vector.MC, 0, cpl, address=vpage, access=access,
                                       reason=f"frame {pa:#x} is beyond the end of RAM")
            return -1
        if len(seen) == 4:
            self._maybe_prefetch(seen, vpage, cpl, rflags)
        return packed

    def _maybe_prefetch(self, seen: list, vpage: int, cpl: int, rflags: int) -> None:
        """Two walks in a row through one page table: cache its other ready entries too.

        A sweep over memory then costs one Python walk per page table instead of one per
        page; scattered accesses never trigger it, so they pay nothing extra, and neither do
        faults: a walk that faults ends the streak (``_fill``), so pages made valid one
        fault at a time (demand-zero, hard faults) never rescan their table.
        """
        table = seen[3][0] & ~0xFFF
        if table == self._last_table:
            key = (table, cpl, rflags & mmu.RFLAGS_AC)
            if key != self._prefetched:
                fills = mmu.speculative_fills(self.mem, seen, vpage, cpl=cpl, cr0=self.cr0,
                                              cr4=self.cr4, efer=self.efer, rflags=rflags)
                self.native.insert(mode_of(cpl, rflags),
                                   [(va, v) for va, v in fills if v & ~0xFFF < self.mem.size])
                self._prefetched = key
        self._last_table = table

    def _complete_fault(self, fault: CpuException | None, walked: Exception | None = None,
                        vpage: int = 0, access: str | None = None,
                        cpl: int = 0) -> CpuException:
        """The CpuException of a fault the TLB hook saw at page level, with RIP and the exact
        address (CR2): ``fault`` made there, or the walker's ``walked`` (a #PF or #GP) for
        ``access`` to ``vpage`` at ``cpl``. A #PF's reason and walk are worked out from
        the walk only when first read.

        The exact byte of a data access needs the instruction decoded (emu.hw.faultaddr):
        that is deferred until someone reads ``address`` or CR2 (the executive reports the
        fault, an observer sees it, a bug check records the registers). Until then Unicorn's
        CR2 holds the page; ``reg("cr2")`` works the byte out first. The registers the
        address may depend on are kept (one batch read, RIP among them), so it is exact even
        if read after the CPU has moved on."""
        if fault is not None:
            details = fault.__dict__      # the fields as they are, deferred ones unread
            vector, cpl, error_code, address, access = (fault.vector, fault.cpl,
                                                        fault.error_code, fault.address,
                                                        fault.access)
            reason, walk = details["_reason"], details["_walk"]
        elif walked.__class__ is mmu.PageFault:
            vector, error_code, address = Vector.PF, int(walked.error_code), vpage
            reason = walk = walked       # explained when read (_LazyField)
        else:
            vector, error_code, address = Vector.GP, 0, vpage
            reason = getattr(walked, "reason", "") or "non-canonical address"
            walk = tuple(getattr(walked, "steps", ()))
        self.page_faults += vector == Vector.PF
        page = None
        if address is not None and access is not None:
            page = address & ~0xFFF
            if access == "fetch":
                # A fetch faults at RIP itself, or at the first byte of the page it runs into.
                rip = self.rip
                address = rip if rip & ~0xFFF == page else page
            else:
                run, cr3 = self.runs, self.cr3
                registers = self._batch(_FAULT_REGISTERS).read()   # in _FAULT_REGISTERS' order
                rip = registers[_FAULT_RIP]
                # Weakly: a fault kept somewhere (a record, an event) must not keep the CPU
                # and its Unicorn engine alive, nor make a cycle through _pending_cr2.
                cpu = weakref.ref(self)
                address = Deferred(lambda: page if cpu() is None else cpu()._exact_address(
                    access, page, run, cr3, registers, address))
        else:
            rip = self.rip
        if vector == Vector.PF:
            deferred = address.__class__ is Deferred
            self._pending_cr2 = (address, page) if deferred else None
            self._batch(("cr2",)).write((page if deferred else address,))
        return fault_exception(vector, rip, cpl, error_code, address, access, reason, walk,
                                page)

    def _exact_address(self, access: str, page: int, run: int, cr3: int,
                       values: tuple[int, ...], deferred: Deferred) -> int:
        """The deferred half of ``_complete_fault``: decode the instruction at the fault's
        RIP and form the address its access to ``page`` began at; CR2 gets it too if this is
        still the last #PF. While the CPU is still at the fault, its live registers are
        read; afterwards the ones kept at the fault, and the code as the fault's page tables
        map it now (a code page gone since: only the page is known)."""
        registers = dict(zip(_FAULT_REGISTERS, values, strict=True))
        rip = registers["rip"]
        bits = 32 if registers["cs"] in CODE32_SELECTORS else 64
        if run == self.runs and self.rip == rip and self.cr3 == cr3:
            address = fault_address(self.decode_at(rip), self.reg_named, page, access, bits)
        else:
            code = self.read_code(rip, cr3=cr3)
            try:
                address = fault_address(decode(code, rip, bits) if code else None,
                                        lambda name: subregister(registers, name), page,
                                        access, bits)
            except KeyError:             # a register the snapshot does not hold
                address = page
        if self._pending_cr2 is not None and self._pending_cr2[0] is deferred:
            # Still the last #PF: CR2 gets the byte, unless a context restored since (a
            # thread's, the clean ring-0 one) has put another value there.
            self._pending_cr2 = None
            if self._batch(("cr2",)).read()[0] == page:
                self.set_reg("cr2", address)
        return address

    def settle(self, exc: CpuException) -> CpuException:
        """Work out ``exc``'s exact address (and the walker's explanation) now, while the CPU
        is still at the fault (before handing it to someone who may keep it); returns
        ``exc``."""
        if not exc.settled:
            exc.address      # noqa: B018 - reading it computes it
        exc.reason, exc.walk     # noqa: B018 - the walker's explanation too, from the walk
        return exc

    def set_reg_named(self, name: str, value: int) -> None:
        """Write any register by its Capstone/Intel name (``xmm3``, ``mxcsr``...)."""
        register = REGISTER_IDS.get(name) or getattr(ux, f"UC_X86_REG_{name.upper()}")
        self.uc.reg_write(register, value)

    def reg_named(self, name: str) -> int:
        """Any register by its Capstone/Intel name (``ecx``, ``r9b``, ``fs_base``...)."""
        if name in REGISTER_IDS:
            return self.reg(name)
        return self.uc.reg_read(getattr(ux, f"UC_X86_REG_{name.upper()}"))

    def read_code(self, va: int, n: int = 16, cpl: int = 0, *, cr3: int | None = None) -> bytes:
        """Read up to ``n`` instruction bytes at ``va`` through the page tables (no A/D
        update), as code at ``cpl`` may read them (in the address space of ``cr3``: default
        the current one)."""
        out = bytearray()
        while len(out) < n:
            try:
                pa = self.walk(va + len(out), "read", cpl=cpl, cr3=cr3).pa
            except (mmu.PageFault, mmu.GeneralProtection):
                break
            chunk = min(n - len(out), 0x1000 - (pa & 0xFFF))
            out += self.mem.read(pa, chunk)
        return bytes(out)

    @property
    def code_bits(self) -> int:
        """32 in compatibility mode (a 32-bit code segment), else 64."""
        return 32 if self.reg("cs") in CODE32_SELECTORS else 64

    def decode_at(self, va: int, cpl: int = 0):
        """The instruction at ``va`` (Capstone, in the CPU's current mode) as code at ``cpl``
        may read it, or None."""
        code = self.read_code(va, cpl=cpl)
        return decode(code, va, self.code_bits) if code else None

    # -- hooks -----------------------------------------------------------------------------

    def _on_interrupt(self, uc: Uc, intno: int, _data) -> None:
        """UC_HOOK_INTR: an exception or `int n` happened; stop and report it."""
        if self._held is not None:
            uc.emu_stop()                # after a fault from a hook: that fault is reported
            return
        rip = self.rip
        cpl = self.cpl
        if intno < FIRST_SOFTWARE_VECTOR and not software_interrupt(uc, rip):
            # An exception the instruction at RIP raised (RIP still at it). Vectors from 32
            # up are never an exception (only `int n` raises them, int 0x2e among them):
            # no saved context is read for those.
            vector = Vector(intno) if intno in FAULT_VECTORS else Vector.GP
            self._event = CpuException(vector, rip, cpl)
            uc.emu_stop()
            return
        # A software interrupt: Unicorn reports it with RIP past the instruction.
        if intno == INT_SYSTEM_SERVICE and self.int2e_handler is not None and \
                self.int2e_handler(self):
            return                       # a system call through the interrupt gate: go on
        if intno == Vector.BP:
            # int3 (CC) or int 3 (CD 03): the breakpoint gate has DPL 3. Windows reports the
            # byte before RIP, whichever form it was (KiBreakpointTrap).
            event = CpuException(Vector.BP, rip - 1, cpl)
        elif intno in USER_GATES and (cpl == 3 or intno == Vector.FAST_FAIL):
            # The other DPL-3 gates: the `int` (or `into`) completes, a trap with RIP past
            # it; the kernel's handler decides what it becomes (emu.nt.trap). At ring 0
            # only int 0x29 (__fastfail) is reported so: a bug check 0x139 (emu.nt.ke_call).
            argument = uc.reg_read(ux.UC_X86_REG_RCX if intno == Vector.FAST_FAIL
                                   else ux.UC_X86_REG_RAX)
            event = CpuException(Vector(intno), self._int_instruction(rip, intno), cpl,
                                 reason=f"int {intno:#x}", next_rip=rip, argument=argument)
        else:
            # Every other gate has DPL 0 (docs/abi.md): `int n` at CPL 3 is #GP with error
            # code n*8+2 at the int instruction (SDM Vol. 3A, "Protection of Exception- and
            # Interrupt-Handler Procedures"; the IDT bit of the error code, "Error Code").
            code = (intno << 3) | IDT_ERROR_CODE
            start = self._int_instruction(rip, intno)
            event = CpuException(Vector.GP, start, cpl, code,
                                 reason=f"#GP({code:#x}): int {intno:#x} at CPL {cpl}, and "
                                        f"the IDT gate of vector {intno:#x} has DPL 0")
            self.native.account(self.native.completed_before(start))   # a fault: not done
        self._event = event
        uc.emu_stop()

    def _int_instruction(self, after: int, intno: int) -> int:
        """Where the software interrupt that ended at ``after`` starts: `int n` (CD nn) or,
        for vector 4, `into` (CE, compatibility mode), possibly after prefixes (each
        candidate start is decoded, shortest first)."""
        endings = (bytes((INT_OPCODE, intno)), b"\xce" if intno == Vector.OF else None)
        for length in range(1, 16):
            insn = self.decode_at(after - length, self.cpl)
            if insn is not None and insn.size == length and \
                    any(end and bytes(insn.bytes).endswith(end) for end in endings):
                return after - length
        return after - 2

    def _on_syscall(self, uc: Uc, _data) -> None:
        """SYSCALL: RCX <- return RIP, R11 <- RFLAGS (SDM Vol. 2B), then the executive's service."""
        if self._held is not None:
            return                       # after a fault from a hook: it never executes
        # One call into Unicorn for the trap path: what SYSCALL itself reads and what the
        # executive's service needs (its number and six arguments, docs/abi.md).
        cs, rip, rflags, number, *args = self._batch(_SYSCALL_ENTRY).read()
        if cs in CODE32_SELECTORS:
            # SYSCALL outside 64-bit mode is #UD on an Intel CPU (SDM Vol. 2B, SYSCALL);
            # Unicorn would run it.
            self.raise_fault(CpuException(Vector.UD, rip, cs & 3,
                                          reason="syscall in compatibility mode"))
            return
        self._batch(_SYSCALL_LINK).write((rip + 2, rflags))
        if self.syscall_handler is not None:
            self.syscall_handler(self, cs, number, tuple(args))

    def _on_in(self, uc: Uc, port: int, size: int, _data) -> int:
        """IN: the device at ``port`` answers (all ones when none does)."""
        if not self._check_io_privilege(port):
            return 0
        device = self._device_at(port)
        if device is None:
            return (1 << (8 * size)) - 1     # no device answers: the bus floats high
        return device.port_in(port - device.base) & ((1 << (8 * size)) - 1)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _data) -> None:
        """OUT: the device at ``port`` takes ``value`` (it may start: a deadline)."""
        if not self._check_io_privilege(port):
            return
        device = self._device_at(port)
        if device is not None:
            idle = getattr(device, "fire_at", None) is None
            device.port_out(port - device.base, value, self._clock_at_instruction())
            if idle and getattr(device, "fire_at", None) is not None and \
                    self.on_device_started is not None:
                self.on_device_started()

    def _clock_at_instruction(self) -> int:
        """From inside an instruction's hook: the machine's time with this instruction done
        and none after it. The block counter charged the whole block at its entry, so the
        raw count would be ahead by the rest of the block, and a device started here would
        interrupt earlier than under per-instruction counting (a debugger's step): the time
        must not depend on how instructions are counted."""
        native = self.native
        ahead = native.instructions - native.completed_before(self.rip) - 1
        return self.clock() - max(ahead, 0)

    def _device_at(self, port: int):
        for device in self.devices:
            if device.base <= port < device.base + 0x10:
                return device
        return None

    def _check_io_privilege(self, port: int) -> bool:
        """IN/OUT need CPL <= IOPL; our TSS has no I/O bitmap, so otherwise #GP(0) (SDM §19.5).
        Unicorn skips this check, so the CPU layer makes it."""
        if self._held is not None:
            return False                 # after a fault from a hook: no device sees this
        iopl = (self.reg("rflags") >> 12) & 3
        if self.cpl > iopl:
            self.raise_fault(CpuException(Vector.GP, self.rip, self.cpl,
                                          reason=f"I/O to port {port:#x} with CPL > IOPL"))
            return False
        return True

    def _on_sysenter(self, uc: Uc, _data) -> None:
        """SYSENTER: this CPU is an Intel model (Broadwell), on which SYSENTER is valid in
        64-bit mode; the executive never programs IA32_SYSENTER_CS, so it is 0 and SYSENTER
        raises #GP(0) at any CPL (SDM Vol. 2B, SYSENTER). Unicorn would skip it instead."""
        self.raise_fault(CpuException(Vector.GP, self.rip, self.cpl,
                                      reason="sysenter with IA32_SYSENTER_CS = 0"))

    def set_trace(self, callback: Callable[[Cpu, int, int], None] | None) -> None:
        """Call ``callback(cpu, rip, size)`` before every instruction (slow), or stop tracing."""
        if self._trace_hook is not None:
            self.uc.hook_del(self._trace_hook)
            self._trace_hook = None
        if callback is not None:
            def trace(_uc: Uc, addr: int, size: int, _data) -> None:
                if self._held is None:   # instructions a pending fault undoes are not shown
                    callback(self, addr, size)
            self._trace_hook = self.uc.hook_add(UC_HOOK_CODE, trace)

    def close(self) -> None:
        """Release Unicorn's resources."""
        self._pending_cr2 = None
        self.native.close()


# -- which interrupts are software interrupts ---------------------------------------------------

def software_interrupt(uc: Uc, rip: int) -> bool:
    """Inside UC_HOOK_INTR: whether the interrupt is an `int n`/`int3` (a trap, RIP already past
    it) rather than an exception the instruction at RIP raised. Unicorn does not say, and the
    bytes before RIP cannot tell (`int 0` followed by a `div`); QEMU knows, in its
    ``exception_is_int`` and ``exception_next_eip`` fields, which a saved context holds."""
    raw = bytes(uc.context_save())
    offset = _exception_is_int_offset()
    is_int, next_eip = struct.unpack_from("<IQ", raw, offset)
    return is_int == 1 and next_eip == rip


@cache
def _exception_is_int_offset() -> int:
    """The offset of QEMU's ``exception_is_int`` (followed by ``exception_next_eip``) in a
    saved context, found once by running two `int n` and a faulting `div` on a scratch CPU:
    the one offset where both `int n` read (1, RIP) and the fault reads 0."""
    code = {0x1000: b"\xcd\x40", 0x1010: b"\x90\xcd\x41", 0x1020: b"\x48\xf7\xf1"}  # div rcx
    seen: list[tuple[int, bytes]] = []
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x2000, UC_PROT_ALL)
    uc.hook_add(UC_HOOK_INTR, lambda u, _n, _d: (seen.append(
        (u.reg_read(ux.UC_X86_REG_RIP), bytes(u.context_save()))), u.emu_stop()))
    for at, insn in code.items():
        uc.mem_write(at, insn)
        uc.reg_write(ux.UC_X86_REG_RCX, 0)
        uc.emu_start(at, 0, count=2)
    (rip1, ctx1), (rip2, ctx2), (_rip3, ctx3) = seen
    for offset in range(0, min(len(ctx1), len(ctx3)) - 12, 4):
        if struct.unpack_from("<IQ", ctx1, offset) == (1, rip1) and \
                struct.unpack_from("<IQ", ctx2, offset) == (1, rip2) and \
                struct.unpack_from("<I", ctx3, offset)[0] == 0:
            return offset
    raise RuntimeError("this Unicorn keeps no exception_is_int in its saved context")
