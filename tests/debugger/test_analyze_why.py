"""``analyze --why`` and ``emu query why`` (docs/debugger.md, "Who put this value here:
analyze --why"): for each seeded bug of issue 14, the walk back through the data names the
module, function and instruction responsible, not the one that tripped over the damage."""

from __future__ import annotations

import json
import re

import pytest
from batch import DRIVERS, ROOT, answer, emu, machine_argv

from emu.debugger import why

PAGE_VA = 0x7F793950000          # slowread's and victim's page (guest/apps/slowread.c)


def machine_args(apps, drivers: list[str], commands: list[tuple[str, list[str]]]) -> list:
    return machine_argv([DRIVERS / d for d in drivers],
                        [(apps / app, args) for app, args in commands])


TICKET = (["ticket.sys", "scribble.sys"],
          [("devread", [r"\Device\Ticket"]), ("devread", [r"\Device\Ticket"])])
SLOW = (["slowneither.sys"], [("slowread", [r"\Device\SlowNeither"]), ("victim", [])])
TWICE = (["twice.sys"], [("devread", [r"\Device\Twice"])])
STALE = (["stale.sys"], [("staleuse", [])])


def debug(apps, scenario, script: str) -> str:
    r = emu("debug", *machine_args(apps, *scenario), stdin=script)
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return r.stdout


def test_scribble_is_blamed_for_tickets_counter_not_ticket_sys(apps):
    """ticket.sys's counter reads 2 at the end: its own increments (read-modify-write, each
    from the value before) lead back to scribble.sys's store of the constant 0."""
    out = debug(apps, TICKET, "continue\nanalyze --why next_ticket 4\n"
                "analyze --why next_ticket 4 --json\n")
    lines = answer(out, "analyze --why next_ticket 4")
    assert lines[0] == "why: the value at 0xfffff80001004000, 4 bytes (kernel space)"
    assert lines[1] == "  0xfffff80001004000 <ticket.sys!next_ticket> holds 0x2 (4 bytes) " \
        "at position 4708"
    assert re.fullmatch(r"  1\. write at position \d+: 0x[0-9a-f]+ <ticket\.sys!Read\+0x3e>  "
                        r"mov dword ptr \[rip \+ 0x2efc\], edx", lines[2])
    assert lines[3].startswith("       wrote 0x2 (was 0x1) at 0xfffff80001004000, 4 bytes, "
                               'in process 20 "devread"')
    assert "  5. write at position 58: 0xfffff80002001044 <scribble.sys!DriverEntry+0x44>  " \
        "mov dword ptr [rdi + rsi*4], 0" in lines
    assert "       wrote 0x0 (was 0x3e8) at 0xfffff80001004000, 4 bytes, in the system (no " \
        "process) at ring 0, IRQL 0" in lines
    assert lines[-1] == "  responsible: scribble.sys!DriverEntry+0x44 (scribble.sys) at " \
        "position 58: mov dword ptr [rdi + rsi*4], 0"
    record = json.loads(answer(out, "analyze --why next_ticket 4 --json")[0])
    assert record["blame"]["module"] == "scribble.sys"
    assert [(c["step"], c.get("symbol"), c.get("new")) for c in record["chain"]
            if c["step"] == "write"] == [("write", "ticket.sys!Read+0x3e", 2),
                                         ("write", "ticket.sys!Read+0x3e", 1),
                                         ("write", "scribble.sys!DriverEntry+0x44", 0)]
    assert record["chain"][-1]["kind"] == "constant"


def test_the_neither_dpc_wrote_the_victims_page_for_slowread(apps):
    """The victim's page: slowneither.sys's DPC wrote it in process 20 (the one it
    interrupted), serving the IRP of process 12 (slowread), whose UserBuffer it used."""
    command = f"analyze --why {PAGE_VA:#x} 4 pid 20"
    out = debug(apps, SLOW, f"continue\n{command}\n{command} --json\n")
    lines = answer(out, command)
    assert lines[2] == "  1. write at position 200302: 0xfffff80001001145 " \
        "<slowneither.sys!DpcForIsr+0x55>  mov dword ptr [rdi + r8], eax"
    assert lines[3] == "       wrote 0x61746164 (was 0x74636976) at 0x7f793950000, 4 bytes, " \
        'in process 20 "victim" tid 24 at ring 0, IRQL 2'
    assert "  2. origin: a device's data: in eax, dx read I/O port 0x304 at " \
        "slowneither.sys!DpcForIsr+0x54 (position 200301)" in lines
    assert "  the write ran in the DPC slowneither.sys!DpcForIsr (it started at position " \
        '200273), in process 20 "victim": the process it interrupted' in lines
    assert any(line.startswith('  the request it served was process 12 "slowread"\'s (IRP ')
               and line.endswith("another process, whose address is meaningless here")
               for line in lines)
    record = json.loads(answer(out, command + " --json")[0])
    assert {k: record["dpc"][k] for k in ("routine", "wrote_into", "requester",
                                          "requester_name")} == \
        {"routine": "slowneither.sys!DpcForIsr", "wrote_into": 20, "requester": 12,
         "requester_name": "slowread"}
    assert record["pointer"][-1]["field"] == "UserBuffer"
    assert record["blame"]["symbol"] == "slowneither.sys!DpcForIsr+0x55"


def test_an_irp_completed_twice_names_both_completions(apps):
    out = debug(apps, TWICE, "continue\nanalyze --why\n")
    assert answer(out, "analyze --why") == [
        "why: bug check 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS: the IRP 0xffffa080000007a0 was "
        "completed twice",
        "  first IoCompleteRequest at position 105: called from 0xfffff800010010ea "
        '<twice.sys!Read+0x2a> in process 12 "devread" at IRQL 0',
        "  second IoCompleteRequest at position 109: called from 0xfffff800010010f1 "
        '<twice.sys!Read+0x31> in process 12 "devread" at IRQL 0',
        "  responsible: twice.sys!Read+0x31 (twice.sys) at position 109: call "
        "IofCompleteRequest"]


def test_a_user_buffer_used_after_free_through_method_neither(apps):
    """staleuse frees the page whose address stale.sys kept: the fault's pointer comes from
    the driver's global, stored by its KEEP request from the IRP's Type3InputBuffer."""
    out = debug(apps, STALE, "continue\nanalyze --why\n")
    lines = answer(out, "analyze --why")
    assert lines[:3] == [
        "why: bug check 0x3b SYSTEM_SERVICE_EXCEPTION at stale.sys!DeviceControl+0x61",
        "  at position 2215: 0xfffff80001001121 <stale.sys!DeviceControl+0x61>  mov dword "
        'ptr [rax], 0x57a1e, in process 12 "staleuse" at ring 0, IRQL 0',
        "  the pointer: rax = 0x7f7a0000000"]
    assert lines[3].startswith("  1. load at position 2213: 0xfffff8000100111a "
                               "<stale.sys!DeviceControl+0x5a>  mov rax, qword ptr [rip + ")
    assert lines[4] == "  2. write at position 122: 0xfffff800010010f2 " \
        "<stale.sys!DeviceControl+0x32>  mov qword ptr [rip + 0x2f07], rdx"
    assert lines[5] == "       wrote 0x7f7a0000000 (was 0x0) at 0xfffff80001004000, 8 bytes, " \
        'in process 12 "staleuse" tid 16 at ring 0, IRQL 0'
    assert re.fullmatch(r"  4\. origin: the IRP 0x[0-9a-f]+'s stack location's Parameters\."
                        r"DeviceIoControl\.Type3InputBuffer: the I/O manager filled it from "
                        r'the system call of process 12 "staleuse" \(the request\'s '
                        r"originator\)", lines[7])
    assert lines[8] == '  process 12 "staleuse" called NtFreeVirtualMemory at position 1151, ' \
        "after the pointer was stored and before it was used: a use after free"
    assert lines[9] == "  responsible: stale.sys!DeviceControl+0x32 (stale.sys) at position " \
        "122: mov qword ptr [rip + 0x2f07], rdx"


def test_analyze_v_is_analyze_then_why(apps):
    out = debug(apps, TWICE, "continue\nanalyze\nanalyze --why\nanalyze -v\n")
    assert answer(out, "analyze -v") == answer(out, "analyze") + answer(out, "analyze --why")


def test_emu_query_why_prints_what_the_shell_prints(apps):
    shell = debug(apps, STALE, "continue\nanalyze --why --json\n")
    r = emu("query", "why", "--json", *machine_args(apps, *STALE))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == answer(shell, "analyze --why --json")
    r = emu("query", "why", "--address", "next_ticket", "--length", "4",
            *machine_args(apps, *TICKET))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "  responsible: scribble.sys!DriverEntry+0x44 " \
        "(scribble.sys) at position 58: mov dword ptr [rdi + rsi*4], 0"


@pytest.mark.parametrize(("command", "message"), [
    ("analyze --why", "error: nothing to explain: no CPU exception at this stop, no bug "
     "check, no process ended by an exception (analyze --why ADDR [LEN] [pid N] explains a "
     "value)"),
    ("analyze --why next_ticket 9", "error: length 0x9: --why follows one value, 1 to 8 bytes"),
    ("analyze --why next_ticket 4 pid 99", "error: pid 99: no such process in this machine's "
     "history (processes: 12, 20)"),
    ("analyze --why nosuchsymbol", "error: address nosuchsymbol: "),
    ("analyze --why 0x1000 4 pid", "error: pid needs a process id (see ps)"),
    ("analyze --why 0x1000 bogus", "error: length bogus: "),
    ("analyze --why 0x1000 4 bogus", "error: unexpected 'bogus'"),
    ("analyze --why 0x1000 4 pid 12 extra", "error: unexpected 'extra'"),
    ("analyze -v --why", "error: analyze -v --why: not understood"),
    ("analyze --json", "error: analyze --json: not understood"),
])
def test_bad_input_is_one_line(apps, command, message):
    out = debug(apps, TICKET, "continue\n" + command + "\n")
    lines = answer(out, command)
    assert len(lines) == 1 and lines[0].startswith(message), lines


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["hello"], 1, "emu: nothing to explain: no CPU exception at this stop"),
    (["--length", "4", "hello"], 2, "emu: error: --length and --pid go with --address ADDR"),
    (["--phys", "hello"], 2, "emu: error: emu query why: --phys is not an option here"),
    (["--address", "0x1000", "--pid", "77", "hello"], 2, "emu: error: pid 77: no such "
     "process"),
    ([], 2, "emu: error: missing APP"),
])
def test_emu_query_why_bad_input(apps, argv, status, message):
    r = emu("query", "why", *[apps / a if a == "hello" else a for a in argv])
    assert r.returncode == status
    assert r.stderr.splitlines()[-1].startswith(message), r.stderr
    assert "Traceback" not in r.stderr


def test_register_families():
    assert [why.family(n) for n in ("eax", "al", "ah", "r8d", "r15b", "sil", "rsp", "bp")] == \
        ["rax", "rax", "rax", "r8", "r15", "rsi", "rsp", "rbp"]


def test_a_user_fault_at_the_stop_and_after_the_process_ended(apps):
    """nullwrite's NULL pointer: loaded more than WINDOW steps before the fault (a printf
    between), from a global no instruction wrote: the image's initial data."""
    r = emu("debug", apps / "nullwrite", stdin="continue\nanalyze --why\ncontinue\n"
            "analyze --why\n")
    assert r.returncode in (0, 1) and "Traceback" not in r.stdout + r.stderr
    at_stop, at_end = r.stdout.split("(emu pid 12 ring 3 0x401023) analyze --why\n")[1] \
        .split("(emu ended) analyze --why\n")
    walk = [
        "  at position 675: 0x401023 <nullwrite!main+0x23>  mov qword ptr [rbx], 1, in "
        'process 12 "nullwrite" at ring 3, IRQL 0',
        "  the pointer: rbx = 0x0",
        "  1. load at position 13: 0x401010 <nullwrite!main+0x10>  mov rbx, qword ptr "
        "[rip + 0x2009]: rbx = 0x0 from 0x403020",
        "  2. origin: no instruction wrote 0x403020 since boot: its value is nullwrite's "
        "initial data, as the loader put it there",
        "  responsible: nullwrite!main+0x23 (nullwrite) at position 675: mov qword ptr "
        "[rbx], 1"]
    assert at_stop.splitlines()[:6] == ["why: the CPU exception #PF at nullwrite!main+0x23",
                                        *walk]
    assert at_end.splitlines()[:6] == [
        'why: the exception that ended process 12 "nullwrite" at nullwrite!main+0x23', *walk]


def test_a_crash_dump_has_no_past(apps, tmp_path):
    dump = tmp_path / "twice.dmp"
    r = emu("run", "--dump", dump, *machine_args(apps, *TWICE))
    assert dump.exists(), r.stderr
    r = emu("debug", "--dump", dump, stdin="analyze --why\nanalyze -v\n")
    assert "Traceback" not in r.stdout + r.stderr
    message = "analyze --why re-executes the machine from boot: it needs its recipe (use " \
        "emu debug; a crash dump has no past)"
    assert answer(r.stdout, "analyze --why") == [f"error: {message}"]
    verbose = answer(r.stdout, "analyze -v")
    assert verbose[0].startswith("bug check 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS")
    assert verbose[-1] == f"why: {message}"


def _steps(program: list[tuple[int, bytes]], first: int = 1000) -> list[why.StepState]:
    """Steps at (rip, code), one per instruction, in order; positions from ``first``."""
    from emu.hw import faultaddr
    return [why.StepState(first + n, rip, 0x1000, 0, 0, 12, 16, 12,
                          {r: 0 for r in why._GPRS} | {"rip": rip},
                          faultaddr.decode(code, rip), None)
            for n, (rip, code) in enumerate(program)]


def _tracer() -> why.Tracer:
    def symbolize(rip: int, _pid=None) -> str:
        name = "app!main" if rip < 0x2000 else "app!helper"
        return f"{name}+{rip & 0xFFF:#x}"
    return why.Tracer(lambda: None, symbolize, {12: "app"}, lambda _a, _p: None)


def test_rax_after_a_call_is_followed_into_the_callee():
    """The register slice: RAX used after `call helper` is helper's return value; its
    `mov eax, 5` is the origin, not an older write of RAX in main."""
    steps = _steps([(0x1000, b"\xb8\x07\x00\x00\x00"),      # mov eax, 7 (overwritten)
                    (0x1005, b"\xe8\xf6\x0f\x00\x00"),      # call 0x2000
                    (0x2000, b"\xb8\x05\x00\x00\x00"),      # helper: mov eax, 5
                    (0x2005, b"\x89\xc1"),                  # helper: mov ecx, eax
                    (0x2007, b"\xc3"),                      # helper: ret
                    (0x100A, b"\x8d\x50\x01"),              # lea edx, [rax + 1]
                    (0x100D, b"\x89\x13")])                 # mov dword ptr [rbx], edx
    tracer = _tracer()
    tracer.trace_register(steps, 6, "rdx")
    (origin,) = tracer.chain
    assert (origin["kind"], origin["value"], origin["symbol"]) == ("constant", 5,
                                                                   "app!helper+0x0")
    assert origin["through"] == ["app!main+0xa (1005): lea edx, [rax + 1]",
                                 "app!helper+0x7 (1004): ret (rax: app!helper's return value)"]


def test_a_register_set_before_the_function_is_not_followed():
    """From boot (nothing before the window) to a use of RAX no step of main set."""
    steps = _steps([(0x1000, b"\x90"), (0x1001, b"\x89\x03")], 0)  # nop; mov [rbx], eax
    tracer = _tracer()
    tracer.trace_register(steps, 1, "rax")
    assert tracer.chain[0]["kind"] == "not-followed"
    assert tracer.chain[0]["text"] == "rax was set before the 1 steps re-executed before " \
        "position 1, or before app!main was entered (an argument from its caller): not " \
        "followed"


@pytest.mark.parametrize(("argv", "expected"), [
    # bug check 0xFC: the pointer is RIP; the call that went there, and its target's source
    (["--driver", "nxpool.sys", "hello"], [
        "  reached by: 0xfffff8000100108f <nxpool.sys!DriverEntry+0x8f>  call rbx at "
        "position 44",
        "  the pointer: rip = 0xffffa08000000250",
        "  1. origin: ExAllocatePoolWithTag's return value (a kernel export, called at "
        "position 35): not followed into the executive",
        "       then nxpool.sys!DriverEntry+0x77 (36): mov rbx, rax",
        "  responsible: nxpool.sys!DriverEntry+0x8f (nxpool.sys) at position 44: call rbx"]),
    # SMEP: the call through the IRP's UserBuffer, a user address from devread's request
    (["--driver", "smep.sys", "devread", r"\Device\Smep", "16", "0x401000"], [
        "  reached by: 0xfffff800010010de <smep.sys!Read+0x1e>  call qword ptr [rsi + 0x70] "
        "at position 321",
        "  the pointer: rip = 0x401000",
        "  1. load at position 321: 0xfffff800010010de <smep.sys!Read+0x1e>  call qword ptr "
        "[rsi + 0x70]: rip = 0x401000 from 0xffffa08000000710"]),
    # bug check 0xD1: the pool block DriverEntry kept (PagedPool) read at DISPATCH_LEVEL
    (["--driver", "pagedpool.sys", "pagedrv", "dispatch"], [
        "  2. write at position 13: 0xfffff8000100102b <pagedpool.sys!DriverEntry+0x2b>  mov "
        "qword ptr [rip + 0x2fce], rax",
        "  3. origin: ExAllocatePoolWithTag's return value (a kernel export, called at "
        "position 12): not followed into the executive",
        "  responsible: pagedpool.sys!DriverEntry+0x2b (pagedpool.sys) at position 13: mov "
        "qword ptr [rip + 0x2fce], rax"]),
])
def test_other_bug_checks(apps, argv, expected):
    args = [DRIVERS / a if a.endswith(".sys") else apps / a if a in
            ("hello", "devread", "pagedrv") else a for a in argv]
    r = emu("query", "why", *args)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for line in expected:
        assert line in lines, (line, lines)


def test_a_stale_write_into_a_page_allocated_again(apps):
    """staleuse reuse: the freed address is committed again; stale.sys's stamp lands in the
    new allocation (no fault). The value's walk names the stamp; its pointer's walk names
    the KEEP request's Type3InputBuffer, the free, and the new allocation."""
    command = "analyze --why 0x7F7A0000000 4 pid 12"
    out = debug(apps, (["stale.sys"], [("staleuse", ["reuse"])]), f"continue\n{command}\n")
    lines = answer(out, command)
    assert lines[2].startswith("  1. write at position ") and lines[2].endswith(
        " <stale.sys!DeviceControl+0x61>  mov dword ptr [rax], 0x57a1e")
    assert lines[3].startswith("       wrote 0x57a1e (was 0xb0b) at 0x7f7a0000000, 4 bytes, "
                               'in process 12 "staleuse"')
    assert any(re.fullmatch(r"  pointer 4\. origin: the IRP 0x[0-9a-f]+'s stack location's "
                            r"Parameters\.DeviceIoControl\.Type3InputBuffer: .*", line)
               for line in lines)
    assert any(re.fullmatch(r'  process 12 "staleuse" called NtFreeVirtualMemory at position '
                            r"\d+, after the pointer was stored and before it was used: a use "
                            r"after free", line) for line in lines)
    assert any(re.fullmatch(r'  process 12 "staleuse" called NtAllocateVirtualMemory at '
                            r"position \d+, after the free: the write landed in memory "
                            r"allocated again", line) for line in lines)
    assert lines[-1].startswith("  responsible: stale.sys!DeviceControl+0x61 (stale.sys)")


def test_the_docs_example_is_what_emu_query_why_prints(apps):
    doc = (ROOT / "docs" / "debugger.md").read_text()
    example = doc.split("(emu ended) analyze --why 0x7f793950000 4 pid 20\n")[1] \
        .split("```")[0]
    r = emu("query", "why", "--address", "0x7f793950000", "--length", "4", "--pid", "20",
            *machine_args(apps, *SLOW))
    assert r.returncode == 0, r.stderr
    assert r.stdout == example
