"""`emu debug` as a user drives it: batch scripts through the real command line, their
transcripts, the run-control and breakpoint commands, bad input, post mortem."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import emurun
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Relative to ROOT, where every command runs: the app's path is its argv[0], on its stack,
# so an absolute path would move the stack addresses the transcripts show with the clone.
APPS = Path("guest") / "build" / "apps"
DRIVERS = Path("guest") / "build" / "drivers"


def debug(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``emu debug ARGS`` with ``script`` on standard input (batch mode), in a fork of this
    process (tests/emurun.py)."""
    return emurun.emu("debug", *args, input=script, cwd=ROOT, timeout=timeout)


def lines(out: str) -> list[str]:
    return out.splitlines()


def test_batch_transcript_of_steps_and_breakpoints():
    r = debug("stepi 3\nbreak NtWriteConsole\ninfo breakpoints\ncontinue\nposition\n",
              str(APPS / "hello"))
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout)[:9] == [
        'process 12 "hello" stopped at its entry point hello!_start, ring 3',
        '=> 0x401059 <hello!_start>: xor ebp, ebp   [pid 12 "hello", ring 3]',
        "(emu pid 12 ring 3 0x401059) stepi 3",
        '=> 0x401064 <hello!_start+0xb>: lea rdx, [rsi + rdi*8 + 8]   [pid 12 "hello", ring 3]',
        "(emu pid 12 ring 3 0x401064) break NtWriteConsole",
        "Breakpoint 1 at 0x40208d <hello!NtWriteConsole>",
        "(emu pid 12 ring 3 0x401064) info breakpoints",
        "Num  Type        Enb Hits What",
        "1    breakpoint  y   0    0x40208d <hello!NtWriteConsole>",
    ]
    assert "Breakpoint 1, hello!NtWriteConsole" in r.stdout
    assert "(emu pid 12 ring 3 0x40208d) position\n518 instructions and exceptions since " \
           "boot" in r.stdout


def test_the_same_script_gives_the_same_output():
    script = "break main\nc\nni\nni\nsi 40\nrsi 20\nregs\nc\n"
    first = debug(script, str(APPS / "hello"), "x")
    second = subprocess.run([sys.executable, "-m", "emu", "debug", str(APPS / "hello"), "x"],
                            input=script, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert first.returncode == 0 and first.stdout == second.stdout


def test_guest_output_is_not_repeated_when_going_back():
    r = debug("break NtWriteConsole\nc\nc\nrc\nrc\nc\nc\nc\n", str(APPS / "hello"), "a")
    assert r.stdout.count("Hello, world!") == 2      # once before going back, once after
    assert r.stdout.count("argv[1] = a") == 1


def test_unknown_command_suggests_the_nearest_and_fails_the_batch():
    r = debug("stpei\nbreak nosuchsymbol\nx/4gx 0xffff900000000000\n", str(APPS / "hello"))
    assert r.returncode == 1
    assert "error: unknown command 'stpei' (did you mean 'stepi'?)" in r.stdout
    assert "error: no symbol 'nosuchsymbol'" in r.stdout
    errors = [line for line in lines(r.stdout) if line.startswith("error:")]
    assert len(errors) == 3 and "not present" in errors[2]
    assert "Traceback" not in r.stdout + r.stderr


def test_help_lists_and_explains_commands():
    r = debug("help\nhelp break\nhelp walk\n", str(APPS / "hello"))
    assert r.returncode == 0
    assert "stepi" in r.stdout and "reverse-continue" in r.stdout and "walk" in r.stdout
    assert "break LOCATION [pid N] [if COND]" in r.stdout


def test_watch_and_catch_commands():
    r = debug("watch $rsp-8\ncatch syscall NtWriteConsole\nc\nc\ninfo breakpoints\n",
              str(APPS / "hello"))
    out = r.stdout
    assert "Watchpoint 1: write of 0x7ffffffdff88..0x7ffffffdff8f in process 12" in out
    assert "Catchpoint 2 (syscall NtWriteConsole, 0x1)" in out
    assert "Watchpoint 1: 8-byte write of 0x7ffffffdff88 (value 0x401072)" in out
    assert "Catchpoint 2 (system call NtWriteConsole(" in out
    assert "catchpoint  y   1" in out


def test_conditional_breakpoint_in_the_shell():
    r = debug("break main if rdi == 3\nc\nregs\n", str(APPS / "hello"), "a", "b")
    assert "Breakpoint 1, hello!main" in r.stdout
    assert "rdi 0x0000000000000003" in r.stdout
    r = debug("break main if rdi == 9\nc\n", str(APPS / "hello"), "a", "b")
    assert "Breakpoint 1" not in r.stdout.split("(emu")[-1]


def test_stop_at_driver_entry_and_step_in_ring_0():
    r = debug("si\nc\n", "--stop-at-driver", "--driver", str(DRIVERS / "hello.sys"),
              str(APPS / "hello"))
    assert r.returncode == 0, r.stderr
    assert "stopped before DriverEntry at hello.sys!DriverEntry, ring 0" in r.stdout
    assert "[kernel, ring 0]" in r.stdout


def test_run_control_after_the_end_is_refused_but_going_back_works():
    r = debug("c\nposition\nsi\nrsi 3\nposition\n", str(APPS / "hello"))
    assert "the machine has stopped: every process has ended" in r.stdout
    assert "error: the machine has ended" in r.stdout
    ended, back = [int(part.split()[-1])
                   for part in r.stdout.split(" instructions and exceptions since boot")[:2]]
    assert ended > 500 and back == ended - 3


def test_bugcheck_stop_then_analyze_and_dump_round_trip(tmp_path):
    r = debug("c\nanalyze\n", "--driver", str(DRIVERS / "crash.sys"), str(APPS / "hello"))
    assert "the system stopped: bug check 0x50 PAGE_FAULT_IN_NONPAGED_AREA" in r.stdout
    out = tmp_path / "crash.dmp"
    run = emurun.emu("run", "--dump", str(out), "--driver", str(DRIVERS / "crash.sys"),
                     str(APPS / "hello"), cwd=ROOT, timeout=120)
    assert run.returncode == 126
    post = debug("regs\nlm\nanalyze\n", "--dump", str(out))
    assert post.returncode == 0, post.stdout
    assert post.stdout.startswith(f"crash dump {out}: bug check 0x50")
    assert "crash.sys" in post.stdout


def test_bad_command_lines():
    for args, expect in [(["--dump", "/nonexistent.dmp"], "/nonexistent.dmp"),
                         ([str(APPS / "nosuchapp")], "nosuchapp"),
                         ([], "missing APP"),
                         (["-x", "/nonexistent.gdb", str(APPS / "hello")], "cannot read")]:
        r = debug("", *args)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr


def test_script_file_with_x(tmp_path):
    script = tmp_path / "s.gdb"
    script.write_text("# comments are skipped\nsi 2\nposition\n")
    r = emurun.emu("debug", "-x", str(script), str(APPS / "hello"), cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "3 instructions and exceptions since boot" in r.stdout
    assert "comments" not in r.stdout


def test_ctrl_c_pauses_a_running_guest():
    """SIGINT while the guest runs: a stop at the next instruction boundary, then commands
    go on (the script waits on a pipe until the signal has been sent)."""
    # 10 G instructions: far longer than the wait, however fast counting gets (500 M, the
    # default, ends within 1.5 s now).
    proc = subprocess.Popen([sys.executable, "-m", "emu", "debug", str(APPS / "loop"),
                             "2000000000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    seen: list[str] = []

    def read_until(text: str) -> None:
        """Read the transcript up to the first line holding ``text`` (the signal must not
        arrive while emu is still starting: that ends it with "emu: interrupted")."""
        for line in proc.stdout:
            seen.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} in {seen}")

    try:
        read_until("loop!_start")                 # the machine is made, stopped at its start
        proc.stdin.write("continue\n")
        proc.stdin.flush()
        read_until(") continue")                  # the shell has read it (batch mode echoes)
        time.sleep(0.2)                           # the guest runs; not a timed assertion
        os.kill(proc.pid, signal.SIGINT)
        proc.stdin.write("position\nkill\n")
        proc.stdin.close()
        out = "".join(seen) + proc.stdout.read()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert "interrupted (Ctrl-C)" in out
    assert "loop!main" in out.split("interrupted (Ctrl-C)")[1]


def monitor(*lines: str) -> list[str]:
    """What gdb's ``monitor LINE`` gets back for each of ``lines``, in turn, from one shell
    on a new machine (Shell.run_command)."""
    from emu.debugger.shell import Shell
    from emu.debugger.target import LiveTarget
    from emu.machine import Machine
    m = Machine("64M")
    try:
        shell = Shell(LiveTarget(m))
        return [shell.run_command(line) for line in lines]
    finally:
        m.close()


@pytest.mark.parametrize("command", ["stepi", "continue", "quit"])
def test_monitor_refuses_run_control(command):
    (out,) = monitor(command)
    assert out.startswith(f"error: '{command}' runs the machine")


def test_an_empty_monitor_lists_the_commands_and_repeats_none():
    """gdb's bare `monitor` after `monitor ps`: the command list, not `ps` again (the
    shell's own empty line repeats the last command, as gdb's does at its prompt)."""
    ps, *empty, listing = monitor("ps", "", "   ", "help")
    assert "pid  name" in ps and "pid  name" not in listing
    assert empty == [listing, listing]


STATE = "regs\nx/8gx $rsp\nx/64gx 0x403000\nxp/512gx 0x55000\n"


def after_commands(out: str, marker: str) -> str:
    """The transcript from the command ``marker`` on, prompts dropped."""
    text = out[out.index(f") {marker}\n"):]
    return "\n".join(line.split(") ", 1)[-1] for line in text.splitlines())


def test_going_back_through_a_snapshot_gives_the_same_state():
    """Forward to 301, versus forward to 1,501 then back 1,200 through a snapshot (forked
    every 100 instructions): the same registers, stack, console buffer (hello's .data, which
    the printf in between rewrote) and physical page, to the byte."""
    app = [str(APPS / "hello"), "a", "b"]
    plain = debug("si 300\nposition\n" + STATE, "--snapshots", "0", *app)
    back = debug("si 1500\nrsi 1200\ninfo snapshots\nposition\n" + STATE,
                 "--snapshot-interval", "100", "--snapshots", "20", *app)
    assert plain.returncode == back.returncode == 0, back.stdout
    assert "301 instructions and exceptions since boot" in plain.stdout
    assert "snapshots, one every 100 instructions" in back.stdout
    assert after_commands(plain.stdout, "position") == after_commands(back.stdout, "position")


def test_reverse_continue_across_snapshots_and_boot():
    script = "break NtWriteConsole\nc\nc\nc\nrc\nposition\nrc\nposition\nrc\nposition\n"
    app = [str(APPS / "hello"), "a", "b"]
    with_snapshots = debug(script, "--snapshot-interval", "300", *app)
    without = debug(script, "--snapshots", "0", *app)
    assert with_snapshots.stdout == without.stdout
    positions = [int(p.split()[-1]) for p in
                 with_snapshots.stdout.split(" instructions and exceptions since boot")[:-1]]
    assert positions == [1245, 518, 0]


def test_exit_status_comes_back_from_a_resumed_snapshot():
    r = debug("si 2000\nrsi 1500\nnosuchcommand\n", "--snapshot-interval", "100",
              str(APPS / "hello"), "a")
    assert r.returncode == 1 and "unknown command 'nosuchcommand'" in r.stdout


def test_a_condition_that_cannot_be_evaluated_stops_and_says_why():
    r = debug("break main if [0] == 1\nbreak NtWriteConsole if rax ==\nc\n", str(APPS / "hello"))
    assert "error: bad condition" in r.stdout
    assert "Breakpoint 1, hello!main (its condition could not be evaluated: " in r.stdout


def test_completion_of_commands_symbols_and_registers():
    from emu.debugger.shell import Shell
    from emu.debugger.target import LiveTarget
    from emu.machine import Machine
    m = Machine("64M")
    try:
        m.spawn(ROOT / APPS / "hello", [])
        sh = Shell(LiveTarget(m))
        assert sh.completenames("reve") == ["reverse-continue", "reverse-finish", "reverse-next",
                                            "reverse-nexti", "reverse-stepi"]
        assert "hello!main" in sh.completedefault("hello!ma")
        assert "$rax" in sh.completedefault("$ra") and "*main" in sh.completedefault("*mai")
    finally:
        m.close()


def test_enable_disable_delete():
    r = debug("break NtWriteConsole\ntbreak main\ndisable 1\ninfo breakpoints\nc\nenable 1\n"
              "delete 2\nc\ndelete\ninfo breakpoints\n", str(APPS / "hello"))
    out = r.stdout
    assert "1    breakpoint  n   0" in out and "2    tbreakpoint y   0" in out
    assert out.index("Breakpoint 2, hello!main") < out.index("Breakpoint 1, hello!NtWriteConsole")
    assert out.rstrip().endswith("No breakpoints, watchpoints or catchpoints.")


# -- issue 16: counts, the shell's own words, completion, batch errors ----------------------

def test_negative_counts_are_errors():
    r = debug("stepi -1\nsi -5\nreverse-stepi -1\nrsi -(2)\nposition\nsi 0\n",
              str(APPS / "hello"))
    errors = [line for line in lines(r.stdout) if line.startswith("error:")]
    assert errors == ["error: stepi: the count must be positive, not -1"] * 1 + [
        "error: stepi: the count must be positive, not -5",
        "error: reverse-stepi: the count must be positive, not -1",
        "error: reverse-stepi: the count must be positive, not -2",
        "error: stepi: the count must be positive, not 0"]
    assert "1 instruction or exception since boot" in r.stdout      # where it started: nothing ran
    assert "at the start of history" not in r.stdout and "has stopped" not in r.stdout


def test_set_with_a_bare_width_as_documented():
    r = debug("set u8 $rsp = 0x1ff\nx/1bx $rsp\nset {u16} $rsp = 0x1234\nx/1hx $rsp\n"
              "set u32 rsp+4 = 7\nx/1wx $rsp+4\n", str(APPS / "hello"))
    assert r.returncode == 0, r.stdout
    assert "0x7ffffffdff90 <- 0xff (1 byte)" in r.stdout
    assert "0x7ffffffdff90:\t0xff" in r.stdout
    assert "0x7ffffffdff90:\t0x1234" in r.stdout
    assert "0x7ffffffdff94:\t0x00000007" in r.stdout


def test_a_symbol_of_an_ended_process_says_so():
    r = debug("c\nx/4i main\nbreak nosuch\n", str(APPS / "hello"))
    assert ("error: 'main' is a symbol of hello, whose process has ended: its address space "
            "is gone") in r.stdout
    assert "did you mean 'main'" not in r.stdout


def test_help_lists_only_what_exists_and_info_lists_every_subcommand():
    r = debug("help\nhelp commands\ninfo\ninfo b\ninfo snap\ninfo idt\n", str(APPS / "hello"))
    assert "Miscellaneous help topics" not in r.stdout
    assert "commands" not in r.stdout.split(") help\n")[1].split("(emu")[0]
    assert ("info subcommands: breakpoints, cr, gdt, idt, registers, snapshots, tss"
            in r.stdout)
    assert "No breakpoints, watchpoints or catchpoints." in r.stdout
    assert "snapshots, one every" in r.stdout
    assert "No IDT in guest memory" in r.stdout and " 14 #PF   fault      yes" in r.stdout


def test_catch_completes_its_kinds_and_filters():
    from emu.debugger.shell import Shell
    from emu.debugger.target import LiveTarget
    from emu.machine import Machine
    m = Machine("64M")
    try:
        m.spawn(ROOT / APPS / "hello", [])
        sh = Shell(LiveTarget(m))
        assert sh.complete_catch("", "catch ", 6, 6)[:3] == ["bugcheck", "cr3", "dpc"]
        assert sh.complete_catch("pro", "catch pro", 6, 9) == ["process-create",
                                                               "process-exit"]
        assert sh.complete_catch("NtSet", "catch syscall NtSet", 14, 19) == [
            "NtSetEvent", "NtSetExceptionDispatcher", "NtSetSystemInformation"]
        assert "PF" in sh.complete_catch("P", "catch exception P", 16, 17)
        assert sh.complete_info("s", "info s", 5, 6) == ["snapshots"]
    finally:
        m.close()


def test_break_options_are_checked():
    r = debug("break NtWriteConsole if\nbreak *0x401000 pid 9\nwatch $rsp pid 9\n"
              "break main pid 12\ninfo breakpoints\n", str(APPS / "hello"))
    errors = [line for line in lines(r.stdout) if line.startswith("error:")]
    assert errors == ["error: 'if' needs a condition, e.g. break main if rdi == 2",
                      "error: no process 9 (processes: 12)",
                      "error: no process 9 (processes: 12)"]
    assert "Breakpoint 1 at 0x401000 <hello!main> in process 12" in r.stdout
    assert "1    breakpoint" in r.stdout and "\n2    " not in r.stdout


def test_breakpoint_numbers_and_gdbserver_ports_are_checked_in_one_line():
    """Were Python's own words (invalid literal for int() with base 0: 'zz') and an
    "internal error" (bind(): port must be 0-65535); a bad number deletes nothing."""
    r = debug("break main\ndelete 1 zz\nenable x\ndisable 1\ninfo breakpoints\n"
              "gdbserver 99999999\n", str(APPS / "hello"))
    errors = [line for line in lines(r.stdout) if line.startswith("error:")]
    assert errors == ["error: bad breakpoint number 'zz' (see info breakpoints)",
                      "error: bad breakpoint number 'x' (see info breakpoints)",
                      "error: gdb stub: bad address '99999999' (expected HOST:PORT or PORT)"]
    assert re.search(r"^1\s+breakpoint\s+n ", r.stdout, re.M), r.stdout
    assert r.returncode == 1 and "internal error" not in r.stdout


def test_a_command_that_takes_no_argument_refuses_one_and_does_nothing():
    """`nexti 5` is not five steps and `continue 2` no ignore count (gdb's meanings): one
    error line each, and nothing runs: `position` after them is still the entry's."""
    words = ["nexti 5", "ni 5", "finish x", "continue 2", "c 2", "reverse-continue 1",
             "reverse-nexti 3", "reverse-finish x", "kill now", "position x", "bt 5",
             "ps zz", "lm x", "irql x", "check bogus"]
    r = debug("".join(w + "\n" for w in words) + "position\n", str(APPS / "hello"))
    errors = [line for line in lines(r.stdout) if line.startswith("error:")]
    assert len(errors) == len(words), r.stdout
    named = {"ni": "nexti", "c": "continue"}
    for word, error in zip(words, errors, strict=True):
        command, given = word.split()
        command = named.get(command, command)
        assert error == f"error: {command} takes no argument, not {given!r} " \
            f"(see help {command})"
    assert lines(r.stdout)[-1] == "1 instruction or exception since boot"
    assert r.returncode == 1


def test_batch_goes_on_after_an_error_unless_asked_to_stop():
    script = "position\nnosuch\nsi\nposition\n"
    on = debug(script, str(APPS / "hello"))
    assert on.returncode == 1 and on.stdout.count(" since boot") == 2
    stop = debug(script, "--stop-on-error", str(APPS / "hello"))
    assert stop.returncode == 1
    assert stop.stdout.count(" since boot") == 1
    assert stop.stdout.rstrip().splitlines()[-1].startswith("error: unknown command 'nosuch'")
    assert ") si" not in stop.stdout


def test_flag_names_symbolized_calls_and_catch_echo_in_hex():
    r = debug("regs rflags eflags cr0 efer rax\ndisas main 12\ncatch syscall NtSetEvent\n"
              "catch syscall 1\nprint $rsp + 8\np/x 255\np [rsp]\nprint\n", str(APPS / "hello"))
    out = r.stdout
    assert "rflags = 0x202 (514)  IF  IOPL=0" in out
    assert "eflags = 0x202 (514)  IF  IOPL=0" in out
    assert "cr0 = 0x80010033 (2147549235)  PG WP NE ET MP PE" in out
    assert "efer = 0xd01 (3329)  NXE LMA LME SCE" in out
    assert "rax = 0x0 (0)\n" in out
    assert "call 0x401b50 <hello!printf>" in out
    assert "Catchpoint 1 (syscall NtSetEvent, 0xc)" in out
    assert "Catchpoint 2 (syscall NtWriteConsole, 0x1)" in out
    assert "$rsp + 8 = 0x7ffffffdff98 (140737488224152)" in out
    assert "255 = 0xff\n" in out
    assert "[rsp] = 0x1 (1)" in out
    assert "error: print needs an expression, e.g. print $rsp + 8" in out


def test_bt_at_the_entry_point_reads_no_argc_as_a_return_address():
    r = debug("bt\n", str(APPS / "hello"))
    bt = r.stdout.split(") bt\n")[1].splitlines()
    assert bt[0] == "#0  0x0000000000401059 in hello!_start"
    assert not any(line.startswith("#1") for line in bt), bt
    assert "0x1, is no return address" in bt[1]


@pytest.mark.parametrize("steps", ["", "si 6\n"])
def test_finish_in_a_32_bit_process_returns_to_its_caller(steps):
    """A 32-bit frame keeps its return address in 4 bytes at ebp+4 (or at esp on the first
    instruction): finish stops right after the call, where bt said it would."""
    r = debug(f"break printf\nc\n{steps}delete\nbt\nfinish\nposition\n", str(APPS / "hello32"))
    assert "#1  0x000000000040102a in hello32!main+0x2a" in r.stdout
    after = r.stdout.split(") finish\n")[1]
    assert "=> 0x40102a <hello32!main+0x2a>:" in after.splitlines()[1], after
    assert "Hello from a 32-bit process!" in after
    assert r.returncode == 0
