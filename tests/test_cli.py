"""``emu run`` as a user runs it: output, exit status, one-line messages, report, trace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import emurun
import pytest


def emu(*args, cwd=None):
    """``python -m emu ARGS``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu(*args, cwd=cwd, timeout=120)


def emu_process(*args):
    """``python -m emu ARGS`` in a subprocess: a fresh interpreter (its own hash seed)."""
    return subprocess.run([sys.executable, "-m", "emu", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_hello(apps):
    r = emu("run", apps / "hello", "a", "-b")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello, world!\nargv[1] = a\nargv[2] = -b\n"
    assert r.stderr == ""


def test_exit_status_is_the_apps(apps):
    assert emu("run", apps / "exitcode", "42").returncode == 42


def test_fault_is_one_line(apps):
    r = emu("run", apps / "badread")
    assert r.returncode == 125
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('process 12 "badread" terminated: STATUS_ACCESS_VIOLATION '
                               "(0xC0000005) reading 0xffff800000001000 at rip 0x")
    assert lines[0].endswith(": mov rax, qword ptr [rax]") or "qword ptr" in lines[0]


def test_report(apps, tmp_path):
    out = tmp_path / "r.json"
    r = emu("run", "--report", out, apps / "nullwrite")
    assert r.returncode == 125
    rep = json.loads(out.read_text())
    (p,) = rep["processes"]
    assert p["pid"] == 12 and p["name"] == "nullwrite" and p["exit_status"] == 0xC0000005
    exc = p["exception"]
    assert exc["code"] == 0xC0000005 and exc["name"] == "STATUS_ACCESS_VIOLATION"
    assert exc["access"] == "write" and exc["address"] == 0 and exc["params"] == [1, 0]
    assert rep["bugcheck"] is None
    assert set(rep["stats"]) >= {"instructions", "tlb_fills", "page_faults"}
    assert rep["stats"]["page_faults"] == 1


def test_the_report_docs_show_is_the_one_emu_run_writes(tmp_path):
    """docs/report.md's example is what `emu run --report FILE guest/build/apps/badread`
    writes, run from the repository's root: every field and every value."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "report.md").read_text()
    example = text[text.index("```json\n") + len("```json\n"):]
    example = json.loads(example[:example.index("```")])
    out = tmp_path / "r.json"
    r = emu("run", "--report", out, "guest/build/apps/badread", cwd=root)
    assert r.returncode == 125, r.stderr
    assert json.loads(out.read_text()) == example


def report_docs() -> tuple[Path, str]:
    root = Path(__file__).resolve().parents[1]
    return root, (root / "docs" / "report.md").read_text()


def test_the_event_log_line_the_docs_show_is_one_emu_run_writes(tmp_path):
    """docs/report.md's event log line is a line of the log its command writes."""
    root, text = report_docs()
    intro = "A line, for example (`emu run --events ev.jsonl guest/build/apps/hello`):"
    block = text[text.index(intro):]
    block = block[block.index("```json\n") + len("```json\n"):]
    line = block[:block.index("\n```")]
    out = tmp_path / "ev.jsonl"
    r = emu("run", "--events", out, "guest/build/apps/hello", cwd=root)
    assert r.returncode == 0, r.stderr
    assert line in out.read_text().splitlines()


def test_the_steppable_page_of_the_docs_dpc_run_has_the_steps_they_say(tmp_path):
    """docs/report.md's `--html` example run: the stderr line in the form the docs give, with
    the number of steps they give."""
    root, text = report_docs()
    steps = re.search(r"The seed's DPC run above: (\d+) steps", text).group(1)
    out = tmp_path / "dpc.html"
    r = emu("run", "--html", out, "--driver", "guest/build/drivers/slowneither.sys",
            "guest/build/apps/slowread", "\\Device\\SlowNeither", "--",
            "guest/build/apps/victim", cwd=root)
    assert r.returncode == 0, r.stderr
    size = f"{out.stat().st_size:,}"
    assert r.stderr == f"emu: steppable page written to {out}: {steps} steps, {size} bytes\n"
    # The command line is the page's title, each app by its file's name, `--` as typed (no
    # NUL byte in the page).
    page = out.read_text()
    assert "\0" not in page
    assert "<title>emu run slowread \\Device\\SlowNeither -- victim</title>" in page


def test_the_report_docs_name_every_field_of_a_bug_check_and_a_driver(tmp_path):
    """Each key of the report's `bugcheck` and `drivers[]` objects is named in its row of
    docs/report.md's table."""
    root, text = report_docs()
    rows: dict[str, str] = {}
    for row in text.splitlines():        # the report's table first: the event log's after
        if row.startswith("| `"):
            rows.setdefault(row.split(" | ")[0].strip("| `"), row)
    out = tmp_path / "r.json"
    r = emu("run", "--report", out, "--driver", "guest/build/drivers/crash.sys",
            "guest/build/apps/hello", cwd=root)
    assert r.returncode == 126
    rep = json.loads(out.read_text())
    for key in rep["bugcheck"]:
        assert f"`{key}`" in rows["bugcheck"], key
    for key in rep["drivers"][0]:
        assert f"`{key}`" in rows["drivers[]"], key
    assert rep["drivers"][0]["status"] is None and rep["processes"][0]["state"] == "ready"
    assert rep["processes"][0]["paging"]["working_set"] > 0   # never ran: not null


def test_max_insns(apps):
    r = emu("run", "--max-insns", "50000", apps / "spin")
    assert r.returncode == 124
    assert "stopped after 50000 instructions" in r.stderr and '"spin"' in r.stderr


def test_trace(apps, tmp_path):
    trace = tmp_path / "t.txt"
    r = emu("run", "--trace-file", trace, apps / "exitcode", "7")
    assert r.returncode == 7
    lines = trace.read_text().splitlines()
    assert lines[0].startswith("ring 0") and "iretq" in lines[0]
    assert lines[1].startswith("ring 3") and "pid 12" in lines[1]
    assert any("syscall" in line for line in lines)


@pytest.mark.parametrize("args, fragment", [
    (["run", "/nonexistent/app"], "no such file"),
    (["run", "--mem", "lots", "x"], "bad size"),
    (["run", "--mem", "100K", "x"], "memory size"),
    (["run", "--max-insns", "-5", "x"], "must be positive"),
    (["run"], "required"),
    ([], "missing command"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line(args, fragment):
    r = emu(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_not_elf(tmp_path):
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\n")
    r = emu("run", f)
    assert r.returncode == 2 and "not an ELF file" in r.stderr


def test_version():
    r = emu("--version")
    assert r.returncode == 0 and "unicorn 2.1.4" in r.stdout


@pytest.mark.parametrize("app, args, status", [
    ("badread", [], "STATUS_ACCESS_VIOLATION (0xC0000005) reading 0xffff800000001000"),
    ("nullread", [], "STATUS_ACCESS_VIOLATION (0xC0000005) reading 0x0 "),
    ("nullwrite", [], "STATUS_ACCESS_VIOLATION (0xC0000005) writing 0x0 "),
    ("rowrite", [], "STATUS_ACCESS_VIOLATION (0xC0000005) writing 0x"),
    ("execdata", [], "STATUS_ACCESS_VIOLATION (0xC0000005) executing 0x"),
    ("privileged", ["cli"], "STATUS_PRIVILEGED_INSTRUCTION (0xC0000096) at rip"),
    ("illegal", [], "STATUS_ILLEGAL_INSTRUCTION (0xC000001D) at rip"),
    ("divzero", [], "STATUS_INTEGER_DIVIDE_BY_ZERO (0xC0000094) at rip"),
    ("breakpoint", [], "STATUS_BREAKPOINT (0x80000003) at rip"),
    ("noncanon", [], "STATUS_ACCESS_VIOLATION (0xC0000005) reading 0xffffffffffffffff "
                     "(non-canonical address 0x800000000000, #GP)"),
    ("stackoverflow", [], "STATUS_STACK_OVERFLOW (0xC00000FD) writing 0x7fffffee"),
])
def test_each_fault_app_through_the_command_line(apps, app, args, status):
    r = emu("run", apps / app, *args)
    assert r.returncode == 125
    (line,) = r.stderr.splitlines()
    assert line.startswith(f'process 12 "{app}" terminated: {status}'), line
    assert " at rip 0x" in line


@pytest.mark.parametrize("app, out", [("badptr", "still alive\n"), ("getpid", "pid 12\n"),
                                      ("hello-pie", "Hello, world!\n")])
def test_well_behaved_apps_through_the_command_line(apps, app, out):
    r = emu("run", apps / app)
    assert r.returncode == 0 and r.stdout.endswith(out) and r.stderr == ""


def test_report_of_a_clean_run_is_deterministic(apps, tmp_path):
    reports = []
    for i, command in enumerate((emu, emu_process)):    # a fork, then a fresh interpreter
        out = tmp_path / f"r{i}.json"
        assert command("run", "--max-insns", "1000000", "--report", out,
                       apps / "hello").returncode == 0
        reports.append(out.read_text())
    assert reports[0] == reports[1]
    assert json.loads(reports[0])["stats"]["instructions"] > 0


def test_ctrl_c_stops_a_runaway_guest_at_full_speed(apps, tmp_path):
    import signal
    import time

    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "emu", "run", "--report", str(out),
                             str(apps / "spin")], stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)                     # let it get into the guest's loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.startswith("emu: interrupted at rip 0x") and "Traceback" not in err
    rep = json.loads(out.read_text())
    assert rep["machine"]["stopped"] == "interrupted"
    assert rep["processes"][0]["state"] == "running"


def test_app_too_big_for_ram_is_a_clear_error(apps):
    r = emu("run", "--mem", "1M", apps / "sweep")
    assert r.returncode == 2
    assert r.stderr.strip().endswith("does not fit in 1024 KiB of RAM (try a larger --mem)")


def test_arguments_too_long_is_a_clear_error(apps):
    r = emu("run", apps / "hello", "x" * 100_000, "y" * 100_000, "z" * 60_000)
    assert r.returncode == 2 and "arguments too long" in r.stderr
    assert r.stderr.count("\n") == 1


def test_a_separator_right_after_the_app_starts_a_second_process(apps):
    r = emu("run", apps / "hello", "--", apps / "exitcode", "5")
    assert r.returncode == 0 and r.stdout == "Hello, world!\n"


def test_several_apps_in_one_machine(apps):
    r = emu("run", apps / "counter", "a", "2", "--", apps / "crasher", "div", "--",
            apps / "counter", "b", "2")
    assert r.returncode == 0                      # the first app's exit status
    assert r.stdout.splitlines() == ["crasher div", "a 1", "b 1", "a 2", "b 2"]
    assert 'process 20 "crasher" terminated: STATUS_INTEGER_DIVIDE_BY_ZERO' in r.stderr


def test_same_command_same_output_and_report(apps, tmp_path):
    runs = []
    for i, command in enumerate((emu, emu_process)):    # a fork, then a fresh interpreter
        out = tmp_path / f"r{i}.json"
        r = command("run", "--quantum", "5000", "--report", out, apps / "race", "--",
                    apps / "counter", "c", "3", "1000")
        runs.append((r.returncode, r.stdout, r.stderr, out.read_text()))
    assert runs[0] == runs[1]


def test_deadlock_exit_status(apps):
    r = emu("run", apps / "deadlock")
    assert r.returncode == 123
    assert r.stderr.startswith("emu: every thread is waiting") and '"deadlock"' in r.stderr


@pytest.mark.parametrize("args, fragment", [
    (["run", "--quantum", "0", "x"], "must be positive"),
    (["run", "APP", "--"], "missing APP after `--`"),
    (["run", "--", "APP"], "missing APP"),
    (["run", "--fs", "/nonexistent", "x"], "not a directory"),
])
def test_more_usage_errors(args, fragment):
    r = emu(*args)
    assert r.returncode == 2 and fragment in r.stderr and r.stderr.count("\n") == 1


def test_too_many_processes_is_refused(machine_factory, apps, monkeypatch):
    from emu.nt import ps

    monkeypatch.setattr(ps, "MAX_PROCESSES", 3)
    m = machine_factory()
    for _ in range(3):
        m.spawn(apps / "hello")
    with pytest.raises(ps.LimitError, match="too many processes"):
        m.spawn(apps / "hello")


def test_map_prints_regions_and_draws_the_svg(apps, tmp_path):
    import xml.etree.ElementTree as ET

    svg = tmp_path / "m.svg"
    r = emu("run", "--map-svg", svg, apps / "counter", "a", "1", "--", apps / "counter", "b", "1")
    assert r.returncode == 0
    assert 'process 12 "counter"' in r.stderr and 'process 20 "counter"' in r.stderr
    assert "PAGE_EXECUTE_READ" in r.stderr and "no physical frame is mapped by two" in r.stderr
    root = ET.fromstring(svg.read_text())
    arrows = [e for e in root.iter() if e.get("class") == "arrow"]
    assert arrows


def test_map_svg_to_an_unwritable_place_is_a_clear_error(apps):
    r = emu("run", "--map-svg", "/nonexistent/dir/m.svg", apps / "hello")
    assert r.returncode == 2 and r.stdout == ""          # refused before the app runs
    assert r.stderr == ("emu: error: --map-svg /nonexistent/dir/m.svg: no such directory "
                        "/nonexistent/dir\n")


def test_a_driver_crash_is_a_blue_screen(apps):
    from pathlib import Path

    sys_file = Path(apps).parent / "drivers" / "crash.sys"
    if not sys_file.exists():
        pytest.skip("drivers not built")
    r = emu("run", "--driver", sys_file, apps / "hello")
    assert r.returncode == 126 and r.stdout.startswith("crash.sys:")
    assert "PAGE_FAULT_IN_NONPAGED_AREA (0x00000050)" in r.stderr
    assert "The fault happened in driver crash.sys (crash.sys!DriverEntry+0x" in r.stderr
    assert "Process: System (no process), IRQL 0" in r.stderr


def test_a_bad_driver_is_a_usage_error(apps):
    r = emu("run", "--driver", apps / "hello", apps / "hello")
    assert r.returncode == 2 and "not a PE image (drivers are PE32+ .sys files" in r.stderr


def _limit_address_space(limit: int):
    def apply() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def test_mem_larger_than_the_host_can_give_is_one_line(apps):
    # 16G is within the documented range (1M to 64G) but not within a 6 GiB address space.
    r = subprocess.run([sys.executable, "-m", "emu", "run", "--mem", "16G", str(apps / "hello")],
                       capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_address_space(6 << 30))
    assert r.returncode == 2, r.stderr
    assert r.stderr == ("emu: error: --mem 16G: cannot allocate 16 GiB of host memory for "
                        "guest RAM\n")


@pytest.mark.parametrize("option", [[], ["--driver"]])
def test_a_fifo_is_refused_not_waited_on(apps, tmp_path, option):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    args = [*option, fifo, apps / "hello"] if option else [fifo]
    r = emu("run", *args)        # before: open() waited for a writer forever (timeout)
    assert r.returncode == 2
    assert r.stderr == f"emu: error: {fifo}: not a regular file (a FIFO)\n"


@pytest.mark.parametrize("option", [[], ["--driver"]])
def test_a_device_is_refused_not_read_to_exhaustion(apps, option):
    args = [*option, "/dev/zero", apps / "hello"] if option else ["/dev/zero"]
    r = subprocess.run([sys.executable, "-m", "emu", "run", *map(str, args)],
                       capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_address_space(3 << 30))
    assert r.returncode == 2
    assert r.stderr == "emu: error: /dev/zero: not a regular file (a character device)\n"


@pytest.mark.parametrize("option", ["--report", "--dump", "--map-svg", "--trace-file"])
@pytest.mark.parametrize("where, problem", [
    ("missing/out", "no such directory {tmp}/missing"),
    ("file/out", "{tmp}/file is not a directory"),
    ("dir", "is a directory"),
])
def test_bad_output_paths_are_refused_before_the_machine_starts(apps, tmp_path, option,
                                                                where, problem):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    out = tmp_path / where
    r = emu("run", option, out, apps / "hello")
    assert r.returncode == 2
    assert r.stdout == ""                                   # hello never ran
    assert r.stderr == f"emu: error: {option} {out}: {problem.format(tmp=tmp_path)}\n"


def test_two_outputs_to_one_file_are_refused(apps, tmp_path):
    out = tmp_path / "same"
    r = emu("run", "--report", out, "--dump", out, apps / "hello")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"emu: error: --dump {out}: the same file as --report\n"


@pytest.mark.parametrize("option", ["--report", "--dump", "--map-svg"])
def test_an_output_failing_after_the_run_keeps_the_runs_own_result(apps, option):
    # /dev/full passes every check up front, then every write fails with ENOSPC.
    crash = apps.parent / "drivers" / "crash.sys"
    r = emu("run", option, "/dev/full", "--driver", crash, apps / "hello")
    assert r.returncode == 126                              # the bug check's status, not 2
    assert "PAGE_FAULT_IN_NONPAGED_AREA (0x00000050)" in r.stderr
    what = {"--report": "report", "--dump": "crash dump", "--map-svg": "map"}[option]
    assert f"emu: error: cannot write {what} /dev/full: No space left on device\n" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_trace_file_failing_during_the_run_keeps_the_runs_own_result(apps):
    r = emu("run", "--trace-file", "/dev/full", apps / "exitcode", "42")
    assert r.returncode == 42
    assert r.stderr == ("emu: error: cannot write trace file /dev/full: No space left on "
                        "device (the trace is incomplete)\n")


def test_sigterm_stops_the_machine_with_one_line_and_status_143(apps, tmp_path):
    import signal

    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "emu", "run", "--report", str(out),
                             str(apps / "hello"), "--", str(apps / "spin")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "Hello, world!\n"     # the machine is running
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143                            # 128 + SIGTERM, as a shell says
    assert err.startswith("emu: terminated by SIGTERM at rip 0x") and err.count("\n") == 1
    rep = json.loads(out.read_text())                        # the outputs are still written
    assert rep["machine"]["stopped"] == "interrupted"


def test_a_closed_pipe_on_stdout_is_not_a_traceback(apps):
    proc = subprocess.Popen([sys.executable, "-m", "emu", "run", str(apps / "exitcode"), "3",
                             "--", str(apps / "hello")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                      # `emu run ... | head -0`: no reader at all
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 3 and err == ""


@pytest.mark.parametrize("ends", ["help", "no-such-command"])
def test_emu_debug_with_a_closed_pipe_on_stdout_goes_on_unheard(apps, tmp_path, ends):
    """`emu debug ... | head`: once the reader has gone the session goes on with its output
    discarded, as `emu run`'s does: no traceback, no "internal error", every command of the
    script runs (the last one decides the exit status: 1 when it fails)."""
    script = tmp_path / "s.gdb"
    script.write_text("help\n" * 50 + "break printf\ncontinue\ninfo registers\n"
                      "continue\n" + ends + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "emu", "debug", "-x", str(script),
                             str(apps / "hello")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                      # no reader at all
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == (0 if ends == "help" else 1) and err == ""


@pytest.mark.parametrize("words", [["calls", "IoCompleteRequest"],
                                   ["write", "0x401000", "--pid", "12"]])
def test_emu_query_with_a_closed_pipe_on_stdout_is_not_a_traceback(apps, words):
    drivers = Path(__file__).resolve().parents[1] / "guest" / "build" / "drivers"
    proc = subprocess.Popen([sys.executable, "-m", "emu", "query", *words, "--driver",
                             str(drivers / "twice.sys"), str(apps / "devread"),
                             r"\Device\Twice"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                      # `emu query ... | head -0`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_a_driver_image_loads_once(apps, tmp_path):
    """The same image name twice (another path, another case): refused before the machine
    runs, as MmLoadSystemImage refuses it (STATUS_IMAGE_ALREADY_LOADED)."""
    drivers = Path(__file__).resolve().parents[1] / "guest" / "build" / "drivers"
    again = tmp_path / "TWICE.SYS"
    again.write_bytes((drivers / "twice.sys").read_bytes())
    r = emu("run", "--driver", drivers / "twice.sys", "--driver", again, apps / "hello")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"emu: error: {again}: a driver named TWICE.SYS is loaded already "
                        "(an image loads once: STATUS_IMAGE_ALREADY_LOADED)\n")


@pytest.mark.parametrize("name", ["hello", "hello-pie"])
def test_an_app_given_as_a_driver_is_not_a_pe_image(apps, name):
    # One driver format (PE32+): an app, static or PIE, is refused as any non-PE file.
    r = emu("run", "--driver", apps / name, apps / "hello")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"emu: error: {apps / name}: not a PE image (drivers are PE32+ .sys "
                        "files: docs/drivers.md)\n")


def test_a_linux_program_given_as_a_driver_is_not_a_pe_image(apps, tmp_path):
    (tmp_path / "l.c").write_text("int main(void) { return 1; }\n")
    subprocess.run(["gcc", "-o", tmp_path / "l", tmp_path / "l.c"], check=True)   # a PIE
    r = emu("run", "--driver", tmp_path / "l", apps / "hello")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"emu: error: {tmp_path / 'l'}: not a PE image (drivers are PE32+ "
                        ".sys files: docs/drivers.md)\n")


def test_an_elf_driver_is_refused_as_unsupported_both_ways(apps, tmp_path):
    # The retired driver form: an ELF shared object exporting DriverEntry. Given as an app it
    # is told apart from an app and refused as unsupported (not sent to --driver, which
    # takes PE images only); given to --driver it is not a PE image.
    (tmp_path / "d.c").write_text("long DriverEntry(void *d, void *r) { return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-nostdlib", "-o", tmp_path / "d.so",
                    tmp_path / "d.c"], check=True)
    r = emu("run", tmp_path / "d.so")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"emu: error: {tmp_path / 'd.so'}: an ELF shared object exporting "
                        "DriverEntry: ELF drivers are not supported (drivers are PE32+ .sys "
                        "files: docs/drivers.md)\n")
    r = emu("run", "--driver", tmp_path / "d.so", apps / "hello")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"emu: error: {tmp_path / 'd.so'}: not a PE image (drivers are PE32+ "
                        ".sys files: docs/drivers.md)\n")


def test_sigterm_while_waiting_for_gdb_ends_with_one_line_and_143(apps):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "emu", "run", "--gdb", "127.0.0.1:0",
                             str(apps / "hello")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith("gdb stub: listening on 127.0.0.1:")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (143, "", "emu: terminated by SIGTERM\n")


def test_gdb_listens_on_loopback_addresses_only(apps):
    """docs/debugger.md "gdb": another HOST is refused in one line, before the run."""
    r = emu("run", "--gdb", "0.0.0.0:1234", apps / "hello")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("emu: error: gdb stub: refusing to listen on 0.0.0.0, which is not a "
                        "loopback address (whoever reaches it controls the machine)\n")


def test_a_bad_gdb_address_is_refused_before_the_machine_is_made(apps, tmp_path):
    """--gdb '' ran the app without gdb, exit 0; a bad address is refused up front, before
    an output file is made."""
    trace = tmp_path / "t.txt"
    for address in ("", "0.0.0.0:1234"):
        r = emu("run", "--gdb", address, "--trace-file", trace, apps / "hello")
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr.startswith("emu: error: gdb stub: ") and r.stderr.count("\n") == 1
        assert not trace.exists()
    r = emu("run", "--gdb", "", apps / "hello")
    assert r.stderr == "emu: error: gdb stub: bad address '' (expected HOST:PORT or PORT)\n"


def test_emu_run_imports_none_of_the_debugger_s_machinery(apps):
    """`emu run` starts quickly (make bench's start-up row): only `run`'s parser is built
    (the other commands' modules stay out); the session, reverse execution, queries, crash
    dumps, PDB reading and JSON (`emu query --json`, the report, the event log) are imported only
    by the commands that use them; Capstone only by the first instruction decoded (a
    fault reported, a block counted), which `hello` never needs."""
    code = ("import runpy, sys\n"
            "sys.argv = ['emu', 'run', sys.argv[1]]\n"
            "try:\n"
            "    runpy.run_module('emu', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = ['emu.debugger.session', 'emu.debugger.reverse', 'emu.debugger.query',\n"
            "         'emu.debugger.dumptarget', 'emu.nt.dump', 'emu.nt.pe', 'purepdb',\n"
            "         'emu.debugger.snapshots', 'json', 'capstone', 'emu.debugger.cli',\n"
            "         'emu.debugger.querycli', 'emu.scenarios.cli', 'emu.tools.build_driver',\n"
            "         'emu.build', 'emu.exercise.cli']\n"
            "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, str(apps / "hello")], capture_output=True,
                       text=True, timeout=120)
    assert r.stdout == "Hello, world!\n"
    assert r.stderr.strip().splitlines()[-1] == "[]"


COMMANDS = ["run", "debug", "query", "scenario", "build-driver", "build", "exercise"]


@pytest.mark.parametrize("command", COMMANDS[:-1])    # (exercise parses its own words)
def test_a_command_s_own_parser_reads_as_the_whole_one(command, capsys):
    """`emu COMMAND ...` is parsed by COMMAND's parser alone (start-up): its --help and its
    errors are those of the parser that holds every command."""
    from emu.cli import UsageError, build_parser

    seen = []
    for parser in (build_parser(), build_parser(command)):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([command, "--help"])
        with pytest.raises(UsageError) as error:
            parser.parse_args([command, "--no-such-option"])
        seen.append((stop.value.code, capsys.readouterr().out, str(error.value)))
    assert seen[0] == seen[1]
    assert seen[1][1].startswith(f"usage: emu {command} ")


def test_emu_help_lists_every_command():
    r = emu("--help")
    assert r.returncode == 0 and r.stderr == ""
    listed = r.stdout.split("COMMAND ...", 1)[1]
    assert re.findall(r"^    (\S+)", listed, re.MULTILINE) == COMMANDS
    r = emu("bogus")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("emu: error: argument COMMAND: invalid choice: 'bogus' (choose from "
                        + ", ".join(f"'{c}'" for c in COMMANDS) + ")\n")
