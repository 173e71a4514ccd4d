"""The exceptions the CPU raises, as the executive receives them (SDM Vol. 3A ch. 6).

``Vector`` numbers them (Table 6-1); a ``CpuException`` carries what a trap frame and CR2
would give the kernel, its exact address and the walker's explanation worked out only when
first read (``Deferred``); ``ControlRegisterFault`` is the #GP(0) of a refused MOV to a
control register. emu.hw.cpu raises them; nothing here depends on the CPU.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from emu.hw import mmu


class Vector(enum.IntEnum):
    """Exception vectors (SDM Vol. 3A Table 6-1)."""

    DE = 0    # divide error
    DB = 1    # debug
    NMI = 2
    BP = 3    # breakpoint (int3)
    OF = 4    # overflow
    BR = 5    # BOUND range exceeded
    UD = 6    # invalid opcode
    NM = 7    # device not available
    DF = 8    # double fault
    TS = 10   # invalid TSS
    NP = 11   # segment not present
    SS = 12   # stack-segment fault
    GP = 13   # general protection
    PF = 14   # page fault
    MF = 16   # x87 floating-point error
    AC = 17   # alignment check
    MC = 18   # machine check
    XM = 19   # SIMD floating-point
    # Software-interrupt vectors whose gates Windows x64 opens to user mode (DPL 3) besides
    # BP and OF (KiInitializeIdt's table: KiRaiseSecurityCheckFailure, KiRaiseAssertion,
    # KiDebugServiceTrap); no hardware event uses them.
    FAST_FAIL = 0x29      # __fastfail (int 29h)
    ASSERTION = 0x2C      # __int2c
    DEBUG_SERVICE = 0x2D  # debug services (DbgPrint's int 2dh)


# Vectors whose IDT gate has DPL 3: `int n` to them from ring 3 is delivered, not #GP
# (0x2e, in a 32-bit process, is taken by ``int2e_handler`` first).
USER_GATES = frozenset({Vector.BP, Vector.OF, Vector.FAST_FAIL, Vector.ASSERTION,
                        Vector.DEBUG_SERVICE})


# Vectors an instruction raises itself, RIP at the instruction (SDM Vol. 3A Table 6-1).
FAULT_VECTORS = frozenset({Vector.DE, Vector.DB, Vector.UD, Vector.NM, Vector.DF, Vector.TS,
                           Vector.NP, Vector.SS, Vector.GP, Vector.AC, Vector.MF, Vector.XM})


class Deferred:
    """A value worked out on first read: the exact CR2 of a fault that may never be reported."""

    def __init__(self, compute: Callable[[], int | None]) -> None:
        self._compute: Callable[[], int | None] | None = compute
        self._value: int | None = None

    def value(self) -> int | None:
        """The value, computed on the first call only."""
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value


class _LazyField:
    """A dataclass field whose value may be a ``Deferred``: computed once, when first read.
    With ``explained``, it may also hold the walker's PageFault, read through that attribute
    of it when first read (a #PF's reason and walk: explained only if someone looks)."""

    def __init__(self, default: object = None, explained: str | None = None) -> None:
        self.default = default
        self.explained = explained

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: object, owner: type | None = None) -> object:
        if obj is None:
            return self.default          # the field's default, as the dataclass sees it
        value = obj.__dict__[self.slot]
        if value.__class__ is Deferred:
            value = obj.__dict__[self.slot] = value.value()
        elif self.explained is not None and value.__class__ is mmu.PageFault:
            value = obj.__dict__[self.slot] = getattr(value, self.explained)
        return value

    def __set__(self, obj: object, value: object) -> None:
        obj.__dict__[self.slot] = value

    def pending(self, obj: object) -> bool:
        """Whether ``obj``'s value has not been computed yet."""
        return obj.__dict__[self.slot].__class__ is Deferred


@dataclass(frozen=True)
class CpuException:
    """An exception the CPU raised: the facts a trap frame and CR2 would give the kernel."""

    vector: Vector
    rip: int                      # the faulting instruction (for #BP: the int3 itself)
    cpl: int
    error_code: int = 0
    # CR2 for #PF; the non-canonical address for a #GP. For a data access the exact byte
    # needs the instruction decoded: that is done when the address is first read (see
    # ``Cpu.settle``), so a fault MmAccessFault resolves with nobody looking costs no
    # disassembly (``page`` is all the resolution needs).
    address: int | None = _LazyField()   # type: ignore[assignment]
    access: str | None = None     # "read", "write" or "fetch" for memory faults
    # The walker's explanation of a #PF or #GP, and the entries it walked: for a #PF they
    # are worked out from what the walk read when first read (a resolved fault never is).
    reason: str = _LazyField("", "reason")   # type: ignore[assignment]
    walk: tuple = field(default=(), compare=False)     # lazy too: see below the class
    # A software interrupt through a DPL-3 gate other than #BP (a trap): ``rip`` is the
    # `int`/`into`, ``next_rip`` the instruction after it (the trap frame's RIP), and
    # ``argument`` what its Windows handler reads: RCX for int 0x29, RAX for int 0x2d.
    next_rip: int | None = None
    argument: int = 0
    page: int | None = field(default=None, compare=False)   # the page of ``address``

    @property
    def settled(self) -> bool:
        """Whether ``address`` is known (computed, or never deferred)."""
        return not CpuException.__dict__["address"].pending(self)


# ``walk`` keeps compare=False, which a descriptor given as its default could not: the lazy
# field is put on the class once the dataclass has made its methods.
CpuException.walk = _LazyField((), "steps")    # type: ignore[assignment]
CpuException.__dict__["walk"].__set_name__(CpuException, "walk")
_new_object = object.__new__


def fault_exception(vector: Vector, rip: int, cpl: int, error_code: int, address: object,
                     access: str | None, reason: object, walk: object,
                     page: int | None) -> CpuException:
    """``CpuException(vector, rip, cpl, error_code, address, access, reason, walk,
    page=page)`` for the fault path: the same object, its fields stored at once (a frozen
    dataclass's ``__init__`` sets them one by one through ``object.__setattr__``)."""
    exc = _new_object(CpuException)
    exc.__dict__.update(vector=vector, rip=rip, cpl=cpl, error_code=error_code,
                        _address=address, access=access, _reason=reason, _walk=walk,
                        next_rip=None, argument=0, page=page)
    return exc


class ControlRegisterFault(Exception):
    """A MOV to a control register the CPU refuses: #GP(0), nothing loaded (SDM Vol. 2B,
    MOV--Move to/from Control Registers, "Protected Mode Exceptions")."""

    vector = Vector.GP
    error_code = 0

    def __init__(self, reason: str) -> None:
        super().__init__(f"#GP(0): {reason}")
        self.reason = reason
