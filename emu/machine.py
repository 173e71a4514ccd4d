"""The public Python API: a whole machine, its processes and what happened to them.

    from emu import Machine
    m = Machine(mem="64M")
    p = m.spawn("guest/build/apps/hello", ["a", "b"])
    result = m.run()
    p.exit_status, p.exception, p.output, result.bugcheck
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from emu.hw.faultaddr import decode
from emu.hw.memory import HostMemoryError, PhysicalMemory, parse_size
from emu.nt import drivers
from emu.nt.bugcheck import BugCheck
from emu.nt.drivers import DriverImage
from emu.nt.kernel import Executive, MachineStop
from emu.nt.loader import load_file
from emu.nt.mm.pagefile import Pagefile
from emu.nt.process import Process, ProcessState
from emu.nt.scheduler import DEFAULT_QUANTUM

MIN_MEMORY = 1 << 20
MAX_MEMORY = 64 << 30
MIN_DEFAULT_PAGEFILE = 64 << 20


def default_pagefile_size(mem: int) -> int:
    """The pagefile a machine gets unless told otherwise: as large as RAM, at least 64 MiB
    (the host file is sparse: only pages written take disk space)."""
    return max(mem, MIN_DEFAULT_PAGEFILE)


def _size_text(size: int) -> str:
    """A size as --mem takes it: ``16G``, ``512M``, ``4K`` or bytes."""
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{suffix}"
    return str(size)


@dataclass
class Stats:
    """Machine-wide counters."""

    instructions: int | None      # None when counting was off (full speed)
    tlb_fills: int                # TLB misses Unicorn asked about
    stlb_hits: int                # ... of which the second-level TLB answered without a walk
    page_faults: int
    context_switches: int = 0     # times the dispatcher put a thread on the CPU
    paging: dict[str, int] = field(default_factory=dict)   # PagingCounters, machine-wide


@dataclass
class MachineResult:
    """What ``Machine.run`` returns."""

    processes: list[Process]
    bugcheck: BugCheck | None
    stopped: str | None           # None, "instruction limit", "interrupted", "deadlock",
                                  # or "bug check"
    stats: Stats
    unfinished: list[Process] = field(default_factory=list)
    last_rip: int = 0             # where the CPU stopped
    drivers: list = field(default_factory=list)   # emu.nt.drivers.Driver, in load order


class Machine:
    """An x86-64 machine with ``mem`` bytes of RAM running the NT-like executive."""

    def __init__(self, mem: int | str = "64M", *, max_insns: int | None = None,
                 trace: TextIO | None = None,
                 console: Callable[[Process, bytes], None] | None = None,
                 quantum: int = DEFAULT_QUANTUM, fs_root: str | Path | None = None,
                 smap: bool = False, pagefile: str | Path | None = None,
                 pagefile_size: int | str | None = None) -> None:
        """``pagefile``: the host file pages are evicted to (default: a temporary file,
        deleted by close()); ``pagefile_size``: its size (default: default_pagefile_size;
        0: no pagefile, so nothing is ever paged out and commit is limited by RAM)."""
        size = parse_size(mem) if isinstance(mem, str) else mem
        if size < MIN_MEMORY or size > MAX_MEMORY or size % 4096:
            raise ValueError(f"memory size must be a multiple of 4K between 1M and 64G, "
                             f"not {size}")
        if max_insns is not None and max_insns <= 0:
            raise ValueError("--max-insns must be positive")
        if max_insns is not None and max_insns >= 1 << 64:
            raise ValueError("--max-insns must be below 2^64")
        if quantum <= 0:
            raise ValueError("--quantum must be positive")
        if isinstance(pagefile_size, str):
            pagefile_size = parse_size(pagefile_size)
        if pagefile_size is None:
            pagefile_size = default_pagefile_size(size)
        if pagefile is not None and pagefile_size == 0:
            raise ValueError("a pagefile path was given with a pagefile size of 0")
        try:
            self.mem = PhysicalMemory(size)
        except HostMemoryError as err:
            raise ValueError(f"--mem {_size_text(size)}: {err}") from None
        try:
            self.pagefile = Pagefile(pagefile_size, pagefile) if pagefile_size else None
        except BaseException:
            self.mem.close()
            raise
        try:
            self.executive = Executive(self.mem, console, quantum=quantum, fs_root=fs_root,
                                       smap=smap, pagefile=self.pagefile)
        except Exception:
            if self.pagefile is not None:
                self.pagefile.close()
            raise
        self.max_insns = max_insns
        self._trace = trace
        # Count every instruction though no budget or trace asks for it: an event log's
        # positions (emu.eventlog) need the count; what the guest runs is the same.
        self.count_instructions = False
        self.trace_error: OSError | None = None      # the trace stopped: writing it failed
        self.result: MachineResult | None = None
        if trace is not None:
            self.executive.cpu.set_trace(self._trace_instruction)

    @property
    def counting(self) -> bool:
        """Whether instructions are counted (a budget, a trace or an event log is on)."""
        return self.max_insns is not None or self._trace is not None or self.count_instructions

    @property
    def processes(self) -> list[Process]:
        return self.executive.processes

    def spawn(self, path: str | Path, args: list[str] | tuple[str, ...] = ()) -> Process:
        """Load the ELF app at ``path`` (a host path) into a new process, ready to run with the
        others; raises LoaderError for a bad file, LimitError past the process limit."""
        image = load_file(path)
        return self.executive.create_process(image, list(args))

    def add_driver(self, path: str | Path) -> DriverImage:
        """Load a driver (a PE32+ .sys of the native subsystem) to start at boot,
        before any process runs: its DriverEntry runs at ring 0 when ``run()`` begins, its
        DriverUnload when every process has ended normally. LoaderError for a bad file."""
        image = drivers.load(self.executive, path)
        self.executive.pending_drivers.append(image)
        return image

    def run(self) -> MachineResult:
        """Run every process (threads preempted round robin) until all end or the machine stops."""
        ex = self.executive
        cpu = ex.cpu
        ex.count_always = self.counting or ex.debugger is not None   # a debugger counts
        ex.max_insns = self.max_insns
        stopped: str | None = None
        try:
            ex.run()
        except BugCheck:
            stopped = "bug check"
        except MachineStop as stop:
            stopped = stop.reason
        stats = Stats(cpu.instructions if ex.counted_everything else None, cpu.native.fills,
                      cpu.native.stlb_hits, cpu.page_faults, ex.scheduler.switches,
                      ex.mm.pager.counters.as_dict())
        unfinished = [p for p in ex.processes if p.state is not ProcessState.TERMINATED]
        self.result = MachineResult(list(ex.processes), ex.bugcheck, stopped, stats, unfinished,
                                    cpu.rip, list(ex.drivers))
        return self.result

    def interrupt(self) -> None:
        """Stop a running machine at the next instruction boundary; callable from another
        thread (Unicorn releases the GIL while guest code runs)."""
        self.executive.interrupt()

    def _trace_instruction(self, cpu, rip: int, size: int) -> None:
        if self.trace_error is not None:
            return
        code = cpu.read_code(rip, size)
        insn = decode(code, rip, cpu.code_bits)
        text = f"{insn.mnemonic} {insn.op_str}".strip() if insn else "(bad)"
        proc = self.executive.current
        who = f"pid {proc.pid}" if proc else "kernel"
        try:
            self._trace.write(f"ring {cpu.cpl}  {who:<7} {rip:#018x}  {code.hex(' '):<30} "
                              f"{text}\n")
        except OSError as err:          # a full disk: the run goes on, the trace stops
            self.trace_error = err

    def close(self) -> None:
        """Release the emulator's resources."""
        self.executive.close()
