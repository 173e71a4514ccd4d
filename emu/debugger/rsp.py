"""The gdb Remote Serial Protocol on the wire: packets, checksums, escapes, acks, Ctrl-C.

A packet is ``$payload#cs``: ``cs`` is two hex digits, the sum of the payload's bytes
modulo 256. In binary payloads ``$``, ``#``, ``}`` and ``*`` travel as ``}`` followed by
the byte XOR 0x20. The receiver answers ``+`` (good) or ``-`` (send it again) until both
sides agree on ``QStartNoAckMode``. A lone byte 0x03 outside a packet is Ctrl-C.
(GDB manual, appendix E "Remote Serial Protocol", sections "Overview" and "Packet
Acknowledgment".)

``PacketReader`` turns a byte stream into these events without ever losing a byte: whatever
follows a packet in the same read stays buffered for the next one.
"""

from __future__ import annotations

import enum
import ipaddress
import queue
import re
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

ESCAPE = 0x7D          # '}'
ESCAPE_XOR = 0x20
NEEDS_ESCAPE = frozenset(b"$#}*")
INTERRUPT_BYTE = 0x03  # Ctrl-C while the target runs
ACK, NAK = b"+", b"-"
MAX_PACKET = 0x4000    # payload bytes we accept; longer packets are refused, not buffered
MAX_QUEUED = 256       # events received but not yet taken before the reader stops reading
MAX_ACKS = 64          # acks kept for a sender to wait on; more are stale noise


class ProtocolError(ValueError):
    """A packet we cannot parse: the stub answers it with an ``Exx`` error reply."""


class Kind(enum.Enum):
    """What the reader found in the byte stream."""

    PACKET = "packet"          # a well-formed packet (payload unescaped)
    CORRUPT = "corrupt"        # bad checksum, bad checksum digits, or too long
    ACK = "ack"                # '+'
    NAK = "nak"                # '-'
    INTERRUPT = "interrupt"    # 0x03 outside a packet
    DISCONNECTED = "disconnected"   # the client has gone (end of the stream)


CONTROL_KINDS = {ACK[0]: Kind.ACK, NAK[0]: Kind.NAK, INTERRUPT_BYTE: Kind.INTERRUPT}
_CONTROL = re.compile(rb"[$+\-\x03]")    # what can start an event; anything else is noise
_PACKET_END = re.compile(rb"[$#]")


@dataclass(frozen=True)
class Event:
    """One thing received: a packet's payload, or a single control byte."""

    kind: Kind
    payload: bytes = b""
    detail: str = ""


def checksum(data: bytes) -> int:
    """The RSP checksum: the modulo-256 sum of the bytes between ``$`` and ``#``."""
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape ``$ # } *`` as ``}`` + (byte ^ 0x20), as binary replies need."""
    out = bytearray()
    for b in data:
        if b in NEEDS_ESCAPE:
            out += bytes((ESCAPE, b ^ ESCAPE_XOR))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo ``escape``; a trailing lone ``}`` is a ProtocolError."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                raise ProtocolError("escape character at the end of the packet")
            out.append(nxt ^ ESCAPE_XOR)
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """``$escaped-payload#cs``: a packet ready for the wire."""
    body = escape(payload)
    return b"$" + body + b"#" + f"{checksum(body):02x}".encode()


class PacketReader:
    """Splits a byte stream into RSP events; keeps partial packets across ``feed`` calls.

    Work and memory are bounded whatever arrives: noise between packets is skipped in one
    search, and a packet longer than ``max_packet`` is refused as soon as it is, its rest
    skipped up to its ``#cs`` (or a new ``$``) so that none of its bytes is read as an
    ack or a Ctrl-C."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buf = bytearray()
        self._max = max_packet
        self._skipping = False      # inside a refused packet, up to its '#cs'

    def feed(self, data: bytes) -> list[Event]:
        """Add received bytes; return the complete events they finish, in order."""
        self._buf += data
        events: list[Event] = []
        while (event := self._next_event()) is not None:
            events.append(event)
        return events

    def _next_event(self) -> Event | None:
        """The first event at the front of the buffer, consumed; None if there is none
        yet. Noise between packets is dropped."""
        while self._buf:
            if self._skipping:
                if not self._skip_refused():
                    return None
                continue
            start = _CONTROL.search(self._buf)
            if start is None:                   # all noise
                self._buf.clear()
                return None
            del self._buf[:start.start()]
            first = self._buf[0]
            if first == ord("$"):
                return self._packet()
            del self._buf[0]
            return Event(CONTROL_KINDS[first])
        return None

    def _skip_refused(self) -> bool:
        """Drop the rest of a refused packet: True once it is all gone."""
        end = _PACKET_END.search(self._buf)
        if end is None:
            self._buf.clear()
            return False
        if self._buf[end.start()] == ord("$"):         # a new packet: the old one was cut
            del self._buf[:end.start()]
        elif len(self._buf) < end.start() + 3:          # '#' but not yet its two digits
            del self._buf[:end.start()]
            return False
        else:
            del self._buf[:end.start() + 3]
        self._skipping = False
        return True

    def _packet(self) -> Event | None:
        """Parse ``$...#cs`` at the front of the buffer (the buffer starts with ``$``). A
        body longer than the maximum is refused as soon as its first byte too many is
        there, whatever follows: the same events however the stream is cut into reads."""
        end = self._buf.find(b"#", 0, self._max + 2)
        if end < 0:
            if len(self._buf) > self._max + 1:
                del self._buf[:self._max + 2]
                self._skipping = True
                return Event(Kind.CORRUPT, detail="packet too long")
            return None
        if len(self._buf) < end + 3:
            return None
        body = bytes(self._buf[1:end])
        digits = bytes(self._buf[end + 1:end + 3])
        del self._buf[:end + 3]
        try:
            expected = int(digits, 16)
        except ValueError:
            return Event(Kind.CORRUPT, detail=f"bad checksum digits {digits!r}")
        if expected != checksum(body):
            return Event(Kind.CORRUPT, detail=f"checksum {digits.decode('latin-1')} "
                                              f"should be {checksum(body):02x}")
        try:
            return Event(Kind.PACKET, unescape(body))
        except ProtocolError as err:
            return Event(Kind.CORRUPT, detail=str(err))


# -- hex fields in packets -------------------------------------------------------------------

def parse_hex(text: bytes | str, what: str = "number") -> int:
    """A hex field of a packet (``1f``, ``-1`` for thread ids): ProtocolError if malformed."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    digits = text[1:] if text.startswith("-") else text
    if not digits or len(digits) > 32 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ProtocolError(f"bad {what} {text!r}")
    value = int(digits, 16)
    return -value if text.startswith("-") else value


def parse_hex_bytes(text: bytes | str) -> bytes:
    """Hex-encoded bytes (``48656c6c6f``): ProtocolError if malformed or odd-length."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if len(text) % 2 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ProtocolError(f"bad hex data {text[:20]!r}")
    return bytes.fromhex(text)


def hex_text(text: str) -> bytes:
    """Text as RSP hex (what ``O`` console packets and qThreadExtraInfo carry)."""
    return text.encode("utf-8", "replace").hex().encode()


# -- packet dispatch ---------------------------------------------------------------------------

Handler = Callable[[Any, bytes], Any]   # (stub, arguments) -> reply bytes, or a resume action
PACKETS: dict[str, Handler] = {}      # by the packet's first character
QUERIES: dict[str, Handler] = {}      # q/Q packets by name ("qSupported")
V_PACKETS: dict[str, Handler] = {}    # v packets by name ("vCont?", "vCont", "vKill")


def packet(table: dict[str, Handler], name: str) -> Callable[[Handler], Handler]:
    """Register a handler in one of the tables above."""
    def register(fn: Handler) -> Handler:
        table[name] = fn
        return fn
    return register


def handler_for(payload: bytes) -> tuple[Handler | None, bytes]:
    """The handler of a (non-empty) packet, if any, and the packet's arguments."""
    first = chr(payload[0])
    if first in "qQ":
        name = payload.split(b":", 1)[0].split(b",", 1)[0].decode("latin-1")
        return QUERIES.get(name), payload[len(name) + 1:]
    if first == "v":
        name = payload.split(b";", 1)[0].split(b":", 1)[0].decode("latin-1")
        return V_PACKETS.get(name), payload[len(name):]
    return PACKETS.get(first), payload[1:]


# -- one client on a socket ------------------------------------------------------------------

ACK_TIMEOUT = 10.0     # seconds to wait for '+' after a packet before calling the client gone
RESENDS = 3            # times a packet is sent again after '-'
DISCONNECTED = Event(Kind.DISCONNECTED)


class Connection:
    """One client on ``sock``. A reader thread turns its bytes into events, in order, for
    ``next_event``, and acknowledges packets until no-ack mode; Ctrl-C goes to
    ``on_interrupt`` (called from the reader thread), which either acts on it or queues it
    with ``push_interrupt``. ``send`` frames a reply and, in ack mode, waits for its ``+``."""

    def __init__(self, sock: socket.socket, on_interrupt: Callable[[], None],
                 log: TextIO | None = None) -> None:
        self.sock = sock
        self.ack_mode = True
        self.connected = True
        self._on_interrupt = on_interrupt
        self._log = log
        self._reader = PacketReader()
        self._events: deque[Event] = deque()
        self._ready = threading.Condition()
        self._acks: queue.Queue[Event] = queue.Queue(MAX_ACKS)
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._read_loop, name="gdb-rsp-reader",
                                        daemon=True)

    def start(self) -> None:
        """Start reading (once whoever handles Ctrl-C is ready for it)."""
        self._thread.start()

    def _read_loop(self) -> None:
        """The reader thread: until the client goes, parse what it sends. Whatever ends it,
        the client counts as gone, so that nobody waits for it forever."""
        try:
            while self._room_for_more():
                try:
                    data = self.sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    break
                for event in self._reader.feed(data):
                    self._dispatch(event)
        finally:
            self.connected = False
            self._push(DISCONNECTED)
            self._put_ack(DISCONNECTED)

    def _room_for_more(self) -> bool:
        """Wait (not reading: the client's sends block) while MAX_QUEUED events wait to
        be taken; False once the connection is closed."""
        with self._ready:
            while len(self._events) >= MAX_QUEUED and self.connected:
                self._ready.wait()
        return self.connected

    def _put_ack(self, event: Event) -> None:
        """Hand an ack (or the end) to a sender; acks beyond MAX_ACKS are stale: dropped."""
        while True:
            try:
                self._acks.put_nowait(event)
                return
            except queue.Full:
                if event.kind is not Kind.DISCONNECTED:
                    return
            try:                                # the end must get in: make room
                self._acks.get_nowait()
            except queue.Empty:
                pass

    def _dispatch(self, event: Event) -> None:
        if event.kind in (Kind.ACK, Kind.NAK):
            self._put_ack(event)
        elif event.kind is Kind.INTERRUPT:
            self._trace("<- ^C")
            self._on_interrupt()
        else:
            if self.ack_mode:
                self._write(ACK if event.kind is Kind.PACKET else NAK)
                if event.payload == b"QStartNoAckMode":
                    self.ack_mode = False       # its own '+' was the last one
            self._trace(f"<- {event.payload[:200]!r}" if event.kind is Kind.PACKET
                        else f"<- corrupt packet: {event.detail}")
            self._push(event)

    def _push(self, event: Event) -> None:
        with self._ready:
            self._events.append(event)
            self._ready.notify_all()

    def push_interrupt(self) -> None:
        """Queue a Ctrl-C in its place among the packets (for ``pop_interrupt``)."""
        self._push(Event(Kind.INTERRUPT))

    def pop_interrupt(self) -> bool:
        """Take a Ctrl-C from the front of the queue: True if there was one."""
        with self._ready:
            if self._events and self._events[0].kind is Kind.INTERRUPT:
                self._events.popleft()
                self._ready.notify_all()
                return True
        return False

    def next_event(self) -> Event:
        """The next event in order; DISCONNECTED once the client has gone."""
        with self._ready:
            while not self._events:
                if not self.connected:
                    return DISCONNECTED
                self._ready.wait()
            self._ready.notify_all()            # the reader may wait for room
            return self._events.popleft()

    def send(self, payload: bytes) -> bool:
        """Send one packet (again on '-'); False if the client is gone or never acks."""
        packet = frame(payload)
        self._trace(f"-> {payload[:200]!r}")
        for _ in range(RESENDS + 1):
            if not self._drop_stale_acks() or not self._write(packet):
                return False
            if not self.ack_mode:
                return True
            try:
                ack = self._acks.get(timeout=ACK_TIMEOUT)
            except queue.Empty:
                break
            if ack.kind is Kind.ACK:
                return True
            if ack.kind is Kind.DISCONNECTED:
                return False
        self.close()
        return False

    def _drop_stale_acks(self) -> bool:
        """Forget acks nobody waited for (around no-ack mode); False if the client has gone."""
        while True:
            try:
                ack = self._acks.get_nowait()
            except queue.Empty:
                return self.connected
            if ack.kind is Kind.DISCONNECTED:
                return False

    def _write(self, data: bytes) -> bool:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                self.connected = False
                return False
        return True

    def _trace(self, text: str) -> None:
        if self._log is not None:
            self._log.write(f"gdb {text}\n")

    def close(self) -> None:
        """Hang up (the reader thread sees the end and stops)."""
        self.connected = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._push(DISCONNECTED)


# -- listening -------------------------------------------------------------------------------

class GdbServerError(Exception):
    """The stub cannot start (bad address, port in use, no client): one line for the user."""


def check_host(host: str, allow_remote: bool = False) -> None:
    """GdbServerError unless ``host`` is a loopback address (or remote ones are allowed)."""
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise GdbServerError(f"gdb stub: {host!r} is not an IP address") from None
    if not loopback:
        raise GdbServerError(f"gdb stub: refusing to listen on {host}, which is not a "
                             "loopback address (whoever reaches it controls the machine)")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` -> (host, port), host 127.0.0.1 by default; GdbServerError
    if malformed."""
    host, _, port = text.strip().rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise GdbServerError(f"gdb stub: bad address {text!r} (expected HOST:PORT or PORT)")
    return host.strip("[]") or "127.0.0.1", int(port)


def listen(host: str, port: int, *, allow_remote: bool = False) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one)."""
    check_host(host, allow_remote)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as err:
        why = str(err.strerror or err).split(" (while")[0]
        raise GdbServerError(f"gdb stub: cannot listen on {host}:{port}: {why}") from None


def accept(listener: socket.socket, timeout: float | None = None) -> socket.socket:
    """Wait for one client, then stop listening; GdbServerError after ``timeout`` seconds."""
    listener.settimeout(timeout)
    try:
        sock, _ = listener.accept()
    except TimeoutError:
        raise GdbServerError(f"gdb stub: no gdb connected within {timeout:g} s") from None
    finally:
        listener.close()
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
