"""Mutated real images: the loaders either accept them or refuse them with one line.

Never a Python exception of another kind, never a hang (issue: hostile input). Bounded
here; longer campaigns can raise max_examples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzzscale import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.nt import layout, pe
from emu.nt.loader import LoaderError, parse_image

ROOT = Path(__file__).resolve().parents[2] / "guest" / "build"
SAMPLES = ["apps/hello", "apps/hello-pie", "apps/hello32", "drivers/hello.sys",
           "drivers/pehello.sys", "drivers/pereloc.sys"]


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for where, value in edits:
        if where < len(out):
            out[where] = value
    return bytes(out[:cut] if cut is not None else out)


# Most edits land in the headers, where the loader's decisions are made.
EDITS = st.lists(st.tuples(st.one_of(st.integers(0, 255), st.integers(0, 8191)),
                           st.integers(0, 255)), min_size=1, max_size=8)
CUT = st.one_of(st.none(), st.integers(0, 8192))


# A PE sample can take over 5 s on this 2-core machine: pefile parses the directories the
# loader reads in each of the 150 mutated images, a garbled import table to pefile's limits.
@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.fuzz
@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(edits=EDITS, cut=CUT)
def test_a_mutated_image_is_loaded_or_refused_in_one_line(apps, sample, edits, cut):
    path = ROOT / sample
    if not path.exists():
        pytest.skip(f"{sample} not built")
    data = mutate(path.read_bytes(), edits, cut)
    try:
        if sample.endswith(".sys"):                 # every driver is a PE image
            pe.parse_pe_driver(data, "x.sys", layout.KERNEL_DRIVERS)
        else:
            parse_image(data, "x")
    except LoaderError as err:
        assert "\n" not in str(err) and str(err).startswith("x")
