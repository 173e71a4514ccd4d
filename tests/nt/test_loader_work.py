"""Loading is linear in the file: generated images with thousands of program headers are
loaded or refused with work proportional to their size.

Work is counted, not timed: the Python calls the loader makes (sys.setprofile) and the
bytes it copies out of the file (slices of a bytes subclass that counts them).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from emu.nt.loader import LoaderError, parse_image

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr
PHDR = struct.Struct("<IIQQQQQQ")           # Elf64_Phdr
PT_LOAD, PF_R, PF_W = 1, 4, 2
ROOT = Path(__file__).resolve().parents[2] / "guest" / "build"


class CountingBytes(bytes):
    """bytes that count what slicing and indexing copy out of them."""

    copied = 0
    indexed = 0

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if isinstance(key, slice):
            CountingBytes.copied += len(out)
        else:
            CountingBytes.indexed += 1
        return out


def with_extra_loads(data: bytes, n: int, va: int, filesz: int = 0, memsz: int = 4096,
                     offset: int = 0, step: int | None = None) -> bytes:
    """``data`` with its program headers moved to the end of the file and ``n`` more PT_LOAD
    segments of ``memsz`` bytes each, ``step`` (default ``memsz``) apart from ``va`` up."""
    step = memsz if step is None else step
    e = list(EHDR.unpack_from(data))
    phoff, phentsize, phnum = e[5], e[9], e[10]
    old = data[phoff:phoff + phnum * phentsize]
    extra = b"".join(PHDR.pack(PT_LOAD, PF_R | PF_W, offset, va + i * step, 0, filesz, memsz,
                               4096) for i in range(n))
    table = old + extra
    out = bytearray(data) + bytes(-len(data) % 8)
    e[5], e[10] = len(out), phnum + n
    out += table
    EHDR.pack_into(out, 0, *e)
    return bytes(out)


def work(load, data: bytes) -> tuple[int, int]:
    """(Python calls, bytes copied by slicing) of ``load(data)``, which may refuse it."""
    calls = 0

    def profile(_frame, event, _arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    CountingBytes.copied = 0
    sys.setprofile(profile)
    try:
        load(CountingBytes(data))
    except LoaderError:
        pass
    finally:
        sys.setprofile(None)
    return calls, CountingBytes.copied


def test_thousands_of_program_headers_cost_linear_work(apps):
    hello = (apps / "hello").read_bytes()
    small = with_extra_loads(hello, 1000, 0x1000_0000)
    large = with_extra_loads(hello, 8000, 0x1000_0000)
    assert len(parse_image(large).segments) >= 8000       # they are all loaded
    calls_small, copied_small = work(parse_image, small)
    calls_large, copied_large = work(parse_image, large)
    # 8x the headers: about 8x the calls (quadratic would be 64x) ...
    assert calls_large < 10 * calls_small, (calls_small, calls_large)
    # ... and the file is copied a bounded number of times, not once per header.
    assert copied_large < 4 * len(large), (copied_large, len(large))


def test_an_image_too_large_is_refused_after_linear_work(apps):
    hello = (apps / "hello").read_bytes()
    # Segments of 1 MiB: past the 1 GiB image limit at segment 1,024 either way.
    small = with_extra_loads(hello, 4000, 0x1000_0000, memsz=1 << 20)
    large = with_extra_loads(hello, 32000, 0x1000_0000, memsz=1 << 20)
    with pytest.raises(LoaderError, match="image larger than 1024 MiB"):
        parse_image(large)
    calls_small, _ = work(parse_image, small)
    calls_large, copied = work(parse_image, large)
    assert calls_large < 10 * calls_small, (calls_small, calls_large)
    assert copied < 4 * len(large), (copied, len(large))
