"""Hostile gdb clients: random packets and random bytes on the wire. Every packet gets a
well-formed reply (an error for nonsense), and afterwards the connection still answers
and the machine still ends as a machine should."""

from __future__ import annotations

import pytest
from fuzzscale import examples
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_gdbstub import RawClient, handshake, served

from emu.debugger import rsp
from emu.debugger.rsp import Kind, PacketReader

# Every packet name the stub knows (and some it does not), except those that resume,
# kill or detach: a fuzzed client that asks the machine to run gets it to run.
NAMES = ["?", "g", "G", "p", "P", "m", "M", "X", "Z0,", "Z1,", "Z2,", "Z3,", "Z4,", "Z9,",
         "z0,", "z2,", "H", "Hg", "Hc", "T", "b", "qSupported:", "qC", "qfThreadInfo",
         "qsThreadInfo", "qThreadExtraInfo,", "qAttached", "qSymbol::", "qTStatus",
         "qXfer:features:read:target.xml:", "qXfer:features:read:", "qXfer:", "qRcmd,",
         "QStartNoAckMode", "vCont?", "vMustReplyEmpty", "vFile:open:", "qOffsets", "!",
         "J", "qRcmd,77616c6b20", "m7ffffffdf000,", "M7ffffffdfff0,",
         # multiprocess thread ids, the thread and library lists
         "Hgp", "Hgp4.", "Hcp", "Tp", "Tp4.", "qThreadExtraInfo,p", "qThreadExtraInfo,p4.",
         "qXfer:threads:read::", "qXfer:threads:read:", "qXfer:libraries:read::",
         "qXfer:libraries:read:", "qXfer:libraries:write::", "qSupported:multiprocess+;"]
RESUMING = (b"c", b"C", b"s", b"S", b"k", b"D", b"vCont;", b"vKill", b"bs", b"bc")
HEXISH = st.text("0123456789abcdefABCDEF,:;=-xyz}#$*", max_size=40)
ARGS = st.one_of(HEXISH, st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                 st.integers(0, 2**64 - 1).map(lambda n: f"{n:x},{n % 64:x}"),
                 st.integers(0, 2**64 - 1).map(lambda n: f"{n:x}={n:016x}"))
PACKET = st.builds(lambda name, args: (name + args).encode("latin-1"),
                   st.sampled_from(NAMES), ARGS)


def handshake_features(c: RawClient) -> None:
    """gdb's own qSupported again, after fuzzed ones."""
    c.cmd("qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+")


def resumes(payload: bytes) -> bool:
    return payload.startswith(RESUMING)


def well_formed_reply(c: RawClient) -> bytes:
    """The next reply (RawClient checks its framing and checksum)."""
    reply = c.reply()
    if reply[:1] == b"E":
        assert len(reply) == 3 and int(reply[1:], 16) >= 0, reply
    return reply


@pytest.mark.fuzz
def test_random_packets_get_replies_and_break_nothing() -> None:
    with served(("hello", [])) as s:
        c = s.client
        handshake(c)
        entry_reply = c.cmd("?")

        @settings(max_examples=examples(150), deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(packets=st.lists(PACKET, min_size=1, max_size=6))
        def check(packets: list[bytes]) -> None:
            for payload in packets:
                assume(not resumes(payload))
            for payload in packets:
                c.send(payload)
                well_formed_reply(c)
            handshake_features(c)                              # in case one was fuzzed
            assert c.cmd("?") == entry_reply                   # still stopped, still there
            assert c.cmd("qC") == b"QC10"

        check()
        c.send(b"k")                                          # guest state may be garbled now
        assert s.finish().stopped == "killed"


def safe_stream(data: bytes) -> bool:
    """Whether no complete packet in ``data`` would run, kill or detach the machine."""
    events = PacketReader().feed(data + b"#00")
    return not any(e.kind is Kind.PACKET and resumes(e.payload) for e in events)


FRAGMENTS = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"$", b"#", b"}", b"*", b"+", b"-", b"\x03", b"$#00", b"##", b"}}"]),
    PACKET.map(rsp.frame),                                    # valid packets among the noise
    PACKET.map(lambda p: rsp.frame(p)[:-2] + b"zz"),          # bad checksum digits
    PACKET.map(lambda p: rsp.frame(p)[:-1]),                  # cut short
    st.integers(1, 50_000).map(lambda n: b"n" * n),           # long noise between packets
    st.binary(min_size=1, max_size=4).map(                    # a packet over PacketSize
        lambda b: b"$" + (b.translate(None, b"$#") or b"a") * (rsp.MAX_PACKET + 1) + b"#00"),
)
PROBE = b"qThreadExtraInfo,pc.10"
PROBE_REPLY = rsp.hex_text("pid 12 hello, tid 16, running, ring 3")


@pytest.mark.fuzz
def test_random_bytes_on_the_wire_leave_the_connection_working() -> None:
    with served(("hello", [])) as s:
        c = s.client
        handshake(c)

        @settings(max_examples=examples(100), deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(chunks=st.lists(FRAGMENTS, min_size=1, max_size=8))
        def check(chunks: list[bytes]) -> None:
            data = b"".join(chunks)
            assume(safe_stream(data))
            c.send_raw(data + b"#00")                         # ends any packet left open
            c.send(PROBE)
            for _ in range(len(chunks) * 4 + 4):              # replies to what got through
                if well_formed_reply(c) == PROBE_REPLY:
                    break
            else:
                raise AssertionError("the probe was never answered")
            handshake_features(c)
            assert c.cmd("?") == b"T05thread:10;"

        check()
        assert c.cmd("c") == b"W00"                           # guest untouched: it just runs
        s.finish()
        assert s.machine.processes[0].output == b"Hello, world!\n"


@pytest.mark.fuzz
@settings(max_examples=examples(300), deadline=None)
@given(payloads=st.lists(st.binary(max_size=60), max_size=5),
       noise=st.binary(max_size=60), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_reader_loses_no_byte_however_the_stream_is_cut(payloads: list[bytes], noise: bytes,
                                                        cuts: list[int]) -> None:
    """Framed packets come out whole, in order, whatever the read boundaries; noise before
    them gives the same events whether it arrives in one read or in pieces."""
    stream = noise + b"#00" + b"".join(rsp.frame(p) for p in payloads)
    whole = PacketReader().feed(stream)
    pieces, reader, last = [], PacketReader(), 0
    for cut in sorted(set(min(c, len(stream)) for c in cuts)) + [len(stream)]:
        pieces += reader.feed(stream[last:cut])
        last = cut
    assert pieces == whole
    packets = [e.payload for e in whole if e.kind is Kind.PACKET]
    assert packets[len(packets) - len(payloads):] == payloads
