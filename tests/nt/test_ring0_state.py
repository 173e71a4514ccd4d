"""What ring-0 code and a waiting thread look like from outside: the state every view shows
is one the hardware could be in, and the one the code runs or resumes with.

Ring 0 runs with CS = KGDT64_R0_CODE (0x10), SS = KGDT64_R0_DATA (0x18) and RFLAGS.IF = 1
at every IRQL the executive uses (docs/abi.md, "Ring 0"). A thread that waits shows the
state it will resume from, not the trap its kernel work returned through.
"""

from __future__ import annotations

from pathlib import Path

import emurun

from emu.nt import layout

ROOT = Path(__file__).resolve().parents[2]
APPS = Path("guest") / "build" / "apps"
DRIVERS = Path("guest") / "build" / "drivers"
KERNEL_RETURN = layout.KERNEL_TEXT + 0x10
KERNEL_CS = "cs 0x0010  GDT[2] RPL 0: 64-bit code (execute/read), DPL 0"
KERNEL_SS = "ss 0x0018  GDT[3] RPL 0: data (read/write), DPL 0"


def debug(script: str, *args: str) -> str:
    """``emu debug ARGS`` with ``script`` on standard input; its transcript."""
    r = emurun.emu("debug", *args, input=script, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def slowneither(script: str) -> str:
    return debug(script, "--stop-at-driver", "--driver", str(DRIVERS / "slowneither.sys"),
                 str(APPS / "slowread"), "\\Device\\SlowNeither")


def register_dumps(transcript: str) -> list[tuple[str, str, str, str]]:
    """(where, rflags line, cs line, ss line) of every ``registers`` in a transcript."""
    lines = transcript.splitlines()
    dumps = []
    for i, line in enumerate(lines):
        if line.endswith(") registers"):
            where = next(x for x in reversed(lines[:i]) if x.startswith("=> "))
            block = lines[i + 1:i + 16]
            pick = {x.split()[0]: x for x in block if x.split()[0] in ("rflags", "cs", "ss")}
            dumps.append((where, pick["rflags"], pick["cs"], pick["ss"]))
    return dumps


def test_every_ring_0_entry_shows_kernel_cs_ss_and_interrupts_enabled():
    transcript = slowneither(
        "registers\n"                              # DriverEntry, PASSIVE_LEVEL
        f"break *{KERNEL_RETURN:#x}\n"
        "break slowneither.sys!Read\n"
        "continue\nregisters\n"                    # the return trap after DriverEntry
        "continue\n"                                # the one after its IRP_MJ_CREATE routine
        "continue\nregisters\n"                    # the dispatch routine
        "catch interrupt\ncatch dpc\n"
        "continue\ncontinue\nregisters\n"          # the ISR, at DIRQL
        "continue\nregisters\n"                    # its return trap, still at DIRQL
        "continue\nregisters\n")                   # the DPC, at DISPATCH_LEVEL
    dumps = register_dumps(transcript)
    wheres = [d[0].split(">:")[0] for d in dumps]
    assert wheres == ["=> 0xfffff80001001000 <slowneither.sys!DriverEntry",
                      f"=> {KERNEL_RETURN:#x} <{KERNEL_RETURN:#x}",
                      "=> 0xfffff80001001200 <slowneither.sys!Read",
                      "=> 0xfffff80001001190 <slowneither.sys!Isr",
                      f"=> {KERNEL_RETURN:#x} <{KERNEL_RETURN:#x}",
                      "=> 0xfffff800010010f0 <slowneither.sys!DpcForIsr"], transcript
    for where, rflags, cs, ss in dumps:
        assert cs.startswith(KERNEL_CS) and cs.endswith("-> CPL 0 (kernel mode)"), where
        assert ss.startswith(KERNEL_SS), where
        value = int(rflags.split()[1], 16)
        assert value & 0x202 == 0x202 and " IF " in f" {rflags} ", where   # IF, bit 1
    assert dumps[0][1] == "rflags 0x00000202  IF  IOPL=0"


def test_a_thread_waiting_for_its_read_shows_where_it_resumes():
    transcript = debug("catch syscall NtReadFile\ncontinue\ncontinue\nthreads\nregisters\n",
                       "--driver", str(DRIVERS / "slowneither.sys"),
                       str(APPS / "slowread"), "\\Device\\SlowNeither")
    after = transcript.split("(system call NtReadFile blocked/ended)", 1)[1].splitlines()
    # The thread waits inside NtReadFile: it resumes after its syscall, at ring 3.
    assert after[1].startswith("=> 0x4021d1 <slowread!NtReadFile+0xa>: ret   "
                               '[pid 12 "slowread", ring 3]'), transcript
    thread = next(x for x in after if x.strip().startswith("16 "))
    assert thread.split()[3:5] == ["waiting", "0x4021d1"], thread
    assert f"{KERNEL_RETURN + 1:#x}" not in "\n".join(after)
    assert "cs 0x0033" in transcript.split("(system call NtReadFile blocked/ended)", 1)[1]


def test_a_woken_thread_shows_the_status_it_resumes_with():
    """Woken from NtDelayExecution but not yet on the CPU: its registers already hold what it
    resumes with (RAX = STATUS_SUCCESS), not the service number it entered with."""
    from emu import Machine
    from emu.debugger.live import LiveTarget
    from emu.nt.events import Event
    from emu.nt.process import ThreadState

    m = Machine("64M")
    sleeper = m.spawn(ROOT / APPS / "sleeper", ["5000"])
    m.spawn(ROOT / APPS / "counter", ["x", "3"])
    seen: list[dict[str, int]] = []

    def observer(event: Event, details: dict) -> None:
        thread = sleeper.threads[0]
        if event is Event.THREAD_DISPATCH and not seen and \
                thread.state is ThreadState.READY and thread.resume_rax is not None:
            seen.append(LiveTarget(m).registers(sleeper.pid))

    m.executive.events.subscribe(observer)
    try:
        m.run()
    finally:
        m.close()
    assert seen, "the sleeper was never seen ready after its sleep"
    regs = seen[0]
    assert regs["rax"] == 0                                    # STATUS_SUCCESS
    assert regs["rip"] == sleeper.image.symbols["NtDelayExecution"] + 0xa


def test_hlt_at_ring_0_waits_for_the_next_interrupt_and_goes_on():
    """IF is 1 at ring 0, so a driver's `hlt` ends at the next interrupt (the clock's) and
    the routine goes on after it; it was a Python error."""
    from emu import Machine
    from emu.nt.mm.address_space import Protection
    from emu.nt.mm.pfn import FrameUse

    m = Machine("64M")
    try:
        ex = m.executive
        routine = 0xFFFF_8000_0100_0000
        code = bytes.fromhex("b82a000000" "f4" "83c001" "c3")   # mov eax, 42; hlt; add; ret
        ex.mm.map_new(ex.mm.system, routine, Protection.PAGE_EXECUTE_READ,
                      use=FrameUse.KERNEL, data=code)
        assert ex.call_kernel(routine).rax == 43
    finally:
        m.close()
