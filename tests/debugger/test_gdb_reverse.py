"""Stock gdb going back through the stub (``bs``/``bc``): each reverse command must land where
the forward run was, register for register, as native gdb's reverse execution does."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_MEM, X86_REG_RIP
from test_gdb_real import ENV, GDB, gdb, gdb_command, no_complaints
from test_gdbstub import TIMEOUT, handshake, served

from emu.debugger.target import LiveTarget

MARK = "echo ==mark==\\n"


@pytest.fixture(autouse=True)
def _stock_gdb():
    """Stock gdb is a prerequisite (README; .ci/run installs it): without it these tests
    fail, they do not skip."""
    assert GDB is not None, "gdb is not on PATH: install it (apt-get install gdb)"


def register_dumps(out: str) -> list[dict[str, str]]:
    """Each ``info registers`` in gdb's output (after a MARK), name -> value text, in order."""
    dumps = []
    for block in out.split("==mark==")[1:]:
        regs = dict(re.findall(r"^([a-z][a-z0-9_]*)\s+(0x[0-9a-f]+)\s", block, re.M))
        if "rip" in regs:
            dumps.append(regs)
    return dumps


def show() -> tuple[str, str]:
    return MARK, "info registers"


def instructions(s, symbol: str) -> list:
    """The instructions of function ``symbol`` of the first process (capstone, with
    operand details), up to its first ``ret``."""
    image = s.machine.processes[0].image
    start = image.symbols[symbol]
    code = LiveTarget(s.machine).read_virtual(start, 0x200, s.machine.processes[0].pid)
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    out = []
    for insn in md.disasm(code, start):
        out.append(insn)
        if insn.mnemonic == "ret":
            break
    return out


def store_to(s, symbol: str) -> int:
    """The address of main's instruction that writes the global ``symbol`` (RIP-relative)."""
    target = s.machine.processes[0].image.symbols[symbol]
    for insn in instructions(s, "main"):
        for op in insn.operands:
            if op.type == X86_OP_MEM and op.mem.base == X86_REG_RIP and \
                    insn.address + insn.size + op.mem.disp == target and \
                    insn.mnemonic.startswith("mov") and insn.operands[0].type == X86_OP_MEM:
                return insn.address
    raise AssertionError(f"no store to {symbol} in main")


def test_reverse_stepi_retraces_every_register_of_the_forward_run() -> None:
    with served(("hello", ["a"]), factory=True, connect=False) as s:
        steps = 12                                # through _start's call of main
        forward = [c for _ in range(steps) for c in (*show(), "stepi")]
        back = [c for _ in range(steps) for c in ("reverse-stepi", *show())]
        out = gdb(s, *forward, *show(), *back, "reverse-stepi", program="hello")
        no_complaints(out)
        dumps = register_dumps(out)
        assert len(dumps) == 2 * steps + 1
        there, back_again = dumps[:steps + 1], dumps[steps + 1:]
        assert len({d["rip"] for d in there}) == steps + 1      # it did move each time
        assert back_again == there[-2::-1]                      # the same states, reversed
        assert "No more reverse-execution history." in out     # before the entry: boot


def test_reverse_continue_stops_at_each_earlier_breakpoint_hit() -> None:
    with served(("counter", ["a", "3", "10"]), factory=True, connect=False) as s:
        out = gdb(s, "break printf", "continue", *show(), "continue", *show(), "continue",
                  "reverse-continue", *show(), "reverse-continue", *show(),
                  "reverse-continue", *show(), program="counter")
        no_complaints(out)
        first, second, back_to_second, back_to_first, boot = register_dumps(out)
        printf = s.machine.processes[0].image.symbols["printf"]
        assert int(first["rip"], 16) == int(second["rip"], 16) == printf
        assert first != second                                  # two different calls
        assert back_to_second == second and back_to_first == first
        assert out.count("Breakpoint 1, printf (") == 5         # 3 forward, 2 going back
        assert "No more reverse-execution history." in out     # no hit before the first
        assert int(boot["rip"], 16) != printf


def test_reverse_continue_stops_before_each_write_a_watchpoint_saw() -> None:
    """As native gdb: going back, a write watchpoint stops BEFORE the writing instruction,
    so gdb shows the later value as Old and the earlier one as New."""
    with served(("counter", ["a", "3", "10"]), factory=True, connect=False) as s:
        store = store_to(s, "work_sink")
        out = gdb(s, f"break *{store:#x}", "continue", *show(), "continue", *show(),
                  "delete", "watch work_sink", "continue", "print/x work_sink",
                  "reverse-continue", *show(), "reverse-continue", *show(),
                  "reverse-continue", "continue", program="counter")
        no_complaints(out)
        store1, store2, back2, back1 = register_dumps(out)
        assert int(store1["rip"], 16) == int(store2["rip"], 16) == store
        assert back2 == store2 and back1 == store1               # before each store
        values = [int(v) for v in re.findall(r"^(?:Old|New) value = (\d+)", out, re.M)]
        # forward: v1 -> v2; back: v2 -> v1, v1 -> 0; forward again from boot: 0 -> v1
        v1, v2 = values[0], values[1]
        assert values == [v1, v2, v2, v1, v1, 0, 0, v1]
        assert "No more reverse-execution history." in out


def test_reverse_next_and_reverse_finish_land_where_the_forward_run_was() -> None:
    with served(("hello", ["a"]), factory=True, connect=False) as s:
        call = next(i.address for i in instructions(s, "main") if i.mnemonic == "call")
        out = gdb(s, f"break *{call:#x}", "continue", *show(), "delete", "stepi 6",
                  "reverse-finish", *show(), "next", *show(), "next", *show(), "next",
                  "reverse-next", *show(), "reverse-next", *show(), program="hello")
        no_complaints(out)
        at_call, finished, line11, line12, back12, back11 = register_dumps(out)
        assert back12 == line12 and back11 == line11
        assert line11 != line12
        assert int(at_call["rip"], 16) == call
        assert finished == at_call            # back before the call of printf, in main
        assert re.search(r"^10\s+printf\(\"Hello, world!\\n\"\);", out, re.M)


def test_reverse_watch_stop_reply_names_the_address() -> None:
    with served(("counter", ["a", "2", "10"]), factory=True) as s:
        c = s.client
        handshake(c)
        sink = s.machine.processes[0].image.symbols["work_sink"]
        assert c.cmd(f"Z2,{sink:x},8") == b"OK"
        assert c.cmd("c") == f"T05watch:{sink:x};thread:10;".encode()
        after = c.register("rip")
        assert c.cmd("bc") == f"T05watch:{sink:x};thread:10;".encode()
        assert c.register("rip") == store_to(s, "work_sink") < after
        assert c.cmd("bc") == b"T05replaylog:begin;thread:10;"
        assert c.cmd(f"z2,{sink:x},8") == b"OK"
        assert c.cmd("c") == b"W00"


def test_going_back_under_the_shell_s_gdbserver_with_snapshots_on() -> None:
    """`emu debug` takes a snapshot (a forked emulator) every 2000 instructions here; gdb
    attached through `gdbserver` still goes back and on, in the emulator it talks to."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "lend.gdb"
        script.write_text("gdbserver 127.0.0.1:0\nposition\n")
        emu = subprocess.Popen([sys.executable, "-m", "emu", "debug", "--snapshot-interval",
                                "2000", "-x", str(script), "guest/build/apps/counter", "a",
                                "3", "2000"], cwd=root, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        try:
            port = None
            while port is None:
                line = emu.stdout.readline()
                assert line, "the debugger never listened"
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                port = found and int(found.group(1))
            args = gdb_command(port, ("break printf", "continue", *show(), "continue",
                                      "reverse-continue", *show(), "reverse-stepi",
                                      *show(), "detach"), "counter")
            out = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT,
                                 env=ENV)
            shell = emu.communicate(timeout=TIMEOUT)[0]
        finally:
            emu.kill()
    text = out.stdout + out.stderr
    no_complaints(text)
    first, back, before = register_dumps(text)
    assert back == first                                   # the first call of printf again
    assert int(before["rip"], 16) < int(first["rip"], 16)  # back in main, on its call
    assert "[Inferior 1 (Remote target) detached]" in text
    assert "gdb has gone; the debugger has the machine again" in shell


def test_stepping_back_over_a_watched_write_is_a_watchpoint_stop() -> None:
    """As native gdb: stepi over the store reports the watchpoint, and so does reverse-stepi
    back over it (RIP on the store, the old value back); any other step back is a plain
    step."""
    with served(("counter", ["a", "2", "10"]), factory=True) as s:
        c = s.client
        handshake(c)
        sink = s.machine.processes[0].image.symbols["work_sink"]
        store = store_to(s, "work_sink")
        assert c.cmd(f"Z0,{store:x},1") == b"OK"
        assert c.cmd("c") == b"T05swbreak:;thread:10;"
        assert c.cmd(f"z0,{store:x},1") == b"OK"
        old = c.cmd(f"m{sink:x},8")
        assert c.cmd(f"Z2,{sink:x},8") == b"OK"
        assert c.cmd("s") == f"T05watch:{sink:x};thread:10;".encode()
        new = c.cmd(f"m{sink:x},8")
        assert new != old
        assert c.cmd("bs") == f"T05watch:{sink:x};thread:10;".encode()
        assert c.register("rip") == store and c.cmd(f"m{sink:x},8") == old
        assert c.cmd("bs") == b"T05thread:10;"                  # the instruction before
        assert c.register("rip") < store
        assert c.cmd("s") == b"T05thread:10;"
        assert c.cmd("s") == f"T05watch:{sink:x};thread:10;".encode()   # the store again
        assert c.cmd(f"m{sink:x},8") == new
        assert c.cmd(f"z2,{sink:x},8") == b"OK"
        assert c.cmd("c") == b"W00"


def test_going_back_from_a_crash_with_a_watchpoint_set() -> None:
    """From the SIGSEGV stop, going back finds the last write to the watched stack slot (the
    push of `call main`, stopped before it), then boot; the crash is not told again."""
    with served(("badread", []), factory=True) as s:
        c = s.client
        handshake(c)
        rsp = c.register("rsp")
        assert c.cmd(f"Z2,{rsp - 8:x},8") == b"OK"          # main's return address slot
        assert c.cmd("c") == f"T05watch:{rsp - 8:x};thread:10;".encode()   # call main
        ret = int.from_bytes(bytes.fromhex(c.cmd(f"m{rsp - 8:x},8").decode()), "little")
        assert c.cmd("c") == b"T0bthread:10;"                  # the kernel read: SIGSEGV
        assert 'process 12 "badread" terminated' in "".join(c.console)
        c.console.clear()
        assert c.cmd("bc") == f"T05watch:{rsp - 8:x};thread:10;".encode()
        assert c.register("rip") + 5 == ret                   # on the call, before its push
        assert c.console == []                                # the crash is not told again
        assert c.cmd("bc") == b"T05replaylog:begin;thread:10;"
        c.send(b"k")
