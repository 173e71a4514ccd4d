"""Hostile crash dumps: a real dump with its header fields changed, its length field
changed, cut short, or its compressed RAM garbled. Each is refused in one line
(``FILE: not a crash dump: WHY``) or opens and answers every state command; never a
Python exception, and never unbounded work (the sizes a dump declares are checked
before they are used)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from dumpcase import crash_dump, parts
from fuzzscale import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.debugger.dumptarget import DumpTarget
from emu.debugger.shell import Shell
from emu.nt import dump

COMMANDS = ["analyze", "ps", "registers", "lm", "irql", "irp", "check", "bt", "threads",
            "info gdt", "info tss", "info cr", "x/4gx $rsp", "disas $rip", "walk $rip",
            "vtop $rsp", "pfn 1", "tlb"]
PID_COMMANDS = ["vmmap {}", "process {}", "handles {}", "threads {}", "walk -p {} 0x400000"]

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
              st.sampled_from([0, 1, 4, 4096, 1 << 47, 1 << 48, (1 << 64) - 1, 1 << 64,
                               -1, 64 << 30, (64 << 30) + 4096]),
              st.text(max_size=8), st.floats(allow_nan=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


@pytest.fixture(scope="module")
def real_dump(tmp_path_factory, apps) -> tuple[dict, bytes]:
    """The header and compressed RAM of a crash dump of a small machine."""
    return parts(crash_dump(apps, tmp_path_factory.mktemp("dump")))


def paths(node, prefix=()) -> list[tuple]:
    """Every place in a JSON tree (the long lists: only their first few items)."""
    out = [prefix]
    items = node.items() if isinstance(node, dict) else \
        enumerate(node[:3]) if isinstance(node, list) else ()
    for key, child in items:
        out += paths(child, (*prefix, key))
    return out


def mutate(meta: dict, where: tuple, value, delete: bool):
    """A copy of ``meta`` with the value at ``where`` replaced (or its key deleted); as it
    was if an earlier mutation took ``where`` away."""
    if not where:
        return value
    copy = json.loads(json.dumps(meta))
    node = copy
    try:
        for key in where[:-1]:
            node = node[key]
        if delete and isinstance(node, dict):
            del node[where[-1]]
        else:
            node[where[-1]] = value
    except (KeyError, IndexError, TypeError):
        return meta
    return copy


def frame(meta, ram: bytes, length: int | None = None) -> bytes:
    text = json.dumps(meta).encode()
    return dump.MAGIC + struct.pack("<Q", len(text) if length is None else length) + text + ram


def open_or_refuse(path: Path) -> None:
    """Refused in one line, or a session whose every state command answers."""
    try:
        d = dump.read(path)
    except dump.DumpError as err:
        text = str(err)
        assert "\n" not in text and text.startswith(f"{path}: not a crash dump: "), text
        return
    target = DumpTarget(d)
    target.bugcheck()                                     # what `emu debug` prints first
    out = io.StringIO()
    shell = Shell(target, stdout=out)
    pids = [p["pid"] for p in d.header["processes"]][:2]
    for line in COMMANDS + [c.format(pid) for pid in pids for c in PID_COMMANDS]:
        out.seek(0)
        out.truncate()
        shell.onecmd(line)
        text = out.getvalue()
        assert "internal error" not in text and "Traceback" not in text, (line, text)


MUTATIONS = st.one_of(
    st.tuples(st.just("field"), st.integers(0, 1 << 30), JSON, st.booleans()),
    st.tuples(st.just("cut"), st.integers(0, 1 << 30), st.none(), st.booleans()),
    st.tuples(st.just("ram"), st.integers(0, 1 << 30), st.binary(min_size=1, max_size=8),
              st.booleans()),
    st.tuples(st.just("length"), st.integers(0, 1 << 30), st.integers(0, (1 << 64) - 1),
              st.booleans()),
)


@pytest.mark.fuzz
def test_a_mutated_dump_is_refused_in_one_line_or_opens(real_dump, tmp_path):
    meta, ram = real_dump
    places = paths(meta)
    target = tmp_path / "fuzz.dmp"

    @settings(max_examples=examples(60), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
    def check(mutations: list) -> None:
        header, compressed, length, cut = meta, ram, None, None
        for kind, n, value, flag in mutations:
            if kind == "field":
                header = mutate(header, places[n % len(places)], value, flag)
            elif kind == "ram":
                at = n % len(compressed)
                compressed = compressed[:at] + value + compressed[at + len(value):]
            elif kind == "length":
                length = value if flag else value % (1 << 20)
            else:
                cut = n
        data = frame(header, compressed, length)
        target.write_bytes(data if cut is None else data[:cut % len(data)])
        open_or_refuse(target)

    check()
