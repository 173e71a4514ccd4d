"""``history calls SYMBOL`` and ``emu query calls`` (docs/debugger.md, "Each call of a
function"): every answer is checked against a brute-force oracle, a run with a Unicorn code
hook on EVERY instruction that notes each arrival at the function and the matching return
(the first arrival at the return address with RSP one slot above the call's), on the tour's
scenarios."""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import re

import pytest
from batch import DRIVERS, answer, emu, machine_argv
from unicorn import UC_HOOK_CODE

from emu.debugger import calls
from emu.debugger.session import Session
from emu.hw.faultaddr import decode
from emu.machine import Machine
from emu.nt import exports, layout
from tests.debugger.test_history_query import factory

FIB_N = 5


def slow_neither(apps):
    return [DRIVERS / "slowneither.sys"], [(apps / "slowread", [r"\Device\SlowNeither"]),
                                          (apps / "victim", [])]


def ticket_scribble(apps):
    return [DRIVERS / "ticket.sys", DRIVERS / "scribble.sys"], \
        [(apps / "devread", [r"\Device\Ticket"]), (apps / "devread", [r"\Device\Ticket"])]


def twice(apps):
    return [DRIVERS / "twice.sys"], [(apps / "devread", [r"\Device\Twice"])]


def pool(apps):
    return [DRIVERS / "pepool.sys"], [(apps / "hello", [])]


def fib(apps):
    return [], [(apps / "fib", [str(FIB_N)])]


SCENARIOS = {"slow_neither": slow_neither, "ticket_scribble": ticket_scribble,
             "twice": twice, "fib": fib, "pool": pool}


class Oracle(Session):
    """A whole run with a code hook on every instruction: each arrival at one of the
    functions (or, for an export, each run of its routine, through a wrapper), and its
    return: the first later instruction at the return address with RSP = the call's + 8,
    in the same stack (the same CR3 for a user stack)."""

    def __init__(self, machine: Machine, functions: list[calls.Function]) -> None:
        self.functions = functions
        self.found: dict[str, list[dict]] = {f.name: [] for f in functions}
        self.open: dict[int, list[dict]] = {}
        # (position, rip) of the last ones
        self.recent: collections.deque[tuple[int, int]] = collections.deque(maxlen=6)
        # Each address a function may start at: [(function, the pid it is for)], in the
        # order of ``functions`` (an export's calls are noted by its wrapper instead). The
        # hook looks the instruction up here rather than trying every function at every
        # instruction: the same arrivals, at a fraction of the run's cost.
        self.starts: dict[int, list[tuple[calls.Function, int | None]]] = {}
        for fn in functions:
            if fn.kind != "export":
                for pid, address in fn.addresses.items():
                    self.starts.setdefault(address, []).append((fn, pid))
        super().__init__(machine, self._stop)
        self.completed_before = self.executive.cpu.native.completed_before   # one run: one
        self.executive.cpu.uc.hook_add(UC_HOOK_CODE, self._every)

    def _stop(self, _stop) -> bool:
        if not self.ended:
            self.cont()
            return True
        return False

    def _every(self, uc, rip, size, _data) -> None:
        # The position before this instruction: the instructions completed before it and
        # the exceptions so far (Session.position's sum, with this instruction's count).
        position = self.completed_before(rip) + self._exceptions
        recent = self.recent
        if recent and recent[-1] == (position, rip):
            return                                  # the same instruction again (a fault)
        waiting, starts = self.open.pop(rip, None), self.starts.get(rip)
        if waiting is not None or starts is not None:
            ex = self.executive
            cpu = ex.cpu
            rsp = cpu.reg("rsp")
            for call in waiting or ():
                same = rsp >= layout.KERNEL_SPACE_START or call["cr3"] == cpu.cr3
                if call["return_position"] is None and rsp == call["rsp"] + 8 and same:
                    call["return_position"], call["value"] = position, cpu.reg("rax")
                if call["return_position"] is None:
                    self.open.setdefault(rip, []).append(call)
            for fn, pid in starts or ():
                proc = ex.current
                if pid == (proc.pid if fn.kind == "app" and proc else None):
                    regs = ("rcx", "rdx", "r8", "r9") if fn.kind == "driver" else \
                        ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
                    self._enter(fn, position, [cpu.reg(r) for r in regs], rsp)
        recent.append((position, rip))

    def _enter(self, fn: calls.Function, position: int, args: list[int], rsp: int) -> None:
        ex = self.executive
        ret = int.from_bytes(self.target.read_virtual(rsp, 8), "little")
        caller = None
        for _, at in reversed(self.recent):         # the last call instruction run
            insn = decode(self.target.read_virtual(at, 15), at)
            if insn is not None and insn.mnemonic == "call" and at + insn.size == ret:
                caller = at
                break
        thread = ex.current_thread
        call = {"position": position, "pid": thread.process.pid if thread else None,
                "tid": thread.tid if thread else None, "ring": ex.cpu.reg("cs") & 3,
                "irql": ex.irql, "args": args, "caller": caller, "rsp": rsp,
                "cr3": ex.cpu.cr3, "return_address": ret, "return_position": None,
                "value": None}
        self.found[fn.name].append(call)
        self.open.setdefault(ret, []).append(call)

    def wrap(self, fn: calls.Function) -> None:
        """Run the export's routine through a wrapper that notes the call: its position is
        the one after the last instruction run (the driver's call, or its import thunk's
        jmp), its arguments what the routine reads."""
        index = next(i for i, e in enumerate(exports._TABLE) if e.address == fn.addresses[None])
        entry = exports._TABLE[index]

        def wrapper(ex, call: exports.ExportCall):
            position = self.recent[-1][0] + 1
            self._enter(fn, position, [call.arg(i) for i in range(4)], call.rsp)
            return entry.handler(ex, call)
        exports._TABLE[index] = dataclasses.replace(entry, handler=wrapper)


@functools.cache
def _run_to_end(scenario: str, apps) -> tuple[int, list]:
    m = factory(*SCENARIOS[scenario](apps))()
    s = Session(m, lambda _stop: s.ended is False and (s.cont() or True))
    s.run()
    images = s.target.images()
    end = s.position
    s.close()
    return end, images


@functools.cache
def _oracle(scenario: str, apps, names: tuple[str, ...]) -> dict[str, list[dict]]:
    _, images = _run_to_end(scenario, apps)
    functions = [calls.resolve(n, images) for n in names]
    o = Oracle(factory(*SCENARIOS[scenario](apps))(), functions)
    saved = list(exports._TABLE)
    try:
        for fn in functions:
            if fn.kind == "export":
                o.wrap(fn)
        o.run()
    finally:
        exports._TABLE[:] = saved
        o.close()
    return o.found


ORACLE_CASES = {
    # the seed's scenario: the DPC that writes into whichever process it interrupted, the
    # ISR that queued it, the dispatch routine, the victim's own memcpy, the completion
    "slow_neither": ("slowneither.sys!DpcForIsr", "Isr", "slowneither!Read",
                     "victim!memcpy", "IoCompleteRequest", "KeInsertQueueDpc"),
    # two drivers sharing the kernel space; two processes of one image
    "ticket_scribble": ("ticket!Read", "scribble.sys!DriverEntry", "devread!main",
                        "nt!IofCompleteRequest", "IoCreateDevice"),
    "pool": ("ExAllocatePoolWithTag", "ExFreePoolWithTag", "pepool!DriverEntry"),
    "twice": ("twice.sys!Read", "IoCompleteRequest"),
    "fib": ("fib!fib", "fib!main"),                # recursive, nested
}


# The first case of a scenario takes up to about 2 s on this 2-core machine (slow_neither's
# DPC): the oracle runs the scenario with a hook on every instruction; the other cases of
# the scenario share its run (_oracle is cached).
@pytest.mark.parametrize(("scenario", "name"),
                         [(s, n) for s, names in ORACLE_CASES.items() for n in names])
def test_the_answer_is_the_oracles(apps, scenario, name):
    end, images = _run_to_end(scenario, apps)
    want = _oracle(scenario, apps, ORACLE_CASES[scenario])
    fn = calls.resolve(name, images)
    nargs = 6 if fn.kind == "app" else 4          # System V's registers, or Microsoft's
    found, truncated = calls.calls(factory(*SCENARIOS[scenario](apps)), fn, end,
                                   nargs=nargs, ended=True)
    assert not truncated
    got = [(c.position, c.pid, c.tid, c.ring, c.irql, list(c.args), c.caller,
            c.return_address, c.return_position, c.value) for c in found]
    expected = [(w["position"], w["pid"], w["tid"], w["ring"], w["irql"], w["args"],
                 w["caller"], w["return_address"], w["return_position"], w["value"])
                for w in want[fn.name]]
    assert got == expected and expected
    for c in found:             # no return: the oracle saw none either, and it says why
        assert (c.return_position is None) == (c.end is not None)


def test_the_oracles_are_not_empty_handed(apps):
    """What the oracle cases cover: nesting, recursion, the executive's calls, two
    processes, a call with no return."""
    want = _oracle("fib", apps, ORACLE_CASES["fib"])["fib!fib"]
    assert len(want) == 15 and [w["args"][0] for w in want[:5]] == [5, 4, 3, 2, 1]
    assert sorted(w["value"] for w in want if w["args"][0] == FIB_N) == [5]
    dpc = _oracle("slow_neither", apps, ORACLE_CASES["slow_neither"])
    assert [(w["pid"], w["irql"], w["caller"]) for w in dpc["slowneither.sys!DpcForIsr"]] \
        == [(20, 2, None)]
    main = _oracle("ticket_scribble", apps, ORACLE_CASES["ticket_scribble"])["devread!main"]
    assert [w["pid"] for w in main] == [12, 20]
    done = _oracle("twice", apps, ORACLE_CASES["twice"])["nt!IofCompleteRequest"]
    assert [w["return_position"] is None for w in done] == [False, False, True]


def test_stack_arguments(apps):
    """args 6 of a driver's function: RCX, RDX, R8, R9, then [RSP+0x28] and [RSP+0x30]
    (the Microsoft x64 convention: the return address, then 32 bytes of shadow space)."""
    end, images = _run_to_end("twice", apps)
    fn = calls.resolve("twice.sys!Read", images)
    (c,), _ = calls.calls(factory(*twice(apps)), fn, end, nargs=6, ended=True)
    out = debug(apps, f"goto {c.position}\nx/2gx $rsp+0x28\n", twice)
    words = answer(out, "x/2gx $rsp+0x28")[0].split()
    assert list(c.args[4:]) == [int(words[1], 16), int(words[2], 16)] and len(c.args) == 6


def test_the_prototypes_of_the_exports():
    """Every export the executive implements has its WDK parameter list."""
    assert all(calls.prototype(n) is not None for n in exports.EXPORTS)
    assert calls.prototype("IofCompleteRequest") == ("Irp", "PriorityBoost")
    assert calls.prototype("DbgPrint") == ("Format",)          # variadic: the named ones
    assert calls.prototype("KeGetCurrentIrql") == ()
    assert calls.prototype("ExAllocatePoolWithTag") == ("PoolType", "NumberOfBytes", "Tag")


def debug(apps, script: str, scenario) -> str:
    r = emu("debug", *machine_argv(*scenario(apps)), stdin=script)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


def test_an_irp_completed_twice(apps):
    """twice.sys completes one IRP twice: two calls of IofCompleteRequest from twice.sys!Read
    with the same IRP; the second is the bug check, and never returns."""
    out = debug(apps, "continue\nhistory calls IoCompleteRequest\ngoto #2\n"
                "info registers rip rcx\ngoto #2.ret\ninfo registers rip\n", twice)
    rows = answer(out, "history calls IoCompleteRequest")
    assert rows[-1] == "3 calls of nt!IofCompleteRequest from boot to position 110 " \
        "(re-executed from boot)"
    read = [r for r in rows if "<twice.sys!Read+" in r]
    assert len(read) == 2
    irps = {re.search(r"Irp=(0x[0-9a-f]+)", r).group(1) for r in read}
    assert len(irps) == 1
    assert re.fullmatch(r"#2 +105  pid  12 tid  16  ring 0  IRQL 0  0xfffff800010010ea "
                        r"<twice.sys!Read\+0x2a>  nt!IofCompleteRequest\(Irp=0xffffa08[0-9a-f]+, "
                        r"PriorityBoost=0x0\)  returned 0x0 at 106", read[0])
    assert read[1].endswith("never returned: the system stopped at 110 (bug check 0x44 "
                            "MULTIPLE_IRP_COMPLETE_REQUESTS)")
    irp = irps.pop()
    assert f"Irp={irp}" in read[1]
    # at the call: RIP the export's address, the IRP in RCX; at its return: after the call
    assert answer(out, "goto #2")[0].startswith(
        f"=> {exports.address_of('IofCompleteRequest'):#x} <nt!IofCompleteRequest>: ")
    regs = answer(out, "info registers rip rcx")
    assert regs[1].startswith(f"rcx = {irp} ")
    assert answer(out, "info registers rip")[0].startswith(f"rip = {0xfffff800010010ea + 2:#x} ")


JSON_KEYS = {"position": int, "function": str, "address": int, "pid": (int, type(None)),
             "tid": (int, type(None)), "ring": int, "irql": int, "caller": (int, type(None)),
             "caller_symbol": (str, type(None)), "return_address": (int, type(None)),
             "convention": str, "args": list, "return": (int, type(None)),
             "return_position": (int, type(None)), "no_return": (str, type(None)),
             "no_return_position": (int, type(None))}


def test_the_json_records_follow_the_documented_schema(apps):
    out = debug(apps, "continue\nhistory calls IoCompleteRequest --json\n"
                "history calls twice!Read args 2 --json\n", twice)
    records = [json.loads(line) for line in answer(out, "history calls IoCompleteRequest --json")]
    records += [json.loads(line) for line in answer(out, "history calls twice!Read args 2 --json")]
    assert len(records) == 4
    for r in records:
        assert list(r) == list(JSON_KEYS)
        for key, kind in JSON_KEYS.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert (r["return_position"] is None) == (r["no_return"] is not None)
        assert r["no_return"] in (None, "bugcheck", "process-exit", "unwound", "running")
    second = records[2]
    assert (second["function"], second["no_return"], second["no_return_position"]) == \
        ("nt!IofCompleteRequest", "bugcheck", 110)
    assert second["caller_symbol"] == "twice.sys!Read+0x31" and second["convention"] == "ms-x64"
    read = records[3]
    assert (read["function"], read["caller"], read["return_address"], len(read["args"])) == \
        ("twice.sys!Read", None, layout.KERNEL_RETURN, 2)
    assert read["args"][1] == records[1]["args"][0]       # Read's IRP is the one completed


def test_goto_a_row_and_its_return(apps):
    """goto #ROW: the function's first instruction, about to run, the arguments in their
    registers; goto #ROW.ret: RIP at the return address, RAX the value returned."""
    out = debug(apps, "continue\nhistory calls fib!fib\ngoto #2\nposition\n"
                "info registers rip rdi\ngoto #2.ret\nposition\ninfo registers rip rax\n"
                "goto #7.ret\n", fib)
    rows = answer(out, "history calls fib!fib")
    assert len(rows) == 16
    m = re.fullmatch(r"#2 +(\d+)  pid  12 tid  16  ring 3  IRQL 0  (0x[0-9a-f]+) "
                     r"<fib!fib\+0x14>  fib!fib\(0x4, .*\)  returned 0x3 at (\d+)", rows[1])
    assert m, rows[1]
    call, site, back = int(m.group(1)), int(m.group(2), 16), int(m.group(3))
    positions = [line for line in out.splitlines() if "instructions and exceptions" in line]
    assert positions == [f"{call} instructions and exceptions since boot",
                         f"{back} instructions and exceptions since boot"]
    regs = answer(out, "info registers rip rdi")
    assert regs[0].startswith("rip = 0x401080 ") and regs[1].startswith("rdi = 0x4 ")
    regs = answer(out, "info registers rip rax")
    assert regs[0].startswith(f"rip = {site + 5:#x} ") and regs[1].startswith("rax = 0x3 ")
    assert answer(out, "goto #7.ret")[-1].startswith("=> ")


def test_the_process_ended_under_a_recursion(apps):
    """stackoverflow's recurse never returns: the process ends on the guard page."""
    r = emu("query", "calls", "recurse", "--json", apps / "stackoverflow")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) > 900
    assert {(x["no_return"], x["return"]) for x in records} == {("process-exit", None)}
    assert [x["args"][0] for x in records[:3]] == [0, 1, 2]
    text = emu("query", "calls", "recurse", "--args", "1", apps / "stackoverflow")
    assert text.stdout.splitlines()[-2].endswith(
        f"never returned: its process ended at {records[0]['no_return_position']} "
        "(exit status STATUS_STACK_OVERFLOW (0xC00000FD))")


def test_a_call_unwound_by_an_exception(apps):
    """probe.sys's ProbeForWrite raises STATUS_ACCESS_VIOLATION into its __except: the call
    never returns, its frame unwound; probe.sys!Read itself returns the exception's code."""
    argv = ["--driver", DRIVERS / "probe.sys", apps / "devread", r"\Device\Probe", "16",
            "0xffff800000000000"]
    r = emu("query", "calls", "ProbeForWrite", "--json", *argv)
    (probe,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert probe["args"] == [0xFFFF800000000000, 16, 1]
    assert (probe["return"], probe["no_return"]) == (None, "unwound")
    assert probe["no_return_position"] == probe["position"] + 1
    text = emu("query", "calls", "probe!Read", *argv).stdout.splitlines()
    assert text[0].endswith(" returned 0xc0000005 at 485") and "(called by the executive)" \
        in text[0]
    row = emu("query", "calls", "ProbeForWrite", *argv).stdout.splitlines()[0]
    assert row.endswith("never returned: unwound by an exception (its frame was gone at "
                        f"{probe['position'] + 1})")


def test_a_repeated_query_comes_from_the_index(apps):
    out = debug(apps, "continue\nhistory calls fib\nhistory calls fib pid 12\n"
                "history calls fib args 2\n", fib)
    assert answer(out, "history calls fib")[-1] == \
        "15 calls of fib!fib from boot to position 1043 (re-executed from boot)"
    assert answer(out, "history calls fib pid 12")[-1] == \
        "15 calls of fib!fib in pid 12 from boot to position 1043 (from the index)"
    assert answer(out, "history calls fib args 2")[-1].endswith("(re-executed from boot)")


def test_going_back_answers_for_that_past(apps):
    """After goto, the answer is the calls up to there: one still running."""
    out = debug(apps, "continue\nhistory calls fib\ngoto #3\nhistory calls fib\n", fib)
    first = answer(out, "history calls fib")
    rows = out.split("goto #3", 1)[1]
    later = [line for line in rows.splitlines() if line.startswith("#")]
    assert len(later) == 2
    assert all("still running at" in line for line in later)
    assert later[0].split("  fib!fib(")[0] == first[0].split("  fib!fib(")[0]


def test_the_index_goes_back_with_the_machine(apps):
    """goto #1.ret resumes a snapshot (another process): the index comes along; at the
    DPC's own position its call is not yet made (the answer is the calls before it)."""
    out = debug(apps, "continue\nhistory calls DpcForIsr\ngoto #1.ret\n"
                "history calls DpcForIsr\ngoto 200273\nhistory calls DpcForIsr\n", slow_neither)
    rows = [line for line in out.splitlines() if line.startswith(("#", "0 calls", "1 call"))]
    assert rows[0].startswith("#1        200273  pid  20 tid  24  ring 0  IRQL 2  (called by "
                              "the executive)  slowneither.sys!DpcForIsr(")
    assert rows[0].endswith("  returned 0x0 at 200372")
    assert rows[1:] == [
        "1 call of slowneither.sys!DpcForIsr from boot to position 1204741 (re-executed from "
        "boot)",
        rows[0],
        "1 call of slowneither.sys!DpcForIsr from boot to position 200372 (from the index)",
        "0 calls of slowneither.sys!DpcForIsr from boot to position 200273 (from the index)"]


def test_emu_query_answers_as_the_shell_at_the_end(apps):
    drivers, commands = ticket_scribble(apps)
    argv = [a for d in drivers for a in ("--driver", d)] + \
        [commands[0][0], *commands[0][1], "--", commands[1][0], *commands[1][1]]
    for extra in ([], ["--json"], ["--pid", "20"]):
        r = emu("query", "calls", "ticket!Read", *extra, *argv)
        assert r.returncode == 0 and r.stderr == ""
        shell_words = " ".join(["pid 20" if e == "--pid" else e for e in extra
                                if e != "20"])
        command = f"history calls ticket!Read {shell_words}".strip()
        shell = debug(apps, f"continue\n{command}\n", ticket_scribble)
        assert r.stdout.splitlines() == answer(shell, command)
        assert len(r.stdout.splitlines()) == (2 if extra else 3)


@pytest.mark.parametrize(("command", "message"), [
    ("history calls", "error: history calls needs a function"),
    ("history calls Raed", "error: no function 'Raed' (did you mean 'ticket.sys!Read'?)"),
    ("history calls ticket!Raed", "error: no function 'ticket!Raed' (did you mean "
     "'ticket.sys!Read'?)"),
    ("history calls tikcet!Read", "error: no module 'tikcet' (did you mean 'ticket.sys'?)"),
    ("history calls nt!IoCompleteReqest", "error: no kernel export 'IoCompleteReqest' (did "
     "you mean 'nt!IofCompleteRequest'?)"),
    ("history calls DriverEntry", "error: ambiguous function 'DriverEntry': "
     "scribble.sys!DriverEntry, ticket.sys!DriverEntry (say which: MODULE!NAME)"),
    ("history calls CreateClose", "error: ambiguous function 'CreateClose': "
     "scribble.sys!CreateClose, ticket.sys!CreateClose (say which: MODULE!NAME)"),
    ("history calls ticket!Read pid 99", "error: pid 99: no such process in this machine's "
     "history (processes: 12, 20)"),
    ("history calls ticket!Read pid x", "error: pid x: not a process id"),
    ("history calls ticket!Read args 17", "error: args 17: the number of arguments to show, "
     "0 to 16"),
    ("history calls ticket!Read args -1", "error: args -1: the number of arguments"),
    ("history calls ticket!Read args", "error: args needs a number (0 to 16)"),
    ("history calls ticket!Read bogus", "error: unexpected 'bogus'"),
    ("goto #1.ret", "error: goto #1.ret: no history write/read/access answer"),
])
def test_bad_input_is_one_line(apps, command, message):
    out = debug(apps, "continue\n" + command + "\n", ticket_scribble)
    lines = answer(out, command)
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_goto_ret_of_a_call_that_never_returned_or_of_an_access(apps):
    out = debug(apps, "continue\nhistory calls IoCompleteRequest\ngoto #3.ret\n"
                "history access 0x7ffffffdff70 32 pid 12\ngoto #1.ret\ngoto #1.x\n", twice)
    assert answer(out, "goto #3.ret") == ["error: goto #3.ret: the call of row 3 never "
                                          "returned (goto #3 goes to the call)"]
    assert answer(out, "goto #1.ret") == ["error: goto #1.ret: row 1 is an access, not a "
                                          "call (.ret is the return of a history calls row)"]
    assert answer(out, "goto #1.x")[0].startswith("error: goto #1.x: a row is a number")


@pytest.mark.parametrize(("args", "message"), [
    (["query", "calls"], "emu: error: emu query calls needs a function"),
    (["query", "calls", "mian", "APP"], "emu: error: no function 'mian' (did you mean "
     "'hello!main'?)"),
    (["query", "calls", "main", "--args", "99", "APP"], "emu: error: --args 99: the number "
     "of arguments to show, 0 to 16"),
    (["query", "calls", "main", "--args"], "emu: error: --args needs a value"),
    (["query", "calls", "main", "--pid", "7", "APP"], "emu: error: pid 7: no such process"),
    (["query", "calls", "main", "--phys", "APP"], "emu: error: --phys: a call is not at a "
     "physical address"),
    (["query", "calls", "main"], "emu: error: missing APP"),
    (["query", "calls", "main", "--bogus", "APP"], "emu: error: unknown option --bogus"),
])
def test_emu_query_bad_input_is_one_line(apps, args, message):
    args = [str(apps / "hello") if a == "APP" else a for a in args]
    r = emu(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr


def test_the_python_api_for_other_tools(apps):
    """calls(): what analyze --why may ask (the same answer as the shell's)."""
    end, images = _run_to_end("twice", apps)
    fn = calls.resolve("IoCompleteRequest", images)
    found, truncated = calls.calls(factory(*twice(apps)), fn, end, ended=True, pid=12)
    assert not truncated and [c.end for c in found] == [None, None, calls.BUGCHECK]
    assert calls.row(3, found[2], fn, 2, lambda a, _pid: f"{a:#x}").startswith(
        "#3           109  pid  12 tid  16  ring 0  IRQL 0  0xfffff800010010f1  "
        "nt!IofCompleteRequest(Irp=0x")


def test_a_32_bit_app_by_cdecl(apps):
    """A 32-bit app's function: its arguments on the stack ([ESP+4], [ESP+8], ...), its
    return address 4 bytes, its value in EAX."""
    r = emu("query", "calls", "hello32!main", "--json", "--args", "2", apps / "hello32", "a")
    (main,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (main["convention"], main["args"][0], main["return"]) == ("cdecl", 2, 0)
    assert main["caller_symbol"].startswith("hello32!_start+")
    assert main["return_address"] == main["caller"] + 5             # call rel32
    out = emu("debug", apps / "hello32", "a",
              stdin=f"goto {main['position']}\nx/3wx $esp\n").stdout
    words = answer(out, "x/3wx $esp")[0].split()
    assert [int(w, 16) for w in words[1:]] == [main["return_address"], *main["args"]]


def test_too_many_calls_are_cut(apps, monkeypatch):
    """At most MAX_CALLS calls a query: the first ones, and the last line says so."""
    monkeypatch.setattr(calls, "MAX_CALLS", 5)
    end, images = _run_to_end("fib", apps)
    fn = calls.resolve("fib!fib", images)
    index = calls.CallIndex()
    found, truncated, cached = index.answer(fn, 1, end, factory(*fib(apps)), ended=True)
    assert truncated and not cached and len(found) == 5
    assert [(c.args[0], c.value) for c in found] == [(5, 5), (4, 3), (3, 2), (2, 1), (1, 1)]
    assert calls.summary(fn, len(found), None, end, truncated, cached).endswith(
        "(re-executed from boot); more than 5 calls: only the first are shown")
    again, truncated, cached = index.answer(fn, 1, end, factory(*fib(apps)), ended=True)
    assert truncated and cached and [c.position for c in again] == \
        [c.position for c in found]


@pytest.mark.parametrize(("args", "stdout", "status"), [
    ([], "fib(6) = 8\n", 0), (["10"], "fib(10) = 55\n", 0), (["20"], "fib(20) = 6765\n", 0),
    (["21"], "usage: fib [N] (N at most 20)\n", 2)])
def test_the_fib_app(apps, args, stdout, status):
    """guest/README.md's row for fib."""
    r = emu("run", apps / "fib", *args)
    assert (r.stdout, r.returncode) == (stdout, status)


def test_the_stack_is_read_under_smap(apps):
    """With --smap the return address and stack arguments of a ring-3 call are still read
    (the query's reads are not the guest's: SMAP does not apply to them)."""
    r = emu("query", "calls", "fib", "--smap", "--args", "1", apps / "fib", "2")
    assert r.stdout.splitlines()[0].endswith(
        "0x401022 <fib!main+0x22>  fib!fib(0x2)  returned 0x1 at 128"), r.stdout


def test_tab_completes_functions(apps):
    from emu.debugger.shell import Shell
    from emu.debugger.target import LiveTarget

    m = Machine("64M")
    try:
        m.spawn(apps / "fib", [])
        shell = Shell(LiveTarget(m))
        assert shell.complete_history("c", "history c", 8, 9) == ["calls"]
        assert shell.complete_history("fib!fi", "history calls fib!fi", 14, 20) == ["fib!fib"]
        assert shell.complete_history("nt!IofC", "history calls nt!IofC", 14, 21) == \
            ["nt!IofCompleteRequest"]
        assert shell.complete_history("a", "history calls fib a", 18, 19) == ["args"]
    finally:
        m.close()


# The same class elsewhere: the debugger's own walks of a user page under --smap (a read by
# the debugger, not by ring-0 code: RFLAGS.AC, as targetbase's walk does).

def test_history_write_under_smap_finds_the_user_pages_writes(apps):
    drivers, commands = slow_neither(apps)
    argv = ["--driver", drivers[0], commands[0][0], *commands[0][1], "--", commands[1][0]]
    r = emu("query", "write", "0x7F793950000", "8", "--pid", "20", "--smap", *argv)
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("9 writes to 0x7f793950000..0x7f793950007 in pid 20")
    assert all("<victim!memcpy+0x15>" in line for line in lines[:-1])
    # the first: the executive's, the demand-zero fault of victim's first store
    assert "by the executive: memory manager: a new page zeroed" in lines[0]


def test_a_watchpoint_on_a_user_address_under_smap_stops(apps):
    # (the path as given is on the stack: the relative one puts main's return address here)
    out = emu("debug", "--smap", "guest/build/apps/fib",
              stdin="watch -l 8 0x7ffffffdff88\ncontinue\n").stdout
    assert "Watchpoint 1: 8-byte write of 0x7ffffffdff88 (value 0x401072) by the " \
        "instruction at fib!_start+0x14" in answer(out, "continue")
