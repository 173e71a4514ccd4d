"""The debugger's target over a crash dump (emu.nt.dump): the machine as it was at the bug
check, read-only. Dumps from before a header key existed still open; the views that need
the missing record say so."""

from __future__ import annotations

from typing import Any

from emu.debugger.records import (
    HandleRecord,
    ImageInfo,
    IrpRef,
    PfnRecord,
    ProcessInfo,
    RegionRecord,
    TargetError,
    ThreadInfo,
)
from emu.debugger.targetbase import FULL_REGISTERS, Target
from emu.hw import mmu
from emu.nt import pe, unwind
from emu.nt.bugcheck import BugCheck
from emu.nt.dump import CrashDump
from emu.nt.process import ExceptionInfo


class _DumpMemory:
    """The dump's RAM as the walker reads it."""

    def __init__(self, dump: CrashDump) -> None:
        self.dump = dump

    def read(self, pa: int, n: int) -> bytes:
        return self.dump.read_physical(pa, n)

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.dump.read_physical(pa, 8), "little")

    def write(self, pa: int, data: bytes) -> None:
        raise TargetError("a crash dump is read-only")


class DumpTarget(Target):
    """A crash dump: the CPU, RAM and executive records saved at the bug check."""

    live = False

    def __init__(self, dump: CrashDump) -> None:
        self.dump = dump
        self.header = dump.header
        self._memory = _DumpMemory(dump)
        self._procs = {p["pid"]: p for p in self.header.get("processes", [])}
        self._pfn: dict[int, list] | None = None

    def _missing(self, what: str) -> TargetError:
        return TargetError(f"this crash dump has no {what} (written by an older emu)")

    def _proc(self, pid: int) -> dict[str, Any]:
        if pid not in self._procs:
            self.process(pid)                  # raises, naming the processes there are
        return self._procs[pid]

    # -- registers and processes ---------------------------------------------------------

    def registers(self, pid: int | None = None) -> dict[str, int]:
        """The CPU's registers at the bug check, or the saved ones of ``pid``'s thread."""
        regs = {name: 0 for name in FULL_REGISTERS}
        regs.update(self.header.get("registers", {}))
        regs.update(self.header.get("control", {}))
        regs["cr8"] = self.irql()            # CR8 is the IRQL (emu.hw.cr8): the dump's irql
        if pid is None or pid == self.current_pid():
            return regs
        proc = self._proc(pid)
        saved = next((t["registers"] for t in proc.get("threads", [])
                      if t.get("registers")), None)
        if saved is None:
            raise TargetError(f'process {pid} "{proc["name"]}" has no saved registers in '
                              "this dump")
        regs.update(saved)
        regs["cr3"] = proc["cr3"]
        return regs

    def current_pid(self) -> int | None:
        """The process whose address space was current at the bug check."""
        if "current_pid" in self.header:
            return self.header["current_pid"]
        text = (self.header.get("bugcheck") or {}).get("process", "")
        first = text.split(" ", 1)[0]
        return int(first) if first.isdigit() else None

    def processes(self) -> list[ProcessInfo]:
        """Every process the dump recorded."""
        return [ProcessInfo(p["pid"], p["name"], p["cr3"], p.get("bits", 64), p["state"],
                            [ThreadInfo(t["tid"], t["state"], t.get("rip"),
                                        t.get("started", True)) for t in p.get("threads", [])],
                            p.get("space", p["state"] != "terminated"), p.get("exit_status"),
                            p.get("parent_pid"), p.get("path", ""))
                for p in self._procs.values()]

    def images(self) -> list[ImageInfo]:
        """The apps (when recorded) and drivers."""
        out = []
        for p in self._procs.values():
            image = p.get("image")
            if image:
                out.append(ImageInfo(image["name"], "app", p["pid"], image["low"],
                                     image["high"], p.get("path", ""), image["symbols"],
                                     image.get("bits", 64),
                                     unloaded=not p.get("space", True)))
        for d in self.header.get("drivers", []):
            out.append(ImageInfo(d["name"], "driver", None, d["base"], d["base"] + d["size"],
                                 d.get("path", ""), d.get("symbols", {}), 64,
                                 d.get("unloaded", False),
                                 tuple(unwind.RuntimeFunction(*f)
                                       for f in d.get("functions", ())),
                                 tuple(pe.Section(*s) for s in d.get("sections", ()))))
        return out

    def exception_of(self, pid: int) -> ExceptionInfo | None:
        """The exception that ended ``pid`` before the bug check."""
        record = self._proc(pid).get("exception")
        if not record:
            return None
        return ExceptionInfo(**{**record, "params": tuple(record.get("params", ()))})

    def bugcheck(self) -> BugCheck | None:
        """The bug check the dump was written for."""
        bc = self.header.get("bugcheck")
        if not bc:
            return None
        return BugCheck(bc["code"], tuple(bc["params"]), bc.get("rip"), bc.get("detail", ""),
                        dict(self.header.get("registers", {})), bc.get("instruction", ""),
                        bc.get("driver", ""), bc.get("location", ""), bc.get("process", ""),
                        bc.get("irql", 0), list(bc.get("backtrace", [])))

    # -- memory and executive records ----------------------------------------------------

    def memory(self) -> mmu.Memory:
        """The RAM saved in the dump."""
        return self._memory

    @property
    def ram_size(self) -> int:
        return len(self.dump.ram)

    def regions(self, pid: int) -> list[RegionRecord] | None:
        """The VADs of ``pid`` as saved (None in an older dump)."""
        vads = self._proc(pid).get("vads")
        if vads is None:
            return None
        return [RegionRecord(start, end, state[4:].lower(), protect, v["type"][4:].lower(),
                             v["base"], v.get("stack", False))
                for v in vads for start, end, state, protect in v["runs"]]

    def pfn(self, number: int) -> PfnRecord:
        """The saved PFN record of frame ``number`` (free if none was saved)."""
        if "pfn" not in self.header:
            raise self._missing("PFN records")
        if not 0 <= number < self.ram_size // 4096:
            raise TargetError(f"frame {number:#x} is beyond the end of RAM "
                              f"({self.ram_size // 4096:#x} frames)")
        if self._pfn is None:
            self._pfn = {r[0]: r for r in self.header["pfn"]}
        record = self._pfn.get(number)
        if record is None:
            return PfnRecord(number, "free")
        return PfnRecord(*record)

    def handles(self, pid: int) -> list[HandleRecord]:
        """The saved handle table of ``pid``."""
        proc = self._proc(pid)
        if "handles" not in proc:
            raise self._missing("handle tables")
        return [HandleRecord(*h) for h in proc["handles"]]

    def irql(self) -> int:
        """The IRQL at the bug check."""
        if "irql" in self.header:
            return self.header["irql"]
        return (self.header.get("bugcheck") or {}).get("irql", 0)

    def irps(self) -> list[IrpRef]:
        return [IrpRef(a, done) for a, done in self.header.get("irps", [])]

    def devices(self) -> list[tuple[str, int, str]]:
        return [tuple(d) for d in self.header.get("devices", [])]

    def descriptor_tables(self) -> dict[str, tuple[int, ...]]:
        tables = self.header.get("descriptors")
        if not tables:
            raise self._missing("GDTR and TR")
        return {name: tuple(value) for name, value in tables.items()}
