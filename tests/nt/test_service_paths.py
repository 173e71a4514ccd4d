"""The path form NtOpenFile and NtCreateProcess accept, a new process's empty handle table,
and the argument string NtCreateProcess splits (docs/abi.md, "Paths")."""

from __future__ import annotations

import pytest
from guestcalls import DATA, OUTV, Call, run

from emu.nt.status import NTSTATUS
from emu.nt.syscalls import Service as S

PATH, ARGS = DATA + 0x800, DATA + 0xC00
OK, NOT_FOUND = 0, NTSTATUS.STATUS_OBJECT_NAME_NOT_FOUND
INVALID = NTSTATUS.STATUS_OBJECT_NAME_INVALID


@pytest.mark.parametrize("path, status", [
    (b"hello", OK), (b"/hello", OK), (b"//hello", OK), (b"./hello", OK),
    (b"/" * 1018 + b"hello", OK),                         # 1023 bytes: the longest
    (b"/" * 1019 + b"hello", INVALID),                    # 1024 bytes before the NUL
    (b"", NOT_FOUND), (b"/", NOT_FOUND), (b".", NOT_FOUND),  # the root is a folder
    (b"HELLO", NOT_FOUND),                                # case-sensitive
    (b"\\hello", NOT_FOUND), (b"../hello", NOT_FOUND),    # no backslash; stays inside
    (b"../apps/hello", OK),                               # .. leaves and comes back in
    (b"\\Device\\Console", OK), (b"\\Device\\console", NOT_FOUND),
    (b"\\Device\\Ticket", OK), (b"\\Device\\Nothing", NOT_FOUND),
    (b"\\Device\\hello", NOT_FOUND),                      # a device name, never a file
    (b"a" * 1023, NOT_FOUND),               # a name longer than the host allows (NAME_MAX)
], ids=lambda v: v.decode()[:24] if isinstance(v, bytes) else hex(v))
def test_nt_open_file_paths(machine_factory, path, status):
    _, proc, results, _ = run(machine_factory, [Call(S.NtOpenFile, (PATH, OUTV))],
                              plant={PATH: path + b"\0"})
    assert results[7] == status
    assert len(proc.handles) == 6 + (status == OK)


@pytest.mark.parametrize("path, status", [
    (b"/hello", OK), (b"/" * 1019 + b"hello", INVALID), (b"HELLO", NOT_FOUND),
    (b"\\Device\\Console", NOT_FOUND), (b"a" * 1023, NOT_FOUND)])
def test_nt_create_process_paths(machine_factory, path, status):
    m, _, results, _ = run(machine_factory, [Call(S.NtCreateProcess, (PATH, 0, OUTV))],
                           plant={PATH: path + b"\0"})
    assert results[7] == status
    assert len(m.executive.processes) == 1 + (status == OK)


def test_a_new_process_starts_with_no_handles(machine_factory):
    """The child's first handle is 4 although its creator holds six, and the creator's handle
    8 names nothing in it; its arguments are split at runs of blanks and tabs."""
    m, _, results, _ = run(machine_factory, [Call(S.NtCreateProcess, (PATH, ARGS, OUTV))],
                           plant={PATH: b"handles\0", ARGS: b" \t8 \0"})
    assert results[7] == OK
    child = m.executive.processes[1]
    assert child.args == ["8"]
    assert child.output.decode().splitlines() == [
        "event handle 4", "duplicate 8", "close again 0xc0000008", "wait closed 0xc0000008",
        "foreign 0xc0000008"]


def test_an_argument_string_too_long_is_refused(machine_factory):
    m, _, results, _ = run(machine_factory, [Call(S.NtCreateProcess, (PATH, ARGS, OUTV))],
                           plant={PATH: b"hello\0", ARGS: b"a" * 1024 + b"\0"})
    assert results[7] == NTSTATUS.STATUS_INVALID_PARAMETER
    assert len(m.executive.processes) == 1
