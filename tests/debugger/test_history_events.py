"""``history events [KIND] [pid N] [--json]`` in ``emu debug``: the executive's events from
boot to the current position (docs/debugger.md, "The past: history")."""

from __future__ import annotations

import json
import re

import pytest
from batch import DRIVERS, answer, emu

from emu.debugger.history import EventHistory


def slow_neither(apps) -> list:
    return ["--driver", DRIVERS / "slowneither.sys", apps / "slowread", r"\Device\SlowNeither",
            "--", apps / "victim"]


def debug(apps, script: str, *options) -> str:
    r = emu("debug", *options, *slow_neither(apps), stdin=script)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


def test_at_the_end_the_json_is_emu_runs_event_log(apps, tmp_path):
    log = tmp_path / "ev.jsonl"
    assert emu("run", "--events", log, *slow_neither(apps)).returncode == 0
    out = debug(apps, "continue\nhistory events --json\n")
    assert "\n".join(answer(out, "history events --json")) + "\n" == log.read_text()


def test_the_listing_of_a_dpc_in_another_process(apps):
    out = debug(apps, "catch dpc\ncontinue\nhistory events dpc\nhistory events interrupt\n"
                "history events syscall pid 12\nposition\n")
    assert answer(out, "history events dpc") == [
        "    200273  pid  20 tid  24  ring 3  IRQL 2  0x40106d <victim!main+0x6d>  dpc: DPC "
        "slowneither.sys!DpcForIsr+0x0",
        "1 event of kind dpc from boot to position 200273"]
    (isr, last) = answer(out, "history events interrupt")
    assert "IRQL 5" in isr and "interrupt vector 0x31, ISR slowneither.sys!Isr+0x0" in isr
    calls = answer(out, "history events syscall pid 12")
    assert [re.search(r"system call (\w+)\(", line).group(1) for line in calls[:-1]] == \
        ["NtAllocateVirtualMemory", "NtOpenFile", "NtReadFile"]
    assert all(" pid  12 tid  16  ring 3  IRQL 0 " in line for line in calls[:-1])
    assert calls[-1] == "3 events of kind syscall in pid 12 from boot to position 200273"


@pytest.mark.parametrize("options", [["--snapshots", "0"],
                                     ["--snapshot-interval", "50000"]])
def test_going_back_shows_only_the_past(apps, options):
    out = debug(apps, "catch dpc\ncontinue\nhistory events --json\nreverse-stepi 100000\n"
                "position\nhistory events --json\nhistory events interrupt\n", *options)
    now = [json.loads(line) for line in answer(out, "history events --json")]
    assert now[-1]["event"] == "dpc"
    later = out.split("reverse-stepi 100000", 1)[1]
    back = [json.loads(line) for line in answer(later, "history events --json")]
    assert "100273 instructions and exceptions since boot" in later
    assert back == [r for r in now if r["position"] <= 100273] and back
    assert answer(later, "history events interrupt") == \
        ["0 events of kind interrupt from boot to position 100273"]


@pytest.mark.parametrize("command, line", [
    ("history events nmi", "error: no event kind 'nmi' (one of: driver-load, process-create, "
     "process-exit, thread-dispatch, syscall, syscall-return, exception, page-fault, "
     "interrupt, dpc, kernel-call-done, cr3-load, bugcheck)"),
    ("history events pid 99", "error: pid 99: no such process in this machine's history "
     "(processes: 12, 20)"),
    ("history events pid x", "error: pid x: not a process id (a number; see ps)"),
    ("history events pid", "error: pid needs a process id (see ps)"),
    ("history", "error: history of what? (history events [KIND] [pid N] [--json] | "
     "history write|read|access ADDR [LEN] [pid N | phys] [--json] | "
     "history calls SYMBOL [pid N] [args N] [--json])"),
    ("history writes", "error: no history of 'writes' here (history events [KIND] [pid N] "
     "[--json] | history write|read|access ADDR [LEN] [pid N | phys] [--json] | "
     "history calls SYMBOL [pid N] [args N] [--json])"),
    ("history events dpc syscall", "error: unexpected 'syscall' (history events [KIND] "
     "[pid N] [--json])"),
])
def test_a_bad_command_is_one_line(apps, command, line):
    out = debug(apps, command + "\n")
    assert answer(out, command) == [line]


def test_memory_is_bounded():
    history = EventHistory(limit=3)
    for i in range(5):
        history.append({"position": i})
    assert [json.loads(line)["position"] for line in history.lines] == [2, 3, 4]
    assert history.dropped == 2


def test_a_process_filter_keeps_its_creation_and_its_exit(apps):
    out = debug(apps, "continue\nhistory events pid 20\n")
    lines = answer(out, "history events pid 20")
    assert lines[0].endswith('process-create: process 20 "victim" created')
    assert " pid   - tid   - " in lines[0]            # created from the command line
    assert any(line.endswith('process-exit: process 20 "victim" exits with status 0x0')
               for line in lines)
    assert all(" pid  20 " in line for line in lines[1:-1])
    assert not any("slowread" in line for line in lines)
    assert re.fullmatch(r"\d+ events in pid 20 from boot to position \d+", lines[-1])


def test_tab_completes_the_kinds():
    from emu.debugger.shell import Shell

    shell = Shell(None)   # type: ignore[arg-type]
    assert shell.complete_history("e", "history e", 8, 9) == ["events"]
    assert shell.complete_history("p", "history events p", 15, 16) == \
        ["process-create", "process-exit", "page-fault", "pid"]


def test_a_dispatch_record_names_the_saved_context_it_resumes(apps):
    """Each thread-dispatch record's ring and RIP are the dispatched thread's saved context
    (read in one raw call, emu.hw.registers RegisterBatch.read_context), as Unicorn's binding
    reads that context; a thread that never ran resumes at its start address, ring 3."""
    from unicorn.x86_const import UC_X86_REG_CS, UC_X86_REG_RIP

    from emu.eventlog import EventLog
    from emu.machine import Machine
    from emu.nt.events import Event

    m = Machine("64M", quantum=5_000)
    expected: list[tuple[int, int]] = []

    def before_the_log(event, details) -> None:
        if event is Event.THREAD_DISPATCH:
            t = details["thread"]
            if t.context is None:
                expected.append((3, t.start_rip))
            else:
                cs, rip = t.context.reg_read_batch((UC_X86_REG_CS, UC_X86_REG_RIP))
                expected.append((cs & 3, rip))

    m.executive.events.subscribe(before_the_log)
    records: list[dict] = []
    EventLog.attach(m, records.append)
    try:
        m.spawn(apps / "threads", [])
        m.run()
    finally:
        m.close()
    got = [(r["ring"], r["rip"]) for r in records if r["event"] == "thread-dispatch"]
    assert len(got) > 10 and got == expected
    assert len({rip for _, rip in got}) > 3          # resumed at many places, not one
