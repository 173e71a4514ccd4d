"""The state commands as a user types them: parsing, the view they pick, and one clear
error line for every mistake, on a live machine and on a crash dump."""

from __future__ import annotations

import inspect

import pytest
from state_harness import MARKERS, Harness, machine, pid_of, two_processes

from emu.debugger.cmd_state import StateCommands
from emu.debugger.target import LiveTarget, open_dump
from emu.nt import dump


@pytest.fixture(scope="module")
def live():
    m = two_processes()
    yield m, Harness(LiveTarget(m))
    m.close()


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    m = machine(("slowread", ["\\Device\\SlowNeither"]), ("counter", ["x", "3"]),
                drivers=("slowneither.sys",))
    assert m.run().stopped == "bug check"
    path = tmp_path_factory.mktemp("dump") / "d1.dmp"
    dump.write(m.executive, path)
    m.close()
    return Harness(open_dump(str(path)))


@pytest.fixture
def h(live):
    """A fresh shell (no view, no last x format) over the module's machine."""
    m, harness = live
    return m, Harness(harness.target)


def test_x_takes_gdb_formats_and_goes_on_where_it_stopped(h):
    m, sh = h
    sh.view_pid = pid_of(m, "notepad")
    assert sh.run(f"x/s {MARKERS:#x}") == f'{MARKERS:#x}:\t"notepad page 0"'
    assert sh.run(f"x/2xb {MARKERS + 0x1000:#x}") == f"{MARKERS + 0x1000:#x}:\t0x6e\t0x6f"
    assert sh.run("x") == f"{MARKERS + 0x1002:#x}:\t0x74"         # same format, on
    first = sh.run("x/2gx $rsp")
    assert first.startswith(f"{sh.target.register('rsp', sh.view_pid):#x}:\t0x")


def test_x_of_another_process_with_p(h):
    m, sh = h
    myapp = pid_of(m, "myapp")
    assert sh.run(f"x/s -p {myapp} {MARKERS:#x}") == f'{MARKERS:#x}:\t"myapp page 0"'


def test_process_switches_the_view_and_back(h):
    m, sh = h
    notepad, myapp = pid_of(m, "notepad"), pid_of(m, "myapp")
    assert sh.run(f"process {notepad}").startswith(f'view: process {notepad} "notepad"')
    assert sh.run(f"x/s {MARKERS:#x}").endswith('"notepad page 0"')
    sh.run(f"process {myapp}")
    assert sh.run(f"x/s {MARKERS:#x}").endswith('"myapp page 0"')
    assert sh.run("vtop 0x7f793950000").endswith(f'in process {myapp} "myapp"')
    text = sh.run("process")
    assert text.startswith("view: back to the current process") and sh.view_pid is None


def test_walk_arguments(h):
    m, sh = h
    notepad = pid_of(m, "notepad")
    text = sh.run(f"walk {MARKERS:#x} {notepad} write user")
    assert text.splitlines()[0].endswith(f'in process {notepad} "notepad" (CR3 '
                                         f'{m.processes[0].space.cr3:#x}), write at ring 3')
    text = sh.run("walk 0xffff800000001000 kernel")
    assert text.splitlines()[0].endswith("read at ring 0")
    assert sh.run("walk (main + 8) fetch").splitlines()[0].startswith("walk 0x401008")


def test_registers_info_and_set(h):
    m, sh = h
    cpu = m.executive.cpu
    assert sh.run("regs rip eax") == (f"rip = {cpu.rip:#x} ({cpu.rip})\n"
                                      f"eax = {cpu.reg('rax') & 0xFFFFFFFF:#x} "
                                      f"({cpu.reg('rax') & 0xFFFFFFFF})")
    assert sh.run("info reg rip") == sh.run("registers rip")
    assert "bit 16  WP" in sh.run("info cr")
    assert "[USER_CODE, used as 0x33]" in sh.run("info gdt")
    assert sh.run("info tss").startswith("TR 0x0040: TSS at 0xffff800000000800")
    assert sh.run("info") == "info subcommands: cr, gdt, idt, registers, tss"
    old = cpu.reg("r12")
    assert sh.run("set r12 = 0x10 + 2") == "r12 = 0x12"
    assert cpu.reg("r12") == 0x12
    cpu.set_reg("r12", old)


def test_set_memory_of_the_view(h):
    m, sh = h
    sh.view_pid = pid_of(m, "notepad")
    assert sh.run(f"set {{u8}} {MARKERS:#x} = 0x4e") == f"{MARKERS:#x} <- 0x4e (1 byte)"
    assert sh.run(f"x/s {MARKERS:#x}").endswith('"Notepad page 0"')
    assert sh.run(f"set *{MARKERS + 0x20:#x} = -1") == \
        f"{MARKERS + 0x20:#x} <- 0xffffffffffffffff (8 bytes)"
    assert sh.run(f"x/gx {MARKERS + 0x20:#x}").endswith("0xffffffffffffffff")
    sh.run(f"set {{u64}} {MARKERS + 0x20:#x} = 0")
    sh.run(f"set {{u8}} {MARKERS:#x} = 0x6e")


def test_listing_commands(h):
    m, sh = h
    assert sh.run("ps").splitlines()[0].split() == ["pid", "name", "state", "bits", "CR3",
                                                    "threads", "status"]
    assert len(sh.run("threads").splitlines()) == 3
    assert len(sh.run(f"threads {pid_of(m, 'myapp')}").splitlines()) == 2
    assert sh.run(f"handles {pid_of(m, 'myapp')}") == \
        f'handle table of process {pid_of(m, "myapp")} "myapp": 0 handle(s)'
    assert "myapp  [" in sh.run("lm")
    assert sh.run("irp") == "no IRP in flight"
    assert sh.run("irql").startswith("IRQL 0 (PASSIVE_LEVEL) now")
    assert sh.run("check").startswith("the books balance")
    assert sh.run("bt").startswith("#0  0x")
    assert sh.run("disas main 2").count("\n") == 1
    assert "user half of process" in sh.run("vmmap user")
    assert "kernel half" in sh.run("vmmap kernel") and "user half" not in \
        sh.run("vmmap kernel")
    assert sh.run("tlb").startswith("second-level TLB")


@pytest.mark.parametrize("line, message", [
    ("x/4q 0", "bad format letter 'q' in '/4q'"),
    ("x/4gx mian", "no symbol 'mian' (did you mean 'main'?)"),
    ("x/4gx 0x1000", "cannot access 0x1000: not mapped: the PDE (level 2)"),
    ("x/4gx 1 +", "bad expression '1 +'"),
    ("x", "an address is needed"),
    ("xp/2gx 0x40000000", "cannot access physical 0x40000000: beyond the end of RAM"),
    ("process 99", "no process 99"),
    ("process x", "bad process id 'x'"),
    ("walk", "usage: walk VA"),
    ("walk 0x1000 99", "no process 99"),
    ("vtop 0x1000", "0x1000: not mapped"),
    ("vtop", "an address or value is needed"),
    ("pfn 0x100000000", "beyond the end of RAM"),
    ("info nosuch", "info nosuch: unknown (known: cr, gdt, idt, registers, tss)"),
    ("regs rxx", "no register 'rxx'"),
    ("set rax 5", "usage: set REG = VALUE"),
    ("set cr3 = 0", "cannot set 'cr3'"),
    ("set {u7} 0x1000 = 1", "bad width 'u7'"),
    ("irp 0xffff800000000000", "not an IRP"),
    ("disas 0x1000", "not mapped"),
    ("handles 99", "no process 99"),
    ("vmmap 99", "no process 99"),
    ("disas main 0", "bad count 0"),
    ("disas main 5000", "bad count 5000"),
    ("x/s \u00fc", "unexpected character"),
])
def test_every_mistake_is_one_error_line(h, line, message):
    _, sh = h
    out = sh.run(line)
    assert out.startswith("error: ") and "\n" not in out, out
    assert message in out


def test_a_dump_answers_the_same_commands(dumped):
    sh = dumped
    assert sh.run("analyze").startswith("bug check 0xd1 DRIVER_IRQL_NOT_LESS_OR_EQUAL")
    assert sh.run("irql").startswith("IRQL 2 (DISPATCH_LEVEL) at the bug check")
    assert sh.run("bt") == ("#0  0xfffff80001001145 in slowneither.sys!DpcForIsr+0x55\n"
                            "    (called by the executive: a driver routine (DriverEntry, "
                            "dispatch, ISR, DPC) starts the kernel stack)")
    assert "1 IRP(s) in flight" in sh.run("irp")
    assert sh.run("handles 12").endswith("\\Device\\SlowNeither (slowneither.sys)")
    assert sh.run("x/s -p 12 0x7f793950000") == '0x7f793950000:\t"requester\'s own page"'
    assert "slowneither.sys" in sh.run("lm")
    assert "DPL 3" in sh.run("info gdt")
    sh.run("process 12")
    assert "#1  " in sh.run("bt") and "slowread!" in sh.run("bt")
    sh.run("process")


@pytest.mark.parametrize("line, message", [
    ("set rax = 1", "a crash dump is read-only"),
    ("tlb", "a crash dump holds no TLB"),
    ("check", "check needs a live machine"),
])
def test_a_dump_refuses_what_it_cannot_do(dumped, line, message):
    out = dumped.run(line)
    assert out == f"error: {out[7:]}" and message in out and "\n" not in out


def test_every_command_documents_its_usage_first():
    for name, method in inspect.getmembers(StateCommands, inspect.isfunction):
        if name.startswith("do_"):
            usage = method.__doc__.splitlines()[0]
            assert usage.split("/")[0].split()[0] in (name[3:], "registers", "disas", "bt",
                                                      "print"), \
                (name, usage)


def test_completion(h):
    m, sh = h
    assert "main" in sh.complete_walk("mai", "walk mai", 5, 8)
    assert "$rip" in sh.complete_x("$ri", "x/4gx $ri", 6, 9)
    assert sh.complete_process("", "process ", 8, 8) == [str(p.pid) for p in m.processes]
    assert sh.complete_info("g", "info g", 5, 6) == ["gdt"]


def test_a_bug_in_a_view_is_still_one_line(h, monkeypatch):
    _, sh = h

    def broken(*args):
        raise KeyError("oops")

    monkeypatch.setattr("emu.debugger.views.lm_text", broken)
    assert sh.run("lm") == "error: lm: internal error (KeyError: 'oops'); please report it"
