"""Every view at the awkward moments (issue 16, item 4): a process that has just exited, the
machine at its end, RIP on a page in transition. A view that cannot read memory says so in
one line, naming why; the session goes on (no traceback, no "internal error")."""

from __future__ import annotations

import io
import subprocess

import emurun
import pytest
from state_harness import ROOT, machine, pause

from emu.debugger.shell import Shell
from emu.debugger.target import LiveTarget
from emu.hw import mmu
from emu.nt.events import Event
from emu.nt.mm import softpte

HELLO = "guest/build/apps/hello"
# Every view that reads guest memory or registers, with arguments that make it read.
VIEWS = ["x/4i $rip", "x/4gx $rsp", "x/s $rsp", "disas", "disas $rip 3", "bt", "regs",
         "regs rip rflags", "walk $rip", "walk $rsp write", "vtop $rip", "vmmap", "ps",
         "threads", "handles", "lm", "irql", "irp", "analyze", "info cr", "info gdt",
         "info tss", "info registers", "tlb", "tlb $rip", "pfn 0x1000", "ptov 0x1000",
         "p $rip", "print [rsp]", "x/4i main", "disas main 2", "walk main fetch"]


def debug(script: str, *args: str) -> subprocess.CompletedProcess:
    """``emu debug ARGS`` with ``script`` on standard input, in a fork (tests/emurun.py)."""
    return emurun.emu("debug", *args, input=script, cwd=ROOT, timeout=300)


def assert_survives(out: str, err: str = "") -> None:
    """No traceback, no bug of ours; every error is one line that names its reason."""
    assert "Traceback" not in out + err, out[-3000:] + err[-3000:]
    assert "internal error" not in out, out
    for line in out.splitlines():
        if line.startswith("error:"):
            assert len(line) > len("error: ") + 5


@pytest.mark.parametrize("catch", ["catch process-exit", "catch syscall NtTerminateProcess"])
def test_a_stop_at_a_normal_exit_is_reported_and_every_view_answers(catch):
    r = debug(f"{catch}\ncontinue\n" + "\n".join(VIEWS) + "\ncontinue\nps\n", HELLO)
    assert_survives(r.stdout, r.stderr)
    assert r.stdout.count("(emu") >= len(VIEWS) + 3       # the session went on to the end
    stop = r.stdout.split(") continue\n", 1)[1].splitlines()
    where = next(line for line in stop if line.startswith("=> "))
    assert "cannot read" in where and "not present" in where, where
    if catch == "catch process-exit":   # its tables are gone: no process, not "kernel"
        assert where.endswith("[no process: it has ended, ring 3]"), where
    assert "the machine has stopped: every process has ended" in r.stdout


def test_catch_ring_to_the_end_never_dies():
    r = debug("catch ring\n" + "continue\nbt\ndisas\n" * 12, HELLO)
    assert_survives(r.stdout, r.stderr)
    assert "the machine has stopped" in r.stdout


def test_a_stop_with_rip_on_a_page_in_transition():
    """pattern 4 in 2 MiB: the working set is trimmed until its code page is on the
    standby list; the page-fault stop there names the PTE's state, and every view answers."""
    m = machine(("pattern", ["4", "1"]), mem="2M")

    def rip_not_present(event: Event, details: dict) -> bool:
        if event is not Event.PAGE_FAULT:
            return False
        cpu = m.executive.cpu
        try:
            mmu.walk(m.executive.mem, cpu.rip, "fetch", cr3=cpu.cr3, cpl=3, cr0=cpu.cr0,
                     cr4=cpu.cr4, efer=cpu.efer)
        except mmu.PageFault as fault:
            return softpte.decode(fault.steps[-1].value).state is softpte.PteState.TRANSITION
        return False

    out = io.StringIO()
    try:
        shell = Shell(LiveTarget(m), stdout=out)
        where = pause(m, rip_not_present, lambda _d: shell.where())
        assert where.startswith("=> 0x4010bc <pattern!main+0xbc>: (cannot read: not mapped: "
                                "the PTE (level 1)"), where
        assert "transition" in where and '[pid 12 "pattern", ring 3]' in where
        for view in VIEWS:
            shell.onecmd(view)
        assert_survives(out.getvalue())
        assert "error: cannot access 0x4010bc: not mapped" in out.getvalue()
    finally:
        m.close()


@pytest.mark.parametrize("rip", ["0xfffffffffffffff0", "0xffffffffffffffff"])
def test_stepi_with_rip_set_at_the_top_of_the_address_space(rip):
    """A step whose span would end at 2^64 (RIP set near the top): the fetch faults and the
    process dies of it, as at any unmapped RIP; the emulator does not."""
    r = debug(f"set $rip = {rip}\nstepi\ncontinue\nps\n", HELLO)
    assert_survives(r.stdout, r.stderr)
    assert r.returncode == 0
    assert f'process 12 "hello" terminated: STATUS_ACCESS_VIOLATION (0xC0000005) executing ' \
           f"{rip} at rip {rip}" in r.stdout
