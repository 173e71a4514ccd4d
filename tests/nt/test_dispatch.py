"""User-mode exception dispatch: a process handles its own exceptions, or dies of them."""

from __future__ import annotations

from emu.nt import dispatch
from emu.nt.process import ExceptionInfo
from emu.nt.status import NTSTATUS


def test_a_process_handles_its_own_exceptions(machine_factory, apps):
    m = machine_factory()
    p = m.spawn(apps / "seh")
    m.run()
    out = p.output.decode().splitlines()
    assert out[0].startswith("caught 0xc0000094 at 0x")
    assert out[1] == "after the divide: 42"                  # the handler skipped the div
    assert out[2].startswith("caught 0x80000001 at 0x")       # the guard page, once
    assert out[3] == "guard page at 0x10000"
    assert out[4] == "then it works: 0"                       # ... then the read works
    assert out[5:7] == ["now an access violation nobody handles",
                        out[6]] and out[6].startswith("caught 0xc0000005")
    # unhandled: the second chance ends the process with the full exception record
    assert p.exception.code == NTSTATUS.STATUS_ACCESS_VIOLATION
    assert p.exception.address == 0x10 and p.exit_status == 0xC0000005


def test_the_context_keeps_every_register():
    regs = {name: (i + 1) * 0x1111_1111 for i, name in enumerate(dispatch.CONTEXT_GPRS)}
    regs.update({f"xmm{i}": (i + 1) << 100 | i for i in range(16)})
    regs["mxcsr"] = 0x1F80
    data = dispatch.pack_context(regs)
    assert len(data) == dispatch.CONTEXT_SIZE == 408
    assert dispatch.unpack_context(data) == regs


def test_the_exception_record_layout():
    info = ExceptionInfo(0xC0000005, 0x401000, "mov", "write", 0x10, (1, 0x10))
    record = dispatch.pack_record(info)
    assert len(record) == dispatch.RECORD_SIZE == 152
    assert record[:4] == (0xC0000005).to_bytes(4, "little")
    assert int.from_bytes(record[16:24], "little") == 0x401000          # ExceptionAddress
    assert int.from_bytes(record[24:28], "little") == 2                 # NumberParameters
    assert int.from_bytes(record[40:48], "little") == 0x10              # Information[1]


def test_without_a_dispatcher_the_process_just_dies(machine_factory, apps):
    m = machine_factory()
    p = m.spawn(apps / "nullread")
    m.run()
    assert p.exception.code == NTSTATUS.STATUS_ACCESS_VIOLATION and p.exception_dispatcher == 0
