"""The 32-bit library (guest/lib32) covers every service the 64-bit one (guest/lib) does, and
a 32-bit app gets the same results from them through int 0x2e."""

from __future__ import annotations

import re
from pathlib import Path

import emurun

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "guest"
STUB = re.compile(r"^SYSCALL_STUB7? +(\w+), +(SVC_\w+)$", re.MULTILINE)


def stubs(path: Path) -> list[tuple[str, str]]:
    return STUB.findall(path.read_text())


def test_every_64_bit_stub_has_a_32_bit_twin():
    assert stubs(GUEST / "lib32" / "syscall.S") == stubs(GUEST / "lib" / "syscall.S")


def test_every_service_in_the_header_has_a_stub():
    header = (GUEST / "include" / "emu" / "syscall.h").read_text()
    numbers = set(re.findall(r"^#define (SVC_\w+) ", header, re.MULTILINE))
    assert {number for _, number in stubs(GUEST / "lib32" / "syscall.S")} == numbers


def emu(*args):
    """``python -m emu run ARGS``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu("run", *args, cwd=ROOT, timeout=120)


def test_a_32_bit_app_uses_the_services(apps):
    r = emu(apps / "services32")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines() == [
        "allocate: 0x00000000",
        "protect: 0x00000000",
        "old protection: 0x4",                      # PAGE_READWRITE
        "free: 0x00000000",                         # NtFreeVirtualMemory, MEM_RELEASE
        "query: 0x00000000",
        "state after free: 0x10000",                # MEM_FREE
        "top-down: 0x00000000",                     # MEM_TOP_DOWN from <emu/syscall.h>
        "top-down above bottom-up: yes",
        "yield: 0x00000000",                        # NtYieldExecution
        "delay: 0x00000000",
        "event: 0x00000000",
        "set: 0x00000000",
        "wait event: 0x00000000",
        "reset: 0x00000000",
        "wait reset event: 0x00000102",             # STATUS_TIMEOUT: polled, not signalled
        "thread: 0x00000000",
        "wait thread: 0x00000000",
        "exit status: 0x00000000",
        "thread returned 42, thread id nonzero: yes",
        "duplicate: 0x00000000",
        "close: 0x00000000",
        "open: 0x00000000",
        "read: 0x00000000",
        "read 4 bytes: ELF",
        "open console: 0x00000000",
        "written",
        "write: 0x00000000",
    ]


def test_a_32_bit_app_passes_the_seventh_argument_of_an_ioctl(apps):
    r = emu("--driver", apps.parent / "drivers" / "ioctl.sys", apps / "services32", "ioctl")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines() == ["open device: 0x00000000", "ioctl: 0x00000000",
                                     "ioctl: desserts (8 bytes)"]
