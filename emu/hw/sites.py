"""Sites: the guest instructions the machine must see Unicorn run, found and hooked.

Some instructions Unicorn 2.1.4 executes without telling the machine what they did (a MOV
to CR8 it drops, an INVLPG that reaches QEMU's TLB but not the STLB, a MOV to CR0/CR3/CR4
that changes QEMU's register only: platform-facts.md). Each such kind (emu.hw.cr8,
emu.hw.invlpg, emu.hw.crwrite) says only what is its own: the bytes to look for, the
decode that confirms them, what the instruction does once it completed. This module is
the mechanism they share:

* **Code in driver images** (``Sites.watch``, at load time): the executable pages are
  scanned once for the kind's bytes (``find_sites``: a regex, each hit and each start the
  legacy prefixes before it allow confirmed by decoding); a code hook goes on each site and
  on the instruction boundary after it, and on nothing else (Unicorn emits a code hook's
  call only into the instructions of its range: code without a site pays nothing). The
  first hook notes that the site is executing (``Sites.begin``: a kind may refuse it with
  a fault there, nothing changed); the second, before the next instruction, completes it
  (``Sites.complete``). A stop before the site (a breakpoint, the budget's end) leaves
  everything as it was; a run that ends right after it completes it in ``Sites.settle``.
  ``Sites.unwatch`` drops the hooks of pages whose code goes (a driver unloaded, INIT
  freed).
* **Code written at run time** (``Sites.watch_range``: executable pool, MDL views): one
  hook over the range, either a code hook that looks at each instruction as it runs
  (``Sites.runtime_site``) or, for a kind after which QEMU always ends its translated block,
  a block hook that decodes each block run there (``block_site``; kept per address and
  bytes) and completes a block ending in a site at the next block boundary. The bytes are
  read as they are now, through the page tables.

At CPL 3 nothing is made to work: each of these instructions is #GP(0) there, which
Unicorn raises itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, Uc

from emu.hw.faultaddr import disassembler

if TYPE_CHECKING:
    from emu.hw.cpu import Cpu

MAX_INSTRUCTION = 15                           # bytes (SDM Vol. 2A 2.3.11)
# Legacy prefixes may come before an instruction's REX and opcode bytes (SDM Vol. 2A
# 2.1.1): an instruction can start at any of them.
PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3")
_BLOCK_CACHE = 4096                            # decoded blocks kept per kind


class Site(Protocol):
    """One instruction of a kind in guest code: where it starts and where the next one does."""

    @property
    def address(self) -> int: ...

    @property
    def end(self) -> int: ...


S = TypeVar("S", bound=Site)


def find_sites(va: int, code: bytes, pattern: re.Pattern[bytes],
               decode: Callable[[int, bytes], S | None], reach: int) -> list[S]:
    """Every instruction start in ``code`` (loaded at ``va``) that ``decode`` confirms, tried
    at each ``pattern`` match and at the legacy prefixes before it (at most
    ``MAX_INSTRUCTION - reach`` of them: ``reach`` is the shortest match); by address."""
    sites: dict[int, S] = {}
    for match in pattern.finditer(code):
        start = match.start()
        first = start
        while first > 0 and start - first < MAX_INSTRUCTION - reach and code[first - 1] in PREFIXES:
            first -= 1
        for at in range(first, start + 1):
            site = decode(va + at, code[at:at + MAX_INSTRUCTION])
            if site is not None:
                sites[site.address] = site
    return sorted(sites.values(), key=lambda s: s.address)


def block_site(va: int, code: bytes, mnemonic: str,
               decode: Callable[[int, bytes], S | None]) -> S | None:
    """The site ``decode`` confirms as the last instruction of the translated block ``code``
    at ``va`` (its mnemonic ``mnemonic``), or None (QEMU ends a block after each such
    instruction, so it can only be the last one)."""
    last = None
    for offset, _size, name, _ops in disassembler(64).disasm_lite(code, 0):
        last = (offset, name)
    if last is None or last[1] != mnemonic:
        return None
    site = decode(va + last[0], code[last[0]:])
    return site if site is not None and site.end == va + len(code) else None


class Sites(Generic[S]):
    """The sites of one kind on one CPU: the site table, their hooks, the watched run-time
    ranges, and the site executing between its two hooks. A kind says ``find`` (the scan),
    ``begin`` and ``complete``, and how run-time code is looked at (``RUNTIME_HOOK``)."""

    # UC_HOOK_CODE: each instruction of a watched range goes through ``runtime_site``;
    # UC_HOOK_BLOCK: each block goes through ``block``, once per address and bytes.
    RUNTIME_HOOK: ClassVar[int] = UC_HOOK_BLOCK

    def __init__(self, cpu: Cpu) -> None:
        self._cpu = cpu
        self._uc: Uc = cpu.uc
        self._sites: dict[int, S] = {}
        self._hooks: dict[int, int] = {}           # hooked address -> Unicorn hook handle
        self._executing: tuple[S, Any] | None = None   # the site between its two hooks
        self._ranges: set[tuple[int, int]] = set()  # watched run-time code (watch_range)
        self._blocks: dict[tuple[int, bytes], S | None] = {}   # decoded blocks

    # What a kind says.

    def find(self, va: int, code: bytes) -> list[S]:
        """The sites in ``code``, executable and loaded at ``va``."""
        raise NotImplementedError

    def runtime_site(self, address: int, code: bytes) -> S | None:
        """The site that starts ``code`` (one instruction at ``address``), or None."""
        raise NotImplementedError

    def block(self, va: int, code: bytes) -> S | None:
        """The site that ends the translated block ``code`` at ``va``, or None."""
        raise NotImplementedError

    def begin(self, site: S, exact: bool) -> tuple[S, Any] | None:
        """``site`` is about to run at ring 0: what to note as executing (the site and what
        its completion needs), or None once a fault was raised at it; ``exact``: the hook is
        on the site itself (not at the entry of its block)."""
        return (site, None)

    def complete(self, site: S, state: Any) -> bool:
        """``site`` completed: make its effect; True asks the CPU to stop at the boundary
        after it (the executive has work to do now)."""
        raise NotImplementedError

    # The mechanism.

    @property
    def sites(self) -> list[S]:
        """The sites hooked now (found in loaded images), by address."""
        return [self._sites[a] for a in sorted(self._sites)]

    def watch(self, va: int, code: bytes) -> list[S]:
        """Hook the sites of ``code``, executable and loaded at ``va``; translated code is
        flushed so that no block translated before runs without its hooks."""
        found = [s for s in self.find(va, code) if s.address not in self._sites]
        for site in found:
            self._sites[site.address] = site
        self._rehook()
        if found:
            self._cpu.flush_translated_code()
        return found

    def unwatch(self, start: int, end: int) -> None:
        """Forget the sites that start in [start, end): that code is gone."""
        gone = [a for a in self._sites if start <= a < end]
        for address in gone:
            del self._sites[address]
        if gone:
            self._rehook()

    def watch_range(self, start: int, end: int) -> None:
        """Look at the code run in [start, end) as it runs (code written there at run time,
        such as executable pool): a site there works as one found at load time. Call it
        before any code runs there (Unicorn hooks only the code it translates afterwards)."""
        if (start, end) in self._ranges:
            return
        self._ranges.add((start, end))
        callback = self._on_runtime_code if self.RUNTIME_HOOK == UC_HOOK_CODE else self._on_block
        self._uc.hook_add(self.RUNTIME_HOOK, callback, None, start, end - 1)

    def _rehook(self) -> None:
        """One code hook on each site and on each boundary after one, and on nothing else."""
        wanted = set(self._sites) | {s.end for s in self._sites.values()}
        for address in set(self._hooks) - wanted:
            self._uc.hook_del(self._hooks.pop(address))
        for address in sorted(wanted - set(self._hooks)):
            self._hooks[address] = self._uc.hook_add(UC_HOOK_CODE, self._on_boundary, None,
                                                     address, address)

    def settle(self) -> bool:
        """After a run: complete a site the run ended right after (RIP at its end); one the
        run stopped before is forgotten (it runs again). True when its completion asks for
        the executive (see ``complete``)."""
        executing, self._executing = self._executing, None
        if executing is None or self._cpu.rip != executing[0].end:
            return False
        return self.complete(*executing)

    def _on_boundary(self, _uc: Uc, address: int, _size: int, _data) -> None:
        """UC_HOOK_CODE before a site, or before the instruction after one."""
        self._boundary(address, self._sites.get(address), True)

    def _on_runtime_code(self, _uc: Uc, address: int, size: int, _data) -> None:
        """UC_HOOK_CODE before each instruction of a watched range: is it a site (its bytes
        now, whatever was there before)?"""
        if self._cpu.held_fault:
            return
        self._boundary(address, self.runtime_site(address, self._cpu.read_code(address, size)),
                       True)

    def _on_block(self, _uc: Uc, address: int, size: int, _data) -> None:
        """UC_HOOK_BLOCK at the entry of a block of a watched range: does it end in a site
        (its bytes now, whatever was there before)?"""
        cpu = self._cpu
        if cpu.held_fault:
            return
        code = cpu.read_code(address, size)
        key = (address, code)
        if key not in self._blocks:
            if len(self._blocks) >= _BLOCK_CACHE:
                self._blocks.clear()
            self._blocks[key] = self.block(address, code) if len(code) == size else None
        self._boundary(address, self._blocks[key], False)

    def _boundary(self, address: int, site: S | None, exact: bool) -> None:
        """At an instruction (or block) boundary: complete the site that just ran, then, if
        ``site`` is one about to run at ring 0, note that it is executing."""
        cpu = self._cpu
        if cpu.held_fault:
            return
        done, self._executing = self._executing, None
        if done is not None and done[0].end == address:
            if self.complete(*done):
                cpu.stop()               # the executive delivers what the site asked for
                return
            if cpu.held_fault:
                return
        if site is None or cpu.cpl != 0:
            return                       # at CPL 3 it is Unicorn's own #GP(0)
        self._executing = self.begin(site, exact)
