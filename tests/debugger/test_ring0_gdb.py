"""gdb's view of ring-0 code (the g and p packets): the same CS, SS and RFLAGS as the
CPU and the shell's ``registers`` (tests/nt/test_ring0_state.py)."""

from __future__ import annotations

from test_gdbstub import handshake, served

from emu.debugger import gdbregs


def test_gdb_sees_the_same_ring_0_state():
    with served(("slowread", ["\\Device\\SlowNeither"]), drivers=("slowneither.sys",)) as s:
        c = s.client
        handshake(c)
        read = next(d for d in s.machine.executive.drivers
                    if d.image.name == "slowneither.sys").image.symbols["Read"]
        assert c.cmd(f"Z0,{read:x},1") == b"OK"
        assert c.cmd("c").startswith(b"T05")
        values = gdbregs.decode_all(bytes.fromhex(c.cmd("g").decode()))
        assert values["rip"] == read
        assert (values["cs"], values["ss"]) == (0x10, 0x18)
        assert values["eflags"] & 0x202 == 0x202
        assert c.register("cs") == 0x10 and c.register("ss") == 0x18
        assert c.cmd(f"z0,{read:x},1") == b"OK"
        c.send(b"k")
