"""Random command lines typed at the shell: each ends as output or one error line, never a
Python exception (issue 8: hostile input)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fuzzscale import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.debugger.shell import Shell
from emu.debugger.target import LiveTarget
from emu.machine import Machine

APPS = Path(__file__).resolve().parents[2] / "guest" / "build" / "apps"
WORDS = ["x/4gx", "xp/8bx", "x/s", "x/3i", "walk", "vtop", "ptov", "pfn", "vmmap", "ps",
         "process", "threads", "handles", "lm", "irp", "irql", "analyze", "regs", "set",
         "disas", "bt", "info", "tlb", "check", "break", "tbreak", "watch", "catch", "delete",
         "enable", "disable", "help", "stepi", "continue", "position", "gdbserver",
         "reverse-stepi", "reverse-nexti", "reverse-finish", "finish", "print", "p", "p/x",
         "kill", "nosuch"]
ARGS = st.one_of(
    st.sampled_from(["0", "-1", "rsp", "$rip", "main", "hello!main", "0xffff800000001000",
                     "[rsp]", "poi(0)", "*", "(", ")", "==", "if", "pid", "4", "99",
                     "0x7f7`93950000", "rax = 1", "*0x401000 = 2", "u8 0 = 1", "-phys",
                     "-l", "user", "kernel", "write", "fetch", "all", "registers", "gdt",
                     "tss", "cr", "idt", "breakpoints", "snapshots", "syscall", "exception", "14",
                     "ring", "3->0", "1e400", "0x" + "f" * 40, "9" * 30, "\\", "'", '"']),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12))
LINES = st.builds(lambda w, a: " ".join([w, *a]), st.sampled_from(WORDS),
                  st.lists(ARGS, max_size=4))


@pytest.mark.fuzz
def test_random_commands_end_as_output_or_one_error_line():
    m = Machine("64M")
    m.spawn(APPS / "hello", ["a"])
    out = io.StringIO()
    shell = Shell(LiveTarget(m), stdout=out)
    try:
        @settings(max_examples=examples(400), deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(line=LINES)
        def check(line: str) -> None:
            out.seek(0)
            out.truncate()
            shell.onecmd(line)
            text = out.getvalue()
            assert "internal error" not in text, (line, text)
            assert "Traceback" not in text
        check()
    finally:
        m.close()


def test_every_command_without_a_running_machine_is_output_or_one_error_line():
    # A shell with no session (as over a crash dump): the commands that need a machine,
    # `info breakpoints` among them, say so in one line (it was an 'internal error').
    m = Machine("64M")
    m.spawn(APPS / "hello", ["a"])
    out = io.StringIO()
    shell = Shell(LiveTarget(m), stdout=out)
    try:
        for word in WORDS:
            for args in ("", "breakpoints", "snapshots", "1", "main"):
                out.seek(0)
                out.truncate()
                shell.onecmd(f"{word} {args}".strip())
                text = out.getvalue()
                assert "internal error" not in text and "Traceback" not in text, (word, text)
        out.seek(0)
        out.truncate()
        shell.onecmd("info breakpoints")
        assert out.getvalue() == "error: no machine is running (a crash dump cannot run)\n"
    finally:
        m.close()
