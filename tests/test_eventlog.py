"""``emu run --events FILE``: the executive's events as JSON Lines (docs/report.md, "The
event log"): the schema in the docs is the module's, every tour scenario's log fits it, the
same command writes the same bytes, the guest does the same with and without the log, and
the positions are the debugger's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import emurun
import pytest

from emu import eventlog

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ROOT / "guest" / "build" / "drivers"


def emu(*args, stdin=None):
    """``python -m emu ARGS``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu(*args, input=stdin, cwd=ROOT, timeout=300)


def emu_process(*args):
    """``python -m emu ARGS`` in a subprocess: a fresh interpreter (its own hash seed)."""
    return subprocess.run([sys.executable, "-m", "emu", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def slow_neither(apps) -> list:
    """The seed's DPC: slowread's request is finished in victim's context."""
    return ["--driver", DRIVERS / "slowneither.sys", apps / "slowread", r"\Device\SlowNeither",
            "--", apps / "victim"]


# -- the documented schema is the module's ---------------------------------------------------

def _table(text: str, heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading``, cells stripped of backquotes."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([c.strip().strip("`") for c in line.strip("|").split("|")])
    return rows[1:]                                  # without the header


def test_the_docs_tables_are_the_schema():
    text = (ROOT / "docs" / "report.md").read_text()
    common = {r[0]: r[1] for r in _table(text, "### Fields of every event")}
    assert common == eventlog.COMMON
    assert list(common) == list(eventlog.COMMON)              # the order they are written
    documented: dict[str, dict[str, str]] = {}
    for event, field, kind, _ in _table(text, "### Each event's own fields"):
        documented.setdefault(event, {})
        if field != "(none)":
            documented[event][field] = kind
    assert documented == eventlog.SCHEMA
    assert all(list(documented[e]) == list(eventlog.SCHEMA[e]) for e in documented)
    objects: dict[str, dict[str, str]] = {}
    for obj, field, kind, _ in _table(text, "### Objects"):
        objects.setdefault(obj, {})[field] = kind
    assert objects == eventlog.OBJECTS
    # Every event the executive has is in the schema, and nothing else.
    from emu.nt.events import Event
    assert set(eventlog.SCHEMA) == {e.value for e in Event}


def test_the_checker_refuses_what_the_schema_does_not_say():
    good = {"position": 1, "clock": 1, "event": "cr3-load", "pid": None, "tid": None,
            "ring": 0, "irql": 0, "rip": 0, "old": 4096, "new": 8192, "new_pid": None}
    assert eventlog.problems(good) == []
    assert eventlog.problems({**good, "new": "0x2000"})           # a string for an integer
    assert eventlog.problems({**good, "ring": 2})                 # no such ring here
    assert eventlog.problems({**good, "event": "nmi"})
    assert eventlog.problems({k: v for k, v in good.items() if k != "old"})
    assert eventlog.problems({**good, "extra": 1})


# -- emu run --events ------------------------------------------------------------------------

def test_the_log_of_the_seeds_dpc(apps, tmp_path):
    log = tmp_path / "ev.jsonl"
    r = emu("run", "--events", log, *slow_neither(apps))
    assert r.returncode == 0, r.stderr
    recs = records(log)
    assert all(eventlog.problems(rec) == [] for rec in recs)
    assert [rec["position"] for rec in recs] == sorted(rec["position"] for rec in recs)
    created = [rec["process"] for rec in recs if rec["event"] == "process-create"]
    assert [(p["pid"], p["name"], p["args"]) for p in created] == \
        [(12, "slowread", [r"\Device\SlowNeither"]), (20, "victim", [])]
    (load,) = [rec for rec in recs if rec["event"] == "driver-load"]
    assert load["driver"] == "slowneither.sys" and load["pid"] is None and load["ring"] == 0
    (read,) = [rec for rec in recs if rec["event"] == "syscall" and rec["number"] == 0x0F]
    assert read["service"] == "NtReadFile" and read["pid"] == 12 and read["ring"] == 3
    assert read["args"][2] == 64                         # slowread asks for 64 bytes
    # The interrupt and its DPC run in whatever thread was on the CPU: victim's.
    (isr,) = [rec for rec in recs if rec["event"] == "interrupt"]
    assert (isr["pid"], isr["irql"], isr["isr_symbol"]) == (20, 5, "slowneither.sys!Isr+0x0")
    (dpc,) = [rec for rec in recs if rec["event"] == "dpc"]
    assert (dpc["pid"], dpc["irql"]) == (20, 2)
    assert dpc["routine_symbol"] == "slowneither.sys!DpcForIsr+0x0"
    assert isr["position"] < dpc["position"]
    loads = [rec for rec in recs if rec["event"] == "cr3-load"]
    assert {rec["new_pid"] for rec in loads} >= {12, 20}
    exits = [rec for rec in recs if rec["event"] == "process-exit"]
    assert [(e["process"]["pid"], e["exit_status"], e["exception"]) for e in exits] == \
        [(12, 0, None), (20, 0, None)]


def test_a_crash_and_a_bug_check_are_in_the_log(apps, tmp_path):
    log, report = tmp_path / "ev.jsonl", tmp_path / "r.json"
    r = emu("run", "--events", log, "--report", report, apps / "badread")
    assert r.returncode == 125
    recs = records(log)
    (exc,) = [rec for rec in recs if rec["event"] == "exception"]
    assert (exc["vector"], exc["name"], exc["access"], exc["address"]) == \
        (14, "PF", "read", 0xFFFF800000001000)
    assert exc["error_code"] == 0x5 and exc["ring"] == 3 and exc["pid"] == 12
    (end,) = [rec for rec in recs if rec["event"] == "process-exit"]
    assert end["exit_status"] == 0xC0000005
    assert end["exception"] == {"code": 0xC0000005, "name": "STATUS_ACCESS_VIOLATION",
                                "address": 0xFFFF800000001000, "access": "read",
                                "rip": exc["rip"]}
    r = emu("run", "--events", log, "--report", report, "--driver", DRIVERS / "crash.sys",
            apps / "hello")
    assert r.returncode == 126
    (bc,) = [rec for rec in records(log) if rec["event"] == "bugcheck"]
    stop = json.loads(report.read_text())["bugcheck"]
    assert (bc["code"], bc["name"], bc["params"]) == (stop["code"], stop["name"], stop["params"])
    assert bc["driver"] == "crash.sys" and bc["ring"] == 0


def test_the_same_command_writes_the_same_bytes(apps, tmp_path):
    one, two = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    assert emu("run", "--events", one, *slow_neither(apps)).returncode == 0
    assert emu_process("run", "--events", two, *slow_neither(apps)).returncode == 0
    assert one.read_bytes() == two.read_bytes() and one.stat().st_size > 0


def test_a_device_interrupts_at_the_same_position_however_instructions_are_counted(
        apps, tmp_path):
    """The block counter charges a block at its entry; a device started by an OUT in the
    middle of a block must still get the OUT's time, as the per-instruction counter (the
    reference: EMU_COUNT=instruction) gives it, or its interrupt and the DPC move."""
    block, one_by_one = tmp_path / "block.jsonl", tmp_path / "insn.jsonl"
    argv = [sys.executable, "-m", "emu", "run", "--events"]
    for log, env in ((block, {}), (one_by_one, {"EMU_COUNT": "instruction"})):
        r = subprocess.run([*argv, str(log), *map(str, slow_neither(apps))], cwd=ROOT,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
    assert block.read_bytes() == one_by_one.read_bytes()
    assert [r["position"] for r in records(block) if r["event"] == "dpc"] == [200273]


@pytest.mark.parametrize("command", [
    ["hello", "a", "b"], ["badread"], ["counter", "a", "3", "--", "crasher", "div", "--",
                                       "counter", "b", "3"],
    ["threads"], ["sleeper"], ["slowneither"], ["crash.sys", "hello"],
])
def test_the_log_changes_nothing_the_guest_does(apps, tmp_path, command):
    if command == ["slowneither"]:
        argv = slow_neither(apps)
    elif command[0].endswith(".sys"):
        argv = ["--driver", DRIVERS / command[0], apps / command[1]]
    else:
        argv = [apps / w if w in ("counter", "crasher") or i == 0 else w
                for i, w in enumerate(command)]
    report_a, report_b = tmp_path / "a.json", tmp_path / "b.json"
    plain = emu("run", "--report", report_a, *argv)
    logged = emu("run", "--report", report_b, "--events", tmp_path / "ev.jsonl", *argv)
    assert (logged.returncode, logged.stdout, logged.stderr) == \
        (plain.returncode, plain.stdout, plain.stderr)
    a, b = json.loads(report_a.read_text()), json.loads(report_b.read_text())
    a["stats"], b["stats"] = {}, {}                 # counted now: instructions is a number
    for p in a["processes"] + b["processes"]:
        p["instructions"] = 0
    assert a == b
    assert records(tmp_path / "ev.jsonl")


def test_the_positions_are_the_debuggers(apps, tmp_path):
    log = tmp_path / "ev.jsonl"
    assert emu("run", "--events", log, *slow_neither(apps)).returncode == 0
    recs = records(log)
    script = "catch interrupt\ncatch dpc\ncatch syscall NtClose\n" + \
        "continue\nposition\n" * 4
    r = emu("debug", *slow_neither(apps), stdin=script)
    assert r.returncode == 0, r.stdout + r.stderr
    stops = [int(m) for m in re.findall(r"^(\d+) instructions? and exceptions", r.stdout,
                                        re.MULTILINE)]
    wanted = [rec["position"] for rec in recs
              if rec["event"] in ("interrupt", "dpc") or
              (rec["event"] in ("syscall", "syscall-return") and rec["number"] == 3)]
    assert stops == wanted and len(stops) == 4


@pytest.mark.parametrize("where, why", [
    ("missing/ev.jsonl", "no such directory"),
    (".", "is a directory"),
])
def test_a_bad_path_is_one_line_before_the_run(apps, tmp_path, where, why):
    r = emu("run", "--events", tmp_path / where, apps / "hello")
    assert r.returncode == 2
    assert r.stdout == ""                           # the machine never ran
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("emu: error: --events ")
    assert why in r.stderr


def test_the_log_and_another_output_cannot_be_one_file(apps, tmp_path):
    r = emu("run", "--events", tmp_path / "x", "--report", tmp_path / "x", apps / "hello")
    assert r.returncode == 2 and "the same file" in r.stderr


def test_a_full_disk_is_one_line_after_the_run(apps):
    r = emu("run", "--events", "/dev/full", apps / "hello")
    assert r.returncode == 0 and r.stdout.startswith("Hello, world!")
    assert r.stderr == "emu: error: cannot write event log /dev/full: No space left on " \
        "device (the log is incomplete)\n"


# -- the tour ----------------------------------------------------------------------------------

# About 3 s on this 2-core machine: the whole tour runs twice (with and without the log),
# since the check is that logging changes nothing of its narration.
def test_every_tour_scenario_logs_by_the_schema(apps, tmp_path):
    plain = emu("scenario", "run", "--all")
    log = tmp_path / "tour.jsonl"
    logged = emu("scenario", "run", "--all", "--events", log)
    assert logged.returncode == 0, logged.stderr
    assert logged.stdout == plain.stdout            # the narration, checks included
    recs = records(log)
    bad = [(rec, p) for rec in recs if (p := eventlog.problems(rec, scenario=True))]
    assert bad == []
    from emu.scenarios.registry import ORDER
    assert [s for s in ORDER if s not in {rec["scenario"] for rec in recs}] == []
    assert {rec["event"] for rec in recs} == set(eventlog.SCHEMA)   # every kind, somewhere
    for name in ORDER:                              # each act's positions from its boot
        acts = [rec["act"] for rec in recs if rec["scenario"] == name]
        assert acts == sorted(acts) and acts[0] == 1


def test_a_bad_scenario_log_path_is_one_line(tmp_path):
    r = emu("scenario", "run", "private-handles", "--events", tmp_path / "no" / "ev.jsonl")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("emu: error: --events ") and r.stderr.count("\n") == 1


# -- positions, event by event, against a debugger session on the same machine ---------------

APPS = ROOT / "guest" / "build" / "apps"


@pytest.mark.parametrize("drivers, apps", [
    (["slowneither.sys"], [("slowread", [r"\Device\SlowNeither"]), ("victim", [])]),
    (["peevent.sys"], [("hello", [])]),                         # waits and delays in DriverEntry
    (["ticket.sys", "scribble.sys"], [("devread", [r"\Device\Ticket"])]),
    (["peseh.sys", "pemdl.sys", "pertl.sys"], [("hello", [])]),  # exceptions, MDLs, exports
    (["direct.sys"], [("devread", [r"\Device\Direct"]), ("badread", []),
                      ("counter", ["a", "3"])]),
    (["crash.sys"], [("hello", [])]),                           # a bug check
])
def test_every_events_position_is_the_debuggers(drivers, apps):
    """At each event, the log's position is the session's (emu.debugger.session), which
    counts exceptions and export calls itself."""
    from emu import Machine
    from emu.debugger.session import Session

    def build() -> Machine:
        m = Machine("64M")
        seen.clear()
        m.log = eventlog.EventLog.attach(m, seen.append)
        for d in drivers:
            m.add_driver(DRIVERS / d)
        for name, args in apps:
            m.spawn(APPS / name, args)
        return m

    seen: list[dict] = []
    session = None

    def on_stop(stop) -> bool:
        if stop.ended:
            return False
        session.cont()
        return True

    machine = build()
    session = Session(machine, on_stop, factory=build)
    compared = []

    def check(event, _details) -> None:           # after the session's own observer
        compared.append((event.value, machine.log.position(), session.position))
    machine.executive.events.subscribe(check)
    try:
        session.run()
    finally:
        session.close()
    assert compared and [(e, a) for e, a, _ in compared] == [(e, b) for e, _, b in compared]
    # (the processes' creations came before the check was subscribed)
    assert [r["position"] for r in seen[-len(compared):]] == [a for _, a, _ in compared]
    kinds = {e for e, _, _ in compared}
    assert {"bugcheck"} <= kinds if drivers == ["crash.sys"] else \
        {"syscall", "cr3-load", "process-exit"} <= kinds


@pytest.mark.parametrize("app, gate", [("hello", b"\x0f\x05"), ("services32", b"\xcd\x2e")])
def test_a_system_call_names_its_instruction_and_returns_after_it(apps, tmp_path, app, gate):
    from emu.nt import ps
    from emu.nt.loader import load_file

    log = tmp_path / "ev.jsonl"
    assert emu("run", "--events", log, apps / app).returncode == 0
    pages = dict(load_file(apps / app).pages)
    # The system code page (a thread's return lands in RtlUserThreadExit's system call).
    pages[ps.USER_STUB_PAGE] = ps.RTL_USER_THREAD_EXIT.ljust(ps.STUB_32_OFFSET, b"\xcc") + \
        ps.RTL_USER_THREAD_EXIT_32

    def code(va: int) -> bytes:
        page = pages[va & ~0xFFF]
        return bytes(page[va & 0xFFF:(va & 0xFFF) + 2])
    recs = records(log)
    calls = [r for r in recs if r["event"] == "syscall"]
    returns = [r for r in recs if r["event"] == "syscall-return"]
    assert calls and len(returns) == len(calls)
    assert all(code(r["rip"]) == gate for r in calls)
    assert [r["rip"] for r in returns] == [r["rip"] + 2 for r in calls]
    assert returns[-1]["service"] == "NtTerminateProcess" and returns[-1]["result"] is None


def test_a_guest_timing_a_full_speed_stretch_reads_what_it_reads_under_emu_debug(apps, tmp_path):
    """docs/report.md: with the log every instruction is counted, as under emu debug, so
    petime.sys's delay measured in DriverEntry includes the instructions run between its
    two readings of the clock (uncounted, at full speed, under a plain emu run)."""
    argv = ["--driver", DRIVERS / "petime.sys", apps / "hello"]
    plain = emu("run", *argv).stdout
    logged = emu("run", "--events", tmp_path / "ev.jsonl", *argv).stdout
    debugged = emu("debug", *argv, stdin="continue\n").stdout

    def delay(out: str) -> str:
        return next(line for line in out.splitlines() if "after the delay" in line)
    assert delay(plain).endswith("interrupt +312500 system +312500 ticks +2 counter +312500")
    assert delay(logged) == delay(debugged) != delay(plain)


def test_a_refused_image_leaves_no_log(apps, tmp_path):
    log = tmp_path / "ev.jsonl"
    r = emu("run", "--events", log, apps / "hello", "--", ROOT / "README.md")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stdout == ""
    assert not log.exists()


def test_sigterm_leaves_a_whole_log(apps, tmp_path):
    import signal

    log = tmp_path / "ev.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "emu", "run", "--events", str(log),
                             str(apps / "hello"), "--", str(apps / "spin")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "Hello, world!\n"     # the machine is running
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.count("\n") == 1
    text = log.read_text()
    assert text.endswith("\n")                             # no record cut in the middle
    recs = [json.loads(line) for line in text.splitlines()]
    assert all(eventlog.problems(rec) == [] for rec in recs)
    assert any(rec["event"] == "syscall" and rec["service"] == "NtWriteConsole" and
               rec["pid"] == 12 for rec in recs)             # hello's line: logged before it
