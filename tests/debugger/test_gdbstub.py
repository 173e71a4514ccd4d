"""The gdb stub over a real socket, driven by a raw client written here: what a gdb would
receive for each packet, and what the machine does after it."""

from __future__ import annotations

import io
import socket
import sys
import threading
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from emu import Machine
from emu.debugger import gdbregs, gdbstub, rsp
from emu.debugger.rsp import Kind, PacketReader, ProtocolError
from emu.debugger.session import Session, Stop, StopReason
from emu.hw.exceptions import CpuException, Vector

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
DRIVERS = ROOT / "guest" / "build" / "drivers"
TIMEOUT = 30.0


class RawClient:
    """A minimal gdb: frames packets, checks the stub's checksums, acks its replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        # As gdb does (ser-tcp.c): without TCP_NODELAY, Nagle's algorithm holds each small
        # write (an ack, then the next packet) until the last one is acknowledged, and the
        # stub's side delays that acknowledgement by up to 40 ms: 0.1 s a test, for nothing.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.ack = True
        self.console: list[str] = []        # the text of O packets received

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the stub hung up")
        self.buf += data

    def _byte(self) -> int:
        while not self.buf:
            self._more()
        b, self.buf = self.buf[0], self.buf[1:]
        return b

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes) -> None:
        """Send a packet; in ack mode, expect the stub's '+'."""
        self.sock.sendall(rsp.frame(payload))
        if self.ack:
            assert self._byte() == ord("+")

    def packet(self) -> bytes:
        """The next packet from the stub (its checksum checked, acked), unescaped."""
        while self._byte() != ord("$"):
            pass
        while b"#" not in self.buf or len(self.buf) < self.buf.index(b"#") + 3:
            self._more()
        end = self.buf.index(b"#")
        body, digits = self.buf[:end], self.buf[end + 1:end + 3]
        self.buf = self.buf[end + 3:]
        assert int(digits, 16) == rsp.checksum(body), (body, digits)
        if self.ack:
            self.sock.sendall(b"+")
        return rsp.unescape(body)

    def reply(self) -> bytes:
        """The next reply that is not an O (console) packet; those go to ``console``."""
        while True:
            payload = self.packet()
            if payload[:1] == b"O" and payload != b"OK":
                self.console.append(bytes.fromhex(payload[1:].decode()).decode())
                continue
            return payload

    def cmd(self, payload: bytes | str) -> bytes:
        """Send a packet, return the stub's reply."""
        self.send(payload.encode() if isinstance(payload, str) else payload)
        return self.reply()

    def no_ack(self) -> None:
        assert self.cmd("QStartNoAckMode") == b"OK"
        self.ack = False

    def register(self, name: str) -> int:
        """A register read with ``p``."""
        reg = gdbregs.REGISTERS[gdbregs.NUMBER[name]]
        return gdbregs.decode_register(reg, bytes.fromhex(self.cmd(
            f"p{gdbregs.NUMBER[name]:x}").decode()))

    def close(self) -> None:
        self.sock.close()


class Served:
    """A machine under ``gdbstub.serve`` in a thread, and a client connected to it."""

    def __init__(self, machine: Machine, runner=None, factory=None, connect: bool = True) -> None:
        self.machine = machine
        self.box: dict = {}
        ready = threading.Event()

        def note_port(port: int) -> None:
            self.box["port"] = port
            ready.set()

        def run() -> None:
            try:
                self.box["result"] = gdbstub.serve(machine, ready=note_port, runner=runner,
                                                   accept_timeout=TIMEOUT, factory=factory,
                                                   log=io.StringIO())
            except BaseException as err:       # noqa: BLE001 - reported by finish()
                self.box["error"] = err
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(TIMEOUT), "the stub never listened"
        if "error" in self.box:
            raise self.box["error"]
        self.port = self.box["port"]
        self.client = RawClient(self.port) if connect else None

    def finish(self):
        """Hang up; wait for the machine to end; its MachineResult."""
        if self.client is not None:
            self.client.close()
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            self.machine.interrupt()
            self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the machine never ended"
        if "error" in self.box:
            raise self.box["error"]
        return self.box["result"]


@contextmanager
def served(*apps: tuple[str, list[str]], drivers: tuple[str, ...] = (), runner=None,
           factory: bool = False, connect: bool = True):
    """Serve a machine running ``apps`` (name, args) after ``drivers``; yields Served with
    a RawClient connected (unless ``connect`` is False: for a real gdb)."""
    def make() -> Machine:
        m = Machine("64M")
        for name in drivers:
            m.add_driver(DRIVERS / name)
        for name, args in apps:
            m.spawn(APPS / name, args)
        return m

    machine = make()
    s = Served(machine, runner, make if factory else None, connect)
    try:
        yield s
    finally:
        if s.thread.is_alive():
            s.finish()
        machine.close()


def hello(*args: str):
    return served(("hello", list(args)))


def handshake(c: RawClient) -> bytes:
    """What gdb does first; returns the qSupported reply."""
    features = c.cmd("qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+")
    c.no_ack()
    return features


def first_insn_size(code: bytes, address: int) -> int:
    insn = next(Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, address))
    return insn.size


# -- the wire ----------------------------------------------------------------------------------

def test_checksum_and_escapes_round_trip() -> None:
    assert rsp.frame(b"OK") == b"$OK#9a"
    data = bytes(range(256))
    assert rsp.unescape(rsp.escape(data)) == data
    assert rsp.escape(b"a$b#c}d*") == b"a}\x04b}\x03c}]d}\x0a"


def test_reader_keeps_bytes_across_reads_and_orders_events() -> None:
    reader = PacketReader()
    stream = b"+$g#67\x03$m0,4#fd-$?#3f"
    events = []
    for i in range(len(stream)):                     # one byte at a time
        events += reader.feed(stream[i:i + 1])
    assert [(e.kind, e.payload) for e in events] == [
        (Kind.ACK, b""), (Kind.PACKET, b"g"), (Kind.INTERRUPT, b""),
        (Kind.PACKET, b"m0,4"), (Kind.NAK, b""), (Kind.PACKET, b"?")]


def test_reader_reports_bad_checksums_and_refuses_huge_packets() -> None:
    reader = PacketReader(max_packet=16)
    bad = reader.feed(b"$g#00$m0,1#zz")
    assert [e.kind for e in bad] == [Kind.CORRUPT, Kind.CORRUPT]
    assert "should be 67" in bad[0].detail
    assert [e.kind for e in reader.feed(b"$" + b"a" * 40)] == [Kind.CORRUPT]
    assert [e.payload for e in reader.feed(b"$?#3f")] == [b"?"]   # and it goes on


def test_hex_fields_are_checked() -> None:
    assert rsp.parse_hex(b"1f") == 0x1F and rsp.parse_hex(b"-1") == -1
    for bad in (b"", b"xyz", b"1 2", b"-", b"1" * 40):
        with pytest.raises(ProtocolError):
            rsp.parse_hex(bad)
    with pytest.raises(ProtocolError):
        rsp.parse_hex_bytes(b"abc")


def test_only_loopback_unless_allowed() -> None:
    with pytest.raises(rsp.GdbServerError, match="not a loopback address"):
        rsp.check_host("10.1.2.3")
    with pytest.raises(rsp.GdbServerError, match="not an IP address"):
        rsp.check_host("example.org")
    rsp.check_host("127.0.0.1")
    rsp.check_host("::1")
    rsp.check_host("10.1.2.3", allow_remote=True)
    assert rsp.parse_address("1234") == ("127.0.0.1", 1234)
    assert rsp.parse_address("127.0.0.2:99") == ("127.0.0.2", 99)
    with pytest.raises(rsp.GdbServerError, match="bad address"):
        rsp.parse_address("localhost:http")


def test_listening_errors_are_one_line() -> None:
    busy = rsp.listen("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        with pytest.raises(rsp.GdbServerError) as err:
            rsp.listen("127.0.0.1", port)
        assert str(err.value) == f"gdb stub: cannot listen on 127.0.0.1:{port}: " \
                                 "Address already in use"
    finally:
        busy.close()
    with pytest.raises(rsp.GdbServerError, match="no gdb connected within 0.05 s"):
        rsp.accept(rsp.listen("::1", 0), timeout=0.05)


def test_serve_refuses_a_public_address_in_one_line() -> None:
    m = Machine("64M")
    try:
        with pytest.raises(gdbstub.GdbServerError) as err:
            gdbstub.serve(m, "0.0.0.0", 0)
        assert "\n" not in str(err.value)
    finally:
        m.close()


# -- the target description and registers -----------------------------------------------------

def fetch_target_xml(c: RawClient, chunk: int = 0x200) -> bytes:
    xml, offset = b"", 0
    while True:
        reply = c.cmd(f"qXfer:features:read:target.xml:{offset:x},{chunk:x}")
        xml += reply[1:]
        offset += len(reply) - 1
        if reply[:1] == b"l":
            return xml
        assert reply[:1] == b"m"


def test_handshake_and_target_description() -> None:
    with hello() as s:
        c = s.client
        features = handshake(c).split(b";")
        assert b"qXfer:features:read+" in features and b"PacketSize=4000" in features
        xml = fetch_target_xml(c)
        root = ET.fromstring(xml)
        assert root.findtext("architecture") == "i386:x86-64"
        regs = root.findall(".//reg")
        assert [r.get("name") for r in regs] == [r.name for r in gdbregs.REGISTERS]
        features = {f.get("name") for f in root.findall("feature")}
        assert {"org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                "org.gnu.gdb.i386.segments"} <= features
        g = c.cmd("g")
        assert len(g) == 2 * sum(int(r.get("bitsize")) // 8 for r in regs)
        assert c.cmd("qXfer:features:read:other.xml:0,10") == b"E01"
        assert c.cmd("qXfer:memory-map:read::0,10") == b""          # not served


def test_first_stop_is_the_entry_point_of_process_12() -> None:
    with hello("a") as s:
        c = s.client
        handshake(c)
        assert c.cmd("?") == b"T05thread:10;"
        assert c.cmd("qfThreadInfo") == b"m10"                 # process 12, thread 16
        assert c.cmd("qsThreadInfo") == b"l"
        assert c.cmd("qC") == b"QC10"
        assert c.cmd("qAttached") == b"1"
        entry = s.machine.processes[0].image.entry
        assert c.register("rip") == entry
        assert c.register("cs") & 3 == 3
        rsp_ = c.register("rsp")
        # the stack as crt0 finds it: argc, argv[0], argv[1], NULL
        words = bytes.fromhex(c.cmd(f"m{rsp_:x},20").decode())
        argc, argv0, argv1, end = (int.from_bytes(words[i:i + 8], "little")
                                   for i in range(0, 32, 8))
        assert (argc, end) == (2, 0)
        assert bytes.fromhex(c.cmd(f"m{argv1:x},2").decode()) == b"a\0"
        path = str(APPS / "hello").encode() + b"\0"
        assert bytes.fromhex(c.cmd(f"m{argv0:x},{len(path):x}").decode()) == path
        assert bytes.fromhex(c.cmd("qThreadExtraInfo,pc.10").decode()) == \
            b"pid 12 hello, tid 16, running, ring 3"
        s.client.cmd("c")


def test_g_layout_matches_p_for_every_register() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        g = bytes.fromhex(c.cmd("g").decode())
        offset = 0
        for i, reg in enumerate(gdbregs.REGISTERS):
            size = reg.bits // 8
            assert c.cmd(f"p{i:x}") == g[offset:offset + size].hex().encode(), reg.name
            offset += size
        assert c.cmd(f"p{len(gdbregs.REGISTERS):x}") == b"E01"
        assert c.register("cr0") & 0x8000_0001 == 0x8000_0001        # PG and PE
        assert c.register("efer") & (1 << 10)                          # LMA
        space = s.machine.processes[0].space       # CR4.PCIDE: CR3[11:0] is the PCID
        assert c.register("cr4") & (1 << 17) and space.pcid
        assert c.register("cr3") == space.cr3 | space.pcid
        c.cmd("c")


def test_writing_registers_changes_the_cpu() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        assert c.cmd(f"P{gdbregs.NUMBER['rax']:x}=" + (0x1122334455667788).to_bytes(
            8, "little").hex()) == b"OK"
        assert s.machine.executive.cpu.reg("rax") == 0x1122334455667788
        one = (0x3FFF << 64) | (1 << 63)                               # 1.0 as an x87 value
        assert c.cmd(f"P{gdbregs.NUMBER['st0']:x}=" + one.to_bytes(10, "little").hex()) == b"OK"
        assert c.register("st0") == one
        xmm = 0x0123456789ABCDEF_FEDCBA9876543210
        assert c.cmd(f"P{gdbregs.NUMBER['xmm7']:x}=" + xmm.to_bytes(16, "little").hex()) \
            == b"OK"
        assert s.machine.executive.cpu.reg_named("xmm7") == xmm
        # G with only rbx changed
        g = bytearray(bytes.fromhex(c.cmd("g").decode()))
        g[8:16] = (0xBEEF).to_bytes(8, "little")
        assert c.cmd(b"G" + g.hex().encode()) == b"OK"
        assert s.machine.executive.cpu.reg("rbx") == 0xBEEF
        # registers the executive owns are refused, not half-written
        assert c.cmd(f"P{gdbregs.NUMBER['cr3']:x}=" + "00" * 8) == b"E14"
        assert c.cmd(f"P{gdbregs.NUMBER['rax']:x}=00") == b"E01"        # too short
        c.cmd("c")


# -- memory -------------------------------------------------------------------------------------

def test_memory_reads_and_writes_through_the_page_tables() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        stack = c.register("rsp")
        assert c.cmd(f"M{stack:x},4:deadbeef") == b"OK"
        assert c.cmd(f"m{stack:x},4") == b"deadbeef"
        assert c.cmd(b"X%x,3:a}b" % (stack + 4)) == b"OK"       # binary ('}' goes escaped)
        assert c.cmd(f"m{stack + 4:x},3") == b"617d62"
        # the same bytes are in the frame the page walk finds
        pa = s.machine.executive.cpu.walk(stack, "read", cpl=0).pa
        assert s.machine.mem.read(pa, 4) == bytes.fromhex("deadbeef")
        assert c.cmd("m0,8") == b"E14"                          # nothing mapped at 0
        assert c.cmd("M0,1:00") == b"E14"
        c.cmd("c")


def test_partial_read_stops_at_the_first_unmapped_page() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        image = s.machine.processes[0].image
        last = max(image.pages)                         # the image's last page
        end = last + 0x1000
        reply = c.cmd(f"m{end - 4:x},8")
        assert len(reply) == 8                           # 4 bytes, up to the gap
        c.cmd("c")


# -- running --------------------------------------------------------------------------------------

def test_step_runs_one_instruction() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        rip = c.register("rip")
        size = first_insn_size(bytes.fromhex(c.cmd(f"m{rip:x},10").decode()), rip)
        assert c.cmd("s") == b"T05thread:10;"
        assert c.register("rip") == rip + size
        assert c.cmd("vCont?") == b"vCont;c;C;s;S"
        before = c.register("rip")
        assert c.cmd("vCont;s:4;c") == b"T05thread:10;"
        assert c.register("rip") != before
        c.cmd("c")


def test_breakpoint_then_continue_to_the_end() -> None:
    with hello("x") as s:
        c = s.client
        handshake(c)
        main = s.machine.processes[0].image.symbols["main"]
        assert c.cmd(f"Z0,{main:x},1") == b"OK"
        assert c.cmd(f"Z0,{main:x},1") == b"OK"                 # again: still one
        assert c.cmd("c") == b"T05swbreak:;thread:10;"
        assert c.register("rip") == main
        assert c.cmd(f"z0,{main:x},1") == b"OK"
        exit_ = s.machine.processes[0].image.symbols["exit"]
        assert c.cmd(f"Z1,{exit_:x},1") == b"OK"                 # a "hardware" one
        assert c.cmd("c") == b"T05hwbreak:;thread:10;"
        assert c.cmd(f"z1,{exit_:x},1") == b"OK"
        assert c.cmd("c") == b"W00"
        assert 'process 12 "hello" exited with status 0x0' in "".join(c.console)
        assert c.cmd("c") == b"W00"                              # nothing left to run
        assert c.cmd("?") == b"W00"
        result = s.finish()
        assert s.machine.processes[0].output == b"Hello, world!\nargv[1] = x\n"
        assert result.stopped is None


def test_resume_at_an_address() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        main = s.machine.processes[0].image.symbols["main"]
        assert c.cmd(f"s{main:x}")[:3] == b"T05"
        rip = c.register("rip")
        assert rip != main and 0 < rip - main < 16
        c.cmd("c")


def test_watchpoints_report_the_address_and_kind() -> None:
    with served(("counter", ["a", "3", "10"])) as s:
        c = s.client
        handshake(c)
        sink = s.machine.processes[0].image.symbols["work_sink"]
        assert c.cmd(f"Z2,{sink:x},8") == b"OK"
        assert c.cmd("c") == f"T05watch:{sink:x};thread:10;".encode()
        value = int.from_bytes(bytes.fromhex(c.cmd(f"m{sink:x},8").decode()), "little")
        assert value != 0                                         # written: the stop is after
        assert c.cmd(f"z2,{sink:x},8") == b"OK"
        assert c.cmd(f"Z3,{sink:x},8") == b"OK"
        assert c.cmd("c") == f"T05rwatch:{sink:x};thread:10;".encode()
        assert c.cmd(f"z3,{sink:x},8") == b"OK"
        assert c.cmd(f"Z4,{sink:x},8") == b"OK"
        assert c.cmd("c") == f"T05awatch:{sink:x};thread:10;".encode()
        assert c.cmd(f"z4,{sink:x},8") == b"OK"
        assert c.cmd("Z2,1000,0") == b"E03"                      # zero length: refused
        assert c.cmd("Z5,1000,1") == b""                         # unknown type: unsupported
        assert c.cmd("c") == b"W00"


def wait_until_running(s: Served, instructions: int = 200_000) -> None:
    """Until the guest has run ``instructions`` (bounded by TIMEOUT, not a timing claim)."""
    done = threading.Event()
    deadline = threading.Timer(TIMEOUT, done.set)
    deadline.start()
    try:
        while s.machine.executive.cpu.instructions < instructions and not done.is_set():
            done.wait(0.01)
    finally:
        deadline.cancel()
    assert s.machine.executive.cpu.instructions >= instructions


def test_ctrl_c_stops_a_running_guest() -> None:
    with served(("spin", [])) as s:
        c = s.client
        handshake(c)
        c.send(b"c")
        wait_until_running(s)
        c.send_raw(b"\x03")
        assert c.reply() == b"T02thread:10;"
        main = s.machine.processes[0].image.symbols["main"]
        assert main <= c.register("rip") < main + 16             # in spin's loop
        c.send(b"vKill;4")
        assert c.reply() == b"OK"
        result = s.finish()
        assert result.stopped == "killed"


def test_ctrl_c_right_behind_continue_is_not_lost() -> None:
    with served(("spin", [])) as s:
        c = s.client
        handshake(c)
        c.send_raw(rsp.frame(b"c") + b"\x03")                    # one write: both at once
        assert c.reply() == b"T02thread:10;"
        assert c.cmd("?") == b"T02thread:10;"
        c.send(b"k")
        assert s.finish().stopped == "killed"


def test_stray_ctrl_c_while_stopped_is_ignored() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        c.send_raw(b"\x03")
        assert c.cmd("qC") == b"QC10"
        assert c.cmd("c") == b"W00"


# -- threads ----------------------------------------------------------------------------------

def test_each_process_s_thread_is_a_thread_named_with_its_process() -> None:
    with served(("counter", ["a", "2", "10"]), ("counter", ["b", "2", "10"])) as s:
        c = s.client
        handshake(c)
        second = s.machine.processes[1].pid
        tid = s.machine.processes[1].threads[0].tid
        assert c.cmd("qfThreadInfo") == f"m10,{tid:x}".encode()
        assert bytes.fromhex(c.cmd(f"qThreadExtraInfo,p{second:x}.{tid:x}").decode()) == \
            f"pid {second} counter, tid {tid}, ready, not started".encode()
        assert c.cmd(f"Tp{second:x}.{tid:x}") == b"OK"
        assert c.cmd(f"T{tid:x}") == b"OK"                      # a tid alone names it too
        assert c.cmd(f"Tpc.{tid:x}") == b"E02"                  # not a thread of process 12
        assert c.cmd("T99") == b"E02"
        assert c.cmd("Hg99") == b"E02"
        assert c.cmd(f"Hgp{second:x}.{tid:x}") == b"OK"
        assert c.register("rip") == s.machine.processes[1].image.entry
        space = s.machine.processes[1].space
        assert c.register("cr3") == space.cr3 | space.pcid
        cpu = s.machine.executive.cpu          # not started: the processor's CR0, CR4, EFER
        assert (c.register("cr0"), c.register("cr4"), c.register("efer")) == \
            (cpu.cr0, cpu.cr4, cpu.efer)
        assert c.cmd("P0=" + "00" * 8) == b"E03"                 # not on the CPU: read-only
        assert c.cmd("Hg0") == b"OK"
        assert c.cmd("c") == b"W00"
        assert [p.output for p in s.machine.processes] == [b"a 1\na 2\n", b"b 1\nb 2\n"]


def test_same_address_in_two_processes_reads_each_one_own() -> None:
    with served(("notepad", []), ("myapp", [])) as s:
        c = s.client
        handshake(c)
        notepad, myapp = s.machine.processes
        puts = notepad.image.symbols["puts"]
        assert c.cmd(f"Z0,{puts:x},1") == b"OK"
        assert c.cmd("c")[:3] == b"T05"                        # one of them is done
        markers = {}
        for proc in (notepad, myapp):
            assert c.cmd(f"Hgp{proc.pid:x}.-1") == b"OK"          # any thread of it
            markers[proc.name] = bytes.fromhex(c.cmd("m7f793950000,e").decode())
        assert markers == {"notepad": b"notepad page 0", "myapp": b"myapp page 0\0\0"}
        assert c.cmd(f"z0,{puts:x},1") == b"OK"
        assert c.cmd("Hg0") == b"OK"
        assert c.cmd("c") == b"W00"


# -- the end of the machine -------------------------------------------------------------------

def test_exit_code_and_a_crash_on_the_console() -> None:
    with served(("badread", []), ("exitcode", ["7"])) as s:
        c = s.client
        handshake(c)
        assert c.cmd("c") == b"T0bthread:10;"     # the unhandled exception: SIGSEGV
        assert 'process 12 "badread" terminated: STATUS_ACCESS_VIOLATION (0xC0000005) ' \
               "reading 0xffff800000001000" in "".join(c.console)
        c.console.clear()
        assert c.cmd("c") == b"W05"              # 0xC0000005 & 0xff: the first process's
        text = "".join(c.console)
        assert "exited with status 0x7" in text
        assert 'process 12 "badread" exit status STATUS_ACCESS_VIOLATION (0xC0000005)' in text


def test_exit_status_is_the_first_process() -> None:
    with served(("exitcode", ["42"])) as s:
        c = s.client
        handshake(c)
        assert c.cmd("c") == b"W2a"


def test_bug_check_is_a_sigsegv_stop_in_the_kernel_thread() -> None:
    with served(("hello", []), drivers=("bugcheck.sys",)) as s:
        c = s.client
        handshake(c)
        assert c.cmd("?") == b"T05thread:1;"  # before DriverEntry's first instruction
        assert c.cmd("qfThreadInfo") == b"m1,10"
        assert bytes.fromhex(c.cmd("qThreadExtraInfo,1").decode()) == \
            b"kernel (no process on the CPU), ring 0"
        assert c.cmd("qRcmd," + b"why".hex()) == b"OK"
        assert "stopped before DriverEntry at bugcheck.sys!DriverEntry" in "".join(c.console)
        assert c.cmd("c") == b"T0bthread:1;"  # the bug check: a SIGSEGV stop, in ring 0
        assert "bug check 0xe2 MANUALLY_INITIATED_CRASH" in "".join(c.console)
        assert c.cmd("c") == b"X0b"              # nothing runs after it: killed by SIGSEGV
        assert s.finish().bugcheck.code == 0xE2


# -- monitor ---------------------------------------------------------------------------------

def test_monitor_walk_shows_each_level() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        assert c.cmd("qRcmd," + b"walk 0x401000".hex()) == b"OK"
        text = "".join(c.console)
        assert [line.split("[")[0] for line in text.splitlines()[:4]] == \
            ["PML4E", "PDPTE", "PDE", "PTE"]
        pa = s.machine.executive.cpu.walk(0x401000, "read", cpl=0).pa
        assert text.splitlines()[4] == f"0x401000 -> {pa:#x}"
        c.console.clear()
        assert c.cmd("qRcmd," + b"walk 0".hex()) == b"OK"
        assert "#PF" in "".join(c.console)
        c.console.clear()
        c.cmd("qRcmd," + b"walk nowhere".hex())
        assert c.console == ["walk: bad address 'nowhere' (e.g. walk 0x401000)\n"]
        c.console.clear()
        c.cmd("qRcmd," + b"frobnicate".hex())
        assert c.console == ["unknown command 'frobnicate' (try 'monitor help')\n"]
        c.cmd("c")


def test_monitor_uses_the_runner_it_is_given() -> None:
    seen = []

    def runner(line: str) -> str:
        seen.append(line)
        return "x" * 3000                                   # several O packets

    with served(("hello", []), runner=runner) as s:
        c = s.client
        handshake(c)
        assert c.cmd("qRcmd," + b"regs".hex()) == b"OK"
        assert seen == ["regs"] and "".join(c.console) == "x" * 3000
        assert len(c.console) == 3
        c.cmd("c")


# -- leaving -----------------------------------------------------------------------------------

def test_disconnect_leaves_the_machine_to_run_to_its_end() -> None:
    with served(("counter", ["a", "3", "10"])) as s:
        c = s.client
        handshake(c)
        printf = s.machine.processes[0].image.symbols["printf"]
        assert c.cmd(f"Z0,{printf:x},1") == b"OK"
        assert c.cmd("c")[:3] == b"T05"
        result = s.finish()                                  # hang up at the breakpoint
        assert result.stopped is None
        assert s.machine.processes[0].output == b"a 1\na 2\na 3\n"


def test_detach_replies_ok_and_lets_the_machine_finish() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        assert c.cmd("D") == b"OK"
        result = s.finish()
        assert result.processes[0].exit_status == 0
        assert s.machine.processes[0].output.startswith(b"Hello, world!")


def test_kill_ends_the_machine() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        c.send(b"k")
        result = s.finish()
        assert result.stopped == "killed"
        assert s.machine.processes[0].output == b""


def test_reverse_step_when_the_machine_can_be_rebuilt() -> None:
    with served(("hello", []), factory=True) as s:
        c = s.client
        features = handshake(c)
        assert b"ReverseStep+" in features.split(b";")
        entry = c.register("rip")
        c.cmd("s")
        c.cmd("s")
        second = c.register("rip")
        c.cmd("s")
        assert c.cmd("bs") == b"T05thread:10;"
        assert c.register("rip") == second
        c.cmd("bs")
        assert c.cmd("bs") == b"T05thread:10;" and c.register("rip") == entry
        assert c.cmd("c") == b"W00"


def test_no_reverse_without_a_recipe() -> None:
    with hello() as s:
        c = s.client
        assert b"ReverseStep+" not in handshake(c)
        assert c.cmd("bs") == b""
        assert c.cmd("c") == b"W00"


# -- bad packets -------------------------------------------------------------------------------

def test_corrupt_packet_is_nakked_then_resent() -> None:
    with hello() as s:
        c = s.client
        c.send_raw(b"$qC#00")
        assert c._byte() == ord("-")
        assert c.cmd("qC") == b"QC10"
        handshake(c)
        c.send_raw(b"$qC#00")                               # no acks now: an error reply
        assert c.reply() == b"E01"
        assert c.cmd("qC") == b"QC10"
        c.cmd("c")


def test_ack_mode_resends_a_reply_on_nak() -> None:
    with hello() as s:
        c = s.client                                        # never asks for no-ack mode
        c.send(b"qC")
        c.ack = False                                       # read it without acking...
        first = c.packet()
        c.send_raw(b"-")                                    # ...and ask for it again
        assert c.packet() == first == b"QC10"
        c.send_raw(b"+")
        c.ack = True
        assert c.cmd("qfThreadInfo") == b"m10"
        assert c.cmd("c") == b"W00"


@pytest.mark.parametrize("packet, reply", [
    ("mzz,4", b"E01"), ("m10", b"E01"), ("M0,2:abc", b"E01"), ("M0,4:00", b"E01"),
    ("X0,4:ab", b"E01"), ("pzz", b"E01"), ("P10", b"E01"), ("Hx4", b"E01"),
    ("Z0,zz,1", b"E01"), ("Z0,1", b"E01"), ("vCont;t", b"E01"), ("vCont", b"E01"),
    ("qThreadExtraInfo,zz", b"E01"), ("qRcmd,zz", b"E01"), ("G12", b"E01"),
    ("Jfoo", b""), ("qNothing", b""), ("vMustReplyEmpty", b""), ("", b""),
    ("m-1,4", b"E01"), (f"m{1 << 64:x},1", b"E01"), ("bx", b"E01"), ("Sxx", b"E01"),
    # huge lengths are checked against the data, never allocated or looped over
    (f"M0,{(1 << 64) - 1:x}:00", b"E01"), (f"X0,{(1 << 64) - 1:x}:a", b"E01"),
    (f"m0,{'f' * 32}", b"E14"), (f"Z2,400000,{'f' * 8}", b"E03"),
    (f"qXfer:features:read:target.xml:{'f' * 16},{'f' * 32}", b"l"),
    ("vCont;s:zz", b"E01"), ("vCont;c;;", b"E01"), ("vCont;Czz", b"E01"),
    ("M0,1:" + "g" * 2, b"E01"),
    # thread ids (pPID.TID too), the thread and library lists
    ("Hgpzz", b"E01"), ("Hgp4.zz", b"E01"), ("Hgp", b"E01"), ("Hgp-2.1", b"E01"),
    ("Hgp4.-2", b"E01"), ("Hg-2", b"E01"), ("Tp4.", b"E01"), ("Hgp4.c", b"E02"),
    ("qThreadExtraInfo,-1", b"E01"), ("qThreadExtraInfo,p4.-1", b"E01"),
    ("qThreadExtraInfo,p4.63", b"E02"), ("vCont;s:p4.zz", b"E01"),
    ("qXfer:threads:read:x:0,10", b"E01"), ("qXfer:threads:read::zz", b"E01"),
    ("qXfer:libraries:read:a.xml:0,10", b"E01"), ("qXfer:libraries:read::0", b"E01"),
    ("qXfer:libraries:write::0,10", b""), ("qXfer:threads:read:", b""),
    (f"qXfer:libraries:read::{'f' * 16},10", b"l"),
])
def test_malformed_packets_get_error_replies(packet: str, reply: bytes) -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        assert c.cmd(packet) == reply
        assert c.cmd("?") == b"T05thread:10;"                # the connection goes on
        assert c.cmd("c") == b"W00"                         # and so does the machine


# -- stop replies without a machine run ----------------------------------------------------------

class _FakeTarget:
    def current_pid(self):
        return 4

    def processes(self):
        return []


class _FakeProcess:
    pid = 4


class _FakeThread:
    process, tid = _FakeProcess(), 8


class _FakeExecutive:
    current_thread = _FakeThread()


class _FakeSession:
    target = _FakeTarget()
    executive = _FakeExecutive()


@pytest.mark.parametrize("stop, reply", [
    (Stop(StopReason.CATCH, "", exception=CpuException(Vector.PF, 0, 3)), b"T0bthread:8;"),
    (Stop(StopReason.CATCH, "", exception=CpuException(Vector.DE, 0, 3)), b"T08thread:8;"),
    (Stop(StopReason.CATCH, "", exception=CpuException(Vector.UD, 0, 3)), b"T04thread:8;"),
    (Stop(StopReason.CATCH, ""), b"T05thread:8;"),
    (Stop(StopReason.INTERRUPT, ""), b"T02thread:8;"),
    (Stop(StopReason.EXITED, "", exit_code=3), b"W03"),
    (Stop(StopReason.WATCHPOINT, "", watch_kind="read", address=0x10), b"T05rwatch:10;thread:8;"),
    (Stop(StopReason.HISTORY_START, ""), b"T05replaylog:begin;thread:8;"),
])
def test_stop_replies(stop: Stop, reply: bytes) -> None:
    stub = gdbstub.GdbStub.__new__(gdbstub.GdbStub)
    stub.session = _FakeSession()
    stub.features = set()
    assert stub.stop_reply(stop) == reply


# -- the shell's gdbserver: lending a paused session to gdb -------------------------------------

def test_attach_lends_the_session_and_gives_it_back() -> None:
    machine = Machine("64M")
    machine.spawn(APPS / "hello", [])
    main = machine.processes[0].image.symbols["main"]
    port: list[int] = []
    ready = threading.Event()
    seen: list[tuple[str, int]] = []           # what the shell-like front end saw
    log = io.StringIO()

    def front_end(stop: Stop) -> bool:
        seen.append((stop.reason.value, session.target.register("rip")))
        if len(seen) == 1:                      # the shell's first prompt: "gdbserver 0"
            if gdbstub.attach(session, port=0, ready=lambda p: (port.append(p), ready.set()),
                              stop=stop, log=log, accept_timeout=TIMEOUT):
                return True
        if not stop.ended:
            session.cont()
            return True
        return False

    session = Session(machine, front_end)
    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("result", session.run()),
                              daemon=True)
    worker.start()
    try:
        assert ready.wait(TIMEOUT)
        c = RawClient(port[0])
        handshake(c)
        assert c.cmd("?") == b"T05thread:10;"
        assert c.cmd(f"Z0,{main:x},1") == b"OK"
        assert c.cmd("c") == b"T05swbreak:;thread:10;"
        assert c.cmd("D") == b"OK"              # gdb leaves at main: the shell has it again
        c.close()
        worker.join(TIMEOUT)
        assert not worker.is_alive()
    finally:
        if worker.is_alive():
            machine.interrupt()
            worker.join(TIMEOUT)
        machine.close()
    entry = machine.processes[0].image.entry
    assert seen == [("start", entry), ("breakpoint", main), ("exited", seen[-1][1])]
    assert session.breakpoints == {}           # gdb's breakpoint went with it
    assert machine.processes[0].output == b"Hello, world!\n"
    assert "gdb has gone; the debugger has the machine again" in log.getvalue()


# -- hostile peers: bounded work whatever arrives ------------------------------------------------

def test_reader_skips_any_amount_of_noise() -> None:
    reader = PacketReader()
    events = reader.feed(b"x" * 100_000 + b"$?#3f")
    assert [(e.kind, e.payload) for e in events] == [(Kind.PACKET, b"?")]


def test_the_tail_of_an_oversized_packet_is_skipped_not_read_as_control_bytes() -> None:
    reader = PacketReader(max_packet=16)
    stream = b"$" + b"a" * 40 + b"\x03+-" + b"b" * 40 + b"#00" + rsp.frame(b"?")
    events = []
    for i in range(0, len(stream), 7):
        events += reader.feed(stream[i:i + 7])
    assert [(e.kind, e.payload) for e in events] == [(Kind.CORRUPT, b""), (Kind.PACKET, b"?")]
    assert reader.feed(b"x" * 100_000 + b"\x03") == [rsp.Event(Kind.INTERRUPT)]


def test_noise_and_oversized_packets_on_the_socket_leave_the_stub_working() -> None:
    with hello() as s:
        c = s.client
        handshake(c)
        c.send_raw(b"x" * 100_000)                           # 100 KB without a '$'
        assert c.cmd("?") == b"T05thread:10;"
        c.send_raw(b"$" + b"\x03" * 100_000 + b"#00")         # far over PacketSize
        assert c.reply() == b"E01"
        assert c.cmd("qC") == b"QC10"
        c.send_raw(b"y" * 100_000)
        result = s.finish()                                   # hang up: the machine ends
        assert result.processes[0].exit_status == 0
        assert s.machine.processes[0].output == b"Hello, world!\n"


def _waiting_for_room(conn: rsp.Connection) -> bool:
    """Whether the reader thread of ``conn`` is parked in ``_room_for_more``'s wait."""
    frame = sys._current_frames().get(conn._thread.ident)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return "_room_for_more" in names and "wait" in names


def test_a_flood_of_packets_nobody_takes_stops_the_reading_not_the_memory() -> None:
    """While the machine runs nobody takes packets: after MAX_QUEUED the stub stops reading
    (the client's sends block), and once they are taken every one is there, in order."""
    ours, peer = socket.socketpair()
    conn = rsp.Connection(ours, on_interrupt=lambda: None)
    conn.ack_mode = False
    conn.start()
    packets = [rsp.frame(b"q%d," % i + b"x" * 8000) for i in range(2000)]    # 16 MB
    sender = threading.Thread(target=lambda: peer.sendall(b"".join(packets)), daemon=True)
    sender.start()
    # Not a timed wait: either the reader parks, waiting for room (then it never reads
    # again until a packet is taken, and the sender, 16 MB in, can never finish), or it
    # reads on and the sender finishes.
    while sender.is_alive() and not _waiting_for_room(conn):
        sender.join(0.01)
    assert sender.is_alive(), "the stub read 16 MB that nobody took"
    assert len(conn._events) == rsp.MAX_QUEUED
    taken = [conn.next_event().payload.split(b",")[0] for _ in packets]
    assert taken == [b"q%d" % i for i in range(2000)]
    sender.join(TIMEOUT)
    peer.close()
    assert conn.next_event().kind is Kind.DISCONNECTED
    conn.close()


def test_an_oversized_packet_gives_the_same_events_however_the_stream_is_cut() -> None:
    """Refused at its first byte too many: what follows (here a '$c' inside it) is
    skipped the same way whether it arrives in one read or in many."""
    stream = b"$" + b"a" * 20 + b"$c#63" + b"b" * 20 + b"#00" + rsp.frame(b"?")
    whole = PacketReader(max_packet=16).feed(stream)
    reader, pieces = PacketReader(max_packet=16), []
    for i in range(len(stream)):
        pieces += reader.feed(stream[i:i + 1])
    assert pieces == whole == [rsp.Event(Kind.CORRUPT, detail="packet too long"),
                               rsp.Event(Kind.PACKET, b"c"),
                               rsp.Event(Kind.PACKET, b"?")]
