"""The JSON run report (documented field by field in docs/report.md)."""

from __future__ import annotations

from typing import Any

from emu.machine import MachineResult
from emu.nt.bugcheck import BugCheck
from emu.nt.process import ExceptionInfo, Process

REPORT_VERSION = 1


def exception_dict(info: ExceptionInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"code": info.code, "name": info.name, "access": info.access,
            "address": info.address, "rip": info.rip, "instruction": info.instruction,
            "params": list(info.params), "detail": info.detail}


def process_dict(proc: Process) -> dict[str, Any]:
    return {"pid": proc.pid, "name": proc.name, "path": proc.image.path, "args": proc.args,
            "parent": proc.parent_pid, "state": proc.state.value,
            "exit_status": proc.exit_status, "exception": exception_dict(proc.exception),
            "instructions": proc.instructions, "paging": paging_dict(proc)}


def paging_dict(proc: Process) -> dict[str, int] | None:
    """The process's working set (pages in RAM now, peak) and its paging counters."""
    ws = proc.working_set
    if ws is None:
        return None
    return {"working_set": len(ws.pages), "peak_working_set": ws.peak, **ws.counters.as_dict()}


def bugcheck_dict(bc: BugCheck | None) -> dict[str, Any] | None:
    if bc is None:
        return None
    return {"code": bc.code, "name": bc.name, "params": list(bc.params), "rip": bc.rip,
            "instruction": bc.instruction, "detail": bc.detail, "driver": bc.driver or None,
            "location": bc.location or None, "process": bc.process or None, "irql": bc.irql,
            "backtrace": bc.backtrace}


def build_report(result: MachineResult, mem_size: int) -> dict[str, Any]:
    """The report as plain JSON-ready data."""
    s = result.stats
    return {
        "version": REPORT_VERSION,
        "machine": {"mem": mem_size, "stopped": result.stopped},
        "processes": [process_dict(p) for p in result.processes],
        "bugcheck": bugcheck_dict(result.bugcheck),
        "drivers": [{"name": d.image.name, "base": d.image.base, "status": d.status,
                     "unloaded": d.unloaded} for d in result.drivers],
        "stats": {"instructions": s.instructions, "tlb_fills": s.tlb_fills,
                  "stlb_hits": s.stlb_hits, "page_faults": s.page_faults,
                  "paging": s.paging},
    }
