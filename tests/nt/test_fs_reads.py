"""The guest file system reads at most 64 MiB + 1 byte of a file, whatever its size claims."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emu.nt import fs
from emu.nt.fs import GuestFileNotFound, GuestFileSystem


def test_a_file_larger_than_its_reported_size_is_bounded(monkeypatch):
    # procfs reports st_size 0 for /proc/self/status, which holds more than 64 bytes: the
    # limit must hold on the bytes read, not on the size the file claims.
    monkeypatch.setattr(fs, "MAX_FILE", 64)
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(GuestFileNotFound):
        GuestFileSystem("/proc").read("self/status")


def test_a_file_at_the_limit_is_read_whole(monkeypatch, tmp_path):
    (tmp_path / "exact").write_bytes(b"x" * 64)
    (tmp_path / "over").write_bytes(b"x" * 65)
    monkeypatch.setattr(fs, "MAX_FILE", 64)
    files = GuestFileSystem(tmp_path)
    assert files.read("exact") == b"x" * 64
    with pytest.raises(GuestFileNotFound):
        files.read("over")


def test_a_procfs_file_read_in_pieces_is_read_whole():
    # /proc/crypto answers a read with at most a page: every piece must be read.
    whole = Path("/proc/crypto").read_bytes()
    assert len(whole) > 2 * 4096
    assert GuestFileSystem("/proc").read("crypto") == whole


def test_a_fifo_is_not_a_file(tmp_path):
    os.mkfifo(tmp_path / "pipe")                 # no writer: reading it would wait forever
    with pytest.raises(GuestFileNotFound):
        GuestFileSystem(tmp_path).read("pipe")


def test_the_guest_sees_a_huge_procfs_file_as_absent(machine_factory, apps):
    # /proc/self/pagemap claims 0 bytes and holds 8 for every page of the address space
    # (256 GiB): the guest is told there is no such file, after 64 MiB + 1 byte are read.
    m = machine_factory(fs_root="/proc")
    reader = m.spawn(apps / "reader", ["self/pagemap"])
    m.run()
    assert reader.output.decode().splitlines() == ["open failed 0xc0000034"]
    assert reader.exit_status == 1


def test_the_guest_reads_a_procfs_file_whole(machine_factory, apps):
    whole = Path("/proc/crypto").read_bytes()
    m = machine_factory(fs_root="/proc")
    reader = m.spawn(apps / "reader", ["crypto"])
    m.run()
    assert reader.output.decode().splitlines()[:2] == [f"read {len(whole)} bytes",
                                                      f"sum {sum(whole)}"]
