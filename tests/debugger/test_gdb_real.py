"""Stock gdb (``gdb -batch``) attached to the stub: what a user types, what gdb prints."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import pytest
from test_gdbstub import APPS, TIMEOUT, served, wait_until_running

from emu.hw import mmu

GDB = shutil.which("gdb")
ENV = {**os.environ, "LC_ALL": "C", "DEBUGINFOD_URLS": ""}


@pytest.fixture(autouse=True)
def _stock_gdb():
    """Stock gdb is a prerequisite (README; .ci/run installs it): without it these tests
    fail, they do not skip."""
    assert GDB is not None, "gdb is not on PATH: install it (apt-get install gdb)"


def gdb_command(port: int, commands: tuple[str, ...], program: str | None) -> list[str]:
    args = [GDB, "-nx", "-batch", "-iex", "set debuginfod enabled off",
            "-iex", "set confirm off"]
    if program is not None:
        args.append(str(APPS / program))
    args += ["-ex", f"target remote 127.0.0.1:{port}"]
    for command in commands:
        args += ["-ex", command]
    return args


def gdb(s, *commands: str, program: str | None = None) -> str:
    """Run gdb in batch mode against the served machine; its stdout and stderr."""
    proc = subprocess.run(gdb_command(s.port, commands, program), capture_output=True,
                          text=True, timeout=TIMEOUT, env=ENV)
    return proc.stdout + proc.stderr


def no_complaints(text: str) -> None:
    assert "Truncated register" not in text
    assert "Remote 'g' packet reply is too long" not in text
    assert "Remote failure reply" not in text


def test_stepi_info_registers_and_examine_the_stack() -> None:
    with served(("hello", ["a"]), connect=False) as s:
        proc = s.machine.processes[0]
        out = gdb(s, "stepi", "info registers rip", "x/4gx $rsp")
        no_complaints(out)
        rip = int(re.search(r"^rip\s+(0x[0-9a-f]+)", out, re.M).group(1), 16)
        assert proc.image.entry < rip <= proc.image.entry + 15
        words = re.search(r"^0x[0-9a-f]+:\s+(0x\w+)\s+(0x\w+)\s*\n0x[0-9a-f]+:\s+(0x\w+)\s+"
                          r"(0x\w+)", out, re.M).groups()
        assert int(words[0], 16) == 2 and int(words[3], 16) == 0    # argc, argv's NULL
        s.finish()
        assert proc.output == b"Hello, world!\nargv[1] = a\n"     # gdb left: it ran on


def test_break_on_main_backtrace_and_run_to_the_end() -> None:
    with served(("hello", []), connect=False) as s:
        main = s.machine.processes[0].image.symbols["main"]
        out = gdb(s, "break main", "continue", "info registers rip", "bt", "continue",
                  program="hello")
        no_complaints(out)
        assert f"Breakpoint 1 at {main:#x}" in out
        assert re.search(rf"^rip\s+{main:#x}\s+{main:#x} <main>", out, re.M)
        assert re.search(r"^#0\s+main \(", out, re.M)
        assert "[Inferior 1 (Remote target) exited normally]" in out


def test_exit_code_reaches_gdb() -> None:
    with served(("exitcode", ["7"]), connect=False) as s:
        out = gdb(s, "continue")
        assert "[Inferior 1 (Remote target) exited with code 07]" in out
        assert 'process 12 "exitcode" exited with status 0x7' in out


def test_a_crashing_process_stops_at_sigsegv_then_its_whole_status_is_told() -> None:
    with served(("badread", []), connect=False) as s:
        out = gdb(s, "continue", "info registers rip", "continue")
        line = ('process 12 "badread" terminated: STATUS_ACCESS_VIOLATION (0xC0000005) '
                "reading 0xffff800000001000 at rip 0x401022: mov rax, qword ptr [rbx]")
        assert out.count(line) == 1
        assert "Program received signal SIGSEGV, Segmentation fault." in out
        assert re.search(r"^rip\s+0x401022\s", out, re.M)          # in the faulting process
        assert 'process 12 "badread" exit status STATUS_ACCESS_VIOLATION (0xC0000005); ' \
               "gdb's exit code is its low byte" in out
        assert "exited with code 05" in out


def test_hardware_watchpoints() -> None:
    with served(("counter", ["a", "3", "10"]), connect=False) as s:
        out = gdb(s, "watch work_sink", "continue", "delete", "rwatch work_sink", "continue",
                  "delete", "awatch work_sink", "continue", "delete", "continue",
                  program="counter")
        no_complaints(out)
        assert "Hardware watchpoint 1: work_sink" in out
        assert re.search(r"Old value = \d+\nNew value = -?\d+", out)
        assert "Hardware read watchpoint 2: work_sink" in out
        assert "Hardware access (read/write) watchpoint 3: work_sink" in out
        assert re.search(r"\nValue = -?\d+", out)
        assert "exited normally" in out
        s.finish()
        assert s.machine.processes[0].output == b"a 1\na 2\na 3\n"


def test_processes_and_their_threads_are_threads_in_gdb() -> None:
    with served(("counter", ["a", "2", "10"]), ("counter", ["b", "2", "10"]),
                connect=False) as s:
        second = s.machine.processes[1]
        tid = second.threads[0].tid
        out = gdb(s, "info threads", "thread 2", "info registers rip", program="counter")
        assert re.search(r'\* 1\s+Thread 16 "counter" \(pid 12 counter, tid 16, running, ring 3\)',
                         out)
        assert re.search(rf'  2\s+Thread {tid} "counter" \(pid {second.pid} counter, '
                         rf"tid {tid}, ready, not started\)", out)
        assert f"[Switching to thread 2 (Thread {tid})]" in out
        assert re.search(rf"^rip\s+{second.image.entry:#x}", out, re.M)


def test_the_threads_of_one_process_are_gdb_threads() -> None:
    """`threads` starts two threads: at the first one's start routine, gdb lists three
    threads of pid 12, each with its own registers."""
    with served(("threads", []), connect=False) as s:
        routine = s.machine.processes[0].image.symbols["add_atomically"]
        out = gdb(s, "break add_atomically", "continue", "info threads", "thread 1",
                  "info registers rip", "thread 3", "info registers rip rsp rdi", "thread 2",
                  "info registers rip", program="threads")
        no_complaints(out)
        main, first, second = (t.tid for t in s.machine.processes[0].threads)
        assert 'Thread 2 "threads" hit Breakpoint 1, add_atomically' in out
        assert re.search(rf'  1\s+Thread {main} "threads" \(pid 12 threads, tid {main}, '
                         r"waiting, ring 3\)\s+0x[0-9a-f]+ in NtWaitForSingleObject", out)
        assert re.search(rf'\* 2\s+Thread {first} "threads" \(pid 12 threads, tid {first}, '
                         r"running, ring 3\)\s+add_atomically", out)
        assert re.search(rf'  3\s+Thread {second} "threads" \(pid 12 threads, tid {second}, '
                         r"ready, not started\)", out)
        rips = [int(r, 16) for r in re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)]
        wait = s.machine.processes[0].image.symbols["NtWaitForSingleObject"]
        assert wait < rips[0] < wait + 16                       # main thread: in its wait
        assert rips[1:] == [routine, routine]                   # the others: their start
        # the thread not started yet: its own stack, its argument (index 1) in RDI
        third = s.machine.processes[0].threads[2]
        assert re.search(rf"^rsp\s+{third.start_rsp:#x}\s", out, re.M)
        assert re.search(r"^rdi\s+0x1\s", out, re.M)
        assert re.search(rf"  3\s+Thread {second} .*add_atomically \(argument=0x1\)", out)


def test_a_stop_selects_the_thread_that_stopped_whichever_gdb_looked_at_before() -> None:
    """After ``thread 1`` at a stop, ``continue`` stops in another thread: gdb sends no
    ``Hg`` before reading that thread's registers, so the stub must give them, not those of
    the thread gdb had selected (gdb would see RIP in NtWaitForSingleObject and run on)."""
    with served(("threads", []), connect=False) as s:
        out = gdb(s, "break add_atomically", "continue", "thread 1", "info registers rip",
                  "continue", "info registers rdi", program="threads")
        _, _, second = (t.tid for t in s.machine.processes[0].threads)
        no_complaints(out)
        assert f"[Switching to Thread {second}]" in out
        assert re.search(r'Thread 3 "threads" hit Breakpoint 1, add_atomically '
                         r"\(argument=0x1\)", out)
        assert re.search(r"^rdi\s+0x1\s", out, re.M)
        assert "exited normally" not in out


def test_every_register_of_the_description() -> None:
    with served(("hello", []), connect=False) as s:
        out = gdb(s, "info all-registers", "p $eflags", "p $xmm0", "p $st0")
        no_complaints(out)
        for name in ("rax", "r15", "eflags", "gs", "st0", "st7", "fctrl", "fop", "xmm15",
                     "mxcsr", "fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "efer"):
            assert re.search(rf"^{name}\s", out, re.M), name
        assert re.search(r"^cr0\s+0x80010033\s+\[ PE MP ET NE WP PG \]", out, re.M)
        assert re.search(r"^efer\s+0xd01\s+\[ SCE LME LMA NXE \]", out, re.M)
        space = s.machine.processes[0].space            # CR3[11:0]: the PCID (CR4.PCIDE)
        assert space.pcid
        assert re.search(rf"^cr3\s+{space.cr3 | space.pcid:#x}\s", out, re.M)
        assert "$1 = [ IF ]" in out
        assert "v4_int32 = {0, 0, 0, 0}" in out


def test_set_registers_and_memory() -> None:
    with served(("hello", []), connect=False) as s:
        out = gdb(s, "set $rax = 0x1234", "p/x $rax", "set {long}$rsp = 0x55",
                  "x/gx $rsp", "set $xmm1.v2_int64[0] = 7", "p $xmm1.v2_int64",
                  "set $st0 = 1.5", "p $st0", "set $cr3 = 0")
        assert "$1 = 0x1234" in out
        assert re.search(r"0x[0-9a-f]+:\s+0x0000000000000055", out)
        assert "$2 = {7, 0}" in out
        assert "$3 = 1.5" in out
        assert "Could not write register \"cr3\"" in out          # the executive owns it


def test_unmapped_memory_is_an_error() -> None:
    with served(("hello", []), connect=False) as s:
        out = gdb(s, "x/2gx 0", "x/gx 0xffff800000001000")
        assert "Cannot access memory at address 0x0" in out
        assert re.search(r"0xffff800000001000:\s+0x[0-9a-f]{16}", out)


def test_monitor_walk() -> None:
    with served(("hello", []), connect=False) as s:
        cpu, proc = s.machine.executive.cpu, s.machine.processes[0]
        pa = mmu.walk(s.machine.mem, 0x401000, "read", cr3=proc.space.cr3, cpl=0, cr0=cpu.cr0,
                      cr4=cpu.cr4, efer=cpu.efer).pa      # (the machine waits for gdb)
        out = gdb(s, "monitor walk 0x401000", "monitor why", "monitor help")
        assert re.search(r"^PML4E\[0\] @ 0x[0-9a-f]+ = 0x[0-9a-f]{16} -> 0x[0-9a-f]+ P\|RW\|US",
                         out, re.M)
        assert f"0x401000 -> {pa:#x}" in out
        assert 'process 12 "hello" stopped at its entry point' in out
        assert "monitor commands: walk VA" in out


def test_kill() -> None:
    with served(("hello", []), connect=False) as s:
        out = gdb(s, "kill")
        assert "[Inferior 1 (Remote target) killed]" in out
        assert s.finish().stopped == "killed"
        assert s.machine.processes[0].output == b""


def test_detach_lets_the_machine_run_on() -> None:
    with served(("hello", []), connect=False) as s:
        out = gdb(s, "detach")
        assert "[Inferior 1 (Remote target) detached]" in out
        s.finish()
        assert s.machine.processes[0].exit_status == 0


def test_ctrl_c_in_gdb_interrupts_the_guest() -> None:
    with served(("spin", []), connect=False) as s:
        main = s.machine.processes[0].image.symbols["main"]
        g = subprocess.Popen(gdb_command(s.port, ("continue", "info registers rip", "kill"),
                                         "spin"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=ENV)
        try:
            wait_until_running(s)
            g.send_signal(signal.SIGINT)
            out = g.communicate(timeout=TIMEOUT)[0]
        finally:
            if g.poll() is None:
                g.kill()
        assert "Program received signal SIGINT, Interrupt." in out
        rip = int(re.search(r"^rip\s+(0x[0-9a-f]+)", out, re.M).group(1), 16)
        assert main <= rip < main + 16
        assert s.finish().stopped == "killed"


def test_bug_check_is_a_fatal_signal() -> None:
    with served(("hello", []), drivers=("bugcheck.sys",), connect=False) as s:
        out = gdb(s, "info threads", "monitor why", "continue", "continue")
        assert 'Thread 1 "kernel" (kernel (no process on the CPU), ring 0)' in out
        assert "stopped before DriverEntry at bugcheck.sys!DriverEntry, ring 0" in out
        assert 'Thread 1 "kernel" received signal SIGSEGV, Segmentation fault.' in out
        assert "the system stopped: bug check 0xe2 MANUALLY_INITIATED_CRASH" in out
        assert "Program terminated with signal SIGSEGV, Segmentation fault." in out
        assert s.finish().bugcheck.code == 0xE2


def test_reverse_stepi() -> None:
    with served(("hello", []), factory=True, connect=False) as s:
        entry = s.machine.processes[0].image.entry
        out = gdb(s, "stepi", "stepi", "reverse-stepi", "reverse-stepi",
                  "info registers rip", "reverse-stepi")
        no_complaints(out)
        assert re.search(rf"^rip\s+{entry:#x}", out, re.M)
        assert "No more reverse-execution history." in out


def test_drivers_are_gdb_shared_libraries() -> None:
    """gdb reads the drivers from qXfer:libraries when it connects (and again at
    `sharedlibrary`): each at its image base + .text's RVA, its exports as symbols."""
    with served(("hello", []), drivers=("slowneither.sys", "pehello.sys"),
                connect=False) as s:
        out = gdb(s, "info sharedlibrary", "break main", "continue", "sharedlibrary",
                  "info sharedlibrary", program="hello")
        no_complaints(out)
        drivers = {d.image.name: d.image for d in s.machine.executive.drivers}
        first, second = out.split("Breakpoint 1, main")
        assert re.search(r"in slowneither!DriverEntry \(\) from .*slowneither\.sys", first)
        for name, text in (("slowneither.sys", first), ("slowneither.sys", second),
                           ("pehello.sys", second)):
            image = drivers[name]
            text_va = min(sec.va for sec in image.sections)
            assert text_va == image.base + 0x1000                  # .text at RVA 0x1000
            assert re.search(rf"^{text_va:#x}\s+0x[0-9a-f]+\s+Yes \(\*\)\s+\S*/{name}$",
                             text, re.M), name
        assert "pehello.sys" not in first                       # loaded after the first stop
